//! A small fixed pool of OS threads for blocking inference (ASR, TTS).
//!
//! Model inference takes hundreds of milliseconds of CPU; running it on the async runtime would
//! stall every other call's media. Calls submit jobs here and `await` the answer. The queue is
//! bounded, so when the machine is saturated submitters wait (back-pressure) instead of piling up
//! unbounded work, and a panicking job is reported as an error instead of killing a worker.

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot};

type Job = Box<dyn FnOnce() + Send + 'static>;

/// Why a job did not produce a result.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PoolError {
    #[error("inference pool is shut down")]
    Closed,
    #[error("inference job panicked: {0}")]
    Panicked(String),
}

/// The pool. Cheap to clone; the workers stop when the last clone is dropped.
#[derive(Clone)]
pub struct InferencePool {
    tx: mpsc::Sender<Job>,
    _workers: Arc<Workers>,
}

struct Workers(Vec<JoinHandle<()>>);

impl Drop for Workers {
    fn drop(&mut self) {
        // The sender side is gone once the last pool clone drops; workers drain and exit.
        for handle in self.0.drain(..) {
            if handle.thread().id() != std::thread::current().id() {
                let _ = handle.join();
            }
        }
    }
}

impl InferencePool {
    /// Starts `workers` threads with room for `queue` waiting jobs.
    pub fn new(workers: usize, queue: usize) -> Self {
        let (tx, rx) = mpsc::channel::<Job>(queue.max(1));
        let rx = Arc::new(Mutex::new(rx));
        let handles = (0..workers.max(1))
            .map(|i| {
                let rx = Arc::clone(&rx);
                std::thread::Builder::new()
                    .name(format!("inference-{i}"))
                    .spawn(move || loop {
                        let job = match rx.lock() {
                            Ok(mut guard) => guard.blocking_recv(),
                            Err(_) => None,
                        };
                        match job {
                            Some(job) => job(),
                            None => break,
                        }
                    })
                    .expect("spawning an inference thread at start-up")
            })
            .collect();
        InferencePool {
            tx,
            _workers: Arc::new(Workers(handles)),
        }
    }

    /// Whether no job is waiting for a worker (optional work, such as partial recognition,
    /// is only queued then).
    pub fn is_idle_queue(&self) -> bool {
        self.tx.capacity() == self.tx.max_capacity()
    }

    /// Runs `f` on a worker and returns its result.
    pub async fn run<T, F>(&self, f: F) -> Result<T, PoolError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let (done_tx, done_rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|p| {
                let msg = p
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                PoolError::Panicked(msg)
            });
            let _ = done_tx.send(result);
        });
        self.tx.send(job).await.map_err(|_| PoolError::Closed)?;
        done_rx.await.map_err(|_| PoolError::Closed)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn runs_jobs_off_the_runtime() {
        let pool = InferencePool::new(2, 4);
        let runtime_thread = std::thread::current().id();
        let worker_thread = pool
            .run(|| std::thread::current().id())
            .await
            .expect("runs");
        assert_ne!(runtime_thread, worker_thread);
    }

    #[tokio::test]
    async fn concurrency_is_bounded_by_workers() {
        let pool = InferencePool::new(2, 8);
        let active = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let mut handles = Vec::new();
        for _ in 0..8 {
            let (pool, active, peak) = (pool.clone(), Arc::clone(&active), Arc::clone(&peak));
            handles.push(tokio::spawn(async move {
                pool.run(move || {
                    let now = active.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(20));
                    active.fetch_sub(1, Ordering::SeqCst);
                })
                .await
            }));
        }
        for h in handles {
            h.await.expect("join").expect("job");
        }
        assert_eq!(peak.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_panicking_job_is_an_error_and_the_pool_survives() {
        let pool = InferencePool::new(1, 1);
        let err = pool
            .run(|| -> u32 { panic!("model exploded") })
            .await
            .unwrap_err();
        assert_eq!(err, PoolError::Panicked("model exploded".into()));
        assert_eq!(pool.run(|| 7).await, Ok(7));
    }
}
