//! `courier bench-tasks`: task throughput of the runtime, as DESIGN.md's targets define it.

use std::time::{Duration, Instant};

use anyhow::Context;
use courier::courier_runtime::{Client, Functions, LocalCluster, arg};
use courier::{InprocTransport, Registry, RegistryExt};
use futures::StreamExt;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Trivial tasks for the map + gather measurements.
    #[arg(long, default_value_t = 100_000)]
    tasks: usize,
    /// Tasks completed in the as_completed measurement.
    #[arg(long, default_value_t = 20_000)]
    as_completed_tasks: usize,
    /// Tasks kept in flight by the as_completed loop.
    #[arg(long, default_value_t = 200)]
    in_flight: usize,
    /// Repetitions; the median is reported with the smallest and largest.
    #[arg(long, default_value_t = 5)]
    repeat: usize,
    /// Schemes for the process clusters (empty: in-process only).
    #[arg(long, value_delimiter = ',', default_value = "tcp,zmq")]
    schemes: Vec<String>,
    /// Write the results as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Also measure the in-process cluster with comms that serialize every message (the
    /// baseline of its typed fast path).
    #[arg(long)]
    serializing: bool,
    /// Also measure many workers: this many one-thread workers in process (0: none)...
    #[arg(long, default_value_t = 0)]
    many_inproc: usize,
    /// ...and this many one-thread worker processes per scheme of `--many-schemes` (0: none).
    #[arg(long, default_value_t = 0)]
    many_processes: usize,
    /// Schemes for the many-worker process clusters.
    #[arg(long, value_delimiter = ',', default_value = "tcp,unix")]
    many_schemes: Vec<String>,
    /// Measure the running cluster of this scheduler instead, alone (no cluster is started;
    /// its workers must have the built-in functions).
    #[arg(long)]
    scheduler: Option<String>,
}

fn listen_url(scheme: &str) -> String {
    match scheme {
        "unix" | "shm" | "inproc" => format!("{scheme}://"),
        _ => format!("{scheme}://127.0.0.1:0"),
    }
}

async fn map_gather(c: &Client, n: usize) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let futures = c.map::<i64>("inc", (0..n as i64).map(|i| vec![arg(&i)])).await?;
    let results = c.gather(&futures).await?;
    let took = start.elapsed();
    anyhow::ensure!(results.len() == n && results[n - 1] == n as i64, "wrong results");
    Ok(took)
}

async fn as_completed_loop(c: &Client, total: usize, in_flight: usize) -> anyhow::Result<Duration> {
    // Never more in flight than the run has tasks (it would complete more than it asked for).
    let in_flight = in_flight.min(total);
    let start = Instant::now();
    let first = c.map::<i64>("inc", (0..in_flight as i64).map(|i| vec![arg(&i)])).await?;
    let mut stream = c.as_completed(first);
    let (mut done, mut submitted) = (0, in_flight);
    while let Some(f) = stream.next().await {
        f.wait().await?;
        done += 1;
        if submitted < total {
            stream.add(c.submit::<i64>("inc", vec![arg(&(submitted as i64))]).await?);
            submitted += 1;
        }
    }
    anyhow::ensure!(done == total, "{done} of {total} tasks completed");
    Ok(start.elapsed())
}

/// Waits until the cluster has done what the last measurement left behind: its futures were
/// dropped as it returned, and releasing 10^5 keys costs the scheduler and the workers as much
/// as a sixth of the measurement. One more task, submitted after the releases and waited for,
/// completes only after the scheduler has handled them (it handles a client's messages in
/// order). Without this the next measurement, of the next cluster in turn, paid for it: the
/// in-process cluster, measured after the zmq:// cluster, read 457k tasks/s in its first
/// repetition and ~369k in the four after.
async fn settle(c: &Client) -> anyhow::Result<()> {
    c.submit::<i64>("inc", vec![arg(&0i64)]).await?.wait().await?;
    Ok(())
}

/// The median of a non-empty sample (the mean of the middle two for an even count).
fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

#[derive(serde::Serialize)]
struct Row {
    measurement: String,
    cluster: String,
    tasks: usize,
    median_tasks_per_s: f64,
    min_tasks_per_s: f64,
    max_tasks_per_s: f64,
    samples_tasks_per_s: Vec<f64>,
}

/// What one measurement of one cluster gave.
struct Measured {
    /// Which measurement: 0 map + gather, 1 as_completed (the table's order).
    which: usize,
    measurement: String,
    tasks: usize,
    cluster: String,
    rates: Vec<f64>,
}

/// The map + gather and as_completed measurements of `clients`, `repeat` times each; then
/// closes the clients. Repetitions take the clients in turn, so a slow spell of this shared
/// machine falls on all of them rather than on one.
async fn measure(
    args: &Args,
    clients: Vec<(String, Client)>,
    progress: &indicatif::ProgressBar,
) -> anyhow::Result<Vec<Measured>> {
    let window = format!("as_completed, {} in flight", args.in_flight.min(args.as_completed_tasks));
    let mut out = Vec::new();
    for (which, (measurement, n)) in
        [("map + gather", args.tasks), (window.as_str(), args.as_completed_tasks)].into_iter().enumerate()
    {
        let mut rates = vec![Vec::new(); clients.len()];
        for _ in 0..args.repeat.max(1) {
            for (i, (name, c)) in clients.iter().enumerate() {
                progress.set_message(name.clone());
                let took =
                    if which == 0 { map_gather(c, n).await? } else { as_completed_loop(c, n, args.in_flight).await? };
                settle(c).await?;
                rates[i].push(n as f64 / took.as_secs_f64());
                progress.inc(1);
            }
        }
        for ((name, _), rates) in clients.iter().zip(rates) {
            out.push(Measured { which, measurement: measurement.into(), tasks: n, cluster: name.clone(), rates });
        }
    }
    for (_, c) in clients {
        c.close().await;
    }
    Ok(out)
}

pub(crate) async fn run(args: Args, registry: Registry) -> anyhow::Result<()> {
    let many = many_specs(&args);
    let runs = |clusters: usize| (clusters * 2 * args.repeat.max(1)) as u64;
    let mut measured = Vec::new();
    let progress = indicatif::ProgressBar::new(0)
        .with_style(indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} runs {msg}").expect("template"));
    if let Some(url) = &args.scheduler {
        let client = Client::connect(registry, url).await.with_context(|| format!("connecting to {url}"))?;
        let clients = vec![(format!("the cluster of {url}"), client)];
        progress.inc_length(runs(1));
        measured.extend(measure(&args, clients, &progress).await?);
    } else {
        // The clusters of two workers first, in turns; then each many-worker cluster alone,
        // started for its measurement and stopped after it: 64 idle worker processes cost
        // ~5 % of a core (memory samples and heartbeats), which the other clusters'
        // measurements must not pay.
        let clusters = start_clusters(&args).await?;
        let mut clients = Vec::new();
        for (name, cluster) in &clusters {
            clients.push((name.clone(), cluster.client().await?));
        }
        progress.inc_length(runs(clients.len() + many.len()));
        measured.extend(measure(&args, clients, &progress).await?);
        for (_, c) in clusters {
            c.shutdown().await;
        }
        for spec in &many {
            let (name, cluster) = start_many(spec, &progress).await?;
            let clients = vec![(name, cluster.client().await?)];
            measured.extend(measure(&args, clients, &progress).await?);
            cluster.shutdown().await;
        }
    }
    progress.finish_and_clear();
    // Printed as one table: per measurement, every cluster.
    measured.sort_by_key(|m| m.which);
    println!(
        "{:<58} {:<28} {:>8} {:>14} {:>20}",
        "cluster", "measurement", "tasks", "median tasks/s", "spread (min-max)"
    );
    let mut rows = Vec::new();
    for m in measured {
        let (lo, hi) = m.rates.iter().fold((f64::MAX, 0.0f64), |(lo, hi), &r| (lo.min(r), hi.max(r)));
        let med = median(&m.rates);
        let spread = format!("{lo:.0}-{hi:.0}");
        println!("{:<58} {:<28} {:>8} {med:>14.0} {spread:>20}", m.cluster, m.measurement, m.tasks);
        rows.push(Row {
            measurement: m.measurement,
            cluster: m.cluster,
            tasks: m.tasks,
            median_tasks_per_s: med,
            min_tasks_per_s: lo,
            max_tasks_per_s: hi,
            samples_tasks_per_s: m.rates,
        });
    }
    if let Some(path) = args.json {
        std::fs::write(&path, serde_json::to_string_pretty(&rows)?)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// Starts the two-worker clusters `args` asks for: in process (and serializing), then
/// process clusters per scheme.
async fn start_clusters(args: &Args) -> anyhow::Result<Vec<(String, LocalCluster)>> {
    let exe = std::env::current_exe().context("locating the courier binary")?;
    let mut clusters = Vec::new();
    clusters.push((
        "LocalCluster inproc:// (in-process, 2 workers)".into(),
        LocalCluster::inproc(Registry::with_default_transports(), 2, Functions::with_builtins()).await?,
    ));
    if args.serializing {
        // The same cluster with comms that MessagePack-encode every message, as over a wire:
        // the baseline of the in-process fast path (typed values), measured in the same run.
        let registry = Registry::with_default_transports().with(std::sync::Arc::new(InprocTransport::serializing()));
        clusters.push((
            "LocalCluster inproc:// serializing (in-process, 2 workers)".into(),
            LocalCluster::inproc(registry, 2, Functions::with_builtins()).await?,
        ));
    }
    for scheme in args.schemes.iter().filter(|s| !s.is_empty()) {
        let cluster =
            LocalCluster::processes(Registry::with_default_transports(), &exe, &listen_url(scheme), 2).await?;
        clusters.push((format!("{scheme}:// scheduler + 2 worker processes"), cluster));
    }
    Ok(clusters)
}

/// A many-worker cluster to measure: in process with this many workers, or this many worker
/// processes over this scheme.
enum Many {
    InProcess(usize),
    Processes(String, usize),
}

fn many_specs(args: &Args) -> Vec<Many> {
    let mut specs = Vec::new();
    if args.many_inproc > 0 {
        specs.push(Many::InProcess(args.many_inproc));
    }
    for scheme in args.many_schemes.iter().filter(|s| !s.is_empty() && args.many_processes > 0) {
        specs.push(Many::Processes(scheme.clone(), args.many_processes));
    }
    specs
}

/// Starts one many-worker cluster, named.
async fn start_many(spec: &Many, progress: &indicatif::ProgressBar) -> anyhow::Result<(String, LocalCluster)> {
    Ok(match spec {
        &Many::InProcess(n) => {
            let cluster = LocalCluster::in_process(
                Registry::with_default_transports(),
                "inproc://",
                n,
                1,
                Functions::with_builtins(),
            )
            .await?;
            (format!("LocalCluster inproc:// (in-process, {n} workers)"), cluster)
        }
        Many::Processes(scheme, n) => {
            let exe = std::env::current_exe().context("locating the courier binary")?;
            let registering = Instant::now();
            let cluster = LocalCluster::processes_with(
                Registry::with_default_transports(),
                &exe,
                &listen_url(scheme),
                *n,
                &exe,
                &["worker", "--nthreads", "1"],
            )
            .await?;
            progress.suspend(|| {
                println!(
                    "{scheme}://: {n} worker processes started and registered in {:.2} s",
                    registering.elapsed().as_secs_f64()
                );
            });
            (format!("{scheme}:// scheduler + {n} worker processes"), cluster)
        }
    })
}
