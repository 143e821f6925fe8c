//! Serving threads: the public listener's connections run on threads of their own, each with a
//! single-threaded tokio runtime, so a request stays on one core from its first byte to its
//! last.
//!
//! On tokio's shared multi-threaded runtime a request moves between workers: the task that
//! wakes it (the Redis connection's, say) runs wherever it runs, and the request follows, with
//! its memory allocated on one core and freed on the other (glibc's arena locks) and a worker
//! parked and unparked on each move. Here the accept loop hands each new connection to the
//! serving thread holding the fewest, and everything that connection's requests do — the
//! guest, the host's capability calls, their timers — runs on that thread. Backends that keep
//! a connection per runtime (Redis, [`agora_redis::LazyRedis`]) give each serving thread its
//! own, so a cached read's reply wakes the request on its own thread.
//!
//! The rest of the host (subscriptions, outbox relays, the admin and metrics listeners) stays
//! on the shared runtime. The threads stop when [`ServingThreads::stop`] is called, after the
//! host has drained and flushed its outboxes: connections a serving thread opened to a backend
//! (a pooled PostgreSQL connection, say) are registered with that thread's runtime and must
//! outlive every other user of the pool that is still draining.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;

/// What a serving thread runs: a closure called inside its runtime (so sockets are registered
/// with that runtime's reactor) that returns the connection's task.
type Job = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// How long a stopping serving thread waits for the blocking work its requests started.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

struct Thread {
    jobs: mpsc::UnboundedSender<Job>,
    /// Connections this thread serves now.
    load: Arc<AtomicUsize>,
    handle: std::thread::JoinHandle<()>,
}

/// A set of serving threads; empty means every connection runs on the caller's runtime.
pub struct ServingThreads {
    threads: Vec<Thread>,
    next: AtomicUsize,
}

/// The number of serving threads by default: one per core this process may use.
pub fn default_count() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

impl ServingThreads {
    /// Starts `count` serving threads (`0`: none — connections then run on the runtime that
    /// accepts them). Fails when the OS refuses a thread or a runtime.
    pub fn start(count: usize) -> std::io::Result<ServingThreads> {
        let mut threads = Vec::with_capacity(count);
        for index in 0..count {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (jobs, mut queue) = mpsc::unbounded_channel::<Job>();
            let handle = std::thread::Builder::new()
                .name(format!("agora-serve-{index}"))
                .spawn(move || {
                    runtime.block_on(async move {
                        while let Some(job) = queue.recv().await {
                            tokio::spawn(job());
                        }
                    });
                    // Connections still open past the drain are dropped here.
                    runtime.shutdown_timeout(STOP_TIMEOUT);
                })?;
            threads.push(Thread {
                jobs,
                load: Arc::new(AtomicUsize::new(0)),
                handle,
            });
        }
        Ok(ServingThreads {
            threads,
            next: AtomicUsize::new(0),
        })
    }

    /// How many serving threads there are.
    pub fn count(&self) -> usize {
        self.threads.len()
    }

    /// Runs the task `make` returns on the serving thread with the fewest connections (ties:
    /// in turn), or on the caller's runtime when there is no serving thread. `make` is called
    /// on that thread, inside its runtime.
    pub fn spawn<F, Fut>(&self, make: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let Some(thread) = self.least_loaded() else {
            tokio::spawn(make());
            return;
        };
        let load = thread.load.clone();
        load.fetch_add(1, Ordering::Relaxed);
        let job: Job = Box::new(move || {
            Box::pin(async move {
                let _served = Served(load);
                make().await;
            })
        });
        if let Err(mpsc::error::SendError(job)) = thread.jobs.send(job) {
            // The thread is gone (it cannot be, short of a bug): serve here rather than drop.
            tracing::error!("a serving thread has stopped; serving on the shared runtime");
            tokio::spawn(job());
        }
    }

    fn least_loaded(&self) -> Option<&Thread> {
        let count = self.threads.len();
        if count == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % count;
        (0..count)
            .map(|offset| &self.threads[(start + offset) % count])
            .min_by_key(|thread| thread.load.load(Ordering::Relaxed))
    }

    /// Stops the threads: what they still run is dropped. Waits for them to end.
    pub async fn stop(self) {
        let handles: Vec<_> = self
            .threads
            .into_iter()
            .map(|thread| {
                drop(thread.jobs);
                thread.handle
            })
            .collect();
        if handles.is_empty() {
            return;
        }
        let joined = tokio::task::spawn_blocking(move || {
            for handle in handles {
                if handle.join().is_err() {
                    tracing::error!("a serving thread panicked");
                }
            }
        })
        .await;
        if joined.is_err() {
            tracing::error!("could not wait for the serving threads");
        }
    }
}

/// Counts a connection off its thread's load when its task ends or is dropped.
struct Served(Arc<AtomicUsize>);

impl Drop for Served {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn each_task_runs_on_a_serving_thread_and_the_load_is_spread() {
        let threads = ServingThreads::start(2).unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (release, held) = tokio::sync::watch::channel(false);
        for _ in 0..4 {
            let tx = tx.clone();
            let mut held = held.clone();
            threads.spawn(move || async move {
                let name = std::thread::current().name().map(str::to_owned);
                let flavor = tokio::runtime::Handle::current().runtime_flavor();
                tx.send((name, flavor)).unwrap();
                let _ = held.wait_for(|released| *released).await;
            });
        }
        let mut names = Vec::new();
        for _ in 0..4 {
            let (name, flavor) = rx.recv().await.unwrap();
            assert_eq!(flavor, tokio::runtime::RuntimeFlavor::CurrentThread);
            names.push(name.unwrap());
        }
        names.sort();
        assert_eq!(
            names,
            [
                "agora-serve-0",
                "agora-serve-0",
                "agora-serve-1",
                "agora-serve-1"
            ]
        );
        let loads: Vec<_> = threads
            .threads
            .iter()
            .map(|thread| thread.load.load(Ordering::Relaxed))
            .collect();
        assert_eq!(loads, [2, 2]);
        release.send(true).unwrap();
        threads.stop().await;
    }

    #[tokio::test]
    async fn without_threads_a_task_runs_on_the_callers_runtime() {
        let threads = ServingThreads::start(0).unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let caller = std::thread::current().id();
        threads.spawn(move || async move {
            let _ = tx.send(std::thread::current().id());
        });
        assert_eq!(rx.await.unwrap(), caller);
        threads.stop().await;
    }
}
