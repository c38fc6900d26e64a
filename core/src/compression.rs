//! Per-frame compression: the codecs, and `auto`, which decides per frame and per link.
//!
//! `auto` never hands a whole frame to a compressor just to decide. It compresses
//! [`SAMPLE_COUNT`] samples of [`SAMPLE_SIZE`] bytes taken at spread, sorted offsets of the
//! frame's *flat bytes* with its codec: lz4, or snappy for a peer that does not accept lz4
//! (lz4 compresses about as well, and faster, in every case measured here). Sampling works on
//! bytes, never on rows of a shaped view: an n-d array of any shape or order costs at most
//! 50 kB of sampling. (Sampling by rows is the defect that made Dask compress most of a 2-d
//! array with long rows just to decide.)
//!
//! The codec is considered only when its samples shrink to at most the threshold ratio; then
//! `auto` compresses if that gets the frame to the peer sooner than sending it raw:
//!
//! ```text
//! raw:   len / bandwidth
//! codec: len / compress_speed + ratio × len / bandwidth + len / decompress_speed
//! ```
//!
//! and compresses only when the codec's estimate is at most [`COMPRESS_MARGIN`] of raw's.
//!
//! `bandwidth` is the comm's own measurement of its link ([`Link`]: wire bytes over the time
//! a message of at least 4 MiB took to write); until a comm has measured, it assumes
//! [`ASSUMED_BANDWIDTH`]. `compress_speed` is measured on the frame's own samples (the median
//! of the five): compression speed depends on the data far more than on the machine (lz4 on
//! this VM: 0.4 GB/s on finely interleaved noise, 6.7 GB/s on zeros), so no cached figure could
//! stand for it. `decompress_speed` comes from the codecs' speeds on this machine, measured once
//! per process ([`speeds`], a few milliseconds on first use) on data of three compressibilities
//! and read at the samples' ratio. So on a fast link a frame that shrinks only a little goes
//! raw, on a slow link it is compressed, and data that does not shrink is never compressed.

use std::cell::Cell;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::error::{CommError, ErrorKind};

/// Frames smaller than this are never compressed.
pub const MIN_COMPRESS_SIZE: usize = 10_000;
/// Bytes per sample in the `auto` decision.
pub const SAMPLE_SIZE: usize = 10_000;
/// Samples per `auto` decision.
pub const SAMPLE_COUNT: usize = 5;
/// Default ratio the samples must reach for `auto` to consider a codec.
pub const DEFAULT_THRESHOLD: f64 = 0.7;
/// The link bandwidth `auto` assumes before a comm has measured its own (1 Gbit/s), in bytes
/// per second. Low on purpose: compressing on a fast link by mistake costs at most the
/// codec's time, sending raw on a slow link by mistake costs the link's, which is far more.
pub const ASSUMED_BANDWIDTH: f64 = 1.25e8;
/// `auto` compresses only when the estimate says that delivers the frame in at most this
/// fraction of the raw time: the samples are compressed hot in cache and alone, while a whole
/// frame competes for the cores with the application and the kernel's networking (on this
/// 2-core VM a 1 GB/s link made lz4 30 % slower than its samples said).
pub const COMPRESS_MARGIN: f64 = 0.8;
/// Largest frame an lz4 frame can carry (its length prefix is 32 bits).
pub const LZ4_MAX_FRAME: usize = u32::MAX as usize;

/// A compression codec, as recorded in a frame's flags on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Codec {
    /// Raw bytes.
    None = 0,
    /// Snappy raw format (not the framed format).
    Snappy = 1,
    /// LZ4 block format after a 4-byte little-endian decompressed length (the layout of
    /// python-lz4's `lz4.block.compress(store_size=True)`).
    Lz4 = 2,
}

/// The codecs, in `auto`'s order of preference: it uses the first the peer accepts.
const CODECS: [Codec; 2] = [Codec::Lz4, Codec::Snappy];

impl Codec {
    /// The codec for a wire id.
    pub fn from_id(id: u8) -> Option<Codec> {
        match id {
            0 => Some(Codec::None),
            1 => Some(Codec::Snappy),
            2 => Some(Codec::Lz4),
            _ => None,
        }
    }

    /// Bit of this codec in a capability mask (handshake): snappy 1, lz4 2.
    pub fn mask_bit(self) -> u32 {
        match self {
            Codec::None => 0,
            Codec::Snappy => 1,
            Codec::Lz4 => 2,
        }
    }

    /// Whether `mask` (a handshake's `compressions`) includes this codec.
    pub fn allowed_by(self, mask: u32) -> bool {
        self == Codec::None || mask & self.mask_bit() != 0
    }

    /// The codec's name in configuration (`none`, `snappy`, `lz4`).
    pub fn name(self) -> &'static str {
        match self {
            Codec::None => "none",
            Codec::Snappy => "snappy",
            Codec::Lz4 => "lz4",
        }
    }

    /// Compresses `data` whole, or `None` if this codec cannot carry it.
    pub fn compress(self, data: &[u8]) -> Option<Vec<u8>> {
        match self {
            Codec::None => None,
            Codec::Snappy => snap::raw::Encoder::new().compress_vec(data).ok(),
            Codec::Lz4 => (data.len() <= LZ4_MAX_FRAME).then(|| lz4_flex::block::compress_prepend_size(data)),
        }
    }
}

/// Every codec this build decompresses, as a handshake mask.
pub const ALL_CODECS: u32 = 1 | 2;

/// How a sender compresses frames.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Compression {
    /// Never compress.
    None,
    /// Compress every frame of at least [`MIN_COMPRESS_SIZE`] bytes with snappy.
    Snappy,
    /// Compress every frame of at least [`MIN_COMPRESS_SIZE`] bytes with lz4.
    Lz4,
    /// Decide per frame and per link (see the module docs).
    Auto {
        /// Compressed/raw ratio the samples must reach for a codec to be considered
        /// (default 0.7).
        threshold: f64,
    },
}

impl Compression {
    /// `Auto` with the default threshold.
    pub const AUTO: Compression = Compression::Auto { threshold: DEFAULT_THRESHOLD };

    /// Parses `none`, `snappy`, `lz4` or `auto`.
    pub fn parse(s: &str) -> Result<Compression, CommError> {
        match s {
            "none" => Ok(Compression::None),
            "snappy" => Ok(Compression::Snappy),
            "lz4" => Ok(Compression::Lz4),
            "auto" => Ok(Compression::AUTO),
            other => Err(CommError::new(
                ErrorKind::InvalidAddress,
                format!("unknown compression {other:?} (expected none, snappy, lz4 or auto)"),
            )),
        }
    }

    /// The capability mask a side offers in the handshake for this setting: every codec
    /// unless compression is off.
    pub fn offered_mask(self) -> u32 {
        match self {
            Compression::None => 0,
            _ => ALL_CODECS,
        }
    }
}

/// A comm's estimate of its link's bandwidth, from the messages it sends.
///
/// Only messages of at least [`Link::MEASURE_MIN`] wire bytes count: smaller ones end in the
/// kernel's socket buffer and say nothing about the link. Each measurement moves the estimate
/// halfway to it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Link {
    bytes_per_s: Option<f64>,
}

impl Link {
    /// Wire bytes a message needs for its write time to count.
    pub const MEASURE_MIN: u64 = 4 << 20;

    /// A link not measured yet.
    pub fn unmeasured() -> Link {
        Link::default()
    }

    /// A link measured at `bytes_per_s` (tests, benches).
    pub fn measured(bytes_per_s: f64) -> Link {
        Link { bytes_per_s: Some(bytes_per_s) }
    }

    /// Records that `wire_bytes` took `elapsed` to write.
    pub fn observe(&mut self, wire_bytes: u64, elapsed: Duration) {
        if wire_bytes < Self::MEASURE_MIN || elapsed.is_zero() {
            return;
        }
        let now = wire_bytes as f64 / elapsed.as_secs_f64();
        self.bytes_per_s = Some(self.bytes_per_s.map_or(now, |old| 0.5 * old + 0.5 * now));
    }

    /// The measured bandwidth, if any (bytes per second).
    pub fn bandwidth(&self) -> Option<f64> {
        self.bytes_per_s
    }

    /// The bandwidth `auto` plans with.
    pub fn planning_bandwidth(&self) -> f64 {
        self.bytes_per_s.unwrap_or(ASSUMED_BANDWIDTH)
    }
}

/// One codec's measured speed on data of one compressibility.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpeedPoint {
    /// Compressed/raw ratio of the calibration data.
    pub ratio: f64,
    /// Raw bytes compressed per second.
    pub compress: f64,
    /// Raw bytes produced per second when decompressing.
    pub decompress: f64,
}

/// A codec's speeds on this machine at three compressibilities, sorted by ratio.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CodecSpeed {
    /// The calibration points.
    pub points: [SpeedPoint; 3],
}

impl CodecSpeed {
    /// (compress, decompress) speed for data of `ratio`, interpolated between the points.
    pub fn at(&self, ratio: f64) -> (f64, f64) {
        let p = &self.points;
        let (a, b) = if ratio <= p[1].ratio { (p[0], p[1]) } else { (p[1], p[2]) };
        let t = if b.ratio > a.ratio { ((ratio - a.ratio) / (b.ratio - a.ratio)).clamp(0.0, 1.0) } else { 0.0 };
        let lerp = |x: f64, y: f64| x * (1.0 - t) + y * t;
        (lerp(a.compress, b.compress), lerp(a.decompress, b.decompress))
    }
}

/// Calibration data of three compressibilities, `len` bytes each: zeros, runs of 32 noise
/// bytes between runs of 32 zeros (shrinks to about half), and noise.
fn calibration_data(len: usize) -> [Vec<u8>; 3] {
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    let zeros = vec![0u8; len];
    let half: Vec<u8> = (0..len).map(|i| if i % 64 < 32 { rng.u8(..) } else { 0 }).collect();
    let noise: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
    [zeros, half, noise]
}

fn best_of<F: FnMut()>(reps: usize, mut f: F) -> Duration {
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .min()
        .unwrap_or_default()
        .max(Duration::from_nanos(1))
}

/// Measures `codec` on this machine (best of 3 on 256 KiB of each calibration data).
pub fn calibrate(codec: Codec) -> CodecSpeed {
    const LEN: usize = 256 << 10;
    let data = calibration_data(LEN);
    let points = std::array::from_fn(|i| {
        let raw = &data[i];
        let packed = codec.compress(raw).unwrap_or_else(|| raw.clone());
        let mut out = vec![0u8; LEN];
        let c = best_of(3, || {
            std::hint::black_box(codec.compress(std::hint::black_box(raw)));
        });
        let d = best_of(3, || {
            let _ = decompress_into(codec, std::hint::black_box(&packed), &mut out);
        });
        SpeedPoint {
            ratio: packed.len() as f64 / LEN as f64,
            compress: LEN as f64 / c.as_secs_f64(),
            decompress: LEN as f64 / d.as_secs_f64(),
        }
    });
    let mut speed = CodecSpeed { points };
    speed.points.sort_by(|a, b| a.ratio.total_cmp(&b.ratio));
    speed
}

/// This process's measured speeds of lz4 and snappy (calibrated on first use, then cached).
pub fn speeds(codec: Codec) -> Option<&'static CodecSpeed> {
    static SPEEDS: OnceLock<[CodecSpeed; 2]> = OnceLock::new();
    let s = SPEEDS.get_or_init(|| [calibrate(Codec::Lz4), calibrate(Codec::Snappy)]);
    match codec {
        Codec::Lz4 => Some(&s[0]),
        Codec::Snappy => Some(&s[1]),
        Codec::None => None,
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

/// What compressing a frame's samples showed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampled {
    /// Compressed/raw ratio of the samples.
    pub ratio: f64,
    /// Raw bytes sampled.
    pub bytes: usize,
    /// Raw bytes compressed per second: the median over the samples.
    pub compress_speed: f64,
}

/// The compressed/raw ratio of `data`'s samples under `codec`, and the raw bytes sampled.
pub fn sample_ratio(codec: Codec, data: &[u8]) -> (f64, usize) {
    let s = sample(codec, data);
    (s.ratio, s.bytes)
}

/// Compresses `data`'s samples with `codec`, timing each.
pub fn sample(codec: Codec, data: &[u8]) -> Sampled {
    let mut out =
        vec![0u8; lz4_flex::block::get_maximum_output_size(SAMPLE_SIZE).max(snap::raw::max_compress_len(SAMPLE_SIZE))];
    let mut snappy = snap::raw::Encoder::new();
    let (mut raw, mut packed, mut last_end) = (0usize, 0usize, 0usize);
    let mut speeds = [f64::INFINITY; SAMPLE_COUNT];
    for (i, off) in sample_offsets(data.len()).into_iter().enumerate() {
        let start = off.max(last_end);
        let end = (off + SAMPLE_SIZE).min(data.len());
        if start >= end {
            continue;
        }
        last_end = end;
        raw += end - start;
        let sample = &data[start..end];
        let t = Instant::now();
        packed += match codec {
            Codec::None => sample.len(),
            Codec::Snappy => snappy.compress(sample, &mut out).unwrap_or(sample.len()),
            Codec::Lz4 => lz4_flex::block::compress_into(sample, &mut out).unwrap_or(sample.len()),
        };
        speeds[i] = sample.len() as f64 / t.elapsed().as_secs_f64().max(1e-9);
    }
    SAMPLED_BYTES.with(|c| c.set(c.get() + raw as u64));
    // Samples skipped (overlapping in a short frame) stay infinite and sort last.
    let taken = speeds.iter().filter(|s| s.is_finite()).count().max(1);
    speeds.sort_by(f64::total_cmp);
    Sampled {
        ratio: if raw == 0 { 1.0 } else { packed as f64 / raw as f64 },
        bytes: raw,
        compress_speed: speeds[(taken - 1) / 2],
    }
}

/// Seconds to get `len` bytes of data with sampled `ratio` to the peer with `codec` over a
/// link of `bandwidth` bytes per second (raw for `Codec::None`), compressing at
/// `compress_speed` (default: this machine's calibrated speed at that ratio).
pub fn delivery_seconds(codec: Codec, len: usize, ratio: f64, bandwidth: f64, compress_speed: Option<f64>) -> f64 {
    let len = len as f64;
    match speeds(codec) {
        None => len / bandwidth,
        Some(s) => {
            let (c, d) = s.at(ratio);
            len / compress_speed.unwrap_or(c) + ratio * len / bandwidth + len / d
        }
    }
}

/// `auto`'s codec for a peer that accepts `allowed` (a handshake mask): lz4, else snappy.
pub fn auto_codec(allowed: u32) -> Option<Codec> {
    CODECS.into_iter().find(|c| c.allowed_by(allowed))
}

/// `auto`'s choice for `data`: [`auto_codec`] if its samples reach `threshold` and it
/// delivers sooner than raw over `link`, else raw. Returns the codec and the bytes sampled.
pub fn auto_choice(data: &[u8], threshold: f64, allowed: u32, link: &Link) -> (Codec, usize) {
    let Some(codec) = auto_codec(allowed).filter(|_| data.len() >= MIN_COMPRESS_SIZE) else {
        return (Codec::None, 0);
    };
    let bandwidth = link.planning_bandwidth();
    let s = sample(codec, data);
    if s.ratio > threshold {
        return (Codec::None, s.bytes);
    }
    let raw = data.len() as f64 / bandwidth;
    let cost = delivery_seconds(codec, data.len(), s.ratio, bandwidth, Some(s.compress_speed));
    tracing::trace!(
        ?codec,
        ratio = s.ratio,
        compress_speed = s.compress_speed,
        cost,
        raw,
        bandwidth,
        "auto compression"
    );
    (if cost <= COMPRESS_MARGIN * raw { codec } else { Codec::None }, s.bytes)
}

/// Decides by sampling (lz4, unmeasured link) whether compressing `data` is worth it. Returns
/// the raw bytes sampled and the decision.
pub fn auto_decision(data: &[u8], threshold: f64) -> (usize, bool) {
    let (codec, sampled) = auto_choice(data, threshold, ALL_CODECS, &Link::unmeasured());
    (sampled, codec != Codec::None)
}

/// Compresses `frame` per `policy`, with a codec in `allowed` (the peer's handshake mask),
/// over `link`. Returns the codec used and the wire bytes; a frame that would not get
/// smaller is sent raw.
pub fn compress_frame(frame: &Bytes, policy: Compression, allowed: u32, link: &Link) -> (Codec, Bytes) {
    let codec = match policy {
        Compression::None => Codec::None,
        Compression::Snappy if frame.len() >= MIN_COMPRESS_SIZE => Codec::Snappy,
        Compression::Lz4 if frame.len() >= MIN_COMPRESS_SIZE => Codec::Lz4,
        Compression::Snappy | Compression::Lz4 => Codec::None,
        Compression::Auto { threshold } => auto_choice(frame, threshold, allowed, link).0,
    };
    if codec.allowed_by(allowed)
        && let Some(packed) = codec.compress(frame)
        && packed.len() < frame.len()
    {
        return (codec, Bytes::from(packed));
    }
    (Codec::None, frame.clone())
}

/// The decompressed length a compressed frame declares, checked before any allocation.
pub fn decompressed_len(codec: Codec, wire: &[u8]) -> Result<usize, CommError> {
    match codec {
        Codec::None => Ok(wire.len()),
        Codec::Snappy => snappy_decompressed_len(wire),
        Codec::Lz4 => match wire.get(..4) {
            Some(n) => Ok(u32::from_le_bytes(n.try_into().expect("4 bytes")) as usize),
            None => Err(CommError::new(ErrorKind::Compression, "lz4 frame shorter than its length prefix")),
        },
    }
}

/// Decompresses a frame of `codec` into `out`, which must be exactly the declared length.
pub fn decompress_into(codec: Codec, wire: &[u8], out: &mut [u8]) -> Result<(), CommError> {
    match codec {
        Codec::None => {
            if wire.len() != out.len() {
                return Err(CommError::new(ErrorKind::Compression, "raw frame of the wrong length"));
            }
            out.copy_from_slice(wire);
            Ok(())
        }
        Codec::Snappy => snappy_decompress_into(wire, out),
        Codec::Lz4 => {
            let body = wire.get(4..).unwrap_or_default();
            let n = lz4_flex::block::decompress_into(body, out)
                .map_err(|e| CommError::new(ErrorKind::Compression, "corrupt lz4 frame").with_source(e))?;
            if n != out.len() {
                return Err(CommError::new(ErrorKind::Compression, "lz4 frame shorter than declared"));
            }
            Ok(())
        }
    }
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

    /// Bytes that shrink to about half: every other 4-byte word is noise, the rest zeros.
    fn half_noise(len: usize) -> Vec<u8> {
        let n = noise(len, 3);
        n.chunks(32).enumerate().flat_map(|(i, w)| if i % 2 == 0 { w.to_vec() } else { vec![0; w.len()] }).collect()
    }

    fn auto(frame: &Bytes, link: Link) -> (Codec, Bytes) {
        compress_frame(frame, Compression::AUTO, ALL_CODECS, &link)
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
        for link in [Link::unmeasured(), Link::measured(125e6), Link::measured(1.25e9)] {
            let (codec, wire) = auto(&zeros, link);
            assert_ne!(codec, Codec::None, "{link:?}");
            assert!(wire.len() < zeros.len() / 10);
        }
        let noisy = Bytes::from(noise(1 << 20, 7));
        for link in [Link::unmeasured(), Link::measured(1e6)] {
            let (codec, wire) = auto(&noisy, link);
            assert_eq!(codec, Codec::None);
            assert_eq!(wire.as_ptr(), noisy.as_ptr(), "raw frames are not copied");
        }
    }

    #[test]
    fn auto_weighs_the_link_a_slow_one_compresses_what_a_fast_one_sends_raw() {
        let data = Bytes::from(half_noise(4 << 20));
        let (ratio, _) = sample_ratio(Codec::Lz4, &data);
        assert!((0.4..0.7).contains(&ratio), "the data shrinks to about half: {ratio}");
        // 1 MB/s: compressing always pays. 1 TB/s: it never can (no codec runs that fast).
        assert_ne!(auto(&data, Link::measured(1e6)).0, Codec::None);
        assert_eq!(auto(&data, Link::measured(1e12)).0, Codec::None);
        // Samples are timed: a speed, median of five, and the ratio of the whole sample.
        let s = sample(Codec::Lz4, &data);
        assert!(s.compress_speed.is_finite() && s.compress_speed > 0.0, "{s:?}");
        assert_eq!((s.ratio, s.bytes), sample_ratio(Codec::Lz4, &data));
    }

    #[test]
    fn only_codecs_the_peer_accepts_are_used() {
        let zeros = Bytes::from(vec![0u8; 1 << 20]);
        let snappy_only = Codec::Snappy.mask_bit();
        let slow = Link::measured(1e7);
        assert_eq!(compress_frame(&zeros, Compression::AUTO, snappy_only, &slow).0, Codec::Snappy);
        assert_eq!(compress_frame(&zeros, Compression::Lz4, snappy_only, &Link::unmeasured()).0, Codec::None);
        assert_eq!(compress_frame(&zeros, Compression::AUTO, 0, &Link::unmeasured()).0, Codec::None);
        assert_eq!(compress_frame(&zeros, Compression::Lz4, ALL_CODECS, &Link::unmeasured()).0, Codec::Lz4);
    }

    #[test]
    fn small_frames_are_never_compressed() {
        let zeros = Bytes::from(vec![0u8; MIN_COMPRESS_SIZE - 1]);
        for policy in [Compression::Snappy, Compression::Lz4, Compression::AUTO] {
            assert_eq!(compress_frame(&zeros, policy, ALL_CODECS, &Link::measured(1.0)).0, Codec::None);
        }
    }

    #[test]
    fn decision_samples_at_most_50kb_whatever_the_size() {
        for len in [10_000usize, 30_000, 1 << 20, 64 << 20] {
            for data in [vec![3u8; len], noise(len, 1)] {
                let before = sampled_bytes_on_this_thread();
                let (sampled, _) = auto_decision(&data, DEFAULT_THRESHOLD);
                assert!(sampled <= SAMPLE_COUNT * SAMPLE_SIZE && sampled <= len, "{len}: {sampled}");
                assert_eq!(sampled_bytes_on_this_thread() - before, sampled as u64);
            }
        }
    }

    #[test]
    fn codecs_round_trip_and_refuse_corrupt_input() {
        let data = Bytes::from(half_noise(100_000));
        for codec in CODECS {
            let wire = codec.compress(&data).unwrap();
            let n = decompressed_len(codec, &wire).unwrap();
            assert_eq!(n, data.len());
            let mut out = vec![0u8; n];
            decompress_into(codec, &wire, &mut out).unwrap();
            assert_eq!(out, &data[..], "{codec:?}");
            let mut bad = wire.clone();
            bad.truncate(bad.len() / 2);
            let mut out = vec![0u8; n];
            assert_eq!(decompress_into(codec, &bad, &mut out).unwrap_err().kind(), ErrorKind::Compression, "{codec:?}");
        }
        assert!(snappy_decompressed_len(&[0xff; 12]).is_err());
        assert_eq!(decompressed_len(Codec::Lz4, &[1, 2]).unwrap_err().kind(), ErrorKind::Compression);
        // An lz4 frame that declares more than it holds.
        let mut lie = Codec::Lz4.compress(&[7u8; 1000]).unwrap();
        lie[..4].copy_from_slice(&2000u32.to_le_bytes());
        let mut out = vec![0u8; 2000];
        assert_eq!(decompress_into(Codec::Lz4, &lie, &mut out).unwrap_err().kind(), ErrorKind::Compression);
    }

    #[test]
    fn lz4_frames_are_python_lz4_blocks_with_their_size() {
        // python-lz4: lz4.block.compress(b"a" * 100, store_size=True)
        let wire = Codec::Lz4.compress(&[b'a'; 100]).unwrap();
        assert_eq!(&wire[..4], &100u32.to_le_bytes());
        let mut out = vec![0u8; 100];
        decompress_into(Codec::Lz4, &wire, &mut out).unwrap();
        assert_eq!(out, [b'a'; 100]);
    }

    #[test]
    fn calibration_orders_data_by_ratio_and_reads_speeds_between_points() {
        for codec in CODECS {
            let s = speeds(codec).unwrap();
            let [zeros, partial, noise] = s.points;
            assert!(zeros.ratio < 0.05 && noise.ratio > 0.99, "{codec:?}: {s:?}");
            assert!(zeros.ratio < partial.ratio && partial.ratio < noise.ratio, "{codec:?}: {s:?}");
            assert!(s.points.iter().all(|p| p.compress > 0.0 && p.decompress > 0.0));
            let mid = (partial.ratio + noise.ratio) / 2.0;
            let (c, d) = s.at(mid);
            assert!(c >= partial.compress.min(noise.compress) && c <= partial.compress.max(noise.compress));
            assert!(d >= partial.decompress.min(noise.decompress) && d <= partial.decompress.max(noise.decompress));
            assert_eq!(s.at(-1.0), (zeros.compress, zeros.decompress));
            assert_eq!(s.at(2.0), (noise.compress, noise.decompress));
        }
    }

    #[test]
    fn the_link_is_measured_from_large_messages_only() {
        let mut link = Link::unmeasured();
        link.observe(1 << 20, Duration::from_millis(1));
        assert_eq!(link.bandwidth(), None, "a small message says nothing about the link");
        assert_eq!(link.planning_bandwidth(), ASSUMED_BANDWIDTH);
        link.observe(100 << 20, Duration::from_secs(1));
        assert_eq!(link.bandwidth(), Some((100 << 20) as f64));
        link.observe(300 << 20, Duration::from_secs(1));
        assert_eq!(link.bandwidth(), Some((200 << 20) as f64), "halfway to the new measurement");
    }
}
