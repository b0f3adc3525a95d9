//! What the layer wants from Redis: the receivers waiting here, per channel, and so the keys
//! the pullers take from and how many messages each; the one-taker-per-key rule; and the
//! wake-ups that tell a puller blocked in `BZPOPMIN` that what it should wait on changed.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::redis::Cmd;

use super::Inner;
use crate::name::non_local_name;

/// The longest a receive that ends waits for a puller to move on from a key it blocks on for
/// nobody.
pub(super) const STALE_WAIT: Duration = Duration::from_millis(100);

/// How long a key found holding another type of data is left alone before the pullers try it
/// again.
pub(super) const BAD_KEY_RECHECK: Duration = Duration::from_secs(5);

/// What the pullers take from Redis: what receivers here are waiting for and do not have yet.
///
/// Only as many messages are taken as receivers wait for (plus the prefetch), so a message
/// nobody here waits for stays in Redis, where it counts against its channel's capacity and
/// other processes can receive it.
#[derive(Default)]
pub(super) struct PullSet {
    /// Receivers waiting, per channel.
    waiting: HashMap<String, usize>,
    /// Per server, the key names (a normal channel, or the non-local part `prefix.<client>!`
    /// of process channels) its puller blocks on now: a receiver whose key is among them, for
    /// every server that holds it, needs not wake the pullers.
    blocking: Vec<HashSet<String>>,
    /// Key names a receiver is taking from directly now; the pullers leave them alone
    /// meanwhile. One taker per key at a time keeps messages in order.
    taking: HashSet<String>,
    /// Counts the pullers' passes over their keys (each recomputes its `blocking` set).
    generation: u64,
    /// How many pullers are inside `BZPOPMIN` now. Only those need a wake-up when what they
    /// should wait on changes: a puller between two blocks looks at the demand again before
    /// it blocks ([`Inner::enter_block`]).
    blocked: usize,
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

impl Pulled {
    /// The name the key holds messages for: the channel, or the non-local part.
    pub(crate) fn name(&self) -> &str {
        match self {
            Pulled::Process(n) | Pulled::Normal(n) => n,
        }
    }
}

/// The right to take from a key directly (see [`Inner::begin_taking`]). When the last holder
/// lets go, the pullers may take from the key again, and are woken (by a queued command, with
/// no waiting here) if receivers still wait.
pub(crate) struct Taking {
    inner: Arc<Inner>,
    name: String,
}

impl Drop for Taking {
    fn drop(&mut self) {
        let inner = &self.inner;
        let mut pull = inner.pull.lock();
        pull.taking.remove(&self.name);
        let wake = pull.blocked > 0
            && inner.needed(&mut pull).contains_key(&self.name)
            && !inner.pulled_by_all(&pull, &self.name);
        drop(pull);
        if wake {
            inner.wake_pullers();
        }
    }
}

/// Withdraws a waiting receiver when it stops waiting. If that leaves nobody here waiting on
/// a key a puller is blocked on, the puller is woken (by a queued command, with no waiting
/// here), or it would take the next message for nobody and have to put it back.
pub(super) struct DemandGuard<'a> {
    inner: &'a Inner,
    channel: String,
}

impl Drop for DemandGuard<'_> {
    fn drop(&mut self) {
        let inner = self.inner;
        let mut pull = inner.pull.lock();
        if let Some(n) = pull.waiting.get_mut(&self.channel) {
            *n = n.saturating_sub(1);
        }
        // The key stays among the ones pullers block on until they recompute their keys: until
        // then no receiver here takes from it directly, so it has one taker and keeps its order.
        let stale = pull.blocked > 0 && inner.stale_puller(&mut pull, &self.channel);
        drop(pull);
        if stale {
            inner.wake_pullers();
        }
    }
}

impl Inner {
    /// Registers a receiver waiting on `channel`; the guard withdraws it.
    ///
    /// Also returns, when the pullers are not on the channel's key and nobody else here is
    /// taking from it, the right to take from it directly.
    pub(super) fn want(self: &Arc<Self>, channel: &str) -> (DemandGuard<'_>, Option<Arc<Taking>>) {
        let mut pull = self.pull.lock();
        *pull.waiting.entry(channel.to_owned()).or_insert(0) += 1;
        let taking = self.begin_taking(&mut pull, channel);
        drop(pull);
        let guard = DemandGuard {
            inner: self,
            channel: channel.to_owned(),
        };
        (guard, taking)
    }

    /// The right to take from `channel`'s key directly, if the pullers are not on it and
    /// nobody else here is taking from it: one taker per key keeps messages in order.
    pub(super) fn begin_taking(
        self: &Arc<Self>,
        pull: &mut PullSet,
        channel: &str,
    ) -> Option<Arc<Taking>> {
        // The key the message comes through: the channel's, or its process key.
        let name = non_local_name(channel);
        if self.pulled_by_all(pull, name) || pull.taking.contains(name) {
            return None;
        }
        pull.taking.insert(name.to_owned());
        Some(Arc::new(Taking {
            inner: self.clone(),
            name: name.to_owned(),
        }))
    }

    /// Like [`Inner::begin_taking`], taking the lock itself.
    pub(super) fn try_begin_taking(self: &Arc<Self>, channel: &str) -> Option<Arc<Taking>> {
        let mut pull = self.pull.lock();
        self.begin_taking(&mut pull, channel)
    }

    /// How many messages to take now, per key name: for each channel with waiting receivers,
    /// one per receiver plus the prefetch, minus the messages already buffered for it.
    pub(super) fn needed(&self, pull: &mut PullSet) -> HashMap<String, usize> {
        pull.waiting.retain(|_, n| *n > 0);
        let mut needed: HashMap<String, usize> = HashMap::new();
        for (channel, &waiting) in &pull.waiting {
            let wanted = waiting.saturating_add(self.config.receive_prefetch);
            let missing = wanted.saturating_sub(self.local.queued_len(channel));
            if missing > 0 {
                let entry = needed
                    .entry(non_local_name(channel).to_owned())
                    .or_insert(0);
                *entry = entry.saturating_add(missing);
            }
        }
        needed
    }

    /// Whether a receiver here still waits for a message from what `from` holds.
    pub(super) fn is_wanted(&self, from: &Pulled) -> bool {
        let mut pull = self.pull.lock();
        self.needed(&mut pull).contains_key(from.name())
    }

    /// Commands that wake the pullers blocked in `BZPOPMIN`, so they pick up a changed set of
    /// keys.
    pub(super) fn wake_commands(&self, key: &str) -> Vec<Cmd> {
        let mut zadd = ::redis::cmd("ZADD");
        zadd.arg(key).arg(0).arg("wake");
        let mut ttl = ::redis::cmd("PEXPIRE");
        ttl.arg(key).arg(60_000);
        vec![zadd, ttl]
    }

    /// Wakes the pullers, through the command threads, without waiting for the reply. (On a
    /// cluster each puller blocks on a wake key of its own, in the slot it waits on.)
    pub(super) fn wake_pullers(&self) {
        for server in &self.servers {
            let own = server.wake_key.lock().clone();
            let key = if own.is_empty() { &self.wake_key } else { &own };
            drop(server.commands.submit(self.wake_commands(key), None));
        }
    }

    /// The keys a puller takes from now: those receivers are waiting on, each with how many
    /// messages to take at most (one per waiting receiver, plus the prefetch). Keys lately
    /// found holding another type of data are left out for [`BAD_KEY_RECHECK`].
    pub(crate) fn pull_keys(&self, server: usize) -> Vec<PullKey> {
        let mut pull = self.pull.lock();
        let needed = self.keys_for(&mut pull, server);
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
        if pull.blocking.len() < self.servers.len() {
            pull.blocking.resize_with(self.servers.len(), HashSet::new);
        }
        pull.blocking[server] = needed.into_keys().collect();
        pull.generation += 1;
        drop(pull);
        self.pulled_keys.notify_all();
        keys
    }

    /// The servers a key name's messages are taken from: on a cluster the master serving its
    /// slot, otherwise every server (a normal channel's messages may be on any of them).
    fn servers_of(&self, name: &str) -> std::ops::Range<usize> {
        match &self.cluster {
            Some(topology) => {
                let owner = topology.owner_of(self.key(name).as_bytes());
                owner..owner + 1
            }
            None => 0..self.servers.len(),
        }
    }

    /// Whether every puller that takes `name`'s messages blocks on it now.
    pub(super) fn pulled_by_all(&self, pull: &PullSet, name: &str) -> bool {
        self.servers_of(name)
            .all(|s| pull.blocking.get(s).is_some_and(|set| set.contains(name)))
    }

    /// Whether some puller blocks on `name` now.
    fn pulled_by_any(&self, pull: &PullSet, name: &str) -> bool {
        pull.blocking.iter().any(|set| set.contains(name))
    }

    /// [`Inner::keys_to_pull`] for the puller of `server`.
    fn keys_for(&self, pull: &mut PullSet, server: usize) -> HashMap<String, usize> {
        let mut keys = self.keys_to_pull(pull);
        if self.cluster.is_some() {
            keys.retain(|name, _| self.servers_of(name).contains(&server));
        }
        keys
    }

    /// The keys the pullers should wait on now: those of the demand, less the ones taken from
    /// directly and the ones holding another type of data.
    fn keys_to_pull(&self, pull: &mut PullSet) -> HashMap<String, usize> {
        let mut needed = self.needed(pull);
        needed.retain(|name, _| !pull.taking.contains(name));
        let mut bad = self.bad_keys.lock();
        bad.retain(|_, (at, _)| at.elapsed() < BAD_KEY_RECHECK);
        needed.retain(|name, _| !bad.contains_key(name));
        needed
    }

    /// Called by a puller about to block on the keys of its last pass: `false` if the demand
    /// changed since (it passes again instead), else it counts as blocked until
    /// [`Inner::leave_block`]. Receivers that change the demand meanwhile wake it.
    pub(crate) fn enter_block(&self, server: usize) -> bool {
        let mut pull = self.pull.lock();
        let keys = self.keys_for(&mut pull, server);
        let blocking = pull.blocking.get(server);
        let same = blocking
            .is_some_and(|set| keys.len() == set.len() && keys.keys().all(|k| set.contains(k)));
        if same {
            pull.blocked += 1;
        }
        same
    }

    /// The puller of `server` lost its connection: it blocks on nothing until its next pass,
    /// so receivers take from its keys directly meanwhile instead of waiting for it.
    pub(crate) fn puller_down(&self, server: usize) {
        let mut pull = self.pull.lock();
        if let Some(set) = pull.blocking.get_mut(server) {
            set.clear();
        }
        pull.generation += 1;
        drop(pull);
        self.pulled_keys.notify_all();
    }

    /// A puller's `BZPOPMIN` returned (or failed).
    pub(crate) fn leave_block(&self) {
        let mut pull = self.pull.lock();
        pull.blocked = pull.blocked.saturating_sub(1);
    }

    /// Whether a puller is blocked on `channel`'s key for nobody: the receivers it was taking
    /// for have left, and it has not looked at its keys since. Then the key's next message may
    /// be in flight back to Redis, and only that puller may take from the key.
    pub(super) fn stale_puller(&self, pull: &mut PullSet, channel: &str) -> bool {
        let key = non_local_name(channel);
        self.pulled_by_any(pull, key) && !self.needed(pull).contains_key(key)
    }

    /// The pullers' pass count, if one of them is blocked on `channel`'s key for nobody.
    fn stale_generation(&self, channel: &str) -> Option<u64> {
        let mut pull = self.pull.lock();
        self.stale_puller(&mut pull, channel)
            .then_some(pull.generation)
    }

    /// Blocks (at most [`STALE_WAIT`]) until the pullers move on from a key they block on for
    /// nobody; they were woken when its last receiver left, so this takes about a round trip.
    /// Afterwards a message they had taken from it for nobody is back in Redis.
    pub(super) fn outwait_stale_puller(&self, channel: &str) {
        let Some(seen) = self.stale_generation(channel) else {
            return;
        };
        let limit = Instant::now() + STALE_WAIT;
        let mut pull = self.pull.lock();
        while pull.generation == seen && Instant::now() < limit {
            self.pulled_keys.wait_until(&mut pull, limit);
        }
    }

    /// [`Inner::outwait_stale_puller`] for async callers, which must not block the thread.
    pub(super) async fn outwait_stale_puller_async(&self, channel: &str) {
        let Some(seen) = self.stale_generation(channel) else {
            return;
        };
        let limit = Instant::now() + STALE_WAIT;
        while self.pull.lock().generation == seen && Instant::now() < limit {
            crate::runtime::sleep(Duration::from_micros(200)).await;
        }
    }
}
