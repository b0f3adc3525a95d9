//! The in-memory store: sharded channel queues, their waiting receivers, and counters.
//!
//! Channels are spread over [`SHARDS`] shards by the hash of their full name; each shard is one
//! mutex, so operations on different channels rarely contend (a producer filling one member of
//! a group and a consumer draining another do not meet). Every channel, process-specific ones
//! included, is bounded by its own capacity ([contract §1.3](crate::contract)), so a full or
//! abandoned channel never costs another channel its messages.

use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::task::Waker;
use std::thread::Thread;
use std::time::{Duration, Instant};

use hashbrown::HashTable;
use parking_lot::Mutex;

use crate::error::SendError;
use crate::inspect::ChannelState;
use crate::message::Message;
use crate::metrics::MetricsSnapshot;
use crate::name::NameError;

use super::shrink_target;

/// The number of shards; a power of two.
pub(crate) const SHARDS: usize = 64;

/// A shard's table of channels at most this large is never shrunk (64 shards of 64 slots of
/// about 130 bytes: about half a MiB for a layer whose tables all sit at the floor).
pub(super) const CHANNELS_FLOOR: usize = 64;

/// A channel's queue (of messages, receivers or senders) at most this large is never shrunk.
pub(super) const QUEUE_FLOOR: usize = 16;

/// How a blocked receiver is woken.
pub(crate) enum Wake {
    Thread(Thread),
    Task(Waker),
}

impl Wake {
    pub(crate) fn wake(self) {
        match self {
            Wake::Thread(t) => t.unpark(),
            Wake::Task(w) => w.wake(),
        }
    }
}

struct Waiter {
    id: u64,
    wake: Wake,
}

/// One channel: its queue of `(deadline, message)` and the receivers waiting on it.
struct Chan {
    /// Shared, so that a `Full` error can name the channel without allocating.
    name: Arc<str>,
    hash: u64,
    capacity: usize,
    items: VecDeque<(Instant, Message)>,
    waiters: VecDeque<Waiter>,
    /// Senders waiting for room (`send_until`), woken one per message taken.
    senders: VecDeque<Waiter>,
}

impl Chan {
    fn is_idle(&self) -> bool {
        self.items.is_empty() && self.waiters.is_empty() && self.senders.is_empty()
    }

    /// Wakes up to `n` senders waiting for room.
    fn room_for(&mut self, n: usize) {
        for _ in 0..n {
            match self.senders.pop_front() {
                Some(w) => w.wake.wake(),
                None => break,
            }
        }
    }

    /// Drops expired messages from the front; returns how many.
    fn prune(&mut self, now: Instant) -> usize {
        let before = self.items.len();
        while self.items.front().is_some_and(|(d, _)| *d <= now) {
            self.items.pop_front();
        }
        before - self.items.len()
    }

    /// Gives back the room its queues kept from a peak (see [`shrink_target`]).
    fn shrink_queues(&mut self) {
        fn shrink<T>(queue: &mut VecDeque<T>) {
            if let Some(target) = shrink_target(queue.len(), queue.capacity(), QUEUE_FLOOR) {
                queue.shrink_to(target);
            }
        }
        shrink(&mut self.items);
        shrink(&mut self.waiters);
        shrink(&mut self.senders);
    }
}

/// What a new channel needs: its capacity.
pub(crate) struct NewChan {
    pub(crate) capacity: usize,
}

/// Counters kept under the shard lock, so counting costs no atomic operation.
#[derive(Default, Clone, Copy)]
pub(crate) struct Stats {
    pub(crate) sent: u64,
    pub(crate) received: u64,
    pub(crate) rejected_full: u64,
    pub(crate) expired: u64,
    pub(crate) flushed: u64,
    pub(crate) group_deliveries: u64,
    pub(crate) group_skipped_full: u64,
    pub(crate) queued: u64,
}

/// A channel name with its hash computed once.
#[derive(Clone, Copy)]
pub(crate) struct Key<'a> {
    pub(crate) name: &'a str,
    pub(crate) hash: u64,
}

impl<'a> Key<'a> {
    pub(crate) fn new<S: BuildHasher>(hasher: &S, name: &'a str) -> Self {
        Key {
            name,
            hash: hasher.hash_one(name),
        }
    }

    pub(crate) fn shard(&self) -> usize {
        (self.hash >> (64 - SHARDS.trailing_zeros())) as usize
    }
}

/// Why a delivery was refused; the message comes back.
pub(crate) enum Refused {
    Full {
        channel: Arc<str>,
        capacity: usize,
        message: Message,
    },
    InvalidName {
        error: NameError,
        message: Message,
    },
}

impl Refused {
    pub(crate) fn into_send_error(self) -> SendError {
        match self {
            Refused::Full {
                channel,
                capacity,
                message,
            } => SendError::Full {
                channel,
                capacity,
                message,
            },
            Refused::InvalidName { error, message } => SendError::InvalidName { error, message },
        }
    }
}

/// The channel under `key`, made by `make` if it does not exist yet, in one table lookup.
fn chan_or_make<'t>(
    channels: &'t mut HashTable<Chan>,
    key: &Key<'_>,
    make: impl FnOnce() -> Result<NewChan, NameError>,
) -> Result<&'t mut Chan, NameError> {
    match channels.entry(key.hash, |c| &*c.name == key.name, |c| c.hash) {
        hashbrown::hash_table::Entry::Occupied(entry) => Ok(entry.into_mut()),
        hashbrown::hash_table::Entry::Vacant(entry) => {
            let NewChan { capacity } = make()?;
            let chan = Chan {
                name: key.name.into(),
                hash: key.hash,
                capacity,
                items: VecDeque::new(),
                waiters: VecDeque::new(),
                senders: VecDeque::new(),
            };
            Ok(entry.insert(chan).into_mut())
        }
    }
}

#[derive(Default)]
pub(crate) struct Shard {
    channels: HashTable<Chan>,
    pub(crate) stats: Stats,
}

/// A shard padded to its own cache lines, so neighbouring locks do not share one.
#[repr(align(128))]
#[derive(Default)]
pub(crate) struct PaddedShard {
    pub(crate) lock: Mutex<Shard>,
    /// Counts deliveries into this shard, so a spinning receiver can watch for news without
    /// taking the lock.
    pub(crate) pushes: AtomicU64,
}

impl Shard {
    fn chan_mut(&mut self, key: &Key<'_>) -> Option<&mut Chan> {
        self.channels.find_mut(key.hash, |c| &*c.name == key.name)
    }

    fn chan_or_make(
        &mut self,
        key: &Key<'_>,
        make: impl FnOnce() -> Result<NewChan, NameError>,
    ) -> Result<&mut Chan, NameError> {
        chan_or_make(&mut self.channels, key, make)
    }

    /// Queues `message` on `key` unless its capacity is reached; returns a receiver to wake.
    ///
    /// `make` is called only when the channel does not exist yet: it checks the name and gives
    /// what the new channel needs. (A channel that exists was checked when it was made, so the
    /// hot path validates nothing.) A full channel first drops its own expired messages.
    pub(crate) fn push(
        &mut self,
        key: &Key<'_>,
        message: Message,
        now: Instant,
        deadline: Instant,
        make: impl FnOnce() -> Result<NewChan, NameError>,
    ) -> Result<Option<Wake>, Refused> {
        // One table lookup: the channel, made if need be, and the counters borrowed apart.
        let Shard { channels, stats } = self;
        let chan = match chan_or_make(channels, key, make) {
            Ok(chan) => chan,
            Err(error) => return Err(Refused::InvalidName { error, message }),
        };
        let mut room = chan.items.len() < chan.capacity;
        if !room {
            let expired = chan.prune(now);
            if expired > 0 {
                room = chan.items.len() < chan.capacity;
                stats.expired += expired as u64;
                stats.queued -= expired as u64;
            }
        }
        if !room {
            return Err(Refused::Full {
                channel: chan.name.clone(),
                capacity: chan.capacity,
                message,
            });
        }
        chan.items.push_back((deadline, message));
        if chan.items.len() < chan.capacity && !chan.senders.is_empty() {
            // Room made by expired messages is passed on, one waiting sender after another.
            chan.room_for(1);
        }
        let wake = chan.waiters.pop_front().map(|w| w.wake);
        stats.queued += 1;
        Ok(wake)
    }

    /// Takes the oldest deliverable message on `key`, dropping expired ones on the way.
    ///
    /// A channel left idle stays in the table until the next sweep, so a busy channel that
    /// empties now and then is not freed and made again each time.
    ///
    /// The clock is read only when there is a message to check (`now` is called at most once).
    pub(crate) fn pop(&mut self, key: &Key<'_>, now: impl FnOnce() -> Instant) -> Option<Message> {
        let Shard { channels, stats } = self;
        let chan = channels.find_mut(key.hash, |c| &*c.name == key.name)?;
        if chan.items.is_empty() {
            return None;
        }
        let now = now();
        let mut expired = 0usize;
        let mut found = None;
        while let Some((deadline, message)) = chan.items.pop_front() {
            if deadline <= now {
                expired += 1;
            } else {
                found = Some(message);
                break;
            }
        }
        let taken = expired + usize::from(found.is_some());
        if taken > 0 {
            stats.expired += expired as u64;
            stats.queued -= taken as u64;
            chan.room_for(taken);
        }
        if found.is_some() {
            stats.received += 1;
        }
        found
    }

    /// How many messages are queued on `key`.
    /// The channels holding messages, as an inspection lists them: the count, and the age of
    /// the oldest (its deadline is `expiry` after it was queued).
    pub(crate) fn inspect(&self, now: Instant, expiry: Duration, out: &mut Vec<ChannelState>) {
        for chan in self.channels.iter() {
            if let Some((deadline, _)) = chan.items.front() {
                let age = expiry.saturating_sub(deadline.saturating_duration_since(now));
                out.push(ChannelState::new(
                    &*chan.name,
                    chan.items.len() as u64,
                    Some(age),
                ));
            }
        }
    }

    pub(crate) fn queued_len(&mut self, key: &Key<'_>) -> usize {
        self.chan_mut(key).map_or(0, |c| c.items.len())
    }

    /// Drops expired messages from the channels whose name satisfies `select`, and forgets
    /// channels left idle. Returns how many messages expired.
    ///
    /// Memory kept from a peak is given back here, where every channel is visited anyway, so
    /// sends and receives pay nothing for it: the queues of the channels that stay, and the
    /// table once idle channels have left it.
    pub(crate) fn prune_where(&mut self, now: Instant, select: impl Fn(&str) -> bool) -> u64 {
        let mut total = 0u64;
        self.channels.retain(|chan| {
            if select(&chan.name) {
                let pruned = chan.prune(now);
                chan.room_for(pruned);
                total += pruned as u64;
            }
            if chan.is_idle() {
                return false;
            }
            chan.shrink_queues();
            true
        });
        self.shrink_table();
        self.stats.expired += total;
        self.stats.queued -= total;
        total
    }

    /// Shrinks the table of channels if it is mostly empty (see [`shrink_target`]); a table
    /// left empty is freed.
    fn shrink_table(&mut self) {
        let channels = &mut self.channels;
        if let Some(target) = shrink_target(channels.len(), channels.capacity(), CHANNELS_FLOOR) {
            channels.shrink_to(target, |c| c.hash);
        }
    }

    /// The slots held: the table's, and the sum of the channels' queues'.
    #[cfg(test)]
    pub(crate) fn capacities(&self) -> (usize, usize) {
        let queues = self
            .channels
            .iter()
            .map(|c| c.items.capacity() + c.waiters.capacity() + c.senders.capacity())
            .sum();
        (self.channels.capacity(), queues)
    }

    /// Drops every message; collects the receivers to wake (they keep waiting afterwards).
    pub(crate) fn flush(&mut self, wake: &mut Vec<Wake>) {
        let mut dropped = 0u64;
        self.channels.retain(|chan| {
            let n = chan.items.len();
            dropped += n as u64;
            chan.items.clear();
            wake.extend(chan.senders.drain(..).map(|w| w.wake));
            wake.extend(chan.waiters.drain(..).map(|w| w.wake));
            false
        });
        self.shrink_table();
        self.stats.flushed += dropped;
        self.stats.queued -= dropped;
    }

    /// Removes every waiter (to wake them with `Closed`).
    pub(crate) fn drain_waiters(&mut self, wake: &mut Vec<Wake>) {
        for chan in self.channels.iter_mut() {
            wake.extend(chan.waiters.drain(..).map(|w| w.wake));
            wake.extend(chan.senders.drain(..).map(|w| w.wake));
        }
    }

    /// Registers waiter `id` on `key`, or refreshes how it is woken if it is there already.
    pub(crate) fn register(
        &mut self,
        key: &Key<'_>,
        id: u64,
        wake: impl FnOnce() -> Wake,
        refresh: impl FnOnce(&mut Wake),
        make: impl FnOnce() -> Result<NewChan, NameError>,
    ) -> Result<(), NameError> {
        let chan = self.chan_or_make(key, make)?;
        match chan.waiters.iter_mut().find(|w| w.id == id) {
            Some(w) => refresh(&mut w.wake),
            None => chan.waiters.push_back(Waiter { id, wake: wake() }),
        }
        Ok(())
    }

    /// Withdraws waiter `id` from `key`. If it had already been woken for a message it did not
    /// take (it timed out, was closed or was cancelled), the wake-up passes to the next waiter
    /// so no message is left behind while someone waits.
    pub(crate) fn deregister(&mut self, key: &Key<'_>, id: u64) -> Option<Wake> {
        let chan = self.chan_mut(key)?;
        if let Some(i) = chan.waiters.iter().position(|w| w.id == id) {
            chan.waiters.remove(i);
            None
        } else if !chan.items.is_empty() {
            chan.waiters.pop_front().map(|w| w.wake)
        } else {
            None
        }
    }

    /// Registers sender `id` to be woken when `key` has room, or refreshes how it is woken.
    /// Called under the same lock as the push that found the channel full, so no room made
    /// after it goes unnoticed.
    pub(crate) fn wait_for_room(&mut self, key: &Key<'_>, id: u64, wake: impl FnOnce() -> Wake) {
        let Some(chan) = self.chan_mut(key) else {
            return;
        };
        match chan.senders.iter_mut().find(|w| w.id == id) {
            Some(w) => w.wake = wake(),
            None => chan.senders.push_back(Waiter { id, wake: wake() }),
        }
    }

    /// Withdraws sender `id` from `key`. If it had been woken for room it did not use (it
    /// timed out or was cancelled), the wake-up passes to the next waiting sender.
    pub(crate) fn stop_waiting_for_room(&mut self, key: &Key<'_>, id: u64) -> Option<Wake> {
        let chan = self.chan_mut(key)?;
        if let Some(i) = chan.senders.iter().position(|w| w.id == id) {
            chan.senders.remove(i);
            None
        } else if chan.items.len() < chan.capacity {
            chan.senders.pop_front().map(|w| w.wake)
        } else {
            None
        }
    }

    pub(crate) fn add_to(&self, snap: &mut MetricsSnapshot) {
        let s = &self.stats;
        snap.sent += s.sent;
        snap.received += s.received;
        snap.rejected_full += s.rejected_full;
        snap.expired += s.expired;
        snap.flushed += s.flushed;
        snap.group_deliveries += s.group_deliveries;
        snap.group_skipped_full += s.group_skipped_full;
        snap.queued_messages += s.queued;
        // Idle channels wait in the table for the next sweep; they do not count.
        snap.channels += self.channels.iter().filter(|c| !c.is_idle()).count() as u64;
    }
}
