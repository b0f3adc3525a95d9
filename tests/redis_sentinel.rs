//! The Redis backend through Redis Sentinel: one master, one replica and three sentinels, all
//! real servers on free ports. The conformance suite runs on it; a failover mid-traffic is
//! followed by the same layer object.

mod support;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use channel_layer::redis::{RedisConfig, RedisLayer};
use channel_layer::{AnyLayer, ChannelLayer, ChannelLayerExt, LayerConfig, Message};
use support::redis_server::{RedisServer, Sentinel};

const MASTER: &str = "mymaster";

/// A master, its replica and three sentinels watching them (quorum 2).
struct World {
    master: RedisServer,
    replica: RedisServer,
    sentinels: Vec<Sentinel>,
}

impl World {
    fn start() -> Option<World> {
        World::start_with(None, None)
    }

    /// With `master_password` on the master and its replica, and `password` on the sentinels.
    fn start_with(master_password: Option<&str>, password: Option<&str>) -> Option<World> {
        let auth: Vec<&str> = master_password
            .map(|p| vec!["--requirepass", p, "--masterauth", p])
            .unwrap_or_default();
        let master = RedisServer::start_with(&auth)?;
        let port = master.port().to_string();
        let mut replica_args = vec!["--replicaof", "127.0.0.1", port.as_str()];
        replica_args.extend(&auth);
        let replica = RedisServer::start_with(&replica_args)?;
        let sentinels = (0..3)
            .map(|_| Sentinel::start_with(MASTER, &master, 2, master_password, password))
            .collect::<Option<Vec<_>>>()?;
        let world = World {
            master,
            replica,
            sentinels,
        };
        world.wait_until_ready();
        Some(world)
    }

    /// Until the replica is in sync and every sentinel knows the replica and the other
    /// sentinels (a failover needs both).
    fn wait_until_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let synced = self
                .replica
                .command(&["INFO", "replication"])
                .contains("master_link_status:up");
            let known = self.sentinels.iter().all(|s| {
                let info = s.command(&["SENTINEL", "MASTER", MASTER]);
                field(&info, "num-slaves") >= 1 && field(&info, "num-other-sentinels") >= 2
            });
            if synced && known {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the sentinel setup did not come together; a sentinel's log:\n{}",
                self.sentinels[0].log()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    fn url(&self) -> String {
        let list: Vec<String> = self.sentinels.iter().map(Sentinel::address).collect();
        format!("redis+sentinel://{}/{MASTER}/0", list.join(","))
    }
}

/// The integer after `name` in a `SENTINEL MASTER` reply (a flat list of names and values).
fn field(reply: &str, name: &str) -> i64 {
    let lines: Vec<&str> = reply.lines().collect();
    lines
        .iter()
        .position(|l| *l == name)
        .and_then(|i| lines.get(i + 2))
        .and_then(|v| v.parse().ok())
        .unwrap_or(-1)
}

/// One setup shared by the conformance cases, each with a prefix of its own.
fn shared() -> &'static World {
    started().as_ref().expect("checked by unavailable()")
}

fn started() -> &'static Option<World> {
    static WORLD: OnceLock<Option<World>> = OnceLock::new();
    WORLD.get_or_init(World::start)
}

/// Why the cases on the shared servers cannot run here, if they cannot (each then skips itself).
fn unavailable() -> Option<&'static str> {
    started()
        .is_none()
        .then_some("no redis-server to run sentinels and their master on")
}

fn served(config: LayerConfig) -> AnyLayer {
    let world = shared();
    let mut redis = RedisConfig::from_url(&world.url()).expect("a sentinel URL");
    redis.layer = config;
    redis.prefix = support::fresh_prefix("conf");
    AnyLayer::new(RedisLayer::new(redis).expect("a valid configuration"))
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
fn channels_redis_with_its_sentinel_configuration_shares_the_layer() {
    if let Some(why) = unavailable() {
        support::skipped(why);
        return;
    }
    let world = shared();
    let sentinels: Vec<serde_json::Value> = world
        .sentinels
        .iter()
        .map(|s| serde_json::json!(["127.0.0.1", s.port()]))
        .collect();
    let Some(mut peer) = support::python::PythonPeer::spawn(serde_json::json!({
        "hosts": [{"master_name": MASTER, "sentinels": sentinels}],
        "prefix": "shared",
    })) else {
        return;
    };
    let layer = RedisLayer::from_url(&format!("{}?prefix=shared", world.url())).unwrap();
    // Rust to Python, on a normal channel.
    layer
        .send("interop.sentinel", Message::new("from.rust").with("n", 1))
        .unwrap();
    let got = peer
        .receive_message("interop.sentinel", Duration::from_secs(10))
        .unwrap();
    assert_eq!(got.message_type(), Some("from.rust"));
    // Python to Rust, on a channel of this process.
    let mine = layer.new_channel("reply").unwrap();
    peer.send(&mine, &Message::new("from.python")).unwrap();
    let got = layer
        .receive_timeout(&mine, Duration::from_secs(10))
        .unwrap();
    assert_eq!(got.message_type(), Some("from.python"));
    // A group with members on both sides, sent to from Rust.
    let theirs = peer.new_channel(Some("member"));
    peer.group_add("room", &theirs);
    layer.group_add("room", &mine).unwrap();
    let report = layer.group_send("room", Message::new("chat")).unwrap();
    assert_eq!(report.delivered, 2, "{report:?}");
    assert_eq!(
        layer
            .receive_timeout(&mine, Duration::from_secs(10))
            .unwrap()
            .message_type(),
        Some("chat")
    );
    assert_eq!(
        peer.receive_message(&theirs, Duration::from_secs(10))
            .unwrap()
            .message_type(),
        Some("chat")
    );
}

#[test]
fn a_sentinel_url_reaches_the_master_they_name() {
    if let Some(why) = unavailable() {
        support::skipped(why);
        return;
    }
    let world = shared();
    let layer = RedisLayer::from_url(&format!("{}?prefix=named", world.url())).unwrap();
    layer.send("where", Message::new("here")).unwrap();
    // The message is on the master (and replicated), found through the sentinels.
    assert!(
        world
            .master
            .command(&["EXISTS", "namedwhere"])
            .contains(":1")
    );
    let got = layer
        .receive_timeout("where", Duration::from_secs(5))
        .unwrap();
    assert_eq!(got.message_type(), Some("here"));
    // A master name the sentinels do not know is an error naming it, by the deadline.
    let unknown = RedisLayer::from_url(&format!(
        "redis+sentinel://{}/nosuchmaster/0?timeout=1&connect_timeout=1",
        world.sentinels[0].address()
    ))
    .unwrap();
    let err = unknown.send("x", Message::new("x")).unwrap_err();
    assert!(err.to_string().contains("nosuchmaster"), "{err}");
    assert!(err.is_transient(), "{err:?}");
}

#[test]
fn passwords_log_in_to_the_master_and_to_the_sentinels() {
    let Some(world) = World::start_with(Some("m4ster"), Some("s3ntinel")) else {
        return;
    };
    let list: Vec<String> = world.sentinels.iter().map(Sentinel::address).collect();
    let url = format!(
        "redis+sentinel://:m4ster@{}/{MASTER}/0?sentinel_password=s3ntinel&prefix=pw",
        list.join(",")
    );
    let layer = RedisLayer::from_url(&url).unwrap();
    layer.send("pw.chan", Message::new("in")).unwrap();
    assert!(
        layer
            .receive_timeout("pw.chan", Duration::from_secs(5))
            .is_ok()
    );
    // Neither password shows in the configuration's debug output.
    let shown = format!("{:?}", layer.config());
    assert!(
        !shown.contains("m4ster") && !shown.contains("s3ntinel"),
        "{shown}"
    );
    // Without the sentinels' password: refused, saying so, by the deadline.
    let wrong = RedisLayer::from_url(&format!(
        "redis+sentinel://:m4ster@{}/{MASTER}/0?timeout=1&connect_timeout=1",
        list.join(",")
    ))
    .unwrap();
    let err = wrong.send("pw.chan", Message::new("x")).unwrap_err();
    assert!(
        err.to_string().contains("NOAUTH") || err.to_string().contains("AUTH"),
        "{err}"
    );
}

#[test]
fn acl_users_and_encryption_work_through_the_sentinels() {
    if let Some(why) = unavailable() {
        support::skipped(why);
        return;
    }
    let world = shared();
    // An ACL user on the master and its replica (a promoted replica must know it too).
    for server in [&world.master, &world.replica] {
        let reply = server.command(&[
            "ACL", "SETUSER", "svc", "on", ">svc-pw", "~*", "&*", "+@all",
        ]);
        assert!(reply.starts_with("+OK"), "{reply}");
    }
    let list: Vec<String> = world.sentinels.iter().map(Sentinel::address).collect();
    let url = format!(
        "redis+sentinel://svc:svc-pw@{}/{MASTER}/0?prefix=acl&symmetric_encryption_keys=k1",
        list.join(",")
    );
    let layer = RedisLayer::from_url(&url).unwrap();
    layer
        .send(
            "acl.chan",
            Message::new("secret").with("text", "plain words"),
        )
        .unwrap();
    // Stored encrypted: the text is not in Redis.
    let stored = world.master.command(&["ZRANGE", "aclacl.chan", "0", "-1"]);
    assert!(stored.starts_with("*1\r\n"), "one message stored: {stored}");
    assert!(!stored.contains("plain words"), "{stored}");
    let got = layer
        .receive_timeout("acl.chan", Duration::from_secs(5))
        .unwrap();
    assert_eq!(
        got.get("text").and_then(|v| v.as_str()),
        Some("plain words")
    );
    // A wrong password is refused with the server's words, once.
    let wrong = RedisLayer::from_url(&format!(
        "redis+sentinel://svc:nope@{}/{MASTER}/0?timeout=1",
        list.join(",")
    ))
    .unwrap();
    let err = wrong.send("acl.chan", Message::new("x")).unwrap_err();
    assert!(err.to_string().contains("refused the login"), "{err}");
}

#[test]
fn the_cli_and_from_env_reach_the_master_through_the_sentinels() {
    if let Some(why) = unavailable() {
        support::skipped(why);
        return;
    }
    let world = shared();
    let url = format!("{}?prefix=cli", world.url());
    let cli = support::example::example_binary("cli");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(&cli)
            .args(args)
            .env("CHANNEL_LAYER_URL", &url)
            .output()
            .expect("the cli runs");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    run(&["send", "cli.chan", r#"{"type":"via.sentinel","n":7}"#]);
    let got = run(&["receive", "cli.chan", "--timeout", "5"]);
    assert_eq!(got, "{\"type\":\"via.sentinel\",\"n\":7}\n");
}

#[test]
fn a_dead_sentinel_is_passed_over() {
    if let Some(why) = unavailable() {
        support::skipped(why);
        return;
    }
    let world = shared();
    // The first sentinel listed is not there at all.
    let list: Vec<String> = world.sentinels.iter().map(Sentinel::address).collect();
    let url = format!(
        "redis+sentinel://127.0.0.1:1,{}/{MASTER}/0?prefix=deadfirst",
        list.join(",")
    );
    let layer = RedisLayer::from_url(&url).unwrap();
    layer.send("c", Message::new("m")).unwrap();
    assert!(layer.receive_timeout("c", Duration::from_secs(5)).is_ok());
}

#[test]
fn the_same_layer_follows_a_failover_and_counts_what_it_could_not_deliver() {
    let Some(world) = World::start() else {
        return;
    };
    // Every send asks the replica to confirm it: what it could not confirm is counted.
    let layer = RedisLayer::from_url(&format!(
        "{}?prefix=fo&capacity=100000&timeout=2&replica_acks=1&replica_ack_timeout=0.2",
        world.url()
    ))
    .unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let received: Arc<std::sync::Mutex<Vec<i64>>> = Arc::default();
    let receiver = {
        let (layer, done, received) = (layer.clone(), done.clone(), received.clone());
        thread::spawn(move || {
            let mut quiet_since = None;
            loop {
                match layer.receive_timeout("fo.chan", Duration::from_millis(500)) {
                    Ok(m) => {
                        quiet_since = None;
                        received
                            .lock()
                            .unwrap()
                            .push(m.get("n").and_then(|v| v.as_i64()).unwrap());
                    }
                    Err(e) if e.is_timeout() || e.is_transient() => {
                        if done.load(Ordering::Relaxed) {
                            let since = *quiet_since.get_or_insert_with(Instant::now);
                            if since.elapsed() > Duration::from_secs(3) {
                                return;
                            }
                        }
                    }
                    Err(e) => panic!("receive failed: {e}"),
                }
            }
        })
    };
    // Send for a while before the failover and a while after it.
    let (mut ok, mut failed, mut maybe) = (0usize, 0usize, 0usize);
    let mut acknowledged = Vec::new();
    let mut longest_pause = Duration::ZERO;
    let mut last_ok = Instant::now();
    let start = Instant::now();
    let mut killed = None;
    let mut recovered = None;
    let mut n = 0i64;
    let old_master_port = world.master.port();
    while start.elapsed() < Duration::from_secs(25) {
        if killed.is_none() && start.elapsed() > Duration::from_secs(2) {
            world.master.kill();
            killed = Some(Instant::now());
        }
        // After the failover, go on for three seconds of normal traffic.
        if recovered.is_some_and(|at: Instant| at.elapsed() > Duration::from_secs(3)) {
            break;
        }
        match layer.send("fo.chan", Message::new("fo").with("n", n)) {
            Ok(()) => {
                ok += 1;
                acknowledged.push(n);
                if killed.is_some() && recovered.is_none() {
                    recovered = Some(Instant::now());
                }
                longest_pause = longest_pause.max(last_ok.elapsed());
                last_ok = Instant::now();
            }
            Err(e) => {
                assert!(e.is_transient(), "a failover gives transient errors: {e}");
                if e.backend_error().is_some_and(|b| b.may_have_applied()) {
                    maybe += 1;
                } else {
                    failed += 1;
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
        n += 1;
        thread::sleep(Duration::from_millis(1));
    }
    assert!(killed.is_some());
    assert_ne!(
        world.sentinels[0].master_port(MASTER),
        Some(old_master_port),
        "the sentinels promoted the replica"
    );
    done.store(true, Ordering::Relaxed);
    receiver.join().unwrap();
    let received = received.lock().unwrap().clone();
    let unique: HashSet<i64> = received.iter().copied().collect();
    assert_eq!(unique.len(), received.len(), "nothing is delivered twice");
    let acked: HashSet<i64> = acknowledged.iter().copied().collect();
    let lost_acked = acked.difference(&unique).count();
    let metrics = layer.metrics();
    println!(
        "failover: {n} sends tried, {ok} acknowledged, {maybe} failed after they may have been applied, \
         {failed} refused unapplied; {} received; {lost_acked} acknowledged but lost with the old master \
         (asynchronous replication); longest pause between acknowledged sends {longest_pause:?}; \
         backend_errors {}, reconnects {}, unreplicated {}",
        received.len(),
        metrics.backend_errors,
        metrics.reconnects,
        metrics.unreplicated
    );
    // Everything received was sent; what was acknowledged and not received was written to
    // the old master in its last moments (never more than a moment's worth), and every
    // failure the caller saw is counted.
    assert!(unique.iter().all(|m| *m < n));
    assert!(
        lost_acked as u64 <= metrics.unreplicated,
        "every acknowledged message lost with the old master was counted as unreplicated \
         ({lost_acked} lost, {} counted)",
        metrics.unreplicated
    );
    assert!(metrics.backend_errors as usize >= failed + maybe);
    assert!(metrics.reconnects >= 1, "{metrics:?}");
    // After the failover the layer works as before.
    layer.send("after", Message::new("after")).unwrap();
    assert!(
        layer
            .receive_timeout("after", Duration::from_secs(5))
            .is_ok()
    );
    assert!(
        longest_pause < Duration::from_secs(15),
        "longest pause {longest_pause:?}"
    );
}
