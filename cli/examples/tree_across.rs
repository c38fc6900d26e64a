//! One timed tree reduction against a running cluster (scripts/links_bench.sh starts one per
//! run, its scheduler and workers on test hosts behind shaped links): `arrays` arrays of
//! `rows` × 1024 f64 made by `kind` (`random_array` or `smooth_array`) and persisted first;
//! the timing covers the pairwise reduction (each `array_add` fetches the inputs it lacks from
//! other workers) and a final `array_sum`. Prints one JSON line.
//!
//! ```sh
//! target/release/examples/tree_across tcp://10.99.0.1:8786 16 1024 smooth_array
//! ```

use std::time::Instant;

use courier::courier_core::WireArray;
use courier::courier_runtime::{Client, TaskFuture, arg};
use courier::{Registry, RegistryExt};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let url = args.first().ok_or_else(|| anyhow::anyhow!("usage: tree_across URL [arrays] [rows] [kind]"))?;
    let arrays: u64 = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(16);
    let rows: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(1024);
    let kind = args.get(3).map_or("random_array", String::as_str);
    let c = Client::connect(Registry::with_default_transports(), url).await?;
    let workers = c.wait_for_workers(|w| w.len() >= 3).await?;
    let leaves: Vec<TaskFuture<WireArray>> =
        c.map(kind, (0..arrays).map(|seed| vec![arg(&vec![rows, 1024]), arg(&seed)])).await?;
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
    let mut fetched = 0u64;
    for w in &workers {
        fetched += c.worker_transfer_stats(w).await?.iter().map(|t| t.bytes).sum::<u64>();
    }
    println!(
        "{}",
        serde_json::json!({"arrays": arrays, "rows": rows, "kind": kind, "seconds": seconds,
                           "fetched_bytes": fetched, "sum": sum})
    );
    c.close().await;
    Ok(())
}
