//! The in-memory store: sharded channel queues, their waiting receivers, and counters.
//!
//! Channels are spread over [`SHARDS`] shards by the hash of their *non-local* name, so every
//! channel of one process-specific prefix (`specific.abc!*`) lives in one shard, next to the
//! count of messages queued for that prefix, which is what its capacity bounds (spec sheet
//! §1.3). Each shard is one mutex; operations on different channels rarely contend.

use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::task::Waker;
use std::thread::Thread;
use std::time::Instant;

use hashbrown::HashTable;
use parking_lot::Mutex;

use crate::message::Message;
use crate::metrics::MetricsSnapshot;
use crate::name::{NameError, non_local_name};

/// The number of shards; a power of two.
pub(crate) const SHARDS: usize = 64;

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

pub(crate) struct Waiter {
    pub(crate) id: u64,
    pub(crate) wake: Wake,
}

/// One channel: its queue of `(deadline, message)` and the receivers waiting on it.
pub(crate) struct Chan {
    name: Box<str>,
    hash: u64,
    shard_hash: u64,
    capacity: usize,
    items: VecDeque<(Instant, Message)>,
    pub(crate) waiters: VecDeque<Waiter>,
}

impl Chan {
    fn new(key: &Key<'_>, capacity: usize) -> Self {
        Chan {
            name: key.name.into(),
            hash: key.hash,
            shard_hash: key.shard_hash,
            capacity,
            items: VecDeque::new(),
            waiters: VecDeque::new(),
        }
    }

    fn is_idle(&self) -> bool {
        self.items.is_empty() && self.waiters.is_empty()
    }
}

/// Messages queued under one process-specific non-local name (`prefix!`).
struct ProcessCount {
    name: Box<str>,
    hash: u64,
    queued: usize,
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

/// A channel name with its hashes computed once.
#[derive(Clone, Copy)]
pub(crate) struct Key<'a> {
    pub(crate) name: &'a str,
    /// Hash of the full name: finds the channel in its shard.
    pub(crate) hash: u64,
    /// Hash of the non-local part: picks the shard. For a plain channel it equals `hash`.
    pub(crate) shard_hash: u64,
    /// Whether the name is process-specific (has a `!`).
    pub(crate) process: bool,
}

/// Precomputed hashes of a channel, kept by group members so `group_send` hashes nothing.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Hashes {
    pub(crate) hash: u64,
    pub(crate) shard_hash: u64,
    pub(crate) process: bool,
}

impl<'a> Key<'a> {
    pub(crate) fn new<S: BuildHasher>(hasher: &S, name: &'a str) -> Self {
        let hash = hasher.hash_one(name);
        let nl = non_local_name(name);
        let process = nl.ends_with('!');
        let shard_hash = if process { hasher.hash_one(nl) } else { hash };
        Key {
            name,
            hash,
            shard_hash,
            process,
        }
    }

    pub(crate) fn with_hashes(name: &'a str, h: Hashes) -> Self {
        Key {
            name,
            hash: h.hash,
            shard_hash: h.shard_hash,
            process: h.process,
        }
    }

    pub(crate) fn hashes(&self) -> Hashes {
        Hashes {
            hash: self.hash,
            shard_hash: self.shard_hash,
            process: self.process,
        }
    }

    pub(crate) fn shard(&self) -> usize {
        (self.shard_hash >> (64 - SHARDS.trailing_zeros())) as usize
    }

    fn non_local(&self) -> &'a str {
        non_local_name(self.name)
    }
}

/// Why a delivery was refused; the message comes back.
pub(crate) enum Refused {
    Full { capacity: usize, message: Message },
    InvalidName { error: NameError, message: Message },
}

#[derive(Default)]
pub(crate) struct Shard {
    channels: HashTable<Chan>,
    processes: HashTable<ProcessCount>,
    pub(crate) stats: Stats,
}

/// A shard padded to its own cache lines, so neighbouring locks do not share one.
#[repr(align(128))]
#[derive(Default)]
pub(crate) struct PaddedShard(pub(crate) Mutex<Shard>);

impl Shard {
    pub(crate) fn chan_mut(&mut self, key: &Key<'_>) -> Option<&mut Chan> {
        self.channels.find_mut(key.hash, |c| &*c.name == key.name)
    }

    fn chan_or_insert(&mut self, key: &Key<'_>, capacity: impl FnOnce() -> usize) -> &mut Chan {
        self.channels
            .entry(key.hash, |c| &*c.name == key.name, |c: &Chan| c.hash)
            .or_insert_with(|| Chan::new(key, capacity()))
            .into_mut()
    }

    /// Queues `message` on `key` unless its capacity is reached; returns a receiver to wake.
    ///
    /// `new_chan` is called only when the channel does not exist yet: it checks the name and
    /// gives the new channel's capacity. (A channel that exists was checked when it was made,
    /// so the hot path validates nothing.)
    pub(crate) fn push(
        &mut self,
        key: &Key<'_>,
        message: Message,
        now: Instant,
        deadline: Instant,
        new_chan: impl FnOnce() -> Result<usize, NameError>,
    ) -> Result<Option<Wake>, Refused> {
        let mut new_chan = Some(new_chan);
        let mut capacity = 0;
        for attempt in 0..2 {
            let Shard {
                channels,
                processes,
                stats,
            } = self;
            let chan = match channels.find_mut(key.hash, |c| &*c.name == key.name) {
                Some(chan) => chan,
                None => {
                    // The prune below may forget a channel made on the first attempt; the
                    // second attempt makes it again with the capacity already known.
                    let capacity = match new_chan.take() {
                        None => capacity,
                        Some(make) => match make() {
                            Ok(capacity) => capacity,
                            Err(error) => return Err(Refused::InvalidName { error, message }),
                        },
                    };
                    channels
                        .insert_unique(key.hash, Chan::new(key, capacity), |c| c.hash)
                        .into_mut()
                }
            };
            let process = if key.process {
                let nl = key.non_local();
                Some(
                    processes
                        .entry(key.shard_hash, |p| &*p.name == nl, |p| p.hash)
                        .or_insert_with(|| ProcessCount {
                            name: nl.into(),
                            hash: key.shard_hash,
                            queued: 0,
                        })
                        .into_mut(),
                )
            } else {
                None
            };
            let occupied = process.as_ref().map_or(chan.items.len(), |p| p.queued);
            capacity = chan.capacity;
            if occupied < capacity {
                chan.items.push_back((deadline, message));
                if let Some(p) = process {
                    p.queued += 1;
                }
                stats.queued += 1;
                return Ok(chan.waiters.pop_front().map(|w| w.wake));
            }
            if attempt == 0 {
                // Expired messages do not hold room: drop them, then look again.
                self.prune_for(key, now);
            }
        }
        Err(Refused::Full { capacity, message })
    }

    /// Takes the oldest deliverable message on `key`, dropping expired ones on the way.
    ///
    /// A channel left idle stays in the table until the next sweep, so a busy channel that
    /// empties now and then is not freed and made again each time.
    pub(crate) fn pop(&mut self, key: &Key<'_>, now: Instant) -> Option<Message> {
        let Shard {
            channels,
            processes,
            stats,
        } = self;
        let chan = channels.find_mut(key.hash, |c| &*c.name == key.name)?;
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
            if key.process {
                process_sub(processes, key.non_local(), key.shard_hash, taken);
            }
        }
        if found.is_some() {
            stats.received += 1;
        }
        found
    }

    /// Drops expired messages of `key` and, for a process-specific name, of every sibling
    /// channel under the same non-local part.
    fn prune_for(&mut self, key: &Key<'_>, now: Instant) {
        if key.process {
            let nl = key.non_local();
            self.prune_where(now, |name| name.starts_with(nl));
        } else {
            let name = key.name;
            self.prune_where(now, |n| n == name);
        }
    }

    /// Drops expired messages from the channels whose name satisfies `select`, and forgets
    /// channels left idle. Returns how many messages expired.
    pub(crate) fn prune_where(&mut self, now: Instant, select: impl Fn(&str) -> bool) -> u64 {
        let mut expired_by: Vec<(Box<str>, u64, usize)> = Vec::new();
        let mut total = 0u64;
        self.channels.retain(|chan| {
            if !select(&chan.name) {
                return true;
            }
            let before = chan.items.len();
            while chan.items.front().is_some_and(|(d, _)| *d <= now) {
                chan.items.pop_front();
            }
            let n = before - chan.items.len();
            if n > 0 {
                total += n as u64;
                if chan.name.contains('!') {
                    expired_by.push((non_local_name(&chan.name).into(), chan.shard_hash, n));
                }
            }
            !chan.is_idle()
        });
        for (nl, shard_hash, n) in expired_by {
            process_sub(&mut self.processes, &nl, shard_hash, n);
        }
        self.stats.expired += total;
        self.stats.queued -= total;
        total
    }

    /// Drops every message; returns the receivers to wake (they keep waiting afterwards).
    pub(crate) fn flush(&mut self, wake: &mut Vec<Wake>) {
        let mut dropped = 0u64;
        self.channels.retain(|chan| {
            dropped += chan.items.len() as u64;
            chan.items.clear();
            wake.extend(chan.waiters.drain(..).map(|w| w.wake));
            false
        });
        self.processes.clear();
        self.stats.flushed += dropped;
        self.stats.queued -= dropped;
    }

    /// Removes every waiter (to wake them with `Closed`).
    pub(crate) fn drain_waiters(&mut self, wake: &mut Vec<Wake>) {
        for chan in self.channels.iter_mut() {
            wake.extend(chan.waiters.drain(..).map(|w| w.wake));
        }
        self.channels.retain(|c| !c.is_idle());
    }

    /// Registers (or refreshes) waiter `id` on `key`; returns whether it was already there.
    pub(crate) fn register(
        &mut self,
        key: &Key<'_>,
        id: u64,
        wake: impl FnOnce() -> Wake,
        refresh: impl FnOnce(&mut Wake),
        capacity: impl FnOnce() -> usize,
    ) {
        let chan = self.chan_or_insert(key, capacity);
        match chan.waiters.iter_mut().find(|w| w.id == id) {
            Some(w) => refresh(&mut w.wake),
            None => chan.waiters.push_back(Waiter { id, wake: wake() }),
        }
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

/// Takes `n` messages off the count of a process-specific non-local name.
fn process_sub(processes: &mut HashTable<ProcessCount>, non_local: &str, hash: u64, n: usize) {
    if let Ok(mut e) = processes.find_entry(hash, |p| &*p.name == non_local) {
        let p = e.get_mut();
        p.queued -= n;
        if p.queued == 0 {
            e.remove();
        }
    }
}
