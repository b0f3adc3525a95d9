//! The [`ChannelLayer`] contract every backend honours, and [`ChannelLayerExt`] conveniences.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use crate::error::{LayerError, ReceiveError, SendError, TryReceiveError};
use crate::inspect::Inspection;
use crate::message::{Message, MessageError};
use crate::metrics::MetricsSnapshot;
use crate::name::NameError;
use crate::runtime::block_on;

/// A boxed, `Send` future, as the async methods of [`ChannelLayer`] return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The default prefix of [`ChannelLayer::new_channel`], as in channels_redis.
pub const DEFAULT_CHANNEL_PREFIX: &str = "specific";

/// What a backend supports, so that applications (and the conformance suite) can check at
/// start-up instead of failing later. The channel layer specification calls these
/// `extensions` ([contract §1.2](crate::contract)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub struct Capabilities {
    /// `group_add`, `group_discard` and `group_send` work.
    pub groups: bool,
    /// `flush` works.
    pub flush: bool,
    /// Any process-specific channel can be received on, not only those this layer object
    /// minted with `new_channel`.
    pub receive_any_process_channel: bool,
    /// Messages and layer state are shared between separate layer objects (and processes)
    /// pointed at the same backend.
    pub shared_between_layers: bool,
    /// The gauges of [`MetricsSnapshot`] (`queued_messages`, `channels`, `groups`) describe
    /// the whole backend, because all of its state lives in this object. A backend whose
    /// messages wait in a server reports only what it holds itself.
    pub exact_gauges: bool,
    /// [`ChannelLayer::inspect`] lists the channels, groups and members.
    pub inspect: bool,
}

/// One thing a backend may support, as [`Capabilities::has`] asks about it.
///
/// # Examples
///
/// ```
/// use channel_layer::prelude::*;
/// use channel_layer::Capability;
///
/// let layer = InMemoryLayer::default();
/// assert!(layer.capabilities().has(Capability::Groups));
/// let missing: Vec<Capability> = Capability::ALL
///     .into_iter()
///     .filter(|c| !layer.capabilities().has(*c))
///     .collect();
/// assert_eq!(missing, [Capability::SharedBetweenLayers]);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Capability {
    /// [`Capabilities::groups`].
    Groups,
    /// [`Capabilities::flush`].
    Flush,
    /// [`Capabilities::receive_any_process_channel`].
    ReceiveAnyProcessChannel,
    /// [`Capabilities::shared_between_layers`].
    SharedBetweenLayers,
    /// [`Capabilities::exact_gauges`].
    ExactGauges,
    /// [`Capabilities::inspect`].
    Inspect,
}

impl Capability {
    /// Every capability, in declaration order.
    pub const ALL: [Capability; 6] = [
        Capability::Groups,
        Capability::Flush,
        Capability::ReceiveAnyProcessChannel,
        Capability::SharedBetweenLayers,
        Capability::ExactGauges,
        Capability::Inspect,
    ];

    /// Its name, as the field of [`Capabilities`] that holds it (`"groups"`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            Capability::Groups => "groups",
            Capability::Flush => "flush",
            Capability::ReceiveAnyProcessChannel => "receive_any_process_channel",
            Capability::SharedBetweenLayers => "shared_between_layers",
            Capability::ExactGauges => "exact_gauges",
            Capability::Inspect => "inspect",
        }
    }
}

impl std::fmt::Display for Capability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Capabilities {
    /// Whether the backend has `capability`.
    pub const fn has(&self, capability: Capability) -> bool {
        match capability {
            Capability::Groups => self.groups,
            Capability::Flush => self.flush,
            Capability::ReceiveAnyProcessChannel => self.receive_any_process_channel,
            Capability::SharedBetweenLayers => self.shared_between_layers,
            Capability::ExactGauges => self.exact_gauges,
            Capability::Inspect => self.inspect,
        }
    }

    /// With `capability` set to `yes`.
    #[must_use]
    pub const fn with(self, capability: Capability, yes: bool) -> Self {
        match capability {
            Capability::Groups => self.with_groups(yes),
            Capability::Flush => self.with_flush(yes),
            Capability::ReceiveAnyProcessChannel => self.with_receive_any_process_channel(yes),
            Capability::SharedBetweenLayers => self.with_shared_between_layers(yes),
            Capability::ExactGauges => self.with_exact_gauges(yes),
            Capability::Inspect => self.with_inspect(yes),
        }
    }

    /// No capabilities; add them with [`Capabilities::with`] or the `with_*` methods.
    pub const fn none() -> Self {
        Capabilities {
            groups: false,
            flush: false,
            receive_any_process_channel: false,
            shared_between_layers: false,
            exact_gauges: false,
            inspect: false,
        }
    }

    /// With `inspect` set.
    #[must_use]
    pub const fn with_inspect(mut self, yes: bool) -> Self {
        self.inspect = yes;
        self
    }

    /// With `groups` set.
    #[must_use]
    pub const fn with_groups(mut self, yes: bool) -> Self {
        self.groups = yes;
        self
    }

    /// With `flush` set.
    #[must_use]
    pub const fn with_flush(mut self, yes: bool) -> Self {
        self.flush = yes;
        self
    }

    /// With `receive_any_process_channel` set.
    #[must_use]
    pub const fn with_receive_any_process_channel(mut self, yes: bool) -> Self {
        self.receive_any_process_channel = yes;
        self
    }

    /// With `shared_between_layers` set.
    #[must_use]
    pub const fn with_shared_between_layers(mut self, yes: bool) -> Self {
        self.shared_between_layers = yes;
        self
    }

    /// With `exact_gauges` set.
    #[must_use]
    pub const fn with_exact_gauges(mut self, yes: bool) -> Self {
        self.exact_gauges = yes;
        self
    }
}

/// What a `group_send` did: how many members got the message and how many were skipped
/// because their channel was full. A `group_send` never fails because a member is full
/// ([contract §1.2](crate::contract)); skips are reported here and counted in the layer's metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub struct GroupSendReport {
    /// Members whose channel accepted the message.
    pub delivered: usize,
    /// Members whose channel was full.
    pub skipped_full: usize,
    /// Members whose channel could not take the message for another reason (a network
    /// backend's key for it holds data of another type, say); counted in
    /// [`MetricsSnapshot::group_skipped_failed`](crate::MetricsSnapshot::group_skipped_failed).
    pub skipped_failed: usize,
}

impl GroupSendReport {
    /// A report of `delivered` deliveries and `skipped_full` skips.
    pub const fn new(delivered: usize, skipped_full: usize) -> Self {
        GroupSendReport {
            delivered,
            skipped_full,
            skipped_failed: 0,
        }
    }
}

/// The channel layer contract: named channels, process-specific channels, groups, capacity,
/// expiry, at-most-once FIFO delivery.
///
/// Application code calls these methods (with [`ChannelLayerExt`] for conveniences) on any
/// backend: [`crate::InMemoryLayer`], or an [`crate::AnyLayer`] built from a URL. Third parties
/// implement the trait for their own backends and prove them with the conformance suite
/// (`channel_layer::testing`, behind the `testing` feature).
///
/// # The contract
///
/// - **Names** are validated as [`crate::name`] describes; an invalid name is an error and
///   nothing is sent.
/// - **FIFO, at most once.** Each message goes to exactly one receiver, never twice; messages
///   sent by one sender to one channel are received in order.
/// - **`send` never waits for room.** At capacity it fails with [`SendError::Full`] and the
///   channel is unchanged. Every channel, a process-specific `a!b` included, has its own
///   capacity, so a full or abandoned channel never costs another its messages.
///   [`ChannelLayer::send_until`] is the form that waits for room.
/// - **Expiry.** A message older than the layer's expiry is never delivered; it is dropped and
///   counted in [`MetricsSnapshot::expired`].
/// - **Groups.** `group_send` never fails because a member is full; it reports skips in a
///   [`GroupSendReport`]. Membership lapses `group_expiry` after the latest `group_add`.
/// - **Closing** wakes every blocked receiver with a `Closed` error.
///
/// # Every operation and its forms
///
/// | operation | blocking | async | waits at most a timeout | until a deadline | without waiting |
/// |---|---|---|---|---|---|
/// | send (never waits for room) | [`send`](ChannelLayer::send) | [`send_async`](ChannelLayer::send_async) | | | |
/// | send, waiting for room | | | [`send_timeout`](ChannelLayerExt::send_timeout), [`send_timeout_async`](ChannelLayerExt::send_timeout_async) | [`send_until`](ChannelLayer::send_until), [`send_until_async`](ChannelLayer::send_until_async) | |
/// | send a batch | [`send_many`](ChannelLayer::send_many) | [`send_many_async`](ChannelLayer::send_many_async) | | | |
/// | send a typed value | [`send_typed`](ChannelLayerExt::send_typed) | [`send_typed_async`](ChannelLayerExt::send_typed_async) | | | |
/// | receive | [`receive`](ChannelLayerExt::receive) | [`receive_async`](ChannelLayerExt::receive_async) | [`receive_timeout`](ChannelLayerExt::receive_timeout), [`receive_timeout_async`](ChannelLayerExt::receive_timeout_async) | [`receive_until`](ChannelLayer::receive_until), [`receive_until_async`](ChannelLayer::receive_until_async) | [`try_receive`](ChannelLayer::try_receive), [`try_receive_async`](ChannelLayer::try_receive_async) |
/// | receive a typed value | [`receive_typed`](ChannelLayerExt::receive_typed) | [`receive_typed_async`](ChannelLayerExt::receive_typed_async) | | | |
/// | group membership | [`group_add`](ChannelLayer::group_add), [`group_discard`](ChannelLayer::group_discard) | [`group_add_async`](ChannelLayer::group_add_async), [`group_discard_async`](ChannelLayer::group_discard_async) | | | |
/// | group send | [`group_send`](ChannelLayer::group_send), [`group_send_many`](ChannelLayer::group_send_many) | [`group_send_async`](ChannelLayer::group_send_async), [`group_send_many_async`](ChannelLayer::group_send_many_async) | | | |
/// | flush | [`flush`](ChannelLayer::flush) | [`flush_async`](ChannelLayer::flush_async) | | | |
/// | inspect | [`inspect`](ChannelLayer::inspect) | [`inspect_async`](ChannelLayer::inspect_async) | | | |
///
/// [`new_channel`](ChannelLayer::new_channel), [`capabilities`](ChannelLayer::capabilities),
/// [`metrics`](ChannelLayer::metrics) and [`close`](ChannelLayer::close) never wait.
///
/// # Implementing
///
/// The async methods are required. The blocking methods default to running the async ones to
/// completion on the calling thread ([`crate::runtime::block_on`]); a backend that can block
/// more cheaply overrides them.
pub trait ChannelLayer: Send + Sync + fmt::Debug {
    /// What this backend supports.
    fn capabilities(&self) -> Capabilities;

    /// A counter snapshot: messages sent, received, dropped as full or expired, and so on.
    fn metrics(&self) -> MetricsSnapshot;

    /// Mints a fresh process-specific channel name, `<prefix>.<process>!<random>`, that this
    /// layer can receive on. The default prefix is [`DEFAULT_CHANNEL_PREFIX`].
    ///
    /// # Errors
    ///
    /// [`NameError`] when the prefix is invalid or too long.
    fn new_channel(&self, prefix: &str) -> Result<String, NameError>;

    /// Sends a message to a channel (see [`ChannelLayer::send`]).
    ///
    /// # Cancel safety
    ///
    /// Backend-specific; the in-memory backend completes on the first poll. Dropping a network
    /// backend's send before it completes may or may not have stored the message.
    fn send_async<'a>(
        &'a self,
        channel: &'a str,
        message: Message,
    ) -> BoxFuture<'a, Result<(), SendError>>;

    /// Receives the next message on a channel, waiting until `deadline` (for ever if `None`).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a message is taken from the channel only in the poll that returns it, so
    /// dropping the future never loses a message.
    fn receive_until_async<'a>(
        &'a self,
        channel: &'a str,
        deadline: Option<Instant>,
    ) -> BoxFuture<'a, Result<Message, ReceiveError>>;

    /// Takes the next message on a channel if one is there, without waiting for one.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a message is handed over only in the poll that returns it (a network
    /// backend delivers what it fetched to the layer's own buffers, not to the future).
    fn try_receive_async<'a>(
        &'a self,
        channel: &'a str,
    ) -> BoxFuture<'a, Result<Message, TryReceiveError>>;

    /// Adds a channel to a group, or refreshes its membership (see [`ChannelLayer::group_add`]).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future may or may not leave the membership changed; adding again is
    /// harmless.
    fn group_add_async<'a>(
        &'a self,
        group: &'a str,
        channel: &'a str,
    ) -> BoxFuture<'a, Result<(), LayerError>>;

    /// Removes a channel from a group (see [`ChannelLayer::group_discard`]).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future may or may not leave the membership removed; removing again is
    /// harmless.
    fn group_discard_async<'a>(
        &'a self,
        group: &'a str,
        channel: &'a str,
    ) -> BoxFuture<'a, Result<(), LayerError>>;

    /// Sends a message to every member of a group (see [`ChannelLayer::group_send`]).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future may leave the message delivered to some, all or none of the
    /// members; it is never delivered twice to one.
    fn group_send_async<'a>(
        &'a self,
        group: &'a str,
        message: Message,
    ) -> BoxFuture<'a, Result<GroupSendReport, LayerError>>;

    /// Empties the layer (see [`ChannelLayer::flush`]).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future may leave the layer partly flushed.
    fn flush_async(&self) -> BoxFuture<'_, Result<(), LayerError>>;

    /// Closes this layer object: every later call fails with a `Closed` error and blocked
    /// receivers wake with one. Messages stored in a shared backend stay there.
    fn close(&self);

    /// Sends a message to a channel.
    ///
    /// # Errors
    ///
    /// [`SendError::Full`] at capacity, [`SendError::InvalidName`],
    /// [`SendError::InvalidMessage`] when the message carries the reserved key, and
    /// [`SendError::Closed`]; each hands the message back.
    fn send(&self, channel: &str, message: Message) -> Result<(), SendError> {
        block_on(self.send_async(channel, message))
    }

    /// Sends a message, waiting while the channel is full until `deadline` (for ever if
    /// `None`), as crossbeam's `send_deadline` does. On a deadline that passes with the
    /// channel still full it fails with [`SendError::Full`] and hands the message back; it
    /// fails at once for everything else [`ChannelLayer::send`] fails for.
    ///
    /// Pick [`ChannelLayer::send`] to learn about a pile-up at once and decide what to do (shed
    /// load, report it); pick this, or [`ChannelLayerExt::send_timeout`], for a producer that
    /// should simply go at its consumer's pace. Waiting never spins a core: the in-memory
    /// backend wakes a waiting sender when a receiver takes from the channel, on `flush` and
    /// on `close`; a backend without such a signal (the default here, and Redis) tries again
    /// with a capped, growing pause (100 µs up to 20 ms), so it does not hammer its server.
    /// In this crate's backends a send refused while waiting is not counted in
    /// `rejected_full`; only one that gives up at the deadline is.
    ///
    /// # Errors
    ///
    /// As [`ChannelLayer::send`]; `Full` only once `deadline` has passed.
    fn send_until(
        &self,
        channel: &str,
        message: Message,
        deadline: Option<Instant>,
    ) -> Result<(), SendError> {
        block_on(self.send_until_async(channel, message, deadline))
    }

    /// Sends a message, waiting while the channel is full until `deadline` (see
    /// [`ChannelLayer::send_until`]).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future while it waits for room sends nothing; dropping a network
    /// backend's send in flight may or may not have stored the message.
    fn send_until_async<'a>(
        &'a self,
        channel: &'a str,
        message: Message,
        deadline: Option<Instant>,
    ) -> BoxFuture<'a, Result<(), SendError>> {
        Box::pin(retry_while_full(message, deadline, move |m| {
            self.send_async(channel, m)
        }))
    }

    /// Receives the next message on a channel, blocking the thread until `deadline` (for ever
    /// if `None`).
    ///
    /// # Errors
    ///
    /// [`ReceiveError::Timeout`] when the deadline passes, [`ReceiveError::Closed`] when the
    /// layer is closed, [`ReceiveError::InvalidName`].
    fn receive_until(
        &self,
        channel: &str,
        deadline: Option<Instant>,
    ) -> Result<Message, ReceiveError> {
        block_on(self.receive_until_async(channel, deadline))
    }

    /// Takes the next message on a channel if one is there.
    ///
    /// # Errors
    ///
    /// [`TryReceiveError::Empty`] when there is none.
    fn try_receive(&self, channel: &str) -> Result<Message, TryReceiveError> {
        block_on(self.try_receive_async(channel))
    }

    /// Adds a channel to a group; adding it again refreshes its membership.
    ///
    /// # Errors
    ///
    /// [`LayerError::InvalidName`] for an invalid group or channel name.
    fn group_add(&self, group: &str, channel: &str) -> Result<(), LayerError> {
        block_on(self.group_add_async(group, channel))
    }

    /// Removes a channel from a group; no error if it was not a member.
    ///
    /// # Errors
    ///
    /// [`LayerError::InvalidName`] for an invalid group or channel name.
    fn group_discard(&self, group: &str, channel: &str) -> Result<(), LayerError> {
        block_on(self.group_discard_async(group, channel))
    }

    /// Sends a message to every current member of a group. Members whose channel is full are
    /// skipped and counted; an unknown group has no members.
    ///
    /// # Errors
    ///
    /// [`LayerError::InvalidName`], [`LayerError::InvalidMessage`] (reserved key).
    fn group_send(&self, group: &str, message: Message) -> Result<GroupSendReport, LayerError> {
        block_on(self.group_send_async(group, message))
    }

    /// Drops every message and every group membership; blocked receivers keep waiting for new
    /// messages. Dropped messages are counted in [`MetricsSnapshot::flushed`].
    ///
    /// # Errors
    ///
    /// [`LayerError::Closed`], or a backend failure.
    fn flush(&self) -> Result<(), LayerError> {
        block_on(self.flush_async())
    }

    /// Lists what the layer holds: channels with their queued counts and the age of their
    /// oldest message, groups with their member counts, members and membership ages, and the
    /// counters; at most `limit` channels, `limit` groups and `limit` members listed per group
    /// (see [`Inspection::complete`]). For operators and tools; not meant for a hot path.
    ///
    /// # Cost
    ///
    /// No single server command reads an unbounded set. On Redis: a `SCAN` of the prefix's
    /// keys (1,000 per page; it stops once both lists are full), then per channel key `ZCARD`
    /// and its oldest entry, per group key `ZCARD` and a ranged `ZRANGE` of at most `limit`
    /// members. On NATS: one subject listing per channel stream and of the group bucket (pages
    /// of 100,000), then one read per listed channel and listed member. In memory: a walk of
    /// the tables under their locks.
    ///
    /// # Errors
    ///
    /// [`LayerError::Unsupported`] when the backend does not offer it
    /// ([`Capabilities::inspect`]); [`LayerError::Closed`]; a backend's error.
    fn inspect(&self, limit: usize) -> Result<Inspection, LayerError> {
        block_on(self.inspect_async(limit))
    }

    /// [`ChannelLayer::inspect`], async. The default says the backend does not offer it.
    fn inspect_async(&self, limit: usize) -> BoxFuture<'_, Result<Inspection, LayerError>> {
        let _ = limit;
        Box::pin(std::future::ready(Err(LayerError::Unsupported("inspect"))))
    }

    /// Sends many messages, each to its channel, and says what became of each, in the order
    /// given: a service answering a batch of requests, or handing out a batch of work, pays
    /// for the batch rather than for each message. Messages to different channels are sent
    /// together (on Redis the sends in flight share round trips; on NATS their publishes are
    /// in flight together); those to one channel one after another, in the order given, so
    /// the channel keeps their order. One message refused (a full channel, an invalid name)
    /// does not stop the others, and comes back in its error.
    ///
    /// ```
    /// use channel_layer::prelude::*;
    ///
    /// let layer = InMemoryLayer::new(LayerConfig::builder().capacity(1).build()?);
    /// let sent = layer.send_many(vec![
    ///     ("replies.a".into(), Message::new("answer").with("n", 1)),
    ///     ("replies.b".into(), Message::new("answer").with("n", 2)),
    ///     ("replies.a".into(), Message::new("answer").with("n", 3)),
    /// ]);
    /// assert!(sent[0].is_ok() && sent[1].is_ok());
    /// // `replies.a` holds one message at most: the third comes back.
    /// let refused = sent.into_iter().nth(2).unwrap().unwrap_err();
    /// assert!(refused.is_full());
    /// assert_eq!(refused.into_message().get("n").and_then(|v| v.as_i64()), Some(3));
    /// # Ok::<(), channel_layer::Error>(())
    /// ```
    fn send_many(&self, messages: Vec<(String, Message)>) -> Vec<Result<(), SendError>> {
        block_on(self.send_many_async(messages))
    }

    /// [`ChannelLayer::send_many`], async. The default sends each channel's messages one after
    /// another with [`ChannelLayer::send_async`], the channels at once.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future may leave any prefix of each channel's messages sent.
    fn send_many_async(
        &self,
        messages: Vec<(String, Message)>,
    ) -> BoxFuture<'_, Vec<Result<(), SendError>>> {
        Box::pin(in_turns(messages, move |channel, message| {
            Box::pin(async move { self.send_async(&channel, message).await })
        }))
    }

    /// Sends each message to every member of its group (as [`ChannelLayer::group_send`]), the
    /// groups together and one group's messages in the order given; what each did, in the
    /// order given.
    fn group_send_many(
        &self,
        messages: Vec<(String, Message)>,
    ) -> Vec<Result<GroupSendReport, LayerError>> {
        block_on(self.group_send_many_async(messages))
    }

    /// [`ChannelLayer::group_send_many`], async. The default sends each group's messages one
    /// after another with [`ChannelLayer::group_send_async`], the groups at once.
    ///
    /// # Cancel safety
    ///
    /// As [`ChannelLayer::group_send_async`], for each message.
    fn group_send_many_async(
        &self,
        messages: Vec<(String, Message)>,
    ) -> BoxFuture<'_, Vec<Result<GroupSendReport, LayerError>>> {
        Box::pin(in_turns(messages, move |group, message| {
            Box::pin(async move { self.group_send_async(&group, message).await })
        }))
    }
}

/// Runs `send` on each `(name, message)` pair: the pairs of one name one after another, in the
/// order given, the names at once. The outcomes come back in the order given.
async fn in_turns<'a, T: 'a>(
    messages: Vec<(String, Message)>,
    send: impl Fn(String, Message) -> BoxFuture<'a, T> + 'a,
) -> Vec<T> {
    let mut turns: Vec<(String, Vec<(usize, Message)>)> = Vec::new();
    let mut by_name: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for (i, (name, message)) in messages.into_iter().enumerate() {
        match by_name.get(&name) {
            Some(&turn) => turns[turn].1.push((i, message)),
            None => {
                by_name.insert(name.clone(), turns.len());
                turns.push((name, vec![(i, message)]));
            }
        }
    }
    let send = &send;
    let done = futures_util::future::join_all(turns.into_iter().map(|(name, queue)| async move {
        let mut outcomes = Vec::with_capacity(queue.len());
        for (i, message) in queue {
            outcomes.push((i, send(name.clone(), message).await));
        }
        outcomes
    }))
    .await;
    let mut all: Vec<(usize, T)> = done.into_iter().flatten().collect();
    all.sort_unstable_by_key(|(i, _)| *i);
    all.into_iter().map(|(_, outcome)| outcome).collect()
}

/// Conveniences on every [`ChannelLayer`]: receive with or without a timeout, typed messages.
pub trait ChannelLayerExt: ChannelLayer {
    /// Sends a message, waiting at most `timeout` while the channel is full (see
    /// [`ChannelLayer::send_until`]).
    ///
    /// ```
    /// use std::time::Duration;
    /// use channel_layer::prelude::*;
    ///
    /// let layer = InMemoryLayer::new(LayerConfig::builder().capacity(1).build()?);
    /// layer.send("jobs", Message::new("first"))?;
    /// // Full, and nobody receives: the message comes back after the timeout.
    /// let err = layer.send_timeout("jobs", Message::new("second"), Duration::from_millis(20)).unwrap_err();
    /// assert!(err.is_full());
    /// assert_eq!(err.into_message().message_type(), Some("second"));
    /// # Ok::<(), channel_layer::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`ChannelLayer::send_until`].
    fn send_timeout(
        &self,
        channel: &str,
        message: Message,
        timeout: Duration,
    ) -> Result<(), SendError> {
        self.send_until(channel, message, deadline_after(timeout))
    }

    /// The async form of [`ChannelLayerExt::send_timeout`].
    fn send_timeout_async<'a>(
        &'a self,
        channel: &'a str,
        message: Message,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<(), SendError>> {
        self.send_until_async(channel, message, deadline_after(timeout))
    }

    /// Receives the next message on a channel, blocking until one arrives.
    ///
    /// # Errors
    ///
    /// [`ReceiveError::Closed`], [`ReceiveError::InvalidName`].
    fn receive(&self, channel: &str) -> Result<Message, ReceiveError> {
        self.receive_until(channel, None)
    }

    /// Receives the next message on a channel, blocking for at most `timeout`.
    ///
    /// # Errors
    ///
    /// [`ReceiveError::Timeout`] when nothing arrives in time.
    fn receive_timeout(&self, channel: &str, timeout: Duration) -> Result<Message, ReceiveError> {
        self.receive_until(channel, deadline_after(timeout))
    }

    /// Receives the next message on a channel.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future never loses a message.
    fn receive_async<'a>(
        &'a self,
        channel: &'a str,
    ) -> BoxFuture<'a, Result<Message, ReceiveError>> {
        self.receive_until_async(channel, None)
    }

    /// Receives the next message on a channel, waiting at most `timeout`. The timer runs on
    /// this crate's own timer thread, so no particular async runtime is needed.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future never loses a message.
    fn receive_timeout_async<'a>(
        &'a self,
        channel: &'a str,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Message, ReceiveError>> {
        self.receive_until_async(channel, deadline_after(timeout))
    }

    /// Mints a process-specific channel with the default prefix ([`DEFAULT_CHANNEL_PREFIX`]).
    fn new_default_channel(&self) -> String {
        self.new_channel(DEFAULT_CHANNEL_PREFIX)
            .expect("the default prefix is valid")
    }

    /// Encodes a typed value ([`Message::encode`]) and sends it.
    ///
    /// # Errors
    ///
    /// [`SendError::InvalidMessage`] when the value does not encode (the returned message is
    /// then empty), and every error of [`ChannelLayer::send`].
    fn send_typed<T: serde::Serialize + ?Sized>(
        &self,
        channel: &str,
        value: &T,
    ) -> Result<(), SendError> {
        let message = encode_for_send(value)?;
        self.send(channel, message)
    }

    /// Receives a message and decodes it ([`Message::decode`]).
    ///
    /// # Errors
    ///
    /// [`crate::Error::Receive`] when nothing is received, [`crate::Error::Message`] when the
    /// message does not decode (it is then lost: it was already taken from the channel).
    fn receive_typed<T: serde::de::DeserializeOwned>(
        &self,
        channel: &str,
    ) -> Result<T, crate::Error> {
        Ok(self.receive(channel)?.decode()?)
    }

    /// The async form of [`ChannelLayerExt::send_typed`]: the value is encoded before the
    /// future is returned, so it need not outlive the call.
    ///
    /// ```
    /// use channel_layer::prelude::*;
    /// use serde::{Deserialize, Serialize};
    ///
    /// #[derive(Serialize, Deserialize, Debug, PartialEq)]
    /// struct Ping {
    ///     #[serde(rename = "type")]
    ///     kind: String,
    ///     n: u32,
    /// }
    ///
    /// let layer = InMemoryLayer::default();
    /// futures::executor::block_on(async {
    ///     let ping = Ping { kind: "ping".into(), n: 1 };
    ///     layer.send_typed_async("pings", &ping).await?;
    ///     let got: Ping = layer.receive_typed_async("pings").await?;
    ///     assert_eq!(got, ping);
    ///     Ok::<(), channel_layer::Error>(())
    /// })?;
    /// # Ok::<(), channel_layer::Error>(())
    /// ```
    ///
    /// # Cancel safety
    ///
    /// As [`ChannelLayer::send_async`].
    fn send_typed_async<'a, T: serde::Serialize + ?Sized>(
        &'a self,
        channel: &'a str,
        value: &T,
    ) -> BoxFuture<'a, Result<(), SendError>> {
        match encode_for_send(value) {
            Ok(message) => self.send_async(channel, message),
            Err(e) => Box::pin(std::future::ready(Err(e))),
        }
    }

    /// The async form of [`ChannelLayerExt::receive_typed`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe as [`ChannelLayerExt::receive_async`]; a message that is received but does
    /// not decode is lost, as with the blocking form.
    fn receive_typed_async<'a, T: serde::de::DeserializeOwned + 'a>(
        &'a self,
        channel: &'a str,
    ) -> BoxFuture<'a, Result<T, crate::Error>> {
        Box::pin(async move { Ok(self.receive_async(channel).await?.decode()?) })
    }
}

impl<L: ChannelLayer + ?Sized> ChannelLayerExt for L {}

fn encode_for_send<T: serde::Serialize + ?Sized>(value: &T) -> Result<Message, SendError> {
    Message::encode(value).map_err(|error: MessageError| SendError::InvalidMessage {
        error,
        message: Message::default(),
    })
}

/// Tries `attempt` until it is not refused as full, or `deadline` passes, pausing between
/// tries with a capped, growing backoff (100 µs to 20 ms): the waiting send of backends that
/// have no signal for room.
pub(crate) async fn retry_while_full<'a, F>(
    mut message: Message,
    deadline: Option<Instant>,
    mut attempt: F,
) -> Result<(), SendError>
where
    F: FnMut(Message) -> BoxFuture<'a, Result<(), SendError>>,
{
    let mut pause = Duration::from_micros(100);
    loop {
        match attempt(message).await {
            Err(SendError::Full {
                channel,
                capacity,
                message: back,
            }) => {
                let now = Instant::now();
                if deadline.is_some_and(|d| now >= d) {
                    return Err(SendError::Full {
                        channel,
                        capacity,
                        message: back,
                    });
                }
                let wake = deadline.map_or(now + pause, |d| d.min(now + pause));
                crate::runtime::sleep_until(wake).await;
                pause = (pause * 2).min(Duration::from_millis(20));
                message = back;
            }
            other => return other,
        }
    }
}

/// The instant `timeout` from now, or `None` (no deadline) when that is past what an
/// `Instant` can hold.
pub(crate) fn deadline_after(timeout: Duration) -> Option<Instant> {
    Instant::now().checked_add(timeout)
}

/// Implements every method of [`ChannelLayer`] by forwarding it to a field (or any expression
/// on `self`, such as `as_ref()`) that implements it: the body of a wrapper around a backend,
/// such as one that adds logging, or that keeps a test server alive next to its layer.
///
/// # Examples
///
/// ```
/// use channel_layer::{ChannelLayer, InMemoryLayer};
///
/// /// A layer that remembers where it came from.
/// #[derive(Debug)]
/// struct Labelled {
///     label: &'static str,
///     layer: InMemoryLayer,
/// }
///
/// impl ChannelLayer for Labelled {
///     channel_layer::delegate_channel_layer!(layer);
/// }
///
/// let l = Labelled { label: "test", layer: InMemoryLayer::default() };
/// l.send("a", channel_layer::Message::new("x"))?;
/// assert_eq!((l.label, l.metrics().sent), ("test", 1));
/// # Ok::<(), channel_layer::SendError>(())
/// ```
#[macro_export]
macro_rules! delegate_channel_layer {
    ($($target:tt)+) => {
        fn capabilities(&self) -> $crate::Capabilities {
            self.$($target)+.capabilities()
        }
        fn metrics(&self) -> $crate::MetricsSnapshot {
            self.$($target)+.metrics()
        }
        fn new_channel(&self, prefix: &str) -> Result<String, $crate::NameError> {
            self.$($target)+.new_channel(prefix)
        }
        fn send_async<'a>(&'a self, channel: &'a str, message: $crate::Message)
            -> $crate::BoxFuture<'a, Result<(), $crate::SendError>> {
            self.$($target)+.send_async(channel, message)
        }
        fn receive_until_async<'a>(&'a self, channel: &'a str, deadline: Option<std::time::Instant>)
            -> $crate::BoxFuture<'a, Result<$crate::Message, $crate::ReceiveError>> {
            self.$($target)+.receive_until_async(channel, deadline)
        }
        fn try_receive_async<'a>(&'a self, channel: &'a str)
            -> $crate::BoxFuture<'a, Result<$crate::Message, $crate::TryReceiveError>> {
            self.$($target)+.try_receive_async(channel)
        }
        fn group_add_async<'a>(&'a self, group: &'a str, channel: &'a str)
            -> $crate::BoxFuture<'a, Result<(), $crate::LayerError>> {
            self.$($target)+.group_add_async(group, channel)
        }
        fn group_discard_async<'a>(&'a self, group: &'a str, channel: &'a str)
            -> $crate::BoxFuture<'a, Result<(), $crate::LayerError>> {
            self.$($target)+.group_discard_async(group, channel)
        }
        fn group_send_async<'a>(&'a self, group: &'a str, message: $crate::Message)
            -> $crate::BoxFuture<'a, Result<$crate::GroupSendReport, $crate::LayerError>> {
            self.$($target)+.group_send_async(group, message)
        }
        fn flush_async(&self) -> $crate::BoxFuture<'_, Result<(), $crate::LayerError>> {
            self.$($target)+.flush_async()
        }
        fn close(&self) {
            self.$($target)+.close()
        }
        fn send(&self, channel: &str, message: $crate::Message) -> Result<(), $crate::SendError> {
            self.$($target)+.send(channel, message)
        }
        fn send_until(&self, channel: &str, message: $crate::Message, deadline: Option<std::time::Instant>)
            -> Result<(), $crate::SendError> {
            self.$($target)+.send_until(channel, message, deadline)
        }
        fn send_until_async<'a>(&'a self, channel: &'a str, message: $crate::Message, deadline: Option<std::time::Instant>)
            -> $crate::BoxFuture<'a, Result<(), $crate::SendError>> {
            self.$($target)+.send_until_async(channel, message, deadline)
        }
        fn receive_until(&self, channel: &str, deadline: Option<std::time::Instant>)
            -> Result<$crate::Message, $crate::ReceiveError> {
            self.$($target)+.receive_until(channel, deadline)
        }
        fn try_receive(&self, channel: &str) -> Result<$crate::Message, $crate::TryReceiveError> {
            self.$($target)+.try_receive(channel)
        }
        fn group_add(&self, group: &str, channel: &str) -> Result<(), $crate::LayerError> {
            self.$($target)+.group_add(group, channel)
        }
        fn group_discard(&self, group: &str, channel: &str) -> Result<(), $crate::LayerError> {
            self.$($target)+.group_discard(group, channel)
        }
        fn group_send(&self, group: &str, message: $crate::Message)
            -> Result<$crate::GroupSendReport, $crate::LayerError> {
            self.$($target)+.group_send(group, message)
        }
        fn flush(&self) -> Result<(), $crate::LayerError> {
            self.$($target)+.flush()
        }
        fn inspect(&self, limit: usize) -> Result<$crate::inspect::Inspection, $crate::LayerError> {
            self.$($target)+.inspect(limit)
        }
        fn inspect_async(&self, limit: usize)
            -> $crate::BoxFuture<'_, Result<$crate::inspect::Inspection, $crate::LayerError>> {
            self.$($target)+.inspect_async(limit)
        }
        fn send_many(&self, messages: Vec<(String, $crate::Message)>)
            -> Vec<Result<(), $crate::SendError>> {
            self.$($target)+.send_many(messages)
        }
        fn send_many_async(&self, messages: Vec<(String, $crate::Message)>)
            -> $crate::BoxFuture<'_, Vec<Result<(), $crate::SendError>>> {
            self.$($target)+.send_many_async(messages)
        }
        fn group_send_many(&self, messages: Vec<(String, $crate::Message)>)
            -> Vec<Result<$crate::GroupSendReport, $crate::LayerError>> {
            self.$($target)+.group_send_many(messages)
        }
        fn group_send_many_async(&self, messages: Vec<(String, $crate::Message)>)
            -> $crate::BoxFuture<'_, Vec<Result<$crate::GroupSendReport, $crate::LayerError>>> {
            self.$($target)+.group_send_many_async(messages)
        }
    };
}

impl<L: ChannelLayer + ?Sized> ChannelLayer for std::sync::Arc<L> {
    crate::delegate_channel_layer!(as_ref());
}

impl<L: ChannelLayer + ?Sized> ChannelLayer for Box<L> {
    crate::delegate_channel_layer!(as_ref());
}
