//! What the echo phase sends: every message's bytes are unique to its run, comm and sequence
//! number, so a frame delivered to the wrong comm, a stale buffer or a reordering is caught,
//! not just a flipped bit.

use bytes::Bytes;

/// The header of every echo message: run seed, comm, sequence number, frame length.
pub(crate) const HEADER_LEN: usize = 24;

/// Identifies one message of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Id {
    pub(crate) seed: u64,
    pub(crate) comm: u32,
    pub(crate) seq: u32,
}

impl Id {
    /// The header announcing this message with a frame of `len` bytes.
    pub(crate) fn header(self, len: usize) -> Bytes {
        let mut h = Vec::with_capacity(HEADER_LEN);
        h.extend_from_slice(&self.seed.to_le_bytes());
        h.extend_from_slice(&self.comm.to_le_bytes());
        h.extend_from_slice(&self.seq.to_le_bytes());
        h.extend_from_slice(&(len as u64).to_le_bytes());
        h.into()
    }

    /// Parses a header; `None` if it is not one.
    pub(crate) fn parse(h: &[u8]) -> Option<(Id, usize)> {
        if h.len() != HEADER_LEN {
            return None;
        }
        let u64_at = |i: usize| u64::from_le_bytes(h[i..i + 8].try_into().expect("8 bytes"));
        let u32_at = |i: usize| u32::from_le_bytes(h[i..i + 4].try_into().expect("4 bytes"));
        let id = Id { seed: u64_at(0), comm: u32_at(8), seq: u32_at(12) };
        Some((id, usize::try_from(u64_at(16)).ok()?))
    }

    fn rng(self) -> fastrand::Rng {
        // SplitMix-style mixing so neighbouring ids give unrelated streams.
        let mut z = self.seed ^ (u64::from(self.comm) << 32 | u64::from(self.seq)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        fastrand::Rng::with_seed(z ^ (z >> 31))
    }

    /// The frame's length for this message: mostly small, some large, up to 64 MiB.
    pub(crate) fn size(self, large: bool) -> usize {
        let mut rng = self.rng();
        match rng.u8(..10) {
            0 if large => rng.usize(8 << 20..=64 << 20),
            1 | 2 => rng.usize(64 << 10..8 << 20),
            _ => rng.usize(0..4096),
        }
    }

    /// The frame's bytes: a stream only this id produces.
    pub(crate) fn content(self, len: usize) -> Bytes {
        let mut data = vec![0u8; len];
        let mut rng = self.rng();
        rng.u64(..); // the size draw is independent of the bytes
        rng.fill(&mut data);
        data.into()
    }

    /// True when `frame` is exactly this message's content.
    pub(crate) fn matches(self, frame: &[u8]) -> bool {
        *frame == *self.content(frame.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_depends_on_every_part_of_the_id() {
        let id = Id { seed: 1, comm: 2, seq: 3 };
        let data = id.content(1000);
        assert!(id.matches(&data));
        for other in [Id { seed: 2, ..id }, Id { comm: 3, ..id }, Id { seq: 4, ..id }] {
            assert!(!other.matches(&data), "{other:?}");
        }
        let (parsed, len) = Id::parse(&id.header(1000)).unwrap();
        assert_eq!((parsed, len), (id, 1000));
        assert!(Id::parse(b"short").is_none());
    }
}
