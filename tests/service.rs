//! The services toolkit: request/response with [`Client`], dispatch by type with [`Worker`],
//! correlation IDs and flags through two services, failures (timeouts, late replies, full
//! channels, error replies, unknown types, panics), load, shutdown and async callers.
//!
//! Every behaviour is written once, as a function of a `Backend` that opens a fresh, empty
//! store, and runs as a test on each backend: `memory::*` on the in-memory backend and
//! `redis::*` on Redis (feature `redis`, a private `redis-server` per test, skipped with a
//! message when redis-server is missing unless `CHANNEL_LAYER_REQUIRE_SERVICES=1`). On Redis
//! the services and their callers use separate layers on one server, as separate processes
//! would; in memory they share one layer.

#[cfg(any(feature = "redis", feature = "nats"))]
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

// ===== Backends =====

/// A backend the behaviours run on.
trait Backend {
    /// A fresh, empty store with `config`, which lives as long as the returned value.
    fn open(&self, config: LayerConfig) -> Box<dyn Store>;

    /// A fresh, empty store with the default configuration.
    fn open_default(&self) -> Box<dyn Store> {
        self.open(LayerConfig::default())
    }
}

/// One test's store and the layers on it.
trait Store {
    /// The store's first layer.
    fn layer(&self) -> AnyLayer;

    /// Another layer on the same store and with the same configuration: in memory the same
    /// layer, on Redis a new connection to the same server and prefix (another process).
    fn peer(&self) -> AnyLayer;

    /// Messages waiting anywhere in the store: queued in the backend, or taken from it and
    /// buffered by one of its layers.
    fn waiting(&self) -> u64;
}

/// The in-memory backend: a store is one layer.
struct Memory;

struct MemoryStore(AnyLayer);

impl Backend for Memory {
    fn open(&self, config: LayerConfig) -> Box<dyn Store> {
        Box::new(MemoryStore(AnyLayer::new(InMemoryLayer::new(config))))
    }
}

impl Store for MemoryStore {
    fn layer(&self) -> AnyLayer {
        self.0.clone()
    }

    fn peer(&self) -> AnyLayer {
        self.0.clone()
    }

    fn waiting(&self) -> u64 {
        self.0.metrics().queued_messages
    }
}

// ===== Helpers =====

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

fn request_and_reply(backend: &dyn Backend) {
    let store = backend.open_default();
    let worker = echo_worker(&store.layer(), "echo.request", 1);
    let client = Client::new(store.peer());

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
    assert_eq!(store.waiting(), 0);
}

fn a_correlation_id_is_set_when_missing_and_kept_when_present(backend: &dyn Backend) {
    let store = backend.open_default();
    let worker = echo_worker(&store.layer(), "echo.request", 1);
    let client = Client::new(store.peer());

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
    assert!(reply.flag_on("beta"), "the reply carries the flags back");
    worker.shutdown(LONG);
}

/// Service A (on `a_layer`) handles `a.work` by asking service B (on `b_layer`), and by sending
/// an audit message and a group message; all of them carry the caller's correlation ID and
/// flags.
fn two_services(a_layer: &AnyLayer, b_layer: &AnyLayer) -> (Worker, Worker) {
    let b = Worker::builder(b_layer.clone())
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
    let a = Worker::builder(a_layer.clone())
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

fn the_correlation_id_and_flags_follow_a_request_through_two_services(backend: &dyn Backend) {
    let store = backend.open_default();
    let (a, b) = two_services(&store.layer(), &store.peer());
    let observer = store.peer();
    let watcher = observer.new_channel("watch").unwrap();
    observer.group_add("watchers", &watcher).unwrap();
    let client = Client::new(store.peer());

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

    let audit = observer.receive_timeout("audit", LONG).unwrap();
    assert_eq!(audit.correlation_id(), Some("trace-123"));
    assert!(audit.flag_on("beta"));
    let note = observer.receive_timeout(&watcher, LONG).unwrap();
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
    let audit = observer.receive_timeout("audit", LONG).unwrap();
    assert_eq!(audit.correlation_id(), Some(id));
    let note = observer.receive_timeout(&watcher, LONG).unwrap();
    assert_eq!(note.correlation_id(), Some(id));

    assert_eq!(a.client_metrics().replies, 2, "A's calls to B");
    assert_eq!(client.metrics().replies, 2);
    a.shutdown(LONG);
    b.shutdown(LONG);
    assert_eq!(store.waiting(), 0);
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

fn typed_requests_and_handlers(backend: &dyn Backend) {
    let store = backend.open_default();
    let worker = Worker::builder(store.layer())
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
    let client = Client::new(store.peer());

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
    let m = client.metrics();
    assert_eq!((m.requests, m.replies, m.service_errors), (4, 4, 2));
}

// ===== Failures =====

fn a_timeout_leaves_a_late_reply_that_is_counted_and_never_delivered(backend: &dyn Backend) {
    let store = backend.open_default();
    let worker = echo_worker(&store.layer(), "echo.request", 1);
    let client = Client::new(store.peer());

    // The reply comes 600 ms after the request, well after the 200 ms timeout, also on a
    // loaded machine and over the network.
    let slow = Message::new("slow").with("n", 1).with("sleep_ms", 600);
    let err = client.request("echo.request", slow, ms(200)).unwrap_err();
    match &err {
        RequestError::Timeout { channel, timeout } => {
            assert_eq!((channel.as_str(), *timeout), ("echo.request", ms(200)));
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(err.is_timeout() && !err.is_full());
    assert_eq!(
        err.to_string(),
        "no reply from \"echo.request\" within 200ms"
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
    assert_eq!(store.waiting(), 0, "the late reply was taken away");
    worker.shutdown(LONG);
}

fn late_replies_are_counted_by_metrics_alone(backend: &dyn Backend) {
    let store = backend.open_default();
    let layer = store.layer();
    let client = Client::new(store.peer());
    let err = client
        .request("nobody.request", Message::new("ping"), ms(10))
        .unwrap_err();
    assert!(err.is_timeout());
    // Play the slow service by hand, twice over: both replies are late, and sent right after
    // the caller's receive timed out (on Redis, while its puller may still be blocked on the
    // reply channels' key for nobody: a sweep must still find them).
    let request = layer.receive_timeout("nobody.request", LONG).unwrap();
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
    assert_eq!(store.waiting(), 0, "the late replies were taken away");
}

fn many_late_replies_are_all_counted(backend: &dyn Backend) {
    let store = backend.open_default();
    let layer = store.layer();
    let client = Client::new(store.peer());
    for _ in 0..50 {
        let err = client
            .request("nobody.request", Message::new("ping"), ms(1))
            .unwrap_err();
        assert!(err.is_timeout());
    }
    for _ in 0..50 {
        let request = layer.receive_timeout("nobody.request", LONG).unwrap();
        let reply = Message::new("pong").caused_by(&request);
        layer.send(request.reply_channel().unwrap(), reply).unwrap();
    }
    // A request sweeps some of them (at most 32); metrics sweeps the rest.
    thread::sleep(ms(150));
    let _ = client.request("nobody.request", Message::new("ping"), ms(1));
    let m = client.metrics();
    assert_eq!((m.timeouts, m.late_replies), (51, 50));
    assert_eq!(store.waiting(), 1, "only the last request is left");
}

/// The reproduction: 150 requests from separate clients time out and their replies arrive
/// late; fresh requests still succeed at once (each reply channel has its own capacity, so
/// late replies waiting to expire never block new ones).
fn late_replies_never_block_new_requests(backend: &dyn Backend) {
    // Room for the 150 requests; every reply channel keeps the default capacity.
    let config = LayerConfig::builder()
        .channel_capacity("late.request", 1000)
        .build()
        .unwrap();
    let store = backend.open(config);
    let layer = store.layer();
    for _ in 0..150 {
        let err = Client::new(store.peer())
            .request("late.request", Message::new("ping"), ms(1))
            .unwrap_err();
        assert!(err.is_timeout());
    }
    for _ in 0..150 {
        let request = layer.receive_timeout("late.request", LONG).unwrap();
        let reply = Message::new("pong").caused_by(&request);
        layer.send(request.reply_channel().unwrap(), reply).unwrap();
    }
    let worker = Worker::builder(layer.clone())
        .channel("late.request")
        .handle("ping", |_, _| Ok(Some(Message::new("pong"))))
        .start()
        .unwrap();
    let mut ok = 0;
    for _ in 0..50 {
        let client = Client::new(store.peer());
        if client
            .request("late.request", Message::new("ping"), Duration::from_secs(1))
            .is_ok()
        {
            ok += 1;
        }
    }
    worker.shutdown(LONG);
    assert_eq!(
        ok, 50,
        "fresh requests failed while late replies waited to expire"
    );
}

fn a_reply_with_another_correlation_id_is_dropped_and_counted(backend: &dyn Backend) {
    let store = backend.open_default();
    let client = Client::new(store.peer());
    let responder = {
        let layer = store.layer();
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
    assert_eq!((m.mismatched, m.replies, m.late_replies), (1, 1, 0));
    assert_eq!(store.waiting(), 0);
}

fn a_service_error_reply_becomes_a_service_error(backend: &dyn Backend) {
    let store = backend.open_default();
    let worker = echo_worker(&store.layer(), "echo.request", 1);
    let client = Client::new(store.peer());
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

fn a_full_request_channel_is_reported_and_hands_the_request_back(backend: &dyn Backend) {
    let config = LayerConfig::builder().capacity(1).build().unwrap();
    let store = backend.open(config);
    store
        .layer()
        .send("busy.request", Message::new("filler"))
        .unwrap();
    let client = Client::new(store.peer());

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
    assert_eq!(store.waiting(), 1, "only the filler is queued");
}

fn unknown_and_missing_types_are_counted_and_answered(backend: &dyn Backend) {
    let store = backend.open_default();
    let worker = echo_worker(&store.layer(), "echo.request", 1);
    let sender = store.peer();
    let client = Client::new(sender.clone());

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
    sender
        .send("echo.request", Message::new("nonsense"))
        .unwrap();
    sender
        .send("echo.request", Message::default().with("n", 2))
        .unwrap();
    eventually("the one-way messages", || worker.metrics().handled == 4);

    let w = worker.shutdown(LONG).metrics;
    assert_eq!((w.unknown_type, w.no_type), (2, 2));
    assert_eq!((w.received, w.handled, w.replied), (4, 4, 2));
    assert_eq!(w.unrouted, 0);
    assert_eq!(store.waiting(), 0, "nothing was answered to nowhere");
}

fn a_panicking_handler_does_not_take_the_worker_down(backend: &dyn Backend) {
    let store = backend.open_default();
    let worker = echo_worker(&store.layer(), "echo.request", 1);
    let client = Client::new(store.peer());

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

fn start_rejects_bad_configurations(backend: &dyn Backend) {
    let store = backend.open_default();
    let layer = store.layer();
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

fn concurrent_callers_each_get_their_own_replies(backend: &dyn Backend) {
    let (callers, each) = (8, 200);
    let store = backend.open_default();
    let worker = echo_worker(&store.layer(), "load.request", 4);
    let client = Client::new(store.peer());
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
    assert_eq!(store.waiting(), 0);
}

// ===== Shutdown =====

fn shutdown_handles_every_message_already_taken(backend: &dyn Backend) {
    let store = backend.open_default();
    let worker = echo_worker(&store.layer(), "slow.request", 2);
    let client = Client::new(store.peer());
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
    assert_eq!(store.waiting(), 6 - w.received);
}

fn shutdown_returns_at_its_deadline_and_the_message_in_hand_is_still_handled(
    backend: &dyn Backend,
) {
    let store = backend.open_default();
    let worker = echo_worker(&store.layer(), "slow.request", 1);
    let client = Client::new(store.peer());
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

fn dropping_a_worker_stops_it_without_waiting(backend: &dyn Backend) {
    let store = backend.open_default();
    let worker = echo_worker(&store.layer(), "echo.request", 2);
    let client = Client::new(store.peer());
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
    assert_eq!(store.waiting(), 1, "nobody took it");
}

// ===== Async =====

fn request_async_on_futures_executor(backend: &dyn Backend) {
    let store = backend.open_default();
    let worker = echo_worker(&store.layer(), "echo.request", 2);
    let client = Client::new(store.peer());
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

fn request_async_on_tokio(backend: &dyn Backend) {
    let store = backend.open_default();
    let worker = echo_worker(&store.layer(), "echo.request", 4);
    let client = Client::new(store.peer());
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

        // Dropping the future abandons the request; its reply is counted as late. The request
        // is sent long before the future is dropped, and answered long after.
        let slow = Message::new("slow").with("sleep_ms", 500);
        let dropped =
            tokio::time::timeout(ms(150), client.request_async("echo.request", slow, LONG)).await;
        assert!(dropped.is_err(), "the request was cancelled");
    });
    eventually("the abandoned reply", || worker.metrics().replied == 401);
    let m = client.metrics();
    assert_eq!((m.replies, m.cancelled, m.late_replies), (400, 1, 1));
    assert_eq!(m.requests, m.replies + m.cancelled);
    assert_eq!(store.waiting(), 0, "the late reply was taken away");
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
    let client = Client::new(InMemoryLayer::default());
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

// ===== One test per behaviour and backend =====

/// A `#[test]` per behaviour above, each on a backend made by `$backend` (an
/// `Option<impl Backend>`: `None` skips the test).
macro_rules! service_tests {
    ($backend:expr) => {
        service_tests!(@each $backend;
            request_and_reply,
            a_correlation_id_is_set_when_missing_and_kept_when_present,
            the_correlation_id_and_flags_follow_a_request_through_two_services,
            typed_requests_and_handlers,
            a_timeout_leaves_a_late_reply_that_is_counted_and_never_delivered,
            late_replies_are_counted_by_metrics_alone,
            many_late_replies_are_all_counted,
            late_replies_never_block_new_requests,
            a_reply_with_another_correlation_id_is_dropped_and_counted,
            a_service_error_reply_becomes_a_service_error,
            a_full_request_channel_is_reported_and_hands_the_request_back,
            unknown_and_missing_types_are_counted_and_answered,
            a_panicking_handler_does_not_take_the_worker_down,
            start_rejects_bad_configurations,
            concurrent_callers_each_get_their_own_replies,
            shutdown_handles_every_message_already_taken,
            shutdown_returns_at_its_deadline_and_the_message_in_hand_is_still_handled,
            dropping_a_worker_stops_it_without_waiting,
            request_async_on_futures_executor,
            request_async_on_tokio,
        );
    };
    (@each $backend:expr; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                if let Some(backend) = $backend {
                    super::$name(&backend);
                }
            }
        )*
    };
}

mod memory {
    service_tests!(Some(super::Memory));
}

#[cfg(feature = "redis")]
mod redis {
    use std::sync::Mutex;

    use channel_layer::redis::{RedisConfig, RedisLayer};

    use super::{AnyLayer, Backend, ChannelLayer, LayerConfig, Store};
    use crate::support::redis_server::RedisServer;

    /// Redis: each store is a private `redis-server` of its own.
    struct Redis {
        /// A server started with the backend, to skip the test at once when there is none.
        spare: Mutex<Option<RedisServer>>,
    }

    impl Redis {
        /// The backend, or `None` (after a skip message) when redis-server is missing.
        fn start() -> Option<Redis> {
            let server = RedisServer::start()?;
            Some(Redis {
                spare: Mutex::new(Some(server)),
            })
        }
    }

    impl Backend for Redis {
        fn open(&self, config: LayerConfig) -> Box<dyn Store> {
            let spare = self.spare.lock().unwrap().take();
            let server = spare
                .or_else(RedisServer::start)
                .expect("redis-server ran a moment ago");
            let mut redis_config = RedisConfig::new(server.url());
            redis_config.layer = config;
            let store = RedisStore {
                config: redis_config,
                layers: Mutex::new(Vec::new()),
                server,
            };
            store.connect();
            Box::new(store)
        }
    }

    /// A server and the layers connected to it, all with one configuration (and prefix).
    struct RedisStore {
        config: RedisConfig,
        /// Every layer connected so far, the first one first; dropped before the server.
        layers: Mutex<Vec<AnyLayer>>,
        server: RedisServer,
    }

    impl RedisStore {
        fn connect(&self) -> AnyLayer {
            let layer = RedisLayer::new(self.config.clone()).expect("a valid configuration");
            let layer = AnyLayer::new(layer);
            self.layers.lock().unwrap().push(layer.clone());
            layer
        }
    }

    impl Store for RedisStore {
        fn layer(&self) -> AnyLayer {
            self.layers.lock().unwrap()[0].clone()
        }

        fn peer(&self) -> AnyLayer {
            self.connect()
        }

        fn waiting(&self) -> u64 {
            // Every key under the prefix is a sorted set of messages, but for group memberships
            // and the keys that wake the layers' pullers.
            let prefix = &self.config.prefix;
            let skip = [format!("{prefix}:group:"), format!("{prefix}__wake__:")];
            let pattern = format!("{prefix}*");
            let keys = self.server.query(&[b"KEYS", pattern.as_bytes()]).bulks();
            let in_redis: u64 = keys
                .iter()
                .filter(|key| !skip.iter().any(|s| key.starts_with(s.as_bytes())))
                .map(|key| {
                    let n = self.server.query(&[b"ZCARD", key]).as_int();
                    let n = n.unwrap_or_else(|| {
                        panic!("{:?} is no sorted set", key.escape_ascii().to_string())
                    });
                    u64::try_from(n).unwrap()
                })
                .sum();
            let layers = self.layers.lock().unwrap();
            let buffered: u64 = layers.iter().map(|l| l.metrics().queued_messages).sum();
            in_redis + buffered
        }
    }

    service_tests!(Redis::start());
}

#[cfg(feature = "nats")]
mod nats {
    use std::sync::{Mutex, OnceLock};

    use channel_layer::nats::{NatsConfig, NatsLayer};

    use super::{AnyLayer, Backend, ChannelLayer, LayerConfig, Store};
    use crate::support::nats_server::NatsServer;

    /// NATS: one server for the binary; each store is a prefix of its own on it.
    struct Nats;

    fn shared() -> Option<&'static NatsServer> {
        static SERVER: OnceLock<Option<NatsServer>> = OnceLock::new();
        SERVER.get_or_init(NatsServer::start).as_ref()
    }

    fn server() -> &'static NatsServer {
        shared().expect("nats-server ran a moment ago")
    }

    impl Nats {
        /// The backend, or `None` (after a skip message) when nats-server is missing.
        fn start() -> Option<Nats> {
            shared().map(|_| Nats)
        }
    }

    impl Backend for Nats {
        fn open(&self, config: LayerConfig) -> Box<dyn Store> {
            let mut nats = NatsConfig::from_url(&server().url()).expect("a NATS URL");
            nats.layer = config;
            nats.prefix = crate::support::fresh_prefix("svc");
            let store = NatsStore {
                config: nats,
                layers: Mutex::new(Vec::new()),
            };
            store.connect();
            Box::new(store)
        }
    }

    /// The layers on one prefix, all with one configuration.
    struct NatsStore {
        config: NatsConfig,
        layers: Mutex<Vec<AnyLayer>>,
    }

    impl NatsStore {
        fn connect(&self) -> AnyLayer {
            let layer = NatsLayer::new(self.config.clone()).expect("the server answers");
            let layer = AnyLayer::new(layer);
            self.layers.lock().unwrap().push(layer.clone());
            layer
        }
    }

    impl Store for NatsStore {
        fn layer(&self) -> AnyLayer {
            self.layers.lock().unwrap()[0].clone()
        }

        fn peer(&self) -> AnyLayer {
            self.connect()
        }

        fn waiting(&self) -> u64 {
            // The messages in this prefix's channel streams, as the server's monitor reports.
            let body = server()
                .monitor("/jsz?accounts=true&streams=true")
                .expect("the monitor answers");
            let jsz: serde_json::Value = serde_json::from_str(&body).expect("JSON");
            let ours = format!("{}_ch_", self.config.prefix);
            let mut on_server = 0;
            for account in jsz["account_details"].as_array().into_iter().flatten() {
                for stream in account["stream_detail"].as_array().into_iter().flatten() {
                    if stream["name"]
                        .as_str()
                        .is_some_and(|n| n.starts_with(&ours))
                    {
                        on_server += stream["state"]["messages"].as_u64().unwrap_or(0);
                    }
                }
            }
            let layers = self.layers.lock().unwrap();
            let buffered: u64 = layers.iter().map(|l| l.metrics().queued_messages).sum();
            on_server + buffered
        }
    }

    service_tests!(Nats::start());
}
