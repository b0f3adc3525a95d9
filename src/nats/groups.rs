//! Group memberships: keys of the `<prefix>_groups` bucket.

use std::collections::BTreeSet;
use std::sync::Arc;

use bytes::Bytes;

use super::api::failure;
use super::{Inner, rt, subjects};
use crate::error::{BackendError, BackendErrorKind, LayerError};
use crate::name::{validate_channel, validate_group};

/// What a membership change does.
enum Change {
    Add,
    Discard,
}

impl Inner {
    pub(super) async fn group_add(
        self: &Arc<Self>,
        group: &str,
        channel: &str,
    ) -> Result<(), LayerError> {
        self.change_membership(group, channel, Change::Add).await
    }

    pub(super) async fn group_discard(
        self: &Arc<Self>,
        group: &str,
        channel: &str,
    ) -> Result<(), LayerError> {
        self.change_membership(group, channel, Change::Discard)
            .await
    }

    async fn change_membership(
        self: &Arc<Self>,
        group: &str,
        channel: &str,
        change: Change,
    ) -> Result<(), LayerError> {
        if self.is_closed() {
            return Err(LayerError::Closed);
        }
        validate_group(group)?;
        validate_channel(channel)?;
        let key = subjects::member_key(group, channel);
        let inner = self.clone();
        let value = Bytes::from(channel.to_owned());
        rt::run(async move {
            let done = match change {
                Change::Add => inner
                    .groups
                    .put(&key, value)
                    .await
                    .map(|_| ())
                    .map_err(|e| {
                        failure(
                            BackendErrorKind::Unavailable,
                            format!("adding group member {key}"),
                            e,
                        )
                    }),
                // A purge of the key's subject removes it without leaving a delete marker, so
                // the group's listing holds members only.
                Change::Discard => {
                    let subject = subjects::member_subject(inner.groups.name.as_str(), &key);
                    inner
                        .groups_stream
                        .purge()
                        .filter(subject)
                        .await
                        .map(|_| ())
                        .map_err(|e| {
                            failure(
                                BackendErrorKind::Unavailable,
                                format!("removing group member {key}"),
                                e,
                            )
                        })
                }
            };
            done.map_err(|e| inner.backend_error(e))
        })
        .await
        .map_err(LayerError::Backend)
    }

    /// The channels in `group` now.
    ///
    /// On servers that read in batches (2.11 and later), one request reads the latest entry of
    /// every member key (up to 1,024 members): entries older than the group expiry (the
    /// server's age limit acts a moment late) and the delete and purge marks that other
    /// key-value clients write (`nats kv del`) are left out. Otherwise, and for larger groups,
    /// one stream-info request lists the group's keys, and the server's age limit alone
    /// decides which have lapsed.
    pub(super) async fn members(&self, group: &str) -> Result<Vec<String>, BackendError> {
        let filter = subjects::members_filter(&self.groups.name, group);
        if self.batch_reads && self.groups_stream.cached_info().config.allow_direct {
            let request = serde_json::json!({ "multi_last": [filter] });
            if let Some(entries) = self.read_batch(&self.groups_stream, request).await? {
                let oldest = super::wall_clock() - self.config.layer.group_expiry.as_secs_f64();
                let members: BTreeSet<String> = entries
                    .iter()
                    .filter(|e| e.headers.get(subjects::KV_OPERATION).is_none())
                    .filter(|e| super::sent_at(e) > oldest)
                    .filter_map(|e| subjects::member_of_subject(&e.subject))
                    .collect();
                return Ok(members.into_iter().collect());
            }
        }
        let stream = subjects::bucket_stream(&self.groups.name);
        let listed = self.subjects_of(&stream, &filter, usize::MAX).await?;
        let members: BTreeSet<String> = listed
            .keys()
            .filter_map(|s| subjects::member_of_subject(s))
            .collect();
        Ok(members.into_iter().collect())
    }
}
