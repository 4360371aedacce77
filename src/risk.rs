//! The risk policy: what a scene is worth. Objects score by class; objects inside zones add
//! their zone kind's weight; a zone denser than its kind allows adds once more. The score
//! (0–100) picks the level through configured thresholds, the level picks the priority, and
//! a one- or two-sentence description says what was seen and where, in English or Korean.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::Invalid;
use crate::contract::{Level, ObjectReport, ZoneReport};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    #[default]
    En,
    Ko,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RiskPolicy {
    /// Language of event descriptions: "en" or "ko".
    pub language: Language,
    /// Points each detected object of a class adds (labels as the model names them);
    /// classes not listed add nothing and do not count toward zones.
    pub class_weights: BTreeMap<String, f64>,
    /// Zone kinds and what an object inside one adds.
    pub zone_kinds: BTreeMap<String, ZoneKind>,
    /// Lowest score of each level.
    pub levels: LevelThresholds,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ZoneKind {
    /// Points added per scored object inside a zone of this kind.
    pub weight: f64,
    /// Classes the zone weight applies to; empty: every scored class.
    pub classes: Vec<String>,
    /// Objects per square metre above which the zone counts as crowded (none: never).
    pub density_limit_per_m2: Option<f64>,
    /// Points added once per crowded zone.
    pub density_weight: f64,
}

impl Default for ZoneKind {
    fn default() -> Self {
        Self {
            weight: 0.0,
            classes: Vec::new(),
            density_limit_per_m2: None,
            density_weight: 0.0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LevelThresholds {
    pub low: u8,
    pub medium: u8,
    pub high: u8,
    pub critical: u8,
}

impl Default for LevelThresholds {
    fn default() -> Self {
        Self {
            low: 1,
            medium: 30,
            high: 60,
            critical: 80,
        }
    }
}

impl Default for RiskPolicy {
    fn default() -> Self {
        let weights = [
            ("person", 5.0),
            ("bicycle", 3.0),
            ("car", 3.0),
            ("motorcycle", 3.0),
            ("bus", 3.0),
            ("truck", 3.0),
        ];
        let kind = |weight, classes: &[&str], limit: Option<f64>, density_weight| ZoneKind {
            weight,
            classes: classes.iter().map(|c| c.to_string()).collect(),
            density_limit_per_m2: limit,
            density_weight,
        };
        Self {
            language: Language::En,
            class_weights: weights.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            zone_kinds: BTreeMap::from([
                ("restricted".to_string(), kind(55.0, &[], None, 0.0)),
                ("hazard".to_string(), kind(15.0, &["person"], None, 0.0)),
                ("crowd".to_string(), kind(0.0, &["person"], Some(1.0), 30.0)),
            ]),
            levels: LevelThresholds::default(),
        }
    }
}

impl RiskPolicy {
    pub fn validate(&self) -> Result<(), Invalid> {
        let l = &self.levels;
        if !(l.low >= 1
            && l.low < l.medium
            && l.medium < l.high
            && l.high < l.critical
            && l.critical <= 100)
        {
            return Err(Invalid::new(
                "levels",
                "thresholds must rise strictly: 1 ≤ low < medium < high < critical ≤ 100",
            ));
        }
        if let Some((label, _)) = self
            .class_weights
            .iter()
            .find(|(_, w)| !w.is_finite() || **w < 0.0)
        {
            return Err(Invalid::new(
                "class_weights",
                format!("weight of {label:?} must be a finite number ≥ 0"),
            ));
        }
        for (name, kind) in &self.zone_kinds {
            let bad_limit = kind
                .density_limit_per_m2
                .is_some_and(|d| !(d.is_finite() && d > 0.0));
            if !kind.weight.is_finite()
                || kind.weight < 0.0
                || !kind.density_weight.is_finite()
                || kind.density_weight < 0.0
                || bad_limit
            {
                return Err(Invalid::new(
                    "zone_kinds",
                    format!("kind {name:?}: weights must be finite and ≥ 0, density limit > 0"),
                ));
            }
        }
        Ok(())
    }

    pub fn weight(&self, label: &str) -> f64 {
        self.class_weights.get(label).copied().unwrap_or(0.0)
    }

    /// Whether an object of `label` counts inside a zone of `kind`: a scored class the kind
    /// applies to.
    pub fn counts_in_zone(&self, label: &str, kind: &str) -> bool {
        self.weight(label) > 0.0
            && self
                .zone_kinds
                .get(kind)
                .is_some_and(|k| k.classes.is_empty() || k.classes.iter().any(|c| c == label))
    }

    /// The level of a score.
    pub fn level(&self, score: u8) -> Level {
        let l = &self.levels;
        match score {
            s if s >= l.critical => Level::Critical,
            s if s >= l.high => Level::High,
            s if s >= l.medium => Level::Medium,
            s if s >= l.low => Level::Low,
            _ => Level::None,
        }
    }

    /// Scores a placed scene and describes it.
    pub fn assess(
        &self,
        objects: &[ObjectReport],
        zones: &[ZoneReport],
        place: &str,
    ) -> Assessment {
        // Low-score detections travel for the tracker only; the scene is judged without them.
        let objects: Vec<&ObjectReport> = objects.iter().filter(|o| !o.low_score).collect();
        let mut score = 0.0;
        for object in &objects {
            score += self.weight(&object.label);
            for zone in zones.iter().filter(|z| object.zones.contains(&z.id)) {
                if self.counts_in_zone(&object.label, &zone.kind) {
                    score += self.zone_kinds.get(&zone.kind).map_or(0.0, |k| k.weight);
                }
            }
        }
        for zone in zones {
            let kind = self.zone_kinds.get(&zone.kind);
            if kind
                .and_then(|k| k.density_limit_per_m2)
                .is_some_and(|limit| zone.density_per_m2 > limit)
            {
                score += kind.map_or(0.0, |k| k.density_weight);
            }
        }
        let score = score.round().clamp(0.0, 100.0) as u8;
        let level = self.level(score);
        let description = describe(self, level, &objects, zones, place);
        Assessment {
            score,
            level,
            priority: priority(level),
            description,
        }
    }
}

/// The policy's verdict on one scene.
#[derive(Debug, Clone, PartialEq)]
pub struct Assessment {
    pub score: u8,
    pub level: Level,
    pub priority: u8,
    pub description: String,
}

/// 1 is most urgent.
pub fn priority(level: Level) -> u8 {
    match level {
        Level::Critical => 1,
        Level::High => 2,
        Level::Medium => 3,
        Level::Low => 4,
        Level::None => 5,
    }
}

/// Objects per label, most numerous first.
/// "2 people and 1 car" (or "사람 2명, 자동차 1대") for a list of labels.
pub fn label_counts<'a>(lang: Language, labels: impl Iterator<Item = &'a str>) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for label in labels {
        *counts.entry(label).or_default() += 1;
    }
    let mut list: Vec<_> = counts.into_iter().collect();
    list.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    counted(lang, &list)
}

fn tally<'a>(objects: impl Iterator<Item = &'a ObjectReport>) -> Vec<(&'a str, usize)> {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for o in objects {
        *counts.entry(o.label.as_str()).or_default() += 1;
    }
    let mut list: Vec<_> = counts.into_iter().collect();
    list.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    list
}

const MAX_LABELS_NAMED: usize = 4;

fn describe(
    policy: &RiskPolicy,
    level: Level,
    objects: &[&ObjectReport],
    zones: &[ZoneReport],
    place: &str,
) -> String {
    let lang = policy.language;
    let seen = tally(objects.iter().copied());
    let mut text = match (lang, seen.is_empty()) {
        (Language::En, true) => {
            format!("{}: nothing detected at {place}.", level_words(lang, level))
        }
        (Language::Ko, true) => format!(
            "{}: {place}에서 감지된 객체 없음.",
            level_words(lang, level)
        ),
        (Language::En, false) => format!(
            "{}: {} at {place}.",
            level_words(lang, level),
            counted(lang, &seen)
        ),
        (Language::Ko, false) => format!(
            "{}: {place}에서 {} 감지.",
            level_words(lang, level),
            counted(lang, &seen)
        ),
    };
    let in_zones: Vec<String> = zones
        .iter()
        .filter_map(|zone| {
            let inside = tally(objects.iter().copied().filter(|o| {
                o.zones.contains(&zone.id) && policy.counts_in_zone(&o.label, &zone.kind)
            }));
            (!inside.is_empty()).then(|| match lang {
                Language::En => format!(
                    "{} in {} '{}'",
                    counted(lang, &inside),
                    zone_kind_words(lang, &zone.kind),
                    zone.name
                ),
                Language::Ko => format!(
                    "{} '{}'에 {}",
                    zone_kind_words(lang, &zone.kind),
                    zone.name,
                    counted(lang, &inside)
                ),
            })
        })
        .collect();
    if !in_zones.is_empty() {
        text.push(' ');
        text.push_str(&in_zones.join("; "));
        text.push('.');
    }
    text
}

fn counted(lang: Language, seen: &[(&str, usize)]) -> String {
    let mut parts: Vec<String> = seen
        .iter()
        .take(MAX_LABELS_NAMED)
        .map(|(label, n)| count_words(lang, label, *n))
        .collect();
    let others: usize = seen.iter().skip(MAX_LABELS_NAMED).map(|(_, n)| n).sum();
    if others > 0 {
        parts.push(match lang {
            Language::En => format!(
                "{others} other object{}",
                if others == 1 { "" } else { "s" }
            ),
            Language::Ko => format!("기타 {others}개"),
        });
    }
    match lang {
        Language::En if parts.len() > 1 => {
            let last = parts.pop().unwrap_or_default();
            format!("{} and {last}", parts.join(", "))
        }
        _ => parts.join(", "),
    }
}

fn count_words(lang: Language, label: &str, n: usize) -> String {
    match lang {
        Language::En => {
            let noun = match (label, n) {
                (_, 1) => label.to_string(),
                ("person", _) => "people".to_string(),
                (l, _) if l.ends_with('s') || l.ends_with("ch") => format!("{l}es"),
                (l, _) => format!("{l}s"),
            };
            format!("{n} {noun}")
        }
        Language::Ko => {
            let (noun, counter) = korean_label(label);
            format!("{noun} {n}{counter}")
        }
    }
}

fn level_words(lang: Language, level: Level) -> &'static str {
    match (lang, level) {
        (Language::En, Level::None) => "No risk",
        (Language::En, Level::Low) => "Low risk",
        (Language::En, Level::Medium) => "Medium risk",
        (Language::En, Level::High) => "High risk",
        (Language::En, Level::Critical) => "Critical risk",
        (Language::Ko, Level::None) => "위험 없음",
        (Language::Ko, Level::Low) => "위험도 낮음",
        (Language::Ko, Level::Medium) => "위험도 보통",
        (Language::Ko, Level::High) => "위험도 높음",
        (Language::Ko, Level::Critical) => "위험도 심각",
    }
}

fn zone_kind_words(lang: Language, kind: &str) -> String {
    match (lang, kind) {
        (Language::En, k) => format!("{k} zone"),
        (Language::Ko, "restricted") => "제한 구역".into(),
        (Language::Ko, "hazard") => "위험 구역".into(),
        (Language::Ko, "crowd") => "혼잡 구역".into(),
        (Language::Ko, k) => format!("{k} 구역"),
    }
}

/// Korean names and counters of the COCO classes a control room cares about; other labels
/// keep the model's English name.
fn korean_label(label: &str) -> (&str, &'static str) {
    match label {
        "person" => ("사람", "명"),
        "bicycle" => ("자전거", "대"),
        "car" => ("승용차", "대"),
        "motorcycle" => ("오토바이", "대"),
        "bus" => ("버스", "대"),
        "truck" => ("트럭", "대"),
        "train" => ("열차", "대"),
        "boat" => ("선박", "척"),
        "airplane" => ("항공기", "대"),
        "dog" => ("개", "마리"),
        "cat" => ("고양이", "마리"),
        "backpack" => ("배낭", "개"),
        "handbag" => ("핸드백", "개"),
        "suitcase" => ("여행 가방", "개"),
        "umbrella" => ("우산", "개"),
        "knife" => ("칼", "개"),
        "fire hydrant" => ("소화전", "개"),
        "traffic light" => ("신호등", "개"),
        other => (other, "개"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::BBox;

    fn object(label: &str, zones: &[&str]) -> ObjectReport {
        ObjectReport {
            id: 0,
            class_id: 0,
            label: label.into(),
            confidence: 0.9,
            bbox: BBox {
                x1: 0.0,
                y1: 0.0,
                x2: 1.0,
                y2: 1.0,
            },
            ground: None,
            geo: None,
            zones: zones.iter().map(|z| z.to_string()).collect(),
            no_ground: None,
            uncertain: false,
            low_score: false,
        }
    }

    #[test]
    fn low_score_detections_neither_score_nor_appear_in_the_description() {
        let policy = RiskPolicy::default();
        let mut faint = object("person", &["z"]);
        faint.low_score = true;
        let zones = [zone("z", "restricted", 0, 0.0)];
        let with = policy.assess(&[object("car", &[]), faint], &zones, "here");
        let without = policy.assess(&[object("car", &[])], &zones, "here");
        assert_eq!(with, without);
        assert!(!with.description.contains("person"), "{}", with.description);
    }

    fn zone(id: &str, kind: &str, occupancy: u32, density: f64) -> ZoneReport {
        ZoneReport {
            id: id.into(),
            name: format!("Zone {id}"),
            kind: kind.into(),
            occupancy,
            density_per_m2: density,
            area_m2: 10.0,
        }
    }

    #[test]
    fn levels_follow_thresholds() {
        let p = RiskPolicy::default();
        let levels: Vec<Level> = [0, 1, 29, 30, 59, 60, 79, 80, 100]
            .iter()
            .map(|s| p.level(*s))
            .collect();
        use Level::*;
        assert_eq!(
            levels,
            vec![None, Low, Low, Medium, Medium, High, High, Critical, Critical]
        );
        assert_eq!(priority(Critical), 1);
        assert_eq!(priority(None), 5);
    }

    #[test]
    fn class_weights_add_up_and_cap_at_100() {
        let p = RiskPolicy::default();
        let bus_scene: Vec<_> = ["bus", "person", "person", "person", "person"]
            .iter()
            .map(|l| object(l, &[]))
            .collect();
        let a = p.assess(&bus_scene, &[], "cam");
        assert_eq!((a.score, a.level, a.priority), (23, Level::Low, 4));
        let crowd: Vec<_> = (0..21).map(|_| object("person", &[])).collect();
        assert_eq!(p.assess(&crowd, &[], "cam").score, 100);
        let chairs: Vec<_> = (0..3).map(|_| object("chair", &[])).collect();
        assert_eq!(p.assess(&chairs, &[], "cam").level, Level::None);
    }

    #[test]
    fn zones_add_their_kind_weight_and_density() {
        let p = RiskPolicy::default();
        let objects = vec![object("person", &["dock"]), object("chair", &["dock"])];
        let zones = vec![zone("dock", "restricted", 2, 0.1)];
        let a = p.assess(&objects, &zones, "cam");
        assert_eq!((a.score, a.level), (60, Level::High)); // 5 + 55; the chair adds nothing
        let road = vec![zone("road", "hazard", 2, 0.1)];
        let objects = vec![object("person", &["road"]), object("car", &["road"])];
        assert_eq!(p.assess(&objects, &road, "cam").score, 23); // 5 + 15 + car 3, no zone weight
        let crowded = vec![zone("plaza", "crowd", 2, 1.5)];
        let objects = vec![object("person", &["plaza"]), object("person", &["plaza"])];
        assert_eq!(p.assess(&objects, &crowded, "cam").score, 40); // 2×5 + density 30
    }

    #[test]
    fn description_names_what_and_where() {
        let mut p = RiskPolicy::default();
        let objects = vec![
            object("person", &["dock"]),
            object("person", &[]),
            object("bus", &[]),
        ];
        let zones = vec![zone("dock", "restricted", 1, 0.1)];
        let en = p
            .assess(&objects, &zones, "North gate (seoul-hq)")
            .description;
        assert_eq!(en, "High risk: 2 people and 1 bus at North gate (seoul-hq). 1 person in restricted zone 'Zone dock'.");
        p.language = Language::Ko;
        let ko = p.assess(&objects, &zones, "정문 (seoul-hq)").description;
        assert_eq!(ko, "위험도 높음: 정문 (seoul-hq)에서 사람 2명, 버스 1대 감지. 제한 구역 'Zone dock'에 사람 1명.");
        assert_eq!(
            p.assess(&[], &[], "정문").description,
            "위험 없음: 정문에서 감지된 객체 없음."
        );
    }

    #[test]
    fn many_labels_are_summarised() {
        let labels = ["a", "b", "c", "d", "e", "f"];
        let objects: Vec<_> = labels.iter().map(|l| object(l, &[])).collect();
        let d = RiskPolicy::default().assess(&objects, &[], "x").description;
        assert_eq!(d, "No risk: 1 a, 1 b, 1 c, 1 d and 2 other objects at x.");
    }

    #[test]
    fn validation_rejects_unordered_levels_and_negative_weights() {
        let mut p = RiskPolicy::default();
        p.levels.high = 20;
        assert_eq!(p.validate().unwrap_err().key, "levels");
        let mut p = RiskPolicy::default();
        p.class_weights.insert("person".into(), -1.0);
        assert_eq!(p.validate().unwrap_err().key, "class_weights");
    }
}
