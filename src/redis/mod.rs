//! The Redis backend, on the wire compatible with Python's channels_redis 4.x core layer.
//!
//! A [`RedisLayer`] and a Django app running `channels_redis.core.RedisChannelLayer` with the
//! same prefix and settings share one Redis: they exchange messages on normal channels,
//! process-specific channels and groups in both directions (spec sheet §3 has the format).
//!
//! # How it works
//!
//! - A channel `foo` is the sorted set `<prefix>foo`, scored by send time; every message is
//!   stored as 12 random bytes followed by its msgpack (optionally Fernet-encrypted).
//! - The process-specific channels this layer mints (`specific.<process>!<local>`) share one key
//!   per non-local part. One thread per server takes messages for the receivers waiting here,
//!   from all their keys at once: in batches when messages are waiting, else with one
//!   `BZPOPMIN` over every key. It takes only as many as receivers wait for (plus
//!   [`RedisConfig::receive_prefetch`]), so what nobody here waits for stays in Redis, counting
//!   against its capacity. What it takes goes into bounded per-channel queues that receivers
//!   wait on, so many receivers on different channels never wait behind one another's round
//!   trips, and a cancelled receive loses nothing: a message taken for a receiver that left
//!   is put back with its score, keeping its place.
//! - Sends, group operations and flushes go to one command thread per server that pipelines
//!   everything queued into one round trip; a send is one atomic script (prune, count, add,
//!   expire) where channels_redis makes four round trips.
//! - Messages are checked for expiry when they are taken, so an expired message already in
//!   Redis is never delivered (channels_redis only prunes when sending). Undecodable bytes
//!   are dropped and counted.
//!
//! # Where this differs from channels_redis, on purpose
//!
//! - A send to a process-specific channel is routed to the server of its *non-local* name, and
//!   this layer polls its process keys on every server, so senders that still hash the full
//!   name (channels_redis issue #221) reach it too.
//! - Group sends count the members they skip as full (metrics) instead of logging them.
//! - Channel keys live twice the expiry (channels_redis: once), so an expired message is still
//!   there to be met and counted for a while; `PEXPIRE` makes sub-second expiries work.
//!
//! # Examples
//!
//! ```no_run
//! use channel_layer::prelude::*;
//! use channel_layer::redis::RedisLayer;
//!
//! let layer = RedisLayer::from_url("redis://127.0.0.1:6379/0?prefix=asgi&capacity=100")?;
//! layer.send("chat.lobby", Message::new("chat.message").with("text", "hi"))?;
//! let reply_to = layer.new_channel("specific")?;
//! layer.send("svc.request", Message::new("ping").with("reply_to", reply_to.as_str()))?;
//! # Ok::<(), channel_layer::Error>(())
//! ```

mod codec;
mod config;
mod conn;
#[cfg(feature = "redis-encryption")]
mod crypto;
mod groups;
mod hash;
mod puller;
mod receive;
mod replies;
mod scripts;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ::redis::{Client, Cmd, Value as RedisValue};
use parking_lot::{Condvar, Mutex};

use self::codec::{AsgiChannel, Codec};
pub use self::config::{DEFAULT_PREFIX, DEFAULT_RANDOM_PREFIX_LENGTH, RedisConfig};
use self::conn::{Commands, SendOne, Then, Timeouts};
use self::hash::consistent_hash;
use self::receive::{PullKey, PullSet, Pulled};
use self::replies::*;
use self::scripts::scripts;
use crate::config::LayerConfig;
use crate::error::{
    BackendError, BackendErrorKind, BuildError, LayerError, ReceiveError, SendError,
    TryReceiveError,
};
use crate::layer::{BoxFuture, Capabilities, ChannelLayer, GroupSendReport};
use crate::memory::InMemoryLayer;
use crate::message::{Message, MessageError};
use crate::metrics::{Counters, MetricsSnapshot};
use crate::name::{
    NameError, NameKind, NameProblem, is_process_specific, non_local_name, validate_channel,
    validate_group, validate_prefix,
};
use crate::runtime::block_on;

/// The channel layer over Redis. Cheap to clone; clones share connections and buffers.
#[derive(Clone)]
pub struct RedisLayer {
    inner: Arc<Inner>,
}

struct Server {
    client: Client,
    commands: Commands,
    /// The puller's last failure, cleared when it talks to the server again.
    fault: Mutex<Option<BackendError>>,
}

struct Inner {
    config: RedisConfig,
    /// 32 hex digits naming this layer object's process channels, as channels_redis's
    /// `client_prefix`.
    client_prefix: String,
    /// The key the pullers also block on, so a change of what to pull wakes them.
    wake_key: String,
    codec: Codec,
    servers: Vec<Server>,
    /// Received messages waiting for a receiver here, per channel.
    local: InMemoryLayer,
    counters: Counters,
    closed: AtomicBool,
    pull: Mutex<PullSet>,
    /// Signalled after each pass of a puller over its keys.
    pulled_keys: Condvar,
    next_server: AtomicUsize,
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

impl RedisLayer {
    /// A layer for one server, from a URL with options as query parameters (see
    /// [`RedisConfig::from_url`]). No connection is made until the first call.
    ///
    /// # Errors
    ///
    /// [`BuildError`] for a bad URL or option.
    pub fn from_url(url: &str) -> Result<Self, BuildError> {
        RedisLayer::new(RedisConfig::from_url(url)?)
    }

    /// A layer with `config`. Connections are made lazily and remade after failures.
    ///
    /// # Errors
    ///
    /// [`BuildError`] for invalid settings or server addresses.
    pub fn new(config: RedisConfig) -> Result<Self, BuildError> {
        config.validate()?;
        let timeouts = Timeouts {
            connect: config.connect_timeout,
            operation: config.operation_timeout,
        };
        #[cfg(feature = "redis-encryption")]
        let crypto = if config.symmetric_encryption_keys.is_empty() {
            None
        } else {
            Some(crypto::Crypto::new(&config.symmetric_encryption_keys)?)
        };
        let codec = Codec {
            random_prefix_length: config.random_prefix_length,
            #[cfg(feature = "redis-encryption")]
            crypto,
            ..Codec::default()
        };
        let mut servers = Vec::with_capacity(config.hosts.len());
        for (i, host) in config.hosts.iter().enumerate() {
            let client = open_client(&config, host)?;
            let commands =
                Commands::start(client.clone(), timeouts, format!("channel-layer-redis-{i}"))?;
            servers.push(Server {
                client,
                commands,
                fault: Mutex::new(None),
            });
        }
        let client_prefix = random_hex(16);
        let local = InMemoryLayer::new(config.layer.clone());
        let inner = Arc::new(Inner {
            wake_key: format!("{}__wake__:{client_prefix}", config.prefix),
            client_prefix,
            codec,
            servers,
            local,
            counters: Counters::default(),
            closed: AtomicBool::new(false),
            pull: Mutex::new(PullSet::default()),
            pulled_keys: Condvar::new(),
            next_server: AtomicUsize::new(0),
            config,
        });
        for i in 0..inner.servers.len() {
            puller::start(Arc::downgrade(&inner), i, timeouts)?;
        }
        Ok(RedisLayer { inner })
    }

    /// The configuration this layer runs with.
    pub fn config(&self) -> &RedisConfig {
        &self.inner.config
    }
}

/// A client for one server address, with TLS set up for `rediss://` addresses.
fn open_client(config: &RedisConfig, host: &str) -> Result<Client, BuildError> {
    let invalid = |reason: String| BuildError::InvalidUrl {
        url: host.to_owned(),
        reason,
    };
    let tls = host.starts_with("rediss:");
    #[cfg(not(feature = "redis-tls"))]
    if tls {
        let _ = config;
        return Err(BuildError::FeatureDisabled {
            scheme: "rediss".into(),
            feature: "redis-tls",
        });
    }
    #[cfg(feature = "redis-tls")]
    if tls {
        // rustls needs a process-wide crypto provider; an application may have installed its
        // own already, which is then used.
        let _ = rustls::crypto::ring::default_provider().install_default();
        if let Some(pem) = &config.tls_ca_cert {
            let certs = ::redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem.clone()),
            };
            return Client::build_with_tls(host, certs).map_err(|e| invalid(e.to_string()));
        }
    }
    Client::open(host).map_err(|e| invalid(e.to_string()))
}

impl fmt::Debug for RedisLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLayer")
            .field("hosts", &self.inner.config.hosts)
            .field("prefix", &self.inner.config.prefix)
            .field("client_prefix", &self.inner.client_prefix)
            .finish_non_exhaustive()
    }
}

impl Inner {
    fn layer_config(&self) -> &LayerConfig {
        &self.config.layer
    }

    fn key(&self, name: &str) -> String {
        format!("{}{}", self.config.prefix, name)
    }

    fn group_key(&self, group: &str) -> String {
        format!("{}:group:{}", self.config.prefix, group)
    }

    fn server_for(&self, name: &str) -> usize {
        consistent_hash(name, self.servers.len())
    }

    fn round_robin(&self) -> usize {
        self.next_server.fetch_add(1, Ordering::Relaxed) % self.servers.len()
    }

    fn expiry_secs(&self) -> f64 {
        self.layer_config().expiry.as_secs_f64()
    }

    /// The TTL of channel keys: twice the expiry (at least a second more), so that expired
    /// messages are still there to be met, dropped and counted by a receive or send for a
    /// while, rather than vanishing with the key unseen.
    fn ttl_millis(&self) -> u64 {
        let expiry = self.layer_config().expiry;
        let ttl = (expiry * 2).max(expiry + Duration::from_secs(1));
        u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Whether `channel` is a process channel of this layer (channels_redis checks the same,
    /// spec §3.4: only the layer that minted a process channel receives on it).
    fn owns(&self, channel: &str) -> bool {
        let non_local = non_local_name(channel);
        non_local
            .strip_suffix('!')
            .and_then(|s| s.strip_suffix(self.client_prefix.as_str()))
            .is_some_and(|s| s.ends_with('.'))
    }

    /// Runs commands on `server` the way `via` says.
    async fn exec(
        &self,
        via: Via,
        server: usize,
        cmds: Vec<Cmd>,
    ) -> Result<Vec<RedisValue>, BackendError> {
        let commands = &self.servers[server].commands;
        match via {
            Via::Caller => commands.run(cmds),
            Via::Thread => commands.run_async(cmds).await,
        }
    }

    // ===== sending =====

    /// What sending `message` to `channel` stores, and the server it goes to.
    fn send_one(&self, channel: &str, message: &Message) -> Result<(usize, SendOne), MessageError> {
        let (key, asgi, server) = if is_process_specific(channel) {
            let non_local = non_local_name(channel);
            (
                self.key(non_local),
                AsgiChannel::One(channel),
                self.server_for(non_local),
            )
        } else {
            (self.key(channel), AsgiChannel::None, self.round_robin())
        };
        let member = self
            .codec
            .pack(message, asgi)
            .map_err(|e| MessageError::Encode(e.to_string()))?;
        let now = wall_clock();
        let send = SendOne {
            key,
            member,
            score: now,
            cutoff: now - self.expiry_secs(),
            capacity: self.layer_config().capacity_for(channel),
            ttl_millis: self.ttl_millis(),
        };
        Ok((server, send))
    }

    /// Checks a send and builds what it stores.
    fn prepare_send(
        &self,
        channel: &str,
        message: Message,
    ) -> Result<(Message, usize, SendOne), SendError> {
        let message = self.check_send(channel, message)?;
        match self.send_one(channel, &message) {
            Ok((server, send)) => Ok((message, server, send)),
            Err(error) => Err(SendError::InvalidMessage { error, message }),
        }
    }

    fn check_send(&self, channel: &str, message: Message) -> Result<Message, SendError> {
        if self.is_closed() {
            return Err(SendError::Closed { message });
        }
        if let Err(error) = validate_channel(channel) {
            return Err(SendError::InvalidName { error, message });
        }
        if let Err(error) = message.check_reserved() {
            return Err(SendError::InvalidMessage { error, message });
        }
        Ok(message)
    }

    fn sent(
        &self,
        channel: &str,
        capacity: usize,
        message: Message,
        reply: Result<Vec<RedisValue>, BackendError>,
    ) -> Result<(), SendError> {
        let outcome = reply.and_then(|values| ints(one_value(values, "send")?, "send"));
        if let Ok(counts) = &outcome {
            let expired = counts.get(1).copied().unwrap_or(0);
            Counters::add(&self.counters.expired, u64::try_from(expired).unwrap_or(0));
        }
        match outcome.map(|counts| counts.first().copied()) {
            Ok(Some(1)) => {
                Counters::add(&self.counters.sent, 1);
                Ok(())
            }
            Ok(_) => {
                Counters::add(&self.counters.rejected_full, 1);
                Err(SendError::Full {
                    channel: Arc::from(channel),
                    capacity,
                    message,
                })
            }
            Err(error) => Err(SendError::Backend { error, message }),
        }
    }
}

/// How an operation talks to Redis: blocking calls on their own thread over a pooled
/// connection (their futures never wait, so `block_on` runs them straight through), async
/// calls through the command thread.
#[derive(Clone, Copy)]
enum Via {
    Caller,
    Thread,
}

// ===== the trait =====

impl ChannelLayer for RedisLayer {
    fn capabilities(&self) -> Capabilities {
        Capabilities::none()
            .with_groups(true)
            .with_flush(true)
            .with_shared_between_layers(true)
    }

    fn metrics(&self) -> MetricsSnapshot {
        self.inner.metrics()
    }

    /// Mints `<prefix>.<client prefix>!<32 hex digits>`, as channels_redis does.
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
        Box::pin(async move {
            let (message, server, send) = self.inner.prepare_send(channel, message)?;
            let capacity = send.capacity;
            let reply = self.inner.servers[server].commands.send_async(send).await;
            self.inner.sent(channel, capacity, message, reply)
        })
    }

    fn send(&self, channel: &str, message: Message) -> Result<(), SendError> {
        let (message, server, send) = self.inner.prepare_send(channel, message)?;
        let capacity = send.capacity;
        let mut cmd = ::redis::cmd("EVALSHA");
        cmd.arg(&scripts().send.sha)
            .arg(1)
            .arg(send.key)
            .arg(send.member)
            .arg(send.score)
            .arg(send.cutoff)
            .arg(send.capacity)
            .arg(send.ttl_millis);
        let reply = self.inner.servers[server].commands.run(vec![cmd]);
        self.inner.sent(channel, capacity, message, reply)
    }

    fn receive_until_async<'a>(
        &'a self,
        channel: &'a str,
        deadline: Option<Instant>,
    ) -> BoxFuture<'a, Result<Message, ReceiveError>> {
        Box::pin(self.inner.receive(Via::Thread, channel, deadline))
    }

    fn receive_until(
        &self,
        channel: &str,
        deadline: Option<Instant>,
    ) -> Result<Message, ReceiveError> {
        block_on(self.inner.receive(Via::Caller, channel, deadline))
    }

    fn try_receive_async<'a>(
        &'a self,
        channel: &'a str,
    ) -> BoxFuture<'a, Result<Message, TryReceiveError>> {
        Box::pin(self.inner.try_receive(Via::Thread, channel))
    }

    fn try_receive(&self, channel: &str) -> Result<Message, TryReceiveError> {
        block_on(self.inner.try_receive(Via::Caller, channel))
    }

    fn group_add_async<'a>(
        &'a self,
        group: &'a str,
        channel: &'a str,
    ) -> BoxFuture<'a, Result<(), LayerError>> {
        let change = self.inner.group_add_cmds(group, channel);
        Box::pin(self.inner.group_change(Via::Thread, change))
    }

    fn group_add(&self, group: &str, channel: &str) -> Result<(), LayerError> {
        let change = self.inner.group_add_cmds(group, channel);
        block_on(self.inner.group_change(Via::Caller, change))
    }

    fn group_discard_async<'a>(
        &'a self,
        group: &'a str,
        channel: &'a str,
    ) -> BoxFuture<'a, Result<(), LayerError>> {
        let change = self.inner.group_discard_cmds(group, channel);
        Box::pin(self.inner.group_change(Via::Thread, change))
    }

    fn group_discard(&self, group: &str, channel: &str) -> Result<(), LayerError> {
        let change = self.inner.group_discard_cmds(group, channel);
        block_on(self.inner.group_change(Via::Caller, change))
    }

    fn group_send_async<'a>(
        &'a self,
        group: &'a str,
        message: Message,
    ) -> BoxFuture<'a, Result<GroupSendReport, LayerError>> {
        Box::pin(self.inner.group_send(Via::Thread, group, message))
    }

    fn group_send(&self, group: &str, message: Message) -> Result<GroupSendReport, LayerError> {
        block_on(self.inner.group_send(Via::Caller, group, message))
    }

    fn flush_async(&self) -> BoxFuture<'_, Result<(), LayerError>> {
        Box::pin(self.inner.flush(Via::Thread))
    }

    fn flush(&self) -> Result<(), LayerError> {
        block_on(self.inner.flush(Via::Caller))
    }

    fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
        self.inner.local.close();
        self.inner.wake_pullers();
    }
}

/// Gives the pullers what they need without the rest of the layer's internals.
pub(crate) struct PullerView {
    inner: Weak<Inner>,
}

impl PullerView {
    pub(crate) fn upgrade(&self) -> Option<PullerHandle> {
        self.inner.upgrade().map(|inner| PullerHandle { inner })
    }
}

/// A live layer as a puller sees it.
pub(crate) struct PullerHandle {
    inner: Arc<Inner>,
}

impl PullerHandle {
    pub(crate) fn is_closed(&self) -> bool {
        self.inner.is_closed()
    }

    pub(crate) fn client(&self, server: usize) -> Client {
        self.inner.servers[server].client.clone()
    }

    pub(crate) fn wake_key(&self) -> &str {
        &self.inner.wake_key
    }

    pub(crate) fn keys(&self) -> Vec<PullKey> {
        self.inner.pull_keys()
    }

    pub(crate) fn pulled(&self, from: &Pulled, member: &[u8], score: f64) -> bool {
        self.inner.pulled(from, member, score)
    }

    pub(crate) fn expiry_millis(&self) -> u64 {
        self.inner.ttl_millis()
    }

    pub(crate) fn set_fault(&self, server: usize, fault: Option<BackendError>) {
        *self.inner.servers[server].fault.lock() = fault;
    }
}

impl From<Weak<Inner>> for PullerView {
    fn from(inner: Weak<Inner>) -> Self {
        PullerView { inner }
    }
}
