//! `vigil serve` end to end against a real nats-server, a real MongoDB-wire server and the
//! real model: frames in, events out, archive, dead letters, analyze, draining shutdown.

mod common;

use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use async_nats::HeaderMap;
use futures::StreamExt;
use mongodb::bson::{doc, Bson, Document};
use vigil::contract::{Encoding, RiskEvent, CONTENT_TYPE, JSON_CONTENT_TYPE};

const WAIT: Duration = Duration::from_secs(120);

async fn next_json(sub: &mut async_nats::Subscriber) -> (String, serde_json::Value) {
    let message = tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("a message in time")
        .expect("subscription open");
    (
        message.subject.to_string(),
        common::body_json(message.headers.as_ref(), &message.payload),
    )
}

/// The frame id of an event message.
fn frame_id_of(message: &async_nats::Message) -> String {
    let json = common::body_json(message.headers.as_ref(), &message.payload);
    json["frame_id"]
        .as_str()
        .expect("an event with a frame_id")
        .to_string()
}

async fn collection(config: &vigil::config::Config) -> mongodb::Collection<Document> {
    vigil::archive::collection(&config.archive)
        .await
        .expect("MongoDB collection")
}

/// Frames consumer fully caught up: nothing waiting, nothing in processing.
async fn frames_settled(js: &jetstream::Context, durable: &str, stream: &str) -> bool {
    let Ok(mut c) = js
        .get_consumer_from_stream::<consumer::pull::Config, _, _>(durable, stream)
        .await
    else {
        return false;
    };
    c.info()
        .await
        .map(|i| i.num_pending == 0 && i.num_ack_pending == 0)
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bus_frame_becomes_an_event_and_an_archived_document() {
    let nats = common::NatsServer::start();
    let config = common::config(&nats, &common::unique_db("bus"));
    let (shutdown, running) = common::serve(&config).await;
    let client = nats.client().await;
    let js = jetstream::new(client.clone());
    let mut events = client.subscribe("vigil.events.>").await.unwrap();
    client.flush().await.unwrap();

    let frame = common::frame("bus-1", common::image("bus.jpg"));
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", "test.cam1.bus-1");
    js.publish_with_headers(
        "vigil.frames.test.cam1",
        headers,
        common::encode(&frame, Encoding::Msgpack),
    )
    .await
    .unwrap()
    .await
    .unwrap();

    let (subject, json) = next_json(&mut events).await;
    common::assert_valid("event.schema.json", &json);
    let event: RiskEvent = serde_json::from_value(json).unwrap();
    assert_eq!(
        (
            event.site.as_str(),
            event.camera_id.as_str(),
            event.frame_id.as_str()
        ),
        ("test", "cam1", "bus-1")
    );
    assert_eq!(
        subject,
        format!("vigil.events.{}.test.cam1", event.risk.level)
    );
    assert_eq!(event.counts.get("bus"), Some(&1), "{:?}", event.counts);
    assert!(
        event.counts.get("person").copied().unwrap_or(0) >= 4,
        "{:?}",
        event.counts
    );
    // The level is the policy's: the score is the sum of class weights (no zones: unknown
    // camera) of the objects that count; low-score detections ride along for the tracker.
    let expected: f64 = event
        .objects
        .iter()
        .filter(|o| !o.low_score)
        .map(|o| config.risk.weight(&o.label))
        .sum();
    assert!(event
        .objects
        .iter()
        .all(|o| o.low_score == (o.confidence < config.detector.confidence)));
    assert_eq!(event.risk.score, expected.round().min(100.0) as u8);
    assert_eq!(event.risk.level, config.risk.level(event.risk.score));
    assert!(event.objects.iter().all(|o| o.ground.is_none()));
    assert_eq!(event.image.width, 810);

    let archive = collection(&config).await;
    let filter = doc! { "_id": &event.event_id };
    common::eventually("the event in MongoDB", WAIT, || {
        let (archive, filter) = (archive.clone(), filter.clone());
        async move { archive.find_one(filter).await.ok().flatten().is_some() }
    })
    .await;
    let stored = archive.find_one(filter).await.unwrap().unwrap();
    assert!(
        matches!(stored.get("captured_at"), Some(Bson::DateTime(_))),
        "{stored:?}"
    );
    assert_eq!(
        stored
            .get_document("risk")
            .unwrap()
            .get_str("level")
            .unwrap(),
        event.risk.level.as_str()
    );
    let stats = client
        .request("$SRV.STATS.vigil", bytes::Bytes::new())
        .await
        .unwrap();
    let stats: serde_json::Value = serde_json::from_slice(&stats.payload).unwrap();
    assert_eq!(
        stats["endpoints"][0]["data"]["frames_processed"], 1,
        "{stats:#}"
    );
    let indexes = archive.list_index_names().await.unwrap();
    assert!(
        vigil::archive::event_indexes()
            .iter()
            .map(|(name, _)| *name)
            .chain([vigil::archive::RETENTION_INDEX])
            .all(|name| indexes.contains(&name.to_string())),
        "{indexes:?}"
    );

    shutdown.cancel();
    running.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_published_twice_gives_one_event_and_one_document() {
    let nats = common::NatsServer::start();
    let config = common::config(&nats, &common::unique_db("dup"));
    let (shutdown, running) = common::serve(&config).await;
    let client = nats.client().await;
    let js = jetstream::new(client.clone());

    // No Nats-Msg-Id: both copies enter the frames stream and both are processed.
    let body = common::encode(
        &common::frame("same-frame", common::image("zidane.jpg")),
        Encoding::Msgpack,
    );
    for _ in 0..2 {
        js.publish("vigil.frames.test.dup", body.clone())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    common::eventually("both copies processed", WAIT, || {
        frames_settled(&js, "processors", "VIGIL_FRAMES")
    })
    .await;
    common::eventually("the archive caught up", WAIT, || {
        frames_settled(&js, "archiver", "VIGIL_EVENTS")
    })
    .await;

    let events = js.get_stream("VIGIL_EVENTS").await.unwrap();
    let mut counter = events
        .create_consumer(consumer::pull::Config {
            filter_subject: "vigil.events.*.test.dup".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        counter.info().await.unwrap().num_pending,
        1,
        "one event in VIGIL_EVENTS"
    );
    let stats = client
        .request("$SRV.STATS.vigil", bytes::Bytes::new())
        .await
        .unwrap();
    let stats: serde_json::Value = serde_json::from_slice(&stats.payload).unwrap();
    assert_eq!(
        stats["endpoints"][0]["data"]["frames_processed"], 2,
        "both copies analysed"
    );
    let archive = collection(&config).await;
    let one = doc! { "camera_id": "dup" };
    assert_eq!(
        archive.count_documents(one.clone()).await.unwrap(),
        1,
        "one document"
    );

    // The same event again after the stream's duplicate window (published without a
    // Nats-Msg-Id): the archive's duplicate key counts as stored, and the archiver moves on.
    let mut copies = counter.fetch().max_messages(1).messages().await.unwrap();
    let event = copies.next().await.unwrap().unwrap();
    js.publish_with_headers(
        event.subject.clone(),
        event.headers.clone().unwrap_or_default(),
        event.payload.clone(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    common::eventually("the archive past the duplicate", WAIT, || {
        frames_settled(&js, "archiver", "VIGIL_EVENTS")
    })
    .await;
    assert_eq!(
        archive.count_documents(one).await.unwrap(),
        1,
        "still one document"
    );

    shutdown.cancel();
    running.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unprocessable_frames_are_dead_lettered_and_the_next_frame_is_processed() {
    let nats = common::NatsServer::start();
    let config = common::config(&nats, &common::unique_db("dlq"));
    let (shutdown, running) = common::serve(&config).await;
    let client = nats.client().await;
    let js = jetstream::new(client.clone());
    let mut dead = client.subscribe("vigil.dlq.>").await.unwrap();
    let mut events = client.subscribe("vigil.events.>").await.unwrap();
    client.flush().await.unwrap();

    let bus = common::image("bus.jpg");
    let truncated = common::frame("truncated", bus[..bus.len() / 3].to_vec());
    let text = common::frame("not-an-image", b"GIF? no, plain text".to_vec());
    let mismatched = vigil::contract::Frame {
        camera_id: Some("other".into()),
        ..common::frame("mismatch", bus.clone())
    };
    let bodies = [
        bytes::Bytes::from_static(b"\x00garbage, not msgpack"),
        common::encode(&truncated, Encoding::Msgpack),
        common::encode(&text, Encoding::Msgpack),
        common::encode(&mismatched, Encoding::Msgpack),
        common::encode(&common::frame("good", bus), Encoding::Msgpack),
    ];
    for body in bodies {
        js.publish("vigil.frames.test.bad", body)
            .await
            .unwrap()
            .await
            .unwrap();
    }

    let mut reasons = Vec::new();
    for _ in 0..4 {
        let (subject, json) = next_json(&mut dead).await;
        assert_eq!(subject, "vigil.dlq.test.bad");
        common::assert_valid("dlq.schema.json", &json);
        reasons.push((
            json["frame_id"].as_str().unwrap_or("-").to_string(),
            json["reason"].as_str().unwrap().to_string(),
        ));
    }
    reasons.sort();
    let expected = [
        ("-", "bad_request"),
        ("mismatch", "bad_request"),
        ("not-an-image", "bad_image"),
        ("truncated", "bad_image"),
    ];
    assert_eq!(
        reasons,
        expected.map(|(a, b)| (a.to_string(), b.to_string()))
    );

    let (_, json) = next_json(&mut events).await;
    assert_eq!(json["frame_id"], "good");
    common::eventually("no frame left behind", WAIT, || {
        frames_settled(&js, "processors", "VIGIL_FRAMES")
    })
    .await;

    shutdown.cancel();
    running.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analyze_replies_with_an_event_or_an_error() {
    let nats = common::NatsServer::start();
    let mut config = common::config(&nats, &common::unique_db("analyze"));
    config.archive.enabled = false;
    config.processor.enabled = false;
    let (shutdown, running) = common::serve(&config).await;
    let client = nats.client().await;
    let request = |body: bytes::Bytes, headers: HeaderMap| {
        let client = client.clone();
        async move {
            let request = async_nats::Request::new()
                .payload(body)
                .headers(headers)
                .timeout(Some(WAIT));
            client
                .send_request("vigil.analyze", request)
                .await
                .expect("a reply")
        }
    };

    // MessagePack in, MessagePack out, for the configured demo camera (ground positions).
    let mut frame = common::frame("a-1", common::image("vtest_f100.png"));
    (frame.site, frame.camera_id) = (Some("demo".into()), Some("vtest".into()));
    let reply = request(common::encode(&frame, Encoding::Msgpack), HeaderMap::new()).await;
    assert!(reply
        .headers
        .as_ref()
        .and_then(|h| h.get("Nats-Service-Error"))
        .is_none());
    let json = common::body_json(reply.headers.as_ref(), &reply.payload);
    common::assert_valid("event.schema.json", &json);
    let event: RiskEvent = serde_json::from_value(json).unwrap();
    assert_eq!(event.event_id, "demo.vtest.a-1");
    assert!(
        event.counts.get("person").copied().unwrap_or(0) >= 3,
        "{:?}",
        event.counts
    );
    assert!(
        event
            .objects
            .iter()
            .any(|o| o.ground.is_some() && o.geo.is_some()),
        "calibrated camera places objects"
    );
    assert_eq!(event.zones.len(), 3);
    // `vigil analyze --annotate` draws the reply's boxes on the frame.
    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("annotated.png");
    vigil::tools::analyze::annotate(&common::image("vtest_f100.png"), &event, &path).unwrap();
    let drawn = image::open(&path).unwrap().into_rgb8();
    for o in &event.objects {
        let edge = drawn.get_pixel(o.bbox.x1 as u32, ((o.bbox.y1 + o.bbox.y2) / 2.0) as u32);
        // Red inside a zone, amber elsewhere; where boxes overlap the later one wins.
        assert!(
            [[255, 200, 0], [255, 40, 40]].contains(&edge.0),
            "left edge of {o:?}: {edge:?}"
        );
    }

    // JSON in, JSON out; site and camera default.
    let mut json_headers = HeaderMap::new();
    json_headers.insert(CONTENT_TYPE, JSON_CONTENT_TYPE);
    let reply = request(
        common::encode(
            &common::frame("a-2", common::image("bus.jpg")),
            Encoding::Json,
        ),
        json_headers.clone(),
    )
    .await;
    assert_eq!(Encoding::of(reply.headers.as_ref()), Encoding::Json);
    let json: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
    common::assert_valid("event.schema.json", &json);
    assert_eq!(json["event_id"], "default.analyze.a-2");

    // A bad image: error body and service error headers, in the request's encoding.
    let reply = request(
        common::encode(
            &common::frame("a-3", b"\x89PNG\r\n\x1a\ntruncated".to_vec()),
            Encoding::Json,
        ),
        json_headers,
    )
    .await;
    let headers = reply.headers.as_ref().expect("error headers");
    assert_eq!(
        headers.get("Nats-Service-Error").map(|v| v.as_str()),
        Some("bad_image")
    );
    assert_eq!(
        headers.get("Nats-Service-Error-Code").map(|v| v.as_str()),
        Some("400")
    );
    let json: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
    common::assert_valid("error.schema.json", &json);
    assert_eq!(json["error"]["code"], "bad_image");

    // Not a frame at all.
    let reply = request(bytes::Bytes::from_static(b"\xc1"), HeaderMap::new()).await;
    let json = common::body_json(reply.headers.as_ref(), &reply.payload);
    common::assert_valid("error.schema.json", &json);
    assert_eq!(json["error"]["code"], "bad_request");

    // The service API answers discovery.
    let ping = client
        .request("$SRV.PING.vigil", bytes::Bytes::new())
        .await
        .unwrap();
    let ping: serde_json::Value = serde_json::from_slice(&ping.payload).unwrap();
    assert_eq!(ping["name"], "vigil");

    shutdown.cancel();
    running.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_frames_in_hand_and_loses_none() {
    let nats = common::NatsServer::start();
    let mut config = common::config(&nats, &common::unique_db("drain"));
    config.archive.enabled = false;
    config.processor.max_in_flight = 3;
    let (shutdown, running) = common::serve(&config).await;
    let client = nats.client().await;
    let js = jetstream::new(client.clone());
    let mut events = client.subscribe("vigil.events.>").await.unwrap();
    client.flush().await.unwrap();

    let sent = 8;
    for i in 0..sent {
        let frame = common::frame(&format!("drain-{i}"), common::image("vtest_f000.png"));
        js.publish(
            "vigil.frames.test.drain",
            common::encode(&frame, Encoding::Msgpack),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    let mut seen = std::collections::BTreeSet::new();
    let (_, first) = next_json(&mut events).await;
    seen.insert(first["frame_id"].as_str().unwrap().to_string());
    shutdown.cancel();
    tokio::time::timeout(WAIT, running)
        .await
        .expect("shutdown completes")
        .unwrap();
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(500), events.next()).await {
        seen.insert(frame_id_of(&m));
    }
    let before_restart = seen.len();
    assert!(
        before_restart < sent,
        "the shutdown came before the backlog was done"
    );
    // Three frames were in processing when the first event came out: the two still running
    // were finished before the processor stopped.
    assert!(before_restart >= 2, "frames in hand finished: {seen:?}");

    // A second processor gets every remaining frame at once: the stopped one finished what it
    // had started and handed back what it had not, so nothing waits for the 60 s ack_wait.
    let (shutdown, running) = common::serve(&config).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while seen.len() < sent {
        let m = tokio::time::timeout_at(deadline, events.next()).await;
        let m = m
            .unwrap_or_else(|_| panic!("frames missing after restart: saw {seen:?}"))
            .unwrap();
        seen.insert(frame_id_of(&m));
    }
    assert_eq!(seen, (0..sent).map(|i| format!("drain-{i}")).collect());
    common::eventually("the frames stream empty", WAIT, || {
        frames_settled(&js, "processors", "VIGIL_FRAMES")
    })
    .await;
    shutdown.cancel();
    running.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analyze_refuses_unknown_cameras_and_oversized_images_as_configured() {
    let nats = common::NatsServer::start();
    let mut config = common::config(&nats, &common::unique_db("refuse"));
    config.archive.enabled = false;
    config.processor.enabled = false;
    config.pipeline.require_known_cameras = true;
    config.vision.max_bytes = 100_000;
    let (shutdown, running) = common::serve(&config).await;
    let client = nats.client().await;
    let ask = |frame: vigil::contract::Frame| {
        let client = client.clone();
        async move {
            let reply = client
                .request("vigil.analyze", common::encode(&frame, Encoding::Msgpack))
                .await
                .unwrap();
            let code = reply
                .headers
                .as_ref()
                .and_then(|h| h.get("Nats-Service-Error-Code"))
                .map(|v| v.to_string());
            (
                code,
                common::body_json(reply.headers.as_ref(), &reply.payload),
            )
        }
    };

    let (status, json) = ask(common::frame("u-1", common::image("vtest_f000.png"))).await;
    assert_eq!(
        (status.as_deref(), &json["error"]["code"]),
        (Some("404"), &serde_json::json!("unknown_camera"))
    );

    let mut known = common::frame("u-2", common::image("bus.jpg"));
    (known.site, known.camera_id) = (Some("demo".into()), Some("vtest".into()));
    let (status, json) = ask(known.clone()).await;
    assert_eq!(
        (status.as_deref(), &json["error"]["code"]),
        (Some("413"), &serde_json::json!("too_large")),
        "bus.jpg is 137 kB"
    );

    known.image = common::image("zidane.jpg").into(); // 50 kB
    let (status, json) = ask(known).await;
    assert_eq!(status, None, "{json}");
    common::assert_valid("event.schema.json", &json);

    shutdown.cancel();
    running.await.unwrap();
}

/// An event MongoDB refuses (here SecantusDB refuses a BSON date in year 0; MongoDB itself
/// would store it) must not hold up the archive: it is split off its batch, recorded on the
/// dead-letter stream and acked, and every event around it is archived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_the_archive_refuses_is_dead_lettered_and_the_archive_carries_on() {
    let nats = common::NatsServer::start();
    let mut config = common::config(&nats, &common::unique_db("poison"));
    config.processor.enabled = false;
    config.service.enabled = false;
    let (shutdown, running) = common::serve(&config).await;
    let client = nats.client().await;
    let js = jetstream::new(client.clone());
    let mut dead = client.subscribe("vigil.dlq.>").await.unwrap();
    client.flush().await.unwrap();

    let template: RiskEvent = serde_json::from_value(serde_json::json!({
        "schema": "vigil.event/1", "event_id": "", "frame_id": "", "site": "poison",
        "camera_id": "cam", "captured_at": "2026-11-26T12:00:00Z",
        "processed_at": "2026-11-26T12:00:01Z", "risk": {"score": 0, "level": "none"},
        "priority": 5, "description": "", "objects": [], "counts": {}, "zones": [],
        "image": {"width": 1, "height": 1}, "model": {"name": "m", "sha256": "0"},
        "timings_ms": {"queue": 0, "decode": 0, "infer": 0, "post": 0, "total": 0}, "meta": {}
    }))
    .unwrap();
    let mut ids = Vec::new();
    for i in 0..9 {
        let mut event = template.clone();
        event.frame_id = format!("f{i}");
        event.event_id = format!("poison.cam.f{i}");
        if i == 4 {
            event.captured_at = "0000-01-01T00:00:00Z".parse().unwrap();
        } else {
            ids.push(event.event_id.clone());
        }
        vigil::publish::publish_event(&js, &event, Encoding::Msgpack)
            .await
            .unwrap();
    }

    let archive = collection(&config).await;
    let good = vigil::archive::ids_filter(&ids);
    common::eventually("the events around the poison archived", WAIT, || {
        let (archive, good) = (archive.clone(), good.clone());
        async move { archive.count_documents(good).await.ok() == Some(8) }
    })
    .await;
    let (subject, record) = next_json(&mut dead).await;
    assert_eq!(subject, "vigil.dlq.poison.cam");
    common::assert_valid("dlq.schema.json", &record);
    assert_eq!(record["stage"], "archive");
    assert_eq!(record["event_id"], "poison.cam.f4");
    common::eventually("the poison acked", WAIT, || {
        frames_settled(&js, "archiver", "VIGIL_EVENTS")
    })
    .await;
    // And the archive keeps going after it.
    let mut later = template.clone();
    later.event_id = "poison.cam.later".into();
    vigil::publish::publish_event(&js, &later, Encoding::Msgpack)
        .await
        .unwrap();
    let filter = doc! { "_id": "poison.cam.later" };
    common::eventually("a later event archived", WAIT, || {
        let (archive, filter) = (archive.clone(), filter.clone());
        async move { archive.find_one(filter).await.ok().flatten().is_some() }
    })
    .await;

    shutdown.cancel();
    running.await.unwrap();
}

/// A plain subscriber sees every copy a publisher sends; the stream keeps one. `vigil events`
/// reads the stream (an ordered consumer), so it prints each event once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_events_watcher_sees_each_stored_event_once() {
    let nats = common::NatsServer::start();
    let mut config = common::config(&nats, &common::unique_db("watch"));
    config.processor.enabled = false;
    config.archive.enabled = false;
    let (shutdown, running) = common::serve(&config).await;
    let client = nats.client().await;
    let js = jetstream::new(client.clone());
    let mut plain = client.subscribe("vigil.events.>").await.unwrap();
    let watched = vigil::tools::watch::events(&js, "vigil.events.>")
        .await
        .unwrap();
    tokio::pin!(watched);

    let body = common::encode(
        &common::frame("w-1", common::image("zidane.jpg")),
        Encoding::Msgpack,
    );
    let reply = client.request("vigil.analyze", body).await.unwrap();
    let event: RiskEvent = Encoding::Msgpack.decode(&reply.payload).unwrap();
    // The same event published three times (a processor retrying its publish), then another.
    for _ in 0..3 {
        vigil::publish::publish_event(&js, &event, Encoding::Msgpack)
            .await
            .unwrap();
    }
    let mut other = event.clone();
    other.event_id = "default.analyze.w-2".into();
    vigil::publish::publish_event(&js, &other, Encoding::Msgpack)
        .await
        .unwrap();

    let mut plain_copies = 0;
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_secs(2), plain.next()).await {
        plain_copies += 1;
    }
    assert_eq!(plain_copies, 4, "a plain subscriber sees every publish");
    let first = watched.next().await.unwrap().unwrap();
    let second = watched.next().await.unwrap().unwrap();
    assert_eq!(
        (first.event_id.as_str(), second.event_id.as_str()),
        ("default.analyze.w-1", "default.analyze.w-2")
    );

    shutdown.cancel();
    running.await.unwrap();
}

/// The archiver's ack wait comes from the configuration (it was a hard-coded 60 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_archivers_ack_wait_is_configured() {
    let nats = common::NatsServer::start();
    let mut config = common::config(&nats, &common::unique_db("ackwait"));
    config.processor.enabled = false;
    config.service.enabled = false;
    config.archive.ack_wait_s = 7;
    let (shutdown, running) = common::serve(&config).await;
    let client = nats.client().await;
    let js = jetstream::new(client);
    let mut archiver = js
        .get_consumer_from_stream::<consumer::pull::Config, _, _>("archiver", "VIGIL_EVENTS")
        .await
        .unwrap();
    let info = archiver.info().await.unwrap();
    assert_eq!(info.config.ack_wait, Duration::from_secs(7));
    assert_eq!(vigil::config::Config::default().archive.ack_wait_s, 10);
    shutdown.cancel();
    running.await.unwrap();
}
