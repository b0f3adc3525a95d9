//! Request/response over reply channels: [`Client`] and [`ClientMetrics`].

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::error::RequestError;
use crate::any::AnyLayer;
use crate::error::{ReceiveError, SendError};
use crate::layer::{ChannelLayer, deadline_after};
use crate::message::{Message, Value, new_correlation_id};
use crate::name::NameError;

/// The `type` of the reply a service sends when it could not serve a request. The reply
/// carries the reason as a string under [`ERROR_KEY`], and the request's correlation ID.
pub const ERROR_TYPE: &str = "service.error";

/// The key under which a [`ERROR_TYPE`] reply carries its reason.
pub const ERROR_KEY: &str = "error";

/// The default prefix of reply channels ([`Client::reply_prefix`]).
pub const DEFAULT_REPLY_PREFIX: &str = "reply";

/// How many abandoned reply channels a client keeps watching for late replies; beyond this the
/// oldest is forgotten (a reply that still comes to it expires in the layer, which counts it).
const LATE_WATCH_LIMIT: usize = 1_000;

/// An abandoned reply channel is watched for ten times its request's timeout, and at least this
/// long (the layer's default expiry: a reply older than that is never delivered anyway).
const LATE_WATCH_MIN: Duration = Duration::from_secs(60);

/// Requests sweep abandoned reply channels at most this often (`metrics` always does).
const SWEEP_INTERVAL: Duration = Duration::from_millis(100);

/// A request sweeps at most this many abandoned reply channels (`metrics` sweeps them all), so
/// that on a network backend, where each costs a round trip, a burst of timeouts does not slow
/// the requests that follow.
const SWEEP_BUDGET: usize = 32;

// ===== ClientMetrics =====

/// A snapshot of a [`Client`]'s counters, shared by all its clones.
///
/// At a quiet moment (no request in flight):
/// `requests == full + failed + timeouts + cancelled + replies`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct ClientMetrics {
    /// Requests made (typed requests count once they are encoded).
    pub requests: u64,
    /// Replies received for their request, error replies included.
    pub replies: u64,
    /// Requests that gave up waiting ([`RequestError::Timeout`]).
    pub timeouts: u64,
    /// Requests not sent because the request channel was full ([`RequestError::Full`]).
    pub full: u64,
    /// Replies that were error replies ([`RequestError::Service`]); also counted in `replies`.
    pub service_errors: u64,
    /// Replies that arrived after their request had timed out, been cancelled or failed: found
    /// on abandoned reply channels and dropped.
    pub late_replies: u64,
    /// Messages on a reply channel carrying another correlation ID than the request's: dropped
    /// while the request kept waiting.
    pub mismatched: u64,
    /// Requests that failed otherwise ([`RequestError::Send`], [`RequestError::Receive`]).
    pub failed: u64,
    /// Async requests whose future was dropped before it completed.
    pub cancelled: u64,
}

#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    replies: AtomicU64,
    timeouts: AtomicU64,
    full: AtomicU64,
    service_errors: AtomicU64,
    late_replies: AtomicU64,
    mismatched: AtomicU64,
    failed: AtomicU64,
    cancelled: AtomicU64,
}

fn bump(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

// ===== Client =====

/// Sends requests to services and waits for their replies: the client half of the
/// request/response pattern.
///
/// Each request gets a fresh reply channel ([`ChannelLayer::new_channel`]) in its
/// `reply_channel` header and a correlation ID (the one it already carries, else a new one).
/// The client waits on that channel alone, so a reply can never reach another request. A reply
/// carrying another correlation ID is dropped and counted; a reply carrying none is accepted
/// (its channel names the request already), so plain consumers that only echo to the reply
/// channel, such as a Django consumer, can answer.
///
/// A client is cheap to clone; clones share their counters and the list of abandoned reply
/// channels. It works unchanged on every backend.
///
/// # Late replies
///
/// When a request times out, fails or is cancelled, its reply channel is remembered, for ten
/// times the timeout and at least a minute, and at most 1,000 channels at once (beyond that
/// the one watched longest is forgotten; a reply that still comes to it expires in the layer,
/// which counts it). Later requests (at most every 100 ms, 32 channels at a time) and
/// [`Client::metrics`] (all of them) sweep those channels with `try_receive`, count what they
/// find in [`ClientMetrics::late_replies`], and so free the room the late replies took in the
/// layer.
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
///     .channel("echo.request")
///     .handle("echo", |_ctx, msg| {
///         let text = msg.get("text").cloned().unwrap_or(Value::Null);
///         Ok(Some(Message::new("echo.reply").with("text", text)))
///     })
///     .start()?;
///
/// let client = Client::new(layer);
/// let request = Message::new("echo").with("text", "hi");
/// let reply = client.request("echo.request", request, Duration::from_secs(5))?;
/// assert_eq!(reply.get("text").and_then(Value::as_str), Some("hi"));
/// assert!(reply.correlation_id().is_some());
/// worker.shutdown(Duration::from_secs(1));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Client {
    layer: AnyLayer,
    reply_prefix: Arc<str>,
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    counters: Counters,
    watch: Mutex<Watch>,
    /// How many reply channels `watch` holds, read without the lock.
    watched: AtomicUsize,
}

#[derive(Debug, Default)]
struct Watch {
    abandoned: VecDeque<Abandoned>,
    last_sweep: Option<Instant>,
}

#[derive(Debug)]
struct Abandoned {
    channel: String,
    until: Instant,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("layer", &self.layer)
            .field("reply_prefix", &self.reply_prefix)
            .field("abandoned", &self.shared.watch.lock().abandoned.len())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client sending over `layer` (any backend, or an [`AnyLayer`]).
    pub fn new(layer: impl Into<AnyLayer>) -> Self {
        Client {
            layer: layer.into(),
            reply_prefix: Arc::from(DEFAULT_REPLY_PREFIX),
            shared: Arc::default(),
        }
    }

    /// With reply channels minted under `prefix` (default [`DEFAULT_REPLY_PREFIX`]): reply
    /// channels are named `<prefix>.<process>!<random>`. Clones made earlier keep their prefix.
    ///
    /// # Errors
    ///
    /// [`NameError`] when the layer rejects the prefix.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use channel_layer::prelude::*;
    /// use channel_layer::service::Client;
    ///
    /// let layer = InMemoryLayer::default();
    /// let client = Client::new(layer.clone()).reply_prefix("billing-reply")?;
    /// let invoice = Message::new("invoice");
    /// let _ = client.request("billing.request", invoice, Duration::from_millis(1));
    /// let request = layer.receive("billing.request")?;
    /// assert!(request.reply_channel().is_some_and(|c| c.starts_with("billing-reply.")));
    ///
    /// assert!(Client::new(layer).reply_prefix("no!pe").is_err());
    /// # Ok::<(), channel_layer::Error>(())
    /// ```
    pub fn reply_prefix(mut self, prefix: &str) -> Result<Self, NameError> {
        self.layer.new_channel(prefix)?;
        self.reply_prefix = Arc::from(prefix);
        Ok(self)
    }

    /// The layer this client sends over.
    pub fn layer(&self) -> &AnyLayer {
        &self.layer
    }

    /// The counters, after sweeping every abandoned reply channel for late replies.
    ///
    /// The sweep takes one `try_receive` per abandoned channel (a round trip each on a network
    /// backend, none when no request was abandoned); a late reply still on its way is counted
    /// by a later call.
    pub fn metrics(&self) -> ClientMetrics {
        self.sweep(true);
        let c = &self.shared.counters;
        let get = |n: &AtomicU64| n.load(Ordering::Relaxed);
        ClientMetrics {
            requests: get(&c.requests),
            replies: get(&c.replies),
            timeouts: get(&c.timeouts),
            full: get(&c.full),
            service_errors: get(&c.service_errors),
            late_replies: get(&c.late_replies),
            mismatched: get(&c.mismatched),
            failed: get(&c.failed),
            cancelled: get(&c.cancelled),
        }
    }

    /// Sends `message` to `channel` and blocks until its reply arrives, at most `timeout`.
    ///
    /// The message gets a fresh reply channel (replacing any it carries) and keeps its
    /// correlation ID if it has one, as a message built with [`Message::caused_by`] from the
    /// message being handled does; otherwise it gets a new one.
    ///
    /// # Errors
    ///
    /// - [`RequestError::Full`] when the request channel is full (the request is handed back);
    /// - [`RequestError::Timeout`] when no reply arrives in time;
    /// - [`RequestError::Service`] when the service answers with an [`ERROR_TYPE`] reply;
    /// - [`RequestError::Send`] and [`RequestError::Receive`] for other layer failures.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use channel_layer::prelude::*;
    /// use channel_layer::service::{Client, RequestError};
    ///
    /// // Nobody serves "nobody.request": the request times out.
    /// let client = Client::new(InMemoryLayer::default());
    /// match client.request("nobody.request", Message::new("ping"), Duration::from_millis(20)) {
    ///     Err(RequestError::Timeout { channel, .. }) => assert_eq!(channel, "nobody.request"),
    ///     other => panic!("expected a timeout, got {other:?}"),
    /// }
    /// assert_eq!(client.metrics().timeouts, 1);
    /// ```
    pub fn request(
        &self,
        channel: &str,
        message: Message,
        timeout: Duration,
    ) -> Result<Message, RequestError> {
        let start = Instant::now();
        let result = self.request_blocking(channel, message, timeout);
        observe(channel, start, &result);
        result
    }

    /// [`Client::request`], unobserved.
    fn request_blocking(
        &self,
        channel: &str,
        message: Message,
        timeout: Duration,
    ) -> Result<Message, RequestError> {
        self.sweep(false);
        bump(&self.shared.counters.requests, 1);
        let (message, reply_channel, id) = self.prepare(message)?;
        let mut pending = Pending::new(self, reply_channel, timeout);
        if let Err(error) = self.layer.send(channel, message) {
            return Err(self.send_failed(&mut pending, channel, error));
        }
        let deadline = deadline_after(timeout);
        loop {
            let received = self.layer.receive_until(pending.channel(), deadline);
            if let Some(result) = self.settle(&mut pending, channel, timeout, received, &id) {
                return result;
            }
        }
    }

    /// Sends `message` to `channel` and waits for its reply, at most `timeout`, on any
    /// executor: the async form of [`Client::request`].
    ///
    /// # Errors
    ///
    /// As [`Client::request`].
    ///
    /// # Cancel safety
    ///
    /// Dropping the future abandons the request: once it has been sent, the service still
    /// handles it, and its reply is dropped and counted in [`ClientMetrics::late_replies`] (the
    /// drop itself is counted in [`ClientMetrics::cancelled`]). Nothing is delivered to another
    /// request.
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
    ///     .channel("clock.request")
    ///     .handle("clock.now", |_ctx, _msg| {
    ///         Ok(Some(Message::new("clock.time").with("unix", 1_700_000_000)))
    ///     })
    ///     .start()?;
    /// let client = Client::new(layer);
    /// let request = Message::new("clock.now");
    /// let reply = channel_layer::runtime::block_on(
    ///     client.request_async("clock.request", request, Duration::from_secs(5)),
    /// )?;
    /// assert_eq!(reply.get("unix").and_then(Value::as_i64), Some(1_700_000_000));
    /// worker.shutdown(Duration::from_secs(1));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub async fn request_async(
        &self,
        channel: &str,
        message: Message,
        timeout: Duration,
    ) -> Result<Message, RequestError> {
        let start = Instant::now();
        let result = self.request_unobserved(channel, message, timeout).await;
        observe(channel, start, &result);
        result
    }

    /// [`Client::request_async`], unobserved.
    async fn request_unobserved(
        &self,
        channel: &str,
        message: Message,
        timeout: Duration,
    ) -> Result<Message, RequestError> {
        self.sweep_async(false).await;
        bump(&self.shared.counters.requests, 1);
        let (message, reply_channel, id) = self.prepare(message)?;
        // Armed before the send: a send dropped half way may have stored the request.
        let mut pending = Pending::new(self, reply_channel, timeout);
        if let Err(error) = self.layer.send_async(channel, message).await {
            return Err(self.send_failed(&mut pending, channel, error));
        }
        let deadline = deadline_after(timeout);
        loop {
            let received = self
                .layer
                .receive_until_async(pending.channel(), deadline)
                .await;
            if let Some(result) = self.settle(&mut pending, channel, timeout, received, &id) {
                return result;
            }
        }
    }

    /// Sends a typed request and decodes the reply into `Resp`: [`Client::request`] with
    /// [`Message::encode`] and [`Message::decode`].
    ///
    /// `Req` must serialize as a map, and should carry the `type` the service dispatches on
    /// (a field with `#[serde(rename = "type")]`). The headers ride in the same map, so neither
    /// type should use `#[serde(deny_unknown_fields)]`.
    ///
    /// # Errors
    ///
    /// [`RequestError::Encode`] when `Req` does not encode, [`RequestError::Decode`] when the
    /// reply does not decode into `Resp`, and every error of [`Client::request`].
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use channel_layer::prelude::*;
    /// use channel_layer::service::{Client, Worker};
    /// use serde::{Deserialize, Serialize};
    ///
    /// #[derive(Serialize, Deserialize)]
    /// struct Add { #[serde(rename = "type")] kind: String, a: i64, b: i64 }
    /// #[derive(Serialize, Deserialize)]
    /// struct Sum { sum: i64 }
    ///
    /// let layer = InMemoryLayer::default();
    /// let worker = Worker::builder(layer.clone())
    ///     .channel("math.request")
    ///     .handle_typed("math.add", |_ctx, req: Add| Ok(Sum { sum: req.a + req.b }))
    ///     .start()?;
    /// let client = Client::new(layer);
    /// let add = Add { kind: "math.add".into(), a: 2, b: 3 };
    /// let sum: Sum = client.request_typed("math.request", &add, Duration::from_secs(5))?;
    /// assert_eq!(sum.sum, 5);
    /// worker.shutdown(Duration::from_secs(1));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn request_typed<Req, Resp>(
        &self,
        channel: &str,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, RequestError>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        let message = Message::encode(request).map_err(RequestError::Encode)?;
        decode_reply(self.request(channel, message, timeout)?)
    }

    /// The async form of [`Client::request_typed`]. The request is encoded when this is
    /// called, so the future does not borrow it.
    ///
    /// # Errors
    ///
    /// As [`Client::request_typed`].
    ///
    /// # Cancel safety
    ///
    /// As [`Client::request_async`]: dropping the future abandons the request, and a reply
    /// that comes later is counted as late.
    pub fn request_typed_async<'a, Req, Resp>(
        &'a self,
        channel: &'a str,
        request: &Req,
        timeout: Duration,
    ) -> impl Future<Output = Result<Resp, RequestError>> + Send + 'a
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned + 'a,
    {
        let encoded = Message::encode(request);
        async move {
            let message = encoded.map_err(RequestError::Encode)?;
            decode_reply(self.request_async(channel, message, timeout).await?)
        }
    }

    // ===== internals =====

    /// Mints the reply channel and sets the headers.
    fn prepare(&self, mut message: Message) -> Result<(Message, String, String), RequestError> {
        let reply_channel = match self.layer.new_channel(&self.reply_prefix) {
            Ok(name) => name,
            Err(error) => {
                bump(&self.shared.counters.failed, 1);
                return Err(RequestError::Send(SendError::InvalidName {
                    error,
                    message,
                }));
            }
        };
        let id = match message.correlation_id() {
            Some(id) => id.to_owned(),
            None => {
                let id = new_correlation_id();
                message.set_correlation_id(id.as_str());
                id
            }
        };
        message.set_reply_channel(reply_channel.as_str());
        Ok((message, reply_channel, id))
    }

    fn send_failed(
        &self,
        pending: &mut Pending<'_>,
        channel: &str,
        error: SendError,
    ) -> RequestError {
        let counters = &self.shared.counters;
        match error {
            SendError::Full { message, .. } => {
                pending.disarm();
                bump(&counters.full, 1);
                RequestError::Full {
                    channel: channel.to_owned(),
                    message,
                }
            }
            other => {
                // A backend failure may have stored the request after all: watch for a reply.
                if matches!(other, SendError::Backend { .. }) {
                    pending.abandon();
                } else {
                    pending.disarm();
                }
                bump(&counters.failed, 1);
                RequestError::Send(other)
            }
        }
    }

    /// Decides what a receive on the reply channel means: `Some` ends the request (disarming
    /// or abandoning `pending`), `None` (a mismatched reply) keeps waiting.
    fn settle(
        &self,
        pending: &mut Pending<'_>,
        channel: &str,
        timeout: Duration,
        received: Result<Message, ReceiveError>,
        id: &str,
    ) -> Option<Result<Message, RequestError>> {
        let counters = &self.shared.counters;
        let reply = match received {
            Ok(reply) => reply,
            Err(ReceiveError::Timeout) => {
                pending.abandon();
                bump(&counters.timeouts, 1);
                return Some(Err(RequestError::Timeout {
                    channel: channel.to_owned(),
                    timeout,
                }));
            }
            Err(error) => {
                pending.abandon();
                bump(&counters.failed, 1);
                return Some(Err(RequestError::Receive(error)));
            }
        };
        if reply.correlation_id().is_some_and(|got| got != id) {
            bump(&counters.mismatched, 1);
            return None;
        }
        pending.disarm();
        bump(&counters.replies, 1);
        if reply.message_type() == Some(ERROR_TYPE) {
            bump(&counters.service_errors, 1);
            let error = match reply.get(ERROR_KEY) {
                Some(Value::Str(text)) => text.to_string(),
                Some(other) => format!("{other:?}"),
                None => "unspecified error".to_owned(),
            };
            return Some(Err(RequestError::Service { error, reply }));
        }
        Some(Ok(reply))
    }

    fn abandon(&self, channel: String, timeout: Duration) {
        let watch_for = timeout.saturating_mul(10).max(LATE_WATCH_MIN);
        let until = Instant::now()
            .checked_add(watch_for)
            .unwrap_or_else(|| Instant::now() + LATE_WATCH_MIN);
        let mut watch = self.shared.watch.lock();
        watch.abandoned.push_back(Abandoned { channel, until });
        while watch.abandoned.len() > LATE_WATCH_LIMIT {
            watch.abandoned.pop_front();
        }
        self.shared
            .watched
            .store(watch.abandoned.len(), Ordering::Relaxed);
    }

    /// Takes abandoned channels out for a sweep, if one is due: all of them when forced, else
    /// the [`SWEEP_BUDGET`] watched longest since their last sweep.
    fn take_for_sweep(&self, force: bool) -> Option<VecDeque<Abandoned>> {
        if !force && self.shared.watched.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let mut watch = self.shared.watch.lock();
        if watch.abandoned.is_empty() {
            return None;
        }
        let now = Instant::now();
        if !force
            && watch
                .last_sweep
                .is_some_and(|at| now.duration_since(at) < SWEEP_INTERVAL)
        {
            return None;
        }
        watch.last_sweep = Some(now);
        let n = if force {
            watch.abandoned.len()
        } else {
            SWEEP_BUDGET.min(watch.abandoned.len())
        };
        let taken = watch.abandoned.drain(..n).collect();
        self.shared
            .watched
            .store(watch.abandoned.len(), Ordering::Relaxed);
        Some(taken)
    }

    /// Puts back the channels a sweep keeps watching, at the back of the line.
    fn restore(&self, kept: VecDeque<Abandoned>) {
        let mut watch = self.shared.watch.lock();
        watch.abandoned.extend(kept);
        while watch.abandoned.len() > LATE_WATCH_LIMIT {
            watch.abandoned.pop_front();
        }
        self.shared
            .watched
            .store(watch.abandoned.len(), Ordering::Relaxed);
    }

    /// Whether to keep watching `entry` after a sweep found `found` late replies on it.
    fn after_sweep(&self, entry: &Abandoned, found: u64, now: Instant) -> bool {
        bump(&self.shared.counters.late_replies, found);
        // One request gets one reply: once it has come, stop watching.
        found == 0 && entry.until > now
    }

    /// Takes what arrived on the abandoned reply channels due for a look, and counts it.
    fn sweep(&self, force: bool) {
        crate::runtime::block_on(self.sweep_with(force, true));
    }

    /// As [`Client::sweep`], with the layer's async methods.
    async fn sweep_async(&self, force: bool) {
        self.sweep_with(force, false).await;
    }

    /// The sweep, with the layer's blocking methods (the future then never waits) or its
    /// async ones. If an async sweep is dropped midway, the channels not yet swept are
    /// forgotten; a late reply on them expires in the layer, which counts it.
    async fn sweep_with(&self, force: bool, blocking: bool) {
        let Some(taken) = self.take_for_sweep(force) else {
            return;
        };
        let now = Instant::now();
        let mut kept = VecDeque::with_capacity(taken.len());
        for entry in taken {
            let mut found = 0;
            loop {
                let got = if blocking {
                    self.layer.try_receive(&entry.channel)
                } else {
                    self.layer.try_receive_async(&entry.channel).await
                };
                if got.is_err() {
                    break;
                }
                found += 1;
            }
            if self.after_sweep(&entry, found, now) {
                kept.push_back(entry);
            }
        }
        self.restore(kept);
    }
}

/// Records a request's round trip (`messaging.client.operation.duration`, operation
/// `request`; see [`crate::observe`]).
fn observe(channel: &str, start: Instant, result: &Result<Message, RequestError>) {
    let error = result.as_ref().err().map(RequestError::kind_name);
    crate::observe::operation("request", channel, start.elapsed(), error);
}

pub(super) fn decode_reply<Resp: DeserializeOwned>(reply: Message) -> Result<Resp, RequestError> {
    match reply.decode() {
        Ok(value) => Ok(value),
        Err(error) => Err(RequestError::Decode { error, reply }),
    }
}

// ===== Pending =====

/// A request in flight. Dropped while armed (its future was cancelled), it abandons the reply
/// channel and counts the cancellation.
struct Pending<'a> {
    client: &'a Client,
    channel: Option<String>,
    timeout: Duration,
}

impl<'a> Pending<'a> {
    fn new(client: &'a Client, channel: String, timeout: Duration) -> Self {
        Pending {
            client,
            channel: Some(channel),
            timeout,
        }
    }

    fn channel(&self) -> &str {
        self.channel.as_deref().unwrap_or_default()
    }

    /// The request is over and no reply can come: nothing to watch.
    fn disarm(&mut self) {
        self.channel = None;
    }

    /// The request is over without its reply: watch the channel for a late one.
    fn abandon(&mut self) {
        if let Some(channel) = self.channel.take() {
            self.client.abandon(channel, self.timeout);
        }
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if let Some(channel) = self.channel.take() {
            bump(&self.client.shared.counters.cancelled, 1);
            self.client.abandon(channel, self.timeout);
        }
    }
}
