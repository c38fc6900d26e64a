//! Writes the seed corpus of every fuzz target into `fuzz/corpus/<target>/`: valid inputs
//! made by Courier's own encoders, so the fuzzers start past the first checks.
//!
//! `cargo run --manifest-path fuzz/Cargo.toml --example seeds`

use std::path::Path;

use bytes::Bytes;
use courier_core::codec::Encoder;
use courier_core::handshake::Hello;
use courier_core::ndarray::{Array1, Array2, Array3, ShapeBuilder, s};
use courier_core::num_complex::Complex;
use courier_core::{Blob, Compression, Credential, Limits, Message, Payload, WireArray, to_message};
use courier_runtime::arg;
use courier_runtime::protocol::{
    ArgSpec, ClientToScheduler, DataRequest, Hello as RuntimeHello, TaskSpec, WorkerToScheduler,
};
use courier_zmq::zmtp;

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus").join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), bytes).unwrap();
}

fn messages() -> Vec<(&'static str, Message)> {
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut noise = |n: usize| -> Bytes {
        (0..n)
            .map(|_| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng as u8
            })
            .collect::<Vec<u8>>()
            .into()
    };
    vec![
        ("empty", Message::new(Bytes::new(), vec![])),
        ("header", Message::from_header(&b"just a header"[..])),
        ("frames", Message::new(&b"h"[..], vec![noise(10), Bytes::new(), noise(300)])),
        ("large", Message::new(&b"large"[..], vec![noise(20_000)])),
        ("zeros", Message::new(&b"zeros"[..], vec![Bytes::from(vec![0u8; 30_000])])),
    ]
}

fn stream_decoder() {
    for (name, msg) in messages() {
        for (compression, announce) in [(Compression::None, 0u8), (Compression::Snappy, 1u8), (Compression::Lz4, 2u8)] {
            let mut chunks = Vec::new();
            Encoder::new(Limits::default(), compression).encode(&msg, &mut chunks).unwrap();
            let mut seed = vec![announce, 255, 255, 200];
            seed.extend(chunks.concat());
            write("stream_decoder", &format!("{name}-{announce}"), &seed);
        }
    }
    // Two messages back to back.
    let mut seed = vec![0, 255, 3, 7];
    for (_, msg) in messages().into_iter().take(3) {
        let mut chunks = Vec::new();
        Encoder::new(Limits::default(), Compression::None).encode(&msg, &mut chunks).unwrap();
        seed.extend(chunks.concat());
    }
    write("stream_decoder", "several", &seed);
}

fn hello() {
    let plain = Hello::new(Limits::default(), Compression::AUTO, "worker-1");
    let cred = Credential::new("s3cret-token").unwrap();
    let with = Hello::new(Limits::default(), Compression::None, "client ✓").with_credential(Some(&cred)).with_flags(1);
    write("hello", "plain", &[&[9u8][..], &plain.encode()].concat());
    write("hello", "credential", &[&[0u8][..], &with.encode()].concat());
}

fn values_seed(name: &str, msg: &Message) {
    let header_len = u8::try_from(msg.header.len()).expect("seed headers are short");
    let mut seed = vec![u8::try_from(msg.frames.len()).unwrap(), header_len];
    seed.extend_from_slice(&msg.header);
    for f in &msg.frames {
        seed.extend_from_slice(f);
    }
    write("values", name, &seed);
}

fn values() {
    let a = Array2::from_shape_fn((3, 4), |(i, j)| (i * 4 + j) as f64);
    values_seed("f64-c", &to_message(&WireArray::from_array(a.clone())).unwrap());
    values_seed("f64-f", &to_message(&WireArray::from_array(a.clone().reversed_axes())).unwrap());
    values_seed("strided", &to_message(&WireArray::from_view(a.slice(s![..;2, ..]))).unwrap());
    let b = Array3::from_shape_fn((2, 2, 2).f(), |(i, j, k)| (i + j + k) as i16);
    values_seed("i16-3d", &to_message(&("name", WireArray::from_array(b))).unwrap());
    let c = Array1::from_vec(vec![true, false, true]);
    let d = Array1::from_vec(vec![Complex::new(1.0f32, 2.0), Complex::new(3.0, 4.0), Complex::new(5.0, 6.0)]);
    let e = Array1::from_vec(vec![1u8, 2, 3]);
    let list = vec![WireArray::from_array(c), WireArray::from_array(e)];
    values_seed("list", &to_message(&list).unwrap());
    values_seed("complex", &to_message(&WireArray::from_array(d)).unwrap());
    values_seed(
        "broadcast",
        &to_message(&WireArray::from_view(Array1::from_vec(vec![7u32]).broadcast((4, 3)).unwrap())).unwrap(),
    );
    let p = Payload::new(&(42i64, "text".to_owned(), vec![1.5f64, 2.5])).unwrap();
    values_seed("payload", &to_message(&p).unwrap());
    values_seed("blob", &to_message(&Blob(Bytes::from_static(b"blob bytes"))).unwrap());
}

fn zmtp() {
    let mut chunks = vec![Bytes::copy_from_slice(&zmtp::greeting()), zmtp::ready("DEALER", None)];
    let hello = Hello::new(Limits::default(), Compression::None, "zmq peer").encode();
    zmtp::encode_message(&[Bytes::from_static(b"H"), hello, Bytes::copy_from_slice(&64u32.to_le_bytes())], &mut chunks);
    let handshake = chunks.concat();
    write("zmtp", "handshake", &[&[3u8, 255, 255][..], &handshake].concat());
    let mut session = handshake.clone();
    for (_, msg) in messages() {
        let mut parts = vec![Bytes::from_static(b"M"), msg.header.clone()];
        parts.extend(msg.frames.iter().cloned());
        let mut c = Vec::new();
        zmtp::encode_message(&parts, &mut c);
        session.extend(c.concat());
    }
    let mut c =
        vec![zmtp::command_frame("PING", &[0, 10, b'c', b't', b'x']), zmtp::command_frame("ERROR", b"\x04oops")];
    zmtp::encode_message(&[Bytes::from_static(b"C"), Bytes::copy_from_slice(&8u32.to_le_bytes())], &mut c);
    zmtp::encode_message(&[Bytes::from_static(b"P")], &mut c);
    session.extend(c.concat());
    write("zmtp", "session", &[&[3u8, 200, 255][..], &session].concat());
    write("zmtp", "session-small-budget", &[&[3u8, 9, 4][..], &session].concat());
}

fn segment(out: &mut Vec<u8>, role: u8, msg: &Message) {
    out.push(role);
    out.push(u8::try_from(msg.frames.len()).unwrap());
    out.extend_from_slice(&u16::try_from(msg.header.len()).unwrap().to_le_bytes());
    out.extend_from_slice(&msg.header);
    for f in &msg.frames {
        out.extend_from_slice(&u16::try_from(f.len()).unwrap().to_le_bytes());
        out.extend_from_slice(f);
    }
}

fn runtime_messages() {
    let task = |key: &str, func: &str, args: Vec<ArgSpec>| TaskSpec {
        key: key.into(),
        func: func.into(),
        args,
        retries: 0,
        wanted: true,
    };
    let client = vec![
        ClientToScheduler::Submit {
            tasks: vec![
                task("x", "inc", vec![arg(&5i64)]),
                task("y", "add", vec![ArgSpec::Key("x".into()), ArgSpec::Key("a".into())]),
                task("z", "fail", vec![]),
                task("loop1", "inc", vec![ArgSpec::Key("loop2".into())]),
                task("loop2", "inc", vec![ArgSpec::Key("loop1".into())]),
            ],
        },
        ClientToScheduler::Cancel { keys: vec!["a".into(), "x".into()] },
        ClientToScheduler::Release { keys: vec!["b".into(), "y".into()] },
        ClientToScheduler::Scatter { id: 1, keys: vec![("s".into(), 8), ("a".into(), 8)] },
        ClientToScheduler::WhoHas { id: 2, keys: vec!["a".into(), "c".into()] },
        ClientToScheduler::Retire { id: 3, workers: vec!["tcp://10.0.0.1:9000".into()] },
        ClientToScheduler::AdaptiveTarget { id: 4 },
    ];
    let worker = vec![
        WorkerToScheduler::Finished { key: "a".into(), run: 2, nbytes: 8, seconds: 0.5 },
        WorkerToScheduler::Erred { key: "b".into(), run: 3, message: "forged".into() },
        WorkerToScheduler::MissingData {
            key: "c".into(),
            run: 4,
            dep: "a".into(),
            tried: vec!["tcp://10.0.0.2:9001".into()],
        },
        WorkerToScheduler::StealReply { key: "a".into(), run: 2, stolen: true },
        WorkerToScheduler::Replicated { key: "a".into(), ok: true },
        WorkerToScheduler::ScatterReady { id: 1 },
        WorkerToScheduler::Stored { key: "a".into(), nbytes: 8 },
        WorkerToScheduler::Heartbeat,
    ];
    let value = Payload::new(&99i64).unwrap();
    let data = vec![
        DataRequest::Get { id: 1, keys: vec!["a".into(), "b".into()] },
        DataRequest::Store { id: 2, key: "a".into(), ticket: 12345, value },
    ];
    let mut all = Vec::new();
    segment(&mut all, 3 | (8 << 2), &Message::new(Bytes::new(), vec![]));
    segment(&mut all, 0, &to_message(&client).unwrap());
    segment(&mut all, 3 | (20 << 2), &Message::new(Bytes::new(), vec![]));
    segment(&mut all, 1, &to_message(&worker).unwrap());
    segment(&mut all, 2 | 128, &to_message(&data).unwrap());
    write("runtime_messages", "all-roles", &all);
    for (i, m) in client.iter().enumerate() {
        let mut one = Vec::new();
        segment(&mut one, 3 | (4 << 2), &Message::new(Bytes::new(), vec![]));
        segment(&mut one, 0, &to_message(&[m]).unwrap());
        write("runtime_messages", &format!("client-{i}"), &one);
    }
    for (i, m) in worker.iter().enumerate() {
        let mut one = Vec::new();
        segment(&mut one, 3 | (12 << 2), &Message::new(Bytes::new(), vec![]));
        segment(&mut one, 1, &to_message(&[m]).unwrap());
        write("runtime_messages", &format!("worker-{i}"), &one);
    }
    let mut hello = Vec::new();
    let h = RuntimeHello::Worker { name: "w".into(), address: "tcp://10.0.0.9:1".into(), nthreads: 2, local: None };
    segment(&mut hello, 0, &to_message(&h).unwrap());
    segment(&mut hello, 2, &to_message(&data).unwrap());
    write("runtime_messages", "hello-and-data", &hello);
}

/// Spill files of a scalar, of an array with frames, and of an empty value.
fn spill_file() {
    let array = courier_core::WireArray::from_array(ndarray_like());
    let values = [
        ("scalar", Payload::new(&42i64).unwrap()),
        ("array", Payload::new(&array).unwrap()),
        ("empty", Payload { header: Bytes::new(), frames: vec![Bytes::new(), Bytes::from_static(b"x")] }),
    ];
    for (name, v) in values {
        let mut out = std::io::Cursor::new(Vec::new());
        courier_runtime::worker::spill::write_spill(&v, &mut out).unwrap();
        write("spill_file", name, &out.into_inner());
    }
}

fn ndarray_like() -> courier_core::ndarray::ArrayD<f64> {
    courier_core::ndarray::ArrayD::from_shape_vec(
        courier_core::ndarray::IxDyn(&[3, 5]),
        (0..15).map(f64::from).collect(),
    )
    .unwrap()
}

/// A valid argument list for every block function of `courier_array::functions()`.
fn block_functions() {
    use courier_core::ndarray::{ArrayD, IxDyn};
    let names: Vec<String> = courier_array::functions().names().into_iter().map(str::to_owned).collect();
    let p = |v: &dyn erased::Ser| v.payload();
    let m = |shape: &[usize]| {
        let n: usize = shape.iter().product();
        WireArray::from_array(ArrayD::from_shape_vec(IxDyn(shape), (0..n).map(|i| i as f64 * 0.25).collect()).unwrap())
    };
    let info = courier_array::BlockInfo {
        index: vec![1, 0],
        offset: vec![4, 0],
        shape: vec![4, 3],
        array_shape: vec![10, 3],
        number: 1,
    };
    use courier_array::glm::{Eval, Family};
    use courier_array::{BinaryOp, Distribution, Dtype, ReduceOp, UnaryOp};
    let calls: Vec<(&str, Vec<Payload>)> = vec![
        (
            "array.random",
            vec![p(&vec![4usize, 3]), p(&7u64), p(&Dtype::F64), p(&Distribution::Normal { mean: 0.0, std: 1.0 })],
        ),
        ("array.full", vec![p(&vec![2usize, 2]), p(&1.5f64), p(&Dtype::F32)]),
        ("array.unary", vec![p(&UnaryOp::Sigmoid), p(&m(&[3, 2]))]),
        ("array.binary", vec![p(&BinaryOp::Add), p(&m(&[3, 2])), p(&m(&[3, 2]))]),
        ("array.scalar", vec![p(&BinaryOp::Div), p(&m(&[3, 2])), p(&2.0f64), p(&true)]),
        ("array.reduce", vec![p(&ReduceOp::Max), p(&vec![0usize]), p(&m(&[3, 2]))]),
        ("array.combine", vec![p(&(ReduceOp::Sum, 0.5f64, Some(vec![2usize]))), p(&m(&[1, 2])), p(&m(&[1, 2]))]),
        ("array.matmul", vec![p(&m(&[3, 2])), p(&m(&[2]))]),
        ("array.transpose", vec![p(&vec![1usize, 0]), p(&m(&[3, 2]))]),
        ("array.slice", vec![p(&vec![(1usize, 3usize), (0usize, 1usize)]), p(&m(&[3, 2]))]),
        (
            "array.assemble",
            vec![p(&(Dtype::F64, vec![2usize, 2], vec![vec![0usize, 0], vec![1, 0]])), p(&m(&[1, 2])), p(&m(&[1, 2]))],
        ),
        (
            "glm.sums",
            vec![p(&Family::Logistic), p(&Eval::Hessian), p(&m(&[4, 3])), p(&m(&[4])), p(&vec![0.1f64, -0.2, 0.3])],
        ),
        ("glm.design", vec![p(&info), p(&3u64), p(&2.0f64)]),
        ("glm.labels", vec![p(&Family::Normal), p(&m(&[4, 3])), p(&vec![0.1f64, -0.2, 0.3]), p(&0.5f64), p(&9u64)]),
    ];
    let functions = courier_array::functions();
    for (name, args) in calls {
        if let Err(e) = functions.call(name, args.clone()) {
            panic!("the seed for {name} is not a valid call: {e}");
        }
        let pick = names.iter().position(|n| n == name).unwrap_or_else(|| panic!("no {name}")) as u8;
        let msg = to_message(&args).unwrap();
        let mut out = vec![pick];
        for piece in std::iter::once(&msg.header).chain(&msg.frames) {
            out.extend_from_slice(&(piece.len() as u32).to_le_bytes());
            out.extend_from_slice(piece);
        }
        write("block_functions", name, &out);
    }
}

/// Serializing through a trait object, for the table of calls above.
mod erased {
    pub(crate) trait Ser {
        fn payload(&self) -> courier_core::Payload;
    }
    impl<T: serde::Serialize> Ser for T {
        fn payload(&self) -> courier_core::Payload {
            courier_core::Payload::new(self).unwrap()
        }
    }
}

/// tls_records: [destination size, piece size] + records sealed under the target's key.
fn tls_records() {
    use std::task::{Context, Poll, Waker};
    use tokio::io::AsyncWrite;
    let seal = |writes: &[&[u8]], close: bool| -> Vec<u8> {
        let mut w =
            courier_tls::TlsWrite::with_key(Vec::new(), courier_tls::Cipher::Aes128Gcm, &[0x11; 16], &[0x22; 12])
                .unwrap();
        let mut cx = Context::from_waker(Waker::noop());
        for data in writes {
            let mut data = *data;
            while !data.is_empty() {
                let Poll::Ready(Ok(n)) = std::pin::Pin::new(&mut w).poll_write(&mut cx, data) else { panic!() };
                data = &data[n..];
            }
        }
        let done = if close {
            std::pin::Pin::new(&mut w).poll_shutdown(&mut cx)
        } else {
            std::pin::Pin::new(&mut w).poll_flush(&mut cx)
        };
        assert!(matches!(done, Poll::Ready(Ok(()))));
        std::mem::take(w.get_mut())
    };
    let big: Vec<u8> = (0..40_000u32).map(|i| i as u8).collect();
    for (name, writes, close, dst, piece) in [
        ("hello", vec![&b"hello"[..]], true, 1u8, 2u8),
        ("two_records", vec![&big[..20_000]], true, 3, 2),
        ("big_direct", vec![&big[..], &b"tail"[..]], true, 4, 3),
        ("no_close", vec![&big[..100]], false, 0, 0),
    ] {
        let mut input = vec![dst, piece];
        input.extend(seal(&writes, close));
        write("tls_records", name, &input);
    }
}

fn main() {
    tls_records();
    block_functions();
    spill_file();
    stream_decoder();
    hello();
    values();
    zmtp();
    runtime_messages();
    println!("seed corpus written to {}/corpus", env!("CARGO_MANIFEST_DIR"));
}
