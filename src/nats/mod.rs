//! The NATS backend: the channel layer contract on NATS JetStream, on one server or a cluster.
//!
//! [contract §5](crate::contract) has the layout on the server; in short:
//!
//! - Each capacity in use (the layer's `capacity` and each `channel_capacity` rule's) has a
//!   work-queue stream, `<prefix>_ch_<capacity>`, holding one subject per channel. The stream
//!   keeps at most `capacity` messages per subject and refuses new ones beyond that
//!   ("discard new per subject"), so the *server* decides [`SendError::Full`]: there is no
//!   client-side count to race. Its maximum age removes what nobody received.
//! - A receive takes the oldest message of its channel's subject and deletes it by sequence
//!   number; the server lets exactly one delete succeed, so exactly one receiver gets each
//!   message, in order. A waiting receive subscribes to the channel's wake subject, where the
//!   stream republishes each message it stores (with its sequence number), and takes the
//!   first one announced after its channel was found empty with a single delete.
//! - Group memberships are keys of a key-value bucket, `<prefix>_groups`, whose maximum age is
//!   the group expiry: a membership lapses `group_expiry` after its latest `group_add`. A
//!   `group_send` lists the group's keys in one request and publishes to every member.
//!
//! The client is `async-nats`, run on a small background runtime of this crate (threads
//! `channel-layer-nats`), so the blocking API and the async one, on any executor, work alike;
//! no runtime is asked of the application. The client reconnects on its own (to any server of a
//! cluster); waiting receives wait through an outage and go on when a server is back.
//!
//! # Examples
//!
//! ```no_run
//! use channel_layer::prelude::*;
//! use channel_layer::nats::NatsLayer;
//!
//! let layer = NatsLayer::from_url("nats://127.0.0.1:4222?prefix=shop&capacity=100")?;
//! layer.send("orders.new", Message::new("order.placed").with("id", 7))?;
//! let order = layer.receive("orders.new")?;
//! assert_eq!(order.get("id").and_then(|v| v.as_i64()), Some(7));
//! # Ok::<(), channel_layer::Error>(())
//! ```

mod config;
mod rt;
mod subjects;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, kv, stream};
use bytes::Bytes;
use futures_util::StreamExt as _;
use parking_lot::Mutex;
use tokio::sync::Notify;

pub use self::config::{DEFAULT_PORT, DEFAULT_PREFIX, NatsConfig, Storage};
use crate::codec::{AsgiChannel, Codec, Limits};
use crate::error::{
    BackendError, BackendErrorKind, BuildError, LayerError, ReceiveError, SendError,
    TryReceiveError,
};
use crate::inspect::{ChannelState, GroupState, Inspection, MemberState};
use crate::layer::{BoxFuture, Capabilities, ChannelLayer, GroupSendReport};
use crate::memory::InMemoryLayer;
use crate::message::Message;
use crate::metrics::{Counters, MetricsSnapshot};
use crate::name::{NameError, validate_channel, validate_group, validate_prefix};
use crate::runtime::block_on;

/// JetStream's error code for a publish refused by "discard new per subject".
const FULL: u64 = 10077;
/// JetStream's error code for a message (to get or delete) that is not there.
const NO_MESSAGE: u64 = 10057;
/// JetStream's error code for a stream that exists with another configuration.
const STREAM_IN_USE: u64 = 10058;

/// How long a waiting receive goes without a wake-up before it looks at its channel anyway
/// (a wake-up lost in a reconnect, say).
const LOOK_AGAIN: Duration = Duration::from_secs(2);
/// How long a receive whose deadline has passed waits for a take already under way.
const TAKE_GRACE: Duration = Duration::from_millis(200);

/// How many channels' next messages are remembered at most (each is one message's bytes).
const MAX_NEXT_UP: usize = 1024;

/// The first and the longest pause of a waiting receive after a failed look.
const RETRY_MIN: Duration = Duration::from_millis(20);
const RETRY_MAX: Duration = Duration::from_millis(500);

/// The channel layer over NATS JetStream. Cheap to clone; clones share one connection.
#[derive(Clone)]
pub struct NatsLayer {
    inner: Arc<Inner>,
}

struct Inner {
    config: NatsConfig,
    client: async_nats::Client,
    js: jetstream::Context,
    /// The channel streams, by capacity.
    streams: HashMap<usize, stream::Stream>,
    groups: kv::Store,
    groups_stream: stream::Stream,
    codec: Codec,
    /// 32 hex digits naming this layer object's process channels.
    client_prefix: String,
    /// Messages taken for receivers here, waiting to be handed over, per channel.
    local: InMemoryLayer,
    /// Channels that have had messages in `local`, to put back on close.
    kept: Mutex<HashSet<String>>,
    /// One take at a time per channel, in the order they were asked for, so what this layer
    /// takes reaches its local buffer in the channel's order.
    taking: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Per channel, the message read after the last one taken (see [`Inner::take_now`]).
    next_up: Mutex<HashMap<String, jetstream::message::StreamMessage>>,
    counters: Arc<Counters>,
    closed: AtomicBool,
    /// Notified on close and after each reconnect: waiting receives look again.
    changed: Arc<Notify>,
}

fn wall_clock() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn random_hex(bytes: usize) -> String {
    let mut raw = vec![0u8; bytes];
    rand::Rng::fill(&mut rand::rng(), raw.as_mut_slice());
    raw.iter().map(|b| format!("{b:02x}")).collect()
}

/// A backend error of `kind` about `context`, caused by `source`.
fn failure(
    kind: BackendErrorKind,
    context: impl Into<String>,
    source: impl std::error::Error + Send + Sync + 'static,
) -> BackendError {
    BackendError::new(kind, context).with_source(source)
}

/// The JetStream error code behind an `async-nats` error, if the server gave one.
fn jetstream_code(e: &(dyn std::error::Error + 'static)) -> Option<u64> {
    let mut at = Some(e);
    while let Some(e) = at {
        if let Some(js) = e.downcast_ref::<jetstream::Error>() {
            return Some(js.error_code().0);
        }
        at = e.source();
    }
    None
}

/// The JetStream error code of a failed stream creation.
fn stream_error_code(e: &jetstream::context::CreateStreamError) -> Option<u64> {
    match e.kind() {
        jetstream::context::CreateStreamErrorKind::JetStream(js) => Some(js.error_code().0),
        _ => jetstream_code(e),
    }
}

/// What a take did.
enum Took {
    /// Took a message into the local buffer.
    One,
    /// Found the channel empty.
    Nothing,
    /// Ran out of time removing expired or undecodable messages; more may follow.
    Unfinished,
}

/// What deleting a message found.
enum Claim {
    /// This delete removed it: the message is this receiver's.
    Ours,
    /// It was gone already: another receiver's.
    Gone,
}

impl NatsLayer {
    /// A layer from a URL with options as query parameters (see [`NatsConfig::from_url`]).
    ///
    /// # Errors
    ///
    /// As [`NatsLayer::new`].
    pub fn from_url(url: &str) -> Result<Self, BuildError> {
        NatsLayer::new(NatsConfig::from_url(url)?)
    }

    /// Connects with `config` and makes the layer's streams and bucket where they are missing.
    ///
    /// # Errors
    ///
    /// [`BuildError`] for invalid settings; [`BuildError::Backend`] when no server can be
    /// reached, logging in fails, or JetStream is not enabled; [`BuildError::InvalidOption`]
    /// when the layer's streams exist with other settings (another capacity, expiry, replica
    /// count or storage under the same prefix).
    pub fn new(config: NatsConfig) -> Result<Self, BuildError> {
        config.validate()?;
        let counters = Arc::new(Counters::default());
        let changed = Arc::new(Notify::new());
        let setup = connect(config.clone(), counters.clone(), changed.clone());
        let (client, js, streams, groups, groups_stream) = block_on(rt::run(setup))?;
        let codec = Codec {
            random_prefix_length: 0,
            limits: Limits {
                max_depth: config.layer.max_message_depth,
                max_bytes: config.layer.max_message_bytes,
            },
            #[cfg(feature = "redis-encryption")]
            crypto: None,
        };
        let local = InMemoryLayer::new(config.layer.clone());
        Ok(NatsLayer {
            inner: Arc::new(Inner {
                client,
                js,
                streams,
                groups,
                groups_stream,
                codec,
                client_prefix: random_hex(16),
                local,
                kept: Mutex::new(HashSet::new()),
                taking: Mutex::new(HashMap::new()),
                next_up: Mutex::new(HashMap::new()),
                counters,
                closed: AtomicBool::new(false),
                changed,
                config,
            }),
        })
    }

    /// The configuration this layer runs with.
    pub fn config(&self) -> &NatsConfig {
        &self.inner.config
    }
}

type Setup = (
    async_nats::Client,
    jetstream::Context,
    HashMap<usize, stream::Stream>,
    kv::Store,
    stream::Stream,
);

/// Connects and makes sure the streams and the bucket exist with this layer's settings.
async fn connect(
    config: NatsConfig,
    counters: Arc<Counters>,
    changed: Arc<Notify>,
) -> Result<Setup, BuildError> {
    let was_down = Arc::new(AtomicBool::new(false));
    let mut options = async_nats::ConnectOptions::new()
        .name("channel-layer")
        .connection_timeout(config.connect_timeout)
        .request_timeout(Some(config.operation_timeout))
        .max_reconnects(None)
        // Quick to come back after a restart or a failover; never more than a second apart.
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis(50u64.saturating_mul(attempts as u64).min(1000))
        })
        .event_callback(move |event| {
            let (counters, changed) = (counters.clone(), changed.clone());
            let was_down = was_down.clone();
            async move {
                match event {
                    // The first connection is not a reconnect.
                    async_nats::Event::Connected => {
                        if was_down.swap(false, Ordering::AcqRel) {
                            Counters::add(&counters.reconnects, 1);
                        }
                        changed.notify_waiters();
                    }
                    async_nats::Event::Disconnected => was_down.store(true, Ordering::Release),
                    _ => {}
                }
            }
        });
    if let Some((user, password)) = &config.user_password {
        options = options.user_and_password(user.clone(), password.clone());
    }
    if let Some(token) = &config.token {
        options = options.token(token.clone());
    }
    if let Some(path) = &config.credentials_file {
        options = options.credentials_file(path).await.map_err(|e| {
            BuildError::invalid_option(
                "credentials_file",
                path.display().to_string(),
                format!("cannot read it: {e}"),
            )
        })?;
    }
    if config.tls {
        options = options.require_tls(true);
    }
    if let Some(path) = &config.tls_ca_file {
        options = options.add_root_certificates(path.clone());
    }
    let mut addresses = Vec::with_capacity(config.servers.len());
    for server in &config.servers {
        let address: async_nats::ServerAddr = server.parse().map_err(|e| {
            BuildError::invalid_option("servers", server, format!("not a server address: {e}"))
        })?;
        addresses.push(address);
    }
    let client = options.connect(addresses).await.map_err(|e| {
        BuildError::Backend(failure(
            BackendErrorKind::Connection,
            format!("connecting to NATS at {}", config.servers.join(",")),
            e,
        ))
    })?;
    let mut js = jetstream::new(client.clone());
    js.set_timeout(config.operation_timeout);
    let storage = match config.storage {
        Storage::File => stream::StorageType::File,
        Storage::Memory => stream::StorageType::Memory,
    };
    let capacities: BTreeSet<usize> = std::iter::once(config.layer.capacity)
        .chain(config.layer.channel_capacity.iter().map(|r| r.capacity()))
        .collect();
    let mut streams = HashMap::new();
    for capacity in capacities {
        let stream = make_stream(&js, &config, capacity, storage).await?;
        streams.insert(capacity, stream);
    }
    let bucket = subjects::groups_bucket(&config.prefix);
    // The bucket's stream is made here, in the shape of a key-value bucket (one message per
    // key, roll-ups allowed, direct gets), rather than by the client's bucket helper, which
    // first asks for account details in a form servers before 2.10 do not give.
    let kv_stream = stream::Config {
        name: format!("KV_{bucket}"),
        description: Some(format!(
            "channel-layer group memberships, prefix {}",
            config.prefix
        )),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        max_age: config.layer.group_expiry,
        discard: stream::DiscardPolicy::New,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        storage,
        num_replicas: config.replicas,
        ..Default::default()
    };
    match js.create_stream(kv_stream).await {
        Ok(_) => {}
        Err(e) if stream_error_code(&e) == Some(STREAM_IN_USE) => {
            return Err(settings_differ(&config, &format!("KV_{bucket}")));
        }
        Err(e) => {
            return Err(BuildError::Backend(failure(
                BackendErrorKind::Refused,
                format!("making the key-value bucket {bucket} (is JetStream enabled?)"),
                e,
            )));
        }
    }
    let groups = js.get_key_value(&bucket).await.map_err(|e| {
        BuildError::Backend(failure(
            BackendErrorKind::Other,
            format!("opening the key-value bucket {bucket}"),
            e,
        ))
    })?;
    let groups_stream = js.get_stream(format!("KV_{bucket}")).await.map_err(|e| {
        BuildError::Backend(failure(
            BackendErrorKind::Other,
            format!("opening the stream of bucket {bucket}"),
            e,
        ))
    })?;
    Ok((client, js, streams, groups, groups_stream))
}

/// The error for a stream that exists under this prefix with other settings.
fn settings_differ(config: &NatsConfig, stream: &str) -> BuildError {
    BuildError::invalid_option(
        "prefix",
        &config.prefix,
        format!(
            "the stream {stream} exists with other settings (capacity, expiry, group_expiry, \
             replicas or storage) than this layer's: use the same settings in every layer of \
             this prefix, another prefix, or delete the stream"
        ),
    )
}

/// The stream of channels of capacity `capacity`, made if missing.
async fn make_stream(
    js: &jetstream::Context,
    config: &NatsConfig,
    capacity: usize,
    storage: stream::StorageType,
) -> Result<stream::Stream, BuildError> {
    let expiry = config.layer.expiry;
    let name = subjects::stream_name(&config.prefix, capacity);
    let stream_config = stream::Config {
        name: name.clone(),
        description: Some(format!(
            "channel-layer channels of capacity {capacity}, prefix {}",
            config.prefix
        )),
        subjects: vec![subjects::stream_subjects(&config.prefix, capacity)],
        retention: stream::RetentionPolicy::WorkQueue,
        max_messages_per_subject: i64::try_from(capacity).unwrap_or(i64::MAX),
        discard: stream::DiscardPolicy::New,
        discard_new_per_subject: true,
        // Twice the expiry (at least a second more): an expired message is still there for a
        // while to be met, dropped and counted, rather than vanishing unseen.
        max_age: (expiry * 2).max(expiry + Duration::from_secs(1)),
        storage,
        num_replicas: config.replicas,
        republish: Some(stream::Republish {
            source: subjects::stream_subjects(&config.prefix, capacity),
            destination: subjects::wake_subjects(&config.prefix, capacity),
            // With the body, so a waiting receive can take the message in one round trip.
            headers_only: false,
        }),
        ..Default::default()
    };
    match js.create_stream(stream_config).await {
        Ok(stream) => Ok(stream),
        Err(e) if stream_error_code(&e) == Some(STREAM_IN_USE) => {
            Err(settings_differ(config, &name))
        }
        Err(e) => Err(BuildError::Backend(failure(
            BackendErrorKind::Refused,
            format!("making the stream {name} (is JetStream enabled?)"),
            e,
        ))),
    }
}

impl fmt::Debug for NatsLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsLayer")
            .field("servers", &self.inner.config.servers)
            .field("prefix", &self.inner.config.prefix)
            .field("client_prefix", &self.inner.client_prefix)
            .finish_non_exhaustive()
    }
}

impl Inner {
    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    fn expiry_secs(&self) -> f64 {
        self.config.layer.expiry.as_secs_f64()
    }

    /// The stream and subject of `channel`.
    fn place(&self, channel: &str) -> (&stream::Stream, String) {
        let capacity = self.config.layer.capacity_for(channel);
        let stream = self
            .streams
            .get(&capacity)
            // Every capacity `capacity_for` can give has its stream, made at build.
            .unwrap_or_else(|| &self.streams[&self.config.layer.capacity]);
        let subject = subjects::channel_subject(&self.config.prefix, capacity, channel);
        (stream, subject)
    }

    fn backend_error(&self, error: BackendError) -> BackendError {
        Counters::add(&self.counters.backend_errors, 1);
        error
    }

    // ----- sending -----

    /// Checks a send and encodes the message.
    fn prepare(&self, channel: &str, message: Message) -> Result<(Message, Bytes), SendError> {
        if self.is_closed() {
            return Err(SendError::Closed { message });
        }
        if let Err(error) = validate_channel(channel) {
            return Err(SendError::InvalidName { error, message });
        }
        if let Err(error) = self.config.layer.check_message(&message) {
            return Err(SendError::InvalidMessage { error, message });
        }
        match self.codec.pack(&message, AsgiChannel::None) {
            Ok(payload) => match self.check_payload(payload.len()) {
                Ok(()) => Ok((message, Bytes::from(payload))),
                Err(error) => Err(SendError::InvalidMessage { error, message }),
            },
            Err(e) => Err(SendError::InvalidMessage {
                error: crate::message::MessageError::Encode(e.to_string()),
                message,
            }),
        }
    }

    /// Refuses a message larger than the server takes (its `max_payload`, 1 MiB unless
    /// configured otherwise), which it would answer by closing the connection.
    fn check_payload(&self, len: usize) -> Result<(), crate::message::MessageError> {
        let max_bytes = self.client.server_info().max_payload;
        if max_bytes > 0 && len > max_bytes {
            return Err(crate::message::MessageError::TooLarge {
                bytes: len,
                max_bytes,
            });
        }
        Ok(())
    }

    /// Publishes `payload` to `channel` and waits for the stream's acknowledgement: `Ok(true)`
    /// stored, `Ok(false)` refused as full (after dropping expired messages at the head of the
    /// channel, if there were any, and trying once more).
    async fn publish(
        self: &Arc<Self>,
        channel: &str,
        payload: Bytes,
    ) -> Result<bool, BackendError> {
        let (stream, subject) = self.place(channel);
        for attempt in 0..2 {
            match self.publish_once(&subject, payload.clone()).await? {
                true => return Ok(true),
                false if attempt == 0 && self.prune(stream, &subject).await? > 0 => {}
                false => return Ok(false),
            }
        }
        Ok(false)
    }

    async fn publish_once(&self, subject: &str, payload: Bytes) -> Result<bool, BackendError> {
        use jetstream::context::PublishErrorKind as Kind;
        let ack = self
            .js
            .publish(subject.to_owned(), payload)
            .await
            .map_err(|e| {
                failure(
                    BackendErrorKind::Connection,
                    format!("publishing to {subject}"),
                    e,
                )
                .unsent()
            })?;
        match ack.await {
            Ok(_) => Ok(true),
            Err(e) if jetstream_code(&e) == Some(FULL) => Ok(false),
            Err(e) => {
                let (kind, unsent) = match e.kind() {
                    Kind::TimedOut => (BackendErrorKind::Timeout, false),
                    Kind::StreamNotFound => (BackendErrorKind::Unavailable, true),
                    Kind::BrokenPipe => (BackendErrorKind::Connection, true),
                    _ => (BackendErrorKind::Refused, true),
                };
                let error = failure(kind, format!("storing a message on {subject}"), e);
                Err(if unsent { error.unsent() } else { error })
            }
        }
    }

    /// Drops the expired messages at the head of a subject, counting them; how many it dropped.
    async fn prune(&self, stream: &stream::Stream, subject: &str) -> Result<usize, BackendError> {
        let started = Instant::now();
        let mut dropped = 0;
        // Bounded by the operation timeout: a send never waits on more than that here.
        while started.elapsed() < self.config.operation_timeout {
            let Some(found) = self.first(stream, subject).await? else {
                break;
            };
            if sent_at(&found) + self.expiry_secs() > wall_clock() {
                break;
            }
            if let Claim::Ours = self.claim(stream, found.sequence).await? {
                Counters::add(&self.counters.expired, 1);
                dropped += 1;
            }
        }
        Ok(dropped)
    }

    async fn send(self: &Arc<Self>, channel: &str, message: Message) -> Result<(), SendError> {
        let (message, payload) = self.prepare(channel, message)?;
        let inner = self.clone();
        let to = channel.to_owned();
        match rt::run(async move { inner.publish(&to, payload).await }).await {
            Ok(true) => {
                Counters::add(&self.counters.sent, 1);
                Ok(())
            }
            Ok(false) => {
                Counters::add(&self.counters.rejected_full, 1);
                Err(SendError::Full {
                    channel: channel.into(),
                    capacity: self.config.layer.capacity_for(channel),
                    message,
                })
            }
            Err(error) => Err(SendError::Backend {
                error: self.backend_error(error),
                message,
            }),
        }
    }

    // ----- receiving -----

    /// The oldest message on `subject`, if any.
    async fn first(
        &self,
        stream: &stream::Stream,
        subject: &str,
    ) -> Result<Option<jetstream::message::StreamMessage>, BackendError> {
        self.first_from(stream, subject, 0).await
    }

    /// The oldest message on `subject` with a sequence number of at least `from`, if any.
    async fn first_from(
        &self,
        stream: &stream::Stream,
        subject: &str,
        from: u64,
    ) -> Result<Option<jetstream::message::StreamMessage>, BackendError> {
        use jetstream::stream::LastRawMessageErrorKind as Kind;
        let mut get = stream
            .raw_message_builder()
            .next_by_subject(subject.to_owned());
        if from > 0 {
            get = get.sequence(from);
        }
        match get.send().await {
            Ok(found) => Ok(Some(found)),
            Err(e) if e.kind() == Kind::NoMessageFound => Ok(None),
            Err(e) => Err(failure(
                BackendErrorKind::Unavailable,
                format!("reading {subject}"),
                e,
            )),
        }
    }

    /// Deletes message `sequence`. A delete whose answer is lost is asked again: a second
    /// "no such message" then most likely means the first one removed it, but the message
    /// might also be another receiver's; it is not delivered (at most once) and counted lost.
    async fn claim(&self, stream: &stream::Stream, sequence: u64) -> Result<Claim, BackendError> {
        let name = &stream.cached_info().config.name;
        let mut unsure = None;
        for _ in 0..3 {
            match self.delete(name, sequence).await {
                Ok(true) => return Ok(Claim::Ours),
                Ok(false) => {
                    if unsure.is_some() {
                        Counters::add(&self.counters.lost, 1);
                    }
                    return Ok(Claim::Gone);
                }
                Err(e) => {
                    unsure = Some(e);
                    tokio::time::sleep(RETRY_MIN).await;
                }
            }
        }
        // Still unanswered: the message is either still there (a later receive takes it) or
        // gone with a lost answer.
        Counters::add(&self.counters.lost, 1);
        Err(unsure
            .unwrap_or_else(|| BackendError::new(BackendErrorKind::Timeout, "removing a message")))
    }

    /// One delete request: `Ok(true)` removed, `Ok(false)` not there.
    ///
    /// Made here rather than with the client's helper so that on memory storage it can ask the
    /// server not to overwrite the message (`no_erase`), which takes a third off a receive.
    /// On file storage the message is erased: a delete that only marks it in the block's
    /// index can be lost when the server is killed, and the message would then be delivered
    /// a second time after the restart (seen in the `kill -9` fault test).
    async fn delete(&self, stream: &str, sequence: u64) -> Result<bool, BackendError> {
        let no_erase = self.config.storage == Storage::Memory;
        let request = format!("{{\"seq\":{sequence},\"no_erase\":{no_erase}}}");
        let reply = self
            .client
            .request(
                format!("$JS.API.STREAM.MSG.DELETE.{stream}"),
                Bytes::from(request),
            )
            .await
            .map_err(|e| {
                failure(
                    BackendErrorKind::Timeout,
                    format!("removing message {sequence} from {stream}"),
                    e,
                )
            })?;
        let answer: serde_json::Value = serde_json::from_slice(&reply.payload).map_err(|e| {
            BackendError::new(
                BackendErrorKind::Protocol,
                format!("removing message {sequence} from {stream}: {e}"),
            )
        })?;
        if answer.get("success").and_then(serde_json::Value::as_bool) == Some(true) {
            return Ok(true);
        }
        match answer
            .pointer("/error/err_code")
            .and_then(serde_json::Value::as_u64)
        {
            Some(NO_MESSAGE) => Ok(false),
            _ => Err(BackendError::new(
                BackendErrorKind::Refused,
                format!("removing message {sequence} from {stream}: {answer}"),
            )),
        }
    }

    /// Takes the oldest live message of `channel` from the server into the local buffer:
    /// `Ok(true)` if one was taken. Expired and undecodable messages met on the way are
    /// removed and counted.
    async fn take(&self, channel: &str) -> Result<Took, BackendError> {
        self.in_turn(channel, self.take_now(channel)).await
    }

    /// Runs `work` (a take from `channel`) in the channel's turn.
    async fn in_turn<T>(&self, channel: &str, work: impl Future<Output = T>) -> T {
        let turn = self
            .taking
            .lock()
            .entry(channel.to_owned())
            .or_default()
            .clone();
        let outcome = {
            let _turn = turn.lock().await;
            work.await
        };
        let mut taking = self.taking.lock();
        // Two references left (the map's and this one): nobody else is taking; forget it.
        if Arc::strong_count(&turn) == 2 {
            taking.remove(channel);
        }
        outcome
    }

    /// Takes the message a wake-up announced (its sequence number and body came with it),
    /// with one delete: `Ok(true)` if it was this receiver's. Only for the first wake-up after
    /// a look found the channel empty: that message is then the oldest one there.
    async fn take_announced(
        &self,
        channel: &str,
        wake: &async_nats::Message,
    ) -> Result<bool, BackendError> {
        let sequence = wake
            .headers
            .as_ref()
            .and_then(|h| h.get(async_nats::header::NATS_SEQUENCE))
            .and_then(|v| v.as_str().parse::<u64>().ok());
        let Some(sequence) = sequence else {
            return Ok(false);
        };
        let (stream, _) = self.place(channel);
        self.in_turn(channel, async {
            if let Claim::Gone = self.claim(stream, sequence).await? {
                return Ok(false);
            }
            match self.codec.unpack(&wake.payload, self.expiry_secs()) {
                // Stored a moment ago: its whole expiry is ahead of it.
                Ok(decoded) => self.keep(
                    channel,
                    decoded.message,
                    Instant::now() + self.config.layer.expiry,
                ),
                Err(_) => Counters::add(&self.counters.undecodable, 1),
            }
            Ok(true)
        })
        .await
    }

    /// [`Inner::take`], its turn come.
    async fn take_now(&self, channel: &str) -> Result<Took, BackendError> {
        let (stream, subject) = self.place(channel);
        let started = Instant::now();
        // The message read after the last one taken here, if there was one: while nobody else
        // takes it, it is the channel's oldest, and one delete takes it.
        let mut next = self.next_up.lock().remove(channel);
        loop {
            // Many expired or undecodable messages in a row are removed a round trip each:
            // give up for now after the operation timeout, so no call outlives it.
            if started.elapsed() >= self.config.operation_timeout {
                self.remember_next(channel, next);
                return Ok(Took::Unfinished);
            }
            let found = match next.take() {
                Some(found) => found,
                None => match self.first(stream, &subject).await? {
                    Some(found) => found,
                    None => return Ok(Took::Nothing),
                },
            };
            // While the delete goes, read what follows: the next take on this channel then
            // needs the delete alone, so a consumer that keeps receiving pays one round trip
            // per message.
            let (claim, after) = tokio::join!(
                self.claim(stream, found.sequence),
                self.first_from(stream, &subject, found.sequence + 1)
            );
            next = after.ok().flatten();
            match claim {
                Ok(Claim::Ours) => {}
                Ok(Claim::Gone) | Err(_) => continue,
            }
            let sent_at = sent_at(&found);
            let left = sent_at + self.expiry_secs() - wall_clock();
            if left.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
                Counters::add(&self.counters.expired, 1);
                continue;
            }
            let message = match self.codec.unpack(&found.payload, self.expiry_secs()) {
                Ok(decoded) => decoded.message,
                Err(_) => {
                    Counters::add(&self.counters.undecodable, 1);
                    continue;
                }
            };
            self.keep(
                channel,
                message,
                Instant::now() + Duration::from_secs_f64(left.min(1e9)),
            );
            self.remember_next(channel, next);
            return Ok(Took::One);
        }
    }

    /// Keeps the message read after the last one taken from `channel`, for the next take.
    fn remember_next(&self, channel: &str, next: Option<jetstream::message::StreamMessage>) {
        if let Some(next) = next {
            let mut next_up = self.next_up.lock();
            if next_up.len() >= MAX_NEXT_UP {
                next_up.clear();
            }
            next_up.insert(channel.to_owned(), next);
        }
    }

    /// Queues a taken message for the receivers here.
    fn keep(&self, channel: &str, message: Message, deadline: Instant) {
        self.kept.lock().insert(channel.to_owned());
        match self.local.deliver_arrived(channel, message, deadline) {
            Ok(()) => {}
            Err(SendError::Full { .. }) => Counters::add(&self.counters.overflowed, 1),
            Err(_) => Counters::add(&self.counters.lost, 1),
        }
    }

    /// Looks for a message for one receiver until it is taken, the receiver leaves (`stop`)
    /// or the layer closes. Waits on the channel's wake subject between looks.
    async fn look_for(self: Arc<Self>, channel: String, stop: Arc<Stop>) {
        let capacity = self.config.layer.capacity_for(&channel);
        let wake_subject = subjects::wake_subject(&self.config.prefix, capacity, &channel);
        let mut wake = self.client.subscribe(wake_subject).await.ok();
        let mut pause = RETRY_MIN;
        while !stop.is_set() && !self.is_closed() {
            let changed = self.changed.notified();
            stop.taking.store(true, Ordering::Release);
            let took = self.take(&channel).await;
            stop.taking.store(false, Ordering::Release);
            let (wait, empty) = match took {
                Ok(Took::One) => return,
                Ok(Took::Unfinished) => continue,
                Ok(Took::Nothing) => {
                    pause = RETRY_MIN;
                    (LOOK_AGAIN, true)
                }
                Err(e) => {
                    self.backend_error(e);
                    pause = (pause * 2).min(RETRY_MAX);
                    (pause, false)
                }
            };
            if stop.is_set() {
                return;
            }
            let woken = async {
                match wake.as_mut() {
                    Some(subscription) => match subscription.next().await {
                        Some(message) => Some(message),
                        None => std::future::pending().await,
                    },
                    None => std::future::pending().await,
                }
            };
            let announced = tokio::select! {
                () = stop.notify.notified() => return,
                () = changed => None,
                message = woken => message,
                () = tokio::time::sleep(wait) => None,
            };
            // The first message stored after a look found the channel empty is its oldest:
            // take it by the sequence number its wake-up carries, in one round trip.
            if let (true, Some(message)) = (empty, announced) {
                stop.taking.store(true, Ordering::Release);
                let took = self.take_announced(&channel, &message).await;
                stop.taking.store(false, Ordering::Release);
                match took {
                    Ok(true) => return,
                    Ok(false) => {}
                    Err(e) => {
                        self.backend_error(e);
                    }
                }
            }
        }
    }

    async fn receive(
        self: &Arc<Self>,
        channel: &str,
        deadline: Option<Instant>,
    ) -> Result<Message, ReceiveError> {
        if self.is_closed() {
            return Err(ReceiveError::Closed);
        }
        validate_channel(channel)?;
        if let Ok(m) = self.local.try_receive(channel) {
            return Ok(m);
        }
        let stop = Arc::new(Stop::default());
        let _leave = StopOnDrop(stop.clone());
        let handle = rt::handle()?;
        handle.spawn(self.clone().look_for(channel.to_owned(), stop.clone()));
        match self.local.receive_until_async(channel, deadline).await {
            Err(ReceiveError::Timeout) => {
                // A take finishing for this receive right now ends within a round trip: wait
                // that long (at most TAKE_GRACE) so that its message goes to this receiver
                // instead of waiting in this layer for the channel's next receive.
                let until = Instant::now() + TAKE_GRACE;
                while stop.taking.load(Ordering::Acquire) && Instant::now() < until {
                    let step = Some((Instant::now() + Duration::from_millis(2)).min(until));
                    match self.local.receive_until_async(channel, step).await {
                        Err(ReceiveError::Timeout) => {}
                        other => return other,
                    }
                }
                match self.local.try_receive(channel) {
                    Ok(message) => Ok(message),
                    Err(TryReceiveError::Closed) => Err(ReceiveError::Closed),
                    Err(_) => Err(ReceiveError::Timeout),
                }
            }
            other => other,
        }
    }

    async fn try_receive(self: &Arc<Self>, channel: &str) -> Result<Message, TryReceiveError> {
        if self.is_closed() {
            return Err(TryReceiveError::Closed);
        }
        validate_channel(channel)?;
        match self.local.try_receive(channel) {
            Err(TryReceiveError::Empty) => {}
            other => return other,
        }
        let inner = self.clone();
        let from = channel.to_owned();
        // What the task takes lands in the local buffer even if this future is dropped.
        rt::run(async move { inner.take(&from).await })
            .await
            .map_err(|e| TryReceiveError::Backend(self.backend_error(e)))?;
        self.local.try_receive(channel)
    }

    // ----- groups -----

    fn member_key(group: &str, channel: &str) -> Result<String, LayerError> {
        validate_group(group)?;
        validate_channel(channel)?;
        Ok(subjects::member_key(group, channel))
    }

    async fn group_add(self: &Arc<Self>, group: &str, channel: &str) -> Result<(), LayerError> {
        if self.is_closed() {
            return Err(LayerError::Closed);
        }
        let key = Self::member_key(group, channel)?;
        let inner = self.clone();
        let value = Bytes::from(channel.to_owned());
        rt::run(async move {
            inner
                .groups
                .put(&key, value)
                .await
                .map(|_| ())
                .map_err(|e| {
                    failure(
                        BackendErrorKind::Unavailable,
                        format!("adding group member {key}"),
                        e,
                    )
                })
        })
        .await
        .map_err(|e| LayerError::Backend(self.backend_error(e)))
    }

    async fn group_discard(self: &Arc<Self>, group: &str, channel: &str) -> Result<(), LayerError> {
        if self.is_closed() {
            return Err(LayerError::Closed);
        }
        let key = Self::member_key(group, channel)?;
        let inner = self.clone();
        rt::run(async move {
            // A purge of the key's subject removes it without leaving a delete marker, so
            // the group's listing holds members only.
            let subject = subjects::member_subject(inner.groups.name.as_str(), &key);
            inner
                .groups_stream
                .purge()
                .filter(subject)
                .await
                .map(|_| ())
                .map_err(|e| {
                    failure(
                        BackendErrorKind::Unavailable,
                        format!("removing group member {key}"),
                        e,
                    )
                })
        })
        .await
        .map_err(|e| LayerError::Backend(self.backend_error(e)))
    }

    /// The channels in `group` now: one stream-info request listing the group's keys.
    ///
    /// The request is made here rather than through the client's paging helper, which asks
    /// for a second page even when the first held everything; under concurrent changes to the
    /// group that second page can repeat members.
    async fn members(&self, group: &str) -> Result<Vec<String>, BackendError> {
        let filter = subjects::members_filter(&self.groups.name, group);
        let stream = format!("KV_{}", self.groups.name);
        let listed = self.subjects_of(&stream, &filter, usize::MAX).await?;
        let members: BTreeSet<String> = listed
            .keys()
            .filter_map(|s| subjects::member_of_subject(s))
            .collect();
        Ok(members.into_iter().collect())
    }

    /// The subjects of `stream` matching `filter`, with their message counts: at most about
    /// `limit` (whole pages of the server's listing), in one stream-info request per page.
    async fn subjects_of(
        &self,
        stream: &str,
        filter: &str,
        limit: usize,
    ) -> Result<std::collections::BTreeMap<String, u64>, BackendError> {
        // The server gives at most this many subjects per page.
        const PAGE: usize = 100_000;
        let api = format!("$JS.API.STREAM.INFO.{stream}");
        let listing_failed = |reason: String| {
            BackendError::new(
                BackendErrorKind::Protocol,
                format!("listing {filter} in {stream}: {reason}"),
            )
        };
        let mut listed = std::collections::BTreeMap::new();
        while listed.len() < limit {
            let request = serde_json::json!({ "subjects_filter": filter, "offset": listed.len() });
            let reply = self
                .client
                .request(api.clone(), Bytes::from(request.to_string()))
                .await
                .map_err(|e| {
                    failure(
                        BackendErrorKind::Unavailable,
                        format!("listing {filter} in {stream}"),
                        e,
                    )
                })?;
            let info: serde_json::Value = serde_json::from_slice(&reply.payload)
                .map_err(|e| listing_failed(e.to_string()))?;
            if let Some(error) = info.get("error") {
                return Err(listing_failed(error.to_string()));
            }
            let page = match info.pointer("/state/subjects") {
                Some(serde_json::Value::Object(page)) => page,
                _ => break,
            };
            let before = listed.len();
            listed.extend(
                page.iter()
                    .map(|(subject, n)| (subject.clone(), n.as_u64().unwrap_or(0))),
            );
            // A short page is the last; a page adding nothing new would repeat for ever.
            if page.len() < PAGE || listed.len() == before {
                break;
            }
        }
        Ok(listed)
    }

    /// What the server holds under this prefix (see [`ChannelLayer::inspect`]): the
    /// subjects of every channel stream with their counts, the oldest message's age for the
    /// first `limit` of them (a read each), and the group bucket's keys with the age of each
    /// membership (a read each, for the first `limit` groups).
    async fn inspect(&self, limit: usize) -> Result<Inspection, BackendError> {
        let ours = format!("{}_ch_", self.config.prefix);
        let mut names = Box::pin(self.js.stream_names());
        let mut streams = Vec::new();
        while let Some(name) = names.next().await {
            let name =
                name.map_err(|e| failure(BackendErrorKind::Unavailable, "listing the streams", e))?;
            let capacity = name
                .strip_prefix(&ours)
                .and_then(|c| c.parse::<usize>().ok());
            if let Some(capacity) = capacity {
                streams.push((name, capacity));
            }
        }
        let mut complete = true;
        let mut channels = Vec::new();
        for (name, capacity) in streams {
            let filter = subjects::stream_subjects(&self.config.prefix, capacity);
            let listed = self
                .subjects_of(&name, &filter, limit.saturating_add(1))
                .await?;
            let stream = self.js.get_stream(&name).await.map_err(|e| {
                failure(BackendErrorKind::Unavailable, format!("opening {name}"), e)
            })?;
            let head = format!("{}.ch.{capacity}.", self.config.prefix);
            for (subject, queued) in listed {
                let Some(token) = subject.strip_prefix(&head) else {
                    continue;
                };
                if channels.len() >= limit {
                    complete = false;
                    break;
                }
                let oldest = match self.first(&stream, &subject).await {
                    Ok(Some(found)) => {
                        let age = (wall_clock() - sent_at(&found)).max(0.0);
                        Some(Duration::from_secs_f64(age.min(1e9)))
                    }
                    _ => None,
                };
                channels.push(ChannelState::new(token.replace('~', "."), queued, oldest));
            }
        }
        channels.sort_by(|a, b| a.name.cmp(&b.name));
        let bucket = format!("KV_{}", self.groups.name);
        let keys = self
            .subjects_of(&bucket, &format!("$KV.{}.>", self.groups.name), usize::MAX)
            .await?;
        let mut groups: std::collections::BTreeMap<String, Vec<MemberState>> = Default::default();
        for subject in keys.keys() {
            let (Some(channel), Some(group)) = (
                subjects::member_of_subject(subject),
                subjects::group_of_subject(subject),
            ) else {
                continue;
            };
            if !groups.contains_key(&group) && groups.len() >= limit {
                complete = false;
                continue;
            }
            let age = match self
                .groups_stream
                .get_last_raw_message_by_subject(subject)
                .await
            {
                Ok(found) => {
                    let age = (wall_clock() - sent_at(&found)).max(0.0);
                    Some(Duration::from_secs_f64(age.min(1e9)))
                }
                Err(_) => None,
            };
            groups
                .entry(group)
                .or_default()
                .push(MemberState::new(channel, age));
        }
        Ok(Inspection {
            channels,
            groups: groups
                .into_iter()
                .map(|(name, members)| GroupState::new(name, members))
                .collect(),
            metrics: self.metrics(),
            complete,
        })
    }

    async fn group_send(
        self: &Arc<Self>,
        group: &str,
        message: Message,
    ) -> Result<GroupSendReport, LayerError> {
        if self.is_closed() {
            return Err(LayerError::Closed);
        }
        validate_group(group)?;
        self.config.layer.check_message(&message)?;
        let payload = self
            .codec
            .pack(&message, AsgiChannel::None)
            .map_err(|e| crate::message::MessageError::Encode(e.to_string()))?;
        self.check_payload(payload.len())?;
        let payload = Bytes::from(payload);
        let inner = self.clone();
        let group = group.to_owned();
        let report = rt::run(async move { inner.deliver_to_group(&group, payload).await })
            .await
            .map_err(|e| LayerError::Backend(self.backend_error(e)))?;
        self.counters.group_send(&report);
        Ok(report)
    }

    /// Publishes to every member at once, then collects the acknowledgements; a member refused
    /// as full is tried once more after its expired messages are dropped.
    async fn deliver_to_group(
        self: &Arc<Self>,
        group: &str,
        payload: Bytes,
    ) -> Result<GroupSendReport, BackendError> {
        let started = Instant::now();
        let members = self.members(group).await?;
        let mut pending = Vec::with_capacity(members.len());
        for member in members {
            let (_, subject) = self.place(&member);
            let ack = self.js.publish(subject, payload.clone()).await;
            pending.push((member, ack));
        }
        let mut report = GroupSendReport::default();
        for (member, ack) in pending {
            let stored = match ack {
                Ok(ack) => match ack.await {
                    Ok(_) => Some(true),
                    // Full: once more after dropping its expired messages, while the group
                    // send is within its operation timeout; past it, the member is skipped.
                    Err(e) if jetstream_code(&e) == Some(FULL) => {
                        if started.elapsed() < self.config.operation_timeout {
                            self.publish(&member, payload.clone()).await.ok()
                        } else {
                            Some(false)
                        }
                    }
                    Err(_) => None,
                },
                Err(_) => None,
            };
            match stored {
                Some(true) => report.delivered += 1,
                Some(false) => report.skipped_full += 1,
                None => report.skipped_failed += 1,
            }
        }
        Ok(report)
    }

    // ----- flush, close, metrics -----

    async fn flush(self: &Arc<Self>) -> Result<(), LayerError> {
        if self.is_closed() {
            return Err(LayerError::Closed);
        }
        let inner = self.clone();
        let flushed = rt::run(async move { inner.purge_all().await })
            .await
            .map_err(|e| LayerError::Backend(self.backend_error(e)))?;
        Counters::add(&self.counters.flushed, flushed);
        self.local.flush()
    }

    /// Empties every channel stream of this prefix (whatever its capacity) and the groups.
    async fn purge_all(&self) -> Result<u64, BackendError> {
        let ours = format!("{}_ch_", self.config.prefix);
        let mut names = Box::pin(self.js.stream_names());
        let mut flushed = 0;
        let mut streams = Vec::new();
        while let Some(name) = names.next().await {
            let name =
                name.map_err(|e| failure(BackendErrorKind::Unavailable, "listing the streams", e))?;
            let capacity = name.strip_prefix(&ours);
            if capacity.is_some_and(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_digit())) {
                streams.push(name);
            }
        }
        for name in streams {
            let purged = self
                .js
                .get_stream_no_info(&name)
                .await
                .map_err(|e| failure(BackendErrorKind::Unavailable, format!("opening {name}"), e))?
                .purge()
                .await
                .map_err(|e| {
                    failure(BackendErrorKind::Unavailable, format!("purging {name}"), e)
                })?;
            flushed += purged.purged;
        }
        self.groups_stream
            .purge()
            .await
            .map_err(|e| failure(BackendErrorKind::Unavailable, "purging the groups", e))?;
        Ok(flushed)
    }

    /// Puts what waits in the local buffers back on the server (at the end of its channel: the
    /// receiver it was taken for has gone), so closing loses nothing; what cannot be put back
    /// is counted lost.
    fn put_back(self: &Arc<Self>) {
        let channels: Vec<String> = self.kept.lock().drain().collect();
        let mut back = Vec::new();
        for channel in channels {
            while let Ok(message) = self.local.try_receive(&channel) {
                match self.codec.pack(&message, AsgiChannel::None) {
                    Ok(payload) => back.push((channel.clone(), Bytes::from(payload))),
                    Err(_) => Counters::add(&self.counters.lost, 1),
                }
            }
        }
        if back.is_empty() {
            return;
        }
        let inner = self.clone();
        let count = back.len() as u64;
        let outcome = block_on(rt::run(async move {
            let mut lost = 0;
            for (channel, payload) in back {
                if !matches!(inner.publish(&channel, payload).await, Ok(true)) {
                    lost += 1;
                }
            }
            Ok::<u64, BackendError>(lost)
        }));
        Counters::add(&self.counters.lost, outcome.unwrap_or(count));
    }

    fn metrics(&self) -> MetricsSnapshot {
        self.counters
            .snapshot()
            .with_local_buffer(&self.local.metrics())
    }
}

/// When the server stored a message, in seconds since the Unix epoch.
fn sent_at(found: &jetstream::message::StreamMessage) -> f64 {
    found.time.unix_timestamp_nanos() as f64 / 1e9
}

/// Tells a receive's search task that its receiver has gone.
#[derive(Default)]
struct Stop {
    set: AtomicBool,
    notify: Notify,
    /// Set while the task is taking (reading and deleting): a receive whose deadline passes
    /// meanwhile waits briefly for the outcome rather than leave a message it caused to be
    /// taken behind in the local buffer.
    taking: AtomicBool,
}

impl Stop {
    fn is_set(&self) -> bool {
        self.set.load(Ordering::Acquire)
    }
}

struct StopOnDrop(Arc<Stop>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.set.store(true, Ordering::Release);
        // A stored permit: the task sees it even if it is not waiting yet.
        self.0.notify.notify_one();
    }
}

// ===== the trait =====

impl ChannelLayer for NatsLayer {
    fn capabilities(&self) -> Capabilities {
        Capabilities::none()
            .with_groups(true)
            .with_flush(true)
            .with_receive_any_process_channel(true)
            .with_shared_between_layers(true)
            .with_inspect(true)
    }

    fn metrics(&self) -> MetricsSnapshot {
        self.inner.metrics()
    }

    /// Mints `<prefix>.<client prefix>!<32 hex digits>`.
    fn new_channel(&self, prefix: &str) -> Result<String, NameError> {
        validate_prefix(prefix, 2 + 64)?;
        Ok(format!(
            "{prefix}.{}!{}",
            self.inner.client_prefix,
            random_hex(16)
        ))
    }

    fn send_async<'a>(
        &'a self,
        channel: &'a str,
        message: Message,
    ) -> BoxFuture<'a, Result<(), SendError>> {
        Box::pin(self.inner.send(channel, message))
    }

    fn receive_until_async<'a>(
        &'a self,
        channel: &'a str,
        deadline: Option<Instant>,
    ) -> BoxFuture<'a, Result<Message, ReceiveError>> {
        Box::pin(self.inner.receive(channel, deadline))
    }

    fn try_receive_async<'a>(
        &'a self,
        channel: &'a str,
    ) -> BoxFuture<'a, Result<Message, TryReceiveError>> {
        Box::pin(self.inner.try_receive(channel))
    }

    fn group_add_async<'a>(
        &'a self,
        group: &'a str,
        channel: &'a str,
    ) -> BoxFuture<'a, Result<(), LayerError>> {
        Box::pin(self.inner.group_add(group, channel))
    }

    fn group_discard_async<'a>(
        &'a self,
        group: &'a str,
        channel: &'a str,
    ) -> BoxFuture<'a, Result<(), LayerError>> {
        Box::pin(self.inner.group_discard(group, channel))
    }

    fn group_send_async<'a>(
        &'a self,
        group: &'a str,
        message: Message,
    ) -> BoxFuture<'a, Result<GroupSendReport, LayerError>> {
        Box::pin(self.inner.group_send(group, message))
    }

    fn flush_async(&self) -> BoxFuture<'_, Result<(), LayerError>> {
        Box::pin(self.inner.flush())
    }

    fn inspect_async(&self, limit: usize) -> BoxFuture<'_, Result<Inspection, LayerError>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            if inner.is_closed() {
                return Err(LayerError::Closed);
            }
            let this = inner.clone();
            rt::run(async move { this.inspect(limit).await })
                .await
                .map_err(|e| LayerError::Backend(inner.backend_error(e)))
        })
    }

    fn close(&self) {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        self.inner.put_back();
        self.inner.local.close();
        self.inner.changed.notify_waiters();
    }
}
