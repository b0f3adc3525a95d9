//! Redis Cluster's view of keys: the slot a key lives in, and the masters that serve slots.

/// How many slots a Redis Cluster divides its keys into.
pub const CLUSTER_SLOTS: u16 = 16384;

/// The cluster slot of `key`, as Redis computes it (`CLUSTER KEYSLOT`): CRC-16 (XMODEM) of the
/// key, or of its hash tag (the text between the first `{` and the next `}`, when not empty),
/// modulo 16384.
///
/// Every key the layer writes for one channel, group or process lives in one slot, so on a
/// cluster no command of the layer touches two slots.
///
/// ```
/// use channel_layer::redis::key_slot;
///
/// assert_eq!(key_slot(b"foo"), 12182);
/// // A hash tag decides the slot: these two keys are in the same one.
/// assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"{user1000}.followers"));
/// ```
pub fn key_slot(key: &[u8]) -> u16 {
    let hashed = hash_tag(key).unwrap_or(key);
    crc16::State::<crc16::XMODEM>::calculate(hashed) % CLUSTER_SLOTS
}

/// The non-empty text between the first `{` and the `}` after it.
fn hash_tag(key: &[u8]) -> Option<&[u8]> {
    let open = key.iter().position(|&b| b == b'{')?;
    let rest = &key[open + 1..];
    let close = rest.iter().position(|&b| b == b'}')?;
    (close > 0).then(|| &rest[..close])
}

/// One range of slots and the master that serves it, from `CLUSTER SLOTS`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SlotRange {
    pub(crate) first: u16,
    pub(crate) last: u16,
    pub(crate) master: (String, u16),
}

/// Reads a `CLUSTER SLOTS` reply: `[[first, last, [host, port, id, ...], replicas...], ...]`.
/// Entries that do not have that shape are skipped (a newer server may add fields).
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) fn slot_ranges(reply: &::redis::Value) -> Vec<SlotRange> {
    use ::redis::Value;
    let text = |v: &Value| match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    let int = |v: &Value| match v {
        Value::Int(n) => u16::try_from(*n).ok(),
        _ => None,
    };
    let Value::Array(entries) = reply else {
        return Vec::new();
    };
    entries
        .iter()
        .filter_map(|entry| {
            let Value::Array(parts) = entry else {
                return None;
            };
            let first = int(parts.first()?)?;
            let last = int(parts.get(1)?)?;
            let Value::Array(node) = parts.get(2)? else {
                return None;
            };
            let host = text(node.first()?)?;
            let port = int(node.get(1)?)?;
            (first <= last && last < CLUSTER_SLOTS).then_some(SlotRange {
                first,
                last,
                master: (host, port),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_the_values_redis_documents() {
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"bar"), 5061);
        assert_eq!(key_slot(b"{foo}bar"), key_slot(b"foo"));
        // An empty tag, or a brace never closed, hashes the whole key.
        assert_eq!(
            key_slot(b"{}foo"),
            crc16::State::<crc16::XMODEM>::calculate(b"{}foo") % 16384
        );
        assert_eq!(
            key_slot(b"{foo"),
            crc16::State::<crc16::XMODEM>::calculate(b"{foo") % 16384
        );
        // Only the first tag counts.
        assert_eq!(key_slot(b"{a}{b}"), key_slot(b"a"));
    }

    #[test]
    fn cluster_slots_replies_are_read_and_odd_entries_skipped() {
        use ::redis::Value;
        let node = |host: &str, port: i64| {
            Value::Array(vec![
                Value::BulkString(host.as_bytes().to_vec()),
                Value::Int(port),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                node("127.0.0.1", 7000),
                node("127.0.0.1", 7003),
            ]),
            Value::Array(vec![Value::Int(5461), Value::Int(99999), node("h", 1)]),
            Value::Int(3),
        ]);
        assert_eq!(
            slot_ranges(&reply),
            [SlotRange {
                first: 0,
                last: 5460,
                master: ("127.0.0.1".into(), 7000)
            }]
        );
    }
}
