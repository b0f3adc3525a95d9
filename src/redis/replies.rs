//! Reading Redis's replies.

use ::redis::Value as RedisValue;

use super::conn::check_reply;
use crate::error::{BackendError, BackendErrorKind};
use crate::layer::GroupSendReport;

pub(super) fn protocol(what: &str, got: &RedisValue) -> BackendError {
    BackendError::new(
        BackendErrorKind::Protocol,
        format!("unexpected reply to {what}: {got:?}"),
    )
}

pub(super) fn server_error(what: &str, value: RedisValue) -> Result<RedisValue, BackendError> {
    check_reply(what, value)
}

pub(super) fn one_value(values: Vec<RedisValue>, what: &str) -> Result<RedisValue, BackendError> {
    let value = values
        .into_iter()
        .next()
        .ok_or_else(|| protocol(what, &RedisValue::Nil))?;
    server_error(what, value)
}

pub(super) fn ints(value: RedisValue, what: &str) -> Result<Vec<i64>, BackendError> {
    match value {
        RedisValue::Array(items) => items
            .into_iter()
            .map(|v| match v {
                RedisValue::Int(n) => Ok(n),
                other => Err(protocol(what, &other)),
            })
            .collect(),
        RedisValue::Int(n) => Ok(vec![n]),
        other => Err(protocol(what, &other)),
    }
}

pub(super) fn member_names(value: RedisValue) -> Vec<String> {
    match value {
        RedisValue::Array(items) => items
            .into_iter()
            .filter_map(|v| match v {
                RedisValue::BulkString(b) => String::from_utf8(b).ok(),
                RedisValue::SimpleString(s) => Some(s),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// What became of one key of a group delivery.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Delivered,
    Full,
    Failed,
}

/// Counts a group delivery script's reply (expired messages dropped, then the 1-based indices
/// of full keys, and the negated indices of keys that hold another type of data) into
/// `report`; returns the expired count and the indices of the keys that failed.
pub(super) fn tally(
    report: &mut GroupSendReport,
    reply: RedisValue,
    sizes: &[usize],
) -> (u64, Vec<usize>) {
    let mut outcomes = vec![Outcome::Delivered; sizes.len()];
    let mut expired = 0;
    if let RedisValue::Array(items) = reply {
        for (n, item) in items.into_iter().enumerate() {
            let RedisValue::Int(i) = item else { continue };
            if n == 0 {
                expired = u64::try_from(i).unwrap_or(0);
                continue;
            }
            let (index, outcome) = if i < 0 {
                (i.unsigned_abs(), Outcome::Failed)
            } else {
                (i.unsigned_abs(), Outcome::Full)
            };
            if let Some(slot) = usize::try_from(index)
                .ok()
                .and_then(|i| i.checked_sub(1))
                .and_then(|i| outcomes.get_mut(i))
            {
                *slot = outcome;
            }
        }
    }
    let mut failed = Vec::new();
    for (i, (size, outcome)) in sizes.iter().zip(outcomes).enumerate() {
        match outcome {
            Outcome::Delivered => report.delivered += size,
            Outcome::Full => report.skipped_full += size,
            Outcome::Failed => {
                report.skipped_failed += size;
                failed.push(i);
            }
        }
    }
    (expired, failed)
}

/// `(member, score)` pairs from a `ZPOPMIN` or `BZPOPMIN` reply.
pub(crate) fn popped(value: RedisValue) -> Vec<(Vec<u8>, f64)> {
    let items = match value {
        RedisValue::Array(items) => items,
        _ => return Vec::new(),
    };
    let mut out = Vec::with_capacity(items.len() / 2);
    let mut it = items.into_iter();
    while let (Some(member), Some(score)) = (it.next(), it.next()) {
        let member = match member {
            RedisValue::BulkString(b) => b,
            _ => continue,
        };
        let score = match score {
            RedisValue::Double(x) => x,
            RedisValue::BulkString(b) => std::str::from_utf8(&b)
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0.0),
            RedisValue::Int(n) => n as f64,
            _ => 0.0,
        };
        out.push((member, score));
    }
    out
}

pub(super) fn scanned(value: RedisValue) -> Result<(u64, Vec<Vec<u8>>), BackendError> {
    let RedisValue::Array(mut parts) = value else {
        return Err(protocol("scan", &value));
    };
    if parts.len() != 2 {
        return Err(protocol("scan", &RedisValue::Array(parts)));
    }
    let keys = match parts.pop() {
        Some(RedisValue::Array(keys)) => keys
            .into_iter()
            .filter_map(|k| match k {
                RedisValue::BulkString(b) => Some(b),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    let cursor = match parts.pop() {
        Some(RedisValue::BulkString(b)) => {
            std::str::from_utf8(&b).ok().and_then(|s| s.parse().ok())
        }
        Some(RedisValue::Int(n)) => u64::try_from(n).ok(),
        _ => None,
    }
    .ok_or_else(|| BackendError::new(BackendErrorKind::Protocol, "bad SCAN cursor"))?;
    Ok((cursor, keys))
}

pub(super) fn all_ok(values: Vec<RedisValue>) -> Result<(), BackendError> {
    for value in values {
        server_error("group membership", value)?;
    }
    Ok(())
}
