//! Motion gating on real frames: the busy CCTV sequence never skips the model; a still view
//! (sensor noise, JPEG re-encoding, lighting drift) does; a person pasted into it does not;
//! and `vigil serve` marks skipped frames in their events.

mod common;

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use image::{Rgb, RgbImage};
use vigil::contract::{ImageSize, RiskEvent};
use vigil::motion::{Gate, MotionConfig, Thumbnail, Verdict};

fn decoded(bytes: &[u8]) -> RgbImage {
    image::load_from_memory(bytes).unwrap().to_rgb8()
}

fn size(image: &RgbImage) -> ImageSize {
    ImageSize {
        width: image.width(),
        height: image.height(),
    }
}

fn t(ms: i64) -> DateTime<Utc> {
    common::sequence::start() + chrono::Duration::milliseconds(ms)
}

/// Runs frames 200 ms apart (5 fps) through one camera's gate the way the pipeline does:
/// judge, and remember the frames the model ran on. Returns each frame's verdict.
fn gate_run(frames: &[RgbImage], config: &MotionConfig) -> Vec<Verdict> {
    let gate = Gate::new(config);
    let key = ("demo".to_string(), "cam".to_string());
    frames
        .iter()
        .enumerate()
        .map(|(i, frame)| {
            let thumbnail = Thumbnail::of(frame);
            let at = t(200 * i as i64);
            let verdict = gate.judge(&key, &thumbnail, at, size(frame));
            if matches!(verdict, Verdict::Run { .. }) {
                gate.analysed(
                    key.clone(),
                    thumbnail,
                    at,
                    size(frame),
                    &[],
                    &format!("f{i}"),
                );
            }
            verdict
        })
        .collect()
}

/// A still view: the frame with deterministic sensor noise (±4 levels), a lighting drift of
/// `light` levels, re-encoded as JPEG (quality 80) and decoded again, as a camera sends it.
fn still(base: &RgbImage, seed: u32, light: i32) -> RgbImage {
    let noisy = RgbImage::from_fn(base.width(), base.height(), |x, y| {
        let p = base.get_pixel(x, y).0;
        let n = ((x.wrapping_mul(2_654_435_761) ^ y.wrapping_mul(40_503) ^ seed.wrapping_mul(97))
            % 9) as i32
            - 4;
        Rgb(p.map(|c| (i32::from(c) + n + light).clamp(0, 255) as u8))
    });
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 80)
        .encode_image(&noisy)
        .unwrap();
    decoded(&jpeg)
}

#[test]
fn the_busy_sequence_never_skips_the_model_and_a_still_view_does_until_a_person_crosses() {
    let config = MotionConfig::default();
    // The sequence at 5 fps: every other frame.
    let sequence: Vec<RgbImage> = common::rig::sequence(300)
        .iter()
        .step_by(2)
        .map(|b| decoded(b))
        .collect();
    let verdicts = gate_run(&sequence, &config);
    let changes: Vec<f64> = verdicts
        .iter()
        .filter_map(|v| match v {
            Verdict::Run { change } => change.map(|c| c.share),
            Verdict::Reuse { .. } => None,
        })
        .collect();
    let skipped = verdicts
        .iter()
        .filter(|v| matches!(v, Verdict::Reuse { .. }))
        .count();
    let least = changes.iter().copied().fold(f64::INFINITY, f64::min);
    assert_eq!(skipped, 0, "busy frames skipped; least change {least}");

    // A still view of the plaza's first frame for 20 s, the light drifting by 10 levels.
    let base = &sequence[0];
    let quiet: Vec<RgbImage> = (0..100).map(|i| still(base, i, i as i32 / 10)).collect();
    let verdicts = gate_run(&quiet, &config);
    let runs: Vec<usize> = verdicts
        .iter()
        .enumerate()
        .filter(|(_, v)| matches!(v, Verdict::Run { .. }))
        .map(|(i, _)| i)
        .collect();
    // The first frame, then one each refresh_s (2 s = 10 frames), nothing else.
    assert_eq!(
        runs,
        (0..100).step_by(10).collect::<Vec<_>>(),
        "{verdicts:?}"
    );

    // A person crossing: the 48×96 block where a later frame differs most from the first
    // (someone who walked in), pasted at frame 25 of the still view and moved on each frame.
    let later = &sequence[60];
    let (bx, by) = most_changed_block(base, later, 48, 96);
    let mut crossing = quiet.clone();
    for (k, frame) in crossing.iter_mut().enumerate().skip(25).take(10) {
        let dx = (k as u32 - 25) * 6;
        for y in 0..96 {
            for x in 0..48 {
                let to = (bx + x + dx).min(frame.width() - 1);
                frame.put_pixel(to, by + y, *later.get_pixel(bx + x, by + y));
            }
        }
    }
    let verdicts = gate_run(&crossing, &config);
    // The model runs when the person appears and when they are gone; in between each frame
    // either runs it or reuses detections of a frame with the person in it.
    assert!(
        matches!(verdicts[25], Verdict::Run { .. }),
        "{:?}",
        verdicts[25]
    );
    assert!(
        matches!(verdicts[35], Verdict::Run { .. }),
        "{:?}",
        verdicts[35]
    );
    for (k, v) in verdicts.iter().enumerate().skip(26).take(9) {
        if let Verdict::Reuse { from, .. } = v {
            let from: usize = from.trim_start_matches('f').parse().unwrap();
            assert!((25..k).contains(&from), "frame {k} reuses frame {from}");
        }
    }
    let person_runs = verdicts[25..35]
        .iter()
        .filter(|v| matches!(v, Verdict::Run { .. }))
        .count();
    common::report(
        "motion_gating",
        serde_json::json!({
            "sequence_frames_at_5fps": sequence.len(),
            "sequence_least_change": least,
            "still_view_frames": quiet.len(),
            "still_view_model_runs": runs.len(),
            "model_runs_while_a_person_crosses_10_frames": person_runs,
            "pixel_delta": config.pixel_delta,
            "min_change": config.min_change,
            "min_window_change": config.min_window_change,
        }),
    );
}

/// The top-left corner of the `w`×`h` block (on a grid of its size) where `b` differs most
/// from `a`.
fn most_changed_block(a: &RgbImage, b: &RgbImage, w: u32, h: u32) -> (u32, u32) {
    let mut best = (0, (0, 0));
    for by in (0..a.height() - h).step_by(h as usize / 2) {
        for bx in (0..a.width() - w).step_by(w as usize / 2) {
            let d: u32 = (0..h)
                .flat_map(|y| (0..w).map(move |x| (bx + x, by + y)))
                .map(|(x, y)| {
                    let (p, q) = (a.get_pixel(x, y).0, b.get_pixel(x, y).0);
                    (0..3).map(|c| p[c].abs_diff(q[c]) as u32).sum::<u32>()
                })
                .sum();
            if d > best.0 {
                best = (d, (bx, by));
            }
        }
    }
    best.1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_skips_the_model_on_a_still_camera_and_says_so() {
    let nats = common::NatsServer::start();
    let mut config = common::config(&nats, &common::unique_db("motion"));
    config.archive.enabled = false;
    config.situations.enabled = false;
    let (shutdown, running) = common::serve(&config).await;
    let client = nats.client().await;
    let js = async_nats::jetstream::new(client.clone());
    let mut events = client.subscribe("vigil.events.*.demo.still").await.unwrap();
    client.flush().await.unwrap();

    // Six frames of one still view, 200 ms apart in capture time: re-encoded with noise.
    let base = decoded(&common::image("bus.jpg"));
    let start = Utc::now() - chrono::Duration::seconds(10);
    for i in 0..6 {
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 85)
            .encode_image(&still(&base, i, 0))
            .unwrap();
        let mut frame = common::frame(&format!("s{i}"), jpeg);
        frame.captured_at = start + chrono::Duration::milliseconds(200 * i64::from(i));
        js.publish(
            "vigil.frames.demo.still",
            common::encode(&frame, vigil::contract::Encoding::Msgpack),
        )
        .await
        .unwrap()
        .await
        .unwrap();
        // One at a time, so the gate has the previous frame's verdict.
        let message = tokio::time::timeout(Duration::from_secs(60), events.next())
            .await
            .unwrap()
            .unwrap();
        let json = common::body_json(message.headers.as_ref(), &message.payload);
        common::assert_valid("event.schema.json", &json);
        let event: RiskEvent = serde_json::from_value(json).unwrap();
        let motion = event
            .motion
            .clone()
            .expect("a gated camera's event says how it went");
        if i == 0 {
            assert!(!motion.model_skipped);
            assert!(motion.change.is_none());
            assert!(event.timings_ms.infer > 0.0);
        } else {
            assert!(motion.model_skipped, "frame {i}: {motion:?}");
            assert_eq!(motion.detections_of.as_deref(), Some("demo.still.s0"));
            assert_eq!(event.timings_ms.infer, 0.0);
            assert!(event.objects.iter().any(|o| o.label == "person"));
        }
    }
    shutdown.cancel();
    running.await.unwrap();
}
