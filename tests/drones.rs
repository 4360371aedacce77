//! Drones and maps, end to end: a frame with a pose through NATS gives objects with WGS84
//! positions (checked against a projection written independently here), zones given in
//! lat/lon apply, `vigil calibrate` finds the mistakes in surveyed points, `vigil bev` draws
//! the ground.

mod common;

use std::process::Command;

use async_nats::jetstream;
use futures::StreamExt;
use vigil::contract::{Encoding, Pose, RiskEvent};

/// A plausible pose for the elevated CCTV frame: 12 m up, looking north-north-east, 35° down.
fn pose() -> Pose {
    Pose {
        lat: 37.5665,
        lon: 126.978,
        alt_m: 12.0,
        heading_deg: 20.0,
        pitch_deg: -35.0,
        roll_deg: 2.0,
        hfov_deg: 60.0,
        error: None,
    }
}

/// The ground point (metres east, north of the camera) of pixel (u, v): rotation matrices
/// composed the textbook way (yaw about up, pitch about the right axis, roll about the view),
/// not vigil's code.
fn independent_ground(p: &Pose, width: f64, height: f64, u: f64, v: f64) -> Option<(f64, f64)> {
    use nalgebra::{Matrix3, Vector3};
    let f = width / 2.0 / (p.hfov_deg.to_radians() / 2.0).tan();
    let c = Vector3::new(u - width / 2.0, v - height / 2.0, f);
    // Camera axes (x right, y down, z forward) looking north, level.
    let base = Vector3::new(c.x, c.z, -c.y);
    let (y, t, r) = (
        (-p.heading_deg).to_radians(),
        p.pitch_deg.to_radians(),
        p.roll_deg.to_radians(),
    );
    let rz = Matrix3::new(y.cos(), -y.sin(), 0.0, y.sin(), y.cos(), 0.0, 0.0, 0.0, 1.0);
    let rx = Matrix3::new(1.0, 0.0, 0.0, 0.0, t.cos(), -t.sin(), 0.0, t.sin(), t.cos());
    let ry = Matrix3::new(r.cos(), 0.0, r.sin(), 0.0, 1.0, 0.0, -r.sin(), 0.0, r.cos());
    let d = rz * rx * ry * base;
    (d.z < 0.0).then(|| {
        let s = -p.alt_m / d.z;
        (s * d.x, s * d.y)
    })
}

/// Metres east, north → lat, lon with the local radii of curvature (independent of map_3d).
fn independent_wgs84(lat0: f64, lon0: f64, east: f64, north: f64) -> (f64, f64) {
    let (a, f) = (6_378_137.0f64, 1.0 / 298.257_223_563);
    let e2 = f * (2.0 - f);
    let (sin, cos) = lat0.to_radians().sin_cos();
    let w = 1.0 - e2 * sin * sin;
    let m = a * (1.0 - e2) / (w * w.sqrt());
    let n = a / w.sqrt();
    (
        lat0 + (north / m).to_degrees(),
        lon0 + (east / (n * cos)).to_degrees(),
    )
}

fn metres_between(a: (f64, f64), b: (f64, f64)) -> f64 {
    let north = (a.0 - b.0).to_radians() * 6_371_000.0;
    let east = (a.1 - b.1).to_radians() * 6_371_000.0 * a.0.to_radians().cos();
    east.hypot(north)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drone_frame_gives_lat_lon_within_the_stated_error() {
    let nats = common::NatsServer::start();
    let mut config = common::config(&nats, &common::unique_db("drone"));
    config.archive.enabled = false;
    config.situations.enabled = false;
    // A zone drawn in lat/lon around the plaza in front of the drone, for every drone.
    let p = pose();
    let corner = |e: f64, n: f64| {
        let (lat, lon) = independent_wgs84(p.lat, p.lon, e, n);
        [lat, lon]
    };
    config.cameras.push(vigil::config::CameraConfig {
        site: "air".into(),
        id: "drone-1".into(),
        name: Some("Drone 1".into()),
        calibration: Vec::new(),
        homography: None,
        origin: None,
        zones: vec![vigil::config::ZoneConfig {
            id: "plaza".into(),
            name: "Plaza".into(),
            kind: "hazard".into(),
            polygon: Vec::new(),
            polygon_geo: vec![
                corner(-15.0, 5.0),
                corner(15.0, 5.0),
                corner(15.0, 40.0),
                corner(-15.0, 40.0),
            ],
        }],
        lines: Vec::new(),
        rules: Default::default(),
        motion: None,
        pixel_error_px: None,
        max_ground_error_m: Some(20.0),
        pose_error: None,
    });
    config.validate().unwrap();
    let (shutdown, running) = common::serve(&config).await;
    let client = nats.client().await;
    let js = jetstream::new(client.clone());
    let mut events = client
        .subscribe("vigil.events.*.air.drone-1")
        .await
        .unwrap();
    client.flush().await.unwrap();

    let mut frame = common::frame("d-1", common::image("vtest_f100.png"));
    frame.pose = Some(p);
    js.publish(
        "vigil.frames.air.drone-1",
        common::encode(&frame, Encoding::Msgpack),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let message = tokio::time::timeout(std::time::Duration::from_secs(120), events.next())
        .await
        .unwrap()
        .unwrap();
    let json = common::body_json(message.headers.as_ref(), &message.payload);
    common::assert_valid("event.schema.json", &json);
    let event: RiskEvent = serde_json::from_value(json).unwrap();
    assert_eq!(event.pose, Some(p), "the event carries the drone's pose");
    let placed: Vec<_> = event.objects.iter().filter(|o| !o.low_score).collect();
    assert!(placed.len() >= 3, "{placed:?}");
    let (w, h) = (f64::from(event.image.width), f64::from(event.image.height));
    let mut worst: f64 = 0.0;
    for o in &placed {
        let (u, v) = (f64::from(o.bbox.x1 + o.bbox.x2) / 2.0, f64::from(o.bbox.y2));
        let (east, north) = independent_ground(&p, w, h, u, v).expect("below the horizon");
        let expected = independent_wgs84(p.lat, p.lon, east, north);
        let geo = o.geo.expect("a drone object has lat/lon");
        let error = geo.error_m.expect("and an error radius");
        let off = metres_between(expected, (geo.lat, geo.lon));
        assert!(
            off <= error.max(0.05),
            "{}: {off} m off, stated {error} m",
            o.label
        );
        // Far points are less certain than near ones.
        worst = worst.max(off);
        let ground = o.ground.unwrap();
        assert!((ground.x_m - east).hypot(ground.y_m - north) < 0.01);
    }
    let in_zone = placed
        .iter()
        .filter(|o| o.zones.contains(&"plaza".to_string()))
        .count();
    assert!(in_zone >= 1, "people on the plaza are in the lat/lon zone");
    assert_eq!(
        event
            .zones
            .iter()
            .find(|z| z.id == "plaza")
            .map(|z| z.occupancy as usize),
        Some(
            placed
                .iter()
                .filter(|o| o.label == "person" && o.zones.contains(&"plaza".to_string()))
                .count()
        )
    );
    let features = vigil::tools::watch::geojson_features(&event);
    assert_eq!(features.len(), placed.len());
    assert_eq!(features[0]["geometry"]["type"], "Point");
    common::report(
        "drone_frame",
        serde_json::json!({ "objects": placed.len(), "worst_offset_m": worst }),
    );

    shutdown.cancel();
    running.await.unwrap();
}

#[test]
fn calibrate_finds_the_mistakes_and_writes_a_camera_entry() {
    // The demo camera's own mapping as the truth.
    let config = vigil::config::Config::from_toml(include_str!("../config/vigil.toml")).unwrap();
    let truth = config.cameras[0].ground_model().unwrap().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut csv = String::from("# surveyed corners\nu,v,x_m,y_m\n");
    let mut k = 0;
    for u in [40.0, 200.0, 384.0, 560.0, 730.0] {
        for v in [230.0, 320.0, 420.0, 540.0] {
            let g = truth.image_to_ground(u, v).unwrap();
            // Centimetres of survey noise; two points typed wrong.
            let noise = 0.01 * f64::from(k % 5) - 0.02;
            let mistake = if k == 3 || k == 11 { 7.5 } else { 0.0 };
            csv += &format!(
                "{u},{v},{:.3},{:.3}\n",
                g.x_m + noise + mistake,
                g.y_m - noise
            );
            k += 1;
        }
    }
    let points = dir.path().join("points.csv");
    std::fs::write(&points, csv).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["--config", "config/vigil.toml", "calibrate"])
        .arg(&points)
        .args(["--site", "demo", "--camera", "vtest2", "--threshold", "0.3"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = String::from_utf8(out.stdout).unwrap();
    assert_eq!(report.matches("OUTLIER").count(), 2, "{report}");
    let snippet = report
        .lines()
        .filter(|l| !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    let fitted = vigil::config::Config::from_toml(&snippet).unwrap();
    let h = fitted.cameras[0].ground_model().unwrap().unwrap();
    assert_eq!(fitted.cameras[0].calibration.len(), 18);
    for (u, v) in [(100.0, 300.0), (600.0, 500.0), (384.0, 250.0)] {
        let (a, b) = (
            truth.image_to_ground(u, v).unwrap(),
            h.image_to_ground(u, v).unwrap(),
        );
        assert!((a.x_m - b.x_m).hypot(a.y_m - b.y_m) < 0.1, "{u},{v}");
    }
}

#[test]
fn bev_draws_the_ground_zones_and_north() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bev.png");
    let run = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args([
            "--config",
            "config/vigil.toml",
            "bev",
            "--camera",
            "demo/vtest",
            "--no-detect",
            "-o",
        ])
        .arg(&out)
        .arg(common::testdata().join("images/vtest_f100.png"))
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let img = image::open(&out).unwrap().into_rgb8();
    assert!(img.width() >= 100 && img.height() >= 100);
    let red = img.pixels().filter(|p| p.0 == [255, 60, 60]).count();
    assert!(red > 100, "zone outlines drawn: {red} pixels");
    // A drone pose for a camera vigil does not know works too.
    let run = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args([
            "--config",
            "config/vigil.toml",
            "bev",
            "--camera",
            "air/unknown",
            "--no-detect",
        ])
        .args(["--pose", "37.5665,126.978,30,0,-60,0,70", "-o"])
        .arg(&out)
        .arg(common::testdata().join("images/vtest_f100.png"))
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
}
