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

/// Most entries a [`SortedSet`] keeps in a vector; one more and it becomes a B-tree.
const SORTED_SMALL_MAX: usize = 64;
/// A [`SortedSet`] that has become a B-tree goes back to a vector below this many entries.
const SORTED_SMALL_BACK: usize = 32;

/// An ordered set of small `Copy` entries (the scheduler's workers by load): a sorted vector
/// while it has at most [`SORTED_SMALL_MAX`] entries, a B-tree past that. A change of a small
/// set is a binary search and a `memmove` of at most 64 entries, with no node to walk or
/// allocate; a large one costs O(log n) however many entries there are. A worker's load
/// changes twice per task, and most clusters have few workers.
#[derive(Debug, Clone)]
pub(crate) enum SortedSet<T> {
    Small(Vec<T>),
    Large(std::collections::BTreeSet<T>),
}

impl<T> Default for SortedSet<T> {
    fn default() -> Self {
        SortedSet::Small(Vec::new())
    }
}

/// The entries of a [`SortedSet`] in order (or a range of them).
pub(crate) enum SortedIter<'a, T> {
    Small(std::slice::Iter<'a, T>),
    Large(std::collections::btree_set::Range<'a, T>),
}

impl<'a, T> Iterator for SortedIter<'a, T> {
    type Item = &'a T;

    fn next(&mut self) -> Option<&'a T> {
        match self {
            SortedIter::Small(i) => i.next(),
            SortedIter::Large(i) => i.next(),
        }
    }
}

impl<T> DoubleEndedIterator for SortedIter<'_, T> {
    fn next_back(&mut self) -> Option<Self::Item> {
        match self {
            SortedIter::Small(i) => i.next_back(),
            SortedIter::Large(i) => i.next_back(),
        }
    }
}

impl<T: Ord + Copy> SortedSet<T> {
    /// Adds `x`; false if it was there already.
    pub(crate) fn insert(&mut self, x: T) -> bool {
        match self {
            SortedSet::Small(v) => match v.binary_search(&x) {
                Ok(_) => false,
                Err(at) => {
                    if v.len() < SORTED_SMALL_MAX {
                        v.insert(at, x);
                    } else {
                        let mut tree: std::collections::BTreeSet<T> = v.iter().copied().collect();
                        tree.insert(x);
                        *self = SortedSet::Large(tree);
                    }
                    true
                }
            },
            SortedSet::Large(t) => t.insert(x),
        }
    }

    /// Removes `x`; false if it was not there.
    pub(crate) fn remove(&mut self, x: &T) -> bool {
        match self {
            SortedSet::Small(v) => match v.binary_search(x) {
                Ok(at) => {
                    v.remove(at);
                    true
                }
                Err(_) => false,
            },
            SortedSet::Large(t) => {
                let removed = t.remove(x);
                if t.len() < SORTED_SMALL_BACK {
                    *self = SortedSet::Small(t.iter().copied().collect());
                }
                removed
            }
        }
    }

    pub(crate) fn contains(&self, x: &T) -> bool {
        match self {
            SortedSet::Small(v) => v.binary_search(x).is_ok(),
            SortedSet::Large(t) => t.contains(x),
        }
    }

    pub(crate) fn len(&self) -> usize {
        match self {
            SortedSet::Small(v) => v.len(),
            SortedSet::Large(t) => t.len(),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The smallest entry.
    pub(crate) fn first(&self) -> Option<&T> {
        match self {
            SortedSet::Small(v) => v.first(),
            SortedSet::Large(t) => t.first(),
        }
    }

    /// Every entry, smallest first.
    pub(crate) fn iter(&self) -> SortedIter<'_, T> {
        match self {
            SortedSet::Small(v) => SortedIter::Small(v.iter()),
            SortedSet::Large(t) => SortedIter::Large(t.range(..)),
        }
    }

    /// The entries from `from` on (it included), smallest first.
    pub(crate) fn iter_from(&self, from: &T) -> SortedIter<'_, T> {
        match self {
            SortedSet::Small(v) => SortedIter::Small(v[v.partition_point(|x| x < from)..].iter()),
            SortedSet::Large(t) => SortedIter::Large(t.range(from..)),
        }
    }
}

#[cfg(test)]
mod sorted_set_tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::SortedSet;

    proptest! {
        /// Any sequence of inserts and removes leaves a `SortedSet` equal to a `BTreeSet` given
        /// the same sequence, through growing into a B-tree and shrinking back: same answers,
        /// same contents in order, forwards, backwards and from any entry on.
        #[test]
        fn behaves_as_a_btree_set(ops in proptest::collection::vec((any::<bool>(), 0u16..200), 0..600), probe in 0u16..200) {
            let (mut ours, mut model) = (SortedSet::default(), BTreeSet::new());
            for (insert, x) in ops {
                if insert {
                    prop_assert_eq!(ours.insert(x), model.insert(x));
                } else {
                    prop_assert_eq!(ours.remove(&x), model.remove(&x));
                }
                prop_assert_eq!(ours.len(), model.len());
                prop_assert_eq!(ours.contains(&x), model.contains(&x));
            }
            prop_assert!(ours.iter().eq(model.iter()));
            prop_assert!(ours.iter().rev().eq(model.iter().rev()));
            prop_assert!(ours.iter_from(&probe).eq(model.range(probe..)));
            prop_assert_eq!(ours.first(), model.first());
            prop_assert_eq!(ours.is_empty(), model.is_empty());
        }
    }

    /// A set grows into a B-tree past 64 entries and goes back to a vector below 32.
    #[test]
    fn switches_representation_with_hysteresis() {
        let mut s = SortedSet::default();
        for x in 0..65u32 {
            s.insert(x);
        }
        assert!(matches!(s, SortedSet::Large(_)), "65 entries");
        for x in 0..33u32 {
            s.remove(&x);
        }
        assert!(matches!(s, SortedSet::Large(_)), "32 entries: not yet");
        s.remove(&33);
        assert!(matches!(s, SortedSet::Small(_)), "31 entries");
        assert!(s.iter().copied().eq(34..65));
    }
}
