//! The chunked array: a shape, a chunking, and one block per chunk that is either already in
//! worker memory (a future) or a task yet to run (a node of a lazy graph).

use std::marker::PhantomData;
use std::sync::Arc;

use courier_core::WireArray;
use courier_core::ndarray::{ArrayD, ArrayView, Axis, Dimension, IxDyn, Slice};
use courier_runtime::{ArgSpec, Client, Graph, Key, TaskFuture, arg};
use serde::Serialize;

use crate::kernels::{Distribution, Float, block_seed, names};
use crate::{ArrayError, Chunks};

/// One block of a chunked array.
#[derive(Clone)]
pub(crate) enum Block {
    /// In worker memory (persisted or scattered); the future keeps it there.
    Stored(TaskFuture<WireArray>),
    /// To be computed by a task.
    Task(Arc<Node>),
}

/// A task of a lazy graph: a registered function and its arguments.
pub(crate) struct Node {
    pub(crate) func: String,
    pub(crate) args: Vec<Input>,
}

/// An argument of a [`Node`].
#[derive(Clone)]
pub(crate) enum Input {
    Block(Block),
    Value(ArgSpec),
}

impl Block {
    pub(crate) fn task(func: &str, args: Vec<Input>) -> Block {
        Block::Task(Arc::new(Node { func: func.to_owned(), args }))
    }
}

impl From<Block> for Input {
    fn from(b: Block) -> Input {
        Input::Block(b)
    }
}

/// A value argument.
pub(crate) fn val<V: Serialize + ?Sized>(v: &V) -> Input {
    Input::Value(arg(v))
}

/// Where a block of a chunk is (the first argument of a [`ChunkedArray::from_fn`] function).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BlockInfo {
    /// The block's index in the block grid.
    pub index: Vec<usize>,
    /// Its first element's index in the array.
    pub offset: Vec<usize>,
    /// Its shape.
    pub shape: Vec<usize>,
    /// The whole array's shape.
    pub array_shape: Vec<usize>,
    /// The block's number (C order over the grid).
    pub number: usize,
}

/// An n-d array of `T` (f32 or f64) cut into blocks that live on the workers of a cluster.
///
/// Operations build a task graph and return a new array at once; nothing runs until
/// [`compute`](Self::compute) (bring the result back as an `ndarray`) or
/// [`persist`](Self::persist) (run it and keep the blocks in worker memory, so that later
/// graphs start from them). Cloning is cheap and shares the blocks.
pub struct ChunkedArray<T: Float> {
    pub(crate) client: Client,
    pub(crate) chunks: Chunks,
    pub(crate) blocks: Vec<Block>,
    pub(crate) fan_in: usize,
    pub(crate) _t: PhantomData<fn() -> T>,
}

impl<T: Float> Clone for ChunkedArray<T> {
    fn clone(&self) -> Self {
        ChunkedArray {
            client: self.client.clone(),
            chunks: self.chunks.clone(),
            blocks: self.blocks.clone(),
            fan_in: self.fan_in,
            _t: PhantomData,
        }
    }
}

impl<T: Float> std::fmt::Debug for ChunkedArray<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkedArray")
            .field("dtype", &T::KIND)
            .field("shape", &self.shape())
            .field("chunks", &self.chunks.sizes())
            .field("persisted", &self.is_persisted())
            .finish()
    }
}

/// Default number of partial results joined per step of a tree reduction.
pub const DEFAULT_FAN_IN: usize = 32;

impl<T: Float> ChunkedArray<T> {
    pub(crate) fn with_blocks(&self, chunks: Chunks, blocks: Vec<Block>) -> Self {
        debug_assert_eq!(chunks.nblocks(), blocks.len());
        ChunkedArray { client: self.client.clone(), chunks, blocks, fan_in: self.fan_in, _t: PhantomData }
    }

    fn new(client: &Client, chunks: Chunks, blocks: Vec<Block>) -> Self {
        ChunkedArray { client: client.clone(), chunks, blocks, fan_in: DEFAULT_FAN_IN, _t: PhantomData }
    }

    /// Cuts `a` into chunks of `chunk` and scatters the blocks over the workers.
    pub async fn from_ndarray<D: Dimension>(
        client: &Client,
        a: ArrayView<'_, T, D>,
        chunk: &[usize],
    ) -> Result<Self, ArrayError> {
        let chunks = Chunks::regular(a.shape(), chunk)?;
        let a = a.into_dyn();
        let values: Vec<WireArray> = (0..chunks.nblocks())
            .map(|i| {
                let mut v = a.view();
                for (ax, r) in chunks.block_ranges(&chunks.index(i)).into_iter().enumerate() {
                    v.slice_axis_inplace(Axis(ax), Slice::from(r));
                }
                WireArray::from_view(v)
            })
            .collect();
        let futures = client.scatter(&values).await?;
        Ok(Self::new(client, chunks, futures.into_iter().map(Block::Stored).collect()))
    }

    /// Random blocks drawn on the workers from `dist`; the same `seed` gives the same array
    /// (each block has its own stream, derived from the seed and the block's number).
    pub fn random(
        client: &Client,
        shape: &[usize],
        chunk: &[usize],
        seed: u64,
        dist: Distribution,
    ) -> Result<Self, ArrayError> {
        let chunks = Chunks::regular(shape, chunk)?;
        let blocks = (0..chunks.nblocks())
            .map(|i| {
                let shape = chunks.block_shape(&chunks.index(i));
                let args = vec![val(&shape), val(&block_seed(seed, i as u64)), val(&T::KIND), val(&dist)];
                Block::task(names::RANDOM, args)
            })
            .collect();
        Ok(Self::new(client, chunks, blocks))
    }

    /// Every element `value`, made on the workers.
    pub fn full(client: &Client, shape: &[usize], chunk: &[usize], value: f64) -> Result<Self, ArrayError> {
        let chunks = Chunks::regular(shape, chunk)?;
        let blocks = (0..chunks.nblocks())
            .map(|i| {
                let shape = chunks.block_shape(&chunks.index(i));
                Block::task(names::FULL, vec![val(&shape), val(&value), val(&T::KIND)])
            })
            .collect();
        Ok(Self::new(client, chunks, blocks))
    }

    /// Each block made by the registered function `func`, called as `func(info, args…)` with a
    /// [`BlockInfo`] first; it must return a block of `info.shape` and of this dtype.
    pub fn from_fn(
        client: &Client,
        shape: &[usize],
        chunk: &[usize],
        func: &str,
        args: Vec<ArgSpec>,
    ) -> Result<Self, ArrayError> {
        let chunks = Chunks::regular(shape, chunk)?;
        let blocks = (0..chunks.nblocks())
            .map(|i| {
                let index = chunks.index(i);
                let info = BlockInfo {
                    offset: chunks.block_ranges(&index).iter().map(|r| r.start).collect(),
                    shape: chunks.block_shape(&index),
                    array_shape: shape.to_vec(),
                    number: i,
                    index,
                };
                let mut inputs = vec![val(&info)];
                inputs.extend(args.iter().cloned().map(Input::Value));
                Block::task(func, inputs)
            })
            .collect();
        Ok(Self::new(client, chunks, blocks))
    }

    /// Applies the registered function `func` to every block, as `func(block, args…)`; it must
    /// return a block of the same shape and dtype.
    pub fn map_blocks(&self, func: &str, args: Vec<ArgSpec>) -> Self {
        let blocks = self
            .blocks
            .iter()
            .map(|b| {
                let mut inputs = vec![Input::Block(b.clone())];
                inputs.extend(args.iter().cloned().map(Input::Value));
                Block::task(func, inputs)
            })
            .collect();
        self.with_blocks(self.chunks.clone(), blocks)
    }

    /// The shape.
    pub fn shape(&self) -> Vec<usize> {
        self.chunks.shape()
    }

    /// The rank.
    pub fn ndim(&self) -> usize {
        self.chunks.ndim()
    }

    /// The chunking.
    pub fn chunks(&self) -> &Chunks {
        &self.chunks
    }

    /// The client the array's graphs go to.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Partial results joined per step of this array's tree reductions (default
    /// [`DEFAULT_FAN_IN`], at least 2).
    pub fn with_fan_in(mut self, fan_in: usize) -> Self {
        self.fan_in = fan_in.max(2);
        self
    }

    /// True when every block is in worker memory (nothing left to compute).
    pub fn is_persisted(&self) -> bool {
        self.blocks.iter().all(|b| matches!(b, Block::Stored(_)))
    }

    /// The futures of the blocks (C order over the grid), or `None` unless persisted. A task
    /// given a block's future as an argument runs where the block is (data locality).
    pub fn block_futures(&self) -> Option<Vec<TaskFuture<WireArray>>> {
        self.blocks
            .iter()
            .map(|b| match b {
                Block::Stored(f) => Some(f.clone()),
                Block::Task(_) => None,
            })
            .collect()
    }

    /// The block at grid index `idx` as an argument of a task of your own: its future if
    /// stored, else nothing (persist first).
    pub fn block_arg(&self, idx: &[usize]) -> Option<ArgSpec> {
        match &self.blocks[self.chunks.linear(idx)] {
            Block::Stored(f) => Some(f.arg()),
            Block::Task(_) => None,
        }
    }

    /// Tasks this array's graph would submit (0 once persisted).
    pub fn pending_tasks(&self) -> usize {
        let (graph, _) = build(&self.blocks);
        graph.len()
    }

    /// Runs the graph and keeps the blocks in worker memory: the returned array's blocks are
    /// futures, and graphs built on it start from them. Returns once submitted; its blocks
    /// are ready when [`wait`](Self::wait) returns.
    pub async fn persist(&self) -> Result<Self, ArrayError> {
        let futures = self.submit().await?;
        Ok(self.with_blocks(self.chunks.clone(), futures.into_iter().map(Block::Stored).collect()))
    }

    /// Waits until every block is in worker memory (or one failed).
    pub async fn wait(&self) -> Result<(), ArrayError> {
        for b in &self.blocks {
            if let Block::Stored(f) = b {
                f.wait().await?;
            }
        }
        Ok(())
    }

    /// Runs the graph and brings the whole array back.
    pub async fn compute(&self) -> Result<ArrayD<T>, ArrayError> {
        let futures = self.submit().await?;
        let blocks = self.client.gather(&futures).await?;
        let mut out = ArrayD::<T>::zeros(IxDyn(&self.shape()));
        for (i, b) in blocks.iter().enumerate() {
            let idx = self.chunks.index(i);
            let v = b.cow::<T>()?;
            if v.shape() != self.chunks.block_shape(&idx).as_slice() {
                return Err(ArrayError::Data(format!(
                    "block {idx:?} came back with shape {:?}, expected {:?}",
                    v.shape(),
                    self.chunks.block_shape(&idx)
                )));
            }
            let mut target = out.view_mut();
            for (ax, r) in self.chunks.block_ranges(&idx).into_iter().enumerate() {
                target.slice_axis_inplace(Axis(ax), Slice::from(r));
            }
            target.assign(&v);
        }
        Ok(out)
    }

    /// A 0-d array's single value (after a full reduction).
    pub async fn compute_scalar(&self) -> Result<T, ArrayError> {
        let a = self.compute().await?;
        match a.ndim() {
            0 => Ok(a[IxDyn(&[])]),
            n => Err(ArrayError::shape(format!("compute_scalar on a {n}-d array"))),
        }
    }

    /// Submits whatever is not yet stored; one future per block.
    async fn submit(&self) -> Result<Vec<TaskFuture<WireArray>>, ArrayError> {
        let (graph, outs) = build(&self.blocks);
        let keys: Vec<Key> =
            outs.iter().filter_map(|o| if let Out::Key(k) = o { Some(k.clone()) } else { None }).collect();
        let mut submitted = self.client.persist::<WireArray>(&graph, &keys).await?.into_iter();
        outs.into_iter()
            .map(|o| match o {
                Out::Stored(f) => Ok(f),
                Out::Key(_) => submitted.next().ok_or_else(|| ArrayError::Data("a block's future is missing".into())),
            })
            .collect()
    }
}

enum Out {
    Stored(TaskFuture<WireArray>),
    Key(Key),
}

/// The graph of every task the blocks need, each node once (nodes are shared by pointer),
/// built with an explicit work list (graphs can be deep: a long chain of operations).
fn build(blocks: &[Block]) -> (Graph, Vec<Out>) {
    let mut graph = Graph::new();
    let mut keys: std::collections::HashMap<*const Node, Key> = std::collections::HashMap::new();
    let mut stack: Vec<(Arc<Node>, bool)> = Vec::new();
    let mut outs = Vec::with_capacity(blocks.len());
    for b in blocks {
        let node = match b {
            Block::Stored(f) => {
                outs.push(Out::Stored(f.clone()));
                continue;
            }
            Block::Task(n) => n,
        };
        stack.push((node.clone(), false));
        while let Some((n, expanded)) = stack.pop() {
            let ptr = Arc::as_ptr(&n);
            if keys.contains_key(&ptr) {
                continue;
            }
            if !expanded {
                stack.push((n.clone(), true));
                for a in &n.args {
                    if let Input::Block(Block::Task(c)) = a
                        && !keys.contains_key(&Arc::as_ptr(c))
                    {
                        stack.push((c.clone(), false));
                    }
                }
                continue;
            }
            let args = n
                .args
                .iter()
                .map(|a| match a {
                    Input::Value(v) => v.clone(),
                    Input::Block(Block::Stored(f)) => f.arg(),
                    Input::Block(Block::Task(c)) => ArgSpec::Key(keys[&Arc::as_ptr(c)].clone()),
                })
                .collect();
            let key = graph.task(&n.func, args);
            keys.insert(ptr, key);
        }
        outs.push(Out::Key(keys[&Arc::as_ptr(node)].clone()));
    }
    (graph, outs)
}
