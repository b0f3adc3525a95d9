//! Observability: operations of an `Observed` layer are timed and counted through the
//! `metrics` facade with OpenTelemetry names and bounded labels, and traced in spans that carry
//! the channel, the message type and the correlation ID.

#![cfg(any(feature = "metrics", feature = "tracing"))]

use channel_layer::observe::Observed;
use channel_layer::prelude::*;

#[cfg(feature = "metrics")]
#[test]
fn operations_are_timed_and_counted_with_bounded_labels() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let mut reply_name = String::new();
    metrics::with_local_recorder(&recorder, || {
        let layer = Observed::new(InMemoryLayer::default());
        let reply = layer.new_channel("reply").unwrap();
        reply_name = reply.clone();
        layer.send("orders", Message::new("order.create")).unwrap();
        layer.send(&reply, Message::new("order.created")).unwrap();
        layer.receive("orders").unwrap();
        layer.receive(&reply).unwrap();
        assert!(
            layer
                .receive_timeout("orders", std::time::Duration::from_millis(5))
                .is_err()
        );
        layer.export_snapshot();
    });
    let snapshot = snapshotter.snapshot().into_vec();
    let find = |name: &str, labels: &[(&str, &str)]| {
        snapshot.iter().find(|(key, _, _, _)| {
            key.key().name() == name
                && labels
                    .iter()
                    .all(|(k, v)| key.key().labels().any(|l| l.key() == *k && l.value() == *v))
        })
    };
    let sent = find(
        "messaging.client.sent.messages",
        &[("messaging.destination.name", "orders")],
    );
    assert!(
        matches!(sent, Some((_, _, _, DebugValue::Counter(1)))),
        "{sent:?}"
    );
    // A process-specific channel is labelled by its part before the `!`.
    let process = snapshot
        .iter()
        .filter(|(key, _, _, _)| key.key().labels().any(|l| l.value().contains('!')))
        .count();
    assert_eq!(process, 0, "no label holds a full process-specific name");
    let reply_label = reply_name.split('!').next().unwrap().to_owned();
    assert!(
        find(
            "messaging.client.sent.messages",
            &[("messaging.destination.name", &reply_label)]
        )
        .is_some(),
        "labelled {reply_label:?}"
    );
    let timed_out = find(
        "messaging.client.operation.duration",
        &[
            ("messaging.operation.name", "receive"),
            ("error.type", "timeout"),
        ],
    );
    assert!(matches!(timed_out, Some((_, _, _, DebugValue::Histogram(v))) if v.len() == 1));
    let received = find(
        "messaging.client.consumed.messages",
        &[("messaging.destination.name", "orders")],
    );
    assert!(
        matches!(received, Some((_, _, _, DebugValue::Counter(1)))),
        "{received:?}"
    );
    let sent_total = find("channel_layer.sent", &[]);
    assert!(
        matches!(sent_total, Some((_, _, _, DebugValue::Counter(2)))),
        "{sent_total:?}"
    );
}

#[cfg(feature = "tracing")]
#[test]
fn operations_run_in_spans_with_the_messaging_attributes() {
    use std::sync::{Arc, Mutex};

    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id, Record};
    use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

    #[derive(Clone, Default)]
    struct Fields(Arc<Mutex<Vec<(String, String)>>>);

    impl Visit for Fields {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            self.0
                .lock()
                .unwrap()
                .push((field.name().to_owned(), format!("{value:?}")));
        }
        fn record_str(&mut self, field: &Field, value: &str) {
            self.0
                .lock()
                .unwrap()
                .push((field.name().to_owned(), value.to_owned()));
        }
    }

    struct Recorder(Fields);

    impl<S: tracing::Subscriber> Layer<S> for Recorder {
        fn on_new_span(&self, attrs: &Attributes<'_>, _: &Id, _: Context<'_, S>) {
            attrs.record(&mut self.0.clone());
        }
        fn on_record(&self, _: &Id, values: &Record<'_>, _: Context<'_, S>) {
            values.record(&mut self.0.clone());
        }
        fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
            event.record(&mut self.0.clone());
        }
    }

    let fields = Fields::default();
    let subscriber = tracing_subscriber::registry().with(Recorder(fields.clone()));
    // Global, so that the worker's threads report too (this is the only test here that traces).
    tracing::subscriber::set_global_default(subscriber).expect("no other subscriber");
    {
        let layer = Observed::new(InMemoryLayer::default());
        let message = Message::new("order.create").with_correlation_id("c-42");
        layer.send("orders", message).unwrap();
        layer.receive("orders").unwrap();

        // A worker handles each message in a `process` span and warns about what it could
        // not handle.
        use channel_layer::service::{Client, HandlerError, Worker};
        let layer = AnyLayer::new(InMemoryLayer::default());
        let worker = Worker::builder(layer.clone())
            .channel("svc")
            .handle("svc.fail", |_ctx, _m| Err(HandlerError::new("out of tea")))
            .start()
            .unwrap();
        let err = Client::new(layer)
            .request(
                "svc",
                Message::new("svc.fail").with_correlation_id("c-7"),
                std::time::Duration::from_secs(5),
            )
            .unwrap_err();
        assert!(err.is_service());
        worker.shutdown(std::time::Duration::from_secs(1));
    }
    let seen = fields.0.lock().unwrap().clone();
    let has = |k: &str, v: &str| seen.iter().any(|(a, b)| a == k && b == v);
    assert!(has("messaging.destination.name", "orders"), "{seen:?}");
    assert!(has("messaging.operation.name", "send"), "{seen:?}");
    assert!(has("messaging.operation.name", "receive"), "{seen:?}");
    assert!(has("messaging.message.conversation_id", "c-42"), "{seen:?}");
    assert!(has("messaging.message.type", "order.create"), "{seen:?}");
    assert!(has("messaging.system", "channel_layer"), "{seen:?}");
    assert!(has("messaging.operation.name", "process"), "{seen:?}");
    assert!(has("messaging.message.conversation_id", "c-7"), "{seen:?}");
    assert!(has("error.message", "out of tea"), "{seen:?}");
}
