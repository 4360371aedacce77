//! Object detection: an ONNX Runtime session pool, the model's own facts (input size, class
//! names), and decoding of YOLOv8/11/12 output ([1, 4 + classes, anchors]) with class-wise NMS.
//!
//! Each session lives on a thread of its own and takes jobs from one bounded queue, so the
//! async runtime never blocks on inference and a full queue is back-pressure (or, for
//! request-reply, `overloaded`). Decoding and NMS are plain functions, tested below.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use ort::session::{builder::GraphOptimizationLevel, Session};
use ort::value::TensorRef;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;

use crate::contract::ModelRef;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectorConfig {
    /// The ONNX model (YOLOv8/11/12 export); relative paths are from the working directory.
    pub model: PathBuf,
    /// ONNX Runtime shared library (`libonnxruntime.so.1.x`). When absent: `ORT_DYLIB_PATH`,
    /// then the project's `.venv` (PyPI `onnxruntime` wheel).
    pub runtime_library: Option<PathBuf>,
    /// Sessions run side by side, each on its own thread.
    pub sessions: usize,
    /// Intra-op threads per session.
    pub threads_per_session: usize,
    /// Minimum class score kept (0–1, exclusive).
    pub confidence: f32,
    /// Boxes of one class overlapping more than this IoU are suppressed (0–1).
    pub iou: f32,
    /// Most detections reported per frame.
    pub max_detections: usize,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        Self {
            model: PathBuf::from("models/yolov12n.onnx"),
            runtime_library: None,
            sessions: 2,
            threads_per_session: 1,
            confidence: 0.25,
            iou: 0.45,
            max_detections: 300,
        }
    }
}

impl DetectorConfig {
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if !(1..=64).contains(&self.sessions) {
            return Err(("sessions", "must be between 1 and 64".into()));
        }
        if !(1..=64).contains(&self.threads_per_session) {
            return Err(("threads_per_session", "must be between 1 and 64".into()));
        }
        if !(self.confidence > 0.0 && self.confidence < 1.0) {
            return Err(("confidence", "must be between 0 and 1 (exclusive)".into()));
        }
        if !(self.iou > 0.0 && self.iou <= 1.0) {
            return Err(("iou", "must be in (0, 1]".into()));
        }
        if self.max_detections == 0 {
            return Err(("max_detections", "must be at least 1".into()));
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    #[error("ONNX Runtime library not found; searched: {}. Set detector.runtime_library or ORT_DYLIB_PATH, or run scripts/setup.sh", searched.join(", "))]
    RuntimeNotFound { searched: Vec<String> },
    #[error("cannot load ONNX Runtime from {path}: {message}")]
    RuntimeLoad { path: String, message: String },
    #[error("cannot read model {path}: {source}")]
    ModelRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("ONNX Runtime: {0}")]
    Ort(String),
    #[error("model output has shape {0:?}; expected [1, 4 + classes, anchors]")]
    OutputShape(Vec<i64>),
    #[error("model input has shape {0:?}; expected [1, 3, height, width]")]
    InputShape(Vec<i64>),
    #[error("the detector is shut down")]
    Closed,
    #[error("no detector free within {0:?}")]
    Busy(Duration),
}

impl<T> From<ort::Error<T>> for DetectError {
    fn from(e: ort::Error<T>) -> Self {
        DetectError::Ort(e.to_string())
    }
}

/// What the model is, read from the file and its metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    pub name: String,
    pub sha256: String,
    pub input_width: u32,
    pub input_height: u32,
    pub class_names: Vec<String>,
}

impl ModelInfo {
    pub fn model_ref(&self) -> ModelRef {
        ModelRef {
            name: self.name.clone(),
            sha256: self.sha256.clone(),
        }
    }

    pub fn label(&self, class_id: u32) -> String {
        self.class_names
            .get(class_id as usize)
            .cloned()
            .unwrap_or_else(|| format!("class_{class_id}"))
    }
}

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
    let at = |channel: usize, anchor: usize| {
        if channel_major {
            data[channel * anchors + anchor]
        } else {
            data[anchor * channels + channel]
        }
    };
    let mut candidates = Vec::new();
    for a in 0..anchors {
        let (mut best, mut class_id) = (f32::NEG_INFINITY, 0);
        for c in 0..num_classes {
            let s = at(4 + c, a);
            if s > best {
                (best, class_id) = (s, c);
            }
        }
        if best > params.confidence {
            let (cx, cy, w, h) = (at(0, a), at(1, a), at(2, a), at(3, a));
            candidates.push(Detection {
                class_id: class_id as u32,
                score: best,
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

/// Finds the ONNX Runtime library: config, then `ORT_DYLIB_PATH`, then the project's `.venv`.
pub fn find_runtime(configured: Option<&Path>) -> Result<PathBuf, DetectError> {
    search_runtime(
        configured,
        std::env::var_os("ORT_DYLIB_PATH"),
        Path::new(".venv/lib"),
    )
}

fn search_runtime(
    configured: Option<&Path>,
    env: Option<std::ffi::OsString>,
    venv_lib: &Path,
) -> Result<PathBuf, DetectError> {
    let mut searched = Vec::new();
    if let Some(path) = configured {
        if path.is_file() {
            return Ok(path.to_path_buf());
        }
        searched.push(format!("detector.runtime_library={}", path.display()));
    }
    match env {
        Some(p) if Path::new(&p).is_file() => return Ok(PathBuf::from(p)),
        Some(p) => searched.push(format!("ORT_DYLIB_PATH={}", Path::new(&p).display())),
        None => searched.push("ORT_DYLIB_PATH (unset)".into()),
    }
    searched.push(format!(
        "{}/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.1.*",
        venv_lib.display()
    ));
    let mut found: Vec<PathBuf> = std::fs::read_dir(venv_lib)
        .into_iter()
        .flatten()
        .flatten()
        .map(|py| py.path().join("site-packages/onnxruntime/capi"))
        .flat_map(|capi| std::fs::read_dir(capi).into_iter().flatten().flatten())
        .map(|f| f.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libonnxruntime.so.1."))
        })
        .collect();
    found.sort();
    found.pop().ok_or(DetectError::RuntimeNotFound { searched })
}

/// ONNX Runtime is loaded once per process; every detector shares the environment.
fn environment(library: &Path) -> Result<ort::environment::Environment, DetectError> {
    static ENV: OnceLock<Result<ort::environment::Environment, String>> = OnceLock::new();
    ENV.get_or_init(|| {
        let builder = ort::init_from(library).map_err(|e| e.to_string())?;
        builder
            .with_name("vigil")
            .build()
            .map_err(|e| e.to_string())
    })
    .clone()
    .map_err(|message| DetectError::RuntimeLoad {
        path: library.display().to_string(),
        message,
    })
}

/// Output of one inference job.
#[derive(Debug)]
pub struct Inference {
    pub detections: Vec<Detection>,
    /// Time spent waiting for a session.
    pub waited: Duration,
    /// The model run alone.
    pub infer: Duration,
    /// Output decoding and NMS.
    pub post: Duration,
}

struct Job {
    tensor: Vec<f32>,
    submitted: Instant,
    reply: oneshot::Sender<Result<Inference, DetectError>>,
}

/// A pool of ONNX Runtime sessions, each on its own thread, fed by one bounded queue.
pub struct Detector {
    info: Arc<ModelInfo>,
    jobs: async_channel::Sender<Job>,
    buffers: Arc<Mutex<Vec<Vec<f32>>>>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl Detector {
    /// Loads ONNX Runtime and the model, and starts the session threads.
    pub fn load(config: &DetectorConfig) -> Result<Detector, DetectError> {
        let library = find_runtime(config.runtime_library.as_deref())?;
        let env = environment(&library)?;
        let bytes = std::fs::read(&config.model).map_err(|source| DetectError::ModelRead {
            path: config.model.clone(),
            source,
        })?;
        let sha256 = format!("{:x}", Sha256::digest(&bytes));
        let name = config
            .model
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("model")
            .to_string();
        let params = DecodeParams {
            confidence: config.confidence,
            iou: config.iou,
            max_detections: config.max_detections,
        };

        let mut sessions = Vec::with_capacity(config.sessions);
        for _ in 0..config.sessions {
            let session = Session::builder(&env)?
                .with_optimization_level(GraphOptimizationLevel::Level3)?
                .with_intra_threads(config.threads_per_session)?
                .with_inter_threads(1)?
                .with_intra_op_spinning(false)?
                .commit_from_memory(&bytes)?;
            sessions.push(session);
        }
        let info = Arc::new(read_model_info(&sessions[0], name, sha256)?);
        let (jobs, queue) = async_channel::bounded(config.sessions);
        let buffers = Arc::new(Mutex::new(Vec::new()));
        let threads = sessions
            .into_iter()
            .enumerate()
            .map(|(i, session)| {
                let (queue, info, buffers) = (queue.clone(), info.clone(), buffers.clone());
                std::thread::Builder::new()
                    .name(format!("vigil-detect-{i}"))
                    .spawn(move || serve_jobs(session, &info, params, &queue, &buffers))
                    .map_err(|e| DetectError::Ort(format!("cannot start a detector thread: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        tracing::info!(model = %info.name, sessions = config.sessions, threads = config.threads_per_session, runtime = %library.display(), "detector ready");
        Ok(Detector {
            info,
            jobs,
            buffers,
            threads: Mutex::new(threads),
        })
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// An input buffer from earlier frames, or a new one.
    pub fn take_buffer(&self) -> Vec<f32> {
        self.buffers
            .lock()
            .ok()
            .and_then(|mut b| b.pop())
            .unwrap_or_default()
    }

    /// Runs the model on a letterboxed tensor; waits for a free session for at most `patience`
    /// (None: as long as it takes). The tensor's buffer is kept for reuse.
    pub async fn detect(
        &self,
        tensor: Vec<f32>,
        patience: Option<Duration>,
    ) -> Result<Inference, DetectError> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            tensor,
            submitted: Instant::now(),
            reply,
        };
        let sent = match patience {
            None => self.jobs.send(job).await.map_err(|_| DetectError::Closed),
            Some(limit) => match tokio::time::timeout(limit, self.jobs.send(job)).await {
                Ok(sent) => sent.map_err(|_| DetectError::Closed),
                Err(_) => Err(DetectError::Busy(limit)),
            },
        };
        sent?;
        answer.await.map_err(|_| DetectError::Closed)?
    }

    /// Stops the session threads once queued jobs are done.
    pub fn close(&self) {
        self.jobs.close();
        if let Ok(mut threads) = self.threads.lock() {
            for t in threads.drain(..) {
                let _ = t.join();
            }
        }
    }
}

impl Drop for Detector {
    fn drop(&mut self) {
        self.jobs.close();
    }
}

fn read_model_info(
    session: &Session,
    name: String,
    sha256: String,
) -> Result<ModelInfo, DetectError> {
    let dims: Vec<i64> = session
        .inputs()
        .first()
        .and_then(|i| i.dtype().tensor_shape())
        .map(|s| s.to_vec())
        .unwrap_or_default();
    let from_meta = |key: &str| session.metadata().ok().and_then(|m| m.custom(key));
    let (input_height, input_width) = match dims.as_slice() {
        [_, 3, h, w] if *h > 0 && *w > 0 => (*h as u32, *w as u32),
        [_, 3, _, _] => parse_imgsz(from_meta("imgsz").as_deref())
            .ok_or_else(|| DetectError::InputShape(dims.clone()))?,
        _ => return Err(DetectError::InputShape(dims)),
    };
    let out_dims: Vec<i64> = session
        .outputs()
        .first()
        .and_then(|o| o.dtype().tensor_shape())
        .map(|s| s.to_vec())
        .unwrap_or_default();
    let class_names = match from_meta("names").as_deref().and_then(parse_class_names) {
        Some(names) => names,
        None => {
            let classes = out_dims
                .get(1)
                .copied()
                .filter(|c| *c > 4)
                .ok_or_else(|| DetectError::OutputShape(out_dims.clone()))?;
            (0..classes - 4).map(|c| format!("class_{c}")).collect()
        }
    };
    Ok(ModelInfo {
        name,
        sha256,
        input_width,
        input_height,
        class_names,
    })
}

/// `imgsz` metadata: "[640, 640]" (height, width).
fn parse_imgsz(text: Option<&str>) -> Option<(u32, u32)> {
    let inner = text?.trim().strip_prefix('[')?.strip_suffix(']')?;
    let mut it = inner.split(',').map(|s| s.trim().parse::<u32>().ok());
    Some((it.next()??, it.next()??))
}

fn serve_jobs(
    mut session: Session,
    info: &ModelInfo,
    params: DecodeParams,
    queue: &async_channel::Receiver<Job>,
    buffers: &Mutex<Vec<Vec<f32>>>,
) {
    while let Ok(job) = queue.recv_blocking() {
        let waited = job.submitted.elapsed();
        let result =
            run_model(&mut session, info, &params, &job.tensor).map(|(detections, infer, post)| {
                Inference {
                    detections,
                    waited,
                    infer,
                    post,
                }
            });
        if let Ok(mut pool) = buffers.lock() {
            pool.push(job.tensor);
        }
        // The caller may have given up (shutdown, timeout); nobody else wants the result.
        let _ = job.reply.send(result);
    }
}

fn run_model(
    session: &mut Session,
    info: &ModelInfo,
    params: &DecodeParams,
    tensor: &[f32],
) -> Result<(Vec<Detection>, Duration, Duration), DetectError> {
    let (w, h) = (info.input_width as usize, info.input_height as usize);
    if tensor.len() != 3 * w * h {
        return Err(DetectError::InputShape(vec![tensor.len() as i64]));
    }
    let started = Instant::now();
    let input = TensorRef::from_array_view(([1usize, 3, h, w], tensor))?;
    let outputs = session.run(ort::inputs![input])?;
    let infer = started.elapsed();
    let started = Instant::now();
    let (shape, data) = outputs[0].try_extract_tensor::<f32>()?;
    let detections = decode_output(shape, data, info.class_names.len(), params)?;
    Ok((detections, infer, started.elapsed()))
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

    #[test]
    fn runtime_search_order_and_what_a_miss_reports() {
        let dir = tempfile::tempdir().unwrap();
        let capi = dir
            .path()
            .join("lib/python3.11/site-packages/onnxruntime/capi");
        std::fs::create_dir_all(&capi).unwrap();
        let venv_lib = dir.path().join("lib");
        let err = search_runtime(Some(Path::new("/nope/libonnxruntime.so")), None, &venv_lib)
            .unwrap_err();
        let DetectError::RuntimeNotFound { searched } = &err else {
            panic!("{err}")
        };
        assert_eq!(searched.len(), 3, "{searched:?}");
        assert!(
            err.to_string().contains("/nope/libonnxruntime.so")
                && err.to_string().contains("ORT_DYLIB_PATH")
        );

        for version in ["1.31.0", "1.32.0"] {
            std::fs::write(capi.join(format!("libonnxruntime.so.{version}")), b"").unwrap();
        }
        let found = search_runtime(None, Some("/nope".into()), &venv_lib).unwrap();
        assert_eq!(
            found,
            capi.join("libonnxruntime.so.1.32.0"),
            "the newest in the venv"
        );
        let env_lib = capi.join("libonnxruntime.so.1.31.0");
        assert_eq!(
            search_runtime(None, Some(env_lib.clone().into()), &venv_lib).unwrap(),
            env_lib
        );
        assert_eq!(
            search_runtime(Some(&env_lib), None, Path::new("/nope")).unwrap(),
            env_lib
        );
    }
}
