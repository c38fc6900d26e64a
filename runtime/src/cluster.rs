//! `LocalCluster`: a scheduler and workers on this machine, in this process (inproc:// by
//! default, or any transport), or as separate `courier` processes.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use courier_core::{CommError, Registry};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::client::Client;
use crate::driver::{SchedulerHandle, start_scheduler};
use crate::functions::Functions;
use crate::scheduler::SchedulerConfig;
use crate::worker::{WorkerConfig, WorkerHandle, start_worker};

/// A local cluster. Dropping it stops in-process nodes and kills child processes.
#[derive(Debug)]
pub struct LocalCluster {
    registry: Registry,
    address: String,
    scheduler: Option<SchedulerHandle>,
    workers: Arc<std::sync::Mutex<Vec<WorkerHandle>>>,
    children: Vec<Child>,
    functions: Arc<Functions>,
    nthreads: u32,
    /// The scheduler process's dashboard (`http://host:port/`), if it serves one.
    dashboard_url: Option<String>,
}

/// Adaptive scaling in progress; stops when dropped. See [`LocalCluster::adapt`].
#[derive(Debug)]
pub struct Adaptive {
    stop: courier_core::CloseSignal,
}

impl Drop for Adaptive {
    fn drop(&mut self) {
        self.stop.close();
    }
}

async fn start_one(
    registry: &Registry,
    address: &str,
    functions: &Arc<Functions>,
    nthreads: u32,
    name: String,
) -> Result<WorkerHandle, CommError> {
    let config = WorkerConfig { nthreads, name: Some(name), ..WorkerConfig::new(address.to_owned()) };
    Ok(start_worker(registry.clone(), functions.clone(), config).await?.0)
}

impl LocalCluster {
    /// A scheduler and `n_workers` workers in this process, over inproc://.
    pub async fn inproc(registry: Registry, n_workers: usize, functions: Functions) -> Result<Self, CommError> {
        Self::in_process(registry, "inproc://", n_workers, 1, functions).await
    }

    /// A scheduler listening on `listen` and `n_workers` workers (of `nthreads`), all in this
    /// process; the scheme of `listen` picks the transport. Over inproc://, a value fetched
    /// from another worker is the same buffer (no byte moves), so the scheduler places tasks
    /// by load alone (an infinite [`SchedulerConfig::transfer_bandwidth`]): a task on a large
    /// input runs on whichever worker is free rather than waiting for the one holding it.
    pub async fn in_process(
        registry: Registry,
        listen: &str,
        n_workers: usize,
        nthreads: u32,
        functions: Functions,
    ) -> Result<Self, CommError> {
        let mut config = SchedulerConfig::default();
        if listen.starts_with("inproc://") {
            config.transfer_bandwidth = f64::INFINITY;
        }
        Self::in_process_with(registry, listen, n_workers, nthreads, functions, config).await
    }

    /// Like [`LocalCluster::in_process`], with the scheduler's driver configured by `config`
    /// (for example with the dashboard on).
    pub async fn in_process_with(
        registry: Registry,
        listen: &str,
        n_workers: usize,
        nthreads: u32,
        functions: Functions,
        config: impl Into<crate::ServerConfig>,
    ) -> Result<Self, CommError> {
        let (scheduler, _) = start_scheduler(registry.clone(), listen, config).await?;
        let address = scheduler.address.clone();
        let functions = Arc::new(functions);
        let mut workers = Vec::new();
        for i in 0..n_workers {
            workers.push(start_one(&registry, &address, &functions, nthreads, format!("worker-{i}")).await?);
        }
        let cluster = LocalCluster {
            registry,
            address,
            scheduler: Some(scheduler),
            workers: Arc::new(std::sync::Mutex::new(workers)),
            children: Vec::new(),
            functions,
            nthreads,
            dashboard_url: None,
        };
        cluster.wait_for_workers(n_workers).await?;
        Ok(cluster)
    }

    /// A scheduler and `n_workers` workers as child processes of the `courier` binary at
    /// `courier_bin`, the scheduler listening on `listen` (e.g. `tcp://127.0.0.1:0`).
    pub async fn processes(
        registry: Registry,
        courier_bin: &Path,
        listen: &str,
        n_workers: usize,
    ) -> Result<Self, CommError> {
        Self::processes_with(registry, courier_bin, listen, n_workers, courier_bin, &["worker"]).await
    }

    /// Like [`LocalCluster::processes`], with workers run as `worker_program [prefix…]
    /// SCHEDULER --name NAME` (a custom worker binary built with `courier::worker_main` takes
    /// no prefix).
    pub async fn processes_with(
        registry: Registry,
        courier_bin: &Path,
        listen: &str,
        n_workers: usize,
        worker_program: &Path,
        prefix: &[&str],
    ) -> Result<Self, CommError> {
        Self::processes_full(registry, courier_bin, listen, &[], n_workers, worker_program, prefix).await
    }

    /// Like [`LocalCluster::processes`], with more arguments for `courier scheduler` (for
    /// example `["--dashboard", "127.0.0.1:0"]`; see [`LocalCluster::dashboard_url`]).
    pub async fn processes_with_scheduler_args(
        registry: Registry,
        courier_bin: &Path,
        listen: &str,
        scheduler_args: &[&str],
        n_workers: usize,
    ) -> Result<Self, CommError> {
        Self::processes_full(registry, courier_bin, listen, scheduler_args, n_workers, courier_bin, &["worker"]).await
    }

    async fn processes_full(
        registry: Registry,
        courier_bin: &Path,
        listen: &str,
        scheduler_args: &[&str],
        n_workers: usize,
        worker_program: &Path,
        prefix: &[&str],
    ) -> Result<Self, CommError> {
        let io = |e: std::io::Error| CommError::from_io("starting a cluster process", e);
        let mut scheduler = Command::new(courier_bin)
            .args(["scheduler", "--listen", listen])
            .args(scheduler_args)
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(io)?;
        let stdout = scheduler.stdout.take().ok_or_else(|| CommError::closed("scheduler has no stdout"))?;
        let mut lines = BufReader::new(stdout).lines();
        let dashboard = scheduler_args.contains(&"--dashboard");
        let (address, dashboard_url) = tokio::time::timeout(Duration::from_secs(30), async {
            let mut address = None;
            while let Some(line) = lines.next_line().await? {
                if let Some(addr) = line.strip_prefix("scheduler listening at ") {
                    address = Some(addr.trim().to_owned());
                    if !dashboard {
                        return Ok((address.unwrap_or_default(), None));
                    }
                }
                if let (Some(a), Some(url)) = (&address, line.strip_prefix("dashboard at ")) {
                    let url = url.split_whitespace().next().unwrap_or("").to_owned();
                    return Ok((a.clone(), Some(url)));
                }
            }
            Err(std::io::Error::other("the scheduler exited before listening"))
        })
        .await
        .map_err(|_| CommError::closed("the scheduler did not start within 30 s"))?
        .map_err(io)?;
        let mut cluster = LocalCluster {
            registry,
            address,
            scheduler: None,
            workers: Arc::default(),
            children: vec![scheduler],
            functions: Arc::new(Functions::with_builtins()),
            nthreads: 1,
            dashboard_url,
        };
        for i in 0..n_workers {
            cluster.spawn_worker_program(worker_program, prefix, &format!("worker-{i}")).await?;
        }
        cluster.wait_for_workers(n_workers).await?;
        Ok(cluster)
    }

    /// The scheduler process's dashboard, `http://host:port/`, when it was started with
    /// `--dashboard` (see [`LocalCluster::processes_with_scheduler_args`]).
    pub fn dashboard_url(&self) -> Option<&str> {
        self.dashboard_url.as_deref()
    }

    /// Starts one more worker process of the `courier` binary at `courier_bin`.
    pub async fn spawn_worker_process(&mut self, courier_bin: &Path, name: &str) -> Result<(), CommError> {
        self.spawn_worker_program(courier_bin, &["worker"], name).await
    }

    /// Starts one more worker process: `program [prefix…] SCHEDULER --name NAME`, for a
    /// custom worker binary built with `courier::worker_main` (empty prefix) or `courier`
    /// (prefix `["worker"]`).
    pub async fn spawn_worker_program(&mut self, program: &Path, prefix: &[&str], name: &str) -> Result<(), CommError> {
        let child = Command::new(program)
            .args(prefix)
            .args([self.address.as_str(), "--name", name])
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| CommError::from_io("starting a worker process", e))?;
        self.children.push(child);
        Ok(())
    }

    /// Waits until the scheduler reports at least `n` workers.
    pub async fn wait_for_workers(&self, n: usize) -> Result<(), CommError> {
        let client = self.client().await?;
        let joined = tokio::time::timeout(Duration::from_secs(30), client.wait_for_workers(|w| w.len() >= n)).await;
        let have = client.workers().len();
        client.close().await;
        match joined {
            Ok(r) => r.map(|_| ()),
            Err(_) => Err(CommError::closed(format!("only {have} of {n} workers joined within 30 s"))),
        }
    }

    /// Waits until an in-process scheduler's table sizes satisfy `predicate` and returns them.
    ///
    /// # Panics
    /// For a cluster of processes (there is no in-process scheduler), if the scheduler stops,
    /// or if the predicate does not hold within 60 s (a guard against hangs in tests).
    pub async fn wait_for_scheduler(
        &self,
        predicate: impl FnMut(&crate::scheduler::SchedulerStats) -> bool,
    ) -> crate::scheduler::SchedulerStats {
        let handle = self.scheduler.as_ref().expect("an in-process scheduler");
        tokio::time::timeout(Duration::from_secs(60), handle.wait_for_stats(predicate))
            .await
            .unwrap_or_else(|_| panic!("scheduler stats still {:?} after 60 s", handle.stats()))
            .expect("the scheduler stopped")
    }

    /// The in-process scheduler's handle, if any.
    pub fn scheduler(&self) -> Option<&SchedulerHandle> {
        self.scheduler.as_ref()
    }

    /// Bytes the scheduler has received, for an in-process scheduler.
    pub fn scheduler_bytes_received(&self) -> Option<u64> {
        self.scheduler.as_ref().map(SchedulerHandle::bytes_received)
    }

    /// The scheduler's address.
    pub fn scheduler_address(&self) -> &str {
        &self.address
    }

    /// A new client of this cluster.
    pub async fn client(&self) -> Result<Client, CommError> {
        Client::connect(self.registry.clone(), &self.address).await
    }

    /// The operating system's ids of the child processes still running (the scheduler first
    /// for process clusters), e.g. to read their memory from `/proc`.
    pub fn process_ids(&self) -> Vec<u32> {
        self.children.iter().filter_map(Child::id).collect()
    }

    /// Kills child process `i` (0 is the scheduler for process clusters; workers follow).
    pub async fn kill_process(&mut self, i: usize) -> std::io::Result<()> {
        self.children[i].kill().await
    }

    /// Child process `i`'s process id (`None` once it has been waited for).
    pub fn process_id(&self, i: usize) -> Option<u32> {
        self.children.get(i)?.id()
    }

    /// Child process `i`'s exit status, if it has exited.
    pub fn try_wait_process(&mut self, i: usize) -> std::io::Result<Option<std::process::ExitStatus>> {
        self.children[i].try_wait()
    }

    /// Waits until one of the child processes `indices` exits; returns which, and how.
    pub async fn wait_any_process(&mut self, indices: &[usize]) -> std::io::Result<(usize, std::process::ExitStatus)> {
        let waits = self
            .children
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| indices.contains(i))
            .map(|(i, c)| Box::pin(async move { (i, c.wait().await) }));
        let ((i, status), _, _) = futures::future::select_all(waits).await;
        Ok((i, status?))
    }

    /// Waits for child process `i` to exit.
    pub async fn wait_process(&mut self, i: usize) -> std::io::Result<std::process::ExitStatus> {
        self.children[i].wait().await
    }

    /// Follows the scheduler's adaptive target within `min..=max` workers (in-process
    /// clusters): starts workers when work piles up, and retires idle ones gracefully (their
    /// results are moved first) once the work is done. Stops when the handle is dropped.
    pub async fn adapt(&self, min: usize, max: usize) -> Result<Adaptive, CommError> {
        let client = self.client().await?;
        let stop = courier_core::CloseSignal::new();
        let (registry, address, functions, nthreads, workers) =
            (self.registry.clone(), self.address.clone(), self.functions.clone(), self.nthreads, self.workers.clone());
        let until = stop.clone();
        tokio::spawn(async move {
            let mut started = 0usize;
            let mut low_for = 0u32;
            loop {
                tokio::select! {
                    () = until.closed() => break,
                    () = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
                let Ok((target, idle)) = client.adaptive_target().await else { break };
                let current = client.workers().len();
                let want = target.clamp(min, max.max(min));
                if want > current {
                    low_for = 0;
                    for _ in current..want {
                        started += 1;
                        match start_one(&registry, &address, &functions, nthreads, format!("adaptive-{started}")).await
                        {
                            Ok(h) => workers.lock().unwrap_or_else(|p| p.into_inner()).push(h),
                            Err(e) => tracing::warn!(error = %e, "adaptive scaling could not start a worker"),
                        }
                    }
                } else if want < current {
                    // Scale down only after the work has stayed low for a while (no flapping).
                    low_for += 1;
                    if low_for >= 6 {
                        let n = (current - want).min(idle.len());
                        if n > 0 {
                            let _ = client.retire_workers(&idle[..n]).await;
                        }
                        low_for = 0;
                    }
                } else {
                    low_for = 0;
                }
            }
            client.close().await;
        });
        Ok(Adaptive { stop })
    }

    /// Stops every node.
    pub async fn shutdown(mut self) {
        for w in self.workers.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            w.shutdown();
        }
        if let Some(s) = &self.scheduler {
            s.shutdown();
        }
        // Workers first (child 0 is the scheduler): killed after it, each would report the
        // lost scheduler on its way out.
        for c in self.children.iter_mut().rev() {
            let _ = c.kill().await;
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for w in self.workers.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            w.shutdown();
        }
        if let Some(s) = &self.scheduler {
            s.shutdown();
        }
    }
}
