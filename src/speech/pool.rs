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
//!
//! How long urgent jobs waited for a worker is kept for a while ([`TurnWaits`]): it is the
//! gateway's own measure of whether it can still answer callers in time, which admission
//! control reads before taking another call.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

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
    turn_waits: Mutex<TurnWaits>,
}

/// The queue waits of recent urgent ([`Priority::Turn`]) jobs: from the submission (including
/// any wait for room in the queue) to a worker starting the job. Sans-IO: the times are given.
#[derive(Debug, Default)]
pub struct TurnWaits {
    /// (when the job started, how long it had waited), oldest first.
    samples: VecDeque<(Instant, Duration)>,
}

impl TurnWaits {
    /// Samples kept at most, whatever their age (a bound on memory under any load).
    pub const MAX_SAMPLES: usize = 4096;
    /// How far back samples are kept.
    pub const KEPT: Duration = Duration::from_secs(60);

    /// Records a job that started at `at` after waiting `waited`.
    pub fn record(&mut self, at: Instant, waited: Duration) {
        while self.samples.len() >= Self::MAX_SAMPLES
            || self
                .samples
                .front()
                .is_some_and(|(t, _)| at.saturating_duration_since(*t) > Self::KEPT)
        {
            self.samples.pop_front();
        }
        self.samples.push_back((at, waited));
    }

    /// The `quantile` (0..=1) of the waits of jobs started within `window` before `now`, and
    /// how many there were; None without any.
    pub fn quantile(
        &self,
        now: Instant,
        window: Duration,
        quantile: f64,
    ) -> Option<(Duration, usize)> {
        let mut recent: Vec<Duration> = self
            .samples
            .iter()
            .rev()
            .take_while(|(t, _)| now.saturating_duration_since(*t) <= window)
            .map(|(_, w)| *w)
            .collect();
        if recent.is_empty() {
            return None;
        }
        recent.sort_unstable();
        let rank = (quantile.clamp(0.0, 1.0) * (recent.len() - 1) as f64).round() as usize;
        Some((recent[rank.min(recent.len() - 1)], recent.len()))
    }
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

    /// The `quantile` of how long urgent jobs started in the last `window` waited for a worker,
    /// and how many there were; None when none started (an idle pool is not late).
    pub fn turn_wait(&self, window: Duration, quantile: f64) -> Option<(Duration, usize)> {
        let waits = self.shared.turn_waits.lock().ok()?;
        waits.quantile(Instant::now(), window, quantile)
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
        let submitted = Instant::now();
        let shared = Arc::clone(&self.shared);
        let job: Job = Box::new(move || {
            if priority == Priority::Turn {
                let started = Instant::now();
                if let Ok(mut waits) = shared.turn_waits.lock() {
                    waits.record(started, started.saturating_duration_since(submitted));
                }
            }
            drop(shared);
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

    #[test]
    fn turn_waits_give_the_quantile_of_the_recent_window_only() {
        let t0 = Instant::now();
        let mut waits = TurnWaits::default();
        assert_eq!(waits.quantile(t0, Duration::from_secs(10), 0.9), None);
        // An old burst of long waits, then ten short ones.
        for i in 0..5 {
            waits.record(t0 + Duration::from_millis(i), Duration::from_millis(900));
        }
        let later = t0 + Duration::from_secs(20);
        for i in 0..10u64 {
            waits.record(
                later + Duration::from_millis(i * 100),
                Duration::from_millis(10 * (i + 1)),
            );
        }
        let now = later + Duration::from_secs(1);
        let window = Duration::from_secs(10);
        assert_eq!(
            waits.quantile(now, window, 0.9),
            Some((Duration::from_millis(90), 10)),
            "the old burst is outside the window"
        );
        assert_eq!(
            waits.quantile(now, window, 1.0).map(|q| q.0),
            Some(Duration::from_millis(100))
        );
        assert_eq!(
            waits
                .quantile(now, Duration::from_secs(60), 1.0)
                .map(|q| q.0),
            Some(Duration::from_millis(900))
        );
        // Past KEPT, the old samples are gone even from a wide window.
        waits.record(
            t0 + TurnWaits::KEPT + Duration::from_secs(1),
            Duration::ZERO,
        );
        assert_eq!(
            waits
                .quantile(now + TurnWaits::KEPT, Duration::from_secs(3600), 1.0)
                .map(|q| q.1),
            Some(11)
        );
    }

    #[test]
    fn turn_waits_keep_a_bounded_number_of_samples() {
        let t0 = Instant::now();
        let mut waits = TurnWaits::default();
        for _ in 0..TurnWaits::MAX_SAMPLES + 10 {
            waits.record(t0, Duration::from_millis(1));
        }
        assert_eq!(waits.samples.len(), TurnWaits::MAX_SAMPLES);
    }

    #[tokio::test]
    async fn turn_jobs_record_their_wait_and_background_jobs_do_not() {
        let pool = InferencePool::new(1, 4);
        let window = Duration::from_secs(60);
        assert_eq!(pool.turn_wait(window, 0.9), None);
        pool.run_as(Priority::Background, || ()).await.expect("job");
        assert_eq!(pool.turn_wait(window, 0.9), None);
        pool.run(|| ()).await.expect("job");
        pool.run(|| ()).await.expect("job");
        assert_eq!(pool.turn_wait(window, 0.9).map(|q| q.1), Some(2));
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
