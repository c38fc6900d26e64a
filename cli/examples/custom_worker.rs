//! Your own worker binary: the built-in functions plus yours, with the same flags,
//! environment variables and config file as `courier worker`.
//!
//! ```sh
//! cargo run --release --bin courier -- scheduler --listen tcp://127.0.0.1:8786 &
//! cargo run --release -p courier-cli --example custom_worker -- tcp://127.0.0.1:8786 --nthreads 2 &
//! cargo run --release --bin courier -- submit tcp://127.0.0.1:8786 word_count '"to be or not to be"'   # 6
//! ```

use courier::courier_runtime::Functions;

fn main() -> std::process::ExitCode {
    let mut functions = Functions::with_builtins();
    functions.register("square", |(x,): (f64,)| Ok::<_, String>(x * x));
    functions.register("word_count", |(text,): (String,)| Ok::<_, String>(text.split_whitespace().count() as u64));
    courier::worker_main(functions)
}
