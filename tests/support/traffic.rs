//! Traffic across a fault, with exact accounting: senders and receivers (blocking and async,
//! on a normal and a process-specific channel) run against one layer while a test breaks its
//! server, and [`Traffic::finish`] checks that every message arrived at most once, in order,
//! or was counted lost, and that no call outlived its deadline.

#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use channel_layer::runtime::block_on;
use channel_layer::{ChannelLayer, ChannelLayerExt, Message, ReceiveError, SendError, Value};

/// The operation timeout the layers under test use.
pub const TIMEOUT: Duration = Duration::from_secs(2);
/// How long a receive in the traffic waits each time.
pub const RECEIVE_WAIT: Duration = Duration::from_millis(500);
/// What a call may take beyond its deadline on this loaded 2-core machine.
pub const SLACK: Duration = Duration::from_millis(700);

/// What a sent message's send returned.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Outcome {
    Stored,
    /// Failed, and the error proves it was not stored.
    NotStored,
    /// Failed; it may have been stored.
    Unknown,
}

/// The numbered messages of one sender on one channel.
#[derive(Default)]
pub struct Ledger {
    sent: Vec<Outcome>,
    received: Vec<u64>,
}

#[derive(Default)]
pub struct Figures {
    slowest_send: Duration,
    /// The most a receive took beyond its own timeout.
    receive_overrun: Duration,
}

/// Traffic against one layer: senders and receivers on two channels, until stopped.
pub struct Traffic {
    stop: Arc<AtomicBool>,
    ledgers: Arc<Mutex<HashMap<(String, usize), Ledger>>>,
    figures: Arc<Mutex<Figures>>,
    threads: Vec<thread::JoinHandle<()>>,
    channels: Vec<String>,
    /// Accepted messages never received, once [`finish`](Self::finish) has counted them.
    missing: Arc<Mutex<u64>>,
}

fn id_of(m: &Message) -> (usize, u64) {
    let sender = m.get("sender").and_then(Value::as_i64).unwrap_or(-1);
    let n = m.get("n").and_then(Value::as_i64).unwrap_or(-1);
    (sender as usize, n as u64)
}

impl Traffic {
    pub fn start<L: ChannelLayer + Clone + 'static>(layer: &L) -> Traffic {
        let process = layer.new_channel("faults").unwrap();
        let channels = vec!["faults.jobs".to_owned(), process];
        let stop = Arc::new(AtomicBool::new(false));
        let ledgers: Arc<Mutex<HashMap<(String, usize), Ledger>>> = Arc::default();
        let figures: Arc<Mutex<Figures>> = Arc::default();
        let mut threads = Vec::new();
        // Senders: 0 and 1 blocking, 2 async; each sends to both channels in turn.
        for sender in 0..3usize {
            let (layer, stop, ledgers, figures, channels) = (
                layer.clone(),
                stop.clone(),
                ledgers.clone(),
                figures.clone(),
                channels.clone(),
            );
            threads.push(thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    for channel in &channels {
                        let m = Message::new("fault.traffic")
                            .with("sender", sender as i64)
                            .with("n", n as i64);
                        let t = Instant::now();
                        let result = if sender == 2 {
                            block_on(layer.send_async(channel, m))
                        } else {
                            layer.send(channel, m)
                        };
                        let took = t.elapsed();
                        let outcome = match &result {
                            Ok(()) => Outcome::Stored,
                            Err(SendError::Backend { error, .. }) if !error.may_have_applied() => {
                                Outcome::NotStored
                            }
                            Err(SendError::Full { .. }) => Outcome::NotStored,
                            Err(_) => Outcome::Unknown,
                        };
                        {
                            let mut f = figures.lock().unwrap();
                            f.slowest_send = f.slowest_send.max(took);
                        }
                        let mut l = ledgers.lock().unwrap();
                        let ledger = l.entry((channel.clone(), sender)).or_default();
                        assert_eq!(ledger.sent.len() as u64, n);
                        ledger.sent.push(outcome);
                        drop(l);
                        if result.is_err() {
                            thread::sleep(Duration::from_millis(20));
                        }
                    }
                    n += 1;
                    thread::sleep(Duration::from_millis(2));
                }
            }));
        }
        // Receivers: a blocking one on the normal channel, an async one on the process one.
        for (i, channel) in channels.iter().enumerate() {
            let (layer, stop, ledgers, figures, channel) = (
                layer.clone(),
                stop.clone(),
                ledgers.clone(),
                figures.clone(),
                channel.clone(),
            );
            threads.push(thread::spawn(move || {
                let mut quiet_since: Option<Instant> = None;
                loop {
                    let t = Instant::now();
                    let got = if i == 0 {
                        layer.receive_timeout(&channel, RECEIVE_WAIT)
                    } else {
                        block_on(layer.receive_timeout_async(&channel, RECEIVE_WAIT))
                    };
                    let took = t.elapsed();
                    {
                        let mut f = figures.lock().unwrap();
                        f.receive_overrun =
                            f.receive_overrun.max(took.saturating_sub(RECEIVE_WAIT));
                    }
                    match got {
                        Ok(m) => {
                            quiet_since = None;
                            let (sender, n) = id_of(&m);
                            let mut l = ledgers.lock().unwrap();
                            l.entry((channel.clone(), sender))
                                .or_default()
                                .received
                                .push(n);
                        }
                        Err(ReceiveError::Timeout) => {
                            // Once stopped, two quiet waits in a row mean it is drained.
                            if stop.load(Ordering::Relaxed) {
                                let since = *quiet_since.get_or_insert(t);
                                if since.elapsed() >= RECEIVE_WAIT * 2 {
                                    return;
                                }
                            }
                        }
                        Err(e) => panic!("a receive during a fault must wait, not fail: {e:?}"),
                    }
                }
            }));
        }
        Traffic {
            stop,
            ledgers,
            figures,
            threads,
            channels,
            missing: Arc::default(),
        }
    }

    /// Stops the senders, lets the receivers drain, and checks the accounting against what
    /// the layer counts as lost. Returns `(sent, received, unknown outcomes, lost)`.
    pub fn finish(self, name: &str, layer: &dyn ChannelLayer) -> (usize, usize, usize, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().expect("a traffic thread panicked");
        }
        let lost = layer.metrics().lost;
        let ledgers = self.ledgers.lock().unwrap();
        let (mut stored, mut received, mut unknown, mut missing) = (0, 0, 0, 0u64);
        for ((channel, sender), ledger) in ledgers.iter() {
            // In order, never twice.
            assert!(
                ledger.received.windows(2).all(|w| w[0] < w[1]),
                "{name}: {channel} from sender {sender} out of order or duplicated: {:?}",
                ledger.received
            );
            let got: std::collections::HashSet<u64> = ledger.received.iter().copied().collect();
            for (n, outcome) in ledger.sent.iter().enumerate() {
                let n = n as u64;
                match outcome {
                    Outcome::Stored => {
                        stored += 1;
                        if !got.contains(&n) {
                            missing += 1;
                        }
                    }
                    Outcome::NotStored => assert!(
                        !got.contains(&n),
                        "{name}: message {n} to {channel} was refused as not stored, yet received"
                    ),
                    Outcome::Unknown => unknown += 1,
                }
            }
            received += ledger.received.len();
        }
        let f = self.figures.lock().unwrap();
        println!(
            "{name}: sent (accepted) {stored}, received {received}, outcome unknown {unknown}, \
             missing {missing}, counted lost {lost}; slowest send {:?}, slowest receive {:?} \
             past its {RECEIVE_WAIT:?} timeout; channels {:?}",
            f.slowest_send, f.receive_overrun, self.channels
        );
        assert!(
            missing <= lost,
            "{name}: {missing} accepted messages never arrived, but the layer counts only {lost} lost"
        );
        assert!(stored > 0, "{name}: no traffic went through");
        assert!(
            f.slowest_send <= TIMEOUT + SLACK,
            "{name}: a send took {:?}, past its {TIMEOUT:?} timeout",
            f.slowest_send
        );
        assert!(
            f.receive_overrun <= SLACK,
            "{name}: a receive took {:?} past its timeout",
            f.receive_overrun
        );
        *self.missing.lock().unwrap() = missing;
        (stored, received, unknown, lost)
    }

    /// As [`finish`](Self::finish), for a layer whose count of lost messages is exact: it
    /// also checks that the layer counts no more than could be lost (a message accepted and
    /// never received, or one whose send had an unknown outcome).
    pub fn finish_exact(self, name: &str, layer: &dyn ChannelLayer) -> (usize, usize, usize, u64) {
        let missing = self.missing.clone();
        let (stored, received, unknown, lost) = self.finish(name, layer);
        let missing = *missing.lock().unwrap();
        assert!(
            lost <= missing + unknown as u64,
            "{name}: the layer counts {lost} lost, but only {missing} accepted messages never \
             arrived and {unknown} sends had an unknown outcome"
        );
        (stored, received, unknown, lost)
    }
}

/// Starts a receive that waits across the fault, on its own channel.
pub fn waiting_receive<L: ChannelLayer + Clone + 'static>(
    layer: &L,
    channel: &str,
) -> thread::JoinHandle<Result<Message, ReceiveError>> {
    let (layer, channel) = (layer.clone(), channel.to_owned());
    let handle = thread::spawn(move || layer.receive_timeout(&channel, Duration::from_secs(25)));
    thread::sleep(Duration::from_millis(200));
    handle
}

/// After the fault: another layer object (`other`) sends to the waiting receive's channel (retrying
/// while the server comes back), and the waiting receive gets it.
pub fn check_waiting_receive(
    other: &dyn ChannelLayer,
    channel: &str,
    waiting: thread::JoinHandle<Result<Message, ReceiveError>>,
) {
    let start = Instant::now();
    while let Err(e) = other.send(channel, Message::new("after.fault")) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "cannot send after the fault: {e}"
        );
        thread::sleep(Duration::from_millis(100));
    }
    let got = waiting
        .join()
        .unwrap()
        .expect("the receive waiting across the fault");
    assert_eq!(got.message_type(), Some("after.fault"));
}

/// The same layer object works after the fault.
pub fn check_recovered(layer: &dyn ChannelLayer) {
    let start = Instant::now();
    while let Err(e) = layer.send("faults.check", Message::new("check")) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "still failing: {e}"
        );
        thread::sleep(Duration::from_millis(100));
    }
    let got = layer
        .receive_timeout("faults.check", Duration::from_secs(5))
        .expect("the same layer receives again");
    assert_eq!(got.message_type(), Some("check"));
}
