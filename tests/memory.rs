//! Behaviour specific to the in-memory backend, beyond the conformance suite.

use std::collections::HashSet;
use std::thread;
use std::time::{Duration, Instant};

use channel_layer::name::validate_channel;
use channel_layer::prelude::*;

fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if done() {
            return true;
        }
        thread::sleep(Duration::from_millis(10));
    }
    done()
}

#[test]
fn expired_messages_on_unread_channels_are_reclaimed_without_any_call() {
    let layer = InMemoryLayer::new(
        LayerConfig::builder()
            .expiry(Duration::from_millis(50))
            .build()
            .unwrap(),
    );
    for c in 0..10 {
        for _ in 0..10 {
            layer
                .send(&format!("unread.{c}"), Message::new("m"))
                .unwrap();
        }
    }
    let reply = layer.new_channel("reply").unwrap();
    layer.send(&reply, Message::new("m")).unwrap();
    assert_eq!(layer.metrics().queued_messages, 101);
    // Nobody calls the layer: the timer thread's sweep alone must drop and count them.
    assert!(
        wait_until(Duration::from_secs(5), || {
            let m = layer.metrics();
            m.queued_messages == 0 && m.channels == 0
        }),
        "still queued: {:?}",
        layer.metrics()
    );
    let m = layer.metrics();
    assert_eq!(m.expired, 101);
    assert_eq!(m.sent, 101);
    assert_eq!(m.received, 0);
    // The process-specific count was released too: its capacity is whole again.
    let layer = InMemoryLayer::new(
        LayerConfig::builder()
            .capacity(1)
            .expiry(Duration::from_millis(50))
            .build()
            .unwrap(),
    );
    let a = layer.new_channel("p").unwrap();
    layer.send(&a, Message::new("m")).unwrap();
    thread::sleep(Duration::from_millis(80));
    layer.send(&a, Message::new("again")).unwrap();
    assert_eq!(layer.receive(&a).unwrap().message_type(), Some("again"));
}

#[test]
fn new_channel_names_are_valid_distinct_and_shaped_prefix_process_local() {
    let layer = InMemoryLayer::default();
    let other = InMemoryLayer::default();
    let mut seen = HashSet::new();
    for _ in 0..10_000 {
        let name = layer.new_channel("specific").unwrap();
        validate_channel(&name).unwrap();
        let (non_local, local) = name.split_once('!').unwrap();
        assert!(non_local.starts_with("specific."));
        assert_eq!(local.len(), 12);
        assert!(seen.insert(name));
    }
    let a = layer.new_channel("x").unwrap();
    let b = other.new_channel("x").unwrap();
    assert_ne!(
        a.split_once('!').unwrap().0,
        b.split_once('!').unwrap().0,
        "each layer names its own process"
    );
    assert!(layer.new_channel("bad!prefix").is_err());
    assert!(layer.new_channel(&"p".repeat(80)).is_err());
    assert!(layer.new_default_channel().starts_with("specific."));
}

#[test]
fn url_options_reach_the_configuration() {
    let layer = InMemoryLayer::from_url("memory://?capacity=7&expiry=1.5&group_expiry=30").unwrap();
    assert_eq!(layer.config().capacity, 7);
    assert_eq!(layer.config().expiry, Duration::from_millis(1500));
    assert_eq!(layer.config().group_expiry, Duration::from_secs(30));
    assert!(InMemoryLayer::from_url("memory:").is_ok());
    assert!(InMemoryLayer::from_url("memory://?expiry=soon").is_err());
}

#[test]
fn a_full_channel_reports_its_capacity_rule() {
    let config = LayerConfig::builder()
        .capacity(5)
        .channel_capacity("http.response!*", 2)
        .build()
        .unwrap();
    let layer = InMemoryLayer::new(config);
    layer.send("http.response!a", Message::new("m")).unwrap();
    layer.send("http.response!a", Message::new("m")).unwrap();
    match layer.send("http.response!a", Message::new("m")) {
        Err(channel_layer::SendError::Full {
            channel, capacity, ..
        }) => {
            assert_eq!(&*channel, "http.response!a");
            assert_eq!(capacity, 2);
        }
        other => panic!("expected Full, got {other:?}"),
    }
    // Each channel has its own capacity: a sibling still has room.
    layer.send("http.response!b", Message::new("m")).unwrap();
    for n in 0..5 {
        layer.send("plain", Message::new("m").with("n", n)).unwrap();
    }
    assert!(
        layer
            .send("plain", Message::new("m"))
            .unwrap_err()
            .is_full()
    );
}

#[test]
fn message_display_of_values_reads_like_python() {
    let msg = Message::new("t")
        .with("b", Value::Bytes(b"\x00a".to_vec()))
        .with("n", Value::Null);
    assert_eq!(
        format!("{msg:?}"),
        r#"Message({"type": "t", "b": b"\x00a", "n": null})"#
    );
}

#[test]
fn inspect_lists_channels_and_groups_with_their_ages() {
    use channel_layer::ChannelLayer as _;
    let layer = channel_layer::InMemoryLayer::default();
    assert!(layer.capabilities().inspect);
    let process = layer.new_channel("specific").unwrap();
    layer
        .send("b.jobs", channel_layer::Message::new("m"))
        .unwrap();
    layer
        .send("b.jobs", channel_layer::Message::new("m"))
        .unwrap();
    layer
        .send(&process, channel_layer::Message::new("m"))
        .unwrap();
    layer.group_add("room", "b.jobs").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(50));
    let seen = layer.inspect(10).unwrap();
    assert_eq!(seen.channels.len(), 2);
    assert_eq!(
        (seen.channels[0].name.as_str(), seen.channels[0].queued),
        ("b.jobs", 2)
    );
    assert!(seen.channels[0].oldest_age.unwrap() >= std::time::Duration::from_millis(40));
    assert_eq!(seen.channels[0].process(), None);
    assert!(seen.channels[1].process().is_some());
    assert_eq!(seen.groups.len(), 1);
    assert_eq!(seen.groups[0].members[0].channel, "b.jobs");
    assert!(seen.groups[0].members[0].age.unwrap() >= std::time::Duration::from_millis(40));
    assert_eq!(seen.metrics.queued_messages, 3);
    assert!(seen.complete);
    assert!(!layer.inspect(1).unwrap().complete);
}

#[test]
fn inspect_lists_at_most_the_limit_of_members_and_counts_them_all() {
    let layer = InMemoryLayer::default();
    for n in 0..60 {
        layer.group_add("crowd", &format!("member.{n:02}")).unwrap();
    }
    let seen = layer.inspect(5).unwrap();
    assert_eq!(seen.groups[0].member_count, 60);
    let listed: Vec<&str> = seen.groups[0]
        .members
        .iter()
        .map(|m| m.channel.as_str())
        .collect();
    assert_eq!(
        listed,
        [
            "member.00",
            "member.01",
            "member.02",
            "member.03",
            "member.04"
        ]
    );
    assert!(!seen.complete);
    assert!(layer.inspect(60).unwrap().complete);
}
