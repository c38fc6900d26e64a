//! Exact-size, 64-byte-aligned receive buffers that become [`Bytes`] without a copy.
//!
//! A large frame is read straight from the socket into its own buffer, aligned so that an
//! n-d array (any element type up to a cache line) can be viewed in place.

use std::alloc::{self, Layout};
use std::ptr::NonNull;

use bytes::buf::UninitSlice;
use bytes::{BufMut, Bytes};

use crate::error::{CommError, ErrorKind};

/// Alignment of every received frame buffer.
pub const FRAME_ALIGN: usize = 64;

/// A fixed-size buffer being filled front to back. Its bytes past `filled` are uninitialised
/// and never exposed.
#[derive(Debug)]
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
    filled: usize,
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
            return Ok(AlignedBuf { ptr: NonNull::<[u8; FRAME_ALIGN]>::dangling().cast(), len: 0, filled: 0 });
        }
        let fail =
            || CommError::new(ErrorKind::FrameTooLarge, format!("cannot allocate a frame buffer of {len} bytes"));
        let layout = Layout::from_size_align(len, FRAME_ALIGN).map_err(|_| fail())?;
        // SAFETY: layout has non-zero size.
        let ptr = unsafe { alloc::alloc(layout) };
        let ptr = NonNull::new(ptr).ok_or_else(fail)?;
        Ok(AlignedBuf { ptr, len, filled: 0 })
    }

    fn layout(len: usize) -> Layout {
        // Checked in `try_new`, which every buffer goes through.
        Layout::from_size_align(len, FRAME_ALIGN).unwrap_or(Layout::new::<u8>())
    }

    /// A copy of `data` in an aligned buffer.
    pub fn copy_from(data: &[u8]) -> Bytes {
        let mut buf = AlignedBuf::new(data.len());
        buf.put_slice(data);
        buf.freeze()
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
    fn drop(&mut self) {
        if self.len != 0 {
            // SAFETY: allocated in `new` with this layout.
            unsafe { alloc::dealloc(self.ptr.as_ptr(), Self::layout(self.len)) }
        }
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
        for len in [1usize, 63, 64, 65, 4096, 1 << 20] {
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
}
