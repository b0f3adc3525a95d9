//! Receiving: a receive registers what it waits for, starts a direct take from the key if no
//! puller is on it, and waits on the local buffer until its deadline.
//!
//! A waiting receive never talks to Redis itself: takes run on the command thread and the
//! pullers, which deliver into the local buffers. So a receive returns by its own deadline
//! whatever the server does, and an outage (a restart, a cut connection, a frozen server) does
//! not end it: the pullers reconnect in the background, and the receive gets the messages sent
//! once the server is back. Only a closed layer, the deadline, or the channel's key holding
//! another type of data end a wait early.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Inner;
use super::demand::{DemandGuard, Pulled, Taking};
use super::oneshot;
use crate::error::{BackendError, ReceiveError, TryReceiveError};
use crate::layer::ChannelLayer as _;
use crate::message::Message;
use crate::name::{
    NameError, NameKind, NameProblem, is_process_specific, non_local_name, validate_channel,
};

/// How long a receive waits on its local buffer before it looks again at the layer (closed?)
/// and the channel's key (another type of data in it?).
const CHECK_EVERY: Duration = Duration::from_millis(250);

/// How many messages a take from a process key moves in one round trip.
const PROCESS_BATCH: usize = 64;

fn step_deadline(deadline: Option<Instant>) -> Instant {
    let step = Instant::now() + CHECK_EVERY;
    deadline.map_or(step, |d| d.min(step))
}

/// Where a queued command's outcome arrives.
type Reply = oneshot::Receiver<Result<Vec<::redis::Value>, BackendError>>;

/// How a receive starts: with a message already here, or waiting.
enum Start<'a> {
    Ready(Message),
    Waiting(DemandGuard<'a>),
}

impl Inner {
    fn check_receive(&self, channel: &str) -> Result<(), NameError> {
        validate_channel(channel)?;
        if is_process_specific(channel) && !self.owns(channel) {
            return Err(NameError::new(
                NameKind::Channel,
                channel,
                NameProblem::NotOwned,
            ));
        }
        Ok(())
    }

    /// The checks, a message already buffered, or the demand registered (and a direct take
    /// started when no puller is on the key).
    fn start_receive(self: &Arc<Self>, channel: &str) -> Result<Start<'_>, ReceiveError> {
        if self.is_closed() {
            return Err(ReceiveError::Closed);
        }
        self.check_receive(channel)?;
        if let Ok(m) = self.local.try_receive(channel) {
            return Ok(Start::Ready(m));
        }
        let (demand, taking) = self.want(channel);
        if let Some(taking) = taking {
            let count = 1 + self.config.receive_prefetch;
            // Its outcome reaches the receive through the local buffer; a failure is counted
            // and leaves the key to the pullers.
            drop(self.submit_take(channel, count, taking));
        }
        Ok(Start::Waiting(demand))
    }

    /// After a wait on the local buffer ran out: closing, the caller's deadline, or a key of
    /// the wrong type end the receive; otherwise it waits again.
    fn after_wait(&self, channel: &str, deadline: Option<Instant>) -> Result<(), ReceiveError> {
        if self.is_closed() {
            return Err(ReceiveError::Closed);
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(ReceiveError::Timeout);
        }
        match self.bad_key(channel) {
            Some(e) => Err(ReceiveError::Backend(e)),
            None => Ok(()),
        }
    }

    /// A blocking receive: waits on the local buffer on the caller's thread.
    pub(super) fn receive_blocking(
        self: &Arc<Self>,
        channel: &str,
        deadline: Option<Instant>,
    ) -> Result<Message, ReceiveError> {
        let demand = match self.start_receive(channel)? {
            Start::Ready(m) => return Ok(m),
            Start::Waiting(demand) => demand,
        };
        let result = loop {
            match self
                .local
                .receive_until(channel, Some(step_deadline(deadline)))
            {
                Err(ReceiveError::Timeout) => {
                    if let Err(e) = self.after_wait(channel, deadline) {
                        break Err(e);
                    }
                }
                other => break other,
            }
        };
        drop(demand);
        if result.is_err() {
            // A puller blocked on the key for this receiver may be taking its next message
            // for nobody: let it put that back, so what this thread does next sees it.
            self.outwait_stale_puller(channel);
        }
        result
    }

    /// An async receive: as [`Inner::receive_blocking`], suspending instead of blocking.
    /// Cancel safe: a message is only ever taken from the local buffer by a poll that returns
    /// it.
    pub(super) async fn receive_async(
        self: &Arc<Self>,
        channel: &str,
        deadline: Option<Instant>,
    ) -> Result<Message, ReceiveError> {
        let demand = match self.start_receive(channel)? {
            Start::Ready(m) => return Ok(m),
            Start::Waiting(demand) => demand,
        };
        let result = loop {
            let step = Some(step_deadline(deadline));
            match self.local.receive_until_async(channel, step).await {
                Err(ReceiveError::Timeout) => {
                    if let Err(e) = self.after_wait(channel, deadline) {
                        break Err(e);
                    }
                }
                other => break other,
            }
        };
        drop(demand);
        if result.is_err() {
            self.outwait_stale_puller_async(channel).await;
        }
        result
    }

    /// Where a take for `channel` takes from: its key, and whose messages the key holds.
    fn take_from(&self, channel: &str) -> (Pulled, String) {
        if is_process_specific(channel) {
            let non_local = non_local_name(channel);
            (Pulled::Process(non_local.to_owned()), self.key(non_local))
        } else {
            (Pulled::Normal(channel.to_owned()), self.key(channel))
        }
    }

    /// Queues a take of up to `count` messages from `channel`'s key on every server, on the
    /// command threads. What it takes is delivered there, into the local buffers, whether or
    /// not anyone still waits for the outcome, so a caller that gives up loses nothing.
    fn submit_take(
        self: &Arc<Self>,
        channel: &str,
        count: usize,
        taking: Arc<Taking>,
    ) -> Vec<(Reply, Instant)> {
        let (from, key) = self.take_from(channel);
        // On a cluster, the key lives on one master only.
        let servers: Vec<usize> = match &self.cluster {
            Some(topology) => vec![topology.owner_of(key.as_bytes())],
            None => (0..self.servers.len()).collect(),
        };
        servers
            .into_iter()
            .map(|server| {
                let mut cmd = ::redis::cmd("ZPOPMIN");
                cmd.arg(&key).arg(count);
                let (inner, from, taking) = (self.clone(), from.clone(), taking.clone());
                let then: super::conn::Then = Box::new(move |reply| {
                    let _taking = taking;
                    inner.took(&from, count, reply).map(|()| Vec::new())
                });
                self.servers[server].commands.submit(vec![cmd], Some(then))
            })
            .collect()
    }

    /// Takes a message from the local buffer, or from Redis if none is buffered. While the
    /// pullers (or another receiver) are taking from the key, only the local buffer is looked
    /// at: they deliver what is there. Fails with the backend's error when Redis cannot be
    /// asked, within the operation timeout.
    pub(super) async fn try_receive(
        self: &Arc<Self>,
        channel: &str,
    ) -> Result<Message, TryReceiveError> {
        if self.is_closed() {
            return Err(TryReceiveError::Closed);
        }
        self.check_receive(channel)?;
        match self.local.try_receive(channel) {
            Err(TryReceiveError::Empty) => {}
            other => return other,
        }
        if let Some(e) = self.bad_key(channel) {
            return Err(TryReceiveError::Backend(e));
        }
        // A puller still blocked on the key for a receiver that just left may hold its next
        // message (on its way back to Redis): let it move on, then look.
        self.outwait_stale_puller_async(channel).await;
        match self.local.try_receive(channel) {
            Err(TryReceiveError::Empty) => {}
            other => return other,
        }
        if let Some(taking) = self.try_begin_taking(channel) {
            // From a process key, a batch: what it holds for sibling channels waits here.
            let count = if is_process_specific(channel) {
                PROCESS_BATCH
            } else {
                1 + self.config.receive_prefetch
            };
            let mut failure = None;
            for (rx, deadline) in self.submit_take(channel, count, taking) {
                let outcome = super::conn::thread::wait_for(rx, deadline).await;
                failure = failure.or(outcome.err());
            }
            if let Some(e) = failure {
                // What the other servers gave is still delivered first.
                return self
                    .local
                    .try_receive(channel)
                    .or(Err(TryReceiveError::Backend(e)));
            }
        }
        self.local.try_receive(channel)
    }
}
