//! Expiry of messages and of group memberships.
//!
//! These cases wait for real time to pass. Sleeps never end early, so "older than the expiry"
//! is always certain; "still younger than the expiry" is measured, and an attempt in which the
//! machine stalled past its time window is retried rather than failed
//! ([`Ctx::retry_if_slow`]).

use std::time::{Duration, Instant};

use crate::LayerConfig;
use crate::error::ReceiveError;
use crate::layer::Capability;
use crate::layer::GroupSendReport;
use crate::message::Message;
use crate::testing::driver::{Ctx, Driver, QUIET, Timing, config, number, numbered};

fn expiring(expiry: Duration) -> LayerConfig {
    config(LayerConfig::builder().expiry(expiry))
}

/// Receives the message numbered `n` on `channel`, which was sent at `sent_at` and should
/// still be young enough. A miss is a failure, unless the machine was so slow that the message
/// may really have expired.
async fn expect_young(
    layer: &Driver,
    channel: &str,
    n: i64,
    sent_at: Instant,
    expiry: Duration,
) -> Result<(), String> {
    let outcome = layer.receive_timeout(channel, QUIET).await;
    let age = sent_at.elapsed();
    match outcome {
        Ok(m) if number(&m) == n => Ok(()),
        // An older message should have expired before this one: no stall explains that.
        Ok(m) if number(&m) < n => panic!(
            "expected message {n} on {channel:?}, got the older, expired {m:?} (expiry {expiry:?})"
        ),
        _ if age >= expiry => Err(format!(
            "message {n} on {channel:?} was already {age:?} old (expiry {expiry:?}) when received"
        )),
        Ok(m) => panic!("expected message {n} on {channel:?}, got {m:?}"),
        Err(e) => panic!(
            "message {n} on {channel:?} was lost: {e} ({e:?}); it was only {age:?} old, expiry \
             {expiry:?}"
        ),
    }
}

/// Checks that a receive on `channel` times out: its messages are all expired.
async fn expect_expired(layer: &Driver, channel: &str, sent_at: Instant, expiry: Duration) {
    match layer.receive_timeout(channel, QUIET).await {
        Err(ReceiveError::Timeout) => {}
        Ok(m) => panic!(
            "a message sent {:?} ago was delivered on {channel:?} despite an expiry of \
             {expiry:?}: {m:?}",
            sent_at.elapsed()
        ),
        Err(e) => panic!("expected the receive on {channel:?} to time out, got {e} ({e:?})"),
    }
}

pub(crate) async fn message_expiry(cx: Ctx<'_>) {
    cx.retry_if_slow(|| message_expiry_once(cx)).await;
}

async fn message_expiry_once(cx: Ctx<'_>) -> Timing {
    let expiry = Duration::from_millis(200);
    let layer = cx.layer(expiring(expiry));
    let stale_at = Instant::now();
    layer.send_numbered("expiring", "stale", 1..=2).await;
    layer.sleep(expiry + Duration::from_millis(100)).await;
    expect_expired(&layer, "expiring", stale_at, expiry).await;
    let m = layer.metrics();
    assert_eq!(
        m.expired, 2,
        "both expired messages must be counted in `expired`: {m:?}"
    );
    assert_eq!(m.received, 0, "{m:?}");

    // A message sent after the others expired is delivered.
    let fresh_at = Instant::now();
    layer.send_numbered("expiring", "fresh", [3]).await;
    if let Err(why) = expect_young(&layer, "expiring", 3, fresh_at, expiry).await {
        return Timing::TooSlow(why);
    }
    layer.expect_empty("expiring").await;
    let m = layer.metrics();
    assert_eq!(
        (m.expired, m.received, m.queued_messages),
        (2, 1, 0),
        "{m:?}"
    );
    Timing::Done
}

pub(crate) async fn expiry_earliest_message_expires(cx: Ctx<'_>) {
    cx.retry_if_slow(|| earliest_expires_once(cx)).await;
    cx.retry_if_slow(|| all_young_once(cx)).await;
}

async fn earliest_expires_once(cx: Ctx<'_>) -> Timing {
    let expiry = Duration::from_millis(300);
    let layer = cx.layer(expiring(expiry));
    let first_at = Instant::now();
    layer.send_numbered("channel", "message", [1]).await;
    layer.sleep(Duration::from_millis(200)).await;
    let later_at = Instant::now();
    layer.send_numbered("channel", "message", 2..=3).await;
    layer
        .sleep_until(first_at + expiry + Duration::from_millis(50))
        .await;
    for n in 2..=3 {
        if let Err(why) = expect_young(&layer, "channel", n, later_at, expiry).await {
            return Timing::TooSlow(why);
        }
    }
    layer.expect_empty("channel").await;
    let m = layer.metrics();
    assert_eq!(
        (m.expired, m.received),
        (1, 2),
        "only the first message expired: {m:?}"
    );
    Timing::Done
}

async fn all_young_once(cx: Ctx<'_>) -> Timing {
    let expiry = Duration::from_millis(300);
    let layer = cx.layer(expiring(expiry));
    let first_at = Instant::now();
    for n in 1..=3 {
        layer.send_numbered("channel", "message", [n]).await;
        layer.sleep(Duration::from_millis(60)).await;
    }
    for n in 1..=3 {
        if let Err(why) = expect_young(&layer, "channel", n, first_at, expiry).await {
            return Timing::TooSlow(why);
        }
    }
    assert_eq!(layer.metrics().expired, 0);
    Timing::Done
}

pub(crate) async fn expiry_through_group_send(cx: Ctx<'_>) {
    let layer = cx.default_layer();
    if !cx.has(&layer, Capability::Groups) {
        return;
    }
    cx.retry_if_slow(|| group_expiry_of_messages_once(cx)).await;
}

async fn group_expiry_of_messages_once(cx: Ctx<'_>) -> Timing {
    let expiry = Duration::from_millis(300);
    let layer = cx.layer(expiring(expiry));
    let members = [layer.new_channel("member-1"), layer.new_channel("member-2")];
    for member in &members {
        layer.group_add_ok("test-group", member).await;
    }
    let first_at = Instant::now();
    let sent = layer
        .group_send_ok("test-group", numbered("message", 1))
        .await;
    assert_eq!(sent, GroupSendReport::new(2, 0));
    layer.sleep(Duration::from_millis(200)).await;
    let later_at = Instant::now();
    for n in 2..=3 {
        layer
            .group_send_ok("test-group", numbered("message", n))
            .await;
    }
    layer
        .sleep_until(first_at + expiry + Duration::from_millis(50))
        .await;
    for member in &members {
        for n in 2..=3 {
            if let Err(why) = expect_young(&layer, member, n, later_at, expiry).await {
                return Timing::TooSlow(why);
            }
        }
        layer.expect_empty(member).await;
    }
    let m = layer.metrics();
    assert_eq!(m.expired, 2, "message 1 expired once per member: {m:?}");
    assert_eq!((m.group_deliveries, m.received), (6, 4), "{m:?}");
    Timing::Done
}

pub(crate) async fn group_expiry(cx: Ctx<'_>) {
    let layer = cx.default_layer();
    if !cx.has(&layer, Capability::Groups) {
        return;
    }
    cx.retry_if_slow(|| group_expiry_once(cx)).await;
}

async fn group_expiry_once(cx: Ctx<'_>) -> Timing {
    let group_expiry = Duration::from_millis(400);
    let margin = Duration::from_millis(50);
    let layer = cx.layer(config(LayerConfig::builder().group_expiry(group_expiry)));
    layer.group_add_ok("group", "refreshed").await;
    layer.group_add_ok("group", "lapsing").await;
    let lapsing_added = Instant::now();
    layer.sleep(Duration::from_millis(200)).await;
    let refresh_started = Instant::now();
    layer.group_add_ok("group", "refreshed").await;
    let refresh_done = Instant::now();

    // "lapsing" was added more than group_expiry ago; "refreshed" was re-added since.
    layer
        .sleep_until(lapsing_added + group_expiry + margin)
        .await;
    let sent = layer.group_send_ok("group", numbered("message", 1)).await;
    if sent != GroupSendReport::new(1, 0) {
        // A stall can only explain the refreshed member lapsing too.
        if sent == GroupSendReport::new(0, 0) && refresh_started.elapsed() >= group_expiry {
            return Timing::TooSlow(format!(
                "the refreshed membership was {:?} old at the group_send",
                refresh_started.elapsed()
            ));
        }
        panic!(
            "group_send {:?} after the only add of one member and {:?} after refreshing the \
             other (group_expiry {group_expiry:?}) must reach the refreshed member alone: {sent:?}",
            lapsing_added.elapsed(),
            refresh_started.elapsed()
        );
    }
    layer.expect_numbered("refreshed", [1]).await;
    layer.expect_empty("lapsing").await;

    // Later the refreshed membership lapses too.
    layer
        .sleep_until(refresh_done + group_expiry + margin)
        .await;
    let sent = layer.group_send_ok("group", numbered("message", 2)).await;
    assert_eq!(
        sent,
        GroupSendReport::new(0, 0),
        "every membership is older than group_expiry ({group_expiry:?})"
    );
    layer.expect_empty("refreshed").await;

    // Adding again makes a member again.
    layer.group_add_ok("group", "lapsing").await;
    let sent = layer
        .group_send_ok("group", Message::new("welcome.back"))
        .await;
    assert_eq!(sent, GroupSendReport::new(1, 0));
    assert_eq!(
        layer.expect("lapsing").await.message_type(),
        Some("welcome.back")
    );
    Timing::Done
}
