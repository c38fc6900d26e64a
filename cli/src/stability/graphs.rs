//! The runtime phases of a stability repetition, each checked against an answer computed
//! here without any transport (the built-in functions called directly):
//!
//! - **graph**: a tree reduction of 16 arrays on an in-process scheduler and two workers over
//!   the transport under test (worker-to-worker transfers);
//! - **freeze**: a `courier scheduler` process (worker timeout 2 s) with three worker
//!   processes runs a slow tree reduction; one worker is SIGSTOPped mid-graph; the graph must
//!   finish with the right answer without it, and the worker, resumed, must exit;
//! - **restart**: the scheduler process is killed under a connected client and two workers:
//!   the client's future fails with "lost the scheduler" and the workers exit within 10 s; a
//!   new scheduler on the same address then serves new workers and a new client.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use courier::Registry;
use courier::courier_core::{Payload, WireArray};
use courier::courier_runtime::{Client, Functions, LocalCluster, TaskFuture, arg};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// How to start node processes: the `courier` binary and the flags every node needs (TLS).
#[derive(Debug, Clone)]
pub(crate) struct Processes {
    pub(crate) courier: PathBuf,
    pub(crate) flags: Vec<String>,
    /// The registry a client in this process uses to reach them.
    pub(crate) registry: Registry,
}

/// The sum of every element of the leaves, computed here.
fn expected(leaves: &[(u64, Vec<usize>)]) -> anyhow::Result<f64> {
    let f = Functions::with_builtins();
    let mut total = 0.0;
    for (seed, shape) in leaves {
        let a: WireArray = f
            .call("random_array", vec![Payload::new(shape)?, Payload::new(seed)?])
            .map_err(anyhow::Error::msg)?
            .decode()?;
        total += a.cow::<f64>()?.sum();
    }
    Ok(total)
}

/// A tree reduction of `leaves` (seed, shape) arrays, made slowly (`delay` s each): the sum.
async fn tree(
    c: &Client,
    leaves: &[(u64, Vec<usize>)],
    delay: f64,
) -> anyhow::Result<(Vec<TaskFuture<WireArray>>, TaskFuture<f64>)> {
    // Collected before the await: a closure held across it keeps the future from being `Send`
    // (a compiler limit with closures over borrowed tuples), and the run goes on a runtime task.
    let args: Vec<_> = leaves.iter().map(|(seed, shape)| vec![arg(shape), arg(seed), arg(&delay)]).collect();
    let level0: Vec<TaskFuture<WireArray>> = c.map("slow_random_array", args).await?;
    let mut level = level0.clone();
    while level.len() > 1 {
        let mut next = Vec::new();
        for pair in level.chunks(2) {
            next.push(c.submit::<WireArray>("array_add", pair.iter().map(|f| f.arg()).collect()).await?);
        }
        level = next;
    }
    let total = c.submit::<f64>("array_sum", vec![level[0].arg()]).await?;
    Ok((level0, total))
}

fn close_enough(got: f64, want: f64) -> bool {
    (got - want).abs() <= 1e-9 * want.abs().max(1.0)
}

pub(crate) async fn graph(registry: &Registry, url: &str, seed: u64) -> anyhow::Result<()> {
    let leaves: Vec<(u64, Vec<usize>)> = (0..16).map(|i| (seed * 100 + i, vec![64, 64])).collect();
    let want = expected(&leaves)?;
    let cluster = LocalCluster::in_process(registry.clone(), url, 2, 1, Functions::with_builtins()).await?;
    let c = cluster.client().await?;
    let (_, total) = tree(&c, &leaves, 0.0).await?;
    let got = total.result().await?;
    c.close().await;
    cluster.shutdown().await;
    ensure!(close_enough(got, want), "the graph gave {got}, the answer is {want}");
    Ok(())
}

impl Processes {
    async fn scheduler(&self, listen: &str) -> anyhow::Result<(Child, String)> {
        let mut child = Command::new(&self.courier)
            .args(["scheduler", "--listen", listen, "--worker-timeout", "2"])
            .args(&self.flags)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting a scheduler process")?;
        let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .context("the scheduler did not start within 30 s")??
            .context("the scheduler exited before listening")?;
        let addr = line.strip_prefix("scheduler listening at ").context("unexpected scheduler output")?.to_owned();
        Ok((child, addr))
    }

    fn worker(&self, scheduler: &str, name: &str) -> anyhow::Result<Child> {
        Command::new(&self.courier)
            .args(["worker", scheduler, "--name", name])
            .args(&self.flags)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting a worker process")
    }

    async fn client(&self, scheduler: &str, workers: usize) -> anyhow::Result<Client> {
        let c = Client::connect(self.registry.clone(), scheduler).await?;
        tokio::time::timeout(Duration::from_secs(30), c.wait_for_workers(|w| w.len() >= workers))
            .await
            .context("workers did not join within 30 s")??;
        Ok(c)
    }
}

fn signal(child: &Child, sig: rustix::process::Signal) -> anyhow::Result<()> {
    let pid = rustix::process::Pid::from_raw(child.id().context("the process ended")? as i32).context("pid")?;
    rustix::process::kill_process(pid, sig).context("sending a signal")?;
    Ok(())
}

async fn exits_with_error(child: &mut Child, what: &str) -> anyhow::Result<()> {
    match tokio::time::timeout(Duration::from_secs(10), child.wait()).await {
        Ok(Ok(status)) if !status.success() => Ok(()),
        Ok(Ok(status)) => bail!("{what} exited successfully ({status}); it should report an error"),
        Ok(Err(e)) => bail!("{what}: {e}"),
        Err(_) => bail!("{what} did not exit within 10 s"),
    }
}

pub(crate) async fn freeze(p: &Processes, listen: &str, seed: u64) -> anyhow::Result<()> {
    let leaves: Vec<(u64, Vec<usize>)> = (0..32).map(|i| (seed * 1000 + i, vec![32, 32])).collect();
    let want = expected(&leaves)?;
    let (_scheduler, addr) = p.scheduler(listen).await?;
    let mut workers = (0..3).map(|i| p.worker(&addr, &format!("w{i}"))).collect::<anyhow::Result<Vec<_>>>()?;
    let c = p.client(&addr, 3).await?;
    let (level0, total) = tree(&c, &leaves, 0.02).await?;
    let mut done = c.as_completed(level0.iter().cloned());
    for _ in 0..8 {
        futures::StreamExt::next(&mut done).await.context("a leaf")?;
    }
    drop(done);
    signal(&workers[0], rustix::process::Signal::STOP)?;
    let got = total.result().await.context("the graph with a frozen worker")?;
    signal(&workers[0], rustix::process::Signal::CONT)?;
    ensure!(close_enough(got, want), "with a frozen worker the graph gave {got}, the answer is {want}");
    exits_with_error(&mut workers[0], "the resumed worker the scheduler had dropped").await?;
    c.close().await;
    Ok(())
}

pub(crate) async fn restart(p: &Processes, listen: &str) -> anyhow::Result<()> {
    let (mut scheduler, addr) = p.scheduler(listen).await?;
    let mut workers = vec![p.worker(&addr, "a")?, p.worker(&addr, "b")?];
    let c = p.client(&addr, 2).await?;
    let long = c.submit::<f64>("sleep", vec![arg(&30.0f64)]).await?;
    ensure!(c.submit::<i64>("inc", vec![arg(&1i64)]).await?.result().await? == 2, "inc before the kill");
    scheduler.kill().await?;
    match tokio::time::timeout(Duration::from_secs(10), long.result()).await {
        Ok(Err(e)) if e.to_string().contains("lost the scheduler") => {}
        Ok(Err(e)) => bail!("after the scheduler died the client reported {e}, not the loss"),
        Ok(Ok(v)) => bail!("a task finished ({v}) although its scheduler died"),
        Err(_) => bail!("the client did not notice the scheduler's death within 10 s"),
    }
    for w in &mut workers {
        exits_with_error(w, "a worker whose scheduler died").await?;
    }
    // A new scheduler on the same address (retried briefly while the old socket goes away).
    let mut again = None;
    for _ in 0..50 {
        match p.scheduler(&addr).await {
            Ok(s) => {
                again = Some(s);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let (_scheduler, addr2) = again.context("no scheduler could listen on the old address again")?;
    ensure!(addr2 == addr, "the new scheduler listens at {addr2}, not {addr}");
    let _workers = [p.worker(&addr, "c")?, p.worker(&addr, "d")?];
    let c = p.client(&addr, 2).await?;
    let xs = c.map::<i64>("inc", (0..100i64).map(|i| vec![arg(&i)])).await?;
    ensure!(c.gather(&xs).await? == (1..=100).collect::<Vec<i64>>(), "the restarted cluster computed wrongly");
    c.close().await;
    Ok(())
}
