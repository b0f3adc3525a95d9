//! A conformance suite for [`ChannelLayer`] backends: ours, and anyone else's.
//!
//! The suite pins the contract described on [`ChannelLayer`] (and in the channel layer
//! specification it follows): valid names, FIFO and at-most-once delivery, capacity and
//! [`SendError::Full`](crate::SendError::Full), process-specific channels each with their own
//! capacity, groups that never fail on a full member, message and group
//! expiry, `flush`, `close`, cancel-safe receives, and metrics that account for every message.
//! Every case builds its layers through a [`Fixture`] and talks to them only through the
//! [`ChannelLayer`] trait, so the same cases run against any backend.
//!
//! # Stability
//!
//! This module is not covered by the crate's semver promise before 1.0, nor by its minor
//! versions after: cases are added as the contract is pinned down more tightly, and a new case
//! can fail a backend that passed the previous release. Pin the crate's version in the
//! `dev-dependencies` that run the suite, and read the changelog when you move it.
//!
//! Each case comes in two forms:
//!
//! - [`cases`]: drives the layer through its **blocking** methods (`send`, `receive_timeout`,
//!   `group_send`, ...), with helper threads where a case needs concurrency.
//! - [`async_cases`]: drives the layer through its **async** methods only (`send_async`,
//!   `receive_until_async`, `group_send_async`, `flush_async`, ...) and waits with
//!   [`crate::runtime::sleep`], so it runs on any executor. Where a case needs concurrency it
//!   starts OS threads that run their own futures with [`crate::runtime::block_on`]; it never
//!   relies on a particular executor's `spawn`.
//!
//! # Running the suite on a backend
//!
//! Write a fixture, a function (or closure) from [`LayerConfig`] to [`AnyLayer`], and hand it to
//! [`conformance_tests!`](crate::conformance_tests) and
//! [`async_conformance_tests!`](crate::async_conformance_tests). Each expands to one `#[test]`
//! per case, so every case passes or fails on its own. Invoke each macro in a module of its own,
//! since the test functions are named after the cases.
//!
//! ```
//! // tests/conformance.rs of a crate that implements `ChannelLayer` (here the in-memory
//! // layer stands in for it). Build it with the `testing` feature of channel-layer.
//! use channel_layer::{AnyLayer, InMemoryLayer, LayerConfig};
//!
//! /// Every call must return a fresh, empty layer of its own that honours `config`. A network
//! /// backend would, for instance, use a new random key prefix or database each time. (Cases
//! /// run in parallel and some flush: if a flush takes every key under its prefix, no prefix
//! /// may start another, as `t1` starts `t12`.)
//! fn fixture(config: LayerConfig) -> AnyLayer {
//!     AnyLayer::new(InMemoryLayer::new(config))
//! }
//!
//! mod blocking {
//!     channel_layer::conformance_tests!(super::fixture);
//! }
//!
//! mod on_executor {
//!     channel_layer::async_conformance_tests!(super::fixture, futures::executor::block_on);
//! }
//! # fn main() {
//! #     channel_layer::testing::cases::send_receive(&fixture);
//! # }
//! ```
//!
//! A single case can also be called directly, which helps when debugging one of them:
//!
//! ```
//! use channel_layer::{AnyLayer, InMemoryLayer, LayerConfig};
//!
//! let fixture = |config: LayerConfig| AnyLayer::new(InMemoryLayer::new(config));
//! channel_layer::testing::cases::fifo_order(&fixture);
//! channel_layer::runtime::block_on(channel_layer::testing::async_cases::fifo_order(&fixture));
//! ```
//!
//! # Capabilities
//!
//! A backend states what it supports in [`ChannelLayer::capabilities`]. A case that needs a
//! capability the backend reports missing returns early and says so on standard error:
//!
//! - `groups`: the cases about `group_add`, `group_discard` and `group_send`;
//! - `flush`: [`cases::flush_empties_everything`];
//! - `receive_any_process_channel`: [`cases::process_specific_foreign_names`], which sends to
//!   and receives on process-specific names written by hand rather than minted by
//!   `new_channel`. Without the capability the case still checks that receiving on such a name
//!   is refused with [`ReceiveError::InvalidName`](crate::ReceiveError::InvalidName).
//! - `exact_gauges`: the gauge checks of the metrics cases (a backend whose messages wait in a
//!   server cannot count them cheaply; its counters are still checked).
//!
//! Nothing else is ever skipped: a capability the backend claims is tested, and parts of a case
//! that need no capability run regardless.
//!
//! # What the suite expects of a fixture
//!
//! Each call to [`Fixture::layer`] returns a new layer that is empty (no messages, no groups,
//! counters at zero), isolated from every other layer the fixture returned, and configured as
//! given: the cases use small capacities (1 to 5), `channel_capacity` rules such as `"tiny"` →
//! 1, message expiries of 200 ms to 1 s and group expiries of about 400 ms. The first case,
//! [`cases::fixture_gives_fresh_isolated_layers`], checks the fixture itself.
//!
//! Timing-sensitive cases measure what actually happened and retry (up to three times) when the
//! machine was too slow for their time window to mean anything, rather than fail spuriously.
//! Every receive the suite makes has a timeout and every helper thread a join limit, so a
//! backend that loses a wake-up fails a case instead of hanging it.
//!
//! # The cases
//!
//! | case | checks |
//! |---|---|
//! | `fixture_gives_fresh_isolated_layers` | a new layer is empty and does not see another's messages |
//! | `send_receive` | a message sent to a channel is received from it, unchanged |
//! | `receive_returns_same_message_bit_for_bit` | every value kind survives: null, bools, `i64` extremes, floats incl. NaN and -0.0, text, bytes, lists, maps, key order |
//! | `typed_messages_round_trip` | a serde type sent with `send_typed` decodes back equal |
//! | `large_message_1mb` | a 1 MiB byte string and a 1 MiB text arrive intact |
//! | `fifo_order` | messages arrive in the order they were sent, per channel |
//! | `try_receive_empty` | `try_receive` reports `Empty`, then takes a message |
//! | `receive_timeout` | an empty channel times out after the timeout, not before |
//! | `send_capacity` | the send past capacity is `Full`, names the channel, hands the message back, changes nothing |
//! | `channel_capacity_rule` | glob and regex `channel_capacity` rules set per-channel capacities |
//! | `full_is_counted_in_metrics` | rejected sends show in `rejected_full` |
//! | `process_specific_send_receive` | `new_channel` names are valid, distinct, and receivable |
//! | `process_specific_channels_have_their_own_capacity` | each `prefix!local` has its own capacity; an unread sibling never starves a live one |
//! | `message_limits_checked_at_send` | the same depth and size limits on every backend, typed errors, the message handed back |
//! | `send_until_waits_for_room` | a waiting send gets through when room is made or after a flush, gives up at its deadline, ends on close |
//! | `send_many_reports_each_message` | a batch send reports each message in order, keeps each channel's order, fails a message alone |
//! | `unread_reply_channels_never_block_new_ones` | 150 reply channels with late replies never block a fresh one |
//! | `group_larger_than_capacity_reaches_every_member` | a group of 300 (and 5,000) channels of one process gets every message at capacity 100 |
//! | `process_specific_foreign_names` | hand-written `p!x` names work (needs `receive_any_process_channel`) |
//! | `invalid_names_rejected` | bad channel, group and prefix names are typed errors naming the name; nothing is sent |
//! | `reserved_key_rejected` | `__asgi_channel__` in a message is `InvalidMessage` |
//! | `groups_basic` | add three, discard one: two receive, the third does not |
//! | `group_add_is_idempotent` | adding twice delivers once |
//! | `group_discard_unknown_is_ok` | discarding what is not there is not an error |
//! | `group_send_never_fails_when_full` | a full member is skipped and counted, never an error |
//! | `group_send_capacity_multiple_channels` | one full member does not stop delivery to the others |
//! | `groups_same_prefix` | members minted with one prefix each receive the group message |
//! | `group_expiry` | membership lapses after `group_expiry`; `group_add` refreshes it |
//! | `message_expiry` | an expired message is never delivered and is counted; later ones are |
//! | `expiry_earliest_message_expires` | only the messages older than expiry are dropped |
//! | `expiry_through_group_send` | the same through `group_send` |
//! | `flush_empties_everything` | messages and groups are gone and counted; receivers keep working |
//! | `close_wakes_blocked_receivers` | `close` wakes waiting receivers with `Closed`; later calls fail `Closed` |
//! | `blocked_receiver_wakes_on_send` | a receiver waiting before the send gets the message |
//! | `cancelled_receive_loses_nothing` | abandoned and timed-out receives never swallow a message |
//! | `concurrent_producers_consumers_exact_accounting` | 4 producers, 4 consumers, a small capacity: every message received once or rejected `Full`, in order per producer |
//! | `concurrent_group_changes_during_group_send` | membership churn during `group_send`: no deadlock, no duplicates |
//! | `many_receivers_one_channel_no_duplicates` | six receivers on one channel share the messages exactly |
//! | `metrics_snapshot_accounting` | every counter as expected; with `exact_gauges`, `sent + group_deliveries == received + expired + flushed + queued_messages` throughout |
//! | `gauges_return_to_zero` | (needs `exact_gauges`) `queued_messages`, `channels` and `groups` go back to zero |

mod driver;
mod macros;
mod scenarios;
mod typed;

use crate::any::AnyLayer;
use crate::config::LayerConfig;
#[cfg(doc)]
use crate::layer::ChannelLayer;

/// Builds the layers the conformance cases run on.
///
/// Implemented for every `Fn(LayerConfig) -> AnyLayer + Send + Sync + 'static`, so a plain
/// function or closure is a fixture:
///
/// ```
/// use channel_layer::testing::Fixture;
/// use channel_layer::{AnyLayer, ChannelLayer, InMemoryLayer, LayerConfig};
///
/// let fixture = |config: LayerConfig| AnyLayer::new(InMemoryLayer::new(config));
/// let layer = fixture.layer(LayerConfig::builder().capacity(3).build()?);
/// assert_eq!(layer.metrics().sent, 0);
/// # Ok::<(), channel_layer::BuildError>(())
/// ```
pub trait Fixture: Send + Sync + 'static {
    /// A fresh, empty layer, isolated from every other layer this fixture returned, that
    /// honours `config` (capacity, `channel_capacity` rules, expiry and group expiry).
    fn layer(&self, config: LayerConfig) -> AnyLayer;
}

impl<F> Fixture for F
where
    F: Fn(LayerConfig) -> AnyLayer + Send + Sync + 'static,
{
    fn layer(&self, config: LayerConfig) -> AnyLayer {
        self(config)
    }
}

/// The blocking form of every conformance case: each drives a layer through the blocking
/// methods of [`ChannelLayer`] and panics when the backend breaks the
/// contract.
///
/// [`conformance_tests!`](crate::conformance_tests) turns each of these into a `#[test]`. The
/// list of cases and what they check is in the [module documentation](crate::testing).
pub mod cases {
    crate::__channel_layer_cases!([crate::testing::macros::blocking_case_fns] {});
}

/// The async form of every conformance case: each drives a layer through the async methods of
/// [`ChannelLayer`] only, waits with [`crate::runtime::sleep`], and panics
/// when the backend breaks the contract. They run on any executor.
///
/// [`async_conformance_tests!`](crate::async_conformance_tests) turns each of these into a
/// `#[test]`. The list of cases and what they check is in the
/// [module documentation](crate::testing).
pub mod async_cases {
    crate::__channel_layer_cases!([crate::testing::macros::async_case_fns] {});
}
