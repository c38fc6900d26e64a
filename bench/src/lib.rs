//! # courier-bench
//!
//! The measuring core shared by the criterion benches (`cargo bench`), the `courier compare`
//! command and the perf tool: message patterns over any [`Comm`], the same patterns over a
//! plain tokio TCP socket as the baseline, and summary statistics.
//!
//! Patterns:
//! - **stream**: the sender pipelines `count` messages, the receiver answers with one ack at
//!   the end; the time is from the first send to the ack.
//! - **echo**: one message there and back, `count` times; each round trip is timed.
//!
//! Two baselines run beside the transports, in the same process and the same run:
//! - **raw** ([`raw`]): the same bytes with an 8-byte length prefix per message over a tokio
//!   `TcpStream` with `TCP_NODELAY`, sending and receiving with the same strategy as
//!   Courier's stream transports (the table in [`raw`] shows both side by side): the least a
//!   framed transport over TCP could do.
//! - **limit** ([`limits`]): blocking sockets on two threads with no framing, and one core's
//!   memcpy: what this machine's loopback and memory can do at all.
//!
//! Each end of a pair runs on a thread of its own ([`Ends`]), as two processes would.
//!
//! [`limits::process_cpu`] gives CPU time beside wall time: on a shared VM times swing, CPU
//! per message far less.

mod ends;
pub mod limits;
mod patterns;
pub mod raw;
mod stats;

pub use ends::Ends;
pub use limits::{BlockingPair, memcpy, process_cpu, process_cpu_of};
pub use patterns::{echo_client, echo_server, payload_message, stream_receiver, stream_sender};
pub use raw::{RawPair, RawReader, raw_echo_client, raw_echo_server, raw_stream_receiver, raw_stream_sender};
pub use stats::{Summary, format_bytes};

use std::sync::Arc;

use courier_core::Registry;

/// The transports the comparisons measure: name and a listen URL giving a fresh address.
pub const TRANSPORTS: [(&str, &str); 6] = [
    ("tcp", "tcp://127.0.0.1:0"),
    ("tls", "tls://127.0.0.1:0"),
    ("unix", "unix://"),
    ("shm", "shm://"),
    ("zmq", "zmq://127.0.0.1:0"),
    ("inproc", "inproc://"),
];

/// A registry with every transport this crate benchmarks. tls:// uses a throwaway CA and
/// certificate generated in memory for the run.
pub fn registry() -> Registry {
    Registry::new()
        .with(Arc::new(courier_tcp::TcpTransport::new()))
        .with(Arc::new(courier_inproc::InprocTransport::new()))
        .with(Arc::new(courier_zmq::ZmqTransport::new()))
        .with(Arc::new(courier_unix::UnixTransport::new()))
        .with(Arc::new(courier_shm::ShmTransport::new()))
        .with(Arc::new(
            courier_tls::TlsTransport::from_pem(&courier_tls::test_certs::TestPki::generate().node())
                .expect("throwaway TLS certificates"),
        ))
}
