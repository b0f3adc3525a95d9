//! Criterion benchmarks of the in-memory layer's single-threaded costs.
//!
//! Run with `cargo bench --bench layer`. The multi-threaded scenarios, with a crossbeam
//! baseline and ratios, are in `benches/ratios.rs`.

use std::hint::black_box;

use channel_layer::prelude::*;
use criterion::{Criterion, criterion_group, criterion_main};

const PAYLOAD: &str = "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";

fn message(n: i64) -> Message {
    Message::new("bench.msg")
        .with("n", n)
        .with("payload", PAYLOAD)
}

fn layer(capacity: usize) -> InMemoryLayer {
    InMemoryLayer::new(
        LayerConfig::builder()
            .capacity(capacity)
            .build()
            .expect("config"),
    )
}

fn bench(c: &mut Criterion) {
    c.bench_function("message/build", |b| {
        b.iter(|| black_box(message(black_box(7))))
    });

    let l = layer(1024);
    c.bench_function("send+try_receive/plain", |b| {
        b.iter(|| {
            l.send("bench.chan", message(1)).expect("send");
            black_box(l.try_receive("bench.chan").expect("receive"))
        })
    });

    let dynamic = AnyLayer::new(layer(1024));
    c.bench_function("send+try_receive/dyn", |b| {
        b.iter(|| {
            dynamic.send("bench.chan", message(1)).expect("send");
            black_box(dynamic.try_receive("bench.chan").expect("receive"))
        })
    });

    let specific = l.new_channel("reply").expect("channel");
    c.bench_function("send+try_receive/process-specific", |b| {
        b.iter(|| {
            l.send(&specific, message(1)).expect("send");
            black_box(l.try_receive(&specific).expect("receive"))
        })
    });

    c.bench_function("new_channel", |b| {
        b.iter(|| black_box(l.new_channel("reply").expect("channel")))
    });

    let fan = layer(1_000_000);
    let members: Vec<String> = (0..100)
        .map(|_| fan.new_channel("member").expect("channel"))
        .collect();
    for m in &members {
        fan.group_add("room", m).expect("group_add");
    }
    c.bench_function("group_send/100 members + drain", |b| {
        b.iter(|| {
            fan.group_send("room", message(1)).expect("group_send");
            for m in &members {
                black_box(fan.try_receive(m).expect("receive"));
            }
        })
    });

    c.bench_function("name/validate", |b| {
        b.iter(|| {
            channel_layer::name::validate_channel(black_box("specific.AbCdEfGhIjKl!MnOpQrStUvWx"))
        })
    });

    #[derive(serde::Serialize, serde::Deserialize)]
    struct Order {
        #[serde(rename = "type")]
        kind: String,
        id: i64,
        sku: String,
        qty: i32,
    }
    let order = Order {
        kind: "order.create".into(),
        id: 42,
        sku: "A-1".into(),
        qty: 3,
    };
    c.bench_function("typed/encode+decode", |b| {
        b.iter(|| {
            let m = Message::encode(black_box(&order)).expect("encode");
            black_box(m.decode::<Order>().expect("decode"))
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
