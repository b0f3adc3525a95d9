//! The in-memory layer's waiting send: a send that waits for room, woken when a receiver takes
//! from the channel, on flush and on close; never spinning.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Instant;

use super::Inner;
use super::store::{Key, Refused, Wake};
use crate::error::SendError;
use crate::message::Message;
use crate::runtime::TimerSlot;

/// The future behind `send_until` on the in-memory layer.
pub(super) struct SendUntil<'a> {
    inner: &'a Inner,
    channel: &'a str,
    key: Option<Key<'a>>,
    message: Option<Message>,
    id: u64,
    /// Whether it is on the channel's list of senders waiting for room.
    registered: bool,
    timer: Option<TimerSlot>,
}

impl<'a> SendUntil<'a> {
    pub(super) fn new(
        inner: &'a Inner,
        channel: &'a str,
        message: Message,
        deadline: Option<Instant>,
    ) -> Self {
        SendUntil {
            inner,
            channel,
            key: None,
            message: Some(message),
            id: inner.next_waiter.fetch_add(1, Ordering::Relaxed),
            registered: false,
            timer: deadline.map(TimerSlot::new),
        }
    }

    /// Leaves the list of waiting senders, passing on a wake-up it got and did not use.
    fn withdraw(&mut self) {
        if let (true, Some(key)) = (self.registered, self.key) {
            self.registered = false;
            let pass_on = self.inner.shard(&key).stop_waiting_for_room(&key, self.id);
            if let Some(w) = pass_on {
                w.wake();
            }
        }
    }
}

impl Future for SendUntil<'_> {
    type Output = Result<(), SendError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let Some(message) = this.message.take() else {
            panic!("a send_until future polled after it completed");
        };
        if this.inner.is_closed() {
            this.withdraw();
            return Poll::Ready(Err(SendError::Closed { message }));
        }
        if this.key.is_none() {
            if let Err(error) = this.inner.config.check_message(&message) {
                return Poll::Ready(Err(SendError::InvalidMessage { error, message }));
            }
        }
        let key = *this.key.get_or_insert_with(|| this.inner.key(this.channel));
        let now = Instant::now();
        let (inner, channel) = (this.inner, this.channel);
        let mut shard = inner.shard(&key);
        match shard.push(&key, message, now, inner.deadline(now), || {
            inner.new_chan(channel, true)
        }) {
            Ok(wake) => {
                shard.stats.sent += 1;
                let pass_on = if this.registered {
                    this.registered = false;
                    shard.stop_waiting_for_room(&key, this.id)
                } else {
                    None
                };
                drop(shard);
                inner.shards[key.shard()]
                    .pushes
                    .fetch_add(1, Ordering::Release);
                wake.into_iter().chain(pass_on).for_each(Wake::wake);
                Poll::Ready(Ok(()))
            }
            Err(Refused::Full {
                channel,
                capacity,
                message,
            }) => {
                if this.timer.as_mut().is_some_and(|t| t.poll_expired(cx)) {
                    shard.stats.rejected_full += 1;
                    drop(shard);
                    this.withdraw();
                    return Poll::Ready(Err(SendError::Full {
                        channel,
                        capacity,
                        message,
                    }));
                }
                // Under the same lock as the push that found it full: room made from now on
                // wakes this sender.
                shard.wait_for_room(&key, this.id, || Wake::Task(cx.waker().clone()));
                this.registered = true;
                this.message = Some(message);
                Poll::Pending
            }
            Err(refused) => {
                drop(shard);
                this.withdraw();
                Poll::Ready(Err(refused.into_send_error()))
            }
        }
    }
}

impl Drop for SendUntil<'_> {
    fn drop(&mut self) {
        self.withdraw();
    }
}
