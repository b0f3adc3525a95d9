//! Groups: membership, fan-out, and full members.

use crate::LayerConfig;
use crate::layer::Capability;
use crate::layer::GroupSendReport;
use crate::message::Message;
use crate::testing::driver::{Ctx, config, numbered};

fn report(delivered: usize, skipped_full: usize) -> GroupSendReport {
    GroupSendReport::new(delivered, skipped_full)
}

pub(crate) async fn groups_basic(cx: Ctx<'_>) {
    let layer = cx.default_layer();
    if !cx.has(&layer, Capability::Groups) {
        return;
    }
    // Plain channel names, as in Django's in-memory tests.
    for channel in ["test-gr-chan-1", "test-gr-chan-2", "test-gr-chan-3"] {
        layer.group_add_ok("test-group", channel).await;
    }
    layer.group_discard_ok("test-group", "test-gr-chan-2").await;
    let sent = layer
        .group_send_ok("test-group", Message::new("message.1"))
        .await;
    assert_eq!(sent, report(2, 0), "group_send to two remaining members");
    for channel in ["test-gr-chan-1", "test-gr-chan-3"] {
        let got = layer.expect(channel).await;
        assert_eq!(got.message_type(), Some("message.1"), "on {channel:?}");
    }
    layer.expect_nothing("test-gr-chan-2").await;

    // Minted names, as in channels_redis' tests.
    let members: Vec<String> = (0..3).map(|_| layer.new_channel("test-gr-chan")).collect();
    for channel in &members {
        layer.group_add_ok("test-group-2", channel).await;
    }
    layer.group_discard_ok("test-group-2", &members[1]).await;
    let sent = layer
        .group_send_ok("test-group-2", Message::new("message.2"))
        .await;
    assert_eq!(
        sent,
        report(2, 0),
        "group_send to two remaining minted members"
    );
    for channel in [&members[0], &members[2]] {
        let got = layer.expect(channel).await;
        assert_eq!(got.message_type(), Some("message.2"), "on {channel:?}");
    }
    layer.expect_empty(&members[1]).await;
    for channel in ["test-gr-chan-1", "test-gr-chan-3"] {
        layer.expect_empty(channel).await;
    }
}

pub(crate) async fn group_add_is_idempotent(cx: Ctx<'_>) {
    let layer = cx.default_layer();
    if !cx.has(&layer, Capability::Groups) {
        return;
    }
    layer.group_add_ok("twice", "member").await;
    layer.group_add_ok("twice", "member").await;
    let sent = layer.group_send_ok("twice", numbered("message", 1)).await;
    assert_eq!(sent, report(1, 0), "a channel added twice is one member");
    layer.expect_numbered("member", [1]).await;
    layer.expect_empty("member").await;

    // One discard removes it, however often it was added.
    layer.group_discard_ok("twice", "member").await;
    let sent = layer.group_send_ok("twice", numbered("message", 2)).await;
    assert_eq!(sent, report(0, 0), "one discard must remove the member");
    layer.expect_empty("member").await;
}

pub(crate) async fn group_discard_unknown_is_ok(cx: Ctx<'_>) {
    let layer = cx.default_layer();
    if !cx.has(&layer, Capability::Groups) {
        return;
    }
    layer.group_discard_ok("never-created", "someone").await;
    layer.group_add_ok("group", "member").await;
    layer.group_discard_ok("group", "not-a-member").await;
    let sent = layer.group_send_ok("group", numbered("message", 1)).await;
    assert_eq!(
        sent,
        report(1, 0),
        "discarding a non-member must not touch the members"
    );
    layer.expect_numbered("member", [1]).await;

    let sent = layer
        .group_send_ok("no-such-group", numbered("message", 2))
        .await;
    assert_eq!(sent, report(0, 0), "an unknown group has no members");

    layer.group_discard_ok("group", "member").await;
    layer.group_discard_ok("group", "member").await;
    let sent = layer.group_send_ok("group", numbered("message", 3)).await;
    assert_eq!(sent, report(0, 0), "the group must be empty");
    layer.expect_empty("member").await;
}

pub(crate) async fn group_send_never_fails_when_full(cx: Ctx<'_>) {
    let layer = cx.layer(config(LayerConfig::builder().capacity(3)));
    if !cx.has(&layer, Capability::Groups) {
        return;
    }
    layer.group_add_ok("test-group", "only-member").await;
    let mut skipped = 0;
    for n in 1..=5 {
        let sent = layer
            .group_send_ok("test-group", numbered("message", n))
            .await;
        let expected = if n <= 3 { report(1, 0) } else { report(0, 1) };
        assert_eq!(
            sent, expected,
            "report of group_send number {n} to a capacity-3 member"
        );
        skipped += sent.skipped_full;
    }
    assert_eq!(skipped, 2);
    let m = layer.metrics();
    assert_eq!(m.group_skipped_full, 2, "group_skipped_full: {m:?}");
    assert_eq!(m.group_sends, 5, "group_sends: {m:?}");
    assert_eq!(m.group_deliveries, 3, "group_deliveries: {m:?}");
    layer.expect_numbered("only-member", 1..=3).await;
    layer.expect_nothing("only-member").await;
}

pub(crate) async fn group_send_capacity_multiple_channels(cx: Ctx<'_>) {
    let layer = cx.layer(config(LayerConfig::builder().capacity(3)));
    if !cx.has(&layer, Capability::Groups) {
        return;
    }
    let first = layer.new_channel("channel-1");
    let second = layer.new_channel("channel-2");
    layer.group_add_ok("test-group", &first).await;
    layer.group_add_ok("test-group", &second).await;
    // The second member starts with one message of its own.
    layer.send_ok(&second, numbered("message", 0)).await;
    let expected = [report(2, 0), report(2, 0), report(1, 1)];
    for (n, want) in (1..=3).zip(expected) {
        let sent = layer
            .group_send_ok("test-group", numbered("message", n))
            .await;
        assert_eq!(sent, want, "report of group_send number {n}");
    }
    layer.expect_numbered(&first, 1..=3).await;
    layer.expect_numbered(&second, 0..=2).await;
    layer.expect_nothing(&second).await;
    layer.expect_empty(&first).await;
    assert_eq!(layer.metrics().group_skipped_full, 1);
}

pub(crate) async fn groups_same_prefix(cx: Ctx<'_>) {
    let layer = cx.default_layer();
    if !cx.has(&layer, Capability::Groups) {
        return;
    }
    let members: Vec<String> = (0..3).map(|_| layer.new_channel("test-gr-chan")).collect();
    for channel in &members {
        layer.group_add_ok("test-group", channel).await;
    }
    let sent = layer
        .group_send_ok("test-group", Message::new("message.1"))
        .await;
    assert_eq!(
        sent,
        report(3, 0),
        "every member sharing the prefix must get the message"
    );
    for channel in &members {
        let got = layer.expect(channel).await;
        assert_eq!(got.message_type(), Some("message.1"), "on {channel:?}");
        layer.expect_empty(channel).await;
    }
}
