//! Services over a channel layer: request/response, correlation IDs, feature flags, failure.
//!
//! A *service* owns some data and listens on a request channel such as `inventory.request`. A
//! *client* sends it a request carrying a fresh reply channel and waits for the response
//! there. Every request carries a correlation ID that follows it through every service it
//! touches, and feature flags, decided once at the edge, ride along in the same headers
//! ([`crate::message`] describes them: they are plain message keys). Nothing but the layer
//! connects client and service, so the service can move to its own process by changing the
//! layer's URL, and everything here works unchanged on every backend.
//!
//! - [`Worker`] is the service side: threads that take messages from request channels and
//!   dispatch them by `type` to handlers, as Django Channels' consumers do.
//! - [`Client`] is the client side: [`Client::request`] (blocking) and
//!   [`Client::request_async`] (any executor), typed or not.
//! - [`Context`] is what a handler works in: the message, its correlation ID and flags, and
//!   sends and requests that carry them along.
//!
//! # A service in fifteen lines
//!
//! ```
//! use std::{collections::HashMap, sync::Mutex, time::Duration};
//! use channel_layer::prelude::*;
//! use channel_layer::service::{Client, Worker};
//!
//! let layer = InMemoryLayer::default();
//! let stock = Mutex::new(HashMap::from([("tea".to_owned(), 3)]));
//! let inventory = Worker::builder(layer.clone())
//!     .channel("inventory.request")
//!     .handle("inventory.reserve", move |_ctx, msg| {
//!         let sku = msg.get("sku").and_then(Value::as_str).ok_or("no sku")?;
//!         let mut stock = stock.lock().map_err(|_| "stock lock poisoned")?;
//!         let left = stock.get_mut(sku).ok_or_else(|| format!("unknown sku {sku}"))?;
//!         *left -= 1;
//!         Ok(Some(Message::new("inventory.reserved").with("left", *left)))
//!     })
//!     .start()?;
//!
//! let client = Client::new(layer);
//! let request = Message::new("inventory.reserve").with("sku", "tea");
//! let reply = client.request("inventory.request", request, Duration::from_secs(5))?;
//! assert_eq!(reply.get("left").and_then(Value::as_i64), Some(2));
//! inventory.shutdown(Duration::from_secs(1));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The handler returns `Ok(Some(reply))` to answer a request: the worker sends the reply to
//! the request's reply channel with the request's correlation ID and flags. A handler for a
//! one-way message returns `Ok(None)`. Errors convert into a [`HandlerError`] with `?`.
//!
//! # Calling a service, and what can go wrong
//!
//! Design for failure: a service can be slow, overloaded, broken or gone, and each of those
//! is a distinct [`RequestError`]:
//!
//! | what happened | error | what to do |
//! |---|---|---|
//! | no reply in time | [`RequestError::Timeout`] | retry, or degrade |
//! | the request channel is full | [`RequestError::Full`] (hands the request back) | back off |
//! | the service could not serve it | [`RequestError::Service`] | report it |
//!
//! A full request channel means the service is overloaded or not running: the layer's
//! capacity pushes back instead of letting requests pile up. A service that cannot serve a
//! request answers with an [`ERROR_TYPE`] reply, which the client turns into
//! [`RequestError::Service`].
//!
//! ```
//! use std::time::Duration;
//! use channel_layer::prelude::*;
//! use channel_layer::service::{Client, RequestError, Worker};
//!
//! const WAIT: Duration = Duration::from_secs(5);
//! let layer = InMemoryLayer::default();
//! let worker = Worker::builder(layer.clone())
//!     .channel("payments.request")
//!     .handle("payments.charge", |_ctx, _msg| Err("card declined".into()))
//!     .start()?;
//! let client = Client::new(layer);
//!
//! match client.request("payments.request", Message::new("payments.charge"), WAIT) {
//!     Err(RequestError::Service { error, .. }) => assert_eq!(error, "card declined"),
//!     other => panic!("expected a service error, got {other:?}"),
//! }
//! // A type the service has no handler for is an error reply too, never a hang.
//! let refund = client.request("payments.request", Message::new("payments.refund"), WAIT);
//! assert!(refund.unwrap_err().is_service());
//!
//! let m = worker.shutdown(WAIT).metrics;
//! assert_eq!((m.errors, m.unknown_type), (1, 1));
//! assert_eq!(client.metrics().service_errors, 2);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! A handler that panics is caught: the worker counts it, answers with an error reply, and
//! keeps serving. A reply that arrives after its request timed out goes to that request's own
//! reply channel, so it can never reach another caller; the client drops it and counts it in
//! [`ClientMetrics::late_replies`].
//!
//! # Correlation IDs follow the work
//!
//! A request keeps the correlation ID it carries, or gets a fresh one. A handler that calls
//! another service through its [`Context`] passes its own correlation ID and flags on, so the
//! ID set at the edge shows up in every service the work touches (log it, and one search finds
//! the whole story).
//!
//! ```
//! use std::time::Duration;
//! use channel_layer::prelude::*;
//! use channel_layer::service::{Client, Worker};
//!
//! const WAIT: Duration = Duration::from_secs(5);
//! let layer = InMemoryLayer::default();
//! // Pricing reads the flag, and answers with the correlation ID it saw.
//! let pricing = Worker::builder(layer.clone())
//!     .channel("pricing.request")
//!     .handle("pricing.quote", |ctx, _msg| {
//!         let cents = if ctx.flag_on("sale") { 200 } else { 250 };
//!         let quote = Message::new("pricing.quoted").with("cents", cents);
//!         Ok(Some(quote.with("pricing_saw", ctx.correlation_id())))
//!     })
//!     .start()?;
//! // Orders asks pricing through its context, which passes the ID and flags on.
//! let orders = Worker::builder(layer.clone())
//!     .channel("orders.request")
//!     .handle("orders.create", |ctx, _msg| {
//!         let quote = ctx.request("pricing.request", Message::new("pricing.quote"), WAIT)?;
//!         Ok(Some(quote.with("type", "orders.created")))
//!     })
//!     .start()?;
//!
//! // The edge decides the ID and the flags, once.
//! let request = Message::new("orders.create")
//!     .with_correlation_id("order-42")
//!     .with_flag("sale", true);
//! let reply = Client::new(layer).request("orders.request", request, WAIT)?;
//! assert_eq!(reply.correlation_id(), Some("order-42"));
//! assert_eq!(reply.get("pricing_saw").and_then(Value::as_str), Some("order-42"));
//! assert_eq!(reply.get("cents").and_then(Value::as_i64), Some(200));
//! orders.shutdown(WAIT);
//! pricing.shutdown(WAIT);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Outside a handler, [`Message::caused_by`](crate::Message::caused_by) does the same by hand:
//! `Message::new("audit.log").caused_by(&incoming)`.
//!
//! # Typed requests
//!
//! [`Client::request_typed`] and [`WorkerBuilder::handle_typed`] take serde types that
//! serialize as maps. The request type should carry the `type` the worker dispatches on, as a
//! field with `#[serde(rename = "type")]`.
//!
//! # Reply channels and capacity
//!
//! Reply channels are process-specific (`reply.<process>!<random>`), and the capacity of a
//! process-specific channel bounds all of them together, as the specification says: with the
//! default capacity of 100, a process can have about 100 replies waiting at once. A client
//! with more requests in flight gives its reply channels more room:
//!
//! ```
//! use channel_layer::prelude::*;
//!
//! let config = LayerConfig::builder().channel_capacity("reply.*", 10_000).build()?;
//! let client = channel_layer::service::Client::new(InMemoryLayer::new(config));
//! # let _ = client;
//! # Ok::<(), channel_layer::BuildError>(())
//! ```
//!
//! # Shutting down
//!
//! [`Worker::shutdown`] stops taking messages and lets each thread finish the message in hand:
//! a message a worker has taken is always handled, so nothing is lost between the channel and
//! the handler. Messages still queued stay in the channel for the next worker.
//!
//! # Metrics
//!
//! [`Worker::metrics`] and [`Client::metrics`] count everything that happened, failures
//! included: received, handled, replied, handler errors and panics, unknown and missing types;
//! requests, replies, timeouts, full channels, error replies, late and mismatched replies.

mod context;
mod error;
mod request;
mod worker;

pub use context::Context;
pub use error::{HandlerError, RequestError, StartError};
pub use request::{Client, ClientMetrics, DEFAULT_REPLY_PREFIX, ERROR_KEY, ERROR_TYPE};
pub use worker::{DEFAULT_POLL_INTERVAL, ShutdownReport, Worker, WorkerBuilder, WorkerMetrics};
