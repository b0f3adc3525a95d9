//! Where a layer keeps what on the NATS server ([contract §5](crate::contract)).
//!
//! For the prefix `P` (default `asgi`):
//!
//! | what | where |
//! |---|---|
//! | the messages of channel `c` whose capacity is `N` | subject `P.ch.N.<c with . as ~>` in stream `P_ch_N` |
//! | a wake-up after such a message is stored | subject `P.wake.N.<c with . as ~>` (a copy of the message, republished by the stream, with the sequence number of the one before it on its subject: a watching task uses copies that continue what it has read instead of reading them) |
//! | membership of channel `c` in group `g` | key `<g with . as />.<c with . as / and ! as =>` of bucket `P_groups` |
//!
//! Names are ASCII letters, digits, `-`, `_`, `.` and (in a channel) one `!`
//! ([`crate::name`]). A subject token cannot hold `.`, so `.` becomes `~`, which no name
//! contains: the mapping is one to one and a channel is always exactly one token. Key-value
//! keys allow neither `!` nor `~`, so there `.` becomes `/` and `!` becomes `=`, again
//! characters no name contains; the group and the channel are then the key's two tokens.

/// The header holding a message's expiry in seconds, set by its sender.
pub(super) const EXPIRY_HEADER: &str = "Channel-Layer-Expiry";

/// The header a key-value client sets on a delete or purge mark (`DEL`, `PURGE`).
pub(super) const KV_OPERATION: &str = "KV-Operation";

/// A channel name as one subject token.
pub(super) fn channel_token(channel: &str) -> String {
    channel.replace('.', "~")
}

/// The channel a subject token stands for.
pub(super) fn channel_of_token(token: &str) -> String {
    token.replace('~', ".")
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
        channel_token(channel)
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
    format!("{prefix}.wake.{capacity}.{}", channel_token(channel))
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
            assert_eq!(subject.matches('.').count(), 3, "{subject}");
            let token = subject.rsplit('.').next().unwrap();
            assert_eq!(channel_of_token(token), channel);
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
}
