//! A TCP proxy between the echo phase's clients and its listener that injects faults: per
//! connection, chosen from a seed, it forwards cleanly, cuts the connection (both sockets
//! closed) after a random number of bytes in one direction, or stalls one direction for up to
//! 1.5 s and then carries on. A client asks afterwards what happened to its connection, so a
//! loss on a cut connection is explained and any other loss is not.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use courier::courier_core::CloseSignal;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// What the proxy does to one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fate {
    Clean,
    /// Close both sockets once `after` bytes have passed in one direction.
    Cut {
        after: u64,
        upstream: bool,
    },
    /// Hold one direction for `millis` once `after` bytes have passed.
    Stall {
        after: u64,
        upstream: bool,
        millis: u64,
    },
}

#[derive(Debug, Clone, Copy)]
struct Record {
    fate: Fate,
    /// The fault happened (the traffic reached `after`).
    struck: bool,
    /// Each direction's bytes passed and what it is doing: where a hung run's bytes stopped.
    up: Flow,
    down: Flow,
}

#[derive(Debug, Clone, Copy, Default)]
struct Flow {
    bytes: u64,
    doing: &'static str,
}

impl Record {
    fn new(fate: Fate) -> Self {
        Record { fate, struck: false, up: Flow::default(), down: Flow::default() }
    }

    fn flow(&mut self, upstream: bool) -> &mut Flow {
        if upstream { &mut self.up } else { &mut self.down }
    }
}

type Records = Arc<Mutex<HashMap<u16, Record>>>;

/// A running proxy. Dropping it stops accepting; connections in flight carry on.
#[derive(Debug)]
pub(crate) struct Proxy {
    pub(crate) port: u16,
    records: Records,
    task: JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock(r: &Records) -> std::sync::MutexGuard<'_, HashMap<u16, Record>> {
    r.lock().unwrap_or_else(|p| p.into_inner())
}

impl Proxy {
    /// Forwards 127.0.0.1:port to `target`; `share` of the connections get a fault.
    pub(crate) async fn start(target: SocketAddr, seed: u64, share: f64) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let port = listener.local_addr()?.port();
        let records: Records = Arc::default();
        let recs = records.clone();
        let task = tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(seed);
            while let Ok((client, peer)) = listener.accept().await {
                let fate = if rng.f64() >= share {
                    Fate::Clean
                } else {
                    // Past the handshakes (TLS sends a few KiB of certificates).
                    let after = rng.u64(16 << 10..6 << 20);
                    let upstream = rng.bool();
                    if rng.bool() {
                        Fate::Cut { after, upstream }
                    } else {
                        Fate::Stall { after, upstream, millis: rng.u64(100..1500) }
                    }
                };
                lock(&recs).insert(peer.port(), Record::new(fate));
                let recs = recs.clone();
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(target).await {
                        let _ = client.set_nodelay(true);
                        let _ = server.set_nodelay(true);
                        forward(client, server, fate, peer.port(), recs).await;
                    }
                });
            }
        });
        Ok(Proxy { port, records, task })
    }

    /// True when the connection from the client's `port` was cut.
    pub(crate) fn was_cut(&self, port: u16) -> bool {
        matches!(lock(&self.records).get(&port), Some(Record { fate: Fate::Cut { .. }, struck: true, .. }))
    }

    /// What the proxy does to the connection from `port`, and whether it did it yet.
    pub(crate) fn describe(&self, port: u16) -> String {
        match lock(&self.records).get(&port) {
            None => "not through the proxy yet".into(),
            Some(r) => format!("{:?}{}", r.fate, if r.struck { ", struck" } else { "" }),
        }
    }

    /// Every connection's fate and each direction's bytes and state, by client port.
    pub(crate) fn flows(&self) -> String {
        let records = lock(&self.records);
        let mut ports: Vec<_> = records.keys().copied().collect();
        ports.sort_unstable();
        let flow = |f: &Flow| format!("{} B, {}", f.bytes, if f.doing.is_empty() { "not started" } else { f.doing });
        ports
            .iter()
            .map(|p| {
                let r = &records[p];
                format!("port {p}: {:?}; to the server {}; to the client {}", r.fate, flow(&r.up), flow(&r.down))
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Faults that happened: (cuts, stalls).
    pub(crate) fn struck(&self) -> (u64, u64) {
        let r = lock(&self.records);
        let count =
            |cut: bool| r.values().filter(|x| x.struck && matches!(x.fate, Fate::Cut { .. }) == cut).count() as u64;
        (count(true), count(false))
    }
}

async fn forward(client: TcpStream, server: TcpStream, fate: Fate, port: u16, records: Records) {
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    forward_halves((cr, cw), (sr, sw), fate, port, records).await;
}

/// [`forward`] over any two connections, each as its read and write halves.
async fn forward_halves<CR, CW, SR, SW>((cr, cw): (CR, CW), (sr, sw): (SR, SW), fate: Fate, port: u16, records: Records)
where
    CR: AsyncRead + Unpin,
    CW: AsyncWrite + Unpin,
    SR: AsyncRead + Unpin,
    SW: AsyncWrite + Unpin,
{
    let cut = CloseSignal::new();
    let (up, down) = match fate {
        Fate::Clean => (Fate::Clean, Fate::Clean),
        Fate::Cut { upstream, .. } | Fate::Stall { upstream, .. } if upstream => (fate, Fate::Clean),
        _ => (Fate::Clean, fate),
    };
    let both = async {
        tokio::join!(pump(cr, sw, up, true, &cut, port, &records), pump(sr, cw, down, false, &cut, port, &records))
    };
    tokio::select! {
        _ = both => {}
        () = cut.closed() => {}
    }
    if let Some(r) = lock(&records).get_mut(&port) {
        for upstream in [true, false] {
            let f = r.flow(upstream);
            if !f.doing.starts_with("ended") {
                f.doing = "ended: the connection was torn down";
            }
        }
    }
    // Every half is dropped here: both sockets close.
}

async fn pump<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    mut from: R,
    mut to: W,
    fate: Fate,
    upstream: bool,
    cut: &CloseSignal,
    port: u16,
    records: &Records,
) {
    let note = |doing: &'static str, bytes: u64| {
        if let Some(r) = lock(records).get_mut(&port) {
            let f = r.flow(upstream);
            f.doing = doing;
            f.bytes += bytes;
        }
    };
    let mut buf = vec![0u8; 64 << 10];
    let mut passed = 0u64;
    let mut pending = match fate {
        Fate::Clean => None,
        Fate::Cut { after, .. } | Fate::Stall { after, .. } => Some(after),
    };
    // A peer that closes cleanly is passed on as a half-close, as a direct connection would
    // carry it. A connection that breaks (a reset, a write the peer no longer takes) tears
    // down both sides, as a reset would reach the other end of a direct connection: otherwise
    // the other direction could wait forever to write to a peer that is itself stuck writing
    // (an echo server mid-reply, its client gone), and the run would hang on the proxy, not
    // on the transport under test.
    loop {
        note("reading", 0);
        let n = match from.read(&mut buf).await {
            Ok(0) => {
                note("ended: end of stream", 0);
                let _ = to.shutdown().await;
                return;
            }
            Err(_) => {
                note("ended: read error", 0);
                cut.close();
                return;
            }
            Ok(n) => n,
        };
        note("writing", 0);
        let mut chunk = &buf[..n];
        if let Some(after) = pending
            && passed + n as u64 >= after
        {
            let head = (after - passed) as usize;
            if to.write_all(&chunk[..head]).await.is_err() {
                note("ended: write error", 0);
                cut.close();
                return;
            }
            note("writing", head as u64);
            passed += head as u64;
            chunk = &chunk[head..];
            pending = None;
            if let Some(r) = lock(records).get_mut(&port) {
                r.struck = true;
            }
            match fate {
                Fate::Cut { .. } => {
                    note("ended: cut", 0);
                    cut.close();
                    return;
                }
                Fate::Stall { millis, .. } => {
                    note("stalled", 0);
                    tokio::time::sleep(Duration::from_millis(millis)).await;
                    note("writing", 0);
                }
                Fate::Clean => {}
            }
        }
        if to.write_all(chunk).await.is_err() {
            note("ended: write error", 0);
            cut.close();
            return;
        }
        note("writing", chunk.len() as u64);
        passed += chunk.len() as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hang `courier stability` met: an echo server mid-reply does not read, and its
    /// client goes away without reading. Connected directly, the server's write would fail on
    /// the client's reset; through the proxy it must fail too, not wait forever behind a proxy
    /// stuck writing the client's last bytes to that server. In-memory pipes of known
    /// capacity make "the proxy is stuck" an event, not a guess.
    // Paused time: should the proxy hang again, every task waits, the clock jumps and the
    // guard below fails the test at once instead of hanging it.
    #[tokio::test(start_paused = true)]
    async fn a_client_that_goes_away_ends_the_servers_stuck_write() {
        const CAP: usize = 64 << 10;
        let (client, client_end) = tokio::io::duplex(CAP);
        let (server_end, server) = tokio::io::duplex(CAP);
        let proxy = tokio::spawn(forward_halves(
            tokio::io::split(client_end),
            tokio::io::split(server_end),
            Fate::Clean,
            1,
            Records::default(),
        ));
        // The server writes and never reads, like an echo server blocked in its reply.
        let (_server_read, mut server_write) = tokio::io::split(server);
        let writer = tokio::spawn(async move {
            let block = vec![7u8; CAP];
            loop {
                if let Err(e) = server_write.write_all(&block).await {
                    return e;
                }
            }
        });
        // The client's pipe holds at most CAP bytes and the server's at most CAP: once 2 CAP + 1
        // are written, the proxy has read bytes it cannot write, and waits on the server.
        let (client_read, mut client_write) = tokio::io::split(client);
        client_write.write_all(&vec![9u8; 2 * CAP + 1]).await.unwrap();
        drop((client_read, client_write));
        let e = tokio::time::timeout(Duration::from_secs(3600), writer)
            .await
            .expect("the server's write is still blocked after its client went away")
            .unwrap();
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "the server's write ends as without the proxy");
        proxy.await.unwrap();
    }
}
