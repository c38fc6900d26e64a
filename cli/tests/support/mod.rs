//! Shared helpers for the CLI's tests: the binaries under test.

#![allow(dead_code, reason = "each test file uses part of the support module")]

use std::path::{Path, PathBuf};

use tokio::process::Command;

pub(crate) fn courier_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_courier"))
}

/// `courier`, killed when dropped, without settings leaking in from the environment.
pub(crate) fn courier() -> Command {
    let mut c = Command::new(courier_bin());
    c.kill_on_drop(true);
    for var in ["COURIER_SCHEDULER_LISTEN", "COURIER_CONFIG", "COURIER_AUTH_TOKEN", "COURIER_CLIENT_TOKEN"] {
        c.env_remove(var);
    }
    c
}

/// An example binary of this package (`cargo test` builds them beside the `courier` binary).
pub(crate) fn example(name: &str) -> PathBuf {
    let path = courier_bin().parent().expect("target dir").join("examples").join(name);
    assert!(path.exists(), "{} is missing: `cargo test -p courier-cli` builds the examples", path.display());
    path
}
pub(crate) mod netns;

use courier::courier_core::WireArray;
use courier::courier_runtime::{Client, LocalCluster, TaskFuture, arg};
use courier::{Registry, RegistryExt};

/// A tree reduction of `leaves` slow random `side` × `side` arrays (each made after `delay`
/// seconds) by pairwise `array_add`s, then `array_sum`: 2 × leaves tasks; the adds fetch
/// inputs from other workers. Returns the leaves and the total.
pub(crate) async fn tree(
    c: &Client,
    leaves: u64,
    side: usize,
    delay: f64,
) -> (Vec<TaskFuture<WireArray>>, TaskFuture<f64>) {
    let level0: Vec<TaskFuture<WireArray>> = c
        .map("slow_random_array", (0..leaves).map(|seed| vec![arg(&vec![side, side]), arg(&seed), arg(&delay)]))
        .await
        .unwrap();
    let mut level = level0.clone();
    while level.len() > 1 {
        let mut next = Vec::new();
        for pair in level.chunks(2) {
            next.push(c.submit::<WireArray>("array_add", pair.iter().map(|f| f.arg()).collect()).await.unwrap());
        }
        level = next;
    }
    let total = c.submit::<f64>("array_sum", vec![level[0].arg()]).await.unwrap();
    (level0, total)
}

/// [`tree`]'s total computed without failures, in process.
pub(crate) async fn tree_reference(leaves: u64, side: usize) -> f64 {
    let functions = courier::courier_runtime::Functions::with_builtins();
    let cluster = LocalCluster::inproc(Registry::with_default_transports(), 2, functions).await.unwrap();
    let c = cluster.client().await.unwrap();
    let (_, total) = tree(&c, leaves, side, 0.0).await;
    total.result().await.unwrap()
}
