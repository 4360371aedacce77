//! The fault suite: vigil's promises under real failures, each case with its own servers on
//! free ports and a final count that must hold. `vigil serve` runs as a child process (the
//! real binary), so it can be killed mid-sentence. Figures measured on the way (recovery
//! times, gaps, drops, memory) are written to `target/tmp/reliability/<case>.json` for
//! docs/RELIABILITY.md; no assertion depends on how fast this machine is.
//!
//! FAULT_FRAMES (default 1000) sets the frames of the kill -9 case, MONGO_OUTAGE_S (default
//! 30) the length of the MongoDB outage.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures::StreamExt;

use common::rig;
use common::servers::{wait_for_jetstream, Mongo, Nats, NatsCluster, Vigil};

const LONG: Duration = Duration::from_secs(600);

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Publishes `per_camera` frames for each camera, round robin, `interval` apart (zero: as
/// fast as JetStream stores them). Returns the event ids.
async fn publish(
    js: &jetstream::Context,
    site: &str,
    cameras: &[&str],
    per_camera: usize,
    interval: Duration,
) -> BTreeSet<String> {
    let images = rig::sequence(per_camera.min(300));
    let mut ids = BTreeSet::new();
    for i in 0..per_camera {
        for camera in cameras {
            let image = &images[i % images.len()];
            ids.insert(rig::publish_frame(js, site, camera, &format!("f{i:05}"), image).await);
        }
        if !interval.is_zero() {
            tokio::time::sleep(interval).await;
        }
    }
    ids
}

/// Waits until at least `n` of `ids` are archived.
async fn wait_some_archived(
    archive: &mongodb::Collection<mongodb::bson::Document>,
    ids: &BTreeSet<String>,
    n: usize,
) {
    let deadline = Instant::now() + LONG;
    while rig::archived(archive, ids).await.unwrap_or_default().len() < n {
        assert!(Instant::now() < deadline, "fewer than {n} archived");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_run_loses_and_duplicates_nothing() {
    let frames = env_number("FAULT_FRAMES", 1000) as usize;
    let cameras = ["c1", "c2", "c3", "c4"];
    let nats = Nats::start();
    let (mongo, db) = rig::mongo("kill9");
    let mut config = rig::fault_config(&nats.url(), &mongo.uri(), &db);
    // Every frame must be analysed: no backlog limit in the way.
    config.streams.frames_max_per_camera = 10_000;
    config.streams.frames_max_age_s = 3600;
    let mut vigil = Vigil::start(&config);
    let client = rig::client(&nats.url()).await;
    vigil.ready(&client).await;
    let js = jetstream::new(client.clone());
    let archive = rig::archive(&mongo.uri(), &db).await;

    let started = Instant::now();
    let ids = publish(
        &js,
        "kill9",
        &cameras,
        frames / cameras.len(),
        Duration::ZERO,
    )
    .await;
    wait_some_archived(&archive, &ids, ids.len() / 3).await;
    let before_kill = rig::archived(&archive, &ids)
        .await
        .unwrap_or_default()
        .len();
    vigil.kill();
    let killed_at = Instant::now();
    vigil.restart();
    vigil.ready(&client).await;
    let back_after = killed_at.elapsed();
    let complete_after_restart = rig::wait_archived(&archive, &ids, LONG).await;

    // Exactly one event per frame in the stream, and one document per frame in the archive.
    let stored = rig::stored_event_ids(&js, "vigil.events.*.kill9.>").await;
    assert_eq!(stored.len(), ids.len(), "events in VIGIL_EVENTS");
    assert!(
        rig::repeated(&stored).is_empty(),
        "duplicates in the stream"
    );
    let documents = archive
        .count_documents(mongodb::bson::doc! { "site": "kill9" })
        .await
        .unwrap();
    assert_eq!(documents as usize, ids.len(), "documents in the archive");
    assert_eq!(rig::stored(&js, "VIGIL_DLQ", "vigil.dlq.>").await, 0);
    rig::assert_no_panic(&vigil);
    common::report(
        "kill_9",
        serde_json::json!({
            "frames": ids.len(),
            "cameras": cameras.len(),
            "archived_before_kill": before_kill,
            "events_in_stream": stored.len(),
            "documents": documents,
            "duplicates": 0,
            "lost": 0,
            "restart_to_ready_s": back_after.as_secs_f64(),
            "restart_to_complete_archive_s": complete_after_restart.as_secs_f64(),
            "processor_ack_wait_s": config.processor.ack_wait_s,
            "archive_ack_wait_s": config.archive.ack_wait_s,
            "total_s": started.elapsed().as_secs_f64(),
        }),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_restart_loses_nothing() {
    let mut nats = Nats::start();
    let (mongo, db) = rig::mongo("natsrestart");
    let config = rig::fault_config(&nats.url(), &mongo.uri(), &db);
    let vigil = Vigil::start(&config);
    let client = rig::client(&nats.url()).await;
    vigil.ready(&client).await;
    let js = jetstream::new(client.clone());
    let archive = rig::archive(&mongo.uri(), &db).await;

    // The camera keeps publishing through the outage (its publisher retries until stored).
    let publisher = {
        let js = js.clone();
        tokio::spawn(async move {
            publish(&js, "restart", &["a", "b"], 60, Duration::from_millis(100)).await
        })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    nats.kill();
    let down_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    nats.restart();
    let restarted = Instant::now();
    let ids = publisher.await.unwrap();
    rig::wait_archived(&archive, &ids, LONG).await;
    let complete = restarted.elapsed();

    let stored = rig::stored_event_ids(&js, "vigil.events.*.restart.>").await;
    assert_eq!(stored.len(), ids.len());
    assert!(
        rig::repeated(&stored).is_empty(),
        "duplicates in the stream"
    );
    let log = rig::assert_no_panic(&vigil);
    assert!(log.contains("NATS connection lost"), "{log}");
    assert!(log.contains("NATS connection back"), "{log}");
    common::report(
        "nats_restart",
        serde_json::json!({
            "frames": ids.len(),
            "events_in_stream": stored.len(),
            "duplicates": 0,
            "lost": 0,
            "outage_s": (restarted - down_at).as_secs_f64(),
            "restart_to_complete_archive_s": complete.as_secs_f64(),
        }),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_node_lost_mid_run_loses_nothing() {
    let mut cluster = NatsCluster::start();
    let urls = cluster.urls();
    for node in &cluster.nodes {
        wait_for_jetstream(&node.url()).await;
    }
    let (mongo, db) = rig::mongo("cluster");
    let mut config = rig::fault_config(&urls, &mongo.uri(), &db);
    config.streams.replicas = 3;
    let vigil = Vigil::start(&config);
    let client = rig::client(&urls).await;
    vigil.ready(&client).await;
    let js = jetstream::new(client.clone());
    let archive = rig::archive(&mongo.uri(), &db).await;
    let mut events = client.subscribe("vigil.events.*.cluster.>").await.unwrap();

    let publisher = {
        let js = js.clone();
        tokio::spawn(async move {
            publish(&js, "cluster", &["a", "b"], 60, Duration::from_millis(150)).await
        })
    };
    // Watch the gaps between events while the events stream's leader is killed.
    let mut arrivals = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(4);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(500), events.next()).await {
            arrivals.push(Instant::now());
        }
    }
    let mut stream = js.get_stream("VIGIL_EVENTS").await.unwrap();
    let leader = stream
        .info()
        .await
        .unwrap()
        .cluster
        .clone()
        .and_then(|c| c.leader);
    let victim = cluster
        .nodes
        .iter()
        .position(|n| {
            leader
                .as_deref()
                .is_some_and(|l| l.ends_with(&n.port.to_string()))
        })
        .unwrap_or(0);
    cluster.nodes[victim].kill();
    let killed_at = Instant::now();
    let ids = loop {
        tokio::select! {
            m = events.next() => if m.is_some() { arrivals.push(Instant::now()) },
            _ = tokio::time::sleep(Duration::from_millis(100)) => {
                if publisher.is_finished() { break publisher.await.unwrap(); }
            }
        }
    };
    rig::wait_archived(&archive, &ids, LONG).await;
    let longest_gap = arrivals
        .windows(2)
        .filter(|w| w[1] > killed_at)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    let stored = rig::stored_event_ids(&js, "vigil.events.*.cluster.>").await;
    assert_eq!(stored.len(), ids.len(), "one event per frame");
    assert!(
        rig::repeated(&stored).is_empty(),
        "duplicates in the stream"
    );
    rig::assert_no_panic(&vigil);
    common::report(
        "cluster_node_loss",
        serde_json::json!({
            "frames": ids.len(),
            "replicas": 3,
            "killed": if leader.is_some() { "events stream leader" } else { "node 0" },
            "events_in_stream": stored.len(),
            "lost": 0,
            "duplicates": 0,
            "longest_gap_between_events_after_kill_s": longest_gap.as_secs_f64(),
        }),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mongodb_outage_delays_the_archive_and_loses_nothing() {
    let outage = Duration::from_secs(env_number("MONGO_OUTAGE_S", 30));
    let nats = Nats::start();
    // kill -9 below: the server must keep what it acknowledged (SecantusDB syncs each commit
    // only when asked; a journaled MongoDB does by default).
    let mut mongo = Mongo::start_durable();
    let db = common::unique_db("mongodown");
    let config = rig::fault_config(&nats.url(), &mongo.uri(), &db);
    let vigil = Vigil::start(&config);
    let client = rig::client(&nats.url()).await;
    vigil.ready(&client).await;
    let js = jetstream::new(client.clone());
    let archive = rig::archive(&mongo.uri(), &db).await;

    let first = publish(&js, "mongo", &["a"], 5, Duration::ZERO).await;
    rig::wait_archived(&archive, &first, LONG).await;
    mongo.kill();
    let down_at = Instant::now();
    let mut during = BTreeSet::new();
    let mut i = 0;
    while down_at.elapsed() < outage {
        let frame_id = format!("down{i:04}");
        let image = &rig::sequence(1)[0];
        during.insert(rig::publish_frame(&js, "mongo", "a", &frame_id, image).await);
        i += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Control rooms still got every event while the archive was away.
    let events_during = rig::stored(&js, "VIGIL_EVENTS", "vigil.events.*.mongo.>").await;
    let stats_during = rig::stats(&client).await;
    mongo.restart();
    let all: BTreeSet<String> = first.union(&during).cloned().collect();
    let caught_up = rig::wait_archived(&archive, &all, LONG).await;

    assert!(
        events_during as usize >= first.len() + during.len() - 2,
        "events flowed during the outage: {events_during} of {}",
        all.len()
    );
    assert_eq!(stats_during["mongodb_down"], true, "{stats_during}");
    let log = rig::assert_no_panic(&vigil);
    assert!(log.contains("MongoDB unreachable"), "{log}");
    assert!(log.contains("MongoDB reachable again"), "{log}");
    assert_eq!(
        archive
            .count_documents(mongodb::bson::doc! { "site": "mongo" })
            .await
            .unwrap() as usize,
        all.len()
    );
    common::report(
        "mongodb_outage",
        serde_json::json!({
            "outage_s": outage.as_secs(),
            "frames_during_outage": during.len(),
            "events_published_during_outage": events_during as usize - first.len(),
            "archived_after": all.len(),
            "lost": 0,
            "restart_to_caught_up_s": caught_up.as_secs_f64(),
        }),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_keeps_each_cameras_newest_frames_and_counts_the_drops() {
    let cameras = ["a", "b", "c", "d"];
    let per_camera = 60;
    let nats = Nats::start();
    let (mongo, db) = rig::mongo("overload");
    let mut config = rig::fault_config(&nats.url(), &mongo.uri(), &db);
    config.streams.frames_max_per_camera = 5;
    config.archive.enabled = false;
    let vigil = Vigil::start(&config);
    let client = rig::client(&nats.url()).await;
    vigil.ready(&client).await;
    let js = jetstream::new(client.clone());
    let (_, rss_idle) = vigil.memory_mib().unwrap_or_default();

    // A burst far beyond what one box analyses: every camera sends all its frames at once.
    let started = Instant::now();
    let ids = publish(&js, "over", &cameras, per_camera, Duration::ZERO).await;
    let publish_s = started.elapsed().as_secs_f64();
    let settled = |stats: &serde_json::Value| {
        let n = |k: &str| stats[k].as_u64().unwrap_or(0);
        n("frames_processed") + n("frames_dead_lettered") + n("frames_dropped") == ids.len() as u64
            && n("frames_waiting") == 0
    };
    let deadline = Instant::now() + LONG;
    let stats = loop {
        let stats = rig::stats(&client).await;
        if settled(&stats) {
            break stats;
        }
        assert!(Instant::now() < deadline, "never settled: {stats}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let processed = stats["frames_processed"].as_u64().unwrap();
    let dropped = stats["frames_dropped"].as_u64().unwrap();
    assert!(dropped > 0, "{stats}");
    // The newest frame of every camera was analysed.
    let stored = rig::stored_event_ids(&js, "vigil.events.*.over.>").await;
    assert_eq!(stored.len() as u64, processed);
    for camera in cameras {
        let newest = format!("over.{camera}.f{:05}", per_camera - 1);
        assert!(
            stored.contains(&newest),
            "{camera}: newest frame not analysed: {stored:?}"
        );
    }
    let (rss, peak) = vigil.memory_mib().unwrap_or_default();
    let log = rig::assert_no_panic(&vigil);
    assert!(log.contains("frames dropped unanalysed"), "{log}");
    assert!(peak < 1024.0, "peak RSS {peak} MiB");
    common::report(
        "overload",
        serde_json::json!({
            "cameras": cameras.len(),
            "frames_sent": ids.len(),
            "publish_s": publish_s,
            "frames_max_per_camera": config.streams.frames_max_per_camera,
            "processed": processed,
            "dropped_counted": dropped,
            "dead_lettered": stats["frames_dead_lettered"],
            "newest_frame_of_each_camera_analysed": true,
            "rss_idle_mib": rss_idle,
            "rss_after_mib": rss,
            "rss_peak_mib": peak,
        }),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_is_bounded_while_nats_is_down_and_start_waits_for_nats() {
    // Start with no NATS at all: vigil waits (and says so) instead of exiting.
    let port = common::free_port();
    let url = format!("nats://127.0.0.1:{port}");
    let (mongo, db) = rig::mongo("bounded");
    let config = rig::fault_config(&url, &mongo.uri(), &db);
    let mut vigil = Vigil::start(&config);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(vigil.log().contains("NATS unreachable"), "{}", vigil.log());
    // A stop while waiting is immediate.
    let asked = Instant::now();
    let status = vigil.terminate(Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "{}", vigil.log());
    let stop_while_waiting = asked.elapsed();

    // Start again, then bring NATS up on that port: vigil connects by itself.
    let mut vigil = Vigil::start(&config);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let nats = Nats::start_on(port);
    let client = rig::client(&url).await;
    vigil.ready(&client).await;

    // Frames in hand, then NATS vanishes and a stop is asked: it ends within the drain time.
    let js = jetstream::new(client.clone());
    publish(&js, "bounded", &["a"], 4, Duration::ZERO).await;
    drop(nats);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let asked = Instant::now();
    let status = vigil.terminate(Duration::from_secs(config.serve.drain_timeout_s + 10));
    let stop_while_down = asked.elapsed();
    assert!(status.is_some(), "vigil ignored SIGTERM:\n{}", vigil.log());
    rig::assert_no_panic(&vigil);
    common::report(
        "bounded_stop",
        serde_json::json!({
            "stop_while_waiting_for_nats_s": stop_while_waiting.as_secs_f64(),
            "stop_with_nats_gone_s": stop_while_down.as_secs_f64(),
            "drain_timeout_s": config.serve.drain_timeout_s,
        }),
    );
}

/// vigil refuses a server older than it needs, naming what it needs. Debian's nats-server
/// (2.9) is the old server at hand; scripts/setup.sh does not install it, so this case runs
/// where the machine has it (the development and CI machines do) and says so where it is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_server_older_than_2_11_is_refused_by_name() {
    let old = "/usr/sbin/nats-server";
    if !std::path::Path::new(old).exists() {
        eprintln!("SKIPPED: no {old} (Debian's nats-server 2.9) on this machine");
        return;
    }
    let port = common::free_port();
    let mut child = std::process::Command::new(old)
        .args(["-a", "127.0.0.1", "-p", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start the old nats-server");
    common::wait_for_port(port, "old nats-server");
    let mut config = vigil::config::Config::default();
    config.nats.url = format!("nats://127.0.0.1:{port}");
    let refused = vigil::streams::connect(&config.nats).await;
    let _ = child.kill();
    let _ = child.wait();
    let error = refused.expect_err("a 2.9 server must be refused");
    assert!(
        matches!(error, vigil::streams::StreamsError::ServerTooOld { .. }),
        "{error}"
    );
    let message = error.to_string();
    assert!(
        message.contains("2.11.0") && message.contains("priority groups"),
        "{message}"
    );
}
