//! `vigil events` and `vigil alerts`: print events and alerts as their streams store them. It reads the stream through an
//! ordered JetStream consumer, not a plain subscription: a plain subscriber also sees every
//! copy a processor re-sends (a retried publish, a redelivered frame), which the stream itself
//! drops as duplicates. The consumer sees each stored event exactly once, in order, and
//! resumes by itself after a reconnect.

use async_nats::jetstream::{self, consumer, stream::Stream as JsStream};
use futures::{Stream, StreamExt};

use super::report::{alert_line, event_line};
use super::{nats_err, ToolError};
use crate::config::Config;
use crate::contract::{Alert, Encoding, RiskEvent};
use crate::streams::{ALERTS_STREAM, EVENTS_STREAM};

/// Events stored on `subject` (a filter inside `vigil.events.>`) from now on, each once.
pub async fn events(
    js: &jetstream::Context,
    subject: &str,
) -> Result<impl Stream<Item = Result<RiskEvent, ToolError>> + use<>, ToolError> {
    stored(js, EVENTS_STREAM, subject).await
}

/// Alerts stored on `subject` (a filter inside `vigil.alerts.>`) from now on, each once.
pub async fn alerts(
    js: &jetstream::Context,
    subject: &str,
) -> Result<impl Stream<Item = Result<Alert, ToolError>> + use<>, ToolError> {
    stored(js, ALERTS_STREAM, subject).await
}

async fn stored<T: serde::de::DeserializeOwned>(
    js: &jetstream::Context,
    stream: &str,
    subject: &str,
) -> Result<impl Stream<Item = Result<T, ToolError>> + use<T>, ToolError> {
    let stream: JsStream = js.get_stream(stream).await.map_err(nats_err)?;
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: subject.to_string(),
            deliver_policy: consumer::DeliverPolicy::New,
            ..Default::default()
        })
        .await
        .map_err(nats_err)?;
    let messages = consumer.messages().await.map_err(nats_err)?;
    Ok(messages.map(|message| {
        let message = message.map_err(nats_err)?;
        Ok(Encoding::of(message.headers.as_ref()).decode::<T>(&message.payload)?)
    }))
}

/// How `vigil events` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventFormat {
    /// One readable line per event.
    Lines,
    /// One GeoJSON feature per placed object, one per line (GeoJSON text sequence): objects
    /// with WGS84 positions, error radii and what they are, for any map tool.
    GeoJson,
}

/// Prints events on `subject` (default all) until interrupted, or until `count` were printed.
pub async fn watch(
    config: &Config,
    subject: &str,
    format: EventFormat,
    count: Option<usize>,
) -> Result<(), ToolError> {
    let client = crate::streams::connect(&config.nats).await?;
    let js = jetstream::new(client);
    let events = events(&js, subject).await?;
    tokio::pin!(events);
    let mut seen = 0;
    while let Some(event) = events.next().await {
        let lines = match (event, format) {
            (Ok(event), EventFormat::Lines) => vec![event_line(&event)],
            (Ok(event), EventFormat::GeoJson) => geojson_features(&event)
                .iter()
                .map(|f| f.to_string())
                .collect(),
            (Err(e), _) => {
                eprintln!("not a risk event: {e}");
                Vec::new()
            }
        };
        if !super::print_lines(&lines) {
            break;
        }
        seen += 1;
        if count.is_some_and(|n| seen >= n) {
            break;
        }
    }
    Ok(())
}

/// The objects of an event that have a WGS84 position, as GeoJSON Point features (RFC 7946:
/// coordinates are [lon, lat]); `error_m` is the one-sigma error radius in metres.
pub fn geojson_features(event: &RiskEvent) -> Vec<serde_json::Value> {
    event
        .objects
        .iter()
        .filter(|o| !o.low_score)
        .filter_map(|o| {
            let properties = serde_json::json!({
                "event_id": event.event_id,
                "site": event.site,
                "camera_id": event.camera_id,
                "captured_at": event.captured_at.to_rfc3339(),
                "object_id": o.id,
                "label": o.label,
                "confidence": o.confidence,
                "uncertain": o.uncertain,
                "zones": o.zones,
                "level": event.risk.level,
            });
            Some(point_feature(o.geo?, properties))
        })
        .collect()
}

/// A GeoJSON Point feature at a WGS84 position (with its `error_m` among the properties).
pub fn point_feature(
    geo: crate::contract::GeoPosition,
    mut properties: serde_json::Value,
) -> serde_json::Value {
    properties["error_m"] = serde_json::json!(geo.error_m);
    serde_json::json!({
        "type": "Feature",
        "geometry": { "type": "Point", "coordinates": [geo.lon, geo.lat] },
        "properties": properties,
    })
}

/// Prints the alert lifecycle on `subject` (default all) until interrupted.
pub async fn watch_alerts(config: &Config, subject: &str) -> Result<(), ToolError> {
    let client = crate::streams::connect(&config.nats).await?;
    let js = jetstream::new(client);
    let alerts = alerts(&js, subject).await?;
    tokio::pin!(alerts);
    while let Some(alert) = alerts.next().await {
        match alert {
            Ok(alert) => {
                if !super::print_lines(&[alert_line(&alert)]) {
                    break;
                }
            }
            Err(e) => eprintln!("not an alert: {e}"),
        }
    }
    Ok(())
}
