//! n-d arrays over real comms: every dtype and layout over tcp:// and inproc://, zero-copy
//! sending, sharding, and the compression sampling bound.

use std::fmt::Debug;

use bytes::Bytes;
use courier::courier_core::codec::Encoder;
use courier::courier_core::compression::sampled_bytes_on_this_thread;
use courier::courier_core::ndarray::{Array2, Array3, ArrayD, IxDyn, arr0, s};
use courier::courier_core::num_complex::Complex;
use courier::courier_core::{Element, SerializeOptions, WireArray, from_message, to_message, to_message_with};
use courier::{Comm, Compression, Limits, Message, Registry, RegistryExt};
use serde::{Deserialize, Serialize};

async fn pair(url: &str) -> (Comm, Comm) {
    let registry = Registry::with_default_transports();
    let mut l = registry.listen(url).await.unwrap();
    let contact = l.contact_address().to_string();
    let (c, s) = tokio::join!(registry.connect(&contact), l.accept());
    (c.unwrap(), s.unwrap())
}

const TRANSPORTS: [&str; 2] = ["tcp://127.0.0.1:0", "inproc://"];

#[derive(Debug, Serialize, Deserialize)]
struct Named {
    name: String,
    array: WireArray,
}

/// Every layout the issue lists, built from one C-order 3-d array of `T`.
fn layouts<T: Element + Debug>(make: &impl Fn(usize) -> T) -> Vec<(&'static str, ArrayD<T>, bool)> {
    let a = Array3::from_shape_fn((4, 6, 5), |(i, j, k)| make(i * 30 + j * 5 + k));
    let two = Array2::from_shape_fn((8, 6), |(i, j)| make(i * 6 + j));
    // (name, array, sent from an owned array rather than a view)
    vec![
        ("C order 3-d", a.clone().into_dyn(), true),
        ("Fortran order 2-d", two.clone().reversed_axes().into_dyn(), true),
        ("permuted axes 3-d", a.clone().permuted_axes([2, 0, 1]).into_dyn(), true),
        ("rows a[::2, :]", two.slice(s![..;2, ..]).to_owned().into_dyn(), false),
        ("columns a[:, ::2]", two.slice(s![.., ..;2]).into_owned().into_dyn(), false),
        ("reversed axis a[::-1]", two.slice(s![..;-1, ..]).into_owned().into_dyn(), false),
        ("0-d", arr0(make(7)).into_dyn(), true),
        ("empty", ArrayD::from_shape_vec(IxDyn(&[3, 0, 2]), vec![]).unwrap(), true),
    ]
}

async fn check_dtype<T: Element + PartialEq + Debug>(client: &mut Comm, server: &mut Comm, make: impl Fn(usize) -> T) {
    for (name, array, owned) in layouts(&make) {
        let wire = if owned { WireArray::from_array(array.clone()) } else { WireArray::from_view(array.view()) };
        let (c, f) = (wire.is_c_order(), wire.is_f_order());
        client.send(to_message(&Named { name: name.into(), array: wire }).unwrap()).await.unwrap();
        let got: Named = from_message(&server.recv().await.unwrap()).unwrap();
        assert_eq!(got.name, name);
        assert_eq!(got.array.dtype(), T::DTYPE, "{name}");
        assert_eq!(got.array.shape(), array.shape(), "{name}");
        let view = got.array.view::<T>().unwrap_or_else(|e| panic!("{name} {:?}: no view: {e}", T::DTYPE));
        assert_eq!(view, array, "{name} {:?}: values", T::DTYPE);
        assert_eq!((got.array.is_c_order(), got.array.is_f_order()), (c, f), "{name}: order preserved");
        let owned_copy = got.array.to_array::<T>().unwrap();
        assert_eq!(owned_copy, array, "{name}: owned copy");
        if array.ndim() == 2 && array.len() > 1 && owned && !array.is_standard_layout() {
            assert!(owned_copy.t().is_standard_layout(), "{name}: Fortran order survives to_array");
        }
    }
    // Broadcast: only unique data travels; the receiver gets a zero-stride view.
    let row = ndarray_row(&make);
    let b = row.broadcast((500, 7)).unwrap();
    client.send(to_message(&WireArray::from_view(b)).unwrap()).await.unwrap();
    let got = server.recv().await.unwrap();
    assert_eq!(got.frames[0].len(), 7 * std::mem::size_of::<T>(), "broadcast sends unique data only");
    let got: WireArray = from_message(&got).unwrap();
    assert_eq!(got.view::<T>().unwrap(), b.into_dyn());
    assert_eq!(got.to_array::<T>().unwrap(), b.into_dyn());
}

fn ndarray_row<T: Element>(make: &impl Fn(usize) -> T) -> courier::courier_core::ndarray::Array1<T> {
    courier::courier_core::ndarray::Array1::from_iter((0..7).map(make))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dtype_and_layout_round_trips_over_every_transport() {
    for url in TRANSPORTS {
        let (mut c, mut s) = pair(url).await;
        check_dtype(&mut c, &mut s, |i| i % 3 == 0).await;
        check_dtype(&mut c, &mut s, |i| (i as i8).wrapping_sub(100)).await;
        check_dtype(&mut c, &mut s, |i| (i as i16).wrapping_mul(-300)).await;
        check_dtype(&mut c, &mut s, |i| (i as i32) * -70_000).await;
        check_dtype(&mut c, &mut s, |i| (i as i64) << 40).await;
        check_dtype(&mut c, &mut s, |i| i as u8).await;
        check_dtype(&mut c, &mut s, |i| (i as u16).wrapping_mul(500)).await;
        check_dtype(&mut c, &mut s, |i| (i as u32).wrapping_mul(3_000_000)).await;
        check_dtype(&mut c, &mut s, |i| (i as u64) << 50).await;
        check_dtype(&mut c, &mut s, |i| i as f32 * 0.5 - 3.0).await;
        check_dtype(&mut c, &mut s, |i| (i as f64).sqrt()).await;
        check_dtype(&mut c, &mut s, |i| Complex::new(i as f32, -(i as f32))).await;
        check_dtype(&mut c, &mut s, |i| Complex::new(i as f64 / 3.0, 1e300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_arrays_in_one_message_get_independent_buffers() {
    for url in TRANSPORTS {
        let (mut c, mut s) = pair(url).await;
        let a = Array2::<f64>::from_elem((100, 100), 1.0);
        let b = Array2::<f64>::from_elem((100, 100), 2.0);
        c.send(to_message(&(WireArray::from_array(a.clone()), WireArray::from_array(b.clone()))).unwrap())
            .await
            .unwrap();
        let (ga, gb): (WireArray, WireArray) = from_message(&s.recv().await.unwrap()).unwrap();
        let (ra, rb) = (ga.data().as_ptr_range(), gb.data().as_ptr_range());
        assert!(ra.end <= rb.start || rb.end <= ra.start, "{url}: the two arrays share memory");
        assert_eq!(ga.view::<f64>().unwrap(), a.into_dyn());
        assert_eq!(gb.view::<f64>().unwrap(), b.into_dyn());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contiguous_64mib_array_is_sent_without_copying() {
    let a = Array2::<f64>::from_shape_fn((1024, 8192), |(i, j)| (i ^ j) as f64);
    let ptr = a.as_ptr() as usize;
    let expected = a.clone();
    let msg = to_message(&WireArray::from_array(a)).unwrap();
    assert_eq!(msg.frames.len(), 1);
    assert_eq!(msg.frames[0].as_ptr() as usize, ptr, "the array's buffer is the frame");
    // tcp://: the encoder hands the array's own buffer to the vectored write.
    let mut chunks = Vec::new();
    Encoder::new(Limits::default(), Compression::None).encode(&msg, &mut chunks).unwrap();
    assert!(chunks.iter().any(|c| c.as_ptr() as usize == ptr), "tcp writes straight from the array");
    // inproc://: the receiver's view points at the sender's array.
    let (mut c, mut s) = pair("inproc://").await;
    c.send(msg.clone()).await.unwrap();
    let got: WireArray = from_message(&s.recv().await.unwrap()).unwrap();
    let view = got.view::<f64>().unwrap();
    assert_eq!(view.as_ptr() as usize, ptr, "inproc hands the very buffer over");
    // tcp://: the receiver views the received frame in place (64-byte aligned, no copy).
    let (c, mut s) = pair("tcp://127.0.0.1:0").await;
    let (mut tx, _rx) = c.split();
    let sender = tokio::spawn(async move { tx.send(msg).await.map(|()| tx) });
    let received = s.recv().await.unwrap();
    let frame_ptr = received.frames[0].as_ptr() as usize;
    assert_eq!(frame_ptr % 64, 0);
    let got: WireArray = from_message(&received).unwrap();
    assert_eq!(got.view::<f64>().unwrap().as_ptr() as usize, frame_ptr, "viewed in place");
    assert_eq!(got.view::<f64>().unwrap(), expected.into_dyn());
    drop(sender.await.unwrap().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arrays_above_the_split_size_travel_as_shards() {
    let a = Array2::<u32>::from_shape_fn((1000, 2500), |(i, j)| (i * 2500 + j) as u32); // 10 MB
    let options = SerializeOptions { split_size: 1 << 20 };
    let msg = to_message_with(&WireArray::from_array(a.clone()), &options).unwrap();
    assert_eq!(msg.frames.len(), 10);
    assert!(msg.frames.iter().all(|f| f.len() <= 1 << 20));
    for url in TRANSPORTS {
        let (c, mut s) = pair(url).await;
        let (mut tx, _rx) = c.split();
        let m = msg.clone();
        // 10 MiB exceeds socket buffers: send while the other side receives.
        let sender = tokio::spawn(async move { tx.send(m).await.map(|()| tx) });
        let got: WireArray = from_message(&s.recv().await.unwrap()).unwrap();
        assert_eq!(got.view::<u32>().unwrap(), a.clone().into_dyn(), "{url}");
        drop(sender.await.unwrap().unwrap());
    }
}

fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..len).map(|_| rng.u8(..)).collect()
}

/// Bytes handed to the compressor while `auto` decides about the message's frames.
fn sampled_while_encoding(msg: &Message) -> (u64, usize) {
    let before = sampled_bytes_on_this_thread();
    let mut chunks = Vec::new();
    Encoder::new(Limits::default(), Compression::AUTO).encode(msg, &mut chunks).unwrap();
    (sampled_bytes_on_this_thread() - before, chunks.iter().map(Bytes::len).sum())
}

/// Regression: Dask sampled multi-dimensional arrays by rows, so an array with long rows had
/// most of itself compressed just to decide. Courier samples the flat bytes: ≤ 50 kB.
#[test]
fn compression_decision_samples_at_most_50kb_whatever_the_shape() {
    let c = Array2::from_shape_vec((64, 1_000_000), noise(64_000_000, 1)).unwrap();
    let f = c.clone().reversed_axes(); // (1_000_000, 64), Fortran order
    let three = c.clone().into_shape_with_order((4, 16, 1_000_000)).unwrap();
    for (name, wire) in [
        ("2-d C order (64, 1e6)", WireArray::from_array(c.clone())),
        ("2-d Fortran order (1e6, 64)", WireArray::from_array(f)),
        ("3-d (4, 16, 1e6)", WireArray::from_array(three)),
        ("2-d strided view", WireArray::from_view(c.slice(s![..;2, ..]))),
    ] {
        let msg = to_message(&wire).unwrap();
        let (sampled, wire_len) = sampled_while_encoding(&msg);
        assert!(sampled <= 50_000, "{name}: {sampled} bytes sampled to decide");
        assert!(sampled > 0, "{name}: auto must actually sample");
        assert!(wire_len as u64 >= msg.byte_len(), "{name}: incompressible data is sent raw");
    }
    let zeros = Array2::<f64>::zeros((4096, 2048));
    let msg = to_message(&WireArray::from_array(zeros)).unwrap();
    let (sampled, wire_len) = sampled_while_encoding(&msg);
    assert!(sampled <= 50_000);
    // Snappy's best ratio is about 1/21 (its 64 KiB blocks of zeros become ~3 KiB).
    assert!(wire_len < (msg.byte_len() / 15) as usize, "zeros are compressed: {wire_len} bytes on the wire");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_arrays_round_trip_over_tcp_when_both_sides_agree() {
    let registry = Registry::with_default_transports();
    let config = courier::CommConfig { compression: Some(Compression::AUTO), ..Default::default() };
    let mut l = registry.listen_with("tcp://127.0.0.1:0", &config).await.unwrap();
    let url = l.contact_address().to_string();
    let (c, s) = tokio::join!(registry.connect_with(&url, &config), l.accept());
    let (mut c, mut s) = (c.unwrap(), s.unwrap());
    let zeros = Array3::<f32>::zeros((64, 256, 256));
    let noisy = Array2::from_shape_vec((1000, 1000), noise(1_000_000, 2)).unwrap();
    c.send(to_message(&(WireArray::from_array(zeros.clone()), WireArray::from_array(noisy.clone()))).unwrap())
        .await
        .unwrap();
    let (z, n): (WireArray, WireArray) = from_message(&s.recv().await.unwrap()).unwrap();
    assert_eq!(z.view::<f32>().unwrap(), zeros.into_dyn());
    assert_eq!(n.view::<u8>().unwrap(), noisy.into_dyn());
}

#[test]
fn garbage_array_headers_and_frame_references_are_typed_errors() {
    let good = to_message(&WireArray::from_array(Array2::<f64>::zeros((4, 4)))).unwrap();
    // Fewer frames than referenced, a frame of the wrong size, truncated MessagePack.
    let cases = [
        Message::new(good.header.clone(), vec![]),
        Message::new(good.header.clone(), vec![Bytes::from(vec![0u8; 100])]),
        Message::new(good.header.slice(..good.header.len() - 3), good.frames.clone()),
        Message::new(Bytes::from_static(b"\x85\xa5dtype\xa3<f8"), good.frames.clone()),
    ];
    for (i, m) in cases.iter().enumerate() {
        let e = from_message::<WireArray>(m).unwrap_err();
        assert_eq!(e.kind(), courier::ErrorKind::Serialization, "case {i}: {e}");
    }
    let mut rng = fastrand::Rng::with_seed(3);
    for _ in 0..2000 {
        let mut header = good.header.to_vec();
        let at = rng.usize(..header.len());
        header[at] = rng.u8(..);
        // Must not panic; may succeed only if the mutation kept it valid.
        let _ = from_message::<WireArray>(&Message::new(Bytes::from(header), good.frames.clone()));
    }
}
