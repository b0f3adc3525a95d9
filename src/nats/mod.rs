//! The NATS backend: the channel layer contract on NATS JetStream, on one server or a cluster.
//!
//! [contract §5](crate::contract) has the layout on the server; in short:
//!
//! - Each capacity in use (the layer's `capacity` and each `channel_capacity` rule's) has a
//!   stream, `<prefix>_ch_<capacity>`, holding one subject per channel. The stream keeps at
//!   most `capacity` messages per subject and refuses new ones beyond that ("discard new per
//!   subject"), so the *server* decides [`SendError::Full`]: there is no client-side count to
//!   race. Every layer of a prefix must have the same capacity settings; a layer whose
//!   settings differ from those recorded on the server is refused at build, naming both.
//! - Each message carries its sender's expiry in a header, so layers with different expiries
//!   share channels; a receive drops and counts what has expired, and every layer clears
//!   expired messages nobody received from time to time, counting them too.
//! - A receive *takes* messages by reading them in order and then purging its channel's
//!   subject up to the last one read. The server applies a purge once (on a cluster, through
//!   the stream's replicated log) and answers how many messages it removed; removals only ever
//!   come from the front of a subject, so those are the last ones read: they, and only they,
//!   are this receiver's. One purge takes a whole batch, so a busy channel costs a round trip
//!   per batch rather than per message.
//! - A layer watches a channel only while receivers wait on it: one task and one subscription
//!   to the channel's wake subject (where the stream republishes what it stores) per watched
//!   channel, whatever the number of receivers; both end when the last receiver leaves, so a
//!   receive dropped at any point leaves nothing behind. The process-specific channels a layer
//!   made with one `new_channel` prefix share one task and one wildcard subscription, so
//!   reply channels cost no server object however many a client goes through. A wake-up carries a copy of the
//!   stored message and the sequence number of the one before it on its subject: copies that
//!   continue what the task has read spare it reading them, so a take is its purge alone.
//! - Group memberships are keys of a key-value bucket, `<prefix>_groups`, whose maximum age is
//!   the group expiry. A `group_send` lists the group's keys in one request and publishes to
//!   every member at once, under one deadline.
//!
//! The client is `async-nats`, run on a small background runtime of this crate (threads
//! `channel-layer-nats`), so the blocking API and the async one, on any executor, work alike;
//! no runtime is asked of the application. The client reconnects on its own (to any server of a
//! cluster); waiting receives wait through an outage and go on when a server is back.
//!
//! # Examples
//!
//! ```no_run
//! use channel_layer::prelude::*;
//! use channel_layer::nats::NatsLayer;
//!
//! let layer = NatsLayer::from_url("nats://127.0.0.1:4222?prefix=shop&capacity=100")?;
//! layer.send("orders.new", Message::new("order.placed").with("id", 7))?;
//! let order = layer.receive("orders.new")?;
//! assert_eq!(order.get("id").and_then(|v| v.as_i64()), Some(7));
//! # Ok::<(), channel_layer::Error>(())
//! ```

mod admin;
mod api;
mod config;
mod groups;
mod receive;
mod rt;
mod send;
mod setup;
mod subjects;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, kv, stream};
use parking_lot::Mutex;
use tokio::sync::Notify;

pub use self::config::{DEFAULT_PORT, DEFAULT_PREFIX, NatsConfig, Storage};
use crate::codec::{Codec, Limits};
use crate::error::{
    BackendError, BuildError, LayerError, ReceiveError, SendError, TryReceiveError,
};
use crate::inspect::Inspection;
use crate::layer::{BoxFuture, Capabilities, ChannelLayer, GroupSendReport};
use crate::memory::InMemoryLayer;
use crate::message::Message;
use crate::metrics::{Counters, MetricsSnapshot};
use crate::name::{NameError, validate_prefix};
use crate::runtime::block_on;

/// The channel layer over NATS JetStream. Cheap to clone; clones share one connection.
#[derive(Clone)]
pub struct NatsLayer {
    inner: Arc<Inner>,
}

struct Inner {
    config: NatsConfig,
    client: async_nats::Client,
    js: jetstream::Context,
    /// The channel streams, by capacity.
    streams: HashMap<usize, stream::Stream>,
    groups: kv::Store,
    groups_stream: stream::Stream,
    codec: Codec,
    /// 32 hex digits naming this layer object's process channels.
    client_prefix: String,
    /// Messages taken for receivers here, waiting to be handed over, per channel.
    local: InMemoryLayer,
    /// The channels receivers here wait on, each with its one watching task.
    watches: Mutex<HashMap<String, Arc<receive::Watch>>>,
    /// One take at a time per channel, in the order they were asked for, so what this layer
    /// takes reaches its local buffer in the channel's order.
    taking: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Whether the server reads in batches (2.11 and later).
    batch_reads: bool,
    counters: Arc<Counters>,
    closed: AtomicBool,
    /// Notified on close and after each reconnect: watching tasks look again.
    changed: Arc<Notify>,
}

fn wall_clock() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn random_hex(bytes: usize) -> String {
    let mut raw = vec![0u8; bytes];
    rand::Rng::fill(&mut rand::rng(), raw.as_mut_slice());
    raw.iter().map(|b| format!("{b:02x}")).collect()
}

impl NatsLayer {
    /// A layer from a URL with options as query parameters (see [`NatsConfig::from_url`]).
    ///
    /// # Errors
    ///
    /// As [`NatsLayer::new`].
    pub fn from_url(url: &str) -> Result<Self, BuildError> {
        NatsLayer::new(NatsConfig::from_url(url)?)
    }

    /// Connects with `config` and makes the layer's streams and bucket where they are missing.
    ///
    /// Connecting, with every server of `config.servers` tried, takes at most
    /// [`NatsConfig::connect_timeout`]; each request setting up the streams after it at most
    /// [`NatsConfig::operation_timeout`].
    ///
    /// # Errors
    ///
    /// [`BuildError`] for invalid settings; [`BuildError::Backend`] when no server can be
    /// reached in time, logging in fails, or JetStream is not enabled;
    /// [`BuildError::InvalidOption`] naming `capacity` when the layers of this prefix were made
    /// with other capacity settings (`capacity` and `channel_capacity` must be the same in
    /// every layer of a prefix, as the server enforces them).
    pub fn new(config: NatsConfig) -> Result<Self, BuildError> {
        config.validate()?;
        let counters = Arc::new(Counters::default());
        let changed = Arc::new(Notify::new());
        let setup = setup::connect(config.clone(), counters.clone(), changed.clone());
        let setup = block_on(rt::run(setup))?;
        let codec = Codec {
            random_prefix_length: 0,
            limits: Limits {
                max_depth: config.layer.max_message_depth,
                max_bytes: config.layer.max_message_bytes,
            },
            #[cfg(feature = "redis-encryption")]
            crypto: None,
        };
        let local = InMemoryLayer::new(config.layer.clone());
        let batch_reads = api::reads_in_batches(&setup.client.server_info().version);
        let inner = Arc::new(Inner {
            batch_reads,
            client: setup.client,
            js: setup.js,
            streams: setup.streams,
            groups: setup.groups,
            groups_stream: setup.groups_stream,
            codec,
            client_prefix: random_hex(16),
            local,
            watches: Mutex::new(HashMap::new()),
            taking: Mutex::new(HashMap::new()),
            counters,
            closed: AtomicBool::new(false),
            changed,
            config,
        });
        admin::start_sweeper(&inner);
        Ok(NatsLayer { inner })
    }

    /// The configuration this layer runs with.
    pub fn config(&self) -> &NatsConfig {
        &self.inner.config
    }

    /// How many channels and takes this layer keeps state for right now (for tests of what a
    /// dropped or finished receive leaves behind).
    #[cfg(test)]
    fn tracked(&self) -> (usize, usize) {
        (
            self.inner.watches.lock().len(),
            self.inner.taking.lock().len(),
        )
    }
}

impl fmt::Debug for NatsLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsLayer")
            .field("servers", &self.inner.config.servers)
            .field("prefix", &self.inner.config.prefix)
            .field("client_prefix", &self.inner.client_prefix)
            .finish_non_exhaustive()
    }
}

impl Inner {
    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// The stream and subject of `channel`.
    fn place(&self, channel: &str) -> (&stream::Stream, String) {
        let capacity = self.config.layer.capacity_for(channel);
        let subject = subjects::channel_subject(&self.config.prefix, capacity, channel);
        (self.stream_of(capacity), subject)
    }

    /// The stream of the channels of capacity `capacity`.
    fn stream_of(&self, capacity: usize) -> &stream::Stream {
        self.streams
            .get(&capacity)
            // Every capacity `capacity_for` can give has its stream, made at build.
            .unwrap_or_else(|| &self.streams[&self.config.layer.capacity])
    }

    fn backend_error(&self, error: BackendError) -> BackendError {
        Counters::add(&self.counters.backend_errors, 1);
        error
    }

    fn metrics(&self) -> MetricsSnapshot {
        self.counters
            .snapshot()
            .with_local_buffer(&self.local.metrics())
    }
}

/// When the server stored a message, in seconds since the Unix epoch.
fn sent_at(found: &jetstream::message::StreamMessage) -> f64 {
    found.time.unix_timestamp_nanos() as f64 / 1e9
}

/// How long a stored message's sender gave it to live, in seconds: the expiry header its
/// sender set, or `default` for a message without a valid one.
fn expiry_of(found: &jetstream::message::StreamMessage, default: Duration) -> f64 {
    found
        .headers
        .get(subjects::EXPIRY_HEADER)
        .and_then(|v| v.as_str().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .unwrap_or(default.as_secs_f64())
}

/// Seconds a stored message has left to live (zero or less: expired).
fn life_left(found: &jetstream::message::StreamMessage, default: Duration) -> f64 {
    sent_at(found) + expiry_of(found, default) - wall_clock()
}

// ===== the trait =====

impl ChannelLayer for NatsLayer {
    fn capabilities(&self) -> Capabilities {
        Capabilities::none()
            .with_groups(true)
            .with_flush(true)
            .with_receive_any_process_channel(true)
            .with_shared_between_layers(true)
            .with_inspect(true)
    }

    fn metrics(&self) -> MetricsSnapshot {
        self.inner.metrics()
    }

    /// Mints `<prefix>.<client prefix>!<32 hex digits>`.
    fn new_channel(&self, prefix: &str) -> Result<String, NameError> {
        validate_prefix(prefix, 2 + 64)?;
        Ok(format!(
            "{prefix}.{}!{}",
            self.inner.client_prefix,
            random_hex(16)
        ))
    }

    fn send_async<'a>(
        &'a self,
        channel: &'a str,
        message: Message,
    ) -> BoxFuture<'a, Result<(), SendError>> {
        Box::pin(self.inner.send(channel, message))
    }

    fn receive_until_async<'a>(
        &'a self,
        channel: &'a str,
        deadline: Option<Instant>,
    ) -> BoxFuture<'a, Result<Message, ReceiveError>> {
        Box::pin(self.inner.receive(channel, deadline))
    }

    fn try_receive_async<'a>(
        &'a self,
        channel: &'a str,
    ) -> BoxFuture<'a, Result<Message, TryReceiveError>> {
        Box::pin(self.inner.try_receive(channel))
    }

    fn group_add_async<'a>(
        &'a self,
        group: &'a str,
        channel: &'a str,
    ) -> BoxFuture<'a, Result<(), LayerError>> {
        Box::pin(self.inner.group_add(group, channel))
    }

    fn group_discard_async<'a>(
        &'a self,
        group: &'a str,
        channel: &'a str,
    ) -> BoxFuture<'a, Result<(), LayerError>> {
        Box::pin(self.inner.group_discard(group, channel))
    }

    fn group_send_async<'a>(
        &'a self,
        group: &'a str,
        message: Message,
    ) -> BoxFuture<'a, Result<GroupSendReport, LayerError>> {
        Box::pin(self.inner.group_send(group, message))
    }

    fn flush_async(&self) -> BoxFuture<'_, Result<(), LayerError>> {
        Box::pin(self.inner.flush())
    }

    fn inspect_async(&self, limit: usize) -> BoxFuture<'_, Result<Inspection, LayerError>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            if inner.is_closed() {
                return Err(LayerError::Closed);
            }
            let this = inner.clone();
            rt::run(async move { this.inspect(limit).await })
                .await
                .map_err(|e| LayerError::Backend(inner.backend_error(e)))
        })
    }

    fn close(&self) {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        self.inner.put_back();
        self.inner.local.close();
        self.inner.changed.notify_waiters();
        // Receivers waiting for a take see the layer closed.
        for watch in self.inner.watches.lock().values() {
            watch.wake_receivers();
        }
    }
}
