//! Re-evaluation: archived events through the situation stage twice, once with the running
//! configuration and once with a candidate, without the model and without touching live
//! subjects, then the difference: which alerts appear, disappear or change.
//!
//! Both sides are evaluated here, from the same events, rather than comparing the candidate
//! with the archived alerts: the archive's alerts also depend on what happened live (a
//! failover, events that came late), and a difference must come from the configuration alone.
//! Alerts are matched by camera, rule and zone (or line) and overlapping time, so an alert
//! whose start moves stays one alert that changed.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use mongodb::bson::Document;
use mongodb::Collection;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::query::{Kind, Order, Query, QueryError};
use crate::config::Config;
use crate::contract::{Alert, Level};
use crate::situations::Evaluator;

/// An alert as it finally stood, for the comparison.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlertOutline {
    pub alert_id: String,
    pub rule: String,
    pub site: String,
    pub camera_id: String,
    /// Zone or line id; none for the whole view.
    pub zone: Option<String>,
    /// The highest level it reached.
    pub level: Level,
    pub peak_value: f64,
    pub unit: String,
    pub started_at: DateTime<Utc>,
    /// None: still open at the end of the window.
    pub ended_at: Option<DateTime<Utc>>,
    pub revisions: u32,
}

impl AlertOutline {
    fn of(alert: &Alert) -> AlertOutline {
        AlertOutline {
            alert_id: alert.alert_id.clone(),
            rule: alert.rule.clone(),
            site: alert.site.clone(),
            camera_id: alert.camera_id.clone(),
            zone: alert.zone.as_ref().map(|z| z.id.clone()),
            level: alert.peak.level,
            peak_value: alert.peak.value,
            unit: alert.unit.clone(),
            started_at: alert.started_at,
            ended_at: alert.ended_at,
            revisions: alert.revision,
        }
    }

    fn subject(&self) -> (&str, &str, &str, Option<&str>) {
        (
            &self.site,
            &self.camera_id,
            &self.rule,
            self.zone.as_deref(),
        )
    }

    fn overlaps(&self, other: &AlertOutline) -> bool {
        let end = |a: &AlertOutline| a.ended_at.unwrap_or(DateTime::<Utc>::MAX_UTC);
        self.started_at <= end(other) && other.started_at <= end(self)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    Appeared,
    Disappeared,
    Changed,
}

/// One alert that differs between the two configurations.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Difference {
    pub change: Change,
    pub old: Option<AlertOutline>,
    pub new: Option<AlertOutline>,
}

impl Difference {
    pub fn rule(&self) -> &str {
        self.new
            .as_ref()
            .or(self.old.as_ref())
            .map_or("", |a| &a.rule)
    }

    /// The level it is counted under: the new one where there is one.
    pub fn level(&self) -> Level {
        self.new
            .as_ref()
            .or(self.old.as_ref())
            .map_or(Level::None, |a| a.level)
    }
}

/// Alerts per rule and peak level under each configuration, and the differences.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RuleLevelRow {
    pub rule: String,
    pub level: Level,
    pub old: u64,
    pub new: u64,
    pub appeared: u64,
    pub disappeared: u64,
    pub changed: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Comparison {
    pub events: u64,
    /// Documents that are not valid events (skipped, counted).
    pub skipped: u64,
    pub old_alerts: u64,
    pub new_alerts: u64,
    pub by_rule_level: Vec<RuleLevelRow>,
    pub differences: Vec<Difference>,
    pub elapsed_s: f64,
    /// Stopped early (Ctrl-C): the comparison covers the events read so far.
    pub interrupted: bool,
    /// With `--model`: events detected again from their stored frame, and events that had
    /// none (the candidate judges those as archived).
    pub redetected: u64,
    pub without_frame: u64,
}

/// `--model`: the candidate's model run again on the stored source frames.
pub struct Redetector {
    pub pipeline: crate::pipeline::Pipeline,
    pub store: crate::snapshots::store::Store,
}

impl Redetector {
    /// The event as the candidate's model and scene see its frame; None when the archive
    /// kept no frame for it (or the frame cannot be analysed again).
    async fn redetect(
        &self,
        event: &crate::contract::RiskEvent,
    ) -> Option<crate::contract::RiskEvent> {
        let id = event.snapshot.as_ref()?;
        let image = self
            .store
            .get(id, crate::snapshots::store::Kind::Source)
            .await
            .ok()??;
        let frame = crate::contract::Frame {
            frame_id: event.frame_id.clone(),
            captured_at: event.captured_at,
            image: image.into(),
            site: Some(event.site.clone()),
            camera_id: Some(event.camera_id.clone()),
            pose: event.pose,
            meta: event.meta.clone(),
        };
        let origin = crate::pipeline::Origin {
            site: &event.site,
            camera: &event.camera_id,
            queued: Default::default(),
            patience: None,
        };
        let mut again = self.pipeline.process(frame, origin).await.ok()?;
        again.snapshot = event.snapshot.clone();
        Some(again)
    }
}

/// The two configurations compared, and with `--model` how the candidate sees frames again.
#[derive(Clone, Copy)]
pub struct Sides<'a> {
    pub old: &'a Config,
    pub new: &'a Config,
    pub redetector: Option<&'a Redetector>,
}

/// Runs the events `query` selects through both configurations. `on_alert` receives every
/// alert message the candidate would publish (for `--publish`); `progress` the count of
/// events read.
pub async fn reevaluate(
    collection: &Collection<Document>,
    query: &Query,
    sides: Sides<'_>,
    stop: &CancellationToken,
    mut on_alert: impl FnMut(&Alert),
    mut progress: impl FnMut(u64),
) -> Result<Comparison, QueryError> {
    debug_assert_eq!(query.kind, Kind::Events);
    let started = std::time::Instant::now();
    let mut cursor = query.find(collection, Order::OldestFirst, None).await?;
    let Sides {
        old,
        new,
        redetector,
    } = sides;
    let (mut before, mut after) = (Evaluator::new(old), Evaluator::new(new));
    let (mut old_alerts, mut new_alerts) = (BTreeMap::new(), BTreeMap::new());
    let mut comparison = Comparison::default();
    let keep = |alerts: Vec<Alert>, into: &mut BTreeMap<String, Alert>| {
        for alert in alerts {
            into.insert(alert.alert_id.clone(), alert);
        }
    };
    loop {
        let next = tokio::select! {
            _ = stop.cancelled() => { comparison.interrupted = true; break; }
            next = cursor.next() => next,
        };
        let Some(document) = next else { break };
        let Ok(event) = super::from_document(document?) else {
            comparison.skipped += 1;
            continue;
        };
        comparison.events += 1;
        keep(before.offer(event.clone()), &mut old_alerts);
        let event = match redetector {
            Some(r) => match r.redetect(&event).await {
                Some(again) => {
                    comparison.redetected += 1;
                    again
                }
                None => {
                    comparison.without_frame += 1;
                    event
                }
            },
            None => event,
        };
        let released = after.offer(event);
        released.iter().for_each(&mut on_alert);
        keep(released, &mut new_alerts);
        progress(comparison.events);
    }
    keep(before.finish(), &mut old_alerts);
    let released = after.finish();
    released.iter().for_each(&mut on_alert);
    keep(released, &mut new_alerts);
    let old: Vec<AlertOutline> = old_alerts.values().map(AlertOutline::of).collect();
    let new: Vec<AlertOutline> = new_alerts.values().map(AlertOutline::of).collect();
    comparison.old_alerts = old.len() as u64;
    comparison.new_alerts = new.len() as u64;
    comparison.differences = compare(&old, &new);
    comparison.by_rule_level = tally(&old, &new, &comparison.differences);
    comparison.elapsed_s = started.elapsed().as_secs_f64();
    Ok(comparison)
}

/// Pairs old and new alerts (same id, else same subject and overlapping time) and lists
/// what differs.
pub fn compare(old: &[AlertOutline], new: &[AlertOutline]) -> Vec<Difference> {
    let mut unmatched_new: Vec<&AlertOutline> = new.iter().collect();
    let mut differences = Vec::new();
    for o in old {
        let position = unmatched_new
            .iter()
            .position(|n| n.alert_id == o.alert_id)
            .or_else(|| {
                unmatched_new
                    .iter()
                    .position(|n| n.subject() == o.subject() && n.overlaps(o))
            });
        match position {
            Some(i) => {
                let n = unmatched_new.remove(i);
                if differs(o, n) {
                    differences.push(Difference {
                        change: Change::Changed,
                        old: Some(o.clone()),
                        new: Some(n.clone()),
                    });
                }
            }
            None => differences.push(Difference {
                change: Change::Disappeared,
                old: Some(o.clone()),
                new: None,
            }),
        }
    }
    differences.extend(unmatched_new.into_iter().map(|n| Difference {
        change: Change::Appeared,
        old: None,
        new: Some(n.clone()),
    }));
    differences.sort_by(|a, b| {
        let at = |d: &Difference| d.new.as_ref().or(d.old.as_ref()).map(|x| x.started_at);
        (at(a), a.change).cmp(&(at(b), b.change))
    });
    differences
}

/// What counts as a change: the peak level, the start or the end (beyond a second).
fn differs(old: &AlertOutline, new: &AlertOutline) -> bool {
    let apart = |a: DateTime<Utc>, b: DateTime<Utc>| (a - b).num_milliseconds().abs() > 1000;
    old.level != new.level
        || apart(old.started_at, new.started_at)
        || match (old.ended_at, new.ended_at) {
            (Some(a), Some(b)) => apart(a, b),
            (None, None) => false,
            _ => true,
        }
}

fn tally(old: &[AlertOutline], new: &[AlertOutline], diffs: &[Difference]) -> Vec<RuleLevelRow> {
    let mut rows: BTreeMap<(String, Level), RuleLevelRow> = BTreeMap::new();
    let mut bump = |rule: &str, level: Level, f: &dyn Fn(&mut RuleLevelRow)| {
        let r = rows
            .entry((rule.to_string(), level))
            .or_insert_with(|| RuleLevelRow {
                rule: rule.to_string(),
                level,
                old: 0,
                new: 0,
                appeared: 0,
                disappeared: 0,
                changed: 0,
            });
        f(r);
    };
    for a in old {
        bump(&a.rule, a.level, &|r| r.old += 1);
    }
    for a in new {
        bump(&a.rule, a.level, &|r| r.new += 1);
    }
    for d in diffs {
        bump(d.rule(), d.level(), &|r| match d.change {
            Change::Appeared => r.appeared += 1,
            Change::Disappeared => r.disappeared += 1,
            Change::Changed => r.changed += 1,
        });
    }
    rows.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outline(
        id: &str,
        rule: &str,
        level: Level,
        start_s: i64,
        end_s: Option<i64>,
    ) -> AlertOutline {
        let t = |s: i64| DateTime::<Utc>::from_timestamp(1_800_000_000 + s, 0).unwrap();
        AlertOutline {
            alert_id: id.into(),
            rule: rule.into(),
            site: "s".into(),
            camera_id: "c".into(),
            zone: Some("z".into()),
            level,
            peak_value: 1.0,
            unit: "x".into(),
            started_at: t(start_s),
            ended_at: end_s.map(t),
            revisions: 1,
        }
    }

    #[test]
    fn alerts_pair_by_id_or_by_subject_and_time() {
        let old = [
            outline("a", "crowd", Level::Medium, 0, Some(30)),
            outline("b", "loitering", Level::Low, 100, Some(130)),
            outline("c", "intrusion", Level::High, 200, Some(210)),
        ];
        let new = [
            // The same crowd alert, starting 5 s earlier (another id) and peaking higher.
            outline("a2", "crowd", Level::High, -5, Some(30)),
            // Unchanged.
            outline("b", "loitering", Level::Low, 100, Some(130)),
            // A new one.
            outline("d", "crowd", Level::Medium, 300, None),
        ];
        let diffs = compare(&old, &new);
        let kinds: Vec<(Change, &str)> = diffs.iter().map(|d| (d.change, d.rule())).collect();
        assert_eq!(
            kinds,
            [
                (Change::Changed, "crowd"),
                (Change::Disappeared, "intrusion"),
                (Change::Appeared, "crowd")
            ]
        );
        let rows = tally(&old, &new, &diffs);
        let crowd_high = rows
            .iter()
            .find(|r| r.rule == "crowd" && r.level == Level::High)
            .unwrap();
        assert_eq!(
            (crowd_high.old, crowd_high.new, crowd_high.changed),
            (0, 1, 1)
        );
        let intrusion = rows.iter().find(|r| r.rule == "intrusion").unwrap();
        assert_eq!((intrusion.old, intrusion.disappeared), (1, 1));
    }
}
