//! Hash maps for the state machines: aHash, randomly keyed (designed to resist peers choosing
//! colliding keys, and several times faster than SipHash on short keys) in production,
//! fixed-keyed inside the simulator so that a seed replays exactly.

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;

thread_local! {
    static DETERMINISTIC: Cell<bool> = const { Cell::new(false) };
    /// This thread's random keys, drawn once. Making keys costs ~150 instructions
    /// (`RandomState::new`), and the scheduler makes a set for every task it is sent; copying
    /// them costs four words. A peer learns nothing of the keys either way.
    static KEYS: ahash::RandomState = ahash::RandomState::new();
}

/// aHash with random keys, or with fixed keys while [`Deterministic`] is in force on this
/// thread (iteration order then depends only on what was inserted).
#[derive(Clone, Debug)]
pub(crate) struct Hashing(ahash::RandomState);

impl Default for Hashing {
    fn default() -> Self {
        if DETERMINISTIC.with(Cell::get) {
            Hashing(ahash::RandomState::with_seeds(1, 2, 3, 4))
        } else {
            Hashing(KEYS.with(Clone::clone))
        }
    }
}

impl BuildHasher for Hashing {
    type Hasher = ahash::AHasher;

    fn build_hasher(&self) -> ahash::AHasher {
        self.0.build_hasher()
    }
}

pub(crate) type Map<K, V> = HashMap<K, V, Hashing>;
pub(crate) type Set<K> = HashSet<K, Hashing>;

/// While alive, maps created on this thread hash deterministically.
#[derive(Debug)]
pub(crate) struct Deterministic {
    previous: bool,
}

impl Deterministic {
    pub(crate) fn enter() -> Self {
        Deterministic { previous: DETERMINISTIC.with(|d| d.replace(true)) }
    }
}

impl Drop for Deterministic {
    fn drop(&mut self) {
        DETERMINISTIC.with(|d| d.set(self.previous));
    }
}

/// The most elements a vector handed back to [`reuse_vec`] may have room for.
const REUSE_MAX: usize = 4096;

/// Keeps `used`, emptied, in `slot` for the next round of pushes, when `slot` has no
/// allocation of its own and `used` has not grown past [`REUSE_MAX`] (a state machine's output
/// vector: one allocation per event otherwise).
pub(crate) fn reuse_vec<T>(slot: &mut Vec<T>, mut used: Vec<T>) {
    used.clear();
    if slot.capacity() == 0 && used.capacity() <= REUSE_MAX {
        *slot = used;
    }
}

/// Gives memory back when a map has shrunk to a small fraction of its capacity.
pub(crate) fn shrink_map<K: Eq + std::hash::Hash, V>(m: &mut Map<K, V>) {
    if m.capacity() > 1024 && m.len() < m.capacity() / 8 {
        m.shrink_to(m.len() * 2);
    }
}

/// Gives memory back when a set has shrunk to a small fraction of its capacity.
pub(crate) fn shrink_set<K: Eq + std::hash::Hash>(s: &mut Set<K>) {
    if s.capacity() > 1024 && s.len() < s.capacity() / 8 {
        s.shrink_to(s.len() * 2);
    }
}
