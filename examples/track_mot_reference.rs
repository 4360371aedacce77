//! The reference for `track_mot`: trackforge's ByteTrack over the same MOTChallenge
//! detection file, writing the same result format (`scripts/eval_tracker.py` scores both).
//!
//! trackforge counts frames and has no ground positions, so its settings are vigil's
//! defaults converted to frames: the same score thresholds and IoU gates, and a track
//! buffer of `max_lost_s × fps` frames.
//!
//! ```text
//! cargo run --release --example track_mot_reference -- det.txt --fps 25 > res.txt
//! ```

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use trackforge::trackers::byte_track::{ByteTrack, ByteTrackParams};
use trackforge::trackers::common::CommonParams;
use vigil::situations::track::TrackerConfig;

// The file reading and result writing of `track_mot`, shared so both trackers see the same
// input and are scored on the same output.
#[allow(dead_code)]
#[path = "track_mot.rs"]
mod track_mot;

#[derive(Parser)]
struct Args {
    /// MOTChallenge detection file.
    detections: PathBuf,
    /// Frame rate of the sequence, to turn seconds into frames.
    #[arg(long, default_value_t = 25.0)]
    fps: f64,
    /// Results file; stdout when absent.
    #[arg(long, short)]
    output: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let ours = TrackerConfig::default();
    let mut tracker = ByteTrack::from_params(ByteTrackParams {
        common: CommonParams::new((ours.max_lost_s * args.fps).round() as usize, 3),
        track_thresh: ours.high_score,
        match_thresh: 1.0 - ours.min_iou,
        det_thresh: ours.new_track_score,
        second_match_thresh: 1.0 - ours.min_iou_low,
    });
    let frames = track_mot::read_detections(&args.detections)?;
    let mut out = track_mot::results_writer(args.output.as_deref())?;
    let mut times = Vec::with_capacity(frames.len());
    for (frame, detections) in track_mot::all_frames(&frames) {
        // trackforge sends everything under track_thresh to its second stage; vigil ignores
        // scores under low_score, and so does the reference here.
        let input = detections
            .iter()
            .filter(|d| d.score >= ours.low_score)
            .map(|d| (d.tlwh, d.score, 0_i64))
            .collect();
        let started = Instant::now();
        let tracks = tracker.update(input);
        times.push(started.elapsed());
        for track in tracks {
            track_mot::write_result(&mut out, frame, track.track_id, track.tlwh)?;
        }
    }
    out.flush()?;
    track_mot::report_timing("trackforge ByteTrack", times);
    Ok(())
}
