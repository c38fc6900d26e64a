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

/// Settings every node shares: TLS and the config file.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CommonArgs {
    /// TLS.
    #[command(flatten)]
    pub tls: TlsArgs,
    /// A courier.toml with [scheduler], [worker] and [tls] settings (flags and environment
    /// variables take precedence over it).
    #[arg(long, global = true, env = "COURIER_CONFIG")]
    pub config: Option<PathBuf>,
}

impl CommonArgs {
    /// The built-in transports, plus tls:// when any TLS option is given (flags,
    /// environment, or the config file's `[tls]` section).
    pub fn registry(&self) -> Result<Registry, NodeError> {
        let file = config::FileConfig::load(self.config.as_deref())?;
        self.registry_with(&file.tls)
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

/// `courier scheduler` settings.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SchedulerArgs {
    /// Where to listen; the scheme picks the transport (tcp://, zmq://, …). Default
    /// tcp://127.0.0.1:8786.
    #[arg(long, env = "COURIER_SCHEDULER_LISTEN")]
    pub listen: Option<String>,
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
}

/// Runs a scheduler until Ctrl-C (`Ok`) or until its event loop fails (`Err`). Prints
/// `scheduler listening at URL` on stdout once it accepts connections.
pub async fn run_scheduler(args: SchedulerArgs, common: &CommonArgs) -> Result<(), NodeError> {
    let file = config::FileConfig::load(common.config.as_deref())?;
    let registry = common.registry_with(&file.tls)?;
    let listen = args.listen.or(file.scheduler.listen).unwrap_or_else(|| "tcp://127.0.0.1:8786".into());
    let (handle, task) = courier_runtime::start_scheduler(registry, &listen, SchedulerConfig::default()).await?;
    println!("scheduler listening at {}", handle.address);
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

/// Runs a worker with `functions` until the scheduler retires it or Ctrl-C (`Ok`), or until
/// it loses the scheduler or fails (`Err`). Prints `worker serving data at URL` on stderr.
pub async fn run_worker(args: WorkerArgs, common: &CommonArgs, functions: Functions) -> Result<(), NodeError> {
    let file = config::FileConfig::load(common.config.as_deref())?;
    let registry = common.registry_with(&file.tls)?;
    let w = file.worker;
    let scheduler = args.scheduler.or(w.scheduler).ok_or_else(|| {
        NodeError::Config(
            "a worker needs the scheduler's URL (argument, COURIER_SCHEDULER or [worker] scheduler)".into(),
        )
    })?;
    let config = WorkerConfig {
        listen: args.listen.or(w.listen),
        name: args.name.or(w.name),
        nthreads: args.nthreads.or(w.nthreads).unwrap_or(1),
        ..WorkerConfig::new(scheduler)
    };
    let (handle, task) = courier_runtime::start_worker(registry, Arc::new(functions), config).await?;
    eprintln!("worker serving data at {}", handle.address);
    tokio::select! {
        r = task => match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(NodeError::Comm(e)),
            Err(e) => Err(NodeError::Stopped("worker", e.to_string())),
        },
        _ = tokio::signal::ctrl_c() => {
            handle.shutdown();
            Ok(())
        }
    }
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
    match runtime.block_on(run_worker(cli.worker, &cli.common, functions)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
