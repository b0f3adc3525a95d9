//! [`AnyLayer`]: one handle type for every backend, and the URL constructor.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, OnceLock};

use parking_lot::RwLock;

use crate::config::{redacted_url, url_scheme};
use crate::error::BuildError;
use crate::layer::ChannelLayer;
use crate::memory::InMemoryLayer;

/// A cheaply clonable handle to any backend, behind `dyn ChannelLayer`.
///
/// This is what [`AnyLayer::from_url`] returns, so an application can choose its backend from
/// configuration (`memory://`, `redis://...`) and keep the rest of its code unchanged. Any
/// [`ChannelLayer`] implementation, a third party's included, can be wrapped with
/// [`AnyLayer::new`].
///
/// # Examples
///
/// ```
/// use channel_layer::prelude::*;
///
/// let layer = AnyLayer::from_url("memory://?capacity=10&expiry=5")?;
/// layer.send("greetings", Message::new("hello"))?;
/// assert_eq!(layer.receive("greetings")?.message_type(), Some("hello"));
/// # Ok::<(), channel_layer::Error>(())
/// ```
#[derive(Clone)]
pub struct AnyLayer {
    inner: Arc<dyn ChannelLayer>,
}

impl AnyLayer {
    /// Wraps a backend.
    pub fn new<L: ChannelLayer + 'static>(layer: L) -> Self {
        AnyLayer {
            inner: Arc::new(layer),
        }
    }

    /// Builds a layer from a URL. The scheme picks the backend:
    ///
    /// | URL | backend |
    /// |---|---|
    /// | `memory://` (or `memory:`) | [`InMemoryLayer`] |
    /// | `redis://`, `rediss://`, `unix://`, `redis+unix://`, `redis+sentinel://`, `rediss+sentinel://`, `redis+cluster://`, `rediss+cluster://` (feature `redis`) | `RedisLayer`, see `RedisConfig::from_url` |
    /// | `nats://`, `tls://` (feature `nats`) | `NatsLayer`, see `NatsConfig::from_url` |
    /// | a scheme given to [`register_backend`] | that backend |
    ///
    /// Query parameters set options; every backend takes `capacity`, `expiry` and
    /// `group_expiry` (seconds), `max_message_depth` and `max_message_bytes`, read by one parser ([`crate::parse_url_params`]) and checked
    /// against the bounds of [`crate::LayerConfig::validate`]. An unknown parameter is an
    /// error, never ignored. Only the scheme is read here; the backend reads the rest, so a
    /// Redis URL may name several servers (`redis://h1:6379,h2:6379/0`).
    ///
    /// # Errors
    ///
    /// [`BuildError`] for a URL without a scheme, an unknown scheme (the error lists the known
    /// ones), a backend whose feature is off, an unknown parameter or a bad value.
    pub fn from_url(url: &str) -> Result<Self, BuildError> {
        let scheme = url_scheme(url)?;
        if scheme == "memory" {
            return InMemoryLayer::from_url(url).map(AnyLayer::new);
        }
        let registered = registry().read().get(&scheme).copied();
        if let Some(factory) = registered {
            return factory(url);
        }
        if REDIS_SCHEMES.contains(&scheme.as_str()) {
            #[cfg(feature = "redis")]
            return crate::redis::RedisLayer::from_url(url).map(AnyLayer::new);
            #[cfg(not(feature = "redis"))]
            return Err(BuildError::FeatureDisabled {
                scheme,
                feature: "redis",
            });
        }
        if NATS_SCHEMES.contains(&scheme.as_str()) {
            #[cfg(feature = "nats")]
            return crate::nats::NatsLayer::from_url(url).map(AnyLayer::new);
            #[cfg(not(feature = "nats"))]
            return Err(BuildError::FeatureDisabled {
                scheme,
                feature: "nats",
            });
        }
        Err(BuildError::UnknownScheme {
            scheme,
            known: known_schemes().join(", "),
        })
    }

    /// Builds a layer from the URL in environment variable `var`, or `memory://` when it is
    /// unset or empty.
    ///
    /// # Errors
    ///
    /// As [`AnyLayer::from_url`]; and [`BuildError::InvalidUrl`] when the variable is set but
    /// not valid UTF-8 (that is not a reason to fall back to `memory://`).
    pub fn from_env(var: &str) -> Result<Self, BuildError> {
        match std::env::var(var) {
            Ok(url) if !url.trim().is_empty() => AnyLayer::from_url(url.trim()),
            Ok(_) | Err(std::env::VarError::NotPresent) => AnyLayer::from_url("memory://"),
            Err(std::env::VarError::NotUnicode(raw)) => Err(BuildError::InvalidUrl {
                url: redacted_url(&raw.to_string_lossy()),
                reason: format!("the environment variable {var} is not valid UTF-8"),
            }),
        }
    }

    /// The backend, as a trait object.
    pub fn as_dyn(&self) -> &dyn ChannelLayer {
        &*self.inner
    }
}

impl fmt::Debug for AnyLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("AnyLayer").field(&self.inner).finish()
    }
}

impl ChannelLayer for AnyLayer {
    crate::delegate_channel_layer!(inner);
}

impl From<InMemoryLayer> for AnyLayer {
    fn from(layer: InMemoryLayer) -> Self {
        AnyLayer::new(layer)
    }
}

/// The schemes of the Redis backend.
const REDIS_SCHEMES: [&str; 8] = [
    "redis",
    "rediss",
    "unix",
    "redis+unix",
    "redis+sentinel",
    "rediss+sentinel",
    "redis+cluster",
    "rediss+cluster",
];

/// The schemes of the NATS backend.
const NATS_SCHEMES: [&str; 2] = ["nats", "tls"];

/// The schemes this build can open, sorted: `memory`, the Redis ones when the `redis` feature
/// is on, the NATS ones when the `nats` feature is, and every registered one.
fn known_schemes() -> Vec<String> {
    let mut known: Vec<String> = registry().read().keys().cloned().collect();
    known.push("memory".into());
    if cfg!(feature = "redis") {
        known.extend(REDIS_SCHEMES.iter().map(|s| (*s).to_owned()));
    }
    if cfg!(feature = "nats") {
        known.extend(NATS_SCHEMES.iter().map(|s| (*s).to_owned()));
    }
    known.sort();
    known.dedup();
    known
}

/// Builds a layer from a URL; see [`register_backend`].
pub type BackendFactory = fn(&str) -> Result<AnyLayer, BuildError>;

fn registry() -> &'static RwLock<HashMap<String, BackendFactory>> {
    static REGISTRY: OnceLock<RwLock<HashMap<String, BackendFactory>>> = OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

/// Makes [`AnyLayer::from_url`] build URLs with `scheme` through `factory`, so a third-party
/// backend plugs in behind the same constructor. A later registration of the same scheme
/// replaces the earlier one; `memory` cannot be replaced. Schemes are matched without regard
/// to case, as URLs have them.
///
/// [`crate::parse_url_params`] helps a factory apply the common parameters.
///
/// # Examples
///
/// ```
/// use channel_layer::{AnyLayer, BuildError, InMemoryLayer, register_backend};
///
/// fn test_backend(url: &str) -> Result<AnyLayer, BuildError> {
///     let (config, _rest) = channel_layer::parse_url_params(url, &[])?;
///     Ok(AnyLayer::new(InMemoryLayer::new(config)))
/// }
/// register_backend("mytest", test_backend);
/// assert!(AnyLayer::from_url("mytest://?capacity=3").is_ok());
/// ```
pub fn register_backend(scheme: &str, factory: BackendFactory) {
    registry()
        .write()
        .insert(scheme.to_ascii_lowercase(), factory);
}
