//! `courier stability`: repeat a mixed workload per transport, with faults injected, and count
//! everything that went wrong. A run that loses, corrupts or hangs fails.
//!
//! Per transport and repetition, each phase under a timeout (a timeout is a hang):
//!
//! 1. **echo** ([`echo`]): concurrent comms send numbered messages of unique content (0 B to
//!    64 MiB); every answer is checked for its comm, sequence and bytes, so a lost, corrupt,
//!    misdelivered or stale message is counted, never waited for. TCP-based transports go
//!    through a [proxy] that cuts or stalls connections at random points: loss on a cut
//!    connection is explained; any other is not. One comm is dropped by its server and must
//!    see `Closed`.
//! 2. **graph** ([`graphs`]): a tree reduction on an in-process scheduler and two workers over
//!    the transport, checked against an answer computed without any transport.
//! 3. **freeze**: a worker process SIGSTOPped mid-graph past the heartbeat timeout, then
//!    resumed (not for inproc://).
//! 4. **restart**: the scheduler process killed under its workers and a client, then a new one
//!    on the same address (not for inproc://).
//!
//! `--plant drop|misdeliver` makes the echo server lose or misdeliver one message on purpose,
//! to check that the run reports it.

mod content;
mod echo;
mod graphs;
mod proxy;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use courier_bench::Summary;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Fault {
    /// The fault proxy on TCP-based transports' echo phase.
    Proxy,
    /// A worker process SIGSTOPped mid-graph, then resumed.
    Freeze,
    /// The scheduler process killed, then restarted on its address.
    Restart,
}

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Transports to test (listen URLs).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "tcp://127.0.0.1:0,unix://,shm://,zmq://127.0.0.1:0,tls://127.0.0.1:0,inproc://"
    )]
    urls: Vec<String>,
    /// Repetitions per transport.
    #[arg(long, default_value_t = 20)]
    repeat: usize,
    /// Concurrent comms per repetition.
    #[arg(long, default_value_t = 6)]
    comms: u32,
    /// Messages per comm per repetition.
    #[arg(long, default_value_t = 24)]
    messages: u32,
    /// Seconds before a phase counts as a hang.
    #[arg(long, default_value_t = 60.0)]
    timeout: f64,
    /// Faults to inject (`none` for none).
    #[arg(long, value_delimiter = ',', default_value = "proxy,freeze,restart")]
    faults: Vec<FaultArg>,
    /// Plant a fault in the echo server, so the run must report it (for tests).
    #[arg(long, hide = true)]
    plant: Option<echo::Plant>,
    /// Write the results as JSON.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum FaultArg {
    None,
    Proxy,
    Freeze,
    Restart,
}

#[derive(Debug, Default, Serialize)]
struct Row {
    transport: String,
    repetitions: usize,
    /// Repetitions in which every phase passed.
    ok: usize,
    failures: usize,
    hangs: usize,
    messages: u64,
    lost: u64,
    corrupt: u64,
    /// Messages unanswered on connections the proxy cut or the server dropped on purpose.
    explained: u64,
    abrupt_closes_seen_as_closed: u64,
    proxy_cuts: u64,
    proxy_stalls: u64,
    graphs_ok: u64,
    freezes_ok: u64,
    restarts_ok: u64,
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

/// Runs `phase` under the timeout and records a failure or a hang. True when it passed.
async fn phase<F: std::future::Future<Output = anyhow::Result<()>>>(
    row: &mut Row,
    name: &str,
    timeout: Duration,
    f: F,
) -> bool {
    match tokio::time::timeout(timeout, f).await {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            row.failures += 1;
            row.errors.push(format!("{name}: {e:#}"));
            false
        }
        Err(_) => {
            row.hangs += 1;
            row.errors.push(format!("{name}: no end within {timeout:?}"));
            false
        }
    }
}

/// Node processes for `url`'s scheme, with TLS files for tls://.
fn processes(url: &str, dir: &std::path::Path) -> anyhow::Result<graphs::Processes> {
    let courier = std::env::current_exe().context("locating the courier binary")?;
    let mut registry = courier_bench::registry();
    let mut flags = Vec::new();
    if url.starts_with("tls://") {
        let pki = courier::courier_tls::test_certs::TestPki::generate();
        let path = |name: &str, text: &str| -> anyhow::Result<String> {
            let p = dir.join(name);
            std::fs::write(&p, text)?;
            Ok(p.to_string_lossy().into_owned())
        };
        flags = vec![
            "--tls-ca".into(),
            path("ca.pem", &pki.ca)?,
            "--tls-cert".into(),
            path("node.pem", &pki.server_cert)?,
            "--tls-key".into(),
            path("node.key", &pki.server_key)?,
        ];
        registry.register(Arc::new(courier::courier_tls::TlsTransport::from_pem(&pki.node())?));
    }
    Ok(graphs::Processes { courier, flags, registry })
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let registry = courier_bench::registry();
    let faults: Vec<Fault> = args
        .faults
        .iter()
        .filter_map(|f| match f {
            FaultArg::None => None,
            FaultArg::Proxy => Some(Fault::Proxy),
            FaultArg::Freeze => Some(Fault::Freeze),
            FaultArg::Restart => Some(Fault::Restart),
        })
        .collect();
    let timeout = Duration::from_secs_f64(args.timeout);
    let dir = std::env::temp_dir().join(format!("courier-stability-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut rows = Vec::new();
    println!(
        "{:<22} {:>4} {:>4} {:>5} {:>5} {:>8} {:>5} {:>7} {:>9} {:>5} {:>6} {:>6} {:>7} {:>8} {:>8} {:>9} {:>5}",
        "transport",
        "reps",
        "ok",
        "fail",
        "hangs",
        "messages",
        "lost",
        "corrupt",
        "explained",
        "cuts",
        "stalls",
        "graphs",
        "freezes",
        "restarts",
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
        let tcp_based = ["tcp://", "tls://", "zmq://"].iter().any(|s| url.starts_with(s));
        let settings = echo::Settings {
            comms: args.comms,
            messages: args.messages,
            timeout,
            proxy: tcp_based && faults.contains(&Fault::Proxy),
            plant: args.plant,
        };
        let procs = if url.starts_with("inproc://") { None } else { Some(processes(url, &dir)?) };
        let mut latencies = Vec::new();
        let (mut rss0, mut fd0) = (0.0, 0);
        for r in 0..args.repeat {
            let seed = r as u64 + 1;
            let mut all = true;
            let trace = echo::Trace::new();
            match tokio::time::timeout(timeout, echo::run(&registry, url, seed, &settings, &trace)).await {
                Ok(Ok(o)) => {
                    row.messages += o.messages;
                    row.lost += o.lost;
                    row.corrupt += o.corrupt;
                    row.explained += o.explained;
                    row.abrupt_closes_seen_as_closed += o.abrupt_seen;
                    row.proxy_cuts += o.cuts;
                    row.proxy_stalls += o.stalls;
                    row.hangs += o.hangs as usize;
                    latencies.extend(o.latencies);
                    if !o.errors.is_empty() {
                        row.failures += 1;
                        row.errors.extend(o.errors.into_iter().map(|e| format!("echo {seed}: {e}")));
                        all = false;
                    }
                }
                Ok(Err(e)) => {
                    row.failures += 1;
                    row.errors.push(format!("echo {seed}: {e:#}"));
                    all = false;
                }
                Err(_) => {
                    row.hangs += 1;
                    let running = trace.unfinished().unwrap_or_else(|| "nothing".into());
                    row.errors.push(format!("echo {seed}: no end within {timeout:?}; still running: {running}"));
                    all = false;
                }
            }
            if phase(&mut row, "graph", timeout, graphs::graph(&registry, url, seed)).await {
                row.graphs_ok += 1;
            } else {
                all = false;
            }
            if let Some(p) = &procs {
                if faults.contains(&Fault::Freeze) {
                    if phase(&mut row, "freeze", timeout, graphs::freeze(p, url, seed)).await {
                        row.freezes_ok += 1;
                    } else {
                        all = false;
                    }
                }
                if faults.contains(&Fault::Restart) {
                    if phase(&mut row, "restart", timeout, graphs::restart(p, url)).await {
                        row.restarts_ok += 1;
                    } else {
                        all = false;
                    }
                }
            }
            row.ok += usize::from(all);
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
                "{:<22} {:>4} {:>4} {:>5} {:>5} {:>8} {:>5} {:>7} {:>9} {:>5} {:>6} {:>6} {:>7} {:>8} {:>8.1} {:>9.1} {:>5}",
                row.transport,
                row.repetitions,
                row.ok,
                row.failures,
                row.hangs,
                row.messages,
                row.lost,
                row.corrupt,
                row.explained,
                row.proxy_cuts,
                row.proxy_stalls,
                row.graphs_ok,
                row.freezes_ok,
                row.restarts_ok,
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
    let _ = std::fs::remove_dir_all(&dir);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&rows)?).context("writing JSON")?;
        println!("wrote {}", path.display());
    }
    let bad: u64 = rows.iter().map(|r| (r.failures + r.hangs) as u64 + r.lost + r.corrupt).sum();
    anyhow::ensure!(bad == 0, "{bad} failures, hangs, lost or corrupt messages");
    Ok(())
}
