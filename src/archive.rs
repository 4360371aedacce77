//! The archiver: a durable consumer on the events stream writing to MongoDB in unordered
//! batches, `_id = event_id`. A duplicate key is a success (the event is already there), so
//! redeliveries are harmless. While MongoDB is down the batch is retried with back-off and
//! kept alive with in-progress acks: the archive falls behind, and nothing is lost.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer, AckKind};
use futures::StreamExt;
use mongodb::bson::{self, doc, Bson, Document};
use mongodb::error::ErrorKind;
use mongodb::options::{ClientOptions, IndexOptions};
use mongodb::{Collection, IndexModel};
use tokio_util::sync::CancellationToken;

use crate::config::{ArchiveConfig, Config};
use crate::contract::{Encoding, RiskEvent};

const DUPLICATE_KEY: i32 = 11000;
const SERVER_SELECTION_TIMEOUT: Duration = Duration::from_secs(5);
/// MongoDB's document size limit.
const MAX_DOCUMENT_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("invalid MongoDB connection string {uri}: {source}")]
    Uri {
        uri: String,
        source: mongodb::error::Error,
    },
    #[error(transparent)]
    Streams(#[from] crate::streams::StreamsError),
}

/// Opens the events collection (the client connects lazily, so MongoDB may still be down).
pub async fn collection(config: &ArchiveConfig) -> Result<Collection<Document>, ArchiveError> {
    let uri_error = |source| ArchiveError::Uri {
        uri: config.uri.clone(),
        source,
    };
    let mut options = ClientOptions::parse(&config.uri).await.map_err(uri_error)?;
    // The driver's 30 s default would let one attempt outlast the archiver's ack_wait and the
    // shutdown grace period; a shorter one keeps retries (and progress acks) frequent.
    options
        .server_selection_timeout
        .get_or_insert(SERVER_SELECTION_TIMEOUT);
    let client = mongodb::Client::with_options(options).map_err(uri_error)?;
    Ok(client
        .database(&config.database)
        .collection(&config.collection))
}

/// The indexes every query of the archive uses.
pub async fn ensure_indexes(collection: &Collection<Document>) -> mongodb::error::Result<()> {
    let index = |keys: Document, name: &str| {
        IndexModel::builder()
            .keys(keys)
            .options(IndexOptions::builder().name(name.to_string()).build())
            .build()
    };
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

/// What an insert attempt means for the batch.
#[derive(Debug, PartialEq)]
enum Outcome {
    /// Stored, or already there.
    Stored,
    /// Some documents can never be stored (the server refused them); the rest are in.
    Refused(Vec<String>),
    /// Nothing can be said (MongoDB unreachable, write concern failed): try again.
    Retry(String),
}

fn classify(result: mongodb::error::Result<()>) -> Outcome {
    let Err(error) = result else {
        return Outcome::Stored;
    };
    match error.kind.as_ref() {
        ErrorKind::InsertMany(e) if e.write_concern_error.is_none() => {
            let refused: Vec<String> = e
                .write_errors
                .iter()
                .flatten()
                .filter(|w| w.code != DUPLICATE_KEY)
                .map(|w| format!("#{} {}: {}", w.index, w.code, w.message))
                .collect();
            if refused.is_empty() {
                Outcome::Stored
            } else {
                Outcome::Refused(refused)
            }
        }
        _ => Outcome::Retry(error.to_string()),
    }
}

pub struct Archiver {
    consumer: PullConsumer,
    collection: Collection<Document>,
    batch_size: usize,
    batch_wait: Duration,
    retry_max: Duration,
}

impl Archiver {
    pub async fn build(js: &jetstream::Context, config: &Config) -> Result<Archiver, ArchiveError> {
        Ok(Archiver {
            consumer: crate::streams::archiver(js, config).await?,
            collection: collection(&config.archive).await?,
            batch_size: config.archive.batch_size,
            batch_wait: Duration::from_millis(config.archive.batch_wait_ms),
            retry_max: Duration::from_millis(config.archive.retry_max_ms),
        })
    }

    /// Archives events until `shutdown`; the batch in hand is finished first.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut indexed = false;
        tracing::info!(collection = %self.collection.namespace(), "archiver started");
        while !shutdown.is_cancelled() {
            let messages = self.next_batch(&shutdown).await;
            if messages.is_empty() {
                continue;
            }
            let documents: Vec<Document> = messages.iter().filter_map(decode).collect();
            if !documents.is_empty()
                && !self
                    .store(&documents, &messages, &mut indexed, &shutdown)
                    .await
            {
                // Shut down while MongoDB was away: leave the batch unacked for next time.
                break;
            }
            for m in &messages {
                if let Err(e) = m.ack().await {
                    tracing::warn!(error = %e, "archive ack not sent; the event will be written again");
                }
            }
            tracing::debug!(count = messages.len(), "events archived");
        }
        tracing::info!("archiver stopped");
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
                tracing::warn!(error = %e, "cannot pull events; retrying");
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

    /// Writes until stored; false when shutdown came first.
    async fn store(
        &self,
        documents: &[Document],
        messages: &[jetstream::Message],
        indexed: &mut bool,
        shutdown: &CancellationToken,
    ) -> bool {
        let mut backoff = Duration::from_millis(100);
        loop {
            if !*indexed {
                match ensure_indexes(&self.collection).await {
                    Ok(()) => *indexed = true,
                    Err(e) => tracing::warn!(error = %e, "cannot create archive indexes yet"),
                }
            }
            let result = self
                .collection
                .insert_many(documents)
                .ordered(false)
                .await
                .map(|_| ());
            match classify(result) {
                Outcome::Stored => return true,
                Outcome::Refused(errors) => {
                    // Retrying cannot help; the events stay in VIGIL_EVENTS for its max age.
                    tracing::error!(
                        ?errors,
                        "MongoDB refused some events; they are not archived"
                    );
                    return true;
                }
                Outcome::Retry(error) => {
                    tracing::warn!(%error, retry_in = ?backoff, pending = documents.len(), "MongoDB write failed; retrying");
                    for m in messages {
                        let _ = m.ack_with(AckKind::Progress).await;
                    }
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

fn decode(message: &jetstream::Message) -> Option<Document> {
    let event: Result<RiskEvent, _> =
        Encoding::of(message.headers.as_ref()).decode(&message.payload);
    let document = event
        .map_err(|e| format!("not a risk event: {e}"))
        .and_then(|e| storable(&e));
    match document {
        Ok(d) => Some(d),
        Err(e) => {
            // Retrying cannot help: the event stays in VIGIL_EVENTS for its max age.
            tracing::error!(subject = %message.subject, error = %e, "event not archivable; skipped");
            None
        }
    }
}

/// The document for an event, checked as the driver will check it before sending (field
/// names, size), so that one bad event cannot hold its whole batch in a retry loop.
fn storable(event: &RiskEvent) -> Result<Document, String> {
    let document = to_document(event).map_err(|e| e.to_string())?;
    let raw = mongodb::bson::RawDocumentBuf::from_document(&document).map_err(|e| e.to_string())?;
    if raw.as_bytes().len() > MAX_DOCUMENT_BYTES {
        return Err(format!(
            "document is {} bytes, over MongoDB's 16 MiB",
            raw.as_bytes().len()
        ));
    }
    Ok(document)
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

    #[test]
    fn duplicate_keys_count_as_stored_and_other_write_errors_as_refused() {
        assert_eq!(classify(Ok(())), Outcome::Stored);
        assert_eq!(
            classify(insert_many_error(&[DUPLICATE_KEY, DUPLICATE_KEY])),
            Outcome::Stored
        );
        assert!(
            matches!(classify(insert_many_error(&[DUPLICATE_KEY, 2])), Outcome::Refused(r) if r.len() == 1)
        );
        let unreachable = Error::from(std::io::Error::other("connection refused"));
        assert!(matches!(classify(Err(unreachable)), Outcome::Retry(_)));
    }
}
