//! The JetStream requests the layer makes itself, and the errors behind the client's.
//!
//! Reads go through the client's stream helpers; a purge by subject and sequence and the
//! paged subject listing are asked of the JetStream API directly, because the client's
//! helpers either do not offer them in this form (the purge's count is what a take rests on)
//! or page in a way that repeats entries under concurrent changes.

use std::collections::BTreeMap;

use async_nats::jetstream::{self, stream};
use bytes::Bytes;

use super::Inner;
use crate::error::{BackendError, BackendErrorKind};

/// JetStream's error code for a publish refused by "discard new per subject".
pub(super) const FULL: u64 = 10077;
/// JetStream's error code for a stream that exists with another configuration.
pub(super) const STREAM_IN_USE: u64 = 10058;

/// A backend error of `kind` about `context`, caused by `source`.
pub(super) fn failure(
    kind: BackendErrorKind,
    context: impl Into<String>,
    source: impl std::error::Error + Send + Sync + 'static,
) -> BackendError {
    BackendError::new(kind, context).with_source(source)
}

/// The JetStream error code behind an `async-nats` error, if the server gave one.
pub(super) fn jetstream_code(e: &(dyn std::error::Error + 'static)) -> Option<u64> {
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
pub(super) fn stream_error_code(e: &jetstream::context::CreateStreamError) -> Option<u64> {
    match e.kind() {
        jetstream::context::CreateStreamErrorKind::JetStream(js) => Some(js.error_code().0),
        _ => jetstream_code(e),
    }
}

/// The most a batched read asks for: the server answers at most 1024 messages to one request.
pub(super) const MAX_READ: usize = 1024;

/// Whether a server of `version` (`major.minor.patch`, maybe with a suffix) answers batched
/// direct gets (`batch`, `multi_last`): 2.11 and later.
pub(super) fn reads_in_batches(version: &str) -> bool {
    let mut parts = version
        .trim_start_matches('v')
        .split(['.', '-'])
        .map(|p| p.parse::<u64>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (2, 11)
}

impl Inner {
    /// Whether `stream` can be read in batches here: the server is 2.11 or later and the
    /// stream allows direct gets (streams made by older versions of this crate do not).
    pub(super) fn batched(&self, stream: &stream::Stream) -> bool {
        self.batch_reads && stream.cached_info().config.allow_direct
    }

    /// A batched direct get of `stream` (2.11 and later): the messages the server sends until
    /// its end-of-batch mark, or `None` when it answers that the request asks for too many
    /// (more than [`MAX_READ`] subjects). Bounded by the operation timeout.
    pub(super) async fn read_batch(
        &self,
        stream: &stream::Stream,
        request: serde_json::Value,
    ) -> Result<Option<Vec<jetstream::message::StreamMessage>>, BackendError> {
        use futures_util::StreamExt as _;
        let name = &stream.cached_info().config.name;
        let what = || format!("reading {name} ({request})");
        let inbox = self.client.new_inbox();
        let mut answers = self
            .client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| failure(BackendErrorKind::Connection, what(), e))?;
        self.client
            .publish_with_reply(
                format!("$JS.API.DIRECT.GET.{name}"),
                inbox,
                Bytes::from(request.to_string()),
            )
            .await
            .map_err(|e| failure(BackendErrorKind::Connection, what(), e))?;
        let deadline = tokio::time::Instant::now() + self.config.operation_timeout;
        let mut found = Vec::new();
        loop {
            let answer = match tokio::time::timeout_at(deadline, answers.next()).await {
                Ok(Some(answer)) => answer,
                Ok(None) => {
                    return Err(BackendError::new(
                        BackendErrorKind::Connection,
                        format!("{}: the connection closed", what()),
                    ));
                }
                Err(_) => {
                    return Err(BackendError::new(
                        BackendErrorKind::Timeout,
                        format!("{}: no answer in time", what()),
                    ));
                }
            };
            match answer.status.map(|s| s.as_u16()) {
                None => {
                    let message =
                        jetstream::message::StreamMessage::try_from(answer).map_err(|e| {
                            BackendError::new(
                                BackendErrorKind::Protocol,
                                format!("{}: {e}", what()),
                            )
                        })?;
                    found.push(message);
                    if found.len() > MAX_READ {
                        return Err(BackendError::new(
                            BackendErrorKind::Protocol,
                            format!("{}: more messages than asked for", what()),
                        ));
                    }
                }
                // The end of the batch, or nothing to read.
                Some(204 | 404) => return Ok(Some(found)),
                Some(413) => return Ok(None),
                Some(other) => {
                    return Err(BackendError::new(
                        BackendErrorKind::Refused,
                        format!("{}: status {other} {:?}", what(), answer.description),
                    ));
                }
            }
        }
    }

    /// One request to the JetStream API, its JSON answer; an answer holding an error is a
    /// [`BackendErrorKind::Refused`] naming `what`.
    pub(super) async fn api(
        &self,
        subject: String,
        body: String,
        what: &str,
    ) -> Result<serde_json::Value, BackendError> {
        let reply = self
            .client
            .request(subject, Bytes::from(body))
            .await
            .map_err(|e| failure(BackendErrorKind::Timeout, what, e))?;
        let answer: serde_json::Value = serde_json::from_slice(&reply.payload)
            .map_err(|e| BackendError::new(BackendErrorKind::Protocol, format!("{what}: {e}")))?;
        if let Some(error) = answer.get("error") {
            return Err(BackendError::new(
                BackendErrorKind::Refused,
                format!("{what}: {error}"),
            ));
        }
        Ok(answer)
    }

    /// The oldest message on `subject` with a sequence number of at least `from`, if any.
    pub(super) async fn read_from(
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

    /// Removes every message of `subject` up to sequence `last` (included): how many the
    /// server removed. The server applies it once, in its log's order, so concurrent purges of
    /// one subject each remove a different part of it.
    pub(super) async fn purge_through(
        &self,
        stream: &stream::Stream,
        subject: &str,
        last: u64,
    ) -> Result<u64, BackendError> {
        let name = &stream.cached_info().config.name;
        let body = serde_json::json!({ "filter": subject, "seq": last.saturating_add(1) });
        let answer = self
            .api(
                format!("$JS.API.STREAM.PURGE.{name}"),
                body.to_string(),
                &format!("taking messages of {subject} up to {last}"),
            )
            .await?;
        Ok(answer
            .get("purged")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0))
    }

    /// The subjects of `stream` matching `filter`, with their message counts: at most about
    /// `limit` (whole pages of the server's listing), in one stream-info request per page.
    pub(super) async fn subjects_of(
        &self,
        stream: &str,
        filter: &str,
        limit: usize,
    ) -> Result<BTreeMap<String, u64>, BackendError> {
        // The server gives at most this many subjects per page.
        const PAGE: usize = 100_000;
        let api = format!("$JS.API.STREAM.INFO.{stream}");
        let what = format!("listing {filter} in {stream}");
        let mut listed = BTreeMap::new();
        while listed.len() < limit {
            let request = serde_json::json!({ "subjects_filter": filter, "offset": listed.len() });
            let info = self.api(api.clone(), request.to_string(), &what).await?;
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

    /// The names of this prefix's channel streams, with their capacities.
    pub(super) async fn channel_streams(&self) -> Result<Vec<(String, usize)>, BackendError> {
        use futures_util::StreamExt as _;
        let ours = super::subjects::stream_name_head(&self.config.prefix);
        let mut names = Box::pin(self.js.stream_names());
        let mut streams = Vec::new();
        while let Some(name) = names.next().await {
            let name =
                name.map_err(|e| failure(BackendErrorKind::Unavailable, "listing the streams", e))?;
            let capacity = name
                .strip_prefix(&ours)
                .filter(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|c| c.parse::<usize>().ok());
            if let Some(capacity) = capacity {
                streams.push((name, capacity));
            }
        }
        Ok(streams)
    }
}
