//! One camera's situation: its events in capture order through the tracker, the rules and the
//! alert lifecycle. Pure: no I/O, no wall clock; the same events give the same output.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use super::alerts::{Active, AlertBook, Lifecycle, Moment};
use super::order::{Offer, Reorder};
use super::rules::{seconds, LineConfig, RuleState, RulesConfig};
use super::track::{Observation, Track, TrackState, Tracker};
use super::SituationsConfig;
use crate::contract::{Alert, EndReason, RiskEvent, TrackReport, TrackUpdate, TRACKS_SCHEMA};

/// What applying one event produced.
#[derive(Debug, Clone)]
pub struct Applied {
    pub event_id: String,
    pub captured_at: DateTime<Utc>,
    pub alerts: Vec<Alert>,
    pub tracks: TrackUpdate,
    /// The event, when an alert now references its frame as a snapshot that the event did not
    /// have: the stage asks the processors to keep it (see `keeping_frames`).
    pub keep: Option<Box<RiskEvent>>,
}

/// How one camera is judged: the rules (the global ones, with the camera's own in their
/// place), its lines, its name.
#[derive(Debug, Clone)]
pub struct CameraRules {
    pub rules: RulesConfig,
    pub lines: Vec<LineConfig>,
    pub place: String,
    /// The camera's configured origin: drone frames' ground metres are relative to it.
    pub origin: Option<crate::geo::GeoOrigin>,
}

/// An alert without a snapshot of its own moment takes the camera's latest one when it is at
/// most this old (capture time).
const SNAPSHOT_RECENT_MS: i64 = 2_000;

pub struct CameraSituation {
    reorder: Reorder<RiskEvent>,
    tracker: Tracker,
    state: RuleState,
    book: AlertBook,
    rules: CameraRules,
    life: Lifecycle,
    /// Where a drone without a configured origin was first seen: its tracks are kept in
    /// metres from there, since its events' ground metres move with it.
    anchor: Option<crate::geo::GeoOrigin>,
    /// The camera's latest snapshot id and its capture time.
    last_snapshot: Option<(String, DateTime<Utc>)>,
    /// Whether an alert moment without a recent snapshot takes its own event's frame (which
    /// the stage then asks the processors to keep).
    keep_frames: bool,
}

impl CameraSituation {
    pub fn new(config: &SituationsConfig, life: Lifecycle, rules: CameraRules) -> Self {
        CameraSituation {
            reorder: Reorder::new(std::time::Duration::from_millis(config.reorder_window_ms)),
            tracker: Tracker::new(config.tracker.clone()),
            state: RuleState::default(),
            book: AlertBook::default(),
            rules,
            life,
            anchor: None,
            last_snapshot: None,
            keep_frames: false,
        }
    }

    /// Gives every alert start and peak a snapshot: a moment without a recent one takes its
    /// own event's frame, and `Applied::keep` says so (the live stage asks the processors,
    /// which hold recent frames, to store it).
    pub fn keeping_frames(mut self, keep: bool) -> Self {
        self.keep_frames = keep;
        self
    }

    /// Queues an event for its turn (see `order.rs`).
    pub fn offer(&mut self, event: RiskEvent) -> Offer {
        let (at, id) = (event.captured_at, event.event_id.clone());
        self.reorder.offer(at, &id, event)
    }

    /// Applies the events whose turn has come.
    pub fn ready(&mut self) -> Vec<Applied> {
        let events = self.reorder.ready();
        events.into_iter().map(|e| self.apply(e)).collect()
    }

    /// Applies everything waiting.
    pub fn flush(&mut self) -> Vec<Applied> {
        let events = self.reorder.flush();
        events.into_iter().map(|e| self.apply(e)).collect()
    }

    /// Applies an event without publishing anything: rebuilding tracks and rule memory from
    /// events another instance already judged.
    pub fn warm_up(&mut self, event: &RiskEvent) {
        let t = seconds(event.captured_at);
        let observations = self.observations(event);
        let tracks = self.tracker.update(t, &observations);
        let _ = self
            .state
            .evaluate(&self.rules.rules, &self.rules.lines, event, tracks);
        self.reorder.resume_after(event.captured_at);
    }

    /// Treats events up to `at` as applied (by another instance): older ones arriving now are
    /// late.
    pub fn resume_after(&mut self, at: DateTime<Utc>) {
        self.reorder.resume_after(at);
    }

    /// Ends every active alert (the camera went silent).
    pub fn end_all(&mut self, at: DateTime<Utc>, reason: EndReason) -> Vec<Alert> {
        self.book.end_all(&self.life, &self.rules.place, at, reason)
    }

    pub fn active(&self) -> Vec<Active> {
        self.book.active()
    }

    pub fn restore(&mut self, alerts: Vec<Active>) {
        self.book.restore(alerts);
    }

    /// Events waiting for their turn.
    pub fn waiting(&self) -> usize {
        self.reorder.len()
    }

    /// Capture time of the last event applied.
    pub fn applied_until(&self) -> Option<DateTime<Utc>> {
        self.reorder.released_until()
    }

    /// Events dropped as late and as copies.
    pub fn dropped(&self) -> (u64, u64) {
        (self.reorder.late, self.reorder.duplicates)
    }

    fn apply(&mut self, event: RiskEvent) -> Applied {
        let t = seconds(event.captured_at);
        let observations = self.observations(&event);
        let tracks: Vec<Track> = self.tracker.update(t, &observations).to_vec();
        let conditions = self
            .state
            .evaluate(&self.rules.rules, &self.rules.lines, &event, &tracks);
        if let Some(id) = &event.snapshot {
            self.last_snapshot = Some((id.clone(), event.captured_at));
        }
        let recent = self
            .last_snapshot
            .as_ref()
            .filter(|(_, at)| {
                (event.captured_at - *at) <= chrono::Duration::milliseconds(SNAPSHOT_RECENT_MS)
            })
            .map(|(id, _)| id.as_str());
        let own = recent.is_none() && self.keep_frames;
        let moment = Moment {
            event: &event,
            tracks: &tracks,
            place: &self.rules.place,
            snapshot: if own {
                Some(event.event_id.as_str())
            } else {
                recent
            },
        };
        let alerts = self.book.apply(&self.life, &moment, conditions);
        let id = event.event_id.as_str();
        let keep = (own
            && (alerts.iter().any(|a| a.snapshots.refers_to(id)) || self.book.refers_to(id)))
        .then(|| {
            self.last_snapshot = Some((event.event_id.clone(), event.captured_at));
            Box::new(event.clone())
        });
        let tracks = self.track_update(&event, &tracks, t);
        Applied {
            event_id: event.event_id,
            captured_at: event.captured_at,
            alerts,
            tracks,
            keep,
        }
    }

    /// The event's objects as the tracker takes them: on a fixed ground. A drone's frames
    /// without a configured origin place objects relative to the drone itself, so their
    /// ground comes from their WGS84 positions, in metres from where the drone was first seen.
    fn observations(&mut self, event: &RiskEvent) -> Vec<Observation> {
        let mut observations: Vec<Observation> =
            event.objects.iter().map(Observation::from).collect();
        let Some(pose) = event.pose.filter(|_| self.rules.origin.is_none()) else {
            return observations;
        };
        let anchor = *self.anchor.get_or_insert(crate::geo::GeoOrigin {
            lat: pose.lat,
            lon: pose.lon,
        });
        for (obs, object) in observations.iter_mut().zip(&event.objects) {
            obs.ground = object.geo.map(|g| {
                let p = anchor.from_wgs84(g.lat, g.lon);
                crate::contract::GroundPosition::at(p.x_m, p.y_m)
            });
        }
        observations
    }

    fn track_update(&self, event: &RiskEvent, tracks: &[Track], t: f64) -> TrackUpdate {
        let geo: HashMap<u32, _> = event.objects.iter().map(|o| (o.id, o.geo)).collect();
        let tracks = tracks
            .iter()
            .filter(|tr| tr.state != TrackState::Tentative)
            .map(|tr| TrackReport {
                id: tr.id,
                class_id: tr.class_id,
                label: tr.label.clone(),
                state: match tr.state {
                    TrackState::Lost => "lost".into(),
                    _ => "confirmed".into(),
                },
                bbox: tr.bbox,
                ground: tr.ground,
                geo: tr.object_id.and_then(|id| geo.get(&id).copied().flatten()),
                speed_mps: tr.speed_mps,
                heading_deg: tr.heading_deg,
                stationary: self
                    .state
                    .is_stationary(tr.id, &self.rules.rules.stationary, t),
                age_s: ((t - tr.first_seen) * 10.0).round() / 10.0,
            })
            .collect();
        TrackUpdate {
            schema: TRACKS_SCHEMA.to_string(),
            site: event.site.clone(),
            camera_id: event.camera_id.clone(),
            event_id: event.event_id.clone(),
            captured_at: event.captured_at,
            tracks,
        }
    }
}
