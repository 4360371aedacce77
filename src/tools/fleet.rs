//! loadgen's fleet mode: quiet cameras beside busy ones. A quiet camera shows a still view (the
//! first frame of the folder) with sensor noise, JPEG re-encoding and a slow lighting drift, and
//! for 4 s in every 30 s a person crossing it — a real person, cut from a later frame of the folder where
//! vigil's own analyze service finds one. Its frames are rendered once (a 30 s loop at 5 frames
//! a second, the crossing near its end) and analysed once through `vigil.analyze`
//! (which is never gated): the reference each gated event is scored against.

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
    /// Renders the loop from `images` (the still view is the first; the person comes from
    /// the first later image where the model finds one at least 60 px tall) and analyses it.
    pub async fn build(
        client: &async_nats::Client,
        images: &[Bytes],
    ) -> Result<QuietScene, ToolError> {
        let first = images
            .first()
            .ok_or_else(|| ToolError::NoFrames("(fleet)".into()))?;
        let base = decode(first)?;
        let mut cut = None;
        for (i, image) in images.iter().enumerate().skip(40).step_by(10) {
            let event = analyse(client, image.clone(), &format!("person-{i}")).await?;
            let person = event
                .objects
                .iter()
                .filter(|o| o.label == "person" && !o.low_score && o.bbox.y2 - o.bbox.y1 >= 60.0)
                .max_by(|a, b| a.confidence.total_cmp(&b.confidence));
            if let Some(p) = person {
                let source = decode(image)?;
                let (x, y) = (p.bbox.x1.max(0.0) as u32, p.bbox.y1.max(0.0) as u32);
                let w = (p.bbox.x2 as u32)
                    .min(source.width())
                    .saturating_sub(x)
                    .max(1);
                let h = (p.bbox.y2 as u32)
                    .min(source.height())
                    .saturating_sub(y)
                    .max(1);
                cut = Some((image::imageops::crop_imm(&source, x, y, w, h).to_image(), y));
                break;
            }
            if i > 200 {
                break;
            }
        }
        if cut.is_none() {
            eprintln!("fleet: the model found no person at least 60 px tall in the folder's frames; the quiet cameras will have no crossing");
        }
        let mut frames = Vec::with_capacity(LOOP);
        let mut person = Vec::with_capacity(LOOP);
        for k in 0..LOOP {
            let light =
                (8.0 * (k as f64 / LOOP as f64 * std::f64::consts::TAU).sin()).round() as i32;
            let mut frame = RgbImage::from_fn(base.width(), base.height(), |x, y| {
                let n = ((x.wrapping_mul(2_654_435_761)
                    ^ y.wrapping_mul(40_503)
                    ^ (k as u32).wrapping_mul(97))
                    % 9) as i32
                    - 4;
                Rgb(base
                    .get_pixel(x, y)
                    .0
                    .map(|c| (i32::from(c) + n + light).clamp(0, 255) as u8))
            });
            let mut at = None;
            if let (Some((patch, y)), true) = (&cut, CROSSING.contains(&k)) {
                let span = base.width().saturating_sub(patch.width()).max(1);
                let step = (k - CROSSING.start) as u32 * span / (CROSSING.len() as u32 - 1);
                image::imageops::overlay(&mut frame, patch, i64::from(step), i64::from(*y));
                at = Some(BBox {
                    x1: step as f32,
                    y1: *y as f32,
                    x2: (step + patch.width()) as f32,
                    y2: (*y + patch.height()) as f32,
                });
            }
            frames.push(jpeg(&frame)?);
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
}
