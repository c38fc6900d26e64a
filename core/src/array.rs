//! n-dimensional arrays in messages, without copies.
//!
//! A [`WireArray`] is an array in transit: dtype, shape, element strides and byte order in the
//! header (MessagePack), the data out of band as frames (see [`serial`](crate::serial)).
//!
//! **Sending.** [`WireArray::from_array`] takes an owned ndarray. If it is contiguous in memory
//! (C order, Fortran order, or any permutation of axes) its buffer *becomes* the frame: nothing
//! is copied, and the strides sent describe the layout, so order is preserved. Other arrays go
//! through [`WireArray::from_view`], which copies once: strided views (`a[::2, :]`, reversed
//! axes) are made C-contiguous; broadcast (zero-stride) axes are collapsed so that only the
//! unique data is sent, and the receiver gets a zero-stride view back.
//!
//! **Receiving.** [`WireArray::view`] is a view into the received frame when it is aligned for
//! the element type and in native byte order (tcp:// frames are 64-byte aligned; inproc://
//! frames are the sender's own buffer); [`WireArray::cow`] falls back to an owned copy
//! otherwise, and [`WireArray::to_array`] always copies.
//!
//! Decoding validates everything against the data before any view is made: dtype, that the
//! strides stay within the data (checked arithmetic), and that `bool` bytes are 0 or 1.
//!
//! ```
//! use courier_core::{WireArray, serial};
//! use ndarray::Array2;
//!
//! let a = Array2::<f64>::from_shape_fn((3, 4), |(i, j)| (i * 4 + j) as f64).reversed_axes(); // F order
//! let msg = serial::to_message(&WireArray::from_array(a.clone()))?;
//! let back: WireArray = serial::from_message(&msg)?;
//! let view = back.view::<f64>()?;
//! assert_eq!(view, a.into_dyn());
//! assert!(view.t().is_standard_layout()); // still Fortran order
//! # Ok::<(), courier_core::CommError>(())
//! ```

use std::fmt;
use std::mem::{align_of, size_of};

use bytes::Bytes;
use ndarray::{Array, ArrayD, ArrayView, ArrayViewD, Axis, CowArray, Dimension, IxDyn, ShapeBuilder, Slice};
use num_complex::Complex;
use serde::de::Error as _;
use serde::ser::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{CommError, ErrorKind};
use crate::serial::{push_out_of_band, take_out_of_band};

/// Element types an array can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    /// `bool`, one byte, 0 or 1.
    Bool,
    /// `i8`.
    I8,
    /// `i16`.
    I16,
    /// `i32`.
    I32,
    /// `i64`.
    I64,
    /// `u8`.
    U8,
    /// `u16`.
    U16,
    /// `u32`.
    U32,
    /// `u64`.
    U64,
    /// `f32`.
    F32,
    /// `f64`.
    F64,
    /// `Complex<f32>`: two f32, real then imaginary.
    C64,
    /// `Complex<f64>`: two f64, real then imaginary.
    C128,
}

impl DType {
    const ALL: [DType; 13] = [
        DType::Bool,
        DType::I8,
        DType::I16,
        DType::I32,
        DType::I64,
        DType::U8,
        DType::U16,
        DType::U32,
        DType::U64,
        DType::F32,
        DType::F64,
        DType::C64,
        DType::C128,
    ];

    /// Bytes per element.
    pub fn itemsize(self) -> usize {
        match self {
            DType::Bool | DType::I8 | DType::U8 => 1,
            DType::I16 | DType::U16 => 2,
            DType::I32 | DType::U32 | DType::F32 => 4,
            DType::I64 | DType::U64 | DType::F64 | DType::C64 => 8,
            DType::C128 => 16,
        }
    }

    /// NumPy's type code without byte order: `f8`, `i4`, `b1`, `c16`, …
    pub fn code(self) -> &'static str {
        match self {
            DType::Bool => "b1",
            DType::I8 => "i1",
            DType::I16 => "i2",
            DType::I32 => "i4",
            DType::I64 => "i8",
            DType::U8 => "u1",
            DType::U16 => "u2",
            DType::U32 => "u4",
            DType::U64 => "u8",
            DType::F32 => "f4",
            DType::F64 => "f8",
            DType::C64 => "c8",
            DType::C128 => "c16",
        }
    }

    /// Parses a NumPy type string (`<f8`, `>i4`, `|b1`, `f8`); returns the dtype and whether
    /// it is big-endian.
    pub fn parse(s: &str) -> Option<(DType, bool)> {
        let (big, code) = match s.as_bytes().first()? {
            b'<' | b'=' | b'|' => (false, &s[1..]),
            b'>' => (true, &s[1..]),
            _ => (false, s),
        };
        DType::ALL.into_iter().find(|d| d.code() == code).map(|d| (d, big && d.itemsize() > 1))
    }

    /// Bytes swapped as a unit when converting byte order (complex swaps each half).
    fn swap_unit(self) -> usize {
        match self {
            DType::C64 | DType::C128 => self.itemsize() / 2,
            _ => self.itemsize(),
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

mod sealed {
    pub trait Sealed {}
}

/// A type arrays of which Courier can send: the integer and float widths, `bool`, and complex.
///
/// # Safety
/// Implemented only here, for types without padding whose size and alignment match
/// [`DType::itemsize`], and (except `bool`, which is validated) for which every bit pattern is
/// a valid value.
pub unsafe trait Element: Copy + Send + Sync + 'static + sealed::Sealed {
    /// The dtype of this element type.
    const DTYPE: DType;
}

macro_rules! elements {
    ($($t:ty => $d:ident),* $(,)?) => {$(
        impl sealed::Sealed for $t {}
        // SAFETY: plain numeric types with no padding; bool is validated on receipt.
        unsafe impl Element for $t { const DTYPE: DType = DType::$d; }
    )*};
}

elements!(bool => Bool, i8 => I8, i16 => I16, i32 => I32, i64 => I64, u8 => U8, u16 => U16, u32 => U32,
    u64 => U64, f32 => F32, f64 => F64, Complex<f32> => C64, Complex<f64> => C128);

fn array_error(msg: impl Into<String>) -> CommError {
    CommError::new(ErrorKind::Serialization, msg)
}

/// An n-d array in transit. See the [module docs](self).
#[derive(Clone, PartialEq, Eq)]
pub struct WireArray {
    dtype: DType,
    big_endian: bool,
    shape: Vec<usize>,
    /// Element strides into `data`, non-negative; 0 on broadcast axes.
    strides: Vec<usize>,
    data: Bytes,
}

impl fmt::Debug for WireArray {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WireArray")
            .field("dtype", &self.dtype)
            .field("shape", &self.shape)
            .field("strides", &self.strides)
            .field("nbytes", &self.data.len())
            .finish()
    }
}

/// Keeps an owned contiguous array alive as the owner of a frame.
struct ArrayBytes<T, D>(Array<T, D>);

impl<T: Element, D: Dimension> AsRef<[u8]> for ArrayBytes<T, D> {
    fn as_ref(&self) -> &[u8] {
        let s = self.0.as_slice_memory_order().unwrap_or(&[]);
        // SAFETY: Element types have no padding; the slice is the array's live buffer.
        unsafe { std::slice::from_raw_parts(s.as_ptr().cast::<u8>(), size_of_val(s)) }
    }
}

/// Most elements [`WireArray::from_c_order_chunks`] asks for at once (32 KiB of f64: the
/// chunk stays in the core's cache between being written and copied into the array).
pub const BUILD_CHUNK: usize = 4096;

fn c_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![0; shape.len()];
    let mut acc = 1usize;
    for (s, &n) in strides.iter_mut().zip(shape).rev() {
        *s = acc;
        acc = acc.saturating_mul(n.max(1));
    }
    strides
}

impl WireArray {
    /// Takes an owned array. A contiguous array (C, Fortran, or permuted axes, with
    /// non-negative strides) is sent without copying: its buffer becomes the frame.
    pub fn from_array<T: Element, D: Dimension>(a: Array<T, D>) -> Self {
        let strides: Option<Vec<usize>> = a.strides().iter().map(|&s| usize::try_from(s).ok()).collect();
        match strides {
            Some(strides) if a.as_slice_memory_order().is_some() && !a.is_empty() => {
                let shape = a.shape().to_vec();
                let strides = strides.iter().zip(&shape).map(|(&s, &n)| if n == 1 { 0 } else { s }).collect();
                let strides = normalize(&shape, strides);
                WireArray {
                    dtype: T::DTYPE,
                    big_endian: false,
                    shape,
                    strides,
                    data: Bytes::from_owner(ArrayBytes(a.into_dyn())),
                }
            }
            _ => Self::from_view(a.view()),
        }
    }

    /// A C-order array of `shape` written chunk by chunk: `fill(range, out)` appends the
    /// values of elements `range` (C order) to the empty `out`, at most [`BUILD_CHUNK`] at a
    /// time. The values go straight into a 64-byte-aligned buffer, which for arrays of 1 MiB
    /// and more comes from the frame pool ([`crate::aligned`]) when one is free: no fresh pages
    /// to fault in and zero, the cost that dominates making a large result otherwise. A `fill`
    /// that appends the wrong number of values is an error.
    pub fn from_c_order_chunks<T: Element>(
        shape: &[usize],
        mut fill: impl FnMut(std::ops::Range<usize>, &mut Vec<T>),
    ) -> Result<WireArray, CommError> {
        let too_big = || CommError::new(ErrorKind::FrameTooLarge, format!("an array of shape {shape:?} is too large"));
        let n = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or_else(too_big)?;
        let bytes = n.checked_mul(size_of::<T>()).filter(|&b| b <= isize::MAX as usize).ok_or_else(too_big)?;
        let mut buf = crate::aligned::AlignedBuf::try_new(bytes)?;
        let mut chunk: Vec<T> = Vec::with_capacity(BUILD_CHUNK.min(n));
        let mut start = 0;
        while start < n {
            let end = (start + BUILD_CHUNK).min(n);
            chunk.clear();
            fill(start..end, &mut chunk);
            if chunk.len() != end - start {
                return Err(CommError::new(
                    ErrorKind::Serialization,
                    format!("building an array: {} values for elements {start}..{end}", chunk.len()),
                ));
            }
            // SAFETY: Element types have no padding; `chunk` holds `chunk.len()` values.
            let raw = unsafe { std::slice::from_raw_parts(chunk.as_ptr().cast::<u8>(), size_of_val(chunk.as_slice())) };
            bytes::BufMut::put_slice(&mut buf, raw);
            start = end;
        }
        Ok(WireArray {
            dtype: T::DTYPE,
            big_endian: false,
            strides: normalize(shape, c_strides(shape)),
            shape: shape.to_vec(),
            data: buf.freeze(),
        })
    }

    /// Copies a view once: contiguous views keep their memory order; other strided views become
    /// C-contiguous; broadcast (zero-stride) axes send only the unique data.
    pub fn from_view<T: Element, D: Dimension>(v: ArrayView<'_, T, D>) -> Self {
        let shape = v.shape().to_vec();
        if v.is_empty() {
            return WireArray {
                dtype: T::DTYPE,
                big_endian: false,
                strides: normalize(&shape, c_strides(&shape)),
                shape,
                data: Bytes::new(),
            };
        }
        let broadcast: Vec<bool> = v.strides().iter().zip(&shape).map(|(&s, &n)| s == 0 && n > 1).collect();
        let mut compact = v.into_dyn();
        for (axis, _) in broadcast.iter().enumerate().filter(|(_, b)| **b) {
            compact.slice_axis_inplace(Axis(axis), Slice::from(0..1));
        }
        let non_negative = compact.strides().iter().all(|&s| s >= 0);
        let (owned, strides) = match compact.as_slice_memory_order() {
            Some(_) if non_negative => {
                let owned = compact.to_owned();
                let strides = owned.strides().iter().map(|&s| s as usize).collect::<Vec<_>>();
                (owned, strides)
            }
            _ => {
                let owned = compact.as_standard_layout().into_owned();
                let strides = c_strides(owned.shape());
                (owned, strides)
            }
        };
        let strides = strides
            .into_iter()
            .zip(&broadcast)
            .zip(owned.shape())
            .map(|((s, &b), &n)| if b || n == 1 { 0 } else { s })
            .collect();
        let strides = normalize(&shape, strides);
        WireArray { dtype: T::DTYPE, big_endian: false, shape, strides, data: Bytes::from_owner(ArrayBytes(owned)) }
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Element strides into the data (0 on broadcast axes and axes of length 1).
    pub fn strides(&self) -> &[usize] {
        &self.strides
    }

    /// The data bytes as sent (unique data only for broadcast arrays).
    pub fn data(&self) -> &Bytes {
        &self.data
    }

    /// True when the data is laid out in C order (row-major, no broadcast).
    pub fn is_c_order(&self) -> bool {
        self.strides == normalize(&self.shape, c_strides(&self.shape))
    }

    /// True when the data is laid out in Fortran order (column-major, no broadcast).
    pub fn is_f_order(&self) -> bool {
        let rev: Vec<usize> = self.shape.iter().rev().copied().collect();
        let mut f = c_strides(&rev);
        f.reverse();
        self.strides == normalize(&self.shape, f)
    }

    fn check_type<T: Element>(&self) -> Result<(), CommError> {
        if T::DTYPE != self.dtype {
            return Err(array_error(format!("array has dtype {}, asked for {}", self.dtype, T::DTYPE)));
        }
        Ok(())
    }

    /// A view into the received data, without copying. Fails when the dtype differs, the data
    /// is not aligned for `T`, or it is not in native byte order (use [`WireArray::cow`]).
    pub fn view<T: Element>(&self) -> Result<ArrayViewD<'_, T>, CommError> {
        self.check_type::<T>()?;
        if self.big_endian {
            return Err(array_error("array data is big-endian; use to_array or cow to convert"));
        }
        let ptr = if self.data.is_empty() {
            std::ptr::NonNull::<T>::dangling().as_ptr().cast_const()
        } else {
            self.data.as_ptr().cast::<T>()
        };
        if !(ptr as usize).is_multiple_of(align_of::<T>()) {
            return Err(array_error(format!("array data is not aligned to {} bytes", align_of::<T>())));
        }
        let shape = IxDyn(&self.shape).strides(IxDyn(&self.strides));
        // SAFETY: validated at construction: the strides are non-negative and every element
        // offset they reach lies within `data` (checked arithmetic); `data` is aligned for T
        // (checked above) and lives as long as `self`; bool bytes are 0 or 1.
        Ok(unsafe { ArrayView::from_shape_ptr(shape, ptr) })
    }

    /// A view when possible, else an owned copy in native order.
    pub fn cow<T: Element>(&self) -> Result<CowArray<'_, T, IxDyn>, CommError> {
        match self.view::<T>() {
            Ok(v) => Ok(CowArray::from(v)),
            Err(_) => self.to_array::<T>().map(CowArray::from),
        }
    }

    /// An owned copy. Contiguous layouts keep their order; broadcast arrays are materialised.
    pub fn to_array<T: Element>(&self) -> Result<ArrayD<T>, CommError> {
        if let Ok(v) = self.view::<T>() {
            return Ok(v.to_owned());
        }
        self.check_type::<T>()?;
        // Unaligned or foreign byte order: copy into an aligned buffer of T first.
        let n = self.data.len() / size_of::<T>();
        let mut raw = self.data.to_vec();
        if self.big_endian {
            for unit in raw.chunks_exact_mut(self.dtype.swap_unit()) {
                unit.reverse();
            }
        }
        let values: Vec<T> = (0..n)
            // SAFETY: `raw` holds n whole elements; read_unaligned copies each out.
            .map(|i| unsafe { std::ptr::read_unaligned(raw.as_ptr().add(i * size_of::<T>()).cast::<T>()) })
            .collect();
        let shape = IxDyn(&self.shape).strides(IxDyn(&self.strides));
        let ptr =
            if values.is_empty() { std::ptr::NonNull::<T>::dangling().as_ptr().cast_const() } else { values.as_ptr() };
        // SAFETY: as in `view`: the strides were validated against n elements.
        let view = unsafe { ArrayView::from_shape_ptr(shape, ptr) };
        Ok(view.to_owned())
    }

    /// An owned copy with a fixed dimensionality, e.g. `into_array::<f64, Ix2>()`.
    pub fn to_array_dim<T: Element, D: Dimension>(&self) -> Result<Array<T, D>, CommError> {
        self.to_array::<T>()?
            .into_dimensionality::<D>()
            .map_err(|e| array_error(format!("array has {} dimensions: {e}", self.shape.len())))
    }

    /// Builds and validates an array from its parts (as read from a header).
    fn from_parts(dtype: &str, shape: Vec<u64>, strides: Vec<u64>, data: Bytes) -> Result<Self, CommError> {
        let (dtype, big_endian) = DType::parse(dtype).ok_or_else(|| array_error(format!("unknown dtype {dtype:?}")))?;
        if shape.len() != strides.len() {
            return Err(array_error(format!("{} shape entries but {} strides", shape.len(), strides.len())));
        }
        if shape.len() > 32 {
            return Err(array_error(format!("{} dimensions (at most 32)", shape.len())));
        }
        let to_usize = |v: u64| usize::try_from(v).map_err(|_| array_error("dimension too large"));
        let shape: Vec<usize> = shape.into_iter().map(to_usize).collect::<Result<_, _>>()?;
        let strides: Vec<usize> = strides.into_iter().map(to_usize).collect::<Result<_, _>>()?;
        let too_big = || array_error("array extent overflows");
        let elements = shape.iter().try_fold(1usize, |a, &n| a.checked_mul(n)).ok_or_else(too_big)?;
        if elements.checked_mul(dtype.itemsize()).is_none_or(|b| b > isize::MAX as usize) {
            return Err(too_big());
        }
        let needed = if elements == 0 {
            0
        } else {
            let last = shape
                .iter()
                .zip(&strides)
                .try_fold(0usize, |acc, (&n, &s)| (n - 1).checked_mul(s).and_then(|o| acc.checked_add(o)))
                .ok_or_else(too_big)?;
            last.checked_add(1).and_then(|e| e.checked_mul(dtype.itemsize())).ok_or_else(too_big)?
        };
        if data.len() != needed {
            return Err(array_error(format!(
                "array of dtype {dtype}, shape {shape:?}, strides {strides:?} needs {needed} bytes of data, got {}",
                data.len()
            )));
        }
        if dtype == DType::Bool && data.iter().any(|&b| b > 1) {
            return Err(array_error("bool array holds bytes other than 0 and 1"));
        }
        Ok(WireArray { dtype, big_endian, strides: normalize(&shape, strides), shape, data })
    }
}

/// Strides of length-1 axes do not matter: make them 0 so equal layouts compare equal.
fn normalize(shape: &[usize], mut strides: Vec<usize>) -> Vec<usize> {
    for (s, &n) in strides.iter_mut().zip(shape) {
        if n <= 1 {
            *s = 0;
        }
    }
    strides
}

impl<T: Element, D: Dimension> From<Array<T, D>> for WireArray {
    fn from(a: Array<T, D>) -> Self {
        WireArray::from_array(a)
    }
}

#[derive(Serialize, Deserialize)]
struct ArrayHeader {
    dtype: String,
    shape: Vec<u64>,
    strides: Vec<u64>,
    data: Vec<u32>,
}

impl Serialize for WireArray {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let data = push_out_of_band(self.data.clone()).map_err(S::Error::custom)?;
        let order = if self.big_endian {
            ">"
        } else if self.dtype.itemsize() == 1 {
            "|"
        } else {
            "<"
        };
        ArrayHeader {
            dtype: format!("{order}{}", self.dtype.code()),
            shape: self.shape.iter().map(|&n| n as u64).collect(),
            strides: self.strides.iter().map(|&n| n as u64).collect(),
            data,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for WireArray {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let h = ArrayHeader::deserialize(d)?;
        let data = take_out_of_band(&h.data).map_err(D::Error::custom)?;
        WireArray::from_parts(&h.dtype, h.shape, h.strides, data).map_err(|e| D::Error::custom(e.message()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serial::{from_message, to_message};
    use ndarray::{Array1, Array2, Array3, s};

    fn round_trip(w: &WireArray) -> WireArray {
        from_message(&to_message(w).unwrap()).unwrap()
    }

    #[test]
    fn arrays_built_by_chunks_hold_their_values_in_c_order_and_refuse_a_wrong_count() {
        // More than one chunk, a ragged last one, and a pooled (>= 1 MiB) buffer.
        for shape in [vec![3usize, 5], vec![300, 1000], vec![0, 4], vec![]] {
            let w =
                WireArray::from_c_order_chunks::<f64>(&shape, |r, out| out.extend(r.map(|i| i as f64 * 0.5))).unwrap();
            let n: usize = shape.iter().product();
            assert_eq!((w.shape(), w.is_c_order()), (&shape[..], true));
            if n > 0 {
                assert_eq!(w.data().as_ptr() as usize % crate::aligned::FRAME_ALIGN, 0);
            }
            let v = w.view::<f64>().unwrap();
            assert!(v.iter().copied().eq((0..n).map(|i| i as f64 * 0.5)), "shape {shape:?}");
            assert_eq!(round_trip(&w).view::<f64>().unwrap(), v);
        }
        let short = WireArray::from_c_order_chunks::<i32>(&[10], |r, out| out.extend(r.skip(1).map(|i| i as i32)));
        assert_eq!(short.unwrap_err().kind(), ErrorKind::Serialization);
        let long = WireArray::from_c_order_chunks::<i32>(&[10], |r, out| out.extend(r.chain(0..1).map(|i| i as i32)));
        assert_eq!(long.unwrap_err().kind(), ErrorKind::Serialization);
        let huge = WireArray::from_c_order_chunks::<f64>(&[usize::MAX, 2], |_, _| {});
        assert_eq!(huge.unwrap_err().kind(), ErrorKind::FrameTooLarge);
    }

    #[test]
    fn contiguous_arrays_are_not_copied_and_keep_their_order() {
        let c = Array2::<f64>::from_shape_fn((300, 200), |(i, j)| (i * 1000 + j) as f64);
        let sent = c.clone();
        let ptr = sent.as_ptr();
        let w = WireArray::from_array(sent);
        assert_eq!(w.data().as_ptr().cast::<f64>(), ptr, "C order: the buffer is the frame");
        assert!(w.is_c_order());
        let f = c.clone().reversed_axes();
        let sent = f.clone();
        let ptr = sent.as_ptr();
        let w = WireArray::from_array(sent);
        assert_eq!(w.data().as_ptr().cast::<f64>(), ptr, "F order: the buffer is the frame");
        assert!(w.is_f_order() && !w.is_c_order());
        let back = round_trip(&w);
        assert_eq!(back.view::<f64>().unwrap(), f.into_dyn());
        assert!(back.to_array::<f64>().unwrap().t().is_standard_layout(), "order preserved through a copy");
    }

    #[test]
    fn strided_and_reversed_views_are_made_contiguous() {
        let a = Array2::<i32>::from_shape_fn((10, 12), |(i, j)| (i * 12 + j) as i32);
        for v in [a.slice(s![..;2, ..]), a.slice(s![.., ..;3]), a.slice(s![..;-1, ..]), a.slice(s![2..7, 3..;-2])] {
            let w = WireArray::from_view(v);
            assert!(w.is_c_order());
            assert_eq!(w.data().len(), v.len() * 4);
            assert_eq!(round_trip(&w).to_array::<i32>().unwrap(), v.into_dyn());
        }
        let reversed = a.slice(s![..;-1, ..]).to_owned();
        assert_eq!(round_trip(&WireArray::from_array(reversed.clone())).view::<i32>().unwrap(), reversed.into_dyn());
    }

    #[test]
    fn broadcast_arrays_send_only_unique_data() {
        let row = Array1::<f32>::from_iter((0..10).map(|x| x as f32));
        let b = row.broadcast((1000, 10)).unwrap();
        let w = WireArray::from_view(b);
        assert_eq!(w.data().len(), 10 * 4);
        let back = round_trip(&w);
        assert_eq!(back.view::<f32>().unwrap(), b.into_dyn());
        assert_eq!(back.to_array::<f32>().unwrap(), b.into_dyn());
        let scalar = ndarray::arr0(7u16);
        let everywhere = scalar.broadcast((4, 5, 6)).unwrap();
        let w = WireArray::from_view(everywhere);
        assert_eq!(w.data().len(), 2);
        assert_eq!(round_trip(&w).to_array::<u16>().unwrap(), everywhere.into_dyn());
    }

    #[test]
    fn zero_d_and_empty_arrays() {
        let z = ndarray::arr0(3.5f64);
        assert_eq!(round_trip(&WireArray::from_array(z.clone())).to_array::<f64>().unwrap(), z.into_dyn());
        for shape in [vec![0], vec![3, 0], vec![0, 5, 2]] {
            let e = ArrayD::<u8>::zeros(IxDyn(&shape));
            let back = round_trip(&WireArray::from_array(e.clone()));
            assert_eq!(back.shape(), &shape[..]);
            assert_eq!(back.view::<u8>().unwrap(), e);
        }
    }

    #[test]
    fn wrong_dtype_dimensions_and_alignment_are_errors() {
        let w = WireArray::from_array(Array3::<i64>::zeros((2, 3, 4)));
        assert_eq!(w.view::<f64>().unwrap_err().kind(), ErrorKind::Serialization);
        assert!(w.to_array_dim::<i64, ndarray::Ix2>().is_err());
        assert!(w.to_array_dim::<i64, ndarray::Ix3>().is_ok());
        // Unaligned data: a view is refused, cow and to_array copy.
        let backing = Bytes::from(vec![0u8; 8 * 4 + 1]);
        let unaligned = backing.slice(1..);
        let w = WireArray::from_parts("<f8", vec![4], vec![1], unaligned).unwrap();
        assert!(w.view::<f64>().is_err());
        assert_eq!(w.cow::<f64>().unwrap().len(), 4);
    }

    #[test]
    fn big_endian_data_is_converted() {
        let data: Vec<u8> = [1.5f64, -2.0].iter().flat_map(|x| x.to_be_bytes()).collect();
        let w = WireArray::from_parts(">f8", vec![2], vec![1], Bytes::from(data)).unwrap();
        assert!(w.view::<f64>().is_err());
        assert_eq!(w.to_array::<f64>().unwrap().as_slice().unwrap(), &[1.5, -2.0]);
        let c: Vec<u8> = [1.0f32, 2.0].iter().flat_map(|x| x.to_be_bytes()).collect();
        let w = WireArray::from_parts(">c8", vec![1], vec![1], Bytes::from(c)).unwrap();
        assert_eq!(w.to_array::<Complex<f32>>().unwrap()[[0]], Complex::new(1.0, 2.0));
    }

    #[test]
    fn malformed_headers_are_rejected() {
        let d = |n: usize| Bytes::from(vec![0u8; n]);
        for (dtype, shape, strides, data) in [
            ("<f9", vec![1], vec![1], d(8)),
            ("<f8", vec![2], vec![1], d(8)),
            ("<f8", vec![2, 2], vec![1], d(32)),
            ("<f8", vec![2, 2], vec![2, 1], d(24)),
            ("<f8", vec![u64::MAX, 2], vec![1, 1], d(8)),
            ("<f8", vec![3], vec![u64::MAX], d(8)),
            ("<f8", vec![0], vec![1], d(8)),
        ] {
            let e = WireArray::from_parts(dtype, shape.clone(), strides, data).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Serialization, "{dtype} {shape:?}: {e}");
        }
        let bad_bool = WireArray::from_parts("|b1", vec![2], vec![1], Bytes::from_static(&[1, 2]));
        assert!(bad_bool.unwrap_err().to_string().contains("bool"));
    }

    #[test]
    fn dtype_strings() {
        assert_eq!(DType::parse("<f8"), Some((DType::F64, false)));
        assert_eq!(DType::parse(">i4"), Some((DType::I32, true)));
        assert_eq!(DType::parse(">u1"), Some((DType::U8, false)), "byte order is moot for 1-byte types");
        assert_eq!(DType::parse("c16"), Some((DType::C128, false)));
        assert_eq!(DType::parse("<x1"), None);
        assert_eq!(DType::parse(""), None);
    }
}
