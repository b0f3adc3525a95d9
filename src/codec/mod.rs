//! The stored form of a message: msgpack as Python's channels_redis writes it ([contract §3.6](crate::contract)).
//!
//! A sorted-set member is `random_prefix_length` random bytes (so that equal messages stay
//! distinct members), then the message as msgpack, encrypted first when keys are configured.
//! [`encode`] writes exactly the bytes `msgpack.packb(message)` gives with msgpack-python 1.x
//! defaults; [`decode`] reads what any peer wrote, treating it as untrusted: it never panics,
//! never allocates ahead of the input, and bounds nesting.

// The NATS backend uses the msgpack part only.
#![cfg_attr(not(feature = "redis"), allow(dead_code))]

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::convert::Infallible;
use std::fmt;
use std::time::Duration;

use compact_str::CompactString;
use rand::RngCore as _;
use rmp::Marker;
use rmp::decode::bytes::BytesReadError;
use rmp::decode::{Bytes, NumValueReadError, ValueReadError};
use rmp::encode::{ByteBuf, ValueWriteError};

use crate::message::{Entries, Map, Message, RESERVED_KEY, Value};
#[cfg(feature = "redis-encryption")]
use crate::redis::crypto::{Crypto, DecryptError};

/// Nesting depth [`Limits::default`] allows; the message map itself is level 1. The layer's
/// own default, so what a peer may send is what this crate sends.
pub(crate) const DEFAULT_MAX_DEPTH: usize = crate::config::DEFAULT_MAX_MESSAGE_DEPTH;

/// Input size [`Limits::default`] allows: msgpack-python's default buffer limit, 100 MiB.
pub(crate) const DEFAULT_MAX_BYTES: usize = crate::config::DEFAULT_MAX_MESSAGE_BYTES;

/// Random bytes channels_redis puts before each stored message by default.
pub(crate) const DEFAULT_RANDOM_PREFIX_LENGTH: usize = 12;

/// Extra seconds channels_redis adds to the expiry to get the Fernet time to live.
const TTL_MARGIN_SECS: f64 = 10.0;

/// Collections decoded ahead of their content are given room for at most this many items; a
/// declared length is only a claim until the items have been read.
const MAX_PREALLOC: usize = 1024;

/// Maps with more declared entries than this find repeated keys through a hash index.
const INDEX_FROM: usize = 16;

// ===== AsgiChannel =====

/// The `__asgi_channel__` entry to add to a message when storing it ([contract §3.3](crate::contract), §3.7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AsgiChannel<'a> {
    /// None: a send to a normal channel.
    None,
    /// A send to a process-specific channel: its full name, stored as a string.
    One(&'a str),
    /// A `group_send` delivery: the full names of every member sharing the Redis key, stored
    /// as a list (even of one, and even for normal channels).
    Many(&'a [&'a str]),
}

// ===== Errors =====

/// A message cannot be stored: it is beyond what msgpack or the receivers accept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum EncodeError {
    /// A string, byte string, list or map is longer than msgpack can say (2^32 - 1).
    #[error("a value of length {len} is too long for msgpack")]
    LengthOverflow {
        /// The length found.
        len: usize,
    },
    /// The message nests deeper than receivers accept.
    #[error("the message nests deeper than {max_depth} levels")]
    TooDeep {
        /// The depth allowed.
        max_depth: usize,
    },
    /// The encoded message is larger than receivers accept.
    #[error("the message encodes to {len} bytes, more than the {max_bytes} receivers accept")]
    TooLarge {
        /// The encoded size.
        len: usize,
        /// The size allowed.
        max_bytes: usize,
    },
}

/// What is wrong with stored bytes that did not decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
// Used by the Redis layer; the decryption kinds only with feature redis-encryption.
#[cfg_attr(any(not(test), not(feature = "redis-encryption")), allow(dead_code))]
pub(crate) enum DecodeErrorKind {
    /// The input exceeds [`Limits::max_bytes`].
    TooLarge,
    /// The input ends inside a value, or declares more content than it holds.
    Truncated,
    /// Bytes follow the message.
    TrailingBytes,
    /// Collections nest deeper than [`Limits::max_depth`].
    TooDeep,
    /// The top-level value is not a map.
    NotAMap,
    /// A map key is not a string.
    NonStrKey,
    /// A string is not valid UTF-8.
    InvalidUtf8,
    /// An integer does not fit in `i64`.
    IntOutOfRange,
    /// An extension type or the reserved `0xc1` marker.
    Unsupported,
    /// `__asgi_channel__` is neither a string nor a list of strings.
    BadAsgiChannel,
    /// The member is shorter than the random prefix.
    MissingPrefix,
    /// Encryption is configured and the body is not a token any key authenticates.
    Undecryptable,
    /// The body's encryption timestamp is older than the expiry allows.
    Expired,
}

impl DecodeErrorKind {
    /// A short description.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            DecodeErrorKind::TooLarge => "input too large",
            DecodeErrorKind::Truncated => "truncated input",
            DecodeErrorKind::TrailingBytes => "trailing bytes",
            DecodeErrorKind::TooDeep => "nested too deep",
            DecodeErrorKind::NotAMap => "not a map",
            DecodeErrorKind::NonStrKey => "map key is not a string",
            DecodeErrorKind::InvalidUtf8 => "invalid UTF-8 in a string",
            DecodeErrorKind::IntOutOfRange => "integer out of i64 range",
            DecodeErrorKind::Unsupported => "unsupported msgpack type",
            DecodeErrorKind::BadAsgiChannel => "malformed __asgi_channel__",
            DecodeErrorKind::MissingPrefix => "shorter than the random prefix",
            DecodeErrorKind::Undecryptable => "cannot decrypt",
            DecodeErrorKind::Expired => "encrypted message expired",
        }
    }
}

impl fmt::Display for DecodeErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Stored bytes that are not a message this layer can deliver. Counted (as undecodable, or as
/// expired), never shown to a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("undecodable message: {kind} at byte {offset}")]
pub(crate) struct DecodeError {
    kind: DecodeErrorKind,
    offset: usize,
}

impl DecodeError {
    fn new(kind: DecodeErrorKind, offset: usize) -> Self {
        DecodeError { kind, offset }
    }

    /// What is wrong.
    #[cfg(test)]
    pub(crate) fn kind(&self) -> DecodeErrorKind {
        self.kind
    }

    /// Where in the decoded bytes (after the prefix, and after decryption) it was found.
    #[cfg(test)]
    pub(crate) fn offset(&self) -> usize {
        self.offset
    }

    /// Whether the message was well formed but expired (count it as expired, not undecodable).
    pub(crate) fn is_expired(&self) -> bool {
        self.kind == DecodeErrorKind::Expired
    }
}

// ===== Encoding =====

/// Appends the msgpack of `message` to `out`, with `__asgi_channel__` set as `asgi_channel`
/// says, byte for byte as channels_redis (msgpack-python 1.x, default options) writes it.
///
/// Entries keep their order; `__asgi_channel__` comes last, as Python's assignment into a copy
/// of the dict puts it (or in place, should the message already hold that key). Integers take
/// the smallest form, non-negative ones as unsigned; floats are always float64; strings are
/// `str`, byte strings `bin`.
///
/// # Errors
///
/// [`EncodeError`] when a length exceeds msgpack's 32 bits, or the message is beyond what
/// receivers with [`Limits::default`] accept (they would drop it): deeper than
/// [`DEFAULT_MAX_DEPTH`] or larger than [`DEFAULT_MAX_BYTES`]. `out` is then left as it was.
#[cfg(test)]
pub(crate) fn encode(
    message: &Message,
    asgi_channel: AsgiChannel<'_>,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    encode_limited(message, asgi_channel, &Limits::default(), out)
}

/// [`encode`] within the limits given.
fn encode_limited(
    message: &Message,
    asgi_channel: AsgiChannel<'_>,
    limits: &Limits,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    let start = out.len();
    let mut encoder = Encoder {
        buf: ByteBuf::from_vec(std::mem::take(out)),
        max_depth: limits.max_depth,
    };
    let mut result = encoder.map(message.as_map(), asgi_channel, 1);
    *out = encoder.buf.into_vec();
    let len = out.len() - start;
    if result.is_ok() && len > limits.max_bytes {
        result = Err(EncodeError::TooLarge {
            len,
            max_bytes: limits.max_bytes,
        });
    }
    if result.is_err() {
        out.truncate(start);
    }
    result
}

/// Writes values into a buffer (writing into memory cannot fail: rmp's error type for
/// [`ByteBuf`] is [`Infallible`]).
struct Encoder {
    buf: ByteBuf,
    max_depth: usize,
}

/// The value of an rmp write into a [`ByteBuf`], which cannot fail.
fn written<T>(result: Result<T, ValueWriteError<Infallible>>) -> T {
    match result {
        Ok(value) => value,
        Err(
            ValueWriteError::InvalidMarkerWrite(never) | ValueWriteError::InvalidDataWrite(never),
        ) => match never {},
    }
}

/// A length as msgpack's 32 bits.
fn len32(len: usize) -> Result<u32, EncodeError> {
    u32::try_from(len).map_err(|_| EncodeError::LengthOverflow { len })
}

impl Encoder {
    /// Fails if a collection at `depth` is too deep.
    fn enter(&self, depth: usize) -> Result<(), EncodeError> {
        if depth > self.max_depth {
            Err(EncodeError::TooDeep {
                max_depth: self.max_depth,
            })
        } else {
            Ok(())
        }
    }

    /// Writes `map`, at `depth`, with `asgi_channel` set in it.
    fn map(
        &mut self,
        map: &Map,
        asgi_channel: AsgiChannel<'_>,
        depth: usize,
    ) -> Result<(), EncodeError> {
        self.enter(depth)?;
        let set = asgi_channel != AsgiChannel::None;
        let in_place = set && map.contains_key(RESERVED_KEY);
        let appended = set && !in_place;
        written(rmp::encode::write_map_len(
            &mut self.buf,
            len32(map.len() + usize::from(appended))?,
        ));
        for (key, value) in map.iter() {
            self.str(key)?;
            if in_place && key == RESERVED_KEY {
                self.asgi_channel(asgi_channel, depth + 1)?;
            } else {
                self.value(value, depth + 1)?;
            }
        }
        if appended {
            self.str(RESERVED_KEY)?;
            self.asgi_channel(asgi_channel, depth + 1)?;
        }
        Ok(())
    }

    /// Writes the value of `__asgi_channel__` (a list sits at `depth`).
    fn asgi_channel(
        &mut self,
        asgi_channel: AsgiChannel<'_>,
        depth: usize,
    ) -> Result<(), EncodeError> {
        match asgi_channel {
            // Never asked for (`map` writes the key only when there is a value); a nil keeps
            // the map well formed all the same.
            AsgiChannel::None => {
                let Ok(()) = rmp::encode::write_nil(&mut self.buf);
            }
            AsgiChannel::One(name) => self.str(name)?,
            AsgiChannel::Many(names) => {
                self.enter(depth)?;
                written(rmp::encode::write_array_len(
                    &mut self.buf,
                    len32(names.len())?,
                ));
                for name in names {
                    self.str(name)?;
                }
            }
        }
        Ok(())
    }

    fn str(&mut self, s: &str) -> Result<(), EncodeError> {
        len32(s.len())?;
        written(rmp::encode::write_str(&mut self.buf, s));
        Ok(())
    }

    fn value(&mut self, value: &Value, depth: usize) -> Result<(), EncodeError> {
        match value {
            Value::Null => {
                let Ok(()) = rmp::encode::write_nil(&mut self.buf);
            }
            Value::Bool(b) => {
                let Ok(()) = rmp::encode::write_bool(&mut self.buf, *b);
            }
            // Same choice of format as msgpack-python: fixint, then uint8..64 for
            // non-negative values and int8..64 for negative ones.
            Value::Int(n) => {
                written(rmp::encode::write_sint(&mut self.buf, *n));
            }
            Value::Float(x) => written(rmp::encode::write_f64(&mut self.buf, *x)),
            Value::Str(s) => self.str(s)?,
            Value::Bytes(b) => {
                len32(b.len())?;
                written(rmp::encode::write_bin(&mut self.buf, b));
            }
            Value::List(items) => {
                self.enter(depth)?;
                written(rmp::encode::write_array_len(
                    &mut self.buf,
                    len32(items.len())?,
                ));
                for item in items {
                    self.value(item, depth + 1)?;
                }
            }
            Value::Map(map) => self.map(map, AsgiChannel::None, depth)?,
        }
        Ok(())
    }
}

// ===== Decoding =====

/// Bounds on what [`decode`] accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Deepest nesting of lists and maps, the message map itself being level 1 (default 128).
    /// Decoding recurses once per level, so keep this modest.
    pub(crate) max_depth: usize,
    /// Largest input, in bytes (default 100 MiB, msgpack-python's limit).
    pub(crate) max_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_depth: DEFAULT_MAX_DEPTH,
            max_bytes: DEFAULT_MAX_BYTES,
        }
    }
}

/// A decoded message and the channels it is for.
#[derive(Clone, Debug)]
pub(crate) struct Decoded {
    /// The message, without `__asgi_channel__`.
    pub(crate) message: Message,
    /// The full channel names `__asgi_channel__` held: one for a string, each for a list;
    /// `None` when the key was absent (the message is for the channel it was read from).
    pub(crate) asgi_channels: Option<Vec<String>>,
}

/// Decodes untrusted msgpack `bytes` into a message, taking `__asgi_channel__` out of it.
///
/// Accepts whatever msgpack-python reads with channels_redis's options that a [`Message`] can
/// hold: the top level must be a map, all map keys strings (valid UTF-8, like every string),
/// integers within `i64` (any width on the wire), float32 (widened) or float64, no extension
/// types. A repeated key keeps its first position and its last value, as a Python dict does.
/// The whole input must be one value.
///
/// # Errors
///
/// [`DecodeError`], naming the first problem found.
pub(crate) fn decode(bytes: &[u8], limits: &Limits) -> Result<Decoded, DecodeError> {
    if bytes.len() > limits.max_bytes {
        return Err(DecodeError::new(DecodeErrorKind::TooLarge, 0));
    }
    let mut decoder = Decoder {
        rd: Bytes::new(bytes),
        len: bytes.len(),
        max_depth: limits.max_depth,
    };
    match decoder.peek()? {
        Marker::FixMap(_) | Marker::Map16 | Marker::Map32 => {}
        _ => return Err(decoder.error(DecodeErrorKind::NotAMap)),
    }
    let mut map = decoder.map(1)?;
    if !decoder.rest().is_empty() {
        return Err(decoder.error(DecodeErrorKind::TrailingBytes));
    }
    let asgi_channels = match map.remove(RESERVED_KEY) {
        None => None,
        Some(Value::Str(name)) => Some(vec![name.into_string()]),
        Some(Value::List(names)) => Some(
            names
                .into_iter()
                .map(|name| match name {
                    Value::Str(name) => Ok(name.into_string()),
                    _ => Err(DecodeError::new(DecodeErrorKind::BadAsgiChannel, 0)),
                })
                .collect::<Result<_, _>>()?,
        ),
        Some(_) => return Err(DecodeError::new(DecodeErrorKind::BadAsgiChannel, 0)),
    };
    Ok(Decoded {
        message: Message::from_map(map),
        asgi_channels,
    })
}

/// Reads values with rmp's primitives, checking every declared length against the input left.
struct Decoder<'a> {
    rd: Bytes<'a>,
    len: usize,
    max_depth: usize,
}

impl<'a> Decoder<'a> {
    fn rest(&self) -> &'a [u8] {
        self.rd.remaining_slice()
    }

    fn error(&self, kind: DecodeErrorKind) -> DecodeError {
        DecodeError::new(kind, self.len - self.rest().len())
    }

    /// An rmp read error: the input ended (we only call a reader after checking its marker).
    fn read_error(&self, error: ValueReadError<BytesReadError>) -> DecodeError {
        match error {
            ValueReadError::InvalidMarkerRead(_) | ValueReadError::InvalidDataRead(_) => {
                self.error(DecodeErrorKind::Truncated)
            }
            ValueReadError::TypeMismatch(_) => self.error(DecodeErrorKind::Unsupported),
        }
    }

    /// The next marker, not consumed.
    fn peek(&self) -> Result<Marker, DecodeError> {
        match self.rest().first() {
            Some(&byte) => Ok(Marker::from_u8(byte)),
            None => Err(self.error(DecodeErrorKind::Truncated)),
        }
    }

    /// The next `len` bytes, if there are that many.
    fn take(&mut self, len: u32) -> Result<&'a [u8], DecodeError> {
        let rest = self.rest();
        match usize::try_from(len) {
            Ok(len) if len <= rest.len() => {
                let (head, tail) = rest.split_at(len);
                self.rd = Bytes::new(tail);
                Ok(head)
            }
            _ => Err(self.error(DecodeErrorKind::Truncated)),
        }
    }

    /// Fails if a collection at `depth` is too deep.
    fn enter(&self, depth: usize) -> Result<(), DecodeError> {
        if depth > self.max_depth {
            Err(self.error(DecodeErrorKind::TooDeep))
        } else {
            Ok(())
        }
    }

    /// Fails unless `count` items of at least `min_size` bytes each can follow.
    fn check_count(&self, count: u32, min_size: usize) -> Result<usize, DecodeError> {
        match usize::try_from(count) {
            Ok(count) if count <= self.rest().len() / min_size => Ok(count),
            _ => Err(self.error(DecodeErrorKind::Truncated)),
        }
    }

    fn str(&mut self) -> Result<&'a str, DecodeError> {
        let len = rmp::decode::read_str_len(&mut self.rd).map_err(|e| self.read_error(e))?;
        let at = self.len - self.rest().len();
        let bytes = self.take(len)?;
        std::str::from_utf8(bytes)
            .map_err(|e| DecodeError::new(DecodeErrorKind::InvalidUtf8, at + e.valid_up_to()))
    }

    /// A value whose collections, if it is one, sit at `depth`.
    fn value(&mut self, depth: usize) -> Result<Value, DecodeError> {
        let value = match self.peek()? {
            Marker::Null => {
                rmp::decode::read_nil(&mut self.rd).map_err(|e| self.read_error(e))?;
                Value::Null
            }
            Marker::True | Marker::False => {
                Value::Bool(rmp::decode::read_bool(&mut self.rd).map_err(|e| self.read_error(e))?)
            }
            Marker::FixPos(_)
            | Marker::FixNeg(_)
            | Marker::U8
            | Marker::U16
            | Marker::U32
            | Marker::U64
            | Marker::I8
            | Marker::I16
            | Marker::I32
            | Marker::I64 => {
                let at = self.len - self.rest().len();
                match rmp::decode::read_int::<i64, _>(&mut self.rd) {
                    Ok(n) => Value::Int(n),
                    Err(NumValueReadError::OutOfRange) => {
                        return Err(DecodeError::new(DecodeErrorKind::IntOutOfRange, at));
                    }
                    Err(_) => return Err(self.error(DecodeErrorKind::Truncated)),
                }
            }
            Marker::F32 => Value::Float(f64::from(
                rmp::decode::read_f32(&mut self.rd).map_err(|e| self.read_error(e))?,
            )),
            Marker::F64 => {
                Value::Float(rmp::decode::read_f64(&mut self.rd).map_err(|e| self.read_error(e))?)
            }
            Marker::FixStr(_) | Marker::Str8 | Marker::Str16 | Marker::Str32 => {
                Value::Str(self.str()?.into())
            }
            Marker::Bin8 | Marker::Bin16 | Marker::Bin32 => {
                let len =
                    rmp::decode::read_bin_len(&mut self.rd).map_err(|e| self.read_error(e))?;
                Value::Bytes(self.take(len)?.to_vec())
            }
            Marker::FixArray(_) | Marker::Array16 | Marker::Array32 => {
                self.enter(depth)?;
                let count =
                    rmp::decode::read_array_len(&mut self.rd).map_err(|e| self.read_error(e))?;
                let count = self.check_count(count, 1)?;
                let mut items = Vec::with_capacity(count.min(MAX_PREALLOC));
                for _ in 0..count {
                    items.push(self.value(depth + 1)?);
                }
                Value::List(items)
            }
            Marker::FixMap(_) | Marker::Map16 | Marker::Map32 => Value::Map(self.map(depth)?),
            Marker::Reserved
            | Marker::FixExt1
            | Marker::FixExt2
            | Marker::FixExt4
            | Marker::FixExt8
            | Marker::FixExt16
            | Marker::Ext8
            | Marker::Ext16
            | Marker::Ext32 => return Err(self.error(DecodeErrorKind::Unsupported)),
        };
        Ok(value)
    }

    /// A map at `depth` (the next marker is a map marker).
    fn map(&mut self, depth: usize) -> Result<Map, DecodeError> {
        self.enter(depth)?;
        let count = rmp::decode::read_map_len(&mut self.rd).map_err(|e| self.read_error(e))?;
        let count = self.check_count(count, 2)?;
        let mut entries = Entries::with_capacity(count.min(MAX_PREALLOC));
        // Small maps look for a repeated key by scanning; larger ones through a hash index
        // (keyed by slices of the input, randomly seeded), so a peer cannot make this quadratic.
        let mut index: Option<HashMap<&'a str, usize>> =
            (count > INDEX_FROM).then(|| HashMap::with_capacity(count.min(MAX_PREALLOC)));
        for _ in 0..count {
            match self.peek()? {
                Marker::FixStr(_) | Marker::Str8 | Marker::Str16 | Marker::Str32 => {}
                _ => return Err(self.error(DecodeErrorKind::NonStrKey)),
            }
            let key = self.str()?;
            let value = self.value(depth + 1)?;
            let existing = match &mut index {
                Some(index) => match index.entry(key) {
                    Entry::Occupied(entry) => Some(*entry.get()),
                    Entry::Vacant(entry) => {
                        entry.insert(entries.len());
                        None
                    }
                },
                None => entries.iter().position(|(k, _)| k.as_str() == key),
            };
            match existing {
                Some(i) => entries.make_mut()[i].1 = value,
                None => entries.push((CompactString::from(key), value)),
            }
        }
        Ok(Map::from_unique(entries))
    }
}

// ===== Codec =====

/// The stored member format of one layer: random prefix, optional encryption, msgpack.
#[derive(Clone, Debug)]
pub(crate) struct Codec {
    /// Random bytes before each message (default 12); every peer must use the same number.
    pub(crate) random_prefix_length: usize,
    /// What decoding accepts, and so what encoding refuses to produce.
    pub(crate) limits: Limits,
    /// Encryption keys (`symmetric_encryption_keys`), if any.
    #[cfg(feature = "redis-encryption")]
    pub(crate) crypto: Option<Crypto>,
}

impl Default for Codec {
    fn default() -> Self {
        Codec {
            random_prefix_length: DEFAULT_RANDOM_PREFIX_LENGTH,
            limits: Limits::default(),
            #[cfg(feature = "redis-encryption")]
            crypto: None,
        }
    }
}

impl Codec {
    /// The sorted-set member for `message`: fresh random prefix, then the (encrypted) msgpack.
    ///
    /// # Errors
    ///
    /// See [`encode`]; the limits are [`Codec::limits`] (the size limit applies to the msgpack,
    /// before encryption).
    pub(crate) fn pack(
        &self,
        message: &Message,
        asgi_channel: AsgiChannel<'_>,
    ) -> Result<Vec<u8>, EncodeError> {
        // Room for a small message up front: growing from the prefix's length would
        // reallocate four times on the way to a typical message's size.
        let mut member = Vec::with_capacity(self.random_prefix_length + 256);
        member.resize(self.random_prefix_length, 0);
        rand::rng().fill_bytes(&mut member);
        #[cfg(feature = "redis-encryption")]
        if let Some(crypto) = &self.crypto {
            let mut plain = Vec::new();
            encode_limited(message, asgi_channel, &self.limits, &mut plain)?;
            member.extend_from_slice(&crypto.encrypt(&plain));
            return Ok(member);
        }
        encode_limited(message, asgi_channel, &self.limits, &mut member)?;
        Ok(member)
    }

    /// Whether members are encrypted (`symmetric_encryption_keys`).
    pub(crate) fn encrypts(&self) -> bool {
        #[cfg(feature = "redis-encryption")]
        return self.crypto.is_some();
        #[cfg(not(feature = "redis-encryption"))]
        false
    }

    /// A fresh random member prefix.
    pub(crate) fn random_prefix(&self) -> Vec<u8> {
        let mut prefix = vec![0; self.random_prefix_length];
        rand::rng().fill_bytes(&mut prefix);
        prefix
    }

    /// The message's entry count and the msgpack of its entries without the map's header, for
    /// a server-side script to add `__asgi_channel__` to (never encrypted: the caller checks
    /// [`Codec::encrypts`]).
    ///
    /// # Errors
    ///
    /// As [`Codec::pack`].
    pub(crate) fn entries(&self, message: &Message) -> Result<(usize, Vec<u8>), EncodeError> {
        let mut body = Vec::new();
        encode_limited(message, AsgiChannel::None, &self.limits, &mut body)?;
        // The header is a fixmap (one byte), map16 (three) or map32 (five).
        let header = match body.first() {
            Some(0xde) => 3,
            Some(0xdf) => 5,
            _ => 1,
        };
        body.drain(..header.min(body.len()));
        Ok((message.len(), body))
    }

    /// Reads a sorted-set member: strips the prefix, decrypts if keys are configured (refusing
    /// tokens older than `expiry_secs` + 10 s, as channels_redis does), and decodes.
    ///
    /// # Errors
    ///
    /// [`DecodeError`]; [`DecodeError::is_expired`] tells an expired encrypted message apart.
    pub(crate) fn unpack(&self, member: &[u8], expiry_secs: f64) -> Result<Decoded, DecodeError> {
        let body = member
            .get(self.random_prefix_length..)
            .ok_or(DecodeError::new(DecodeErrorKind::MissingPrefix, 0))?;
        #[cfg(feature = "redis-encryption")]
        if let Some(crypto) = &self.crypto {
            let plain = crypto.decrypt(body, fernet_ttl(expiry_secs)).map_err(|e| {
                let kind = match e {
                    DecryptError::Expired => DecodeErrorKind::Expired,
                    _ => DecodeErrorKind::Undecryptable,
                };
                DecodeError::new(kind, 0)
            })?;
            return decode(&plain, &self.limits);
        }
        #[cfg(not(feature = "redis-encryption"))]
        let _ = expiry_secs;
        decode(body, &self.limits)
    }
}

/// The Fernet time to live for a layer expiry, saturating instead of panicking on odd values.
#[cfg_attr(not(feature = "redis-encryption"), allow(dead_code))]
fn fernet_ttl(expiry_secs: f64) -> Duration {
    // `max` also maps NaN to 0.
    Duration::try_from_secs_f64((expiry_secs + TTL_MARGIN_SECS).max(0.0)).unwrap_or(Duration::MAX)
}

#[cfg(test)]
mod tests;
