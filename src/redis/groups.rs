//! Groups and flush: membership changes, the two round trips of a `group_send`, and a flush
//! that counts the messages it drops.

use std::collections::BTreeMap;

use ::redis::Cmd;

use super::conn::check_reply;
use super::replies::{all_ok, ints, member_names, one_value, scanned, tally};
use super::scripts::scripts;
use super::{Inner, wall_clock};
use crate::codec::AsgiChannel;
use crate::error::{BackendError, LayerError};
use crate::layer::ChannelLayer as _;
use crate::layer::GroupSendReport;
use crate::message::{Message, MessageError};
use crate::metrics::{Counters, MetricsSnapshot};
use crate::name::{non_local_name, validate_channel, validate_group};

/// The bundled copies of one `group_send` bound for one server: a key, a member and a capacity
/// per non-local name, and how many group members each stands for.
#[derive(Default)]
pub(super) struct Bundles {
    keys: Vec<String>,
    members: Vec<Vec<u8>>,
    capacities: Vec<usize>,
    sizes: Vec<usize>,
}

/// One script call per server (and per slot, on a cluster), with what it delivers.
pub(super) type Deliveries = BTreeMap<(usize, u16), (Cmd, Bundles)>;

impl Inner {
    pub(super) fn group_add_cmds(
        &self,
        group: &str,
        channel: &str,
    ) -> Result<(usize, Vec<Cmd>), LayerError> {
        self.check_open()?;
        validate_group(group)?;
        validate_channel(channel)?;
        let key = self.group_key(group);
        let mut zadd = ::redis::cmd("ZADD");
        zadd.arg(&key).arg(wall_clock()).arg(channel);
        let mut expire = ::redis::cmd("EXPIRE");
        expire
            .arg(&key)
            // Whole seconds, rounded up, so the key never lapses before its memberships.
            .arg(
                self.layer_config()
                    .group_expiry
                    .as_millis()
                    .div_ceil(1000)
                    .max(1),
            );
        Ok((
            self.server_of_key(&key, || self.server_for(group)),
            vec![zadd, expire],
        ))
    }

    pub(super) fn group_discard_cmds(
        &self,
        group: &str,
        channel: &str,
    ) -> Result<(usize, Vec<Cmd>), LayerError> {
        self.check_open()?;
        validate_group(group)?;
        validate_channel(channel)?;
        let key = self.group_key(group);
        let mut zrem = ::redis::cmd("ZREM");
        zrem.arg(&key).arg(channel);
        Ok((
            self.server_of_key(&key, || self.server_for(group)),
            vec![zrem],
        ))
    }

    pub(super) fn check_open(&self) -> Result<(), LayerError> {
        if self.is_closed() {
            Err(LayerError::Closed)
        } else {
            Ok(())
        }
    }

    pub(super) fn members_command(&self, group: &str) -> Result<(usize, Cmd), LayerError> {
        self.check_open()?;
        validate_group(group)?;
        let key = self.group_key(group);
        let mut cmd = ::redis::cmd("EVALSHA");
        cmd.arg(&scripts().group_members.sha)
            .arg(1)
            .arg(&key)
            .arg(wall_clock() - self.layer_config().group_expiry.as_secs_f64());
        Ok((self.server_of_key(&key, || self.server_for(group)), cmd))
    }

    /// One bundled copy of the message per channel key, per server ([contract §3.7](crate::contract)), as commands.
    pub(super) fn group_deliveries(
        &self,
        message: &Message,
        members: &[String],
    ) -> Result<Deliveries, MessageError> {
        let mut buckets: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for name in members {
            if validate_channel(name).is_ok() {
                buckets.entry(non_local_name(name)).or_default().push(name);
            }
        }
        let now = wall_clock();
        // Per server, and on a cluster per slot too: a script may touch one slot only.
        let mut per_server: BTreeMap<(usize, u16), Bundles> = BTreeMap::new();
        for (non_local, names) in &buckets {
            let key = self.key(non_local);
            let place = match &self.cluster {
                Some(topology) => {
                    let slot = super::cluster::key_slot(key.as_bytes());
                    (topology.owner(slot), slot)
                }
                None => (self.server_for(non_local), 0),
            };
            let bundles = per_server.entry(place).or_default();
            let member = self
                .codec
                .pack(message, AsgiChannel::Many(names))
                .map_err(|e| MessageError::Encode(e.to_string()))?;
            bundles.keys.push(key);
            bundles.members.push(member);
            bundles
                .capacities
                .push(self.layer_config().capacity_for(names[0]));
            bundles.sizes.push(names.len());
        }
        Ok(per_server
            .into_iter()
            .map(|(server, b)| {
                let mut cmd = ::redis::cmd("EVALSHA");
                cmd.arg(&scripts().group_deliver.sha).arg(b.keys.len());
                for key in &b.keys {
                    cmd.arg(key);
                }
                cmd.arg(now)
                    .arg(now - self.expiry_secs())
                    .arg(self.ttl_millis());
                for (member, capacity) in b.members.iter().zip(&b.capacities) {
                    cmd.arg(member.as_slice()).arg(*capacity);
                }
                (server, (cmd, b))
            })
            .collect())
    }

    /// Reads the members, then delivers one bundled copy per channel key, per server. A
    /// member whose key holds another type of data is skipped and reported
    /// ([`GroupSendReport::skipped_failed`]); the others still get the message.
    pub(super) async fn group_send(
        &self,
        group: &str,
        message: Message,
    ) -> Result<GroupSendReport, LayerError> {
        self.layer_config().check_message(&message)?;
        if let Some(cmd) = self.one_trip_group_send(group, &message)? {
            let mut cmds = vec![cmd];
            cmds.extend(self.replica_wait());
            let reply = self.exec(0, cmds).await;
            return self.one_trip_report(group, reply);
        }
        let (server, cmd) = self.members_command(group)?;
        let what = format!(
            "reading the members of redis key {:?}",
            self.group_key(group)
        );
        let members = member_names(one_value(self.exec(server, vec![cmd]).await?, &what)?);
        let mut report = GroupSendReport {
            // A member name that is not a channel name (written by some other client) gets
            // nothing, and is counted.
            skipped_failed: members
                .iter()
                .filter(|m| validate_channel(m).is_err())
                .count(),
            ..GroupSendReport::default()
        };
        for ((server, _), (cmd, bundles)) in self.group_deliveries(&message, &members)? {
            let mut cmds = vec![cmd];
            cmds.extend(self.replica_wait());
            let reply = self.exec(server, cmds).await?;
            let before = report.delivered;
            let wait_reply: Vec<::redis::Value> = reply.get(1).cloned().into_iter().collect();
            let (expired, failed) =
                tally(&mut report, one_value(reply, "group send")?, &bundles.sizes);
            self.note_replication(&wait_reply, (report.delivered - before) as u64);
            Counters::add(&self.counters.expired, expired);
            if !failed.is_empty() {
                Counters::add(&self.counters.backend_errors, failed.len() as u64);
                #[cfg(feature = "tracing")]
                for i in failed {
                    tracing::warn!(
                        group,
                        key = bundles.keys[i].as_str(),
                        "group_send skipped a member whose redis key holds another type of data"
                    );
                }
            }
        }
        self.counters.group_send(&report);
        Ok(report)
    }

    /// The whole group send as one script, where the layout allows it (one server, no
    /// encryption, one capacity for every channel: see `GROUP_SEND` in `scripts.rs`); `None`
    /// where the two steps must stay apart.
    pub(super) fn one_trip_group_send(
        &self,
        group: &str,
        message: &Message,
    ) -> Result<Option<Cmd>, LayerError> {
        self.check_open()?;
        validate_group(group)?;
        if self.servers.len() != 1
            || self.cluster.is_some()
            || self.codec.encrypts()
            || !self.layer_config().channel_capacity.is_empty()
        {
            return Ok(None);
        }
        let (count, entries) = self
            .codec
            .entries(message)
            .map_err(|e| MessageError::Encode(e.to_string()))?;
        let now = wall_clock();
        let mut cmd = ::redis::cmd("EVALSHA");
        cmd.arg(&scripts().group_send.sha)
            .arg(1)
            .arg(self.group_key(group))
            .arg(now - self.layer_config().group_expiry.as_secs_f64())
            .arg(now)
            .arg(now - self.expiry_secs())
            .arg(self.ttl_millis())
            .arg(&self.config.prefix)
            .arg(self.layer_config().capacity)
            .arg(self.codec.random_prefix())
            .arg(count)
            .arg(entries)
            .arg(crate::name::MAX_NAME_LENGTH);
        Ok(Some(cmd))
    }

    /// A blocking group send: the one-script form on the caller's thread (one round trip,
    /// no hand-off to the command thread), else the two steps.
    pub(super) fn group_send_blocking(
        &self,
        group: &str,
        message: Message,
    ) -> Result<GroupSendReport, LayerError> {
        self.layer_config().check_message(&message)?;
        match self.one_trip_group_send(group, &message)? {
            Some(cmd) => {
                let mut cmds = vec![cmd];
                cmds.extend(self.replica_wait());
                let reply = self.servers[0].commands.run(&cmds);
                self.one_trip_report(group, reply)
            }
            None => crate::runtime::block_on(self.group_send(group, message)),
        }
    }

    /// Reads and counts the answer of the one-script group send.
    fn one_trip_report(
        &self,
        group: &str,
        reply: Result<Vec<::redis::Value>, BackendError>,
    ) -> Result<GroupSendReport, LayerError> {
        let values = reply?;
        let wait_reply: Vec<::redis::Value> = values.get(1).cloned().into_iter().collect();
        let reply = one_value(values, "group send")?;
        let mut report = GroupSendReport::default();
        let mut failed_keys = 0u64;
        if let ::redis::Value::Array(items) = reply {
            for (i, item) in items.into_iter().enumerate() {
                match (i, item) {
                    (0, ::redis::Value::Int(n)) => {
                        Counters::add(&self.counters.expired, u64::try_from(n).unwrap_or(0));
                    }
                    (1, ::redis::Value::Int(n)) => {
                        report.delivered = usize::try_from(n).unwrap_or(0)
                    }
                    (2, ::redis::Value::Int(n)) => {
                        report.skipped_full = usize::try_from(n).unwrap_or(0);
                    }
                    (3, ::redis::Value::Int(n)) => {
                        report.skipped_failed = usize::try_from(n).unwrap_or(0);
                    }
                    (_, _key) => {
                        failed_keys += 1;
                        #[cfg(feature = "tracing")]
                        if let ::redis::Value::BulkString(key) = &_key {
                            tracing::warn!(
                                group,
                                key = %String::from_utf8_lossy(key),
                                "group_send skipped a member whose redis key holds another type of data"
                            );
                        }
                    }
                }
            }
        }
        #[cfg(not(feature = "tracing"))]
        let _ = group;
        Counters::add(&self.counters.backend_errors, failed_keys);
        self.note_replication(&wait_reply, report.delivered as u64);
        self.counters.group_send(&report);
        Ok(report)
    }

    /// Runs a membership change built by `group_add_cmds` or `group_discard_cmds`.
    pub(super) async fn group_change(
        &self,
        change: Result<(usize, Vec<Cmd>), LayerError>,
    ) -> Result<(), LayerError> {
        let (server, cmds) = change?;
        all_ok(self.exec(server, cmds).await?)?;
        Ok(())
    }

    // ===== flush =====

    /// One page of `SCAN` on `server` for keys matching `pattern`, from `cursor`: the next
    /// cursor (0 at the end) and the keys.
    pub(super) async fn scan_page(
        &self,
        server: usize,
        pattern: &str,
        cursor: u64,
    ) -> Result<(u64, Vec<Vec<u8>>), LayerError> {
        let mut scan = ::redis::cmd("SCAN");
        scan.arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000);
        let reply = one_value(self.exec(server, vec![scan]).await?, "scan")?;
        Ok(scanned(reply)?)
    }

    pub(super) async fn flush(&self) -> Result<(), LayerError> {
        self.check_open()?;
        let pattern = format!("{}*", self.config.prefix);
        let group_prefix = self.group_key("");
        let mut dropped = 0u64;
        for server in 0..self.servers.len() {
            let mut cursor = 0u64;
            loop {
                let (next, keys) = self.scan_page(server, &pattern, cursor).await?;
                // On a cluster a script may touch one slot: one call per key there.
                let batches: Vec<&[Vec<u8>]> = if self.cluster.is_some() {
                    keys.chunks(1).collect()
                } else if keys.is_empty() {
                    Vec::new()
                } else {
                    vec![&keys[..]]
                };
                let flushes: Vec<Cmd> = batches
                    .iter()
                    .map(|batch| {
                        let mut flush = ::redis::cmd("EVALSHA");
                        flush.arg(&scripts().flush.sha).arg(batch.len());
                        for key in *batch {
                            flush.arg(key.as_slice());
                        }
                        flush.arg(&group_prefix).arg("__wake__:");
                        flush
                    })
                    .collect();
                if !flushes.is_empty() {
                    for reply in self.exec(server, flushes).await? {
                        let counted = ints(check_reply("flush", reply)?, "flush")?;
                        dropped += counted
                            .first()
                            .map_or(0, |&n| u64::try_from(n).unwrap_or(0));
                    }
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Counters::add(&self.counters.flushed, dropped);
        self.local.flush()?;
        Ok(())
    }

    pub(super) fn metrics(&self) -> MetricsSnapshot {
        self.counters
            .snapshot()
            .with_local_buffer(&self.local.metrics())
    }
}
