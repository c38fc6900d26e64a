//! Exact-size, 64-byte-aligned receive buffers that become [`Bytes`] without a copy.
//!
//! A large frame is read straight from the socket into its own buffer, aligned so that an
//! n-d array (any element type up to a cache line) can be viewed in place.
//!
//! ## Recycling
//! Fresh multi-megabyte allocations are expensive on the receive path: the kernel maps and
//! zeroes every page on first touch, which costs about as much as the copy out of the socket.
//! Buffers of at least [`POOL_MIN`] bytes that were filled are therefore returned, when their
//! last `Bytes` reference drops, to a process-wide pool bounded in bytes ([`set_pool_limit`], default
//! [`DEFAULT_POOL_LIMIT`]), and reused for the next frame of the same size class (sizes are
//! rounded up by at most 1/8). The exposed length is always exact. Setting the limit to 0
//! disables recycling.
//!
//! ## Lent buffers
//! A process may install a [`BufferSource`] ([`set_buffer_source`]): buffers of at least
//! [`POOL_MIN`] bytes then come from it first, the heap and the pool serving when it has no
//! room. A shared-memory transport lends slots of its arena this way, so a large result or a
//! received frame already lies in shared memory and is later sent to a peer on this host
//! without a copy (courier-shm's `ShmTransport::lend_buffers`).

use std::alloc::{self, Layout};
use std::collections::HashMap;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, RwLock};

use bytes::buf::UninitSlice;
use bytes::{BufMut, Bytes};

use crate::error::{CommError, ErrorKind};

/// Alignment of every received frame buffer.
pub const FRAME_ALIGN: usize = 64;

/// Buffers smaller than this come from the allocator's fast path: 48 bytes more than asked, at
/// its natural 16-byte alignment, used from the first 64-byte boundary. glibc serves that from
/// its per-thread caches in tens of instructions, where a 64-byte-aligned request costs
/// hundreds (it splits a larger chunk and frees the rest): for a 100-byte frame, the
/// difference was a tenth of a round trip's instructions.
pub const SMALL_MAX: usize = 64 * 1024;
/// The extra bytes a small buffer asks for, to reach a 64-byte boundary from a 16-byte one.
const SMALL_SLACK: usize = FRAME_ALIGN - SMALL_ALIGN;
/// The alignment a small buffer asks the allocator for.
const SMALL_ALIGN: usize = 16;

/// Buffers at least this large are recycled through the pool.
pub const POOL_MIN: usize = 1 << 20;
/// Default bound on the bytes the pool keeps: 256 MiB.
pub const DEFAULT_POOL_LIMIT: usize = 256 << 20;

static POOL_LIMIT: AtomicUsize = AtomicUsize::new(DEFAULT_POOL_LIMIT);

/// Sets the most bytes the buffer pool keeps (0 disables recycling); returns the old limit.
/// Buffers already pooled beyond a lowered limit are released.
pub fn set_pool_limit(bytes: usize) -> usize {
    let old = POOL_LIMIT.swap(bytes, Ordering::Relaxed);
    let mut pool = pool();
    while pool.bytes > bytes {
        let Some((&cap, _)) = pool.free.iter().find(|(_, v)| !v.is_empty()) else { break };
        let ptr = pool.free.get_mut(&cap).and_then(Vec::pop).expect("non-empty class");
        pool.bytes -= cap;
        // SAFETY: pooled pointers were allocated with this capacity and are unused.
        unsafe { alloc::dealloc(ptr.0.as_ptr(), layout(cap)) };
    }
    old
}

/// Bytes currently held by the pool.
pub fn pooled_bytes() -> usize {
    pool().bytes
}

struct PoolPtr(NonNull<u8>);
// SAFETY: a pooled pointer is an unused allocation owned by the pool.
unsafe impl Send for PoolPtr {}

#[derive(Default)]
struct Pool {
    free: HashMap<usize, Vec<PoolPtr>>,
    bytes: usize,
}

static POOL: LazyLock<Mutex<Pool>> = LazyLock::new(Default::default);

fn pool() -> std::sync::MutexGuard<'static, Pool> {
    POOL.lock().unwrap_or_else(|p| p.into_inner())
}

/// The allocation size for a frame of `len` bytes: exact below [`POOL_MIN`], else rounded up
/// to a multiple of 1/16 of its power of two (at most 1/8 more), so similar sizes share buffers.
fn capacity_for(len: usize) -> usize {
    if len < POOL_MIN {
        return len;
    }
    let step = len.next_power_of_two() / 16;
    len.div_ceil(step) * step
}

fn layout(cap: usize) -> Layout {
    // Checked in `try_new`, which every buffer goes through.
    if cap < SMALL_MAX {
        Layout::from_size_align(cap + SMALL_SLACK, SMALL_ALIGN).unwrap_or(Layout::new::<u8>())
    } else {
        Layout::from_size_align(cap, FRAME_ALIGN).unwrap_or(Layout::new::<u8>())
    }
}

/// Memory lent for large buffers by something other than the heap (a shared-memory arena).
pub trait BufferSource: Send + Sync + 'static {
    /// A region of at least `len` bytes for one buffer, or `None` (no room: the heap serves).
    fn lend(&self, len: usize) -> Option<Lease>;
}

/// A region lent by a [`BufferSource`]: valid, writable and this buffer's alone until its
/// owner is dropped, which gives it back.
pub struct Lease {
    ptr: NonNull<u8>,
    len: usize,
    /// Held for its `Drop`, which gives the region back.
    _owner: Box<dyn Send + Sync>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease").field("ptr", &self.ptr).field("len", &self.len).finish()
    }
}

impl Lease {
    /// A lease of `len` bytes at `ptr`, given back when `owner` is dropped.
    ///
    /// # Safety
    /// `ptr` is aligned to [`FRAME_ALIGN`], and `ptr..ptr + len` stays valid for reads and
    /// writes, and is written through nothing but this lease, until `owner` is dropped (its
    /// bytes may be uninitialised). Others may read it only once the buffer made in it is
    /// frozen (a shared-memory peer, after it is sent).
    pub unsafe fn new(ptr: NonNull<u8>, len: usize, owner: Box<dyn Send + Sync>) -> Lease {
        Lease { ptr, len, _owner: owner }
    }

    /// Where the region starts.
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for an empty region.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

// SAFETY: a lease is the exclusive use of its region (its constructor's contract), like a
// Box<[u8]>; its owner is Send + Sync.
unsafe impl Send for Lease {}
// SAFETY: as above; shared access reads nothing by itself.
unsafe impl Sync for Lease {}

static SOURCE: RwLock<Option<Arc<dyn BufferSource>>> = RwLock::new(None);
/// Whether a source is installed (checked before taking the lock).
static HAS_SOURCE: AtomicBool = AtomicBool::new(false);

/// Installs `source` (or none) for the buffers of at least [`POOL_MIN`] bytes made from now
/// on, process-wide; returns the previous one. Buffers it lent stay valid when it is replaced.
pub fn set_buffer_source(source: Option<Arc<dyn BufferSource>>) -> Option<Arc<dyn BufferSource>> {
    let mut s = SOURCE.write().unwrap_or_else(|p| p.into_inner());
    HAS_SOURCE.store(source.is_some(), Ordering::Release);
    std::mem::replace(&mut *s, source)
}

fn lend(len: usize) -> Option<Lease> {
    if !HAS_SOURCE.load(Ordering::Acquire) {
        return None;
    }
    let source = SOURCE.read().unwrap_or_else(|p| p.into_inner()).clone()?;
    source.lend(len).filter(|l| l.len >= len && (l.ptr.as_ptr() as usize).is_multiple_of(FRAME_ALIGN))
}

/// A fixed-size buffer being filled front to back. Its bytes past `filled` are uninitialised
/// and never exposed.
#[derive(Debug)]
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
    cap: usize,
    filled: usize,
    /// How far `ptr` lies into its allocation (a small buffer's way to a 64-byte boundary).
    pad: usize,
    /// The lease this buffer's memory comes from (none: the heap's, `cap` bytes).
    lease: Option<Lease>,
}

// SAFETY: AlignedBuf uniquely owns its allocation, like a Box<[u8]>.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access only reads initialised bytes.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// An empty buffer of capacity `len`, aligned to [`FRAME_ALIGN`].
    ///
    /// # Panics
    /// If the allocation fails, as `Vec` does. Lengths from the wire go through
    /// [`AlignedBuf::try_new`].
    pub fn new(len: usize) -> Self {
        match Self::try_new(len) {
            Ok(buf) => buf,
            Err(_) => alloc::handle_alloc_error(Layout::new::<[u8; FRAME_ALIGN]>()),
        }
    }

    /// Like [`AlignedBuf::new`], but an impossible or failed allocation is an error.
    pub fn try_new(len: usize) -> Result<Self, CommError> {
        if len == 0 {
            return Ok(AlignedBuf {
                ptr: NonNull::<[u8; FRAME_ALIGN]>::dangling().cast(),
                len: 0,
                cap: 0,
                filled: 0,
                pad: 0,
                lease: None,
            });
        }
        if len >= POOL_MIN
            && let Some(lease) = lend(len)
        {
            return Ok(AlignedBuf::from_lease(lease, len));
        }
        let fail =
            || CommError::new(ErrorKind::FrameTooLarge, format!("cannot allocate a frame buffer of {len} bytes"));
        let cap = capacity_for(len);
        if cap >= POOL_MIN {
            let mut pool = pool();
            if let Some(ptr) = pool.free.get_mut(&cap).and_then(Vec::pop) {
                pool.bytes -= cap;
                return Ok(AlignedBuf { ptr: ptr.0, len, cap, filled: 0, pad: 0, lease: None });
            }
        }
        let (size, align) = if cap < SMALL_MAX { (cap + SMALL_SLACK, SMALL_ALIGN) } else { (cap, FRAME_ALIGN) };
        let layout = Layout::from_size_align(size, align).map_err(|_| fail())?;
        // SAFETY: layout has non-zero size.
        let base = NonNull::new(unsafe { alloc::alloc(layout) }).ok_or_else(fail)?;
        // A 16-byte-aligned block is at most 48 bytes short of a 64-byte boundary.
        let pad = base.as_ptr().align_offset(FRAME_ALIGN);
        debug_assert!(pad <= size - cap, "a small buffer's slack covers its padding");
        // SAFETY: pad + cap <= size, so the buffer lies inside the allocation.
        let ptr = unsafe { base.add(pad) };
        Ok(AlignedBuf { ptr, len, cap, filled: 0, pad, lease: None })
    }

    /// An empty buffer of capacity `len` in `lease`'s region.
    ///
    /// # Panics
    /// If the region is shorter than `len` or not aligned to [`FRAME_ALIGN`].
    pub fn from_lease(lease: Lease, len: usize) -> Self {
        assert!(
            lease.len >= len && (lease.ptr.as_ptr() as usize).is_multiple_of(FRAME_ALIGN),
            "a lease too short or misaligned"
        );
        AlignedBuf { ptr: lease.ptr, len, cap: 0, filled: 0, pad: 0, lease: Some(lease) }
    }

    /// A copy of `data` in an aligned buffer.
    pub fn copy_from(data: &[u8]) -> Bytes {
        let mut buf = AlignedBuf::new(data.len());
        buf.put_slice(data);
        buf.freeze()
    }

    /// Whether this buffer's memory was lent by a [`BufferSource`].
    pub fn is_lent(&self) -> bool {
        self.lease.is_some()
    }

    /// Capacity in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the capacity is zero.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes still to be written.
    pub fn remaining(&self) -> usize {
        self.len - self.filled
    }

    /// True when every byte has been written.
    pub fn is_full(&self) -> bool {
        self.filled == self.len
    }

    /// The written bytes.
    pub fn filled(&self) -> &[u8] {
        // SAFETY: the first `filled` bytes were initialised through BufMut.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.filled) }
    }

    /// The written bytes, mutably (the buffer is exclusively owned until frozen).
    pub fn filled_mut(&mut self) -> &mut [u8] {
        // SAFETY: the first `filled` bytes were initialised through BufMut, and `&mut self`
        // guarantees no other reference to them exists.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.filled) }
    }

    /// Turns a full buffer into `Bytes` without copying. A partially filled buffer is
    /// truncated to what was written.
    pub fn freeze(self) -> Bytes {
        if self.len == 0 {
            return Bytes::new();
        }
        Bytes::from_owner(Frozen(self))
    }
}

struct Frozen(AlignedBuf);

impl AsRef<[u8]> for Frozen {
    fn as_ref(&self) -> &[u8] {
        self.0.filled()
    }
}

impl Drop for AlignedBuf {
    /// Heap memory is freed; a lease (a `cap` of 0) goes back to its source as it drops.
    fn drop(&mut self) {
        if self.cap == 0 {
            return;
        }
        // SAFETY: allocated in `try_new` (or taken from the pool) with this capacity, `pad`
        // bytes before `ptr`.
        unsafe { alloc::dealloc(self.ptr.as_ptr().sub(self.pad), layout(self.cap)) }
    }
}

/// Only the buffers of delivered frames go back to the pool: a buffer a decoder abandons (a
/// peer that stalled, broke a limit, or a frame's buffer replaced by a larger one as it
/// grew) is freed, so what a peer made this side allocate returns to the system when its
/// message ends.
impl Drop for Frozen {
    fn drop(&mut self) {
        let buf = &mut self.0;
        if buf.cap >= POOL_MIN && buf.filled == buf.len {
            let mut pool = pool();
            if pool.bytes + buf.cap <= POOL_LIMIT.load(Ordering::Relaxed) {
                pool.bytes += buf.cap;
                pool.free.entry(buf.cap).or_default().push(PoolPtr(buf.ptr));
                // The pool owns the allocation now; the AlignedBuf frees nothing.
                buf.cap = 0;
            }
        }
    }
}

/// Abandoned partial messages smaller than this are left to the allocator.
const TRIM_AFTER: u64 = 16 << 20;
/// At most one trim per this interval, however many comms fail.
const TRIM_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);

/// Tells the allocator that a decoder abandoned `bytes` of a partial message (its buffers are
/// already freed). Above 16 MiB, freed memory is handed back to the operating system at once
/// (glibc keeps small freed blocks in its arenas otherwise: a peer sending 60,000 frames of
/// 60 KiB, then vanishing, left gigabytes resident). Rate-limited; a no-op elsewhere.
pub fn abandoned(bytes: u64) {
    if bytes < TRIM_AFTER {
        return;
    }
    static LAST: Mutex<Option<std::time::Instant>> = Mutex::new(None);
    let mut last = LAST.lock().unwrap_or_else(|p| p.into_inner());
    if last.is_some_and(|t| t.elapsed() < TRIM_INTERVAL) {
        return;
    }
    *last = Some(std::time::Instant::now());
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory to the system; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

// SAFETY: chunk_mut exposes exactly the unwritten tail; advance_mut is bounded by it.
unsafe impl BufMut for AlignedBuf {
    fn remaining_mut(&self) -> usize {
        self.len - self.filled
    }

    unsafe fn advance_mut(&mut self, cnt: usize) {
        assert!(cnt <= self.remaining(), "advance past the end of an AlignedBuf");
        self.filled += cnt;
    }

    fn chunk_mut(&mut self) -> &mut UninitSlice {
        // SAFETY: ptr+filled .. ptr+len is inside the allocation and not yet exposed.
        unsafe { UninitSlice::from_raw_parts_mut(self.ptr.as_ptr().add(self.filled), self.len - self.filled) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_and_zero_copy_freeze() {
        for len in [1usize, 15, 16, 17, 63, 64, 65, 100, 4096, SMALL_MAX - 1, SMALL_MAX, 1 << 20] {
            let mut b = AlignedBuf::new(len);
            let data: Vec<u8> = (0..len).map(|i| i as u8).collect();
            b.put_slice(&data[..len / 2]);
            assert_eq!(b.remaining(), len - len / 2);
            b.put_slice(&data[len / 2..]);
            assert!(b.is_full());
            let ptr = b.filled().as_ptr();
            let bytes = b.freeze();
            assert_eq!(bytes.as_ptr(), ptr, "freeze must not copy");
            assert_eq!(bytes.as_ptr() as usize % FRAME_ALIGN, 0);
            assert_eq!(&bytes[..], &data[..]);
        }
        assert!(AlignedBuf::new(0).freeze().is_empty());
    }

    #[test]
    fn capacity_classes_round_up_by_at_most_an_eighth() {
        for len in [POOL_MIN, POOL_MIN + 1, 3 << 20, (64 << 20) - 5, 64 << 20, (64 << 20) + 1, 1_000_000_007] {
            let cap = capacity_for(len);
            assert!(cap >= len && cap - len <= len / 8, "{len} -> {cap}");
        }
        assert_eq!(capacity_for(100), 100);
    }

    #[test]
    fn large_buffers_are_recycled_and_stay_exact() {
        // A size no other test uses, so the pool's class is ours alone.
        let len = (7 << 20) + 12_345;
        let mut a = AlignedBuf::new(len);
        a.put_bytes(1, len);
        let bytes = a.freeze();
        let ptr = bytes.as_ptr();
        drop(bytes);
        let mut b = AlignedBuf::new(len - 1);
        assert_eq!(b.len(), len - 1, "the exposed length is exact");
        assert_eq!(b.filled().as_ptr(), ptr, "same size class reuses the freed buffer");
        b.put_bytes(2, len - 1);
        assert!(b.freeze().iter().all(|&x| x == 2));
    }
}
