//! The models: families, regularizers, and the per-chunk evaluation every solver is built on.

use courier_core::WireArray;
use courier_core::ndarray::{Array1, Array2, ArrayView1, ArrayView2, Axis, Ix1, Ix2};
use serde::{Deserialize, Serialize};

use crate::kernels::{Distribution, random, sigmoid};

/// The model family: the loss of one row `(x, y)` at coefficients `β`, with `z = x·β`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Family {
    /// Logistic regression, `y ∈ {0, 1}`: `log(1 + e^z) − y z`.
    Logistic,
    /// Least squares (linear regression): `(z − y)² / 2`.
    Normal,
}

/// A penalty added to the mean loss.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Regularizer {
    /// None.
    None,
    /// `λ ‖β‖² / 2` (ridge).
    L2(f64),
    /// `λ ‖β‖₁` (lasso): not smooth; only the proximal gradient method takes it.
    L1(f64),
}

impl Regularizer {
    /// The penalty at `beta`.
    pub fn value(self, beta: &[f64]) -> f64 {
        match self {
            Regularizer::None => 0.0,
            Regularizer::L2(l) => l * 0.5 * beta.iter().map(|b| b * b).sum::<f64>(),
            Regularizer::L1(l) => l * beta.iter().map(|b| b.abs()).sum::<f64>(),
        }
    }
}

/// What an evaluation computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Eval {
    /// The loss.
    Loss,
    /// Loss and gradient.
    Gradient,
    /// Loss, gradient and Hessian.
    Hessian,
}

impl Eval {
    /// Length of the packed sums `[loss, gradient…, Hessian (row-major)…]` for `p` features.
    pub(crate) fn len(self, p: usize) -> usize {
        match self {
            Eval::Loss => 1,
            Eval::Gradient => 1 + p,
            Eval::Hessian => 1 + p + p * p,
        }
    }
}

/// The mean loss (and derivatives) at some coefficients, without the penalty.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    /// Mean loss over the rows.
    pub loss: f64,
    /// Its gradient (with [`Eval::Gradient`] and [`Eval::Hessian`]).
    pub grad: Option<Array1<f64>>,
    /// Its Hessian (with [`Eval::Hessian`]).
    pub hess: Option<Array2<f64>>,
}

impl Evaluation {
    /// From the packed sums over `n` rows.
    pub(crate) fn from_sums(sums: &[f64], what: Eval, p: usize, n: usize) -> Result<Self, String> {
        if sums.len() != what.len(p) {
            return Err(format!("expected {} sums, got {}", what.len(p), sums.len()));
        }
        let n = n.max(1) as f64;
        let grad = (what != Eval::Loss).then(|| Array1::from_iter(sums[1..1 + p].iter().map(|g| g / n)));
        let hess = (what == Eval::Hessian).then(|| Array2::from_shape_fn((p, p), |(i, j)| sums[1 + p + i * p + j] / n));
        Ok(Evaluation { loss: sums[0] / n, grad, hess })
    }
}

/// `a · b` with eight independent sums: the additions pipeline and vectorize (one running
/// sum would wait on each addition's latency, which made this the whole cost of a pass).
fn dot(a: &[f64], b: &[f64]) -> f64 {
    let mut acc = [0.0f64; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    let tail: f64 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f64>() + tail
}

/// The packed sums `[loss, gradient…, Hessian…]` over the rows of one chunk: one pass over
/// `x` for the loss and gradient; the Hessian `xᵀ W x` as one matrix product. This is the
/// whole per-chunk work of every solver, run on the chunk's worker (and by the
/// single-threaded floor on the whole matrix).
pub fn chunk_sums(
    family: Family,
    what: Eval,
    x: ArrayView2<'_, f64>,
    y: ArrayView1<'_, f64>,
    beta: &[f64],
) -> Result<Vec<f64>, String> {
    let p = x.ncols();
    if beta.len() != p || y.len() != x.nrows() {
        return Err(format!("chunk {:?} with {} labels and {} coefficients", x.dim(), y.len(), beta.len()));
    }
    let mut loss = 0.0;
    let mut grad = vec![0.0; if what == Eval::Loss { 0 } else { p }];
    let mut weights = Vec::with_capacity(if what == Eval::Hessian { x.nrows() } else { 0 });
    let mut scratch = vec![0.0; p];
    for (row, &yi) in x.outer_iter().zip(y) {
        let r: &[f64] = match row.as_slice() {
            Some(r) => r,
            None => {
                scratch.iter_mut().zip(row).for_each(|(s, &a)| *s = a);
                &scratch
            }
        };
        let z = dot(r, beta);
        let (l, residual, w) = match family {
            Family::Logistic => {
                // One exponential gives both σ(z) and log(1 + e^z), without overflow.
                let e = (-z.abs()).exp();
                let s = if z >= 0.0 { 1.0 / (1.0 + e) } else { e / (1.0 + e) };
                (z.max(0.0) + e.ln_1p() - yi * z, s - yi, s * (1.0 - s))
            }
            Family::Normal => (0.5 * (z - yi) * (z - yi), z - yi, 1.0),
        };
        loss += l;
        grad.iter_mut().zip(r).for_each(|(g, a)| *g += residual * a);
        if what == Eval::Hessian {
            weights.push(w.sqrt());
        }
    }
    let mut out = Vec::with_capacity(what.len(p));
    out.push(loss);
    out.extend_from_slice(&grad);
    if what == Eval::Hessian {
        let w = ArrayView1::from(&weights);
        let xw = &x * &w.insert_axis(Axis(1));
        out.extend(xw.t().dot(&xw).iter());
    }
    Ok(out)
}

/// `chunk_sums` on blocks as they arrive from the wire.
pub(crate) fn chunk_sums_wire(
    family: Family,
    what: Eval,
    x: &WireArray,
    y: &WireArray,
    beta: &[f64],
) -> Result<WireArray, String> {
    let x = x.cow::<f64>().map_err(|e| e.to_string())?;
    let y = y.cow::<f64>().map_err(|e| e.to_string())?;
    let x = x.view().into_dimensionality::<Ix2>().map_err(|e| format!("X chunk: {e}"))?;
    let y = y.view().into_dimensionality::<Ix1>().map_err(|e| format!("y chunk: {e}"))?;
    Ok(WireArray::from_array(Array1::from(chunk_sums(family, what, x, y, beta)?).into_dyn()))
}

/// Labels for the rows of `x` under the model `beta`: Bernoulli(σ(xβ)) for logistic
/// regression, `xβ + noise · N(0, 1)` for least squares, drawn from `seed`.
pub fn synthetic_labels(
    family: Family,
    x: ArrayView2<'_, f64>,
    beta: &[f64],
    noise: f64,
    seed: u64,
) -> Result<Array1<f64>, String> {
    if beta.len() != x.ncols() {
        return Err(format!("{} coefficients for {} columns", beta.len(), x.ncols()));
    }
    let b = ArrayView1::from(beta);
    let z = x.dot(&b);
    let n = x.nrows();
    Ok(match family {
        Family::Logistic => {
            let u = random::<f64>(&[n], seed, Distribution::Uniform { low: 0.0, high: 1.0 })?;
            Array1::from_iter(z.iter().zip(&u).map(|(&z, &u)| if u < sigmoid(z) { 1.0 } else { 0.0 }))
        }
        Family::Normal => {
            let e = random::<f64>(&[n], seed, Distribution::Normal { mean: 0.0, std: 1.0 })?;
            Array1::from_iter(z.iter().zip(&e).map(|(&z, &e)| z + noise * e))
        }
    })
}
