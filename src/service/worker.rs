//! The service half: [`Worker`] threads that take messages from request channels and dispatch
//! them by `type` to handlers; [`WorkerBuilder`], [`WorkerMetrics`], [`ShutdownReport`].

use std::collections::HashMap;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::context::Context;
use super::error::{HandlerError, StartError};
use super::request::{Client, ClientMetrics, ERROR_KEY, ERROR_TYPE};
use crate::any::AnyLayer;
use crate::error::ReceiveError;
use crate::layer::{ChannelLayer, ChannelLayerExt};
use crate::message::{Message, new_correlation_id};
use crate::name::validate_channel;

/// How long a worker thread waits on its channel before it looks at the stop flag again: the
/// longest a shutdown waits for an idle thread.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(50);

type Handler =
    Arc<dyn Fn(&Context, Message) -> Result<Option<Message>, HandlerError> + Send + Sync>;

// ===== WorkerMetrics and ShutdownReport =====

/// A snapshot of a [`Worker`]'s counters, over all its threads.
///
/// Every message received is handled exactly once, whatever the outcome, so at a quiet moment
/// `received == handled`, and `received - handled` is the number of messages in hand.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct WorkerMetrics {
    /// Messages taken from the request channels.
    pub received: u64,
    /// Messages finished with, whatever the outcome (errors, panics, unknown types included).
    pub handled: u64,
    /// Replies sent, error replies included.
    pub replied: u64,
    /// Handlers that returned a [`HandlerError`].
    pub errors: u64,
    /// Handlers that panicked (the worker caught the panic and went on).
    pub panics: u64,
    /// Messages without a `type`.
    pub no_type: u64,
    /// Messages whose `type` has no handler.
    pub unknown_type: u64,
    /// Replies that could not be sent: the reply channel was full, invalid, or the layer
    /// failed. The caller most likely gave up already.
    pub reply_failed: u64,
    /// Replies a handler returned for a message that had no reply channel, dropped.
    pub unrouted: u64,
    /// Receives that failed in the backend; the thread pauses one poll interval and retries.
    pub receive_errors: u64,
}

/// What [`Worker::shutdown`] achieved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// Threads the worker ran.
    pub threads: usize,
    /// Threads that finished (and were joined) within the deadline. The others are still busy
    /// with a message in hand; they finish it, then stop on their own.
    pub finished: usize,
    /// How long the shutdown took.
    pub elapsed: Duration,
    /// The counters when the shutdown returned.
    pub metrics: WorkerMetrics,
}

impl ShutdownReport {
    /// Whether every thread finished within the deadline.
    pub fn is_complete(&self) -> bool {
        self.finished == self.threads
    }
}

#[derive(Debug, Default)]
struct Counters {
    received: AtomicU64,
    handled: AtomicU64,
    replied: AtomicU64,
    errors: AtomicU64,
    panics: AtomicU64,
    no_type: AtomicU64,
    unknown_type: AtomicU64,
    reply_failed: AtomicU64,
    unrouted: AtomicU64,
    receive_errors: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

// ===== WorkerBuilder =====

/// Configures a [`Worker`]: its request channels, threads and handlers. Made by
/// [`Worker::builder`].
pub struct WorkerBuilder {
    layer: AnyLayer,
    channels: Vec<String>,
    threads: usize,
    poll_interval: Duration,
    handlers: HashMap<String, Handler>,
}

impl fmt::Debug for WorkerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut types: Vec<&String> = self.handlers.keys().collect();
        types.sort();
        f.debug_struct("WorkerBuilder")
            .field("layer", &self.layer)
            .field("channels", &self.channels)
            .field("threads", &self.threads)
            .field("poll_interval", &self.poll_interval)
            .field("handlers", &types)
            .finish()
    }
}

impl WorkerBuilder {
    /// Adds a request channel to serve. A worker serves one or more.
    #[must_use]
    pub fn channel(mut self, name: impl Into<String>) -> Self {
        self.channels.push(name.into());
        self
    }

    /// The number of threads per channel (default 1). With more than one, messages of one
    /// channel are handled concurrently and their replies may leave out of order.
    #[must_use]
    pub fn threads(mut self, n: usize) -> Self {
        self.threads = n;
        self
    }

    /// How long a thread waits on its channel before looking at the stop flag again (default
    /// [`DEFAULT_POLL_INTERVAL`]): an idle worker shuts down within this.
    #[must_use]
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// Handles messages of `type` `message_type` with `handler`, replacing an earlier handler
    /// of that type.
    ///
    /// The handler returns `Ok(Some(reply))` to answer a request: the reply goes to the
    /// request's `reply_channel` with the request's correlation ID and flags. It returns
    /// `Ok(None)` for a one-way message (or when it answered through the context itself).
    /// `Err` and panics are counted and answered with an [`ERROR_TYPE`] reply.
    #[must_use]
    pub fn handle<F>(mut self, message_type: impl Into<String>, handler: F) -> Self
    where
        F: Fn(&Context, Message) -> Result<Option<Message>, HandlerError> + Send + Sync + 'static,
    {
        self.handlers.insert(message_type.into(), Arc::new(handler));
        self
    }

    /// Handles messages of `type` `message_type` with a typed handler: the message is decoded
    /// into `Req` ([`Message::decode`]; a message that does not decode is answered with an error
    /// reply) and the `Resp` it returns is encoded as the reply, so it must serialize as a map.
    /// Headers ride in the same map, so `Req` must not use `#[serde(deny_unknown_fields)]`.
    #[must_use]
    pub fn handle_typed<Req, Resp, F>(self, message_type: impl Into<String>, handler: F) -> Self
    where
        Req: DeserializeOwned,
        Resp: Serialize,
        F: Fn(&Context, Req) -> Result<Resp, HandlerError> + Send + Sync + 'static,
    {
        self.handle(message_type, move |ctx, message| {
            let request: Req = message
                .decode()
                .map_err(|e| HandlerError::new(format_args!("bad request: {e}")))?;
            let response = handler(ctx, request)?;
            let reply = Message::encode(&response)
                .map_err(|e| HandlerError::new(format_args!("bad response: {e}")))?;
            Ok(Some(reply))
        })
    }

    /// Starts the threads (named `worker:<channel>#<n>`) and returns the running worker.
    ///
    /// # Errors
    ///
    /// [`StartError`] when there is no channel, no thread, an invalid channel name, or the
    /// operating system refuses a thread (the threads started so far are stopped).
    pub fn start(self) -> Result<Worker, StartError> {
        if self.channels.is_empty() {
            return Err(StartError::NoChannels);
        }
        if self.threads == 0 {
            return Err(StartError::NoThreads);
        }
        for channel in &self.channels {
            validate_channel(channel)?;
        }
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            counters: Counters::default(),
            running: Mutex::new(0),
            finished: Condvar::new(),
        });
        let client = Client::new(self.layer.clone());
        let handlers = Arc::new(self.handlers);
        let mut worker = Worker {
            shared: Arc::clone(&shared),
            threads: Vec::new(),
            client: client.clone(),
            channels: self.channels.clone(),
        };
        for channel in &self.channels {
            let channel: Arc<str> = Arc::from(channel.as_str());
            for n in 0..self.threads {
                let runner = Runner {
                    layer: self.layer.clone(),
                    client: client.clone(),
                    channel: Arc::clone(&channel),
                    handlers: Arc::clone(&handlers),
                    shared: Arc::clone(&shared),
                    poll_interval: self.poll_interval,
                };
                *shared.running.lock() += 1;
                let spawned = thread::Builder::new()
                    .name(format!("worker:{channel}#{n}"))
                    .spawn(move || runner.run());
                match spawned {
                    Ok(handle) => worker.threads.push(handle),
                    Err(error) => {
                        *shared.running.lock() -= 1;
                        // Dropping `worker` stops the threads started so far.
                        return Err(StartError::Spawn(error));
                    }
                }
            }
        }
        Ok(worker)
    }
}

// ===== Worker =====

/// Threads serving request channels, dispatching each message by its `type` to a handler, as
/// Django Channels' consumers do.
///
/// A message without a `type`, or with a type no handler takes, is counted and, if it has a
/// reply channel, answered with an [`ERROR_TYPE`] reply; so is a handler's error or panic. The
/// worker never stops because of a message.
///
/// Stop it with [`Worker::shutdown`], which lets every thread finish the message in hand.
/// Dropping a worker also stops its threads, without waiting for them.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use channel_layer::prelude::*;
/// use channel_layer::service::{Client, Worker};
///
/// let layer = InMemoryLayer::default();
/// let worker = Worker::builder(layer.clone())
///     .channel("greeter.request")
///     .threads(2)
///     .handle("greet", |ctx, msg| {
///         let name = msg.get("name").and_then(Value::as_str).unwrap_or("stranger");
///         let text = if ctx.flag_on("shout") {
///             format!("HELLO, {name}!")
///         } else {
///             format!("hello, {name}")
///         };
///         Ok(Some(Message::new("greeting").with("text", text)))
///     })
///     .start()?;
///
/// let client = Client::new(layer);
/// let request = Message::new("greet").with("name", "ada").with_flag("shout", true);
/// let reply = client.request("greeter.request", request, Duration::from_secs(5))?;
/// assert_eq!(reply.get("text").and_then(Value::as_str), Some("HELLO, ada!"));
///
/// let report = worker.shutdown(Duration::from_secs(1));
/// assert!(report.is_complete());
/// assert_eq!(report.metrics.handled, 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[must_use = "dropping a worker stops it"]
pub struct Worker {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    client: Client,
    channels: Vec<String>,
}

impl fmt::Debug for Worker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Worker")
            .field("channels", &self.channels)
            .field("threads", &self.threads.len())
            .field("running", &*self.shared.running.lock())
            .field("stopping", &self.shared.stop.load(Ordering::Relaxed))
            .finish()
    }
}

impl Worker {
    /// A builder for a worker on `layer` (any backend, or an [`AnyLayer`]).
    pub fn builder(layer: impl Into<AnyLayer>) -> WorkerBuilder {
        WorkerBuilder {
            layer: layer.into(),
            channels: Vec::new(),
            threads: 1,
            poll_interval: DEFAULT_POLL_INTERVAL,
            handlers: HashMap::new(),
        }
    }

    /// The request channels this worker serves.
    pub fn channels(&self) -> &[String] {
        &self.channels
    }

    /// The counters, over all threads.
    pub fn metrics(&self) -> WorkerMetrics {
        self.shared.counters.snapshot()
    }

    /// The counters of the client that handlers' [`Context::request`] calls go through.
    pub fn client_metrics(&self) -> ClientMetrics {
        self.client.metrics()
    }

    /// Stops taking messages, lets every thread finish the message in hand, and waits at most
    /// `deadline` for them. A message a thread has received is always handled before the
    /// thread stops, even after the deadline; messages still queued in the channels stay there
    /// for the next worker.
    ///
    /// An idle thread notices within the poll interval (50 ms by default).
    pub fn shutdown(mut self, deadline: Duration) -> ShutdownReport {
        let start = Instant::now();
        self.shared.stop.store(true, Ordering::Release);
        {
            let mut running = self.shared.running.lock();
            let until = start.checked_add(deadline);
            while *running > 0 {
                match until {
                    Some(until) => {
                        if self
                            .shared
                            .finished
                            .wait_until(&mut running, until)
                            .timed_out()
                        {
                            break;
                        }
                    }
                    None => self.shared.finished.wait(&mut running),
                }
            }
        }
        let threads = std::mem::take(&mut self.threads);
        let total = threads.len();
        let mut finished = 0;
        for handle in threads {
            if handle.is_finished() || *self.shared.running.lock() == 0 {
                // A finished thread, or one past its last line: joining is immediate. A
                // thread's own panic was counted by the worker if it came from a handler.
                let _ = handle.join();
                finished += 1;
            }
            // Otherwise the handle is dropped: the thread finishes its message, then stops.
        }
        ShutdownReport {
            threads: total,
            finished,
            elapsed: start.elapsed(),
            metrics: self.metrics(),
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Signal only: the threads finish the message in hand and stop on their own.
        self.shared.stop.store(true, Ordering::Release);
    }
}

// ===== The threads =====

struct Shared {
    stop: AtomicBool,
    counters: Counters,
    running: Mutex<usize>,
    finished: Condvar,
}

impl Counters {
    fn snapshot(&self) -> WorkerMetrics {
        let get = |n: &AtomicU64| n.load(Ordering::Relaxed);
        WorkerMetrics {
            received: get(&self.received),
            handled: get(&self.handled),
            replied: get(&self.replied),
            errors: get(&self.errors),
            panics: get(&self.panics),
            no_type: get(&self.no_type),
            unknown_type: get(&self.unknown_type),
            reply_failed: get(&self.reply_failed),
            unrouted: get(&self.unrouted),
            receive_errors: get(&self.receive_errors),
        }
    }
}

/// Counts a thread out when it ends, however it ends.
struct Running<'a>(&'a Shared);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        let mut running = self.0.running.lock();
        *running -= 1;
        if *running == 0 {
            self.0.finished.notify_all();
        }
    }
}

struct Runner {
    layer: AnyLayer,
    client: Client,
    channel: Arc<str>,
    handlers: Arc<HashMap<String, Handler>>,
    shared: Arc<Shared>,
    poll_interval: Duration,
}

/// How handling a message went, apart from a reply to send.
enum Failure {
    NoType,
    UnknownType(String),
    Error(HandlerError),
    Panic(String),
}

impl Runner {
    fn run(self) {
        let _running = Running(&self.shared);
        let counters = &self.shared.counters;
        while !self.shared.stop.load(Ordering::Acquire) {
            match self
                .layer
                .receive_timeout(&self.channel, self.poll_interval)
            {
                // Once received, a message is always handled, stop flag or not.
                Ok(message) => self.dispatch(message),
                Err(ReceiveError::Timeout) => {}
                Err(ReceiveError::Closed | ReceiveError::InvalidName(_)) => break,
                Err(_) => {
                    bump(&counters.receive_errors);
                    thread::sleep(self.poll_interval);
                }
            }
        }
    }

    fn dispatch(&self, mut message: Message) {
        let counters = &self.shared.counters;
        bump(&counters.received);
        if message.correlation_id().is_none() {
            message.set_correlation_id(new_correlation_id());
        }
        let channel = Arc::clone(&self.channel);
        crate::observe::processing(&channel, &message.clone(), || self.handle(message));
        bump(&counters.handled);
    }

    /// Runs the handler for `message` and answers it.
    fn handle(&self, message: Message) {
        let counters = &self.shared.counters;
        let outcome = match message.message_type() {
            None => Err(Failure::NoType),
            Some(kind) => match self.handlers.get(kind) {
                None => Err(Failure::UnknownType(kind.to_owned())),
                Some(handler) => self.call(handler, message.clone()),
            },
        };
        match outcome {
            Ok(Some(reply)) => self.reply(&message, reply),
            Ok(None) => {}
            Err(failure) => {
                let text = match failure {
                    Failure::NoType => {
                        bump(&counters.no_type);
                        "message has no type".to_owned()
                    }
                    Failure::UnknownType(kind) => {
                        bump(&counters.unknown_type);
                        format!("no handler for message type {kind:?}")
                    }
                    Failure::Error(error) => {
                        bump(&counters.errors);
                        error.message().to_owned()
                    }
                    Failure::Panic(text) => {
                        bump(&counters.panics);
                        format!("handler panicked: {text}")
                    }
                };
                crate::observe::not_handled(&text);
                if message.reply_channel().is_some() {
                    let mut reply = Message::new(ERROR_TYPE).with(ERROR_KEY, text);
                    if let Some(kind) = message.message_type() {
                        reply.insert("request_type", kind);
                    }
                    self.reply(&message, reply);
                }
            }
        }
    }

    fn call(&self, handler: &Handler, message: Message) -> Result<Option<Message>, Failure> {
        let ctx = Context::new(
            self.layer.clone(),
            self.client.clone(),
            Arc::clone(&self.channel),
            message.clone(),
        );
        let start = Instant::now();
        let outcome = catch_unwind(AssertUnwindSafe(|| handler(&ctx, message)));
        // `messaging.process.duration`, labelled by the handled type (one with a handler, so
        // the labels stay few; see `crate::observe`).
        let error = match &outcome {
            Ok(Ok(_)) => None,
            Ok(Err(_)) => Some("handler_error"),
            Err(_) => Some("panic"),
        };
        crate::observe::processed(
            ctx.message().message_type().unwrap_or_default(),
            start.elapsed(),
            error,
        );
        match outcome {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(error)) => Err(Failure::Error(error)),
            Err(payload) => {
                let text = if let Some(s) = payload.downcast_ref::<&str>() {
                    (*s).to_owned()
                } else if let Some(s) = payload.downcast_ref::<String>() {
                    s.clone()
                } else {
                    "a non-string payload".to_owned()
                };
                Err(Failure::Panic(text))
            }
        }
    }

    /// Sends `reply` to the request's reply channel, with the request's correlation ID and
    /// flags.
    fn reply(&self, request: &Message, mut reply: Message) {
        let counters = &self.shared.counters;
        let Some(reply_channel) = request.reply_channel() else {
            bump(&counters.unrouted);
            return;
        };
        if let Some(id) = request.correlation_id() {
            // The reply must match its request, whatever the handler put there.
            reply.set_correlation_id(id);
        }
        match self.layer.send(reply_channel, reply.caused_by(request)) {
            Ok(()) => bump(&counters.replied),
            Err(_) => bump(&counters.reply_failed),
        }
    }
}
