//! A worker with failure-injection functions, for Courier's own process tests. Never run it
//! where strangers can submit work: `crash` aborts the process and `flaky` writes files.
//! `courier worker` ships none of these.
//!
//! | name | arguments | result |
//! | --- | --- | --- |
//! | `crash` | — | aborts the worker process |
//! | `flaky` | counter file `String`, failures `u32`, value `i64` | fails the first n calls, then the value |

use courier::courier_runtime::Functions;

fn main() -> std::process::ExitCode {
    let mut functions = Functions::with_builtins();
    functions.register("crash", |(): ()| -> Result<(), String> { std::process::abort() });
    functions.register("flaky", |(path, failures, value): (String, u32, i64)| {
        let n: u32 = std::fs::read_to_string(&path).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
        std::fs::write(&path, (n + 1).to_string()).map_err(|e| format!("flaky counter {path}: {e}"))?;
        if n < failures { Err(format!("flaky failure {} of {failures}", n + 1)) } else { Ok(value) }
    });
    courier::worker_main(functions)
}
