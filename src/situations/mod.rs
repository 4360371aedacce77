//! The situation stage: per-camera state over time. Events in, in `captured_at` order per
//! camera; tracks, rules and alert lifecycles out (see ../shared/DESIGN.md, "Situations").
//!
//! - [`order`]: per-camera ordering window; late events and copies counted and dropped.
//! - [`track`]: ByteTrack-style tracker with real time steps, in ground metres where the
//!   camera has a ground model, in pixels otherwise.
//! - [`rules`]: intrusion, loitering, crowd density, proximity, line crossing, counts, and
//!   stationary objects (which stop counting for the others).
//! - [`alerts`]: the lifecycle: new, update, end, with hysteresis and rate limits.
//! - [`camera`]: one camera's situation, all of the above in order; pure.
//! - [`stage`]: the consumer on VIGIL_EVENTS (one active instance, others on standby),
//!   publishing alerts and tracks, persisting active alerts, rebuilding on take-over.

use serde::{Deserialize, Serialize};

pub mod alerts;
pub mod camera;
pub mod order;
pub mod rules;
pub mod stage;
pub mod track;

use crate::config::{Config, Invalid};
use camera::CameraRules;
use rules::RulesConfig;
use track::TrackerConfig;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SituationsConfig {
    /// Whether `vigil serve` runs the stage (`vigil situations` runs it alone).
    pub enabled: bool,
    /// How long an event waits for earlier-captured ones published after it (milliseconds of
    /// capture time).
    pub reorder_window_ms: u64,
    /// Seconds of VIGIL_EVENTS re-read to rebuild a camera's tracks on take-over.
    pub rebuild_window_s: u64,
    /// Seconds without pulls after which a standby instance takes over (the pinned client's
    /// priority timeout).
    pub failover_timeout_s: u64,
    /// A camera that sends nothing for this long (seconds, wall clock) has its alerts ended
    /// (reason camera_silent).
    pub silence_s: u64,
    /// Seconds a condition must be gone before its alert ends (hysteresis).
    pub end_after_s: f64,
    /// Least seconds between two updates of one alert (escalations go out at once).
    pub update_min_interval_s: f64,
    /// Seconds before an event the stage took but did not apply is delivered again.
    pub ack_wait_s: u64,
    /// Publish each camera's tracks on vigil.tracks.<site>.<camera> after every event.
    pub publish_tracks: bool,
    pub tracker: TrackerConfig,
    pub rules: RulesConfig,
}

impl Default for SituationsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            reorder_window_ms: 500,
            rebuild_window_s: 30,
            failover_timeout_s: 5,
            silence_s: 60,
            end_after_s: 5.0,
            update_min_interval_s: 5.0,
            ack_wait_s: 30,
            publish_tracks: true,
            tracker: TrackerConfig::default(),
            rules: RulesConfig::default(),
        }
    }
}

impl SituationsConfig {
    pub fn validate(&self) -> Result<(), Invalid> {
        let err = |k: &str, m: &str| Err(Invalid::new(k, m));
        if self.failover_timeout_s == 0 || self.ack_wait_s == 0 || self.silence_s == 0 {
            return err(
                "failover_timeout_s",
                "failover_timeout_s, ack_wait_s and silence_s must be greater than 0",
            );
        }
        for (key, value) in [
            ("end_after_s", self.end_after_s),
            ("update_min_interval_s", self.update_min_interval_s),
        ] {
            if !(value.is_finite() && value >= 0.0) {
                return err(key, "must be a finite number ≥ 0");
            }
        }
        self.tracker.validate().map_err(|e| e.within("tracker"))?;
        self.rules.validate().map_err(|e| e.within("rules"))
    }
}

/// The rules one camera is judged by: the global ones, with the camera's own in their place.
pub fn camera_rules(config: &Config, site: &str, camera: &str) -> CameraRules {
    let global = &config.situations.rules;
    let Some(c) = config
        .cameras
        .iter()
        .find(|c| c.site == site && c.id == camera)
    else {
        return CameraRules {
            rules: global.clone(),
            lines: Vec::new(),
            place: format!("{camera} ({site})"),
            origin: None,
        };
    };
    let own = &c.rules;
    let rules = RulesConfig {
        intrusion: own
            .intrusion
            .clone()
            .unwrap_or_else(|| global.intrusion.clone()),
        loitering: own
            .loitering
            .clone()
            .unwrap_or_else(|| global.loitering.clone()),
        crowd: own.crowd.clone().unwrap_or_else(|| global.crowd.clone()),
        proximity: own
            .proximity
            .clone()
            .unwrap_or_else(|| global.proximity.clone()),
        line_crossing: own
            .line_crossing
            .clone()
            .unwrap_or_else(|| global.line_crossing.clone()),
        count: own.count.clone().unwrap_or_else(|| global.count.clone()),
        stationary: own
            .stationary
            .clone()
            .unwrap_or_else(|| global.stationary.clone()),
    };
    CameraRules {
        rules,
        lines: c.lines.clone(),
        place: format!("{} ({site})", c.display_name()),
        origin: c.origin,
    }
}

/// A camera's own rules: each one given replaces the global rule for that camera.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CameraRulesConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub intrusion: Option<rules::IntrusionRule>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loitering: Option<rules::LoiteringRule>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crowd: Option<rules::CrowdRule>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proximity: Option<rules::ProximityRule>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line_crossing: Option<rules::LineCrossingRule>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<rules::CountRule>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stationary: Option<rules::StationaryRule>,
}

impl CameraRulesConfig {
    pub fn is_empty(&self) -> bool {
        *self == CameraRulesConfig::default()
    }
}

/// Whether alert moments without a recent snapshot take their own event's frame (processors
/// hold recent frames and keep the one the stage asks for): snapshots on, `recent_mb` > 0.
pub fn keeps_frames(config: &Config) -> bool {
    let snapshots = &config.archive.snapshots;
    snapshots.enabled && snapshots.recent_mb > 0
}

/// The stage without NATS: events in (per camera in capture order, reordered within the
/// window), the alert messages a live stage would publish out. Replay, re-evaluation with
/// another configuration, and tests drive it.
pub struct Evaluator {
    config: Config,
    life: alerts::Lifecycle,
    cameras: std::collections::BTreeMap<(String, String), camera::CameraSituation>,
}

impl Evaluator {
    pub fn new(config: &Config) -> Evaluator {
        Evaluator {
            config: config.clone(),
            life: alerts::Lifecycle {
                end_after_s: config.situations.end_after_s,
                update_min_interval_s: config.situations.update_min_interval_s,
                language: config.risk.language,
            },
            cameras: std::collections::BTreeMap::new(),
        }
    }

    /// Applies one event; returns the alert messages it released (new, update, end).
    pub fn offer(&mut self, event: crate::contract::RiskEvent) -> Vec<crate::contract::Alert> {
        let key = (event.site.clone(), event.camera_id.clone());
        let (config, life) = (&self.config, self.life);
        let situation = self.cameras.entry(key.clone()).or_insert_with(|| {
            camera::CameraSituation::new(
                &config.situations,
                life,
                camera_rules(config, &key.0, &key.1),
            )
            .keeping_frames(keeps_frames(config))
        });
        let _ = situation.offer(event);
        situation
            .ready()
            .into_iter()
            .flat_map(|a| a.alerts)
            .collect()
    }

    /// The end of the input: every camera's waiting events applied and its open alerts
    /// ended as the stage would end them.
    pub fn finish(mut self) -> Vec<crate::contract::Alert> {
        self.cameras
            .values_mut()
            .flat_map(|s| s.flush())
            .flat_map(|a| a.alerts)
            .collect()
    }
}

/// Runs events through the stage without NATS, everything flushed at the end: the alerts a
/// live stage would publish for these events.
pub fn evaluate(
    config: &Config,
    events: impl IntoIterator<Item = crate::contract::RiskEvent>,
) -> Vec<crate::contract::Alert> {
    let mut evaluator = Evaluator::new(config);
    let mut out: Vec<_> = events
        .into_iter()
        .flat_map(|e| evaluator.offer(e))
        .collect();
    out.extend(evaluator.finish());
    out
}
