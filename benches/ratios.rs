//! Our figures beside a raw `crossbeam-channel` baseline carrying the same payload, measured in
//! the same process, and the ratio between them.
//!
//! Run with `cargo bench --bench ratios` (add `-- --quick` for a short run). Each scenario runs
//! `REPS` times, alternating ours and the baseline, and prints medians.
//!
//! Scenarios (as in the peers' scripts, so ratios compare like for like):
//! - p2p: one producer thread, one consumer thread, messages `{type, n, payload: 64 bytes}`;
//! - p2p 4x4: four producers and four consumers on one channel;
//! - fan-out: `group_send` to 100 members, drained by one receiver thread;
//! - rpc: a service thread answers on a fresh reply channel per request; p50/p99 round trip;
//! - memory: bytes per queued small message, and what comes back after they expire.

mod common;

use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use channel_layer::prelude::*;
use common::{median, message, percentile, rpc_by_hand, rpc_toolkit};
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

fn p2p_crossbeam(producers: usize, consumers: usize, n: usize) -> f64 {
    let per_producer = n / producers;
    let total = per_producer * producers;
    let (tx, rx) = cb::bounded::<Message>(1024);
    let received = Arc::new(AtomicUsize::new(0));
    let start = Arc::new(Barrier::new(producers + consumers + 1));
    let mut handles = Vec::new();
    for _ in 0..producers {
        let (tx, start) = (tx.clone(), start.clone());
        handles.push(thread::spawn(move || {
            start.wait();
            for i in 0..per_producer {
                tx.send(message(i)).expect("send");
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

fn fanout_crossbeam(group_sends: usize) -> f64 {
    let (txs, rxs): (Vec<_>, Vec<_>) = (0..MEMBERS).map(|_| cb::bounded::<Message>(1024)).unzip();
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
        let msg = message(i);
        for tx in &txs {
            tx.send(msg.clone()).expect("send");
        }
    }
    drainer.join().expect("drainer");
    total as f64 / t0.elapsed().as_secs_f64()
}

// ===== rpc =====

fn rpc_crossbeam(requests: usize) -> (f64, f64) {
    let (tx, rx) = cb::bounded::<(Message, Option<cb::Sender<Message>>)>(1024);
    let service = thread::spawn(move || {
        while let Ok((req, Some(reply))) = rx.recv() {
            let _ = reply.send(Message::new("svc.reply").with("n", req.get("n").cloned()));
        }
    });
    let mut lat = Vec::with_capacity(requests);
    for i in 0..requests + 1000 {
        let t0 = Instant::now();
        let (rtx, rrx) = cb::bounded(1);
        tx.send((message(i), Some(rtx))).expect("request");
        black_box(rrx.recv().expect("reply"));
        if i >= 1000 {
            lat.push(t0.elapsed().as_secs_f64() * 1e6);
        }
    }
    tx.send((Message::default(), None)).expect("stop");
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

fn memory(n: usize) {
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
    let after_expiry = rss_bytes().unwrap_or(0);
    let m = layer.metrics();
    // Fill again: the memory the expired messages held is reused, so the process does not grow.
    fill(1);
    let second_peak = rss_bytes().unwrap_or(0);
    drain();
    let grown = peak.saturating_sub(start);
    println!(
        "memory: {n} queued messages {{type, n, 64-byte payload}}: +{:.1} MiB RSS = {:.0} bytes/message",
        mib(grown),
        grown as f64 / n as f64
    );
    println!(
        "memory: after expiry: {} expired, {} queued, {} channels; RSS {:.1} MiB above start (the allocator keeps freed pages)",
        m.expired,
        m.queued_messages,
        m.channels,
        mib(after_expiry.saturating_sub(start))
    );
    println!(
        "memory: a second fill of {n} after expiry grew RSS by {:.1} MiB ({:.0}% of the first fill): freed memory is reused, not leaked",
        mib(second_peak.saturating_sub(peak)),
        100.0 * second_peak.saturating_sub(peak) as f64 / grown.max(1) as f64
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    // Any other argument that is not a flag selects scenarios by name (p2p, 4x4, fan-out, rpc, memory).
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    let run = |name: &str| filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str()));
    let reps = if quick { 3 } else { 7 };
    let n = if quick { 200_000 } else { 1_000_000 };
    println!(
        "channel-layer ratios: medians of {reps} runs, ours vs raw crossbeam-channel (bounded 1024) carrying the same Message"
    );
    println!(
        "machine: {} cores",
        thread::available_parallelism().map_or(0, |n| n.get())
    );

    if run("p2p 1x1") {
        let (mut ours, mut dyn_ours, mut base) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..reps {
            ours.push(p2p_layer(layer(1024), 1, 1, n));
            dyn_ours.push(p2p_layer(AnyLayer::new(layer(1024)), 1, 1, n));
            base.push(p2p_crossbeam(1, 1, n));
        }
        let (o, d, b) = (median(ours), median(dyn_ours), median(base));
        println!(
            "p2p 1x1:     InMemoryLayer {o:>12.0} msg/s | AnyLayer {d:>12.0} msg/s | crossbeam {b:>12.0} msg/s | ratio {:.2} (dyn {:.2})",
            o / b,
            d / b
        );
    }
    if run("p2p 4x4") {
        let (mut ours, mut base) = (Vec::new(), Vec::new());
        for _ in 0..reps {
            ours.push(p2p_layer(layer(1024), 4, 4, n));
            base.push(p2p_crossbeam(4, 4, n));
        }
        let (o, b) = (median(ours), median(base));
        println!(
            "p2p 4x4:     InMemoryLayer {o:>12.0} msg/s | crossbeam {b:>12.0} msg/s | ratio {:.2}",
            o / b
        );
    }
    if run("fan-out") {
        let g = n / MEMBERS;
        let (mut ours, mut plain, mut base) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..reps {
            ours.push(fanout_layer(g, true));
            plain.push(fanout_layer(g, false));
            base.push(fanout_crossbeam(g));
        }
        let (o, p, b) = (median(ours), median(plain), median(base));
        println!(
            "fan-out 100: InMemoryLayer {o:>12.0} deliveries/s (members from new_channel; {p:.0} with plain names) | crossbeam {b:>12.0} deliveries/s | ratio {:.2} (plain {:.2})",
            o / b,
            p / b
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
        let (p50, p99, bp50, bp99) = (median(p50), median(p99), median(bp50), median(bp99));
        println!(
            "rpc:         InMemoryLayer p50 {p50:.2} µs p99 {p99:.2} µs | crossbeam p50 {bp50:.2} µs p99 {bp99:.2} µs | p50 ratio {:.2}",
            p50 / bp50
        );
        let (mut t50, mut t99) = (Vec::new(), Vec::new());
        for _ in 0..reps {
            let l = AnyLayer::new(layer(1024));
            let (a, b) = rpc_toolkit(l.clone(), l, k / 2, 1000);
            t50.push(a);
            t99.push(b);
        }
        println!(
            "rpc toolkit: Client::request -> Worker p50 {:.2} µs p99 {:.2} µs",
            median(t50),
            median(t99)
        );
    }
    if run("memory") {
        memory(if quick { 200_000 } else { 1_000_000 });
    }
}
