//! The Redis backend against a real `redis-server` that each layer spawns for itself: the whole
//! conformance suite, blocking and async, plus Redis-specific behaviour.

mod support;

use std::time::Duration;

use channel_layer::redis::{RedisConfig, RedisLayer};
use channel_layer::{AnyLayer, ChannelLayer, ChannelLayerExt, LayerConfig, Message};
use support::redis_server::RedisServer;

/// A Redis layer with its own server, which lives exactly as long as the layer.
#[derive(Debug)]
struct Served {
    layer: RedisLayer,
    _server: RedisServer,
}

impl ChannelLayer for Served {
    channel_layer::delegate_channel_layer!(layer);
}

fn layer_on(server: &RedisServer, layer: LayerConfig) -> RedisLayer {
    let mut config = RedisConfig::new(server.url());
    config.layer = layer;
    RedisLayer::new(config).expect("a valid configuration")
}

/// The conformance fixture: a fresh server per layer. When redis-server is missing the test
/// fails in CI and is skipped (with a message) elsewhere.
fn served(config: LayerConfig) -> AnyLayer {
    let Some(server) = RedisServer::start() else {
        // Without a server the suite cannot run; the skip rule was applied by start().
        std::process::exit(0);
    };
    AnyLayer::new(Served {
        layer: layer_on(&server, config),
        _server: server,
    })
}

mod blocking {
    channel_layer::conformance_tests!(super::served);
}

mod on_executor {
    channel_layer::async_conformance_tests!(super::served, futures::executor::block_on);
}

#[test]
fn url_options_configure_the_layer() {
    let config =
        RedisConfig::from_url("redis://127.0.0.1:1/3?prefix=app&capacity=7&expiry=2.5&group_expiry=30&receive_prefetch=0&timeout=0.5")
            .unwrap();
    assert_eq!(config.prefix, "app");
    assert_eq!(config.layer.capacity, 7);
    assert_eq!(config.layer.expiry, Duration::from_millis(2500));
    assert_eq!(config.layer.group_expiry, Duration::from_secs(30));
    assert_eq!(config.receive_prefetch, 0);
    assert_eq!(config.operation_timeout, Duration::from_millis(500));
    assert_eq!(config.hosts, vec!["redis://127.0.0.1:1/3".to_owned()]);
    assert!(RedisConfig::from_url("redis://127.0.0.1/0?colour=red").is_err());
    assert!(RedisConfig::from_url("redis://127.0.0.1/0?prefix=a*b").is_err());
    assert!(AnyLayer::from_url("redis://127.0.0.1:1/0?capacity=x").is_err());
}

#[test]
fn an_unreachable_server_fails_fast_with_a_typed_error() {
    // Port 1 on loopback refuses connections.
    let layer = RedisLayer::from_url("redis://127.0.0.1:1/0?timeout=1").unwrap();
    let start = std::time::Instant::now();
    let err = layer.send("a", Message::new("x")).unwrap_err();
    assert!(
        matches!(err, channel_layer::SendError::Backend { .. }),
        "{err:?}"
    );
    let err = layer
        .receive_timeout("a", Duration::from_secs(5))
        .unwrap_err();
    assert!(
        matches!(err, channel_layer::ReceiveError::Backend(_)),
        "{err:?}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "took {:?}",
        start.elapsed()
    );
}
