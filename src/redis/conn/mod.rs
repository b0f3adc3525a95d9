//! Connections to one Redis server: the sockets ([`socket`]), a pool of idle connections that
//! finds dead ones before using them ([`Pool`]), and the command thread that pipelines what
//! async callers queue ([`thread`]).
//!
//! How failures are met here:
//! - A pooled connection the server closed while it was idle is noticed before a command is
//!   written to it, and replaced; a call whose command provably never reached the server (no
//!   byte of it could be written) is retried once on a fresh connection. A call that may have
//!   reached the server is never retried here: the caller gets an error that says so
//!   ([`BackendError::may_have_applied`]).
//! - After a failed connection attempt, calls fail at once for [`RECONNECT_PAUSE`] instead of
//!   each trying again, so an outage costs callers no waiting and the server no storm of
//!   connections.
//! - Every failure is counted in the layer's `backend_errors`, every connection made again
//!   after a loss in `reconnects`, and both are reported as `tracing` events.

mod resp;
mod sentinel;
pub(crate) use sentinel::SentinelSet;
pub(crate) mod socket;
pub(crate) mod thread;
#[cfg(feature = "redis-tls")]
mod tls;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ::redis::{Cmd, ServerErrorKind, Value};
use parking_lot::Mutex;

pub(crate) use self::socket::{Connection, Endpoint};
pub(crate) use self::thread::{Commands, SendOne, Then};
use super::scripts::scripts;
use crate::error::{BackendError, BackendErrorKind};
use crate::metrics::Counters;

/// After a failed connection attempt, calls fail at once for this long.
pub(crate) const RECONNECT_PAUSE: Duration = Duration::from_millis(100);

/// Idle connections kept for callers that run commands on their own thread.
const MAX_IDLE: usize = 16;

/// Emits a `tracing` event when the feature is on.
macro_rules! event {
    ($level:ident, $($arg:tt)*) => {
        #[cfg(feature = "tracing")]
        tracing::$level!($($arg)*);
    };
}
#[allow(unused_imports)]
pub(crate) use event;

/// Timeouts for talking to one server.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timeouts {
    /// How long making a connection may take.
    pub(crate) connect: Duration,
    /// How long a caller waits for an operation.
    pub(crate) operation: Duration,
    /// How long the threads that take messages (pullers, the command thread) wait for a reply
    /// before they give the connection up. A reply to a take holds messages already removed
    /// from Redis, so they wait long: as long as a message lives, plus the operation timeout,
    /// after which whatever the reply held would have expired anyway.
    pub(crate) reply_guard: Duration,
}

/// The kind of a server's error reply.
pub(crate) fn server_error_kind(code: &str) -> BackendErrorKind {
    match code {
        "WRONGTYPE" => BackendErrorKind::WrongType,
        // Loading its data after a restart, failing over, or busy with a script: it will pass.
        "LOADING" | "TRYAGAIN" | "MASTERDOWN" | "READONLY" | "CLUSTERDOWN" | "BUSY" => {
            BackendErrorKind::Unavailable
        }
        _ => BackendErrorKind::Refused,
    }
}

/// Whether a reply says the server stopped being a master: `READONLY` (a replica refuses
/// writes) or `MASTERDOWN` (a replica that lost its master).
pub(crate) fn demoted(value: &Value) -> bool {
    matches!(value, Value::ServerError(e) if matches!(e.code(), "READONLY" | "MASTERDOWN"))
}

/// A server's error reply to `what` as a typed error, or the value.
pub(crate) fn check_reply(what: &str, value: Value) -> Result<Value, BackendError> {
    match value {
        Value::ServerError(e) => Err(BackendError::new(
            server_error_kind(e.code()),
            format!("{what}: {} {}", e.code(), e.details().unwrap_or_default()),
        )),
        other => Ok(other),
    }
}

/// Connections to one server, shared by the command thread and the callers that run commands
/// on their own thread.
pub(crate) struct Pool {
    endpoint: Endpoint,
    timeouts: Timeouts,
    idle: Mutex<Vec<Connection>>,
    failed: Mutex<Option<(Instant, BackendError)>>,
    /// A connection was lost, or could not be made, since one was last made.
    lost: AtomicBool,
    counters: Arc<Counters>,
}

impl Pool {
    pub(crate) fn new(endpoint: Endpoint, timeouts: Timeouts, counters: Arc<Counters>) -> Self {
        Pool {
            endpoint,
            timeouts,
            idle: Mutex::new(Vec::new()),
            failed: Mutex::new(None),
            lost: AtomicBool::new(false),
            counters,
        }
    }

    pub(crate) fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    /// Counts a failure, and remembers that a connection was lost.
    pub(crate) fn failure(&self, error: &BackendError) {
        Counters::add(&self.counters.backend_errors, 1);
        if error.is_transient() {
            self.lost.store(true, Ordering::Relaxed);
        }
        event!(warn, server = self.endpoint.name(), error = %error, "redis call failed");
    }

    /// Makes a connection (by `deadline`, and within the connect timeout), counting a
    /// reconnect when one was lost before. Used by the pool and by the pullers.
    pub(crate) fn connect(&self, deadline: Instant) -> Result<Connection, BackendError> {
        let by = deadline.min(Instant::now() + self.timeouts.connect);
        match self.endpoint.connect(by) {
            Ok(conn) => {
                if self.lost.swap(false, Ordering::Relaxed) {
                    Counters::add(&self.counters.reconnects, 1);
                    event!(info, server = self.endpoint.name(), "reconnected to redis");
                }
                Ok(conn)
            }
            Err(e) => {
                self.failure(&e);
                Err(e)
            }
        }
    }

    /// A live idle connection, or a new one; during an outage, the last failure at once.
    fn checkout(&self, deadline: Instant) -> Result<Connection, BackendError> {
        loop {
            let Some(conn) = self.idle.lock().pop() else {
                break;
            };
            if conn.is_alive() {
                return Ok(conn);
            }
            // Closed by the server or a proxy while idle: nothing was sent on it.
            self.lost.store(true, Ordering::Relaxed);
            event!(
                debug,
                server = self.endpoint.name(),
                "dropping a closed idle connection"
            );
        }
        if let Some((at, e)) = &*self.failed.lock() {
            if at.elapsed() < RECONNECT_PAUSE {
                // A failure the caller sees, counted; not reported again as an event.
                Counters::add(&self.counters.backend_errors, 1);
                return Err(e.clone());
            }
        }
        match self.connect(deadline) {
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

    /// Drops every idle connection (they lead to a server that is no longer the master).
    pub(crate) fn forget_idle(&self) {
        let dropped = std::mem::take(&mut *self.idle.lock());
        if !dropped.is_empty() {
            self.lost.store(true, Ordering::Relaxed);
        }
    }

    fn give_back(&self, conn: Connection) {
        let mut idle = self.idle.lock();
        if idle.len() < MAX_IDLE {
            idle.push(conn);
        }
    }

    /// Runs `cmds` as one pipeline and returns one reply per command (a server's error reply
    /// is a [`Value::ServerError`] among them). Replies are read by `deadline`; a connection
    /// is made by `connect_by`.
    ///
    /// A pipeline that provably never reached the server is retried once on a fresh
    /// connection. Commands the server no longer knows the script of (after a restart or
    /// `SCRIPT FLUSH`) are run again, alone, after loading the scripts; the others are never
    /// run twice.
    pub(crate) fn run(
        &self,
        cmds: &[Cmd],
        connect_by: Instant,
        deadline: Option<Instant>,
    ) -> Result<Vec<Value>, BackendError> {
        let packed: Vec<Vec<u8>> = cmds.iter().map(Cmd::get_packed_command).collect();
        let all = packed.concat();
        let mut retried = false;
        loop {
            let mut conn = self.checkout(connect_by)?;
            match conn.exchange(&all, packed.len(), deadline) {
                Ok(mut values) => {
                    if values.iter().any(demoted) {
                        // The server is a replica now (a failover): this connection and its
                        // idle siblings lead there. New ones ask again where the master is.
                        self.forget_idle();
                        return Ok(values);
                    }
                    if self.run_again_with_scripts(&mut conn, &packed, &mut values, deadline) {
                        self.give_back(conn);
                    }
                    return Ok(values);
                }
                Err(e) => {
                    self.failure(&e);
                    if e.may_have_applied() || retried {
                        return Err(e);
                    }
                    retried = true;
                }
            }
        }
    }

    /// Loads the scripts and runs again the commands whose replies say their script was
    /// missing, putting their new replies in place. Returns whether the connection is still
    /// usable; if not, those replies stay the missing-script errors.
    fn run_again_with_scripts(
        &self,
        conn: &mut Connection,
        packed: &[Vec<u8>],
        values: &mut [Value],
        deadline: Option<Instant>,
    ) -> bool {
        let missing: Vec<usize> = values
            .iter()
            .enumerate()
            .filter(|(_, v)| {
                matches!(v, Value::ServerError(e) if e.kind() == Some(ServerErrorKind::NoScript))
            })
            .map(|(i, _)| i)
            .collect();
        if missing.is_empty() {
            return true;
        }
        let mut bytes = Vec::new();
        let loads = scripts().all();
        for script in loads {
            bytes.extend(
                ::redis::cmd("SCRIPT")
                    .arg("LOAD")
                    .arg(script.source)
                    .get_packed_command(),
            );
        }
        for &i in &missing {
            bytes.extend_from_slice(&packed[i]);
        }
        match conn.exchange(&bytes, loads.len() + missing.len(), deadline) {
            Ok(replies) => {
                for (&i, value) in missing.iter().zip(replies.into_iter().skip(loads.len())) {
                    values[i] = value;
                }
                true
            }
            Err(e) => {
                self.failure(&e);
                false
            }
        }
    }
}
