//! [`AnyLayer`]: one handle type for every backend, and the URL constructor.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, OnceLock};

use parking_lot::RwLock;

use crate::config::LayerConfig;
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
    /// | `redis://`, `rediss://`, `unix://` (feature `redis`) | `RedisLayer` |
    /// | a scheme given to [`register_backend`] | that backend |
    ///
    /// Query parameters set options; every backend takes `capacity`, `expiry` and
    /// `group_expiry` (seconds). An unknown parameter is an error, never ignored.
    ///
    /// # Errors
    ///
    /// [`BuildError`] for an unparsable URL, an unknown scheme or parameter, or a bad value.
    pub fn from_url(url: &str) -> Result<Self, BuildError> {
        let parsed = url::Url::parse(url).map_err(|e| BuildError::InvalidUrl {
            url: url.to_owned(),
            reason: e.to_string(),
        })?;
        let scheme = parsed.scheme();
        if scheme == "memory" {
            return InMemoryLayer::from_url(url).map(AnyLayer::new);
        }
        if let Some(factory) = registry().read().get(scheme) {
            return factory(url);
        }
        #[cfg(feature = "redis")]
        if matches!(scheme, "redis" | "rediss" | "unix" | "redis+unix") {
            return crate::redis::RedisLayer::from_url(url).map(AnyLayer::new);
        }
        #[cfg(not(feature = "redis"))]
        if matches!(scheme, "redis" | "rediss" | "unix" | "redis+unix") {
            return Err(BuildError::FeatureDisabled {
                scheme: scheme.to_owned(),
                feature: "redis",
            });
        }
        let mut known: Vec<String> = registry().read().keys().cloned().collect();
        known.push("memory".into());
        known.sort();
        Err(BuildError::UnknownScheme {
            scheme: scheme.to_owned(),
            known: known.join(", "),
        })
    }

    /// Builds a layer from the URL in environment variable `var`, or `memory://` when it is
    /// unset or empty.
    ///
    /// # Errors
    ///
    /// As [`AnyLayer::from_url`].
    pub fn from_env(var: &str) -> Result<Self, BuildError> {
        match std::env::var(var) {
            Ok(url) if !url.trim().is_empty() => AnyLayer::from_url(url.trim()),
            _ => AnyLayer::from_url("memory://"),
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

/// Builds a layer from a URL; see [`register_backend`].
pub type BackendFactory = fn(&str) -> Result<AnyLayer, BuildError>;

fn registry() -> &'static RwLock<HashMap<String, BackendFactory>> {
    static REGISTRY: OnceLock<RwLock<HashMap<String, BackendFactory>>> = OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

/// Makes [`AnyLayer::from_url`] build URLs with `scheme` through `factory`, so a third-party
/// backend plugs in behind the same constructor. A later registration of the same scheme
/// replaces the earlier one; `memory` cannot be replaced.
///
/// [`parse_url_params`] helps a factory apply the common parameters.
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
    registry().write().insert(scheme.to_owned(), factory);
}

/// Reads a URL's query parameters: the common ones (`capacity`, `expiry`, `group_expiry`) go
/// into a [`LayerConfig`]; those named in `extra` are returned as `(name, value)` pairs for the
/// backend; any other is an error.
///
/// # Errors
///
/// [`BuildError::InvalidUrl`], [`BuildError::UnknownParameter`], [`BuildError::InvalidOption`].
pub fn parse_url_params(
    url: &str,
    extra: &[&str],
) -> Result<(LayerConfig, Vec<(String, String)>), BuildError> {
    let parsed = url::Url::parse(url).map_err(|e| BuildError::InvalidUrl {
        url: url.to_owned(),
        reason: e.to_string(),
    })?;
    let mut config = LayerConfig::default();
    let mut rest = Vec::new();
    for (name, value) in parsed.query_pairs() {
        if config.set_param(&name, &value)? {
            continue;
        }
        if extra.contains(&&*name) {
            rest.push((name.into_owned(), value.into_owned()));
        } else {
            return Err(BuildError::UnknownParameter {
                scheme: parsed.scheme().to_owned(),
                name: name.into_owned(),
            });
        }
    }
    config.validate()?;
    Ok((config, rest))
}
