//! What the dashboard costs the scheduler: map + gather of `tasks` trivial tasks (`courier
//! bench-tasks`' measurement) on two process clusters started the same way — a `courier
//! scheduler` and 2 one-thread `courier worker` processes over tcp:// — one without the
//! dashboard ("off") and one with it and the live page open in headless Chromium for the
//! whole run ("page open"). Repetitions alternate between the two (off, on, off, on, …) so
//! the machine's drift hits both alike. Reported: the medians of tasks/s with the smallest
//! and largest, the scheduler process's CPU seconds per run (from /proc), and the ratio.
//! At the end the page shows the last run; its screenshot is saved.
//!
//! ```sh
//! npm ci --prefix scripts/dashboard   # playwright-core; Chromium from apt (chromium)
//! cargo build --release -p courier-cli --bin courier --example dashboard_bench
//! target/release/examples/dashboard_bench target/release/courier [tasks] [repeat] [--json FILE] [--screenshot PNG]
//! ```

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;

use courier::courier_runtime::{Client, LocalCluster, arg};
use courier::{Registry, RegistryExt};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

/// One map + gather: tasks per second and the scheduler's CPU seconds.
async fn run(c: &Client, scheduler_pid: u32, n: usize) -> anyhow::Result<(f64, f64)> {
    let cpu0 = courier_bench::process_cpu_of(scheduler_pid);
    let start = Instant::now();
    let futures = c.map::<i64>("inc", (0..n as i64).map(|i| vec![arg(&i)])).await?;
    let results = c.gather(&futures).await?;
    let took = start.elapsed().as_secs_f64();
    anyhow::ensure!(results.len() == n && results[n - 1] == n as i64, "wrong results");
    Ok((n as f64 / took, courier_bench::process_cpu_of(scheduler_pid) - cpu0))
}

#[derive(serde::Serialize)]
struct Row {
    cluster: &'static str,
    tasks: usize,
    median_tasks_per_s: f64,
    min_tasks_per_s: f64,
    max_tasks_per_s: f64,
    samples_tasks_per_s: Vec<f64>,
    median_scheduler_cpu_s: f64,
}

fn row(cluster: &'static str, tasks: usize, samples: &[(f64, f64)]) -> Row {
    let rate: Vec<f64> = samples.iter().map(|s| s.0).collect();
    let cpu: Vec<f64> = samples.iter().map(|s| s.1).collect();
    Row {
        cluster,
        tasks,
        median_tasks_per_s: median(&rate),
        min_tasks_per_s: rate.iter().copied().fold(f64::INFINITY, f64::min),
        max_tasks_per_s: rate.iter().copied().fold(0.0, f64::max),
        samples_tasks_per_s: rate,
        median_scheduler_cpu_s: median(&cpu),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut take = |flag: &str| -> Option<String> {
        let i = args.iter().position(|a| a == flag)?;
        let v = args.get(i + 1).cloned();
        args.drain(i..(i + 2).min(args.len()));
        v
    };
    let json = take("--json").map(PathBuf::from);
    let screenshot = take("--screenshot").map(PathBuf::from);
    let courier = PathBuf::from(args.first().ok_or_else(|| anyhow::anyhow!("give the courier binary"))?);
    let tasks: usize = args.get(1).map_or(Ok(100_000), |a| a.parse())?;
    let repeat: usize = args.get(2).map_or(Ok(5), |a| a.parse())?;

    let registry = Registry::with_default_transports();
    let listen = "tcp://127.0.0.1:0";
    let off = LocalCluster::processes(registry.clone(), &courier, listen, 2).await?;
    let on = LocalCluster::processes_with_scheduler_args(
        registry.clone(),
        &courier,
        listen,
        &["--dashboard", "127.0.0.1:0"],
        2,
    )
    .await?;
    let url = on.dashboard_url().ok_or_else(|| anyhow::anyhow!("the scheduler printed no dashboard"))?.to_owned();
    let (off_pid, on_pid) = (off.process_id(0).unwrap_or(0), on.process_id(0).unwrap_or(0));

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/dashboard/page.mjs");
    let shot = screenshot.clone().unwrap_or_else(|| std::env::temp_dir().join("courier-dashboard-bench.png"));
    let mut page = tokio::process::Command::new("node")
        .arg(&script)
        .args([url.as_str(), shot.to_str().unwrap_or(""), "2"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut seen = BufReader::new(page.stdout.take().expect("piped")).lines();
    let ready = seen.next_line().await?.unwrap_or_default();
    anyhow::ensure!(ready == "READY", "the page did not go live: {ready}");

    let (c_off, c_on) = (off.client().await?, on.client().await?);
    // One warm-up run each, not reported.
    run(&c_off, off_pid, tasks / 10).await?;
    run(&c_on, on_pid, tasks / 10).await?;
    let (mut s_off, mut s_on) = (Vec::new(), Vec::new());
    for i in 0..repeat {
        s_off.push(run(&c_off, off_pid, tasks).await?);
        s_on.push(run(&c_on, on_pid, tasks).await?);
        eprintln!("repetition {}: off {:.0} tasks/s, page open {:.0} tasks/s", i + 1, s_off[i].0, s_on[i].0);
    }
    let mut stdin = page.stdin.take().expect("piped");
    stdin.write_all(b"CHECK\n").await?;
    let check = seen.next_line().await?.unwrap_or_default();
    anyhow::ensure!(check.starts_with("OK "), "the page's check failed: {check}");

    let rows = [row("off", tasks, &s_off), row("page open", tasks, &s_on)];
    println!(
        "map + gather of {tasks} trivial tasks, {repeat} repetitions alternating; tcp:// scheduler + 2 one-thread worker processes"
    );
    for r in &rows {
        println!(
            "dashboard {:<10} median {:>8.0} tasks/s (min {:.0}, max {:.0})  scheduler CPU {:.3} s per run",
            r.cluster, r.median_tasks_per_s, r.min_tasks_per_s, r.max_tasks_per_s, r.median_scheduler_cpu_s
        );
    }
    let ratio = rows[1].median_tasks_per_s / rows[0].median_tasks_per_s;
    println!("page open / off: {ratio:.3} (target ≥ 0.95)");
    if screenshot.is_some() {
        println!("screenshot of the page after the last run: {}", shot.display());
    }
    if let Some(path) = json {
        let doc = serde_json::json!({ "rows": rows, "ratio_page_open_to_off": ratio });
        std::fs::write(path, serde_json::to_string_pretty(&doc)?)?;
    }
    drop((c_off, c_on));
    let _ = page.wait().await;
    off.shutdown().await;
    on.shutdown().await;
    Ok(())
}
