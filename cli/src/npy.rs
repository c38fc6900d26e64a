//! NumPy's `.npy` files (format versions 1.0 to 3.0): written from, and read into, n-d arrays.

use anyhow::{Context as _, bail, ensure};
use courier::courier_core::ndarray::{ArrayD, IxDyn, ShapeBuilder};
use courier::courier_core::{DType, WireArray};

/// The file: magic, version 1.0, header length, a Python dict literal padded so the data
/// starts at a multiple of 64 bytes, then the data in C order (`c_bytes`).
pub(crate) fn write(dtype: DType, shape: &[usize], c_bytes: &[u8]) -> Vec<u8> {
    let shape = match shape {
        [] => "()".to_owned(),
        [n] => format!("({n},)"),
        dims => format!("({})", dims.iter().map(usize::to_string).collect::<Vec<_>>().join(", ")),
    };
    let order = if dtype.itemsize() == 1 { '|' } else { '<' };
    let mut header = format!("{{'descr': '{order}{}', 'fortran_order': False, 'shape': {shape}, }}", dtype.code());
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + c_bytes.len());
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(c_bytes);
    out
}

/// Reads a `.npy` file of bool, integer or float elements.
pub(crate) fn read(bytes: &[u8]) -> anyhow::Result<WireArray> {
    ensure!(bytes.len() >= 10 && &bytes[..6] == b"\x93NUMPY", "not a .npy file (bad magic)");
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10usize),
        2 | 3 => {
            ensure!(bytes.len() >= 12, "truncated .npy header");
            (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12)
        }
        v => bail!(".npy format version {v} is not supported"),
    };
    let end = start.checked_add(header_len).filter(|&e| e <= bytes.len()).context("truncated .npy header")?;
    let header = std::str::from_utf8(&bytes[start..end]).context(".npy header is not text")?;
    let field = |name: &str| -> anyhow::Result<&str> {
        let at = header.find(&format!("'{name}'")).with_context(|| format!(".npy header has no '{name}'"))?;
        let rest = header[at + name.len() + 2..].trim_start();
        Ok(rest.strip_prefix(':').context("malformed .npy header")?.trim_start())
    };
    let descr = field("descr")?;
    let descr = descr.strip_prefix('\'').and_then(|d| d.split('\'').next()).context("malformed descr")?;
    let (dtype, big_endian) = DType::parse(descr).with_context(|| format!("unsupported dtype {descr}"))?;
    let fortran = field("fortran_order")?.starts_with("True");
    let shape_text = field("shape")?;
    let inner = shape_text.strip_prefix('(').and_then(|s| s.split(')').next()).context("malformed shape")?;
    let shape: Vec<usize> = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().with_context(|| format!("bad dimension {s:?}")))
        .collect::<anyhow::Result<_>>()?;
    let count = shape.iter().try_fold(1usize, |a, &n| a.checked_mul(n)).context("shape overflows")?;
    let data = &bytes[end..];
    ensure!(
        Some(data.len()) == count.checked_mul(dtype.itemsize()),
        ".npy data is {} bytes; shape {shape:?} of {dtype} needs {}",
        data.len(),
        count.saturating_mul(dtype.itemsize())
    );
    macro_rules! array {
        ($t:ty, $n:expr) => {{
            let values: Vec<$t> = data
                .chunks_exact($n)
                .map(|c| {
                    let b: [u8; $n] = c.try_into().expect("exact chunk");
                    if big_endian { <$t>::from_be_bytes(b) } else { <$t>::from_le_bytes(b) }
                })
                .collect();
            let a = if fortran {
                ArrayD::from_shape_vec(IxDyn(&shape).f(), values)
            } else {
                ArrayD::from_shape_vec(IxDyn(&shape), values)
            }?;
            WireArray::from_array(a)
        }};
    }
    Ok(match dtype {
        DType::Bool => {
            ensure!(data.iter().all(|&b| b <= 1), "bool .npy data must be 0 or 1");
            let values: Vec<bool> = data.iter().map(|&b| b == 1).collect();
            let a = if fortran {
                ArrayD::from_shape_vec(IxDyn(&shape).f(), values)
            } else {
                ArrayD::from_shape_vec(IxDyn(&shape), values)
            }?;
            WireArray::from_array(a)
        }
        DType::I8 => array!(i8, 1),
        DType::I16 => array!(i16, 2),
        DType::I32 => array!(i32, 4),
        DType::I64 => array!(i64, 8),
        DType::U8 => array!(u8, 1),
        DType::U16 => array!(u16, 2),
        DType::U32 => array!(u32, 4),
        DType::U64 => array!(u64, 8),
        DType::F32 => array!(f32, 4),
        DType::F64 => array!(f64, 8),
        DType::C64 | DType::C128 => bail!("complex .npy files are not supported as arguments"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use courier::courier_core::ndarray::Array2;

    #[test]
    fn headers_are_padded_to_64_bytes_and_files_read_back() {
        let a = Array2::from_shape_vec((3, 4), (0..12).collect::<Vec<i32>>()).unwrap();
        let w = WireArray::from_array(a.clone());
        let file = write(w.dtype(), w.shape(), w.data());
        assert_eq!(&file[..8], b"\x93NUMPY\x01\x00");
        let hlen = u16::from_le_bytes([file[8], file[9]]) as usize;
        assert_eq!((10 + hlen) % 64, 0);
        let header = std::str::from_utf8(&file[10..10 + hlen]).unwrap();
        assert_eq!(header.trim_end(), "{'descr': '<i4', 'fortran_order': False, 'shape': (3, 4), }");
        let back = read(&file).unwrap();
        assert_eq!(back.to_array::<i32>().unwrap(), a.into_dyn());
    }

    #[test]
    fn malformed_files_are_errors_not_panics() {
        let w = WireArray::from_array(Array2::<f64>::zeros((2, 2)));
        let good = write(w.dtype(), w.shape(), w.data());
        for cut in 0..good.len() {
            assert!(read(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad = good.clone();
        bad[6] = 9;
        assert!(read(&bad).is_err());
        let text = String::from_utf8_lossy(&good).replace("(2, 2)", "(9, 9)");
        assert!(read(text.as_bytes()).is_err());
    }
}
