//! ByteTrack-style multi-object tracking with real time steps.
//!
//! Cameras drop frames and drones send them at whatever rate the link allows, so every
//! motion model here runs on the seconds between two updates, not on a frame count; tracks
//! are born after `min_hits` matches and die `max_lost_s` seconds after their last one.
//!
//! Association follows ByteTrack: confident observations are matched first against every
//! track; the weak ones (occluded, blurred) may then only continue a track that was matched
//! in the previous update, under a stricter gate, which keeps identities through partial
//! occlusions without letting weak false positives start or steal tracks. Each stage is an
//! optimal assignment (Kuhn–Munkres).
//!
//! A pair must overlap in the image (IoU of the observed box with the predicted one). Where
//! the camera has a ground model, the pair must also be close on the ground and is ranked by
//! that distance in metres, which separates people whose boxes overlap in the image but who
//! stand metres apart; elsewhere the overlap ranks.
//!
//! The [`Tracker`] serialises with serde, filters included, so a standby can take over a
//! camera from a snapshot without losing identities.

use nalgebra::{SMatrix, SVector};
use pathfinding::prelude::{kuhn_munkres, Matrix};
use serde::{Deserialize, Serialize};

use crate::config::Invalid;
use crate::contract::{BBox, GroundPosition, ObjectReport};

/// A box velocity prior, in box heights per second: the first match of a track says where
/// it is, not where it goes.
const INITIAL_VELOCITY_HEIGHTS_PER_S: f64 = 2.0;
/// A ground velocity prior (m/s), wide enough for a running person or a slow car.
const INITIAL_SPEED_SD_MPS: f64 = 5.0;
/// A ground gate grows with twice the prediction's standard deviation, but not beyond this
/// multiple of the configured gate: a long-lost track must not claim everything around it.
const MAX_GATE_WIDENING: f64 = 2.0;
/// Cost of leaving a track and an observation unmatched rather than pairing them: the cost
/// at the gate, as in ByteTrack's `lapjv(cost_limit = thresh)`. A pair beyond the configured
/// ground gate but inside its widening is still worth a little.
const UNMATCHED_COST: f64 = 1.0;
/// Kuhn–Munkres needs totally ordered weights; costs are kept to a millionth.
const WEIGHT_SCALE: f64 = 1e6;
/// A velocity within this many standard deviations of zero is noise, not motion: a standing
/// object's 2-D velocity error stays within 2.45 σ 95 % of the time (Rayleigh, e^(-k²/2)).
const MOTION_SIGNIFICANCE: f64 = 2.45;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrackerConfig {
    /// Observations scoring at least this (0–1) are confident: matched first, against every
    /// track.
    pub high_score: f32,
    /// Observations scoring at least this but below `high_score` (0–1) may only continue a
    /// track matched in the previous update; lower ones are ignored. Equal to `high_score`
    /// turns the second stage off.
    pub low_score: f32,
    /// An unmatched observation needs at least this score (0–1, ≥ `high_score`) to start a
    /// track.
    pub new_track_score: f32,
    /// Least overlap (IoU, 0–1) of a confident observation's box with a track's predicted
    /// box for them to match, whether or not ground positions are known.
    pub min_iou: f32,
    /// Least overlap (IoU, 0–1, ≥ `min_iou`) for a weak observation.
    pub min_iou_low: f32,
    /// Farthest a confident observation may be from a track's predicted ground position to
    /// match it (metres); widened by twice the prediction's standard deviation, up to double.
    pub ground_gate_m: f64,
    /// The same for a weak observation (metres, ≤ `ground_gate_m`).
    pub ground_gate_low_m: f64,
    /// Compare by ground distance where both sides have a ground position. Turn it off for a
    /// camera looking along the ground, where a few pixels at the feet are metres and box
    /// overlap is the better cue; ground positions, speed and heading are kept either way.
    pub ground_association: bool,
    /// A track unmatched for longer than this is removed (seconds).
    pub max_lost_s: f64,
    /// Matches before a track is confirmed; a tentative track that misses one update is
    /// dropped.
    pub min_hits: u32,
    /// Standard deviation of an observed box's centre and size, as a fraction of its width
    /// (x, width) and height (y, height).
    pub pixel_noise: f64,
    /// How fast a box's motion may change, in box heights per second squared (the spectral
    /// density of the constant-velocity model's acceleration noise).
    pub pixel_accel: f64,
    /// Standard deviation of an observed ground position (metres).
    pub ground_noise_m: f64,
    /// How fast a ground velocity may change (m/s², the same kind of density as
    /// `pixel_accel`); lower gives steadier speeds and slower response to turns.
    pub ground_accel_mps2: f64,
    /// Speed and heading are reported once the velocity is known to within this standard
    /// deviation (m/s).
    pub max_speed_sd_mps: f64,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        Self {
            high_score: 0.5,
            low_score: 0.1,
            new_track_score: 0.6,
            min_iou: 0.2,
            min_iou_low: 0.5,
            ground_gate_m: 2.5,
            ground_gate_low_m: 1.0,
            ground_association: true,
            max_lost_s: 1.5,
            min_hits: 2,
            pixel_noise: 0.05,
            pixel_accel: 0.25,
            ground_noise_m: 0.3,
            ground_accel_mps2: 0.2,
            max_speed_sd_mps: 0.5,
        }
    }
}

impl TrackerConfig {
    pub fn validate(&self) -> Result<(), Invalid> {
        if !(self.high_score > 0.0 && self.high_score <= 1.0) {
            return Err(Invalid::new("high_score", "must be in (0, 1]"));
        }
        if !(self.low_score >= 0.0 && self.low_score <= self.high_score) {
            return Err(Invalid::new(
                "low_score",
                "must be between 0 and high_score",
            ));
        }
        if !(self.new_track_score >= self.high_score && self.new_track_score <= 1.0) {
            return Err(Invalid::new(
                "new_track_score",
                "must be between high_score and 1",
            ));
        }
        if !(self.min_iou > 0.0 && self.min_iou < 1.0) {
            return Err(Invalid::new(
                "min_iou",
                "must be between 0 and 1 (exclusive)",
            ));
        }
        if !(self.min_iou_low >= self.min_iou && self.min_iou_low < 1.0) {
            return Err(Invalid::new("min_iou_low", "must be between min_iou and 1"));
        }
        positive("ground_gate_m", self.ground_gate_m)?;
        positive("ground_gate_low_m", self.ground_gate_low_m)?;
        if self.ground_gate_low_m > self.ground_gate_m {
            return Err(Invalid::new(
                "ground_gate_low_m",
                "must not exceed ground_gate_m",
            ));
        }
        if !(self.max_lost_s >= 0.0 && self.max_lost_s.is_finite()) {
            return Err(Invalid::new("max_lost_s", "must be 0 or more seconds"));
        }
        if self.min_hits == 0 {
            return Err(Invalid::new("min_hits", "must be at least 1"));
        }
        positive("pixel_noise", self.pixel_noise)?;
        positive("pixel_accel", self.pixel_accel)?;
        positive("ground_noise_m", self.ground_noise_m)?;
        positive("ground_accel_mps2", self.ground_accel_mps2)?;
        positive("max_speed_sd_mps", self.max_speed_sd_mps)
    }
}

fn positive(field: &'static str, value: f64) -> Result<(), Invalid> {
    if value > 0.0 && value.is_finite() {
        Ok(())
    } else {
        Err(Invalid::new(field, "must be a positive number"))
    }
}

/// One detected object of one frame, as the tracker sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    /// The object's id within its frame (`ObjectReport::id`).
    pub object_id: u32,
    pub class_id: u32,
    pub label: String,
    pub score: f32,
    /// Source-image pixels.
    pub bbox: BBox,
    /// Metres east/north, where the camera has a ground model.
    pub ground: Option<GroundPosition>,
}

impl From<&ObjectReport> for Observation {
    fn from(report: &ObjectReport) -> Self {
        Self {
            object_id: report.id,
            class_id: report.class_id,
            label: report.label.clone(),
            score: report.confidence,
            bbox: report.bbox,
            ground: report.ground,
        }
    }
}

impl Observation {
    /// A box the filters can take: finite, with a positive size.
    fn is_usable(&self) -> bool {
        let b = self.bbox;
        [b.x1, b.y1, b.x2, b.y2, self.score]
            .iter()
            .all(|v| v.is_finite())
            && b.x2 > b.x1
            && b.y2 > b.y1
    }

    fn usable_ground(&self) -> Option<GroundPosition> {
        self.ground
            .filter(|g| g.x_m.is_finite() && g.y_m.is_finite())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrackState {
    /// Seen fewer than `min_hits` times: maybe a false positive, not reported as an object.
    Tentative,
    /// Matched in the latest update.
    Confirmed,
    /// Confirmed once, unmatched since `last_seen`; its position is a prediction.
    Lost,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Track {
    /// Unique within its tracker, never reused.
    pub id: u64,
    pub class_id: u32,
    pub label: String,
    pub state: TrackState,
    /// Current estimate (source pixels).
    pub bbox: BBox,
    /// Current estimate (metres east/north), once an observation had one.
    pub ground: Option<GroundPosition>,
    /// Ground speed (m/s); 0 while the motion is within the noise, `None` while unknown.
    pub speed_mps: Option<f64>,
    /// Direction of ground motion, degrees clockwise from north; `None` unless moving.
    pub heading_deg: Option<f64>,
    /// Motion of the box centre (pixels per second, x right, y down).
    pub velocity_px_s: (f64, f64),
    /// Seconds, on the clock of `Tracker::update`.
    pub first_seen: f64,
    pub last_seen: f64,
    pub hits: u32,
    /// Score of the latest matched observation.
    pub score: f32,
    /// The observation matched in the latest update, if any.
    pub object_id: Option<u32>,
    /// Box centre x, y, width, height and their rates.
    pixel: CvFilter<8, 4>,
    /// Ground x, y and their rates.
    ground_filter: Option<CvFilter<4, 2>>,
}

/// Which association stage a comparison belongs to: the gates differ.
#[derive(Debug, Clone, Copy)]
struct Gates {
    use_ground: bool,
    min_iou: f32,
    ground_m: f64,
}

impl Gates {
    fn confident(config: &TrackerConfig) -> Self {
        Self {
            use_ground: config.ground_association,
            min_iou: config.min_iou,
            ground_m: config.ground_gate_m,
        }
    }

    fn weak(config: &TrackerConfig) -> Self {
        Self {
            use_ground: config.ground_association,
            min_iou: config.min_iou_low,
            ground_m: config.ground_gate_low_m,
        }
    }
}

/// Indices of the usable observations scoring in the confident and in the weak band.
fn split_by_score(
    observations: &[Observation],
    config: &TrackerConfig,
) -> (Vec<usize>, Vec<usize>) {
    let usable = observations
        .iter()
        .enumerate()
        .filter(|(_, obs)| obs.is_usable() && obs.score >= config.low_score);
    let (high, low): (Vec<_>, Vec<_>) = usable.partition(|(_, obs)| obs.score >= config.high_score);
    let indices = |v: Vec<(usize, &Observation)>| v.into_iter().map(|(i, _)| i).collect();
    (indices(high), indices(low))
}

impl Track {
    fn new(id: u64, obs: &Observation, t: f64, config: &TrackerConfig) -> Self {
        let (z, noise) = pixel_measurement(&obs.bbox, config);
        let h = z[3];
        let vel_sd = SVector::from([h, h, z[2], h]) * INITIAL_VELOCITY_HEIGHTS_PER_S;
        let mut track = Self {
            id,
            class_id: obs.class_id,
            label: obs.label.clone(),
            state: TrackState::Tentative,
            bbox: obs.bbox,
            ground: None,
            speed_mps: None,
            heading_deg: None,
            velocity_px_s: (0.0, 0.0),
            first_seen: t,
            last_seen: t,
            hits: 1,
            score: obs.score,
            object_id: Some(obs.object_id),
            pixel: CvFilter::new(z, noise * 2.0, vel_sd),
            ground_filter: obs.usable_ground().map(|g| new_ground_filter(g, config)),
        };
        if track.hits >= config.min_hits {
            track.state = TrackState::Confirmed;
        }
        track.refresh(config);
        track
    }

    fn predict(&mut self, dt: f64, config: &TrackerConfig) {
        if dt <= 0.0 {
            return;
        }
        let [_, _, w, h] = self.pixel.position();
        let accel = SVector::from([h, h, w, h]) * config.pixel_accel;
        self.pixel.predict(dt, accel);
        if let Some(g) = &mut self.ground_filter {
            g.predict(dt, SVector::repeat(config.ground_accel_mps2));
        }
        self.refresh(config);
    }

    fn correct(&mut self, obs: &Observation, t: f64, config: &TrackerConfig) {
        let (z, noise) = pixel_measurement(&obs.bbox, config);
        self.pixel.update(z, noise);
        match (&mut self.ground_filter, obs.usable_ground()) {
            (Some(filter), Some(g)) => {
                let noise = SVector::repeat(config.ground_noise_m);
                filter.update(SVector::from([g.x_m, g.y_m]), noise);
            }
            (None, Some(g)) => self.ground_filter = Some(new_ground_filter(g, config)),
            (_, None) => {}
        }
        self.hits = self.hits.saturating_add(1);
        self.last_seen = t;
        self.score = obs.score;
        self.object_id = Some(obs.object_id);
        if self.state == TrackState::Lost || self.hits >= config.min_hits {
            self.state = TrackState::Confirmed;
        }
        self.refresh(config);
    }

    /// Marks an update without a match; returns whether the track lives on.
    fn miss(&mut self, now: f64, config: &TrackerConfig) -> bool {
        self.object_id = None;
        if self.state == TrackState::Tentative || now - self.last_seen > config.max_lost_s {
            return false;
        }
        if self.state == TrackState::Confirmed {
            self.state = TrackState::Lost;
            // A size trend measured over a few frames, extrapolated over an occlusion,
            // shrinks or blows up the box; the position trend is the part worth keeping.
            self.pixel.stop_axes(&[2, 3]);
        }
        true
    }

    /// Brings the public fields in line with the filters.
    fn refresh(&mut self, config: &TrackerConfig) {
        let [cx, cy, w, h] = self.pixel.position();
        let (w, h) = (w.max(1.0), h.max(1.0));
        self.bbox = BBox {
            x1: (cx - w / 2.0) as f32,
            y1: (cy - h / 2.0) as f32,
            x2: (cx + w / 2.0) as f32,
            y2: (cy + h / 2.0) as f32,
        };
        let [vx, vy, _, _] = self.pixel.velocity();
        self.velocity_px_s = (vx, vy);
        let Some(g) = &self.ground_filter else {
            return;
        };
        let [x_m, y_m] = g.position();
        self.ground = Some(GroundPosition::at(x_m, y_m));
        (self.speed_mps, self.heading_deg) = ground_motion(g, config.max_speed_sd_mps);
    }

    /// Cost of pairing with `obs`, 0 for a perfect fit and 1 at the configured gate; `None`
    /// when the pair is out of a gate.
    fn cost(&self, obs: &Observation, gates: Gates) -> Option<f64> {
        if self.class_id != obs.class_id {
            return None;
        }
        // The image keeps a veto where the ground decides: a box elsewhere in the image is
        // another object wherever its feet project, and on TUD-Stadtmitte ground-only pairing
        // let departed tracks take over people walking in their footsteps.
        let overlap = iou(&self.bbox, &obs.bbox);
        let min_iou = f64::from(gates.min_iou);
        if !(overlap >= min_iou && overlap > 0.0) {
            return None;
        }
        match (gates.use_ground, &self.ground_filter, obs.usable_ground()) {
            (true, Some(filter), Some(seen)) => {
                let [x, y] = filter.position();
                let distance = (seen.x_m - x).hypot(seen.y_m - y);
                let widened = gates.ground_m + 2.0 * filter.position_sd();
                let gate = widened.min(gates.ground_m * MAX_GATE_WIDENING);
                (distance <= gate).then_some(distance / gates.ground_m)
            }
            _ => Some((1.0 - overlap) / (1.0 - min_iou).max(1e-6)),
        }
    }
}

fn pixel_measurement(b: &BBox, config: &TrackerConfig) -> (SVector<f64, 4>, SVector<f64, 4>) {
    let (x1, y1, x2, y2) = (
        f64::from(b.x1),
        f64::from(b.y1),
        f64::from(b.x2),
        f64::from(b.y2),
    );
    let (w, h) = (x2 - x1, y2 - y1);
    let z = SVector::from([(x1 + x2) / 2.0, (y1 + y2) / 2.0, w, h]);
    (z, SVector::from([w, h, w, h]) * config.pixel_noise)
}

fn new_ground_filter(g: GroundPosition, config: &TrackerConfig) -> CvFilter<4, 2> {
    CvFilter::new(
        SVector::from([g.x_m, g.y_m]),
        SVector::repeat(config.ground_noise_m),
        SVector::repeat(INITIAL_SPEED_SD_MPS),
    )
}

/// Speed and heading, honest about noise: unknown while the filter has not settled, zero
/// speed and no heading while the velocity is indistinguishable from standing still.
fn ground_motion(g: &CvFilter<4, 2>, max_sd: f64) -> (Option<f64>, Option<f64>) {
    let sd = g.velocity_sd();
    if sd.is_nan() || sd > max_sd {
        return (None, None);
    }
    let [vx, vy] = g.velocity();
    let speed = vx.hypot(vy);
    if speed <= MOTION_SIGNIFICANCE * sd {
        return (Some(0.0), None);
    }
    // atan2(east, north) measures clockwise from north.
    (
        Some(speed),
        Some(vx.atan2(vy).to_degrees().rem_euclid(360.0)),
    )
}

fn iou(a: &BBox, b: &BBox) -> f64 {
    let w = (a.x2.min(b.x2) - a.x1.max(b.x1)).max(0.0);
    let h = (a.y2.min(b.y2) - a.y1.max(b.y1)).max(0.0);
    let inter = f64::from(w) * f64::from(h);
    let area = |r: &BBox| f64::from((r.x2 - r.x1).max(0.0)) * f64::from((r.y2 - r.y1).max(0.0));
    let union = area(a) + area(b) - inter;
    if union > 0.0 {
        inter / union
    } else {
        0.0
    }
}

/// Optimal assignment of rows to columns minimising the total cost, where leaving a row and
/// a column unmatched costs [`UNMATCHED_COST`]; returns the matched (row, column) pairs.
fn assign(
    rows: usize,
    cols: usize,
    cost: impl Fn(usize, usize) -> Option<f64>,
) -> Vec<(usize, usize)> {
    if rows == 0 || cols == 0 {
        return Vec::new();
    }
    // Weight 0 stands for "not a pair"; every feasible pair weighs at least 1.
    let weight = |r: usize, c: usize| match cost(r, c) {
        Some(c) => ((UNMATCHED_COST - c) * WEIGHT_SCALE).round().max(1.0) as i64,
        None => 0,
    };
    // Kuhn–Munkres assigns every row, so rows must be the smaller side.
    let transposed = rows > cols;
    let (n, m) = if transposed {
        (cols, rows)
    } else {
        (rows, cols)
    };
    let weights = Matrix::from_fn(n, m, |(i, j)| {
        if transposed {
            weight(j, i)
        } else {
            weight(i, j)
        }
    });
    let (_, columns) = kuhn_munkres(&weights);
    columns
        .into_iter()
        .enumerate()
        .filter(|&(i, j)| weights[(i, j)] > 0)
        .map(|(i, j)| if transposed { (j, i) } else { (i, j) })
        .collect()
}

/// The tracks of one camera.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tracker {
    config: TrackerConfig,
    tracks: Vec<Track>,
    next_id: u64,
    /// Time of the latest update (seconds).
    now: Option<f64>,
}

impl Tracker {
    /// A tracker with no tracks. The config is expected to have passed
    /// [`TrackerConfig::validate`]; one that has not may track badly but never panics.
    pub fn new(config: TrackerConfig) -> Self {
        Self {
            config,
            tracks: Vec::new(),
            next_id: 1,
            now: None,
        }
    }

    pub fn config(&self) -> &TrackerConfig {
        &self.config
    }

    /// Tentative, confirmed and lost tracks, oldest first.
    pub fn tracks(&self) -> &[Track] {
        &self.tracks
    }

    /// Moves every track to time `t` (seconds) and matches the observations made then.
    ///
    /// Updates are expected in time order; a `t` at or before the previous one is taken as
    /// simultaneous with it (no motion), so a late frame cannot move tracks backwards.
    pub fn update(&mut self, t: f64, observations: &[Observation]) -> &[Track] {
        let (now, dt) = self.advance(t);
        for track in &mut self.tracks {
            track.predict(dt, &self.config);
        }
        let (high, low) = split_by_score(observations, &self.config);
        let mut matched = vec![false; self.tracks.len()];
        let all: Vec<usize> = (0..self.tracks.len()).collect();
        let gates = Gates::confident(&self.config);
        let unmatched_high = self.match_stage(now, &all, observations, &high, gates, &mut matched);

        // Only tracks seen in the previous update may take a weak observation: a lost track
        // picking up a weak one is more often a false positive than a return.
        let recent: Vec<usize> = all
            .into_iter()
            .filter(|&i| !matched[i] && self.tracks[i].state != TrackState::Lost)
            .collect();
        let gates = Gates::weak(&self.config);
        self.match_stage(now, &recent, observations, &low, gates, &mut matched);

        let mut index = 0;
        let config = &self.config;
        self.tracks.retain_mut(|track| {
            let keep = matched[index] || track.miss(now, config);
            index += 1;
            keep
        });
        for i in unmatched_high {
            let obs = &observations[i];
            if obs.score >= self.config.new_track_score {
                self.tracks
                    .push(Track::new(self.next_id, obs, now, &self.config));
                self.next_id += 1;
            }
        }
        &self.tracks
    }

    /// The update's time and the step from the previous one.
    fn advance(&mut self, t: f64) -> (f64, f64) {
        let now = match self.now {
            Some(prev) if t.is_finite() && t > prev => t,
            Some(prev) => prev,
            None if t.is_finite() => t,
            None => 0.0,
        };
        let dt = self.now.map_or(0.0, |prev| now - prev);
        self.now = Some(now);
        (now, dt)
    }

    /// Matches observations `obs_idx` to tracks `track_idx`, corrects the matched tracks and
    /// returns the observations left over.
    fn match_stage(
        &mut self,
        now: f64,
        track_idx: &[usize],
        observations: &[Observation],
        obs_idx: &[usize],
        gates: Gates,
        matched: &mut [bool],
    ) -> Vec<usize> {
        let pairs = assign(track_idx.len(), obs_idx.len(), |r, c| {
            self.tracks[track_idx[r]].cost(&observations[obs_idx[c]], gates)
        });
        let mut taken = vec![false; obs_idx.len()];
        for (r, c) in pairs {
            let ti = track_idx[r];
            self.tracks[ti].correct(&observations[obs_idx[c]], now, &self.config);
            matched[ti] = true;
            taken[c] = true;
        }
        obs_idx
            .iter()
            .zip(taken)
            .filter(|&(_, taken)| !taken)
            .map(|(&i, _)| i)
            .collect()
    }
}

/// A constant-velocity Kalman filter over `M` coordinates; the state is the coordinates
/// followed by their rates (`S` = 2`M`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct CvFilter<const S: usize, const M: usize> {
    #[serde(with = "flat")]
    mean: SVector<f64, S>,
    #[serde(with = "flat")]
    cov: SMatrix<f64, S, S>,
}

impl<const S: usize, const M: usize> CvFilter<S, M> {
    fn new(z: SVector<f64, M>, pos_sd: SVector<f64, M>, vel_sd: SVector<f64, M>) -> Self {
        const { assert!(S == 2 * M, "the state is the coordinates and their rates") };
        let mut mean = SVector::<f64, S>::zeros();
        let mut cov = SMatrix::<f64, S, S>::zeros();
        for i in 0..M {
            mean[i] = z[i];
            cov[(i, i)] = pos_sd[i].powi(2);
            cov[(i + M, i + M)] = vel_sd[i].powi(2);
        }
        Self { mean, cov }
    }

    /// Moves the state `dt` seconds on; `accel` is the acceleration noise density per
    /// coordinate (continuous white-noise acceleration, so the uncertainty grows with dt).
    fn predict(&mut self, dt: f64, accel: SVector<f64, M>) {
        let mut f = SMatrix::<f64, S, S>::identity();
        let mut q = SMatrix::<f64, S, S>::zeros();
        for i in 0..M {
            let a2 = accel[i].powi(2);
            f[(i, i + M)] = dt;
            q[(i, i)] = a2 * dt.powi(3) / 3.0;
            q[(i, i + M)] = a2 * dt.powi(2) / 2.0;
            q[(i + M, i)] = a2 * dt.powi(2) / 2.0;
            q[(i + M, i + M)] = a2 * dt;
        }
        self.mean = f * self.mean;
        self.cov = f * self.cov * f.transpose() + q;
    }

    /// Takes in a measurement of the coordinates with per-coordinate noise; a measurement
    /// the filter cannot take (singular innovation, non-finite numbers) is ignored.
    fn update(&mut self, z: SVector<f64, M>, noise_sd: SVector<f64, M>) {
        let hp = self.cov.fixed_rows::<M>(0).into_owned();
        let mut innovation_cov = hp.fixed_columns::<M>(0).into_owned();
        for i in 0..M {
            innovation_cov[(i, i)] += noise_sd[i].powi(2);
        }
        let Some(chol) = innovation_cov.cholesky() else {
            return;
        };
        // Kᵀ = S⁻¹ H P, as S and P are symmetric.
        let gain_t = chol.solve(&hp);
        let innovation = z - self.mean.fixed_rows::<M>(0);
        let mean = self.mean + gain_t.transpose() * innovation;
        let cov = self.cov - gain_t.transpose() * hp;
        if mean.iter().chain(cov.iter()).all(|v| v.is_finite()) {
            self.mean = mean;
            self.cov = (cov + cov.transpose()) * 0.5;
        }
    }

    /// Zeroes the rate of the given coordinates.
    fn stop_axes(&mut self, axes: &[usize]) {
        for &i in axes {
            if i < M {
                self.mean[i + M] = 0.0;
            }
        }
    }

    fn position(&self) -> [f64; M] {
        std::array::from_fn(|i| self.mean[i])
    }

    fn velocity(&self) -> [f64; M] {
        std::array::from_fn(|i| self.mean[i + M])
    }

    /// Mean standard deviation of the coordinates.
    fn position_sd(&self) -> f64 {
        ((0..M).map(|i| self.cov[(i, i)]).sum::<f64>() / M as f64).sqrt()
    }

    /// Mean standard deviation of the rates.
    fn velocity_sd(&self) -> f64 {
        ((0..M).map(|i| self.cov[(i + M, i + M)]).sum::<f64>() / M as f64).sqrt()
    }
}

/// nalgebra matrices as flat lists of numbers (column-major), since vigil's nalgebra is
/// built without its serde feature.
mod flat {
    use nalgebra::SMatrix;
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer, const R: usize, const C: usize>(
        m: &SMatrix<f64, R, C>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(m.iter())
    }

    pub fn deserialize<'de, D: Deserializer<'de>, const R: usize, const C: usize>(
        d: D,
    ) -> Result<SMatrix<f64, R, C>, D::Error> {
        let values = Vec::<f64>::deserialize(d)?;
        if values.len() != R * C {
            return Err(D::Error::invalid_length(
                values.len(),
                &"rows × columns numbers",
            ));
        }
        Ok(SMatrix::from_column_slice(&values))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PERSON: u32 = 0;
    const CAR: u32 = 2;

    /// A 40 × 100 px person box centred on (cx, cy).
    fn person(object_id: u32, cx: f32, cy: f32, score: f32) -> Observation {
        Observation {
            object_id,
            class_id: PERSON,
            label: "person".into(),
            score,
            bbox: BBox {
                x1: cx - 20.0,
                y1: cy - 50.0,
                x2: cx + 20.0,
                y2: cy + 50.0,
            },
            ground: None,
        }
    }

    fn at(mut obs: Observation, x_m: f64, y_m: f64) -> Observation {
        obs.ground = Some(GroundPosition::at(x_m, y_m));
        obs
    }

    /// The track that took observation `object_id` in the latest update.
    fn track_of(tracker: &Tracker, object_id: u32) -> &Track {
        let found = tracker
            .tracks()
            .iter()
            .find(|t| t.object_id == Some(object_id));
        found.unwrap_or_else(|| panic!("no track took observation {object_id}"))
    }

    fn centre_x(b: &BBox) -> f32 {
        (b.x1 + b.x2) / 2.0
    }

    /// Deterministic Gaussian noise (SplitMix64 and Box–Muller), so tests need no RNG crate.
    struct Noise(u64);

    impl Noise {
        fn uniform(&mut self) -> f64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
        }

        fn gauss(&mut self, sd: f64) -> f64 {
            let u = self.uniform().max(1e-12);
            let v = self.uniform();
            sd * (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
        }
    }

    #[test]
    fn crossing_objects_keep_their_ids() {
        let mut tracker = Tracker::new(TrackerConfig::default());
        let mut noise = Noise(7);
        let mut ids = (None, None);
        for k in 0..100 {
            let t = f64::from(k) * 0.04;
            // A walks right, B left, 100 px/s; their boxes overlap fully halfway.
            let ax = 100.0 + 100.0 * t as f32 + noise.gauss(1.0) as f32;
            let bx = 500.0 - 100.0 * t as f32 + noise.gauss(1.0) as f32;
            // The list order flips every frame, so no id can follow the input order.
            let mut obs = vec![person(1, ax, 200.0, 0.9), person(2, bx, 210.0, 0.9)];
            if k % 2 == 1 {
                obs.reverse();
            }
            tracker.update(t, &obs);
            if k >= 1 {
                let now = (track_of(&tracker, 1).id, track_of(&tracker, 2).id);
                let first = *ids.0.get_or_insert(now.0);
                let second = *ids.1.get_or_insert(now.1);
                assert_eq!(now, (first, second), "ids swapped at t = {t:.2}");
            }
        }
        assert_ne!(ids.0, ids.1);
    }

    #[test]
    fn ground_distance_separates_boxes_that_overlap() {
        let mut tracker = Tracker::new(TrackerConfig::default());
        let mut ids = Vec::new();
        for k in 0..30 {
            // The same box in the image, one person 4 m behind the other.
            let near = at(person(1, 300.0, 200.0, 0.9), 0.0, 5.0);
            let far = at(person(2, 300.0, 200.0, 0.9), 0.0, 9.0);
            let obs = if k % 2 == 0 { [near, far] } else { [far, near] };
            tracker.update(f64::from(k) * 0.1, &obs);
            ids.push((track_of(&tracker, 1).id, track_of(&tracker, 2).id));
        }
        assert!(ids.windows(2).all(|w| w[0] == w[1]), "{ids:?}");
        let near = track_of(&tracker, 1).ground.map(|g| g.y_m);
        assert!(near.is_some_and(|y| (y - 5.0).abs() < 0.1), "{near:?}");
    }

    #[test]
    fn ground_alone_does_not_pair_boxes_apart_in_the_image() {
        let mut tracker = Tracker::new(TrackerConfig::default());
        for k in 0..3 {
            tracker.update(
                f64::from(k) * 0.1,
                &[at(person(1, 300.0, 200.0, 0.9), 0.0, 5.0)],
            );
        }
        // Same ground spot, box 200 px away: a different object (or a bad ground fix).
        tracker.update(0.3, &[at(person(1, 500.0, 200.0, 0.9), 0.0, 5.1)]);
        let states: Vec<_> = tracker.tracks().iter().map(|t| t.state).collect();
        assert_eq!(states, [TrackState::Lost, TrackState::Tentative]);

        let image_only = TrackerConfig {
            ground_association: false,
            ..TrackerConfig::default()
        };
        let mut tracker = Tracker::new(image_only);
        for k in 0..30 {
            // Matched on the image alone; ground position and speed are still estimated.
            let near = at(person(1, 300.0, 200.0, 0.9), 0.0, 5.0);
            tracker.update(f64::from(k) * 0.1, &[near]);
        }
        let track = track_of(&tracker, 1);
        assert_eq!(track.speed_mps, Some(0.0));
        assert!(track.ground.is_some_and(|g| (g.y_m - 5.0).abs() < 0.01));
    }

    #[test]
    fn short_gap_keeps_the_id_and_long_gap_starts_a_new_one() {
        let mut tracker = Tracker::new(TrackerConfig::default());
        let obs = [person(1, 300.0, 200.0, 0.9)];
        let mut t = 0.0;
        for _ in 0..5 {
            tracker.update(t, &obs);
            t += 0.1;
        }
        let id = track_of(&tracker, 1).id;

        for _ in 0..5 {
            tracker.update(t, &[]);
            t += 0.1;
        }
        assert_eq!(tracker.tracks()[0].state, TrackState::Lost);
        assert_eq!(tracker.tracks()[0].object_id, None);
        tracker.update(t, &obs);
        assert_eq!(track_of(&tracker, 1).id, id, "0.5 s gap");
        assert_eq!(track_of(&tracker, 1).state, TrackState::Confirmed);

        for _ in 0..30 {
            t += 0.1;
            tracker.update(t, &[]);
        }
        assert!(tracker.tracks().is_empty(), "lost for 3 s, past max_lost_s");
        tracker.update(t + 0.1, &obs);
        assert!(track_of(&tracker, 1).id > id, "3 s gap");
    }

    /// Walks right at 100 px/s, 10 updates a second; from 1 s to 3 s the detector is unsure
    /// (score 0.3). Returns the ids the walker had.
    fn walk_through_occlusion(config: TrackerConfig) -> Vec<u64> {
        let mut tracker = Tracker::new(config);
        let mut ids = Vec::new();
        for k in 0..40 {
            let t = f64::from(k) * 0.1;
            let score = if (10..30).contains(&k) { 0.3 } else { 0.9 };
            tracker.update(t, &[person(1, 100.0 + 100.0 * t as f32, 200.0, score)]);
            if let Some(track) = tracker.tracks().iter().find(|t| t.object_id.is_some()) {
                if track.state == TrackState::Confirmed && !ids.contains(&track.id) {
                    ids.push(track.id);
                }
            }
        }
        ids
    }

    #[test]
    fn weak_detections_carry_a_track_through_an_occlusion() {
        assert_eq!(walk_through_occlusion(TrackerConfig::default()).len(), 1);
        // Without the second stage the weak detections are ignored, the track dies after
        // max_lost_s and the walker comes back under a new id.
        let one_stage = TrackerConfig {
            low_score: 0.5,
            ..TrackerConfig::default()
        };
        assert_eq!(walk_through_occlusion(one_stage).len(), 2);
    }

    #[test]
    fn weak_detections_do_not_start_or_revive_tracks() {
        let mut tracker = Tracker::new(TrackerConfig::default());
        tracker.update(0.0, &[person(1, 300.0, 200.0, 0.3)]);
        assert!(tracker.tracks().is_empty());
        for k in 0..3 {
            tracker.update(f64::from(k) * 0.1, &[person(1, 300.0, 200.0, 0.9)]);
        }
        tracker.update(0.3, &[]);
        tracker.update(0.4, &[person(1, 300.0, 200.0, 0.3)]);
        assert_eq!(tracker.tracks()[0].state, TrackState::Lost);
    }

    #[test]
    fn variable_time_steps_predict_with_the_real_dt() {
        let mut tracker = Tracker::new(TrackerConfig::default());
        let x = |t: f64| 100.0 + 120.0 * t as f32;
        let mut times: Vec<f64> = (0..=10).map(|k| f64::from(k) * 0.1).collect();
        // Half-second gaps: the walker moves 60 px, more than its 40 px width, so its old
        // box does not overlap the new one; only a prediction over 0.5 s does.
        times.extend([1.5, 2.0, 2.5]);
        let mut ids = Vec::new();
        for &t in &times {
            tracker.update(t, &[person(1, x(t), 200.0, 0.9)]);
            ids.push(track_of(&tracker, 1).id);
        }
        assert!(ids.iter().all(|&id| id == ids[0]), "{ids:?}");
        let track = track_of(&tracker, 1);
        assert!(
            (track.velocity_px_s.0 - 120.0).abs() < 5.0,
            "{:?}",
            track.velocity_px_s
        );
        assert!(
            track.velocity_px_s.1.abs() < 5.0,
            "{:?}",
            track.velocity_px_s
        );

        tracker.update(3.2, &[]);
        let predicted = centre_x(&tracker.tracks()[0].bbox);
        assert!(
            (predicted - x(3.2)).abs() < 4.0,
            "{predicted} vs {}",
            x(3.2)
        );
    }

    /// Walks from the origin at (vx, vy) m/s, seen 10 times a second with 10 cm of noise,
    /// for 5 s; returns the final speed and heading.
    fn walk(vx: f64, vy: f64) -> (Option<f64>, Option<f64>) {
        let mut tracker = Tracker::new(TrackerConfig::default());
        let mut noise = Noise(11);
        for k in 0..50 {
            let t = f64::from(k) * 0.1;
            let (x, y) = (vx * t + noise.gauss(0.1), vy * t + noise.gauss(0.1));
            tracker.update(t, &[at(person(1, 300.0, 200.0, 0.9), x, y)]);
        }
        let track = track_of(&tracker, 1);
        (track.speed_mps, track.heading_deg)
    }

    #[test]
    fn speed_and_heading_come_from_ground_motion() {
        let east = walk(1.5, 0.0);
        assert!(east.0.is_some_and(|s| (s - 1.5).abs() < 0.15), "{east:?}");
        assert!(east.1.is_some_and(|h| (h - 90.0).abs() < 5.0), "{east:?}");
        let south = walk(0.0, -1.0);
        assert!(
            south.1.is_some_and(|h| (h - 180.0).abs() < 5.0),
            "{south:?}"
        );
        let north_west = walk(-1.0, 1.0);
        assert!(
            north_west.1.is_some_and(|h| (h - 315.0).abs() < 5.0),
            "{north_west:?}"
        );
    }

    #[test]
    fn a_standing_object_with_jittering_detections_has_near_zero_speed() {
        for (hz, seed) in [(25.0, 1), (25.0, 2), (10.0, 3), (10.0, 4)] {
            let mut tracker = Tracker::new(TrackerConfig::default());
            let mut noise = Noise(seed);
            let mut worst: f64 = 0.0;
            for k in 0..(20.0 * hz) as u32 {
                let t = f64::from(k) / hz;
                let (x, y) = (10.0 + noise.gauss(0.3), 20.0 + noise.gauss(0.3));
                tracker.update(t, &[at(person(1, 300.0, 200.0, 0.9), x, y)]);
                let track = track_of(&tracker, 1);
                if t >= 2.0 {
                    assert!(track.speed_mps.is_some(), "speed unknown at {t} s, {hz} Hz");
                    worst = worst.max(track.speed_mps.unwrap_or(0.0));
                }
            }
            assert!(worst < 0.3, "{worst} m/s at {hz} Hz");
        }
    }

    #[test]
    fn speed_is_unknown_until_the_velocity_settles() {
        let mut tracker = Tracker::new(TrackerConfig::default());
        tracker.update(0.0, &[at(person(1, 300.0, 200.0, 0.9), 0.0, 0.0)]);
        tracker.update(0.04, &[at(person(1, 300.0, 200.0, 0.9), 0.3, 0.0)]);
        let track = track_of(&tracker, 1);
        assert_eq!((track.speed_mps, track.heading_deg), (None, None));
        assert!(track.ground.is_some());
    }

    #[test]
    fn classes_do_not_mix() {
        let mut tracker = Tracker::new(TrackerConfig::default());
        for k in 0..3 {
            tracker.update(f64::from(k) * 0.1, &[person(1, 300.0, 200.0, 0.9)]);
        }
        let mut car = person(1, 300.0, 200.0, 0.9);
        car.class_id = CAR;
        car.label = "car".into();
        tracker.update(0.3, &[car]);
        let states: Vec<_> = tracker
            .tracks()
            .iter()
            .map(|t| (t.label.as_str(), t.state))
            .collect();
        assert_eq!(
            states,
            [("person", TrackState::Lost), ("car", TrackState::Tentative)]
        );
    }

    #[test]
    fn ids_are_never_reused() {
        let mut tracker = Tracker::new(TrackerConfig::default());
        let mut seen = Vec::new();
        for k in 0..20 {
            // A new one-off detection every 0.5 s: each dies tentative, none shares an id.
            let t = f64::from(k) * 0.5;
            tracker.update(t, &[person(k, 100.0 * k as f32, 200.0, 0.9)]);
            seen.push(track_of(&tracker, k).id);
        }
        let mut unique = seen.clone();
        unique.dedup();
        assert_eq!(unique, seen);
        assert!(seen.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn odd_times_and_boxes_do_not_panic() {
        let mut tracker = Tracker::new(TrackerConfig::default());
        tracker.update(f64::NAN, &[person(1, 300.0, 200.0, 0.9)]);
        tracker.update(1.0, &[person(1, 300.0, 200.0, 0.9)]);
        let before = tracker.tracks()[0].bbox;
        // Earlier than the previous update: no motion, backwards or forwards.
        tracker.update(0.5, &[]);
        assert_eq!(tracker.tracks()[0].bbox, before);
        tracker.update(f64::INFINITY, &[]);
        let mut flat = person(2, 100.0, 100.0, 0.9);
        flat.bbox.x2 = flat.bbox.x1;
        let mut nan = person(3, 100.0, 100.0, 0.9);
        nan.bbox.y1 = f32::NAN;
        let mut far_off = at(person(4, 500.0, 100.0, 0.9), f64::NAN, 1.0);
        far_off.score = 0.95;
        tracker.update(1.1, &[flat, nan, far_off]);
        let ids: Vec<_> = tracker
            .tracks()
            .iter()
            .filter_map(|t| t.object_id)
            .collect();
        assert_eq!(ids, [4]);
        assert_eq!(track_of(&tracker, 4).ground, None);
    }

    #[test]
    fn a_snapshot_resumes_where_it_left_off() {
        let mut tracker = Tracker::new(TrackerConfig::default());
        for k in 0..10 {
            let t = f64::from(k) * 0.1;
            let obs = at(person(1, 100.0 + 50.0 * t as f32, 200.0, 0.9), t, 2.0);
            tracker.update(t, &[obs, person(2, 400.0, 300.0, 0.8)]);
        }
        let json = serde_json::to_string(&tracker).unwrap();
        assert!(json.contains(r#""state":"confirmed""#), "{json}");
        let from_json: Tracker = serde_json::from_str(&json).unwrap();
        assert_eq!(from_json.tracks().len(), 2);
        // MessagePack, vigil's wire codec, keeps every bit of every number.
        let packed = rmp_serde::to_vec_named(&tracker).unwrap();
        let mut restored: Tracker = rmp_serde::from_slice(&packed).unwrap();
        assert_eq!(restored, tracker);

        let next = [at(person(1, 151.0, 200.0, 0.9), 1.0, 2.0)];
        assert_eq!(restored.update(1.0, &next), tracker.update(1.0, &next));
    }

    #[test]
    fn assignment_is_optimal_not_greedy() {
        // Greedy takes the cheapest pair (0, 0) first and leaves track 1 without a match.
        let costs = [[Some(0.1), Some(0.2)], [Some(0.15), None]];
        let mut pairs = assign(2, 2, |r, c| costs[r][c]);
        pairs.sort_unstable();
        assert_eq!(pairs, [(0, 1), (1, 0)]);
        // More observations than tracks, and pairs outside every gate.
        let pairs = assign(1, 3, |_, c| (c == 2).then_some(0.5));
        assert_eq!(pairs, [(0, 2)]);
        assert!(assign(2, 2, |_, _| None).is_empty());
        assert!(assign(0, 4, |_, _| Some(0.0)).is_empty());
    }

    #[test]
    fn default_config_is_valid_and_bad_values_are_named() {
        type Spoil = fn(&mut TrackerConfig);
        assert_eq!(TrackerConfig::default().validate(), Ok(()));
        let cases: [(&str, Spoil); 6] = [
            ("low_score", |c| c.low_score = 0.7),
            ("new_track_score", |c| c.new_track_score = 0.4),
            ("min_iou_low", |c| c.min_iou_low = 0.1),
            ("ground_gate_low_m", |c| c.ground_gate_low_m = 3.0),
            ("min_hits", |c| c.min_hits = 0),
            ("ground_noise_m", |c| c.ground_noise_m = f64::NAN),
        ];
        for (field, spoil) in cases {
            let mut config = TrackerConfig::default();
            spoil(&mut config);
            assert_eq!(config.validate().map_err(|e| e.key), Err(field.to_string()));
        }
    }

    #[test]
    fn config_reads_partial_toml_and_refuses_unknown_keys() {
        let config: TrackerConfig = toml::from_str("max_lost_s = 3.0").unwrap();
        assert_eq!(config.max_lost_s, 3.0);
        assert_eq!(config.min_hits, TrackerConfig::default().min_hits);
        assert!(toml::from_str::<TrackerConfig>("max_lost_frames = 30").is_err());
    }
}
