//! Chunked operations against plain ndarray, on random shapes and chunkings (ragged last
//! chunks and 1-element chunks included), on a LocalCluster of two workers.

use std::sync::Arc;

use courier_core::ndarray::Dimension;

use courier_array::{ArrayError, BinaryOp, ChunkedArray, Distribution, UnaryOp};
use courier_core::ndarray::{ArrayD, Axis, IxDyn};
use courier_runtime::{Client, Functions, LocalCluster, arg};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

struct Setup {
    rt: tokio::runtime::Runtime,
    client: Client,
    _cluster: LocalCluster,
}

fn setup() -> Setup {
    setup_with(None)
}

/// With `scheduler` configured so (default: `LocalCluster::inproc`'s, which places by load
/// alone, as moving a value in one process moves no bytes).
fn setup_with(scheduler: Option<courier_runtime::SchedulerConfig>) -> Setup {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (cluster, client) = rt.block_on(async {
        let registry = courier_core::Registry::new().with(Arc::new(courier_inproc::InprocTransport::new()));
        let mut functions = Functions::with_builtins();
        functions.extend(courier_array::functions());
        // A block function of a user's own, for from_fn and map_blocks.
        functions.register("test.index_block", |(info, scale): (courier_array::BlockInfo, f64)| {
            let a = ArrayD::from_shape_fn(IxDyn(&info.shape), |i| {
                let flat: usize = i
                    .as_array_view()
                    .iter()
                    .zip(&info.offset)
                    .zip(&info.array_shape)
                    .fold(0, |acc, ((&k, &o), &n)| acc * n + k + o);
                flat as f64 * scale
            });
            Ok::<_, String>(courier_core::WireArray::from_array(a))
        });
        functions.register("test.plus", |(a, s): (courier_core::WireArray, f64)| {
            Ok::<_, String>(courier_core::WireArray::from_array(a.to_array::<f64>().map_err(|e| e.to_string())? + s))
        });
        let cluster = match scheduler {
            Some(config) => LocalCluster::in_process_with(registry, "inproc://", 2, 1, functions, config).await,
            None => LocalCluster::inproc(registry, 2, functions).await,
        }
        .unwrap();
        let client = cluster.client().await.unwrap();
        (cluster, client)
    });
    Setup { rt, client, _cluster: cluster }
}

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() })
}

/// A shape of rank 1–3 (lengths 1–7) and a chunk shape (1 to the length: ragged and 1-element
/// chunks come up often).
fn shape_and_chunks(max_rank: usize) -> impl Strategy<Value = (Vec<usize>, Vec<usize>)> {
    prop::collection::vec(1usize..8, 1..=max_rank).prop_flat_map(|shape| {
        let chunks: Vec<_> = shape.iter().map(|&n| 1..=n).collect();
        (Just(shape), chunks)
    })
}

fn local(shape: &[usize], seed: u64) -> ArrayD<f64> {
    let mut rng = fastrand_like(seed);
    ArrayD::from_shape_fn(IxDyn(shape), |_| rng())
}

/// Values in [-2, 2) from a seed (no extra dependency).
fn fastrand_like(seed: u64) -> impl FnMut() -> f64 {
    let mut s = seed | 1;
    move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 11) as f64 / (1u64 << 53) as f64 * 4.0 - 2.0
    }
}

fn close(a: &ArrayD<f64>, b: &ArrayD<f64>) -> Result<(), TestCaseError> {
    prop_assert_eq!(a.shape(), b.shape());
    for (x, y) in a.iter().zip(b) {
        prop_assert!((x - y).abs() <= 1e-9 * (1.0 + y.abs()), "{} vs {}\n{:?}\n{:?}", x, y, a, b);
    }
    Ok(())
}

#[test]
fn elementwise_operations_match_ndarray() {
    let s = setup();
    runner(24)
        .run(&(shape_and_chunks(3), any::<u64>()), |((shape, chunk), seed)| {
            s.rt.block_on(async {
                let (a, b) = (local(&shape, seed), local(&shape, seed ^ 0xABCD));
                let ca = ChunkedArray::from_ndarray(&s.client, a.view(), &chunk).await.unwrap();
                let cb = ChunkedArray::from_ndarray(&s.client, b.view(), &chunk).await.unwrap();
                let got = ca
                    .add(&cb)
                    .unwrap()
                    .mul(&ca)
                    .unwrap()
                    .scalar(BinaryOp::Sub, 0.5)
                    .scalar_left(BinaryOp::Div, 3.0)
                    .zip(BinaryOp::Max, &cb.map(UnaryOp::Sigmoid))
                    .unwrap()
                    .compute()
                    .await
                    .unwrap();
                let sig = b.mapv(|v| 1.0 / (1.0 + (-v).exp()));
                let want = ((&a + &b) * &a - 0.5).mapv(|v| 3.0 / v);
                let want = ndarray_zip_max(&want, &sig);
                close(&got, &want)?;
                close(&ca.map(UnaryOp::Square).map(UnaryOp::Sqrt).compute().await.unwrap(), &a.mapv(f64::abs))
            })
        })
        .unwrap();
}

fn ndarray_zip_max(a: &ArrayD<f64>, b: &ArrayD<f64>) -> ArrayD<f64> {
    let mut out = a.clone();
    out.zip_mut_with(b, |x, &y| *x = x.max(y));
    out
}

#[test]
fn reductions_along_any_axes_match_ndarray() {
    let s = setup();
    let strategy = (shape_and_chunks(3), any::<u64>(), 2usize..5, any::<u8>());
    runner(32)
        .run(&strategy, |((shape, chunk), seed, fan_in, mask)| {
            s.rt.block_on(async {
                let a = local(&shape, seed);
                let axes: Vec<usize> = (0..shape.len()).filter(|i| mask & (1 << i) != 0).collect();
                let ca = ChunkedArray::from_ndarray(&s.client, a.view(), &chunk).await.unwrap().with_fan_in(fan_in);
                let mut sum = a.clone();
                let mut max = a.clone();
                for &ax in axes.iter().rev() {
                    sum = sum.sum_axis(Axis(ax));
                    max = max.fold_axis(Axis(ax), f64::NEG_INFINITY, |&m, &x| m.max(x));
                }
                let n: usize = axes.iter().map(|&ax| shape[ax]).product();
                close(&ca.sum(&axes).unwrap().compute().await.unwrap(), &sum)?;
                close(&ca.mean(&axes).unwrap().compute().await.unwrap(), &(&sum / n as f64))?;
                close(&ca.max(&axes).unwrap().compute().await.unwrap(), &max)?;
                let min = ca.min(&ca.all_axes()).unwrap().compute_scalar().await.unwrap();
                prop_assert_eq!(min, a.iter().copied().fold(f64::INFINITY, f64::min));
                Ok(())
            })
        })
        .unwrap();
}

#[test]
fn products_match_ndarray_for_every_pairing_of_ranks() {
    let s = setup();
    let dims = (1usize..8, 1usize..8, 1usize..8);
    runner(24)
        .run(&(dims, any::<u64>(), any::<u64>()), |((m, k, n), seed, chunk_seed)| {
            s.rt.block_on(async {
                let mut pick = fastrand_like(chunk_seed);
                let mut c = |len: usize| 1 + ((pick() + 2.0) / 4.0 * len as f64) as usize % len;
                let (cm, ck, cn) = (c(m), c(k), c(n));
                let a = local(&[m, k], seed).into_dimensionality::<courier_core::ndarray::Ix2>().unwrap();
                let b = local(&[k, n], seed ^ 1).into_dimensionality::<courier_core::ndarray::Ix2>().unwrap();
                let v = local(&[k], seed ^ 2).into_dimensionality::<courier_core::ndarray::Ix1>().unwrap();
                let w = local(&[m], seed ^ 3).into_dimensionality::<courier_core::ndarray::Ix1>().unwrap();
                let ca = ChunkedArray::from_ndarray(&s.client, a.view(), &[cm, ck]).await.unwrap().with_fan_in(2);
                let cb = ChunkedArray::from_ndarray(&s.client, b.view(), &[ck, cn]).await.unwrap();
                let cv = ChunkedArray::from_ndarray(&s.client, v.view(), &[ck]).await.unwrap();
                let cw = ChunkedArray::from_ndarray(&s.client, w.view(), &[cm]).await.unwrap();
                close(&ca.dot(&cb).unwrap().compute().await.unwrap(), &a.dot(&b).into_dyn())?;
                close(&ca.dot(&cv).unwrap().compute().await.unwrap(), &a.dot(&v).into_dyn())?;
                // Xᵀ w: the transpose is chunked along its columns like w.
                close(&ca.t().dot(&cw).unwrap().compute().await.unwrap(), &a.t().dot(&w).into_dyn())?;
                close(&cw.dot(&ca).unwrap().compute().await.unwrap(), &w.dot(&a).into_dyn())?;
                let vv = cv.dot(&cv).unwrap().compute_scalar().await.unwrap();
                prop_assert!((vv - v.dot(&v)).abs() < 1e-9);
                Ok(())
            })
        })
        .unwrap();
}

#[test]
fn transposes_and_rechunks_keep_every_element() {
    let s = setup();
    let strategy = (shape_and_chunks(3), any::<u64>());
    runner(32)
        .run(&strategy, |((shape, chunk), seed)| {
            s.rt.block_on(async {
                let a = local(&shape, seed);
                let mut pick = fastrand_like(seed ^ 77);
                let new_chunk: Vec<usize> =
                    shape.iter().map(|&n| 1 + ((pick() + 2.0) / 4.0 * n as f64) as usize % n).collect();
                let ca = ChunkedArray::from_ndarray(&s.client, a.view(), &chunk).await.unwrap();
                let r = ca.rechunk(&new_chunk).unwrap();
                prop_assert_eq!(r.chunks(), &courier_array::Chunks::regular(&shape, &new_chunk).unwrap());
                close(&r.compute().await.unwrap(), &a)?;
                close(&ca.t().compute().await.unwrap(), &a.t().to_owned())?;
                let mut axes: Vec<usize> = (0..shape.len()).collect();
                axes.rotate_left(1);
                close(
                    &r.permute(&axes).unwrap().compute().await.unwrap(),
                    &a.view().permuted_axes(axes.clone()).to_owned(),
                )?;
                Ok(())
            })
        })
        .unwrap();
}

#[test]
fn persisted_blocks_stay_in_worker_memory_and_later_graphs_start_from_them() {
    let s = setup();
    s.rt.block_on(async {
        let uniform = Distribution::Uniform { low: -1.0, high: 1.0 };
        let x = ChunkedArray::<f64>::random(&s.client, &[50, 6], &[7, 4], 11, uniform).unwrap();
        assert!(!x.is_persisted());
        assert_eq!(x.pending_tasks(), 16);
        let once = x.compute().await.unwrap();
        assert_eq!(once, x.compute().await.unwrap(), "the same seed makes the same blocks");
        let p = x.persist().await.unwrap();
        assert!(p.is_persisted());
        assert_eq!(p.pending_tasks(), 0);
        p.wait().await.unwrap();
        for f in p.block_futures().unwrap() {
            assert!(!f.who_has().is_empty(), "a persisted block is held by a worker");
        }
        assert_eq!(p.compute().await.unwrap(), once);
        // A graph on the persisted array submits only its own tasks.
        let y = p.scalar(BinaryOp::Mul, 2.0);
        assert_eq!(y.pending_tasks(), 16);
        assert_eq!(y.compute().await.unwrap(), &once * 2.0);
        let total = p.sum(&[0, 1]).unwrap().compute_scalar().await.unwrap();
        assert!((total - once.sum()).abs() < 1e-9);
    });
}

#[test]
fn user_block_functions_make_and_map_blocks() {
    let s = setup();
    s.rt.block_on(async {
        let a = ChunkedArray::<f64>::from_fn(&s.client, &[5, 3], &[2, 2], "test.index_block", vec![arg(&0.5)]).unwrap();
        let want = ArrayD::from_shape_fn(IxDyn(&[5, 3]), |i| (i[0] * 3 + i[1]) as f64 * 0.5);
        assert_eq!(a.compute().await.unwrap(), want);
        assert_eq!(a.map_blocks("test.plus", vec![arg(&1.0)]).compute().await.unwrap(), &want + 1.0);
        let ones = ChunkedArray::<f32>::full(&s.client, &[4, 4], &[3, 3], 1.5).unwrap();
        let doubled = ones.add(&ones).unwrap().compute().await.unwrap();
        assert!(doubled.iter().all(|&v| v == 3.0f32));
        assert_eq!(ones.sum(&[1]).unwrap().compute().await.unwrap(), ArrayD::from_elem(IxDyn(&[4]), 6.0f32));
    });
}

#[test]
fn misfits_are_typed_errors_before_anything_runs_and_failed_blocks_fail_the_compute() {
    let s = setup();
    s.rt.block_on(async {
        let a = ChunkedArray::<f64>::full(&s.client, &[6, 4], &[3, 4], 1.0).unwrap();
        let b = ChunkedArray::<f64>::full(&s.client, &[6, 4], &[2, 4], 1.0).unwrap();
        assert!(matches!(a.add(&b), Err(ArrayError::Shape(_))));
        assert!(matches!(a.dot(&b), Err(ArrayError::Shape(_))));
        assert!(matches!(a.sum(&[2]), Err(ArrayError::Shape(_))));
        assert!(matches!(a.sum(&[0, 0]), Err(ArrayError::Shape(_))));
        assert!(matches!(a.permute(&[0, 0]), Err(ArrayError::Shape(_))));
        assert!(matches!(a.rechunk(&[0, 1]), Err(ArrayError::Shape(_))));
        assert!(matches!(ChunkedArray::<f64>::full(&s.client, &[0], &[1], 1.0), Err(ArrayError::Shape(_))));
        // A block function that fails (the wrong shape for a map) fails the compute, typed.
        let bad = a.map_blocks("array.transpose", vec![]);
        match bad.compute().await {
            Err(ArrayError::Task(e)) => assert!(e.failure().is_some(), "{e}"),
            other => panic!("expected a task failure, got {other:?}"),
        }
    });
}

/// Bytes the workers of `client`'s cluster have fetched from each other so far.
async fn fetched_bytes(client: &Client) -> u64 {
    let mut total = 0;
    for w in client.workers() {
        total += client.worker_transfer_stats(&w).await.unwrap().iter().map(|t| t.bytes).sum::<u64>();
    }
    total
}

#[test]
fn rechunk_from_rows_to_columns_moves_each_byte_at_most_once() {
    // The scheduler's default transfer cost (1 GiB/s, as between processes): the placement a
    // process cluster gets, counted in bytes here.
    let s = setup_with(Some(courier_runtime::SchedulerConfig::default()));
    s.rt.block_on(async {
        let (n, rows_per_chunk) = (1024usize, 16usize); // 64 input blocks of 128 KiB
        let a = local(&[n, n], 5);
        let rows = ChunkedArray::from_ndarray(&s.client, a.view(), &[rows_per_chunk, n]).await.unwrap();
        rows.wait().await.unwrap();
        let before = fetched_bytes(&s.client).await;
        let cols = rows.rechunk(&[n, rows_per_chunk]).unwrap().persist().await.unwrap();
        cols.wait().await.unwrap();
        let moved = fetched_bytes(&s.client).await - before;
        let bytes = (n * n * 8) as u64;
        // Each output block takes one slice of every input block; half of the slices are on
        // the other worker. More than 1.1× would mean whole input blocks travelled.
        assert!(moved as f64 <= 1.1 * bytes as f64, "moved {moved} bytes for an array of {bytes}");
        assert!(moved > 0, "two workers had to exchange slices");
        assert_eq!(cols.compute().await.unwrap(), a);
    });
}
