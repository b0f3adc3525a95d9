//! The body of every case, written once for both forms against a [`Driver`](super::driver::Driver).
//!
//! Each body is an `async fn(Ctx<'_>)` named after its case; `testing::cases` runs it through
//! the blocking API and `testing::async_cases` through the async one.

mod basic;
mod capacity;
mod concurrency;
mod expiry;
mod groups;
mod lifecycle;
mod metrics;
mod names;

pub(crate) use self::basic::{
    fifo_order, fixture_gives_fresh_isolated_layers, large_message_1mb,
    message_limits_checked_at_send, receive_returns_same_message_bit_for_bit, receive_timeout,
    send_receive, try_receive_empty, typed_messages_round_trip,
};
pub(crate) use self::capacity::{
    channel_capacity_rule, full_is_counted_in_metrics,
    group_larger_than_capacity_reaches_every_member,
    process_specific_channels_have_their_own_capacity, send_capacity,
    send_many_reports_each_message, send_until_waits_for_room,
    unread_reply_channels_never_block_new_ones,
};
pub(crate) use self::concurrency::{
    concurrent_group_changes_during_group_send, concurrent_producers_consumers_exact_accounting,
    many_receivers_one_channel_no_duplicates,
};
pub(crate) use self::expiry::{
    expiry_earliest_message_expires, expiry_through_group_send, group_expiry, message_expiry,
};
pub(crate) use self::groups::{
    group_add_is_idempotent, group_discard_unknown_is_ok, group_send_capacity_multiple_channels,
    group_send_never_fails_when_full, groups_basic, groups_same_prefix,
};
pub(crate) use self::lifecycle::{
    blocked_receiver_wakes_on_send, cancelled_receive_loses_nothing, close_wakes_blocked_receivers,
    flush_empties_everything,
};
pub(crate) use self::metrics::{gauges_return_to_zero, metrics_snapshot_accounting};
pub(crate) use self::names::{
    invalid_names_rejected, process_specific_foreign_names, process_specific_send_receive,
    reserved_key_rejected,
};
