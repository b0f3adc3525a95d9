//! Names: process-specific channels, invalid names, and the reserved message key.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::LayerConfig;
use crate::error::{LayerError, ReceiveError, SendError, TryReceiveError};
use crate::layer::Capability;
use crate::layer::{ChannelLayer, DEFAULT_CHANNEL_PREFIX};
use crate::message::{Message, MessageError, RESERVED_KEY};
use crate::name::{NameError, NameKind, validate_channel};
use crate::testing::driver::{Ctx, Driver, PATIENCE, config, join_all, numbered};

/// Checks a minted name: valid, one `!`, starting with its prefix.
fn check_minted(name: &str, prefix: &str) {
    assert!(
        name.starts_with(prefix),
        "new_channel({prefix:?}) returned {name:?}, which does not start with the prefix"
    );
    assert_eq!(
        name.matches('!').count(),
        1,
        "new_channel({prefix:?}) returned {name:?}: a process-specific name has exactly one '!'"
    );
    if let Err(e) = validate_channel(name) {
        panic!("new_channel({prefix:?}) returned an invalid name: {e}");
    }
}

pub(crate) async fn process_specific_send_receive(cx: Ctx<'_>) {
    let layer = cx.default_layer();
    let first = layer.new_channel("test");
    let second = layer.new_channel("test");
    check_minted(&first, "test");
    check_minted(&second, "test");
    assert_ne!(
        first, second,
        "two new_channel calls returned the same name"
    );
    let default = layer.new_channel(DEFAULT_CHANNEL_PREFIX);
    check_minted(&default, DEFAULT_CHANNEL_PREFIX);

    let many: HashSet<String> = (0..500).map(|_| layer.new_channel("test")).collect();
    assert_eq!(
        many.len(),
        500,
        "500 new_channel calls returned duplicate names"
    );

    let message = Message::new("test.message").with("text", "Ahoy-hoy!");
    layer.send_ok(&first, message.clone()).await;
    assert_eq!(layer.expect(&first).await, message);
    layer.expect_empty(&second).await;

    // Two receivers on two threads, each waiting on its own process-specific channel.
    let receivers: Vec<_> = [first.clone(), second.clone()]
        .into_iter()
        .map(|name| {
            layer.spawn("process-receiver", move |d| async move {
                let got = d.expect(&name).await;
                (name, got)
            })
        })
        .collect();
    layer.send_ok(&second, numbered("for.second", 2)).await;
    layer.send_ok(&first, numbered("for.first", 1)).await;
    for (name, got) in join_all(receivers).await {
        let expected = if name == first {
            numbered("for.first", 1)
        } else {
            numbered("for.second", 2)
        };
        assert_eq!(
            got, expected,
            "the receiver on {name:?} got another channel's message"
        );
    }
}

pub(crate) async fn process_specific_foreign_names(cx: Ctx<'_>) {
    let layer = cx.layer(config(LayerConfig::builder().capacity(3)));
    if !cx.has(&layer, Capability::ReceiveAnyProcessChannel) {
        // Such a backend must say so when asked to receive on a name it did not mint.
        let started = Instant::now();
        match layer.receive_timeout("foreign.process!abc", PATIENCE).await {
            Err(ReceiveError::InvalidName(e)) => assert_eq!(e.name(), "foreign.process!abc"),
            other => panic!(
                "a backend without receive_any_process_channel must refuse to receive on a \
                 process-specific name it did not mint with InvalidName, got {other:?}"
            ),
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "the refusal must not wait"
        );
        return;
    }
    layer.send_ok("worker.one!a", numbered("message", 1)).await;
    layer.send_ok("worker.one!b", numbered("message", 2)).await;
    layer.send_ok("worker.two!a", numbered("message", 3)).await;
    layer.send_ok("empty.local!", numbered("message", 4)).await;
    layer.expect_numbered("worker.one!b", [2]).await;
    layer.expect_numbered("worker.one!a", [1]).await;
    layer.expect_numbered("worker.two!a", [3]).await;
    layer.expect_numbered("empty.local!", [4]).await;

    // Capacity 3 bounds each channel on its own: siblings under "p!" do not share it.
    for (name, n) in ["p!a", "p!a", "p!a"].into_iter().zip(1..) {
        layer.send_ok(name, numbered("message", n)).await;
    }
    super::capacity::expect_full(&layer, "p!a", 3, numbered("message", 4)).await;
    layer.send_ok("p!b", numbered("message", 5)).await;
    layer.send_ok("q!a", numbered("message", 6)).await;
    layer.expect_numbered("p!b", [5]).await;
    layer.expect_numbered("p!a", [1, 2, 3]).await;
    layer.expect_numbered("q!a", [6]).await;
}

fn check_name_error(error: &NameError, name: &str, kind: NameKind, operation: &str) {
    assert_eq!(
        error.name(),
        name,
        "{operation}: the error must name the rejected name"
    );
    assert_eq!(
        error.kind(),
        kind,
        "{operation}: the error names the wrong kind of name"
    );
}

fn long(c: char) -> String {
    std::iter::repeat_n(c, 100).collect()
}

async fn reject_channel_name(layer: &Driver, name: &str, groups: bool) {
    let message = Message::new("never.sent").with("name", name);
    match layer.send(name, message.clone()).await {
        Err(SendError::InvalidName {
            error,
            message: back,
        }) => {
            check_name_error(&error, name, NameKind::Channel, "send");
            assert_eq!(back, message, "send must hand the message back");
        }
        other => {
            panic!("send to the invalid channel name {name:?} must be InvalidName, got {other:?}")
        }
    }
    let started = Instant::now();
    match layer.receive_timeout(name, PATIENCE).await {
        Err(ReceiveError::InvalidName(error)) => {
            check_name_error(&error, name, NameKind::Channel, "receive")
        }
        other => panic!(
            "receive on the invalid channel name {name:?} must be InvalidName, got {other:?}"
        ),
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "receive on the invalid name {name:?} waited {:?} before refusing",
        started.elapsed()
    );
    match layer.try_receive(name).await {
        Err(TryReceiveError::InvalidName(error)) => {
            check_name_error(&error, name, NameKind::Channel, "try_receive");
        }
        other => panic!(
            "try_receive on the invalid channel name {name:?} must be InvalidName, got {other:?}"
        ),
    }
    if groups {
        for (op, result) in [
            ("group_add", layer.group_add("valid-group", name).await),
            (
                "group_discard",
                layer.group_discard("valid-group", name).await,
            ),
        ] {
            match result {
                Err(LayerError::InvalidName(error)) => {
                    check_name_error(&error, name, NameKind::Channel, op)
                }
                other => panic!(
                    "{op} of the invalid channel name {name:?} must be InvalidName, got {other:?}"
                ),
            }
        }
    }
}

async fn reject_group_name(layer: &Driver, group: &str) {
    for (op, result) in [
        ("group_add", layer.group_add(group, "valid-channel").await),
        (
            "group_discard",
            layer.group_discard(group, "valid-channel").await,
        ),
        (
            "group_send",
            layer
                .group_send(group, Message::new("never.sent"))
                .await
                .map(|_| ()),
        ),
    ] {
        match result {
            Err(LayerError::InvalidName(error)) => {
                check_name_error(&error, group, NameKind::Group, op)
            }
            other => panic!(
                "{op} with the invalid group name {group:?} must be InvalidName, got {other:?}"
            ),
        }
    }
}

pub(crate) async fn invalid_names_rejected(cx: Ctx<'_>) {
    let layer = cx.default_layer();
    let groups = cx.has(&layer, Capability::Groups);
    let long_channel = long('c');
    let bad_channels = [
        "=+135!",
        "a!b!c",
        long_channel.as_str(),
        "¯\\_(ツ)_/¯",
        "",
        "!local",
        "has space",
        "chat\n",
        "a!é",
        "question?",
    ];
    for name in bad_channels {
        reject_channel_name(&layer, name, groups).await;
    }
    if groups {
        let long_group = long('g');
        for group in [
            "room!1",
            "trailing!",
            long_group.as_str(),
            "¯\\_(ツ)_/¯",
            "",
            "=+135",
        ] {
            reject_group_name(&layer, group).await;
        }
    }
    let long_prefix = long('p');
    for prefix in ["bad!prefix", "", "has space", long_prefix.as_str()] {
        match layer.as_layer().new_channel(prefix) {
            Err(error) => assert_eq!(
                error.name(),
                prefix,
                "new_channel's error must name the prefix"
            ),
            Ok(name) => panic!("new_channel({prefix:?}) must be refused, it returned {name:?}"),
        }
    }
    let m = layer.metrics();
    assert_eq!(m.sent, 0, "invalid names must send nothing: {m:?}");
    assert_eq!(
        m.queued_messages, 0,
        "invalid names must queue nothing: {m:?}"
    );
    assert_eq!(
        m.rejected_full, 0,
        "an invalid name is not a full channel: {m:?}"
    );

    // The longest valid names still work.
    let longest = "c".repeat(99);
    layer.send_ok(&longest, numbered("message", 1)).await;
    layer.expect_numbered(&longest, [1]).await;
    if groups {
        let longest_group = "g".repeat(99);
        layer.group_add_ok(&longest_group, "member").await;
        let report = layer
            .group_send_ok(&longest_group, numbered("message", 2))
            .await;
        assert_eq!(report.delivered, 1);
        layer.expect_numbered("member", [2]).await;
    }
    assert_eq!(layer.metrics().sent, 1);
}

pub(crate) async fn reserved_key_rejected(cx: Ctx<'_>) {
    let layer = cx.default_layer();
    let sneaky = Message::new("sneaky").with(RESERVED_KEY, "specific.abc!def");
    match layer.send("chan", sneaky.clone()).await {
        Err(SendError::InvalidMessage {
            error: MessageError::ReservedKey { key },
            message,
        }) => {
            assert_eq!(key, RESERVED_KEY);
            assert_eq!(message, sneaky, "send must hand the message back");
        }
        other => {
            panic!("send of a message with {RESERVED_KEY:?} must be InvalidMessage, got {other:?}")
        }
    }
    layer.expect_empty("chan").await;
    if cx.has(&layer, Capability::Groups) {
        layer.group_add_ok("group", "member").await;
        match layer.group_send("group", sneaky.clone()).await {
            Err(LayerError::InvalidMessage(MessageError::ReservedKey { key })) => {
                assert_eq!(key, RESERVED_KEY);
            }
            other => panic!(
                "group_send of a message with {RESERVED_KEY:?} must be InvalidMessage, got {other:?}"
            ),
        }
        layer.expect_empty("member").await;
    }
    let m = layer.metrics();
    assert_eq!(
        (m.sent, m.group_deliveries, m.queued_messages),
        (0, 0, 0),
        "{m:?}"
    );

    // The same message without the key goes through.
    let mut fine = sneaky;
    fine.remove(RESERVED_KEY);
    layer.send_ok("chan", fine.clone()).await;
    assert_eq!(layer.expect("chan").await, fine);
}
