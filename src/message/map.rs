//! An insertion-ordered map with string keys.

use std::fmt;

use super::Value;

/// A map key: stored inline when it is at most 24 bytes long (as message keys nearly always
/// are), so building a message does not allocate once per key.
pub(crate) type Key = compact_str::CompactString;

/// The entries, with their reference count, in one allocation.
pub(crate) type Entries = ecow::EcoVec<(Key, Value)>;

/// A map with string keys that keeps insertion order.
///
/// Messages are small (a handful of keys), so entries live in one vector and lookups scan it:
/// cheaper to build, clone and search than a hash map at this size. Order is kept so that a map
/// sent by one peer is re-encoded in the same order by another (Python dicts keep insertion
/// order too).
///
/// The vector is reference counted and copied on write, its count and its entries in one
/// allocation: cloning a map (or a [`Message`](crate::Message), which is one) copies a pointer,
/// and changing a clone copies the entries first, so no other holder sees the change.
#[derive(Clone, PartialEq, Default)]
pub struct Map {
    entries: Entries,
}

impl Map {
    /// An empty map.
    pub fn new() -> Self {
        Map::default()
    }

    /// An empty map with room for `n` entries.
    pub fn with_capacity(n: usize) -> Self {
        Map {
            entries: Entries::with_capacity(n),
        }
    }

    fn position(&self, key: &str) -> Option<usize> {
        self.entries.iter().position(|(k, _)| k.as_str() == key)
    }

    /// Adds or replaces `key`; a replaced key keeps its position. Returns the previous value.
    pub fn insert(&mut self, key: impl AsRef<str>, value: impl Into<Value>) -> Option<Value> {
        let key = key.as_ref();
        let value = value.into();
        match self.position(key) {
            Some(i) => Some(std::mem::replace(&mut self.entries.make_mut()[i].1, value)),
            None => {
                self.entries.push((Key::from(key), value));
                None
            }
        }
    }

    /// Appends an entry without looking for an existing one with the same key.
    ///
    /// For decoders that have already ensured keys are unique.
    pub(crate) fn push_unique(&mut self, key: impl Into<Key>, value: Value) {
        self.entries.push((key.into(), value));
    }

    /// A map of entries whose keys are known to be unique.
    pub(crate) fn from_unique(entries: Entries) -> Self {
        Map { entries }
    }

    /// The value under `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.entries
            .iter()
            .find(|(k, _)| k.as_str() == key)
            .map(|(_, v)| v)
    }

    /// The value under `key`, mutably.
    ///
    /// The entries are copied first if this map shares them with a clone.
    pub fn get_mut(&mut self, key: &str) -> Option<&mut Value> {
        let i = self.position(key)?;
        Some(&mut self.entries.make_mut()[i].1)
    }

    /// Whether `key` is present.
    pub fn contains_key(&self, key: &str) -> bool {
        self.position(key).is_some()
    }

    /// Removes `key`, keeping the order of the others; returns its value.
    pub fn remove(&mut self, key: &str) -> Option<Value> {
        self.position(key).map(|i| self.entries.remove(i).1)
    }

    /// The number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entries in insertion order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &Value)> + '_ {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The keys in insertion order.
    pub fn keys(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        self.entries.iter().map(|(k, _)| k.as_str())
    }

    /// The entries as a slice.
    pub(crate) fn entries(&self) -> &[(Key, Value)] {
        &self.entries
    }

    /// Whether two maps share the same entries (a cheap identity test; two empty maps do).
    pub(crate) fn ptr_eq(a: &Map, b: &Map) -> bool {
        std::ptr::eq(a.entries.as_ptr(), b.entries.as_ptr())
    }

    /// Equality comparing floats by bits (see [`Value::bit_eq`]); order matters.
    pub fn bit_eq(&self, other: &Map) -> bool {
        self.entries.len() == other.entries.len()
            && self
                .entries
                .iter()
                .zip(&other.entries)
                .all(|((ka, va), (kb, vb))| ka == kb && va.bit_eq(vb))
    }
}

impl fmt::Debug for Map {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// The entries of a [`Map`], by value, in insertion order.
#[derive(Debug)]
pub struct IntoIter(ecow::vec::IntoIter<(Key, Value)>);

impl Iterator for IntoIter {
    type Item = (String, Value);
    fn next(&mut self) -> Option<Self::Item> {
        self.0.next().map(|(k, v)| (k.into_string(), v))
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        self.0.size_hint()
    }
}

impl ExactSizeIterator for IntoIter {}

impl IntoIterator for Map {
    type Item = (String, Value);
    type IntoIter = IntoIter;
    fn into_iter(self) -> IntoIter {
        IntoIter(self.entries.into_iter())
    }
}

impl<K: AsRef<str>, V: Into<Value>> FromIterator<(K, V)> for Map {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut map = Map::new();
        for (k, v) in iter {
            map.insert(k, v);
        }
        map
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Message;

    #[test]
    fn a_message_is_two_words_and_its_clones_share_one_allocation() {
        assert_eq!(std::mem::size_of::<Message>(), 16);
        assert_eq!(std::mem::size_of::<Map>(), 16);
        assert_eq!(std::mem::size_of::<Value>(), 32);
        let a = Message::new("chat.message").with("n", 1).with("text", "hi");
        let mut b = a.clone();
        assert!(Message::ptr_eq(&a, &b));
        // Changing a clone copies it first: the original is untouched.
        b.insert("n", 2);
        assert!(!Message::ptr_eq(&a, &b));
        assert_eq!(a.get("n"), Some(&Value::Int(1)));
        assert_eq!(b.get("n"), Some(&Value::Int(2)));
        let mut c = a.clone();
        if let Some(v) = c.as_map_mut().get_mut("text") {
            *v = Value::from("bye");
        }
        assert_eq!(a.get("text").and_then(Value::as_str), Some("hi"));
        assert_eq!(c.get("text").and_then(Value::as_str), Some("bye"));
        let mut d = a.clone();
        assert_eq!(d.remove("text"), Some(Value::from("hi")));
        assert_eq!(a.len(), 3);
        assert_eq!(d.len(), 2);
        // Taking the map out of a shared message leaves the other holder intact too.
        let entries: Vec<(String, Value)> = a.clone().into_map().into_iter().collect();
        assert_eq!(entries.len(), 3);
        assert_eq!(a.message_type(), Some("chat.message"));
    }

    #[test]
    fn insert_keeps_order_and_replaces_in_place() {
        let mut m = Map::new();
        m.insert("b", 1);
        m.insert("a", 2);
        m.insert("b", 3);
        assert_eq!(m.keys().collect::<Vec<_>>(), ["b", "a"]);
        assert_eq!(m.get("b"), Some(&Value::Int(3)));
        let many: Map = (0..40).map(|i| (format!("k{i}"), i)).collect();
        assert_eq!(many.len(), 40);
        assert_eq!(many.get("k39"), Some(&Value::Int(39)));
    }
}
