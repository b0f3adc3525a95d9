//! Counters every layer keeps, so that whatever it drops is visible.

use std::sync::atomic::{AtomicU64, Ordering};

/// A snapshot of a layer's counters and gauges.
///
/// Counters only grow (until the layer object is dropped); gauges (`queued_messages`,
/// `channels`, `groups`) describe the moment of the snapshot. For a backend shared between
/// processes, counters describe this layer object's own operations, and gauges what it can see
/// cheaply (zero where it cannot).
///
/// Accounting holds at any quiet moment: `sent + group_deliveries == received + expired +
/// flushed + queued_messages` for a layer that is the only user of its backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct MetricsSnapshot {
    /// Messages accepted by `send`.
    pub sent: u64,
    /// Messages handed to a receiver.
    pub received: u64,
    /// Sends rejected with `ChannelFull`.
    pub rejected_full: u64,
    /// Messages dropped because they expired before anyone received them.
    pub expired: u64,
    /// Messages dropped by `flush`.
    pub flushed: u64,
    /// Calls to `group_send`.
    pub group_sends: u64,
    /// Messages `group_send` delivered to members' channels.
    pub group_deliveries: u64,
    /// Members `group_send` skipped because their channel was full.
    pub group_skipped_full: u64,
    /// Members `group_send` skipped because their channel could not take the message for
    /// another reason (a network backend's key for it holds data of another type).
    pub group_skipped_failed: u64,
    /// Messages a network backend read but could not decode, and dropped.
    pub undecodable: u64,
    /// Messages a network backend took from its server but dropped because the local buffer of
    /// their channel was full (nobody here was receiving them fast enough).
    pub overflowed: u64,
    /// Messages a network backend may have lost in flight, counted at most: a take from its
    /// server whose reply never came (the server died, or cut the connection, with the take
    /// outstanding) counts as many messages as it asked for, although it may have found fewer
    /// or none; a message taken for a receiver that left, whose return to the server failed,
    /// counts one. Delivery is at most once: none of them is ever delivered twice.
    pub lost: u64,
    /// Failures talking to a network backend's server (lost connections, timeouts, refused
    /// commands), whether a caller saw them or a background thread retried.
    pub backend_errors: u64,
    /// Connections a network backend made again after one was lost or could not be made.
    pub reconnects: u64,
    /// Messages a network backend's server stored but no replica confirmed in time, where
    /// confirmation was asked for (Redis `replica_acks`): should that server fail now, a
    /// replica promoted in its place may not have them.
    pub unreplicated: u64,
    /// Messages queued now.
    pub queued_messages: u64,
    /// Channels holding messages or waiting receivers now.
    pub channels: u64,
    /// Groups with at least one member now.
    pub groups: u64,
}

/// Thread-safe counters a backend can embed; [`Counters::snapshot`] fills the counter fields of
/// a [`MetricsSnapshot`] (the gauges are the backend's to fill).
#[derive(Debug, Default)]
pub struct Counters {
    /// See [`MetricsSnapshot::sent`].
    pub sent: AtomicU64,
    /// See [`MetricsSnapshot::received`].
    pub received: AtomicU64,
    /// See [`MetricsSnapshot::rejected_full`].
    pub rejected_full: AtomicU64,
    /// See [`MetricsSnapshot::expired`].
    pub expired: AtomicU64,
    /// See [`MetricsSnapshot::flushed`].
    pub flushed: AtomicU64,
    /// See [`MetricsSnapshot::group_sends`].
    pub group_sends: AtomicU64,
    /// See [`MetricsSnapshot::group_deliveries`].
    pub group_deliveries: AtomicU64,
    /// See [`MetricsSnapshot::group_skipped_full`].
    pub group_skipped_full: AtomicU64,
    /// See [`MetricsSnapshot::group_skipped_failed`].
    pub group_skipped_failed: AtomicU64,
    /// See [`MetricsSnapshot::undecodable`].
    pub undecodable: AtomicU64,
    /// See [`MetricsSnapshot::overflowed`].
    pub overflowed: AtomicU64,
    /// See [`MetricsSnapshot::lost`].
    pub lost: AtomicU64,
    /// See [`MetricsSnapshot::backend_errors`].
    pub backend_errors: AtomicU64,
    /// See [`MetricsSnapshot::reconnects`].
    pub reconnects: AtomicU64,
    /// See [`MetricsSnapshot::unreplicated`].
    pub unreplicated: AtomicU64,
}

impl MetricsSnapshot {
    /// A network backend's counters joined with those of the in-memory buffer its receivers
    /// are served from: what was received, expired or flushed there, and its gauges.
    #[cfg(any(feature = "redis", feature = "nats"))]
    pub(crate) fn with_local_buffer(mut self, local: &MetricsSnapshot) -> MetricsSnapshot {
        self.received = local.received;
        self.expired += local.expired;
        self.flushed += local.flushed;
        self.queued_messages = local.queued_messages;
        self.channels = local.channels;
        self
    }
}

impl Counters {
    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts one finished `group_send` from its report: one send, and its deliveries and
    /// skipped members.
    pub fn group_send(&self, report: &crate::GroupSendReport) {
        let count = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
        Counters::add(&self.group_sends, 1);
        Counters::add(&self.group_deliveries, count(report.delivered));
        Counters::add(&self.group_skipped_full, count(report.skipped_full));
        Counters::add(&self.group_skipped_failed, count(report.skipped_failed));
    }

    /// The counters, with the gauges left at zero.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        MetricsSnapshot {
            sent: get(&self.sent),
            received: get(&self.received),
            rejected_full: get(&self.rejected_full),
            expired: get(&self.expired),
            flushed: get(&self.flushed),
            group_sends: get(&self.group_sends),
            group_deliveries: get(&self.group_deliveries),
            group_skipped_full: get(&self.group_skipped_full),
            group_skipped_failed: get(&self.group_skipped_failed),
            undecodable: get(&self.undecodable),
            overflowed: get(&self.overflowed),
            lost: get(&self.lost),
            backend_errors: get(&self.backend_errors),
            reconnects: get(&self.reconnects),
            unreplicated: get(&self.unreplicated),
            ..MetricsSnapshot::default()
        }
    }
}
