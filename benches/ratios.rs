//! Our figures beside raw `crossbeam-channel` baselines measured in the same process (carrying a
//! plain struct with the message's fields, and carrying our `Message`), and the ratios.
//!
//! Run with `cargo bench --bench ratios` (add `-- --quick` for a short run, or scenario names to
//! run only those). Each scenario runs 7 times (3 with `--quick`), alternating ours and the
//! baselines, and prints the median with the range of the runs.
//!
//! Scenarios (as in the peers' scripts, so ratios compare like for like):
//! - p2p: one producer thread, one consumer thread, messages `{type, n, payload: 64 bytes}`;
//! - p2p 4x4: four producers and four consumers on one channel;
//! - fan-out: `group_send` to 100 members, drained by one receiver thread;
//! - rpc: a service thread answers on a fresh reply channel per request; p50/p99 round trip;
//! - memory: bytes of RSS per queued small message (beside a `VecDeque` of plain structs), and
//!   what comes back after they expire.

mod common;

use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use channel_layer::prelude::*;
use common::{Plain, Spread, message, percentile, plain, rpc_by_hand, rpc_toolkit};
use crossbeam_channel as cb;

fn layer(capacity: usize) -> InMemoryLayer {
    InMemoryLayer::new(
        LayerConfig::builder()
            .capacity(capacity)
            .build()
            .expect("valid config"),
    )
}

/// Sends, waiting while the channel is full (the producer outruns the consumer) with the
/// layer's own waiting send: parked until a receiver makes room, never spinning a core that
/// the consumer needs.
fn send_retry<L: ChannelLayer + ?Sized>(layer: &L, channel: &str, msg: Message) {
    if let Err(e) = layer.send_until(channel, msg, None) {
        panic!("send failed: {e}");
    }
}

// ===== p2p =====

fn p2p_layer<L: ChannelLayer + Clone + 'static>(
    layer: L,
    producers: usize,
    consumers: usize,
    n: usize,
) -> f64 {
    let per_producer = n / producers;
    let total = per_producer * producers;
    let received = Arc::new(AtomicUsize::new(0));
    let start = Arc::new(Barrier::new(producers + consumers + 1));
    let mut handles = Vec::new();
    for _ in 0..producers {
        let (layer, start) = (layer.clone(), start.clone());
        handles.push(thread::spawn(move || {
            start.wait();
            for i in 0..per_producer {
                send_retry(&layer, "bench.p2p", message(i));
            }
        }));
    }
    for _ in 0..consumers {
        let (layer, start, received) = (layer.clone(), start.clone(), received.clone());
        handles.push(thread::spawn(move || {
            start.wait();
            while received.load(Ordering::Relaxed) < total {
                match layer.receive_timeout("bench.p2p", Duration::from_millis(20)) {
                    Ok(m) => {
                        black_box(m);
                        received.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) if e.is_timeout() => {}
                    Err(e) => panic!("receive failed: {e}"),
                }
            }
        }));
    }
    let t0 = Instant::now();
    start.wait();
    for h in handles {
        h.join().expect("bench thread");
    }
    total as f64 / t0.elapsed().as_secs_f64()
}

/// The raw baseline: crossbeam's bounded(1024) channel carrying what `make` builds (a plain
/// struct, or our `Message`), with the same threads and the same message count.
fn p2p_crossbeam<T: Send + 'static>(
    producers: usize,
    consumers: usize,
    n: usize,
    make: fn(usize) -> T,
) -> f64 {
    let per_producer = n / producers;
    let total = per_producer * producers;
    let (tx, rx) = cb::bounded::<T>(1024);
    let received = Arc::new(AtomicUsize::new(0));
    let start = Arc::new(Barrier::new(producers + consumers + 1));
    let mut handles = Vec::new();
    for _ in 0..producers {
        let (tx, start) = (tx.clone(), start.clone());
        handles.push(thread::spawn(move || {
            start.wait();
            for i in 0..per_producer {
                tx.send(make(i)).expect("send");
            }
        }));
    }
    for _ in 0..consumers {
        let (rx, start, received) = (rx.clone(), start.clone(), received.clone());
        handles.push(thread::spawn(move || {
            start.wait();
            while received.load(Ordering::Relaxed) < total {
                if let Ok(m) = rx.recv_timeout(Duration::from_millis(20)) {
                    black_box(m);
                    received.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let t0 = Instant::now();
    start.wait();
    for h in handles {
        h.join().expect("bench thread");
    }
    total as f64 / t0.elapsed().as_secs_f64()
}

// ===== fan-out =====

const MEMBERS: usize = 100;

fn fanout_layer(group_sends: usize, process_specific: bool) -> f64 {
    // Each member holds a whole run's group sends unread: set the capacity above that, as
    // the peers' scripts do.
    let layer = layer(group_sends * MEMBERS + 1);
    let channels: Vec<String> = (0..MEMBERS)
        .map(|i| {
            if process_specific {
                layer.new_channel("member").expect("channel")
            } else {
                format!("member.{i}")
            }
        })
        .collect();
    for c in &channels {
        layer.group_add("bench.room", c).expect("group_add");
    }
    let total = group_sends * MEMBERS;
    let drainer = {
        let layer = layer.clone();
        thread::spawn(move || {
            let mut got = 0usize;
            while got < total {
                let mut idle = true;
                for c in &channels {
                    while let Ok(m) = layer.try_receive(c) {
                        black_box(m);
                        got += 1;
                        idle = false;
                    }
                }
                if idle {
                    thread::yield_now();
                }
            }
        })
    };
    let t0 = Instant::now();
    for i in 0..group_sends {
        let report = layer
            .group_send("bench.room", message(i))
            .expect("group_send");
        assert_eq!(
            report.skipped_full, 0,
            "capacity is set above the run's size"
        );
    }
    drainer.join().expect("drainer");
    total as f64 / t0.elapsed().as_secs_f64()
}

/// The raw baseline: 100 crossbeam channels, each sent a clone of one shared value (an
/// `Arc` of a plain struct, or our `Message`).
fn fanout_crossbeam<T: Clone + Send + 'static>(group_sends: usize, make: fn(usize) -> T) -> f64 {
    let (txs, rxs): (Vec<_>, Vec<_>) = (0..MEMBERS).map(|_| cb::bounded::<T>(1024)).unzip();
    let total = group_sends * MEMBERS;
    let drainer = thread::spawn(move || {
        let mut got = 0usize;
        while got < total {
            let mut idle = true;
            for rx in &rxs {
                while let Ok(m) = rx.try_recv() {
                    black_box(m);
                    got += 1;
                    idle = false;
                }
            }
            if idle {
                thread::yield_now();
            }
        }
    });
    let t0 = Instant::now();
    for i in 0..group_sends {
        let msg = make(i);
        for tx in &txs {
            tx.send(msg.clone()).expect("send");
        }
    }
    drainer.join().expect("drainer");
    total as f64 / t0.elapsed().as_secs_f64()
}

// ===== rpc =====

/// The raw baseline: one fixed pair of crossbeam channels, requests on a bounded(1024) one and
/// replies on a bounded(1) one, carrying plain structs; p50 and p99 in microseconds.
fn rpc_crossbeam(requests: usize) -> (f64, f64) {
    let (tx, rx) = cb::bounded::<Option<Plain>>(1024);
    let (reply_tx, reply_rx) = cb::bounded::<Plain>(1);
    let service = thread::spawn(move || {
        while let Ok(Some(req)) = rx.recv() {
            let reply = Plain {
                kind: "svc.reply".to_owned(),
                n: req.n,
                payload: String::new(),
            };
            reply_tx.send(reply).expect("reply");
        }
    });
    let mut lat = Vec::with_capacity(requests);
    for i in 0..requests + 1000 {
        let t0 = Instant::now();
        tx.send(Some(plain(i))).expect("request");
        black_box(reply_rx.recv().expect("reply"));
        if i >= 1000 {
            lat.push(t0.elapsed().as_secs_f64() * 1e6);
        }
    }
    tx.send(None).expect("stop");
    service.join().expect("service");
    lat.sort_by(f64::total_cmp);
    (percentile(&lat, 0.5), percentile(&lat, 0.99))
}

// ===== memory =====

fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// Bytes of RSS per queued message: `n` messages queued and unread. Run in a child process
/// of its own for each kind, so that neither reuses pages the other freed.
fn memory_child(kind: &str, n: usize) {
    let (Some(start), layer) = (
        rss_bytes(),
        InMemoryLayer::new(
            LayerConfig::builder()
                .capacity(n + 1)
                .build()
                .expect("config"),
        ),
    ) else {
        return;
    };
    let mut plains = std::collections::VecDeque::new();
    for i in 0..n {
        match kind {
            "plain" => plains.push_back(plain(i)),
            _ => layer.send("bench.memory", message(i)).expect("send"),
        }
    }
    let grown = rss_bytes().unwrap_or(0).saturating_sub(start);
    black_box(&plains);
    println!("{}", grown as f64 / n as f64);
}

fn memory_of(kind: &str, n: usize) -> Option<f64> {
    let out = std::process::Command::new(std::env::current_exe().ok()?)
        .args(["--memory-child", kind, &n.to_string()])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// What expired messages give back: queued messages expire unread, the sweep drops them, and
/// a second fill reuses their memory.
fn expiry(n: usize) {
    let layer = InMemoryLayer::new(
        LayerConfig::builder()
            .capacity(n + 1)
            .expiry(Duration::from_millis(500))
            .build()
            .expect("config"),
    );
    let fill = |round: usize| {
        for i in 0..n {
            layer
                .send("bench.memory", message(round * n + i))
                .expect("send");
        }
    };
    // Nobody reads the channel: the periodic sweep must drop the expired messages.
    let drain = || {
        let t0 = Instant::now();
        while layer.metrics().queued_messages > 0 && t0.elapsed() < Duration::from_secs(10) {
            thread::sleep(Duration::from_millis(50));
        }
    };
    let (Some(start), mib) = (rss_bytes(), |b: u64| b as f64 / 1048576.0) else {
        println!("memory: /proc/self/statm unavailable; skipped");
        return;
    };
    fill(0);
    let peak = rss_bytes().unwrap_or(0);
    drain();
    let m = layer.metrics();
    fill(1);
    let second_peak = rss_bytes().unwrap_or(0);
    drain();
    let grown = peak.saturating_sub(start);
    println!(
        "expiry:      {} of {n} expired unread and swept ({} still queued); a second fill grew RSS by {:.1} MiB, {:.0}% of the first: freed memory is reused",
        m.expired,
        m.queued_messages,
        mib(second_peak.saturating_sub(peak)),
        100.0 * second_peak.saturating_sub(peak) as f64 / grown.max(1) as f64
    );
}

/// `name: ours | baseline | ratio` with medians and ranges.
fn row(name: &str, ours: &Spread, base_name: &str, base: &Spread, unit: &str) {
    println!(
        "{name:<12} ours {ours} {unit} | {base_name} {base} {unit} | ratio {:.2}",
        ours.median / base.median
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [flag, kind, n] = args.as_slice()
        && flag == "--memory-child"
    {
        memory_child(kind, n.parse().expect("count"));
        return;
    }
    let quick = args.iter().any(|a| a == "--quick");
    // Any other argument that is not a flag selects scenarios by name (p2p, 4x4, fan-out, rpc, memory).
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    let run = |name: &str| filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str()));
    let reps = if quick { 3 } else { 7 };
    let n = if quick { 200_000 } else { 1_000_000 };
    println!(
        "channel-layer ratios: median [min-max] of {reps} runs, ours beside raw crossbeam-channel in the same process"
    );
    println!("machine: {}", common::machine());
    println!("message: {{type, n, payload: 64 bytes}}; plain = a Rust struct with those fields");

    if run("p2p 1x1") {
        let (mut ours, mut dyn_ours, mut msg, mut base) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..reps {
            ours.push(p2p_layer(layer(1024), 1, 1, n));
            dyn_ours.push(p2p_layer(AnyLayer::new(layer(1024)), 1, 1, n));
            msg.push(p2p_crossbeam(1, 1, n, message));
            base.push(p2p_crossbeam(1, 1, n, plain));
        }
        let (o, d, m, b) = (
            Spread::of(ours),
            Spread::of(dyn_ours),
            Spread::of(msg),
            Spread::of(base),
        );
        row("p2p 1x1", &o, "crossbeam bounded(1024) plain", &b, "msg/s");
        println!(
            "             AnyLayer {d} msg/s (ratio {:.2}) | crossbeam carrying Message {m} msg/s (ratio {:.2})",
            d.median / b.median,
            m.median / b.median
        );
    }
    if run("p2p 4x4") {
        let (mut ours, mut base) = (Vec::new(), Vec::new());
        for _ in 0..reps {
            ours.push(p2p_layer(layer(1024), 4, 4, n));
            base.push(p2p_crossbeam(4, 4, n, plain));
        }
        row(
            "p2p 4x4",
            &Spread::of(ours),
            "crossbeam plain",
            &Spread::of(base),
            "msg/s",
        );
    }
    if run("fan-out") {
        let g = n / MEMBERS;
        let (mut ours, mut plain_names, mut msg, mut base) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..reps {
            ours.push(fanout_layer(g, true));
            plain_names.push(fanout_layer(g, false));
            msg.push(fanout_crossbeam(g, message));
            base.push(fanout_crossbeam(g, |i| Arc::new(plain(i))));
        }
        let (o, p, m, b) = (
            Spread::of(ours),
            Spread::of(plain_names),
            Spread::of(msg),
            Spread::of(base),
        );
        row(
            "fan-out 100",
            &o,
            "crossbeam x100, Arc<plain> clones",
            &b,
            "deliveries/s",
        );
        println!(
            "             members with plain names {p} (ratio {:.2}) | crossbeam carrying Message {m} (ratio {:.2})",
            p.median / b.median,
            m.median / b.median
        );
    }
    if run("rpc") {
        let k = if quick { 20_000 } else { 100_000 };
        let (mut p50, mut p99, mut bp50, mut bp99) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..reps {
            let l = layer(1024);
            let (a, b) = rpc_by_hand(l.clone(), l, k, 1000);
            p50.push(a);
            p99.push(b);
            let (a, b) = rpc_crossbeam(k);
            bp50.push(a);
            bp99.push(b);
        }
        let (p50, p99, bp50, bp99) = (
            Spread::of(p50),
            Spread::of(p99),
            Spread::of(bp50),
            Spread::of(bp99),
        );
        println!(
            "rpc          ours (fresh reply channel) p50 {p50} µs, p99 {p99} µs | crossbeam fixed pair, bounded(1) p50 {bp50} µs, p99 {bp99} µs | p50 ratio {:.2}",
            p50.median / bp50.median
        );
        let (mut t50, mut t99) = (Vec::new(), Vec::new());
        for _ in 0..reps {
            let l = AnyLayer::new(layer(1024));
            let (a, b) = rpc_toolkit(l.clone(), l, k / 2, 1000);
            t50.push(a);
            t99.push(b);
        }
        println!(
            "rpc toolkit  Client::request -> Worker p50 {} µs, p99 {} µs",
            Spread::of(t50),
            Spread::of(t99)
        );
    }
    if run("memory") {
        let m = if quick { 200_000 } else { 1_000_000 };
        let runs = if quick { 1 } else { 3 };
        let ours: Vec<f64> = (0..runs).filter_map(|_| memory_of("ours", m)).collect();
        let base: Vec<f64> = (0..runs).filter_map(|_| memory_of("plain", m)).collect();
        if ours.is_empty() || base.is_empty() {
            println!("memory: /proc/self/statm unavailable; skipped");
        } else {
            row(
                "memory",
                &Spread::of(ours),
                "VecDeque of plain",
                &Spread::of(base),
                &format!("bytes/queued message ({m} queued)"),
            );
        }
        expiry(m);
    }
}
