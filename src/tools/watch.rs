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

/// Prints every event on `subject` (default all) until interrupted.
pub async fn watch(config: &Config, subject: &str) -> Result<(), ToolError> {
    let client = crate::streams::connect(&config.nats).await?;
    let js = jetstream::new(client);
    let events = events(&js, subject).await?;
    tokio::pin!(events);
    while let Some(event) = events.next().await {
        match event {
            Ok(event) => println!("{}", event_line(&event)),
            Err(e) => eprintln!("not a risk event: {e}"),
        }
    }
    Ok(())
}

/// Prints the alert lifecycle on `subject` (default all) until interrupted.
pub async fn watch_alerts(config: &Config, subject: &str) -> Result<(), ToolError> {
    let client = crate::streams::connect(&config.nats).await?;
    let js = jetstream::new(client);
    let alerts = alerts(&js, subject).await?;
    tokio::pin!(alerts);
    while let Some(alert) = alerts.next().await {
        match alert {
            Ok(alert) => println!("{}", alert_line(&alert)),
            Err(e) => eprintln!("not an alert: {e}"),
        }
    }
    Ok(())
}
