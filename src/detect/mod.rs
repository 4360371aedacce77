//! Object detection: an ONNX Runtime session pool, the model's own facts (input size, class
//! names), and decoding of YOLOv8/11/12 output ([1, 4 + classes, anchors]) with class-wise NMS.
//!
//! Each session lives on a thread of its own and takes jobs from one bounded queue, so the
//! async runtime never blocks on inference and a full queue is back-pressure (or, for
//! request-reply, `overloaded`). With `max_batch` above one (and a model that takes a batch),
//! a session that comes free takes every job waiting, up to `max_batch`, and runs them as one
//! batch: frames of several cameras share a model run, which is what keeps a GPU busy. It never
//! waits for a batch to fill, so a quiet system keeps single-frame latency. Decoding and NMS
//! are plain functions in [`output`].

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use ort::session::{builder::GraphOptimizationLevel, Session};
use ort::value::TensorRef;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;

use crate::config::Invalid;
use crate::contract::ModelRef;

mod output;

use output::parse_imgsz;
pub use output::{decode_output, nms, parse_class_names, DecodeParams, Detection};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectorConfig {
    /// The ONNX model (YOLOv8/11/12 export); relative paths are from the working directory.
    /// `auto` (the default) picks one of the two 640×480 copies scripts/setup.sh makes: the
    /// int8 one on a CPU with VNNI, the fp32 one elsewhere (see [`ModelChoice`]).
    pub model: PathBuf,
    /// ONNX Runtime shared library (`libonnxruntime.so.1.x`). When absent: `ORT_DYLIB_PATH`,
    /// then the project's `.venv` (PyPI `onnxruntime` wheel).
    pub runtime_library: Option<PathBuf>,
    /// Sessions run side by side, each on its own thread.
    pub sessions: usize,
    /// Intra-op threads per session.
    pub threads_per_session: usize,
    /// Minimum class score of a detected object (0–1, exclusive).
    pub confidence: f32,
    /// Detections scoring at least this but below `confidence` are carried in the event
    /// marked `low_score`, for the tracker alone (ByteTrack's second stage); equal to
    /// `confidence` carries none.
    pub track_confidence: f32,
    /// Boxes of one class overlapping more than this IoU are suppressed (0–1).
    pub iou: f32,
    /// Most detections reported per frame.
    pub max_detections: usize,
    /// Where the model runs: `cpu`, or `cuda` (needs onnxruntime-gpu's library as
    /// `runtime_library` and the CUDA/cuDNN libraries; without them vigil says why and runs on
    /// the CPU).
    pub execution_provider: Provider,
    /// The GPU, for `cuda`.
    pub cuda_device: i32,
    /// Frames one session runs through the model together at most: those waiting when it comes
    /// free (it never waits for more). Above 1 the model must take a batch (`[N, 3, H, W]`;
    /// scripts/batch_model.py makes such a copy of a fixed-batch export).
    pub max_batch: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Cpu,
    Cuda,
}

impl Provider {
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Cpu => "cpu",
            Provider::Cuda => "cuda",
        }
    }
}

impl Default for DetectorConfig {
    fn default() -> Self {
        Self {
            model: PathBuf::from(AUTO_MODEL),
            runtime_library: None,
            sessions: 2,
            threads_per_session: 1,
            confidence: 0.25,
            track_confidence: 0.1,
            iou: 0.45,
            max_detections: 300,
            execution_provider: Provider::Cpu,
            cuda_device: 0,
            max_batch: 1,
        }
    }
}

/// `detector.model = "auto"`.
pub const AUTO_MODEL: &str = "auto";
/// What `auto` runs: the fp32 model for 640×480 input (scripts/rect_model.py) …
pub const AUTO_FP32: &str = "models/yolov12n-640x480.onnx";
/// … or its int8 copy (scripts/quantize.py), where the CPU runs int8 fast and exactly.
pub const AUTO_INT8: &str = "models/yolov12n-640x480-int8.onnx";

/// The reason of a model named by path in `detector.model`.
pub const CONFIGURED: &str = "set in detector.model";

/// What a missing model file's error adds: setup makes the files `auto` picks, not others.
fn setup_hint(chosen: &str) -> &'static str {
    if chosen == CONFIGURED {
        ""
    } else {
        "; scripts/setup.sh makes it"
    }
}

/// The model file a configuration runs, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelChoice {
    pub path: PathBuf,
    pub reason: &'static str,
}

impl ModelChoice {
    /// What `model = "auto"` runs, given the CPU, the provider and whether setup made the int8
    /// copy. int8 only on the CPU provider of a CPU with VNNI (AVX-512 VNNI or AVX-VNNI): there
    /// ONNX Runtime's int8 kernels multiply 8-bit values exactly, and the int8 copy ran 1.5× the
    /// fp32 one's frames/s at F1 0.99 against it (models/README.md). Without VNNI they
    /// fall back to an AVX2 instruction whose 16-bit sums saturate: on an AVX2-only EPYC int8
    /// was slower than fp32 and agreed less (F1 0.943 at 640×480, with the calibration of that
    /// day), so fp32 stays.
    pub fn auto(vnni: bool, provider: Provider, int8_made: bool) -> ModelChoice {
        let (path, reason) = match (provider, vnni, int8_made) {
            (Provider::Cuda, _, _) => (AUTO_FP32, "auto: fp32, int8 is for the CPU provider"),
            (Provider::Cpu, false, _) => (AUTO_FP32, "auto: fp32, this CPU has no VNNI"),
            (Provider::Cpu, true, false) => (AUTO_FP32, "auto: fp32, the int8 copy is missing"),
            (Provider::Cpu, true, true) => (AUTO_INT8, "auto: int8, this CPU has VNNI"),
        };
        ModelChoice {
            path: PathBuf::from(path),
            reason,
        }
    }
}

/// Whether this CPU has the 8-bit dot-product instructions ONNX Runtime's int8 kernels use.
pub fn cpu_has_vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512vnni")
            || std::arch::is_x86_feature_detected!("avxvnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

impl DetectorConfig {
    /// The model file this configuration runs: `model` itself, or what `auto` picks here.
    pub fn model_choice(&self) -> ModelChoice {
        if self.model != Path::new(AUTO_MODEL) {
            return ModelChoice {
                path: self.model.clone(),
                reason: CONFIGURED,
            };
        }
        ModelChoice::auto(
            cpu_has_vnni(),
            self.execution_provider,
            Path::new(AUTO_INT8).is_file(),
        )
    }

    pub fn validate(&self) -> Result<(), Invalid> {
        if !(1..=64).contains(&self.sessions) {
            return Err(Invalid::new("sessions", "must be between 1 and 64"));
        }
        if !(1..=64).contains(&self.threads_per_session) {
            return Err(Invalid::new(
                "threads_per_session",
                "must be between 1 and 64",
            ));
        }
        if !(self.confidence > 0.0 && self.confidence < 1.0) {
            return Err(Invalid::new(
                "confidence",
                "must be between 0 and 1 (exclusive)",
            ));
        }
        if !(self.track_confidence > 0.0 && self.track_confidence <= self.confidence) {
            return Err(Invalid::new(
                "track_confidence",
                "must be greater than 0 and at most confidence",
            ));
        }
        if !(self.iou > 0.0 && self.iou <= 1.0) {
            return Err(Invalid::new("iou", "must be in (0, 1]"));
        }
        if self.max_detections == 0 {
            return Err(Invalid::new("max_detections", "must be at least 1"));
        }
        if !(1..=64).contains(&self.max_batch) {
            return Err(Invalid::new("max_batch", "must be between 1 and 64"));
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    #[error("ONNX Runtime library not found; searched: {}. Set detector.runtime_library or ORT_DYLIB_PATH, or run scripts/setup.sh", searched.join(", "))]
    RuntimeNotFound { searched: Vec<String> },
    #[error("cannot load ONNX Runtime from {path}: {source}")]
    RuntimeLoad {
        path: String,
        source: Arc<dyn std::error::Error + Send + Sync>,
    },
    #[error("cannot read model {path} ({chosen}{}): {source}", setup_hint(chosen))]
    ModelRead {
        path: PathBuf,
        /// Why this file ([`ModelChoice::reason`]): [`CONFIGURED`], or what `auto` found.
        chosen: &'static str,
        source: std::io::Error,
    },
    /// Shared by every frame of a batch the run failed for.
    #[error("ONNX Runtime: {0}")]
    Ort(#[source] Arc<ort::Error>),
    #[error("cannot start a detector thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error("model output has shape {0:?}; expected [batch, 4 + classes, anchors]")]
    OutputShape(Vec<i64>),
    #[error("model input has shape {0:?}; expected [batch, 3, height, width]")]
    InputShape(Vec<i64>),
    #[error("detector.max_batch = {max_batch} needs a model that takes a batch of images, but {} takes {batch} (scripts/batch_model.py writes a copy that does)", model.display())]
    FixedBatch {
        model: PathBuf,
        batch: i64,
        max_batch: usize,
    },
    #[error("the detector is shut down")]
    Closed,
    #[error("no detector free within {0:?}")]
    Busy(Duration),
}

impl From<ort::Error> for DetectError {
    fn from(e: ort::Error) -> Self {
        DetectError::Ort(Arc::new(e))
    }
}

impl From<ort::Error<ort::session::builder::SessionBuilder>> for DetectError {
    fn from(e: ort::Error<ort::session::builder::SessionBuilder>) -> Self {
        DetectError::Ort(Arc::new(e.into()))
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
    /// Where the sessions run (the configured provider, or `cpu` after a fallback).
    pub provider: Provider,
    /// The input's batch dimension: a fixed size (exports default to 1), or None when the
    /// model takes any batch.
    pub batch: Option<u32>,
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
/// One session on `provider`; a CUDA session that cannot be had (a CPU-only ONNX Runtime, no
/// GPU, no CUDA libraries) is built on the CPU instead, with a warning that says why.
fn build_session(
    env: &ort::environment::Environment,
    config: &DetectorConfig,
    provider: Provider,
    model: &[u8],
) -> Result<(Session, Provider), DetectError> {
    let builder = || -> Result<_, DetectError> {
        Ok(Session::builder(env)?
            .with_optimization_level(GraphOptimizationLevel::Level3)?
            .with_intra_threads(config.threads_per_session)?
            .with_inter_threads(1)?
            .with_intra_op_spinning(false)?)
    };
    if provider == Provider::Cuda {
        use ort::ep::ExecutionProvider;
        let cuda = ort::ep::CUDA::default().with_device_id(config.cuda_device);
        let reason = match ort::ep::CUDA::is_available() {
            Ok(false) => "this ONNX Runtime library has no CUDA execution provider (use onnxruntime-gpu's as detector.runtime_library)".to_string(),
            Err(e) => e.to_string(),
            Ok(true) => {
                let attempt = builder().and_then(|b| {
                    Ok(b.with_execution_providers([cuda.build().error_on_failure()])?
                        .commit_from_memory(model)?)
                });
                match attempt {
                    Ok(session) => return Ok((session, Provider::Cuda)),
                    Err(e) => e.to_string(),
                }
            }
        };
        tracing::warn!(reason = %reason, "CUDA execution provider unavailable; the model runs on the CPU");
    }
    Ok((builder()?.commit_from_memory(model)?, Provider::Cpu))
}

fn environment(library: &Path) -> Result<ort::environment::Environment, DetectError> {
    type Shared = Arc<dyn std::error::Error + Send + Sync>;
    // ONNX Runtime is loaded once per process, so its outcome, failure included, is kept.
    static ENV: OnceLock<Result<ort::environment::Environment, Shared>> = OnceLock::new();
    ENV.get_or_init(|| {
        let builder = ort::init_from(library).map_err(|e| Arc::new(e) as Shared)?;
        builder
            .with_name("vigil")
            .build()
            .map_err(|e| Arc::new(e) as Shared)
    })
    .clone()
    .map_err(|source| DetectError::RuntimeLoad {
        path: library.display().to_string(),
        source,
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
    /// Frames in the model run that included this one.
    pub batch: usize,
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
        let choice = config.model_choice();
        let bytes = std::fs::read(&choice.path).map_err(|source| DetectError::ModelRead {
            path: choice.path.clone(),
            chosen: choice.reason,
            source,
        })?;
        let sha256 = format!("{:x}", Sha256::digest(&bytes));
        let name = choice
            .path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("model")
            .to_string();
        let params = DecodeParams {
            confidence: config.track_confidence,
            iou: config.iou,
            max_detections: config.max_detections,
        };

        let mut provider = config.execution_provider;
        let mut sessions = Vec::with_capacity(config.sessions);
        for _ in 0..config.sessions {
            let (session, ran_on) = build_session(&env, config, provider, &bytes)?;
            provider = ran_on;
            sessions.push(session);
        }
        let mut info = read_model_info(&sessions[0], name, sha256)?;
        info.provider = provider;
        if config.max_batch > 1 {
            if let Some(batch) = info.batch {
                return Err(DetectError::FixedBatch {
                    model: choice.path.clone(),
                    batch: i64::from(batch),
                    max_batch: config.max_batch,
                });
            }
        }
        let info = Arc::new(info);
        let max_batch = config.max_batch;
        // Room for a full batch per session to gather while the sessions are busy.
        let (jobs, queue) = async_channel::bounded(config.sessions * max_batch);
        let buffers = Arc::new(Mutex::new(Vec::new()));
        let threads = sessions
            .into_iter()
            .enumerate()
            .map(|(i, session)| {
                let (queue, info, buffers) = (queue.clone(), info.clone(), buffers.clone());
                std::thread::Builder::new()
                    .name(format!("vigil-detect-{i}"))
                    .spawn(move || serve_jobs(session, &info, params, max_batch, &queue, &buffers))
                    .map_err(DetectError::Thread)
            })
            .collect::<Result<Vec<_>, _>>()?;
        tracing::info!(model = %info.name, chosen = choice.reason, provider = info.provider.as_str(), sessions = config.sessions, threads = config.threads_per_session, max_batch, runtime = %library.display(), "detector ready");
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

    /// Hands back an input buffer that was not sent to the model.
    pub fn return_buffer(&self, tensor: Vec<f32>) {
        if let Ok(mut pool) = self.buffers.lock() {
            pool.push(tensor);
        }
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

/// The shape of the model's first input as the model declares it (-1 for a symbolic size;
/// empty when it declares none).
pub fn input_dims(session: &Session) -> Vec<i64> {
    session
        .inputs()
        .first()
        .and_then(|i| i.dtype().tensor_shape())
        .map(|s| s.to_vec())
        .unwrap_or_default()
}

fn read_model_info(
    session: &Session,
    name: String,
    sha256: String,
) -> Result<ModelInfo, DetectError> {
    let dims = input_dims(session);
    let from_meta = |key: &str| session.metadata().ok().and_then(|m| m.custom(key));
    let (input_height, input_width) = match dims.as_slice() {
        [_, 3, h, w] if *h > 0 && *w > 0 => (*h as u32, *w as u32),
        [_, 3, _, _] => parse_imgsz(from_meta("imgsz").as_deref())
            .ok_or_else(|| DetectError::InputShape(dims.clone()))?,
        _ => return Err(DetectError::InputShape(dims)),
    };
    // ONNX Runtime reports a symbolic dimension as -1.
    let batch = dims
        .first()
        .and_then(|b| u32::try_from(*b).ok())
        .filter(|b| *b > 0);
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
        provider: Provider::Cpu,
        batch,
    })
}

fn serve_jobs(
    mut session: Session,
    info: &ModelInfo,
    params: DecodeParams,
    max_batch: usize,
    queue: &async_channel::Receiver<Job>,
    buffers: &Mutex<Vec<Vec<f32>>>,
) {
    let mut stacked = Vec::new();
    while let Ok(first) = queue.recv_blocking() {
        let mut jobs = vec![first];
        // The frames that queued up while this session was busy go in with it; none is
        // waited for, so a quiet system keeps single-frame latency.
        while jobs.len() < max_batch {
            match queue.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let waited: Vec<Duration> = jobs.iter().map(|j| j.submitted.elapsed()).collect();
        let tensors: Vec<&[f32]> = jobs.iter().map(|j| j.tensor.as_slice()).collect();
        let results = run_batch(&mut session, info, &params, &tensors, &mut stacked);
        let batch = jobs.len();
        for ((job, waited), result) in jobs.into_iter().zip(waited).zip(results) {
            let result = result.map(|(detections, infer, post)| Inference {
                detections,
                waited,
                infer,
                post,
                batch,
            });
            if let Ok(mut pool) = buffers.lock() {
                pool.push(job.tensor);
            }
            // The caller may have given up (shutdown, timeout); nobody else wants the result.
            let _ = job.reply.send(result);
        }
    }
}

/// Detections of one frame, the model run's time and this frame's decoding time.
type FrameResult = Result<(Vec<Detection>, Duration, Duration), DetectError>;

/// Runs the model once over `tensors` (one letterboxed frame each) and decodes each frame's
/// share of the output. One frame goes in as it is; several are stacked into `stacked`.
fn run_batch(
    session: &mut Session,
    info: &ModelInfo,
    params: &DecodeParams,
    tensors: &[&[f32]],
    stacked: &mut Vec<f32>,
) -> Vec<FrameResult> {
    let (w, h) = (info.input_width as usize, info.input_height as usize);
    let per_frame = 3 * w * h;
    if let Some(bad) = tensors.iter().find(|t| t.len() != per_frame) {
        // Callers take tensors from the letterboxer, sized from this model: a wrong length is
        // a bug in vigil, reported for every frame of the batch rather than guessed around.
        let shape = vec![bad.len() as i64];
        return each_fails(tensors.len(), || DetectError::InputShape(shape.clone()));
    }
    let n = tensors.len();
    let input: &[f32] = match tensors {
        [one] => one,
        _ => {
            stacked.clear();
            for t in tensors {
                stacked.extend_from_slice(t);
            }
            stacked
        }
    };
    let started = Instant::now();
    let run = TensorRef::from_array_view(([n, 3, h, w], input))
        .and_then(|input| session.run(ort::inputs![input]));
    let outputs = match run {
        Ok(outputs) => outputs,
        Err(e) => {
            let e = Arc::new(e);
            return each_fails(n, || DetectError::Ort(e.clone()));
        }
    };
    let infer = started.elapsed();
    let (shape, data) = match outputs[0].try_extract_tensor::<f32>() {
        Ok(output) => output,
        Err(e) => {
            let e = Arc::new(e);
            return each_fails(n, || DetectError::Ort(e.clone()));
        }
    };
    let dims: Vec<i64> = shape.to_vec();
    let per_output = data.len() / n.max(1);
    if dims.first() != Some(&(n as i64)) || data.len() != per_output * n {
        return each_fails(n, || DetectError::OutputShape(dims.clone()));
    }
    let frame_shape: Vec<i64> = std::iter::once(1)
        .chain(dims[1..].iter().copied())
        .collect();
    data.chunks_exact(per_output)
        .map(|frame| {
            let started = Instant::now();
            let detections = decode_output(&frame_shape, frame, info.class_names.len(), params)?;
            Ok((detections, infer, started.elapsed()))
        })
        .collect()
}

/// The same failure, once for each of a batch's `n` frames.
fn each_fails(n: usize, error: impl Fn() -> DetectError) -> Vec<FrameResult> {
    (0..n).map(|_| Err(error())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_runs_int8_only_on_the_cpu_provider_of_a_vnni_cpu_with_the_copy_made() {
        let auto = |vnni, provider, made| ModelChoice::auto(vnni, provider, made).path;
        assert_eq!(auto(true, Provider::Cpu, true), Path::new(AUTO_INT8));
        assert_eq!(auto(false, Provider::Cpu, true), Path::new(AUTO_FP32));
        assert_eq!(auto(true, Provider::Cpu, false), Path::new(AUTO_FP32));
        assert_eq!(auto(true, Provider::Cuda, true), Path::new(AUTO_FP32));
        assert_eq!(auto(false, Provider::Cuda, false), Path::new(AUTO_FP32));
    }

    #[test]
    fn a_missing_model_says_why_it_was_chosen_and_points_to_setup_only_for_auto() {
        let missing = |chosen| {
            DetectError::ModelRead {
                path: "models/x.onnx".into(),
                chosen,
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            }
            .to_string()
        };
        let configured = missing(CONFIGURED);
        assert!(
            configured.contains("(set in detector.model)"),
            "{configured}"
        );
        assert!(!configured.contains("setup.sh"), "{configured}");
        let auto = missing("auto: fp32, this CPU has no VNNI");
        assert!(
            auto.contains("(auto: fp32, this CPU has no VNNI; scripts/setup.sh makes it)"),
            "{auto}"
        );
    }

    #[test]
    fn a_configured_model_is_run_as_it_is() {
        let config = DetectorConfig {
            model: "models/yolov12n.onnx".into(),
            ..DetectorConfig::default()
        };
        let choice = config.model_choice();
        assert_eq!(choice.path, Path::new("models/yolov12n.onnx"));
        assert_eq!(choice.reason, CONFIGURED);
        // The default is auto, which names the CPU's verdict.
        let choice = DetectorConfig::default().model_choice();
        assert!(choice.reason.starts_with("auto: "), "{}", choice.reason);
        assert!(
            choice.path == Path::new(AUTO_FP32) || choice.path == Path::new(AUTO_INT8),
            "{}",
            choice.path.display()
        );
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
