//! A process-wide `BufferSource` serves buffers of at least `POOL_MIN` bytes: they are built
//! in its regions, given back when their last `Bytes` drops (not pooled), and a lease that is
//! too short or misaligned is refused in favour of the heap. Its own test binary: the source
//! is process-wide.

use std::alloc::Layout;
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::BufMut;
use courier_core::aligned::{self, AlignedBuf, BufferSource, Lease, POOL_MIN};

/// Lends heap regions, misaligned or short on request; counts what it lent and got back.
#[derive(Default)]
struct Source {
    lent: AtomicUsize,
    back: Arc<AtomicUsize>,
    /// 0: good leases; 1: misaligned; 2: one byte short.
    mode: AtomicUsize,
}

struct Region {
    ptr: NonNull<u8>,
    layout: Layout,
    back: Arc<AtomicUsize>,
}

// SAFETY: the region is owned, like a Box<[u8]>.
unsafe impl Send for Region {}
// SAFETY: as above.
unsafe impl Sync for Region {}

impl Drop for Region {
    fn drop(&mut self) {
        self.back.fetch_add(1, Ordering::SeqCst);
        // SAFETY: allocated in `lend` with this layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

impl BufferSource for Source {
    fn lend(&self, len: usize) -> Option<Lease> {
        let layout = Layout::from_size_align(len + 64, 4096).unwrap();
        // SAFETY: non-zero size.
        let ptr = NonNull::new(unsafe { std::alloc::alloc(layout) })?;
        self.lent.fetch_add(1, Ordering::SeqCst);
        let (at, n) = match self.mode.load(Ordering::SeqCst) {
            0 => (0, len),
            1 => (1, len),
            _ => (0, len - 1),
        };
        let region = Region { ptr, layout, back: self.back.clone() };
        // SAFETY: inside the allocation, which `region` owns and frees; nothing else uses it.
        Some(unsafe { Lease::new(NonNull::new(ptr.as_ptr().add(at)).unwrap(), n, Box::new(region)) })
    }
}

#[test]
fn a_buffer_source_serves_large_buffers_and_gets_them_back() {
    let source = Arc::new(Source::default());
    assert!(aligned::set_buffer_source(Some(source.clone())).is_none());

    let mut small = AlignedBuf::new(POOL_MIN - 1);
    assert!(!small.is_lent(), "small buffers come from the heap");
    small.put_bytes(1, POOL_MIN - 1);
    assert_eq!(source.lent.load(Ordering::SeqCst), 0);

    let pooled = aligned::pooled_bytes();
    let mut big = AlignedBuf::new(3 << 20);
    assert!(big.is_lent());
    big.put_bytes(5, 3 << 20);
    let bytes = big.freeze();
    assert!(bytes.iter().all(|&b| b == 5) && bytes.len() == 3 << 20);
    let copy = bytes.clone();
    drop(bytes);
    assert_eq!(source.back.load(Ordering::SeqCst), 0, "a Bytes still holds it");
    drop(copy);
    assert_eq!(source.back.load(Ordering::SeqCst), 1, "given back with the last Bytes");
    assert_eq!(aligned::pooled_bytes(), pooled, "and not pooled");

    for mode in [1, 2] {
        source.mode.store(mode, Ordering::SeqCst);
        let b = AlignedBuf::new(2 << 20);
        assert!(!b.is_lent(), "mode {mode}: a bad lease is refused");
        assert_eq!(b.filled().as_ptr() as usize % aligned::FRAME_ALIGN, 0);
    }
    assert_eq!(source.back.load(Ordering::SeqCst), 3, "refused leases are given back at once");

    aligned::set_buffer_source(None);
    source.mode.store(0, Ordering::SeqCst);
    assert!(!AlignedBuf::new(2 << 20).is_lent(), "uninstalled");
}
