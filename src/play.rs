//! Tools for people at a terminal: play a folder of frames as a camera and watch the events
//! come back (the demo and a smoke test of a running `vigil serve`), watch events, send one
//! image to `vigil.analyze`, and print events readably.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use bytes::Bytes;
use chrono::Utc;
use futures::StreamExt;

use crate::config::Config;
use crate::contract::{self, subjects, Encoding, ErrorReply, Frame, RiskEvent};

#[derive(Debug, thiserror::Error)]
pub enum PlayError {
    #[error(transparent)]
    Streams(#[from] crate::streams::StreamsError),
    #[error("cannot read frames from {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no JPEG or PNG frames in {0}")]
    NoFrames(PathBuf),
    #[error("NATS: {0}")]
    Nats(String),
    #[error("{0}")]
    Codec(#[from] contract::CodecError),
    #[error("{path} is {size} bytes; the NATS server accepts at most {max_payload} (raise max_payload in nats-server.conf)")]
    TooLarge {
        path: PathBuf,
        size: usize,
        max_payload: usize,
    },
    #[error(transparent)]
    Archive(#[from] crate::archive::ArchiveError),
    #[error("cannot write the annotated image: {0}")]
    Annotate(String),
}

fn nats_err(e: impl std::fmt::Display) -> PlayError {
    PlayError::Nats(e.to_string())
}

/// One line per event: time, camera, level, score, counts, description.
pub fn event_line(event: &RiskEvent) -> String {
    let counts: Vec<String> = event
        .counts
        .iter()
        .map(|(label, n)| format!("{label}×{n}"))
        .collect();
    format!(
        "{}  {}/{}  {:<8} {:>3}  {:<28} {}",
        event.captured_at.format("%H:%M:%S%.3f"),
        event.site,
        event.camera_id,
        event.risk.level.as_str().to_uppercase(),
        event.risk.score,
        if counts.is_empty() {
            "-".to_string()
        } else {
            counts.join(" ")
        },
        event.description
    )
}

/// An event as a short report with a table of its objects.
pub fn event_report(event: &RiskEvent) -> String {
    let mut out = format!(
        "{}  {}/{}  frame {}\nrisk {} ({}/100), priority {}\n{}\n",
        event.captured_at.to_rfc3339(),
        event.site,
        event.camera_id,
        event.frame_id,
        event.risk.level.as_str().to_uppercase(),
        event.risk.score,
        event.priority,
        event.description
    );
    out += &format!(
        "\n{:>3}  {:<14} {:>5}  {:<25} {:<18} {}\n",
        "id", "label", "conf", "box (x1,y1,x2,y2 px)", "ground (m)", "zones"
    );
    for o in &event.objects {
        let b = &o.bbox;
        let ground = o
            .ground
            .map(|g| format!("{:.1}, {:.1}", g.x_m, g.y_m))
            .unwrap_or_else(|| "-".into());
        out += &format!(
            "{:>3}  {:<14} {:>5.2}  {:<25} {:<18} {}\n",
            o.id,
            o.label,
            o.confidence,
            format!("{:.0},{:.0},{:.0},{:.0}", b.x1, b.y1, b.x2, b.y2),
            ground,
            o.zones.join(",")
        );
    }
    let t = &event.timings_ms;
    out += &format!(
        "\n{}×{} px, model {} · ms: queue {:.1} decode {:.1} infer {:.1} post {:.1} total {:.1}\n",
        event.image.width,
        event.image.height,
        event.model.name,
        t.queue,
        t.decode,
        t.infer,
        t.post,
        t.total
    );
    out
}

/// JPEG and PNG files of a folder, in name order.
pub fn frame_files(dir: &Path) -> Result<Vec<PathBuf>, PlayError> {
    let entries = std::fs::read_dir(dir).map_err(|source| PlayError::Read {
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
        return Err(PlayError::NoFrames(dir.to_path_buf()));
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
}

#[derive(Debug, Default)]
pub struct PlaySummary {
    pub sent: usize,
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
pub async fn play(config: &Config, options: &PlayOptions) -> Result<PlaySummary, PlayError> {
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
                println!("{}", event_line(&event));
            }
            _ = &mut deadline, if published => break,
        }
        if published && sent_at.is_empty() {
            break;
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

/// Publishes frames, yielding each frame id with the time it was sent.
fn publish_frames<'a>(
    js: &'a jetstream::Context,
    files: &'a [PathBuf],
    count: usize,
    run: &'a str,
    options: &'a PlayOptions,
    interval: Option<Duration>,
) -> impl futures::Stream<Item = Result<(String, Instant), PlayError>> + 'a {
    futures::stream::iter(0..count).then(move |i| async move {
        if let Some(interval) = interval {
            tokio::time::sleep(interval).await;
        }
        let path = &files[i % files.len()];
        let image = std::fs::read(path).map_err(|source| PlayError::Read {
            path: path.clone(),
            source,
        })?;
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("frame");
        let frame_id = format!("{run}-{i:05}-{stem}");
        let frame = Frame {
            frame_id: frame_id.clone(),
            captured_at: Utc::now(),
            image,
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

/// Prints every event on `subject` (default all) until interrupted.
pub async fn watch(config: &Config, subject: &str) -> Result<(), PlayError> {
    let client = crate::streams::connect(&config.nats).await?;
    let mut events = client
        .subscribe(subject.to_string())
        .await
        .map_err(nats_err)?;
    while let Some(message) = events.next().await {
        match Encoding::of(message.headers.as_ref()).decode::<RiskEvent>(&message.payload) {
            Ok(event) => println!("{}", event_line(&event)),
            Err(e) => eprintln!("{}: not a risk event: {e}", message.subject),
        }
    }
    Ok(())
}

/// The outcome of one analyze request.
pub enum AnalyzeReply {
    Event(Box<RiskEvent>),
    Error(ErrorReply),
}

/// Sends one image to `vigil.analyze`.
pub async fn analyze(
    config: &Config,
    image: &Path,
    site: Option<String>,
    camera: Option<String>,
    timeout: Duration,
) -> Result<AnalyzeReply, PlayError> {
    let bytes = std::fs::read(image).map_err(|source| PlayError::Read {
        path: image.to_path_buf(),
        source,
    })?;
    let client = crate::streams::connect(&config.nats).await?;
    let max_payload = client.server_info().max_payload;
    let frame = Frame {
        frame_id: image
            .file_name()
            .and_then(|s| s.to_str())
            .unwrap_or("image")
            .chars()
            .take(64)
            .collect::<String>()
            + "-"
            + &Utc::now().timestamp_millis().to_string(),
        captured_at: Utc::now(),
        image: bytes,
        site,
        camera_id: camera,
        pose: None,
        meta: BTreeMap::new(),
    };
    let body = Encoding::Msgpack.encode(&frame)?;
    if body.len() > max_payload {
        return Err(PlayError::TooLarge {
            path: image.to_path_buf(),
            size: body.len(),
            max_payload,
        });
    }
    let request = async_nats::Request::new()
        .payload(Bytes::from(body))
        .timeout(Some(timeout));
    let reply = client
        .send_request(subjects::ANALYZE, request)
        .await
        .map_err(nats_err)?;
    let encoding = Encoding::of(reply.headers.as_ref());
    let is_error = reply
        .headers
        .as_ref()
        .is_some_and(|h| h.get(async_nats::service::NATS_SERVICE_ERROR).is_some());
    Ok(if is_error {
        AnalyzeReply::Error(encoding.decode(&reply.payload)?)
    } else {
        AnalyzeReply::Event(Box::new(encoding.decode(&reply.payload)?))
    })
}

/// Draws the event's boxes on the frame (thicker for objects inside a zone) and writes it to
/// `out`, in the format its extension names.
pub fn annotate(image: &[u8], event: &RiskEvent, out: &Path) -> Result<(), PlayError> {
    use imageproc::drawing::draw_hollow_rect_mut;
    use imageproc::rect::Rect;

    let failed = |e: &dyn std::fmt::Display| PlayError::Annotate(e.to_string());
    let mut canvas = crate::vision::decode(image, &Default::default()).map_err(|e| failed(&e))?;
    for object in &event.objects {
        let b = &object.bbox;
        let colour = if object.zones.is_empty() {
            image::Rgb([255, 200, 0])
        } else {
            image::Rgb([255, 40, 40])
        };
        let thickness = if object.zones.is_empty() { 2 } else { 4 };
        for t in 0..thickness {
            let (x, y) = (b.x1 as i32 - t, b.y1 as i32 - t);
            let (w, h) = (
                (b.x2 - b.x1) as u32 + 2 * t as u32,
                (b.y2 - b.y1) as u32 + 2 * t as u32,
            );
            draw_hollow_rect_mut(
                &mut canvas,
                Rect::at(x, y).of_size(w.max(1), h.max(1)),
                colour,
            );
        }
    }
    canvas.save(out).map_err(|e| failed(&e))
}
