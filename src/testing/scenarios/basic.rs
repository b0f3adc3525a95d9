//! Sending and receiving: round trips, message content, order, empty channels and timeouts.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::LayerConfig;
use crate::error::{ReceiveError, TryReceiveError};
use crate::layer::Capability;
use crate::message::{Map, Message, Value};
use crate::metrics::MetricsSnapshot;
use crate::testing::driver::{Ctx, QUIET, numbered};
use crate::testing::typed::Order;

pub(crate) async fn fixture_gives_fresh_isolated_layers(cx: Ctx<'_>) {
    let first = cx.default_layer();
    let second = cx.default_layer();
    assert_eq!(
        first.metrics(),
        MetricsSnapshot::default(),
        "a fresh layer must report all counters and gauges at zero"
    );
    first.send_ok("isolation", Message::new("only.first")).await;
    second.expect_nothing("isolation").await;
    assert_eq!(
        second.metrics(),
        MetricsSnapshot::default(),
        "a layer's metrics must not count another layer's messages"
    );
    let got = first.expect("isolation").await;
    assert_eq!(got.message_type(), Some("only.first"));
}

pub(crate) async fn send_receive(cx: Ctx<'_>) {
    let layer = cx.default_layer();
    let sent = Message::new("test.message").with("text", "Ahoy-hoy!");
    layer.send_ok("test-channel-1", sent.clone()).await;
    let got = layer.expect("test-channel-1").await;
    assert_eq!(got, sent, "the received message differs from the one sent");

    // A second round trip on the same channel, and one on another.
    let again = Message::new("test.message").with("text", "again");
    layer.send_ok("test-channel-1", again.clone()).await;
    layer.send_ok("test-channel-2", sent.clone()).await;
    assert_eq!(layer.expect("test-channel-2").await, sent);
    assert_eq!(layer.expect("test-channel-1").await, again);
    layer.expect_nothing("test-channel-1").await;
}

/// A message holding every kind of value a message can carry, edge cases included.
fn every_kind() -> Message {
    let nested = Map::from_iter([
        ("inner", Value::List(vec![Value::Int(-1), Value::Null])),
        (
            "deeper",
            Value::Map(Map::from_iter([("x", Value::Float(0.25))])),
        ),
    ]);
    Message::new("all.kinds")
        .with("null", Value::Null)
        .with("true", true)
        .with("false", false)
        .with("zero", 0)
        .with("i64_min", i64::MIN)
        .with("i64_max", i64::MAX)
        .with("float", 1.5)
        .with("pi", std::f64::consts::PI)
        .with("tiny", f64::MIN_POSITIVE)
        .with("subnormal", f64::from_bits(1))
        .with("neg_zero", -0.0_f64)
        .with("pos_zero", 0.0_f64)
        .with("inf", f64::INFINITY)
        .with("neg_inf", f64::NEG_INFINITY)
        .with("nan", f64::NAN)
        .with("nan_payload", f64::from_bits(0x7ff8_0000_dead_beef))
        .with("text", "plain ascii")
        .with("empty_text", "")
        .with("unicode", "héllo wörld ✓ 漢字 🦀 \u{0} end")
        .with(
            "bytes",
            Value::Bytes(vec![0, 1, 127, 128, 159, 146, 150, 255]),
        )
        .with("empty_bytes", Value::Bytes(Vec::new()))
        .with("bytes_like_text", Value::Bytes(b"plain ascii".to_vec()))
        .with(
            "list",
            Value::List(vec![
                Value::Int(1),
                Value::Str("two".into()),
                Value::Bytes(b"three".to_vec()),
                Value::List(vec![Value::Bool(true), Value::Float(-0.0)]),
                Value::Map(Map::from_iter([("k", "v")])),
            ]),
        )
        .with("empty_list", Value::List(Vec::new()))
        .with("map", Value::Map(nested))
        .with("empty_map", Value::Map(Map::new()))
        .with("ключ ✓", "non-ASCII key")
        .with("", "empty key")
}

pub(crate) async fn receive_returns_same_message_bit_for_bit(cx: Ctx<'_>) {
    let layer = cx.default_layer();
    let sent = every_kind();
    layer.send_ok("kinds", sent.clone()).await;
    let got = layer.expect("kinds").await;
    for (key, value) in sent.as_map().iter() {
        let back = got
            .get(key)
            .unwrap_or_else(|| panic!("key {key:?} is missing from the received message"));
        assert!(
            back.bit_eq(value),
            "key {key:?}: sent {value:?} ({}), received {back:?} ({})",
            value.kind_name(),
            back.kind_name()
        );
    }
    assert_eq!(
        got.len(),
        sent.len(),
        "the received message has extra keys: {got:?}"
    );
    assert!(
        got.as_map().bit_eq(sent.as_map()),
        "the keys came back in another order: sent {:?}, received {:?}",
        sent.as_map().keys().collect::<Vec<_>>(),
        got.as_map().keys().collect::<Vec<_>>()
    );
    assert!(
        matches!(got.get("bytes_like_text"), Some(Value::Bytes(_))),
        "bytes must stay bytes, distinct from text"
    );
    assert!(
        matches!(got.get("text"), Some(Value::Str(_))),
        "text must stay text, distinct from bytes"
    );
}

fn sample_order() -> Order {
    Order {
        kind: "order.created".into(),
        id: 4_200_000_000_123,
        items: vec!["tea".into(), "crème brûlée".into()],
        total: 12.75,
        note: None,
        stock: BTreeMap::from([("tea".to_owned(), 7), ("crème brûlée".to_owned(), -1)]),
        urgent: true,
    }
}

pub(crate) async fn typed_messages_round_trip(cx: Ctx<'_>) {
    let layer = cx.default_layer();
    let order = sample_order();
    layer.send_typed("orders", &order).await;
    let back: Order = layer.receive_typed("orders").await;
    assert_eq!(
        back, order,
        "the typed value did not survive the round trip"
    );

    // A typed message is an ordinary message on the channel: `type` and all.
    let second = Order {
        note: Some("ring twice".into()),
        ..sample_order()
    };
    layer.send_typed("orders", &second).await;
    let raw = layer.expect("orders").await;
    assert_eq!(raw.message_type(), Some("order.created"));
    assert_eq!(raw.get("note").and_then(Value::as_str), Some("ring twice"));
    let decoded: Order = raw
        .decode()
        .unwrap_or_else(|e| panic!("decoding {raw:?} failed: {e}"));
    assert_eq!(decoded, second);

    // And a map of std types, with no struct at all.
    let tally = BTreeMap::from([
        ("type".to_owned(), "tally".to_owned()),
        ("a".to_owned(), "b".to_owned()),
    ]);
    layer.send_typed("tallies", &tally).await;
    let back: BTreeMap<String, String> = layer.receive_typed("tallies").await;
    assert_eq!(back, tally);
}

pub(crate) async fn large_message_1mb(cx: Ctx<'_>) {
    const MIB: usize = 1 << 20;
    let layer = cx.default_layer();
    let bytes: Vec<u8> = (0..MIB).map(|i| (i % 251) as u8).collect();
    let text: String = "channel layer ✓ "
        .chars()
        .cycle()
        .scan(0usize, |len, c| {
            *len += c.len_utf8();
            (*len <= MIB).then_some(c)
        })
        .collect();
    assert!(text.len() > MIB - 4);

    let big_bytes = Message::new("big.bytes").with("data", Value::Bytes(bytes.clone()));
    let big_text = Message::new("big.text").with("data", text.clone());
    layer.send_ok("big", big_bytes).await;
    layer.send_ok("big", big_text).await;

    let got = layer.expect("big").await;
    let data = got
        .get("data")
        .and_then(Value::as_bytes)
        .expect("a byte string under \"data\"");
    assert_eq!(
        data.len(),
        bytes.len(),
        "the 1 MiB byte string changed length"
    );
    assert!(
        data == bytes.as_slice(),
        "the 1 MiB byte string changed content"
    );

    let got = layer.expect("big").await;
    let data = got
        .get("data")
        .and_then(Value::as_str)
        .expect("a string under \"data\"");
    assert_eq!(data.len(), text.len(), "the 1 MiB text changed length");
    assert!(data == text, "the 1 MiB text changed content");
}

pub(crate) async fn fifo_order(cx: Ctx<'_>) {
    let layer = cx.default_layer();
    layer.send_numbered("fifo", "message", 1..=10).await;
    layer.expect_numbered("fifo", 1..=10).await;
    layer.expect_nothing("fifo").await;

    // Sends and receives interleaved, on two channels side by side.
    layer.send_numbered("fifo", "message", 11..=13).await;
    layer.send_numbered("other", "message", 101..=102).await;
    layer.expect_numbered("fifo", [11]).await;
    layer.send_numbered("fifo", "message", 14..=15).await;
    layer.send_numbered("other", "message", [103]).await;
    layer.expect_numbered("other", [101]).await;
    layer.expect_numbered("fifo", 12..=15).await;
    layer.expect_numbered("other", 102..=103).await;
    layer.expect_nothing("fifo").await;
    layer.expect_nothing("other").await;
}

pub(crate) async fn try_receive_empty(cx: Ctx<'_>) {
    let layer = cx.default_layer();
    let started = Instant::now();
    match layer.try_receive("nothing-here").await {
        Err(TryReceiveError::Empty) => {}
        other => panic!("try_receive on an empty channel must be Empty, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "try_receive must not wait: it took {:?}",
        started.elapsed()
    );
    layer.send_ok("nothing-here", numbered("one", 1)).await;
    match layer.try_receive("nothing-here").await {
        Ok(message) => assert_eq!(message, numbered("one", 1)),
        other => panic!("try_receive must take the queued message, got {other:?}"),
    }
    match layer.try_receive("nothing-here").await {
        Err(TryReceiveError::Empty) => {}
        other => panic!("the channel must be empty again, got {other:?}"),
    }
}

pub(crate) async fn receive_timeout(cx: Ctx<'_>) {
    let layer = cx.default_layer();
    let timeout = Duration::from_millis(200);
    let started = Instant::now();
    let outcome = layer.receive_timeout("idle", timeout).await;
    let waited = started.elapsed();
    match outcome {
        Err(ReceiveError::Timeout) => {}
        other => panic!("a receive on an idle channel must time out, got {other:?}"),
    }
    assert!(
        waited >= timeout,
        "the receive gave up after {waited:?}, before its {timeout:?} timeout"
    );
    assert!(
        waited < timeout + Duration::from_secs(2),
        "the receive took {waited:?} to time out after {timeout:?}"
    );

    // A deadline already in the past times out at once.
    let past = Instant::now().checked_sub(Duration::from_millis(1));
    let started = Instant::now();
    match layer
        .receive_until("idle", Some(past.unwrap_or_else(Instant::now)))
        .await
    {
        Err(ReceiveError::Timeout) => {}
        other => panic!("a receive with a past deadline must time out, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "a receive with a past deadline waited {:?}",
        started.elapsed()
    );

    // A timed-out receive leaves the channel usable.
    layer.send_ok("idle", numbered("late", 1)).await;
    let got = layer.receive_timeout("idle", QUIET * 10).await;
    assert_eq!(got.ok(), Some(numbered("late", 1)));
}

/// A message nested `depth` levels (the message map being level 1), mixing lists and maps.
fn nested(depth: usize) -> Message {
    let v = (1..depth).fold(Value::Int(7), |v, level| {
        if level % 2 == 0 {
            let mut map = Map::new();
            map.insert("down", v);
            Value::Map(map)
        } else {
            Value::List(vec![v])
        }
    });
    Message::new("deep").with("v", v)
}

/// Every backend checks the same message limits at send: a message at the default depth
/// limit (128) is delivered intact, one level more is `InvalidMessage` (`TooDeep`) with the
/// message handed back; with `max_message_bytes` set, a larger message is `TooLarge`, for
/// `send` and `group_send` alike; nothing refused is delivered.
pub(crate) async fn message_limits_checked_at_send(cx: Ctx<'_>) {
    use crate::config::DEFAULT_MAX_MESSAGE_DEPTH as DEPTH;
    use crate::error::{LayerError, SendError};
    use crate::message::MessageError;
    use crate::testing::driver::config;

    let layer = cx.default_layer();
    layer.send_ok("limits.deep", nested(DEPTH)).await;
    let got = layer.expect("limits.deep").await;
    assert!(
        got == nested(DEPTH),
        "a message at the depth limit arrives intact"
    );
    match layer.send("limits.deep", nested(DEPTH + 1)).await {
        Err(SendError::InvalidMessage {
            error: MessageError::TooDeep { max_depth },
            message,
        }) => {
            assert_eq!(max_depth, DEPTH);
            assert!(message == nested(DEPTH + 1), "the message is handed back");
        }
        other => panic!("a send one level past the depth limit: {other:?}"),
    }
    layer.expect_nothing("limits.deep").await;

    let layer = cx.layer(config(LayerConfig::builder().max_message_bytes(1000)));
    let small = Message::new("small").with("blob", Value::Bytes(vec![1; 900]));
    let large = Message::new("large").with("blob", Value::Bytes(vec![1; 1000]));
    layer.send_ok("limits.size", small).await;
    layer.expect("limits.size").await;
    match layer.send("limits.size", large.clone()).await {
        Err(SendError::InvalidMessage {
            error: MessageError::TooLarge {
                max_bytes: 1000, ..
            },
            message,
        }) => assert!(message == large, "the message is handed back"),
        other => panic!("a send past the size limit: {other:?}"),
    }
    if cx.has(&layer, Capability::Groups) {
        layer.group_add_ok("limits.room", "limits.size").await;
        match layer.group_send("limits.room", large).await {
            Err(LayerError::InvalidMessage(MessageError::TooLarge { .. })) => {}
            other => panic!("a group_send past the size limit: {other:?}"),
        }
    }
    layer.expect_nothing("limits.size").await;
}
