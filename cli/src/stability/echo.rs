//! The echo phase: `comms` comms through one listener (through the fault proxy on TCP-based
//! transports), each sending numbered messages of unique content with a window of 4 in
//! flight and checking every echo: its comm, its sequence number, its bytes. A gap in the
//! sequence is a lost message; wrong bytes are corrupt; a comm that stops answering is a
//! hang, all counted, never waited for forever. One comm per repetition is dropped by its
//! server mid-stream and must see `Closed`; messages unanswered on a connection the proxy cut
//! are explained, any other loss is not.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use courier::{Message, Registry};
use tokio::sync::Semaphore;

use super::content::Id;
use super::proxy::Proxy;

/// A fault the server plants on purpose, so a test can check that the run reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Plant {
    /// The server of comm 0 swallows message 5.
    Drop,
    /// The server of comm 0 answers one message with a frame comm 1 sent.
    Misdeliver,
}

#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) comms: u32,
    pub(crate) messages: u32,
    pub(crate) timeout: Duration,
    pub(crate) proxy: bool,
    pub(crate) plant: Option<Plant>,
}

#[derive(Debug, Default)]
pub(crate) struct Outcome {
    pub(crate) messages: u64,
    pub(crate) lost: u64,
    pub(crate) corrupt: u64,
    /// Messages unanswered on connections the proxy cut or the server dropped on purpose.
    pub(crate) explained: u64,
    pub(crate) abrupt_seen: u64,
    pub(crate) cuts: u64,
    pub(crate) stalls: u64,
    pub(crate) hangs: u64,
    pub(crate) latencies: Vec<Duration>,
    pub(crate) errors: Vec<String>,
}

impl Outcome {
    fn add(&mut self, o: Outcome) {
        self.messages += o.messages;
        self.lost += o.lost;
        self.corrupt += o.corrupt;
        self.explained += o.explained;
        self.abrupt_seen += o.abrupt_seen;
        self.hangs += o.hangs;
        self.latencies.extend(o.latencies);
        self.errors.extend(o.errors);
    }
}

/// Where each task of an echo phase is, so a phase that outlives its timeout (and is dropped
/// with everything it knew) says what it was still waiting for.
#[derive(Clone)]
pub(crate) struct Trace {
    start: Instant,
    steps: Arc<Mutex<Steps>>,
    /// More to say when the phase hangs: the fault proxy's connections.
    more: Arc<Mutex<Option<Describe>>>,
}

type Describe = Box<dyn Fn() -> String + Send>;

/// Each task's last step, and when (since the phase's start) it took it.
#[derive(Debug, Default)]
struct Steps {
    running: BTreeMap<String, (Duration, String)>,
    /// Tasks that ended, with their last step: how they ended.
    ended: BTreeMap<String, (Duration, String)>,
}

impl Trace {
    pub(crate) fn new() -> Self {
        Trace { start: Instant::now(), steps: Arc::default(), more: Arc::default() }
    }

    fn also(&self, describe: Describe) {
        *self.more.lock().unwrap_or_else(|p| p.into_inner()) = Some(describe);
    }

    fn steps(&self) -> std::sync::MutexGuard<'_, Steps> {
        self.steps.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set(&self, who: impl Into<String>, what: impl Into<String>) {
        let at = self.start.elapsed();
        self.steps().running.insert(who.into(), (at, what.into()));
    }

    /// `who` ended; its last step says how.
    fn done(&self, who: &str) {
        let mut steps = self.steps();
        if let Some(last) = steps.running.remove(who) {
            steps.ended.insert(who.to_owned(), last);
        }
    }

    /// What was still running, one `who (since when): what` per task, then how the others
    /// ended; `None` if nothing was running.
    pub(crate) fn unfinished(&self) -> Option<String> {
        let steps = self.steps();
        let list = |m: &BTreeMap<String, (Duration, String)>| {
            m.iter()
                .map(|(who, (at, what))| format!("{who} (at {:.1} s): {what}", at.as_secs_f64()))
                .collect::<Vec<_>>()
                .join("; ")
        };
        let more = self.more.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map(|d| format!("; {}", d()));
        (!steps.running.is_empty()).then(|| {
            format!(
                "{}; the tasks that ended: {}{}",
                list(&steps.running),
                list(&steps.ended),
                more.unwrap_or_default()
            )
        })
    }
}

/// The last frame each comm's server received, and a wake-up when one arrives.
#[derive(Debug, Default)]
struct LastFrames {
    frames: Mutex<HashMap<u32, bytes::Bytes>>,
    arrived: tokio::sync::Notify,
}

impl LastFrames {
    fn put(&self, comm: u32, frame: bytes::Bytes) {
        self.frames.lock().unwrap_or_else(|p| p.into_inner()).insert(comm, frame);
        self.arrived.notify_waiters();
    }

    /// Comm `comm`'s last frame, waiting for its first if need be.
    async fn of(&self, comm: u32) -> bytes::Bytes {
        loop {
            let arrived = self.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            if let Some(f) = self.frames.lock().unwrap_or_else(|p| p.into_inner()).get(&comm) {
                return f.clone();
            }
            arrived.await;
        }
    }
}

async fn serve(
    mut comm: courier::Comm,
    abrupt: u32,
    plant: Option<Plant>,
    last: Arc<LastFrames>,
    trace: Trace,
    who: String,
) {
    let (mut echoed, mut planted) = (0u32, false);
    let peer = comm.peer_address().clone();
    trace.set(&who, format!("from {peer}, waiting for its first message"));
    let ended = loop {
        let m = match comm.recv().await {
            Ok(m) => m,
            Err(e) => break format!("ended: {e}"),
        };
        let Some((id, _)) = Id::parse(&m.header) else { break "ended: a header it could not parse".into() };
        if id.comm == abrupt && echoed == 3 {
            break "dropped on purpose".into(); // without a close: the client must see Closed
        }
        let mut frames = m.frames;
        if let Some(f) = frames.first() {
            last.put(id.comm, f.clone());
        }
        if id.comm == 0 && !planted {
            match plant {
                Some(Plant::Drop) if id.seq == 5 => {
                    planted = true;
                    continue;
                }
                Some(Plant::Misdeliver) if id.seq == 5 => {
                    frames = vec![last.of(1).await];
                    planted = true;
                }
                _ => {}
            }
        }
        trace.set(&who, format!("comm {} from {peer}: echoing message {}", id.comm, id.seq));
        if let Err(e) = comm.send(Message::new(m.header, frames)).await {
            break format!("ended sending: {e}");
        }
        echoed += 1;
        trace.set(&who, format!("comm {} from {peer}: {echoed} echoed, waiting for more", id.comm));
    };
    trace.set(&who, ended);
    trace.done(&who);
}

pub(crate) async fn run(
    registry: &Registry,
    url: &str,
    seed: u64,
    s: &Settings,
    trace: &Trace,
) -> anyhow::Result<Outcome> {
    let mut listener = registry.listen(url).await?;
    let contact = listener.contact_address().clone();
    let proxy = if s.proxy {
        let hp = contact.host_port()?;
        let target = std::net::SocketAddr::new(hp.host_string().parse()?, hp.port);
        let proxy = Arc::new(Proxy::start(target, seed, 0.4).await.context("starting the fault proxy")?);
        let p = proxy.clone();
        trace.also(Box::new(move || format!("the proxy's connections: {}", p.flows())));
        Some(proxy)
    } else {
        None
    };
    let connect_url = match &proxy {
        Some(p) => format!("{}://127.0.0.1:{}", contact.scheme(), p.port),
        None => contact.to_string(),
    };
    // The last comm is dropped by its server mid-stream (comms 0 and 1 carry planted faults).
    let abrupt = if s.comms >= 3 { s.comms - 1 } else { u32::MAX };
    let (n, plant) = (s.comms, s.plant);
    let server_trace = trace.clone();
    let server = tokio::spawn(async move {
        let last = Arc::new(LastFrames::default());
        let mut tasks = Vec::new();
        for i in 0..n {
            server_trace.set("listener", format!("{i} of {n} comms accepted"));
            let Ok(comm) = listener.accept().await else { break };
            let who = format!("server {i}");
            tasks.push(tokio::spawn(serve(comm, abrupt, plant, last.clone(), server_trace.clone(), who)));
        }
        server_trace.done("listener");
        for t in tasks {
            let _ = t.await;
        }
    });
    let clients: Vec<_> = (0..n)
        .map(|c| {
            let (registry, url, s, proxy) = (registry.clone(), connect_url.clone(), s.clone(), proxy.clone());
            let trace = trace.clone();
            tokio::spawn(
                async move { client(&registry, &url, seed, c, c == abrupt, &s, proxy.as_deref(), &trace).await },
            )
        })
        .collect();
    let mut total = Outcome::default();
    for c in clients {
        total.add(c.await.context("an echo client panicked")?);
    }
    // Every client is done (or gave up): the server's comms end with them.
    if tokio::time::timeout(s.timeout, server).await.is_err() {
        total.hangs += 1;
        total.errors.push("the echo server did not finish after its clients".into());
    }
    if let Some(p) = &proxy {
        (total.cuts, total.stalls) = p.struck();
    }
    Ok(total)
}

#[allow(clippy::too_many_arguments)]
async fn client(
    registry: &Registry,
    url: &str,
    seed: u64,
    c: u32,
    abrupt: bool,
    s: &Settings,
    proxy: Option<&Proxy>,
    trace: &Trace,
) -> Outcome {
    let who = &format!("client {c}");
    trace.set(who, "connecting");
    let mut out = Outcome::default();
    let comm = match registry.connect(url).await {
        Ok(comm) => comm,
        Err(e) => {
            trace.set(who, format!("connecting failed: {e}"));
            trace.done(who);
            out.errors.push(format!("comm {c}: connecting: {e}"));
            out.lost += u64::from(s.messages);
            return out;
        }
    };
    let port = comm.local_address().host_port().ok().map(|hp| hp.port);
    let through = match (port, proxy) {
        (Some(p), Some(x)) => format!("port {p}, {}", x.describe(p)),
        _ => format!("{}", comm.local_address()),
    };
    let (mut tx, mut rx) = comm.split();
    let window = Arc::new(Semaphore::new(4));
    let sent_at: Arc<Mutex<Vec<Option<Instant>>>> = Arc::new(Mutex::new(vec![None; s.messages as usize]));
    // Messages whose send has begun, and those it finished.
    let (sending, sent) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
    let (w, times, m) = (window.clone(), sent_at.clone(), s.messages);
    let (sending_, sent_) = (sending.clone(), sent.clone());
    let sender = tokio::spawn(async move {
        for seq in 0..m {
            let Ok(permit) = w.acquire().await else { break };
            permit.forget();
            let id = Id { seed, comm: c, seq };
            let len = id.size(true);
            times.lock().unwrap_or_else(|p| p.into_inner())[seq as usize] = Some(Instant::now());
            sending_.store(seq + 1, Ordering::Relaxed);
            if tx.send(Message::new(id.header(len), vec![id.content(len)])).await.is_err() {
                break;
            }
            sent_.store(seq + 1, Ordering::Relaxed);
        }
        // Closing a comm closes both halves: the receiving side closes it once all is back.
        tx
    });
    let wait = s.timeout.min(Duration::from_secs(30));
    let mut expected = 0u32;
    while expected < s.messages {
        // The sender's counters as of the wait's start.
        let (begun, finished) = (sending.load(Ordering::Relaxed), sent.load(Ordering::Relaxed));
        trace.set(who, format!("{through}: waiting for answer {expected}; sends begun {begun}, finished {finished}"));
        match tokio::time::timeout(wait, rx.recv()).await {
            Err(_) => {
                trace.set(who, format!("{through}: no answer {expected} within {wait:?}"));
                out.hangs += 1;
                out.lost += u64::from(s.messages - expected);
                out.errors.push(format!("comm {c}: no answer to message {expected} within {wait:?}"));
                break;
            }
            Ok(Ok(msg)) => {
                let parsed = Id::parse(&msg.header).filter(|(id, len)| {
                    id.seed == seed
                        && id.comm == c
                        && id.seq >= expected
                        && msg.frames.len() == 1
                        && msg.frames[0].len() == *len
                });
                let Some((id, _)) = parsed else {
                    out.corrupt += 1;
                    out.errors.push(format!("comm {c}: an answer that is not one of its messages at {expected}"));
                    expected += 1;
                    window.add_permits(1);
                    continue;
                };
                if id.seq > expected {
                    out.lost += u64::from(id.seq - expected);
                    out.errors.push(format!(
                        "comm {c}: {} message(s) from number {expected} never came back",
                        id.seq - expected
                    ));
                }
                if id.matches(&msg.frames[0]) {
                    out.messages += 1;
                    if let Some(t) = sent_at.lock().unwrap_or_else(|p| p.into_inner())[id.seq as usize] {
                        out.latencies.push(t.elapsed());
                    }
                } else {
                    out.corrupt += 1;
                    out.errors.push(format!("comm {c}: message {} came back with other bytes", id.seq));
                }
                window.add_permits((id.seq - expected + 1) as usize);
                expected = id.seq + 1;
            }
            Ok(Err(e)) => {
                trace.set(who, format!("{through}: receiving answer {expected}: {e}"));
                let unanswered = u64::from(s.messages - expected);
                if port.is_some_and(|p| proxy.is_some_and(|x| x.was_cut(p))) {
                    out.explained += unanswered;
                } else if abrupt {
                    if e.is_closed() {
                        out.abrupt_seen += 1;
                    } else {
                        out.errors.push(format!("comm {c}: its server dropped it, but it saw {e}, not Closed"));
                    }
                    out.explained += unanswered;
                } else {
                    out.lost += unanswered;
                    out.errors.push(format!("comm {c}: {e}"));
                }
                break;
            }
        }
    }
    if abrupt && expected == s.messages && s.messages > 3 {
        out.errors.push(format!("comm {c}: its server dropped it after 3 answers, but all {} came back", s.messages));
    }
    if expected == s.messages {
        trace.set(who, format!("{through}: all answered, closing"));
        if let Ok(mut tx) = sender.await {
            let closed = tx.close().await;
            trace.set(who, format!("{through}: all answered, closed ({closed:?})"));
        }
    } else {
        sender.abort();
    }
    trace.done(who);
    out
}
