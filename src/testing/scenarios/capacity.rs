//! Capacity: `Full`, per-channel rules, and process-specific channels sharing a capacity.

use std::time::{Duration, Instant};

use crate::LayerConfig;
use crate::error::SendError;
use crate::layer::Capability;
use crate::message::Message;
use crate::name::non_local_name;
use crate::testing::driver::{Ctx, Driver, config, number, numbered};

/// Sends `message` where it must not fit, and checks the `Full` error: it names the channel
/// (or, for a process-specific one, possibly its non-local part), gives the capacity, and
/// hands the message back.
pub(super) async fn expect_full(layer: &Driver, channel: &str, capacity: usize, message: Message) {
    let err = match layer.send(channel, message.clone()).await {
        Ok(()) => panic!("send to {channel:?} past its capacity of {capacity} succeeded"),
        Err(err) => err,
    };
    assert!(
        err.is_full(),
        "send to {channel:?} past capacity must be Full, got {err} ({err:?})"
    );
    match &err {
        SendError::Full {
            channel: named,
            capacity: reported,
            ..
        } => {
            assert!(
                &**named == channel || &**named == non_local_name(channel),
                "the Full error names {named:?}, not the channel {channel:?}"
            );
            assert_eq!(
                *reported, capacity,
                "the Full error reports the wrong capacity"
            );
        }
        other => unreachable!("is_full() but {other:?}"),
    }
    assert_eq!(
        err.into_message(),
        message,
        "the Full error must hand the message back"
    );
}

fn capacity(n: usize) -> LayerConfig {
    config(LayerConfig::builder().capacity(n))
}

pub(crate) async fn send_capacity(cx: Ctx<'_>) {
    let layer = cx.layer(capacity(3));
    layer
        .send_numbered("test-channel-1", "message", 1..=3)
        .await;
    expect_full(&layer, "test-channel-1", 3, numbered("message", 4)).await;
    // A full channel does not affect another.
    layer
        .send_ok("test-channel-2", numbered("message", 100))
        .await;

    // The channel is unchanged: the three queued messages, in order, and nothing else.
    layer.expect_numbered("test-channel-1", 1..=3).await;
    layer.expect_nothing("test-channel-1").await;

    // Receiving makes room again.
    layer
        .send_numbered("test-channel-1", "message", 5..=7)
        .await;
    expect_full(&layer, "test-channel-1", 3, numbered("message", 8)).await;
    layer.expect_numbered("test-channel-1", [5]).await;
    layer.send_numbered("test-channel-1", "message", [9]).await;
    layer.expect_numbered("test-channel-1", [6, 7, 9]).await;
    layer.expect_numbered("test-channel-2", [100]).await;
}

pub(crate) async fn channel_capacity_rule(cx: Ctx<'_>) {
    let layer = cx.layer(config(
        LayerConfig::builder()
            .capacity(3)
            .channel_capacity("tiny", 1)
            .channel_capacity_regex(r"small\.", 2),
    ));
    layer.send_numbered("tiny", "message", [1]).await;
    expect_full(&layer, "tiny", 1, numbered("message", 2)).await;

    // A glob matches whole names only: "tiny2" gets the default capacity.
    layer.send_numbered("tiny2", "message", 1..=3).await;
    expect_full(&layer, "tiny2", 3, numbered("message", 4)).await;

    // A regex matches at the start of the name.
    layer.send_numbered("small.one", "message", 1..=2).await;
    expect_full(&layer, "small.one", 2, numbered("message", 3)).await;

    layer.expect_numbered("tiny", [1]).await;
    layer.expect_nothing("tiny").await;
    layer.expect_numbered("tiny2", 1..=3).await;
    layer.expect_numbered("small.one", 1..=2).await;
    layer.send_numbered("tiny", "message", [5]).await;
    layer.expect_numbered("tiny", [5]).await;
}

pub(crate) async fn full_is_counted_in_metrics(cx: Ctx<'_>) {
    let layer = cx.layer(capacity(1));
    layer.send_numbered("one", "message", [1]).await;
    expect_full(&layer, "one", 1, numbered("message", 2)).await;
    expect_full(&layer, "one", 1, numbered("message", 3)).await;
    let m = layer.metrics();
    assert_eq!(
        m.rejected_full, 2,
        "rejected_full after two Full sends: {m:?}"
    );
    assert_eq!(m.sent, 1, "sent must count only accepted sends: {m:?}");

    layer.send_numbered("two", "message", [1]).await;
    expect_full(&layer, "two", 1, numbered("message", 2)).await;
    layer.expect_numbered("one", [1]).await;
    layer.send_numbered("one", "message", [4]).await;
    let m = layer.metrics();
    assert_eq!(
        m.rejected_full, 3,
        "rejected_full after three Full sends: {m:?}"
    );
    assert_eq!(m.sent, 3, "sent after three accepted sends: {m:?}");
}

/// Each process-specific channel has its own capacity: a full (or abandoned) sibling never
/// costs a channel that is being received on its messages. The issue's reproduction: three
/// messages for `a`, a receive on `b` that times out, then `b`'s own message must arrive.
pub(crate) async fn process_specific_channels_have_their_own_capacity(cx: Ctx<'_>) {
    let layer = cx.layer(capacity(3));
    let (a, b) = (layer.new_channel("specific"), layer.new_channel("specific"));
    assert_eq!(non_local_name(&a), non_local_name(&b), "siblings: {a} {b}");
    for n in 1..=3 {
        layer.send_ok(&a, numbered("for.a", n)).await;
    }
    expect_full(&layer, &a, 3, numbered("for.a", 4)).await;
    // A receive on the sibling: nothing for it yet.
    layer.expect_nothing(&b).await;
    // Its own message arrives, although `a` holds three unread.
    layer.send_ok(&b, numbered("for.b", 1)).await;
    layer.expect_numbered(&b, [1]).await;
    layer.expect_numbered(&a, [1, 2, 3]).await;
    let before = layer.metrics();

    // Alternating sends to an unread channel and a live one: every message the live one was
    // sent (send returned Ok) arrives, in order; the unread one keeps at most its capacity,
    // and whatever it could not keep is refused or counted once.
    let (unread, live) = (layer.new_channel("specific"), layer.new_channel("specific"));
    const N: i64 = 60;
    let receiver = {
        let live = live.clone();
        layer.spawn("live receiver", move |d| async move {
            let mut got = Vec::new();
            while got.len() < N as usize {
                match d.receive_timeout(&live, Duration::from_secs(10)).await {
                    Ok(m) => got.push(number(&m)),
                    Err(e) => panic!("the live channel's receive failed after {got:?}: {e}"),
                }
            }
            got
        })
    };
    let mut unread_ok = 0u64;
    for n in 0..N {
        if layer.send(&unread, numbered("unread", n)).await.is_ok() {
            unread_ok += 1;
        }
        // The live channel may meet a moment when a shared store is full of the unread
        // one's messages; it is drained for the live receiver, so a retry gets through.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match layer.send(&live, numbered("live", n)).await {
                Ok(()) => break,
                Err(e) if e.is_full() && Instant::now() < deadline => {
                    layer.sleep(Duration::from_millis(5)).await;
                }
                Err(e) => panic!("the live channel's send {n} failed: {e}"),
            }
        }
    }
    let got = receiver.join().await;
    assert_eq!(
        got,
        (0..N).collect::<Vec<_>>(),
        "the live channel lost or reordered messages"
    );
    let mut unread_received = 0u64;
    while layer
        .receive_timeout(&unread, Duration::from_millis(300))
        .await
        .is_ok()
    {
        unread_received += 1;
    }
    assert!(
        unread_received <= 3,
        "the unread channel held {unread_received} messages past its capacity of 3"
    );
    let after = layer.metrics();
    let dropped = after.overflowed - before.overflowed;
    assert_eq!(
        unread_ok,
        unread_received + dropped,
        "every accepted message to the unread channel is received or counted once as \
         overflowed: accepted {unread_ok}, received {unread_received}, overflowed {dropped}"
    );
}

/// Late replies: 150 reply channels minted by one layer each get a message nobody will read
/// (their requests timed out), more than the default capacity of 100 together. A fresh reply
/// channel with its receiver waiting still gets its message. (A backend that stores a
/// process's channels together may refuse late replies past the capacity while the process
/// receives nothing; that store is drained into per-channel buffers as soon as a receiver of
/// the process waits, so at most a moment's retry is needed.)
pub(crate) async fn unread_reply_channels_never_block_new_ones(cx: Ctx<'_>) {
    let layer = cx.layer(capacity(crate::config::DEFAULT_CAPACITY));
    for n in 0..150 {
        let abandoned = layer.new_channel("reply");
        // A late reply the store has no room for is refused and counted; either is fine.
        let _ = layer.send(&abandoned, numbered("late.reply", n)).await;
    }
    for n in 0..20 {
        let fresh = layer.new_channel("reply");
        let receiver = {
            let fresh = fresh.clone();
            layer.spawn("requester", move |d| async move {
                d.receive_timeout(&fresh, Duration::from_secs(10)).await
            })
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match layer.send(&fresh, numbered("reply", n)).await {
                Ok(()) => break,
                Err(e) if e.is_full() && Instant::now() < deadline => {
                    layer.sleep(Duration::from_millis(5)).await;
                }
                Err(e) => panic!("the reply to fresh request {n} was refused: {e}"),
            }
        }
        match receiver.join().await {
            Ok(m) => assert_eq!(number(&m), n),
            Err(e) => panic!("fresh request {n} got no reply: {e}"),
        }
    }
}

/// A group of many channels minted by one layer (one server holding many websocket
/// connections) gets every message at the default capacity: the members of one process cost
/// it one stored message, and each member's channel has its own capacity.
pub(crate) async fn group_larger_than_capacity_reaches_every_member(cx: Ctx<'_>) {
    for members in [300usize, 5000] {
        // Receiving 10,000 messages one by one can take longer than the default expiry on a
        // replicated network backend on a loaded machine; the case is about capacity, so its
        // messages live long enough not to expire meanwhile.
        let layer = cx.layer(config(
            LayerConfig::builder()
                .capacity(crate::config::DEFAULT_CAPACITY)
                .expiry(Duration::from_secs(600)),
        ));
        if !cx.has(&layer, Capability::Groups) {
            return;
        }
        let group = format!("room{members}");
        let names: Vec<String> = (0..members).map(|_| layer.new_channel("ws")).collect();
        for name in &names {
            layer.group_add_ok(&group, name).await;
        }
        for n in 0..2 {
            let report = layer.group_send_ok(&group, numbered("chat", n)).await;
            assert_eq!(
                (report.delivered, report.skipped_full),
                (members, 0),
                "group_send {n} to {members} members of one process: {report:?}"
            );
        }
        for name in &names {
            layer.expect_numbered(name, [0, 1]).await;
        }
        let m = layer.metrics();
        assert_eq!((m.overflowed, m.expired), (0, 0), "{m:?}");
    }
}

/// `send_until` waits while the channel is full: it gets through when a receiver makes room,
/// hands the message back as `Full` when its deadline passes (not before), gets through after
/// a flush, and fails with `Closed` when the layer is closed meanwhile.
pub(crate) async fn send_until_waits_for_room(cx: Ctx<'_>) {
    let layer = cx.layer(capacity(1));
    layer.send_ok("waiting", numbered("message", 1)).await;

    // Nobody receives: the message comes back after the deadline.
    let before = layer.metrics().rejected_full;
    let start = Instant::now();
    let deadline = start + Duration::from_millis(150);
    let err = match layer
        .send_until("waiting", numbered("message", 2), Some(deadline))
        .await
    {
        Ok(()) => panic!("send_until into a full channel nobody reads succeeded"),
        Err(e) => e,
    };
    let took = start.elapsed();
    assert!(err.is_full(), "{err}");
    assert!(
        took >= Duration::from_millis(150),
        "gave up early, after {took:?}"
    );
    assert!(
        took < Duration::from_secs(2),
        "gave up late, after {took:?}"
    );
    assert_eq!(number(&err.into_message()), 2, "the message is handed back");
    assert!(
        layer.metrics().rejected_full > before,
        "the refusal is counted"
    );

    // A receiver makes room: the waiting send gets through, in order after the first.
    let receiver = layer.spawn("receiver", |d| async move {
        d.sleep(Duration::from_millis(100)).await;
        d.expect_numbered("waiting", [1]).await;
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    if let Err(e) = layer
        .send_until("waiting", numbered("message", 3), Some(deadline))
        .await
    {
        panic!("send_until did not get through when room was made: {e}");
    }
    receiver.join().await;
    layer.expect_numbered("waiting", [3]).await;

    if cx.has(&layer, Capability::Flush) {
        layer.send_ok("waiting", numbered("message", 4)).await;
        let flusher = layer.spawn("flusher", |d| async move {
            d.sleep(Duration::from_millis(100)).await;
            d.flush().await.expect("flush");
        });
        // A deadline far past the flush, so a wake-up lost fails the case instead of hanging
        // the suite.
        let deadline = Instant::now() + Duration::from_secs(10);
        if let Err(e) = layer
            .send_until("waiting", numbered("message", 5), Some(deadline))
            .await
        {
            panic!("send_until did not get through after a flush: {e}");
        }
        flusher.join().await;
        layer.expect_numbered("waiting", [5]).await;
    }

    // Closing the layer ends the wait with `Closed`.
    layer.send_ok("waiting", numbered("message", 6)).await;
    let closer = layer.spawn("closer", |d| async move {
        d.sleep(Duration::from_millis(100)).await;
        d.close();
    });
    let start = Instant::now();
    match layer
        .send_until(
            "waiting",
            numbered("message", 7),
            Some(start + Duration::from_secs(10)),
        )
        .await
    {
        Err(e) if e.is_closed() => {}
        other => panic!("send_until on a layer closed meanwhile: {other:?}"),
    }
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    closer.join().await;
}

pub(crate) async fn send_many_reports_each_message(cx: Ctx<'_>) {
    let layer = cx.layer(config(LayerConfig::builder().capacity(3)));
    assert!(layer.send_many(Vec::new()).await.is_empty());
    let batch: Vec<(String, Message)> = [
        ("many.a", 1),
        ("many.b", 2),
        ("many.a", 3),
        ("bad name", 4),
        ("many.a", 5),
        ("many.b", 6),
        ("many.a", 7),
        ("many.a", 8),
    ]
    .into_iter()
    .map(|(channel, n)| (channel.to_owned(), numbered("message", n)))
    .collect();
    let sent = layer.send_many(batch).await;
    assert_eq!(sent.len(), 8, "one outcome per message: {sent:?}");
    for (i, outcome) in sent.into_iter().enumerate() {
        match (i, outcome) {
            (0 | 1 | 2 | 4 | 5, Ok(())) => {}
            (3, Err(SendError::InvalidName { message, .. })) => assert_eq!(number(&message), 4),
            (6 | 7, Err(e)) if e.is_full() => {
                // Past the capacity of 3: handed back, in the order given.
                assert_eq!(number(&e.into_message()), if i == 6 { 7 } else { 8 });
            }
            (i, outcome) => panic!("message {i} of the batch: {outcome:?}"),
        }
    }
    // Each channel got its messages in the order of the batch.
    layer.expect_numbered("many.a", [1, 3, 5]).await;
    layer.expect_numbered("many.b", [2, 6]).await;
    layer.expect_empty("many.a").await;
    let m = layer.metrics();
    assert_eq!((m.sent, m.rejected_full), (5, 2), "{m:?}");

    if !cx.has(&layer, Capability::Groups) {
        return;
    }
    let members = [
        layer.new_channel("one"),
        layer.new_channel("two"),
        layer.new_channel("three"),
    ];
    layer.group_add_ok("many-g1", &members[0]).await;
    layer.group_add_ok("many-g1", &members[1]).await;
    layer.group_add_ok("many-g2", &members[2]).await;
    let reports = layer
        .group_send_many(vec![
            ("many-g1".into(), numbered("message", 10)),
            ("many-g2".into(), numbered("message", 11)),
            ("many-g1".into(), numbered("message", 12)),
            ("bad group!".into(), numbered("message", 13)),
        ])
        .await;
    assert_eq!(reports.len(), 4, "{reports:?}");
    let delivered: Vec<Option<usize>> = reports
        .iter()
        .map(|r| r.as_ref().ok().map(|r| r.delivered))
        .collect();
    assert_eq!(delivered, [Some(2), Some(1), Some(2), None], "{reports:?}");
    assert!(
        matches!(reports[3], Err(crate::LayerError::InvalidName(_))),
        "{reports:?}"
    );
    layer.expect_numbered(&members[0], [10, 12]).await;
    layer.expect_numbered(&members[1], [10, 12]).await;
    layer.expect_numbered(&members[2], [11]).await;
}
