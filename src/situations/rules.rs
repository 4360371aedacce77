//! The rules: what, in one camera's tracks at one moment, is a situation worth an alert.
//!
//! Each rule looks at the tracks seen in the current event (with the zones their ground points
//! fall in) and returns the conditions that hold now, each with a level, the objects involved
//! and a measure. How long a condition must hold before it alerts, and when an alert ends, is
//! the lifecycle's business (`alerts.rs`). The few facts that need memory live in
//! [`RuleState`]: when each track entered each zone, where it was at the previous event (line
//! crossings), and which objects stand still (and where, so that a parked car whose detection
//! flickers is recognised when it comes back instead of alerting again).
//!
//! Defaults and their sources are documented in config/vigil.toml.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::track::{Track, TrackState};
use crate::config::Invalid;
use crate::contract::{AlertZone, GroundPosition, Level, ObjectReport, RiskEvent};

const VEHICLES: [&str; 4] = ["car", "motorcycle", "bus", "truck"];

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// Every rule, with its defaults; a camera may replace any of them (`[[cameras]] rules`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RulesConfig {
    pub intrusion: IntrusionRule,
    pub loitering: LoiteringRule,
    pub crowd: CrowdRule,
    pub proximity: ProximityRule,
    pub line_crossing: LineCrossingRule,
    pub count: CountRule,
    pub stationary: StationaryRule,
}

/// An object of the listed classes inside a zone of the listed kinds for at least
/// `min_duration_s`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IntrusionRule {
    pub enabled: bool,
    pub zone_kinds: Vec<String>,
    /// Classes that intrude; empty: every class.
    pub classes: Vec<String>,
    /// Seconds an object must be inside before it counts (filters a box edge flickering
    /// across the boundary).
    pub min_duration_s: f64,
    pub level: Level,
}

impl Default for IntrusionRule {
    fn default() -> Self {
        Self {
            enabled: true,
            zone_kinds: strings(&["restricted"]),
            classes: strings(&["person", "bicycle", "car", "motorcycle", "bus", "truck"]),
            min_duration_s: 1.0,
            level: Level::High,
        }
    }
}

/// A person staying in a zone of the listed kinds longer than `dwell_s`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoiteringRule {
    pub enabled: bool,
    pub zone_kinds: Vec<String>,
    pub classes: Vec<String>,
    pub dwell_s: f64,
    pub level: Level,
}

impl Default for LoiteringRule {
    fn default() -> Self {
        Self {
            enabled: true,
            zone_kinds: strings(&["hazard"]),
            classes: strings(&["person"]),
            dwell_s: 30.0,
            level: Level::Medium,
        }
    }
}

/// People per m² in a zone of the listed kinds, held for `sustain_s`; the level is that of
/// the highest tier reached.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CrowdRule {
    pub enabled: bool,
    pub zone_kinds: Vec<String>,
    /// Seconds a density must hold before it alerts.
    pub sustain_s: f64,
    /// Zones smaller than this (m²) are not judged: a few people in a small area are not a
    /// crowd.
    pub min_area_m2: f64,
    /// Density thresholds (people per m²), each with its level, any order.
    pub tiers: Vec<CrowdTier>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrowdTier {
    pub density_per_m2: f64,
    pub level: Level,
}

impl Default for CrowdRule {
    fn default() -> Self {
        let tier = |density_per_m2, level| CrowdTier {
            density_per_m2,
            level,
        };
        Self {
            enabled: true,
            zone_kinds: strings(&["crowd"]),
            sustain_s: 10.0,
            min_area_m2: 10.0,
            tiers: vec![
                tier(2.0, Level::Medium),
                tier(4.0, Level::High),
                tier(5.0, Level::Critical),
            ],
        }
    }
}

/// A person within `distance_m` of a vehicle moving faster than `vehicle_speed_mps`
/// (cameras with a ground model only).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProximityRule {
    pub enabled: bool,
    pub people: Vec<String>,
    pub vehicles: Vec<String>,
    pub distance_m: f64,
    pub vehicle_speed_mps: f64,
    pub min_duration_s: f64,
    pub level: Level,
}

impl Default for ProximityRule {
    fn default() -> Self {
        Self {
            enabled: true,
            people: strings(&["person"]),
            vehicles: strings(&VEHICLES),
            distance_m: 3.0,
            vehicle_speed_mps: 1.5,
            min_duration_s: 0.0,
            level: Level::High,
        }
    }
}

/// Objects crossing a camera's lines (`[[cameras]] lines`), counted by direction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LineCrossingRule {
    pub enabled: bool,
    pub classes: Vec<String>,
    pub level: Level,
}

impl Default for LineCrossingRule {
    fn default() -> Self {
        Self {
            enabled: true,
            classes: strings(&["person", "bicycle", "car", "motorcycle", "bus", "truck"]),
            level: Level::Low,
        }
    }
}

/// More than `max` objects of the listed classes in view, held for `sustain_s`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CountRule {
    pub enabled: bool,
    pub classes: Vec<String>,
    pub max: u32,
    pub sustain_s: f64,
    pub level: Level,
}

impl Default for CountRule {
    fn default() -> Self {
        Self {
            enabled: true,
            classes: strings(&["person"]),
            max: 20,
            sustain_s: 5.0,
            level: Level::Medium,
        }
    }
}

/// Objects of the listed classes that stand still for `after_s` stop counting for the other
/// rules (a parked car ends its intrusion and does not raise new ones) until they move again.
/// Where they stood is remembered for `memory_s`: a new track of the same class appearing
/// there (the detection flickered, the tracker lost it) is still the parked object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StationaryRule {
    pub enabled: bool,
    pub classes: Vec<String>,
    /// Below this ground speed (m/s) an object stands still; without a ground model, below
    /// `still_heights_per_s` box heights per second.
    pub still_speed_mps: f64,
    pub still_heights_per_s: f64,
    pub after_s: f64,
    /// Seconds of clear motion that make a stationary object count again.
    pub moving_s: f64,
    pub memory_s: f64,
    /// How close a new track must appear to a remembered spot (metres; without a ground model,
    /// box heights).
    pub radius_m: f64,
    pub radius_heights: f64,
}

impl Default for StationaryRule {
    fn default() -> Self {
        Self {
            enabled: true,
            classes: strings(&VEHICLES),
            still_speed_mps: 0.3,
            still_heights_per_s: 0.1,
            after_s: 10.0,
            moving_s: 2.0,
            memory_s: 600.0,
            radius_m: 1.5,
            radius_heights: 0.5,
        }
    }
}

impl RulesConfig {
    pub fn validate(&self) -> Result<(), Invalid> {
        let non_negative = [
            ("intrusion.min_duration_s", self.intrusion.min_duration_s),
            ("loitering.dwell_s", self.loitering.dwell_s),
            ("crowd.sustain_s", self.crowd.sustain_s),
            ("crowd.min_area_m2", self.crowd.min_area_m2),
            ("proximity.distance_m", self.proximity.distance_m),
            (
                "proximity.vehicle_speed_mps",
                self.proximity.vehicle_speed_mps,
            ),
            ("proximity.min_duration_s", self.proximity.min_duration_s),
            ("count.sustain_s", self.count.sustain_s),
            (
                "stationary.still_speed_mps",
                self.stationary.still_speed_mps,
            ),
            (
                "stationary.still_heights_per_s",
                self.stationary.still_heights_per_s,
            ),
            ("stationary.after_s", self.stationary.after_s),
            ("stationary.moving_s", self.stationary.moving_s),
            ("stationary.memory_s", self.stationary.memory_s),
            ("stationary.radius_m", self.stationary.radius_m),
            ("stationary.radius_heights", self.stationary.radius_heights),
        ];
        for (key, value) in non_negative {
            if !(value.is_finite() && value >= 0.0) {
                return Err(Invalid::new(key, "must be a finite number ≥ 0"));
            }
        }
        if self
            .crowd
            .tiers
            .iter()
            .any(|t| !(t.density_per_m2.is_finite() && t.density_per_m2 > 0.0))
        {
            return Err(Invalid::new("crowd.tiers", "densities must be > 0"));
        }
        Ok(())
    }
}

/// A line on a camera's ground (metres) or image (pixels), crossed in two directions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LineConfig {
    pub id: String,
    pub name: String,
    /// Two points in ground metres (east, north); or give `image`.
    #[serde(default)]
    pub ground: Option<[[f64; 2]; 2]>,
    /// Two points in image pixels, for cameras without a ground model.
    #[serde(default)]
    pub image: Option<[[f64; 2]; 2]>,
}

impl LineConfig {
    pub fn validate(&self) -> Result<(), String> {
        let points = match (self.ground, self.image) {
            (Some(p), None) | (None, Some(p)) => p,
            _ => return Err("give exactly one of ground or image".into()),
        };
        if points.iter().flatten().any(|v| !v.is_finite()) || points[0] == points[1] {
            return Err("needs two distinct, finite points".into());
        }
        Ok(())
    }
}

/// A condition that holds now.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    pub rule: &'static str,
    /// The zone or line; None for the whole view.
    pub zone: Option<AlertZone>,
    pub level: Level,
    pub value: f64,
    pub unit: &'static str,
    /// Tracks involved, by id.
    pub tracks: Vec<u64>,
    /// Crossings in this event by direction (line crossing only).
    pub crossings: BTreeMap<String, u32>,
    /// Seconds the condition must hold before an alert starts.
    pub sustain_s: f64,
}

impl Condition {
    /// The situation's identity within a camera: rule and zone.
    pub fn key(&self) -> (String, String) {
        let zone = self.zone.as_ref().map_or("view", |z| z.id.as_str());
        (self.rule.to_string(), zone.to_string())
    }
}

/// What a track is, seen through the rules at this moment.
#[derive(Debug, Clone)]
struct Seen<'a> {
    track: &'a Track,
    object: &'a ObjectReport,
    stationary: bool,
}

/// Where something stood still, remembered after its track ended.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Spot {
    class_id: u32,
    ground: Option<GroundPosition>,
    foot: (f64, f64),
    height: f64,
    still_since: f64,
    last_seen: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Stillness {
    still_since: Option<f64>,
    moving_since: Option<f64>,
    class_id: u32,
    height: f64,
}

/// The rules' memory for one camera.
#[derive(Debug, Default)]
pub struct RuleState {
    /// (track, zone) → when the track was first seen in the zone (seconds).
    entered: HashMap<(u64, String), f64>,
    /// Track → its position at the previous event it was seen in.
    last_position: HashMap<u64, Position>,
    stillness: HashMap<u64, Stillness>,
    spots: Vec<Spot>,
    /// Line → crossings by direction since the stage started on this camera.
    pub crossings: BTreeMap<String, BTreeMap<String, u32>>,
}

/// A track's position for line tests: ground metres when known, else the foot in pixels.
#[derive(Debug, Clone, Copy)]
struct Position {
    ground: Option<(f64, f64)>,
    foot: (f64, f64),
}

/// Seconds since 1970 of an event time.
pub fn seconds(at: DateTime<Utc>) -> f64 {
    at.timestamp_millis() as f64 / 1000.0
}

impl RuleState {
    /// The conditions that hold at `event`, given the tracks after it was applied.
    pub fn evaluate(
        &mut self,
        rules: &RulesConfig,
        lines: &[LineConfig],
        event: &RiskEvent,
        tracks: &[Track],
    ) -> Vec<Condition> {
        let t = seconds(event.captured_at);
        let seen = self.observe(rules, event, tracks, t);
        let mut out = Vec::new();
        if rules.intrusion.enabled {
            out.extend(self.in_zones(&seen, event, t, Occupancy::intrusion(&rules.intrusion)));
        }
        if rules.loitering.enabled {
            out.extend(self.in_zones(&seen, event, t, Occupancy::loitering(&rules.loitering)));
        }
        if rules.crowd.enabled {
            out.extend(crowd(&rules.crowd, &seen, event));
        }
        if rules.proximity.enabled {
            out.extend(proximity(&rules.proximity, &seen));
        }
        if rules.line_crossing.enabled {
            out.extend(self.line_crossings(&rules.line_crossing, lines, &seen));
        }
        if rules.count.enabled {
            out.extend(count(&rules.count, &seen));
        }
        self.remember_positions(&seen);
        out
    }

    /// Whether a track stands still now (for the live tracks view).
    pub fn is_stationary(&self, track: u64, rules: &StationaryRule, t: f64) -> bool {
        self.stillness
            .get(&track)
            .and_then(|s| s.still_since)
            .is_some_and(|since| rules.enabled && t - since >= rules.after_s)
    }

    /// The tracks matched in this event, with their objects; updates stillness and forgets
    /// tracks that ended.
    fn observe<'a>(
        &mut self,
        rules: &RulesConfig,
        event: &'a RiskEvent,
        tracks: &'a [Track],
        t: f64,
    ) -> Vec<Seen<'a>> {
        let objects: HashMap<u32, &ObjectReport> =
            event.objects.iter().map(|o| (o.id, o)).collect();
        let live: Vec<u64> = tracks.iter().map(|tr| tr.id).collect();
        self.forget_ended(&live, t, &rules.stationary);
        let mut seen = Vec::new();
        for track in tracks {
            if track.state != TrackState::Confirmed {
                continue;
            }
            let Some(object) = track.object_id.and_then(|id| objects.get(&id).copied()) else {
                continue;
            };
            let stationary = self.update_stillness(track, t, &rules.stationary);
            seen.push(Seen {
                track,
                object,
                stationary,
            });
        }
        seen
    }

    fn update_stillness(&mut self, track: &Track, t: f64, rule: &StationaryRule) -> bool {
        if !rule.enabled || !rule.classes.contains(&track.label) {
            return false;
        }
        let still = match track.speed_mps {
            Some(speed) => speed < rule.still_speed_mps,
            None => {
                let height = f64::from(track.bbox.y2 - track.bbox.y1).max(1.0);
                let (vx, vy) = track.velocity_px_s;
                (vx.hypot(vy) / height) < rule.still_heights_per_s
            }
        };
        let inherited = self.inherit_spot(track, rule);
        let state = self.stillness.entry(track.id).or_default();
        state.class_id = track.class_id;
        state.height = f64::from(track.bbox.y2 - track.bbox.y1).max(1.0);
        if let Some(since) = inherited {
            state.still_since.get_or_insert(since);
        }
        if still {
            state.moving_since = None;
            state.still_since.get_or_insert(t);
        } else {
            let moving_since = *state.moving_since.get_or_insert(t);
            if t - moving_since >= rule.moving_s {
                state.still_since = None;
            }
        }
        state
            .still_since
            .is_some_and(|since| t - since >= rule.after_s)
    }

    /// A new track where a stationary object of its class was last seen takes over its
    /// stillness (the same parked car, detected again).
    fn inherit_spot(&mut self, track: &Track, rule: &StationaryRule) -> Option<f64> {
        if self.stillness.contains_key(&track.id) {
            return None;
        }
        let foot = foot(track);
        let height = f64::from(track.bbox.y2 - track.bbox.y1).max(1.0);
        let near = |spot: &Spot| match (spot.ground, track.ground) {
            (Some(a), Some(b)) => (a.x_m - b.x_m).hypot(a.y_m - b.y_m) <= rule.radius_m,
            _ => {
                let d = (spot.foot.0 - foot.0).hypot(spot.foot.1 - foot.1);
                d <= rule.radius_heights * spot.height.max(height)
            }
        };
        let index = self
            .spots
            .iter()
            .position(|s| s.class_id == track.class_id && near(s))?;
        Some(self.spots.swap_remove(index).still_since)
    }

    /// Forgets tracks the tracker dropped; where a stationary one stood is remembered.
    fn forget_ended(&mut self, live: &[u64], t: f64, rule: &StationaryRule) {
        let ended: Vec<u64> = self
            .stillness
            .keys()
            .filter(|id| !live.contains(id))
            .copied()
            .collect();
        for id in ended {
            let Some(state) = self.stillness.remove(&id) else {
                continue;
            };
            let (Some(since), Some(last)) = (state.still_since, self.last_position.get(&id)) else {
                continue;
            };
            if t - since >= rule.after_s {
                self.spots.push(Spot {
                    class_id: state.class_id,
                    ground: last.ground.map(|(x_m, y_m)| GroundPosition::at(x_m, y_m)),
                    foot: last.foot,
                    height: state.height,
                    still_since: since,
                    last_seen: t,
                });
            }
        }
        self.spots.retain(|s| t - s.last_seen <= rule.memory_s);
        self.entered.retain(|(id, _), _| live.contains(id));
        self.last_position.retain(|id, _| live.contains(id));
    }

    fn in_zones(
        &mut self,
        seen: &[Seen<'_>],
        event: &RiskEvent,
        t: f64,
        rule: Occupancy<'_>,
    ) -> Vec<Condition> {
        let mut out = Vec::new();
        for zone in event
            .zones
            .iter()
            .filter(|z| rule.zone_kinds.contains(&z.kind))
        {
            let mut inside = Vec::new();
            let mut longest: f64 = 0.0;
            for s in seen {
                let counts = !s.object.low_score
                    && !s.stationary
                    && (rule.classes.is_empty() || rule.classes.contains(&s.track.label));
                if !counts || !s.object.zones.contains(&zone.id) {
                    continue;
                }
                let since = *self
                    .entered
                    .entry((s.track.id, zone.id.clone()))
                    .or_insert(t);
                let dwell = t - since;
                if dwell >= rule.min_dwell_s {
                    inside.push(s.track.id);
                    longest = longest.max(dwell);
                }
            }
            // Leaving a zone resets the dwell: forget entries of tracks seen outside it.
            for s in seen.iter().filter(|s| !s.object.zones.contains(&zone.id)) {
                self.entered.remove(&(s.track.id, zone.id.clone()));
            }
            if inside.is_empty() {
                continue;
            }
            out.push(Condition {
                rule: rule.name,
                zone: Some(AlertZone {
                    id: zone.id.clone(),
                    name: zone.name.clone(),
                    kind: zone.kind.clone(),
                }),
                level: rule.level,
                value: (longest * 10.0).round() / 10.0,
                unit: "s",
                tracks: inside,
                crossings: BTreeMap::new(),
                sustain_s: 0.0,
            });
        }
        out
    }

    fn line_crossings(
        &mut self,
        rule: &LineCrossingRule,
        lines: &[LineConfig],
        seen: &[Seen<'_>],
    ) -> Vec<Condition> {
        let mut out = Vec::new();
        for line in lines {
            let mut crossed = BTreeMap::new();
            let mut tracks = Vec::new();
            for s in seen {
                if !(rule.classes.is_empty() || rule.classes.contains(&s.track.label))
                    || s.object.low_score
                {
                    continue;
                }
                let Some(before) = self.last_position.get(&s.track.id) else {
                    continue;
                };
                let now = position(s.track);
                let segment = match (line.ground, line.image, before.ground, now.ground) {
                    (Some(l), _, Some(a), Some(b)) => Some((l, a, b)),
                    (_, Some(l), _, _) => Some((l, before.foot, now.foot)),
                    _ => None,
                };
                let Some((l, a, b)) = segment else { continue };
                if let Some(direction) = crossing(l, a, b) {
                    *crossed.entry(direction.to_string()).or_insert(0) += 1;
                    tracks.push(s.track.id);
                }
            }
            if crossed.is_empty() {
                continue;
            }
            let totals = self.crossings.entry(line.id.clone()).or_default();
            for (direction, n) in &crossed {
                *totals.entry(direction.clone()).or_insert(0) += n;
            }
            out.push(Condition {
                rule: "line_crossing",
                zone: Some(AlertZone {
                    id: line.id.clone(),
                    name: line.name.clone(),
                    kind: "line".into(),
                }),
                level: rule.level,
                value: f64::from(crossed.values().sum::<u32>()),
                unit: "crossings",
                tracks,
                crossings: crossed,
                sustain_s: 0.0,
            });
        }
        out
    }

    fn remember_positions(&mut self, seen: &[Seen<'_>]) {
        for s in seen {
            self.last_position.insert(s.track.id, position(s.track));
        }
    }
}

/// The zone rules differ only in their settings.
struct Occupancy<'a> {
    name: &'static str,
    zone_kinds: &'a [String],
    classes: &'a [String],
    min_dwell_s: f64,
    level: Level,
}

impl<'a> Occupancy<'a> {
    fn intrusion(rule: &'a IntrusionRule) -> Self {
        Occupancy {
            name: "intrusion",
            zone_kinds: &rule.zone_kinds,
            classes: &rule.classes,
            min_dwell_s: rule.min_duration_s,
            level: rule.level,
        }
    }

    fn loitering(rule: &'a LoiteringRule) -> Self {
        Occupancy {
            name: "loitering",
            zone_kinds: &rule.zone_kinds,
            classes: &rule.classes,
            min_dwell_s: rule.dwell_s,
            level: rule.level,
        }
    }
}

fn crowd(rule: &CrowdRule, seen: &[Seen<'_>], event: &RiskEvent) -> Vec<Condition> {
    let mut out = Vec::new();
    for zone in event
        .zones
        .iter()
        .filter(|z| rule.zone_kinds.contains(&z.kind))
    {
        if zone.area_m2 < rule.min_area_m2 || zone.area_m2 <= 0.0 {
            continue;
        }
        let density = zone.density_per_m2;
        let Some(level) = rule
            .tiers
            .iter()
            .filter(|t| density >= t.density_per_m2)
            .map(|t| t.level)
            .max()
        else {
            continue;
        };
        let tracks = seen
            .iter()
            .filter(|s| s.object.zones.contains(&zone.id) && !s.object.low_score)
            .map(|s| s.track.id)
            .collect();
        out.push(Condition {
            rule: "crowd",
            zone: Some(AlertZone {
                id: zone.id.clone(),
                name: zone.name.clone(),
                kind: zone.kind.clone(),
            }),
            level,
            value: (density * 100.0).round() / 100.0,
            unit: "people/m²",
            tracks,
            crossings: BTreeMap::new(),
            sustain_s: rule.sustain_s,
        });
    }
    out
}

fn proximity(rule: &ProximityRule, seen: &[Seen<'_>]) -> Option<Condition> {
    let people: Vec<&Seen<'_>> = seen
        .iter()
        .filter(|s| rule.people.contains(&s.track.label) && !s.object.low_score)
        .collect();
    let vehicles: Vec<&Seen<'_>> = seen
        .iter()
        .filter(|s| {
            rule.vehicles.contains(&s.track.label)
                && !s.stationary
                && s.track
                    .speed_mps
                    .is_some_and(|v| v >= rule.vehicle_speed_mps)
        })
        .collect();
    let mut tracks = Vec::new();
    let mut closest = f64::INFINITY;
    for p in &people {
        for v in &vehicles {
            let (Some(a), Some(b)) = (p.track.ground, v.track.ground) else {
                continue;
            };
            let d = (a.x_m - b.x_m).hypot(a.y_m - b.y_m);
            if d <= rule.distance_m {
                closest = closest.min(d);
                for id in [p.track.id, v.track.id] {
                    if !tracks.contains(&id) {
                        tracks.push(id);
                    }
                }
            }
        }
    }
    (!tracks.is_empty()).then(|| Condition {
        rule: "proximity",
        zone: None,
        level: rule.level,
        value: (closest * 10.0).round() / 10.0,
        unit: "m",
        tracks,
        crossings: BTreeMap::new(),
        sustain_s: rule.min_duration_s,
    })
}

fn count(rule: &CountRule, seen: &[Seen<'_>]) -> Option<Condition> {
    let tracks: Vec<u64> = seen
        .iter()
        .filter(|s| !s.object.low_score && !s.stationary && rule.classes.contains(&s.track.label))
        .map(|s| s.track.id)
        .collect();
    (tracks.len() as u32 > rule.max).then(|| Condition {
        rule: "count",
        zone: None,
        level: rule.level,
        value: tracks.len() as f64,
        unit: "objects",
        tracks,
        crossings: BTreeMap::new(),
        sustain_s: rule.sustain_s,
    })
}

/// The bottom centre of a track's box, where it stands.
fn foot(track: &Track) -> (f64, f64) {
    let b = track.bbox;
    (f64::from(b.x1 + b.x2) / 2.0, f64::from(b.y2))
}

fn position(track: &Track) -> Position {
    Position {
        ground: track.ground.map(|g| (g.x_m, g.y_m)),
        foot: foot(track),
    }
}

/// Whether the move from `a` to `b` crosses `line`, and which way: "in" when it ends on the
/// right of the line walked from its first point to its second, "out" when on the left (for
/// ground lines, east/north axes; for image lines, x right and y down, so right and left
/// swap in the picture).
fn crossing(line: [[f64; 2]; 2], a: (f64, f64), b: (f64, f64)) -> Option<&'static str> {
    let (p, q) = ((line[0][0], line[0][1]), (line[1][0], line[1][1]));
    let side = |r: (f64, f64)| (q.0 - p.0) * (r.1 - p.1) - (q.1 - p.1) * (r.0 - p.0);
    let (sa, sb) = (side(a), side(b));
    if sa == 0.0 || sa.signum() == sb.signum() || sb == 0.0 {
        return None;
    }
    // The move must also cross within the line's ends.
    let other = |r: (f64, f64)| (b.0 - a.0) * (r.1 - a.1) - (b.1 - a.1) * (r.0 - a.0);
    if other(p).signum() == other(q).signum() {
        return None;
    }
    Some(if sb < 0.0 { "in" } else { "out" })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::{BBox, ZoneReport};
    use crate::situations::track::{Observation, Tracker, TrackerConfig};

    /// A scene of a few tracked objects on the ground, fed through a real tracker.
    struct Scene {
        tracker: Tracker,
        state: RuleState,
        rules: RulesConfig,
        lines: Vec<LineConfig>,
        t: f64,
    }

    /// An object: label, ground position (m), the zones it is in.
    type Thing<'a> = (&'a str, (f64, f64), &'a [&'a str]);

    impl Scene {
        fn new(rules: RulesConfig) -> Scene {
            Scene {
                tracker: Tracker::new(TrackerConfig::default()),
                state: RuleState::default(),
                rules,
                lines: Vec::new(),
                t: 0.0,
            }
        }

        /// Advances `dt` seconds and shows the scene the things.
        fn step(&mut self, dt: f64, things: &[Thing<'_>], zones: &[ZoneReport]) -> Vec<Condition> {
            self.t += dt;
            let objects: Vec<ObjectReport> = things
                .iter()
                .enumerate()
                .map(|(i, (label, (x, y), zones))| {
                    // Boxes move with the ground point so both association spaces agree.
                    let (px, py) = (400.0 + 20.0 * *x as f32, 400.0 - 20.0 * *y as f32);
                    ObjectReport {
                        id: i as u32,
                        class_id: if *label == "person" { 0 } else { 2 },
                        label: label.to_string(),
                        confidence: 0.9,
                        bbox: BBox {
                            x1: px - 10.0,
                            y1: py - 40.0,
                            x2: px + 10.0,
                            y2: py,
                        },
                        ground: Some(GroundPosition::at(*x, *y)),
                        geo: None,
                        zones: zones.iter().map(|z| z.to_string()).collect(),
                        no_ground: None,
                        uncertain: false,
                        low_score: false,
                    }
                })
                .collect();
            let at = DateTime::<Utc>::from_timestamp_millis((self.t * 1000.0) as i64)
                .unwrap_or_default();
            let mut event = RiskEvent::bare(&format!("e{}", self.t), at);
            event.objects = objects.clone();
            event.zones = zones.to_vec();
            let observations: Vec<Observation> = objects.iter().map(Observation::from).collect();
            let tracks = self.tracker.update(self.t, &observations).to_vec();
            self.state
                .evaluate(&self.rules, &self.lines, &event, &tracks)
        }

        /// Runs `seconds` at 10 frames per second; returns the conditions of the last frame.
        fn hold(
            &mut self,
            seconds: f64,
            things: &[Thing<'_>],
            zones: &[ZoneReport],
        ) -> Vec<Condition> {
            let mut last = Vec::new();
            for _ in 0..(seconds * 10.0).round() as usize {
                last = self.step(0.1, things, zones);
            }
            last
        }
    }

    fn zone(id: &str, kind: &str, density: f64, area: f64) -> ZoneReport {
        ZoneReport {
            id: id.into(),
            name: id.to_uppercase(),
            kind: kind.into(),
            occupancy: (density * area).round() as u32,
            density_per_m2: density,
            area_m2: area,
        }
    }

    fn rules(of: &[&str]) -> RulesConfig {
        let mut r = RulesConfig::default();
        r.intrusion.enabled = of.contains(&"intrusion");
        r.loitering.enabled = of.contains(&"loitering");
        r.crowd.enabled = of.contains(&"crowd");
        r.proximity.enabled = of.contains(&"proximity");
        r.line_crossing.enabled = of.contains(&"line_crossing");
        r.count.enabled = of.contains(&"count");
        r
    }

    fn names(conditions: &[Condition]) -> Vec<(&'static str, String)> {
        conditions.iter().map(|c| (c.rule, c.key().1)).collect()
    }

    #[test]
    fn an_intruder_counts_after_the_minimum_time_and_not_after_leaving() {
        let mut scene = Scene::new(rules(&["intrusion"]));
        let zones = [zone("cordon", "restricted", 0.0, 100.0)];
        let inside: [Thing; 1] = [("person", (1.0, 1.0), &["cordon"])];
        assert!(
            scene.hold(0.5, &inside, &zones).is_empty(),
            "not yet a second inside"
        );
        let held = scene.hold(1.0, &inside, &zones);
        assert_eq!(names(&held), vec![("intrusion", "cordon".to_string())]);
        assert!(held[0].value >= 1.0 && held[0].level == Level::High);
        let outside: [Thing; 1] = [("person", (5.0, 1.0), &[])];
        assert!(scene.hold(0.3, &outside, &zones).is_empty());
    }

    #[test]
    fn loitering_needs_the_dwell_time() {
        let mut r = rules(&["loitering"]);
        r.loitering.dwell_s = 3.0;
        let mut scene = Scene::new(r);
        let zones = [zone("road", "hazard", 0.0, 100.0)];
        let there: [Thing; 1] = [("person", (0.0, 0.0), &["road"])];
        assert!(scene.hold(2.5, &there, &zones).is_empty());
        assert_eq!(scene.hold(1.0, &there, &zones)[0].rule, "loitering");
    }

    #[test]
    fn crowd_levels_follow_the_density_tiers_in_large_enough_zones() {
        let mut scene = Scene::new(rules(&["crowd"]));
        let level = |scene: &mut Scene, density, area| {
            scene
                .step(0.1, &[], &[zone("plaza", "crowd", density, area)])
                .first()
                .map(|c| c.level)
        };
        assert_eq!(level(&mut scene, 1.5, 200.0), None);
        assert_eq!(level(&mut scene, 2.5, 200.0), Some(Level::Medium));
        assert_eq!(level(&mut scene, 4.2, 200.0), Some(Level::High));
        assert_eq!(level(&mut scene, 6.0, 200.0), Some(Level::Critical));
        assert_eq!(
            level(&mut scene, 6.0, 5.0),
            None,
            "too small a zone to judge"
        );
    }

    #[test]
    fn a_person_near_a_moving_vehicle_but_not_near_a_parked_one() {
        let mut scene = Scene::new(rules(&["proximity"]));
        let mut hits = 0;
        for i in 0..40 {
            let car_x = -10.0 + 0.3 * f64::from(i); // 3 m/s east
            let things: [Thing; 2] = [("car", (car_x, 0.0), &[]), ("person", (0.0, 2.0), &[])];
            let conditions = scene.step(0.1, &things, &[]);
            if conditions.iter().any(|c| c.rule == "proximity") {
                hits += 1;
                assert!(conditions[0].value <= 3.0);
            }
        }
        assert!(hits > 0, "the moving car passed within 3 m");
        let mut scene = Scene::new(rules(&["proximity"]));
        let parked: [Thing; 2] = [("car", (0.0, 0.0), &[]), ("person", (0.0, 2.0), &[])];
        assert!(scene.hold(5.0, &parked, &[]).is_empty());
    }

    #[test]
    fn line_crossings_are_counted_by_direction() {
        let mut scene = Scene::new(rules(&["line_crossing"]));
        scene.lines = vec![LineConfig {
            id: "gate".into(),
            name: "Gate".into(),
            ground: Some([[-5.0, 0.0], [5.0, 0.0]]),
            image: None,
        }];
        let mut counts = BTreeMap::new();
        // North to south, then back: the line runs west to east, so south is its right.
        let path: Vec<f64> = (0..30).map(|i| 3.0 - 0.2 * f64::from(i)).collect();
        for y in path.iter().chain(path.iter().rev()) {
            for c in scene.step(0.1, &[("person", (0.0, *y), &[])], &[]) {
                for (k, v) in c.crossings {
                    *counts.entry(k).or_insert(0) += v;
                }
            }
        }
        assert_eq!(
            counts,
            BTreeMap::from([("in".into(), 1), ("out".into(), 1)])
        );
        assert_eq!(scene.state.crossings["gate"].values().sum::<u32>(), 2);
    }

    #[test]
    fn more_objects_than_allowed_in_view() {
        let mut r = rules(&["count"]);
        r.count.max = 2;
        let mut scene = Scene::new(r);
        let three: [Thing; 3] = [
            ("person", (0.0, 0.0), &[]),
            ("person", (5.0, 0.0), &[]),
            ("person", (10.0, 0.0), &[]),
        ];
        let c = scene.hold(1.0, &three, &[]);
        assert_eq!((c[0].rule, c[0].value), ("count", 3.0));
        assert!(scene.hold(1.0, &three[..2], &[]).is_empty());
    }

    #[test]
    fn a_parked_vehicle_stops_counting_and_stays_parked_through_a_detection_flicker() {
        let mut r = rules(&["intrusion"]);
        r.stationary.after_s = 3.0;
        let mut scene = Scene::new(r);
        let zones = [zone("lot", "restricted", 0.0, 100.0)];
        let parked: [Thing; 1] = [("car", (2.0, 2.0), &["lot"])];
        assert!(
            !scene.hold(2.0, &parked, &zones).is_empty(),
            "it intrudes at first"
        );
        assert!(
            scene.hold(2.0, &parked, &zones).is_empty(),
            "parked: no longer counts"
        );
        // The detection drops out for 3 s (longer than the tracker keeps a lost track), then
        // the same car is detected again: a new track, at the same spot.
        scene.hold(3.0, &[], &zones);
        for _ in 0..30 {
            assert!(
                scene.step(0.1, &parked, &zones).is_empty(),
                "re-alerted after a flicker"
            );
        }
        // It drives off: it counts again.
        let mut counted = false;
        for i in 0..40 {
            let moving: [Thing; 1] = [("car", (2.0 + 0.3 * f64::from(i), 2.0), &["lot"])];
            counted |= !scene.step(0.1, &moving, &zones).is_empty();
        }
        assert!(counted, "a car that moves again counts again");
    }

    #[test]
    fn crossing_needs_the_move_to_pass_between_the_line_ends() {
        let line = [[0.0, 0.0], [10.0, 0.0]];
        assert_eq!(crossing(line, (5.0, 1.0), (5.0, -1.0)), Some("in"));
        assert_eq!(crossing(line, (5.0, -1.0), (5.0, 1.0)), Some("out"));
        assert_eq!(
            crossing(line, (15.0, 1.0), (15.0, -1.0)),
            None,
            "beyond the end"
        );
        assert_eq!(crossing(line, (5.0, 1.0), (6.0, 2.0)), None);
    }
}
