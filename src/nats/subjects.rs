//! Where a layer keeps what on the NATS server ([contract §5](crate::contract)).
//!
//! For the prefix `P` (default `asgi`):
//!
//! | what | where |
//! |---|---|
//! | the messages of channel `c` whose capacity is `N` | subject `P.ch.N.<c with . as ~>` in stream `P_ch_N` |
//! | the messages of a process-specific channel `a!b` | subject `P.ch.N.<a with . as ~>.!<b with . as ~>`: every channel a process made with one `new_channel` prefix shares the fourth token, so one subscription to `P.wake.N.<a>.*` hears all of them |
//! | a wake-up after such a message is stored | the same subject with `wake` for `ch` (a copy of the message, republished by the stream, with the sequence number of the one before it on its subject: a watching task uses copies that continue what it has read instead of reading them) |
//! | membership of channel `c` in group `g` | key `<g with . as />.<c with . as / and ! as =>` of bucket `P_groups` |
//!
//! Names are ASCII letters, digits, `-`, `_`, `.` and (in a channel) one `!`
//! ([`crate::name`]). A subject token cannot hold `.`, so `.` becomes `~`, which no name
//! contains: the mapping is one to one and a channel is always exactly one token, or two for a
//! process-specific channel (its non-local part, then `!` and its local part). Key-value
//! keys allow neither `!` nor `~`, so there `.` becomes `/` and `!` becomes `=`, again
//! characters no name contains; the group and the channel are then the key's two tokens.

/// The header holding a message's expiry in seconds, set by its sender.
pub(super) const EXPIRY_HEADER: &str = "Channel-Layer-Expiry";

/// The header a key-value client sets on a delete or purge mark (`DEL`, `PURGE`).
pub(super) const KV_OPERATION: &str = "KV-Operation";

/// A channel name as the end of a subject: one token, or for a process-specific channel two,
/// its non-local part (without the `!`) and its local part after a `!`.
pub(super) fn channel_tail(channel: &str) -> String {
    match channel.split_once('!') {
        Some((process, local)) => {
            format!("{}.!{}", process.replace('.', "~"), local.replace('.', "~"))
        }
        None => channel.replace('.', "~"),
    }
}

/// The channel the end of a subject stands for ([`channel_tail`]'s inverse), or `None` for
/// an end of another shape.
pub(super) fn channel_of_tail(tail: &str) -> Option<String> {
    let name = match tail.split_once('.') {
        Some((process, local)) => {
            let local = local.strip_prefix('!').filter(|l| !l.contains('.'))?;
            format!("{process}!{local}")
        }
        None => tail.to_owned(),
    }
    .replace('~', ".");
    crate::name::validate_channel(&name).ok()?;
    Some(name)
}

/// The name of the stream holding channels of capacity `capacity`.
pub(super) fn stream_name(prefix: &str, capacity: usize) -> String {
    format!("{}{capacity}", stream_name_head(prefix))
}

/// The subject messages for `channel` (of capacity `capacity`) are published on.
pub(super) fn channel_subject(prefix: &str, capacity: usize, channel: &str) -> String {
    format!(
        "{}{}",
        channel_subject_head(prefix, capacity),
        channel_tail(channel)
    )
}

/// What the names of this prefix's channel streams start with (the capacity follows).
pub(super) fn stream_name_head(prefix: &str) -> String {
    format!("{prefix}_ch_")
}

/// What the subjects of the stream of capacity `capacity` start with (the token follows).
pub(super) fn channel_subject_head(prefix: &str, capacity: usize) -> String {
    format!("{prefix}.ch.{capacity}.")
}

/// The subjects the stream of capacity `capacity` captures.
pub(super) fn stream_subjects(prefix: &str, capacity: usize) -> String {
    format!("{prefix}.ch.{capacity}.>")
}

/// The subject a stored message's headers are republished on, to wake waiting receivers.
pub(super) fn wake_subject(prefix: &str, capacity: usize, channel: &str) -> String {
    format!(
        "{}{}",
        wake_subject_head(prefix, capacity),
        channel_tail(channel)
    )
}

/// What the wake subjects of the stream of capacity `capacity` start with.
pub(super) fn wake_subject_head(prefix: &str, capacity: usize) -> String {
    format!("{prefix}.wake.{capacity}.")
}

/// The wake subjects of every process-specific channel whose non-local part is `process`
/// (with its `!`), of capacity `capacity`.
pub(super) fn process_wake_subjects(prefix: &str, capacity: usize, process: &str) -> String {
    format!(
        "{}{}.*",
        wake_subject_head(prefix, capacity),
        process.trim_end_matches('!').replace('.', "~")
    )
}

/// Where the stream of capacity `capacity` republishes to.
pub(super) fn wake_subjects(prefix: &str, capacity: usize) -> String {
    format!("{prefix}.wake.{capacity}.>")
}

/// The key-value bucket of group memberships.
pub(super) fn groups_bucket(prefix: &str) -> String {
    format!("{prefix}_groups")
}

/// The stream behind a key-value bucket.
pub(super) fn bucket_stream(bucket: &str) -> String {
    format!("KV_{bucket}")
}

/// The subjects of every key of a bucket.
pub(super) fn bucket_subjects(bucket: &str) -> String {
    format!("$KV.{bucket}.>")
}

fn key_part(name: &str) -> String {
    name.chars()
        .map(|c| match c {
            '.' => '/',
            '!' => '=',
            c => c,
        })
        .collect()
}

/// The key recording that `channel` is in `group`.
pub(super) fn member_key(group: &str, channel: &str) -> String {
    format!("{}.{}", key_part(group), key_part(channel))
}

/// The subject filter matching every member key of `group` in the bucket's stream.
pub(super) fn members_filter(bucket: &str, group: &str) -> String {
    format!("$KV.{bucket}.{}.*", key_part(group))
}

/// The bucket stream's subject of a member key.
pub(super) fn member_subject(bucket: &str, key: &str) -> String {
    format!("$KV.{bucket}.{key}")
}

/// The channel a member key's subject names, or `None` for a subject of another shape.
pub(super) fn member_of_subject(subject: &str) -> Option<String> {
    let channel = subject.rsplit('.').next()?;
    let name: String = channel
        .chars()
        .map(|c| match c {
            '/' => '.',
            '=' => '!',
            c => c,
        })
        .collect();
    crate::name::validate_channel(&name).ok()?;
    Some(name)
}

/// The group a member key's subject names, or `None` for a subject of another shape.
pub(super) fn group_of_subject(subject: &str) -> Option<String> {
    let mut tokens = subject.rsplit('.');
    let _channel = tokens.next()?;
    let group = tokens.next()?.replace('/', ".");
    crate::name::validate_group(&group).ok()?;
    Some(group)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_one_to_one() {
        for channel in ["a", "a.b", ".a.", "specific.abc!x.y", "a-b_c!", "x!"] {
            let subject = channel_subject("asgi", 100, channel);
            let tokens = if channel.contains('!') { 5 } else { 4 };
            assert_eq!(subject.split('.').count(), tokens, "{subject}");
            assert!(subject.split('.').all(|t| !t.is_empty()), "{subject}");
            let tail = subject
                .strip_prefix(&channel_subject_head("asgi", 100))
                .unwrap();
            assert_eq!(channel_of_tail(tail).as_deref(), Some(channel));
            let wake = wake_subject("asgi", 100, channel);
            assert_eq!(wake, subject.replacen(".ch.", ".wake.", 1));
            let key = member_key("room.1", channel);
            assert_eq!(key.matches('.').count(), 1, "{key}");
            let subject = member_subject("asgi_groups", &key);
            assert_eq!(member_of_subject(&subject).as_deref(), Some(channel));
            assert_eq!(group_of_subject(&subject).as_deref(), Some("room.1"));
            assert!(
                key.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-/_=.".contains(&b))
            );
        }
        assert_eq!(members_filter("b", "g.x"), "$KV.b.g/x.*");
    }

    #[test]
    fn a_process_s_channels_share_one_wake_filter() {
        let filter = process_wake_subjects("asgi", 100, "reply.abc!");
        assert_eq!(filter, "asgi.wake.100.reply~abc.*");
        for channel in ["reply.abc!x", "reply.abc!y.z", "reply.abc!"] {
            let wake = wake_subject("asgi", 100, channel);
            assert_eq!(wake.split('.').count(), filter.split('.').count(), "{wake}");
            assert!(wake.starts_with(filter.trim_end_matches('*')), "{wake}");
        }
        // A normal channel of the same name as the process part is not under the filter.
        assert_eq!(
            wake_subject("asgi", 100, "reply.abc"),
            "asgi.wake.100.reply~abc"
        );
        for tail in ["a.b", "a.!", "!x", "a~~.!b.c"] {
            let shape_ok = channel_of_tail(tail).is_some();
            assert_eq!(shape_ok, tail == "a.!", "{tail}");
        }
    }
}
