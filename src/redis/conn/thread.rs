//! The command thread of one server: it takes every job async callers have queued and runs them
//! in one pipeline, so many concurrent calls share a round trip; a blocking caller instead runs
//! its commands on its own thread over a pooled connection ([`Commands::run`]).
//!
//! No async runtime is involved: async callers queue a [`Job`] and await a one-shot reply by
//! their own deadline. The thread itself waits for a reply as long as
//! [`Timeouts::reply_guard`](super::Timeouts) allows, however long its callers wait, because a
//! job's `then` (taking messages into the local buffers, say) must see the reply even when
//! its caller has given up.

use std::sync::Arc;
use std::thread;
use std::time::Instant;

use ::redis::{Cmd, Value};
use crossbeam_channel::{Receiver, Sender, TryRecvError};

use super::Pool;
use crate::error::{BackendError, BackendErrorKind};
use crate::redis::oneshot;
use crate::redis::scripts::scripts;

/// How many jobs one round trip carries at most.
const MAX_BATCH: usize = 512;

/// What to do with a job's replies on the thread that receives them, before the caller gets
/// what it returns: work that must happen even if the caller has given up waiting.
pub(crate) type Then =
    Box<dyn FnOnce(Result<Vec<Value>, BackendError>) -> Result<Vec<Value>, BackendError> + Send>;

/// One message for the send script, which the command thread can bundle with others for the
/// same key into one script call (see [`scripts`]' `send_many`).
pub(crate) struct SendOne {
    pub(crate) key: String,
    pub(crate) member: Vec<u8>,
    pub(crate) score: f64,
    pub(crate) cutoff: f64,
    pub(crate) capacity: usize,
    pub(crate) ttl_millis: u64,
}

/// Commands to run in one pipeline, and where their replies go.
pub(crate) struct Job {
    cmds: Vec<Cmd>,
    /// A send, run bundled with the sends next to it for the same key; its reply has the shape
    /// of the single send script's, `[added, expired]`.
    send: Option<SendOne>,
    reply: oneshot::Sender<Result<Vec<Value>, BackendError>>,
    deadline: Instant,
    then: Option<Then>,
}

impl Job {
    /// Hands the result to the job's `then`, if any, and its outcome to the caller.
    fn finish(self, result: Result<Vec<Value>, BackendError>) {
        let result = match self.then {
            Some(then) => then(result),
            None => result,
        };
        self.reply.send(result);
    }
}

fn timed_out() -> BackendError {
    BackendError::new(BackendErrorKind::Timeout, "redis did not answer in time")
}

/// The handle to a server's connections: a command thread that pipelines what callers queue
/// (async callers), and idle connections a blocking caller uses on its own thread (no thread
/// hop, no wake-up to wait for).
#[derive(Clone)]
pub(crate) struct Commands {
    tx: Sender<Job>,
    pool: Arc<Pool>,
}

impl Commands {
    /// Starts the command thread for `pool`'s server; it ends when every handle is dropped.
    pub(crate) fn start(pool: Arc<Pool>, name: String) -> Result<Self, BackendError> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let thread_pool = pool.clone();
        thread::Builder::new()
            .name(name)
            .spawn(move || command_thread(&thread_pool, &rx))
            .map_err(|e| {
                BackendError::new(BackendErrorKind::Other, "starting the redis thread")
                    .with_source(e)
            })?;
        Ok(Commands { tx, pool })
    }

    /// Queues commands for the command thread; the reply comes through the returned receiver,
    /// by the deadline. `then` runs on the command thread with the replies, whether or not
    /// anyone still waits for them.
    pub(crate) fn submit(
        &self,
        cmds: Vec<Cmd>,
        then: Option<Then>,
    ) -> (oneshot::Receiver<Result<Vec<Value>, BackendError>>, Instant) {
        let (reply, rx) = oneshot::channel();
        let deadline = Instant::now() + self.pool.timeouts().operation;
        let job = Job {
            cmds,
            send: None,
            reply,
            deadline,
            then,
        };
        if let Err(crossbeam_channel::SendError(job)) = self.tx.send(job) {
            job.finish(Err(BackendError::new(
                BackendErrorKind::Other,
                "the redis connection thread has stopped",
            )));
        }
        (rx, deadline)
    }

    /// Queues a send for the command thread, which bundles it with the sends queued next to it
    /// for the same key: one script call adds them all.
    pub(crate) async fn send_async(&self, send: SendOne) -> Result<Vec<Value>, BackendError> {
        let (reply, rx) = oneshot::channel();
        let deadline = Instant::now() + self.pool.timeouts().operation;
        let job = Job {
            cmds: Vec::new(),
            send: Some(send),
            reply,
            deadline,
            then: None,
        };
        if let Err(crossbeam_channel::SendError(job)) = self.tx.send(job) {
            job.finish(Err(BackendError::new(
                BackendErrorKind::Other,
                "the redis connection thread has stopped",
            )));
        }
        wait_for(rx, deadline).await
    }

    /// Runs commands in one round trip on the calling thread, blocking it for at most the
    /// operation timeout (a connection, if one must be made, included).
    pub(crate) fn run(&self, cmds: &[Cmd]) -> Result<Vec<Value>, BackendError> {
        let deadline = Instant::now() + self.pool.timeouts().operation;
        self.pool.run(cmds, deadline, Some(deadline))
    }

    /// The server's connections.
    pub(crate) fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// Runs commands through the command thread; the future completes when the replies come
    /// or the deadline passes.
    ///
    /// Dropping the future does not withdraw the commands: they may still run.
    pub(crate) async fn run_async(&self, cmds: Vec<Cmd>) -> Result<Vec<Value>, BackendError> {
        self.run_async_then(cmds, None).await
    }

    /// As [`Commands::run_async`], with `then` run on the command thread first (see
    /// [`Commands::submit`]).
    pub(crate) async fn run_async_then(
        &self,
        cmds: Vec<Cmd>,
        then: Option<Then>,
    ) -> Result<Vec<Value>, BackendError> {
        let (rx, deadline) = self.submit(cmds, then);
        wait_for(rx, deadline).await
    }
}

/// The replies of a queued job, or a typed error at `deadline` (the job may still run).
pub(crate) async fn wait_for(
    rx: oneshot::Receiver<Result<Vec<Value>, BackendError>>,
    deadline: Instant,
) -> Result<Vec<Value>, BackendError> {
    flatten(rx.recv(Some(deadline)).await)
}

fn flatten(
    reply: Result<Result<Vec<Value>, BackendError>, oneshot::RecvError>,
) -> Result<Vec<Value>, BackendError> {
    match reply {
        Ok(result) => result,
        Err(oneshot::RecvError::Timeout) => Err(timed_out()),
        Err(oneshot::RecvError::Abandoned) => Err(BackendError::new(
            BackendErrorKind::Other,
            "the redis connection thread stopped",
        )),
    }
}

/// Takes every job queued, runs them all in one pipeline, answers each; until every handle
/// is dropped.
fn command_thread(pool: &Pool, rx: &Receiver<Job>) {
    let mut batch = Vec::with_capacity(64);
    while let Ok(first) = rx.recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        // A job whose caller gave up (its deadline passed) is not run.
        let now = Instant::now();
        let (stale, live): (Vec<Job>, Vec<Job>) = batch
            .drain(..)
            .partition(|job| job.reply.is_abandoned() && job.deadline <= now);
        for job in stale {
            // Never run, so never applied.
            job.finish(Err(timed_out().unsent()));
        }
        batch = live;
        if batch.is_empty() {
            continue;
        }
        let (cmds, parts) = plan(&batch);
        let timeouts = pool.timeouts();
        let now = Instant::now();
        let result = pool.run(
            &cmds,
            now + timeouts.operation,
            Some(now + timeouts.reply_guard),
        );
        match result {
            Ok(values) => answer(batch.drain(..), parts, values),
            Err(e) => {
                for job in batch.drain(..) {
                    job.finish(Err(e.clone()));
                }
            }
        }
    }
}

/// How the replies of a pipeline map back to the jobs of a batch.
enum Part {
    /// The next `n` replies belong to the next job.
    Cmds(usize),
    /// The next reply, of the bundled send script, answers the next `n` (send) jobs.
    Sends(usize),
}

/// The pipeline for a batch: each job's commands in order, and each run of sends to the same
/// key (and capacity) as one bundled script call.
fn plan(batch: &[Job]) -> (Vec<Cmd>, Vec<Part>) {
    let mut cmds = Vec::new();
    let mut parts = Vec::new();
    let mut i = 0;
    while i < batch.len() {
        let Some(first) = &batch[i].send else {
            cmds.extend(batch[i].cmds.iter().cloned());
            parts.push(Part::Cmds(batch[i].cmds.len()));
            i += 1;
            continue;
        };
        let run = batch[i..]
            .iter()
            .take_while(|job| {
                job.send
                    .as_ref()
                    .is_some_and(|s| s.key == first.key && s.capacity == first.capacity)
            })
            .count();
        let sends = batch[i..i + run].iter().filter_map(|job| job.send.as_ref());
        let cutoff = sends.clone().map(|s| s.cutoff).fold(f64::MIN, f64::max);
        let mut cmd = ::redis::cmd("EVALSHA");
        cmd.arg(&scripts().send_many.sha)
            .arg(1)
            .arg(&first.key)
            .arg(cutoff)
            .arg(first.capacity)
            .arg(first.ttl_millis);
        for s in sends {
            cmd.arg(s.score).arg(s.member.as_slice());
        }
        cmds.push(cmd);
        parts.push(Part::Sends(run));
        i += run;
    }
    (cmds, parts)
}

/// Answers each job of a batch from the pipeline's replies, as [`plan`] laid them out.
fn answer(jobs: impl Iterator<Item = Job>, parts: Vec<Part>, values: Vec<Value>) {
    let mut jobs = jobs;
    let mut values = values.into_iter();
    for part in parts {
        match part {
            Part::Cmds(n) => {
                if let Some(job) = jobs.next() {
                    job.finish(Ok(values.by_ref().take(n).collect()));
                }
            }
            Part::Sends(n) => {
                // `[expired, added_1, ..., added_n]`, or an error for all of them.
                let reply = values.next().unwrap_or(Value::Nil);
                let outcome: Result<Vec<Value>, BackendError> = match reply {
                    Value::Array(items) => Ok(items),
                    Value::ServerError(e) => Err(BackendError::new(
                        super::server_error_kind(e.code()),
                        format!("send: {} {}", e.code(), e.details().unwrap_or_default()),
                    )),
                    other => Err(BackendError::new(
                        BackendErrorKind::Protocol,
                        format!("unexpected reply to send: {other:?}"),
                    )),
                };
                let (expired, added) = match &outcome {
                    Ok(items) => (
                        items.first().cloned().unwrap_or(Value::Int(0)),
                        &items[1.min(items.len())..],
                    ),
                    Err(_) => (Value::Int(0), &[][..]),
                };
                for (k, job) in jobs.by_ref().take(n).enumerate() {
                    let result = match &outcome {
                        Err(e) => Err(e.clone()),
                        // Each send's reply as the single send script gives it; the expired
                        // count goes with the first, so it is counted once.
                        Ok(_) => Ok(vec![Value::Array(vec![
                            added.get(k).cloned().unwrap_or(Value::Int(0)),
                            if k == 0 {
                                expired.clone()
                            } else {
                                Value::Int(0)
                            },
                        ])]),
                    };
                    job.finish(result);
                }
            }
        }
    }
}
