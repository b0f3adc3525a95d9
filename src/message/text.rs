//! The string a message value holds: short ones inline, long ones on the heap.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;

/// A UTF-8 string inside a [`Value`](super::Value).
///
/// Up to 24 bytes are stored inline, without an allocation: message types
/// (`"websocket.receive"`, `"chat.message"`), short texts and most small values never touch the
/// allocator, which is much of what a small message costs. Longer strings live on the heap as a
/// `String` would.
///
/// `Str` dereferences to [`str`], so every `&str` method works on it, and it converts from and
/// into `String` and `&str`:
///
/// ```
/// use channel_layer::{Str, Value};
///
/// let v = Value::Str("chat.message".into());
/// let s: &Str = match &v {
///     Value::Str(s) => s,
///     _ => unreachable!(),
/// };
/// assert_eq!(s, "chat.message");
/// assert!(s.starts_with("chat."));
/// let owned: String = s.clone().into();
/// assert_eq!(owned, "chat.message");
/// ```
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Str(compact_str::CompactString);

impl Str {
    /// The empty string.
    pub const fn new() -> Self {
        Str(compact_str::CompactString::const_new(""))
    }

    /// The string as a `&str`.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// The string as an owned `String` (no copy when it is on the heap already).
    pub fn into_string(self) -> String {
        self.0.into_string()
    }
}

impl Deref for Str {
    type Target = str;
    fn deref(&self) -> &str {
        self.0.as_str()
    }
}

impl AsRef<str> for Str {
    fn as_ref(&self) -> &str {
        self.0.as_str()
    }
}

impl AsRef<[u8]> for Str {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl Borrow<str> for Str {
    fn borrow(&self) -> &str {
        self.0.as_str()
    }
}

impl fmt::Debug for Str {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Str {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.as_str(), f)
    }
}

impl From<&str> for Str {
    fn from(s: &str) -> Self {
        Str(s.into())
    }
}

impl From<String> for Str {
    fn from(s: String) -> Self {
        Str(s.into())
    }
}

impl From<&String> for Str {
    fn from(s: &String) -> Self {
        Str(s.as_str().into())
    }
}

impl From<Box<str>> for Str {
    fn from(s: Box<str>) -> Self {
        Str(s.into())
    }
}

impl From<char> for Str {
    fn from(c: char) -> Self {
        Str(compact_str::CompactString::from(
            &*c.encode_utf8(&mut [0; 4]),
        ))
    }
}

impl From<Str> for String {
    fn from(s: Str) -> Self {
        s.into_string()
    }
}

impl PartialEq<str> for Str {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Str {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<String> for Str {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other.as_str()
    }
}

impl PartialEq<Str> for str {
    fn eq(&self, other: &Str) -> bool {
        self == other.as_str()
    }
}

impl PartialEq<Str> for &str {
    fn eq(&self, other: &Str) -> bool {
        *self == other.as_str()
    }
}

impl PartialEq<Str> for String {
    fn eq(&self, other: &Str) -> bool {
        self.as_str() == other.as_str()
    }
}

impl FromIterator<char> for Str {
    fn from_iter<I: IntoIterator<Item = char>>(iter: I) -> Self {
        Str(iter.into_iter().collect())
    }
}

impl<'a> FromIterator<&'a str> for Str {
    fn from_iter<I: IntoIterator<Item = &'a str>>(iter: I) -> Self {
        Str(iter.into_iter().collect())
    }
}

impl serde::Serialize for Str {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for Str {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Str;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Str, E> {
                Ok(v.into())
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Str, E> {
                Ok(v.into())
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_strings_are_inline_and_long_ones_round_trip() {
        assert_eq!(std::mem::size_of::<Str>(), 24);
        let short = Str::from("websocket.receive");
        assert!(!short.0.is_heap_allocated());
        let long = Str::from("x".repeat(100));
        assert!(long.0.is_heap_allocated());
        assert_eq!(long.len(), 100);
        assert_eq!(String::from(long), "x".repeat(100));
    }

    #[test]
    fn compares_with_every_string_type() {
        let s = Str::from("abc");
        assert_eq!(s, "abc");
        assert_eq!(s, *"abc");
        assert_eq!(s, String::from("abc"));
        assert_eq!("abc", s);
        assert_eq!(format!("{s} {s:?}"), "abc \"abc\"");
        assert_eq!(Str::from('é'), "é");
        assert_eq!(Str::new(), "");
    }
}
