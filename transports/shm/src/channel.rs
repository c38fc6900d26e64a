//! The descriptor channel: one end of a `SOCK_SEQPACKET` socket pair per side of a comm. Each
//! record carries the memfds of one message's shared frames (`SCM_RIGHTS`) and a 16-byte
//! body: magic `CRFD`, the fd count (u32 LE), the message's sequence number (u64 LE).

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};

use courier_core::CommError;
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// Most descriptors one record (one message) carries: the kernel's `SCM_MAX_FD`.
pub const MAX_FDS_PER_MESSAGE: usize = 253;
/// Magic of a record body.
pub const RECORD_MAGIC: [u8; 4] = *b"CRFD";
/// Length of a record body.
pub const RECORD_LEN: usize = 16;

/// A socket pair for a new comm: (this side's end, the end to pass to the peer).
pub(crate) fn pair() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?)
}

/// Checks that a descriptor passed as the peer's channel end is a Unix `SOCK_SEQPACKET`
/// socket, and makes it non-blocking.
pub(crate) fn check_end(fd: &OwnedFd) -> Result<(), CommError> {
    let kind = rustix::net::sockopt::socket_type(fd);
    let domain = rustix::net::sockopt::socket_domain(fd);
    if !matches!((kind, domain), (Ok(SocketType::SEQPACKET), Ok(AddressFamily::UNIX))) {
        return Err(CommError::protocol("the descriptor channel passed is not a unix seqpacket socket"));
    }
    rustix::io::ioctl_fionbio(fd, true).map_err(|e| CommError::from_io("configuring the descriptor channel", e.into()))
}

/// Sends `bytes` with `fds` attached on a non-blocking socket (`WouldBlock` when full).
pub(crate) fn send_with_fds(sock: impl AsFd, bytes: &[u8], fds: &[OwnedFd]) -> io::Result<usize> {
    let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS_PER_MESSAGE))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !borrowed.is_empty() && !control.push(SendAncillaryMessage::ScmRights(&borrowed)) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "too many descriptors for one message"));
    }
    Ok(rustix::net::sendmsg(sock, &[IoSlice::new(bytes)], &mut control, SendFlags::NOSIGNAL)?)
}

/// What one non-blocking receive brought.
#[derive(Debug)]
pub(crate) struct Received {
    /// Body bytes (at most the buffer; `truncated` if there were more).
    pub(crate) len: usize,
    /// Descriptors that came with them, owned (closed on drop).
    pub(crate) fds: Vec<OwnedFd>,
    /// The body or the descriptors did not fit.
    pub(crate) truncated: bool,
}

/// Receives into `buf` with up to `max_fds` descriptors (more are closed by the kernel and
/// reported as `truncated`), close-on-exec.
pub(crate) fn recv_with_fds(sock: impl AsFd, buf: &mut [u8], max_fds: usize) -> io::Result<Received> {
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(max_fds))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = rustix::net::recvmsg(sock, &mut [IoSliceMut::new(buf)], &mut control, RecvFlags::CMSG_CLOEXEC)?;
    let mut fds = Vec::new();
    for msg in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = msg {
            fds.extend(rights);
        }
    }
    let truncated = got.flags.intersects(ReturnFlags::TRUNC | ReturnFlags::CTRUNC) || got.bytes > buf.len();
    Ok(Received { len: got.bytes.min(buf.len()), fds, truncated })
}

/// One end of a descriptor channel, shared by a comm's halves (and, for releases, by the
/// frames it received).
#[derive(Debug)]
pub(crate) struct Channel {
    fd: AsyncFd<OwnedFd>,
}

/// A record's body and descriptors.
pub(crate) type RawRecord = (Vec<u8>, Vec<OwnedFd>);

/// Largest record body read (a release record of [`crate::arena::MAX_RELEASES_PER_RECORD`]).
const MAX_BODY: usize = 16 + 16 * crate::arena::MAX_RELEASES_PER_RECORD;

impl Channel {
    /// Wraps a non-blocking end (registers it with the reactor).
    pub(crate) fn new(fd: OwnedFd) -> io::Result<Self> {
        // SAFETY: an `OwnedFd` is open until dropped and always names the same descriptor.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(|e| io::Error::other(e.to_string()))?;
        Ok(Channel { fd })
    }

    /// Sends one record, waiting while the channel is full.
    pub(crate) async fn send(&self, body: &[u8], fds: &[OwnedFd]) -> io::Result<()> {
        loop {
            let mut guard = self.fd.writable().await?;
            match guard.try_io(|fd| send_with_fds(fd.get_ref(), body, fds)) {
                Ok(r) => return r.map(|_| ()),
                Err(_would_block) => continue,
            }
        }
    }

    /// Sends one record now, or fails with `WouldBlock`.
    pub(crate) fn try_send(&self, body: &[u8], fds: &[OwnedFd]) -> io::Result<()> {
        send_with_fds(self.fd.get_ref(), body, fds).map(|_| ())
    }

    /// The next record, waiting for one; `None` when the peer closed its end.
    pub(crate) async fn recv(&self) -> Result<Option<RawRecord>, CommError> {
        loop {
            let mut guard =
                self.fd.readable().await.map_err(|e| CommError::from_io("waiting on the descriptor channel", e))?;
            let got = guard.try_io(|fd| {
                let mut body = vec![0u8; MAX_BODY + 1];
                recv_with_fds(fd.get_ref(), &mut body, MAX_FDS_PER_MESSAGE).map(|r| (body, r))
            });
            match got {
                Ok(Ok((_, r))) if r.len == 0 && r.fds.is_empty() => return Ok(None),
                Ok(Ok((_, r))) if r.truncated => {
                    return Err(CommError::protocol("a descriptor record too long, or with too many descriptors"));
                }
                Ok(Ok((mut body, r))) => {
                    body.truncate(r.len);
                    return Ok(Some((body, r.fds)));
                }
                Ok(Err(e)) => return Err(CommError::from_io("reading the descriptor channel", e)),
                Err(_would_block) => continue,
            }
        }
    }

    /// The next record (body and descriptors), without waiting; `None` when there is none (or
    /// the peer closed its end). A truncated record is a protocol error.
    pub(crate) fn try_recv(&self) -> Result<Option<RawRecord>, CommError> {
        match self.poll(false)? {
            Polled::Record(r) => Ok(Some(r)),
            Polled::Empty | Polled::Closed => Ok(None),
        }
    }

    /// The next record without waiting. With `cached`, a channel the reactor has not seen
    /// become readable since it was last found empty is taken as empty without a system call
    /// (a record that arrived just now may then wait for the next look). A truncated record is
    /// a protocol error.
    pub(crate) fn poll(&self, cached: bool) -> Result<Polled, CommError> {
        let read = |fd: &OwnedFd| {
            let mut body = vec![0u8; MAX_BODY + 1];
            recv_with_fds(fd, &mut body, MAX_FDS_PER_MESSAGE).map(|r| (body, r))
        };
        let got = if cached { self.fd.try_io(Interest::READABLE, read) } else { read(self.fd.get_ref()) };
        let (mut body, got) = match got {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Polled::Empty),
            Err(e) => return Err(CommError::from_io("reading the descriptor channel", e)),
        };
        if got.len == 0 && got.fds.is_empty() {
            return Ok(Polled::Closed);
        }
        if got.truncated {
            return Err(CommError::protocol("a descriptor record too long, or with too many descriptors"));
        }
        body.truncate(got.len);
        Ok(Polled::Record((body, got.fds)))
    }
}

/// What a look at a channel found.
#[derive(Debug)]
pub(crate) enum Polled {
    Record(RawRecord),
    /// Nothing yet.
    Empty,
    /// The peer closed its end: nothing more will come.
    Closed,
}

/// A frame record's body: magic, descriptor count, the message's sequence number.
pub(crate) fn record_body(count: usize, seq: u64) -> [u8; RECORD_LEN] {
    let mut body = [0u8; RECORD_LEN];
    body[..4].copy_from_slice(&RECORD_MAGIC);
    body[4..8].copy_from_slice(&(count as u32).to_le_bytes());
    body[8..].copy_from_slice(&seq.to_le_bytes());
    body
}

/// Parses a frame record: its sequence number, checking the count against the descriptors.
pub(crate) fn parse_record(body: &[u8], fds: usize) -> Result<u64, CommError> {
    if body.len() != RECORD_LEN || body[..4] != RECORD_MAGIC {
        return Err(CommError::protocol("a malformed descriptor record"));
    }
    let count = u32::from_le_bytes(body[4..8].try_into().expect("4 bytes")) as usize;
    if count != fds {
        return Err(CommError::protocol(format!(
            "a descriptor record announced {count} descriptors and carried {fds}"
        )));
    }
    Ok(u64::from_le_bytes(body[8..16].try_into().expect("8 bytes")))
}
