//! Publishing what vigil produces into JetStream: risk events (with `Nats-Msg-Id = event_id`,
//! so a repeat is dropped by the stream) and dead-letter records. Every publish waits for the
//! stream's ack: a message is only "sent" once JetStream has stored it.

use std::time::Duration;

use async_nats::jetstream::context::{PublishError as JsPublishError, PublishErrorKind};
use async_nats::jetstream::{self, Context};
use bytes::Bytes;
use tokio::time::Instant;

use crate::contract::{subjects, DeadLetter, Encoding, RiskEvent};

/// How long one publish waits for the stream's ack before it is tried again. Short, because a
/// stream that lost its leader answers nothing until a new one is elected (a second or two on
/// a cluster); retrying soon keeps the gap close to the election itself.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(1);
/// First pause between tries; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("cannot encode: {0}")]
    Encode(#[from] crate::contract::CodecError),
    #[error("JetStream did not take the message: {0}")]
    Publish(#[from] JsPublishError),
}

impl PublishError {
    /// Whether trying again can help: not for a message the server can never take.
    pub fn is_permanent(&self) -> bool {
        match self {
            PublishError::Encode(_) => true,
            PublishError::Publish(e) => e.kind() == PublishErrorKind::MaxPayloadExceeded,
        }
    }
}

/// A JetStream context whose publishes give up waiting for an ack after [`ACK_TIMEOUT`].
pub fn context(client: async_nats::Client) -> Context {
    let mut js = jetstream::new(client);
    js.set_timeout(ACK_TIMEOUT);
    js
}

/// Publishes an event with `Nats-Msg-Id = event_id` and waits for the stream's ack.
pub async fn publish_event(
    js: &Context,
    event: &RiskEvent,
    encoding: Encoding,
) -> Result<(), PublishError> {
    let body = Bytes::from(encoding.encode(event)?);
    let subject = subjects::event(event.risk.level, &event.site, &event.camera_id);
    publish(js, subject, body, encoding, Some(&event.event_id)).await
}

/// Publishes a dead-letter record (JSON, so that `nats sub` shows it readably).
pub async fn publish_dead_letter(js: &Context, record: &DeadLetter) -> Result<(), PublishError> {
    let body = Bytes::from(Encoding::Json.encode(record)?);
    let subject = subjects::dlq(&record.site, &record.camera_id);
    publish(js, subject, body, Encoding::Json, None).await
}

async fn publish(
    js: &Context,
    subject: String,
    body: Bytes,
    encoding: Encoding,
    id: Option<&str>,
) -> Result<(), PublishError> {
    let mut message = jetstream::message::PublishMessage::build()
        .payload(body)
        .headers(encoding.headers());
    if let Some(id) = id {
        message = message.message_id(id);
    }
    js.send_publish(subject, message).await?.await?;
    Ok(())
}

/// Runs `attempt` until it succeeds, fails permanently or `deadline` passes, pausing between
/// tries; `on_retry` is called with the error before each pause (to keep a JetStream message
/// in progress, or to log). The last error is returned when time runs out.
pub async fn retry_until<F, Fut, R, RFut>(
    deadline: Instant,
    mut attempt: F,
    mut on_retry: R,
) -> Result<(), PublishError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), PublishError>>,
    R: FnMut(String) -> RFut,
    RFut: std::future::Future<Output = ()>,
{
    let mut backoff = FIRST_BACKOFF;
    loop {
        match attempt().await {
            Ok(()) => return Ok(()),
            Err(e) if e.is_permanent() || Instant::now() + backoff >= deadline => return Err(e),
            Err(e) => {
                on_retry(e.to_string()).await;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}
