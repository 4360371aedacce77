//! The archiver: a durable consumer on the events stream writing to MongoDB in unordered
//! batches, `_id = event_id`. A duplicate key is a success (the event is already there), so
//! redeliveries are harmless.
//!
//! Two kinds of failure, two answers. MongoDB unreachable (network, server selection, a
//! primary stepping down, authentication): the batch waits, kept in hand with in-progress
//! acks, and is retried with back-off; events keep flowing to control rooms meanwhile and the
//! archive catches up. A document MongoDB refuses (a value it cannot store, a field name it
//! forbids): retrying cannot help, so the batch is split until the refused event stands
//! alone; it is recorded on the dead-letter stream (stage `archive`) and acked, and the rest
//! is archived. One bad event never holds up the events behind it.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::PullConsumer, AckKind, Context};
use chrono::Utc;
use futures::StreamExt;
use mongodb::bson::{doc, Document};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::Collection;
use tokio_util::sync::CancellationToken;

use super::{
    alert_document, alerts_collection, collection, ensure_alert_indexes, ensure_indexes,
    to_document, ArchiveError,
};
use crate::config::Config;
use crate::contract::{self, Alert, DeadLetter, Encoding, ErrorCode, RiskEvent, Stage, DLQ_SCHEMA};

const DUPLICATE_KEY: i32 = 11000;
/// MongoDB's document size limit.
const MAX_DOCUMENT_BYTES: usize = 16 * 1024 * 1024;
/// Server error codes that say "not now" rather than "not this document": the node is
/// unreachable, shutting down, not primary, busy, or the operation timed out (the driver's
/// retryable codes plus lock and time-limit errors).
const TRANSIENT_CODES: [i32; 17] = [
    6, 7, 46, 50, 89, 91, 112, 134, 189, 262, 9001, 10058, 10107, 11600, 11602, 13435, 13436,
];
/// How often a MongoDB outage is repeated in the log while it lasts.
const OUTAGE_REMINDER: Duration = Duration::from_secs(60);

/// What one insert attempt means.
#[derive(Debug, PartialEq)]
enum Attempt {
    /// Stored, or already there.
    Stored,
    /// These documents (indexes into the attempt) can never be stored; the rest are in.
    Refused(Vec<(usize, String)>),
    /// The server refused the whole attempt because of what it holds (not which server or
    /// when): split it to find the document.
    Rejected(String),
    /// Nothing can be said about the documents (MongoDB unreachable, not primary, write
    /// concern failed, authentication): the same attempt later.
    Unreachable(String),
}

fn classify(result: mongodb::error::Result<()>) -> Attempt {
    let Err(error) = result else {
        return Attempt::Stored;
    };
    let message = contract::bounded(&error.to_string());
    let transient_labels = [
        "RetryableWriteError",
        "TransientTransactionError",
        "NetworkError",
    ];
    if transient_labels.iter().any(|l| error.contains_label(l)) {
        return Attempt::Unreachable(message);
    }
    match error.kind.as_ref() {
        ErrorKind::InsertMany(e) if e.write_concern_error.is_some() => {
            Attempt::Unreachable(message)
        }
        ErrorKind::InsertMany(e) => {
            let refused: Vec<(usize, String)> = e
                .write_errors
                .iter()
                .flatten()
                .filter(|w| w.code != DUPLICATE_KEY)
                .map(|w| {
                    (
                        w.index,
                        contract::bounded(&format!("{}: {}", w.code, w.message)),
                    )
                })
                .collect();
            if refused.is_empty() {
                Attempt::Stored
            } else {
                Attempt::Refused(refused)
            }
        }
        ErrorKind::Write(WriteFailure::WriteError(e)) if e.code == DUPLICATE_KEY => Attempt::Stored,
        ErrorKind::Write(WriteFailure::WriteError(e)) => Attempt::Refused(vec![(
            0,
            contract::bounded(&format!("{}: {}", e.code, e.message)),
        )]),
        ErrorKind::Write(WriteFailure::WriteConcernError(_)) => Attempt::Unreachable(message),
        ErrorKind::Command(e) if TRANSIENT_CODES.contains(&e.code) => Attempt::Unreachable(message),
        ErrorKind::Command(_)
        | ErrorKind::BsonSerialization(_)
        | ErrorKind::InvalidArgument { .. } => Attempt::Rejected(message),
        _ => Attempt::Unreachable(message),
    }
}

/// Counters of the archiver, for `$SRV.STATS.vigil`.
#[derive(Debug, Default)]
pub struct ArchiveStats {
    /// Events stored (or found already stored).
    pub archived: AtomicU64,
    /// Events MongoDB refused, recorded on the dead-letter stream.
    pub refused: AtomicU64,
    /// 1 while MongoDB is unreachable.
    pub mongodb_down: AtomicU64,
}

pub struct Archiver {
    js: Context,
    /// Taken by `run`, which runs it beside the events.
    alerts: Option<AlertArchiver>,
    consumer: PullConsumer,
    collection: Collection<Document>,
    batch_size: usize,
    batch_wait: Duration,
    retry_max: Duration,
    ack_wait: Duration,
    retention_days: u32,
    stats: Arc<ArchiveStats>,
}

/// Where MongoDB stands, for log lines that say what is down and since when.
#[derive(Default)]
struct Health {
    down_since: Option<Instant>,
    reminded: Option<Instant>,
}

impl Archiver {
    pub async fn build(js: &jetstream::Context, config: &Config) -> Result<Archiver, ArchiveError> {
        Ok(Archiver {
            js: js.clone(),
            alerts: Some(AlertArchiver {
                consumer: crate::streams::alert_archiver(js, config).await?,
                collection: alerts_collection(&config.archive).await?,
                retry_max: Duration::from_millis(config.archive.retry_max_ms),
                retention_days: config.archive.retention.alerts_days,
            }),
            consumer: crate::streams::archiver(js, config).await?,
            collection: collection(&config.archive).await?,
            batch_size: config.archive.batch_size,
            batch_wait: Duration::from_millis(config.archive.batch_wait_ms),
            retry_max: Duration::from_millis(config.archive.retry_max_ms),
            ack_wait: Duration::from_secs(config.archive.ack_wait_s),
            retention_days: config.archive.retention.events_days,
            stats: Arc::new(ArchiveStats::default()),
        })
    }

    pub fn stats(&self) -> Arc<ArchiveStats> {
        self.stats.clone()
    }

    /// Archives events until `shutdown`; the batch in hand is finished first (unless MongoDB
    /// is down: then it stays unacked, for the next archiver).
    pub async fn run(mut self, shutdown: CancellationToken) {
        let alerts = self
            .alerts
            .take()
            .map(|a| tokio::spawn(a.run(shutdown.clone())));
        let mut indexed = false;
        let mut health = Health::default();
        tracing::info!(collection = %self.collection.namespace(), "archiver started");
        while !shutdown.is_cancelled() {
            let messages = self.next_batch(&shutdown).await;
            if messages.is_empty() {
                continue;
            }
            let mut documents = Vec::with_capacity(messages.len());
            let mut refused = Vec::new();
            for (i, message) in messages.iter().enumerate() {
                match decode(message) {
                    Ok(d) => documents.push((i, d)),
                    Err(reason) => refused.push((i, reason)),
                }
            }
            let stored = self.keep_in_progress(
                &messages,
                self.store(&documents, &mut indexed, &mut health, &shutdown),
            );
            let Some(mut refused_by_mongodb) = stored.await else {
                break;
            };
            refused.append(&mut refused_by_mongodb);
            self.settle(&messages, &refused).await;
        }
        if let Some(alerts) = alerts {
            let _ = alerts.await;
        }
        tracing::info!("archiver stopped");
    }

    /// Runs `work` while telling JetStream, every third of the ack wait, that the batch is
    /// still in hand: a slow or absent MongoDB never makes the server hand it to another
    /// archiver (or back to this one) while it is being written.
    async fn keep_in_progress<T>(
        &self,
        messages: &[jetstream::Message],
        work: impl std::future::Future<Output = T>,
    ) -> T {
        tokio::pin!(work);
        let mut tick = tokio::time::interval(self.ack_wait / 3);
        tick.tick().await;
        loop {
            tokio::select! {
                out = &mut work => return out,
                _ = tick.tick() => {
                    for m in messages {
                        let _ = m.ack_with(AckKind::Progress).await;
                    }
                }
            }
        }
    }

    /// Records the refused events on the dead-letter stream and acks the batch. A refused
    /// event whose record cannot be stored is left unacked: it comes back after the ack wait.
    async fn settle(&self, messages: &[jetstream::Message], refused: &[(usize, String)]) {
        let mut unrecorded = Vec::new();
        for (i, reason) in refused {
            let message = &messages[*i];
            let record = dead_letter(message, reason);
            tracing::error!(event_id = ?record.event_id, reason = %reason, "event refused by the archive; recorded on the dead-letter stream");
            match crate::publish::publish_dead_letter(&self.js, &record).await {
                Ok(()) => {
                    self.stats.refused.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "dead letter not stored; the event will be tried again");
                    unrecorded.push(*i);
                }
            }
        }
        let mut archived = 0;
        for (i, m) in messages.iter().enumerate() {
            if unrecorded.contains(&i) {
                continue;
            }
            if !refused.iter().any(|(r, _)| *r == i) {
                archived += 1;
            }
            if let Err(e) = m.ack().await {
                tracing::warn!(error = %e, "archive ack not sent; the event will be written again");
            }
        }
        self.stats.archived.fetch_add(archived, Ordering::Relaxed);
        tracing::debug!(archived, refused = refused.len(), "batch archived");
    }

    async fn next_batch(&self, shutdown: &CancellationToken) -> Vec<jetstream::Message> {
        let request = self
            .consumer
            .batch()
            .max_messages(self.batch_size)
            .expires(self.batch_wait)
            .messages();
        let mut batch = match request.await {
            Ok(b) => b,
            Err(e) => {
                tracing::debug!(error = %e, "cannot pull events; retrying");
                tokio::select! { _ = shutdown.cancelled() => {}, _ = tokio::time::sleep(self.batch_wait) => {} }
                return Vec::new();
            }
        };
        let mut messages = Vec::new();
        // Once pulled, a message is finished even during shutdown: it is already ours.
        while let Some(next) = batch.next().await {
            match next {
                Ok(m) => messages.push(m),
                Err(e) => {
                    tracing::debug!(error = %e, "pull request ended");
                    break;
                }
            }
        }
        messages
    }

    /// Writes `documents` (each with its index in the batch) until every one is stored or
    /// refused. Returns the refused ones, or None when shutdown came while MongoDB was away.
    async fn store(
        &self,
        documents: &[(usize, Document)],
        indexed: &mut bool,
        health: &mut Health,
        shutdown: &CancellationToken,
    ) -> Option<Vec<(usize, String)>> {
        let mut refused = Vec::new();
        let mut parts: Vec<&[(usize, Document)]> = vec![documents];
        let mut backoff = Duration::from_millis(100);
        while let Some(part) = parts.pop() {
            if part.is_empty() {
                continue;
            }
            if !*indexed {
                match ensure_indexes(&self.collection, self.retention_days).await {
                    Ok(()) => *indexed = true,
                    Err(e) => tracing::debug!(error = %e, "cannot create archive indexes yet"),
                }
            }
            let result = self
                .collection
                .insert_many(part.iter().map(|(_, d)| d))
                .ordered(false)
                .await
                .map(|_| ());
            match classify(result) {
                Attempt::Stored => self.healthy(health),
                Attempt::Refused(errors) => {
                    self.healthy(health);
                    refused.extend(errors.into_iter().map(|(i, e)| (part[i].0, e)));
                }
                Attempt::Rejected(error) if part.len() == 1 => {
                    self.healthy(health);
                    refused.push((part[0].0, error));
                }
                Attempt::Rejected(error) => {
                    tracing::debug!(%error, size = part.len(), "MongoDB refused the batch; splitting it to find the event");
                    let (left, right) = part.split_at(part.len() / 2);
                    parts.push(right);
                    parts.push(left);
                }
                Attempt::Unreachable(error) => {
                    self.unhealthy(health, &error, part.len());
                    parts.push(part);
                    tokio::select! {
                        _ = shutdown.cancelled() => return None,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(self.retry_max);
                    continue;
                }
            }
            backoff = Duration::from_millis(100);
        }
        Some(refused)
    }

    fn unhealthy(&self, health: &mut Health, error: &str, pending: usize) {
        let now = Instant::now();
        let since = *health.down_since.get_or_insert(now);
        self.stats.mongodb_down.store(1, Ordering::Relaxed);
        let remind = health
            .reminded
            .is_none_or(|at| now.duration_since(at) >= OUTAGE_REMINDER);
        if remind {
            health.reminded = Some(now);
            tracing::warn!(%error, down_for_s = since.elapsed().as_secs(), pending, "MongoDB unreachable; the archive waits (events still reach control rooms and stay in VIGIL_EVENTS)");
        } else {
            tracing::debug!(%error, "MongoDB still unreachable");
        }
    }

    fn healthy(&self, health: &mut Health) {
        if let Some(since) = health.down_since.take() {
            health.reminded = None;
            self.stats.mongodb_down.store(0, Ordering::Relaxed);
            tracing::info!(
                down_for_s = since.elapsed().as_secs(),
                "MongoDB reachable again; the archive catches up"
            );
        }
    }
}

/// Alerts into MongoDB, one document per alert (`_id = alert_id`), a newer revision always
/// replacing an older one and never the reverse: redeliveries and out-of-order copies are
/// harmless.
struct AlertArchiver {
    consumer: PullConsumer,
    collection: Collection<Document>,
    retry_max: Duration,
    retention_days: u32,
}

impl AlertArchiver {
    async fn run(self, shutdown: CancellationToken) {
        let mut indexed = false;
        while !shutdown.is_cancelled() {
            let request = self
                .consumer
                .batch()
                .max_messages(100)
                .expires(Duration::from_millis(500))
                .messages();
            let Ok(mut batch) = request.await else {
                tokio::select! { _ = shutdown.cancelled() => break, _ = tokio::time::sleep(Duration::from_secs(1)) => continue }
            };
            while let Some(Ok(message)) = batch.next().await {
                if !indexed {
                    indexed =
                        match ensure_alert_indexes(&self.collection, self.retention_days).await {
                            Ok(()) => true,
                            Err(e) => {
                                tracing::debug!(error = %e, "cannot create alert indexes yet");
                                false
                            }
                        };
                }
                if !self.store(&message, &shutdown).await {
                    return;
                }
                let _ = message.ack().await;
            }
        }
    }

    /// Stores one alert revision; false when shutdown came while MongoDB was away.
    async fn store(&self, message: &jetstream::Message, shutdown: &CancellationToken) -> bool {
        let alert: Alert = match Encoding::of(message.headers.as_ref()).decode(&message.payload) {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(subject = %message.subject, error = %contract::bounded(&e.to_string()), "not an alert; not archived");
                return true;
            }
        };
        let document = match alert_document(&alert) {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(alert_id = %alert.alert_id, error = %e, "alert not archivable");
                return true;
            }
        };
        let older =
            doc! { "_id": &alert.alert_id, "revision": { "$lt": i64::from(alert.revision) } };
        let mut backoff = Duration::from_millis(100);
        loop {
            let result = self
                .collection
                .replace_one(older.clone(), &document)
                .upsert(true)
                .await
                .map(|_| ());
            // A duplicate key means a revision as new or newer is already there.
            match classify(result) {
                Attempt::Stored => return true,
                Attempt::Refused(e) => {
                    tracing::error!(alert_id = %alert.alert_id, errors = ?e, "MongoDB refused the alert");
                    return true;
                }
                Attempt::Rejected(e) => {
                    tracing::error!(alert_id = %alert.alert_id, error = %e, "MongoDB refused the alert");
                    return true;
                }
                Attempt::Unreachable(e) => {
                    tracing::debug!(error = %e, "MongoDB unreachable; the alert waits");
                    let _ = message.ack_with(AckKind::Progress).await;
                    tokio::select! {
                        _ = shutdown.cancelled() => return false,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(self.retry_max);
                }
            }
        }
    }
}

fn decode(message: &jetstream::Message) -> Result<Document, String> {
    let event: RiskEvent = Encoding::of(message.headers.as_ref())
        .decode(&message.payload)
        .map_err(|e| contract::bounded(&format!("not a risk event: {e}")))?;
    storable(&event)
}

/// The document for an event, checked as the driver will check it before sending (field
/// names, size), so that the obvious refusals need no round trip.
fn storable(event: &RiskEvent) -> Result<Document, String> {
    let document = to_document(event).map_err(|e| contract::bounded(&e.to_string()))?;
    let raw = mongodb::bson::RawDocumentBuf::from_document(&document)
        .map_err(|e| contract::bounded(&e.to_string()))?;
    if raw.as_bytes().len() > MAX_DOCUMENT_BYTES {
        return Err(format!(
            "document is {} bytes, over MongoDB's 16 MiB",
            raw.as_bytes().len()
        ));
    }
    Ok(document)
}

/// The dead-letter record of an event the archive refused.
fn dead_letter(message: &jetstream::Message, reason: &str) -> DeadLetter {
    let event: Option<RiskEvent> = Encoding::of(message.headers.as_ref())
        .decode(&message.payload)
        .ok();
    let (site, camera, frame_id, event_id) = match &event {
        Some(e) => (
            e.site.clone(),
            e.camera_id.clone(),
            Some(e.frame_id.clone()),
            Some(e.event_id.clone()),
        ),
        None => {
            let tokens: Vec<&str> = message.subject.split('.').collect();
            let token = |i: usize| {
                tokens
                    .get(i)
                    .filter(|t| contract::is_token(t))
                    .map_or("invalid".to_string(), |t| t.to_string())
            };
            (token(3), token(4), None, None)
        }
    };
    let info = message.info().ok();
    DeadLetter {
        schema: DLQ_SCHEMA.into(),
        stage: Stage::Archive,
        subject: contract::bounded(&message.subject),
        site,
        camera_id: camera,
        frame_id,
        event_id,
        reason: if event.is_some() {
            ErrorCode::Internal
        } else {
            ErrorCode::BadRequest
        },
        message: reason.to_string(),
        stream_sequence: info.as_ref().map(|i| i.stream_sequence),
        delivered: info.as_ref().and_then(|i| u64::try_from(i.delivered).ok()),
        size_bytes: message.payload.len(),
        at: Utc::now(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::error::{Error, InsertManyError};

    fn insert_many_error(codes: &[i32]) -> mongodb::error::Result<()> {
        let errors: Vec<mongodb::bson::Document> = codes
            .iter()
            .enumerate()
            .map(|(i, code)| doc! { "index": i as i32, "code": *code, "errmsg": "x" })
            .collect();
        let mut e: InsertManyError =
            mongodb::bson::from_document(doc! { "writeErrors": errors }).unwrap();
        e.write_concern_error = None;
        Err(Error::from(ErrorKind::InsertMany(e)))
    }

    fn command_error(code: i32) -> mongodb::error::Result<()> {
        let e: mongodb::error::CommandError = mongodb::bson::from_document(
            doc! { "code": code, "codeName": "X", "errmsg": "year 0 is out of range" },
        )
        .unwrap();
        Err(Error::from(ErrorKind::Command(e)))
    }

    #[test]
    fn duplicates_are_stored_other_write_errors_refused() {
        assert_eq!(classify(Ok(())), Attempt::Stored);
        assert_eq!(
            classify(insert_many_error(&[DUPLICATE_KEY, DUPLICATE_KEY])),
            Attempt::Stored
        );
        assert!(
            matches!(classify(insert_many_error(&[DUPLICATE_KEY, 2])), Attempt::Refused(r) if r.len() == 1 && r[0].0 == 1)
        );
    }

    #[test]
    fn only_connection_level_failures_wait_for_mongodb() {
        let unreachable = Error::from(std::io::Error::other("connection refused"));
        assert!(matches!(
            classify(Err(unreachable)),
            Attempt::Unreachable(_)
        ));
        for code in [91, 189, 10107, 11600, 262] {
            assert!(
                matches!(classify(command_error(code)), Attempt::Unreachable(_)),
                "{code}"
            );
        }
        // BadValue: the server cannot take what the batch holds. That is the documents'
        // problem, found by splitting, never a reason to stop archiving.
        assert!(matches!(classify(command_error(2)), Attempt::Rejected(_)));
    }
}
