//! Fits a logistic regression on a synthetic dataset made on the workers, with its chunks
//! persisted in worker memory, and prints the iterations and the error of the coefficients
//! against the truth.
//!
//! ```sh
//! # In this process (a LocalCluster of 2 one-thread workers over inproc://):
//! cargo run --release -p courier-array --example glm -- 1000000 32 40
//! # Against a running cluster (`courier scheduler` and `courier worker`s):
//! cargo run --release -p courier-array --example glm -- 1000000 32 40 --scheduler tcp://127.0.0.1:8786
//! ```
//!
//! Arguments: `ROWS COLS CHUNKS [--scheduler URL] [--solver lbfgs|newton|gd] [--l2 λ] [--l1 λ]
//! [--max-iter N] [--seed S]`.

use std::time::Instant;

use courier::courier_runtime::{Client, Functions, LocalCluster};
use courier::{Registry, RegistryExt};
use courier_array::glm::{ClusterObjective, Family, Options, Regularizer, Solver, Synthetic, fit};

/// What to fit.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// Rows of X.
    pub(crate) rows: usize,
    /// Columns of X.
    pub(crate) cols: usize,
    /// Row chunks.
    pub(crate) chunks: usize,
    /// The solver.
    pub(crate) solver: Solver,
    /// The penalty.
    pub(crate) reg: Regularizer,
    /// Iteration cap.
    pub(crate) max_iter: usize,
    /// Seed of the data.
    pub(crate) seed: u64,
}

/// What the fit found.
#[derive(Debug, Clone)]
#[cfg_attr(not(test), expect(dead_code, reason = "read by the test that includes this file"))]
pub(crate) struct Report {
    /// Iterations run.
    pub(crate) iterations: usize,
    /// Passes over the data.
    pub(crate) evaluations: usize,
    /// Whether the solver converged.
    pub(crate) converged: bool,
    /// Largest error of a coefficient against the truth.
    pub(crate) max_error: f64,
    /// The truth's largest coefficient (for scale).
    pub(crate) max_truth: f64,
}

/// Parses `ROWS COLS CHUNKS [flags]`.
pub(crate) fn parse(args: &[String]) -> anyhow::Result<(Config, Option<String>)> {
    let mut positional = Vec::new();
    let mut cfg = Config {
        rows: 100_000,
        cols: 16,
        chunks: 8,
        solver: Solver::Lbfgs,
        reg: Regularizer::None,
        max_iter: 100,
        seed: 1,
    };
    let mut scheduler = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or_else(|| anyhow::anyhow!("{a} needs a value"));
        match a.as_str() {
            "--scheduler" => scheduler = Some(value()?.clone()),
            "--solver" => {
                cfg.solver = match value()?.as_str() {
                    "lbfgs" => Solver::Lbfgs,
                    "newton" => Solver::Newton,
                    "gd" => Solver::GradientDescent,
                    s => anyhow::bail!("unknown solver {s} (lbfgs, newton, gd)"),
                }
            }
            "--l2" => cfg.reg = Regularizer::L2(value()?.parse()?),
            "--l1" => cfg.reg = Regularizer::L1(value()?.parse()?),
            "--max-iter" => cfg.max_iter = value()?.parse()?,
            "--seed" => cfg.seed = value()?.parse()?,
            _ => positional.push(a.parse::<usize>()?),
        }
    }
    if let [rows, cols, chunks, ..] = positional[..] {
        (cfg.rows, cfg.cols, cfg.chunks) = (rows, cols, chunks);
    }
    anyhow::ensure!(cfg.rows > 0 && cfg.cols > 0 && cfg.chunks > 0, "rows, cols and chunks must be positive");
    Ok((cfg, scheduler))
}

/// The true coefficients: alternating signs, magnitudes cycling in (0, 1] / √cols so that the
/// logits stay moderate whatever the width.
pub(crate) fn truth(cols: usize) -> Vec<f64> {
    (0..cols)
        .map(|j| {
            let sign = if j % 2 == 0 { 1.0 } else { -1.0 };
            sign * ((j % 4) as f64 + 1.0) / 4.0 * 2.0 / (cols as f64).sqrt()
        })
        .collect()
}

/// Makes the data on the workers, persists it, fits, and prints as it goes.
pub(crate) async fn run(client: &Client, cfg: &Config) -> anyhow::Result<Report> {
    let beta = truth(cfg.cols);
    let problem = Synthetic {
        rows: cfg.rows,
        cols: cfg.cols,
        chunk_rows: cfg.rows.div_ceil(cfg.chunks),
        family: Family::Logistic,
        beta: beta.clone(),
        noise: 0.0,
        col_scale: 1.0,
        seed: cfg.seed,
    };
    let started = Instant::now();
    let (x, y) = problem.build(client)?;
    let (x, y) = (x.persist().await?, y.persist().await?);
    x.wait().await?;
    y.wait().await?;
    println!(
        "X: {} × {} f64 ({:.1} MiB) in {} chunks, persisted on {} workers in {:.2} s",
        cfg.rows,
        cfg.cols,
        (cfg.rows * cfg.cols * 8) as f64 / (1 << 20) as f64,
        x.chunks().grid()[0],
        client.workers().len(),
        started.elapsed().as_secs_f64()
    );
    let mut objective = ClusterObjective::new(Family::Logistic, x, y)?;
    let started = Instant::now();
    let f = fit(&mut objective, cfg.solver, cfg.reg, Options { max_iter: cfg.max_iter, tol: 1e-8 }).await?;
    let seconds = started.elapsed().as_secs_f64();
    for (i, obj) in f.history.iter().enumerate() {
        println!("iteration {:>3}: objective {obj:.10}", i + 1);
    }
    let max_error = f.beta.iter().zip(&beta).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    let max_truth = beta.iter().map(|b| b.abs()).fold(0.0, f64::max);
    println!(
        "{:?} {:?}: {} iterations, {} passes over the data, {:.3} s ({:.1} ms per pass), converged: {}",
        cfg.solver,
        cfg.reg,
        f.iterations,
        f.evaluations,
        seconds,
        seconds * 1e3 / f.evaluations.max(1) as f64,
        f.converged
    );
    println!("largest coefficient error against the truth: {max_error:.4} (largest true coefficient {max_truth:.4})");
    Ok(Report { iterations: f.iterations, evaluations: f.evaluations, converged: f.converged, max_error, max_truth })
}

#[cfg_attr(test, expect(dead_code, reason = "tests include this file and call `run`, not `main`"))]
#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (cfg, scheduler) = parse(&args)?;
    let registry = Registry::with_default_transports();
    match scheduler {
        Some(url) => {
            let client = Client::connect(registry, &url).await?;
            run(&client, &cfg).await?;
            client.close().await;
        }
        None => {
            let mut functions = Functions::with_builtins();
            functions.extend(courier_array::functions());
            let cluster = LocalCluster::inproc(registry, 2, functions).await?;
            let client = cluster.client().await?;
            run(&client, &cfg).await?;
            client.close().await;
            cluster.shutdown().await;
        }
    }
    Ok(())
}
