//! What this process's shared memory costs the machine, for memory monitors such as a
//! worker's spill and pause decisions.
//!
//! `VmRSS` counts a shared page once in every process that has touched it: a worker that has
//! read frames from the arenas of three peers on its host shows up to those three arenas in
//! its own resident memory, though they are the peers' (allocated by them, counted by them,
//! and not freed by anything this worker does). [`resident_memory`] counts each page once, in
//! the process answerable for it: the sender's arena in the sender (all of it: its pages stay
//! resident for reuse, until trimmed), a sealed frame in the receiver that maps it (the
//! sender closed its descriptor once it was passed).

use std::sync::atomic::{AtomicU64, Ordering};

static SEALED_BYTES: AtomicU64 = AtomicU64::new(0);

/// This process's share of the machine's shared memory, by [`shared_memory`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SharedMemory {
    /// Bytes of arena segments this process made that are resident (each transport's: all of
    /// a segment from its creation, free slots included, until [`ShmTransport::trim_arena`]
    /// gives free slots back).
    ///
    /// [`ShmTransport::trim_arena`]: crate::ShmTransport::trim_arena
    pub arena_bytes: u64,
    /// Bytes of sealed frames received and still held here.
    pub sealed_frame_bytes: u64,
}

/// What shared memory this process is answerable for now.
pub fn shared_memory() -> SharedMemory {
    SharedMemory {
        arena_bytes: crate::arena::resident_bytes(),
        sealed_frame_bytes: SEALED_BYTES.load(Ordering::Relaxed),
    }
}

/// This process's resident memory with shared memory counted where it belongs: `VmRSS`
/// without its shared pages (`RssShmem`: this process's arenas and every segment or frame it
/// has mapped), plus [`shared_memory`]'s arenas and sealed frames. Peers' arena pages this
/// process has read are left to the peers. `None` where `/proc/self/status` cannot be read.
///
/// Shared anonymous mappings and files in `/dev/shm` made by other code in the process are
/// shared memory too and are not counted; Courier makes none.
pub fn resident_memory() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
    };
    let rss = field("VmRSS:")?;
    // Kernels before 4.5 have no split; then every resident page counts, as before.
    let shmem = field("RssShmem:").unwrap_or(0);
    let mine = shared_memory();
    Some(rss.saturating_sub(shmem) + mine.arena_bytes + mine.sealed_frame_bytes)
}

/// Counts a sealed frame of `bytes` mapped by this process.
pub(crate) fn sealed_mapped(bytes: usize) {
    SEALED_BYTES.fetch_add(bytes as u64, Ordering::Relaxed);
}

/// Counts a sealed frame of `bytes` unmapped by this process.
pub(crate) fn sealed_unmapped(bytes: usize) {
    SEALED_BYTES.fetch_sub(bytes as u64, Ordering::Relaxed);
}
