//! The fair baseline: the same patterns over a plain tokio TCP socket with an 8-byte length
//! prefix, receiving exactly as Courier's stream transports do.
//!
//! Fair by construction, side by side with `courier_core::stream` and `courier_core::codec`:
//!
//! | | Courier (tcp://) | raw |
//! | --- | --- | --- |
//! | send | one vectored write per message (head, table and small frames coalesced) | one vectored write per message (prefix + payload) |
//! | receive, small | reads of up to [`READ_CHUNK`] into a reused buffer, several messages decoded per read | the same: [`RawReader`] parses every message in its chunk buffer in place |
//! | receive, large | what is buffered is copied into the frame's buffer, the rest read directly into it once at least [`DIRECT_READ_MIN`] is missing; buffers recycled and already faulted | the same, into one reused payload buffer faulted before timing starts |
//! | pipelining | stream: `count` sends, one ack; echo: one message each way | the same |
//!
//! Raw does less than Courier by design (no message head, no frame table, no header, no
//! checks, no copy of small payloads out of the chunk buffer): it is the least a framed
//! transport over TCP could do.

use std::io::{self, IoSlice};
use std::time::{Duration, Instant};

use courier_core::codec::DIRECT_READ_MIN;
use courier_core::stream::READ_CHUNK;
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

/// A buffer whose pages are already faulted in (written once), as a recycled buffer is.
pub fn faulted(len: usize) -> Vec<u8> {
    vec![0x5a; len]
}

/// The receiving half of the raw framing, reading the way Courier's stream comms read: large
/// reads into a reused chunk buffer, several messages parsed per read, large payloads read
/// directly into a reused, pre-faulted payload buffer.
#[derive(Debug)]
pub struct RawReader {
    chunk: Vec<u8>,
    start: usize,
    end: usize,
    payload: Vec<u8>,
}

impl RawReader {
    /// A reader for payloads up to `max_payload` bytes (larger ones grow the buffer once).
    /// Both buffers are faulted in here, before anything is timed.
    pub fn new(max_payload: usize) -> RawReader {
        RawReader { chunk: faulted(READ_CHUNK), start: 0, end: 0, payload: faulted(max_payload) }
    }

    /// Reads into the chunk buffer until it holds at least `want` unparsed bytes
    /// (`want <= READ_CHUNK`).
    async fn fill(&mut self, s: &mut TcpStream, want: usize) -> io::Result<()> {
        while self.end - self.start < want {
            if self.chunk.len() - self.start < want {
                self.chunk.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            let n = s.read(&mut self.chunk[self.end..]).await?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.end += n;
        }
        Ok(())
    }

    /// Reads one message and returns its payload: a view into the chunk buffer for a message
    /// that arrived whole, otherwise the payload buffer.
    pub async fn read_message(&mut self, s: &mut TcpStream) -> io::Result<&[u8]> {
        self.fill(s, 8).await?;
        let len = u64::from_le_bytes(self.chunk[self.start..self.start + 8].try_into().expect("8 bytes")) as usize;
        self.start += 8;
        let have = self.end - self.start;
        if have < len && len - have < DIRECT_READ_MIN && len <= READ_CHUNK {
            self.fill(s, len).await?;
        }
        if self.end - self.start >= len {
            let at = self.start;
            self.start += len;
            return Ok(&self.chunk[at..at + len]);
        }
        if self.payload.len() < len {
            self.payload.resize(len, 0);
        }
        let have = self.end - self.start;
        self.payload[..have].copy_from_slice(&self.chunk[self.start..self.end]);
        self.start = 0;
        self.end = 0;
        s.read_exact(&mut self.payload[have..len]).await?;
        Ok(&self.payload[..len])
    }
}

/// Writes the 8-byte length prefix and the payload with vectored writes (one syscall for
/// both when the socket takes them), as any sensible length-prefixed framing would.
pub async fn write_prefixed(s: &mut TcpStream, payload: &[u8]) -> io::Result<()> {
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

/// Reads `count` length-prefixed messages of `expect` bytes each, then acks.
pub async fn raw_stream_receiver(
    s: &mut TcpStream,
    reader: &mut RawReader,
    count: usize,
    expect: usize,
) -> io::Result<()> {
    for i in 0..count {
        let got = reader.read_message(s).await?.len();
        if got != expect {
            return Err(io::Error::other(format!("raw stream: message {i} has {got} bytes, expected {expect}")));
        }
    }
    s.write_all(&[1]).await
}

/// Echoes length-prefixed messages until EOF.
pub async fn raw_echo_server(s: &mut TcpStream, max_payload: usize) -> io::Result<()> {
    let mut reader = RawReader::new(max_payload);
    loop {
        let m = match reader.read_message(s).await {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        };
        write_prefixed(s, m).await?;
    }
}

/// `count` round trips of `payload`; returns each one's duration.
pub async fn raw_echo_client(s: &mut TcpStream, payload: &[u8], count: usize) -> io::Result<Vec<Duration>> {
    let mut times = Vec::with_capacity(count);
    let mut reader = RawReader::new(payload.len());
    for _ in 0..count {
        let start = Instant::now();
        write_prefixed(s, payload).await?;
        let got = reader.read_message(s).await?.len();
        times.push(start.elapsed());
        if got != payload.len() {
            return Err(io::Error::other("raw echo: the echo differs in size"));
        }
    }
    Ok(times)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn content(len: usize, seed: usize) -> Vec<u8> {
        (0..len).map(|i| (i.wrapping_mul(31) ^ seed) as u8).collect()
    }

    /// Small messages parsed several per read, large ones across the direct-read threshold
    /// and the chunk size, each with exactly its bytes.
    #[tokio::test]
    async fn the_reader_returns_every_message_whole_and_in_order() {
        let sizes = [0, 1, 7, 100, 100, 40_000, READ_CHUNK - 3, READ_CHUNK + 5, 5, 3 << 20, 3, DIRECT_READ_MIN - 1];
        let RawPair { mut client, mut server } = RawPair::connect().await.unwrap();
        let writer = tokio::spawn(async move {
            for (i, len) in sizes.iter().enumerate() {
                write_prefixed(&mut client, &content(*len, i)).await.unwrap();
            }
            client
        });
        let mut reader = RawReader::new(1 << 20);
        for (i, len) in sizes.iter().enumerate() {
            let got = reader.read_message(&mut server).await.unwrap();
            assert_eq!(got, &content(*len, i)[..], "message {i} of {len} bytes");
        }
        drop(writer.await.unwrap());
        let end = reader.read_message(&mut server).await.unwrap_err();
        assert_eq!(end.kind(), io::ErrorKind::UnexpectedEof);
    }
}
