//! The Redis backend against one private loopback `redis-server`, with the Python peers'
//! figures measured on the same server in the same run, and the ratios between them.
//!
//! Run with `cargo bench --features redis --bench redis_ratios` (add `-- --quick` for a short
//! run). It starts its own `redis-server` on a free port, and runs channels_redis with
//! `benches/peers/channels_redis_bench.py` in the venv the interop tests use
//! (`target/interop-venv`, installed with pip on first use; without Python only our figures are
//! printed). Scenarios:
//! - p2p: one producer, one consumer, messages `{type, n, payload: 64 bytes}`: with blocking
//!   sends (one round trip each) and with pipelined async sends (a window of 256 kept in
//!   flight) and a receive prefetch of 256;
//! - fan-out: `group_send` to 100 members of this process, one receiver draining them;
//! - rpc: a service answers on a fresh reply channel per request; p50 and p99 round trip;
//! - and the server's own figures: `redis-benchmark -P 16` ZADD (its pipelined rate) and one
//!   `PING` round trip on a plain socket (what a round trip costs).

mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use channel_layer::AnyLayer;
use channel_layer::redis::{RedisConfig, RedisLayer};
use common::{Spread, median, rpc_by_hand, rpc_toolkit};
use support::redis_cluster::Cluster;
use support::redis_server::RedisServer;

const MEMBERS: usize = 100;

/// Where a bench's layers go: one server, or a cluster.
trait Target {
    fn config(&self) -> RedisConfig;
}

impl Target for RedisServer {
    fn config(&self) -> RedisConfig {
        RedisConfig::new(self.url())
    }
}

impl Target for Cluster {
    fn config(&self) -> RedisConfig {
        RedisConfig::from_url(&format!("redis+cluster://{}", self.seeds())).expect("cluster URL")
    }
}

fn layer(target: &dyn Target, prefix: &str, prefetch: usize) -> RedisLayer {
    let mut config = target.config();
    config.prefix = prefix.to_owned();
    config.layer.capacity = 1_000_000;
    config.receive_prefetch = prefetch;
    RedisLayer::new(config).expect("config")
}

fn p2p(server: &dyn Target, n: usize, pipelined: bool, run: usize) -> f64 {
    let prefix = format!("p2p{run}{}:", u8::from(pipelined));
    let producer = layer(server, &prefix, 0);
    let consumer = layer(server, &prefix, if pipelined { 256 } else { 0 });
    common::p2p(producer, consumer, n, pipelined)
}

fn fanout(server: &dyn Target, groups: usize, run: usize) -> f64 {
    common::fanout(layer(server, &format!("fan{run}:"), 0), MEMBERS, groups)
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

/// Runs channels_redis on `server` (`benches/peers/channels_redis_bench.py`, in the venv the
/// interop tests use, installed on first use); the JSON object it prints.
fn python(server: &RedisServer, scenario: &str, count: usize) -> Option<serde_json::Value> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let script = root.join("benches/peers/channels_redis_bench.py");
    let python = support::python::venv_python(&support::python::python_venv()?);
    let out = Command::new(python)
        .arg(script)
        .args([scenario, &server.url(), &count.to_string()])
        .output()
        .ok()?;
    if !out.status.success() {
        println!(
            "channels_redis {scenario} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return None;
    }
    let line = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()?
        .to_owned();
    serde_json::from_str(&line).ok()
}

/// One loopback round trip to the server (`PING`, answered `+PONG`) on a plain socket, in
/// microseconds: p50 of `n`.
fn ping_round_trip(server: &RedisServer, n: usize) -> f64 {
    use std::io::{Read, Write};
    let mut socket =
        std::net::TcpStream::connect(("127.0.0.1", server.port())).expect("connect to redis");
    socket.set_nodelay(true).expect("nodelay");
    let mut buf = [0u8; 7];
    let mut lat = Vec::with_capacity(n);
    for i in 0..n + 100 {
        let t = Instant::now();
        socket.write_all(b"PING\r\n").expect("ping");
        socket.read_exact(&mut buf).expect("pong");
        if i >= 100 {
            lat.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    median(lat)
}

/// Runs `redis-benchmark` against `server` with `args`; the requests per second of the test
/// whose CSV row is named `test`.
fn redis_benchmark(server: &RedisServer, args: &[&str], test: &str) -> Option<f64> {
    let port = server.port().to_string();
    let out = Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &port, "--csv"])
        .args(args)
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let row = text.lines().find(|l| {
        l.strip_prefix('"')
            .and_then(|l| l.strip_prefix(test))
            .is_some_and(|l| l.starts_with('"'))
    })?;
    row.split(',').nth(1)?.trim_matches('"').parse().ok()
}

/// `redis-benchmark -P 16` ZADD: the server's own pipelined rate.
fn redis_benchmark_zadd(server: &RedisServer) -> Option<f64> {
    redis_benchmark(server, &["-n", "200000", "-P", "16", "-t", "zadd"], "ZADD")
}

/// `redis-benchmark -c 1` PING: one client, one request at a time, through its event loop;
/// the microseconds per request.
fn redis_benchmark_ping_c1(server: &RedisServer) -> Option<f64> {
    redis_benchmark(
        server,
        &["-n", "20000", "-c", "1", "-t", "ping"],
        "PING_MBULK",
    )
    .map(|rps| 1e6 / rps)
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let reps = if quick { 3 } else { 5 };
    let Some(server) = RedisServer::start() else {
        println!("redis-server is not available: nothing to measure");
        return;
    };
    println!(
        "channel-layer over redis beside channels_redis 4.3 (Python) and the server's own figures, one private loopback redis-server; median [min-max] of {reps} runs"
    );
    println!("machine: {}", common::machine());

    let n = if quick { 5_000 } else { 20_000 };
    let blocking = Spread::of((0..reps).map(|r| p2p(&server, n, false, r)).collect());
    let pipelined = Spread::of((0..reps).map(|r| p2p(&server, n * 5, true, r)).collect());
    let py: Vec<f64> = (0..reps)
        .filter_map(|_| python(&server, "p2p", 3000))
        .filter_map(|j| j["msgs_per_s"].as_f64())
        .collect();
    let zadd: Vec<f64> = (0..reps)
        .filter_map(|_| redis_benchmark_zadd(&server))
        .collect();
    println!("p2p          blocking sends {blocking} msg/s | pipelined sends {pipelined} msg/s");
    if !py.is_empty() {
        let py = Spread::of(py);
        println!(
            "             channels_redis {py} msg/s: ratio blocking {:.1}x, pipelined {:.1}x",
            blocking.median / py.median,
            pipelined.median / py.median
        );
    }
    if !zadd.is_empty() {
        let zadd = Spread::of(zadd);
        println!(
            "             redis-benchmark -P 16 ZADD {zadd}/s: pipelined p2p is {:.2} of it",
            pipelined.median / zadd.median
        );
    }

    let groups = if quick { 300 } else { 1_000 };
    let ours = Spread::of((0..reps).map(|r| fanout(&server, groups, r)).collect());
    let py: Vec<f64> = (0..reps.min(3))
        .filter_map(|_| python(&server, "fanout", 100))
        .filter_map(|j| j["deliveries_per_s"].as_f64())
        .collect();
    if py.is_empty() {
        println!("fan-out 100  ours {ours} deliveries/s");
    } else {
        let py = Spread::of(py);
        println!(
            "fan-out 100  ours {ours} deliveries/s | channels_redis {py} | ratio {:.1}x",
            ours.median / py.median
        );
    }

    let k = if quick { 500 } else { 2_000 };
    let rtt = Spread::of((0..reps).map(|_| ping_round_trip(&server, k)).collect());
    let c1: Vec<f64> = (0..reps)
        .filter_map(|_| redis_benchmark_ping_c1(&server))
        .collect();
    let runs: Vec<(f64, f64)> = (0..reps).map(|r| rpc(&server, k, r)).collect();
    let p50 = Spread::of(runs.iter().map(|r| r.0).collect());
    let p99 = Spread::of(runs.iter().map(|r| r.1).collect());
    println!(
        "rpc          ours p50 {p50} µs, p99 {p99} µs | one loopback round trip (PING) {rtt} µs | p50 = {:.1} round trips",
        p50.median / rtt.median
    );
    if !c1.is_empty() {
        let c1 = Spread::of(c1);
        println!(
            "             redis-benchmark -c 1 PING {c1} µs per request (its event loop sleeps and wakes each time) | p50 = {:.1} of those",
            p50.median / c1.median
        );
    }
    let py: Vec<(f64, f64)> = (0..reps.min(3))
        .filter_map(|_| python(&server, "rpc", 1000))
        .filter_map(|j| Some((j["p50_us"].as_f64()?, j["p99_us"].as_f64()?)))
        .collect();
    if !py.is_empty() {
        let a = Spread::of(py.iter().map(|r| r.0).collect());
        let b = Spread::of(py.iter().map(|r| r.1).collect());
        println!(
            "             channels_redis p50 {a} µs, p99 {b} µs | our p50 is {:.2} of theirs",
            p50.median / a.median
        );
    }
    let runs: Vec<(f64, f64)> = (0..reps).map(|r| toolkit(&server, k, r)).collect();
    println!(
        "rpc toolkit  Client::request -> Worker p50 {} µs, p99 {} µs",
        Spread::of(runs.iter().map(|r| r.0).collect()),
        Spread::of(runs.iter().map(|r| r.1).collect())
    );

    // The same on a cluster of three masters (each with a replica), all on this machine.
    if let Some(cluster) = Cluster::start() {
        let blocking = Spread::of((0..reps).map(|r| p2p(&cluster, n, false, r)).collect());
        let pipelined = Spread::of((0..reps).map(|r| p2p(&cluster, n * 5, true, r)).collect());
        let fan = Spread::of((0..reps).map(|r| fanout(&cluster, groups, r)).collect());
        println!(
            "cluster      3 masters + 3 replicas on this machine: blocking sends {blocking} msg/s | pipelined sends {pipelined} msg/s | fan-out 100 {fan} deliveries/s"
        );
    }
}
