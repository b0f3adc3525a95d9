//! Connections to one Redis server: a command thread that pipelines whatever callers have
//! queued into one round trip, and the helpers the receiving thread uses.
//!
//! No async runtime is involved. Async callers queue a [`Job`] for the server's command thread
//! and await a one-shot reply, so many concurrent sends share a round trip. Blocking callers
//! run their commands on their own thread over an idle pooled connection, with no thread hop.
//! When the server is unreachable, calls fail with a typed error at once (for a short pause
//! after a failed connection attempt) or within the timeouts, never later; the next call
//! reconnects.

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use ::redis::{Client, Cmd, Connection, ServerErrorKind, Value};
use crossbeam_channel::{Receiver, Sender, TryRecvError};
use parking_lot::Mutex;

use super::scripts::scripts;
use crate::error::{BackendError, BackendErrorKind};
use crate::oneshot;

/// How many jobs one round trip carries at most.
const MAX_BATCH: usize = 512;

/// After a failed connection attempt, jobs fail at once for this long instead of each trying
/// again, so an outage costs callers no waiting and the server no connection storm.
const RECONNECT_PAUSE: Duration = Duration::from_millis(100);

/// Timeouts for talking to one server.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timeouts {
    pub(crate) connect: Duration,
    pub(crate) operation: Duration,
}

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

/// Maps a client error to ours, naming what was being done.
pub(crate) fn backend_error(what: &str, e: &::redis::RedisError) -> BackendError {
    let kind = if e.is_timeout() {
        BackendErrorKind::Timeout
    } else if e.is_io_error() || e.is_connection_refusal() || e.is_connection_dropped() {
        BackendErrorKind::Connection
    } else {
        BackendErrorKind::Protocol
    };
    BackendError::new(kind, format!("{what}: {e}"))
}

/// Opens a connection with the timeouts set, and loads the scripts.
pub(crate) fn connect(
    client: &Client,
    timeouts: Timeouts,
    read: Duration,
) -> Result<Connection, BackendError> {
    let mut conn = client
        .get_connection_with_timeout(timeouts.connect)
        .map_err(|e| backend_error("connecting to redis", &e))?;
    conn.set_read_timeout(Some(read))
        .and_then(|()| conn.set_write_timeout(Some(timeouts.operation)))
        .map_err(|e| backend_error("configuring the redis connection", &e))?;
    load_scripts(&mut conn)?;
    Ok(conn)
}

fn load_scripts(conn: &mut Connection) -> Result<(), BackendError> {
    let mut pipe = ::redis::pipe();
    for script in scripts().all() {
        pipe.cmd("SCRIPT").arg("LOAD").arg(script.source);
    }
    pipe.query::<Vec<Value>>(conn)
        .map(drop)
        .map_err(|e| backend_error("loading scripts into redis", &e))
}

/// What the command thread and the callers that run commands on their own thread share: the
/// client, idle connections, and the last connection failure.
struct Shared {
    client: Client,
    timeouts: Timeouts,
    idle: Mutex<Vec<Connection>>,
    failed: Mutex<Option<(Instant, BackendError)>>,
}

/// Idle connections kept for callers that run commands on their own thread.
const MAX_IDLE: usize = 16;

impl Shared {
    /// An idle connection, or a new one; during an outage, the last failure at once.
    fn connection(&self) -> Result<Connection, BackendError> {
        if let Some(conn) = self.idle.lock().pop() {
            return Ok(conn);
        }
        if let Some((at, e)) = &*self.failed.lock() {
            if at.elapsed() < RECONNECT_PAUSE {
                return Err(e.clone());
            }
        }
        match connect(&self.client, self.timeouts, self.timeouts.operation) {
            Ok(conn) => {
                *self.failed.lock() = None;
                Ok(conn)
            }
            Err(e) => {
                *self.failed.lock() = Some((Instant::now(), e.clone()));
                Err(e)
            }
        }
    }

    fn give_back(&self, conn: Connection) {
        let mut idle = self.idle.lock();
        if idle.len() < MAX_IDLE {
            idle.push(conn);
        }
    }

    /// Sends commands in one pipeline. If the server lost the scripts (a restart,
    /// `SCRIPT FLUSH`), they are loaded again and the pipeline retried once: scripted commands
    /// failed as a whole, and the others are idempotent. On a failed round trip the
    /// connection is dropped, since its state is unknown.
    fn query<'a>(
        &self,
        mut conn: Connection,
        cmds: impl Iterator<Item = &'a Cmd> + Clone,
    ) -> Result<Vec<Value>, BackendError> {
        let mut pipe = ::redis::pipe();
        pipe.ignore_errors();
        for cmd in cmds {
            pipe.add_command(cmd.clone());
        }
        for attempt in 0..2 {
            match pipe.query::<Vec<Value>>(&mut conn) {
                Ok(values) => {
                    let noscript = values.iter().any(|v| {
                        matches!(v, Value::ServerError(e) if e.kind() == Some(ServerErrorKind::NoScript))
                    });
                    if noscript && attempt == 0 {
                        load_scripts(&mut conn)?;
                        continue;
                    }
                    self.give_back(conn);
                    return Ok(values);
                }
                Err(e) => return Err(backend_error("redis command", &e)),
            }
        }
        unreachable!("the second attempt returns")
    }
}

/// The handle to a server's connections: a command thread that pipelines what callers queue
/// (async callers), and idle connections a blocking caller uses on its own thread (no thread
/// hop, no wake-up to wait for).
#[derive(Clone)]
pub(crate) struct Commands {
    tx: Sender<Job>,
    shared: Arc<Shared>,
}

impl Commands {
    /// Starts the command thread for `client`; it ends when every handle is dropped.
    pub(crate) fn start(
        client: Client,
        timeouts: Timeouts,
        name: String,
    ) -> Result<Self, BackendError> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let shared = Arc::new(Shared {
            client,
            timeouts,
            idle: Mutex::new(Vec::new()),
            failed: Mutex::new(None),
        });
        let thread_shared = shared.clone();
        thread::Builder::new()
            .name(name)
            .spawn(move || command_thread(&thread_shared, &rx))
            .map_err(|e| {
                BackendError::new(BackendErrorKind::Other, "starting the redis thread")
                    .with_source(e)
            })?;
        Ok(Commands { tx, shared })
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
        let deadline = Instant::now() + self.shared.timeouts.operation;
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
        let deadline = Instant::now() + self.shared.timeouts.operation;
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
        flatten(rx.recv(Some(deadline)).await)
    }

    /// Runs commands in one round trip on the calling thread, blocking it; bounded by the
    /// connect and operation timeouts.
    pub(crate) fn run(&self, cmds: Vec<Cmd>) -> Result<Vec<Value>, BackendError> {
        let conn = self.shared.connection()?;
        self.shared.query(conn, cmds.iter())
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
        flatten(rx.recv(Some(deadline)).await)
    }
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
fn command_thread(shared: &Shared, rx: &Receiver<Job>) {
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
            job.finish(Err(timed_out()));
        }
        batch = live;
        if batch.is_empty() {
            continue;
        }
        let (cmds, parts) = plan(&batch);
        let result = shared
            .connection()
            .and_then(|conn| shared.query(conn, cmds.iter()));
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
                        BackendErrorKind::Refused,
                        format!("send: {e:?}"),
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
