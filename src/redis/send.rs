//! Sending: what a send stores and where, the blocking send on the caller's thread, the async
//! send bundled by the command thread, and reading the send script's answer.

use std::sync::Arc;

use ::redis::Value as RedisValue;

use super::conn::SendOne;
use super::replies::{ints, one_value};
use super::scripts::scripts;
use super::{Inner, wall_clock};
use crate::codec::AsgiChannel;
use crate::error::{BackendError, SendError};
use crate::message::{Message, MessageError};
use crate::metrics::Counters;
use crate::name::{is_process_specific, non_local_name, validate_channel};

/// Whether the send script's reply (the first of `values`) says the message was added.
fn added(values: &[RedisValue]) -> bool {
    matches!(values.first(), Some(RedisValue::Array(a)) if a.first() == Some(&RedisValue::Int(1)))
}

impl Inner {
    /// What sending `message` to `channel` stores, and the server it goes to: a process
    /// channel's message goes to the server of its non-local name, a normal channel's to the
    /// next server in turn (as channels_redis does).
    fn send_one(&self, channel: &str, message: &Message) -> Result<(usize, SendOne), MessageError> {
        let (key, asgi, server) = if is_process_specific(channel) {
            let non_local = non_local_name(channel);
            let key = self.key(non_local);
            let server = self.server_of_key(&key, || self.server_for(non_local));
            (key, AsgiChannel::One(channel), server)
        } else {
            let key = self.key(channel);
            let server = self.server_of_key(&key, || self.round_robin());
            (key, AsgiChannel::None, server)
        };
        let member = self
            .codec
            .pack(message, asgi)
            .map_err(|e| MessageError::Encode(e.to_string()))?;
        let now = wall_clock();
        let send = SendOne {
            key,
            member,
            score: now,
            cutoff: now - self.expiry_secs(),
            capacity: self.layer_config().capacity_for(channel),
            ttl_millis: self.ttl_millis(),
        };
        Ok((server, send))
    }

    /// Checks a send and builds what it stores.
    fn prepare_send(
        &self,
        channel: &str,
        message: Message,
    ) -> Result<(Message, usize, SendOne), SendError> {
        if self.is_closed() {
            return Err(SendError::Closed { message });
        }
        if let Err(error) = validate_channel(channel) {
            return Err(SendError::InvalidName { error, message });
        }
        if let Err(error) = self.layer_config().check_message(&message) {
            return Err(SendError::InvalidMessage { error, message });
        }
        match self.send_one(channel, &message) {
            Ok((server, send)) => Ok((message, server, send)),
            Err(error) => Err(SendError::InvalidMessage { error, message }),
        }
    }

    /// A send on the caller's thread, over a pooled connection: one round trip, bounded by
    /// the operation timeout.
    pub(super) fn send_blocking(&self, channel: &str, message: Message) -> Result<(), SendError> {
        let (message, server, send) = self.prepare_send(channel, message)?;
        let capacity = send.capacity;
        let mut cmds = vec![Self::send_cmd(&send)];
        cmds.extend(self.replica_wait());
        let reply = self.run_blocking(server, &cmds);
        if let Ok(values) = &reply {
            self.note_replication(values, u64::from(added(values)));
        }
        self.sent(channel, &send.key, capacity, message, reply, true)
    }

    /// The send script's command for `send`.
    fn send_cmd(send: &SendOne) -> ::redis::Cmd {
        let mut cmd = ::redis::cmd("EVALSHA");
        cmd.arg(&scripts().send.sha)
            .arg(1)
            .arg(&send.key)
            .arg(send.member.as_slice())
            .arg(send.score)
            .arg(send.cutoff)
            .arg(send.capacity)
            .arg(send.ttl_millis);
        cmd
    }

    /// A send through the command thread, which bundles it with the other sends queued for the
    /// same key into one script call. `count_full`: whether a refusal as full is counted (a
    /// waiting send counts only the refusal it gives up on).
    pub(super) async fn send_async(
        &self,
        channel: &str,
        message: Message,
        count_full: bool,
    ) -> Result<(), SendError> {
        let (message, server, send) = self.prepare_send(channel, message)?;
        let (capacity, key) = (send.capacity, send.key.clone());
        let reply = if self.cluster.is_some() || self.config.replica_acks > 0 {
            // One script call per send, so a redirection is followed like any command's, and
            // the replicas' confirmation is asked for on the same connection.
            let mut cmds = vec![Self::send_cmd(&send)];
            cmds.extend(self.replica_wait());
            let reply = self.exec(server, cmds).await;
            if let Ok(values) = &reply {
                self.note_replication(values, u64::from(added(values)));
            }
            reply
        } else {
            self.servers[server].commands.send_async(send).await
        };
        self.sent(channel, &key, capacity, message, reply, count_full)
    }

    /// A send that waits for room until `deadline`, trying again with a capped backoff, so a
    /// waiting producer costs the server at most about fifty tries a second.
    pub(super) async fn send_until(
        &self,
        channel: &str,
        message: Message,
        deadline: Option<std::time::Instant>,
    ) -> Result<(), SendError> {
        let result = crate::layer::retry_while_full(message, deadline, |m| {
            Box::pin(self.send_async(channel, m, false))
        })
        .await;
        if matches!(result, Err(SendError::Full { .. })) {
            Counters::add(&self.counters.rejected_full, 1);
        }
        result
    }

    /// Reads the send script's answer `[added, expired]` and counts it.
    fn sent(
        &self,
        channel: &str,
        key: &str,
        capacity: usize,
        message: Message,
        reply: Result<Vec<RedisValue>, BackendError>,
        count_full: bool,
    ) -> Result<(), SendError> {
        let what = format!("sending to redis key {key:?}");
        let outcome = reply.and_then(|values| ints(one_value(values, &what)?, &what));
        if let Ok(counts) = &outcome {
            let expired = counts.get(1).copied().unwrap_or(0);
            Counters::add(&self.counters.expired, u64::try_from(expired).unwrap_or(0));
        }
        match outcome.map(|counts| counts.first().copied()) {
            Ok(Some(1)) => {
                Counters::add(&self.counters.sent, 1);
                Ok(())
            }
            Ok(_) => {
                if count_full {
                    Counters::add(&self.counters.rejected_full, 1);
                }
                Err(SendError::Full {
                    channel: Arc::from(channel),
                    capacity,
                    message,
                })
            }
            Err(error) => Err(SendError::Backend { error, message }),
        }
    }
}
