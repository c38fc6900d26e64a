//! The baseline: the same patterns over a plain tokio TCP socket with a length prefix.

use std::io;
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

/// Writes `count` length-prefixed copies of `payload`, then reads a 1-byte ack.
pub async fn raw_stream_sender(s: &mut TcpStream, payload: &[u8], count: usize) -> io::Result<Duration> {
    let start = Instant::now();
    for _ in 0..count {
        s.write_all(&(payload.len() as u64).to_le_bytes()).await?;
        s.write_all(payload).await?;
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
        s.write_all(&(len as u64).to_le_bytes()).await?;
        s.write_all(&buf).await?;
    }
}

/// `count` round trips of `payload`; returns each one's duration.
pub async fn raw_echo_client(s: &mut TcpStream, payload: &[u8], count: usize) -> io::Result<Vec<Duration>> {
    let mut times = Vec::with_capacity(count);
    let mut buf = vec![0u8; payload.len()];
    for _ in 0..count {
        let start = Instant::now();
        s.write_all(&(payload.len() as u64).to_le_bytes()).await?;
        s.write_all(payload).await?;
        let len = s.read_u64_le().await? as usize;
        buf.resize(len, 0);
        s.read_exact(&mut buf).await?;
        times.push(start.elapsed());
    }
    Ok(times)
}
