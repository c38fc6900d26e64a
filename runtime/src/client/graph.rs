//! Graphs of tasks submitted at once ([`Client::persist`](super::Client::persist) and
//! [`Client::compute`](super::Client::compute)).

use crate::collections::Map;
use crate::protocol::{ArgSpec, Key, TaskSpec};

/// A graph of tasks to submit at once. Tasks may name each other's keys as arguments, in any
/// order; the graph is sent dependencies first.
#[derive(Debug, Clone)]
pub struct Graph {
    tasks: Vec<TaskSpec>,
    prefix: u64,
}

impl Default for Graph {
    fn default() -> Self {
        Graph::new()
    }
}

impl Graph {
    /// An empty graph.
    pub fn new() -> Self {
        Graph { tasks: Vec::new(), prefix: getrandom::u64().unwrap_or_else(|_| fastrand::u64(..)) }
    }

    /// Adds a task; returns its key, usable as an argument via [`ArgSpec::Key`].
    pub fn task(&mut self, func: &str, args: Vec<ArgSpec>) -> Key {
        let key: Key = format!("{func}-g{:016x}-{}", self.prefix, self.tasks.len()).into();
        self.tasks.push(TaskSpec { key: key.clone(), func: func.into(), args, retries: 0, wanted: false });
        key
    }

    /// Tasks in the graph.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// True when the graph has no task.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// The specs, dependencies before dependents, with `wanted` set for `outputs`. The order
    /// is depth first: a task comes as soon as its last dependency has (so a reduction's step
    /// follows its inputs, not every leaf of the graph), which keeps the edges between
    /// submission batches few (see `Client::persist`) and lets results be forgotten early. A
    /// cycle is left in place for the scheduler to reject.
    pub(crate) fn specs(&self, outputs: &[Key]) -> Vec<TaskSpec> {
        let outputs: crate::collections::Set<&str> = outputs.iter().map(|k| &**k).collect();
        let index: Map<&str, usize> = self.tasks.iter().enumerate().map(|(i, t)| (&*t.key, i)).collect();
        let mut indegree = vec![0usize; self.tasks.len()];
        let mut children: Vec<Vec<usize>> = vec![Vec::new(); self.tasks.len()];
        for (i, t) in self.tasks.iter().enumerate() {
            for d in t.dependencies() {
                if let Some(&j) = index.get(&*d) {
                    indegree[i] += 1;
                    children[j].push(i);
                }
            }
        }
        // A stack: the first roots come first, and a task made ready is taken next.
        let mut ready: Vec<usize> = (0..self.tasks.len()).rev().filter(|&i| indegree[i] == 0).collect();
        let mut order = Vec::with_capacity(self.tasks.len());
        while let Some(i) = ready.pop() {
            order.push(i);
            for &c in children[i].iter().rev() {
                indegree[c] -= 1;
                if indegree[c] == 0 {
                    ready.push(c);
                }
            }
        }
        let mut placed = vec![false; self.tasks.len()];
        for &i in &order {
            placed[i] = true;
        }
        order.extend((0..self.tasks.len()).filter(|&i| !placed[i]));
        order
            .into_iter()
            .map(|i| {
                let mut t = self.tasks[i].clone();
                t.wanted = outputs.contains(&*t.key);
                t
            })
            .collect()
    }
}
