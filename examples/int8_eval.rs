//! The int8 model against the fp32 one, through vigil's own pipeline: on the shared test
//! images and 100 frames of the CCTV sequence, the int8 model's objects are matched to the
//! fp32 model's (same label, IoU ≥ 0.5): precision, recall, F1, and each model's median
//! inference time (one single-thread session, frames one at a time).
//!
//!     cargo run --release --example int8_eval -- [INT8.onnx] [FP32.onnx]
//!
//! Prints one JSON line. `scripts/quantize.py` makes the int8 model.

use std::time::Duration;

use chrono::Utc;
use vigil::config::Config;
use vigil::contract::{BBox, Frame};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let int8 = args
        .next()
        .unwrap_or_else(|| "models/yolov12n-int8.onnx".into());
    let fp32 = args.next().unwrap_or_else(|| "models/yolov12n.onnx".into());
    let shared = std::path::Path::new("../shared/testdata");
    let root = if shared.is_dir() {
        shared.to_path_buf()
    } else {
        std::path::PathBuf::from("testdata")
    };
    let mut images: Vec<_> = std::fs::read_dir(root.join("images"))?
        .flatten()
        .map(|e| e.path())
        .collect();
    images.sort();
    let mut sequence: Vec<_> = std::fs::read_dir(root.join("sequences/vtest"))?
        .flatten()
        .map(|e| e.path())
        .collect();
    sequence.sort();
    images.extend(sequence.iter().step_by(3).take(100).cloned());

    let (a, ta) = detections(&fp32, &images).await?;
    let (b, tb) = detections(&int8, &images).await?;
    let (mut tp, mut fp, mut fn_) = (0u64, 0u64, 0u64);
    for (found, reference) in b.iter().zip(&a) {
        let (t, f, n) = vigil::tools::fleet::matches(found, reference);
        tp += t;
        fp += f;
        fn_ += n;
    }
    let precision = tp as f64 / (tp + fp).max(1) as f64;
    let recall = tp as f64 / (tp + fn_).max(1) as f64;
    let f1 = 2.0 * precision * recall / (precision + recall).max(1e-9);
    println!(
        "{}",
        serde_json::json!({
            "images": images.len(),
            "fp32_objects": tp + fn_,
            "int8_objects": tp + fp,
            "precision": (precision * 1e4).round() / 1e4,
            "recall": (recall * 1e4).round() / 1e4,
            "f1": (f1 * 1e4).round() / 1e4,
            "fp32_infer_median_ms": median_ms(ta),
            "int8_infer_median_ms": median_ms(tb),
        })
    );
    Ok(())
}

type Boxes = Vec<(String, BBox)>;

async fn detections(
    model: &str,
    images: &[std::path::PathBuf],
) -> anyhow::Result<(Vec<Boxes>, Vec<Duration>)> {
    let mut config = Config::from_toml(include_str!("../config/vigil.toml"))?;
    config.detector.model = model.into();
    config.detector.sessions = 1;
    config.detector.threads_per_session = 1;
    let detector = vigil::detect::Detector::load(&config.detector)?;
    let pipeline = vigil::pipeline::Pipeline::new(&config, detector)?;
    let (mut out, mut times) = (Vec::new(), Vec::new());
    for (i, path) in images.iter().enumerate() {
        let frame = Frame {
            frame_id: format!("f{i:04}"),
            captured_at: Utc::now(),
            image: std::fs::read(path)?.into(),
            site: None,
            camera_id: None,
            pose: None,
            meta: Default::default(),
        };
        let origin = vigil::pipeline::Origin {
            site: "eval",
            camera: "eval",
            queued: Default::default(),
            patience: None,
        };
        let event = pipeline.process(frame, origin).await?;
        times.push(Duration::from_secs_f64(event.timings_ms.infer / 1000.0));
        out.push(vigil::tools::fleet::boxes(&event));
    }
    Ok((out, times))
}

fn median_ms(mut times: Vec<Duration>) -> f64 {
    times.sort();
    let m = times.get(times.len() / 2).copied().unwrap_or_default();
    (m.as_secs_f64() * 1e5).round() / 100.0
}
