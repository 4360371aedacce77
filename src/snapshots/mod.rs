//! Snapshots: what the camera saw. The processor keeps the source frame of every event at or
//! above `archive.snapshots.min_level` (its bytes as a cheap `Bytes` handle) and hands it,
//! after the event is published, to a writer task through a bounded queue: a slow or absent
//! store never delays an event; a full queue drops the snapshot and counts it. The writer
//! stores the source bytes as they came in MongoDB GridFS (or a directory), under the event's
//! id, which the event carries in `snapshot`. The annotated JPEG (`annotate`) is drawn from
//! them and the archived event when someone asks (`vigil snapshot --annotated`), or, with
//! `annotated = true`, stored beside them at once (measured here: that raised the demo's
//! median latency from 0.2 s to 1.5–2 s on two cores; drawing takes ~24 ms a frame).
//!
//! Alerts need a snapshot of their start and peak even when those events are below
//! `min_level`: each processor also holds its last `recent_mb` of frames ([`Recent`]) and
//! answers the situation stage's keep requests on [`KEEP_SUBJECT`] for the ones it holds.
//!
//! - [`annotate`]: boxes, labels, zones and a banner with Hangul-capable text.
//! - [`store`]: GridFS or a directory; idempotent writes; retention.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Invalid};
use crate::contract::{Level, RiskEvent};
use crate::scene::Cameras;

pub mod annotate;
pub mod store;

use annotate::{LabelledBox, Overlay, Typeface};
use store::{Kind, Store};

/// Where the situation stage asks processors to keep the frame of an event (the body: the
/// event, in any encoding vigil reads; the reply: [`Kept`] as JSON, from the processor that
/// holds the frame; none when no processor does).
pub const KEEP_SUBJECT: &str = "vigil.snapshots.keep";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SnapshotConfig {
    /// Whether processors keep snapshots.
    pub enabled: bool,
    /// Events at this risk level or above get one.
    pub min_level: Level,
    /// At most one snapshot per camera in this many seconds of capture time (per processor):
    /// a camera that stays at a high level all day does not fill the store. 0: every event.
    pub min_interval_s: f64,
    /// `gridfs` (in the archive's database) or `directory`.
    pub store: StoreKind,
    /// GridFS bucket name (collections `<bucket>.files` and `<bucket>.chunks`).
    pub bucket: String,
    /// The directory, for `store = "directory"`.
    pub directory: PathBuf,
    /// Also draw and store the annotated JPEG when the snapshot is written (costs the
    /// processor's machine CPU); otherwise `vigil snapshot --annotated` draws it when asked.
    pub annotated: bool,
    /// JPEG quality of the annotated image (1–100).
    pub jpeg_quality: u8,
    /// Snapshots waiting to be written at most; beyond, new ones are dropped and counted.
    pub queue: usize,
    /// A TrueType/OpenType font with Hangul for the annotated text (default: fonts-nanum's
    /// NanumGothic, then Noto CJK).
    pub font: Option<PathBuf>,
    /// Megabytes of recent frames each processor holds, so that the situation stage can ask
    /// for the frame of an alert's start or peak when its event had no snapshot (a keep
    /// request on `vigil.snapshots.keep`). 0: alerts only reference events' own snapshots.
    pub recent_mb: usize,
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            min_level: Level::High,
            min_interval_s: 1.0,
            store: StoreKind::Gridfs,
            bucket: "snapshots".into(),
            directory: PathBuf::from("snapshots"),
            annotated: false,
            jpeg_quality: 85,
            queue: 64,
            font: None,
            recent_mb: 32,
        }
    }
}

impl SnapshotConfig {
    pub fn validate(&self) -> Result<(), Invalid> {
        if !(1..=100).contains(&self.jpeg_quality) {
            return Err(Invalid::new("jpeg_quality", "must be 1–100"));
        }
        if !(self.min_interval_s.is_finite() && self.min_interval_s >= 0.0) {
            return Err(Invalid::new("min_interval_s", "must be a number ≥ 0"));
        }
        if self.queue == 0 {
            return Err(Invalid::new("queue", "must be at least 1"));
        }
        if self.recent_mb > 4096 {
            return Err(Invalid::new("recent_mb", "must be 0–4096"));
        }
        if !crate::contract::is_token(&self.bucket) {
            return Err(Invalid::new("bucket", "must be [A-Za-z0-9_-]{1,64}"));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    Gridfs,
    Directory,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Annotate(#[from] annotate::AnnotateError),
    #[error("cannot decode the frame to annotate it: {0}")]
    Decode(#[source] crate::vision::VisionError),
    #[error(transparent)]
    Archive(#[from] crate::archive::ArchiveError),
    #[error(transparent)]
    Config(#[from] Box<crate::config::ConfigError>),
}

/// Counters, for `$SRV.STATS.vigil`.
#[derive(Debug, Default)]
pub struct SnapshotStats {
    pub stored: AtomicU64,
    /// Dropped because the queue was full (the store is slower than the events).
    pub dropped: AtomicU64,
    /// The store refused or failed after retries.
    pub failed: AtomicU64,
}

struct Job {
    event: RiskEvent,
    image: Bytes,
}

/// The frames a processor analysed last, newest at the back, bounded in bytes: the frame of
/// an event the stage asks for (an alert's start or peak) is still here when the stage is
/// live; a frame evicted before the ask gets no snapshot.
#[derive(Debug, Default)]
pub struct Recent {
    frames: std::collections::VecDeque<(String, Bytes)>,
    bytes: usize,
    capacity: usize,
}

impl Recent {
    pub fn new(capacity_bytes: usize) -> Recent {
        Recent {
            capacity: capacity_bytes,
            ..Default::default()
        }
    }

    /// Remembers an event's frame, forgetting the oldest ones beyond the capacity.
    pub fn remember(&mut self, event_id: &str, image: Bytes) {
        if image.len() > self.capacity {
            return;
        }
        self.bytes += image.len();
        self.frames.push_back((event_id.to_string(), image));
        while self.bytes > self.capacity {
            match self.frames.pop_front() {
                Some((_, old)) => self.bytes -= old.len(),
                None => break,
            }
        }
    }

    /// The frame of an event, if it is still held (newest first: a request is usually for a
    /// frame seen a moment ago).
    pub fn get(&self, event_id: &str) -> Option<Bytes> {
        self.frames
            .iter()
            .rev()
            .find(|(id, _)| id == event_id)
            .map(|(_, image)| image.clone())
    }

    pub fn len(&self) -> usize {
        self.frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// The reply of a processor that held the frame a keep request asked for (others stay
/// silent).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Kept {
    pub snapshot: String,
    /// False when the writer's queue was full: the snapshot was dropped (and counted).
    pub queued: bool,
}

/// Capture time of each camera's last snapshot, by (site, camera).
type LastSnapshots = std::collections::HashMap<(String, String), DateTime<Utc>>;

/// The processors' side: offers snapshots without ever waiting.
#[derive(Clone)]
pub struct Snapshots {
    tx: mpsc::Sender<Job>,
    min_level: Level,
    min_interval: chrono::Duration,
    last: Arc<std::sync::Mutex<LastSnapshots>>,
    recent: Option<Arc<std::sync::Mutex<Recent>>>,
    stats: Arc<SnapshotStats>,
}

impl Snapshots {
    /// Holds a processed frame for a while (see [`Recent`]), unless `recent_mb` is 0. Called
    /// before the event is published, so a keep request for it always finds it.
    pub fn remember(&self, event_id: &str, image: &Bytes) {
        if let Some(Ok(mut recent)) = self.recent.as_ref().map(|r| r.lock()) {
            recent.remember(event_id, image.clone());
        }
    }

    /// Answers a keep request: queues the snapshot of `event` if this processor still holds
    /// its frame; None when it does not (another processor may).
    pub fn keep(&self, event: &RiskEvent) -> Option<Kept> {
        let image = {
            let recent = self.recent.as_ref()?.lock().ok()?;
            recent.get(&event.event_id)?
        };
        let mut event = event.clone();
        event.snapshot = Some(event.event_id.clone());
        let queued = self.offer(&event, image);
        Some(Kept {
            snapshot: event.event_id,
            queued,
        })
    }

    /// Serves keep requests on [`KEEP_SUBJECT`] until `shutdown`: every processor hears each
    /// request; the one that holds the frame queues its snapshot and replies.
    pub async fn serve_keeps(self, client: async_nats::Client, shutdown: CancellationToken) {
        if self.recent.is_none() {
            return;
        }
        let mut requests = match client.subscribe(KEEP_SUBJECT).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot serve snapshot keep requests; alerts reference events' own snapshots only");
                return;
            }
        };
        loop {
            let request = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = futures::StreamExt::next(&mut requests) => match r { Some(r) => r, None => break },
            };
            let Some(reply) = request.reply else { continue };
            let event: RiskEvent = match crate::contract::Encoding::of(request.headers.as_ref())
                .decode(&request.payload)
            {
                Ok(e) => e,
                Err(e) => {
                    tracing::debug!(error = %e, "keep request is not a risk event; ignored");
                    continue;
                }
            };
            let Some(kept) = self.keep(&event) else {
                continue;
            };
            if let Ok(body) = serde_json::to_vec(&kept) {
                let _ = client.publish(reply, body.into()).await;
            }
        }
    }

    /// Whether this event gets a snapshot: its level is high enough and its camera had none
    /// in the last `min_interval_s` (the processor then sets `event.snapshot` before
    /// publishing).
    pub fn wants(&self, event: &RiskEvent) -> bool {
        if event.risk.level < self.min_level {
            return false;
        }
        let Ok(mut last) = self.last.lock() else {
            return true;
        };
        let key = (event.site.clone(), event.camera_id.clone());
        let at = event.captured_at;
        match last.get(&key) {
            Some(t) if (at - *t).abs() < self.min_interval => false,
            _ => {
                last.insert(key, at);
                true
            }
        }
    }

    /// Queues the snapshot of a published event; false (and counted) when the queue is full.
    pub fn offer(&self, event: &RiskEvent, image: Bytes) -> bool {
        let job = Job {
            event: event.clone(),
            image,
        };
        match self.tx.try_send(job) {
            Ok(()) => true,
            Err(_) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    pub fn stats(&self) -> Arc<SnapshotStats> {
        self.stats.clone()
    }
}

/// The writer task: takes queued snapshots, annotates and stores them, and applies the
/// retention once an hour.
pub struct Writer {
    rx: mpsc::Receiver<Job>,
    store: Store,
    face: Option<Arc<Typeface>>,
    cameras: Arc<Cameras>,
    language: crate::risk::Language,
    quality: u8,
    retention_days: u32,
    stats: Arc<SnapshotStats>,
}

/// The queue and its writer; None when snapshots are disabled.
pub async fn build(config: &Config) -> Result<Option<(Snapshots, Writer)>, SnapshotError> {
    let c = &config.archive.snapshots;
    if !c.enabled {
        return Ok(None);
    }
    let face = match c.annotated {
        true => Some(Arc::new(Typeface::load(c.font.as_deref())?)),
        false => None,
    };
    let store = Store::open(config).await?;
    let cameras = Cameras::from_config(config).map_err(Box::new)?;
    let (tx, rx) = mpsc::channel(c.queue);
    let stats = Arc::new(SnapshotStats::default());
    Ok(Some((
        Snapshots {
            tx,
            min_level: c.min_level,
            min_interval: chrono::Duration::milliseconds((c.min_interval_s * 1000.0) as i64),
            last: Default::default(),
            recent: (c.recent_mb > 0)
                .then(|| Arc::new(std::sync::Mutex::new(Recent::new(c.recent_mb << 20)))),
            stats: stats.clone(),
        },
        Writer {
            rx,
            store,
            face,
            cameras: Arc::new(cameras),
            language: config.risk.language,
            quality: c.jpeg_quality,
            retention_days: config.archive.retention.snapshots_days,
            stats,
        },
    )))
}

impl Writer {
    /// Writes snapshots until `shutdown`, then those still queued (within the drain time the
    /// caller allows).
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut sweep = tokio::time::interval(Duration::from_secs(3600));
        loop {
            let job = tokio::select! {
                job = self.rx.recv() => job,
                _ = sweep.tick() => {
                    self.sweep().await;
                    continue;
                }
                _ = shutdown.cancelled() => {
                    self.rx.close();
                    self.rx.recv().await
                }
            };
            let Some(job) = job else { break };
            self.write(job).await;
        }
    }

    async fn sweep(&self) {
        match self.store.expire(self.retention_days).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "snapshots past their retention removed"),
            Err(e) => tracing::debug!(error = %e, "snapshot retention not applied yet"),
        }
    }

    async fn write(&self, job: Job) {
        let id = job.event.event_id.clone();
        let annotated = match &self.face {
            Some(face) => {
                let (face, cameras, language, quality) = (
                    face.clone(),
                    self.cameras.clone(),
                    self.language,
                    self.quality,
                );
                let (image, event) = (job.image.clone(), job.event.clone());
                let drawn = tokio::task::spawn_blocking(move || {
                    annotated_jpeg(&image, &event, &cameras, &face, language, quality)
                })
                .await;
                match drawn {
                    Ok(Ok(bytes)) => Some(bytes),
                    Ok(Err(e)) => {
                        tracing::warn!(event_id = %id, error = %e, "snapshot not annotated");
                        None
                    }
                    Err(e) => {
                        tracing::warn!(event_id = %id, error = %e, "snapshot annotation panicked");
                        None
                    }
                }
            }
            None => None,
        };
        let mut ok = self.put(&job.event, Kind::Source, &job.image).await;
        if let Some(bytes) = annotated {
            ok &= self.put(&job.event, Kind::Annotated, &bytes).await;
        }
        if ok {
            self.stats.stored.fetch_add(1, Ordering::Relaxed);
        } else {
            self.stats.failed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Stores one file, retrying a few times while the store is unreachable (a snapshot is
    /// worth a short wait, never an unbounded one: the queue behind it drops instead).
    async fn put(&self, event: &RiskEvent, kind: Kind, bytes: &[u8]) -> bool {
        let mut backoff = Duration::from_millis(200);
        for attempt in 1..=4 {
            match self.store.put(event, kind, bytes).await {
                Ok(()) => return true,
                Err(e) if attempt < 4 => {
                    tracing::debug!(event_id = %event.event_id, error = %e, "snapshot not stored yet");
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                }
                Err(e) => {
                    tracing::warn!(event_id = %event.event_id, error = %e, "snapshot not stored");
                }
            }
        }
        false
    }
}

/// The annotated JPEG of an event's frame: its objects (low-score ones left out), the
/// camera's zones on this frame, and a banner.
pub fn annotated_jpeg(
    image: &[u8],
    event: &RiskEvent,
    cameras: &Cameras,
    face: &Typeface,
    language: crate::risk::Language,
    quality: u8,
) -> Result<Vec<u8>, SnapshotError> {
    let frame = crate::vision::decode(image, &Default::default()).map_err(SnapshotError::Decode)?;
    let ground = cameras.frame(
        cameras.get(&event.site, &event.camera_id),
        event.pose.as_ref(),
        event.image,
    );
    let overlay = Overlay {
        boxes: event
            .objects
            .iter()
            .filter(|o| !o.low_score)
            .map(|o| LabelledBox {
                bbox: o.bbox,
                label: format!("{} {:.2}", o.label, o.confidence),
                in_zone: !o.zones.is_empty(),
            })
            .collect(),
        zones: ground.zone_outlines_in_image(),
        level: Some(event.risk.level),
        headline: headline(event, cameras, language),
        description: event.description.clone(),
    };
    let drawn = annotate::render(&frame, &overlay, face);
    Ok(annotate::jpeg(&drawn, quality)?)
}

fn headline(event: &RiskEvent, cameras: &Cameras, language: crate::risk::Language) -> String {
    let name = cameras
        .get(&event.site, &event.camera_id)
        .map_or(event.camera_id.as_str(), |c| c.name.as_str());
    let level = match language {
        crate::risk::Language::Ko => match event.risk.level {
            Level::Critical => "심각",
            Level::High => "높음",
            Level::Medium => "보통",
            Level::Low => "낮음",
            Level::None => "없음",
        },
        crate::risk::Language::En => event.risk.level.as_str(),
    };
    format!(
        "{} {}/100 · {} ({}/{}) · {}",
        level.to_uppercase(),
        event.risk.score,
        name,
        event.site,
        event.camera_id,
        event.captured_at.format("%Y-%m-%d %H:%M:%S%.3fZ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_frames_stay_within_their_bytes_and_the_newest_are_kept() {
        let mut recent = Recent::new(1000);
        for i in 0..10 {
            recent.remember(&format!("e{i}"), Bytes::from(vec![i as u8; 300]));
        }
        assert_eq!(recent.len(), 3);
        assert_eq!(recent.bytes(), 900);
        assert!(recent.get("e6").is_none());
        for i in 7..10 {
            assert_eq!(recent.get(&format!("e{i}")).unwrap()[0], i as u8);
        }
        // A frame larger than the whole ring is not held, and evicts nothing.
        recent.remember("huge", Bytes::from(vec![0; 1001]));
        assert!(recent.get("huge").is_none());
        assert_eq!(recent.len(), 3);
    }

    #[test]
    fn a_recent_frame_is_the_same_bytes_not_a_copy() {
        let mut recent = Recent::new(1 << 20);
        let image = Bytes::from(vec![7u8; 4096]);
        recent.remember("e", image.clone());
        assert_eq!(recent.get("e").unwrap().as_ptr(), image.as_ptr());
    }
}
