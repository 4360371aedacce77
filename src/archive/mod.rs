//! The archive: events and alerts in MongoDB, and what people do with them.
//!
//! - this file: the connection, the stored form of events and alerts (`_id` = their id,
//!   times as BSON dates), the indexes every query uses, and retention (TTL indexes).
//! - [`writer`]: the archiver, a durable consumer on VIGIL_EVENTS and VIGIL_ALERTS.
//! - [`query`]: filters → one MongoDB find, always served by a named index.
//! - [`replay`]: a time window republished on `vigil.replay…` at a chosen pace.
//! - [`reevaluate`]: archived events through the situation stage with another configuration.

use std::time::Duration;

use mongodb::bson::{self, doc, Bson, Document};
use mongodb::options::{ClientOptions, IndexOptions, Tls, TlsOptions};
use mongodb::{Collection, IndexModel};

use crate::config::ArchiveConfig;
use crate::contract::{Alert, RiskEvent};

pub mod query;
pub mod reevaluate;
pub mod replay;
pub mod writer;

pub use writer::{ArchiveStats, Archiver};

const SERVER_SELECTION_TIMEOUT: Duration = Duration::from_secs(5);
/// MongoDB refuses a TTL longer than this (about 68 years): "keep for ever".
const TTL_FOREVER_S: i64 = i32::MAX as i64;
/// The index that holds a collection's retention (TTL).
pub const RETENTION_INDEX: &str = "retention";

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
    Ok(database(config).await?.collection(name))
}

/// The archive's database (the client connects lazily, so MongoDB may still be down).
pub async fn database(config: &ArchiveConfig) -> Result<mongodb::Database, ArchiveError> {
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
    Ok(client.database(&config.database))
}

fn index(keys: Document, name: &str) -> IndexModel {
    IndexModel::builder()
        .keys(keys)
        .options(IndexOptions::builder().name(name.to_string()).build())
        .build()
}

/// The events collection's indexes, by name: each query in [`query`] names the one it uses.
pub fn event_indexes() -> Vec<(&'static str, Document)> {
    vec![
        (
            "camera_time",
            doc! { "site": 1, "camera_id": 1, "captured_at": -1 },
        ),
        (
            "level_site_time",
            doc! { "risk.level": 1, "site": 1, "captured_at": -1 },
        ),
        ("label_time", doc! { "objects.label": 1, "captured_at": -1 }),
        ("zone_time", doc! { "objects.zones": 1, "captured_at": -1 }),
    ]
}

/// The alerts collection's indexes, by name.
pub fn alert_indexes() -> Vec<(&'static str, Document)> {
    vec![
        (
            "camera_started",
            doc! { "site": 1, "camera_id": 1, "started_at": -1 },
        ),
        (
            "level_site_started",
            doc! { "peak.level": 1, "site": 1, "started_at": -1 },
        ),
        ("rule_started", doc! { "rule": 1, "started_at": -1 }),
        ("zone_started", doc! { "zone.id": 1, "started_at": -1 }),
        (
            "label_started",
            doc! { "objects.label": 1, "started_at": -1 },
        ),
        ("started", doc! { "started_at": -1 }),
    ]
}

/// The indexes every query of the events collection uses, and its retention: events go
/// `retention.events_days` after their capture time (TTL on `captured_at`, which also serves
/// queries by time alone).
pub async fn ensure_indexes(
    collection: &Collection<Document>,
    retention_days: u32,
) -> mongodb::error::Result<()> {
    ensure(collection, event_indexes(), "captured_at", retention_days).await
}

/// The alerts collection's indexes; an alert goes `retention.alerts_days` after its last
/// revision (TTL on `updated_at`).
pub async fn ensure_alert_indexes(
    collection: &Collection<Document>,
    retention_days: u32,
) -> mongodb::error::Result<()> {
    ensure(collection, alert_indexes(), "updated_at", retention_days).await
}

async fn ensure(
    collection: &Collection<Document>,
    indexes: Vec<(&'static str, Document)>,
    ttl_field: &str,
    retention_days: u32,
) -> mongodb::error::Result<()> {
    collection
        .create_indexes(indexes.into_iter().map(|(name, keys)| index(keys, name)))
        .await?;
    ensure_ttl(collection, ttl_field, retention_days).await
}

/// Seconds a TTL index keeps documents for `days` (0: for ever).
pub fn ttl_seconds(days: u32) -> i64 {
    match days {
        0 => TTL_FOREVER_S,
        d => (i64::from(d) * 86_400).min(TTL_FOREVER_S),
    }
}

/// Creates the retention index on `field`, or changes its expiry when the configured days
/// changed (`collMod`): a new setting applies without dropping the index.
async fn ensure_ttl(
    collection: &Collection<Document>,
    field: &str,
    days: u32,
) -> mongodb::error::Result<()> {
    let seconds = ttl_seconds(days);
    let model = IndexModel::builder()
        .keys(doc! { field: 1 })
        .options(
            IndexOptions::builder()
                .name(RETENTION_INDEX.to_string())
                .expire_after(Duration::from_secs(seconds.unsigned_abs()))
                .build(),
        )
        .build();
    match collection.create_index(model).await {
        Ok(_) => Ok(()),
        Err(e) if matches!(e.kind.as_ref(), mongodb::error::ErrorKind::Command(c) if c.code == 85 || c.code == 86) =>
        {
            tracing::info!(collection = %collection.namespace(), days, "archive retention changed");
            collection
                .client()
                .database(&collection.namespace().db)
                .run_command(doc! {
                    "collMod": collection.name(),
                    "index": { "name": RETENTION_INDEX, "expireAfterSeconds": seconds },
                })
                .await
                .map(|_| ())
        }
        Err(e) => Err(e),
    }
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

/// An event as it was published, from its stored document.
pub fn from_document(mut document: Document) -> Result<RiskEvent, bson::de::Error> {
    document.remove("_id");
    for key in ["captured_at", "processed_at"] {
        if let Some(Bson::DateTime(t)) = document.get(key) {
            let text = t.try_to_rfc3339_string().unwrap_or_default();
            document.insert(key, text);
        }
    }
    bson::from_document(document)
}

/// An alert as stored: `_id = alert_id`, times as BSON dates.
pub fn alert_document(alert: &Alert) -> Result<Document, bson::ser::Error> {
    let mut document = bson::to_document(alert)?;
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

/// An alert as it was published, from its stored document.
pub fn alert_from_document(mut document: Document) -> Result<Alert, bson::de::Error> {
    document.remove("_id");
    for key in ["started_at", "updated_at", "ended_at"] {
        if let Some(Bson::DateTime(t)) = document.get(key) {
            let text = t.try_to_rfc3339_string().unwrap_or_default();
            document.insert(key, text);
        }
    }
    if let Some(Bson::Int64(r)) = document.get("revision") {
        let r = i32::try_from(*r).unwrap_or(i32::MAX);
        document.insert("revision", r);
    }
    bson::from_document(document)
}

/// The `_id` filter for a list of event ids.
pub fn ids_filter(ids: &[String]) -> Document {
    let ids: Vec<Bson> = ids.iter().cloned().map(Bson::String).collect();
    doc! { "_id": { "$in": ids } }
}
