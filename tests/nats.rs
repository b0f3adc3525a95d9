//! The NATS backend against a real `nats-server` with JetStream, spawned by the tests on a free
//! port: the whole conformance suite, blocking and async, plus what is particular to NATS.

mod support;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use channel_layer::nats::{NatsConfig, NatsLayer};
use channel_layer::{
    AnyLayer, BackendErrorKind, BuildError, ChannelLayer, ChannelLayerExt, LayerConfig, Message,
};
use support::fresh_prefix;
use support::nats_server::NatsServer;

/// One server shared by the conformance cases, each layer with a prefix of its own.
fn shared() -> &'static NatsServer {
    started().as_ref().expect("checked by unavailable()")
}

fn started() -> &'static Option<NatsServer> {
    static SERVER: OnceLock<Option<NatsServer>> = OnceLock::new();
    SERVER.get_or_init(NatsServer::start)
}

/// Why the conformance cases cannot run here, if they cannot (each then skips itself).
fn unavailable() -> Option<&'static str> {
    started()
        .is_none()
        .then_some("no nats-server to run them on")
}

fn served(config: LayerConfig) -> AnyLayer {
    let mut nats = NatsConfig::from_url(&shared().url()).expect("a NATS URL");
    nats.layer = config;
    nats.prefix = fresh_prefix("t");
    AnyLayer::new(NatsLayer::new(nats).expect("the server answers"))
}

/// The same with takes that fetch ahead of the receivers.
fn prefetching(config: LayerConfig) -> AnyLayer {
    let mut nats = NatsConfig::from_url(&shared().url()).expect("a NATS URL");
    nats.layer = config;
    nats.prefix = fresh_prefix("t");
    nats.receive_prefetch = 16;
    AnyLayer::new(NatsLayer::new(nats).expect("the server answers"))
}

mod blocking {
    channel_layer::conformance_tests!(super::served, unavailable = super::unavailable);
}

mod blocking_prefetching {
    channel_layer::conformance_tests!(super::prefetching, unavailable = super::unavailable);
}

mod on_executor {
    channel_layer::async_conformance_tests!(
        super::served,
        futures::executor::block_on,
        unavailable = super::unavailable
    );
}

#[test]
fn the_url_builds_a_layer_through_any_layer() {
    if let Some(why) = unavailable() {
        support::skipped(why);
        return;
    }
    let url = format!(
        "{}?prefix={}&capacity=2&expiry=30",
        shared().url(),
        fresh_prefix("t")
    );
    let layer = AnyLayer::from_url(&url).unwrap();
    layer.send("a.b!c", Message::new("one")).unwrap();
    layer.send("a.b!c", Message::new("two")).unwrap();
    let full = layer.send("a.b!c", Message::new("three")).unwrap_err();
    assert!(full.is_full(), "{full}");
    assert_eq!(layer.receive("a.b!c").unwrap().message_type(), Some("one"));
}

#[test]
fn an_unreachable_server_fails_fast_with_a_typed_error() {
    let port = support::redis_server::free_port();
    let started = Instant::now();
    let err =
        NatsLayer::from_url(&format!("nats://127.0.0.1:{port}?connect_timeout=1")).unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    match err {
        BuildError::Backend(e) => assert_eq!(e.kind(), BackendErrorKind::Connection, "{e}"),
        other => panic!("expected a backend error, got {other}"),
    }
}

#[test]
fn layers_with_other_capacities_on_one_prefix_are_refused_naming_both() {
    if let Some(why) = unavailable() {
        support::skipped(why);
        return;
    }
    let prefix = fresh_prefix("t");
    let layer = |config: LayerConfig| {
        let mut nats = NatsConfig::from_url(&shared().url()).unwrap();
        nats.prefix = prefix.clone();
        nats.layer = config;
        NatsLayer::new(nats)
    };
    let hundred = || LayerConfig::builder().capacity(100);
    let _first = layer(hundred().build().unwrap()).unwrap();
    let _same = layer(hundred().build().unwrap()).unwrap();
    for (other, named) in [
        (LayerConfig::builder().capacity(200), "capacity=200"),
        (hundred().channel_capacity("big.*", 500), "big.*"),
    ] {
        let err = layer(other.build().unwrap()).unwrap_err();
        assert!(
            matches!(&err, BuildError::InvalidOption { name, .. } if name == "capacity"),
            "{err}"
        );
        let text = err.to_string();
        assert!(text.contains("capacity=100"), "{text}");
        assert!(text.contains(named), "{text}");
    }
}

#[test]
fn layers_with_other_expiries_share_a_prefix_each_message_keeping_its_senders() {
    if let Some(why) = unavailable() {
        support::skipped(why);
        return;
    }
    let prefix = fresh_prefix("t");
    let url = |query: &str| format!("{}?prefix={prefix}&{query}", shared().url());
    let long = NatsLayer::from_url(&url("expiry=60&group_expiry=600")).unwrap();
    let short = NatsLayer::from_url(&url("expiry=1&group_expiry=30")).unwrap();
    // One channel for both: what one sends, the other receives.
    long.send("shared", Message::new("from-long")).unwrap();
    short.send("shared", Message::new("from-short")).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    // The short-lived message has expired, whoever receives it; the long-lived one has not,
    // though the receiver's own expiry has passed.
    let got = short
        .receive_timeout("shared", Duration::from_secs(5))
        .unwrap();
    assert_eq!(got.message_type(), Some("from-long"));
    assert!(long.try_receive("shared").unwrap_err().is_empty());
    // Counted once: by the receive that meets it, or by a layer's clearing of expired
    // messages (whose count may land a moment after the message is gone).
    let expired = || long.metrics().expired + short.metrics().expired;
    let until = Instant::now() + Duration::from_secs(5);
    while expired() == 0 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        expired(),
        1,
        "the short-lived message is counted expired once"
    );
    // Groups too: both layers see one group.
    short.group_add("room", "member.a").unwrap();
    assert_eq!(
        long.group_send("room", Message::new("hi"))
            .unwrap()
            .delivered,
        1
    );
}

#[test]
fn unread_messages_that_expire_are_cleared_and_counted() {
    if let Some(why) = unavailable() {
        support::skipped(why);
        return;
    }
    let url = format!("{}?prefix={}&expiry=1", shared().url(), fresh_prefix("t"));
    let layer = NatsLayer::from_url(&url).unwrap();
    // Late replies nobody will ever receive.
    for i in 0..5 {
        let abandoned = layer.new_channel("reply").unwrap();
        layer
            .send(&abandoned, Message::new("late").with("i", i))
            .unwrap();
    }
    let until = Instant::now() + Duration::from_secs(15);
    while layer.metrics().expired < 5 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(layer.metrics().expired, 5);
    let left = layer.inspect(100).unwrap();
    assert!(left.channels.is_empty(), "{:?}", left.channels);
}

#[test]
fn tokens_and_passwords_come_from_the_url() {
    let Some(server) = NatsServer::start_with(&["--auth", "s3cret-token"]) else {
        return;
    };
    let port = server.port();
    let layer = NatsLayer::from_url(&format!("nats://s3cret-token@127.0.0.1:{port}")).unwrap();
    layer.send("auth.ok", Message::new("in")).unwrap();
    let by_param =
        NatsLayer::from_url(&format!("nats://127.0.0.1:{port}?token=s3cret-token")).unwrap();
    assert_eq!(
        by_param.receive("auth.ok").unwrap().message_type(),
        Some("in")
    );
    let err = NatsLayer::from_url(&format!("nats://wrong@127.0.0.1:{port}?connect_timeout=2"))
        .unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(matches!(err, BuildError::Backend(_)), "{text}");
    assert!(!text.contains("wrong@"), "the token leaked: {text}");

    let Some(server) = NatsServer::start_with(&["--user", "svc", "--pass", "p@ss"]) else {
        return;
    };
    let url = format!("nats://svc:p%40ss@127.0.0.1:{}", server.port());
    let layer = NatsLayer::from_url(&url).unwrap();
    layer.send("auth.ok", Message::new("in")).unwrap();
    assert_eq!(layer.receive("auth.ok").unwrap().message_type(), Some("in"));
    assert!(!format!("{layer:?}").contains("p@ss"));
}

#[test]
fn tls_urls_reach_a_server_that_requires_tls() {
    if std::process::Command::new("openssl")
        .arg("version")
        .output()
        .is_err()
    {
        support::service_missing("openssl", "needed to make test certificates");
        return;
    }
    let dir = support::scratch_root().join(format!("nats-tls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    support::certs::certificates(&dir).expect("test certificates");
    let (cert, key, ca) = (
        dir.join("server.crt").display().to_string(),
        dir.join("server.key").display().to_string(),
        dir.join("ca.crt").display().to_string(),
    );
    let Some(server) = NatsServer::start_with(&["--tls", "--tlscert", &cert, "--tlskey", &key])
    else {
        return;
    };
    let url = format!("tls://127.0.0.1:{}?tls_ca_file={ca}", server.port());
    let layer = AnyLayer::from_url(&url).unwrap();
    layer.send("tls.ok", Message::new("secret")).unwrap();
    assert_eq!(
        layer.receive("tls.ok").unwrap().message_type(),
        Some("secret")
    );
    // Without the CA the server's certificate is not trusted: a typed error, quickly.
    let started = Instant::now();
    let err = NatsLayer::from_url(&format!(
        "tls://127.0.0.1:{}?connect_timeout=2",
        server.port()
    ))
    .unwrap_err();
    assert!(matches!(err, BuildError::Backend(_)), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn clearing_many_expired_messages_never_outlasts_the_operation_timeout() {
    if let Some(why) = unavailable() {
        support::skipped(why);
        return;
    }
    let mut config = NatsConfig::from_url(&shared().url()).unwrap();
    config.prefix = fresh_prefix("t");
    config.layer = LayerConfig::builder()
        .capacity(3000)
        .expiry(Duration::from_secs(1))
        .build()
        .unwrap();
    // Long enough that one delete gets through while the other tests load the shared server.
    config.operation_timeout = Duration::from_millis(1000);
    let layer = NatsLayer::new(config).unwrap();
    let payload: Vec<Message> = (0..3000)
        .map(|i| Message::new("old").with("i", i))
        .collect();
    futures::executor::block_on(async {
        for chunk in payload.chunks(256) {
            let sends: Vec<_> = chunk
                .iter()
                .map(|m| layer.send_async("stale", m.clone()))
                .collect();
            for send in sends {
                send.await.unwrap();
            }
        }
    });
    std::thread::sleep(Duration::from_millis(1200));
    // Every one has expired: a try_receive removes and counts them, a round trip each, but
    // gives up for now after the operation timeout.
    let started = Instant::now();
    let outcome = layer.try_receive("stale");
    let took = started.elapsed();
    assert!(outcome.unwrap_err().is_empty());
    assert!(
        took < Duration::from_millis(1000 + 500),
        "try_receive took {took:?}"
    );
    assert!(layer.metrics().expired > 0);
    // A full channel of expired messages: the send drops them (for at most the timeout) and
    // is stored or refused in time, never stuck.
    let started = Instant::now();
    let sent = layer.send("stale", Message::new("new"));
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(2 * 1000 + 500),
        "send took {took:?}"
    );
    assert!(sent.is_ok() || sent.unwrap_err().is_full());
}

#[test]
fn inspect_lists_channels_process_channels_and_groups_with_their_ages() {
    if let Some(why) = unavailable() {
        support::skipped(why);
        return;
    }
    let layer = served(LayerConfig::default());
    assert!(layer.capabilities().inspect);
    let process = layer.new_channel("specific").unwrap();
    for (channel, n) in [("jobs.new", 3), ("jobs.done", 1), (process.as_str(), 2)] {
        for i in 0..n {
            layer.send(channel, Message::new("m").with("i", i)).unwrap();
        }
    }
    layer.group_add("room.1", "jobs.new").unwrap();
    layer.group_add("room.1", &process).unwrap();
    layer.group_add("room-2", "jobs.done").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let seen = layer.inspect(100).unwrap();
    let channels: Vec<(&str, u64)> = seen
        .channels
        .iter()
        .map(|c| (c.name.as_str(), c.queued))
        .collect();
    let mut expected = vec![("jobs.done", 1), ("jobs.new", 3), (process.as_str(), 2)];
    expected.sort();
    assert_eq!(channels, expected);
    for c in &seen.channels {
        let age = c.oldest_age.expect("an age");
        assert!(
            age >= Duration::from_millis(250) && age < Duration::from_secs(30),
            "{c:?}"
        );
    }
    let by_process = seen.channels.iter().find(|c| c.name == process).unwrap();
    assert_eq!(
        by_process.process(),
        Some(&process[..=process.find('!').unwrap()])
    );
    let groups: Vec<(&str, Vec<&str>)> = seen
        .groups
        .iter()
        .map(|g| {
            (
                g.name.as_str(),
                g.members.iter().map(|m| m.channel.as_str()).collect(),
            )
        })
        .collect();
    let mut room1 = vec!["jobs.new", process.as_str()];
    room1.sort();
    assert_eq!(groups, [("room-2", vec!["jobs.done"]), ("room.1", room1)]);
    assert!(seen.groups[0].members[0].age.is_some());
    assert!(seen.complete);
    // Another process sees the same.
    assert_eq!(layer.inspect(1).unwrap().channels.len(), 1);
    assert!(!layer.inspect(1).unwrap().complete);
}

#[test]
fn inspect_lists_at_most_the_limit_of_members_and_counts_them_all() {
    if let Some(why) = unavailable() {
        support::skipped(why);
        return;
    }
    let layer = served(LayerConfig::default());
    for n in 0..60 {
        layer.group_add("crowd", &format!("member.{n:02}")).unwrap();
    }
    let seen = layer.inspect(5).unwrap();
    let crowd = &seen.groups[0];
    assert_eq!(crowd.name, "crowd");
    assert_eq!(crowd.member_count, 60);
    let listed: Vec<&str> = crowd.members.iter().map(|m| m.channel.as_str()).collect();
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
    let all = layer.inspect(100).unwrap();
    assert_eq!(all.groups[0].members.len(), 60);
    assert!(all.complete);
}

#[test]
fn a_member_deleted_with_the_standard_key_value_tools_is_no_longer_sent_to() {
    if let Some(why) = unavailable() {
        support::skipped(why);
        return;
    }
    let prefix = fresh_prefix("t");
    let layer = NatsLayer::from_url(&format!("{}?prefix={prefix}", shared().url())).unwrap();
    layer.group_add("room", "member.kept").unwrap();
    layer.group_add("room", "member.deleted").unwrap();
    layer.group_add("room", "member.purged").unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let version = rt.block_on(async {
        let client = async_nats::connect(shared().url()).await.unwrap();
        let js = async_nats::jetstream::new(client.clone());
        let kv = js.get_key_value(format!("{prefix}_groups")).await.unwrap();
        // What `nats kv del` and `nats kv purge` do: a delete mark, a purge mark.
        kv.delete("room.member/deleted").await.unwrap();
        kv.purge("room.member/purged").await.unwrap();
        client.server_info().version
    });
    let report = layer.group_send("room", Message::new("hi")).unwrap();
    let batched = {
        let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
        (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) >= (2, 11)
    };
    if batched {
        assert_eq!(report.delivered, 1, "{report:?}");
        assert!(layer.try_receive("member.deleted").unwrap_err().is_empty());
        assert!(layer.try_receive("member.purged").unwrap_err().is_empty());
    } else {
        // Before 2.11 the server lists keys without their entries: marks count as members
        // until the group expiry (documented in contract §5).
        println!("nats-server {version}: delete marks are seen from 2.11 on");
        assert_eq!(report.delivered, 3, "{report:?}");
    }
    assert_eq!(
        layer.try_receive("member.kept").unwrap().message_type(),
        Some("hi")
    );
}

#[test]
fn a_receiver_that_fetches_ahead_gets_every_message_in_order() {
    if let Some(why) = unavailable() {
        support::skipped(why);
        return;
    }
    let prefix = fresh_prefix("t");
    let url = |q: &str| format!("{}?prefix={prefix}&capacity=100000{q}", shared().url());
    let producer = NatsLayer::from_url(&url("")).unwrap();
    let consumer = NatsLayer::from_url(&url("&receive_prefetch=256")).unwrap();
    const N: i64 = 3000;
    let receiving = std::thread::spawn(move || {
        for n in 0..N {
            let m = consumer
                .receive_timeout("ahead", Duration::from_secs(10))
                .unwrap_or_else(|e| panic!("receive {n}: {e} ({:?})", consumer.metrics()));
            assert_eq!(m.get("n").and_then(|v| v.as_i64()), Some(n));
        }
    });
    // One send after another, so the order they are stored in is known.
    for n in 0..N {
        producer
            .send("ahead", Message::new("m").with("n", n))
            .unwrap();
    }
    receiving.join().unwrap();
}
