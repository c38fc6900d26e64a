//! Generalized linear models fitted on a row-chunked design matrix, the way dask-glm does it:
//! each iteration's per-chunk work (loss, gradient, Hessian of the rows of one chunk) is a
//! task on the chunk's worker, and only vectors of `1 + p (+ p²)` numbers travel.
//!
//! - [`Family`]: logistic or least squares; [`Regularizer`]: none, L2, L1.
//! - [`Objective`]: where the per-chunk work runs: [`ClusterObjective`] (persisted or lazy
//!   chunks on a cluster) or [`LocalObjective`] (one thread, the floor benches compare to).
//! - Solvers, generic over the objective: [`proximal_gradient`] (accelerated, with line
//!   search; L1 and L2), [`newton`] (L2), [`lbfgs`] (L2); [`fit`] picks one by [`Solver`].
//! - [`reference`]: independent single-process answers the tests check the solvers against.

mod model;
mod objective;
pub mod reference;
mod solvers;

pub(crate) use model::chunk_sums_wire;
pub use model::{Eval, Evaluation, Family, Regularizer, chunk_sums, synthetic_labels};
pub(crate) use objective::design_block;
pub use objective::{ClusterObjective, LocalObjective, Objective, Synthetic};
pub use solvers::{Fit, Options, Solver, cholesky_solve, fit, lbfgs, newton, proximal_gradient};
