//! A worker's data listener: accepts comms from peers and clients, decodes their requests and
//! hands them to the worker's event loop; replies go back through a batched outbox per comm.
//! A requester that does not read its replies is cut off when its outbox passes the bound.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use courier_core::{CloseSignal, Listener, into_value};
use tokio::sync::mpsc;

use super::driver::Input;
use super::state::ConnId;
use crate::driver::batched::Outbox;
use crate::protocol::{DataReply, DataRequest};

/// Unsent replies a requester may accumulate before it is cut off.
const REPLY_OUTBOX_LIMIT: usize = 65_536;

/// Accepts data comms until `stop`; each becomes an `Input::DataConn` and its requests
/// `Input::Data`.
/// `ids` numbers the comms, shared by every data listener of the worker.
pub(crate) fn spawn(
    mut listener: Box<dyn Listener>,
    inputs: mpsc::Sender<Input>,
    stop: CloseSignal,
    ids: Arc<AtomicU64>,
) {
    tokio::spawn(async move {
        loop {
            let comm = tokio::select! {
                () = stop.closed() => break,
                c = listener.accept() => match c {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::debug!(error = %e, "data listener stopped");
                        break;
                    }
                },
            };
            let conn: ConnId = ids.fetch_add(1, Ordering::Relaxed);
            let peer = comm.peer_address().to_string();
            let scheme = comm.local_address().scheme().to_owned();
            let (tx, mut rx) = comm.split();
            let outbox: Outbox<DataReply> = Outbox::spawn(tx, REPLY_OUTBOX_LIMIT, peer.clone());
            if inputs.send(Input::DataConn(conn, outbox.clone(), scheme)).await.is_err() {
                break;
            }
            let (inputs, stop) = (inputs.clone(), stop.clone());
            tokio::spawn(async move {
                loop {
                    let batch = tokio::select! {
                        () = stop.closed() => break,
                        () = outbox.closed() => break,
                        m = rx.recv() => match m.and_then(into_value::<Vec<DataRequest>>) {
                            Ok(b) => b,
                            Err(e) => {
                                if !e.is_closed() {
                                    tracing::warn!(%peer, error = %e, "malformed data request; closing the comm");
                                }
                                break;
                            }
                        },
                    };
                    for request in batch {
                        if inputs.send(Input::Data(conn, request)).await.is_err() {
                            return;
                        }
                    }
                }
                outbox.close();
                let _ = inputs.send(Input::DataConnClosed(conn)).await;
            });
        }
        listener.close().await;
    });
}
