//! Headers: the correlation ID, the reply channel and feature flags a message carries.
//!
//! They travel inside the message as ordinary keys, so every backend carries them unchanged
//! and a Django consumer reading the same message from channels_redis sees them as plain dict
//! keys:
//!
//! | key | value | meaning |
//! |---|---|---|
//! | `correlation_id` | string | identifies one piece of work across every service it touches |
//! | `reply_channel` | string | where the answer to a request goes (a process-specific channel) |
//! | `flags` | map of string to value | feature flags decided once, at the edge, and passed along |

use super::{Map, Message, Str, Value};

/// The key of the correlation ID.
pub const CORRELATION_ID_KEY: &str = "correlation_id";
/// The key of the reply channel.
pub const REPLY_CHANNEL_KEY: &str = "reply_channel";
/// The key of the feature flags.
pub const FLAGS_KEY: &str = "flags";

/// Makes a fresh correlation ID: 32 random hexadecimal digits.
///
/// ```
/// let id = channel_layer::message::new_correlation_id();
/// assert_eq!(id.len(), 32);
/// ```
pub fn new_correlation_id() -> String {
    let bits: u128 = rand::random();
    format!("{bits:032x}")
}

impl Message {
    /// The correlation ID, if the message carries one.
    pub fn correlation_id(&self) -> Option<&str> {
        self.get(CORRELATION_ID_KEY).and_then(Value::as_str)
    }

    /// Sets the correlation ID.
    pub fn set_correlation_id(&mut self, id: impl Into<Str>) {
        self.insert(CORRELATION_ID_KEY, Value::Str(id.into()));
    }

    /// With the correlation ID set (builder style).
    #[must_use]
    pub fn with_correlation_id(mut self, id: impl Into<Str>) -> Self {
        self.set_correlation_id(id);
        self
    }

    /// The reply channel, if the message carries one.
    pub fn reply_channel(&self) -> Option<&str> {
        self.get(REPLY_CHANNEL_KEY).and_then(Value::as_str)
    }

    /// Sets the reply channel.
    pub fn set_reply_channel(&mut self, channel: impl Into<Str>) {
        self.insert(REPLY_CHANNEL_KEY, Value::Str(channel.into()));
    }

    /// With the reply channel set (builder style).
    #[must_use]
    pub fn with_reply_channel(mut self, channel: impl Into<Str>) -> Self {
        self.set_reply_channel(channel);
        self
    }

    /// The feature flags (empty if the message carries none).
    pub fn flags(&self) -> Map {
        match self.get(FLAGS_KEY) {
            Some(Value::Map(flags)) => flags.clone(),
            _ => Map::new(),
        }
    }

    /// One feature flag's value.
    pub fn flag(&self, name: &str) -> Option<&Value> {
        match self.get(FLAGS_KEY) {
            Some(Value::Map(flags)) => flags.get(name),
            _ => None,
        }
    }

    /// Whether a feature flag is set to `true`.
    pub fn flag_on(&self, name: &str) -> bool {
        self.flag(name).and_then(Value::as_bool) == Some(true)
    }

    /// Sets one feature flag, keeping the others.
    pub fn set_flag(&mut self, name: &str, value: impl Into<Value>) {
        let value = value.into();
        let map = self.as_map_mut();
        match map.get_mut(FLAGS_KEY) {
            Some(Value::Map(flags)) => {
                flags.insert(name, value);
            }
            _ => {
                let mut flags = Map::new();
                flags.insert(name, value);
                map.insert(FLAGS_KEY, Value::Map(flags));
            }
        }
    }

    /// With one feature flag set (builder style).
    #[must_use]
    pub fn with_flag(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.set_flag(name, value);
        self
    }

    /// Copies the correlation ID and the feature flags of `cause` into this message (the
    /// message a handler sends because it received `cause`), leaving any it has already set.
    #[must_use]
    pub fn caused_by(mut self, cause: &Message) -> Self {
        if self.correlation_id().is_none() {
            if let Some(id) = cause.correlation_id() {
                self.set_correlation_id(id);
            }
        }
        if let Some(Value::Map(flags)) = cause.get(FLAGS_KEY) {
            for (name, value) in flags.iter() {
                if self.flag(name).is_none() {
                    self.set_flag(name, value.clone());
                }
            }
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_plain_keys() {
        let m = Message::new("order.create")
            .with_correlation_id("abc")
            .with_reply_channel("reply.x!y")
            .with_flag("discount", true);
        assert_eq!(m.correlation_id(), Some("abc"));
        assert_eq!(m.reply_channel(), Some("reply.x!y"));
        assert!(m.flag_on("discount"));
        assert!(!m.flag_on("other"));
        assert_eq!(m.get("correlation_id").and_then(Value::as_str), Some("abc"));
        assert!(m.get("flags").and_then(Value::as_map).is_some());
    }

    #[test]
    fn caused_by_propagates_without_overriding() {
        let cause = Message::new("a")
            .with_correlation_id("c1")
            .with_flag("x", true)
            .with_flag("y", "blue");
        let effect = Message::new("b").with_flag("y", "red").caused_by(&cause);
        assert_eq!(effect.correlation_id(), Some("c1"));
        assert!(effect.flag_on("x"));
        assert_eq!(effect.flag("y").and_then(Value::as_str), Some("red"));
        let own = Message::new("c")
            .with_correlation_id("mine")
            .caused_by(&cause);
        assert_eq!(own.correlation_id(), Some("mine"));
    }

    #[test]
    fn correlation_ids_are_fresh() {
        assert_ne!(new_correlation_id(), new_correlation_id());
    }
}
