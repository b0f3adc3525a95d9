//! Configuration of the Redis backend, in code or from a URL.

use std::time::Duration;

use crate::config::{LayerConfig, parse_seconds};
use crate::error::BuildError;

/// The default key prefix, as in channels_redis.
pub const DEFAULT_PREFIX: &str = "asgi";
/// The default number of random bytes stored before each message, as in channels_redis.
pub const DEFAULT_RANDOM_PREFIX_LENGTH: usize = 12;

/// Settings of a [`super::RedisLayer`]. The options shared with channels_redis have its names
/// and defaults, so a Rust service and a Django app configured alike share one Redis.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use channel_layer::redis::RedisConfig;
///
/// let mut config = RedisConfig::new("redis://127.0.0.1:6379/0");
/// config.prefix = "myapp".into();
/// config.layer.capacity = 500;
/// config.layer.expiry = Duration::from_secs(30);
/// let parsed = RedisConfig::from_url("redis://127.0.0.1:6379/0?prefix=myapp&capacity=500&expiry=30")?;
/// assert_eq!(parsed.prefix, config.prefix);
/// assert_eq!(parsed.layer.capacity, 500);
/// # Ok::<(), channel_layer::BuildError>(())
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RedisConfig {
    /// The servers, as `redis://[user:password@]host[:port][/db]`, `rediss://...` (needs the
    /// client's TLS support) or `unix:///path/to/socket[?db=N]`. More than one shards the
    /// channels over them with channels_redis's hash (spec §3.8).
    pub hosts: Vec<String>,
    /// Prepended to every key (`asgi`): must be the same in every process sharing the layer.
    pub prefix: String,
    /// Expiry, group expiry, capacity and per-channel capacities.
    pub layer: LayerConfig,
    /// Random bytes stored before each message so identical messages stay distinct members of
    /// a sorted set; every peer must agree on it (12, as in channels_redis).
    pub random_prefix_length: usize,
    /// How many messages beyond those receivers are waiting for may be taken from a channel in
    /// one round trip and buffered here (default 0). More means more throughput for a busy
    /// consumer, at a price: buffered messages no longer count against the channel's capacity
    /// in Redis, and another process can no longer receive them.
    pub receive_prefetch: usize,
    /// How long to wait for a connection to a server.
    pub connect_timeout: Duration,
    /// How long any call may wait for the server before it fails with a timeout.
    pub operation_timeout: Duration,
    /// Keys for symmetric encryption of message bodies, compatible with channels_redis's
    /// `symmetric_encryption_keys`: the first encrypts, all decrypt (key rotation).
    #[cfg(feature = "redis-encryption")]
    pub symmetric_encryption_keys: Vec<String>,
    /// For `rediss://` servers: a root certificate (PEM) to trust instead of the system's
    /// store, for servers with certificates from a private CA. (`rediss://host/#insecure`
    /// skips verification altogether, for tests only.)
    #[cfg(feature = "redis-tls")]
    pub tls_ca_cert: Option<Vec<u8>>,
}

impl RedisConfig {
    /// The defaults for one server.
    pub fn new(host: impl Into<String>) -> Self {
        RedisConfig::sharded([host.into()])
    }

    /// The defaults for several servers that shard the channels between them.
    pub fn sharded(hosts: impl IntoIterator<Item = String>) -> Self {
        RedisConfig {
            hosts: hosts.into_iter().collect(),
            prefix: DEFAULT_PREFIX.to_owned(),
            layer: LayerConfig::default(),
            random_prefix_length: DEFAULT_RANDOM_PREFIX_LENGTH,
            receive_prefetch: 0,
            connect_timeout: Duration::from_secs(2),
            operation_timeout: Duration::from_secs(5),
            #[cfg(feature = "redis-encryption")]
            symmetric_encryption_keys: Vec::new(),
            #[cfg(feature = "redis-tls")]
            tls_ca_cert: None,
        }
    }

    /// Reads a URL whose query parameters set the options: `prefix`, `capacity`, `expiry`,
    /// `group_expiry`, `random_prefix_length`, `receive_prefetch`, `connect_timeout` and
    /// `timeout` (seconds), and with the `redis-tls` feature `tls_ca_file` (a PEM file read
    /// now). The server address is the URL without them. An unknown parameter is an error.
    ///
    /// Addresses: `redis://[user:password@]host[:port][/db]`, `rediss://...` for TLS (feature
    /// `redis-tls`), `unix:///path/to/redis.sock[?db=N]`.
    ///
    /// # Errors
    ///
    /// [`BuildError`] for an unparsable URL, an unknown parameter or a bad value.
    pub fn from_url(url: &str) -> Result<Self, BuildError> {
        let mut parsed = url::Url::parse(url).map_err(|e| BuildError::InvalidUrl {
            url: url.to_owned(),
            reason: e.to_string(),
        })?;
        let mut config = RedisConfig::new(String::new());
        let mut kept: Vec<(String, String)> = Vec::new();
        for (name, value) in parsed.query_pairs() {
            let (name, value) = (name.into_owned(), value.into_owned());
            if config.layer.set_param(&name, &value)? {
                continue;
            }
            match name.as_str() {
                "prefix" => config.prefix = value,
                "random_prefix_length" => config.random_prefix_length = parse_count(&name, &value)?,
                "receive_prefetch" => config.receive_prefetch = parse_count(&name, &value)?,
                "connect_timeout" => config.connect_timeout = parse_seconds(&name, &value)?,
                "timeout" => config.operation_timeout = parse_seconds(&name, &value)?,
                #[cfg(feature = "redis-tls")]
                "tls_ca_file" => {
                    let pem = std::fs::read(&value).map_err(|e| {
                        BuildError::invalid_option(&name, &value, format!("cannot read it: {e}"))
                    })?;
                    config.tls_ca_cert = Some(pem);
                }
                // The socket path's database for unix URLs is the client's own parameter.
                "db" if parsed.scheme() != "redis" && parsed.scheme() != "rediss" => {
                    kept.push((name, value));
                }
                _ => {
                    return Err(BuildError::UnknownParameter {
                        scheme: parsed.scheme().to_owned(),
                        name,
                    });
                }
            }
        }
        if kept.is_empty() {
            parsed.set_query(None);
        } else {
            parsed.query_pairs_mut().clear().extend_pairs(kept);
        }
        config.hosts = vec![parsed.to_string()];
        config.validate()?;
        Ok(config)
    }

    /// Checks the settings.
    ///
    /// # Errors
    ///
    /// [`BuildError::InvalidOption`] naming the first bad setting.
    pub fn validate(&self) -> Result<(), BuildError> {
        self.layer.validate()?;
        if self.hosts.is_empty() {
            return Err(BuildError::invalid_option(
                "hosts",
                "[]",
                "at least one server is needed",
            ));
        }
        if self.prefix.is_empty() || self.prefix.contains(['*', '?', '[', ']', '\\']) {
            return Err(BuildError::invalid_option(
                "prefix",
                &self.prefix,
                "must be non-empty, without glob characters (* ? [ ] \\)",
            ));
        }
        if self.operation_timeout.is_zero() || self.connect_timeout.is_zero() {
            return Err(BuildError::invalid_option(
                "timeout",
                "0s",
                "must be longer than zero",
            ));
        }
        Ok(())
    }
}

fn parse_count(name: &str, value: &str) -> Result<usize, BuildError> {
    value
        .parse()
        .map_err(|_| BuildError::invalid_option(name, value, "expected a whole number"))
}
