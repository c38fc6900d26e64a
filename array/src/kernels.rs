//! The block functions: what a worker runs on one chunk (or a few) of a chunked array.
//!
//! Every function takes and returns [`WireArray`] blocks of f32 or f64 (dispatched on the
//! block's dtype at run time) plus small serde parameters. None of them can harm the host:
//! outputs are bounded to [`MAX_BLOCK_ELEMENTS`], every shape and index from the arguments is
//! checked, and a mismatch is the task's error, never a panic.

use courier_core::ndarray::{ArrayD, ArrayViewD, Axis, Ix1, Ix2, IxDyn, Slice, Zip};
use courier_core::{DType, Payload, WireArray};
use courier_runtime::{Args, Functions, MAX_BUILTIN_ELEMENTS};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::BlockInfo;
use crate::glm::{Eval, Family};

/// Largest block (elements) a block function makes: 2^27, 1 GiB of f64.
pub const MAX_BLOCK_ELEMENTS: usize = MAX_BUILTIN_ELEMENTS;

/// The element types of chunked arrays.
pub trait Float:
    courier_core::Element
    + courier_core::ndarray::NdFloat
    + num_traits::Float
    + std::iter::Sum
    + Serialize
    + DeserializeOwned
{
    /// The dtype tag blocks of this type carry.
    const KIND: Dtype;
    /// `x` rounded to this type.
    fn of(x: f64) -> Self;
    /// This value as f64.
    fn f64(self) -> f64;
}

impl Float for f32 {
    const KIND: Dtype = Dtype::F32;
    fn of(x: f64) -> Self {
        x as f32
    }
    fn f64(self) -> f64 {
        f64::from(self)
    }
}

impl Float for f64 {
    const KIND: Dtype = Dtype::F64;
    fn of(x: f64) -> Self {
        x
    }
    fn f64(self) -> f64 {
        self
    }
}

/// Element type of a chunked array.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Dtype {
    /// 32-bit float.
    F32,
    /// 64-bit float.
    F64,
}

/// What random blocks are drawn from.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Distribution {
    /// Uniform in `[low, high)`.
    Uniform {
        /// Lower bound.
        low: f64,
        /// Upper bound (exclusive).
        high: f64,
    },
    /// Normal (Box–Muller).
    Normal {
        /// Mean.
        mean: f64,
        /// Standard deviation.
        std: f64,
    },
}

/// Elementwise functions of one array.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum UnaryOp {
    /// `-x`
    Neg,
    /// `|x|`
    Abs,
    /// `e^x`
    Exp,
    /// `ln x`
    Log,
    /// `√x`
    Sqrt,
    /// `x²`
    Square,
    /// `1 / (1 + e^-x)`
    Sigmoid,
}

/// Elementwise functions of two arrays (or an array and a scalar).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BinaryOp {
    /// `a + b`
    Add,
    /// `a - b`
    Sub,
    /// `a * b`
    Mul,
    /// `a / b`
    Div,
    /// `max(a, b)`
    Max,
    /// `min(a, b)`
    Min,
    /// `a^b`
    Pow,
}

/// Reductions along axes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReduceOp {
    /// Sum.
    Sum,
    /// Maximum.
    Max,
    /// Minimum.
    Min,
}

impl UnaryOp {
    fn apply<T: Float>(self, x: T) -> T {
        match self {
            UnaryOp::Neg => -x,
            UnaryOp::Abs => num_traits::Float::abs(x),
            UnaryOp::Exp => num_traits::Float::exp(x),
            UnaryOp::Log => num_traits::Float::ln(x),
            UnaryOp::Sqrt => num_traits::Float::sqrt(x),
            UnaryOp::Square => x * x,
            UnaryOp::Sigmoid => sigmoid(x),
        }
    }
}

impl BinaryOp {
    pub(crate) fn apply<T: Float>(self, a: T, b: T) -> T {
        match self {
            BinaryOp::Add => a + b,
            BinaryOp::Sub => a - b,
            BinaryOp::Mul => a * b,
            BinaryOp::Div => a / b,
            BinaryOp::Max => num_traits::Float::max(a, b),
            BinaryOp::Min => num_traits::Float::min(a, b),
            BinaryOp::Pow => num_traits::Float::powf(a, b),
        }
    }
}

impl ReduceOp {
    fn combine<T: Float>(self, a: T, b: T) -> T {
        match self {
            ReduceOp::Sum => a + b,
            ReduceOp::Max => num_traits::Float::max(a, b),
            ReduceOp::Min => num_traits::Float::min(a, b),
        }
    }

    fn identity<T: Float>(self) -> T {
        match self {
            ReduceOp::Sum => T::zero(),
            ReduceOp::Max => T::neg_infinity(),
            ReduceOp::Min => T::infinity(),
        }
    }
}

/// A numerically safe logistic function.
pub(crate) fn sigmoid<T: Float>(x: T) -> T {
    if x >= T::zero() {
        T::one() / (T::one() + (-x).exp())
    } else {
        let e = x.exp();
        e / (T::one() + e)
    }
}

/// Function names, as registered on workers.
pub(crate) mod names {
    pub(crate) const RANDOM: &str = "array.random";
    pub(crate) const FULL: &str = "array.full";
    pub(crate) const UNARY: &str = "array.unary";
    pub(crate) const BINARY: &str = "array.binary";
    pub(crate) const SCALAR: &str = "array.scalar";
    pub(crate) const REDUCE: &str = "array.reduce";
    pub(crate) const COMBINE: &str = "array.combine";
    pub(crate) const MATMUL: &str = "array.matmul";
    pub(crate) const TRANSPOSE: &str = "array.transpose";
    pub(crate) const SLICE: &str = "array.slice";
    pub(crate) const ASSEMBLE: &str = "array.assemble";
    pub(crate) const GLM_SUMS: &str = "glm.sums";
    pub(crate) const GLM_DESIGN: &str = "glm.design";
    pub(crate) const GLM_LABELS: &str = "glm.labels";
}

/// Parameters of `array.combine`: how partial results of a reduction are joined.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct CombineSpec {
    pub(crate) op: ReduceOp,
    /// Multiplies the result (a mean's `1 / n`); 1 leaves it.
    pub(crate) scale: f64,
    /// The result's shape (same number of elements as the parts: drops the reduced axes), or
    /// `None` to keep the parts' shape (an intermediate step of a tree).
    pub(crate) shape: Option<Vec<usize>>,
}

/// Parameters of `array.assemble`: a block made of pieces placed at offsets.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct AssembleSpec {
    pub(crate) dtype: Dtype,
    pub(crate) shape: Vec<usize>,
    pub(crate) offsets: Vec<Vec<usize>>,
}

/// A parameter followed by any number of blocks.
pub(crate) struct WithBlocks<P> {
    pub(crate) params: P,
    pub(crate) blocks: Vec<WireArray>,
}

impl<P: DeserializeOwned> Args for WithBlocks<P> {
    fn from_payloads(args: Vec<Payload>) -> Result<Self, String> {
        let mut it = args.iter();
        let params = it.next().ok_or("missing the parameters")?;
        let params = params.decode::<P>().map_err(|e| format!("argument 0 has the wrong type: {e}"))?;
        let blocks = it
            .enumerate()
            .map(|(i, p)| p.decode::<WireArray>().map_err(|e| format!("argument {} is not an array: {e}", i + 1)))
            .collect::<Result<_, _>>()?;
        Ok(WithBlocks { params, blocks })
    }
}

/// Runs `$body` with `$T` the element type of `$dtype`.
macro_rules! by_dtype {
    ($dtype:expr, $T:ident => $body:expr) => {
        match $dtype {
            DType::F32 => {
                type $T = f32;
                $body
            }
            DType::F64 => {
                type $T = f64;
                $body
            }
            d => Err(format!("chunked arrays hold f32 or f64, not {d}")),
        }
    };
}

impl Dtype {
    pub(crate) fn wire(self) -> DType {
        match self {
            Dtype::F32 => DType::F32,
            Dtype::F64 => DType::F64,
        }
    }
}

pub(crate) fn elements(shape: &[usize]) -> Result<usize, String> {
    shape
        .iter()
        .try_fold(1usize, |acc, &n| acc.checked_mul(n))
        .filter(|&n| n <= MAX_BLOCK_ELEMENTS)
        .ok_or_else(|| format!("a block of shape {shape:?} exceeds {MAX_BLOCK_ELEMENTS} elements"))
}

pub(crate) fn view<T: Float>(a: &WireArray) -> Result<courier_core::ndarray::CowArray<'_, T, IxDyn>, String> {
    a.cow::<T>().map_err(|e| e.to_string())
}

fn same_dtype(blocks: &[WireArray]) -> Result<DType, String> {
    let first = blocks.first().ok_or("needs at least one block")?.dtype();
    match blocks.iter().find(|b| b.dtype() != first) {
        Some(b) => Err(format!("blocks of different dtypes: {first} and {}", b.dtype())),
        None => Ok(first),
    }
}

/// Seeds the generator of one block from the array's seed and the block's number, so that
/// blocks differ and a block is the same wherever and however often it is made.
pub(crate) fn block_seed(seed: u64, block: u64) -> u64 {
    // splitmix64 of the pair.
    let mut z = seed ^ block.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

pub(crate) fn random<T: Float>(shape: &[usize], seed: u64, dist: Distribution) -> Result<ArrayD<T>, String> {
    let n = elements(shape)?;
    let mut rng = fastrand::Rng::with_seed(seed);
    let values: Vec<T> = match dist {
        Distribution::Uniform { low, high } => {
            if !(low.is_finite() && high.is_finite() && low <= high) {
                return Err(format!("uniform bounds [{low}, {high}) are not a finite range"));
            }
            (0..n).map(|_| T::of(low + (high - low) * rng.f64())).collect()
        }
        Distribution::Normal { mean, std } => {
            if !(mean.is_finite() && std.is_finite() && std >= 0.0) {
                return Err(format!("normal({mean}, {std}) is not a distribution"));
            }
            let mut v = Vec::with_capacity(n);
            while v.len() < n {
                // Box–Muller: two normals per two uniforms; 1 - f64() is in (0, 1].
                let (u1, u2) = (1.0 - rng.f64(), rng.f64());
                let r = (-2.0 * u1.ln()).sqrt();
                let t = std::f64::consts::TAU * u2;
                v.push(T::of(mean + std * r * t.cos()));
                if v.len() < n {
                    v.push(T::of(mean + std * r * t.sin()));
                }
            }
            v
        }
    };
    ArrayD::from_shape_vec(IxDyn(shape), values).map_err(|e| e.to_string())
}

fn reduce_keepdims<T: Float>(a: ArrayViewD<'_, T>, op: ReduceOp, axes: &[usize]) -> Result<ArrayD<T>, String> {
    let mut sorted = axes.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted.len() != axes.len() || sorted.last().is_some_and(|&ax| ax >= a.ndim()) {
        return Err(format!("axes {axes:?} are not distinct axes of a {}-d block", a.ndim()));
    }
    let mut r = a.to_owned();
    for &ax in sorted.iter().rev() {
        r = r.fold_axis(Axis(ax), op.identity::<T>(), |&acc, &x| op.combine(acc, x)).insert_axis(Axis(ax));
    }
    Ok(r)
}

fn combine<T: Float>(spec: &CombineSpec, blocks: &[WireArray]) -> Result<WireArray, String> {
    let mut it = blocks.iter();
    let first = it.next().ok_or("combine needs at least one part")?;
    let mut acc = view::<T>(first)?.into_owned();
    for b in it {
        let v = view::<T>(b)?;
        if v.shape() != acc.shape() {
            return Err(format!("parts of different shapes: {:?} and {:?}", acc.shape(), v.shape()));
        }
        Zip::from(&mut acc).and(&v).for_each(|a, &b| *a = spec.op.combine(*a, b));
    }
    if spec.scale != 1.0 {
        let s = T::of(spec.scale);
        acc.mapv_inplace(|x| x * s);
    }
    let Some(shape) = &spec.shape else { return Ok(WireArray::from_array(acc)) };
    if shape.iter().product::<usize>() != acc.len() {
        return Err(format!("cannot reshape {:?} to {shape:?}", acc.shape()));
    }
    let acc = acc.as_standard_layout().into_owned();
    let r = acc.into_shape_with_order(IxDyn(shape)).map_err(|e| e.to_string())?;
    Ok(WireArray::from_array(r))
}

fn matmul<T: Float>(a: &WireArray, b: &WireArray) -> Result<WireArray, String> {
    let (va, vb) = (view::<T>(a)?, view::<T>(b)?);
    let bad = || format!("cannot multiply blocks of shapes {:?} and {:?}", va.shape(), vb.shape());
    let inner_a = *va.shape().last().ok_or_else(bad)?;
    let inner_b = *vb.shape().first().ok_or_else(bad)?;
    if inner_a != inner_b || va.ndim() > 2 || vb.ndim() > 2 {
        return Err(bad());
    }
    let out: Vec<usize> = va.shape()[..va.ndim() - 1].iter().chain(&vb.shape()[1..]).copied().collect();
    elements(&out)?;
    let r: ArrayD<T> = match (va.ndim(), vb.ndim()) {
        (2, 2) => {
            let (x, y) = (dim2(&va)?, dim2(&vb)?);
            x.dot(&y).into_dyn()
        }
        (2, 1) => dim2(&va)?.dot(&dim1(&vb)?).into_dyn(),
        (1, 2) => dim1(&va)?.dot(&dim2(&vb)?).into_dyn(),
        _ => ArrayD::from_elem(IxDyn(&[]), dim1(&va)?.dot(&dim1(&vb)?)),
    };
    Ok(WireArray::from_array(r))
}

fn dim2<'a, T: Float>(
    v: &'a courier_core::ndarray::CowArray<'_, T, IxDyn>,
) -> Result<courier_core::ndarray::ArrayView2<'a, T>, String> {
    v.view().into_dimensionality::<Ix2>().map_err(|e| e.to_string())
}

fn dim1<'a, T: Float>(
    v: &'a courier_core::ndarray::CowArray<'_, T, IxDyn>,
) -> Result<courier_core::ndarray::ArrayView1<'a, T>, String> {
    v.view().into_dimensionality::<Ix1>().map_err(|e| e.to_string())
}

fn slice<T: Float>(a: &WireArray, ranges: &[(usize, usize)]) -> Result<WireArray, String> {
    let v = view::<T>(a)?;
    if ranges.len() != v.ndim() || ranges.iter().zip(v.shape()).any(|(&(lo, hi), &n)| lo >= hi || hi > n) {
        return Err(format!("ranges {ranges:?} do not fit a block of shape {:?}", v.shape()));
    }
    let mut s = v.view();
    for (ax, &(lo, hi)) in ranges.iter().enumerate() {
        s.slice_axis_inplace(Axis(ax), Slice::from(lo..hi));
    }
    Ok(WireArray::from_view(s))
}

fn assemble<T: Float>(spec: &AssembleSpec, pieces: &[WireArray]) -> Result<WireArray, String> {
    elements(&spec.shape)?;
    if spec.offsets.len() != pieces.len() {
        return Err(format!("{} offsets for {} pieces", spec.offsets.len(), pieces.len()));
    }
    let mut out = ArrayD::<T>::zeros(IxDyn(&spec.shape));
    let mut filled = 0usize;
    for (piece, offset) in pieces.iter().zip(&spec.offsets) {
        let v = view::<T>(piece)?;
        let fits = offset.len() == out.ndim()
            && v.ndim() == out.ndim()
            && offset
                .iter()
                .zip(v.shape())
                .zip(&spec.shape)
                .all(|((&o, &n), &m)| o.checked_add(n).is_some_and(|e| e <= m));
        if !fits {
            return Err(format!("a piece of shape {:?} at {offset:?} does not fit in {:?}", v.shape(), spec.shape));
        }
        let mut target = out.view_mut();
        for (ax, (&o, &n)) in offset.iter().zip(v.shape()).enumerate() {
            target.slice_axis_inplace(Axis(ax), Slice::from(o..o + n));
        }
        target.assign(&v);
        filled += v.len();
    }
    if filled != out.len() {
        return Err(format!("pieces cover {filled} of the {} elements of the block", out.len()));
    }
    Ok(WireArray::from_array(out))
}

fn transpose<T: Float>(a: &WireArray, axes: &[usize]) -> Result<WireArray, String> {
    let v = view::<T>(a)?;
    let mut seen = vec![false; v.ndim()];
    if axes.len() != v.ndim() || axes.iter().any(|&ax| ax >= seen.len() || std::mem::replace(&mut seen[ax], true)) {
        return Err(format!("{axes:?} is not a permutation of the axes of a {}-d block", v.ndim()));
    }
    Ok(WireArray::from_view(v.view().permuted_axes(IxDyn(axes))))
}

/// Registers the block functions (and the GLM functions) on `functions`.
pub(crate) fn register(f: &mut Functions) {
    f.register_blocking(names::RANDOM, |(shape, seed, dtype, dist): (Vec<usize>, u64, Dtype, Distribution)| {
        by_dtype!(dtype.wire(), T => random::<T>(&shape, seed, dist).map(WireArray::from_array))
    });
    f.register_blocking(names::FULL, |(shape, value, dtype): (Vec<usize>, f64, Dtype)| {
        elements(&shape)?;
        by_dtype!(dtype.wire(), T => Ok(WireArray::from_array(ArrayD::<T>::from_elem(IxDyn(&shape), T::of(value)))))
    });
    f.register_blocking(names::UNARY, |(op, a): (UnaryOp, WireArray)| {
        by_dtype!(a.dtype(), T => Ok(WireArray::from_array(view::<T>(&a)?.mapv(|x| op.apply(x)))))
    });
    f.register_blocking(names::BINARY, |(op, a, b): (BinaryOp, WireArray, WireArray)| {
        if a.shape() != b.shape() || a.dtype() != b.dtype() {
            return Err(format!(
                "blocks do not align: {:?} {} and {:?} {}",
                a.shape(),
                a.dtype(),
                b.shape(),
                b.dtype()
            ));
        }
        by_dtype!(a.dtype(), T => {
            let (x, y) = (view::<T>(&a)?, view::<T>(&b)?);
            Ok(WireArray::from_array(Zip::from(&x).and(&y).map_collect(|&p, &q| op.apply(p, q))))
        })
    });
    f.register_blocking(names::SCALAR, |(op, a, s, left): (BinaryOp, WireArray, f64, bool)| {
        by_dtype!(a.dtype(), T => {
            let s = T::of(s);
            let v = view::<T>(&a)?;
            Ok(WireArray::from_array(if left { v.mapv(|x| op.apply(s, x)) } else { v.mapv(|x| op.apply(x, s)) }))
        })
    });
    f.register_blocking(names::REDUCE, |(op, axes, a): (ReduceOp, Vec<usize>, WireArray)| {
        by_dtype!(a.dtype(), T => Ok(WireArray::from_array(reduce_keepdims(view::<T>(&a)?.view(), op, &axes)?)))
    });
    f.register_blocking(
        names::COMBINE,
        |w: WithBlocks<CombineSpec>| by_dtype!(same_dtype(&w.blocks)?, T => combine::<T>(&w.params, &w.blocks)),
    );
    f.register_blocking(
        names::MATMUL,
        |(a, b): (WireArray, WireArray)| by_dtype!(same_dtype(&[a.clone(), b.clone()])?, T => matmul::<T>(&a, &b)),
    );
    f.register_blocking(
        names::TRANSPOSE,
        |(axes, a): (Vec<usize>, WireArray)| by_dtype!(a.dtype(), T => transpose::<T>(&a, &axes)),
    );
    f.register_blocking(
        names::SLICE,
        |(ranges, a): (Vec<(usize, usize)>, WireArray)| by_dtype!(a.dtype(), T => slice::<T>(&a, &ranges)),
    );
    f.register_blocking(names::ASSEMBLE, |w: WithBlocks<AssembleSpec>| {
        if w.blocks.iter().any(|b| b.dtype() != w.params.dtype.wire()) {
            return Err(format!("pieces must all be {:?}", w.params.dtype));
        }
        by_dtype!(w.params.dtype.wire(), T => assemble::<T>(&w.params, &w.blocks))
    });
    f.register_blocking(
        names::GLM_SUMS,
        |(family, what, x, y, beta): (Family, Eval, WireArray, WireArray, Vec<f64>)| {
            crate::glm::chunk_sums_wire(family, what, &x, &y, &beta)
        },
    );
    f.register_blocking(names::GLM_DESIGN, |(info, seed, col_scale): (BlockInfo, u64, f64)| {
        let block = crate::glm::design_block(&info.shape, block_seed(seed, info.number as u64), col_scale)?;
        Ok(WireArray::from_array(block))
    });
    f.register_blocking(
        names::GLM_LABELS,
        |(family, x, beta, noise, seed): (Family, WireArray, Vec<f64>, f64, u64)| {
            let x = x.cow::<f64>().map_err(|e| e.to_string())?;
            let x = x.view().into_dimensionality::<Ix2>().map_err(|e| e.to_string())?;
            Ok(WireArray::from_array(crate::glm::synthetic_labels(family, x, &beta, noise, seed)?))
        },
    );
}

#[cfg(test)]
mod tests {
    use courier_core::ndarray::array;

    use super::*;

    fn call(name: &str, args: Vec<Payload>) -> Result<WireArray, String> {
        crate::functions().call(name, args)?.decode::<WireArray>().map_err(|e| e.to_string())
    }

    fn p<T: Serialize>(v: &T) -> Payload {
        Payload::new(v).unwrap()
    }

    #[test]
    fn hostile_parameters_are_errors_not_panics() {
        let a = WireArray::from_array(array![[1.0f64, 2.0], [3.0, 4.0]].into_dyn());
        let huge = vec![1usize << 20, 1 << 20];
        assert!(
            call(
                names::RANDOM,
                vec![p(&huge), p(&1u64), p(&Dtype::F64), p(&Distribution::Normal { mean: 0.0, std: 1.0 })]
            )
            .is_err()
        );
        assert!(call(names::FULL, vec![p(&vec![usize::MAX, 2]), p(&1.0), p(&Dtype::F32)]).is_err());
        assert!(call(names::SLICE, vec![p(&vec![(0usize, 3usize), (0, 1)]), p(&a)]).is_err());
        assert!(call(names::SLICE, vec![p(&vec![(1usize, 1usize), (0, 1)]), p(&a)]).is_err());
        assert!(call(names::TRANSPOSE, vec![p(&vec![0usize, 0]), p(&a)]).is_err());
        assert!(call(names::REDUCE, vec![p(&ReduceOp::Sum), p(&vec![2usize]), p(&a)]).is_err());
        assert!(call(names::REDUCE, vec![p(&ReduceOp::Sum), p(&vec![0usize, 0]), p(&a)]).is_err());
        let spec = AssembleSpec { dtype: Dtype::F64, shape: vec![2, 3], offsets: vec![vec![0, 2]] };
        assert!(call(names::ASSEMBLE, vec![p(&spec), p(&a)]).is_err(), "piece out of bounds");
        let spec = AssembleSpec { dtype: Dtype::F64, shape: vec![2, 3], offsets: vec![vec![0, 0]] };
        assert!(call(names::ASSEMBLE, vec![p(&spec), p(&a)]).is_err(), "a hole is left");
        let ints = WireArray::from_array(array![1i32, 2].into_dyn());
        assert!(call(names::UNARY, vec![p(&UnaryOp::Exp), p(&ints)]).is_err());
        let v = WireArray::from_array(array![1.0f64, 2.0, 3.0].into_dyn());
        assert!(call(names::MATMUL, vec![p(&a), p(&v)]).is_err());
        assert!(call(names::BINARY, vec![p(&BinaryOp::Add), p(&a), p(&v)]).is_err());
        let spec = CombineSpec { op: ReduceOp::Sum, scale: 1.0, shape: Some(vec![5]) };
        assert!(call(names::COMBINE, vec![p(&spec), p(&a)]).is_err());
    }

    #[test]
    fn random_blocks_are_reproducible_and_shaped() {
        let args =
            || vec![p(&vec![3usize, 5]), p(&7u64), p(&Dtype::F32), p(&Distribution::Uniform { low: 2.0, high: 3.0 })];
        let (a, b) = (call(names::RANDOM, args()).unwrap(), call(names::RANDOM, args()).unwrap());
        assert_eq!(a, b);
        assert_eq!((a.shape(), a.dtype()), (&[3usize, 5][..], DType::F32));
        assert!(a.view::<f32>().unwrap().iter().all(|&x| (2.0..3.0).contains(&x)));
        let n = random::<f64>(&[20_000], 3, Distribution::Normal { mean: 1.0, std: 2.0 }).unwrap();
        let mean = n.mean().unwrap();
        let sd = n.mapv(|x| (x - mean).powi(2)).mean().unwrap().sqrt();
        assert!((mean - 1.0).abs() < 0.1 && (sd - 2.0).abs() < 0.1, "{mean} {sd}");
    }

    proptest::proptest! {
        /// Whatever the parameters (shapes, ranges, offsets, axes, permutations), a block
        /// function returns a result or an error: it never panics.
        #[test]
        fn hostile_parameters_never_panic(
            shape in proptest::collection::vec(0usize..5, 0..4),
            other in proptest::collection::vec(0usize..5, 0..4),
            ranges in proptest::collection::vec((0usize..7, 0usize..7), 0..4),
            offsets in proptest::collection::vec(proptest::collection::vec(0usize..9, 0..4), 0..3),
            axes in proptest::collection::vec(0usize..5, 0..4),
            scale in proptest::num::f64::ANY,
        ) {
            let n: usize = shape.iter().product();
            let a = WireArray::from_array(ArrayD::from_shape_vec(IxDyn(&shape), (0..n).map(|i| i as f64).collect()).unwrap());
            let m: usize = other.iter().product();
            let b = WireArray::from_array(ArrayD::from_shape_vec(IxDyn(&other), vec![1.5f64; m]).unwrap());
            let _ = slice::<f64>(&a, &ranges);
            let _ = transpose::<f64>(&a, &axes);
            let _ = matmul::<f64>(&a, &b);
            let _ = reduce_keepdims(view::<f64>(&a).unwrap().view(), ReduceOp::Max, &axes);
            let spec = CombineSpec { op: ReduceOp::Sum, scale, shape: Some(other.clone()) };
            let _ = combine::<f64>(&spec, &[a.clone(), b.clone()]);
            let _ = combine::<f64>(&spec, &[a.clone(), a.clone()]);
            let spec = AssembleSpec { dtype: Dtype::F64, shape: other.clone(), offsets: offsets.clone() };
            let pieces: Vec<WireArray> = offsets.iter().map(|_| a.clone()).collect();
            let _ = assemble::<f64>(&spec, &pieces);
            let _ = random::<f32>(&shape, 1, Distribution::Normal { mean: scale, std: scale.abs() });
        }
    }

    #[test]
    fn sigmoid_is_stable_at_the_extremes() {
        assert_eq!(sigmoid(-1000.0f64), 0.0);
        assert_eq!(sigmoid(1000.0f64), 1.0);
        assert!((sigmoid(0.3f32) - 0.574_442_5).abs() < 1e-6);
    }
}
