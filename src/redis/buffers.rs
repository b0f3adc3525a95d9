//! The local buffers: messages taken from Redis wait here, per channel, for the receivers of
//! this layer. Whatever arrives is decoded, checked for expiry and queued, or dropped and
//! counted (expired, undecodable, overflowed); nothing taken from Redis is dropped unseen.

use std::time::{Duration, Instant};

use ::redis::Value as RedisValue;

use super::demand::{BAD_KEY_RECHECK, Pulled};
use super::replies::popped;
use super::{Inner, wall_clock};
use crate::error::{BackendError, BackendErrorKind, SendError};
use crate::metrics::Counters;
use crate::name::non_local_name;

impl Inner {
    /// Takes a message a puller got from Redis. If the receiver it was taken for has gone in the
    /// meantime, it is not kept here (`false`: the puller puts it back where it was, score and
    /// all, so it keeps its place); otherwise as [`Inner::arrived`]. A message whose score says
    /// it has expired is dropped and counted either way: putting it back would only have it met
    /// (and counted) by a later receive.
    pub(crate) fn pulled(&self, from: &Pulled, member: &[u8], score: f64) -> bool {
        if !self.is_wanted(from) {
            if self.life_left(score).is_none() {
                Counters::add(&self.counters.expired, 1);
                return true;
            }
            return false;
        }
        self.arrived(from, member, score);
        true
    }

    /// How many seconds a message sent at `score` has left before it expires; `None` once it
    /// has expired (also for a NaN score from a foreign writer).
    fn life_left(&self, score: f64) -> Option<f64> {
        let left = score + self.expiry_secs() - wall_clock();
        (left > 0.0).then_some(left)
    }

    /// Takes a message a puller (or a direct take) got from Redis: decodes it, drops it if it
    /// expired, and queues it for the channel(s) it is for.
    pub(crate) fn arrived(&self, from: &Pulled, member: &[u8], score: f64) {
        let decoded = match self.codec.unpack(member, self.expiry_secs()) {
            Ok(decoded) => decoded,
            Err(e) if e.is_expired() => {
                Counters::add(&self.counters.expired, 1);
                return;
            }
            Err(_) => {
                Counters::add(&self.counters.undecodable, 1);
                return;
            }
        };
        let Some(left) = self.life_left(score) else {
            Counters::add(&self.counters.expired, 1);
            return;
        };
        let deadline = Instant::now() + Duration::from_secs_f64(left.min(1e9));
        let deliver = |channel: &str| match self.local.deliver_arrived(
            channel,
            decoded.message.clone(),
            deadline,
        ) {
            Ok(()) => {}
            Err(SendError::Full { .. }) => Counters::add(&self.counters.overflowed, 1),
            Err(_) => Counters::add(&self.counters.undecodable, 1),
        };
        match from {
            Pulled::Normal(channel) => deliver(channel),
            Pulled::Process(non_local) => match &decoded.asgi_channels {
                Some(names) => {
                    for name in names {
                        // Only channels under the key's own non-local part belong here.
                        if non_local_name(name) == non_local {
                            deliver(name);
                        } else {
                            Counters::add(&self.counters.undecodable, 1);
                        }
                    }
                }
                // Without a name, channels_redis buffers it under the bare non-local name.
                None => deliver(non_local),
            },
        }
    }

    /// Queues what a direct take (`ZPOPMIN` of up to `count`) got. A key of the wrong type is
    /// recorded, so the receives on its channel fail with an error naming it. A take whose
    /// reply was lost may have removed messages nobody will receive: they are counted lost.
    pub(super) fn took(
        &self,
        from: &Pulled,
        count: usize,
        reply: Result<Vec<RedisValue>, BackendError>,
    ) -> Result<(), BackendError> {
        let values = reply.inspect_err(|e| self.take_lost(e, count))?;
        for value in values {
            if super::cluster::redirection(&value).is_some() {
                // The slot moved: read the map again; the pullers take from the new owner.
                self.refresh_topology();
            }
            if let RedisValue::ServerError(e) = &value {
                let error = self.key_error(from, e.code(), e.details().unwrap_or_default());
                return Err(error);
            }
            for (member, score) in popped(value) {
                self.arrived(from, &member, score);
            }
        }
        Ok(())
    }

    /// Counts what a take whose reply never came may have removed from Redis: `count`
    /// messages at most, as lost (an upper bound: the take may have found fewer, or none).
    pub(crate) fn take_lost(&self, error: &BackendError, count: usize) {
        if error.may_have_applied() {
            Counters::add(&self.counters.lost, count as u64);
        }
    }

    /// The error for a server's refusal to take from `from`'s key; a key that holds another
    /// type of data is recorded as bad (see [`Inner::bad_key`]).
    pub(crate) fn key_error(&self, from: &Pulled, code: &str, details: &str) -> BackendError {
        let kind = super::conn::server_error_kind(code);
        let error = BackendError::new(
            kind,
            format!(
                "taking from redis key {:?}: {code} {details}",
                self.key(from.name())
            ),
        );
        if kind == BackendErrorKind::WrongType {
            self.bad_keys
                .lock()
                .insert(from.name().to_owned(), (Instant::now(), error.clone()));
            Counters::add(&self.counters.backend_errors, 1);
        }
        error
    }

    /// The error a receive on `channel` fails with while its key is known to hold another type
    /// of data.
    pub(super) fn bad_key(&self, channel: &str) -> Option<BackendError> {
        let bad = self.bad_keys.lock();
        if bad.is_empty() {
            return None;
        }
        bad.get(non_local_name(channel))
            .filter(|(at, _)| at.elapsed() < BAD_KEY_RECHECK)
            .map(|(_, e)| e.clone())
    }
}
