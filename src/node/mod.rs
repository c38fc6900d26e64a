//! Running nodes: `courier scheduler`, `courier worker`, and your own worker binary.
//!
//! All three read settings the same way: command-line flags, then environment variables,
//! then a `courier.toml` given with `--config` (sections `[scheduler]`, `[worker]`, `[tls]`,
//! the flags' names), then built-in defaults. A custom worker is your [`Functions`] plus
//! [`worker_main`]:
//!
//! ```no_run
//! use courier::courier_runtime::Functions;
//!
//! fn main() -> std::process::ExitCode {
//!     let mut functions = Functions::with_builtins();
//!     functions.register("square", |(x,): (f64,)| Ok::<_, String>(x * x));
//!     courier::worker_main(functions)
//! }
//! ```
//!
//! Run it as `my-worker tcp://scheduler:8786 --nthreads 4` (the flags of `courier worker`).

mod config;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use courier_core::{CommError, Registry};
use courier_runtime::{Functions, SchedulerConfig, WorkerConfig};

use crate::RegistryExt as _;

/// Why a node could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A setting is missing or invalid (including an unreadable config file).
    #[error("{0}")]
    Config(String),
    /// A comm failed (listening, connecting, losing the scheduler).
    #[error(transparent)]
    Comm(#[from] CommError),
    /// The node's event loop ended abnormally (a panic is reported here too).
    #[error("the {0} stopped: {1}")]
    Stopped(&'static str, String),
    /// Writing to the terminal failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// TLS settings for `tls://` URLs, for every command.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsArgs {
    /// PEM file of the CA to trust (servers' for connecting; clients' with
    /// --tls-require-client-cert).
    #[arg(long, global = true, env = "COURIER_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// PEM file of this node's certificate chain.
    #[arg(long, global = true, env = "COURIER_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM file of this node's private key.
    #[arg(long, global = true, env = "COURIER_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Refuse tls:// clients without a certificate signed by --tls-ca.
    #[arg(long, global = true, env = "COURIER_TLS_REQUIRE_CLIENT_CERT")]
    pub tls_require_client_cert: bool,
}

/// Shared-secret authentication, for every command (see README, "Who may do what").
///
/// The cluster token admits a peer with every right: joining as a worker, and everything a
/// client does. An optional client token admits a peer as a client only: it may submit,
/// gather, scatter, cancel its own keys and retire workers, but never join as a worker, so it
/// cannot forge results. The scheduler and every worker's data listener check them; nodes
/// present the cluster token, clients the client token if they have one. Secrets are never
/// logged or printed (`--help` hides their environment values); prefer the `*-file` options
/// or the environment to a command line, which other users of the machine can read.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct AuthArgs {
    /// The cluster's shared secret.
    #[arg(long, global = true, env = "COURIER_AUTH_TOKEN", hide_env_values = true)]
    pub auth_token: Option<String>,
    /// A file holding the cluster's shared secret (surrounding whitespace ignored).
    #[arg(long, global = true, env = "COURIER_AUTH_TOKEN_FILE")]
    pub auth_token_file: Option<PathBuf>,
    /// A secret that admits clients only (scheduler and workers accept it; a client presents it).
    #[arg(long, global = true, env = "COURIER_CLIENT_TOKEN", hide_env_values = true)]
    pub client_token: Option<String>,
    /// A file holding the client-only secret.
    #[arg(long, global = true, env = "COURIER_CLIENT_TOKEN_FILE")]
    pub client_token_file: Option<PathBuf>,
}

/// What a process is, for the credentials it presents and accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Scheduler,
    Worker,
    Client,
}

fn credential(
    what: &str,
    value: Option<&String>,
    file: Option<&PathBuf>,
) -> Result<Option<courier_core::Credential>, NodeError> {
    let bad = |e: CommError| NodeError::Config(format!("{what}: {e}"));
    match (value, file) {
        (Some(_), Some(_)) => Err(NodeError::Config(format!("give the {what} or its file, not both"))),
        (Some(v), None) => courier_core::Credential::new(v.as_bytes()).map(Some).map_err(bad),
        (None, Some(f)) => courier_core::Credential::from_file(f).map(Some).map_err(bad),
        (None, None) => Ok(None),
    }
}

impl AuthArgs {
    /// Applies these settings (the file's `[auth]` section below them) to `config`.
    fn apply(
        &self,
        file: &config::AuthSection,
        role: Role,
        config: &mut courier_core::CommConfig,
    ) -> Result<(), NodeError> {
        let pick = |flag: &Option<String>, flag_file: &Option<PathBuf>, v: &Option<String>, f: &Option<PathBuf>| {
            if flag.is_some() || flag_file.is_some() {
                (flag.clone(), flag_file.clone())
            } else {
                (v.clone(), f.clone())
            }
        };
        let (t, tf) = pick(&self.auth_token, &self.auth_token_file, &file.token, &file.token_file);
        let (c, cf) = pick(&self.client_token, &self.client_token_file, &file.client_token, &file.client_token_file);
        let cluster = credential("auth token", t.as_ref(), tf.as_ref())?;
        let client = credential("client token", c.as_ref(), cf.as_ref())?;
        if role != Role::Client && client.is_some() && cluster.is_none() {
            return Err(NodeError::Config(
                "a client token needs a cluster token (--auth-token) as well: workers must authenticate too".into(),
            ));
        }
        if let Some(token) = &cluster
            && role != Role::Client
        {
            let mut access =
                courier_core::AccessList::new().allow(token.clone(), courier_runtime::protocol::ROLE_WORKER);
            if let Some(c) = &client {
                access = access.allow(c.clone(), courier_runtime::protocol::ROLE_CLIENT);
            }
            config.access = Some(access);
        }
        config.credential = match role {
            Role::Client => client.or(cluster),
            Role::Worker | Role::Scheduler => cluster,
        };
        Ok(())
    }
}

/// Settings every node shares: TLS, authentication and the config file.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CommonArgs {
    /// TLS.
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Authentication.
    #[command(flatten)]
    pub auth: AuthArgs,
    /// Compression of what this process sends, and what it announces it accepts: `none`,
    /// `snappy`, `lz4` or `auto` (default: none on loopback and in-process, auto across
    /// machines: per frame and link, see docs/PROTOCOL.md).
    #[arg(long, global = true, env = "COURIER_COMPRESSION")]
    pub compression: Option<String>,
    /// Bytes all comms of one listener may hold while receiving messages (e.g. `512MiB`,
    /// `2G`; default: half of this machine's memory). A peer that would exceed it loses its
    /// connection; the others are served.
    #[arg(long, global = true, env = "COURIER_RECV_BUDGET")]
    pub recv_budget: Option<String>,
    /// A courier.toml with [scheduler], [worker] and [tls] settings (flags and environment
    /// variables take precedence over it).
    #[arg(long, global = true, env = "COURIER_CONFIG")]
    pub config: Option<PathBuf>,
}

impl CommonArgs {
    /// A client's registry: the built-in transports, plus tls:// when any TLS option is
    /// given (flags, environment, or the config file's `[tls]` section), presenting the
    /// client token (or else the cluster token) if one is set.
    pub fn registry(&self) -> Result<Registry, NodeError> {
        let file = config::FileConfig::load(self.config.as_deref())?;
        self.registry_for(&file, Role::Client)
    }

    fn registry_for(&self, file: &config::FileConfig, role: Role) -> Result<Registry, NodeError> {
        let mut registry = self.registry_with(&file.tls)?;
        let mut config = registry.config().clone();
        self.auth.apply(&file.auth, role, &mut config)?;
        if let Some(c) = self.compression.as_ref().or(file.comm.compression.as_ref()) {
            config.compression =
                Some(courier_core::Compression::parse(c).map_err(|e| NodeError::Config(e.to_string()))?);
        }
        if let Some(b) = self.recv_budget.as_ref().or(file.comm.recv_budget.as_ref()) {
            config.budget.per_listener = Some(parse_size(b)?);
        }
        registry.set_config(config);
        Ok(registry)
    }

    fn registry_with(&self, file: &config::TlsSection) -> Result<Registry, NodeError> {
        let mut registry = Registry::with_default_transports();
        let t = &self.tls;
        let files = courier_tls::TlsFiles {
            ca: t.tls_ca.clone().or_else(|| file.ca.clone()),
            cert: t.tls_cert.clone().or_else(|| file.cert.clone()),
            key: t.tls_key.clone().or_else(|| file.key.clone()),
            require_client_cert: t.tls_require_client_cert || file.require_client_cert.unwrap_or(false),
        };
        if files.ca.is_some() || files.cert.is_some() {
            let tls = courier_tls::TlsTransport::from_files(&files).map_err(|e| NodeError::Config(e.to_string()))?;
            registry.register(Arc::new(tls));
        }
        Ok(registry)
    }
}

/// Parses a byte count: a number with an optional unit (`k`, `M`, `G`, `T`, powers of 1024,
/// with or without `iB`/`B`).
pub fn parse_size(text: &str) -> Result<u64, NodeError> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let bad = || NodeError::Config(format!("{text:?} is not a size (e.g. 512MiB, 2G, 1048576)"));
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let shift = match unit.trim().trim_end_matches("iB").trim_end_matches('B').to_ascii_lowercase().as_str() {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        _ => return Err(bad()),
    };
    n.checked_mul(1u64 << shift).ok_or_else(bad)
}

/// `courier scheduler` settings.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SchedulerArgs {
    /// Where to listen; the scheme picks the transport (tcp://, zmq://, …). Default
    /// tcp://127.0.0.1:8786.
    #[arg(long, env = "COURIER_SCHEDULER_LISTEN")]
    pub listen: Option<String>,
    /// Seconds a worker may stay silent (no heartbeat, no message) before it is declared dead
    /// and its work rescheduled (default 30).
    #[arg(long, env = "COURIER_WORKER_TIMEOUT")]
    pub worker_timeout: Option<f64>,
    /// Root-task queuing: ready tasks without dependencies go to a worker only while it has
    /// fewer than ceil(threads × this) tasks (default 1.1; `inf` turns queuing off).
    #[arg(long, env = "COURIER_WORKER_SATURATION")]
    pub worker_saturation: Option<f64>,
    /// Serve the dashboard (live page at `/`, Prometheus `/metrics`, JSON `/api/…`) over HTTP
    /// on `host:port` (port 0: any free port). Off unless given: the page has no
    /// authentication, so it is opened deliberately, typically on 127.0.0.1.
    #[arg(long, env = "COURIER_DASHBOARD", value_name = "HOST:PORT")]
    pub dashboard: Option<String>,
}

/// `courier worker` settings (and a custom worker's).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct WorkerArgs {
    /// The scheduler's URL; its scheme picks the transport.
    #[arg(env = "COURIER_SCHEDULER")]
    pub scheduler: Option<String>,
    /// Where to listen for peers and clients (default: same scheme, 127.0.0.1, any port).
    #[arg(long, env = "COURIER_WORKER_LISTEN")]
    pub listen: Option<String>,
    /// Tasks run at once (default 1).
    #[arg(long, env = "COURIER_NTHREADS")]
    pub nthreads: Option<u32>,
    /// The worker's name.
    #[arg(long, env = "COURIER_WORKER_NAME")]
    pub name: Option<String>,
    /// Do not listen on shm:// for peers and clients on this host (they use the network
    /// transport instead).
    #[arg(long, env = "COURIER_NO_SHM")]
    pub no_shm: bool,
    /// Memory this worker's process may use: a size (`4GiB`), a fraction of the machine's
    /// memory (`0.5`), `auto` (default: the machine's memory, or the cgroup's limit, times
    /// threads / cores) or `none` (results stay in memory, never paused).
    #[arg(long, env = "COURIER_MEMORY_LIMIT")]
    pub memory_limit: Option<String>,
    /// Managed memory (results held), as a fraction of the limit, above which the least
    /// recently used results are spilled to disk (default 0.6).
    #[arg(long, env = "COURIER_MEMORY_TARGET")]
    pub memory_target: Option<f64>,
    /// Process memory fraction above which results are spilled until back under target
    /// (default 0.7).
    #[arg(long, env = "COURIER_MEMORY_SPILL")]
    pub memory_spill: Option<f64>,
    /// Process memory fraction above which the worker starts no task (default 0.8).
    #[arg(long, env = "COURIER_MEMORY_PAUSE")]
    pub memory_pause: Option<f64>,
    /// Process memory fraction at which the worker restarts, before the kernel would kill it
    /// (default 0.95).
    #[arg(long, env = "COURIER_MEMORY_TERMINATE")]
    pub memory_terminate: Option<f64>,
    /// Directory for spilled results (a subdirectory of the worker's own is made and removed
    /// there; default: the system's temporary directory).
    #[arg(long, env = "COURIER_SPILL_DIR")]
    pub spill_dir: Option<PathBuf>,
}

/// The memory limits a worker runs with: flags, then file, then defaults.
fn memory_limits(
    args: &WorkerArgs,
    w: &config::WorkerSection,
    nthreads: u32,
) -> Result<Option<courier_runtime::MemoryLimits>, NodeError> {
    let text = args.memory_limit.clone().or_else(|| w.memory_limit.clone()).unwrap_or_else(|| "auto".into());
    let limit = match text.trim() {
        "none" | "0" => return Ok(None),
        "auto" => match courier_runtime::worker::default_memory_limit(nthreads) {
            Some(l) => l,
            None => {
                eprintln!("warning: cannot read this machine's memory; running without a memory limit");
                return Ok(None);
            }
        },
        t if t.contains('.') => {
            let f: f64 = t.parse().map_err(|_| NodeError::Config(format!("memory limit {t:?} is not a fraction")))?;
            let machine = courier_runtime::worker::default_memory_limit(u32::MAX)
                .ok_or_else(|| NodeError::Config("cannot read this machine's memory for a fractional limit".into()))?;
            if !(f > 0.0 && f <= 1.0) {
                return Err(NodeError::Config(format!("memory limit fraction {f}: give (0, 1]")));
            }
            (machine as f64 * f) as u64
        }
        t => parse_size(t)?,
    };
    let mut m = courier_runtime::MemoryLimits::new(limit);
    let pick = |flag: Option<f64>, file: Option<f64>, default: f64| flag.or(file).unwrap_or(default);
    m.target = pick(args.memory_target, w.memory_target, m.target);
    m.spill = pick(args.memory_spill, w.memory_spill, m.spill);
    m.pause = pick(args.memory_pause, w.memory_pause, m.pause);
    m.terminate = pick(args.memory_terminate, w.memory_terminate, m.terminate);
    m.validate().map_err(NodeError::Config)?;
    Ok(Some(m))
}

/// Runs a scheduler until Ctrl-C (`Ok`) or until its event loop fails (`Err`). Prints
/// `scheduler listening at URL` on stdout once it accepts connections.
pub async fn run_scheduler(args: SchedulerArgs, common: &CommonArgs) -> Result<(), NodeError> {
    let file = config::FileConfig::load(common.config.as_deref())?;
    let registry = common.registry_for(&file, Role::Scheduler)?;
    let listen = args.listen.or(file.scheduler.listen).unwrap_or_else(|| "tcp://127.0.0.1:8786".into());
    let mut config = SchedulerConfig::default();
    if let Some(secs) = args.worker_timeout.or(file.scheduler.worker_timeout) {
        if !(secs.is_finite() && (0.5..=86_400.0).contains(&secs)) {
            return Err(NodeError::Config(format!("worker timeout of {secs} s: give 0.5 to 86400 seconds")));
        }
        config.worker_timeout = std::time::Duration::from_secs_f64(secs);
    }
    if let Some(s) = args.worker_saturation.or(file.scheduler.worker_saturation) {
        if s.is_nan() || s < 1.0 {
            return Err(NodeError::Config(format!("worker saturation of {s}: give 1.0 or more, or inf")));
        }
        config.worker_saturation = s;
    }
    let mut server = courier_runtime::ServerConfig::from(config);
    server.dashboard = args.dashboard.or(file.scheduler.dashboard).map(courier_runtime::DashboardConfig::new);
    let (handle, task) = courier_runtime::start_scheduler(registry, &listen, server).await?;
    println!("scheduler listening at {}", handle.address);
    if let Some(d) = handle.dashboard_address() {
        println!("dashboard at http://{d}/ (metrics at http://{d}/metrics)");
    }
    use std::io::Write as _;
    std::io::stdout().flush()?;
    tokio::select! {
        r = task => match r {
            Ok(Ok(())) => Err(NodeError::Stopped("scheduler", "its event loop ended".into())),
            Ok(Err(e)) => Err(NodeError::Stopped("scheduler", e.to_string())),
            Err(e) => Err(NodeError::Stopped("scheduler", e.to_string())),
        },
        _ = tokio::signal::ctrl_c() => {
            handle.shutdown();
            Ok(())
        }
    }
}

/// Most arena bytes a worker's shm:// transport keeps: an eighth of its memory limit, at most
/// 16 GiB; the default cap without a limit. The arena counts in the worker's memory samples
/// and its free slots are given back before results are spilled ([`memory_probe`]). Until
/// then a worker limited below 8 GiB got no arena at all, every large frame in a fresh sealed
/// memfd, slower than tcp:// here (results/SUMMARY.md, "Why an arena"). Results are built in
/// the arena while lent slots hold less than 3/4 of it, and in fresh heap pages past that: a
/// tree reduction of 32 × 64 MiB on 3 workers holds ~1 GiB of results per worker, past the
/// lending share of a 1 GiB arena.
fn arena_cap(limit: Option<u64>) -> usize {
    const MOST: u64 = 16 << 30;
    limit.map_or(courier_shm::DEFAULT_ARENA_CAP as u64, |l| (l / 8).min(MOST)) as usize
}

/// A worker's memory samples. VmRSS counts a shared page in every process that touched it: a
/// worker that read frames from its peers' arenas would count their arenas as its own and
/// spill, pause or restart for memory that is not its. This counts its own arena and the
/// sealed frames it holds, once ([`courier_shm::resident_memory`]). Above `trim_above` it
/// first gives back the memory of its arena's free slots (cheaper than spilling results,
/// which a sample above the spill threshold starts) and samples again.
fn memory_probe(arena: Option<crate::ShmTransport>, trim_above: Option<u64>) -> courier_runtime::MemoryProbe {
    // `None` only where /proc/self/status cannot be read, as for `process_rss`.
    let sample = || courier_shm::resident_memory().unwrap_or(0);
    courier_runtime::MemoryProbe(Arc::new(move || {
        let now = sample();
        match (&arena, trim_above) {
            (Some(shm), Some(above)) if now > above && shm.trim_arena() > 0 => sample(),
            _ => now,
        }
    }))
}

/// Runs a worker with `functions` until the scheduler retires it or Ctrl-C (`Ok`), or until
/// it loses the scheduler or fails (`Err`). SIGTERM retires it: it asks the scheduler to move
/// its results to other workers, then exits (within [`RETIRE_GRACE`] each). Prints `worker
/// serving data at URL` on stderr.
pub async fn run_worker(args: WorkerArgs, common: &CommonArgs, functions: Functions) -> Result<(), NodeError> {
    let file = config::FileConfig::load(common.config.as_deref())?;
    let mut registry = common.registry_for(&file, Role::Worker)?;
    let w = file.worker;
    let scheduler = args.scheduler.clone().or(w.scheduler.clone()).ok_or_else(|| {
        NodeError::Config(
            "a worker needs the scheduler's URL (argument, COURIER_SCHEDULER or [worker] scheduler)".into(),
        )
    })?;
    let nthreads = args.nthreads.or(w.nthreads).unwrap_or(1);
    let memory = memory_limits(&args, &w, nthreads)?;
    let mut arena = None;
    if !args.no_shm && w.shm.unwrap_or(true) {
        // Large results and received frames are built in the arena's slots, so a same-host
        // peer fetching one gets it in place, with no copy (`ShmTransport::lend_buffers`).
        let shm = crate::ShmTransport::new().with_arena_cap(arena_cap(memory.map(|m| m.limit)));
        shm.lend_buffers();
        registry.register(Arc::new(shm.clone()));
        arena = Some(shm);
    }
    let config = WorkerConfig {
        listen: args.listen.or(w.listen),
        name: args.name.or(w.name),
        nthreads,
        shm: !args.no_shm && w.shm.unwrap_or(true),
        memory,
        spill_dir: args.spill_dir.or(w.spill_dir),
        memory_probe: Some(memory_probe(arena, memory.map(|m| (m.limit as f64 * m.spill) as u64))),
        ..WorkerConfig::new(scheduler)
    };
    if let Some(m) = &memory {
        eprintln!(
            "worker memory limit {} bytes (spill above {:.0}% managed, pause at {:.0}%, restart at {:.0}%)",
            m.limit,
            m.target * 100.0,
            m.pause * 100.0,
            m.terminate * 100.0
        );
    }
    let client_registry = registry.clone();
    let (handle, task) = courier_runtime::start_worker(registry, Arc::new(functions), config.clone()).await?;
    eprintln!("worker serving data at {}", handle.address);
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| NodeError::Stopped("worker", format!("cannot watch for SIGTERM: {e}")))?;
    tokio::pin!(task);
    let ended = |r: Result<Result<(), CommError>, tokio::task::JoinError>| match r {
        Ok(Ok(())) => Ok(()),
        // At its terminate threshold the worker stops cleanly and the process starts
        // afresh (its results are recomputed elsewhere from lineage).
        Ok(Err(e)) if handle.terminated_for_memory() => {
            eprintln!("worker restarting: {e}");
            Err(restart_process(config.spill_dir.as_deref()))
        }
        Ok(Err(e)) => Err(NodeError::Comm(e)),
        Err(e) => Err(NodeError::Stopped("worker", e.to_string())),
    };
    tokio::select! {
        r = &mut task => ended(r),
        _ = tokio::signal::ctrl_c() => {
            handle.shutdown();
            Ok(())
        }
        _ = terminate.recv() => {
            // What a cluster manager sends to scale down (Kubernetes, SLURM): retire, so
            // the results this worker holds move to the others instead of being recomputed.
            eprintln!("worker {}: SIGTERM, retiring", handle.address);
            let retire = async {
                let client = courier_runtime::Client::connect(client_registry, &config.scheduler).await?;
                let result = client.retire_workers(std::slice::from_ref(&handle.address)).await;
                client.close().await;
                result.map_err(|e| CommError::closed(e.to_string()))
            };
            let retired = tokio::select! {
                // Let go by the scheduler once its results moved, or the scheduler is gone:
                // either way the worker has stopped, as asked.
                r = &mut task => {
                    if let Ok(Err(e)) = r {
                        eprintln!("worker {}: stopped ({e})", handle.address);
                    }
                    return Ok(());
                }
                r = tokio::time::timeout(RETIRE_GRACE, retire) => r,
            };
            match retired {
                Ok(Ok(())) => {
                    if tokio::time::timeout(RETIRE_GRACE, &mut task).await.is_ok() {
                        return Ok(());
                    }
                    eprintln!("worker {}: retired, but still running after {RETIRE_GRACE:?}; stopping", handle.address);
                }
                Ok(Err(e)) => eprintln!("worker {}: not retired ({e}); stopping", handle.address),
                Err(_) => eprintln!("worker {}: not retired within {RETIRE_GRACE:?}; stopping", handle.address),
            }
            handle.shutdown();
            Ok(())
        }
    }
}

/// How long a worker told to stop with SIGTERM spends retiring (moving its results to other
/// workers), and then waiting to be let go, before it stops regardless: within Kubernetes'
/// default 30 s grace period.
pub const RETIRE_GRACE: std::time::Duration = std::time::Duration::from_secs(25);

/// Replaces this process with a fresh run of the same command: the only restart that gives
/// memory back at once (blocking threads of the old worker may still hold results, and the
/// allocator keeps what it likes). Removes this process's spill directories first. Returns
/// only if exec failed.
fn restart_process(spill_dir: Option<&std::path::Path>) -> NodeError {
    use std::os::unix::process::CommandExt as _;
    let parent = spill_dir.map_or_else(std::env::temp_dir, std::path::Path::to_path_buf);
    let mine = format!("courier-spill-{}-", std::process::id());
    if let Ok(entries) = std::fs::read_dir(&parent) {
        for e in entries.flatten() {
            if e.file_name().to_str().is_some_and(|n| n.starts_with(&mine)) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => return NodeError::Stopped("worker", format!("cannot restart: {e}")),
    };
    let err = std::process::Command::new(exe).args(std::env::args_os().skip(1)).exec();
    NodeError::Stopped("worker", format!("cannot restart: {err}"))
}

/// Runs a node's main future to its end, then stops the runtime without waiting for work
/// still in flight: a worker that lost its scheduler must exit now, not when a long task on
/// a blocking thread happens to finish (dropping a runtime waits for those).
pub fn block_on_node<T>(runtime: tokio::runtime::Runtime, main: impl std::future::Future<Output = T>) -> T {
    let out = runtime.block_on(main);
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    out
}

/// Logs to stderr, filtered by `COURIER_LOG` (e.g. `COURIER_LOG=info`). Does nothing if a
/// subscriber is already installed.
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("COURIER_LOG"))
        .with_writer(std::io::stderr)
        .try_init();
}

#[derive(Debug, clap::Parser)]
#[command(about = "A Courier worker with custom functions")]
struct WorkerCli {
    #[command(flatten)]
    worker: WorkerArgs,
    #[command(flatten)]
    common: CommonArgs,
}

/// The `main` of a custom worker binary: parses the flags, environment and config file as
/// `courier worker` does, runs a worker offering `functions`, and returns the process's exit
/// code (non-zero, with the reason on stderr, when the worker fails or loses its scheduler).
pub fn worker_main(functions: Functions) -> ExitCode {
    init_logging();
    let cli = <WorkerCli as clap::Parser>::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match block_on_node(runtime, run_worker(cli.worker, &cli.common, functions)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{arena_cap, parse_size};

    #[test]
    fn sizes_parse_with_binary_units_and_refuse_garbage() {
        assert_eq!(parse_size("1048576").unwrap(), 1 << 20);
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("2G").unwrap(), 2 << 30);
        assert_eq!(parse_size("64 kB").unwrap(), 64 << 10);
        for bad in ["", "MiB", "12 parsecs", "-1G", "99999999999T"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    /// The arena is an eighth of the memory limit, at most 16 GiB; the default without one.
    #[test]
    fn the_arena_cap_is_an_eighth_of_the_memory_limit_within_bounds() {
        assert_eq!(arena_cap(None), courier_shm::DEFAULT_ARENA_CAP);
        assert_eq!(arena_cap(Some(8 << 30)), 1 << 30);
        assert_eq!(arena_cap(Some(12 << 30)), 3 << 29);
        assert_eq!(arena_cap(Some(4 << 30)), 512 << 20, "small workers get a small arena, not none");
        assert_eq!(arena_cap(Some(1 << 40)), 16 << 30);
    }

    /// Above the spill threshold a worker's memory sample gives back its arena's free slots
    /// first; below it, or without a threshold, it leaves them.
    #[tokio::test]
    async fn memory_samples_above_the_threshold_trim_the_arena_first() {
        use courier_core::{Message, Registry};
        let shm = crate::ShmTransport::new().with_threshold(4096);
        let r = Registry::new().with(std::sync::Arc::new(shm.clone()));
        let mut l = r.listen("shm://").await.unwrap();
        let url = l.contact_address().to_string();
        for (trim_above, trims) in [(None, false), (Some(u64::MAX), false), (Some(0), true)] {
            // A frame through the arena, dropped, and the comm ended: its slot is known free.
            let (c, s) = tokio::join!(r.connect(&url), l.accept());
            let (mut c, mut s) = (c.unwrap(), s.unwrap());
            c.send(Message::new(b"m".to_vec(), vec![vec![7u8; 1 << 20].into()])).await.unwrap();
            drop(s.recv().await.unwrap());
            drop((c, s));
            let sample = (super::memory_probe(Some(shm.clone()), trim_above).0)();
            assert!(sample > 0);
            let left = shm.trim_arena();
            assert_eq!(left == 0, trims, "{trim_above:?}: {left} bytes were left to trim");
        }
        l.close().await;
    }
}
