//! Seconds per iteration of a logistic regression (L-BFGS, a fixed number of iterations, no
//! early stop) on a synthetic `rows × cols` f64 design matrix in `chunks` row chunks, in one
//! run, for:
//!
//! - **floor**: the same per-chunk function on the whole matrix in this thread (plain
//!   ndarray, no runtime): the single-threaded floor;
//! - **2-threads**: the same on two scoped threads, each on half the rows: what the two cores
//!   of this machine can do with this function and no runtime (the limit; two cores rarely
//!   give twice one core here: they share the memory bus, and the VM's neighbours);
//! - **local**: a LocalCluster in this process (2 one-thread workers over inproc://),
//!   chunks persisted;
//! - **tcp**: a `courier scheduler` and 2 one-thread `courier worker` processes over
//!   tcp:// (worker-to-worker data over shm://, the default on one host), chunks persisted;
//! - **shm**: the same with the scheduler on shm:// too;
//! - **tcp-recompute**: as tcp, but the chunks are not persisted: every evaluation makes X and
//!   y again first (what happens without `persist`); fewer iterations (same path).
//!
//! Then the LocalCluster again with its per-chunk function wrapped to record when each
//! execution starts and ends: how much of a pass has two, one or no chunk computing, and how
//! long a worker's thread waits between two of its executions.
//!
//! Each evaluation (one pass over the data: loss and gradient) is timed; reported: its median
//! with the smallest and largest, CPU seconds per evaluation (this process plus the worker
//! processes, from /proc), and the ratios the targets name. Then the rechunk of
//! the persisted X from row chunks to one-column chunks on the tcp cluster, with the bytes the
//! workers fetched from each other (counted by the workers).
//!
//! ```sh
//! cargo build --release -p courier-cli --bin courier --example glm_bench
//! target/release/examples/glm_bench target/release/courier [rows] [cols] [chunks] [iterations] [--json FILE]
//! ```

use std::path::{Path, PathBuf};
use std::time::Instant;

use courier::courier_runtime::{Client, Functions, LocalCluster};
use courier::{Registry, RegistryExt};
use courier_array::glm::{
    ClusterObjective, Eval, Evaluation, Family, Objective, Options, Regularizer, Solver, Synthetic, fit,
};
use courier_array::{ArrayError, ChunkedArray};

/// Wraps an objective and times every evaluation.
struct Timed<O> {
    inner: O,
    seconds: Vec<f64>,
}

impl<O: Objective + Send> Objective for Timed<O> {
    fn n_features(&self) -> usize {
        self.inner.n_features()
    }

    async fn evaluate(&mut self, beta: &[f64], what: Eval) -> Result<Evaluation, ArrayError> {
        let t = Instant::now();
        let r = self.inner.evaluate(beta, what).await;
        self.seconds.push(t.elapsed().as_secs_f64());
        r
    }
}

#[derive(Debug, Clone, serde::Serialize)]
struct Row {
    config: String,
    iterations: usize,
    evaluations: usize,
    seconds_per_eval_median: f64,
    seconds_per_eval_min: f64,
    seconds_per_eval_max: f64,
    seconds_per_iteration: f64,
    cpu_seconds_per_eval: f64,
    setup_seconds: f64,
    objective: f64,
}

#[derive(Debug, Clone, serde::Serialize)]
struct Rechunk {
    array_bytes: u64,
    fetched_bytes: u64,
    ratio: f64,
    seconds: f64,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

fn cpu_now(pids: &[u32]) -> f64 {
    let cpu = courier_bench::process_cpu_of;
    cpu(std::process::id()) + pids.iter().map(|&p| cpu(p)).sum::<f64>()
}

async fn measure<O: Objective + Send>(
    name: &str,
    obj: O,
    iterations: usize,
    setup_seconds: f64,
    pids: &[u32],
) -> anyhow::Result<Row> {
    let mut timed = Timed { inner: obj, seconds: Vec::new() };
    let cpu0 = cpu_now(pids);
    let t = Instant::now();
    let opts = Options { max_iter: iterations, tol: 0.0 };
    let f = fit(&mut timed, Solver::Lbfgs, Regularizer::L2(1e-4), opts).await?;
    let total = t.elapsed().as_secs_f64();
    let cpu = cpu_now(pids) - cpu0;
    let mut s = timed.seconds.clone();
    let evaluations = s.len();
    let row = Row {
        config: name.to_owned(),
        iterations: f.iterations,
        evaluations,
        seconds_per_eval_median: median(&mut s),
        seconds_per_eval_min: s.first().copied().unwrap_or(f64::NAN),
        seconds_per_eval_max: s.last().copied().unwrap_or(f64::NAN),
        seconds_per_iteration: total / f.iterations.max(1) as f64,
        cpu_seconds_per_eval: cpu / evaluations.max(1) as f64,
        setup_seconds,
        objective: f.objective,
    };
    println!(
        "{:<14} {:>3} iterations {:>3} evaluations  per evaluation: median {:>8.4} s (min {:.4}, max {:.4})  \
         per iteration {:.4} s  CPU {:.4} s/eval  setup {:.1} s  objective {:.9}",
        row.config,
        row.iterations,
        row.evaluations,
        row.seconds_per_eval_median,
        row.seconds_per_eval_min,
        row.seconds_per_eval_max,
        row.seconds_per_iteration,
        row.cpu_seconds_per_eval,
        row.setup_seconds,
        row.objective
    );
    Ok(row)
}

async fn persisted(problem: &Synthetic, client: &Client) -> anyhow::Result<ClusterObjective> {
    let (x, y) = problem.build(client)?;
    let (x, y) = (x.persist().await?, y.persist().await?);
    x.wait().await?;
    y.wait().await?;
    Ok(ClusterObjective::new(problem.family, x, y)?)
}

async fn processes(bin: &Path, listen: &str) -> anyhow::Result<LocalCluster> {
    let registry = Registry::with_default_transports();
    Ok(LocalCluster::processes_with(registry, bin, listen, 2, bin, &["worker", "--nthreads", "1"]).await?)
}

async fn fetched(client: &Client) -> anyhow::Result<u64> {
    let mut total = 0;
    for w in client.workers() {
        total += client.worker_transfer_stats(&w).await?.iter().map(|t| t.bytes).sum::<u64>();
    }
    Ok(total)
}

/// A function's arguments as they came.
struct Raw(Vec<courier::courier_core::Payload>);

impl courier::courier_runtime::Args for Raw {
    fn from_payloads(args: Vec<courier::courier_core::Payload>) -> Result<Self, String> {
        Ok(Raw(args))
    }
}

/// Where a LocalCluster pass spends its time, seen from inside the per-chunk function.
#[derive(Debug, Clone, serde::Serialize)]
struct Timeline {
    passes: usize,
    /// Medians per pass: seconds with 0, 1 and 2 executions running.
    seconds_with_running: [f64; 3],
    /// Median per pass of the idle time between a lane's consecutive executions (summed over
    /// both lanes), and per gap.
    gap_seconds_per_pass: f64,
    gap_seconds_median: f64,
    /// Median per pass of the time between one lane's last execution ending and the other's.
    tail_seconds: f64,
}

/// The LocalCluster again, its per-chunk function wrapped to record when each execution starts
/// and ends (the same work plus two clock reads and a lock): how much of a pass runs two
/// chunks at once, one, or none, and how long a thread waits between two executions (the hop
/// from one run to the next). A pass's executions are split into two lanes, each execution to
/// the lane that freed last before it starts (one thread per worker runs its executions one
/// after another, so they never overlap on a lane).
async fn local_timeline(problem: &Synthetic, passes: usize) -> anyhow::Result<Timeline> {
    use std::sync::{Arc, Mutex};
    type Log = Arc<Mutex<Vec<(f64, f64)>>>;
    let log: Log = Arc::default();
    let t0 = Instant::now();
    let mut functions = Functions::with_builtins();
    functions.extend(courier_array::functions());
    let sums = courier_array::functions();
    let l2 = log.clone();
    functions.register_blocking("glm.sums", move |Raw(args): Raw| {
        let start = t0.elapsed().as_secs_f64();
        let r = sums
            .call("glm.sums", args)
            .and_then(|p| p.decode::<courier::courier_core::WireArray>().map_err(|e| e.to_string()));
        l2.lock().map_err(|_| "poisoned")?.push((start, t0.elapsed().as_secs_f64()));
        r
    });
    let cluster = LocalCluster::inproc(Registry::with_default_transports(), 2, functions).await?;
    let client = cluster.client().await?;
    let mut obj = persisted(problem, &client).await?;
    // One pass to warm up (the scheduler measures the function's run time).
    obj.evaluate(&vec![0.0; problem.cols], Eval::Gradient).await?;
    let (mut levels, mut gaps, mut per_gap, mut tails) = ([vec![], vec![], vec![]], vec![], vec![], vec![]);
    for i in 0..passes {
        log.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.clear();
        let t = t0.elapsed().as_secs_f64();
        let beta: Vec<f64> = (0..problem.cols).map(|j| 0.01 * (i + j) as f64).collect();
        obj.evaluate(&beta, Eval::Gradient).await?;
        let e = t0.elapsed().as_secs_f64();
        let l = log.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.clone();
        let mut ev: Vec<(f64, i32)> = l.iter().flat_map(|&(s, f)| [(s, 1), (f, -1)]).collect();
        ev.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (mut lvl, mut cur, mut last) = ([0.0f64; 3], 0usize, t);
        for (time, d) in ev {
            lvl[cur.min(2)] += time - last;
            last = time;
            cur = (cur as i32 + d).max(0) as usize;
        }
        lvl[cur.min(2)] += e - last;
        for k in 0..3 {
            levels[k].push(lvl[k]);
        }
        let mut pass_gaps = 0.0;
        let mut lanes: Vec<Vec<(f64, f64)>> = Vec::new();
        let mut sorted = l.clone();
        sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
        for (s, f) in sorted {
            // The lane that freed last (the thread that just finished takes the next run).
            let free = lanes.iter_mut().filter(|lane| lane.last().is_some_and(|x| x.1 <= s));
            match free.max_by(|a, b| a.last().map_or(0.0, |x| x.1).total_cmp(&b.last().map_or(0.0, |x| x.1))) {
                Some(lane) => lane.push((s, f)),
                None => lanes.push(vec![(s, f)]),
            }
        }
        for lane in &lanes {
            for pair in lane.windows(2) {
                let g = pair[1].0 - pair[0].1;
                pass_gaps += g;
                per_gap.push(g);
            }
        }
        let last_ends: Vec<f64> = lanes.iter().filter_map(|lane| lane.last().map(|x| x.1)).collect();
        gaps.push(pass_gaps);
        if let [a, b] = last_ends[..] {
            tails.push((a - b).abs());
        }
    }
    client.close().await;
    cluster.shutdown().await;
    let tl = Timeline {
        passes,
        seconds_with_running: [median(&mut levels[0]), median(&mut levels[1]), median(&mut levels[2])],
        gap_seconds_per_pass: median(&mut gaps),
        gap_seconds_median: median(&mut per_gap),
        tail_seconds: median(&mut tails),
    };
    println!(
        "local timeline ({passes} passes, medians): {:.4} s with two executions running, {:.4} s with one, \
         {:.4} s with none; a thread waits {:.2} ms between two executions \
         ({:.4} s per pass over both threads); the threads' last executions end {:.1} ms apart",
        tl.seconds_with_running[2],
        tl.seconds_with_running[1],
        tl.seconds_with_running[0],
        tl.gap_seconds_median * 1e3,
        tl.gap_seconds_per_pass,
        tl.tail_seconds * 1e3
    );
    Ok(tl)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let json = args.iter().position(|a| a == "--json").map(|i| {
        let path = args.get(i + 1).cloned();
        args.drain(i..(i + 2).min(args.len()));
        path
    });
    let bin = PathBuf::from(args.first().cloned().unwrap_or_else(|| "target/release/courier".into()));
    let num = |i: usize, default: usize| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(default);
    let (rows, cols, chunks, iterations) = (num(1, 4_000_000), num(2, 32), num(3, 40), num(4, 10));
    let beta: Vec<f64> = (0..cols).map(|j| if j % 2 == 0 { 1.0 } else { -1.0 } * 0.5 / (cols as f64).sqrt()).collect();
    let problem = Synthetic {
        rows,
        cols,
        chunk_rows: rows.div_ceil(chunks),
        family: Family::Logistic,
        beta,
        noise: 0.0,
        col_scale: 1.0,
        seed: 2026,
    };
    let gib = (rows * cols * 8) as f64 / (1u64 << 30) as f64;
    println!(
        "logistic regression, L-BFGS, {iterations} iterations: X {rows} × {cols} f64 ({gib:.3} GiB) in {chunks} chunks; \
         2 one-thread workers"
    );
    let mut table = Vec::new();

    // The floor: one thread, the whole matrix.
    let t = Instant::now();
    let local = problem.local()?;
    let setup = t.elapsed().as_secs_f64();
    table.push(measure("floor", local.clone(), iterations, setup, &[]).await?);
    // The machine's limit: the same function on 2 threads, no runtime.
    table.push(measure("2-threads", local.with_threads(2), iterations, setup, &[]).await?);

    // LocalCluster in this process.
    {
        let mut functions = Functions::with_builtins();
        functions.extend(courier_array::functions());
        let cluster = LocalCluster::inproc(Registry::with_default_transports(), 2, functions).await?;
        let client = cluster.client().await?;
        let t = Instant::now();
        let obj = persisted(&problem, &client).await?;
        table.push(measure("local", obj, iterations, t.elapsed().as_secs_f64(), &[]).await?);
        client.close().await;
        cluster.shutdown().await;
    }
    let timeline = local_timeline(&problem, iterations).await?;

    // Worker processes: tcp:// (rechunk measured here too), shm://, and recomputing.
    let mut rechunk = None;
    for (name, listen) in [("tcp", "tcp://127.0.0.1:0"), ("shm", "shm://"), ("tcp-recompute", "tcp://127.0.0.1:0")] {
        let cluster = processes(&bin, listen).await?;
        let pids = cluster.process_ids();
        let client = cluster.client().await?;
        let t = Instant::now();
        if name == "tcp-recompute" {
            let (x, y) = problem.build(&client)?;
            let obj = ClusterObjective::new(problem.family, x, y)?;
            table.push(measure(name, obj, iterations.min(3), t.elapsed().as_secs_f64(), &pids).await?);
        } else {
            let obj = persisted(&problem, &client).await?;
            let setup = t.elapsed().as_secs_f64();
            let x: ChunkedArray<f64> = obj.x().clone();
            table.push(measure(name, obj, iterations, setup, &pids).await?);
            if name == "tcp" {
                let before = fetched(&client).await?;
                let t = Instant::now();
                let columns = x.rechunk(&[rows, 1])?.persist().await?;
                columns.wait().await?;
                let seconds = t.elapsed().as_secs_f64();
                let moved = fetched(&client).await? - before;
                let bytes = (rows * cols * 8) as u64;
                let r =
                    Rechunk { array_bytes: bytes, fetched_bytes: moved, ratio: moved as f64 / bytes as f64, seconds };
                println!(
                    "rechunk {rows} × {cols} from {chunks} row chunks to {cols} column chunks: workers fetched {} bytes \
                     = {:.3} × the array, {:.2} s",
                    r.fetched_bytes, r.ratio, r.seconds
                );
                rechunk = Some(r);
            }
        }
        client.close().await;
        cluster.shutdown().await;
    }

    let per = |name: &str| table.iter().find(|r| r.config == name).map_or(f64::NAN, |r| r.seconds_per_eval_median);
    let half_floor = per("floor") / 2.0;
    println!("\nratios of the median seconds per evaluation (one pass over X):");
    println!(
        "  2-threads / (floor / 2)        {:.3}   (the machine: 1 would be perfect scaling)",
        per("2-threads") / half_floor
    );
    println!("  local / (floor / 2)            {:.3}   (target ≤ 1.5)", per("local") / half_floor);
    println!(
        "  local / 2-threads              {:.3}   (the runtime's cost over the machine's limit)",
        per("local") / per("2-threads")
    );
    println!("  tcp / 2-threads                {:.3}", per("tcp") / per("2-threads"));
    println!("  tcp / (floor / 2)              {:.3}   (target ≤ 2)", per("tcp") / half_floor);
    println!("  shm / (floor / 2)              {:.3}   (target ≤ 2)", per("shm") / half_floor);
    println!("  tcp-recompute / tcp            {:.3}   (persist pays when > 1)", per("tcp-recompute") / per("tcp"));
    if let Some(Some(path)) = json {
        let doc = serde_json::json!({
            "rows": rows, "cols": cols, "chunks": chunks, "iterations": iterations,
            "configs": table,
            "rechunk": rechunk,
            "local_timeline": timeline,
            "ratios": {
                "two_threads_over_half_floor": per("2-threads") / half_floor,
                "local_over_half_floor": per("local") / half_floor,
                "local_over_two_threads": per("local") / per("2-threads"),
                "tcp_over_two_threads": per("tcp") / per("2-threads"),
                "tcp_over_half_floor": per("tcp") / half_floor,
                "shm_over_half_floor": per("shm") / half_floor,
                "recompute_over_persisted": per("tcp-recompute") / per("tcp"),
            },
        });
        std::fs::write(&path, serde_json::to_string_pretty(&doc)? + "\n")?;
    }
    Ok(())
}
