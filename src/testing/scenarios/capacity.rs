//! Capacity: `Full`, per-channel rules, and process-specific channels sharing a capacity.

use crate::LayerConfig;
use crate::error::SendError;
use crate::message::Message;
use crate::name::non_local_name;
use crate::testing::driver::{Ctx, Driver, config, numbered};

/// Sends `message` where it must not fit, and checks the `Full` error: it names the channel
/// (or, for a process-specific one, possibly its non-local part), gives the capacity, and
/// hands the message back.
pub(super) async fn expect_full(layer: &Driver, channel: &str, capacity: usize, message: Message) {
    let err = match layer.send(channel, message.clone()).await {
        Ok(()) => panic!("send to {channel:?} past its capacity of {capacity} succeeded"),
        Err(err) => err,
    };
    assert!(
        err.is_full(),
        "send to {channel:?} past capacity must be Full, got {err} ({err:?})"
    );
    match &err {
        SendError::Full {
            channel: named,
            capacity: reported,
            ..
        } => {
            assert!(
                &**named == channel || &**named == non_local_name(channel),
                "the Full error names {named:?}, not the channel {channel:?}"
            );
            assert_eq!(
                *reported, capacity,
                "the Full error reports the wrong capacity"
            );
        }
        other => unreachable!("is_full() but {other:?}"),
    }
    assert_eq!(
        err.into_message(),
        message,
        "the Full error must hand the message back"
    );
}

fn capacity(n: usize) -> LayerConfig {
    config(LayerConfig::builder().capacity(n))
}

pub(crate) async fn send_capacity(cx: Ctx<'_>) {
    let layer = cx.layer(capacity(3));
    layer
        .send_numbered("test-channel-1", "message", 1..=3)
        .await;
    expect_full(&layer, "test-channel-1", 3, numbered("message", 4)).await;
    // A full channel does not affect another.
    layer
        .send_ok("test-channel-2", numbered("message", 100))
        .await;

    // The channel is unchanged: the three queued messages, in order, and nothing else.
    layer.expect_numbered("test-channel-1", 1..=3).await;
    layer.expect_nothing("test-channel-1").await;

    // Receiving makes room again.
    layer
        .send_numbered("test-channel-1", "message", 5..=7)
        .await;
    expect_full(&layer, "test-channel-1", 3, numbered("message", 8)).await;
    layer.expect_numbered("test-channel-1", [5]).await;
    layer.send_numbered("test-channel-1", "message", [9]).await;
    layer.expect_numbered("test-channel-1", [6, 7, 9]).await;
    layer.expect_numbered("test-channel-2", [100]).await;
}

pub(crate) async fn channel_capacity_rule(cx: Ctx<'_>) {
    let layer = cx.layer(config(
        LayerConfig::builder()
            .capacity(3)
            .channel_capacity("tiny", 1)
            .channel_capacity_regex(r"small\.", 2),
    ));
    layer.send_numbered("tiny", "message", [1]).await;
    expect_full(&layer, "tiny", 1, numbered("message", 2)).await;

    // A glob matches whole names only: "tiny2" gets the default capacity.
    layer.send_numbered("tiny2", "message", 1..=3).await;
    expect_full(&layer, "tiny2", 3, numbered("message", 4)).await;

    // A regex matches at the start of the name.
    layer.send_numbered("small.one", "message", 1..=2).await;
    expect_full(&layer, "small.one", 2, numbered("message", 3)).await;

    layer.expect_numbered("tiny", [1]).await;
    layer.expect_nothing("tiny").await;
    layer.expect_numbered("tiny2", 1..=3).await;
    layer.expect_numbered("small.one", 1..=2).await;
    layer.send_numbered("tiny", "message", [5]).await;
    layer.expect_numbered("tiny", [5]).await;
}

pub(crate) async fn full_is_counted_in_metrics(cx: Ctx<'_>) {
    let layer = cx.layer(capacity(1));
    layer.send_numbered("one", "message", [1]).await;
    expect_full(&layer, "one", 1, numbered("message", 2)).await;
    expect_full(&layer, "one", 1, numbered("message", 3)).await;
    let m = layer.metrics();
    assert_eq!(
        m.rejected_full, 2,
        "rejected_full after two Full sends: {m:?}"
    );
    assert_eq!(m.sent, 1, "sent must count only accepted sends: {m:?}");

    layer.send_numbered("two", "message", [1]).await;
    expect_full(&layer, "two", 1, numbered("message", 2)).await;
    layer.expect_numbered("one", [1]).await;
    layer.send_numbered("one", "message", [4]).await;
    let m = layer.metrics();
    assert_eq!(
        m.rejected_full, 3,
        "rejected_full after three Full sends: {m:?}"
    );
    assert_eq!(m.sent, 3, "sent after three accepted sends: {m:?}");
}

pub(crate) async fn process_specific_capacity_is_shared_by_non_local_part(cx: Ctx<'_>) {
    let layer = cx.layer(capacity(3));
    let names: Vec<String> = (0..4).map(|_| layer.new_channel("proc")).collect();
    let part = non_local_name(&names[0]);
    for name in &names {
        assert_eq!(
            non_local_name(name),
            part,
            "channels minted by one layer with one prefix must share their non-local part \
             (got {names:?})"
        );
    }
    for (name, n) in names.iter().zip(1..=3) {
        layer.send_ok(name, numbered("message", n)).await;
    }
    // The fourth sibling has no message of its own, but its non-local part is full.
    expect_full(&layer, &names[3], 3, numbered("message", 4)).await;

    // Another prefix is another non-local part, with room of its own.
    let other = layer.new_channel("other");
    layer.send_ok(&other, numbered("message", 50)).await;

    // Receiving from one sibling makes room for another.
    layer.expect_numbered(&names[0], [1]).await;
    layer.send_ok(&names[3], numbered("message", 4)).await;
    expect_full(&layer, &names[0], 3, numbered("message", 5)).await;

    // Each sibling gets exactly its own message.
    layer.expect_numbered(&names[3], [4]).await;
    layer.expect_numbered(&names[2], [3]).await;
    layer.expect_numbered(&names[1], [2]).await;
    layer.expect_numbered(&other, [50]).await;
    for name in &names {
        layer.expect_empty(name).await;
    }
}
