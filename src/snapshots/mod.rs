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

use crate::config::Config;
use crate::contract::{Level, RiskEvent};
use crate::scene::Cameras;

pub mod annotate;
pub mod store;

use annotate::{LabelledBox, Overlay, Typeface};
use store::{Kind, Store};

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
        }
    }
}

impl SnapshotConfig {
    pub fn validate(&self) -> Result<(), (String, String)> {
        if !(1..=100).contains(&self.jpeg_quality) {
            return Err(("jpeg_quality".into(), "must be 1–100".into()));
        }
        if !(self.min_interval_s.is_finite() && self.min_interval_s >= 0.0) {
            return Err(("min_interval_s".into(), "must be a number ≥ 0".into()));
        }
        if self.queue == 0 {
            return Err(("queue".into(), "must be at least 1".into()));
        }
        if !crate::contract::is_token(&self.bucket) {
            return Err(("bucket".into(), "must be [A-Za-z0-9_-]{1,64}".into()));
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

/// Capture time of each camera's last snapshot, by (site, camera).
type LastSnapshots = std::collections::HashMap<(String, String), DateTime<Utc>>;

/// The processors' side: offers snapshots without ever waiting.
#[derive(Clone)]
pub struct Snapshots {
    tx: mpsc::Sender<Job>,
    min_level: Level,
    min_interval: chrono::Duration,
    last: Arc<std::sync::Mutex<LastSnapshots>>,
    stats: Arc<SnapshotStats>,
}

impl Snapshots {
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
