//! # courier-shm
//!
//! The `shm://` transport: processes on one host hand large frames to each other through
//! shared memory instead of pushing them through the kernel's socket buffers twice. It is
//! written as an outside plugin, on courier-core's public API only.
//!
//! ## Design
//!
//! A comm is a Unix stream socket carrying Courier's ordinary stream protocol (handshake,
//! codec, budgets, limits: everything unix:// does), plus two *descriptor channels*
//! (`SOCK_SEQPACKET` socket pairs, one per direction) whose far ends the connecting side
//! passes to the listener (`SCM_RIGHTS`) in a two-byte preamble before the handshake. The
//! listener answers with a policy record on its channel. docs/PROTOCOL.md §9 has the bytes.
//!
//! Each frame of at least [`DEFAULT_THRESHOLD`] bytes (configurable) leaves the stream: its
//! place holds an empty frame, and a descriptor frame appended to the message says where it
//! is. Two placements:
//!
//! - **The sender's arena** (the default between processes of the same user): segments of
//!   shared memory (memfds sealed against shrinking and growing, 4 MiB doubling to 256 MiB,
//!   at most 1 GiB per transport by default, an eighth of the memory limit in Courier's
//!   workers) that the sender faults in once and each receiver
//!   maps read-only once. The segments are shared by all the comms of one transport, so a slot
//!   one peer released serves the next frame to any peer. Sending copies the frame into a free
//!   slot (one `memcpy` into resident pages, outside the pool's lock); the receiver's `Bytes`
//!   views the slot in place, and when its last clone is dropped a release record gives the
//!   slot back. When a comm ends while its receiver holds frames, the pool keeps listening on
//!   the comm's channel and frees each slot as the receiver drops its frame, or all of them
//!   once the receiver's end closes (its last frame gone, or its process dead).
//!   A process can also build its large buffers in the arena's slots
//!   ([`ShmTransport::lend_buffers`], which Courier's workers use): such a buffer is sent in
//!   place, with no copy and no memory beyond the buffer itself, its slot counted by
//!   references (the buffer, and each receiver's view) and freed with the last.
//! - **A sealed memfd of its own**: written once with `write(2)`, sealed against writing,
//!   shrinking and growing, mapped read-only by the receiver. No process, the sender
//!   included, can change it after it is sent. Used with peers of another user, when either
//!   side is [`ShmTransport::sealed_only`], and when the arena is full.
//!
//! Why both, by measurement (the shm:// section of results/SUMMARY.md, `examples/costs.rs`):
//! on the VMs the results come from, filling a fresh 64 MiB memfd took 17–35 ms and mapping and
//! freeing it 6–25 ms more, against 4.5–10.5 ms for a warm `memcpy` of 64 MiB: page-cache
//! allocation, not copying, makes sealed frames *slower* than tcp://. Kernel copies that pin pages (a pipe with `vmsplice`,
//! `process_vm_readv`) ran at ~4 GiB/s. Only reused, resident shared pages reach memory
//! speed, and Linux has no way to seal reused pages, so the arena trades one guarantee: a
//! sender can still write to a slot it has sent until the receiver releases it. It cannot
//! shrink a segment (no SIGBUS), pass a wrong descriptor, or make the receiver read outside a
//! segment; and a segment may also hold frames sent to the sender's other peers, which every
//! receiver of that segment could read. The arena is therefore used only with a peer running
//! as the same user
//! (`SO_PEERCRED`), which could already signal, trace or replace this process, and either
//! side can refuse it ([`ShmTransport::sealed_only`]).
//!
//! Shared memory in flight is bounded: the receiver reports the shared bytes of each message
//! it decodes, and a sender waits once [`DEFAULT_WINDOW`] bytes are unreported. An arena that
//! reached its cap (receivers holding its frames) sends further frames sealed.
//!
//! Passing descriptors on their own channels, not on the data stream, leaves the stream path
//! exactly unix://'s (direct reads into aligned buffers, no `recvmsg` per read) and lets a
//! record be checked against its message by number. A Unix socket queues a record at the
//! receiver before `sendmsg` returns and the record is sent before the message's first byte,
//! so the receiver never waits for a record: one that is missing is a protocol error.
//!
//! A peer that breaks the rules — an unsealed or wrong-sized memfd, a descriptor that is not
//! a memfd, more or fewer descriptors than announced, records out of order, a frame outside
//! its segment, an arena frame to a side that refused arenas, a release of a slot it does not
//! hold — gets a `Protocol` error on that comm only; every descriptor received is owned and
//! closed, every mapping dropped with its last frame.
//!
//! Addresses are unix:// addresses with this scheme: `shm:///run/courier.sock` (a path,
//! removed on close), `shm://@name` (an abstract name), `shm://` (listen on a fresh name).

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream as StdStream;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use async_trait::async_trait;
use courier_core::stream::{
    Admission, HandshakingListener, StreamAcceptor, StreamHalves, StreamParts, accept_stream_halves,
    handshake_stream_halves,
};
use courier_core::{Address, CloseSignal, Comm, CommConfig, CommError, Compression, ErrorKind, Listener, Transport};
use socket2::{Domain, SockAddr, Socket, Type};
use tokio::io::Interest;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};

mod arena;
mod channel;
mod comm;
mod frame;
mod memory;

pub use arena::{MAX_RELEASES_PER_RECORD, MAX_SEGMENTS, RELEASE_MAGIC};
pub use channel::{MAX_FDS_PER_MESSAGE, RECORD_LEN, RECORD_MAGIC};
pub use memory::{SharedMemory, resident_memory, shared_memory};

/// The preamble a connecting side sends (with its two channel ends attached).
pub fn preamble(accepts_arena: bool) -> [u8; 2] {
    [PREAMBLE, if accepts_arena { FLAG_ACCEPTS_ARENA } else { 0 }]
}
pub use comm::{
    DESCRIPTOR_HEAD_LEN, DESCRIPTOR_MAGIC, Descriptor, ENTRY_LEN, MAX_SHARED_FRAMES, Placement, SEGMENT_ENTRY_LEN,
    Shared,
};

/// The scheme this crate serves.
pub const SCHEME: &str = "shm";
/// Frames at least this large travel through shared memory by default; smaller ones are as
/// cheap through the socket, with no slot to release.
pub const DEFAULT_THRESHOLD: usize = 256 * 1024;
/// The preamble's first byte; the preamble carries the descriptor channels.
pub const PREAMBLE: u8 = b'S';
/// Preamble and policy flag: this side accepts frames in its peer's arena.
pub const FLAG_ACCEPTS_ARENA: u8 = 1;
/// Magic of the listener's policy record.
pub const POLICY_MAGIC: [u8; 4] = *b"CRPO";

/// Raw pieces for tests that play a hostile peer: the framing helpers this transport uses.
pub mod raw {
    use super::*;

    /// A descriptor-channel socket pair: (this side's end, the end to pass).
    pub fn channel_pair() -> io::Result<(OwnedFd, OwnedFd)> {
        channel::pair()
    }

    /// Sends `bytes` with `fds` attached (`SCM_RIGHTS`) on a non-blocking socket.
    pub fn send_with_fds(sock: impl AsFd, bytes: &[u8], fds: &[OwnedFd]) -> io::Result<usize> {
        channel::send_with_fds(sock, bytes, fds)
    }

    /// A descriptor-channel record body for `count` descriptors of message `seq`.
    pub fn record(count: u32, seq: u64) -> [u8; RECORD_LEN] {
        channel::record_body(count as usize, seq)
    }

    /// Parses a release record's body: bytes received since the previous record, and the
    /// (segment, offset) pairs it releases.
    pub fn parse_release_record(body: &[u8]) -> Result<(u64, Vec<(u32, u64)>), CommError> {
        arena::parse_releases(body)
    }

    /// Parses a frame record's body that came with `fds` descriptors: its record number.
    pub fn parse_frame_record(body: &[u8], fds: usize) -> Result<u64, CommError> {
        channel::parse_record(body, fds)
    }

    /// `data` copied into a sealed memfd, as a sender makes it.
    pub fn sealed_frame(data: &[u8]) -> io::Result<OwnedFd> {
        frame::seal_copy(data)
    }
}

static NAMES: AtomicU64 = AtomicU64::new(0);

fn fresh_abstract(prefix: &str) -> String {
    format!("courier-shm-{prefix}-{}-{}", std::process::id(), NAMES.fetch_add(1, Ordering::Relaxed))
}

/// Where an shm:// address points.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Path(PathBuf),
    Abstract(String),
}

impl Target {
    fn parse(addr: &Address) -> Result<Target, CommError> {
        if addr.scheme() != SCHEME {
            return Err(CommError::invalid_address(&addr.to_string(), "not an shm:// address"));
        }
        let loc = addr.location();
        if let Some(name) = loc.strip_prefix('@') {
            if name.is_empty() || name.len() > 100 {
                return Err(CommError::invalid_address(&addr.to_string(), "abstract names are 1 to 100 bytes"));
            }
            Ok(Target::Abstract(name.to_owned()))
        } else if loc.starts_with('/') {
            if loc.len() > 100 {
                return Err(CommError::invalid_address(&addr.to_string(), "socket paths are at most 100 bytes"));
            }
            Ok(Target::Path(PathBuf::from(loc)))
        } else {
            Err(CommError::invalid_address(&addr.to_string(), "expected shm:///absolute/path or shm://@abstract-name"))
        }
    }

    fn sock_addr(&self) -> io::Result<SockAddr> {
        use std::os::unix::ffi::OsStrExt;
        match self {
            Target::Path(p) => SockAddr::unix(p),
            Target::Abstract(name) => {
                let mut bytes = vec![0u8];
                bytes.extend_from_slice(name.as_bytes());
                SockAddr::unix(std::ffi::OsStr::from_bytes(&bytes))
            }
        }
    }

    fn address(&self) -> Address {
        let loc = match self {
            Target::Path(p) => p.to_string_lossy().into_owned(),
            Target::Abstract(n) => format!("@{n}"),
        };
        Address::new(SCHEME, &loc).unwrap_or_else(|_| Address::new(SCHEME, "@unnamed").expect("valid"))
    }

    fn of(stream: &UnixStream, peer: bool) -> Address {
        let sock = socket2::SockRef::from(stream);
        let a = if peer { sock.peer_addr() } else { sock.local_addr() };
        a.ok()
            .and_then(|a| {
                if let Some(p) = a.as_pathname() {
                    return Some(Target::Path(p.to_owned()));
                }
                a.as_abstract_namespace().map(|n| Target::Abstract(String::from_utf8_lossy(n).into_owned()))
            })
            .map_or_else(|| Address::new(SCHEME, "@unnamed").expect("valid"), |t| t.address())
    }
}

/// Most bytes of arena segments a transport (all the comms it sends on) keeps by default.
pub const DEFAULT_ARENA_CAP: usize = 1 << 30;
/// Most bytes of shared frames a comm's sender has in flight (sent, not yet received) by
/// default; a larger frame is sent alone.
///
/// 16 MiB: two 8 MiB frames or sixteen of 1 MiB. By hand between two processes (`courier
/// perf`, heap payloads, two rounds of 3 runs, medians), against 64 MiB: 1 MiB frames 6.6
/// and 7.1 GiB/s against 5.9 and 6.1, with a 28 MiB arena instead of 124 MiB; 8 MiB frames
/// 12.3 against 11.6 and 12.1, with 32 MiB instead of 128 MiB; 64 MiB frames (sent alone
/// either way) 7.2 against 6.9. An 8 MiB window slowed 8 MiB frames to 11.2 (one in flight).
pub const DEFAULT_WINDOW: u64 = 16 << 20;

/// The shm:// transport.
#[derive(Debug, Clone)]
pub struct ShmTransport {
    threshold: usize,
    /// The arena's segments, shared by every comm of this transport (and its clones).
    pool: Arc<arena::Pool>,
    accept_arena: bool,
}

impl Default for ShmTransport {
    fn default() -> Self {
        ShmTransport { threshold: DEFAULT_THRESHOLD, pool: arena::Pool::new(DEFAULT_ARENA_CAP), accept_arena: true }
    }
}

impl ShmTransport {
    /// The transport, sharing frames of at least [`DEFAULT_THRESHOLD`] bytes through an arena
    /// of at most [`DEFAULT_ARENA_CAP`] bytes shared by all its comms (with peers of the same
    /// user).
    pub fn new() -> Self {
        Self::default()
    }

    /// Shares frames of at least `bytes` bytes (at least 1); smaller ones travel on the
    /// socket.
    pub fn with_threshold(mut self, bytes: usize) -> Self {
        self.threshold = bytes.max(1);
        self
    }

    /// Keeps at most `bytes` of arena segments per comm (0: no arena, every shared frame in
    /// a sealed memfd of its own). Applies to what this side sends.
    pub fn with_arena_cap(mut self, bytes: usize) -> Self {
        self.pool = arena::Pool::new(bytes);
        self
    }

    /// No arena either way: every shared frame, sent or received, in a sealed memfd that no
    /// process can change after it is sent. Peers learn this in the preamble and its answer,
    /// and a peer that sends an arena frame anyway gets a protocol error.
    pub fn sealed_only(mut self) -> Self {
        self.pool = arena::Pool::new(0);
        self.accept_arena = false;
        self
    }

    /// Lends this transport's arena to every large buffer this process makes from now on
    /// (courier-core's [`set_buffer_source`](courier_core::aligned::set_buffer_source)):
    /// arrays built with `WireArray::from_c_order_chunks`, frames received into aligned
    /// buffers. Such a buffer, sent on an shm:// comm of this transport to a peer that accepts
    /// arenas, goes in place: no copy, and no memory beyond the buffer itself. Lent slots hold
    /// at most 3/4 of the arena's cap; past that, and with no arena ([`Self::sealed_only`], a
    /// cap of 0), buffers come from the heap as before. Process-wide: meant for a worker's
    /// `main`, once.
    pub fn lend_buffers(&self) {
        if self.pool.cap() > 0 {
            courier_core::aligned::set_buffer_source(Some(Arc::new(arena::Lender(self.pool.clone()))));
        }
    }

    /// Gives the memory of the arena's free slots back to the system and returns how many
    /// bytes that freed (0 without an arena). Slots in use (frames a receiver holds, lent
    /// buffers) are untouched. The arena stays as large: a frame placed in a trimmed slot
    /// faults fresh pages in, as a new segment's do (20–30 ms per 64 MiB on the VMs the results
    /// come from, against 5–10 ms for a copy into resident pages), so this is for memory
    /// pressure, not routine. Courier's workers call it before they spill results.
    pub fn trim_arena(&self) -> u64 {
        self.pool.trim()
    }

    /// Frames this transport (and its clones) sent in place from lent buffers, so far.
    pub fn frames_sent_in_place(&self) -> u64 {
        self.pool.sent_in_place()
    }

    fn flags(&self) -> u8 {
        if self.accept_arena { FLAG_ACCEPTS_ARENA } else { 0 }
    }
}

/// The listener's answer to a preamble, on the channel it sends frames on: magic, its flags.
fn policy_record(flags: u8) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..4].copy_from_slice(&POLICY_MAGIC);
    b[4] = flags;
    b
}

/// A comm's two descriptor channel ends: frames this side sends (records out, releases in),
/// and frames it receives (records in, releases out).
#[derive(Debug)]
struct Channels {
    send: OwnedFd,
    recv: OwnedFd,
    /// The peer runs as this process's user (`SO_PEERCRED`).
    same_user: bool,
    /// The peer accepts frames in this side's arena (its preamble or policy flags).
    peer_accepts_arena: bool,
}

/// The read half with the descriptor channels received in the preamble, until the
/// handshake takes them.
#[derive(Debug)]
pub(crate) struct PreambleRead {
    half: OwnedReadHalf,
    channels: Option<Channels>,
}

impl AsyncRead for PreambleRead {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.half).poll_read(cx, buf)
    }
}

fn same_user(stream: &UnixStream) -> bool {
    rustix::net::sockopt::socket_peercred(stream).is_ok_and(|c| c.uid == rustix::process::getuid())
}

fn parts(
    stream: UnixStream,
    send: OwnedFd,
    recv: OwnedFd,
    peer_flags: u8,
) -> StreamParts<PreambleRead, OwnedWriteHalf> {
    let local = Target::of(&stream, false);
    let peer = Target::of(&stream, true);
    let same_user = same_user(&stream);
    let (read, write) = stream.into_split();
    let peer_accepts_arena = peer_flags & FLAG_ACCEPTS_ARENA != 0;
    StreamParts {
        read: PreambleRead { half: read, channels: Some(Channels { send, recv, same_user, peer_accepts_arena }) },
        write,
        local,
        peer,
        default_compression: Compression::None,
    }
}

/// Builds the shm comm over a handshaken stream comm and this side's channel ends.
fn wrap(
    comm: StreamHalves<PreambleRead, OwnedWriteHalf>,
    channels: Channels,
    config: &CommConfig,
    t: &ShmTransport,
) -> Result<Comm, CommError> {
    let register = |fd| {
        channel::Channel::new(fd).map(Arc::new).map_err(|e| CommError::from_io("registering the descriptor channel", e))
    };
    let (send_channel, recv_channel) = (register(channels.send)?, register(channels.recv)?);
    let StreamHalves { send: tx, recv: rx, local, peer, info } = comm;
    let close = CloseSignal::new();
    let arena = (channels.same_user && channels.peer_accepts_arena && t.pool.cap() > 0)
        .then(|| arena::Arena::new(t.pool.clone()));
    let send = comm::ShmSend {
        inner: tx,
        channel: send_channel,
        arena,
        peer_limits: info.limits,
        threshold: t.threshold,
        seq: 0,
        close: close.clone(),
        in_flight: 0,
        window: DEFAULT_WINDOW,
    };
    let recv = comm::ShmRecv {
        inner: rx,
        releaser: arena::Releaser::new(recv_channel.clone()),
        channel: recv_channel,
        segments: std::collections::HashMap::new(),
        segment_bytes: 0,
        arena_ok: channels.same_user && t.accept_arena,
        limits: config.limits,
        seq: 0,
        failed: None,
        close,
        peer: peer.clone(),
    };
    Ok(Comm::new(Box::new(send), Box::new(recv), local, peer, info))
}

#[async_trait]
impl Transport for ShmTransport {
    fn scheme(&self) -> &str {
        SCHEME
    }

    async fn connect(&self, addr: &Address, config: &CommConfig) -> Result<Comm, CommError> {
        let target = Target::parse(addr)?;
        let remote = target.sock_addr().map_err(|e| CommError::invalid_address(&addr.to_string(), e))?;
        let me = Target::Abstract(fresh_abstract("client"));
        let local = me.sock_addr().map_err(|e| CommError::from_io("naming the client socket", e))?;
        let connecting = tokio::task::spawn_blocking(move || -> io::Result<StdStream> {
            let s = Socket::new(Domain::UNIX, Type::STREAM, None)?;
            s.bind(&local)?;
            s.connect(&remote)?;
            s.set_nonblocking(true)?;
            Ok(s.into())
        });
        let std = match tokio::time::timeout(config.connect_timeout, connecting).await {
            Ok(Ok(Ok(s))) => s,
            Ok(Ok(Err(e))) => {
                let e = if e.kind() == io::ErrorKind::NotFound {
                    io::Error::from(io::ErrorKind::ConnectionRefused)
                } else {
                    e
                };
                return Err(CommError::from_io(format!("connecting to {addr}"), e));
            }
            Ok(Err(join)) => return Err(CommError::new(ErrorKind::Io, format!("connect task failed: {join}"))),
            Err(_) => return Err(CommError::new(ErrorKind::ConnectTimeout, format!("connecting to {addr} timed out"))),
        };
        let stream = UnixStream::from_std(std).map_err(|e| CommError::from_io("registering a unix socket", e))?;
        let pair = || channel::pair().map_err(|e| CommError::from_io("creating the descriptor channel", e));
        // Channel 0 carries what this side sends, channel 1 what it receives.
        let ((send, send_far), (recv, recv_far)) = (pair()?, pair()?);
        let theirs = [send_far, recv_far];
        let preamble = async {
            loop {
                stream.writable().await?;
                match stream
                    .try_io(Interest::WRITABLE, || channel::send_with_fds(&stream, &[PREAMBLE, self.flags()], &theirs))
                {
                    Ok(_) => return Ok::<_, io::Error>(()),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(e),
                }
            }
        };
        match tokio::time::timeout(config.handshake_timeout, preamble).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(CommError::from_io(format!("sending the descriptor channel to {addr}"), e)),
            Err(_) => return Err(CommError::new(ErrorKind::HandshakeTimeout, format!("{addr} accepted no preamble"))),
        }
        drop(theirs);
        let mut parts = parts(stream, send, recv, 0);
        let mut channels = parts.read.channels.take().expect("just put");
        let comm = handshake_stream_halves(parts, config).await?;
        // The listener answered the preamble before its hello: its policy is queued here.
        let mut policy = [0u8; 17];
        let got = channel::recv_with_fds(&channels.recv, &mut policy, 1)
            .map_err(|e| CommError::protocol(format!("{addr} sent no shm policy ({e})")))?;
        if got.len != 16 || !got.fds.is_empty() || policy[..4] != POLICY_MAGIC || policy[4] & !FLAG_ACCEPTS_ARENA != 0 {
            return Err(CommError::protocol(format!("{addr} sent a malformed shm policy")));
        }
        channels.peer_accepts_arena = policy[4] & FLAG_ACCEPTS_ARENA != 0;
        wrap(comm, channels, config, self)
    }

    async fn listen(&self, addr: &Address, config: &CommConfig) -> Result<Box<dyn Listener>, CommError> {
        let target = if addr.location().is_empty() {
            if addr.scheme() != SCHEME {
                return Err(CommError::invalid_address(&addr.to_string(), "not an shm:// address"));
            }
            Target::Abstract(fresh_abstract("listener"))
        } else {
            Target::parse(addr)?
        };
        let sa = target.sock_addr().map_err(|e| CommError::invalid_address(&addr.to_string(), e))?;
        let socket = Socket::new(Domain::UNIX, Type::STREAM, None)
            .map_err(|e| CommError::from_io("creating a unix socket", e))?;
        socket.bind(&sa).map_err(|e| CommError::from_io(format!("binding {addr}"), e))?;
        socket.listen(1024).map_err(|e| CommError::from_io(format!("listening on {addr}"), e))?;
        socket.set_nonblocking(true).map_err(|e| CommError::from_io("configuring a unix socket", e))?;
        let std: std::os::unix::net::UnixListener = socket.into();
        let listener = UnixListener::from_std(std).map_err(|e| CommError::from_io("registering a unix listener", e))?;
        let contact = target.address();
        let path = match &target {
            Target::Path(p) => Some(p.clone()),
            Target::Abstract(_) => None,
        };
        let acceptor = ShmAcceptor { listener, transport: self.clone() };
        let inner = HandshakingListener::spawn(acceptor, addr.clone(), contact, config.clone());
        Ok(Box::new(inner.removing_on_close(path)))
    }
}

struct ShmAcceptor {
    listener: UnixListener,
    transport: ShmTransport,
}

/// Reads the preamble: two bytes, [`PREAMBLE`] and the peer's flags, carrying exactly two
/// descriptors, Unix seqpacket sockets: the channel of what the peer sends, then of what it
/// receives. Anything else refuses the connection. Returns (this side's send channel, its
/// receive channel, the peer's flags).
async fn read_preamble(conn: &UnixStream) -> Result<(OwnedFd, OwnedFd, u8), CommError> {
    let mut byte = [0u8; 2];
    let got = loop {
        conn.readable().await.map_err(|e| CommError::from_io("waiting for the preamble", e))?;
        match conn.try_io(Interest::READABLE, || channel::recv_with_fds(conn, &mut byte, 3)) {
            Ok(r) if r.len == 0 && r.fds.is_empty() => {
                return Err(CommError::closed("the peer closed the connection before its preamble"));
            }
            Ok(r)
                if byte[0] == PREAMBLE
                    && byte[1] & !FLAG_ACCEPTS_ARENA == 0
                    && r.len == 2
                    && r.fds.len() == 2
                    && !r.truncated =>
            {
                break r;
            }
            Ok(r) => {
                return Err(CommError::protocol(format!(
                    "a malformed shm preamble (byte {:#04x}, {} descriptors); is the peer using unix://?",
                    byte[0],
                    r.fds.len()
                )));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(CommError::from_io("reading the preamble", e)),
        }
    };
    let mut fds = got.fds.into_iter();
    let (theirs_out, theirs_in) = (fds.next().expect("checked two"), fds.next().expect("checked two"));
    channel::check_end(&theirs_out)?;
    channel::check_end(&theirs_in)?;
    Ok((theirs_in, theirs_out, byte[1]))
}

#[async_trait]
impl StreamAcceptor for ShmAcceptor {
    type Conn = UnixStream;
    type Read = PreambleRead;
    type Write = OwnedWriteHalf;

    async fn accept_raw(&self) -> io::Result<UnixStream> {
        self.listener.accept().await.map(|(s, _)| s)
    }

    async fn upgrade(&self, conn: UnixStream) -> Result<StreamParts<PreambleRead, OwnedWriteHalf>, CommError> {
        let (send, recv, flags) = read_preamble(&conn).await?;
        // Answered before the hello, so the peer finds it queued once its handshake is done.
        channel::send_with_fds(&send, &policy_record(self.transport.flags()), &[])
            .map_err(|e| CommError::from_io("answering the preamble", e))?;
        Ok(parts(conn, send, recv, flags))
    }

    async fn readable(&self, conn: &UnixStream) -> io::Result<()> {
        conn.readable().await
    }

    async fn handshake(
        &self,
        mut parts: StreamParts<PreambleRead, OwnedWriteHalf>,
        config: &CommConfig,
        admission: Admission,
    ) -> Result<Comm, CommError> {
        let channels = parts.read.channels.take().ok_or_else(|| CommError::protocol("no descriptor channel"))?;
        let comm = accept_stream_halves(parts, config, admission).await?;
        wrap(comm, channels, config, &self.transport)
    }
}
