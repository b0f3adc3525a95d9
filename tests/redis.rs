//! The Redis backend against a real `redis-server` that each layer spawns for itself: the whole
//! conformance suite, blocking and async, plus Redis-specific behaviour.

mod support;

use std::time::Duration;

use channel_layer::redis::{RedisConfig, RedisLayer};
use channel_layer::{AnyLayer, ChannelLayer, ChannelLayerExt, LayerConfig, Message};
use support::redis_server::RedisServer;

/// A Redis layer with its own server, which lives exactly as long as the layer.
#[derive(Debug)]
struct Served {
    layer: RedisLayer,
    _server: RedisServer,
}

impl ChannelLayer for Served {
    channel_layer::delegate_channel_layer!(layer);
}

fn layer_on(server: &RedisServer, layer: LayerConfig) -> RedisLayer {
    let mut config = RedisConfig::new(server.url());
    config.layer = layer;
    RedisLayer::new(config).expect("a valid configuration")
}

/// The conformance fixture: a fresh server per layer. When redis-server is missing each case
/// fails in CI and skips itself (with a message) elsewhere.
fn served(config: LayerConfig) -> AnyLayer {
    let server = RedisServer::start().expect("checked by RedisServer::unavailable()");
    AnyLayer::new(Served {
        layer: layer_on(&server, config),
        _server: server,
    })
}

mod blocking {
    channel_layer::conformance_tests!(super::served, unavailable = super::RedisServer::unavailable);
}

mod on_executor {
    channel_layer::async_conformance_tests!(
        super::served,
        futures::executor::block_on,
        unavailable = super::RedisServer::unavailable
    );
}

#[test]
fn url_options_configure_the_layer() {
    let config =
        RedisConfig::from_url("redis://127.0.0.1:1/3?prefix=app&capacity=7&expiry=2.5&group_expiry=30&receive_prefetch=0&timeout=0.5")
            .unwrap();
    assert_eq!(config.prefix, "app");
    assert_eq!(config.layer.capacity, 7);
    assert_eq!(config.layer.expiry, Duration::from_millis(2500));
    assert_eq!(config.layer.group_expiry, Duration::from_secs(30));
    assert_eq!(config.receive_prefetch, 0);
    assert_eq!(config.operation_timeout, Duration::from_millis(500));
    assert_eq!(config.hosts, vec!["redis://127.0.0.1:1/3".to_owned()]);
    assert!(RedisConfig::from_url("redis://127.0.0.1/0?colour=red").is_err());
    assert!(RedisConfig::from_url("redis://127.0.0.1/0?prefix=a*b").is_err());
    assert!(AnyLayer::from_url("redis://127.0.0.1:1/0?capacity=x").is_err());
}

#[test]
fn an_unreachable_server_fails_fast_with_a_typed_error() {
    // Port 1 on loopback refuses connections.
    let layer = RedisLayer::from_url("redis://127.0.0.1:1/0?timeout=1").unwrap();
    let start = std::time::Instant::now();
    let err = layer.send("a", Message::new("x")).unwrap_err();
    assert!(
        matches!(err, channel_layer::SendError::Backend { .. }),
        "{err:?}"
    );
    assert!(err.is_transient(), "{err:?}");
    assert!(
        !err.backend_error().unwrap().may_have_applied(),
        "a refused connection never reached the server: {err:?}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "took {:?}",
        start.elapsed()
    );
    // A receive rides the outage out: it waits until its own deadline, not a moment longer.
    let start = std::time::Instant::now();
    let err = layer
        .receive_timeout("a", Duration::from_millis(800))
        .unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_millis(1500),
        "took {took:?}"
    );
    assert!(layer.metrics().backend_errors > 0, "{:?}", layer.metrics());
    // try_receive asks the server, so it reports the outage.
    let err = layer.try_receive("a").unwrap_err();
    assert!(err.is_transient(), "{err:?}");
}

#[test]
fn acl_users_and_database_numbers_come_from_the_url() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let reply = server.command(&[
        "ACL", "SETUSER", "alice", "on", ">s3cret", "~*", "&*", "+@all",
    ]);
    assert!(reply.starts_with("+OK"), "{reply}");
    let url = format!(
        "redis://alice:s3cret@127.0.0.1:{}/3?prefix=acl",
        server.port()
    );
    let layer = RedisLayer::from_url(&url).unwrap();
    layer.send("private", Message::new("hi")).unwrap();
    // The message went to database 3.
    let keyspace = server.command(&["INFO", "keyspace"]);
    assert!(keyspace.contains("db3:keys=1"), "{keyspace}");
    assert_eq!(
        layer
            .receive_timeout("private", Duration::from_secs(5))
            .unwrap()
            .message_type(),
        Some("hi")
    );

    let wrong =
        RedisLayer::from_url(&format!("redis://alice:nope@127.0.0.1:{}/0", server.port())).unwrap();
    let err = wrong.send("private", Message::new("x")).unwrap_err();
    assert!(
        matches!(err, channel_layer::SendError::Backend { .. }),
        "{err:?}"
    );
}

#[test]
fn a_unix_socket_url_reaches_the_server() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let socket = server.dir().join("redis.sock");
    let socket_arg = socket.to_str().unwrap().to_owned();
    // A socket is set at start-up: a second server listens on one only, in the first's folder.
    let mut child = std::process::Command::new("redis-server")
        .args([
            "--port",
            "0",
            "--unixsocket",
            &socket_arg,
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .args(["--dir", server.dir().to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-server");
    let start = std::time::Instant::now();
    while !socket.exists() && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let result = std::panic::catch_unwind(|| {
        let layer = RedisLayer::from_url(&format!("unix://{socket_arg}?db=2&prefix=sock")).unwrap();
        layer.send("local", Message::new("over a socket")).unwrap();
        let got = layer
            .receive_timeout("local", Duration::from_secs(5))
            .unwrap();
        assert_eq!(got.message_type(), Some("over a socket"));
    });
    let _ = child.kill();
    let _ = child.wait();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

/// Another program's key under the layer's prefix, of another type, fails only the
/// operations on its own channel, with an error naming the key, and costs no reconnects.
#[test]
fn a_wrong_type_key_fails_only_its_own_channel() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    server.command(&["SET", "asgibad", "not a channel"]);
    let layer = RedisLayer::from_url(&server.url()).unwrap();
    let good = {
        let layer = layer.clone();
        std::thread::spawn(move || layer.receive_timeout("good", Duration::from_secs(10)))
    };
    let connections = |s: &RedisServer| {
        let info = s.command(&["INFO", "stats"]);
        info.lines()
            .find_map(|l| l.strip_prefix("total_connections_received:"))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .unwrap()
    };
    std::thread::sleep(Duration::from_millis(200));
    let before = connections(&server);
    let start = std::time::Instant::now();
    let mut failures = 0;
    while start.elapsed() < Duration::from_secs(2) {
        let err = layer
            .receive_timeout("bad", Duration::from_secs(1))
            .unwrap_err();
        let channel_layer::ReceiveError::Backend(e) = &err else {
            panic!("expected a backend error, got {err:?}");
        };
        assert_eq!(e.kind(), channel_layer::BackendErrorKind::WrongType, "{e}");
        assert!(e.to_string().contains("asgibad"), "names the key: {e}");
        failures += 1;
    }
    assert!(failures >= 2, "each receive on the bad key fails promptly");
    let after = connections(&server);
    assert!(
        after - before <= 2,
        "{} new connections while receivers waited on a bad key",
        after - before
    );
    let err = layer.send("bad", Message::new("x")).unwrap_err();
    assert_eq!(
        err.backend_error().map(|e| e.kind()),
        Some(channel_layer::BackendErrorKind::WrongType),
        "{err:?}"
    );
    assert!(err.to_string().contains("asgibad"), "{err}");
    layer.send("good", Message::new("fine")).unwrap();
    let got = good
        .join()
        .unwrap()
        .expect("the other channel is not affected");
    assert_eq!(got.message_type(), Some("fine"));
    assert!(layer.metrics().backend_errors > 0);
}

/// A group member whose key holds another type of data is skipped and reported; the members
/// after it still get the message (the delivery script does not abort half way).
#[test]
fn group_delivery_skips_a_wrong_type_member_and_delivers_to_the_others() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let layer = RedisLayer::from_url(&server.url()).unwrap();
    for member in ["m1", "bad", "m2", "m3"] {
        layer.group_add("room", member).unwrap();
    }
    server.command(&["SET", "asgibad", "not a channel"]);
    let report = layer.group_send("room", Message::new("hello")).unwrap();
    assert_eq!(report.delivered, 3, "{report:?}");
    assert_eq!(report.skipped_failed, 1, "{report:?}");
    for member in ["m1", "m2", "m3"] {
        let got = layer
            .receive_timeout(member, Duration::from_secs(2))
            .unwrap();
        assert_eq!(got.message_type(), Some("hello"));
    }
    assert_eq!(layer.metrics().group_skipped_failed, 1);
}

/// A server that needs credentials, reached without any: one clear line, said once.
#[test]
fn missing_credentials_are_one_line_said_once() {
    let Some(server) = RedisServer::start_with(&["--requirepass", "sesame"]) else {
        return;
    };
    let layer = RedisLayer::from_url(&server.url()).unwrap();
    let err = layer.send("a", Message::new("x")).unwrap_err();
    let text = err.to_string();
    assert!(!text.contains('\n'), "{text}");
    assert_eq!(text.matches("NOAUTH").count(), 1, "{text}");
    assert!(!err.is_transient(), "{err:?}");
    let err = layer.group_add("g", "a").unwrap_err();
    assert_eq!(err.to_string().matches("NOAUTH").count(), 1, "{err}");
    let good =
        RedisLayer::from_url(&format!("redis://:sesame@127.0.0.1:{}/0", server.port())).unwrap();
    good.send("a", Message::new("x")).unwrap();
    let wrong =
        RedisLayer::from_url(&format!("redis://:nope@127.0.0.1:{}/0", server.port())).unwrap();
    let err = wrong.send("a", Message::new("x")).unwrap_err();
    let text = err.to_string();
    assert!(!text.contains('\n'), "{text}");
    assert_eq!(text.matches("WRONGPASS").count(), 1, "{text}");
}

/// A layer's `Debug` and its URL errors never show the password.
#[test]
fn passwords_stay_out_of_debug_output() {
    let layer = RedisLayer::from_url("redis://user:s3cret@127.0.0.1:1/0").unwrap();
    let shown = format!("{layer:?}");
    assert!(!shown.contains("s3cret"), "{shown}");
    assert!(shown.contains("127.0.0.1"), "{shown}");
}

/// How many commands the server has run since the last `CONFIG RESETSTAT`, by `INFO
/// commandstats` (which counts itself too, so it is left out).
fn commands_run(server: &RedisServer) -> u64 {
    server
        .command(&["INFO", "commandstats"])
        .lines()
        .filter(|l| l.starts_with("cmdstat_") && !l.starts_with("cmdstat_info:"))
        .filter_map(|l| {
            l.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

#[test]
fn group_send_on_one_server_is_one_round_trip() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let layer = layer_on(&server, LayerConfig::default());
    let receiver = layer_on(&server, LayerConfig::default());
    // Members across two processes' channel keys and one normal channel.
    let mut members: Vec<String> = (0..30).map(|_| layer.new_channel("m").unwrap()).collect();
    members.extend((0..20).map(|_| receiver.new_channel("r").unwrap()));
    members.push("plain.member".to_owned());
    for m in &members {
        layer.group_add("room", m).unwrap();
    }
    // Warm up: connections made and scripts loaded.
    layer.group_send("room", Message::new("warm")).unwrap();
    for m in &members {
        let owner = if m.starts_with("r.") {
            &receiver
        } else {
            &layer
        };
        owner.receive_timeout(m, Duration::from_secs(5)).unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(server.command(&["CONFIG", "RESETSTAT"]).starts_with("+OK"));
    let before = commands_run(&server);
    let report = layer
        .group_send("room", Message::new("chat.message").with("text", "hi"))
        .unwrap();
    let sent_with = commands_run(&server) - before;
    assert_eq!(report.delivered, members.len(), "{report:?}");
    // Pullers of the two layers may run their own commands meanwhile: only the EVALSHA calls
    // of the group send itself are pinned. One, where two steps took two.
    let evalsha = server
        .command(&["INFO", "commandstats"])
        .lines()
        .find(|l| l.starts_with("cmdstat_evalsha:"))
        .map(str::to_owned)
        .unwrap_or_default();
    assert!(
        evalsha.contains("calls=1,"),
        "{evalsha} ({sent_with} commands in all)"
    );
    for m in &members {
        let owner = if m.starts_with("r.") {
            &receiver
        } else {
            &layer
        };
        let got = owner.receive_timeout(m, Duration::from_secs(5)).unwrap();
        assert_eq!(got.get("text").and_then(|v| v.as_str()), Some("hi"), "{m}");
    }
}

#[test]
fn group_send_counts_members_that_are_not_channel_names() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    for sharded in [false, true] {
        let prefix = if sharded { "two" } else { "one" };
        let mut config = RedisConfig::new(server.url());
        config.prefix = prefix.to_owned();
        if sharded {
            // Two hosts (the same server twice) take the two-step path.
            config.hosts = vec![server.url(), server.url()];
        }
        let layer = RedisLayer::new(config).unwrap();
        let good = layer.new_channel("ok").unwrap();
        layer.group_add("room", &good).unwrap();
        // Names another client wrote into the group key.
        let key = format!("{prefix}:group:room");
        for bad in ["has space", "a!b!c", "!nolocal", &"x".repeat(120)] {
            server.command(&["ZADD", &key, "99999999999", bad]);
        }
        let report = layer.group_send("room", Message::new("x")).unwrap();
        assert_eq!(report.delivered, 1, "sharded {sharded}: {report:?}");
        assert_eq!(report.skipped_failed, 4, "sharded {sharded}: {report:?}");
        assert!(layer.receive_timeout(&good, Duration::from_secs(5)).is_ok());
    }
}

/// The calls of one command the server has run since the last `CONFIG RESETSTAT`.
fn calls_of(server: &RedisServer, command: &str) -> u64 {
    let prefix = format!("cmdstat_{command}:calls=");
    server
        .command(&["INFO", "commandstats"])
        .lines()
        .find_map(|l| {
            l.strip_prefix(prefix.as_str())?
                .split(',')
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

#[test]
fn a_waiting_receive_costs_one_take_and_one_block() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let receiver = layer_on(&server, LayerConfig::default());
    let sender = layer_on(&server, LayerConfig::default());
    // Connections made and scripts loaded first.
    sender.send("warm", Message::new("x")).unwrap();
    receiver
        .receive_timeout("warm", Duration::from_secs(5))
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(server.command(&["CONFIG", "RESETSTAT"]).starts_with("+OK"));
    let waiting = {
        let receiver = receiver.clone();
        std::thread::spawn(move || receiver.receive_timeout("rpc.reply", Duration::from_secs(10)))
    };
    std::thread::sleep(Duration::from_millis(300));
    sender.send("rpc.reply", Message::new("answer")).unwrap();
    let got = waiting.join().unwrap().unwrap();
    assert_eq!(got.message_type(), Some("answer"));
    // The receive's own take found nothing; the puller it woke blocked on the key at once
    // (a `BZPOPMIN` returns a message already there, so no pass of its own went first).
    assert_eq!(calls_of(&server, "zpopmin"), 1);
    assert!(calls_of(&server, "bzpopmin") >= 1);
}

#[test]
fn replica_confirmation_counts_what_no_replica_confirmed() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    // This server has no replica: nothing it stores is confirmed, and all of it is counted.
    let url = format!(
        "{}?prefix=acks&replica_acks=1&replica_ack_timeout=0.05",
        server.url()
    );
    let layer = RedisLayer::from_url(&url).unwrap();
    layer.send("acks.a", Message::new("one")).unwrap();
    futures::executor::block_on(layer.send_async("acks.a", Message::new("two"))).unwrap();
    let member = layer.new_channel("m").unwrap();
    layer.group_add("acks.room", &member).unwrap();
    assert_eq!(
        layer
            .group_send("acks.room", Message::new("g"))
            .unwrap()
            .delivered,
        1
    );
    assert_eq!(layer.metrics().unreplicated, 3, "{:?}", layer.metrics());
    // Still delivered: the count says what a failover could lose, nothing more.
    assert!(
        layer
            .receive_timeout("acks.a", Duration::from_secs(5))
            .is_ok()
    );
    assert!(
        layer
            .receive_timeout(&member, Duration::from_secs(5))
            .is_ok()
    );
    // Without the option nothing waits and nothing is counted.
    let plain = layer_on(&server, LayerConfig::default());
    plain.send("acks.b", Message::new("x")).unwrap();
    assert_eq!(plain.metrics().unreplicated, 0);
    assert!(RedisLayer::from_url(&format!("{}?replica_acks=65", server.url())).is_err());
    // The wait for replicas must end before the send's own deadline.
    assert!(
        RedisLayer::from_url(&format!(
            "{}?replica_acks=1&replica_ack_timeout=5&timeout=5",
            server.url()
        ))
        .is_err()
    );
}

#[test]
fn inspect_lists_channel_keys_process_keys_and_groups_with_their_ages() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let layer = layer_on(&server, LayerConfig::default());
    assert!(layer.capabilities().inspect);
    let process = layer.new_channel("specific").unwrap();
    for (channel, n) in [("jobs.new", 3), ("jobs.done", 1), (process.as_str(), 2)] {
        for i in 0..n {
            layer.send(channel, Message::new("m").with("i", i)).unwrap();
        }
    }
    layer.group_add("room.1", "jobs.new").unwrap();
    layer.group_add("room.1", &process).unwrap();
    // Another program's key under the prefix is no channel.
    server.command(&["SET", "asgiother", "x"]);
    std::thread::sleep(Duration::from_millis(200));
    let seen = layer.inspect(100).unwrap();
    let non_local = &process[..=process.find('!').unwrap()];
    let channels: Vec<(&str, u64)> = seen
        .channels
        .iter()
        .map(|c| (c.name.as_str(), c.queued))
        .collect();
    assert_eq!(
        channels,
        [("jobs.done", 1), ("jobs.new", 3), (non_local, 2)],
        "{seen:?}"
    );
    assert_eq!(seen.channels[2].process(), Some(non_local));
    for c in &seen.channels {
        let age = c.oldest_age.expect("an age");
        assert!(
            age >= Duration::from_millis(150) && age < Duration::from_secs(30),
            "{c:?}"
        );
    }
    assert_eq!(seen.groups.len(), 1);
    assert_eq!(seen.groups[0].name, "room.1");
    let mut members: Vec<&str> = seen.groups[0]
        .members
        .iter()
        .map(|m| m.channel.as_str())
        .collect();
    members.sort_unstable();
    let mut expected = vec!["jobs.new", process.as_str()];
    expected.sort_unstable();
    assert_eq!(members, expected);
    assert!(seen.groups[0].members.iter().all(|m| m.age.is_some()));
    assert!(seen.complete);
    assert!(!layer.inspect(1).unwrap().complete);
}

/// A flush deletes every key under its prefix, as channels_redis's does: a layer whose prefix
/// starts another's (`c1`, `c12`) empties that one too, and one of the same width (`c01`,
/// `c12`) leaves it alone.
#[test]
fn a_flush_reaches_every_prefix_that_starts_with_its_own() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let with_prefix = |prefix: &str| {
        let mut config = RedisConfig::new(server.url());
        config.prefix = prefix.to_owned();
        RedisLayer::new(config).unwrap()
    };
    let (short, long, padded) = (with_prefix("c1"), with_prefix("c12"), with_prefix("c01"));
    for layer in [&long, &padded] {
        layer.send("kept", Message::new("m")).unwrap();
    }
    padded.flush().unwrap();
    assert!(
        long.receive_timeout("kept", Duration::from_secs(2)).is_ok(),
        "c01's flush left c12 alone"
    );
    long.send("kept", Message::new("m")).unwrap();
    short.flush().unwrap();
    assert!(
        matches!(
            long.try_receive("kept"),
            Err(channel_layer::TryReceiveError::Empty)
        ),
        "c1's flush took c12's message"
    );
}

/// A message the puller takes for a receiver that has left meanwhile goes back to Redis,
/// unless it has expired: then it is dropped and counted at once, not put back for a later
/// receive to meet. The reproduction holds the server busy in a script that adds an expired
/// message, until the receiver waiting on its key has timed out; the puller blocked on that
/// key is handed the message only when the script ends.
#[test]
fn an_expired_message_taken_for_a_receiver_that_left_is_counted_not_put_back() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let layer = layer_on(&server, LayerConfig::default());
    let receiver = {
        let layer = layer.clone();
        std::thread::spawn(move || layer.receive_timeout("late", Duration::from_millis(400)))
    };
    // By now the puller blocks on the key for the receiver.
    std::thread::sleep(Duration::from_millis(150));
    let sent_long_ago = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        - 1000.0)
        .to_string();
    let add_then_stay_busy = b"redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
        local start = redis.call('TIME')
        while true do
            local now = redis.call('TIME')
            if (now[1] - start[1]) * 1000000 + (now[2] - start[2]) > 600000 then break end
        end
        return 1";
    let member = b"twelve bytes\x81\xa4type\xa4late";
    let key = format!("{}late", channel_layer::redis::DEFAULT_PREFIX);
    server.query(&[
        b"EVAL",
        add_then_stay_busy,
        b"1",
        key.as_bytes(),
        sent_long_ago.as_bytes(),
        member,
    ]);
    assert!(
        receiver.join().unwrap().is_err(),
        "the expired message was delivered"
    );
    let patience = std::time::Instant::now() + Duration::from_secs(5);
    while layer.metrics().expired == 0 && std::time::Instant::now() < patience {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(layer.metrics().expired, 1, "{:?}", layer.metrics());
    assert_eq!(
        server.command(&["ZCARD", &key]),
        ":0\r\n",
        "the expired message was put back"
    );
}
