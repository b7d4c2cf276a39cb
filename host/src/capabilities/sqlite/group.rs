//! Group commit. A guest's write outside a transaction joins a queue; the
//! first of its writers to get the database's writer commits every write
//! queued by then in one transaction, each in a savepoint of its own, so
//! that one that fails takes nothing else with it. Each request still
//! gets its own result, once the whole group has committed, and none waits
//! in SQLite's busy handler: writers take turns through the writer's
//! first-come, first-served queue.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::connection::{Conn, Effect};
use super::pool::Database;
use super::{SqliteError, on_conn};
use crate::capabilities::bindings::corral::service::sqlite::{Error, QueryResult, Value};

/// Most writes committed in one group.
const MAX_GROUP: usize = 128;
/// No write starts in a group that has run this long: a group of fast
/// writes is over long before, and one of slow writes gives the writer,
/// and the thread it runs on, back after this and one statement timeout.
const GROUP_TIME: Duration = Duration::from_millis(50);

/// What one write came to.
pub struct Written {
    pub result: Result<QueryResult, Error>,
    /// What it changed, if it succeeded.
    pub effect: Option<Effect>,
    /// Why the database's log refused its group, if it did.
    pub unwritten: Option<super::AppendError>,
}

/// One queued write.
struct Job {
    id: u64,
    sql: String,
    params: Vec<Value>,
    reply: oneshot::Sender<Written>,
}

/// A database's queued writes.
#[derive(Default)]
pub struct Pending {
    jobs: Vec<Job>,
    next_id: u64,
}

/// Takes a queued write out of the queue if its request gives up on it
/// before a group took it, so that it never runs after the request ended.
struct Queued<'a> {
    db: &'a Database,
    id: u64,
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        let mut pending = self.db.pending.lock().expect("pending lock");
        pending.jobs.retain(|job| job.id != self.id);
    }
}

/// Runs one write outside a transaction, committed with whatever other
/// writes are queued when its turn comes.
pub async fn write(db: &Arc<Database>, sql: String, params: Vec<Value>) -> Result<Written, SqliteError> {
    let (reply, mut written) = oneshot::channel();
    let id = {
        let mut pending = db.pending.lock().expect("pending lock");
        let id = pending.next_id;
        pending.next_id += 1;
        pending.jobs.push(Job { id, sql, params, reply });
        id
    };
    let _queued = Queued { db, id };
    // Until this write is answered: whoever holds the writer commits what
    // is queued, and this write may be left for a later group (one is
    // full, or ran out of time), which may have to be this request's again.
    loop {
        tokio::select! {
            biased;
            done = &mut written => return done.map_err(|_| lost()),
            writer = db.writer() => {
                // Another group may have taken this write while we waited.
                if let Ok(done) = written.try_recv() {
                    return Ok(done);
                }
                let jobs = {
                    let mut pending = db.pending.lock().expect("pending lock");
                    let take = pending.jobs.len().min(MAX_GROUP);
                    pending.jobs.drain(..take).collect::<Vec<_>>()
                };
                let writer = match writer {
                    Ok(writer) => writer,
                    Err(e) => {
                        for job in jobs {
                            let _ = job.reply.send(failed(e.clone()));
                        }
                        continue;
                    }
                };
                // The writer goes back to the queue before the replies are read.
                let (writer, ()) = on_conn(writer, move |conn| commit_group(conn, jobs)).await?;
                drop(writer);
            }
        }
    }
}

fn lost() -> SqliteError {
    SqliteError::Guest(Error::Io(
        "the write was lost: the host's SQL threads are overloaded".into(),
    ))
}

fn failed(error: Error) -> Written {
    Written {
        result: Err(error),
        effect: None,
        unwritten: None,
    }
}

/// Commits `jobs` in one transaction, each in a savepoint, and replies to
/// each once the transaction has committed (or failed to). If a failing
/// statement makes SQLite roll the whole transaction back, the writes
/// before it are run again in a new one, without it. No write starts once
/// the group has run for [`GROUP_TIME`]: those left go back to the front
/// of the queue for the next holder of the writer. A write whose request
/// has ended by its turn is dropped unrun.
fn commit_group(conn: &mut Conn, mut jobs: Vec<Job>) {
    let deadline = Instant::now() + GROUP_TIME;
    let mut started = 0;
    'group: loop {
        if jobs.is_empty() {
            return;
        }
        if let Err(e) = conn.begin_write() {
            for job in jobs {
                let _ = job.reply.send(failed(e.clone()));
            }
            return;
        }
        let mut done: Vec<(Job, Written)> = Vec::with_capacity(jobs.len());
        let mut queue = jobs.into_iter();
        while let Some(job) = queue.next() {
            if started > 0 && Instant::now() >= deadline {
                let left = std::iter::once(job).chain(queue).filter(|job| !job.reply.is_closed());
                let mut pending = conn.db.pending.lock().expect("pending lock");
                pending.jobs.splice(0..0, left);
                break;
            }
            // Its request ended while it was queued: it never runs.
            if job.reply.is_closed() {
                continue;
            }
            started += 1;
            let savepoint = conn.trusted("SAVEPOINT corral_group");
            let result = savepoint.and_then(|()| conn.execute(&job.sql, &job.params));
            if let Err(e) = &result
                && conn.is_autocommit()
            {
                // Everything before this write is gone with it.
                let _ = job.reply.send(failed(e.clone()));
                jobs = done.into_iter().map(|(job, _)| job).chain(queue).collect();
                continue 'group;
            }
            let end = match result {
                Ok(_) => "RELEASE corral_group",
                Err(_) => "ROLLBACK TO corral_group; RELEASE corral_group",
            };
            let ended = conn.trusted(end);
            let effect = conn.take_effect();
            let written = match ended.and(result) {
                Ok(rows) => Written {
                    result: Ok(rows),
                    effect,
                    unwritten: None,
                },
                Err(e) => failed(e),
            };
            done.push((job, written));
        }
        let committed = conn.commit_write();
        let unwritten = conn.unwritten.take();
        for (job, written) in done {
            let written = match &committed {
                Ok(()) => written,
                Err(e) => Written {
                    unwritten: unwritten.clone(),
                    ..failed(e.clone())
                },
            };
            let _ = job.reply.send(written);
        }
        return;
    }
}
