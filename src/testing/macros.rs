//! The one list of cases, and the macros that turn it into functions and tests.
//!
//! `__channel_layer_cases!` holds every case name with its one-line description and hands the
//! list to a callback macro. The `cases` and `async_cases` modules and both exported test macros
//! are generated from it, so the four can never disagree about which cases exist.

/// Calls `$callback! { $args name = "doc"; ... }` with every conformance case.
#[doc(hidden)]
#[macro_export]
macro_rules! __channel_layer_cases {
    ([$($callback:tt)*] $args:tt) => {
        $($callback)*! {
            $args
            fixture_gives_fresh_isolated_layers =
                "Each layer the fixture returns starts empty, with counters at zero, and does not \
                 see the messages of another.";
            send_receive =
                "A message sent to a channel is received from that channel, equal to what was sent.";
            receive_returns_same_message_bit_for_bit =
                "Every kind of value comes back bit for bit: null, booleans, `i64::MIN`/`MAX`, \
                 floats including NaN payloads, infinities and -0.0, non-ASCII text, bytes (kept \
                 distinct from text), nested lists and maps, and the order of keys.";
            typed_messages_round_trip =
                "A serde type sent as a typed message is received and decoded back to an equal \
                 value.";
            large_message_1mb =
                "A message carrying a 1 MiB byte string, and one carrying a 1 MiB text, arrive \
                 intact.";
            fifo_order =
                "Messages on a channel are received in the order they were sent, also when sends \
                 and receives interleave and when two channels are used side by side.";
            try_receive_empty =
                "`try_receive` on an empty channel reports `Empty` at once, and takes a message \
                 when there is one.";
            receive_timeout =
                "A receive on an empty channel fails with `Timeout` after its timeout (not \
                 before), and a deadline in the past times out at once.";
            send_capacity =
                "With capacity 3 the fourth send fails with `Full`, naming the channel and its \
                 capacity and handing the message back; the three queued messages are unchanged \
                 and received in order, and room frees up as they are received.";
            channel_capacity_rule =
                "`channel_capacity` glob and regex rules give matching channels their own \
                 capacity; other channels keep the default.";
            full_is_counted_in_metrics =
                "Every send rejected as `Full` is counted in `rejected_full`, and not in `sent`.";
            process_specific_send_receive =
                "`new_channel` mints valid, distinct `prefix...!local` names that can be sent to \
                 and received on, also from two threads at once.";
            process_specific_channels_have_their_own_capacity =
                "Each process-specific channel has its own capacity: with capacity 3, a channel \
                 holding three is `Full`, while a sibling being received on gets every message \
                 it is sent; an unread sibling keeps at most three, and whatever it could not \
                 keep is refused or counted once as `overflowed`.";
            message_limits_checked_at_send =
                "Every backend checks the same limits at send: a message at the default depth \
                 limit (128) arrives intact, one level more is `InvalidMessage` (`TooDeep`) with \
                 the message handed back; past `max_message_bytes` it is `TooLarge`, for `send` \
                 and `group_send`; nothing refused is delivered.";
            send_until_waits_for_room =
                "`send_until` on a full channel waits: it gets through when a receiver makes \
                 room or after a flush, fails with `Full` (the message handed back, counted) \
                 once its deadline passes and not before, and with `Closed` when the layer is \
                 closed meanwhile.";
            send_many_reports_each_message =
                "`send_many` with capacity 3 reports each message in the order given: those \
                 that fit are stored, each channel's in the batch's order, an invalid name and \
                 the messages past the capacity fail alone with their message handed back, and \
                 the counters show both; `group_send_many` reports each group's send, an \
                 invalid group alone failing.";
            unread_reply_channels_never_block_new_ones =
                "150 reply channels of one layer each holding an unread message (late replies, \
                 more than the capacity of 100 together) never block a fresh reply channel: it \
                 gets its message at once.";
            group_larger_than_capacity_reaches_every_member =
                "A group of 300 (and of 5,000) channels minted by one layer gets every message \
                 at the default capacity of 100: no member is skipped. Needs groups.";
            process_specific_foreign_names =
                "Hand-written process-specific names (`p!a`, `p!b`) can be sent to and received \
                 on, each with its own capacity. Needs \
                 `receive_any_process_channel`; without it, receiving on such a name must be \
                 refused as an invalid name.";
            invalid_names_rejected =
                "Invalid channel names, group names and prefixes are refused by every operation \
                 with a typed error naming the name, without waiting, and nothing is sent.";
            reserved_key_rejected =
                "A message carrying the reserved key `__asgi_channel__` is refused with \
                 `InvalidMessage` by `send` and `group_send`, and nothing is delivered.";
            groups_basic =
                "Three channels added to a group, one discarded: `group_send` reaches the two \
                 members and not the third, and reports two deliveries.";
            group_add_is_idempotent =
                "Adding a channel to a group twice makes it a member once: it gets one copy.";
            group_discard_unknown_is_ok =
                "Discarding from an unknown group, or a channel that is not a member, succeeds; \
                 `group_send` to an unknown group delivers to nobody and succeeds.";
            group_send_never_fails_when_full =
                "Five `group_send`s to a single member of capacity 3 all succeed: the first three \
                 are delivered in order, the last two are skipped and counted in the report and \
                 in `group_skipped_full`.";
            group_send_capacity_multiple_channels =
                "One member filling up does not stop delivery to another (channels_redis \
                 `test_group_send_capacity_multiple_channels`).";
            groups_same_prefix =
                "Three channels minted with the same prefix, all in one group, each receive the \
                 group message.";
            group_expiry =
                "A membership lapses `group_expiry` after the channel's latest `group_add`; \
                 adding again refreshes it.";
            message_expiry =
                "A message older than the expiry is never delivered: the receive times out and \
                 `expired` counts it. A message sent afterwards is delivered.";
            expiry_earliest_message_expires =
                "Of messages sent at different times, only those older than the expiry are \
                 dropped; younger ones are delivered in order.";
            expiry_through_group_send =
                "Messages delivered by `group_send` expire like any other, per member.";
            flush_empties_everything =
                "`flush` drops every message and membership and counts the messages in \
                 `flushed`; a receiver waiting through the flush, and later sends and receives, \
                 still work.";
            close_wakes_blocked_receivers =
                "`close` promptly wakes every waiting receiver with `Closed`; afterwards every \
                 operation fails with `Closed` and `send` hands the message back.";
            blocked_receiver_wakes_on_send =
                "A receiver already waiting when a message is sent gets it, whatever the delay \
                 between the two.";
            cancelled_receive_loses_nothing =
                "Receives that are abandoned or time out never take a message with them: every \
                 message sent is received exactly once, in order.";
            concurrent_producers_consumers_exact_accounting =
                "Four producers and four consumers on one small channel: every message is \
                 either received exactly once or rejected `Full` (never retried), each \
                 consumer sees each producer's messages in order, and the metrics agree.";
            concurrent_group_changes_during_group_send =
                "Members added and discarded while other threads `group_send`: nothing \
                 deadlocks, no member gets a message twice or out of order, and the reports \
                 account for every delivery.";
            many_receivers_one_channel_no_duplicates =
                "Six receivers on one channel share its messages: each message goes to exactly \
                 one of them.";
            metrics_snapshot_accounting =
                "Through sends, receives, rejections, group sends, expiry and flush, \
                 `sent + group_deliveries == received + expired + flushed + queued_messages`, \
                 and each counter has the expected value.";
            gauges_return_to_zero =
                "`queued_messages`, `channels` and `groups` count what is there, and return to \
                 zero once everything is received and every member discarded.";
        }
    };
}

/// Defines the blocking case functions of `testing::cases`.
macro_rules! blocking_case_fns {
    ({} $($name:ident = $doc:literal;)*) => {$(
        #[doc = $doc]
        pub fn $name(fixture: &dyn $crate::testing::Fixture) {
            $crate::testing::driver::run_blocking(
                fixture,
                stringify!($name),
                $crate::testing::scenarios::$name,
            );
        }
    )*};
}
pub(crate) use blocking_case_fns;

/// Defines the async case functions of `testing::async_cases`.
macro_rules! async_case_fns {
    ({} $($name:ident = $doc:literal;)*) => {$(
        #[doc = $doc]
        pub async fn $name(fixture: &dyn $crate::testing::Fixture) {
            $crate::testing::driver::run_async(
                fixture,
                stringify!($name),
                $crate::testing::scenarios::$name,
            )
            .await;
        }
    )*};
}
pub(crate) use async_case_fns;

/// Expands to one `#[test]` per conformance case, each running the blocking form of the case
/// ([`testing::cases`](crate::testing::cases)) on layers built by `fixture`.
///
/// `fixture` is any expression whose value implements
/// [`Fixture`](crate::testing::Fixture), such as a function or closure from
/// [`LayerConfig`](crate::LayerConfig) to [`AnyLayer`](crate::AnyLayer). It is evaluated once
/// per test; a closure works too, such as
/// `conformance_tests!(|config: LayerConfig| AnyLayer::new(MyLayer::new(config)))` (annotate the
/// argument when the body does not pin its type down). Invoke the macro inside a module of its
/// own: the tests are named after the cases. Needs the `testing` feature.
///
/// A fixture that needs something that may be missing (a server) can say so with
/// `conformance_tests!(fixture, unavailable = check)`, where `check()` returns `None` when the
/// cases can run and `Some(reason)` (anything `Display`) when they cannot: each case then
/// prints `<case>: skipped: <reason>` and returns, so a missing server skips the cases that
/// need it and nothing else.
///
/// # Examples
///
/// ```
/// mod memory_conformance {
///     use channel_layer::{AnyLayer, InMemoryLayer, LayerConfig};
///
///     pub fn fixture(config: LayerConfig) -> AnyLayer {
///         AnyLayer::new(InMemoryLayer::new(config))
///     }
///
///     channel_layer::conformance_tests!(fixture);
/// }
///
/// # fn main() {
/// #     // Doc tests do not run `#[test]` functions; run one case by hand instead.
/// #     channel_layer::testing::cases::send_receive(&memory_conformance::fixture);
/// # }
/// ```
#[macro_export]
macro_rules! conformance_tests {
    ($fixture:expr $(,)?) => {
        $crate::__channel_layer_cases!([$crate::__channel_layer_blocking_tests] {
            $fixture; || ::core::option::Option::<&str>::None
        });
    };
    ($fixture:expr, unavailable = $unavailable:expr $(,)?) => {
        $crate::__channel_layer_cases!([$crate::__channel_layer_blocking_tests] {
            $fixture; $unavailable
        });
    };
}

/// Expands to one `#[test]` per conformance case, each running the async form of the case
/// ([`testing::async_cases`](crate::testing::async_cases)) on layers built by `fixture`, driven
/// to completion by `block_on`.
///
/// `fixture` is as for [`conformance_tests!`](crate::conformance_tests). `block_on` is any
/// expression that can be called with a future and runs it to completion on the current
/// thread: `futures::executor::block_on`, a closure such as `|fut| runtime.block_on(fut)` for a
/// tokio runtime, or [`channel_layer::runtime::block_on`](crate::runtime::block_on). Both
/// expressions are evaluated once per test. Invoke the macro inside a module of its own. Needs
/// the `testing` feature.
///
/// # Examples
///
/// ```
/// mod memory_conformance_async {
///     use channel_layer::{AnyLayer, InMemoryLayer, LayerConfig};
///
///     pub fn fixture(config: LayerConfig) -> AnyLayer {
///         AnyLayer::new(InMemoryLayer::new(config))
///     }
///
///     // On tokio: `|fut| runtime().block_on(fut)` for some `runtime()` returning a runtime.
///     channel_layer::async_conformance_tests!(fixture, channel_layer::runtime::block_on);
/// }
/// # fn main() {
/// #     let case = channel_layer::testing::async_cases::send_receive(&memory_conformance_async::fixture);
/// #     channel_layer::runtime::block_on(case);
/// # }
/// ```
#[macro_export]
macro_rules! async_conformance_tests {
    ($fixture:expr, $block_on:expr $(,)?) => {
        $crate::__channel_layer_cases!([$crate::__channel_layer_async_tests] {
            $fixture, $block_on; || ::core::option::Option::<&str>::None
        });
    };
    ($fixture:expr, $block_on:expr, unavailable = $unavailable:expr $(,)?) => {
        $crate::__channel_layer_cases!([$crate::__channel_layer_async_tests] {
            $fixture, $block_on; $unavailable
        });
    };
}

/// The test functions of [`conformance_tests!`](crate::conformance_tests).
#[doc(hidden)]
#[macro_export]
macro_rules! __channel_layer_blocking_tests {
    ({ $fixture:expr; $unavailable:expr } $($name:ident = $doc:literal;)*) => {$(
        #[doc = $doc]
        #[test]
        fn $name() {
            if let ::core::option::Option::Some(why) = ($unavailable)() {
                // Past the test harness's capture, so the skip shows in its output.
                let _ = ::std::io::Write::write_fmt(
                    &mut ::std::io::stderr(),
                    ::core::format_args!("{}: skipped: {}\n", ::core::stringify!($name), why),
                );
                return;
            }
            let fixture = $fixture;
            $crate::testing::cases::$name(&fixture);
        }
    )*};
}

/// The test functions of [`async_conformance_tests!`](crate::async_conformance_tests).
#[doc(hidden)]
#[macro_export]
macro_rules! __channel_layer_async_tests {
    ({ $fixture:expr, $block_on:expr; $unavailable:expr } $($name:ident = $doc:literal;)*) => {$(
        #[doc = $doc]
        #[test]
        fn $name() {
            if let ::core::option::Option::Some(why) = ($unavailable)() {
                // Past the test harness's capture, so the skip shows in its output.
                let _ = ::std::io::Write::write_fmt(
                    &mut ::std::io::stderr(),
                    ::core::format_args!("{}: skipped: {}\n", ::core::stringify!($name), why),
                );
                return;
            }
            let fixture = $fixture;
            let block_on = $block_on;
            block_on($crate::testing::async_cases::$name(&fixture));
        }
    )*};
}
