//! The situation stage on real events: the 300-frame CCTV sequence analysed by the real model
//! (once; cached under target/tmp), then tracked, judged and turned into alerts.

mod common;

use common::sequence::{scene, scene_config, sequence_events};

use std::collections::{BTreeMap, BTreeSet};

use chrono::Duration as ChronoDuration;
use vigil::contract::{Alert, AlertState, RiskEvent};

fn summary(alerts: &[Alert]) -> String {
    alerts
        .iter()
        .map(|a| {
            format!(
                "{} r{} {} {} {} {:.1}{} [{}]",
                a.alert_id,
                a.revision,
                a.state.as_str(),
                a.level,
                a.rule,
                a.value,
                a.unit,
                a.objects
                    .iter()
                    .map(|o| o.track_id.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every alert has one `new`, one `end` and revisions 1, 2, 3… in between.
fn assert_lifecycles(alerts: &[Alert]) {
    let mut by_id: BTreeMap<&str, Vec<&Alert>> = BTreeMap::new();
    for a in alerts {
        by_id.entry(a.alert_id.as_str()).or_default().push(a);
    }
    for (id, messages) in by_id {
        let states: Vec<AlertState> = messages.iter().map(|a| a.state).collect();
        assert_eq!(states.first(), Some(&AlertState::New), "{id}: {states:?}");
        assert_eq!(states.last(), Some(&AlertState::End), "{id}: {states:?}");
        assert_eq!(
            states.iter().filter(|s| **s == AlertState::New).count(),
            1,
            "{id}: one new"
        );
        assert_eq!(
            states.iter().filter(|s| **s == AlertState::End).count(),
            1,
            "{id}: one end"
        );
        let revisions: Vec<u32> = messages.iter().map(|a| a.revision).collect();
        assert_eq!(
            revisions,
            (1..=messages.len() as u32).collect::<Vec<_>>(),
            "{id}"
        );
    }
}

fn situations_of(alerts: &[Alert]) -> BTreeSet<(String, String)> {
    alerts
        .iter()
        .map(|a| {
            let zone = a.zone.as_ref().map_or("view".to_string(), |z| z.id.clone());
            (a.rule.clone(), zone)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sequence_gives_a_few_alerts_each_started_once_and_ended_once() {
    let config = scene_config();
    let events = scene(&sequence_events().await, &config);
    let alerts = vigil::situations::evaluate(&config, events.clone());
    eprintln!("{}", summary(&alerts));
    let frames = 300;
    let started = alerts.iter().filter(|a| a.state == AlertState::New).count();
    common::report(
        "situations_sequence",
        serde_json::json!({
            "frames": frames,
            "events": events.len(),
            "critical_events": events.iter().filter(|e| e.risk.level == vigil::contract::Level::Critical).count(),
            "alerts": started,
            "alert_messages": alerts.len(),
            "situations": situations_of(&alerts).into_iter().map(|(r, z)| format!("{r}/{z}")).collect::<Vec<_>>(),
        }),
    );
    assert_lifecycles(&alerts);
    let found = situations_of(&alerts);
    for expected in [
        ("loitering", "road"),
        ("count", "view"),
        ("line_crossing", "crossing"),
    ] {
        let expected = (expected.0.to_string(), expected.1.to_string());
        assert!(found.contains(&expected), "{expected:?} in {found:?}");
    }
    // The parked car and truck (the truck's detection dropping out for 3 s) never alert.
    assert!(!found.iter().any(|(_, zone)| zone == "lot"), "{found:?}");
    // Every alert ended once the scene was empty.
    let last_frame = events[frames - 1].captured_at;
    assert!(alerts
        .iter()
        .filter(|a| a.state == AlertState::End)
        .all(|a| a
            .ended_at
            .is_some_and(|t| t > last_frame - ChronoDuration::seconds(30))));
    let crossings = alerts
        .iter()
        .rfind(|a| a.rule == "line_crossing")
        .map(|a| a.crossings.clone())
        .unwrap_or_default();
    assert!(crossings.values().sum::<u32>() >= 2, "{crossings:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_order_and_repeated_events_give_the_same_alerts_and_so_does_a_replay() {
    let config = scene_config();
    let events = scene(&sequence_events().await, &config);
    let in_order = vigil::situations::evaluate(&config, events.clone());
    // Neighbours swapped (published by two processors, the later capture first) and every
    // tenth event delivered twice.
    let mut shuffled = Vec::new();
    for pair in events.chunks(2) {
        shuffled.extend(pair.iter().rev().cloned());
    }
    let mut jumbled = Vec::new();
    for (i, e) in shuffled.into_iter().enumerate() {
        if i % 10 == 0 {
            jumbled.push(e.clone());
        }
        jumbled.push(e);
    }
    assert_eq!(vigil::situations::evaluate(&config, jumbled), in_order);
    assert_eq!(
        vigil::situations::evaluate(&config, events),
        in_order,
        "replayed"
    );
}

/// Publishes events into VIGIL_EVENTS, `interval` apart.
async fn publish_events(
    js: &async_nats::jetstream::Context,
    events: &[RiskEvent],
    interval: std::time::Duration,
) {
    for event in events {
        vigil::publish::publish_event(js, event, vigil::contract::Encoding::Msgpack)
            .await
            .unwrap();
        if !interval.is_zero() {
            tokio::time::sleep(interval).await;
        }
    }
}

/// Every alert message VIGIL_ALERTS holds, in order.
async fn stored_alerts(js: &async_nats::jetstream::Context) -> Vec<Alert> {
    use futures::StreamExt;
    let stream = js.get_stream("VIGIL_ALERTS").await.unwrap();
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            inactive_threshold: std::time::Duration::from_secs(10),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer
        .fetch()
        .max_messages(10_000)
        .expires(std::time::Duration::from_secs(2))
        .messages()
        .await
        .unwrap();
    let mut out = Vec::new();
    while let Some(Ok(m)) = messages.next().await {
        let json = common::body_json(m.headers.as_ref(), &m.payload);
        common::assert_valid("alert.schema.json", &json);
        out.push(serde_json::from_value(json).unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_stage_publishes_the_same_alerts_archives_each_once_and_shows_tracks() {
    use futures::StreamExt;
    let mut config = scene_config();
    let nats = common::NatsServer::start();
    let live = common::config(&nats, &common::unique_db("situations"));
    config.nats = live.nats.clone();
    config.archive = live.archive.clone();
    config.processor.enabled = false;
    config.service.enabled = false;
    let events = scene(&sequence_events().await, &config);
    let expected = vigil::situations::evaluate(&config, events.clone());
    let (shutdown, running) = common::serve(&config).await;
    let client = nats.client().await;
    let js = async_nats::jetstream::new(client.clone());
    let mut tracks = client.subscribe("vigil.tracks.demo.vtest").await.unwrap();
    client.flush().await.unwrap();

    publish_events(&js, &events, std::time::Duration::ZERO).await;
    common::eventually("every alert published", std::time::Duration::from_secs(120), || {
        let js = js.clone();
        let n = expected.len();
        async move { common::rig::stored(&js, "VIGIL_ALERTS", "vigil.alerts.>").await as usize >= n }
    })
    .await;
    let published = stored_alerts(&js).await;
    assert_eq!(published, expected, "live = evaluated");

    // The archive holds one document per alert: its last revision, the end.
    let alerts = vigil::archive::alerts_collection(&config.archive)
        .await
        .unwrap();
    let ids: BTreeSet<String> = expected.iter().map(|a| a.alert_id.clone()).collect();
    common::eventually(
        "alerts archived",
        std::time::Duration::from_secs(60),
        || {
            let alerts = alerts.clone();
            let n = ids.len() as u64;
            async move {
                alerts
                    .count_documents(mongodb::bson::doc! { "state": "end" })
                    .await
                    .ok()
                    == Some(n)
            }
        },
    )
    .await;
    assert_eq!(
        alerts
            .count_documents(mongodb::bson::doc! {})
            .await
            .unwrap() as usize,
        ids.len()
    );

    let first = tokio::time::timeout(std::time::Duration::from_secs(10), tracks.next())
        .await
        .unwrap()
        .unwrap();
    let json = common::body_json(first.headers.as_ref(), &first.payload);
    common::assert_valid("tracks.schema.json", &json);
    shutdown.cancel();
    running.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_active_instance_repeats_no_new_and_loses_no_end() {
    use common::servers::{Nats, Vigil};
    use futures::StreamExt;
    let nats = Nats::start();
    let (mongo, db) = common::rig::mongo("failover");
    let mut config = scene_config();
    config.nats.url = nats.url();
    config.archive.uri = mongo.uri();
    config.archive.database = db;
    config.archive.batch_wait_ms = 100;
    config.processor.enabled = false;
    config.service.enabled = false;
    config.situations.failover_timeout_s = 2;
    config.situations.ack_wait_s = 5;
    let events = scene(&sequence_events().await, &config);
    let expected = vigil::situations::evaluate(&config, events.clone());
    let mut a = Vigil::start(&config);
    let mut b = Vigil::start(&config);
    for v in [&a, &b] {
        v.wait_log("situation stage started").await;
    }
    let client = common::rig::client(&nats.url()).await;
    let js = async_nats::jetstream::new(client.clone());
    let mut tracks = client.subscribe("vigil.tracks.demo.vtest").await.unwrap();
    client.flush().await.unwrap();

    // Twice real time: 20 events a second.
    let publisher = {
        let js = js.clone();
        let events = events.clone();
        tokio::spawn(async move {
            publish_events(&js, &events, std::time::Duration::from_millis(50)).await
        })
    };
    tokio::time::sleep(std::time::Duration::from_secs(8)).await;
    let active_is_a = a.log().contains("situation stage active");
    let killed_at = std::time::Instant::now();
    if active_is_a {
        a.kill()
    } else {
        b.kill()
    }
    let mut arrivals = Vec::new();
    while !publisher.is_finished() {
        if let Ok(Some(_)) =
            tokio::time::timeout(std::time::Duration::from_millis(200), tracks.next()).await
        {
            arrivals.push(std::time::Instant::now());
        }
    }
    let survivor = if active_is_a { &b } else { &a };
    common::eventually(
        "every alert ended",
        std::time::Duration::from_secs(120),
        || {
            let js = js.clone();
            async move {
                let alerts = stored_alerts(&js).await;
                let new = alerts.iter().filter(|a| a.state == AlertState::New).count();
                let end = alerts.iter().filter(|a| a.state == AlertState::End).count();
                new > 0 && new == end
            }
        },
    )
    .await;
    let published = stored_alerts(&js).await;
    assert_lifecycles(&published);
    assert_eq!(
        situations_of(&published),
        situations_of(&expected),
        "{}",
        summary(&published)
    );
    assert!(
        survivor.log().contains("situation stage active"),
        "{}",
        survivor.log()
    );
    let failover = arrivals
        .windows(2)
        .filter(|w| w[1] > killed_at)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    common::report(
        "situations_failover",
        serde_json::json!({
            "events": events.len(),
            "alerts": published.iter().filter(|a| a.state == AlertState::New).count(),
            "alert_messages": published.len(),
            "failover_timeout_s": config.situations.failover_timeout_s,
            "longest_gap_in_tracks_after_kill_s": failover.as_secs_f64(),
        }),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_names_the_snapshot_of_its_start_and_of_its_peak() {
    let config = scene_config();
    // Snapshots were kept for every 10th event (a per-camera interval, as processors do).
    let mut events = scene(&sequence_events().await, &config);
    for (i, e) in events.iter_mut().enumerate() {
        e.snapshot = (i % 10 == 0).then(|| e.event_id.clone());
    }
    let at: BTreeMap<String, chrono::DateTime<chrono::Utc>> = events
        .iter()
        .map(|e| (e.event_id.clone(), e.captured_at))
        .collect();
    let alerts = vigil::situations::evaluate(&config, events);
    assert!(!alerts.is_empty());
    for alert in &alerts {
        common::assert_valid("alert.schema.json", &serde_json::to_value(alert).unwrap());
        let new = alert
            .snapshots
            .new
            .as_ref()
            .expect("a snapshot of the start");
        let peak = alert
            .snapshots
            .peak
            .as_ref()
            .expect("a snapshot of the peak");
        for (id, moment) in [(new, None), (peak, Some(alert.peak.at))] {
            let shot = at[id];
            let reference = moment.unwrap_or(shot);
            assert!(
                shot <= reference && reference - shot <= ChronoDuration::seconds(2),
                "{}: snapshot {id} at {shot} for a moment at {reference}",
                alert.alert_id
            );
        }
    }
}

/// Alerts over the sequence's events with no event snapshots at all (every event below
/// `min_level`), through one camera's situation as the live stage runs it.
fn applied_without_event_snapshots(
    keep: bool,
) -> (Vec<RiskEvent>, Vec<vigil::situations::camera::Applied>) {
    use vigil::situations::camera::CameraSituation;
    let config = scene_config();
    let events: Vec<RiskEvent> = sequence_events_blocking()
        .into_iter()
        .map(|mut e| {
            e.snapshot = None;
            e
        })
        .collect();
    let events = scene(&events, &config);
    let life = vigil::situations::alerts::Lifecycle {
        end_after_s: config.situations.end_after_s,
        update_min_interval_s: config.situations.update_min_interval_s,
        language: config.risk.language,
    };
    let rules = vigil::situations::camera_rules(&config, "demo", "vtest");
    let mut camera = CameraSituation::new(&config.situations, life, rules).keeping_frames(keep);
    let mut applied = Vec::new();
    for e in &events {
        let _ = camera.offer(e.clone());
        applied.extend(camera.ready());
    }
    applied.extend(camera.flush());
    (events, applied)
}

fn sequence_events_blocking() -> Vec<RiskEvent> {
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(sequence_events())
}

#[test]
fn every_alert_start_and_peak_names_a_frame_the_stage_asks_to_keep() {
    let (events, applied) = applied_without_event_snapshots(true);
    let at: BTreeMap<&str, chrono::DateTime<chrono::Utc>> = events
        .iter()
        .map(|e| (e.event_id.as_str(), e.captured_at))
        .collect();
    let kept: BTreeSet<String> = applied
        .iter()
        .filter_map(|a| a.keep.as_ref().map(|e| e.event_id.clone()))
        .collect();
    let alerts: Vec<&Alert> = applied.iter().flat_map(|a| &a.alerts).collect();
    assert!(alerts.len() >= 3, "{}", alerts.len());
    for alert in &alerts {
        let new = alert
            .snapshots
            .new
            .as_deref()
            .expect("a snapshot of the start");
        let peak = alert
            .snapshots
            .peak
            .as_deref()
            .expect("a snapshot of the peak");
        for (id, reference) in [(new, None), (peak, Some(alert.peak.at))] {
            assert!(kept.contains(id), "{}: {id} was asked for", alert.alert_id);
            let shot = at[id];
            let reference = reference.unwrap_or(shot);
            assert!(
                shot <= reference && reference - shot <= ChronoDuration::seconds(2),
                "{}: snapshot {id} at {shot} for a moment at {reference}",
                alert.alert_id
            );
        }
    }
    // At most one every 2 s of capture time: a moment takes the camera's latest frame when
    // it is that recent.
    let times: Vec<_> = kept
        .iter()
        .map(|id| at[id.as_str()])
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    assert!(
        times
            .windows(2)
            .all(|w| w[1] - w[0] > ChronoDuration::seconds(2)),
        "{times:?}"
    );

    // Without frames to keep (snapshots off, or recent_mb = 0), nothing is asked for and the
    // alerts name no snapshot.
    let (_, applied) = applied_without_event_snapshots(false);
    assert!(applied.iter().all(|a| a.keep.is_none()));
    assert!(applied
        .iter()
        .flat_map(|a| &a.alerts)
        .all(|a| a.snapshots.is_empty()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_processor_keeps_the_frame_of_an_alert_that_its_event_gave_no_snapshot() {
    use vigil::snapshots::store::{Kind, Store};
    let nats = common::NatsServer::start();
    let live = common::config(&nats, &common::unique_db("keep"));
    let mut config = scene_config();
    config.nats = live.nats.clone();
    config.archive = live.archive.clone();
    // Event snapshots only for critical events, and one an hour per camera: the alerts' own
    // moments must come from the processor's recent frames.
    config.archive.snapshots.min_level = vigil::contract::Level::Critical;
    config.archive.snapshots.min_interval_s = 3600.0;
    // The whole sequence is published at once: let it all wait.
    config.streams.frames_max_per_camera = 1000;
    config.streams.frames_max_age_s = 600;
    let (shutdown, running) = common::serve(&config).await;
    let client = nats.client().await;
    let js = async_nats::jetstream::new(client.clone());

    let frames = common::rig::sequence(KEEP_FRAMES);
    let start = chrono::Utc::now() - ChronoDuration::seconds(60);
    for (i, image) in frames.iter().enumerate() {
        let mut frame = common::frame(&format!("f{i:04}"), image.clone());
        frame.captured_at = start + ChronoDuration::milliseconds(100 * i as i64);
        js.publish(
            "vigil.frames.demo.vtest",
            common::encode(&frame, vigil::contract::Encoding::Msgpack),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    common::eventually(
        "every frame judged",
        std::time::Duration::from_secs(180),
        || {
            let client = client.clone();
            async move {
                common::rig::stats(&client).await["situation_events_applied"].as_u64()
                    >= Some(KEEP_FRAMES as u64 - 10)
            }
        },
    )
    .await;
    let alerts: Vec<Alert> = stored_alerts(&js).await;
    let started: Vec<&Alert> = alerts
        .iter()
        .filter(|a| a.state == AlertState::New)
        .collect();
    assert!(!started.is_empty(), "{}", summary(&alerts));
    let store = Store::open(&config).await.unwrap();
    let mut from_recent = 0;
    for alert in &started {
        let id = alert
            .snapshots
            .new
            .clone()
            .expect("a snapshot of the start");
        common::eventually(
            "the start's frame stored",
            std::time::Duration::from_secs(30),
            || {
                let (store, id) = (&store, &id);
                async move { store.get(id, Kind::Source).await.unwrap().is_some() }
            },
        )
        .await;
        let stored = store.get(&id, Kind::Source).await.unwrap().unwrap();
        let frame: usize = id.trim_start_matches("demo.vtest.f").parse().unwrap();
        assert!(stored == frames[frame], "{id}: the frame as published");
        from_recent += usize::from(alert.event_ids.last() == Some(&id));
    }
    let stats = common::rig::stats(&client).await;
    assert!(stats["alert_frames_kept"].as_u64() >= Some(1), "{stats}");
    assert_eq!(stats["alert_frames_not_kept"].as_u64(), Some(0), "{stats}");
    common::report(
        "situations_keep_frames",
        serde_json::json!({
            "frames": KEEP_FRAMES,
            "alerts": started.len(),
            "starts_with_their_own_frame": from_recent,
            "alert_frames_kept": stats["alert_frames_kept"],
            "snapshots_stored": stats["snapshots_stored"],
        }),
    );
    shutdown.cancel();
    running.await.unwrap();
}

/// Frames of the sequence the keep test sends: all of them, so that alerts start more than
/// 2 s after the one event snapshot.
const KEEP_FRAMES: usize = 300;
