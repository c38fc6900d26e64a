//! Requests to a worker's data listener, from peer workers and clients, and its replies.

use courier_core::Payload;
use serde::{Deserialize, Serialize};

use super::{Key, RequestId, Ticket};

/// A request to a worker's data listener. Each carries an id chosen by the asker; the reply
/// echoes it. Replies may come in any order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum DataRequest {
    /// Send these results. Answered with `Data`.
    Get {
        /// Request id.
        id: RequestId,
        /// At most [`MAX_KEYS_PER_MESSAGE`](super::bounds::MAX_KEYS_PER_MESSAGE) keys.
        keys: Vec<Key>,
    },
    /// Keep this scattered value under this key. Answered with `Stored` when the ticket is
    /// the one the scheduler announced for this key and worker, else with `Refused`.
    Store {
        /// Request id.
        id: RequestId,
        /// Key.
        key: Key,
        /// The ticket from `ScatterTargets`.
        ticket: Ticket,
        /// The value.
        value: Payload,
    },
    /// How much this worker has fetched from its peers, per transport. Answered with
    /// `Stats`.
    Stats {
        /// Request id.
        id: RequestId,
    },
}

/// Values fetched over one transport.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferCount {
    /// The URL scheme of the comms they came over.
    pub scheme: String,
    /// `Get` requests answered.
    pub requests: u64,
    /// Values received.
    pub values: u64,
    /// Bytes of those values (headers and frames).
    pub bytes: u64,
}

/// A worker's reply to a [`DataRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum DataReply {
    /// Results in the order asked; nil for a key this worker does not hold.
    Data {
        /// Request id.
        id: RequestId,
        /// Values.
        values: Vec<Option<Payload>>,
    },
    /// The value was stored.
    Stored {
        /// Request id.
        id: RequestId,
    },
    /// The request was refused (bad ticket, too many keys, a worker shutting down).
    Refused {
        /// Request id.
        id: RequestId,
        /// Why.
        reason: String,
    },
    /// The answer to `Stats`: values fetched from peers, per transport.
    Stats {
        /// Request id.
        id: RequestId,
        /// Per transport scheme.
        fetched: Vec<TransferCount>,
    },
}

impl DataReply {
    /// The id of the request this answers.
    pub fn id(&self) -> RequestId {
        match self {
            DataReply::Data { id, .. }
            | DataReply::Stored { id }
            | DataReply::Refused { id, .. }
            | DataReply::Stats { id, .. } => *id,
        }
    }
}
