//! The in-memory backend: the embedded default, needing no server.

mod groups;
mod store;
#[cfg(test)]
mod tests;
mod wait;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::thread;
use std::time::{Duration, Instant};

use hashbrown::DefaultHashBuilder;
use parking_lot::MutexGuard;
use rand::Rng;

use self::groups::Groups;
use self::store::{Key, NewChan, PaddedShard, Refused, SHARDS, Shard, Wake};
use crate::config::{LayerConfig, parse_query, redacted_url};
use crate::error::{BuildError, LayerError, ReceiveError, SendError, TryReceiveError};
use crate::inspect::Inspection;
use crate::layer::{BoxFuture, Capabilities, ChannelLayer, GroupSendReport};
use crate::message::Message;
use crate::metrics::MetricsSnapshot;
use crate::name::{NameError, validate_channel, validate_prefix};
use crate::runtime::{Sweep, TimerSlot, sweep_every};

/// How long a blocking receive keeps looking (spinning briefly, then yielding) before it parks
/// its thread.
const SPIN_BEFORE_PARK: Duration = Duration::from_micros(50);

/// How many doubling rounds of pauses a waiting receive spins (1 + 2 + ... + 64 pauses) before
/// it yields after each further round of 64.
const SPIN_STEPS: u32 = 7;

/// Length of the random process id and of the random local part in minted names.
const RANDOM_LEN: usize = 12;

/// To what capacity a table or queue of `capacity` slots holding `len` entries should shrink,
/// if it should: when fewer than a quarter of its slots are used and it has more than `floor`,
/// to twice its length.
///
/// The gap between the quarter and the half is the hysteresis: a table just shrunk can double
/// before it grows again, and shrinks again only after losing half its entries, so a size
/// swinging by less than a factor of 2 never reallocates, and a shrink (a copy of `len`
/// entries) is paid for by the `len / 2` or more removals before it: amortised O(1) each. The
/// floor keeps small tables as they are (a shard's table of a few channels, a small group).
fn shrink_target(len: usize, capacity: usize, floor: usize) -> Option<usize> {
    (capacity > floor && len < capacity / 4).then(|| len * 2)
}

/// The in-memory channel layer: every channel, group and message lives in this process.
///
/// It is the embedded default: one binary, many services talking over channels, no server.
/// Clones share the same layer. It follows the same contract as every backend (see
/// [`ChannelLayer`]), and accepts only messages that could cross a network unchanged, so a
/// service can later be split out onto a network backend with nothing else changing.
///
/// Blocking calls park the thread; async calls work on any executor. Expired messages are
/// dropped when a receiver meets them and by a periodic sweep on the crate's timer thread, so
/// memory comes back even for channels nobody reads; a channel left empty with no receiver
/// waiting is forgotten.
///
/// # Differences from Django's `InMemoryChannelLayer`
///
/// - None in capacity: every channel, a process-specific `a!b` included, holds at most its own
///   capacity, as Django counts each full name (so a group of 300 channels of one process
///   gets every message at capacity 100, and an unread channel never starves its siblings).
/// - An expired message does not remove its channel from groups (channels_redis does not
///   either); membership lapses only `group_expiry` after the latest `group_add`.
/// - `channel_capacity` rules work (Django's in-memory layer never compiles them, [contract §1.6](crate::contract)).
///
/// # Examples
///
/// ```
/// use channel_layer::prelude::*;
///
/// let layer = InMemoryLayer::default();
/// layer.send("inventory.request", Message::new("inventory.check").with("sku", "A-1"))?;
/// let msg = layer.receive("inventory.request")?;
/// assert_eq!(msg.get("sku").and_then(|v| v.as_str()), Some("A-1"));
/// # Ok::<(), channel_layer::Error>(())
/// ```
#[derive(Clone)]
pub struct InMemoryLayer {
    inner: Arc<Inner>,
}

struct Inner {
    config: LayerConfig,
    hasher: DefaultHashBuilder,
    shards: Box<[PaddedShard]>,
    groups: Groups,
    closed: AtomicBool,
    process_id: String,
    next_waiter: AtomicU64,
}

impl Default for InMemoryLayer {
    fn default() -> Self {
        InMemoryLayer::new(LayerConfig::default())
    }
}

impl fmt::Debug for InMemoryLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InMemoryLayer")
            .field("process_id", &self.inner.process_id)
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// The 64 characters a random name part is drawn from: 6 bits each, all valid in a name.
const NAME_ALPHABET: &[u8; 64] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Appends [`RANDOM_LEN`] random name characters (72 random bits) to `name`.
///
/// One random number and no formatting: a fresh reply channel per request makes this part of
/// every round trip.
fn push_random_part(name: &mut String) {
    let mut bits: u128 = rand::rng().random();
    for _ in 0..RANDOM_LEN {
        name.push(char::from(NAME_ALPHABET[(bits & 63) as usize]));
        bits >>= 6;
    }
}

fn random_name_part() -> String {
    let mut part = String::with_capacity(RANDOM_LEN);
    push_random_part(&mut part);
    part
}

impl InMemoryLayer {
    /// A layer with `config` (use [`LayerConfig::default`] or [`InMemoryLayer::default`] for
    /// the spec's defaults).
    ///
    /// A configuration that did not come from [`crate::LayerConfigBuilder::build`] is used as
    /// it is; a zero capacity then rejects every send.
    pub fn new(config: LayerConfig) -> Self {
        let sweep_interval =
            (config.expiry / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
        let inner = Arc::new(Inner {
            groups: Groups::new(config.group_expiry),
            config,
            hasher: DefaultHashBuilder::default(),
            shards: (0..SHARDS).map(|_| PaddedShard::default()).collect(),
            closed: AtomicBool::new(false),
            process_id: random_name_part(),
            next_waiter: AtomicU64::new(1),
        });
        let weak: Weak<dyn Sweep> = Arc::downgrade(&inner) as Weak<dyn Sweep>;
        sweep_every(sweep_interval, weak);
        InMemoryLayer { inner }
    }

    /// A layer from a `memory://` URL; query parameters `capacity`, `expiry`, `group_expiry`
    /// (seconds), `max_message_depth` and `max_message_bytes` set the options, read and checked as every backend reads them
    /// (see [`crate::parse_url_params`] and the bounds of [`LayerConfig::validate`]).
    ///
    /// # Errors
    ///
    /// [`BuildError`] for another scheme, a host or path, an unknown parameter, a parameter
    /// given twice or a value out of range.
    ///
    /// # Examples
    ///
    /// ```
    /// use channel_layer::InMemoryLayer;
    ///
    /// let layer = InMemoryLayer::from_url("memory://?capacity=10&expiry=0.5")?;
    /// assert_eq!(layer.config().capacity, 10);
    /// assert!(InMemoryLayer::from_url("memory://?capacity=10&colour=red").is_err());
    /// # Ok::<(), channel_layer::BuildError>(())
    /// ```
    pub fn from_url(url: &str) -> Result<Self, BuildError> {
        let bad = |reason: String| BuildError::InvalidUrl {
            url: redacted_url(url),
            reason,
        };
        let parsed = url::Url::parse(url).map_err(|e| bad(e.to_string()))?;
        if parsed.scheme() != "memory" {
            return Err(bad("the in-memory layer takes memory:// URLs".into()));
        }
        if parsed.host_str().is_some_and(|h| !h.is_empty()) || !matches!(parsed.path(), "" | "/") {
            return Err(bad(
                "a memory:// URL has no host or path, only ?options".into()
            ));
        }
        let (config, _) = parse_query("memory", parsed.query().unwrap_or(""), &[])?;
        Ok(InMemoryLayer::new(config))
    }

    /// The configuration this layer runs with.
    pub fn config(&self) -> &LayerConfig {
        &self.inner.config
    }

    /// How many messages are queued on `channel` now.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn queued_len(&self, channel: &str) -> usize {
        let key = self.inner.key(channel);
        self.inner.shard(&key).queued_len(&key)
    }

    /// Queues a message that arrived from elsewhere (a network backend's server), keeping the
    /// deadline it already has. Counted like a send; a full channel refuses it.
    #[cfg_attr(not(any(feature = "redis", feature = "nats")), allow(dead_code))]
    pub(crate) fn deliver_arrived(
        &self,
        channel: &str,
        message: Message,
        deadline: Instant,
    ) -> Result<(), SendError> {
        if self.inner.is_closed() {
            return Err(SendError::Closed { message });
        }
        let key = self.inner.key(channel);
        self.inner
            .deliver(&key, message, Instant::now(), deadline, true)
            .map_err(Refused::into_send_error)
    }
}

impl Inner {
    fn key<'a>(&self, channel: &'a str) -> Key<'a> {
        Key::new(&self.hasher, channel)
    }

    fn shard(&self, key: &Key<'_>) -> MutexGuard<'_, Shard> {
        self.shards[key.shard()].lock.lock()
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    fn deadline(&self, now: Instant) -> Instant {
        now.checked_add(self.config.expiry)
            .unwrap_or_else(|| now + Duration::from_secs(86_400 * 365))
    }

    fn send(&self, channel: &str, message: Message) -> Result<(), SendError> {
        if self.is_closed() {
            return Err(SendError::Closed { message });
        }
        if let Err(error) = self.config.check_message(&message) {
            return Err(SendError::InvalidMessage { error, message });
        }
        let key = self.key(channel);
        let now = Instant::now();
        self.deliver(&key, message, now, self.deadline(now), true)
            .map_err(Refused::into_send_error)
    }

    /// Queues a message and wakes a receiver; counts it as sent (`direct`) or group-delivered,
    /// or as rejected or skipped when full.
    ///
    fn deliver(
        &self,
        key: &Key<'_>,
        message: Message,
        now: Instant,
        deadline: Instant,
        direct: bool,
    ) -> Result<(), Refused> {
        let mut shard = self.shard(key);
        match shard.push(key, message, now, deadline, || {
            self.new_chan(key.name, direct)
        }) {
            Ok(wake) => {
                if direct {
                    shard.stats.sent += 1;
                } else {
                    shard.stats.group_deliveries += 1;
                }
                drop(shard);
                self.shards[key.shard()]
                    .pushes
                    .fetch_add(1, Ordering::Release);
                if let Some(w) = wake {
                    w.wake();
                }
                Ok(())
            }
            Err(full @ Refused::Full { .. }) => {
                if direct {
                    shard.stats.rejected_full += 1;
                } else {
                    shard.stats.group_skipped_full += 1;
                }
                Err(full)
            }
            Err(refused) => Err(refused),
        }
    }

    /// What a channel about to be made needs: its name checked (unless it is a group member,
    /// checked when it joined) and its capacity.
    fn new_chan(&self, channel: &str, check: bool) -> Result<NewChan, NameError> {
        if check {
            validate_channel(channel)?;
        }
        Ok(NewChan {
            capacity: self.config.capacity_for(channel),
        })
    }

    fn try_receive(&self, channel: &str) -> Result<Message, TryReceiveError> {
        if self.is_closed() {
            return Err(TryReceiveError::Closed);
        }
        let key = self.key(channel);
        let found = self.shard(&key).pop(&key, Instant::now);
        match found {
            Some(m) => Ok(m),
            // Only a name that made no channel can be invalid: check it on this slow path.
            None => {
                validate_channel(channel)?;
                Err(TryReceiveError::Empty)
            }
        }
    }

    fn receive_blocking(
        &self,
        channel: &str,
        deadline: Option<Instant>,
    ) -> Result<Message, ReceiveError> {
        let key = self.key(channel);
        // Watch for a delivery for a short while before parking: a producer on another core
        // usually delivers within microseconds, while parking costs a system call on each side
        // and, on virtual machines whose idle CPUs halt, tens of microseconds to wake up. The
        // watch reads the shard's delivery counter, not its lock, so it slows nobody down.
        //
        // It spins in doubling rounds up to 64 pauses (127 in all, as crossbeam's `Backoff`
        // does), then yields after every further round of 64: when the producer shares this
        // core, spinning cannot help, and a yield lets it run at once.
        let pushes = &self.shards[key.shard()].pushes;
        let watch_until = Instant::now() + SPIN_BEFORE_PARK;
        let mut first = true;
        'watch: loop {
            if self.is_closed() {
                return Err(ReceiveError::Closed);
            }
            let seen = pushes.load(Ordering::Acquire);
            if let Some(m) = self.shard(&key).pop(&key, Instant::now) {
                return Ok(m);
            }
            if first {
                validate_channel(channel)?;
                first = false;
            }
            for step in 0u32.. {
                for _ in 0..1u32 << step.min(SPIN_STEPS - 1) {
                    if pushes.load(Ordering::Relaxed) != seen {
                        continue 'watch;
                    }
                    std::hint::spin_loop();
                }
                if step >= SPIN_STEPS {
                    let now = Instant::now();
                    if now >= watch_until || deadline.is_some_and(|d| now >= d) {
                        break 'watch;
                    }
                    thread::yield_now();
                }
                if pushes.load(Ordering::Acquire) != seen {
                    continue 'watch;
                }
            }
        }
        let id = self.next_waiter.fetch_add(1, Ordering::Relaxed);
        let mut registered = false;
        loop {
            let mut shard = self.shard(&key);
            let now = Instant::now();
            let outcome = if self.is_closed() {
                Some(Err(ReceiveError::Closed))
            } else if let Some(m) = shard.pop(&key, || now) {
                Some(Ok(m))
            } else if deadline.is_some_and(|d| now >= d) {
                Some(Err(ReceiveError::Timeout))
            } else {
                None
            };
            if let Some(result) = outcome {
                let pass_on = if registered {
                    shard.deregister(&key, id)
                } else {
                    None
                };
                drop(shard);
                if let Some(w) = pass_on {
                    w.wake();
                }
                return result;
            }
            shard.register(
                &key,
                id,
                || Wake::Thread(thread::current()),
                |_| {},
                || self.new_chan(channel, true),
            )?;
            registered = true;
            drop(shard);
            match deadline {
                Some(d) => thread::park_timeout(d.saturating_duration_since(now)),
                None => thread::park(),
            }
        }
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let mut wake = Vec::new();
        for shard in self.shards.iter() {
            shard.lock.lock().drain_waiters(&mut wake);
        }
        wake.into_iter().for_each(Wake::wake);
    }

    fn flush(&self) -> Result<(), LayerError> {
        if self.is_closed() {
            return Err(LayerError::Closed);
        }
        self.groups.clear();
        let mut wake = Vec::new();
        for shard in self.shards.iter() {
            shard.lock.lock().flush(&mut wake);
        }
        wake.into_iter().for_each(Wake::wake);
        Ok(())
    }

    fn group_add(&self, group: &str, channel: &str) -> Result<(), LayerError> {
        if self.is_closed() {
            return Err(LayerError::Closed);
        }
        let key = self.key(channel);
        self.groups.add(group, channel, key.hash)
    }

    fn group_discard(&self, group: &str, channel: &str) -> Result<(), LayerError> {
        if self.is_closed() {
            return Err(LayerError::Closed);
        }
        self.groups.discard(group, channel)
    }

    fn group_send(&self, group: &str, message: Message) -> Result<GroupSendReport, LayerError> {
        if self.is_closed() {
            return Err(LayerError::Closed);
        }
        self.config.check_message(&message)?;
        let now = Instant::now();
        let deadline = self.deadline(now);
        let mut report = GroupSendReport::default();
        self.groups.for_each_member(group, now, |name, hash| {
            let key = Key { name, hash };
            match self.deliver(&key, message.clone(), now, deadline, false) {
                Ok(()) => report.delivered += 1,
                Err(_) => report.skipped_full += 1,
            }
        })?;
        Ok(report)
    }

    fn metrics(&self) -> MetricsSnapshot {
        let mut snap = MetricsSnapshot::default();
        for shard in self.shards.iter() {
            shard.lock.lock().add_to(&mut snap);
        }
        self.groups.add_to(&mut snap);
        snap
    }
}

impl Inner {
    fn inspect(&self, limit: usize) -> Result<Inspection, LayerError> {
        if self.is_closed() {
            return Err(LayerError::Closed);
        }
        let now = Instant::now();
        let mut channels = Vec::new();
        for shard in self.shards.iter() {
            shard
                .lock
                .lock()
                .inspect(now, self.config.expiry, &mut channels);
        }
        let mut groups = self.groups.inspect(now);
        let mut complete = channels.len() <= limit && groups.len() <= limit;
        channels.sort_by(|a, b| a.name.cmp(&b.name));
        channels.truncate(limit);
        groups.sort_by(|a, b| a.name.cmp(&b.name));
        groups.truncate(limit);
        for group in &mut groups {
            if group.members.len() > limit {
                complete = false;
                group.members.truncate(limit);
            }
        }
        Ok(Inspection {
            channels,
            groups,
            metrics: self.metrics(),
            complete,
        })
    }
}

impl Sweep for Inner {
    fn sweep(&self) {
        let now = Instant::now();
        for shard in self.shards.iter() {
            shard.lock.lock().prune_where(now, |_| true);
        }
        self.groups.prune(now);
    }
}

/// The future behind the async receive: takes a message only in the poll that returns it.
struct Receive<'a> {
    inner: &'a Inner,
    channel: &'a str,
    key: Option<Key<'a>>,
    id: u64,
    registered: bool,
    timer: Option<TimerSlot>,
}

impl Receive<'_> {
    fn withdraw(&mut self) {
        if let (true, Some(key)) = (self.registered, self.key) {
            self.registered = false;
            let pass_on = self.inner.shard(&key).deregister(&key, self.id);
            if let Some(w) = pass_on {
                w.wake();
            }
        }
    }
}

impl Future for Receive<'_> {
    type Output = Result<Message, ReceiveError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let key = *this.key.get_or_insert_with(|| this.inner.key(this.channel));
        if this.inner.is_closed() {
            this.withdraw();
            return Poll::Ready(Err(ReceiveError::Closed));
        }
        let mut shard = this.inner.shard(&key);
        if let Some(m) = shard.pop(&key, Instant::now) {
            let pass_on = if this.registered {
                this.registered = false;
                shard.deregister(&key, this.id)
            } else {
                None
            };
            drop(shard);
            if let Some(w) = pass_on {
                w.wake();
            }
            return Poll::Ready(Ok(m));
        }
        if !this.registered {
            // Only a name that made no channel can be invalid: check it before making one.
            if let Err(e) = validate_channel(this.channel) {
                return Poll::Ready(Err(e.into()));
            }
        }
        if let Some(timer) = &mut this.timer {
            if timer.poll_expired(cx) {
                drop(shard);
                this.withdraw();
                return Poll::Ready(Err(ReceiveError::Timeout));
            }
        }
        let inner = this.inner;
        let channel = this.channel;
        shard.register(
            &key,
            this.id,
            || Wake::Task(cx.waker().clone()),
            |wake| match wake {
                Wake::Task(w) => w.clone_from(cx.waker()),
                other => *other = Wake::Task(cx.waker().clone()),
            },
            || inner.new_chan(channel, true),
        )?;
        this.registered = true;
        Poll::Pending
    }
}

impl Drop for Receive<'_> {
    fn drop(&mut self) {
        self.withdraw();
    }
}

impl ChannelLayer for InMemoryLayer {
    fn capabilities(&self) -> Capabilities {
        Capabilities::none()
            .with_groups(true)
            .with_flush(true)
            .with_receive_any_process_channel(true)
            .with_exact_gauges(true)
            .with_inspect(true)
    }

    fn inspect_async(&self, limit: usize) -> BoxFuture<'_, Result<Inspection, LayerError>> {
        Box::pin(std::future::ready(self.inner.inspect(limit)))
    }

    fn metrics(&self) -> MetricsSnapshot {
        self.inner.metrics()
    }

    fn new_channel(&self, prefix: &str) -> Result<String, NameError> {
        validate_prefix(prefix, 2 + 2 * RANDOM_LEN)?;
        let process_id = &self.inner.process_id;
        let mut name = String::with_capacity(prefix.len() + 2 + process_id.len() + RANDOM_LEN);
        name.push_str(prefix);
        name.push('.');
        name.push_str(process_id);
        name.push('!');
        push_random_part(&mut name);
        Ok(name)
    }

    fn send_async<'a>(
        &'a self,
        channel: &'a str,
        message: Message,
    ) -> BoxFuture<'a, Result<(), SendError>> {
        let result = self.inner.send(channel, message);
        Box::pin(std::future::ready(result))
    }

    /// Waits for room without spinning: a receiver taking from the channel, `flush` and
    /// `close` wake it.
    fn send_until_async<'a>(
        &'a self,
        channel: &'a str,
        message: Message,
        deadline: Option<Instant>,
    ) -> BoxFuture<'a, Result<(), SendError>> {
        Box::pin(wait::SendUntil::new(
            &self.inner,
            channel,
            message,
            deadline,
        ))
    }

    fn send_until(
        &self,
        channel: &str,
        message: Message,
        deadline: Option<Instant>,
    ) -> Result<(), SendError> {
        // Its first poll tries the send; only a full channel waits, parked.
        crate::runtime::block_on(wait::SendUntil::new(
            &self.inner,
            channel,
            message,
            deadline,
        ))
    }

    fn receive_until_async<'a>(
        &'a self,
        channel: &'a str,
        deadline: Option<Instant>,
    ) -> BoxFuture<'a, Result<Message, ReceiveError>> {
        Box::pin(Receive {
            inner: &self.inner,
            channel,
            key: None,
            id: self.inner.next_waiter.fetch_add(1, Ordering::Relaxed),
            registered: false,
            timer: deadline.map(TimerSlot::new),
        })
    }

    fn try_receive_async<'a>(
        &'a self,
        channel: &'a str,
    ) -> BoxFuture<'a, Result<Message, TryReceiveError>> {
        Box::pin(std::future::ready(self.inner.try_receive(channel)))
    }

    fn group_add_async<'a>(
        &'a self,
        group: &'a str,
        channel: &'a str,
    ) -> BoxFuture<'a, Result<(), LayerError>> {
        Box::pin(std::future::ready(self.inner.group_add(group, channel)))
    }

    fn group_discard_async<'a>(
        &'a self,
        group: &'a str,
        channel: &'a str,
    ) -> BoxFuture<'a, Result<(), LayerError>> {
        Box::pin(std::future::ready(self.inner.group_discard(group, channel)))
    }

    fn group_send_async<'a>(
        &'a self,
        group: &'a str,
        message: Message,
    ) -> BoxFuture<'a, Result<GroupSendReport, LayerError>> {
        Box::pin(std::future::ready(self.inner.group_send(group, message)))
    }

    fn flush_async(&self) -> BoxFuture<'_, Result<(), LayerError>> {
        Box::pin(std::future::ready(self.inner.flush()))
    }

    fn close(&self) {
        self.inner.close();
    }

    fn send(&self, channel: &str, message: Message) -> Result<(), SendError> {
        self.inner.send(channel, message)
    }

    fn receive_until(
        &self,
        channel: &str,
        deadline: Option<Instant>,
    ) -> Result<Message, ReceiveError> {
        self.inner.receive_blocking(channel, deadline)
    }

    fn try_receive(&self, channel: &str) -> Result<Message, TryReceiveError> {
        self.inner.try_receive(channel)
    }

    fn group_add(&self, group: &str, channel: &str) -> Result<(), LayerError> {
        self.inner.group_add(group, channel)
    }

    fn group_discard(&self, group: &str, channel: &str) -> Result<(), LayerError> {
        self.inner.group_discard(group, channel)
    }

    fn group_send(&self, group: &str, message: Message) -> Result<GroupSendReport, LayerError> {
        self.inner.group_send(group, message)
    }

    fn flush(&self) -> Result<(), LayerError> {
        self.inner.flush()
    }
}
