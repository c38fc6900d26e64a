//! The binary's allocator: small blocks from mimalloc, large ones from the system's malloc.
//!
//! A trivial task allocates a few dozen small blocks across threads (the client's future, the
//! scheduler's task, the messages, the worker's value). glibc's malloc cost 16 % of a task's
//! instructions in process (callgrind, `scripts/callgrind_tasks.sh`), and blocks freed on
//! another thread than the one that allocated them are its slow case; with mimalloc the
//! process's count falls 10 %.
//!
//! Large blocks (arrays, frames, buffers) stay with glibc, which maps each one on its own and
//! unmaps it when it is freed, from whatever thread. A worker manages its memory by resident
//! size (pausing, spilling, restarting past its terminate threshold), and with every block in
//! mimalloc `cli/tests/memory.rs` failed: a 64 MiB array computed on a blocking thread and freed
//! on another stays resident until its thread allocates again, so workers limited to 256 MiB
//! passed their terminate threshold. Routing by size is exact: `dealloc` and `realloc` are
//! given the block's layout, so a block always goes back to the allocator it came from.
//!
//! mimalloc is built without transparent huge pages (its `no_thp` feature): it asks for them
//! on its regions, and a region's first small block then made 2 MiB resident. With them, idle
//! processes were ~14 MiB larger than with glibc (7 MiB without) and the workers of
//! `cli/tests/memory.rs` peaked at 212–236 MiB against 203 MiB, close to their 243 MiB
//! terminate threshold.
//!
//! The libraries leave the choice to the program that links them.

use std::alloc::{GlobalAlloc, Layout, System};

use mimalloc::MiMalloc;

/// Blocks of this size and more come from the system's malloc. A task's blocks are far
/// smaller; a worker's peak resident size in `cli/tests/memory.rs` was the same as with glibc
/// alone at this threshold (203–204 MiB), 1–2 MiB higher at 128 KiB.
const LARGE: usize = 16 << 10;

/// mimalloc's `mi_option_purge_delay` (the same number in its v2 and v3 enums).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Small blocks from mimalloc, blocks of [`LARGE`] bytes and more from [`System`].
#[derive(Debug)]
pub(crate) struct SplitAlloc;

fn large(size: usize) -> bool {
    size >= LARGE
}

// SAFETY: each method passes a valid request on to one allocator, chosen by the block's size;
// `dealloc` and `realloc` are given the size the block was allocated with, so they choose the
// allocator that made it. A `realloc` across the threshold allocates from the other one,
// copies the smaller of the two sizes and frees the old block.
unsafe impl GlobalAlloc for SplitAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's layout, passed on unchanged.
        unsafe { if large(layout.size()) { System.alloc(layout) } else { MiMalloc.alloc(layout) } }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as `alloc`.
        unsafe { if large(layout.size()) { System.alloc_zeroed(layout) } else { MiMalloc.alloc_zeroed(layout) } }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated with `layout`, so by the allocator its size selects.
        unsafe { if large(layout.size()) { System.dealloc(ptr, layout) } else { MiMalloc.dealloc(ptr, layout) } }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        match (large(layout.size()), large(new_size)) {
            // SAFETY: the block stays with the allocator that made it.
            (true, true) => unsafe { System.realloc(ptr, layout, new_size) },
            // SAFETY: as above.
            (false, false) => unsafe { MiMalloc.realloc(ptr, layout, new_size) },
            _ => {
                // SAFETY: the caller guarantees `new_size`, rounded up to the alignment, does not
                // overflow, so the new layout is valid.
                let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
                // SAFETY: a fresh block of `new_layout` from the allocator its size selects.
                let new = unsafe { self.alloc(new_layout) };
                if !new.is_null() {
                    // SAFETY: both blocks hold at least the smaller size and do not overlap; the
                    // old block is freed by the allocator that made it.
                    unsafe {
                        std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                        self.dealloc(ptr, layout);
                    }
                }
                new
            }
        }
    }
}

/// How long mimalloc keeps emptied pages before giving them back (its purge delay, in ms).
const PURGE_DELAY_MS: std::ffi::c_long = 100;

/// Freed small blocks go back to the system 100 ms after their pages empty. mimalloc's default
/// waits a second, and purges only when a thread allocates again, so a process whose threads go
/// idle after a burst keeps the burst's memory. With every block in mimalloc, a scheduler that
/// cut off a hostile peer kept the ~300 MiB the peer had made it buffer, and the two
/// memory-returns checks of `cli/tests/hostile_peers.rs` failed without a short delay. Large
/// blocks now go to glibc (the buffered frames among them), and the checks pass with this one.
/// The scheduler's driver wakes every 100 ms (its tick), so its threads allocate again soon.
///
/// A delay of 0 (purge at once, this binary's default until 2026-12-04) costs page faults:
/// pages emptied at the end of one burst are faulted in again by the next. In process, `courier
/// bench-tasks --repeat 6` (map + gather of 10^5 trivial tasks, 600,000 tasks and more) took
/// 2,901 ms of CPU (mean of three rounds; 2,870–2,936) with 100 ms against 3,100 ms
/// (2,983–3,196) at 0, and 25–33 % fewer page faults; 1 s and never purging took 2,904 and
/// 2,886 ms (alternating rounds of `perf stat`, by hand). `MIMALLOC_PURGE_DELAY`
/// (milliseconds), when set, wins: mimalloc reads it and this leaves it alone.
pub(crate) fn return_freed_memory_soon() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    // SAFETY: sets an allocator option; any value is valid and it may be set at any time.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Blocks grown and shrunk across the threshold keep their bytes and go back to the
    /// allocator that made them (a mismatch would corrupt one of the heaps and abort).
    #[test]
    fn realloc_across_the_threshold_keeps_the_bytes() {
        for (from, to) in [(100, LARGE + 1), (LARGE * 2, 64), (LARGE - 1, LARGE), (LARGE, LARGE - 1), (8, 16)] {
            let layout = Layout::from_size_align(from, 16).unwrap();
            // SAFETY: a non-zero layout; every pointer is checked and freed with its layout.
            unsafe {
                let p = SplitAlloc.alloc(layout);
                assert!(!p.is_null());
                for i in 0..from {
                    *p.add(i) = i as u8;
                }
                let q = SplitAlloc.realloc(p, layout, to);
                assert!(!q.is_null());
                for i in 0..from.min(to) {
                    assert_eq!(*q.add(i), i as u8, "byte {i} of {from} -> {to}");
                }
                SplitAlloc.dealloc(q, Layout::from_size_align(to, 16).unwrap());
            }
        }
    }
}
