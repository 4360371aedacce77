//! Archive queries: filters become one MongoDB `find` with a `hint` naming the index that
//! serves it, chosen from the filter (most selective first). Every query vigil issues is
//! therefore served by an index by construction, on any MongoDB, and `explain` shows it (a
//! test reads the plan of each).

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use mongodb::bson::{self, doc, Bson, Document};
use mongodb::Collection;

use crate::contract::{is_token, Level};

/// Which collection a query reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    Events,
    Alerts,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Events => "events",
            Kind::Alerts => "alerts",
        }
    }

    /// The field that orders documents in time: an event's capture time, an alert's start.
    pub fn time_field(self) -> &'static str {
        match self {
            Kind::Events => "captured_at",
            Kind::Alerts => "started_at",
        }
    }
}

/// What an analyst asks for. Every field narrows the set; none given means everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    pub site: Option<String>,
    /// A camera id; needs `site` (camera ids are unique within a site).
    pub camera: Option<String>,
    /// Events at this risk level or above; alerts whose peak reached it.
    pub level_at_least: Option<Level>,
    /// Captured (events) or started (alerts) at or after.
    pub since: Option<DateTime<Utc>>,
    /// … and before.
    pub until: Option<DateTime<Utc>>,
    /// Events with an object of this label (low-score detections, which the tracker alone
    /// uses, count too); alerts about one.
    pub label: Option<String>,
    /// Events with an object in this zone; alerts about this zone or line.
    pub zone: Option<String>,
    /// Alerts raised by this rule (intrusion, loitering, crowd, proximity, line_crossing, count).
    pub rule: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("--camera needs --site (camera ids are unique within a site)")]
    CameraWithoutSite,
    #[error("--rule applies to alerts only")]
    RuleOnEvents,
    #[error("{field} {value:?} is not a subject token ([A-Za-z0-9_-], 1–64 characters)")]
    Token { field: &'static str, value: String },
    #[error("--since {since} is not before --until {until}")]
    EmptyWindow {
        since: DateTime<Utc>,
        until: DateTime<Utc>,
    },
    #[error("MongoDB: {0}")]
    Mongo(#[from] mongodb::error::Error),
    #[error("a stored document is not a valid {kind}: {source}")]
    Document {
        kind: &'static str,
        source: bson::de::Error,
    },
}

/// A query ready to send: the filter document and the index that serves it.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    pub kind: Kind,
    pub filter: Document,
    pub index: &'static str,
}

/// Newest first (`vigil query`) or in capture order (`vigil replay`, `vigil reevaluate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    NewestFirst,
    OldestFirst,
}

impl Filter {
    /// The MongoDB filter and the index for `kind`.
    pub fn query(&self, kind: Kind) -> Result<Query, QueryError> {
        if self.camera.is_some() && self.site.is_none() {
            return Err(QueryError::CameraWithoutSite);
        }
        if self.rule.is_some() && kind == Kind::Events {
            return Err(QueryError::RuleOnEvents);
        }
        for (field, value) in [
            ("--site", &self.site),
            ("--camera", &self.camera),
            ("--zone", &self.zone),
        ] {
            if let Some(v) = value.as_ref().filter(|v| !is_token(v)) {
                return Err(QueryError::Token {
                    field,
                    value: v.clone(),
                });
            }
        }
        if let (Some(since), Some(until)) = (self.since, self.until) {
            if since >= until {
                return Err(QueryError::EmptyWindow { since, until });
            }
        }
        let mut filter = Document::new();
        if let Some(site) = &self.site {
            filter.insert("site", site);
        }
        if let Some(camera) = &self.camera {
            filter.insert("camera_id", camera);
        }
        if let Some(level) = self.level_at_least {
            let levels: Vec<Bson> = Level::ALL
                .iter()
                .filter(|l| **l >= level)
                .map(|l| Bson::from(l.as_str()))
                .collect();
            let field = match kind {
                Kind::Events => "risk.level",
                Kind::Alerts => "peak.level",
            };
            filter.insert(field, doc! { "$in": levels });
        }
        let mut window = Document::new();
        if let Some(since) = self.since {
            window.insert(
                "$gte",
                bson::DateTime::from_millis(since.timestamp_millis()),
            );
        }
        if let Some(until) = self.until {
            window.insert("$lt", bson::DateTime::from_millis(until.timestamp_millis()));
        }
        if !window.is_empty() {
            filter.insert(kind.time_field(), window);
        }
        if let Some(label) = &self.label {
            filter.insert("objects.label", label);
        }
        if let Some(zone) = &self.zone {
            let field = match kind {
                Kind::Events => "objects.zones",
                Kind::Alerts => "zone.id",
            };
            filter.insert(field, zone);
        }
        if let Some(rule) = &self.rule {
            filter.insert("rule", rule);
        }
        Ok(Query {
            kind,
            filter,
            index: self.index(kind),
        })
    }

    /// The index that serves the filter: the most selective field given decides.
    fn index(&self, kind: Kind) -> &'static str {
        match kind {
            Kind::Events if self.camera.is_some() => "camera_time",
            Kind::Events if self.label.is_some() => "label_time",
            Kind::Events if self.zone.is_some() => "zone_time",
            Kind::Events if self.level_at_least.is_some() => "level_site_time",
            Kind::Events if self.site.is_some() => "camera_time",
            Kind::Events => super::RETENTION_INDEX,
            Kind::Alerts if self.camera.is_some() => "camera_started",
            Kind::Alerts if self.rule.is_some() => "rule_started",
            Kind::Alerts if self.zone.is_some() => "zone_started",
            Kind::Alerts if self.label.is_some() => "label_started",
            Kind::Alerts if self.level_at_least.is_some() => "level_site_started",
            Kind::Alerts if self.site.is_some() => "camera_started",
            Kind::Alerts => "started",
        }
    }
}

impl Query {
    fn sort(&self, order: Order) -> Document {
        let direction = match order {
            Order::NewestFirst => -1,
            Order::OldestFirst => 1,
        };
        doc! { self.kind.time_field(): direction }
    }

    /// The matching documents, streamed from a cursor (bounded memory whatever the window).
    pub async fn find(
        &self,
        collection: &Collection<Document>,
        order: Order,
        limit: Option<i64>,
    ) -> Result<mongodb::Cursor<Document>, QueryError> {
        let mut find = collection
            .find(self.filter.clone())
            .sort(self.sort(order))
            .hint(mongodb::options::Hint::Name(self.index.to_string()))
            .batch_size(500);
        if let Some(limit) = limit {
            find = find.limit(limit);
        }
        Ok(find.await?)
    }

    /// How many documents match (served by the same index).
    pub async fn count(&self, collection: &Collection<Document>) -> Result<u64, QueryError> {
        Ok(collection
            .count_documents(self.filter.clone())
            .hint(mongodb::options::Hint::Name(self.index.to_string()))
            .await?)
    }

    /// The server's query plan for [`Query::find`] (`explain`, queryPlanner verbosity).
    pub async fn explain(
        &self,
        collection: &Collection<Document>,
        order: Order,
        limit: Option<i64>,
    ) -> Result<Document, QueryError> {
        let mut find = doc! {
            "find": collection.name(),
            "filter": self.filter.clone(),
            "sort": self.sort(order),
            "hint": self.index,
        };
        if let Some(limit) = limit {
            find.insert("limit", limit);
        }
        let db = collection.client().database(&collection.namespace().db);
        Ok(db
            .run_command(doc! { "explain": find, "verbosity": "queryPlanner" })
            .await?)
    }
}

/// The names of the indexes a plan scans (IXSCAN stages), and whether it scans the whole
/// collection anywhere (COLLSCAN).
pub fn plan_indexes(plan: &Document) -> (Vec<String>, bool) {
    fn walk(value: &Bson, names: &mut Vec<String>, collscan: &mut bool) {
        match value {
            Bson::Document(d) => {
                match d.get_str("stage") {
                    Ok("IXSCAN") => {
                        if let Ok(name) = d.get_str("indexName") {
                            names.push(name.to_string());
                        }
                    }
                    Ok("COLLSCAN") => *collscan = true,
                    _ => {}
                }
                for (_, v) in d {
                    walk(v, names, collscan);
                }
            }
            Bson::Array(items) => items.iter().for_each(|v| walk(v, names, collscan)),
            _ => {}
        }
    }
    let mut names = Vec::new();
    let mut collscan = false;
    let winning = plan
        .get_document("queryPlanner")
        .and_then(|q| q.get_document("winningPlan"))
        .map(|w| Bson::Document(w.clone()))
        .unwrap_or_else(|_| Bson::Document(plan.clone()));
    walk(&winning, &mut names, &mut collscan);
    (names, collscan)
}

/// Every document of a cursor, decoded (for small results: `vigil query` with a limit).
pub async fn collect<T>(
    cursor: mongodb::Cursor<Document>,
    decode: impl Fn(Document) -> Result<T, bson::de::Error>,
    kind: Kind,
) -> Result<Vec<T>, QueryError> {
    let documents: Vec<Document> = cursor.try_collect().await?;
    documents
        .into_iter()
        .map(|d| {
            decode(d).map_err(|source| QueryError::Document {
                kind: kind.as_str(),
                source,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_filter_picks_an_index_that_starts_with_its_field() {
        let events: Vec<_> = super::super::event_indexes().into_iter().collect();
        let alerts: Vec<_> = super::super::alert_indexes().into_iter().collect();
        let cases = [
            (
                Filter {
                    site: Some("s".into()),
                    camera: Some("c".into()),
                    label: Some("person".into()),
                    ..Default::default()
                },
                "camera_time",
                "camera_started",
            ),
            (
                Filter {
                    label: Some("person".into()),
                    level_at_least: Some(Level::High),
                    ..Default::default()
                },
                "label_time",
                "label_started",
            ),
            (
                Filter {
                    zone: Some("z".into()),
                    ..Default::default()
                },
                "zone_time",
                "zone_started",
            ),
            (
                Filter {
                    level_at_least: Some(Level::High),
                    site: Some("s".into()),
                    ..Default::default()
                },
                "level_site_time",
                "level_site_started",
            ),
        ];
        for (filter, event_index, alert_index) in cases {
            let q = filter.query(Kind::Events).unwrap();
            assert_eq!(q.index, event_index);
            let keys = &events.iter().find(|(n, _)| *n == q.index).unwrap().1;
            let first = keys.keys().next().unwrap();
            assert!(
                q.filter.contains_key(first),
                "{first} not in {:?}",
                q.filter
            );
            let q = filter.query(Kind::Alerts).unwrap();
            assert_eq!(q.index, alert_index);
            let keys = &alerts.iter().find(|(n, _)| *n == q.index).unwrap().1;
            let first = keys.keys().next().unwrap();
            assert!(
                q.filter.contains_key(first),
                "{first} not in {:?}",
                q.filter
            );
        }
    }

    #[test]
    fn level_at_least_means_that_level_and_above() {
        let q = Filter {
            level_at_least: Some(Level::High),
            ..Default::default()
        }
        .query(Kind::Events)
        .unwrap();
        assert_eq!(
            q.filter,
            doc! { "risk.level": { "$in": ["high", "critical"] } }
        );
    }

    #[test]
    fn bad_filters_are_refused_with_the_reason() {
        let camera_only = Filter {
            camera: Some("c".into()),
            ..Default::default()
        };
        assert!(matches!(
            camera_only.query(Kind::Events),
            Err(QueryError::CameraWithoutSite)
        ));
        let rule = Filter {
            rule: Some("crowd".into()),
            ..Default::default()
        };
        assert!(matches!(
            rule.query(Kind::Events),
            Err(QueryError::RuleOnEvents)
        ));
        assert!(rule.query(Kind::Alerts).is_ok());
        let injected = Filter {
            site: Some("{$ne: 1}".into()),
            ..Default::default()
        };
        assert!(matches!(
            injected.query(Kind::Events),
            Err(QueryError::Token { .. })
        ));
        let now = Utc::now();
        let backwards = Filter {
            since: Some(now),
            until: Some(now),
            ..Default::default()
        };
        assert!(matches!(
            backwards.query(Kind::Events),
            Err(QueryError::EmptyWindow { .. })
        ));
    }
}
