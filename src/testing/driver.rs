//! What every case runs on: a layer driven through either its blocking or its async methods.
//!
//! A case is written once, as an async function of a [`Ctx`]. Its blocking form runs it with
//! [`block_on`] and a [`Driver`] that calls the layer's blocking methods; its async form awaits it
//! with a [`Driver`] that calls only the async methods and sleeps with [`runtime::sleep`].

use std::fmt;
use std::future::{Future, poll_fn};
use std::io::Write as _;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::pin::pin;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::thread;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::Fixture;
use crate::any::AnyLayer;
use crate::config::{LayerConfig, LayerConfigBuilder};
use crate::error::{LayerError, ReceiveError, SendError, TryReceiveError};
use crate::layer::{Capability, ChannelLayer, ChannelLayerExt, GroupSendReport};
use crate::message::{Message, Value};
use crate::metrics::MetricsSnapshot;
use crate::runtime::{self, block_on};

/// How long to wait for a message that should arrive. A correct backend delivers at once; the
/// margin only keeps a loaded machine from failing a case.
pub(crate) const PATIENCE: Duration = Duration::from_secs(5);
/// How long to wait before concluding that no message is coming.
pub(crate) const QUIET: Duration = Duration::from_millis(100);
/// How long a helper thread may take before the case calls it a deadlock.
pub(crate) const JOIN_LIMIT: Duration = Duration::from_secs(30);
/// How often a timing-sensitive case is tried before a too-slow machine fails it.
pub(crate) const TIMING_ATTEMPTS: usize = 3;

/// Which half of the API a case drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    Blocking,
    Async,
}

/// Runs a case in its blocking form.
pub(crate) fn run_blocking<'a, F, Fut>(fixture: &'a dyn Fixture, case: &'static str, body: F)
where
    F: FnOnce(Ctx<'a>) -> Fut,
    Fut: Future<Output = ()>,
{
    block_on(body(Ctx {
        fixture,
        mode: Mode::Blocking,
        case,
    }));
}

/// Runs a case in its async form.
pub(crate) async fn run_async<'a, F, Fut>(fixture: &'a dyn Fixture, case: &'static str, body: F)
where
    F: FnOnce(Ctx<'a>) -> Fut,
    Fut: Future<Output = ()>,
{
    body(Ctx {
        fixture,
        mode: Mode::Async,
        case,
    })
    .await;
}

/// The fixture, the form being run, and the case's name.
#[derive(Clone, Copy)]
pub(crate) struct Ctx<'a> {
    fixture: &'a dyn Fixture,
    mode: Mode,
    case: &'static str,
}

impl fmt::Debug for Ctx<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ctx")
            .field("mode", &self.mode)
            .field("case", &self.case)
            .finish_non_exhaustive()
    }
}

impl Ctx<'_> {
    /// A fresh layer from the fixture.
    pub(crate) fn layer(&self, config: LayerConfig) -> Driver {
        Driver {
            layer: self.fixture.layer(config),
            mode: self.mode,
        }
    }

    /// A fresh layer with the default configuration.
    pub(crate) fn default_layer(&self) -> Driver {
        self.layer(LayerConfig::default())
    }

    /// Whether this is the async form.
    pub(crate) fn is_async(&self) -> bool {
        self.mode == Mode::Async
    }

    /// Whether `layer` has `need`; if not, says on standard error that (this part of) the case
    /// is skipped.
    pub(crate) fn has(&self, layer: &Driver, need: Capability) -> bool {
        let present = layer.layer.capabilities().has(need);
        if !present {
            // Past the test harness's capture, so the skip shows in its output.
            let _ = writeln!(
                std::io::stderr(),
                "conformance case `{}` ({:?} form): skipping what needs `{need}`, a capability \
                 the backend reports it lacks",
                self.case,
                self.mode,
            );
        }
        present
    }

    /// Runs one attempt of a timing-sensitive case, again when the machine was too slow for
    /// the attempt to mean anything, up to [`TIMING_ATTEMPTS`] times.
    pub(crate) async fn retry_if_slow<F, Fut>(&self, mut attempt: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Timing>,
    {
        let mut reasons = Vec::new();
        for n in 1..=TIMING_ATTEMPTS {
            match attempt().await {
                Timing::Done => return,
                Timing::TooSlow(why) => {
                    eprintln!(
                        "conformance case `{}` ({:?} form): attempt {n} inconclusive, the \
                         machine was too slow: {why}",
                        self.case, self.mode
                    );
                    reasons.push(why);
                }
            }
        }
        panic!(
            "conformance case `{}`: every attempt ran too slowly to judge the backend: {reasons:?}",
            self.case
        );
    }
}

/// The outcome of one attempt of a timing-sensitive case that did not fail.
#[derive(Debug)]
pub(crate) enum Timing {
    /// The case passed.
    Done,
    /// The machine was too slow for the case's time window; try again.
    TooSlow(String),
}

/// Builds a configuration the cases need; they only use valid ones.
pub(crate) fn config(builder: LayerConfigBuilder) -> LayerConfig {
    builder
        .build()
        .expect("the conformance suite builds valid configurations")
}

/// A message of type `kind` carrying the number `n` under the key `"n"`.
pub(crate) fn numbered(kind: &str, n: i64) -> Message {
    Message::new(kind).with("n", n)
}

/// The number under the key `"n"`.
pub(crate) fn number(message: &Message) -> i64 {
    message
        .get("n")
        .and_then(Value::as_i64)
        .unwrap_or_else(|| panic!("message without an integer \"n\": {message:?}"))
}

/// A layer from the fixture, driven through the blocking or the async half of the API.
#[derive(Clone, Debug)]
pub(crate) struct Driver {
    layer: AnyLayer,
    mode: Mode,
}

impl Driver {
    // ===== The layer's own operations =====

    /// The layer itself, for what the driver does not wrap.
    pub(crate) fn as_layer(&self) -> &AnyLayer {
        &self.layer
    }

    pub(crate) fn metrics(&self) -> MetricsSnapshot {
        self.layer.metrics()
    }

    pub(crate) fn close(&self) {
        self.layer.close();
    }

    /// A process-specific name minted with `prefix`.
    pub(crate) fn new_channel(&self, prefix: &str) -> String {
        self.layer
            .new_channel(prefix)
            .unwrap_or_else(|e| panic!("new_channel({prefix:?}) failed: {e}"))
    }

    pub(crate) async fn send(&self, channel: &str, message: Message) -> Result<(), SendError> {
        match self.mode {
            Mode::Blocking => self.layer.send(channel, message),
            Mode::Async => self.layer.send_async(channel, message).await,
        }
    }

    pub(crate) async fn send_until(
        &self,
        channel: &str,
        message: Message,
        deadline: Option<Instant>,
    ) -> Result<(), SendError> {
        match self.mode {
            Mode::Blocking => self.layer.send_until(channel, message, deadline),
            Mode::Async => {
                self.layer
                    .send_until_async(channel, message, deadline)
                    .await
            }
        }
    }

    pub(crate) async fn receive_until(
        &self,
        channel: &str,
        deadline: Option<Instant>,
    ) -> Result<Message, ReceiveError> {
        match self.mode {
            Mode::Blocking => self.layer.receive_until(channel, deadline),
            Mode::Async => self.layer.receive_until_async(channel, deadline).await,
        }
    }

    pub(crate) async fn receive_timeout(
        &self,
        channel: &str,
        timeout: Duration,
    ) -> Result<Message, ReceiveError> {
        match self.mode {
            Mode::Blocking => self.layer.receive_timeout(channel, timeout),
            Mode::Async => self.layer.receive_timeout_async(channel, timeout).await,
        }
    }

    pub(crate) async fn try_receive(&self, channel: &str) -> Result<Message, TryReceiveError> {
        match self.mode {
            Mode::Blocking => self.layer.try_receive(channel),
            Mode::Async => self.layer.try_receive_async(channel).await,
        }
    }

    pub(crate) async fn group_add(&self, group: &str, channel: &str) -> Result<(), LayerError> {
        match self.mode {
            Mode::Blocking => self.layer.group_add(group, channel),
            Mode::Async => self.layer.group_add_async(group, channel).await,
        }
    }

    pub(crate) async fn group_discard(&self, group: &str, channel: &str) -> Result<(), LayerError> {
        match self.mode {
            Mode::Blocking => self.layer.group_discard(group, channel),
            Mode::Async => self.layer.group_discard_async(group, channel).await,
        }
    }

    pub(crate) async fn group_send(
        &self,
        group: &str,
        message: Message,
    ) -> Result<GroupSendReport, LayerError> {
        match self.mode {
            Mode::Blocking => self.layer.group_send(group, message),
            Mode::Async => self.layer.group_send_async(group, message).await,
        }
    }

    pub(crate) async fn send_many(
        &self,
        messages: Vec<(String, Message)>,
    ) -> Vec<Result<(), SendError>> {
        match self.mode {
            Mode::Blocking => self.layer.send_many(messages),
            Mode::Async => self.layer.send_many_async(messages).await,
        }
    }

    pub(crate) async fn group_send_many(
        &self,
        messages: Vec<(String, Message)>,
    ) -> Vec<Result<GroupSendReport, LayerError>> {
        match self.mode {
            Mode::Blocking => self.layer.group_send_many(messages),
            Mode::Async => self.layer.group_send_many_async(messages).await,
        }
    }

    pub(crate) async fn flush(&self) -> Result<(), LayerError> {
        match self.mode {
            Mode::Blocking => self.layer.flush(),
            Mode::Async => self.layer.flush_async().await,
        }
    }

    /// Sends a typed value: `send_typed` in the blocking form, `send_typed_async` in the
    /// async one.
    pub(crate) async fn send_typed<T: serde::Serialize>(&self, channel: &str, value: &T) {
        let result = match self.mode {
            Mode::Blocking => self.layer.send_typed(channel, value),
            Mode::Async => self.layer.send_typed_async(channel, value).await,
        };
        result.unwrap_or_else(|e| panic!("sending a typed message to {channel:?} failed: {e}"));
    }

    /// Receives a typed value: `receive_typed` (on a helper thread, so that a lost message
    /// fails the case instead of hanging it) in the blocking form, `receive_typed_async`
    /// (raced against a timer, for the same reason) in the async one.
    pub(crate) async fn receive_typed<T>(&self, channel: &str) -> T
    where
        T: serde::de::DeserializeOwned + Send + 'static,
    {
        match self.mode {
            Mode::Blocking => {
                let layer = self.layer.clone();
                let name = channel.to_owned();
                let helper = spawn("receive_typed", move || layer.receive_typed::<T>(&name));
                helper
                    .join()
                    .await
                    .unwrap_or_else(|e| panic!("receive_typed on {channel:?} failed: {e}"))
            }
            Mode::Async => {
                let receiving = self.layer.receive_typed_async::<T>(channel);
                let timer = std::pin::pin!(runtime::sleep(Duration::from_secs(30)));
                match futures_util::future::select(receiving, timer).await {
                    futures_util::future::Either::Left((received, _)) => {
                        received.unwrap_or_else(|e| {
                            panic!("receive_typed_async on {channel:?} failed: {e}")
                        })
                    }
                    futures_util::future::Either::Right(_) => {
                        panic!("receive_typed_async on {channel:?}: nothing within 30 s")
                    }
                }
            }
        }
    }

    // ===== Waiting =====

    /// Sleeps: the thread in the blocking form, [`runtime::sleep`] in the async one.
    pub(crate) async fn sleep(&self, duration: Duration) {
        match self.mode {
            Mode::Blocking => thread::sleep(duration),
            Mode::Async => runtime::sleep(duration).await,
        }
    }

    /// Sleeps until `instant` (returns at once if it has passed).
    pub(crate) async fn sleep_until(&self, instant: Instant) {
        let left = instant.saturating_duration_since(Instant::now());
        if !left.is_zero() {
            self.sleep(left).await;
        }
    }

    // ===== Asserting helpers =====

    /// Sends, failing the case if the send fails.
    pub(crate) async fn send_ok(&self, channel: &str, message: Message) {
        if let Err(e) = self.send(channel, message).await {
            panic!("send to {channel:?} failed: {e} ({e:?})");
        }
    }

    /// Sends the [`numbered`] messages `kind` with each of `numbers`.
    pub(crate) async fn send_numbered(
        &self,
        channel: &str,
        kind: &str,
        numbers: impl IntoIterator<Item = i64>,
    ) {
        for n in numbers {
            self.send_ok(channel, numbered(kind, n)).await;
        }
    }

    /// Receives a message that should be there, failing the case if none comes.
    pub(crate) async fn expect(&self, channel: &str) -> Message {
        match self.receive_timeout(channel, PATIENCE).await {
            Ok(message) => message,
            Err(e) => panic!("expected a message on {channel:?}, got {e} ({e:?})"),
        }
    }

    /// Receives messages that should be there and checks their numbers, in order.
    pub(crate) async fn expect_numbered(
        &self,
        channel: &str,
        numbers: impl IntoIterator<Item = i64>,
    ) {
        for n in numbers {
            let message = self.expect(channel).await;
            assert_eq!(
                number(&message),
                n,
                "wrong message (or wrong order) on {channel:?}: {message:?}"
            );
        }
    }

    /// Checks that no message arrives on `channel` for a while ([`QUIET`]).
    pub(crate) async fn expect_nothing(&self, channel: &str) {
        match self.receive_timeout(channel, QUIET).await {
            Err(ReceiveError::Timeout) => {}
            Ok(message) => panic!("expected no message on {channel:?}, got {message:?}"),
            Err(e) => panic!("expected the receive on {channel:?} to time out, got {e} ({e:?})"),
        }
    }

    /// Checks that `channel` holds no message right now (`try_receive` reports `Empty`).
    pub(crate) async fn expect_empty(&self, channel: &str) {
        match self.try_receive(channel).await {
            Err(TryReceiveError::Empty) => {}
            Ok(message) => panic!("expected {channel:?} to be empty, it held {message:?}"),
            Err(e) => panic!("expected try_receive on {channel:?} to be Empty, got {e} ({e:?})"),
        }
    }

    pub(crate) async fn group_add_ok(&self, group: &str, channel: &str) {
        if let Err(e) = self.group_add(group, channel).await {
            panic!("group_add({group:?}, {channel:?}) failed: {e} ({e:?})");
        }
    }

    pub(crate) async fn group_discard_ok(&self, group: &str, channel: &str) {
        if let Err(e) = self.group_discard(group, channel).await {
            panic!("group_discard({group:?}, {channel:?}) failed: {e} ({e:?})");
        }
    }

    pub(crate) async fn group_send_ok(&self, group: &str, message: Message) -> GroupSendReport {
        match self.group_send(group, message).await {
            Ok(report) => report,
            Err(e) => panic!("group_send({group:?}) failed: {e} ({e:?})"),
        }
    }

    // ===== Concurrency =====

    /// Runs `body` with a clone of this driver on a new OS thread, inside [`block_on`]. In the
    /// async form the thread uses only the async API, like the case itself.
    pub(crate) fn spawn<F, Fut, T>(&self, name: &str, body: F) -> Helper<T>
    where
        F: FnOnce(Driver) -> Fut + Send + 'static,
        Fut: Future<Output = T>,
        T: Send + 'static,
    {
        let driver = self.clone();
        spawn(name, move || block_on(body(driver)))
    }
}

// ===== Helper threads =====

struct Slot<T> {
    outcome: Option<thread::Result<T>>,
    waker: Option<Waker>,
}

/// A helper thread whose result can be awaited, with a limit, from either form of a case.
pub(crate) struct Helper<T> {
    name: String,
    slot: Arc<Mutex<Slot<T>>>,
}

impl<T> fmt::Debug for Helper<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Helper")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Runs `body` on a new OS thread.
pub(crate) fn spawn<T, F>(name: &str, body: F) -> Helper<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let slot = Arc::new(Mutex::new(Slot {
        outcome: None,
        waker: None,
    }));
    let theirs = Arc::clone(&slot);
    thread::Builder::new()
        .name(format!("conformance-{name}"))
        .spawn(move || {
            let outcome = catch_unwind(AssertUnwindSafe(body));
            let waker = {
                let mut slot = theirs.lock();
                slot.outcome = Some(outcome);
                slot.waker.take()
            };
            if let Some(waker) = waker {
                waker.wake();
            }
        })
        .expect("spawning a conformance helper thread");
    Helper {
        name: name.to_owned(),
        slot,
    }
}

impl<T> Helper<T> {
    /// The thread's result; its panic, if it panicked; a panic of its own if the thread has
    /// not finished within [`JOIN_LIMIT`] (a deadlock or a lost wake-up).
    pub(crate) async fn join(self) -> T {
        let mut limit = pin!(runtime::sleep(JOIN_LIMIT));
        let outcome = poll_fn(|cx| {
            {
                let mut slot = self.slot.lock();
                if let Some(outcome) = slot.outcome.take() {
                    return Poll::Ready(Some(outcome));
                }
                slot.waker = Some(cx.waker().clone());
            }
            match limit.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            }
        })
        .await;
        match outcome {
            Some(Ok(value)) => value,
            Some(Err(panic)) => resume_unwind(panic),
            None => panic!(
                "helper thread `{}` did not finish within {JOIN_LIMIT:?}: a deadlock or a lost \
                 wake-up in the backend",
                self.name
            ),
        }
    }
}

/// Joins every helper, in order.
pub(crate) async fn join_all<T>(helpers: Vec<Helper<T>>) -> Vec<T> {
    let mut out = Vec::with_capacity(helpers.len());
    for helper in helpers {
        out.push(helper.join().await);
    }
    out
}
