//! How an array is cut into blocks: per axis, the lengths of its chunks.

use std::ops::Range;

use crate::ArrayError;

/// Where a block of one axis overlaps a range of that axis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Overlap {
    /// The block's index along the axis.
    pub(crate) block: usize,
    /// The overlap, in the block's coordinates.
    pub(crate) within_block: Range<usize>,
    /// The overlap, relative to the start of the range.
    pub(crate) within_range: Range<usize>,
}

/// The chunking of an n-d array: for each axis, the lengths of its chunks, in order. A regular
/// chunking ([`Chunks::regular`]) has equal chunks with a ragged last one.
///
/// Blocks are numbered in C order over the block grid (the last axis varies fastest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunks {
    sizes: Vec<Vec<usize>>,
}

impl Chunks {
    /// `shape` cut into chunks of `chunk` (the last chunk of an axis may be shorter). Every
    /// length must be at least 1 and the ranks must agree.
    pub fn regular(shape: &[usize], chunk: &[usize]) -> Result<Self, ArrayError> {
        if shape.len() != chunk.len() {
            return Err(ArrayError::shape(format!("chunk shape {chunk:?} does not match the rank of {shape:?}")));
        }
        let mut sizes = Vec::with_capacity(shape.len());
        for (&n, &c) in shape.iter().zip(chunk) {
            if n == 0 || c == 0 {
                return Err(ArrayError::shape(format!(
                    "shape {shape:?} with chunks {chunk:?}: every length must be at least 1"
                )));
            }
            let c = c.min(n);
            let mut axis = vec![c; n / c];
            if n % c != 0 {
                axis.push(n % c);
            }
            sizes.push(axis);
        }
        Ok(Chunks { sizes })
    }

    /// Chunk lengths given per axis; none may be 0.
    pub fn from_sizes(sizes: Vec<Vec<usize>>) -> Result<Self, ArrayError> {
        if sizes.iter().any(|axis| axis.is_empty() || axis.contains(&0)) {
            return Err(ArrayError::shape(format!("chunk lengths {sizes:?}: every axis needs chunks of length ≥ 1")));
        }
        Ok(Chunks { sizes })
    }

    /// The chunk lengths of each axis.
    pub fn sizes(&self) -> &[Vec<usize>] {
        &self.sizes
    }

    /// The array's shape.
    pub fn shape(&self) -> Vec<usize> {
        self.sizes.iter().map(|axis| axis.iter().sum()).collect()
    }

    /// The rank.
    pub fn ndim(&self) -> usize {
        self.sizes.len()
    }

    /// Blocks along each axis.
    pub fn grid(&self) -> Vec<usize> {
        self.sizes.iter().map(Vec::len).collect()
    }

    /// Number of blocks.
    pub fn nblocks(&self) -> usize {
        self.sizes.iter().map(Vec::len).product()
    }

    /// The block numbered `linear` (C order) as a grid index.
    pub fn index(&self, mut linear: usize) -> Vec<usize> {
        let mut idx = vec![0; self.ndim()];
        for (axis, sizes) in self.sizes.iter().enumerate().rev() {
            idx[axis] = linear % sizes.len();
            linear /= sizes.len();
        }
        idx
    }

    /// The number (C order) of the block at grid index `idx`.
    pub fn linear(&self, idx: &[usize]) -> usize {
        idx.iter().zip(&self.sizes).fold(0, |acc, (&i, sizes)| acc * sizes.len() + i)
    }

    /// The shape of the block at `idx`.
    pub fn block_shape(&self, idx: &[usize]) -> Vec<usize> {
        idx.iter().zip(&self.sizes).map(|(&i, sizes)| sizes[i]).collect()
    }

    /// The ranges of the array that the block at `idx` covers.
    pub fn block_ranges(&self, idx: &[usize]) -> Vec<Range<usize>> {
        idx.iter()
            .zip(&self.sizes)
            .map(|(&i, sizes)| {
                let start: usize = sizes[..i].iter().sum();
                start..start + sizes[i]
            })
            .collect()
    }

    /// The blocks of one axis that overlap `range` of it, with the overlap in block
    /// coordinates.
    pub(crate) fn overlaps(&self, axis: usize, range: Range<usize>) -> Vec<Overlap> {
        let mut out = Vec::new();
        let mut start = 0;
        for (b, &len) in self.sizes[axis].iter().enumerate() {
            let end = start + len;
            let lo = start.max(range.start);
            let hi = end.min(range.end);
            if lo < hi {
                out.push(Overlap {
                    block: b,
                    within_block: lo - start..hi - start,
                    within_range: lo - range.start..hi - range.start,
                });
            }
            start = end;
        }
        out
    }

    /// The chunking with axes in the order `axes` (a permutation).
    pub(crate) fn permuted(&self, axes: &[usize]) -> Chunks {
        Chunks { sizes: axes.iter().map(|&a| self.sizes[a].clone()).collect() }
    }

    /// The chunking without the axes in `drop`.
    pub(crate) fn without(&self, drop: &[usize]) -> Chunks {
        Chunks {
            sizes: self.sizes.iter().enumerate().filter(|(a, _)| !drop.contains(a)).map(|(_, s)| s.clone()).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn regular_chunks_are_ragged_at_the_end_only() {
        let c = Chunks::regular(&[10, 4], &[3, 4]).unwrap();
        assert_eq!(c.sizes(), &[vec![3, 3, 3, 1], vec![4]]);
        assert_eq!(c.grid(), vec![4, 1]);
        assert_eq!(c.block_ranges(&[3, 0]), vec![9..10, 0..4]);
        assert_eq!(Chunks::regular(&[5], &[9]).unwrap().sizes(), &[vec![5]]);
        assert!(Chunks::regular(&[0], &[1]).is_err());
        assert!(Chunks::regular(&[3], &[0]).is_err());
        assert!(Chunks::regular(&[3, 3], &[1]).is_err());
        let scalar = Chunks::regular(&[], &[]).unwrap();
        assert_eq!((scalar.nblocks(), scalar.shape()), (1, vec![]));
    }

    #[test]
    fn overlaps_cover_a_range_exactly() {
        let c = Chunks::regular(&[10], &[4]).unwrap();
        let o = |block, within_block, within_range| Overlap { block, within_block, within_range };
        assert_eq!(c.overlaps(0, 3..9), vec![o(0, 3..4, 0..1), o(1, 0..4, 1..5), o(2, 0..1, 5..6)]);
    }

    proptest! {
        #[test]
        fn linear_and_grid_indices_round_trip(shape in prop::collection::vec(1usize..9, 0..4), seed in any::<u64>()) {
            let mut rng = fastrand::Rng::with_seed(seed);
            let chunk: Vec<usize> = shape.iter().map(|&n| rng.usize(1..=n)).collect();
            let c = Chunks::regular(&shape, &chunk).unwrap();
            prop_assert_eq!(c.shape(), shape.clone());
            let mut covered = 0;
            for i in 0..c.nblocks() {
                let idx = c.index(i);
                prop_assert_eq!(c.linear(&idx), i);
                covered += c.block_shape(&idx).iter().product::<usize>();
            }
            prop_assert_eq!(covered, shape.iter().product::<usize>());
        }
    }
}
