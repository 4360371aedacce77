//! `vigil serve`: connects, sets up the streams, loads the model, then runs the processor,
//! the analyze service and the archiver side by side until shutdown drains them.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::archive::{ArchiveError, Archiver};
use crate::config::{Config, ConfigError};
use crate::detect::{DetectError, Detector};
use crate::ingest::Processor;
use crate::pipeline::Pipeline;
use crate::service::{AnalyzeService, Counters, ServiceError};
use crate::situations::stage::SituationStage;
use crate::streams::{self, StreamsError};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Streams(#[from] StreamsError),
    #[error(transparent)]
    Detect(#[from] DetectError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Service(#[from] ServiceError),
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error(transparent)]
    Situations(#[from] crate::situations::stage::StageError),
    #[error("snapshots: {0}")]
    Snapshots(#[from] crate::snapshots::SnapshotError),
}

/// Everything `serve` runs, connected and loaded.
pub struct Server {
    client: async_nats::Client,
    processor: Option<Processor>,
    service: Option<AnalyzeService>,
    archiver: Option<Archiver>,
    situations: Option<SituationStage>,
    snapshots: Option<crate::snapshots::Writer>,
    drain_timeout: Duration,
}

impl Server {
    /// Connects (waiting for NATS until `shutdown`), creates or updates the streams and
    /// consumers, loads the model. Fails here, before any frame is touched, on anything that
    /// is misconfigured or missing. What runs is what the config enables (`processor`,
    /// `service`, `archive`).
    pub async fn build(
        config: &Config,
        shutdown: &CancellationToken,
    ) -> Result<Server, ServeError> {
        let client = streams::connect_service(&config.nats, shutdown).await?;
        let max_payload = client.server_info().max_payload;
        let js = crate::publish::context(client.clone());
        streams::ensure_streams(&js, config, max_payload).await?;
        tracing::info!(
            url = %crate::config::mask_userinfo(&config.nats.url),
            server = %client.server_info().version,
            max_payload,
            "connected to NATS; streams ready"
        );

        let pipeline = if config.processor.enabled || config.service.enabled {
            let detector = Detector::load(&config.detector)?;
            Some(Arc::new(Pipeline::new(config, detector)?))
        } else {
            None
        };
        let (snapshots, snapshot_writer) = match config.processor.enabled {
            true => crate::snapshots::build(config).await?.unzip(),
            false => (None, None),
        };
        let snapshot_stats = snapshots.as_ref().map(crate::snapshots::Snapshots::stats);
        let processor = match (&pipeline, config.processor.enabled) {
            (Some(p), true) => Some(
                Processor::build(js.clone(), config, p.clone())
                    .await?
                    .with_snapshots(snapshots),
            ),
            _ => None,
        };
        let archiver = match config.archive.enabled {
            true => Some(Archiver::build(&js, config).await?),
            false => None,
        };
        let situations = match config.situations.enabled {
            true => Some(SituationStage::build(&js, config).await?),
            false => None,
        };
        let counters = Counters {
            processor: processor.as_ref().map(Processor::stats),
            backlog: processor.as_ref().map(Processor::backlog_stats),
            archive: archiver.as_ref().map(Archiver::stats),
            situations: situations.as_ref().map(SituationStage::stats),
            snapshots: snapshot_stats,
        };
        let service = match (&pipeline, config.service.enabled) {
            (Some(p), true) => {
                Some(AnalyzeService::build(client.clone(), config, p.clone(), counters).await?)
            }
            _ => None,
        };
        Ok(Server {
            client,
            processor,
            service,
            archiver,
            situations,
            snapshots: snapshot_writer,
            drain_timeout: Duration::from_secs(config.serve.drain_timeout_s),
        })
    }

    /// Runs until `shutdown`, then drains: no new frames or requests are taken, those in
    /// hand are finished and their events published, and the connection is flushed. The
    /// drain takes at most `serve.drain_timeout_s`, whatever NATS or MongoDB do; what is
    /// still in hand then is redelivered by JetStream to another instance.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut tasks = Vec::new();
        if let Some(p) = self.processor {
            tasks.push(tokio::spawn(p.run(shutdown.clone())));
        }
        if let Some(s) = self.service {
            tasks.push(tokio::spawn(s.run(shutdown.clone())));
        }
        if let Some(a) = self.archiver {
            tasks.push(tokio::spawn(a.run(shutdown.clone())));
        }
        if let Some(s) = self.situations {
            tasks.push(tokio::spawn(s.run(shutdown.clone())));
        }
        if let Some(w) = self.snapshots {
            tasks.push(tokio::spawn(w.run(shutdown.clone())));
        }
        let aborts: Vec<_> = tasks.iter().map(|t| t.abort_handle()).collect();
        let everything = async {
            for task in tasks {
                if let Err(e) = task.await {
                    if e.is_panic() {
                        tracing::error!(error = %e, "a vigil task panicked");
                    }
                }
            }
            if let Err(e) = self.client.flush().await {
                tracing::warn!(error = %e, "final flush failed");
            }
        };
        tokio::pin!(everything);
        let drained = tokio::select! {
            _ = &mut everything => true,
            _ = async {
                shutdown.cancelled().await;
                tokio::time::sleep(self.drain_timeout).await;
            } => false,
        };
        if !drained {
            for abort in aborts {
                abort.abort();
            }
            tracing::warn!(
                drain_timeout_s = self.drain_timeout.as_secs(),
                "drain did not finish in time; stopping anyway (unacknowledged frames and events are redelivered)"
            );
        }
        tracing::info!("vigil stopped");
    }
}
