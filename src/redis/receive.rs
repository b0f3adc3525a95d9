//! Receiving: what the pullers take, receivers taking from idle keys directly, and the
//! guards that keep one taker per key and wake pullers blocked for nobody.

use super::*;

/// How long a receive waits on its local buffer before it checks the servers' health.
pub(super) const HEALTH_CHECK: Duration = Duration::from_millis(250);

/// The longest `try_receive` waits for a puller to move on from a key it blocks on for nobody.
pub(super) const STALE_WAIT: Duration = Duration::from_millis(100);

/// How many messages `try_receive` takes from a process key in one round trip.
pub(super) const PROCESS_BATCH: usize = 64;

/// What the pullers take from Redis: what receivers here are waiting for and do not have yet.
///
/// Only as many messages are taken as receivers wait for (plus the prefetch), so a message
/// nobody here waits for stays in Redis, where it counts against its channel's capacity and
/// other processes can receive it.
#[derive(Default)]
pub(super) struct PullSet {
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

pub(super) fn step_deadline(deadline: Option<Instant>) -> Instant {
    let step = Instant::now() + HEALTH_CHECK;
    deadline.map_or(step, |d| d.min(step))
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
pub(super) struct DemandGuard<'a> {
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

impl Inner {
    pub(super) fn check_receive(&self, channel: &str) -> Result<(), NameError> {
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
    pub(super) fn want(
        self: &Arc<Self>,
        channel: &str,
        via: Via,
    ) -> (DemandGuard<'_>, Option<Arc<Taking>>) {
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
    pub(super) fn begin_taking(
        self: &Arc<Self>,
        pull: &mut PullSet,
        channel: &str,
    ) -> Option<Arc<Taking>> {
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
    pub(super) async fn take(
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
    pub(super) fn needed(&self, pull: &mut PullSet) -> HashMap<String, usize> {
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
    pub(super) fn is_wanted(&self, from: &Pulled) -> bool {
        let name = match from {
            Pulled::Process(n) | Pulled::Normal(n) => n,
        };
        let mut pull = self.pull.lock();
        self.needed(&mut pull).contains_key(name.as_str())
    }

    /// Commands that wake the pullers blocked in `BZPOPMIN`, so they pick up a changed set of
    /// keys.
    pub(super) fn wake_commands(&self) -> [Cmd; 2] {
        let mut zadd = ::redis::cmd("ZADD");
        zadd.arg(&self.wake_key).arg(0).arg("wake");
        let mut ttl = ::redis::cmd("PEXPIRE");
        ttl.arg(&self.wake_key).arg(60_000);
        [zadd, ttl]
    }

    /// Wakes the pullers without waiting for the reply.
    pub(super) fn wake_pullers(&self) {
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
    pub(super) fn stale_puller(&self, pull: &mut PullSet, channel: &str) -> bool {
        let key = non_local_name(channel);
        pull.blocking_on.contains(key) && !self.needed(pull).contains_key(key)
    }

    /// Waits (at most [`STALE_WAIT`]) for the pullers to move on from a key they block on for
    /// nobody; they were woken when its last receiver left, so this takes about a round trip.
    pub(super) async fn outwait_stale_puller(&self, via: Via, channel: &str) {
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

    pub(super) fn fault(&self) -> Option<BackendError> {
        self.servers.iter().find_map(|s| s.fault.lock().clone())
    }

    /// Waits for a message on the local buffers, taking it from Redis first if the key is
    /// idle, and checking every so often that the pullers can reach their servers, so a
    /// receive fails with a typed error during an outage. A blocking receive (`Via::Caller`)
    /// waits on its own thread inside the future, which then never suspends.
    pub(super) async fn receive(
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
    pub(super) fn after_wait(&self, deadline: Option<Instant>) -> Result<(), ReceiveError> {
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
    pub(super) fn take_commands(&self, channel: &str) -> (Pulled, String, usize) {
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

    pub(super) fn took(
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
    pub(super) async fn try_receive(
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
}
