//! Tests of the msgpack codec: Python's exact bytes, limits, and untrusted input.
use std::panic;

use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};

use super::*;

/// channels_redis's serializer test prefix (12 bytes) and message vector.
const TEST_PREFIX: &str = "51 0c bb 3f 51 bc e3 7c 44 fd 39 00";
const VECTOR: &str = "83 a1 61 c3 a1 62 c0 a1 63 81 a1 64 90";

fn hex(s: &str) -> Vec<u8> {
    s.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect()
}

fn to_hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn message(entries: Vec<(&str, Value)>) -> Message {
    Message::from_map(entries.into_iter().collect())
}

/// `{"a": True, "b": None, "c": {"d": []}}`
fn vector_message() -> Message {
    let inner: Map = [("d", Value::List(vec![]))].into_iter().collect();
    message(vec![
        ("a", Value::Bool(true)),
        ("b", Value::Null),
        ("c", Value::Map(inner)),
    ])
}

fn enc(message: &Message, asgi_channel: AsgiChannel<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    encode(message, asgi_channel, &mut out).unwrap();
    out
}

fn dec(bytes: &[u8]) -> Result<Decoded, DecodeError> {
    decode(bytes, &Limits::default())
}

fn error_kind(bytes: &[u8]) -> DecodeErrorKind {
    match dec(bytes) {
        Ok(decoded) => panic!("{} decoded to {decoded:?}", to_hex(bytes)),
        Err(e) => e.kind(),
    }
}

/// The encoding of `value` alone (as the value of key "n" in a one-entry map).
fn value_bytes(value: Value) -> Vec<u8> {
    let bytes = enc(&message(vec![("n", value.clone())]), AsgiChannel::None);
    assert_eq!(&bytes[..3], &hex("81 a1 6e")[..]);
    let back = dec(&bytes).unwrap();
    assert!(back.message.get("n").unwrap().bit_eq(&value), "{value:?}");
    bytes[3..].to_vec()
}

fn assert_bit_eq(a: &Message, b: &Message) {
    assert!(a.as_map().bit_eq(b.as_map()), "{a:?} != {b:?}");
}

// ===== Encoding =====

#[test]
fn spec_vector() {
    let bytes = enc(&vector_message(), AsgiChannel::None);
    assert_eq!(bytes, hex(VECTOR));
    let decoded = dec(&bytes).unwrap();
    assert_bit_eq(&decoded.message, &vector_message());
    assert_eq!(decoded.asgi_channels, None);
}

#[test]
fn encode_appends() {
    let mut out = vec![1, 2, 3];
    encode(&vector_message(), AsgiChannel::None, &mut out).unwrap();
    assert_eq!(out[..3], [1, 2, 3]);
    assert_eq!(out[3..], hex(VECTOR)[..]);
}

/// msgpack-python's choices: non-negative integers as fixint or uint8/16/32/64, negative
/// ones as negative fixint or int8/16/32/64, always the smallest.
#[test]
fn integer_boundaries() {
    let cases: [(i64, &str); 22] = [
        (0, "00"),
        (1, "01"),
        (127, "7f"),
        (128, "cc 80"),
        (255, "cc ff"),
        (256, "cd 01 00"),
        (65535, "cd ff ff"),
        (65536, "ce 00 01 00 00"),
        (u32::MAX.into(), "ce ff ff ff ff"),
        (1 << 32, "cf 00 00 00 01 00 00 00 00"),
        (i64::MAX, "cf 7f ff ff ff ff ff ff ff"),
        (-1, "ff"),
        (-32, "e0"),
        (-33, "d0 df"),
        (-128, "d0 80"),
        (-129, "d1 ff 7f"),
        (-32768, "d1 80 00"),
        (-32769, "d2 ff ff 7f ff"),
        (i32::MIN.into(), "d2 80 00 00 00"),
        (i64::from(i32::MIN) - 1, "d3 ff ff ff ff 7f ff ff ff"),
        (i64::MIN + 1, "d3 80 00 00 00 00 00 00 01"),
        (i64::MIN, "d3 80 00 00 00 00 00 00 00"),
    ];
    for (n, expected) in cases {
        assert_eq!(to_hex(&value_bytes(Value::Int(n))), expected, "{n}");
    }
}

#[test]
fn floats_are_always_float64() {
    assert_eq!(
        to_hex(&value_bytes(Value::Float(1.5))),
        "cb 3f f8 00 00 00 00 00 00"
    );
    assert_eq!(
        to_hex(&value_bytes(Value::Float(-0.0))),
        "cb 80 00 00 00 00 00 00 00"
    );
    // 1.0 is not shortened to an integer or a float32.
    assert_eq!(
        to_hex(&value_bytes(Value::Float(1.0))),
        "cb 3f f0 00 00 00 00 00 00"
    );
}

#[test]
fn other_scalars() {
    assert_eq!(value_bytes(Value::Null), [0xc0]);
    assert_eq!(value_bytes(Value::Bool(false)), [0xc2]);
    assert_eq!(value_bytes(Value::Bool(true)), [0xc3]);
}

#[test]
fn str_length_boundaries() {
    let cases: [(usize, &str); 7] = [
        (0, "a0"),
        (31, "bf"),
        (32, "d9 20"),
        (255, "d9 ff"),
        (256, "da 01 00"),
        (65535, "da ff ff"),
        (65536, "db 00 01 00 00"),
    ];
    for (len, header) in cases {
        let bytes = value_bytes(Value::Str("x".repeat(len).into()));
        let header = hex(header);
        assert_eq!(bytes[..header.len()], header[..], "{len}");
        assert_eq!(bytes.len(), header.len() + len);
    }
    // Lengths count bytes, not characters.
    assert_eq!(
        to_hex(&value_bytes(Value::Str("\u{e9}".into()))),
        "a2 c3 a9"
    );
}

#[test]
fn bin_length_boundaries() {
    let cases: [(usize, &str); 6] = [
        (0, "c4 00"),
        (31, "c4 1f"),
        (255, "c4 ff"),
        (256, "c5 01 00"),
        (65535, "c5 ff ff"),
        (65536, "c6 00 01 00 00"),
    ];
    for (len, header) in cases {
        let bytes = value_bytes(Value::Bytes(vec![7; len]));
        let header = hex(header);
        assert_eq!(bytes[..header.len()], header[..], "{len}");
        assert_eq!(bytes.len(), header.len() + len);
    }
}

#[test]
fn array_and_map_length_boundaries() {
    for (len, header) in [
        (0, "90"),
        (15, "9f"),
        (16, "dc 00 10"),
        (65535, "dc ff ff"),
        (65536, "dd 00 01 00 00"),
    ] {
        let bytes = value_bytes(Value::List(vec![Value::Null; len]));
        assert_eq!(bytes[..header.len() / 3 + 1], hex(header)[..], "{len}");
    }
    for (len, header) in [
        (0, "80"),
        (15, "8f"),
        (16, "de 00 10"),
        (65535, "de ff ff"),
        (65536, "df 00 01 00 00"),
    ] {
        let entries = (0..len)
            .map(|i| (CompactString::from(format!("k{i}")), Value::Int(i as i64)))
            .collect();
        let map = Map::from_unique(entries);
        let bytes = enc(&Message::from_map(map.clone()), AsgiChannel::None);
        assert_eq!(bytes[..header.len() / 3 + 1], hex(header)[..], "{len}");
        assert!(dec(&bytes).unwrap().message.as_map().bit_eq(&map));
    }
}

#[test]
fn every_kind_round_trips_bit_for_bit_in_order() {
    let nested: Map = [
        ("z", Value::Int(-7)),
        ("a", Value::Bytes(b"\x00\xff".to_vec())),
        ("m", Value::List(vec![Value::Null, Value::Float(f64::NAN)])),
    ]
    .into_iter()
    .collect();
    let original = message(vec![
        ("type", Value::Str("chat.message".into())),
        ("zero", Value::Int(0)),
        ("null", Value::Null),
        ("yes", Value::Bool(true)),
        ("no", Value::Bool(false)),
        ("min", Value::Int(i64::MIN)),
        ("max", Value::Int(i64::MAX)),
        ("nan", Value::Float(f64::from_bits(0x7ff8_0000_0000_0001))),
        (
            "neg_nan",
            Value::Float(f64::from_bits(0xfff0_0000_dead_beef)),
        ),
        ("neg_zero", Value::Float(-0.0)),
        ("inf", Value::Float(f64::NEG_INFINITY)),
        ("tiny", Value::Float(f64::from_bits(1))),
        ("text", Value::Str("h\u{e9}llo \u{1d11e} \0".into())),
        ("empty", Value::Str(crate::Str::new())),
        ("bytes", Value::Bytes((0..=255).collect())),
        (
            "list",
            Value::List(vec![Value::Int(1), Value::Str("a".into())]),
        ),
        ("map", Value::Map(nested)),
        ("empty_map", Value::Map(Map::new())),
    ]);
    let bytes = enc(&original, AsgiChannel::None);
    let decoded = dec(&bytes).unwrap();
    assert_bit_eq(&decoded.message, &original);
    assert!(decoded.message.keys_in_order(&original));
    // Decoding then encoding gives the same bytes back.
    assert_eq!(enc(&decoded.message, AsgiChannel::None), bytes);
}

trait KeysInOrder {
    fn keys_in_order(&self, other: &Message) -> bool;
}

impl KeysInOrder for Message {
    fn keys_in_order(&self, other: &Message) -> bool {
        self.as_map().keys().eq(other.as_map().keys())
    }
}

// ===== __asgi_channel__ =====

#[test]
fn asgi_channel_one_is_a_string_placed_last() {
    let msg = message(vec![("type", "x".into())]);
    let name = "specific.abc!def";
    let bytes = enc(&msg, AsgiChannel::One(name));
    let mut expected = hex("82 a4");
    expected.extend_from_slice(b"type");
    expected.extend_from_slice(&hex("a1 78 b0"));
    expected.extend_from_slice(b"__asgi_channel__");
    expected.push(0xb0);
    expected.extend_from_slice(name.as_bytes());
    assert_eq!(to_hex(&bytes), to_hex(&expected));

    let decoded = dec(&bytes).unwrap();
    assert_eq!(decoded.asgi_channels, Some(vec![name.to_owned()]));
    assert_bit_eq(&decoded.message, &msg);
    assert!(decoded.message.get(RESERVED_KEY).is_none());
}

#[test]
fn asgi_channel_many_is_a_list() {
    let msg = message(vec![("type", "x".into()), ("n", 1.into())]);
    let names = ["specific.abc!one", "specific.abc!two"];
    let bytes = enc(&msg, AsgiChannel::Many(&names));
    assert_eq!(bytes[0], 0x83);
    let tail = hex("92 b0");
    let at = bytes.len() - 2 * 17 - 1;
    assert_eq!(bytes[at..at + 2], tail[..]);
    assert_eq!(&bytes[at - 16..at], RESERVED_KEY.as_bytes());

    let decoded = dec(&bytes).unwrap();
    assert_eq!(
        decoded.asgi_channels,
        Some(names.iter().map(|n| n.to_string()).collect())
    );
    assert_bit_eq(&decoded.message, &msg);

    // An empty list stays an (empty) list.
    let bytes = enc(&msg, AsgiChannel::Many(&[]));
    assert_eq!(dec(&bytes).unwrap().asgi_channels, Some(vec![]));
}

/// Python assigns into a copy of the dict: an existing key keeps its place.
#[test]
fn asgi_channel_replaces_an_existing_key_in_place() {
    let msg = message(vec![(RESERVED_KEY, 1.into()), ("type", "x".into())]);
    let bytes = enc(&msg, AsgiChannel::One("c"));
    let mut expected = hex("82 b0");
    expected.extend_from_slice(RESERVED_KEY.as_bytes());
    expected.extend_from_slice(&hex("a1 63 a4"));
    expected.extend_from_slice(b"type");
    expected.extend_from_slice(&hex("a1 78"));
    assert_eq!(to_hex(&bytes), to_hex(&expected));
    let decoded = dec(&bytes).unwrap();
    assert_eq!(decoded.asgi_channels, Some(vec!["c".to_owned()]));
    assert_eq!(
        decoded.message.as_map().keys().collect::<Vec<_>>(),
        ["type"]
    );
}

#[test]
fn malformed_asgi_channel_is_an_error() {
    let key = to_hex(RESERVED_KEY.as_bytes());
    for value in ["01", "c0", "91 01", "92 a1 61 c0", "81 a1 61 a1 62"] {
        let bytes = hex(&format!("81 b0 {key} {value}"));
        assert_eq!(
            error_kind(&bytes),
            DecodeErrorKind::BadAsgiChannel,
            "{value}"
        );
    }
    // Only the top level is special.
    let bytes = hex(&format!("81 a1 61 81 b0 {key} 01"));
    let decoded = dec(&bytes).unwrap();
    assert_eq!(decoded.asgi_channels, None);
    let inner = decoded.message.get("a").unwrap().as_map().unwrap();
    assert_eq!(inner.get(RESERVED_KEY), Some(&Value::Int(1)));
}

// ===== Encoding errors =====

fn nested_lists(levels: usize) -> Value {
    let mut value = Value::List(vec![]);
    for _ in 1..levels {
        value = Value::List(vec![value]);
    }
    value
}

#[test]
fn encode_refuses_what_receivers_would_drop() {
    // Map (1) + 127 lists = 128 levels: fine.
    let ok = message(vec![("a", nested_lists(127))]);
    let bytes = enc(&ok, AsgiChannel::None);
    assert_bit_eq(&dec(&bytes).unwrap().message, &ok);

    let deep = message(vec![("a", nested_lists(128))]);
    let mut out = vec![9];
    assert_eq!(
        encode(&deep, AsgiChannel::None, &mut out),
        Err(EncodeError::TooDeep { max_depth: 128 })
    );
    assert_eq!(out, [9], "out is left as it was");
}

/// The deepest message any layer may be configured to accept is packed and unpacked on a
/// 2 MiB thread without overflowing its stack.
#[test]
fn the_deepest_accepted_message_packs_and_unpacks_on_a_2_mib_stack() {
    let depth = crate::config::MAX_MESSAGE_DEPTH;
    std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(move || {
            let codec = Codec {
                limits: Limits {
                    max_depth: depth,
                    max_bytes: DEFAULT_MAX_BYTES,
                },
                ..Codec::default()
            };
            let m = message(vec![("a", nested_lists(depth - 1))]);
            let member = codec.pack(&m, AsgiChannel::None).unwrap();
            let back = codec.unpack(&member, 60.0).unwrap();
            assert_bit_eq(&back.message, &m);
        })
        .unwrap()
        .join()
        .expect("no stack overflow");
}

// ===== Decoding =====

#[test]
fn decodes_non_canonical_forms() {
    let cases: [(&str, Value); 10] = [
        ("cc 05", Value::Int(5)),
        ("d0 05", Value::Int(5)),
        ("d3 00 00 00 00 00 00 00 05", Value::Int(5)),
        ("cf 7f ff ff ff ff ff ff ff", Value::Int(i64::MAX)),
        ("cd ff ff", Value::Int(65535)),
        ("ca 3f c0 00 00", Value::Float(1.5)),
        ("d9 01 61", Value::Str("a".into())),
        ("c5 00 01 00", Value::Bytes(vec![0])),
        ("dc 00 01 c0", Value::List(vec![Value::Null])),
        ("de 00 00", Value::Map(Map::new())),
    ];
    for (bytes, expected) in cases {
        let decoded = dec(&hex(&format!("81 a1 6e {bytes}"))).unwrap();
        assert!(
            decoded.message.get("n").unwrap().bit_eq(&expected),
            "{bytes}"
        );
    }
    // A float32 NaN stays a NaN.
    let decoded = dec(&hex("81 a1 6e ca 7f c0 00 00")).unwrap();
    assert!(decoded.message.get("n").unwrap().as_f64().unwrap().is_nan());
    // Map16 and map32 at the top level.
    assert!(dec(&hex("de 00 01 a1 61 c0")).is_ok());
    assert!(dec(&hex("df 00 00 00 01 a1 61 c0")).is_ok());
    assert!(dec(&hex("80")).unwrap().message.is_empty());
}

#[test]
fn repeated_keys_keep_first_place_and_last_value() {
    let decoded = dec(&hex("83 a1 61 01 a1 62 02 a1 61 03")).unwrap();
    let map = decoded.message.as_map();
    assert_eq!(map.keys().collect::<Vec<_>>(), ["a", "b"]);
    assert_eq!(map.get("a"), Some(&Value::Int(3)));

    // Past the scanning threshold, through the index.
    let mut bytes = hex("de 00 28");
    for round in 0..2 {
        for i in 0..20u8 {
            bytes.extend_from_slice(&[0xa2, b'k', b'a' + i, round]);
        }
    }
    let decoded = dec(&bytes).unwrap();
    let map = decoded.message.as_map();
    assert_eq!(map.len(), 20);
    for (i, (key, value)) in map.iter().enumerate() {
        assert_eq!(key.as_bytes(), [b'k', b'a' + i as u8]);
        assert_eq!(value, &Value::Int(1));
    }
}

/// A rich message to cut and mutate.
fn sample_bytes() -> Vec<u8> {
    let inner: Map = [
        ("x", Value::Float(2.5)),
        ("y", Value::Bytes(vec![1, 2, 3])),
        ("z", Value::List(vec![Value::Int(-200), Value::Int(70000)])),
    ]
    .into_iter()
    .collect();
    let msg = message(vec![
        ("type", "chat.message".into()),
        ("text", "h\u{e9}llo".into()),
        ("n", Value::Int(i64::MIN)),
        ("ok", Value::Bool(true)),
        ("none", Value::Null),
        ("inner", Value::Map(inner)),
        ("long", Value::Str("s".repeat(300).into())),
    ]);
    enc(&msg, AsgiChannel::Many(&["specific.a!b", "specific.a!c"]))
}

#[test]
fn every_truncation_fails() {
    let bytes = sample_bytes();
    assert!(dec(&bytes).is_ok());
    for n in 0..bytes.len() {
        let kind = error_kind(&bytes[..n]);
        assert_eq!(kind, DecodeErrorKind::Truncated, "cut at {n}");
    }
}

#[test]
fn trailing_bytes_fail() {
    let mut bytes = hex(VECTOR);
    bytes.push(0xc0);
    assert_eq!(error_kind(&bytes), DecodeErrorKind::TrailingBytes);
    let err = dec(&bytes).unwrap_err();
    assert_eq!(err.offset(), 13);
    let mut bytes = hex(VECTOR);
    bytes.extend_from_slice(&hex(VECTOR));
    assert_eq!(error_kind(&bytes), DecodeErrorKind::TrailingBytes);
}

/// Declared lengths are checked against the input before anything is allocated.
#[test]
fn huge_declared_lengths_fail_fast() {
    for header in [
        "dd ff ff ff ff",
        "db ff ff ff ff",
        "c6 ff ff ff ff",
        "df ff ff ff ff",
        "dc ff ff",
        "da ff ff",
        "c5 ff ff",
        "de ff ff",
    ] {
        // Only a map may stand at the top level; a map header there claims too much.
        let expected = if header.starts_with("df") || header.starts_with("de") {
            DecodeErrorKind::Truncated
        } else {
            DecodeErrorKind::NotAMap
        };
        assert_eq!(error_kind(&hex(header)), expected, "top level {header}");
        let nested = hex(&format!("81 a1 61 {header} c0 c0 c0"));
        assert_eq!(
            error_kind(&nested),
            DecodeErrorKind::Truncated,
            "nested {header}"
        );
    }
    // Exactly as many items as declared is fine; one more declared is not.
    assert!(dec(&hex("81 a1 61 dd 00 00 00 03 c0 c0 c0")).is_ok());
    assert_eq!(
        error_kind(&hex("81 a1 61 dd 00 00 00 04 c0 c0 c0")),
        DecodeErrorKind::Truncated
    );
    // Nested claims that each fit the remaining input, but together do not.
    let mut bytes = hex("81 a1 61");
    for _ in 0..60 {
        bytes.extend_from_slice(&hex("dc ff ff"));
    }
    bytes.extend(std::iter::repeat_n(0xc0, 70_000));
    let started = std::time::Instant::now();
    assert_eq!(error_kind(&bytes), DecodeErrorKind::Truncated);
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

#[test]
fn depth_is_bounded() {
    // The brief's bomb: 10 000 nested one-item lists.
    let mut bytes = hex("81 a1 61");
    bytes.extend(std::iter::repeat_n(0x91, 10_000));
    bytes.push(0x90);
    assert_eq!(error_kind(&bytes), DecodeErrorKind::TooDeep);
    // The same as maps.
    let mut bytes = Vec::new();
    for _ in 0..10_000 {
        bytes.extend_from_slice(&hex("81 a1 61"));
    }
    bytes.push(0xc0);
    assert_eq!(error_kind(&bytes), DecodeErrorKind::TooDeep);
    // Map + 126 lists + an empty list = 128 levels: fine; one more is not.
    let at = |lists: usize| {
        let mut bytes = hex("81 a1 61");
        bytes.extend(std::iter::repeat_n(0x91, lists));
        bytes.push(0x90);
        bytes
    };
    assert!(dec(&at(126)).is_ok());
    assert_eq!(error_kind(&at(127)), DecodeErrorKind::TooDeep);
    // A lower limit.
    let limits = Limits {
        max_depth: 2,
        ..Limits::default()
    };
    assert!(decode(&at(0), &limits).is_ok());
    assert_eq!(
        decode(&at(1), &limits).unwrap_err().kind(),
        DecodeErrorKind::TooDeep
    );
}

#[test]
fn input_size_is_bounded() {
    let limits = Limits {
        max_bytes: 12,
        ..Limits::default()
    };
    let bytes = hex(VECTOR);
    assert_eq!(
        decode(&bytes, &limits).unwrap_err().kind(),
        DecodeErrorKind::TooLarge
    );
    let limits = Limits {
        max_bytes: 13,
        ..Limits::default()
    };
    assert!(decode(&bytes, &limits).is_ok());
}

#[test]
fn top_level_must_be_a_map() {
    for bytes in [
        "90",
        "c0",
        "c3",
        "01",
        "a1 61",
        "c4 01 61",
        "cb 00 00 00 00 00 00 00 00",
    ] {
        assert_eq!(error_kind(&hex(bytes)), DecodeErrorKind::NotAMap, "{bytes}");
    }
    assert_eq!(error_kind(&[]), DecodeErrorKind::Truncated);
}

#[test]
fn map_keys_must_be_strings() {
    for bytes in [
        "81 01 c0",
        "81 c0 c0",
        "81 c4 01 61 c0",
        "81 90 c0",
        "81 a1 61 81 01 c0",
        "82 a1 61 c0 cb 00 00 00 00 00 00 00 00 c0",
    ] {
        assert_eq!(
            error_kind(&hex(bytes)),
            DecodeErrorKind::NonStrKey,
            "{bytes}"
        );
    }
}

#[test]
fn strings_must_be_utf8() {
    for bytes in [
        "81 a1 ff c0",
        "81 a1 61 a1 ff",
        "81 a1 61 a2 c3 28",
        "81 a1 61 91 a3 ed a0 80",
    ] {
        assert_eq!(
            error_kind(&hex(bytes)),
            DecodeErrorKind::InvalidUtf8,
            "{bytes}"
        );
    }
    // The offset points at the bad byte.
    assert_eq!(dec(&hex("81 a1 61 a2 61 ff")).unwrap_err().offset(), 5);
    // Bytes are bytes: no UTF-8 required.
    assert!(dec(&hex("81 a1 61 c4 01 ff")).is_ok());
}

#[test]
fn integers_must_fit_i64() {
    for bytes in ["cf ff ff ff ff ff ff ff ff", "cf 80 00 00 00 00 00 00 00"] {
        let bytes = hex(&format!("81 a1 61 {bytes}"));
        assert_eq!(error_kind(&bytes), DecodeErrorKind::IntOutOfRange);
        assert_eq!(dec(&bytes).unwrap_err().offset(), 3);
    }
}

#[test]
fn extension_types_and_reserved_marker_fail() {
    for value in [
        "c1",
        "d4 01 00",
        "d5 01 00 00",
        "d6 ff 00 00 00 00",
        "d7 01 00 00 00 00 00 00 00 00",
        "d8 01 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00",
        "c7 01 05 00",
        "c8 00 01 05 00",
        "c9 00 00 00 01 05 00",
    ] {
        let bytes = hex(&format!("81 a1 61 {value}"));
        assert_eq!(error_kind(&bytes), DecodeErrorKind::Unsupported, "{value}");
    }
    assert_eq!(error_kind(&hex("c1")), DecodeErrorKind::NotAMap);
}

#[test]
fn error_display_names_the_problem() {
    let err = dec(&hex("81 a1 61 c1")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "undecodable message: unsupported msgpack type at byte 3"
    );
    assert!(!err.is_expired());
}

// ===== Codec =====

#[test]
fn unpack_strips_the_prefix() {
    let codec = Codec::default();
    let mut member = hex(TEST_PREFIX);
    member.extend_from_slice(&hex(VECTOR));
    let decoded = codec.unpack(&member, 60.0).unwrap();
    assert_bit_eq(&decoded.message, &vector_message());

    // An 8-byte prefix, as in channels_redis's tests.
    let codec = Codec {
        random_prefix_length: 8,
        ..Codec::default()
    };
    let member = hex(&format!("51 0c bb 3f 51 bc e3 7c {VECTOR}"));
    assert_bit_eq(
        &codec.unpack(&member, 60.0).unwrap().message,
        &vector_message(),
    );

    // No prefix.
    let codec = Codec {
        random_prefix_length: 0,
        ..Codec::default()
    };
    assert_bit_eq(
        &codec.unpack(&hex(VECTOR), 60.0).unwrap().message,
        &vector_message(),
    );
}

#[test]
fn unpack_too_short_fails() {
    let codec = Codec::default();
    let err = codec.unpack(&[1, 2, 3], 60.0).unwrap_err();
    assert_eq!(err.kind(), DecodeErrorKind::MissingPrefix);
    let err = codec.unpack(&hex(TEST_PREFIX), 60.0).unwrap_err();
    assert_eq!(err.kind(), DecodeErrorKind::Truncated);
}

#[test]
fn pack_adds_a_fresh_random_prefix() {
    let codec = Codec::default();
    let a = codec.pack(&vector_message(), AsgiChannel::None).unwrap();
    let b = codec.pack(&vector_message(), AsgiChannel::None).unwrap();
    assert_eq!(a.len(), 12 + 13);
    assert_eq!(a[12..], hex(VECTOR)[..]);
    assert_eq!(b[12..], hex(VECTOR)[..]);
    assert_ne!(a[..12], b[..12], "96 random bits should differ");
    assert_bit_eq(&codec.unpack(&a, 60.0).unwrap().message, &vector_message());

    let codec = Codec {
        random_prefix_length: 0,
        ..Codec::default()
    };
    assert_eq!(
        codec.pack(&vector_message(), AsgiChannel::None).unwrap(),
        hex(VECTOR)
    );

    let codec = Codec::default();
    let member = codec
        .pack(&vector_message(), AsgiChannel::One("specific.x!y"))
        .unwrap();
    let decoded = codec.unpack(&member, 60.0).unwrap();
    assert_eq!(decoded.asgi_channels, Some(vec!["specific.x!y".to_owned()]));
}

#[test]
fn pack_honours_the_depth_limit() {
    let codec = Codec {
        limits: Limits {
            max_depth: 2,
            ..Limits::default()
        },
        ..Codec::default()
    };
    let msg = message(vec![("a", nested_lists(1))]);
    assert!(codec.pack(&msg, AsgiChannel::None).is_ok());
    let msg = message(vec![("a", nested_lists(2))]);
    assert_eq!(
        codec.pack(&msg, AsgiChannel::None),
        Err(EncodeError::TooDeep { max_depth: 2 })
    );
}

#[test]
fn pack_honours_the_size_limit() {
    let codec = Codec {
        limits: Limits {
            max_bytes: 13,
            ..Limits::default()
        },
        ..Codec::default()
    };
    assert!(codec.pack(&vector_message(), AsgiChannel::None).is_ok());
    let msg = vector_message().with("e", 1);
    assert_eq!(
        codec.pack(&msg, AsgiChannel::None),
        Err(EncodeError::TooLarge {
            len: 16,
            max_bytes: 13
        })
    );
    // The default: msgpack-python's 100 MiB.
    let big = message(vec![("b", Value::Bytes(vec![0; DEFAULT_MAX_BYTES]))]);
    let mut out = vec![1];
    assert!(matches!(
        encode(&big, AsgiChannel::None, &mut out),
        Err(EncodeError::TooLarge { .. })
    ));
    assert_eq!(out, [1]);
}

#[test]
fn fernet_ttl_is_expiry_plus_ten_seconds() {
    assert_eq!(fernet_ttl(60.0), Duration::from_secs(70));
    assert_eq!(fernet_ttl(0.5), Duration::from_secs_f64(10.5));
    assert_eq!(fernet_ttl(-100.0), Duration::ZERO);
    assert_eq!(fernet_ttl(f64::NAN), Duration::ZERO);
    assert_eq!(fernet_ttl(f64::INFINITY), Duration::MAX);
    assert_eq!(fernet_ttl(1e300), Duration::MAX);
}

#[cfg(feature = "redis-encryption")]
#[test]
fn encrypted_round_trip() {
    let codec = Codec {
        random_prefix_length: 4,
        crypto: Some(Crypto::new(&["a-test-key"]).unwrap()),
        ..Codec::default()
    };
    let member = codec.pack(&vector_message(), AsgiChannel::None).unwrap();
    assert_ne!(member[4..], hex(VECTOR)[..]);
    assert!(member[4..].starts_with(b"gAAAAA"));
    let decoded = codec.unpack(&member, 60.0).unwrap();
    assert_bit_eq(&decoded.message, &vector_message());

    // Another key cannot read it, and a plain member is not a token.
    let other = Codec {
        random_prefix_length: 4,
        crypto: Some(Crypto::new(&["another-key"]).unwrap()),
        ..Codec::default()
    };
    let err = other.unpack(&member, 60.0).unwrap_err();
    assert_eq!(err.kind(), DecodeErrorKind::Undecryptable);
    assert!(!err.is_expired());
    let mut plain = vec![0; 4];
    plain.extend_from_slice(&hex(VECTOR));
    assert_eq!(
        codec.unpack(&plain, 60.0).unwrap_err().kind(),
        DecodeErrorKind::Undecryptable
    );
}

// ===== Fuzzing =====

const FUZZ_SEED: u64 = 0xc0de_c5ee_d001;

fn random_string(rng: &mut StdRng) -> String {
    const CHARS: [char; 8] = ['a', 'z', '_', '.', '!', '\u{e9}', '\u{20ac}', '\u{1d11e}'];
    let len = if rng.random_ratio(1, 20) {
        rng.random_range(0..300)
    } else {
        rng.random_range(0..12)
    };
    (0..len)
        .map(|_| CHARS[rng.random_range(0..CHARS.len())])
        .collect()
}

fn random_value(rng: &mut StdRng, depth: usize) -> Value {
    let kinds = if depth >= 4 { 6 } else { 8 };
    match rng.random_range(0..kinds) {
        0 => Value::Null,
        1 => Value::Bool(rng.random()),
        2 => Value::Int(match rng.random_range(0..4) {
            0 => rng.random_range(-40..300),
            1 => rng.random::<i16>().into(),
            2 => rng.random::<i32>().into(),
            _ => rng.random(),
        }),
        3 => Value::Float(f64::from_bits(rng.random())),
        4 => Value::Str(random_string(rng).into()),
        5 => {
            let len = rng.random_range(0..40);
            Value::Bytes((0..len).map(|_| rng.random()).collect())
        }
        6 => {
            let len = rng.random_range(0..5);
            Value::List((0..len).map(|_| random_value(rng, depth + 1)).collect())
        }
        _ => Value::Map(random_map(rng, depth + 1)),
    }
}

fn random_map(rng: &mut StdRng, depth: usize) -> Map {
    let mut map = Map::new();
    for _ in 0..rng.random_range(0..6) {
        let key = match rng.random_range(0..3) {
            0 => "type".to_owned(),
            1 => "text".to_owned(),
            _ => random_string(rng),
        };
        map.insert(key, random_value(rng, depth));
    }
    map
}

fn random_asgi_channels(rng: &mut StdRng) -> Vec<String> {
    (0..rng.random_range(0..3))
        .map(|i| format!("specific.{:x}!{i}", rng.random::<u32>()))
        .collect()
}

/// Decodes `input`, which must not panic; a success must survive re-encoding.
fn check_decode(input: &[u8], what: &str) {
    let limits = Limits::default();
    let result = panic::catch_unwind(|| decode(input, &limits));
    let Ok(result) = result else {
        panic!(
            "decode panicked on {what} (seed {FUZZ_SEED:#x}): {}",
            to_hex(input)
        );
    };
    let Ok(decoded) = result else { return };
    let names: Option<Vec<&str>> = decoded
        .asgi_channels
        .as_ref()
        .map(|names| names.iter().map(String::as_str).collect());
    let asgi = match &names {
        None => AsgiChannel::None,
        Some(names) => AsgiChannel::Many(names),
    };
    let mut again = Vec::new();
    encode(&decoded.message, asgi, &mut again).unwrap_or_else(|e| {
        panic!(
            "re-encoding failed ({e}) on {what} (seed {FUZZ_SEED:#x}): {}",
            to_hex(input)
        )
    });
    let round = dec(&again).unwrap_or_else(|e| {
        panic!(
            "re-decoding failed ({e}) on {what} (seed {FUZZ_SEED:#x}): {} -> {}",
            to_hex(input),
            to_hex(&again)
        )
    });
    assert!(
        round.message.as_map().bit_eq(decoded.message.as_map())
            && round.asgi_channels == decoded.asgi_channels,
        "round trip changed {what} (seed {FUZZ_SEED:#x}): {}",
        to_hex(input)
    );
}

#[test]
fn fuzz_random_bytes() {
    let mut rng = StdRng::seed_from_u64(FUZZ_SEED);
    let mut decoded = 0;
    for i in 0..20_000 {
        let len = rng.random_range(0..64);
        let mut input: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        // Half start with a map header, so that decoding gets past the first byte.
        if i % 2 == 0 && !input.is_empty() {
            input[0] = 0x80 | rng.random_range(0..4);
        }
        check_decode(&input, &format!("random input {i}"));
        decoded += usize::from(dec(&input).is_ok());
    }
    assert!(decoded > 0, "no random input decoded at all");
}

#[test]
fn fuzz_mutated_messages() {
    let mut rng = StdRng::seed_from_u64(FUZZ_SEED);
    let mut decoded = 0;
    for i in 0..20_000 {
        let msg = Message::from_map(random_map(&mut rng, 1));
        let names = random_asgi_channels(&mut rng);
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let asgi = match (rng.random_range(0..3), names.first()) {
            (0, Some(name)) => AsgiChannel::One(name),
            (1, _) => AsgiChannel::Many(&names),
            _ => AsgiChannel::None,
        };
        let mut input = enc(&msg, asgi);
        // The unmutated encoding must decode to what was encoded.
        let back = dec(&input).unwrap_or_else(|e| panic!("{e}: {}", to_hex(&input)));
        assert!(back.message.as_map().bit_eq(msg.as_map()), "iteration {i}");

        for _ in 0..rng.random_range(1..=4) {
            let at = rng.random_range(0..=input.len());
            match rng.random_range(0..4) {
                0 if at < input.len() => input[at] ^= 1 << rng.random_range(0..8),
                1 => input.insert(at, rng.random()),
                2 if at < input.len() => {
                    input.remove(at);
                }
                3 => input.truncate(at),
                _ => {
                    if at < input.len() {
                        input[at] = rng.random();
                    }
                }
            }
        }
        check_decode(&input, &format!("mutation {i}"));
        decoded += usize::from(dec(&input).is_ok());
    }
    assert!(decoded > 0, "no mutation decoded at all");
}
