//! Serialization: `Value` and `Map` as serde data, and typed data as a `Value`.
//!
//! [`to_value`] runs any [`Serialize`] type through [`ValueSerializer`], whose output is a
//! [`Value`]. It never guesses: whatever a message cannot carry exactly (an unsigned integer
//! above `i64::MAX`, a map keyed by integers, ...) is an error rather than a silent
//! conversion, so what the receiver gets is what the sender wrote.

use std::fmt;

use serde::ser::{self, Impossible, Serialize, SerializeMap as _, Serializer};

use super::de::{Error, MapBuilder};
use super::limits::Nesting;
use super::{Map, MessageError, Str, Value};

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Null => serializer.serialize_unit(),
            Value::Bool(b) => serializer.serialize_bool(*b),
            Value::Int(n) => serializer.serialize_i64(*n),
            Value::Float(x) => serializer.serialize_f64(*x),
            Value::Str(s) => serializer.serialize_str(s),
            Value::Bytes(b) => serializer.serialize_bytes(b),
            Value::List(items) => serializer.collect_seq(items),
            Value::Map(map) => map.serialize(serializer),
        }
    }
}

impl Serialize for Map {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut out = serializer.serialize_map(Some(self.len()))?;
        for (key, value) in self.iter() {
            out.serialize_entry(key, value)?;
        }
        out.end()
    }
}

/// Serializes `value` into a [`Value`].
pub(crate) fn to_value<T: Serialize + ?Sized>(value: &T) -> Result<Value, MessageError> {
    value
        .serialize(ValueSerializer)
        .map_err(|e| MessageError::Encode(e.to_string()))
}

fn int_too_large(n: impl fmt::Display) -> Error {
    Error::new(format!(
        "integer {n} does not fit in a signed 64-bit integer, the only integers a message carries"
    ))
}

/// Builds `{variant: content}`, the shape of a newtype, tuple or struct variant.
fn variant_map(variant: &'static str, content: Value) -> Value {
    let mut map = Map::with_capacity(1);
    map.push_unique(variant.to_owned(), content);
    Value::Map(map)
}

/// A serializer whose output is a [`Value`].
#[derive(Debug, Clone, Copy)]
struct ValueSerializer;

impl Serializer for ValueSerializer {
    type Ok = Value;
    type Error = Error;
    type SerializeSeq = SeqSerializer;
    type SerializeTuple = SeqSerializer;
    type SerializeTupleStruct = SeqSerializer;
    type SerializeTupleVariant = TupleVariantSerializer;
    type SerializeMap = MapSerializer;
    type SerializeStruct = StructSerializer;
    type SerializeStructVariant = StructVariantSerializer;

    fn serialize_bool(self, v: bool) -> Result<Value, Error> {
        Ok(Value::Bool(v))
    }

    fn serialize_i8(self, v: i8) -> Result<Value, Error> {
        Ok(Value::Int(v.into()))
    }

    fn serialize_i16(self, v: i16) -> Result<Value, Error> {
        Ok(Value::Int(v.into()))
    }

    fn serialize_i32(self, v: i32) -> Result<Value, Error> {
        Ok(Value::Int(v.into()))
    }

    fn serialize_i64(self, v: i64) -> Result<Value, Error> {
        Ok(Value::Int(v))
    }

    fn serialize_i128(self, v: i128) -> Result<Value, Error> {
        i64::try_from(v)
            .map(Value::Int)
            .map_err(|_| int_too_large(v))
    }

    fn serialize_u8(self, v: u8) -> Result<Value, Error> {
        Ok(Value::Int(v.into()))
    }

    fn serialize_u16(self, v: u16) -> Result<Value, Error> {
        Ok(Value::Int(v.into()))
    }

    fn serialize_u32(self, v: u32) -> Result<Value, Error> {
        Ok(Value::Int(v.into()))
    }

    fn serialize_u64(self, v: u64) -> Result<Value, Error> {
        i64::try_from(v)
            .map(Value::Int)
            .map_err(|_| int_too_large(v))
    }

    fn serialize_u128(self, v: u128) -> Result<Value, Error> {
        i64::try_from(v)
            .map(Value::Int)
            .map_err(|_| int_too_large(v))
    }

    fn serialize_f32(self, v: f32) -> Result<Value, Error> {
        // Widening is exact: every finite or infinite f32 has an f64 of the same value.
        Ok(Value::Float(f64::from(v)))
    }

    fn serialize_f64(self, v: f64) -> Result<Value, Error> {
        Ok(Value::Float(v))
    }

    fn serialize_char(self, v: char) -> Result<Value, Error> {
        Ok(Value::Str(Str::from(v)))
    }

    fn serialize_str(self, v: &str) -> Result<Value, Error> {
        Ok(Value::Str(v.into()))
    }

    fn serialize_bytes(self, v: &[u8]) -> Result<Value, Error> {
        Ok(Value::Bytes(v.to_vec()))
    }

    fn serialize_none(self) -> Result<Value, Error> {
        Ok(Value::Null)
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<Value, Error> {
        value.serialize(self)
    }

    fn serialize_unit(self) -> Result<Value, Error> {
        Ok(Value::Null)
    }

    fn serialize_unit_struct(self, _name: &'static str) -> Result<Value, Error> {
        Ok(Value::Null)
    }

    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _variant_index: u32,
        variant: &'static str,
    ) -> Result<Value, Error> {
        Ok(Value::Str(variant.into()))
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<Value, Error> {
        value.serialize(self)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _variant_index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<Value, Error> {
        let content = value.serialize(self).map_err(|e| e.at_key(variant))?;
        Ok(variant_map(variant, content))
    }

    fn serialize_seq(self, len: Option<usize>) -> Result<SeqSerializer, Error> {
        Ok(SeqSerializer {
            items: Vec::with_capacity(len.unwrap_or(0)),
            _nesting: nest()?,
        })
    }

    fn serialize_tuple(self, len: usize) -> Result<SeqSerializer, Error> {
        self.serialize_seq(Some(len))
    }

    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        len: usize,
    ) -> Result<SeqSerializer, Error> {
        self.serialize_seq(Some(len))
    }

    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _variant_index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<TupleVariantSerializer, Error> {
        Ok(TupleVariantSerializer {
            variant,
            items: Vec::with_capacity(len),
            _nesting: nest()?,
        })
    }

    fn serialize_map(self, len: Option<usize>) -> Result<MapSerializer, Error> {
        Ok(MapSerializer {
            map: MapBuilder::with_capacity(len.unwrap_or(0)),
            key: None,
            _nesting: nest()?,
        })
    }

    fn serialize_struct(self, _name: &'static str, len: usize) -> Result<StructSerializer, Error> {
        Ok(StructSerializer {
            map: MapBuilder::with_capacity(len),
            _nesting: nest()?,
        })
    }

    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _variant_index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<StructVariantSerializer, Error> {
        Ok(StructVariantSerializer {
            variant,
            map: MapBuilder::with_capacity(len),
            _nesting: nest()?,
        })
    }
}

/// Collects a sequence, tuple or tuple struct into a [`Value::List`].
#[derive(Debug)]
struct SeqSerializer {
    items: Vec<Value>,
    _nesting: Nesting,
}

/// One level deeper, or the error of a value nested too deeply.
fn nest() -> Result<Nesting, Error> {
    Nesting::enter().ok_or_else(|| Error::new(Nesting::too_deep()))
}

impl ser::SerializeSeq for SeqSerializer {
    type Ok = Value;
    type Error = Error;

    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        let index = self.items.len();
        let item = value
            .serialize(ValueSerializer)
            .map_err(|e| e.at_index(index))?;
        self.items.push(item);
        Ok(())
    }

    fn end(self) -> Result<Value, Error> {
        Ok(Value::List(self.items))
    }
}

impl ser::SerializeTuple for SeqSerializer {
    type Ok = Value;
    type Error = Error;

    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        ser::SerializeSeq::serialize_element(self, value)
    }

    fn end(self) -> Result<Value, Error> {
        ser::SerializeSeq::end(self)
    }
}

impl ser::SerializeTupleStruct for SeqSerializer {
    type Ok = Value;
    type Error = Error;

    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        ser::SerializeSeq::serialize_element(self, value)
    }

    fn end(self) -> Result<Value, Error> {
        ser::SerializeSeq::end(self)
    }
}

/// Collects a tuple variant into `{variant: [fields...]}`.
#[derive(Debug)]
struct TupleVariantSerializer {
    variant: &'static str,
    items: Vec<Value>,
    _nesting: Nesting,
}

impl ser::SerializeTupleVariant for TupleVariantSerializer {
    type Ok = Value;
    type Error = Error;

    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        let index = self.items.len();
        let item = value
            .serialize(ValueSerializer)
            .map_err(|e| e.at_index(index).at_key(self.variant))?;
        self.items.push(item);
        Ok(())
    }

    fn end(self) -> Result<Value, Error> {
        Ok(variant_map(self.variant, Value::List(self.items)))
    }
}

/// Collects a map into a [`Value::Map`]; keys must serialize as strings.
#[derive(Debug)]
struct MapSerializer {
    map: MapBuilder,
    /// The key given to `serialize_key`, waiting for its value.
    key: Option<String>,
    _nesting: Nesting,
}

impl ser::SerializeMap for MapSerializer {
    type Ok = Value;
    type Error = Error;

    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Error> {
        self.key = Some(key.serialize(KeySerializer)?);
        Ok(())
    }

    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        let key = self
            .key
            .take()
            .ok_or_else(|| Error::new("map value serialized before its key".to_owned()))?;
        let value = value
            .serialize(ValueSerializer)
            .map_err(|e| e.at_key(&key))?;
        self.map.insert(key, value);
        Ok(())
    }

    fn serialize_entry<K: Serialize + ?Sized, V: Serialize + ?Sized>(
        &mut self,
        key: &K,
        value: &V,
    ) -> Result<(), Error> {
        let key = key.serialize(KeySerializer)?;
        let value = value
            .serialize(ValueSerializer)
            .map_err(|e| e.at_key(&key))?;
        self.map.insert(key, value);
        Ok(())
    }

    fn end(self) -> Result<Value, Error> {
        Ok(Value::Map(self.map.finish()))
    }
}

/// Collects a struct into a [`Value::Map`] keyed by field name.
#[derive(Debug)]
struct StructSerializer {
    map: MapBuilder,
    _nesting: Nesting,
}

impl ser::SerializeStruct for StructSerializer {
    type Ok = Value;
    type Error = Error;

    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        let value = value
            .serialize(ValueSerializer)
            .map_err(|e| e.at_key(key))?;
        self.map.insert(key.to_owned(), value);
        Ok(())
    }

    fn end(self) -> Result<Value, Error> {
        Ok(Value::Map(self.map.finish()))
    }
}

/// Collects a struct variant into `{variant: {field: value, ...}}`.
#[derive(Debug)]
struct StructVariantSerializer {
    variant: &'static str,
    map: MapBuilder,
    _nesting: Nesting,
}

impl ser::SerializeStructVariant for StructVariantSerializer {
    type Ok = Value;
    type Error = Error;

    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        let value = value
            .serialize(ValueSerializer)
            .map_err(|e| e.at_key(key).at_key(self.variant))?;
        self.map.insert(key.to_owned(), value);
        Ok(())
    }

    fn end(self) -> Result<Value, Error> {
        Ok(variant_map(self.variant, Value::Map(self.map.finish())))
    }
}

/// Serializes a map key, which must be a string: a message map's keys are strings, and a key
/// is never converted (an integer key `1` is not silently turned into `"1"`).
#[derive(Debug, Clone, Copy)]
struct KeySerializer;

fn bad_key(what: impl fmt::Display) -> Error {
    Error::new(format!(
        "map keys must be strings, not {what} (convert keys to strings before encoding)"
    ))
}

impl Serializer for KeySerializer {
    type Ok = String;
    type Error = Error;
    type SerializeSeq = Impossible<String, Error>;
    type SerializeTuple = Impossible<String, Error>;
    type SerializeTupleStruct = Impossible<String, Error>;
    type SerializeTupleVariant = Impossible<String, Error>;
    type SerializeMap = Impossible<String, Error>;
    type SerializeStruct = Impossible<String, Error>;
    type SerializeStructVariant = Impossible<String, Error>;

    fn serialize_str(self, v: &str) -> Result<String, Error> {
        Ok(v.to_owned())
    }

    fn serialize_char(self, v: char) -> Result<String, Error> {
        Ok(v.to_string())
    }

    /// A unit variant is its name everywhere else, so it is its name as a key too (the
    /// decoder reads it back from the string).
    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _variant_index: u32,
        variant: &'static str,
    ) -> Result<String, Error> {
        Ok(variant.to_owned())
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<String, Error> {
        value.serialize(self)
    }

    fn serialize_bool(self, v: bool) -> Result<String, Error> {
        Err(bad_key(format_args!("the boolean {v}")))
    }

    fn serialize_i8(self, v: i8) -> Result<String, Error> {
        self.serialize_i64(v.into())
    }

    fn serialize_i16(self, v: i16) -> Result<String, Error> {
        self.serialize_i64(v.into())
    }

    fn serialize_i32(self, v: i32) -> Result<String, Error> {
        self.serialize_i64(v.into())
    }

    fn serialize_i64(self, v: i64) -> Result<String, Error> {
        Err(bad_key(format_args!("the integer {v}")))
    }

    fn serialize_i128(self, v: i128) -> Result<String, Error> {
        Err(bad_key(format_args!("the integer {v}")))
    }

    fn serialize_u8(self, v: u8) -> Result<String, Error> {
        self.serialize_u64(v.into())
    }

    fn serialize_u16(self, v: u16) -> Result<String, Error> {
        self.serialize_u64(v.into())
    }

    fn serialize_u32(self, v: u32) -> Result<String, Error> {
        self.serialize_u64(v.into())
    }

    fn serialize_u64(self, v: u64) -> Result<String, Error> {
        Err(bad_key(format_args!("the integer {v}")))
    }

    fn serialize_u128(self, v: u128) -> Result<String, Error> {
        Err(bad_key(format_args!("the integer {v}")))
    }

    fn serialize_f32(self, v: f32) -> Result<String, Error> {
        self.serialize_f64(v.into())
    }

    fn serialize_f64(self, v: f64) -> Result<String, Error> {
        Err(bad_key(format_args!("the float {v}")))
    }

    fn serialize_bytes(self, _v: &[u8]) -> Result<String, Error> {
        Err(bad_key("a byte string"))
    }

    fn serialize_none(self) -> Result<String, Error> {
        Err(bad_key("null"))
    }

    fn serialize_some<T: Serialize + ?Sized>(self, _value: &T) -> Result<String, Error> {
        Err(bad_key("an option"))
    }

    fn serialize_unit(self) -> Result<String, Error> {
        Err(bad_key("null"))
    }

    fn serialize_unit_struct(self, name: &'static str) -> Result<String, Error> {
        Err(bad_key(format_args!("the unit struct {name}")))
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        _variant_index: u32,
        variant: &'static str,
        _value: &T,
    ) -> Result<String, Error> {
        Err(bad_key(format_args!("the enum variant {name}::{variant}")))
    }

    fn serialize_seq(self, _len: Option<usize>) -> Result<Self::SerializeSeq, Error> {
        Err(bad_key("a sequence"))
    }

    fn serialize_tuple(self, _len: usize) -> Result<Self::SerializeTuple, Error> {
        Err(bad_key("a tuple"))
    }

    fn serialize_tuple_struct(
        self,
        name: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleStruct, Error> {
        Err(bad_key(format_args!("the tuple struct {name}")))
    }

    fn serialize_tuple_variant(
        self,
        name: &'static str,
        _variant_index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleVariant, Error> {
        Err(bad_key(format_args!("the enum variant {name}::{variant}")))
    }

    fn serialize_map(self, _len: Option<usize>) -> Result<Self::SerializeMap, Error> {
        Err(bad_key("a map"))
    }

    fn serialize_struct(
        self,
        name: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStruct, Error> {
        Err(bad_key(format_args!("the struct {name}")))
    }

    fn serialize_struct_variant(
        self,
        name: &'static str,
        _variant_index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStructVariant, Error> {
        Err(bad_key(format_args!("the enum variant {name}::{variant}")))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::Serialize;
    use serde::ser::SerializeMap as _;

    use super::to_value;
    use crate::message::{Map, Message, MessageError, Value};

    fn map_of(value: Value) -> Map {
        match value {
            Value::Map(map) => map,
            other => panic!("expected a map, got {other:?}"),
        }
    }

    fn encode_error(result: Result<Message, MessageError>) -> String {
        match result {
            Err(MessageError::Encode(msg)) => msg,
            other => panic!("expected MessageError::Encode, got {other:?}"),
        }
    }

    #[test]
    fn scalars_become_the_matching_values() {
        assert_eq!(to_value(&true).unwrap(), Value::Bool(true));
        assert_eq!(to_value(&i8::MIN).unwrap(), Value::Int(-128));
        assert_eq!(to_value(&i64::MIN).unwrap(), Value::Int(i64::MIN));
        assert_eq!(to_value(&u8::MAX).unwrap(), Value::Int(255));
        assert_eq!(to_value(&u32::MAX).unwrap(), Value::Int(u32::MAX.into()));
        assert_eq!(to_value(&(i64::MAX as u64)).unwrap(), Value::Int(i64::MAX));
        assert_eq!(to_value(&-7_i128).unwrap(), Value::Int(-7));
        assert_eq!(to_value(&7_u128).unwrap(), Value::Int(7));
        assert_eq!(to_value(&1.5_f64).unwrap(), Value::Float(1.5));
        assert_eq!(
            to_value(&0.1_f32).unwrap(),
            Value::Float(f64::from(0.1_f32))
        );
        assert_eq!(to_value(&'é').unwrap(), Value::Str("é".into()));
        assert_eq!(to_value("text").unwrap(), Value::Str("text".into()));
        assert_eq!(
            to_value(serde_bytes::Bytes::new(b"\x00\xff")).unwrap(),
            Value::Bytes(vec![0, 255])
        );
        assert_eq!(to_value(&()).unwrap(), Value::Null);
        assert_eq!(to_value(&None::<i32>).unwrap(), Value::Null);
        assert_eq!(to_value(&Some(3)).unwrap(), Value::Int(3));
        // Without serde_bytes, a Vec<u8> is a list of integers, as serde describes it.
        assert_eq!(
            to_value(&vec![1_u8, 2]).unwrap(),
            Value::List(vec![Value::Int(1), Value::Int(2)])
        );
    }

    #[test]
    fn integers_outside_i64_are_errors() {
        for result in [
            to_value(&u64::MAX),
            to_value(&(i64::MAX as u64 + 1)),
            to_value(&u128::MAX),
            to_value(&i128::MIN),
            to_value(&(i128::from(i64::MAX) + 1)),
        ] {
            match result {
                Err(MessageError::Encode(msg)) => {
                    assert!(
                        msg.contains("does not fit in a signed 64-bit integer"),
                        "{msg}"
                    );
                }
                other => panic!("expected an encode error, got {other:?}"),
            }
        }
    }

    #[derive(Serialize)]
    struct Counter {
        n: u64,
    }

    #[test]
    fn u64_max_fails_to_encode() {
        let msg = encode_error(Message::encode(&Counter { n: u64::MAX }));
        assert!(msg.contains(&u64::MAX.to_string()), "{msg}");
        assert!(msg.starts_with("at `n`: "), "{msg}");
        assert!(Message::encode(&Counter { n: 5 }).is_ok());
    }

    #[test]
    fn encode_errors_name_where_they_happened() {
        #[derive(Serialize)]
        enum Reading {
            Tagged { value: u64 },
            Pair(u64, u64),
        }
        #[derive(Serialize)]
        struct Batch {
            counters: Vec<Counter>,
            readings: Vec<Reading>,
        }
        let batch = Batch {
            counters: vec![Counter { n: 1 }, Counter { n: u64::MAX }],
            readings: vec![],
        };
        let msg = encode_error(Message::encode(&batch));
        assert!(msg.starts_with("at `counters[1].n`: "), "{msg}");

        let batch = Batch {
            counters: vec![],
            readings: vec![Reading::Pair(0, 1), Reading::Tagged { value: u64::MAX }],
        };
        let msg = encode_error(Message::encode(&batch));
        assert!(msg.starts_with("at `readings[1].Tagged.value`: "), "{msg}");

        let batch = Batch {
            counters: vec![],
            readings: vec![Reading::Pair(0, u64::MAX)],
        };
        let msg = encode_error(Message::encode(&batch));
        assert!(msg.starts_with("at `readings[0].Pair[1]`: "), "{msg}");
    }

    #[test]
    fn integer_map_keys_are_rejected_not_stringified() {
        #[derive(Serialize)]
        struct Nested {
            table: BTreeMap<u8, String>,
        }

        let mut ints = BTreeMap::new();
        ints.insert(1_i32, 2_i32);
        let msg = encode_error(Message::encode(&ints));
        assert!(msg.contains("map keys must be strings"), "{msg}");

        let mut table = BTreeMap::new();
        table.insert(7_u8, "seven".to_owned());
        let msg = encode_error(Message::encode(&Nested { table }));
        assert!(
            msg.starts_with("at `table`: map keys must be strings"),
            "{msg}"
        );

        let mut bools = BTreeMap::new();
        bools.insert(true, 1);
        encode_error(Message::encode(&bools));
    }

    #[derive(Serialize, PartialEq, Eq, PartialOrd, Ord)]
    enum Color {
        Red,
        Blue,
    }

    #[test]
    fn string_like_map_keys_are_accepted() {
        let mut chars = BTreeMap::new();
        chars.insert('a', 1);
        let msg = Message::encode(&chars).unwrap();
        assert_eq!(msg.get("a"), Some(&Value::Int(1)));

        let mut colors = BTreeMap::new();
        colors.insert(Color::Red, 1);
        colors.insert(Color::Blue, 2);
        let msg = Message::encode(&colors).unwrap();
        assert_eq!(msg.get("Red"), Some(&Value::Int(1)));
        assert_eq!(msg.get("Blue"), Some(&Value::Int(2)));
    }

    #[test]
    fn top_level_non_maps_fail_to_encode() {
        encode_error(Message::encode(&5_i32));
        encode_error(Message::encode(&vec![1, 2]));
        encode_error(Message::encode("text"));
        encode_error(Message::encode(&()));
        encode_error(Message::encode(&Color::Red));
    }

    #[test]
    fn structs_are_maps_in_field_order_without_skipped_fields() {
        #[derive(Serialize)]
        struct Event {
            #[serde(rename = "type")]
            kind: &'static str,
            zeta: i32,
            alpha: Option<i32>,
            #[serde(skip_serializing_if = "Option::is_none")]
            absent: Option<i32>,
            #[serde(skip)]
            #[allow(dead_code)]
            never: i32,
        }
        let value = to_value(&Event {
            kind: "chat.message",
            zeta: 1,
            alpha: None,
            absent: None,
            never: 9,
        })
        .unwrap();
        let map = map_of(value);
        assert_eq!(map.keys().collect::<Vec<_>>(), ["type", "zeta", "alpha"]);
        assert_eq!(map.get("type"), Some(&Value::Str("chat.message".into())));
        assert_eq!(map.get("alpha"), Some(&Value::Null));
    }

    #[test]
    fn newtypes_and_tuples() {
        #[derive(Serialize)]
        struct Meters(f64);
        #[derive(Serialize)]
        struct Pair(i32, &'static str);
        #[derive(Serialize)]
        struct Marker;
        assert_eq!(to_value(&Meters(2.5)).unwrap(), Value::Float(2.5));
        assert_eq!(
            to_value(&Pair(1, "x")).unwrap(),
            Value::List(vec![Value::Int(1), Value::Str("x".into())])
        );
        assert_eq!(
            to_value(&(true, 'c')).unwrap(),
            Value::List(vec![Value::Bool(true), Value::Str("c".into())])
        );
        assert_eq!(to_value(&Marker).unwrap(), Value::Null);
    }

    #[test]
    fn enum_variants_take_the_externally_tagged_shape() {
        #[derive(Serialize)]
        enum Shape {
            Empty,
            Circle(f64),
            Point(i32, i32),
            Rect { w: u32, h: u32 },
        }
        assert_eq!(to_value(&Shape::Empty).unwrap(), Value::Str("Empty".into()));

        let circle = map_of(to_value(&Shape::Circle(1.5)).unwrap());
        assert_eq!(circle.len(), 1);
        assert_eq!(circle.get("Circle"), Some(&Value::Float(1.5)));

        let point = map_of(to_value(&Shape::Point(1, -2)).unwrap());
        assert_eq!(
            point.get("Point"),
            Some(&Value::List(vec![Value::Int(1), Value::Int(-2)]))
        );

        let rect = map_of(to_value(&Shape::Rect { w: 3, h: 4 }).unwrap());
        let fields = rect.get("Rect").and_then(Value::as_map).unwrap();
        assert_eq!(fields.keys().collect::<Vec<_>>(), ["w", "h"]);
        assert_eq!(fields.get("h"), Some(&Value::Int(4)));
    }

    /// Serializes as a map whose entries repeat keys.
    struct Repeating(Vec<(String, i64)>);

    impl Serialize for Repeating {
        fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            let mut map = serializer.serialize_map(None)?;
            for (key, value) in &self.0 {
                // Exercise both the key/value and the entry paths.
                if value % 2 == 0 {
                    map.serialize_entry(key, value)?;
                } else {
                    map.serialize_key(key)?;
                    map.serialize_value(value)?;
                }
            }
            map.end()
        }
    }

    #[test]
    fn a_repeated_map_key_replaces_the_earlier_value_in_place() {
        let small = Repeating(vec![("a".into(), 1), ("b".into(), 2), ("a".into(), 3)]);
        let map = map_of(to_value(&small).unwrap());
        assert_eq!(map.keys().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(map.get("a"), Some(&Value::Int(3)));

        // Past the size where duplicates are found through a hash index.
        let mut entries: Vec<(String, i64)> = (0..100).map(|i| (format!("k{i}"), i)).collect();
        entries.extend((0..100).rev().map(|i| (format!("k{i}"), -i)));
        let map = map_of(to_value(&Repeating(entries)).unwrap());
        assert_eq!(map.len(), 100);
        for (i, (key, value)) in map.iter().enumerate() {
            assert_eq!(key, format!("k{i}"));
            assert_eq!(value, &Value::Int(-i64::try_from(i).unwrap()));
        }
    }

    #[test]
    fn value_and_map_serialize_as_themselves() {
        let mut inner = Map::new();
        inner.insert("z", 1);
        inner.insert("a", Value::Bytes(vec![1, 2, 3]));
        let mut map = Map::new();
        map.insert("null", Value::Null);
        map.insert("bool", false);
        map.insert("int", i64::MIN);
        map.insert("nan", f64::from_bits(0x7ff8_0000_0000_beef));
        map.insert("negzero", -0.0_f64);
        map.insert("str", "s");
        map.insert("bytes", Value::Bytes(b"raw".to_vec()));
        map.insert("list", vec![Value::Int(1), Value::Str("two".into())]);
        map.insert("map", inner);
        let value = Value::Map(map.clone());

        let again = to_value(&value).unwrap();
        assert!(again.bit_eq(&value), "{again:?}");
        let again = map_of(to_value(&map).unwrap());
        assert!(again.bit_eq(&map));
        assert_eq!(
            again.keys().collect::<Vec<_>>(),
            map.keys().collect::<Vec<_>>()
        );

        let msg = Message::encode(&map).unwrap();
        assert!(msg.as_map().bit_eq(&map));
    }

    #[test]
    fn the_reserved_key_is_refused() {
        #[derive(Serialize)]
        struct Sneaky {
            __asgi_channel__: &'static str,
        }
        assert!(matches!(
            Message::encode(&Sneaky {
                __asgi_channel__: "x"
            }),
            Err(MessageError::ReservedKey { .. })
        ));
    }
}
