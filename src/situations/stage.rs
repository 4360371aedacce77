//! The situation stage as a service: a durable consumer on VIGIL_EVENTS that one instance at a
//! time pulls from (a priority group with a pinned client; the others stand by and take over
//! when the pinned one stops pulling for `situations.failover_timeout_s`).
//!
//! Per camera, events go through [`CameraSituation`] in capture order; the alerts it raises are
//! published on `vigil.alerts.<level>.<site>.<camera>` (stream VIGIL_ALERTS, `Nats-Msg-Id =
//! <alert_id>.<revision>`), in order, before the event is acked; its tracks go out on
//! `vigil.tracks.<site>.<camera>` (core NATS). Each camera's active alerts and how far it was
//! applied are kept in the KV bucket VIGIL_SITUATIONS. An instance that meets a camera for the
//! first time (at start, or taking over) loads that record and rebuilds the camera's tracks by
//! re-reading the last `rebuild_window_s` of its events: no `new` is repeated (the alerts
//! continue with their ids and revisions; a message the previous instance may already have
//! sent has the same `Nats-Msg-Id` and is dropped by the stream), and no `end` is lost.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, kv, AckKind, Context};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::alerts::{Active, Lifecycle};
use super::camera::{Applied, CameraSituation};
use super::order::Offer;
use crate::config::Config;
use crate::contract::{subjects, Alert, Encoding, EndReason, RiskEvent};
use crate::publish::PublishError;
use crate::streams::{StreamsError, EVENTS_STREAM};

/// The durable consumer of the stage, and its priority group.
pub const SITUATIONS: &str = "situations";
/// The KV bucket of active alerts per camera.
pub const BUCKET: &str = "VIGIL_SITUATIONS";
/// How often quiet cameras are flushed and silent ones checked.
const TICK: Duration = Duration::from_millis(200);
/// How often a camera's progress is saved when no alert changed.
const SAVE_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error(transparent)]
    Streams(#[from] StreamsError),
    #[error("cannot open the KV bucket {BUCKET}: {0}")]
    Bucket(#[source] jetstream::context::CreateKeyValueError),
}

/// Counters for `$SRV.STATS.vigil`.
#[derive(Debug, Default)]
pub struct StageStats {
    pub events_applied: AtomicU64,
    pub events_late: AtomicU64,
    pub events_duplicate: AtomicU64,
    pub alerts_published: AtomicU64,
    pub cameras: AtomicU64,
    /// Alert moments whose frame a processor kept on request (an event below the snapshot
    /// level that started an alert or reached its peak), and those no processor held any more
    /// (or whose writer queue was full): their alert references a snapshot that is absent.
    pub frames_kept: AtomicU64,
    pub frames_not_kept: AtomicU64,
}

/// How long the stage waits for a processor to confirm it kept a frame (in a task of its own:
/// alerts never wait for it).
const KEEP_PATIENCE: Duration = Duration::from_secs(2);

/// What is kept per camera in VIGIL_SITUATIONS.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Record {
    /// Capture time of the last event applied.
    pub applied_until: Option<DateTime<Utc>>,
    pub alerts: Vec<Active>,
}

/// Something to do for a camera, in order: publish an alert, then ack the event it came from.
enum Outgoing {
    Alert(Box<Alert>),
    Ack(String),
    Save,
}

struct Camera {
    situation: CameraSituation,
    /// Messages of events offered but not yet applied and acked, by event id.
    unacked: HashMap<String, jetstream::Message>,
    outbox: VecDeque<Outgoing>,
    last_arrival: Instant,
    last_saved: Instant,
    silent: bool,
}

pub struct SituationStage {
    js: Context,
    consumer: consumer::PullConsumer,
    bucket: kv::Store,
    config: Arc<Config>,
    life: Lifecycle,
    cameras: HashMap<(String, String), Camera>,
    stats: Arc<StageStats>,
    pull_expiry: Duration,
    /// Whether this instance has received events (holds the pin).
    active: bool,
}

impl SituationStage {
    /// Ensures the consumer, the alerts stream (see streams.rs) and the bucket exist.
    pub async fn build(js: &Context, config: &Config) -> Result<SituationStage, StageError> {
        let consumer = crate::streams::situations(js, config).await?;
        let bucket = js
            .create_key_value(kv::Config {
                bucket: BUCKET.to_string(),
                description: "vigil situations: active alerts per camera".into(),
                history: 1,
                num_replicas: config.streams.replicas,
                ..Default::default()
            })
            .await
            .map_err(StageError::Bucket)?;
        let failover = Duration::from_secs(config.situations.failover_timeout_s);
        Ok(SituationStage {
            js: js.clone(),
            consumer,
            bucket,
            config: Arc::new(config.clone()),
            life: Lifecycle {
                end_after_s: config.situations.end_after_s,
                update_min_interval_s: config.situations.update_min_interval_s,
                language: config.risk.language,
            },
            cameras: HashMap::new(),
            stats: Arc::new(StageStats::default()),
            // Pull well within the failover timeout, or the pin moves on every quiet gap.
            pull_expiry: (failover / 4).clamp(Duration::from_millis(250), Duration::from_secs(5)),
            active: false,
        })
    }

    pub fn stats(&self) -> Arc<StageStats> {
        self.stats.clone()
    }

    /// Runs until `shutdown`; then applies what waits, publishes it and saves every camera.
    /// Active alerts stay active: the next instance continues them.
    pub async fn run(mut self, shutdown: CancellationToken) {
        tracing::info!(
            consumer = SITUATIONS,
            "situation stage started (standby until pinned)"
        );
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        'pull: while !shutdown.is_cancelled() {
            let messages = self
                .consumer
                .stream()
                .group(SITUATIONS)
                .max_messages_per_batch(50)
                .expires(self.pull_expiry)
                .heartbeat(self.pull_expiry / 2)
                .messages()
                .await;
            let mut messages = match messages {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot pull events; retrying");
                    tokio::select! { _ = shutdown.cancelled() => break, _ = tokio::time::sleep(Duration::from_secs(1)) => continue }
                }
            };
            loop {
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => break 'pull,
                    _ = tick.tick() => self.housekeeping().await,
                    next = messages.next() => match next {
                        Some(Ok(message)) => self.take(message).await,
                        Some(Err(e)) => {
                            tracing::debug!(error = %e, "event pull ended; pulling again");
                            continue 'pull;
                        }
                        None => continue 'pull,
                    },
                }
            }
        }
        self.drain().await;
        tracing::info!("situation stage stopped");
    }

    async fn take(&mut self, message: jetstream::Message) {
        if !self.active {
            self.active = true;
            tracing::info!(
                "situation stage active: this instance holds the pin and judges the cameras"
            );
        }
        let event: RiskEvent = match Encoding::of(message.headers.as_ref()).decode(&message.payload)
        {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(subject = %message.subject, error = %e, "not a risk event; skipped");
                let _ = message.ack().await;
                return;
            }
        };
        let key = (event.site.clone(), event.camera_id.clone());
        if !self.cameras.contains_key(&key) {
            let sequence = message
                .info()
                .map(|i| i.stream_sequence)
                .unwrap_or(u64::MAX);
            let camera = self.rebuild(&key.0, &key.1, sequence).await;
            self.cameras.insert(key.clone(), camera);
            self.stats
                .cameras
                .store(self.cameras.len() as u64, Ordering::Relaxed);
        }
        let Some(camera) = self.cameras.get_mut(&key) else {
            return;
        };
        camera.last_arrival = Instant::now();
        camera.silent = false;
        let id = event.event_id.clone();
        match camera.situation.offer(event) {
            Offer::Queued => {
                camera.unacked.insert(id, message);
            }
            Offer::Late => {
                self.stats.events_late.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(event_id = %id, "late event: its camera has moved past it");
                let _ = message.ack().await;
            }
            Offer::Duplicate => {
                self.stats.events_duplicate.fetch_add(1, Ordering::Relaxed);
                let _ = message.ack().await;
            }
        }
        let applied = camera.situation.ready();
        self.queue(&key, applied);
        self.send(&key).await;
    }

    /// Queues what applying produced: alerts to publish, tracks to show, events to ack.
    fn queue(&mut self, key: &(String, String), applied: Vec<Applied>) {
        let Some(camera) = self.cameras.get_mut(key) else {
            return;
        };
        for a in applied {
            self.stats.events_applied.fetch_add(1, Ordering::Relaxed);
            if self.config.situations.publish_tracks {
                let subject = subjects::tracks(&key.0, &key.1);
                if let Ok(body) = Encoding::Msgpack.encode(&a.tracks) {
                    let client = self.js.client();
                    // Live view only: a lost one is replaced by the next.
                    tokio::spawn(async move {
                        let _ = client.publish(subject, Bytes::from(body)).await;
                    });
                }
            }
            if let Some(event) = a.keep {
                tokio::spawn(ask_to_keep(self.js.client(), *event, self.stats.clone()));
            }
            let changed = !a.alerts.is_empty();
            camera
                .outbox
                .extend(a.alerts.into_iter().map(|x| Outgoing::Alert(Box::new(x))));
            if changed {
                camera.outbox.push_back(Outgoing::Save);
            }
            camera.outbox.push_back(Outgoing::Ack(a.event_id));
        }
    }

    /// Works through a camera's outbox in order; stops at an alert JetStream did not take
    /// (tried again on the next tick), so alerts go out in order and an event is acked only
    /// after its alerts are stored.
    async fn send(&mut self, key: &(String, String)) {
        let Some(camera) = self.cameras.get_mut(key) else {
            return;
        };
        while let Some(next) = camera.outbox.front() {
            match next {
                Outgoing::Alert(alert) => {
                    if let Err(e) = publish_alert(&self.js, alert).await {
                        tracing::warn!(alert_id = %alert.alert_id, error = %e, "alert not stored yet; will try again");
                        return;
                    }
                    self.stats.alerts_published.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(alert_id = %alert.alert_id, state = alert.state.as_str(), level = %alert.level, revision = alert.revision, "alert");
                }
                Outgoing::Ack(event_id) => {
                    if let Some(message) = camera.unacked.remove(event_id) {
                        let _ = message.ack().await;
                    }
                }
                Outgoing::Save => {
                    save(&self.bucket, key, &camera.situation).await;
                    camera.last_saved = Instant::now();
                }
            }
            camera.outbox.pop_front();
        }
    }

    /// Flushes cameras that went quiet, ends the alerts of silent ones, retries outboxes,
    /// saves progress, keeps waiting events in progress.
    async fn housekeeping(&mut self) {
        let window = Duration::from_millis(self.config.situations.reorder_window_ms);
        let silence = Duration::from_secs(self.config.situations.silence_s);
        let keys: Vec<(String, String)> = self.cameras.keys().cloned().collect();
        for key in keys {
            let Some(camera) = self.cameras.get_mut(&key) else {
                continue;
            };
            let quiet = camera.last_arrival.elapsed();
            let mut applied = Vec::new();
            if camera.situation.waiting() > 0 && quiet > window {
                applied = camera.situation.flush();
            }
            let mut silent_end = Vec::new();
            if quiet > silence && !camera.silent {
                camera.silent = true;
                let at = camera.situation.applied_until().unwrap_or_else(Utc::now);
                silent_end = camera.situation.end_all(at, EndReason::CameraSilent);
                if !silent_end.is_empty() {
                    tracing::info!(site = %key.0, camera = %key.1, alerts = silent_end.len(), "camera silent; its alerts end");
                }
            }
            let save_due = camera.last_saved.elapsed() >= SAVE_EVERY;
            self.queue(&key, applied);
            if let Some(camera) = self.cameras.get_mut(&key) {
                let ended = !silent_end.is_empty();
                camera
                    .outbox
                    .extend(silent_end.into_iter().map(|a| Outgoing::Alert(Box::new(a))));
                if ended || (save_due && camera.outbox.is_empty()) {
                    camera.outbox.push_back(Outgoing::Save);
                }
            }
            self.send(&key).await;
        }
    }

    /// Applies what waits, publishes it and saves, on shutdown.
    async fn drain(&mut self) {
        let keys: Vec<(String, String)> = self.cameras.keys().cloned().collect();
        for key in keys {
            let applied = match self.cameras.get_mut(&key) {
                Some(c) => c.situation.flush(),
                None => continue,
            };
            self.queue(&key, applied);
            if let Some(c) = self.cameras.get_mut(&key) {
                c.outbox.push_back(Outgoing::Save);
            }
            self.send(&key).await;
            if let Some(c) = self.cameras.get(&key) {
                for message in c.unacked.values() {
                    let _ = message.ack_with(AckKind::Nak(None)).await;
                }
            }
        }
    }

    /// A camera met for the first time: its record, and its tracks rebuilt from the events
    /// the previous instance applied (the last `rebuild_window_s` of them). Events after those
    /// but before `until_sequence` (taken, never acked by the previous instance) are applied
    /// as usual.
    async fn rebuild(&self, site: &str, camera: &str, until_sequence: u64) -> Camera {
        let rules = super::camera_rules(&self.config, site, camera);
        let mut situation = CameraSituation::new(&self.config.situations, self.life, rules)
            .keeping_frames(super::keeps_frames(&self.config));
        let key = format!("{site}.{camera}");
        let record: Option<Record> = match self.bucket.get(&key).await {
            Ok(Some(bytes)) => serde_json::from_slice(&bytes).ok(),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(camera = %key, error = %e, "cannot read the camera's record; starting afresh");
                None
            }
        };
        if let Some(record) = record {
            let started = Instant::now();
            let events = self.recent_events(site, camera, until_sequence).await;
            let mut warmed = 0;
            let mut resumed = Vec::new();
            for event in events {
                match record.applied_until {
                    Some(until) if event.captured_at <= until => {
                        situation.warm_up(&event);
                        warmed += 1;
                    }
                    _ => resumed.push(event),
                }
            }
            if let Some(until) = record.applied_until {
                // Applied elsewhere up to here: anything older arriving now is late.
                situation.resume_after(until);
            }
            let alerts = record.alerts.len();
            situation.restore(record.alerts);
            for event in resumed {
                let _ = situation.offer(event);
            }
            tracing::info!(camera = %key, warmed, active_alerts = alerts, rebuild_ms = started.elapsed().as_millis() as u64, "camera taken over; tracks rebuilt");
        }
        Camera {
            situation,
            unacked: HashMap::new(),
            outbox: VecDeque::new(),
            last_arrival: Instant::now(),
            last_saved: Instant::now(),
            silent: false,
        }
    }

    /// The camera's events in VIGIL_EVENTS from `rebuild_window_s` ago up to (not including)
    /// stream sequence `until`, in capture order.
    async fn recent_events(&self, site: &str, camera: &str, until: u64) -> Vec<RiskEvent> {
        let window = chrono::Duration::seconds(self.config.situations.rebuild_window_s as i64);
        let start = Utc::now() - window;
        let mut events = Vec::new();
        let stream = match self.js.get_stream(EVENTS_STREAM).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot re-read events to rebuild tracks");
                return events;
            }
        };
        let reader = stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: subjects::camera_events(site, camera),
                deliver_policy: consumer::DeliverPolicy::ByStartTime { start_time: start },
                ..Default::default()
            })
            .await;
        let Ok(reader) = reader else {
            return events;
        };
        let Ok(mut messages) = reader.messages().await else {
            return events;
        };
        while let Ok(Some(Ok(m))) =
            tokio::time::timeout(Duration::from_secs(2), messages.next()).await
        {
            let Ok(info) = m.info() else { break };
            let (sequence, pending) = (info.stream_sequence, info.pending);
            if sequence >= until {
                break;
            }
            if let Ok(event) = Encoding::of(m.headers.as_ref()).decode::<RiskEvent>(&m.payload) {
                events.push(event);
            }
            if pending == 0 {
                break;
            }
        }
        events.sort_by_key(|e| e.captured_at);
        events
    }
}

/// Publishes an alert with `Nats-Msg-Id = <alert_id>.<revision>`, waiting for the stream.
/// Asks the processors to keep an event's frame as a snapshot (the one that analysed it
/// holds it for a while); counts whether one did.
async fn ask_to_keep(client: async_nats::Client, event: RiskEvent, stats: Arc<StageStats>) {
    let Ok(body) = Encoding::Msgpack.encode(&event) else {
        return;
    };
    let asked = client.request(crate::snapshots::KEEP_SUBJECT, Bytes::from(body));
    let kept = match tokio::time::timeout(KEEP_PATIENCE, asked).await {
        Ok(Ok(reply)) => {
            serde_json::from_slice::<crate::snapshots::Kept>(&reply.payload).is_ok_and(|k| k.queued)
        }
        _ => false,
    };
    if kept {
        stats.frames_kept.fetch_add(1, Ordering::Relaxed);
    } else {
        stats.frames_not_kept.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(event_id = %event.event_id, "no processor kept the frame of an alert moment; its snapshot is absent");
    }
}

pub async fn publish_alert(js: &Context, alert: &Alert) -> Result<(), PublishError> {
    let body = Bytes::from(Encoding::Msgpack.encode(alert)?);
    let message = jetstream::message::PublishMessage::build()
        .payload(body)
        .message_id(format!("{}.{}", alert.alert_id, alert.revision));
    let subject = subjects::alert(alert.level, &alert.site, &alert.camera_id);
    js.send_publish(subject, message).await?.await?;
    Ok(())
}

async fn save(bucket: &kv::Store, key: &(String, String), situation: &CameraSituation) {
    let record = Record {
        applied_until: situation.applied_until(),
        alerts: situation.active(),
    };
    let Ok(body) = serde_json::to_vec(&record) else {
        return;
    };
    if let Err(e) = bucket
        .put(format!("{}.{}", key.0, key.1), Bytes::from(body))
        .await
    {
        tracing::warn!(camera = %format!("{}.{}", key.0, key.1), error = %e, "cannot save the camera's alerts; a take-over would start from the last save");
    }
}
