//! The conformance suite (`channel_layer::testing`) on the in-memory backend: the blocking
//! cases, and the async cases on a tokio multi-thread runtime and on `futures`' executor.

use std::sync::OnceLock;

use channel_layer::{AnyLayer, InMemoryLayer, LayerConfig};

fn in_memory(config: LayerConfig) -> AnyLayer {
    AnyLayer::new(InMemoryLayer::new(config))
}

fn tokio_runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("building the tokio runtime")
    })
}

/// The blocking API, with the fixture written as a closure.
mod blocking {
    use channel_layer::{AnyLayer, InMemoryLayer};

    channel_layer::conformance_tests!(|config| AnyLayer::new(InMemoryLayer::new(config)));
}

/// The async API, driven by a tokio multi-thread runtime.
mod on_tokio {
    use super::{in_memory, tokio_runtime};

    channel_layer::async_conformance_tests!(in_memory, |fut| tokio_runtime().block_on(fut));
}

/// The async API, driven by `futures::executor::block_on`.
mod on_futures_executor {
    use super::in_memory;

    channel_layer::async_conformance_tests!(in_memory, futures::executor::block_on);
}
