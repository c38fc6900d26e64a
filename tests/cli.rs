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
    c.kill_on_drop(true).env_remove("COURIER_SCHEDULER_LISTEN").env_remove("COURIER_CONFIG");
    c
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
        assert!(tokio::time::timeout(Duration::from_secs(30), server.wait()).await.unwrap().unwrap().success());
    }
}

/// A short stability run per transport: no failures, hangs or lost messages (the command
/// exits non-zero otherwise).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_stability_run_is_clean_on_every_transport() {
    let out = courier()
        .args(["stability", "--repeat", "2", "--comms", "3", "--messages", "6", "--timeout", "60"])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    for scheme in ["tcp://", "unix://", "zmq://", "tls://", "inproc://"] {
        assert!(stdout.contains(scheme), "{scheme} missing from {stdout}");
    }
}
