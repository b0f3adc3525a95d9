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

use std::collections::VecDeque;
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

/// A channel receivers here wait on.
#[derive(Default)]
pub(super) struct Watch {
    /// How many receivers wait for a message that is not in the local buffer yet. A receiver
    /// leaves this count *before* it takes a message from the local buffer, so waiting
    /// receivers less queued messages never counts one that is about to be served: a take
    /// never fetches for a receiver that has its message.
    waiters: AtomicUsize,
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
    /// Whether this receiver is counted among the waiters.
    counted: bool,
}

impl Watch {
    /// Wakes every receiver waiting on this watch (they look again).
    pub(super) fn wake_receivers(&self) {
        self.delivered.notify_waiters();
    }
}

impl Waiting {
    fn leave(&mut self) {
        if self.counted {
            self.counted = false;
            self.watch.waiters.fetch_sub(1, Ordering::AcqRel);
            self.watch.poke.notify_one();
        }
    }

    fn rejoin(&mut self) {
        if !self.counted {
            self.counted = true;
            self.watch.waiters.fetch_add(1, Ordering::AcqRel);
            self.watch.poke.notify_one();
        }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.leave();
    }
}

/// The most messages read ahead of a take (from wake-ups or the server) held by a watch.
const MAX_AHEAD: usize = 4 * MAX_BATCH;

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
    /// A purge that never answered (it may still be applied, late): the sequence number it
    /// purged through, and how many messages of its batch no later take has delivered yet.
    /// Takes read from the subject's front until one of their purges, answered, reaches past
    /// it: what of the batch is still undelivered then was removed by it, and is counted lost.
    doubt: Option<(u64, u64)>,
    /// The sequence number the last answered purge went through (0 before any): where
    /// `ahead` starts when it is empty.
    purged_through: u64,
}

impl Reading {
    /// Adds the message a wake-up copies to `ahead` (the messages known to follow, one after
    /// another, those taken) when it is the next one: the message stored on its subject just
    /// before it is the last one in `ahead`, or, with `ahead` empty, the last one purged or
    /// none at all. A take then needs no read: its purge is the one round trip. A wake-up that
    /// does not fit (one lost, or one for a message read already) is left out; reads from the
    /// server fill the gap.
    fn chain(&mut self, wake: &async_nats::Message, subject: &str, stream: &str) {
        let Some((sequence, before)) = announced(wake, subject, stream) else {
            return;
        };
        let fits = match self.ahead.back() {
            Some(last) => before == last.sequence,
            None => {
                sequence > self.purged_through && (before == 0 || before == self.purged_through)
            }
        };
        if !fits || self.ahead.len() >= MAX_AHEAD {
            return;
        }
        let headers = wake.headers.clone().unwrap_or_default();
        let time = headers
            .get(async_nats::header::NATS_TIME_STAMP)
            .and_then(|t| {
                time::OffsetDateTime::parse(
                    t.as_str(),
                    &time::format_description::well_known::Rfc3339,
                )
                .ok()
            })
            .unwrap_or_else(time::OffsetDateTime::now_utc);
        self.ahead.push_back(StreamMessage {
            subject: subject.into(),
            sequence,
            headers,
            payload: wake.payload.clone(),
            time,
        });
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
    /// Starts waiting on `channel`: a place on its watch, whose task is started if there is
    /// none.
    fn join(self: &Arc<Self>, channel: &str) -> Result<Waiting, BackendError> {
        let mut watches = self.watches.lock();
        if let Some(watch) = watches.get(channel) {
            watch.waiters.fetch_add(1, Ordering::AcqRel);
            watch.poke.notify_one();
            return Ok(Waiting {
                watch: watch.clone(),
                counted: true,
            });
        }
        let handle = rt::handle()?;
        let watch = Arc::new(Watch::default());
        watch.waiters.store(1, Ordering::Release);
        watches.insert(channel.to_owned(), watch.clone());
        handle.spawn(self.clone().watch(channel.to_owned(), watch.clone()));
        Ok(Waiting {
            watch,
            counted: true,
        })
    }

    /// Forgets `watch` if nobody waits on it (under the lock `join` takes, so no receiver
    /// can join a watch whose task has ended): whether it was forgotten.
    fn forget_if_idle(&self, channel: &str, watch: &Arc<Watch>) -> bool {
        let mut watches = self.watches.lock();
        if watch.waiters.load(Ordering::Acquire) > 0 {
            return false;
        }
        if watches.get(channel).is_some_and(|w| Arc::ptr_eq(w, watch)) {
            watches.remove(channel);
        }
        true
    }

    /// The task taking for the receivers of `channel`.
    async fn watch(self: Arc<Self>, channel: String, watch: Arc<Watch>) {
        let capacity = self.config.layer.capacity_for(&channel);
        let wake_subject = subjects::wake_subject(&self.config.prefix, capacity, &channel);
        let subject = subjects::channel_subject(&self.config.prefix, capacity, &channel);
        let stream_name = self.place(&channel).0.cached_info().config.name.clone();
        let stream_name = stream_name.as_str();
        let mut wake = self.client.subscribe(wake_subject).await.ok();
        let mut reading = Reading::default();
        let mut reconnects = self.counters.reconnects.load(Ordering::Acquire);
        let mut pause = RETRY_MIN;
        let mut idle_since = None;
        loop {
            if self.is_closed() {
                self.forget_if_idle(&channel, &watch);
                self.settle(&mut reading);
                return;
            }
            let waiting = watch.waiters.load(Ordering::Acquire);
            let linger = if waiting == 0 {
                let since = *idle_since.get_or_insert_with(Instant::now);
                let left = LINGER.saturating_sub(since.elapsed());
                if left.is_zero() && self.forget_if_idle(&channel, &watch) {
                    self.settle(&mut reading);
                    return;
                }
                left.max(Duration::from_millis(1))
            } else {
                idle_since = None;
                LOOK_AGAIN
            };
            let changed = self.changed.notified();
            // After a reconnect (a server restarted, say), what was known ahead is forgotten: a
            // server that lost its last writes in a crash gives their sequence numbers to new
            // messages, and a copy read or woken before it would stand for another message.
            let now_reconnects = self.counters.reconnects.load(Ordering::Acquire);
            if now_reconnects != reconnects {
                reconnects = now_reconnects;
                reading.ahead.clear();
            }
            // What has rung so far is answered by this take; the copies that follow what it
            // knows spare it reading them.
            if let Some(subscription) = wake.as_mut() {
                while let Some(Some(rung)) = subscription.next().now_or_never() {
                    reading.chain(&rung, &subject, stream_name);
                }
            }
            let want = self.wanted(&channel, waiting);
            let wait = if want == 0 {
                linger
            } else {
                watch.taking.store(true, Ordering::Release);
                let taken = self.take(&channel, want, &mut reading).await;
                watch.taking.store(false, Ordering::Release);
                if taken.as_ref().is_ok_and(|t| t.delivered > 0) {
                    watch.delivered.notify_waiters();
                }
                match taken {
                    Ok(t) if t.delivered > 0 || t.more => {
                        pause = RETRY_MIN;
                        continue;
                    }
                    Ok(_) => {
                        pause = RETRY_MIN;
                        LOOK_AGAIN
                    }
                    Err(e) => {
                        self.backend_error(e);
                        pause = (pause * 2).min(RETRY_MAX);
                        pause
                    }
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
                reading.chain(&rung, &subject, stream_name);
            }
        }
    }

    /// How many messages a take for `channel` should fetch with `waiting` receivers here: one
    /// for each that the local buffer cannot serve, and, while any waits, the prefetch topped
    /// up once the local buffer holds less than half of it; as far as the buffer has room.
    ///
    /// A process-specific channel is received only by the process that made it, so messages
    /// taken ahead for it wait for nobody else: it is taken in batches of up to
    /// [`PROCESS_BATCH`] whatever the prefetch.
    fn wanted(&self, channel: &str, waiting: usize) -> usize {
        let queued = self.local.queued_len(channel);
        let prefetch = if crate::name::is_process_specific(channel) {
            self.config.receive_prefetch.max(PROCESS_BATCH)
        } else {
            self.config.receive_prefetch
        };
        let top_up = if waiting > 0 && queued.saturating_mul(2) < prefetch {
            prefetch - queued
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
            reading.ahead.clear();
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
        while !known && batch.len() < reads {
            let from = batch.last().map_or(0, |m: &StreamMessage| m.sequence + 1);
            let count = batch.len();
            let read = async {
                if batched {
                    self.read_many(stream, &subject, from, want - count).await
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
                    batch.extend(found?);
                    answered = true;
                }
                Err(_) => break,
            }
            if batch.len() == count {
                break;
            }
        }
        let ahead = &mut reading.ahead;
        let Some(last) = batch.last().map(|m| m.sequence) else {
            if answered {
                // Read from the front and found empty: the purge in doubt (if any) removed
                // what no take delivered.
                self.settle(reading);
            }
            return Ok(Taken::default());
        };
        let read_next = !known && ahead.is_empty();
        let read_ahead = async {
            if !read_next {
                Vec::new()
            } else if batched {
                self.read_many(stream, &subject, last + 1, want)
                    .await
                    .unwrap_or_default()
            } else {
                self.read_from(stream, &subject, last + 1)
                    .await
                    .ok()
                    .flatten()
                    .into_iter()
                    .collect()
            }
        };
        let (removed, next) = tokio::join!(
            self.purge_once_only(stream, &subject, last, deadline),
            async {
                tokio::time::timeout_at(deadline, read_ahead)
                    .await
                    .unwrap_or_default()
            }
        );
        ahead.extend(next);
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
        if removed > batch.len() as u64 {
            // More removed than were read: the batch was not every message up to its last
            // (a wake-up that lied about what came before it). Which of them were these is
            // unknown: all are counted lost, none delivered, and what was read ahead is
            // forgotten.
            Counters::add(&self.counters.lost, removed);
            ahead.clear();
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
            if self.deliver(channel, &found) {
                taken.delivered += 1;
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
