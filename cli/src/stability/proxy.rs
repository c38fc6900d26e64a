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
                lock(&recs).insert(peer.port(), Record { fate, struck: false });
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
        matches!(lock(&self.records).get(&port), Some(Record { fate: Fate::Cut { .. }, struck: true }))
    }

    /// What the proxy does to the connection from `port`, and whether it did it yet.
    pub(crate) fn describe(&self, port: u16) -> String {
        match lock(&self.records).get(&port) {
            None => "not through the proxy yet".into(),
            Some(Record { fate, struck }) => format!("{fate:?}{}", if *struck { ", struck" } else { "" }),
        }
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
    let cut = CloseSignal::new();
    let (up, down) = match fate {
        Fate::Clean => (Fate::Clean, Fate::Clean),
        Fate::Cut { upstream, .. } | Fate::Stall { upstream, .. } if upstream => (fate, Fate::Clean),
        _ => (Fate::Clean, fate),
    };
    let both = async { tokio::join!(pump(cr, sw, up, &cut, port, &records), pump(sr, cw, down, &cut, port, &records)) };
    tokio::select! {
        _ = both => {}
        () = cut.closed() => {}
    }
    // Every half is dropped here: both sockets close.
}

async fn pump<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    mut from: R,
    mut to: W,
    fate: Fate,
    cut: &CloseSignal,
    port: u16,
    records: &Records,
) {
    let mut buf = vec![0u8; 64 << 10];
    let mut passed = 0u64;
    let mut pending = match fate {
        Fate::Clean => None,
        Fate::Cut { after, .. } | Fate::Stall { after, .. } => Some(after),
    };
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        let mut chunk = &buf[..n];
        if let Some(after) = pending
            && passed + n as u64 >= after
        {
            let head = (after - passed) as usize;
            if to.write_all(&chunk[..head]).await.is_err() {
                return;
            }
            passed += head as u64;
            chunk = &chunk[head..];
            pending = None;
            if let Some(r) = lock(records).get_mut(&port) {
                r.struck = true;
            }
            match fate {
                Fate::Cut { .. } => {
                    cut.close();
                    return;
                }
                Fate::Stall { millis, .. } => tokio::time::sleep(Duration::from_millis(millis)).await,
                Fate::Clean => {}
            }
        }
        if to.write_all(chunk).await.is_err() {
            return;
        }
        passed += chunk.len() as u64;
    }
}
