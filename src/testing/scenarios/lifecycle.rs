//! Waiting receivers: wake-ups on send, flush and close, and receives that are abandoned.

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::task::Poll;
use std::time::{Duration, Instant};

use crate::error::{LayerError, ReceiveError, SendError, TryReceiveError};
use crate::layer::Capability;
use crate::layer::{ChannelLayerExt, GroupSendReport};
use crate::testing::driver::{Ctx, PATIENCE, QUIET, number, numbered};

/// How soon after `close` a waiting receiver must have woken.
const WAKE_LIMIT: Duration = Duration::from_secs(1);

pub(crate) async fn flush_empties_everything(cx: Ctx<'_>) {
    let layer = cx.default_layer();
    if !cx.has(&layer, Capability::Flush) {
        return;
    }
    let groups = cx.has(&layer, Capability::Groups);
    layer.send_numbered("a", "message", 1..=2).await;
    layer.send_numbered("b", "message", [3]).await;
    if groups {
        layer.group_add_ok("group", "a").await;
        layer.group_add_ok("group", "c").await;
    }
    let waiting = layer.spawn("waiting-through-flush", |d| async move {
        d.receive_timeout("waiting", PATIENCE).await
    });
    layer.sleep(Duration::from_millis(50)).await;

    if let Err(e) = layer.flush().await {
        panic!("flush failed: {e} ({e:?})");
    }
    let m = layer.metrics();
    assert_eq!(
        m.flushed, 3,
        "flush must count the three messages it dropped: {m:?}"
    );
    assert_eq!(m.queued_messages, 0, "{m:?}");
    if groups {
        assert_eq!(m.groups, 0, "flush must drop every group: {m:?}");
    }
    layer.expect_empty("a").await;
    layer.expect_empty("b").await;
    if groups {
        let sent = layer.group_send_ok("group", numbered("message", 4)).await;
        assert_eq!(
            sent,
            GroupSendReport::new(0, 0),
            "flush must drop every membership"
        );
        layer.expect_empty("c").await;
    }

    // The receiver that waited through the flush still gets a message sent afterwards.
    layer.send_numbered("waiting", "message", [5]).await;
    match waiting.join().await {
        Ok(message) => assert_eq!(number(&message), 5),
        Err(e) => panic!("a receiver waiting through flush must still receive, got {e} ({e:?})"),
    }
    // And so does everyone else.
    layer.send_numbered("a", "message", [6]).await;
    layer.expect_numbered("a", [6]).await;
    if let Err(e) = layer.flush().await {
        panic!("a second flush failed: {e}");
    }
    assert_eq!(
        layer.metrics().flushed,
        3,
        "nothing was left to flush the second time"
    );
}

pub(crate) async fn close_wakes_blocked_receivers(cx: Ctx<'_>) {
    let layer = cx.default_layer();
    let minted = layer.new_channel("closing");
    let waiters: Vec<_> = ["waiting-1", "waiting-2", minted.as_str()]
        .into_iter()
        .map(|channel| {
            let channel = channel.to_owned();
            layer.spawn("waiting-for-close", move |d| async move {
                let outcome = d.receive_timeout(&channel, PATIENCE).await;
                (channel, outcome, Instant::now())
            })
        })
        .collect();
    let closer = layer.spawn("closer", |d| async move {
        d.sleep(Duration::from_millis(100)).await;
        let at = Instant::now();
        d.close();
        at
    });
    let outcome = layer.receive_timeout("waiting-main", PATIENCE).await;
    let woke = Instant::now();
    let closed_at = closer.join().await;
    match outcome {
        Err(ReceiveError::Closed) => {}
        other => panic!("a receive waiting when the layer closed must fail Closed, got {other:?}"),
    }
    assert!(
        woke.saturating_duration_since(closed_at) < WAKE_LIMIT,
        "the waiting receive woke {:?} after close",
        woke.saturating_duration_since(closed_at)
    );
    for helper in waiters {
        let (channel, outcome, woke) = helper.join().await;
        match outcome {
            Err(ReceiveError::Closed) => {}
            other => panic!("the receiver waiting on {channel:?} must fail Closed, got {other:?}"),
        }
        assert!(
            woke.saturating_duration_since(closed_at) < WAKE_LIMIT,
            "the receiver on {channel:?} woke {:?} after close",
            woke.saturating_duration_since(closed_at)
        );
    }

    // Every later call fails Closed.
    let message = numbered("message", 1);
    match layer.send("after-close", message.clone()).await {
        Err(SendError::Closed { message: back }) => assert_eq!(back, message),
        other => panic!("send after close must fail Closed, got {other:?}"),
    }
    let started = Instant::now();
    match layer.receive_timeout("after-close", PATIENCE).await {
        Err(ReceiveError::Closed) => {}
        other => panic!("receive after close must fail Closed, got {other:?}"),
    }
    assert!(started.elapsed() < WAKE_LIMIT, "receive after close waited");
    match layer.try_receive("after-close").await {
        Err(TryReceiveError::Closed) => {}
        other => panic!("try_receive after close must fail Closed, got {other:?}"),
    }
    if cx.has(&layer, Capability::Groups) {
        let results = [
            ("group_add", layer.group_add("group", "member").await),
            (
                "group_discard",
                layer.group_discard("group", "member").await,
            ),
            (
                "group_send",
                layer.group_send("group", message.clone()).await.map(|_| ()),
            ),
        ];
        for (op, result) in results {
            assert!(
                matches!(result, Err(LayerError::Closed)),
                "{op} after close must fail Closed, got {result:?}"
            );
        }
    }
    if cx.has(&layer, Capability::Flush) {
        let result = layer.flush().await;
        assert!(
            matches!(result, Err(LayerError::Closed)),
            "flush after close must fail Closed, got {result:?}"
        );
    }
}

pub(crate) async fn blocked_receiver_wakes_on_send(cx: Ctx<'_>) {
    let layer = cx.default_layer();
    // A helper waits; this side sends after a delay.
    for (i, delay) in [0, 1, 5, 20, 60].into_iter().enumerate() {
        let channel = format!("race-{i}");
        let theirs = channel.clone();
        let waiter = layer.spawn("waiting-receiver", move |d| async move {
            d.receive_timeout(&theirs, PATIENCE).await
        });
        layer.sleep(Duration::from_millis(delay)).await;
        layer.send_numbered(&channel, "message", [i as i64]).await;
        match waiter.join().await {
            Ok(message) => assert_eq!(number(&message), i as i64),
            Err(e) => panic!(
                "a receiver waiting on {channel:?} missed a message sent {delay} ms later: {e} ({e:?})"
            ),
        }
        layer.expect_empty(&channel).await;
    }
    // This side waits; a helper sends after a delay.
    for (i, delay) in [0, 5, 60].into_iter().enumerate() {
        let channel = format!("race-back-{i}");
        let theirs = channel.clone();
        let sender = layer.spawn("late-sender", move |d| async move {
            d.sleep(Duration::from_millis(delay)).await;
            d.send_ok(&theirs, numbered("message", 100)).await;
        });
        let got = layer.expect(&channel).await;
        assert_eq!(number(&got), 100);
        sender.join().await;
    }
}

/// Polls a future once, with the current task's waker.
async fn poll_once<F: Future + Unpin>(future: &mut F) -> Poll<F::Output> {
    poll_fn(|cx| Poll::Ready(Pin::new(&mut *future).poll(cx))).await
}

pub(crate) async fn cancelled_receive_loses_nothing(cx: Ctx<'_>) {
    let layer = cx.default_layer();
    if cx.is_async() {
        let raw = layer.as_layer();

        // Started, then dropped before any message exists.
        let mut pending = raw.receive_async("cancel");
        assert!(
            poll_once(&mut pending).await.is_pending(),
            "receive on an empty channel completed"
        );
        drop(pending);
        layer.send_numbered("cancel", "message", [1]).await;
        layer.expect_numbered("cancel", [1]).await;

        // Dropped after a message arrived for it, without being polled again.
        let mut pending = raw.receive_async("cancel");
        assert!(poll_once(&mut pending).await.is_pending());
        layer.send_numbered("cancel", "message", [2]).await;
        drop(pending);
        layer.expect_numbered("cancel", [2]).await;

        // Two abandoned receives, two messages.
        let mut first = raw.receive_async("cancel");
        let mut second = raw.receive_timeout_async("cancel", PATIENCE);
        assert!(poll_once(&mut first).await.is_pending());
        assert!(poll_once(&mut second).await.is_pending());
        layer.send_numbered("cancel", "message", 3..=4).await;
        drop(first);
        drop(second);
        layer.expect_numbered("cancel", 3..=4).await;

        // An abandoned receive must not keep the wake-up from another waiting receiver.
        let mut abandoned = raw.receive_async("cancel");
        assert!(poll_once(&mut abandoned).await.is_pending());
        let other = layer.spawn("other-receiver", |d| async move {
            d.receive_timeout("cancel", PATIENCE).await
        });
        layer.sleep(Duration::from_millis(50)).await;
        layer.send_numbered("cancel", "message", [5]).await;
        drop(abandoned);
        match other.join().await {
            Ok(message) => assert_eq!(number(&message), 5),
            Err(e) => panic!(
                "a waiting receiver missed a message whose wake-up went to an abandoned receive: \
                 {e} ({e:?})"
            ),
        }
    }

    // Receives with short timeouts lapsing while messages arrive: none may swallow a message.
    const COUNT: i64 = 300;
    let sender = layer.spawn("steady-sender", |d| async move {
        for n in 0..COUNT {
            // The receiver's short timeouts may let it fall a capacity behind on a loaded
            // machine: wait for room rather than fail, since what is checked is the receives.
            let deadline = Some(Instant::now() + PATIENCE);
            if let Err(e) = d
                .send_until("steady", numbered("message", n), deadline)
                .await
            {
                panic!("send to \"steady\" failed: {e} ({e:?})");
            }
            if n % 4 == 0 {
                d.sleep(Duration::from_millis(1)).await;
            }
        }
    });
    let mut got = Vec::new();
    let give_up = Instant::now() + PATIENCE;
    let mut attempt = 0u32;
    while got.len() < COUNT as usize && Instant::now() < give_up {
        attempt += 1;
        if cx.is_async() && attempt % 7 == 0 {
            let mut abandoned = layer.as_layer().receive_async("steady");
            if let Poll::Ready(outcome) = poll_once(&mut abandoned).await {
                match outcome {
                    Ok(message) => got.push(number(&message)),
                    Err(e) => panic!("receive failed: {e} ({e:?})"),
                }
            }
            continue;
        }
        let timeout = Duration::from_micros(500 * u64::from(attempt % 5));
        match layer.receive_timeout("steady", timeout).await {
            Ok(message) => got.push(number(&message)),
            Err(ReceiveError::Timeout) => {}
            Err(e) => panic!("receive failed: {e} ({e:?})"),
        }
    }
    sender.join().await;
    while let Ok(message) = layer.receive_timeout("steady", QUIET).await {
        got.push(number(&message));
    }
    let expected: Vec<i64> = (0..COUNT).collect();
    if got != expected {
        let missing: Vec<i64> = expected
            .iter()
            .copied()
            .filter(|n| !got.contains(n))
            .collect();
        panic!(
            "receives that timed out or were abandoned lost or reordered messages: received \
             {} of {COUNT}, missing {missing:?}, order {got:?}",
            got.len()
        );
    }
}
