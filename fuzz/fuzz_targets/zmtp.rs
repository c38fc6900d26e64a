//! The zmq:// transport's ZMTP decoder fed hostile bytes split anywhere: the greeting, commands
//! (READY, PING, ERROR), multipart messages in the handshake phase, then (after as many events
//! as the first byte says) Courier messages within small session limits and a small budget.
//!
//! Checks: no panic; the budget is never exceeded; every message returned in the session is
//! within the limits.
#![no_main]

use bytes::BytesMut;
use courier_core::{Limits, RecvBudget};
use courier_zmq::zmtp::{Budget, Decoder, Event, Step};
use libfuzzer_sys::fuzz_target;

const LIMITS: Limits =
    Limits { max_frame_size: 1 << 20, max_frames: 16, max_header_size: 1 << 14, max_message_size: 2 << 20 };

fuzz_target!(|data: &[u8]| {
    let Some((&[session_after, step, budget_kib], bytes)) = data.split_first_chunk::<3>() else { return };
    let limit = (u64::from(budget_kib) + 1) << 12; // 4 KiB .. 1 MiB
    let budget = Budget::new(RecvBudget::new(limit, None));
    let mut decoder = Decoder::new();
    let mut events = 0u8;
    let mut in_session = false;
    let mut src = BytesMut::new();
    let mut waiting: Vec<u64> = Vec::new();
    for chunk in bytes.chunks(usize::from(step) + 1) {
        src.extend_from_slice(chunk);
        loop {
            let step = match decoder.decode(&mut src, &budget) {
                Ok(s) => s,
                Err(_) => return,
            };
            let used = budget.lock().unwrap().inner.used();
            assert!(used <= limit, "{used} held over a budget of {limit}");
            match step {
                Step::NeedBytes => break,
                Step::NeedBudget => {
                    // The application takes the messages it left queued: their budget returns.
                    assert!(!waiting.is_empty(), "waits for budget only while messages are queued");
                    let mut b = budget.lock().unwrap();
                    for held in waiting.drain(..) {
                        b.inner.release(held);
                        b.queued -= held;
                    }
                }
                Step::Event(e) => {
                    if let Event::Message(parts, held) = &e {
                        if in_session && parts.first().is_some_and(|k| k.len() == 1 && k[0] == b'M') {
                            assert!(parts.len() <= LIMITS.max_frames as usize + 2, "{} parts", parts.len());
                            assert!(parts.iter().skip(2).all(|p| p.len() as u64 <= LIMITS.max_frame_size));
                        }
                        // Every other message waits in the comm's queue until the budget is full.
                        if *held > 0 && events % 2 == 0 {
                            waiting.push(*held);
                        } else if *held > 0 {
                            let mut b = budget.lock().unwrap();
                            b.inner.release(*held);
                            b.queued -= held;
                        }
                    }
                    events = events.saturating_add(1);
                    if !in_session && events >= session_after % 8 {
                        decoder.enter_session(LIMITS);
                        in_session = true;
                    }
                }
            }
        }
    }
});
