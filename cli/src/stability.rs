//! `courier stability`: repeat a mixed workload per transport and count what went wrong.
//!
//! Each repetition opens `comms` concurrent comms through one listener; every comm sends a
//! random mix of small and large messages (0 B to 64 MiB, interleaved), each checksummed and
//! echoed back, and one comm per repetition is dropped abruptly by its server mid-stream (its
//! client must see `Closed`, never corrupt data). A repetition that takes longer than the
//! timeout is a hang. Memory (RSS) and open file descriptors are sampled after each
//! repetition to show growth. Each repetition also runs a task graph on a scheduler and two
//! workers over the transport (a tree reduction with worker-to-worker transfers).

use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use courier::{Message, Registry};
use courier_bench::Summary;
use serde::Serialize;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Transports to test (listen URLs).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "tcp://127.0.0.1:0,unix://,zmq://127.0.0.1:0,tls://127.0.0.1:0,inproc://"
    )]
    urls: Vec<String>,
    /// Repetitions per transport.
    #[arg(long, default_value_t = 10)]
    repeat: usize,
    /// Concurrent comms per repetition.
    #[arg(long, default_value_t = 6)]
    comms: usize,
    /// Messages per comm per repetition.
    #[arg(long, default_value_t = 24)]
    messages: usize,
    /// Seconds before a repetition counts as a hang.
    #[arg(long, default_value_t = 60.0)]
    timeout: f64,
    /// Write the results as JSON.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

#[derive(Debug, Default, Serialize)]
struct Row {
    transport: String,
    repetitions: usize,
    ok: usize,
    failures: usize,
    hangs: usize,
    messages: u64,
    lost_or_corrupt: u64,
    abrupt_closes_seen_as_closed: u64,
    /// Task graphs (a tree reduction of arrays with worker-to-worker transfers) that gave the
    /// right result.
    graphs_ok: u64,
    p50_ms: f64,
    p99_ms: f64,
    rss_growth_mib: f64,
    fd_growth: i64,
    errors: Vec<String>,
}

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn fds() -> i64 {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as i64)
}

fn sum(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &x| (h ^ u64::from(x)).wrapping_mul(0x100_0000_01b3)) ^ b.len() as u64
}

/// Sizes: mostly small, some large, up to 64 MiB; interleaved.
fn size(rng: &mut fastrand::Rng) -> usize {
    match rng.u8(..10) {
        0 => rng.usize(8 << 20..=64 << 20),
        1 | 2 => rng.usize(64 << 10..8 << 20),
        _ => rng.usize(0..4096),
    }
}

struct Outcome {
    messages: u64,
    bad: u64,
    closed_seen: u64,
    latencies: Vec<Duration>,
}

/// The runtime on this transport: scheduler and two workers; a tree reduction of 16 arrays
/// whose inputs live on both workers, checked against the sum of the gathered inputs.
async fn graph(registry: &Registry, url: &str, seed: u64) -> anyhow::Result<()> {
    use courier::courier_core::WireArray;
    use courier::courier_runtime::{Functions, LocalCluster, TaskFuture, arg};
    let cluster = LocalCluster::in_process(registry.clone(), url, 2, 1, Functions::with_builtins()).await?;
    let c = cluster.client().await?;
    let leaves: Vec<TaskFuture<WireArray>> =
        c.map("random_array", (0..16u64).map(|i| vec![arg(&vec![64usize, 64]), arg(&(seed * 100 + i))])).await?;
    let expected: f64 =
        c.gather(&leaves).await?.iter().map(|a| a.cow::<f64>().map(|v| v.sum()).unwrap_or(f64::NAN)).sum();
    let mut level = leaves;
    while level.len() > 1 {
        let mut next = Vec::new();
        for pair in level.chunks(2) {
            next.push(c.submit::<WireArray>("array_add", pair.iter().map(|f| f.arg()).collect()).await?);
        }
        level = next;
    }
    let total = c.submit::<f64>("array_sum", vec![level[0].arg()]).await?.result().await?;
    c.close().await;
    cluster.shutdown().await;
    anyhow::ensure!((total - expected).abs() <= 1e-9 * expected.abs(), "graph gave {total}, expected {expected}");
    Ok(())
}

async fn repetition(registry: &Registry, url: &str, args: &Args, seed: u64) -> anyhow::Result<Outcome> {
    let mut listener = registry.listen(url).await?;
    let contact = listener.contact_address().to_string();
    let n = args.comms;
    let abrupt = (seed as usize) % n;
    let server = tokio::spawn(async move {
        let mut tasks = Vec::new();
        for _ in 0..n {
            let mut comm = listener.accept().await?;
            tasks.push(tokio::spawn(async move {
                let mut echoed = 0;
                while let Ok(m) = comm.recv().await {
                    // The client marked this comm to die abruptly mid-stream (dropped, no close).
                    if m.header.get(8) == Some(&1) && echoed == 3 {
                        return;
                    }
                    if comm.send(m).await.is_err() {
                        return;
                    }
                    echoed += 1;
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
        anyhow::Ok(())
    });
    let mut clients = Vec::new();
    for c in 0..n {
        let registry = registry.clone();
        let contact = contact.clone();
        let count = args.messages;
        clients.push(tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(seed * 1000 + c as u64);
            let comm = registry.connect(&contact).await?;
            let (mut tx, mut rx) = comm.split();
            let mut out = Outcome { messages: 0, bad: 0, closed_seen: 0, latencies: Vec::new() };
            for _ in 0..count {
                let len = size(&mut rng);
                let data: Bytes = (0..len).map(|i| (i as u64 ^ seed) as u8).collect::<Vec<u8>>().into();
                let expect = sum(&data);
                let start = Instant::now();
                let mut header = expect.to_le_bytes().to_vec();
                header.push(u8::from(c == abrupt));
                let sent = tx.send(Message::new(Bytes::from(header.clone()), vec![data])).await;
                let got = match sent {
                    Ok(()) => rx.recv().await,
                    Err(e) => Err(e),
                };
                match got {
                    Ok(m) => {
                        out.messages += 1;
                        out.latencies.push(start.elapsed());
                        let ok = m.header[..] == header[..] && m.frames.len() == 1 && sum(&m.frames[0]) == expect;
                        if !ok {
                            out.bad += 1;
                        }
                    }
                    Err(e) if e.is_closed() && c == abrupt => {
                        out.closed_seen += 1;
                        break;
                    }
                    Err(e) => anyhow::bail!("comm {c}: {e}"),
                }
            }
            let _ = tx.close().await;
            anyhow::Ok(out)
        }));
    }
    let mut total = Outcome { messages: 0, bad: 0, closed_seen: 0, latencies: Vec::new() };
    for c in clients {
        let o = c.await??;
        total.messages += o.messages;
        total.bad += o.bad;
        total.closed_seen += o.closed_seen;
        total.latencies.extend(o.latencies);
    }
    server.await??;
    Ok(total)
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let registry = courier_bench::registry();
    let mut rows = Vec::new();
    println!(
        "{:<22} {:>5} {:>4} {:>8} {:>5} {:>8} {:>12} {:>8} {:>8} {:>9} {:>7}",
        "transport",
        "reps",
        "ok",
        "failures",
        "hangs",
        "messages",
        "lost/corrupt",
        "p50 ms",
        "p99 ms",
        "RSS +MiB",
        "fds +"
    );
    // Progress goes to stderr (hidden when it is not a terminal); results to stdout.
    let progress = indicatif::ProgressBar::new((args.urls.len() * args.repeat) as u64).with_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} repetitions {msg}").expect("template"),
    );
    for url in &args.urls {
        progress.set_message(url.clone());
        let mut row = Row { transport: url.clone(), repetitions: args.repeat, ..Row::default() };
        let mut latencies = Vec::new();
        let (mut rss0, mut fd0) = (0.0, 0);
        for r in 0..args.repeat {
            let attempt = tokio::time::timeout(
                Duration::from_secs_f64(args.timeout),
                repetition(&registry, url, &args, r as u64 + 1),
            );
            match attempt.await {
                Ok(Ok(o)) => match graph(&registry, url, r as u64 + 1).await {
                    Ok(()) => {
                        row.ok += 1;
                        row.graphs_ok += 1;
                        row.messages += o.messages;
                        row.lost_or_corrupt += o.bad;
                        row.abrupt_closes_seen_as_closed += o.closed_seen;
                        latencies.extend(o.latencies);
                    }
                    Err(e) => {
                        row.failures += 1;
                        row.errors.push(format!("task graph: {e:#}"));
                    }
                },
                Ok(Err(e)) => {
                    row.failures += 1;
                    row.errors.push(format!("{e:#}"));
                }
                Err(_) => row.hangs += 1,
            }
            progress.inc(1);
            if r == 0 {
                // Growth is measured from after the first repetition (warm pools, caches).
                (rss0, fd0) = (rss_mib(), fds());
            }
        }
        row.rss_growth_mib = rss_mib() - rss0;
        row.fd_growth = fds() - fd0;
        if let Some(s) = Summary::of(&mut latencies) {
            row.p50_ms = s.p50.as_secs_f64() * 1e3;
            row.p99_ms = s.p99.as_secs_f64() * 1e3;
        }
        progress.suspend(|| {
            println!(
                "{:<22} {:>5} {:>4} {:>8} {:>5} {:>8} {:>12} {:>8.2} {:>8.2} {:>9.1} {:>7}",
                row.transport,
                row.repetitions,
                row.ok,
                row.failures,
                row.hangs,
                row.messages,
                row.lost_or_corrupt,
                row.p50_ms,
                row.p99_ms,
                row.rss_growth_mib,
                row.fd_growth
            );
            for e in &row.errors {
                println!("    error: {e}");
            }
        });
        rows.push(row);
    }
    progress.finish_and_clear();
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&rows)?).context("writing JSON")?;
        println!("wrote {}", path.display());
    }
    let bad: usize = rows.iter().map(|r| r.failures + r.hangs + r.lost_or_corrupt as usize).sum();
    anyhow::ensure!(bad == 0, "{bad} failures, hangs or lost messages");
    Ok(())
}
