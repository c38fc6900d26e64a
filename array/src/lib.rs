//! # courier-array
//!
//! Chunked n-d arrays on a Courier cluster, and generalized linear models fitted on them.
//!
//! A [`ChunkedArray`] is an n-d array of f32 or f64 described by its shape and [`Chunks`];
//! each block is a task future. Operations (elementwise arithmetic, [`map_blocks`]
//! with a registered function, tree reductions along axes, `dot`, transposes, `rechunk`) build
//! a task graph and return at once. Two verbs run it:
//!
//! - [`compute`](ChunkedArray::compute) brings the result back as an `ndarray`;
//! - [`persist`](ChunkedArray::persist) keeps the blocks in worker memory, so later graphs
//!   start from them: the verb iterative algorithms are built on (see [`glm`]).
//!
//! The same code runs on a `LocalCluster` in this process (blocks are handed over, never
//! serialized) and on worker processes over any transport. Workers need the block functions:
//! `courier worker` ships them; a worker binary of your own gets them with one call,
//! `functions.extend(courier_array::functions())`.
//!
//! ```
//! use courier_array::{ChunkedArray, Distribution};
//! use courier_runtime::{Functions, LocalCluster};
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let registry = courier_core::Registry::new().with(std::sync::Arc::new(courier_inproc::InprocTransport::new()));
//! let mut functions = Functions::with_builtins();
//! functions.extend(courier_array::functions());
//! let cluster = LocalCluster::inproc(registry, 2, functions).await?;
//! let client = cluster.client().await?;
//!
//! let uniform = Distribution::Uniform { low: 0.0, high: 1.0 };
//! let x = ChunkedArray::<f64>::random(&client, &[1000, 20], &[300, 20], 7, uniform)?.persist().await?;
//! let col_means = x.mean(&[0])?.compute().await?; // a tree reduction over 4 row blocks
//! assert_eq!(col_means.shape(), &[20]);
//! assert!(col_means.iter().all(|m| (m - 0.5).abs() < 0.1));
//! let gram = x.t().dot(&x)?.compute().await?; // Xᵀ X: 4 block products summed in a tree
//! assert_eq!(gram.shape(), &[20, 20]);
//! # Ok(())
//! # }
//! ```
//!
//! [`map_blocks`]: ChunkedArray::map_blocks
//!
//! ## Safety of the block functions
//!
//! Like the runtime's built-ins, the block functions cannot harm a worker: every shape and
//! index in their arguments is checked, outputs are bounded to [`MAX_BLOCK_ELEMENTS`], and a
//! mismatch is the task's error.

mod array;
mod chunks;
pub mod glm;
mod kernels;
mod ops;

pub use array::{BlockInfo, ChunkedArray, DEFAULT_FAN_IN};
pub use chunks::Chunks;
pub use kernels::{BinaryOp, Distribution, Dtype, Float, MAX_BLOCK_ELEMENTS, ReduceOp, UnaryOp};

use courier_core::CommError;
use courier_runtime::{ClusterError, Functions, TaskError};

/// Why an array operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ArrayError {
    /// Shapes, chunks or axes that do not fit together.
    #[error("shape error: {0}")]
    Shape(String),
    /// A task of the graph failed (its error names the block function's message).
    #[error(transparent)]
    Task(#[from] TaskError),
    /// The comm to the cluster failed.
    #[error(transparent)]
    Comm(#[from] CommError),
    /// Scattering the blocks failed.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// A result was not what it should be, or a solver could not go on.
    #[error("{0}")]
    Data(String),
}

impl ArrayError {
    pub(crate) fn shape(msg: impl Into<String>) -> Self {
        ArrayError::Shape(msg.into())
    }
}

/// The block functions chunked arrays and the GLM solvers run on workers (names start with
/// `array.` and `glm.`). Add them to a worker's functions with `Functions::extend`.
pub fn functions() -> Functions {
    let mut f = Functions::new();
    kernels::register(&mut f);
    f
}
