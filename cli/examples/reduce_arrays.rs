//! Builds random arrays on the workers and reduces them there, pairwise, worker to worker.
//!
//! ```sh
//! cargo run --release -p courier-cli --example reduce_arrays -- tcp://127.0.0.1:8786 [arrays] [rows]
//! ```

use courier::courier_core::WireArray;
use courier::courier_runtime::{Client, TaskFuture, arg};
use courier::{Registry, RegistryExt};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let scheduler = args.next().unwrap_or_else(|| "tcp://127.0.0.1:8786".into());
    let n: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(32);
    let rows: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(1000);
    let client = Client::connect(Registry::with_default_transports(), &scheduler).await?;
    println!("connected to {scheduler}; workers: {:?}", client.workers());

    // n arrays of rows × 1000 f64, made on the workers (nothing crosses to the client).
    let mut level: Vec<TaskFuture<WireArray>> =
        client.map("random_array", (0..n).map(|seed| vec![arg(&vec![rows, 1000]), arg(&seed)])).await?;
    // Pairwise sums: each add fetches its inputs from whichever workers hold them.
    while level.len() > 1 {
        let mut next = Vec::new();
        for pair in level.chunks(2) {
            next.push(client.submit("array_add", pair.iter().map(|f| f.arg()).collect()).await?);
        }
        level = next;
    }
    let mean = client.submit::<f64>("array_mean", vec![level[0].arg()]).await?;
    println!(
        "mean of the sum of {n} arrays of {rows}×1000: {:.4} (expected ≈ {:.1})",
        mean.result().await?,
        n as f64 / 2.0
    );
    client.close().await;
    Ok(())
}
