//! A small fixed pool of OS threads for blocking inference (ASR, TTS, the turn-end model).
//!
//! Model inference takes tens to hundreds of milliseconds of CPU; running it on the async
//! runtime would stall every other call's media. Calls submit jobs here and `await` the answer.
//! The queue is bounded, so when the machine is saturated submitters wait (back-pressure)
//! instead of piling up unbounded work, and a panicking job is reported as an error instead of
//! killing a worker.
//!
//! Jobs have a [`Priority`]: a caller waiting for the bot's answer (the end of a turn: its
//! recognition, the turn-end check, the dialog, the reply's first sentence) goes before work
//! nobody is waiting on yet (partial hypotheses, the rest of a reply, prompt warm-up). A worker
//! always takes the oldest urgent job first, so one call's background work never sits in
//! front of another call's answer.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

type Job = Box<dyn FnOnce() + Send + 'static>;

/// Why a job did not produce a result.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PoolError {
    #[error("inference pool is shut down")]
    Closed,
    #[error("inference job panicked: {0}")]
    Panicked(String),
}

/// Which queue a job waits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// A caller is waiting on it: the end of a turn and the start of the answer.
    Turn,
    /// Nobody waits on it yet: partial hypotheses, the rest of a reply, warm-up.
    Background,
}

/// The pool. Cheap to clone; the workers stop when the last clone is dropped.
#[derive(Clone)]
pub struct InferencePool {
    shared: Arc<Shared>,
    /// Room in the queues (a permit per waiting job).
    slots: Arc<Semaphore>,
    _workers: Arc<Workers>,
}

#[derive(Default)]
struct Queues {
    turn: VecDeque<(Job, OwnedSemaphorePermit)>,
    background: VecDeque<(Job, OwnedSemaphorePermit)>,
    closed: bool,
}

#[derive(Default)]
struct Shared {
    queues: Mutex<Queues>,
    ready: Condvar,
}

impl Shared {
    /// The next job for a worker, urgent first; None once closed and drained.
    fn next(&self) -> Option<Job> {
        let mut q = self.queues.lock().ok()?;
        loop {
            if let Some((job, permit)) = q.turn.pop_front().or_else(|| q.background.pop_front()) {
                drop(permit); // its queue slot is free as soon as a worker has it
                return Some(job);
            }
            if q.closed {
                return None;
            }
            q = self.ready.wait(q).ok()?;
        }
    }

    fn close(&self) {
        if let Ok(mut q) = self.queues.lock() {
            q.closed = true;
        }
        self.ready.notify_all();
    }
}

struct Workers {
    shared: Arc<Shared>,
    handles: Vec<JoinHandle<()>>,
}

impl Drop for Workers {
    fn drop(&mut self) {
        // The last pool clone is gone: workers drain what is queued and exit.
        self.shared.close();
        for handle in self.handles.drain(..) {
            if handle.thread().id() != std::thread::current().id() {
                let _ = handle.join();
            }
        }
    }
}

impl InferencePool {
    /// Starts `workers` threads with room for `queue` waiting jobs.
    pub fn new(workers: usize, queue: usize) -> Self {
        let shared = Arc::new(Shared::default());
        let handles = (0..workers.max(1))
            .map(|i| {
                let shared = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name(format!("inference-{i}"))
                    .spawn(move || {
                        while let Some(job) = shared.next() {
                            job();
                        }
                    })
                    .expect("spawning an inference thread at start-up")
            })
            .collect();
        InferencePool {
            shared: Arc::clone(&shared),
            slots: Arc::new(Semaphore::new(queue.max(1))),
            _workers: Arc::new(Workers { shared, handles }),
        }
    }

    /// Whether no job is waiting for a worker (optional work, such as partial recognition,
    /// is only queued then).
    pub fn is_idle_queue(&self) -> bool {
        self.shared
            .queues
            .lock()
            .map(|q| q.turn.is_empty() && q.background.is_empty())
            .unwrap_or(false)
    }

    /// Runs `f` on a worker as turn work ([`Priority::Turn`]) and returns its result.
    pub async fn run<T, F>(&self, f: F) -> Result<T, PoolError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        self.run_as(Priority::Turn, f).await
    }

    /// Runs `f` on a worker with `priority` and returns its result.
    pub async fn run_as<T, F>(&self, priority: Priority, f: F) -> Result<T, PoolError>
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
        let permit = Arc::clone(&self.slots)
            .acquire_owned()
            .await
            .map_err(|_| PoolError::Closed)?;
        {
            let mut q = self.shared.queues.lock().map_err(|_| PoolError::Closed)?;
            if q.closed {
                return Err(PoolError::Closed);
            }
            match priority {
                Priority::Turn => q.turn.push_back((job, permit)),
                Priority::Background => q.background.push_back((job, permit)),
            }
        }
        self.shared.ready.notify_one();
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

    #[tokio::test]
    async fn turn_work_goes_before_queued_background_work() {
        let pool = InferencePool::new(1, 16);
        // Hold the only worker until everything is queued.
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let (started_tx, started_rx) = oneshot::channel();
        let blocker = {
            let pool = pool.clone();
            tokio::spawn(async move {
                pool.run(move || {
                    let _ = started_tx.send(());
                    let _ = release_rx.recv();
                })
                .await
            })
        };
        started_rx.await.expect("the worker is busy");
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut handles = Vec::new();
        for (name, priority) in [
            ("partial-1", Priority::Background),
            ("partial-2", Priority::Background),
            ("final", Priority::Turn),
        ] {
            let (submitter, order) = (pool.clone(), Arc::clone(&order));
            handles.push(tokio::spawn(async move {
                submitter
                    .run_as(priority, move || order.lock().expect("lock").push(name))
                    .await
            }));
            // Queued in this order: wait until the job is in the queue.
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            let queued = |q: &Queues| q.turn.len() + q.background.len();
            let want = handles.len();
            while queued(&pool.shared.queues.lock().expect("lock")) < want {
                assert!(std::time::Instant::now() < deadline, "job never queued");
                tokio::task::yield_now().await;
            }
        }
        assert!(!pool.is_idle_queue());
        release_tx.send(()).expect("release");
        blocker.await.expect("join").expect("job");
        for h in handles {
            h.await.expect("join").expect("job");
        }
        assert_eq!(
            *order.lock().expect("lock"),
            vec!["final", "partial-1", "partial-2"]
        );
        assert!(pool.is_idle_queue());
    }
}
