//! `vigil loadgen`: publishes a folder of frames as N cameras — at a fixed rate per camera, or
//! closed loop with K frames outstanding — listens for their events, and reports throughput,
//! end-to-end latency percentiles (HdrHistogram; at a fixed rate measured from each frame's
//! *scheduled* send time, so a stalled system is not excused by a stalled sender: coordinated
//! omission), frames lost or dropped (vigil's own counters, before and after), model runs
//! skipped by motion gating, and the per-stage timings the events carry. A progress bar while
//! it runs; a JSON summary and a PNG chart of latency and throughput over time at the end.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use bytes::Bytes;
use chrono::Utc;
use futures::StreamExt;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use super::{nats_err, ToolError};
use crate::config::Config;
use crate::contract::{self, subjects, Encoding, Frame, RiskEvent};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Load {
    /// Frames per second per camera, on a fixed schedule.
    Rate(f64),
    /// Frames outstanding (sent, no event yet) across all cameras.
    Outstanding(usize),
}

pub struct LoadOptions {
    pub frames: PathBuf,
    pub site: String,
    pub cameras: usize,
    /// Of the cameras, how many are quiet (fleet mode, see `fleet`); the rest play the folder.
    pub quiet: usize,
    pub load: Load,
    pub duration: Duration,
    /// How long to wait for the last events after sending stops.
    pub wait: Duration,
    pub json: Option<PathBuf>,
    pub chart: Option<PathBuf>,
    /// A TrueType font for the chart's text (default: the snapshot font search).
    pub font: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

impl Percentiles {
    fn of(h: &Histogram<u64>) -> Percentiles {
        // Recorded in microseconds; reported in milliseconds.
        let ms = |v: u64| (v as f64 / 10.0).round() / 100.0;
        Percentiles {
            p50: ms(h.value_at_quantile(0.5)),
            p90: ms(h.value_at_quantile(0.9)),
            p99: ms(h.value_at_quantile(0.99)),
            max: ms(h.max()),
            mean: (h.mean() / 10.0).round() / 100.0,
        }
    }
}

/// One second of the run, for the chart.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Second {
    pub t: u64,
    pub events: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    pub mode: String,
    pub cameras: usize,
    pub duration_s: f64,
    pub sent: u64,
    pub events: u64,
    /// Sent, never answered by an event within the wait.
    pub lost: u64,
    /// Frames vigil discarded unanalysed during the run (per-camera limit, age), from
    /// `$SRV.STATS.vigil` before and after.
    pub dropped_by_vigil: Option<u64>,
    pub model_skipped: u64,
    /// Quiet cameras (fleet mode) among `cameras`.
    pub quiet_cameras: usize,
    /// Quiet cameras' events against the model's own results on the same frames.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agreement: Option<super::fleet::Agreement>,
    pub throughput_fps: f64,
    /// End-to-end: scheduled (fixed rate) or sent (closed loop) → event received.
    pub latency_ms: Percentiles,
    /// The per-stage times the events carry (`timings_ms`).
    pub stages_ms: BTreeMap<String, Percentiles>,
    pub seconds: Vec<Second>,
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let l = &self.latency_ms;
        writeln!(
            f,
            "load           {} over {} cameras for {:.0} s",
            self.mode, self.cameras, self.duration_s
        )?;
        writeln!(f, "frames         {} sent, {} events, {} lost, {} dropped by vigil, {} without the model (motion)", self.sent, self.events, self.lost,
            self.dropped_by_vigil.map_or("?".to_string(), |d| d.to_string()), self.model_skipped)?;
        writeln!(f, "throughput     {:.2} events/s", self.throughput_fps)?;
        if let Some(a) = &self.agreement {
            writeln!(f, "quiet cameras  {} of {}: detections vs the model's own  precision {:.3}  recall {:.3}  F1 {:.3}", self.quiet_cameras, self.cameras, a.precision, a.recall, a.f1)?;
            writeln!(f, "crossing       {} frames with the person, {} without it in the event, longest {:.1} s", a.crossing_frames, a.crossing_frames_unseen, a.longest_unseen_s)?;
        }
        writeln!(
            f,
            "latency (ms)   p50 {:.1}  p90 {:.1}  p99 {:.1}  max {:.1}",
            l.p50, l.p90, l.p99, l.max
        )?;
        for (stage, p) in &self.stages_ms {
            writeln!(
                f,
                "  {stage:<12} p50 {:.1}  p90 {:.1}  p99 {:.1}",
                p.p50, p.p90, p.p99
            )?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot draw the chart {path}: {message}")]
    Chart { path: PathBuf, message: String },
    #[error("no font for the chart's text: {0}")]
    Font(#[source] crate::snapshots::annotate::AnnotateError),
}

fn histogram() -> Histogram<u64> {
    // Constant, valid bounds (1 µs to 1 h, 3 significant digits): creation cannot fail.
    #[allow(clippy::expect_used)]
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// Runs the load and returns its report (also written as JSON and drawn, when asked).
pub async fn run(config: &Config, options: &LoadOptions) -> Result<LoadReport, LoadError> {
    let files = super::play::frame_files(&options.frames)?;
    let images: Vec<Bytes> = files
        .iter()
        .map(|p| {
            std::fs::read(p)
                .map(Bytes::from)
                .map_err(|source| ToolError::Read {
                    path: p.clone(),
                    source,
                })
        })
        .collect::<Result<_, _>>()?;
    let client = crate::streams::connect(&config.nats)
        .await
        .map_err(ToolError::from)?;
    let js = jetstream::new(client.clone());
    let mut events = client
        .subscribe(format!("vigil.events.*.{}.*", options.site))
        .await
        .map_err(nats_err)?;
    client.flush().await.map_err(nats_err)?;
    let dropped_before = dropped(&client).await;
    let quiet = options.quiet.min(options.cameras);
    let scene = match quiet {
        0 => None,
        _ => {
            eprintln!("fleet: rendering a quiet view ({} frames) and asking vigil.analyze for the model's own results on each…", super::fleet::LOOP);
            Some(std::sync::Arc::new(
                super::fleet::QuietScene::build(&client, &images).await?,
            ))
        }
    };

    let run = Utc::now().format("%H%M%S").to_string();
    let cameras: Vec<String> = (0..options.cameras.max(1))
        .map(|c| format!("cam-{c:03}"))
        .collect();
    let bar = ProgressBar::new(options.duration.as_secs());
    if let Ok(style) = ProgressStyle::with_template("{bar:40} {pos}/{len} s  {msg}") {
        bar.set_style(style);
    }

    let (sent_tx, mut sent_rx) = tokio::sync::mpsc::unbounded_channel::<Sent>();
    let (credit_tx, credit_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let started = Instant::now();
    let mut sender = Some(tokio::spawn(send(
        js.clone(),
        options.site.clone(),
        cameras.clone(),
        Frames {
            images,
            quiet,
            scene: scene.clone(),
        },
        run.clone(),
        options.load,
        options.duration,
        sent_tx,
        credit_rx,
    )));

    let mut expected: HashMap<String, (Instant, Option<QuietFrame>)> = HashMap::new();
    let mut quiet_seen = Vec::new();
    let mut latency = histogram();
    let mut stages: BTreeMap<&'static str, Histogram<u64>> = BTreeMap::new();
    let mut per_second: BTreeMap<u64, Histogram<u64>> = BTreeMap::new();
    let (mut received, mut skipped) = (0u64, 0u64);
    let mut last_event = started;
    let mut sending = true;
    let mut sent_total = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let deadline = tokio::time::sleep(options.duration + options.wait);
    tokio::pin!(deadline);
    let prefix = format!("lg{run}-");
    loop {
        tokio::select! {
            // A frame's record before any event: its event cannot come back first.
            biased;
            sent = sent_rx.recv(), if sending => match sent {
                Some(Sent { id, at, quiet }) => { expected.insert(id, (at, quiet)); sent_total += 1; }
                None => {
                    sending = false;
                    // A sender that failed (no stream takes the frames, say) ends the run now.
                    if sender.as_ref().is_some_and(|s| s.is_finished()) {
                        if let Some(Ok(Err(e))) = sender.take().and_then(futures::FutureExt::now_or_never) {
                            bar.finish_and_clear();
                            return Err(e.into());
                        }
                    }
                    deadline.as_mut().reset(tokio::time::Instant::now() + options.wait);
                }
            },
            message = events.next() => {
                let Some(message) = message else { break };
                let Ok(event) = Encoding::of(message.headers.as_ref()).decode::<RiskEvent>(&message.payload) else { continue };
                if !event.frame_id.starts_with(&prefix) { continue }
                let Some((at, quiet)) = expected.remove(&event.frame_id) else { continue };
                if let Some(q) = quiet {
                    quiet_seen.push((q.camera, q.number, q.index, super::fleet::boxes(&event)));
                }
                let now = Instant::now();
                let us = now.saturating_duration_since(at).as_micros() as u64;
                let _ = latency.record(us.max(1));
                let second = now.duration_since(started).as_secs();
                let _ = per_second.entry(second).or_insert_with(histogram).record(us.max(1));
                let t = &event.timings_ms;
                for (stage, ms) in [("queue", t.queue), ("decode", t.decode), ("infer", t.infer), ("post", t.post), ("total", t.total)] {
                    let _ = stages.entry(stage).or_insert_with(histogram).record(((ms * 1000.0) as u64).max(1));
                }
                received += 1;
                last_event = now;
                skipped += u64::from(event.motion.as_ref().is_some_and(|m| m.model_skipped));
                let _ = credit_tx.send(());
                if !sending && expected.is_empty() { break }
            },
            _ = tick.tick() => {
                bar.set_position(started.elapsed().as_secs().min(options.duration.as_secs()));
                bar.set_message(format!("{sent_total} sent, {received} events, {} waiting", expected.len()));
            },
            _ = &mut deadline => break,
        }
    }
    bar.finish_and_clear();
    if let Some(sender) = sender {
        match sender.await {
            Ok(Err(e)) => return Err(e.into()),
            Err(e) => tracing::warn!(error = %e, "the sender task failed"),
            Ok(Ok(())) => {}
        }
    }
    let dropped_after = dropped(&client).await;
    let report = LoadReport {
        mode: match options.load {
            Load::Rate(fps) => format!("{fps} frames/s per camera"),
            Load::Outstanding(k) => format!("closed loop, {k} outstanding"),
        },
        cameras: cameras.len(),
        duration_s: options.duration.as_secs_f64(),
        sent: sent_total,
        events: received,
        lost: expected.len() as u64,
        dropped_by_vigil: dropped_before
            .zip(dropped_after)
            .map(|(b, a)| a.saturating_sub(b)),
        model_skipped: skipped,
        quiet_cameras: quiet,
        agreement: scene.as_ref().map(|s| {
            let fps = match options.load {
                Load::Rate(f) => f,
                Load::Outstanding(_) => 5.0,
            };
            super::fleet::agreement(s, &quiet_seen, fps)
        }),
        throughput_fps: received as f64
            / last_event.duration_since(started).as_secs_f64().max(1e-9),
        latency_ms: Percentiles::of(&latency),
        stages_ms: stages
            .iter()
            .map(|(k, h)| (k.to_string(), Percentiles::of(h)))
            .collect(),
        seconds: per_second
            .iter()
            .map(|(t, h)| {
                let p = Percentiles::of(h);
                Second {
                    t: *t,
                    events: h.len(),
                    p50_ms: p.p50,
                    p99_ms: p.p99,
                }
            })
            .collect(),
    };
    if let Some(path) = &options.json {
        let text = serde_json::to_string_pretty(&report).unwrap_or_default();
        std::fs::write(path, text).map_err(|source| LoadError::Write {
            path: path.clone(),
            source,
        })?;
    }
    if let Some(path) = &options.chart {
        chart(&report, path, options.font.as_deref())?;
    }
    Ok(report)
}

/// A frame sent: its id, when it was due (fixed rate) or sent, and for a quiet camera which.
struct Sent {
    id: String,
    at: Instant,
    quiet: Option<QuietFrame>,
}

#[derive(Debug, Clone, Copy)]
struct QuietFrame {
    camera: usize,
    /// The camera's frame number.
    number: usize,
    /// Its place in the quiet loop.
    index: usize,
}

/// What each camera sends: the first `quiet` cameras the quiet loop (each from its own place
/// in it, so crossings do not coincide), the others the folder's frames.
struct Frames {
    images: Vec<Bytes>,
    quiet: usize,
    scene: Option<std::sync::Arc<super::fleet::QuietScene>>,
}

impl Frames {
    fn frame(&self, camera: usize, k: usize) -> (Bytes, Option<QuietFrame>) {
        match &self.scene {
            Some(scene) if camera < self.quiet => {
                let index = (k + camera * 37) % scene.frames.len();
                let quiet = QuietFrame {
                    camera,
                    number: k,
                    index,
                };
                (scene.frames[index].clone(), Some(quiet))
            }
            _ => (self.images[k % self.images.len()].clone(), None),
        }
    }
}

/// Frames vigil dropped so far (the largest count any instance reports: each counts the
/// stream's drops, not its own); None without a running vigil.
async fn dropped(client: &async_nats::Client) -> Option<u64> {
    let stats = super::status::stats_on(client, Duration::from_millis(500))
        .await
        .ok()?;
    stats
        .iter()
        .filter_map(|s| s["endpoints"][0]["data"]["frames_dropped"].as_u64())
        .max()
}

/// Publishes frames on schedule (fixed rate: camera c's frame k at k/fps plus c/(N·fps)) or
/// whenever an event comes back (closed loop), until `duration`.
#[allow(clippy::too_many_arguments)]
async fn send(
    js: jetstream::Context,
    site: String,
    cameras: Vec<String>,
    frames: Frames,
    run: String,
    load: Load,
    duration: Duration,
    sent: tokio::sync::mpsc::UnboundedSender<Sent>,
    mut credits: tokio::sync::mpsc::UnboundedReceiver<()>,
) -> Result<(), ToolError> {
    let start = tokio::time::Instant::now();
    let end = start + duration;
    let mut acks = futures::stream::FuturesUnordered::new();
    let mut n = 0usize;
    let publish = |n: usize| {
        let c = n % cameras.len();
        let camera = &cameras[c];
        let k = n / cameras.len();
        let frame_id = format!("lg{run}-{camera}-{k:06}");
        let (image, quiet) = frames.frame(c, k);
        let frame = Frame {
            frame_id: frame_id.clone(),
            captured_at: Utc::now(),
            image,
            site: Some(site.clone()),
            camera_id: Some(camera.clone()),
            pose: None,
            meta: BTreeMap::new(),
        };
        let message = Encoding::Msgpack.encode(&frame).map(|body| {
            jetstream::message::PublishMessage::build()
                .payload(Bytes::from(body))
                .message_id(contract::event_id(&site, camera, &frame_id))
        });
        (
            Sent {
                id: frame_id,
                at: Instant::now(),
                quiet,
            },
            subjects::frames(&site, camera),
            message,
        )
    };
    match load {
        Load::Rate(fps) => {
            let per_frame = Duration::from_secs_f64(1.0 / (fps.max(1e-3) * cameras.len() as f64));
            loop {
                let due = start + per_frame * n as u32;
                if due >= end {
                    break;
                }
                tokio::time::sleep_until(due).await;
                let (mut record, subject, message) = publish(n);
                // Latency counts from when the frame was due, not from when it went out.
                record.at = due.into_std();
                let _ = sent.send(record);
                let ack = js.send_publish(subject, message?).await.map_err(nats_err)?;
                acks.push(std::future::IntoFuture::into_future(ack));
                while let Some(Some(done)) = futures::FutureExt::now_or_never(acks.next()) {
                    done.map_err(nats_err)?;
                }
                n += 1;
            }
        }
        Load::Outstanding(k) => {
            for _ in 0..k {
                let (record, subject, message) = publish(n);
                let _ = sent.send(record);
                js.send_publish(subject, message?)
                    .await
                    .map_err(nats_err)?
                    .await
                    .map_err(nats_err)?;
                n += 1;
            }
            while tokio::time::Instant::now() < end {
                tokio::select! {
                    credit = credits.recv() => if credit.is_none() { break },
                    _ = tokio::time::sleep_until(end) => break,
                }
                let (record, subject, message) = publish(n);
                let _ = sent.send(record);
                js.send_publish(subject, message?)
                    .await
                    .map_err(nats_err)?
                    .await
                    .map_err(nats_err)?;
                n += 1;
            }
        }
    }
    while let Some(done) = acks.next().await {
        done.map_err(nats_err)?;
    }
    Ok(())
}

/// Latency (p50, p99) and throughput per second, one above the other.
fn chart(
    report: &LoadReport,
    path: &std::path::Path,
    font: Option<&std::path::Path>,
) -> Result<(), LoadError> {
    use plotters::prelude::*;
    register_font(font)?;
    let fail = |e: &dyn std::fmt::Display| LoadError::Chart {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let root = BitMapBackend::new(path, (960, 640)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    let (top, bottom) = root.split_vertically(360);
    let seconds = &report.seconds;
    let t_max = seconds.last().map_or(1, |s| s.t + 1) as f64;
    let l_max = seconds.iter().map(|s| s.p99_ms).fold(1.0, f64::max) * 1.1;
    let mut latency = ChartBuilder::on(&top)
        .caption(
            format!(
                "vigil loadgen: {} over {} cameras — latency (ms)",
                report.mode, report.cameras
            ),
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..t_max, 0f64..l_max)
        .map_err(|e| fail(&e))?;
    latency
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("ms")
        .draw()
        .map_err(|e| fail(&e))?;
    let p50 = |s: &Second| s.p50_ms;
    let p99 = |s: &Second| s.p99_ms;
    for (name, value, colour) in [
        ("p50", &p50 as &dyn Fn(&Second) -> f64, BLUE),
        ("p99", &p99, RED),
    ] {
        latency
            .draw_series(LineSeries::new(
                seconds.iter().map(|s| (s.t as f64, value(s))),
                &colour,
            ))
            .map_err(|e| fail(&e))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour));
    }
    latency
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| fail(&e))?;
    let e_max = seconds.iter().map(|s| s.events).max().unwrap_or(1) as f64 * 1.2;
    let mut throughput = ChartBuilder::on(&bottom)
        .caption("events per second", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..t_max, 0f64..e_max.max(1.0))
        .map_err(|e| fail(&e))?;
    throughput
        .configure_mesh()
        .x_desc("seconds")
        .draw()
        .map_err(|e| fail(&e))?;
    throughput
        .draw_series(LineSeries::new(
            seconds.iter().map(|s| (s.t as f64, s.events as f64)),
            &GREEN,
        ))
        .map_err(|e| fail(&e))?;
    root.present().map_err(|e| fail(&e))?;
    Ok(())
}

/// plotters draws text with a font registered from bytes (without one it panics): the
/// snapshot font (NanumGothic from fonts-nanum, which setup installs) or the one given.
fn register_font(font: Option<&std::path::Path>) -> Result<(), LoadError> {
    static REGISTERED: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    if REGISTERED.get().is_some() {
        return Ok(());
    }
    let bytes = crate::snapshots::annotate::font_bytes(font).map_err(LoadError::Font)?;
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    let _ = plotters::style::register_font("sans-serif", plotters::style::FontStyle::Normal, bytes);
    let _ = REGISTERED.set(());
    Ok(())
}
