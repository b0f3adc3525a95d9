//! The NATS backend where production meets it first: receives cancelled by the thousand, a
//! group send on a frozen server, servers that never answer a connect, and wake-ups that lie.
//! Each test runs its own `nats-server` on a free port.

mod support;

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use channel_layer::nats::{NatsConfig, NatsLayer};
use channel_layer::{
    BackendErrorKind, BuildError, ChannelLayer, ChannelLayerExt, LayerConfig, Message,
};
use support::fresh_prefix;
use support::nats_server::NatsServer;

fn layer_on(server: &NatsServer, config: LayerConfig, timeout: Duration) -> NatsLayer {
    let mut nats = NatsConfig::from_url(&server.url()).unwrap();
    nats.prefix = fresh_prefix("e");
    nats.layer = config;
    nats.operation_timeout = timeout;
    NatsLayer::new(nats).unwrap()
}

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// The server's count of live subscriptions (its `/varz`).
fn server_subscriptions(server: &NatsServer) -> u64 {
    let varz = server.monitor("/varz").expect("/varz");
    let varz: serde_json::Value = serde_json::from_str(&varz).expect("json");
    varz["subscriptions"].as_u64().expect("subscriptions")
}

fn tokio() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn a_storm_of_cancelled_receives_leaves_nothing_behind_and_loses_nothing() {
    const SENT: i64 = 3000;
    let Some(server) = NatsServer::start() else {
        return;
    };
    let config = LayerConfig::builder().capacity(10_000).build().unwrap();
    let layer = layer_on(&server, config, Duration::from_secs(5));
    let before_subs = server_subscriptions(&server);
    let before_rss = rss_mib();
    let received = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let rt = tokio();
    let started = Instant::now();
    rt.block_on(async {
        let mut receivers = Vec::new();
        for r in 0..4u64 {
            let (layer, received, stop) = (layer.clone(), received.clone(), stop.clone());
            receivers.push(tokio::spawn(async move {
                let mut mine = Vec::new();
                let mut k = r;
                while !stop.load(Ordering::Acquire) {
                    // 0 to 1.5 ms, as a websocket handler's select! gives up on a receive.
                    k = k
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let wait = Duration::from_micros((k >> 33) % 1500);
                    if let Ok(Ok(m)) =
                        tokio::time::timeout(wait, layer.receive_async("storm")).await
                    {
                        mine.push(m.get("n").and_then(|v| v.as_i64()).unwrap());
                    }
                }
                received.lock().unwrap().push(mine);
            }));
        }
        for n in 0..SENT {
            layer
                .send_async("storm", Message::new("m").with("n", n))
                .await
                .unwrap();
        }
        // Every message reaches a receiver while the storm goes on.
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            let queued = layer.inspect_async(10).await.unwrap();
            let on_server: u64 = queued.channels.iter().map(|c| c.queued).sum();
            if (on_server == 0 && layer.metrics().queued_messages == 0) || Instant::now() > until {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.store(true, Ordering::Release);
        for r in receivers {
            r.await.unwrap();
        }
    });
    // What was taken for a receive that was cancelled meanwhile is the next receive's.
    let mut rest = Vec::new();
    while let Ok(m) = layer.try_receive("storm") {
        rest.push(m.get("n").and_then(|v| v.as_i64()).unwrap());
    }
    let per_receiver = received.lock().unwrap().clone();
    for mine in &per_receiver {
        assert!(
            mine.windows(2).all(|w| w[0] < w[1]),
            "order kept per receiver"
        );
    }
    let all: Vec<i64> = per_receiver
        .iter()
        .flatten()
        .chain(&rest)
        .copied()
        .collect();
    let distinct: BTreeSet<i64> = all.iter().copied().collect();
    assert_eq!(all.len(), distinct.len(), "no message twice");
    let m = layer.metrics();
    assert_eq!(
        distinct.len() as u64 + m.lost + m.expired + m.overflowed,
        SENT as u64,
        "every message received or counted: {m:?}"
    );
    assert_eq!(m.lost + m.overflowed, 0, "{m:?}");
    // Nothing left behind: the watch of the channel ends after its last receiver, with its
    // one subscription.
    std::thread::sleep(Duration::from_millis(700));
    let after_subs = server_subscriptions(&server);
    assert!(
        after_subs <= before_subs + 2,
        "subscriptions before {before_subs}, after {after_subs}"
    );
    let grown = rss_mib() - before_rss;
    assert!(grown < 64.0, "RSS grew {grown:.0} MiB");
    println!(
        "storm: {} received in {:?}, RSS +{grown:.1} MiB, subscriptions {before_subs} -> {after_subs}",
        distinct.len(),
        started.elapsed()
    );
}

#[test]
fn a_group_send_on_a_frozen_server_returns_within_its_deadline() {
    const MEMBERS: usize = 2000;
    let Some(server) = NatsServer::start() else {
        return;
    };
    let timeout = Duration::from_secs(1);
    let layer = layer_on(&server, LayerConfig::default(), timeout);
    let rt = tokio();
    rt.block_on(async {
        let mut adds = futures::stream::FuturesUnordered::new();
        for i in 0..MEMBERS {
            let layer = layer.clone();
            adds.push(async move { layer.group_add_async("big", &format!("m.{i}")).await });
            if adds.len() >= 64 {
                futures::StreamExt::next(&mut adds).await.unwrap().unwrap();
            }
        }
        while let Some(added) = futures::StreamExt::next(&mut adds).await {
            added.unwrap();
        }
    });
    let whole = layer.group_send("big", Message::new("warm")).unwrap();
    assert_eq!(whole.delivered, MEMBERS);
    // The server freezes at some point during the send (after the member listing, in most
    // tries): the call returns within its timeout plus a round trip wherever that lands.
    for delay_ms in [2u64, 5, 10, 20, 40] {
        let sender = {
            let layer = layer.clone();
            std::thread::spawn(move || {
                let started = Instant::now();
                let outcome = layer.group_send("big", Message::new("frozen"));
                (started.elapsed(), outcome)
            })
        };
        std::thread::sleep(Duration::from_millis(delay_ms));
        server.freeze();
        let until = Instant::now() + Duration::from_secs(10);
        while !sender.is_finished() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        server.thaw();
        let (took, outcome) = sender.join().unwrap();
        assert!(
            took < timeout + Duration::from_millis(500),
            "frozen {delay_ms} ms in: group_send took {took:?} ({outcome:?})"
        );
        if let Ok(report) = outcome {
            let counted = report.delivered + report.skipped_full + report.skipped_failed;
            assert_eq!(counted, MEMBERS, "{report:?}");
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn a_server_that_accepts_and_never_answers_fails_the_build_within_the_connect_timeout() {
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    // Accept and hold every connection, never writing a byte.
    let held = Arc::new(Mutex::new(Vec::new()));
    {
        let held = held.clone();
        std::thread::spawn(move || {
            for stream in silent.incoming().flatten() {
                held.lock().unwrap().push(stream);
            }
        });
    }
    let started = Instant::now();
    let err =
        NatsLayer::from_url(&format!("nats://127.0.0.1:{port}?connect_timeout=1")).unwrap_err();
    let took = started.elapsed();
    assert!(took < Duration::from_millis(1500), "took {took:?}");
    match err {
        BuildError::Backend(e) => assert_eq!(e.kind(), BackendErrorKind::Timeout, "{e}"),
        other => panic!("expected a backend error, got {other}"),
    }
}

#[test]
fn twenty_refused_hosts_fail_the_build_within_the_connect_timeout() {
    let hosts: Vec<String> = (0..20)
        .map(|_| format!("127.0.0.1:{}", support::redis_server::free_port()))
        .collect();
    let started = Instant::now();
    let err =
        NatsLayer::from_url(&format!("nats://{}?connect_timeout=1", hosts.join(","))).unwrap_err();
    let took = started.elapsed();
    assert!(took < Duration::from_millis(1500), "took {took:?}: {err}");
    assert!(matches!(err, BuildError::Backend(_)), "{err}");
}

#[test]
fn a_forged_wake_up_takes_nothing_and_delivers_nothing() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let layer = layer_on(&server, LayerConfig::default(), Duration::from_secs(2));
    let prefix = layer.config().prefix.clone();
    let capacity = layer.config().layer.capacity;
    // A message on another channel, whose sequence number the forger knows.
    layer.send("victim", Message::new("real")).unwrap();
    let victim_seq = 1u64;
    let waiting = {
        let layer = layer.clone();
        std::thread::spawn(move || layer.receive_timeout("target", Duration::from_secs(2)))
    };
    std::thread::sleep(Duration::from_millis(300));
    let rt = tokio();
    rt.block_on(async {
        let client = async_nats::connect(server.url()).await.unwrap();
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Stream", format!("{prefix}_ch_{capacity}").as_str());
        headers.insert(
            "Nats-Subject",
            format!("{prefix}.ch.{capacity}.target").as_str(),
        );
        headers.insert("Nats-Sequence", victim_seq.to_string().as_str());
        headers.insert("Nats-Last-Sequence", "0");
        // A msgpack map {"type": "forged"}.
        let mut body = vec![0x81, 0xa4];
        body.extend_from_slice(b"type");
        body.push(0xa6);
        body.extend_from_slice(b"forged");
        client
            .publish_with_headers(
                format!("{prefix}.wake.{capacity}.target"),
                headers,
                body.into(),
            )
            .await
            .unwrap();
        client.flush().await.unwrap();
    });
    let outcome = waiting.join().unwrap();
    assert!(
        outcome.as_ref().is_err_and(|e| e.is_timeout()),
        "the forged body was delivered: {outcome:?}"
    );
    let real = layer.try_receive("victim").unwrap();
    assert_eq!(
        real.message_type(),
        Some("real"),
        "the victim's message is still there"
    );
    let m = layer.metrics();
    assert_eq!(m.lost + m.undecodable, 0, "{m:?}");
}

#[test]
fn a_send_while_its_stream_is_briefly_missing_is_stored_once_it_is_back() {
    // In a cluster a stream's interest reaches the other servers a moment after it is created
    // or moves: a publish in between is answered "no responders". Nothing is stored then, so
    // the send tries again within its operation timeout instead of failing.
    let Some(server) = NatsServer::start() else {
        return;
    };
    let layer = layer_on(&server, LayerConfig::default(), Duration::from_secs(3));
    let prefix = layer.config().prefix.clone();
    let capacity = layer.config().layer.capacity;
    layer.send("gap", Message::new("before")).unwrap();
    assert_eq!(
        layer.try_receive("gap").unwrap().message_type(),
        Some("before")
    );
    let rt = tokio();
    let name = format!("{prefix}_ch_{capacity}");
    let js = rt.block_on(async {
        async_nats::jetstream::new(async_nats::connect(server.url()).await.unwrap())
    });
    let config = rt.block_on(async {
        let mut stream = js.get_stream(&name).await.unwrap();
        let config = stream.info().await.unwrap().config.clone();
        js.delete_stream(&name).await.unwrap();
        config
    });
    let restore = rt.spawn({
        let js = js.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(400)).await;
            js.create_stream(config).await.unwrap();
        }
    });
    let started = Instant::now();
    let sent = layer.send("gap", Message::new("during"));
    let took = started.elapsed();
    rt.block_on(restore).unwrap();
    assert!(
        sent.is_ok(),
        "the send failed while the stream was missing: {sent:?}"
    );
    assert!(took < Duration::from_secs(3), "the send took {took:?}");
    let got = layer
        .receive_timeout("gap", Duration::from_secs(2))
        .unwrap();
    assert_eq!(got.message_type(), Some("during"));
}

/// How many JetStream API requests (stream purges among them) the server has answered.
fn api_requests(server: &NatsServer) -> u64 {
    let jsz = server.monitor("/jsz").expect("/jsz");
    let jsz: serde_json::Value = serde_json::from_str(&jsz).expect("json");
    jsz["api"]["total"].as_u64().expect("api.total")
}

#[test]
fn a_backlog_on_a_process_specific_channel_is_taken_in_batches() {
    // A reply channel that piles up (a client collecting many answers) is drained with a purge
    // per batch, not one per message: only its own process receives it.
    const SENT: usize = 500;
    let Some(server) = NatsServer::start() else {
        return;
    };
    let config = LayerConfig::builder().capacity(1000).build().unwrap();
    let layer = layer_on(&server, config, Duration::from_secs(5));
    let reply = layer.new_channel("answers").unwrap();
    for n in 0..SENT {
        layer
            .send(&reply, Message::new("answer").with("n", n as i64))
            .unwrap();
    }
    let before = api_requests(&server);
    for n in 0..SENT {
        let got = layer
            .receive_timeout(&reply, Duration::from_secs(5))
            .unwrap();
        assert_eq!(
            got.get("n").and_then(|v| v.as_i64()),
            Some(n as i64),
            "out of order"
        );
    }
    let requests = api_requests(&server) - before;
    // 2.11 and later read a batch with one request; 2.9 one message per request, a few a take.
    let varz: serde_json::Value =
        serde_json::from_str(&server.monitor("/varz").expect("/varz")).expect("json");
    let version = varz["version"].as_str().unwrap_or("0.0.0").to_owned();
    let (major, minor) = version
        .split_once('.')
        .map(|(a, b)| {
            let minor = b.split('.').next().unwrap_or("0");
            (
                a.parse::<u32>().unwrap_or(0),
                minor.parse::<u32>().unwrap_or(0),
            )
        })
        .unwrap_or((0, 0));
    let most = if (major, minor) >= (2, 11) {
        50
    } else {
        SENT as u64 / 2
    };
    assert!(
        requests <= most,
        "{SENT} messages took {requests} JetStream API requests on {version} (at most {most})"
    );
}

#[test]
fn receivers_waiting_on_many_reply_channels_share_one_subscription() {
    // A service client with 200 requests out waits on 200 fresh reply channels: one wake-up
    // subscription serves them all (their names share the process's prefix), not one each.
    const WAITING: usize = 200;
    let Some(server) = NatsServer::start() else {
        return;
    };
    let layer = layer_on(&server, LayerConfig::default(), Duration::from_secs(5));
    let before = server_subscriptions(&server);
    let replies: Vec<String> = (0..WAITING)
        .map(|_| layer.new_channel("reply").unwrap())
        .collect();
    let rt = tokio();
    let waiting: Vec<_> = replies
        .iter()
        .map(|reply| {
            let (layer, reply) = (layer.clone(), reply.clone());
            rt.spawn(async move {
                layer
                    .receive_timeout_async(&reply, Duration::from_secs(20))
                    .await
            })
        })
        .collect();
    // Every receiver is waiting once its take has found nothing; the subscriptions then stand.
    std::thread::sleep(Duration::from_millis(1500));
    let during = server_subscriptions(&server) - before;
    for (n, reply) in replies.iter().enumerate() {
        layer
            .send(reply, Message::new("answer").with("n", n as i64))
            .unwrap();
    }
    for (n, receiving) in waiting.into_iter().enumerate() {
        let got = rt.block_on(receiving).unwrap().unwrap();
        assert_eq!(got.get("n").and_then(|v| v.as_i64()), Some(n as i64));
    }
    assert!(
        during <= 3,
        "{WAITING} receivers on reply channels held {during} subscriptions on the server"
    );
}

#[test]
fn a_receiver_back_on_its_channel_waits_for_a_wake_up_without_reading() {
    // A service receiving one request at a time: each message costs its take (one purge),
    // not a read each time the receiver comes back as well.
    const MESSAGES: u64 = 200;
    let Some(server) = NatsServer::start() else {
        return;
    };
    let layer = layer_on(&server, LayerConfig::default(), Duration::from_secs(5));
    let service = {
        let layer = layer.clone();
        std::thread::spawn(move || {
            for n in 0..MESSAGES {
                let got = layer
                    .receive_timeout("svc.requests", Duration::from_secs(10))
                    .unwrap();
                assert_eq!(got.get("n").and_then(|v| v.as_i64()), Some(n as i64));
                layer.send("svc.done", Message::new("done")).unwrap();
            }
        })
    };
    // The service waits first, and is caught up.
    std::thread::sleep(Duration::from_millis(500));
    let before = api_requests(&server);
    for n in 0..MESSAGES {
        layer
            .send("svc.requests", Message::new("request").with("n", n as i64))
            .unwrap();
        layer
            .receive_timeout("svc.done", Duration::from_secs(10))
            .unwrap();
    }
    service.join().unwrap();
    // Per request: the two takes (a purge each), and some slack for a wake-up raced.
    let requests = api_requests(&server) - before;
    assert!(
        requests <= MESSAGES * 2 + MESSAGES / 5,
        "{MESSAGES} requests took {requests} JetStream API requests ({:.1} each)",
        requests as f64 / MESSAGES as f64
    );
}

#[test]
fn a_receiver_behind_a_backlog_catches_up_with_the_wake_ups() {
    // 200 messages wait before anyone receives; then a prefetching receiver drains while a
    // producer keeps 256 sends in flight. Once the receiver has read its way through what was
    // stored before it watched, the wake-ups' copies stand for reads: it does not read every
    // message that follows (on servers before 2.11, one read a message).
    const BACKLOG: i64 = 200;
    const MORE: i64 = 3000;
    let Some(server) = NatsServer::start() else {
        return;
    };
    let config = LayerConfig::builder().capacity(100_000).build().unwrap();
    let mut nats = NatsConfig::from_url(&server.url()).unwrap();
    nats.prefix = fresh_prefix("e");
    nats.layer = config;
    nats.receive_prefetch = 256;
    let layer = NatsLayer::new(nats).unwrap();
    for n in 0..BACKLOG {
        layer.send("busy", Message::new("m").with("n", n)).unwrap();
    }
    let before = api_requests(&server);
    let receiver = {
        let layer = layer.clone();
        std::thread::spawn(move || {
            let mut seen = BTreeSet::new();
            for _ in 0..BACKLOG + MORE {
                let got = layer
                    .receive_timeout("busy", Duration::from_secs(20))
                    .unwrap();
                seen.insert(got.get("n").and_then(|v| v.as_i64()).unwrap());
            }
            assert_eq!(seen.len() as i64, BACKLOG + MORE, "duplicates");
        })
    };
    tokio().block_on(async {
        use futures::StreamExt as _;
        let mut in_flight = futures::stream::FuturesUnordered::new();
        let mut n = BACKLOG;
        while n < BACKLOG + MORE || !in_flight.is_empty() {
            while n < BACKLOG + MORE && in_flight.len() < 256 {
                let layer = layer.clone();
                in_flight.push(async move {
                    layer
                        .send_async("busy", Message::new("m").with("n", n))
                        .await
                });
                n += 1;
            }
            if let Some(sent) = in_flight.next().await {
                sent.unwrap();
            }
        }
    });
    receiver.join().unwrap();
    // Each publish is no API request; reads and purges are.
    let requests = api_requests(&server) - before;
    eprintln!(
        "{} messages received with {requests} API requests",
        BACKLOG + MORE
    );
    assert!(
        requests < (BACKLOG + MORE) as u64 / 8,
        "{} messages took {requests} JetStream API requests to receive",
        BACKLOG + MORE
    );
}
