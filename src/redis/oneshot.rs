//! A one-shot reply slot that a thread fills and a task awaits.
//!
//! Backends that do their I/O on their own threads hand each async caller one of these; the
//! task is woken when the reply arrives (or fails at its deadline).
#![cfg_attr(not(feature = "redis"), allow(dead_code))]

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use parking_lot::Mutex;

use crate::runtime::TimerSlot;

enum Waiting {
    Nobody,
    Task(Waker),
}

struct Slot<T> {
    value: Option<T>,
    waiting: Waiting,
    /// The sender was dropped without sending.
    abandoned: bool,
}

/// Fills the slot once.
pub(crate) struct Sender<T> {
    slot: Arc<Mutex<Slot<T>>>,
    sent: bool,
}

/// Waits for the slot to be filled.
pub(crate) struct Receiver<T> {
    slot: Arc<Mutex<Slot<T>>>,
}

/// Why no value came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RecvError {
    /// The deadline passed first.
    Timeout,
    /// The sender was dropped without sending.
    Abandoned,
}

pub(crate) fn channel<T>() -> (Sender<T>, Receiver<T>) {
    let slot = Arc::new(Mutex::new(Slot {
        value: None,
        waiting: Waiting::Nobody,
        abandoned: false,
    }));
    (
        Sender {
            slot: slot.clone(),
            sent: false,
        },
        Receiver { slot },
    )
}

impl<T> Sender<T> {
    pub(crate) fn send(mut self, value: T) {
        self.sent = true;
        let waiting = {
            let mut slot = self.slot.lock();
            slot.value = Some(value);
            std::mem::replace(&mut slot.waiting, Waiting::Nobody)
        };
        wake(waiting);
    }

    /// Whether the receiver is gone (nobody will read a reply).
    pub(crate) fn is_abandoned(&self) -> bool {
        Arc::strong_count(&self.slot) == 1
    }
}

fn wake(waiting: Waiting) {
    match waiting {
        Waiting::Nobody => {}
        Waiting::Task(w) => w.wake(),
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        if !self.sent {
            let waiting = {
                let mut slot = self.slot.lock();
                slot.abandoned = true;
                std::mem::replace(&mut slot.waiting, Waiting::Nobody)
            };
            wake(waiting);
        }
    }
}

impl<T> Receiver<T> {
    /// A future for the value, failing with `Timeout` at `deadline`.
    pub(crate) fn recv(self, deadline: Option<Instant>) -> Recv<T> {
        Recv {
            receiver: self,
            timer: deadline.map(TimerSlot::new),
        }
    }
}

/// The future of [`Receiver::recv`].
pub(crate) struct Recv<T> {
    receiver: Receiver<T>,
    timer: Option<TimerSlot>,
}

impl<T> Future for Recv<T> {
    type Output = Result<T, RecvError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        {
            let mut slot = self.receiver.slot.lock();
            if let Some(v) = slot.value.take() {
                return Poll::Ready(Ok(v));
            }
            if slot.abandoned {
                return Poll::Ready(Err(RecvError::Abandoned));
            }
            match &mut slot.waiting {
                Waiting::Task(w) => w.clone_from(cx.waker()),
                other => *other = Waiting::Task(cx.waker().clone()),
            }
        }
        if let Some(timer) = &mut self.timer {
            if timer.poll_expired(cx) {
                return Poll::Ready(
                    self.receiver
                        .slot
                        .lock()
                        .value
                        .take()
                        .ok_or(RecvError::Timeout),
                );
            }
        }
        Poll::Pending
    }
}

impl<T> Unpin for Recv<T> {}

impl<T> fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("oneshot::Receiver").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_dropped_sender_abandons() {
        let (tx, rx) = channel::<u8>();
        drop(tx);
        assert_eq!(
            crate::runtime::block_on(rx.recv(None)),
            Err(RecvError::Abandoned)
        );
    }

    #[test]
    fn a_task_gets_the_value() {
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(10));
            tx.send("x")
        });
        assert_eq!(crate::runtime::block_on(rx.recv(None)), Ok("x"));
        let (_tx, rx) = channel::<u8>();
        let d = Instant::now() + Duration::from_millis(20);
        assert_eq!(
            crate::runtime::block_on(rx.recv(Some(d))),
            Err(RecvError::Timeout)
        );
    }
}
