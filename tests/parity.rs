//! The detector against the reference pipeline's detections (../shared/testdata/reference):
//! on the reference's own letterboxed inputs the same detections; from the raw images every
//! confident reference detection is found again.

mod common;

use serde::Deserialize;
use vigil::contract::Encoding;
use vigil::detect::{Detection, Detector};
use vigil::pipeline::{Origin, Pipeline};
use vigil::vision::{self, Letterbox, Letterboxer};

#[derive(Debug, Deserialize)]
struct Reference {
    class_id: u32,
    score: f32,
    x1: f32,
    y1: f32,
    x2: f32,
    y2: f32,
}

#[derive(Debug, Deserialize)]
struct CanvasMeta {
    orig_w: u32,
    orig_h: u32,
    r: f64,
    pad_left: u32,
    pad_top: u32,
}

const IMAGES: [&str; 8] = [
    "bus",
    "zidane",
    "opencv_basketball1",
    "opencv_building",
    "opencv_leuvenA",
    "vtest_f000",
    "vtest_f100",
    "vtest_f200",
];

fn reference(stem: &str) -> Vec<Reference> {
    let path = common::testdata()
        .join("reference/yolov12n")
        .join(format!("{stem}.json"));
    serde_json::from_str(
        &std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .unwrap()
}

fn iou(a: (f32, f32, f32, f32), b: (f32, f32, f32, f32)) -> f32 {
    let w = (a.2.min(b.2) - a.0.max(b.0)).max(0.0);
    let h = (a.3.min(b.3) - a.1.max(b.1)).max(0.0);
    let inter = w * h;
    inter / ((a.2 - a.0) * (a.3 - a.1) + (b.2 - b.0) * (b.3 - b.1) - inter)
}

/// The fp32 model the reference detections were computed with (the shipped default is its
/// int8 copy, compared with it in tests/models.rs).
fn config() -> vigil::config::Config {
    let mut config =
        vigil::config::Config::from_toml(include_str!("../config/vigil.toml")).unwrap();
    config.detector.sessions = 1;
    config.detector.model = "models/yolov12n.onnx".into();
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canvas_inputs_give_the_reference_detections() {
    let detector = Detector::load(&config().detector).expect("detector loads");
    let mut letterboxer = Letterboxer::default();
    let canvas_dir = common::testdata().join("reference/canvas640");
    for stem in IMAGES {
        let bytes = std::fs::read(canvas_dir.join(format!("{stem}.png"))).unwrap();
        let meta: CanvasMeta = serde_json::from_slice(
            &std::fs::read(canvas_dir.join(format!("{stem}.meta.json"))).unwrap(),
        )
        .unwrap();
        let image = vision::decode(&bytes, &Default::default()).unwrap();
        let mut tensor = detector.take_buffer();
        letterboxer.run(&image, 640, 640, &mut tensor).unwrap();
        // The reference keeps scores above 0.25; vigil also carries lower ones (for the
        // tracker), which greedy NMS can never let suppress a higher-scoring box.
        let found: Vec<Detection> = detector
            .detect(tensor, None)
            .await
            .unwrap()
            .detections
            .into_iter()
            .filter(|d| d.score >= config().detector.confidence)
            .collect();
        let placement = Letterbox {
            src_width: meta.orig_w,
            src_height: meta.orig_h,
            scale: meta.r,
            scaled_width: 0,
            scaled_height: 0,
            pad_left: meta.pad_left,
            pad_top: meta.pad_top,
        };
        let expected = reference(stem);
        assert_eq!(found.len(), expected.len(), "{stem}: {found:?}");
        for (d, r) in found.iter().zip(&expected) {
            let Detection {
                class_id, score, ..
            } = *d;
            let (x1, y1) = placement.to_source(d.x1, d.y1);
            let (x2, y2) = placement.to_source(d.x2, d.y2);
            assert_eq!(class_id, r.class_id, "{stem}");
            assert!(
                (score - r.score).abs() < 1e-3,
                "{stem}: score {score} vs {}",
                r.score
            );
            for (got, want) in [(x1, r.x1), (y1, r.y1), (x2, r.x2), (y2, r.y2)] {
                assert!(
                    (got - want).abs() <= 0.5,
                    "{stem}: box {:?} vs {r:?}",
                    (x1, y1, x2, y2)
                );
            }
        }
    }
    detector.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_images_find_every_confident_reference_detection() {
    let config = config();
    let pipeline = Pipeline::new(&config, Detector::load(&config.detector).unwrap()).unwrap();
    for stem in IMAGES {
        let file = ["png", "jpg"]
            .iter()
            .map(|ext| format!("{stem}.{ext}"))
            .find(|f| common::testdata().join("images").join(f).exists())
            .unwrap();
        let frame = common::frame(stem, common::image(&file));
        // Through the wire codec, as a camera would send it.
        let frame = Encoding::Msgpack
            .decode_frame(&common::encode(&frame, Encoding::Msgpack))
            .unwrap();
        let origin = Origin {
            site: "parity",
            camera: "cam",
            queued: Default::default(),
            patience: None,
        };
        let event = pipeline.process(frame, origin).await.unwrap();
        for r in reference(stem).iter().filter(|r| r.score >= 0.35) {
            let best = event
                .objects
                .iter()
                .filter(|o| o.class_id == r.class_id)
                .map(|o| {
                    iou(
                        (o.bbox.x1, o.bbox.y1, o.bbox.x2, o.bbox.y2),
                        (r.x1, r.y1, r.x2, r.y2),
                    )
                })
                .fold(0.0, f32::max);
            assert!(
                best >= 0.9,
                "{stem}: reference {r:?} matched only with IoU {best}"
            );
        }
    }
}

/// vigil decodes JPEGs itself (zune-jpeg in strict mode, after a structural check): every real
/// JPEG here must pass both and give the pixels the `image` crate gives.
#[test]
fn every_real_jpeg_decodes_like_the_image_crate() {
    let data = common::testdata();
    let mut files: Vec<_> = std::fs::read_dir(data.join("sequences/vtest"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.extend(
        [
            "bus.jpg",
            "zidane.jpg",
            "opencv_building.jpg",
            "opencv_leuvenA.jpg",
        ]
        .map(|f| data.join("images").join(f)),
    );
    for path in files
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
    {
        let bytes = std::fs::read(path).unwrap();
        let ours = vision::decode(&bytes, &Default::default())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let theirs = image::load_from_memory(&bytes).unwrap().into_rgb8();
        assert!(ours == theirs, "{}: pixels differ", path.display());
    }
}
