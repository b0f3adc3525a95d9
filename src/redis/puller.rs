//! The thread that takes messages from one Redis server for a layer's receivers.
//!
//! It first takes whatever is waiting on every pulled key in one pipelined round trip
//! (`ZPOPMIN key count` per key), and when nothing is waiting it blocks in `BZPOPMIN` on all
//! of them at once, plus the layer's wake key, for at most a second. What it takes goes into
//! the layer's local buffers. On a connection failure it records the fault (receivers report
//! it) and retries with backoff; when the server returns, it carries on with the same layer.

use std::sync::Weak;
use std::thread;
use std::time::Duration;

use ::redis::{Connection, Value};

use super::conn::{Timeouts, backend_error, connect};
use super::{Inner, PullerView, popped};
use crate::error::{BackendError, BackendErrorKind};

/// The longest a puller blocks before it looks at its keys (and the layer) again.
const BLOCK_SECS: f64 = 1.0;

pub(super) fn start(
    inner: Weak<Inner>,
    server: usize,
    timeouts: Timeouts,
) -> Result<(), BackendError> {
    let view = PullerView::from(inner);
    thread::Builder::new()
        .name(format!("channel-layer-redis-pull-{server}"))
        .spawn(move || run(&view, server, timeouts))
        .map(drop)
        .map_err(|e| {
            BackendError::new(BackendErrorKind::Other, "starting the redis puller").with_source(e)
        })
}

fn run(view: &PullerView, server: usize, timeouts: Timeouts) {
    let mut conn: Option<Connection> = None;
    let mut backoff = Duration::from_millis(50);
    loop {
        let Some(layer) = view.upgrade() else { return };
        if layer.is_closed() {
            return;
        }
        if conn.is_none() {
            let read = Duration::from_secs_f64(BLOCK_SECS) + timeouts.operation;
            match connect(&layer.client(server), timeouts, read) {
                Ok(c) => {
                    conn = Some(c);
                    backoff = Duration::from_millis(50);
                }
                Err(e) => {
                    layer.set_fault(server, Some(e));
                    drop(layer);
                    thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            }
        }
        let c = conn.as_mut().expect("connected");
        match pull_once(&layer, c) {
            Ok(()) => layer.set_fault(server, None),
            Err(e) => {
                layer.set_fault(server, Some(e));
                conn = None;
            }
        }
    }
}

/// Takes what is waiting, or blocks until something arrives or a second passes.
fn pull_once(layer: &super::PullerHandle, conn: &mut Connection) -> Result<(), BackendError> {
    let keys = layer.keys();
    if !keys.is_empty() {
        let mut pipe = ::redis::pipe();
        for k in &keys {
            pipe.cmd("ZPOPMIN").arg(&k.key).arg(k.count);
        }
        let replies: Vec<Value> = pipe
            .query(conn)
            .map_err(|e| backend_error("taking messages from redis", &e))?;
        let mut got = 0;
        let mut back = Vec::new();
        for (k, reply) in keys.iter().zip(replies) {
            // Once one message goes back, the rest of this key's batch follows it, so that a
            // later message is never delivered before an earlier one.
            let mut returning = false;
            for (member, score) in popped(reply) {
                got += 1;
                returning = returning || !layer.pulled(&k.channel, &member, score);
                if returning {
                    back.push((&k.key, member, score));
                }
            }
        }
        put_back(layer, conn, back)?;
        if got > 0 {
            return Ok(());
        }
    }
    let mut cmd = ::redis::cmd("BZPOPMIN");
    cmd.arg(layer.wake_key());
    for k in &keys {
        cmd.arg(&k.key);
    }
    cmd.arg(BLOCK_SECS);
    let reply: Value = cmd
        .query(conn)
        .map_err(|e| backend_error("waiting for messages in redis", &e))?;
    if let Value::Array(mut parts) = reply {
        if parts.len() == 3 {
            let key = match parts.remove(0) {
                Value::BulkString(b) => b,
                _ => return Ok(()),
            };
            if let Some(k) = keys.iter().find(|k| k.key.as_bytes() == key.as_slice()) {
                let mut back = Vec::new();
                for (member, score) in popped(Value::Array(parts)) {
                    if !layer.pulled(&k.channel, &member, score) {
                        back.push((&k.key, member, score));
                    }
                }
                put_back(layer, conn, back)?;
            }
        }
    }
    Ok(())
}

/// Returns messages taken for receivers that left meanwhile to their key, with their scores,
/// so they keep their place in line and count against the channel's capacity again.
fn put_back(
    layer: &super::PullerHandle,
    conn: &mut Connection,
    back: Vec<(&String, Vec<u8>, f64)>,
) -> Result<(), BackendError> {
    if back.is_empty() {
        return Ok(());
    }
    let mut pipe = ::redis::pipe();
    for (key, member, score) in back {
        pipe.cmd("ZADD").arg(key).arg(score).arg(member).ignore();
        pipe.cmd("PEXPIRE")
            .arg(key)
            .arg(layer.expiry_millis())
            .ignore();
    }
    pipe.query::<()>(conn)
        .map_err(|e| backend_error("returning messages to redis", &e))
}
