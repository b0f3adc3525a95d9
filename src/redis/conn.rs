//! Connections to one Redis server: a command thread that pipelines whatever callers have
//! queued into one round trip, and the helpers the receiving thread uses.
//!
//! No async runtime is involved: each server gets one thread owning one connection for
//! commands. Callers, blocking or async, queue a [`Job`] and wait on a one-shot reply, so many
//! concurrent sends share a round trip. When the server is unreachable, jobs fail with a typed
//! error at once or when their deadline passes, never later; the next job reconnects.

use std::thread;
use std::time::{Duration, Instant};

use ::redis::{Client, Cmd, Connection, ServerErrorKind, Value};
use crossbeam_channel::{Receiver, Sender, TryRecvError};

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

/// Commands to run in one pipeline, and where their replies go.
pub(crate) struct Job {
    pub(crate) cmds: Vec<Cmd>,
    pub(crate) reply: oneshot::Sender<Result<Vec<Value>, BackendError>>,
    pub(crate) deadline: Instant,
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

/// The handle to a server's command thread.
#[derive(Clone)]
pub(crate) struct Commands {
    tx: Sender<Job>,
    timeouts: Timeouts,
}

impl Commands {
    /// Starts the command thread for `client`; it ends when every handle is dropped.
    pub(crate) fn start(
        client: Client,
        timeouts: Timeouts,
        name: String,
    ) -> Result<Self, BackendError> {
        let (tx, rx) = crossbeam_channel::unbounded();
        thread::Builder::new()
            .name(name)
            .spawn(move || CommandThread::new(client, timeouts).run(&rx))
            .map_err(|e| {
                BackendError::new(BackendErrorKind::Other, "starting the redis thread")
                    .with_source(e)
            })?;
        Ok(Commands { tx, timeouts })
    }

    /// Queues commands; the reply comes through the returned receiver, by the deadline.
    pub(crate) fn submit(
        &self,
        cmds: Vec<Cmd>,
    ) -> (oneshot::Receiver<Result<Vec<Value>, BackendError>>, Instant) {
        let (reply, rx) = oneshot::channel();
        let deadline = Instant::now() + self.timeouts.operation;
        let job = Job {
            cmds,
            reply,
            deadline,
        };
        if let Err(crossbeam_channel::SendError(job)) = self.tx.send(job) {
            job.reply.send(Err(BackendError::new(
                BackendErrorKind::Other,
                "the redis connection thread has stopped",
            )));
        }
        (rx, deadline)
    }

    /// Runs commands, blocking the thread until the replies come or the deadline passes.
    pub(crate) fn run(&self, cmds: Vec<Cmd>) -> Result<Vec<Value>, BackendError> {
        let (rx, deadline) = self.submit(cmds);
        flatten(rx.wait(Some(deadline)))
    }

    /// Runs commands; the future completes when the replies come or the deadline passes.
    ///
    /// Dropping the future does not withdraw the commands: they may still run.
    pub(crate) async fn run_async(&self, cmds: Vec<Cmd>) -> Result<Vec<Value>, BackendError> {
        let (rx, deadline) = self.submit(cmds);
        flatten(rx.recv(Some(deadline)).await)
    }
}

fn flatten(
    reply: Result<Result<Vec<Value>, BackendError>, oneshot::RecvError>,
) -> Result<Vec<Value>, BackendError> {
    match reply {
        Ok(result) => result,
        Err(oneshot::RecvError::Timeout) => Err(BackendError::new(
            BackendErrorKind::Timeout,
            "redis did not answer in time",
        )),
        Err(oneshot::RecvError::Abandoned) => Err(BackendError::new(
            BackendErrorKind::Other,
            "the redis connection thread stopped",
        )),
    }
}

struct CommandThread {
    client: Client,
    timeouts: Timeouts,
    conn: Option<Connection>,
    failed: Option<(Instant, BackendError)>,
}

impl CommandThread {
    fn new(client: Client, timeouts: Timeouts) -> Self {
        CommandThread {
            client,
            timeouts,
            conn: None,
            failed: None,
        }
    }

    fn run(mut self, rx: &Receiver<Job>) {
        let mut batch = Vec::with_capacity(64);
        while let Ok(first) = rx.recv() {
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                }
            }
            self.execute(&mut batch);
        }
    }

    /// Runs a batch of jobs in one pipeline and answers each.
    fn execute(&mut self, batch: &mut Vec<Job>) {
        let now = Instant::now();
        batch.retain_mut(|job| {
            if job.reply.is_abandoned() && job.deadline <= now {
                return false;
            }
            true
        });
        if batch.is_empty() {
            return;
        }
        let result = self.ensure_connected().and_then(|()| self.query(batch));
        match result {
            Ok(mut values) => {
                let mut rest = values.drain(..);
                for job in batch.drain(..) {
                    let n = job.cmds.len();
                    let replies: Vec<Value> = rest.by_ref().take(n).collect();
                    job.reply.send(Ok(replies));
                }
            }
            Err(e) => {
                for job in batch.drain(..) {
                    job.reply.send(Err(e.clone()));
                }
            }
        }
    }

    fn ensure_connected(&mut self) -> Result<(), BackendError> {
        if self.conn.is_some() {
            return Ok(());
        }
        if let Some((at, e)) = &self.failed {
            if at.elapsed() < RECONNECT_PAUSE {
                return Err(e.clone());
            }
        }
        match connect(&self.client, self.timeouts, self.timeouts.operation) {
            Ok(conn) => {
                self.conn = Some(conn);
                self.failed = None;
                Ok(())
            }
            Err(e) => {
                self.failed = Some((Instant::now(), e.clone()));
                Err(e)
            }
        }
    }

    /// Sends every job's commands in one pipeline. If the server lost the scripts (a restart,
    /// `SCRIPT FLUSH`), they are loaded again and the batch retried once: scripted commands
    /// failed as a whole, and the others are idempotent.
    fn query(&mut self, batch: &[Job]) -> Result<Vec<Value>, BackendError> {
        let mut pipe = ::redis::pipe();
        pipe.ignore_errors();
        for job in batch {
            for cmd in &job.cmds {
                pipe.add_command(cmd.clone());
            }
        }
        for attempt in 0..2 {
            let conn = self.conn.as_mut().expect("connected");
            match pipe.query::<Vec<Value>>(conn) {
                Ok(values) => {
                    let noscript = values.iter().any(|v| {
                        matches!(v, Value::ServerError(e) if e.kind() == Some(ServerErrorKind::NoScript))
                    });
                    if noscript && attempt == 0 {
                        if let Err(e) = load_scripts(conn) {
                            self.conn = None;
                            return Err(e);
                        }
                        continue;
                    }
                    return Ok(values);
                }
                Err(e) => {
                    // The connection's state is unknown after a failed round trip: drop it.
                    self.conn = None;
                    return Err(backend_error("redis command", &e));
                }
            }
        }
        unreachable!("the second attempt returns")
    }
}
