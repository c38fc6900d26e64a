//! # courier-inproc
//!
//! The `inproc://` transport: comms between tasks of one process, for tests, embedded
//! clusters and benchmarks of everything above the wire.
//!
//! - Addresses are names in a process-wide table: `inproc://scheduler`. Listening on
//!   `inproc://` (no name) picks a fresh unique name, given by the contact address.
//! - Each direction of a comm is a bounded channel (capacity `CommConfig::queue_capacity`
//!   messages), so a fast sender waits for a slow receiver.
//! - Messages are handed over as they are: the receiver's frames point at the sender's
//!   memory. Nothing is serialized or copied.
//! - Comms carry [local values](courier_core::Message::from_local): a sender may hand a typed
//!   value over instead of serializing it (Courier's runtime does, for its protocol messages).
//!   [`InprocTransport::serializing`] makes comms that refuse them, so senders serialize as
//!   over any wire: for testing and measuring that path in one process.
//! - Works across threads and across different tokio runtimes in the process.
//! - Each side still honours the other's [`Limits`]: a message the peer would refuse is
//!   `FrameTooLarge` at the sender, exactly as over tcp://.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};

use async_trait::async_trait;
use courier_core::codec::check_limits;
use courier_core::{
    Address, CloseSignal, CloseWatch, Comm, CommConfig, CommError, CommRecv, CommSend, ErrorKind, Limits, Listener,
    Message, PeerInfo, Transport,
};
use tokio::sync::mpsc;

/// The scheme this crate serves.
pub const SCHEME: &str = "inproc";

/// A connection request travelling from `connect` to the listener.
struct Request {
    client_addr: Address,
    client_name: String,
    client_limits: Limits,
    to_server: mpsc::Receiver<Message>,
    to_client: mpsc::Sender<Message>,
    client_closed: CloseSignal,
    server_closed: CloseSignal,
    /// The role the client's credential grants, when the listener checks credentials.
    role: Option<String>,
}

struct Entry {
    requests: mpsc::Sender<Request>,
    limits: Limits,
    name: String,
    id: u64,
    /// The listener's access list: checked at connect time, in this process.
    access: Option<courier_core::AccessList>,
}

static TABLE: LazyLock<Mutex<HashMap<String, Entry>>> = LazyLock::new(Default::default);
static COUNTER: AtomicU64 = AtomicU64::new(0);

fn table() -> std::sync::MutexGuard<'static, HashMap<String, Entry>> {
    TABLE.lock().unwrap_or_else(|p| p.into_inner())
}

fn fresh(prefix: &str) -> String {
    format!("{prefix}{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// The inproc:// transport. All instances share the process-wide name table.
#[derive(Debug, Clone)]
pub struct InprocTransport {
    /// Comms made by this instance (its connects and its listeners' accepts) carry local values.
    values: bool,
}

impl Default for InprocTransport {
    fn default() -> Self {
        InprocTransport { values: true }
    }
}

impl InprocTransport {
    /// The transport; its comms carry local values.
    pub fn new() -> Self {
        Self::default()
    }

    /// The transport with comms that do not carry local values: senders serialize every
    /// message, as over a wire (the peer's comm may still carry them the other way).
    pub fn serializing() -> Self {
        InprocTransport { values: false }
    }
}

fn check_scheme(addr: &Address) -> Result<(), CommError> {
    if addr.scheme() != SCHEME {
        return Err(CommError::invalid_address(&addr.to_string(), "not an inproc:// address"));
    }
    Ok(())
}

#[async_trait]
impl Transport for InprocTransport {
    fn scheme(&self) -> &str {
        SCHEME
    }

    async fn connect(&self, addr: &Address, config: &CommConfig) -> Result<Comm, CommError> {
        check_scheme(addr)?;
        let (requests, server_limits, server_name, role) = {
            let t = table();
            let entry = t.get(addr.location()).ok_or_else(|| {
                CommError::new(ErrorKind::ConnectionRefused, format!("no inproc listener named {addr}"))
            })?;
            let role = match &entry.access {
                None => None,
                Some(access) => {
                    let presented = config.credential.as_ref().map(|c| c.expose()).unwrap_or_default();
                    match access.check(presented) {
                        Some(r) => Some(r.to_owned()),
                        None => {
                            return Err(CommError::new(
                                ErrorKind::Unauthorized,
                                format!("{addr} refused this side's credential"),
                            ));
                        }
                    }
                }
            };
            (entry.requests.clone(), entry.limits, entry.name.clone(), role)
        };
        let cap = config.queue_capacity.max(1);
        let (to_server_tx, to_server_rx) = mpsc::channel(cap);
        let (to_client_tx, to_client_rx) = mpsc::channel(cap);
        let (client_closed, server_closed) = (CloseSignal::new(), CloseSignal::new());
        let client_addr = Address::new(SCHEME, &fresh("client-"))?;
        let request = Request {
            client_addr: client_addr.clone(),
            client_name: config.name.clone(),
            client_limits: config.limits,
            to_server: to_server_rx,
            to_client: to_client_tx,
            client_closed: client_closed.clone(),
            server_closed: server_closed.clone(),
            role,
        };
        match tokio::time::timeout(config.connect_timeout, requests.send(request)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => {
                return Err(CommError::new(ErrorKind::ConnectionRefused, format!("inproc listener {addr} closed")));
            }
            Err(_) => {
                return Err(CommError::new(
                    ErrorKind::ConnectTimeout,
                    format!("inproc listener {addr} accepts no more"),
                ));
            }
        }
        let (send, recv) = halves(self.values, to_server_tx, to_client_rx, client_closed, server_closed, server_limits);
        let info = PeerInfo { name: server_name, version: 0, role: None, limits: None };
        Ok(Comm::new(Box::new(send), Box::new(recv), client_addr, addr.clone(), info))
    }

    async fn listen(&self, addr: &Address, config: &CommConfig) -> Result<Box<dyn Listener>, CommError> {
        check_scheme(addr)?;
        let name = if addr.location().is_empty() { fresh("auto-") } else { addr.location().to_owned() };
        let contact = Address::new(SCHEME, &name)?;
        let (tx, rx) = mpsc::channel(config.queue_capacity.max(1));
        let id = COUNTER.fetch_add(1, Ordering::Relaxed);
        {
            let mut t = table();
            if t.contains_key(&name) {
                return Err(CommError::new(ErrorKind::AddressInUse, format!("{contact} is already listening")));
            }
            let entry = Entry {
                requests: tx,
                limits: config.limits,
                name: config.name.clone(),
                id,
                access: config.access.clone(),
            };
            t.insert(name.clone(), entry);
        }
        Ok(Box::new(InprocListener {
            listen: addr.clone(),
            contact,
            name,
            id,
            requests: rx,
            open: true,
            values: self.values,
        }))
    }
}

/// Listener for inproc:// names.
#[derive(Debug)]
struct InprocListener {
    listen: Address,
    contact: Address,
    name: String,
    id: u64,
    requests: mpsc::Receiver<Request>,
    open: bool,
    values: bool,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request").field("client", &self.client_addr).finish_non_exhaustive()
    }
}

impl InprocListener {
    fn unregister(&mut self) {
        if self.open {
            self.open = false;
            let mut t = table();
            if t.get(&self.name).is_some_and(|e| e.id == self.id) {
                t.remove(&self.name);
            }
        }
    }
}

#[async_trait]
impl Listener for InprocListener {
    async fn accept(&mut self) -> Result<Comm, CommError> {
        let closed = || CommError::closed(format!("inproc listener {} is closed", self.contact));
        if !self.open {
            return Err(closed());
        }
        let r = self.requests.recv().await.ok_or_else(closed)?;
        let (send, recv) =
            halves(self.values, r.to_client, r.to_server, r.server_closed, r.client_closed, r.client_limits);
        let info = PeerInfo { name: r.client_name, version: 0, role: r.role, limits: None };
        Ok(Comm::new(Box::new(send), Box::new(recv), self.contact.clone(), r.client_addr, info))
    }

    fn listen_address(&self) -> &Address {
        &self.listen
    }

    fn contact_address(&self) -> &Address {
        &self.contact
    }

    async fn close(&mut self) {
        self.unregister();
        self.requests.close();
        // Pending requests are dropped: their clients see Closed.
        while self.requests.try_recv().is_ok() {}
    }
}

impl Drop for InprocListener {
    fn drop(&mut self) {
        self.unregister();
    }
}

/// One end's halves: sending on `tx`, receiving on `rx`, closing `me`, watching `peer`.
fn halves(
    values: bool,
    tx: mpsc::Sender<Message>,
    rx: mpsc::Receiver<Message>,
    me: CloseSignal,
    peer: CloseSignal,
    peer_limits: Limits,
) -> (InprocSend, InprocRecv) {
    let recv = InprocRecv { rx, me_watch: me.watch(), me: me.clone() };
    let send =
        InprocSend { values, tx: Some(tx), me_watch: me.watch(), peer_watch: peer.watch(), me, peer, peer_limits };
    (send, recv)
}

#[derive(Debug)]
struct InprocSend {
    values: bool,
    tx: Option<mpsc::Sender<Message>>,
    me: CloseSignal,
    peer: CloseSignal,
    /// Subscriptions to `me` and `peer` for the sends that wait (a full queue).
    me_watch: CloseWatch,
    peer_watch: CloseWatch,
    peer_limits: Limits,
}

#[async_trait]
impl CommSend for InprocSend {
    async fn send(&mut self, msg: Message) -> Result<(), CommError> {
        let closed = || CommError::closed("inproc comm is closed");
        let tx = match &self.tx {
            Some(tx) if !self.me.is_closed() && !self.peer.is_closed() => tx,
            _ => return Err(closed()),
        };
        check_limits(&msg, &self.peer_limits)?;
        tokio::select! {
            r = tx.send(msg) => r.map_err(|_| closed()),
            () = self.peer_watch.closed() => Err(closed()),
            () = self.me_watch.closed() => Err(closed()),
        }
    }

    fn carries_local_values(&self) -> bool {
        self.values
    }

    async fn close(&mut self) -> Result<(), CommError> {
        self.me.close();
        // Dropping the sender lets the peer drain what was sent, then see Closed.
        self.tx = None;
        Ok(())
    }
}

#[derive(Debug)]
struct InprocRecv {
    rx: mpsc::Receiver<Message>,
    me: CloseSignal,
    /// A subscription to `me`: each receive waits on it.
    me_watch: CloseWatch,
}

#[async_trait]
impl CommRecv for InprocRecv {
    /// Cancel-safe: `mpsc::Receiver::recv` is.
    async fn recv(&mut self) -> Result<Message, CommError> {
        let closed = || CommError::closed("inproc comm is closed");
        if self.me.is_closed() {
            return Err(closed());
        }
        tokio::select! {
            biased;
            () = self.me_watch.closed() => Err(closed()),
            m = self.rx.recv() => m.ok_or_else(closed),
        }
    }
}

impl Drop for InprocRecv {
    fn drop(&mut self) {
        // Our receiver is gone: the peer's sends must fail rather than fill the queue.
        self.rx.close();
    }
}
