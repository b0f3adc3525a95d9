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

/// Which server (an index into the layer's servers, one per master found when the layer was
/// built) serves each slot, and where each server is now.
///
/// A failover gives a shard a new master at a new address: the server keeps its index and
/// takes the new address. Slots moved between masters (a reshard) change owner. A master that
/// did not exist when the layer was built has no index: its slots stay with their former
/// owner, whose replies (`MOVED`) then say so, and a new layer must be built.
#[derive(Debug)]
pub(crate) struct Topology {
    /// Seed node URLs (with the login) and the CA, to read the map again from.
    seeds: Vec<String>,
    tls_ca: Option<Vec<u8>>,
    timeouts: super::conn::Timeouts,
    owners: parking_lot::RwLock<Vec<u16>>,
    addrs: parking_lot::RwLock<Vec<(String, u16)>>,
    refreshed: parking_lot::Mutex<Option<std::time::Instant>>,
    tags: parking_lot::Mutex<std::collections::HashMap<u16, String>>,
}

/// How often the slot map may be read again at most.
const REFRESH_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

impl Topology {
    /// The topology of `ranges`: servers numbered by the order in which their master first
    /// appears.
    #[cfg(test)]
    pub(crate) fn new(ranges: &[SlotRange]) -> Topology {
        let second = std::time::Duration::from_secs(1);
        let timeouts = super::conn::Timeouts {
            connect: second,
            operation: second,
            reply_guard: second,
        };
        Topology::with_seeds(ranges, Vec::new(), None, timeouts)
    }

    /// As [`Topology::new`], able to read the map again from `seeds` and the masters.
    pub(crate) fn with_seeds(
        ranges: &[SlotRange],
        seeds: Vec<String>,
        tls_ca: Option<Vec<u8>>,
        timeouts: super::conn::Timeouts,
    ) -> Topology {
        let mut addrs: Vec<(String, u16)> = Vec::new();
        let mut owners = vec![0u16; usize::from(CLUSTER_SLOTS)];
        for range in ranges {
            let index = match addrs.iter().position(|a| *a == range.master) {
                Some(i) => i,
                None => {
                    addrs.push(range.master.clone());
                    addrs.len() - 1
                }
            };
            for slot in range.first..=range.last {
                owners[usize::from(slot)] = u16::try_from(index).unwrap_or(0);
            }
        }
        Topology {
            seeds,
            tls_ca,
            timeouts,
            owners: parking_lot::RwLock::new(owners),
            addrs: parking_lot::RwLock::new(addrs),
            refreshed: parking_lot::Mutex::new(Some(std::time::Instant::now())),
            tags: parking_lot::Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// How many servers (masters when the layer was built).
    pub(crate) fn len(&self) -> usize {
        self.addrs.read().len()
    }

    /// The server that serves `slot`.
    pub(crate) fn owner(&self, slot: u16) -> usize {
        usize::from(self.owners.read()[usize::from(slot % CLUSTER_SLOTS)])
    }

    /// The server that serves `key`.
    pub(crate) fn owner_of(&self, key: &[u8]) -> usize {
        self.owner(key_slot(key))
    }

    /// Where server `index` is now.
    pub(crate) fn addr(&self, index: usize) -> Option<(String, u16)> {
        self.addrs.read().get(index).cloned()
    }

    /// The server at `addr`, if it is one of ours.
    pub(crate) fn index_of(&self, addr: &(String, u16)) -> Option<usize> {
        self.addrs.read().iter().position(|a| a == addr)
    }

    /// A slot `index` serves, if any (for a key of its own on it).
    pub(crate) fn a_slot_of(&self, index: usize) -> Option<u16> {
        let owners = self.owners.read();
        owners
            .iter()
            .position(|&o| usize::from(o) == index)
            .and_then(|s| u16::try_from(s).ok())
    }

    /// Whether the map may be read again now (at most every 100 ms); marks it read if so.
    pub(crate) fn may_refresh(&self) -> bool {
        let mut at = self.refreshed.lock();
        if at.is_some_and(|t| t.elapsed() < REFRESH_EVERY) {
            return false;
        }
        *at = Some(std::time::Instant::now());
        true
    }

    /// Reads the map again (at most every 100 ms) from the masters known now, then the seed
    /// nodes: after a failover the master of a shard is elsewhere.
    pub(crate) fn refresh(&self) {
        if !self.may_refresh() {
            return;
        }
        let addrs = self.addrs.read().clone();
        let ca = self.tls_ca.as_deref();
        let known = addrs.iter().filter_map(|(host, port)| {
            let seed = self.seeds.first()?;
            Some(super::conn::Endpoint::new(seed, ca).map(|e| e.at(host, *port)))
        });
        let seeds = self.seeds.iter().map(|s| super::conn::Endpoint::new(s, ca));
        if let Ok(ranges) = read_slots(known.chain(seeds), self.timeouts) {
            self.update(&ranges);
        }
    }

    /// Takes a newer `CLUSTER SLOTS` answer: slots change owner, and a server whose master
    /// was replaced (its slots now served from an address no server has) takes the new
    /// address.
    pub(crate) fn update(&self, ranges: &[SlotRange]) {
        let mut addrs = self.addrs.write();
        let mut owners = self.owners.write();
        let masters: Vec<&(String, u16)> = ranges.iter().map(|r| &r.master).collect();
        for range in ranges {
            let index = match addrs.iter().position(|a| *a == range.master) {
                Some(i) => Some(i),
                None => {
                    // The former owner of these slots, if its address is no master now.
                    let former = usize::from(owners[usize::from(range.first)]);
                    let gone = addrs.get(former).is_some_and(|a| !masters.contains(&a));
                    if gone {
                        addrs[former] = range.master.clone();
                        Some(former)
                    } else {
                        None
                    }
                }
            };
            if let Some(index) = index {
                for slot in range.first..=range.last {
                    owners[usize::from(slot)] = u16::try_from(index).unwrap_or(0);
                }
            }
        }
    }

    /// A hash tag whose keys live in `slot` (found by trying `0`, `1`, ... and kept), so a key
    /// of the layer's own can share a slot with the keys it is used with.
    pub(crate) fn tag_for(&self, slot: u16) -> String {
        if let Some(tag) = self.tags.lock().get(&slot) {
            return tag.clone();
        }
        let tag = (0u32..)
            .map(|n| n.to_string())
            .find(|t| key_slot(t.as_bytes()) == slot)
            .expect("every slot has a short tag");
        self.tags.lock().insert(slot, tag.clone());
        tag
    }
}

/// Reads the slot map from the first of `seeds` that answers `CLUSTER SLOTS`.
pub(crate) fn discover(
    seeds: &[String],
    tls_ca: Option<&[u8]>,
    timeouts: super::conn::Timeouts,
) -> Result<Topology, crate::error::BuildError> {
    let ranges = read_slots(
        seeds.iter().map(|s| super::conn::Endpoint::new(s, tls_ca)),
        timeouts,
    )?;
    Ok(Topology::with_seeds(
        &ranges,
        seeds.to_vec(),
        tls_ca.map(<[u8]>::to_vec),
        timeouts,
    ))
}

/// `CLUSTER SLOTS` from the first of `endpoints` that answers with a non-empty map, all of
/// them within one connect timeout: each is tried in turn with a share of the time left, so
/// silent seeds cannot add up to more than the timeout.
pub(crate) fn read_slots(
    endpoints: impl Iterator<Item = Result<super::conn::Endpoint, crate::error::BuildError>>,
    timeouts: super::conn::Timeouts,
) -> Result<Vec<SlotRange>, crate::error::BackendError> {
    use std::time::{Duration, Instant};
    let endpoints: Vec<_> = endpoints.collect();
    let all_by = Instant::now() + timeouts.connect.min(timeouts.operation);
    let mut problems = Vec::new();
    let count = endpoints.len();
    for (k, endpoint) in endpoints.into_iter().enumerate() {
        let endpoint = match endpoint {
            Ok(e) => e,
            Err(e) => {
                problems.push(e.to_string());
                continue;
            }
        };
        let left = all_by.saturating_duration_since(Instant::now());
        if left.is_zero() {
            problems.push(format!("{}: not tried, no time left", endpoint.name()));
            continue;
        }
        let share = (left / u32::try_from(count - k).unwrap_or(1)).max(Duration::from_millis(100));
        let deadline = all_by.min(Instant::now() + share);
        let mut conn = match endpoint.connect(deadline) {
            Ok(c) => c,
            Err(e) => {
                problems.push(e.to_string());
                continue;
            }
        };
        let packed = ::redis::cmd("CLUSTER").arg("SLOTS").get_packed_command();
        match conn.exchange(&packed, 1, Some(deadline)) {
            Ok(replies) => {
                let ranges = replies.first().map(slot_ranges).unwrap_or_default();
                if ranges.is_empty() {
                    problems.push(format!("{}: no slot map ({replies:?})", endpoint.name()));
                } else {
                    return Ok(ranges);
                }
            }
            Err(e) => problems.push(e.to_string()),
        }
    }
    Err(crate::error::BackendError::new(
        crate::error::BackendErrorKind::Unavailable,
        format!(
            "reading the redis cluster's slot map: {}",
            problems.join("; ")
        ),
    ))
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

/// The slot and address of a `MOVED slot host:port` or `ASK slot host:port` error reply, and
/// whether it is an `ASK`.
pub(crate) fn redirection(value: &::redis::Value) -> Option<(bool, u16, (String, u16))> {
    let ::redis::Value::ServerError(e) = value else {
        return None;
    };
    let ask = match e.code() {
        "MOVED" => false,
        "ASK" => true,
        _ => return None,
    };
    let mut parts = e.details()?.split_whitespace();
    let slot = parts.next()?.parse().ok()?;
    let (host, port) = parts.next()?.rsplit_once(':')?;
    Some((ask, slot, (host.to_owned(), port.parse().ok()?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failover_moves_an_address_and_a_reshard_moves_slots() {
        let range = |first, last, port| SlotRange {
            first,
            last,
            master: ("h".into(), port),
        };
        let t = Topology::new(&[range(0, 99, 1), range(100, 16383, 2)]);
        assert_eq!((t.len(), t.owner(50), t.owner(100)), (2, 0, 1));
        // Server 0's master fails over to port 3.
        t.update(&[range(0, 99, 3), range(100, 16383, 2)]);
        assert_eq!(t.addr(0), Some(("h".into(), 3)));
        // Slots 90-99 move to server 1.
        t.update(&[range(0, 89, 3), range(90, 16383, 2)]);
        assert_eq!((t.owner(89), t.owner(90)), (0, 1));
        assert_eq!(key_slot(format!("x{{{}}}", t.tag_for(777)).as_bytes()), 777);
        let moved = ::redis::parse_redis_value(b"-MOVED 3999 127.0.0.1:6381\r\n").unwrap();
        assert_eq!(
            redirection(&moved),
            Some((false, 3999, ("127.0.0.1".into(), 6381)))
        );
    }

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
