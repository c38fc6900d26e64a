//! The scheduler's dashboard over HTTP: `/metrics` counts the work done, `/api/…` shows the
//! same state as JSON, `/api/updates` streams aggregated updates, and hostile HTTP clients
//! (huge headers, slowloris, floods of connections, unknown paths) neither stall the
//! scheduler nor get past the server's bounds.

use std::net::SocketAddr;
use std::time::Duration;

use courier_core::Registry;
use courier_runtime::{DashboardConfig, Functions, LocalCluster, ServerConfig, TaskFuture, arg};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const LIMIT: Duration = Duration::from_secs(60);

fn registry() -> Registry {
    Registry::new().with(std::sync::Arc::new(courier_inproc::InprocTransport::new()))
}

async fn cluster(dashboard: DashboardConfig) -> (LocalCluster, SocketAddr) {
    let config = ServerConfig { dashboard: Some(dashboard), ..ServerConfig::default() };
    let cluster =
        LocalCluster::in_process_with(registry(), "inproc://", 2, 1, Functions::with_builtins(), config).await.unwrap();
    let address = cluster.scheduler().unwrap().dashboard_address().expect("the dashboard listens");
    (cluster, address)
}

/// One HTTP/1.1 request, `Connection: close`; the status and body.
async fn request(address: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(address).await.unwrap();
    s.write_all(format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(LIMIT, s.read_to_end(&mut out)).await.expect("an answer").unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

async fn get_json(address: SocketAddr, path: &str) -> serde_json::Value {
    let (status, body) = request(address, "GET", path).await;
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
}

/// A client of `/api/updates`: reads the chunked HTTP body and yields each event's JSON.
struct Updates {
    s: TcpStream,
    raw: Vec<u8>,
    body: Vec<u8>,
}

impl Updates {
    async fn open(address: SocketAddr) -> Self {
        let mut s = TcpStream::connect(address).await.unwrap();
        s.write_all(b"GET /api/updates HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n").await.unwrap();
        let mut u = Updates { s, raw: Vec::new(), body: Vec::new() };
        while !u.raw.windows(4).any(|w| w == b"\r\n\r\n") {
            u.read().await;
        }
        let end = u.raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let head = String::from_utf8_lossy(&u.raw[..end]).to_lowercase();
        assert!(head.starts_with("http/1.1 200") && head.contains("text/event-stream"), "{head}");
        assert!(head.contains("transfer-encoding: chunked"), "{head}");
        u.raw.drain(..end);
        u
    }

    async fn read(&mut self) {
        let mut buf = [0u8; 65536];
        let n = tokio::time::timeout(LIMIT, self.s.read(&mut buf)).await.expect("an update").unwrap();
        assert!(n > 0, "the event stream stays open");
        self.raw.extend_from_slice(&buf[..n]);
    }

    /// The next event's data, as JSON.
    async fn next(&mut self) -> serde_json::Value {
        loop {
            // Move whole chunks from the raw bytes to the body.
            while let Some(eol) = self.raw.windows(2).position(|w| w == b"\r\n") {
                let size = usize::from_str_radix(std::str::from_utf8(&self.raw[..eol]).unwrap().trim(), 16).unwrap();
                if self.raw.len() < eol + 2 + size + 2 {
                    break;
                }
                self.body.extend_from_slice(&self.raw[eol + 2..eol + 2 + size]);
                self.raw.drain(..eol + 2 + size + 2);
            }
            if let Some(end) = self.body.windows(2).position(|w| w == b"\n\n") {
                let event: Vec<u8> = self.body.drain(..end + 2).collect();
                let text = String::from_utf8(event).unwrap();
                let data: String = text.lines().filter_map(|l| l.strip_prefix("data:")).map(str::trim).collect();
                if !data.is_empty() {
                    return serde_json::from_str(&data).unwrap();
                }
                continue; // a keep-alive comment
            }
            self.read().await;
        }
    }
}

/// The value of the metric line `name{labels}` (labels exactly as printed, `""` for none).
fn metric(text: &str, name: &str, labels: &str) -> Option<f64> {
    let prefix = if labels.is_empty() { format!("{name} ") } else { format!("{name}{{{labels}}} ") };
    text.lines().find_map(|l| l.strip_prefix(&prefix)).map(|v| v.trim().parse().unwrap())
}

fn sum_metric(text: &str, name: &str, label_part: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(label_part))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

/// Acceptance: `/metrics` counts the work done — runs finished and failed per function, the
/// submissions, the run-time histogram, the workers, and the bytes moved between workers in
/// both directions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_the_work_done() {
    let (cluster, address) = cluster(DashboardConfig::new("127.0.0.1:0")).await;
    let c = cluster.client().await.unwrap();
    let incs = c.map::<i64>("inc", (0..100i64).map(|i| vec![arg(&i)])).await.unwrap();
    let got = tokio::time::timeout(LIMIT, c.gather(&incs)).await.unwrap().unwrap();
    assert_eq!(got, (1..=100).collect::<Vec<i64>>());
    // Arrays on both workers, summed pairwise: some inputs must move between workers.
    let leaves = c
        .map::<courier_core::WireArray>("random_array", (0..8u64).map(|s| vec![arg(&vec![1000usize]), arg(&s)]))
        .await
        .unwrap();
    let mut level: Vec<TaskFuture<courier_core::WireArray>> = leaves;
    while level.len() > 1 {
        let mut next = Vec::new();
        for pair in level.chunks(2) {
            next.push(c.submit("array_add", pair.iter().map(|f| f.arg()).collect()).await.unwrap());
        }
        level = next;
    }
    tokio::time::timeout(LIMIT, level[0].result()).await.unwrap().unwrap();
    // Scattered round robin, one value on each worker: their sum fetches one of them.
    let pair = c.scatter(&[5i64, 7i64]).await.unwrap();
    let sum = c.submit::<i64>("add", pair.iter().map(|f| f.arg()).collect()).await.unwrap();
    assert_eq!(tokio::time::timeout(LIMIT, sum.result()).await.unwrap().unwrap(), 12);
    let fails = c.map::<()>("fail", (0..5).map(|i| vec![arg(&format!("boom {i}"))])).await.unwrap();
    for f in &fails {
        assert!(tokio::time::timeout(LIMIT, f.result()).await.unwrap().is_err());
    }
    // Workers report transfers with their heartbeats: wait for the update that shows them.
    let mut updates = Updates::open(address).await;
    loop {
        let u = updates.next().await;
        let total = |dir: &str| -> u64 {
            u["workers"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|w| w["transfers"][dir].as_array().unwrap().clone())
                .map(|t| t["bytes"].as_u64().unwrap())
                .sum()
        };
        if total("fetched") > 0 && total("served") >= total("fetched") {
            break;
        }
    }
    let (status, text) = request(address, "GET", "/metrics").await;
    assert_eq!(status, 200);
    println!("{text}");
    assert_eq!(metric(&text, "courier_tasks_finished_total", "function=\"inc\""), Some(100.0));
    assert_eq!(metric(&text, "courier_tasks_finished_total", "function=\"random_array\""), Some(8.0));
    assert_eq!(metric(&text, "courier_tasks_finished_total", "function=\"array_add\""), Some(7.0));
    assert_eq!(metric(&text, "courier_tasks_finished_total", "function=\"add\""), Some(1.0));
    assert_eq!(metric(&text, "courier_tasks_erred_total", "function=\"fail\""), Some(5.0));
    assert_eq!(metric(&text, "courier_tasks_erred_total", "function=\"inc\""), Some(0.0));
    let finished = sum_metric(&text, "courier_tasks_finished_total", "function=");
    assert_eq!(metric(&text, "courier_task_duration_seconds_count", ""), Some(finished));
    let submitted = metric(&text, "courier_tasks_submitted_total", "").unwrap();
    assert_eq!(submitted, finished + 5.0, "every submitted task finished or failed once");
    assert_eq!(metric(&text, "courier_workers", "status=\"running\""), Some(2.0));
    assert_eq!(metric(&text, "courier_workers_joined_total", ""), Some(2.0));
    assert_eq!(metric(&text, "courier_adaptive_target_workers", ""), Some(0.0), "no work left calls for no worker");
    assert_eq!(metric(&text, "courier_workers_lost_total", ""), Some(0.0));
    assert_eq!(sum_metric(&text, "courier_tasks", "state=\"processing\""), 0.0, "nothing is left running");
    let fetched = sum_metric(&text, "courier_transfer_bytes_total", "direction=\"in\"");
    let served = sum_metric(&text, "courier_transfer_bytes_total", "direction=\"out\"");
    assert!(fetched > 0.0, "workers fetched inputs from each other");
    assert!(served >= fetched, "every byte fetched was served (clients fetch too): {served} < {fetched}");
    assert!(text.contains("scheme=\"inproc\""), "transfers are labelled by transport");
    assert!(text.trim_end().ends_with("# EOF"), "a complete OpenMetrics exposition");
    drop(c);
    cluster.shutdown().await;
}

/// `/api/…` shows the cluster as JSON, and `/api/stream?since=` returns only newer runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_shows_workers_groups_and_the_task_stream() {
    let (cluster, address) = cluster(DashboardConfig::new("127.0.0.1:0")).await;
    let c = cluster.client().await.unwrap();
    let incs = c.map::<i64>("inc", (0..50i64).map(|i| vec![arg(&i)])).await.unwrap();
    tokio::time::timeout(LIMIT, c.gather(&incs)).await.unwrap().unwrap();
    let summary = get_json(address, "/api/summary").await;
    assert_eq!(summary["workers"], 2);
    assert_eq!(summary["threads"], 2);
    assert_eq!(summary["counters"]["finished"], 50);
    assert_eq!(summary["scheme"], "inproc");
    let workers = get_json(address, "/api/workers").await;
    let mut names: Vec<&str> = workers.as_array().unwrap().iter().map(|w| w["name"].as_str().unwrap()).collect();
    names.sort_unstable();
    assert_eq!(names, ["worker-0", "worker-1"]);
    let ran: u64 = workers.as_array().unwrap().iter().map(|w| w["ran"].as_u64().unwrap()).sum();
    assert_eq!(ran, 50);
    let groups = get_json(address, "/api/groups").await;
    let inc = groups.as_array().unwrap().iter().find(|g| g["function"] == "inc").expect("an inc group");
    assert_eq!(
        (inc["finished"].as_u64(), inc["processing"].as_u64(), inc["waiting"].as_u64()),
        (Some(50), Some(0), Some(0))
    );
    let stream = get_json(address, "/api/stream").await;
    let stream = stream.as_array().unwrap();
    assert_eq!(stream.len(), 50);
    assert!(stream.windows(2).all(|w| w[0]["seq"].as_u64() < w[1]["seq"].as_u64()));
    assert!(stream.iter().all(|e| e["start"].as_f64() <= e["stop"].as_f64() && e["function"] == "inc"));
    let tenth = stream[9]["seq"].as_u64().unwrap();
    let newer = get_json(address, &format!("/api/stream?since={tenth}")).await;
    assert_eq!(newer.as_array().unwrap().len(), 40);
    // The live page's stream: the first server-sent event carries an aggregated update.
    let update = Updates::open(address).await.next().await;
    assert_eq!(update["summary"]["workers"], 2);
    assert_eq!(update["stream"].as_array().unwrap().len(), 50);
    let (status, page) = request(address, "GET", "/").await;
    assert_eq!(status, 200);
    assert!(page.contains("<canvas id=\"stream\"") && page.contains("api/updates"));
    assert!(!page.contains("http://") && !page.contains("https://"), "the page loads nothing from elsewhere");
    drop(c);
    cluster.shutdown().await;
}

/// Unknown paths are 404, other methods 405; nothing else is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_paths_and_methods_are_refused() {
    let (cluster, address) = cluster(DashboardConfig::new("127.0.0.1:0")).await;
    assert_eq!(request(address, "GET", "/etc/passwd").await.0, 404);
    assert_eq!(request(address, "GET", "/api/../metrics/x").await.0, 404);
    assert_eq!(request(address, "POST", "/metrics").await.0, 405);
    assert_eq!(request(address, "DELETE", "/api/workers").await.0, 405);
    let mut s = TcpStream::connect(address).await.unwrap();
    s.write_all(b"\x00\x01garbage\r\n\r\n").await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(LIMIT, s.read_to_end(&mut out)).await.expect("closed").unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(out.is_empty() || text.starts_with("HTTP/1.1 400"), "{text}");
    assert_eq!(request(address, "GET", "/api/summary").await.0, 200, "and it serves on");
    cluster.shutdown().await;
}

/// Acceptance: huge headers are refused; slowloris clients are cut off at the header timeout;
/// connections beyond the cap are closed at once (memory stays bounded by cap × buffer); and
/// meanwhile the scheduler runs tasks as usual, then the dashboard serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_http_clients_do_not_stall_the_scheduler_or_grow_memory() {
    const CAP: usize = 8;
    let config = DashboardConfig {
        max_connections: CAP,
        header_timeout: Duration::from_millis(500),
        ..DashboardConfig::new("127.0.0.1:0")
    };
    let (cluster, address) = cluster(config).await;
    let c = cluster.client().await.unwrap();

    // A 1 MiB header: refused (431) or cut off, never buffered whole.
    let mut s = TcpStream::connect(address).await.unwrap();
    let huge = format!("GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(1 << 20));
    let _ = s.write_all(huge.as_bytes()).await; // the server may close while we write
    let mut out = Vec::new();
    let _ = tokio::time::timeout(LIMIT, s.read_to_end(&mut out)).await.expect("the server answers or closes");
    let text = String::from_utf8_lossy(&out);
    assert!(out.is_empty() || text.starts_with("HTTP/1.1 431"), "{text}");

    // Slowloris: CAP connections that never finish their headers, and more beyond the cap.
    let mut slow = Vec::new();
    for _ in 0..CAP {
        let mut s = TcpStream::connect(address).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ").await.unwrap();
        slow.push(s);
    }
    // The scheduler is not stalled: a graph runs to the right answer while they hang.
    let incs = c.map::<i64>("inc", (0..500i64).map(|i| vec![arg(&i)])).await.unwrap();
    let got = tokio::time::timeout(LIMIT, c.gather(&incs)).await.unwrap().unwrap();
    assert_eq!(got, (1..=500).collect::<Vec<i64>>());
    // Beyond the cap, a connection is closed before it is read from. (The slow ones may
    // already have been cut off; then this one is served, which is fine too.)
    let mut extra = TcpStream::connect(address).await.unwrap();
    let _ = extra.write_all(b"GET /api/summary HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(LIMIT, extra.read_to_end(&mut out)).await.expect("closed or answered");
    // Each slow client is disconnected at the header timeout (its read sees the end).
    for mut s in slow {
        let mut buf = Vec::new();
        let r = tokio::time::timeout(LIMIT, s.read_to_end(&mut buf)).await.expect("slowloris is cut off");
        let text = String::from_utf8_lossy(&buf);
        assert!(r.is_err() || buf.is_empty() || text.starts_with("HTTP/1.1 408"), "{text}");
    }
    // Then the dashboard serves again.
    let summary = get_json(address, "/api/summary").await;
    assert_eq!(summary["counters"]["finished"], 500);
    drop(c);
    cluster.shutdown().await;
}

/// Connections beyond the cap are closed before anything is read from them, so a flood of
/// connections holds at most `max_connections` buffers; the scheduler serves on meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_are_closed_at_once() {
    const CAP: usize = 4;
    let config = DashboardConfig {
        max_connections: CAP,
        header_timeout: Duration::from_secs(3600),
        ..DashboardConfig::new("127.0.0.1:0")
    };
    let (cluster, address) = cluster(config).await;
    let c = cluster.client().await.unwrap();
    // The listener accepts in order: these take every slot before the next is accepted.
    let mut held = Vec::new();
    for _ in 0..CAP {
        let mut s = TcpStream::connect(address).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ").await.unwrap();
        held.push(s);
    }
    for _ in 0..20 {
        let mut s = TcpStream::connect(address).await.unwrap();
        let _ = s.write_all(b"GET /api/summary HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
        let mut out = Vec::new();
        let r = tokio::time::timeout(LIMIT, s.read_to_end(&mut out)).await.expect("closed at once");
        assert!(r.is_err() || out.is_empty(), "served beyond the cap: {}", String::from_utf8_lossy(&out));
    }
    let incs = c.map::<i64>("inc", (0..100i64).map(|i| vec![arg(&i)])).await.unwrap();
    assert_eq!(tokio::time::timeout(LIMIT, c.gather(&incs)).await.unwrap().unwrap(), (1..=100).collect::<Vec<i64>>());
    drop(held);
    drop(c);
    cluster.shutdown().await;
}
