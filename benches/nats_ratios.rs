//! The NATS backend against one private loopback `nats-server` (JetStream, file storage),
//! beside raw `async-nats` doing the nearest plain equivalent on the same server in the same
//! run, and the ratios between them.
//!
//! Run with `cargo bench --features nats --bench nats_ratios` (add `-- --quick` for a short
//! run). It starts its own `nats-server` on a free port: once for each server it finds, one
//! after the other (`nats-server` on `PATH`, and the one `.ci/run` installs under
//! `target/server-venv`; `NATS_SERVER_BIN` names a single one instead). Scenarios, messages
//! `{type, n, payload: 64 bytes}`:
//! - p2p: one producer, one consumer; ours with blocking sends and with a window of 256 async
//!   sends in flight; raw: core publish to a subscriber (no storage, no acknowledgement), and
//!   JetStream publish with its acknowledgement awaited one by one and 256 in flight;
//! - fan-out: `group_send` to 100 members, one receiver draining them; raw: 100 JetStream
//!   publishes per message, 256 acknowledgements in flight;
//! - rpc: a service answers on a fresh reply channel per request, p50 and p99; raw: core
//!   request/reply to a responder, and one JetStream publish round trip.

mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use std::hint::black_box;
use std::time::Instant;

use async_nats::jetstream::{self, stream};
use channel_layer::ChannelLayer as _;
use channel_layer::nats::{NatsConfig, NatsLayer};
use common::{Spread, percentile, rpc_by_hand};
use futures::StreamExt as _;
use support::nats_server::NatsServer;

const MEMBERS: usize = 100;

fn layer(server: &NatsServer, prefix: &str) -> NatsLayer {
    layer_with(server, prefix, 0)
}

fn layer_with(server: &NatsServer, prefix: &str, prefetch: usize) -> NatsLayer {
    let mut config = NatsConfig::from_url(&server.url()).expect("url");
    config.receive_prefetch = prefetch;
    // A prefix ending in `m` keeps its streams in memory.
    if prefix.ends_with('m') {
        config.storage = channel_layer::nats::Storage::Memory;
    }
    config.prefix = prefix.to_owned();
    config.layer.capacity = 1_000_000;
    NatsLayer::new(config).expect("layer")
}

fn p2p(server: &NatsServer, n: usize, pipelined: bool, run: usize, storage: &str) -> f64 {
    p2p_prefetch(server, n, pipelined, run, storage, 0)
}

fn p2p_prefetch(
    server: &NatsServer,
    n: usize,
    pipelined: bool,
    run: usize,
    storage: &str,
    prefetch: usize,
) -> f64 {
    let prefix = format!("p2p{run}{}{prefetch}{storage}", u8::from(pipelined));
    common::p2p(
        layer(server, &prefix),
        layer_with(server, &prefix, prefetch),
        n,
        pipelined,
    )
}

fn fanout(server: &NatsServer, groups: usize, run: usize, prefetch: usize) -> f64 {
    common::fanout(
        layer_with(server, &format!("fan{run}p{prefetch}"), prefetch),
        MEMBERS,
        groups,
    )
}

/// The same 64-byte-payload message as msgpack-sized bytes, for the raw client.
fn payload() -> bytes::Bytes {
    bytes::Bytes::from(vec![7u8; 96])
}

/// Raw figures, measured with async-nats on a tokio runtime of the bench's own.
struct Raw {
    rt: tokio::runtime::Runtime,
    client: async_nats::Client,
    js: jetstream::Context,
}

impl Raw {
    fn new(server: &NatsServer) -> Raw {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let (client, js) = rt.block_on(async {
            let client = async_nats::connect(server.url()).await.expect("connect");
            let js = jetstream::new(client.clone());
            js.create_stream(stream::Config {
                name: "RAW".into(),
                subjects: vec!["raw.>".into()],
                ..Default::default()
            })
            .await
            .expect("stream");
            (client, js)
        });
        Raw { rt, client, js }
    }

    /// Core publish to one subscriber: messages per second received.
    fn core_p2p(&self, n: usize) -> f64 {
        self.rt.block_on(async {
            let mut sub = self.client.subscribe("core.p2p").await.expect("sub");
            self.client.flush().await.expect("flush");
            let start = Instant::now();
            let publisher = self.client.clone();
            let sending = tokio::spawn(async move {
                for _ in 0..n {
                    publisher.publish("core.p2p", payload()).await.expect("pub");
                }
                publisher.flush().await.expect("flush");
            });
            for _ in 0..n {
                black_box(sub.next().await.expect("message"));
            }
            sending.await.expect("publisher");
            n as f64 / start.elapsed().as_secs_f64()
        })
    }

    /// JetStream publishes with `window` acknowledgements in flight: messages per second stored.
    fn js_publish(&self, n: usize, window: usize, subjects: usize) -> f64 {
        self.rt.block_on(async {
            let start = Instant::now();
            let mut acks = std::collections::VecDeque::new();
            for i in 0..n {
                let subject = format!("raw.s{}", i % subjects);
                acks.push_back(self.js.publish(subject, payload()).await.expect("pub"));
                if acks.len() >= window {
                    acks.pop_front().expect("ack").await.expect("stored");
                }
            }
            for ack in acks {
                ack.await.expect("stored");
            }
            n as f64 / start.elapsed().as_secs_f64()
        })
    }

    /// Core request/reply to a responder, and one acknowledged JetStream publish, in µs.
    fn round_trips(&self, n: usize) -> ((f64, f64), (f64, f64)) {
        self.rt.block_on(async {
            let mut service = self.client.subscribe("core.rpc").await.expect("sub");
            let responder = self.client.clone();
            let answering = tokio::spawn(async move {
                while let Some(req) = service.next().await {
                    let Some(reply) = req.reply else { continue };
                    responder.publish(reply, req.payload).await.expect("reply");
                }
            });
            self.client.flush().await.expect("flush");
            let mut core = Vec::with_capacity(n);
            let mut js = Vec::with_capacity(n);
            for _ in 0..n {
                let t = Instant::now();
                black_box(
                    self.client
                        .request("core.rpc", payload())
                        .await
                        .expect("req"),
                );
                core.push(t.elapsed().as_secs_f64() * 1e6);
                let t = Instant::now();
                let ack = self.js.publish("raw.rpc", payload()).await.expect("pub");
                black_box(ack.await.expect("stored"));
                js.push(t.elapsed().as_secs_f64() * 1e6);
            }
            answering.abort();
            core.sort_by(f64::total_cmp);
            js.sort_by(f64::total_cmp);
            (
                (percentile(&core, 0.5), percentile(&core, 0.99)),
                (percentile(&js, 0.5), percentile(&js, 0.99)),
            )
        })
    }
}

/// The servers to measure on: `NATS_SERVER_BIN` alone if set, else `nats-server` on `PATH`
/// and the one `.ci/run` installs.
fn servers() -> Vec<String> {
    if let Ok(one) = std::env::var("NATS_SERVER_BIN") {
        return vec![one];
    }
    let current = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/target/server-venv/bin/nats-server"
    );
    ["nats-server", current]
        .into_iter()
        .filter(|bin| {
            std::process::Command::new(bin)
                .arg("--version")
                .output()
                .is_ok()
        })
        .map(str::to_owned)
        .collect()
}

fn main() {
    // One child process per server, one after the other, each measuring on its own server.
    if std::env::var_os("NATS_BENCH_CHILD").is_none() {
        let me = std::env::current_exe().expect("the bench binary");
        for bin in servers() {
            let status = std::process::Command::new(&me)
                .args(std::env::args().skip(1))
                .env("NATS_SERVER_BIN", &bin)
                .env("NATS_BENCH_CHILD", "1")
                .status()
                .expect("the bench child");
            assert!(status.success(), "the bench on {bin} failed");
            println!();
        }
        return;
    }
    measure();
}

fn measure() {
    let quick = std::env::args().any(|a| a == "--quick");
    let reps = if quick { 3 } else { 5 };
    let Some(server) = NatsServer::start() else {
        println!("nats-server is not available: nothing to measure");
        return;
    };
    let version = std::process::Command::new(std::env::var("NATS_SERVER_BIN").unwrap_or_default())
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    println!(
        "channel-layer over NATS JetStream beside raw async-nats on the same private loopback {version} (file storage); median [min-max] of {reps} runs"
    );
    println!("machine: {}", common::machine());
    let raw = Raw::new(&server);

    let n = if quick { 2_000 } else { 10_000 };
    let blocking = Spread::of((0..reps).map(|r| p2p(&server, n, false, r, "f")).collect());
    let pipelined = Spread::of((0..reps).map(|r| p2p(&server, n, true, r, "f")).collect());
    let core = Spread::of((0..reps).map(|_| raw.core_p2p(n * 10)).collect());
    let js1 = Spread::of((0..reps).map(|_| raw.js_publish(n, 1, 1)).collect());
    let js256 = Spread::of((0..reps).map(|_| raw.js_publish(n * 5, 256, 1)).collect());
    let prefetched = Spread::of(
        (0..reps)
            .map(|r| p2p_prefetch(&server, n * 2, true, r, "f", 256))
            .collect(),
    );
    println!(
        "p2p          ours: blocking sends {blocking} msg/s | 256 async sends in flight {pipelined} msg/s | the same, receive_prefetch=256: {prefetched} msg/s"
    );
    println!(
        "             raw: core publish->subscriber {core} msg/s | JetStream publish, ack each {js1}/s, 256 in flight {js256}/s"
    );
    println!(
        "             ratios: blocking p2p {:.2} of ack-each publish; pipelined p2p {:.2} (receive_prefetch=256: {:.2}) of 256-in-flight publish",
        blocking.median / js1.median,
        pipelined.median / js256.median,
        prefetched.median / js256.median
    );

    let groups = if quick { 50 } else { 200 };
    let ours = Spread::of((0..reps).map(|r| fanout(&server, groups, r, 0)).collect());
    let ours_prefetched = Spread::of((0..reps).map(|r| fanout(&server, groups, r, 256)).collect());
    let raw_fan = Spread::of(
        (0..reps)
            .map(|_| raw.js_publish(groups * MEMBERS, 256, MEMBERS))
            .collect(),
    );
    println!(
        "fan-out 100  ours {ours} deliveries/s (stored and received), receive_prefetch=256: {ours_prefetched} | raw JetStream publish to 100 subjects, 256 in flight {raw_fan}/s (stored only) | ratio {:.2} (receive_prefetch=256: {:.2})",
        ours.median / raw_fan.median,
        ours_prefetched.median / raw_fan.median
    );

    let k = if quick { 300 } else { 1_000 };
    let rpc = |storage: &str| -> (Spread, Spread) {
        let runs: Vec<(f64, f64)> = (0..reps)
            .map(|r| {
                let prefix = format!("rpc{r}{storage}");
                rpc_by_hand(layer(&server, &prefix), layer(&server, &prefix), k, 100)
            })
            .collect();
        (
            Spread::of(runs.iter().map(|r| r.0).collect()),
            Spread::of(runs.iter().map(|r| r.1).collect()),
        )
    };
    let (p50, p99) = rpc("f");
    let raws: Vec<_> = (0..reps).map(|_| raw.round_trips(k)).collect();
    let core50 = Spread::of(raws.iter().map(|r| r.0.0).collect());
    let core99 = Spread::of(raws.iter().map(|r| r.0.1).collect());
    let js50 = Spread::of(raws.iter().map(|r| r.1.0).collect());
    let js99 = Spread::of(raws.iter().map(|r| r.1.1).collect());
    println!(
        "rpc          ours p50 {p50} µs, p99 {p99} µs | raw core request/reply p50 {core50} µs, p99 {core99} µs | raw JetStream publish+ack p50 {js50} µs, p99 {js99} µs"
    );
    println!(
        "             our p50 = {:.1} JetStream round trips (a request is a send and a receive each way)",
        p50.median / js50.median
    );

    // A batch of replies, each to its own channel: `send_many` against one send at a time.
    let batches = if quick { 20 } else { 100 };
    let batch_layer = layer(&server, "many");
    let replies: Vec<String> = (0..256)
        .map(|_| batch_layer.new_channel("reply").expect("name"))
        .collect();
    let many = Spread::of(
        (0..reps)
            .map(|_| {
                let start = Instant::now();
                for b in 0..batches {
                    let batch = replies
                        .iter()
                        .map(|r| (r.clone(), common::message(b)))
                        .collect();
                    for sent in batch_layer.send_many(batch) {
                        sent.expect("send_many");
                    }
                }
                (batches * replies.len()) as f64 / start.elapsed().as_secs_f64()
            })
            .collect(),
    );
    let one_by_one = Spread::of(
        (0..reps)
            .map(|_| {
                let start = Instant::now();
                for b in 0..batches / 4 {
                    for r in &replies {
                        batch_layer.send(r, common::message(b)).expect("send");
                    }
                }
                (batches / 4 * replies.len()) as f64 / start.elapsed().as_secs_f64()
            })
            .collect(),
    );
    batch_layer.flush().expect("flush");
    println!(
        "send_many    256 replies to 256 channels a batch: {many} msg/s | one blocking send at a time {one_by_one} msg/s | raw JetStream publish, 256 in flight {js256}/s | ratio {:.2}",
        many.median / js256.median
    );

    // The same with the layer's streams in memory (`storage=memory`): no erase on delete.
    let blocking = Spread::of((0..reps).map(|r| p2p(&server, n, false, r, "m")).collect());
    let pipelined = Spread::of((0..reps).map(|r| p2p(&server, n, true, r, "m")).collect());
    let (p50, p99) = rpc("m");
    println!(
        "memory       storage=memory: p2p blocking sends {blocking} msg/s, 256 in flight {pipelined} msg/s | rpc p50 {p50} µs, p99 {p99} µs"
    );
}
