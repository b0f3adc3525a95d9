//! Channel and group name validation.
//!
//! The rules follow the channel layer specification ([contract §1.3](crate::contract)): a name is made of ASCII
//! letters, digits, `-`, `_` and `.`; a channel name may contain one `!`, which splits it into a
//! *non-local* part (the process it belongs to) and a *local* part; a group name never contains
//! `!`; every name is shorter than [`MAX_NAME_LENGTH`] bytes.
//!
//! We deliberately accept only the ASCII subset. Python's regular expressions also let Unicode
//! digits and word characters through the local part (and a trailing `"\n"`), but names minted by
//! every known peer are ASCII, and a Rust peer accepting more would let a name through that a
//! stricter peer rejects.

use std::fmt;

/// Names must be strictly shorter than this many bytes ([contract §1.3](crate::contract): `len(name) < 100`).
pub const MAX_NAME_LENGTH: usize = 100;

/// What kind of name a [`NameError`] is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum NameKind {
    /// A channel name, such as `chat.lobby` or `specific.a1b2!c3d4`.
    Channel,
    /// A group name, such as `room-42`.
    Group,
    /// The prefix given to `new_channel`.
    Prefix,
}

impl fmt::Display for NameKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NameKind::Channel => "channel",
            NameKind::Group => "group",
            NameKind::Prefix => "channel prefix",
        })
    }
}

/// Why a name was rejected.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum NameProblem {
    /// The name is empty, or nothing stands before its `!`.
    Empty,
    /// The name is `len` bytes long; it must be shorter than [`MAX_NAME_LENGTH`].
    TooLong {
        /// The length of the rejected name in bytes.
        len: usize,
    },
    /// The name contains a character outside ASCII letters, digits, `-`, `_` and `.`.
    InvalidChar {
        /// The offending character.
        ch: char,
        /// Its byte offset in the name.
        index: usize,
    },
    /// A channel name contains more than one `!`.
    MultipleBangs,
    /// A group name (or a channel prefix) contains `!`, which only channel names may carry.
    Bang,
    /// A process-specific channel that this layer did not mint: a backend whose process
    /// channels live in a shared server receives only on its own (see
    /// [`crate::Capabilities::receive_any_process_channel`]).
    NotOwned,
}

impl fmt::Display for NameProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NameProblem::Empty => f.write_str("it is empty or has nothing before its '!'"),
            NameProblem::TooLong { len } => write!(
                f,
                "it is {len} bytes long; names must be shorter than {MAX_NAME_LENGTH}"
            ),
            NameProblem::InvalidChar { ch, index } => write!(
                f,
                "character {ch:?} at byte {index} is not an ASCII letter, digit, '-', '_' or '.'"
            ),
            NameProblem::MultipleBangs => f.write_str("it contains more than one '!'"),
            NameProblem::Bang => f.write_str("only channel names may contain '!'"),
            NameProblem::NotOwned => f.write_str(
                "it is a process-specific channel this layer did not mint, so it cannot receive on it",
            ),
        }
    }
}

/// A channel or group name was rejected; nothing was sent or changed.
#[derive(Clone, Debug, PartialEq, Eq, Hash, thiserror::Error)]
#[error("invalid {kind} name {name:?}: {problem}")]
pub struct NameError {
    kind: NameKind,
    name: String,
    problem: NameProblem,
}

impl NameError {
    /// Builds an error for a name that a backend rejects.
    pub fn new(kind: NameKind, name: impl Into<String>, problem: NameProblem) -> Self {
        NameError {
            kind,
            name: name.into(),
            problem,
        }
    }

    /// Whether a channel name, a group name or a prefix was rejected.
    pub fn kind(&self) -> NameKind {
        self.kind
    }

    /// The rejected name, as given.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Why it was rejected.
    pub fn problem(&self) -> &NameProblem {
        &self.problem
    }
}

/// Which bytes a name may hold (`[A-Za-z0-9._-]`), as a table: names are checked on every
/// new channel, so one lookup per byte.
const NAME_BYTES: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric() || c == b'-' || c == b'_' || c == b'.';
        b += 1;
    }
    table
};

#[inline]
fn is_name_byte(b: u8) -> bool {
    NAME_BYTES[b as usize]
}

fn first_bad_char(offset: usize, part: &str) -> NameProblem {
    let (index, ch) = part
        .char_indices()
        .find(|&(_, c)| !(c.is_ascii() && is_name_byte(c as u8)))
        .expect("called only when a bad byte exists");
    NameProblem::InvalidChar {
        ch,
        index: offset + index,
    }
}

fn check_len(name: &str) -> Result<(), NameProblem> {
    if name.len() >= MAX_NAME_LENGTH {
        Err(NameProblem::TooLong { len: name.len() })
    } else {
        Ok(())
    }
}

fn check_plain(offset: usize, part: &str) -> Result<(), NameProblem> {
    if part.bytes().all(is_name_byte) {
        Ok(())
    } else if part.contains('!') {
        // A `!` where none is allowed gets its own, clearer, reason.
        Err(NameProblem::Bang)
    } else {
        Err(first_bad_char(offset, part))
    }
}

fn channel_problem(name: &str) -> Result<(), NameProblem> {
    check_len(name)?;
    // One pass on the way that names take (valid bytes, at most one `!`); the slow path below
    // says exactly what is wrong.
    let bytes = name.as_bytes();
    let mut bang = None;
    let mut clean = true;
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'!' && bang.is_none() {
            bang = Some(i);
        } else if !is_name_byte(b) {
            clean = false;
            break;
        }
    }
    if clean && bang != Some(0) && !bytes.is_empty() {
        return Ok(());
    }
    let (non_local, local) = match name.find('!') {
        Some(i) => (&name[..i], Some(&name[i + 1..])),
        None => (name, None),
    };
    if non_local.is_empty() {
        return Err(NameProblem::Empty);
    }
    if !non_local.bytes().all(is_name_byte) {
        return Err(first_bad_char(0, non_local));
    }
    if let Some(local) = local {
        if local.contains('!') {
            return Err(NameProblem::MultipleBangs);
        }
        if !local.bytes().all(is_name_byte) {
            return Err(first_bad_char(non_local.len() + 1, local));
        }
    }
    Ok(())
}

/// Checks a channel name: `[A-Za-z0-9._-]+` optionally followed by `!` and `[A-Za-z0-9._-]*`,
/// shorter than [`MAX_NAME_LENGTH`] bytes.
///
/// # Examples
///
/// ```
/// use channel_layer::name::validate_channel;
///
/// assert!(validate_channel("chat.lobby").is_ok());
/// assert!(validate_channel("specific.abc!xyz").is_ok());
/// assert!(validate_channel("=+135!").is_err());
/// assert!(validate_channel("a!b!c").is_err());
/// ```
pub fn validate_channel(name: &str) -> Result<(), NameError> {
    channel_problem(name).map_err(|problem| NameError::new(NameKind::Channel, name, problem))
}

/// Checks a group name: `[A-Za-z0-9._-]+`, shorter than [`MAX_NAME_LENGTH`] bytes, no `!`.
///
/// # Examples
///
/// ```
/// use channel_layer::name::validate_group;
///
/// assert!(validate_group("room-42").is_ok());
/// assert!(validate_group("room!42").is_err());
/// ```
pub fn validate_group(name: &str) -> Result<(), NameError> {
    let check = || {
        check_len(name)?;
        if name.is_empty() {
            return Err(NameProblem::Empty);
        }
        check_plain(0, name)
    };
    check().map_err(|problem| NameError::new(NameKind::Group, name, problem))
}

/// Checks a prefix for `new_channel`: like a group name (no `!`), and short enough that
/// `extra` more bytes still make a valid name.
pub fn validate_prefix(prefix: &str, extra: usize) -> Result<(), NameError> {
    let check = || {
        if prefix.is_empty() {
            return Err(NameProblem::Empty);
        }
        if prefix.len() + extra >= MAX_NAME_LENGTH {
            return Err(NameProblem::TooLong {
                len: prefix.len() + extra,
            });
        }
        check_plain(0, prefix)
    };
    check().map_err(|problem| NameError::new(NameKind::Prefix, prefix, problem))
}

/// The non-local part of a channel name: up to and including the first `!`, or the whole name
/// when it has none ([contract §1.3](crate::contract), `non_local_name`).
///
/// ```
/// use channel_layer::name::non_local_name;
///
/// assert_eq!(non_local_name("specific.abc!xyz"), "specific.abc!");
/// assert_eq!(non_local_name("chat"), "chat");
/// ```
pub fn non_local_name(channel: &str) -> &str {
    match channel.find('!') {
        Some(i) => &channel[..=i],
        None => channel,
    }
}

/// Whether a channel name is process-specific (contains `!`).
pub fn is_process_specific(channel: &str) -> bool {
    channel.contains('!')
}

/// The part of a channel name that is safe to use as a metric label or span attribute:
/// the non-local part without its `!`, so that one label stands for all the channels a process
/// minted (process-specific names are unique and would make label cardinality unbounded).
pub fn label_name(channel: &str) -> &str {
    match channel.find('!') {
        Some(i) => &channel[..i],
        None => channel,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names() {
        for ok in [
            "a",
            "chat.lobby",
            "a-b_c.d",
            "foo!",
            "specific.x!y",
            "A9!z.-_",
        ] {
            assert!(validate_channel(ok).is_ok(), "{ok}");
        }
        let problem = |n: &str| validate_channel(n).unwrap_err().problem().clone();
        assert_eq!(problem(""), NameProblem::Empty);
        assert_eq!(problem("!x"), NameProblem::Empty);
        assert_eq!(problem("a!b!c"), NameProblem::MultipleBangs);
        assert_eq!(
            problem("=+135!"),
            NameProblem::InvalidChar { ch: '=', index: 0 }
        );
        assert_eq!(
            problem("ab!c?"),
            NameProblem::InvalidChar { ch: '?', index: 4 }
        );
        assert_eq!(
            problem("chat\n"),
            NameProblem::InvalidChar { ch: '\n', index: 4 }
        );
        assert_eq!(
            problem("a!é"),
            NameProblem::InvalidChar { ch: 'é', index: 2 }
        );
        assert!(validate_channel(&"c".repeat(99)).is_ok());
        assert_eq!(problem(&"c".repeat(100)), NameProblem::TooLong { len: 100 });
        assert_eq!(
            problem("¯\\_(ツ)_/¯"),
            NameProblem::InvalidChar { ch: '¯', index: 0 }
        );
    }

    #[test]
    fn group_names() {
        assert!(validate_group("room-42").is_ok());
        assert_eq!(
            validate_group("room!42").unwrap_err().problem(),
            &NameProblem::Bang
        );
        assert_eq!(
            validate_group("").unwrap_err().problem(),
            &NameProblem::Empty
        );
        assert!(validate_group(&"g".repeat(100)).is_err());
    }

    #[test]
    fn error_message_names_the_name() {
        let e = validate_channel("bad name").unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid channel name \"bad name\": character ' ' at byte 3 is not an ASCII letter, digit, '-', '_' or '.'"
        );
    }

    #[test]
    fn parts() {
        assert_eq!(non_local_name("a!b"), "a!");
        assert_eq!(non_local_name("a!"), "a!");
        assert_eq!(label_name("http.response!abc"), "http.response");
    }
}
