//! Replay: a window of the archive republished on NATS, in capture order, at the original pace
//! divided by a speed (or as fast as NATS takes it), on
//! `<replay_prefix>.<events|alerts>.<level>.<site>.<camera>`: never on the live subjects.
//!
//! Messages keep their ids and their body (MessagePack, as published) and carry the header
//! `Vigil-Replay: <run id>`, so a consumer can tell them from live ones and from another
//! run. Documents stream from a cursor: memory stays flat whatever the window. Alerts are
//! stored as their newest revision, so an alert replays once, as it last stood.

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use mongodb::bson::Document;
use mongodb::Collection;
use tokio_util::sync::CancellationToken;

use super::query::{Kind, Order, Query, QueryError};
use crate::contract::{subjects, Encoding, Level};

/// The header that marks a replayed message; its value names the run.
pub const REPLAY_HEADER: &str = "Vigil-Replay";

/// How fast to replay.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pace {
    /// Original gaps divided by this (1: real time).
    Speed(f64),
    /// As fast as NATS takes them.
    Max,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Query(#[from] QueryError),
    #[error("MongoDB: {0}")]
    Mongo(#[from] mongodb::error::Error),
    #[error("NATS: {0}")]
    Nats(#[source] async_nats::Error),
}

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReplaySummary {
    pub sent: u64,
    /// Documents that are not a valid event or alert (skipped, counted).
    pub skipped: u64,
    /// Capture (or start) time of the first and the last message sent.
    pub first: Option<DateTime<Utc>>,
    pub last: Option<DateTime<Utc>>,
    pub elapsed: Duration,
    /// Stopped before the end of the window (Ctrl-C): resume with `--since last`.
    pub interrupted: bool,
}

/// One message to send: its subject, time and body.
struct Item {
    subject: String,
    at: DateTime<Utc>,
    body: Vec<u8>,
}

fn item(kind: Kind, prefix: &str, document: Document) -> Option<Item> {
    let (level, site, camera, at, body) = match kind {
        Kind::Events => {
            let event = super::from_document(document).ok()?;
            let body = Encoding::Msgpack.encode(&event).ok()?;
            (
                event.risk.level,
                event.site,
                event.camera_id,
                event.captured_at,
                body,
            )
        }
        Kind::Alerts => {
            let alert = super::alert_from_document(document).ok()?;
            let body = Encoding::Msgpack.encode(&alert).ok()?;
            let level: Level = alert.level;
            (level, alert.site, alert.camera_id, alert.started_at, body)
        }
    };
    Some(Item {
        subject: subjects::replay(prefix, kind.as_str(), level, &site, &camera),
        at,
        body,
    })
}

/// Where and how fast a replay sends.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub pace: Pace,
    /// `archive.replay_prefix`.
    pub prefix: &'a str,
    /// The value of the `Vigil-Replay` header.
    pub run_id: &'a str,
}

/// Replays what `query` selects, oldest first, until the window ends or `stop` is
/// cancelled; `progress` is called after each message with the count sent and its time.
pub async fn replay(
    client: &async_nats::Client,
    collection: &Collection<Document>,
    query: &Query,
    target: &Target<'_>,
    stop: &CancellationToken,
    mut progress: impl FnMut(u64, DateTime<Utc>),
) -> Result<ReplaySummary, ReplayError> {
    let Target {
        pace,
        prefix,
        run_id,
    } = *target;
    let mut cursor = query.find(collection, Order::OldestFirst, None).await?;
    let started = tokio::time::Instant::now();
    let mut summary = ReplaySummary::default();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(REPLAY_HEADER, run_id);
    loop {
        let next = tokio::select! {
            _ = stop.cancelled() => { summary.interrupted = true; break; }
            next = cursor.next() => next,
        };
        let Some(document) = next else { break };
        let Some(item) = item(query.kind, prefix, document?) else {
            summary.skipped += 1;
            continue;
        };
        let first = *summary.first.get_or_insert(item.at);
        if let Pace::Speed(speed) = pace {
            let offset = (item.at - first).to_std().unwrap_or_default();
            let due = started + offset.div_f64(speed);
            tokio::select! {
                _ = stop.cancelled() => { summary.interrupted = true; break; }
                _ = tokio::time::sleep_until(due) => {}
            }
        }
        client
            .publish_with_headers(item.subject, headers.clone(), item.body.into())
            .await
            .map_err(|e| ReplayError::Nats(e.into()))?;
        summary.sent += 1;
        summary.last = Some(item.at);
        progress(summary.sent, item.at);
    }
    client
        .flush()
        .await
        .map_err(|e| ReplayError::Nats(e.into()))?;
    summary.elapsed = started.elapsed();
    Ok(summary)
}
