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

/// A camera image and what the camera knows about it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Frame {
    pub frame_id: String,
    pub captured_at: DateTime<Utc>,
    #[serde(with = "image_bytes")]
    pub image: Vec<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub camera_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pose: Option<Pose>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub meta: BTreeMap<String, String>,
}

/// A drone's pose when it took the frame.
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
}

/// A box in source-image pixels.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BBox {
    pub x1: f32,
    pub y1: f32,
    pub x2: f32,
    pub y2: f32,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GroundPosition {
    pub x_m: f64,
    pub y_m: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GeoPosition {
    pub lat: f64,
    pub lon: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ZoneReport {
    pub id: String,
    pub name: String,
    pub kind: String,
    pub occupancy: u32,
    pub density_per_m2: f64,
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

/// A frame vigil gave up on, published on `vigil.dlq.<site>.<camera>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub schema: String,
    pub subject: String,
    pub site: String,
    pub camera_id: String,
    pub frame_id: Option<String>,
    pub reason: ErrorCode,
    pub message: String,
    pub stream_sequence: Option<u64>,
    pub delivered: Option<u64>,
    pub size_bytes: usize,
    pub at: DateTime<Utc>,
}

/// Subjects of the data path.
pub mod subjects {
    use super::Level;

    pub const FRAMES_ALL: &str = "vigil.frames.>";
    pub const EVENTS_ALL: &str = "vigil.events.>";
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

/// Checks the parts of a frame that the types cannot: id lengths and token syntax.
pub fn validate_frame(frame: &Frame) -> Result<(), String> {
    let id = &frame.frame_id;
    let chars = id.chars().count();
    if chars == 0 || chars > MAX_FRAME_ID_CHARS {
        return Err(format!(
            "frame_id must be 1–{MAX_FRAME_ID_CHARS} characters, got {chars}"
        ));
    }
    // The id travels in the Nats-Msg-Id header, where control characters would break framing.
    if id.chars().any(|c| c.is_ascii_control()) {
        return Err("frame_id must not contain control characters".into());
    }
    for (field, value) in [("site", &frame.site), ("camera_id", &frame.camera_id)] {
        if let Some(v) = value {
            if !is_token(v) {
                return Err(format!("{field} {v:?} must match [A-Za-z0-9_-]{{1,64}}"));
            }
        }
    }
    if frame.image.is_empty() {
        return Err("image is empty".into());
    }
    // meta is copied into the event, the reply and the archive: keep it small enough that an
    // event always fits where its frame did, and its keys valid as document field names.
    let meta_bytes: usize = frame.meta.iter().map(|(k, v)| k.len() + v.len()).sum();
    if frame.meta.len() > MAX_META_ENTRIES || meta_bytes > MAX_META_BYTES {
        return Err(format!(
            "meta must have at most {MAX_META_ENTRIES} entries and {MAX_META_BYTES} bytes"
        ));
    }
    if let Some(key) = frame
        .meta
        .keys()
        .find(|k| k.is_empty() || k.chars().any(|c| c.is_ascii_control()))
    {
        return Err(format!(
            "meta key {key:?} must be non-empty, without control characters"
        ));
    }
    Ok(())
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

    /// Headers that declare this encoding (none for the MessagePack default).
    pub fn headers(self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if self == Encoding::Json {
            headers.insert(CONTENT_TYPE, JSON_CONTENT_TYPE);
        }
        headers
    }
}

/// Image bytes: a MessagePack bin, or a base64 string in JSON.
mod image_bytes {
    use base64::{engine::general_purpose::STANDARD, Engine};
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&STANDARD.encode(bytes))
        } else {
            s.serialize_bytes(bytes)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        if d.is_human_readable() {
            let text = String::deserialize(d)?;
            STANDARD
                .decode(text.trim())
                .map_err(|e| D::Error::custom(format!("image is not valid base64: {e}")))
        } else {
            Ok(serde_bytes::ByteBuf::deserialize(d)?.into_vec())
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
            image: vec![0xff, 0xd8, 0xff, 0x00, 0x01],
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

    #[test]
    fn frame_validation_names_the_problem() {
        let mut f = frame();
        f.frame_id = "x".repeat(129);
        assert!(validate_frame(&f).unwrap_err().contains("frame_id"));
        let mut f = frame();
        f.camera_id = Some("bad camera".into());
        assert!(validate_frame(&f).unwrap_err().contains("camera_id"));
        let mut f = frame();
        f.frame_id = "a\r\nb".into();
        assert!(validate_frame(&f).is_err());
        let mut f = frame();
        f.meta.insert("a\0b".into(), "x".into());
        assert!(validate_frame(&f).unwrap_err().contains("meta key"));
        let mut f = frame();
        f.meta.insert("big".into(), "x".repeat(MAX_META_BYTES));
        assert!(validate_frame(&f).unwrap_err().contains("meta"));
        assert!(validate_frame(&frame()).is_ok());
    }

    #[test]
    fn missing_required_field_is_a_decode_error() {
        let err = Encoding::Json
            .decode::<Frame>(br#"{"frame_id":"a","image":""}"#)
            .unwrap_err();
        assert!(err.to_string().contains("captured_at"), "{err}");
    }
}
