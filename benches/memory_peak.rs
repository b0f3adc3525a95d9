//! How the in-memory layer gives memory back after a peak, beside a raw baseline measured the
//! same way in the same process.
//!
//! Run with `cargo bench --bench memory_peak` (`MEMORY_PEAK_N` sets the count, 1,000,000 by
//! default; other arguments are ignored). One run: it is a memory profile, not a timing.
//!
//! - ours: N reply channels of an `InMemoryLayer::default()`, one small message each, drained
//!   with `try_receive`, then ~2.5 s for the layer's sweep (about once a second) to forget the
//!   idle channels, then the layer dropped;
//! - raw: the same names and messages in a `HashMap<String, VecDeque<Message>>`, drained (an
//!   entry is removed when its queue empties), `shrink_to_fit`, then dropped.
//!
//! At each stage it prints RSS (VmRSS) and live heap (bytes allocated and not yet freed, counted
//! by the bench's global allocator). RSS after a free depends on what glibc keeps; live heap
//! does not depend on the allocator. `malloc_trim(0)` runs between the two parts, so the second
//! starts clean.

// The library forbids unsafe code; this bench needs it for its allocator and `malloc_trim`.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use channel_layer::prelude::*;

/// `System`, counting the bytes it has handed out and not yet had back.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is passed on to `System` unchanged, so `System`'s guarantees hold; the
// counter only records sizes and never touches the memory.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: our caller meets `alloc`'s contract, which is the one `System` needs.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as in `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator, that is from `System`, with `layout`.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from `System` with `layout`; our caller meets the rest of
        // `realloc`'s contract.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            // Grow before shrinking, so the counter never dips below what is live.
            LIVE.fetch_add(new_size, Ordering::Relaxed);
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

#[cfg(all(target_os = "linux", target_env = "gnu"))]
// SAFETY: glibc's `int malloc_trim(size_t pad)`: no pointers, no preconditions, callable from
// any thread at any time, so it is declared safe to call.
unsafe extern "C" {
    safe fn malloc_trim(pad: usize) -> std::ffi::c_int;
}

/// Asks glibc to return the free memory it keeps to the system; false where there is no glibc.
fn trim() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        malloc_trim(0);
        true
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

const MIB: f64 = 1024.0 * 1024.0;

/// VmRSS in MiB, if `/proc/self/status` has it.
fn rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// RSS and live heap (MiB) at one stage; `None` where a figure is unavailable.
#[derive(Clone, Copy)]
struct Sample {
    rss: Option<f64>,
    heap: Option<f64>,
}

fn sample() -> Sample {
    Sample {
        rss: rss_mib(),
        heap: Some(LIVE.load(Ordering::Relaxed) as f64 / MIB),
    }
}

/// The figures after `malloc_trim(0)`, or none without glibc.
fn trimmed() -> Sample {
    if trim() {
        sample()
    } else {
        Sample {
            rss: None,
            heap: None,
        }
    }
}

const STAGES: [&str; 6] = [
    "start",
    "peak",
    "drained",
    "swept / shrunk",
    "dropped",
    "malloc_trim(0)",
];

/// The reply the scenario queues on each channel.
fn reply() -> Message {
    Message::new("http.response")
        .with("status", 200)
        .with("body", "ok")
}

/// The layer: N reply channels with a message each, drained, swept, dropped.
fn ours(n: usize) -> [Sample; 6] {
    let start = sample();
    let layer = InMemoryLayer::default();
    let mut names = Vec::with_capacity(n);
    for _ in 0..n {
        let name = layer.new_channel("reply").expect("new_channel");
        layer.send(&name, reply()).expect("send");
        names.push(name);
    }
    let peak = sample();
    for name in &names {
        layer.try_receive(name).expect("try_receive");
    }
    // The caller is done with its reply channels: what is left is the layer's.
    drop(names);
    let drained = sample();
    // The channels are idle now; the sweep runs about once a second and forgets them.
    thread::sleep(Duration::from_millis(2500));
    let swept = sample();
    drop(layer);
    let dropped = sample();
    [start, peak, drained, swept, dropped, trimmed()]
}

/// The raw baseline: the same in a map of queues, as a hand-written table would keep them.
fn raw(n: usize) -> [Sample; 6] {
    let start = sample();
    // Names minted as the layer mints them (new_channel only formats a name; the minting layer
    // stores nothing and is gone before the peak).
    let minter = InMemoryLayer::default();
    let names: Vec<String> = (0..n)
        .map(|_| minter.new_channel("reply").expect("new_channel"))
        .collect();
    drop(minter);
    let mut map: HashMap<String, VecDeque<Message>> = HashMap::new();
    for name in &names {
        map.entry(name.clone()).or_default().push_back(reply());
    }
    let peak = sample();
    for name in &names {
        let queue = map.get_mut(name).expect("queued");
        queue.pop_front().expect("a message");
        if queue.is_empty() {
            map.remove(name);
        }
    }
    drop(names);
    let drained = sample();
    map.shrink_to_fit();
    let shrunk = sample();
    drop(map);
    let dropped = sample();
    [start, peak, drained, shrunk, dropped, trimmed()]
}

fn mib(x: Option<f64>) -> String {
    x.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.1}"))
}

fn main() {
    // Cargo passes `--bench` (and users may pass `--quick`): nothing to choose here.
    let n: usize = std::env::var("MEMORY_PEAK_N")
        .ok()
        .map(|v| v.replace('_', "").parse().expect("MEMORY_PEAK_N: a count"))
        .unwrap_or(1_000_000);
    let cores = thread::available_parallelism().map_or(0, |c| c.get());
    println!(
        "channel-layer memory_peak: N = {n} reply channels, one message each; ours first, then the raw baseline, malloc_trim(0) between; {cores} cores"
    );
    println!(
        "RSS after a free depends on glibc (what it keeps); live heap (allocated, not freed) does not depend on the allocator"
    );

    let began = Instant::now();
    // Ours ends with malloc_trim(0), so the baseline starts clean.
    let ours = ours(n);
    let raw = raw(n);

    println!(
        "{:<16} {:>10} {:>10} | {:>10} {:>10}   (MiB)",
        "stage", "ours RSS", "ours heap", "raw RSS", "raw heap"
    );
    for (i, stage) in STAGES.iter().enumerate() {
        println!(
            "{:<16} {:>10} {:>10} | {:>10} {:>10}",
            stage,
            mib(ours[i].rss),
            mib(ours[i].heap),
            mib(raw[i].rss),
            mib(raw[i].heap)
        );
    }
    println!(
        "ours: InMemoryLayer::default(), try_receive each, 2.5 s for the sweep; raw: HashMap<String, VecDeque<Message>>, emptied entries removed, shrink_to_fit; {:.1} s in all",
        began.elapsed().as_secs_f64()
    );
}
