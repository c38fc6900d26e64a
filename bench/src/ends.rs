//! Each end of a measured pair on a thread of its own, as two processes would be.
//!
//! A benchmark that drives its sender from `block_on`'s future on a multi-thread runtime pays
//! a hand-off at every wait: the worker thread that reads the event wakes the thread in
//! `block_on`. Socket transports wait for their socket buffers again and again and paid far
//! more for it than shm:// (by hand, `courier perf` between two processes: tcp:// 8 MiB 2.9 →
//! 3.55 GiB/s without the hand-off, shm:// 11.5 → 11.8; `courier compare`'s unix:// 8 MiB 2.8
//! → 7.8 GiB/s). Spawning both ends as tasks of one multi-thread runtime removes the hand-off
//! but lets both ends land on one worker at times (the woken task goes to the waker's own
//! queue), and then they share a core: tcp:// 1 MiB read 2.5 GiB/s instead of 5.1, in rounds
//! swinging from one to the other. So each end gets a runtime with one worker thread, which
//! runs its tasks and reads its own events: the connecting end's sockets are registered on the
//! sender's runtime, the accepting end's on the receiver's.

use std::future::Future;
use std::io;

use courier_core::{Comm, CommConfig, CommError, Registry};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;

use crate::raw::RawPair;

/// Two single-thread runtimes: one for the sending (connecting) end, one for the receiving
/// (accepting) end. Drop it outside any runtime.
#[derive(Debug)]
pub struct Ends {
    sender: Runtime,
    receiver: Runtime,
}

fn one_thread(name: &str) -> io::Result<Runtime> {
    tokio::runtime::Builder::new_multi_thread().worker_threads(1).thread_name(name).enable_all().build()
}

impl Ends {
    /// Starts the two runtimes.
    pub fn new() -> io::Result<Ends> {
        Ok(Ends { sender: one_thread("bench-sender")?, receiver: one_thread("bench-receiver")? })
    }

    /// Runs `work` on the sender's thread and waits for it.
    pub async fn on_sender<T: Send + 'static>(&self, work: impl Future<Output = T> + Send + 'static) -> T {
        self.sender.spawn(work).await.expect("a task on the sender's thread panicked")
    }

    /// Runs `work` on this thread (waiting for the ends' tasks, say), for code outside a
    /// runtime.
    pub fn block_on<F: Future>(&self, work: F) -> F::Output {
        self.sender.block_on(work)
    }

    /// Runs `work` on the sender's thread and waits for it, for code outside a runtime.
    pub fn run_sender<T: Send + 'static>(&self, work: impl Future<Output = T> + Send + 'static) -> T {
        self.sender.block_on(self.sender.spawn(work)).expect("a task on the sender's thread panicked")
    }

    /// Runs `work` on the receiver's thread and waits for it.
    pub async fn on_receiver<T: Send + 'static>(&self, work: impl Future<Output = T> + Send + 'static) -> T {
        self.receiver.spawn(work).await.expect("a task on the receiver's thread panicked")
    }

    /// Starts `work` on the receiver's thread; its handle gives the result.
    pub fn spawn_receiver<T: Send + 'static>(
        &self,
        work: impl Future<Output = T> + Send + 'static,
    ) -> tokio::task::JoinHandle<T> {
        self.receiver.spawn(work)
    }

    /// A connected comm pair on `url`: (connecting end, on the sender's thread; accepting end,
    /// on the receiver's).
    pub async fn pair(&self, registry: &Registry, url: &str) -> Result<(Comm, Comm), CommError> {
        self.pair_with(registry, url, &CommConfig::default()).await
    }

    /// [`Ends::pair`] with `config` on both ends.
    pub async fn pair_with(
        &self,
        registry: &Registry,
        url: &str,
        config: &CommConfig,
    ) -> Result<(Comm, Comm), CommError> {
        let (r, url, c) = (registry.clone(), url.to_owned(), config.clone());
        let mut listener = self.on_receiver(async move { r.listen_with(&url, &c).await }).await?;
        let contact = listener.contact_address().to_string();
        let accepted = self.receiver.spawn(async move { listener.accept().await });
        let (r, c) = (registry.clone(), config.clone());
        let connected = self.on_sender(async move { r.connect_with(&contact, &c).await }).await;
        let accepted = accepted.await.expect("a task on the receiver's thread panicked");
        Ok((connected?, accepted?))
    }

    /// The raw baseline's socket pair, split the same way.
    pub async fn raw_pair(&self) -> io::Result<RawPair> {
        let listener = self.on_receiver(TcpListener::bind("127.0.0.1:0")).await?;
        let addr = listener.local_addr()?;
        let accepted = self.receiver.spawn(async move { listener.accept().await });
        let client = self.on_sender(TcpStream::connect(addr)).await?;
        let server = accepted.await.expect("a task on the receiver's thread panicked")?.0;
        client.set_nodelay(true)?;
        server.set_nodelay(true)?;
        Ok(RawPair { client, server })
    }
}
