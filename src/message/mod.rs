//! Messages: ASGI-shaped maps with string keys, and the dynamic [`Value`] they hold.
//!
//! A message is what the channel layer specification allows ([contract §1.4](crate::contract)): a map with string
//! keys whose values are null, booleans, signed 64-bit integers, 64-bit floats, UTF-8 strings,
//! byte strings (distinct from strings), lists and maps with string keys. Because [`Value`] can
//! hold nothing else, every message the in-memory layer accepts can also cross a network
//! unchanged: splitting a service out later changes nothing in what it receives.
//!
//! Typed code does not need to touch [`Value`]: [`Message::encode`] turns any
//! [`serde::Serialize`] type that serializes as a map into a message, and [`Message::decode`]
//! turns it back.

mod de;
mod headers;
mod limits;
mod map;
mod ser;
mod text;
mod value;

use std::fmt;

pub use headers::{CORRELATION_ID_KEY, FLAGS_KEY, REPLY_CHANNEL_KEY, new_correlation_id};
#[cfg_attr(not(feature = "redis"), allow(unused_imports))]
pub(crate) use map::Entries;
pub use map::{IntoIter, Map};
pub use text::Str;
pub use value::Value;

/// The reserved key channels_redis uses to demultiplex process-specific channels
/// ([contract §1.4](crate::contract) and §3.3). A user message must not carry it.
pub const RESERVED_KEY: &str = "__asgi_channel__";

/// The key naming a message's type, by which consumers dispatch (`chat.message`).
pub const TYPE_KEY: &str = "type";

/// A message: an immutable, cheaply clonable map with string keys.
///
/// Cloning a `Message` shares its content (it is reference counted), which is how a
/// `group_send` to a hundred members costs a hundred pointer copies, not a hundred deep copies.
/// Mutating methods copy the content first if it is shared, so a receiver can never observe
/// another receiver's changes.
///
/// A small message is cheap to build: its entries and their reference count share one
/// allocation, and keys and strings of up to 24 bytes are stored inline, so
/// `Message::new("chat.message").with("n", 1)` allocates once.
///
/// # Examples
///
/// ```
/// use channel_layer::Message;
///
/// let msg = Message::new("chat.message").with("text", "hello").with("n", 3);
/// assert_eq!(msg.message_type(), Some("chat.message"));
/// assert_eq!(msg.get("text").and_then(|v| v.as_str()), Some("hello"));
/// assert_eq!(msg.get("n").and_then(|v| v.as_i64()), Some(3));
/// ```
#[derive(Clone, PartialEq, Default)]
pub struct Message {
    map: Map,
}

/// A message could not be built, converted or accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MessageError {
    /// The message carries a key that the layer reserves for itself.
    #[error("message carries the reserved key {key:?}")]
    ReservedKey {
        /// The reserved key found in the message.
        key: &'static str,
    },
    /// A typed value did not serialize to a map with string keys, or holds a value a message
    /// cannot carry (an integer outside `i64`, a map with non-string keys, ...).
    #[error("cannot encode as a message: {0}")]
    Encode(String),
    /// A message did not deserialize into the requested type.
    #[error("cannot decode message: {0}")]
    Decode(String),
    /// The message nests lists and maps deeper than the layer accepts
    /// ([`LayerConfig::max_message_depth`](crate::LayerConfig::max_message_depth)).
    #[error("the message nests deeper than {max_depth} levels")]
    TooDeep {
        /// The deepest nesting accepted.
        max_depth: usize,
    },
    /// The message is larger, as msgpack, than the layer accepts
    /// ([`LayerConfig::max_message_bytes`](crate::LayerConfig::max_message_bytes)).
    #[error("the message is at least {bytes} bytes as msgpack, more than the {max_bytes} accepted")]
    TooLarge {
        /// Its size as far as it was measured (the measuring stops past the limit).
        bytes: usize,
        /// The largest size accepted.
        max_bytes: usize,
    },
}

impl Message {
    /// A message with only its `type` key set.
    pub fn new(message_type: impl Into<Str>) -> Self {
        let mut map = Map::with_capacity(3);
        map.insert(TYPE_KEY, Value::Str(message_type.into()));
        Message::from_map(map)
    }

    /// A message holding `map` as it is (no copy).
    pub fn from_map(map: Map) -> Self {
        Message { map }
    }

    /// Adds or replaces `key`, returning the message (builder style).
    #[must_use]
    pub fn with(mut self, key: impl AsRef<str>, value: impl Into<Value>) -> Self {
        self.insert(key, value);
        self
    }

    /// Adds or replaces `key`; returns the previous value.
    pub fn insert(&mut self, key: impl AsRef<str>, value: impl Into<Value>) -> Option<Value> {
        self.map.insert(key, value.into())
    }

    /// Removes `key`; returns its value.
    pub fn remove(&mut self, key: &str) -> Option<Value> {
        if !self.map.contains_key(key) {
            return None;
        }
        self.map.remove(key)
    }

    /// The value under `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.map.get(key)
    }

    /// The `type` key, if it is a string.
    pub fn message_type(&self) -> Option<&str> {
        self.get(TYPE_KEY).and_then(Value::as_str)
    }

    /// The content as a map.
    pub fn as_map(&self) -> &Map {
        &self.map
    }

    /// The content as a map, mutably (its entries are copied on the first change if shared).
    pub fn as_map_mut(&mut self) -> &mut Map {
        &mut self.map
    }

    /// The content as an owned map (no copy: a map shares its entries the same way).
    pub fn into_map(self) -> Map {
        self.map
    }

    /// The number of keys.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the message has no keys.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Encodes a typed value as a message.
    ///
    /// The value must serialize as a map (a struct, a map with string keys, ...) whose content
    /// a message can carry: integers within `i64`, map keys that are strings, and so on. Byte
    /// buffers marked with `serde_bytes` become [`Value::Bytes`].
    ///
    /// # Errors
    ///
    /// [`MessageError::Encode`] when the value is not map-shaped or holds something a message
    /// cannot carry, and [`MessageError::ReservedKey`] when it uses the reserved key.
    ///
    /// # Examples
    ///
    /// ```
    /// use channel_layer::Message;
    /// use serde::{Deserialize, Serialize};
    ///
    /// #[derive(Serialize, Deserialize, PartialEq, Debug)]
    /// struct Chat {
    ///     #[serde(rename = "type")]
    ///     kind: String,
    ///     text: String,
    /// }
    ///
    /// let chat = Chat { kind: "chat.message".into(), text: "hi".into() };
    /// let msg = Message::encode(&chat)?;
    /// assert_eq!(msg.message_type(), Some("chat.message"));
    /// assert_eq!(msg.decode::<Chat>()?, chat);
    /// # Ok::<(), channel_layer::MessageError>(())
    /// ```
    pub fn encode<T: serde::Serialize + ?Sized>(value: &T) -> Result<Message, MessageError> {
        match ser::to_value(value)? {
            Value::Map(map) => {
                let msg = Message::from_map(map);
                msg.check_reserved()?;
                Ok(msg)
            }
            other => Err(MessageError::Encode(format!(
                "a message must be a map, not {}",
                other.kind_name()
            ))),
        }
    }

    /// Decodes the message into a typed value.
    ///
    /// # Errors
    ///
    /// [`MessageError::Decode`] when the content does not fit `T`.
    pub fn decode<T: serde::de::DeserializeOwned>(&self) -> Result<T, MessageError> {
        de::from_map(&self.map)
    }

    /// Checks that the message nests at most `max_depth` levels (the message map itself being
    /// level 1) and is at most `max_bytes` as msgpack, as every backend checks at send.
    ///
    /// Walks the message once, without recursion, and stops as soon as a limit is passed.
    ///
    /// ```
    /// use channel_layer::{Message, MessageError, Value};
    ///
    /// let deep = (0..10).fold(Value::Null, |v, _| Value::List(vec![v]));
    /// let m = Message::new("x").with("v", deep);
    /// assert!(m.check_limits(11, 1 << 20).is_ok());
    /// assert_eq!(m.check_limits(10, 1 << 20), Err(MessageError::TooDeep { max_depth: 10 }));
    /// ```
    ///
    /// # Errors
    ///
    /// [`MessageError::TooDeep`] or [`MessageError::TooLarge`].
    pub fn check_limits(&self, max_depth: usize, max_bytes: usize) -> Result<(), MessageError> {
        limits::check(&self.map, max_depth, max_bytes)
    }

    /// Fails when the message carries [`RESERVED_KEY`].
    pub fn check_reserved(&self) -> Result<(), MessageError> {
        if self.map.contains_key(RESERVED_KEY) {
            Err(MessageError::ReservedKey { key: RESERVED_KEY })
        } else {
            Ok(())
        }
    }

    /// Whether two messages share the same content allocation (a cheap identity test).
    pub fn ptr_eq(a: &Message, b: &Message) -> bool {
        Map::ptr_eq(&a.map, &b.map)
    }
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Message").field(&self.map).finish()
    }
}

impl From<Map> for Message {
    fn from(map: Map) -> Self {
        Message::from_map(map)
    }
}

impl serde::Serialize for Message {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.map.serialize(serializer)
    }
}

impl<'de> serde::Deserialize<'de> for Message {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Map::deserialize(deserializer).map(Message::from_map)
    }
}
