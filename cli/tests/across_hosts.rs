//! The runtime across network hosts: a scheduler and three workers, each in its own network
//! namespace on a 1 Gbit/s link (`scripts/netns.sh`), the client on the machine itself, over
//! tcp://, tls:// and zmq://. Scenarios: map and gather, persist then compute, a tree reduction
//! whose workers fetch from each other while one of them is SIGKILLed, retirement, and a host
//! whose link is pulled mid-graph. Needs root; elsewhere each test says why and skips.

mod support;

use std::sync::Arc;
use std::time::Duration;

use courier::courier_core::WireArray;
use courier::courier_runtime::protocol::TransferCount;
use courier::courier_runtime::{Client, Graph, Status, TaskFuture, arg};
use courier::{Registry, RegistryExt};
use courier_tls::test_certs::TestPki;
use support::courier_bin;
use support::netns::Hosts;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Child;

const LEAVES: u64 = 64;
const SIDE: usize = 256; // 512 KiB leaves: transfers take ~4 ms each on the 1 Gbit/s links

async fn tree(c: &Client, delay: f64) -> (Vec<TaskFuture<WireArray>>, TaskFuture<f64>) {
    support::tree(c, LEAVES, SIDE, delay).await
}

async fn reference() -> f64 {
    support::tree_reference(LEAVES, SIDE).await
}

/// A scheduler on host 0 and workers on hosts 1..=3, all over `scheme`.
struct Cluster {
    hosts: Hosts,
    scheduler: Child,
    workers: Vec<Child>,
    address: String,
    registry: Registry,
}

impl Cluster {
    async fn start(hosts: Hosts, scheme: &str, node_args: &[String], registry: Registry) -> Cluster {
        let address = format!("{scheme}://{}:8786", hosts.addr(0));
        let mut scheduler = hosts
            .command(0, courier_bin())
            .args(["scheduler", "--listen", &address, "--worker-timeout", "3"])
            .args(node_args)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(scheduler.stdout.take().unwrap()).lines();
        let listening = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(a) = line.strip_prefix("scheduler listening at ") {
                    return a.trim().to_owned();
                }
            }
            panic!("the scheduler exited before listening")
        })
        .await
        .expect("the scheduler starts");
        assert_eq!(listening, address);
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let mut workers = Vec::new();
        for i in 1..=3 {
            let listen = format!("{scheme}://{}:0", hosts.addr(i));
            let worker = hosts
                .command(i, courier_bin())
                .args(["worker", &address, "--listen", &listen, "--name", &format!("host-{i}")])
                .args(node_args)
                .spawn()
                .unwrap();
            workers.push(worker);
        }
        let cluster = Cluster { hosts, scheduler, workers, address, registry };
        let c = cluster.client().await;
        tokio::time::timeout(Duration::from_secs(30), c.wait_for_workers(|w| w.len() == 3))
            .await
            .expect("three workers join")
            .unwrap();
        for w in c.workers() {
            assert!(w.starts_with(&format!("{scheme}://{}", cluster.hosts.addr(0).rsplit_once('.').unwrap().0)), "{w}");
        }
        c.close().await;
        cluster
    }

    async fn client(&self) -> Client {
        Client::connect(self.registry.clone(), &self.address).await.unwrap()
    }

    /// The worker of `host` (1..=3) as the scheduler knows it.
    fn worker_on(&self, c: &Client, host: usize) -> String {
        let ip = self.hosts.addr(host);
        c.workers().into_iter().find(|w| w.contains(&format!("{ip}:"))).unwrap_or_else(|| panic!("no worker on {ip}"))
    }
}

fn count(stats: &[TransferCount], scheme: &str) -> u64 {
    stats.iter().filter(|t| t.scheme == scheme).map(|t| t.values).sum()
}

async fn map_gather(c: &Client) {
    let futures = c.map::<i64>("inc", (0..500i64).map(|i| vec![arg(&i)])).await.unwrap();
    assert_eq!(c.gather(&futures).await.unwrap(), (1..=500).collect::<Vec<_>>());
}

async fn persist_then_compute(c: &Client) {
    let mut g = Graph::new();
    let a = g.task("random_array", vec![arg(&vec![300usize, 300]), arg(&1u64)]);
    let b = g.task("random_array", vec![arg(&vec![300usize, 300]), arg(&2u64)]);
    let s =
        g.task("array_add", vec![courier::courier_runtime::ArgSpec::Key(a), courier::courier_runtime::ArgSpec::Key(b)]);
    let persisted = c.persist::<WireArray>(&g, std::slice::from_ref(&s)).await.unwrap();
    persisted[0].wait().await.unwrap();
    assert_eq!(persisted[0].status(), Status::Finished);
    let mean = c.submit::<f64>("array_mean", vec![persisted[0].arg()]).await.unwrap().result().await.unwrap();
    let local: courier::courier_core::ndarray::ArrayD<f64> = persisted[0].result().await.unwrap().to_array().unwrap();
    assert!((mean - local.mean().unwrap()).abs() < 1e-12);
    let mut g = Graph::new();
    let x = g.task("inc", vec![arg(&1i64)]);
    let y = g.task("add", vec![courier::courier_runtime::ArgSpec::Key(x), arg(&10i64)]);
    assert_eq!(c.compute::<i64>(&g, &[y]).await.unwrap(), vec![12]);
}

/// Waits until a fifth of the leaves are done (so the fault lands mid-graph).
async fn a_fifth_done(c: &Client, leaves: &[TaskFuture<WireArray>], total: &TaskFuture<f64>) {
    let mut completed = c.as_completed(leaves.iter().cloned());
    for _ in 0..LEAVES / 5 {
        futures::StreamExt::next(&mut completed).await.expect("a leaf completes");
    }
    assert_eq!(total.status(), Status::Pending, "the fault must land mid-graph");
}

/// Every scenario on one cluster over `scheme`; the workers must have fetched from each other
/// over `scheme` (never shm://: the hosts share no memory namespace for it).
async fn scenarios(scheme: &str, node_args: &[String], registry: Registry, hosts: Hosts) {
    let expected = reference().await;
    let mut cluster = Cluster::start(hosts, scheme, node_args, registry).await;
    let c = cluster.client().await;
    map_gather(&c).await;
    persist_then_compute(&c).await;
    let kept = c.map::<i64>("inc", (0..50i64).map(|i| vec![arg(&i)])).await.unwrap();
    c.wait(&kept).await;

    // Tree reduction with worker-to-worker fetches; host 3's worker is SIGKILLed mid-graph.
    let (leaves, total) = tree(&c, 0.02).await;
    a_fifth_done(&c, &leaves, &total).await;
    let mut fetched = Vec::new();
    for w in c.workers() {
        fetched.extend(c.worker_transfer_stats(&w).await.unwrap_or_default());
    }
    cluster.workers[2].kill().await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(120), total.result()).await.expect("no hang").unwrap();
    assert!((got - expected).abs() < 1e-9 * expected.abs(), "after a worker died: {got}, expected {expected}");
    for w in c.workers() {
        fetched.extend(c.worker_transfer_stats(&w).await.unwrap());
    }
    assert!(count(&fetched, scheme) > 0, "workers fetched from each other over {scheme}: {fetched:?}");
    assert_eq!(count(&fetched, "shm"), 0, "{fetched:?}");
    assert!(count(&c.transfer_stats(), scheme) > 0, "the client gathered over {scheme}");

    // Retirement across hosts: host 1's worker leaves, its results move to host 2.
    let leaving = cluster.worker_on(&c, 1);
    c.retire_workers(std::slice::from_ref(&leaving)).await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(60), cluster.workers[0].wait()).await.unwrap().unwrap();
    assert!(status.success(), "the retired worker exits cleanly, got {status}");
    assert_eq!(c.gather(&kept).await.unwrap(), (1..=50).collect::<Vec<_>>());
    assert_eq!(c.workers(), vec![cluster.worker_on(&c, 2)]);
    c.close().await;
    let _ = cluster.scheduler.kill().await;
}

fn pki_files(hosts: &Hosts) -> (Registry, Vec<String>) {
    let names: Vec<String> = (0..4).map(|i| hosts.addr(i)).collect();
    let pki = TestPki::generate_for(&names.iter().map(String::as_str).collect::<Vec<_>>());
    let dir = std::env::temp_dir().join(format!("courier-across-{}-{}", std::process::id(), hosts.prefix()));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.to_string_lossy().into_owned()
    };
    let args = vec![
        "--tls-ca".into(),
        write("ca.pem", &pki.ca),
        "--tls-cert".into(),
        write("node.pem", &pki.server_cert),
        "--tls-key".into(),
        write("node.key", &pki.server_key),
    ];
    let tls = courier_tls::TlsTransport::from_pem(&pki.node()).unwrap();
    (Registry::with_default_transports().with(Arc::new(tls)), args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenarios_across_hosts_over_tcp() {
    let Some(hosts) = Hosts::up(4, Some("1gbit")) else { return };
    scenarios("tcp", &[], Registry::with_default_transports(), hosts).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenarios_across_hosts_over_tls() {
    let Some(hosts) = Hosts::up(4, Some("1gbit")) else { return };
    let (registry, args) = pki_files(&hosts);
    scenarios("tls", &args, registry, hosts).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenarios_across_hosts_over_zmq() {
    let Some(hosts) = Hosts::up(4, Some("1gbit")) else { return };
    scenarios("zmq", &[], Registry::with_default_transports(), hosts).await;
}

/// A pulled cable: host 3's link goes down mid-graph. Nothing comes back from it (no reset, no
/// close), so the scheduler must notice the silence, declare the worker dead and recompute
/// what only it held; its peers must give up fetching from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_whose_link_goes_down_mid_graph_is_recovered_from_like_a_dead_worker() {
    let Some(hosts) = Hosts::up(4, Some("1gbit")) else { return };
    let expected = reference().await;
    let cluster = Cluster::start(hosts, "tcp", &[], Registry::with_default_transports()).await;
    let c = cluster.client().await;
    let (leaves, total) = tree(&c, 0.02).await;
    a_fifth_done(&c, &leaves, &total).await;
    let gone = cluster.worker_on(&c, 3);
    assert!(cluster.hosts.link_is_up(3));
    cluster.hosts.set_link(3, false);
    assert!(!cluster.hosts.link_is_up(3), "host 3's link is down on both ends");
    let got = tokio::time::timeout(Duration::from_secs(120), total.result()).await.expect("no hang").unwrap();
    assert!((got - expected).abs() < 1e-9 * expected.abs(), "after a link went down: {got}, expected {expected}");
    assert!(!c.workers().contains(&gone), "the unreachable worker was removed: {:?}", c.workers());
    c.close().await;
}

/// The harness leaves nothing behind when a test fails while its hosts are up.
#[test]
fn hosts_are_torn_down_when_a_test_fails() {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let prefix = std::thread::spawn(move || -> Option<()> {
        let hosts = Hosts::up(2, Some("10gbit"))?;
        let prefix = hosts.prefix().to_owned();
        assert!(!Hosts::leftovers(&prefix).is_empty(), "the hosts exist while the test runs");
        let sleeper = std::process::Command::new("ip")
            .args(["netns", "exec", &format!("{prefix}1"), "tail", "-f", "/dev/null"])
            .spawn()
            .unwrap();
        tx.send(sleeper).unwrap();
        std::panic::panic_any(prefix);
    })
    .join();
    let prefix = match prefix {
        Ok(None) => return, // skipped: no namespaces here
        Ok(Some(_)) => unreachable!(),
        Err(panic) => *panic.downcast::<String>().expect("the test's own panic"),
    };
    assert_eq!(Hosts::leftovers(&prefix), "", "namespaces or links left after a failing test");
    let status = rx.recv().unwrap().wait().unwrap();
    assert!(!status.success(), "what ran on a host was killed with it: {status}");
}
