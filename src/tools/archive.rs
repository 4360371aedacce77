//! `vigil query`, `vigil replay` and `vigil reevaluate`: the archive for people at a
//! terminal. The work is in `crate::archive`; this is output, progress and Ctrl-C.

use std::fmt::Write as _;
use std::path::PathBuf;

use chrono::{DateTime, SecondsFormat, Utc};
use indicatif::{ProgressBar, ProgressStyle};
use tokio_util::sync::CancellationToken;

use super::report::event_line;
use super::watch::geojson_features;
use super::ToolError;
use crate::archive::query::{self, Filter, Kind, Order};
use crate::archive::reevaluate::{self, Change, Comparison};
use crate::archive::replay::{self, Pace, ReplaySummary};
use crate::config::Config;
use crate::contract::{Alert, Encoding, Level};

#[derive(Debug, thiserror::Error)]
pub enum ArchiveToolError {
    #[error(transparent)]
    Query(#[from] query::QueryError),
    #[error(transparent)]
    Replay(#[from] replay::ReplayError),
    #[error(transparent)]
    Open(#[from] crate::archive::ArchiveError),
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error("cannot load the candidate configuration {path}: {source}")]
    Candidate {
        path: PathBuf,
        source: Box<crate::config::ConfigError>,
    },
    #[error("cannot print JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Snapshot(#[from] SnapshotToolError),
    #[error("archive unreachable at {uri}: is MongoDB up, and archive.uri right?")]
    Unreachable {
        uri: String,
        source: mongodb::error::Error,
    },
}

/// Fails with a plain reason (the driver's own below it) when the archive's MongoDB does not
/// answer: every archive command starts here.
async fn reach(config: &Config) -> Result<(), ArchiveToolError> {
    let db = crate::archive::database(&config.archive).await?;
    db.run_command(mongodb::bson::doc! { "ping": 1 })
        .await
        .map_err(|source| ArchiveToolError::Unreachable {
            uri: crate::config::mask_userinfo(&config.archive.uri),
            source,
        })?;
    Ok(())
}

/// How `vigil query` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// A readable table, newest first.
    Table,
    /// One JSON document per line, as published.
    Json,
    /// One GeoJSON feature per object with a WGS84 position, one per line.
    Geojson,
}

async fn open(
    config: &Config,
    kind: Kind,
) -> Result<mongodb::Collection<mongodb::bson::Document>, ArchiveToolError> {
    reach(config).await?;
    Ok(match kind {
        Kind::Events => crate::archive::collection(&config.archive).await?,
        Kind::Alerts => crate::archive::alerts_collection(&config.archive).await?,
    })
}

/// `vigil query`: the newest `limit` matches, printed; returns how many.
pub async fn query(
    config: &Config,
    kind: Kind,
    filter: &Filter,
    limit: i64,
    output: Output,
) -> Result<u64, ArchiveToolError> {
    let collection = open(config, kind).await?;
    let query = filter.query(kind)?;
    let cursor = query
        .find(&collection, Order::NewestFirst, Some(limit))
        .await?;
    let printed;
    match kind {
        Kind::Events => {
            let events = query::collect(cursor, crate::archive::from_document, kind).await?;
            for event in &events {
                let lines = match output {
                    Output::Table => vec![format!(
                        "{}  {}",
                        event.captured_at.format("%Y-%m-%d"),
                        event_line(event)
                    )],
                    Output::Json => vec![serde_json::to_string(event)?],
                    Output::Geojson => geojson_features(event)
                        .iter()
                        .map(|f| f.to_string())
                        .collect(),
                };
                if !super::print_lines(&lines) {
                    return Ok(0);
                }
            }
            printed = events.len() as u64;
        }
        Kind::Alerts => {
            let alerts = query::collect(cursor, crate::archive::alert_from_document, kind).await?;
            if output == Output::Table && !alerts.is_empty() {
                let header = format!(
                    "{:<24} {:<20} {:<13} {:<12} {:<8} {:<6} {:>8}  description",
                    "started", "camera", "rule", "zone", "peak", "state", "lasted"
                );
                if !super::print_lines(&[header]) {
                    return Ok(0);
                }
            }
            for alert in &alerts {
                let lines = match output {
                    Output::Table => vec![alert_row(alert)],
                    Output::Json => vec![serde_json::to_string(alert)?],
                    Output::Geojson => alert_features(alert)
                        .iter()
                        .map(|f| f.to_string())
                        .collect(),
                };
                if !super::print_lines(&lines) {
                    return Ok(0);
                }
            }
            printed = alerts.len() as u64;
        }
    }
    if output == Output::Table {
        eprintln!(
            "{printed} {} (newest first, at most {limit}; index {})",
            kind.as_str(),
            query.index
        );
    }
    Ok(printed)
}

fn alert_row(alert: &Alert) -> String {
    let lasted = alert
        .ended_at
        .map(|end| {
            format!(
                "{:.0} s",
                (end - alert.started_at).num_milliseconds() as f64 / 1000.0
            )
        })
        .unwrap_or_else(|| "open".into());
    format!(
        "{:<24} {:<20} {:<13} {:<12} {:<8} {:<6} {:>8}  {}",
        alert
            .started_at
            .to_rfc3339_opts(SecondsFormat::Millis, true),
        format!("{}/{}", alert.site, alert.camera_id),
        alert.rule,
        alert.zone.as_ref().map_or("-", |z| z.id.as_str()),
        alert.peak.level.as_str().to_uppercase(),
        alert.state.as_str(),
        lasted,
        alert.description
    )
}

/// The objects of an alert with a WGS84 position, as GeoJSON Point features.
pub fn alert_features(alert: &Alert) -> Vec<serde_json::Value> {
    alert
        .objects
        .iter()
        .filter_map(|o| {
            let properties = serde_json::json!({
                "alert_id": alert.alert_id,
                "rule": alert.rule,
                "site": alert.site,
                "camera_id": alert.camera_id,
                "zone": alert.zone.as_ref().map(|z| &z.id),
                "level": alert.peak.level,
                "state": alert.state.as_str(),
                "track_id": o.track_id,
                "label": o.label,
                "updated_at": alert.updated_at.to_rfc3339(),
            });
            Some(super::watch::point_feature(o.geo?, properties))
        })
        .collect()
}

fn bar(total: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    if let Ok(style) = ProgressStyle::with_template(&format!(
        "{{bar:40}} {{pos}}/{{len}} {what} {{per_sec}} eta {{eta}} {{msg}}"
    )) {
        bar.set_style(style);
    }
    bar
}

/// What `vigil replay` was asked, to print the command that resumes it.
pub struct ReplayRequest<'a> {
    pub kind: Kind,
    pub filter: &'a Filter,
    pub pace: Pace,
    /// The flags as given, without --since (the resume command sets it).
    pub flags: Vec<String>,
}

/// `vigil replay`: the window republished; on Ctrl-C, the command that resumes it.
pub async fn replay(
    config: &Config,
    request: &ReplayRequest<'_>,
    stop: &CancellationToken,
) -> Result<ReplaySummary, ArchiveToolError> {
    let collection = open(config, request.kind).await?;
    let query = request.filter.query(request.kind)?;
    let total = query.count(&collection).await?;
    let client = crate::streams::connect(&config.nats)
        .await
        .map_err(ToolError::from)?;
    let run_id = format!("replay-{}", Utc::now().format("%Y%m%dT%H%M%S%.3fZ"));
    let bar = bar(total, request.kind.as_str());
    let summary = replay::replay(
        &client,
        &collection,
        &query,
        &replay::Target {
            pace: request.pace,
            prefix: &config.archive.replay_prefix,
            run_id: &run_id,
        },
        stop,
        |sent, at| {
            bar.set_position(sent);
            if sent % 64 == 1 {
                bar.set_message(at.to_rfc3339_opts(SecondsFormat::Millis, true));
            }
        },
    )
    .await?;
    bar.finish_and_clear();
    eprintln!(
        "{}",
        replay_report(&summary, request, &config.archive.replay_prefix, &run_id)
    );
    Ok(summary)
}

fn replay_report(
    summary: &ReplaySummary,
    request: &ReplayRequest<'_>,
    prefix: &str,
    run_id: &str,
) -> String {
    let mut out = String::new();
    let span = match (summary.first, summary.last) {
        (Some(a), Some(b)) => format!(
            "{} → {} ({:.1} s of capture time)",
            a.to_rfc3339_opts(SecondsFormat::Millis, true),
            b.to_rfc3339_opts(SecondsFormat::Millis, true),
            (b - a).num_milliseconds() as f64 / 1000.0
        ),
        _ => "nothing in the window".into(),
    };
    let secs = summary.elapsed.as_secs_f64();
    let _ = writeln!(
        out,
        "replayed {} {} on {prefix}.{}.> (header Vigil-Replay: {run_id}) in {secs:.1} s, {:.0}/s",
        summary.sent,
        request.kind.as_str(),
        request.kind.as_str(),
        summary.sent as f64 / secs.max(1e-9)
    );
    let _ = writeln!(out, "window   {span}");
    if summary.skipped > 0 {
        let _ = writeln!(
            out,
            "skipped  {} documents that are not valid {}",
            summary.skipped,
            request.kind.as_str()
        );
    }
    if summary.interrupted {
        let since = summary.last.or(request.filter.since);
        let mut command = format!("vigil replay {}", request.kind.as_str());
        if let Some(since) = since {
            let _ = write!(
                command,
                " --since {}",
                since.to_rfc3339_opts(SecondsFormat::Millis, true)
            );
        }
        for flag in &request.flags {
            let _ = write!(command, " {flag}");
        }
        let _ = writeln!(
            out,
            "stopped; to resume (messages of the last millisecond are sent again, with their ids):\n  {command}"
        );
    }
    out
}

/// `vigil reevaluate`: the comparison, printed as a table (or JSON); `publish` sends the
/// candidate's alert messages to `<replay_prefix>.alerts…`.
pub async fn reevaluate(
    config: &Config,
    candidate_path: &std::path::Path,
    filter: &Filter,
    json: bool,
    publish: bool,
    model: bool,
    stop: &CancellationToken,
) -> Result<Comparison, ArchiveToolError> {
    let candidate =
        Config::load(Some(candidate_path)).map_err(|source| ArchiveToolError::Candidate {
            path: candidate_path.to_path_buf(),
            source: Box::new(source),
        })?;
    let collection = open(config, Kind::Events).await?;
    let query = filter.query(Kind::Events)?;
    let total = query.count(&collection).await?;
    let client = match publish {
        true => Some(
            crate::streams::connect(&config.nats)
                .await
                .map_err(ToolError::from)?,
        ),
        false => None,
    };
    let redetector = match model {
        true => Some(reevaluate::Redetector {
            pipeline: crate::pipeline::Pipeline::new(
                &candidate,
                crate::detect::Detector::load(&candidate.detector)
                    .map_err(|e| ToolError::Detect(Box::new(e)))?,
            )
            .map_err(|e| ToolError::Config(Box::new(e)))?,
            store: crate::snapshots::store::Store::open(config)
                .await
                .map_err(SnapshotToolError::Store)?,
        }),
        false => None,
    };
    let run_id = format!("reevaluate-{}", Utc::now().format("%Y%m%dT%H%M%S%.3fZ"));
    let mut outgoing: Vec<Alert> = Vec::new();
    let bar = bar(total, "events");
    let comparison = reevaluate::reevaluate(
        &collection,
        &query,
        reevaluate::Sides {
            old: config,
            new: &candidate,
            redetector: redetector.as_ref(),
        },
        stop,
        |alert| {
            if client.is_some() {
                outgoing.push(alert.clone());
            }
        },
        |n| bar.set_position(n),
    )
    .await?;
    bar.finish_and_clear();
    if let Some(client) = &client {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(replay::REPLAY_HEADER, run_id.as_str());
        for alert in &outgoing {
            let subject = crate::contract::subjects::replay(
                &config.archive.replay_prefix,
                "alerts",
                alert.level,
                &alert.site,
                &alert.camera_id,
            );
            let body = Encoding::Msgpack.encode(alert).map_err(ToolError::from)?;
            client
                .publish_with_headers(subject, headers.clone(), body.into())
                .await
                .map_err(super::nats_err)?;
        }
        client.flush().await.map_err(super::nats_err)?;
        eprintln!(
            "published {} alert messages of the candidate on {}.alerts.> (header Vigil-Replay: {run_id})",
            outgoing.len(),
            config.archive.replay_prefix
        );
    }
    let text = match json {
        true => serde_json::to_string_pretty(&comparison)? + "\n",
        false => comparison_report(&comparison, candidate_path),
    };
    super::print_text(&text);
    Ok(comparison)
}

/// The comparison for people: per rule and level, then each difference.
pub fn comparison_report(c: &Comparison, candidate: &std::path::Path) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} events re-evaluated in {:.1} s ({:.0} events/s){}; alerts: {} with the current configuration, {} with {}",
        c.events,
        c.elapsed_s,
        c.events as f64 / c.elapsed_s.max(1e-9),
        if c.interrupted { ", stopped early" } else { "" },
        c.old_alerts,
        c.new_alerts,
        candidate.display()
    );
    if c.redetected + c.without_frame > 0 {
        let _ = writeln!(
            out,
            "--model: {} events detected again from their stored frame ({:.0} ms each on average, the whole run included); {} without a stored frame judged as archived",
            c.redetected,
            1000.0 * c.elapsed_s / (c.redetected.max(1)) as f64,
            c.without_frame
        );
    }
    let _ = writeln!(
        out,
        "\n{:<14} {:<9} {:>7} {:>9} {:>9} {:>12} {:>8}",
        "rule", "level", "current", "candidate", "appeared", "disappeared", "changed"
    );
    for r in &c.by_rule_level {
        let _ = writeln!(
            out,
            "{:<14} {:<9} {:>7} {:>9} {:>9} {:>12} {:>8}",
            r.rule,
            r.level.as_str(),
            r.old,
            r.new,
            r.appeared,
            r.disappeared,
            r.changed
        );
    }
    if c.differences.is_empty() {
        let _ = writeln!(out, "\nno alert differs");
        return out;
    }
    let _ = writeln!(out);
    let when = |t: DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Millis, true);
    for d in &c.differences {
        let a = d.new.as_ref().or(d.old.as_ref());
        let Some(a) = a else { continue };
        let place = format!(
            "{}/{} {} {}",
            a.site,
            a.camera_id,
            a.rule,
            a.zone.as_deref().unwrap_or("view")
        );
        let line = match (d.change, &d.old, &d.new) {
            (Change::Changed, Some(o), Some(n)) => format!(
                "changed      {place}: {} → {}, started {} → {}, ended {} → {}",
                level(o.level),
                level(n.level),
                when(o.started_at),
                when(n.started_at),
                o.ended_at.map_or("open".into(), when),
                n.ended_at.map_or("open".into(), when),
            ),
            (Change::Appeared, _, Some(n)) => format!(
                "appeared     {place}: {} from {} (peak {:.2} {})",
                level(n.level),
                when(n.started_at),
                n.peak_value,
                n.unit
            ),
            (_, Some(o), _) => format!(
                "disappeared  {place}: {} from {} (peak {:.2} {})",
                level(o.level),
                when(o.started_at),
                o.peak_value,
                o.unit
            ),
            _ => continue,
        };
        let _ = writeln!(out, "{line}");
    }
    out
}

fn level(l: Level) -> String {
    l.as_str().to_uppercase()
}

/// A stop token cancelled by the first Ctrl-C (or SIGTERM); a second one exits at once.
pub fn ctrl_c() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        #[cfg(unix)]
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        for n in 0.. {
            #[cfg(unix)]
            let signalled = match term.as_mut() {
                Some(term) => {
                    tokio::select! { r = tokio::signal::ctrl_c() => r.is_ok(), _ = term.recv() => true }
                }
                None => tokio::signal::ctrl_c().await.is_ok(),
            };
            #[cfg(not(unix))]
            let signalled = tokio::signal::ctrl_c().await.is_ok();
            if !signalled {
                return;
            }
            if n > 0 {
                std::process::exit(130);
            }
            trigger.cancel();
        }
    });
    token
}

/// `vigil snapshot`: writes the source frame (or the annotated JPEG) of an event to `out`. The
/// id may also be an alert's: its first snapshot, or with `peak` the one at its peak.
pub async fn snapshot(
    config: &Config,
    id: &str,
    annotated: bool,
    peak: bool,
    out: &std::path::Path,
) -> Result<String, ArchiveToolError> {
    use crate::snapshots::store::{Kind as FileKind, Store};
    if config.archive.snapshots.store == crate::snapshots::StoreKind::Gridfs {
        reach(config).await?;
    }
    let store = Store::open(config)
        .await
        .map_err(SnapshotToolError::Store)?;
    let kind = match annotated {
        true => FileKind::Annotated,
        false => FileKind::Source,
    };
    let mut event_id = id.to_string();
    if store
        .get(id, FileKind::Source)
        .await
        .map_err(SnapshotToolError::Store)?
        .is_none()
    {
        // Perhaps an alert: its snapshots name events.
        let alerts = open(config, Kind::Alerts).await?;
        let alert = alerts
            .find_one(mongodb::bson::doc! { "_id": id })
            .await
            .map_err(query::QueryError::from)?
            .map(crate::archive::alert_from_document)
            .transpose()
            .map_err(|source| query::QueryError::Document {
                kind: "alert",
                source,
            })?;
        let Some(alert) = alert else {
            return Err(SnapshotToolError::NotFound(id.to_string()).into());
        };
        let chosen = match peak {
            true => alert.snapshots.peak.or(alert.snapshots.new),
            false => alert.snapshots.new.or(alert.snapshots.peak),
        };
        event_id = chosen.ok_or_else(|| SnapshotToolError::AlertWithout(id.to_string()))?;
    }
    let mut how = "stored";
    let bytes = match store
        .get(&event_id, kind)
        .await
        .map_err(SnapshotToolError::Store)?
    {
        Some(bytes) => bytes,
        None if annotated => {
            how = "drawn now from the stored frame and the archived event";
            render_annotated(config, &store, &event_id).await?
        }
        None => return Err(SnapshotToolError::NotFound(event_id).into()),
    };
    std::fs::write(out, &bytes).map_err(|source| SnapshotToolError::Write {
        path: out.to_path_buf(),
        source,
    })?;
    Ok(format!(
        "{} of {event_id} ({how}; {} bytes, {}) written to {}",
        kind.as_str(),
        bytes.len(),
        crate::snapshots::store::content_type(&bytes),
        out.display()
    ))
}

/// The annotated JPEG of a snapshot that was stored without one: the source frame and the
/// archived event, drawn as the writer would have.
async fn render_annotated(
    config: &Config,
    store: &crate::snapshots::store::Store,
    event_id: &str,
) -> Result<Vec<u8>, ArchiveToolError> {
    let source = store
        .get(event_id, crate::snapshots::store::Kind::Source)
        .await
        .map_err(SnapshotToolError::Store)?
        .ok_or_else(|| SnapshotToolError::NotFound(event_id.to_string()))?;
    let events = open(config, Kind::Events).await?;
    let event = events
        .find_one(mongodb::bson::doc! { "_id": event_id })
        .await
        .map_err(query::QueryError::from)?
        .ok_or_else(|| SnapshotToolError::NotFound(format!("{event_id} in the events archive")))?;
    let event =
        crate::archive::from_document(event).map_err(|source| query::QueryError::Document {
            kind: "event",
            source,
        })?;
    let c = &config.archive.snapshots;
    let face = crate::snapshots::annotate::Typeface::load(c.font.as_deref())
        .map_err(|e| SnapshotToolError::Render(e.into()))?;
    let cameras =
        crate::scene::Cameras::from_config(config).map_err(|e| ToolError::Config(Box::new(e)))?;
    crate::snapshots::annotated_jpeg(
        &source,
        &event,
        &cameras,
        &face,
        config.risk.language,
        c.jpeg_quality,
    )
    .map_err(|e| SnapshotToolError::Render(e).into())
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotToolError {
    #[error("cannot draw the annotated snapshot: {0}")]
    Render(#[source] crate::snapshots::SnapshotError),
    #[error(transparent)]
    Store(crate::snapshots::store::StoreError),
    #[error("no snapshot {0} (events below archive.snapshots.min_level have none unless an alert started or peaked on them; a frame no processor held any more when the alert asked is absent; retention may have removed it)")]
    NotFound(String),
    #[error("alert {0} has no snapshot (archive.snapshots was off, or recent_mb was 0 and neither its first event nor its peak reached min_level)")]
    AlertWithout(String),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}
