//! Hostile input: a corpus of malformed and hostile frames (bad encodings, wrong types, huge
//! and control-character fields, absurd times and poses, corrupt, truncated and bomb images,
//! bad subjects), each sent as a frame on `vigil.frames…` and as a `vigil.analyze` request to
//! a real `vigil serve` process. Each must get its documented error (a dead letter with its
//! reason, an error reply with its code) or an event; the process never panics, stays inside
//! its memory budget, keeps its replies, records and logs small, and the next good frame is
//! analysed and archived.

mod common;

use std::collections::BTreeMap;
use std::io::Cursor;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer};
use async_nats::HeaderMap;
use futures::StreamExt;
use image::{ImageFormat, RgbImage};
use rmpv::Value;
use vigil::contract::{CONTENT_TYPE, JSON_CONTENT_TYPE};

use common::rig;
use common::servers::{Nats, Vigil};

/// What a case must produce.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    Event,
    Error(&'static str),
    /// Either is acceptable (a corrupt image a decoder may still read).
    EventOr(&'static str),
}

struct Case {
    name: String,
    body: Vec<u8>,
    json: bool,
    /// Published on this subject instead of the test camera's.
    subject: Option<&'static str>,
    /// Only meaningful as a frame on a subject (site/camera checks against the subject).
    frames_only: bool,
    expect: Expect,
}

fn encode_image(img: &image::DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, format).expect("encode");
    out.into_inner()
}

/// A PNG whose header says `w`×`h` while its body is a single pixel (CRC fixed).
fn png_claiming(w: u32, h: u32) -> Vec<u8> {
    let mut png = encode_image(&RgbImage::new(1, 1).into(), ImageFormat::Png);
    png[16..20].copy_from_slice(&w.to_be_bytes());
    png[20..24].copy_from_slice(&h.to_be_bytes());
    let crc = crc32fast::hash(&png[12..29]);
    png[29..33].copy_from_slice(&crc.to_be_bytes());
    png
}

/// A real, tiny PNG of a huge flat image: decoding it costs `w*h*3` bytes.
fn flat_png(w: u32, h: u32) -> Vec<u8> {
    encode_image(&RgbImage::new(w, h).into(), ImageFormat::Png)
}

fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339()
}

/// A valid frame as a MessagePack map, to be spoiled by each case.
fn fields(id: &str, image: &[u8]) -> Vec<(Value, Value)> {
    vec![
        (Value::from("frame_id"), Value::from(id)),
        (Value::from("captured_at"), Value::from(now())),
        (Value::from("image"), Value::Binary(image.to_vec())),
    ]
}

fn set(fields: &mut Vec<(Value, Value)>, key: &str, value: Value) {
    fields.retain(|(k, _)| k.as_str() != Some(key));
    fields.push((Value::from(key), value));
}

fn without(mut fields: Vec<(Value, Value)>, key: &str) -> Vec<(Value, Value)> {
    fields.retain(|(k, _)| k.as_str() != Some(key));
    fields
}

fn mp(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, value).expect("msgpack");
    out
}

fn map(fields: Vec<(Value, Value)>) -> Vec<u8> {
    mp(&Value::Map(fields))
}

fn pose(lat: f64, alt: f64, hfov: Option<f64>) -> Value {
    let mut p = vec![
        (Value::from("lat"), Value::from(lat)),
        (Value::from("lon"), Value::from(127.0)),
        (Value::from("alt_m"), Value::from(alt)),
        (Value::from("heading_deg"), Value::from(90.0)),
        (Value::from("pitch_deg"), Value::from(-45.0)),
    ];
    if let Some(h) = hfov {
        p.push((Value::from("hfov_deg"), Value::from(h)));
    }
    Value::Map(p)
}

fn corpus(good: &[u8]) -> Vec<Case> {
    use Expect::*;
    let hostile_text = "\u{1}\u{7f}\u{85}".repeat(170_000); // ~500 KB of control characters
    let jpeg = good.to_vec();
    let scan = jpeg
        .windows(2)
        .rposition(|w| w == [0xFF, 0xDA])
        .expect("a scan");
    let mut corrupt_scan = jpeg.clone();
    let middle = corrupt_scan.len() / 2;
    corrupt_scan[middle..middle + 400].copy_from_slice(&noise(400, 7));
    let rgb16 = image::DynamicImage::ImageRgb16(image::ImageBuffer::from_pixel(
        64,
        48,
        image::Rgb([65535u16, 0, 30000]),
    ));
    let grey: image::DynamicImage = image::GrayImage::from_pixel(64, 48, image::Luma([90])).into();
    let grey_alpha: image::DynamicImage =
        image::GrayAlphaImage::from_pixel(64, 48, image::LumaA([90, 128])).into();
    let rgba: image::DynamicImage =
        image::RgbaImage::from_pixel(64, 48, image::Rgba([1, 2, 3, 4])).into();
    let mut bmp_huge = encode_image(&RgbImage::new(4, 4).into(), ImageFormat::Bmp);
    bmp_huge[18..22].copy_from_slice(&100_000i32.to_le_bytes());
    bmp_huge[22..26].copy_from_slice(&100_000i32.to_le_bytes());
    let mut deep = Value::Nil;
    for _ in 0..50 {
        deep = Value::Array(vec![deep]);
    }
    let meta = |entries: Vec<(Value, Value)>| Value::Map(entries);

    let mut cases: Vec<(&str, Vec<u8>, Expect)> = vec![
        ("empty body", vec![], Error("bad_request")),
        ("one invalid byte", vec![0xc1], Error("bad_request")),
        ("random bytes", noise(1024, 1), Error("bad_request")),
        ("msgpack nil", mp(&Value::Nil), Error("bad_request")),
        (
            "msgpack integer",
            mp(&Value::from(42)),
            Error("bad_request"),
        ),
        (
            "msgpack string",
            mp(&Value::from("hello")),
            Error("bad_request"),
        ),
        (
            "array instead of map",
            mp(&Value::Array(
                fields("x", good).into_iter().map(|(_, v)| v).collect(),
            )),
            Error("bad_request"),
        ),
        ("empty map", map(vec![]), Error("bad_request")),
        (
            "no image",
            map(without(fields("h", good), "image")),
            Error("bad_request"),
        ),
        (
            "no captured_at",
            map(without(fields("h", good), "captured_at")),
            Error("bad_request"),
        ),
        (
            "no frame_id",
            map(without(fields("h", good), "frame_id")),
            Error("bad_request"),
        ),
        (
            "empty frame_id",
            map(fields("", good)),
            Error("bad_request"),
        ),
        (
            "frame_id of 129 chars",
            map(fields(&"x".repeat(129), good)),
            Error("bad_request"),
        ),
        (
            "frame_id of 500 KB control chars",
            map(fields(&hostile_text, good)),
            Error("bad_request"),
        ),
        (
            "frame_id with a newline",
            map(fields("a\nb", good)),
            Error("bad_request"),
        ),
        (
            "frame_id with a C1 control",
            map(fields("a\u{85}b", good)),
            Error("bad_request"),
        ),
        (
            "trailing bytes",
            [map(fields("h", good)), b"xx".to_vec()].concat(),
            Error("bad_request"),
        ),
    ];
    let spoiled: Vec<(&str, &str, Value, Expect)> = vec![
        (
            "frame_id as a number",
            "frame_id",
            Value::from(7),
            Error("bad_request"),
        ),
        (
            "captured_at year 0",
            "captured_at",
            Value::from("0000-01-01T00:00:00Z"),
            Error("bad_request"),
        ),
        (
            "captured_at 1970",
            "captured_at",
            Value::from("1970-01-01T00:00:00Z"),
            Error("bad_request"),
        ),
        (
            "captured_at 9999",
            "captured_at",
            Value::from("9999-12-31T23:59:59Z"),
            Error("bad_request"),
        ),
        (
            "captured_at not a time",
            "captured_at",
            Value::from("yesterday"),
            Error("bad_request"),
        ),
        (
            "captured_at as a number",
            "captured_at",
            Value::from(1_700_000_000),
            Error("bad_request"),
        ),
        (
            "image as an array of numbers",
            "image",
            Value::Array(good[..64].iter().map(|b| Value::from(*b)).collect()),
            Error("bad_request"),
        ),
        (
            "image as a string",
            "image",
            Value::from("/9j/4AAQ"),
            Error("bad_request"),
        ),
        (
            "image empty",
            "image",
            Value::Binary(vec![]),
            Error("bad_request"),
        ),
        (
            "deeply nested unknown field",
            "extra",
            deep.clone(),
            Error("bad_request"),
        ),
        (
            "unknown small field",
            "extra",
            Value::from("ignored"),
            Event,
        ),
        (
            "camera_id with a dot",
            "camera_id",
            Value::from("cam.1"),
            Error("bad_request"),
        ),
        (
            "site of 65 chars",
            "site",
            Value::from("s".repeat(65)),
            Error("bad_request"),
        ),
        (
            "meta of 65 entries",
            "meta",
            meta(
                (0..65)
                    .map(|i| (Value::from(format!("k{i}")), Value::from("v")))
                    .collect(),
            ),
            Error("bad_request"),
        ),
        (
            "meta value of 17 KB",
            "meta",
            meta(vec![(Value::from("k"), Value::from("v".repeat(17_000)))]),
            Error("bad_request"),
        ),
        (
            "meta key empty",
            "meta",
            meta(vec![(Value::from(""), Value::from("v"))]),
            Error("bad_request"),
        ),
        (
            "meta key with a control char",
            "meta",
            meta(vec![(Value::from("a\u{0}b"), Value::from("v"))]),
            Error("bad_request"),
        ),
        (
            "meta value a number",
            "meta",
            meta(vec![(Value::from("k"), Value::from(3))]),
            Error("bad_request"),
        ),
        (
            "meta as an array",
            "meta",
            Value::Array(vec![Value::from("k")]),
            Error("bad_request"),
        ),
        (
            "pose lat NaN",
            "pose",
            pose(f64::NAN, 50.0, Some(80.0)),
            Error("bad_request"),
        ),
        (
            "pose alt infinite",
            "pose",
            pose(37.0, f64::INFINITY, Some(80.0)),
            Error("bad_request"),
        ),
        (
            "pose lat 91",
            "pose",
            pose(91.0, 50.0, Some(80.0)),
            Error("bad_request"),
        ),
        (
            "pose without hfov",
            "pose",
            pose(37.0, 50.0, None),
            Error("bad_request"),
        ),
        (
            "pose as an array",
            "pose",
            Value::Array(vec![Value::from(37.0)]),
            Error("bad_request"),
        ),
        (
            "pose with 500 KB of control chars",
            "pose",
            Value::Map(vec![(
                Value::from("lat"),
                Value::from(hostile_text.as_str()),
            )]),
            Error("bad_request"),
        ),
        ("pose valid", "pose", pose(37.5, 60.0, Some(84.0)), Event),
        (
            "image of one byte",
            "image",
            Value::Binary(vec![0xff]),
            Error("bad_image"),
        ),
        (
            "image of random bytes",
            "image",
            Value::Binary(noise(10_000, 2)),
            Error("bad_image"),
        ),
        (
            "image of text",
            "image",
            Value::Binary(b"GIF? no, plain text".to_vec()),
            Error("bad_image"),
        ),
        (
            "JPEG cut in half",
            "image",
            Value::Binary(jpeg[..jpeg.len() / 2].to_vec()),
            Error("bad_image"),
        ),
        (
            "JPEG cut after its scan header, end marker appended",
            "image",
            Value::Binary([&jpeg[..scan + 30], &[0xFF, 0xD9][..]].concat()),
            Error("bad_image"),
        ),
        (
            "JPEG headers only",
            "image",
            Value::Binary(jpeg[..scan].to_vec()),
            Error("bad_image"),
        ),
        (
            "JPEG with 400 corrupt scan bytes",
            "image",
            Value::Binary(corrupt_scan),
            EventOr("bad_image"),
        ),
        (
            "PNG cut in half",
            "image",
            Value::Binary({
                let p = encode_image(&rgba, ImageFormat::Png);
                p[..p.len() / 2].to_vec()
            }),
            Error("bad_image"),
        ),
        (
            "PNG claiming 20000x20000",
            "image",
            Value::Binary(png_claiming(20_000, 20_000)),
            Error("too_large"),
        ),
        (
            "PNG claiming 0x0",
            "image",
            Value::Binary(png_claiming(0, 0)),
            Error("bad_image"),
        ),
        (
            "GIF of 0x0",
            "image",
            Value::Binary(b"GIF89a\x00\x00\x00\x00\x00\x00\x00\x3b".to_vec()),
            Error("bad_image"),
        ),
        // The BMP decoder itself refuses such a header: a corrupt image, not a large one.
        (
            "BMP claiming 100000x100000",
            "image",
            Value::Binary(bmp_huge),
            Error("bad_image"),
        ),
        (
            "TIFF header then garbage",
            "image",
            Value::Binary([b"II*\x00".to_vec(), noise(500, 3)].concat()),
            Error("bad_image"),
        ),
        (
            "WebP header then garbage",
            "image",
            Value::Binary([b"RIFF\x10\x00\x00\x00WEBPVP8 ".to_vec(), noise(500, 4)].concat()),
            Error("bad_image"),
        ),
        (
            "PNG 16385x1",
            "image",
            Value::Binary(flat_png(16_385, 1)),
            Error("too_large"),
        ),
        (
            "PNG over max_bytes",
            "image",
            Value::Binary(encode_image(
                &RgbImage::from_raw(300, 300, noise(300 * 300 * 3, 5))
                    .unwrap()
                    .into(),
                ImageFormat::Png,
            )),
            Error("too_large"),
        ),
        (
            "PNG 16-bit RGB",
            "image",
            Value::Binary(encode_image(&rgb16, ImageFormat::Png)),
            Event,
        ),
        (
            "PNG grey",
            "image",
            Value::Binary(encode_image(&grey, ImageFormat::Png)),
            Event,
        ),
        (
            "PNG grey with alpha",
            "image",
            Value::Binary(encode_image(&grey_alpha, ImageFormat::Png)),
            Event,
        ),
        (
            "PNG RGBA",
            "image",
            Value::Binary(encode_image(&rgba, ImageFormat::Png)),
            Event,
        ),
        ("PNG 1x1", "image", Value::Binary(flat_png(1, 1)), Event),
        (
            "GIF",
            "image",
            Value::Binary(encode_image(&rgba, ImageFormat::Gif)),
            Event,
        ),
        (
            "BMP",
            "image",
            Value::Binary(encode_image(&rgba, ImageFormat::Bmp)),
            Event,
        ),
    ];
    for (name, key, value, expect) in spoiled {
        let mut f = fields("h", good);
        set(&mut f, key, value);
        cases.push((name, map(f), expect));
    }
    let mut out: Vec<Case> = cases
        .into_iter()
        .map(|(name, body, expect)| Case {
            name: name.to_string(),
            body,
            json: false,
            subject: None,
            frames_only: false,
            expect,
        })
        .collect();
    let mut mismatch = fields("h", good);
    set(&mut mismatch, "camera_id", Value::from("another"));
    out.push(Case {
        name: "camera_id differs from the subject".into(),
        body: map(mismatch),
        json: false,
        subject: None,
        frames_only: true,
        expect: Error("bad_request"),
    });
    for (name, subject) in [
        (
            "subject with an extra token",
            "vigil.frames.hostile.cam.extra",
        ),
        ("subject without a camera", "vigil.frames.hostile"),
    ] {
        out.push(Case {
            name: name.into(),
            body: map(fields("h", good)),
            json: false,
            subject: Some(subject),
            frames_only: true,
            expect: Error("bad_request"),
        });
    }
    let b64 = |bytes: &[u8]| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(bytes)
    };
    let json_frame = |image: String| {
        serde_json::to_vec(
            &serde_json::json!({"frame_id": "h", "captured_at": now(), "image": image}),
        )
        .unwrap()
    };
    for (name, body, expect) in [
        ("JSON not JSON", b"{not json".to_vec(), Error("bad_request")),
        (
            "JSON array",
            b"[\"h\", \"2026-01-01T00:00:00Z\", \"\"]".to_vec(),
            Error("bad_request"),
        ),
        (
            "JSON image not base64",
            json_frame("%%%not base64%%%".into()),
            Error("bad_request"),
        ),
        (
            "JSON image of garbage",
            json_frame(b64(&noise(300, 6))),
            Error("bad_image"),
        ),
        (
            "JSON with trailing text",
            [json_frame(b64(good)), b" trailing".to_vec()].concat(),
            Error("bad_request"),
        ),
        ("JSON valid", json_frame(b64(good)), Event),
    ] {
        out.push(Case {
            name: name.into(),
            body,
            json: true,
            subject: None,
            frames_only: false,
            expect,
        });
    }
    out
}

/// The frame id a case's event carries: each case gets its own, set into the body.
fn with_id(case: &Case, id: &str) -> Vec<u8> {
    if case.expect == Expect::Error("bad_request") {
        return case.body.clone();
    }
    if case.json {
        let mut v: serde_json::Value = match serde_json::from_slice(&case.body) {
            Ok(v) => v,
            Err(_) => return case.body.clone(),
        };
        v["frame_id"] = serde_json::Value::from(id);
        return serde_json::to_vec(&v).unwrap();
    }
    match rmpv::decode::read_value(&mut &case.body[..]) {
        Ok(Value::Map(mut f)) => {
            set(&mut f, "frame_id", Value::from(id));
            map(f)
        }
        _ => case.body.clone(),
    }
}

fn headers(json: bool) -> HeaderMap {
    let mut h = HeaderMap::new();
    if json {
        h.insert(CONTENT_TYPE, JSON_CONTENT_TYPE);
    }
    h
}

fn outcome_matches(expect: Expect, got: &str) -> bool {
    match expect {
        Expect::Event => got == "event",
        Expect::Error(code) => got == code,
        Expect::EventOr(code) => got == "event" || got == code,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_frames_and_requests_get_their_documented_outcome() {
    let nats = Nats::start();
    let (mongo, db) = rig::mongo("hostile");
    let mut config = rig::fault_config(&nats.url(), &mongo.uri(), &db);
    config.vision.max_bytes = 250_000;
    config.service.max_concurrent = 4;
    config.service.queue_timeout_ms = 120_000;
    let vigil = Vigil::start(&config);
    let client = rig::client(&nats.url()).await;
    vigil.ready(&client).await;
    let js = jetstream::new(client.clone());
    let good = common::image("zidane.jpg");
    let cases = corpus(&good);
    assert!(cases.len() >= 60, "{} cases", cases.len());

    // As frames. Outcomes are matched by stream sequence (dead letters) or frame id (events).
    let mut by_sequence = BTreeMap::new();
    let mut by_frame = BTreeMap::new();
    for (i, case) in cases.iter().enumerate() {
        let id = format!("case-{i:03}");
        let subject = case.subject.unwrap_or("vigil.frames.hostile.cam");
        let ack = js
            .publish_with_headers(subject, headers(case.json), with_id(case, &id).into())
            .await
            .expect("publish")
            .await
            .unwrap_or_else(|e| panic!("{}: not stored: {e}", case.name));
        by_sequence.insert(ack.sequence, i);
        by_frame.insert(id, i);
    }
    let settled = || async {
        let Ok(mut c) = js
            .get_consumer_from_stream::<consumer::pull::Config, _, _>("processors", "VIGIL_FRAMES")
            .await
        else {
            return false;
        };
        c.info()
            .await
            .map(|i| i.num_pending == 0 && i.num_ack_pending == 0)
            .unwrap_or(false)
    };
    common::eventually(
        "every hostile frame settled",
        Duration::from_secs(300),
        settled,
    )
    .await;

    let mut outcomes: BTreeMap<usize, String> = BTreeMap::new();
    let dlq = js.get_stream("VIGIL_DLQ").await.unwrap();
    let reader = dlq
        .create_consumer(consumer::pull::Config::default())
        .await
        .unwrap();
    let mut records = reader
        .fetch()
        .max_messages(1000)
        .expires(Duration::from_secs(2))
        .messages()
        .await
        .unwrap();
    let mut largest_record = 0;
    while let Some(Ok(m)) = records.next().await {
        largest_record = largest_record.max(m.payload.len());
        let json: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        common::assert_valid("dlq.schema.json", &json);
        let seq = json["stream_sequence"].as_u64().expect("a sequence");
        let i = by_sequence[&seq];
        outcomes.insert(i, json["reason"].as_str().unwrap().to_string());
    }
    for id in rig::stored_event_ids(&js, "vigil.events.>").await {
        let frame = id.rsplit('.').next().unwrap().to_string();
        if let Some(i) = by_frame.get(&frame) {
            outcomes.insert(*i, "event".into());
        }
    }
    let mut wrong = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let got = outcomes.get(&i).map(String::as_str).unwrap_or("nothing");
        if !outcome_matches(case.expect, got) {
            wrong.push(format!(
                "frame {:?}: expected {:?}, got {got}",
                case.name, case.expect
            ));
        }
    }

    // As analyze requests, a few at a time.
    let mut largest_reply = 0;
    let mut analysed = 0;
    for chunk in cases
        .iter()
        .enumerate()
        .filter(|(_, c)| !c.frames_only)
        .collect::<Vec<_>>()
        .chunks(6)
    {
        let replies = futures::future::join_all(chunk.iter().map(|(i, case)| {
            let client = client.clone();
            let body = with_id(case, &format!("req-{i:03}"));
            async move {
                let request = async_nats::Request::new()
                    .payload(body.into())
                    .headers(headers(case.json))
                    .timeout(Some(Duration::from_secs(120)));
                client.send_request("vigil.analyze", request).await
            }
        }))
        .await;
        for ((_, case), reply) in chunk.iter().zip(replies) {
            analysed += 1;
            let reply = match reply {
                Ok(r) => r,
                Err(e) => {
                    wrong.push(format!("request {:?}: no reply: {e}", case.name));
                    continue;
                }
            };
            largest_reply = largest_reply.max(reply.payload.len());
            let code = reply
                .headers
                .as_ref()
                .and_then(|h| h.get("Nats-Service-Error"))
                .map(|v| v.to_string());
            let got = code.unwrap_or_else(|| "event".into());
            if got != "event" {
                let json = common::body_json(reply.headers.as_ref(), &reply.payload);
                common::assert_valid("error.schema.json", &json);
            }
            if !outcome_matches(case.expect, &got) {
                wrong.push(format!(
                    "request {:?}: expected {:?}, got {got}",
                    case.name, case.expect
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} wrong outcomes:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    assert!(
        largest_record < 4096,
        "a dead letter of {largest_record} bytes"
    );
    assert!(
        largest_reply < 1_000_000,
        "a reply of {largest_reply} bytes"
    );

    // The next good frame is analysed and archived.
    let archive = rig::archive(&mongo.uri(), &db).await;
    let id = rig::publish_frame(&js, "hostile", "cam", "after-the-storm", &good).await;
    rig::wait_archived(&archive, &rig::set([id]), Duration::from_secs(120)).await;
    let log = rig::assert_no_panic(&vigil);
    assert!(log.len() < 2_000_000, "log of {} bytes", log.len());
    let longest_line = log.lines().map(str::len).max().unwrap_or(0);
    assert!(longest_line < 4096, "a log line of {longest_line} bytes");
    common::report(
        "hostile",
        serde_json::json!({
            "cases": cases.len(),
            "sent_as_frames": cases.len(),
            "sent_as_requests": analysed,
            "wrong": 0,
            "largest_dead_letter_bytes": largest_record,
            "largest_reply_bytes": largest_reply,
            "log_bytes": log.len(),
            "longest_log_line": longest_line,
        }),
    );
}

/// Twelve tiny PNGs that each decode to 6000×6000 pixels (108 MB as RGB), sent at once as
/// frames and as requests: decoding waits for room in `vision.max_decoded_pixels_in_flight`,
/// so memory stays bounded (before the budget, the same burst took a process to 2.9 GB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_images_at_once_stay_inside_the_decode_budget() {
    let nats = Nats::start();
    let (mongo, db) = rig::mongo("budget");
    let mut config = rig::fault_config(&nats.url(), &mongo.uri(), &db);
    config.archive.enabled = false;
    config.service.queue_timeout_ms = 300_000;
    config.processor.max_in_flight = 8;
    let vigil = Vigil::start(&config);
    let client = rig::client(&nats.url()).await;
    vigil.ready(&client).await;
    let js = jetstream::new(client.clone());
    let (_, idle) = vigil.memory_mib().unwrap_or_default();

    let big = flat_png(6000, 6000);
    let started = Instant::now();
    for i in 0..6 {
        rig::publish_frame(&js, "budget", "cam", &format!("big-{i}"), &big).await;
    }
    let replies = futures::future::join_all((0..6).map(|i| {
        let client = client.clone();
        let body = map(fields(&format!("req-{i}"), &big));
        async move {
            let request = async_nats::Request::new()
                .payload(body.into())
                .timeout(Some(Duration::from_secs(300)));
            client.send_request("vigil.analyze", request).await
        }
    }))
    .await;
    for reply in replies {
        let reply = reply.expect("a reply");
        assert!(
            reply
                .headers
                .as_ref()
                .and_then(|h| h.get("Nats-Service-Error"))
                .is_none(),
            "{:?}",
            String::from_utf8_lossy(&reply.payload)
        );
    }
    common::eventually(
        "the big frames analysed",
        Duration::from_secs(300),
        || async { rig::stored(&js, "VIGIL_EVENTS", "vigil.events.*.budget.cam").await == 6 },
    )
    .await;
    let (rss, peak) = vigil.memory_mib().unwrap_or_default();
    rig::assert_no_panic(&vigil);
    // One 6000×6000 decode at a time: RGBA 144 MB + RGB 108 MB at the conversion, on top of
    // what the process holds idle.
    let bound = idle + 450.0;
    assert!(peak < bound, "peak RSS {peak:.0} MiB over {bound:.0} MiB");
    common::report(
        "decode_budget",
        serde_json::json!({
            "images": 12,
            "pixels_each": 36_000_000,
            "budget_pixels": config.vision.max_decoded_pixels_in_flight,
            "rss_idle_mib": idle,
            "rss_peak_mib": peak,
            "rss_after_mib": rss,
            "seconds": started.elapsed().as_secs_f64(),
        }),
    );
}
