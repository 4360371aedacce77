//! The alert lifecycle of one camera: conditions in, `new` / `update` / `end` messages out.
//!
//! A condition must hold for its rule's sustain time before its alert starts (`new`). While it
//! holds, a material change — another level, other objects involved, more line crossings — is
//! an `update`: escalations at once, anything else at most every
//! `situations.update_min_interval_s`. When the condition is gone for
//! `situations.end_after_s` (hysteresis: coming back in time continues the same alert) the
//! alert `end`s. All times are the events' capture times, so the same events give the same
//! messages, live or replayed; the alert id ends with the time the situation started, and
//! every message carries a rising revision.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::rules::{seconds, Condition};
use super::track::Track;
use crate::contract::{
    Alert, AlertObject, AlertSnapshots, AlertState, EndReason, Peak, RiskEvent, ALERT_SCHEMA,
};
use crate::risk::{label_counts, priority, Language};

/// Most event ids one alert message carries.
const MAX_EVENT_IDS: usize = 20;

/// How alerts start, change and end.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Lifecycle {
    pub end_after_s: f64,
    pub update_min_interval_s: f64,
    pub language: Language,
}

/// One camera's alerts and would-be alerts.
#[derive(Debug, Default)]
pub struct AlertBook {
    entries: BTreeMap<(String, String), Entry>,
}

#[derive(Debug)]
enum Entry {
    /// Holding, but not yet for its sustain time.
    Pending {
        since: DateTime<Utc>,
        events: Vec<String>,
    },
    Active(Box<Active>),
}

/// An alert that started and has not ended: what is persisted so that another instance can
/// continue it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Active {
    /// The last message published.
    pub alert: Alert,
    /// When the condition last held.
    pub last_true: DateTime<Utc>,
    /// Since when it has not held (None while it holds).
    pub clearing_since: Option<DateTime<Utc>>,
    /// Events since the last message.
    pub events: Vec<String>,
}

/// What the book needs to know about the moment it is applied at.
pub struct Moment<'a> {
    pub event: &'a RiskEvent,
    pub tracks: &'a [Track],
    /// The camera's name for descriptions.
    pub place: &'a str,
    /// The snapshot that shows this moment: the event's own, the camera's latest one taken
    /// shortly before, or (when processors keep frames) this event's frame, to be kept.
    pub snapshot: Option<&'a str>,
}

impl AlertBook {
    /// Applies the conditions holding at `moment` and returns the messages to publish.
    pub fn apply(
        &mut self,
        life: &Lifecycle,
        moment: &Moment<'_>,
        conditions: Vec<Condition>,
    ) -> Vec<Alert> {
        let t = moment.event.captured_at;
        let mut out = Vec::new();
        let mut holding = BTreeSet::new();
        for condition in conditions {
            let key = condition.key();
            holding.insert(key.clone());
            let entry = self.entries.remove(&key);
            let next = match entry {
                None | Some(Entry::Pending { .. }) => {
                    let (since, mut events) = match entry {
                        Some(Entry::Pending { since, events }) => (since, events),
                        _ => (t, Vec::new()),
                    };
                    push_event(&mut events, &moment.event.event_id);
                    if seconds(t) - seconds(since) >= condition.sustain_s {
                        let alert = start(life, moment, &condition, since, events);
                        out.push(alert.clone());
                        Entry::Active(Box::new(Active {
                            alert,
                            last_true: t,
                            clearing_since: None,
                            events: Vec::new(),
                        }))
                    } else {
                        Entry::Pending { since, events }
                    }
                }
                Some(Entry::Active(mut active)) => {
                    active.last_true = t;
                    active.clearing_since = None;
                    push_event(&mut active.events, &moment.event.event_id);
                    if let Some(update) = revise(life, moment, &condition, &mut active) {
                        out.push(update);
                    }
                    Entry::Active(active)
                }
            };
            self.entries.insert(key, next);
        }
        let gone: Vec<(String, String)> = self
            .entries
            .keys()
            .filter(|k| !holding.contains(*k))
            .cloned()
            .collect();
        for key in gone {
            match self.entries.remove(&key) {
                Some(Entry::Active(mut active)) => {
                    let since = *active.clearing_since.get_or_insert(t);
                    push_event(&mut active.events, &moment.event.event_id);
                    if seconds(t) - seconds(since) >= life.end_after_s {
                        out.push(finish(
                            life,
                            moment.place,
                            &mut active,
                            t,
                            EndReason::Cleared,
                        ));
                    } else {
                        self.entries.insert(key, Entry::Active(active));
                    }
                }
                // A condition that did not hold for its sustain time leaves no trace.
                Some(Entry::Pending { .. }) | None => {}
            }
        }
        out
    }

    /// Ends every active alert (the camera went silent), and forgets pending ones.
    pub fn end_all(
        &mut self,
        life: &Lifecycle,
        place: &str,
        at: DateTime<Utc>,
        reason: EndReason,
    ) -> Vec<Alert> {
        let entries = std::mem::take(&mut self.entries);
        entries
            .into_values()
            .filter_map(|entry| match entry {
                Entry::Active(mut active) => Some(finish(life, place, &mut active, at, reason)),
                Entry::Pending { .. } => None,
            })
            .collect()
    }

    /// The alerts that started and have not ended, for persistence.
    pub fn active(&self) -> Vec<Active> {
        self.entries
            .values()
            .filter_map(|e| match e {
                Entry::Active(a) => Some((**a).clone()),
                Entry::Pending { .. } => None,
            })
            .collect()
    }

    /// Continues alerts another instance started (from persistence).
    pub fn restore(&mut self, alerts: Vec<Active>) {
        for active in alerts {
            let zone = active
                .alert
                .zone
                .as_ref()
                .map_or("view".to_string(), |z| z.id.clone());
            let key = (active.alert.rule.clone(), zone);
            self.entries.insert(key, Entry::Active(Box::new(active)));
        }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether an active alert's start or peak snapshot is `snapshot` (a peak can move
    /// without a message going out).
    pub fn refers_to(&self, snapshot: &str) -> bool {
        self.entries.values().any(|e| match e {
            Entry::Active(a) => a.alert.snapshots.refers_to(snapshot),
            Entry::Pending { .. } => false,
        })
    }
}

fn push_event(events: &mut Vec<String>, id: &str) {
    if events.last().map(String::as_str) != Some(id) {
        events.push(id.to_string());
    }
    if events.len() > MAX_EVENT_IDS {
        let excess = events.len() - MAX_EVENT_IDS;
        events.drain(..excess);
    }
}

fn start(
    life: &Lifecycle,
    moment: &Moment<'_>,
    condition: &Condition,
    since: DateTime<Utc>,
    events: Vec<String>,
) -> Alert {
    let event = moment.event;
    let zone = condition.zone.as_ref().map_or("view", |z| z.id.as_str());
    let mut alert = Alert {
        schema: ALERT_SCHEMA.to_string(),
        alert_id: format!(
            "{}.{}.{}.{zone}.{}",
            event.site,
            event.camera_id,
            condition.rule,
            since.timestamp_millis()
        ),
        revision: 1,
        state: AlertState::New,
        rule: condition.rule.to_string(),
        level: condition.level,
        priority: priority(condition.level),
        site: event.site.clone(),
        camera_id: event.camera_id.clone(),
        zone: condition.zone.clone(),
        objects: objects(moment, &condition.tracks),
        value: condition.value,
        unit: condition.unit.to_string(),
        peak: Peak {
            value: condition.value,
            level: condition.level,
            at: event.captured_at,
        },
        crossings: condition.crossings.clone(),
        started_at: since,
        updated_at: event.captured_at,
        ended_at: None,
        end_reason: None,
        description: String::new(),
        event_ids: events,
        snapshots: AlertSnapshots {
            new: moment.snapshot.map(str::to_string),
            peak: moment.snapshot.map(str::to_string),
        },
    };
    alert.description = describe(life.language, moment.place, &alert);
    alert
}

/// The next revision if the situation changed materially (and the rate limit allows it).
fn revise(
    life: &Lifecycle,
    moment: &Moment<'_>,
    condition: &Condition,
    active: &mut Active,
) -> Option<Alert> {
    let t = moment.event.captured_at;
    let last = &active.alert;
    let mut next = last.clone();
    next.value = condition.value;
    if condition.value > next.peak.value || condition.level > next.peak.level {
        next.peak = Peak {
            value: condition.value.max(next.peak.value),
            level: condition.level.max(next.peak.level),
            at: t,
        };
        if let Some(id) = moment.snapshot {
            next.snapshots.peak = Some(id.to_string());
        }
    }
    for (direction, n) in &condition.crossings {
        *next.crossings.entry(direction.clone()).or_insert(0) += n;
    }
    let ids = |a: &Alert| {
        a.objects
            .iter()
            .map(|o| o.track_id)
            .collect::<BTreeSet<_>>()
    };
    let involved: BTreeSet<u64> = condition.tracks.iter().copied().collect();
    let escalated = condition.level > last.level;
    let changed =
        condition.level != last.level || involved != ids(last) || next.crossings != last.crossings;
    let waited = seconds(t) - seconds(last.updated_at) >= life.update_min_interval_s;
    // Peaks and counts are kept even when no message goes out, so the next one is complete.
    active.alert.peak = next.peak;
    active.alert.snapshots = next.snapshots.clone();
    active.alert.crossings = next.crossings.clone();
    if !(escalated || (changed && waited)) {
        return None;
    }
    next.level = condition.level;
    next.priority = priority(condition.level);
    next.objects = objects(moment, &condition.tracks);
    next.revision += 1;
    next.state = AlertState::Update;
    next.updated_at = t;
    next.event_ids = std::mem::take(&mut active.events);
    next.description = describe(life.language, moment.place, &next);
    active.alert = next.clone();
    Some(next)
}

fn finish(
    life: &Lifecycle,
    place: &str,
    active: &mut Active,
    at: DateTime<Utc>,
    reason: EndReason,
) -> Alert {
    let mut end = active.alert.clone();
    end.revision += 1;
    end.state = AlertState::End;
    end.updated_at = at;
    end.ended_at = Some(active.clearing_since.unwrap_or(at));
    end.end_reason = Some(reason);
    end.event_ids = std::mem::take(&mut active.events);
    end.description = describe(life.language, place, &end);
    end
}

fn objects(moment: &Moment<'_>, ids: &[u64]) -> Vec<AlertObject> {
    let mut out: Vec<AlertObject> = moment
        .tracks
        .iter()
        .filter(|t| ids.contains(&t.id))
        .map(|t| {
            let geo = t.object_id.and_then(|id| {
                moment
                    .event
                    .objects
                    .iter()
                    .find(|o| o.id == id)
                    .and_then(|o| o.geo)
            });
            AlertObject {
                track_id: t.id,
                class_id: t.class_id,
                label: t.label.clone(),
                bbox: t.bbox,
                ground: t.ground,
                geo,
                speed_mps: t.speed_mps,
                heading_deg: t.heading_deg,
            }
        })
        .collect();
    out.sort_by_key(|o| o.track_id);
    out
}

/// One or two sentences for people, in the configured language.
fn describe(lang: Language, place: &str, alert: &Alert) -> String {
    let who = label_counts(lang, alert.objects.iter().map(|o| o.label.as_str()));
    let who = if who.is_empty() {
        match lang {
            Language::En => "nobody tracked".to_string(),
            Language::Ko => "추적 대상 없음".to_string(),
        }
    } else {
        who
    };
    let zone = alert.zone.as_ref().map_or("", |z| z.name.as_str());
    let v = alert.value;
    let text = match (lang, alert.rule.as_str()) {
        (Language::En, "intrusion") => {
            format!("Intrusion: {who} in restricted zone '{zone}' at {place} ({v:.0} s).")
        }
        (Language::Ko, "intrusion") => {
            format!("침입: {place}의 제한 구역 '{zone}'에 {who} ({v:.0}초).")
        }
        (Language::En, "loitering") => {
            format!("Loitering: {who} in '{zone}' at {place} for {v:.0} s.")
        }
        (Language::Ko, "loitering") => {
            format!("배회: {place}의 '{zone}'에 {who}, {v:.0}초째 머묾.")
        }
        (Language::En, "crowd") => {
            format!("Crowd: {v:.1} people per m² in '{zone}' at {place}.")
        }
        (Language::Ko, "crowd") => format!("군중 밀집: {place}의 '{zone}'에 m²당 {v:.1}명."),
        (Language::En, "proximity") => {
            format!("Proximity: {who} within {v:.1} m of each other, a vehicle moving, at {place}.")
        }
        (Language::Ko, "proximity") => {
            format!("근접: {place}에서 움직이는 차량과 사람이 {v:.1} m 이내 ({who}).")
        }
        (Language::En, "line_crossing") => format!(
            "Line '{zone}' crossed at {place}: {} in, {} out.",
            alert.crossings.get("in").unwrap_or(&0),
            alert.crossings.get("out").unwrap_or(&0)
        ),
        (Language::Ko, "line_crossing") => format!(
            "선 '{zone}' 통과 ({place}): 진입 {}, 진출 {}.",
            alert.crossings.get("in").unwrap_or(&0),
            alert.crossings.get("out").unwrap_or(&0)
        ),
        (Language::En, "count") => format!("Count: {who} in view at {place}."),
        (Language::Ko, "count") => format!("인원 초과: {place}에 {who}."),
        (Language::En, rule) => format!("{rule}: {who} at {place}."),
        (Language::Ko, rule) => format!("{rule}: {place}, {who}."),
    };
    match (alert.state, alert.end_reason, lang) {
        (AlertState::End, Some(EndReason::CameraSilent), Language::En) => {
            format!("Ended (camera silent): {text}")
        }
        (AlertState::End, Some(EndReason::CameraSilent), Language::Ko) => {
            format!("종료 (카메라 응답 없음): {text}")
        }
        (AlertState::End, _, Language::En) => format!("Ended: {text}"),
        (AlertState::End, _, Language::Ko) => format!("종료: {text}"),
        _ => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::{AlertZone, Level};

    fn event(ms: i64) -> RiskEvent {
        let at = DateTime::<Utc>::from_timestamp_millis(1_800_000_000_000 + ms).unwrap_or_default();
        RiskEvent::bare(&format!("s.c.f{ms}"), at)
    }

    fn crowd(level: Level, tracks: &[u64], sustain_s: f64) -> Condition {
        Condition {
            rule: "crowd",
            zone: Some(AlertZone {
                id: "plaza".into(),
                name: "Plaza".into(),
                kind: "crowd".into(),
            }),
            level,
            value: 2.5,
            unit: "people/m²",
            tracks: tracks.to_vec(),
            crossings: BTreeMap::new(),
            sustain_s,
        }
    }

    const LIFE: Lifecycle = Lifecycle {
        end_after_s: 2.0,
        update_min_interval_s: 5.0,
        language: Language::En,
    };

    /// Feeds one condition (or none) per 100 ms step; returns (step, state, level) of what went out.
    fn run(book: &mut AlertBook, steps: &[Option<Condition>]) -> Vec<(usize, AlertState, Level)> {
        let mut out = Vec::new();
        for (i, condition) in steps.iter().enumerate() {
            let e = event(100 * i as i64);
            let moment = Moment {
                event: &e,
                tracks: &[],
                place: "Plaza cam",
                snapshot: None,
            };
            for a in book.apply(&LIFE, &moment, condition.iter().cloned().collect()) {
                out.push((i, a.state, a.level));
            }
        }
        out
    }

    #[test]
    fn an_alert_starts_after_its_sustain_time_and_ends_after_the_hysteresis() {
        let mut steps = vec![Some(crowd(Level::Medium, &[1], 1.0)); 15];
        // Gone for 1 s (less than end_after_s): the same alert goes on.
        steps.extend(vec![None; 10]);
        steps.extend(vec![Some(crowd(Level::Medium, &[1], 1.0)); 5]);
        // Gone for good.
        steps.extend(vec![None; 25]);
        let out = run(&mut AlertBook::default(), &steps);
        assert_eq!(
            out,
            vec![
                (10, AlertState::New, Level::Medium),
                (50, AlertState::End, Level::Medium)
            ]
        );
    }

    #[test]
    fn a_condition_shorter_than_its_sustain_time_leaves_no_trace() {
        let mut steps = vec![Some(crowd(Level::High, &[1], 1.0)); 5];
        steps.extend(vec![None; 30]);
        assert!(run(&mut AlertBook::default(), &steps).is_empty());
    }

    #[test]
    fn escalation_goes_out_at_once_other_changes_at_most_every_interval() {
        let mut steps = vec![Some(crowd(Level::Medium, &[1], 0.0)); 3];
        steps.push(Some(crowd(Level::Critical, &[1], 0.0)));
        // Other people involved, for 8 s: one update after the 5 s interval, not one per step.
        steps.extend(vec![Some(crowd(Level::Critical, &[1, 2], 0.0)); 80]);
        let out = run(&mut AlertBook::default(), &steps);
        assert_eq!(
            out,
            vec![
                (0, AlertState::New, Level::Medium),
                (3, AlertState::Update, Level::Critical),
                (53, AlertState::Update, Level::Critical)
            ]
        );
    }

    #[test]
    fn revisions_rise_and_a_restored_alert_continues_without_a_new() {
        let mut book = AlertBook::default();
        let mut steps = vec![Some(crowd(Level::Medium, &[1], 0.0)); 3];
        steps.push(Some(crowd(Level::High, &[1], 0.0)));
        run(&mut book, &steps);
        let saved = book.active();
        assert_eq!(saved[0].alert.revision, 2);
        // Another instance takes over with the saved alerts: the condition ends there.
        let mut other = AlertBook::default();
        other.restore(saved);
        let e = event(10_000);
        let moment = Moment {
            event: &e,
            tracks: &[],
            place: "Plaza cam",
            snapshot: None,
        };
        assert!(other.apply(&LIFE, &moment, Vec::new()).is_empty());
        let e = event(12_500);
        let moment = Moment {
            event: &e,
            tracks: &[],
            place: "Plaza cam",
            snapshot: None,
        };
        let out = other.apply(&LIFE, &moment, Vec::new());
        assert_eq!((out[0].state, out[0].revision), (AlertState::End, 3));
        assert_eq!(out[0].end_reason, Some(EndReason::Cleared));
        assert!(
            out[0].description.starts_with("Ended: Crowd"),
            "{}",
            out[0].description
        );
    }

    #[test]
    fn a_silent_camera_ends_its_alerts_with_that_reason_in_korean_too() {
        let mut book = AlertBook::default();
        run(&mut book, &[Some(crowd(Level::Medium, &[1], 0.0))]);
        let life = Lifecycle {
            language: Language::Ko,
            ..LIFE
        };
        let at = event(60_000).captured_at;
        let out = book.end_all(&life, "광장", at, EndReason::CameraSilent);
        assert_eq!(out[0].end_reason, Some(EndReason::CameraSilent));
        assert!(
            out[0].description.contains("카메라 응답 없음"),
            "{}",
            out[0].description
        );
        assert!(book.is_empty());
    }
}
