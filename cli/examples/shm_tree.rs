//! The same-host benchmark of the runtime: a tree reduction of `arrays` arrays of `rows` ×
//! 1024 f64 (64 MiB at the default 8192 rows) on 3 worker processes of this host, with the
//! workers' shm:// on and off (`--no-shm`, so tcp:// carries the data).
//!
//! One cluster per mode lives for the whole invocation, as a cluster does in use; runs
//! alternate between the two. Every run makes fresh arrays (new seeds, so no worker holds a
//! replica from an earlier run) and persists them first; the timing covers the pairwise
//! reduction only (31 `array_add`s, each fetching the inputs it lacks from other workers) and
//! a final `array_sum` whose 8-byte result comes back. Each cluster's first run is *cold*: its
//! worker processes are new, so shm://'s arena segments and every process's buffer pool are
//! still to be faulted in. Cold runs are printed and written apart from the warm runs, whose
//! medians (with the spread) and ratio are the result. Prints the bytes the workers fetched
//! over each transport in each run.
//!
//! With `PERF_CTL_FIFO` set (`perf record -D -1 --control fifo:PATH`), perf samples the timed
//! reductions of the warm runs only (and of the cold ones too with `PERF_COLD` set).
//!
//! ```sh
//! cargo build --release -p courier-cli --bin courier --example shm_tree
//! target/release/examples/shm_tree target/release/courier [reps] [arrays] [rows] [--json FILE]
//! ```

use std::path::PathBuf;
use std::time::Instant;

use courier::courier_core::WireArray;
use courier::courier_runtime::{Client, LocalCluster, TaskFuture, arg};
use courier::{Registry, RegistryExt};

#[derive(Debug, serde::Serialize)]
struct Run {
    mode: &'static str,
    rep: usize,
    cold: bool,
    seconds: f64,
    fetched_bytes_shm: u64,
    fetched_bytes_tcp: u64,
    sum: f64,
}

struct Mode {
    name: &'static str,
    cluster: LocalCluster,
    client: Client,
    workers: Vec<String>,
}

impl Mode {
    async fn start(bin: &std::path::Path, shm: bool) -> anyhow::Result<Mode> {
        let prefix: &[&str] = if shm { &["worker"] } else { &["worker", "--no-shm"] };
        let registry = Registry::with_default_transports();
        let cluster = LocalCluster::processes_with(registry, bin, "tcp://127.0.0.1:0", 3, bin, prefix).await?;
        let client = cluster.client().await?;
        let workers = client.wait_for_workers(|w| w.len() == 3).await?;
        Ok(Mode { name: if shm { "shm" } else { "tcp" }, cluster, client, workers })
    }

    /// Bytes the workers fetched so far over (shm://, tcp://).
    async fn fetched(&self) -> anyhow::Result<(u64, u64)> {
        let (mut shm, mut tcp) = (0, 0);
        for w in &self.workers {
            for t in self.client.worker_transfer_stats(w).await? {
                match t.scheme.as_str() {
                    "shm" => shm += t.bytes,
                    "tcp" => tcp += t.bytes,
                    _ => {}
                }
            }
        }
        Ok((shm, tcp))
    }

    async fn run(&self, rep: usize, cold: bool, arrays: u64, rows: usize) -> anyhow::Result<Run> {
        let c = &self.client;
        let seeds = (rep as u64 * arrays)..(rep as u64 + 1) * arrays;
        let leaves: Vec<TaskFuture<WireArray>> =
            c.map("random_array", seeds.map(|seed| vec![arg(&vec![rows, 1024]), arg(&seed)])).await?;
        c.wait(&leaves).await;
        let before = self.fetched().await?;
        let profiled = !cold || std::env::var_os("PERF_COLD").is_some();
        if profiled {
            perf_control("enable\n");
        }
        let started = Instant::now();
        let mut level = leaves;
        while level.len() > 1 {
            let mut next = Vec::new();
            for pair in level.chunks(2) {
                next.push(c.submit("array_add", pair.iter().map(|f| f.arg()).collect()).await?);
            }
            level = next;
        }
        let sum = c.submit::<f64>("array_sum", vec![level[0].arg()]).await?.result().await?;
        let seconds = started.elapsed().as_secs_f64();
        if profiled {
            perf_control("disable\n");
        }
        let after = self.fetched().await?;
        Ok(Run {
            mode: self.name,
            rep,
            cold,
            seconds,
            fetched_bytes_shm: after.0 - before.0,
            fetched_bytes_tcp: after.1 - before.1,
            sum,
        })
    }

    async fn stop(self) {
        self.client.close().await;
        self.cluster.shutdown().await;
    }
}

/// With `PERF_CTL_FIFO` set (`perf record -D -1 --control fifo:PATH`), profiles only the timed
/// reductions of warm runs: `enable` before each, `disable` after.
fn perf_control(cmd: &str) {
    if let Some(path) = std::env::var_os("PERF_CTL_FIFO") {
        let _ = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, cmd.as_bytes()));
    }
}

/// The median (NaN for no runs: `reps` 0 makes the cold runs only).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let json = args.iter().position(|a| a == "--json").map(|i| PathBuf::from(&args[i + 1]));
    let pos: Vec<&String> = args.iter().take_while(|a| *a != "--json").collect();
    let bin = PathBuf::from(pos.first().map_or("target/release/courier", |s| s.as_str()));
    let reps: usize = pos.get(1).map(|s| s.parse()).transpose()?.unwrap_or(5);
    let arrays: u64 = pos.get(2).map(|s| s.parse()).transpose()?.unwrap_or(32);
    let rows: usize = pos.get(3).map(|s| s.parse()).transpose()?.unwrap_or(8192);
    println!(
        "tree reduction of {arrays} arrays of {rows}x1024 f64 ({} MiB each) on 3 worker processes per mode, \
         one cold run then {reps} warm runs per mode, alternating",
        (rows * 1024 * 8) >> 20
    );
    let modes = [Mode::start(&bin, true).await?, Mode::start(&bin, false).await?];
    let mut runs = Vec::new();
    for rep in 0..=reps {
        for mode in &modes {
            let r = mode.run(rep, rep == 0, arrays, rows).await?;
            println!(
                "{} {} {rep}: {:.3} s, fetched {} MiB over shm, {} MiB over tcp (sum {:.6e})",
                r.mode,
                if r.cold { "cold run" } else { "run" },
                r.seconds,
                r.fetched_bytes_shm >> 20,
                r.fetched_bytes_tcp >> 20,
                r.sum
            );
            runs.push(r);
        }
    }
    for mode in modes {
        mode.stop().await;
    }
    let times = |m: &str| runs.iter().filter(|r| r.mode == m && !r.cold).map(|r| r.seconds).collect::<Vec<_>>();
    let cold = |m: &str| runs.iter().find(|r| r.mode == m && r.cold).map_or(f64::NAN, |r| r.seconds);
    let (shm, tcp) = (times("shm"), times("tcp"));
    let spread = |v: &[f64]| (v.iter().copied().fold(f64::MAX, f64::min), v.iter().copied().fold(0.0, f64::max));
    let (ms, mt) = (median(shm.clone()), median(tcp.clone()));
    println!("shm: median {ms:.3} s (spread {:.3}-{:.3})", spread(&shm).0, spread(&shm).1);
    println!("tcp: median {mt:.3} s (spread {:.3}-{:.3})", spread(&tcp).0, spread(&tcp).1);
    println!("speed-up of shm over tcp (median times of the warm runs): {:.2}x", mt / ms);
    println!(
        "cold runs (new worker processes): shm {:.3} s, tcp {:.3} s, speed-up {:.2}x",
        cold("shm"),
        cold("tcp"),
        cold("tcp") / cold("shm")
    );
    for rep in 0..=reps {
        let sums: Vec<f64> = runs.iter().filter(|r| r.rep == rep).map(|r| r.sum).collect();
        assert!(sums.windows(2).all(|w| w[0] == w[1]), "both modes compute the same sum in run {rep}");
    }
    if let Some(path) = json {
        let doc = serde_json::json!({
            "arrays": arrays, "rows": rows, "cols": 1024, "workers": 3, "reps": reps,
            "median_seconds": {"shm": ms, "tcp": mt}, "speedup": mt / ms,
            "cold_seconds": {"shm": cold("shm"), "tcp": cold("tcp")}, "runs": runs,
        });
        std::fs::write(path, serde_json::to_string_pretty(&doc)?)?;
    }
    Ok(())
}
