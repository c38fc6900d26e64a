//! Root-task queuing, measured on real processes: a scheduler and 2 one-thread worker
//! processes over tcp://, with queuing on (`--worker-saturation 1.1`, the default) and off
//! (`inf`), interleaved run by run in one invocation, fresh processes each run.
//!
//! - **Wide reduction:** `roots` arrays of `mib` MiB (`random_array`), reduced by `array_add`
//!   with fan-in 4 to one array, then `array_sum`. Reported: wall time and each worker
//!   process's peak resident memory (VmHWM); their sum is the cluster's peak (an upper bound
//!   of the peak of the sum).
//! - **Trivial tasks:** `tasks` independent `inc` tasks mapped and gathered (as `courier
//!   bench-tasks` does): tasks per second.
//!
//! Prints each run, then medians with the spread and the on/off ratios.
//!
//! ```sh
//! cargo build --release -p courier-cli --bin courier --example root_queuing
//! target/release/examples/root_queuing target/release/courier [reps] [roots] [mib] [tasks] [--json FILE]
//! ```

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;

use courier::courier_core::WireArray;
use courier::courier_runtime::{Client, TaskFuture, arg};
use courier::{Registry, RegistryExt};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

#[derive(Debug, Clone, serde::Serialize)]
struct Run {
    queuing: bool,
    rep: usize,
    reduction_seconds: f64,
    peak_rss_bytes: Vec<u64>,
    trivial_tasks_per_second: f64,
    sum: f64,
}

fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

async fn spawn_cluster(bin: &Path, saturation: &str) -> anyhow::Result<(String, Vec<Child>)> {
    let mut scheduler = Command::new(bin)
        .args(["scheduler", "--listen", "tcp://127.0.0.1:0", "--worker-saturation", saturation])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = BufReader::new(scheduler.stdout.take().expect("piped")).lines();
    let address = loop {
        let line = lines.next_line().await?.ok_or_else(|| anyhow::anyhow!("the scheduler exited"))?;
        if let Some(a) = line.strip_prefix("scheduler listening at ") {
            break a.trim().to_owned();
        }
    };
    let mut children = vec![scheduler];
    for i in 0..2 {
        let w = Command::new(bin)
            .args(["worker", &address, "--memory-limit", "none", "--no-shm", "--name", &format!("w{i}")])
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        children.push(w);
    }
    Ok((address, children))
}

async fn run(bin: &Path, queuing: bool, rep: usize, roots: u64, mib: usize, tasks: i64) -> anyhow::Result<Run> {
    let (address, mut children) = spawn_cluster(bin, if queuing { "1.1" } else { "inf" }).await?;
    let c = Client::connect(Registry::with_default_transports(), &address).await?;
    c.wait_for_workers(|w| w.len() == 2).await?;
    let started = Instant::now();
    let n = mib << 17; // f64 elements
    let mut level: Vec<TaskFuture<WireArray>> =
        c.map("random_array", (0..roots).map(|seed| vec![arg(&vec![n]), arg(&seed)])).await?;
    while level.len() > 1 {
        let mut next = Vec::new();
        for group in level.chunks(4) {
            next.push(c.submit("array_add", group.iter().map(|f| f.arg()).collect()).await?);
        }
        level = next;
    }
    let sum = c.submit::<f64>("array_sum", vec![level[0].arg()]).await?.result().await?;
    let reduction_seconds = started.elapsed().as_secs_f64();
    let peak_rss_bytes = children[1..].iter().filter_map(|ch| ch.id()).map(peak_rss).collect();
    drop(level);
    let started = Instant::now();
    let futures: Vec<TaskFuture<i64>> = c.map("inc", (0..tasks).map(|i| vec![arg(&i)])).await?;
    let values = c.gather(&futures).await?;
    anyhow::ensure!(values.iter().zip(1..).all(|(v, i)| *v == i), "inc computed wrongly");
    let trivial_tasks_per_second = tasks as f64 / started.elapsed().as_secs_f64();
    drop(futures);
    c.close().await;
    for ch in &mut children {
        let _ = ch.kill().await;
    }
    Ok(Run { queuing, rep, reduction_seconds, peak_rss_bytes, trivial_tasks_per_second, sum })
}

fn stats(v: Vec<f64>) -> (f64, f64, f64) {
    let mut v = v;
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let json = args.iter().position(|a| a == "--json").map(|i| PathBuf::from(&args[i + 1]));
    let pos: Vec<&String> = args.iter().take_while(|a| *a != "--json").collect();
    let bin = PathBuf::from(pos.first().map_or("target/release/courier", |s| s.as_str()));
    let reps: usize = pos.get(1).map(|s| s.parse()).transpose()?.unwrap_or(5);
    let roots: u64 = pos.get(2).map(|s| s.parse()).transpose()?.unwrap_or(256);
    let mib: usize = pos.get(3).map(|s| s.parse()).transpose()?.unwrap_or(4);
    let tasks: i64 = pos.get(4).map(|s| s.parse()).transpose()?.unwrap_or(20_000);
    println!(
        "root-task queuing: 2 one-thread worker processes over tcp://; a fan-in-4 reduction of {roots} arrays of \
         {mib} MiB, then {tasks} trivial tasks; {reps} repetitions, queuing on and off interleaved"
    );
    let mut runs = Vec::new();
    for rep in 0..reps {
        for queuing in [true, false] {
            let r = run(&bin, queuing, rep, roots, mib, tasks).await?;
            println!(
                "  {:<4} rep {rep}: reduction {:.2} s, workers' peak RSS {:?} MiB, trivial {:.0} tasks/s",
                if queuing { "on" } else { "off" },
                r.reduction_seconds,
                r.peak_rss_bytes.iter().map(|b| b >> 20).collect::<Vec<_>>(),
                r.trivial_tasks_per_second
            );
            runs.push(r);
        }
    }
    let sums: Vec<f64> = runs.iter().map(|r| r.sum).collect();
    anyhow::ensure!(sums.windows(2).all(|w| w[0] == w[1]), "every run computed the same sum: {sums:?}");
    let pick = |q: bool, f: &dyn Fn(&Run) -> f64| stats(runs.iter().filter(|r| r.queuing == q).map(f).collect());
    let peak = |r: &Run| r.peak_rss_bytes.iter().sum::<u64>() as f64 / (1u64 << 20) as f64;
    let secs = |r: &Run| r.reduction_seconds;
    let tps = |r: &Run| r.trivial_tasks_per_second;
    println!("{:<36} {:>12} {:>22} {:>12} {:>22} {:>8}", "", "on", "spread", "off", "spread", "on/off");
    for (what, f) in [
        ("cluster peak RSS (MiB, sum of workers)", &peak as &dyn Fn(&Run) -> f64),
        ("reduction wall time (s)", &secs),
        ("trivial tasks per second", &tps),
    ] {
        let (on, on_lo, on_hi) = pick(true, f);
        let (off, off_lo, off_hi) = pick(false, f);
        println!(
            "{what:<36} {on:>12.1} {:>22} {off:>12.1} {:>22} {:>8.2}",
            format!("{on_lo:.1} – {on_hi:.1}"),
            format!("{off_lo:.1} – {off_hi:.1}"),
            on / off
        );
    }
    println!("(medians of {reps}; spread: min – max; the same sum in every run)");
    if let Some(path) = json {
        std::fs::write(path, serde_json::to_string_pretty(&runs)?)?;
    }
    Ok(())
}
