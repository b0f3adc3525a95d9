//! The Redis backend against one private loopback `redis-server`, with the Python peers'
//! figures measured on the same server in the same run, and the ratios between them.
//!
//! Run with `cargo bench --features redis --bench redis_ratios` (add `-- --quick` for a short
//! run). It starts its own `redis-server` on a free port. The Python side needs the venv the
//! interop tests install (`target/interop-venv`, made by `cargo test --all-features`) and the
//! peers' scripts (`../shared/peers`, or the folder in `PEERS_DIR`); without them only our
//! figures are printed. Scenarios are the peers' (`bench_channels.py`):
//! - p2p: one producer, one consumer, messages `{type, n, payload: 64 bytes}`: with blocking
//!   sends (one round trip each) and with pipelined async sends (256 in flight) and a receive
//!   prefetch of 256;
//! - fan-out: `group_send` to 100 members of this process, one receiver draining them;
//! - rpc: a service answers on a fresh reply channel per request; p50 and p99 round trip;
//! - and `redis-benchmark -P 16` ZADD, the server's own pipelined rate.

mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use std::hint::black_box;
use std::path::PathBuf;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use channel_layer::redis::{RedisConfig, RedisLayer};
use channel_layer::{AnyLayer, ChannelLayer, ChannelLayerExt};
use common::{median, message, rpc_by_hand, rpc_toolkit};
use support::redis_server::RedisServer;

const MEMBERS: usize = 100;

/// The median of what was measured, if anything was.
fn median_of(v: Vec<f64>) -> Option<f64> {
    (!v.is_empty()).then(|| median(v))
}

fn layer(server: &RedisServer, prefix: &str, prefetch: usize) -> RedisLayer {
    let mut config = RedisConfig::new(server.url());
    config.prefix = prefix.to_owned();
    config.layer.capacity = 1_000_000;
    config.receive_prefetch = prefetch;
    RedisLayer::new(config).expect("config")
}

fn p2p(server: &RedisServer, n: usize, pipelined: bool, run: usize) -> f64 {
    let prefix = format!("p2p{run}{}:", u8::from(pipelined));
    let producer = layer(server, &prefix, 0);
    let consumer = layer(server, &prefix, if pipelined { 256 } else { 0 });
    let start = Instant::now();
    let receiving = thread::spawn(move || {
        for _ in 0..n {
            black_box(
                consumer
                    .receive_timeout("bench.p2p", Duration::from_secs(30))
                    .expect("receive"),
            );
        }
    });
    if pipelined {
        let mut i = 0;
        while i < n {
            let end = (i + 256).min(n);
            let sends: Vec<_> = (i..end)
                .map(|k| producer.send_async("bench.p2p", message(k)))
                .collect();
            for r in futures::executor::block_on(futures::future::join_all(sends)) {
                r.expect("send");
            }
            i = end;
        }
    } else {
        for i in 0..n {
            producer.send("bench.p2p", message(i)).expect("send");
        }
    }
    receiving.join().expect("consumer");
    n as f64 / start.elapsed().as_secs_f64()
}

fn fanout(server: &RedisServer, groups: usize, run: usize) -> f64 {
    let layer = layer(server, &format!("fan{run}:"), 0);
    let members: Vec<String> = (0..MEMBERS)
        .map(|_| layer.new_channel("member").expect("name"))
        .collect();
    for m in &members {
        layer.group_add("bench.room", m).expect("group_add");
    }
    let start = Instant::now();
    let drainer = {
        let layer = layer.clone();
        thread::spawn(move || {
            for _ in 0..groups {
                for m in &members {
                    black_box(
                        layer
                            .receive_timeout(m, Duration::from_secs(30))
                            .expect("receive"),
                    );
                }
            }
        })
    };
    for g in 0..groups {
        let report = layer
            .group_send("bench.room", message(g))
            .expect("group_send");
        assert_eq!(report.delivered, MEMBERS);
    }
    drainer.join().expect("drainer");
    (groups * MEMBERS) as f64 / start.elapsed().as_secs_f64()
}

fn rpc(server: &RedisServer, k: usize, run: usize) -> (f64, f64) {
    let prefix = format!("rpc{run}:");
    rpc_by_hand(layer(server, &prefix, 0), layer(server, &prefix, 0), k, 200)
}

/// The round trip through the services toolkit, service and client in separate layers.
fn toolkit(server: &RedisServer, k: usize, run: usize) -> (f64, f64) {
    let prefix = format!("tk{run}:");
    let service = AnyLayer::new(layer(server, &prefix, 0));
    rpc_toolkit(service, AnyLayer::new(layer(server, &prefix, 0)), k, 200)
}

/// Runs the peers' `bench_channels.py` for channels_redis on `server`; the JSON line it prints.
fn python(server: &RedisServer, scenario: &str, extra: &[&str]) -> Option<serde_json::Value> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let peers =
        std::env::var_os("PEERS_DIR").map_or_else(|| root.join("../shared/peers"), PathBuf::from);
    let script = peers.join("bench_channels.py");
    let python = root.join("target/interop-venv/bin/python");
    if !script.exists() || !python.exists() {
        return None;
    }
    let out = Command::new(python)
        .arg(script)
        .args([
            "--layer",
            "redis",
            "--scenario",
            scenario,
            "--redis",
            &server.url(),
        ])
        .args(extra)
        .output()
        .ok()?;
    let line = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()?
        .to_owned();
    serde_json::from_str(&line).ok()
}

fn redis_benchmark_zadd(server: &RedisServer) -> Option<f64> {
    let out = Command::new("redis-benchmark")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &server.port().to_string(),
            "--csv",
            "-n",
            "200000",
            "-P",
            "16",
            "-t",
            "zadd",
        ])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let row = text.lines().find(|l| l.starts_with("\"ZADD\""))?;
    row.split(',').nth(1)?.trim_matches('"').parse().ok()
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let reps = if quick { 1 } else { 3 };
    let Some(server) = RedisServer::start() else {
        println!("redis-server is not available: nothing to measure");
        return;
    };
    println!(
        "channel-layer over redis vs channels_redis 4.3 (Python), one private loopback redis-server, medians of {reps}"
    );

    let n = if quick { 5_000 } else { 20_000 };
    let blocking = median((0..reps).map(|r| p2p(&server, n, false, r)).collect());
    let pipelined = median((0..reps).map(|r| p2p(&server, n * 5, true, r)).collect());
    let py = median_of(
        (0..reps)
            .filter_map(|_| python(&server, "p2p", &["--n", "3000"]))
            .filter_map(|j| j["msgs_per_s"].as_f64())
            .collect(),
    );
    let zadd = redis_benchmark_zadd(&server);
    println!(
        "p2p:     blocking sends {blocking:>10.0} msg/s | pipelined sends {pipelined:>10.0} msg/s"
    );
    if let Some(py) = py {
        println!(
            "         channels_redis {py:.0} msg/s: ratio blocking {:.1}x, pipelined {:.1}x",
            blocking / py,
            pipelined / py
        );
    }
    if let Some(zadd) = zadd {
        println!(
            "         redis-benchmark -P 16 ZADD {zadd:.0}/s: pipelined p2p is {:.2} of it",
            pipelined / zadd
        );
    }

    let groups = if quick { 300 } else { 1_000 };
    let ours = median((0..reps).map(|r| fanout(&server, groups, r)).collect());
    let py = python(&server, "fanout", &["--groups", "300"])
        .and_then(|j| j["deliveries_per_s"].as_f64());
    match py {
        Some(py) => println!(
            "fan-out: {ours:>10.0} deliveries/s | channels_redis {py:>8.0} | ratio {:.1}x",
            ours / py
        ),
        None => println!("fan-out: {ours:>10.0} deliveries/s"),
    }

    let k = if quick { 500 } else { 2_000 };
    let runs: Vec<(f64, f64)> = (0..reps).map(|r| rpc(&server, k, r)).collect();
    let p50 = median(runs.iter().map(|r| r.0).collect());
    let p99 = median(runs.iter().map(|r| r.1).collect());
    let py = python(&server, "rpc", &["--k", "1000"]);
    let py50 = py.as_ref().and_then(|j| j["p50_us"].as_f64());
    let py99 = py.as_ref().and_then(|j| j["p99_us"].as_f64());
    match (py50, py99) {
        (Some(a), Some(b)) => println!(
            "rpc:     p50 {p50:.0} µs p99 {p99:.0} µs | channels_redis p50 {a:.0} µs p99 {b:.0} µs | p50 is {:.2} of theirs",
            p50 / a
        ),
        _ => println!("rpc:     p50 {p50:.0} µs p99 {p99:.0} µs"),
    }
    let runs: Vec<(f64, f64)> = (0..reps).map(|r| toolkit(&server, k, r)).collect();
    println!(
        "rpc toolkit: Client::request -> Worker p50 {:.0} µs p99 {:.0} µs",
        median(runs.iter().map(|r| r.0).collect()),
        median(runs.iter().map(|r| r.1).collect())
    );
}
