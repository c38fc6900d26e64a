//! Task futures and their reference counts: the client's view of each key it wants.

use std::marker::PhantomData;
use std::sync::{Arc, Mutex, Weak};

use courier_core::{CommError, Payload};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Notify;

use super::Inner;
use super::as_completed::Completions;
use crate::collections::Map;
use crate::protocol::{ArgSpec, ClientToScheduler, Failure, Key};

/// Why a future has no value.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// The scheduler reports that the task failed; [`Failure`] says how (the function's
    /// error, cancelled, `KilledWorker`, data lost, rejected, or inherited from a dependency).
    #[error("task {key} failed: {failure}")]
    Failed {
        /// The task.
        key: Key,
        /// How.
        failure: Failure,
    },
    /// The result could not be fetched from any worker holding it, or not decoded.
    #[error("result of {key} unavailable: {source}")]
    Fetch {
        /// The task.
        key: Key,
        /// The cause.
        source: CommError,
    },
    /// Talking to the cluster failed (the scheduler is gone, the client is closed).
    #[error(transparent)]
    Comm(#[from] CommError),
}

impl TaskError {
    /// The scheduler's verdict, if this is one.
    pub fn failure(&self) -> Option<&Failure> {
        match self {
            TaskError::Failed { failure, .. } => Some(failure),
            _ => None,
        }
    }

    /// True when the task, or one it depends on, was cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.failure().is_some_and(Failure::is_cancelled)
    }
}

/// A future's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Not finished (or being computed again after its data was lost).
    Pending,
    /// Finished; the result is on the workers.
    Finished,
    /// Failed.
    Failed(Failure),
    /// The client lost the scheduler (or was closed) before the task finished.
    Disconnected(String),
}

#[derive(Debug, Clone)]
pub(crate) enum KeyStatus {
    Pending,
    /// Shared: every wait for the key hands out the list without copying it.
    Done(Arc<[Arc<str>]>),
    Failed(Failure),
    Disconnected(String),
}

#[derive(Debug)]
pub(crate) struct KeyState {
    pub(crate) status: KeyStatus,
    refs: usize,
    /// Made by the first wait that finds the key pending: most keys are never waited on one by
    /// one (a gather subscribes, a finished key needs no wait), and a key without waiters
    /// costs no allocation and no wake-up when it settles.
    changed: Option<Arc<Notify>>,
    /// Gathers and `as_completed` streams waiting for the key; rarely more than one. Weak: a
    /// gather that returned early or was dropped leaves no live subscription behind.
    subscribers: smallvec::SmallVec<[Weak<Completions>; 1]>,
}

impl KeyState {
    /// The key's change signal, made on first use.
    pub(crate) fn changed(&mut self) -> Arc<Notify> {
        self.changed.get_or_insert_with(Arc::default).clone()
    }

    /// `completions` hears when the key completes. Subscriptions whose waiter is gone are
    /// dropped here, so repeated abandoned waits on a pending key do not pile up.
    pub(crate) fn subscribe(&mut self, completions: &Arc<Completions>) {
        self.subscribers.retain(|w| w.strong_count() > 0);
        self.subscribers.push(Arc::downgrade(completions));
    }
}

/// The client's table of keys it holds futures for.
#[derive(Debug, Default)]
pub(crate) struct Keys {
    pub(crate) keys: Map<Key, KeyState>,
    /// Set once the scheduler is lost: new futures fail at once with this.
    pub(crate) lost: Option<String>,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Inner {
    pub(crate) fn track(&self, key: &Key) {
        let mut s = lock(&self.keys);
        let lost = s.lost.clone();
        let k = s.keys.entry(key.clone()).or_insert_with(|| KeyState {
            status: KeyStatus::Pending,
            refs: 0,
            changed: None,
            subscribers: smallvec::SmallVec::new(),
        });
        k.refs += 1;
        if let Some(why) = lost
            && matches!(k.status, KeyStatus::Pending)
        {
            k.status = KeyStatus::Disconnected(why);
        }
    }

    fn untrack(&self, key: &Key) {
        /// Most keys merged into one `Release`: far below the peer's message limits, so a
        /// merged release is never too large to send (a message too large is dropped).
        const RELEASE_MERGE_MAX: usize = 4096;
        let mut s = lock(&self.keys);
        let Some(k) = s.keys.get_mut(key) else { return };
        k.refs -= 1;
        if k.refs == 0 {
            s.keys.remove(key);
            crate::collections::shrink_map(&mut s.keys);
            drop(s);
            // The last reference is gone: the cluster may forget the data. Never blocks. A
            // burst of drops (a gathered map's futures) becomes one message, one scheduler event.
            let release = ClientToScheduler::Release { keys: vec![key.clone()] };
            let _ = self.outbox.send_merging(release, |last, new| match (last, new) {
                (ClientToScheduler::Release { keys }, ClientToScheduler::Release { keys: more })
                    if keys.len() < RELEASE_MERGE_MAX =>
                {
                    keys.extend(more);
                    None
                }
                (_, new) => Some(new),
            });
        }
    }

    /// Records a new status; wakes waiters; completion subscribers hear of final states.
    pub(crate) fn settle(&self, key: &Key, status: KeyStatus) {
        settle_in(&mut lock(&self.keys), key, status);
    }

    pub(crate) fn status(&self, key: &Key) -> Option<KeyStatus> {
        lock(&self.keys).keys.get(key).map(|k| k.status.clone())
    }

    /// Waits until `key` is done (its holders) or failed.
    pub(crate) async fn holders(&self, key: &Key) -> Result<Arc<[Arc<str>]>, TaskError> {
        loop {
            let changed = {
                let mut s = lock(&self.keys);
                let Some(k) = s.keys.get_mut(key) else {
                    return Err(untracked(key));
                };
                match outcome(key, &k.status) {
                    Some(done) => return done,
                    None => k.changed(),
                }
            };
            let notified = changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !matches!(self.status(key), Some(KeyStatus::Pending)) {
                continue;
            }
            notified.await;
        }
    }

    /// Waits until every key of `keys` is done, and returns their holders in order; or the
    /// error of a key that failed (the first in `keys` among those known failed when the wait
    /// ends: a gather fails as soon as one of its keys has).
    ///
    /// One subscription covers all the keys still pending, so the wait wakes once per burst
    /// of completions rather than once per key.
    pub(crate) async fn holders_all(&self, keys: &[Key]) -> Result<Vec<Arc<[Arc<str>]>>, TaskError> {
        let mut out: Vec<Option<Arc<[Arc<str>]>>> = vec![None; keys.len()];
        let completions = Arc::new(Completions::default());
        // Where each pending key first sits in `keys`; later places of a repeated key.
        let mut pending: crate::collections::Map<Key, usize> = crate::collections::Map::default();
        let mut repeats: Vec<(usize, usize)> = Vec::new();
        {
            let mut s = lock(&self.keys);
            for (i, key) in keys.iter().enumerate() {
                let Some(k) = s.keys.get_mut(key) else { return Err(untracked(key)) };
                match outcome(key, &k.status) {
                    Some(done) => out[i] = Some(done?),
                    None => match pending.entry(key.clone()) {
                        std::collections::hash_map::Entry::Occupied(first) => repeats.push((i, *first.get())),
                        std::collections::hash_map::Entry::Vacant(slot) => {
                            slot.insert(i);
                            k.subscribe(&completions);
                        }
                    },
                }
            }
        }
        while !pending.is_empty() {
            let ready = completions.next().await;
            let mut s = lock(&self.keys);
            for key in ready {
                let Some(&i) = pending.get(&key) else { continue };
                let Some(k) = s.keys.get_mut(&key) else { return Err(untracked(&key)) };
                match outcome(&key, &k.status) {
                    Some(done) => {
                        out[i] = Some(done?);
                        pending.remove(&key);
                    }
                    // Lost again before this wait looked: it will complete again.
                    None => k.subscribe(&completions),
                }
            }
        }
        for (i, first) in repeats {
            out[i] = out[first].clone();
        }
        Ok(out.into_iter().flatten().collect())
    }
}

/// What a wait on `key` ends with in `status`, or `None` while it is pending.
fn outcome(key: &Key, status: &KeyStatus) -> Option<Result<Arc<[Arc<str>]>, TaskError>> {
    match status {
        KeyStatus::Pending => None,
        KeyStatus::Done(h) => Some(Ok(h.clone())),
        KeyStatus::Failed(f) => Some(Err(TaskError::Failed { key: key.clone(), failure: f.clone() })),
        KeyStatus::Disconnected(why) => Some(Err(TaskError::Comm(CommError::closed(why.clone())))),
    }
}

fn untracked(key: &Key) -> TaskError {
    TaskError::Comm(CommError::closed(format!("{key} is not tracked")))
}

/// Records a new status of `key` in `s`; wakes its waiters; completion subscribers hear of
/// final states.
pub(crate) fn settle_in(s: &mut Keys, key: &Key, status: KeyStatus) {
    let Some(k) = s.keys.get_mut(key) else { return };
    if matches!(k.status, KeyStatus::Failed(_) | KeyStatus::Disconnected(_)) {
        return; // final
    }
    let complete = !matches!(status, KeyStatus::Pending);
    k.status = status;
    if let Some(changed) = &k.changed {
        changed.notify_waiters();
    }
    if complete {
        for sub in k.subscribers.drain(..) {
            if let Some(sub) = sub.upgrade() {
                sub.push(key.clone());
            }
        }
    }
}

/// A task's eventual result of type `T`. Cloning is cheap; when the last future of a key is
/// dropped, the cluster forgets its data.
pub struct TaskFuture<T> {
    pub(crate) key: Key,
    pub(crate) inner: Arc<Inner>,
    _t: PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for TaskFuture<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskFuture").field("key", &self.key).finish()
    }
}

impl<T> Clone for TaskFuture<T> {
    fn clone(&self) -> Self {
        self.inner.track(&self.key);
        TaskFuture { key: self.key.clone(), inner: self.inner.clone(), _t: PhantomData }
    }
}

impl<T> Drop for TaskFuture<T> {
    fn drop(&mut self) {
        self.inner.untrack(&self.key);
    }
}

/// A task argument: a value, or another task's result.
///
/// # Panics
/// If `value` cannot be serialized (a type whose `Serialize` fails); use [`try_arg`] to get
/// the error instead.
pub fn arg<T: Serialize + ?Sized>(value: &T) -> ArgSpec {
    try_arg(value).expect("task arguments must serialize")
}

/// A task argument, or why `value` cannot be serialized.
pub fn try_arg<T: Serialize + ?Sized>(value: &T) -> Result<ArgSpec, CommError> {
    Ok(ArgSpec::Value(Payload::new(value)?))
}

impl<T> TaskFuture<T> {
    pub(crate) fn new(key: Key, inner: Arc<Inner>) -> Self {
        inner.track(&key);
        TaskFuture { key, inner, _t: PhantomData }
    }

    /// The task's key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// This future as an argument of another task (a dependency).
    pub fn arg(&self) -> ArgSpec {
        ArgSpec::Key(self.key.clone())
    }

    /// The workers holding the result (empty until it is finished).
    pub fn who_has(&self) -> Vec<String> {
        match self.inner.status(&self.key) {
            Some(KeyStatus::Done(h)) => h.iter().map(|a| a.to_string()).collect(),
            _ => Vec::new(),
        }
    }

    /// Where the task is.
    pub fn status(&self) -> Status {
        match self.inner.status(&self.key) {
            Some(KeyStatus::Done(_)) => Status::Finished,
            Some(KeyStatus::Failed(f)) => Status::Failed(f),
            Some(KeyStatus::Disconnected(w)) => Status::Disconnected(w),
            Some(KeyStatus::Pending) | None => Status::Pending,
        }
    }

    /// Waits until the task finished or failed.
    pub async fn wait(&self) -> Result<(), TaskError> {
        self.inner.holders(&self.key).await.map(|_| ())
    }
}

impl<T: DeserializeOwned> TaskFuture<T> {
    /// Waits for the task and fetches its result from a worker holding it.
    pub async fn result(&self) -> Result<T, TaskError> {
        let payload = self.payload().await?;
        payload.decode::<T>().map_err(|source| TaskError::Fetch { key: self.key.clone(), source })
    }
}

impl<T> TaskFuture<T> {
    /// Waits for the task and fetches its result undecoded.
    pub async fn payload(&self) -> Result<Payload, TaskError> {
        super::fetch::fetch_one(&self.inner, &self.key).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Waits that gave up (a gather that failed early, a dropped stream) leave no live
    /// subscription: a pending key waited on and abandoned many times holds one subscriber,
    /// and its completion reaches the live waiter only.
    #[test]
    fn abandoned_subscriptions_do_not_pile_up() {
        let key = Key::from("k");
        let mut keys = Keys::default();
        keys.keys.insert(
            key.clone(),
            KeyState { status: KeyStatus::Pending, refs: 1, changed: None, subscribers: smallvec::SmallVec::new() },
        );
        for _ in 0..1000 {
            let abandoned = Arc::new(Completions::default());
            keys.keys.get_mut(&key).unwrap().subscribe(&abandoned);
        }
        let live = Arc::new(Completions::default());
        keys.keys.get_mut(&key).unwrap().subscribe(&live);
        assert_eq!(keys.keys[&key].subscribers.len(), 1);
        settle_in(&mut keys, &key, KeyStatus::Done(Arc::from([Arc::from("w")])));
        assert!(keys.keys[&key].subscribers.is_empty());
        let ready = futures::executor::block_on(live.next());
        assert_eq!(ready, [key]);
    }
}
