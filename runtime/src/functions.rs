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

/// `array_add` of f64 arrays that all lie in C order: one pass over the inputs into a pooled
/// output ([`WireArray::from_c_order_chunks`]), where copying the first input and adding the
/// others in place would fault in a fresh result and read it twice. `None` for anything else
/// (other layouts, byte orders), which takes the general path.
fn add_contiguous(xs: &[WireArray]) -> Result<Option<WireArray>, String> {
    let Some(first) = xs.first() else { return Err("array_add needs at least one array".into()) };
    if first.dtype() != courier_core::DType::F64 || xs.iter().any(|x| x.shape() != first.shape()) {
        return Ok(None);
    }
    let views: Vec<_> = match xs.iter().map(|x| x.view::<f64>()).collect::<Result<Vec<_>, _>>() {
        Ok(v) => v,
        Err(_) => return Ok(None),
    };
    let Some(slices) = views.iter().map(|v| v.as_slice()).collect::<Option<Vec<&[f64]>>>() else { return Ok(None) };
    let sum = WireArray::from_c_order_chunks(first.shape(), |range, out: &mut Vec<f64>| {
        out.extend_from_slice(&slices[0][range.clone()]);
        for s in &slices[1..] {
            for (o, x) in out.iter_mut().zip(&s[range.clone()]) {
                *o += x;
            }
        }
    })
    .map_err(|e| e.to_string())?;
    Ok(Some(sum))
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

    /// Runs the function `name` here, on serialized arguments, as a worker would (a panic is
    /// an error): to test functions, or to compute a reference answer without a cluster.
    pub fn call(&self, name: &str, args: Vec<Payload>) -> Result<Payload, String> {
        let f = self.get(name).ok_or_else(|| format!("no function {name:?}"))?;
        run_guarded(&f.f, args)
    }

    /// The names registered, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.map.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// Adds every function of `other` (replacing same-named ones).
    pub fn extend(&mut self, other: Functions) -> &mut Self {
        self.map.extend(other.map);
        self
    }

    /// The built-in set shipped with `courier worker`. None of them can harm the host: no
    /// file system or process access, sleeps bounded to 60 s, array sizes bounded to
    /// [`MAX_BUILTIN_ELEMENTS`] elements (1 GiB of f64), integer arithmetic checked.
    ///
    /// | name | arguments | result |
    /// | --- | --- | --- |
    /// | `inc` | `i64` | `i64` + 1 |
    /// | `add` | `i64`… | the sum |
    /// | `random_array` | shape `Vec<usize>`, seed `u64` | f64 array, uniform in [0, 1) |
    /// | `array_add` | f64 arrays… | elementwise sum |
    /// | `array_sum` | f64 array | sum of elements (`f64`) |
    /// | `array_mean` | f64 array | mean of elements (`f64`) |
    /// | `matmul` | two 2-d f64 arrays | their product (blocking) |
    /// | `sleep` | seconds `f64` (at most 60) | the seconds slept (blocking) |
    /// | `fail` | message `String` | always fails with it |
    /// | `slow_random_array` | shape, seed, seconds `f64` (at most 60) | `random_array` after sleeping (blocking) |
    /// | `smooth_array` | shape `Vec<usize>`, seed `u64` | f64 array of slow waves (compresses partly) |
    pub fn with_builtins() -> Self {
        let mut f = Functions::new();
        f.register("inc", |(x,): (i64,)| x.checked_add(1).ok_or_else(|| format!("{x} + 1 overflows i64")));
        f.register("add", |xs: Vec<i64>| {
            xs.iter().try_fold(0i64, |acc, &x| acc.checked_add(x)).ok_or_else(|| "the sum overflows i64".to_owned())
        });
        f.register("random_array", |(shape, seed): (Vec<usize>, u64)| random_array(&shape, seed));
        f.register("smooth_array", |(shape, seed): (Vec<usize>, u64)| smooth_array(&shape, seed));
        f.register("array_add", |xs: Vec<WireArray>| {
            if let Some(sum) = add_contiguous(&xs)? {
                return Ok(sum);
            }
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
            check_elements(&[a.nrows(), b.ncols()])?;
            Ok(WireArray::from_array(a.dot(&b)))
        });
        f.register_blocking("sleep", |(secs,): (f64,)| {
            let secs = bounded_seconds(secs)?;
            std::thread::sleep(std::time::Duration::from_secs_f64(secs));
            Ok(secs)
        });
        f.register("fail", |(msg,): (String,)| Err::<(), _>(msg));
        f.register_blocking("slow_random_array", |(shape, seed, secs): (Vec<usize>, u64, f64)| {
            std::thread::sleep(std::time::Duration::from_secs_f64(bounded_seconds(secs)?));
            random_array(&shape, seed)
        });
        f
    }
}

/// Largest array a built-in function creates: 2^27 elements (1 GiB of f64).
pub const MAX_BUILTIN_ELEMENTS: usize = 1 << 27;

/// Longest a built-in function sleeps, in seconds.
pub const MAX_BUILTIN_SLEEP: f64 = 60.0;

fn bounded_seconds(secs: f64) -> Result<f64, String> {
    if secs.is_finite() && (0.0..=MAX_BUILTIN_SLEEP).contains(&secs) {
        Ok(secs)
    } else {
        Err(format!("{secs} seconds is outside 0..={MAX_BUILTIN_SLEEP}"))
    }
}

fn check_elements(shape: &[usize]) -> Result<usize, String> {
    shape
        .iter()
        .try_fold(1usize, |acc, &n| acc.checked_mul(n))
        .filter(|&n| n <= MAX_BUILTIN_ELEMENTS)
        .ok_or_else(|| format!("an array of shape {shape:?} exceeds {MAX_BUILTIN_ELEMENTS} elements"))
}

/// Built chunk by chunk into an aligned buffer (pooled, or lent by a buffer source such as
/// shm://'s arena), in C order: the same values as drawing all `n` in sequence.
fn random_array(shape: &[usize], seed: u64) -> Result<WireArray, String> {
    check_elements(shape)?;
    let mut rng = fastrand::Rng::with_seed(seed);
    WireArray::from_c_order_chunks::<f64>(shape, |range, out| out.extend(range.map(|_| rng.f64())))
        .map_err(|e| e.to_string())
}

/// A field of slow waves (like a simulation's output: neighbouring values close, so it
/// compresses partly), phase-shifted by `seed`; rows of the last axis.
fn smooth_array(shape: &[usize], seed: u64) -> Result<WireArray, String> {
    let n = check_elements(shape)?;
    let cols = shape.last().copied().unwrap_or(1).max(1);
    let phase = (seed % 1000) as f64 * 0.1;
    let a = ArrayD::from_shape_vec(
        IxDyn(shape),
        (0..n)
            .map(|i| {
                let (r, c) = ((i / cols) as f64, (i % cols) as f64);
                (r * 0.01 + phase).sin() * (c * 0.02).cos() + 0.5 * (r * 0.003 + c * 0.001 + phase).sin()
            })
            .collect(),
    )
    .map_err(|e| e.to_string())?;
    Ok(WireArray::from_array(a))
}

/// Runs a task function; a panic becomes the task's error instead of killing the worker.
pub(crate) fn run_guarded(f: &TaskFn, args: Vec<Payload>) -> Result<Payload, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(args))).unwrap_or_else(|p| {
        let msg = p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned());
        Err(format!("task panicked: {}", msg.unwrap_or_default()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtins_are_exactly_the_safe_list() {
        assert_eq!(
            Functions::with_builtins().names(),
            vec![
                "add",
                "array_add",
                "array_mean",
                "array_sum",
                "fail",
                "inc",
                "matmul",
                "random_array",
                "sleep",
                "slow_random_array",
                "smooth_array"
            ]
        );
    }

    #[test]
    fn builtins_refuse_what_could_harm_the_host() {
        let f = Functions::with_builtins();
        let call = |name: &str, args: Vec<Payload>| run_guarded(&f.get(name).unwrap().f, args);
        let p = |v: &dyn erased::Ser| v.payload();
        let err = call("random_array", vec![p(&vec![1usize << 20, 1 << 20]), p(&1u64)]).unwrap_err();
        assert!(err.contains("exceeds"), "{err}");
        let err = call("random_array", vec![p(&vec![usize::MAX, 2]), p(&1u64)]).unwrap_err();
        assert!(err.contains("exceeds"), "{err}");
        let err = call("smooth_array", vec![p(&vec![1usize << 20, 1 << 20]), p(&1u64)]).unwrap_err();
        assert!(err.contains("exceeds"), "{err}");
        let err = call("sleep", vec![p(&1e9f64)]).unwrap_err();
        assert!(err.contains("outside"), "{err}");
        assert!(call("sleep", vec![p(&f64::NAN)]).is_err());
        assert!(call("inc", vec![p(&i64::MAX)]).unwrap_err().contains("overflows"));
        assert!(call("add", vec![p(&i64::MAX), p(&1i64)]).unwrap_err().contains("overflows"));
        let v = call("add", vec![p(&40i64), p(&2i64)]).unwrap();
        assert_eq!(v.decode::<i64>().unwrap(), 42);
    }

    /// The one-pass `array_add` gives bit for bit what adding in place gives, and other
    /// layouts (a transposed input) still take the general path to the same sums.
    #[test]
    fn array_add_in_one_pass_matches_adding_in_place() {
        let f = Functions::with_builtins();
        let call = |xs: Vec<WireArray>| {
            run_guarded(&f.get("array_add").unwrap().f, xs.iter().map(|x| Payload::new(x).unwrap()).collect())
        };
        let add = |xs: Vec<WireArray>| call(xs).unwrap().decode::<WireArray>().unwrap();
        let arrays: Vec<ndarray::Array2<f64>> = (0..3u64)
            .map(|seed| random_array(&[300, 700], seed).unwrap().to_array_dim::<f64, ndarray::Ix2>().unwrap())
            .collect();
        let expected = &(&arrays[0] + &arrays[1]) + &arrays[2];
        let fast = add(arrays.iter().cloned().map(WireArray::from_array).collect());
        assert!(fast.is_c_order());
        assert_eq!(fast.view::<f64>().unwrap(), expected.view().into_dyn());
        let mixed = vec![
            WireArray::from_array(arrays[0].clone()),
            WireArray::from_array(arrays[1].t().to_owned().reversed_axes()),
            WireArray::from_array(arrays[2].clone()),
        ];
        assert_eq!(add(mixed).view::<f64>().unwrap(), expected.view().into_dyn());
        let other = WireArray::from_array(ndarray::Array2::<f64>::zeros((2, 2)));
        let err = call(vec![WireArray::from_array(arrays[0].clone()), other]).unwrap_err();
        assert!(err.contains("shapes differ"), "{err}");
    }

    mod erased {
        pub(super) trait Ser {
            fn payload(&self) -> courier_core::Payload;
        }
        impl<T: serde::Serialize> Ser for T {
            fn payload(&self) -> courier_core::Payload {
                courier_core::Payload::new(self).unwrap()
            }
        }
    }
}
