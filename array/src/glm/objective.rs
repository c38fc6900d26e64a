//! Where the per-chunk work runs: on the cluster, next to persisted (or recomputed) chunks, or
//! in this thread on a whole `ndarray` (the single-threaded floor).

use std::future::Future;

use courier_core::ndarray::{Array1, Array2, s};
use courier_runtime::{Client, arg};

use super::model::{Eval, Evaluation, Family, chunk_sums};
use crate::array::{Block, ChunkedArray, val};
use crate::kernels::{Distribution, ReduceOp, block_seed, names};
use crate::ops::tree;
use crate::{ArrayError, Chunks};

/// The data term of a GLM: the mean loss of the rows at some coefficients, and its
/// derivatives. Solvers see the data only through this.
pub trait Objective {
    /// Number of coefficients.
    fn n_features(&self) -> usize;
    /// The mean loss (and derivatives, per `what`) at `beta`.
    fn evaluate(&mut self, beta: &[f64], what: Eval) -> impl Future<Output = Result<Evaluation, ArrayError>> + Send;
}

/// The single-threaded floor: the same per-chunk function on the whole matrix, in this thread.
#[derive(Debug, Clone)]
pub struct LocalObjective {
    family: Family,
    x: Array2<f64>,
    y: Array1<f64>,
    threads: usize,
}

impl LocalObjective {
    /// `x` (rows × features) and its labels `y`.
    pub fn new(family: Family, x: Array2<f64>, y: Array1<f64>) -> Result<Self, ArrayError> {
        if x.nrows() != y.len() || x.nrows() == 0 {
            return Err(ArrayError::shape(format!("{} rows with {} labels", x.nrows(), y.len())));
        }
        Ok(LocalObjective { family, x: x.as_standard_layout().into_owned(), y, threads: 1 })
    }

    /// Evaluates on `threads` threads, each on a contiguous share of the rows (scoped threads,
    /// sums added here): what this machine's cores can do with the same per-chunk function and
    /// no runtime at all, the limit a cluster on this host is compared to.
    pub fn with_threads(mut self, threads: usize) -> Self {
        self.threads = threads.clamp(1, self.x.nrows());
        self
    }

    /// The design matrix.
    pub fn x(&self) -> &Array2<f64> {
        &self.x
    }

    /// The labels.
    pub fn y(&self) -> &Array1<f64> {
        &self.y
    }
}

impl Objective for LocalObjective {
    fn n_features(&self) -> usize {
        self.x.ncols()
    }

    fn evaluate(&mut self, beta: &[f64], what: Eval) -> impl Future<Output = Result<Evaluation, ArrayError>> + Send {
        let (n, family) = (self.x.nrows(), self.family);
        let share = n.div_ceil(self.threads);
        let sums = if self.threads == 1 {
            chunk_sums(family, what, self.x.view(), self.y.view(), beta)
        } else {
            std::thread::scope(|s| {
                let parts: Vec<_> = (0..n)
                    .step_by(share)
                    .map(|lo| {
                        let hi = (lo + share).min(n);
                        let (x, y) = (self.x.slice(s![lo..hi, ..]), self.y.slice(s![lo..hi]));
                        s.spawn(move || chunk_sums(family, what, x, y, beta))
                    })
                    .collect();
                let mut total: Option<Vec<f64>> = None;
                for p in parts {
                    let part = p.join().map_err(|_| "an evaluation thread panicked".to_owned())??;
                    match &mut total {
                        Some(t) => t.iter_mut().zip(&part).for_each(|(a, b)| *a += b),
                        None => total = Some(part),
                    }
                }
                total.ok_or_else(|| "no rows".to_owned())
            })
        };
        let r = sums.and_then(|sums| Evaluation::from_sums(&sums, what, self.x.ncols(), n)).map_err(ArrayError::Data);
        std::future::ready(r)
    }
}

/// The cluster: one task per row chunk, on the worker holding the chunk of `x` (and of `y`,
/// made next to it), returning a vector of `1 + p (+ p²)` sums; the sums are joined in a tree
/// and only that small vector reaches the client. With persisted chunks an evaluation moves
/// nothing else; with lazy ones every evaluation recomputes the chunks first.
#[derive(Debug, Clone)]
pub struct ClusterObjective {
    family: Family,
    x: ChunkedArray<f64>,
    y: ChunkedArray<f64>,
}

impl ClusterObjective {
    /// `x`: rows × features chunked along rows only; `y`: its labels, chunked like its rows.
    pub fn new(family: Family, x: ChunkedArray<f64>, y: ChunkedArray<f64>) -> Result<Self, ArrayError> {
        let (xs, ys) = (x.chunks().sizes(), y.chunks().sizes());
        if xs.len() != 2 || ys.len() != 1 || xs[1].len() != 1 || xs[0] != ys[0] {
            return Err(ArrayError::shape(format!(
                "a GLM needs X chunked along rows only and y chunked like them; got {xs:?} and {ys:?}"
            )));
        }
        Ok(ClusterObjective { family, x, y })
    }

    /// The design matrix.
    pub fn x(&self) -> &ChunkedArray<f64> {
        &self.x
    }

    /// The labels.
    pub fn y(&self) -> &ChunkedArray<f64> {
        &self.y
    }
}

impl Objective for ClusterObjective {
    fn n_features(&self) -> usize {
        self.x.shape()[1]
    }

    fn evaluate(&mut self, beta: &[f64], what: Eval) -> impl Future<Output = Result<Evaluation, ArrayError>> + Send {
        let p = self.n_features();
        let n = self.x.shape()[0];
        let parts: Vec<Block> = self
            .x
            .blocks
            .iter()
            .zip(&self.y.blocks)
            .map(|(x, y)| {
                let args = vec![val(&self.family), val(&what), x.clone().into(), y.clone().into(), val(beta)];
                Block::task(names::GLM_SUMS, args)
            })
            .collect();
        let len = what.len(p);
        let sums = tree(parts, ReduceOp::Sum, self.x.fan_in, 1.0, vec![len]);
        let one = Chunks::from_sizes(vec![vec![len]]).map(|c| self.x.with_blocks(c, vec![sums]));
        async move {
            let sums = one?.compute().await?;
            let sums: Vec<f64> = sums.iter().copied().collect();
            Evaluation::from_sums(&sums, what, p, n).map_err(ArrayError::Data)
        }
    }
}

/// A synthetic GLM problem made on the workers: `X` of `rows × cols` standard normals, column
/// `j` scaled by `col_scale^(j / (cols − 1))` (a large scale makes the problem
/// ill-conditioned), cut into chunks of `chunk_rows` rows; labels drawn from the model with
/// coefficients `beta` (see [`synthetic_labels`](super::synthetic_labels)), each chunk of
/// `y` made from (and next to) its chunk of `X`. Lazy: persist both to keep them.
#[derive(Debug, Clone)]
pub struct Synthetic {
    /// Rows.
    pub rows: usize,
    /// Features.
    pub cols: usize,
    /// Rows per chunk.
    pub chunk_rows: usize,
    /// The model's family.
    pub family: Family,
    /// The true coefficients (length `cols`).
    pub beta: Vec<f64>,
    /// Noise of least-squares labels.
    pub noise: f64,
    /// Largest column scale (1: well conditioned).
    pub col_scale: f64,
    /// Seed of everything random.
    pub seed: u64,
}

impl Synthetic {
    /// `X` and `y`, lazy.
    pub fn build(&self, client: &Client) -> Result<(ChunkedArray<f64>, ChunkedArray<f64>), ArrayError> {
        if self.beta.len() != self.cols {
            return Err(ArrayError::shape(format!("{} coefficients for {} columns", self.beta.len(), self.cols)));
        }
        let x = ChunkedArray::<f64>::from_fn(
            client,
            &[self.rows, self.cols],
            &[self.chunk_rows, self.cols],
            names::GLM_DESIGN,
            vec![arg(&self.seed), arg(&self.col_scale)],
        )?;
        let blocks = x
            .blocks
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let seed = block_seed(self.seed ^ 0x5EED_1AB5, i as u64);
                let args = vec![val(&self.family), b.clone().into(), val(&self.beta), val(&self.noise), val(&seed)];
                Block::task(names::GLM_LABELS, args)
            })
            .collect();
        let y = x.with_blocks(Chunks::from_sizes(vec![x.chunks().sizes()[0].clone()])?, blocks);
        Ok((x, y))
    }

    /// The same data in this process (block for block what the workers make).
    pub fn local(&self) -> Result<LocalObjective, ArrayError> {
        let chunks = Chunks::regular(&[self.rows, self.cols], &[self.chunk_rows, self.cols])?;
        let mut x = Array2::<f64>::zeros((self.rows, self.cols));
        let mut y = Array1::<f64>::zeros(self.rows);
        for i in 0..chunks.nblocks() {
            let r = chunks.block_ranges(&chunks.index(i))[0].clone();
            let block = design_block(&[r.len(), self.cols], block_seed(self.seed, i as u64), self.col_scale)
                .map_err(ArrayError::Data)?;
            let seed = block_seed(self.seed ^ 0x5EED_1AB5, i as u64);
            let labels = super::model::synthetic_labels(self.family, block.view(), &self.beta, self.noise, seed)
                .map_err(ArrayError::Data)?;
            x.slice_mut(s![r.clone(), ..]).assign(&block);
            y.slice_mut(s![r]).assign(&labels);
        }
        LocalObjective::new(self.family, x, y)
    }
}

/// One chunk of a synthetic design matrix.
pub(crate) fn design_block(shape: &[usize], seed: u64, col_scale: f64) -> Result<Array2<f64>, String> {
    if !(col_scale.is_finite() && col_scale > 0.0) || shape.len() != 2 {
        return Err(format!("a design block of shape {shape:?} with column scale {col_scale}"));
    }
    let a = crate::kernels::random::<f64>(shape, seed, Distribution::Normal { mean: 0.0, std: 1.0 })?;
    let mut a = a.into_dimensionality::<courier_core::ndarray::Ix2>().map_err(|e| e.to_string())?;
    let p = shape[1];
    for (j, mut col) in a.columns_mut().into_iter().enumerate() {
        let s = if p > 1 { col_scale.powf(j as f64 / (p - 1) as f64) } else { 1.0 };
        col.mapv_inplace(|v| v * s);
    }
    Ok(a)
}
