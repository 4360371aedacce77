//! Motion gating: a camera whose view has not changed since its last analysed frame does not
//! need the model again. Each frame of a gated camera is reduced to a 160×120 grey thumbnail
//! (a box average, which also averages away most sensor noise); its pixels that moved by more
//! than `pixel_delta` grey levels against the last *analysed* frame's thumbnail, after the mean
//! shift between the two is taken out (slow lighting drift), are the change. It is measured
//! twice: as a share of the whole thumbnail, and as the share of the most-changed
//! [`WINDOW`]×[`WINDOW`] window in it. The second is what sees a small, far person: one 20×50
//! pixels in a 768×576 view is 0.2 % of the frame, under any whole-frame threshold that sensor
//! noise and compression stay below, yet a third of the window it stands in. Below both
//! `min_change` and `min_window_change` the model is skipped and the last detections are reused,
//! and the event says so (`motion`). The model runs anyway every `refresh_s` of capture time, for a frame captured
//! before the last analysed one, for a new image size, and for a camera this processor has not
//! seen: the state is a cache, never needed for correctness.
//!
//! Frames with a pose (drones: the view moves with the aircraft) are never gated, nor cameras
//! with `motion = false` in `[[cameras]]`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use image::RgbImage;
use serde::{Deserialize, Serialize};

use crate::config::Invalid;
use crate::contract::ImageSize;
use crate::detect::Detection;

pub const THUMB_WIDTH: usize = 160;
pub const THUMB_HEIGHT: usize = 120;
/// Side (thumbnail pixels) of the square window the local change is measured in: 38×38 pixels
/// of a 768×576 frame, 96×72 of a 1080p one (the thumbnail is 160×120 whatever the aspect).
pub const WINDOW: usize = 8;
/// Cameras whose last analysed frame a processor remembers at most (≈ 20 KB each); beyond, the
/// one analysed longest ago is forgotten (its next frame runs the model).
const MAX_CAMERAS: usize = 2048;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MotionConfig {
    /// Gate static cameras (those without `motion = false`; frames with a pose never are).
    pub enabled: bool,
    /// The share of the thumbnail (0–1) that must change for the model to run.
    pub min_change: f64,
    /// … or the share (0–1) of the most-changed 8×8-pixel window of the thumbnail (1: only a
    /// window changed in every pixel runs it).
    pub min_window_change: f64,
    /// Grey levels (0–255) a thumbnail pixel must move by to count as changed.
    pub pixel_delta: u8,
    /// The model runs on a gated camera at least this often (seconds of capture time).
    pub refresh_s: f64,
}

impl Default for MotionConfig {
    fn default() -> Self {
        MotionConfig {
            enabled: true,
            min_change: 0.005,
            min_window_change: 0.1,
            pixel_delta: 12,
            refresh_s: 2.0,
        }
    }
}

impl MotionConfig {
    pub fn validate(&self) -> Result<(), Invalid> {
        for (key, share) in [
            ("min_change", self.min_change),
            ("min_window_change", self.min_window_change),
        ] {
            if !(0.0..=1.0).contains(&share) {
                return Err(Invalid::new(key, "must be 0–1 (a share of pixels)"));
            }
        }
        if !(self.refresh_s.is_finite() && self.refresh_s > 0.0 && self.refresh_s <= 3600.0) {
            return Err(Invalid::new(
                "refresh_s",
                "must be above 0 and at most 3600",
            ));
        }
        Ok(())
    }
}

/// A frame reduced to a small grey image.
#[derive(Debug, Clone, PartialEq)]
pub struct Thumbnail {
    pixels: Vec<u8>,
}

impl Thumbnail {
    /// The box average of the image's luma over a 160×120 grid (any image size and aspect).
    pub fn of(image: &RgbImage) -> Thumbnail {
        Thumbnail::of_rgb(image.as_raw(), image.width(), image.height())
    }

    /// The same from packed RGB rows. The pipeline passes the letterbox's scaled copy of the
    /// frame (at most the model's input size) rather than the frame: a 1080p frame then costs
    /// a fifth of the pixels, and a box average of the scaled copy is the same picture.
    pub fn of_rgb(rgb: &[u8], width: u32, height: u32) -> Thumbnail {
        let (w, h) = (width as usize, height as usize);
        if w == 0 || h == 0 || rgb.len() < w * h * 3 {
            return Thumbnail {
                pixels: vec![0; THUMB_WIDTH * THUMB_HEIGHT],
            };
        }
        let columns: Vec<usize> = (0..w).map(|x| x * THUMB_WIDTH / w).collect();
        let mut per_column = [0u32; THUMB_WIDTH];
        for c in &columns {
            per_column[*c] += 1;
        }
        let mut per_row = [0u32; THUMB_HEIGHT];
        let mut sums = vec![0u32; THUMB_WIDTH * THUMB_HEIGHT];
        for (y, line) in rgb.chunks_exact(w * 3).take(h).enumerate() {
            let row = y * THUMB_HEIGHT / h;
            per_row[row] += 1;
            let bins = &mut sums[row * THUMB_WIDTH..(row + 1) * THUMB_WIDTH];
            for (px, column) in line.chunks_exact(3).zip(&columns) {
                // BT.601 luma in fixed point.
                bins[*column] +=
                    (77 * u32::from(px[0]) + 150 * u32::from(px[1]) + 29 * u32::from(px[2])) >> 8;
            }
        }
        let pixels = sums
            .iter()
            .enumerate()
            .map(|(i, s)| {
                // A frame smaller than the thumbnail leaves some bins empty: black.
                let n = per_row[i / THUMB_WIDTH] * per_column[i % THUMB_WIDTH];
                s.checked_div(n).unwrap_or(0) as u8
            })
            .collect();
        Thumbnail { pixels }
    }

    /// The pixels that differ from `other` by more than `delta` grey levels once the mean
    /// difference (a global lighting change) is taken out: their share of the thumbnail, and
    /// their share of the [`WINDOW`]×[`WINDOW`] window that holds most of them.
    pub fn change(&self, other: &Thumbnail, delta: u8) -> Change {
        const SIZE: usize = THUMB_WIDTH * THUMB_HEIGHT;
        if self.pixels.len() != SIZE || other.pixels.len() != SIZE {
            return Change {
                share: 1.0,
                window: 1.0,
            };
        }
        let diff = |i: usize| i32::from(self.pixels[i]) - i32::from(other.pixels[i]);
        let mean = (0..SIZE).map(|i| i64::from(diff(i))).sum::<i64>() as f64 / SIZE as f64;
        let shift = mean.round() as i32;
        // A summed-area table of the changed pixels: any window's count in four reads.
        let stride = THUMB_WIDTH + 1;
        let mut table = vec![0u32; stride * (THUMB_HEIGHT + 1)];
        for y in 0..THUMB_HEIGHT {
            let mut row = 0;
            for x in 0..THUMB_WIDTH {
                row += u32::from((diff(y * THUMB_WIDTH + x) - shift).abs() > i32::from(delta));
                table[(y + 1) * stride + x + 1] = table[y * stride + x + 1] + row;
            }
        }
        let count = |x: usize, y: usize, side_x: usize, side_y: usize| {
            table[(y + side_y) * stride + x + side_x] + table[y * stride + x]
                - table[y * stride + x + side_x]
                - table[(y + side_y) * stride + x]
        };
        let mut most = 0;
        for y in 0..=THUMB_HEIGHT - WINDOW {
            for x in 0..=THUMB_WIDTH - WINDOW {
                most = most.max(count(x, y, WINDOW, WINDOW));
            }
        }
        Change {
            share: f64::from(count(0, 0, THUMB_WIDTH, THUMB_HEIGHT)) / SIZE as f64,
            window: f64::from(most) / (WINDOW * WINDOW) as f64,
        }
    }
}

/// How much a thumbnail changed against another (see [`Thumbnail::change`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Change {
    /// The share (0–1) of the thumbnail's pixels that changed.
    pub share: f64,
    /// The share (0–1) of the most-changed window's pixels that changed.
    pub window: f64,
}

/// What the gate says about a frame.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// Run the model; `change` is the measure when there was a frame to compare with.
    Run { change: Option<Change> },
    /// Skip it: the view changed by `change` only; reuse these detections, from this event.
    Reuse {
        change: Change,
        detections: Arc<Vec<Detection>>,
        from: String,
    },
}

struct Last {
    thumbnail: Arc<Thumbnail>,
    captured_at: DateTime<Utc>,
    size: ImageSize,
    detections: Arc<Vec<Detection>>,
    event_id: String,
}

/// Each gated camera's last analysed frame, in one processor.
pub struct Gate {
    config: MotionConfig,
    last: Mutex<HashMap<(String, String), Last>>,
}

impl Gate {
    pub fn new(config: &MotionConfig) -> Gate {
        Gate {
            config: config.clone(),
            last: Mutex::new(HashMap::new()),
        }
    }

    /// Judges a frame of `key` against the camera's last analysed one.
    pub fn judge(
        &self,
        key: &(String, String),
        thumbnail: &Thumbnail,
        captured_at: DateTime<Utc>,
        size: ImageSize,
    ) -> Verdict {
        let Ok(last) = self.last.lock() else {
            return Verdict::Run { change: None };
        };
        let Some(last) = last.get(key) else {
            return Verdict::Run { change: None };
        };
        if last.size != size {
            return Verdict::Run { change: None };
        }
        let change = thumbnail.change(&last.thumbnail, self.config.pixel_delta);
        let age = (captured_at - last.captured_at).as_seconds_f64();
        let fresh = age > 0.0 && age < self.config.refresh_s;
        let still =
            change.share < self.config.min_change && change.window < self.config.min_window_change;
        if fresh && still {
            Verdict::Reuse {
                change,
                detections: last.detections.clone(),
                from: last.event_id.clone(),
            }
        } else {
            Verdict::Run {
                change: Some(change),
            }
        }
    }

    /// Remembers an analysed frame (unless a later one of the camera is already remembered).
    pub fn analysed(
        &self,
        key: (String, String),
        thumbnail: Thumbnail,
        captured_at: DateTime<Utc>,
        size: ImageSize,
        detections: &[Detection],
        event_id: &str,
    ) {
        let Ok(mut last) = self.last.lock() else {
            return;
        };
        if last.get(&key).is_some_and(|l| l.captured_at >= captured_at) {
            return;
        }
        if last.len() >= MAX_CAMERAS && !last.contains_key(&key) {
            if let Some(oldest) = last
                .iter()
                .min_by_key(|(_, l)| l.captured_at)
                .map(|(k, _)| k.clone())
            {
                last.remove(&oldest);
            }
        }
        last.insert(
            key,
            Last {
                thumbnail: Arc::new(thumbnail),
                captured_at,
                size,
                detections: Arc::new(detections.to_vec()),
                event_id: event_id.to_string(),
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    fn scene(w: u32, h: u32, light: i32, seed: u32) -> RgbImage {
        // A textured still scene, with per-pixel sensor noise (±6 levels) and a lighting offset.
        RgbImage::from_fn(w, h, |x, y| {
            let base = ((x / 16 + y / 16) % 2) as i32 * 80 + 60 + ((x * 7 + y * 3) % 40) as i32;
            let noise =
                ((x.wrapping_mul(2654435761) ^ y.wrapping_mul(40503) ^ seed) % 13) as i32 - 6;
            let v = (base + noise + light).clamp(0, 255) as u8;
            Rgb([v, v, v])
        })
    }

    fn size(w: u32, h: u32) -> ImageSize {
        ImageSize {
            width: w,
            height: h,
        }
    }

    #[test]
    fn noise_and_a_lighting_drift_are_no_change_but_a_person_is() {
        let a = Thumbnail::of(&scene(768, 576, 0, 1));
        let b = Thumbnail::of(&scene(768, 576, 9, 2));
        let noise = a.change(&b, 12);
        assert!(noise.share < 0.001 && noise.window < 0.05, "{noise:?}");
        // A 30×80 pixel figure (a person at the far side of a plaza) in a 768×576 view.
        let mut with_person = scene(768, 576, 0, 3);
        for y in 300..380 {
            for x in 400..430 {
                with_person.put_pixel(x, y, Rgb([20, 20, 30]));
            }
        }
        let c = Thumbnail::of(&with_person);
        assert!(a.change(&c, 12).share > 0.005, "{:?}", a.change(&c, 12));
    }

    #[test]
    fn the_window_share_is_the_most_changed_8x8_window_counted_by_hand() {
        // Changed pixels scattered by a fixed rule, plus a block in the last window's corner.
        let base = Thumbnail {
            pixels: vec![100; THUMB_WIDTH * THUMB_HEIGHT],
        };
        let mut pixels = base.pixels.clone();
        for (i, p) in pixels.iter_mut().enumerate() {
            if (i * 7919) % 13 == 0 || (i % THUMB_WIDTH >= 154 && i / THUMB_WIDTH >= 113) {
                *p = 200;
            }
        }
        let changed = Thumbnail { pixels };
        let mut most = 0;
        for y in 0..=THUMB_HEIGHT - WINDOW {
            for x in 0..=THUMB_WIDTH - WINDOW {
                let n = (y..y + WINDOW)
                    .flat_map(|v| (x..x + WINDOW).map(move |u| v * THUMB_WIDTH + u))
                    .filter(|&i| changed.pixels[i] != 100)
                    .count();
                most = most.max(n);
            }
        }
        let total = changed.pixels.iter().filter(|&&p| p != 100).count();
        // The mean shift (8 levels) leaves the unchanged pixels within pixel_delta.
        let change = changed.change(&base, 12);
        assert_eq!(change.window, most as f64 / 64.0);
        assert_eq!(
            change.share,
            total as f64 / (THUMB_WIDTH * THUMB_HEIGHT) as f64
        );
        assert!(most >= 42, "the corner block: {most}");
    }

    #[test]
    fn a_small_far_person_changes_a_window_though_hardly_the_frame() {
        // 20×50 pixels in a 768×576 view: 0.23 % of it, under min_change.
        let config = MotionConfig::default();
        let a = Thumbnail::of(&scene(768, 576, 0, 1));
        let mut with_person = scene(768, 576, 4, 3);
        for y in 300..350 {
            for x in 401..421 {
                with_person.put_pixel(x, y, Rgb([20, 20, 30]));
            }
        }
        let change = a.change(&Thumbnail::of(&with_person), config.pixel_delta);
        assert!(change.share < config.min_change, "{change:?}");
        assert!(change.window > config.min_window_change, "{change:?}");
        let gate = Gate::new(&config);
        let key = ("s".to_string(), "c".to_string());
        let t0: DateTime<Utc> = "2026-11-26T12:00:00Z".parse().unwrap();
        gate.analysed(key.clone(), a, t0, size(768, 576), &[], "s.c.f0");
        let later = t0 + chrono::Duration::milliseconds(200);
        let verdict = gate.judge(&key, &Thumbnail::of(&with_person), later, size(768, 576));
        assert!(matches!(verdict, Verdict::Run { .. }), "{verdict:?}");
    }

    #[test]
    fn the_gate_reuses_within_the_refresh_and_runs_after_it() {
        let gate = Gate::new(&MotionConfig::default());
        let key = ("s".to_string(), "c".to_string());
        let t0: DateTime<Utc> = "2026-11-26T12:00:00Z".parse().unwrap();
        let still = Thumbnail::of(&scene(320, 240, 0, 1));
        let sz = size(320, 240);
        assert!(matches!(
            gate.judge(&key, &still, t0, sz),
            Verdict::Run { change: None }
        ));
        let found = vec![Detection {
            class_id: 0,
            score: 0.9,
            x1: 1.0,
            y1: 2.0,
            x2: 3.0,
            y2: 4.0,
        }];
        gate.analysed(key.clone(), still.clone(), t0, sz, &found, "s.c.f0");
        let later = |ms| t0 + chrono::Duration::milliseconds(ms);
        let next = Thumbnail::of(&scene(320, 240, 3, 2));
        match gate.judge(&key, &next, later(200), sz) {
            Verdict::Reuse {
                detections, from, ..
            } => {
                assert_eq!(*detections, found);
                assert_eq!(from, "s.c.f0");
            }
            other => panic!("{other:?}"),
        }
        // Past refresh_s, earlier than the last analysed one, or another size: the model runs.
        assert!(matches!(
            gate.judge(&key, &next, later(2000), sz),
            Verdict::Run { .. }
        ));
        assert!(matches!(
            gate.judge(&key, &next, later(-100), sz),
            Verdict::Run { .. }
        ));
        assert!(matches!(
            gate.judge(&key, &next, later(200), size(640, 480)),
            Verdict::Run { .. }
        ));
        // Another camera has no state.
        let other = ("s".to_string(), "d".to_string());
        assert!(matches!(
            gate.judge(&other, &next, later(200), sz),
            Verdict::Run { change: None }
        ));
    }
}
