//! Redis Cluster against six real nodes (three masters with a replica each): the slot of every
//! key the layer writes agrees with the servers', the conformance suite runs on the cluster,
//! and channels, groups and process channels spread over every master.

mod support;

use std::sync::OnceLock;
use std::sync::atomic::Ordering;
use std::time::Duration;

use channel_layer::redis::{CLUSTER_SLOTS, RedisConfig, RedisLayer, key_slot};
use channel_layer::{AnyLayer, ChannelLayer, ChannelLayerExt, LayerConfig, Message};
use support::redis_cluster::Cluster;

/// One cluster shared by the conformance cases, each with a prefix of its own.
fn shared() -> &'static Cluster {
    started().as_ref().expect("checked by unavailable()")
}

fn started() -> &'static Option<Cluster> {
    static CLUSTER: OnceLock<Option<Cluster>> = OnceLock::new();
    CLUSTER.get_or_init(Cluster::start)
}

/// Why the cases on the shared cluster cannot run here, if they cannot (each then skips itself).
fn unavailable() -> Option<&'static str> {
    started()
        .is_none()
        .then_some("no cluster of servers could be started")
}

fn url(cluster: &Cluster) -> String {
    format!("redis+cluster://{}", cluster.seeds())
}

fn served(config: LayerConfig) -> AnyLayer {
    let mut redis = RedisConfig::from_url(&url(shared())).expect("a cluster URL");
    redis.layer = config;
    redis.prefix = support::fresh_prefix("c");
    AnyLayer::new(RedisLayer::new(redis).expect("the cluster answers"))
}

mod blocking {
    channel_layer::conformance_tests!(super::served, unavailable = super::unavailable);
}

mod on_executor {
    channel_layer::async_conformance_tests!(
        super::served,
        futures::executor::block_on,
        unavailable = super::unavailable
    );
}

#[test]
fn channels_groups_and_process_channels_spread_over_every_master() {
    if let Some(why) = unavailable() {
        support::skipped(why);
        return;
    }
    let cluster = shared();
    let layer = RedisLayer::from_url(&format!("{}?prefix=spread", url(cluster))).unwrap();
    let channels: Vec<String> = (0..30).map(|i| format!("spread.{i}")).collect();
    for (i, c) in channels.iter().enumerate() {
        layer
            .send(c, Message::new("m").with("i", i as i64))
            .unwrap();
    }
    // The keys landed on every master, each on the one serving its slot.
    let masters: Vec<u16> = cluster
        .topology()
        .into_iter()
        .filter(|n| n.master)
        .map(|n| n.port)
        .collect();
    for port in &masters {
        let keys = cluster.node(*port).command(&["KEYS", "spread*"]);
        assert!(keys.contains("spread"), "master {port} holds none: {keys}");
    }
    for (i, c) in channels.iter().enumerate() {
        let got = layer.receive_timeout(c, Duration::from_secs(5)).unwrap();
        assert_eq!(got.get("i").and_then(|v| v.as_i64()), Some(i as i64));
    }
    // Groups whose members are process channels of several layers and normal channels.
    let other = RedisLayer::from_url(&format!("{}?prefix=spread", url(cluster))).unwrap();
    let mine: Vec<String> = (0..3).map(|_| layer.new_channel("p").unwrap()).collect();
    let theirs: Vec<String> = (0..3).map(|_| other.new_channel("q").unwrap()).collect();
    for m in mine.iter().chain(&theirs).chain(&channels[..5]) {
        layer.group_add("everyone", m).unwrap();
    }
    let report = layer.group_send("everyone", Message::new("hi")).unwrap();
    assert_eq!(report.delivered, 11, "{report:?}");
    for m in &mine {
        assert!(
            layer.receive_timeout(m, Duration::from_secs(5)).is_ok(),
            "{m}"
        );
    }
    for m in &theirs {
        assert!(
            other.receive_timeout(m, Duration::from_secs(5)).is_ok(),
            "{m}"
        );
    }
    for c in &channels[..5] {
        assert!(
            layer.receive_timeout(c, Duration::from_secs(5)).is_ok(),
            "{c}"
        );
    }
    layer.flush().unwrap();
    for port in &masters {
        let keys = cluster.node(*port).command(&["KEYS", "spread*"]);
        assert!(keys.starts_with("*0"), "left after flush on {port}: {keys}");
    }
}

#[test]
fn six_nodes_make_three_masters_serving_every_slot_and_key_slot_agrees_with_them() {
    if let Some(why) = unavailable() {
        support::skipped(why);
        return;
    }
    let cluster = shared();
    let nodes = cluster.topology();
    let masters: Vec<_> = nodes.iter().filter(|n| n.master).collect();
    assert_eq!(nodes.len(), 6, "{nodes:?}");
    assert_eq!(masters.len(), 3, "{nodes:?}");
    let served: u32 = masters
        .iter()
        .flat_map(|m| &m.slots)
        .map(|range| match range.split_once('-') {
            Some((a, b)) => b.parse::<u32>().unwrap() - a.parse::<u32>().unwrap() + 1,
            None => 1,
        })
        .sum();
    assert_eq!(served, u32::from(CLUSTER_SLOTS));

    // The layer's keys, as channels_redis names them, and some with hash tags.
    let mut keys: Vec<String> = vec![
        "asgi:group:chat".into(),
        "asgichat.lobby".into(),
        "asgispecific.0a1b2c3d!".into(),
        "asgi__wake__:x".into(),
        "{tag}a".into(),
        "a{tag}".into(),
        "{}x".into(),
        "{unclosed".into(),
        "é-ünïcode".into(),
    ];
    keys.extend((0..200).map(|i| format!("asgimember.{i}!")));
    let node = &cluster.nodes[0];
    for key in &keys {
        let reply = node.command(&["CLUSTER", "KEYSLOT", key]);
        let theirs: u16 = reply
            .trim_start_matches(':')
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{key}: {reply:?}"));
        assert_eq!(key_slot(key.as_bytes()), theirs, "{key}");
    }
}

/// Sends numbered messages round the channels until `disturb` has run and the layer has sent
/// without failing for three seconds since; a receiver takes them meanwhile. Returns what was
/// acknowledged, what was received, the longest pause between acknowledged sends, and how
/// many sends failed.
fn traffic_through(
    layer: &RedisLayer,
    channels: &[String],
    disturb: impl FnOnce(),
) -> (Vec<i64>, Vec<i64>, Duration, usize) {
    use std::sync::atomic::AtomicBool;
    use std::sync::{Arc, Mutex};
    let done = Arc::new(AtomicBool::new(false));
    let received: Arc<Mutex<Vec<i64>>> = Arc::default();
    let receiver = {
        let (layer, done, received, channels) = (
            layer.clone(),
            done.clone(),
            received.clone(),
            channels.to_vec(),
        );
        std::thread::spawn(move || {
            let mut idle_rounds = 0;
            loop {
                let mut got = false;
                for c in &channels {
                    while let Ok(m) = layer.receive_timeout(c, Duration::from_millis(5)) {
                        received
                            .lock()
                            .unwrap()
                            .push(m.get("n").and_then(|v| v.as_i64()).unwrap());
                        got = true;
                    }
                }
                idle_rounds = if got { 0 } else { idle_rounds + 1 };
                if done.load(Ordering::Relaxed) && idle_rounds > 40 {
                    return;
                }
            }
        })
    };
    let mut acknowledged = Vec::new();
    let mut failed = 0;
    let mut longest = Duration::ZERO;
    let mut last_ok = std::time::Instant::now();
    let start = std::time::Instant::now();
    let mut disturb = Some(disturb);
    let mut recovered = None;
    let mut n = 0i64;
    while start.elapsed() < Duration::from_secs(40) {
        if start.elapsed() > Duration::from_secs(1) {
            if let Some(f) = disturb.take() {
                f();
                recovered = None;
                last_ok = std::time::Instant::now();
            }
        }
        if disturb.is_none()
            && recovered.is_some_and(|t: std::time::Instant| t.elapsed() > Duration::from_secs(3))
        {
            break;
        }
        let channel = &channels[(n as usize) % channels.len()];
        match layer.send(channel, Message::new("t").with("n", n)) {
            Ok(()) => {
                acknowledged.push(n);
                longest = longest.max(last_ok.elapsed());
                last_ok = std::time::Instant::now();
                if disturb.is_none() && recovered.is_none() {
                    recovered = Some(std::time::Instant::now());
                }
            }
            Err(e) => {
                assert!(e.is_transient(), "{e}");
                failed += 1;
                recovered = None;
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        n += 1;
        std::thread::sleep(Duration::from_micros(500));
    }
    done.store(true, Ordering::Relaxed);
    receiver.join().unwrap();
    let received = received.lock().unwrap().clone();
    (acknowledged, received, longest, failed)
}

#[test]
fn the_same_layer_follows_a_master_failover_with_exact_accounting() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    // Each send waits for one replica: an acknowledged message that the failover loses is one
    // the layer counted as unreplicated.
    let layer = RedisLayer::from_url(&format!(
        "{}?prefix=fo&capacity=100000&timeout=2&replica_acks=1",
        url(&cluster)
    ))
    .unwrap();
    let channels: Vec<String> = (0..12).map(|i| format!("fo.{i}")).collect();
    let victim = cluster.master_of(key_slot(b"fofo.0"));
    let (acked, received, longest, failed) = traffic_through(&layer, &channels, || {
        cluster.node(victim.port).kill();
    });
    cluster.wait_until(2);
    let unique: std::collections::HashSet<i64> = received.iter().copied().collect();
    assert_eq!(unique.len(), received.len(), "nothing is delivered twice");
    let lost = acked.iter().filter(|n| !unique.contains(n)).count();
    let m = layer.metrics();
    println!(
        "cluster failover: {} acknowledged, {} received, {lost} acknowledged but lost with the old master (counted unreplicated: {}), {failed} sends failed (counted: backend_errors {}), longest pause {longest:?}",
        acked.len(),
        received.len(),
        m.unreplicated,
        m.backend_errors
    );
    assert!(
        lost as u64 <= m.unreplicated,
        "{lost} acknowledged messages lost, but only {} counted unreplicated",
        m.unreplicated
    );
    let unacknowledged = unique.iter().filter(|n| !acked.contains(n)).count();
    assert!(
        unacknowledged <= failed,
        "{unacknowledged} received messages were never acknowledged, but only {failed} sends failed"
    );
    assert!(m.backend_errors as usize >= failed);
    assert_ne!(cluster.master_of(key_slot(b"fofo.0")).port, victim.port);
    layer.send("fo.0", Message::new("after")).unwrap();
    let mut after = None;
    while let Ok(m) = layer.receive_timeout("fo.0", Duration::from_secs(5)) {
        if m.message_type() == Some("after") {
            after = Some(m);
            break;
        }
    }
    assert!(after.is_some(), "the layer works after the failover");
}

#[test]
fn slots_moved_between_masters_mid_traffic_lose_nothing() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let layer = RedisLayer::from_url(&format!(
        "{}?prefix=rs&capacity=100000&timeout=2",
        url(&cluster)
    ))
    .unwrap();
    let channels: Vec<String> = (0..12).map(|i| format!("rs.{i}")).collect();
    let from = cluster.master_of(key_slot(b"rsrs.0"));
    let to = cluster
        .topology()
        .into_iter()
        .find(|n| n.master && n.port != from.port)
        .unwrap();
    let (acked, received, longest, failed) = traffic_through(&layer, &channels, || {
        cluster.reshard(&from, &to, 2000);
    });
    let unique: std::collections::HashSet<i64> = received.iter().copied().collect();
    assert_eq!(unique.len(), received.len(), "nothing is delivered twice");
    let missing: Vec<i64> = acked
        .iter()
        .filter(|n| !unique.contains(n))
        .copied()
        .collect();
    println!(
        "cluster reshard of 2000 slots: {} acknowledged, {} received, {} missing, {failed} sends failed, longest pause {longest:?}",
        acked.len(),
        received.len(),
        missing.len()
    );
    assert!(
        missing.is_empty(),
        "acknowledged and never received: {missing:?}"
    );
    // Whatever was received and not acknowledged was a send that failed (its outcome
    // unknown): nothing else.
    let unacknowledged = unique.iter().filter(|n| !acked.contains(n)).count();
    assert!(
        unacknowledged <= failed,
        "{unacknowledged} received messages were never acknowledged, but only {failed} sends failed"
    );
}

#[test]
fn acl_users_encryption_and_the_cli_work_on_the_cluster() {
    if let Some(why) = unavailable() {
        support::skipped(why);
        return;
    }
    let cluster = shared();
    // ACL users are per node: every node gets it (a replica may become a master).
    for node in &cluster.nodes {
        let reply = node.command(&[
            "ACL", "SETUSER", "svc", "on", ">svc-pw", "~*", "&*", "+@all",
        ]);
        assert!(reply.starts_with("+OK"), "{reply}");
    }
    let seeds = cluster.seeds();
    let url = format!("redis+cluster://svc:svc-pw@{seeds}?prefix=acl&symmetric_encryption_keys=k1");
    let layer = RedisLayer::from_url(&url).unwrap();
    layer
        .send(
            "acl.chan",
            Message::new("secret").with("text", "plain words"),
        )
        .unwrap();
    let owner = cluster.master_of(key_slot(b"aclacl.chan"));
    let stored = cluster
        .node(owner.port)
        .command(&["ZRANGE", "aclacl.chan", "0", "-1"]);
    assert!(stored.starts_with("*1\r\n"), "one message stored: {stored}");
    assert!(
        !stored.contains("plain words"),
        "stored encrypted: {stored}"
    );
    let got = layer
        .receive_timeout("acl.chan", Duration::from_secs(5))
        .unwrap();
    assert_eq!(
        got.get("text").and_then(|v| v.as_str()),
        Some("plain words")
    );
    // A wrong password: the slot map cannot even be read.
    let wrong = RedisLayer::from_url(&format!(
        "redis+cluster://svc:nope@{seeds}?connect_timeout=1"
    ));
    assert!(wrong.is_err(), "{wrong:?}");

    // The CLI, configured by CHANNEL_LAYER_URL.
    let cli = support::example::example_binary("cli");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(&cli)
            .args(args)
            .env(
                "CHANNEL_LAYER_URL",
                format!("redis+cluster://{seeds}?prefix=cli"),
            )
            .output()
            .expect("the cli runs");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    run(&["send", "cli.chan", r#"{"type":"via.cluster"}"#]);
    assert_eq!(
        run(&["receive", "cli.chan", "--timeout", "5"]),
        "{\"type\":\"via.cluster\"}\n"
    );
}

#[test]
fn three_silent_seeds_fail_the_build_within_the_connect_timeout() {
    // Seeds that accept a connection and never answer (a stuck node, a load balancer with no
    // backend): the connect timeout bounds the whole connect, not each seed.
    let listeners: Vec<std::net::TcpListener> = (0..3)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let seeds: Vec<String> = listeners
        .iter()
        .map(|l| l.local_addr().unwrap().to_string())
        .collect();
    let url = format!("redis+cluster://{}?connect_timeout=1", seeds.join(","));
    let started = std::time::Instant::now();
    let built = RedisLayer::from_url(&url);
    let took = started.elapsed();
    assert!(built.is_err(), "{built:?}");
    assert!(
        took < Duration::from_millis(1500),
        "three silent seeds took {took:?} with connect_timeout=1"
    );
    drop(listeners);
}
