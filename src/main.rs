//! The `vigil` command line: parses flags, loads the configuration, calls the library.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use vigil::config::Config;
use vigil::play::{self, AnalyzeReply, PlayOptions};

#[derive(Parser)]
#[command(
    name = "vigil",
    version,
    about = "Frames from drones and CCTV cameras in, risk events for control rooms out"
)]
struct Cli {
    /// Configuration file (default: config/vigil.toml when it exists).
    #[arg(long, global = true, env = "VIGIL_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Process frames, answer vigil.analyze and archive events until SIGINT/SIGTERM.
    Serve,
    /// Only archive events from VIGIL_EVENTS into MongoDB.
    Archive,
    /// Send one image to vigil.analyze and print the reply.
    Analyze {
        image: PathBuf,
        #[arg(long)]
        site: Option<String>,
        #[arg(long)]
        camera: Option<String>,
        /// Print the reply as JSON.
        #[arg(long)]
        json: bool,
        /// Also write the image with the detected boxes drawn on it (red: inside a zone).
        #[arg(long, value_name = "OUT.png|OUT.jpg")]
        annotate: Option<PathBuf>,
        /// Seconds to wait for the reply.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
    /// Play a folder of frames as a camera, print each event, then summarise.
    Play {
        frames: PathBuf,
        #[arg(long, default_value = "demo")]
        site: String,
        #[arg(long, default_value = "vtest")]
        camera: String,
        /// Frames per second (0: as fast as JetStream takes them).
        #[arg(long, default_value_t = 10.0)]
        fps: f64,
        /// Frames to send (default: every file once).
        #[arg(long)]
        count: Option<usize>,
        /// Seconds to wait for the last events and the archive.
        #[arg(long, default_value_t = 60)]
        wait: u64,
    },
    /// Print risk events as they are published.
    Events {
        /// Subject filter, e.g. vigil.events.critical.> or vigil.events.*.seoul-hq.>
        #[arg(default_value = "vigil.events.>")]
        subject: String,
    },
    /// Print the resolved configuration and each camera's homography reprojection error.
    CheckConfig,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Services log their state changes; the interactive commands keep stderr for problems.
    let default_filter = match cli.command {
        Command::Serve | Command::Archive => "info",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("VIGIL_LOG").unwrap_or_else(|_| EnvFilter::new(default_filter)),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = Config::load(cli.config.as_deref()).context("cannot load the configuration")?;
    match cli.command {
        Command::Serve => {
            let server = vigil::serve::Server::build(&config).await?;
            server.run(shutdown_signal()).await;
        }
        Command::Archive => {
            let client = vigil::streams::connect(&config.nats).await?;
            let js = async_nats::jetstream::new(client.clone());
            vigil::streams::ensure_streams(&js, &config, client.server_info().max_payload).await?;
            vigil::archive::Archiver::build(&js, &config)
                .await?
                .run(shutdown_signal())
                .await;
        }
        Command::Analyze {
            image,
            site,
            camera,
            json,
            annotate,
            timeout,
        } => {
            let reply =
                play::analyze(&config, &image, site, camera, Duration::from_secs(timeout)).await?;
            if let (AnalyzeReply::Event(event), Some(out)) = (&reply, &annotate) {
                play::annotate(&std::fs::read(&image)?, event, out)?;
                eprintln!("annotated image written to {}", out.display());
            }
            match (reply, json) {
                (AnalyzeReply::Event(event), true) => {
                    println!("{}", serde_json::to_string_pretty(&event)?)
                }
                (AnalyzeReply::Event(event), false) => print!("{}", play::event_report(&event)),
                (AnalyzeReply::Error(error), true) => {
                    println!("{}", serde_json::to_string_pretty(&error)?);
                    std::process::exit(2);
                }
                (AnalyzeReply::Error(error), false) => {
                    eprintln!("error {}: {}", error.error.code, error.error.message);
                    std::process::exit(2);
                }
            }
        }
        Command::Play {
            frames,
            site,
            camera,
            fps,
            count,
            wait,
        } => {
            let options = PlayOptions {
                frames,
                site,
                camera,
                fps,
                count,
                wait: Duration::from_secs(wait),
            };
            let summary = play::play(&config, &options).await?;
            println!("\n{summary}");
            if summary.events < summary.sent {
                anyhow::bail!(
                    "{} of {} frames produced no event",
                    summary.sent - summary.events,
                    summary.sent
                );
            }
        }
        Command::Events { subject } => play::watch(&config, &subject).await?,
        Command::CheckConfig => check_config(&config),
    }
    Ok(())
}

fn check_config(config: &Config) {
    print!("{}", config.to_toml());
    println!("\n# cameras");
    if config.cameras.is_empty() {
        println!("# (none: every camera is analysed without ground positions)");
    }
    for camera in &config.cameras {
        let report = match camera.ground_model() {
            Ok(Some(h)) if !camera.calibration.is_empty() => {
                let e = h.reprojection_error(&camera.calibration);
                format!(
                    "homography fitted from {} points, reprojection error rms {:.3} m, max {:.3} m",
                    camera.calibration.len(),
                    e.rms_m,
                    e.max_m
                )
            }
            Ok(Some(_)) => "homography given as a matrix".to_string(),
            Ok(None) => "no ground calibration: objects get no ground position".to_string(),
            Err((field, e)) => format!("{field}: {e}"),
        };
        println!(
            "# {}/{} ({}): {report}; {} zone(s)",
            camera.site,
            camera.id,
            camera.display_name(),
            camera.zones.len()
        );
    }
}

/// Cancelled on the first SIGINT or SIGTERM.
fn shutdown_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term = match tokio::signal::unix::signal(
                tokio::signal::unix::SignalKind::terminate(),
            ) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM; only SIGINT stops vigil");
                    let _ = ctrl_c.await;
                    trigger.cancel();
                    return;
                }
            };
            tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("shutdown requested; draining");
        trigger.cancel();
    });
    token
}
