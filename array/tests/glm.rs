//! The GLM solvers on persisted chunks of a LocalCluster, against independent single-process
//! references: the normal equations (least squares), a dense Newton iteration (logistic), and
//! the KKT conditions (L1). Well- and ill-conditioned problems; one test per solver and
//! regularizer.

use std::sync::Arc;

use courier_array::ArrayError;
use courier_array::glm::{
    ClusterObjective, Eval, Family, LocalObjective, Objective, Options, Regularizer, Solver, Synthetic, fit, reference,
};
use courier_runtime::{Client, Functions, LocalCluster};

async fn cluster() -> (LocalCluster, Client) {
    let registry = courier_core::Registry::new().with(Arc::new(courier_inproc::InprocTransport::new()));
    let mut functions = Functions::with_builtins();
    functions.extend(courier_array::functions());
    let cluster = LocalCluster::inproc(registry, 2, functions).await.unwrap();
    let client = cluster.client().await.unwrap();
    (cluster, client)
}

fn problem(family: Family, col_scale: f64) -> Synthetic {
    Synthetic {
        rows: 2000,
        cols: 5,
        chunk_rows: 300, // 7 chunks, the last ragged
        family,
        beta: vec![0.8, -0.5, 0.0, 0.25, -0.1],
        noise: 0.3,
        col_scale,
        seed: 42,
    }
}

/// The problem's data, persisted on the cluster, and the same data here.
async fn data(client: &Client, p: &Synthetic) -> (ClusterObjective, LocalObjective) {
    let (x, y) = p.build(client).unwrap();
    let (x, y) = (x.persist().await.unwrap(), y.persist().await.unwrap());
    let local = p.local().unwrap();
    assert_eq!(x.compute().await.unwrap(), local.x().clone().into_dyn(), "the workers make the same X");
    assert_eq!(y.compute().await.unwrap(), local.y().clone().into_dyn(), "and the same y");
    (ClusterObjective::new(p.family, x, y).unwrap(), local)
}

fn reference_beta(family: Family, local: &LocalObjective, l2: f64) -> Vec<f64> {
    let r = match family {
        Family::Normal => reference::least_squares(local.x().view(), local.y().view(), l2),
        Family::Logistic => reference::logistic(local.x().view(), local.y().view(), l2),
    };
    r.expect("the reference converges").to_vec()
}

fn assert_close(got: &[f64], want: &[f64], tol: f64, what: &str) {
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() <= tol * (1.0 + w.abs()), "{what}: {got:?} vs reference {want:?}");
    }
}

/// Fits every (family, conditioning) with `solver` and `reg` and checks against the reference.
async fn check_smooth(solver: Solver, l2: f64) {
    let (_cluster, client) = cluster().await;
    for family in [Family::Normal, Family::Logistic] {
        for col_scale in [1.0, 30.0] {
            let p = problem(family, col_scale);
            let (mut obj, local) = data(&client, &p).await;
            let reg = if l2 > 0.0 { Regularizer::L2(l2) } else { Regularizer::None };
            let f = fit(&mut obj, solver, reg, Options { max_iter: 20_000, tol: 1e-10 }).await.unwrap();
            let what = format!("{solver:?} {family:?} scale {col_scale} L2 {l2}");
            assert!(f.converged, "{what}: {} iterations, gradient {}", f.iterations, f.grad_norm);
            assert_close(&f.beta, &reference_beta(family, &local, l2), 1e-6, &what);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newton_without_penalty_matches_the_references() {
    check_smooth(Solver::Newton, 0.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newton_with_l2_matches_the_references() {
    check_smooth(Solver::Newton, 0.05).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lbfgs_with_l2_matches_the_references() {
    check_smooth(Solver::Lbfgs, 0.05).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lbfgs_without_penalty_matches_the_references() {
    check_smooth(Solver::Lbfgs, 0.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gradient_descent_without_penalty_matches_the_references() {
    check_smooth(Solver::GradientDescent, 0.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gradient_descent_with_l2_matches_the_references() {
    check_smooth(Solver::GradientDescent, 0.05).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gradient_descent_with_l1_meets_the_optimality_conditions_and_zeroes_coefficients() {
    let (_cluster, client) = cluster().await;
    for family in [Family::Normal, Family::Logistic] {
        for col_scale in [1.0, 30.0] {
            let p = problem(family, col_scale);
            let (mut obj, local) = data(&client, &p).await;
            let lambda = 0.02;
            let opts = Options { max_iter: 20_000, tol: 1e-10 };
            let f = fit(&mut obj, Solver::GradientDescent, Regularizer::L1(lambda), opts).await.unwrap();
            let what = format!("L1 {family:?} scale {col_scale}");
            assert!(f.converged, "{what}: {} iterations, {}", f.iterations, f.grad_norm);
            let kkt = reference::l1_kkt_residual(family, local.x().view(), local.y().view(), &f.beta, lambda);
            assert!(kkt < 1e-8, "{what}: KKT residual {kkt}, beta {:?}", f.beta);
            if col_scale == 1.0 {
                assert_eq!(f.beta[2], 0.0, "{what}: the zero coefficient is exactly zero: {:?}", f.beta);
            }
            // And the penalty did something: the unpenalized optimum differs.
            let free = reference_beta(family, &local, 0.0);
            assert!(f.beta.iter().zip(&free).any(|(a, b)| (a - b).abs() > 1e-3), "{what}");
            // Above the largest gradient component at zero, the answer is exactly zero.
            let g0 = reference::gradient(family, local.x().view(), local.y().view(), &[0.0; 5]);
            let big = 1.01 * g0.iter().fold(0.0f64, |m, g| m.max(g.abs()));
            let f = fit(&mut obj, Solver::GradientDescent, Regularizer::L1(big), opts).await.unwrap();
            assert_eq!(f.beta, vec![0.0; 5], "{what}: λ above the gradient at zero");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smooth_solvers_refuse_l1_and_the_cluster_evaluates_like_one_thread() {
    let (_cluster, client) = cluster().await;
    let p = problem(Family::Logistic, 3.0);
    let (mut obj, mut local) = data(&client, &p).await;
    for solver in [Solver::Newton, Solver::Lbfgs] {
        let r = fit(&mut obj, solver, Regularizer::L1(0.1), Options::default()).await;
        assert!(matches!(r, Err(ArrayError::Data(_))), "{solver:?}: {r:?}");
    }
    let beta = [0.3, -0.2, 0.1, 0.0, 0.05];
    let (a, b) =
        (obj.evaluate(&beta, Eval::Hessian).await.unwrap(), local.evaluate(&beta, Eval::Hessian).await.unwrap());
    assert!((a.loss - b.loss).abs() < 1e-12);
    let (ga, gb) = (a.grad.unwrap(), b.grad.unwrap());
    assert!(ga.iter().zip(&gb).all(|(x, y)| (x - y).abs() < 1e-12), "{ga} vs {gb}");
    let (ha, hb) = (a.hess.unwrap(), b.hess.unwrap());
    assert!(ha.iter().zip(&hb).all(|(x, y)| (x - y).abs() < 1e-10));
    let threaded = local.clone().with_threads(3).evaluate(&beta, Eval::Gradient).await.unwrap();
    assert!((threaded.loss - b.loss).abs() < 1e-12);
    assert!(threaded.grad.unwrap().iter().zip(&gb).all(|(x, y)| (x - y).abs() < 1e-12));
    let g = reference::gradient(Family::Logistic, local.x().view(), local.y().view(), &beta);
    assert!(ga.iter().zip(&g).all(|(x, y)| (x - y).abs() < 1e-12), "the reference's gradient agrees");
}
