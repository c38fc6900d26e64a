//! The machine's own limits, measured in the same run as the transports: what loopback TCP
//! and one core can do with no framing, no async runtime and no allocation.
//!
//! - **stream limit**: two threads with blocking sockets; the sender writes the payload
//!   `count` times with `write_all`, the receiver reads into one reused, pre-faulted buffer of
//!   the payload's size and acks after the last byte.
//! - **echo limit**: blocking round trips with both sockets driven by one thread (write,
//!   read on the other end, write back, read): the kernel's cost of a loopback round trip
//!   with no thread wake-up at all. Beside it, the same between two threads, which adds the
//!   two wake-ups any two-party design pays.
//! - **memcpy**: one core copying the payload between two pre-faulted buffers.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use crate::raw::faulted;

/// A connected pair of blocking loopback sockets with `TCP_NODELAY`.
#[derive(Debug)]
pub struct BlockingPair {
    client: TcpStream,
    server: Option<TcpStream>,
}

impl BlockingPair {
    /// Connects a pair on 127.0.0.1.
    pub fn connect() -> io::Result<BlockingPair> {
        let l = TcpListener::bind("127.0.0.1:0")?;
        let client = TcpStream::connect(l.local_addr()?)?;
        let (server, _) = l.accept()?;
        client.set_nodelay(true)?;
        server.set_nodelay(true)?;
        Ok(BlockingPair { client, server: Some(server) })
    }

    /// One-way stream of `count` × `payload`, receiver on its own thread; time from the first
    /// write to the ack.
    pub fn stream(&mut self, payload: &[u8], count: usize) -> io::Result<Duration> {
        let mut server = self.server.take().ok_or_else(|| io::Error::other("pair in use"))?;
        let total = payload.len() * count;
        let len = payload.len().max(1);
        let rx = std::thread::spawn(move || -> io::Result<TcpStream> {
            let mut buf = faulted(len);
            let mut got = 0;
            while got < total {
                let want = (total - got).min(buf.len());
                let n = server.read(&mut buf[..want])?;
                if n == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                got += n;
            }
            server.write_all(&[1])?;
            Ok(server)
        });
        let start = Instant::now();
        for _ in 0..count {
            self.client.write_all(payload)?;
        }
        let mut ack = [0u8; 1];
        self.client.read_exact(&mut ack)?;
        let took = start.elapsed();
        self.server = Some(rx.join().map_err(|_| io::Error::other("receiver panicked"))??);
        Ok(took)
    }

    /// `count` blocking round trips of `payload`, both ends driven by this thread (loopback
    /// delivers within the write, so no read waits); returns each one's duration.
    pub fn echo(&mut self, payload: &[u8], count: usize) -> io::Result<Vec<Duration>> {
        let server = self.server.as_mut().ok_or_else(|| io::Error::other("pair in use"))?;
        let mut buf = faulted(payload.len());
        let mut back = faulted(payload.len());
        let mut times = Vec::with_capacity(count);
        for _ in 0..count {
            let start = Instant::now();
            self.client.write_all(payload)?;
            server.read_exact(&mut buf)?;
            server.write_all(&buf)?;
            self.client.read_exact(&mut back)?;
            times.push(start.elapsed());
        }
        Ok(times)
    }

    /// `count` blocking round trips of `payload` to an echo thread (which echoes exactly the
    /// bytes it reads); returns each one's duration.
    pub fn echo_threads(&mut self, payload: &[u8], count: usize) -> io::Result<Vec<Duration>> {
        let mut server = self.server.take().ok_or_else(|| io::Error::other("pair in use"))?;
        let len = payload.len();
        let rx = std::thread::spawn(move || -> io::Result<TcpStream> {
            let mut buf = faulted(len);
            for _ in 0..count {
                server.read_exact(&mut buf)?;
                server.write_all(&buf)?;
            }
            Ok(server)
        });
        let mut back = faulted(len);
        let mut times = Vec::with_capacity(count);
        for _ in 0..count {
            let start = Instant::now();
            self.client.write_all(payload)?;
            self.client.read_exact(&mut back)?;
            times.push(start.elapsed());
        }
        self.server = Some(rx.join().map_err(|_| io::Error::other("echo thread panicked"))??);
        Ok(times)
    }
}

/// Time to copy `src` into a pre-faulted buffer `count` times on this thread.
pub fn memcpy(src: &[u8], count: usize) -> Duration {
    let mut dst = faulted(src.len());
    let start = Instant::now();
    for _ in 0..count {
        dst.copy_from_slice(std::hint::black_box(src));
        std::hint::black_box(&mut dst);
    }
    start.elapsed()
}

/// CPU time this process has used so far (user + system, all threads).
pub fn process_cpu() -> Duration {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// CPU seconds (user + system) process `pid` has used so far, from `/proc/PID/stat` (clock
/// ticks of 1/100 s); 0 when it cannot be read (the process is gone).
pub fn process_cpu_of(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the line: 11 and 12 after the state field.
    (ticks(11) + ticks(12)) / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_process_cpu_is_read_from_proc() {
        let me = process_cpu_of(std::process::id());
        assert!(me >= 0.0 && me.is_finite());
        assert_eq!(process_cpu_of(u32::MAX), 0.0, "no such process");
    }

    #[test]
    fn the_stream_limit_moves_every_byte_and_can_be_reused() {
        let mut pair = BlockingPair::connect().unwrap();
        let payload = faulted(100_000);
        for _ in 0..2 {
            pair.stream(&payload, 7).unwrap();
        }
        assert_eq!(pair.echo(&payload[..100], 5).unwrap().len(), 5);
        assert_eq!(pair.echo_threads(&payload[..100], 5).unwrap().len(), 5);
        assert_eq!(pair.echo(&payload[..100], 5).unwrap().len(), 5);
    }

    #[test]
    fn process_cpu_advances_with_work() {
        let before = process_cpu();
        let src = faulted(8 << 20);
        memcpy(&src, 20);
        assert!(process_cpu() > before);
    }
}
