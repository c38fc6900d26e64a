//! Shared arenas: segments of shared memory a sender owns and fills, which its receiver maps
//! read-only once and then views frame by frame; the receiver releases each frame (a record on
//! the descriptor channel) when its last `Bytes` is dropped, and the sender reuses the space.
//! The pages are allocated and faulted in once per segment, not once per frame.
//!
//! The same slots can also be *lent* to this process as buffers ([`Pool::lend`], installed as
//! courier-core's buffer source by `ShmTransport::lend_buffers`): a large result or received
//! frame made in one is then sent to a peer in place, with no copy at all. A slot is counted
//! by references — the local buffer of a lent slot, and one per receiver's view — and freed
//! when the last goes.

use std::collections::{BTreeMap, HashMap};
use std::os::fd::OwnedFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use courier_core::CommError;
use courier_core::aligned::{BufferSource, Lease};
use rustix::fs::{MemfdFlags, SealFlags};

use crate::channel;

/// Alignment of every frame in a segment (pages: frames start on their own page).
pub(crate) const SLOT_ALIGN: usize = 4096;
/// The first segment's size; each new one doubles the last, up to [`SEGMENT_MAX`], and a
/// larger frame gets a segment of its own size (rounded up to a power of two).
pub(crate) const SEGMENT_MIN: usize = 4 << 20;
/// Largest segment made for frames smaller than it.
pub(crate) const SEGMENT_MAX: usize = 256 << 20;
/// Most segments a receiver maps for one comm direction.
pub const MAX_SEGMENTS: usize = 64;
/// Magic of a release record.
pub const RELEASE_MAGIC: [u8; 4] = *b"CRRL";
/// Most releases in one record.
pub const MAX_RELEASES_PER_RECORD: usize = 1024;

/// The seals a segment carries: it can never shrink (no SIGBUS for its reader) or grow.
const SEGMENT_SEALS: SealFlags = SealFlags::SHRINK.union(SealFlags::GROW);

fn round_up(n: usize, to: usize) -> Option<usize> {
    n.checked_add(to - 1).map(|x| x / to * to)
}

struct Segment {
    map: memmap2::MmapMut,
    /// Kept to pass the segment to each receiver once.
    fd: OwnedFd,
    /// Free ranges: offset → length, coalesced.
    free: BTreeMap<usize, usize>,
    /// Slots in use, by offset.
    taken: HashMap<usize, Taken>,
    /// Some of its pages were given back ([`Pool::trim`]) and may not be resident again yet.
    holes: bool,
}

/// A slot in use.
#[derive(Debug)]
struct Taken {
    /// Rounded length.
    len: usize,
    /// Receivers' views of it, plus one while its lent buffer lives.
    refs: u32,
    /// Lent to this process as a buffer (else a copy of a frame, for one receiver).
    lent: bool,
}

impl Segment {
    /// A segment of `size` bytes: a memfd sealed against shrinking and growing, mapped and
    /// faulted in.
    fn new(size: usize) -> std::io::Result<Segment> {
        let fd = rustix::fs::memfd_create("courier-shm-arena", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
        rustix::fs::ftruncate(&fd, size as u64)?;
        rustix::fs::fcntl_add_seals(&fd, SEGMENT_SEALS | SealFlags::SEAL)?;
        // SAFETY: this side writes the segment only through this mapping, and only in slots
        // it has allocated (for a copy, or lent as a buffer); receivers map it read-only.
        let map = unsafe { memmap2::MmapOptions::new().len(size).populate().map_mut(&fd) }?;
        let mut free = BTreeMap::new();
        free.insert(0, size);
        Ok(Segment { map, fd, free, taken: HashMap::new(), holes: false })
    }

    /// Bytes of its pages resident now: all of them unless some were given back, else what
    /// the memory file has allocated (tmpfs counts its pages in `st_blocks`).
    fn resident(&mut self) -> u64 {
        let size = self.map.len() as u64;
        if !self.holes {
            return size;
        }
        let Ok(stat) = rustix::fs::fstat(&self.fd) else { return size };
        let resident = (stat.st_blocks as u64).saturating_mul(512).min(size);
        self.holes = resident < size;
        resident
    }

    fn alloc(&mut self, len: usize) -> Option<usize> {
        let (&off, &size) = self.free.iter().find(|&(_, &size)| size >= len)?;
        self.free.remove(&off);
        if size > len {
            self.free.insert(off + len, size - len);
        }
        Some(off)
    }

    fn release(&mut self, off: usize, len: usize) {
        let (mut off, mut len) = (off, len);
        if let Some((&prev, &plen)) = self.free.range(..off).next_back()
            && prev + plen == off
        {
            self.free.remove(&prev);
            off = prev;
            len += plen;
        }
        if let Some(&nlen) = self.free.get(&(off + len)) {
            self.free.remove(&(off + len));
            len += nlen;
        }
        self.free.insert(off, len);
    }
}

/// Where a frame was put.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Slot {
    pub(crate) segment: u32,
    pub(crate) offset: u64,
}

/// A frame put in the arena: its slot, and the segment's descriptor and size when this comm's
/// receiver does not have the segment yet.
pub(crate) type Placed = (Slot, Option<(OwnedFd, u64)>);

/// The segments of one transport (of one process, usually), shared by every comm it sends
/// on, so slots freed by one receiver serve the next frame to any peer. Segments live as long
/// as the pool; ids are their indices, below [`MAX_SEGMENTS`].
pub(crate) struct Pool {
    inner: Mutex<PoolInner>,
    /// Frames sent in place from lent slots.
    in_place: AtomicU64,
    /// Ended comms whose receivers still held frames (never locked with `inner` held).
    orphans: Mutex<Vec<Orphan>>,
}

/// The slots an ended comm's receiver still held, and the channel their releases come on.
/// The receiver's views keep its end of the channel open, so each release, or the end
/// closing (its last view gone, or its process dead), gives them back.
struct Orphan {
    channel: Arc<channel::Channel>,
    outstanding: HashMap<(u32, u64), u32>,
}

/// Most ended comms a pool waits on (one descriptor each); past this the oldest one's slots
/// stay taken for good, within the cap.
pub(crate) const MAX_ORPHANS: usize = 256;

struct PoolInner {
    segments: Vec<Segment>,
    /// Most bytes of segments in total.
    cap: usize,
    total: usize,
    /// Bytes of lent slots not yet freed (at most [`LEND_SHARE`] of the cap).
    lent: usize,
}

/// Every pool of this process (weakly), for [`resident_bytes`].
static POOLS: Mutex<Vec<std::sync::Weak<Pool>>> = Mutex::new(Vec::new());

/// Bytes of all this process's arena segments resident now.
pub(crate) fn resident_bytes() -> u64 {
    let pools: Vec<Arc<Pool>> =
        POOLS.lock().unwrap_or_else(|p| p.into_inner()).iter().filter_map(std::sync::Weak::upgrade).collect();
    pools.iter().map(|p| p.resident()).sum()
}

/// The share of the cap that lent buffers may hold (numerator over 4): the rest stays for
/// copies of frames that do not live in the arena, so sends never fall back to sealed memfds
/// because results filled it.
const LEND_SHARE: usize = 3;

impl PoolInner {
    /// A free range of `len` bytes in an existing segment: one `prefer` accepts, else (when
    /// `any`) any. (segment, offset).
    fn find(&mut self, len: usize, prefer: &impl Fn(usize) -> bool, any: bool) -> Option<(usize, usize)> {
        for pass in [false, true] {
            if pass && !any {
                break;
            }
            let found = self
                .segments
                .iter_mut()
                .enumerate()
                .filter(|(i, _)| prefer(*i) != pass)
                .find_map(|(i, s)| s.alloc(len).map(|off| (i, off)));
            if found.is_some() {
                return found;
            }
        }
        None
    }

    /// The size of the next segment for a frame of `len` bytes, if the cap allows one.
    fn next_size(&self, len: usize) -> Option<usize> {
        let grown = (SEGMENT_MIN << self.segments.len().min(16)).min(SEGMENT_MAX);
        let size = len.next_power_of_two().max(grown);
        (self.segments.len() < MAX_SEGMENTS && self.total.saturating_add(size) <= self.cap).then_some(size)
    }

    /// Drops one reference to the slot at `offset` of `segment`; frees it with the last.
    fn unref(&mut self, segment: u32, offset: usize) {
        let Some(seg) = self.segments.get_mut(segment as usize) else { return };
        let Some(t) = seg.taken.get_mut(&offset) else { return };
        t.refs -= 1;
        if t.refs == 0 {
            let t = seg.taken.remove(&offset).expect("present");
            seg.release(offset, t.len);
            if t.lent {
                self.lent -= t.len;
            }
        }
    }

    /// The lent slot `data` starts, if it lies in one: (segment, offset).
    fn lent_slot(&self, data: &[u8]) -> Option<(usize, usize)> {
        let at = data.as_ptr() as usize;
        self.segments.iter().enumerate().find_map(|(i, s)| {
            let off = at.checked_sub(s.map.as_ptr() as usize).filter(|&off| off < s.map.len())?;
            let t = s.taken.get(&off)?;
            (t.lent && data.len() <= t.len).then_some((i, off))
        })
    }
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.lock();
        f.debug_struct("Pool").field("segments", &inner.segments.len()).field("total", &inner.total).finish()
    }
}

impl Pool {
    pub(crate) fn new(cap: usize) -> Arc<Pool> {
        let pool = Arc::new(Pool {
            inner: Mutex::new(PoolInner { segments: Vec::new(), cap, total: 0, lent: 0 }),
            in_place: AtomicU64::new(0),
            orphans: Mutex::new(Vec::new()),
        });
        let mut pools = POOLS.lock().unwrap_or_else(|p| p.into_inner());
        pools.retain(|p| p.strong_count() > 0);
        pools.push(Arc::downgrade(&pool));
        pool
    }

    /// Takes over the slots an ended comm's receiver still holds (see [`Orphan`]), after
    /// freeing what earlier ones' receivers have released since (so receivers that dropped
    /// their frames do not keep a descriptor here until the arena runs short).
    pub(crate) fn adopt(&self, channel: Arc<channel::Channel>, outstanding: HashMap<(u32, u64), u32>) {
        self.reap();
        let mut orphans = self.orphans.lock().unwrap_or_else(|p| p.into_inner());
        if orphans.len() >= MAX_ORPHANS {
            orphans.remove(0);
        }
        orphans.push(Orphan { channel, outstanding });
    }

    /// Frees the slots ended comms' receivers have released since the last look (all of a
    /// receiver's once its end of the channel closed); whether any was freed. A receiver that
    /// sends anything but releases of slots it holds is given up on: its slots stay taken.
    fn reap(&self) -> bool {
        let mut orphans = std::mem::take(&mut *self.orphans.lock().unwrap_or_else(|p| p.into_inner()));
        if orphans.is_empty() {
            return false;
        }
        let mut freed = Vec::new();
        orphans.retain_mut(|o| {
            loop {
                match o.channel.poll(false) {
                    Ok(channel::Polled::Record((body, fds))) => {
                        let Ok((_, releases)) = parse_releases(&body) else { return false };
                        if !fds.is_empty() {
                            return false;
                        }
                        for slot in releases {
                            let Some(n) = o.outstanding.get_mut(&slot) else { return false };
                            *n -= 1;
                            if *n == 0 {
                                o.outstanding.remove(&slot);
                            }
                            freed.push(slot);
                        }
                        if o.outstanding.is_empty() {
                            return false;
                        }
                    }
                    Ok(channel::Polled::Empty) => return true,
                    Ok(channel::Polled::Closed) => {
                        for (slot, n) in o.outstanding.drain() {
                            freed.extend(std::iter::repeat_n(slot, n as usize));
                        }
                        return false;
                    }
                    Err(_) => return false,
                }
            }
        });
        self.orphans.lock().unwrap_or_else(|p| p.into_inner()).extend(orphans);
        if freed.is_empty() {
            return false;
        }
        let mut pool = self.lock();
        for (segment, offset) in freed {
            pool.unref(segment, offset as usize);
        }
        true
    }

    fn has_orphans(&self) -> bool {
        !self.orphans.lock().unwrap_or_else(|p| p.into_inner()).is_empty()
    }

    /// Ended comms waited on.
    #[cfg(test)]
    pub(crate) fn orphans(&self) -> usize {
        self.orphans.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Bytes of this pool's segments resident now.
    pub(crate) fn resident(&self) -> u64 {
        self.lock().segments.iter_mut().map(Segment::resident).sum()
    }

    /// Gives the pages of every free range back to the system (punching holes in the memory
    /// files: receivers' mappings of them go too), and returns how many bytes that freed. The
    /// ranges stay free; a frame or buffer placed in one later faults fresh pages in, as a new
    /// segment's do. Meant for memory pressure: a trimmed arena is slower until it is warm again.
    pub(crate) fn trim(&self) -> u64 {
        self.reap();
        let before = self.resident();
        // Out of the free lists while their pages go, so nothing is placed in them meanwhile;
        // the descriptors duplicated, since segments may be added (and the list moved) then.
        let mut out = Vec::new();
        {
            let mut pool = self.lock();
            for (i, seg) in pool.segments.iter_mut().enumerate() {
                if seg.free.is_empty() {
                    continue;
                }
                let Ok(fd) = seg.fd.try_clone() else { continue };
                out.push((i, fd, std::mem::take(&mut seg.free)));
            }
        }
        for (_, fd, free) in &out {
            for (&off, &len) in free {
                let punch = rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE;
                if let Err(e) = rustix::fs::fallocate(fd, punch, off as u64, len as u64) {
                    tracing::debug!("giving back {len} bytes of an arena segment failed: {e}");
                }
            }
        }
        let mut pool = self.lock();
        for (i, _, free) in out {
            let seg = &mut pool.segments[i];
            seg.holes = true;
            for (off, len) in free {
                seg.release(off, len);
            }
        }
        drop(pool);
        before.saturating_sub(self.resident())
    }

    /// A slot of at least `len` bytes lent to this process as a buffer, or `None` when lent
    /// slots hold their share of the cap already (or no segment can be made).
    pub(crate) fn lend(self: &Arc<Self>, len: usize) -> Option<Lease> {
        let rounded = round_up(len.max(1), SLOT_ALIGN)?;
        let pool = self.lock();
        if pool.lent.saturating_add(rounded) > pool.cap / 4 * LEND_SHARE {
            return None;
        }
        let (mut pool, found) = self.alloc(pool, rounded, |_| true, false, true).ok()?;
        let (index, off) = found?;
        if pool.lent.saturating_add(rounded) > pool.cap / 4 * LEND_SHARE {
            // Others lent while a segment was being made without the lock.
            pool.segments[index].release(off, rounded);
            return None;
        }
        pool.segments[index].taken.insert(off, Taken { len: rounded, refs: 1, lent: true });
        pool.lent += rounded;
        // SAFETY: inside the segment's mapping (the range was just allocated in it).
        let ptr = unsafe { pool.segments[index].map.as_mut_ptr().add(off) };
        drop(pool);
        let owner = LentSlot { pool: self.clone(), segment: index as u32, offset: off };
        // SAFETY: the slot is page-aligned, lies in a mapping that lives as long as the pool
        // (which `owner` keeps), and is this lease's alone: it left the free list and no frame
        // is copied into it; receivers only read it once the buffer is sent, and its reference
        // keeps it taken until they release it too.
        Some(unsafe { Lease::new(NonNull::new(ptr)?, len, Box::new(owner)) })
    }

    /// Frames sent in place from lent slots, so far.
    pub(crate) fn sent_in_place(&self) -> u64 {
        self.in_place.load(Ordering::Relaxed)
    }

    /// Bytes of lent slots not yet freed.
    #[cfg(test)]
    pub(crate) fn lent(&self) -> usize {
        self.lock().lent
    }
}

/// What [`Pool::alloc`] gives: the pool's lock, and the (segment, offset) of the range if any.
type Allocated<'a> = (MutexGuard<'a, PoolInner>, Option<(usize, usize)>);

/// A lent slot's local reference, dropped with the buffer made in it.
struct LentSlot {
    pool: Arc<Pool>,
    segment: u32,
    offset: usize,
}

impl Drop for LentSlot {
    fn drop(&mut self) {
        self.pool.lock().unref(self.segment, self.offset);
    }
}

/// The pool as courier-core's buffer source.
pub(crate) struct Lender(pub(crate) Arc<Pool>);

impl BufferSource for Lender {
    fn lend(&self, len: usize) -> Option<Lease> {
        self.0.lend(len)
    }
}

impl Pool {
    /// A free range of `len` bytes: in a segment `prefer` accepts, else (when `any`) in any
    /// segment, else in a new segment when `may_grow` and the cap allows. (segment, offset),
    /// and the pool's lock again. A new segment is made and faulted in (~25 ms per 64 MiB
    /// here) without the lock, so other comms' frames and the drops of lent buffers never
    /// wait for it.
    fn alloc<'a>(
        &'a self,
        mut pool: MutexGuard<'a, PoolInner>,
        len: usize,
        prefer: impl Fn(usize) -> bool,
        any: bool,
        may_grow: bool,
    ) -> std::io::Result<Allocated<'a>> {
        if let Some(found) = pool.find(len, &prefer, any) {
            return Ok((pool, Some(found)));
        }
        if self.has_orphans() {
            // Ended comms' receivers may have released slots since.
            drop(pool);
            let reaped = self.reap();
            pool = self.lock();
            if reaped && let Some(found) = pool.find(len, &prefer, any) {
                return Ok((pool, Some(found)));
            }
        }
        let Some(size) = pool.next_size(len).filter(|_| may_grow) else { return Ok((pool, None)) };
        drop(pool);
        let segment = Segment::new(size)?;
        let mut pool = self.lock();
        // Others may have grown the pool or freed slots meanwhile.
        if pool.segments.len() >= MAX_SEGMENTS || pool.total.saturating_add(size) > pool.cap {
            let found = pool.find(len, &prefer, any);
            return Ok((pool, found));
        }
        pool.segments.push(segment);
        pool.total += size;
        let i = pool.segments.len() - 1;
        let off = pool.segments[i].alloc(len).expect("a fresh segment fits its frame");
        Ok((pool, Some((i, off))))
    }

    fn lock(&self) -> MutexGuard<'_, PoolInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes of segments made so far.
    #[cfg(test)]
    pub(crate) fn total(&self) -> usize {
        self.lock().total
    }

    /// Most bytes of segments.
    pub(crate) fn cap(&self) -> usize {
        self.lock().cap
    }
}

/// One comm's use of its transport's pool: which segments its receiver has, and which slots
/// it holds.
pub(crate) struct Arena {
    pool: Arc<Pool>,
    /// Bit `i`: the receiver has segment `i`.
    passed: u64,
    /// Views the receiver still holds, by slot: (segment, offset) → how many (a lent slot
    /// may be sent more than once).
    outstanding: HashMap<(u32, u64), u32>,
}

impl std::fmt::Debug for Arena {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Arena").field("pool", &self.pool).field("outstanding", &self.outstanding.len()).finish()
    }
}

impl Arena {
    pub(crate) fn new(pool: Arc<Pool>) -> Self {
        Arena { pool, passed: 0, outstanding: HashMap::new() }
    }

    fn has(&self, id: usize) -> bool {
        self.passed & (1u64 << id) != 0
    }

    /// Places `data` for this comm's receiver: in place when it lies in a slot lent to this
    /// process (no copy; the slot gains a reference), else copied into a free slot of the
    /// pool. Returns the slot and, when this comm's receiver does not have its segment yet, a
    /// duplicate of the segment's descriptor and its size (to pass with this message;
    /// [`Arena::passed`] once it went). Segments the receiver lacks, new or not, only if
    /// `may_pass`. `None`: no room within the cap (the caller sends the frame another way).
    pub(crate) fn put(&mut self, data: &[u8], may_pass: bool) -> std::io::Result<Option<Placed>> {
        let Some(len) = round_up(data.len(), SLOT_ALIGN) else { return Ok(None) };
        let pool = self.pool.lock();
        let in_place = pool.lent_slot(data).filter(|&(i, _)| may_pass || self.has(i));
        let (mut pool, (index, off)) = match in_place {
            Some(slot) => (pool, slot),
            None => match self.pool.alloc(pool, len, |i| self.has(i), may_pass, may_pass)? {
                (pool, Some(slot)) => (pool, slot),
                (_, None) => return Ok(None),
            },
        };
        let segment = &mut pool.segments[index];
        let pass = if self.has(index) { None } else { Some((segment.fd.try_clone()?, segment.map.len() as u64)) };
        let dst = segment.map.as_mut_ptr();
        match in_place {
            Some(_) => {
                segment.taken.get_mut(&off).expect("a lent slot").refs += 1;
                self.pool.in_place.fetch_add(1, Ordering::Relaxed);
            }
            None => {
                segment.taken.insert(off, Taken { len, refs: 1, lent: false });
            }
        }
        drop(pool);
        if in_place.is_none() {
            // SAFETY: [off, off + len) of this segment was just taken from the free list for
            // this frame alone: no other comm writes it and no receiver views it until this
            // message goes. Segments are never unmapped while the pool lives, and `self.pool`
            // keeps it. The copy runs outside the pool's lock so other comms can place frames
            // meanwhile.
            unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), dst.add(off), data.len()) };
        }
        let slot = Slot { segment: index as u32, offset: off as u64 };
        *self.outstanding.entry((slot.segment, slot.offset)).or_default() += 1;
        Ok(Some((slot, pass)))
    }

    /// The receiver now has segment `id`.
    pub(crate) fn passed(&mut self, id: u32) {
        if (id as usize) < MAX_SEGMENTS {
            self.passed |= 1u64 << id;
        }
    }

    /// Frees a slot this side placed but never sent (the send failed).
    pub(crate) fn unput(&mut self, slot: Slot) {
        let _ = self.release(slot.segment, slot.offset);
    }

    /// The receiver released a view of a slot.
    pub(crate) fn release(&mut self, segment: u32, offset: u64) -> Result<(), CommError> {
        let held = self.outstanding.get_mut(&(segment, offset)).ok_or_else(|| {
            CommError::protocol(format!(
                "the peer released a frame it does not hold (segment {segment}, offset {offset})"
            ))
        })?;
        *held -= 1;
        if *held == 0 {
            self.outstanding.remove(&(segment, offset));
        }
        self.pool.lock().unref(segment, offset as usize);
        Ok(())
    }

    /// The pool, and the slots the receiver still holds, taken out (the comm ended).
    pub(crate) fn take_outstanding(&mut self) -> (Arc<Pool>, HashMap<(u32, u64), u32>) {
        (self.pool.clone(), std::mem::take(&mut self.outstanding))
    }

    /// Whether the receiver still holds any frame (O(1): checked on every send).
    pub(crate) fn holds_frames(&self) -> bool {
        !self.outstanding.is_empty()
    }

    /// Frames the receiver still holds.
    #[cfg(test)]
    pub(crate) fn outstanding(&self) -> usize {
        self.outstanding.values().map(|&n| n as usize).sum()
    }
}

// A comm that ends while its receiver still holds frames hands their slots to the pool
// (`Pool::adopt`): the receiver may read them for as long as it likes, and they return with
// its releases, or with the close of its end of the channel.

/// What a receiver has yet to tell its sender.
#[derive(Debug, Default)]
struct Pending {
    /// Frames dropped: (segment, offset).
    releases: Vec<(u32, u64)>,
    /// Bytes of shared frames received (the sender's flow-control window reopens by these).
    received: u64,
}

/// Release records (releases of dropped frames, and bytes received), sent on the channel from
/// whichever thread drops a frame or receives a message.
#[derive(Debug)]
pub(crate) struct Releaser {
    channel: Arc<channel::Channel>,
    pending: Mutex<Pending>,
    /// Something is queued (a full channel held it back).
    queued: AtomicBool,
}

impl Releaser {
    pub(crate) fn new(channel: Arc<channel::Channel>) -> Arc<Self> {
        Arc::new(Releaser { channel, pending: Mutex::default(), queued: AtomicBool::new(false) })
    }

    fn release(&self, segment: u32, offset: u64) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.releases.push((segment, offset));
        self.flush_locked(&mut pending);
    }

    /// A message with `bytes` of shared frames was received.
    pub(crate) fn received(&self, bytes: u64) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.received += bytes;
        self.flush_locked(&mut pending);
    }

    /// Sends what is queued; a full channel keeps it queued for the next drop or receive. A
    /// closed one drops it: the sender is gone and needs no releases.
    pub(crate) fn flush(&self) {
        if !self.queued.load(Ordering::Acquire) {
            return;
        }
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        self.flush_locked(&mut pending);
    }

    fn flush_locked(&self, pending: &mut Pending) {
        while !pending.releases.is_empty() || pending.received > 0 {
            let n = pending.releases.len().min(MAX_RELEASES_PER_RECORD);
            let mut body = Vec::with_capacity(16 + 16 * n);
            body.extend_from_slice(&RELEASE_MAGIC);
            body.extend_from_slice(&(n as u32).to_le_bytes());
            body.extend_from_slice(&pending.received.to_le_bytes());
            for &(segment, offset) in &pending.releases[..n] {
                body.extend_from_slice(&segment.to_le_bytes());
                body.extend_from_slice(&0u32.to_le_bytes());
                body.extend_from_slice(&offset.to_le_bytes());
            }
            match self.channel.try_send(&body, &[]) {
                Ok(()) => {
                    pending.releases.drain(..n);
                    pending.received = 0;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    *pending = Pending::default();
                    break;
                }
            }
        }
        self.queued.store(!pending.releases.is_empty() || pending.received > 0, Ordering::Release);
    }
}

/// What a release record says.
pub(crate) type Released = (u64, Vec<(u32, u64)>);

/// Parses a release record's body: bytes of shared frames received since the previous
/// record, and the (segment, offset) of each frame released.
pub(crate) fn parse_releases(body: &[u8]) -> Result<Released, CommError> {
    let bad = || CommError::protocol("a malformed release record");
    if body.len() < 16 || body[..4] != RELEASE_MAGIC {
        return Err(bad());
    }
    let n = u32::from_le_bytes(body[4..8].try_into().expect("4 bytes")) as usize;
    if n > MAX_RELEASES_PER_RECORD || body.len() != 16 + 16 * n {
        return Err(bad());
    }
    let received = u64::from_le_bytes(body[8..16].try_into().expect("8 bytes"));
    let releases = body[16..]
        .chunks_exact(16)
        .map(|e| {
            (u32::from_le_bytes(e[..4].try_into().expect("4 bytes")), u64::from_le_bytes(e[8..].try_into().expect("8")))
        })
        .collect();
    Ok((received, releases))
}

/// A segment mapped read-only by the receiver.
#[derive(Debug)]
pub(crate) struct Mapped {
    map: memmap2::Mmap,
}

/// Checks that `fd` is a memfd of `size` bytes sealed against shrinking and growing, and maps
/// it read-only.
pub(crate) fn map_segment(fd: OwnedFd, size: u64) -> Result<Arc<Mapped>, CommError> {
    let len = crate::frame::check_sealed(&fd, size, SEGMENT_SEALS, "shrinking and growing", "segment")?;
    // SAFETY: the segment cannot shrink (sealed), so every mapped page stays backed. Its
    // owner may still write to slots it has not handed over; slots it handed over are not
    // written until released (see the crate docs for the trust this requires).
    // Not populated: the receiver's resident memory grows only with the frames it reads.
    let map = unsafe { memmap2::MmapOptions::new().len(len).map(&fd) }
        .map_err(|e| CommError::from_io("mapping a shared segment", e))?;
    Ok(Arc::new(Mapped { map }))
}

/// One received frame: a view of a slot in a mapped segment, released on drop.
struct SlotView {
    segment: Arc<Mapped>,
    index: u32,
    offset: usize,
    len: usize,
    releaser: Arc<Releaser>,
}

impl AsRef<[u8]> for SlotView {
    fn as_ref(&self) -> &[u8] {
        &self.segment.map[self.offset..self.offset + self.len]
    }
}

impl Drop for SlotView {
    fn drop(&mut self) {
        self.releaser.release(self.index, self.offset as u64);
    }
}

/// The frame at `offset..offset + len` of a mapped segment, checked to lie inside it.
pub(crate) fn view(
    segment: &Arc<Mapped>,
    index: u32,
    offset: u64,
    len: u64,
    releaser: &Arc<Releaser>,
) -> Result<Bytes, CommError> {
    let end = offset.checked_add(len).filter(|&e| e <= segment.map.len() as u64);
    if end.is_none() || !offset.is_multiple_of(SLOT_ALIGN as u64) || len == 0 {
        return Err(CommError::protocol(format!(
            "a frame at offset {offset} of {len} bytes does not fit segment {index} of {} bytes",
            segment.map.len()
        )));
    }
    Ok(Bytes::from_owner(SlotView {
        segment: segment.clone(),
        index,
        offset: offset as usize,
        len: len as usize,
        releaser: releaser.clone(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_reused_after_release_and_coalesce() {
        let mut a = Arena::new(Pool::new(1 << 30));
        let (s1, new1) = a.put(&[1u8; 5000], true).unwrap().unwrap();
        assert!(new1.is_some());
        let (s2, new2) = a.put(&[2u8; 3 << 20], true).unwrap().unwrap();
        assert!(new2.is_some(), "not passed yet: its descriptor goes again");
        a.passed(0);
        let (s5, new5) = a.put(&[5u8; 4096], true).unwrap().unwrap();
        assert!(new5.is_none(), "passed");
        a.unput(s5);
        assert_eq!((s1.offset, s2.offset), (0, 8192));
        assert!(a.release(s1.segment, 999).is_err(), "unknown slot");
        a.release(s1.segment, s1.offset).unwrap();
        a.release(s2.segment, s2.offset).unwrap();
        assert!(a.release(s2.segment, s2.offset).is_err(), "double release");
        let (s3, _) = a.put(&[3u8; SEGMENT_MIN], true).unwrap().unwrap();
        assert_eq!((s3.segment, s3.offset), (0, 0), "freed ranges coalesced into the whole segment");
        assert!(a.put(&[4u8; 100], false).unwrap().is_none(), "no new descriptor without room for one");
        let (s4, new4) = a.put(&[4u8; 100], true).unwrap().unwrap();
        assert_eq!((s4.segment, new4.map(|n| n.1)), (1, Some(2 * SEGMENT_MIN as u64)), "segments double");
        assert_eq!(a.outstanding(), 2);
    }

    #[test]
    fn comms_share_the_pool_and_each_receiver_gets_a_segment_once() {
        let pool = Pool::new(1 << 30);
        let (mut a, mut b) = (Arena::new(pool.clone()), Arena::new(pool.clone()));
        let (sa, pa) = a.put(&[1u8; 4096], true).unwrap().unwrap();
        a.passed(sa.segment);
        a.release(sa.segment, sa.offset).unwrap();
        // The slot a's receiver freed serves b's frame; b's receiver needs the segment.
        let (sb, pb) = b.put(&[2u8; 4096], true).unwrap().unwrap();
        assert_eq!((sb.segment, sb.offset), (sa.segment, sa.offset));
        assert!(pa.is_some() && pb.is_some());
        b.passed(sb.segment);
        assert!(b.put(&[3u8; 4096], true).unwrap().unwrap().1.is_none(), "b's receiver has it now");
        assert!(b.release(sa.segment, 8192).is_err(), "b cannot release what a's receiver holds");
        assert_eq!(pool.total(), SEGMENT_MIN);
        // A comm that ends with frames held leaves them taken.
        drop(b);
        let (sc, _) = a.put(&[4u8; 4096], true).unwrap().unwrap();
        assert_eq!(sc.offset, 8192, "b's two slots stay taken");
    }

    #[test]
    fn the_cap_bounds_the_pool() {
        let mut a = Arena::new(Pool::new(SEGMENT_MIN));
        assert!(a.put(&[0u8; 1024], true).unwrap().is_some());
        assert!(a.put(&[0u8; SEGMENT_MIN], true).unwrap().is_none(), "a second segment would pass the cap");
    }

    /// A buffer made in a lent slot goes in place (same slot, no copy), however many times it
    /// is sent, and its slot is freed only when the buffer and every view of it are gone.
    #[test]
    fn lent_slots_go_in_place_and_are_counted() {
        use bytes::BufMut;
        let pool = Pool::new(1 << 30);
        let lease = pool.lend(3 << 20).expect("room");
        let mut buf = courier_core::aligned::AlignedBuf::from_lease(lease, 3 << 20);
        buf.put_bytes(7, 3 << 20);
        let bytes = buf.freeze();
        let mut a = Arena::new(pool.clone());
        let (s1, pass1) = a.put(&bytes, true).unwrap().unwrap();
        assert!(pass1.is_some(), "the receiver gets the segment once");
        a.passed(s1.segment);
        let base = pool.lock().segments[s1.segment as usize].map.as_ptr() as usize;
        assert_eq!(base + s1.offset as usize, bytes.as_ptr() as usize, "in place: the frame is the buffer");
        let (s2, pass2) = a.put(&bytes, true).unwrap().unwrap();
        assert_eq!((s2, pass2.is_none()), (s1, true), "sent twice: the same slot, held twice");
        assert_eq!(pool.sent_in_place(), 2);
        assert_eq!(a.outstanding(), 2);
        // A slice that does not start the slot is copied like any other frame.
        let (s3, _) = a.put(&bytes[4096..], true).unwrap().unwrap();
        assert_ne!(s3, s1);
        a.release(s3.segment, s3.offset).unwrap();
        drop(bytes);
        assert_eq!(pool.lent(), 3 << 20, "the receiver's views keep the slot");
        a.release(s1.segment, s1.offset).unwrap();
        a.release(s1.segment, s1.offset).unwrap();
        assert!(a.release(s1.segment, s1.offset).is_err(), "a third release of two views");
        assert_eq!((pool.lent(), a.outstanding()), (0, 0));
        let again = pool.lend(3 << 20).expect("room");
        assert_eq!(again.as_ptr() as usize, base + s1.offset as usize, "the freed slot serves again");
    }

    /// An ended comm's slots return with the receiver's releases, or all at once when its end
    /// of the channel closes (the receiver's process died); garbage gives the receiver up.
    #[tokio::test]
    async fn ended_comms_slots_return_with_releases_or_the_channel_closing() {
        use crate::channel::{Channel, pair};
        let pool = Pool::new(64 << 20);
        let adopt = |n: usize| {
            let mut a = Arena::new(pool.clone());
            let slots: Vec<Slot> = (0..n).map(|_| a.put(&[1u8; 1 << 20], true).unwrap().unwrap().0).collect();
            let (mine, theirs) = pair().unwrap();
            let (pool, outstanding) = a.take_outstanding();
            pool.adopt(Arc::new(Channel::new(mine).unwrap()), outstanding);
            (slots, Channel::new(theirs).unwrap())
        };
        let release = |ch: &Channel, slots: &[Slot]| {
            let mut body = RELEASE_MAGIC.to_vec();
            body.extend_from_slice(&(slots.len() as u32).to_le_bytes());
            body.extend_from_slice(&0u64.to_le_bytes());
            for s in slots {
                body.extend_from_slice(&s.segment.to_le_bytes());
                body.extend_from_slice(&0u32.to_le_bytes());
                body.extend_from_slice(&s.offset.to_le_bytes());
            }
            ch.try_send(&body, &[]).unwrap();
        };
        let (released, r1) = adopt(2);
        let (died, r2) = adopt(2);
        let (hostile, r3) = adopt(2);
        assert!(!pool.reap(), "nothing released yet");
        release(&r1, &released[..1]);
        drop(r2);
        r3.try_send(b"garbage", &[]).unwrap();
        assert!(pool.reap());
        assert_eq!(pool.orphans(), 1, "the one still holding a slot");
        let taken = |s: &Slot| pool.lock().segments[s.segment as usize].taken.contains_key(&(s.offset as usize));
        assert!(!taken(&released[0]) && taken(&released[1]));
        assert!(!taken(&died[0]) && !taken(&died[1]), "a closed channel frees all its slots");
        assert!(taken(&hostile[0]) && taken(&hostile[1]), "a hostile receiver's slots stay taken");
        release(&r1, &released[1..]);
        assert!(pool.reap());
        assert_eq!(pool.orphans(), 0);
        assert!(!taken(&released[1]));
    }

    /// Lent slots hold at most 3/4 of the cap, so frames from the heap still find room.
    #[test]
    fn lent_slots_leave_room_for_copies() {
        let pool = Pool::new(64 << 20);
        let held: Vec<_> = std::iter::from_fn(|| pool.lend(4 << 20)).collect();
        assert_eq!(held.len(), 12, "48 of 64 MiB");
        let mut a = Arena::new(pool.clone());
        assert!(a.put(&vec![1u8; 8 << 20], true).unwrap().is_some(), "a copy still fits");
        drop(held);
        assert_eq!(pool.lent(), 0);
    }

    /// Segments grow without the lock: threads lending at once never get overlapping slots,
    /// nor pass the cap or the lending share.
    #[test]
    fn concurrent_lending_stays_within_bounds() {
        let pool = Pool::new(64 << 20);
        let held: Vec<Lease> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| s.spawn(|| std::iter::from_fn(|| pool.lend(2 << 20)).take(50).collect::<Vec<_>>()))
                .collect();
            handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
        });
        let mut ranges: Vec<(usize, usize)> = held.iter().map(|l| (l.as_ptr() as usize, l.len())).collect();
        ranges.sort();
        assert!(ranges.windows(2).all(|w| w[0].0 + w[0].1 <= w[1].0), "no two leases overlap");
        assert!(pool.total() <= 64 << 20 && pool.lent() <= 48 << 20, "{} {}", pool.total(), pool.lent());
        assert_eq!(pool.lent(), held.len() * (2 << 20));
        drop(held);
        assert_eq!(pool.lent(), 0);
    }
}
