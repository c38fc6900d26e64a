//! Transport comparison: one-way stream throughput of array-sized payloads and small-message
//! round trips, for every transport beside the fair raw socket (`raw`) and the machine's
//! limits (`limit`: blocking sockets on two threads; `memcpy`: one core), in one run.
//!
//! Benchmark ids are `{pattern}/{contender}/{payload}`, e.g. `stream/tcp/64MiB`; compare
//! `tcp` against `raw` and `limit` within one run. `COURIER_BENCH_QUICK=1` shortens every
//! group to a smoke run (for `scripts/collect_results.sh --quick`).

use std::hint::black_box;
use std::time::Duration;

use courier_bench::{
    BlockingPair, Ends, RawPair, RawReader, TRANSPORTS, echo_client, echo_server, memcpy, payload_message,
    raw_echo_client, raw_echo_server, raw_stream_receiver, raw_stream_sender, registry, stream_receiver, stream_sender,
};
use courier_core::compression::{DEFAULT_THRESHOLD, auto_decision};
use courier_core::{Comm, CommConfig, Compression, Message};
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, BenchmarkId, Criterion, Throughput, criterion_group};

const PAYLOADS: [(usize, &str); 3] = [(1 << 20, "1MiB"), (8 << 20, "8MiB"), (64 << 20, "64MiB")];

/// Each end of a pair on a thread of its own, as two processes would be (`Ends`' docs say why).
fn runtime() -> Ends {
    Ends::new().expect("runtimes")
}

fn comm_pair(rt: &Ends, url: &str) -> (Comm, Comm) {
    comm_pair_with(rt, url, None)
}

fn comm_pair_with(rt: &Ends, url: &str, compression: Option<Compression>) -> (Comm, Comm) {
    let config = CommConfig { compression, ..CommConfig::default() };
    rt.block_on(rt.pair_with(&registry(), url, &config)).expect("comm pair")
}

/// Sets a group's sample size and times, or the shortest run criterion allows in quick mode.
fn timing(group: &mut BenchmarkGroup<'_, WallTime>, samples: usize, measure: Duration, warm_up: Duration) {
    if std::env::var_os("COURIER_BENCH_QUICK").is_some() {
        group.sample_size(10).measurement_time(Duration::from_millis(50)).warm_up_time(Duration::from_millis(10));
    } else {
        group.sample_size(samples).measurement_time(measure).warm_up_time(warm_up);
    }
}

/// The fair raw pair and its reader (buffers reused and faulted, as Courier's are).
type Raw = Option<(RawPair, RawReader)>;

fn raw_pair(rt: &Ends, max_payload: usize) -> Raw {
    Some((rt.block_on(rt.raw_pair()).expect("raw pair"), RawReader::new(max_payload)))
}

/// Streams `count` length-prefixed copies of `bytes` over the raw pair; the receiver runs in
/// its own task, as for the comms.
fn raw_iters(rt: &Ends, raw: &mut Raw, bytes: &bytes::Bytes, count: usize) -> Duration {
    let (RawPair { mut client, mut server }, mut reader) = raw.take().expect("pair");
    let len = bytes.len();
    let rx = rt.spawn_receiver(async move {
        raw_stream_receiver(&mut server, &mut reader, count, len).await.expect("raw receiver");
        (server, reader)
    });
    let bytes = bytes.clone();
    let (client, took) = rt.run_sender(async move {
        let took = raw_stream_sender(&mut client, &bytes, count).await.expect("raw sender");
        (client, took)
    });
    let (server, reader) = rt.block_on(rx).expect("task");
    *raw = Some((RawPair { client, server }, reader));
    took
}

/// The machine's limit: `count` copies of `bytes` over blocking sockets on two threads.
fn limit_iters(pair: &mut BlockingPair, bytes: &[u8], count: usize) -> Duration {
    pair.stream(bytes, count).expect("limit stream")
}

/// Streams `msg` over `pair` `iters` times; the receiver runs in its own task.
fn stream_iters(rt: &Ends, pair: &mut Option<(Comm, Comm)>, msg: &Message, iters: u64) -> Duration {
    let (mut client, mut server) = pair.take().expect("pair");
    let n = iters as usize;
    let expect = msg.byte_len();
    let rx = rt.spawn_receiver(async move {
        stream_receiver(&mut server, n, expect).await.expect("receiver");
        server
    });
    let msg = msg.clone();
    let (client, took) = rt.run_sender(async move {
        let took = stream_sender(&mut client, &msg, n).await.expect("sender");
        (client, took)
    });
    *pair = Some((client, rt.block_on(rx).expect("task")));
    took
}

/// The cost of compression `auto` deciding about 64 MiB of incompressible f64, beside the
/// time to send it over tcp://; and 64 MiB of zeros over tcp:// with `auto` vs `none`.
fn compression(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("compression");
    timing(&mut group, 10, Duration::from_secs(4), Duration::from_secs(1));
    let noise = payload_message(64 << 20);
    group.throughput(Throughput::Bytes(noise.byte_len()));
    let frame = noise.frames[0].clone();
    group.bench_function(BenchmarkId::new("decide-auto", "64MiB-f64-noise"), |b| {
        b.iter(|| black_box(auto_decision(black_box(&frame), DEFAULT_THRESHOLD)))
    });
    let mut pair = Some(comm_pair(&rt, "tcp://127.0.0.1:0"));
    group.bench_function(BenchmarkId::new("send-tcp-none", "64MiB-f64-noise"), |b| {
        b.iter_custom(|iters| stream_iters(&rt, &mut pair, &noise, iters))
    });
    let mut pair = Some(comm_pair_with(&rt, "tcp://127.0.0.1:0", Some(Compression::AUTO)));
    group.bench_function(BenchmarkId::new("send-tcp-auto", "64MiB-f64-noise"), |b| {
        b.iter_custom(|iters| stream_iters(&rt, &mut pair, &noise, iters))
    });
    let zeros = Message::new(bytes::Bytes::new(), vec![bytes::Bytes::from(vec![0u8; 64 << 20])]);
    for (name, setting) in [("send-tcp-auto", Compression::AUTO), ("send-tcp-none", Compression::None)] {
        let mut pair = Some(comm_pair_with(&rt, "tcp://127.0.0.1:0", Some(setting)));
        group.bench_function(BenchmarkId::new(name, "64MiB-zeros"), |b| {
            b.iter_custom(|iters| stream_iters(&rt, &mut pair, &zeros, iters))
        });
    }
    group.finish();
}

fn stream(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("stream");
    timing(&mut group, 10, Duration::from_secs(4), Duration::from_secs(1));
    for (len, name) in PAYLOADS {
        let msg = payload_message(len);
        group.throughput(Throughput::Bytes(msg.byte_len()));
        let bytes = msg.frames[0].clone();

        let mut limit = BlockingPair::connect().expect("limit pair");
        group.bench_function(BenchmarkId::new("limit", name), |b| {
            b.iter_custom(|iters| limit_iters(&mut limit, &bytes, iters as usize))
        });
        group.bench_function(BenchmarkId::new("memcpy", name), |b| {
            b.iter_custom(|iters| memcpy(&bytes, iters as usize))
        });
        let mut raw = raw_pair(&rt, len);
        group.bench_function(BenchmarkId::new("raw", name), |b| {
            b.iter_custom(|iters| raw_iters(&rt, &mut raw, &bytes, iters as usize))
        });

        for (transport, url) in TRANSPORTS {
            let mut pair = Some(comm_pair(&rt, url));
            group.bench_function(BenchmarkId::new(transport, name), |b| {
                b.iter_custom(|iters| stream_iters(&rt, &mut pair, &msg, iters))
            });
        }
    }
    group.finish();
}

fn echo_small(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("echo");
    timing(&mut group, 20, Duration::from_secs(3), Duration::from_millis(500));
    let msg = payload_message(100);
    group.throughput(Throughput::Elements(1));
    let bytes = msg.frames[0].clone();

    let mut limit = BlockingPair::connect().expect("limit pair");
    group.bench_function(BenchmarkId::new("limit", "100B"), |b| {
        b.iter_custom(|iters| limit.echo(&bytes, iters as usize).expect("limit echo").iter().sum())
    });
    group.bench_function(BenchmarkId::new("blocking-2-threads", "100B"), |b| {
        b.iter_custom(|iters| limit.echo_threads(&bytes, iters as usize).expect("blocking echo").iter().sum())
    });

    let RawPair { client, mut server } = rt.block_on(rt.raw_pair()).expect("raw pair");
    let mut client = Some(client);
    rt.spawn_receiver(async move { raw_echo_server(&mut server, 100).await });
    group.bench_function(BenchmarkId::new("raw", "100B"), |b| {
        b.iter_custom(|iters| {
            let (mut c, bytes) = (client.take().expect("client"), bytes.clone());
            let (c, times) = rt.run_sender(async move {
                let times = raw_echo_client(&mut c, &bytes, iters as usize).await.expect("raw echo");
                (c, times)
            });
            client = Some(c);
            times.iter().sum()
        })
    });

    for (transport, url) in TRANSPORTS {
        let (client, mut server) = comm_pair(&rt, url);
        let mut client = Some(client);
        rt.spawn_receiver(async move { echo_server(&mut server).await });
        group.bench_function(BenchmarkId::new(transport, "100B"), |b| {
            b.iter_custom(|iters| {
                let (mut c, msg) = (client.take().expect("client"), msg.clone());
                let (c, times) = rt.run_sender(async move {
                    let times = echo_client(&mut c, &msg, iters as usize).await.expect("echo");
                    (c, times)
                });
                client = Some(c);
                black_box(times.iter().sum())
            })
        });
    }
    group.finish();
}

/// Array payloads as users send them (serialization included): Fortran order, a strided view
/// (made contiguous on send), and 64 MiB of zeros with compression `auto` vs `none`; plus
/// 1,000 messages of 100 bytes. The raw socket moves the same bytes for comparison.
fn arrays(c: &mut Criterion) {
    use courier_core::ndarray::{Array2, s};
    use courier_core::{WireArray, to_message};
    let rt = runtime();
    let mut group = c.benchmark_group("arrays");
    timing(&mut group, 10, Duration::from_secs(3), Duration::from_millis(500));
    let f_order = Array2::<f64>::from_shape_fn((2048, 4096), |(i, j)| (i ^ j) as f64).reversed_axes();
    let wide = Array2::<f64>::from_shape_fn((4096, 4096), |(i, j)| (i * 3 + j) as f64);
    // (name, how to build the message, compression to configure on the comms)
    type Payload = (&'static str, Box<dyn Fn() -> Message>, Option<Compression>);
    // Owned arrays are serialized once (zero-copy: the message holds the array's buffer) and
    // the message is re-sent; the strided view is serialized every time, because making it
    // contiguous is part of sending a view.
    let f_msg = to_message(&WireArray::from_array(f_order)).expect("msg");
    let zeros = to_message(&WireArray::from_array(Array2::<f64>::zeros((2048, 4096)))).expect("msg");
    let zeros2 = zeros.clone();
    let payloads: Vec<Payload> = vec![
        ("64MiB-f64-F-order", Box::new(move || f_msg.clone()), None),
        (
            "64MiB-f64-strided-view",
            Box::new(move || to_message(&WireArray::from_view(wide.slice(s![..;2, ..]))).expect("msg")),
            None,
        ),
        ("64MiB-zeros-auto", Box::new(move || zeros.clone()), Some(Compression::AUTO)),
        ("64MiB-zeros-none", Box::new(move || zeros2.clone()), Some(Compression::None)),
    ];
    for (name, make, compression) in &payloads {
        let sample = make();
        group.throughput(Throughput::Bytes(sample.byte_len()));
        let bytes = sample.frames[0].clone();
        let mut raw = raw_pair(&rt, bytes.len());
        group.bench_function(BenchmarkId::new("raw", name), |b| {
            b.iter_custom(|iters| raw_iters(&rt, &mut raw, &bytes, iters as usize))
        });
        let transports: &[(&str, &str)] = if compression.is_some() { &TRANSPORTS[..2] } else { &TRANSPORTS };
        for (transport, url) in transports {
            let mut pair = Some(comm_pair_with(&rt, url, *compression));
            group.bench_function(BenchmarkId::new(*transport, name), |b| {
                b.iter_custom(|iters| {
                    // Serializing (and, for views, making contiguous) is part of sending.
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let start = std::time::Instant::now();
                        let msg = make();
                        total += start.elapsed() + stream_iters(&rt, &mut pair, &msg, 1);
                    }
                    total
                })
            });
        }
    }
    group.finish();

    // 1,000 messages of 100 bytes, pipelined, one ack.
    let mut group = c.benchmark_group("small");
    timing(&mut group, 10, Duration::from_secs(3), Duration::from_millis(500));
    let msg = payload_message(100);
    group.throughput(Throughput::Elements(1000));
    let bytes = msg.frames[0].clone();
    let mut limit = BlockingPair::connect().expect("limit pair");
    group.bench_function(BenchmarkId::new("limit", "1000x100B"), |b| {
        b.iter_custom(|iters| limit_iters(&mut limit, &bytes, iters as usize * 1000))
    });
    let mut raw = raw_pair(&rt, 100);
    group.bench_function(BenchmarkId::new("raw", "1000x100B"), |b| {
        b.iter_custom(|iters| raw_iters(&rt, &mut raw, &bytes, iters as usize * 1000))
    });
    for (transport, url) in TRANSPORTS {
        let mut pair = Some(comm_pair(&rt, url));
        group.bench_function(BenchmarkId::new(transport, "1000x100B"), |b| {
            b.iter_custom(|iters| stream_iters(&rt, &mut pair, &msg, iters * 1000))
        });
    }
    group.finish();
}

criterion_group!(benches, stream, echo_small, compression, arrays);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    println!();
    println!("HTML reports: target/criterion/report/index.html");
    println!("Summary and plots: results/SUMMARY.md (regenerate: scripts/collect_results.sh)");
}
