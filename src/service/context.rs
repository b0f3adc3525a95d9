//! [`Context`]: what a handler works with.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::error::RequestError;
use super::request::{Client, decode_reply};
use crate::any::AnyLayer;
use crate::error::{LayerError, SendError};
use crate::layer::{ChannelLayer, GroupSendReport};
use crate::message::{Message, Value};

/// What a handler works with: the message being handled, and a way to send and request on the
/// layer that carries its correlation ID and feature flags along.
///
/// Everything a handler sends through its context is [`Message::caused_by`] the message being
/// handled: it keeps the correlation ID and flags it sets itself and inherits the others, so
/// one piece of work can be followed through every service it touches.
pub struct Context {
    layer: AnyLayer,
    client: Client,
    channel: Arc<str>,
    message: Message,
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("channel", &self.channel)
            .field("message", &self.message)
            .finish_non_exhaustive()
    }
}

impl Context {
    pub(super) fn new(
        layer: AnyLayer,
        client: Client,
        channel: Arc<str>,
        message: Message,
    ) -> Self {
        Context {
            layer,
            client,
            channel,
            message,
        }
    }

    /// The layer the worker runs on, for anything the context has no method for (replies and
    /// sends made through it carry no headers unless you add them with
    /// [`Message::caused_by`]).
    pub fn layer(&self) -> &AnyLayer {
        &self.layer
    }

    /// The worker's client, shared by its threads (its metrics are
    /// [`Worker::client_metrics`](super::Worker::client_metrics)).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The request channel the message came from.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// The message being handled (the handler also gets it by value).
    pub fn message(&self) -> &Message {
        &self.message
    }

    /// The correlation ID of the message being handled. A message that arrived without one was
    /// given a fresh one, so the work it starts can still be followed.
    pub fn correlation_id(&self) -> &str {
        self.message.correlation_id().unwrap_or_default()
    }

    /// Whether the message being handled carries the feature flag `name` set to `true`.
    pub fn flag_on(&self, name: &str) -> bool {
        self.message.flag_on(name)
    }

    /// The value of the feature flag `name` on the message being handled.
    pub fn flag(&self, name: &str) -> Option<&Value> {
        self.message.flag(name)
    }

    /// Sends `message` to `channel`, with the correlation ID and flags of the message being
    /// handled (those `message` does not set itself).
    ///
    /// # Errors
    ///
    /// As [`ChannelLayer::send`].
    pub fn send(&self, channel: &str, message: Message) -> Result<(), SendError> {
        self.layer.send(channel, message.caused_by(&self.message))
    }

    /// Sends `message` to every member of `group`, with the correlation ID and flags of the
    /// message being handled.
    ///
    /// # Errors
    ///
    /// As [`ChannelLayer::group_send`].
    pub fn group_send(&self, group: &str, message: Message) -> Result<GroupSendReport, LayerError> {
        self.layer
            .group_send(group, message.caused_by(&self.message))
    }

    /// Makes a request to another service ([`Client::request`]) with the correlation ID and
    /// flags of the message being handled. Do not request on a channel this worker serves with
    /// one thread: the thread would wait for itself until the timeout.
    ///
    /// # Errors
    ///
    /// As [`Client::request`].
    pub fn request(
        &self,
        channel: &str,
        message: Message,
        timeout: Duration,
    ) -> Result<Message, RequestError> {
        self.client
            .request(channel, message.caused_by(&self.message), timeout)
    }

    /// Makes a typed request to another service ([`Client::request_typed`]) with the
    /// correlation ID and flags of the message being handled.
    ///
    /// # Errors
    ///
    /// As [`Client::request_typed`].
    pub fn request_typed<Req, Resp>(
        &self,
        channel: &str,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, RequestError>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        let message = Message::encode(request).map_err(RequestError::Encode)?;
        decode_reply(self.request(channel, message, timeout)?)
    }
}
