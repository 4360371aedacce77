//! Criterion micro-benchmarks of every per-frame stage outside the model, on real inputs:
//! decode and letterbox of a 768×576 sequence frame and of a 1920×1080 JPEG made from it (4:2:0
//! as cameras send it, and 4:4:4), the motion thumbnail and change, output decoding + NMS of the model's
//! real output for that frame, placement on the demo camera's ground with its zones, the risk
//! assessment, and encoding the event as MessagePack.
//!
//!     cargo bench --bench micro                 # measure (target/criterion keeps the history)
//!     cargo bench --bench micro -- --test       # run each once (what CI does)
//!
//! The raw model output is computed once, by ONNX Runtime directly (the library found as vigil
//! finds it), so output decoding is timed on the anchors and scores the model really gives.

use std::hint::black_box;
use std::sync::OnceLock;

use criterion::{criterion_group, criterion_main, Criterion};
use image::RgbImage;
use vigil::config::Config;
use vigil::contract::{Encoding, ImageSize};
use vigil::detect::{decode_output, DecodeParams, Detection, ModelInfo, Provider};
use vigil::scene::Cameras;
use vigil::vision::{self, Letterbox, Letterboxer};

/// Everything the benchmarks read, built once.
struct Fixture {
    config: Config,
    jpeg_576: Vec<u8>,
    jpeg_1080: Vec<u8>,
    jpeg_1080_444: Vec<u8>,
    image_576: RgbImage,
    image_1080: RgbImage,
    letterbox: Letterbox,
    info: ModelInfo,
    output_shape: Vec<i64>,
    output: Vec<f32>,
    detections: Vec<Detection>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| build().expect("benchmark fixture (run scripts/setup.sh first)"))
}

fn build() -> anyhow::Result<Fixture> {
    let config = Config::from_toml(include_str!("../config/vigil.toml"))?;
    let dir = vigil::tools::play::sequence_dir();
    // A frame with people in the plaza and on the crossing line.
    let jpeg_576 = std::fs::read(dir.join("0100.jpg"))?;
    let image_576 = vision::decode(&jpeg_576, &config.vision)?;
    // A 1080p JPEG: the same view scaled up, encoded as cameras encode (quality 90, chroma
    // subsampled 4:2:0, like every JPEG in the test data); and a 4:4:4 copy, twice the chroma
    // to decode, for comparison.
    let image_1080 = image::imageops::resize(
        &image_576,
        1920,
        1080,
        image::imageops::FilterType::Triangle,
    );
    let mut jpeg_1080 = Vec::new();
    let mut encoder = jpeg_encoder::Encoder::new(&mut jpeg_1080, 90);
    encoder.set_sampling_factor(jpeg_encoder::SamplingFactor::R_4_2_0);
    encoder.encode(
        image_1080.as_raw(),
        1920,
        1080,
        jpeg_encoder::ColorType::Rgb,
    )?;
    let mut jpeg_1080_444 = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg_1080_444, 90)
        .encode_image(&image_1080)?;
    let image_1080 = vision::decode(&jpeg_1080, &config.vision)?;

    let (output_shape, output, info) = model_output(&config, &image_576)?;
    let letterbox = Letterbox::fit(
        image_576.width(),
        image_576.height(),
        info.input_width,
        info.input_height,
    );
    let detections = decode_output(
        &output_shape,
        &output,
        info.class_names.len(),
        &decode_params(&config),
    )?;
    Ok(Fixture {
        config,
        jpeg_576,
        jpeg_1080,
        jpeg_1080_444,
        image_576,
        image_1080,
        letterbox,
        info,
        output_shape,
        output,
        detections,
    })
}

fn decode_params(config: &Config) -> DecodeParams {
    DecodeParams {
        confidence: config.detector.track_confidence,
        iou: config.detector.iou,
        max_detections: config.detector.max_detections,
    }
}

/// The default model's raw output for `image`, and what vigil reads of the model.
fn model_output(
    config: &Config,
    image: &RgbImage,
) -> anyhow::Result<(Vec<i64>, Vec<f32>, ModelInfo)> {
    let library = vigil::detect::find_runtime(config.detector.runtime_library.as_deref())?;
    let env = ort::init_from(&library)?.with_name("vigil-bench").build()?;
    let mut session = ort::session::Session::builder(&env)?
        .with_intra_threads(1)
        .map_err(ort::Error::<()>::from)?
        .commit_from_file(config.detector.model_choice().path)?;
    let names = session
        .metadata()?
        .custom("names")
        .and_then(|n| vigil::detect::parse_class_names(&n))
        .ok_or_else(|| anyhow::anyhow!("the model names no classes"))?;
    // The input size the model takes (the default takes 640×480).
    let dims = vigil::detect::input_dims(&session);
    let (w, h) = match dims.as_slice() {
        [_, 3, h, w] if *h > 0 && *w > 0 => (*w as u32, *h as u32),
        _ => anyhow::bail!("the model's input {dims:?} is not [1, 3, H, W]"),
    };
    let mut tensor = Vec::new();
    Letterboxer::default().run(image, w, h, &mut tensor)?;
    let input = ort::value::TensorRef::from_array_view((
        [1usize, 3, h as usize, w as usize],
        tensor.as_slice(),
    ))?;
    let outputs = session.run(ort::inputs![input])?;
    let (shape, data) = outputs[0].try_extract_tensor::<f32>()?;
    let info = ModelInfo {
        name: "yolov12n".into(),
        sha256: String::new(),
        input_width: w,
        input_height: h,
        class_names: names,
        provider: Provider::Cpu,
        batch: Some(1),
    };
    Ok((shape.to_vec(), data.to_vec(), info))
}

fn vision_stages(c: &mut Criterion) {
    let f = fixture();
    let limits = &f.config.vision;
    let (w, h) = (f.info.input_width, f.info.input_height);
    c.bench_function("decode 768x576 JPEG", |b| {
        b.iter(|| vision::decode(black_box(&f.jpeg_576), limits))
    });
    c.bench_function("decode 1920x1080 JPEG", |b| {
        b.iter(|| vision::decode(black_box(&f.jpeg_1080), limits))
    });
    c.bench_function("decode 1920x1080 JPEG 4:4:4", |b| {
        b.iter(|| vision::decode(black_box(&f.jpeg_1080_444), limits))
    });
    let mut letterboxer = Letterboxer::default();
    let mut tensor = Vec::new();
    c.bench_function("letterbox 768x576", |b| {
        b.iter(|| letterboxer.run(black_box(&f.image_576), w, h, &mut tensor))
    });
    c.bench_function("letterbox 1920x1080", |b| {
        b.iter(|| letterboxer.run(black_box(&f.image_1080), w, h, &mut tensor))
    });
    // As the pipeline computes it: from the letterbox's scaled copy of the frame.
    for (name, image) in [
        ("motion thumbnail 768x576", &f.image_576),
        ("motion thumbnail 1920x1080", &f.image_1080),
    ] {
        let lb = letterboxer
            .run(image, w, h, &mut tensor)
            .expect("letterbox");
        let (rgb, sw, sh) = letterboxer.scaled(image, &lb);
        c.bench_function(name, |b| {
            b.iter(|| vigil::motion::Thumbnail::of_rgb(black_box(rgb), sw, sh))
        });
    }
    // The gate's measure: the 768x576 frame's thumbnail against its 1080p copy's (the
    // share of changed pixels and the most-changed window).
    let thumbnail = |image: &RgbImage| vigil::motion::Thumbnail::of(image);
    let (now, before) = (thumbnail(&f.image_576), thumbnail(&f.image_1080));
    c.bench_function("motion change (share and window)", |b| {
        b.iter(|| black_box(&now).change(black_box(&before), 12))
    });
}

fn after_the_model(c: &mut Criterion) {
    let f = fixture();
    let params = decode_params(&f.config);
    c.bench_function("output decoding + NMS", |b| {
        b.iter(|| {
            decode_output(
                black_box(&f.output_shape),
                black_box(&f.output),
                f.info.class_names.len(),
                &params,
            )
        })
    });
    let cameras = Cameras::from_config(&f.config).expect("the shipped cameras");
    let camera = cameras.get("demo", "vtest");
    let size = ImageSize {
        width: f.image_576.width(),
        height: f.image_576.height(),
    };
    let policy = &f.config.risk;
    let confidence = f.config.detector.confidence;
    c.bench_function("placement (ground, WGS84, zones)", |b| {
        b.iter(|| {
            let ground = cameras.frame(camera, None, size);
            vigil::scene::place(
                &ground,
                black_box(&f.detections),
                &f.letterbox,
                &f.info,
                policy,
                confidence,
            )
        })
    });
    let ground = cameras.frame(camera, None, size);
    let (objects, zones) = vigil::scene::place(
        &ground,
        &f.detections,
        &f.letterbox,
        &f.info,
        policy,
        confidence,
    );
    c.bench_function("risk assessment", |b| {
        b.iter(|| {
            policy.assess(
                black_box(&objects),
                black_box(&zones),
                "Campus plaza (demo)",
            )
        })
    });
    let assessment = policy.assess(&objects, &zones, "Campus plaza (demo)");
    let mut counts = std::collections::BTreeMap::new();
    for o in objects.iter().filter(|o| !o.low_score) {
        *counts.entry(o.label.clone()).or_insert(0) += 1;
    }
    let now = chrono::Utc::now();
    let event = vigil::contract::RiskEvent {
        schema: vigil::contract::EVENT_SCHEMA.into(),
        event_id: vigil::contract::event_id("demo", "vtest", "0100"),
        frame_id: "0100".into(),
        site: "demo".into(),
        camera_id: "vtest".into(),
        captured_at: now,
        processed_at: now,
        risk: vigil::contract::Risk {
            score: assessment.score,
            level: assessment.level,
        },
        priority: assessment.priority,
        description: assessment.description,
        objects,
        counts,
        zones,
        image: size,
        model: f.info.model_ref(),
        timings_ms: Default::default(),
        meta: Default::default(),
        pose: None,
        snapshot: None,
        motion: None,
    };
    c.bench_function("event encoding (MessagePack)", |b| {
        b.iter(|| Encoding::Msgpack.encode(black_box(&event)))
    });
}

criterion_group!(benches, vision_stages, after_the_model);
criterion_main!(benches);
