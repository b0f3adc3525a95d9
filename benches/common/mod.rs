//! What the bench binaries share: the peers' message, medians, and the two request/response
//! round trips (by hand over reply channels, and through the services toolkit), timed the
//! same way on every backend.

#![allow(dead_code, unreachable_pub)]

use std::hint::black_box;
use std::thread;
use std::time::{Duration, Instant};

use channel_layer::service::{Client, Worker};
use channel_layer::{AnyLayer, ChannelLayer, ChannelLayerExt, Message, Value};

/// The peers' 64-byte payload.
pub const PAYLOAD: &str = "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";

/// The peers' message: `{type, n, payload}`.
pub fn message(n: usize) -> Message {
    Message::new("bench.msg")
        .with("n", n as i64)
        .with("payload", PAYLOAD)
}

/// The peers' message as a plain Rust struct: the raw baseline, what a hand-written channel
/// between two threads would carry.
#[derive(Clone, Debug)]
pub struct Plain {
    pub kind: String,
    pub n: i64,
    pub payload: String,
}

/// The peers' message as a [`Plain`] struct.
pub fn plain(n: usize) -> Plain {
    Plain {
        kind: "bench.msg".to_owned(),
        n: n as i64,
        payload: PAYLOAD.to_owned(),
    }
}

/// The median (the upper one for an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A figure measured several times: its median and the range around it.
#[derive(Clone, Copy, Debug)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    /// The median, minimum and maximum of `samples` (at least one).
    pub fn of(mut samples: Vec<f64>) -> Spread {
        samples.sort_by(f64::total_cmp);
        Spread {
            median: samples[samples.len() / 2],
            min: samples[0],
            max: samples[samples.len() - 1],
        }
    }

    /// The spread as a share of the median: (max - min) / median.
    pub fn relative(&self) -> f64 {
        (self.max - self.min) / self.median
    }
}

/// Prints a rate as `1.34M [1.20M-1.41M]`, a latency as `2.21 [2.10-2.60]`.
impl std::fmt::Display for Spread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let unit = |x: f64| {
            if x >= 1e6 {
                format!("{:.2}M", x / 1e6)
            } else if x >= 1e4 {
                format!("{:.0}k", x / 1e3)
            } else if x >= 100.0 {
                format!("{x:.0}")
            } else {
                format!("{x:.2}")
            }
        };
        write!(
            f,
            "{} [{}-{}]",
            unit(self.median),
            unit(self.min),
            unit(self.max)
        )
    }
}

/// The machine's load average over the last minute, as `/proc/loadavg` reports it.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".to_owned())
}

/// What the figures were measured on: cores, CPU model and load.
pub fn machine() -> String {
    let cores = thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    format!(
        "{cores} cores ({model}), load average {} at start",
        load_average()
    )
}

/// The `p` quantile of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// Times `requests` round trips after `warmup` more, in microseconds: p50 and p99.
fn time_round_trips(
    requests: usize,
    warmup: usize,
    mut round_trip: impl FnMut(usize),
) -> (f64, f64) {
    let mut lat = Vec::with_capacity(requests);
    for i in 0..requests + warmup {
        let t = Instant::now();
        round_trip(i);
        if i >= warmup {
            lat.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    lat.sort_by(f64::total_cmp);
    (percentile(&lat, 0.5), percentile(&lat, 0.99))
}

/// The round trip by hand, as the peers' script does it: a service thread receives on
/// `svc.request` and answers on the `reply_channel` of each request; the client mints a fresh
/// reply channel per request and waits there.
pub fn rpc_by_hand<L>(service: L, client: L, requests: usize, warmup: usize) -> (f64, f64)
where
    L: ChannelLayer + Send + 'static,
{
    let server = thread::spawn(move || {
        loop {
            let req = service.receive("svc.request").expect("request");
            let Some(reply_to) = req.reply_channel() else {
                return;
            };
            let reply =
                Message::new("svc.reply").with("n", req.get("n").cloned().unwrap_or(Value::Null));
            service.send(reply_to, reply).expect("reply");
        }
    });
    let times = time_round_trips(requests, warmup, |i| {
        let reply_to = client.new_channel("reply").expect("channel");
        client
            .send("svc.request", message(i).with_reply_channel(&reply_to))
            .expect("request");
        black_box(
            client
                .receive_timeout(&reply_to, Duration::from_secs(10))
                .expect("reply"),
        );
    });
    client
        .send("svc.request", Message::new("stop"))
        .expect("stop");
    server.join().expect("service");
    times
}

/// The round trip through the services toolkit: `Client::request` to a one-thread `Worker`
/// (fresh reply channel, correlation ID, dispatch by type).
pub fn rpc_toolkit(
    service: AnyLayer,
    client: AnyLayer,
    requests: usize,
    warmup: usize,
) -> (f64, f64) {
    let worker = Worker::builder(service)
        .channel("svc.request")
        .handle("bench.msg", |_ctx, m| {
            Ok(Some(
                Message::new("svc.reply").with("n", m.get("n").cloned().unwrap_or(Value::Null)),
            ))
        })
        .start()
        .expect("worker");
    let client = Client::new(client);
    let times = time_round_trips(requests, warmup, |i| {
        black_box(
            client
                .request("svc.request", message(i), Duration::from_secs(10))
                .expect("reply"),
        );
    });
    worker.shutdown(Duration::from_secs(1));
    times
}

/// One producer, one consumer on `bench.p2p`: `n` messages, sent one blocking send at a time
/// or with a window of 256 async sends in flight (a new one starts as each one ends).
/// Messages per second, from the first send to the last receive.
pub fn p2p<L: ChannelLayer + Send + 'static>(
    producer: L,
    consumer: L,
    n: usize,
    pipelined: bool,
) -> f64 {
    let start = Instant::now();
    let receiving = thread::spawn(move || {
        for i in 0..n {
            match consumer.receive_timeout("bench.p2p", Duration::from_secs(30)) {
                Ok(m) => {
                    black_box(m);
                }
                Err(e) => panic!(
                    "receive {i} of {n}: {e}; {:?}; {:?}",
                    consumer.metrics(),
                    consumer.inspect(10)
                ),
            }
        }
    });
    if pipelined {
        futures::executor::block_on(async {
            use futures::StreamExt as _;
            let mut in_flight = futures::stream::FuturesUnordered::new();
            let mut k = 0;
            while k < n || !in_flight.is_empty() {
                while k < n && in_flight.len() < 256 {
                    in_flight.push(producer.send_async("bench.p2p", message(k)));
                    k += 1;
                }
                if let Some(r) = in_flight.next().await {
                    r.expect("send");
                }
            }
        });
    } else {
        for i in 0..n {
            producer.send("bench.p2p", message(i)).expect("send");
        }
    }
    receiving.join().expect("consumer");
    n as f64 / start.elapsed().as_secs_f64()
}

/// `groups` group sends to `members` process channels of `layer`, one thread draining them:
/// deliveries per second, from the first send to the last receive.
pub fn fanout<L: ChannelLayer + Clone + Send + 'static>(
    layer: L,
    members: usize,
    groups: usize,
) -> f64 {
    let names: Vec<String> = (0..members)
        .map(|_| layer.new_channel("member").expect("name"))
        .collect();
    for m in &names {
        layer.group_add("bench.room", m).expect("group_add");
    }
    let start = Instant::now();
    let drainer = {
        let layer = layer.clone();
        thread::spawn(move || {
            for _ in 0..groups {
                for m in &names {
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
        assert_eq!(report.delivered, members);
    }
    drainer.join().expect("drainer");
    (groups * members) as f64 / start.elapsed().as_secs_f64()
}
