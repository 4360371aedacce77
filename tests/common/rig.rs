//! A whole deployment for fault tests: NATS (one node or a cluster), a MongoDB-wire server and
//! `vigil serve` as child processes, plus what a test needs to drive and count: publish frames
//! of several cameras, read the archive, the events stream, the dead letters and the stats.

use std::collections::{BTreeSet, HashSet};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer};
use chrono::Utc;
use futures::StreamExt;
use mongodb::bson::{doc, Document};
use vigil::config::Config;
use vigil::contract::{self, Encoding, Frame};

use super::servers::{Mongo, Vigil};

/// Frames of the CCTV sequence, read once.
pub fn sequence(count: usize) -> Vec<Vec<u8>> {
    let dir = super::testdata().join("sequences/vtest");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("the vtest sequence")
        .map(|e| e.expect("dir entry").path())
        .collect();
    files.sort();
    files
        .iter()
        .cycle()
        .take(count)
        .map(|p| std::fs::read(p).expect("frame"))
        .collect()
}

/// The configuration fault tests run vigil with: the shipped one, pointed at the rig, with
/// short ack waits so that redeliveries after a kill come within seconds.
pub fn fault_config(nats_url: &str, mongo_uri: &str, database: &str) -> Config {
    let mut config =
        Config::from_toml(include_str!("../../config/vigil.toml")).expect("shipped config");
    config.nats.url = nats_url.to_string();
    config.archive.uri = mongo_uri.to_string();
    config.archive.database = database.to_string();
    config.archive.batch_wait_ms = 100;
    config.archive.ack_wait_s = 4;
    config.archive.retry_max_ms = 1000;
    config.processor.ack_wait_s = 6;
    config.processor.stats_interval_s = 1;
    config.serve.drain_timeout_s = 5;
    config
}

/// A client for the test itself; retries while the servers come up.
pub async fn client(url: &str) -> async_nats::Client {
    let addrs = vigil::streams::server_addrs(url).expect("urls");
    async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(addrs)
        .await
        .expect("test client connects")
}

/// Publishes a frame until JetStream stores it (a publisher that outlives outages, as a
/// camera gateway with a buffer would). Returns the event id it will get.
pub async fn publish_frame(
    js: &jetstream::Context,
    site: &str,
    camera: &str,
    frame_id: &str,
    image: &[u8],
) -> String {
    let frame = Frame {
        frame_id: frame_id.to_string(),
        captured_at: Utc::now(),
        image: bytes::Bytes::copy_from_slice(image),
        site: None,
        camera_id: None,
        pose: None,
        meta: Default::default(),
    };
    let body = bytes::Bytes::from(Encoding::Msgpack.encode(&frame).expect("encode"));
    let event_id = contract::event_id(site, camera, frame_id);
    let subject = contract::subjects::frames(site, camera);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let message = jetstream::message::PublishMessage::build()
            .payload(body.clone())
            .message_id(&event_id);
        let stored = match js.send_publish(subject.clone(), message).await {
            Ok(ack) => ack.await.is_ok(),
            Err(_) => false,
        };
        if stored {
            return event_id;
        }
        assert!(Instant::now() < deadline, "frame {frame_id} never stored");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn archive(uri: &str, database: &str) -> mongodb::Collection<Document> {
    let client = mongodb::Client::with_uri_str(uri)
        .await
        .expect("mongo client");
    client.database(database).collection("events")
}

/// Event ids in the archive among `ids` (None while MongoDB does not answer).
pub async fn archived(
    archive: &mongodb::Collection<Document>,
    ids: &BTreeSet<String>,
) -> Option<BTreeSet<String>> {
    let list: Vec<String> = ids.iter().cloned().collect();
    let mut cursor = archive
        .find(vigil::archive::ids_filter(&list))
        .projection(doc! { "_id": 1 })
        .await
        .ok()?;
    let mut found = BTreeSet::new();
    while let Some(doc) = cursor.next().await {
        found.insert(doc.ok()?.get_str("_id").ok()?.to_string());
    }
    Some(found)
}

/// Waits until every id is archived; returns how long that took.
pub async fn wait_archived(
    archive: &mongodb::Collection<Document>,
    ids: &BTreeSet<String>,
    timeout: Duration,
) -> Duration {
    let started = Instant::now();
    loop {
        let found = archived(archive, ids).await.unwrap_or_default();
        if found.len() == ids.len() {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < timeout,
            "{} of {} events archived after {timeout:?}; missing e.g. {:?}",
            found.len(),
            ids.len(),
            ids.difference(&found).take(5).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Messages stored in `stream` on `subject`, counted by a throw-away consumer.
pub async fn stored(js: &jetstream::Context, stream: &str, subject: &str) -> u64 {
    let stream = js.get_stream(stream).await.expect("stream");
    let mut counter = stream
        .create_consumer(consumer::pull::Config {
            filter_subject: subject.to_string(),
            inactive_threshold: Duration::from_secs(10),
            ..Default::default()
        })
        .await
        .expect("counting consumer");
    counter.info().await.expect("consumer info").num_pending
}

/// The event ids of every event stored on `subject`, each as often as it is stored.
pub async fn stored_event_ids(js: &jetstream::Context, subject: &str) -> Vec<String> {
    let stream = js.get_stream("VIGIL_EVENTS").await.expect("events stream");
    let consumer = stream
        .create_consumer(consumer::pull::Config {
            filter_subject: subject.to_string(),
            inactive_threshold: Duration::from_secs(10),
            ..Default::default()
        })
        .await
        .expect("reading consumer");
    let mut ids = Vec::new();
    let mut messages = consumer
        .fetch()
        .max_messages(10_000)
        .expires(Duration::from_secs(2))
        .messages()
        .await
        .expect("fetch");
    while let Some(Ok(m)) = messages.next().await {
        let json = super::body_json(m.headers.as_ref(), &m.payload);
        ids.push(json["event_id"].as_str().unwrap_or("?").to_string());
    }
    ids
}

/// `$SRV.STATS.vigil` data of the one running instance.
pub async fn stats(client: &async_nats::Client) -> serde_json::Value {
    let reply = client
        .request("$SRV.STATS.vigil", bytes::Bytes::new())
        .await
        .expect("stats");
    let json: serde_json::Value = serde_json::from_slice(&reply.payload).expect("stats json");
    json["endpoints"][0]["data"].clone()
}

/// Asserts that vigil's log has no panic and returns it.
pub fn assert_no_panic(vigil: &Vigil) -> String {
    let log = vigil.log();
    assert!(
        !log.contains("panicked"),
        "vigil panicked:\n{}",
        log.lines()
            .filter(|l| l.contains("panic"))
            .take(20)
            .collect::<Vec<_>>()
            .join("\n")
    );
    log
}

/// A MongoDB and a database name for one test.
pub fn mongo(test: &str) -> (Mongo, String) {
    (Mongo::start(), super::unique_db(test))
}

pub fn set<I: IntoIterator<Item = String>>(ids: I) -> BTreeSet<String> {
    ids.into_iter().collect()
}

/// Ids that appear more than once.
pub fn repeated(ids: &[String]) -> Vec<String> {
    let mut seen = HashSet::new();
    ids.iter().filter(|i| !seen.insert(*i)).cloned().collect()
}
