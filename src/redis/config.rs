//! Configuration of the Redis backend, in code or from a URL.

use std::fmt;
use std::time::Duration;

use crate::config::{
    GivenOnce, LayerConfig, check_count, check_duration, parse_count, parse_query, parse_seconds,
    redacted_url, url_query, url_scheme,
};
use crate::error::BuildError;

/// The default key prefix, as in channels_redis.
pub const DEFAULT_PREFIX: &str = "asgi";
/// The default number of random bytes stored before each message, as in channels_redis.
pub const DEFAULT_RANDOM_PREFIX_LENGTH: usize = 12;

/// The query parameters a Redis URL may carry besides the common ones.
const URL_PARAMS: &[&str] = &[
    "prefix",
    "random_prefix_length",
    "receive_prefetch",
    "connect_timeout",
    "timeout",
    "tls_ca_file",
    "symmetric_encryption_keys",
    "symmetric_encryption_keys_file",
    "db",
    "sentinel_username",
    "sentinel_password",
    "replica_acks",
    "replica_ack_timeout",
];

/// The port a sentinel listens on when a URL gives none.
pub const DEFAULT_SENTINEL_PORT: u16 = 26379;

/// The largest key file read, in bytes: thousands of keys.
#[cfg(feature = "redis-encryption")]
const MAX_KEY_FILE_BYTES: u64 = 64 * 1024;

/// Settings of a [`super::RedisLayer`]. The options shared with channels_redis have its names
/// and defaults, so a Rust service and a Django app configured alike share one Redis.
///
/// Every setting has bounds, checked by [`RedisConfig::validate`] (and so by
/// [`super::RedisLayer::new`]) and by [`RedisConfig::from_url`]: those of
/// [`LayerConfig::validate`], and [`RedisConfig::MAX_TIMEOUT`],
/// [`RedisConfig::MAX_RECEIVE_PREFETCH`] and [`RedisConfig::MAX_RANDOM_PREFIX_LENGTH`].
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
#[derive(Clone)]
#[non_exhaustive]
pub struct RedisConfig {
    /// The servers, as `redis://[user:password@]host[:port][/db]`, `rediss://...` (needs the
    /// client's TLS support) or `unix:///path/to/socket[?db=N]`, one address per entry. More
    /// than one shards the channels over them with channels_redis's hash ([contract §3.8](crate::contract)).
    pub hosts: Vec<String>,
    /// Prepended to every key (`asgi`): must be the same in every process sharing the layer.
    /// As in channels_redis, a flush deletes every key that starts with it, so layers that must
    /// stay apart on one Redis need prefixes of which none starts another (`app1` and `app12`
    /// do not; `app01` and `app12` do).
    pub prefix: String,
    /// Expiry, group expiry, capacity and per-channel capacities.
    pub layer: LayerConfig,
    /// Random bytes stored before each message so identical messages stay distinct members of
    /// a sorted set; every peer must agree on it (12, as in channels_redis). At most
    /// [`RedisConfig::MAX_RANDOM_PREFIX_LENGTH`].
    pub random_prefix_length: usize,
    /// How many messages beyond those receivers are waiting for may be taken from a channel in
    /// one round trip and buffered here (default 0, at most
    /// [`RedisConfig::MAX_RECEIVE_PREFETCH`]). More means more throughput for a busy
    /// consumer, at a price: buffered messages no longer count against the channel's capacity
    /// in Redis, and another process can no longer receive them.
    pub receive_prefetch: usize,
    /// How long to wait for a connection to a server (default 2 s, at most
    /// [`RedisConfig::MAX_TIMEOUT`]).
    pub connect_timeout: Duration,
    /// How long any call may wait for the server before it fails with a timeout (default 5 s,
    /// at most [`RedisConfig::MAX_TIMEOUT`]).
    pub operation_timeout: Duration,
    /// Keys for symmetric encryption of message bodies, compatible with channels_redis's
    /// `symmetric_encryption_keys`: the first encrypts, all decrypt (key rotation). None may
    /// be empty.
    #[cfg(feature = "redis-encryption")]
    pub symmetric_encryption_keys: Vec<String>,
    /// For `rediss://` servers: a root certificate (PEM) to trust instead of the system's
    /// store, for servers with certificates from a private CA. (`rediss://host/#insecure`
    /// skips verification altogether, for tests only.)
    #[cfg(feature = "redis-tls")]
    pub tls_ca_cert: Option<Vec<u8>>,
    /// The hosts are seed nodes of one Redis Cluster (`redis+cluster://`), not servers to
    /// shard over: the layer reads the cluster's slot map from them when it is built, and
    /// routes every key to the master serving its slot.
    pub cluster: bool,
    /// How many replicas must confirm each stored message (Redis `WAIT`), or 0 (the default)
    /// not to ask. A message its server stored that fewer replicas confirmed within
    /// [`RedisConfig::replica_ack_timeout`] is still sent, and counted in
    /// [`MetricsSnapshot::unreplicated`](crate::MetricsSnapshot::unreplicated): those are the
    /// messages a failover right then may lose (replication is asynchronous). Each send then
    /// costs that wait too. At most [`RedisConfig::MAX_REPLICA_ACKS`].
    pub replica_acks: usize,
    /// How long a send waits for [`RedisConfig::replica_acks`] (default 100 ms; shorter than
    /// [`RedisConfig::operation_timeout`] when replica confirmation is asked for).
    pub replica_ack_timeout: Duration,
}

impl RedisConfig {
    /// The largest [`RedisConfig::replica_acks`] allowed.
    pub const MAX_REPLICA_ACKS: usize = 64;

    /// The longest [`RedisConfig::connect_timeout`] and [`RedisConfig::operation_timeout`]
    /// allowed: one hour. A call that waits longer than that for Redis is better reported as
    /// failed; and every deadline computed from a timeout stays far from overflowing.
    pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

    /// The largest [`RedisConfig::receive_prefetch`] allowed: 10,000 messages taken ahead per
    /// channel and round trip.
    pub const MAX_RECEIVE_PREFETCH: usize = 10_000;

    /// The largest [`RedisConfig::random_prefix_length`] allowed: 1,024 bytes, stored before
    /// every message (channels_redis uses 12).
    pub const MAX_RANDOM_PREFIX_LENGTH: usize = 1024;

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
            cluster: false,
            replica_acks: 0,
            replica_ack_timeout: Duration::from_millis(100),
        }
    }

    /// A configuration for the Redis Cluster that `seeds` (`redis://` or `rediss://` URLs of
    /// some of its nodes) belong to.
    pub fn cluster(seeds: impl IntoIterator<Item = String>) -> Self {
        let mut config = RedisConfig::sharded(seeds);
        config.cluster = true;
        config
    }

    /// Reads a URL: the address of one server or several, and query parameters that set the
    /// options. An unknown parameter is an error, never ignored.
    ///
    /// # Addresses
    ///
    /// - `redis://[user:password@]host[:port][/db]`; `rediss://...` for TLS (feature
    ///   `redis-tls`).
    /// - Several servers, in libpq's multi-host form:
    ///   `redis://[user:password@]host1[:port1],host2[:port2],...[/db]`. The layer shards its
    ///   channels over them exactly as [`RedisConfig::sharded`] does with one address per host:
    ///   each host gets the same scheme, user, password, database and `#fragment`, in the
    ///   order written. IPv6 hosts go in brackets (`[::1]:6379`); an empty host is an error.
    /// - `unix:///path/to/redis.sock[?db=N]` or `redis+unix://...`: one server on a socket.
    /// - Sentinel: `redis+sentinel://[user:password@]s1[:port],s2[:port]/MASTER[/db]`
    ///   (`rediss+sentinel://` with TLS, to the sentinels and the master). The layer asks the
    ///   sentinels (port 26379 unless given) for the address of the master named `MASTER`,
    ///   and asks again whenever it reconnects, so it follows a failover to the promoted
    ///   replica. The user and password are the master's; `sentinel_username` and
    ///   `sentinel_password` log in to the sentinels, if they need it. Several master names
    ///   (`/m1,m2/0`) shard the channels over those masters as several hosts do.
    /// - Cluster: `redis+cluster://[user:password@]n1[:port],n2[:port][/]` (`rediss+cluster://`
    ///   with TLS): some nodes of one Redis Cluster. The layer reads the slot map from them
    ///   when it is built and sends every command to the master serving its key's slot;
    ///   `MOVED` and `ASK` redirections and failovers are followed. A cluster has database 0
    ///   only.
    ///
    /// The user and password are everything before the last `@`, passed on as written (a
    /// percent-encoded password stays encoded until the client decodes it); write `/`, `?`,
    /// `#` and `%` in a password percent-encoded.
    ///
    /// # Parameters
    ///
    /// | parameter | sets | allowed |
    /// |---|---|---|
    /// | `capacity` | `layer.capacity` | 1 to [`crate::MAX_CAPACITY`] |
    /// | `expiry` | `layer.expiry`, seconds | above 0, at most [`crate::MAX_EXPIRY`] (365 days) |
    /// | `group_expiry` | `layer.group_expiry`, seconds | above 0, at most [`crate::MAX_GROUP_EXPIRY`] (365 days) |
    /// | `max_message_depth` | `layer.max_message_depth` | 1 to [`crate::MAX_MESSAGE_DEPTH`] (256) |
    /// | `max_message_bytes` | `layer.max_message_bytes` | 1 to [`crate::MAX_MESSAGE_BYTES`] (512 MiB) |
    /// | `prefix` | [`RedisConfig::prefix`] | non-empty, without `* ? [ ] \` |
    /// | `random_prefix_length` | [`RedisConfig::random_prefix_length`] | 0 to [`RedisConfig::MAX_RANDOM_PREFIX_LENGTH`] (1,024) |
    /// | `receive_prefetch` | [`RedisConfig::receive_prefetch`] | 0 to [`RedisConfig::MAX_RECEIVE_PREFETCH`] (10,000) |
    /// | `connect_timeout` | [`RedisConfig::connect_timeout`], seconds | above 0, at most [`RedisConfig::MAX_TIMEOUT`] (1 hour) |
    /// | `timeout` | [`RedisConfig::operation_timeout`], seconds | above 0, at most [`RedisConfig::MAX_TIMEOUT`] (1 hour) |
    /// | `symmetric_encryption_keys` | one more encryption key; repeat it for several | feature `redis-encryption`; not empty |
    /// | `symmetric_encryption_keys_file` | more keys, read now from a file of one key per line | feature `redis-encryption` |
    /// | `tls_ca_file` | a PEM root certificate, read now | feature `redis-tls` |
    /// | `db` | the database of a `unix://` socket | (for `redis://`, the path is the database) |
    /// | `sentinel_username`, `sentinel_password` | the login to the sentinels of a `redis+sentinel://` URL | only there |
    /// | `replica_acks` | [`RedisConfig::replica_acks`] | 0 to [`RedisConfig::MAX_REPLICA_ACKS`] (64) |
    /// | `replica_ack_timeout` | [`RedisConfig::replica_ack_timeout`], seconds | above 0, at most [`RedisConfig::MAX_TIMEOUT`] |
    ///
    /// Seconds may have fractions (`0.5`); numbers that are not finite, negative or out of range
    /// are errors. Each parameter but the key ones may be given once.
    ///
    /// Encryption keys are used as channels_redis's `symmetric_encryption_keys` list, in the
    /// order given: the first encrypts, all decrypt. In a key file, blank lines are ignored and
    /// the whitespace around a key is not part of it; a file keeps the keys out of process
    /// lists and logs. Values in a URL are percent-decoded as HTML forms encode them, so a `+`
    /// is a space: write `+` as `%2B` (base64 keys have them), and `&`, `#` and `%` encoded
    /// too. The parameters need the `redis-encryption` feature; without it they are an error
    /// saying so.
    ///
    /// # Examples
    ///
    /// ```
    /// use channel_layer::redis::RedisConfig;
    ///
    /// let config = RedisConfig::from_url(
    ///     "redis://:s3cret@10.0.0.1:6379,10.0.0.2:6380,[::1]:6379/2?prefix=myapp&timeout=2.5",
    /// )?;
    /// assert_eq!(
    ///     config.hosts,
    ///     [
    ///         "redis://:s3cret@10.0.0.1:6379/2",
    ///         "redis://:s3cret@10.0.0.2:6380/2",
    ///         "redis://:s3cret@[::1]:6379/2",
    ///     ]
    /// );
    ///
    /// // A new key encrypts; the old one still decrypts what was written before the rotation.
    /// let url = "redis://10.0.0.1:6379/0?symmetric_encryption_keys=new-key&symmetric_encryption_keys=old-key";
    /// # #[cfg(feature = "redis-encryption")]
    /// assert_eq!(RedisConfig::from_url(url)?.symmetric_encryption_keys, ["new-key", "old-key"]);
    /// // Or from a file, one key per line:
    /// // redis://10.0.0.1:6379/0?symmetric_encryption_keys_file=/run/secrets/channel-keys
    /// # Ok::<(), channel_layer::BuildError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`BuildError::InvalidUrl`] for an address that does not parse or an empty host,
    /// [`BuildError::UnknownParameter`], and [`BuildError::InvalidOption`] naming the option
    /// for a bad or out-of-range value, a parameter given twice, a parameter whose feature is
    /// off, or a key or certificate file that cannot be read.
    pub fn from_url(url: &str) -> Result<Self, BuildError> {
        let scheme = url_scheme(url)?;
        let (tcp, sentinel) = match scheme.as_str() {
            "redis" | "rediss" => (true, false),
            "unix" | "redis+unix" => (false, false),
            "redis+sentinel" | "rediss+sentinel" => (true, true),
            "redis+cluster" | "rediss+cluster" => (true, false),
            _ => {
                return Err(BuildError::InvalidUrl {
                    url: redacted_url(url),
                    reason: format!(
                        "{scheme}: is not a Redis URL (redis://, rediss://, unix://, redis+unix://, redis+sentinel://, rediss+sentinel://, redis+cluster://, rediss+cluster://)"
                    ),
                });
            }
        };
        let (layer, params) = parse_query(&scheme, url_query(url), URL_PARAMS)?;
        let mut config = RedisConfig::sharded(Vec::new());
        config.layer = layer;
        let mut given = GivenOnce::default();
        let mut socket_db = None;
        let mut sentinel_login: Vec<(&str, &str)> = Vec::new();
        for (name, value) in &params {
            match name.as_str() {
                "sentinel_username" | "sentinel_password" if sentinel => {
                    given.note(name, value)?;
                    sentinel_login.push((name.as_str(), value.as_str()));
                }
                "sentinel_username" | "sentinel_password" => {
                    return Err(BuildError::UnknownParameter {
                        scheme,
                        name: name.clone(),
                    });
                }
                "symmetric_encryption_keys" | "symmetric_encryption_keys_file" => {
                    config.add_keys(name, value)?;
                }
                "db" if tcp => {
                    return Err(BuildError::UnknownParameter {
                        scheme,
                        name: name.clone(),
                    });
                }
                "db" => {
                    given.note(name, value)?;
                    socket_db = Some(value.as_str());
                }
                _ => {
                    given.note(name, value)?;
                    config.set_param(name, value)?;
                }
            }
        }
        config.hosts = if sentinel {
            sentinel_hosts(url, &scheme, &sentinel_login)?
        } else if let Some(node_scheme) = scheme.strip_suffix("+cluster") {
            config.cluster = true;
            let nodes = format!("{node_scheme}{}", &url[scheme.len()..]);
            let hosts = tcp_hosts(&nodes, node_scheme)?;
            let db_path = hosts
                .iter()
                .any(|h| url::Url::parse(h).is_ok_and(|u| !matches!(u.path(), "" | "/" | "/0")));
            if db_path {
                return Err(BuildError::InvalidUrl {
                    url: redacted_url(url),
                    reason: "a cluster has database 0 only".into(),
                });
            }
            hosts
        } else if tcp {
            tcp_hosts(url, &scheme)?
        } else {
            vec![socket_host(url, socket_db)?]
        };
        config.validate()?;
        Ok(config)
    }

    /// Applies one single-valued URL parameter of the Redis backend.
    fn set_param(&mut self, name: &str, value: &str) -> Result<(), BuildError> {
        match name {
            "prefix" => self.prefix = value.to_owned(),
            "random_prefix_length" => {
                self.random_prefix_length =
                    parse_count(name, value, 0, RedisConfig::MAX_RANDOM_PREFIX_LENGTH)?;
            }
            "receive_prefetch" => {
                self.receive_prefetch =
                    parse_count(name, value, 0, RedisConfig::MAX_RECEIVE_PREFETCH)?;
            }
            "connect_timeout" => {
                self.connect_timeout = parse_seconds(name, value, RedisConfig::MAX_TIMEOUT)?;
            }
            "timeout" => {
                self.operation_timeout = parse_seconds(name, value, RedisConfig::MAX_TIMEOUT)?;
            }
            "replica_acks" => {
                self.replica_acks = parse_count(name, value, 0, RedisConfig::MAX_REPLICA_ACKS)?;
            }
            "replica_ack_timeout" => {
                self.replica_ack_timeout = parse_seconds(name, value, RedisConfig::MAX_TIMEOUT)?;
            }
            #[cfg(feature = "redis-tls")]
            "tls_ca_file" => {
                let pem = std::fs::read(value).map_err(|e| {
                    BuildError::invalid_option(name, value, format!("cannot read it: {e}"))
                })?;
                self.tls_ca_cert = Some(pem);
            }
            #[cfg(not(feature = "redis-tls"))]
            "tls_ca_file" => return Err(needs_feature(name, value, "redis-tls")),
            _ => unreachable!("URL_PARAMS lists {name}, so set_param must handle it"),
        }
        Ok(())
    }

    /// Adds the keys of a `symmetric_encryption_keys` parameter (the key itself) or a
    /// `symmetric_encryption_keys_file` one (a file of keys).
    #[cfg(feature = "redis-encryption")]
    fn add_keys(&mut self, name: &str, value: &str) -> Result<(), BuildError> {
        if name == "symmetric_encryption_keys_file" {
            let keys = read_key_file(name, value)?;
            self.symmetric_encryption_keys.extend(keys);
            return Ok(());
        }
        if value.is_empty() {
            return Err(BuildError::invalid_option(
                name,
                "",
                "a key must not be empty",
            ));
        }
        self.symmetric_encryption_keys.push(value.to_owned());
        Ok(())
    }

    /// Without encryption, keys are refused, saying which feature reads them.
    #[cfg(not(feature = "redis-encryption"))]
    fn add_keys(&mut self, name: &str, value: &str) -> Result<(), BuildError> {
        let shown = if name == "symmetric_encryption_keys" {
            "<redacted>"
        } else {
            value
        };
        Err(needs_feature(name, shown, "redis-encryption"))
    }

    /// Checks the settings: those of [`LayerConfig::validate`], at least one server and no
    /// empty address, a non-empty prefix without glob characters, timeouts above zero and at
    /// most [`RedisConfig::MAX_TIMEOUT`], [`RedisConfig::receive_prefetch`] and
    /// [`RedisConfig::random_prefix_length`] within their bounds, and no empty encryption key.
    ///
    /// # Errors
    ///
    /// [`BuildError::InvalidOption`] naming the first bad setting, with its value and what is
    /// allowed.
    pub fn validate(&self) -> Result<(), BuildError> {
        self.layer.validate()?;
        if self.hosts.is_empty() {
            return Err(BuildError::invalid_option(
                "hosts",
                "[]",
                "at least one server is needed",
            ));
        }
        if let Some(i) = self.hosts.iter().position(|h| h.trim().is_empty()) {
            return Err(BuildError::invalid_option(
                format!("hosts[{i}]"),
                &self.hosts[i],
                "an address must not be empty",
            ));
        }
        if self.prefix.is_empty() || self.prefix.contains(['*', '?', '[', ']', '\\']) {
            return Err(BuildError::invalid_option(
                "prefix",
                &self.prefix,
                "must be non-empty, without glob characters (* ? [ ] \\)",
            ));
        }
        check_duration(
            "connect_timeout",
            self.connect_timeout,
            RedisConfig::MAX_TIMEOUT,
        )?;
        check_duration(
            "operation_timeout",
            self.operation_timeout,
            RedisConfig::MAX_TIMEOUT,
        )?;
        check_count(
            "receive_prefetch",
            self.receive_prefetch,
            0,
            RedisConfig::MAX_RECEIVE_PREFETCH,
        )?;
        check_count(
            "random_prefix_length",
            self.random_prefix_length,
            0,
            RedisConfig::MAX_RANDOM_PREFIX_LENGTH,
        )?;
        check_count(
            "replica_acks",
            self.replica_acks,
            0,
            RedisConfig::MAX_REPLICA_ACKS,
        )?;
        check_duration(
            "replica_ack_timeout",
            self.replica_ack_timeout,
            RedisConfig::MAX_TIMEOUT,
        )?;
        // The wait for replicas is part of a send, which must end by the operation timeout.
        if self.replica_acks > 0 && self.replica_ack_timeout >= self.operation_timeout {
            return Err(BuildError::invalid_option(
                "replica_ack_timeout",
                format!("{:?}", self.replica_ack_timeout),
                format!(
                    "must be shorter than the operation timeout ({:?}), within which a send ends",
                    self.operation_timeout
                ),
            ));
        }
        #[cfg(feature = "redis-encryption")]
        if let Some(i) = self
            .symmetric_encryption_keys
            .iter()
            .position(String::is_empty)
        {
            return Err(BuildError::invalid_option(
                format!("symmetric_encryption_keys[{i}]"),
                "",
                "a key must not be empty",
            ));
        }
        Ok(())
    }
}

impl fmt::Debug for RedisConfig {
    /// Shows passwords in addresses as `***` and encryption keys only by their number.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hosts: Vec<String> = self.hosts.iter().map(|h| redacted_url(h)).collect();
        let mut out = f.debug_struct("RedisConfig");
        out.field("hosts", &hosts)
            .field("prefix", &self.prefix)
            .field("layer", &self.layer)
            .field("random_prefix_length", &self.random_prefix_length)
            .field("receive_prefetch", &self.receive_prefetch)
            .field("connect_timeout", &self.connect_timeout)
            .field("operation_timeout", &self.operation_timeout)
            .field("cluster", &self.cluster)
            .field("replica_acks", &self.replica_acks)
            .field("replica_ack_timeout", &self.replica_ack_timeout);
        #[cfg(feature = "redis-encryption")]
        out.field(
            "symmetric_encryption_keys",
            &format_args!("<{} redacted>", self.symmetric_encryption_keys.len()),
        );
        #[cfg(feature = "redis-tls")]
        out.field(
            "tls_ca_cert",
            &self
                .tls_ca_cert
                .as_ref()
                .map(|pem| format!("<{} bytes>", pem.len())),
        );
        out.finish()
    }
}

/// The error for a parameter whose Cargo feature is off.
#[cfg(not(all(feature = "redis-encryption", feature = "redis-tls")))]
fn needs_feature(name: &str, value: &str, feature: &str) -> BuildError {
    BuildError::invalid_option(
        name,
        value,
        format!("this parameter needs the crate feature {feature:?}, which is off in this build"),
    )
}

/// The address of each server a `redis://` or `rediss://` URL names, without the query: one
/// for `redis://host:port/db`, one per host for `redis://h1:p1,h2:p2/db`, each with the URL's
/// user, password, database and fragment.
///
/// The `url` crate cannot parse a list of hosts, so the authority is split here: the userinfo
/// is everything before its last `@`, the hosts are separated by commas (which no host, IPv6
/// in brackets included, contains), and each host's address is then parsed on its own.
fn tcp_hosts(url: &str, scheme: &str) -> Result<Vec<String>, BuildError> {
    let invalid = |reason: String| BuildError::InvalidUrl {
        url: redacted_url(url),
        reason,
    };
    // `url_scheme` lower-cased ASCII letters only, so the length is the same.
    let Some(rest) = url[scheme.len() + 1..].strip_prefix("//") else {
        return Err(invalid(format!(
            "expected {scheme}://[user:password@]host[:port][,host[:port]...][/db]"
        )));
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let path = &tail[..tail.find(['?', '#']).unwrap_or(tail.len())];
    let fragment = tail.find('#').map_or("", |i| &tail[i..]);
    let (userinfo, host_list) = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => (Some(userinfo), hosts),
        None => (None, authority),
    };
    if host_list.is_empty() {
        return Err(invalid("the URL names no host".into()));
    }
    let mut hosts = Vec::new();
    for (i, host) in host_list.split(',').enumerate() {
        if host.is_empty() {
            return Err(invalid(format!(
                "host {} of the list {host_list:?} is empty",
                i + 1
            )));
        }
        let mut address = format!("{scheme}://");
        if let Some(userinfo) = userinfo {
            address.push_str(userinfo);
            address.push('@');
        }
        address.push_str(host);
        address.push_str(path);
        address.push_str(fragment);
        let parsed =
            url::Url::parse(&address).map_err(|e| invalid(format!("host {host:?}: {e}")))?;
        if parsed.host_str().is_none_or(str::is_empty) {
            return Err(invalid(format!("host {host:?} has no host name")));
        }
        hosts.push(parsed.to_string());
    }
    Ok(hosts)
}

/// One address per master a `redis+sentinel://` URL names: each
/// `scheme://[userinfo@]sentinels/MASTER/db`, with the sentinels' login (if any) in its query,
/// which [`super::conn`] reads.
fn sentinel_hosts(
    url: &str,
    scheme: &str,
    login: &[(&str, &str)],
) -> Result<Vec<String>, BuildError> {
    let invalid = |reason: String| BuildError::InvalidUrl {
        url: redacted_url(url),
        reason,
    };
    let form = format!(
        "expected {scheme}://[user:password@]sentinel[:port][,sentinel[:port]...]/MASTER[,MASTER...][/db]"
    );
    let Some(rest) = url[scheme.len() + 1..].strip_prefix("//") else {
        return Err(invalid(form));
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let path = &tail[..tail.find(['?', '#']).unwrap_or(tail.len())];
    let fragment = tail.find('#').map_or("", |i| &tail[i..]);
    let sentinels = authority.rsplit_once('@').map_or(authority, |(_, s)| s);
    if sentinels.is_empty() || sentinels.split(',').any(str::is_empty) {
        return Err(invalid(format!("a sentinel address is empty; {form}")));
    }
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let masters = parts.next().unwrap_or_default();
    let db = parts.next().unwrap_or("0");
    if masters.is_empty() {
        return Err(invalid(format!("the URL names no master; {form}")));
    }
    if db.parse::<u16>().is_err() {
        return Err(invalid(format!("{db:?} is not a database number")));
    }
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    for (name, value) in login {
        query.append_pair(name, value);
    }
    let query = query.finish();
    let mut hosts = Vec::new();
    for master in masters.split(',') {
        if master.is_empty()
            || !master
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return Err(invalid(format!(
                "{master:?} is not a master name (letters, digits, '.', '_' and '-')"
            )));
        }
        let mut host = format!("{scheme}://{authority}/{master}/{db}");
        if !query.is_empty() {
            host.push('?');
            host.push_str(&query);
        }
        host.push_str(fragment);
        // Each sentinel address must parse on its own.
        crate::redis::conn::SentinelSet::parse(&host).map_err(invalid)?;
        hosts.push(host);
    }
    Ok(hosts)
}

/// The address of the server of a `unix://` or `redis+unix://` URL: the socket path, with the
/// `db` parameter (the client's own) if one was given.
fn socket_host(url: &str, db: Option<&str>) -> Result<String, BuildError> {
    let mut parsed = url::Url::parse(url).map_err(|e| BuildError::InvalidUrl {
        url: redacted_url(url),
        reason: e.to_string(),
    })?;
    parsed.set_query(None);
    if let Some(db) = db {
        parsed.query_pairs_mut().append_pair("db", db);
    }
    Ok(parsed.to_string())
}

/// Reads a key file: one key per line, blank lines ignored, the whitespace around each key
/// not part of it.
#[cfg(feature = "redis-encryption")]
fn read_key_file(name: &str, path: &str) -> Result<Vec<String>, BuildError> {
    use std::io::Read as _;

    let unreadable =
        |e: std::io::Error| BuildError::invalid_option(name, path, format!("cannot read it: {e}"));
    let file = std::fs::File::open(path).map_err(unreadable)?;
    let mut bytes = Vec::new();
    file.take(MAX_KEY_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(unreadable)?;
    if bytes.len() as u64 > MAX_KEY_FILE_BYTES {
        return Err(BuildError::invalid_option(
            name,
            path,
            format!("larger than {MAX_KEY_FILE_BYTES} bytes: not a file of keys, one per line"),
        ));
    }
    let text = String::from_utf8(bytes)
        .map_err(|_| BuildError::invalid_option(name, path, "not UTF-8 text"))?;
    let keys: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .map(str::to_owned)
        .collect();
    if keys.is_empty() {
        return Err(BuildError::invalid_option(
            name,
            path,
            "holds no key (one key per line; blank lines are ignored)",
        ));
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::config::tests::invalid;

    fn invalid_url(result: Result<RedisConfig, BuildError>) -> String {
        match result {
            Err(BuildError::InvalidUrl { url, reason }) => format!("{url}: {reason}"),
            other => panic!("expected InvalidUrl, got {other:?}"),
        }
    }

    fn hosts(url: &str) -> Vec<String> {
        RedisConfig::from_url(url)
            .unwrap_or_else(|e| panic!("{url}: {e}"))
            .hosts
    }

    #[test]
    fn several_hosts_shard_like_sharded_with_one_address_each() {
        let config = RedisConfig::from_url("redis://u:p@h1:1,h2:2/3?prefix=app").unwrap();
        let sharded =
            RedisConfig::sharded(["redis://u:p@h1:1/3".to_owned(), "redis://u:p@h2:2/3".into()]);
        assert_eq!(config.hosts, sharded.hosts);
        assert_eq!(config.prefix, "app");
        assert_eq!(
            hosts("redis://127.0.0.1:6379,127.0.0.1:6380/0"),
            ["redis://127.0.0.1:6379/0", "redis://127.0.0.1:6380/0"]
        );
        // Order kept, hosts without ports, no database.
        assert_eq!(
            hosts("redis://b,a,c"),
            ["redis://b", "redis://a", "redis://c"]
        );
        // One host is the single-server case, as before.
        assert_eq!(hosts("redis://127.0.0.1:1/3"), ["redis://127.0.0.1:1/3"]);
        assert_eq!(hosts("REDIS://h:1/0"), ["redis://h:1/0"]);
    }

    #[test]
    fn ipv6_tls_and_fragments_apply_to_every_host() {
        assert_eq!(
            hosts("redis://[::1]:6379,[fe80::1]:6380/1"),
            ["redis://[::1]:6379/1", "redis://[fe80::1]:6380/1"]
        );
        assert_eq!(
            hosts("rediss://u:p@a:1,b:2/0?timeout=1#insecure"),
            ["rediss://u:p@a:1/0#insecure", "rediss://u:p@b:2/0#insecure"]
        );
    }

    #[test]
    fn userinfo_ends_at_the_last_at_and_encoded_passwords_stay_encoded() {
        // `@` and `,` in a password: the userinfo is everything before the last `@`.
        assert_eq!(
            hosts("redis://u:p@s,s@h1:1,h2:2/0"),
            ["redis://u:p%40s,s@h1:1/0", "redis://u:p%40s,s@h2:2/0"]
        );
        assert_eq!(
            hosts("redis://:p%2Fw%25d@h1,h2/0"),
            ["redis://:p%2Fw%25d@h1/0", "redis://:p%2Fw%25d@h2/0"]
        );
        assert_eq!(
            hosts("redis://alice@h1:1,h2:2"),
            ["redis://alice@h1:1", "redis://alice@h2:2"]
        );
    }

    #[test]
    fn an_empty_or_bad_host_is_an_error() {
        for url in [
            "redis://h1:1,,h2:2/0",
            "redis://,h1/0",
            "redis://h1,/0",
            "redis://h1:1,h2:2,?prefix=x",
        ] {
            let error = invalid_url(RedisConfig::from_url(url));
            assert!(error.contains("is empty"), "{url}: {error}");
        }
        for url in [
            "redis:///0",
            "redis://",
            "redis://u:p@/0",
            "rediss://?timeout=1",
        ] {
            let error = invalid_url(RedisConfig::from_url(url));
            assert!(error.contains("no host"), "{url}: {error}");
        }
        let error = invalid_url(RedisConfig::from_url("redis://u:pw@h1:1,h2:99999/0"));
        assert!(error.contains("h2:99999"), "{error}");
        // The password does not appear in the error.
        assert!(!error.contains("pw"), "{error}");
        assert!(error.contains("u:***@"), "{error}");
        invalid_url(RedisConfig::from_url("redis:h1"));
        invalid_url(RedisConfig::from_url("memory://"));
    }

    #[test]
    fn unix_sockets_keep_their_db_and_nothing_else() {
        assert_eq!(
            hosts("unix:///tmp/r,1.sock?db=2&prefix=p&timeout=1"),
            ["unix:///tmp/r,1.sock?db=2"]
        );
        assert_eq!(
            hosts("redis+unix:///tmp/r.sock"),
            ["redis+unix:///tmp/r.sock"]
        );
        let (name, _, reason) = invalid(RedisConfig::from_url("unix:///tmp/r.sock?db=1&db=2"));
        assert_eq!(name, "db");
        assert!(reason.contains("more than once"), "{reason}");
        assert!(matches!(
            RedisConfig::from_url("redis://h/0?db=1"),
            Err(BuildError::UnknownParameter { name, .. }) if name == "db"
        ));
    }

    #[test]
    fn every_parameter_is_bounded() {
        let base = "redis://127.0.0.1:1/0?";
        let cases = [
            ("timeout=1e19", "timeout", "at most 3600 s (1 hour)"),
            ("timeout=3600.5", "timeout", "at most 3600 s (1 hour)"),
            ("timeout=0", "timeout", "longer than 0 s"),
            ("timeout=-5", "timeout", "longer than 0 s"),
            ("timeout=NaN", "timeout", "finite"),
            ("connect_timeout=inf", "connect_timeout", "finite"),
            ("connect_timeout=7200", "connect_timeout", "1 hour"),
            ("expiry=1e19", "expiry", "365 days"),
            ("group_expiry=1e10", "group_expiry", "365 days"),
            ("capacity=1000000001", "capacity", "from 1 to 1000000000"),
            (
                "receive_prefetch=18446744073709551615",
                "receive_prefetch",
                "from 0 to 10000",
            ),
            (
                "receive_prefetch=184467440737095516150",
                "receive_prefetch",
                "from 0 to 10000",
            ),
            (
                "random_prefix_length=4000000000",
                "random_prefix_length",
                "from 0 to 1024",
            ),
            (
                "random_prefix_length=-1",
                "random_prefix_length",
                "whole number",
            ),
            ("prefix=a*b", "prefix", "glob"),
            ("prefix=", "prefix", "non-empty"),
            ("prefix=a&prefix=b", "prefix", "more than once"),
            ("timeout=1&timeout=2", "timeout", "more than once"),
        ];
        for (query, option, expected) in cases {
            let (name, _, reason) = invalid(RedisConfig::from_url(&format!("{base}{query}")));
            assert_eq!(name, option, "{query}");
            assert!(reason.contains(expected), "{query}: {reason}");
        }
        let config = RedisConfig::from_url(&format!(
            "{base}timeout=3600&connect_timeout=0.01&receive_prefetch=10000&random_prefix_length=1024&capacity=1000000000&expiry=31536000&group_expiry=31536000"
        ))
        .unwrap();
        assert_eq!(config.operation_timeout, RedisConfig::MAX_TIMEOUT);
        assert_eq!(config.receive_prefetch, RedisConfig::MAX_RECEIVE_PREFETCH);
        assert_eq!(
            config.random_prefix_length,
            RedisConfig::MAX_RANDOM_PREFIX_LENGTH
        );
        assert_eq!(
            RedisConfig::from_url(&format!("{base}random_prefix_length=0"))
                .unwrap()
                .random_prefix_length,
            0
        );
    }

    #[test]
    fn validate_bounds_settings_made_in_code() {
        let fresh = || RedisConfig::new("redis://127.0.0.1:1/0");
        assert!(fresh().validate().is_ok());
        let mut c = fresh();
        c.operation_timeout = Duration::from_secs(u64::MAX);
        assert_eq!(
            invalid(c.validate().map(|()| fresh())).0,
            "operation_timeout"
        );
        let mut c = fresh();
        c.connect_timeout = Duration::ZERO;
        assert_eq!(invalid(c.validate().map(|()| fresh())).0, "connect_timeout");
        let mut c = fresh();
        c.receive_prefetch = usize::MAX;
        assert_eq!(
            invalid(c.validate().map(|()| fresh())).0,
            "receive_prefetch"
        );
        let mut c = fresh();
        c.random_prefix_length = 4_000_000_000;
        assert_eq!(
            invalid(c.validate().map(|()| fresh())).0,
            "random_prefix_length"
        );
        let mut c = fresh();
        c.layer.expiry = Duration::MAX;
        assert_eq!(invalid(c.validate().map(|()| fresh())).0, "expiry");
        let mut c = fresh();
        c.hosts.push(String::new());
        assert_eq!(invalid(c.validate().map(|()| fresh())).0, "hosts[1]");
        let mut c = fresh();
        c.hosts.clear();
        assert_eq!(invalid(c.validate().map(|()| fresh())).0, "hosts");
    }

    #[cfg(feature = "redis-encryption")]
    mod keys {
        use super::*;

        /// A file under the crate's scratch directory, removed on drop.
        struct KeyFile(std::path::PathBuf);

        impl KeyFile {
            fn new(name: &str, content: &[u8]) -> KeyFile {
                let dir =
                    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tmp/key-files");
                std::fs::create_dir_all(&dir).unwrap();
                let path = dir.join(format!("{}-{name}", std::process::id()));
                std::fs::write(&path, content).unwrap();
                KeyFile(path)
            }

            fn path(&self) -> &str {
                self.0.to_str().unwrap()
            }
        }

        impl Drop for KeyFile {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }

        fn keys(url: &str) -> Vec<String> {
            RedisConfig::from_url(url)
                .unwrap_or_else(|e| panic!("{url}: {e}"))
                .symmetric_encryption_keys
        }

        #[test]
        fn repeated_keys_keep_their_order() {
            assert_eq!(
                keys("redis://h/0?symmetric_encryption_keys=k2&symmetric_encryption_keys=k1"),
                ["k2", "k1"]
            );
            // `+` is a space in a query; `%2B` is a plus.
            assert_eq!(
                keys(
                    "redis://h/0?symmetric_encryption_keys=a%2Bb%3D%3D&symmetric_encryption_keys=c+d"
                ),
                ["a+b==", "c d"]
            );
            assert!(keys("redis://h/0").is_empty());
            let (name, value, reason) = invalid(RedisConfig::from_url(
                "redis://h/0?symmetric_encryption_keys=",
            ));
            assert_eq!(
                (name.as_str(), value.as_str()),
                ("symmetric_encryption_keys", "")
            );
            assert!(reason.contains("empty"), "{reason}");
        }

        #[test]
        fn key_files_hold_one_key_per_line() {
            let file = KeyFile::new("rotating", b"  k2  \r\n\n\t\nk1\n");
            let url = format!("redis://h/0?symmetric_encryption_keys_file={}", file.path());
            assert_eq!(keys(&url), ["k2", "k1"]);
            // With keys given inline, in the order the parameters come.
            let url = format!(
                "redis://h/0?symmetric_encryption_keys=k3&symmetric_encryption_keys_file={}&symmetric_encryption_keys=k0",
                file.path()
            );
            assert_eq!(keys(&url), ["k3", "k2", "k1", "k0"]);
        }

        #[test]
        fn unreadable_empty_or_odd_key_files_are_errors_naming_them() {
            let blank = KeyFile::new("blank", b"\n  \n\r\n");
            let empty = KeyFile::new("empty", b"");
            let binary = KeyFile::new("binary", b"k1\n\xff\xfe\n");
            let huge = KeyFile::new("huge", &vec![b'k'; 100_000]);
            let missing = format!("{}.missing", blank.path());
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
            let cases = [
                (blank.path(), "holds no key"),
                (empty.path(), "holds no key"),
                (binary.path(), "not UTF-8"),
                (huge.path(), "larger than"),
                (missing.as_str(), "cannot read it"),
                (dir.to_str().unwrap(), "cannot read it"),
            ];
            for (path, expected) in cases {
                let url = format!("redis://h/0?symmetric_encryption_keys_file={path}");
                let (name, value, reason) = invalid(RedisConfig::from_url(&url));
                assert_eq!(name, "symmetric_encryption_keys_file");
                assert_eq!(value, path);
                assert!(reason.contains(expected), "{path}: {reason}");
            }
        }

        #[test]
        fn keys_never_show_in_debug_output_or_errors() {
            let config = RedisConfig::from_url(
                "redis://user:hunter2@h/0?symmetric_encryption_keys=sekrit&symmetric_encryption_keys=other",
            )
            .unwrap();
            let shown = format!("{config:?}");
            assert!(
                !shown.contains("sekrit") && !shown.contains("hunter2"),
                "{shown}"
            );
            assert!(shown.contains("<2 redacted>"), "{shown}");
            let error = RedisConfig::from_url("redis://h1,/0?symmetric_encryption_keys=sekrit")
                .unwrap_err();
            assert!(!error.to_string().contains("sekrit"), "{error}");
            let mut c = RedisConfig::new("redis://h/0");
            c.symmetric_encryption_keys = vec!["k".into(), String::new()];
            assert_eq!(
                invalid(c.validate().map(|()| c.clone())).0,
                "symmetric_encryption_keys[1]"
            );
        }
    }

    #[cfg(not(feature = "redis-encryption"))]
    #[test]
    fn key_parameters_without_the_feature_say_which_feature_is_needed() {
        for query in [
            "symmetric_encryption_keys=sekrit",
            "symmetric_encryption_keys_file=/etc/keys",
        ] {
            let (name, value, reason) =
                invalid(RedisConfig::from_url(&format!("redis://h/0?{query}")));
            assert!(query.starts_with(&name), "{query}: {name}");
            assert_ne!(value, "sekrit");
            assert!(reason.contains("\"redis-encryption\""), "{reason}");
        }
    }

    #[cfg(not(feature = "redis-tls"))]
    #[test]
    fn the_ca_file_parameter_without_tls_says_which_feature_is_needed() {
        let (name, _, reason) = invalid(RedisConfig::from_url("rediss://h/0?tls_ca_file=/ca.pem"));
        assert_eq!(name, "tls_ca_file");
        assert!(reason.contains("\"redis-tls\""), "{reason}");
    }
}
