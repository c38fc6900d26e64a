//! Spill and unspill throughput against the raw disk, in one run: a worker's spill store
//! (`courier_runtime::worker::spill`) writes `count` values of `mib` MiB to a directory and
//! reads them back (CRC-checked, into aligned buffers), and `dd` writes and reads the same
//! bytes in the same directory with one value per block (`bs` = the value size, so both make
//! the same size of I/O calls; no sync for either: both go through the page cache, as a
//! spilling worker does): as one file of all of them (sequential: the disk's limit, the
//! baseline of the ratios) and, for context, as one file per value (the spill store's layout,
//! but one `dd` process per file). Dirty pages are written back (`sync`) before every write
//! measurement, so no contender pays for another's writeback. Reads are warm (just written) and, when run as root, also cold
//! (page cache dropped first). Repetitions interleave the contenders; prints medians with the
//! spread (min–max), the ratio to dd, and CPU seconds per GiB (this process for the spill
//! store, dd's for dd).
//!
//! ```sh
//! cargo build --release -p courier-cli --example spill_bench
//! target/release/examples/spill_bench [dir] [mib] [count] [reps] [--json FILE]
//! ```

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use courier::courier_core::Payload;
use courier::courier_runtime::worker::spill::SpillStore;
use courier_bench::process_cpu;

#[derive(Debug, Clone, serde::Serialize)]
struct Sample {
    what: String,
    rep: usize,
    seconds: f64,
    cpu_seconds: f64,
    bytes: u64,
}

/// CPU time of this process's waited-for children (dd), from /proc/self/stat.
fn children_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may contain spaces) start at ") ".
    let rest = stat.rsplit_once(") ").map_or("", |(_, r)| r);
    let f: Vec<u64> = rest.split_whitespace().map(|x| x.parse().unwrap_or(0)).collect();
    // cutime and cstime are fields 16 and 17 of stat: 13 and 14 after the state field.
    let ticks = f.get(13).copied().unwrap_or(0) + f.get(14).copied().unwrap_or(0);
    Duration::from_millis(ticks * 10) // USER_HZ is 100 on Linux
}

fn sync() {
    let _ = Command::new("sync").status();
}

fn drop_caches() -> bool {
    sync();
    std::fs::write("/proc/sys/vm/drop_caches", "3\n").is_ok()
}

fn dd(args: &[&str]) -> anyhow::Result<(Duration, Duration)> {
    let cpu = children_cpu();
    let started = Instant::now();
    let status = Command::new("dd").args(args).arg("status=none").status()?;
    anyhow::ensure!(status.success(), "dd {args:?} failed");
    Ok((started.elapsed(), children_cpu().saturating_sub(cpu)))
}

fn median(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let json = args.iter().position(|a| a == "--json").map(|i| PathBuf::from(&args[i + 1]));
    let pos: Vec<&String> = args.iter().take_while(|a| *a != "--json").collect();
    let dir = pos.first().map_or_else(std::env::temp_dir, PathBuf::from);
    let mib: usize = pos.get(1).map(|s| s.parse()).transpose()?.unwrap_or(64);
    let count: usize = pos.get(2).map(|s| s.parse()).transpose()?.unwrap_or(16);
    let reps: usize = pos.get(3).map(|s| s.parse()).transpose()?.unwrap_or(5);
    let size = mib << 20;
    let total = (size * count) as u64;
    let work = dir.join(format!("courier-spill-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let mut rng = fastrand::Rng::with_seed(7);
    let values: Vec<Payload> = (0..count)
        .map(|_| {
            let mut frame = vec![0u8; size];
            rng.fill(&mut frame);
            Payload { header: Bytes::from_static(b"\x91\x00"), frames: vec![Bytes::from(frame)] }
        })
        .collect();
    let cold = drop_caches();
    println!(
        "spill bench: {count} values of {mib} MiB ({} GiB) in {}, {reps} repetitions{}",
        total as f64 / (1u64 << 30) as f64,
        work.display(),
        if cold { ", warm and cold reads" } else { ", warm reads only (not root: cannot drop the page cache)" }
    );
    let mut samples = Vec::new();
    let mut push = |what: &str, rep, seconds: Duration, cpu: Duration| {
        samples.push(Sample {
            what: what.into(),
            rep,
            seconds: seconds.as_secs_f64(),
            cpu_seconds: cpu.as_secs_f64(),
            bytes: total,
        })
    };
    for rep in 0..reps {
        // The spill store.
        let store = SpillStore::new(&work);
        sync();
        let (cpu, started) = (process_cpu(), Instant::now());
        let files: Vec<_> =
            values.iter().map(|v| store.write(v)).collect::<Result<_, _>>().map_err(anyhow::Error::msg)?;
        push("spill write", rep, started.elapsed(), process_cpu() - cpu);
        let read_all = |files: &[courier::courier_runtime::worker::spill::SpillFile]| -> anyhow::Result<()> {
            for (f, v) in files.iter().zip(&values) {
                let back = f.read().map_err(anyhow::Error::msg)?;
                anyhow::ensure!(back.frames[0].len() == v.frames[0].len(), "read back a different value");
            }
            Ok(())
        };
        let (cpu, started) = (process_cpu(), Instant::now());
        read_all(&files)?;
        push("spill read (warm)", rep, started.elapsed(), process_cpu() - cpu);
        if cold && drop_caches() {
            let (cpu, started) = (process_cpu(), Instant::now());
            read_all(&files)?;
            push("spill read (cold)", rep, started.elapsed(), process_cpu() - cpu);
        }
        drop(files);
        drop(store);
        // dd, the same bytes in the same directory.
        let file = work.join("dd.bin");
        let of = format!("of={}", file.display());
        let if_ = format!("if={}", file.display());
        let (n, bs) = (format!("count={count}"), format!("bs={mib}M"));
        sync();
        let (t, c) = dd(&["if=/dev/zero", &of, &bs, &n])?;
        push("dd 1 file write", rep, t, c);
        let (t, c) = dd(&[&if_, "of=/dev/null", &bs])?;
        push("dd 1 file read (warm)", rep, t, c);
        if cold && drop_caches() {
            let (t, c) = dd(&[&if_, "of=/dev/null", &bs])?;
            push("dd 1 file read (cold)", rep, t, c);
        }
        std::fs::remove_file(&file)?;
        // dd, one file per value.
        let names: Vec<PathBuf> = (0..count).map(|i| work.join(format!("dd-{i}.bin"))).collect();
        let each = |out: bool| -> anyhow::Result<(Duration, Duration)> {
            let (mut t, mut c) = (Duration::ZERO, Duration::ZERO);
            for f in &names {
                let (a, b) = if out {
                    dd(&["if=/dev/zero", &format!("of={}", f.display()), &bs, "count=1"])?
                } else {
                    dd(&[&format!("if={}", f.display()), "of=/dev/null", &bs])?
                };
                (t, c) = (t + a, c + b);
            }
            Ok((t, c))
        };
        sync();
        let (t, c) = each(true)?;
        push("dd write", rep, t, c);
        let (t, c) = each(false)?;
        push("dd read (warm)", rep, t, c);
        if cold && drop_caches() {
            let (t, c) = each(false)?;
            push("dd read (cold)", rep, t, c);
        }
        for f in &names {
            std::fs::remove_file(f)?;
        }
    }
    let _ = std::fs::remove_dir_all(&work);
    let gib = total as f64 / (1u64 << 30) as f64;
    let summary = |what: &str| -> Option<(f64, f64, f64, f64)> {
        let s: Vec<&Sample> = samples.iter().filter(|s| s.what == what).collect();
        if s.is_empty() {
            return None;
        }
        let (t, lo, hi) = median(s.iter().map(|s| s.seconds).collect());
        let (cpu, _, _) = median(s.iter().map(|s| s.cpu_seconds).collect());
        Some((t, lo, hi, cpu))
    };
    println!("{:<22} {:>10} {:>20} {:>10} {:>14}", "", "GiB/s", "spread (GiB/s)", "vs dd", "CPU s per GiB");
    for (ours, theirs, limit) in [
        ("spill write", "dd write", "dd 1 file write"),
        ("spill read (warm)", "dd read (warm)", "dd 1 file read (warm)"),
        ("spill read (cold)", "dd read (cold)", "dd 1 file read (cold)"),
    ] {
        let (Some(a), Some(b), Some(l)) = (summary(ours), summary(theirs), summary(limit)) else { continue };
        for (what, (t, lo, hi, cpu), ratio) in [(ours, a, Some(l.0 / a.0)), (limit, l, None), (theirs, b, None)] {
            println!(
                "{:<22} {:>10.2} {:>9.2} – {:<8.2} {:>10} {:>14.3}",
                what,
                gib / t,
                gib / hi,
                gib / lo,
                ratio.map_or(String::new(), |r| format!("{r:.2}x")),
                cpu / gib
            );
        }
    }
    println!(
        "(GiB/s: median of {reps}; spread: slowest – fastest; vs dd: throughput ratio to `dd 1 file`, the same \
         bytes in one file, same directory, the disk's sequential limit; `dd`: one file and one dd per value)"
    );
    if let Some(path) = json {
        std::fs::write(path, serde_json::to_string_pretty(&samples)?)?;
    }
    Ok(())
}
