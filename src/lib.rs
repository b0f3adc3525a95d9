//! A channel layer for Rust services.
//!
//! Start with one binary made of separate libraries, give them a *channel layer* to talk over,
//! and move a piece into its own service only when it has earned it: that piece keeps talking
//! over the same channels, now through a network backend. This crate is that layer, with the
//! contract of Django Channels' channel layers: named channels, process-specific channels,
//! groups, a capacity per channel that pushes back on producers, message expiry, at-most-once
//! delivery and FIFO order per channel.
//!
//! # Hello, channels
//!
//! [`InMemoryLayer`] is the embedded default: no server, no feature flag.
//!
//! ```
//! use channel_layer::prelude::*;
//!
//! let layer = InMemoryLayer::default();
//! layer.send("chat.lobby", Message::new("chat.message").with("text", "hello"))?;
//!
//! let msg = layer.receive("chat.lobby")?;
//! assert_eq!(msg.message_type(), Some("chat.message"));
//! assert_eq!(msg.get("text").and_then(Value::as_str), Some("hello"));
//! # Ok::<(), channel_layer::Error>(())
//! ```
//!
//! Every operation is a method of the [`ChannelLayer`] trait, with conveniences in
//! [`ChannelLayerExt`]; `use channel_layer::prelude::*` brings both in. Layers are cheap to
//! clone and share between threads and tasks.
//!
//! # Messages
//!
//! A [`Message`] is a map with string keys, by convention with a `type` key naming what it is.
//! Its values ([`Value`]) are exactly what can cross a network: null, booleans, `i64`, `f64`,
//! strings, bytes (kept distinct from strings), lists and maps. Typed code can skip the dynamic
//! form: any serde type that serializes as a map goes in and out with [`Message::encode`] and
//! [`Message::decode`], or [`ChannelLayerExt::send_typed`] and
//! [`ChannelLayerExt::receive_typed`].
//!
//! ```
//! use channel_layer::prelude::*;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize, Debug, PartialEq)]
//! struct Reserve {
//!     #[serde(rename = "type")]
//!     kind: String,
//!     sku: String,
//!     qty: u32,
//! }
//!
//! let layer = InMemoryLayer::default();
//! let order = Reserve { kind: "inventory.reserve".into(), sku: "tea".into(), qty: 2 };
//! layer.send_typed("inventory.request", &order)?;
//! let got: Reserve = layer.receive_typed("inventory.request")?;
//! assert_eq!(got, order);
//! # Ok::<(), channel_layer::Error>(())
//! ```
//!
//! # Process-specific channels
//!
//! [`ChannelLayer::new_channel`] mints a name like `reply.<process>!<random>` that belongs to
//! this layer: the usual way to get a reply channel or a per-connection inbox. The part before
//! the `!` names the process; the capacity rule that matches the full name bounds all messages
//! queued under that part together.
//!
//! ```
//! use channel_layer::prelude::*;
//!
//! let layer = InMemoryLayer::default();
//! let reply_to = layer.new_channel("reply")?;
//! assert!(reply_to.starts_with("reply.") && reply_to.contains('!'));
//! layer.send(&reply_to, Message::new("pong"))?;
//! assert_eq!(layer.receive(&reply_to)?.message_type(), Some("pong"));
//! # Ok::<(), channel_layer::Error>(())
//! ```
//!
//! # Groups
//!
//! A group is a named set of channels; [`ChannelLayer::group_send`] delivers to every member.
//! It never fails because a member is full: it reports how many members it skipped, and the
//! layer counts them.
//!
//! ```
//! use channel_layer::prelude::*;
//!
//! let layer = InMemoryLayer::default();
//! let (a, b) = (layer.new_channel("ws")?, layer.new_channel("ws")?);
//! layer.group_add("room", &a)?;
//! layer.group_add("room", &b)?;
//! let report = layer.group_send("room", Message::new("chat.message"))?;
//! assert_eq!(report.delivered, 2);
//! assert!(layer.try_receive(&a).is_ok() && layer.try_receive(&b).is_ok());
//! # Ok::<(), channel_layer::Error>(())
//! ```
//!
//! # Capacity and expiry
//!
//! `send` never waits for room. A full channel returns [`SendError::Full`], which hands the
//! message back so the producer can retry, slow down or drop it. Messages nobody receives
//! within the expiry are dropped, counted, and their memory reclaimed.
//!
//! ```
//! use std::time::Duration;
//! use channel_layer::prelude::*;
//! use channel_layer::SendError;
//!
//! let config = LayerConfig::builder()
//!     .capacity(2)
//!     .channel_capacity("http.response!*", 10)
//!     .expiry(Duration::from_secs(30))
//!     .build()?;
//! let layer = InMemoryLayer::new(config);
//! layer.send("jobs", Message::new("job"))?;
//! layer.send("jobs", Message::new("job"))?;
//! match layer.send("jobs", Message::new("job")) {
//!     Err(SendError::Full { channel, capacity, message }) => {
//!         assert_eq!((&*channel, capacity), ("jobs", 2));
//!         assert_eq!(message.message_type(), Some("job")); // handed back
//!     }
//!     other => panic!("expected Full, got {other:?}"),
//! }
//! assert_eq!(layer.metrics().rejected_full, 1);
//! # Ok::<(), channel_layer::Error>(())
//! ```
//!
//! # Blocking and async
//!
//! Every operation has a blocking form for plain threads and an async form
//! (`send_async`, [`ChannelLayerExt::receive_async`], ...) that works on any executor: tokio,
//! smol, `futures::executor`. The crate asks for no runtime of yours: timeouts of async
//! receives are served by one small timer thread, and the `nats` backend runs its client on
//! a two-thread tokio runtime of its own. Async receives are cancel safe: dropping one never
//! loses a message.
//!
//! ```
//! use std::time::Duration;
//! use channel_layer::prelude::*;
//!
//! let layer = InMemoryLayer::default();
//! channel_layer::runtime::block_on(async {
//!     layer.send_async("events", Message::new("tick")).await?;
//!     let msg = layer.receive_timeout_async("events", Duration::from_secs(1)).await?;
//!     assert_eq!(msg.message_type(), Some("tick"));
//!     Ok::<(), channel_layer::Error>(())
//! })?;
//! # Ok::<(), channel_layer::Error>(())
//! ```
//!
//! # Services
//!
//! [`service`] builds request/response on top: a [`service::Worker`] serves a request channel,
//! dispatching by `type`; a [`service::Client`] sends a request with a fresh reply channel and
//! waits for the answer there. Correlation IDs and feature flags follow each request through
//! every service it touches, and timeouts, full channels, error replies and panics are typed
//! errors and counters, never hangs.
//!
//! ```
//! use std::time::Duration;
//! use channel_layer::prelude::*;
//! use channel_layer::service::{Client, Worker};
//!
//! let layer = InMemoryLayer::default();
//! let worker = Worker::builder(layer.clone())
//!     .channel("inventory.request")
//!     .handle("inventory.check", |_ctx, _msg| Ok(Some(Message::new("inventory.ok"))))
//!     .start()?;
//! let reply = Client::new(layer).request(
//!     "inventory.request",
//!     Message::new("inventory.check").with_correlation_id("order-7"),
//!     Duration::from_secs(5),
//! )?;
//! assert_eq!(reply.correlation_id(), Some("order-7"));
//! worker.shutdown(Duration::from_secs(1));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Choosing the backend at run time
//!
//! [`AnyLayer`] wraps any backend behind one type, and [`AnyLayer::from_url`] builds one from a
//! URL, so the same binary runs all-in-one or split across processes by configuration alone.
//! Third-party backends plug into the same constructor with [`register_backend`].
//!
//! ```
//! use channel_layer::prelude::*;
//!
//! // Typically AnyLayer::from_env("CHANNEL_LAYER_URL"), falling back to memory://.
//! let layer = AnyLayer::from_url("memory://?capacity=500&expiry=30")?;
//! layer.send("svc.request", Message::new("ping"))?;
//! # Ok::<(), channel_layer::Error>(())
//! ```
//!
//! # Metrics
//!
//! [`ChannelLayer::metrics`] returns a cheap [`MetricsSnapshot`]: messages sent, received,
//! rejected as full, expired, flushed, group deliveries and skips, and the current number of
//! queued messages, channels and groups. Nothing the layer drops goes uncounted.
//!
//! # Writing a backend
//!
//! Implement [`ChannelLayer`] (the async methods are required; the blocking ones have
//! defaults), wrap it in [`AnyLayer`], and run the conformance suite from the `testing`
//! module (feature `testing`) against it: one macro call runs every case of the contract.
//! The contract itself, and the Redis wire format, are written out in [`contract`].
//!
//! # Redis
//!
//! With the `redis` feature, `redis::RedisLayer` (or `AnyLayer::from_url("redis://...")`)
//! runs the same code over Redis, on the wire compatible with Python's channels_redis 4.x: a
//! Rust service and a Django Channels app share one Redis, its channels, process-specific
//! channels and groups.
//!
//! # NATS
//!
//! With the `nats` feature, `nats::NatsLayer` (or `AnyLayer::from_url("nats://...")`) runs
//! the same code over NATS JetStream, on one server or a cluster, with the server deciding
//! capacity (`SendError::Full`) and which receiver gets each message.
//!
//! # Feature flags
//!
//! | feature | what it adds |
//! |---|---|
//! | *(none)* | the in-memory backend, the trait, messages, metrics, the services toolkit: everything above |
//! | `redis` | the Redis backend, wire compatible with channels_redis 4.x |
//! | `redis-encryption` | Fernet encryption of Redis message bodies (`symmetric_encryption_keys`) |
//! | `redis-tls` | `rediss://` with rustls, and private CAs |
//! | `nats` | the NATS JetStream backend (`nats://`, `tls://`) |
//! | `metrics` | operation latency and counts through the `metrics` facade ([`observe`]) |
//! | `tracing` | `tracing` spans for operations and handled messages ([`observe`]) |
//! | `testing` | `channel_layer::testing`, the conformance suite for backends (its cases grow between releases: not a stable API) |
#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![doc(test(attr(deny(warnings))))]

mod any;
#[cfg(any(feature = "redis", feature = "nats"))]
mod codec;
mod config;
#[doc = include_str!("../docs/contract.md")]
pub mod contract {}
mod error;
pub mod inspect;
mod layer;
mod memory;
pub mod message;
pub mod metrics;
pub mod name;
#[cfg(feature = "nats")]
#[cfg_attr(docsrs, doc(cfg(feature = "nats")))]
pub mod nats;
pub mod observe;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis;
pub mod runtime;
pub mod service;
#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod testing;

pub use crate::any::{AnyLayer, BackendFactory, register_backend};
pub use crate::config::{
    CapacityRule, DEFAULT_CAPACITY, DEFAULT_EXPIRY, DEFAULT_GROUP_EXPIRY,
    DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_MAX_MESSAGE_DEPTH, LayerConfig, LayerConfigBuilder,
    MAX_CAPACITY, MAX_EXPIRY, MAX_GROUP_EXPIRY, MAX_MESSAGE_BYTES, MAX_MESSAGE_DEPTH,
    parse_url_params,
};
pub use crate::error::{
    BackendError, BackendErrorKind, BuildError, Error, LayerError, ReceiveError, SendError,
    TryReceiveError,
};
pub use crate::inspect::Inspection;
pub use crate::layer::{
    BoxFuture, Capabilities, Capability, ChannelLayer, ChannelLayerExt, DEFAULT_CHANNEL_PREFIX,
    GroupSendReport,
};
pub use crate::memory::InMemoryLayer;
pub use crate::message::{Map, Message, MessageError, Str, Value};
pub use crate::metrics::MetricsSnapshot;
pub use crate::name::NameError;

/// README.md's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

/// The traits and types most code needs: `use channel_layer::prelude::*;`.
pub mod prelude {
    pub use crate::{
        AnyLayer, ChannelLayer, ChannelLayerExt, InMemoryLayer, LayerConfig, Message, Value,
    };
}
