//! Public types and the futures the layer returns are `Send` and `Sync` where users need them,
//! and every error is a `std::error::Error + Send + Sync + 'static`: a change that breaks this
//! breaks users, so it fails here first.

use channel_layer::prelude::*;
use channel_layer::{
    BackendError, BuildError, Error, LayerError, MessageError, NameError, ReceiveError, SendError,
    TryReceiveError,
};

fn send_sync<T: Send + Sync>() {}
fn send<T: Send>(_: &T) {}
fn error<T: std::error::Error + Send + Sync + 'static>() {}

#[test]
fn handles_and_messages_are_send_and_sync() {
    send_sync::<InMemoryLayer>();
    send_sync::<AnyLayer>();
    send_sync::<Message>();
    send_sync::<Value>();
    send_sync::<LayerConfig>();
    send_sync::<channel_layer::MetricsSnapshot>();
    send_sync::<channel_layer::runtime::Sleep>();
}

#[test]
fn futures_are_send() {
    let layer = InMemoryLayer::default();
    send(&layer.send_async("a", Message::new("x")));
    send(&layer.receive_async("a"));
    send(&layer.group_send_async("g", Message::new("x")));
    let any = AnyLayer::new(layer);
    send(&any.receive_timeout_async("a", std::time::Duration::from_millis(1)));
}

#[test]
fn errors_are_std_errors() {
    error::<Error>();
    error::<NameError>();
    error::<MessageError>();
    error::<SendError>();
    error::<ReceiveError>();
    error::<TryReceiveError>();
    error::<LayerError>();
    error::<BuildError>();
    error::<BackendError>();
}
