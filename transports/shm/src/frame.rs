//! One large frame in shared memory: written once into a fresh memfd and sealed by the
//! sender; checked and mapped read-only by the receiver.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::OwnedFd;

use bytes::Bytes;
use courier_core::CommError;
use rustix::fs::{FileType, MemfdFlags, SealFlags};

/// The seals a received frame must carry: nobody can shrink it (no SIGBUS for the reader),
/// grow it, or write to it again.
pub(crate) const REQUIRED_SEALS: SealFlags = SealFlags::SHRINK.union(SealFlags::GROW).union(SealFlags::WRITE);

/// Copies `data` into a fresh memfd and seals it: the frame can no longer change, shrink or
/// grow, and no further seals can be added or removed. The one copy of the transfer.
pub(crate) fn seal_copy(data: &[u8]) -> io::Result<OwnedFd> {
    let fd = rustix::fs::memfd_create("courier-shm", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
    let mut file = File::from(fd);
    // write(2) into a memfd copies into freshly allocated page-cache pages without zeroing
    // them first and without faulting them into this process (no resident memory here).
    file.write_all(data)?;
    let fd = OwnedFd::from(file);
    rustix::fs::fcntl_add_seals(&fd, REQUIRED_SEALS | SealFlags::SEAL)?;
    Ok(fd)
}

/// A read-only mapping of a sealed frame, the owner behind the received `Bytes`; counted in
/// this process's shared memory while it lives.
#[derive(Debug)]
struct Mapped(memmap2::Mmap);

impl Drop for Mapped {
    fn drop(&mut self) {
        crate::memory::sealed_unmapped(self.0.len());
    }
}

impl AsRef<[u8]> for Mapped {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// Checks that `fd` is a memfd of exactly `len` bytes (non-zero) carrying at least `seals`
/// (described as `sealed`, e.g. "shrinking and growing"); `what` names it in errors ("frame",
/// "segment"). Returns the length to map.
pub(crate) fn check_sealed(
    fd: &OwnedFd,
    len: u64,
    seals: SealFlags,
    sealed: &str,
    what: &str,
) -> Result<usize, CommError> {
    let stat =
        rustix::fs::fstat(fd).map_err(|e| CommError::from_io(format!("inspecting a shared {what}"), e.into()))?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
        return Err(CommError::protocol(format!("a shared {what}'s descriptor is not a memory file")));
    }
    // Only memfds (and hugetlbfs files) carry seals; any other file fails here.
    let has = rustix::fs::fcntl_get_seals(fd)
        .map_err(|_| CommError::protocol(format!("a shared {what}'s descriptor is not a sealable memory file")))?;
    if !has.contains(seals) {
        return Err(CommError::protocol(format!("a shared {what} is not sealed against {sealed} (seals {has:?})")));
    }
    if u64::try_from(stat.st_size).ok() != Some(len) || len == 0 {
        return Err(CommError::protocol(format!(
            "a shared {what} announced as {len} bytes has {} bytes",
            stat.st_size
        )));
    }
    usize::try_from(len).map_err(|_| CommError::protocol(format!("{len} bytes do not fit this platform")))
}

/// Checks that `fd` is a sealed memfd of exactly `len` bytes and maps it read-only; the fd is
/// closed here either way (the mapping keeps the memory alive). The bytes are page-aligned and
/// view the shared pages in place.
pub(crate) fn map(fd: OwnedFd, len: u64) -> Result<Bytes, CommError> {
    let len = check_sealed(&fd, len, REQUIRED_SEALS, "shrinking, growing and writing", "frame")?;
    // SAFETY: memmap2 requires that the file is not modified or truncated while mapped. The
    // seals checked above (write, shrink and grow, which can never be removed) make that
    // impossible for every process, the sender included.
    let map = unsafe { memmap2::MmapOptions::new().len(len).populate().map(&fd) }
        .map_err(|e| CommError::from_io("mapping a shared frame", e))?;
    drop(fd);
    crate::memory::sealed_mapped(map.len());
    Ok(Bytes::from_owner(Mapped(map)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_copy_maps_back_unchanged_and_cannot_change() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let fd = seal_copy(&data).unwrap();
        let dup = fd.try_clone().unwrap();
        let bytes = map(fd, data.len() as u64).unwrap();
        assert_eq!(&bytes[..], &data[..]);
        assert_eq!(bytes.as_ptr() as usize % 4096, 0, "mapped frames are page-aligned");
        // The sender's own descriptor can neither truncate, grow nor write the frame.
        assert!(rustix::fs::ftruncate(&dup, 0).is_err());
        assert!(rustix::fs::ftruncate(&dup, 1 << 30).is_err());
        assert!(rustix::io::pwrite(&dup, b"x", 0).is_err());
        assert!(rustix::fs::fcntl_add_seals(&dup, SealFlags::FUTURE_WRITE).is_err(), "sealed against new seals");
        assert_eq!(&bytes[..], &data[..]);
    }

    #[test]
    fn wrong_sizes_and_unsealed_files_are_refused() {
        let fd = seal_copy(&[7u8; 8192]).unwrap();
        let e = map(fd, 4096).unwrap_err();
        assert_eq!(e.kind(), courier_core::ErrorKind::Protocol, "{e}");
        let open = rustix::fs::memfd_create("x", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
        rustix::fs::ftruncate(&open, 4096).unwrap();
        let e = map(open, 4096).unwrap_err();
        assert!(e.to_string().contains("not sealed"), "{e}");
        let (r, _w) = std::io::pipe().unwrap();
        let e = map(OwnedFd::from(r), 4096).unwrap_err();
        assert!(e.to_string().contains("not a memory file"), "{e}");
    }
}
