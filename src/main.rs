//! The `vigil` command line: parses flags, loads the configuration, calls the library.

#![deny(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use vigil::archive::query::{Filter, Kind};
use vigil::archive::replay::Pace;
use vigil::config::Config;
use vigil::contract::Level;
use vigil::tools::{analyze, archive, bev, calibrate, play, status, watch};

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
    /// Only archive events and alerts into MongoDB.
    Archive,
    /// Only the situation stage: tracks, rules and alerts from VIGIL_EVENTS (one instance is
    /// active, others stand by).
    Situations,
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
    /// Play a folder of frames as a camera, print each alert (or event), then summarise.
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
        /// Print one line per event (every frame) instead of one per alert message.
        #[arg(long)]
        events: bool,
    },
    /// Load test: publish a folder of frames as N cameras (fixed rate per camera, or closed
    /// loop), then report throughput, latency percentiles, losses, drops and stage timings.
    Loadgen {
        /// Frames to send (default: the CCTV test sequence, ../shared/testdata/sequences/vtest
        /// or, where that is absent, testdata/sequences/vtest as scripts/setup.sh makes it).
        #[arg(long)]
        frames: Option<PathBuf>,
        #[arg(long, default_value_t = 4)]
        cameras: usize,
        /// Fleet mode: this many of the cameras are quiet (a still view with noise, lighting
        /// drift and a person crossing now and then); the report scores their detections
        /// against the model's own on the same frames.
        #[arg(long, default_value_t = 0)]
        quiet: usize,
        /// Frames per second per camera (fixed schedule; latency from each frame's due time).
        #[arg(long, conflicts_with = "inflight")]
        fps: Option<f64>,
        /// Closed loop: this many frames outstanding across all cameras.
        #[arg(long)]
        inflight: Option<usize>,
        /// Seconds of sending.
        #[arg(long, default_value_t = 30)]
        duration: u64,
        /// Seconds to wait for the last events after sending stops.
        #[arg(long, default_value_t = 10)]
        wait: u64,
        #[arg(long, default_value = "loadgen")]
        site: String,
        /// Write the report as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Draw latency and throughput over time as a PNG here.
        #[arg(long)]
        chart: Option<PathBuf>,
    },
    /// Print risk events as VIGIL_EVENTS stores them (each once, in order).
    Events {
        /// Subject filter, e.g. vigil.events.critical.> or vigil.events.*.seoul-hq.>
        #[arg(default_value = "vigil.events.>")]
        subject: String,
        /// Print each placed object as a GeoJSON feature (one per line) instead.
        #[arg(long)]
        geojson: bool,
        /// Stop after this many events.
        #[arg(long)]
        count: Option<usize>,
    },
    /// Fit a static camera's homography from surveyed points (CSV: u,v and x_m,y_m or
    /// lat,lon), RANSAC for mistakes; prints residuals and the [[cameras]] entry.
    Calibrate {
        points: PathBuf,
        /// A point further than this from the fit is an outlier (metres).
        #[arg(long, default_value_t = 0.5)]
        threshold: f64,
        #[arg(long, default_value = "site")]
        site: String,
        #[arg(long, default_value = "camera")]
        camera: String,
        /// Ground origin for lat/lon points, "LAT,LON" (default: their centroid).
        #[arg(long, value_parser = parse_origin)]
        origin: Option<vigil::geo::GeoOrigin>,
    },
    /// Draw a frame from above: warped onto the ground with the camera's calibration (or a
    /// drone pose), with zones, detections, a 5 m grid and north.
    Bev {
        image: PathBuf,
        /// The camera, SITE/ID, as in [[cameras]].
        #[arg(long)]
        camera: String,
        /// Output image (PNG or JPEG).
        #[arg(short, long)]
        out: PathBuf,
        /// A drone frame's pose: "LAT,LON,ALT_M,HEADING,PITCH,ROLL,HFOV" (degrees, metres).
        #[arg(long, value_parser = parse_pose)]
        pose: Option<vigil::contract::Pose>,
        /// Ground shown beyond the nearest visible point at most (metres).
        #[arg(long, default_value_t = 60.0)]
        range: f64,
        /// Output pixels per metre (default: about 1000 pixels across).
        #[arg(long, default_value_t = 0.0)]
        scale: f64,
        /// Do not run the detector (draw the ground and zones only).
        #[arg(long)]
        no_detect: bool,
    },
    /// Print alerts as VIGIL_ALERTS stores them: new, update, end (each once, in order).
    Alerts {
        /// Subject filter, e.g. vigil.alerts.critical.> or vigil.alerts.*.seoul-hq.>
        #[arg(default_value = "vigil.alerts.>")]
        subject: String,
    },
    /// Find archived events or alerts, newest first (each query served by an index).
    Query {
        #[arg(value_enum)]
        kind: Kind,
        #[command(flatten)]
        filter: FilterArgs,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: i64,
        /// table, json (one per line, as published) or geojson (one feature per object).
        #[arg(long, value_enum, default_value = "table")]
        output: archive::Output,
    },
    /// Republish archived events or alerts in capture order on
    /// <replay_prefix>.<events|alerts>.<level>.<site>.<camera>, with header Vigil-Replay.
    Replay {
        #[arg(value_enum)]
        kind: Kind,
        #[command(flatten)]
        filter: FilterArgs,
        /// Original gaps divided by this (1: real time).
        #[arg(long, default_value_t = 1.0, conflicts_with = "max")]
        speed: f64,
        /// As fast as NATS takes them.
        #[arg(long)]
        max: bool,
    },
    /// Run archived events through the situation stage with another configuration and
    /// report which alerts would appear, disappear or change.
    Reevaluate {
        #[command(flatten)]
        filter: FilterArgs,
        /// The candidate configuration (the one vigil runs with is --config).
        #[arg(long, value_name = "OTHER.toml")]
        with: PathBuf,
        /// Print the comparison as JSON.
        #[arg(long)]
        json: bool,
        /// Also publish the candidate's alert messages on <replay_prefix>.alerts….
        #[arg(long)]
        publish: bool,
        /// Run the candidate's model again on the events' stored frames (snapshots); events
        /// without one are judged as archived.
        #[arg(long)]
        model: bool,
    },
    /// Write an event's snapshot (the frame as the camera sent it, or annotated) to a file;
    /// an alert id gives the snapshot of the event that started it.
    Snapshot {
        /// An event id (or an alert id).
        id: String,
        /// The annotated JPEG instead of the source frame.
        #[arg(long)]
        annotated: bool,
        /// For an alert: the snapshot at its peak.
        #[arg(long)]
        peak: bool,
        #[arg(short, long)]
        out: PathBuf,
    },
    /// Print the resolved configuration (secrets masked) and each camera's calibration error.
    CheckConfig,
    /// Exit 0 when a `vigil serve` answers $SRV.PING.vigil, 1 otherwise (for scripts).
    Ping {
        /// Seconds to wait for an answer.
        #[arg(long, default_value_t = 2)]
        timeout: u64,
    },
    /// Print the counters of every running `vigil serve`, one JSON line each.
    Stats {
        /// Seconds to collect answers.
        #[arg(long, default_value_t = 1)]
        wait: u64,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("Error: {}", report(&error));
            std::process::ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, each cause once: most of vigil's errors already put
/// their source into their own message, and anyhow's "Caused by" list would repeat it.
fn report(error: &anyhow::Error) -> String {
    let mut line = error.to_string();
    for cause in error.chain().skip(1) {
        let cause = cause.to_string();
        if !line.contains(&cause) {
            line = format!("{line}: {cause}");
        }
    }
    line
}

async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Services log their state changes; the interactive commands keep stderr for problems.
    // The NATS client's own INFO lines (one per reconnect attempt) are left to vigil's.
    let default_filter = match cli.command {
        Command::Serve | Command::Archive | Command::Situations => "info,async_nats=warn",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("VIGIL_LOG").unwrap_or_else(|_| EnvFilter::new(default_filter)),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut config =
        Config::load(cli.config.as_deref()).context("cannot load the configuration")?;
    match cli.command {
        Command::Serve => serve(&config).await?,
        Command::Archive => {
            config.processor.enabled = false;
            config.service.enabled = false;
            config.situations.enabled = false;
            config.archive.enabled = true;
            serve(&config).await?
        }
        Command::Situations => {
            config.processor.enabled = false;
            config.service.enabled = false;
            config.archive.enabled = false;
            config.situations.enabled = true;
            serve(&config).await?
        }
        Command::Analyze {
            image,
            site,
            camera,
            json,
            annotate,
            timeout,
        } => {
            let options = analyze::AnalyzeOptions {
                image,
                site,
                camera,
                json,
                annotate,
                timeout: Duration::from_secs(timeout),
            };
            if !analyze::run(&config, &options).await? {
                std::process::exit(2);
            }
        }
        Command::Play {
            frames,
            site,
            camera,
            fps,
            count,
            wait,
            events,
        } => {
            let options = play::PlayOptions {
                frames,
                site,
                camera,
                fps,
                count,
                wait: Duration::from_secs(wait),
                show_events: events,
            };
            let summary = play::play(&config, &options).await?;
            vigil::tools::print_lines(&[format!("\n{summary}")]);
            if summary.events < summary.sent {
                anyhow::bail!(
                    "{} of {} frames produced no event",
                    summary.sent - summary.events,
                    summary.sent
                );
            }
        }
        Command::Events {
            subject,
            geojson,
            count,
        } => {
            let format = match geojson {
                true => watch::EventFormat::GeoJson,
                false => watch::EventFormat::Lines,
            };
            watch::watch(&config, &subject, format, count).await?
        }
        Command::Calibrate {
            points,
            threshold,
            site,
            camera,
            origin,
        } => {
            let options = calibrate::CalibrateOptions {
                points,
                threshold_m: threshold,
                site,
                camera,
                origin,
            };
            print!("{}", calibrate::run(&options)?);
        }
        Command::Bev {
            image,
            camera,
            out,
            pose,
            range,
            scale,
            no_detect,
        } => {
            let (site, id) = camera.split_once('/').context("--camera is SITE/ID")?;
            let options = bev::BevOptions {
                image,
                out,
                site: site.to_string(),
                camera: id.to_string(),
                pose,
                max_range_m: range,
                pixels_per_m: scale,
                detect: !no_detect,
            };
            eprintln!("{}", bev::run(&config, &options).await?);
        }
        Command::Alerts { subject } => watch::watch_alerts(&config, &subject).await?,
        Command::Query {
            kind,
            filter,
            limit,
            output,
        } => {
            archive::query(&config, kind, &filter.filter(), limit, output).await?;
        }
        Command::Replay {
            kind,
            filter,
            speed,
            max,
        } => {
            let pace = match max {
                true => Pace::Max,
                false if speed.is_finite() && speed > 0.0 => Pace::Speed(speed),
                false => anyhow::bail!("--speed must be a number above 0"),
            };
            let mut flags = filter.flags();
            flags.push(match pace {
                Pace::Max => "--max".into(),
                Pace::Speed(s) => format!("--speed {s}"),
            });
            let request = archive::ReplayRequest {
                kind,
                filter: &filter.filter(),
                pace,
                flags,
            };
            let summary = archive::replay(&config, &request, &archive::ctrl_c()).await?;
            if summary.interrupted {
                std::process::exit(130);
            }
        }
        Command::Reevaluate {
            filter,
            with,
            json,
            publish,
            model,
        } => {
            archive::reevaluate(
                &config,
                &with,
                &filter.filter(),
                json,
                publish,
                model,
                &archive::ctrl_c(),
            )
            .await?;
        }
        Command::Snapshot {
            id,
            annotated,
            peak,
            out,
        } => eprintln!(
            "{}",
            archive::snapshot(&config, &id, annotated, peak, &out).await?
        ),
        Command::CheckConfig => print!("{}", config.check_report()),
        Command::Ping { timeout } => {
            if !status::ping(&config, Duration::from_secs(timeout)).await? {
                std::process::exit(1);
            }
        }
        Command::Loadgen {
            frames,
            cameras,
            quiet,
            fps,
            inflight,
            duration,
            wait,
            site,
            json,
            chart,
        } => {
            use vigil::tools::loadgen::{self, Load, LoadOptions};
            let load = match (fps, inflight) {
                (_, Some(0)) => anyhow::bail!("--inflight must be at least 1"),
                (_, Some(k)) => Load::Outstanding(k),
                (Some(f), None) if f.is_finite() && f > 0.0 => Load::Rate(f),
                (Some(_), None) => anyhow::bail!("--fps must be a number above 0"),
                (None, None) => Load::Rate(5.0),
            };
            if cameras == 0 {
                anyhow::bail!("--cameras must be at least 1");
            }
            if quiet > cameras {
                anyhow::bail!("--quiet {quiet} is more than --cameras {cameras}");
            }
            let frames = match frames {
                Some(dir) => dir,
                None => {
                    let dir = vigil::tools::play::sequence_dir();
                    if !dir.is_dir() {
                        anyhow::bail!(
                            "no --frames given, and the CCTV test sequence is not under this \
                             directory (../shared/testdata/sequences/vtest or \
                             testdata/sequences/vtest): run from the checkout, or pass --frames DIR"
                        );
                    }
                    dir
                }
            };
            let options = LoadOptions {
                frames,
                site,
                cameras,
                quiet,
                load,
                duration: Duration::from_secs(duration),
                wait: Duration::from_secs(wait),
                json,
                chart,
                font: config.archive.snapshots.font.clone(),
            };
            let report = loadgen::run(&config, &options).await?;
            vigil::tools::print_text(&report.to_string());
        }
        Command::Stats { wait } => {
            let lines: Vec<String> = status::stats(&config, Duration::from_secs(wait))
                .await?
                .iter()
                .map(ToString::to_string)
                .collect();
            vigil::tools::print_lines(&lines);
        }
    }
    Ok(())
}

/// Filters of the archive commands.
#[derive(clap::Args)]
struct FilterArgs {
    #[arg(long)]
    site: Option<String>,
    /// A camera id (with --site).
    #[arg(long)]
    camera: Option<String>,
    /// This risk level or above (none, low, medium, high, critical); for alerts, the peak.
    #[arg(long, value_parser = parse_level)]
    level: Option<Level>,
    /// RFC 3339 time, or a duration ago: 30m, 2h, 7d.
    #[arg(long, value_parser = parse_time)]
    since: Option<DateTime<Utc>>,
    /// RFC 3339 time, or a duration ago.
    #[arg(long, value_parser = parse_time)]
    until: Option<DateTime<Utc>>,
    /// An object label (person, car…).
    #[arg(long)]
    label: Option<String>,
    /// A zone (or, for alerts, line) id.
    #[arg(long)]
    zone: Option<String>,
    /// Alerts of one rule: intrusion, loitering, crowd, proximity, line_crossing, count.
    #[arg(long)]
    rule: Option<String>,
}

impl FilterArgs {
    fn filter(&self) -> Filter {
        Filter {
            site: self.site.clone(),
            camera: self.camera.clone(),
            level_at_least: self.level,
            since: self.since,
            until: self.until,
            label: self.label.clone(),
            zone: self.zone.clone(),
            rule: self.rule.clone(),
        }
    }

    /// The flags again (all but --since), for the command that resumes a replay.
    fn flags(&self) -> Vec<String> {
        let mut flags = Vec::new();
        let mut add = |name: &str, value: Option<String>| {
            if let Some(v) = value {
                flags.push(format!("--{name} {v}"));
            }
        };
        add("site", self.site.clone());
        add("camera", self.camera.clone());
        add("level", self.level.map(|l| l.as_str().to_string()));
        add(
            "until",
            self.until
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
        );
        add("label", self.label.clone());
        add("zone", self.zone.clone());
        add("rule", self.rule.clone());
        flags
    }
}

fn parse_level(text: &str) -> Result<Level, String> {
    Level::ALL
        .into_iter()
        .find(|l| l.as_str() == text.to_ascii_lowercase())
        .ok_or_else(|| "one of none, low, medium, high, critical".to_string())
}

fn parse_time(text: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    let (number, unit) = text.split_at(text.len().saturating_sub(1));
    let seconds = match unit {
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86_400.0,
        _ => {
            return Err(
                "an RFC 3339 time (2026-11-26T12:00:00Z) or a duration ago (30m, 2h, 7d)".into(),
            )
        }
    };
    let n: f64 = number
        .parse()
        .map_err(|_| format!("{number:?} is not a number"))?;
    let ago = chrono::Duration::milliseconds((n * seconds * 1000.0) as i64);
    Ok(Utc::now() - ago)
}

async fn serve(config: &Config) -> anyhow::Result<()> {
    let shutdown = shutdown_signal();
    let server = match vigil::serve::Server::build(config, &shutdown).await {
        Ok(server) => server,
        Err(vigil::serve::ServeError::Streams(vigil::streams::StreamsError::Cancelled {
            ..
        })) => {
            tracing::info!("stopped before NATS was reachable");
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    server.run(shutdown).await;
    Ok(())
}

fn numbers(text: &str, n: usize) -> Result<Vec<f64>, String> {
    let values: Vec<f64> = text
        .split(',')
        .map(|v| v.trim().parse::<f64>().map_err(|e| format!("{v:?}: {e}")))
        .collect::<Result<_, _>>()?;
    if values.len() != n {
        return Err(format!(
            "expected {n} comma-separated numbers, got {}",
            values.len()
        ));
    }
    Ok(values)
}

fn parse_origin(text: &str) -> Result<vigil::geo::GeoOrigin, String> {
    let v = numbers(text, 2)?;
    let origin = vigil::geo::GeoOrigin {
        lat: v[0],
        lon: v[1],
    };
    origin.validate().map_err(|e| e.to_string())?;
    Ok(origin)
}

fn parse_pose(text: &str) -> Result<vigil::contract::Pose, String> {
    let v = numbers(text, 7)?;
    let pose = vigil::contract::Pose {
        lat: v[0],
        lon: v[1],
        alt_m: v[2],
        heading_deg: v[3],
        pitch_deg: v[4],
        roll_deg: v[5],
        hfov_deg: v[6],
        error: None,
    };
    pose.validate().map_err(|e| e.to_string())?;
    Ok(pose)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_already_in_the_message_is_not_repeated() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let read = vigil::tools::ToolError::Read {
            path: "frames".into(),
            source: io,
        };
        let error = anyhow::Error::new(read).context("loadgen");
        assert_eq!(report(&error), "loadgen: cannot read frames: no such file");
    }

    #[test]
    fn a_cause_not_in_the_message_is_added() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let error = anyhow::Error::new(io).context("cannot load the configuration");
        assert_eq!(
            report(&error),
            "cannot load the configuration: no such file"
        );
    }
}
