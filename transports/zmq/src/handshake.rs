//! Opening a zmq:// comm: the ZMTP greeting and `READY`, then Courier's hello exchange as
//! `H` messages (see `docs/PROTOCOL.md`, "zmq://").

use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use courier_core::handshake::{FLAG_REQUIRES_CREDENTIAL, Hello};
use courier_core::stream::{Admission, write_all_vectored};
use courier_core::{Address, Comm, CommConfig, CommError, Compression, ErrorKind, PeerInfo, RecvBudget};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::comm::{Liveness, Parts, StreamOutbox, new_comm};
use crate::protocol::{self, HELLO, Incoming};
use crate::zmtp::{self, Budget, Command, Decoder, Event, Step};

/// What a listener's `X` reason starts with when it refuses the peer's credential.
pub(crate) const UNAUTHORIZED: &str = "unauthorized";

/// This side's inbox capacity, announced as its window.
fn window(config: &CommConfig) -> u32 {
    u32::try_from(config.queue_capacity.max(2)).unwrap_or(u32::MAX)
}

fn hello_parts(hello: &Hello, config: &CommConfig) -> Vec<Bytes> {
    vec![protocol::kind(HELLO), hello.encode(), Bytes::copy_from_slice(&window(config).to_le_bytes())]
}

fn decode_hello(bytes: Bytes) -> Result<Hello, CommError> {
    let mut src = BytesMut::from(&bytes[..]);
    Hello::decode(&mut src)?.ok_or_else(|| CommError::protocol("truncated hello"))
}

fn per_connection(config: &CommConfig) -> u64 {
    config.budget.connection_bytes(config.limits.max_message_size)
}

/// A connection during its handshake.
struct Handshaking<R, W> {
    read: R,
    write: W,
    rbuf: BytesMut,
    decoder: Decoder,
    budget: Arc<Mutex<Budget>>,
    peer: Address,
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> Handshaking<R, W> {
    fn new(read: R, write: W, budget: RecvBudget, peer: Address) -> Self {
        Handshaking {
            read,
            write,
            rbuf: BytesMut::with_capacity(4096),
            decoder: Decoder::new(),
            budget: Arc::new(Budget::new(budget)),
            peer,
        }
    }

    async fn write(&mut self, mut chunks: Vec<Bytes>) -> Result<(), CommError> {
        let r = match write_all_vectored(&mut self.write, &mut chunks).await {
            Ok(()) => self.write.flush().await,
            Err(e) => Err(e),
        };
        r.map_err(|e| CommError::from_io(format!("handshake with {}", self.peer), e))
    }

    async fn next(&mut self) -> Result<Event, CommError> {
        loop {
            match self.decoder.decode(&mut self.rbuf, &self.budget)? {
                Step::Event(e) => return Ok(e),
                // Nothing is queued during the handshake, so the budget cannot wait on it.
                Step::NeedBudget => return Err(CommError::new(ErrorKind::FrameTooLarge, "handshake over budget")),
                Step::NeedBytes => {}
            }
            self.rbuf.reserve(4096);
            let n = self
                .read
                .read_buf(&mut self.rbuf)
                .await
                .map_err(|e| CommError::from_io(format!("handshake with {}", self.peer), e))?;
            if n == 0 {
                return Err(CommError::closed(format!("{} closed the connection during the handshake", self.peer)));
            }
        }
    }

    /// The peer's greeting and `READY`, which must announce `socket_type`.
    async fn zmtp(&mut self, socket_type: &str) -> Result<(), CommError> {
        match self.next().await? {
            Event::Greeting => {}
            other => return Err(CommError::protocol(format!("expected a ZMTP greeting, got {other:?}"))),
        }
        match self.next().await? {
            Event::Command(Command::Ready(props)) => {
                let theirs = Command::property(&props, "Socket-Type").unwrap_or_default();
                if !theirs.eq_ignore_ascii_case(socket_type.as_bytes()) {
                    return Err(CommError::protocol(format!(
                        "zmq:// needs a {socket_type} peer, not {:?}",
                        String::from_utf8_lossy(&theirs)
                    )));
                }
                Ok(())
            }
            Event::Command(Command::Error(reason)) => {
                Err(CommError::closed(format!("{} refused the ZMTP handshake: {reason}", self.peer)))
            }
            other => Err(CommError::protocol(format!("expected a ZMTP READY command, got {other:?}"))),
        }
    }

    /// The next Courier-level message of the handshake (answering `PING`s on the way).
    async fn courier(&mut self) -> Result<Incoming, CommError> {
        loop {
            match self.next().await? {
                Event::Message(parts, _) => return protocol::parse(parts),
                Event::Command(Command::Ping { context }) => self.write(vec![zmtp::pong(&context)]).await?,
                Event::Command(Command::Pong | Command::Other(_)) => {}
                Event::Command(Command::Error(reason)) => {
                    return Err(CommError::closed(format!("{} sent a ZMTP ERROR: {reason}", self.peer)));
                }
                other => return Err(CommError::protocol(format!("unexpected {other:?} during the handshake"))),
            }
        }
    }

    /// Tells the peer why it is refused (an `X` message), best effort, and returns `err`.
    async fn refuse(&mut self, err: CommError) -> CommError {
        let mut chunks = Vec::new();
        zmtp::encode_message(&protocol::close_parts(&err.to_string()), &mut chunks);
        let _ = self.write(chunks).await;
        let _ = self.write.shutdown().await;
        err
    }
}

/// Where a comm's ends are and what it runs with.
pub(crate) struct Ends {
    pub(crate) local: Address,
    pub(crate) peer: Address,
    pub(crate) liveness: Liveness,
}

/// The connecting (DEALER) side: sends everything at once, then reads the listener's answer.
pub(crate) async fn connect<R, W>(
    read: R,
    write: W,
    config: &CommConfig,
    ends: Ends,
    identity: &[u8],
) -> Result<Comm, CommError>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let budget = RecvBudget::new(per_connection(config), None);
    let mut h = Handshaking::new(read, write, budget, ends.peer.clone());
    let hello =
        Hello::new(config.limits, Compression::None, config.name.clone()).with_credential(config.credential.as_ref());
    let mut chunks = vec![Bytes::copy_from_slice(&zmtp::greeting()), zmtp::ready("DEALER", Some(identity))];
    zmtp::encode_message(&hello_parts(&hello, config), &mut chunks);
    h.write(chunks).await?;
    h.zmtp("ROUTER").await?;
    let peer = &ends.peer;
    let (theirs, peer_window) = match h.courier().await? {
        Incoming::Hello(bytes, w) => (decode_hello(bytes)?, w),
        Incoming::Close(reason) if reason.starts_with(UNAUTHORIZED) => {
            let why = if config.credential.is_none() {
                format!("{peer} requires a credential (an auth token) and none is configured")
            } else {
                format!("{peer} refused this side's credential")
            };
            return Err(CommError::new(ErrorKind::Unauthorized, why));
        }
        Incoming::Close(reason) => return Err(CommError::closed(format!("{peer} refused the comm: {reason}"))),
        other => return Err(CommError::protocol(format!("expected a hello from {peer}, got {other:?}"))),
    };
    h.decoder.enter_session(config.limits);
    let info = PeerInfo { name: theirs.name.clone(), version: theirs.version, role: None, limits: Some(theirs.limits) };
    Ok(build(h, config, ends, theirs, peer_window, info, None, None))
}

/// The listening (ROUTER) side, for a connection a listener admitted.
pub(crate) async fn accept<R, W>(
    read: R,
    write: W,
    config: &CommConfig,
    ends: Ends,
    admission: Admission,
) -> Result<Comm, CommError>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let mut h = Handshaking::new(read, write, admission.budget(per_connection(config)), ends.peer.clone());
    h.write(vec![Bytes::copy_from_slice(&zmtp::greeting()), zmtp::ready("ROUTER", None)]).await?;
    h.zmtp("DEALER").await?;
    let (theirs, peer_window) = match h.courier().await {
        Ok(Incoming::Hello(bytes, w)) => match decode_hello(bytes) {
            Ok(hello) => (hello, w),
            Err(e) => return Err(h.refuse(e).await),
        },
        Ok(_) => return Err(h.refuse(CommError::protocol("zmq:// peer sent a message before its hello")).await),
        Err(e) if e.kind() == ErrorKind::Protocol || e.kind() == ErrorKind::FrameTooLarge => {
            return Err(h.refuse(e).await);
        }
        Err(e) => return Err(e),
    };
    let mut role = None;
    let checks = config.access.is_some();
    if let Some(access) = &config.access {
        match access.check(&theirs.credential) {
            Some(r) => role = Some(r.to_owned()),
            None => {
                let what =
                    if theirs.credential.is_empty() { "no credential" } else { "a credential not accepted here" };
                let peer = &ends.peer;
                h.refuse(CommError::closed(format!("{UNAUTHORIZED}: this listener requires a credential"))).await;
                return Err(CommError::new(ErrorKind::Unauthorized, format!("{peer} presented {what}")));
            }
        }
    }
    let flags = if checks { FLAG_REQUIRES_CREDENTIAL } else { 0 };
    let ours = Hello::new(config.limits, Compression::None, config.name.clone()).with_flags(flags);
    let mut chunks = Vec::new();
    zmtp::encode_message(&hello_parts(&ours, config), &mut chunks);
    h.write(chunks).await?;
    h.decoder.enter_session(config.limits);
    let info = PeerInfo { name: theirs.name.clone(), version: theirs.version, role, limits: Some(theirs.limits) };
    let first = config.first_message_timeout;
    Ok(build(h, config, ends, theirs, peer_window, info, first, Some(admission)))
}

#[allow(clippy::too_many_arguments, reason = "internal constructor shared by both ends")]
fn build<R, W>(
    h: Handshaking<R, W>,
    config: &CommConfig,
    ends: Ends,
    theirs: Hello,
    peer_window: u32,
    info: PeerInfo,
    first_message_timeout: Option<std::time::Duration>,
    admission: Option<Admission>,
) -> Comm
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let Handshaking { read, write, rbuf, decoder, budget, .. } = h;
    new_comm(Parts {
        read,
        rbuf,
        decoder,
        budget,
        outbox: Arc::new(StreamOutbox::new(write, ends.peer.clone())),
        peer_limits: theirs.limits,
        window: window(config),
        peer_window,
        liveness: ends.liveness,
        first_message_timeout,
        message_timeout: config.message_timeout,
        until_first: admission.as_ref().and_then(Admission::until_first_message),
        slot: admission.map(|a| a.slot()),
        local: ends.local,
        peer: ends.peer,
        info,
    })
}
