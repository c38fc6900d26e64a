//! Fetching results from the workers that hold them: one request per worker for a gather,
//! sent concurrently; a key whose holders fail is looked up again (the scheduler may know
//! newer holders, or be computing it again) a bounded number of times.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use courier_core::{CommError, Payload};

use super::Inner;
use super::futures::{KeyStatus, TaskError};
use crate::protocol::Key;
use crate::protocol::bounds::MAX_KEYS_PER_MESSAGE;

/// Rounds of (ask the holders, ask the scheduler) before a fetch gives up.
const ATTEMPTS: usize = 5;
/// How long to wait for news of a key whose holders all failed but which the scheduler
/// still places there (a dying worker the scheduler has not noticed yet).
const NEWS_WAIT: Duration = Duration::from_secs(10);

pub(crate) async fn fetch_one(inner: &Inner, key: &Key) -> Result<Payload, TaskError> {
    let mut last = CommError::closed(format!("no worker holds {key}"));
    for _ in 0..ATTEMPTS {
        let holders = inner.holders(key).await?;
        for h in holders.iter() {
            match inner.pool.get(h, vec![key.clone()]).await {
                Ok(mut values) => match values.pop().flatten() {
                    Some(p) => return Ok(p),
                    None => last = CommError::closed(format!("{h} no longer holds {key}")),
                },
                // Asking again cannot change a refusal of this client's credentials or protocol.
                Err(e) if is_final(&e) => return Err(TaskError::Fetch { key: key.clone(), source: e }),
                Err(e) => last = e,
            }
        }
        refresh(inner, key, &holders).await?;
    }
    Err(TaskError::Fetch { key: key.clone(), source: last })
}

/// Errors that retrying cannot fix: the worker refused who this client is.
fn is_final(e: &CommError) -> bool {
    matches!(e.kind(), courier_core::ErrorKind::Unauthorized | courier_core::ErrorKind::UnsupportedScheme)
}

/// Every holder of `key` failed: asks the scheduler where it lives now. Newer holders are
/// used at once; none means it is being computed again (its `Done` will come); the same
/// holders mean a worker is failing and the scheduler will notice, so wait for news.
async fn refresh(inner: &Inner, key: &Key, stale: &[Arc<str>]) -> Result<(), TaskError> {
    let fresh = inner.who_has(vec![key.clone()]).await?.pop().unwrap_or_default();
    let Some(changed) = inner.changed(key) else { return Ok(()) };
    let notified = changed.notified();
    tokio::pin!(notified);
    notified.as_mut().enable();
    if matches!(inner.status(key), Some(KeyStatus::Done(h)) if *h == *stale) {
        if fresh.is_empty() {
            inner.settle(key, KeyStatus::Pending);
        } else if !fresh.iter().map(String::as_str).eq(stale.iter().map(|s| &**s)) {
            inner.settle(key, KeyStatus::Done(fresh.into_iter().map(Arc::from).collect()));
        } else {
            let _ = tokio::time::timeout(NEWS_WAIT, notified).await;
        }
    }
    Ok(())
}

/// The values of `keys`, in order, once all are done.
pub(crate) async fn gather_payloads(inner: &Inner, keys: &[Key]) -> Result<Vec<Payload>, TaskError> {
    let holders = inner.holders_all(keys).await?;
    let mut by_worker: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, h) in holders.iter().enumerate() {
        if let Some(first) = h.first() {
            by_worker.entry(first).or_default().push(i);
        }
    }
    let requests = by_worker.iter().flat_map(|(addr, idx)| {
        idx.chunks(MAX_KEYS_PER_MESSAGE).map(move |chunk| {
            let keys: Vec<Key> = chunk.iter().map(|&i| keys[i].clone()).collect();
            async move { (chunk, inner.pool.get(addr, keys).await) }
        })
    });
    let mut out: Vec<Option<Payload>> = (0..keys.len()).map(|_| None).collect();
    for (chunk, result) in futures::future::join_all(requests).await {
        if let Ok(values) = result {
            for (&i, v) in chunk.iter().zip(values) {
                out[i] = v;
            }
        }
    }
    let mut values = Vec::with_capacity(keys.len());
    for (i, v) in out.into_iter().enumerate() {
        values.push(match v {
            Some(v) => v,
            None => fetch_one(inner, &keys[i]).await?,
        });
    }
    Ok(values)
}
