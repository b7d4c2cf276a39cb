//! The threads SQL runs on: a fixed number, from the config, shared by
//! every database of the host. Statements never run on the async workers
//! (beyond the inline read budget, see `SqliteCtx::try_read_inline`), a
//! flood of slow statements waits in a bounded queue instead of spawning
//! threads, and nothing waits for these threads at shutdown.

use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

type Job = Box<dyn FnOnce() + Send>;

/// Jobs waiting for a thread, per thread; past this the pool is busy.
const QUEUE_PER_THREAD: usize = 256;

pub struct SqlThreads {
    queue: SyncSender<Job>,
    threads: usize,
}

/// Every thread is busy and the queue is full.
#[derive(Debug)]
pub struct Busy;

impl SqlThreads {
    pub fn start(threads: usize) -> anyhow::Result<Arc<SqlThreads>> {
        let threads = threads.max(1);
        let (queue, jobs) = std::sync::mpsc::sync_channel::<Job>(threads * QUEUE_PER_THREAD);
        let jobs = Arc::new(Mutex::new(jobs));
        for i in 0..threads {
            let jobs = Arc::clone(&jobs);
            std::thread::Builder::new()
                .name(format!("corral-sql-{i}"))
                .spawn(move || work(&jobs))?;
        }
        Ok(Arc::new(SqlThreads { queue, threads }))
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `job` on an SQL thread and waits for its result. If the caller
    /// stops waiting before the job starts, `job` gets `false` and should
    /// only clean up.
    pub async fn run<R: Send + 'static>(&self, job: impl FnOnce(bool) -> R + Send + 'static) -> Result<R, Busy> {
        let (done, result) = tokio::sync::oneshot::channel();
        self.spawn(move || {
            let wanted = !done.is_closed();
            let _ = done.send(job(wanted));
        })?;
        result.await.map_err(|_| Busy)
    }

    /// Queues `job` without waiting for it.
    pub fn spawn(&self, job: impl FnOnce() + Send + 'static) -> Result<(), Busy> {
        match self.queue.try_send(Box::new(job)) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => Err(Busy),
        }
    }
}

fn work(jobs: &Mutex<Receiver<Job>>) {
    loop {
        let job = match jobs.lock().expect("sql queue lock").recv() {
            Ok(job) => job,
            Err(_) => return,
        };
        // A job that panics fails its own caller, who sees its result
        // channel closed; the thread carries on.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
    }
}
