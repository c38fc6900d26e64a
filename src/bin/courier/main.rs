//! The `courier` command line.

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use courier::RegistryExt as _;

mod compare;
mod config;
mod perf;
mod stability;
mod tasks;

/// Courier: pluggable-transport messaging for n-d arrays.
#[derive(Debug, Parser)]
#[command(name = "courier", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    tls: TlsArgs,
    /// A courier.toml with [scheduler], [worker] and [tls] settings (flags and environment
    /// variables take precedence over it).
    #[arg(long, global = true, env = "COURIER_CONFIG")]
    config: Option<std::path::PathBuf>,
}

/// TLS settings for tls:// URLs, for every command (scheduler, worker, clients).
#[derive(Debug, clap::Args)]
struct TlsArgs {
    /// PEM file of the CA to trust (servers' for connecting; clients' with --tls-require-client-cert).
    #[arg(long, global = true, env = "COURIER_TLS_CA")]
    tls_ca: Option<std::path::PathBuf>,
    /// PEM file of this node's certificate chain.
    #[arg(long, global = true, env = "COURIER_TLS_CERT")]
    tls_cert: Option<std::path::PathBuf>,
    /// PEM file of this node's private key.
    #[arg(long, global = true, env = "COURIER_TLS_KEY")]
    tls_key: Option<std::path::PathBuf>,
    /// Refuse tls:// clients without a certificate signed by --tls-ca.
    #[arg(long, global = true, env = "COURIER_TLS_REQUIRE_CLIENT_CERT")]
    tls_require_client_cert: bool,
}

impl TlsArgs {
    /// The built-in transports, plus tls:// when any TLS option is given (flags, environment
    /// or the config file's [tls] section).
    fn registry(&self, file: &config::TlsSection) -> anyhow::Result<courier::Registry> {
        let mut registry = courier::Registry::with_default_transports();
        let files = courier::courier_tls::TlsFiles {
            ca: self.tls_ca.clone().or_else(|| file.ca.clone()),
            cert: self.tls_cert.clone().or_else(|| file.cert.clone()),
            key: self.tls_key.clone().or_else(|| file.key.clone()),
            require_client_cert: self.tls_require_client_cert || file.require_client_cert.unwrap_or(false),
        };
        if files.ca.is_some() || files.cert.is_some() {
            registry.register(std::sync::Arc::new(courier::courier_tls::TlsTransport::from_files(&files)?));
        }
        Ok(registry)
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Compare the transports on this machine: array-sized stream throughput and small-message
    /// round trips over tcp:// and inproc://, next to a raw tokio socket, in one run.
    Compare(compare::Args),
    /// Measure task throughput: map + gather and an as_completed loop, on an in-process
    /// cluster and on scheduler + worker processes per scheme.
    BenchTasks(tasks::Args),
    /// Run one task on a cluster and print its result as JSON: `courier submit URL inc 41`.
    /// Each argument is JSON (a bare word is a string).
    Submit {
        /// The scheduler's URL.
        scheduler: String,
        /// The function to run.
        function: String,
        /// Its arguments, as JSON values.
        args: Vec<String>,
    },
    /// Stability runs: repeat a mixed workload per transport; count failures, hangs and lost
    /// messages; sample memory and file descriptors.
    Stability(stability::Args),
    /// iperf-like measurements of any transport between two processes or hosts.
    #[command(subcommand)]
    Perf(perf::Perf),
    /// Run a scheduler. Prints `scheduler listening at URL` once it accepts connections.
    Scheduler {
        /// Where to listen; the scheme picks the transport (tcp://, zmq://, …). Default
        /// tcp://127.0.0.1:8786.
        #[arg(long, env = "COURIER_SCHEDULER_LISTEN")]
        listen: Option<String>,
    },
    /// Run a worker with the built-in functions, connected to a scheduler.
    Worker {
        /// The scheduler's URL; its scheme picks the transport.
        #[arg(env = "COURIER_SCHEDULER")]
        scheduler: Option<String>,
        /// Where to listen for peers and clients (default: same scheme, 127.0.0.1, any port).
        #[arg(long, env = "COURIER_WORKER_LISTEN")]
        listen: Option<String>,
        /// Tasks of blocking functions run at once (default 1).
        #[arg(long, env = "COURIER_NTHREADS")]
        nthreads: Option<u32>,
        /// The worker's name.
        #[arg(long, env = "COURIER_WORKER_NAME")]
        name: Option<String>,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("COURIER_LOG"))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let file = config::FileConfig::load(cli.config.as_deref())?;
    let registry = cli.tls.registry(&file.tls)?;
    let multi = || tokio::runtime::Builder::new_multi_thread().enable_all().build();
    match cli.command {
        Command::Compare(args) => {
            multi()?.block_on(compare::streams(&args))?;
            // Round trips are dominated by task wake-ups: show both runtime flavours.
            multi()?.block_on(compare::echoes(&args, "multi-thread"))?;
            let current = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            current.block_on(compare::echoes(&args, "current-thread"))?;
            println!();
            println!("More: `cargo bench -p courier-bench` (criterion; HTML in target/criterion/report/index.html),");
            println!(
                "`courier stability`, `courier bench-tasks`, `courier perf`; recorded results and plots: results/SUMMARY.md"
            );
            Ok(())
        }
        Command::Stability(args) => multi()?.block_on(stability::run(args)),
        Command::Perf(p) => multi()?.block_on(perf::run(p, registry)),
        Command::BenchTasks(args) => multi()?.block_on(tasks::run(args)),
        Command::Submit { scheduler, function, args } => multi()?.block_on(async {
            let client = courier_runtime::Client::connect(registry, &scheduler).await?;
            let args = args
                .iter()
                .map(|a| {
                    let v: serde_json::Value =
                        serde_json::from_str(a).unwrap_or_else(|_| serde_json::Value::String(a.clone()));
                    courier_runtime::arg(&v)
                })
                .collect();
            let future = client.submit::<serde_json::Value>(&function, args).await?;
            let value = future.result().await?;
            println!("{value}");
            client.close().await;
            Ok(())
        }),
        Command::Scheduler { listen } => multi()?.block_on(async {
            let listen = listen.or(file.scheduler.listen).unwrap_or_else(|| "tcp://127.0.0.1:8786".into());
            let config = courier_runtime::SchedulerConfig::default();
            let (handle, task) = courier_runtime::start_scheduler(registry, &listen, config).await?;
            println!("scheduler listening at {}", handle.address);
            use std::io::Write as _;
            std::io::stdout().flush()?;
            tokio::select! {
                _ = task => {}
                _ = tokio::signal::ctrl_c() => handle.shutdown(),
            }
            Ok(())
        }),
        Command::Worker { scheduler, listen, nthreads, name } => multi()?.block_on(async {
            let w = file.worker;
            let scheduler = scheduler
                .or(w.scheduler)
                .context("a worker needs the scheduler's URL (argument, COURIER_SCHEDULER or [worker] scheduler)")?;
            let (listen, name) = (listen.or(w.listen), name.or(w.name));
            let nthreads = nthreads.or(w.nthreads).unwrap_or(1);
            let functions = std::sync::Arc::new(courier_runtime::Functions::with_builtins());
            let config = courier_runtime::WorkerConfig { scheduler, listen, nthreads, name };
            let (handle, task) = courier_runtime::start_worker(registry, functions, config).await?;
            eprintln!("worker serving data at {}", handle.address);
            tokio::select! {
                r = task => r??,
                _ = tokio::signal::ctrl_c() => handle.shutdown(),
            }
            Ok(())
        }),
    }
}
