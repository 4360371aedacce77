//! Runs vigil's tracker over a MOTChallenge detection file and writes MOTChallenge results,
//! so it can be scored against ground truth (`scripts/eval_tracker.py`).
//!
//! Input, one detection a line: `frame,id,x,y,w,h,score[,wx,wy,…]` (top-left corner and
//! size in pixels; `wx,wy` metres on the ground, used with `--ground`). Output, one track a
//! line: `frame,id,x,y,w,h,1,-1,-1,-1`. The median time of one tracker update goes to stderr.
//!
//! ```text
//! cargo run --release --example track_mot -- det.txt --fps 25 [--ground] > res.txt
//! ```

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use vigil::contract::{BBox, GroundPosition};
use vigil::situations::track::{Observation, TrackState, Tracker, TrackerConfig};

#[derive(Parser)]
struct Args {
    /// MOTChallenge detection file.
    detections: PathBuf,
    /// Frame rate of the sequence; a frame's time is frame / fps seconds.
    #[arg(long, default_value_t = 25.0)]
    fps: f64,
    /// Take ground positions (metres) from columns 8 and 9.
    #[arg(long)]
    ground: bool,
    /// Tracker settings: a TOML file of `TrackerConfig` fields; the rest keep defaults.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Results file; stdout when absent.
    #[arg(long, short)]
    output: Option<PathBuf>,
}

/// One line of a detection file.
pub struct Detection {
    /// Top-left x, y, width, height (pixels).
    pub tlwh: [f32; 4],
    pub score: f32,
    /// Columns 8 and 9, when present and not -1.
    pub world: Option<(f64, f64)>,
}

/// Detections by frame number; frames without any are absent.
pub fn read_detections(path: &Path) -> anyhow::Result<BTreeMap<u32, Vec<Detection>>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path:?}"))?;
    let mut frames: BTreeMap<u32, Vec<Detection>> = BTreeMap::new();
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let cols: Vec<f64> = line
            .split(',')
            .map(|c| c.trim().parse::<f64>())
            .collect::<Result<_, _>>()
            .with_context(|| format!("{path:?} line {}: not a list of numbers", n + 1))?;
        if cols.len() < 7 {
            bail!(
                "{path:?} line {}: {} columns, expected 7 or more",
                n + 1,
                cols.len()
            );
        }
        let world = match (cols.get(7), cols.get(8)) {
            (Some(&x), Some(&y)) if !(x == -1.0 && y == -1.0) => Some((x, y)),
            _ => None,
        };
        frames.entry(cols[0] as u32).or_default().push(Detection {
            tlwh: [
                cols[2] as f32,
                cols[3] as f32,
                cols[4] as f32,
                cols[5] as f32,
            ],
            score: cols[6] as f32,
            world,
        });
    }
    Ok(frames)
}

/// Frames 1 to the last one with a detection, the empty ones included: trackers must see
/// time pass while nothing is detected.
pub fn all_frames(
    frames: &BTreeMap<u32, Vec<Detection>>,
) -> impl Iterator<Item = (u32, &[Detection])> {
    let last = frames.keys().next_back().copied().unwrap_or(0);
    (1..=last).map(move |f| (f, frames.get(&f).map_or(&[][..], Vec::as_slice)))
}

pub fn results_writer(output: Option<&Path>) -> anyhow::Result<Box<dyn Write>> {
    Ok(match output {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("creating {path:?}"))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    })
}

pub fn write_result(
    out: &mut dyn Write,
    frame: u32,
    id: u64,
    tlwh: [f32; 4],
) -> std::io::Result<()> {
    let [x, y, w, h] = tlwh;
    writeln!(out, "{frame},{id},{x:.2},{y:.2},{w:.2},{h:.2},1,-1,-1,-1")
}

pub fn report_timing(name: &str, mut times: Vec<Duration>) {
    times.sort_unstable();
    let median = times.get(times.len() / 2).copied().unwrap_or_default();
    let worst = times.last().copied().unwrap_or_default();
    eprintln!(
        "{name}: {} updates, median {:.1} µs, max {:.1} µs per update",
        times.len(),
        median.as_secs_f64() * 1e6,
        worst.as_secs_f64() * 1e6
    );
}

fn observations(detections: &[Detection], ground: bool) -> Vec<Observation> {
    let observation = |(i, d): (usize, &Detection)| {
        let [x, y, w, h] = d.tlwh;
        Observation {
            object_id: i as u32,
            class_id: 0,
            label: "person".into(),
            score: d.score,
            bbox: BBox {
                x1: x,
                y1: y,
                x2: x + w,
                y2: y + h,
            },
            ground: d
                .world
                .filter(|_| ground)
                .map(|(x_m, y_m)| GroundPosition::at(x_m, y_m)),
        }
    };
    detections.iter().enumerate().map(observation).collect()
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = match &args.config {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).with_context(|| format!("reading {path:?}"))?;
            toml::from_str(&text).with_context(|| format!("parsing {path:?}"))?
        }
        None => TrackerConfig::default(),
    };
    config.validate().context("tracker config")?;
    let frames = read_detections(&args.detections)?;
    let mut out = results_writer(args.output.as_deref())?;
    let mut tracker = Tracker::new(config);
    let mut times = Vec::with_capacity(frames.len());
    for (frame, detections) in all_frames(&frames) {
        let observations = observations(detections, args.ground);
        let started = Instant::now();
        let tracks = tracker.update(f64::from(frame) / args.fps, &observations);
        times.push(started.elapsed());
        // Reported like a detector-fed tracker would: confirmed tracks seen in this frame.
        for track in tracks.iter().filter(|t| t.state == TrackState::Confirmed) {
            let b = track.bbox;
            write_result(
                &mut out,
                frame,
                track.id,
                [b.x1, b.y1, b.x2 - b.x1, b.y2 - b.y1],
            )?;
        }
    }
    out.flush()?;
    report_timing("vigil tracker", times);
    Ok(())
}
