//! The model alone, with vigil's settings: frames of the CCTV sequence decoded and letterboxed
//! beforehand, then run through vigil's detector pool (SESSIONS one-thread ONNX Runtime sessions
//! side by side, kept busy; output decoding and NMS included, ~0.5 ms a frame) — the ceiling
//! `vigil serve` is compared with in `scripts/bench.sh`.
//!
//!     cargo run --release --example model_alone -- [SESSIONS] [FRAMES] [MAX_BATCH] [MODEL]
//!
//! With MAX_BATCH above 1 (and a model that takes a batch: scripts/batch_model.py), each
//! session runs the frames waiting for it together, as `detector.max_batch` does in `vigil
//! serve`. Prints one JSON line: frames per second and the mean frames per model run.

use std::time::Instant;

use futures::StreamExt;
use vigil::config::Config;
use vigil::detect::Detector;
use vigil::vision::{self, Letterboxer};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let sessions: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(2);
    let count: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(200);
    let max_batch: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(1);
    let mut config = Config::from_toml(include_str!("../config/vigil.toml"))?;
    config.detector.sessions = sessions;
    config.detector.threads_per_session = 1;
    config.detector.max_batch = max_batch;
    if let Some(model) = args.next() {
        config.detector.model = model.into();
    }
    // Enough frames outstanding for every session to find a full batch waiting.
    let in_flight = 2 * sessions * max_batch;
    let detector = Detector::load(&config.detector)?;
    let (w, h) = (detector.info().input_width, detector.info().input_height);
    let files = vigil::tools::play::frame_files(&vigil::tools::play::sequence_dir())?;
    let mut letterboxer = Letterboxer::default();
    let mut tensors = Vec::new();
    for path in files.iter().cycle().take(count) {
        let image = vision::decode(&std::fs::read(path)?, &config.vision)?;
        let mut tensor = Vec::new();
        letterboxer.run(&image, w, h, &mut tensor)?;
        tensors.push(tensor);
    }
    // Warm-up: each session once or twice.
    let warm: Vec<_> = tensors.iter().take(in_flight).cloned().collect();
    futures::stream::iter(warm)
        .map(|t| detector.detect(t, None))
        .buffer_unordered(in_flight)
        .collect::<Vec<_>>()
        .await;
    let started = Instant::now();
    let batches: Vec<usize> = futures::stream::iter(tensors)
        .map(|t| detector.detect(t, None))
        .buffer_unordered(in_flight)
        .filter_map(|r| std::future::ready(r.ok().map(|i| i.batch)))
        .collect()
        .await;
    let seconds = started.elapsed().as_secs_f64();
    let done = batches.len();
    let mean_batch = batches.iter().sum::<usize>() as f64 / done.max(1) as f64;
    println!(
        "{}",
        serde_json::json!({
            "sessions": sessions,
            "threads_per_session": 1,
            "max_batch": max_batch,
            "mean_batch": (mean_batch * 100.0).round() / 100.0,
            "model": config.detector.model_choice().path,
            "frames": done,
            "frames_per_s": (done as f64 / seconds * 100.0).round() / 100.0,
        })
    );
    Ok(())
}
