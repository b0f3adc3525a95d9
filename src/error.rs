//! Error types, one per operation.
//!
//! Each operation's error has exactly the cases that operation can hit. A failed send hands the
//! message back ([`SendError::into_message`]), so nothing the caller owned is lost. Backend
//! failures are wrapped in the opaque [`BackendError`], so a backend's client library never
//! appears in this crate's API. [`Error`] gathers them all for applications that use `?`.

use std::fmt;
use std::sync::Arc;

use crate::message::{Message, MessageError};
use crate::name::NameError;

// ===== BackendError =====

/// What went wrong inside a backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BackendErrorKind {
    /// The backend's server could not be reached or the connection dropped.
    Connection,
    /// The backend did not answer in time.
    Timeout,
    /// The backend answered something this crate does not understand.
    Protocol,
    /// The backend refused the operation (permissions, configuration, ...).
    Refused,
    /// The server is up but cannot serve now (loading its data after a restart, failing over,
    /// busy with a script); it will pass.
    Unavailable,
    /// A key the operation needs holds data of another type (say, another program's key under
    /// the layer's prefix). Only operations on that channel or group fail.
    WrongType,
    /// Anything else.
    Other,
}

impl fmt::Display for BackendErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendErrorKind::Connection => "connection error",
            BackendErrorKind::Timeout => "timed out",
            BackendErrorKind::Protocol => "protocol error",
            BackendErrorKind::Refused => "refused",
            BackendErrorKind::WrongType => "wrong key type",
            BackendErrorKind::Unavailable => "server unavailable",
            BackendErrorKind::Other => "error",
        })
    }
}

/// A failure inside a backend (a lost connection, a timeout, ...), with its cause.
#[derive(Clone, Debug, thiserror::Error)]
#[error("backend {kind}: {context}")]
pub struct BackendError {
    kind: BackendErrorKind,
    context: String,
    #[source]
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
    /// Whether the request may have reached the backend (and so may have taken effect).
    maybe_applied: bool,
}

impl BackendError {
    /// A backend error with a description of what failed.
    pub fn new(kind: BackendErrorKind, context: impl Into<String>) -> Self {
        BackendError {
            kind,
            context: context.into(),
            source: None,
            maybe_applied: true,
        }
    }

    /// The same error with `prefix` before its description.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn context_prefix(mut self, prefix: &str) -> Self {
        self.context = format!("{prefix}: {}", self.context);
        self
    }

    /// Marks the error as one whose request provably never reached the backend, so retrying
    /// it cannot apply it twice.
    #[must_use]
    pub fn unsent(mut self) -> Self {
        self.maybe_applied = false;
        self
    }

    /// Attaches the underlying cause.
    #[must_use]
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Arc::new(source));
        self
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> BackendErrorKind {
        self.kind
    }

    /// Whether retrying later may succeed: the connection was lost or the backend did not
    /// answer in time. A refusal, a protocol error or a key of the wrong type will fail again.
    pub fn is_transient(&self) -> bool {
        matches!(
            self.kind,
            BackendErrorKind::Connection
                | BackendErrorKind::Timeout
                | BackendErrorKind::Unavailable
        )
    }

    /// Whether the request may have reached the backend and taken effect although its answer
    /// was lost. `false` only when the backend proved it never sent the request (the
    /// connection failed before the request was written), so a retry cannot apply it twice.
    ///
    /// Delivery is at most once: a send that failed with `may_have_applied() == true` may
    /// have been stored and may still be received, and retrying it may deliver it twice.
    pub fn may_have_applied(&self) -> bool {
        self.maybe_applied
    }
}

// ===== SendError =====

/// `send` failed; the message is handed back.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The channel holds as many messages as its capacity allows; the channel is unchanged.
    #[error("channel {channel:?} is full (capacity {capacity})")]
    Full {
        /// The channel that is full (shared with the layer, so reporting it costs no copy).
        channel: Arc<str>,
        /// The capacity that applies to it.
        capacity: usize,
        /// The message that was not sent.
        message: Message,
    },
    /// The channel name is invalid.
    #[error("{error}")]
    InvalidName {
        /// Why the name was rejected.
        #[source]
        error: NameError,
        /// The message that was not sent.
        message: Message,
    },
    /// The message cannot be sent as it is (it carries a reserved key, say).
    #[error("{error}")]
    InvalidMessage {
        /// What is wrong with it.
        #[source]
        error: MessageError,
        /// The message that was not sent.
        message: Message,
    },
    /// The layer was closed.
    #[error("sending on a closed channel layer")]
    Closed {
        /// The message that was not sent.
        message: Message,
    },
    /// The backend failed; the message may or may not have been stored.
    #[error("{error}")]
    Backend {
        /// The backend's failure.
        #[source]
        error: BackendError,
        /// The message.
        message: Message,
    },
}

impl SendError {
    /// The message that was not sent.
    pub fn into_message(self) -> Message {
        match self {
            SendError::Full { message, .. }
            | SendError::InvalidName { message, .. }
            | SendError::InvalidMessage { message, .. }
            | SendError::Closed { message }
            | SendError::Backend { message, .. } => message,
        }
    }

    /// Whether the channel was full ([`SendError::Full`]).
    pub fn is_full(&self) -> bool {
        matches!(self, SendError::Full { .. })
    }

    /// Whether the layer was closed ([`SendError::Closed`]).
    pub fn is_closed(&self) -> bool {
        matches!(self, SendError::Closed { .. })
    }

    /// Whether sending again later may succeed: the backend lost its connection or did not
    /// answer in time ([`BackendError::is_transient`]). A full channel is not transient in this
    /// sense (it is the producer's signal to slow down), nor is a bad name or message.
    ///
    /// Whether a retry is *safe* is [`BackendError::may_have_applied`]: when `true`, the
    /// message may have been stored although the reply was lost, and sending it again may
    /// deliver it twice.
    ///
    /// ```
    /// use channel_layer::SendError;
    ///
    /// fn should_retry(e: &SendError) -> bool {
    ///     match e {
    ///         SendError::Backend { error, .. } => e.is_transient() && !error.may_have_applied(),
    ///         _ => false,
    ///     }
    /// }
    /// # let _ = should_retry;
    /// ```
    pub fn is_transient(&self) -> bool {
        matches!(self, SendError::Backend { error, .. } if error.is_transient())
    }

    /// The backend's failure, if this is [`SendError::Backend`].
    pub fn backend_error(&self) -> Option<&BackendError> {
        match self {
            SendError::Backend { error, .. } => Some(error),
            _ => None,
        }
    }
}

// ===== ReceiveError =====

/// A blocking or async `receive` failed.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReceiveError {
    /// No message arrived before the deadline.
    #[error("timed out waiting on a channel")]
    Timeout,
    /// The layer was closed.
    #[error("receiving on a closed channel layer")]
    Closed,
    /// The channel name is invalid, or names a channel this layer may not receive on.
    #[error(transparent)]
    InvalidName(#[from] NameError),
    /// The backend failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

impl ReceiveError {
    /// Whether the deadline passed ([`ReceiveError::Timeout`]).
    pub fn is_timeout(&self) -> bool {
        matches!(self, ReceiveError::Timeout)
    }

    /// Whether the layer was closed ([`ReceiveError::Closed`]).
    pub fn is_closed(&self) -> bool {
        matches!(self, ReceiveError::Closed)
    }

    /// Whether receiving again later may succeed ([`BackendError::is_transient`]). Receives
    /// change nothing on the backend, so retrying one is always safe.
    pub fn is_transient(&self) -> bool {
        matches!(self, ReceiveError::Backend(e) if e.is_transient())
    }
}

/// `try_receive` found nothing or failed.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TryReceiveError {
    /// The channel holds no deliverable message.
    #[error("receiving on an empty channel")]
    Empty,
    /// The layer was closed.
    #[error("receiving on a closed channel layer")]
    Closed,
    /// The channel name is invalid, or names a channel this layer may not receive on.
    #[error(transparent)]
    InvalidName(#[from] NameError),
    /// The backend failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

impl TryReceiveError {
    /// Whether the channel was empty ([`TryReceiveError::Empty`]).
    pub fn is_empty(&self) -> bool {
        matches!(self, TryReceiveError::Empty)
    }

    /// Whether trying again later may succeed ([`BackendError::is_transient`]).
    pub fn is_transient(&self) -> bool {
        matches!(self, TryReceiveError::Backend(e) if e.is_transient())
    }
}

// ===== LayerError =====

/// A group operation or `flush` failed.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LayerError {
    /// A channel or group name is invalid.
    #[error(transparent)]
    InvalidName(#[from] NameError),
    /// The message cannot be sent as it is.
    #[error(transparent)]
    InvalidMessage(#[from] MessageError),
    /// The backend does not support this operation (see [`crate::Capabilities`]).
    #[error("the backend does not support {0}")]
    Unsupported(&'static str),
    /// The layer was closed.
    #[error("using a closed channel layer")]
    Closed,
    /// The backend failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

impl LayerError {
    /// Whether the operation may succeed if tried again later ([`BackendError::is_transient`]).
    /// Group changes are idempotent (adding twice refreshes the membership), so retrying them
    /// is safe; a `group_send` whose reply was lost ([`BackendError::may_have_applied`]) may
    /// have delivered, and retrying it may deliver twice.
    pub fn is_transient(&self) -> bool {
        matches!(self, LayerError::Backend(e) if e.is_transient())
    }
}

// ===== BuildError =====

/// A layer could not be built from its configuration or URL.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The URL does not parse.
    #[error("invalid channel layer URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// Why it does not parse.
        reason: String,
    },
    /// No backend is registered for the URL's scheme.
    #[error("no channel layer backend for scheme {scheme:?} (known: {known})")]
    UnknownScheme {
        /// The scheme.
        scheme: String,
        /// The schemes that are known, comma separated.
        known: String,
    },
    /// The backend for this scheme exists but its Cargo feature is off.
    #[error("the {scheme:?} backend needs the crate feature {feature:?}")]
    FeatureDisabled {
        /// The scheme.
        scheme: String,
        /// The Cargo feature that enables it.
        feature: &'static str,
    },
    /// A URL query parameter is not one this backend knows.
    #[error("unknown parameter {name:?} for the {scheme:?} backend")]
    UnknownParameter {
        /// The scheme.
        scheme: String,
        /// The unknown parameter.
        name: String,
    },
    /// An option has a value that is not allowed.
    #[error("invalid value {value:?} for {name}: {reason}")]
    InvalidOption {
        /// The option.
        name: String,
        /// Its value as given.
        value: String,
        /// Why it is not allowed.
        reason: String,
    },
    /// The backend could not be set up.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

impl BuildError {
    pub(crate) fn invalid_option(
        name: impl Into<String>,
        value: impl fmt::Display,
        reason: impl Into<String>,
    ) -> Self {
        BuildError::InvalidOption {
            name: name.into(),
            value: value.to_string(),
            reason: reason.into(),
        }
    }
}

// ===== Error =====

/// Any error from this crate, for applications that propagate errors with `?`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// See [`NameError`].
    #[error(transparent)]
    Name(#[from] NameError),
    /// See [`MessageError`].
    #[error(transparent)]
    Message(#[from] MessageError),
    /// See [`SendError`].
    #[error(transparent)]
    Send(#[from] SendError),
    /// See [`ReceiveError`].
    #[error(transparent)]
    Receive(#[from] ReceiveError),
    /// See [`TryReceiveError`].
    #[error(transparent)]
    TryReceive(#[from] TryReceiveError),
    /// See [`LayerError`].
    #[error(transparent)]
    Layer(#[from] LayerError),
    /// See [`BuildError`].
    #[error(transparent)]
    Build(#[from] BuildError),
    /// See [`BackendError`].
    #[error(transparent)]
    Backend(#[from] BackendError),
}
