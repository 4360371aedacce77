//! The wire contract: frames in, risk events out, error replies and dead letters, and the
//! codec that carries them (MessagePack with named fields by default, JSON when the message
//! says `Content-Type: application/json`). `schemas/` holds the same types as JSON Schemas;
//! a test keeps the two in step.

use std::collections::BTreeMap;

use async_nats::HeaderMap;
use chrono::{DateTime, Utc};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// Version tag carried by every risk event.
pub const EVENT_SCHEMA: &str = "vigil.event/1";
/// Version tag carried by every dead-letter record.
pub const DLQ_SCHEMA: &str = "vigil.dlq/1";
/// Version tag carried by every alert message.
pub const ALERT_SCHEMA: &str = "vigil.alert/1";
/// Version tag carried by every live tracks message.
pub const TRACKS_SCHEMA: &str = "vigil.tracks/1";
/// The header that switches a message to JSON.
pub const CONTENT_TYPE: &str = "Content-Type";
pub const JSON_CONTENT_TYPE: &str = "application/json";
/// Site used by analyze requests that name none.
pub const DEFAULT_SITE: &str = "default";
/// Camera id used by analyze requests that name none.
pub const DEFAULT_CAMERA: &str = "analyze";
const MAX_FRAME_ID_CHARS: usize = 128;
const MAX_TOKEN_CHARS: usize = 64;
const MAX_META_ENTRIES: usize = 64;
const MAX_META_BYTES: usize = 16 * 1024;
/// Longest quote of client input in an error message, a dead letter or a log line (bytes).
pub const MAX_EXCERPT_CHARS: usize = 300;
/// Frames captured before this are refused: no camera vigil serves took them, and a clock
/// that says so is broken (an unset RTC says 1970 or 2000-01-01 00:00).
pub const EARLIEST_CAPTURED_AT: &str = "2000-01-01T00:01:00Z";
/// A MessagePack frame is a map of fields whose values nest at most this deep.
const MAX_MSGPACK_DEPTH: usize = 8;

/// A camera image and what the camera knows about it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Frame {
    pub frame_id: String,
    pub captured_at: DateTime<Utc>,
    /// The bytes as the camera sent them; a `Bytes` handle, so a snapshot keeps them without
    /// a copy.
    #[serde(with = "image_bytes")]
    pub image: bytes::Bytes,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub camera_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pose: Option<Pose>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub meta: BTreeMap<String, String>,
}

/// A drone's pose when it took the frame (conventions: `geo::pose`): its WGS84 position and
/// height above the ground below, where the camera looks (heading clockwise from north;
/// pitch up from the horizon, -90 straight down; roll positive with the image's right side
/// down) and its horizontal field of view.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Pose {
    pub lat: f64,
    pub lon: f64,
    pub alt_m: f64,
    #[serde(default)]
    pub heading_deg: f64,
    #[serde(default)]
    pub pitch_deg: f64,
    #[serde(default)]
    pub roll_deg: f64,
    pub hfov_deg: f64,
    /// One-sigma uncertainties of this pose, when the drone knows them (else the camera's
    /// configured `pose_error`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<PoseError>,
}

/// One-sigma uncertainties of a pose.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoseError {
    /// Horizontal position (metres).
    pub position_m: f64,
    pub alt_m: f64,
    pub heading_deg: f64,
    pub pitch_deg: f64,
    pub roll_deg: f64,
}

/// What vigil concluded about one frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RiskEvent {
    pub schema: String,
    pub event_id: String,
    pub frame_id: String,
    pub site: String,
    pub camera_id: String,
    pub captured_at: DateTime<Utc>,
    pub processed_at: DateTime<Utc>,
    pub risk: Risk,
    pub priority: u8,
    pub description: String,
    pub objects: Vec<ObjectReport>,
    pub counts: BTreeMap<String, u32>,
    pub zones: Vec<ZoneReport>,
    pub image: ImageSize,
    pub model: ModelRef,
    pub timings_ms: Timings,
    pub meta: BTreeMap<String, String>,
    /// The drone's pose when it took the frame, as the frame gave it (drones only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pose: Option<Pose>,
    /// The id of this event's snapshot (`vigil snapshot ID`), when its level asked for one
    /// (`archive.snapshots.min_level`); written after the event, best effort.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// Motion gating (`[motion]`), for frames of gated cameras: how much the view changed
    /// since the camera's last analysed frame, and whether the model was skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub motion: Option<MotionReport>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MotionReport {
    /// Share (0–1) of the frame's 160×120 grey thumbnail that changed against the last
    /// analysed frame; absent when there was none to compare with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<f64>,
    /// Share (0–1) of the most-changed 8×8-pixel window of that thumbnail that changed (what a
    /// small, far person moves); absent with `change`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_change: Option<f64>,
    /// The model did not run: the objects are those of `detections_of`, placed and scored
    /// again for this frame.
    pub model_skipped: bool,
    /// The event whose detections were reused (when skipped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detections_of: Option<String>,
}

impl RiskEvent {
    /// An event of camera s/c with nothing in it: a starting point for tests of later stages
    /// and for tools that make events (load generators).
    pub fn bare(event_id: &str, captured_at: DateTime<Utc>) -> RiskEvent {
        RiskEvent {
            schema: EVENT_SCHEMA.into(),
            event_id: event_id.into(),
            frame_id: event_id.into(),
            site: "s".into(),
            camera_id: "c".into(),
            captured_at,
            processed_at: captured_at,
            risk: Risk {
                score: 0,
                level: Level::None,
            },
            priority: 5,
            description: String::new(),
            objects: Vec::new(),
            counts: Default::default(),
            zones: Vec::new(),
            image: ImageSize {
                width: 800,
                height: 600,
            },
            model: ModelRef {
                name: "m".into(),
                sha256: "0".into(),
            },
            timings_ms: Default::default(),
            meta: Default::default(),
            pose: None,
            snapshot: None,
            motion: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Risk {
    pub score: u8,
    pub level: Level,
}

/// Risk levels, least to most urgent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    None,
    Low,
    Medium,
    High,
    Critical,
}

impl Level {
    pub const ALL: [Level; 5] = [
        Level::None,
        Level::Low,
        Level::Medium,
        Level::High,
        Level::Critical,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Level::None => "none",
            Level::Low => "low",
            Level::Medium => "medium",
            Level::High => "high",
            Level::Critical => "critical",
        }
    }
}

impl std::fmt::Display for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObjectReport {
    pub id: u32,
    pub class_id: u32,
    pub label: String,
    pub confidence: f32,
    pub bbox: BBox,
    pub ground: Option<GroundPosition>,
    pub geo: Option<GeoPosition>,
    pub zones: Vec<String>,
    /// Why `ground` is null, when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_ground: Option<NoGround>,
    /// The ground position's error is beyond the camera's `max_ground_error_m`: reported, but
    /// not counted in zones. Absent when false.
    #[serde(default, skip_serializing_if = "is_false")]
    pub uncertain: bool,
    /// Scored below `detector.confidence` (but at least `detector.track_confidence`): carried
    /// for the tracker's second association stage only; risk, counts, zone occupancy and the
    /// description ignore it. Absent when false.
    #[serde(default, skip_serializing_if = "is_false")]
    pub low_score: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A box in source-image pixels.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BBox {
    pub x1: f32,
    pub y1: f32,
    pub x2: f32,
    pub y2: f32,
}

/// Metres east and north on the camera's ground plane.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GroundPosition {
    pub x_m: f64,
    pub y_m: f64,
    /// One-sigma error radius (metres), from the pixel error on the box bottom and, for
    /// drones, the pose's uncertainty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_m: Option<f64>,
}

impl GroundPosition {
    pub fn at(x_m: f64, y_m: f64) -> Self {
        GroundPosition {
            x_m,
            y_m,
            error_m: None,
        }
    }
}

/// WGS84 degrees.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GeoPosition {
    pub lat: f64,
    pub lon: f64,
    /// One-sigma error radius (metres): the ground position's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_m: Option<f64>,
}

/// Why an object has no ground position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoGround {
    /// The camera has no calibration and the frame no pose.
    NoGroundModel,
    /// The ray through its foot does not reach the ground (at or above the horizon).
    AboveHorizon,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ZoneReport {
    pub id: String,
    pub name: String,
    pub kind: String,
    pub occupancy: u32,
    pub density_per_m2: f64,
    /// The zone's ground area (m²); absent in events from before it was reported.
    #[serde(default)]
    pub area_m2: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageSize {
    pub width: u32,
    pub height: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelRef {
    pub name: String,
    pub sha256: String,
}

/// Where the time went, in milliseconds. `queue` is the wait before decoding started (in the
/// stream and for a free detector), `infer` the model run alone, `post` decoding the model's
/// output, NMS, ground placement and scoring.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    pub queue: f64,
    pub decode: f64,
    pub infer: f64,
    pub post: f64,
    pub total: f64,
}

/// A situation a rule found on one camera, as control rooms receive it: every message says
/// everything (no need to have seen the earlier ones). One alert lives from `new` through
/// any `update`s to one `end`; `revision` rises with each message, and a consumer keeps the
/// highest it has seen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub schema: String,
    /// `<site>.<camera>.<rule>.<zone or line, or "view">.<start, ms since 1970>`: stable for the
    /// life of the situation, and the same when the same events are evaluated again.
    pub alert_id: String,
    pub revision: u32,
    pub state: AlertState,
    /// The rule that raised it: intrusion, loitering, crowd, proximity, line_crossing, count.
    pub rule: String,
    pub level: Level,
    pub priority: u8,
    pub site: String,
    pub camera_id: String,
    /// The zone or line it is about; none for rules over the whole view.
    pub zone: Option<AlertZone>,
    /// The tracked objects involved, as of this revision.
    pub objects: Vec<AlertObject>,
    /// The rule's measure now (see `unit`): seconds inside, people per m², metres, a count.
    pub value: f64,
    pub unit: String,
    /// The highest value and level reached so far.
    pub peak: Peak,
    /// Line crossings so far by direction (line_crossing only).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub crossings: BTreeMap<String, u32>,
    pub started_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    pub end_reason: Option<EndReason>,
    /// One or two sentences in the configured language.
    pub description: String,
    /// The events this revision came from (the most recent, at most 20).
    pub event_ids: Vec<String>,
    /// Snapshots (`vigil snapshot ID`) of the event that started the alert and of the one at
    /// its peak, where those events had one.
    #[serde(default, skip_serializing_if = "AlertSnapshots::is_empty")]
    pub snapshots: AlertSnapshots,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AlertSnapshots {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak: Option<String>,
}

impl AlertSnapshots {
    pub fn is_empty(&self) -> bool {
        self.new.is_none() && self.peak.is_none()
    }

    pub fn refers_to(&self, snapshot: &str) -> bool {
        self.new.as_deref() == Some(snapshot) || self.peak.as_deref() == Some(snapshot)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertState {
    New,
    Update,
    End,
}

impl AlertState {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::New => "new",
            AlertState::Update => "update",
            AlertState::End => "end",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// The condition was gone for `situations.end_after_s`.
    Cleared,
    /// The camera sent nothing for `situations.silence_s`.
    CameraSilent,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertZone {
    pub id: String,
    pub name: String,
    /// The zone's kind (restricted, hazard, crowd…), or "line".
    pub kind: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertObject {
    pub track_id: u64,
    pub class_id: u32,
    pub label: String,
    pub bbox: BBox,
    pub ground: Option<GroundPosition>,
    pub geo: Option<GeoPosition>,
    pub speed_mps: Option<f64>,
    pub heading_deg: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Peak {
    pub value: f64,
    pub level: Level,
    pub at: DateTime<Utc>,
}

/// A camera's current tracks, once per applied event, on `vigil.tracks.<site>.<camera>`
/// (core NATS, not stored): for maps and live dashboards.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrackUpdate {
    pub schema: String,
    pub site: String,
    pub camera_id: String,
    pub event_id: String,
    pub captured_at: DateTime<Utc>,
    pub tracks: Vec<TrackReport>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrackReport {
    pub id: u64,
    pub class_id: u32,
    pub label: String,
    /// confirmed (seen in this frame) or lost (predicted, not seen).
    pub state: String,
    pub bbox: BBox,
    pub ground: Option<GroundPosition>,
    pub geo: Option<GeoPosition>,
    pub speed_mps: Option<f64>,
    pub heading_deg: Option<f64>,
    /// Has not moved for `situations.rules.stationary.after_s`: other rules ignore it.
    pub stationary: bool,
    /// Seconds since the track started.
    pub age_s: f64,
}

/// Body of an analyze error reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorReply {
    pub error: ErrorBody,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
}

/// Why a frame or request was not analysed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    BadImage,
    TooLarge,
    UnknownCamera,
    Overloaded,
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::BadImage => "bad_image",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::UnknownCamera => "unknown_camera",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::Internal => "internal",
        }
    }

    /// The HTTP-style status carried in `Nats-Service-Error-Code`.
    pub fn status(self) -> usize {
        match self {
            ErrorCode::BadRequest | ErrorCode::BadImage => 400,
            ErrorCode::UnknownCamera => 404,
            ErrorCode::TooLarge => 413,
            ErrorCode::Overloaded => 503,
            ErrorCode::Internal => 500,
        }
    }

    /// Whether the same frame may succeed later (and so is worth redelivering).
    pub fn is_transient(self) -> bool {
        matches!(self, ErrorCode::Overloaded | ErrorCode::Internal)
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A frame vigil gave up on, or an event the archive refused, published on
/// `vigil.dlq.<site>.<camera>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub schema: String,
    /// Where vigil gave up: analysing a frame, or archiving its event.
    #[serde(default)]
    pub stage: Stage,
    pub subject: String,
    pub site: String,
    pub camera_id: String,
    pub frame_id: Option<String>,
    /// The refused event's id (archive stage only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    pub reason: ErrorCode,
    pub message: String,
    pub stream_sequence: Option<u64>,
    pub delivered: Option<u64>,
    pub size_bytes: usize,
    pub at: DateTime<Utc>,
}

/// The stage a dead letter comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// The frame could not be analysed (`stream_sequence` is in VIGIL_FRAMES).
    #[default]
    Frame,
    /// The event could not be archived (`stream_sequence` is in VIGIL_EVENTS, where the
    /// event stays for `streams.events_max_age_h`).
    Archive,
}

/// Subjects of the data path.
pub mod subjects {
    use super::Level;

    pub const FRAMES_ALL: &str = "vigil.frames.>";
    pub const EVENTS_ALL: &str = "vigil.events.>";
    pub const ALERTS_ALL: &str = "vigil.alerts.>";
    pub const DLQ_ALL: &str = "vigil.dlq.>";
    pub const ANALYZE: &str = "vigil.analyze";

    pub fn frames(site: &str, camera: &str) -> String {
        format!("vigil.frames.{site}.{camera}")
    }

    pub fn event(level: Level, site: &str, camera: &str) -> String {
        format!("vigil.events.{level}.{site}.{camera}")
    }

    pub fn dlq(site: &str, camera: &str) -> String {
        format!("vigil.dlq.{site}.{camera}")
    }

    pub fn alert(level: Level, site: &str, camera: &str) -> String {
        format!("vigil.alerts.{level}.{site}.{camera}")
    }

    /// A replayed (or re-evaluated) event or alert: `<prefix>.<events|alerts>.<level>.<site>.<camera>`.
    pub fn replay(prefix: &str, kind: &str, level: Level, site: &str, camera: &str) -> String {
        format!("{prefix}.{kind}.{level}.{site}.{camera}")
    }

    pub fn tracks(site: &str, camera: &str) -> String {
        format!("vigil.tracks.{site}.{camera}")
    }

    /// Every event of one camera, whatever its level.
    pub fn camera_events(site: &str, camera: &str) -> String {
        format!("vigil.events.*.{site}.{camera}")
    }

    /// `(site, camera)` of a `vigil.frames.<site>.<camera>` subject.
    pub fn parse_frames(subject: &str) -> Option<(&str, &str)> {
        let rest = subject.strip_prefix("vigil.frames.")?;
        let (site, camera) = rest.split_once('.')?;
        (super::is_token(site) && super::is_token(camera)).then_some((site, camera))
    }
}

/// Whether `s` may be a site or camera token: `[A-Za-z0-9_-]{1,64}`.
pub fn is_token(s: &str) -> bool {
    (1..=MAX_TOKEN_CHARS).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The event id of a frame: the same frame always gets the same id, so a redelivered frame
/// is recognised as a duplicate by the events stream and by the archive.
pub fn event_id(site: &str, camera: &str, frame_id: &str) -> String {
    format!("{site}.{camera}.{frame_id}")
}

/// Why a decoded frame is refused (`bad_request`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FrameError {
    #[error("frame_id must be 1–{MAX_FRAME_ID_CHARS} characters, got {0}")]
    FrameIdLength(usize),
    #[error("frame_id must not contain control characters")]
    FrameIdControl,
    #[error("{field} \"{value}\" must match [A-Za-z0-9_-]{{1,64}}")]
    Token { field: &'static str, value: String },
    #[error("image is empty")]
    EmptyImage,
    #[error("meta must have at most {MAX_META_ENTRIES} entries and {MAX_META_BYTES} bytes")]
    MetaSize,
    #[error("meta key \"{0}\" must be non-empty, without control characters")]
    MetaKey(String),
    #[error("captured_at {at} is before {EARLIEST_CAPTURED_AT}: the camera's clock is not set")]
    CapturedTooEarly { at: DateTime<Utc> },
    #[error("captured_at {at} is more than {ahead_s} s ahead of this server's clock ({now})")]
    CapturedInFuture {
        at: DateTime<Utc>,
        now: DateTime<Utc>,
        ahead_s: i64,
    },
    #[error("pose.{field} is {value}; it must be {range}")]
    Pose {
        field: &'static str,
        value: f64,
        range: &'static str,
    },
}

/// Checks the parts of a frame that the types cannot: ids, tokens, sizes, a plausible capture
/// time (not before [`EARLIEST_CAPTURED_AT`], at most `max_ahead` after `now`), a finite pose
/// within range.
pub fn validate_frame(
    frame: &Frame,
    now: DateTime<Utc>,
    max_ahead: chrono::Duration,
) -> Result<(), FrameError> {
    let id = &frame.frame_id;
    let chars = id.chars().count();
    if chars == 0 || chars > MAX_FRAME_ID_CHARS {
        return Err(FrameError::FrameIdLength(chars));
    }
    // The id travels in the Nats-Msg-Id header, where control characters would break framing.
    if id.chars().any(|c| c.is_control()) {
        return Err(FrameError::FrameIdControl);
    }
    for (field, value) in [("site", &frame.site), ("camera_id", &frame.camera_id)] {
        if let Some(v) = value {
            if !is_token(v) {
                let value = excerpt(v, MAX_TOKEN_CHARS + 2);
                return Err(FrameError::Token { field, value });
            }
        }
    }
    if frame.image.is_empty() {
        return Err(FrameError::EmptyImage);
    }
    // meta is copied into the event, the reply and the archive: keep it small enough that an
    // event always fits where its frame did, and its keys valid as document field names.
    let meta_bytes: usize = frame.meta.iter().map(|(k, v)| k.len() + v.len()).sum();
    if frame.meta.len() > MAX_META_ENTRIES || meta_bytes > MAX_META_BYTES {
        return Err(FrameError::MetaSize);
    }
    if let Some(key) = frame
        .meta
        .keys()
        .find(|k| k.is_empty() || k.chars().any(|c| c.is_control()))
    {
        return Err(FrameError::MetaKey(excerpt(key, 64)));
    }
    let at = frame.captured_at;
    if at < earliest_captured_at() {
        return Err(FrameError::CapturedTooEarly { at });
    }
    if at > now + max_ahead {
        let ahead_s = max_ahead.num_seconds();
        return Err(FrameError::CapturedInFuture { at, now, ahead_s });
    }
    if let Some(pose) = &frame.pose {
        pose.validate()?;
    }
    Ok(())
}

fn earliest_captured_at() -> DateTime<Utc> {
    // A constant string that parses: checked by a unit test.
    EARLIEST_CAPTURED_AT
        .parse()
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

impl Pose {
    /// Every field finite and within its range.
    pub fn validate(&self) -> Result<(), FrameError> {
        let checks: [(&'static str, f64, f64, f64, &'static str); 7] = [
            ("lat", self.lat, -90.0, 90.0, "between -90 and 90 degrees"),
            (
                "lon",
                self.lon,
                -180.0,
                180.0,
                "between -180 and 180 degrees",
            ),
            (
                "alt_m",
                self.alt_m,
                0.0,
                20_000.0,
                "between 0 and 20000 metres",
            ),
            (
                "heading_deg",
                self.heading_deg,
                -360.0,
                360.0,
                "between -360 and 360 degrees",
            ),
            (
                "pitch_deg",
                self.pitch_deg,
                -90.0,
                90.0,
                "between -90 and 90 degrees",
            ),
            (
                "roll_deg",
                self.roll_deg,
                -180.0,
                180.0,
                "between -180 and 180 degrees",
            ),
            (
                "hfov_deg",
                self.hfov_deg,
                1.0,
                179.0,
                "between 1 and 179 degrees",
            ),
        ];
        for (field, value, low, high, range) in checks {
            if !(value.is_finite() && (low..=high).contains(&value)) {
                return Err(FrameError::Pose {
                    field,
                    value,
                    range,
                });
            }
        }
        if let Some(e) = &self.error {
            let errors = [
                ("error.position_m", e.position_m),
                ("error.alt_m", e.alt_m),
                ("error.heading_deg", e.heading_deg),
                ("error.pitch_deg", e.pitch_deg),
                ("error.roll_deg", e.roll_deg),
            ];
            for (field, value) in errors {
                if !(value.is_finite() && (0.0..=1000.0).contains(&value)) {
                    return Err(FrameError::Pose {
                        field,
                        value,
                        range: "between 0 and 1000",
                    });
                }
            }
        }
        Ok(())
    }
}

/// The start of `text`, control characters escaped, at most `max_bytes` long (plus a note
/// saying how much was left out): whatever a client sends, an error message, a dead letter or
/// a log line that quotes it stays small.
pub fn excerpt(text: &str, max_bytes: usize) -> String {
    let mut out = String::with_capacity(max_bytes.min(text.len()) + 24);
    let mut rest = 0;
    for (i, c) in text.char_indices() {
        let before = out.len();
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
        if out.len() > max_bytes {
            out.truncate(before);
            rest = text.len() - i;
            break;
        }
    }
    if rest > 0 {
        out.push_str(&format!("… ({rest} more bytes)"));
    }
    out
}

/// `message` cut to [`MAX_EXCERPT_CHARS`] bytes, control characters escaped.
pub fn bounded(message: &str) -> String {
    if message.len() <= MAX_EXCERPT_CHARS && !message.chars().any(|c| c.is_control()) {
        return message.to_string();
    }
    excerpt(message, MAX_EXCERPT_CHARS)
}

/// How a message body is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    #[default]
    Msgpack,
    Json,
}

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("not valid MessagePack for this message: {0}")]
    Msgpack(#[from] rmp_serde::decode::Error),
    #[error("not a frame: {0}")]
    Shape(&'static str),
    #[error("not valid MessagePack: {0}")]
    MsgpackValue(#[from] rmpv::decode::Error),
    #[error("{0} bytes after the end of the message")]
    Trailing(usize),
    #[error("not valid JSON for this message: {0}")]
    Json(#[from] serde_json::Error),
    #[error("could not encode MessagePack: {0}")]
    MsgpackEncode(#[from] rmp_serde::encode::Error),
}

impl Encoding {
    /// The encoding a message declares through its headers.
    pub fn of(headers: Option<&HeaderMap>) -> Encoding {
        let declared = headers
            .and_then(|h| h.get(CONTENT_TYPE))
            .map(|v| v.as_str());
        match declared {
            Some(ct)
                if ct
                    .trim()
                    .to_ascii_lowercase()
                    .starts_with(JSON_CONTENT_TYPE) =>
            {
                Encoding::Json
            }
            _ => Encoding::Msgpack,
        }
    }

    pub fn decode<T: DeserializeOwned>(self, body: &[u8]) -> Result<T, CodecError> {
        Ok(match self {
            Encoding::Msgpack => rmp_serde::from_slice(body)?,
            Encoding::Json => serde_json::from_slice(body)?,
        })
    }

    pub fn encode<T: Serialize>(self, value: &T) -> Result<Vec<u8>, CodecError> {
        Ok(match self {
            Encoding::Msgpack => rmp_serde::to_vec_named(value)?,
            Encoding::Json => serde_json::to_vec(value)?,
        })
    }

    /// Decodes a frame, holding it to the documented shape: a map with named fields (not the
    /// array form serde would also take), the image as bytes (a MessagePack bin, a base64 string
    /// in JSON; not an array of numbers), `pose` and `meta` as maps, nothing after the body.
    pub fn decode_frame(self, body: &[u8]) -> Result<Frame, CodecError> {
        match self {
            Encoding::Msgpack => {
                check_msgpack_frame(body)?;
                Ok(rmp_serde::from_slice(body)?)
            }
            Encoding::Json => {
                let value: serde_json::Value = serde_json::from_slice(body)?;
                check_json_frame(&value)?;
                Ok(serde_json::from_value(value)?)
            }
        }
    }

    /// Headers that declare this encoding (none for the MessagePack default).
    pub fn headers(self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if self == Encoding::Json {
            headers.insert(CONTENT_TYPE, JSON_CONTENT_TYPE);
        }
        headers
    }
}

fn check_msgpack_frame(body: &[u8]) -> Result<(), CodecError> {
    use rmpv::ValueRef;
    let mut rest = body;
    let value = rmpv::decode::read_value_ref_with_max_depth(&mut rest, MAX_MSGPACK_DEPTH)?;
    let ValueRef::Map(fields) = value else {
        return Err(CodecError::Shape(
            "a frame is a MessagePack map of named fields",
        ));
    };
    if !rest.is_empty() {
        return Err(CodecError::Trailing(rest.len()));
    }
    for (key, value) in &fields {
        let name = match key {
            ValueRef::String(s) => s.as_str(),
            _ => None,
        };
        let ok = match name {
            Some("image") => matches!(value, ValueRef::Binary(_)),
            Some("pose") | Some("meta") => matches!(value, ValueRef::Map(_) | ValueRef::Nil),
            Some(_) => true,
            None => return Err(CodecError::Shape("frame field names are strings")),
        };
        if !ok {
            return Err(CodecError::Shape(
                "image must be a bin, pose and meta maps (with named fields)",
            ));
        }
    }
    Ok(())
}

fn check_json_frame(value: &serde_json::Value) -> Result<(), CodecError> {
    use serde_json::Value;
    let Value::Object(fields) = value else {
        return Err(CodecError::Shape("a frame is a JSON object"));
    };
    for (key, value) in fields {
        let ok = match key.as_str() {
            "image" => value.is_string(),
            "pose" | "meta" => matches!(value, Value::Object(_) | Value::Null),
            _ => true,
        };
        if !ok {
            return Err(CodecError::Shape(
                "image must be a base64 string, pose and meta objects",
            ));
        }
    }
    Ok(())
}

/// Image bytes: a MessagePack bin, or a base64 string in JSON.
mod image_bytes {
    use base64::{engine::general_purpose::STANDARD, Engine};
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &bytes::Bytes, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&STANDARD.encode(bytes))
        } else {
            s.serialize_bytes(bytes)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<bytes::Bytes, D::Error> {
        if d.is_human_readable() {
            let text = String::deserialize(d)?;
            STANDARD
                .decode(text.trim())
                .map(bytes::Bytes::from)
                .map_err(|e| D::Error::custom(format!("image is not valid base64: {e}")))
        } else {
            Ok(serde_bytes::ByteBuf::deserialize(d)?.into_vec().into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame() -> Frame {
        Frame {
            frame_id: "f-1".into(),
            captured_at: "2026-11-26T12:00:00.250Z".parse().unwrap(),
            image: vec![0xff, 0xd8, 0xff, 0x00, 0x01].into(),
            site: Some("seoul-hq".into()),
            camera_id: Some("gate_2".into()),
            pose: None,
            meta: BTreeMap::from([("lane".into(), "3".into())]),
        }
    }

    #[test]
    fn frame_round_trips_in_both_encodings() {
        for enc in [Encoding::Msgpack, Encoding::Json] {
            let bytes = enc.encode(&frame()).unwrap();
            let back: Frame = enc.decode(&bytes).unwrap();
            assert_eq!(back, frame(), "{enc:?}");
        }
    }

    #[test]
    fn msgpack_uses_named_fields_and_bin_for_the_image() {
        let bytes = Encoding::Msgpack.encode(&frame()).unwrap();
        let value: rmpv::Value = rmpv::decode::read_value(&mut &bytes[..]).unwrap();
        let map = value.as_map().unwrap();
        let image = map
            .iter()
            .find(|(k, _)| k.as_str() == Some("image"))
            .unwrap();
        assert!(matches!(image.1, rmpv::Value::Binary(_)));
    }

    #[test]
    fn json_carries_the_image_as_base64() {
        let json: serde_json::Value =
            serde_json::from_slice(&Encoding::Json.encode(&frame()).unwrap()).unwrap();
        assert_eq!(json["image"], "/9j/AAE=");
    }

    #[test]
    fn encoding_follows_content_type() {
        let mut h = HeaderMap::new();
        assert_eq!(Encoding::of(Some(&h)), Encoding::Msgpack);
        h.insert(CONTENT_TYPE, "application/json; charset=utf-8");
        assert_eq!(Encoding::of(Some(&h)), Encoding::Json);
        assert_eq!(Encoding::of(None), Encoding::Msgpack);
    }

    #[test]
    fn tokens_and_subjects() {
        assert!(is_token("cam-01_A"));
        assert!(!is_token("cam.01"));
        assert!(!is_token(""));
        assert!(!is_token(&"x".repeat(65)));
        assert_eq!(
            subjects::parse_frames("vigil.frames.site.cam"),
            Some(("site", "cam"))
        );
        assert_eq!(subjects::parse_frames("vigil.frames.site.cam.extra"), None);
        assert_eq!(
            subjects::event(Level::High, "s", "c"),
            "vigil.events.high.s.c"
        );
    }

    fn check(f: &Frame) -> Result<(), FrameError> {
        let now = "2026-11-26T12:00:01Z".parse().unwrap();
        validate_frame(f, now, chrono::Duration::seconds(3600))
    }

    #[test]
    fn frame_validation_names_the_problem() {
        let mut f = frame();
        f.frame_id = "x".repeat(129);
        assert_eq!(check(&f), Err(FrameError::FrameIdLength(129)));
        let mut f = frame();
        f.camera_id = Some("bad camera".into());
        assert!(matches!(
            check(&f),
            Err(FrameError::Token {
                field: "camera_id",
                ..
            })
        ));
        let mut f = frame();
        f.frame_id = "a\r\nb".into();
        assert_eq!(check(&f), Err(FrameError::FrameIdControl));
        let mut f = frame();
        f.frame_id = "a\u{85}b".into(); // a C1 control character
        assert_eq!(check(&f), Err(FrameError::FrameIdControl));
        let mut f = frame();
        f.meta.insert("a\0b".into(), "x".into());
        assert!(matches!(check(&f), Err(FrameError::MetaKey(_))));
        let mut f = frame();
        f.meta.insert("big".into(), "x".repeat(MAX_META_BYTES));
        assert_eq!(check(&f), Err(FrameError::MetaSize));
        assert_eq!(check(&frame()), Ok(()));
    }

    #[test]
    fn capture_times_outside_a_plausible_range_are_refused() {
        assert!(earliest_captured_at() > DateTime::<Utc>::MIN_UTC);
        let mut f = frame();
        for early in [
            "0000-01-01T00:00:00Z",
            "1970-01-01T00:00:00Z",
            "2000-01-01T00:00:00Z",
        ] {
            f.captured_at = early.parse().unwrap();
            assert!(
                matches!(check(&f), Err(FrameError::CapturedTooEarly { .. })),
                "{early}"
            );
        }
        f.captured_at = "2026-11-26T12:59:00Z".parse().unwrap();
        assert_eq!(
            check(&f),
            Ok(()),
            "59 minutes ahead is within the hour allowed"
        );
        f.captured_at = "2026-11-26T13:01:02Z".parse().unwrap();
        assert!(matches!(
            check(&f),
            Err(FrameError::CapturedInFuture { .. })
        ));
        f.captured_at = "9999-12-31T23:59:59Z".parse().unwrap();
        assert!(matches!(
            check(&f),
            Err(FrameError::CapturedInFuture { .. })
        ));
    }

    #[test]
    fn a_pose_must_be_finite_and_in_range() {
        let good = Pose {
            lat: 37.5,
            lon: 127.0,
            alt_m: 60.0,
            heading_deg: 90.0,
            pitch_deg: -60.0,
            roll_deg: 0.0,
            hfov_deg: 84.0,
            error: None,
        };
        let mut f = frame();
        f.pose = Some(good);
        assert_eq!(check(&f), Ok(()));
        for (field, bad) in [
            (
                "lat",
                Pose {
                    lat: f64::NAN,
                    ..good
                },
            ),
            ("lon", Pose { lon: 181.0, ..good }),
            (
                "alt_m",
                Pose {
                    alt_m: f64::INFINITY,
                    ..good
                },
            ),
            (
                "alt_m",
                Pose {
                    alt_m: -1.0,
                    ..good
                },
            ),
            (
                "hfov_deg",
                Pose {
                    hfov_deg: 0.0,
                    ..good
                },
            ),
            (
                "pitch_deg",
                Pose {
                    pitch_deg: f64::NEG_INFINITY,
                    ..good
                },
            ),
        ] {
            f.pose = Some(bad);
            assert!(
                matches!(check(&f), Err(FrameError::Pose { field: name, .. }) if name == field),
                "{field}"
            );
        }
    }

    #[test]
    fn excerpts_are_bounded_and_escaped() {
        let hostile = "\u{1}".repeat(500_000);
        let e = excerpt(&hostile, 10);
        assert!(e.len() < 100, "{e}");
        assert!(
            e.starts_with("\\u{1}") && e.ends_with("(499998 more bytes)"),
            "{e}"
        );
        assert_eq!(excerpt("cam-1", 10), "cam-1");
        let long = bounded(&format!("invalid type: string {hostile:?}"));
        assert!(long.len() < MAX_EXCERPT_CHARS + 40, "{long}");
        assert_eq!(bounded("short and clean"), "short and clean");
    }

    #[test]
    fn frames_must_have_the_documented_shape() {
        let good = Encoding::Msgpack.encode(&frame()).unwrap();
        assert_eq!(Encoding::Msgpack.decode_frame(&good).unwrap(), frame());
        // Trailing bytes after the body.
        let trailing = [good.as_slice(), b"xx"].concat();
        assert!(matches!(
            Encoding::Msgpack.decode_frame(&trailing),
            Err(CodecError::Trailing(2))
        ));
        // The array (tuple) form serde would also accept.
        let array = rmp_serde::to_vec(&frame()).unwrap();
        assert!(matches!(
            Encoding::Msgpack.decode_frame(&array),
            Err(CodecError::Shape(_))
        ));
        // The image as an array of integers.
        let mut value = rmpv::decode::read_value(&mut &good[..]).unwrap();
        if let rmpv::Value::Map(fields) = &mut value {
            for (k, v) in fields.iter_mut() {
                if k.as_str() == Some("image") {
                    *v = rmpv::Value::Array(vec![
                        rmpv::Value::from(255u8),
                        rmpv::Value::from(216u8),
                    ]);
                }
            }
        }
        let mut ints = Vec::new();
        rmpv::encode::write_value(&mut ints, &value).unwrap();
        assert!(matches!(
            Encoding::Msgpack.decode_frame(&ints),
            Err(CodecError::Shape(_))
        ));
        // Nesting deeper than a frame ever needs.
        let mut deep = rmpv::Value::Nil;
        for _ in 0..50 {
            deep = rmpv::Value::Array(vec![deep]);
        }
        let mut nested = Vec::new();
        let map = rmpv::Value::Map(vec![(rmpv::Value::from("extra"), deep)]);
        rmpv::encode::write_value(&mut nested, &map).unwrap();
        assert!(matches!(
            Encoding::Msgpack.decode_frame(&nested),
            Err(CodecError::MsgpackValue(_))
        ));
        // JSON: an array, the image as numbers, trailing text.
        let json = Encoding::Json.encode(&frame()).unwrap();
        assert_eq!(Encoding::Json.decode_frame(&json).unwrap(), frame());
        let as_array =
            serde_json::to_vec(&serde_json::json!(["f-1", "2026-11-26T12:00:00Z", "/9j/"]))
                .unwrap();
        assert!(matches!(
            Encoding::Json.decode_frame(&as_array),
            Err(CodecError::Shape(_))
        ));
        let numbers = br#"{"frame_id":"a","captured_at":"2026-11-26T12:00:00Z","image":[255,216]}"#;
        assert!(matches!(
            Encoding::Json.decode_frame(numbers),
            Err(CodecError::Shape(_))
        ));
        let trailing = [json.as_slice(), b" {}"].concat();
        assert!(matches!(
            Encoding::Json.decode_frame(&trailing),
            Err(CodecError::Json(_))
        ));
    }

    #[test]
    fn missing_required_field_is_a_decode_error() {
        let err = Encoding::Json
            .decode::<Frame>(br#"{"frame_id":"a","image":""}"#)
            .unwrap_err();
        assert!(err.to_string().contains("captured_at"), "{err}");
    }
}
