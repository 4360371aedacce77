//! The archive as a tool, against a real MongoDB-wire server and a real nats-server: queries
//! (each filter returns exactly its set, each plan uses the named index), replay (order,
//! pace, flat memory, Ctrl-C and resume), re-evaluation with another configuration, and
//! retention (TTL indexes).

mod common;

use std::process::{Command, Stdio};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use chrono::{DateTime, Duration as ChronoDuration, SubsecRound, Utc};
use futures::StreamExt;
use mongodb::bson::{doc, Document};
use mongodb::Collection;
use tokio_util::sync::CancellationToken;
use vigil::archive::query::{self, Filter, Kind, Order};
use vigil::archive::reevaluate::{self, Change};
use vigil::archive::replay::{self, Pace, Target, REPLAY_HEADER};
use vigil::config::Config;
use vigil::contract::{
    Alert, AlertObject, AlertState, AlertZone, BBox, Level, ObjectReport, Peak, RiskEvent,
    ALERT_SCHEMA,
};

const CAMERAS: [(&str, &str); 3] = [("s1", "a"), ("s1", "b"), ("s2", "c")];

fn t0() -> DateTime<Utc> {
    // Recent, so that retention never removes what a test just wrote; the same for the whole
    // run, and in whole seconds, because BSON dates keep milliseconds and events must read back
    // exactly as they were published.
    static T0: LazyLock<DateTime<Utc>> =
        LazyLock::new(|| (Utc::now() - ChronoDuration::days(1)).trunc_subsecs(0));
    *T0
}

fn object(id: u32, label: &str, zones: &[&str]) -> ObjectReport {
    ObjectReport {
        id,
        class_id: 0,
        label: label.into(),
        confidence: 0.8,
        bbox: BBox {
            x1: 10.0,
            y1: 10.0,
            x2: 50.0,
            y2: 90.0,
        },
        ground: None,
        geo: None,
        zones: zones.iter().map(|z| z.to_string()).collect(),
        no_ground: None,
        uncertain: false,
        low_score: false,
    }
}

/// Event `i` of a synthetic archive: cameras in turn, 100 ms apart, levels cycling, a person
/// in every 4th, a car in every 5th (in zone "gate" in every 7th).
fn synthetic_event(i: usize) -> RiskEvent {
    let (site, camera) = CAMERAS[i % 3];
    let at = t0() + ChronoDuration::milliseconds(100 * i as i64);
    let mut e = RiskEvent::bare(&format!("{site}.{camera}.f{i:05}"), at);
    e.site = site.into();
    e.camera_id = camera.into();
    e.frame_id = format!("f{i:05}");
    e.risk.level = Level::ALL[(i / 3) % 5];
    if i.is_multiple_of(4) {
        e.objects.push(object(0, "person", &[]));
    }
    if i.is_multiple_of(5) {
        let zones: &[&str] = if i.is_multiple_of(7) { &["gate"] } else { &[] };
        e.objects.push(object(1, "car", zones));
    }
    e
}

fn synthetic_alert(i: usize) -> Alert {
    let (site, camera) = CAMERAS[i % 3];
    let started = t0() + ChronoDuration::seconds(i as i64);
    let rule = ["intrusion", "crowd", "loitering"][i % 3];
    let label = if i.is_multiple_of(2) { "person" } else { "car" };
    Alert {
        schema: ALERT_SCHEMA.into(),
        alert_id: format!(
            "{site}.{camera}.{rule}.z{}.{}",
            i % 4,
            started.timestamp_millis()
        ),
        revision: 2,
        state: AlertState::End,
        rule: rule.into(),
        level: Level::None,
        priority: 3,
        site: site.into(),
        camera_id: camera.into(),
        zone: Some(AlertZone {
            id: format!("z{}", i % 4),
            name: "Zone".into(),
            kind: "restricted".into(),
        }),
        objects: vec![AlertObject {
            track_id: i as u64,
            class_id: 0,
            label: label.into(),
            bbox: BBox {
                x1: 0.0,
                y1: 0.0,
                x2: 1.0,
                y2: 1.0,
            },
            ground: None,
            geo: None,
            speed_mps: None,
            heading_deg: None,
        }],
        value: 1.0,
        unit: "s".into(),
        peak: Peak {
            value: 2.0,
            level: Level::ALL[1 + (i / 3) % 4],
            at: started,
        },
        crossings: Default::default(),
        started_at: started,
        updated_at: started + ChronoDuration::seconds(5),
        ended_at: Some(started + ChronoDuration::seconds(5)),
        end_reason: None,
        description: "synthetic".into(),
        event_ids: Vec::new(),
        snapshots: Default::default(),
    }
}

async fn events_collection(config: &Config) -> Collection<Document> {
    let c = vigil::archive::collection(&config.archive).await.unwrap();
    vigil::archive::ensure_indexes(&c, config.archive.retention.events_days)
        .await
        .unwrap();
    c
}

async fn store_events(c: &Collection<Document>, events: &[RiskEvent]) {
    for chunk in events.chunks(1000) {
        let docs: Vec<Document> = chunk
            .iter()
            .map(|e| vigil::archive::to_document(e).unwrap())
            .collect();
        c.insert_many(docs).await.unwrap();
    }
}

fn test_config(test: &str, nats: &common::NatsServer) -> Config {
    common::config(nats, &common::unique_db(test))
}

async fn ids(c: &Collection<Document>, filter: &Filter, kind: Kind) -> Vec<String> {
    let q = filter.query(kind).unwrap();
    let cursor = q.find(c, Order::NewestFirst, None).await.unwrap();
    let docs: Vec<Document> = futures::TryStreamExt::try_collect(cursor).await.unwrap();
    docs.iter()
        .map(|d| d.get_str("_id").unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_filter_returns_exactly_its_set_through_its_index() {
    let nats = common::NatsServer::start();
    let config = test_config("query", &nats);
    let events_c = events_collection(&config).await;
    let events: Vec<RiskEvent> = (0..500).map(synthetic_event).collect();
    store_events(&events_c, &events).await;
    let alerts_c = vigil::archive::alerts_collection(&config.archive)
        .await
        .unwrap();
    vigil::archive::ensure_alert_indexes(&alerts_c, 365)
        .await
        .unwrap();
    let alerts: Vec<Alert> = (0..60).map(synthetic_alert).collect();
    alerts_c
        .insert_many(
            alerts
                .iter()
                .map(|a| vigil::archive::alert_document(a).unwrap()),
        )
        .await
        .unwrap();

    let since = t0() + ChronoDuration::seconds(10);
    let until = t0() + ChronoDuration::seconds(30);
    type EventCheck = Box<dyn Fn(&RiskEvent) -> bool>;
    let has = |label: &'static str| move |e: &RiskEvent| e.objects.iter().any(|o| o.label == label);
    let event_cases: Vec<(Filter, EventCheck)> = vec![
        (Filter::default(), Box::new(|_| true)),
        (
            Filter {
                site: Some("s1".into()),
                ..Default::default()
            },
            Box::new(|e| e.site == "s1"),
        ),
        (
            Filter {
                site: Some("s1".into()),
                camera: Some("b".into()),
                ..Default::default()
            },
            Box::new(|e| e.site == "s1" && e.camera_id == "b"),
        ),
        (
            Filter {
                level_at_least: Some(Level::High),
                ..Default::default()
            },
            Box::new(|e| e.risk.level >= Level::High),
        ),
        (
            Filter {
                site: Some("s2".into()),
                level_at_least: Some(Level::Medium),
                ..Default::default()
            },
            Box::new(|e| e.site == "s2" && e.risk.level >= Level::Medium),
        ),
        (
            Filter {
                since: Some(since),
                until: Some(until),
                ..Default::default()
            },
            Box::new(move |e| e.captured_at >= since && e.captured_at < until),
        ),
        (
            Filter {
                label: Some("person".into()),
                ..Default::default()
            },
            Box::new(has("person")),
        ),
        (
            Filter {
                label: Some("person".into()),
                level_at_least: Some(Level::Critical),
                since: Some(since),
                ..Default::default()
            },
            Box::new(move |e| {
                has("person")(e) && e.risk.level >= Level::Critical && e.captured_at >= since
            }),
        ),
        (
            Filter {
                zone: Some("gate".into()),
                ..Default::default()
            },
            Box::new(|e| {
                e.objects
                    .iter()
                    .any(|o| o.zones.iter().any(|z| z == "gate"))
            }),
        ),
    ];
    for (filter, check) in &event_cases {
        let mut expected: Vec<&RiskEvent> = events.iter().filter(|e| check(e)).collect();
        expected.sort_by_key(|e| std::cmp::Reverse(e.captured_at));
        let expected: Vec<String> = expected.iter().map(|e| e.event_id.clone()).collect();
        assert!(!expected.is_empty(), "{filter:?} selects something");
        let got = ids(&events_c, filter, Kind::Events).await;
        assert_eq!(got, expected, "{filter:?}: the set, newest first");
        let q = filter.query(Kind::Events).unwrap();
        let plan = q
            .explain(&events_c, Order::NewestFirst, Some(50))
            .await
            .unwrap();
        let (used, collscan) = query::plan_indexes(&plan);
        assert!(
            !collscan && used.contains(&q.index.to_string()),
            "{filter:?} plan: {used:?} collscan {collscan}\n{plan}"
        );
        assert_eq!(q.count(&events_c).await.unwrap(), expected.len() as u64);
    }

    type AlertCheck = Box<dyn Fn(&Alert) -> bool>;
    let alert_cases: Vec<(Filter, AlertCheck)> = vec![
        (Filter::default(), Box::new(|_| true)),
        (
            Filter {
                site: Some("s1".into()),
                camera: Some("a".into()),
                ..Default::default()
            },
            Box::new(|a| a.site == "s1" && a.camera_id == "a"),
        ),
        (
            Filter {
                rule: Some("crowd".into()),
                ..Default::default()
            },
            Box::new(|a| a.rule == "crowd"),
        ),
        (
            Filter {
                zone: Some("z1".into()),
                ..Default::default()
            },
            Box::new(|a| a.zone.as_ref().is_some_and(|z| z.id == "z1")),
        ),
        (
            Filter {
                label: Some("car".into()),
                ..Default::default()
            },
            Box::new(|a| a.objects.iter().any(|o| o.label == "car")),
        ),
        (
            Filter {
                level_at_least: Some(Level::High),
                site: Some("s2".into()),
                ..Default::default()
            },
            Box::new(|a| a.peak.level >= Level::High && a.site == "s2"),
        ),
        (
            Filter {
                since: Some(since),
                until: Some(until),
                rule: Some("intrusion".into()),
                ..Default::default()
            },
            Box::new(move |a| {
                a.started_at >= since && a.started_at < until && a.rule == "intrusion"
            }),
        ),
    ];
    for (filter, check) in &alert_cases {
        let mut expected: Vec<&Alert> = alerts.iter().filter(|a| check(a)).collect();
        expected.sort_by_key(|a| std::cmp::Reverse(a.started_at));
        let expected: Vec<String> = expected.iter().map(|a| a.alert_id.clone()).collect();
        assert!(!expected.is_empty(), "{filter:?} selects something");
        assert_eq!(
            ids(&alerts_c, filter, Kind::Alerts).await,
            expected,
            "{filter:?}"
        );
        let q = filter.query(Kind::Alerts).unwrap();
        let plan = q
            .explain(&alerts_c, Order::NewestFirst, Some(50))
            .await
            .unwrap();
        let (used, collscan) = query::plan_indexes(&plan);
        assert!(
            !collscan && used.contains(&q.index.to_string()),
            "{filter:?} plan: {used:?}\n{plan}"
        );
    }

    // The command line: JSON lines as published, and the table.
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(&config, dir.path());
    let out = vigil_cli(
        &path,
        &[
            "query", "events", "--site", "s1", "--camera", "b", "--level", "high", "--output",
            "json", "--limit", "1000",
        ],
    );
    let lines: Vec<RiskEvent> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let expected = events
        .iter()
        .filter(|e| e.site == "s1" && e.camera_id == "b" && e.risk.level >= Level::High)
        .count();
    assert_eq!(lines.len(), expected);
    assert_eq!(
        lines[0],
        *events
            .iter()
            .rev()
            .find(|e| e.site == "s1" && e.camera_id == "b" && e.risk.level >= Level::High)
            .unwrap(),
        "an event reads back as it was published"
    );
    let table = vigil_cli(
        &path,
        &["query", "alerts", "--rule", "crowd", "--limit", "3"],
    );
    assert_eq!(
        table.lines().count(),
        4,
        "a header and three rows:\n{table}"
    );
    assert!(table.contains("crowd"));
}

fn write_config(config: &Config, dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("vigil.toml");
    std::fs::write(&path, toml::to_string(config).unwrap()).unwrap();
    path
}

fn vigil_cli(config: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "vigil {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_keeps_order_ids_and_pace_and_marks_each_message() {
    let nats = common::NatsServer::start();
    let config = test_config("replay_pace", &nats);
    let c = events_collection(&config).await;
    // 40 events over 30 s of capture time with uneven gaps, and others outside the filter.
    let mut events = Vec::new();
    let mut at = t0();
    for i in 0..40 {
        at += ChronoDuration::milliseconds([200, 1500, 450, 850][i % 4]);
        let mut e = RiskEvent::bare(&format!("r.x.f{i:03}"), at);
        e.site = "r".into();
        e.camera_id = "x".into();
        e.risk.level = Level::ALL[i % 5];
        events.push(e);
        let mut other = RiskEvent::bare(&format!("r.y.f{i:03}"), at);
        other.site = "r".into();
        other.camera_id = "y".into();
        events.push(other);
    }
    store_events(&c, &events).await;

    let client = nats.client().await;
    let mut sub = client.subscribe("vigil.replay.events.>").await.unwrap();
    let filter = Filter {
        site: Some("r".into()),
        camera: Some("x".into()),
        ..Default::default()
    };
    let query = filter.query(Kind::Events).unwrap();
    let target = Target {
        pace: Pace::Speed(10.0),
        prefix: "vigil.replay",
        run_id: "test-run",
    };
    let started = Instant::now();
    let receiver = tokio::spawn(async move {
        let mut arrivals = Vec::new();
        while arrivals.len() < 40 {
            let m = tokio::time::timeout(Duration::from_secs(10), sub.next())
                .await
                .unwrap()
                .unwrap();
            arrivals.push((started.elapsed(), m));
        }
        arrivals
    });
    let summary = replay::replay(
        &client,
        &c,
        &query,
        &target,
        &CancellationToken::new(),
        |_, _| {},
    )
    .await
    .unwrap();
    assert_eq!(summary.sent, 40);
    let arrivals = receiver.await.unwrap();
    let expected: Vec<&RiskEvent> = events.iter().filter(|e| e.camera_id == "x").collect();
    let first = expected[0].captured_at;
    let span = (expected[39].captured_at - first).num_milliseconds() as f64 / 10.0;
    let mut worst = 0.0f64;
    for ((arrived, m), e) in arrivals.iter().zip(&expected) {
        let got: RiskEvent = rmp_serde::from_slice(&m.payload).unwrap();
        assert_eq!(got.event_id, e.event_id, "capture order, ids kept");
        assert_eq!(
            m.subject.as_str(),
            format!("vigil.replay.events.{}.r.x", e.risk.level)
        );
        assert_eq!(
            m.headers
                .as_ref()
                .and_then(|h| h.get(REPLAY_HEADER))
                .map(|v| v.as_str()),
            Some("test-run")
        );
        let due = (e.captured_at - first).num_milliseconds() as f64 / 10.0;
        let off = (arrived.as_secs_f64() * 1000.0 - arrivals[0].0.as_secs_f64() * 1000.0) - due;
        worst = worst.max(off.abs());
    }
    common::report(
        "replay_pace",
        serde_json::json!({ "span_ms": span, "worst_offset_ms": worst, "speed": 10 }),
    );
    assert!(
        worst <= 0.1 * span,
        "relative timing off by {worst:.0} ms over a {span:.0} ms replay"
    );
}

/// Peak resident memory of a `vigil replay … --max` run, and what it printed.
fn replay_peak_rss(config: &std::path::Path, args: &[&str]) -> (u64, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .arg("--config")
        .arg(config)
        .args(["replay", "events", "--max"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = format!("/proc/{}/status", child.id());
    let mut peak_kb = 0;
    loop {
        if let Ok(text) = std::fs::read_to_string(&status) {
            if let Some(kb) = text
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse::<u64>().ok())
            {
                peak_kb = peak_kb.max(kb);
            }
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{stderr}");
    (peak_kb * 1024, stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_of_20000_events_runs_in_flat_memory_and_resumes_after_ctrl_c() {
    let nats = common::NatsServer::start();
    let config = test_config("replay_memory", &nats);
    let c = events_collection(&config).await;
    let mut events: Vec<RiskEvent> = (0..20_000).map(synthetic_event).collect();
    for e in &mut events {
        e.description = "A person near the gate; nobody else in view. ".repeat(4);
    }
    store_events(&c, &events).await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(&config, dir.path());

    let client = nats.client().await;
    let mut sub = client.subscribe("vigil.replay.events.>").await.unwrap();
    // The subscription is in place at the server before the first replay publishes.
    client.flush().await.unwrap();
    let counter = tokio::spawn(async move {
        // Until both replays are in (2,000 + 20,000), or 30 s without a message once they
        // flow. The first waits longer: on a loaded 2-core machine the first replay's start
        // (a process, its query of 20,000 stored events) has taken more than 30 s.
        let mut n = 0u64;
        while n < 22_000 {
            let patience = Duration::from_secs(if n == 0 { 180 } else { 30 });
            match tokio::time::timeout(patience, sub.next()).await {
                Ok(Some(_)) => n += 1,
                _ => break,
            }
        }
        n
    });
    let until_2000 = (t0() + ChronoDuration::milliseconds(100 * 2000)).to_rfc3339();
    let (small, _) = replay_peak_rss(&path, &["--until", &until_2000]);
    let started = Instant::now();
    let (large, printed) = replay_peak_rss(&path, &[]);
    let rate = 20_000.0 / started.elapsed().as_secs_f64();
    assert!(printed.contains("replayed 20000 events"), "{printed}");
    let received = counter.await.unwrap();
    common::report(
        "replay_memory",
        serde_json::json!({
            "peak_rss_mib_2000": small as f64 / 1048576.0,
            "peak_rss_mib_20000": large as f64 / 1048576.0,
            "events_per_s_20000": rate,
            "received_by_a_subscriber": received,
        }),
    );
    assert_eq!(received, 22_000, "a subscriber got every replayed event");
    assert!(
        large < small + 16 * 1024 * 1024,
        "memory grows with the window: {} MiB for 2,000 events, {} MiB for 20,000",
        small / 1048576,
        large / 1048576
    );

    // Ctrl-C in the middle of a real-time replay: a clean stop and the command that resumes.
    let mut watch = client.subscribe("vigil.replay.events.>").await.unwrap();
    client.flush().await.unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .arg("--config")
        .arg(&path)
        .args(["replay", "events", "--site", "s1", "--speed", "1"])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    tokio::time::timeout(Duration::from_secs(60), watch.next())
        .await
        .expect("the replay started")
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    let resume = stderr
        .lines()
        .find(|l| l.trim_start().starts_with("vigil replay events --since"))
        .unwrap_or_else(|| panic!("no resume command in:\n{stderr}"));
    assert!(
        resume.contains("--site s1") && resume.contains("--speed 1"),
        "{resume}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reevaluation_with_a_lower_density_threshold_reports_the_alerts_that_appear() {
    let nats = common::NatsServer::start();
    let config = test_config("reevaluate", &nats);
    let mut base = common::sequence::config();
    base.archive = config.archive.clone();
    base.nats = config.nats.clone();
    let c = events_collection(&base).await;
    let events = common::sequence::sequence_events().await;
    store_events(&c, &events).await;

    // The busiest the plaza gets, sustained or not.
    let peak = events
        .iter()
        .flat_map(|e| e.zones.iter().filter(|z| z.id == "plaza"))
        .map(|z| z.density_per_m2)
        .fold(0.0, f64::max);
    assert!(peak > 0.0 && peak < base.situations.rules.crowd.tiers[0].density_per_m2);
    let mut candidate = base.clone();
    candidate.situations.rules.crowd.tiers = vec![vigil::situations::rules::CrowdTier {
        density_per_m2: peak * 0.5,
        level: Level::Medium,
    }];
    candidate.situations.rules.crowd.sustain_s = 1.0;

    let query = Filter::default().query(Kind::Events).unwrap();
    let comparison = reevaluate::reevaluate(
        &c,
        &query,
        reevaluate::Sides {
            old: &base,
            new: &candidate,
            redetector: None,
        },
        &CancellationToken::new(),
        |_| {},
        |_| {},
    )
    .await
    .unwrap();
    common::report(
        "reevaluate",
        serde_json::json!({
            "events": comparison.events,
            "elapsed_s": comparison.elapsed_s,
            "events_per_s": comparison.events as f64 / comparison.elapsed_s,
            "old_alerts": comparison.old_alerts,
            "new_alerts": comparison.new_alerts,
        }),
    );
    assert_eq!(comparison.events, 300);
    let crowd: Vec<_> = comparison
        .differences
        .iter()
        .filter(|d| d.rule() == "crowd")
        .collect();
    assert!(!crowd.is_empty(), "{comparison:#?}");
    assert!(crowd.iter().all(|d| d.change == Change::Appeared));
    assert!(
        comparison.differences.iter().all(|d| d.rule() == "crowd"),
        "only the crowd rule changed: {:#?}",
        comparison.differences
    );
    let row = comparison
        .by_rule_level
        .iter()
        .find(|r| r.rule == "crowd" && r.level == Level::Medium)
        .unwrap();
    assert_eq!((row.old, row.appeared), (0, crowd.len() as u64));

    // The command line, with --publish: the table, and the candidate's alerts on the replay
    // prefix, never on vigil.alerts.
    let dir = tempfile::tempdir().unwrap();
    let base_path = write_config(&base, dir.path());
    let candidate_path = dir.path().join("candidate.toml");
    std::fs::write(&candidate_path, toml::to_string(&candidate).unwrap()).unwrap();
    let client = nats.client().await;
    let mut replayed = client.subscribe("vigil.replay.alerts.>").await.unwrap();
    let mut live = client.subscribe("vigil.alerts.>").await.unwrap();
    let table = vigil_cli(
        &base_path,
        &[
            "reevaluate",
            "--with",
            candidate_path.to_str().unwrap(),
            "--publish",
        ],
    );
    assert!(
        table.contains("appeared") && table.contains("crowd"),
        "{table}"
    );
    let mut published = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(2), replayed.next()).await {
        assert!(m
            .headers
            .as_ref()
            .and_then(|h| h.get(REPLAY_HEADER))
            .is_some());
        published.push(rmp_serde::from_slice::<Alert>(&m.payload).unwrap());
    }
    let candidates = vigil::situations::evaluate(&candidate, events.clone());
    assert_eq!(
        published
            .iter()
            .map(|a| (&a.alert_id, a.revision))
            .collect::<Vec<_>>(),
        candidates
            .iter()
            .map(|a| (&a.alert_id, a.revision))
            .collect::<Vec<_>>(),
        "every alert message of the candidate, with its revision"
    );
    assert!(published.iter().any(|a| a.rule == "crowd"));
    assert!(
        tokio::time::timeout(Duration::from_millis(500), live.next())
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_is_a_ttl_index_and_a_changed_setting_applies() {
    let nats = common::NatsServer::start();
    let config = test_config("retention", &nats);
    let c = vigil::archive::collection(&config.archive).await.unwrap();
    let ttl = |c: Collection<Document>| async move {
        let cursor = c.list_indexes().await.unwrap();
        let indexes: Vec<_> = futures::TryStreamExt::try_collect(cursor).await.unwrap();
        indexes
            .into_iter()
            .find(|i| {
                i.options.as_ref().and_then(|o| o.name.as_deref())
                    == Some(vigil::archive::RETENTION_INDEX)
            })
            .map(|i| (i.keys, i.options.and_then(|o| o.expire_after)))
    };
    vigil::archive::ensure_indexes(&c, 14).await.unwrap();
    assert_eq!(
        ttl(c.clone()).await,
        Some((
            doc! { "captured_at": 1 },
            Some(Duration::from_secs(14 * 86_400))
        ))
    );
    vigil::archive::ensure_indexes(&c, 3).await.unwrap();
    assert_eq!(
        ttl(c.clone()).await.and_then(|t| t.1),
        Some(Duration::from_secs(3 * 86_400)),
        "a changed retention applies to the existing index"
    );
    // An event captured longer ago than the retention goes (MongoDB's TTL monitor runs about
    // once a minute); a recent one stays.
    vigil::archive::ensure_indexes(&c, 1).await.unwrap();
    let old = RiskEvent::bare("old", Utc::now() - ChronoDuration::days(2));
    let new = RiskEvent::bare("new", Utc::now());
    store_events(&c, &[old, new]).await;
    common::eventually(
        "the expired event removed",
        Duration::from_secs(150),
        || {
            let c = c.clone();
            async move { c.count_documents(doc! { "_id": "old" }).await.unwrap() == 0 }
        },
    )
    .await;
    assert_eq!(c.count_documents(doc! { "_id": "new" }).await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_round_trips_byte_exact_and_its_annotation_renders_hangul() {
    let nats = common::NatsServer::start();
    let mut config = test_config("snapshot", &nats);
    config.risk.language = vigil::risk::Language::Ko;
    config.archive.snapshots.min_level = Level::None;
    // Drawn and stored at once here; below, drawn on demand.
    config.archive.snapshots.annotated = true;
    config.situations.enabled = false;
    let (shutdown, handle) = common::serve(&config).await;
    let client = nats.client().await;
    let js = async_nats::jetstream::new(client.clone());
    let image = common::image("bus.jpg");
    let mut frame = common::frame("bus-1", image.clone());
    frame.captured_at = Utc::now();
    js.publish(
        "vigil.frames.demo.vtest",
        common::encode(&frame, vigil::contract::Encoding::Msgpack),
    )
    .await
    .unwrap()
    .await
    .unwrap();

    let store = vigil::snapshots::store::Store::open(&config).await.unwrap();
    let id = vigil::contract::event_id("demo", "vtest", "bus-1");
    common::eventually("the snapshot stored", Duration::from_secs(60), || {
        let store = &store;
        let id = &id;
        async move {
            store
                .get(id, vigil::snapshots::store::Kind::Annotated)
                .await
                .unwrap()
                .is_some()
        }
    })
    .await;
    let source = store
        .get(&id, vigil::snapshots::store::Kind::Source)
        .await
        .unwrap()
        .unwrap();
    assert!(source == image, "the source frame comes back byte for byte");

    // The event names its snapshot; the annotated JPEG is the frame under a banner whose
    // second line, the Korean description, is drawn in white.
    let events = vigil::archive::collection(&config.archive).await.unwrap();
    common::eventually("the event archived", Duration::from_secs(30), || {
        let events = events.clone();
        let id = id.clone();
        async move { events.count_documents(doc! { "_id": id }).await.unwrap() == 1 }
    })
    .await;
    let event =
        vigil::archive::from_document(events.find_one(doc! { "_id": &id }).await.unwrap().unwrap())
            .unwrap();
    assert_eq!(event.snapshot.as_deref(), Some(id.as_str()));
    assert!(
        event
            .description
            .chars()
            .any(|c| ('\u{AC00}'..='\u{D7A3}').contains(&c)),
        "{}",
        event.description
    );

    let dir = tempfile::tempdir().unwrap();
    let path = write_config(&config, dir.path());
    let out = dir.path().join("annotated.jpg");
    let printed = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .arg("--config")
        .arg(&path)
        .args(["snapshot", &id, "--annotated", "-o"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        printed.status.success(),
        "{}",
        String::from_utf8_lossy(&printed.stderr)
    );
    let annotated = image::load_from_memory(&std::fs::read(&out).unwrap())
        .unwrap()
        .to_rgb8();
    let (w, h) = image::load_from_memory(&image)
        .unwrap()
        .to_rgb8()
        .dimensions();
    let banner = vigil::snapshots::annotate::banner_height(w);
    assert_eq!(annotated.dimensions(), (w, h + banner));
    let line = banner / 2;
    let white = (line..banner)
        .flat_map(|y| (0..w).map(move |x| (x, y)))
        .filter(|(x, y)| annotated.get_pixel(*x, *y).0.iter().all(|c| *c > 200))
        .count();
    assert!(white > 150, "the description line has {white} text pixels");
    let face = vigil::snapshots::annotate::Typeface::load(None).unwrap();
    assert!(
        face.covers(&event.description),
        "every character of {:?} has a glyph",
        event.description
    );

    assert!(String::from_utf8_lossy(&printed.stderr).contains("(stored;"));

    // Without a stored annotation (annotated = false, the default) the command draws the same
    // image from the stored frame and the archived event.
    let db = vigil::archive::database(&config.archive).await.unwrap();
    db.gridfs_bucket(
        mongodb::options::GridFsBucketOptions::builder()
            .bucket_name("snapshots".to_string())
            .build(),
    )
    .delete(mongodb::bson::Bson::String(format!("{id}/annotated")))
    .await
    .unwrap();
    let drawn = dir.path().join("drawn.jpg");
    let printed = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .arg("--config")
        .arg(&path)
        .args(["snapshot", &id, "--annotated", "-o"])
        .arg(&drawn)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&printed.stderr);
    assert!(
        printed.status.success() && said.contains("drawn now"),
        "{said}"
    );
    assert!(
        std::fs::read(&drawn).unwrap() == std::fs::read(&out).unwrap(),
        "drawn on demand = drawn at once"
    );

    // The same command without --annotated gives the source bytes.
    let source_out = dir.path().join("source.jpg");
    vigil_cli(
        &path,
        &["snapshot", &id, "-o", source_out.to_str().unwrap()],
    );
    assert!(std::fs::read(&source_out).unwrap() == image);
    shutdown.cancel();
    handle.await.unwrap();

    // `reevaluate --model` runs the model again on the stored frame: the same model and
    // configuration see the same objects.
    let redetector = reevaluate::Redetector {
        pipeline: vigil::pipeline::Pipeline::new(
            &config,
            vigil::detect::Detector::load(&config.detector).unwrap(),
        )
        .unwrap(),
        store,
    };
    let query = Filter::default().query(Kind::Events).unwrap();
    let comparison = reevaluate::reevaluate(
        &events,
        &query,
        reevaluate::Sides {
            old: &config,
            new: &config,
            redetector: Some(&redetector),
        },
        &CancellationToken::new(),
        |_| {},
        |_| {},
    )
    .await
    .unwrap();
    assert_eq!((comparison.redetected, comparison.without_frame), (1, 0));
    assert!(comparison.differences.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_store_keeps_snapshots_by_day_and_drops_old_days() {
    let nats = common::NatsServer::start();
    let mut config = test_config("snapshot_dir", &nats);
    let dir = tempfile::tempdir().unwrap();
    config.archive.snapshots.store = vigil::snapshots::StoreKind::Directory;
    config.archive.snapshots.directory = dir.path().to_path_buf();
    let store = vigil::snapshots::store::Store::open(&config).await.unwrap();
    let kind = vigil::snapshots::store::Kind::Source;
    let old = RiskEvent::bare("s.c.old", Utc::now() - ChronoDuration::days(40));
    let new = RiskEvent::bare("s.c.new", Utc::now());
    for e in [&old, &new] {
        store.put(e, kind, b"frame bytes").await.unwrap();
        // A second write of the same snapshot (a redelivered frame) changes nothing.
        store.put(e, kind, b"other bytes").await.unwrap();
    }
    assert_eq!(
        store.get("s.c.old", kind).await.unwrap().as_deref(),
        Some(&b"frame bytes"[..])
    );
    let mut hostile = RiskEvent::bare("../escape", Utc::now());
    hostile.event_id = "../escape".into();
    assert!(
        store.put(&hostile, kind, b"x").await.is_err(),
        "an id never names a path outside the store"
    );
    assert_eq!(store.expire(30).await.unwrap(), 1);
    assert_eq!(store.get("s.c.old", kind).await.unwrap(), None);
    assert!(store.get("s.c.new", kind).await.unwrap().is_some());
}
