//! Tests of the test support itself: the private `redis-server` harness, the Python peer that
//! drives the real channels_redis, and the JSON message convention between them.

mod support;

use std::net::{Ipv4Addr, TcpStream};
use std::time::Duration;

use channel_layer::{Map, Message, Value};
use serde_json::json;
use support::python::{
    PythonPeer, base64_decode, base64_encode, json_to_message, message_to_json, same_content,
};
use support::redis_server::{RedisServer, Reply};

const WAIT: Duration = Duration::from_secs(5);
const SHORT: Duration = Duration::from_millis(300);

fn port_open(port: u16) -> bool {
    TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok()
}

/// A message with every kind of value, nested.
fn rich_message(text: &str) -> Message {
    let inner: Map = [
        ("bytes", Value::Bytes(vec![0, 1, 2, 254, 255])),
        (
            "list",
            Value::List(vec![Value::Int(1), Value::Str("two".into()), Value::Null]),
        ),
        ("empty", Value::Map(Map::new())),
    ]
    .into_iter()
    .collect();
    Message::new("test.message")
        .with("text", text)
        .with("unicode", "héllo ✓ 𝄞")
        .with("bytes", Value::Bytes((0..=255).collect()))
        .with("empty_bytes", Value::Bytes(Vec::new()))
        .with("int", 42)
        .with("min", i64::MIN)
        .with("max", i64::MAX)
        .with("float", 1.5)
        .with("whole_float", 2.0)
        .with("negative_zero", -0.0)
        .with("yes", true)
        .with("no", false)
        .with("nothing", Value::Null)
        .with("nested", Value::Map(inner))
        .with(
            "lists",
            Value::List(vec![
                Value::List(vec![]),
                Value::List(vec![Value::Bytes(b"raw".to_vec()), Value::Float(-3.25)]),
            ]),
        )
}

#[test]
fn server_starts_answers_and_stops() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let port = server.port();
    assert_ne!(port, 6379, "never the shared server");
    assert_eq!(server.url(), format!("redis://127.0.0.1:{port}/0"));
    assert!(server.is_running());
    assert_eq!(server.command(&["PING"]), "+PONG\r\n");
    assert_eq!(server.command(&["SET", "k", "v"]), "+OK\r\n");
    assert_eq!(server.command(&["GET", "k"]), "$1\r\nv\r\n");
    assert_eq!(server.command(&["ZADD", "z", "1", "a"]), ":1\r\n");
    assert_eq!(server.command(&["KEYS", "z"]), "*1\r\n$1\r\nz\r\n");
    assert_eq!(server.query(&[b"ZCARD", b"z"]), Reply::Int(1));
    assert_eq!(
        server.query(&[b"ZRANGE", b"z", b"0", b"-1"]).bulks(),
        vec![b"a".to_vec()]
    );
    assert_eq!(server.query(&[b"GET", b"missing"]), Reply::Bulk(None));
    assert!(matches!(server.query(&[b"NOSUCHCOMMAND"]), Reply::Error(_)));
    assert_eq!(server.command(&["FLUSHALL"]), "+OK\r\n");
    assert_eq!(server.command(&["DBSIZE"]), ":0\r\n");
    // Persistence is off.
    assert_eq!(
        server.command(&["CONFIG", "GET", "save"]),
        "*2\r\n$4\r\nsave\r\n$0\r\n\r\n"
    );

    let dir = server.dir().to_owned();
    assert!(dir.join("redis.log").exists());
    drop(server);
    assert!(!port_open(port), "port {port} still open after drop");
    assert!(!dir.exists(), "{} left behind", dir.display());
}

#[test]
fn kill_and_restart_keep_the_port() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let port = server.port();
    assert_eq!(server.command(&["SET", "k", "v"]), "+OK\r\n");

    server.kill();
    assert!(!server.is_running());
    assert!(!port_open(port), "port {port} still open after kill");
    server.kill(); // a second kill is harmless

    server.restart();
    assert!(server.is_running());
    assert_eq!(server.port(), port);
    assert_eq!(server.command(&["PING"]), "+PONG\r\n");
    assert_eq!(
        server.command(&["GET", "k"]),
        "$-1\r\n",
        "nothing persisted"
    );

    // Restarting a running server replaces it.
    assert_eq!(server.command(&["SET", "k", "v"]), "+OK\r\n");
    server.restart();
    assert_eq!(server.port(), port);
    assert_eq!(server.command(&["GET", "k"]), "$-1\r\n");
}

#[test]
fn python_peer_round_trips_through_channels_redis() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let init = json!({"hosts": [server.url()], "prefix": "harness"});
    let Some(mut a) = PythonPeer::spawn(init.clone()) else {
        return;
    };
    let Some(mut b) = PythonPeer::spawn(init) else {
        return;
    };
    assert_ne!(a.client_prefix(), b.client_prefix());

    // A normal channel: the message waits in the sorted set `<prefix><channel>`.
    let sent = rich_message("normal");
    a.send("test-channel-1", &sent).unwrap();
    assert_eq!(
        server.command(&["ZCARD", "harnesstest-channel-1"]),
        ":1\r\n"
    );
    let got = b.receive_message("test-channel-1", WAIT).unwrap();
    assert!(same_content(&got, &sent), "sent {sent:?}\nreceived {got:?}");
    assert_eq!(b.receive("test-channel-1", SHORT), Err("Timeout".into()));

    // A process-specific channel minted by B.
    let specific = b.new_channel(None);
    let expected_start = format!("specific.{}!", b.client_prefix());
    assert!(specific.starts_with(&expected_start), "{specific}");
    let sent = rich_message("specific");
    a.send(&specific, &sent).unwrap();
    let got = b.receive_message(&specific, WAIT).unwrap();
    assert!(same_content(&got, &sent), "sent {sent:?}\nreceived {got:?}");
    // A cannot receive on B's channel: channels_redis checks the client prefix.
    assert_eq!(a.receive(&specific, SHORT), Err("AssertionError".into()));

    // A group with members of B; one is discarded before the send.
    let member = b.new_channel(Some("member"));
    let gone = b.new_channel(Some("member"));
    b.group_add("harness-group", &member);
    b.group_add("harness-group", &gone);
    b.group_discard("harness-group", &gone);
    let sent = rich_message("group");
    let logs = a.group_send("harness-group", &sent);
    assert!(logs.is_empty(), "{logs:?}");
    let got = b.receive_message(&member, WAIT).unwrap();
    assert!(same_content(&got, &sent), "sent {sent:?}\nreceived {got:?}");
    assert_eq!(b.receive(&gone, SHORT), Err("Timeout".into()));

    // Capacity: a third send to a channel of capacity 2 is refused.
    let init = json!({"hosts": [server.url()], "prefix": "capped", "capacity": 2});
    let Some(mut c) = PythonPeer::spawn(init) else {
        return;
    };
    let small = Message::new("test.small");
    c.send("full-channel", &small).unwrap();
    c.send("full-channel", &small).unwrap();
    assert_eq!(c.send("full-channel", &small), Err("ChannelFull".into()));
    assert_eq!(server.command(&["ZCARD", "cappedfull-channel"]), ":2\r\n");

    // Invalid names surface as the exception channels_redis raises.
    assert_eq!(c.send("=+135!", &small), Err("TypeError".into()));

    // flush removes the layer's keys, and only under its prefix.
    c.flush();
    assert_eq!(server.command(&["EXISTS", "cappedfull-channel"]), ":0\r\n");
}

#[cfg(unix)]
#[test]
fn a_hung_peer_fails_the_test_instead_of_hanging() {
    use std::panic::{AssertUnwindSafe, catch_unwind};
    use std::process::Command;
    use std::time::Instant;

    let Some(server) = RedisServer::start() else {
        return;
    };
    let Some(mut peer) = PythonPeer::spawn(json!({"hosts": [server.url()]})) else {
        return;
    };
    peer.set_request_grace(Duration::from_millis(500));
    let stopped = Command::new("kill")
        .args(["-STOP", &peer.pid().to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());
    let start = Instant::now();
    let outcome = catch_unwind(AssertUnwindSafe(|| peer.new_channel(None)));
    let message = match outcome {
        Ok(name) => panic!("a stopped peer answered {name}"),
        Err(payload) => payload
            .downcast_ref::<String>()
            .cloned()
            .unwrap_or_default(),
    };
    assert!(message.contains("did not answer"), "{message}");
    assert!(start.elapsed() < Duration::from_secs(5));
    drop(peer); // killed already; dropping must not hang
}

#[test]
fn json_message_conversion_round_trips() {
    let message = rich_message("json")
        .with("nan", f64::NAN)
        .with("inf", f64::INFINITY)
        .with("-inf", f64::NEG_INFINITY);
    let json = message_to_json(&message);
    assert_eq!(json["text"], json!("json"));
    assert_eq!(json["int"], json!(42));
    assert_eq!(json["whole_float"], json!(2.0));
    assert!(json["whole_float"].is_f64());
    assert_eq!(json["nested"]["bytes"], json!({"$bytes": "AAEC/v8="}));
    assert_eq!(json["empty_bytes"], json!({"$bytes": ""}));
    assert_eq!(json["nan"], json!({"$float": "nan"}));
    assert_eq!(json["inf"], json!({"$float": "inf"}));
    assert_eq!(json["-inf"], json!({"$float": "-inf"}));
    assert_eq!(json["nothing"], json!(null));

    // Through text, as it crosses the pipe to Python and back.
    let text = json.to_string();
    let back = json_to_message(&serde_json::from_str(&text).unwrap());
    assert!(same_content(&back, &message), "{message:?}\n{back:?}");
    let Some(Value::Float(zero)) = back.get("negative_zero") else {
        panic!("negative_zero lost: {back:?}");
    };
    assert!(zero.is_sign_negative());

    // What Python's json.dumps writes.
    let from_python = json_to_message(
        &serde_json::from_str(
            r#"{"type": "x", "b": {"$bytes": "aGk="}, "f": 1.0, "n": -7, "l": [{"$float": "-inf"}],
                "not_bytes": {"$bytes": "aGk=", "extra": 1}}"#,
        )
        .unwrap(),
    );
    assert_eq!(from_python.get("b"), Some(&Value::Bytes(b"hi".to_vec())));
    assert_eq!(from_python.get("f"), Some(&Value::Float(1.0)));
    assert_eq!(from_python.get("n"), Some(&Value::Int(-7)));
    assert_eq!(
        from_python.get("l"),
        Some(&Value::List(vec![Value::Float(f64::NEG_INFINITY)]))
    );
    assert!(matches!(from_python.get("not_bytes"), Some(Value::Map(m)) if m.len() == 2));

    // Key order does not matter to same_content, values do.
    let ab = Message::from_map([("a", 1), ("b", 2)].into_iter().collect());
    let ba = Message::from_map([("b", 2), ("a", 1)].into_iter().collect());
    let other = Message::from_map([("a", 1), ("b", 3)].into_iter().collect());
    assert!(same_content(&ab, &ba));
    assert!(!same_content(&ab, &other));
    assert!(!same_content(
        &ab,
        &Message::from_map([("a", 1)].into_iter().collect())
    ));

    // Base64, RFC 4648 §10 vectors.
    for (plain, encoded) in [
        ("", ""),
        ("f", "Zg=="),
        ("fo", "Zm8="),
        ("foo", "Zm9v"),
        ("foob", "Zm9vYg=="),
        ("fooba", "Zm9vYmE="),
        ("foobar", "Zm9vYmFy"),
    ] {
        assert_eq!(base64_encode(plain.as_bytes()), encoded);
        assert_eq!(base64_decode(encoded).unwrap(), plain.as_bytes());
    }
    let all: Vec<u8> = (0..=255).collect();
    assert_eq!(base64_decode(&base64_encode(&all)).unwrap(), all);
    for bad in ["Zg=", "Z===", "Zg==Zg==", "Zm9*", "Zm 9"] {
        assert!(base64_decode(bad).is_err(), "{bad:?} accepted");
    }
}
