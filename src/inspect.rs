//! What a layer holds, for whoever runs one: [`Inspection`], as
//! [`ChannelLayer::inspect`](crate::ChannelLayer::inspect) returns it and the CLI's `inspect`
//! prints it.

use std::time::Duration;

use crate::metrics::MetricsSnapshot;
use crate::name::non_local_name;

/// A look at a layer's contents: its channels with their queues, its groups with their
/// members, and its counters. A backend offers it when
/// [`Capabilities::inspect`](crate::Capabilities::inspect) is set.
///
/// The lists are sorted by name. They hold at most the limit asked for each (channels, groups,
/// and the members listed for each group, whose number [`GroupState::member_count`] gives
/// whole); `complete` says whether everything fitted.
///
/// # Examples
///
/// ```
/// use channel_layer::prelude::*;
///
/// let layer = InMemoryLayer::default();
/// layer.send("jobs", Message::new("job"))?;
/// layer.group_add("room", "jobs")?;
/// let seen = layer.inspect(100)?;
/// assert_eq!(seen.channels[0].name, "jobs");
/// assert_eq!(seen.channels[0].queued, 1);
/// assert_eq!(seen.groups[0].members[0].channel, "jobs");
/// # Ok::<(), channel_layer::Error>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct Inspection {
    /// Channels holding messages (or, on some backends, known to the layer), by name.
    pub channels: Vec<ChannelState>,
    /// Groups with at least one member, by name.
    pub groups: Vec<GroupState>,
    /// The layer's counters and gauges at the time of the look.
    pub metrics: MetricsSnapshot,
    /// Whether every channel, group and member fitted within the limit.
    pub complete: bool,
}

/// One channel in an [`Inspection`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChannelState {
    /// Its name; on a backend that stores a process's channels together (Redis), the
    /// non-local part `prefix.process!` stands for all of them.
    pub name: String,
    /// Messages waiting on it.
    pub queued: u64,
    /// How long the oldest of them has waited, when known.
    pub oldest_age: Option<Duration>,
}

impl ChannelState {
    /// A channel with `queued` messages, the oldest `oldest_age` old.
    pub fn new(name: impl Into<String>, queued: u64, oldest_age: Option<Duration>) -> Self {
        ChannelState {
            name: name.into(),
            queued,
            oldest_age,
        }
    }

    /// The process a process-specific channel belongs to (its non-local part, `prefix.process!`),
    /// or `None` for a normal channel.
    pub fn process(&self) -> Option<&str> {
        let non_local = non_local_name(&self.name);
        (non_local.len() < self.name.len() || self.name.ends_with('!')).then_some(non_local)
    }
}

/// One group in an [`Inspection`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct GroupState {
    /// Its name.
    pub name: String,
    /// Its members, by channel name: at most the limit asked for (on Redis, those that joined
    /// or renewed longest ago; elsewhere the first by name).
    pub members: Vec<MemberState>,
    /// How many members it has, all of them, listed or not.
    pub member_count: u64,
}

impl GroupState {
    /// A group with `members`, all of them.
    pub fn new(name: impl Into<String>, members: Vec<MemberState>) -> Self {
        GroupState {
            name: name.into(),
            member_count: members.len() as u64,
            members,
        }
    }

    /// The same group, with `member_count` members in all (`members` lists some of them).
    #[must_use]
    pub fn with_member_count(mut self, member_count: u64) -> Self {
        self.member_count = member_count;
        self
    }
}

/// One member of a group in an [`Inspection`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct MemberState {
    /// The member channel.
    pub channel: String,
    /// How long ago its membership was last added or refreshed, when known.
    pub age: Option<Duration>,
}

impl MemberState {
    /// A member added `age` ago.
    pub fn new(channel: impl Into<String>, age: Option<Duration>) -> Self {
        MemberState {
            channel: channel.into(),
            age,
        }
    }
}
