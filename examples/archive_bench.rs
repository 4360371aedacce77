//! The archive's rates on this machine, against running servers (scripts/archive-bench.sh
//! starts them): what plain bulk-insert clients (the Rust driver, and pymongo through
//! scripts/bulk_insert.py) get from the same server with the same documents and indexes, the
//! events/s the archiver stores with the snapshot writer idle (and its ratio to the faster
//! plain client) and busy, snapshots/s (source + annotated JPEG into GridFS), replay events/s,
//! re-evaluation events/s. The archiver's progress is read from its own counter: polling the
//! server's document count every 50 ms (as this example once did) loaded SecantusDB enough to
//! halve the rate it measured.
//!
//! `cargo run --release --example archive_bench -- NATS_URL MONGODB_URI [EVENTS]`
//!
//! Events are the CCTV sequence's real events (cached by the tests in target/tmp, else
//! analysed here with the model), repeated with new ids and times; snapshots use the
//! sequence's frames, one for every tenth event (one a second per camera at 10 frames/s, the
//! default `min_interval_s` for a camera at a high level).

use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;
use vigil::archive::query::{Filter, Kind};
use vigil::archive::replay::{Pace, Target};
use vigil::config::Config;
use vigil::contract::{Encoding, RiskEvent};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (nats, mongo) = (
        args.get(1).context("NATS_URL")?,
        args.get(2).context("MONGODB_URI")?,
    );
    let n: usize = args.get(3).map_or(Ok(20_000), |a| a.parse())?;
    let mut config = Config::from_toml(include_str!("../config/vigil.toml"))?;
    config.nats.url = nats.clone();
    config.archive.uri = mongo.clone();
    config.archive.database = format!("vigil_bench_{}", Utc::now().timestamp());
    config.detector.sessions = 1;

    let frames = sequence_frames()?;
    let base = sequence_events(&config, &frames).await?;
    let start: DateTime<Utc> = Utc::now() - chrono::Duration::hours(2);
    let events = |offset: usize, count: usize| -> Vec<RiskEvent> {
        (offset..offset + count)
            .map(|i| {
                let mut e = base[i % base.len()].clone();
                e.frame_id = format!("b{i:07}");
                e.event_id = vigil::contract::event_id(&e.site, &e.camera_id, &e.frame_id);
                e.captured_at = start + chrono::Duration::milliseconds(100 * i as i64);
                e.snapshot = i.is_multiple_of(10).then(|| e.event_id.clone());
                e
            })
            .collect()
    };

    // 0. Drawing the annotated JPEG alone (decode, boxes, zones, banner, encode).
    let face =
        vigil::snapshots::annotate::Typeface::load(config.archive.snapshots.font.as_deref())?;
    let cameras = vigil::scene::Cameras::from_config(&config)?;
    let mut ms = Vec::new();
    for (e, frame) in base.iter().zip(&frames).take(50) {
        let t = Instant::now();
        vigil::snapshots::annotated_jpeg(frame, e, &cameras, &face, config.risk.language, 85)?;
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    ms.sort_by(f64::total_cmp);
    println!(
        "annotated JPEG: median {:.1} ms over {} frames",
        ms[ms.len() / 2],
        ms.len()
    );

    let client = vigil::streams::connect(&config.nats).await?;
    let js = vigil::publish::context(client.clone());
    vigil::streams::ensure_streams(&js, &config, client.server_info().max_payload).await?;
    let collection = vigil::archive::collection(&config.archive).await?;

    // 1. What the server takes from plain bulk-insert clients (the same documents, batches
    //    of archive.batch_size one after another, into a collection with the archive's
    //    indexes): the Rust driver, then pymongo. Then the archiver alone, then beside the
    //    snapshot writer.
    let rust = bulk_insert_rate(&config, &events(0, n), BulkClient::Rust).await?;
    println!(
        "plain bulk insert, Rust driver: {n} documents in {:.2} s = {:.0} documents/s",
        rust.0, rust.1
    );
    let python = bulk_insert_rate(&config, &events(0, n), BulkClient::Pymongo).await?;
    println!(
        "plain bulk insert, pymongo: {n} documents in {:.2} s = {:.0} documents/s",
        python.0, python.1
    );
    let idle = archive_rate(&js, &config, events(0, n), None).await?;
    let best = rust.1.max(python.1);
    println!(
        "archive, snapshot writer idle: {n} events in {:.2} s = {:.0} events/s = {:.2} x the faster plain bulk insert",
        idle.0,
        idle.1,
        idle.1 / best
    );
    let (snapshots, writer) = vigil::snapshots::build(&config)
        .await?
        .context("snapshots enabled in config/vigil.toml")?;
    let busy = archive_rate(
        &js,
        &config,
        events(n, n),
        Some((&snapshots, writer, &frames)),
    )
    .await?;
    println!(
        "archive, snapshot writer busy: {n} events in {:.2} s = {:.0} events/s",
        busy.0, busy.1
    );
    if let Some((stored, secs)) = busy.2 {
        println!(
            "snapshots (source + annotated, GridFS): {stored} in {secs:.2} s = {:.1} snapshots/s",
            stored as f64 / secs
        );
    }

    // 2. Replay as fast as NATS takes it, to a subscriber.
    let query = Filter::default().query(Kind::Events)?;
    let mut sub = client.subscribe("vigil.replay.events.>").await?;
    let counter = tokio::spawn(async move {
        use futures::StreamExt;
        let mut got = 0u64;
        while tokio::time::timeout(Duration::from_secs(30), sub.next())
            .await
            .ok()
            .flatten()
            .is_some()
        {
            got += 1;
        }
        got
    });
    let target = Target {
        pace: Pace::Max,
        prefix: "vigil.replay",
        run_id: "bench",
    };
    let summary = vigil::archive::replay::replay(
        &client,
        &collection,
        &query,
        &target,
        &CancellationToken::new(),
        |_, _| {},
    )
    .await?;
    let secs = summary.elapsed.as_secs_f64();
    println!(
        "replay --max: {} events in {secs:.2} s = {:.0} events/s (a subscriber got {})",
        summary.sent,
        summary.sent as f64 / secs,
        counter.await?
    );

    // 3. Re-evaluation of the whole window, the same configuration on both sides.
    let comparison = vigil::archive::reevaluate::reevaluate(
        &collection,
        &query,
        vigil::archive::reevaluate::Sides {
            old: &config,
            new: &config,
            redetector: None,
        },
        &CancellationToken::new(),
        |_| {},
        |_| {},
    )
    .await?;
    println!(
        "reevaluate: {} events in {:.2} s = {:.0} events/s ({} alerts, {} differences)",
        comparison.events,
        comparison.elapsed_s,
        comparison.events as f64 / comparison.elapsed_s,
        comparison.new_alerts,
        comparison.differences.len()
    );
    let _ = collection
        .client()
        .database(&config.archive.database)
        .drop()
        .await;
    Ok(())
}

#[derive(Clone, Copy, PartialEq)]
enum BulkClient {
    Rust,
    Pymongo,
}

/// Inserts the events' stored documents into a fresh collection with the archive's indexes,
/// `archive.batch_size` at a time, unordered, each batch after the last, with the Rust driver or
/// with pymongo (scripts/bulk_insert.py): what a plain client of the same server achieves, the
/// yardstick for the archiver. Returns seconds and documents/s.
async fn bulk_insert_rate(
    config: &Config,
    events: &[RiskEvent],
    client: BulkClient,
) -> anyhow::Result<(f64, f64)> {
    let mut archive = config.archive.clone();
    archive.collection = "bulk_insert".into();
    let collection = vigil::archive::collection(&archive).await?;
    vigil::archive::ensure_indexes(&collection, archive.retention.events_days).await?;
    let documents = events
        .iter()
        .map(vigil::archive::to_document)
        .collect::<Result<Vec<_>, _>>()?;
    let rate = match client {
        BulkClient::Rust => {
            let started = Instant::now();
            for batch in documents.chunks(archive.batch_size) {
                collection.insert_many(batch).ordered(false).await?;
            }
            let secs = started.elapsed().as_secs_f64();
            (secs, events.len() as f64 / secs)
        }
        BulkClient::Pymongo => {
            let file = std::env::temp_dir().join(format!("vigil-bulk-{}.bson", std::process::id()));
            let mut bytes = Vec::new();
            for d in &documents {
                d.to_writer(&mut bytes)?;
            }
            std::fs::write(&file, bytes)?;
            let out = std::process::Command::new(".venv/bin/python")
                .arg("scripts/bulk_insert.py")
                .arg(&archive.uri)
                .arg(&archive.database)
                .arg(&archive.collection)
                .arg(&file)
                .arg(archive.batch_size.to_string())
                .output()?;
            std::fs::remove_file(&file)?;
            anyhow::ensure!(
                out.status.success(),
                "scripts/bulk_insert.py: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let report: serde_json::Value = serde_json::from_slice(&out.stdout)?;
            (
                report["seconds"].as_f64().unwrap_or(f64::NAN),
                report["per_s"].as_f64().unwrap_or(f64::NAN),
            )
        }
    };
    collection.drop().await?;
    Ok(rate)
}

type Busy<'a> = (
    &'a vigil::snapshots::Snapshots,
    vigil::snapshots::Writer,
    &'a [Vec<u8>],
);

/// Publishes `events` to VIGIL_EVENTS, then times an archiver storing them all. With `busy`,
/// the snapshot writer stores a snapshot for each event that names one meanwhile.
async fn archive_rate(
    js: &async_nats::jetstream::Context,
    config: &Config,
    events: Vec<RiskEvent>,
    busy: Option<Busy<'_>>,
) -> anyhow::Result<(f64, f64, Option<(u64, f64)>)> {
    let mut acks = Vec::new();
    for e in &events {
        let body = Encoding::Msgpack.encode(e)?;
        let subject = vigil::contract::subjects::event(e.risk.level, &e.site, &e.camera_id);
        acks.push(js.publish(subject, body.into()).await?);
        if acks.len() >= 512 {
            for a in acks.drain(..) {
                a.await?;
            }
        }
    }
    for a in acks {
        a.await?;
    }
    // Connecting and the indexes are set-up, not archiving: done before the clock starts, as
    // for the plain bulk-insert clients.
    let collection = vigil::archive::collection(&config.archive).await?;
    vigil::archive::ensure_indexes(&collection, config.archive.retention.events_days).await?;
    let archiver = vigil::archive::Archiver::build(js, config).await?;
    let stop = CancellationToken::new();
    let started = Instant::now();
    // Counted by the archiver itself: polling the server for its count would load it.
    let stats = archiver.stats();
    let archiving = tokio::spawn(archiver.run(stop.clone()));
    let target = events.len() as u64;
    let archived = tokio::spawn(async move {
        while stats.archived.load(std::sync::atomic::Ordering::Relaxed) < target {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        started.elapsed().as_secs_f64()
    });
    let mut snapshot_task = None;
    let mut offered = 0u64;
    if let Some((snapshots, writer, frames)) = busy {
        let stats = snapshots.stats();
        snapshot_task = Some((tokio::spawn(writer.run(stop.clone())), stats));
        for (i, e) in events.iter().enumerate() {
            if e.snapshot.is_some() {
                // Offered as fast as the queue takes them.
                while !snapshots.offer(e, bytes::Bytes::from(frames[i % frames.len()].clone())) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                offered += 1;
            }
        }
    }
    let archive_secs = archived.await?;
    let mut snapshot_rate = None;
    if let Some((_, stats)) = &snapshot_task {
        while stats.stored.load(std::sync::atomic::Ordering::Relaxed)
            + stats.failed.load(std::sync::atomic::Ordering::Relaxed)
            < offered
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        snapshot_rate = Some((
            stats.stored.load(std::sync::atomic::Ordering::Relaxed),
            started.elapsed().as_secs_f64(),
        ));
    }
    stop.cancel();
    let _ = archiving.await;
    if let Some((task, _)) = snapshot_task {
        let _ = task.await;
    }
    Ok((
        archive_secs,
        events.len() as f64 / archive_secs,
        snapshot_rate,
    ))
}

fn sequence_frames() -> anyhow::Result<Vec<Vec<u8>>> {
    let files = vigil::tools::play::frame_files(&vigil::tools::play::sequence_dir())?;
    Ok(files.iter().filter_map(|p| std::fs::read(p).ok()).collect())
}

/// The sequence's events: from the tests' cache, else analysed here.
async fn sequence_events(config: &Config, frames: &[Vec<u8>]) -> anyhow::Result<Vec<RiskEvent>> {
    let cache = std::path::Path::new("target/tmp/vtest_events.msgpack");
    if let Ok(bytes) = std::fs::read(cache) {
        if let Ok(events) = rmp_serde::from_slice::<Vec<RiskEvent>>(&bytes) {
            return Ok(events);
        }
    }
    let detector = vigil::detect::Detector::load(&config.detector)?;
    let pipeline = vigil::pipeline::Pipeline::new(config, detector)?;
    let mut out = Vec::new();
    for (i, image) in frames.iter().enumerate() {
        let frame = vigil::contract::Frame {
            frame_id: format!("f{i:04}"),
            captured_at: Utc::now(),
            image: image.clone().into(),
            site: None,
            camera_id: None,
            pose: None,
            meta: Default::default(),
        };
        let origin = vigil::pipeline::Origin {
            site: "demo",
            camera: "vtest",
            queued: Default::default(),
            patience: None,
        };
        out.push(pipeline.process(frame, origin).await?);
    }
    Ok(out)
}
