//! Metrics: counters that account for every message, and gauges that return to zero.

use std::time::{Duration, Instant};

use crate::LayerConfig;
use crate::error::ReceiveError;
use crate::layer::Capability;
use crate::metrics::MetricsSnapshot;
use crate::testing::driver::{Ctx, Driver, PATIENCE, config, numbered};

/// The counters a case expects, compared field by field with a snapshot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Counts {
    sent: u64,
    received: u64,
    rejected_full: u64,
    expired: u64,
    flushed: u64,
    group_sends: u64,
    group_deliveries: u64,
    group_skipped_full: u64,
    queued_messages: u64,
}

impl Counts {
    fn of(m: &MetricsSnapshot) -> Counts {
        Counts {
            sent: m.sent,
            received: m.received,
            rejected_full: m.rejected_full,
            expired: m.expired,
            flushed: m.flushed,
            group_sends: m.group_sends,
            group_deliveries: m.group_deliveries,
            group_skipped_full: m.group_skipped_full,
            queued_messages: m.queued_messages,
        }
    }
}

/// Checks the expected counters and, where the backend's gauges are exact, the accounting
/// identity and the queued-messages gauge.
fn check(layer: &Driver, exact_gauges: bool, mut expected: Counts, when: &str) {
    let m = layer.metrics();
    let mut got = Counts::of(&m);
    if exact_gauges {
        assert_eq!(
            m.sent + m.group_deliveries,
            m.received + m.expired + m.flushed + m.queued_messages,
            "sent + group_deliveries must equal received + expired + flushed + queued_messages \
             {when}: {m:?}"
        );
    } else {
        got.queued_messages = 0;
        expected.queued_messages = 0;
    }
    assert_eq!(got, expected, "counters {when} (full snapshot: {m:?})");
}

pub(crate) async fn metrics_snapshot_accounting(cx: Ctx<'_>) {
    let expiry = Duration::from_secs(1);
    let layer = cx.layer(config(LayerConfig::builder().capacity(4).expiry(expiry)));
    let exact = cx.has(&layer, Capability::ExactGauges);
    let check = |layer: &Driver, want: Counts, when: &str| check(layer, exact, want, when);
    let mut want = Counts::default();
    check(&layer, want, "on a fresh layer");

    layer.send_numbered("a", "message", 1..=3).await;
    layer.send_numbered("b", "message", [1]).await;
    want.sent = 4;
    want.queued_messages = 4;
    check(&layer, want, "after four sends");

    layer.expect_numbered("a", 1..=2).await;
    want.received = 2;
    want.queued_messages = 2;
    check(&layer, want, "after two receives");

    layer.send_numbered("b", "message", 2..=4).await;
    assert!(
        layer
            .send("b", numbered("message", 5))
            .await
            .is_err_and(|e| e.is_full())
    );
    want.sent = 7;
    want.rejected_full = 1;
    want.queued_messages = 5;
    check(&layer, want, "after filling a channel");

    let mut expired_later = 1 + 4;
    if cx.has(&layer, Capability::Groups) {
        for member in ["b", "c", "d"] {
            layer.group_add_ok("group", member).await;
        }
        for n in 1..=2 {
            layer.group_send_ok("group", numbered("message", n)).await;
        }
        want.group_sends = 2;
        want.group_deliveries = 4;
        want.group_skipped_full = 2;
        want.queued_messages = 9;
        expired_later += 4;
        check(&layer, want, "after two group_sends, one member full");
    }

    // Let everything queued expire, and meet it with receives. A network backend may need
    // more than one short receive to take (and so count) all of a channel's expired
    // messages, so the receives repeat until the count is reached or patience runs out; none
    // of them may deliver anything.
    layer.sleep(expiry + Duration::from_millis(100)).await;
    let patience = Instant::now() + PATIENCE;
    loop {
        for channel in ["a", "b", "c", "d"] {
            match layer
                .receive_timeout(channel, Duration::from_millis(20))
                .await
            {
                Err(ReceiveError::Timeout) => {}
                other => {
                    panic!("every message on {channel:?} is older than the expiry, got {other:?}")
                }
            }
        }
        if layer.metrics().expired >= expired_later || Instant::now() >= patience {
            break;
        }
    }
    want.expired = expired_later;
    want.queued_messages = 0;
    check(&layer, want, "after everything expired");

    layer.send_numbered("e", "message", 1..=2).await;
    want.sent += 2;
    if cx.has(&layer, Capability::Flush) {
        if let Err(e) = layer.flush().await {
            panic!("flush failed: {e}");
        }
        want.flushed = 2;
    } else {
        layer.expect_numbered("e", 1..=2).await;
        want.received += 2;
    }
    check(&layer, want, "at the end");
}

/// Checks the gauges.
fn gauges(layer: &Driver, queued: u64, channels: u64, groups: Option<u64>, when: &str) {
    let m = layer.metrics();
    assert_eq!(m.queued_messages, queued, "queued_messages {when}: {m:?}");
    assert_eq!(m.channels, channels, "channels {when}: {m:?}");
    if let Some(groups) = groups {
        assert_eq!(m.groups, groups, "groups {when}: {m:?}");
    }
}

pub(crate) async fn gauges_return_to_zero(cx: Ctx<'_>) {
    let layer = cx.default_layer();
    if !cx.has(&layer, Capability::ExactGauges) {
        return;
    }
    let groups = cx.has(&layer, Capability::Groups);
    let some = |n| groups.then_some(n);
    gauges(&layer, 0, 0, some(0), "on a fresh layer");

    layer.send_numbered("a", "message", 1..=2).await;
    layer.send_numbered("b", "message", [1]).await;
    layer.send_numbered("c", "message", [1]).await;
    if groups {
        layer.group_add_ok("g1", "a").await;
        layer.group_add_ok("g1", "b").await;
        layer.group_add_ok("g2", "c").await;
    }
    gauges(
        &layer,
        4,
        3,
        some(2),
        "with three channels holding four messages",
    );

    layer.expect_numbered("a", 1..=2).await;
    layer.expect_numbered("b", [1]).await;
    layer.expect_numbered("c", [1]).await;
    gauges(&layer, 0, 0, some(2), "after receiving everything");
    if groups {
        layer.group_discard_ok("g1", "a").await;
        layer.group_discard_ok("g1", "b").await;
        gauges(&layer, 0, 0, some(1), "after emptying one group");
        layer.group_discard_ok("g2", "c").await;
        gauges(&layer, 0, 0, some(0), "after emptying both groups");
    }

    // Process-specific channels, a receive that timed out, and one that waited and received.
    let minted = [layer.new_channel("gauge"), layer.new_channel("gauge")];
    for channel in &minted {
        layer.send_numbered(channel, "message", [1]).await;
    }
    assert_eq!(layer.metrics().queued_messages, 2);
    for channel in &minted {
        layer.expect_numbered(channel, [1]).await;
    }
    layer.expect_nothing("idle").await;
    let waiter = layer.spawn("gauge-waiter", |d| async move {
        d.receive_timeout("waited", PATIENCE).await
    });
    layer.sleep(Duration::from_millis(50)).await;
    layer.send_numbered("waited", "message", [1]).await;
    if let Err(e) = waiter.join().await {
        panic!("the waiting receiver failed: {e}");
    }
    gauges(&layer, 0, 0, some(0), "after all of that was received");
}
