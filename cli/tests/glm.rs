//! The chunked-array GLM example (`array/examples/glm.rs`, included here as it is) on a small
//! dataset against a process cluster: a `courier scheduler` and two `courier worker`
//! processes over tcp://, whose stock functions include the array and GLM block functions.

mod support;

#[path = "../../array/examples/glm.rs"]
mod glm_example;

use courier::courier_runtime::LocalCluster;
use courier::{Registry, RegistryExt};
use support::courier_bin;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn glm_example_fits_a_logistic_regression_on_worker_processes() {
    let cluster = LocalCluster::processes(Registry::with_default_transports(), courier_bin(), "tcp://127.0.0.1:0", 2)
        .await
        .unwrap();
    let client = cluster.client().await.unwrap();
    let args: Vec<String> = ["20000", "8", "5", "--max-iter", "60"].iter().map(|s| s.to_string()).collect();
    let (cfg, scheduler) = glm_example::parse(&args).unwrap();
    assert_eq!((cfg.rows, cfg.cols, cfg.chunks, scheduler), (20_000, 8, 5, None));
    let report = glm_example::run(&client, &cfg).await.unwrap();
    assert!(report.converged, "{report:?}");
    assert!(report.evaluations >= report.iterations && report.iterations > 2, "{report:?}");
    // 20,000 rows estimate 8 coefficients to about ±0.03; the truth's largest is 0.71.
    assert!(report.max_error < 0.2 * report.max_truth, "{report:?}");
    // Both workers worked on chunks.
    let info = client.worker_info().await.unwrap();
    assert_eq!(info.len(), 2);
    assert!(info.iter().all(|w| w.ran > 0), "{info:?}");
    client.close().await;
    cluster.shutdown().await;
}

/// The chunked operations on worker processes over unix:// give what ndarray gives: the same
/// code as on a LocalCluster, another transport.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_operations_on_worker_processes_match_ndarray() {
    use courier::courier_core::ndarray::{Array2, Axis};
    use courier_array::{BinaryOp, ChunkedArray, UnaryOp};

    let dir = std::env::temp_dir().join(format!("courier-glm-test-{}", std::process::id()));
    let listen = format!("unix://{}", dir.with_extension("sock").display());
    let cluster =
        LocalCluster::processes(Registry::with_default_transports(), courier_bin(), &listen, 2).await.unwrap();
    let client = cluster.client().await.unwrap();
    let a = Array2::from_shape_fn((37, 11), |(i, j)| ((i * 11 + j) % 17) as f64 - 8.0);
    let x = ChunkedArray::from_ndarray(&client, a.view(), &[8, 4]).await.unwrap().persist().await.unwrap();
    let got = x.rechunk(&[5, 11]).unwrap().scalar(BinaryOp::Mul, 0.5).map(UnaryOp::Abs).sum(&[0]).unwrap();
    let want = (&a * 0.5).mapv(f64::abs).sum_axis(Axis(0));
    assert_eq!(got.compute().await.unwrap(), want.into_dyn());
    let gram = x.t().dot(&x).unwrap().compute().await.unwrap();
    assert_eq!(gram, a.t().dot(&a).into_dyn());
    client.close().await;
    cluster.shutdown().await;
}
