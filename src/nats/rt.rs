//! The background runtime the NATS client runs on.
//!
//! `async-nats` needs tokio. So that no runtime is forced on the application, every NATS
//! operation runs as a task on one small multi-threaded tokio runtime per process (threads
//! named `channel-layer-nats`), started on first use; the layer's futures only wait for
//! those tasks, which works on any executor (and under [`crate::runtime::block_on`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};

use crate::error::{BackendError, BackendErrorKind};

fn runtime() -> Result<&'static tokio::runtime::Runtime, BackendError> {
    static RUNTIME: OnceLock<Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("channel-layer-nats")
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| {
            BackendError::new(
                BackendErrorKind::Other,
                format!("starting the NATS runtime: {e}"),
            )
        })
}

/// A handle to the runtime, to spawn on.
pub(super) fn handle() -> Result<tokio::runtime::Handle, BackendError> {
    runtime().map(|rt| rt.handle().clone())
}

/// Runs `future` on the runtime and waits for it from whatever executor polls this. The
/// task goes on if this future is dropped.
pub(super) async fn run<T: Send + 'static, E: From<BackendError> + Send + 'static>(
    future: impl Future<Output = Result<T, E>> + Send + 'static,
) -> Result<T, E> {
    let task = handle()?.spawn(future);
    match task.await {
        Ok(out) => out,
        Err(e) => Err(E::from(BackendError::new(
            BackendErrorKind::Other,
            format!("a NATS task failed: {e}"),
        ))),
    }
}

/// Polls `future` where it is awaited, on whatever executor that is, with the runtime
/// entered for each poll, so the client's timers and channels work without spawning a task.
/// It saves the two hand-offs between threads that [`run`] costs, at the price that dropping
/// this future drops the work (a send dropped mid-way may or may not have been stored, as with
/// any async send).
pub(super) fn inline<F: Future>(future: F) -> Result<Inline<F>, BackendError> {
    Ok(Inline {
        handle: handle()?,
        future: Box::pin(future),
    })
}

/// The future of [`inline`].
pub(super) struct Inline<F> {
    handle: tokio::runtime::Handle,
    future: Pin<Box<F>>,
}

impl<F: Future> Future for Inline<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        let _entered = this.handle.enter();
        this.future.as_mut().poll(cx)
    }
}
