//! Per-frame compression: the codecs and the sampled `auto` decision.
//!
//! `auto` never hands a whole frame to the compressor just to decide. It compresses
//! [`SAMPLE_COUNT`] samples of [`SAMPLE_SIZE`] bytes taken at spread, sorted offsets of the
//! frame's *flat bytes* and compresses the whole frame only if they shrink to at most the
//! threshold ratio. Sampling works on bytes, never on rows of a shaped view: an n-d array of
//! any shape or order costs at most 50 kB of sampling. (Sampling by rows is the defect that
//! made Dask compress most of a 2-d array with long rows just to decide.)

use std::cell::Cell;

use bytes::Bytes;

use crate::error::{CommError, ErrorKind};

/// Frames smaller than this are never compressed.
pub const MIN_COMPRESS_SIZE: usize = 10_000;
/// Bytes per sample in the `auto` decision.
pub const SAMPLE_SIZE: usize = 10_000;
/// Samples per `auto` decision.
pub const SAMPLE_COUNT: usize = 5;
/// Default ratio the samples must reach for `auto` to compress.
pub const DEFAULT_THRESHOLD: f64 = 0.7;

/// A compression codec, as recorded in a frame's flags on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Codec {
    /// Raw bytes.
    None = 0,
    /// Snappy raw format (not the framed format).
    Snappy = 1,
}

impl Codec {
    /// The codec for a wire id.
    pub fn from_id(id: u8) -> Option<Codec> {
        match id {
            0 => Some(Codec::None),
            1 => Some(Codec::Snappy),
            _ => None,
        }
    }

    /// Bit of this codec in a capability mask (handshake).
    pub fn mask_bit(self) -> u32 {
        match self {
            Codec::None => 0,
            Codec::Snappy => 1,
        }
    }
}

/// How a sender compresses frames.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Compression {
    /// Never compress.
    None,
    /// Compress every frame of at least [`MIN_COMPRESS_SIZE`] bytes.
    Snappy,
    /// Decide per frame by sampling; compress when samples reach `threshold`.
    Auto {
        /// Compressed/raw ratio the samples must reach (default 0.7).
        threshold: f64,
    },
}

impl Compression {
    /// `Auto` with the default threshold.
    pub const AUTO: Compression = Compression::Auto { threshold: DEFAULT_THRESHOLD };

    /// Parses `none`, `snappy` or `auto`.
    pub fn parse(s: &str) -> Result<Compression, CommError> {
        match s {
            "none" => Ok(Compression::None),
            "snappy" => Ok(Compression::Snappy),
            "auto" => Ok(Compression::AUTO),
            other => Err(CommError::new(
                ErrorKind::InvalidAddress,
                format!("unknown compression {other:?} (expected none, snappy or auto)"),
            )),
        }
    }

    /// The capability mask a side offers in the handshake for this setting.
    pub fn offered_mask(self) -> u32 {
        match self {
            Compression::None => 0,
            _ => Codec::Snappy.mask_bit(),
        }
    }
}

thread_local! {
    /// Bytes handed to the compressor by `auto` decisions on this thread.
    static SAMPLED_BYTES: Cell<u64> = const { Cell::new(0) };
}

/// Total bytes `auto` decisions on the calling thread have compressed while deciding (not
/// counting chosen compressions). Tests and benches read it to prove the sampling bound.
pub fn sampled_bytes_on_this_thread() -> u64 {
    SAMPLED_BYTES.with(Cell::get)
}

/// The sample offsets for a frame of `len` bytes: `SAMPLE_COUNT` sorted, spread offsets
/// (deterministic, evenly spaced with the last sample ending at the frame's end).
pub fn sample_offsets(len: usize) -> [usize; SAMPLE_COUNT] {
    let span = len.saturating_sub(SAMPLE_SIZE) as u128;
    std::array::from_fn(|i| (span * i as u128 / (SAMPLE_COUNT as u128 - 1)) as usize)
}

/// Decides by sampling whether compressing `data` is worth it. Returns the compressed bytes
/// handed to the compressor (≤ `SAMPLE_COUNT * SAMPLE_SIZE`) and the decision.
pub fn auto_decision(data: &[u8], threshold: f64) -> (usize, bool) {
    if data.len() < MIN_COMPRESS_SIZE {
        return (0, false);
    }
    let mut encoder = snap::raw::Encoder::new();
    let mut out = vec![0u8; snap::raw::max_compress_len(SAMPLE_SIZE)];
    let (mut raw, mut packed, mut last_end) = (0usize, 0usize, 0usize);
    for off in sample_offsets(data.len()) {
        let start = off.max(last_end);
        let end = (off + SAMPLE_SIZE).min(data.len());
        if start >= end {
            continue;
        }
        last_end = end;
        raw += end - start;
        packed += encoder.compress(&data[start..end], &mut out).unwrap_or(end - start);
    }
    SAMPLED_BYTES.with(|c| c.set(c.get() + raw as u64));
    (raw, (packed as f64) <= threshold * raw as f64)
}

/// Compresses `frame` per `policy` (with the codec allowed by the peer). Returns the codec
/// used and the wire bytes; a frame that would not get smaller is sent raw.
pub fn compress_frame(frame: &Bytes, policy: Compression) -> (Codec, Bytes) {
    let go = match policy {
        Compression::None => false,
        Compression::Snappy => frame.len() >= MIN_COMPRESS_SIZE,
        Compression::Auto { threshold } => auto_decision(frame, threshold).1,
    };
    if go
        && let Ok(packed) = snap::raw::Encoder::new().compress_vec(frame)
        && packed.len() < frame.len()
    {
        return (Codec::Snappy, Bytes::from(packed));
    }
    (Codec::None, frame.clone())
}

/// The decompressed length a snappy frame declares, checked before any allocation.
pub fn snappy_decompressed_len(wire: &[u8]) -> Result<usize, CommError> {
    snap::raw::decompress_len(wire)
        .map_err(|e| CommError::new(ErrorKind::Compression, "invalid snappy frame preamble").with_source(e))
}

/// Decompresses a snappy frame into `out`, which must be exactly the declared length.
pub fn snappy_decompress_into(wire: &[u8], out: &mut [u8]) -> Result<(), CommError> {
    let n = snap::raw::Decoder::new()
        .decompress(wire, out)
        .map_err(|e| CommError::new(ErrorKind::Compression, "corrupt snappy frame").with_source(e))?;
    if n != out.len() {
        return Err(CommError::new(ErrorKind::Compression, "snappy frame shorter than declared"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut rng = fastrand::Rng::with_seed(seed);
        (0..len).map(|_| rng.u8(..)).collect()
    }

    #[test]
    fn offsets_are_sorted_spread_and_in_bounds() {
        for len in [10_000usize, 10_001, 49_999, 50_000, 1 << 20, 64 << 20] {
            let offs = sample_offsets(len);
            assert!(offs.windows(2).all(|w| w[0] <= w[1]), "{offs:?}");
            assert_eq!(offs[0], 0);
            assert_eq!(offs[SAMPLE_COUNT - 1] + SAMPLE_SIZE.min(len), len);
        }
    }

    #[test]
    fn auto_compresses_zeros_and_sends_noise_raw() {
        let zeros = Bytes::from(vec![0u8; 1 << 20]);
        let (codec, wire) = compress_frame(&zeros, Compression::AUTO);
        assert_eq!(codec, Codec::Snappy);
        assert!(wire.len() < zeros.len() / 10);
        let noisy = Bytes::from(noise(1 << 20, 7));
        let (codec, wire) = compress_frame(&noisy, Compression::AUTO);
        assert_eq!(codec, Codec::None);
        assert_eq!(wire.as_ptr(), noisy.as_ptr(), "raw frames are not copied");
    }

    #[test]
    fn small_frames_are_never_compressed() {
        let zeros = Bytes::from(vec![0u8; MIN_COMPRESS_SIZE - 1]);
        assert_eq!(compress_frame(&zeros, Compression::Snappy).0, Codec::None);
        assert_eq!(compress_frame(&zeros, Compression::AUTO).0, Codec::None);
    }

    #[test]
    fn decision_samples_at_most_50kb_whatever_the_size() {
        for len in [10_000usize, 30_000, 1 << 20, 64 << 20] {
            let data = vec![3u8; len];
            let (sampled, _) = auto_decision(&data, DEFAULT_THRESHOLD);
            assert!(sampled <= SAMPLE_COUNT * SAMPLE_SIZE, "{len}: {sampled}");
            assert!(sampled <= len);
        }
    }

    #[test]
    fn snappy_round_trip_and_corrupt_input() {
        let data = Bytes::from(vec![9u8; 100_000]);
        let (codec, wire) = compress_frame(&data, Compression::Snappy);
        assert_eq!(codec, Codec::Snappy);
        let n = snappy_decompressed_len(&wire).unwrap();
        let mut out = vec![0u8; n];
        snappy_decompress_into(&wire, &mut out).unwrap();
        assert_eq!(out, &data[..]);
        let mut bad = wire.to_vec();
        bad.truncate(bad.len() / 2);
        let mut out = vec![0u8; n];
        assert_eq!(snappy_decompress_into(&bad, &mut out).unwrap_err().kind(), ErrorKind::Compression);
        assert!(snappy_decompressed_len(&[0xff; 12]).is_err());
    }
}
