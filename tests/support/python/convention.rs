//! The JSON convention between the tests and peer.py: plain JSON for null, bool, int, float,
//! str, list and map; bytes as `{"$bytes": "<standard base64>"}`; NaN and infinities as
//! `{"$float": "nan" | "inf" | "-inf"}`. Plus a small base64 codec (tests only).

#![allow(dead_code, unreachable_pub)]

use channel_layer::{Map, Message, Value};
use serde_json::json;

// ===== The JSON convention =====

/// A message in the JSON convention (keys in the message's order; note that `serde_json`
/// without `preserve_order` re-sorts them when the value is built).
pub fn message_to_json(message: &Message) -> serde_json::Value {
    map_to_json(message.as_map())
}

/// A message from the JSON convention.
///
/// # Panics
///
/// When `json` is not an object, or holds an integer outside `i64`.
pub fn json_to_message(json: &serde_json::Value) -> Message {
    match json_to_value(json) {
        Value::Map(map) => Message::from_map(map),
        _ => panic!("a message must be a JSON object, got {json}"),
    }
}

fn map_to_json(map: &Map) -> serde_json::Value {
    serde_json::Value::Object(
        map.iter()
            .map(|(k, v)| (k.to_owned(), value_to_json(v)))
            .collect(),
    )
}

/// One value in the JSON convention.
pub fn value_to_json(value: &Value) -> serde_json::Value {
    match value {
        Value::Null => serde_json::Value::Null,
        Value::Bool(b) => json!(b),
        Value::Int(n) => json!(n),
        Value::Float(f) => match serde_json::Number::from_f64(*f) {
            Some(n) => serde_json::Value::Number(n),
            None if f.is_nan() => json!({"$float": "nan"}),
            None if *f > 0.0 => json!({"$float": "inf"}),
            None => json!({"$float": "-inf"}),
        },
        Value::Str(s) => json!(s),
        Value::Bytes(b) => json!({"$bytes": base64_encode(b)}),
        Value::List(items) => serde_json::Value::Array(items.iter().map(value_to_json).collect()),
        Value::Map(map) => map_to_json(map),
        other => panic!("value_to_json: unsupported value {other:?}"),
    }
}

/// One value from the JSON convention.
///
/// # Panics
///
/// On an integer outside `i64`, or malformed `$bytes` / `$float`.
pub fn json_to_value(json: &serde_json::Value) -> Value {
    use serde_json::Value as J;
    match json {
        J::Null => Value::Null,
        J::Bool(b) => Value::Bool(*b),
        J::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::Int(i)
            } else if n.is_f64() {
                Value::Float(n.as_f64().expect("an f64 number"))
            } else {
                panic!("integer {n} does not fit in i64")
            }
        }
        J::String(s) => Value::Str(s.into()),
        J::Array(items) => Value::List(items.iter().map(json_to_value).collect()),
        J::Object(obj) => {
            if obj.len() == 1 {
                if let Some(J::String(b64)) = obj.get("$bytes") {
                    return Value::Bytes(
                        base64_decode(b64).unwrap_or_else(|e| panic!("bad $bytes {b64:?}: {e}")),
                    );
                }
                if let Some(J::String(f)) = obj.get("$float") {
                    return Value::Float(match f.as_str() {
                        "nan" => f64::NAN,
                        "inf" => f64::INFINITY,
                        "-inf" => f64::NEG_INFINITY,
                        other => panic!("bad $float {other:?}"),
                    });
                }
            }
            Value::Map(
                obj.iter()
                    .map(|(k, v)| (k.as_str(), json_to_value(v)))
                    .collect(),
            )
        }
    }
}

/// Whether two messages hold the same content, ignoring map key order (JSON objects come back
/// sorted) and comparing floats by bits (so NaN equals NaN).
pub fn same_content(a: &Message, b: &Message) -> bool {
    maps_match(a.as_map(), b.as_map())
}

fn maps_match(a: &Map, b: &Map) -> bool {
    a.len() == b.len()
        && a.iter()
            .all(|(k, va)| b.get(k).is_some_and(|vb| values_match(va, vb)))
}

fn values_match(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Float(x), Value::Float(y)) => x.to_bits() == y.to_bits(),
        (Value::List(x), Value::List(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| values_match(x, y))
        }
        (Value::Map(x), Value::Map(y)) => maps_match(x, y),
        _ => a == b,
    }
}

// ===== Base64 (RFC 4648 standard alphabet, padded) =====

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard, padded base64.
pub fn base64_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | (u32::from(b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(B64[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes standard, padded base64 (strict: no whitespace, no missing padding).
pub fn base64_decode(text: &str) -> Result<Vec<u8>, String> {
    let text = text.as_bytes();
    if text.len() % 4 != 0 {
        return Err(format!("length {} is not a multiple of 4", text.len()));
    }
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let quads = text.len() / 4;
    for (q, quad) in text.chunks(4).enumerate() {
        let pad = quad.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && q + 1 != quads) {
            return Err("misplaced padding".into());
        }
        let mut n = 0u32;
        for (i, &c) in quad[..4 - pad].iter().enumerate() {
            let digit = B64
                .iter()
                .position(|&d| d == c)
                .ok_or_else(|| format!("invalid character {:?}", char::from(c)))?;
            n |= (digit as u32) << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..4 - pad]);
    }
    Ok(out)
}
