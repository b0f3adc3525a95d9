//! Deserialization: `Value` and `Map` from serde data, and typed data from a `Map`.
//!
//! [`from_map`] reads a typed value out of a message through [`ValueDeserializer`], which
//! borrows from the message (strings and byte strings are handed out without copying) and
//! mirrors the representation [`super::ser`] writes, so that encoding then decoding gives
//! back the original value. Errors name where in the message they happened (`inner.tags[2]`).

use std::fmt::{self, Write as _};
use std::hash::{BuildHasher, RandomState};

use hashbrown::HashTable;
use serde::de::value::BorrowedStrDeserializer;
use serde::de::{
    self, Deserialize, DeserializeOwned, DeserializeSeed, Deserializer, EnumAccess, MapAccess,
    SeqAccess, Unexpected, VariantAccess, Visitor,
};

use super::limits::Nesting;
use super::map::{Entries, Key};
use super::{Map, MessageError, Value};

/// Preallocate at most this many entries on the word of a size hint: the hint may come from
/// untrusted input, and a lying one must not reserve gigabytes.
const MAX_PREALLOC: usize = 1024;

fn cautious(hint: Option<usize>) -> usize {
    hint.unwrap_or(0).min(MAX_PREALLOC)
}

// ---------------------------------------------------------------------------------------------
// Building maps with `Map::insert` semantics in linear time.
// ---------------------------------------------------------------------------------------------

/// Beyond this many entries, [`MapBuilder`] finds duplicate keys through a hash index rather
/// than by scanning.
const INDEX_FROM: usize = 16;

/// Collects map entries with [`Map::insert`] semantics (a repeated key replaces the earlier
/// value and keeps its position), in linear time however many entries there are.
///
/// `Map::insert` scans the map, which is the right trade for messages of a handful of keys but
/// quadratic for a map of many thousands, as a peer could send. Small maps are scanned here
/// too; past [`INDEX_FROM`] entries a hash index (seeded per map) takes over.
#[derive(Debug, Default)]
pub(super) struct MapBuilder {
    entries: Entries,
    index: Option<KeyIndex>,
}

/// Positions in [`MapBuilder::entries`], hashed by key.
#[derive(Debug)]
struct KeyIndex {
    table: HashTable<usize>,
    hasher: RandomState,
}

impl KeyIndex {
    fn build(entries: &[(Key, Value)]) -> Self {
        let hasher = RandomState::new();
        let mut table = HashTable::with_capacity(entries.len());
        for (i, (key, _)) in entries.iter().enumerate() {
            let hash = hasher.hash_one(key.as_str());
            table.insert_unique(hash, i, |&j| hasher.hash_one(entries[j].0.as_str()));
        }
        KeyIndex { table, hasher }
    }
}

impl MapBuilder {
    pub(super) fn with_capacity(n: usize) -> Self {
        MapBuilder {
            entries: Entries::with_capacity(n),
            index: None,
        }
    }

    /// Adds `key`, or replaces its value if it is already present.
    pub(super) fn insert(&mut self, key: impl Into<Key>, value: Value) {
        let key: Key = key.into();
        let MapBuilder { entries, index } = self;
        match index {
            Some(KeyIndex { table, hasher }) => {
                let hash = hasher.hash_one(key.as_str());
                if let Some(&i) = table.find(hash, |&i| entries[i].0 == key) {
                    entries.make_mut()[i].1 = value;
                } else {
                    entries.push((key, value));
                    let i = entries.len() - 1;
                    table.insert_unique(hash, i, |&j| hasher.hash_one(entries[j].0.as_str()));
                }
            }
            None => {
                if let Some(i) = entries.iter().position(|(k, _)| *k == key) {
                    entries.make_mut()[i].1 = value;
                } else {
                    entries.push((key, value));
                    if entries.len() > INDEX_FROM {
                        *index = Some(KeyIndex::build(entries));
                    }
                }
            }
        }
    }

    pub(super) fn finish(self) -> Map {
        Map::from_unique(self.entries)
    }
}

// ---------------------------------------------------------------------------------------------
// `Value` and `Map` from any self-describing format.
// ---------------------------------------------------------------------------------------------

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ValueVisitor)
    }
}

impl<'de> Deserialize<'de> for Map {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(MapVisitor)
    }
}

fn out_of_range<E: de::Error>(n: impl fmt::Display) -> E {
    E::custom(format_args!(
        "integer {n} out of range for a message (messages carry signed 64-bit integers)"
    ))
}

#[derive(Debug, Clone, Copy)]
struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "a message value: null, a boolean, an integer, a float, a string, bytes, \
             a list or a map with string keys",
        )
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v))
    }

    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Value, E> {
        i64::try_from(v)
            .map(Value::Int)
            .map_err(|_| out_of_range(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        i64::try_from(v)
            .map(Value::Int)
            .map_err(|_| out_of_range(v))
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Value, E> {
        i64::try_from(v)
            .map(Value::Int)
            .map_err(|_| out_of_range(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Str(v.into()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::Str(v.into()))
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Value, E> {
        Ok(Value::Bytes(v.to_vec()))
    }

    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Value, E> {
        Ok(Value::Bytes(v))
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        Value::deserialize(deserializer)
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Value, D::Error> {
        Value::deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let _nesting = Nesting::enter().ok_or_else(|| de::Error::custom(Nesting::too_deep()))?;
        let mut items = Vec::with_capacity(cautious(seq.size_hint()));
        while let Some(item) = seq.next_element::<Value>()? {
            items.push(item);
        }
        Ok(Value::List(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, access: A) -> Result<Value, A::Error> {
        collect_map(access).map(Value::Map)
    }
}

#[derive(Debug, Clone, Copy)]
struct MapVisitor;

impl<'de> Visitor<'de> for MapVisitor {
    type Value = Map;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map with string keys")
    }

    fn visit_map<A: MapAccess<'de>>(self, access: A) -> Result<Map, A::Error> {
        collect_map(access)
    }
}

fn collect_map<'de, A: MapAccess<'de>>(mut access: A) -> Result<Map, A::Error> {
    let _nesting = Nesting::enter().ok_or_else(|| de::Error::custom(Nesting::too_deep()))?;
    let mut map = MapBuilder::with_capacity(cautious(access.size_hint()));
    while let Some(key) = access.next_key_seed(KeySeed)? {
        let value = access.next_value::<Value>()?;
        map.insert(key, value);
    }
    Ok(map.finish())
}

/// Reads a map key, which must be a string: no other key type is converted.
#[derive(Debug, Clone, Copy)]
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = String;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<String, D::Error> {
        deserializer.deserialize_string(KeySeed)
    }
}

impl Visitor<'_> for KeySeed {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string map key (message maps have string keys only)")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_owned())
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<String, E> {
        Ok(v)
    }
}

// ---------------------------------------------------------------------------------------------
// Typed values from a message.
// ---------------------------------------------------------------------------------------------

/// Deserializes a `T` from the content of a message.
pub(crate) fn from_map<T: DeserializeOwned>(map: &Map) -> Result<T, MessageError> {
    T::deserialize(ValueDeserializer::Map(map)).map_err(|e| MessageError::Decode(e.to_string()))
}

/// An encoding or decoding error, with the path (innermost segment first) where it happened:
/// both the serializer and the deserializer report "at `inner.tags[2]`: ...".
#[derive(Debug)]
pub(super) struct Error {
    msg: String,
    path: Vec<Segment>,
}

#[derive(Debug)]
enum Segment {
    Key(String),
    Index(usize),
}

impl Error {
    pub(super) fn new(msg: String) -> Self {
        Error {
            msg,
            path: Vec::new(),
        }
    }

    /// Notes that the error happened under `key`, one level further out than the path so far.
    pub(super) fn at_key(mut self, key: &str) -> Self {
        self.path.push(Segment::Key(key.to_owned()));
        self
    }

    /// Notes that the error happened at list position `index`.
    pub(super) fn at_index(mut self, index: usize) -> Self {
        self.path.push(Segment::Index(index));
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            return f.write_str(&self.msg);
        }
        let mut path = String::new();
        for (n, segment) in self.path.iter().rev().enumerate() {
            match segment {
                Segment::Key(key) if n == 0 => path.push_str(key),
                Segment::Key(key) => {
                    path.push('.');
                    path.push_str(key);
                }
                Segment::Index(i) => {
                    let _ = write!(path, "[{i}]");
                }
            }
        }
        write!(f, "at `{path}`: {}", self.msg)
    }
}

impl std::error::Error for Error {}

impl de::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Error::new(msg.to_string())
    }
}

impl serde::ser::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Error::new(msg.to_string())
    }
}

/// How a value shows in "invalid type" errors.
fn unexpected(value: &Value) -> Unexpected<'_> {
    match value {
        Value::Null => Unexpected::Unit,
        Value::Bool(b) => Unexpected::Bool(*b),
        Value::Int(n) => Unexpected::Signed(*n),
        Value::Float(x) => Unexpected::Float(*x),
        Value::Str(s) => Unexpected::Str(s),
        Value::Bytes(b) => Unexpected::Bytes(b),
        Value::List(_) => Unexpected::Seq,
        Value::Map(_) => Unexpected::Map,
    }
}

/// A deserializer reading from a borrowed value or map.
#[derive(Debug, Clone, Copy)]
enum ValueDeserializer<'de> {
    /// Any value.
    Value(&'de Value),
    /// A map not wrapped in a [`Value`] (the top level of a message).
    Map(&'de Map),
}

fn visit_map<'de, V: Visitor<'de>>(map: &'de Map, visitor: V) -> Result<V::Value, Error> {
    let _nesting = Nesting::enter().ok_or_else(|| Error::new(Nesting::too_deep()))?;
    let mut access = MapAccessor {
        entries: map.iter(),
        pending: None,
    };
    let out = visitor.visit_map(&mut access)?;
    let left = access.entries.len();
    if left == 0 {
        Ok(out)
    } else {
        let expected = format!("{} entries in map", map.len() - left);
        Err(de::Error::invalid_length(map.len(), &expected.as_str()))
    }
}

fn visit_list<'de, V: Visitor<'de>>(items: &'de [Value], visitor: V) -> Result<V::Value, Error> {
    let _nesting = Nesting::enter().ok_or_else(|| Error::new(Nesting::too_deep()))?;
    let mut access = SeqAccessor {
        items: items.iter(),
        index: 0,
    };
    let out = visitor.visit_seq(&mut access)?;
    let left = access.items.len();
    if left == 0 {
        Ok(out)
    } else {
        let expected = format!("{} elements in list", items.len() - left);
        Err(de::Error::invalid_length(items.len(), &expected.as_str()))
    }
}

impl<'de> Deserializer<'de> for ValueDeserializer<'de> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self {
            ValueDeserializer::Map(map) | ValueDeserializer::Value(Value::Map(map)) => {
                visit_map(map, visitor)
            }
            ValueDeserializer::Value(value) => match value {
                Value::Null => visitor.visit_unit(),
                Value::Bool(b) => visitor.visit_bool(*b),
                Value::Int(n) => visitor.visit_i64(*n),
                Value::Float(x) => visitor.visit_f64(*x),
                Value::Str(s) => visitor.visit_borrowed_str(s),
                Value::Bytes(b) => visitor.visit_borrowed_bytes(b),
                Value::List(items) => visit_list(items, visitor),
                Value::Map(map) => visit_map(map, visitor),
            },
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self {
            ValueDeserializer::Value(Value::Null) => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        let found = match self {
            ValueDeserializer::Value(Value::Str(variant)) => {
                return visitor.visit_enum(EnumDeserializer {
                    variant,
                    content: None,
                });
            }
            ValueDeserializer::Map(map) | ValueDeserializer::Value(Value::Map(map)) => {
                let mut entries = map.iter();
                if let (Some((variant, content)), None) = (entries.next(), entries.next()) {
                    return visitor.visit_enum(EnumDeserializer {
                        variant,
                        content: Some(content),
                    });
                }
                format!("a map with {} entries", map.len())
            }
            ValueDeserializer::Value(value) => unexpected(value).to_string(),
        };
        Err(de::Error::custom(format_args!(
            "invalid value: {found}, expected enum {name} as a variant name or a map with \
             exactly one entry"
        )))
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        unit unit_struct seq tuple tuple_struct map struct identifier
    }
}

/// Hands out a map's entries in order, keys as borrowed strings.
struct MapAccessor<'de, I> {
    entries: I,
    /// The entry whose key was just read, waiting for its value to be read.
    pending: Option<(&'de str, &'de Value)>,
}

impl<'de, I> MapAccess<'de> for MapAccessor<'de, I>
where
    I: ExactSizeIterator<Item = (&'de str, &'de Value)>,
{
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        let Some((key, value)) = self.entries.next() else {
            return Ok(None);
        };
        self.pending = Some((key, value));
        seed.deserialize(BorrowedStrDeserializer::new(key))
            .map(Some)
            .map_err(|e: Error| e.at_key(key))
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, Error> {
        let (key, value) = self
            .pending
            .take()
            .ok_or_else(|| de::Error::custom("a map value was read before its key"))?;
        seed.deserialize(ValueDeserializer::Value(value))
            .map_err(|e| e.at_key(key))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len())
    }
}

/// Hands out a list's elements in order.
struct SeqAccessor<'de> {
    items: std::slice::Iter<'de, Value>,
    index: usize,
}

impl<'de> SeqAccess<'de> for SeqAccessor<'de> {
    type Error = Error;

    fn next_element_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<Option<S::Value>, Error> {
        let Some(item) = self.items.next() else {
            return Ok(None);
        };
        let index = self.index;
        self.index += 1;
        seed.deserialize(ValueDeserializer::Value(item))
            .map(Some)
            .map_err(|e| e.at_index(index))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

/// An enum as the serializer writes it: a variant name, alone (unit variant) or as the only
/// key of a map holding the variant's content.
struct EnumDeserializer<'de> {
    variant: &'de str,
    content: Option<&'de Value>,
}

impl<'de> EnumAccess<'de> for EnumDeserializer<'de> {
    type Error = Error;
    type Variant = Self;

    fn variant_seed<S: DeserializeSeed<'de>>(self, seed: S) -> Result<(S::Value, Self), Error> {
        let tag = seed.deserialize(BorrowedStrDeserializer::<Error>::new(self.variant))?;
        Ok((tag, self))
    }
}

/// A variant given by name alone, where the type expects it to carry content.
fn missing_content(variant: &str, expected: &'static str) -> Error {
    let e: Error = de::Error::invalid_type(Unexpected::UnitVariant, &expected);
    e.at_key(variant)
}

impl<'de> VariantAccess<'de> for EnumDeserializer<'de> {
    type Error = Error;

    fn unit_variant(self) -> Result<(), Error> {
        match self.content {
            None | Some(Value::Null) => Ok(()),
            Some(content) => Err(de::Error::invalid_type(
                unexpected(content),
                &"no content for a unit variant",
            )),
        }
        .map_err(|e: Error| e.at_key(self.variant))
    }

    fn newtype_variant_seed<S: DeserializeSeed<'de>>(self, seed: S) -> Result<S::Value, Error> {
        match self.content {
            Some(content) => seed
                .deserialize(ValueDeserializer::Value(content))
                .map_err(|e| e.at_key(self.variant)),
            None => Err(missing_content(self.variant, "a newtype variant")),
        }
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, Error> {
        match self.content {
            Some(content) => ValueDeserializer::Value(content)
                .deserialize_tuple(len, visitor)
                .map_err(|e| e.at_key(self.variant)),
            None => Err(missing_content(self.variant, "a tuple variant")),
        }
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        match self.content {
            Some(content) => ValueDeserializer::Value(content)
                .deserialize_struct("", fields, visitor)
                .map_err(|e| e.at_key(self.variant)),
            None => Err(missing_content(self.variant, "a struct variant")),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use serde::de::value::{
        BorrowedStrDeserializer, BytesDeserializer, Error as PlainError, I32Deserializer,
        I128Deserializer, MapDeserializer, U64Deserializer, U128Deserializer,
    };
    use serde::{Deserialize, Serialize};

    use super::from_map;
    use crate::message::{Map, Message, MessageError, Value};

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Inner {
        name: String,
        score: f64,
    }

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    enum Shape {
        Empty,
        Circle(f64),
        Point(i32, i32),
        Rect { w: u32, h: u32 },
    }

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Everything {
        #[serde(rename = "type")]
        kind: String,
        text: String,
        count: i32,
        small: u8,
        ratio: f64,
        maybe: Option<i64>,
        nothing: Option<String>,
        tags: Vec<String>,
        inner: Inner,
        scores: HashMap<String, i64>,
        #[serde(with = "serde_bytes")]
        payload: Vec<u8>,
        shapes: Vec<Shape>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        skipped: Option<i32>,
        pair: (i8, char),
        unit: (),
        big: u64,
        wide: i128,
        narrow: f32,
    }

    fn everything() -> Everything {
        Everything {
            kind: "chat.message".into(),
            text: "héllo".into(),
            count: -42,
            small: 200,
            ratio: 0.25,
            maybe: Some(7),
            nothing: None,
            tags: vec!["a".into(), "b".into()],
            inner: Inner {
                name: "in".into(),
                score: 9.5,
            },
            scores: HashMap::from([("x".to_owned(), 1), ("y".to_owned(), -2)]),
            payload: vec![0, 1, 254, 255],
            shapes: vec![
                Shape::Empty,
                Shape::Circle(2.0),
                Shape::Point(3, -4),
                Shape::Rect { w: 5, h: 6 },
            ],
            skipped: None,
            pair: (-1, 'z'),
            unit: (),
            big: i64::MAX as u64,
            wide: i128::from(i64::MIN),
            narrow: 0.1,
        }
    }

    fn decode_error<T: std::fmt::Debug>(result: Result<T, MessageError>) -> String {
        match result {
            Err(MessageError::Decode(msg)) => msg,
            other => panic!("expected MessageError::Decode, got {other:?}"),
        }
    }

    #[test]
    fn a_struct_round_trips_through_a_message() {
        let original = everything();
        let msg = Message::encode(&original).unwrap();

        assert_eq!(msg.message_type(), Some("chat.message"));
        assert!(msg.get("skipped").is_none());
        assert_eq!(msg.get("small"), Some(&Value::Int(200)));
        assert_eq!(msg.get("nothing"), Some(&Value::Null));
        assert_eq!(
            msg.get("payload"),
            Some(&Value::Bytes(vec![0, 1, 254, 255]))
        );
        assert!(msg.get("inner").and_then(Value::as_map).is_some());
        assert!(msg.get("scores").and_then(Value::as_map).is_some());

        let decoded: Everything = msg.decode().unwrap();
        assert_eq!(decoded, original);
    }

    #[test]
    fn every_enum_variant_kind_round_trips() {
        #[derive(Serialize, Deserialize, Debug, PartialEq)]
        struct Holder {
            shape: Shape,
        }
        for shape in [
            Shape::Empty,
            Shape::Circle(-0.5),
            Shape::Point(i32::MIN, i32::MAX),
            Shape::Rect { w: 0, h: u32::MAX },
        ] {
            let holder = Holder { shape };
            let decoded: Holder = Message::encode(&holder).unwrap().decode().unwrap();
            assert_eq!(decoded, holder);
        }
    }

    #[test]
    fn an_enum_of_the_wrong_shape_is_a_decode_error() {
        #[derive(Deserialize, Debug)]
        #[allow(dead_code)]
        struct Holder {
            shape: Shape,
        }
        let mut two = Map::new();
        two.insert("Circle", 1.0);
        two.insert("Empty", Value::Null);
        let msg = decode_error(Message::new("t").with("shape", two).decode::<Holder>());
        assert!(msg.contains("exactly one entry"), "{msg}");

        decode_error(Message::new("t").with("shape", 3).decode::<Holder>());
        decode_error(
            Message::new("t")
                .with("shape", "Hexagon")
                .decode::<Holder>(),
        );
        // A variant with content, given without any.
        decode_error(Message::new("t").with("shape", "Circle").decode::<Holder>());
    }

    #[test]
    fn nan_and_negative_zero_survive_bit_for_bit() {
        #[derive(Serialize, Deserialize, Debug)]
        struct Floats {
            nan: f64,
            payload_nan: f64,
            neg_zero: f64,
            neg_zero_f32: f32,
            list: Vec<f64>,
        }
        let payload_nan = f64::from_bits(0x7ff8_0000_dead_beef);
        let original = Floats {
            nan: f64::NAN,
            payload_nan,
            neg_zero: -0.0,
            neg_zero_f32: -0.0,
            list: vec![-0.0, f64::NAN],
        };
        let decoded: Floats = Message::encode(&original).unwrap().decode().unwrap();
        assert_eq!(decoded.nan.to_bits(), f64::NAN.to_bits());
        assert_eq!(decoded.payload_nan.to_bits(), payload_nan.to_bits());
        assert_eq!(decoded.neg_zero.to_bits(), (-0.0_f64).to_bits());
        assert_eq!(decoded.neg_zero_f32.to_bits(), (-0.0_f32).to_bits());
        assert_eq!(decoded.list[0].to_bits(), (-0.0_f64).to_bits());
        assert_eq!(decoded.list[1].to_bits(), f64::NAN.to_bits());
    }

    #[test]
    fn a_wrong_field_type_is_a_decode_error_naming_the_field() {
        #[derive(Deserialize, Debug)]
        #[allow(dead_code)]
        struct Counted {
            count: i32,
        }
        let msg = decode_error(Message::new("t").with("count", "three").decode::<Counted>());
        assert!(msg.contains("`count`"), "{msg}");
        assert!(msg.contains("invalid type"), "{msg}");

        let mut original = Message::encode(&everything()).unwrap();
        let mut inner = original
            .get("inner")
            .and_then(Value::as_map)
            .unwrap()
            .clone();
        inner.insert("score", "high");
        original.insert("inner", inner);
        let msg = decode_error(original.decode::<Everything>());
        assert!(msg.contains("`inner.score`"), "{msg}");

        let mut original = Message::encode(&everything()).unwrap();
        original.insert("tags", vec![Value::from("ok"), Value::Int(2)]);
        let msg = decode_error(original.decode::<Everything>());
        assert!(msg.contains("`tags[1]`"), "{msg}");
    }

    #[test]
    fn integers_are_range_checked_for_the_target_type() {
        #[derive(Deserialize, Debug)]
        #[allow(dead_code)]
        struct Small {
            n: u8,
        }
        #[derive(Deserialize, Debug)]
        #[allow(dead_code)]
        struct Unsigned {
            n: u64,
        }
        assert_eq!(
            Message::new("t")
                .with("n", 255)
                .decode::<Small>()
                .unwrap()
                .n,
            255
        );
        decode_error(Message::new("t").with("n", 256).decode::<Small>());
        decode_error(Message::new("t").with("n", -1).decode::<Unsigned>());
        let msg = Message::new("t").with("n", i64::MAX);
        assert_eq!(msg.decode::<Unsigned>().unwrap().n, i64::MAX as u64);
    }

    #[test]
    fn missing_fields_and_extra_elements_are_decode_errors() {
        #[derive(Deserialize, Debug)]
        #[allow(dead_code)]
        struct Needs {
            present: i32,
            absent: i32,
        }
        #[derive(Deserialize, Debug)]
        #[allow(dead_code)]
        struct Pair {
            pair: (i32, i32),
        }

        let msg = decode_error(Message::new("t").with("present", 1).decode::<Needs>());
        assert!(msg.contains("absent"), "{msg}");

        let three = vec![Value::Int(1), Value::Int(2), Value::Int(3)];
        decode_error(Message::new("t").with("pair", three).decode::<Pair>());
    }

    #[test]
    fn unknown_keys_are_ignored() {
        #[derive(Deserialize, Debug, PartialEq)]
        struct Few {
            #[serde(rename = "type")]
            kind: String,
        }
        let msg = Message::new("t")
            .with("extra", vec![Value::Null])
            .with("more", 1);
        assert_eq!(msg.decode::<Few>().unwrap(), Few { kind: "t".into() });
    }

    #[test]
    fn a_message_decodes_into_map_value_and_message() {
        let original = Message::encode(&everything()).unwrap();
        let map: Map = original.decode().unwrap();
        assert!(map.bit_eq(original.as_map()));
        let value: Value = original.decode().unwrap();
        assert!(value.bit_eq(&Value::Map(original.as_map().clone())));
        let message: Message = original.decode().unwrap();
        assert_eq!(message, original);
        let direct: Map = from_map(original.as_map()).unwrap();
        assert_eq!(
            direct.keys().collect::<Vec<_>>(),
            original.as_map().keys().collect::<Vec<_>>()
        );
    }

    #[test]
    fn value_deserialize_keeps_integers_within_i64() {
        let ok = Value::deserialize(U64Deserializer::<PlainError>::new(i64::MAX as u64));
        assert_eq!(ok.unwrap(), Value::Int(i64::MAX));
        let err = Value::deserialize(U64Deserializer::<PlainError>::new(u64::MAX)).unwrap_err();
        assert!(
            err.to_string().contains("out of range for a message"),
            "{err}"
        );

        let ok = Value::deserialize(I128Deserializer::<PlainError>::new(-5));
        assert_eq!(ok.unwrap(), Value::Int(-5));
        assert!(Value::deserialize(I128Deserializer::<PlainError>::new(i128::MIN)).is_err());
        let ok = Value::deserialize(U128Deserializer::<PlainError>::new(5));
        assert_eq!(ok.unwrap(), Value::Int(5));
        assert!(Value::deserialize(U128Deserializer::<PlainError>::new(u128::MAX)).is_err());
    }

    #[test]
    fn value_deserialize_keeps_bytes_and_strings_apart() {
        let bytes = Value::deserialize(BytesDeserializer::<PlainError>::new(b"ab")).unwrap();
        assert_eq!(bytes, Value::Bytes(b"ab".to_vec()));
        let text = Value::deserialize(BorrowedStrDeserializer::<PlainError>::new("ab")).unwrap();
        assert_eq!(text, Value::Str("ab".into()));
    }

    #[test]
    fn map_deserialize_rejects_non_string_keys_and_non_maps() {
        let int_keys = || MapDeserializer::<_, PlainError>::new(vec![(1_i32, 2_i32)].into_iter());
        let err = Map::deserialize(int_keys()).unwrap_err();
        assert!(err.to_string().contains("string map key"), "{err}");
        assert!(Value::deserialize(int_keys()).is_err());
        assert!(Map::deserialize(I32Deserializer::<PlainError>::new(3)).is_err());
    }

    #[test]
    fn map_deserialize_lets_a_repeated_key_replace_the_earlier_value() {
        let entries = vec![("a", 1_i64), ("b", 2), ("a", 3)];
        let map = Map::deserialize(MapDeserializer::<_, PlainError>::new(entries.into_iter()));
        let map = map.unwrap();
        assert_eq!(map.keys().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(map.get("a"), Some(&Value::Int(3)));

        // Many keys: past the size where a hash index finds the duplicates.
        let keys: Vec<String> = (0..1000).map(|i| format!("key{i}")).collect();
        let mut entries: Vec<(&str, i64)> = keys.iter().map(|k| (k.as_str(), 0)).collect();
        entries.extend(
            keys.iter()
                .enumerate()
                .map(|(i, k)| (k.as_str(), i64::try_from(i).unwrap())),
        );
        let map = Map::deserialize(MapDeserializer::<_, PlainError>::new(entries.into_iter()));
        let map = map.unwrap();
        assert_eq!(map.len(), 1000);
        for (i, (key, value)) in map.iter().enumerate() {
            assert_eq!(key, keys[i]);
            assert_eq!(value, &Value::Int(i64::try_from(i).unwrap()));
        }
    }

    #[test]
    fn unit_enum_map_keys_round_trip() {
        #[derive(Serialize, Deserialize, Debug, PartialEq, Eq, Hash)]
        enum Color {
            Red,
            Blue,
        }
        #[derive(Serialize, Deserialize, Debug, PartialEq)]
        struct Palette {
            weights: HashMap<Color, i32>,
        }
        let original = Palette {
            weights: HashMap::from([(Color::Red, 1), (Color::Blue, 2)]),
        };
        let msg = Message::encode(&original).unwrap();
        let weights = msg.get("weights").and_then(Value::as_map).unwrap();
        assert_eq!(weights.get("Red"), Some(&Value::Int(1)));
        assert_eq!(msg.decode::<Palette>().unwrap(), original);
    }
}
