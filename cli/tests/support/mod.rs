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
