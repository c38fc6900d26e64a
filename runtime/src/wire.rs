//! Batches of protocol messages over comms.

use courier_core::{CommError, CommReceiver, CommSender, from_message, to_message};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Sends a batch as one message.
pub(crate) async fn send_batch<T: Serialize>(tx: &mut CommSender, batch: &[T]) -> Result<(), CommError> {
    tx.send(to_message(batch)?).await
}

/// Receives one batch.
pub(crate) async fn recv_batch<T: DeserializeOwned>(rx: &mut CommReceiver) -> Result<Vec<T>, CommError> {
    from_message(&rx.recv().await?)
}

/// The address a node listens on for data, on the same transport as the scheduler.
pub(crate) fn data_listen_url(scheduler: &str) -> String {
    match scheduler.split_once("://").map(|(s, _)| s) {
        Some("inproc") => "inproc://".into(),
        Some("unix") => "unix://".into(),
        Some(scheme) => format!("{scheme}://127.0.0.1:0"),
        None => "inproc://".into(),
    }
}
