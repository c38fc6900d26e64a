//! The chunked-array and GLM block functions (`courier_array::functions()`) on argument lists
//! from a peer: the input's first byte picks the function (by sorted name), the rest is
//! length-prefixed pieces (`u32` LE) making a message, a MessagePack header plus up to eight
//! frames, decoded as the task's `Vec<Payload>` arguments.
//!
//! Checks: no panic anywhere (a panic hook aborts, so the worker's own panic guard cannot hide
//! one): every mistake in shapes, ranges, offsets, axes, dtypes or counts is an error.
#![no_main]

use std::sync::{Once, OnceLock};

use bytes::Bytes;
use courier_core::{Message, Payload, from_message};
use courier_runtime::Functions;
use libfuzzer_sys::fuzz_target;

fn functions() -> &'static (Functions, Vec<String>) {
    static F: OnceLock<(Functions, Vec<String>)> = OnceLock::new();
    F.get_or_init(|| {
        let f = courier_array::functions();
        let names = f.names().into_iter().map(str::to_owned).collect();
        (f, names)
    })
}

fuzz_target!(|data: &[u8]| {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            eprintln!("{info}");
            std::process::abort();
        }))
    });
    let Some((&pick, mut rest)) = data.split_first() else { return };
    // Pieces of `u32 LE length` + bytes (lengths clamped to what is left): the header, then
    // up to eight frames.
    let mut pieces = Vec::new();
    while pieces.len() < 9 {
        let Some((len, r)) = rest.split_first_chunk::<4>() else { break };
        let len = (u32::from_le_bytes(*len) as usize).min(r.len());
        let (piece, r) = r.split_at(len);
        pieces.push(Bytes::copy_from_slice(piece));
        rest = r;
    }
    if pieces.is_empty() {
        return;
    }
    let header = pieces.remove(0);
    let frames = pieces;
    let msg = Message::new(header, frames);
    let Ok(args) = from_message::<Vec<Payload>>(&msg) else { return };
    let (f, names) = functions();
    let name = &names[usize::from(pick) % names.len()];
    let _ = f.call(name, args);
});
