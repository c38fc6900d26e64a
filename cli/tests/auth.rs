//! Authentication through the binaries: a cluster started with a token refuses strangers at
//! the scheduler and at workers' data ports, serves peers that present it, lets a client token
//! submit but never join as a worker, and never prints a secret.

mod support;

use std::process::Stdio;
use std::time::Duration;

use courier::courier_core::{CommConfig, Credential, ErrorKind};
use courier::{Registry, RegistryExt};
use support::courier;
use tokio::io::{AsyncBufReadExt, BufReader};

const CLUSTER: &str = "cluster-secret-4f1b9c";
const CLIENT: &str = "client-secret-77ad02";

async fn first_line_with(child: &mut tokio::process::Child, prefix: &str, stdout: bool) -> String {
    let mut lines: Box<dyn tokio::io::AsyncBufRead + Unpin + Send> = if stdout {
        Box::new(BufReader::new(child.stdout.take().unwrap()))
    } else {
        Box::new(BufReader::new(child.stderr.take().unwrap()))
    };
    let mut line = String::new();
    loop {
        line.clear();
        let n = tokio::time::timeout(Duration::from_secs(60), lines.read_line(&mut line)).await.unwrap().unwrap();
        assert!(n > 0, "the process ended before printing {prefix:?}");
        if let Some(rest) = line.trim().strip_prefix(prefix) {
            let rest = rest.to_owned();
            // Keep draining so the child never blocks on a full pipe.
            tokio::spawn(async move {
                let mut sink = String::new();
                while lines.read_line(&mut sink).await.is_ok_and(|n| n > 0) {
                    sink.clear();
                }
            });
            return rest;
        }
    }
}

async fn submit(addr: &str, extra: &[&str]) -> (bool, String, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        courier().args(["submit", addr, "inc", "41"]).args(extra).output(),
    )
    .await
    .expect("submit finishes")
    .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_cluster_refuses_strangers_and_client_tokens_cannot_join_as_workers() {
    let dir = std::env::temp_dir().join(format!("courier-auth-{}-{}", std::process::id(), fastrand::u64(..)));
    std::fs::create_dir_all(&dir).unwrap();
    let token_file = dir.join("token");
    std::fs::write(&token_file, format!("{CLUSTER}\n")).unwrap();
    let log = dir.join("scheduler.log");

    let mut sched = courier()
        .args(["scheduler", "--listen", "tcp://127.0.0.1:0", "--auth-token-file"])
        .arg(&token_file)
        .env("COURIER_CLIENT_TOKEN", CLIENT)
        .env("COURIER_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let addr = first_line_with(&mut sched, "scheduler listening at ", true).await;
    let mut worker = courier()
        .args(["worker", &addr, "--auth-token", CLUSTER])
        .env("COURIER_CLIENT_TOKEN", CLIENT)
        .env("COURIER_LOG", "debug")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let worker_addr = first_line_with(&mut worker, "worker serving data at ", false).await;

    // Strangers: no token, or a wrong one, are refused with a clear error.
    let (ok, _, err) = submit(&addr, &[]).await;
    assert!(!ok && err.contains("requires a credential"), "{err}");
    let (ok, _, err) = submit(&addr, &["--auth-token", "guess"]).await;
    assert!(!ok && err.contains("refused this side's credential"), "{err}");
    // The same at the worker's data port: nobody reads results without a token.
    let e = Registry::with_default_transports().connect(&worker_addr).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unauthorized, "{e}");

    // Peers with a token are served: the client token, and the cluster token.
    let with_token = submit(&addr, &["--client-token", CLIENT]).await;
    assert_eq!(with_token.1, "42", "{}", with_token.2);
    let (ok, out, err) = submit(&addr, &[]).await;
    assert!(!ok, "still refused without a token: {out} {err}");
    let from_file = submit(&addr, &["--auth-token-file", token_file.to_str().unwrap()]).await;
    assert_eq!(from_file.1, "42", "{}", from_file.2);
    let mut with_client = Registry::with_default_transports();
    with_client.set_config(CommConfig { credential: Some(Credential::new(CLIENT).unwrap()), ..CommConfig::default() });
    with_client.connect(&worker_addr).await.expect("a client token may fetch from workers");

    // A worker that does not know the client token refuses clients that present it: fetching
    // the result fails at once with the refusal (not after retries).
    let mut strict = courier()
        .args(["worker", &addr, "--auth-token", CLUSTER, "--nthreads", "1"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let strict_addr = first_line_with(&mut strict, "worker serving data at ", false).await;
    let e = with_client.connect(&strict_addr).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unauthorized, "{e}");
    strict.kill().await.unwrap();
    let _ = strict.wait().await;

    // A client token cannot register a worker: the scheduler drops it and the worker exits.
    let mut fake = courier().args(["worker", &addr, "--auth-token", CLIENT]).stderr(Stdio::piped()).spawn().unwrap();
    let status = tokio::time::timeout(Duration::from_secs(60), fake.wait()).await.unwrap().unwrap();
    assert!(!status.success(), "a worker with a client token must not join");
    // The real worker still serves.
    assert_eq!(submit(&addr, &["--client-token", CLIENT]).await.1, "42");

    // Secrets never appear in logs or help.
    sched.kill().await.unwrap();
    let _ = sched.wait().await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("without the worker role"), "the refusal is logged:\n{text}");
    assert!(!text.contains(CLUSTER) && !text.contains(CLIENT) && !text.contains("guess"), "a secret leaked:\n{text}");
    let help = courier().args(["scheduler", "--help"]).env("COURIER_AUTH_TOKEN", CLUSTER).output().await.unwrap();
    assert!(!String::from_utf8_lossy(&help.stdout).contains(CLUSTER));
    let _ = std::fs::remove_dir_all(dir);
}
