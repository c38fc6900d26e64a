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

/// Freed small blocks go back to the system when their pages empty. mimalloc's default waits
/// a second and then purges only when the thread owning the pages allocates again, so a
/// process whose threads go idle after a burst keeps the burst's memory. With every block in
/// mimalloc, a scheduler that cut off a hostile peer kept the ~300 MiB the peer had made it
/// buffer, and the two memory-returns checks of `cli/tests/hostile_peers.rs` failed without
/// this. Now that large blocks go to glibc they pass either way (the buffered frames are
/// large blocks); this keeps the same promise for a burst of small ones.
///
/// It has a price: pages emptied and filled again are faulted in again. In process, map +
/// gather of 10^5 trivial tasks took 9–19 % fewer page faults and ran 2–17 % faster with a
/// delay of 100 ms (four alternating rounds of `bench-tasks --repeat 5`, by hand). Who prefers
/// that sets `MIMALLOC_PURGE_DELAY` (milliseconds), which mimalloc reads and this then leaves
/// alone.
pub(crate) fn return_freed_memory_at_once() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    // SAFETY: sets an allocator option; any value is valid and it may be set at any time.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
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
