//! Many threads at once: exact accounting, no duplicates, order per sender, no deadlock.
//!
//! Helper threads run their part with [`crate::runtime::block_on`] through the same driver as
//! the case, so the async form uses only the async API on every thread.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::LayerConfig;
use crate::error::ReceiveError;
use crate::layer::Capability;
use crate::message::{Message, Value};
use crate::testing::driver::{Ctx, Driver, config, join_all};

/// How long a consumer waits for a message before checking whether the producers are done.
const POLL: Duration = Duration::from_millis(20);

/// How long a consumer waits once the producers are done before it takes the channel for
/// empty: long enough for a network backend on a loaded machine to fetch what is still
/// queued on the server (a receive returns as soon as a message comes, so this is waited once).
const SETTLE: Duration = Duration::from_secs(1);

fn stamped(kind: &str, source: i64, seq: i64) -> Message {
    Message::new(kind).with("source", source).with("seq", seq)
}

fn stamp(message: &Message) -> (i64, i64) {
    let get = |key: &str| {
        message
            .get(key)
            .and_then(Value::as_i64)
            .unwrap_or_else(|| panic!("message without an integer {key:?}: {message:?}"))
    };
    (get("source"), get("seq"))
}

/// Receives on `channel` until a receive of [`SETTLE`] times out after `done` was set.
async fn consume(d: &Driver, channel: &str, done: &AtomicBool) -> Vec<(i64, i64)> {
    let mut seen = Vec::new();
    loop {
        // Read the flag before waiting: a timeout after it was set means nothing is left.
        let finished = done.load(Ordering::SeqCst);
        let wait = if finished { SETTLE } else { POLL };
        match d.receive_timeout(channel, wait).await {
            Ok(message) => seen.push(stamp(&message)),
            Err(ReceiveError::Timeout) if finished => return seen,
            Err(ReceiveError::Timeout) => {}
            Err(e) => panic!("receive on {channel:?} failed: {e} ({e:?})"),
        }
    }
}

/// Checks that, within what one receiver saw, each source's sequence numbers increase.
fn assert_ordered_per_source(seen: &[(i64, i64)], who: &str) {
    let mut last: BTreeMap<i64, i64> = BTreeMap::new();
    for &(source, seq) in seen {
        if let Some(&before) = last.get(&source) {
            assert!(
                seq > before,
                "{who} received message {seq} of source {source} after message {before}: out of \
                 order or duplicated"
            );
        }
        last.insert(source, seq);
    }
}

pub(crate) async fn concurrent_producers_consumers_exact_accounting(cx: Ctx<'_>) {
    const PRODUCERS: i64 = 4;
    const CONSUMERS: usize = 4;
    const PER_PRODUCER: i64 = 400;
    const CAPACITY: usize = 4;
    let layer = cx.layer(config(LayerConfig::builder().capacity(CAPACITY)));
    // Consumers start only once a send was refused, so that Full certainly happens.
    let go = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));

    let consumers: Vec<_> = (0..CONSUMERS)
        .map(|_| {
            let (go, done) = (Arc::clone(&go), Arc::clone(&done));
            layer.spawn("consumer", move |d| async move {
                while !go.load(Ordering::SeqCst) && !done.load(Ordering::SeqCst) {
                    d.sleep(Duration::from_millis(1)).await;
                }
                consume(&d, "work", &done).await
            })
        })
        .collect();
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let go = Arc::clone(&go);
            layer.spawn("producer", move |d| async move {
                let (mut accepted, mut rejected) = (Vec::new(), Vec::new());
                for seq in 0..PER_PRODUCER {
                    match d.send("work", stamped("work", p, seq)).await {
                        Ok(()) => accepted.push(seq),
                        Err(e) if e.is_full() => {
                            rejected.push(seq);
                            go.store(true, Ordering::SeqCst);
                        }
                        Err(e) => panic!("send failed with other than Full: {e} ({e:?})"),
                    }
                    if seq % 8 == 7 {
                        d.sleep(Duration::from_millis(1)).await;
                    }
                }
                (p, accepted, rejected)
            })
        })
        .collect();
    let produced = join_all(producers).await;
    done.store(true, Ordering::SeqCst);
    let consumed = join_all(consumers).await;

    let rejected_total: usize = produced.iter().map(|(_, _, r)| r.len()).sum();
    let accepted_total: usize = produced.iter().map(|(_, a, _)| a.len()).sum();
    let received_total: usize = consumed.iter().map(Vec::len).sum();
    assert!(
        rejected_total > 0,
        "capacity {CAPACITY} never refused a send of {}",
        PRODUCERS * PER_PRODUCER
    );
    assert!(received_total > 0, "the consumers received nothing");
    assert_eq!(
        received_total + rejected_total,
        (PRODUCERS * PER_PRODUCER) as usize,
        "every attempted send must be either received once or refused Full ({received_total} \
         received, {rejected_total} refused)"
    );
    for (c, seen) in consumed.iter().enumerate() {
        assert_ordered_per_source(seen, &format!("consumer {c}"));
    }
    // Merged over all consumers, each producer's received messages are exactly its accepted ones.
    for (p, accepted, _) in &produced {
        let mut merged: Vec<i64> = consumed
            .iter()
            .flatten()
            .filter(|(source, _)| source == p)
            .map(|&(_, seq)| seq)
            .collect();
        merged.sort_unstable();
        if merged != *accepted {
            let received: HashSet<i64> = merged.iter().copied().collect();
            let lost: Vec<i64> = accepted
                .iter()
                .copied()
                .filter(|s| !received.contains(s))
                .collect();
            let twice = merged.windows(2).filter(|w| w[0] == w[1]).count();
            panic!(
                "producer {p}: {} accepted, {} received; lost {lost:?}; {twice} received twice",
                accepted.len(),
                merged.len()
            );
        }
    }
    let m = layer.metrics();
    assert_eq!(m.sent, accepted_total as u64, "metrics.sent: {m:?}");
    assert_eq!(m.received, received_total as u64, "metrics.received: {m:?}");
    assert_eq!(
        m.rejected_full, rejected_total as u64,
        "metrics.rejected_full: {m:?}"
    );
    assert_eq!(m.queued_messages, 0, "{m:?}");
}

/// A small deterministic pseudo-random sequence (an LCG), so runs are repeatable.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
}

pub(crate) async fn concurrent_group_changes_during_group_send(cx: Ctx<'_>) {
    const MEMBERS: usize = 6;
    const SENDERS: i64 = 2;
    const PER_SENDER: i64 = 150;
    const CHURNERS: u64 = 2;
    const CHANGES: usize = 300;
    let layer = cx.layer(config(LayerConfig::builder().capacity(1000)));
    if !cx.has(&layer, Capability::Groups) {
        return;
    }
    let members: Arc<Vec<String>> = Arc::new((0..MEMBERS).map(|i| format!("member-{i}")).collect());
    for member in members.iter() {
        layer.group_add_ok("churn", member).await;
    }
    let churners: Vec<_> = (0..CHURNERS)
        .map(|seed| {
            let members = Arc::clone(&members);
            layer.spawn("churner", move |d| async move {
                let mut rng = Lcg(seed + 1);
                for _ in 0..CHANGES {
                    let member = &members[rng.next() as usize % MEMBERS];
                    if rng.next() % 2 == 0 {
                        d.group_add_ok("churn", member).await;
                    } else {
                        d.group_discard_ok("churn", member).await;
                    }
                }
            })
        })
        .collect();
    let senders: Vec<_> = (0..SENDERS)
        .map(|s| {
            layer.spawn("group-sender", move |d| async move {
                let (mut delivered, mut skipped) = (0, 0);
                for seq in 0..PER_SENDER {
                    let report = d.group_send_ok("churn", stamped("fan", s, seq)).await;
                    delivered += report.delivered;
                    skipped += report.skipped_full;
                }
                (delivered, skipped)
            })
        })
        .collect();
    join_all(churners).await;
    let reports = join_all(senders).await;
    let delivered: usize = reports.iter().map(|r| r.0).sum();
    let skipped: usize = reports.iter().map(|r| r.1).sum();
    assert_eq!(skipped, 0, "no member was ever full");

    let mut drained = 0;
    for member in members.iter() {
        let mut seen = Vec::new();
        while let Ok(message) = layer.try_receive(member).await {
            seen.push(stamp(&message));
        }
        let unique: HashSet<(i64, i64)> = seen.iter().copied().collect();
        assert_eq!(
            unique.len(),
            seen.len(),
            "{member} received a group message twice"
        );
        assert_ordered_per_source(&seen, member);
        drained += seen.len();
    }
    assert_eq!(
        drained, delivered,
        "the reports count {delivered} deliveries, the members hold {drained}"
    );
    let m = layer.metrics();
    assert_eq!(m.group_deliveries, delivered as u64, "{m:?}");
    assert_eq!(m.group_sends, (SENDERS * PER_SENDER) as u64, "{m:?}");
}

pub(crate) async fn many_receivers_one_channel_no_duplicates(cx: Ctx<'_>) {
    const RECEIVERS: usize = 6;
    const COUNT: i64 = 600;
    let layer = cx.layer(config(LayerConfig::builder().capacity(COUNT as usize)));
    let done = Arc::new(AtomicBool::new(false));
    let receivers: Vec<_> = (0..RECEIVERS)
        .map(|_| {
            let done = Arc::clone(&done);
            layer.spawn("receiver", move |d| async move {
                consume(&d, "shared", &done).await
            })
        })
        .collect();
    for seq in 0..COUNT {
        if let Err(e) = layer.send("shared", stamped("message", 0, seq)).await {
            panic!("send {seq} failed: {e} ({e:?})");
        }
        if seq % 32 == 31 {
            layer.sleep(Duration::from_millis(1)).await;
        }
    }
    done.store(true, Ordering::SeqCst);
    let seen = join_all(receivers).await;
    for (r, got) in seen.iter().enumerate() {
        assert_ordered_per_source(got, &format!("receiver {r}"));
    }
    let mut all: Vec<i64> = seen.iter().flatten().map(|&(_, seq)| seq).collect();
    all.sort_unstable();
    let twice = all.windows(2).filter(|w| w[0] == w[1]).count();
    assert_eq!(
        twice, 0,
        "{twice} messages were received by more than one receiver"
    );
    assert_eq!(
        all,
        (0..COUNT).collect::<Vec<_>>(),
        "messages were lost ({} of {COUNT} received)",
        all.len()
    );
    assert_eq!(layer.metrics().received, COUNT as u64);
}
