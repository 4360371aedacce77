//! Decoding YOLOv8/11/12 output ([1, 4 + classes, anchors]) into detections: best class per
//! anchor, confidence threshold, class-wise greedy NMS. Also the model metadata formats
//! Ultralytics writes. Plain functions, mirrored on the reference pipeline.

use super::DetectError;

/// One detection in model-input pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Detection {
    pub class_id: u32,
    pub score: f32,
    pub x1: f32,
    pub y1: f32,
    pub x2: f32,
    pub y2: f32,
}

impl Detection {
    fn area(&self) -> f32 {
        (self.x2 - self.x1) * (self.y2 - self.y1)
    }

    /// Intersection over union, as the reference computes it.
    pub fn iou(&self, other: &Detection) -> f32 {
        let w = (self.x2.min(other.x2) - self.x1.max(other.x1)).max(0.0);
        let h = (self.y2.min(other.y2) - self.y1.max(other.y1)).max(0.0);
        let inter = w * h;
        inter / (self.area() + other.area() - inter).max(1e-9)
    }
}

/// Thresholds for turning raw output into detections.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DecodeParams {
    pub confidence: f32,
    pub iou: f32,
    pub max_detections: usize,
}

/// Decodes a YOLOv8-style output tensor: per anchor the best class, kept above the confidence
/// threshold, class-wise greedy NMS, best first. Accepts [1, 4 + C, N] and its transpose.
pub fn decode_output(
    shape: &[i64],
    data: &[f32],
    num_classes: usize,
    params: &DecodeParams,
) -> Result<Vec<Detection>, DetectError> {
    let channels = 4 + num_classes;
    let (anchors, channel_major) = match shape {
        [1, c, n] if *c as usize == channels => (*n as usize, true),
        [1, n, c] if *c as usize == channels => (*n as usize, false),
        _ => return Err(DetectError::OutputShape(shape.to_vec())),
    };
    if data.len() != anchors * channels {
        return Err(DetectError::OutputShape(shape.to_vec()));
    }
    if anchors == 0 {
        return Ok(Vec::new());
    }
    let at = |channel: usize, anchor: usize| {
        if channel_major {
            data[channel * anchors + anchor]
        } else {
            data[anchor * channels + channel]
        }
    };
    // Each anchor's best class (the first of equal scores). Channel-major output (the usual)
    // is read a class row at a time, contiguously, rather than 80 strided reads per anchor.
    let mut best = vec![(f32::NEG_INFINITY, 0u32); anchors];
    if channel_major {
        for (c, row) in (0u32..).zip(data[4 * anchors..].chunks_exact(anchors)) {
            for (b, &s) in best.iter_mut().zip(row) {
                if s > b.0 {
                    *b = (s, c);
                }
            }
        }
    } else {
        for (b, row) in best.iter_mut().zip(data.chunks_exact(channels)) {
            for (c, &s) in (0u32..).zip(&row[4..]) {
                if s > b.0 {
                    *b = (s, c);
                }
            }
        }
    }
    let mut candidates = Vec::new();
    for (a, &(score, class_id)) in best.iter().enumerate() {
        if score > params.confidence {
            let (cx, cy, w, h) = (at(0, a), at(1, a), at(2, a), at(3, a));
            candidates.push(Detection {
                class_id,
                score,
                x1: cx - w / 2.0,
                y1: cy - h / 2.0,
                x2: cx + w / 2.0,
                y2: cy + h / 2.0,
            });
        }
    }
    Ok(nms(candidates, params))
}

/// Class-wise greedy NMS; the survivors sorted by score (ties keep class, then anchor order).
pub fn nms(mut candidates: Vec<Detection>, params: &DecodeParams) -> Vec<Detection> {
    candidates.sort_by(|a, b| {
        a.class_id
            .cmp(&b.class_id)
            .then(b.score.total_cmp(&a.score))
    });
    let mut kept: Vec<Detection> = Vec::new();
    for class in candidates.chunk_by(|a, b| a.class_id == b.class_id) {
        let first_of_class = kept.len();
        for det in class {
            if kept[first_of_class..]
                .iter()
                .all(|k| k.iou(det) <= params.iou)
            {
                kept.push(*det);
            }
        }
    }
    kept.sort_by(|a, b| b.score.total_cmp(&a.score));
    kept.truncate(params.max_detections);
    kept
}

/// Reads the `names` metadata of an Ultralytics export: a Python dict literal such as
/// `{0: 'person', 1: 'bicycle'}`.
pub fn parse_class_names(text: &str) -> Option<Vec<String>> {
    let body = text.trim().strip_prefix('{')?.strip_suffix('}')?;
    let mut names: Vec<(usize, String)> = Vec::new();
    let mut rest = body.trim_start();
    while !rest.is_empty() {
        let (key, after) = rest.split_once(':')?;
        let id: usize = key.trim().parse().ok()?;
        let after = after.trim_start();
        let quote = after.chars().next().filter(|q| *q == '\'' || *q == '"')?;
        let value = &after[1..];
        let end = value.find(quote)?;
        names.push((id, value[..end].to_string()));
        rest = value[end + 1..]
            .trim_start()
            .trim_start_matches(',')
            .trim_start();
    }
    names.sort_by_key(|(id, _)| *id);
    names
        .iter()
        .enumerate()
        .all(|(i, (id, _))| i == *id)
        .then(|| names.into_iter().map(|(_, n)| n).collect())
}

/// `imgsz` metadata: "[640, 640]" (height, width).
pub(super) fn parse_imgsz(text: Option<&str>) -> Option<(u32, u32)> {
    let inner = text?.trim().strip_prefix('[')?.strip_suffix(']')?;
    let mut it = inner.split(',').map(|s| s.trim().parse::<u32>().ok());
    Some((it.next()??, it.next()??))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARAMS: DecodeParams = DecodeParams {
        confidence: 0.25,
        iou: 0.45,
        max_detections: 300,
    };

    fn det(class_id: u32, score: f32, x1: f32, y1: f32, x2: f32, y2: f32) -> Detection {
        Detection {
            class_id,
            score,
            x1,
            y1,
            x2,
            y2,
        }
    }

    /// A [1, 4 + classes, anchors] tensor from (cx, cy, w, h, class, score) rows.
    fn tensor(classes: usize, rows: &[(f32, f32, f32, f32, usize, f32)]) -> (Vec<i64>, Vec<f32>) {
        let n = rows.len();
        let mut data = vec![0.0; (4 + classes) * n];
        for (a, &(cx, cy, w, h, c, s)) in rows.iter().enumerate() {
            for (ch, v) in [cx, cy, w, h].into_iter().enumerate() {
                data[ch * n + a] = v;
            }
            data[(4 + c) * n + a] = s;
        }
        (vec![1, (4 + classes) as i64, n as i64], data)
    }

    #[test]
    fn decodes_boxes_classes_and_threshold() {
        let (shape, data) = tensor(
            3,
            &[
                (50.0, 60.0, 20.0, 40.0, 2, 0.9),
                (10.0, 10.0, 4.0, 4.0, 1, 0.2),
            ],
        );
        let dets = decode_output(&shape, &data, 3, &PARAMS).unwrap();
        assert_eq!(dets, vec![det(2, 0.9, 40.0, 40.0, 60.0, 80.0)]);
    }

    #[test]
    fn transposed_output_decodes_the_same() {
        let (shape, data) = tensor(
            2,
            &[
                (50.0, 60.0, 20.0, 40.0, 1, 0.8),
                (150.0, 60.0, 20.0, 40.0, 0, 0.7),
            ],
        );
        let (c, n) = (shape[1] as usize, shape[2] as usize);
        let transposed: Vec<f32> = (0..n)
            .flat_map(|a| (0..c).map(move |ch| (a, ch)))
            .map(|(a, ch)| data[ch * n + a])
            .collect();
        let a = decode_output(&shape, &data, 2, &PARAMS).unwrap();
        let b = decode_output(&[1, n as i64, c as i64], &transposed, 2, &PARAMS).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.len(), 2);
    }

    #[test]
    fn nms_suppresses_within_a_class_only() {
        let dets = vec![
            det(0, 0.9, 0.0, 0.0, 10.0, 10.0),
            det(0, 0.8, 1.0, 1.0, 11.0, 11.0), // IoU 0.68 with the first: suppressed
            det(1, 0.7, 1.0, 1.0, 11.0, 11.0), // other class: kept
            det(0, 0.6, 20.0, 20.0, 30.0, 30.0),
        ];
        let kept = nms(dets, &PARAMS);
        let scores: Vec<f32> = kept.iter().map(|d| d.score).collect();
        assert_eq!(scores, vec![0.9, 0.7, 0.6]);
    }

    #[test]
    fn nms_keeps_overlap_at_exactly_the_threshold_and_caps_the_count() {
        // IoU of these two is 1/3 exactly.
        let dets = vec![
            det(0, 0.9, 0.0, 0.0, 2.0, 1.0),
            det(0, 0.8, 1.0, 0.0, 3.0, 1.0),
        ];
        assert_eq!(
            nms(
                dets.clone(),
                &DecodeParams {
                    iou: 1.0 / 3.0,
                    ..PARAMS
                }
            )
            .len(),
            2
        );
        assert_eq!(
            nms(dets.clone(), &DecodeParams { iou: 0.3, ..PARAMS }).len(),
            1
        );
        assert_eq!(
            nms(
                dets,
                &DecodeParams {
                    max_detections: 1,
                    iou: 0.9,
                    ..PARAMS
                }
            )
            .len(),
            1
        );
    }

    #[test]
    fn an_output_without_anchors_has_no_detections() {
        for shape in [[1, 84, 0], [1, 0, 84]] {
            assert!(decode_output(&shape, &[], 80, &PARAMS).unwrap().is_empty());
        }
    }

    #[test]
    fn wrong_output_shape_is_an_error() {
        assert!(matches!(
            decode_output(&[1, 10, 5], &[0.0; 50], 80, &PARAMS),
            Err(DetectError::OutputShape(_))
        ));
        assert!(matches!(
            decode_output(&[1, 84, 5], &[0.0; 10], 80, &PARAMS),
            Err(DetectError::OutputShape(_))
        ));
    }

    #[test]
    fn parses_ultralytics_names_and_imgsz() {
        let names = parse_class_names("{0: 'person', 1: \"bicycle\", 2: 'traffic light'}").unwrap();
        assert_eq!(names, vec!["person", "bicycle", "traffic light"]);
        assert_eq!(parse_class_names("{0: 'a', 2: 'c'}"), None);
        assert_eq!(parse_class_names("not a dict"), None);
        assert_eq!(parse_imgsz(Some("[640, 480]")), Some((640, 480)));
    }
}
