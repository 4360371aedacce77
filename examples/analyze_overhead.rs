//! What `vigil.analyze` adds over calling the pipeline in process: the same frames, one at a
//! time, alternately through a `Pipeline` in this process and as analyze requests to a `vigil
//! serve` (also in this process, only its analyze service on) over a real nats-server. Both
//! have one single-thread session of the default model. An analyze call is timed as an
//! integrator sees it: encoding the request, the round trip through NATS (image out, event
//! back), decoding the reply.
//!
//!     cargo run --release --example analyze_overhead -- NATS_URL [FRAMES]
//!
//! Prints one JSON line: median milliseconds in process and through analyze, the median of the
//! per-frame differences (frames alternate which path goes first, so neither always runs on a
//! warmer cache), and the median of what an analyze call spends outside the service's pipeline
//! (its round trip less the `timings_ms.total` its event reports): the first compares two model
//! runs and carries their noise (several ms on a busy machine), the second does not.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use chrono::Utc;
use tokio_util::sync::CancellationToken;
use vigil::config::Config;
use vigil::contract::{subjects, Encoding, Frame, RiskEvent};
use vigil::pipeline::{Origin, Pipeline};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let url = args.next().context("NATS_URL")?;
    let count: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(100);
    let mut config = Config::from_toml(include_str!("../config/vigil.toml"))?;
    config.nats.url = url;
    config.detector.sessions = 1;
    config.detector.threads_per_session = 1;
    config.processor.enabled = false;
    config.archive.enabled = false;
    config.situations.enabled = false;
    config.service.enabled = true;

    let shutdown = CancellationToken::new();
    let server = vigil::serve::Server::build(&config, &shutdown).await?;
    let serving = tokio::spawn(server.run(shutdown.clone()));
    let pipeline = Pipeline::new(&config, vigil::detect::Detector::load(&config.detector)?)?;
    let client = vigil::streams::connect(&config.nats).await?;

    let dir = vigil::tools::play::sequence_dir();
    let files = vigil::tools::play::frame_files(&dir)?;
    let origin = Origin {
        site: "demo",
        camera: "vtest",
        queued: Duration::ZERO,
        patience: None,
    };
    let frame = |i: usize, bytes: Vec<u8>| Frame {
        frame_id: format!("f{i}"),
        captured_at: Utc::now(),
        image: bytes.into(),
        site: Some("demo".into()),
        camera_id: Some("vtest".into()),
        pose: None,
        meta: Default::default(),
    };
    let analyze = |f: Frame| {
        let client = client.clone();
        async move {
            let started = Instant::now();
            let body = Encoding::Msgpack.encode(&f)?;
            let request = async_nats::Request::new()
                .payload(Bytes::from(body))
                .timeout(Some(Duration::from_secs(30)));
            let reply = client.send_request(subjects::ANALYZE, request).await?;
            let event: RiskEvent = Encoding::of(reply.headers.as_ref()).decode(&reply.payload)?;
            anyhow::Ok((started.elapsed(), event))
        }
    };
    // Warm-up, and the first answer says the service is up.
    for i in 0..5 {
        let bytes = std::fs::read(&files[i % files.len()])?;
        pipeline.process(frame(i, bytes.clone()), origin).await?;
        let mut tries = 0;
        while let Err(e) = analyze(frame(i, bytes.clone())).await {
            tries += 1;
            anyhow::ensure!(tries < 100, "vigil.analyze does not answer: {e}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    let (mut local, mut remote, mut added) = (Vec::new(), Vec::new(), Vec::new());
    let mut outside = Vec::new();
    for i in 0..count {
        let bytes = std::fs::read(&files[i % files.len()])?;
        let in_process = async {
            let started = Instant::now();
            let event = pipeline.process(frame(i, bytes.clone()), origin).await?;
            anyhow::Ok((started.elapsed(), event))
        };
        let (a, b) = if i % 2 == 0 {
            let a = in_process.await?;
            (a, analyze(frame(i, bytes.clone())).await?)
        } else {
            let b = analyze(frame(i, bytes.clone())).await?;
            (in_process.await?, b)
        };
        anyhow::ensure!(
            a.1.objects.len() == b.1.objects.len(),
            "frame {i}: {} objects in process, {} through analyze",
            a.1.objects.len(),
            b.1.objects.len()
        );
        // The service's own pipeline time is in the event: the rest of the round trip is what
        // the request-reply path adds (encoding, NATS both ways, decoding), free of the noise
        // of comparing two model runs.
        outside.push(ms(b.0) - b.1.timings_ms.total);
        let (a, b) = (ms(a.0), ms(b.0));
        local.push(a);
        remote.push(b);
        added.push(b - a);
    }
    shutdown.cancel();
    let _ = serving.await;
    println!(
        "{}",
        serde_json::json!({
            "frames": count,
            "in_process_p50_ms": median(&mut local),
            "analyze_p50_ms": median(&mut remote),
            "added_p50_ms": median(&mut added),
            "outside_pipeline_p50_ms": median(&mut outside),
            "image_bytes": std::fs::metadata(&files[0])?.len(),
        })
    );
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(f64::total_cmp);
    (xs[xs.len() / 2] * 100.0).round() / 100.0
}
