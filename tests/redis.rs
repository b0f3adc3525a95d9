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

#[test]
fn acl_users_and_database_numbers_come_from_the_url() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let reply = server.command(&[
        "ACL", "SETUSER", "alice", "on", ">s3cret", "~*", "&*", "+@all",
    ]);
    assert!(reply.starts_with("+OK"), "{reply}");
    let url = format!(
        "redis://alice:s3cret@127.0.0.1:{}/3?prefix=acl",
        server.port()
    );
    let layer = RedisLayer::from_url(&url).unwrap();
    layer.send("private", Message::new("hi")).unwrap();
    // The message went to database 3.
    let keyspace = server.command(&["INFO", "keyspace"]);
    assert!(keyspace.contains("db3:keys=1"), "{keyspace}");
    assert_eq!(
        layer
            .receive_timeout("private", Duration::from_secs(5))
            .unwrap()
            .message_type(),
        Some("hi")
    );

    let wrong =
        RedisLayer::from_url(&format!("redis://alice:nope@127.0.0.1:{}/0", server.port())).unwrap();
    let err = wrong.send("private", Message::new("x")).unwrap_err();
    assert!(
        matches!(err, channel_layer::SendError::Backend { .. }),
        "{err:?}"
    );
}

#[test]
fn a_unix_socket_url_reaches_the_server() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let socket = server.dir().join("redis.sock");
    let socket_arg = socket.to_str().unwrap().to_owned();
    // A socket is set at start-up: a second server listens on one only, in the first's folder.
    let mut child = std::process::Command::new("redis-server")
        .args([
            "--port",
            "0",
            "--unixsocket",
            &socket_arg,
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .args(["--dir", server.dir().to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-server");
    let start = std::time::Instant::now();
    while !socket.exists() && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let result = std::panic::catch_unwind(|| {
        let layer = RedisLayer::from_url(&format!("unix://{socket_arg}?db=2&prefix=sock")).unwrap();
        layer.send("local", Message::new("over a socket")).unwrap();
        let got = layer
            .receive_timeout("local", Duration::from_secs(5))
            .unwrap();
        assert_eq!(got.message_type(), Some("over a socket"));
    });
    let _ = child.kill();
    let _ = child.wait();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}
