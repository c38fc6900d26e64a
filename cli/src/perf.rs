//! `courier perf`: an iperf-like tool to measure any transport between two processes or hosts.
//!
//! The client opens a comm and sends a control header `{"pattern", "payload"}`; then
//! - **stream**: it sends payload messages for the duration, each with a checksum in its header,
//!   then `end`; the server verifies every message and answers with what it received;
//! - **echo**: it sends a message and waits for it to come back, for the duration, timing each
//!   round trip and verifying the echo.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use courier::{Comm, Message, Registry};
use courier_bench::{Summary, format_bytes, payload_message};
use serde::{Deserialize, Serialize};

#[derive(Debug, clap::Subcommand)]
pub(crate) enum Perf {
    /// Accept perf clients (one at a time) until interrupted.
    Server {
        /// Where to listen; the scheme picks the transport.
        #[arg(long)]
        listen: String,
        /// Serve one client, then exit.
        #[arg(long)]
        once: bool,
    },
    /// Measure against a perf server.
    Client {
        /// The server's URL.
        url: String,
        /// Payload size per message (e.g. 100, 1MiB, 64MiB).
        #[arg(long, default_value = "8MiB")]
        payload: String,
        /// stream (one-way throughput) or echo (round trips).
        #[arg(long, default_value = "stream")]
        pattern: String,
        /// What the payload holds: random (incompressible), zeros, smooth (a float64 field
        /// that varies slowly, like a simulation's), or sparse (float64, runs of 64 values
        /// either zero or random, half each: shrinks to about half).
        #[arg(long, default_value = "random")]
        data: String,
        /// How long to measure, in seconds.
        #[arg(long, default_value_t = 5.0)]
        duration: f64,
        /// Build the payload in a buffer lent by shm://'s arena, as shm:// workers build their
        /// results (`ShmTransport::lend_buffers`): over shm:// it is then sent in place, with
        /// no copy. Without it the payload lives on the heap and each send copies it into the
        /// arena.
        #[arg(long)]
        lend: bool,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct Control {
    pattern: String,
    payload: usize,
}

#[derive(Debug, Serialize, Deserialize)]
struct Tagged {
    seq: u64,
    sum: u64,
    end: bool,
}

#[derive(Debug, Serialize, Deserialize)]
struct Received {
    messages: u64,
    bytes: u64,
    corrupt: u64,
    /// The server's resident memory when the stream started, and its peak during it (bytes;
    /// 0 where /proc is missing).
    #[serde(default)]
    rss_start: u64,
    #[serde(default)]
    rss_peak: u64,
    /// The server's CPU time (all its threads) from the stream's start to its end, seconds.
    #[serde(default)]
    cpu_seconds: f64,
    /// The server's memory with shared pages counted once (`courier_shm::resident_memory`)
    /// when the stream started, and its peak during it (sampled; bytes).
    #[serde(default)]
    once_start: u64,
    #[serde(default)]
    once_peak: u64,
}

/// This process's memory with shared pages counted once (`courier_shm::resident_memory`: a
/// sender's arena in the sender, a sealed frame in its receiver; `VmRSS` counts a shared page
/// in every process that touched it), and its peak, sampled between messages at most every
/// 10 ms (`VmHWM` has no such counterpart; a sampling thread's wake-ups slowed the stream).
struct OncePeak {
    start: u64,
    peak: u64,
    last: Instant,
}

impl OncePeak {
    fn sample() -> u64 {
        courier::courier_shm::resident_memory().unwrap_or(0)
    }

    fn start() -> Self {
        let start = Self::sample();
        OncePeak { start, peak: start, last: Instant::now() }
    }

    /// Samples if 10 ms have passed since the last sample.
    fn tick(&mut self) {
        if self.last.elapsed() >= Duration::from_millis(10) {
            self.peak = self.peak.max(Self::sample());
            self.last = Instant::now();
        }
    }

    /// (start, peak), with a last sample.
    fn finish(self) -> (u64, u64) {
        (self.start, self.peak.max(Self::sample()))
    }
}

/// This process's resident memory now (`VmRSS`) or its peak (`VmHWM`), in bytes (0 if
/// unknown).
fn rss(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(field)).map(str::to_owned))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<u64>().ok()))
        .map_or(0, |kb| kb * 1024)
}

/// CPU time this process (all its threads, living or gone) has used so far, in seconds.
fn cpu_seconds() -> f64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
}

/// Resets the peak to the current resident memory and returns it.
fn rss_mark() -> u64 {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    rss("VmRSS:")
}

/// The JSON result.
#[derive(Debug, Serialize)]
struct Report {
    url: String,
    pattern: String,
    data: String,
    payload_bytes: usize,
    /// The payload lives in a buffer lent by shm://'s arena (`--lend`).
    payload_lent: bool,
    seconds: f64,
    messages: u64,
    bytes: u64,
    corrupt: u64,
    throughput_bytes_per_s: f64,
    messages_per_s: f64,
    latency_p50_us: Option<f64>,
    latency_p99_us: Option<f64>,
    latency_max_us: Option<f64>,
    /// Stream only: resident memory the client grew by while sending (beyond the payload it
    /// built first), and the server beyond one payload (the message it holds), in bytes.
    client_extra_rss_bytes: Option<u64>,
    server_extra_rss_bytes: Option<u64>,
    /// The same with shared pages counted once, in the process answerable for them
    /// (`courier_shm::resident_memory`, sampled every 2 ms): a sender's arena is the
    /// sender's, the receiver's mapping of it is not the receiver's.
    client_extra_once_bytes: Option<u64>,
    server_extra_once_bytes: Option<u64>,
    /// Stream only: CPU time each side used (all its threads, user and system) from the
    /// stream's start to its end, seconds; divided by the bytes, what a byte costs each side.
    client_cpu_seconds: Option<f64>,
    server_cpu_seconds: Option<f64>,
    /// The cores this (the client's) machine offers. With both sides on one host, they share
    /// them: the sides' CPU per byte over the cores bounds what the same work could move.
    cores: usize,
}

/// A cheap checksum (wrapping sum of little-endian words) that catches lost, reordered or
/// corrupted bytes without slowing the measurement much.
fn checksum(b: &[u8]) -> u64 {
    let mut words = b.chunks_exact(8);
    let mut sum = 0u64;
    for (i, w) in (&mut words).enumerate() {
        sum = sum.wrapping_add(u64::from_le_bytes(w.try_into().expect("8 bytes")).rotate_left((i % 64) as u32));
    }
    for (i, &t) in words.remainder().iter().enumerate() {
        sum = sum.wrapping_add(u64::from(t) << (8 * i));
    }
    sum.wrapping_add(b.len() as u64)
}

/// `len` bytes of the kind `courier perf client --data` names.
fn payload_data(kind: &str, len: usize) -> anyhow::Result<Bytes> {
    Ok(match kind {
        "random" => payload_message(len).frames[0].clone(),
        "zeros" => Bytes::from(vec![0u8; len]),
        "smooth" => {
            // A 2-d field of float64 sampled from smooth waves, rows of 1024 values.
            let mut v = Vec::with_capacity(len + 8);
            let mut i = 0usize;
            while v.len() < len {
                let (r, c) = ((i / 1024) as f64, (i % 1024) as f64);
                let x = (r * 0.01).sin() * (c * 0.02).cos() + 0.5 * (r * 0.003 + c * 0.001).sin();
                v.extend_from_slice(&x.to_le_bytes());
                i += 1;
            }
            v.truncate(len);
            Bytes::from(v)
        }
        "sparse" => {
            let mut rng = fastrand::Rng::with_seed(11);
            let mut v = Vec::with_capacity(len + 512);
            while v.len() < len {
                let zero = rng.bool();
                for _ in 0..64 {
                    let x = if zero { 0.0 } else { rng.f64() };
                    v.extend_from_slice(&x.to_le_bytes());
                }
            }
            v.truncate(len);
            Bytes::from(v)
        }
        other => bail!("unknown --data {other:?} (random, zeros, smooth or sparse)"),
    })
}

fn header<T: Serialize>(v: &T) -> anyhow::Result<Bytes> {
    Ok(Bytes::from(serde_json::to_vec(v)?))
}

async fn serve_one(mut comm: Comm) -> anyhow::Result<()> {
    let control: Control = serde_json::from_slice(&comm.recv().await?.header).context("perf control header")?;
    match control.pattern.as_str() {
        "stream" => {
            let mut r = Received {
                messages: 0,
                bytes: 0,
                corrupt: 0,
                rss_start: rss_mark(),
                rss_peak: 0,
                cpu_seconds: 0.0,
                once_start: 0,
                once_peak: 0,
            };
            let mut once = OncePeak::start();
            let cpu_start = cpu_seconds();
            loop {
                let m = comm.recv().await?;
                let tag: Tagged = serde_json::from_slice(&m.header).context("perf message header")?;
                if tag.end {
                    break;
                }
                let frame = m.frames.first().cloned().unwrap_or_default();
                if tag.seq != r.messages || checksum(&frame) != tag.sum || frame.len() != control.payload {
                    r.corrupt += 1;
                }
                r.messages += 1;
                r.bytes += frame.len() as u64;
                once.tick();
            }
            r.rss_peak = rss("VmHWM:");
            (r.once_start, r.once_peak) = once.finish();
            r.cpu_seconds = cpu_seconds() - cpu_start;
            comm.send(Message::from_header(header(&r)?)).await?;
            // Linger until the client has the report and closes: on message transports (zmq://)
            // a send is only queued, and exiting now could drop it.
            while comm.recv().await.is_ok() {}
        }
        "echo" => loop {
            match comm.recv().await {
                Ok(m) => comm.send(m).await?,
                Err(e) if e.is_closed() => break,
                Err(e) => return Err(e.into()),
            }
        },
        other => bail!("unknown pattern {other:?}"),
    }
    Ok(())
}

pub(crate) async fn run(perf: Perf, mut registry: Registry) -> anyhow::Result<()> {
    match perf {
        Perf::Server { listen, once } => {
            let mut listener = registry.listen(&listen).await?;
            println!("perf server listening at {}", listener.contact_address());
            use std::io::Write as _;
            std::io::stdout().flush()?;
            loop {
                let comm = listener.accept().await?;
                if let Err(e) = serve_one(comm).await {
                    eprintln!("perf client failed: {e:#}");
                }
                if once {
                    return Ok(());
                }
            }
        }
        Perf::Client { url, payload, pattern, data, duration, lend, json } => {
            let len = crate::compare::parse_size(&payload)?;
            let mut frame = payload_data(&data, len)?;
            let mut payload_lent = false;
            if lend {
                let shm = courier::ShmTransport::new();
                shm.lend_buffers();
                registry.register(std::sync::Arc::new(shm));
                let mut buf = courier::courier_core::aligned::AlignedBuf::new(len);
                payload_lent = buf.is_lent();
                bytes::BufMut::put_slice(&mut buf, &frame);
                frame = buf.freeze();
            }
            let mut comm = registry.connect(&url).await?;
            comm.send(Message::from_header(header(&Control { pattern: pattern.clone(), payload: len })?)).await?;
            let sum = checksum(&frame);
            let budget = Duration::from_secs_f64(duration.max(0.01));
            let start = Instant::now();
            let (mut messages, mut corrupt, mut latencies) = (0u64, 0u64, Vec::new());
            let (mut client_extra, mut server_extra) = (None, None);
            let (mut client_cpu, mut server_cpu) = (None, None);
            let (mut client_once, mut server_once) = (None, None);
            let rss_start = rss_mark();
            let mut once = OncePeak::start();
            let cpu_start = cpu_seconds();
            match pattern.as_str() {
                "stream" => {
                    while start.elapsed() < budget {
                        let h = header(&Tagged { seq: messages, sum, end: false })?;
                        comm.send(Message::new(h, vec![frame.clone()])).await?;
                        messages += 1;
                        once.tick();
                    }
                    comm.send(Message::from_header(header(&Tagged { seq: messages, sum: 0, end: true })?)).await?;
                    let r: Received = serde_json::from_slice(&comm.recv().await?.header)?;
                    corrupt = r.corrupt + messages.abs_diff(r.messages);
                    client_cpu = Some(cpu_seconds() - cpu_start);
                    server_cpu = Some(r.cpu_seconds);
                    client_extra = Some(rss("VmHWM:").saturating_sub(rss_start));
                    server_extra = Some(r.rss_peak.saturating_sub(r.rss_start).saturating_sub(len as u64));
                    let (start, peak) = once.finish();
                    client_once = Some(peak.saturating_sub(start));
                    server_once = Some(r.once_peak.saturating_sub(r.once_start).saturating_sub(len as u64));
                }
                "echo" => {
                    while start.elapsed() < budget {
                        let t = Instant::now();
                        comm.send(Message::new(Bytes::from_static(b"echo"), vec![frame.clone()])).await?;
                        let back = comm.recv().await?;
                        latencies.push(t.elapsed());
                        if back.frames.first().is_none_or(|f| checksum(f) != sum) {
                            corrupt += 1;
                        }
                        messages += 1;
                    }
                }
                other => bail!("unknown pattern {other:?} (stream or echo)"),
            }
            let seconds = start.elapsed().as_secs_f64();
            comm.close().await?;
            let bytes = messages * len as u64;
            let lat = Summary::of(&mut latencies);
            let us = |d: Duration| d.as_secs_f64() * 1e6;
            let report = Report {
                url,
                pattern,
                data,
                payload_bytes: len,
                payload_lent,
                seconds,
                messages,
                bytes,
                corrupt,
                throughput_bytes_per_s: bytes as f64 / seconds,
                messages_per_s: messages as f64 / seconds,
                latency_p50_us: lat.map(|s| us(s.p50)),
                latency_p99_us: lat.map(|s| us(s.p99)),
                latency_max_us: lat.map(|s| us(s.max)),
                client_extra_rss_bytes: client_extra,
                server_extra_rss_bytes: server_extra,
                client_extra_once_bytes: client_once,
                server_extra_once_bytes: server_once,
                client_cpu_seconds: client_cpu,
                server_cpu_seconds: server_cpu,
                cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!(
                    "{} {} x {}: {}/s, {:.0} messages/s over {:.2} s, {} corrupt",
                    report.url,
                    report.pattern,
                    format_bytes(len as u64),
                    format_bytes(report.throughput_bytes_per_s as u64),
                    report.messages_per_s,
                    seconds,
                    corrupt
                );
                if let (Some(p50), Some(p99)) = (report.latency_p50_us, report.latency_p99_us) {
                    println!("round trip p50 {p50:.1} µs, p99 {p99:.1} µs");
                }
                let sides = |what: &str, c: u64, s: u64| {
                    let x = |b: u64| format!("{} ({:.2} x payload)", format_bytes(b), b as f64 / len as f64);
                    println!("{what}: sender {}, receiver {}", x(c), x(s));
                };
                if let (Some(c), Some(s)) = (client_extra, server_extra) {
                    sides("extra resident memory (VmRSS)", c, s);
                }
                if let (Some(c), Some(s)) = (client_once, server_once) {
                    sides("extra memory, shared pages counted once", c, s);
                }
                if let (Some(c), Some(s)) = (client_cpu, server_cpu) {
                    let gib = bytes as f64 / (1u64 << 30) as f64;
                    println!(
                        "CPU time: sender {c:.2} s ({:.1} ms per GiB), receiver {s:.2} s ({:.1} ms per GiB)",
                        c * 1e3 / gib,
                        s * 1e3 / gib
                    );
                }
            }
            if corrupt > 0 {
                bail!("{corrupt} messages were lost or corrupted");
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::checksum;

    /// The checksum tells apart what a broken transport delivers: a flipped bit, two words or
    /// two 64-byte blocks swapped, a lost tail byte, an extra zero byte.
    #[test]
    fn the_checksum_sees_flips_swaps_and_lengths() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        let sum = checksum(&data);
        let mut flipped = data.clone();
        flipped[4321] ^= 0x10;
        let mut words = data.clone();
        words.copy_within(0..8, 8000);
        words[..8].copy_from_slice(&data[8000..8008]);
        let mut blocks = data.clone();
        blocks[..64].copy_from_slice(&data[64..128]);
        blocks[64..128].copy_from_slice(&data[..64]);
        let mut longer = data.clone();
        longer.push(0);
        for (what, other) in [("flip", flipped), ("words", words), ("blocks", blocks), ("zero byte", longer)] {
            assert_ne!(checksum(&other), sum, "{what}");
        }
        assert_ne!(checksum(&data[..data.len() - 1]), sum, "a lost byte");
        assert_eq!(checksum(&data.clone()), sum, "the same bytes, the same sum");
    }
}
