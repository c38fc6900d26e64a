//! Independent single-process references the solvers are validated against: written plainly
//! (row loops, the normal equations, a dense Newton iteration), sharing no code with the
//! per-chunk evaluation the solvers use, except the Cholesky solve.

use courier_core::ndarray::{Array1, Array2, ArrayView1, ArrayView2};

use super::model::Family;
use super::solvers::cholesky_solve;

/// Least squares with an L2 weight `lambda` on the mean loss: the normal equations
/// `(XᵀX / n + λI) β = Xᵀy / n`.
pub fn least_squares(x: ArrayView2<'_, f64>, y: ArrayView1<'_, f64>, lambda: f64) -> Option<Array1<f64>> {
    let n = x.nrows() as f64;
    let mut a = x.t().dot(&x) / n;
    a.diag_mut().mapv_inplace(|d| d + lambda);
    let b = x.t().dot(&y) / n;
    cholesky_solve(&a, &b)
}

/// The gradient of the mean loss of `family` at `beta`, row by row.
pub fn gradient(family: Family, x: ArrayView2<'_, f64>, y: ArrayView1<'_, f64>, beta: &[f64]) -> Array1<f64> {
    let mut g = Array1::<f64>::zeros(x.ncols());
    for (row, &yi) in x.rows().into_iter().zip(y) {
        let z: f64 = row.iter().zip(beta).map(|(a, b)| a * b).sum();
        let r = match family {
            Family::Logistic => 1.0 / (1.0 + (-z).exp()) - yi,
            Family::Normal => z - yi,
        };
        g.scaled_add(r, &row);
    }
    g / x.nrows() as f64
}

/// Logistic regression with an L2 weight `lambda` by a dense Newton iteration (IRLS) on the
/// whole matrix, to a gradient below 1e-12.
pub fn logistic(x: ArrayView2<'_, f64>, y: ArrayView1<'_, f64>, lambda: f64) -> Option<Array1<f64>> {
    let (n, p) = x.dim();
    let mut beta = Array1::<f64>::zeros(p);
    for _ in 0..100 {
        let mut g = gradient(Family::Logistic, x, y, beta.as_slice()?);
        g.scaled_add(lambda, &beta);
        if g.iter().all(|v| v.abs() < 1e-12) {
            return Some(beta);
        }
        let mut h = Array2::<f64>::zeros((p, p));
        for row in x.rows() {
            let z = row.dot(&beta);
            let s = 1.0 / (1.0 + (-z).exp());
            let w = s * (1.0 - s) / n as f64;
            for i in 0..p {
                for j in 0..p {
                    h[[i, j]] += w * row[i] * row[j];
                }
            }
        }
        h.diag_mut().mapv_inplace(|d| d + lambda);
        beta = &beta - &cholesky_solve(&h, &g)?;
    }
    None
}

/// How far `beta` is from optimal for the mean loss plus `lambda ‖β‖₁` (the KKT conditions):
/// the largest of `|g_j + λ sign β_j|` over nonzero `β_j` and `max(|g_j| − λ, 0)` over zero
/// ones, with `g` the loss gradient ([`gradient`]).
pub fn l1_kkt_residual(
    family: Family,
    x: ArrayView2<'_, f64>,
    y: ArrayView1<'_, f64>,
    beta: &[f64],
    lambda: f64,
) -> f64 {
    let g = gradient(family, x, y, beta);
    g.iter()
        .zip(beta)
        .map(|(&g, &b)| if b != 0.0 { (g + lambda * b.signum()).abs() } else { (g.abs() - lambda).max(0.0) })
        .fold(0.0, f64::max)
}
