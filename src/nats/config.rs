//! Configuration of the NATS backend, in code or from a URL.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::{
    GivenOnce, LayerConfig, check_count, decode_component, parse_count, parse_query, parse_seconds,
    redacted_url, url_query, url_scheme,
};
use crate::error::BuildError;

/// The default subject prefix: channels live under `asgi.ch.`, group members under the key-value
/// bucket `asgi_groups` ([contract §5.1](crate::contract)).
pub const DEFAULT_PREFIX: &str = "asgi";

/// The port a URL's host without one is taken to listen on.
pub const DEFAULT_PORT: u16 = 4222;

/// The query parameters a NATS URL may carry besides the common ones.
const URL_PARAMS: &[&str] = &[
    "prefix",
    "replicas",
    "storage",
    "timeout",
    "connect_timeout",
    "receive_prefetch",
    "token",
    "credentials_file",
    "tls_ca_file",
];

/// Where JetStream keeps a layer's streams.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Storage {
    /// On disk: waiting messages survive a server restart (the default).
    #[default]
    File,
    /// In memory: faster, lost when the server stops.
    Memory,
}

/// Settings of a [`super::NatsLayer`].
///
/// Every setting has bounds, checked by [`NatsConfig::validate`] (and so by
/// [`super::NatsLayer::new`]) and by [`NatsConfig::from_url`]: those of
/// [`LayerConfig::validate`], [`NatsConfig::MAX_TIMEOUT`] and [`NatsConfig::MAX_REPLICAS`].
///
/// All layer objects sharing a prefix must agree on `capacity`, the `channel_capacity` rules,
/// `expiry`, `group_expiry`, `replicas` and `storage`: they are settings of the streams on the
/// server, and a layer refuses to start against streams made with other settings.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use channel_layer::nats::{NatsConfig, Storage};
///
/// let config = NatsConfig::from_url(
///     "nats://n1:4222,n2:4222,n3:4222?prefix=shop&capacity=500&expiry=30&replicas=3",
/// )?;
/// assert_eq!(config.servers.len(), 3);
/// assert_eq!(config.prefix, "shop");
/// assert_eq!(config.replicas, 3);
/// assert_eq!(config.storage, Storage::File);
/// assert_eq!(config.layer.expiry, Duration::from_secs(30));
/// # Ok::<(), channel_layer::BuildError>(())
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct NatsConfig {
    /// Server addresses, `nats://host:port` or `tls://host:port`; the client connects to one
    /// and fails over to the others (and to servers the cluster tells it about).
    pub servers: Vec<String>,
    /// The settings every backend shares (capacity, expiry, group expiry, limits).
    pub layer: LayerConfig,
    /// Names the layer's streams (`<prefix>_ch_<capacity>`), subjects (`<prefix>.ch.…`) and
    /// group bucket (`<prefix>_groups`): ASCII letters, digits, `-` and `_`.
    pub prefix: String,
    /// How many servers keep a copy of each stream (1 to [`NatsConfig::MAX_REPLICAS`]); on a
    /// cluster, 3 survives the loss of one server.
    pub replicas: usize,
    /// Where the streams are kept.
    pub storage: Storage,
    /// How long one request to the server (a publish's acknowledgement, a take) may take.
    pub operation_timeout: Duration,
    /// How long connecting, with every server tried, may take.
    pub connect_timeout: Duration,
    /// How many messages a channel's take may fetch beyond those its waiting receivers ask
    /// for, to hand to the next receives here without a round trip (0 to
    /// [`NatsConfig::MAX_RECEIVE_PREFETCH`]; default 0).
    ///
    /// A receiver that keeps receiving from a busy channel then pays one round trip per batch
    /// rather than per message. What is fetched ahead waits in this layer: other processes'
    /// receivers do not get it, it expires here (counted) if nobody receives it, and a layer
    /// that closes puts it back on the server; a process that dies loses it. Leave it at 0 for
    /// channels that several processes share as a work queue.
    ///
    /// Process-specific channels (`name!local`, made for one process's receivers) are taken
    /// in batches of up to 64 while a receiver waits on them, whatever this setting.
    pub receive_prefetch: usize,
    /// User name and password, from the URL's `user:password@`.
    pub user_password: Option<(String, String)>,
    /// An authentication token, from the URL's `token@` or `token=`.
    pub token: Option<String>,
    /// A credentials file (`.creds`: a user JWT and its NKey seed).
    pub credentials_file: Option<PathBuf>,
    /// Require TLS (a `tls://` URL).
    pub tls: bool,
    /// A PEM file of CA certificates to trust besides the system's.
    pub tls_ca_file: Option<PathBuf>,
}

impl NatsConfig {
    /// The longest `timeout` or `connect_timeout` accepted: an hour.
    pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
    /// The largest [`NatsConfig::receive_prefetch`] allowed.
    pub const MAX_RECEIVE_PREFETCH: usize = 10_000;
    /// The most stream replicas JetStream allows.
    pub const MAX_REPLICAS: usize = 5;

    /// Defaults (those of [`LayerConfig::default`], one replica on file storage, a 5 s
    /// operation timeout) for the given servers.
    pub fn new<S: Into<String>>(servers: impl IntoIterator<Item = S>) -> Self {
        NatsConfig {
            servers: servers.into_iter().map(Into::into).collect(),
            layer: LayerConfig::default(),
            prefix: DEFAULT_PREFIX.to_owned(),
            replicas: 1,
            storage: Storage::File,
            operation_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            receive_prefetch: 0,
            user_password: None,
            token: None,
            credentials_file: None,
            tls: false,
            tls_ca_file: None,
        }
    }

    /// Reads `nats://[user:password@|token@]host[:port][,host[:port]...][?options]` (or
    /// `tls://` for TLS). Options: the common ones (`capacity`, `expiry`, `group_expiry`,
    /// `max_message_depth`, `max_message_bytes`), `prefix`, `replicas`, `storage`
    /// (`file` or `memory`), `timeout` and `connect_timeout` (seconds), `receive_prefetch`, `token`,
    /// `credentials_file` and `tls_ca_file` (paths).
    ///
    /// # Errors
    ///
    /// [`BuildError`] naming the bad part: not a NATS URL, no host, a bad port, an unknown
    /// parameter, a value out of bounds.
    pub fn from_url(url: &str) -> Result<Self, BuildError> {
        let scheme = url_scheme(url)?;
        let tls = match scheme.as_str() {
            "nats" => false,
            "tls" => true,
            _ => {
                return Err(BuildError::InvalidUrl {
                    url: redacted_url(url),
                    reason: format!("{scheme}: is not a NATS URL (nats://, tls://)"),
                });
            }
        };
        let (layer, params) = parse_query(&scheme, url_query(url), URL_PARAMS)?;
        let mut config = NatsConfig::new(Vec::<String>::new());
        config.layer = layer;
        config.tls = tls;
        let mut given = GivenOnce::default();
        for (name, value) in &params {
            given.note(name, value)?;
            config.set_param(name, value)?;
        }
        let bad = |reason: String| BuildError::InvalidUrl {
            url: redacted_url(url),
            reason,
        };
        let rest = &url[scheme.len() + 1..];
        let rest = rest
            .strip_prefix("//")
            .ok_or_else(|| bad(format!("expected {scheme}://host")))?;
        let authority = rest.split(['?', '#', '/']).next().unwrap_or("");
        let after = &rest[authority.len()..];
        let path_free = after.is_empty()
            || after.starts_with(['?', '#'])
            || after == "/"
            || after.starts_with("/?");
        if !path_free {
            return Err(bad("a NATS URL has no path".into()));
        }
        let hosts = match authority.rsplit_once('@') {
            Some((userinfo, hosts)) => {
                let decode = |s: &str| {
                    percent_decode(s).ok_or_else(|| bad("the user or password is not UTF-8".into()))
                };
                match userinfo.split_once(':') {
                    Some((user, password)) => {
                        config.user_password = Some((decode(user)?, decode(password)?));
                    }
                    None if config.token.is_some() => {
                        return Err(bad("a token is given both before @ and as token=".into()));
                    }
                    None => config.token = Some(decode(userinfo)?),
                }
                hosts
            }
            None => authority,
        };
        let address_scheme = if tls { "tls" } else { "nats" };
        for host in hosts.split(',') {
            config.servers.push(format!(
                "{address_scheme}://{}",
                host_port(host).map_err(bad)?
            ));
        }
        config.validate()?;
        Ok(config)
    }

    fn set_param(&mut self, name: &str, value: &str) -> Result<(), BuildError> {
        match name {
            "prefix" => self.prefix = value.to_owned(),
            "replicas" => self.replicas = parse_count(name, value, 1, Self::MAX_REPLICAS)?,
            "storage" => {
                self.storage = match value {
                    "file" => Storage::File,
                    "memory" => Storage::Memory,
                    _ => {
                        return Err(BuildError::invalid_option(
                            name,
                            value,
                            "expected file or memory",
                        ));
                    }
                }
            }
            "timeout" => self.operation_timeout = parse_seconds(name, value, Self::MAX_TIMEOUT)?,
            "connect_timeout" => {
                self.connect_timeout = parse_seconds(name, value, Self::MAX_TIMEOUT)?;
            }
            "receive_prefetch" => {
                self.receive_prefetch = parse_count(name, value, 0, Self::MAX_RECEIVE_PREFETCH)?;
            }
            "token" => self.token = Some(value.to_owned()),
            "credentials_file" => self.credentials_file = Some(PathBuf::from(value)),
            "tls_ca_file" => self.tls_ca_file = Some(PathBuf::from(value)),
            _ => {
                return Err(BuildError::UnknownParameter {
                    scheme: "nats".into(),
                    name: name.to_owned(),
                });
            }
        }
        Ok(())
    }

    /// Checks every setting against its bounds.
    ///
    /// # Errors
    ///
    /// [`BuildError::InvalidOption`] naming the first bad setting.
    pub fn validate(&self) -> Result<(), BuildError> {
        self.layer.validate()?;
        if self.servers.is_empty() {
            return Err(BuildError::invalid_option(
                "servers",
                "",
                "at least one server is needed",
            ));
        }
        if self.prefix.is_empty()
            || self.prefix.len() > 32
            || !self
                .prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(BuildError::invalid_option(
                "prefix",
                &self.prefix,
                "1 to 32 ASCII letters, digits, - and _ (it names streams and subjects)",
            ));
        }
        check_count("replicas", self.replicas, 1, Self::MAX_REPLICAS)?;
        check_count(
            "receive_prefetch",
            self.receive_prefetch,
            0,
            Self::MAX_RECEIVE_PREFETCH,
        )?;
        for (name, value) in [
            ("timeout", self.operation_timeout),
            ("connect_timeout", self.connect_timeout),
        ] {
            if value.is_zero() || value > Self::MAX_TIMEOUT {
                return Err(BuildError::invalid_option(
                    name,
                    format!("{value:?}"),
                    "must be longer than zero and at most 3600 s (1 hour)",
                ));
            }
        }
        let logins = usize::from(self.credentials_file.is_some())
            + usize::from(self.token.is_some())
            + usize::from(self.user_password.is_some());
        if logins > 1 {
            return Err(BuildError::invalid_option(
                "login",
                "<several>",
                "give one way to log in: a credentials file, a token or a user and password",
            ));
        }
        Ok(())
    }
}

/// `host[:port]` checked, with the default port added when it has none.
fn host_port(host: &str) -> Result<String, String> {
    if host.is_empty() {
        return Err("a server address is empty".into());
    }
    let (name, port) = if let Some(v6) = host.strip_prefix('[') {
        let (addr, tail) = v6
            .split_once(']')
            .ok_or_else(|| format!("{host}: an IPv6 address lacks its closing ]"))?;
        (format!("[{addr}]"), tail.strip_prefix(':'))
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) => (name.to_owned(), Some(port)),
            None => (host.to_owned(), None),
        }
    };
    if name.is_empty() || name == "[]" {
        return Err(format!("{host}: no host name"));
    }
    let port = match port {
        Some(port) => port
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("{host}: the port must be a number from 1 to 65535"))?,
        None => DEFAULT_PORT,
    };
    Ok(format!("{name}:{port}"))
}

/// Decodes `%XX` escapes (a `+` stays a `+`); `None` when the result is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    decode_component(&s.replace('+', "%2B"))
}

impl fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsConfig")
            .field("servers", &self.servers)
            .field("layer", &self.layer)
            .field("prefix", &self.prefix)
            .field("replicas", &self.replicas)
            .field("storage", &self.storage)
            .field("operation_timeout", &self.operation_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("receive_prefetch", &self.receive_prefetch)
            .field(
                "user",
                &self.user_password.as_ref().map(|(user, _)| user.as_str()),
            )
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("credentials_file", &self.credentials_file)
            .field("tls", &self.tls)
            .field("tls_ca_file", &self.tls_ca_file)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_hosts_auth_and_options() {
        let c = NatsConfig::from_url("nats://u:p%40ss@a,b:5000,[::1]:7?prefix=x_1&storage=memory")
            .unwrap();
        assert_eq!(
            c.servers,
            ["nats://a:4222", "nats://b:5000", "nats://[::1]:7"]
        );
        assert_eq!(c.user_password, Some(("u".into(), "p@ss".into())));
        assert_eq!(c.storage, Storage::Memory);
        assert_eq!(c.prefix, "x_1");
        let t = NatsConfig::from_url("tls://secret@h/?timeout=2").unwrap();
        assert_eq!(t.token.as_deref(), Some("secret"));
        assert!(t.tls);
        assert_eq!(t.servers, ["tls://h:4222"]);
        assert_eq!(t.operation_timeout, Duration::from_secs(2));
    }

    #[test]
    fn refuses_bad_urls_by_name() {
        for (url, needle) in [
            ("nats://", "empty"),
            ("nats://h:0", "port"),
            ("nats://h:99999", "port"),
            ("nats://h/path", "path"),
            ("nats://h?prefix=a.b", "prefix"),
            ("nats://h?replicas=6", "replicas"),
            ("nats://h?storage=disk", "storage"),
            ("nats://h?colour=red", "colour"),
            ("nats://h?timeout=0", "timeout"),
            ("nats://h?prefix=a&prefix=b", "prefix"),
            ("redis://h", "not a NATS URL"),
            ("nats://t@h?token=u", "token"),
        ] {
            let e = NatsConfig::from_url(url).unwrap_err().to_string();
            assert!(e.contains(needle), "{url}: {e}");
        }
    }

    #[test]
    fn debug_hides_secrets() {
        let e = NatsConfig::from_url("nats://u:hunter2@h?token=abc").unwrap_err();
        assert!(e.to_string().contains("one way to log in"), "{e}");
        assert!(!e.to_string().contains("hunter2"), "{e}");
        let e = NatsConfig::from_url("nats://tok3n@h?colour=1").unwrap_err();
        assert!(!format!("{e}{e:?}").contains("tok3n"), "{e}");
        let c = NatsConfig::from_url("nats://u:hunter2@h").unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
