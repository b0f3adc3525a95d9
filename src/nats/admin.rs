//! What is not sending or receiving: clearing expired messages, inspect, flush, and putting
//! back what a closing layer holds.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::api::failure;
use super::{Inner, life_left, rt, sent_at, subjects, wall_clock};
use crate::codec::AsgiChannel;
use crate::error::{BackendError, BackendErrorKind, LayerError};
use crate::inspect::{ChannelState, GroupState, Inspection, MemberState};
use crate::layer::ChannelLayer as _;
use crate::metrics::Counters;
use crate::runtime::block_on;

/// Starts the task that clears expired messages nobody received (late replies to abandoned
/// requests, say) from this layer's streams, counting them: every `expiry` (between a second
/// and a minute) while the layer is open. It holds the layer weakly, so dropping the layer
/// ends it.
pub(super) fn start_sweeper(inner: &Arc<Inner>) {
    let Ok(handle) = rt::handle() else {
        return;
    };
    let period = inner
        .config
        .layer
        .expiry
        .clamp(Duration::from_secs(1), Duration::from_secs(60));
    let weak = Arc::downgrade(inner);
    handle.spawn(sweep_every(weak, period));
}

async fn sweep_every(weak: Weak<Inner>, period: Duration) {
    loop {
        tokio::time::sleep(period).await;
        let Some(inner) = weak.upgrade() else {
            return;
        };
        if inner.is_closed() {
            return;
        }
        if let Err(e) = inner.sweep().await {
            inner.backend_error(e);
        }
    }
}

impl Inner {
    /// One pass over each channel stream from its oldest message, while messages are older
    /// than this layer's expiry and within the operation timeout: each expired message's
    /// subject is purged through it (counted expired), unless an older message of that
    /// subject is still live (a sender with a longer expiry), which is left for a receive.
    pub(super) async fn sweep(&self) -> Result<(), BackendError> {
        let started = Instant::now();
        let young = self.config.layer.expiry.as_secs_f64();
        for (capacity, stream) in &self.streams {
            let everything = subjects::stream_subjects(&self.config.prefix, *capacity);
            let mut live = HashSet::new();
            let mut from = 0;
            while started.elapsed() < self.config.operation_timeout {
                let Some(found) = self.read_from(stream, &everything, from).await? else {
                    break;
                };
                from = found.sequence + 1;
                if wall_clock() - sent_at(&found) < young {
                    break;
                }
                let subject = found.subject.to_string();
                if life_left(&found, self.config.layer.expiry) > 0.0 {
                    live.insert(subject);
                    continue;
                }
                if live.contains(&subject) {
                    continue;
                }
                let removed = self.purge_through(stream, &subject, found.sequence).await?;
                Counters::add(&self.counters.expired, removed);
            }
        }
        Ok(())
    }

    /// What the server holds under this prefix (see [`crate::ChannelLayer::inspect`]): the
    /// subjects of every channel stream with their counts, the oldest message's age for the
    /// first `limit` of them (a read each), and the group bucket's keys, counted per group,
    /// with the age of the first `limit` memberships of each of the first `limit` groups (a
    /// read each).
    pub(super) async fn inspect(&self, limit: usize) -> Result<Inspection, BackendError> {
        let mut complete = true;
        let mut channels = Vec::new();
        for (name, capacity) in self.channel_streams().await? {
            let filter = subjects::stream_subjects(&self.config.prefix, capacity);
            let listed = self
                .subjects_of(&name, &filter, limit.saturating_add(1))
                .await?;
            let stream = self.js.get_stream(&name).await.map_err(|e| {
                failure(BackendErrorKind::Unavailable, format!("opening {name}"), e)
            })?;
            let head = subjects::channel_subject_head(&self.config.prefix, capacity);
            for (subject, queued) in listed {
                let Some(channel) = subject
                    .strip_prefix(&head)
                    .and_then(subjects::channel_of_tail)
                else {
                    continue;
                };
                if channels.len() >= limit {
                    complete = false;
                    break;
                }
                let oldest = match self.read_from(&stream, &subject, 0).await {
                    Ok(Some(found)) => Some(age(sent_at(&found))),
                    _ => None,
                };
                channels.push(ChannelState::new(channel, queued, oldest));
            }
        }
        channels.sort_by(|a, b| a.name.cmp(&b.name));
        let bucket = subjects::bucket_stream(&self.groups.name);
        let keys = self
            .subjects_of(
                &bucket,
                &subjects::bucket_subjects(&self.groups.name),
                usize::MAX,
            )
            .await?;
        let mut groups: BTreeMap<String, (Vec<MemberState>, u64)> = BTreeMap::new();
        for subject in keys.keys() {
            let (Some(channel), Some(group)) = (
                subjects::member_of_subject(subject),
                subjects::group_of_subject(subject),
            ) else {
                continue;
            };
            if !groups.contains_key(&group) && groups.len() >= limit {
                complete = false;
                continue;
            }
            let (members, count) = groups.entry(group).or_default();
            if members.len() >= limit {
                // Counted, not read: a delete mark among these counts as a member here.
                *count += 1;
                complete = false;
                continue;
            }
            let entry = self
                .groups_stream
                .get_last_raw_message_by_subject(subject)
                .await
                .ok();
            // A delete or purge mark written by another key-value client is no member.
            if entry
                .as_ref()
                .is_some_and(|e| e.headers.get(subjects::KV_OPERATION).is_some())
            {
                continue;
            }
            let added = entry.map(|found| age(sent_at(&found)));
            *count += 1;
            members.push(MemberState::new(channel, added));
        }
        Ok(Inspection {
            channels,
            groups: groups
                .into_iter()
                .filter(|(_, (_, count))| *count > 0)
                .map(|(name, (members, count))| {
                    GroupState::new(name, members).with_member_count(count)
                })
                .collect(),
            metrics: self.metrics(),
            complete,
        })
    }

    pub(super) async fn flush(self: &Arc<Self>) -> Result<(), LayerError> {
        if self.is_closed() {
            return Err(LayerError::Closed);
        }
        let inner = self.clone();
        let flushed = rt::run(async move { inner.purge_all().await })
            .await
            .map_err(|e| LayerError::Backend(self.backend_error(e)))?;
        Counters::add(&self.counters.flushed, flushed);
        self.local.flush()
    }

    /// Empties every channel stream of this prefix (whatever its capacity) and the groups.
    async fn purge_all(&self) -> Result<u64, BackendError> {
        let mut flushed = 0;
        for (name, _) in self.channel_streams().await? {
            let purged = self
                .js
                .get_stream_no_info(&name)
                .await
                .map_err(|e| failure(BackendErrorKind::Unavailable, format!("opening {name}"), e))?
                .purge()
                .await
                .map_err(|e| {
                    failure(BackendErrorKind::Unavailable, format!("purging {name}"), e)
                })?;
            flushed += purged.purged;
        }
        self.groups_stream
            .purge()
            .await
            .map_err(|e| failure(BackendErrorKind::Unavailable, "purging the groups", e))?;
        Ok(flushed)
    }

    /// Puts what waits in the local buffers back on the server (at the end of its channel: the
    /// receiver it was taken for has gone), so closing loses nothing; what cannot be put back
    /// is counted lost.
    pub(super) fn put_back(self: &Arc<Self>) {
        let Ok(held) = self.local.inspect(usize::MAX) else {
            return;
        };
        let mut back = Vec::new();
        for channel in held.channels {
            while let Ok(message) = self.local.try_receive(&channel.name) {
                match self.codec.pack(&message, AsgiChannel::None) {
                    Ok(payload) => back.push((channel.name.clone(), Bytes::from(payload))),
                    Err(_) => Counters::add(&self.counters.lost, 1),
                }
            }
        }
        if back.is_empty() {
            return;
        }
        let inner = self.clone();
        let count = back.len() as u64;
        let outcome = block_on(rt::run(async move {
            let mut lost = 0;
            for (channel, payload) in back {
                if !matches!(inner.republish(&channel, payload).await, Ok(true)) {
                    lost += 1;
                }
            }
            Ok::<u64, BackendError>(lost)
        }));
        Counters::add(&self.counters.lost, outcome.unwrap_or(count));
    }
}

/// How long ago `at` (seconds since the Unix epoch) was.
fn age(at: f64) -> Duration {
    Duration::from_secs_f64((wall_clock() - at).clamp(0.0, 1e9))
}
