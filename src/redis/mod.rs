//! The Redis backend, on the wire compatible with Python's channels_redis 4.x core layer.
//!
//! A [`RedisLayer`] and a Django app running `channels_redis.core.RedisChannelLayer` with the
//! same prefix and settings share one Redis: they exchange messages on normal channels,
//! process-specific channels and groups in both directions ([contract §3](crate::contract) has the format).
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

mod buffers;
mod cluster;

mod config;
mod conn;
#[cfg(feature = "redis-encryption")]
pub(crate) mod crypto;
mod demand;
mod groups;
mod hash;
mod inspect;
mod oneshot;
mod puller;
mod receive;
mod replies;
mod scripts;
mod send;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ::redis::Cmd;
use ::redis::Value as RedisValue;
use parking_lot::{Condvar, Mutex};

pub use self::cluster::{CLUSTER_SLOTS, key_slot};
pub use self::config::{
    DEFAULT_PREFIX, DEFAULT_RANDOM_PREFIX_LENGTH, DEFAULT_SENTINEL_PORT, RedisConfig,
};
use self::conn::{Commands, Endpoint, Pool, Timeouts};
use self::demand::PullSet;
use self::hash::consistent_hash;
use crate::codec::{self, Codec};
use crate::config::LayerConfig;
use crate::error::{
    BackendError, BuildError, LayerError, ReceiveError, SendError, TryReceiveError,
};
use crate::layer::{BoxFuture, Capabilities, ChannelLayer, GroupSendReport};
use crate::memory::InMemoryLayer;
use crate::message::Message;
use crate::metrics::{Counters, MetricsSnapshot};
use crate::name::{NameError, non_local_name, validate_prefix};
use crate::runtime::block_on;

/// The channel layer over Redis. Cheap to clone; clones share connections and buffers.
#[derive(Clone)]
pub struct RedisLayer {
    inner: Arc<Inner>,
}

/// One server: its connections and command thread.
struct Server {
    commands: Commands,
    /// On a cluster, the wake key its puller blocks on now (in the slot of the keys it waits
    /// on, so the blocking command touches one slot); empty otherwise (the layer's wake key).
    wake_key: Mutex<String>,
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
    counters: Arc<Counters>,
    closed: AtomicBool,
    pull: Mutex<PullSet>,
    /// Signalled after each pass of a puller over its keys.
    pulled_keys: Condvar,
    next_server: AtomicUsize,
    /// Keys (by the name they hold messages for) found holding data of another type, with
    /// when that was seen: receives on them fail, and the pullers leave them alone for a while.
    bad_keys: Mutex<HashMap<String, (Instant, BackendError)>>,
    /// The slot map, on a Redis Cluster.
    cluster: Option<Arc<cluster::Topology>>,
}

/// How many redirections (`MOVED`, `ASK`) one command follows at most.
const MAX_REDIRECTS: usize = 3;

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

    /// A layer with `config`. Connections are made lazily and remade after failures; only on a
    /// cluster ([`RedisConfig::cluster`]) is one node asked for the slot map now.
    ///
    /// # Errors
    ///
    /// [`BuildError`] for invalid settings or server addresses, and
    /// [`BuildError::Backend`] when no seed node of a cluster gives its slot map.
    pub fn new(config: RedisConfig) -> Result<Self, BuildError> {
        config.validate()?;
        let timeouts = Timeouts {
            connect: config.connect_timeout,
            operation: config.operation_timeout,
            reply_guard: config.layer.expiry + config.operation_timeout,
        };
        #[cfg(feature = "redis-encryption")]
        let crypto = if config.symmetric_encryption_keys.is_empty() {
            None
        } else {
            Some(crypto::Crypto::new(&config.symmetric_encryption_keys)?)
        };
        let codec = Codec {
            random_prefix_length: config.random_prefix_length,
            // What peers may send is what this layer accepts at send, on every backend alike.
            limits: codec::Limits {
                max_depth: config.layer.max_message_depth,
                max_bytes: config.layer.max_message_bytes,
            },
            #[cfg(feature = "redis-encryption")]
            crypto,
        };
        let counters = Arc::new(Counters::default());
        #[cfg(feature = "redis-tls")]
        let ca = config.tls_ca_cert.as_deref();
        #[cfg(not(feature = "redis-tls"))]
        let ca = None;
        let cluster = if config.cluster {
            Some(Arc::new(cluster::discover(&config.hosts, ca, timeouts)?))
        } else {
            None
        };
        let mut servers = Vec::with_capacity(config.hosts.len());
        let count = cluster.as_ref().map_or(config.hosts.len(), |t| t.len());
        for i in 0..count {
            let endpoint = match &cluster {
                Some(topology) => {
                    Endpoint::cluster_node(&config.hosts[0], ca, topology.clone(), i)?
                }
                None => Endpoint::new(&config.hosts[i], ca)?,
            };
            let pool = Pool::new(endpoint, timeouts, counters.clone());
            let commands = Commands::start(Arc::new(pool), format!("channel-layer-redis-{i}"))?;
            servers.push(Server {
                commands,
                wake_key: Mutex::new(String::new()),
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
            counters,
            closed: AtomicBool::new(false),
            pull: Mutex::new(PullSet::default()),
            pulled_keys: Condvar::new(),
            next_server: AtomicUsize::new(0),
            bad_keys: Mutex::new(HashMap::new()),
            cluster,
            config,
        });
        for i in 0..inner.servers.len() {
            puller::start(Arc::downgrade(&inner), i)?;
        }
        Ok(RedisLayer { inner })
    }

    /// The configuration this layer runs with.
    pub fn config(&self) -> &RedisConfig {
        &self.inner.config
    }
}

impl fmt::Debug for RedisLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLayer")
            .field(
                "hosts",
                &self
                    .inner
                    .config
                    .hosts
                    .iter()
                    .map(|h| crate::config::redacted_url(h))
                    .collect::<Vec<_>>(),
            )
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

    /// The server a key is stored on: on a cluster, the master serving its slot; otherwise
    /// `sharded` (the server channels_redis's rules pick).
    fn server_of_key(&self, key: &str, sharded: impl FnOnce() -> usize) -> usize {
        match &self.cluster {
            Some(topology) => topology.owner_of(key.as_bytes()),
            None => sharded(),
        }
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
    /// [contract §3.4](crate::contract): only the layer that minted a process channel receives on it).
    fn owns(&self, channel: &str) -> bool {
        let non_local = non_local_name(channel);
        non_local
            .strip_suffix('!')
            .and_then(|s| s.strip_suffix(self.client_prefix.as_str()))
            .is_some_and(|s| s.ends_with('.'))
    }

    /// Runs commands on `server` through its command thread, by the operation timeout.
    async fn exec(&self, server: usize, cmds: Vec<Cmd>) -> Result<Vec<RedisValue>, BackendError> {
        if self.cluster.is_none() {
            return self.servers[server].commands.run_async(cmds).await;
        }
        let mut replies = self.servers[server]
            .commands
            .run_async(cmds.clone())
            .await?;
        for _ in 0..MAX_REDIRECTS {
            let mut again = false;
            for (i, reply) in replies.iter_mut().enumerate() {
                if let Some((target, pipeline)) = self.redirected(reply, &cmds[i]) {
                    let mut answers = self.servers[target].commands.run_async(pipeline).await?;
                    *reply = answers.pop().unwrap_or(RedisValue::Nil);
                    again = true;
                }
            }
            if !again {
                break;
            }
        }
        Ok(replies)
    }

    /// [`Inner::exec`] on the caller's thread.
    fn run_blocking(&self, server: usize, cmds: &[Cmd]) -> Result<Vec<RedisValue>, BackendError> {
        let mut replies = self.servers[server].commands.run(cmds)?;
        if self.cluster.is_none() {
            return Ok(replies);
        }
        for _ in 0..MAX_REDIRECTS {
            let mut again = false;
            for (i, reply) in replies.iter_mut().enumerate() {
                if let Some((target, pipeline)) = self.redirected(reply, &cmds[i]) {
                    let mut answers = self.servers[target].commands.run(&pipeline)?;
                    *reply = answers.pop().unwrap_or(RedisValue::Nil);
                    again = true;
                }
            }
            if !again {
                break;
            }
        }
        Ok(replies)
    }

    /// For a `MOVED` or `ASK` reply to `cmd`: the server to send it to and what to send
    /// (`ASKING` first for an `ASK`). A `MOVED` reads the slot map again.
    fn redirected(&self, reply: &RedisValue, cmd: &Cmd) -> Option<(usize, Vec<Cmd>)> {
        let topology = self.cluster.as_ref()?;
        let (ask, slot, addr) = cluster::redirection(reply)?;
        if ask {
            let target = topology.index_of(&addr)?;
            Some((target, vec![::redis::cmd("ASKING"), cmd.clone()]))
        } else {
            if topology.index_of(&addr) != Some(topology.owner(slot)) {
                self.refresh_topology();
            }
            let target = topology
                .index_of(&addr)
                .unwrap_or_else(|| topology.owner(slot));
            Some((target, vec![cmd.clone()]))
        }
    }

    /// The `WAIT` to send after a write when [`RedisConfig::replica_acks`] asks for replica
    /// confirmation, else `None`.
    fn replica_wait(&self) -> Option<Cmd> {
        let acks = self.config.replica_acks;
        (acks > 0).then(|| {
            let mut wait = ::redis::cmd("WAIT");
            wait.arg(acks)
                .arg(self.config.replica_ack_timeout.as_millis().max(1) as u64);
            wait
        })
    }

    /// Counts `stored` messages as unreplicated when the `WAIT` reply (the last of `values`,
    /// if one was asked for) says fewer replicas than asked confirmed them.
    fn note_replication(&self, values: &[RedisValue], stored: u64) {
        if self.config.replica_acks == 0 || stored == 0 {
            return;
        }
        let confirmed = match values.last() {
            Some(RedisValue::Int(n)) => usize::try_from(*n).unwrap_or(0),
            _ => 0,
        };
        if confirmed < self.config.replica_acks {
            Counters::add(&self.counters.unreplicated, stored);
        }
    }

    /// Reads the cluster's slot map again (at most every 100 ms).
    pub(crate) fn refresh_topology(&self) {
        if let Some(topology) = &self.cluster {
            topology.refresh();
        }
    }

    fn pool(&self, server: usize) -> &Arc<Pool> {
        self.servers[server].commands.pool()
    }
}

// ===== the trait =====

impl ChannelLayer for RedisLayer {
    fn capabilities(&self) -> Capabilities {
        Capabilities::none()
            .with_groups(true)
            .with_flush(true)
            .with_shared_between_layers(true)
            .with_inspect(true)
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
        Box::pin(self.inner.send_async(channel, message, true))
    }

    fn send_until_async<'a>(
        &'a self,
        channel: &'a str,
        message: Message,
        deadline: Option<Instant>,
    ) -> BoxFuture<'a, Result<(), SendError>> {
        Box::pin(self.inner.send_until(channel, message, deadline))
    }

    fn send_until(
        &self,
        channel: &str,
        message: Message,
        deadline: Option<Instant>,
    ) -> Result<(), SendError> {
        block_on(self.inner.send_until(channel, message, deadline))
    }

    fn send(&self, channel: &str, message: Message) -> Result<(), SendError> {
        self.inner.send_blocking(channel, message)
    }

    fn receive_until_async<'a>(
        &'a self,
        channel: &'a str,
        deadline: Option<Instant>,
    ) -> BoxFuture<'a, Result<Message, ReceiveError>> {
        Box::pin(self.inner.receive_async(channel, deadline))
    }

    fn receive_until(
        &self,
        channel: &str,
        deadline: Option<Instant>,
    ) -> Result<Message, ReceiveError> {
        self.inner.receive_blocking(channel, deadline)
    }

    fn try_receive_async<'a>(
        &'a self,
        channel: &'a str,
    ) -> BoxFuture<'a, Result<Message, TryReceiveError>> {
        Box::pin(self.inner.try_receive(channel))
    }

    fn try_receive(&self, channel: &str) -> Result<Message, TryReceiveError> {
        block_on(self.inner.try_receive(channel))
    }

    fn group_add_async<'a>(
        &'a self,
        group: &'a str,
        channel: &'a str,
    ) -> BoxFuture<'a, Result<(), LayerError>> {
        let change = self.inner.group_add_cmds(group, channel);
        Box::pin(self.inner.group_change(change))
    }

    fn group_add(&self, group: &str, channel: &str) -> Result<(), LayerError> {
        block_on(self.group_add_async(group, channel))
    }

    fn group_discard_async<'a>(
        &'a self,
        group: &'a str,
        channel: &'a str,
    ) -> BoxFuture<'a, Result<(), LayerError>> {
        let change = self.inner.group_discard_cmds(group, channel);
        Box::pin(self.inner.group_change(change))
    }

    fn group_discard(&self, group: &str, channel: &str) -> Result<(), LayerError> {
        block_on(self.group_discard_async(group, channel))
    }

    fn group_send_async<'a>(
        &'a self,
        group: &'a str,
        message: Message,
    ) -> BoxFuture<'a, Result<GroupSendReport, LayerError>> {
        Box::pin(self.inner.group_send(group, message))
    }

    fn group_send(&self, group: &str, message: Message) -> Result<GroupSendReport, LayerError> {
        self.inner.group_send_blocking(group, message)
    }

    fn flush_async(&self) -> BoxFuture<'_, Result<(), LayerError>> {
        Box::pin(self.inner.flush())
    }

    fn flush(&self) -> Result<(), LayerError> {
        block_on(self.inner.flush())
    }

    fn inspect_async(
        &self,
        limit: usize,
    ) -> BoxFuture<'_, Result<crate::inspect::Inspection, LayerError>> {
        Box::pin(self.inner.inspect(limit))
    }

    fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
        self.inner.local.close();
        self.inner.wake_pullers();
    }
}
