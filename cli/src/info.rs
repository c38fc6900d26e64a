//! `courier info`: the scheduler's view of its workers, one line each (threads, runs, results,
//! memory, spilling), or JSON.

use courier::courier_runtime::Client;
use courier::courier_runtime::protocol::WorkerSummary;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The scheduler's URL.
    scheduler: String,
    /// Print the workers as JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn run(args: Args, registry: courier::Registry) -> anyhow::Result<()> {
    let client = Client::connect(registry, &args.scheduler).await?;
    let workers = client.worker_info().await?;
    client.close().await;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&workers)?);
    } else {
        print!("{}", table(&workers));
    }
    Ok(())
}

fn mib(b: u64) -> String {
    format!("{:.0}", b as f64 / f64::from(1 << 20))
}

/// One line per worker: the columns `courier info` prints.
pub(crate) fn table(workers: &[WorkerSummary]) -> String {
    let mut out = format!(
        "{:<24} {:<28} {:>3} {:>5} {:>6} {:>7} {:>7} {:>7} {:>7} {:>7} {:>13} {:>13}\n",
        "name",
        "address",
        "thr",
        "runs",
        "held",
        "ran",
        "limit",
        "managed",
        "spilled",
        "rss",
        "spilled MiB/s",
        "read MiB/s"
    );
    for w in workers {
        let m = &w.memory;
        let rate = |bytes: u64, secs: f64| {
            if secs > 0.0 { format!("{:.0}", bytes as f64 / secs / 1048576.0) } else { "-".into() }
        };
        let state = if m.paused {
            " paused"
        } else if w.retiring {
            " retiring"
        } else {
            ""
        };
        out += &format!(
            "{:<24} {:<28} {:>3} {:>5} {:>6} {:>7} {:>7} {:>7} {:>7} {:>7} {:>13} {:>13}{state}\n",
            w.name,
            w.address,
            w.nthreads,
            w.processing,
            w.held,
            w.ran,
            if m.limit == 0 { "none".into() } else { mib(m.limit) },
            mib(m.managed),
            mib(m.spilled),
            mib(m.rss),
            rate(m.spill.bytes, m.spill.seconds),
            rate(m.unspill.bytes, m.unspill.seconds),
        );
        if let Some(e) = &m.spill_error {
            out += &format!("  spill error: {e}\n");
        }
    }
    out += "(memory in MiB)\n";
    out
}
