//! Where password hashes are computed: a small fixed pool of long-lived threads with a
//! bounded queue, so the work and memory a client can force on a node are bounded.
//!
//! Each argon2 hash takes tens of milliseconds of CPU and [`HASH_MEMORY_BYTES`] of
//! memory. One `spawn_blocking` thread per request (what this replaces) let a burst of
//! wrong-password logins run hundreds of hashes at once: the leader's RSS went from
//! 23 MB to 3 GB and stayed there, and the hashing starved the core thread until the
//! cluster elected another leader. Here at most [`hash_workers_default`] hashes run at
//! once, each worker reusing one buffer, so the pool's memory is at most
//! `workers × HASH_MEMORY_BYTES` (19 MiB each; 19 MiB on a 2-core machine) for the life
//! of the node; at most `workers × HASH_QUEUE_PER_WORKER` more wait, and a request
//! beyond that is refused at once ([`PoolError::Busy`], RESOURCE_EXHAUSTED on the wire)
//! rather than queued behind work its client will have given up on.

#[cfg(doc)]
use crate::auth::HASH_MEMORY_BYTES;
use crate::auth::{self, AuthError, HashMemory};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

/// Hashes waiting per worker before new ones are refused. A hash takes 35 to 50 ms on
/// the 2-core test machine (argon2 optimized), so a full queue is well under a second
/// of work: inside the 4 s request timeout, and short enough that nobody waits long on
/// work queued behind a flood.
pub const HASH_QUEUE_PER_WORKER: usize = 16;

/// Threads that hash: half the cores (at least one), so the core thread, the tokio
/// workers and the peer traffic keep the rest even while every worker is busy.
pub fn hash_workers_default() -> usize {
    crate::half_the_cores()
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PoolError {
    #[error("too many password checks in progress ({waiting_max} waiting); retry later")]
    Busy { waiting_max: usize },
    #[error("password hashing has stopped: the node is shutting down")]
    Stopped,
}

/// Why a hash or a check did not give its answer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HashError {
    #[error(transparent)]
    Pool(#[from] PoolError),
    #[error(transparent)]
    Auth(#[from] AuthError),
}

type Job = Box<dyn FnOnce(&mut HashMemory) + Send>;

/// What the pool did, logged when the node stops (and read by the tests there).
#[derive(Debug, Default)]
pub struct Counters {
    pub hashed: AtomicU64,
    pub verified: AtomicU64,
    /// Refused because the queue was full.
    pub refused: AtomicU64,
    /// Dropped from the queue because their caller had gone.
    pub abandoned: AtomicU64,
    /// In the queue now, not yet taken by a worker.
    pub waiting: AtomicU64,
}

/// The pool. Dropping it (every clone of the service gone) closes the queue; each
/// worker finishes the job in hand and exits.
pub struct HashPool {
    jobs: SyncSender<Job>,
    waiting_max: usize,
    counters: Arc<Counters>,
}

impl HashPool {
    /// Starts `workers` threads with room for `waiting_max` queued jobs.
    pub fn start(workers: usize, waiting_max: usize) -> std::io::Result<HashPool> {
        assert!(workers >= 1);
        let (jobs, receiver) = std::sync::mpsc::sync_channel::<Job>(waiting_max);
        let receiver = Arc::new(Mutex::new(receiver));
        for worker in 0..workers {
            let receiver = Arc::clone(&receiver);
            std::thread::Builder::new()
                .name(format!("hash-{worker}"))
                .spawn(move || work(&receiver))?;
        }
        Ok(HashPool {
            jobs,
            waiting_max,
            counters: Arc::new(Counters::default()),
        })
    }

    /// The pool a node runs: [`hash_workers_default`] threads.
    pub fn start_default() -> std::io::Result<HashPool> {
        let workers = hash_workers_default();
        HashPool::start(workers, workers * HASH_QUEUE_PER_WORKER)
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// A new hash of `password` (see [`auth::hash_password`]).
    pub async fn hash(&self, password: String) -> Result<String, HashError> {
        let counters = Arc::clone(&self.counters);
        let answer = self.submit(move |memory| {
            counters.hashed.fetch_add(1, Ordering::Relaxed);
            auth::hash_password(&password, memory)
        })?;
        Ok(answer.await.map_err(|_| PoolError::Stopped)??)
    }

    /// Checks `password` against `hash` (see [`auth::verify_password`]).
    pub async fn verify(&self, password: String, hash: String) -> Result<(), HashError> {
        let counters = Arc::clone(&self.counters);
        let answer = self.submit(move |memory| {
            counters.verified.fetch_add(1, Ordering::Relaxed);
            auth::verify_password(&password, &hash, memory)
        })?;
        Ok(answer.await.map_err(|_| PoolError::Stopped)??)
    }

    /// Queues `work`, or refuses at once when `waiting_max` jobs already wait.
    fn submit<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut HashMemory) -> T + Send + 'static,
    ) -> Result<oneshot::Receiver<T>, PoolError> {
        let (reply, answer) = oneshot::channel();
        let counters = Arc::clone(&self.counters);
        let job: Job = Box::new(move |memory| {
            counters.waiting.fetch_sub(1, Ordering::Relaxed);
            // The caller gave up (its client hung up or timed out): nobody wants this.
            if reply.is_closed() {
                counters.abandoned.fetch_add(1, Ordering::Relaxed);
                return;
            }
            // It may give up during the work too; then the answer is simply dropped.
            let _ = reply.send(work(memory));
        });
        // Counted before it can be taken, so that a worker never takes it off first.
        self.counters.waiting.fetch_add(1, Ordering::Relaxed);
        self.jobs.try_send(job).map_err(|e| {
            self.counters.waiting.fetch_sub(1, Ordering::Relaxed);
            match e {
                TrySendError::Full(_) => {
                    self.counters.refused.fetch_add(1, Ordering::Relaxed);
                    PoolError::Busy {
                        waiting_max: self.waiting_max,
                    }
                }
                TrySendError::Disconnected(_) => PoolError::Stopped,
            }
        })?;
        Ok(answer)
    }
}

/// One worker: takes jobs until the pool is dropped, with one [`HashMemory`] for life.
fn work(jobs: &Mutex<Receiver<Job>>) {
    let mut memory = HashMemory::default();
    loop {
        // Only the waiting worker holds the lock; it lets go as soon as it has a job.
        // A poisoned lock means a job panicked while another worker waited: the
        // receiver itself is intact, so carry on.
        let job = jobs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .recv();
        match job {
            Ok(job) => job(&mut memory),
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// Occupies the pool's only worker until the returned sender is dropped or sent to.
    fn occupy(pool: &HashPool) -> (mpsc::Sender<()>, oneshot::Receiver<()>) {
        let (started_tx, started) = mpsc::channel();
        let (release, released) = mpsc::channel::<()>();
        let answer = pool
            .submit(move |_| {
                started_tx.send(()).expect("the test waits for this");
                // Either a message or the test dropping the sender ends the wait.
                let _ = released.recv();
            })
            .expect("an idle pool takes a job");
        started.recv().expect("the worker took the job");
        (release, answer)
    }

    #[test]
    fn a_full_queue_refuses_at_once_and_frees_up_after() {
        const WAITING_MAX: usize = 3;
        let pool = HashPool::start(1, WAITING_MAX).expect("start");
        let (release, first) = occupy(&pool);
        let waiting: Vec<_> = (0..WAITING_MAX)
            .map(|i| pool.submit(move |_| i).expect("room in the queue"))
            .collect();
        assert_eq!(
            pool.submit(|_| ()).err(),
            Some(PoolError::Busy {
                waiting_max: WAITING_MAX
            })
        );
        assert_eq!(pool.counters().refused.load(Ordering::Relaxed), 1);
        assert_eq!(
            pool.counters().waiting.load(Ordering::Relaxed),
            WAITING_MAX as u64,
            "the refused job is not counted as waiting"
        );

        release.send(()).expect("the worker waits");
        first.blocking_recv().expect("first job done");
        let done: Vec<usize> = waiting
            .into_iter()
            .map(|answer| answer.blocking_recv().expect("queued job done"))
            .collect();
        assert_eq!(done, vec![0, 1, 2], "in order, all of them");
        let after = pool.submit(|_| 7).expect("room again");
        assert_eq!(after.blocking_recv(), Ok(7));
        assert_eq!(pool.counters().waiting.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_job_whose_caller_left_is_skipped() {
        let pool = HashPool::start(1, 2).expect("start");
        let (release, first) = occupy(&pool);
        let ran = Arc::new(AtomicU64::new(0));
        let ran_in_job = Arc::clone(&ran);
        let gone = pool
            .submit(move |_| ran_in_job.fetch_add(1, Ordering::Relaxed))
            .expect("room");
        drop(gone);
        release.send(()).expect("the worker waits");
        first.blocking_recv().expect("first job done");
        // The queue is FIFO with one worker: once this answers, the one before was seen.
        assert_eq!(pool.submit(|_| ()).expect("room").blocking_recv(), Ok(()));
        assert_eq!(ran.load(Ordering::Relaxed), 0);
        assert_eq!(pool.counters().abandoned.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn hashes_and_checks_run_on_the_pool() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let pool = HashPool::start(1, 1).expect("start");
        runtime.block_on(async {
            let hash = pool.hash("hunter2".to_owned()).await.expect("hash");
            pool.verify("hunter2".to_owned(), hash.clone())
                .await
                .expect("right password");
            assert_eq!(
                pool.verify("hunter3".to_owned(), hash).await,
                Err(HashError::Auth(AuthError::WrongPassword))
            );
        });
        assert_eq!(pool.counters().hashed.load(Ordering::Relaxed), 1);
        assert_eq!(pool.counters().verified.load(Ordering::Relaxed), 2);
    }
}
