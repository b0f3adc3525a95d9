//! Layers configured by URL alone: the bounds every option is checked against, the schemes a
//! build knows, and (with the `redis` feature) several servers in one URL and encryption keys
//! given as parameters, against private `redis-server` processes.

mod support;

use std::time::Duration;

use channel_layer::prelude::*;
use channel_layer::{BuildError, MAX_CAPACITY, MAX_EXPIRY, MAX_GROUP_EXPIRY};

/// The option an error names and its reason.
#[track_caller]
fn invalid_option<T: std::fmt::Debug>(result: Result<T, BuildError>) -> (String, String) {
    match result {
        Err(BuildError::InvalidOption { name, reason, .. }) => (name, reason),
        other => panic!("expected InvalidOption, got {other:?}"),
    }
}

#[test]
fn out_of_range_values_are_refused_when_the_url_is_read() {
    let cases = [
        ("memory://?expiry=1e19", "expiry"),
        ("memory://?expiry=NaN", "expiry"),
        ("memory://?expiry=-inf", "expiry"),
        ("memory://?group_expiry=1e19", "group_expiry"),
        ("memory://?group_expiry=-3", "group_expiry"),
        ("memory://?capacity=18446744073709551615", "capacity"),
        ("memory://?capacity=1000000001", "capacity"),
        ("memory://?capacity=2&capacity=3", "capacity"),
    ];
    for (url, option) in cases {
        let (name, reason) = invalid_option(AnyLayer::from_url(url));
        assert_eq!(name, option, "{url}: {reason}");
    }
}

#[test]
fn a_layer_at_every_bound_works_without_overflowing() {
    let url = format!(
        "memory://?capacity={MAX_CAPACITY}&expiry={}&group_expiry={}",
        MAX_EXPIRY.as_secs(),
        MAX_GROUP_EXPIRY.as_secs()
    );
    let layer = AnyLayer::from_url(&url).unwrap();
    let channel = layer.new_channel("bounds").unwrap();
    layer.group_add("everyone", &channel).unwrap();
    layer.send("bounds", Message::new("direct")).unwrap();
    layer.group_send("everyone", Message::new("group")).unwrap();
    let got = layer
        .receive_timeout("bounds", Duration::from_secs(1))
        .unwrap();
    assert_eq!(got.message_type(), Some("direct"));
    let got = channel_layer::runtime::block_on(
        layer.receive_timeout_async(&channel, Duration::from_secs(1)),
    )
    .unwrap();
    assert_eq!(got.message_type(), Some("group"));
}

#[test]
fn an_unknown_scheme_lists_the_schemes_this_build_knows() {
    channel_layer::register_backend("Carrier-Pigeon", |url| {
        let (config, _) = channel_layer::parse_url_params(url, &[])?;
        Ok(AnyLayer::new(InMemoryLayer::new(config)))
    });
    // Registered schemes match without regard to case, as URL schemes do.
    assert!(AnyLayer::from_url("carrier-pigeon://?capacity=3").is_ok());
    assert!(AnyLayer::from_url("CARRIER-PIGEON://").is_ok());
    let Err(BuildError::UnknownScheme { scheme, known }) = AnyLayer::from_url("smoke-signal://x")
    else {
        panic!("expected UnknownScheme");
    };
    assert_eq!(scheme, "smoke-signal");
    let known: Vec<&str> = known.split(", ").collect();
    let mut expected = vec!["carrier-pigeon", "memory"];
    if cfg!(feature = "redis") {
        expected.extend([
            "redis",
            "redis+cluster",
            "redis+sentinel",
            "redis+unix",
            "rediss",
            "rediss+cluster",
            "rediss+sentinel",
            "unix",
        ]);
    }
    if cfg!(feature = "nats") {
        expected.extend(["nats", "tls"]);
    }
    expected.sort_unstable();
    assert_eq!(known, expected);
}

#[cfg(not(feature = "redis"))]
#[test]
fn redis_urls_without_the_feature_say_which_feature_is_needed() {
    for url in ["redis://h1:1,h2:2/0", "rediss://h/0", "unix:///tmp/r.sock"] {
        match AnyLayer::from_url(url) {
            Err(BuildError::FeatureDisabled { feature, .. }) => assert_eq!(feature, "redis"),
            other => panic!("{url}: expected FeatureDisabled, got {other:?}"),
        }
    }
}

#[cfg(not(feature = "nats"))]
#[test]
fn nats_urls_without_the_feature_say_which_feature_is_needed() {
    for url in ["nats://h:4222", "tls://h1,h2"] {
        match AnyLayer::from_url(url) {
            Err(BuildError::FeatureDisabled { feature, .. }) => assert_eq!(feature, "nats"),
            other => panic!("{url}: expected FeatureDisabled, got {other:?}"),
        }
    }
}

#[cfg(feature = "redis")]
mod redis {
    use super::*;

    use channel_layer::SendError;
    use channel_layer::redis::{RedisConfig, RedisLayer};
    use support::redis_server::RedisServer;

    const WAIT: Duration = Duration::from_secs(5);

    fn zcard(server: &RedisServer, key: &str) -> i64 {
        server
            .query(&[b"ZCARD", key.as_bytes()])
            .as_int()
            .unwrap_or_else(|| panic!("ZCARD {key} is not an integer"))
    }

    #[test]
    fn sentinel_urls_give_one_host_per_master_and_check_every_part() {
        let config = RedisConfig::from_url(
            "redis+sentinel://app:pw@s1:26380,s2/orders,chat/3?sentinel_password=sp&prefix=x",
        )
        .unwrap();
        assert_eq!(
            config.hosts,
            [
                "redis+sentinel://app:pw@s1:26380,s2/orders/3?sentinel_password=sp",
                "redis+sentinel://app:pw@s1:26380,s2/chat/3?sentinel_password=sp",
            ]
        );
        assert_eq!(config.prefix, "x");
        let shown = format!("{config:?}");
        assert!(!shown.contains("pw@") && !shown.contains("=sp"), "{shown}");
        for bad in [
            "redis+sentinel://s1/",
            "redis+sentinel:///m",
            "redis+sentinel://s1,,s2/m",
            "redis+sentinel://s1/m/notadb",
            "redis+sentinel://s1/bad name",
        ] {
            assert!(
                matches!(
                    RedisConfig::from_url(bad),
                    Err(BuildError::InvalidUrl { .. })
                ),
                "{bad}: {:?}",
                RedisConfig::from_url(bad)
            );
        }
        // The sentinels' login is a sentinel URL's parameter only.
        assert!(matches!(
            RedisConfig::from_url("redis://h/0?sentinel_password=x"),
            Err(BuildError::UnknownParameter { .. })
        ));
        // From AnyLayer too.
        assert!(AnyLayer::from_url("redis+sentinel://127.0.0.1:1/m/0").is_ok());
    }

    #[test]
    fn cluster_urls_name_seed_nodes_and_have_database_0_only() {
        let config =
            RedisConfig::from_url("redis+cluster://u:pw@n1:7000,n2:7001?prefix=x&timeout=1")
                .unwrap();
        assert!(config.cluster);
        assert_eq!(
            config.hosts,
            ["redis://u:pw@n1:7000", "redis://u:pw@n2:7001"]
        );
        assert!(RedisConfig::from_url("redis+cluster://n1:7000/0").is_ok());
        assert!(matches!(
            RedisConfig::from_url("redis+cluster://n1:7000/3"),
            Err(BuildError::InvalidUrl { .. })
        ));
        // The slot map is read when the layer is built: no node answering is a typed error.
        let err = AnyLayer::from_url("redis+cluster://127.0.0.1:1?connect_timeout=1").unwrap_err();
        assert!(matches!(err, BuildError::Backend(_)), "{err:?}");
        assert!(err.to_string().contains("slot map"), "{err}");
    }

    #[test]
    fn values_that_used_to_panic_later_are_refused_up_front() {
        let base = "redis://127.0.0.1:1/0";
        let cases = [
            ("expiry=1e19", "expiry"),
            ("timeout=1e19", "timeout"),
            ("connect_timeout=1e19", "connect_timeout"),
            ("receive_prefetch=18446744073709551615", "receive_prefetch"),
            ("random_prefix_length=4000000000", "random_prefix_length"),
        ];
        for (query, option) in cases {
            let url = format!("{base}?{query}");
            let (name, reason) = invalid_option(AnyLayer::from_url(&url));
            assert_eq!(name, option, "{url}: {reason}");
        }
        // And in code, RedisLayer::new checks the same bounds.
        let mut config = RedisConfig::new(base);
        config.operation_timeout = Duration::MAX;
        let (name, _) = invalid_option(RedisLayer::new(config));
        assert_eq!(name, "operation_timeout");
    }

    #[test]
    fn a_layer_at_every_bound_works_against_a_server() {
        let Some(server) = RedisServer::start() else {
            return;
        };
        let url = format!(
            "redis://127.0.0.1:{}/0?prefix=bounds&capacity={MAX_CAPACITY}&expiry={}&group_expiry={}&timeout={}&connect_timeout={}&receive_prefetch={}&random_prefix_length={}",
            server.port(),
            MAX_EXPIRY.as_secs(),
            MAX_GROUP_EXPIRY.as_secs(),
            RedisConfig::MAX_TIMEOUT.as_secs(),
            RedisConfig::MAX_TIMEOUT.as_secs(),
            RedisConfig::MAX_RECEIVE_PREFETCH,
            RedisConfig::MAX_RANDOM_PREFIX_LENGTH,
        );
        let layer = AnyLayer::from_url(&url).unwrap();
        let channel = layer.new_channel("bounds").unwrap();
        layer.group_add("everyone", &channel).unwrap();
        channel_layer::runtime::block_on(async {
            layer
                .send_async("bounds", Message::new("direct"))
                .await
                .unwrap();
            let got = layer.receive_timeout_async("bounds", WAIT).await.unwrap();
            assert_eq!(got.message_type(), Some("direct"));
            layer
                .group_send_async("everyone", Message::new("group"))
                .await
                .unwrap();
            let got = layer.receive_timeout_async(&channel, WAIT).await.unwrap();
            assert_eq!(got.message_type(), Some("group"));
        });
        // Blocking calls too; the stored member starts with 1,024 random bytes.
        layer.send("bounds.stored", Message::new("x")).unwrap();
        let stored = server
            .query(&[b"ZRANGE", b"boundsbounds.stored", b"0", b"-1"])
            .bulks();
        assert_eq!(stored.len(), 1);
        assert_eq!(stored[0].len(), 1024 + b"\x81\xa4type\xa1x".len());
        assert_eq!(
            layer
                .receive_timeout("bounds.stored", WAIT)
                .unwrap()
                .message_type(),
            Some("x")
        );
    }

    #[test]
    fn several_hosts_in_one_url_shard_the_layer_over_them() {
        let (Some(s1), Some(s2)) = (RedisServer::start(), RedisServer::start()) else {
            return;
        };
        let url = format!(
            "redis://127.0.0.1:{},127.0.0.1:{}/0?prefix=multi&capacity=50",
            s1.port(),
            s2.port()
        );
        let config = RedisConfig::from_url(&url).unwrap();
        assert_eq!(config.hosts, [s1.url(), s2.url()]);
        let layer = AnyLayer::from_url(&url).unwrap();

        // Normal channels: sends go round the servers, receives poll them all.
        for n in 0..6 {
            layer
                .send("multi.jobs", Message::new("job").with("n", n))
                .unwrap();
        }
        assert_eq!(zcard(&s1, "multimulti.jobs"), 3);
        assert_eq!(zcard(&s2, "multimulti.jobs"), 3);
        let mut got: Vec<i64> = (0..6)
            .map(|_| {
                let m = layer.receive_timeout("multi.jobs", WAIT).unwrap();
                m.get("n").and_then(Value::as_i64).unwrap()
            })
            .collect();
        got.sort_unstable();
        assert_eq!(got, [0, 1, 2, 3, 4, 5]);

        // A second layer on the same URL sees the same shards: process channels and groups
        // reach the layer that minted them, wherever their keys hash.
        let other = AnyLayer::from_url(&url).unwrap();
        let channels: Vec<String> = (0..8)
            .map(|_| layer.new_channel("inbox").unwrap())
            .collect();
        for (i, channel) in channels.iter().enumerate() {
            other
                .send(channel, Message::new("direct").with("i", i as i64))
                .unwrap();
            other.group_add("multi-group", channel).unwrap();
        }
        let report = other
            .group_send("multi-group", Message::new("group"))
            .unwrap();
        assert_eq!(report.delivered, 8);
        for (i, channel) in channels.iter().enumerate() {
            let direct = layer.receive_timeout(channel, WAIT).unwrap();
            assert_eq!(direct.get("i").and_then(Value::as_i64), Some(i as i64));
            let group = layer.receive_timeout(channel, WAIT).unwrap();
            assert_eq!(group.message_type(), Some("group"));
        }
        // Capacity holds on each server's key.
        let mut full = 0;
        for _ in 0..120 {
            match other.send("multi.cap", Message::new("fill")) {
                Ok(()) => {}
                Err(SendError::Full { capacity, .. }) => {
                    assert_eq!(capacity, 50);
                    full += 1;
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(full, 20);
        assert_eq!(zcard(&s1, "multimulti.cap"), 50);
        assert_eq!(zcard(&s2, "multimulti.cap"), 50);
    }

    #[cfg(feature = "redis-encryption")]
    #[test]
    fn encryption_keys_in_the_url_encrypt_and_rotate() {
        let Some(server) = RedisServer::start() else {
            return;
        };
        let url = |query: &str| format!("redis://127.0.0.1:{}/0?prefix=enc&{query}", server.port());
        let old = AnyLayer::from_url(&url("symmetric_encryption_keys=k1")).unwrap();
        let rotated = AnyLayer::from_url(&url(
            "symmetric_encryption_keys=k2&symmetric_encryption_keys=k1",
        ))
        .unwrap();
        let new_only = AnyLayer::from_url(&url("symmetric_encryption_keys=k2")).unwrap();

        old.send("enc.c", Message::new("from-old")).unwrap();
        let stored = server.query(&[b"ZRANGE", b"encenc.c", b"0", b"-1"]).bulks();
        assert!(stored[0][12..].starts_with(b"gAAAAA"), "not a Fernet token");
        assert!(!stored[0].windows(8).any(|w| w == b"from-old"));
        // The rotated layer decrypts with its second key...
        let got = rotated.receive_timeout("enc.c", WAIT).unwrap();
        assert_eq!(got.message_type(), Some("from-old"));
        // ...and encrypts with its first: a layer with only k2 reads it, one with k1 cannot.
        rotated.send("enc.c", Message::new("from-rotated")).unwrap();
        let got = new_only.receive_timeout("enc.c", WAIT).unwrap();
        assert_eq!(got.message_type(), Some("from-rotated"));
        rotated.send("enc.c", Message::new("unreadable")).unwrap();
        let before = old.metrics().undecodable;
        assert!(
            old.receive_timeout("enc.c", Duration::from_millis(300))
                .is_err()
        );
        assert_eq!(old.metrics().undecodable - before, 1);
    }
}
