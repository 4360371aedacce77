//! `vigil play`: plays a folder of frames as one camera at a given rate, prints each event as
//! it comes back, and ends with a summary (latency, throughput, archived count).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use bytes::Bytes;
use chrono::Utc;
use futures::StreamExt;

use super::report::event_line;
use super::{nats_err, ToolError};
use crate::config::Config;
use crate::contract::{self, subjects, Encoding, Frame, RiskEvent};

/// The CCTV test sequence: the shared test data beside the checkout when it is there, else the
/// copy scripts/setup.sh rebuilds in `testdata/` (relative to the working directory).
pub fn sequence_dir() -> PathBuf {
    let shared = PathBuf::from("../shared/testdata/sequences/vtest");
    if shared.is_dir() {
        shared
    } else {
        PathBuf::from("testdata/sequences/vtest")
    }
}

/// JPEG and PNG files of a folder, in name order.
pub fn frame_files(dir: &Path) -> Result<Vec<PathBuf>, ToolError> {
    let entries = std::fs::read_dir(dir).map_err(|source| ToolError::Read {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "jpg" | "jpeg" | "png"))
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(ToolError::NoFrames(dir.to_path_buf()));
    }
    Ok(files)
}

pub struct PlayOptions {
    pub frames: PathBuf,
    pub site: String,
    pub camera: String,
    /// Frames per second; 0 sends as fast as JetStream acks.
    pub fps: f64,
    pub count: Option<usize>,
    /// How long to wait for the last events and the archive after the last frame.
    pub wait: Duration,
    /// Print one line per event instead of one per alert message.
    pub show_events: bool,
}

#[derive(Debug, Default)]
pub struct PlaySummary {
    pub sent: usize,
    /// Alerts started (a `new` seen) and ended while playing.
    pub alerts: usize,
    pub alerts_ended: usize,
    pub events: usize,
    pub levels: BTreeMap<String, usize>,
    pub latency_p50_ms: f64,
    pub latency_p95_ms: f64,
    pub elapsed_s: f64,
    pub archived: Option<u64>,
}

impl std::fmt::Display for PlaySummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let levels: Vec<String> = self
            .levels
            .iter()
            .map(|(l, n)| format!("{l} {n}"))
            .collect();
        writeln!(
            f,
            "{} frames → {} alerts ({} ended, {} still open)",
            self.sent,
            self.alerts,
            self.alerts_ended,
            self.alerts.saturating_sub(self.alerts_ended)
        )?;
        writeln!(f, "frames sent      {}", self.sent)?;
        writeln!(
            f,
            "events received  {} ({})",
            self.events,
            levels.join(", ")
        )?;
        writeln!(
            f,
            "latency          p50 {:.0} ms, p95 {:.0} ms (publish → event)",
            self.latency_p50_ms, self.latency_p95_ms
        )?;
        writeln!(
            f,
            "throughput       {:.1} frames/s over {:.1} s",
            self.events as f64 / self.elapsed_s.max(1e-9),
            self.elapsed_s
        )?;
        match self.archived {
            Some(n) => write!(
                f,
                "archived         {n} of {} events found in MongoDB",
                self.events
            ),
            None => write!(f, "archived         (MongoDB not reachable)"),
        }
    }
}

/// Plays a folder of frames as one camera, printing each event as it arrives, and reads the
/// archive back at the end.
pub async fn play(config: &Config, options: &PlayOptions) -> Result<PlaySummary, ToolError> {
    let files = frame_files(&options.frames)?;
    let count = options.count.unwrap_or(files.len());
    let client = crate::streams::connect(&config.nats).await?;
    let js = jetstream::new(client.clone());
    let mut events = client
        .subscribe(format!(
            "vigil.events.*.{}.{}",
            options.site, options.camera
        ))
        .await
        .map_err(nats_err)?;
    client.flush().await.map_err(nats_err)?;
    let alerts = super::watch::alerts(
        &js,
        &format!("vigil.alerts.*.{}.{}", options.site, options.camera),
    )
    .await?;
    tokio::pin!(alerts);

    let run = Utc::now().format("%Y%m%dT%H%M%S").to_string();
    let mut sent_at: HashMap<String, Instant> = HashMap::new();
    let mut latencies = Vec::new();
    let mut summary = PlaySummary {
        sent: count,
        ..Default::default()
    };
    let mut ids = Vec::new();
    let started = Instant::now();
    let interval = (options.fps > 0.0).then(|| Duration::from_secs_f64(1.0 / options.fps));
    let mut publishing = Box::pin(publish_frames(&js, &files, count, &run, options, interval));
    let mut published = false;
    let deadline = tokio::time::sleep(Duration::from_secs(86_400));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            sent = publishing.next(), if !published => match sent {
                Some(Ok((frame_id, at))) => { sent_at.insert(frame_id, at); }
                Some(Err(e)) => return Err(e),
                None => {
                    published = true;
                    deadline.as_mut().reset(tokio::time::Instant::now() + options.wait);
                }
            },
            message = events.next() => {
                let Some(message) = message else { break };
                let Ok(event) = Encoding::of(message.headers.as_ref()).decode::<RiskEvent>(&message.payload) else { continue };
                let Some(at) = sent_at.remove(&event.frame_id) else { continue };
                latencies.push(at.elapsed().as_secs_f64() * 1000.0);
                *summary.levels.entry(event.risk.level.to_string()).or_default() += 1;
                ids.push(event.event_id.clone());
                if options.show_events {
                    super::print_lines(&[event_line(&event)]);
                }
            }
            Some(Ok(alert)) = alerts.next() => note_alert(&mut summary, &alert, options),
            _ = &mut deadline, if published => break,
        }
        if published && sent_at.is_empty() {
            break;
        }
    }
    // The stage applies the last events once its ordering window has passed.
    let settle = tokio::time::sleep(Duration::from_secs(3));
    tokio::pin!(settle);
    loop {
        tokio::select! {
            Some(Ok(alert)) = alerts.next() => note_alert(&mut summary, &alert, options),
            _ = &mut settle => break,
        }
    }
    summary.elapsed_s = started.elapsed().as_secs_f64();
    summary.events = latencies.len();
    latencies.sort_by(f64::total_cmp);
    summary.latency_p50_ms = percentile(&latencies, 0.50);
    summary.latency_p95_ms = percentile(&latencies, 0.95);
    summary.archived = archived_count(config, &ids, options.wait).await;
    Ok(summary)
}

fn note_alert(summary: &mut PlaySummary, alert: &crate::contract::Alert, options: &PlayOptions) {
    use crate::contract::AlertState;
    match alert.state {
        AlertState::New => summary.alerts += 1,
        AlertState::End => summary.alerts_ended += 1,
        AlertState::Update => {}
    }
    if !options.show_events {
        super::print_lines(&[super::report::alert_line(alert)]);
    }
}

/// Publishes frames, yielding each frame id with the time it was sent.
fn publish_frames<'a>(
    js: &'a jetstream::Context,
    files: &'a [PathBuf],
    count: usize,
    run: &'a str,
    options: &'a PlayOptions,
    interval: Option<Duration>,
) -> impl futures::Stream<Item = Result<(String, Instant), ToolError>> + 'a {
    futures::stream::iter(0..count).then(move |i| async move {
        if let Some(interval) = interval {
            tokio::time::sleep(interval).await;
        }
        let path = &files[i % files.len()];
        let image = std::fs::read(path).map_err(|source| ToolError::Read {
            path: path.clone(),
            source,
        })?;
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("frame");
        let frame_id = format!("{run}-{i:05}-{stem}");
        let frame = Frame {
            frame_id: frame_id.clone(),
            captured_at: Utc::now(),
            image: image.into(),
            site: Some(options.site.clone()),
            camera_id: Some(options.camera.clone()),
            pose: None,
            meta: BTreeMap::from([("source".to_string(), path.display().to_string())]),
        };
        let body = Encoding::Msgpack.encode(&frame)?;
        let message = jetstream::message::PublishMessage::build()
            .payload(Bytes::from(body))
            .message_id(contract::event_id(
                &options.site,
                &options.camera,
                &frame_id,
            ));
        let at = Instant::now();
        js.send_publish(subjects::frames(&options.site, &options.camera), message)
            .await
            .map_err(nats_err)?
            .await
            .map_err(nats_err)?;
        Ok((frame_id, at))
    })
}

/// Polls the archive until it holds every event (or `wait` runs out).
async fn archived_count(config: &Config, ids: &[String], wait: Duration) -> Option<u64> {
    let collection = crate::archive::collection(&config.archive).await.ok()?;
    let filter = crate::archive::ids_filter(ids);
    let deadline = Instant::now() + wait;
    loop {
        let found = collection.count_documents(filter.clone()).await;
        match found {
            Ok(n) if n as usize >= ids.len() || Instant::now() >= deadline => return Some(n),
            Err(_) if Instant::now() >= deadline => return None,
            _ => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}
