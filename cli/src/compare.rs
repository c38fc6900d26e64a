//! `courier compare`: the transports side by side with a fair raw socket and the machine's
//! limits, in one run.
//!
//! Contenders per pattern, interleaved repetition by repetition so drift on a shared machine
//! hits all alike:
//! - `limit`: blocking sockets on two threads, no framing (`courier_bench::limits`);
//! - `raw`: a tokio socket with a length prefix, reading the way Courier's stream transports
//!   read (`courier_bench::raw`);
//! - every transport in `courier_bench::TRANSPORTS`.
//!
//! Each end of a pair runs on a thread of its own (`courier_bench::Ends`), as two processes
//! would, except in the current-thread echo, where both share one.
//!
//! Beside each median: the spread (slowest–fastest repetition) and the process's CPU time
//! per message (sender and receiver together), which swings far less than wall time on a
//! shared machine.

use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use courier::{Comm, Message, Registry};
use courier_bench::{
    BlockingPair, Ends, RawPair, RawReader, Summary, TRANSPORTS, echo_client, echo_server, format_bytes, memcpy,
    payload_message, process_cpu, raw_echo_client, raw_echo_server, raw_stream_receiver, raw_stream_sender,
    stream_receiver, stream_sender,
};
use serde::Serialize;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Payload sizes for the stream pattern, in bytes with an optional KiB/MiB/GiB suffix.
    #[arg(long, value_delimiter = ',', default_value = "1MiB,8MiB,64MiB")]
    payloads: Vec<String>,
    /// Bytes streamed per measurement (at least 4 messages are sent).
    #[arg(long, default_value = "512MiB")]
    volume: String,
    /// Repetitions per measurement; the median is reported.
    #[arg(long, default_value_t = 5)]
    repeat: usize,
    /// Round trips of a 100-byte message per transport.
    #[arg(long, default_value_t = 20_000)]
    round_trips: usize,
    /// Streams of 1,000 pipelined 100-byte messages per measurement (wake-ups decide short
    /// runs: 50 gave spreads of 2x here).
    #[arg(long, default_value_t = 200)]
    small_batches: usize,
    /// Connections set up per transport in the connect measurement.
    #[arg(long, default_value_t = 200)]
    connects: usize,
    /// Transports to compare (names from `tcp,tls,unix,shm,zmq,inproc`); the baselines always
    /// run.
    #[arg(long, value_delimiter = ',', default_value = "tcp,tls,unix,shm,zmq,inproc")]
    transports: Vec<String>,
    /// Write every row as JSON.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

/// Parses `64MiB`, `8 MiB`, `100`, `1GiB`.
pub(crate) fn parse_size(s: &str) -> anyhow::Result<usize> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: usize = num.parse().with_context(|| format!("{s:?} is not a size"))?;
    let mult = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" | "k" => 1 << 10,
        "MiB" | "M" => 1 << 20,
        "GiB" | "G" => 1 << 30,
        other => bail!("unknown size unit {other:?} in {s:?} (use B, KiB, MiB or GiB)"),
    };
    n.checked_mul(mult).with_context(|| format!("{s:?} is too large"))
}

/// One row of the report (also the JSON record).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Row {
    /// `stream`, `small`, `echo (multi-thread)`, `echo (current-thread)`, `memcpy`.
    pattern: String,
    payload_bytes: usize,
    /// Messages per stream (one ack each) or round trips.
    messages: usize,
    /// Streams per measurement.
    batches: usize,
    contender: String,
    /// `bytes/s`, `messages/s` or `round trips/s`.
    unit: &'static str,
    median: f64,
    /// Slowest and fastest repetition (for echo, the median is the p50 round trip's rate and
    /// the spread comes from the p99 and p1 round trips).
    low: f64,
    high: f64,
    repetitions: usize,
    /// Process CPU time per message (all threads, sender and receiver), median.
    cpu_ns_per_message: f64,
    vs_raw: Option<f64>,
    vs_limit: Option<f64>,
    vs_tcp: Option<f64>,
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

/// A contender in the stream pattern, with its connection kept across repetitions.
#[allow(clippy::large_enum_variant)] // eight of them per run, never moved in a loop
enum Contender {
    Limit(Option<BlockingPair>),
    Raw(Option<(RawPair, RawReader)>),
    Comm(Option<(Comm, Comm)>),
}

impl Contender {
    /// Streams `count` copies of `msg` (its one frame, for the baselines); returns wall time.
    async fn stream(&mut self, ends: &Ends, msg: &Message, count: usize) -> anyhow::Result<Duration> {
        let payload: Bytes = msg.frames[0].clone();
        match self {
            Contender::Limit(slot) => {
                let mut p = slot.take().context("limit pair")?;
                let (p, took) = tokio::task::spawn_blocking(move || {
                    let took = p.stream(&payload, count);
                    (p, took)
                })
                .await?;
                *slot = Some(p);
                Ok(took?)
            }
            Contender::Raw(slot) => {
                let (RawPair { mut client, mut server }, mut reader) = slot.take().context("raw pair")?;
                let len = payload.len();
                let rx = ends.spawn_receiver(async move {
                    raw_stream_receiver(&mut server, &mut reader, count, len).await.map(|()| (server, reader))
                });
                let (client, took) = ends
                    .on_sender(async move {
                        let took = raw_stream_sender(&mut client, &payload, count).await;
                        (client, took)
                    })
                    .await;
                let took = took?;
                let (server, reader) = rx.await??;
                *slot = Some((RawPair { client, server }, reader));
                Ok(took)
            }
            Contender::Comm(slot) => {
                let (mut client, mut server) = slot.take().context("comm pair")?;
                let expect = msg.byte_len();
                let rx = ends
                    .spawn_receiver(async move { stream_receiver(&mut server, count, expect).await.map(|()| server) });
                let msg = msg.clone();
                let (client, took) = ends
                    .on_sender(async move {
                        let took = stream_sender(&mut client, &msg, count).await;
                        (client, took)
                    })
                    .await;
                let took = took?;
                *slot = Some((client, rx.await??));
                Ok(took)
            }
        }
    }
}

/// The stream pattern for one payload size: every contender, `repeat` interleaved rounds,
/// each of `batches` streams of `count` messages (one ack per stream).
#[allow(clippy::too_many_arguments)] // one call per pattern, each argument named there
async fn stream_rows(
    ends: &Ends,
    registry: &Registry,
    only: &[String],
    pattern: &str,
    len: usize,
    count: usize,
    batches: usize,
    repeat: usize,
) -> anyhow::Result<Vec<Row>> {
    let msg = payload_message(len);
    let mut contenders: Vec<(String, Contender)> = vec![
        ("limit".into(), Contender::Limit(Some(tokio::task::spawn_blocking(BlockingPair::connect).await??))),
        ("raw".into(), Contender::Raw(Some((ends.raw_pair().await?, RawReader::new(len))))),
    ];
    for (name, url) in TRANSPORTS.iter().filter(|(n, _)| only.iter().any(|o| o == n)) {
        contenders.push((name.to_string(), Contender::Comm(Some(ends.pair(registry, url).await?))));
    }
    let mut rates = vec![Vec::new(); contenders.len()];
    let mut cpus = vec![Vec::new(); contenders.len()];
    // One unmeasured round first: connections warm, buffers recycled, pages faulted.
    for (_, c) in &mut contenders {
        c.stream(ends, &msg, count.min(4)).await?;
    }
    for _ in 0..repeat {
        for (i, (_, c)) in contenders.iter_mut().enumerate() {
            let cpu0 = process_cpu();
            let mut took = Duration::ZERO;
            for _ in 0..batches {
                took += c.stream(ends, &msg, count).await?;
            }
            let cpu = process_cpu().saturating_sub(cpu0);
            let per_s = (count * batches) as f64 / took.as_secs_f64();
            rates[i].push(if pattern == "small" { per_s } else { per_s * len as f64 });
            cpus[i].push(cpu.as_secs_f64() * 1e9 / (count * batches) as f64);
        }
    }
    let unit = if pattern == "small" { "messages/s" } else { "bytes/s" };
    let mut rows: Vec<Row> = contenders
        .iter()
        .enumerate()
        .map(|(i, (name, _))| Row {
            pattern: pattern.into(),
            payload_bytes: len,
            messages: count,
            batches,
            contender: name.clone(),
            unit,
            median: median(&rates[i]),
            low: rates[i].iter().copied().fold(f64::INFINITY, f64::min),
            high: rates[i].iter().copied().fold(0.0, f64::max),
            repetitions: repeat,
            cpu_ns_per_message: median(&cpus[i]),
            vs_raw: None,
            vs_limit: None,
            vs_tcp: None,
        })
        .collect();
    if pattern != "small" {
        let src = payload_message(len).frames[0].clone();
        let copies = count.max(1);
        let mut rates = Vec::new();
        let mut cpus = Vec::new();
        for _ in 0..repeat {
            let src = src.clone();
            let cpu0 = process_cpu();
            let took = tokio::task::spawn_blocking(move || memcpy(&src, copies)).await?;
            cpus.push(process_cpu().saturating_sub(cpu0).as_secs_f64() * 1e9 / copies as f64);
            rates.push((len * copies) as f64 / took.as_secs_f64());
        }
        rows.push(Row {
            pattern: "memcpy".into(),
            payload_bytes: len,
            messages: copies,
            batches: 1,
            contender: "memcpy (one core)".into(),
            unit: "bytes/s",
            median: median(&rates),
            low: rates.iter().copied().fold(f64::INFINITY, f64::min),
            high: rates.iter().copied().fold(0.0, f64::max),
            repetitions: repeat,
            cpu_ns_per_message: median(&cpus),
            vs_raw: None,
            vs_limit: None,
            vs_tcp: None,
        });
    }
    Ok(ratios(rows))
}

/// Fills in each row's ratios to `raw`, `limit` and `tcp` of the same pattern and payload.
fn ratios(mut rows: Vec<Row>) -> Vec<Row> {
    let find = |rows: &[Row], name: &str| rows.iter().find(|r| r.contender == name).map(|r| r.median);
    let (raw, limit, tcp) = (find(&rows, "raw"), find(&rows, "limit"), find(&rows, "tcp"));
    for r in &mut rows {
        if r.pattern == "memcpy" {
            continue;
        }
        r.vs_raw = raw.filter(|v| *v > 0.0).map(|v| r.median / v);
        r.vs_limit = limit.filter(|v| *v > 0.0).map(|v| r.median / v);
        r.vs_tcp = tcp.filter(|v| *v > 0.0).map(|v| r.median / v);
    }
    rows
}

fn fmt_rate(unit: &str, v: f64) -> String {
    match unit {
        "bytes/s" => format!("{}/s", format_bytes(v as u64)),
        _ if v >= 1e6 => format!("{:.2}M/s", v / 1e6),
        _ => format!("{:.1}k/s", v / 1e3),
    }
}

fn fmt_ratio(r: Option<f64>) -> String {
    r.map_or_else(|| "-".into(), |v| format!("{v:.2}"))
}

fn fmt_cpu(ns: f64) -> String {
    if ns >= 1e6 { format!("{:.2} ms", ns / 1e6) } else { format!("{:.2} µs", ns / 1e3) }
}

fn print_header() {
    println!(
        "{:<9} {:<18} {:>7} {:>12} {:>23} {:>6} {:>7} {:>6} {:>10}",
        "payload", "contender", "msgs", "median", "spread (low-high)", "/ raw", "/ limit", "/ tcp", "CPU/msg"
    );
}

fn print_row(r: &Row) {
    println!(
        "{:<9} {:<18} {:>7} {:>12} {:>23} {:>6} {:>7} {:>6} {:>10}",
        format_bytes(r.payload_bytes as u64),
        r.contender,
        r.messages,
        fmt_rate(r.unit, r.median),
        format!("{} - {}", fmt_rate(r.unit, r.low), fmt_rate(r.unit, r.high)),
        fmt_ratio(r.vs_raw),
        fmt_ratio(r.vs_limit),
        fmt_ratio(r.vs_tcp),
        fmt_cpu(r.cpu_ns_per_message),
    );
}

/// Stream throughput per payload and pipelined small messages, every contender.
pub(crate) async fn streams(args: &Args, ends: &Ends) -> anyhow::Result<Vec<Row>> {
    if let Some(bad) = args.transports.iter().find(|t| !TRANSPORTS.iter().any(|(n, _)| n == t)) {
        bail!("unknown transport {bad:?} (choose from tcp, tls, unix, zmq, inproc)");
    }
    let registry = courier_bench::registry();
    let volume = parse_size(&args.volume)?;
    let repeat = args.repeat.max(1);
    println!("Courier transport comparison on loopback, one run. limit: blocking sockets on two threads, no");
    println!("framing; raw: tokio socket, length prefix, Courier's read strategy. CPU/msg: process CPU time");
    println!("(sender + receiver) per message.");
    println!();
    println!("stream: the sender pipelines N messages of one frame each; one ack at the end; median of {repeat}");
    print_header();
    let mut all = Vec::new();
    for p in &args.payloads {
        let len = parse_size(p)?;
        let count = (volume / len.max(1)).max(4);
        let rows = stream_rows(ends, &registry, &args.transports, "stream", len, count, 1, repeat).await?;
        rows.iter().for_each(print_row);
        all.extend(rows);
    }
    let batches = args.small_batches.max(1);
    println!();
    println!("small: {batches} x 1,000 pipelined messages of 100 B, one ack per 1,000; median of {repeat}");
    print_header();
    let rows = stream_rows(ends, &registry, &args.transports, "small", 100, 1000, batches, repeat).await?;
    rows.iter().for_each(print_row);
    all.extend(rows);
    Ok(all)
}

/// Small-message round trips, labelled `flavor`: with `ends`, the echoing end on the
/// receiver's thread and the timing end on the sender's; without, both on the current runtime.
pub(crate) async fn echoes(args: &Args, flavor: &str, ends: Option<&Ends>) -> anyhow::Result<Vec<Row>> {
    let registry = courier_bench::registry();
    let n = args.round_trips.max(1);
    println!();
    let place = Place(ends);
    let where_ = if ends.is_some() { "each end on a runtime thread of its own" } else { "both ends on one thread" };
    println!("echo: {n} round trips of a 100-byte message, {flavor} runtime ({where_});");
    println!("median from the p50 round trip, spread from p99 and p1. limit: both ends on one thread (no");
    println!("wake-ups); blocking, 2 threads: the same with an echo thread");
    print_header();
    let small = payload_message(100);
    let pattern = format!("echo ({flavor})");
    let mut rows = Vec::new();
    let mut push = |name: &str, times: Vec<Duration>, cpu: Duration| -> anyhow::Result<()> {
        rows.push(latency_row(&pattern, 100, name, "round trips/s", times, cpu)?);
        Ok(())
    };

    let payload = small.frames[0].clone();
    let mut limit = tokio::task::spawn_blocking(BlockingPair::connect).await??;
    let cpu0 = process_cpu();
    let (mut limit, times) = tokio::task::spawn_blocking(move || {
        let times = limit.echo(&payload, n);
        (limit, times)
    })
    .await?;
    push("limit", times?, process_cpu().saturating_sub(cpu0))?;
    let payload = small.frames[0].clone();
    let cpu0 = process_cpu();
    let times = tokio::task::spawn_blocking(move || limit.echo_threads(&payload, n)).await??;
    push("blocking, 2 threads", times, process_cpu().saturating_sub(cpu0))?;

    let RawPair { mut client, mut server } = place.raw_pair().await?;
    let srv = place.serve(async move { raw_echo_server(&mut server, 100).await });
    let payload = small.frames[0].clone();
    let cpu0 = process_cpu();
    let times = place.time(async move { raw_echo_client(&mut client, &payload, n).await }).await?;
    let cpu = process_cpu().saturating_sub(cpu0);
    srv.await??; // the client's socket went with its task: the server sees the end
    push("raw", times, cpu)?;

    for (name, url) in TRANSPORTS.iter().filter(|(n, _)| args.transports.iter().any(|o| o == n)) {
        let (mut client, mut server) = place.pair(&registry, url).await?;
        let srv = place.serve(async move { echo_server(&mut server).await });
        let msg = small.clone();
        let cpu0 = process_cpu();
        let times = place
            .time(async move {
                let times = echo_client(&mut client, &msg, n).await;
                client.close().await.map(|()| times)
            })
            .await??;
        let cpu = process_cpu().saturating_sub(cpu0);
        srv.await??;
        push(name, times, cpu)?;
    }
    let rows = ratios(rows);
    rows.iter().for_each(print_row);
    Ok(rows)
}

/// Where an echo's two ends run: each on a runtime thread of its own, or (`None`) both on
/// the current runtime.
#[derive(Clone, Copy)]
struct Place<'a>(Option<&'a Ends>);

impl Place<'_> {
    /// A connected comm pair: (timing end, echoing end).
    async fn pair(self, registry: &Registry, url: &str) -> anyhow::Result<(Comm, Comm)> {
        if let Some(ends) = self.0 {
            return Ok(ends.pair(registry, url).await?);
        }
        let mut l = registry.listen(url).await?;
        let contact = l.contact_address().to_string();
        let (c, s) = tokio::join!(registry.connect(&contact), l.accept());
        Ok((c?, s?))
    }

    async fn raw_pair(self) -> std::io::Result<RawPair> {
        match self.0 {
            Some(ends) => ends.raw_pair().await,
            None => RawPair::connect().await,
        }
    }

    /// Starts the echoing end.
    fn serve<T: Send + 'static>(self, work: impl Future<Output = T> + Send + 'static) -> tokio::task::JoinHandle<T> {
        match self.0 {
            Some(ends) => ends.spawn_receiver(work),
            None => tokio::spawn(work),
        }
    }

    /// Runs the timing end.
    async fn time<T: Send + 'static>(self, work: impl Future<Output = T> + Send + 'static) -> T {
        match self.0 {
            Some(ends) => ends.on_sender(work).await,
            None => work.await,
        }
    }
}

/// Connection set-up: connect plus Courier's handshake (and TLS's, on tls://), `n` times per
/// transport; the median is the p50 connection's rate.
pub(crate) async fn connects(args: &Args) -> anyhow::Result<Vec<Row>> {
    let n = args.connects.max(1);
    println!();
    println!("connect: {n} connections per transport, each connected and handshaken (tls:// includes TLS);");
    println!("median from the p50 connection, spread from p99 and p1; CPU/msg is per connection");
    print_header();
    let rows = connect_rows(&courier_bench::registry(), &args.transports, n).await?;
    rows.iter().for_each(print_row);
    Ok(rows)
}

async fn connect_rows(registry: &Registry, only: &[String], n: usize) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    for (name, url) in TRANSPORTS.iter().filter(|(n, _)| only.iter().any(|o| o == n)) {
        let mut l = registry.listen(url).await?;
        let contact = l.contact_address().to_string();
        let mut times = Vec::with_capacity(n);
        let cpu0 = process_cpu();
        for _ in 0..n {
            let start = std::time::Instant::now();
            let (c, s) = tokio::join!(registry.connect(&contact), l.accept());
            times.push(start.elapsed());
            let (mut c, _s) = (c?, s?);
            c.close().await?;
        }
        let cpu = process_cpu().saturating_sub(cpu0);
        rows.push(latency_row("connect", 0, name, "connects/s", times, cpu)?);
    }
    Ok(ratios(rows))
}

/// A row from one timing per operation (`times`, all of it costing `cpu`): the median is the
/// p50 operation's rate, the spread comes from the p99 and p1 operations.
fn latency_row(
    pattern: &str,
    payload_bytes: usize,
    contender: &str,
    unit: &'static str,
    mut times: Vec<Duration>,
    cpu: Duration,
) -> anyhow::Result<Row> {
    let n = times.len();
    let s = Summary::of(&mut times).context("nothing was timed")?;
    let fastest = times[(n - 1) / 100];
    Ok(Row {
        pattern: pattern.into(),
        payload_bytes,
        messages: n,
        batches: 1,
        contender: contender.into(),
        unit,
        median: 1.0 / s.p50.as_secs_f64(),
        low: 1.0 / s.p99.as_secs_f64(),
        high: 1.0 / fastest.as_secs_f64(),
        repetitions: 1,
        cpu_ns_per_message: cpu.as_secs_f64() * 1e9 / n as f64,
        vs_raw: None,
        vs_limit: None,
        vs_tcp: None,
    })
}

/// Writes the rows as JSON when asked to.
pub(crate) fn write_json(args: &Args, rows: &[Row]) -> anyhow::Result<()> {
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(rows)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!();
        println!("wrote {}", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size("100").unwrap(), 100);
        assert_eq!(parse_size("1 GiB").unwrap(), 1 << 30);
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("99999999999999999999GiB").is_err());
    }

    #[test]
    fn ratios_are_to_raw_limit_and_tcp_of_the_same_run() {
        let row = |name: &str, median: f64| Row {
            pattern: "stream".into(),
            payload_bytes: 1,
            messages: 1,
            batches: 1,
            contender: name.into(),
            unit: "bytes/s",
            median,
            low: median,
            high: median,
            repetitions: 1,
            cpu_ns_per_message: 0.0,
            vs_raw: None,
            vs_limit: None,
            vs_tcp: None,
        };
        let rows = ratios(vec![row("limit", 4.0), row("raw", 2.0), row("tcp", 3.0), row("zmq", 1.5)]);
        let zmq = rows.iter().find(|r| r.contender == "zmq").unwrap();
        assert_eq!((zmq.vs_raw, zmq.vs_limit, zmq.vs_tcp), (Some(0.75), Some(0.375), Some(0.5)));
    }

    #[test]
    fn every_contender_reports_a_row_with_ratios() {
        // Each end on a runtime of its own, dropped outside any runtime, as `courier compare` does.
        let ends = Ends::new().unwrap();
        let current = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        current.block_on(every_contender(&ends));
    }

    async fn every_contender(ends: &Ends) {
        let registry = courier_bench::registry();
        let all: Vec<String> = TRANSPORTS.iter().map(|(n, _)| n.to_string()).collect();
        let rows = stream_rows(ends, &registry, &all, "stream", 300_000, 4, 1, 1).await.unwrap();
        let names: Vec<&str> = rows.iter().map(|r| r.contender.as_str()).collect();
        assert_eq!(names, ["limit", "raw", "tcp", "tls", "unix", "shm", "zmq", "inproc", "memcpy (one core)"]);
        for r in &rows {
            assert!(r.median > 0.0 && r.low <= r.median && r.median <= r.high, "{r:?}");
            assert!(r.cpu_ns_per_message > 0.0, "{r:?}");
        }
        let tcp = rows.iter().find(|r| r.contender == "tcp").unwrap();
        assert!(tcp.vs_raw.is_some() && tcp.vs_limit.is_some());
        let small = stream_rows(ends, &registry, &all, "small", 100, 50, 2, 1).await.unwrap();
        assert!(small.iter().all(|r| r.unit == "messages/s" && r.median > 0.0));
        let connects = connect_rows(&registry, &all, 3).await.unwrap();
        let names: Vec<&str> = connects.iter().map(|r| r.contender.as_str()).collect();
        assert_eq!(names, ["tcp", "tls", "unix", "shm", "zmq", "inproc"]);
        assert!(connects.iter().all(|r| r.median > 0.0 && r.vs_tcp.is_some()), "{connects:?}");
    }
}
