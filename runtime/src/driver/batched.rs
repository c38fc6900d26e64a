//! The batched sender: one per peer, for the scheduler, workers and clients alike.
//!
//! [`Outbox::push`] appends a message and returns at once; it never waits for the peer.
//! A background task writes everything that accumulated while the previous write was in
//! flight as one Courier message (a batch), so under load messages coalesce and when idle
//! each goes out immediately (after [`Outbox::flush`]). A peer that does not read lets its
//! backlog grow; past the bound the outbox gives up: the comm is closed and every later push
//! fails with [`PushError::Overflow`], so the owner drops that peer instead of waiting on it.
//! Dask's `batched.py` (`BatchedSend.send` "completes quickly and synchronously") is the
//! model; the difference is the bound.

use std::future::Future;
use std::sync::{Arc, Mutex};

use courier_core::{CloseSignal, CommError, CommSender, ErrorKind, Message, to_message};
use serde::Serialize;
use tokio::sync::Notify;

/// Most messages written as one batch.
const MAX_BATCH: usize = 8192;

/// Why a message was not queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PushError {
    /// The peer's backlog passed the bound; the comm has been closed.
    #[error("the peer's outbox passed {0} unsent messages; it was disconnected")]
    Overflow(usize),
    /// The comm is closed.
    #[error("the comm is closed")]
    Closed,
}

#[derive(Debug)]
struct State<T> {
    items: Vec<T>,
    overflowed: bool,
    closing: bool,
    /// Why the comm could not be opened, if it could not.
    failure: Option<(ErrorKind, String)>,
}

#[derive(Debug)]
struct Shared<T> {
    state: Mutex<State<T>>,
    wake: Notify,
    drained: Notify,
    closed: CloseSignal,
    limit: usize,
}

impl<T> Shared<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A batched, bounded, never-blocking sender of `T`s to one peer. Cloning shares it.
#[derive(Debug)]
pub(crate) struct Outbox<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Clone for Outbox<T> {
    fn clone(&self) -> Self {
        Outbox { shared: self.shared.clone() }
    }
}

impl<T: Serialize + Send + Sync + 'static> Outbox<T> {
    /// An outbox writing to `tx`, cut off past `limit` unsent messages.
    pub(crate) fn spawn(tx: CommSender, limit: usize, label: String) -> Self {
        Self::spawn_lazy(async move { Ok(tx) }, limit, label)
    }

    /// An outbox whose comm is still being opened by `connect`; messages pushed meanwhile
    /// are sent once it is open, or fail with it.
    pub(crate) fn spawn_lazy(
        connect: impl Future<Output = Result<CommSender, CommError>> + Send + 'static,
        limit: usize,
        label: String,
    ) -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::new(State { items: Vec::new(), overflowed: false, closing: false, failure: None }),
            wake: Notify::new(),
            drained: Notify::new(),
            closed: CloseSignal::new(),
            limit: limit.max(1),
        });
        let writer = shared.clone();
        tokio::spawn(async move {
            let mut tx = tokio::select! {
                () = writer.closed.closed() => return,
                c = connect => match c {
                    Ok(tx) => tx,
                    Err(e) => {
                        tracing::debug!(peer = %label, error = %e, "could not open the comm");
                        writer.lock().failure = Some((e.kind(), e.to_string()));
                        writer.closed.close();
                        writer.drained.notify_waiters();
                        return;
                    }
                },
            };
            write_loop(&writer, &mut tx, &label).await;
            writer.closed.close();
            writer.drained.notify_waiters();
            let _ = tx.close().await;
        });
        Outbox { shared }
    }

    /// Queues `item` without waking the writer (call [`Outbox::flush`] after a burst).
    pub(crate) fn push(&self, item: T) -> Result<(), PushError> {
        self.queue(item, |_, item| Some(item))
    }

    /// Queues `item` and wakes the writer, first offering it to `merge` with the last message
    /// still queued: `merge` folds it into that message and returns `None`, or hands it back
    /// to be queued on its own. Order is kept (only the message right before it may absorb
    /// it), and a burst of mergeable messages reaches the peer as one.
    pub(crate) fn send_merging(&self, item: T, merge: impl FnOnce(&mut T, T) -> Option<T>) -> Result<(), PushError> {
        self.queue(item, merge)?;
        self.flush();
        Ok(())
    }

    fn queue(&self, item: T, merge: impl FnOnce(&mut T, T) -> Option<T>) -> Result<(), PushError> {
        let mut s = self.shared.lock();
        if s.overflowed {
            return Err(PushError::Overflow(self.shared.limit));
        }
        if s.closing || self.shared.closed.is_closed() {
            return Err(PushError::Closed);
        }
        let item = match s.items.last_mut() {
            Some(last) => match merge(last, item) {
                Some(item) => item,
                None => return Ok(()),
            },
            None => item,
        };
        if s.items.len() >= self.shared.limit {
            s.overflowed = true;
            s.items = Vec::new();
            drop(s);
            self.shared.closed.close();
            return Err(PushError::Overflow(self.shared.limit));
        }
        s.items.push(item);
        Ok(())
    }

    /// Wakes the writer to send what is queued.
    pub(crate) fn flush(&self) {
        self.shared.wake.notify_one();
    }

    /// Queues `item` and wakes the writer.
    pub(crate) fn send(&self, item: T) -> Result<(), PushError> {
        self.push(item)?;
        self.flush();
        Ok(())
    }

    /// Sends what is queued, then closes the comm.
    pub(crate) fn close(&self) {
        self.shared.lock().closing = true;
        self.flush();
    }

    /// Closes the comm at once, dropping what is queued.
    pub(crate) fn abort(&self) {
        self.shared.lock().items = Vec::new();
        self.shared.closed.close();
    }

    /// True once the comm is closed (by either side, an error, or an overflow).
    pub(crate) fn is_closed(&self) -> bool {
        self.shared.closed.is_closed()
    }

    /// Why the comm could not be opened (for an outbox made by [`Outbox::spawn_lazy`] whose
    /// connect failed): the error's kind and text, so callers can tell a refusal from a loss.
    pub(crate) fn connect_error(&self) -> Option<CommError> {
        self.shared.lock().failure.as_ref().map(|(kind, text)| CommError::new(*kind, text.clone()))
    }

    /// Resolves once the comm is closed.
    pub(crate) async fn closed(&self) {
        self.shared.closed.closed().await
    }

    /// Messages queued and not yet handed to the comm.
    pub(crate) fn backlog(&self) -> usize {
        self.shared.lock().items.len()
    }

    /// Waits until the backlog is at most `n` (or the comm closed): for producers that can
    /// afford to wait (a client submitting a million tasks), never for the scheduler.
    pub(crate) async fn wait_below(&self, n: usize) {
        if self.backlog() <= n || self.is_closed() {
            return;
        }
        loop {
            let drained = self.shared.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            if self.backlog() <= n || self.is_closed() {
                return;
            }
            drained.await;
        }
    }
}

async fn write_loop<T: Serialize + Send + Sync + 'static>(shared: &Shared<T>, tx: &mut CommSender, label: &str) {
    loop {
        let batch = {
            let mut s = shared.lock();
            if s.items.len() > MAX_BATCH {
                let rest = s.items.split_off(MAX_BATCH);
                let batch = std::mem::replace(&mut s.items, rest);
                shared.wake.notify_one();
                batch
            } else {
                std::mem::take(&mut s.items)
            }
        };
        if batch.is_empty() {
            if shared.lock().closing {
                return;
            }
            tokio::select! {
                () = shared.closed.closed() => return,
                () = shared.wake.notified() => continue,
            }
        }
        if !write_batch(shared, tx, label, batch).await {
            return;
        }
    }
}

/// Writes one batch. Returns false once the comm is unusable.
async fn write_batch<T: Serialize + Send + Sync + 'static>(
    shared: &Shared<T>,
    tx: &mut CommSender,
    label: &str,
    batch: Vec<T>,
) -> bool {
    tokio::select! {
        () = shared.closed.closed() => false,
        r = send_split(tx, label, batch) => {
            shared.drained.notify_waiters();
            r.is_ok()
        }
    }
}

/// Sends `batch` as one message. A batch the peer's limits refuse (more frames or bytes than
/// it accepts in one message) is split in halves and retried; a single message too large for
/// the peer is dropped with an error. Fails only when the comm is unusable.
///
/// On a comm that [carries local values](CommSender::carries_local_values) (a peer in this
/// process, over inproc://) the batch is handed over as the typed `Vec<T>` it is: no
/// MessagePack either way. The receiver reads both forms with [`courier_core::into_value`], and
/// checks what it received exactly as it checks a decoded message.
pub(crate) async fn send_split<T: Serialize + Send + Sync + 'static>(
    tx: &mut CommSender,
    label: &str,
    batch: Vec<T>,
) -> Result<(), CommError> {
    if tx.carries_local_values() {
        return tx.send(Message::from_local(batch)).await.inspect_err(|e| {
            tracing::debug!(peer = %label, error = %e, "sending failed; closing");
        });
    }
    let mut parts = std::collections::VecDeque::from([batch]);
    while let Some(mut part) = parts.pop_front() {
        let msg = match to_message(&part) {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(peer = %label, error = %e, "could not serialize a batch; dropping it");
                continue;
            }
        };
        match tx.send(msg).await {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::FrameTooLarge && part.len() > 1 => {
                let back = part.split_off(part.len() / 2);
                parts.push_front(back);
                parts.push_front(part);
            }
            Err(e) if e.kind() == ErrorKind::FrameTooLarge => {
                tracing::error!(peer = %label, error = %e, "a message exceeds the peer's limits; dropping it");
            }
            Err(e) => {
                tracing::debug!(peer = %label, error = %e, "sending failed; closing");
                return Err(e);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize)]
    enum M {
        Many(Vec<u32>),
        Other,
    }

    fn merge(last: &mut M, new: M) -> Option<M> {
        match (last, new) {
            (M::Many(xs), M::Many(more)) => {
                xs.extend(more);
                None
            }
            (_, new) => Some(new),
        }
    }

    #[tokio::test]
    async fn merging_folds_into_the_last_queued_message_only_and_keeps_the_bound() {
        // A comm that never opens: everything stays queued, where the test can see it.
        let outbox: Outbox<M> = Outbox::spawn_lazy(std::future::pending(), 4, "test".into());
        outbox.send_merging(M::Many(vec![1]), merge).unwrap();
        outbox.send_merging(M::Many(vec![2]), merge).unwrap();
        outbox.push(M::Other).unwrap();
        outbox.send_merging(M::Many(vec![3]), merge).unwrap();
        outbox.send_merging(M::Many(vec![4, 5]), merge).unwrap();
        assert_eq!(outbox.shared.lock().items, vec![M::Many(vec![1, 2]), M::Other, M::Many(vec![3, 4, 5])]);
        // A merge adds no message; a fifth message overflows the bound of four.
        outbox.send_merging(M::Many(vec![6]), merge).unwrap();
        outbox.push(M::Other).unwrap();
        assert_eq!(outbox.backlog(), 4);
        assert_eq!(outbox.send_merging(M::Other, merge), Err(PushError::Overflow(4)));
        assert!(outbox.is_closed());
        assert_eq!(outbox.send_merging(M::Many(vec![7]), merge), Err(PushError::Overflow(4)));
    }
}
