//! The Redis backend under real faults, with exact accounting.
//!
//! Each test runs traffic (blocking and async sends, blocking and async receives, on a normal
//! channel and on a process-specific one) against a private `redis-server`, applies one fault
//! mid-traffic, and then checks:
//! - every message is received at most once, in order per sender and channel;
//! - every message whose send returned `Ok` is received, or counted as lost by the layer
//!   (the servers run with `appendfsync always`, so a restart keeps what Redis held);
//! - no call outlives its deadline by more than a round trip (plus slack for this machine);
//! - a receive waiting across the fault gets the message sent after it, and the same layer
//!   object goes on working.
//!
//! The figures (sent, received, counted losses, slowest calls) are printed per fault; run with
//! `--nocapture` to see them.

mod support;

use std::thread;
use std::time::{Duration, Instant};

use channel_layer::redis::{RedisConfig, RedisLayer};
use channel_layer::runtime::block_on;
use channel_layer::{ChannelLayer, ChannelLayerExt, Message, Value};
use support::redis_server::RedisServer;
use support::traffic::{
    SLACK, TIMEOUT, Traffic, check_recovered, check_waiting_receive, waiting_receive,
};

/// A server that writes every change to its append-only file before answering, so a
/// `kill -9` and restart lose nothing Redis had acknowledged.
fn durable_server(extra: &[&str]) -> Option<RedisServer> {
    let mut args = vec!["--appendonly", "yes", "--appendfsync", "always"];
    args.extend_from_slice(extra);
    RedisServer::start_with(&args)
}

fn config_for(url: &str) -> RedisConfig {
    let mut config = RedisConfig::new(url.to_owned());
    config.operation_timeout = TIMEOUT;
    config.connect_timeout = Duration::from_millis(500);
    config.layer.capacity = 100_000;
    config
}

fn layer(url: &str) -> RedisLayer {
    RedisLayer::new(config_for(url)).expect("valid config")
}

/// Runs traffic on a fresh layer for `url` across `fault`, then checks the accounting, the
/// receive that waited across the fault, and that the same layer recovered. Returns the layer
/// and what it counted lost.
fn across_a_fault(
    server: &RedisServer,
    url: &str,
    name: &str,
    fault: impl FnOnce(&RedisServer, &RedisLayer),
) -> (RedisLayer, u64) {
    let layer = layer(url);
    let waiting = waiting_receive(&layer, "faults.after");
    let traffic = Traffic::start(&layer);
    thread::sleep(Duration::from_millis(500));
    fault(server, &layer);
    thread::sleep(Duration::from_millis(700));
    let (_, _, _, lost) = traffic.finish(name, &layer);
    check_waiting_receive(&self::layer(url), "faults.after", waiting);
    check_recovered(&layer);
    (layer, lost)
}

#[test]
fn kill_and_restart_on_the_same_port() {
    let Some(server) = durable_server(&[]) else {
        return;
    };
    let (layer, _) = across_a_fault(&server, &server.url(), "kill -9 and restart", |s, _| {
        s.kill();
        thread::sleep(Duration::from_secs(2));
        s.restart();
    });
    let m = layer.metrics();
    assert!(m.backend_errors > 0, "the outage is counted: {m:?}");
    assert!(m.reconnects > 0, "the reconnects are counted: {m:?}");
}

#[test]
fn connections_cut_by_the_server() {
    let Some(server) = durable_server(&[]) else {
        return;
    };
    across_a_fault(&server, &server.url(), "CLIENT KILL TYPE normal", |s, _| {
        s.command(&["CLIENT", "KILL", "TYPE", "normal"]);
        thread::sleep(Duration::from_millis(500));
        s.command(&["CLIENT", "KILL", "TYPE", "normal"]);
    });
}

#[test]
fn stale_pooled_connections_never_fail_a_call() {
    let Some(server) = durable_server(&[]) else {
        return;
    };
    let layer = layer(&server.url());
    // Fill the pool with several idle connections.
    let threads: Vec<_> = (0..6)
        .map(|i| {
            let layer = layer.clone();
            thread::spawn(move || {
                for n in 0..20 {
                    layer
                        .send(&format!("pool.{i}"), Message::new("x").with("n", n))
                        .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    server.command(&["CLIENT", "KILL", "TYPE", "normal"]);
    thread::sleep(Duration::from_millis(100));
    for n in 0..10 {
        layer
            .send("pool.after", Message::new("x").with("n", n))
            .unwrap_or_else(|e| panic!("send {n} after the connections were cut: {e:?}"));
    }
    for n in 0..10 {
        let m = layer
            .receive_timeout("pool.after", Duration::from_secs(5))
            .unwrap();
        assert_eq!(m.get("n").and_then(Value::as_i64), Some(n));
    }
}

#[test]
fn a_frozen_server_loses_nothing_and_no_call_outlives_its_deadline() {
    let Some(server) = durable_server(&[]) else {
        return;
    };
    let layer = layer(&server.url());
    // The reproduction: a message waits; a receive starts as the server freezes for longer
    // than the operation timeout; the server resumes.
    for via_async in [false, true] {
        for channel in [
            "frozen.normal".to_owned(),
            layer.new_channel("frozen").unwrap(),
        ] {
            layer.send(&channel, Message::new("before.freeze")).unwrap();
            server.freeze();
            let t = Instant::now();
            let got = if via_async {
                block_on(layer.receive_timeout_async(&channel, Duration::from_millis(500)))
            } else {
                layer.receive_timeout(&channel, Duration::from_millis(500))
            };
            let took = t.elapsed();
            thread::sleep(TIMEOUT + Duration::from_millis(500));
            server.thaw();
            assert!(
                took < Duration::from_millis(500) + SLACK,
                "a 500 ms receive took {took:?} while the server was frozen"
            );
            let got = match got {
                Ok(m) => m,
                Err(e) => {
                    assert!(e.is_timeout(), "{e:?}");
                    layer
                        .receive_timeout(&channel, Duration::from_secs(5))
                        .expect("the message taken while the server was frozen is delivered")
                }
            };
            assert_eq!(got.message_type(), Some("before.freeze"));
        }
    }
    assert_eq!(layer.metrics().lost, 0);

    let name = "SIGSTOP past the timeout, then SIGCONT";
    let (_, lost) = across_a_fault(&server, &server.url(), name, |s, _| {
        s.freeze();
        thread::sleep(TIMEOUT + Duration::from_secs(1));
        s.thaw();
    });
    assert_eq!(lost, 0, "a frozen server loses nothing");
}

#[test]
fn a_paused_server_holds_calls_no_longer_than_their_timeout() {
    let Some(server) = durable_server(&[]) else {
        return;
    };
    across_a_fault(&server, &server.url(), "CLIENT PAUSE 5000", |s, layer| {
        s.command(&["CLIENT", "PAUSE", "5000", "ALL"]);
        let t = Instant::now();
        let result = layer.send("paused", Message::new("x"));
        let took = t.elapsed();
        assert!(
            took <= TIMEOUT + SLACK,
            "a send during a 5 s pause took {took:?} with a {TIMEOUT:?} timeout ({result:?})"
        );
        thread::sleep(Duration::from_secs(5));
    });
}

#[test]
fn a_restart_with_a_changed_password() {
    let durable = ["--appendonly", "yes", "--appendfsync", "always"];
    let with_password = |p: &'static str| {
        let mut args = durable.to_vec();
        args.extend(["--requirepass", p]);
        args
    };
    let Some(server) = RedisServer::start_with(&with_password("first")) else {
        return;
    };
    let url = format!("redis://:first@127.0.0.1:{}/0", server.port());
    let name = "restart with a changed password, then back";
    across_a_fault(&server, &url, name, |s, layer| {
        s.restart_with(&with_password("second"));
        // With the wrong password, calls fail with a one-line refusal, and fail fast.
        thread::sleep(Duration::from_millis(300));
        let t = Instant::now();
        let err = layer.send("faults.auth", Message::new("x")).unwrap_err();
        assert!(t.elapsed() < TIMEOUT, "took {:?}", t.elapsed());
        let text = err.to_string();
        assert!(!text.contains('\n'), "one line: {text}");
        assert!(
            text.matches("WRONGPASS").count() + text.matches("NOAUTH").count() <= 1,
            "said once: {text}"
        );
        assert!(
            !err.is_transient(),
            "a refused login will fail again: {err:?}"
        );
        thread::sleep(Duration::from_secs(1));
        s.restart_with(&with_password("first"));
    });
}

fn thread_count() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:").map(|n| n.trim().parse().ok()))
                .flatten()
        })
        .unwrap_or(0)
}

#[test]
fn twenty_faults_leave_no_threads_or_connections_behind() {
    let Some(server) = durable_server(&[]) else {
        return;
    };
    let layer = layer(&server.url());
    let mut after_first = None;
    for round in 0..20 {
        let waiting = waiting_receive(&layer, "faults.after");
        if round % 2 == 0 {
            server.command(&["CLIENT", "KILL", "TYPE", "normal"]);
        } else {
            server.kill();
            server.restart();
        }
        check_waiting_receive(&self::layer(&server.url()), "faults.after", waiting);
        check_recovered(&layer);
        // The other layer object used above winds its threads down within a few seconds.
        let settle = Instant::now();
        let first = *after_first.get_or_insert_with(|| {
            thread::sleep(Duration::from_secs(3));
            thread_count()
        });
        let mut threads = thread_count();
        while threads > first && settle.elapsed() < Duration::from_secs(5) {
            thread::sleep(Duration::from_millis(100));
            threads = thread_count();
        }
        assert!(
            threads <= first,
            "round {round}: {threads} threads, {first} after the first fault"
        );
    }
    let clients = server.command(&["CLIENT", "LIST"]);
    assert!(
        clients.lines().count() < 40,
        "connections pile up: {clients}"
    );
}

#[test]
fn a_worker_keeps_serving_across_a_restart() {
    use channel_layer::AnyLayer;
    use channel_layer::service::{Client, Worker};
    let Some(server) = durable_server(&[]) else {
        return;
    };
    let layer = AnyLayer::new(layer(&server.url()));
    let worker = Worker::builder(layer.clone())
        .channel("svc.request")
        .handle("ping", |_, _| Ok(Some(Message::new("pong"))))
        .start()
        .unwrap();
    let client = Client::new(layer.clone());
    let ask = || client.request("svc.request", Message::new("ping"), Duration::from_secs(3));
    assert_eq!(ask().unwrap().message_type(), Some("pong"));
    server.kill();
    thread::sleep(Duration::from_secs(1));
    server.restart();
    let start = Instant::now();
    let reply = loop {
        match ask() {
            Ok(reply) => break reply,
            Err(e) if start.elapsed() < Duration::from_secs(10) => {
                thread::sleep(Duration::from_millis(100));
                let _ = e;
            }
            Err(e) => panic!("the worker did not serve again after the restart: {e}"),
        }
    };
    assert_eq!(reply.message_type(), Some("pong"));
    let report = worker.shutdown(Duration::from_secs(2));
    let _ = report;
}

/// The reproduction: the CLI's `receive` waits across a restart of redis-server and prints
/// the message a Python channels_redis peer sends once the server is back.
#[test]
fn a_cli_receive_waits_across_a_restart_for_a_python_sender() {
    use std::process::{Command, Stdio};
    let Some(server) = RedisServer::start() else {
        return;
    };
    let cli = support::example::example_binary("cli");
    let child = Command::new(cli)
        .args([
            "--url",
            &server.url(),
            "receive",
            "faults.a",
            "--timeout",
            "25",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the cli runs");
    thread::sleep(Duration::from_millis(500));
    server.kill();
    thread::sleep(Duration::from_secs(2));
    server.restart();
    let Some(mut peer) = support::python::PythonPeer::spawn(serde_json::json!({
        "hosts": [server.url()],
    })) else {
        let mut child = child;
        let _ = child.kill();
        let _ = child.wait();
        return;
    };
    peer.send("faults.a", &Message::new("after.restart").with("n", 7))
        .expect("python sends");
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the receive failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("after.restart"), "{stdout}");
}
