//! Spill storage: results a worker moves out of memory, one file per value in a directory of
//! its own, read back on demand.
//!
//! A value is written as its frames with its header, so reading it back needs no
//! re-serialization: one read of the whole file into one 64-byte-aligned buffer, and the
//! header and frames become [`Bytes`] views of it (every frame starts 64-byte aligned in the
//! file, so `WireArray::view` does not copy). A CRC-32 over the whole file detects corruption; a value that fails it is reported, never served.
//!
//! ## File format (little-endian)
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 4 | magic `CRSP` |
//! | 4 | 1 | version, 1 |
//! | 5 | 3 | zero |
//! | 8 | 4 | header length `H` |
//! | 12 | 4 | frame count `N` (at most [`MAX_SPILL_FRAMES`]) |
//! | 16 | 8 | file length |
//! | 24 | 4 | CRC-32 (IEEE) of the whole file with these 4 bytes zero |
//! | 28 | 36 | zero |
//! | 64 | 8·N | frame lengths, u64 each |
//!
//! then the header at the next multiple of 64, then each frame at the next multiple of 64
//! after the previous item; padding is zero and the file ends at the last byte of the last
//! item. The file length must equal the layout these lengths give.
//!
//! The directory is `<parent>/courier-spill-<pid>-<n>`: created empty on the first spill,
//! removed when the worker stops; at creation, directories of the same pattern left by
//! processes that no longer exist are removed too.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{BufMut, Bytes};
use courier_core::Payload;
use courier_core::aligned::AlignedBuf;

/// The magic at the start of every spill file.
pub const SPILL_MAGIC: [u8; 4] = *b"CRSP";
/// The format version written and accepted.
pub const SPILL_VERSION: u8 = 1;
/// Frames one spilled value may have.
pub const MAX_SPILL_FRAMES: u32 = 1 << 16;
const PREAMBLE: usize = 64;
const ALIGN: u64 = 64;

fn align(n: u64) -> Option<u64> {
    n.checked_add(ALIGN - 1).map(|n| n & !(ALIGN - 1))
}

/// (offset, length) of one part of a spill file.
type Span = (u64, u64);

/// Where each part of a spill file lies: the header's span, each frame's, and the file's
/// length. `None` when the lengths overflow.
fn layout(header_len: u64, frames: &[u64]) -> Option<(Span, Vec<Span>, u64)> {
    let table_end = PREAMBLE as u64 + 8 * frames.len() as u64;
    let header_at = align(table_end)?;
    let mut end = header_at.checked_add(header_len)?;
    let mut out = Vec::with_capacity(frames.len());
    for &len in frames {
        let at = align(end)?;
        end = at.checked_add(len)?;
        out.push((at, len));
    }
    Some(((header_at, header_len), out, end))
}

/// Why a spill file could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpillDecodeError {
    /// Shorter than its preamble or table.
    #[error("spill file truncated: {0} bytes")]
    Truncated(usize),
    /// Not a spill file of this version.
    #[error("not a Courier spill file (bad magic or version)")]
    Magic,
    /// Counts or lengths that do not describe this file.
    #[error("spill file layout is inconsistent: {0}")]
    Layout(String),
    /// The contents changed since they were written.
    #[error("spill file checksum mismatch (stored {stored:08x}, computed {computed:08x})")]
    Checksum {
        /// The CRC in the preamble.
        stored: u32,
        /// The CRC of the contents.
        computed: u32,
    },
}

/// Encodes `value` as a spill file, written through `out` (the preamble last, with the CRC:
/// `out` must be seekable back to its start). Returns the file's length.
pub fn write_spill<W: Write + Seek>(value: &Payload, out: &mut W) -> std::io::Result<u64> {
    let lengths: Vec<u64> = value.frames.iter().map(|f| f.len() as u64).collect();
    let Some(((header_at, _), frames, file_len)) = layout(value.header.len() as u64, &lengths) else {
        return Err(std::io::Error::other("value too large to spill"));
    };
    if value.frames.len() > MAX_SPILL_FRAMES as usize || value.header.len() > u32::MAX as usize {
        return Err(std::io::Error::other(format!("a value of {} frames cannot be spilled", value.frames.len())));
    }
    let mut crc = crc32fast::Hasher::new();
    let zeros = [0u8; ALIGN as usize];
    let mut put = |out: &mut W, bytes: &[u8]| -> std::io::Result<()> {
        crc.update(bytes);
        out.write_all(bytes)
    };
    out.write_all(&[0u8; PREAMBLE])?;
    let table: Vec<u8> = lengths.iter().flat_map(|l| l.to_le_bytes()).collect();
    put(out, &table)?;
    let mut pos = PREAMBLE as u64 + table.len() as u64;
    put(out, &zeros[..(header_at - pos) as usize])?;
    put(out, &value.header)?;
    pos = header_at + value.header.len() as u64;
    for (frame, (at, _)) in value.frames.iter().zip(&frames) {
        put(out, &zeros[..(at - pos) as usize])?;
        put(out, frame)?;
        pos = at + frame.len() as u64;
    }
    debug_assert_eq!(pos, file_len);
    let mut pre = [0u8; PREAMBLE];
    pre[..4].copy_from_slice(&SPILL_MAGIC);
    pre[4] = SPILL_VERSION;
    pre[8..12].copy_from_slice(&(value.header.len() as u32).to_le_bytes());
    pre[12..16].copy_from_slice(&(value.frames.len() as u32).to_le_bytes());
    pre[16..24].copy_from_slice(&file_len.to_le_bytes());
    let mut whole = crc32fast::Hasher::new();
    whole.update(&pre);
    whole.combine(&crc);
    pre[24..28].copy_from_slice(&whole.finalize().to_le_bytes());
    out.seek(SeekFrom::Start(0))?;
    out.write_all(&pre)?;
    Ok(file_len)
}

/// Decodes a whole spill file held in `file`. The header and frames are views of `file`
/// (aligned as `file` is). Every inconsistency is an error; nothing panics.
pub fn decode_spill(file: &Bytes) -> Result<Payload, SpillDecodeError> {
    if file.len() < PREAMBLE {
        return Err(SpillDecodeError::Truncated(file.len()));
    }
    let pre = &file[..PREAMBLE];
    if pre[..4] != SPILL_MAGIC || pre[4] != SPILL_VERSION {
        return Err(SpillDecodeError::Magic);
    }
    if pre[5..8].iter().chain(&pre[28..]).any(|&b| b != 0) {
        return Err(SpillDecodeError::Layout("reserved preamble bytes are not zero".into()));
    }
    let u32_at = |i: usize| u32::from_le_bytes([pre[i], pre[i + 1], pre[i + 2], pre[i + 3]]);
    let header_len = u64::from(u32_at(8));
    let nframes = u32_at(12);
    let mut len_bytes = [0u8; 8];
    len_bytes.copy_from_slice(&pre[16..24]);
    let file_len = u64::from_le_bytes(len_bytes);
    let stored = u32_at(24);
    if nframes > MAX_SPILL_FRAMES {
        return Err(SpillDecodeError::Layout(format!("{nframes} frames; at most {MAX_SPILL_FRAMES}")));
    }
    if file_len != file.len() as u64 {
        return Err(SpillDecodeError::Layout(format!("says {file_len} bytes, has {}", file.len())));
    }
    let table_end = PREAMBLE + 8 * nframes as usize;
    if file.len() < table_end {
        return Err(SpillDecodeError::Truncated(file.len()));
    }
    let lengths: Vec<u64> = file[PREAMBLE..table_end]
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect();
    let Some(((header_at, header_len), frames, end)) = layout(header_len, &lengths) else {
        return Err(SpillDecodeError::Layout("lengths overflow".into()));
    };
    if end != file_len {
        return Err(SpillDecodeError::Layout(format!("lengths describe {end} bytes, the file has {file_len}")));
    }
    let mut zeroed = [0u8; PREAMBLE];
    zeroed.copy_from_slice(pre);
    zeroed[24..28].fill(0);
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&zeroed);
    hasher.update(&file[PREAMBLE..]);
    let computed = hasher.finalize();
    if computed != stored {
        return Err(SpillDecodeError::Checksum { stored, computed });
    }
    // Padding is zero (one encoding per value: corruption cannot hide there).
    let mut pos = table_end as u64;
    for &(at, len) in std::iter::once(&(header_at, header_len)).chain(&frames) {
        if file[pos as usize..at as usize].iter().any(|&b| b != 0) {
            return Err(SpillDecodeError::Layout(format!("non-zero padding before offset {at}")));
        }
        pos = at + len;
    }
    let slice = |(at, len): (u64, u64)| file.slice(at as usize..(at + len) as usize);
    Ok(Payload { header: slice((header_at, header_len)), frames: frames.into_iter().map(slice).collect() })
}

/// A spilled value on disk. Dropping the last handle deletes the file.
#[derive(Debug)]
pub struct SpillFile {
    path: PathBuf,
    nbytes: u64,
}

impl SpillFile {
    /// A handle to `path`, holding a value of `nbytes` (header and frames).
    pub fn new(path: PathBuf, nbytes: u64) -> Self {
        SpillFile { path, nbytes }
    }

    /// The value's size in memory (header and frames).
    pub fn nbytes(&self) -> u64 {
        self.nbytes
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the value back: one read into one aligned buffer, checked against its CRC.
    /// Blocking I/O.
    pub fn read(&self) -> Result<Payload, String> {
        self.read_with(())
    }

    /// Like [`read`](Self::read), with `owner` kept alive (and dropped) with the buffer: the
    /// caller learns when the value read back is gone from memory.
    pub fn read_with<O: Send + Sync + 'static>(&self, owner: O) -> Result<Payload, String> {
        let fail = |e: &dyn std::fmt::Display| format!("reading spilled value {}: {e}", self.path.display());
        let mut f = File::open(&self.path).map_err(|e| fail(&e))?;
        let len = f.metadata().map_err(|e| fail(&e))?.len();
        let len = usize::try_from(len).map_err(|e| fail(&e))?;
        let mut buf = AlignedBuf::try_new(len).map_err(|e| fail(&e))?;
        buf.put_bytes(0, len);
        f.read_exact(buf.filled_mut()).map_err(|e| fail(&e))?;
        let file = Bytes::from_owner(Owned { bytes: buf.freeze(), _owner: owner });
        decode_spill(&file).map_err(|e| fail(&e))
    }
}

struct Owned<O> {
    bytes: Bytes,
    _owner: O,
}

impl<O> AsRef<[u8]> for Owned<O> {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for SpillFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

static STORES: AtomicU64 = AtomicU64::new(0);

/// A worker's spill directory. Creates it on the first spill (so an unwritable parent is a
/// spill error, reported, not a failure to start); removes it when dropped.
#[derive(Debug)]
pub struct SpillStore {
    parent: PathBuf,
    /// `<parent>/courier-spill-<pid>-<n>`, named at creation, made on the first spill.
    name: PathBuf,
    dir: Mutex<Option<PathBuf>>,
    next: AtomicU64,
}

impl SpillStore {
    /// A store under `parent` (nothing is created yet).
    pub fn new(parent: impl Into<PathBuf>) -> Self {
        let parent = parent.into();
        let n = STORES.fetch_add(1, Ordering::Relaxed);
        let name = parent.join(format!("courier-spill-{}-{n}", std::process::id()));
        SpillStore { parent, name, dir: Mutex::new(None), next: AtomicU64::new(0) }
    }

    /// The parent directory given.
    pub fn parent(&self) -> &Path {
        &self.parent
    }

    fn dir(&self) -> Result<PathBuf, String> {
        let mut dir = self.dir.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(d) = &*dir {
            return Ok(d.clone());
        }
        remove_stale(&self.parent);
        let d = self.name.clone();
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).map_err(|e| format!("cannot create spill directory {}: {e}", d.display()))?;
        *dir = Some(d.clone());
        Ok(d)
    }

    /// Writes `value` to a new file. A failure (unwritable or full disk) leaves no file
    /// behind and names the path. Blocking I/O.
    pub fn write(&self, value: &Payload) -> Result<SpillFile, String> {
        let dir = self.dir()?;
        let path = dir.join(format!("{}.spill", self.next.fetch_add(1, Ordering::Relaxed)));
        let file = SpillFile::new(path, value.byte_len());
        let written = File::create(&file.path).and_then(|f| {
            let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
            write_spill(value, &mut w)?;
            w.flush()
        });
        // On error, dropping `file` removes what was written.
        written.map_err(|e| format!("cannot spill to {}: {e}", file.path.display()))?;
        Ok(file)
    }
}

impl Drop for SpillStore {
    fn drop(&mut self) {
        if let Some(d) = self.dir.get_mut().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// Removes `courier-spill-<pid>-*` directories under `parent` whose process is gone.
fn remove_stale(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else { return };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix("courier-spill-")) else { continue };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else { continue };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encode(value: &Payload) -> Bytes {
        let mut out = std::io::Cursor::new(Vec::new());
        write_spill(value, &mut out).unwrap();
        AlignedBuf::copy_from(&out.into_inner())
    }

    fn payload(header: Vec<u8>, frames: Vec<Vec<u8>>) -> Payload {
        Payload { header: Bytes::from(header), frames: frames.into_iter().map(Bytes::from).collect() }
    }

    proptest! {
        #[test]
        fn round_trips_with_aligned_frames(
            header in proptest::collection::vec(any::<u8>(), 0..300),
            frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..700), 0..6),
        ) {
            let value = payload(header, frames);
            let back = decode_spill(&encode(&value)).unwrap();
            prop_assert_eq!(&back, &value);
            for f in &back.frames {
                prop_assert_eq!(f.as_ptr() as usize % 64, 0);
            }
        }

        #[test]
        fn any_change_or_truncation_is_an_error_never_a_panic(
            frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..300), 1..4),
            at in any::<prop::sample::Index>(),
            flip in 1u8..=255,
            cut in any::<prop::sample::Index>(),
        ) {
            let value = payload(vec![0x90], frames);
            let file = encode(&value);
            let mut changed = file.to_vec();
            let i = at.index(changed.len());
            changed[i] ^= flip;
            prop_assert!(decode_spill(&Bytes::from(changed)).is_err(), "a flipped byte at {} went unnoticed", i);
            let n = cut.index(file.len());
            prop_assert!(decode_spill(&file.slice(..n)).is_err());
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_spill(&Bytes::from(bytes));
        }
    }

    #[test]
    fn hostile_counts_are_refused() {
        let mut file = encode(&payload(vec![1], vec![vec![2; 10]])).to_vec();
        file[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(decode_spill(&Bytes::from(file.clone())), Err(SpillDecodeError::Layout(_))));
        file[12..16].copy_from_slice(&1u32.to_le_bytes());
        file[64..72].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(decode_spill(&Bytes::from(file)), Err(SpillDecodeError::Layout(_))));
    }

    #[test]
    fn a_store_writes_reads_and_cleans_up() {
        let parent = std::env::temp_dir().join(format!("courier-spill-test-{}", std::process::id()));
        let store = SpillStore::new(&parent);
        let value = payload(vec![7; 5], vec![vec![1; 100_000], vec![]]);
        let file = store.write(&value).unwrap();
        assert_eq!(file.nbytes(), value.byte_len());
        assert_eq!(file.read().unwrap(), value);
        let path = file.path().to_owned();
        drop(file);
        assert!(!path.exists(), "dropping the handle deletes the file");
        let dir = path.parent().unwrap().to_owned();
        assert!(dir.exists());
        drop(store);
        assert!(!dir.exists(), "dropping the store removes its directory");
        let _ = std::fs::remove_dir_all(parent);
    }

    #[test]
    fn an_unwritable_parent_is_an_error_naming_the_directory() {
        let store = SpillStore::new("/proc/courier-no-such-dir");
        let err = store.write(&payload(vec![1], vec![])).unwrap_err();
        assert!(err.contains("/proc/courier-no-such-dir"), "{err}");
    }
}
