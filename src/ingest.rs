//! The frame processor: pulls frames from the shared durable consumer, runs the pipeline,
//! publishes each event (awaiting JetStream's ack) and only then acks the frame. A frame that
//! can never be analysed goes to the dead-letter stream and is terminated; a transient failure
//! is nak'd with a delay until `max_deliver` runs out. Nothing a camera sends stops the loop.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer, AckKind, Context};
use bytes::Bytes;
use chrono::Utc;
use futures::StreamExt;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::contract::{subjects, DeadLetter, Encoding, ErrorCode, Frame, RiskEvent, DLQ_SCHEMA};
use crate::pipeline::{AnalysisError, Origin, Pipeline};

/// How long one pull request waits for frames; also the longest a shutdown waits on it.
const PULL_EXPIRY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("cannot encode: {0}")]
    Encode(#[from] crate::contract::CodecError),
    #[error("JetStream did not take the message: {0}")]
    Publish(#[from] jetstream::context::PublishError),
}

/// Counters of what the processor did, for logs and service stats.
#[derive(Debug, Default)]
pub struct ProcessorStats {
    pub processed: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub retried: AtomicU64,
}

/// Publishes an event with `Nats-Msg-Id = event_id` and waits for the stream's ack.
pub async fn publish_event(
    js: &Context,
    event: &RiskEvent,
    encoding: Encoding,
) -> Result<(), PublishError> {
    let body = encoding.encode(event)?;
    let message = jetstream::message::PublishMessage::build()
        .payload(Bytes::from(body))
        .headers(encoding.headers())
        .message_id(&event.event_id);
    let subject = subjects::event(event.risk.level, &event.site, &event.camera_id);
    js.send_publish(subject, message).await?.await?;
    Ok(())
}

/// Publishes a dead-letter record (JSON, so that `nats sub` shows it readably).
pub async fn publish_dead_letter(js: &Context, record: &DeadLetter) -> Result<(), PublishError> {
    let body = Encoding::Json.encode(record)?;
    let message = jetstream::message::PublishMessage::build()
        .payload(Bytes::from(body))
        .headers(Encoding::Json.headers());
    js.send_publish(subjects::dlq(&record.site, &record.camera_id), message)
        .await?
        .await?;
    Ok(())
}

pub struct Processor {
    js: Context,
    consumer: PullConsumer,
    pipeline: Arc<Pipeline>,
    max_in_flight: usize,
    max_deliver: i64,
    retry_delay: Duration,
    encoding: Encoding,
    stats: Arc<ProcessorStats>,
}

impl Processor {
    /// Ensures the consumer exists; the streams must already be there.
    pub async fn build(
        js: Context,
        config: &Config,
        pipeline: Arc<Pipeline>,
    ) -> Result<Processor, crate::streams::StreamsError> {
        let consumer = crate::streams::processors(&js, config).await?;
        Ok(Processor {
            js,
            consumer,
            pipeline,
            max_in_flight: config.max_in_flight(),
            max_deliver: config.processor.max_deliver,
            retry_delay: Duration::from_millis(config.processor.retry_delay_ms),
            encoding: config.streams.events_encoding,
            stats: Arc::new(ProcessorStats::default()),
        })
    }

    pub fn stats(&self) -> Arc<ProcessorStats> {
        self.stats.clone()
    }

    /// Processes frames until `shutdown`; then stops pulling and finishes the frames in hand.
    pub async fn run(self, shutdown: CancellationToken) {
        let this = Arc::new(self);
        let permits = Arc::new(Semaphore::new(this.max_in_flight));
        let tasks = TaskTracker::new();
        tracing::info!(max_in_flight = this.max_in_flight, "processor started");
        'pull: loop {
            // Ask only for as many frames as can start now, so none sit unprocessed in this
            // client while another processor is idle.
            let first = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            };
            let want = 1 + permits.available_permits();
            let batch = this
                .consumer
                .batch()
                .max_messages(want)
                .expires(PULL_EXPIRY)
                .messages();
            let mut batch = match batch.await {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot pull frames; retrying");
                    tokio::select! { _ = shutdown.cancelled() => break, _ = tokio::time::sleep(PULL_EXPIRY) => continue }
                }
            };
            let mut permit = Some(first);
            loop {
                let next = tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => break 'pull,
                    m = batch.next() => m,
                };
                let message = match next {
                    None => break,
                    Some(Ok(m)) => m,
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "pull request ended");
                        break;
                    }
                };
                let permit = match permit.take() {
                    Some(p) => p,
                    None => match permits.clone().acquire_owned().await {
                        Ok(p) => p,
                        Err(_) => break 'pull,
                    },
                };
                let this = this.clone();
                tasks.spawn(async move {
                    this.handle(message).await;
                    drop(permit);
                });
            }
        }
        tasks.close();
        tracing::info!(
            in_flight = tasks.len(),
            "processor stopping; finishing frames in hand"
        );
        tasks.wait().await;
        if let Err(e) = this.js.client().flush().await {
            tracing::warn!(error = %e, "flush on shutdown failed");
        }
        tracing::info!("processor stopped");
    }

    async fn handle(&self, message: jetstream::Message) {
        let (stream_sequence, delivered, published) = match message.info() {
            Ok(info) => (
                Some(info.stream_sequence),
                info.delivered,
                Some(info.published),
            ),
            Err(_) => (None, 1, None),
        };
        let queued = published
            .and_then(|p| (Utc::now() - p).to_std().ok())
            .unwrap_or_default();
        let subject = message.subject.to_string();
        let Some((site, camera)) = subjects::parse_frames(&subject) else {
            let error = AnalysisError::new(
                ErrorCode::BadRequest,
                "subject must be vigil.frames.<site>.<camera> with tokens [A-Za-z0-9_-]{1,64}",
            );
            return self
                .give_up(
                    &message,
                    ("invalid", "invalid"),
                    None,
                    error,
                    stream_sequence,
                    delivered,
                )
                .await;
        };
        let frame = match decode_frame(&message, site, camera) {
            Ok(f) => f,
            Err(error) => {
                return self
                    .give_up(
                        &message,
                        (site, camera),
                        None,
                        error,
                        stream_sequence,
                        delivered,
                    )
                    .await
            }
        };
        let frame_id = frame.frame_id.clone();
        let span = tracing::debug_span!("frame", site, camera, frame_id = %frame_id);
        let _enter = span.enter();
        let origin = Origin {
            site,
            camera,
            queued,
            patience: None,
        };
        let result = self.pipeline.process(frame, origin).await;
        match result {
            Ok(event) => match publish_event(&self.js, &event, self.encoding).await {
                Ok(()) => {
                    self.stats.processed.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(level = %event.risk.level, score = event.risk.score, "event published");
                    ack(&message, AckKind::Ack).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, frame_id = %frame_id, "event not stored; frame will be redelivered");
                    self.retry(&message).await;
                }
            },
            Err(e) if e.code.is_transient() && delivered < self.max_deliver => {
                tracing::warn!(error = %e, frame_id = %frame_id, delivered, "transient failure; frame will be redelivered");
                self.retry(&message).await;
            }
            Err(error) => {
                self.give_up(
                    &message,
                    (site, camera),
                    Some(frame_id),
                    error,
                    stream_sequence,
                    delivered,
                )
                .await
            }
        }
    }

    async fn retry(&self, message: &jetstream::Message) {
        self.stats.retried.fetch_add(1, Ordering::Relaxed);
        ack(message, AckKind::Nak(Some(self.retry_delay))).await;
    }

    /// Records the frame on the DLQ, then terminates it. If the record cannot be stored the
    /// frame is redelivered instead: a dead letter is never lost either.
    async fn give_up(
        &self,
        message: &jetstream::Message,
        (site, camera): (&str, &str),
        frame_id: Option<String>,
        error: AnalysisError,
        stream_sequence: Option<u64>,
        delivered: i64,
    ) {
        let record = DeadLetter {
            schema: DLQ_SCHEMA.into(),
            subject: message.subject.to_string(),
            site: site.into(),
            camera_id: camera.into(),
            frame_id,
            reason: error.code,
            message: error.message,
            stream_sequence,
            delivered: u64::try_from(delivered).ok(),
            size_bytes: message.payload.len(),
            at: Utc::now(),
        };
        tracing::info!(site, camera, reason = %record.reason, message = %record.message, "frame dead-lettered");
        match publish_dead_letter(&self.js, &record).await {
            Ok(()) => {
                self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                ack(message, AckKind::Term).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "dead letter not stored; frame will be redelivered");
                self.retry(message).await;
            }
        }
    }
}

/// The frame in a message, checked against its subject.
fn decode_frame(
    message: &jetstream::Message,
    site: &str,
    camera: &str,
) -> Result<Frame, AnalysisError> {
    let frame: Frame = Encoding::of(message.headers.as_ref())
        .decode(&message.payload)
        .map_err(|e| AnalysisError::new(ErrorCode::BadRequest, e.to_string()))?;
    for (field, value, expected) in [
        ("site", &frame.site, site),
        ("camera_id", &frame.camera_id, camera),
    ] {
        if value.as_deref().is_some_and(|v| v != expected) {
            return Err(AnalysisError::new(
                ErrorCode::BadRequest,
                format!("{field} {value:?} differs from the subject's {expected:?}"),
            ));
        }
    }
    Ok(frame)
}

async fn ack(message: &jetstream::Message, kind: AckKind) {
    // A lost ack means a redelivery, which the event id makes harmless.
    if let Err(e) = message.ack_with(kind).await {
        tracing::warn!(error = %e, "ack not sent");
    }
}
