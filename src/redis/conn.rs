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

/// Commands to run in one pipeline, and where their replies go.
pub(crate) struct Job {
    cmds: Vec<Cmd>,
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
        let result = shared
            .connection()
            .and_then(|conn| shared.query(conn, batch.iter().flat_map(|job| job.cmds.iter())));
        match result {
            Ok(values) => {
                let mut rest = values.into_iter();
                for job in batch.drain(..) {
                    let replies: Vec<Value> = rest.by_ref().take(job.cmds.len()).collect();
                    job.finish(Ok(replies));
                }
            }
            Err(e) => {
                for job in batch.drain(..) {
                    job.finish(Err(e.clone()));
                }
            }
        }
    }
}
