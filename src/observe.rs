//! Observability: per-operation latency and counts through the `metrics` facade (feature
//! `metrics`), and `tracing` spans (feature `tracing`), named after the OpenTelemetry messaging
//! semantic conventions.
//!
//! Wrap any layer in [`Observed`] to record its operations; the services toolkit records
//! request round trips and handler times itself. Without the features everything here
//! compiles to nothing.
//!
//! # Metrics (feature `metrics`)
//!
//! | name | kind | labels |
//! |---|---|---|
//! | `messaging.client.operation.duration` | histogram, seconds | `messaging.operation.name`, `messaging.destination.name`, `error.type` on failure |
//! | `messaging.client.sent.messages` | counter | `messaging.destination.name` |
//! | `messaging.client.consumed.messages` | counter | `messaging.destination.name` |
//! | `messaging.process.duration` | histogram, seconds | `messaging.message.type` (the handled message's `type`), `error.type` on failure |
//! | `channel_layer.*` gauges and counters | from [`Observed::export_snapshot`] | |
//!
//! The application installs a recorder (Prometheus, OpenTelemetry, ...); without one each call
//! costs an atomic load.
//!
//! **Cardinality.** A process-specific channel name is unique, so it never becomes a label:
//! `messaging.destination.name` is the part before `!` ([`crate::name::label_name`]).
//!
//! # Spans (feature `tracing`)
//!
//! Each operation of an [`Observed`] layer runs in a span named after the operation (`send`,
//! `receive`, `group_send`, ...) with `messaging.system = "channel_layer"`,
//! `messaging.operation.name`, `messaging.destination.name` (full name, as a span is not a
//! metric label), `messaging.destination.temporary` (process-specific channels) and, when the
//! message carries one, `messaging.message.conversation_id` (the correlation ID) and
//! `messaging.message.type`.

use std::time::{Duration, Instant};

use crate::error::{LayerError, ReceiveError, SendError, TryReceiveError};
use crate::layer::{BoxFuture, Capabilities, ChannelLayer, GroupSendReport};
use crate::message::Message;
use crate::metrics::MetricsSnapshot;
use crate::name::NameError;

/// A layer whose operations are timed, counted and traced (as the `metrics` and `tracing`
/// features allow); otherwise it behaves exactly as the layer it wraps.
///
/// # Examples
///
/// ```
/// use channel_layer::observe::Observed;
/// use channel_layer::prelude::*;
///
/// let layer = AnyLayer::new(Observed::new(InMemoryLayer::default()));
/// layer.send("orders", Message::new("order.create"))?;
/// # Ok::<(), channel_layer::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Observed<L> {
    inner: L,
}

impl<L: ChannelLayer> Observed<L> {
    /// Wraps `layer`.
    pub fn new(layer: L) -> Self {
        Observed { inner: layer }
    }

    /// The wrapped layer.
    pub fn get_ref(&self) -> &L {
        &self.inner
    }

    /// Publishes the layer's [`MetricsSnapshot`] through the `metrics` facade: its counters as
    /// `channel_layer.<field>` counters (absolute values) and its gauges as gauges. Call it
    /// from time to time, e.g. before each scrape. Does nothing without the `metrics` feature.
    pub fn export_snapshot(&self) {
        export(&self.inner.metrics());
    }
}

#[cfg(feature = "metrics")]
fn export(m: &MetricsSnapshot) {
    let counters = [
        ("channel_layer.sent", m.sent),
        ("channel_layer.received", m.received),
        ("channel_layer.rejected_full", m.rejected_full),
        ("channel_layer.expired", m.expired),
        ("channel_layer.flushed", m.flushed),
        ("channel_layer.group_sends", m.group_sends),
        ("channel_layer.group_deliveries", m.group_deliveries),
        ("channel_layer.group_skipped_full", m.group_skipped_full),
        ("channel_layer.undecodable", m.undecodable),
        ("channel_layer.overflowed", m.overflowed),
        ("channel_layer.group_skipped_failed", m.group_skipped_failed),
        ("channel_layer.lost", m.lost),
        ("channel_layer.backend_errors", m.backend_errors),
        ("channel_layer.unreplicated", m.unreplicated),
        ("channel_layer.reconnects", m.reconnects),
    ];
    for (name, value) in counters {
        metrics::counter!(name).absolute(value);
    }
    metrics::gauge!("channel_layer.queued_messages").set(m.queued_messages as f64);
    metrics::gauge!("channel_layer.channels").set(m.channels as f64);
    metrics::gauge!("channel_layer.groups").set(m.groups as f64);
}

#[cfg(not(feature = "metrics"))]
fn export(_: &MetricsSnapshot) {}

/// Records one operation's duration (and its error type, if it failed).
#[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
pub(crate) fn operation(
    operation: &'static str,
    channel: &str,
    took: Duration,
    error: Option<&'static str>,
) {
    #[cfg(feature = "metrics")]
    {
        let destination = crate::name::label_name(channel).to_owned();
        let seconds = took.as_secs_f64();
        match error {
            None => metrics::histogram!(
                "messaging.client.operation.duration",
                "messaging.operation.name" => operation,
                "messaging.destination.name" => destination,
            )
            .record(seconds),
            Some(error) => metrics::histogram!(
                "messaging.client.operation.duration",
                "messaging.operation.name" => operation,
                "messaging.destination.name" => destination,
                "error.type" => error,
            )
            .record(seconds),
        }
    }
}

/// Counts a message sent to, or consumed from, `channel`.
#[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
pub(crate) fn moved(sent: bool, channel: &str) {
    #[cfg(feature = "metrics")]
    {
        let destination = crate::name::label_name(channel).to_owned();
        if sent {
            metrics::counter!("messaging.client.sent.messages", "messaging.destination.name" => destination)
                .increment(1);
        } else {
            metrics::counter!("messaging.client.consumed.messages", "messaging.destination.name" => destination)
                .increment(1);
        }
    }
}

/// Records how long handling a message of `message_type` took.
#[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
pub(crate) fn processed(message_type: &str, took: Duration, error: Option<&'static str>) {
    #[cfg(feature = "metrics")]
    {
        let message_type = message_type.to_owned();
        match error {
            None => metrics::histogram!("messaging.process.duration", "messaging.message.type" => message_type)
                .record(took.as_secs_f64()),
            Some(error) => metrics::histogram!(
                "messaging.process.duration",
                "messaging.message.type" => message_type,
                "error.type" => error,
            )
            .record(took.as_secs_f64()),
        }
    }
}

/// A span for one operation on `channel` (a disabled span without the `tracing` feature).
#[cfg(feature = "tracing")]
pub(crate) fn span(
    operation: &'static str,
    channel: &str,
    message: Option<&Message>,
) -> tracing::Span {
    let span = tracing::debug_span!(
        "channel_layer",
        otel.name = operation,
        messaging.system = "channel_layer",
        messaging.operation.name = operation,
        messaging.destination.name = channel,
        messaging.destination.temporary = crate::name::is_process_specific(channel),
        messaging.message.conversation_id = tracing::field::Empty,
        messaging.message.r#type = tracing::field::Empty,
    );
    if let Some(message) = message {
        record_message(&span, message);
    }
    span
}

/// Adds a message's correlation ID and type to `span`.
#[cfg(feature = "tracing")]
pub(crate) fn record_message(span: &tracing::Span, message: &Message) {
    if let Some(id) = message.correlation_id() {
        span.record("messaging.message.conversation_id", id);
    }
    if let Some(t) = message.message_type() {
        span.record("messaging.message.type", t);
    }
}

/// Runs `body` inside the operation's span (just runs it without the `tracing` feature).
#[cfg_attr(not(feature = "tracing"), allow(unused_variables))]
fn traced<T>(
    operation: &'static str,
    channel: &str,
    message: Option<&Message>,
    body: impl FnOnce() -> T,
) -> T {
    #[cfg(feature = "tracing")]
    {
        span(operation, channel, message).in_scope(body)
    }
    #[cfg(not(feature = "tracing"))]
    {
        body()
    }
}

/// Runs `body`, the handling of `message` received on `channel`, in a `process` span.
pub(crate) fn processing<T>(channel: &str, message: &Message, body: impl FnOnce() -> T) -> T {
    traced("process", channel, Some(message), body)
}

/// Reports a message that was not handled (an error, a panic, no or an unknown type) as a
/// `tracing` warning, inside the `process` span. Without the `tracing` feature it is counted
/// only (by the worker).
#[cfg_attr(not(feature = "tracing"), allow(unused_variables))]
pub(crate) fn not_handled(problem: &str) {
    #[cfg(feature = "tracing")]
    tracing::warn!(error.message = problem, "message not handled");
}

/// Wraps a future in the operation's span.
#[cfg_attr(not(feature = "tracing"), allow(unused_variables))]
fn traced_async<'a, T: 'a>(
    operation: &'static str,
    channel: &str,
    message: Option<&Message>,
    future: BoxFuture<'a, T>,
) -> BoxFuture<'a, T> {
    #[cfg(feature = "tracing")]
    {
        use tracing::Instrument;
        Box::pin(future.instrument(span(operation, channel, message)))
    }
    #[cfg(not(feature = "tracing"))]
    {
        future
    }
}

fn send_error_type(e: &SendError) -> &'static str {
    match e {
        SendError::Full { .. } => "channel_full",
        SendError::InvalidName { .. } => "invalid_name",
        SendError::InvalidMessage { .. } => "invalid_message",
        SendError::Closed { .. } => "closed",
        _ => "backend",
    }
}

fn receive_error_type(e: &ReceiveError) -> &'static str {
    match e {
        ReceiveError::Timeout => "timeout",
        ReceiveError::Closed => "closed",
        ReceiveError::InvalidName(_) => "invalid_name",
        _ => "backend",
    }
}

fn layer_error_type(e: &LayerError) -> &'static str {
    match e {
        LayerError::InvalidName(_) => "invalid_name",
        LayerError::InvalidMessage(_) => "invalid_message",
        LayerError::Closed => "closed",
        _ => "backend",
    }
}

fn after_send(channel: &str, start: Instant, result: &Result<(), SendError>) {
    operation(
        "send",
        channel,
        start.elapsed(),
        result.as_ref().err().map(send_error_type),
    );
    if result.is_ok() {
        moved(true, channel);
    }
}

fn after_receive(channel: &str, start: Instant, result: &Result<Message, ReceiveError>) {
    operation(
        "receive",
        channel,
        start.elapsed(),
        result.as_ref().err().map(receive_error_type),
    );
    #[cfg(feature = "tracing")]
    if let Ok(m) = result {
        record_message(&tracing::Span::current(), m);
    }
    if result.is_ok() {
        moved(false, channel);
    }
}

fn after_group_send(group: &str, start: Instant, result: &Result<GroupSendReport, LayerError>) {
    operation(
        "group_send",
        group,
        start.elapsed(),
        result.as_ref().err().map(layer_error_type),
    );
}

impl<L: ChannelLayer> ChannelLayer for Observed<L> {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    fn metrics(&self) -> MetricsSnapshot {
        self.inner.metrics()
    }

    fn new_channel(&self, prefix: &str) -> Result<String, NameError> {
        self.inner.new_channel(prefix)
    }

    fn send_async<'a>(
        &'a self,
        channel: &'a str,
        message: Message,
    ) -> BoxFuture<'a, Result<(), SendError>> {
        let span_message = message.clone();
        let future: BoxFuture<'a, _> = Box::pin(async move {
            let start = Instant::now();
            let result = self.inner.send_async(channel, message).await;
            after_send(channel, start, &result);
            result
        });
        traced_async("send", channel, Some(&span_message), future)
    }

    fn send(&self, channel: &str, message: Message) -> Result<(), SendError> {
        traced("send", channel, Some(&message), || {
            let start = Instant::now();
            let result = self.inner.send(channel, message.clone());
            after_send(channel, start, &result);
            result
        })
    }

    fn send_until(
        &self,
        channel: &str,
        message: Message,
        deadline: Option<Instant>,
    ) -> Result<(), SendError> {
        traced("send", channel, Some(&message), || {
            let start = Instant::now();
            let result = self.inner.send_until(channel, message.clone(), deadline);
            after_send(channel, start, &result);
            result
        })
    }

    fn send_until_async<'a>(
        &'a self,
        channel: &'a str,
        message: Message,
        deadline: Option<Instant>,
    ) -> BoxFuture<'a, Result<(), SendError>> {
        Box::pin(async move {
            let start = Instant::now();
            let result = self
                .inner
                .send_until_async(channel, message, deadline)
                .await;
            after_send(channel, start, &result);
            result
        })
    }

    fn receive_until_async<'a>(
        &'a self,
        channel: &'a str,
        deadline: Option<Instant>,
    ) -> BoxFuture<'a, Result<Message, ReceiveError>> {
        let future: BoxFuture<'a, _> = Box::pin(async move {
            let start = Instant::now();
            let result = self.inner.receive_until_async(channel, deadline).await;
            after_receive(channel, start, &result);
            result
        });
        traced_async("receive", channel, None, future)
    }

    fn receive_until(
        &self,
        channel: &str,
        deadline: Option<Instant>,
    ) -> Result<Message, ReceiveError> {
        traced("receive", channel, None, || {
            let start = Instant::now();
            let result = self.inner.receive_until(channel, deadline);
            after_receive(channel, start, &result);
            result
        })
    }

    fn try_receive_async<'a>(
        &'a self,
        channel: &'a str,
    ) -> BoxFuture<'a, Result<Message, TryReceiveError>> {
        self.inner.try_receive_async(channel)
    }

    fn try_receive(&self, channel: &str) -> Result<Message, TryReceiveError> {
        let result = self.inner.try_receive(channel);
        if result.is_ok() {
            moved(false, channel);
        }
        result
    }

    fn group_add_async<'a>(
        &'a self,
        group: &'a str,
        channel: &'a str,
    ) -> BoxFuture<'a, Result<(), LayerError>> {
        self.inner.group_add_async(group, channel)
    }

    fn group_discard_async<'a>(
        &'a self,
        group: &'a str,
        channel: &'a str,
    ) -> BoxFuture<'a, Result<(), LayerError>> {
        self.inner.group_discard_async(group, channel)
    }

    fn group_send_async<'a>(
        &'a self,
        group: &'a str,
        message: Message,
    ) -> BoxFuture<'a, Result<GroupSendReport, LayerError>> {
        let span_message = message.clone();
        let future: BoxFuture<'a, _> = Box::pin(async move {
            let start = Instant::now();
            let result = self.inner.group_send_async(group, message).await;
            after_group_send(group, start, &result);
            result
        });
        traced_async("group_send", group, Some(&span_message), future)
    }

    fn group_send(&self, group: &str, message: Message) -> Result<GroupSendReport, LayerError> {
        traced("group_send", group, Some(&message), || {
            let start = Instant::now();
            let result = self.inner.group_send(group, message.clone());
            after_group_send(group, start, &result);
            result
        })
    }

    fn flush_async(&self) -> BoxFuture<'_, Result<(), LayerError>> {
        self.inner.flush_async()
    }

    fn close(&self) {
        self.inner.close();
    }

    fn group_add(&self, group: &str, channel: &str) -> Result<(), LayerError> {
        self.inner.group_add(group, channel)
    }

    fn group_discard(&self, group: &str, channel: &str) -> Result<(), LayerError> {
        self.inner.group_discard(group, channel)
    }

    fn flush(&self) -> Result<(), LayerError> {
        self.inner.flush()
    }
}
