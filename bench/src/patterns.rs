//! The stream and echo patterns over any comm.

use std::time::{Duration, Instant};

use bytes::Bytes;
use courier_core::{Comm, CommError, ErrorKind, Message};

/// A message with one frame of `len` bytes (a non-trivial pattern, so nothing is
/// accidentally compressible) and a small header.
pub fn payload_message(len: usize) -> Message {
    let mut v = vec![0u8; len];
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    for chunk in v.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    Message::new(Bytes::from_static(b"payload"), vec![Bytes::from(v)])
}

/// Sends `count` copies of `msg` (no data copy: frames are reference-counted), then waits for
/// the receiver's ack. Returns the time from first send to ack.
pub async fn stream_sender(comm: &mut Comm, msg: &Message, count: usize) -> Result<Duration, CommError> {
    let start = Instant::now();
    for _ in 0..count {
        comm.send(msg.clone()).await?;
    }
    let ack = comm.recv().await?;
    if &ack.header[..] != b"ack" {
        return Err(CommError::protocol("stream pattern: expected an ack"));
    }
    Ok(start.elapsed())
}

/// Receives `count` messages of `expect_bytes` each, then acks.
pub async fn stream_receiver(comm: &mut Comm, count: usize, expect_bytes: u64) -> Result<(), CommError> {
    for i in 0..count {
        let m = comm.recv().await?;
        if m.byte_len() != expect_bytes {
            return Err(CommError::new(
                ErrorKind::Protocol,
                format!("stream pattern: message {i} has {} bytes, expected {expect_bytes}", m.byte_len()),
            ));
        }
    }
    comm.send(Message::from_header(Bytes::from_static(b"ack"))).await
}

/// Echoes every message until the peer closes.
pub async fn echo_server(comm: &mut Comm) -> Result<(), CommError> {
    loop {
        match comm.recv().await {
            Ok(m) => comm.send(m).await?,
            Err(e) if e.is_closed() => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

/// `count` round trips of `msg`; returns each one's duration. Verifies the echo's size.
pub async fn echo_client(comm: &mut Comm, msg: &Message, count: usize) -> Result<Vec<Duration>, CommError> {
    let mut times = Vec::with_capacity(count);
    for _ in 0..count {
        let start = Instant::now();
        comm.send(msg.clone()).await?;
        let back = comm.recv().await?;
        times.push(start.elapsed());
        if back.byte_len() != msg.byte_len() {
            return Err(CommError::protocol("echo pattern: the echo differs in size"));
        }
    }
    Ok(times)
}
