//! Helpers shared by the tests that play a raw shm:// peer.

#![allow(dead_code, reason = "each test file uses part of the support module")]

use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream as StdStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use courier_core::Registry;
use courier_shm::{ShmTransport, preamble, raw};
use rustix::fs::{MemfdFlags, SealFlags};
use tokio::net::UnixStream;

pub(crate) fn registry() -> Registry {
    Registry::new().with(Arc::new(ShmTransport::new()))
}

pub(crate) fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("courier-shm-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Connects like an shm:// client up to the handshake: the preamble passes the far ends of
/// two fresh channels; returns the stream and this side's ends (the one it sends records on,
/// the one it receives them on).
pub(crate) fn open(path: &Path) -> (UnixStream, (OwnedFd, OwnedFd)) {
    let std = StdStream::connect(path).unwrap();
    let (send, send_far) = raw::channel_pair().unwrap();
    let (recv, recv_far) = raw::channel_pair().unwrap();
    raw::send_with_fds(&std, &preamble(true), &[send_far, recv_far]).unwrap();
    std.set_nonblocking(true).unwrap();
    (UnixStream::from_std(std).unwrap(), (send, recv))
}

pub(crate) fn memfd(data: &[u8], seals: SealFlags) -> OwnedFd {
    let fd = rustix::fs::memfd_create("hostile", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
    let mut f = std::fs::File::from(fd);
    f.write_all(data).unwrap();
    let fd = OwnedFd::from(f);
    if !seals.is_empty() {
        rustix::fs::fcntl_add_seals(&fd, seals).unwrap();
    }
    fd
}

pub(crate) const SEALED: SealFlags = SealFlags::SHRINK.union(SealFlags::GROW).union(SealFlags::WRITE);
