//! The dashboard in a real browser: `courier scheduler --dashboard`, two `courier worker`
//! processes over tcp://, the page open in headless Chromium (Debian's, driven by
//! playwright-core from scripts/dashboard/page.mjs). The page must go live with both workers,
//! then show every task group at 100 % and task-stream bars after a graph ran, without a
//! script error or a request to anywhere else; and `/metrics` must count the same work.
//!
//! Needs node, /usr/bin/chromium (or $CHROMIUM) and `npm ci --prefix scripts/dashboard`.
//! Without them the test says so and passes, unless COURIER_BROWSER_TEST=require (as in
//! .ci/run, which installs them), when it fails.

mod support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use courier::courier_runtime::{Client, TaskFuture, arg};
use courier::{Registry, RegistryExt};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{ChildStdout, Command};

const LIMIT: Duration = Duration::from_secs(180);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

/// Why the browser test cannot run here, if it cannot.
fn missing() -> Option<String> {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !Path::new(&chromium).exists() {
        return Some(format!("no chromium at {chromium} (apt-get install chromium)"));
    }
    if std::process::Command::new("node").arg("--version").output().is_err() {
        return Some("no node".into());
    }
    if !repo().join("scripts/dashboard/node_modules/playwright-core").exists() {
        return Some("no playwright-core (npm ci --prefix scripts/dashboard)".into());
    }
    None
}

async fn line_with(lines: &mut Lines<BufReader<ChildStdout>>, prefix: &str) -> String {
    tokio::time::timeout(LIMIT, async {
        while let Some(l) = lines.next_line().await.unwrap() {
            if l.starts_with("FAIL") {
                panic!("{l}");
            }
            if let Some(rest) = l.strip_prefix(prefix) {
                return rest.trim().to_owned();
            }
        }
        panic!("the process ended before printing {prefix:?}")
    })
    .await
    .unwrap_or_else(|_| panic!("no {prefix:?} within {LIMIT:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_workers_progress_and_the_task_stream_in_chromium() {
    if let Some(why) = missing() {
        assert_ne!(std::env::var("COURIER_BROWSER_TEST").as_deref(), Ok("require"), "browser test required: {why}");
        eprintln!("SKIPPED: the dashboard browser test needs {why}");
        return;
    }
    let mut scheduler = support::courier()
        .args(["scheduler", "--listen", "tcp://127.0.0.1:0", "--dashboard", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(scheduler.stdout.take().unwrap()).lines();
    let address = line_with(&mut out, "scheduler listening at ").await;
    let dashboard = line_with(&mut out, "dashboard at ").await;
    let url = dashboard.split_whitespace().next().unwrap().to_owned();
    let mut workers = Vec::new();
    for i in 0..2 {
        let w = support::courier().args(["worker", &address, "--name", &format!("worker-{i}")]).spawn().unwrap();
        workers.push(w);
    }
    let shot = std::env::temp_dir().join(format!("courier-dashboard-{}.png", std::process::id()));
    let mut page = Command::new("node")
        .arg(repo().join("scripts/dashboard/page.mjs"))
        .args([&url, shot.to_str().unwrap(), "2"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut seen = BufReader::new(page.stdout.take().unwrap()).lines();
    line_with(&mut seen, "READY").await;

    // A graph: 2,000 increments, a tree sum of arrays made on both workers, short sleeps.
    let c = Client::connect(Registry::with_default_transports(), &address).await.unwrap();
    let incs = c.map::<i64>("inc", (0..2000i64).map(|i| vec![arg(&i)])).await.unwrap();
    let mut level: Vec<TaskFuture<courier::courier_core::WireArray>> =
        c.map("random_array", (0..16u64).map(|s| vec![arg(&vec![100_000usize]), arg(&s)])).await.unwrap();
    while level.len() > 1 {
        let mut next = Vec::new();
        for pair in level.chunks(2) {
            next.push(c.submit("array_add", pair.iter().map(|f| f.arg()).collect()).await.unwrap());
        }
        level = next;
    }
    let sleeps = c.map::<f64>("sleep", (0..20).map(|_| vec![arg(&0.02f64)])).await.unwrap();
    let got = tokio::time::timeout(LIMIT, c.gather(&incs)).await.unwrap().unwrap();
    assert_eq!(got, (1..=2000).collect::<Vec<i64>>());
    tokio::time::timeout(LIMIT, level[0].result()).await.unwrap().unwrap();
    tokio::time::timeout(LIMIT, c.gather(&sleeps)).await.unwrap().unwrap();

    let mut stdin = page.stdin.take().unwrap();
    stdin.write_all(b"CHECK\n").await.unwrap();
    let report: serde_json::Value = serde_json::from_str(&line_with(&mut seen, "OK ").await).unwrap();
    println!("the page showed {report}");
    let mut names: Vec<&str> = report["workers"].as_array().unwrap().iter().map(|w| w.as_str().unwrap()).collect();
    names.sort_unstable(); // in the order they joined, which is the processes' race
    assert_eq!(names, ["worker-0", "worker-1"]);
    let groups = report["groups"].as_array().unwrap();
    for g in groups {
        assert_eq!(g[1], "100", "every group done: {g}");
    }
    let done = |f: &str| groups.iter().find(|g| g[0] == f).map(|g| g[2].as_u64().unwrap());
    assert_eq!(done("inc"), Some(2000));
    assert_eq!(done("random_array"), Some(16));
    assert_eq!(done("array_add"), Some(15));
    assert_eq!(done("sleep"), Some(20));
    assert!(report["bars"].as_u64().unwrap() > 0, "task-stream bars drawn");
    assert_eq!(report["finished"], 2000 + 16 + 15 + 20);
    let status = tokio::time::timeout(LIMIT, page.wait()).await.unwrap().unwrap();
    assert!(status.success());
    let png = std::fs::read(&shot).unwrap();
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "a screenshot was saved");
    let _ = std::fs::remove_file(&shot);

    // /metrics counts the same work.
    let host = url.trim_start_matches("http://").trim_end_matches('/');
    let mut s = tokio::net::TcpStream::connect(host).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut text = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut s, &mut text).await.unwrap();
    assert!(text.contains("courier_tasks_finished_total{function=\"inc\"} 2000"), "{text}");
    assert!(text.contains("courier_workers{status=\"running\"} 2"), "{text}");
    assert!(text.contains("scheme=\"tcp\""), "{text}");
    drop(c);
    let _ = scheduler.kill().await;
}
