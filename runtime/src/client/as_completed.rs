//! `as_completed`: futures in the order they complete, as a stream that accepts more futures
//! while it is consumed.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures::Stream;
use futures::task::AtomicWaker;

use super::futures::{KeyStatus, TaskFuture, lock};
use crate::collections::Map;
use crate::protocol::Key;

/// Keys completed and not yet yielded, shared with the client's reader.
#[derive(Debug, Default)]
pub(crate) struct Completions {
    ready: Mutex<VecDeque<Key>>,
    waker: AtomicWaker,
}

impl Completions {
    pub(crate) fn push(&self, key: Key) {
        lock(&self.ready).push_back(key);
        self.waker.wake();
    }

    /// Waits until some keys have completed and takes them all.
    pub(crate) async fn next(&self) -> Vec<Key> {
        std::future::poll_fn(|cx| {
            self.waker.register(cx.waker());
            let mut ready = lock(&self.ready);
            if ready.is_empty() { Poll::Pending } else { Poll::Ready(ready.drain(..).collect()) }
        })
        .await
    }
}

/// Futures in completion order (finished or failed); see
/// [`Client::as_completed`](super::Client::as_completed).
#[derive(Debug)]
pub struct AsCompleted<T> {
    shared: Arc<Completions>,
    futures: Map<Key, TaskFuture<T>>,
}

impl<T> AsCompleted<T> {
    pub(crate) fn new() -> Self {
        AsCompleted { shared: Arc::default(), futures: Map::default() }
    }

    /// Adds a future; it is yielded once complete (at once if it already is).
    pub fn add(&mut self, f: TaskFuture<T>) {
        {
            let mut s = lock(&f.inner.keys);
            if let Some(k) = s.keys.get_mut(&f.key) {
                if matches!(k.status, KeyStatus::Pending) {
                    k.subscribe(&self.shared);
                } else {
                    self.shared.push(f.key.clone());
                }
            }
        }
        self.futures.insert(f.key.clone(), f);
    }

    /// Futures not yet yielded.
    pub fn len(&self) -> usize {
        self.futures.len()
    }

    /// True when nothing is left to yield.
    pub fn is_empty(&self) -> bool {
        self.futures.is_empty()
    }
}

impl<T> Stream for AsCompleted<T> {
    type Item = TaskFuture<T>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<TaskFuture<T>>> {
        let this = self.get_mut();
        loop {
            if this.futures.is_empty() {
                return Poll::Ready(None);
            }
            this.shared.waker.register(cx.waker());
            let next = lock(&this.shared.ready).pop_front();
            match next {
                Some(key) => {
                    if let Some(f) = this.futures.remove(&key) {
                        return Poll::Ready(Some(f));
                    }
                }
                None => return Poll::Pending,
            }
        }
    }
}
