//! Per-stage milliseconds of the pipeline on a folder of frames (default: the 300-frame CCTV
//! sequence), one frame at a time through one single-threaded session, as in `vigil serve`
//! with `sessions = 1`:
//!
//!     cargo bench --bench stages -- [FRAMES_DIR] [COUNT]
//!
//! Decode and letterbox are timed on their own; infer (the model run) and post (output
//! decoding, NMS, ground placement, scoring) come from each event's `timings_ms`.

use std::path::PathBuf;
use std::time::Instant;

use vigil::config::Config;
use vigil::detect::Detector;
use vigil::pipeline::{Origin, Pipeline};
use vigil::vision::{self, Letterboxer};

fn summary(name: &str, mut xs: Vec<f64>) -> String {
    xs.sort_by(f64::total_cmp);
    let at = |p: f64| xs[((xs.len() - 1) as f64 * p).round() as usize];
    let mean = xs.iter().sum::<f64>() / xs.len() as f64;
    format!(
        "{name:<10} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
        at(0.5),
        at(0.1),
        at(0.9),
        mean
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let dir = args
        .first()
        .map(PathBuf::from)
        .unwrap_or_else(vigil::tools::play::sequence_dir);
    let count: usize = args
        .get(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(usize::MAX);
    let files: Vec<PathBuf> = vigil::tools::play::frame_files(&dir)?
        .into_iter()
        .take(count)
        .collect();

    let mut config = Config::from_toml(include_str!("../config/vigil.toml"))?;
    config.detector.sessions = 1;
    config.detector.threads_per_session = 1;
    let pipeline = Pipeline::new(&config, Detector::load(&config.detector)?)?;
    let (w, h) = (
        pipeline.detector().info().input_width,
        pipeline.detector().info().input_height,
    );

    let frames: Vec<Vec<u8>> = files.iter().map(std::fs::read).collect::<Result<_, _>>()?;
    let mut letterboxer = Letterboxer::default();
    let mut tensor = Vec::new();
    let (mut decode, mut letterbox) = (Vec::new(), Vec::new());
    for bytes in &frames {
        let t = Instant::now();
        let image = vision::decode(bytes, &config.vision)?;
        decode.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        letterboxer.run(&image, w, h, &mut tensor)?;
        letterbox.push(t.elapsed().as_secs_f64() * 1e3);
    }

    let (mut infer, mut post, mut total) = (Vec::new(), Vec::new(), Vec::new());
    // Warm-up: the first runs of a session are slower (allocations, caches).
    for bytes in frames.iter().take(5) {
        let frame = frame("warmup", bytes.clone());
        pipeline.process(frame, origin()).await?;
    }
    let started = Instant::now();
    for (i, bytes) in frames.iter().enumerate() {
        let event = pipeline
            .process(frame(&format!("f{i}"), bytes.clone()), origin())
            .await?;
        infer.push(event.timings_ms.infer);
        post.push(event.timings_ms.post);
        total.push(event.timings_ms.total);
    }
    let wall = started.elapsed().as_secs_f64();

    println!(
        "{} frames from {} ({}×{} → {w}×{h}), one session, one thread",
        frames.len(),
        dir.display(),
        image_size(&frames[0])?.0,
        image_size(&frames[0])?.1
    );
    println!(
        "{:<10} {:>8} {:>8} {:>8} {:>8}",
        "stage (ms)", "median", "p10", "p90", "mean"
    );
    for (name, xs) in [
        ("decode", decode),
        ("letterbox", letterbox),
        ("infer", infer),
        ("post", post),
        ("total", total),
    ] {
        println!("{}", summary(name, xs));
    }
    println!(
        "sequential throughput: {:.2} frames/s",
        frames.len() as f64 / wall
    );
    Ok(())
}

fn image_size(bytes: &[u8]) -> anyhow::Result<(u32, u32)> {
    let image = vision::decode(bytes, &Default::default())?;
    Ok(image.dimensions())
}

fn frame(id: &str, image: Vec<u8>) -> vigil::contract::Frame {
    vigil::contract::Frame {
        frame_id: id.into(),
        captured_at: chrono::Utc::now(),
        image: image.into(),
        site: None,
        camera_id: None,
        pose: None,
        meta: Default::default(),
    }
}

fn origin() -> Origin<'static> {
    Origin {
        site: "bench",
        camera: "stages",
        queued: Default::default(),
        patience: None,
    }
}
