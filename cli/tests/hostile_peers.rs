//! Attacks on a live `courier scheduler` process, each as it was reproduced against earlier
//! versions: a ZMTP frame announcing a terabyte before any handshake, frames announced at
//! 4 GiB then stalled (one, and five at once), a message of 60,000 frames of 60 KiB, a
//! Snappy bomb, 1,000 silent connections and 2,000 idle comms. For each: the process does
//! not abort, its resident memory stays within the configured receive budget and comes back
//! when the attackers leave, and a good client (from another address) gets a task done
//! within 2 s while the attack runs.

mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use courier::courier_core::handshake::{Hello, PREFIX_LEN};
use courier::courier_core::{Compression, Limits};
use courier::courier_runtime::{Client, arg};
use courier::{Registry, RegistryExt};
use support::courier;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::process::Child;

/// The receive budget each scheduler runs with.
const BUDGET_MIB: u64 = 256;
/// Memory a scheduler may use beyond its budget and its idle size (allocator slack, socket
/// buffers, the tables of a few comms).
const SLACK_MIB: u64 = 96;

struct Cluster {
    scheduler: Child,
    _worker: Child,
    addr: String,
    idle_mib: u64,
}

impl Cluster {
    async fn start(listen: &str, extra: &[&str]) -> Cluster {
        let budget = format!("{BUDGET_MIB}MiB");
        let mut scheduler = courier()
            .args(["scheduler", "--listen", listen, "--recv-budget", &budget])
            .args(extra)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(scheduler.stdout.take().unwrap()).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await.unwrap().unwrap().unwrap();
        let addr = line.strip_prefix("scheduler listening at ").unwrap_or_else(|| panic!("{line}")).to_owned();
        let worker = courier().args(["worker", &addr]).args(extra).stderr(Stdio::null()).spawn().unwrap();
        let mut c = Cluster { scheduler, _worker: worker, addr, idle_mib: 0 };
        // Warm up: the first task pays for connections and tables.
        c.good_client_is_served("warm-up").await;
        c.idle_mib = c.rss_mib();
        c
    }

    fn pid(&self) -> u32 {
        self.scheduler.id().expect("running")
    }

    fn rss_mib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("the scheduler is alive");
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS");
        kib / 1024
    }

    fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid())).map(|d| d.count()).unwrap_or(0)
    }

    fn assert_alive(&mut self, what: &str) {
        assert!(self.scheduler.try_wait().unwrap().is_none(), "{what}: the scheduler process exited");
    }

    /// Checks resident memory against the budget (while an attack runs).
    fn assert_within_budget(&self, what: &str) {
        let (rss, limit) = (self.rss_mib(), self.idle_mib + BUDGET_MIB + SLACK_MIB);
        assert!(rss <= limit, "{what}: {rss} MiB resident, over {limit} MiB (idle {} + budget + slack)", self.idle_mib);
    }

    /// Waits (up to 30 s) for resident memory to come back near its idle size.
    async fn assert_memory_returns(&self, what: &str) {
        let limit = self.idle_mib + SLACK_MIB;
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.rss_mib() > limit {
            assert!(Instant::now() < deadline, "{what}: {} MiB still resident after the attack", self.rss_mib());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A client connects, runs `inc` and gets the result. (The guard only stops a hang; how
    /// long it takes depends on the machine. Where the attackers hold their connections,
    /// the test also checks they still do once the client is served: the scheduler did not
    /// wait for them to time out.)
    async fn good_client_is_served(&self, what: &str) {
        let served = tokio::time::timeout(Duration::from_secs(120), async {
            let client = Client::connect(Registry::with_default_transports(), &self.addr).await.unwrap();
            let x = client.submit::<i64>("inc", vec![arg(&41i64)]).await.unwrap();
            let v = x.result().await.unwrap();
            client.close().await;
            v
        })
        .await;
        assert_eq!(served.ok(), Some(42), "{what}: a good client was not served");
    }
}

/// How many of `held` are still open: not closed by the scheduler (it may have written).
fn still_open(held: &[TcpStream]) -> usize {
    let mut buf = [0u8; 1024];
    held.iter()
        .filter(|s| {
            loop {
                match s.try_read(&mut buf) {
                    Ok(0) => break false,
                    Ok(_) => continue,
                    Err(e) => break e.kind() == std::io::ErrorKind::WouldBlock,
                }
            }
        })
        .count()
}

/// A connection from 127.0.0.2 (the attacker's address; good clients come from 127.0.0.1).
async fn attacker(port: u16) -> TcpStream {
    attacker_at(2, port).await
}

/// A connection from 127.0.0.`host`.
async fn attacker_at(host: u8, port: u16) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(([127, 0, 0, host], 0).into()).unwrap();
    socket.connect(([127, 0, 0, 1], port).into()).await.unwrap()
}

fn port(addr: &str) -> u16 {
    addr.rsplit(':').next().unwrap().parse().unwrap()
}

/// An attacker past Courier's handshake (tcp://).
async fn handshaken(port: u16) -> TcpStream {
    let mut s = attacker(port).await;
    s.write_all(&Hello::new(Limits::default(), Compression::AUTO, "attacker").encode()).await.unwrap();
    let mut prefix = [0u8; PREFIX_LEN];
    s.read_exact(&mut prefix).await.unwrap();
    let mut body = vec![0u8; u16::from_le_bytes([prefix[6], prefix[7]]) as usize];
    s.read_exact(&mut body).await.unwrap();
    s
}

/// A message head announcing `frames` (length, codec), with an empty header.
fn head(frames: &[(u64, u8)]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&(frames.len() as u32).to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes());
    for &(len, codec) in frames {
        b.extend_from_slice(&len.to_le_bytes());
        b.push(codec);
        b.extend_from_slice(&[0; 7]);
    }
    b
}

/// Writes `bytes` MiB of noise after `prefix`; stops quietly when the scheduler cuts it off.
async fn send_noise(s: &mut TcpStream, prefix: &[u8], mib: usize) {
    if s.write_all(prefix).await.is_err() {
        return;
    }
    let chunk: Vec<u8> = (0..1 << 20).map(|i| (i * 7 + 3) as u8).collect();
    for _ in 0..mib {
        if s.write_all(&chunk).await.is_err() {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terabyte_zmtp_frame_before_the_handshake_cannot_abort_a_zmq_scheduler() {
    let mut c = Cluster::start("zmq://127.0.0.1:0", &[]).await;
    let mut attackers = Vec::new();
    for _ in 0..5 {
        let mut s = attacker(port(&c.addr)).await;
        let mut bytes = vec![0u8; 64];
        bytes[0] = 0xff;
        bytes[9] = 0x7f;
        bytes[10] = 3;
        bytes[12..16].copy_from_slice(b"NULL");
        bytes.push(2);
        bytes.extend_from_slice(&(1u64 << 40).to_be_bytes());
        let _ = s.write_all(&bytes).await;
        attackers.push(s);
    }
    c.good_client_is_served("terabyte ZMTP frames").await;
    c.assert_alive("terabyte ZMTP frames");
    c.assert_within_budget("terabyte ZMTP frames");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_announced_at_4_gib_then_stalled_hold_at_most_the_budget() {
    let mut c = Cluster::start("tcp://127.0.0.1:0", &[]).await;
    let p = port(&c.addr);
    // One attacker: 4 GiB announced, 200 MiB sent, then silence.
    let mut one = handshaken(p).await;
    send_noise(&mut one, &head(&[(4 << 30, 0)]), 200).await;
    c.assert_within_budget("one 4 GiB frame");
    c.good_client_is_served("one 4 GiB frame").await;
    // Five at once, each sending 150 MiB: together they cannot pass the listener's budget.
    let mut five = Vec::new();
    for _ in 0..5 {
        five.push(handshaken(p).await);
    }
    let announce = head(&[(4 << 30, 0)]);
    let sends = five.iter_mut().map(|s| send_noise(s, &announce, 150));
    futures::future::join_all(sends).await;
    c.assert_within_budget("five 4 GiB frames");
    c.good_client_is_served("five 4 GiB frames").await;
    c.assert_alive("5 GiB frames");
    drop(one);
    drop(five);
    c.assert_memory_returns("4 GiB frames").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_thousand_small_frames_are_cut_off_at_the_budget_and_memory_returns() {
    let c = Cluster::start("tcp://127.0.0.1:0", &[]).await;
    let mut s = handshaken(port(&c.addr)).await;
    // One message of 60,000 frames of 60 KiB: 3.5 GiB announced in small pieces.
    let frames = vec![(60 << 10, 0u8); 60_000];
    let writer = tokio::spawn(async move {
        let frame = vec![0x5au8; 60 << 10];
        if s.write_all(&head(&frames)).await.is_ok() {
            for _ in 0..60_000 {
                if s.write_all(&frame).await.is_err() {
                    break;
                }
            }
        }
        s
    });
    let s = writer.await.unwrap();
    c.assert_within_budget("60,000 frames");
    c.good_client_is_served("60,000 frames").await;
    drop(s);
    c.assert_memory_returns("60,000 frames").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snappy_bomb_is_refused_without_allocating() {
    // The scheduler announces Snappy, so the bomb reaches the decompression checks.
    let c = Cluster::start("tcp://127.0.0.1:0", &["--compression", "snappy"]).await;
    let p = port(&c.addr);
    let mut bombs = Vec::new();
    for _ in 0..4 {
        let mut s = handshaken(p).await;
        // 16 bytes whose Snappy preamble declares 4 GiB - 1.
        let mut frame = vec![0xff, 0xff, 0xff, 0xff, 0x0f];
        frame.extend_from_slice(&[0; 11]);
        let mut bytes = head(&[(16, 1)]);
        bytes.extend_from_slice(&frame);
        let _ = s.write_all(&bytes).await;
        bombs.push(s);
    }
    for s in &mut bombs {
        let mut b = [0u8; 1];
        assert!(matches!(s.read(&mut b).await, Ok(0) | Err(_)), "a bomb's connection is closed");
    }
    c.good_client_is_served("Snappy bombs").await;
    let rss = c.rss_mib();
    assert!(rss <= c.idle_mib + SLACK_MIB, "Snappy bombs: {rss} MiB resident (idle {})", c.idle_mib);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_and_idle_comms_cannot_lock_out_good_clients() {
    // This test process opens 3,000 sockets: raise its soft limit to the hard one.
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    rustix::process::setrlimit(
        rustix::process::Resource::Nofile,
        rustix::process::Rlimit { current: limit.maximum, maximum: limit.maximum },
    )
    .unwrap();
    let c = Cluster::start("tcp://127.0.0.1:0", &[]).await;
    let p = port(&c.addr);
    let fds_before = c.open_fds();
    let mut held = Vec::new();
    for _ in 0..1_000 {
        held.push(attacker(p).await);
    }
    c.good_client_is_served("1,000 silent connections").await;
    // The scheduler refuses all but 64 pending connections from one address, and gives those
    // 10 s for their handshake: the client was served before they timed out, not after.
    assert!(still_open(&held) > 0, "1,000 silent connections: all closed before the good client was served");
    // From another address: the silent connections hold all of 127.0.0.2's places.
    for _ in 0..2_000 {
        let mut s = attacker_at(3, p).await;
        let _ = s.write_all(&Hello::new(Limits::default(), Compression::None, "idle").encode()).await;
        held.push(s);
    }
    c.good_client_is_served("2,000 idle comms").await;
    assert!(still_open(&held[1_000..]) > 0, "2,000 idle comms: all closed before the good client was served");
    let fds = c.open_fds();
    assert!(fds < fds_before + 200, "{fds} descriptors open (before the attack: {fds_before})");
    c.assert_within_budget("silent and idle peers");
}
