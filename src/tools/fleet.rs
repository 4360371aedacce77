//! loadgen's fleet mode: quiet cameras beside busy ones. A quiet camera shows a still view (the
//! first frame of the folder) with sensor noise, JPEG re-encoding and a slow lighting drift, and
//! for 4 s in every 30 s a person crossing it: a real person walking through 20 consecutive
//! frames of the folder, whom vigil's own analyze service follows from frame to frame, apart
//! from everyone else. Only the person's own pixels are copied into the still view, where
//! they were: those that differ from the scene without people (the per-pixel median of frames
//! spread over the folder). Copying the person's whole box would also copy the ground around
//! them, a rectangle that changes more of the view than the person does, and that the model
//! may not take for a person. Its frames are rendered once (a 30 s loop at 5 frames a second,
//! the crossing near its end) and analysed once through `vigil.analyze` (which is never
//! gated): the reference each gated event is scored against.

use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use image::{Rgb, RgbImage};

use super::{nats_err, ToolError};
use crate::contract::{subjects, BBox, Encoding, Frame, RiskEvent};

/// Frames in a quiet camera's loop (30 s at 5 frames/s).
pub const LOOP: usize = 150;
/// The crossing: these frames of the loop (4 s at 5 frames/s).
const CROSSING: std::ops::Range<usize> = 100..120;
/// Frames of the folder whose per-pixel median is the scene without the people walking in it.
const BACKGROUND_FRAMES: usize = 15;
/// Pixels around a person's box that are still searched for the person, and that must be free
/// of anyone else's box.
const MARGIN: f32 = 6.0;
/// Summed over R, G and B: how far a pixel must be from the empty scene to be the person's.
const PERSON_DELTA: u32 = 60;

/// One quiet camera's loop of frames, with where the pasted person is and what the model
/// finds in each frame when it runs.
pub struct QuietScene {
    pub frames: Vec<Bytes>,
    /// Where the crossing person is in frame k (image pixels), for frames of the crossing.
    pub person: Vec<Option<BBox>>,
    /// Boxes (label, box) the model finds in frame k, ungated.
    pub reference: Vec<Vec<(String, BBox)>>,
}

/// How gated events agreed with the model's reference, and how long the crossing person went
/// unseen at most.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Agreement {
    pub events: u64,
    pub true_positives: u64,
    pub false_positives: u64,
    pub false_negatives: u64,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    /// Frames of a crossing in which the reference sees the person.
    pub crossing_frames: u64,
    /// … and in which the event did not (stale boxes from a skipped model run).
    pub crossing_frames_unseen: u64,
    /// The longest run of consecutive crossing frames without the person, in seconds of
    /// capture time.
    pub longest_unseen_s: f64,
}

pub fn iou(a: &BBox, b: &BBox) -> f32 {
    let w = (a.x2.min(b.x2) - a.x1.max(b.x1)).max(0.0);
    let h = (a.y2.min(b.y2) - a.y1.max(b.y1)).max(0.0);
    let inter = w * h;
    let union = (a.x2 - a.x1) * (a.y2 - a.y1) + (b.x2 - b.x1) * (b.y2 - b.y1) - inter;
    if union <= 0.0 {
        0.0
    } else {
        inter / union
    }
}

/// Greedy matching at IoU ≥ 0.5, same label: (true positives, false positives, false
/// negatives) of `found` against `reference`.
pub fn matches(found: &[(String, BBox)], reference: &[(String, BBox)]) -> (u64, u64, u64) {
    let mut used = vec![false; reference.len()];
    let mut tp = 0;
    for (label, b) in found {
        let best = reference
            .iter()
            .enumerate()
            .filter(|(i, (l, _))| !used[*i] && l == label)
            .map(|(i, (_, r))| (i, iou(b, r)))
            .filter(|(_, v)| *v >= 0.5)
            .max_by(|x, y| x.1.total_cmp(&y.1));
        if let Some((i, _)) = best {
            used[i] = true;
            tp += 1;
        }
    }
    let fp = found.len() as u64 - tp;
    let fn_ = reference.len() as u64 - tp;
    (tp, fp, fn_)
}

pub fn boxes(event: &RiskEvent) -> Vec<(String, BBox)> {
    event
        .objects
        .iter()
        .filter(|o| !o.low_score)
        .map(|o| (o.label.clone(), o.bbox))
        .collect()
}

/// Asks `vigil.analyze` about one image.
async fn analyse(
    client: &async_nats::Client,
    image: Bytes,
    id: &str,
) -> Result<RiskEvent, ToolError> {
    let frame = Frame {
        frame_id: id.to_string(),
        captured_at: Utc::now(),
        image,
        site: Some("loadgen".into()),
        camera_id: Some("reference".into()),
        pose: None,
        meta: Default::default(),
    };
    let body = Encoding::Msgpack.encode(&frame)?;
    let request = async_nats::Request::new()
        .payload(Bytes::from(body))
        .timeout(Some(Duration::from_secs(60)));
    let reply = client
        .send_request(subjects::ANALYZE, request)
        .await
        .map_err(nats_err)?;
    Ok(Encoding::of(reply.headers.as_ref()).decode(&reply.payload)?)
}

fn decode(bytes: &[u8]) -> Result<RgbImage, ToolError> {
    crate::vision::decode(bytes, &Default::default()).map_err(ToolError::AnnotateDecode)
}

fn jpeg(image: &RgbImage) -> Result<Bytes, ToolError> {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 85)
        .encode_image(image)
        .map_err(ToolError::AnnotateWrite)?;
    Ok(Bytes::from(out))
}

impl QuietScene {
    /// Renders the loop from `images` (the still view is the first; the crossing is the first
    /// person the model follows through one of the 20-frame stretches that start at frames 40,
    /// 60, … 200) and analyses it.
    pub async fn build(
        client: &async_nats::Client,
        images: &[Bytes],
    ) -> Result<QuietScene, ToolError> {
        let first = images
            .first()
            .ok_or_else(|| ToolError::NoFrames("(fleet)".into()))?;
        let base = decode(first)?;
        let crossing = find_crossing(client, images).await?;
        if crossing.is_none() {
            eprintln!("fleet: the model follows no person at least 60 px tall and apart from others through 20 frames of the folder; the quiet cameras will have no crossing");
        }
        let background = match &crossing {
            Some(_) => Some(median_background(images, &base)?),
            None => None,
        };
        let mut frames = Vec::with_capacity(LOOP);
        let mut person = Vec::with_capacity(LOOP);
        for k in 0..LOOP {
            let mut view = base.clone();
            let mut at = None;
            if let (Some(track), Some(background)) = (&crossing, &background) {
                if let Some((source, b)) = k
                    .checked_sub(CROSSING.start)
                    .and_then(|i| track.get(i))
                    .filter(|_| CROSSING.contains(&k))
                {
                    paste_person(&mut view, source, background, b);
                    at = Some(*b);
                }
            }
            frames.push(jpeg(&still(&view, k))?);
            person.push(at);
        }
        let mut reference = Vec::with_capacity(LOOP);
        for (k, frame) in frames.iter().enumerate() {
            reference.push(boxes(
                &analyse(client, frame.clone(), &format!("quiet-{k}")).await?,
            ));
        }
        Ok(QuietScene {
            frames,
            person,
            reference,
        })
    }

    /// Whether the crossing person of frame `k` is found among `found` (IoU ≥ 0.3), or None
    /// when frame k has no crossing person the reference itself sees.
    pub fn person_seen(&self, k: usize, found: &[(String, BBox)]) -> Option<bool> {
        let at = self.person.get(k).copied().flatten()?;
        let near = |b: &BBox| iou(b, &at) >= 0.3;
        let visible = self.reference[k]
            .iter()
            .any(|(l, b)| l == "person" && near(b));
        visible.then(|| found.iter().any(|(l, b)| l == "person" && near(b)))
    }
}

/// A quiet camera's event: the camera, its frame number, the frame's place in the loop, and
/// the boxes the event reports.
pub type QuietEvent = (usize, usize, usize, Vec<(String, BBox)>);

/// Scores quiet cameras' events, in any order.
pub fn agreement(scene: &QuietScene, seen: &[QuietEvent], fps: f64) -> Agreement {
    let mut a = Agreement::default();
    let mut by_camera: std::collections::BTreeMap<usize, Vec<(usize, Option<bool>)>> =
        Default::default();
    for (camera, n, k, found) in seen {
        let (tp, fp, fn_) = matches(found, &scene.reference[*k]);
        a.events += 1;
        a.true_positives += tp;
        a.false_positives += fp;
        a.false_negatives += fn_;
        by_camera
            .entry(*camera)
            .or_default()
            .push((*n, scene.person_seen(*k, found)));
    }
    let mut longest = 0usize;
    for frames in by_camera.values_mut() {
        frames.sort_by_key(|f| f.0);
        let mut run = 0usize;
        for (_, seen) in frames.iter() {
            match seen {
                Some(true) => {
                    a.crossing_frames += 1;
                    run = 0;
                }
                Some(false) => {
                    a.crossing_frames += 1;
                    a.crossing_frames_unseen += 1;
                    run += 1;
                    longest = longest.max(run);
                }
                None => run = 0,
            }
        }
    }
    let tp = a.true_positives as f64;
    a.precision = tp / (tp + a.false_positives as f64).max(1.0);
    a.recall = tp / (tp + a.false_negatives as f64).max(1.0);
    a.f1 = if a.precision + a.recall > 0.0 {
        2.0 * a.precision * a.recall / (a.precision + a.recall)
    } else {
        0.0
    };
    a.longest_unseen_s = longest as f64 / fps.max(1e-9);
    a
}

/// Frame `k` of the loop as the camera sends it: `view` with sensor noise (±4 levels, a new
/// pattern each frame) and a lighting drift (±8 levels over the loop).
fn still(view: &RgbImage, k: usize) -> RgbImage {
    let light = (8.0 * (k as f64 / LOOP as f64 * std::f64::consts::TAU).sin()).round() as i32;
    RgbImage::from_fn(view.width(), view.height(), |x, y| {
        let n =
            ((x.wrapping_mul(2_654_435_761) ^ y.wrapping_mul(40_503) ^ (k as u32).wrapping_mul(97))
                % 9) as i32
                - 4;
        Rgb(view
            .get_pixel(x, y)
            .0
            .map(|c| (i32::from(c) + n + light).clamp(0, 255) as u8))
    })
}

/// A person the model follows through `CROSSING.len()` consecutive frames of `images` from
/// frame 40 on: at least 60 px tall in the first, the same person (IoU ≥ 0.3 with the box
/// before) in each next one, and no one else within [`MARGIN`] of the box in any. Each frame
/// decoded, with the person's box.
async fn find_crossing(
    client: &async_nats::Client,
    images: &[Bytes],
) -> Result<Option<Vec<(RgbImage, BBox)>>, ToolError> {
    let len = CROSSING.len();
    let mut start = 40;
    while start + len <= images.len() && start <= 200 {
        let mut found = Vec::with_capacity(len);
        for (i, image) in images.iter().enumerate().skip(start).take(len) {
            found.push(boxes(
                &analyse(client, image.clone(), &format!("person-{i}")).await?,
            ));
        }
        let first = found[0]
            .iter()
            .filter(|(l, b)| l == "person" && b.y2 - b.y1 >= 60.0 && apart(b, &found[0]));
        for (_, b) in first {
            let mut track = vec![*b];
            for others in &found[1..] {
                let Some(last) = track.last().copied() else {
                    break;
                };
                let next = others
                    .iter()
                    .filter(|(l, c)| l == "person" && iou(c, &last) >= 0.3)
                    .max_by(|(_, c), (_, d)| iou(c, &last).total_cmp(&iou(d, &last)))
                    .map(|(_, c)| *c)
                    .filter(|c| apart(c, others));
                match next {
                    Some(c) => track.push(c),
                    None => break,
                }
            }
            if track.len() == len {
                let frames = images[start..start + len]
                    .iter()
                    .map(|image| decode(image))
                    .collect::<Result<Vec<_>, _>>()?;
                return Ok(Some(frames.into_iter().zip(track).collect()));
            }
        }
        start += len;
    }
    Ok(None)
}

/// Whether no box of `all` other than `b` itself comes within [`MARGIN`] of `b`.
fn apart(b: &BBox, all: &[(String, BBox)]) -> bool {
    let grown = grow(b, MARGIN);
    all.iter()
        .filter(|(_, c)| c != b)
        .all(|(_, c)| iou(&grown, c) == 0.0)
}

fn grow(b: &BBox, by: f32) -> BBox {
    BBox {
        x1: b.x1 - by,
        y1: b.y1 - by,
        x2: b.x2 + by,
        y2: b.y2 + by,
    }
}

/// The per-pixel median of [`BACKGROUND_FRAMES`] frames spread over `images`: the scene with
/// the people who walk through it gone. Frames of another size than `base` are passed over.
pub fn median_background(images: &[Bytes], base: &RgbImage) -> Result<RgbImage, ToolError> {
    let step = (images.len() / BACKGROUND_FRAMES).max(1);
    let mut frames = Vec::with_capacity(BACKGROUND_FRAMES);
    for image in images.iter().step_by(step).take(BACKGROUND_FRAMES) {
        let frame = decode(image)?;
        if frame.dimensions() == base.dimensions() {
            frames.push(frame.into_raw());
        }
    }
    if frames.is_empty() {
        return Ok(base.clone());
    }
    let mut values = vec![0u8; frames.len()];
    let mut median = vec![0u8; frames[0].len()];
    for (i, out) in median.iter_mut().enumerate() {
        for (v, frame) in values.iter_mut().zip(&frames) {
            *v = frame[i];
        }
        let middle = values.len() / 2;
        *out = *values.select_nth_unstable(middle).1;
    }
    Ok(RgbImage::from_raw(base.width(), base.height(), median).unwrap_or_else(|| base.clone()))
}

/// Copies the person in box `at` of `source` into `view` where they stand: the pixels of the
/// box (and [`MARGIN`] around it) that differ from `background` by more than [`PERSON_DELTA`],
/// grown by one pixel so that their outline comes along.
pub fn paste_person(view: &mut RgbImage, source: &RgbImage, background: &RgbImage, at: &BBox) {
    let (w, h) = source.dimensions();
    if view.dimensions() != (w, h) || background.dimensions() != (w, h) {
        return;
    }
    let area = grow(at, MARGIN);
    let clip = |v: f32, max: u32| (v.max(0.0) as u32).min(max);
    let (x0, y0, x1, y1) = (
        clip(area.x1, w),
        clip(area.y1, h),
        clip(area.x2, w),
        clip(area.y2, h),
    );
    let differs = |x: u32, y: u32| {
        let (p, q) = (source.get_pixel(x, y).0, background.get_pixel(x, y).0);
        (0..3).map(|c| u32::from(p[c].abs_diff(q[c]))).sum::<u32>() > PERSON_DELTA
    };
    let mask: Vec<bool> = (y0..y1)
        .flat_map(|y| (x0..x1).map(move |x| (x, y)))
        .map(|(x, y)| differs(x, y))
        .collect();
    let bw = (x1 - x0) as usize;
    let near = |x: usize, y: usize| {
        (y.saturating_sub(1)..=y + 1)
            .flat_map(|v| (x.saturating_sub(1)..=x + 1).map(move |u| (u, v)))
            .any(|(u, v)| u < bw && mask.get(v * bw + u).copied().unwrap_or(false))
    };
    for y in y0..y1 {
        for x in x0..x1 {
            if near((x - x0) as usize, (y - y0) as usize) {
                view.put_pixel(x, y, *source.get_pixel(x, y));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(x1: f32, y1: f32, x2: f32, y2: f32) -> BBox {
        BBox { x1, y1, x2, y2 }
    }

    #[test]
    fn matching_counts_each_reference_box_once() {
        let reference = vec![
            ("person".to_string(), b(0., 0., 10., 20.)),
            ("car".to_string(), b(50., 50., 90., 80.)),
        ];
        let found = vec![
            ("person".to_string(), b(1., 1., 10., 20.)),
            ("person".to_string(), b(0., 0., 10., 20.)),
            ("car".to_string(), b(200., 50., 240., 80.)),
        ];
        assert_eq!(matches(&found, &reference), (1, 2, 1));
        assert_eq!(matches(&reference, &reference), (2, 0, 0));
        assert!((iou(&b(0., 0., 10., 10.), &b(5., 0., 15., 10.)) - 1.0 / 3.0).abs() < 1e-6);
    }

    fn png(image: &RgbImage) -> Bytes {
        let mut out = std::io::Cursor::new(Vec::new());
        image.write_to(&mut out, image::ImageFormat::Png).unwrap();
        Bytes::from(out.into_inner())
    }

    /// A textured scene with a dark 10×30 figure at (fx, fy).
    fn scene_with_figure(at: Option<(u32, u32)>) -> RgbImage {
        RgbImage::from_fn(120, 80, |x, y| {
            let on =
                at.is_some_and(|(fx, fy)| (fx..fx + 10).contains(&x) && (fy..fy + 30).contains(&y));
            if on {
                Rgb([20, 20, 30])
            } else {
                Rgb([100 + (x % 7) as u8 * 10, 150, 90 + (y % 5) as u8 * 8])
            }
        })
    }

    #[test]
    fn the_median_of_frames_is_the_scene_without_the_people_walking_through_it() {
        let empty = scene_with_figure(None);
        let frames: Vec<Bytes> = (0..15)
            .map(|i| png(&scene_with_figure(Some((i * 7, 20)))))
            .collect();
        assert_eq!(median_background(&frames, &empty).unwrap(), empty);
    }

    #[test]
    fn only_the_persons_own_pixels_are_pasted() {
        let empty = scene_with_figure(None);
        let source = scene_with_figure(Some((50, 30)));
        // Another view: the same scene, brighter.
        let mut view = RgbImage::from_fn(120, 80, |x, y| {
            Rgb(empty.get_pixel(x, y).0.map(|c| c.saturating_add(20)))
        });
        let before = view.clone();
        paste_person(&mut view, &source, &empty, &b(48., 28., 62., 62.));
        for (x, y, p) in view.enumerate_pixels() {
            let figure = (50..60).contains(&x) && (30..60).contains(&y);
            // The figure and a one-pixel outline come from the source; nothing else changes.
            let outline = (49..61).contains(&x) && (29..61).contains(&y);
            if figure {
                assert_eq!(p, source.get_pixel(x, y), "({x}, {y})");
            } else if !outline {
                assert_eq!(p, before.get_pixel(x, y), "({x}, {y})");
            }
        }
    }
}
