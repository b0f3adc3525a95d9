//! The Redis backend when Redis goes away: calls fail with a typed error within a bounded time,
//! nothing panics or hangs, and the same layer object works again once Redis is back. A real
//! `redis-server` is killed and restarted mid-traffic; what was lost is counted and printed.

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use channel_layer::redis::{RedisConfig, RedisLayer};
use channel_layer::{ChannelLayer, ChannelLayerExt, Message, ReceiveError, SendError};
use support::redis_server::RedisServer;

/// The longest any call may take while Redis is down: the operation timeout plus slack for
/// a loaded machine.
const BOUND: Duration = Duration::from_secs(4);

fn layer(server: &RedisServer) -> RedisLayer {
    let mut config = RedisConfig::new(server.url());
    config.operation_timeout = Duration::from_secs(2);
    config.connect_timeout = Duration::from_millis(500);
    config.layer.capacity = 10_000;
    RedisLayer::new(config).expect("valid config")
}

/// Retries `f` until it succeeds or `limit` passes.
fn eventually<T, E: std::fmt::Debug>(limit: Duration, mut f: impl FnMut() -> Result<T, E>) -> T {
    let start = Instant::now();
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) if start.elapsed() > limit => panic!("still failing after {limit:?}: {e:?}"),
            Err(_) => thread::sleep(Duration::from_millis(50)),
        }
    }
}

#[test]
fn calls_fail_fast_while_redis_is_down_and_work_again_after() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let layer = layer(&server);
    let reply = layer.new_channel("reply").unwrap();
    layer.send("jobs", Message::new("before")).unwrap();
    assert_eq!(
        layer.receive_timeout("jobs", BOUND).unwrap().message_type(),
        Some("before")
    );

    server.kill();

    let t = Instant::now();
    let err = layer.send("jobs", Message::new("during")).unwrap_err();
    assert!(matches!(err, SendError::Backend { .. }), "{err:?}");
    assert!(
        err.into_message().message_type() == Some("during"),
        "the message comes back"
    );
    assert!(t.elapsed() < BOUND, "send took {:?}", t.elapsed());

    let t = Instant::now();
    let err = layer
        .receive_timeout(&reply, Duration::from_secs(30))
        .unwrap_err();
    assert!(matches!(err, ReceiveError::Backend(_)), "{err:?}");
    assert!(t.elapsed() < BOUND, "receive took {:?}", t.elapsed());

    let t = Instant::now();
    let err = channel_layer::runtime::block_on(layer.group_send_async("g", Message::new("x")))
        .unwrap_err();
    assert!(
        matches!(err, channel_layer::LayerError::Backend(_)),
        "{err:?}"
    );
    assert!(t.elapsed() < BOUND, "group_send took {:?}", t.elapsed());
    let err = layer.flush().unwrap_err();
    assert!(
        matches!(err, channel_layer::LayerError::Backend(_)),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("redis"),
        "a descriptive error: {err}"
    );

    server.restart();

    // The same layer object reconnects by itself.
    eventually(BOUND, || layer.send("jobs", Message::new("after")));
    let got = eventually(BOUND, || {
        layer.receive_timeout("jobs", Duration::from_millis(500))
    });
    assert_eq!(got.message_type(), Some("after"));
    layer.send(&reply, Message::new("pong")).unwrap();
    assert_eq!(
        layer.receive_timeout(&reply, BOUND).unwrap().message_type(),
        Some("pong")
    );
    layer.group_add("g", &reply).unwrap();
    assert_eq!(
        layer
            .group_send("g", Message::new("hello"))
            .unwrap()
            .delivered,
        1
    );
    assert_eq!(
        layer.receive_timeout(&reply, BOUND).unwrap().message_type(),
        Some("hello")
    );
}

#[test]
fn traffic_across_a_restart_loses_only_what_redis_held_and_never_duplicates() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let producer_layer = layer(&server);
    let consumer_layer = layer(&server);
    let stop = Arc::new(AtomicBool::new(false));
    let (accepted, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let slowest = Arc::new(AtomicU64::new(0));

    let producer = {
        let (stop, accepted, failed, slowest) = (
            stop.clone(),
            accepted.clone(),
            failed.clone(),
            slowest.clone(),
        );
        thread::spawn(move || {
            // Every message gets a fresh number. A send that failed may still have been
            // stored (the connection can drop after Redis ran it and before the reply came):
            // its number is "unsure", and it may or may not be received.
            let mut accepted_numbers = HashSet::new();
            let mut unsure = HashSet::new();
            let mut n = 0i64;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                match producer_layer.send("stream", Message::new("tick").with("n", n)) {
                    Ok(()) => {
                        accepted.fetch_add(1, Ordering::Relaxed);
                        accepted_numbers.insert(n);
                    }
                    Err(SendError::Backend { .. }) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        unsure.insert(n);
                        thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) => panic!("unexpected send error: {e:?}"),
                }
                n += 1;
                slowest.fetch_max(t.elapsed().as_millis() as u64, Ordering::Relaxed);
                thread::sleep(Duration::from_micros(200));
            }
            (accepted_numbers, unsure)
        })
    };
    let consumer = {
        let stop = stop.clone();
        thread::spawn(move || {
            let mut seen: HashMap<i64, usize> = HashMap::new();
            let mut order_ok = true;
            let mut last = -1;
            let mut errors = 0;
            loop {
                match consumer_layer.receive_timeout("stream", Duration::from_millis(300)) {
                    Ok(m) => {
                        let n = m.get("n").and_then(|v| v.as_i64()).unwrap();
                        if n <= last && order_ok {
                            eprintln!("out of order: {n} after {last}");
                        }
                        order_ok &= n > last;
                        last = n;
                        *seen.entry(n).or_default() += 1;
                    }
                    Err(ReceiveError::Timeout) if stop.load(Ordering::Relaxed) => break,
                    Err(ReceiveError::Timeout) => {}
                    Err(ReceiveError::Backend(_)) => {
                        errors += 1;
                        thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) => panic!("unexpected receive error: {e:?}"),
                }
            }
            (seen, order_ok, errors)
        })
    };

    thread::sleep(Duration::from_millis(700));
    let before_kill = accepted.load(Ordering::Relaxed);
    server.kill();
    thread::sleep(Duration::from_millis(700));
    server.restart();
    thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    let (accepted_numbers, unsure) = producer.join().unwrap();
    let (seen, order_ok, receive_errors) = consumer.join().unwrap();

    let accepted = accepted.load(Ordering::Relaxed);
    let duplicates = seen.values().filter(|&&c| c > 1).count();
    let received = accepted_numbers
        .iter()
        .filter(|n| seen.contains_key(n))
        .count() as u64;
    let lost = accepted - received;
    let unsure_received = unsure.iter().filter(|n| seen.contains_key(n)).count();
    assert!(
        seen.keys()
            .all(|n| accepted_numbers.contains(n) || unsure.contains(n)),
        "only messages that were sent are received"
    );
    println!(
        "fault test: {accepted} sends accepted ({before_kill} before the kill), {} refused while \
         redis was down, {received} received, {lost} lost with the restarted redis's memory, \
         {receive_errors} receive errors, slowest send {} ms; {unsure_received} of the refused \
         sends had been stored after all",
        failed.load(Ordering::Relaxed),
        slowest.load(Ordering::Relaxed)
    );
    assert_eq!(accepted_numbers.len() as u64, accepted);
    assert_eq!(duplicates, 0, "no message is delivered twice");
    assert!(order_ok, "messages arrive in the order they were sent");
    assert!(
        failed.load(Ordering::Relaxed) > 0,
        "sends failed while redis was down"
    );
    assert!(received > before_kill / 2, "traffic flowed before the kill");
    assert!(
        seen.keys()
            .any(|&n| n as u64 >= accepted.saturating_sub(50).min(before_kill + 1)),
        "traffic flowed again after the restart"
    );
    // Lost messages can only be those Redis held when it died, at most a capacity's worth.
    assert!(lost <= 10_000, "lost {lost}");
    assert!(
        slowest.load(Ordering::Relaxed) < BOUND.as_millis() as u64,
        "a send took {} ms",
        slowest.load(Ordering::Relaxed)
    );
}
