//! Functions a worker can run, registered by name with typed (serde) arguments and results.
//!
//! ```
//! use courier_runtime::Functions;
//! let mut f = Functions::new();
//! f.register("double", |(x,): (i64,)| Ok::<_, String>(x * 2));
//! ```

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use courier_core::ndarray::{Array2, ArrayD, Ix2, IxDyn};
use courier_core::{Payload, WireArray};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// A function as the worker sees it: serialized arguments in, a serialized result or an error
/// message out.
pub type TaskFn = Arc<dyn Fn(Vec<Payload>) -> Result<Payload, String> + Send + Sync>;

/// Argument lists a function can take: tuples of up to five serde values, or a `Vec` of one
/// type (any number of arguments).
pub trait Args: Sized {
    /// Decodes the arguments.
    fn from_payloads(args: Vec<Payload>) -> Result<Self, String>;
}

fn decode<T: DeserializeOwned>(p: &Payload, i: usize) -> Result<T, String> {
    p.decode::<T>().map_err(|e| format!("argument {i} has the wrong type for this function: {e}"))
}

macro_rules! tuple_args {
    ($n:expr; $($t:ident $i:tt),*) => {
        impl<$($t: DeserializeOwned),*> Args for ($($t,)*) {
            fn from_payloads(args: Vec<Payload>) -> Result<Self, String> {
                if args.len() != $n {
                    return Err(format!("expected {} arguments, got {}", $n, args.len()));
                }
                Ok(($(decode::<$t>(&args[$i], $i)?,)*))
            }
        }
    };
}

tuple_args!(0;);
tuple_args!(1; A 0);
tuple_args!(2; A 0, B 1);
tuple_args!(3; A 0, B 1, C 2);
tuple_args!(4; A 0, B 1, C 2, D 3);
tuple_args!(5; A 0, B 1, C 2, D 3, E 4);

impl<T: DeserializeOwned> Args for Vec<T> {
    fn from_payloads(args: Vec<Payload>) -> Result<Self, String> {
        args.iter().enumerate().map(|(i, p)| decode(p, i)).collect()
    }
}

#[derive(Clone)]
pub(crate) struct Registered {
    pub(crate) f: TaskFn,
    /// Runs on a blocking thread (sleeps, heavy compute) instead of inline.
    pub(crate) blocking: bool,
}

/// The functions a worker offers, by name.
#[derive(Clone, Default)]
pub struct Functions {
    map: HashMap<String, Registered>,
}

impl fmt::Debug for Functions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<&String> = self.map.keys().collect();
        names.sort();
        f.debug_struct("Functions").field("names", &names).finish()
    }
}

impl Functions {
    /// No functions.
    pub fn new() -> Self {
        Self::default()
    }

    fn wrap<A: Args, R: Serialize>(f: impl Fn(A) -> Result<R, String> + Send + Sync + 'static) -> TaskFn {
        Arc::new(move |args| {
            let a = A::from_payloads(args)?;
            let r = f(a)?;
            Payload::new(&r).map_err(|e| format!("cannot serialize the result: {e}"))
        })
    }

    /// Registers a quick function, run inline on the worker's event loop (no thread hop).
    pub fn register<A: Args, R: Serialize>(
        &mut self,
        name: &str,
        f: impl Fn(A) -> Result<R, String> + Send + Sync + 'static,
    ) -> &mut Self {
        self.map.insert(name.to_owned(), Registered { f: Self::wrap(f), blocking: false });
        self
    }

    /// Registers a slow function, run on one of the worker's `nthreads` blocking threads.
    pub fn register_blocking<A: Args, R: Serialize>(
        &mut self,
        name: &str,
        f: impl Fn(A) -> Result<R, String> + Send + Sync + 'static,
    ) -> &mut Self {
        self.map.insert(name.to_owned(), Registered { f: Self::wrap(f), blocking: true });
        self
    }

    pub(crate) fn get(&self, name: &str) -> Option<&Registered> {
        self.map.get(name)
    }

    /// The built-in set shipped with `courier worker`:
    ///
    /// | name | arguments | result |
    /// | --- | --- | --- |
    /// | `inc` | `i64` | `i64` + 1 |
    /// | `add` | `i64`… | the sum |
    /// | `random_array` | shape `Vec<usize>`, seed `u64` | f64 array, uniform in [0, 1) |
    /// | `array_add` | f64 arrays… | elementwise sum |
    /// | `array_sum` | f64 array | sum of elements (`f64`) |
    /// | `array_mean` | f64 array | mean of elements (`f64`) |
    /// | `matmul` | two 2-d f64 arrays | their product |
    /// | `sleep` | seconds `f64` | the seconds slept (blocking) |
    /// | `fail` | message `String` | always fails with it |
    /// | `flaky` | counter file `String`, failures `u32`, value `i64` | fails the first n calls, then the value |
    /// | `slow_random_array` | shape, seed, seconds `f64` | `random_array` after sleeping (blocking) |
    /// | `crash` | — | aborts the worker *process* (for failure tests; never use in-process) |
    pub fn with_builtins() -> Self {
        let mut f = Functions::new();
        f.register("inc", |(x,): (i64,)| Ok(x + 1));
        f.register("add", |xs: Vec<i64>| Ok(xs.iter().sum::<i64>()));
        f.register("random_array", |(shape, seed): (Vec<usize>, u64)| {
            let mut rng = fastrand::Rng::with_seed(seed);
            let n: usize = shape.iter().product();
            let a = ArrayD::from_shape_vec(IxDyn(&shape), (0..n).map(|_| rng.f64()).collect())
                .map_err(|e| e.to_string())?;
            Ok(WireArray::from_array(a))
        });
        f.register("array_add", |xs: Vec<WireArray>| {
            let mut it = xs.iter();
            let first = it.next().ok_or("array_add needs at least one array")?;
            let mut acc = first.to_array::<f64>().map_err(|e| e.to_string())?;
            for x in it {
                let v = x.cow::<f64>().map_err(|e| e.to_string())?;
                if v.shape() != acc.shape() {
                    return Err(format!("shapes differ: {:?} vs {:?}", acc.shape(), v.shape()));
                }
                acc += &v;
            }
            Ok(WireArray::from_array(acc))
        });
        f.register("array_sum", |(a,): (WireArray,)| Ok(a.cow::<f64>().map_err(|e| e.to_string())?.sum()));
        f.register("array_mean", |(a,): (WireArray,)| {
            a.cow::<f64>().map_err(|e| e.to_string())?.mean().ok_or_else(|| "mean of an empty array".to_owned())
        });
        f.register_blocking("matmul", |(a, b): (WireArray, WireArray)| {
            let a: Array2<f64> = a.to_array_dim::<f64, Ix2>().map_err(|e| e.to_string())?;
            let b: Array2<f64> = b.to_array_dim::<f64, Ix2>().map_err(|e| e.to_string())?;
            if a.ncols() != b.nrows() {
                return Err(format!("cannot multiply {:?} by {:?}", a.dim(), b.dim()));
            }
            Ok(WireArray::from_array(a.dot(&b)))
        });
        f.register_blocking("sleep", |(secs,): (f64,)| {
            std::thread::sleep(std::time::Duration::from_secs_f64(secs.clamp(0.0, 3600.0)));
            Ok(secs)
        });
        f.register("fail", |(msg,): (String,)| Err::<(), _>(msg));
        f.register_blocking("slow_random_array", |(shape, seed, secs): (Vec<usize>, u64, f64)| {
            std::thread::sleep(std::time::Duration::from_secs_f64(secs.clamp(0.0, 60.0)));
            let mut rng = fastrand::Rng::with_seed(seed);
            let n: usize = shape.iter().product();
            let a = ArrayD::from_shape_vec(IxDyn(&shape), (0..n).map(|_| rng.f64()).collect())
                .map_err(|e| e.to_string())?;
            Ok(WireArray::from_array(a))
        });
        f.register("crash", |(): ()| -> Result<(), String> { std::process::abort() });
        f.register("flaky", |(path, failures, value): (String, u32, i64)| {
            let n: u32 = std::fs::read_to_string(&path).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
            std::fs::write(&path, (n + 1).to_string()).map_err(|e| format!("flaky counter {path}: {e}"))?;
            if n < failures { Err(format!("flaky failure {} of {failures}", n + 1)) } else { Ok(value) }
        });
        f
    }
}
