//! The solvers: proximal (accelerated) gradient descent with backtracking line search,
//! Newton's method with a damped line search, and L-BFGS. Each is generic over
//! [`Objective`], so one algorithm runs in this thread or on a cluster unchanged.

use courier_core::ndarray::{Array1, Array2};

use super::model::{Eval, Evaluation, Regularizer};
use super::objective::Objective;
use crate::ArrayError;

/// Which solver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Solver {
    /// Accelerated proximal gradient descent (FISTA with backtracking and adaptive restart):
    /// takes L1 and L2.
    GradientDescent,
    /// Newton's method with a backtracking line search: L2 (or none) only.
    Newton,
    /// Limited-memory BFGS (10 pairs) with a backtracking line search: L2 (or none) only.
    Lbfgs,
}

/// When to stop.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// At most this many iterations.
    pub max_iter: usize,
    /// Converged when the largest component of the gradient (for L1: of the proximal gradient
    /// mapping) is at most this.
    pub tol: f64,
}

impl Default for Options {
    fn default() -> Self {
        Options { max_iter: 500, tol: 1e-8 }
    }
}

/// A solver's result.
#[derive(Debug, Clone)]
pub struct Fit {
    /// The coefficients.
    pub beta: Vec<f64>,
    /// Iterations run.
    pub iterations: usize,
    /// Evaluations of the objective (each one pass over the data).
    pub evaluations: usize,
    /// True when the tolerance was met.
    pub converged: bool,
    /// Mean loss plus penalty at `beta`.
    pub objective: f64,
    /// The gradient's (or gradient mapping's) largest component at the end.
    pub grad_norm: f64,
    /// The objective after each iteration.
    pub history: Vec<f64>,
}

impl Fit {
    /// A result at `beta`, converged when `grad_norm` is within `tol`.
    fn at(
        beta: &Array1<f64>,
        iterations: usize,
        evaluations: usize,
        objective: f64,
        grad_norm: f64,
        tol: f64,
        history: Vec<f64>,
    ) -> Fit {
        Fit { beta: beta.to_vec(), iterations, evaluations, converged: grad_norm <= tol, objective, grad_norm, history }
    }
}

/// Fits with `solver`.
pub async fn fit<O: Objective>(
    obj: &mut O,
    solver: Solver,
    reg: Regularizer,
    opts: Options,
) -> Result<Fit, ArrayError> {
    match solver {
        Solver::GradientDescent => proximal_gradient(obj, reg, opts).await,
        Solver::Newton => newton(obj, reg, opts).await,
        Solver::Lbfgs => lbfgs(obj, reg, opts).await,
    }
}

/// What a loss of about `loss` may differ by from rounding alone (sums over many rows, joined
/// in a different order): line searches do not ask for decreases smaller than this.
fn noise(loss: f64) -> f64 {
    1e-10 * loss.abs().max(1e-300)
}

fn inf_norm(v: &Array1<f64>) -> f64 {
    v.iter().fold(0.0, |m, x| m.max(x.abs()))
}

/// Counts evaluations and adds the smooth part of the penalty.
struct Counted<'a, O> {
    obj: &'a mut O,
    l2: f64,
    evaluations: usize,
}

impl<O: Objective> Counted<'_, O> {
    async fn eval(&mut self, beta: &Array1<f64>, what: Eval) -> Result<Evaluation, ArrayError> {
        self.evaluations += 1;
        let b = beta.as_slice().ok_or_else(|| ArrayError::Data("coefficients not contiguous".into()))?;
        let mut e = self.obj.evaluate(b, what).await?;
        if !e.loss.is_finite() {
            return Err(ArrayError::Data(format!("the loss is {} at {beta}", e.loss)));
        }
        if self.l2 > 0.0 {
            e.loss += 0.5 * self.l2 * beta.dot(beta);
            if let Some(g) = &mut e.grad {
                g.scaled_add(self.l2, beta);
            }
            if let Some(h) = &mut e.hess {
                h.diag_mut().mapv_inplace(|d| d + self.l2);
            }
        }
        Ok(e)
    }
}

fn smooth_only(reg: Regularizer, solver: &str) -> Result<f64, ArrayError> {
    match reg {
        Regularizer::None => Ok(0.0),
        Regularizer::L2(l) if l >= 0.0 && l.is_finite() => Ok(l),
        Regularizer::L2(l) => Err(ArrayError::Data(format!("L2 weight {l} is not a non-negative number"))),
        Regularizer::L1(_) => {
            Err(ArrayError::Data(format!("{solver} needs a smooth objective; use gradient descent (proximal) for L1")))
        }
    }
}

fn soft_threshold(v: &Array1<f64>, t: f64) -> Array1<f64> {
    v.mapv(|x| x.signum() * (x.abs() - t).max(0.0))
}

/// Accelerated proximal gradient descent (FISTA) with backtracking on the Lipschitz estimate
/// (tried 0.8× smaller each iteration, doubled until the secant condition holds) and restart
/// whenever the momentum points uphill. L2 is part of the smooth term; L1 is the
/// proximal step (soft thresholding).
pub async fn proximal_gradient<O: Objective>(obj: &mut O, reg: Regularizer, opts: Options) -> Result<Fit, ArrayError> {
    let (l2, l1) = match reg {
        Regularizer::L1(l) if l >= 0.0 && l.is_finite() => (0.0, l),
        Regularizer::L1(l) => return Err(ArrayError::Data(format!("L1 weight {l} is not a non-negative number"))),
        smooth => (smooth_only(smooth, "gradient descent")?, 0.0),
    };
    let p = obj.n_features();
    let mut f = Counted { obj, l2, evaluations: 0 };
    let mut x = Array1::<f64>::zeros(p);
    let mut y = x.clone();
    let mut t = 1.0f64;
    let mut lip = 1.0f64;
    let mut history = Vec::new();
    let mut last = f64::INFINITY;
    let mut grad_norm = f64::INFINITY;
    for it in 1..=opts.max_iter {
        let at_y = f.eval(&y, Eval::Gradient).await?;
        let g = at_y.grad.ok_or_else(|| ArrayError::Data("no gradient".into()))?;
        lip *= 0.8;
        let (x_new, f_new, _) = loop {
            let cand = soft_threshold(&(&y - &(&g / lip)), l1 / lip);
            let d = &cand - &y;
            let at_cand = f.eval(&cand, Eval::Gradient).await?;
            let g_cand = at_cand.grad.ok_or_else(|| ArrayError::Data("no gradient".into()))?;
            // The secant estimate of the gradient's Lipschitz constant along the step. It bounds
            // the loss by the descent lemma along the step (exactly for least squares) and,
            // unlike a test on loss values, stays exact where the loss changes by less than its
            // rounding error.
            let dg = &g_cand - &g;
            if dg.dot(&dg).sqrt() <= lip * d.dot(&d).sqrt() {
                break (cand, at_cand.loss, g_cand);
            }
            lip *= 2.0;
            if !lip.is_finite() {
                return Err(ArrayError::Data("the line search diverged".into()));
            }
        };
        grad_norm = inf_norm(&((&y - &x_new) * lip));
        let objective = f_new + l1 * x_new.iter().map(|v| v.abs()).sum::<f64>();
        history.push(objective);
        if grad_norm <= opts.tol {
            return Ok(Fit::at(&x_new, it, f.evaluations, objective, grad_norm, opts.tol, history));
        }
        if (&y - &x_new).dot(&(&x_new - &x)) > 0.0 {
            // Gradient restart (O'Donoghue & Candès; with the gradient mapping, so it holds
            // for the proximal step too): momentum points uphill.
            t = 1.0;
            y = x_new.clone();
        } else {
            let t_next = (1.0 + (1.0 + 4.0 * t * t).sqrt()) / 2.0;
            y = &x_new + &((&x_new - &x) * ((t - 1.0) / t_next));
            t = t_next;
        }
        last = objective;
        x = x_new;
    }
    let objective = last;
    Ok(Fit::at(&x, opts.max_iter, f.evaluations, objective, grad_norm, opts.tol, history))
}

/// Solves `a x = b` for a symmetric positive definite `a` (Cholesky); `None` if `a` is not.
pub fn cholesky_solve(a: &Array2<f64>, b: &Array1<f64>) -> Option<Array1<f64>> {
    let n = b.len();
    if a.dim() != (n, n) {
        return None;
    }
    let mut l = Array2::<f64>::zeros((n, n));
    for i in 0..n {
        for j in 0..=i {
            let s: f64 = (0..j).map(|k| l[[i, k]] * l[[j, k]]).sum();
            if i == j {
                let d = a[[i, i]] - s;
                if !(d > 0.0 && d.is_finite()) {
                    return None;
                }
                l[[i, i]] = d.sqrt();
            } else {
                l[[i, j]] = (a[[i, j]] - s) / l[[j, j]];
            }
        }
    }
    let mut z = Array1::<f64>::zeros(n);
    for i in 0..n {
        z[i] = (b[i] - (0..i).map(|k| l[[i, k]] * z[k]).sum::<f64>()) / l[[i, i]];
    }
    let mut x = Array1::<f64>::zeros(n);
    for i in (0..n).rev() {
        x[i] = (z[i] - (i + 1..n).map(|k| l[[k, i]] * x[k]).sum::<f64>()) / l[[i, i]];
    }
    Some(x)
}

/// Newton's method: each iteration one evaluation with the Hessian (a `p × p` matrix per
/// chunk, joined in the tree), the step solved here by Cholesky, then a backtracking (Armijo)
/// line search on the loss.
pub async fn newton<O: Objective>(obj: &mut O, reg: Regularizer, opts: Options) -> Result<Fit, ArrayError> {
    let l2 = smooth_only(reg, "Newton's method")?;
    let p = obj.n_features();
    let mut f = Counted { obj, l2, evaluations: 0 };
    let mut beta = Array1::<f64>::zeros(p);
    let mut history = Vec::new();
    for it in 1..=opts.max_iter {
        let e = f.eval(&beta, Eval::Hessian).await?;
        let (Some(g), Some(mut h)) = (e.grad, e.hess) else { return Err(ArrayError::Data("no Hessian".into())) };
        let grad_norm = inf_norm(&g);
        if grad_norm <= opts.tol {
            return Ok(Fit::at(&beta, it - 1, f.evaluations, e.loss, grad_norm, opts.tol, history));
        }
        let neg = -&g;
        let mut jitter = 0.0;
        let d = loop {
            if let Some(d) = cholesky_solve(&h, &neg) {
                break d;
            }
            // Singular (e.g. separable data without a penalty): regularize the step.
            jitter =
                if jitter == 0.0 { 1e-10 * h.diag().iter().fold(1.0f64, |m, v| m.max(v.abs())) } else { jitter * 10.0 };
            h.diag_mut().mapv_inplace(|v| v + jitter);
            if !jitter.is_finite() {
                return Err(ArrayError::Data("the Hessian cannot be factored".into()));
            }
        };
        let slope = g.dot(&d);
        let mut step = 1.0;
        let loss = loop {
            let cand = &beta + &(&d * step);
            let l = f.eval(&cand, Eval::Loss).await?.loss;
            if l <= e.loss + 1e-4 * step * slope + noise(e.loss) || step < 1e-10 {
                beta = cand;
                break l;
            }
            step *= 0.5;
        };
        history.push(loss);
    }
    let e = f.eval(&beta, Eval::Gradient).await?;
    let grad_norm = e.grad.as_ref().map_or(f64::INFINITY, inf_norm);
    Ok(Fit::at(&beta, opts.max_iter, f.evaluations, e.loss, grad_norm, opts.tol, history))
}

/// L-BFGS with the 10 most recent curvature pairs and a backtracking (Armijo) line search that
/// evaluates the gradient with the loss, so an accepted step costs one pass over the data.
pub async fn lbfgs<O: Objective>(obj: &mut O, reg: Regularizer, opts: Options) -> Result<Fit, ArrayError> {
    const MEMORY: usize = 10;
    let l2 = smooth_only(reg, "L-BFGS")?;
    let p = obj.n_features();
    let mut f = Counted { obj, l2, evaluations: 0 };
    let mut beta = Array1::<f64>::zeros(p);
    let mut e = f.eval(&beta, Eval::Gradient).await?;
    let mut g = e.grad.take().ok_or_else(|| ArrayError::Data("no gradient".into()))?;
    let mut pairs: std::collections::VecDeque<(Array1<f64>, Array1<f64>, f64)> = std::collections::VecDeque::new();
    let mut history = Vec::new();
    for it in 1..=opts.max_iter {
        let grad_norm = inf_norm(&g);
        if grad_norm <= opts.tol {
            return Ok(Fit::at(&beta, it - 1, f.evaluations, e.loss, grad_norm, opts.tol, history));
        }
        // Two-loop recursion: d = -H g.
        let mut q = g.clone();
        let mut alphas = Vec::with_capacity(pairs.len());
        for (s, y, rho) in pairs.iter().rev() {
            let a = rho * s.dot(&q);
            q.scaled_add(-a, y);
            alphas.push(a);
        }
        let gamma = pairs.back().map_or(1.0 / inf_norm(&g).max(1.0), |(s, y, _)| s.dot(y) / y.dot(y));
        let mut r = q * gamma;
        for ((s, y, rho), a) in pairs.iter().zip(alphas.into_iter().rev()) {
            let b = rho * y.dot(&r);
            r.scaled_add(a - b, s);
        }
        let mut d = -r;
        let mut slope = g.dot(&d);
        if slope >= 0.0 {
            pairs.clear();
            d = -&g / inf_norm(&g).max(1.0);
            slope = g.dot(&d);
        }
        let mut step = 1.0;
        let (next, at_next) = loop {
            let cand = &beta + &(&d * step);
            let en = f.eval(&cand, Eval::Gradient).await?;
            if en.loss <= e.loss + 1e-4 * step * slope + noise(e.loss) || step < 1e-12 {
                break (cand, en);
            }
            step *= 0.5;
        };
        let mut at_next = at_next;
        let g_next = at_next.grad.take().ok_or_else(|| ArrayError::Data("no gradient".into()))?;
        let s = &next - &beta;
        let yv = &g_next - &g;
        let sy = s.dot(&yv);
        if sy > 1e-12 * s.dot(&s).sqrt() * yv.dot(&yv).sqrt() && sy > 0.0 {
            if pairs.len() == MEMORY {
                pairs.pop_front();
            }
            pairs.push_back((s, yv, 1.0 / sy));
        }
        beta = next;
        g = g_next;
        e = at_next;
        history.push(e.loss);
    }
    let grad_norm = inf_norm(&g);
    Ok(Fit::at(&beta, opts.max_iter, f.evaluations, e.loss, grad_norm, opts.tol, history))
}

#[cfg(test)]
mod tests {
    use courier_core::ndarray::array;

    use super::*;

    #[test]
    fn cholesky_solves_and_refuses_indefinite_matrices() {
        let a = array![[4.0, 2.0, 0.6], [2.0, 5.0, 1.0], [0.6, 1.0, 3.0]];
        let b = array![1.0, -2.0, 0.5];
        let x = cholesky_solve(&a, &b).unwrap();
        assert!((a.dot(&x) - &b).iter().all(|r| r.abs() < 1e-12));
        assert!(cholesky_solve(&array![[1.0, 2.0], [2.0, 1.0]], &array![1.0, 1.0]).is_none());
        assert!(cholesky_solve(&array![[1.0]], &array![1.0, 1.0]).is_none());
    }

    #[test]
    fn soft_threshold_shrinks_towards_zero() {
        assert_eq!(soft_threshold(&array![3.0, -0.5, -2.0], 1.0), array![2.0, 0.0, -1.0]);
    }
}
