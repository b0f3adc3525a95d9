//! A backend written outside the crate: it implements only the required (async) methods of
//! `ChannelLayer`, so every blocking call goes through the trait's default methods. It plugs
//! into `AnyLayer::from_url` under its own scheme and passes the whole conformance suite.

use std::time::Instant;

use channel_layer::{
    AnyLayer, BoxFuture, BuildError, Capabilities, ChannelLayer, ChannelLayerExt, GroupSendReport,
    InMemoryLayer, LayerConfig, LayerError, Message, MetricsSnapshot, NameError, ReceiveError,
    SendError, TryReceiveError,
};

/// Delegates every required method to an in-memory layer, through its async API only.
#[derive(Debug)]
struct Outside(InMemoryLayer);

impl ChannelLayer for Outside {
    fn capabilities(&self) -> Capabilities {
        self.0.capabilities()
    }
    fn metrics(&self) -> MetricsSnapshot {
        self.0.metrics()
    }
    fn new_channel(&self, prefix: &str) -> Result<String, NameError> {
        self.0.new_channel(prefix)
    }
    fn send_async<'a>(
        &'a self,
        channel: &'a str,
        message: Message,
    ) -> BoxFuture<'a, Result<(), SendError>> {
        self.0.send_async(channel, message)
    }
    fn receive_until_async<'a>(
        &'a self,
        channel: &'a str,
        deadline: Option<Instant>,
    ) -> BoxFuture<'a, Result<Message, ReceiveError>> {
        self.0.receive_until_async(channel, deadline)
    }
    fn try_receive_async<'a>(
        &'a self,
        channel: &'a str,
    ) -> BoxFuture<'a, Result<Message, TryReceiveError>> {
        self.0.try_receive_async(channel)
    }
    fn group_add_async<'a>(
        &'a self,
        group: &'a str,
        channel: &'a str,
    ) -> BoxFuture<'a, Result<(), LayerError>> {
        self.0.group_add_async(group, channel)
    }
    fn group_discard_async<'a>(
        &'a self,
        group: &'a str,
        channel: &'a str,
    ) -> BoxFuture<'a, Result<(), LayerError>> {
        self.0.group_discard_async(group, channel)
    }
    fn group_send_async<'a>(
        &'a self,
        group: &'a str,
        message: Message,
    ) -> BoxFuture<'a, Result<GroupSendReport, LayerError>> {
        self.0.group_send_async(group, message)
    }
    fn flush_async(&self) -> BoxFuture<'_, Result<(), LayerError>> {
        self.0.flush_async()
    }
    fn close(&self) {
        self.0.close()
    }
}

fn outside(config: LayerConfig) -> AnyLayer {
    AnyLayer::new(Outside(InMemoryLayer::new(config)))
}

fn from_url(url: &str) -> Result<AnyLayer, BuildError> {
    let (config, _) = channel_layer::parse_url_params(url, &[])?;
    Ok(outside(config))
}

mod blocking_defaults {
    channel_layer::conformance_tests!(super::outside);
}

mod async_methods {
    channel_layer::async_conformance_tests!(super::outside, futures::executor::block_on);
}

#[test]
fn a_registered_scheme_builds_the_backend_from_a_url() {
    channel_layer::register_backend("outside", from_url);
    let layer = AnyLayer::from_url("outside://?capacity=1").expect("registered scheme");
    layer.send("a", Message::new("one")).expect("room for one");
    let full = layer
        .send("a", Message::new("two"))
        .expect_err("capacity 1");
    assert!(full.is_full());
    assert_eq!(
        layer.receive("a").expect("queued").message_type(),
        Some("one")
    );
    assert!(matches!(
        AnyLayer::from_url("outside://?colour=red"),
        Err(BuildError::UnknownParameter { .. })
    ));
}

#[test]
fn unknown_schemes_and_disabled_backends_are_typed_errors() {
    assert!(matches!(
        AnyLayer::from_url("carrier-pigeon://coop"),
        Err(BuildError::UnknownScheme { .. })
    ));
    assert!(matches!(
        AnyLayer::from_url("not a url"),
        Err(BuildError::InvalidUrl { .. })
    ));
    assert!(matches!(
        AnyLayer::from_url("memory://?capacity=0"),
        Err(BuildError::InvalidOption { .. })
    ));
    assert!(matches!(
        AnyLayer::from_url("memory://somehost"),
        Err(BuildError::InvalidUrl { .. })
    ));
}
