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
mod hash;
mod puller;
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

/// How long a receive waits on its local buffer before it checks the servers' health.
const HEALTH_CHECK: Duration = Duration::from_millis(250);

/// The longest `try_receive` waits for a puller to move on from a key it blocks on for nobody.
const STALE_WAIT: Duration = Duration::from_millis(100);

/// How many messages `try_receive` takes from a process key in one round trip.
const PROCESS_BATCH: usize = 64;

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

/// What the pullers take from Redis: what receivers here are waiting for and do not have yet.
///
/// Only as many messages are taken as receivers wait for (plus the prefetch), so a message
/// nobody here waits for stays in Redis, where it counts against its channel's capacity and
/// other processes can receive it.
#[derive(Default)]
struct PullSet {
    /// Receivers waiting, per channel.
    waiting: HashMap<String, usize>,
    /// The key names (a normal channel, or the non-local part `prefix.<client>!` of process
    /// channels) the pullers are blocking on now: a receiver whose key is among them needs not
    /// wake them.
    blocking_on: HashSet<String>,
    /// Key names a receiver is taking from directly now; the pullers leave them alone
    /// meanwhile. One taker per key at a time keeps messages in order.
    taking: HashSet<String>,
    /// Counts the pullers' passes over their keys (each recomputes `blocking_on`).
    generation: u64,
}

/// One key a puller takes from, and how many messages at most per round trip.
pub(crate) struct PullKey {
    pub(crate) key: String,
    pub(crate) channel: Pulled,
    pub(crate) count: usize,
}

/// Whose messages a pulled key holds.
#[derive(Clone)]
pub(crate) enum Pulled {
    /// A process key: each message names its channel(s) in `__asgi_channel__`.
    Process(String),
    /// A normal channel.
    Normal(String),
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

    // ===== receiving =====

    fn check_receive(&self, channel: &str) -> Result<(), NameError> {
        validate_channel(channel)?;
        if is_process_specific(channel) && !self.owns(channel) {
            return Err(NameError::new(
                NameKind::Channel,
                channel,
                NameProblem::NotOwned,
            ));
        }
        Ok(())
    }

    /// Registers a receiver waiting on `channel`; the guard withdraws it.
    ///
    /// Also returns, when the pullers are not on the channel's key and nobody else here is
    /// taking from it, the right to take from it directly.
    fn want(self: &Arc<Self>, channel: &str, via: Via) -> (DemandGuard<'_>, Option<Arc<Taking>>) {
        let mut pull = self.pull.lock();
        *pull.waiting.entry(channel.to_owned()).or_insert(0) += 1;
        let taking = self.begin_taking(&mut pull, channel);
        drop(pull);
        let guard = DemandGuard {
            inner: self,
            channel: channel.to_owned(),
            via,
        };
        (guard, taking)
    }

    /// The right to take from `channel`'s key directly, if the pullers are not on it and
    /// nobody else here is taking from it: one taker per key keeps messages in order.
    fn begin_taking(self: &Arc<Self>, pull: &mut PullSet, channel: &str) -> Option<Arc<Taking>> {
        // The key the message comes through: the channel's, or its process key.
        let name = non_local_name(channel);
        if pull.blocking_on.contains(name) || pull.taking.contains(name) {
            return None;
        }
        pull.taking.insert(name.to_owned());
        Some(Arc::new(Taking {
            inner: self.clone(),
            name: name.to_owned(),
        }))
    }

    /// Takes up to `count` messages from `channel`'s key on every server into the local
    /// buffers, in one round trip each. The delivery happens where the reply arrives (for an
    /// async caller, on the command thread), so a caller that gives up halfway loses nothing.
    async fn take(
        self: &Arc<Self>,
        via: Via,
        channel: &str,
        count: usize,
        taking: Arc<Taking>,
    ) -> Result<(), BackendError> {
        let (from, key, _) = self.take_commands(channel);
        let mut result = Ok(());
        for server in 0..self.servers.len() {
            let mut cmd = ::redis::cmd("ZPOPMIN");
            cmd.arg(&key).arg(count);
            let (inner, from, taking) = (self.clone(), from.clone(), taking.clone());
            let then: Then = Box::new(move |reply| {
                let _taking = taking;
                inner.took(&from, vec![reply]).map(|()| Vec::new())
            });
            let commands = &self.servers[server].commands;
            let reply = match via {
                Via::Caller => then(commands.run(vec![cmd])),
                Via::Thread => commands.run_async_then(vec![cmd], Some(then)).await,
            };
            result = result.and(reply.map(drop));
        }
        result
    }

    /// How many messages to take now, per key name: for each channel with waiting receivers,
    /// one per receiver plus the prefetch, minus the messages already buffered for it.
    fn needed(&self, pull: &mut PullSet) -> HashMap<String, usize> {
        pull.waiting.retain(|_, n| *n > 0);
        let mut needed: HashMap<String, usize> = HashMap::new();
        for (channel, &waiting) in &pull.waiting {
            let wanted = waiting + self.config.receive_prefetch;
            let missing = wanted.saturating_sub(self.local.queued_len(channel));
            if missing > 0 {
                *needed
                    .entry(non_local_name(channel).to_owned())
                    .or_insert(0) += missing;
            }
        }
        needed
    }

    /// Whether a receiver here still waits for a message from what `from` holds.
    fn is_wanted(&self, from: &Pulled) -> bool {
        let name = match from {
            Pulled::Process(n) | Pulled::Normal(n) => n,
        };
        let mut pull = self.pull.lock();
        self.needed(&mut pull).contains_key(name.as_str())
    }

    /// Commands that wake the pullers blocked in `BZPOPMIN`, so they pick up a changed set of
    /// keys.
    fn wake_commands(&self) -> [Cmd; 2] {
        let mut zadd = ::redis::cmd("ZADD");
        zadd.arg(&self.wake_key).arg(0).arg("wake");
        let mut ttl = ::redis::cmd("PEXPIRE");
        ttl.arg(&self.wake_key).arg(60_000);
        [zadd, ttl]
    }

    /// Wakes the pullers without waiting for the reply.
    fn wake_pullers(&self) {
        for server in &self.servers {
            drop(server.commands.submit(self.wake_commands().to_vec(), None));
        }
    }

    /// The keys a puller takes from now: those receivers are waiting on, each with how many
    /// messages to take at most (one per waiting receiver, plus the prefetch).
    pub(crate) fn pull_keys(&self) -> Vec<PullKey> {
        let mut pull = self.pull.lock();
        let mut needed = self.needed(&mut pull);
        needed.retain(|name, _| !pull.taking.contains(name));
        let keys: Vec<PullKey> = needed
            .iter()
            .map(|(name, &count)| PullKey {
                key: self.key(name),
                channel: if name.ends_with('!') {
                    Pulled::Process(name.clone())
                } else {
                    Pulled::Normal(name.clone())
                },
                count,
            })
            .collect();
        pull.blocking_on = needed.into_keys().collect();
        pull.generation += 1;
        drop(pull);
        self.pulled_keys.notify_all();
        keys
    }

    /// Whether a puller is blocked on `channel`'s key for nobody: the receivers it was taking
    /// for have left, and it has not looked at its keys since. Then the key's next message may
    /// be in flight back to Redis, and only that puller may take from the key.
    fn stale_puller(&self, pull: &mut PullSet, channel: &str) -> bool {
        let key = non_local_name(channel);
        pull.blocking_on.contains(key) && !self.needed(pull).contains_key(key)
    }

    /// Waits (at most [`STALE_WAIT`]) for the pullers to move on from a key they block on for
    /// nobody; they were woken when its last receiver left, so this takes about a round trip.
    async fn outwait_stale_puller(&self, via: Via, channel: &str) {
        let limit = Instant::now() + STALE_WAIT;
        let seen = {
            let mut pull = self.pull.lock();
            if !self.stale_puller(&mut pull, channel) {
                return;
            }
            if let Via::Caller = via {
                let seen = pull.generation;
                while pull.generation == seen && Instant::now() < limit {
                    self.pulled_keys.wait_until(&mut pull, limit);
                }
                return;
            }
            pull.generation
        };
        while self.pull.lock().generation == seen && Instant::now() < limit {
            crate::runtime::sleep(Duration::from_micros(200)).await;
        }
    }

    /// Takes a message a puller got from Redis. If the receiver it was taken for has gone in the
    /// meantime, it is not kept here (`false`: the puller puts it back where it was, score and
    /// all, so it keeps its place); otherwise as [`Inner::arrived`].
    pub(crate) fn pulled(&self, from: &Pulled, member: &[u8], score: f64) -> bool {
        if !self.is_wanted(from) {
            return false;
        }
        self.arrived(from, member, score);
        true
    }

    /// Takes a message a puller (or `try_receive`) got from Redis: decodes it, drops it if it
    /// expired, and queues it for the channel(s) it is for.
    pub(crate) fn arrived(&self, from: &Pulled, member: &[u8], score: f64) {
        let decoded = match self.codec.unpack(member, self.expiry_secs()) {
            Ok(decoded) => decoded,
            Err(e) if e.is_expired() => {
                Counters::add(&self.counters.expired, 1);
                return;
            }
            Err(_) => {
                Counters::add(&self.counters.undecodable, 1);
                return;
            }
        };
        let left = score + self.expiry_secs() - wall_clock();
        // Also drops a NaN score from a foreign writer.
        if left.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
            Counters::add(&self.counters.expired, 1);
            return;
        }
        let deadline = Instant::now() + Duration::from_secs_f64(left.min(1e9));
        let deliver = |channel: &str| match self.local.deliver_arrived(
            channel,
            decoded.message.clone(),
            deadline,
        ) {
            Ok(()) => {}
            Err(SendError::Full { .. }) => Counters::add(&self.counters.overflowed, 1),
            Err(_) => Counters::add(&self.counters.undecodable, 1),
        };
        match from {
            Pulled::Normal(channel) => deliver(channel),
            Pulled::Process(non_local) => match &decoded.asgi_channels {
                Some(names) => {
                    for name in names {
                        // Only channels under the key's own non-local part belong here.
                        if non_local_name(name) == non_local {
                            deliver(name);
                        } else {
                            Counters::add(&self.counters.undecodable, 1);
                        }
                    }
                }
                // Without a name, channels_redis buffers it under the bare non-local name.
                None => deliver(non_local),
            },
        }
    }

    fn fault(&self) -> Option<BackendError> {
        self.servers.iter().find_map(|s| s.fault.lock().clone())
    }

    /// Waits for a message on the local buffers, taking it from Redis first if the key is
    /// idle, and checking every so often that the pullers can reach their servers, so a
    /// receive fails with a typed error during an outage. A blocking receive (`Via::Caller`)
    /// waits on its own thread inside the future, which then never suspends.
    async fn receive(
        self: &Arc<Self>,
        via: Via,
        channel: &str,
        deadline: Option<Instant>,
    ) -> Result<Message, ReceiveError> {
        if self.is_closed() {
            return Err(ReceiveError::Closed);
        }
        self.check_receive(channel)?;
        if let Ok(m) = self.local.try_receive(channel) {
            return Ok(m);
        }
        let (mut demand, taking) = self.want(channel, via);
        if let Some(taking) = taking {
            let count = 1 + self.config.receive_prefetch;
            self.take(via, channel, count, taking).await?;
        }
        loop {
            let step = Some(step_deadline(deadline));
            let waited = match via {
                Via::Caller => self.local.receive_until(channel, step),
                Via::Thread => self.local.receive_until_async(channel, step).await,
            };
            match waited {
                Err(ReceiveError::Timeout) => self.after_wait(deadline)?,
                Ok(message) => {
                    // Served: a puller still blocked for it is woken without waiting for Redis.
                    demand.via = Via::Thread;
                    return Ok(message);
                }
                other => return other,
            }
        }
    }

    /// After a wait on the local buffer ran out: the caller's deadline, closing, or a server
    /// fault end the receive; otherwise it waits again.
    fn after_wait(&self, deadline: Option<Instant>) -> Result<(), ReceiveError> {
        if self.is_closed() {
            return Err(ReceiveError::Closed);
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(ReceiveError::Timeout);
        }
        match self.fault() {
            Some(e) => Err(ReceiveError::Backend(e)),
            None => Ok(()),
        }
    }

    /// Commands that take up to `count` messages from `channel`'s key on every server.
    fn take_commands(&self, channel: &str) -> (Pulled, String, usize) {
        if is_process_specific(channel) {
            let non_local = non_local_name(channel);
            (
                Pulled::Process(non_local.to_owned()),
                self.key(non_local),
                PROCESS_BATCH,
            )
        } else {
            (
                Pulled::Normal(channel.to_owned()),
                self.key(channel),
                1 + self.config.receive_prefetch,
            )
        }
    }

    fn took(
        &self,
        from: &Pulled,
        replies: Vec<Result<Vec<RedisValue>, BackendError>>,
    ) -> Result<(), BackendError> {
        for reply in replies {
            let values = reply?;
            for value in values {
                for (member, score) in popped(value) {
                    self.arrived(from, &member, score);
                }
            }
        }
        Ok(())
    }

    /// Takes a message from the local buffer, or from Redis if none is buffered. While the
    /// pullers (or another receiver) are taking from the key, only the local buffer is looked
    /// at: they deliver what is there.
    async fn try_receive(
        self: &Arc<Self>,
        via: Via,
        channel: &str,
    ) -> Result<Message, TryReceiveError> {
        if self.is_closed() {
            return Err(TryReceiveError::Closed);
        }
        self.check_receive(channel)?;
        match self.local.try_receive(channel) {
            Err(TryReceiveError::Empty) => {}
            other => return other,
        }
        // A puller still blocked on the key for a receiver that just left may hold its next
        // message (on its way back to Redis): let it move on, then look.
        self.outwait_stale_puller(via, channel).await;
        match self.local.try_receive(channel) {
            Err(TryReceiveError::Empty) => {}
            other => return other,
        }
        let taking = {
            let mut pull = self.pull.lock();
            self.begin_taking(&mut pull, channel)
        };
        if let Some(taking) = taking {
            let (_, _, count) = self.take_commands(channel);
            self.take(via, channel, count, taking).await?;
        }
        self.local.try_receive(channel)
    }

    // ===== groups =====

    fn group_add_cmds(&self, group: &str, channel: &str) -> Result<(usize, Vec<Cmd>), LayerError> {
        self.check_open()?;
        validate_group(group)?;
        validate_channel(channel)?;
        let key = self.group_key(group);
        let mut zadd = ::redis::cmd("ZADD");
        zadd.arg(&key).arg(wall_clock()).arg(channel);
        let mut expire = ::redis::cmd("EXPIRE");
        expire
            .arg(&key)
            .arg(self.layer_config().group_expiry.as_secs().max(1));
        Ok((self.server_for(group), vec![zadd, expire]))
    }

    fn group_discard_cmds(
        &self,
        group: &str,
        channel: &str,
    ) -> Result<(usize, Vec<Cmd>), LayerError> {
        self.check_open()?;
        validate_group(group)?;
        validate_channel(channel)?;
        let mut zrem = ::redis::cmd("ZREM");
        zrem.arg(self.group_key(group)).arg(channel);
        Ok((self.server_for(group), vec![zrem]))
    }

    fn check_open(&self) -> Result<(), LayerError> {
        if self.is_closed() {
            Err(LayerError::Closed)
        } else {
            Ok(())
        }
    }

    fn members_command(&self, group: &str) -> Result<(usize, Cmd), LayerError> {
        self.check_open()?;
        validate_group(group)?;
        let mut cmd = ::redis::cmd("EVALSHA");
        cmd.arg(&scripts().group_members.sha)
            .arg(1)
            .arg(self.group_key(group))
            .arg(wall_clock() - self.layer_config().group_expiry.as_secs_f64());
        Ok((self.server_for(group), cmd))
    }

    /// One bundled copy of the message per channel key, per server (spec §3.7), as commands.
    fn group_deliveries(
        &self,
        message: &Message,
        members: &[String],
    ) -> Result<BTreeMap<usize, (Cmd, Vec<usize>)>, MessageError> {
        let mut buckets: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for name in members {
            if validate_channel(name).is_ok() {
                buckets.entry(non_local_name(name)).or_default().push(name);
            }
        }
        let now = wall_clock();
        let mut per_server: BTreeMap<usize, Bundles> = BTreeMap::new();
        for (non_local, names) in &buckets {
            let bundles = per_server.entry(self.server_for(non_local)).or_default();
            let member = self
                .codec
                .pack(message, AsgiChannel::Many(names))
                .map_err(|e| MessageError::Encode(e.to_string()))?;
            bundles.keys.push(self.key(non_local));
            bundles.members.push(member);
            bundles
                .capacities
                .push(self.layer_config().capacity_for(names[0]));
            bundles.sizes.push(names.len());
        }
        Ok(per_server
            .into_iter()
            .map(|(server, b)| {
                let mut cmd = ::redis::cmd("EVALSHA");
                cmd.arg(&scripts().group_deliver.sha).arg(b.keys.len());
                for key in &b.keys {
                    cmd.arg(key);
                }
                cmd.arg(now)
                    .arg(now - self.expiry_secs())
                    .arg(self.ttl_millis());
                for (member, capacity) in b.members.iter().zip(&b.capacities) {
                    cmd.arg(member.as_slice()).arg(*capacity);
                }
                (server, (cmd, b.sizes))
            })
            .collect())
    }

    fn count_group_send(&self, report: &GroupSendReport) {
        Counters::add(&self.counters.group_sends, 1);
        Counters::add(&self.counters.group_deliveries, report.delivered as u64);
        Counters::add(
            &self.counters.group_skipped_full,
            report.skipped_full as u64,
        );
    }

    async fn group_send(
        &self,
        via: Via,
        group: &str,
        message: Message,
    ) -> Result<GroupSendReport, LayerError> {
        message.check_reserved()?;
        let (server, cmd) = self.members_command(group)?;
        let members = member_names(one_value(
            self.exec(via, server, vec![cmd]).await?,
            "group members",
        )?);
        let mut report = GroupSendReport::default();
        for (server, (cmd, sizes)) in self.group_deliveries(&message, &members)? {
            let reply = self.exec(via, server, vec![cmd]).await?;
            let expired = tally(&mut report, one_value(reply, "group send")?, &sizes);
            Counters::add(&self.counters.expired, expired);
        }
        self.count_group_send(&report);
        Ok(report)
    }

    /// Runs a membership change built by `group_add_cmds` or `group_discard_cmds`.
    async fn group_change(
        &self,
        via: Via,
        change: Result<(usize, Vec<Cmd>), LayerError>,
    ) -> Result<(), LayerError> {
        let (server, cmds) = change?;
        all_ok(self.exec(via, server, cmds).await?)?;
        Ok(())
    }

    // ===== flush =====

    async fn flush(&self, via: Via) -> Result<(), LayerError> {
        self.check_open()?;
        let pattern = format!("{}*", self.config.prefix);
        let group_prefix = self.group_key("");
        let mut dropped = 0u64;
        for server in 0..self.servers.len() {
            let mut cursor = 0u64;
            loop {
                let mut scan = ::redis::cmd("SCAN");
                scan.arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000);
                let reply = one_value(self.exec(via, server, vec![scan]).await?, "scan")?;
                let (next, keys) = scanned(reply)?;
                if !keys.is_empty() {
                    let mut flush = ::redis::cmd("EVALSHA");
                    flush.arg(&scripts().flush.sha).arg(keys.len());
                    for key in &keys {
                        flush.arg(key.as_slice());
                    }
                    flush.arg(&group_prefix).arg("__wake__:");
                    let counted = ints(
                        one_value(self.exec(via, server, vec![flush]).await?, "flush")?,
                        "flush",
                    )?;
                    dropped += counted
                        .first()
                        .map_or(0, |&n| u64::try_from(n).unwrap_or(0));
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Counters::add(&self.counters.flushed, dropped);
        self.local.flush()?;
        Ok(())
    }

    fn metrics(&self) -> MetricsSnapshot {
        let mut snap = self.counters.snapshot();
        let local = self.local.metrics();
        snap.received = local.received;
        snap.expired += local.expired;
        snap.flushed += local.flushed;
        snap.overflowed += local.rejected_full;
        snap.queued_messages = local.queued_messages;
        snap.channels = local.channels;
        snap
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

fn step_deadline(deadline: Option<Instant>) -> Instant {
    let step = Instant::now() + HEALTH_CHECK;
    deadline.map_or(step, |d| d.min(step))
}

/// The bundled copies of one `group_send` bound for one server: a key, a member and a capacity
/// per non-local name, and how many group members each stands for.
#[derive(Default)]
struct Bundles {
    keys: Vec<String>,
    members: Vec<Vec<u8>>,
    capacities: Vec<usize>,
    sizes: Vec<usize>,
}

/// The right to take from a key directly (see [`Inner::begin_taking`]). When the last holder
/// lets go, the pullers may take from the key again, and are woken if receivers still wait.
pub(crate) struct Taking {
    inner: Arc<Inner>,
    name: String,
}

impl Drop for Taking {
    fn drop(&mut self) {
        let inner = &self.inner;
        let mut pull = inner.pull.lock();
        pull.taking.remove(&self.name);
        let wake = inner.needed(&mut pull).contains_key(&self.name)
            && !pull.blocking_on.contains(&self.name);
        drop(pull);
        if wake {
            inner.wake_pullers();
        }
    }
}

/// Withdraws a waiting receiver when it stops waiting.
///
/// If that leaves nobody here waiting on a key a puller is blocked on, the puller is woken,
/// or it would take the next message for nobody (and put it back a round trip later, while
/// other senders would not see it count against the capacity, nor a flush see it). A blocking
/// receiver that gave up waits until Redis has the wake-up, so nothing this thread does next
/// can meet the stale wait; an async one (which cannot wait in a destructor), and one that was
/// served (and whose puller has usually moved on already), only send it.
struct DemandGuard<'a> {
    inner: &'a Inner,
    channel: String,
    via: Via,
}

impl Drop for DemandGuard<'_> {
    fn drop(&mut self) {
        let inner = self.inner;
        let mut pull = inner.pull.lock();
        if let Some(n) = pull.waiting.get_mut(&self.channel) {
            *n = n.saturating_sub(1);
        }
        // The key stays in `blocking_on` until the puller recomputes its keys: until then no
        // receiver here takes from it directly, so it has one taker and keeps its order.
        let stale = inner.stale_puller(&mut pull, &self.channel);
        drop(pull);
        if !stale {
            return;
        }
        match self.via {
            Via::Thread => inner.wake_pullers(),
            Via::Caller => {
                for server in &inner.servers {
                    // A failure here is the puller's to notice; the receive has its result.
                    let _ = server.commands.run(inner.wake_commands().to_vec());
                }
            }
        }
    }
}

// ===== replies =====

fn protocol(what: &str, got: &RedisValue) -> BackendError {
    BackendError::new(
        BackendErrorKind::Protocol,
        format!("unexpected reply to {what}: {got:?}"),
    )
}

fn server_error(what: &str, value: RedisValue) -> Result<RedisValue, BackendError> {
    match value {
        RedisValue::ServerError(e) => Err(BackendError::new(
            BackendErrorKind::Refused,
            format!("{what}: {e:?}"),
        )),
        other => Ok(other),
    }
}

fn one_value(values: Vec<RedisValue>, what: &str) -> Result<RedisValue, BackendError> {
    let value = values
        .into_iter()
        .next()
        .ok_or_else(|| protocol(what, &RedisValue::Nil))?;
    server_error(what, value)
}

fn ints(value: RedisValue, what: &str) -> Result<Vec<i64>, BackendError> {
    match value {
        RedisValue::Array(items) => items
            .into_iter()
            .map(|v| match v {
                RedisValue::Int(n) => Ok(n),
                other => Err(protocol(what, &other)),
            })
            .collect(),
        RedisValue::Int(n) => Ok(vec![n]),
        other => Err(protocol(what, &other)),
    }
}

fn member_names(value: RedisValue) -> Vec<String> {
    match value {
        RedisValue::Array(items) => items
            .into_iter()
            .filter_map(|v| match v {
                RedisValue::BulkString(b) => String::from_utf8(b).ok(),
                RedisValue::SimpleString(s) => Some(s),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// Counts a group delivery script's reply (expired messages dropped, then the 1-based indices
/// of full keys) into `report`; returns the expired count.
fn tally(report: &mut GroupSendReport, reply: RedisValue, sizes: &[usize]) -> u64 {
    let mut full = vec![false; sizes.len()];
    let mut expired = 0;
    if let RedisValue::Array(items) = reply {
        for (n, item) in items.into_iter().enumerate() {
            if let RedisValue::Int(i) = item {
                if n == 0 {
                    expired = u64::try_from(i).unwrap_or(0);
                } else if let Some(slot) = usize::try_from(i - 1).ok().and_then(|i| full.get_mut(i))
                {
                    *slot = true;
                }
            }
        }
    }
    for (size, full) in sizes.iter().zip(full) {
        if full {
            report.skipped_full += size;
        } else {
            report.delivered += size;
        }
    }
    expired
}

/// `(member, score)` pairs from a `ZPOPMIN` or `BZPOPMIN` reply.
pub(crate) fn popped(value: RedisValue) -> Vec<(Vec<u8>, f64)> {
    let items = match value {
        RedisValue::Array(items) => items,
        _ => return Vec::new(),
    };
    let mut out = Vec::with_capacity(items.len() / 2);
    let mut it = items.into_iter();
    while let (Some(member), Some(score)) = (it.next(), it.next()) {
        let member = match member {
            RedisValue::BulkString(b) => b,
            _ => continue,
        };
        let score = match score {
            RedisValue::Double(x) => x,
            RedisValue::BulkString(b) => std::str::from_utf8(&b)
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0.0),
            RedisValue::Int(n) => n as f64,
            _ => 0.0,
        };
        out.push((member, score));
    }
    out
}

fn scanned(value: RedisValue) -> Result<(u64, Vec<Vec<u8>>), BackendError> {
    let RedisValue::Array(mut parts) = value else {
        return Err(protocol("scan", &value));
    };
    if parts.len() != 2 {
        return Err(protocol("scan", &RedisValue::Array(parts)));
    }
    let keys = match parts.pop() {
        Some(RedisValue::Array(keys)) => keys
            .into_iter()
            .filter_map(|k| match k {
                RedisValue::BulkString(b) => Some(b),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    let cursor = match parts.pop() {
        Some(RedisValue::BulkString(b)) => {
            std::str::from_utf8(&b).ok().and_then(|s| s.parse().ok())
        }
        Some(RedisValue::Int(n)) => u64::try_from(n).ok(),
        _ => None,
    }
    .ok_or_else(|| BackendError::new(BackendErrorKind::Protocol, "bad SCAN cursor"))?;
    Ok((cursor, keys))
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

fn all_ok(values: Vec<RedisValue>) -> Result<(), BackendError> {
    for value in values {
        server_error("group membership", value)?;
    }
    Ok(())
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
