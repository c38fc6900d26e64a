//! Typed values out of a received message: `from_message` of arrays, payloads and blobs,
//! then every way of reading an array (`view`, `to_array`, `cow`) for its dtype. The input
//! becomes a message: a MessagePack header plus up to eight frames cut from the rest.
//!
//! Checks: no panic (in particular no out-of-bounds view, no invalid `bool`), and an array
//! that decodes has as many elements as its shape says.
#![no_main]

use bytes::Bytes;
use courier_core::num_complex::Complex;
use courier_core::{Blob, DType, Element, Message, Payload, WireArray, from_message};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&[nframes, header_len], rest)) = data.split_first_chunk::<2>() else { return };
    let header_len = usize::from(header_len).min(rest.len());
    let (header, mut rest) = rest.split_at(header_len);
    let nframes = usize::from(nframes % 9);
    let mut frames = Vec::new();
    for i in 0..nframes {
        // Frames take equal shares of what is left, the last takes the remainder.
        let len = if i + 1 == nframes { rest.len() } else { rest.len() / (nframes - i) };
        let (f, r) = rest.split_at(len);
        frames.push(Bytes::copy_from_slice(f));
        rest = r;
    }
    let msg = Message::new(Bytes::copy_from_slice(header), frames);

    if let Ok(a) = from_message::<WireArray>(&msg) {
        read_array(&a);
    }
    if let Ok((_, a)) = from_message::<(String, WireArray)>(&msg) {
        read_array(&a);
    }
    if let Ok(arrays) = from_message::<Vec<WireArray>>(&msg) {
        arrays.iter().for_each(read_array);
    }
    if let Ok(p) = from_message::<Payload>(&msg) {
        if let Ok(a) = p.decode::<WireArray>() {
            read_array(&a);
        }
        let _ = p.decode::<(i64, String, Vec<f64>)>();
    }
    let _ = from_message::<Blob>(&msg);
    let _ = from_message::<(u64, Option<Blob>, Vec<Payload>)>(&msg);
});

fn read_array(a: &WireArray) {
    match a.dtype() {
        DType::Bool => read::<bool>(a),
        DType::I8 => read::<i8>(a),
        DType::I16 => read::<i16>(a),
        DType::I32 => read::<i32>(a),
        DType::I64 => read::<i64>(a),
        DType::U8 => read::<u8>(a),
        DType::U16 => read::<u16>(a),
        DType::U32 => read::<u32>(a),
        DType::U64 => read::<u64>(a),
        DType::F32 => read::<f32>(a),
        DType::F64 => read::<f64>(a),
        DType::C64 => read::<Complex<f32>>(a),
        DType::C128 => read::<Complex<f64>>(a),
    }
}

fn read<T: Element + Copy + PartialEq>(a: &WireArray) {
    let elements: usize = a.shape().iter().product();
    if let Ok(v) = a.view::<T>() {
        assert_eq!(v.len(), elements);
        // Touch every element, so a view past the data would be caught by the sanitizer.
        let same = v.iter().filter(|x| **x == **x).count();
        std::hint::black_box(same);
    }
    if let Ok(owned) = a.to_array::<T>() {
        assert_eq!(owned.len(), elements);
        std::hint::black_box(owned.iter().filter(|x| **x == **x).count());
    }
    if let Ok(c) = a.cow::<T>() {
        assert_eq!(c.len(), elements);
    }
}
