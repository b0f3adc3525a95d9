//! Connecting, and making the streams and the bucket a layer needs.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use tokio::sync::Notify;

use super::api::{STREAM_IN_USE, failure, stream_error_code};
use super::config::{NatsConfig, Storage};
use super::subjects;
use crate::error::{BackendErrorKind, BuildError};
use crate::metrics::Counters;

/// What [`connect`] makes.
pub(super) struct Setup {
    pub(super) client: async_nats::Client,
    pub(super) js: jetstream::Context,
    pub(super) streams: HashMap<usize, stream::Stream>,
    pub(super) groups: kv::Store,
    pub(super) groups_stream: stream::Stream,
}

/// The line of the bucket stream's description recording the prefix's capacity settings.
const CAPACITIES: &str = "channel capacities: ";

/// The capacity settings of `config`, as recorded on the server.
fn capacity_record(config: &NatsConfig) -> String {
    format!(
        "capacity={} channel_capacity={:?}",
        config.layer.capacity, config.layer.channel_capacity
    )
}

/// The longest a stored message lives on the server: long past any sensible expiry, so the
/// layers (which clear expired messages and count them) meet expired messages before the
/// server's age limit removes them unseen; the limit is only a backstop for a prefix no layer
/// runs on any more.
fn max_age(config: &NatsConfig) -> Duration {
    (config.layer.expiry * 4).max(Duration::from_secs(3600))
}

/// Connects and makes sure the streams and the bucket exist.
pub(super) async fn connect(
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
    let where_to = || format!("connecting to NATS at {}", config.servers.join(","));
    // One deadline for the whole connect: the client tries the servers one after another,
    // each within the timeout and with a pause between them, and waits without a limit for a
    // server that accepts the connection but never greets.
    let client =
        match tokio::time::timeout(config.connect_timeout, options.connect(addresses)).await {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => {
                return Err(BuildError::Backend(failure(
                    BackendErrorKind::Connection,
                    where_to(),
                    e,
                )));
            }
            Err(_) => {
                return Err(BuildError::Backend(crate::error::BackendError::new(
                    BackendErrorKind::Timeout,
                    format!(
                        "{}: no server answered within the connect timeout ({:?})",
                        where_to(),
                        config.connect_timeout
                    ),
                )));
            }
        };
    let mut js = jetstream::new(client.clone());
    js.set_timeout(config.operation_timeout);
    let storage = match config.storage {
        Storage::File => stream::StorageType::File,
        Storage::Memory => stream::StorageType::Memory,
    };
    // The bucket first: its description records the prefix's capacity settings, checked
    // before any channel stream is made.
    let (groups, groups_stream) = make_bucket(&js, &config, storage).await?;
    let capacities: BTreeSet<usize> = std::iter::once(config.layer.capacity)
        .chain(config.layer.channel_capacity.iter().map(|r| r.capacity()))
        .collect();
    let mut streams = HashMap::new();
    for capacity in capacities {
        let stream = make_stream(&js, &config, capacity, storage).await?;
        streams.insert(capacity, stream);
    }
    Ok(Setup {
        client,
        js,
        streams,
        groups,
        groups_stream,
    })
}

fn setup_failed(what: String, e: impl std::error::Error + Send + Sync + 'static) -> BuildError {
    BuildError::Backend(failure(BackendErrorKind::Refused, what, e))
}

/// The group bucket, made if missing; checks the capacity settings it records.
///
/// The bucket's stream is made here, in the shape of a key-value bucket (one message per key,
/// roll-ups allowed, direct gets), rather than by the client's bucket helper, which first
/// asks for account details in a form servers before 2.10 do not give.
async fn make_bucket(
    js: &jetstream::Context,
    config: &NatsConfig,
    storage: stream::StorageType,
) -> Result<(kv::Store, stream::Stream), BuildError> {
    let bucket = subjects::groups_bucket(&config.prefix);
    let name = subjects::bucket_stream(&bucket);
    let wanted = stream::Config {
        name: name.clone(),
        description: Some(format!(
            "channel-layer group memberships, prefix {}; {CAPACITIES}{}",
            config.prefix,
            capacity_record(config)
        )),
        subjects: vec![subjects::bucket_subjects(&bucket)],
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
    match js.create_stream(wanted.clone()).await {
        Ok(_) => {}
        Err(e) if stream_error_code(&e) == Some(STREAM_IN_USE) => {
            let mut existing = js
                .get_stream(&name)
                .await
                .map_err(|e| setup_failed(format!("reading the stream {name}"), e))?
                .cached_info()
                .config
                .clone();
            let recorded = existing
                .description
                .as_deref()
                .and_then(|d| d.split_once(CAPACITIES))
                .map(|(_, r)| r.to_owned());
            let ours = capacity_record(config);
            if let Some(recorded) = &recorded {
                if *recorded != ours {
                    return Err(BuildError::invalid_option(
                        "capacity",
                        &ours,
                        format!(
                            "the layers of prefix {} run with {recorded}: every layer of a \
                             prefix needs the same capacity and channel_capacity, which the \
                             server enforces (use those, or another prefix)",
                            config.prefix
                        ),
                    ));
                }
            }
            // Memberships lapse at the group expiry of the layer started last, so a deploy
            // that changes it takes effect without anyone deleting the bucket; a bucket made
            // before capacities were recorded gets the record.
            if recorded.is_none() || existing.max_age != wanted.max_age {
                existing.max_age = wanted.max_age;
                // The server refuses a duplicates window longer than the age limit.
                existing.duplicate_window = existing.duplicate_window.min(wanted.max_age);
                existing.description = wanted.description.clone();
                js.update_stream(existing)
                    .await
                    .map_err(|e| setup_failed(format!("updating the stream {name}"), e))?;
            }
        }
        Err(e) => {
            return Err(setup_failed(
                format!("making the key-value bucket {bucket} (is JetStream enabled?)"),
                e,
            ));
        }
    }
    let groups = js.get_key_value(&bucket).await.map_err(|e| {
        BuildError::Backend(failure(
            BackendErrorKind::Other,
            format!("opening the key-value bucket {bucket}"),
            e,
        ))
    })?;
    let groups_stream = js.get_stream(&name).await.map_err(|e| {
        BuildError::Backend(failure(
            BackendErrorKind::Other,
            format!("opening the stream of bucket {bucket}"),
            e,
        ))
    })?;
    Ok((groups, groups_stream))
}

/// The stream of channels of capacity `capacity`, made if missing. One that exists with other
/// settings is used as it is (replicas and storage are whatever the first layer chose),
/// except that its age limit is raised when this layer's expiry needs a longer one.
async fn make_stream(
    js: &jetstream::Context,
    config: &NatsConfig,
    capacity: usize,
    storage: stream::StorageType,
) -> Result<stream::Stream, BuildError> {
    let name = subjects::stream_name(&config.prefix, capacity);
    let wanted = stream::Config {
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
        max_age: max_age(config),
        storage,
        num_replicas: config.replicas,
        republish: Some(stream::Republish {
            source: subjects::stream_subjects(&config.prefix, capacity),
            destination: subjects::wake_subjects(&config.prefix, capacity),
            headers_only: false,
        }),
        allow_direct: true,
        ..Default::default()
    };
    match js.create_stream(wanted.clone()).await {
        Ok(stream) => Ok(stream),
        Err(e) if stream_error_code(&e) == Some(STREAM_IN_USE) => {
            let stream = js
                .get_stream(&name)
                .await
                .map_err(|e| setup_failed(format!("reading the stream {name}"), e))?;
            let mut existing = stream.cached_info().config.clone();
            let too_short = !existing.max_age.is_zero() && existing.max_age < wanted.max_age;
            if !too_short {
                return Ok(stream);
            }
            existing.max_age = wanted.max_age;
            js.update_stream(existing)
                .await
                .map_err(|e| setup_failed(format!("updating the stream {name}"), e))?;
            js.get_stream(&name)
                .await
                .map_err(|e| setup_failed(format!("reading the stream {name}"), e))
        }
        Err(e) => Err(setup_failed(
            format!("making the stream {name} (is JetStream enabled?)"),
            e,
        )),
    }
}
