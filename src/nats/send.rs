//! Sending: one channel, and a whole group under one deadline.

use std::sync::Arc;
use std::time::Instant;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;

use super::api::{FULL, failure, jetstream_code};
use super::{Inner, life_left, rt, subjects};
use crate::codec::AsgiChannel;
use crate::error::{BackendError, BackendErrorKind, LayerError, SendError};
use crate::layer::GroupSendReport;
use crate::message::{Message, MessageError};
use crate::metrics::Counters;
use crate::name::validate_group;

/// What a publish came to.
enum Stored {
    Yes,
    Full,
}

impl Inner {
    /// The headers every message carries: its sender's expiry.
    fn headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            subjects::EXPIRY_HEADER,
            self.config.layer.expiry.as_secs_f64().to_string().as_str(),
        );
        headers
    }

    /// Encodes a message, refusing one the server would not take.
    fn encode(&self, message: &Message) -> Result<Bytes, MessageError> {
        self.config.layer.check_message(message)?;
        let payload = self
            .codec
            .pack(message, AsgiChannel::None)
            .map_err(|e| MessageError::Encode(e.to_string()))?;
        // The server answers a message over its `max_payload` (1 MiB unless configured
        // otherwise) by closing the connection: refuse it here instead.
        let max_bytes = self.client.server_info().max_payload;
        if max_bytes > 0 && payload.len() > max_bytes {
            return Err(MessageError::TooLarge {
                bytes: payload.len(),
                max_bytes,
            });
        }
        Ok(Bytes::from(payload))
    }

    /// Checks a send and encodes the message.
    fn prepare(&self, channel: &str, message: Message) -> Result<(Message, Bytes), SendError> {
        if self.is_closed() {
            return Err(SendError::Closed { message });
        }
        if let Err(error) = crate::name::validate_channel(channel) {
            return Err(SendError::InvalidName { error, message });
        }
        match self.encode(&message) {
            Ok(payload) => Ok((message, payload)),
            Err(error) => Err(SendError::InvalidMessage { error, message }),
        }
    }

    /// Publishes `payload` to `channel` and waits for the stream's acknowledgement, trying once
    /// more after clearing expired messages at the head of a channel that is full; all within
    /// one operation timeout.
    async fn publish(
        self: &Arc<Self>,
        channel: &str,
        payload: Bytes,
    ) -> Result<Stored, BackendError> {
        let deadline = tokio::time::Instant::now() + self.config.operation_timeout;
        let (_, subject) = self.place(channel);
        match self
            .publish_until(&subject, payload.clone(), deadline)
            .await?
        {
            Stored::Full => {}
            stored => return Ok(stored),
        }
        // Expired messages still count against the limit. They are cleared on the runtime, so
        // the clearing finishes and counts what it removed even if this send is dropped or
        // runs out of time meanwhile.
        let inner = self.clone();
        let to = channel.to_owned();
        let clearing = rt::handle()?.spawn(async move {
            let (stream, subject) = inner.place(&to);
            inner.prune(stream, &subject, deadline.into_std()).await
        });
        match tokio::time::timeout_at(deadline, clearing).await {
            Ok(Ok(Ok(cleared))) if cleared > 0 => {}
            Ok(Ok(Err(e))) => return Err(e),
            _ => return Ok(Stored::Full),
        }
        match tokio::time::timeout_at(deadline, self.publish_until(&subject, payload, deadline))
            .await
        {
            Ok(stored) => stored,
            Err(_) => Err(BackendError::new(
                BackendErrorKind::Timeout,
                format!("storing a message on {subject}: no acknowledgement in time"),
            )),
        }
    }

    /// Publishes a message taken earlier back to `channel` (at its end): whether it was
    /// stored.
    pub(super) async fn republish(
        self: &Arc<Self>,
        channel: &str,
        payload: Bytes,
    ) -> Result<bool, BackendError> {
        Ok(matches!(self.publish(channel, payload).await?, Stored::Yes))
    }

    /// Publishes once, and again while the server answers that no stream listens on the
    /// subject, until `deadline`. Nothing was stored then, so trying again cannot duplicate: in
    /// a cluster a stream's interest reaches the other servers a moment after it is created or
    /// after its leader changes, and a publish in between finds no stream.
    async fn publish_until(
        &self,
        subject: &str,
        payload: Bytes,
        deadline: tokio::time::Instant,
    ) -> Result<Stored, BackendError> {
        let mut pause = std::time::Duration::from_millis(5);
        loop {
            match self.publish_once(subject, payload.clone()).await {
                Err(e)
                    if e.kind() == BackendErrorKind::Unavailable
                        && !e.may_have_applied()
                        && tokio::time::Instant::now() + pause < deadline =>
                {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(std::time::Duration::from_millis(200));
                }
                stored => return stored,
            }
        }
    }

    async fn publish_once(&self, subject: &str, payload: Bytes) -> Result<Stored, BackendError> {
        let ack = self
            .js
            .publish_with_headers(subject.to_owned(), self.headers(), payload)
            .await
            .map_err(|e| {
                failure(
                    BackendErrorKind::Connection,
                    format!("publishing to {subject}"),
                    e,
                )
                .unsent()
            })?;
        acknowledged(subject, ack.await)
    }

    /// Drops the expired messages at the head of a subject, counting them; how many it dropped.
    /// Reading stops at `deadline`.
    pub(super) async fn prune(
        &self,
        stream: &stream::Stream,
        subject: &str,
        deadline: Instant,
    ) -> Result<u64, BackendError> {
        let mut last_expired = None;
        let mut from = 0;
        while Instant::now() < deadline {
            let Some(found) = self.read_from(stream, subject, from).await? else {
                break;
            };
            if life_left(&found, self.config.layer.expiry) > 0.0 {
                break;
            }
            last_expired = Some(found.sequence);
            from = found.sequence + 1;
        }
        let Some(last) = last_expired else {
            return Ok(0);
        };
        // Whatever the purge removed up to the last expired message was expired.
        let removed = self.purge_through(stream, subject, last).await?;
        Counters::add(&self.counters.expired, removed);
        Ok(removed)
    }

    pub(super) async fn send(
        self: &Arc<Self>,
        channel: &str,
        message: Message,
    ) -> Result<(), SendError> {
        let (message, payload) = self.prepare(channel, message)?;
        let stored = match rt::inline(self.publish(channel, payload)) {
            Ok(publishing) => publishing.await,
            Err(e) => Err(e),
        };
        match stored {
            Ok(Stored::Yes) => {
                Counters::add(&self.counters.sent, 1);
                Ok(())
            }
            Ok(Stored::Full) => {
                Counters::add(&self.counters.rejected_full, 1);
                Err(SendError::Full {
                    channel: channel.into(),
                    capacity: self.config.layer.capacity_for(channel),
                    message,
                })
            }
            Err(error) => Err(SendError::Backend {
                error: self.backend_error(error),
                message,
            }),
        }
    }

    pub(super) async fn group_send(
        self: &Arc<Self>,
        group: &str,
        message: Message,
    ) -> Result<GroupSendReport, LayerError> {
        if self.is_closed() {
            return Err(LayerError::Closed);
        }
        validate_group(group)?;
        let payload = self.encode(&message)?;
        let inner = self.clone();
        let group = group.to_owned();
        let report = rt::run(async move { inner.deliver_to_group(&group, payload).await })
            .await
            .map_err(|e| LayerError::Backend(self.backend_error(e)))?;
        self.counters.group_send(&report);
        Ok(report)
    }

    /// Lists the members, publishes to every one of them at once (as [`Inner::publish`]) and
    /// collects the acknowledgements, all within one operation timeout: a member whose
    /// acknowledgement has not come by then is skipped as failed (its message may still be
    /// stored).
    async fn deliver_to_group(
        self: &Arc<Self>,
        group: &str,
        payload: Bytes,
    ) -> Result<GroupSendReport, BackendError> {
        let deadline = tokio::time::Instant::now() + self.config.operation_timeout;
        let members = self.members(group).await?;
        let mut report = GroupSendReport::default();
        let total = members.len();
        let mut pending = FuturesUnordered::new();
        for member in members {
            let inner = self.clone();
            let payload = payload.clone();
            pending.push(async move { inner.publish(&member, payload).await });
        }
        let collected = tokio::time::timeout_at(deadline, async {
            while let Some(stored) = pending.next().await {
                match stored {
                    Ok(Stored::Yes) => report.delivered += 1,
                    Ok(Stored::Full) => report.skipped_full += 1,
                    Err(_) => report.skipped_failed += 1,
                }
            }
        })
        .await;
        if collected.is_err() {
            // Out of time: whatever has not answered is skipped as failed.
            report.skipped_failed = total - report.delivered - report.skipped_full;
        }
        Ok(report)
    }
}

/// What a publish's acknowledgement says.
fn acknowledged(
    subject: &str,
    ack: Result<jetstream::publish::PublishAck, jetstream::context::PublishError>,
) -> Result<Stored, BackendError> {
    use jetstream::context::PublishErrorKind as Kind;
    match ack {
        Ok(_) => Ok(Stored::Yes),
        Err(e) if jetstream_code(&e) == Some(FULL) => Ok(Stored::Full),
        Err(e) => {
            let (kind, unsent) = match e.kind() {
                Kind::TimedOut => (BackendErrorKind::Timeout, false),
                Kind::StreamNotFound => (BackendErrorKind::Unavailable, true),
                Kind::BrokenPipe => (BackendErrorKind::Connection, true),
                _ => (BackendErrorKind::Refused, true),
            };
            let error = failure(kind, format!("storing a message on {subject}"), e);
            Err(if unsent { error.unsent() } else { error })
        }
    }
}
