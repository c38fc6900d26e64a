//! Operations on chunked arrays, as task graphs: elementwise, reductions (tree), products,
//! transposes and rechunking.

use crate::array::{Block, ChunkedArray, Input, val};
use crate::chunks::Overlap;
use crate::kernels::{AssembleSpec, BinaryOp, CombineSpec, Float, ReduceOp, UnaryOp, names};
use crate::{ArrayError, Chunks};

/// Joins `parts` with `op` in a tree of at most `fan_in` parts per task; the last step scales
/// by `scale` and reshapes to `shape`.
pub(crate) fn tree(mut parts: Vec<Block>, op: ReduceOp, fan_in: usize, scale: f64, shape: Vec<usize>) -> Block {
    let fan_in = fan_in.max(2);
    while parts.len() > fan_in {
        parts = parts
            .chunks(fan_in)
            .map(|group| {
                if group.len() == 1 {
                    return group[0].clone();
                }
                // Intermediate steps keep the parts' shape: `shape` is applied at the end.
                combine_node(CombineSpec { op, scale: 1.0, shape: None }, group)
            })
            .collect();
    }
    combine_node(CombineSpec { op, scale, shape: Some(shape) }, &parts)
}

fn combine_node(spec: CombineSpec, parts: &[Block]) -> Block {
    let mut args = vec![val(&spec)];
    args.extend(parts.iter().cloned().map(Input::Block));
    Block::task(names::COMBINE, args)
}

/// All grid indices of `grid`, C order.
fn grid_indices(grid: &[usize]) -> impl Iterator<Item = Vec<usize>> + '_ {
    let total: usize = grid.iter().product();
    (0..total).map(move |mut linear| {
        let mut idx = vec![0; grid.len()];
        for (ax, &n) in grid.iter().enumerate().rev() {
            idx[ax] = linear % n;
            linear /= n;
        }
        idx
    })
}

impl<T: Float> ChunkedArray<T> {
    /// An elementwise function of this array.
    pub fn map(&self, op: UnaryOp) -> Self {
        let blocks = self.blocks.iter().map(|b| Block::task(names::UNARY, vec![val(&op), b.clone().into()])).collect();
        self.with_blocks(self.chunks.clone(), blocks)
    }

    /// `op(self, other)` elementwise; the arrays must have the same shape and chunks.
    pub fn zip(&self, op: BinaryOp, other: &ChunkedArray<T>) -> Result<Self, ArrayError> {
        if self.chunks != other.chunks {
            return Err(ArrayError::shape(format!(
                "arrays do not align: chunks {:?} and {:?} (rechunk one of them)",
                self.chunks.sizes(),
                other.chunks.sizes()
            )));
        }
        let blocks = self
            .blocks
            .iter()
            .zip(&other.blocks)
            .map(|(a, b)| Block::task(names::BINARY, vec![val(&op), a.clone().into(), b.clone().into()]))
            .collect();
        Ok(self.with_blocks(self.chunks.clone(), blocks))
    }

    /// `op(self, s)` elementwise.
    pub fn scalar(&self, op: BinaryOp, s: f64) -> Self {
        self.scalar_op(op, s, false)
    }

    /// `op(s, self)` elementwise.
    pub fn scalar_left(&self, op: BinaryOp, s: f64) -> Self {
        self.scalar_op(op, s, true)
    }

    fn scalar_op(&self, op: BinaryOp, s: f64, left: bool) -> Self {
        let blocks = self
            .blocks
            .iter()
            .map(|b| Block::task(names::SCALAR, vec![val(&op), b.clone().into(), val(&s), val(&left)]))
            .collect();
        self.with_blocks(self.chunks.clone(), blocks)
    }

    /// `self + other`.
    pub fn add(&self, other: &ChunkedArray<T>) -> Result<Self, ArrayError> {
        self.zip(BinaryOp::Add, other)
    }

    /// `self - other`.
    pub fn sub(&self, other: &ChunkedArray<T>) -> Result<Self, ArrayError> {
        self.zip(BinaryOp::Sub, other)
    }

    /// `self * other`, elementwise.
    pub fn mul(&self, other: &ChunkedArray<T>) -> Result<Self, ArrayError> {
        self.zip(BinaryOp::Mul, other)
    }

    /// `self / other`, elementwise.
    pub fn div(&self, other: &ChunkedArray<T>) -> Result<Self, ArrayError> {
        self.zip(BinaryOp::Div, other)
    }

    /// Reduces along `axes` (an empty list: along none; every axis: to a 0-d array) as a tree
    /// of [`with_fan_in`](Self::with_fan_in) parts per task. The result drops the reduced axes
    /// and keeps the chunks of the others.
    pub fn reduce(&self, op: ReduceOp, axes: &[usize]) -> Result<Self, ArrayError> {
        self.reduce_scaled(op, axes, 1.0)
    }

    fn reduce_scaled(&self, op: ReduceOp, axes: &[usize], scale: f64) -> Result<Self, ArrayError> {
        let mut sorted = axes.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        if sorted.len() != axes.len() || sorted.last().is_some_and(|&a| a >= self.ndim()) {
            return Err(ArrayError::shape(format!("{axes:?} are not distinct axes of a {}-d array", self.ndim())));
        }
        let out = self.chunks.without(&sorted);
        let grid = self.chunks.grid();
        // Blocks of one output block: those whose index agrees on every kept axis.
        let mut groups: Vec<Vec<Block>> = vec![Vec::new(); out.nblocks()];
        for (i, b) in self.blocks.iter().enumerate() {
            let idx = self.chunks.index(i);
            let kept: Vec<usize> =
                idx.iter().enumerate().filter(|(a, _)| !sorted.contains(a)).map(|(_, &x)| x).collect();
            let partial = Block::task(names::REDUCE, vec![val(&op), val(&sorted), b.clone().into()]);
            groups[out.linear(&kept)].push(partial);
        }
        debug_assert!(groups.iter().all(|g| g.len() == sorted.iter().map(|&a| grid[a]).product::<usize>()));
        let blocks = groups
            .into_iter()
            .enumerate()
            .map(|(i, parts)| tree(parts, op, self.fan_in, scale, out.block_shape(&out.index(i))))
            .collect();
        Ok(self.with_blocks(out, blocks))
    }

    /// Sum along `axes`.
    pub fn sum(&self, axes: &[usize]) -> Result<Self, ArrayError> {
        self.reduce(ReduceOp::Sum, axes)
    }

    /// Mean along `axes`.
    pub fn mean(&self, axes: &[usize]) -> Result<Self, ArrayError> {
        let shape = self.shape();
        let n: usize = axes.iter().filter_map(|&a| shape.get(a)).product();
        self.reduce_scaled(ReduceOp::Sum, axes, 1.0 / n as f64)
    }

    /// Maximum along `axes`.
    pub fn max(&self, axes: &[usize]) -> Result<Self, ArrayError> {
        self.reduce(ReduceOp::Max, axes)
    }

    /// Minimum along `axes`.
    pub fn min(&self, axes: &[usize]) -> Result<Self, ArrayError> {
        self.reduce(ReduceOp::Min, axes)
    }

    /// Every axis, `0..ndim`.
    pub fn all_axes(&self) -> Vec<usize> {
        (0..self.ndim()).collect()
    }

    /// The product of 1-d and 2-d arrays, as NumPy's `dot`: matrix × matrix, matrix × vector,
    /// vector × matrix, vector · vector (a 0-d array). The chunks of the contracted axes must
    /// agree (a row-chunked `X` of shape n × p times a one-block `v` of length p; or `Xᵀ`
    /// times a vector chunked like `X`'s rows). Each output block is a tree sum of block
    /// products; only the blocks a product needs move.
    pub fn dot(&self, other: &ChunkedArray<T>) -> Result<Self, ArrayError> {
        if !(1..=2).contains(&self.ndim()) || !(1..=2).contains(&other.ndim()) {
            return Err(ArrayError::shape(format!("dot of {}-d and {}-d arrays", self.ndim(), other.ndim())));
        }
        let (a, b) = (self.chunks.sizes(), other.chunks.sizes());
        let k = a.len() - 1;
        if a[k] != b[0] {
            return Err(ArrayError::shape(format!(
                "dot: the contracted axes are chunked differently ({:?} and {:?}); rechunk one of them",
                a[k], b[0]
            )));
        }
        let out = Chunks::from_sizes(a[..k].iter().chain(&b[1..]).cloned().collect())?;
        let kk = a[k].len();
        let blocks = grid_indices(&out.grid())
            .map(|idx| {
                let (i, j) = idx.split_at(k);
                let products: Vec<Block> = (0..kk)
                    .map(|c| {
                        let ia: Vec<usize> = i.iter().copied().chain([c]).collect();
                        let ib: Vec<usize> = [c].into_iter().chain(j.iter().copied()).collect();
                        let x = self.blocks[self.chunks.linear(&ia)].clone();
                        let y = other.blocks[other.chunks.linear(&ib)].clone();
                        Block::task(names::MATMUL, vec![x.into(), y.into()])
                    })
                    .collect();
                match <[Block; 1]>::try_from(products) {
                    Ok([only]) => only,
                    Err(products) => tree(products, ReduceOp::Sum, self.fan_in, 1.0, out.block_shape(&idx)),
                }
            })
            .collect();
        Ok(self.with_blocks(out, blocks))
    }

    /// The transpose (axes reversed).
    pub fn t(&self) -> Self {
        let axes: Vec<usize> = (0..self.ndim()).rev().collect();
        self.permute(&axes).unwrap_or_else(|_| self.clone())
    }

    /// The axes in the order `axes` (a permutation of `0..ndim`).
    pub fn permute(&self, axes: &[usize]) -> Result<Self, ArrayError> {
        let mut seen = vec![false; self.ndim()];
        if axes.len() != self.ndim() || axes.iter().any(|&a| a >= seen.len() || std::mem::replace(&mut seen[a], true)) {
            return Err(ArrayError::shape(format!("{axes:?} is not a permutation of {} axes", self.ndim())));
        }
        let out = self.chunks.permuted(axes);
        let blocks = grid_indices(&out.grid())
            .map(|j| {
                let mut i = vec![0; j.len()];
                for (k, &a) in axes.iter().enumerate() {
                    i[a] = j[k];
                }
                let b = self.blocks[self.chunks.linear(&i)].clone();
                Block::task(names::TRANSPOSE, vec![val(&axes.to_vec()), b.into()])
            })
            .collect();
        Ok(self.with_blocks(out, blocks))
    }

    /// The same array cut into chunks of `chunk`. Each output block is assembled on a worker
    /// from slices of the input blocks it overlaps, each slice cut where its input block lives:
    /// every byte moves between workers at most once.
    pub fn rechunk(&self, chunk: &[usize]) -> Result<Self, ArrayError> {
        let out = Chunks::regular(&self.shape(), chunk)?;
        if out == self.chunks {
            return Ok(self.clone());
        }
        let blocks = grid_indices(&out.grid())
            .map(|idx| {
                let ranges = out.block_ranges(&idx);
                let per_axis: Vec<Vec<Overlap>> =
                    ranges.iter().enumerate().map(|(ax, r)| self.chunks.overlaps(ax, r.clone())).collect();
                let counts: Vec<usize> = per_axis.iter().map(Vec::len).collect();
                let mut pieces = Vec::new();
                let mut offsets = Vec::new();
                let mut all_whole = true;
                for choice in grid_indices(&counts) {
                    let parts: Vec<&Overlap> = choice.iter().enumerate().map(|(ax, &c)| &per_axis[ax][c]).collect();
                    let src: Vec<usize> = parts.iter().map(|p| p.block).collect();
                    let block = self.blocks[self.chunks.linear(&src)].clone();
                    let whole = parts.iter().zip(self.chunks.block_shape(&src)).all(|(p, n)| p.within_block == (0..n));
                    all_whole &= whole;
                    pieces.push(if whole {
                        block
                    } else {
                        let r: Vec<(usize, usize)> =
                            parts.iter().map(|p| (p.within_block.start, p.within_block.end)).collect();
                        Block::task(names::SLICE, vec![val(&r), block.into()])
                    });
                    offsets.push(parts.iter().map(|p| p.within_range.start).collect::<Vec<usize>>());
                }
                if pieces.len() == 1 && all_whole {
                    // The output block is an input block.
                    return pieces.remove(0);
                }
                let shape = out.block_shape(&idx);
                let spec = AssembleSpec { dtype: T::KIND, shape, offsets };
                let mut args = vec![val(&spec)];
                args.extend(pieces.into_iter().map(Input::Block));
                Block::task(names::ASSEMBLE, args)
            })
            .collect();
        Ok(self.with_blocks(out, blocks))
    }
}
