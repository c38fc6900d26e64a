//! Comms: full-duplex message channels that split into owned send and receive halves.
//!
//! A transport implements [`CommSend`] and [`CommRecv`]; users hold a [`Comm`] (or its two
//! halves after [`Comm::split`]) and never see the transport's types.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use atomic_waker::AtomicWaker;
use tokio::sync::Notify;

use crate::address::Address;
use crate::error::{CommError, ErrorKind};
use crate::message::Message;

/// The sending half a transport implements.
///
/// # Note for implementers
/// - `send` resolves once the message is handed to the transport (written to the socket or
///   queued in a bounded queue); it must apply back-pressure, never buffer without bound.
/// - A dead or closed peer is `ErrorKind::Closed`. A message the peer would reject by its
///   limits fails with `FrameTooLarge` *before* anything is written, leaving the comm usable.
/// - `send` need not be cancel-safe: if its future is dropped midway the comm may be left
///   unusable, and later sends must then fail with `Closed` rather than corrupt the stream.
/// - `close` flushes, tells the peer (so its receives end with `Closed`), wakes this side's
///   own receive half (through the [`CloseSignal`] shared with it), and is idempotent.
#[async_trait]
pub trait CommSend: Send + fmt::Debug {
    /// Sends one whole message.
    async fn send(&mut self, msg: Message) -> Result<(), CommError>;
    /// Closes the comm in both directions. Calling it again is fine.
    async fn close(&mut self) -> Result<(), CommError>;

    /// Whether this comm hands [`Message::local`] values to its peer as they are (both ends in
    /// one process: inproc://). Senders may then skip serialization; [`Comm::send`] refuses
    /// local values on every other comm.
    fn carries_local_values(&self) -> bool {
        false
    }
}

fn check_local(send: &dyn CommSend, msg: &Message) -> Result<(), CommError> {
    if msg.local.is_some() && !send.carries_local_values() {
        return Err(CommError::new(
            ErrorKind::Serialization,
            "a process-local value cannot be sent on this comm: serialize it (to_message)",
        ));
    }
    Ok(())
}

/// The receiving half a transport implements.
///
/// # Note for implementers
/// `recv` must be **cancel-safe**: when its future is dropped before completing (it is used in
/// `select!`), no message may be lost or corrupted; the next call returns the next message.
/// Keep all partial-message state in `self`, never in the future. When the peer closes or dies,
/// and when this side's send half is closed, `recv` returns `ErrorKind::Closed`.
#[async_trait]
pub trait CommRecv: Send + fmt::Debug {
    /// Receives the next whole message.
    async fn recv(&mut self) -> Result<Message, CommError>;
}

/// Facts about the other end of a comm, learnt in the handshake.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PeerInfo {
    /// The name the peer gave (may be empty).
    pub name: String,
    /// The peer's wire version (0 for transports without a wire, such as inproc://).
    pub version: u16,
    /// The role the peer's credential grants, when this side checked one (see
    /// [`AccessList`](crate::AccessList)); `None` when nothing was checked.
    pub role: Option<String>,
    /// The receive limits the peer announced in the handshake (`None` for transports without
    /// a wire). Transports that move some frames outside the stream codec (shm://) check
    /// messages against these before sending, as the codec does.
    pub limits: Option<crate::Limits>,
}

/// A full-duplex comm: one message at a time in each direction, usable from one task, or
/// [`split`](Comm::split) into halves owned by two tasks (one sends a 64 MiB array while the
/// other receives).
pub struct Comm {
    send: Box<dyn CommSend>,
    recv: Box<dyn CommRecv>,
    local: Address,
    peer: Address,
    info: PeerInfo,
}

impl fmt::Debug for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Comm").field("local", &self.local).field("peer", &self.peer).finish_non_exhaustive()
    }
}

impl Comm {
    /// Assembles a comm from a transport's halves.
    pub fn new(
        send: Box<dyn CommSend>,
        recv: Box<dyn CommRecv>,
        local: Address,
        peer: Address,
        info: PeerInfo,
    ) -> Self {
        Comm { send, recv, local, peer, info }
    }

    /// This end's address.
    pub fn local_address(&self) -> &Address {
        &self.local
    }

    /// The other end's address.
    pub fn peer_address(&self) -> &Address {
        &self.peer
    }

    /// What the peer said in the handshake.
    pub fn peer_info(&self) -> &PeerInfo {
        &self.info
    }

    /// Sends one message. See [`CommSend::send`]. A [local value](Message::from_local) on a
    /// comm that does not [carry them](Comm::carries_local_values) is a `Serialization` error.
    pub async fn send(&mut self, msg: Message) -> Result<(), CommError> {
        check_local(&*self.send, &msg)?;
        self.send.send(msg).await
    }

    /// See [`CommSend::carries_local_values`].
    pub fn carries_local_values(&self) -> bool {
        self.send.carries_local_values()
    }

    /// Receives one message. Cancel-safe. See [`CommRecv::recv`].
    pub async fn recv(&mut self) -> Result<Message, CommError> {
        self.recv.recv().await
    }

    /// Closes the comm; idempotent.
    pub async fn close(&mut self) -> Result<(), CommError> {
        self.send.close().await
    }

    /// Splits into owned halves. Closing the sender also ends the receiver's pending `recv`.
    pub fn split(self) -> (CommSender, CommReceiver) {
        let peer = self.peer;
        (CommSender { inner: self.send, peer: peer.clone() }, CommReceiver { inner: self.recv, peer, info: self.info })
    }
}

/// The owned send half of a [`Comm`].
#[derive(Debug)]
pub struct CommSender {
    inner: Box<dyn CommSend>,
    peer: Address,
}

impl CommSender {
    /// Sends one message (see [`Comm::send`]).
    pub async fn send(&mut self, msg: Message) -> Result<(), CommError> {
        check_local(&*self.inner, &msg)?;
        self.inner.send(msg).await
    }

    /// See [`CommSend::carries_local_values`].
    pub fn carries_local_values(&self) -> bool {
        self.inner.carries_local_values()
    }

    /// Closes the comm in both directions; idempotent.
    pub async fn close(&mut self) -> Result<(), CommError> {
        self.inner.close().await
    }

    /// The other end's address.
    pub fn peer_address(&self) -> &Address {
        &self.peer
    }
}

/// The owned receive half of a [`Comm`].
#[derive(Debug)]
pub struct CommReceiver {
    inner: Box<dyn CommRecv>,
    peer: Address,
    info: PeerInfo,
}

impl CommReceiver {
    /// Receives one message. Cancel-safe.
    pub async fn recv(&mut self) -> Result<Message, CommError> {
        self.inner.recv().await
    }

    /// The other end's address.
    pub fn peer_address(&self) -> &Address {
        &self.peer
    }

    /// What the peer said in the handshake.
    pub fn peer_info(&self) -> &PeerInfo {
        &self.info
    }
}

/// A one-way "closed" flag shared by the halves of a comm, which a pending receive can await.
#[derive(Debug, Clone, Default)]
pub struct CloseSignal {
    inner: Arc<SignalInner>,
}

#[derive(Debug, Default)]
struct SignalInner {
    closed: AtomicBool,
    notify: Notify,
    /// The wakers of [`CloseWatch`]es, woken on close (entries of dropped watches are pruned
    /// as new ones subscribe).
    watches: std::sync::Mutex<Vec<std::sync::Weak<AtomicWaker>>>,
}

impl CloseSignal {
    /// A new, open signal.
    pub fn new() -> Self {
        Self::default()
    }

    /// Marks closed and wakes every waiter. Idempotent.
    pub fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
        self.inner.notify.notify_waiters();
        let watches = self.inner.watches.lock().unwrap_or_else(|p| p.into_inner());
        for w in watches.iter().filter_map(std::sync::Weak::upgrade) {
            w.wake();
        }
    }

    /// True once closed.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire)
    }

    /// Resolves once closed. Cancel-safe.
    pub async fn closed(&self) {
        loop {
            let notified = self.inner.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_closed() {
                return;
            }
            notified.await;
        }
    }

    /// A subscription for one task that waits on this signal again and again (a comm's receive
    /// loop): each wait only stores the task's waker, where [`CloseSignal::closed`] enters and
    /// leaves a waiter list under a lock every time.
    pub fn watch(&self) -> CloseWatch {
        let waker = Arc::new(AtomicWaker::new());
        let mut watches = self.inner.watches.lock().unwrap_or_else(|p| p.into_inner());
        watches.retain(|w| w.strong_count() > 0);
        watches.push(Arc::downgrade(&waker));
        CloseWatch { signal: self.clone(), waker }
    }
}

/// One task's subscription to a [`CloseSignal`] (see [`CloseSignal::watch`]).
#[derive(Debug)]
pub struct CloseWatch {
    signal: CloseSignal,
    waker: Arc<AtomicWaker>,
}

impl CloseWatch {
    /// Ready once the signal is closed; otherwise the task is woken when it closes.
    pub fn poll_closed(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        if self.signal.is_closed() {
            return std::task::Poll::Ready(());
        }
        self.waker.register(cx.waker());
        // Closed between the check and the registration: `close` may have woken nobody.
        if self.signal.is_closed() { std::task::Poll::Ready(()) } else { std::task::Poll::Pending }
    }

    /// Resolves once the signal is closed. Cancel-safe.
    pub async fn closed(&self) {
        std::future::poll_fn(|cx| self.poll_closed(cx)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn close_signal_wakes_waiters_and_stays_closed() {
        let s = CloseSignal::new();
        let w = tokio::spawn({
            let s = s.clone();
            async move { s.closed().await }
        });
        tokio::task::yield_now().await;
        s.close();
        w.await.unwrap();
        s.close();
        s.closed().await;
        assert!(s.is_closed());
    }

    #[test]
    fn a_watch_wakes_on_close_however_often_it_waited() {
        struct Flag(AtomicBool);
        impl std::task::Wake for Flag {
            fn wake(self: Arc<Self>) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let s = CloseSignal::new();
        let watch = s.watch();
        // Waits abandoned before the close (as a receive loop's select! drops them).
        for _ in 0..3 {
            let mut wait = Box::pin(watch.closed());
            assert!(futures_poll_once(wait.as_mut()).is_none());
        }
        let dropped = s.watch();
        drop(dropped);
        // A pending wait, then the close: its task is woken and the wait is ready.
        let flag = Arc::new(Flag(AtomicBool::new(false)));
        let waker = std::task::Waker::from(flag.clone());
        let mut cx = std::task::Context::from_waker(&waker);
        let mut wait = Box::pin(watch.closed());
        assert!(wait.as_mut().poll(&mut cx).is_pending());
        s.close();
        assert!(flag.0.load(Ordering::SeqCst), "close woke the waiting task");
        assert!(wait.as_mut().poll(&mut cx).is_ready());
        drop(wait);
        drop(watch);
        // A watch made after the close is ready at once; dropped watches were pruned.
        let late = s.watch();
        assert!(futures_poll_once(std::pin::pin!(late.closed())).is_some());
        assert_eq!(s.inner.watches.lock().unwrap().len(), 1, "the dropped watches are gone");
    }

    fn futures_poll_once<F: std::future::Future>(f: std::pin::Pin<&mut F>) -> Option<F::Output> {
        let waker = std::task::Waker::noop();
        match f.poll(&mut std::task::Context::from_waker(waker)) {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        }
    }

    fn assert_send<T: Send>(_: &T) {}

    #[allow(dead_code, reason = "compile-time check only")]
    fn public_futures_are_send(comm: &mut Comm, tx: &mut CommSender, rx: &mut CommReceiver) {
        assert_send(&comm.send(Message::default()));
        assert_send(&comm.recv());
        assert_send(&tx.send(Message::default()));
        assert_send(&rx.recv());
    }
}
