//! The frame processor: pulls frames from the shared durable consumer, runs the pipeline,
//! publishes each event (awaiting JetStream's ack) and only then acks the frame. A frame that
//! can never be analysed goes to the dead-letter stream and is terminated; a transient failure
//! is nak'd with a delay until `max_deliver` runs out. Nothing a camera sends stops the loop.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer, AckKind, Context};
use chrono::Utc;
use futures::StreamExt;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::backlog::Backlog;
use crate::config::Config;
use crate::contract::{self, subjects, DeadLetter, Encoding, ErrorCode, Frame, Stage, DLQ_SCHEMA};
use crate::pipeline::{AnalysisError, Origin, Pipeline};
use crate::publish::{self, PublishError};

/// How long one pull request waits for frames; also the longest a shutdown waits on it.
const PULL_EXPIRY: Duration = Duration::from_secs(1);

/// Counters of what the processor did, for logs and service stats.
#[derive(Debug, Default)]
pub struct ProcessorStats {
    pub processed: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub retried: AtomicU64,
}

pub struct Processor {
    js: Context,
    consumer: PullConsumer,
    pipeline: Arc<Pipeline>,
    backlog: Backlog,
    max_in_flight: usize,
    max_deliver: i64,
    retry_delay: Duration,
    /// How long an event may take to be stored before the frame is handed back (half the
    /// consumer's ack_wait: the frame is kept in progress meanwhile).
    publish_patience: Duration,
    encoding: Encoding,
    stats: Arc<ProcessorStats>,
    snapshots: Option<crate::snapshots::Snapshots>,
}

impl Processor {
    /// Ensures the consumer exists; the streams must already be there.
    pub async fn build(
        js: Context,
        config: &Config,
        pipeline: Arc<Pipeline>,
    ) -> Result<Processor, crate::streams::StreamsError> {
        let consumer = crate::streams::processors(&js, config).await?;
        let backlog = Backlog::build(&js, config).await?;
        Ok(Processor {
            js,
            consumer,
            pipeline,
            backlog,
            max_in_flight: config.max_in_flight(),
            max_deliver: config.processor.max_deliver,
            retry_delay: Duration::from_millis(config.processor.retry_delay_ms),
            publish_patience: Duration::from_secs(config.processor.ack_wait_s) / 2,
            encoding: config.streams.events_encoding,
            stats: Arc::new(ProcessorStats::default()),
            snapshots: None,
        })
    }

    /// Keeps a snapshot of every event at or above the configured level (after publishing it).
    pub fn with_snapshots(mut self, snapshots: Option<crate::snapshots::Snapshots>) -> Self {
        self.snapshots = snapshots;
        self
    }

    pub fn stats(&self) -> Arc<ProcessorStats> {
        self.stats.clone()
    }

    pub fn backlog_stats(&self) -> Arc<crate::backlog::BacklogStats> {
        self.backlog.stats()
    }

    /// Processes frames until `shutdown`; then stops pulling and finishes the frames in hand.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let backlog = tokio::spawn(
            std::mem::replace(&mut self.backlog, Backlog::detached()).run(shutdown.clone()),
        );
        if let Some(s) = self.snapshots.clone() {
            tokio::spawn(s.serve_keeps(self.js.client(), shutdown.clone()));
        }
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
                    _ = shutdown.cancelled() => {
                        hand_back(batch).await;
                        break 'pull;
                    }
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
        let _ = backlog.await;
        tracing::info!("processor stopped");
    }

    async fn handle(&self, message: jetstream::Message) {
        let delivery = Delivery::of(&message);
        let span = tracing::debug_span!("frame", site = %delivery.site, camera = %delivery.camera);
        let outcome = self
            .analyse(&message, &delivery)
            .instrument(span.clone())
            .await;
        self.settle(&message, &delivery, outcome)
            .instrument(span)
            .await;
    }

    /// Decodes, checks and processes one frame, and publishes its event.
    async fn analyse(&self, message: &jetstream::Message, delivery: &Delivery) -> Outcome {
        let give_up = |frame_id: Option<&str>, error| Outcome::GiveUp {
            frame_id: frame_id.map(str::to_string),
            error,
        };
        if !delivery.subject_ok {
            let error = AnalysisError::new(
                ErrorCode::BadRequest,
                "subject must be vigil.frames.<site>.<camera> with tokens [A-Za-z0-9_-]{1,64}",
            );
            return give_up(None, error);
        }
        let frame: Frame =
            match Encoding::of(message.headers.as_ref()).decode_frame(&message.payload) {
                Ok(f) => f,
                Err(e) => {
                    return give_up(
                        None,
                        AnalysisError::new(ErrorCode::BadRequest, e.to_string()),
                    )
                }
            };
        // Quoted, bounded: the id may be anything until the pipeline has validated it.
        let frame_id = contract::excerpt(&frame.frame_id, 160);
        let frame_id = frame_id.as_str();
        if let Err(error) = check_subject(&frame, &delivery.site, &delivery.camera) {
            return give_up(Some(frame_id), error);
        }
        let origin = Origin {
            site: &delivery.site,
            camera: &delivery.camera,
            queued: delivery.queued,
            patience: None,
        };
        // A second handle on the same bytes, for the snapshot: no copy.
        let image = frame.image.clone();
        match self.pipeline.process_stream(frame, origin).await {
            Ok(mut event) => {
                if let Some(s) = &self.snapshots {
                    s.remember(&event.event_id, &image);
                }
                let snapshots = self.snapshots.as_ref().filter(|s| s.wants(&event));
                if snapshots.is_some() {
                    event.snapshot = Some(event.event_id.clone());
                }
                let published = self.publish(message, &event).await;
                if let (Ok(()), Some(s)) = (&published, snapshots) {
                    s.offer(&event, image);
                }
                self.settle_publish(frame_id, &event, published)
            }
            Err(e) if e.code.is_transient() && delivery.delivered < self.max_deliver => {
                Outcome::Retry(e.to_string())
            }
            Err(error) => give_up(Some(frame_id), error),
        }
    }

    fn settle_publish(
        &self,
        frame_id: &str,
        event: &contract::RiskEvent,
        published: Result<(), PublishError>,
    ) -> Outcome {
        let give_up = |frame_id: &str, error| Outcome::GiveUp {
            frame_id: Some(frame_id.to_string()),
            error,
        };
        match published {
            Ok(()) => {
                tracing::debug!(frame_id, level = %event.risk.level, score = event.risk.score, "event published");
                Outcome::Published
            }
            Err(e) if e.is_permanent() => {
                let message = format!("the event cannot be published: {e}");
                give_up(frame_id, AnalysisError::new(ErrorCode::TooLarge, message))
            }
            Err(e) => Outcome::Retry(format!("event not stored: {e}")),
        }
    }

    /// Publishes the event, trying again while the stream does not answer (a cluster electing
    /// a new leader, a reconnect), for up to `publish_patience`; the frame is kept in progress
    /// meanwhile so that no other processor starts it again. Only then is it handed back.
    async fn publish(
        &self,
        message: &jetstream::Message,
        event: &contract::RiskEvent,
    ) -> Result<(), PublishError> {
        let deadline = tokio::time::Instant::now() + self.publish_patience;
        publish::retry_until(
            deadline,
            || publish::publish_event(&self.js, event, self.encoding),
            |error| async move {
                tracing::debug!(%error, event_id = %event.event_id, "event not stored yet; trying again");
                let _ = message.ack_with(AckKind::Progress).await;
            },
        )
        .await
    }

    /// Acks, naks or dead-letters the frame according to the outcome.
    async fn settle(&self, message: &jetstream::Message, delivery: &Delivery, outcome: Outcome) {
        match outcome {
            Outcome::Published => {
                self.stats.processed.fetch_add(1, Ordering::Relaxed);
                ack(message, AckKind::Ack).await;
            }
            Outcome::Retry(reason) if delivery.delivered < self.max_deliver => {
                tracing::warn!(%reason, delivered = delivery.delivered, "frame will be redelivered");
                self.retry(message).await;
            }
            Outcome::Retry(reason) => {
                // The server will not deliver it again: the DLQ is its last stop.
                let error = AnalysisError::new(
                    ErrorCode::Internal,
                    format!("gave up after {} deliveries: {reason}", delivery.delivered),
                );
                self.dead_letter(message, delivery, None, error).await;
            }
            Outcome::GiveUp { frame_id, error } => {
                self.dead_letter(message, delivery, frame_id, error).await
            }
        }
    }

    async fn retry(&self, message: &jetstream::Message) {
        self.stats.retried.fetch_add(1, Ordering::Relaxed);
        ack(message, AckKind::Nak(Some(self.retry_delay))).await;
    }

    /// Records the frame on the DLQ, then terminates it. If the record cannot be stored the
    /// frame is redelivered instead, while deliveries remain: a dead letter is not lost either.
    async fn dead_letter(
        &self,
        message: &jetstream::Message,
        delivery: &Delivery,
        frame_id: Option<String>,
        error: AnalysisError,
    ) {
        let record = DeadLetter {
            schema: DLQ_SCHEMA.into(),
            stage: Stage::Frame,
            event_id: None,
            subject: message.subject.to_string(),
            site: delivery.site.clone(),
            camera_id: delivery.camera.clone(),
            frame_id,
            reason: error.code,
            message: error.message,
            stream_sequence: delivery.stream_sequence,
            delivered: u64::try_from(delivery.delivered).ok(),
            size_bytes: message.payload.len(),
            at: Utc::now(),
        };
        tracing::info!(reason = %record.reason, message = %record.message, frame_id = ?record.frame_id, "frame dead-lettered");
        match publish::publish_dead_letter(&self.js, &record).await {
            Ok(()) => {
                self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                ack(message, AckKind::Term).await;
            }
            Err(e) if delivery.delivered < self.max_deliver => {
                tracing::warn!(error = %e, "dead letter not stored; frame will be redelivered");
                self.retry(message).await;
            }
            Err(e) => {
                tracing::error!(error = %e, ?record, "dead letter not stored after the last delivery; the frame is dropped")
            }
        }
    }
}

/// What happened to a frame.
enum Outcome {
    Published,
    Retry(String),
    GiveUp {
        frame_id: Option<String>,
        error: AnalysisError,
    },
}

/// Where a message came from and how often it was delivered.
struct Delivery {
    site: String,
    camera: String,
    subject_ok: bool,
    stream_sequence: Option<u64>,
    delivered: i64,
    queued: Duration,
}

impl Delivery {
    fn of(message: &jetstream::Message) -> Delivery {
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
        let parsed = subjects::parse_frames(&message.subject);
        let (site, camera) = parsed.unwrap_or(("invalid", "invalid"));
        Delivery {
            site: site.into(),
            camera: camera.into(),
            subject_ok: parsed.is_some(),
            stream_sequence,
            delivered,
            queued,
        }
    }
}

/// A frame's own site and camera, when it names them, must be its subject's.
fn check_subject(frame: &Frame, site: &str, camera: &str) -> Result<(), AnalysisError> {
    for (field, value, expected) in [
        ("site", &frame.site, site),
        ("camera_id", &frame.camera_id, camera),
    ] {
        if let Some(v) = value.as_deref().filter(|v| *v != expected) {
            let message = format!("{field} {v:?} differs from the subject's {expected:?}");
            return Err(AnalysisError::new(ErrorCode::BadRequest, message));
        }
    }
    Ok(())
}

/// Naks, for immediate redelivery elsewhere, the frames a pull request still delivers after
/// shutdown began: the server already counts them as ours, and would otherwise hold them until
/// `ack_wait` runs out. Returns when the request is complete (at most `PULL_EXPIRY`).
async fn hand_back(mut batch: jetstream::consumer::pull::Batch) {
    while let Some(Ok(message)) = batch.next().await {
        tracing::debug!(subject = %message.subject, "frame handed back");
        ack(&message, AckKind::Nak(None)).await;
    }
}

async fn ack(message: &jetstream::Message, kind: AckKind) {
    // A lost ack means a redelivery, which the event id makes harmless.
    if let Err(e) = message.ack_with(kind).await {
        tracing::warn!(error = %e, "ack not sent");
    }
}
