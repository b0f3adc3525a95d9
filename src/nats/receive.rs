//! Receiving: taking messages from the server in batches, and watching the channels that
//! receivers here wait on.
//!
//! # Why a take gives each message to one receiver
//!
//! A take reads messages of its channel's subject in order (every message from a sequence
//! number on, none skipped) and then purges the subject up to the last one read. The server
//! (on a cluster, the stream's leader, through the replicated log, once) removes every message
//! of the subject up to there that is still stored, and answers how many. Messages only ever
//! leave a subject from its front: by takes like this one, which remove everything up to a
//! point, and by the stream's age limit, which removes the oldest first. So the messages a
//! purge removes are the *last* ones the take read, as many as the answer says: those are this
//! receiver's, and no other purge can have removed them. A purge whose answer is lost is asked
//! again; what the lost one may have removed is counted lost, never delivered twice. A purge
//! that never answers may be applied late: its batch stays in doubt (see [`Reading`]) until a
//! later purge has answered past it, and what of it no take delivered is counted lost then.
//!
//! # Watching
//!
//! While receivers here wait on a channel, one task takes for all of them: as many messages
//! as they wait for (one purge for the lot), then waits for a wake-up (the stream republishes
//! each message it stores), for another receiver, or for a reconnect. A wake-up's copy that
//! continues what the task has read (the message before it on the subject is the last one
//! read) is kept in place of a read, so a take of it is the purge alone. The task and its one
//! subscription end when the last receiver leaves, however it leaves (a message, a timeout, or
//! its future dropped), so a storm of cancelled receives leaves nothing behind.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::message::StreamMessage;
use futures_util::{FutureExt as _, StreamExt as _};
use tokio::sync::Notify;

use super::{Inner, life_left, rt, subjects};
use crate::error::{BackendError, ReceiveError, SendError, TryReceiveError};
use crate::layer::ChannelLayer as _;
use crate::message::Message;
use crate::metrics::Counters;
use crate::name::validate_channel;

/// How long a watching task goes without a wake-up before it looks at its channel anyway
/// (a wake-up lost in a reconnect, say).
const LOOK_AGAIN: Duration = Duration::from_secs(2);
/// How long a channel stays watched after its last receiver left: a receiver that comes back
/// within it (one receiving in a loop) finds the task, its subscription and what it read
/// ahead still there.
const LINGER: Duration = Duration::from_millis(250);
/// How long a receive whose deadline has passed waits for a take already under way.
const TAKE_GRACE: Duration = Duration::from_millis(50);
/// The most messages one take reads and purges.
const MAX_BATCH: usize = 256;
/// The most messages taken ahead for the receivers of a process-specific channel: enough for
/// a take to cost little per message, few enough that a purge applied without its answer (a
/// stream leader lost mid-take) loses no more.
const PROCESS_BATCH: usize = 64;
/// The most reads of one message each a take makes on a server without batched reads.
const SINGLE_READS: usize = 4;
/// The first and the longest pause of a watching task after a failed take.
const RETRY_MIN: Duration = Duration::from_millis(20);
const RETRY_MAX: Duration = Duration::from_millis(500);

/// What a watch takes for.
#[derive(Clone)]
enum Watched {
    /// One channel.
    Channel(String),
    /// Every process-specific channel this layer made with one `new_channel` prefix (and so
    /// one non-local part, `process`, with its `!`) whose capacity is `capacity`: their wake
    /// subjects share one filter, so one subscription and one task serve all of them, however
    /// many reply channels a process goes through.
    Process { process: String, capacity: usize },
}

/// Where a task's wake-ups come from and what they may name.
struct Wakes {
    /// What the wake subjects of its stream start with.
    head: String,
    /// The stream's name, which a wake-up must carry.
    stream: String,
    capacity: usize,
    watched: Watched,
    /// Whether the task's subscription is on.
    subscribed: bool,
}

/// Channels receivers here wait on: one, or a process's (see [`Watched`]).
#[derive(Default)]
pub(super) struct Watch {
    /// How many receivers wait for a message that is not in the local buffer yet. A receiver
    /// leaves this count *before* it takes a message from the local buffer, so waiting
    /// receivers less queued messages never counts one that is about to be served: a take
    /// never fetches for a receiver that has its message.
    waiters: AtomicUsize,
    /// The same, per channel (only channels with a receiver waiting are in it).
    waiting_on: parking_lot::Mutex<HashMap<String, usize>>,
    /// A receiver came or left: the task looks again, or ends.
    poke: Notify,
    /// The task put messages in the local buffer (or the layer closed).
    delivered: Notify,
    /// Set while the task takes: a receive whose deadline passes meanwhile waits briefly for
    /// the outcome rather than leave a message it caused to be taken in the local buffer.
    taking: AtomicBool,
}

/// One receiver's place among a [`Watch`]'s waiters; leaving it (dropped) tells the task.
struct Waiting {
    watch: Arc<Watch>,
    channel: String,
    /// Whether this receiver is counted among the waiters.
    counted: bool,
}

impl Watch {
    /// Wakes every receiver waiting on this watch (they look again).
    pub(super) fn wake_receivers(&self) {
        self.delivered.notify_waiters();
    }

    fn count_in(&self, channel: &str) {
        *self
            .waiting_on
            .lock()
            .entry(channel.to_owned())
            .or_default() += 1;
        self.waiters.fetch_add(1, Ordering::AcqRel);
        self.poke.notify_one();
    }

    fn count_out(&self, channel: &str) {
        {
            let mut waiting_on = self.waiting_on.lock();
            if let Some(n) = waiting_on.get_mut(channel) {
                *n -= 1;
                if *n == 0 {
                    waiting_on.remove(channel);
                }
            }
        }
        self.waiters.fetch_sub(1, Ordering::AcqRel);
        self.poke.notify_one();
    }

    /// The channels receivers wait on now, with how many wait on each.
    fn waited(&self) -> Vec<(String, usize)> {
        let waiting_on = self.waiting_on.lock();
        waiting_on.iter().map(|(c, n)| (c.clone(), *n)).collect()
    }
}

impl Waiting {
    fn leave(&mut self) {
        if self.counted {
            self.counted = false;
            self.watch.count_out(&self.channel);
        }
    }

    fn rejoin(&mut self) {
        if !self.counted {
            self.counted = true;
            self.watch.count_in(&self.channel);
        }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.leave();
    }
}

/// The most messages read ahead of a take (from wake-ups or the server) held for a channel.
const MAX_AHEAD: usize = 4 * MAX_BATCH;
/// The most messages a task holds from wake-ups, over all the channels it watches.
const MAX_KNOWN: usize = 4 * MAX_AHEAD;
/// The most takes a task runs at once (on different channels of a process).
const MAX_TAKES: usize = 64;
/// How long after a receiver waited on one of a process's channels messages known for it
/// are taken while that process's receivers wait on others.
const RECENT: Duration = Duration::from_secs(1);

/// What a wake-up says of the message it copies: its sequence number and that of the message
/// stored on the same subject just before it (0 if none), if it is a republish of a message of
/// `subject` in `stream`.
fn announced(wake: &async_nats::Message, subject: &str, stream: &str) -> Option<(u64, u64)> {
    let headers = wake.headers.as_ref()?;
    let value = |name: async_nats::header::HeaderName| headers.get(name).map(|v| v.as_str());
    if value(async_nats::header::NATS_SUBJECT)? != subject
        || value(async_nats::header::NATS_STREAM)? != stream
    {
        return None;
    }
    let sequence = value(async_nats::header::NATS_SEQUENCE)?.parse().ok()?;
    let before = value(async_nats::header::NATS_LAST_SEQUENCE)?
        .parse()
        .ok()?;
    Some((sequence, before))
}

/// What a taker knows of its channel from one take to the next.
#[derive(Default)]
struct Reading {
    /// Messages known to follow, one after another, the last one taken.
    ahead: VecDeque<StreamMessage>,
    /// Whether every message stored after those known (in `ahead`, or purged) is sure to be
    /// announced by a wake-up: a read found nothing more while the task's subscription was
    /// on. A task then waits for wake-ups instead of reading again each time a receiver comes.
    /// Forgotten when a wake-up shows a gap, after a reconnect, and after two seconds without
    /// a wake-up while receivers wait.
    caught_up: bool,
    /// Whether wake-ups reach this reading (it belongs to a task whose subscription is on).
    subscribed: bool,
    /// A purge that never answered (it may still be applied, late): the sequence number it
    /// purged through, and how many messages of its batch no later take has delivered yet.
    /// Takes read from the subject's front until one of their purges, answered, reaches past
    /// it: what of the batch is still undelivered then was removed by it, and is counted lost.
    doubt: Option<(u64, u64)>,
    /// The sequence number the last answered purge went through (0 before any): where
    /// `ahead` starts when it is empty.
    purged_through: u64,
    /// Copies that came before what they follow was known (a take reading its way through a
    /// backlog that was stored before the task subscribed, one message a read before 2.11),
    /// by the sequence number of the message stored before each: once what is known reaches
    /// one, it joins `ahead`, so the reads end where the wake-ups begin.
    aside: BTreeMap<u64, StreamMessage>,
    /// The sequence number and store time of the last message this reading delivered.
    last_delivered: Option<(u64, time::OffsetDateTime)>,
    /// [`Reading::last_delivered`] as it was at the last reconnect: a server killed before it
    /// wrote down a purge it had answered brings the purged messages back when it restarts,
    /// and a message at or before that point, stored no later than it, was delivered already.
    /// (New messages that take over the sequence numbers of writes the server lost are
    /// stored after the restart, so they are not mistaken for them.)
    delivered_before_reconnect: Option<(u64, time::OffsetDateTime)>,
}

impl Reading {
    /// A reading of a watching task: with `subscribed`, wake-ups reach it.
    fn watched(subscribed: bool) -> Reading {
        Reading {
            subscribed,
            ..Reading::default()
        }
    }

    /// Forgets what is known ahead, and that wake-ups announce everything after it.
    fn forget_ahead(&mut self) {
        self.ahead.clear();
        self.aside.clear();
        self.caught_up = false;
    }

    /// Forgets what was known before a reconnect, where the last purge went included: a
    /// server that restarted having lost its last writes numbers new messages from where its
    /// log ends, which may be before that purge, and their wake-ups must still fit.
    fn reconnected(&mut self) {
        self.forget_ahead();
        self.purged_through = 0;
        if self.last_delivered.is_some() {
            self.delivered_before_reconnect = self.last_delivered;
        }
    }

    /// Whether `found` is a message delivered before the last reconnect that the server
    /// brought back (see [`Reading::delivered_before_reconnect`]).
    fn delivered_already(&self, found: &StreamMessage) -> bool {
        self.delivered_before_reconnect
            .is_some_and(|(sequence, time)| found.sequence <= sequence && found.time <= time)
    }

    /// How many copies this reading holds.
    fn held(&self) -> usize {
        self.ahead.len() + self.aside.len()
    }

    /// The sequence number of the last message known: the last one ahead, or the last purged.
    fn known_through(&self) -> u64 {
        self.ahead
            .back()
            .map_or(self.purged_through, |m| m.sequence)
    }

    /// Moves to `ahead` the copies set aside that now follow what is known, and drops those
    /// that follow a message older than it (known already).
    fn join_aside(&mut self) {
        loop {
            let through = self.known_through();
            while self
                .aside
                .first_key_value()
                .is_some_and(|(before, _)| *before < through)
            {
                self.aside.pop_first();
            }
            match self.aside.remove(&through) {
                Some(next) if self.ahead.len() < MAX_AHEAD => self.ahead.push_back(next),
                _ => return,
            }
        }
    }

    /// Whether a take can find anything without a wake-up first.
    fn worth_a_take(&self) -> bool {
        !self.ahead.is_empty() || self.doubt.is_some() || !self.caught_up
    }

    /// Whether this reading holds nothing that a fresh one would not.
    fn idle(&self) -> bool {
        self.ahead.is_empty() && self.aside.is_empty() && self.doubt.is_none()
    }

    /// Adds the message a wake-up copies to `ahead` (the messages known to follow, one after
    /// another, those taken) when it is the next one: the message stored on its subject just
    /// before it is the last one in `ahead`, or, with `ahead` empty, the last one purged or
    /// none at all. A take then needs no read: its purge is the one round trip. A wake-up that
    /// does not fit (one lost, or one for a message read already) is left out; reads from the
    /// server fill the gap.
    /// Whether the copy was kept.
    fn chain(&mut self, wake: &async_nats::Message, subject: &str, stream: &str) -> bool {
        let Some((sequence, before)) = announced(wake, subject, stream) else {
            return false;
        };
        let known = self.known_through();
        let fits = match self.ahead.back() {
            Some(last) => before == last.sequence,
            None => {
                sequence > self.purged_through && (before == 0 || before == self.purged_through)
            }
        };
        if !fits || self.ahead.len() >= MAX_AHEAD {
            if sequence > known {
                // A message after those known that does not follow them: one in between went
                // unannounced (or this one is left out), so reads must fill the gap. The copy
                // waits aside until they have.
                self.caught_up = false;
                if before > known && self.aside.len() < MAX_KNOWN {
                    self.aside.insert(before, copy_of(wake, subject, sequence));
                    return true;
                }
            }
            return false;
        }
        self.ahead.push_back(copy_of(wake, subject, sequence));
        self.join_aside();
        true
    }
}

/// The stored message a wake-up copies, as a read would give it.
fn copy_of(wake: &async_nats::Message, subject: &str, sequence: u64) -> StreamMessage {
    let headers = wake.headers.clone().unwrap_or_default();
    let time = headers
        .get(async_nats::header::NATS_TIME_STAMP)
        .and_then(|t| {
            time::OffsetDateTime::parse(t.as_str(), &time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(time::OffsetDateTime::now_utc);
    StreamMessage {
        subject: subject.into(),
        sequence,
        headers,
        payload: wake.payload.clone(),
        time,
    }
}

/// What a take did.
#[derive(Default)]
struct Taken {
    /// Messages handed to the local buffer.
    delivered: usize,
    /// Messages removed without delivery (expired, undecodable) or read but another
    /// receiver's: more may be there to take at once.
    more: bool,
}

impl Inner {
    /// What watches `channel` here: its key among the watches, and what it takes for. A
    /// process-specific channel this layer made is watched with the others of its `new_channel`
    /// prefix; any other channel alone.
    fn watched(&self, channel: &str) -> (String, Watched) {
        let process = crate::name::non_local_name(channel);
        let own = process.strip_suffix('!').is_some_and(|p| {
            p.strip_suffix(self.client_prefix.as_str())
                .is_some_and(|head| head.is_empty() || head.ends_with('.'))
        });
        if crate::name::is_process_specific(channel) && own {
            let capacity = self.config.layer.capacity_for(channel);
            // `*` is in no name, so this key is no channel's.
            (
                format!("{process}*{capacity}"),
                Watched::Process {
                    process: process.to_owned(),
                    capacity,
                },
            )
        } else {
            (channel.to_owned(), Watched::Channel(channel.to_owned()))
        }
    }

    /// Starts waiting on `channel`: a place on its watch, whose task is started if there is
    /// none.
    fn join(self: &Arc<Self>, channel: &str) -> Result<Waiting, BackendError> {
        let (key, watched) = self.watched(channel);
        let mut watches = self.watches.lock();
        if let Some(watch) = watches.get(&key) {
            watch.count_in(channel);
            return Ok(Waiting {
                watch: watch.clone(),
                channel: channel.to_owned(),
                counted: true,
            });
        }
        let handle = rt::handle()?;
        let watch = Arc::new(Watch::default());
        watch.count_in(channel);
        watches.insert(key.clone(), watch.clone());
        handle.spawn(self.clone().watch(key, watched, watch.clone()));
        Ok(Waiting {
            watch,
            channel: channel.to_owned(),
            counted: true,
        })
    }

    /// Forgets `watch` if nobody waits on it (under the lock `join` takes, so no receiver
    /// can join a watch whose task has ended): whether it was forgotten.
    fn forget_if_idle(&self, key: &str, watch: &Arc<Watch>) -> bool {
        let mut watches = self.watches.lock();
        if watch.waiters.load(Ordering::Acquire) > 0 {
            return false;
        }
        if watches.get(key).is_some_and(|w| Arc::ptr_eq(w, watch)) {
            watches.remove(key);
        }
        true
    }

    /// The task taking for the receivers of what `watched` names.
    async fn watch(self: Arc<Self>, key: String, watched: Watched, watch: Arc<Watch>) {
        let prefix = self.config.prefix.as_str();
        let (capacity, wake_filter) = match &watched {
            Watched::Channel(channel) => {
                let capacity = self.config.layer.capacity_for(channel);
                (capacity, subjects::wake_subject(prefix, capacity, channel))
            }
            Watched::Process { process, capacity } => (
                *capacity,
                subjects::process_wake_subjects(prefix, *capacity, process),
            ),
        };
        let mut wake = self.client.subscribe(wake_filter).await.ok();
        let subscribed = wake.is_some();
        let wakes = Wakes {
            head: subjects::wake_subject_head(prefix, capacity),
            stream: self.stream_of(capacity).cached_info().config.name.clone(),
            capacity,
            watched: watched.clone(),
            subscribed,
        };
        let mut readings: HashMap<String, Reading> = HashMap::new();
        // When a receiver last waited on each channel, for the last [`RECENT`].
        let mut recent: HashMap<String, Instant> = HashMap::new();
        let mut reconnects = self.counters.reconnects.load(Ordering::Acquire);
        let mut pause = RETRY_MIN;
        let mut idle_since = None;
        // When a wake-up last came or a take last found something: receivers that wait
        // [`LOOK_AGAIN`] past it make the next takes read, whatever else wakes the task
        // meanwhile (receivers coming and going on short timeouts, say). A server restarting
        // can answer a read with nothing before it has loaded its streams, and a wake-up
        // missed must not leave a receiver waiting for ever.
        let mut heard = Instant::now();
        loop {
            if self.is_closed() {
                self.forget_if_idle(&key, &watch);
                self.settle_all(&mut readings);
                return;
            }
            let waiting = watch.waiters.load(Ordering::Acquire);
            let linger = if waiting == 0 {
                let since = *idle_since.get_or_insert_with(Instant::now);
                let left = LINGER.saturating_sub(since.elapsed());
                if left.is_zero() && self.forget_if_idle(&key, &watch) {
                    self.settle_all(&mut readings);
                    return;
                }
                left.max(Duration::from_millis(1))
            } else {
                idle_since = None;
                LOOK_AGAIN
            };
            if waiting == 0 {
                heard = Instant::now();
            } else if heard.elapsed() >= LOOK_AGAIN {
                readings.values_mut().for_each(|r| r.caught_up = false);
                heard = Instant::now();
            }
            let changed = self.changed.notified();
            // After a reconnect (a server restarted, say), what was known ahead is forgotten: a
            // server that lost its last writes in a crash gives their sequence numbers to new
            // messages, and a copy read or woken before it would stand for another message.
            let now_reconnects = self.counters.reconnects.load(Ordering::Acquire);
            if now_reconnects != reconnects {
                reconnects = now_reconnects;
                // The wake-ups still queued came before the reconnect: they may copy messages
                // the server has lost since, whose sequence numbers new messages now carry.
                if let Some(subscription) = wake.as_mut() {
                    while let Some(Some(_)) = subscription.next().now_or_never() {}
                }
                readings.values_mut().for_each(Reading::reconnected);
            }
            // What has rung so far is answered by this round of takes; the copies that follow
            // what it knows spare it reading them.
            let mut known: usize = readings.values().map(Reading::held).sum();
            if let Some(subscription) = wake.as_mut() {
                while let Some(Some(rung)) = subscription.next().now_or_never() {
                    heard = Instant::now();
                    self.route(&rung, &wakes, &watch, &recent, &mut readings, &mut known);
                }
            }
            let round = if waiting == 0 {
                Vec::new()
            } else {
                self.round(&watched, &watch, &mut readings, &mut recent, subscribed)
            };
            let wait = if round.is_empty() {
                linger
            } else {
                watch.taking.store(true, Ordering::Release);
                let this = &*self;
                let taken = futures_util::future::join_all(round.into_iter().map(
                    |(channel, want, mut reading)| async move {
                        let taken = this.take(&channel, want, &mut reading).await;
                        (channel, reading, taken)
                    },
                ))
                .await;
                watch.taking.store(false, Ordering::Release);
                let (mut delivered, mut again, mut failed) = (false, false, None);
                for (channel, reading, taken) in taken {
                    match taken {
                        Ok(t) => {
                            delivered |= t.delivered > 0;
                            if t.delivered > 0 {
                                heard = Instant::now();
                            }
                            again |= t.delivered > 0 || t.more;
                        }
                        Err(e) => failed = Some(e),
                    }
                    readings.insert(channel, reading);
                }
                if delivered {
                    watch.delivered.notify_waiters();
                }
                self.forget_unwatched(&watched, &watch, &mut readings, &recent, false);
                if let Some(e) = failed {
                    self.backend_error(e);
                    pause = (pause * 2).min(RETRY_MAX);
                    pause
                } else if again {
                    pause = RETRY_MIN;
                    continue;
                } else {
                    pause = RETRY_MIN;
                    LOOK_AGAIN
                }
            };
            let rung = async {
                match wake.as_mut() {
                    Some(subscription) => match subscription.next().await {
                        Some(wake) => wake,
                        None => std::future::pending().await,
                    },
                    None => std::future::pending().await,
                }
            };
            let rung = tokio::select! {
                () = watch.poke.notified() => None,
                () = changed => None,
                wake = rung => Some(wake),
                () = tokio::time::sleep(wait) => None,
            };
            if let Some(rung) = rung {
                let mut known = readings.values().map(Reading::held).sum();
                heard = Instant::now();
                self.route(&rung, &wakes, &watch, &recent, &mut readings, &mut known);
            }
        }
    }

    /// Drops what a process's task knows of channels that no receiver waits on: of all of
    /// them not waited on within [`RECENT`] when `crowded` (the task holds [`MAX_KNOWN`]
    /// copies, so the messages of channels nobody receives any more give way), otherwise of
    /// those that hold nothing (a process goes through reply channels). What is dropped stays
    /// on the server, where a fresh reading finds it; a purge in doubt among them is settled
    /// as lost.
    fn forget_unwatched(
        &self,
        watched: &Watched,
        watch: &Watch,
        readings: &mut HashMap<String, Reading>,
        recent: &HashMap<String, Instant>,
        crowded: bool,
    ) {
        if !matches!(watched, Watched::Process { .. }) {
            return;
        }
        let waited: HashSet<String> = watch.waited().into_iter().map(|(c, _)| c).collect();
        readings.retain(|channel, reading| {
            let keep = waited.contains(channel)
                || if crowded {
                    recent.contains_key(channel)
                } else {
                    !reading.idle()
                };
            if !keep {
                self.settle(reading);
            }
            keep
        });
    }

    /// Keeps the copy a wake-up brings in the reading of its channel, if it is one of those
    /// this task watches, within [`MAX_KNOWN`] copies in all.
    fn route(
        &self,
        rung: &async_nats::Message,
        wakes: &Wakes,
        watch: &Watch,
        recent: &HashMap<String, Instant>,
        readings: &mut HashMap<String, Reading>,
        known: &mut usize,
    ) {
        let Some(channel) = rung
            .subject
            .as_str()
            .strip_prefix(wakes.head.as_str())
            .and_then(subjects::channel_of_tail)
        else {
            return;
        };
        let ours = match &wakes.watched {
            Watched::Channel(watched) => *watched == channel,
            Watched::Process { process, capacity } => {
                crate::name::non_local_name(&channel) == process
                    && self.config.layer.capacity_for(&channel) == *capacity
            }
        };
        if !ours {
            return;
        }
        let subject = subjects::channel_subject(&self.config.prefix, wakes.capacity, &channel);
        if *known >= MAX_KNOWN {
            self.forget_unwatched(&wakes.watched, watch, readings, recent, true);
            *known = readings.values().map(Reading::held).sum();
        }
        if *known >= MAX_KNOWN {
            // Left out: reads fill the gap when a receiver asks.
            if let Some(reading) = readings.get_mut(&channel) {
                reading.caught_up = false;
            }
            return;
        }
        let reading = readings
            .entry(channel)
            .or_insert_with(|| Reading::watched(wakes.subscribed));
        if reading.chain(rung, &subject, &wakes.stream) {
            *known += 1;
        }
    }

    /// The takes of one round: for each channel a receiver waits on, as many messages as
    /// [`Inner::wanted`] says, unless nothing can be there (its reading is caught up and knows
    /// nothing ahead); and for a process's other channels that a receiver waited on within
    /// [`RECENT`] (one receiver going round them, say), the messages known ahead. A channel
    /// nobody receives keeps its messages on the server, where its capacity holds its
    /// senders back. At most [`MAX_TAKES`] takes, those for waiting receivers first, each
    /// with its channel's reading (taken out of `readings` until the take is done).
    fn round(
        &self,
        watched: &Watched,
        watch: &Watch,
        readings: &mut HashMap<String, Reading>,
        recent: &mut HashMap<String, Instant>,
        subscribed: bool,
    ) -> Vec<(String, usize, Reading)> {
        let mut round = Vec::new();
        let now = Instant::now();
        let waited = watch.waited();
        if matches!(watched, Watched::Process { .. }) {
            recent.retain(|_, at| now.duration_since(*at) < RECENT);
            for (channel, _) in &waited {
                recent.insert(channel.clone(), now);
            }
        }
        for (channel, waiting) in waited {
            if round.len() >= MAX_TAKES {
                return round;
            }
            let reading = readings
                .entry(channel.clone())
                .or_insert_with(|| Reading::watched(subscribed));
            if !reading.worth_a_take() {
                continue;
            }
            let want = self.wanted(&channel, waiting, reading.ahead.len());
            if want > 0 {
                let reading = readings.remove(&channel).unwrap_or_default();
                round.push((channel, want, reading));
            }
        }
        if matches!(watched, Watched::Process { .. }) {
            let known: Vec<String> = readings
                .iter()
                .filter(|(c, r)| !r.ahead.is_empty() && recent.contains_key(*c))
                .map(|(c, _)| c.clone())
                .collect();
            for channel in known {
                if round.len() >= MAX_TAKES {
                    break;
                }
                let ahead = readings.get(&channel).map_or(0, |r| r.ahead.len());
                let want = self.wanted(&channel, 0, ahead);
                if want > 0 {
                    let reading = readings.remove(&channel).unwrap_or_default();
                    round.push((channel, want, reading));
                }
            }
        }
        round
    }

    /// How many messages a take for `channel` should fetch with `waiting` receivers here and
    /// `known` messages known ahead: one for each receiver that the local buffer cannot serve,
    /// and, while any waits, the prefetch topped up once the local buffer holds less than half
    /// of it; as far as the buffer has room.
    ///
    /// A process-specific channel is received only by the process that made it, so messages
    /// taken ahead for it wait for nobody else: it is taken in batches of up to
    /// [`PROCESS_BATCH`] whatever the prefetch, and, while its process's receivers wait on
    /// others of its channels, what is known ahead of it is taken too.
    fn wanted(&self, channel: &str, waiting: usize, known: usize) -> usize {
        let queued = self.local.queued_len(channel);
        let process = crate::name::is_process_specific(channel);
        let prefetch = if process {
            self.config.receive_prefetch.max(PROCESS_BATCH)
        } else {
            self.config.receive_prefetch
        };
        let top_up = if queued.saturating_mul(2) >= prefetch {
            0
        } else if waiting > 0 {
            prefetch - queued
        } else if process {
            known.min(prefetch - queued)
        } else {
            0
        };
        let room = self
            .config
            .layer
            .capacity_for(channel)
            .saturating_sub(queued);
        (waiting.saturating_sub(queued) + top_up).min(room)
    }

    /// Takes up to `want` messages of `channel` into the local buffer, in the channel's turn.
    async fn take(
        &self,
        channel: &str,
        want: usize,
        reading: &mut Reading,
    ) -> Result<Taken, BackendError> {
        self.in_turn(channel, self.take_now(channel, want, reading))
            .await
    }

    /// Counts as lost what a purge that never answered may have removed, when nothing is left
    /// to settle it (the taker ends).
    fn settle(&self, reading: &mut Reading) {
        if let Some((_, count)) = reading.doubt.take() {
            Counters::add(&self.counters.lost, count);
        }
    }

    /// [`Inner::settle`] for each of a task's readings.
    fn settle_all(&self, readings: &mut HashMap<String, Reading>) {
        readings.values_mut().for_each(|r| self.settle(r));
    }

    /// Runs `work` (a take from `channel`) in the channel's turn.
    async fn in_turn<T>(&self, channel: &str, work: impl Future<Output = T>) -> T {
        let turn = self
            .taking
            .lock()
            .entry(channel.to_owned())
            .or_default()
            .clone();
        let outcome = {
            let _turn = turn.lock().await;
            work.await
        };
        let mut taking = self.taking.lock();
        // Two references left (the map's and this one): nobody else is taking; forget it.
        if Arc::strong_count(&turn) == 2 {
            taking.remove(channel);
        }
        outcome
    }

    /// [`Inner::take`], its turn come. `ahead` holds messages read by an earlier take of this
    /// task (the one after its last message), so a receiver that keeps receiving pays one
    /// round trip per take: the purge, with the next read beside it.
    async fn take_now(
        &self,
        channel: &str,
        want: usize,
        reading: &mut Reading,
    ) -> Result<Taken, BackendError> {
        let mut want = want;
        if reading.doubt.is_some() {
            // Read from the subject's front, to settle the doubt, one message at a time: a
            // server that lost one answer may lose the next (a leader being elected), and a
            // purge applied without an answer loses its whole batch.
            reading.forget_ahead();
            want = 1;
        }
        let ahead = &mut reading.ahead;
        let (stream, subject) = self.place(channel);
        let want = want.clamp(1, MAX_BATCH);
        // One operation timeout for the whole take: reading gets the first half, the purge
        // (and its retries) what is left, so no take outlives it.
        let started = tokio::time::Instant::now();
        let deadline = started + self.config.operation_timeout;
        let reading_by = started + self.config.operation_timeout / 2;
        let mut batch = Vec::with_capacity(want.min(16));
        while batch.len() < want {
            match ahead.pop_front() {
                Some(found) => batch.push(found),
                None => break,
            }
        }
        // Messages known to come next (from wake-ups or an earlier read) are taken as they
        // are; the server is read only when none are known, and then its next read is made
        // beside the purge.
        let known = !batch.is_empty();
        let batched = self.batched(stream);
        // Before 2.11 a read brings one message: a few are read one after another, and the
        // wake-ups bring the rest.
        let reads = if batched {
            want
        } else {
            want.min(SINGLE_READS)
        };
        let mut answered = false;
        // Whether a read found fewer messages than it asked for: none follow them yet.
        let mut exhausted = false;
        while !known && batch.len() < reads {
            let from = batch.last().map_or(0, |m: &StreamMessage| m.sequence + 1);
            let count = batch.len();
            let asked = if batched { want - count } else { 1 };
            let read = async {
                if batched {
                    self.read_many(stream, &subject, from, asked).await
                } else {
                    Ok(self
                        .read_from(stream, &subject, from)
                        .await?
                        .into_iter()
                        .collect())
                }
            };
            match tokio::time::timeout_at(reading_by, read).await {
                Ok(found) => {
                    let found = found?;
                    exhausted = found.len() < asked;
                    batch.extend(found);
                    answered = true;
                }
                Err(_) => break,
            }
            if batch.len() == count {
                break;
            }
        }
        // With the task's subscription on, what is stored after a read that found everything
        // is announced by wake-ups: no need to read again before one comes.
        let caught_up = exhausted && reading.subscribed;
        let Some(last) = batch.last().map(|m| m.sequence) else {
            if answered {
                // Read from the front and found empty: the purge in doubt (if any) removed
                // what no take delivered.
                self.settle(reading);
                reading.caught_up |= caught_up;
            }
            return Ok(Taken::default());
        };
        let read_next = !known && !caught_up && reading.ahead.is_empty();
        let subscribed = reading.subscribed;
        let read_ahead = async {
            if !read_next {
                None
            } else if batched {
                let next = self
                    .read_many(stream, &subject, last + 1, want)
                    .await
                    .ok()?;
                let all = next.len() < want;
                Some((next, all))
            } else {
                let next = self.read_from(stream, &subject, last + 1).await.ok()?;
                let all = next.is_none();
                Some((next.into_iter().collect(), all))
            }
        };
        let (removed, next) = tokio::join!(
            self.purge_once_only(stream, &subject, last, deadline),
            async {
                tokio::time::timeout_at(deadline, read_ahead)
                    .await
                    .ok()
                    .flatten()
            }
        );
        if caught_up {
            reading.caught_up = true;
        }
        if let Some((next, all)) = next {
            reading.ahead.extend(next);
            if all && subscribed {
                reading.caught_up = true;
            }
        }
        reading.join_aside();
        let (removed, unsure) = match removed {
            Ok(answer) => answer,
            Err(e) => {
                // No purge answered: whether one was applied is settled by a later take (or,
                // if none comes, the batch is counted lost). Nothing is delivered.
                reading.doubt = Some(match reading.doubt {
                    // This batch was read from the front: its messages up to the earlier
                    // doubt's end are counted there already.
                    Some((through, count)) => (
                        through.max(last),
                        count + batch.iter().filter(|m| m.sequence > through).count() as u64,
                    ),
                    None => (last, batch.len() as u64),
                });
                return Err(e);
            }
        };
        reading.purged_through = reading.purged_through.max(last);
        reading.join_aside();
        if removed > batch.len() as u64 {
            // More removed than were read: the batch was not every message up to its last
            // (a wake-up that lied about what came before it). Which of them were these is
            // unknown: all are counted lost, none delivered, and what was read ahead is
            // forgotten.
            Counters::add(&self.counters.lost, removed);
            reading.forget_ahead();
            return Ok(Taken {
                delivered: 0,
                more: true,
            });
        }
        let removed = usize::try_from(removed).unwrap_or(usize::MAX);
        if unsure {
            // A purge before the one that answered removed the rest of the batch, or other
            // receivers took it: which, is unknown. Counted lost, never delivered.
            Counters::add(&self.counters.lost, (batch.len() - removed) as u64);
        }
        let mut taken = Taken {
            delivered: 0,
            more: removed < batch.len(),
        };
        for found in batch.drain(batch.len() - removed..) {
            if let Some((through, count)) = &mut reading.doubt {
                // Taken by this purge, not by the one in doubt.
                if found.sequence <= *through {
                    *count = count.saturating_sub(1);
                }
            }
            if reading.delivered_already(&found) {
                // Taken again by this purge; its receiver had it before the server restarted.
                taken.more = true;
                continue;
            }
            if self.deliver(channel, &found) {
                taken.delivered += 1;
                reading.last_delivered = Some((found.sequence, found.time));
            } else {
                taken.more = true;
            }
        }
        if let Some((through, count)) = reading.doubt {
            if last >= through {
                // Everything up to the doubted purge's end is gone now: what of its batch no
                // take delivered, it removed.
                Counters::add(&self.counters.lost, count);
                reading.doubt = None;
            }
        }
        Ok(taken)
    }

    /// Up to `count` messages of `subject` from sequence `from` on, in one batched read.
    async fn read_many(
        &self,
        stream: &async_nats::jetstream::stream::Stream,
        subject: &str,
        from: u64,
        count: usize,
    ) -> Result<Vec<StreamMessage>, BackendError> {
        let request = serde_json::json!({
            "batch": count.clamp(1, super::api::MAX_READ),
            "next_by_subj": subject,
            "seq": from.max(1),
        });
        let found = self.read_batch(stream, request).await?.unwrap_or_default();
        // What the server sent is checked against the subject asked for all the same.
        Ok(found
            .into_iter()
            .filter(|m| m.subject.as_str() == subject && m.sequence >= from)
            .collect())
    }

    /// [`Inner::purge_through`], asked again when its answer is lost, until `deadline`: how
    /// many the answer that came says it removed (what was still there), and whether an
    /// earlier answer was lost (its purge may have removed messages, which nobody gets).
    async fn purge_once_only(
        &self,
        stream: &async_nats::jetstream::stream::Stream,
        subject: &str,
        last: u64,
        deadline: tokio::time::Instant,
    ) -> Result<(u64, bool), BackendError> {
        let mut unsure = None;
        loop {
            let attempt =
                tokio::time::timeout_at(deadline, self.purge_through(stream, subject, last));
            match attempt.await {
                Ok(Ok(removed)) => return Ok((removed, unsure.is_some())),
                Ok(Err(e)) => unsure = Some(e),
                Err(_) => {
                    unsure = Some(BackendError::new(
                        crate::error::BackendErrorKind::Timeout,
                        format!("taking messages of {subject}: no answer in time"),
                    ));
                }
            }
            if tokio::time::Instant::now() + RETRY_MIN >= deadline {
                break;
            }
            tokio::time::sleep(RETRY_MIN).await;
        }
        Err(unsure.unwrap_or_else(|| {
            BackendError::new(crate::error::BackendErrorKind::Timeout, "taking messages")
        }))
    }

    /// Hands a message this layer has taken to the receivers here: `false` when it had expired
    /// or could not be decoded (it is counted so).
    fn deliver(&self, channel: &str, found: &StreamMessage) -> bool {
        let left = life_left(found, self.config.layer.expiry);
        if left.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
            Counters::add(&self.counters.expired, 1);
            return false;
        }
        match self.codec.unpack(&found.payload, left.min(1e9)) {
            Ok(decoded) => {
                self.keep(
                    channel,
                    decoded.message,
                    Instant::now() + Duration::from_secs_f64(left.min(1e9)),
                );
                true
            }
            Err(_) => {
                Counters::add(&self.counters.undecodable, 1);
                false
            }
        }
    }

    /// Queues a taken message for the receivers here.
    fn keep(&self, channel: &str, message: Message, deadline: Instant) {
        match self.local.deliver_arrived(channel, message, deadline) {
            Ok(()) => {}
            Err(SendError::Full { .. }) => Counters::add(&self.counters.overflowed, 1),
            Err(_) => Counters::add(&self.counters.lost, 1),
        }
    }

    pub(super) async fn receive(
        self: &Arc<Self>,
        channel: &str,
        deadline: Option<Instant>,
    ) -> Result<Message, ReceiveError> {
        if self.is_closed() {
            return Err(ReceiveError::Closed);
        }
        validate_channel(channel)?;
        if let Ok(m) = self.local.try_receive(channel) {
            return Ok(m);
        }
        let mut waiting = self.join(channel)?;
        self.receive_locally(channel, deadline, &mut waiting).await
    }

    /// Waits until the local buffer holds a message for this receiver, then leaves the count of
    /// waiters and takes it. A receive whose deadline passes while a take is under way waits
    /// for that take (at most [`TAKE_GRACE`]), so the message it may bring goes to this
    /// receiver rather than wait here for the channel's next receive.
    async fn receive_locally(
        &self,
        channel: &str,
        deadline: Option<Instant>,
        waiting: &mut Waiting,
    ) -> Result<Message, ReceiveError> {
        let watch = waiting.watch.clone();
        let mut grace_until = None;
        loop {
            let delivered = watch.delivered.notified();
            let mut delivered = std::pin::pin!(delivered);
            delivered.as_mut().enable();
            if self.local.queued_len(channel) > 0 {
                waiting.leave();
                match self.local.try_receive(channel) {
                    Ok(message) => return Ok(message),
                    Err(TryReceiveError::Closed) => return Err(ReceiveError::Closed),
                    // Another receiver here took it, or it had expired: wait on.
                    Err(_) => waiting.rejoin(),
                }
                continue;
            }
            if self.is_closed() {
                return Err(ReceiveError::Closed);
            }
            let now = Instant::now();
            let until = match (deadline, grace_until) {
                (_, Some(grace)) if now >= grace || !watch.taking.load(Ordering::Acquire) => {
                    return Err(ReceiveError::Timeout);
                }
                (_, Some(grace)) => Some(grace),
                (Some(deadline), None) if now >= deadline => {
                    let grace = now + TAKE_GRACE;
                    grace_until = Some(grace);
                    if !watch.taking.load(Ordering::Acquire) {
                        return Err(ReceiveError::Timeout);
                    }
                    Some(grace)
                }
                (deadline, None) => deadline,
            };
            // While in the grace period, look again every couple of milliseconds: the take's
            // end is not announced unless it delivers.
            let until = match grace_until {
                Some(_) => until.map(|u| u.min(Instant::now() + Duration::from_millis(2))),
                None => until,
            };
            match until {
                Some(until) => {
                    let sleep = crate::runtime::sleep_until(until);
                    futures_util::future::select(delivered, std::pin::pin!(sleep)).await;
                }
                None => delivered.await,
            }
        }
    }

    pub(super) async fn try_receive(
        self: &Arc<Self>,
        channel: &str,
    ) -> Result<Message, TryReceiveError> {
        if self.is_closed() {
            return Err(TryReceiveError::Closed);
        }
        validate_channel(channel)?;
        match self.local.try_receive(channel) {
            Err(TryReceiveError::Empty) => {}
            other => return other,
        }
        let inner = self.clone();
        let from = channel.to_owned();
        // What the task takes lands in the local buffer even if this future is dropped.
        rt::run(async move {
            let mut reading = Reading::default();
            let started = Instant::now();
            let outcome = loop {
                let taken = match inner.take(&from, 1, &mut reading).await {
                    Ok(taken) => taken,
                    Err(e) => break Err(e),
                };
                // Past expired or undecodable messages, or another receiver's, to a live one,
                // within the operation timeout.
                if taken.delivered > 0
                    || !taken.more
                    || started.elapsed() >= inner.config.operation_timeout
                {
                    break Ok::<(), BackendError>(());
                }
            };
            inner.settle(&mut reading);
            outcome
        })
        .await
        .map_err(|e| TryReceiveError::Backend(self.backend_error(e)))?;
        self.local.try_receive(channel)
    }
}
