//! The same-host benchmark of the runtime: a tree reduction of `arrays` arrays of `rows` ×
//! 1024 f64 (64 MiB at the default 8192 rows) on 3 worker processes of this host, with the
//! workers' shm:// on and off (`--no-shm`, so tcp:// carries the data), interleaved run by run
//! in one invocation. The arrays are made and persisted first; the timing covers the pairwise
//! reduction only (31 `array_add`s, each fetching the inputs it lacks from other workers) and
//! a final `array_sum` whose 8-byte result comes back. Prints each run, then medians with the
//! spread, the ratio, and the bytes the workers fetched per transport.
//!
//! ```sh
//! cargo build --release -p courier-cli --bin courier --example shm_tree
//! target/release/examples/shm_tree target/release/courier [reps] [arrays] [rows] [--json FILE]
//! ```

use std::path::PathBuf;
use std::time::Instant;

use courier::courier_core::WireArray;
use courier::courier_runtime::{LocalCluster, TaskFuture, arg};
use courier::{Registry, RegistryExt};

#[derive(Debug, serde::Serialize)]
struct Run {
    mode: &'static str,
    rep: usize,
    seconds: f64,
    fetched_bytes_shm: u64,
    fetched_bytes_tcp: u64,
    sum: f64,
}

async fn run(bin: &std::path::Path, shm: bool, rep: usize, arrays: u64, rows: usize) -> anyhow::Result<Run> {
    let prefix: &[&str] = if shm { &["worker"] } else { &["worker", "--no-shm"] };
    let registry = Registry::with_default_transports();
    let cluster = LocalCluster::processes_with(registry, bin, "tcp://127.0.0.1:0", 3, bin, prefix).await?;
    let c = cluster.client().await?;
    let workers = c.wait_for_workers(|w| w.len() == 3).await?;
    let leaves: Vec<TaskFuture<WireArray>> =
        c.map("random_array", (0..arrays).map(|seed| vec![arg(&vec![rows, 1024]), arg(&seed)])).await?;
    c.wait(&leaves).await;
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
    let (mut fetched_bytes_shm, mut fetched_bytes_tcp) = (0, 0);
    for w in &workers {
        for t in c.worker_transfer_stats(w).await? {
            match t.scheme.as_str() {
                "shm" => fetched_bytes_shm += t.bytes,
                "tcp" => fetched_bytes_tcp += t.bytes,
                _ => {}
            }
        }
    }
    drop(level);
    c.close().await;
    cluster.shutdown().await;
    Ok(Run { mode: if shm { "shm" } else { "tcp" }, rep, seconds, fetched_bytes_shm, fetched_bytes_tcp, sum })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
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
        "tree reduction of {arrays} arrays of {rows}x1024 f64 ({} MiB each) on 3 worker processes, {reps} runs per mode",
        (rows * 1024 * 8) >> 20
    );
    let mut runs = Vec::new();
    for rep in 0..reps {
        for shm in [true, false] {
            let r = run(&bin, shm, rep, arrays, rows).await?;
            println!(
                "{} run {rep}: {:.3} s, fetched {} MiB over shm, {} MiB over tcp (sum {:.6e})",
                r.mode,
                r.seconds,
                r.fetched_bytes_shm >> 20,
                r.fetched_bytes_tcp >> 20,
                r.sum
            );
            runs.push(r);
        }
    }
    let times = |m: &str| runs.iter().filter(|r| r.mode == m).map(|r| r.seconds).collect::<Vec<_>>();
    let (shm, tcp) = (times("shm"), times("tcp"));
    let spread = |v: &[f64]| (v.iter().copied().fold(f64::MAX, f64::min), v.iter().copied().fold(0.0, f64::max));
    let (ms, mt) = (median(shm.clone()), median(tcp.clone()));
    println!("shm: median {ms:.3} s (spread {:.3}-{:.3})", spread(&shm).0, spread(&shm).1);
    println!("tcp: median {mt:.3} s (spread {:.3}-{:.3})", spread(&tcp).0, spread(&tcp).1);
    println!("speed-up of shm over tcp (median times): {:.2}x", mt / ms);
    assert!(runs.windows(2).all(|w| w[0].sum == w[1].sum), "every run computes the same sum");
    if let Some(path) = json {
        let doc = serde_json::json!({
            "arrays": arrays, "rows": rows, "cols": 1024, "workers": 3, "reps": reps,
            "median_seconds": {"shm": ms, "tcp": mt}, "speedup": mt / ms, "runs": runs,
        });
        std::fs::write(path, serde_json::to_string_pretty(&doc)?)?;
    }
    Ok(())
}
