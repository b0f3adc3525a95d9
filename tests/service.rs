//! The services toolkit: request/response with [`Client`], dispatch by type with [`Worker`],
//! correlation IDs and flags through two services, failures (timeouts, late replies, full
//! channels, error replies, unknown types, panics), load, shutdown and async callers; on the
//! in-memory backend, and the core of it on Redis (feature `redis`).

#[cfg(feature = "redis")]
mod support;

use std::thread;
use std::time::{Duration, Instant};

use channel_layer::prelude::*;
use channel_layer::service::{
    Client, ClientMetrics, Context, ERROR_TYPE, HandlerError, RequestError, ShutdownReport,
    StartError, Worker, WorkerMetrics,
};
use serde::{Deserialize, Serialize};

const LONG: Duration = Duration::from_secs(10);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn memory() -> AnyLayer {
    AnyLayer::new(InMemoryLayer::default())
}

fn int(message: &Message, key: &str) -> Option<i64> {
    message.get(key).and_then(Value::as_i64)
}

fn text<'a>(message: &'a Message, key: &str) -> Option<&'a str> {
    message.get(key).and_then(Value::as_str)
}

/// Waits until `done` holds, for at most ten seconds.
fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < LONG, "timed out waiting for {what}");
        thread::sleep(ms(5));
    }
}

/// Answers `echo` with the request's `n` and `caller`, the correlation ID and flags it saw;
/// `slow` sleeps `sleep_ms` first; `fail` is a handler error; `boom` panics.
fn echo_worker(layer: &AnyLayer, channel: &str, threads: usize) -> Worker {
    fn echo(ctx: &Context, msg: Message) -> Result<Option<Message>, HandlerError> {
        let mut reply = Message::new("echo.reply")
            .with("seen_id", ctx.correlation_id())
            .with("seen_flag", ctx.flag_on("beta"));
        for key in ["n", "caller"] {
            if let Some(value) = msg.get(key) {
                reply.insert(key, value.clone());
            }
        }
        Ok(Some(reply))
    }
    Worker::builder(layer.clone())
        .channel(channel)
        .threads(threads)
        .handle("echo", echo)
        .handle("slow", |ctx, msg| {
            let sleep = msg.get("sleep_ms").and_then(Value::as_i64).unwrap_or(0);
            thread::sleep(ms(sleep.try_into().unwrap_or(0)));
            echo(ctx, msg)
        })
        .handle("fail", |_ctx, _msg| Err("out of tea".into()))
        .handle("boom", |_ctx, _msg| panic!("handler exploded"))
        .start()
        .expect("the worker starts")
}

// ===== Round trips and correlation =====

#[test]
fn request_and_reply() {
    let layer = memory();
    let worker = echo_worker(&layer, "echo.request", 1);
    let client = Client::new(layer.clone());

    let reply = client
        .request("echo.request", Message::new("echo").with("n", 7), LONG)
        .unwrap();
    assert_eq!(reply.message_type(), Some("echo.reply"));
    assert_eq!(int(&reply, "n"), Some(7));

    let m = client.metrics();
    assert_eq!(
        (m.requests, m.replies, m.timeouts, m.late_replies),
        (1, 1, 0, 0)
    );
    let report = worker.shutdown(LONG);
    assert!(report.is_complete(), "{report:?}");
    let w = report.metrics;
    assert_eq!((w.received, w.handled, w.replied), (1, 1, 1));
}

#[test]
fn a_correlation_id_is_set_when_missing_and_kept_when_present() {
    let layer = memory();
    let worker = echo_worker(&layer, "echo.request", 1);
    let client = Client::new(layer);

    let reply = client
        .request("echo.request", Message::new("echo"), LONG)
        .unwrap();
    let id = reply.correlation_id().expect("the reply carries the ID");
    assert_eq!(id.len(), 32);
    assert_eq!(
        text(&reply, "seen_id"),
        Some(id),
        "the service saw the same ID"
    );

    let request = Message::new("echo").with_correlation_id("order-1");
    let reply = client.request("echo.request", request, LONG).unwrap();
    assert_eq!(reply.correlation_id(), Some("order-1"));
    assert_eq!(text(&reply, "seen_id"), Some("order-1"));

    // A request built from an incoming message inherits its ID and flags.
    let incoming = Message::new("web.request")
        .with_correlation_id("edge-9")
        .with_flag("beta", true);
    let reply = client
        .request(
            "echo.request",
            Message::new("echo").caused_by(&incoming),
            LONG,
        )
        .unwrap();
    assert_eq!(text(&reply, "seen_id"), Some("edge-9"));
    assert_eq!(reply.get("seen_flag").and_then(Value::as_bool), Some(true));
    worker.shutdown(LONG);
}

/// Service A handles `a.work` by asking service B, and by sending an audit message and a group
/// message; all of them carry the caller's correlation ID and flags.
fn two_services(layer: &AnyLayer) -> (Worker, Worker) {
    let b = Worker::builder(layer.clone())
        .channel("b.request")
        .handle("b.lookup", |ctx, _msg| {
            Ok(Some(
                Message::new("b.found")
                    .with("b_saw_id", ctx.correlation_id())
                    .with("b_saw_beta", ctx.flag_on("beta"))
                    .with(
                        "b_saw_colour",
                        ctx.flag("colour").cloned().unwrap_or(Value::Null),
                    ),
            ))
        })
        .start()
        .unwrap();
    let a = Worker::builder(layer.clone())
        .channel("a.request")
        .handle("a.work", |ctx, _msg| {
            let found = ctx.request("b.request", Message::new("b.lookup"), LONG)?;
            ctx.send("audit", Message::new("audit.entry"))?;
            ctx.group_send("watchers", Message::new("work.done"))?;
            let mut reply = Message::new("a.done").with("a_saw_id", ctx.correlation_id());
            for key in ["b_saw_id", "b_saw_beta", "b_saw_colour"] {
                reply.insert(key, found.get(key).cloned().unwrap_or(Value::Null));
            }
            Ok(Some(reply))
        })
        .start()
        .unwrap();
    (a, b)
}

#[test]
fn the_correlation_id_and_flags_follow_a_request_through_two_services() {
    let layer = memory();
    let (a, b) = two_services(&layer);
    let watcher = layer.new_channel("watch").unwrap();
    layer.group_add("watchers", &watcher).unwrap();
    let client = Client::new(layer.clone());

    let request = Message::new("a.work")
        .with_correlation_id("trace-123")
        .with_flag("beta", true)
        .with_flag("colour", "teal");
    let reply = client.request("a.request", request, LONG).unwrap();
    assert_eq!(reply.correlation_id(), Some("trace-123"));
    assert_eq!(text(&reply, "a_saw_id"), Some("trace-123"));
    assert_eq!(text(&reply, "b_saw_id"), Some("trace-123"));
    assert_eq!(reply.get("b_saw_beta").and_then(Value::as_bool), Some(true));
    assert_eq!(text(&reply, "b_saw_colour"), Some("teal"));
    assert!(reply.flag_on("beta"), "the reply carries the flags back");

    let audit = layer.receive_timeout("audit", LONG).unwrap();
    assert_eq!(audit.correlation_id(), Some("trace-123"));
    assert!(audit.flag_on("beta"));
    let note = layer.receive_timeout(&watcher, LONG).unwrap();
    assert_eq!(note.correlation_id(), Some("trace-123"));
    assert_eq!(note.flag("colour").and_then(Value::as_str), Some("teal"));

    // Without an ID from the edge, A mints one and B still sees the same.
    let reply = client
        .request("a.request", Message::new("a.work"), LONG)
        .unwrap();
    let id = reply.correlation_id().unwrap();
    assert_eq!(text(&reply, "a_saw_id"), Some(id));
    assert_eq!(text(&reply, "b_saw_id"), Some(id));
    assert_eq!(
        reply.get("b_saw_beta").and_then(Value::as_bool),
        Some(false)
    );

    assert_eq!(a.client_metrics().replies, 2, "A's calls to B");
    a.shutdown(LONG);
    b.shutdown(LONG);
}

// ===== Typed =====

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Reserve {
    #[serde(rename = "type")]
    kind: String,
    sku: String,
    qty: u32,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Reserved {
    sku: String,
    left: i64,
}

#[test]
fn typed_requests_and_handlers() {
    let layer = memory();
    let worker = Worker::builder(layer.clone())
        .channel("inventory.request")
        .handle_typed("inventory.reserve", |_ctx, req: Reserve| {
            if req.sku != "tea" {
                return Err(HandlerError::new(format_args!("unknown sku {}", req.sku)));
            }
            Ok(Reserved {
                sku: req.sku,
                left: 10 - i64::from(req.qty),
            })
        })
        .start()
        .unwrap();
    let client = Client::new(layer);

    let tea = Reserve {
        kind: "inventory.reserve".into(),
        sku: "tea".into(),
        qty: 3,
    };
    let got: Reserved = client
        .request_typed("inventory.request", &tea, LONG)
        .unwrap();
    assert_eq!(
        got,
        Reserved {
            sku: "tea".into(),
            left: 7
        }
    );

    let cake = Reserve {
        kind: "inventory.reserve".into(),
        sku: "cake".into(),
        qty: 1,
    };
    match client.request_typed::<_, Reserved>("inventory.request", &cake, LONG) {
        Err(RequestError::Service { error, .. }) => assert_eq!(error, "unknown sku cake"),
        other => panic!("expected a service error, got {other:?}"),
    }

    // A request that does not decode into the handler's type is an error reply.
    let bad = Message::new("inventory.reserve").with("sku", 5);
    let err = client.request("inventory.request", bad, LONG).unwrap_err();
    assert!(
        matches!(&err, RequestError::Service { error, .. } if error.starts_with("bad request")),
        "{err:?}"
    );

    // A reply that does not decode into the caller's type hands the reply back.
    #[derive(Deserialize, Debug)]
    struct Wrong {
        #[allow(dead_code)]
        price: f64,
    }
    match client.request_typed::<_, Wrong>("inventory.request", &tea, LONG) {
        Err(RequestError::Decode { reply, .. }) => assert_eq!(text(&reply, "sku"), Some("tea")),
        other => panic!("expected a decode error, got {other:?}"),
    }

    // A request that is not map-shaped never leaves.
    let err = client
        .request_typed::<_, Reserved>("inventory.request", &42, LONG)
        .unwrap_err();
    assert!(matches!(err, RequestError::Encode(_)), "{err:?}");
    let w = worker.shutdown(LONG).metrics;
    assert_eq!((w.received, w.errors), (4, 2));
}

// ===== Failures =====

#[test]
fn a_timeout_leaves_a_late_reply_that_is_counted_and_never_delivered() {
    let layer = memory();
    let worker = echo_worker(&layer, "echo.request", 1);
    let client = Client::new(layer.clone());

    let slow = Message::new("slow").with("n", 1).with("sleep_ms", 300);
    let err = client.request("echo.request", slow, ms(50)).unwrap_err();
    match &err {
        RequestError::Timeout { channel, timeout } => {
            assert_eq!((channel.as_str(), *timeout), ("echo.request", ms(50)));
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(err.is_timeout() && !err.is_full());
    assert_eq!(
        err.to_string(),
        "no reply from \"echo.request\" within 50ms"
    );

    // The service still answers, to the abandoned reply channel.
    eventually("the late reply", || worker.metrics().replied == 1);

    // The next request gets its own reply, not the late one.
    let reply = client
        .request("echo.request", Message::new("echo").with("n", 2), LONG)
        .unwrap();
    assert_eq!(int(&reply, "n"), Some(2));

    let m = client.metrics();
    assert_eq!(m.timeouts, 1);
    assert_eq!(m.late_replies, 1);
    assert_eq!(m.replies, 1);
    assert_eq!(m.requests, m.replies + m.timeouts);
    assert_eq!(
        layer.metrics().queued_messages,
        0,
        "the late reply was taken away"
    );
    worker.shutdown(LONG);
}

#[test]
fn late_replies_are_counted_by_metrics_alone() {
    let layer = memory();
    let client = Client::new(layer.clone());
    let err = client
        .request("nobody.request", Message::new("ping"), ms(10))
        .unwrap_err();
    assert!(err.is_timeout());
    // Play the slow service by hand, twice over: both replies are late.
    let request = layer.receive("nobody.request").unwrap();
    let reply_to = request.reply_channel().unwrap().to_owned();
    for _ in 0..2 {
        let reply = Message::new("pong").caused_by(&request);
        layer.send(&reply_to, reply).unwrap();
    }
    assert_eq!(client.metrics().late_replies, 2);
    assert_eq!(
        client.metrics().late_replies,
        2,
        "the channel is no longer watched"
    );
}

#[test]
fn many_late_replies_are_all_counted() {
    let layer = memory();
    let client = Client::new(layer.clone());
    for _ in 0..50 {
        let err = client
            .request("nobody.request", Message::new("ping"), ms(1))
            .unwrap_err();
        assert!(err.is_timeout());
    }
    for _ in 0..50 {
        let request = layer.receive("nobody.request").unwrap();
        let reply = Message::new("pong").caused_by(&request);
        layer.send(request.reply_channel().unwrap(), reply).unwrap();
    }
    // A request sweeps some of them (at most 32); metrics sweeps the rest.
    thread::sleep(ms(150));
    let _ = client.request("nobody.request", Message::new("ping"), ms(1));
    let m = client.metrics();
    assert_eq!((m.timeouts, m.late_replies), (51, 50));
    assert_eq!(
        layer.metrics().queued_messages,
        1,
        "only the last request is left"
    );
}

#[test]
fn a_reply_with_another_correlation_id_is_dropped_and_counted() {
    let layer = memory();
    let client = Client::new(layer.clone());
    let responder = {
        let layer = layer.clone();
        thread::spawn(move || {
            let request = layer.receive_timeout("manual.request", LONG).unwrap();
            let reply_to = request.reply_channel().unwrap();
            let stray = Message::new("reply").with_correlation_id("someone-else");
            layer.send(reply_to, stray).unwrap();
            let right = Message::new("reply").with("ok", true).caused_by(&request);
            layer.send(reply_to, right).unwrap();
        })
    };
    let reply = client
        .request("manual.request", Message::new("ask"), LONG)
        .unwrap();
    assert_eq!(reply.get("ok").and_then(Value::as_bool), Some(true));
    responder.join().unwrap();
    let m = client.metrics();
    assert_eq!((m.mismatched, m.replies), (1, 1));
}

#[test]
fn a_service_error_reply_becomes_a_service_error() {
    let layer = memory();
    let worker = echo_worker(&layer, "echo.request", 1);
    let client = Client::new(layer);
    let request = Message::new("fail").with_correlation_id("c-1");
    let err = client.request("echo.request", request, LONG).unwrap_err();
    match &err {
        RequestError::Service { error, reply } => {
            assert_eq!(error, "out of tea");
            assert_eq!(reply.message_type(), Some(ERROR_TYPE));
            assert_eq!(reply.correlation_id(), Some("c-1"));
            assert_eq!(text(reply, "request_type"), Some("fail"));
        }
        other => panic!("expected a service error, got {other:?}"),
    }
    assert_eq!(err.to_string(), "service error: out of tea");
    assert_eq!(client.metrics().service_errors, 1);
    assert_eq!(worker.shutdown(LONG).metrics.errors, 1);
}

#[test]
fn a_full_request_channel_is_reported_and_hands_the_request_back() {
    let config = LayerConfig::builder().capacity(1).build().unwrap();
    let layer = AnyLayer::new(InMemoryLayer::new(config));
    layer.send("busy.request", Message::new("filler")).unwrap();
    let client = Client::new(layer);

    let request = Message::new("work").with("n", 5);
    let err = client.request("busy.request", request, LONG).unwrap_err();
    assert!(err.is_full());
    assert_eq!(err.to_string(), "request channel \"busy.request\" is full");
    match err {
        RequestError::Full { channel, message } => {
            assert_eq!(channel, "busy.request");
            assert_eq!(int(&message, "n"), Some(5));
            assert!(message.correlation_id().is_some());
        }
        other => panic!("expected Full, got {other:?}"),
    }
    let m = client.metrics();
    assert_eq!((m.requests, m.full, m.late_replies), (1, 1, 0));
}

#[test]
fn unknown_and_missing_types_are_counted_and_answered() {
    let layer = memory();
    let worker = echo_worker(&layer, "echo.request", 1);
    let client = Client::new(layer.clone());

    let err = client
        .request("echo.request", Message::new("nonsense"), LONG)
        .unwrap_err();
    assert!(
        matches!(&err, RequestError::Service { error, .. } if error.contains("nonsense")),
        "{err:?}"
    );

    let untyped = Message::default().with("n", 1);
    let err = client.request("echo.request", untyped, LONG).unwrap_err();
    assert!(
        matches!(&err, RequestError::Service { error, .. } if error == "message has no type"),
        "{err:?}"
    );

    // One-way messages are counted too, with nobody to answer.
    layer
        .send("echo.request", Message::new("nonsense"))
        .unwrap();
    layer
        .send("echo.request", Message::default().with("n", 2))
        .unwrap();
    eventually("the one-way messages", || worker.metrics().handled == 4);

    let w = worker.shutdown(LONG).metrics;
    assert_eq!((w.unknown_type, w.no_type), (2, 2));
    assert_eq!((w.received, w.handled, w.replied), (4, 4, 2));
}

#[test]
fn a_panicking_handler_does_not_take_the_worker_down() {
    let layer = memory();
    let worker = echo_worker(&layer, "echo.request", 1);
    let client = Client::new(layer);

    let err = client
        .request("echo.request", Message::new("boom"), LONG)
        .unwrap_err();
    assert!(
        matches!(&err, RequestError::Service { error, .. } if error.contains("handler exploded")),
        "{err:?}"
    );
    for n in 0..3 {
        let reply = client
            .request("echo.request", Message::new("echo").with("n", n), LONG)
            .unwrap();
        assert_eq!(int(&reply, "n"), Some(n));
    }
    let w = worker.shutdown(LONG).metrics;
    assert_eq!((w.panics, w.handled, w.replied), (1, 4, 4));
}

#[test]
fn start_rejects_bad_configurations() {
    let layer = memory();
    let err = Worker::builder(layer.clone()).start().unwrap_err();
    assert!(matches!(err, StartError::NoChannels));
    let err = Worker::builder(layer.clone())
        .channel("a")
        .threads(0)
        .start()
        .unwrap_err();
    assert!(matches!(err, StartError::NoThreads));
    let err = Worker::builder(layer)
        .channel("no way")
        .start()
        .unwrap_err();
    assert!(matches!(err, StartError::InvalidName(_)));
}

// ===== Load =====

fn concurrent_callers(layer: &AnyLayer, callers: usize, each: usize) {
    let worker = echo_worker(layer, "load.request", 4);
    let client = Client::new(layer.clone());
    let handles: Vec<_> = (0..callers)
        .map(|caller| {
            let client = client.clone();
            thread::spawn(move || {
                for n in 0..each {
                    let id = format!("c{caller}-{n}");
                    let request = Message::new("echo")
                        .with("caller", caller as i64)
                        .with("n", n as i64)
                        .with_correlation_id(id.as_str());
                    let reply = client.request("load.request", request, LONG).unwrap();
                    assert_eq!(int(&reply, "caller"), Some(caller as i64));
                    assert_eq!(int(&reply, "n"), Some(n as i64));
                    assert_eq!(reply.correlation_id(), Some(id.as_str()));
                }
            })
        })
        .collect();
    for handle in handles {
        handle.join().expect("a caller failed");
    }
    let total = (callers * each) as u64;
    let m = client.metrics();
    assert_eq!((m.requests, m.replies), (total, total));
    assert_eq!((m.timeouts, m.mismatched, m.late_replies), (0, 0, 0));
    let report = worker.shutdown(LONG);
    assert!(report.is_complete());
    let w = report.metrics;
    assert_eq!((w.received, w.handled, w.replied), (total, total, total));
}

#[test]
fn concurrent_callers_each_get_their_own_replies() {
    concurrent_callers(&memory(), 8, 200);
}

// ===== Shutdown =====

#[test]
fn shutdown_handles_every_message_already_taken() {
    let layer = memory();
    let worker = echo_worker(&layer, "slow.request", 2);
    let client = Client::new(layer.clone());
    let callers: Vec<_> = (0..6)
        .map(|n| {
            let client = client.clone();
            thread::spawn(move || {
                let request = Message::new("slow").with("n", n).with("sleep_ms", 200);
                client.request("slow.request", request, ms(1_500))
            })
        })
        .collect();
    eventually("both threads busy", || worker.metrics().received >= 2);

    let start = Instant::now();
    let report: ShutdownReport = worker.shutdown(ms(2_000));
    assert!(start.elapsed() < ms(2_000), "{report:?}");
    assert!(report.is_complete(), "{report:?}");
    assert_eq!((report.threads, report.finished), (2, 2));
    let w: WorkerMetrics = report.metrics;
    assert!(w.received >= 2);
    assert_eq!(w.handled, w.received, "nothing taken was dropped");
    assert_eq!(w.replied, w.received);

    let results: Vec<_> = callers.into_iter().map(|h| h.join().unwrap()).collect();
    let answered = results.iter().filter(|r| r.is_ok()).count() as u64;
    assert_eq!(answered, w.received, "every taken request was answered");
    assert!(
        results
            .iter()
            .all(|r| r.as_ref().is_ok() || r.as_ref().is_err_and(RequestError::is_timeout)),
        "{results:?}"
    );
    // The requests nobody took are still queued for the next worker.
    assert_eq!(layer.metrics().queued_messages, 6 - w.received);
}

#[test]
fn shutdown_returns_at_its_deadline_and_the_message_in_hand_is_still_handled() {
    let layer = memory();
    let worker = echo_worker(&layer, "slow.request", 1);
    let client = Client::new(layer);
    let caller = {
        let client = client.clone();
        thread::spawn(move || {
            let request = Message::new("slow").with("n", 1).with("sleep_ms", 600);
            client.request("slow.request", request, LONG)
        })
    };
    eventually("the thread busy", || worker.metrics().received == 1);

    let start = Instant::now();
    let report = worker.shutdown(ms(100));
    let took = start.elapsed();
    assert!(took >= ms(100) && took < ms(500), "took {took:?}");
    assert!(!report.is_complete());
    assert_eq!((report.threads, report.finished), (1, 0));

    let reply = caller
        .join()
        .unwrap()
        .expect("the message in hand is answered");
    assert_eq!(int(&reply, "n"), Some(1));
}

#[test]
fn dropping_a_worker_stops_it_without_waiting() {
    let layer = memory();
    let worker = echo_worker(&layer, "echo.request", 2);
    let client = Client::new(layer.clone());
    client
        .request("echo.request", Message::new("echo"), LONG)
        .unwrap();

    let start = Instant::now();
    drop(worker);
    assert!(start.elapsed() < ms(50));
    thread::sleep(ms(200)); // longer than the poll interval: the threads are gone
    let err = client
        .request("echo.request", Message::new("echo"), ms(100))
        .unwrap_err();
    assert!(err.is_timeout());
    assert_eq!(layer.metrics().queued_messages, 1, "nobody took it");
}

// ===== Async =====

#[test]
fn request_async_on_futures_executor() {
    let layer = memory();
    let worker = echo_worker(&layer, "echo.request", 2);
    let client = Client::new(layer);
    futures::executor::block_on(async {
        for n in 0..20 {
            let reply = client
                .request_async("echo.request", Message::new("echo").with("n", n), LONG)
                .await
                .unwrap();
            assert_eq!(int(&reply, "n"), Some(n));
        }
        let err = client
            .request_async("echo.request", Message::new("fail"), LONG)
            .await
            .unwrap_err();
        assert!(matches!(err, RequestError::Service { .. }));
        let tea = Reserve {
            kind: "echo".into(),
            sku: "tea".into(),
            qty: 1,
        };
        #[derive(Deserialize)]
        struct Seen {
            seen_id: String,
        }
        let seen: Seen = client
            .request_typed_async("echo.request", &tea, LONG)
            .await
            .unwrap();
        assert_eq!(seen.seen_id.len(), 32);
    });
    assert_eq!(client.metrics().replies, 22);
    worker.shutdown(LONG);
}

#[test]
fn request_async_on_tokio() {
    let layer = memory();
    let worker = echo_worker(&layer, "echo.request", 4);
    let client = Client::new(layer);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .unwrap();
    runtime.block_on(async {
        let tasks: Vec<_> = (0..16i64)
            .map(|task| {
                let client = client.clone();
                tokio::spawn(async move {
                    for n in 0..25i64 {
                        let request = Message::new("echo").with("caller", task).with("n", n);
                        let reply = client
                            .request_async("echo.request", request, LONG)
                            .await
                            .unwrap();
                        assert_eq!(
                            (int(&reply, "caller"), int(&reply, "n")),
                            (Some(task), Some(n))
                        );
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }

        // Dropping the future abandons the request; its reply is counted as late.
        let slow = Message::new("slow").with("sleep_ms", 200);
        let dropped =
            tokio::time::timeout(ms(30), client.request_async("echo.request", slow, LONG)).await;
        assert!(dropped.is_err(), "the request was cancelled");
    });
    eventually("the abandoned reply", || worker.metrics().replied == 401);
    let m = client.metrics();
    assert_eq!((m.replies, m.cancelled, m.late_replies), (400, 1, 1));
    assert_eq!(m.requests, m.replies + m.cancelled);
    worker.shutdown(LONG);
}

// ===== Auto traits =====

#[test]
fn handles_errors_and_futures_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>(_: &T) {}
    fn error<T: std::error::Error + Send + Sync + 'static>() {}
    send_sync::<Client>();
    send_sync::<Worker>();
    send_sync::<Context>();
    send_sync::<ClientMetrics>();
    error::<RequestError>();
    error::<HandlerError>();
    error::<StartError>();
    let client = Client::new(memory());
    send(&client.request_async("a", Message::new("x"), ms(1)));
    send(&client.request_typed_async::<_, Reserved>(
        "a",
        &Reserved {
            sku: "x".into(),
            left: 0,
        },
        ms(1),
    ));
}

// ===== Redis =====

#[cfg(feature = "redis")]
mod redis {
    use super::*;
    use crate::support::redis_server::RedisServer;
    use channel_layer::redis::RedisLayer;

    fn redis_layer(server: &RedisServer) -> AnyLayer {
        AnyLayer::new(RedisLayer::from_url(&server.url()).expect("a valid URL"))
    }

    #[test]
    fn request_and_reply_over_redis() {
        let Some(server) = RedisServer::start() else {
            return;
        };
        let service_side = redis_layer(&server);
        let client_side = redis_layer(&server);
        let worker = echo_worker(&service_side, "echo.request", 1);
        let client = Client::new(client_side);
        let reply = client
            .request(
                "echo.request",
                Message::new("echo").with("n", 3).with_flag("beta", true),
                LONG,
            )
            .unwrap();
        assert_eq!(int(&reply, "n"), Some(3));
        assert_eq!(reply.get("seen_flag").and_then(Value::as_bool), Some(true));
        let reply = futures::executor::block_on(client.request_async(
            "echo.request",
            Message::new("echo").with("n", 4),
            LONG,
        ))
        .unwrap();
        assert_eq!(int(&reply, "n"), Some(4));
        assert!(worker.shutdown(LONG).is_complete());
        drop(server);
    }

    #[test]
    fn correlation_follows_through_two_services_over_redis() {
        let Some(server) = RedisServer::start() else {
            return;
        };
        let (a, b) = two_services(&redis_layer(&server));
        let client = Client::new(redis_layer(&server));
        let request = Message::new("a.work")
            .with_correlation_id("trace-redis")
            .with_flag("beta", true);
        let reply = client.request("a.request", request, LONG).unwrap();
        assert_eq!(reply.correlation_id(), Some("trace-redis"));
        assert_eq!(text(&reply, "b_saw_id"), Some("trace-redis"));
        assert_eq!(reply.get("b_saw_beta").and_then(Value::as_bool), Some(true));
        a.shutdown(LONG);
        b.shutdown(LONG);
        drop(server);
    }

    #[test]
    fn concurrent_callers_over_redis() {
        let Some(server) = RedisServer::start() else {
            return;
        };
        concurrent_callers(&redis_layer(&server), 8, 50);
        drop(server);
    }
}
