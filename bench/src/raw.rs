//! The baseline: the same patterns over a plain tokio TCP socket with a length prefix.

use std::io::{self, IoSlice};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A connected pair of loopback sockets with `TCP_NODELAY`.
#[derive(Debug)]
pub struct RawPair {
    /// The connecting side.
    pub client: TcpStream,
    /// The accepting side.
    pub server: TcpStream,
}

impl RawPair {
    /// Connects a pair on 127.0.0.1.
    pub async fn connect() -> io::Result<RawPair> {
        let l = TcpListener::bind("127.0.0.1:0").await?;
        let addr = l.local_addr()?;
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), l.accept());
        let (client, server) = (client?, accepted?.0);
        client.set_nodelay(true)?;
        server.set_nodelay(true)?;
        Ok(RawPair { client, server })
    }
}

/// Writes the 8-byte length prefix and the payload with vectored writes (one syscall for
/// both when the socket takes them), as any sensible length-prefixed framing would.
async fn write_prefixed(s: &mut TcpStream, payload: &[u8]) -> io::Result<()> {
    let prefix = (payload.len() as u64).to_le_bytes();
    let (mut a, mut b) = (&prefix[..], payload);
    while !a.is_empty() || !b.is_empty() {
        let n = s.write_vectored(&[IoSlice::new(a), IoSlice::new(b)]).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        let from_a = n.min(a.len());
        a = &a[from_a..];
        b = &b[n - from_a..];
    }
    Ok(())
}

/// Writes `count` length-prefixed copies of `payload`, then reads a 1-byte ack.
pub async fn raw_stream_sender(s: &mut TcpStream, payload: &[u8], count: usize) -> io::Result<Duration> {
    let start = Instant::now();
    for _ in 0..count {
        write_prefixed(s, payload).await?;
    }
    let mut ack = [0u8; 1];
    s.read_exact(&mut ack).await?;
    Ok(start.elapsed())
}

/// Reads `count` length-prefixed messages into `buf` (grown as needed), then acks.
pub async fn raw_stream_receiver(s: &mut TcpStream, count: usize, buf: &mut Vec<u8>) -> io::Result<()> {
    for _ in 0..count {
        let len = s.read_u64_le().await? as usize;
        buf.resize(len, 0);
        s.read_exact(buf).await?;
    }
    s.write_all(&[1]).await
}

/// Echoes length-prefixed messages until EOF.
pub async fn raw_echo_server(s: &mut TcpStream) -> io::Result<()> {
    let mut buf = Vec::new();
    loop {
        let len = match s.read_u64_le().await {
            Ok(n) => n as usize,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        };
        buf.resize(len, 0);
        s.read_exact(&mut buf).await?;
        write_prefixed(s, &buf).await?;
    }
}

/// `count` round trips of `payload`; returns each one's duration.
pub async fn raw_echo_client(s: &mut TcpStream, payload: &[u8], count: usize) -> io::Result<Vec<Duration>> {
    let mut times = Vec::with_capacity(count);
    let mut buf = vec![0u8; payload.len()];
    for _ in 0..count {
        let start = Instant::now();
        write_prefixed(s, payload).await?;
        let len = s.read_u64_le().await? as usize;
        buf.resize(len, 0);
        s.read_exact(&mut buf).await?;
        times.push(start.elapsed());
    }
    Ok(times)
}
