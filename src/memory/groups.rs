//! Group membership for the in-memory backend.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::RwLock;

use crate::error::LayerError;
use crate::inspect::{GroupState, MemberState};
use crate::metrics::MetricsSnapshot;
use crate::name::{validate_channel, validate_group};

use super::shrink_target;

/// A map of groups, or of one group's members, at most this large is never shrunk.
pub(super) const MAP_FLOOR: usize = 32;

/// Shrinks `map` if it is mostly empty (see [`shrink_target`]).
fn shrink<K: Eq + std::hash::Hash, V>(map: &mut HashMap<K, V>) {
    if let Some(target) = shrink_target(map.len(), map.capacity(), MAP_FLOOR) {
        map.shrink_to(target);
    }
}

struct Member {
    /// When the membership lapses: `group_expiry` after the latest `group_add`.
    until: Instant,
    /// The channel name's hash, so `group_send` hashes nothing.
    hash: u64,
}

/// The members of one group, by channel name.
type Members = HashMap<Box<str>, Member>;

/// Groups and their members, each with the time its membership lapses.
pub(crate) struct Groups {
    expiry: Duration,
    sends: AtomicU64,
    map: RwLock<HashMap<Box<str>, Members>>,
}

impl Groups {
    pub(crate) fn new(expiry: Duration) -> Self {
        Groups {
            expiry,
            sends: AtomicU64::new(0),
            map: RwLock::new(HashMap::new()),
        }
    }

    pub(crate) fn add(&self, group: &str, channel: &str, hash: u64) -> Result<(), LayerError> {
        validate_group(group)?;
        validate_channel(channel)?;
        let now = Instant::now();
        let until = now
            .checked_add(self.expiry)
            .unwrap_or_else(|| now + Duration::from_secs(86_400 * 365));
        let mut map = self.map.write();
        let members = match map.get_mut(group) {
            Some(m) => m,
            None => map.entry(group.into()).or_default(),
        };
        match members.get_mut(channel) {
            Some(m) => m.until = until,
            None => {
                members.insert(channel.into(), Member { until, hash });
            }
        }
        Ok(())
    }

    pub(crate) fn discard(&self, group: &str, channel: &str) -> Result<(), LayerError> {
        validate_group(group)?;
        validate_channel(channel)?;
        let mut map = self.map.write();
        if let Some(members) = map.get_mut(group) {
            // Amortised O(1) each: a shrink copies what is left only after at least as many
            // removals (see `shrink_target`).
            if members.remove(channel).is_some() {
                if members.is_empty() {
                    map.remove(group);
                    shrink(&mut map);
                } else {
                    shrink(members);
                }
            }
        }
        Ok(())
    }

    /// Calls `deliver` for every member of `group` whose membership has not lapsed at `now`.
    ///
    /// The group map stays read-locked meanwhile: concurrent `group_send`s proceed together,
    /// and membership changes wait for them (never the other way round, so no deadlock: the
    /// shard locks `deliver` takes are never held while this lock is requested).
    pub(crate) fn for_each_member(
        &self,
        group: &str,
        now: Instant,
        mut deliver: impl FnMut(&str, u64),
    ) -> Result<(), LayerError> {
        validate_group(group)?;
        self.sends.fetch_add(1, Ordering::Relaxed);
        let map = self.map.read();
        if let Some(members) = map.get(group) {
            for (name, member) in members {
                if member.until > now {
                    deliver(name, member.hash);
                }
            }
        }
        Ok(())
    }

    /// Forgets lapsed memberships and empty groups.
    pub(crate) fn prune(&self, now: Instant) {
        // Look first under the read lock; most sweeps find nothing to do.
        let any_lapsed = self
            .map
            .read()
            .values()
            .any(|members| members.values().any(|m| m.until <= now));
        if !any_lapsed {
            return;
        }
        let mut map = self.map.write();
        map.retain(|_, members| {
            members.retain(|_, m| m.until > now);
            if members.is_empty() {
                return false;
            }
            shrink(members);
            true
        });
        shrink(&mut map);
    }

    /// Every group with live members, each member with how long ago it was added.
    pub(crate) fn inspect(&self, now: Instant) -> Vec<GroupState> {
        let map = self.map.read();
        map.iter()
            .filter_map(|(name, members)| {
                let mut live: Vec<MemberState> = members
                    .iter()
                    .filter(|(_, m)| m.until > now)
                    .map(|(channel, m)| {
                        let left = m.until.saturating_duration_since(now);
                        MemberState::new(&**channel, Some(self.expiry.saturating_sub(left)))
                    })
                    .collect();
                live.sort_by(|a, b| a.channel.cmp(&b.channel));
                (!live.is_empty()).then(|| GroupState::new(&**name, live))
            })
            .collect()
    }

    /// Forgets every group, and gives back the map's memory (dropped after the lock is let go).
    pub(crate) fn clear(&self) {
        let old = std::mem::take(&mut *self.map.write());
        drop(old);
    }

    /// The slots held: the map of groups', and the sum of the groups' maps of members'.
    #[cfg(test)]
    pub(crate) fn capacities(&self) -> (usize, usize) {
        let map = self.map.read();
        (map.capacity(), map.values().map(HashMap::capacity).sum())
    }

    pub(crate) fn add_to(&self, snap: &mut MetricsSnapshot) {
        snap.groups += self.map.read().len() as u64;
        snap.group_sends += self.sends.load(Ordering::Relaxed);
    }
}
