//! `vigil loadgen` against a running `vigil serve` (real NATS, the real model): a short fixed-
//! rate run and a short closed-loop run; every frame comes back as an event, the report adds
//! up, and the chart is a real PNG. Kept brief: CI runs it to keep the tool working; its
//! numbers are a report, never a pass mark.

mod common;

use std::process::Command;

/// Runs `vigil loadgen ARGS` (words separated by spaces) with a JSON report and a chart.
fn loadgen(config: &std::path::Path, dir: &std::path::Path, args: &str) -> serde_json::Value {
    let json = dir.join("report.json");
    let chart = dir.join("chart.png");
    let frames = common::testdata().join("sequences/vtest");
    let out = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .arg("--config")
        .arg(config)
        .arg("loadgen")
        .arg("--frames")
        .arg(&frames)
        .args(args.split_whitespace())
        .arg("--json")
        .arg(&json)
        .arg("--chart")
        .arg(&chart)
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{printed}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(printed.contains("latency (ms)"), "{printed}");
    let png = image::open(&chart).unwrap().to_rgb8();
    assert_eq!(png.dimensions(), (960, 640));
    // Text and lines: a good share of the chart is not white.
    let ink = png
        .pixels()
        .filter(|p| p.0.iter().any(|c| *c < 128))
        .count();
    assert!(ink > 2_000, "{ink} dark pixels");
    serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_reports_every_frame_at_a_fixed_rate_and_in_a_closed_loop() {
    let nats = common::NatsServer::start();
    let mut config = common::config(&nats, &common::unique_db("loadgen"));
    config.archive.enabled = false;
    config.situations.enabled = false;
    let (shutdown, running) = common::serve(&config).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vigil.toml");
    std::fs::write(&path, toml::to_string(&config).unwrap()).unwrap();

    // 2 cameras × 2 frames/s × 3 s = 12 frames.
    let fixed = loadgen(
        &path,
        dir.path(),
        "--cameras 2 --fps 2 --duration 3 --wait 60",
    );
    assert_eq!(fixed["sent"], 12, "{fixed}");
    assert_eq!(fixed["events"], 12, "{fixed}");
    assert_eq!(fixed["lost"], 0, "{fixed}");
    assert_eq!(fixed["dropped_by_vigil"], 0, "{fixed}");
    assert!(fixed["latency_ms"]["p50"].as_f64().unwrap() > 0.0);
    assert!(fixed["stages_ms"]["infer"]["p50"].as_f64().unwrap() > 0.0);
    let per_second: u64 = fixed["seconds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["events"].as_u64().unwrap())
        .sum();
    assert_eq!(per_second, 12);

    // Closed loop, 2 outstanding, for 3 s: whatever was sent came back.
    let closed = loadgen(
        &path,
        dir.path(),
        "--cameras 3 --inflight 2 --duration 3 --wait 60",
    );
    let sent = closed["sent"].as_u64().unwrap();
    assert!(sent >= 2, "{closed}");
    assert_eq!(closed["events"].as_u64(), Some(sent), "{closed}");
    assert_eq!(closed["lost"], 0, "{closed}");
    // Fleet mode: one quiet camera of two. Its frames skip the model (gating) and still agree
    // with what the model finds on each of them.
    let fleet = loadgen(
        &path,
        dir.path(),
        "--cameras 2 --quiet 1 --fps 2 --duration 3 --wait 60",
    );
    assert_eq!(fleet["events"], 12, "{fleet}");
    assert_eq!(fleet["quiet_cameras"], 1, "{fleet}");
    let agreement = &fleet["agreement"];
    assert_eq!(agreement["events"], 6, "{fleet}");
    assert!(fleet["model_skipped"].as_u64().unwrap() >= 3, "{fleet}");
    assert!(agreement["f1"].as_f64().unwrap() >= 0.8, "{fleet}");
    common::report(
        "loadgen_smoke",
        serde_json::json!({
            "fixed_rate": fixed["latency_ms"],
            "closed_loop_fps": closed["throughput_fps"],
            "fleet_agreement": fleet["agreement"],
            "fleet_model_skipped": fleet["model_skipped"],
        }),
    );
    shutdown.cancel();
    running.await.unwrap();
}

#[test]
fn without_a_vigil_loadgen_says_so() {
    let nats = common::NatsServer::start();
    let config = common::config(&nats, &common::unique_db("loadgen_none"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vigil.toml");
    std::fs::write(&path, toml::to_string(&config).unwrap()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .arg("--config")
        .arg(&path)
        .args(["loadgen", "--frames"])
        .arg(common::testdata().join("sequences/vtest"))
        .args(["--cameras", "1", "--duration", "1", "--wait", "1"])
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("no vigil on this NATS server") && stderr.contains("vigil serve"),
        "{stderr}"
    );
}
