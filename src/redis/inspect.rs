//! `inspect`: what the layer's keys on the servers hold, for operators.

use std::collections::BTreeMap;
use std::time::Duration;

use ::redis::Value as RedisValue;

use super::replies::popped;
use super::{Inner, wall_clock};
use crate::error::LayerError;
use crate::inspect::{ChannelState, GroupState, Inspection, MemberState};

/// The age of something stamped at `score` (seconds since the epoch), if the stamp is sane.
fn age_of(score: f64) -> Option<Duration> {
    let age = wall_clock() - score;
    (age.is_finite() && age >= 0.0).then(|| Duration::from_secs_f64(age.min(1e9)))
}

impl Inner {
    /// Scans every server for the prefix's keys: channel keys (a process's channels share
    /// one, named by its non-local part) with their sizes and oldest scores, and group keys
    /// with their sizes and the scores (when they were added) of at most `limit` members, the
    /// longest-standing. One round trip per key, at most `limit` channels and `limit` groups;
    /// no command reads more than `limit` entries of a key (`ZCARD`, ranged `ZRANGE`), so a
    /// group of millions costs Redis no more than a small one.
    pub(super) async fn inspect(&self, limit: usize) -> Result<Inspection, LayerError> {
        self.check_open()?;
        let prefix = &self.config.prefix;
        let pattern = format!("{prefix}*");
        let group_prefix = self.group_key("");
        let mut complete = true;
        let mut channels = Vec::new();
        let mut groups: BTreeMap<String, (Vec<MemberState>, u64)> = BTreeMap::new();
        'servers: for server in 0..self.servers.len() {
            let mut cursor = 0u64;
            loop {
                let (next, keys) = self.scan_page(server, &pattern, cursor).await?;
                for key in keys {
                    let name = String::from_utf8_lossy(&key).into_owned();
                    if let Some(group) = name.strip_prefix(&group_prefix) {
                        if groups.len() >= limit && !groups.contains_key(group) {
                            complete = false;
                            continue;
                        }
                        if limit == 0 {
                            continue;
                        }
                        let mut size = ::redis::cmd("ZCARD");
                        size.arg(&key);
                        let mut range = ::redis::cmd("ZRANGE");
                        let last = i64::try_from(limit - 1).unwrap_or(i64::MAX);
                        range.arg(&key).arg(0).arg(last).arg("WITHSCORES");
                        let mut replies = self.exec(server, vec![size, range]).await?.into_iter();
                        // Another program's key of another type under the prefix: no group.
                        let Some(RedisValue::Int(count)) = replies.next() else {
                            continue;
                        };
                        let count = u64::try_from(count).unwrap_or(0);
                        let (members, total) = groups.entry(group.to_owned()).or_default();
                        *total += count;
                        for (member, score) in replies.next().map(popped).unwrap_or_default() {
                            members.push(MemberState::new(
                                String::from_utf8_lossy(&member),
                                age_of(score),
                            ));
                        }
                        if count > limit as u64 {
                            complete = false;
                        }
                        continue;
                    }
                    if name.contains("__wake__") {
                        continue;
                    }
                    if channels.len() >= limit {
                        complete = false;
                        continue;
                    }
                    let mut size = ::redis::cmd("ZCARD");
                    size.arg(&key);
                    let mut oldest = ::redis::cmd("ZRANGE");
                    oldest.arg(&key).arg(0).arg(0).arg("WITHSCORES");
                    let mut replies = self.exec(server, vec![size, oldest]).await?.into_iter();
                    // Another program's key of another type under the prefix: not a channel.
                    let Some(RedisValue::Int(queued)) = replies.next() else {
                        continue;
                    };
                    let age = replies
                        .next()
                        .and_then(|r| popped(r).into_iter().next())
                        .and_then(|(_, score)| age_of(score));
                    let channel = &name[prefix.len()..];
                    channels.push(ChannelState::new(
                        channel,
                        u64::try_from(queued).unwrap_or(0),
                        age,
                    ));
                }
                if next == 0 {
                    break;
                }
                // Both lists full and more keys met: the rest of the scan would add nothing.
                if !complete && channels.len() >= limit && groups.len() >= limit {
                    break 'servers;
                }
                cursor = next;
            }
        }
        channels.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Inspection {
            channels,
            groups: groups
                .into_iter()
                .filter(|(_, (_, total))| *total > 0)
                .map(|(name, (mut members, total))| {
                    members.sort_by(|a, b| a.channel.cmp(&b.channel));
                    members.truncate(limit);
                    GroupState::new(name, members).with_member_count(total)
                })
                .collect(),
            metrics: self.metrics(),
            complete,
        })
    }
}
