//! The thread that takes messages from one Redis server for a layer's receivers.
//!
//! It first takes whatever is waiting on every pulled key in one pipelined round trip
//! (`ZPOPMIN key count` per key), and when nothing is waiting it blocks in `BZPOPMIN` on all
//! of them at once, plus the layer's wake key, for at most a second. What it takes goes into
//! the layer's local buffers.
//!
//! Faults: a reply to a pop carries messages already removed from Redis, so the puller waits
//! for it as long as the connection lives (up to [`Timeouts::reply_guard`]): a server frozen
//! for a while answers when it resumes, and nothing is lost. A lost connection is counted, and
//! made again with capped, jittered backoff; receivers keep waiting meanwhile. A key that
//! holds another type of data fails only the receives on its channel (see
//! [`Inner::key_error`]); the puller goes on with the other keys.

use std::sync::{Arc, Weak};
use std::thread;
use std::time::{Duration, Instant};

use ::redis::{Cmd, Value};

use super::Inner;
use super::conn::{Connection, Pool, Timeouts, check_reply};
use super::demand::PullKey;
use super::replies::popped;
use crate::error::{BackendError, BackendErrorKind};
use crate::metrics::Counters;

/// The longest a puller blocks before it looks at its keys (and the layer) again.
const BLOCK_SECS: f64 = 1.0;

/// On a cluster, how long a puller blocks on one slot's keys while it also waits on keys in
/// other slots (which its passes in between take from).
const CLUSTER_POLL_SECS: f64 = 0.02;

/// The first pause after a failure, and the longest.
const BACKOFF_FIRST: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

pub(super) fn start(inner: Weak<Inner>, server: usize) -> Result<(), BackendError> {
    thread::Builder::new()
        .name(format!("channel-layer-redis-pull-{server}"))
        .spawn(move || run(&inner, server))
        .map(drop)
        .map_err(|e| {
            BackendError::new(BackendErrorKind::Other, "starting the redis puller").with_source(e)
        })
}

/// Capped exponential backoff with jitter, so that many layers that lost the same server do
/// not come back at the same instant.
struct Backoff {
    next: Duration,
}

impl Backoff {
    fn new() -> Self {
        Backoff {
            next: BACKOFF_FIRST,
        }
    }

    fn reset(&mut self) {
        self.next = BACKOFF_FIRST;
    }

    /// The pause to take now: between half and all of the current step; doubles the step.
    fn pause(&mut self) -> Duration {
        let step = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        let half = step / 2;
        half + half.mul_f64(rand::random::<f64>())
    }
}

fn run(view: &Weak<Inner>, server: usize) {
    let mut conn: Option<Connection> = None;
    let mut backoff = Backoff::new();
    loop {
        let Some(layer) = view.upgrade() else { return };
        if layer.is_closed() {
            return;
        }
        let pool = layer.pool(server).clone();
        let c = match &mut conn {
            Some(c) => c,
            None => match pool.connect(Instant::now() + pool.timeouts().connect) {
                Ok(c) => conn.insert(c),
                Err(_) => {
                    // Counted by the pool; receivers keep waiting, taking directly meanwhile.
                    layer.puller_down(server);
                    drop(layer);
                    thread::sleep(backoff.pause());
                    continue;
                }
            },
        };
        match pull_once(&layer, &pool, c, server) {
            Ok(()) => backoff.reset(),
            Err(e) => {
                pool.failure(&e);
                // Until it passes again it takes from nothing: receivers take directly.
                layer.puller_down(server);
                // A server's error reply leaves the connection usable; anything else does not.
                // `Unavailable` too: a server that refuses as a replica, loading or failing
                // over is asked again where the master is on the next connection.
                if matches!(
                    e.kind(),
                    BackendErrorKind::Connection
                        | BackendErrorKind::Timeout
                        | BackendErrorKind::Protocol
                        | BackendErrorKind::Unavailable
                ) {
                    conn = None;
                }
                drop(layer);
                thread::sleep(backoff.pause());
            }
        }
    }
}

fn pack(cmds: &[Cmd]) -> Vec<u8> {
    cmds.iter().flat_map(Cmd::get_packed_command).collect()
}

/// Takes what is waiting, or blocks until something arrives or a second passes.
fn pull_once(
    layer: &Arc<Inner>,
    pool: &Pool,
    conn: &mut Connection,
    server: usize,
) -> Result<(), BackendError> {
    let timeouts: Timeouts = pool.timeouts();
    // On a cluster, each key is taken from the master serving its slot only.
    let keys = layer.pull_keys(server);
    // One message from one key: `BZPOPMIN` returns at once when the key holds one, so a pass
    // before it would only cost a round trip (a receive's reply waits on this).
    let single = keys.len() == 1 && keys[0].count == 1;
    if !keys.is_empty() && !single {
        let cmds: Vec<Cmd> = keys
            .iter()
            .map(|k| {
                let mut cmd = ::redis::cmd("ZPOPMIN");
                cmd.arg(&k.key).arg(k.count);
                cmd
            })
            .collect();
        let replies = conn
            .exchange(
                &pack(&cmds),
                cmds.len(),
                Some(Instant::now() + timeouts.reply_guard),
            )
            .inspect_err(|e| layer.take_lost(e, keys.iter().map(|k| k.count).sum()))?;
        let mut got = 0;
        let mut back = Vec::new();
        let mut refused = None;
        for (k, reply) in keys.iter().zip(replies) {
            if crate::redis::cluster::redirection(&reply).is_some() {
                layer.refresh_topology();
            }
            if let Value::ServerError(e) = &reply {
                let error = layer.key_error(&k.channel, e.code(), e.details().unwrap_or_default());
                if error.kind() != BackendErrorKind::WrongType {
                    refused = Some(error);
                }
                continue;
            }
            // Once one message goes back, the rest of this key's batch follows it, so that a
            // later message is never delivered before an earlier one.
            let mut returning = false;
            for (member, score) in popped(reply) {
                got += 1;
                returning = returning || !layer.pulled(&k.channel, &member, score);
                if returning {
                    back.push((k, member, score));
                }
            }
        }
        put_back(layer, conn, timeouts, back)?;
        if let Some(e) = refused {
            return Err(e);
        }
        if got > 0 {
            return Ok(());
        }
    }
    block(layer, conn, timeouts, &keys, server)
}

/// Blocks in `BZPOPMIN` on every key (and the wake key) for up to [`BLOCK_SECS`].
fn block(
    layer: &Arc<Inner>,
    conn: &mut Connection,
    timeouts: Timeouts,
    all_keys: &[PullKey],
    server: usize,
) -> Result<(), BackendError> {
    let (wake_key, keys, block_secs) = match &layer.cluster {
        None => (
            layer.wake_key.clone(),
            all_keys.iter().collect::<Vec<_>>(),
            BLOCK_SECS,
        ),
        Some(topology) => {
            // One blocking command may touch one slot: it waits on the keys of one slot (with
            // a wake key of this layer's in that slot), and briefly when keys in other slots
            // are waited on too, so the passes in between take from those.
            let slot_of = |k: &PullKey| crate::redis::cluster::key_slot(k.key.as_bytes());
            let slot = all_keys
                .first()
                .map(slot_of)
                .or_else(|| topology.a_slot_of(server))
                .unwrap_or(0);
            let keys: Vec<&PullKey> = all_keys.iter().filter(|k| slot_of(k) == slot).collect();
            let secs = if keys.len() < all_keys.len() {
                CLUSTER_POLL_SECS
            } else {
                BLOCK_SECS
            };
            let wake = format!(
                "{}__wake__:{{{}}}:{}",
                layer.config.prefix,
                topology.tag_for(slot),
                layer.client_prefix
            );
            *layer.servers[server].wake_key.lock() = wake.clone();
            (wake, keys, secs)
        }
    };
    let mut cmd = ::redis::cmd("BZPOPMIN");
    cmd.arg(&wake_key);
    for k in &keys {
        cmd.arg(&k.key);
    }
    cmd.arg(block_secs);
    if !layer.enter_block(server) {
        // The demand changed during the pass: pass again over the new keys.
        return Ok(());
    }
    let deadline = Instant::now() + Duration::from_secs_f64(block_secs) + timeouts.reply_guard;
    let exchanged = conn.exchange(&cmd.get_packed_command(), 1, Some(deadline));
    layer.leave_block();
    let mut replies = exchanged.inspect_err(|e| layer.take_lost(e, 1))?;
    // A key that turned to another type since the pass above: the next pass names it.
    let reply = check_reply("waiting for messages in redis", replies.remove(0))?;
    let Value::Array(mut parts) = reply else {
        return Ok(());
    };
    if parts.len() != 3 {
        return Ok(());
    }
    let Value::BulkString(key) = parts.remove(0) else {
        return Ok(());
    };
    if let Some(&k) = keys.iter().find(|k| k.key.as_bytes() == key.as_slice()) {
        let mut back = Vec::new();
        for (member, score) in popped(Value::Array(parts)) {
            if !layer.pulled(&k.channel, &member, score) {
                back.push((k, member, score));
            }
        }
        put_back(layer, conn, timeouts, back)?;
    }
    Ok(())
}

/// Returns messages taken for receivers that left meanwhile to their key, with their scores,
/// so they keep their place in line and count against the channel's capacity again.
fn put_back(
    layer: &Inner,
    conn: &mut Connection,
    timeouts: Timeouts,
    back: Vec<(&PullKey, Vec<u8>, f64)>,
) -> Result<(), BackendError> {
    if back.is_empty() {
        return Ok(());
    }
    let mut cmds = Vec::with_capacity(back.len() * 2);
    for (k, member, score) in &back {
        let mut zadd = ::redis::cmd("ZADD");
        zadd.arg(&k.key).arg(*score).arg(member.as_slice());
        let mut ttl = ::redis::cmd("PEXPIRE");
        ttl.arg(&k.key).arg(layer.ttl_millis());
        cmds.push(zadd);
        cmds.push(ttl);
    }
    let count = back.len() as u64;
    let back_again = back;
    match conn.exchange(
        &pack(&cmds),
        cmds.len(),
        Some(Instant::now() + timeouts.operation),
    ) {
        Ok(replies) => {
            // A ZADD the server refused (the slot moved away, on a cluster) put nothing back:
            // that message waits in the local buffers instead.
            for (i, (k, member, score)) in back_again.into_iter().enumerate() {
                if matches!(replies.get(2 * i), Some(Value::ServerError(_))) {
                    layer.arrived(&k.channel, &member, score);
                }
            }
            Ok(())
        }
        Err(e) => {
            if e.may_have_applied() {
                // They may be back in Redis or gone: never delivered twice, counted as lost.
                Counters::add(&layer.counters.lost, count);
            } else {
                // Provably still here: they wait in the local buffers instead.
                for (k, member, score) in back_again {
                    layer.arrived(&k.channel, &member, score);
                }
            }
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_with_jitter_and_resets() {
        let mut b = Backoff::new();
        let first = b.pause();
        assert!(first >= BACKOFF_FIRST / 2 && first <= BACKOFF_FIRST);
        for _ in 0..20 {
            let p = b.pause();
            assert!(p <= BACKOFF_MAX);
        }
        let late = b.pause();
        assert!(late >= BACKOFF_MAX / 2);
        b.reset();
        assert!(b.pause() <= BACKOFF_FIRST);
    }
}
