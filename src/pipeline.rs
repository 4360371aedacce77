//! `process(frame) -> event`: the one place that knows the order of the stages.
//!
//! decode → letterbox (a blocking thread) → detect (a session thread) → place on the ground →
//! score. Ingest and the analyze service both call [`Pipeline::process`]; neither knows the
//! stages, and no stage knows another.

use std::cell::RefCell;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use chrono::{DateTime, Utc};

use crate::config::Config;
use crate::contract::{
    self, ErrorCode, Frame, ImageSize, ObjectReport, Risk, RiskEvent, Timings, ZoneReport,
    EVENT_SCHEMA,
};
use crate::detect::{DetectError, Detector, Inference};
use crate::motion::{Gate, Thumbnail, Verdict};
use crate::risk::RiskPolicy;
use crate::scene::{self, Cameras};
use crate::vision::{self, ImageLimits, Letterbox, Letterboxer};

/// Why a frame was not analysed: a code from the contract and a sentence for people.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct AnalysisError {
    pub code: ErrorCode,
    pub message: String,
}

impl AnalysisError {
    /// The message is cut to a bounded excerpt: it may quote what a client sent, and it ends up
    /// in replies, dead letters and logs.
    pub fn new(code: ErrorCode, message: impl AsRef<str>) -> Self {
        Self {
            code,
            message: contract::bounded(message.as_ref()),
        }
    }
}

impl From<contract::FrameError> for AnalysisError {
    fn from(e: contract::FrameError) -> Self {
        AnalysisError::new(ErrorCode::BadRequest, e.to_string())
    }
}

impl From<DetectError> for AnalysisError {
    fn from(e: DetectError) -> Self {
        let code = match e {
            DetectError::Busy(_) => ErrorCode::Overloaded,
            _ => ErrorCode::Internal,
        };
        AnalysisError::new(code, e.to_string())
    }
}

impl From<vision::VisionError> for AnalysisError {
    fn from(e: vision::VisionError) -> Self {
        AnalysisError::new(e.code(), e.to_string())
    }
}

/// Where a frame came from and how long it already waited.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    pub site: &'a str,
    pub camera: &'a str,
    /// Time between the frame's arrival (stream or request) and now.
    pub queued: Duration,
    /// How long to wait for a free detector; None: as long as it takes.
    pub patience: Option<Duration>,
}

pub struct Pipeline {
    detector: Detector,
    limits: ImageLimits,
    /// Pixels that may be decoded at once, across every frame and request in this process:
    /// each decode holds as many permits as its image has pixels until it is letterboxed.
    decode_budget: Arc<Semaphore>,
    max_clock_ahead: chrono::Duration,
    /// Detections below this score are marked `low_score` (see `DetectorConfig`).
    confidence: f32,
    policy: RiskPolicy,
    cameras: Cameras,
    require_known_cameras: bool,
    /// Motion gating (None: `[motion] enabled = false`), and the cameras it leaves alone.
    gate: Option<Arc<Gate>>,
    ungated: std::collections::HashSet<(String, String)>,
}

thread_local! {
    // Each blocking thread keeps its resizer and scratch image across frames.
    static LETTERBOXER: RefCell<Letterboxer> = RefCell::new(Letterboxer::default());
}

impl Pipeline {
    /// Builds the pipeline from a validated configuration and a loaded detector.
    pub fn new(
        config: &Config,
        detector: Detector,
    ) -> Result<Pipeline, crate::config::ConfigError> {
        let cameras = Cameras::from_config(config)?;
        let budget = usize::try_from(config.vision.max_decoded_pixels_in_flight)
            .unwrap_or(Semaphore::MAX_PERMITS)
            .min(Semaphore::MAX_PERMITS);
        let ahead = i64::try_from(config.pipeline.max_clock_ahead_s).unwrap_or(i64::MAX / 1000);
        Ok(Pipeline {
            detector,
            limits: config.vision.clone(),
            decode_budget: Arc::new(Semaphore::new(budget)),
            confidence: config.detector.confidence,
            max_clock_ahead: chrono::Duration::try_seconds(ahead).unwrap_or(chrono::Duration::MAX),
            policy: config.risk.clone(),
            cameras,
            require_known_cameras: config.pipeline.require_known_cameras,
            gate: config
                .motion
                .enabled
                .then(|| Arc::new(Gate::new(&config.motion))),
            ungated: config
                .cameras
                .iter()
                .filter(|c| c.motion == Some(false))
                .map(|c| (c.site.clone(), c.id.clone()))
                .collect(),
        })
    }

    pub fn detector(&self) -> &Detector {
        &self.detector
    }

    /// Analyses one frame: always with the model (analyze requests, tools, re-detection).
    pub async fn process(
        &self,
        frame: Frame,
        origin: Origin<'_>,
    ) -> Result<RiskEvent, AnalysisError> {
        self.analyse(frame, origin, false).await
    }

    /// Analyses one frame of a camera's stream: motion gating applies (see `motion`).
    pub async fn process_stream(
        &self,
        frame: Frame,
        origin: Origin<'_>,
    ) -> Result<RiskEvent, AnalysisError> {
        self.analyse(frame, origin, true).await
    }

    async fn analyse(
        &self,
        mut frame: Frame,
        origin: Origin<'_>,
        stream: bool,
    ) -> Result<RiskEvent, AnalysisError> {
        let started = Instant::now();
        contract::validate_frame(&frame, Utc::now(), self.max_clock_ahead)?;
        let camera = self.cameras.get(origin.site, origin.camera);
        if camera.is_none() && self.require_known_cameras {
            return Err(AnalysisError::new(
                ErrorCode::UnknownCamera,
                format!("camera {}/{} is not configured", origin.site, origin.camera),
            ));
        }

        let (input_w, input_h) = (
            self.detector.info().input_width,
            self.detector.info().input_height,
        );
        let image = std::mem::take(&mut frame.image);
        let probe = vision::probe(&image, &self.limits)?;
        let budget = self.reserve_pixels(&probe, origin.patience).await?;
        let tensor = self.detector.take_buffer();
        let limits = self.limits.clone();
        // Gated: a stream frame of a static camera the configuration does not exempt.
        let gate = self
            .gate
            .as_ref()
            .filter(|_| stream && frame.pose.is_none())
            .map(|g| GateCall {
                gate: Arc::clone(g),
                key: (origin.site.to_string(), origin.camera.to_string()),
                captured_at: frame.captured_at,
            })
            .filter(|call| !self.ungated.contains(&call.key));
        let (prepared, gate) = tokio::task::spawn_blocking(move || {
            let prepared = prepare(&image, &probe, &limits, input_w, input_h, tensor, &gate);
            drop(budget);
            prepared.map(|p| (p, gate))
        })
        .await
        .map_err(|e| {
            AnalysisError::new(ErrorCode::Internal, format!("decode task failed: {e}"))
        })??;
        let decoded = started.elapsed();
        let Prepared {
            size,
            letterbox,
            tensor,
            judged,
        } = prepared;

        let (inference, motion) = match (gate, judged) {
            (Some(call), Some((thumbnail, verdict))) => {
                self.gated_inference(call, thumbnail, verdict, &frame, size, tensor, origin)
                    .await?
            }
            _ => (self.detector.detect(tensor, origin.patience).await?, None),
        };
        let post_started = Instant::now();
        let ground = self.cameras.frame(camera, frame.pose.as_ref(), size);
        let (objects, zones) = scene::place(
            &ground,
            &inference.detections,
            &letterbox,
            self.detector.info(),
            &self.policy,
            self.confidence,
        );
        let place = match camera {
            Some(c) => format!("{} ({})", c.name, origin.site),
            None => format!("{} ({})", origin.camera, origin.site),
        };
        let assessment = self.policy.assess(&objects, &zones, &place);
        let post = inference.post + post_started.elapsed();

        let queue = origin.queued + inference.waited;
        let timings = Timings {
            queue: ms(queue),
            decode: ms(decoded),
            infer: ms(inference.infer),
            post: ms(post),
            total: ms(origin.queued + started.elapsed()),
        };
        let mut event = self.event(
            frame,
            origin,
            size,
            objects,
            zones,
            assessment,
            timings,
            Utc::now(),
        );
        event.motion = motion;
        Ok(event)
    }

    /// The model's detections for a frame of a gated camera, as the gate judged it: those of
    /// the camera's last analysed frame when the view has not changed since (the model
    /// skipped; `tensor` was never filled), else a run of the model, remembered for the next
    /// frames.
    #[allow(clippy::too_many_arguments)]
    async fn gated_inference(
        &self,
        call: GateCall,
        thumbnail: Thumbnail,
        verdict: Verdict,
        frame: &Frame,
        size: ImageSize,
        tensor: Vec<f32>,
        origin: Origin<'_>,
    ) -> Result<(Inference, Option<contract::MotionReport>), AnalysisError> {
        match verdict {
            Verdict::Reuse {
                change,
                detections,
                from,
            } => {
                self.detector.return_buffer(tensor);
                let inference = Inference {
                    detections: detections.to_vec(),
                    waited: Duration::ZERO,
                    infer: Duration::ZERO,
                    post: Duration::ZERO,
                    batch: 0,
                };
                let report = contract::MotionReport {
                    change: Some(round4(change.share)),
                    window_change: Some(round4(change.window)),
                    model_skipped: true,
                    detections_of: Some(from),
                };
                Ok((inference, Some(report)))
            }
            Verdict::Run { change } => {
                let inference = self.detector.detect(tensor, origin.patience).await?;
                let event_id = contract::event_id(origin.site, origin.camera, &frame.frame_id);
                call.gate.analysed(
                    call.key,
                    thumbnail,
                    frame.captured_at,
                    size,
                    &inference.detections,
                    &event_id,
                );
                let report = contract::MotionReport {
                    change: change.map(|c| round4(c.share)),
                    window_change: change.map(|c| round4(c.window)),
                    model_skipped: false,
                    detections_of: None,
                };
                Ok((inference, Some(report)))
            }
        }
    }

    /// Waits until the image's pixels fit the decode budget (at most `patience`).
    async fn reserve_pixels(
        &self,
        probe: &vision::Probe,
        patience: Option<Duration>,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, AnalysisError> {
        // probe() checked the pixels against max_pixels, which the config keeps within the
        // budget, so the request can always be granted eventually.
        let pixels = u32::try_from(probe.pixels()).unwrap_or(u32::MAX);
        let acquire = self.decode_budget.clone().acquire_many_owned(pixels);
        let permit = match patience {
            Some(p) => tokio::time::timeout(p, acquire).await.map_err(|_| {
                AnalysisError::new(
                    ErrorCode::Overloaded,
                    format!("no room to decode within {p:?} (vision.max_decoded_pixels_in_flight)"),
                )
            })?,
            None => acquire.await,
        };
        permit.map_err(|_| AnalysisError::new(ErrorCode::Internal, "the pipeline is shut down"))
    }

    #[allow(clippy::too_many_arguments)]
    fn event(
        &self,
        frame: Frame,
        origin: Origin<'_>,
        image: ImageSize,
        objects: Vec<ObjectReport>,
        zones: Vec<ZoneReport>,
        a: crate::risk::Assessment,
        timings: Timings,
        processed_at: DateTime<Utc>,
    ) -> RiskEvent {
        let mut counts = std::collections::BTreeMap::new();
        for o in objects.iter().filter(|o| !o.low_score) {
            *counts.entry(o.label.clone()).or_insert(0) += 1;
        }
        RiskEvent {
            schema: EVENT_SCHEMA.to_string(),
            event_id: contract::event_id(origin.site, origin.camera, &frame.frame_id),
            frame_id: frame.frame_id,
            site: origin.site.to_string(),
            camera_id: origin.camera.to_string(),
            captured_at: frame.captured_at,
            processed_at,
            risk: Risk {
                score: a.score,
                level: a.level,
            },
            priority: a.priority,
            description: a.description,
            objects,
            counts,
            zones,
            image,
            model: self.detector.info().model_ref(),
            timings_ms: timings,
            meta: frame.meta,
            pose: frame.pose,
            snapshot: None,
            motion: None,
        }
    }
}

/// A gated frame's camera and capture time, for the gate's verdict on the blocking thread.
struct GateCall {
    gate: Arc<Gate>,
    key: (String, String),
    captured_at: DateTime<Utc>,
}

/// A decoded frame's size, letterbox and model input and, for a gated camera, its thumbnail
/// and the gate's verdict.
struct Prepared {
    size: ImageSize,
    letterbox: Letterbox,
    /// Filled unless the verdict is to reuse the last detections.
    tensor: Vec<f32>,
    judged: Option<(Thumbnail, Verdict)>,
}

/// Decode and letterbox, on a blocking thread. A gated camera's frame is judged between the
/// two halves of the letterbox, on the scaled copy: a frame whose model run is skipped does
/// not pay for the tensor.
fn prepare(
    bytes: &[u8],
    probe: &vision::Probe,
    limits: &ImageLimits,
    input_w: u32,
    input_h: u32,
    mut tensor: Vec<f32>,
    gate: &Option<GateCall>,
) -> Result<Prepared, AnalysisError> {
    let image = vision::decode_probed(bytes, probe, limits)?;
    let size = ImageSize {
        width: image.width(),
        height: image.height(),
    };
    let (letterbox, judged) = LETTERBOXER.with(|lb| {
        let mut lb = lb.borrow_mut();
        let letterbox = lb.scale(&image, input_w, input_h)?;
        // From the scaled copy: a fraction of a large frame's pixels.
        let judged = gate.as_ref().map(|call| {
            let (rgb, w, h) = lb.scaled(&image, &letterbox);
            let thumbnail = Thumbnail::of_rgb(rgb, w, h);
            let verdict = call
                .gate
                .judge(&call.key, &thumbnail, call.captured_at, size);
            (thumbnail, verdict)
        });
        if !matches!(judged, Some((_, Verdict::Reuse { .. }))) {
            lb.fill(&image, &letterbox, input_w, input_h, &mut tensor);
        }
        Ok::<_, vision::VisionError>((letterbox, judged))
    })?;
    Ok(Prepared {
        size,
        letterbox,
        tensor,
        judged,
    })
}

fn round4(x: f64) -> f64 {
    (x * 1e4).round() / 1e4
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e5).round() / 100.0
}
