//! The services toolkit's error types: [`RequestError`] for callers, [`HandlerError`] for
//! handlers, [`StartError`] for starting a worker.

use std::fmt;
use std::time::Duration;

use crate::error::{LayerError, ReceiveError, SendError};
use crate::message::{Message, MessageError};
use crate::name::NameError;

// ===== RequestError =====

/// A request did not get a usable reply.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// No reply arrived within the timeout. A reply that comes later is dropped and counted in
    /// [`late_replies`](super::ClientMetrics::late_replies); it is never delivered to another
    /// request.
    #[error("no reply from {channel:?} within {timeout:?}")]
    Timeout {
        /// The request channel.
        channel: String,
        /// How long the client waited.
        timeout: Duration,
    },
    /// The request channel was full, so the request was not sent: the service is overloaded
    /// (or not running). The request is handed back, with its correlation ID set.
    #[error("request channel {channel:?} is full")]
    Full {
        /// The request channel.
        channel: String,
        /// The request that was not sent.
        message: Message,
    },
    /// The service answered with an error reply ([`ERROR_TYPE`](super::ERROR_TYPE)).
    #[error("service error: {error}")]
    Service {
        /// The reason the service gave.
        error: String,
        /// The whole error reply.
        reply: Message,
    },
    /// The typed request does not encode as a message (it must serialize as a map).
    #[error(transparent)]
    Encode(MessageError),
    /// The reply does not decode into the expected response type.
    #[error("{error}")]
    Decode {
        /// Why it does not decode.
        #[source]
        error: MessageError,
        /// The reply as it arrived.
        reply: Message,
    },
    /// The request could not be sent for another reason than a full channel (an invalid
    /// name, a closed layer, a backend failure); the error hands the request back.
    #[error(transparent)]
    Send(SendError),
    /// Waiting for the reply failed (a closed layer, a backend failure).
    #[error(transparent)]
    Receive(ReceiveError),
}

impl RequestError {
    /// Whether no reply arrived in time ([`RequestError::Timeout`]).
    pub fn is_timeout(&self) -> bool {
        matches!(self, RequestError::Timeout { .. })
    }

    /// Whether the request channel was full ([`RequestError::Full`]).
    pub fn is_full(&self) -> bool {
        matches!(self, RequestError::Full { .. })
    }

    /// Whether the service answered with an error reply ([`RequestError::Service`]).
    pub fn is_service(&self) -> bool {
        matches!(self, RequestError::Service { .. })
    }

    /// A short name for metric labels (`error.type`).
    pub(super) fn kind_name(&self) -> &'static str {
        match self {
            RequestError::Timeout { .. } => "timeout",
            RequestError::Full { .. } => "full",
            RequestError::Service { .. } => "service_error",
            RequestError::Encode(_) => "encode",
            RequestError::Decode { .. } => "decode",
            RequestError::Send(_) => "send",
            RequestError::Receive(_) => "receive",
        }
    }
}

// ===== HandlerError =====

/// A handler could not serve a message. The worker counts it in
/// [`WorkerMetrics::errors`](super::WorkerMetrics::errors) and, if the message was a request,
/// answers with an [`ERROR_TYPE`](super::ERROR_TYPE) reply carrying this text.
///
/// It converts from strings and from this crate's errors, so `?` works in handlers.
///
/// # Examples
///
/// ```
/// use channel_layer::service::HandlerError;
///
/// let e = HandlerError::new(format_args!("no such sku: {}", "tea"));
/// assert_eq!(e.to_string(), "no such sku: tea");
/// assert_eq!(HandlerError::from("out of stock").message(), "out of stock");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HandlerError {
    message: String,
}

impl HandlerError {
    /// An error with this text.
    pub fn new(message: impl fmt::Display) -> Self {
        HandlerError {
            message: message.to_string(),
        }
    }

    /// The text, as the error reply carries it.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for HandlerError {}

impl From<String> for HandlerError {
    fn from(message: String) -> Self {
        HandlerError { message }
    }
}

impl From<&str> for HandlerError {
    fn from(message: &str) -> Self {
        HandlerError::new(message)
    }
}

impl From<MessageError> for HandlerError {
    fn from(error: MessageError) -> Self {
        HandlerError::new(error)
    }
}

impl From<RequestError> for HandlerError {
    fn from(error: RequestError) -> Self {
        HandlerError::new(error)
    }
}

impl From<SendError> for HandlerError {
    fn from(error: SendError) -> Self {
        HandlerError::new(error)
    }
}

impl From<LayerError> for HandlerError {
    fn from(error: LayerError) -> Self {
        HandlerError::new(error)
    }
}

impl From<crate::Error> for HandlerError {
    fn from(error: crate::Error) -> Self {
        HandlerError::new(error)
    }
}

// ===== StartError =====

/// [`WorkerBuilder::start`](super::WorkerBuilder::start) failed; no thread is left running.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// No request channel was given ([`WorkerBuilder::channel`](super::WorkerBuilder::channel)).
    #[error("a worker needs at least one channel")]
    NoChannels,
    /// `threads(0)`.
    #[error("a worker needs at least one thread per channel")]
    NoThreads,
    /// A request channel name is invalid.
    #[error(transparent)]
    InvalidName(#[from] NameError),
    /// The operating system refused a thread.
    #[error("cannot spawn a worker thread: {0}")]
    Spawn(#[source] std::io::Error),
}
