//! The limits every backend checks at send: how deeply a message nests, and how large it is as
//! msgpack (the form in which it crosses a network).
//!
//! The walk keeps its own stack instead of recursing, so a message of any depth is measured
//! without touching the thread's stack, and it stops as soon as a limit is passed.

use std::cell::Cell;

use smallvec::SmallVec;

use super::map::Key;
use super::{Map, MessageError, Value};
use crate::config::MAX_MESSAGE_DEPTH;

thread_local! {
    /// How many lists and maps the serde conversions on this thread are inside now.
    static NESTING: Cell<usize> = const { Cell::new(0) };
}

/// Held while a serde conversion (`Message::encode`, `Message::decode`) is inside one more
/// list or map. Such a conversion recurses once per level, so it refuses to go deeper than
/// [`MAX_MESSAGE_DEPTH`]: whatever the input, it stays within a thread's stack.
#[derive(Debug)]
pub(super) struct Nesting(());

impl Nesting {
    /// One level more, or `None` past [`MAX_MESSAGE_DEPTH`].
    pub(super) fn enter() -> Option<Nesting> {
        NESTING.with(|n| {
            let depth = n.get() + 1;
            (depth <= MAX_MESSAGE_DEPTH).then(|| {
                n.set(depth);
                Nesting(())
            })
        })
    }

    /// The error of a conversion that went too deep.
    pub(super) fn too_deep() -> String {
        format!("the value nests deeper than {MAX_MESSAGE_DEPTH} levels")
    }
}

impl Drop for Nesting {
    fn drop(&mut self) {
        NESTING.with(|n| n.set(n.get().saturating_sub(1)));
    }
}

/// The bytes msgpack uses for the header of a string of `len` bytes.
fn str_header(len: usize) -> usize {
    match len {
        0..=31 => 1,
        32..=0xff => 2,
        0x100..=0xffff => 3,
        _ => 5,
    }
}

/// The bytes msgpack uses for the header of a byte string of `len` bytes.
fn bin_header(len: usize) -> usize {
    match len {
        0..=0xff => 2,
        0x100..=0xffff => 3,
        _ => 5,
    }
}

/// The bytes msgpack uses for the header of an array or map of `len` items.
fn collection_header(len: usize) -> usize {
    match len {
        0..=15 => 1,
        16..=0xffff => 3,
        _ => 5,
    }
}

/// The bytes msgpack uses for an integer, in its smallest form.
fn int_len(n: i64) -> usize {
    match n {
        -32..=127 => 1,
        -128..=255 => 2,
        -32_768..=65_535 => 3,
        -2_147_483_648..=4_294_967_295 => 5,
        _ => 9,
    }
}

/// One collection being walked: its remaining items, and its depth.
enum Pending<'a> {
    List(std::slice::Iter<'a, Value>, usize),
    Map(std::slice::Iter<'a, (Key, Value)>, usize),
}

/// The walk's stack: kept inline up to this many levels, so checking a message of ordinary
/// depth allocates nothing (this check runs on every send).
type Stack<'a> = SmallVec<[Pending<'a>; 8]>;

/// Checks that `map` (a message, at depth 1) nests at most `max_depth` levels and takes at
/// most `max_bytes` as msgpack.
pub(super) fn check(map: &Map, max_depth: usize, max_bytes: usize) -> Result<(), MessageError> {
    if max_depth == 0 {
        return Err(MessageError::TooDeep { max_depth });
    }
    let mut bytes = collection_header(map.len());
    let mut stack = Stack::new();
    stack.push(Pending::Map(map.entries().iter(), 1));
    while let Some(top) = stack.last_mut() {
        let (value, depth) = match top {
            Pending::List(items, depth) => match items.next() {
                Some(value) => (value, *depth),
                None => {
                    stack.pop();
                    continue;
                }
            },
            Pending::Map(entries, depth) => match entries.next() {
                Some((key, value)) => {
                    bytes += str_header(key.len()) + key.len();
                    (value, *depth)
                }
                None => {
                    stack.pop();
                    continue;
                }
            },
        };
        bytes += match value {
            Value::Null | Value::Bool(_) => 1,
            Value::Int(n) => int_len(*n),
            Value::Float(_) => 9,
            Value::Str(s) => str_header(s.len()) + s.len(),
            Value::Bytes(b) => bin_header(b.len()) + b.len(),
            Value::List(items) => {
                if depth + 1 > max_depth {
                    return Err(MessageError::TooDeep { max_depth });
                }
                stack.push(Pending::List(items.iter(), depth + 1));
                collection_header(items.len())
            }
            Value::Map(map) => {
                if depth + 1 > max_depth {
                    return Err(MessageError::TooDeep { max_depth });
                }
                stack.push(Pending::Map(map.entries().iter(), depth + 1));
                collection_header(map.len())
            }
        };
        if bytes > max_bytes {
            return Err(MessageError::TooLarge { bytes, max_bytes });
        }
    }
    if bytes > max_bytes {
        return Err(MessageError::TooLarge { bytes, max_bytes });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Message;

    fn nested_lists(depth: usize) -> Value {
        (0..depth).fold(Value::Null, |v, _| Value::List(vec![v]))
    }

    #[test]
    fn depth_counts_the_message_map_as_level_one() {
        let flat = Message::new("x");
        assert!(flat.check_limits(1, 1 << 20).is_ok());
        let one = Message::new("x").with("v", nested_lists(1));
        assert_eq!(
            one.check_limits(1, 1 << 20),
            Err(MessageError::TooDeep { max_depth: 1 })
        );
        assert!(one.check_limits(2, 1 << 20).is_ok());
        let mut inner = Map::new();
        inner.insert("deep", nested_lists(3));
        let mapped = Message::new("x").with("m", Value::Map(inner));
        assert!(mapped.check_limits(5, 1 << 20).is_ok());
        assert!(mapped.check_limits(4, 1 << 20).is_err());
    }

    #[test]
    fn a_very_deep_message_is_measured_without_recursion() {
        let m = Message::new("x").with("v", nested_lists(50_000));
        assert_eq!(
            m.check_limits(128, usize::MAX),
            Err(MessageError::TooDeep { max_depth: 128 })
        );
        // Dropping it is the caller's business; leak it so this test needs no deep drop.
        std::mem::forget(m);
    }

    #[test]
    fn sizes_are_msgpack_sizes() {
        // {"type": "x"}: fixmap(1) + fixstr "type" (5) + fixstr "x" (2) = 8 bytes.
        let m = Message::new("x");
        assert!(m.check_limits(1, 8).is_ok());
        assert_eq!(
            m.check_limits(1, 7),
            Err(MessageError::TooLarge {
                bytes: 8,
                max_bytes: 7
            })
        );
        let big = Message::new("x").with("b", Value::Bytes(vec![0u8; 70_000]));
        // 8 + fixstr "b" (2) + bin32 header (5) + 70,000.
        assert!(big.check_limits(1, 8 + 2 + 5 + 70_000).is_ok());
        assert!(big.check_limits(1, 8 + 2 + 5 + 69_999).is_err());
        for (n, len) in [
            (0i64, 1usize),
            (-32, 1),
            (127, 1),
            (200, 2),
            (-100, 2),
            (60_000, 3),
            (1 << 20, 5),
            (1 << 40, 9),
        ] {
            let m = Message::new("x").with("n", n);
            assert!(m.check_limits(1, 8 + 2 + len).is_ok(), "{n}");
            assert!(m.check_limits(1, 8 + 2 + len - 1).is_err(), "{n}");
        }
    }
}
