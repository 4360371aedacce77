//! The 300-frame CCTV sequence as risk events of camera demo/vtest (analysed by the real
//! model once, cached under target/tmp), and the test scene built on it: shared by the
//! situation and archive tests.

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use std::path::PathBuf;
use vigil::config::Config;
use vigil::contract::RiskEvent;
use vigil::detect::Detector;
use vigil::pipeline::{Origin, Pipeline};

/// The sequence's frames are 10 per second.
pub const FRAME_MS: i64 = 100;

pub fn start() -> DateTime<Utc> {
    "2026-11-26T12:00:00Z".parse().unwrap()
}

/// The shipped configuration with the demo camera, one detector session.
pub fn config() -> Config {
    let mut config = Config::from_toml(include_str!("../../config/vigil.toml")).unwrap();
    config.detector.sessions = 1;
    config
}

/// Events of the 300 frames as camera demo/vtest, captured 100 ms apart.
pub async fn sequence_events() -> Vec<RiskEvent> {
    let config = config();
    // One cache per model: `auto` picks by CPU, and a checkout's target/ outlives a change of it.
    let model = config.detector.model_choice().path;
    let stem = model
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("model");
    let cache =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("vtest_events-{stem}.msgpack"));
    if let Ok(bytes) = std::fs::read(&cache) {
        if let Ok(events) = rmp_serde::from_slice::<Vec<RiskEvent>>(&bytes) {
            if events.len() == 300 {
                return events;
            }
        }
    }
    let pipeline = Pipeline::new(&config, Detector::load(&config.detector).unwrap()).unwrap();
    let images = super::rig::sequence(300);
    let mut events = Vec::new();
    for (i, image) in images.into_iter().enumerate() {
        let mut frame = super::frame(&format!("f{i:04}"), image);
        frame.captured_at = start() + ChronoDuration::milliseconds(FRAME_MS * i as i64);
        let origin = Origin {
            site: "demo",
            camera: "vtest",
            queued: Default::default(),
            patience: None,
        };
        events.push(pipeline.process(frame, origin).await.unwrap());
    }
    let _ = std::fs::write(&cache, rmp_serde::to_vec_named(&events).unwrap());
    events
}

/// The sequence as a test scene: the demo camera (its taped-off "cordon", restricted; the
/// service road, hazard: loitering after 5 s; its line across the plaza) with a "lot" around
/// the two parked vehicles (restricted), more than 6 people in view for 3 s counted; the parked
/// truck's detection drops out for 3 s (a flicker); then 10 s of an empty scene.
pub fn scene_config() -> Config {
    let mut config = config();
    let camera = &mut config.cameras[0];
    camera.zones.push(vigil::config::ZoneConfig {
        id: "lot".into(),
        name: "Parking lot".into(),
        kind: "restricted".into(),
        polygon: vec![[26.0, 78.0], [46.0, 78.0], [46.0, 98.0], [26.0, 98.0]],
        polygon_geo: Vec::new(),
    });
    assert_eq!(
        camera.lines[0].id, "crossing",
        "the shipped line across the plaza"
    );
    let rules = &mut config.situations.rules;
    rules.intrusion.min_duration_s = 3.0;
    rules.stationary.after_s = 2.0;
    rules.loitering.dwell_s = 5.0;
    rules.count.max = 6;
    rules.count.sustain_s = 3.0;
    config.validate().unwrap();
    config
}

pub fn scene(events: &[RiskEvent], config: &Config) -> Vec<RiskEvent> {
    // The zones are the scene's: re-place the objects with the scene's camera.
    let mut out: Vec<RiskEvent> = events
        .iter()
        .cloned()
        .enumerate()
        .map(|(i, mut e)| {
            if (120..150).contains(&i) {
                e.objects.retain(|o| o.label != "truck");
            }
            rezone(&mut e, config);
            e
        })
        .collect();
    let last = out.last().cloned().unwrap();
    for k in 1..=100 {
        let mut empty = last.clone();
        empty.frame_id = format!("empty{k:03}");
        empty.event_id = format!("demo.vtest.empty{k:03}");
        empty.captured_at = last.captured_at + ChronoDuration::milliseconds(FRAME_MS * k);
        empty.objects.clear();
        for z in &mut empty.zones {
            z.occupancy = 0;
            z.density_per_m2 = 0.0;
        }
        out.push(empty);
    }
    out
}

/// Zone membership of each object and zone reports, as the pipeline would give them with
/// `config`'s zones.
pub fn rezone(event: &mut RiskEvent, config: &Config) {
    let camera = &config.cameras[0];
    let polygons: Vec<(vigil::config::ZoneConfig, vigil::geo::Polygon)> = camera
        .zones
        .iter()
        .map(|z| {
            (
                z.clone(),
                vigil::geo::Polygon::new(z.polygon.clone()).unwrap(),
            )
        })
        .collect();
    for o in &mut event.objects {
        o.zones = match o.ground {
            Some(g) => polygons
                .iter()
                .filter(|(_, p)| {
                    p.contains(vigil::geo::GroundPoint {
                        x_m: g.x_m,
                        y_m: g.y_m,
                    })
                })
                .map(|(z, _)| z.id.clone())
                .collect(),
            None => Vec::new(),
        };
    }
    event.zones = polygons
        .iter()
        .map(|(z, p)| {
            let occupancy = event
                .objects
                .iter()
                .filter(|o| {
                    !o.low_score
                        && o.zones.contains(&z.id)
                        && config.risk.counts_in_zone(&o.label, &z.kind)
                })
                .count() as u32;
            vigil::contract::ZoneReport {
                id: z.id.clone(),
                name: z.name.clone(),
                kind: z.kind.clone(),
                occupancy,
                density_per_m2: f64::from(occupancy) / p.area_m2(),
                area_m2: p.area_m2(),
            }
        })
        .collect();
}
