//! The `courier` command line: run a scheduler or workers, submit a task, and measure the
//! transports and the runtime.

use clap::{Parser, Subcommand};
use courier::node::{CommonArgs, SchedulerArgs, WorkerArgs};

mod alloc;
mod compare;
mod info;
mod npy;
mod perf;
mod stability;
mod submit;
mod tasks;

/// Small blocks from mimalloc, large ones from the system (see [`alloc`]).
#[global_allocator]
static ALLOC: alloc::SplitAlloc = alloc::SplitAlloc;

/// Courier: pluggable-transport messaging for n-d arrays, and a task runtime on top.
#[derive(Debug, Parser)]
#[command(name = "courier", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Compare the transports on this machine: array-sized stream throughput and small-message
    /// round trips over every built-in transport, next to a raw tokio socket, in one run.
    Compare(compare::Args),
    /// Measure task throughput: map + gather and an as_completed loop, on an in-process
    /// cluster and on scheduler + worker processes per scheme.
    BenchTasks(tasks::Args),
    /// Run one task on a cluster and print its result: `courier submit URL inc 41` prints 42.
    /// Each argument is JSON (a bare word is a string). An array result is summarised (dtype,
    /// shape, first values, checksum); `--out FILE.npy` writes it whole for numpy.
    Submit(submit::Args),
    /// Show the scheduler's workers: threads, runs, results held, memory (limit, managed,
    /// spilled, RSS, paused) and spill rates. `--json` for all of it as JSON.
    Info(info::Args),
    /// Stability runs: repeat a mixed workload per transport; count failures, hangs and lost
    /// messages; sample memory and file descriptors.
    Stability(stability::Args),
    /// iperf-like measurements of any transport between two processes or hosts.
    #[command(subcommand)]
    Perf(perf::Perf),
    /// Run a scheduler. Prints `scheduler listening at URL` once it accepts connections.
    Scheduler(SchedulerArgs),
    /// Run a worker with the built-in functions, connected to a scheduler.
    Worker(WorkerArgs),
}

/// Runs `work` as a task on `rt`'s worker threads, not on this thread (`block_on`'s future):
/// measured from `block_on`, every wait pays a hand-off between threads (the worker that reads
/// the event wakes this thread), which slowed `courier perf` over sockets far more than over
/// shm:// (`courier_bench::Ends` has the figures). `courier perf` has one end per process, so
/// nothing shares its worker; `courier stability` compares transports by their faults' delays,
/// so its client runs as a task too. `courier compare`, with both ends of a pair in one
/// process, gives each end a runtime thread of its own instead. `courier bench-tasks` keeps its
/// client in `block_on`, as a user's program drives one, and every cluster it compares pays
/// that alike.
fn spawned<T: Send + 'static>(
    rt: tokio::runtime::Runtime,
    work: impl Future<Output = anyhow::Result<T>> + Send + 'static,
) -> anyhow::Result<T> {
    rt.block_on(async move { tokio::spawn(work).await? })
}

fn main() -> anyhow::Result<()> {
    alloc::return_freed_memory_soon();
    courier::node::init_logging();
    let cli = Cli::parse();
    let multi = || tokio::runtime::Builder::new_multi_thread().enable_all().build();
    match cli.command {
        Command::Compare(args) => {
            let ends = courier_bench::Ends::new()?;
            let current = || tokio::runtime::Builder::new_current_thread().enable_all().build();
            let mut rows = current()?.block_on(compare::streams(&args, &ends))?;
            // Round trips are dominated by task wake-ups: show both runtime flavours.
            rows.extend(current()?.block_on(compare::echoes(&args, "multi-thread", Some(&ends)))?);
            rows.extend(current()?.block_on(compare::echoes(&args, "current-thread", None))?);
            rows.extend(multi()?.block_on(compare::connects(&args))?);
            compare::write_json(&args, &rows)?;
            println!();
            println!("More: `cargo bench -p courier-bench` (criterion; HTML in target/criterion/report/index.html),");
            println!(
                "`courier stability`, `courier bench-tasks`, `courier perf`; recorded results and plots: results/SUMMARY.md"
            );
            Ok(())
        }
        Command::Stability(args) => spawned(multi()?, stability::run(args)),
        Command::Perf(p) => spawned(multi()?, perf::run(p, cli.common.registry()?)),
        Command::BenchTasks(args) => multi()?.block_on(tasks::run(args, cli.common.registry()?)),
        Command::Submit(args) => courier::node::block_on_node(multi()?, submit::run(args, cli.common.registry()?)),
        Command::Info(args) => courier::node::block_on_node(multi()?, info::run(args, cli.common.registry()?)),
        Command::Scheduler(args) => {
            Ok(courier::node::block_on_node(multi()?, courier::node::run_scheduler(args, &cli.common))?)
        }
        Command::Worker(args) => {
            // The built-ins plus the chunked-array and GLM block functions (all bounded).
            let mut functions = courier::courier_runtime::Functions::with_builtins();
            functions.extend(courier_array::functions());
            Ok(courier::node::block_on_node(multi()?, courier::node::run_worker(args, &cli.common, functions))?)
        }
    }
}
