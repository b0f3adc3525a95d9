//! The dynamic value a message holds.

use super::{Map, Str};

/// One value inside a message: exactly the types the channel layer specification allows
/// ([contract §1.4](crate::contract)), with byte strings kept distinct from text.
///
/// `From` conversions exist for the usual Rust types, so `Message::with("n", 3)` and
/// `Value::from("text")` read naturally. Unsigned integers convert only through
/// [`Value::try_from`], since a message carries signed 64-bit integers.
#[derive(Clone, PartialEq, Default)]
#[non_exhaustive]
pub enum Value {
    /// Null (Python `None`, msgpack nil).
    #[default]
    Null,
    /// A boolean.
    Bool(bool),
    /// A signed 64-bit integer.
    Int(i64),
    /// A 64-bit float; carried bit for bit, NaN payloads and negative zero included.
    Float(f64),
    /// A UTF-8 string; up to 24 bytes are kept inline ([`Str`]).
    Str(Str),
    /// A byte string, distinct from [`Value::Str`].
    Bytes(Vec<u8>),
    /// A list of values.
    List(Vec<Value>),
    /// A map with string keys.
    Map(Map),
}

impl Value {
    /// The value's type, as a word for error messages (`"int"`, `"bytes"`, ...).
    pub fn kind_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "string",
            Value::Bytes(_) => "bytes",
            Value::List(_) => "list",
            Value::Map(_) => "map",
        }
    }

    /// Whether this is [`Value::Null`].
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// The boolean, if this is one.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// The integer, if this is one.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::Int(n) => Some(n),
            _ => None,
        }
    }

    /// The float, if this is one.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::Float(x) => Some(x),
            _ => None,
        }
    }

    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The bytes, if this is a byte string.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Bytes(b) => Some(b),
            _ => None,
        }
    }

    /// The list, if this is one.
    pub fn as_list(&self) -> Option<&[Value]> {
        match self {
            Value::List(l) => Some(l),
            _ => None,
        }
    }

    /// The map, if this is one.
    pub fn as_map(&self) -> Option<&Map> {
        match self {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }

    /// Equality that compares floats by their bits, so `NaN` equals the same `NaN` and `0.0`
    /// differs from `-0.0`: "what was sent is what was received, bit for bit".
    pub fn bit_eq(&self, other: &Value) -> bool {
        match (self, other) {
            (Value::Float(a), Value::Float(b)) => a.to_bits() == b.to_bits(),
            (Value::List(a), Value::List(b)) => {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.bit_eq(y))
            }
            (Value::Map(a), Value::Map(b)) => a.bit_eq(b),
            _ => self == other,
        }
    }
}

/// Prints values compactly, close to how Python shows them: `null`, `true`, `3`, `1.5`,
/// `"text"`, `b"bytes"`, `[..]`, `{..}`.
impl std::fmt::Debug for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Null => f.write_str("null"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(n) => write!(f, "{n}"),
            Value::Float(x) => write!(f, "{x:?}"),
            Value::Str(s) => write!(f, "{s:?}"),
            Value::Bytes(b) => write!(f, "b\"{}\"", b.escape_ascii()),
            Value::List(l) => f.debug_list().entries(l).finish(),
            Value::Map(m) => std::fmt::Debug::fmt(m, f),
        }
    }
}

macro_rules! from_int {
    ($($t:ty),*) => {$(
        impl From<$t> for Value {
            fn from(n: $t) -> Self {
                Value::Int(i64::from(n))
            }
        }
    )*};
}
from_int!(i8, i16, i32, i64, u8, u16, u32);

/// An unsigned integer above `i64::MAX` cannot be carried by a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("integer {0} does not fit in a signed 64-bit message integer")]
pub struct IntOutOfRange(pub u64);

impl TryFrom<u64> for Value {
    type Error = IntOutOfRange;
    fn try_from(n: u64) -> Result<Self, IntOutOfRange> {
        i64::try_from(n)
            .map(Value::Int)
            .map_err(|_| IntOutOfRange(n))
    }
}

impl TryFrom<usize> for Value {
    type Error = IntOutOfRange;
    fn try_from(n: usize) -> Result<Self, IntOutOfRange> {
        Value::try_from(n as u64)
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}

impl From<f64> for Value {
    fn from(x: f64) -> Self {
        Value::Float(x)
    }
}

impl From<f32> for Value {
    fn from(x: f32) -> Self {
        Value::Float(f64::from(x))
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Str(s.into())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Str(s.into())
    }
}

impl From<&String> for Value {
    fn from(s: &String) -> Self {
        Value::Str(s.into())
    }
}

impl From<Str> for Value {
    fn from(s: Str) -> Self {
        Value::Str(s)
    }
}

impl From<&[u8]> for Value {
    fn from(b: &[u8]) -> Self {
        Value::Bytes(b.to_vec())
    }
}

impl<const N: usize> From<&[u8; N]> for Value {
    fn from(b: &[u8; N]) -> Self {
        Value::Bytes(b.to_vec())
    }
}

impl From<Vec<Value>> for Value {
    fn from(l: Vec<Value>) -> Self {
        Value::List(l)
    }
}

impl From<Map> for Value {
    fn from(m: Map) -> Self {
        Value::Map(m)
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(o: Option<T>) -> Self {
        o.map_or(Value::Null, Into::into)
    }
}
