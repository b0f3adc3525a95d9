//! Runtime-agnostic helpers: [`block_on`], a [`sleep`] future, and the timer thread behind them.
//!
//! The crate does not depend on an async runtime. Deadlines of async receives, and the periodic
//! sweeps that reclaim expired messages, are served by one lazily started timer thread per
//! process (`channel-layer-timer`), which only wakes futures: it runs no user code.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

struct ThreadWaker(Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// Runs a future to completion on the current thread, parking the thread while it waits.
///
/// This is how the blocking methods of [`crate::ChannelLayer`] run a backend's async methods.
/// Do not call it from inside an async task: it blocks the executor's thread.
///
/// # Examples
///
/// ```
/// let n = channel_layer::runtime::block_on(async { 40 + 2 });
/// assert_eq!(n, 42);
/// ```
pub fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let waker = Waker::from(Arc::new(ThreadWaker(thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
        thread::park();
    }
}

/// Work the timer thread repeats at an interval for as long as its owner lives.
pub(crate) trait Sweep: Send + Sync {
    fn sweep(&self);
}

enum Entry {
    Wake(Waker),
    Sweep(Weak<dyn Sweep>, Duration),
}

#[derive(Default)]
struct TimerState {
    entries: BTreeMap<(Instant, u64), Entry>,
}

struct Timer {
    state: Mutex<TimerState>,
    changed: Condvar,
    next_id: AtomicU64,
}

fn timer() -> &'static Timer {
    static TIMER: OnceLock<&'static Timer> = OnceLock::new();
    TIMER.get_or_init(|| {
        let timer: &'static Timer = Box::leak(Box::new(Timer {
            state: Mutex::new(TimerState::default()),
            changed: Condvar::new(),
            next_id: AtomicU64::new(1),
        }));
        thread::Builder::new()
            .name("channel-layer-timer".into())
            .spawn(move || timer.run())
            .expect("spawning the channel-layer timer thread");
        timer
    })
}

impl Timer {
    fn insert(&self, at: Instant, entry: Entry) -> (Instant, u64) {
        let key = (at, self.next_id.fetch_add(1, Ordering::Relaxed));
        let mut state = self.state.lock();
        let earliest = state.entries.keys().next().is_none_or(|first| key < *first);
        state.entries.insert(key, entry);
        drop(state);
        if earliest {
            self.changed.notify_one();
        }
        key
    }

    fn run(&self) {
        let mut due = Vec::new();
        loop {
            {
                let mut state = self.state.lock();
                loop {
                    let now = Instant::now();
                    while let Some(entry) = state.entries.first_entry() {
                        if entry.key().0 > now {
                            break;
                        }
                        due.push(entry.remove());
                    }
                    if !due.is_empty() {
                        break;
                    }
                    match state.entries.keys().next() {
                        Some(&(at, _)) => {
                            self.changed.wait_until(&mut state, at);
                        }
                        None => self.changed.wait(&mut state),
                    }
                }
            }
            for entry in due.drain(..) {
                match entry {
                    Entry::Wake(waker) => waker.wake(),
                    Entry::Sweep(target, interval) => {
                        if let Some(live) = target.upgrade() {
                            live.sweep();
                            drop(live);
                            self.insert(Instant::now() + interval, Entry::Sweep(target, interval));
                        }
                    }
                }
            }
        }
    }
}

/// Calls `target.sweep()` every `interval` until `target` is dropped.
pub(crate) fn sweep_every(interval: Duration, target: Weak<dyn Sweep>) {
    timer().insert(Instant::now() + interval, Entry::Sweep(target, interval));
}

/// A registration with the timer thread that wakes a task at a deadline; dropping it cancels.
pub(crate) struct TimerSlot {
    deadline: Instant,
    key: Option<(Instant, u64)>,
}

impl TimerSlot {
    pub(crate) fn new(deadline: Instant) -> Self {
        TimerSlot {
            deadline,
            key: None,
        }
    }

    /// Whether the deadline has passed; if not, makes sure `cx`'s waker is woken at it.
    pub(crate) fn poll_expired(&mut self, cx: &mut Context<'_>) -> bool {
        if Instant::now() >= self.deadline {
            self.cancel();
            return true;
        }
        let timer = timer();
        match self.key {
            Some(key) => {
                let mut state = timer.state.lock();
                match state.entries.get_mut(&key) {
                    Some(Entry::Wake(waker)) => waker.clone_from(cx.waker()),
                    // Already fired (the deadline is about to pass): register again.
                    _ => {
                        drop(state);
                        self.key =
                            Some(timer.insert(self.deadline, Entry::Wake(cx.waker().clone())));
                    }
                }
            }
            None => {
                self.key = Some(timer.insert(self.deadline, Entry::Wake(cx.waker().clone())));
            }
        }
        false
    }

    fn cancel(&mut self) {
        if let Some(key) = self.key.take() {
            timer().state.lock().entries.remove(&key);
        }
    }
}

impl Drop for TimerSlot {
    fn drop(&mut self) {
        self.cancel();
    }
}

impl fmt::Debug for TimerSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimerSlot")
            .field("deadline", &self.deadline)
            .finish()
    }
}

/// A future that completes at a deadline, on any executor. See [`sleep`].
#[derive(Debug)]
#[must_use = "futures do nothing unless polled"]
pub struct Sleep {
    slot: TimerSlot,
}

impl Future for Sleep {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.slot.poll_expired(cx) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

/// Completes after `duration`, on any executor (tokio, smol, `futures::executor`, ...).
///
/// # Examples
///
/// ```
/// use std::time::{Duration, Instant};
///
/// let start = Instant::now();
/// channel_layer::runtime::block_on(channel_layer::runtime::sleep(Duration::from_millis(20)));
/// assert!(start.elapsed() >= Duration::from_millis(20));
/// ```
pub fn sleep(duration: Duration) -> Sleep {
    sleep_until(
        Instant::now()
            .checked_add(duration)
            .unwrap_or_else(far_future),
    )
}

/// Completes at `deadline`, on any executor.
pub fn sleep_until(deadline: Instant) -> Sleep {
    Sleep {
        slot: TimerSlot::new(deadline),
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365 * 30)
}
