//! The `courier` command line: a TLS session with certificates from files, and where
//! settings come from (flags, then environment, then courier.toml).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use courier::courier_tls::test_certs::TestPki;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

fn courier() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_courier"));
    c.kill_on_drop(true);
    for var in ["COURIER_SCHEDULER_LISTEN", "COURIER_CONFIG", "COURIER_AUTH_TOKEN", "COURIER_CLIENT_TOKEN"] {
        c.env_remove(var);
    }
    c
}

/// Runs `courier` with `args`, asserts it succeeded (printing both outputs if not) and returns
/// what it printed.
async fn run_ok(args: &[&str]) -> String {
    let out = courier().args(args).output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("courier-cli-{name}-{}-{}", std::process::id(), fastrand::u64(..)));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Starts `courier scheduler` with `args` and returns it with the address it printed.
async fn scheduler(args: &[&str], env: &[(&str, &str)]) -> (Child, String) {
    let mut cmd = courier();
    cmd.arg("scheduler").args(args).stdout(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await.unwrap().unwrap().unwrap();
    let addr = line.strip_prefix("scheduler listening at ").unwrap_or_else(|| panic!("{line}")).to_owned();
    (child, addr)
}

fn pem_files(dir: &Path, pki: &TestPki) -> Vec<String> {
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.to_string_lossy().into_owned()
    };
    let (ca, cert, key) =
        (write("ca.pem", &pki.ca), write("node.pem", &pki.server_cert), write("node.key", &pki.server_key));
    vec!["--tls-ca".into(), ca, "--tls-cert".into(), cert, "--tls-key".into(), key]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mutual_tls_cluster_from_the_command_line() {
    let dir = temp_dir("tls");
    let pki = TestPki::generate();
    let tls = pem_files(&dir, &pki);
    let tls: Vec<&str> = tls.iter().map(String::as_str).collect();
    let mut args = vec!["--listen", "tls://127.0.0.1:0", "--tls-require-client-cert"];
    args.extend(&tls);
    let (_scheduler, addr) = scheduler(&args, &[]).await;
    assert!(addr.starts_with("tls://"), "{addr}");
    let _worker = courier().arg("worker").arg(&addr).args(&tls).arg("--tls-require-client-cert").spawn().unwrap();
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        courier().args(["submit", &addr, "inc", "41"]).args(&tls).output(),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42");
    // A client that trusts the CA but brings no certificate is refused, with a clear error.
    let out = courier().args(["submit", &addr, "inc", "1", "--tls-ca", tls[1]]).output().await.unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("TLS"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_beat_environment_beat_the_config_file() {
    let dir = temp_dir("config");
    let file = dir.join("courier.toml");
    std::fs::write(&file, "[scheduler]\nlisten = \"tcp://127.0.0.1:0\"\n").unwrap();
    let file = file.to_string_lossy().into_owned();
    let (_a, from_file) = scheduler(&["--config", &file], &[]).await;
    assert!(from_file.starts_with("tcp://"), "{from_file}");
    let (_b, from_env) = scheduler(&["--config", &file], &[("COURIER_SCHEDULER_LISTEN", "unix://")]).await;
    assert!(from_env.starts_with("unix://"), "{from_env}");
    let (_c, from_flag) =
        scheduler(&["--config", &file, "--listen", "zmq://127.0.0.1:0"], &[("COURIER_SCHEDULER_LISTEN", "unix://")])
            .await;
    assert!(from_flag.starts_with("zmq://"), "{from_flag}");
    // A typo in the file is an error, not silently ignored.
    std::fs::write(dir.join("bad.toml"), "[scheduler]\nlisen = \"tcp://127.0.0.1:0\"\n").unwrap();
    let out = courier().args(["scheduler", "--config"]).arg(dir.join("bad.toml")).output().await.unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("lisen"));
    let _ = std::fs::remove_dir_all(dir);
}

/// `courier perf` between two processes, per scheme: bytes arrive intact (not how fast).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn perf_moves_bytes_intact_between_processes_on_every_scheme() {
    let dir = temp_dir("perf");
    let tls = pem_files(&dir, &TestPki::generate());
    for (listen, pattern, payload) in [
        ("tls://127.0.0.1:0", "stream", "1MiB"),
        ("tls://127.0.0.1:0", "echo", "1KiB"),
        ("tcp://127.0.0.1:0", "stream", "1MiB"),
        ("tcp://127.0.0.1:0", "echo", "100"),
        ("unix://", "stream", "1MiB"),
        ("shm://", "stream", "1MiB"),
        ("zmq://127.0.0.1:0", "stream", "1MiB"),
        ("zmq://127.0.0.1:0", "echo", "64KiB"),
    ] {
        let mut server = courier()
            .args(["perf", "server", "--once", "--listen", listen])
            .args(&tls)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await.unwrap().unwrap().unwrap();
        let url = line.strip_prefix("perf server listening at ").unwrap().to_owned();
        let out = courier()
            .args(["perf", "client", &url, "--pattern", pattern, "--payload", payload, "--duration", "0.3", "--json"])
            .args(&tls)
            .output()
            .await
            .unwrap();
        assert!(out.status.success(), "{listen} {pattern}: {}", String::from_utf8_lossy(&out.stderr));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["corrupt"], 0, "{report}");
        assert!(report["messages"].as_u64().unwrap() > 0 && report["bytes"].as_u64().unwrap() > 0, "{report}");
        if pattern == "stream" {
            assert!(report["client_cpu_seconds"].as_f64().unwrap() > 0.0, "{report}");
            assert!(report["server_cpu_seconds"].as_f64().unwrap() > 0.0, "{report}");
        }
        if listen == "shm://" {
            // The sender's arena is the sender's; the receiver's mapping of it is not the
            // receiver's (VmRSS counts it in both).
            assert!(report["client_extra_once_bytes"].as_u64().unwrap() >= 1 << 20, "{report}");
            assert_eq!(report["server_extra_once_bytes"], 0, "{report}");
        }
        assert!(tokio::time::timeout(Duration::from_secs(30), server.wait()).await.unwrap().unwrap().success());
    }
}

/// A short stability run per transport, with every fault injected (proxy cuts and stalls, a
/// frozen worker, a scheduler restart): no failures, hangs, lost or corrupt messages (the
/// command exits non-zero otherwise).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_stability_run_with_faults_is_clean_on_every_transport() {
    let stdout = run_ok(&["stability", "--repeat", "1", "--comms", "3", "--messages", "8", "--timeout", "60"]).await;
    for scheme in ["tcp://", "unix://", "shm://", "zmq://", "tls://", "inproc://"] {
        assert!(stdout.contains(scheme), "{scheme} missing from {stdout}");
    }
}

/// The stability run can fail: a message the echo server swallows is counted as lost, and a
/// frame it answers from another comm as corrupt, and either makes the command exit non-zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planted_faults_are_reported_by_the_stability_run() {
    for (plant, column, text) in [("drop", 6, "never came back"), ("misdeliver", 7, "not one of its messages")] {
        let out = courier()
            .args(["stability", "--repeat", "1", "--comms", "3", "--messages", "8", "--faults", "none"])
            .args(["--urls", "tcp://127.0.0.1:0", "--plant", plant])
            .output()
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "{plant}: the run must fail\n{stdout}");
        let row = stdout.lines().find(|l| l.starts_with("tcp://")).unwrap_or_else(|| panic!("{stdout}"));
        let counts: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(counts[column], "1", "{plant}: one message counted in column {column}: {row}");
        assert!(stdout.contains(text), "{plant}: {stdout}");
    }
}

/// Every built-in function through `courier submit`, arrays included: array results print
/// as a summary, `--out` writes a .npy, and `@FILE.npy` passes one as an argument.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn courier_submit_prints_the_result_of_every_builtin() {
    let dir = temp_dir("submit");
    let (_scheduler, addr) = scheduler(&["--listen", "tcp://127.0.0.1:0"], &[]).await;
    let _worker = courier().args(["worker", &addr, "--nthreads", "2"]).spawn().unwrap();
    let submit = |args: Vec<String>| {
        let addr = addr.clone();
        async move {
            let out =
                tokio::time::timeout(Duration::from_secs(60), courier().arg("submit").arg(&addr).args(&args).output())
                    .await
                    .expect("submit finishes")
                    .unwrap();
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).trim().to_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        }
    };
    let ok = |r: (bool, String, String)| {
        assert!(r.0, "{}", r.2);
        r.1
    };
    let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    assert_eq!(ok(submit(s(&["inc", "41"])).await), "42");
    assert_eq!(ok(submit(s(&["add", "1", "2", "39"])).await), "42");
    assert_eq!(ok(submit(s(&["sleep", "0.01"])).await), "0.01");
    let big = ok(submit(s(&["random_array", "[1000,1000]", "7"])).await);
    assert!(big.starts_with("array f8 shape [1000, 1000] (1000000 elements, 8000000 bytes): [0."), "{big}");
    assert!(big.contains("checksum fnv1a64:"), "{big}");
    let a = ok(submit(vec!["random_array".into(), "[3,4]".into(), "1".into(), "--out".into(), path("a.npy")]).await);
    assert!(a.contains("wrote") && std::fs::metadata(path("a.npy")).unwrap().len() == 128 + 96, "{a}");
    ok(submit(vec!["random_array".into(), "[4,2]".into(), "2".into(), "--out".into(), path("b.npy")]).await);
    let sum: f64 = ok(submit(vec!["array_sum".into(), format!("@{}", path("a.npy"))]).await).parse().unwrap();
    let mean: f64 = ok(submit(vec!["array_mean".into(), format!("@{}", path("a.npy"))]).await).parse().unwrap();
    assert!((sum / 12.0 - mean).abs() < 1e-12 && sum > 0.0 && sum < 12.0);
    let doubled =
        ok(submit(vec!["array_add".into(), format!("@{}", path("a.npy")), format!("@{}", path("a.npy"))]).await);
    assert!(doubled.starts_with("array f8 shape [3, 4]"), "{doubled}");
    let product = ok(submit(vec!["matmul".into(), format!("@{}", path("a.npy")), format!("@{}", path("b.npy"))]).await);
    assert!(product.starts_with("array f8 shape [3, 2]"), "{product}");
    let slow = ok(submit(s(&["slow_random_array", "[2,2]", "3", "0.01"])).await);
    assert!(slow.starts_with("array f8 shape [2, 2]"), "{slow}");
    let smooth = ok(submit(s(&["smooth_array", "[2,3]", "0"])).await);
    assert!(smooth.starts_with("array f8 shape [2, 3] (6 elements, 48 bytes): [0.0, 0.0004999"), "{smooth}");
    let (success, _, stderr) = submit(s(&["fail", "disk on fire"])).await;
    assert!(!success && stderr.contains("disk on fire"), "{stderr}");
    // numpy reads what --out wrote, when it is installed.
    if let Ok(python) = std::env::var("COURIER_PYTHON") {
        let check = format!(
            "import numpy; a = numpy.load({:?}); assert a.shape == (3, 4) and a.dtype == numpy.float64; print(a.sum())",
            path("a.npy")
        );
        let out = Command::new(python).args(["-c", &check]).output().await.unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let numpy_sum: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        assert!((numpy_sum - sum).abs() < 1e-12, "numpy {numpy_sum} vs courier {sum}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// A worker whose scheduler dies exits non-zero (its main task failed), as does a scheduler
/// that cannot listen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_exit_non_zero_when_their_main_task_fails() {
    let (mut sched, addr) = scheduler(&["--listen", "tcp://127.0.0.1:0"], &[]).await;
    let mut worker = courier().args(["worker", &addr]).stderr(Stdio::piped()).spawn().unwrap();
    let mut lines = BufReader::new(worker.stderr.take().unwrap()).lines();
    while let Some(line) = lines.next_line().await.unwrap() {
        if line.contains("worker serving data at") {
            break;
        }
    }
    sched.kill().await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), worker.wait()).await.unwrap().unwrap();
    assert!(!status.success(), "lost its scheduler: {status}");
    let (_busy, busy_addr) = scheduler(&["--listen", "tcp://127.0.0.1:0"], &[]).await;
    let out = courier().args(["scheduler", "--listen", &busy_addr]).output().await.unwrap();
    assert!(!out.status.success(), "the address is taken");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("address in use"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `bench-tasks` with fewer as_completed tasks than it keeps in flight completes exactly the
/// tasks asked for (it used to start 200 and fail "200 of 50 tasks completed").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_tasks_runs_fewer_as_completed_tasks_than_its_window() {
    let stdout =
        run_ok(&["bench-tasks", "--schemes", "", "--tasks", "100", "--as-completed-tasks", "50", "--repeat", "1"])
            .await;
    let row = stdout.lines().find(|l| l.contains("as_completed")).unwrap_or_else(|| panic!("{stdout}"));
    assert!(row.split_whitespace().any(|w| w == "50"), "{row}");
}

/// `bench-tasks --scheduler URL` measures a running cluster, and it alone: one row per
/// measurement, named after the scheduler, with every task completed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_tasks_measures_a_running_cluster() {
    let (_scheduler, addr) = scheduler(&["--listen", "tcp://127.0.0.1:0"], &[]).await;
    let _worker = courier().args(["worker", &addr]).stderr(Stdio::null()).spawn().unwrap();
    let stdout =
        run_ok(&["bench-tasks", "--scheduler", &addr, "--tasks", "200", "--as-completed-tasks", "50", "--repeat", "1"])
            .await;
    let rows: Vec<&str> = stdout.lines().filter(|l| l.contains("map + gather") || l.contains("as_completed")).collect();
    assert_eq!(rows.len(), 2, "{stdout}");
    assert!(rows.iter().all(|r| r.contains(&addr)), "{stdout}");
    assert!(!stdout.contains("LocalCluster"), "no cluster of its own: {stdout}");
}
