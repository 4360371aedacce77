//! Configuration: `config/vigil.toml` (or `--config PATH`), then `VIGIL_…` environment
//! overrides (`VIGIL_DETECTOR__SESSIONS=2` sets `detector.sessions`). Unknown keys and invalid
//! values fail at start with a message that names the key. Each module owns the settings it
//! uses; this file assembles them and checks what serde cannot.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use crate::contract::{is_token, Encoding};
use crate::detect::DetectorConfig;
use crate::geo::{GeoOrigin, Homography, PointPair, Polygon};
use crate::risk::RiskPolicy;
use crate::vision::ImageLimits;

/// Where `vigil` looks for its configuration when `--config` is not given.
pub const DEFAULT_PATH: &str = "config/vigil.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {0} does not exist")]
    Missing(PathBuf),
    #[error("configuration: {0}")]
    Parse(Box<figment::Error>),
    #[error("configuration key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

/// A value a section of the configuration refuses: its key within the section, and why.
/// [`Invalid::within`] puts the section's name in front of the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct Invalid {
    pub key: String,
    pub message: String,
}

impl Invalid {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Invalid {
            key: key.into(),
            message: message.into(),
        }
    }

    /// The same refusal, its key inside `section` (`detector` + `sessions` → `detector.sessions`).
    pub fn within(self, section: &str) -> Self {
        Invalid {
            key: format!("{section}.{}", self.key),
            message: self.message,
        }
    }
}

impl From<Invalid> for ConfigError {
    fn from(e: Invalid) -> Self {
        ConfigError::Invalid {
            key: e.key,
            message: e.message,
        }
    }
}

impl ConfigError {
    fn invalid(key: impl Into<String>, message: impl std::fmt::Display) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            message: message.to_string(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub nats: NatsConfig,
    pub serve: ServeConfig,
    pub streams: StreamsConfig,
    pub processor: ProcessorConfig,
    pub pipeline: PipelineConfig,
    pub detector: DetectorConfig,
    pub vision: ImageLimits,
    pub risk: RiskPolicy,
    pub archive: ArchiveConfig,
    pub service: ServiceConfig,
    pub scene: crate::scene::SceneConfig,
    pub situations: crate::situations::SituationsConfig,
    pub motion: crate::motion::MotionConfig,
    pub cameras: Vec<CameraConfig>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    /// Server URL(s), comma-separated: the servers of a cluster.
    pub url: String,
    /// Connection name shown by the server's monitoring.
    pub name: String,
    /// Seconds one connection attempt may take. Services keep trying until a server answers.
    pub connect_timeout_s: u64,
    /// User name, with `password` or (better) `password_file`.
    pub user: Option<String>,
    /// Password; prefer `password_file` or `VIGIL_NATS__PASSWORD`. Never printed.
    pub password: Option<String>,
    /// File holding the password (a mounted secret).
    pub password_file: Option<PathBuf>,
    /// File holding an authentication token.
    pub token_file: Option<PathBuf>,
    /// File holding an NKey seed (`SU…`).
    pub nkey_seed_file: Option<PathBuf>,
    /// `.creds` file (JWT + NKey seed) for operator-mode servers.
    pub credentials_file: Option<PathBuf>,
    /// CA certificate(s) that sign the server's certificate (PEM).
    pub tls_ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM), for servers that verify clients.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// Refuse to talk to a server without TLS.
    pub tls_required: bool,
    /// Prefix of this client's reply subjects (default `_INBOX`): with per-user prefixes a
    /// server's permissions keep each client's replies to itself (config/nats-auth.conf).
    pub inbox_prefix: Option<String>,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".into(),
            name: "vigil".into(),
            connect_timeout_s: 5,
            user: None,
            password: None,
            password_file: None,
            token_file: None,
            nkey_seed_file: None,
            credentials_file: None,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            tls_required: false,
            inbox_prefix: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServeConfig {
    /// Longest a stop (SIGINT/SIGTERM) may take, whatever the servers do (seconds): frames
    /// still in hand then are redelivered to another processor after `ack_wait_s`.
    pub drain_timeout_s: u64,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            drain_timeout_s: 20,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamsConfig {
    /// Frames older than this are discarded unprocessed (seconds).
    pub frames_max_age_s: u64,
    /// Backlog kept per camera; beyond it the oldest frames of that camera are dropped.
    pub frames_max_per_camera: i64,
    /// Events are kept in the stream this long (hours); the archive keeps them for good.
    pub events_max_age_h: u64,
    /// Cap on the events stream's size in bytes; 0 means no cap beyond the age.
    pub events_max_bytes: i64,
    /// Dead-letter records are kept this long (hours).
    pub dlq_max_age_h: u64,
    /// Cap on the dead-letter stream's size in bytes; the oldest records go first.
    pub dlq_max_bytes: i64,
    /// Window in which a repeated `Nats-Msg-Id` is dropped as a duplicate (seconds).
    pub duplicate_window_s: u64,
    /// Stream replicas (1 on a single server; 3 on a cluster).
    pub replicas: usize,
    /// Encoding of published events: "msgpack" or "json".
    pub events_encoding: Encoding,
}

impl Default for StreamsConfig {
    fn default() -> Self {
        Self {
            frames_max_age_s: 60,
            frames_max_per_camera: 100,
            events_max_age_h: 168,
            events_max_bytes: 0,
            dlq_max_age_h: 168,
            dlq_max_bytes: 1 << 30,
            duplicate_window_s: 120,
            replicas: 1,
            events_encoding: Encoding::Msgpack,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessorConfig {
    /// Whether `vigil serve` consumes frames.
    pub enabled: bool,
    /// Frames fetched and in processing at once, per `vigil serve` (0: twice the frames the
    /// detector can run at once, `sessions × max_batch`).
    pub max_in_flight: usize,
    /// Seconds before an unacknowledged frame is redelivered.
    pub ack_wait_s: u64,
    /// Deliveries of a frame that keeps failing transiently before it goes to the DLQ.
    pub max_deliver: i64,
    /// Delay before a transiently failed frame is redelivered (milliseconds).
    pub retry_delay_ms: u64,
    /// How often frames dropped by the stream are counted and, if any, logged (seconds).
    pub stats_interval_s: u64,
}

impl Default for ProcessorConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_in_flight: 0,
            ack_wait_s: 30,
            max_deliver: 5,
            retry_delay_ms: 1000,
            stats_interval_s: 10,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Refuse frames and requests from cameras missing in `[[cameras]]` (`unknown_camera`)
    /// instead of analysing them without ground positions.
    pub require_known_cameras: bool,
    /// Frames whose `captured_at` is further ahead of this server's clock are refused
    /// (`bad_request`), as are frames from before 2000 (seconds).
    pub max_clock_ahead_s: u64,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            require_known_cameras: false,
            max_clock_ahead_s: 3600,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArchiveConfig {
    /// Whether `vigil serve` also runs the archiver (`vigil archive` runs it alone).
    pub enabled: bool,
    /// MongoDB connection string (a password in it is never printed).
    pub uri: String,
    /// User name, overriding the URI's; with `password_file`.
    pub username: Option<String>,
    /// File holding the password (a mounted secret).
    pub password_file: Option<PathBuf>,
    /// CA certificate(s) for the server's TLS certificate (PEM); turns TLS on.
    pub tls_ca_file: Option<PathBuf>,
    /// Client certificate and key in one PEM file, for servers that verify clients.
    pub tls_cert_key_file: Option<PathBuf>,
    pub database: String,
    pub collection: String,
    /// Collection of alerts: one document per alert, its newest revision.
    pub alerts_collection: String,
    /// Events written per insert.
    pub batch_size: usize,
    /// Longest wait to fill a batch (milliseconds).
    pub batch_wait_ms: u64,
    /// Longest back-off between retries while MongoDB is unreachable (milliseconds).
    pub retry_max_ms: u64,
    /// Seconds before events an archiver took but did not store are delivered again (to it
    /// or another archiver): how far the archive lags after an archiver dies.
    pub ack_wait_s: u64,
    /// Subject prefix of replayed and re-evaluated messages:
    /// `<prefix>.<events|alerts>.<level>.<site>.<camera>`.
    pub replay_prefix: String,
    pub retention: RetentionConfig,
    pub snapshots: crate::snapshots::SnapshotConfig,
}

/// How long the archive keeps things (days; 0 keeps them for ever). MongoDB's TTL monitor
/// deletes expired documents about once a minute; a changed setting applies at the next start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Events, counted from their capture time.
    pub events_days: u32,
    /// Alerts, counted from their last revision.
    pub alerts_days: u32,
    /// Snapshots (source frames and annotated images), counted from when they were stored.
    pub snapshots_days: u32,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            events_days: 14,
            alerts_days: 365,
            snapshots_days: 30,
        }
    }
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            uri: "mongodb://127.0.0.1:27017".into(),
            username: None,
            password_file: None,
            tls_ca_file: None,
            tls_cert_key_file: None,
            database: "vigil".into(),
            collection: "events".into(),
            alerts_collection: "alerts".into(),
            batch_size: 200,
            batch_wait_ms: 250,
            retry_max_ms: 5_000,
            ack_wait_s: 10,
            replay_prefix: "vigil.replay".into(),
            retention: RetentionConfig::default(),
            snapshots: Default::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceConfig {
    /// Whether `vigil serve` answers `vigil.analyze`.
    pub enabled: bool,
    /// Longest a request waits for an analysis slot and a free detector before the reply is
    /// `overloaded` (milliseconds, counted from its arrival).
    pub queue_timeout_ms: u64,
    /// Requests analysed at once; up to four times as many more wait, the rest are refused
    /// at once with `overloaded`.
    pub max_concurrent: usize,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            queue_timeout_ms: 5_000,
            max_concurrent: 8,
        }
    }
}

/// A camera vigil knows: its ground calibration and zones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CameraConfig {
    pub site: String,
    pub id: String,
    /// Human name used in descriptions; the id when absent.
    #[serde(default)]
    pub name: Option<String>,
    /// Image pixel ↔ ground metre pairs (≥ 4) to fit the homography from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub calibration: Vec<PointPair>,
    /// Or the 3×3 image→ground homography itself, row-major.
    #[serde(default)]
    pub homography: Option<[[f64; 3]; 3]>,
    /// WGS84 position of ground (0, 0); with it objects also get lat/lon.
    #[serde(default)]
    pub origin: Option<GeoOrigin>,
    #[serde(default)]
    pub zones: Vec<ZoneConfig>,
    /// Lines whose crossings are counted (rule line_crossing).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lines: Vec<crate::situations::rules::LineConfig>,
    /// One-sigma error of an object's foot in this camera's image (pixels); default
    /// `scene.pixel_error_px`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pixel_error_px: Option<f64>,
    /// Positions less certain than this are flagged and not counted in zones (metres); default
    /// `scene.max_ground_error_m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ground_error_m: Option<f64>,
    /// A drone's pose uncertainty when its frames do not say it; default `scene.pose_error`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pose_error: Option<crate::contract::PoseError>,
    /// This camera's own rules; each one given replaces the global `[situations.rules]` one.
    #[serde(
        default,
        skip_serializing_if = "crate::situations::CameraRulesConfig::is_empty"
    )]
    pub rules: crate::situations::CameraRulesConfig,
    /// `false`: this camera's frames always run the model (see `[motion]`); default: gated
    /// when `[motion] enabled`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub motion: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZoneConfig {
    pub id: String,
    pub name: String,
    /// One of the kinds under `[risk.zone_kinds]`.
    pub kind: String,
    /// Corners in ground metres (east, north); or give `polygon_geo`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub polygon: Vec<[f64; 2]>,
    /// Corners in WGS84 (lat, lon): one zone serves every drone flying over it (and static
    /// cameras with an `origin`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub polygon_geo: Vec<[f64; 2]>,
}

impl Config {
    /// Reads `path` (or the default path, which may be absent), applies `VIGIL_…` overrides
    /// and validates the result.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let mut figment = Figment::new();
        match path {
            Some(p) if !p.exists() => return Err(ConfigError::Missing(p.to_path_buf())),
            Some(p) => figment = figment.merge(Toml::file(p)),
            None => figment = figment.merge(Toml::file(DEFAULT_PATH)),
        }
        // VIGIL_CONFIG and VIGIL_LOG belong to the command line, not to this tree.
        let env = Env::prefixed("VIGIL_")
            .split("__")
            .ignore(&["config", "log"]);
        Self::from_figment(figment.merge(env))
    }

    /// Parses a TOML document (no environment): for tests and `check-config`.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        Self::from_figment(Figment::new().merge(Toml::string(text)))
    }

    fn from_figment(figment: Figment) -> Result<Config, ConfigError> {
        let config: Config = figment
            .extract()
            .map_err(|e| ConfigError::Parse(Box::new(e)))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks ranges and cross-references; fits every camera's homography.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("nats.connect_timeout_s", self.nats.connect_timeout_s),
            ("streams.frames_max_age_s", self.streams.frames_max_age_s),
            ("streams.events_max_age_h", self.streams.events_max_age_h),
            ("streams.dlq_max_age_h", self.streams.dlq_max_age_h),
            (
                "streams.duplicate_window_s",
                self.streams.duplicate_window_s,
            ),
            ("processor.ack_wait_s", self.processor.ack_wait_s),
            (
                "processor.stats_interval_s",
                self.processor.stats_interval_s,
            ),
            ("archive.ack_wait_s", self.archive.ack_wait_s),
            ("serve.drain_timeout_s", self.serve.drain_timeout_s),
            ("archive.batch_wait_ms", self.archive.batch_wait_ms),
            ("archive.retry_max_ms", self.archive.retry_max_ms),
            ("service.queue_timeout_ms", self.service.queue_timeout_ms),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(ConfigError::invalid(key, "must be greater than 0"));
            }
        }
        if self.streams.frames_max_per_camera < 1 {
            return Err(ConfigError::invalid(
                "streams.frames_max_per_camera",
                "must be at least 1",
            ));
        }
        if self.streams.dlq_max_bytes < 1 {
            return Err(ConfigError::invalid(
                "streams.dlq_max_bytes",
                "must be at least 1",
            ));
        }
        if self.streams.events_max_bytes < 0 {
            return Err(ConfigError::invalid(
                "streams.events_max_bytes",
                "must be 0 (no cap) or more",
            ));
        }
        if !(1..=5).contains(&self.streams.replicas) {
            return Err(ConfigError::invalid(
                "streams.replicas",
                "must be between 1 and 5",
            ));
        }
        if self.processor.max_deliver < 1 {
            return Err(ConfigError::invalid(
                "processor.max_deliver",
                "must be at least 1",
            ));
        }
        for (key, value) in [
            ("archive.batch_size", self.archive.batch_size),
            ("service.max_concurrent", self.service.max_concurrent),
        ] {
            if value == 0 {
                return Err(ConfigError::invalid(key, "must be at least 1"));
            }
        }
        for (key, value) in [
            ("archive.uri", &self.archive.uri),
            ("archive.database", &self.archive.database),
            ("archive.collection", &self.archive.collection),
            ("nats.url", &self.nats.url),
        ] {
            if value.trim().is_empty() {
                return Err(ConfigError::invalid(key, "must not be empty"));
            }
        }
        crate::streams::server_addrs(&self.nats.url)
            .map_err(|e| ConfigError::invalid("nats.url", e))?;
        let prefix = &self.archive.replay_prefix;
        let live = [
            "vigil.frames",
            "vigil.events",
            "vigil.alerts",
            "vigil.tracks",
            "vigil.dlq",
        ];
        if prefix.split('.').any(|t| !crate::contract::is_token(t))
            || live
                .iter()
                .any(|l| prefix == l || prefix.starts_with(&format!("{l}.")))
        {
            return Err(ConfigError::invalid(
                "archive.replay_prefix",
                "dot-separated tokens of [A-Za-z0-9_-], outside the live subjects (vigil.frames, vigil.events, vigil.alerts, vigil.tracks, vigil.dlq)",
            ));
        }
        if self.nats.tls_cert_file.is_some() != self.nats.tls_key_file.is_some() {
            return Err(ConfigError::invalid(
                "nats.tls_cert_file",
                "give both tls_cert_file and tls_key_file, or neither",
            ));
        }
        if self.nats.password.is_some() && self.nats.password_file.is_some() {
            return Err(ConfigError::invalid(
                "nats.password",
                "give password or password_file, not both",
            ));
        }
        if (self.nats.password.is_some() || self.nats.password_file.is_some())
            && self.nats.user.is_none()
        {
            return Err(ConfigError::invalid("nats.user", "a password needs a user"));
        }
        if self.archive.password_file.is_some() && self.archive.username.is_none() {
            return Err(ConfigError::invalid(
                "archive.username",
                "a password_file needs a username",
            ));
        }
        self.detector.validate().map_err(|e| e.within("detector"))?;
        self.vision.validate().map_err(|e| e.within("vision"))?;
        self.risk.validate().map_err(|e| e.within("risk"))?;
        self.archive
            .snapshots
            .validate()
            .map_err(|e| e.within("archive.snapshots"))?;
        self.situations
            .validate()
            .map_err(|e| e.within("situations"))?;
        self.scene.validate().map_err(|e| e.within("scene"))?;
        self.motion.validate().map_err(|e| e.within("motion"))?;
        self.validate_cameras()
    }

    fn validate_cameras(&self) -> Result<(), ConfigError> {
        let mut seen = HashSet::new();
        for (i, camera) in self.cameras.iter().enumerate() {
            let key = |field: &str| format!("cameras[{i}].{field}");
            for (field, value) in [("site", &camera.site), ("id", &camera.id)] {
                if !is_token(value) {
                    return Err(ConfigError::invalid(
                        key(field),
                        format!("{value:?} must match [A-Za-z0-9_-]{{1,64}}"),
                    ));
                }
            }
            if !seen.insert((camera.site.as_str(), camera.id.as_str())) {
                return Err(ConfigError::invalid(
                    key("id"),
                    format!("camera {}/{} is listed twice", camera.site, camera.id),
                ));
            }
            camera
                .ground_model()
                .map_err(|e| e.within(&format!("cameras[{i}]")))?;
            let mut zone_ids = HashSet::new();
            for (j, zone) in camera.zones.iter().enumerate() {
                let zkey = |field: &str| format!("cameras[{i}].zones[{j}].{field}");
                if zone.id.trim().is_empty() || !zone_ids.insert(zone.id.as_str()) {
                    return Err(ConfigError::invalid(
                        zkey("id"),
                        "must be non-empty and unique within the camera",
                    ));
                }
                if !self.risk.zone_kinds.contains_key(&zone.kind) {
                    let known: Vec<_> = self.risk.zone_kinds.keys().collect();
                    return Err(ConfigError::invalid(
                        zkey("kind"),
                        format!("{:?} is not one of risk.zone_kinds {known:?}", zone.kind),
                    ));
                }
                match (zone.polygon.is_empty(), zone.polygon_geo.is_empty()) {
                    (false, true) => {
                        Polygon::new(zone.polygon.clone())
                            .map_err(|e| ConfigError::invalid(zkey("polygon"), e))?;
                    }
                    (true, false) => {
                        if zone.polygon_geo.iter().any(|[lat, lon]| {
                            !((-90.0..=90.0).contains(lat) && (-180.0..=180.0).contains(lon))
                        }) {
                            return Err(ConfigError::invalid(
                                zkey("polygon_geo"),
                                "corners are [lat, lon] in degrees",
                            ));
                        }
                        let origin = GeoOrigin {
                            lat: zone.polygon_geo[0][0],
                            lon: zone.polygon_geo[0][1],
                        };
                        let local = zone
                            .polygon_geo
                            .iter()
                            .map(|[lat, lon]| {
                                let g = origin.from_wgs84(*lat, *lon);
                                [g.x_m, g.y_m]
                            })
                            .collect();
                        Polygon::new(local)
                            .map_err(|e| ConfigError::invalid(zkey("polygon_geo"), e))?;
                    }
                    _ => {
                        return Err(ConfigError::invalid(
                            zkey("polygon"),
                            "give exactly one of polygon (ground metres) or polygon_geo (lat, lon)",
                        ))
                    }
                }
            }
            let mut line_ids = HashSet::new();
            for (j, line) in camera.lines.iter().enumerate() {
                let lkey = |field: &str| format!("cameras[{i}].lines[{j}].{field}");
                if line.id.trim().is_empty() || !line_ids.insert(line.id.as_str()) {
                    return Err(ConfigError::invalid(
                        lkey("id"),
                        "must be non-empty and unique within the camera",
                    ));
                }
                line.validate()
                    .map_err(|e| ConfigError::invalid(lkey("ground"), e))?;
            }
            let rules = crate::situations::camera_rules(self, &camera.site, &camera.id);
            rules
                .rules
                .validate()
                .map_err(|e| e.within(&format!("cameras[{i}].rules")))?;
            // Ground-metre zones need ground metres: a calibration, or an origin (drones).
            let has_ground = !camera.calibration.is_empty()
                || camera.homography.is_some()
                || camera.origin.is_some();
            if camera.zones.iter().any(|z| !z.polygon.is_empty()) && !has_ground {
                return Err(ConfigError::invalid(
                    key("zones"),
                    "zones in ground metres need a calibration, a homography or an origin; or give polygon_geo",
                ));
            }
            if camera.zones.iter().any(|z| !z.polygon_geo.is_empty())
                && camera.origin.is_none()
                && (!camera.calibration.is_empty() || camera.homography.is_some())
            {
                return Err(ConfigError::invalid(
                    key("origin"),
                    "zones in lat/lon on a calibrated camera need its origin",
                ));
            }
            for (field, value) in [
                ("pixel_error_px", camera.pixel_error_px),
                ("max_ground_error_m", camera.max_ground_error_m),
            ] {
                if value.is_some_and(|v| !(v.is_finite() && v >= 0.0)) {
                    return Err(ConfigError::invalid(
                        key(field),
                        "must be a finite number ≥ 0",
                    ));
                }
            }
        }
        Ok(())
    }

    /// Frames fetched at once by one processor.
    pub fn max_in_flight(&self) -> usize {
        match self.processor.max_in_flight {
            0 => self.detector.sessions * self.detector.max_batch * 2,
            n => n,
        }
    }

    /// What `vigil check-config` prints: the resolved configuration (secrets masked) and, per
    /// camera, how well its ground calibration fits.
    pub fn check_report(&self) -> String {
        let mut out = self.to_toml();
        let model = self.detector.model_choice();
        out.push_str(&format!(
            "\n# model\n# {} ({})\n",
            model.path.display(),
            model.reason
        ));
        out.push_str("\n# cameras\n");
        if self.cameras.is_empty() {
            out.push_str("# (none: every camera is analysed without ground positions)\n");
        }
        for camera in &self.cameras {
            let report = match camera.ground_model() {
                Ok(Some(h)) if !camera.calibration.is_empty() => {
                    let e = h.reprojection_error(&camera.calibration);
                    format!(
                        "homography fitted from {} points, reprojection error rms {:.3} m, max {:.3} m",
                        camera.calibration.len(),
                        e.rms_m,
                        e.max_m
                    )
                }
                Ok(Some(_)) => "homography given as a matrix".to_string(),
                Ok(None) => "no ground calibration: objects get no ground position".to_string(),
                Err(e) => e.to_string(),
            };
            out.push_str(&format!(
                "# {}/{} ({}): {report}; {} zone(s)\n",
                camera.site,
                camera.id,
                camera.display_name(),
                camera.zones.len()
            ));
        }
        out
    }

    /// The configuration as TOML, as `check-config` prints it: secrets masked.
    pub fn to_toml(&self) -> String {
        toml::to_string(&self.redacted())
            .unwrap_or_else(|e| format!("# cannot render configuration: {e}\n"))
    }

    /// A copy without secrets: passwords (in their own key or inside a URI) become `***`.
    /// Paths to secret files stay: they are not secrets themselves.
    pub fn redacted(&self) -> Config {
        let mut copy = self.clone();
        if copy.nats.password.is_some() {
            copy.nats.password = Some(MASK.into());
        }
        copy.nats.url = mask_userinfo(&copy.nats.url);
        copy.archive.uri = mask_userinfo(&copy.archive.uri);
        copy
    }
}

const MASK: &str = "***";

/// `scheme://user:password@host…` → `scheme://user:***@host…`, for each comma-separated URL.
pub fn mask_userinfo(url: &str) -> String {
    url.split(',')
        .map(|one| {
            let Some((scheme, rest)) = one.split_once("://") else {
                return one.to_string();
            };
            // The userinfo ends at the last '@' before the first '/' of the path.
            let authority_end = rest.find('/').unwrap_or(rest.len());
            match rest[..authority_end].rfind('@') {
                Some(at) => {
                    let userinfo = &rest[..at];
                    let masked = match userinfo.split_once(':') {
                        Some((user, _)) => format!("{user}:{MASK}"),
                        None => MASK.to_string(),
                    };
                    format!("{scheme}://{masked}{}", &rest[at..])
                }
                None => one.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

impl CameraConfig {
    /// The camera's image→ground homography, if it has a calibration or a matrix. The error
    /// names the offending field.
    pub fn ground_model(&self) -> Result<Option<Homography>, Invalid> {
        if let Some(origin) = &self.origin {
            origin
                .validate()
                .map_err(|e| Invalid::new("origin", e.to_string()))?;
        }
        match (&self.homography, self.calibration.is_empty()) {
            (Some(_), false) => Err(Invalid::new(
                "homography",
                "give either calibration or homography, not both",
            )),
            (Some(rows), true) => Homography::from_matrix(*rows)
                .map(Some)
                .map_err(|e| Invalid::new("homography", e.to_string())),
            (None, false) => Homography::fit(&self.calibration)
                .map(Some)
                .map_err(|e| Invalid::new("calibration", e.to_string())),
            (None, true) => Ok(None),
        }
    }

    pub fn display_name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHIPPED: &str = include_str!("../config/vigil.toml");

    #[test]
    fn shipped_config_parses_and_has_a_calibrated_camera_with_zones() {
        let config = Config::from_toml(SHIPPED).unwrap();
        let camera = config.cameras.first().expect("an example camera");
        assert!(camera.ground_model().unwrap().is_some());
        assert!(!camera.zones.is_empty());
    }

    #[test]
    fn the_shipped_config_documents_exactly_the_defaults() {
        // Every default is written twice (Default impls, config/vigil.toml): they must agree.
        // Only the example camera is the shipped file's own.
        let mut shipped = Config::from_toml(SHIPPED).unwrap();
        shipped.cameras.clear();
        assert_eq!(shipped, Config::default());
    }

    #[test]
    fn secrets_are_masked_when_printed() {
        let text = r#"
[nats]
url = "nats://vigil:s3cret@a:4222,nats://b:4222"
user = "vigil"
password = "hunter2"
[archive]
uri = "mongodb://archiver:p%40ss@db1:27017,db2:27017/?authSource=admin"
"#;
        let printed = Config::from_toml(text).unwrap().to_toml();
        for secret in ["s3cret", "hunter2", "p%40ss"] {
            assert!(!printed.contains(secret), "{secret} in\n{printed}");
        }
        assert!(printed.contains("mongodb://archiver:***@db1:27017,db2:27017/?authSource=admin"));
        assert!(printed.contains("nats://vigil:***@a:4222,nats://b:4222"));
    }

    #[test]
    fn nats_url_lists_are_checked_address_by_address() {
        let ok = Config::from_toml("[nats]\nurl = \"nats://a:4222, nats://b:4223\"\n");
        assert!(ok.is_ok());
        let err = Config::from_toml("[nats]\nurl = \"nats://a:4222,nats://b:port\"\n").unwrap_err();
        assert!(
            matches!(err, ConfigError::Invalid { ref key, .. } if key == "nats.url"),
            "{err}"
        );
    }

    #[test]
    fn empty_config_is_the_defaults() {
        assert_eq!(Config::from_toml("").unwrap(), Config::default());
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::from_toml("[detector]\nsesions = 2\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("sesions"), "{err}");
    }

    #[test]
    fn invalid_value_is_named() {
        let err = Config::from_toml("[detector]\nsessions = 0\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("detector.sessions"), "{err}");
        let err = Config::from_toml("[streams]\nevents_encoding = \"xml\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("events_encoding"), "{err}");
    }

    #[test]
    fn collinear_calibration_is_a_config_error_naming_the_camera() {
        let text = r#"
[[cameras]]
site = "s"
id = "c"
calibration = [
  { image = [0, 0], ground = [0, 0] },
  { image = [10, 10], ground = [1, 1] },
  { image = [20, 20], ground = [2, 2] },
  { image = [30, 30], ground = [3, 3] },
]
"#;
        let err = Config::from_toml(text).unwrap_err().to_string();
        assert!(err.contains("cameras[0].calibration"), "{err}");
    }

    #[test]
    fn zone_kind_must_exist() {
        let text = r#"
[[cameras]]
site = "s"
id = "c"
homography = [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
zones = [{ id = "z", name = "Z", kind = "lava", polygon = [[0, 0], [1, 0], [1, 1]] }]
"#;
        let err = Config::from_toml(text).unwrap_err().to_string();
        assert!(err.contains("cameras[0].zones[0].kind"), "{err}");
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closure type, not ours
    fn environment_overrides_the_file_and_unknown_variables_are_named() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("vigil.toml", "[detector]\nsessions = 2\n")?;
            jail.set_env("VIGIL_DETECTOR__SESSIONS", "3");
            jail.set_env("VIGIL_NATS__URL", "nats://nats:4222");
            jail.set_env("VIGIL_CONFIG", "belongs to the command line");
            let config = Config::load(Some(Path::new("vigil.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(config.detector.sessions, 3);
            assert_eq!(config.nats.url, "nats://nats:4222");
            jail.set_env("VIGIL_DETECTOR__SESION", "3");
            let err = Config::load(Some(Path::new("vigil.toml")))
                .unwrap_err()
                .to_string();
            assert!(err.contains("sesion") && err.contains("VIGIL_"), "{err}");
            let missing = Config::load(Some(Path::new("missing.toml")));
            assert!(matches!(missing, Err(ConfigError::Missing(_))));
            Ok(())
        });
    }
}
