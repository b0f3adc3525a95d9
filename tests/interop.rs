//! Wire compatibility of the Redis backend with Python's channels_redis 4.3 core layer.
//!
//! Every test starts its own `redis-server` (two for sharding) and a Python peer running the
//! real `channels_redis.core.RedisChannelLayer` (tests/interop/peer.py), configured exactly like
//! the Rust [`RedisLayer`] next to it (same prefix, capacity, expiry, keys), and proves that
//! both directions work: normal channels, process-specific channels minted on either side,
//! groups with members on both sides, capacity, expiry, encryption, undecodable bytes, and
//! sharding over two servers (channels_redis issue #221). The last tests configure the Rust
//! side by URL alone, as a deployment would: two servers in one URL, and encryption keys as
//! URL parameters or in a key file.
//!
//! When redis-server or the Python venv is unavailable the tests are skipped with a message,
//! unless `CHANNEL_LAYER_REQUIRE_SERVICES=1`, which turns the skip into a failure.

#![cfg(feature = "redis")]

mod support;

use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use channel_layer::redis::{RedisConfig, RedisLayer};
use channel_layer::{
    AnyLayer, ChannelLayer, ChannelLayerExt, GroupSendReport, Map, Message, MessageError,
    ReceiveError, SendError, Value,
};
use serde_json::json;
use support::python::{PythonPeer, same_content};
use support::redis_server::RedisServer;

/// How long a receive that must succeed may wait.
const WAIT: Duration = Duration::from_secs(5);
/// How long a receive that must time out waits.
const SHORT: Duration = Duration::from_millis(400);

// ===== Set-up =====

/// What a side is configured with; the same value on both sides unless a test says otherwise.
#[derive(Clone, Debug)]
struct Settings {
    prefix: &'static str,
    capacity: usize,
    expiry_secs: u64,
    keys: Vec<&'static str>,
}

impl Settings {
    fn new(prefix: &'static str) -> Self {
        Settings {
            prefix,
            capacity: 100,
            expiry_secs: 60,
            keys: Vec::new(),
        }
    }

    fn capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity;
        self
    }

    fn expiry(mut self, secs: u64) -> Self {
        self.expiry_secs = secs;
        self
    }

    #[cfg(feature = "redis-encryption")]
    fn keys(mut self, keys: &[&'static str]) -> Self {
        self.keys = keys.to_vec();
        self
    }

    /// The Rust layer on `hosts`. No prefetch, so what no receiver waits for stays in Redis
    /// (where the tests look at it and where it counts against capacity).
    fn rust(&self, hosts: &[String]) -> RedisLayer {
        let mut config = RedisConfig::sharded(hosts.iter().cloned());
        config.prefix = self.prefix.to_owned();
        config.layer.capacity = self.capacity;
        config.layer.expiry = Duration::from_secs(self.expiry_secs);
        config.receive_prefetch = 0;
        #[cfg(feature = "redis-encryption")]
        {
            config.symmetric_encryption_keys = self.keys.iter().map(|k| (*k).to_owned()).collect();
        }
        #[cfg(not(feature = "redis-encryption"))]
        assert!(self.keys.is_empty(), "encryption needs redis-encryption");
        RedisLayer::new(config).expect("a valid configuration")
    }

    /// The Rust layer on `servers`, configured by URL alone (`AnyLayer::from_url`): one
    /// server, or several in one URL (`redis://127.0.0.1:P1,127.0.0.1:P2/0`), with the prefix,
    /// capacity, expiry and keys as query parameters, and anything in `extra` appended.
    fn rust_by_url(&self, servers: &[&RedisServer], extra: &str) -> AnyLayer {
        let hosts: Vec<String> = servers
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port()))
            .collect();
        let mut url = format!(
            "redis://{}/0?prefix={}&capacity={}&expiry={}",
            hosts.join(","),
            self.prefix,
            self.capacity,
            self.expiry_secs
        );
        for key in &self.keys {
            url.push_str("&symmetric_encryption_keys=");
            url.extend(url::form_urlencoded::byte_serialize(key.as_bytes()));
        }
        url.push_str(extra);
        AnyLayer::from_url(&url).unwrap_or_else(|e| panic!("{url}: {e}"))
    }

    /// The Python peer on `hosts`, or `None` when the venv is unavailable (skip rule applied).
    fn python(&self, hosts: &[String]) -> Option<PythonPeer> {
        let mut init = json!({
            "hosts": hosts,
            "prefix": self.prefix,
            "capacity": self.capacity,
            "expiry": self.expiry_secs,
        });
        if !self.keys.is_empty() {
            init["symmetric_encryption_keys"] = json!(self.keys);
        }
        PythonPeer::spawn(init)
    }
}

/// One test's world on one server. Fields drop in order: peer and layer before their server.
struct World {
    peer: PythonPeer,
    layer: RedisLayer,
    server: RedisServer,
    prefix: &'static str,
}

impl World {
    /// Both sides configured with `settings`.
    fn start(settings: &Settings) -> Option<World> {
        World::start_mixed(settings, settings)
    }

    /// The Rust layer with `rust`, the Python peer with `python` (same prefix).
    fn start_mixed(rust: &Settings, python: &Settings) -> Option<World> {
        assert_eq!(rust.prefix, python.prefix);
        let server = RedisServer::start()?;
        let hosts = vec![server.url()];
        let peer = python.python(&hosts)?;
        let layer = rust.rust(&hosts);
        Some(World {
            peer,
            layer,
            server,
            prefix: rust.prefix,
        })
    }

    /// The Redis key of a channel (`prefix + non-local name`).
    fn key(&self, channel: &str) -> String {
        format!("{}{}", self.prefix, non_local(channel))
    }

    fn zcard(&self, channel: &str) -> i64 {
        zcard(&self.server, &self.key(channel))
    }
}

// ===== Helpers =====

fn wall_clock() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64()
}

fn sleep_until(t: f64) {
    let left = t - wall_clock();
    if left > 0.0 {
        thread::sleep(Duration::from_secs_f64(left));
    }
}

/// The part of a channel name that names its Redis key: up to and including `!`, if any.
fn non_local(channel: &str) -> &str {
    match channel.find('!') {
        Some(i) => &channel[..=i],
        None => channel,
    }
}

fn zcard(server: &RedisServer, key: &str) -> i64 {
    server
        .query(&[b"ZCARD", key.as_bytes()])
        .as_int()
        .unwrap_or_else(|| panic!("ZCARD {key} is not an integer"))
}

/// The members of a sorted set, lowest score first.
fn members(server: &RedisServer, key: &str) -> Vec<Vec<u8>> {
    server
        .query(&[b"ZRANGE", key.as_bytes(), b"0", b"-1"])
        .bulks()
}

/// The scores of a sorted set, lowest first.
fn scores(server: &RedisServer, key: &str) -> Vec<f64> {
    server
        .query(&[b"ZRANGE", key.as_bytes(), b"0", b"-1", b"WITHSCORES"])
        .bulks()
        .chunks(2)
        .map(|pair| {
            std::str::from_utf8(&pair[1])
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("bad score {:?}", pair[1]))
        })
        .collect()
}

/// Adds `member` to the sorted set `key` with the current time as score, as a sender would.
fn zadd_now(server: &RedisServer, key: &str, member: &[u8]) {
    let score = format!("{:.6}", wall_clock());
    let reply = server.query(&[b"ZADD", key.as_bytes(), score.as_bytes(), member]);
    assert_eq!(reply.as_int(), Some(1), "ZADD {key}: {reply:?}");
}

fn rust_receive(layer: &impl ChannelLayer, channel: &str) -> Message {
    layer
        .receive_timeout(channel, WAIT)
        .unwrap_or_else(|e| panic!("Rust receive on {channel}: {e:?}"))
}

fn py_receive(peer: &mut PythonPeer, channel: &str) -> Message {
    match peer.receive_message(channel, WAIT) {
        Ok(message) => message,
        Err(e) => panic!(
            "Python receive on {channel}: {e}\n--- peer stderr ---\n{}",
            peer.stderr()
        ),
    }
}

fn py_send(peer: &mut PythonPeer, channel: &str, message: &Message) {
    if let Err(e) = peer.send(channel, message) {
        panic!(
            "Python send to {channel}: {e}\n--- peer stderr ---\n{}",
            peer.stderr()
        );
    }
}

fn rust_send(layer: &impl ChannelLayer, channel: &str, message: &Message) {
    if let Err(e) = layer.send(channel, message.clone()) {
        panic!("Rust send to {channel}: {e:?}");
    }
}

fn assert_rust_gets_nothing(layer: &impl ChannelLayer, channel: &str) {
    match layer.receive_timeout(channel, SHORT) {
        Err(ReceiveError::Timeout) => {}
        other => panic!("Rust receive on {channel}: expected a timeout, got {other:?}"),
    }
}

fn assert_py_gets_nothing(peer: &mut PythonPeer, channel: &str) {
    match peer.receive(channel, SHORT) {
        Err(e) if e == "Timeout" => {}
        other => panic!("Python receive on {channel}: expected a timeout, got {other:?}"),
    }
}

#[track_caller]
fn assert_same(got: &Message, sent: &Message) {
    assert!(same_content(got, sent), "sent {sent:?}\nreceived {got:?}");
}

fn assert_rust_full(result: Result<(), SendError>, capacity: usize) {
    match result {
        Err(SendError::Full { capacity: c, .. }) => assert_eq!(c, capacity),
        other => panic!("expected SendError::Full, got {other:?}"),
    }
}

fn assert_py_full(result: Result<(), String>) {
    assert_eq!(result, Err("ChannelFull".to_owned()));
}

/// A small message with a sequence number, to check order.
fn numbered(kind: &str, n: i64) -> Message {
    Message::new(kind).with("n", n)
}

/// A message with every kind of value the JSON bridge carries, at msgpack's encoding
/// boundaries (fixint/int8/16/32/64, fixstr/str8/16/32, bin8/16/32, fixarray/array16,
/// fixmap/map16), numbered `n`.
fn every_kind(tag: &str, n: i64) -> Message {
    let ints: Vec<Value> = [
        0,
        1,
        127,
        128,
        255,
        256,
        65_535,
        65_536,
        i64::from(u32::MAX),
        1 << 32,
        i64::MAX,
        -1,
        -32,
        -33,
        -128,
        -129,
        -32_768,
        -32_769,
        i64::from(i32::MIN),
        i64::from(i32::MIN) - 1,
        i64::MIN,
    ]
    .into_iter()
    .map(Value::Int)
    .collect();
    let floats: Vec<Value> = [
        0.0,
        -0.0,
        1.5,
        -2.25,
        0.1,
        1e-7,
        123_456.789,
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
    ]
    .into_iter()
    .map(Value::Float)
    .collect();
    let big_map: Map = (0..20)
        .map(|i| (format!("key{i:02}"), Value::Int(i)))
        .collect();
    let nested: Map = [
        ("bytes", Value::Bytes(vec![0, 1, 2, 254, 255])),
        (
            "list",
            Value::List(vec![Value::Int(1), Value::Str("two".into()), Value::Null]),
        ),
        ("empty_map", Value::Map(Map::new())),
        ("empty_list", Value::List(Vec::new())),
        ("big_map", Value::Map(big_map)),
    ]
    .into_iter()
    .collect();
    Message::new("interop.every_kind")
        .with("tag", tag)
        .with("n", n)
        .with("nothing", Value::Null)
        .with("yes", true)
        .with("no", false)
        .with("ints", Value::List(ints))
        .with("floats", Value::List(floats))
        .with("empty_str", "")
        .with("unicode", "héllo ✓ 𝄞 — 日本語 \u{0} nul")
        .with("str8", "a".repeat(200))
        .with("str16", "é".repeat(300))
        .with("str32", "x".repeat(70_000))
        .with("empty_bytes", Value::Bytes(Vec::new()))
        .with("bin8", Value::Bytes((0..=255).collect()))
        .with(
            "bin16",
            Value::Bytes((0..1000).map(|i| (i % 256) as u8).collect()),
        )
        .with("bin32", Value::Bytes(vec![0xab; 70_000]))
        .with(
            "long_list",
            Value::List((0..20).map(|i| Value::Int(i * 1000)).collect()),
        )
        .with("nested", Value::Map(nested))
        .with(
            "lists",
            Value::List(vec![
                Value::List(vec![]),
                Value::List(vec![Value::Bytes(b"raw".to_vec()), Value::Float(-3.25)]),
                Value::List(vec![Value::List(vec![Value::Map(
                    [("deep", Value::Bool(true))].into_iter().collect(),
                )])]),
            ]),
        )
}

// ===== 1. Normal channels =====

#[test]
fn normal_channels_carry_every_kind_of_value_both_ways_in_order() {
    let Some(mut w) = World::start(&Settings::new("interop1")) else {
        return;
    };

    // Python → Rust.
    let to_rust = "interop.to-rust";
    let sent: Vec<Message> = (0..4).map(|n| every_kind("py->rs", n)).collect();
    for message in &sent {
        py_send(&mut w.peer, to_rust, message);
    }
    // channels_redis's key: prefix + name, no separator.
    assert_eq!(zcard(&w.server, "interop1interop.to-rust"), 4);
    for message in &sent {
        assert_same(&rust_receive(&w.layer, to_rust), message);
    }
    assert_rust_gets_nothing(&w.layer, to_rust);
    assert_eq!(w.zcard(to_rust), 0);

    // Rust → Python.
    let to_python = "interop.to-python";
    let sent: Vec<Message> = (0..4).map(|n| every_kind("rs->py", n)).collect();
    for message in &sent {
        rust_send(&w.layer, to_python, message);
    }
    assert_eq!(zcard(&w.server, "interop1interop.to-python"), 4);
    for message in &sent {
        assert_same(&py_receive(&mut w.peer, to_python), message);
    }
    assert_py_gets_nothing(&mut w.peer, to_python);

    // Many small messages, interleaved senders on one channel: one FIFO line.
    let shared = "interop.shared";
    for n in 0..10 {
        let message = numbered("interop.small", n);
        if n % 2 == 0 {
            py_send(&mut w.peer, shared, &message);
        } else {
            rust_send(&w.layer, shared, &message);
        }
    }
    for n in 0..5 {
        assert_same(
            &rust_receive(&w.layer, shared),
            &numbered("interop.small", n),
        );
    }
    for n in 5..10 {
        assert_same(
            &py_receive(&mut w.peer, shared),
            &numbered("interop.small", n),
        );
    }
    assert_rust_gets_nothing(&w.layer, shared);

    // A message of just its type, stored as 12 random bytes and then plain msgpack. (On a
    // channel no receive here gave up on: see the ignored test at the end of this file.)
    let bare = "interop.bare";
    rust_send(&w.layer, bare, &Message::new("bare"));
    let stored = members(&w.server, &w.key(bare));
    assert_eq!(stored.len(), 1);
    assert_eq!(&stored[0][12..], b"\x81\xa4type\xa4bare");
    assert_same(&py_receive(&mut w.peer, bare), &Message::new("bare"));
    py_send(&mut w.peer, shared, &Message::new("bare"));
    assert_same(&rust_receive(&w.layer, shared), &Message::new("bare"));
}

// ===== 2. Process-specific channels =====

#[test]
fn process_channels_minted_on_either_side_receive_from_the_other() {
    let Some(mut w) = World::start(&Settings::new("interop2")) else {
        return;
    };

    // Minted by Rust, sent to by Python: three local channels under one non-local part.
    let rust: Vec<String> = (0..3)
        .map(|_| w.layer.new_channel("specific").unwrap())
        .collect();
    for name in &rust {
        assert!(name.starts_with("specific."), "{name}");
        assert_eq!(name.matches('!').count(), 1, "{name}");
        assert_eq!(non_local(name), non_local(&rust[0]));
    }
    for n in 0..3 {
        for (c, name) in rust.iter().enumerate() {
            py_send(&mut w.peer, name, &every_kind(&format!("to-rust-{c}"), n));
        }
    }
    // One key for all of them: prefix + "specific.<client>!".
    assert_eq!(w.zcard(&rust[0]), 9);
    // Receive the last channel first: the others' messages wait for them, in order.
    for c in [2, 0, 1] {
        for n in 0..3 {
            let got = rust_receive(&w.layer, &rust[c]);
            assert_same(&got, &every_kind(&format!("to-rust-{c}"), n));
        }
    }
    for name in &rust {
        assert_rust_gets_nothing(&w.layer, name);
    }
    // Python may not receive on Rust's channel (channels_redis checks the client prefix).
    assert_eq!(
        w.peer.receive(&rust[0], SHORT),
        Err("AssertionError".to_owned())
    );

    // Minted by Python, sent to by Rust.
    let python: Vec<String> = (0..3).map(|_| w.peer.new_channel(None)).collect();
    for name in &python {
        let start = format!("specific.{}!", w.peer.client_prefix());
        assert!(name.starts_with(&start), "{name}");
    }
    for n in 0..3 {
        for (c, name) in python.iter().enumerate() {
            rust_send(&w.layer, name, &every_kind(&format!("to-python-{c}"), n));
        }
    }
    assert_eq!(w.zcard(&python[0]), 9);
    for c in [2, 0, 1] {
        for n in 0..3 {
            let got = py_receive(&mut w.peer, &python[c]);
            assert_same(&got, &every_kind(&format!("to-python-{c}"), n));
        }
    }
    assert_py_gets_nothing(&mut w.peer, &python[1]);
    // Rust may not receive on Python's channel either.
    match w.layer.receive_timeout(&python[0], SHORT) {
        Err(ReceiveError::InvalidName(_)) => {}
        other => panic!("Rust receive on a Python channel: {other:?}"),
    }

    // Channels with another prefix than "specific" work alike.
    let reply = w.layer.new_channel("reply.to").unwrap();
    py_send(&mut w.peer, &reply, &numbered("reply", 1));
    assert_same(&rust_receive(&w.layer, &reply), &numbered("reply", 1));
    let reply = w.peer.new_channel(Some("reply.to"));
    rust_send(&w.layer, &reply, &numbered("reply", 2));
    assert_same(&py_receive(&mut w.peer, &reply), &numbered("reply", 2));
}

// ===== 3. Groups =====

#[test]
fn groups_with_members_on_both_sides() {
    let Some(mut w) = World::start(&Settings::new("interop3")) else {
        return;
    };
    let group = "interop-group";
    let r1 = w.layer.new_channel("specific").unwrap();
    let r2 = w.layer.new_channel("specific").unwrap();
    let rn = "interop.rust-normal";
    let p1 = w.peer.new_channel(None);
    let p2 = w.peer.new_channel(None);
    let pn = "interop.python-normal";
    // Each side adds some of the other's channels.
    w.layer.group_add(group, &r1).unwrap();
    w.layer.group_add(group, &r2).unwrap();
    w.layer.group_add(group, pn).unwrap();
    w.peer.group_add(group, rn);
    w.peer.group_add(group, &p1);
    w.peer.group_add(group, &p2);
    // channels_redis's group key: prefix + ":group:" + name.
    assert_eq!(zcard(&w.server, "interop3:group:interop-group"), 6);

    let rust_members = [r1.as_str(), r2.as_str(), rn];
    let python_members = [p1.as_str(), p2.as_str(), pn];

    // From Python: everyone gets it.
    let m1 = every_kind("group-from-python", 1);
    let logs = w.peer.group_send(group, &m1);
    assert!(logs.is_empty(), "{logs:?}");
    for ch in rust_members {
        assert_same(&rust_receive(&w.layer, ch), &m1);
    }
    for ch in python_members {
        assert_same(&py_receive(&mut w.peer, ch), &m1);
    }

    // From Rust: everyone gets it, and the report counts members of both processes.
    let before = w.layer.metrics();
    let m2 = every_kind("group-from-rust", 2);
    let report = w.layer.group_send(group, m2.clone()).unwrap();
    assert_eq!(report, GroupSendReport::new(6, 0));
    for ch in python_members {
        assert_same(&py_receive(&mut w.peer, ch), &m2);
    }
    for ch in rust_members {
        assert_same(&rust_receive(&w.layer, ch), &m2);
    }

    // Each side discards one of the other's channels.
    w.peer.group_discard(group, &r2);
    w.layer.group_discard(group, &p2).unwrap();
    assert_eq!(zcard(&w.server, "interop3:group:interop-group"), 4);

    let m3 = numbered("group-after-discard", 3);
    let logs = w.peer.group_send(group, &m3);
    assert!(logs.is_empty(), "{logs:?}");
    let m4 = numbered("group-after-discard", 4);
    let report = w.layer.group_send(group, m4.clone()).unwrap();
    assert_eq!(report, GroupSendReport::new(4, 0));
    for ch in [r1.as_str(), rn] {
        assert_same(&rust_receive(&w.layer, ch), &m3);
        assert_same(&rust_receive(&w.layer, ch), &m4);
    }
    for ch in [p1.as_str(), pn] {
        assert_same(&py_receive(&mut w.peer, ch), &m3);
        assert_same(&py_receive(&mut w.peer, ch), &m4);
    }
    assert_rust_gets_nothing(&w.layer, &r2);
    assert_py_gets_nothing(&mut w.peer, &p2);

    let after = w.layer.metrics();
    assert_eq!(after.group_sends - before.group_sends, 2);
    assert_eq!(after.group_deliveries - before.group_deliveries, 10);
    assert_eq!(after.group_skipped_full, before.group_skipped_full);

    // Discarding the rest from either side empties the group.
    w.layer.group_discard(group, &r1).unwrap();
    w.layer.group_discard(group, rn).unwrap();
    w.peer.group_discard(group, &p1);
    w.peer.group_discard(group, pn);
    assert_eq!(
        w.layer.group_send(group, numbered("nobody", 5)).unwrap(),
        GroupSendReport::new(0, 0)
    );
    assert!(w.peer.group_send(group, &numbered("nobody", 6)).is_empty());
    assert_rust_gets_nothing(&w.layer, &r1);
    assert_py_gets_nothing(&mut w.peer, pn);
}

// ===== 4. Capacity =====

#[test]
fn capacity_is_shared_on_normal_channels() {
    let Some(mut w) = World::start(&Settings::new("interop4a").capacity(3)) else {
        return;
    };

    // Rust fills it: Python's sender gets ChannelFull.
    let ch = "interop.filled-by-rust";
    for n in 0..3 {
        rust_send(&w.layer, ch, &numbered("fill", n));
    }
    assert_py_full(w.peer.send(ch, &numbered("fill", 3)));
    assert_rust_full(w.layer.send(ch, numbered("fill", 3)), 3);
    assert_eq!(w.zcard(ch), 3);
    for n in 0..3 {
        assert_same(&py_receive(&mut w.peer, ch), &numbered("fill", n));
    }
    // Room again.
    py_send(&mut w.peer, ch, &numbered("fill", 4));
    assert_same(&rust_receive(&w.layer, ch), &numbered("fill", 4));

    // Python fills it: Rust's sender gets SendError::Full, with the message handed back.
    let ch = "interop.filled-by-python";
    for n in 0..3 {
        py_send(&mut w.peer, ch, &numbered("fill", n));
    }
    let refused = w.layer.send(ch, numbered("fill", 3)).unwrap_err();
    assert!(refused.is_full(), "{refused:?}");
    assert_same(&refused.into_message(), &numbered("fill", 3));
    assert_py_full(w.peer.send(ch, &numbered("fill", 3)));
    for n in 0..3 {
        assert_same(&rust_receive(&w.layer, ch), &numbered("fill", n));
    }
    rust_send(&w.layer, ch, &numbered("fill", 4));
    assert_same(&py_receive(&mut w.peer, ch), &numbered("fill", 4));
    assert!(w.layer.metrics().rejected_full >= 2);
}

#[test]
fn capacity_is_shared_by_the_non_local_part_of_process_channels() {
    let Some(mut w) = World::start(&Settings::new("interop4b").capacity(3)) else {
        return;
    };

    // Rust's channels, filled by Rust: Python's sender is refused on any of them.
    let r: Vec<String> = (0..3)
        .map(|_| w.layer.new_channel("specific").unwrap())
        .collect();
    rust_send(&w.layer, &r[0], &numbered("r0", 0));
    rust_send(&w.layer, &r[1], &numbered("r1", 0));
    rust_send(&w.layer, &r[0], &numbered("r0", 1));
    assert_eq!(w.zcard(&r[0]), 3);
    for name in &r {
        assert_py_full(w.peer.send(name, &numbered("refused", 0)));
        assert_rust_full(w.layer.send(name, numbered("refused", 0)), 3);
    }
    // The first in line taken: room for one, whoever sends it. (A receive takes messages in
    // the key's order, also those for other local channels, which then wait here, outside
    // Redis and its count, as in channels_redis's receive buffer.)
    assert_same(&rust_receive(&w.layer, &r[0]), &numbered("r0", 0));
    assert_eq!(w.zcard(&r[0]), 2);
    py_send(&mut w.peer, &r[2], &numbered("r2", 0));
    assert_py_full(w.peer.send(&r[2], &numbered("refused", 1)));
    assert_rust_full(w.layer.send(&r[1], numbered("refused", 1)), 3);
    assert_same(&rust_receive(&w.layer, &r[1]), &numbered("r1", 0));
    assert_same(&rust_receive(&w.layer, &r[0]), &numbered("r0", 1));
    assert_same(&rust_receive(&w.layer, &r[2]), &numbered("r2", 0));
    assert_eq!(w.zcard(&r[0]), 0);

    // Rust's channels, filled by Python.
    py_send(&mut w.peer, &r[1], &numbered("r1", 1));
    py_send(&mut w.peer, &r[1], &numbered("r1", 2));
    py_send(&mut w.peer, &r[2], &numbered("r2", 1));
    assert_rust_full(w.layer.send(&r[0], numbered("refused", 2)), 3);
    for n in 1..3 {
        assert_same(&rust_receive(&w.layer, &r[1]), &numbered("r1", n));
    }
    assert_same(&rust_receive(&w.layer, &r[2]), &numbered("r2", 1));

    // Python's channels, filled by Python: Rust's sender is refused, also on a channel that
    // holds nothing itself.
    let p: Vec<String> = (0..3).map(|_| w.peer.new_channel(None)).collect();
    py_send(&mut w.peer, &p[0], &numbered("p0", 0));
    py_send(&mut w.peer, &p[0], &numbered("p0", 1));
    py_send(&mut w.peer, &p[1], &numbered("p1", 0));
    for name in &p {
        assert_rust_full(w.layer.send(name, numbered("refused", 3)), 3);
    }
    assert_py_full(w.peer.send(&p[2], &numbered("refused", 3)));
    for n in 0..2 {
        assert_same(&py_receive(&mut w.peer, &p[0]), &numbered("p0", n));
    }
    assert_same(&py_receive(&mut w.peer, &p[1]), &numbered("p1", 0));

    // Python's channels, filled by Rust.
    for n in 0..3 {
        rust_send(&w.layer, &p[2], &numbered("p2", n));
    }
    assert_py_full(w.peer.send(&p[0], &numbered("refused", 4)));
    for n in 0..3 {
        assert_same(&py_receive(&mut w.peer, &p[2]), &numbered("p2", n));
    }
}

#[test]
fn group_sends_over_capacity_skip_full_members_on_both_sides() {
    let Some(mut w) = World::start(&Settings::new("interop4c").capacity(3)) else {
        return;
    };
    let group = "interop-capped";
    let r = w.layer.new_channel("specific").unwrap();
    let p1 = w.peer.new_channel(None);
    let p2 = w.peer.new_channel(None);
    w.layer.group_add(group, &r).unwrap();
    w.peer.group_add(group, &p1);
    w.peer.group_add(group, &p2);

    // Python fills the Rust member with direct sends.
    for n in 0..3 {
        py_send(&mut w.peer, &r, &numbered("direct", n));
    }
    let before = w.layer.metrics();

    // channels_redis logs full channel keys (the Rust member's) of group members (three).
    let g1 = numbered("group", 1);
    let logs = w.peer.group_send(group, &g1);
    assert_eq!(
        logs,
        vec!["1 of 3 channels over capacity in group interop-capped".to_owned()]
    );
    // Rust counts members: both Python members got it, the Rust member was skipped.
    let g2 = numbered("group", 2);
    assert_eq!(
        w.layer.group_send(group, g2.clone()).unwrap(),
        GroupSendReport::new(2, 1)
    );

    // The Python members' key now holds two bundled messages; one direct send fills it.
    rust_send(&w.layer, &p1, &numbered("direct", 9));
    assert_eq!(w.zcard(&p1), 3);
    assert_eq!(
        w.layer.group_send(group, numbered("group", 3)).unwrap(),
        GroupSendReport::new(0, 3)
    );
    let logs = w.peer.group_send(group, &numbered("group", 4));
    assert_eq!(
        logs,
        vec!["2 of 3 channels over capacity in group interop-capped".to_owned()]
    );
    let after = w.layer.metrics();
    assert_eq!(after.group_skipped_full - before.group_skipped_full, 4);
    assert_eq!(after.group_deliveries - before.group_deliveries, 2);

    // What each member got: nothing from the group sends that found it full.
    for n in 0..3 {
        assert_same(&rust_receive(&w.layer, &r), &numbered("direct", n));
    }
    assert_rust_gets_nothing(&w.layer, &r);
    assert_same(&py_receive(&mut w.peer, &p1), &g1);
    assert_same(&py_receive(&mut w.peer, &p1), &g2);
    assert_same(&py_receive(&mut w.peer, &p1), &numbered("direct", 9));
    assert_same(&py_receive(&mut w.peer, &p2), &g1);
    assert_same(&py_receive(&mut w.peer, &p2), &g2);
    assert_py_gets_nothing(&mut w.peer, &p2);
}

#[test]
fn per_channel_capacity_rules_agree() {
    let settings = Settings::new("interop4d");
    let Some(server) = RedisServer::start() else {
        return;
    };
    let hosts = vec![server.url()];
    let Some(mut peer) = PythonPeer::spawn(json!({
        "hosts": hosts,
        "prefix": settings.prefix,
        "capacity": settings.capacity,
        "expiry": settings.expiry_secs,
        "channel_capacity": {"interop.tiny*": 1, "reply.*": 2},
    })) else {
        return;
    };
    let mut config = RedisConfig::new(server.url());
    config.prefix = settings.prefix.to_owned();
    config.receive_prefetch = 0;
    config.layer = channel_layer::LayerConfig::builder()
        .capacity(settings.capacity)
        .expiry(Duration::from_secs(settings.expiry_secs))
        .channel_capacity("interop.tiny*", 1)
        .channel_capacity("reply.*", 2)
        .build()
        .unwrap();
    let layer = RedisLayer::new(config).unwrap();

    // A normal channel matching a rule.
    let tiny = "interop.tiny-one";
    rust_send(&layer, tiny, &numbered("tiny", 0));
    assert_py_full(peer.send(tiny, &numbered("tiny", 1)));
    assert_rust_full(layer.send(tiny, numbered("tiny", 1)), 1);
    assert_same(&py_receive(&mut peer, tiny), &numbered("tiny", 0));
    py_send(&mut peer, tiny, &numbered("tiny", 2));
    assert_rust_full(layer.send(tiny, numbered("tiny", 3)), 1);
    assert_same(&rust_receive(&layer, tiny), &numbered("tiny", 2));

    // Process channels: the rule matches the full name.
    let r = layer.new_channel("reply").unwrap();
    py_send(&mut peer, &r, &numbered("reply", 0));
    py_send(&mut peer, &r, &numbered("reply", 1));
    assert_py_full(peer.send(&r, &numbered("reply", 2)));
    assert_rust_full(layer.send(&r, numbered("reply", 2)), 2);
    let p = peer.new_channel(Some("reply"));
    rust_send(&layer, &p, &numbered("reply", 3));
    rust_send(&layer, &p, &numbered("reply", 4));
    assert_rust_full(layer.send(&p, numbered("reply", 5)), 2);
    assert_py_full(peer.send(&p, &numbered("reply", 5)));
    for n in 0..2 {
        assert_same(&rust_receive(&layer, &r), &numbered("reply", n));
    }
    for n in 3..5 {
        assert_same(&py_receive(&mut peer, &p), &numbered("reply", n));
    }

    // Other channels get the default capacity.
    for n in 0..5 {
        rust_send(&layer, "interop.roomy", &numbered("roomy", n));
    }
    py_send(&mut peer, "interop.roomy", &numbered("roomy", 5));
}

#[test]
fn a_flush_on_either_side_empties_the_shared_prefix() {
    let Some(mut w) = World::start(&Settings::new("interop9")) else {
        return;
    };
    // Every key under the prefix but the Rust layer's own wake-up key (`<prefix>__wake__:...`,
    // which no channel name can collide with: `:` is not allowed in names).
    let keys = |w: &World| {
        let mut keys = w.server.query(&[b"KEYS", b"interop9*"]).bulks();
        keys.retain(|k| !k.windows(8).any(|part| part == b"__wake__"));
        keys
    };

    // Python flushes what Rust stored and what it sent to Rust.
    let r = w.layer.new_channel("specific").unwrap();
    rust_send(&w.layer, "interop.pending", &numbered("pending", 0));
    py_send(&mut w.peer, &r, &numbered("pending", 1));
    w.layer.group_add("interop-flushed", &r).unwrap();
    w.peer.flush();
    assert_eq!(keys(&w), Vec::<Vec<u8>>::new());
    assert_rust_gets_nothing(&w.layer, "interop.pending");
    assert_rust_gets_nothing(&w.layer, &r);
    assert_eq!(
        w.layer
            .group_send("interop-flushed", numbered("x", 0))
            .unwrap(),
        GroupSendReport::new(0, 0)
    );

    // Rust flushes what Python stored, group memberships included. (Another channel than
    // the one a receive here just gave up on: see the ignored test at the end of this file.)
    let p = w.peer.new_channel(None);
    py_send(&mut w.peer, "interop.pending2", &numbered("pending", 2));
    rust_send(&w.layer, &p, &numbered("pending", 3));
    w.peer.group_add("interop-flushed", &p);
    w.layer.flush().unwrap();
    assert_eq!(keys(&w), Vec::<Vec<u8>>::new());
    assert!(
        w.peer
            .group_send("interop-flushed", &numbered("x", 1))
            .is_empty()
    );
    assert_py_gets_nothing(&mut w.peer, &p);
    assert_py_gets_nothing(&mut w.peer, "interop.pending2");

    // Both carry on afterwards.
    py_send(&mut w.peer, "interop.after", &numbered("after", 0));
    assert_same(
        &rust_receive(&w.layer, "interop.after"),
        &numbered("after", 0),
    );
    rust_send(&w.layer, &p, &numbered("after", 1));
    assert_same(&py_receive(&mut w.peer, &p), &numbered("after", 1));
}

// ===== 5. Expiry =====

#[test]
fn messages_older_than_the_expiry_are_not_delivered() {
    let Some(mut w) = World::start(&Settings::new("interop5").expiry(1)) else {
        return;
    };
    let ch = "interop.expiring";
    let ra = w.layer.new_channel("specific").unwrap();
    let rb = w.layer.new_channel("specific").unwrap();
    let rc = w.layer.new_channel("specific").unwrap();
    let lonely = "interop.lonely";

    // channels_redis prunes at send time only below `int(now) - expiry`, and sets the key's
    // TTL to the expiry on every send. On a busy channel a receiver therefore meets messages
    // older than the expiry: "old" sent just after a whole second t0, "mid" at t0 + 0.75
    // (renewing the TTL before the key dies), "fresh" at t0 + 1.25, whose prune spares "old".
    let mut attempt = 0;
    loop {
        attempt += 1;
        let t = wall_clock();
        if t.fract() > 0.2 {
            sleep_until(t.floor() + 1.02);
        }
        py_send(&mut w.peer, ch, &numbered("old", 0));
        py_send(&mut w.peer, &ra, &numbered("old", 1));
        py_send(&mut w.peer, lonely, &numbered("old", 2));
        let t0 = scores(&w.server, &w.key(ch))[0];
        sleep_until(t0 + 0.75);
        py_send(&mut w.peer, ch, &numbered("mid", 0));
        py_send(&mut w.peer, &rc, &numbered("mid", 1));
        sleep_until(t0 + 1.25);
        py_send(&mut w.peer, ch, &numbered("fresh", 0));
        py_send(&mut w.peer, &rb, &numbered("fresh", 1));
        if w.zcard(ch) == 3 && w.zcard(&ra) == 3 {
            break;
        }
        // Too slow: the old ones were pruned or their keys expired. Start over.
        assert!(attempt < 3, "could not keep an expired message in Redis");
        for key in [w.key(ch), w.key(&ra)] {
            w.server.query(&[b"DEL", key.as_bytes()]);
        }
    }
    let old_scores = scores(&w.server, &w.key(ch));
    assert!(
        wall_clock() - old_scores[0] > 1.0,
        "the old message is not older than the expiry: {old_scores:?}"
    );

    let before = w.layer.metrics();
    // A normal channel: the expired message is skipped, the younger ones delivered.
    assert_same(&rust_receive(&w.layer, ch), &numbered("mid", 0));
    assert_same(&rust_receive(&w.layer, ch), &numbered("fresh", 0));
    // A process channel: the younger messages for the other local channels are delivered,
    // the expired one never.
    assert_same(&rust_receive(&w.layer, &rb), &numbered("fresh", 1));
    assert_same(&rust_receive(&w.layer, &rc), &numbered("mid", 1));
    assert_rust_gets_nothing(&w.layer, &ra);
    assert_rust_gets_nothing(&w.layer, ch);
    let after = w.layer.metrics();
    assert_eq!(
        after.expired - before.expired,
        2,
        "before {before:?}\nafter {after:?}"
    );
    assert_eq!(w.zcard(ch), 0);
    assert_eq!(w.zcard(&ra), 0);

    // Alone, the old message went with its key (channels_redis's TTL): nothing to deliver.
    assert_rust_gets_nothing(&w.layer, lonely);

    // Fresh messages still flow both ways with this expiry.
    py_send(&mut w.peer, ch, &numbered("fresh", 2));
    assert_same(&rust_receive(&w.layer, ch), &numbered("fresh", 2));
    rust_send(&w.layer, ch, &numbered("fresh", 3));
    assert_same(&py_receive(&mut w.peer, ch), &numbered("fresh", 3));
}

// ===== 6. Encryption =====

/// Whether a stored member is 12 random bytes followed by a Fernet token.
#[cfg(feature = "redis-encryption")]
fn is_fernet(member: &[u8]) -> bool {
    member.len() > 12 + 100 && member[12..].starts_with(b"gAAAAA")
}

#[cfg(feature = "redis-encryption")]
#[test]
fn encrypted_messages_cross_both_ways() {
    let settings = Settings::new("interop6a").keys(&["k1"]);
    let Some(mut w) = World::start(&settings) else {
        return;
    };
    let ch = "interop.secret";

    let sent = every_kind("encrypted py->rs", 0);
    py_send(&mut w.peer, ch, &sent);
    let stored = members(&w.server, &w.key(ch));
    assert!(is_fernet(&stored[0]), "{:?}", &stored[0][..40]);
    assert_same(&rust_receive(&w.layer, ch), &sent);

    let sent = every_kind("encrypted rs->py", 1);
    rust_send(&w.layer, ch, &sent);
    let stored = members(&w.server, &w.key(ch));
    assert!(is_fernet(&stored[0]), "{:?}", &stored[0][..40]);
    assert!(
        !stored[0].windows(16).any(|win| win == b"encrypted rs->py"),
        "plain text stored"
    );
    assert_same(&py_receive(&mut w.peer, ch), &sent);

    // Process channels and groups too.
    let r = w.layer.new_channel("specific").unwrap();
    let p = w.peer.new_channel(None);
    py_send(&mut w.peer, &r, &numbered("secret", 1));
    assert_same(&rust_receive(&w.layer, &r), &numbered("secret", 1));
    rust_send(&w.layer, &p, &numbered("secret", 2));
    assert_same(&py_receive(&mut w.peer, &p), &numbered("secret", 2));
    w.layer.group_add("secret-group", &r).unwrap();
    w.peer.group_add("secret-group", &p);
    assert!(
        w.peer
            .group_send("secret-group", &numbered("secret", 3))
            .is_empty()
    );
    assert_eq!(
        w.layer
            .group_send("secret-group", numbered("secret", 4))
            .unwrap(),
        GroupSendReport::new(2, 0)
    );
    for n in 3..5 {
        assert_same(&rust_receive(&w.layer, &r), &numbered("secret", n));
        assert_same(&py_receive(&mut w.peer, &p), &numbered("secret", n));
    }
    assert_eq!(w.layer.metrics().undecodable, 0);
}

#[cfg(feature = "redis-encryption")]
#[test]
fn encryption_keys_rotate_with_multifernet_semantics() {
    // Python already encrypts with the new key k2; Rust still encrypts with k1. Each
    // decrypts with either key.
    let python = Settings::new("interop6b").keys(&["k2", "k1"]);
    let rust = Settings::new("interop6b").keys(&["k1", "k2"]);
    let Some(mut w) = World::start_mixed(&rust, &python) else {
        return;
    };
    let ch = "interop.rotating";
    for n in 0..3 {
        py_send(&mut w.peer, ch, &every_kind("rotated py->rs", n));
    }
    for n in 0..3 {
        assert_same(
            &rust_receive(&w.layer, ch),
            &every_kind("rotated py->rs", n),
        );
    }
    for n in 0..3 {
        rust_send(&w.layer, ch, &numbered("rotated rs->py", n));
    }
    for n in 0..3 {
        assert_same(&py_receive(&mut w.peer, ch), &numbered("rotated rs->py", n));
    }

    // A process that only knows the old key reads what Rust (first key k1) writes.
    let old = Settings::new("interop6b").keys(&["k1"]);
    let Some(mut old_peer) = old.python(&[w.server.url()]) else {
        return;
    };
    rust_send(&w.layer, ch, &numbered("for the old key", 0));
    assert_same(
        &py_receive(&mut old_peer, ch),
        &numbered("for the old key", 0),
    );
    assert_eq!(w.layer.metrics().undecodable, 0);
}

#[cfg(feature = "redis-encryption")]
#[test]
fn a_message_under_another_key_is_dropped_and_counted() {
    let python = Settings::new("interop6c").keys(&["k1"]);
    let rust = Settings::new("interop6c").keys(&["not-k1"]);
    let Some(mut w) = World::start_mixed(&rust, &python) else {
        return;
    };
    let ch = "interop.wrong-key";
    let r = w.layer.new_channel("specific").unwrap();

    let before = w.layer.metrics();
    py_send(&mut w.peer, ch, &numbered("unreadable", 0));
    py_send(&mut w.peer, &r, &numbered("unreadable", 1));
    assert_rust_gets_nothing(&w.layer, ch);
    assert_rust_gets_nothing(&w.layer, &r);
    let after = w.layer.metrics();
    assert_eq!(after.undecodable - before.undecodable, 2);
    assert_eq!(w.zcard(ch), 0, "the undecodable message was not dropped");

    // The layer carries on: a message from a layer with its key is read.
    let same = Settings::new("interop6c").keys(&["not-k1"]);
    let writer = same.rust(&[w.server.url()]);
    rust_send(&writer, ch, &numbered("readable", 2));
    assert_same(&rust_receive(&w.layer, ch), &numbered("readable", 2));

    // And Python, with its key, rejects what Rust encrypted with another (InvalidToken).
    rust_send(&w.layer, ch, &numbered("unreadable", 3));
    assert_eq!(
        w.peer.receive(ch, WAIT).map(drop),
        Err("InvalidToken".to_owned())
    );

    // A Rust layer without keys cannot read encrypted messages either.
    let plain = Settings::new("interop6c").rust(&[w.server.url()]);
    py_send(&mut w.peer, ch, &numbered("unreadable", 4));
    let before = plain.metrics();
    assert_rust_gets_nothing(&plain, ch);
    assert_eq!(plain.metrics().undecodable - before.undecodable, 1);
}

// ===== 7. Undecodable bytes =====

/// Members that no channels_redis peer could have written: too short, not msgpack, msgpack
/// but not a map, maps with non-string keys or invalid UTF-8, lengths past the end (some
/// claiming gigabytes), and nesting far deeper than any message.
fn garbage() -> Vec<Vec<u8>> {
    let with_prefix = |i: u8, body: &[u8]| {
        let mut member = vec![i; 12];
        member.extend_from_slice(body);
        member
    };
    let mut deep = vec![0x81, 0xa1, b'a'];
    deep.extend(std::iter::repeat_n(0x91, 100_000));
    deep.push(0xc0);
    vec![
        Vec::new(),
        b"short".to_vec(),
        with_prefix(1, b""),
        with_prefix(2, &[0xc1]),
        with_prefix(3, &[0x07]),
        with_prefix(4, &[0x91, 0x01]),
        with_prefix(5, &[0x81, 0xa1, b'a']),
        with_prefix(6, &[0x81, 0x01, 0x02]),
        with_prefix(7, &[0x81, 0xa1, b'a', 0xa2, 0xff, 0xfe]),
        with_prefix(8, &[0x81, 0xa1, b'a', 0xdb, 0xff, 0xff, 0xff, 0xff, b'x']),
        with_prefix(9, &[0x81, 0xa1, b'a', 0xc6, 0xff, 0xff, 0xff, 0xff]),
        with_prefix(10, &[0xdf, 0xff, 0xff, 0xff, 0xff]),
        with_prefix(11, &[0x81, 0xa1, b'a', 0xdd, 0xff, 0xff, 0xff, 0xff]),
        with_prefix(12, &[0x81, 0xa1, b'a', 0xc7, 0x01, 0x05, 0x00]),
        with_prefix(13, &deep),
        // A whole message and then more (msgpack-python: ExtraData).
        with_prefix(14, &[0x81, 0xa4, b't', b'y', b'p', b'e', 0xa1, b'x', 0xc0]),
        // Not even a prefix's worth of 0xff, then nothing.
        vec![0xff; 11],
    ]
}

/// `{"type": "x", "__asgi_channel__": <value>}` as msgpack, after a 12-byte prefix.
fn with_asgi_channel(i: u8, value: &[u8]) -> Vec<u8> {
    let mut member = vec![i; 12];
    member.extend_from_slice(&[0x82, 0xa4]);
    member.extend_from_slice(b"type");
    member.extend_from_slice(&[0xa1, b'x', 0xb0]);
    member.extend_from_slice(b"__asgi_channel__");
    member.extend_from_slice(value);
    member
}

fn msgpack_str(s: &str) -> Vec<u8> {
    assert!(s.len() < 256);
    let mut out = vec![0xd9, s.len() as u8];
    out.extend_from_slice(s.as_bytes());
    out
}

#[test]
fn undecodable_members_are_dropped_and_counted() {
    let Some(mut w) = World::start(&Settings::new("interop7")) else {
        return;
    };
    let ch = "interop.garbage";
    let junk = garbage();

    // Only garbage: the receive times out, everything is dropped and counted.
    let before = w.layer.metrics();
    for member in &junk {
        zadd_now(&w.server, &w.key(ch), member);
    }
    assert_eq!(w.zcard(ch), junk.len() as i64);
    assert_rust_gets_nothing(&w.layer, ch);
    let after = w.layer.metrics();
    assert_eq!(
        after.undecodable - before.undecodable,
        junk.len() as u64,
        "before {before:?}\nafter {after:?}"
    );
    assert_eq!(w.zcard(ch), 0);

    // Garbage around valid messages: the valid ones arrive, in order.
    let before = w.layer.metrics();
    for member in &junk[..5] {
        zadd_now(&w.server, &w.key(ch), member);
    }
    py_send(&mut w.peer, ch, &every_kind("between garbage", 0));
    for member in &junk[5..] {
        zadd_now(&w.server, &w.key(ch), member);
    }
    py_send(&mut w.peer, ch, &every_kind("between garbage", 1));
    for n in 0..2 {
        assert_same(
            &rust_receive(&w.layer, ch),
            &every_kind("between garbage", n),
        );
    }
    assert_rust_gets_nothing(&w.layer, ch);
    let after = w.layer.metrics();
    assert_eq!(after.undecodable - before.undecodable, junk.len() as u64);

    // A process key: garbage, and messages naming no channel of this key (wrong type of
    // `__asgi_channel__`, or a channel under another non-local part).
    let r = w.layer.new_channel("specific").unwrap();
    let key = w.key(&r);
    let mut process_junk = junk.clone();
    process_junk.push(with_asgi_channel(20, &[0x05]));
    process_junk.push(with_asgi_channel(21, &[0x91, 0x05]));
    process_junk.push(with_asgi_channel(22, &msgpack_str("specific.other!x")));
    process_junk.push(with_asgi_channel(23, &[0x91, 0xc0]));
    let before = w.layer.metrics();
    for member in &process_junk {
        zadd_now(&w.server, &key, member);
    }
    py_send(&mut w.peer, &r, &numbered("valid", 0));
    assert_same(&rust_receive(&w.layer, &r), &numbered("valid", 0));
    assert_rust_gets_nothing(&w.layer, &r);
    let after = w.layer.metrics();
    assert_eq!(
        after.undecodable - before.undecodable,
        process_junk.len() as u64,
        "before {before:?}\nafter {after:?}"
    );
    assert_eq!(zcard(&w.server, &key), 0);

    // try_receive meets garbage the same way.
    let before = w.layer.metrics();
    for member in &junk {
        zadd_now(&w.server, &w.key(ch), member);
    }
    py_send(&mut w.peer, ch, &numbered("valid", 1));
    let mut got = None;
    let until = Instant::now() + WAIT;
    while got.is_none() && Instant::now() < until {
        got = w.layer.try_receive(ch).ok();
    }
    assert_same(&got.expect("the valid message"), &numbered("valid", 1));
    assert_eq!(
        w.layer.metrics().undecodable - before.undecodable,
        junk.len() as u64
    );

    // What Python sends but a message here cannot hold: an integer beyond i64 (msgpack
    // uint64). Dropped and counted, never wrapped around.
    let before = w.layer.metrics();
    let huge = serde_json::from_str(r#"{"type": "x", "n": 9223372036854775808}"#).unwrap();
    w.peer.send_json(ch, huge).unwrap();
    assert_rust_gets_nothing(&w.layer, ch);
    assert_eq!(w.layer.metrics().undecodable - before.undecodable, 1);

    // A map with a key twice: the last value wins on both sides, as in msgpack-python.
    let mut twice = vec![30; 12];
    twice.extend_from_slice(&[0x82, 0xa4, b't', b'y', b'p', b'e', 0xa1, b'x']);
    twice.extend_from_slice(&[0xa4, b't', b'y', b'p', b'e', 0xa1, b'y']);
    zadd_now(&w.server, &w.key(ch), &twice);
    assert_same(&rust_receive(&w.layer, ch), &Message::new("y"));
    twice[0] = 31;
    zadd_now(&w.server, &w.key(ch), &twice);
    assert_same(&py_receive(&mut w.peer, ch), &Message::new("y"));

    // Python, meanwhile, still talks to this layer.
    rust_send(&w.layer, ch, &numbered("still fine", 0));
    assert_same(&py_receive(&mut w.peer, ch), &numbered("still fine", 0));
}

// ===== 8. Sharding (channels_redis #221) =====

#[test]
fn sharded_process_channels_reach_their_receiver_both_ways() {
    let Some(s1) = RedisServer::start() else {
        return;
    };
    let Some(s2) = RedisServer::start() else {
        return;
    };
    let servers = [&s1, &s2];
    let hosts = vec![s1.url(), s2.url()];
    let settings = Settings::new("interop8");
    let Some(mut peer) = settings.python(&hosts) else {
        return;
    };
    // A second Python process, used as a probe of where channels_redis's sender puts
    // messages for Python's own channels.
    let Some(mut probe) = settings.python(&hosts) else {
        return;
    };
    let layer = settings.rust(&hosts);
    let key = |channel: &str| format!("interop8{}", non_local(channel));
    let counts = |channel: &str| servers.map(|s| zcard(s, &key(channel)));

    // Python → Rust: channels_redis hashes the FULL name, so messages to channels under one
    // non-local part spread over both servers. Mint until they did.
    let mut rust_channels: Vec<String> = Vec::new();
    while rust_channels.len() < 6 || counts(&rust_channels[0]).contains(&0) {
        assert!(
            rust_channels.len() < 40,
            "all on one server: {rust_channels:?}"
        );
        let name = layer.new_channel("specific").unwrap();
        py_send(&mut peer, &name, &numbered(&name, 0));
        rust_channels.push(name);
    }
    let spread = counts(&rust_channels[0]);
    assert_eq!(spread.iter().sum::<i64>(), rust_channels.len() as i64);
    for name in rust_channels.iter().rev() {
        assert_same(&rust_receive(&layer, name), &numbered(name, 0));
    }
    assert_eq!(counts(&rust_channels[0]), [0, 0]);

    // Rust → Python: this layer hashes the non-local name, where Python's receiver polls.
    // The probe shows channels_redis's own sender would spread these names over both
    // servers (mint until it did), so the names are ones where the two hashes differ.
    let mut python_channels: Vec<String> = Vec::new();
    while python_channels.len() < 6 || counts(&python_channels[0]).contains(&0) {
        assert!(
            python_channels.len() < 40,
            "all on one server: {python_channels:?}"
        );
        let name = peer.new_channel(None);
        py_send(&mut probe, &name, &numbered("probe", 0));
        python_channels.push(name);
    }
    // Python's receiver would never see the probes on the other server (#221): remove them.
    for server in servers {
        server.query(&[b"DEL", key(&python_channels[0]).as_bytes()]);
    }
    for name in &python_channels {
        rust_send(&layer, name, &numbered(name, 1));
    }
    let landed = counts(&python_channels[0]);
    assert!(
        landed.contains(&0) && landed.contains(&(python_channels.len() as i64)),
        "Rust spread one non-local part over both servers: {landed:?}"
    );
    for name in python_channels.iter().rev() {
        assert_same(&py_receive(&mut peer, name), &numbered(name, 1));
    }

    // Normal channels: Python round-robins its sends over the servers; Rust polls them all.
    for n in 0..4 {
        py_send(&mut peer, "interop.sharded", &numbered("normal", n));
    }
    assert_eq!(servers.map(|s| zcard(s, "interop8interop.sharded")), [2, 2]);
    let mut got: Vec<i64> = (0..4)
        .map(|_| {
            let m = rust_receive(&layer, "interop.sharded");
            m.get("n").and_then(Value::as_i64).expect("a number")
        })
        .collect();
    got.sort_unstable();
    assert_eq!(got, [0, 1, 2, 3]);

    // Groups: both sides hash the group name and each member's non-local name alike.
    let group = "interop-sharded-group";
    let r = layer.new_channel("specific").unwrap();
    let p = peer.new_channel(None);
    layer.group_add(group, &r).unwrap();
    peer.group_add(group, &p);
    assert!(peer.group_send(group, &numbered("group", 1)).is_empty());
    assert_eq!(
        layer.group_send(group, numbered("group", 2)).unwrap(),
        GroupSendReport::new(2, 0)
    );
    for n in 1..3 {
        assert_same(&rust_receive(&layer, &r), &numbered("group", n));
        assert_same(&py_receive(&mut peer, &p), &numbered("group", n));
    }
}

// ===== A receiver that gave up =====

/// Sends right after a receive that gave up (timed out) keep the channel's capacity and a
/// flush deletes them: when its last receiver leaves, the puller blocked in `BZPOPMIN` on the
/// key is woken (and a blocking receiver waits for that), so it cannot take the next message
/// for nobody and leave it out of Redis for a round trip.
#[test]
fn sends_right_after_a_timed_out_receive_respect_capacity_and_flush() {
    let Some(mut w) = World::start(&Settings::new("interop10").capacity(1)) else {
        return;
    };
    let ch = "interop.after-timeout";
    let gave_up = Duration::from_millis(20);
    for round in 0..20 {
        assert_rust_gets_nothing_within(&w.layer, ch, gave_up);
        rust_send(&w.layer, ch, &numbered("first", round));
        // Capacity 1: this one must be refused.
        let second = w.layer.send(ch, numbered("second", round));
        assert!(
            matches!(second, Err(SendError::Full { .. })),
            "round {round}: a second message was accepted into a channel of capacity 1 \
             (it holds {} now)",
            w.zcard(ch)
        );
        assert_same(&py_receive(&mut w.peer, ch), &numbered("first", round));
    }
    for round in 0..20 {
        assert_rust_gets_nothing_within(&w.layer, ch, gave_up);
        rust_send(&w.layer, ch, &numbered("flushed", round));
        w.layer.flush().unwrap();
        thread::sleep(Duration::from_millis(20));
        assert_eq!(w.zcard(ch), 0, "round {round}: a flushed message came back");
    }
}

fn assert_rust_gets_nothing_within(layer: &RedisLayer, channel: &str, timeout: Duration) {
    match layer.receive_timeout(channel, timeout) {
        Err(ReceiveError::Timeout) => {}
        other => panic!("Rust receive on {channel}: expected a timeout, got {other:?}"),
    }
}

// ===== 9. Deployments configured by URL =====

/// Receives `count` messages on a normal channel of a Python layer sharded over several
/// servers. channels_redis waits on one server per receive, taking the servers in turn, so a
/// receive may time out while a message waits on another server; the next one looks there.
fn py_receive_sharded(peer: &mut PythonPeer, channel: &str, count: usize) -> Vec<Message> {
    let mut got = Vec::new();
    let mut attempts = 0;
    while got.len() < count {
        attempts += 1;
        assert!(
            attempts <= 4 * count + 4,
            "Python received {} of {count} on {channel} in {attempts} tries",
            got.len()
        );
        match peer.receive_message(channel, SHORT) {
            Ok(message) => got.push(message),
            Err(e) if e == "Timeout" => {}
            Err(e) => panic!(
                "Python receive on {channel}: {e}\n--- peer stderr ---\n{}",
                peer.stderr()
            ),
        }
    }
    got
}

/// The sequence numbers of `messages`, sorted (order across servers is not kept).
fn sorted_numbers(messages: &[Message]) -> Vec<i64> {
    let mut numbers: Vec<i64> = messages
        .iter()
        .map(|m| {
            m.get("n")
                .and_then(Value::as_i64)
                .expect("a numbered message")
        })
        .collect();
    numbers.sort_unstable();
    numbers
}

#[test]
fn a_url_naming_two_servers_shards_like_a_python_host_list() {
    let Some(s1) = RedisServer::start() else {
        return;
    };
    let Some(s2) = RedisServer::start() else {
        return;
    };
    let servers = [&s1, &s2];
    let settings = Settings::new("interop9a");
    // Python: RedisChannelLayer(hosts=[url1, url2]); Rust: redis://127.0.0.1:P1,127.0.0.1:P2/0.
    let Some(mut peer) = settings.python(&[s1.url(), s2.url()]) else {
        return;
    };
    let layer = settings.rust_by_url(&servers, "");
    let counts = |key: &str| servers.map(|s| zcard(s, key));

    // Normal channels, Python → Rust: Python's sends take the servers in turn.
    let channels = ["interop.url-a", "interop.url-b", "interop.url-c"];
    for channel in channels {
        for n in 0..4 {
            py_send(&mut peer, channel, &numbered(channel, n));
        }
        assert_eq!(counts(&format!("interop9a{channel}")), [2, 2], "{channel}");
    }
    for channel in channels {
        let got: Vec<Message> = (0..4).map(|_| rust_receive(&layer, channel)).collect();
        assert_eq!(sorted_numbers(&got), [0, 1, 2, 3], "{channel}");
        assert!(got.iter().all(|m| m.message_type() == Some(channel)));
        assert_rust_gets_nothing(&layer, channel);
    }

    // Normal channels, Rust → Python: Rust's sends take the servers in turn too.
    let channels = ["interop.url-d", "interop.url-e", "interop.url-f"];
    for channel in channels {
        for n in 0..4 {
            rust_send(&layer, channel, &numbered(channel, n));
        }
        let spread = counts(&format!("interop9a{channel}"));
        assert!(
            spread.iter().all(|&c| c > 0) && spread.iter().sum::<i64>() == 4,
            "{channel}: {spread:?}"
        );
    }
    for channel in channels {
        let got = py_receive_sharded(&mut peer, channel, 4);
        assert_eq!(sorted_numbers(&got), [0, 1, 2, 3], "{channel}");
    }

    // Process-specific channels minted by Rust: Python hashes the full name, so its sends
    // land on both servers; the Rust layer polls its key on each.
    let rust_channels: Vec<String> = (0..8)
        .map(|_| layer.new_channel("specific").unwrap())
        .collect();
    for (i, name) in rust_channels.iter().enumerate() {
        py_send(&mut peer, name, &numbered("to-rust", i as i64));
    }
    let spread = counts(&format!("interop9a{}", non_local(&rust_channels[0])));
    assert_eq!(spread.iter().sum::<i64>(), 8, "{spread:?}");
    for (i, name) in rust_channels.iter().enumerate().rev() {
        assert_same(&rust_receive(&layer, name), &numbered("to-rust", i as i64));
    }

    // Process-specific channels minted by Python: Rust sends to the server Python listens on.
    let python_channels: Vec<String> = (0..8).map(|_| peer.new_channel(None)).collect();
    for (i, name) in python_channels.iter().enumerate() {
        rust_send(&layer, name, &numbered("to-python", i as i64));
    }
    for (i, name) in python_channels.iter().enumerate().rev() {
        assert_same(
            &py_receive(&mut peer, name),
            &numbered("to-python", i as i64),
        );
    }

    // A group with members on both sides, added from both sides, sent to from both sides.
    let group = "interop-url-group";
    let (r1, r2) = (&rust_channels[0], &rust_channels[1]);
    let (p1, p2) = (&python_channels[0], &python_channels[1]);
    let rn = "interop.url-rust-normal";
    layer.group_add(group, r1).unwrap();
    layer.group_add(group, p1).unwrap();
    layer.group_add(group, rn).unwrap();
    peer.group_add(group, r2);
    peer.group_add(group, p2);
    let group_key = format!("interop9a:group:{group}");
    assert_eq!(counts(&group_key).iter().sum::<i64>(), 5);
    assert!(peer.group_send(group, &numbered("group", 1)).is_empty());
    assert_eq!(
        layer.group_send(group, numbered("group", 2)).unwrap(),
        GroupSendReport::new(5, 0)
    );
    for n in 1..3 {
        for ch in [r1.as_str(), r2.as_str(), rn] {
            assert_same(&rust_receive(&layer, ch), &numbered("group", n));
        }
        for ch in [p1, p2] {
            assert_same(&py_receive(&mut peer, ch), &numbered("group", n));
        }
    }
    peer.group_discard(group, r1);
    layer.group_discard(group, p2).unwrap();
    assert_eq!(
        layer.group_send(group, numbered("group", 3)).unwrap(),
        GroupSendReport::new(3, 0)
    );
    assert_same(&rust_receive(&layer, r2), &numbered("group", 3));
    assert_same(&rust_receive(&layer, rn), &numbered("group", 3));
    assert_same(&py_receive(&mut peer, p1), &numbered("group", 3));
    assert_rust_gets_nothing(&layer, r1);
    assert_py_gets_nothing(&mut peer, p2);
    assert_eq!(layer.metrics().undecodable, 0);
}

#[cfg(feature = "redis-encryption")]
#[test]
fn encryption_keys_from_the_url_cross_both_ways() {
    let settings = Settings::new("interop9b").keys(&["k1"]);
    let Some(server) = RedisServer::start() else {
        return;
    };
    let Some(mut peer) = settings.python(&[server.url()]) else {
        return;
    };
    // Rust: redis://127.0.0.1:P/0?...&symmetric_encryption_keys=k1
    let layer = settings.rust_by_url(&[&server], "");
    let ch = "interop.url-secret";
    let key = format!("interop9b{ch}");

    let sent = every_kind("url-encrypted py->rs", 0);
    py_send(&mut peer, ch, &sent);
    assert!(is_fernet(&members(&server, &key)[0]));
    assert_same(&rust_receive(&layer, ch), &sent);

    let sent = every_kind("url-encrypted rs->py", 1);
    rust_send(&layer, ch, &sent);
    let stored = members(&server, &key);
    assert!(is_fernet(&stored[0]));
    assert!(!stored[0].windows(20).any(|w| w == b"url-encrypted rs->py"));
    assert_same(&py_receive(&mut peer, ch), &sent);

    let r = layer.new_channel("specific").unwrap();
    let p = peer.new_channel(None);
    py_send(&mut peer, &r, &numbered("secret", 1));
    assert_same(&rust_receive(&layer, &r), &numbered("secret", 1));
    rust_send(&layer, &p, &numbered("secret", 2));
    assert_same(&py_receive(&mut peer, &p), &numbered("secret", 2));
    layer.group_add("url-secret-group", &r).unwrap();
    peer.group_add("url-secret-group", &p);
    assert!(
        peer.group_send("url-secret-group", &numbered("secret", 3))
            .is_empty()
    );
    assert_same(&rust_receive(&layer, &r), &numbered("secret", 3));
    assert_same(&py_receive(&mut peer, &p), &numbered("secret", 3));
    assert_eq!(layer.metrics().undecodable, 0);
}

/// Key rotation, with the Rust keys given as two URL parameters or as a key file: Rust
/// configured `k2, k1` reads what Python with `[k1]` wrote, Python with `[k2, k1]` reads what
/// Rust wrote, and Python with only `[k1]` cannot, since the first key encrypts.
#[cfg(feature = "redis-encryption")]
#[test]
fn rotated_keys_from_the_url_or_a_key_file_agree_with_multifernet() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let old = Settings::new("interop9c").keys(&["k1"]);
    let new = Settings::new("interop9c").keys(&["k2", "k1"]);
    let Some(mut old_peer) = old.python(&[server.url()]) else {
        return;
    };
    let Some(mut new_peer) = new.python(&[server.url()]) else {
        return;
    };

    let dir = support::scratch_root().join("interop-keys");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(format!("{}-rotated", std::process::id()));
    // One key per line; blank lines and the whitespace around a key are ignored.
    std::fs::write(&file, "k2\n\n  k1  \n").unwrap();
    let file_param = format!(
        "&symmetric_encryption_keys_file={}",
        url::form_urlencoded::byte_serialize(file.to_str().unwrap().as_bytes()).collect::<String>()
    );
    let by_params = new.rust_by_url(&[&server], "");
    let by_file = Settings::new("interop9c").rust_by_url(&[&server], &file_param);
    let _ = std::fs::remove_file(&file);

    for (form, layer) in [("parameters", &by_params), ("key file", &by_file)] {
        let ch = format!("interop.rotation-{}", form.replace(' ', "-"));
        old_peer.send(&ch, &numbered("from old python", 0)).unwrap();
        assert_same(&rust_receive(layer, &ch), &numbered("from old python", 0));

        rust_send(layer, &ch, &numbered("from rust", 1));
        assert_same(&py_receive(&mut new_peer, &ch), &numbered("from rust", 1));

        rust_send(layer, &ch, &numbered("from rust", 2));
        assert_eq!(
            old_peer.receive(&ch, WAIT).map(drop),
            Err("InvalidToken".to_owned()),
            "{form}: Rust did not encrypt with its first key"
        );

        // What the rotated Python writes with k2, Rust reads.
        new_peer.send(&ch, &numbered("from new python", 3)).unwrap();
        assert_same(&rust_receive(layer, &ch), &numbered("from new python", 3));
        assert_eq!(layer.metrics().undecodable, 0, "{form}");
    }
}

// ===== Message limits =====

/// A message nested `depth` levels, the message map itself being level 1.
fn nested(depth: usize) -> Message {
    let v = (1..depth).fold(Value::Int(7), |v, _| Value::List(vec![v]));
    Message::new("deep").with("v", v)
}

/// Deep messages channels_redis peers send (msgpack-python reads about a thousand levels)
/// cross both ways up to the layer's depth limit, 128 by default; past it, Rust refuses to
/// send and drops (and counts) what a peer sends.
#[test]
fn deeply_nested_messages_cross_both_ways_up_to_the_limit() {
    let Some(mut w) = World::start(&Settings::new("interopdeep")) else {
        return;
    };
    for depth in [65, 128] {
        py_send(&mut w.peer, "deep", &nested(depth));
        assert_same(&rust_receive(&w.layer, "deep"), &nested(depth));
    }
    // The JSON the peer answers with nests a few levels more; serde_json reads 128.
    rust_send(&w.layer, "deep", &nested(100));
    assert_same(&py_receive(&mut w.peer, "deep"), &nested(100));

    match w.layer.send("deep", nested(129)) {
        Err(SendError::InvalidMessage {
            error: MessageError::TooDeep { max_depth: 128 },
            message,
        }) => assert_same(&message, &nested(129)),
        other => panic!("a 129-level send: {other:?}"),
    }
    let before = w.layer.metrics().undecodable;
    py_send(&mut w.peer, "deep", &nested(129));
    assert_rust_gets_nothing(&w.layer, "deep");
    assert_eq!(w.layer.metrics().undecodable - before, 1);
}
