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
use mongodb::bson::{self, doc, Bson, Document};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::options::{ClientOptions, IndexOptions, Tls, TlsOptions};
use mongodb::{Collection, IndexModel};
use tokio_util::sync::CancellationToken;

use crate::config::{ArchiveConfig, Config};
use crate::contract::{self, Alert, DeadLetter, Encoding, ErrorCode, RiskEvent, Stage, DLQ_SCHEMA};

const DUPLICATE_KEY: i32 = 11000;
const SERVER_SELECTION_TIMEOUT: Duration = Duration::from_secs(5);
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

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("invalid MongoDB connection string {uri}: {source}")]
    Uri {
        uri: String,
        source: mongodb::error::Error,
    },
    #[error("cannot read archive.password_file {path}: {source}")]
    Password {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Streams(#[from] crate::streams::StreamsError),
}

/// Opens the events collection (the client connects lazily, so MongoDB may still be down).
pub async fn collection(config: &ArchiveConfig) -> Result<Collection<Document>, ArchiveError> {
    named_collection(config, &config.collection).await
}

/// Opens the alerts collection.
pub async fn alerts_collection(
    config: &ArchiveConfig,
) -> Result<Collection<Document>, ArchiveError> {
    named_collection(config, &config.alerts_collection).await
}

async fn named_collection(
    config: &ArchiveConfig,
    name: &str,
) -> Result<Collection<Document>, ArchiveError> {
    let uri_error = |source| ArchiveError::Uri {
        uri: crate::config::mask_userinfo(&config.uri),
        source,
    };
    let mut options = ClientOptions::parse(&config.uri).await.map_err(uri_error)?;
    // The driver's 30 s default would let one attempt outlast the shutdown grace period; a
    // shorter one keeps retries, and the log lines that say MongoDB is down, frequent.
    options
        .server_selection_timeout
        .get_or_insert(SERVER_SELECTION_TIMEOUT);
    if let Some(username) = &config.username {
        let mut credential = options.credential.take().unwrap_or_default();
        credential.username = Some(username.clone());
        // vigil needs MongoDB 6+, where SCRAM-SHA-256 is always there; naming it spares the
        // negotiation, which some MongoDB-wire servers do not answer.
        credential
            .mechanism
            .get_or_insert(mongodb::options::AuthMechanism::ScramSha256);
        if let Some(path) = &config.password_file {
            let password =
                std::fs::read_to_string(path).map_err(|source| ArchiveError::Password {
                    path: path.display().to_string(),
                    source,
                })?;
            credential.password = Some(password.trim_end_matches(['\n', '\r']).to_string());
        }
        options.credential = Some(credential);
    }
    if config.tls_ca_file.is_some() || config.tls_cert_key_file.is_some() {
        let mut tls = match options.tls.take() {
            Some(Tls::Enabled(tls)) => tls,
            _ => TlsOptions::default(),
        };
        if let Some(ca) = &config.tls_ca_file {
            tls.ca_file_path = Some(ca.clone());
        }
        if let Some(pem) = &config.tls_cert_key_file {
            tls.cert_key_file_path = Some(pem.clone());
        }
        options.tls = Some(Tls::Enabled(tls));
    }
    let client = mongodb::Client::with_options(options).map_err(uri_error)?;
    Ok(client.database(&config.database).collection(name))
}

fn index(keys: Document, name: &str) -> IndexModel {
    IndexModel::builder()
        .keys(keys)
        .options(IndexOptions::builder().name(name.to_string()).build())
        .build()
}

/// The indexes every query of the archive uses.
pub async fn ensure_indexes(collection: &Collection<Document>) -> mongodb::error::Result<()> {
    collection
        .create_indexes([
            index(
                doc! { "site": 1, "camera_id": 1, "captured_at": -1 },
                "camera_time",
            ),
            index(
                doc! { "site": 1, "risk.level": 1, "captured_at": -1 },
                "site_level_time",
            ),
        ])
        .await?;
    Ok(())
}

/// An event as stored: `_id = event_id`, timestamps as BSON dates.
pub fn to_document(event: &RiskEvent) -> Result<Document, bson::ser::Error> {
    let mut document = bson::to_document(event)?;
    document.insert("_id", event.event_id.clone());
    document.insert(
        "captured_at",
        bson::DateTime::from_millis(event.captured_at.timestamp_millis()),
    );
    document.insert(
        "processed_at",
        bson::DateTime::from_millis(event.processed_at.timestamp_millis()),
    );
    Ok(document)
}

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
            }),
            consumer: crate::streams::archiver(js, config).await?,
            collection: collection(&config.archive).await?,
            batch_size: config.archive.batch_size,
            batch_wait: Duration::from_millis(config.archive.batch_wait_ms),
            retry_max: Duration::from_millis(config.archive.retry_max_ms),
            ack_wait: Duration::from_secs(config.archive.ack_wait_s),
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
                match ensure_indexes(&self.collection).await {
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
                    indexed = ensure_alert_indexes(&self.collection).await.is_ok();
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

/// An alert as stored: `_id = alert_id`, times as BSON dates.
pub fn alert_document(alert: &Alert) -> Result<Document, String> {
    let mut document = bson::to_document(alert).map_err(|e| e.to_string())?;
    document.insert("_id", alert.alert_id.clone());
    let date =
        |t: &chrono::DateTime<chrono::Utc>| bson::DateTime::from_millis(t.timestamp_millis());
    document.insert("started_at", date(&alert.started_at));
    document.insert("updated_at", date(&alert.updated_at));
    if let Some(ended) = &alert.ended_at {
        document.insert("ended_at", date(ended));
    }
    document.insert("revision", i64::from(alert.revision));
    Ok(document)
}

/// The indexes the alerts collection's queries use.
pub async fn ensure_alert_indexes(collection: &Collection<Document>) -> mongodb::error::Result<()> {
    collection
        .create_indexes([
            index(
                doc! { "site": 1, "camera_id": 1, "started_at": -1 },
                "camera_started",
            ),
            index(
                doc! { "site": 1, "level": 1, "started_at": -1 },
                "site_level_started",
            ),
        ])
        .await?;
    Ok(())
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

/// The `_id` filter for a list of event ids.
pub fn ids_filter(ids: &[String]) -> Document {
    let ids: Vec<Bson> = ids.iter().cloned().map(Bson::String).collect();
    doc! { "_id": { "$in": ids } }
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
