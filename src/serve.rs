//! `vigil serve`: connects, sets up the streams, loads the model, then runs the processor,
//! the analyze service and the archiver side by side until shutdown drains them.

use std::sync::Arc;

use async_nats::jetstream;
use tokio_util::sync::CancellationToken;

use crate::archive::{ArchiveError, Archiver};
use crate::config::{Config, ConfigError};
use crate::detect::{DetectError, Detector};
use crate::ingest::Processor;
use crate::pipeline::Pipeline;
use crate::service::{AnalyzeService, ServiceError};
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
}

/// Everything `serve` runs, connected and loaded.
pub struct Server {
    client: async_nats::Client,
    processor: Option<Processor>,
    service: Option<AnalyzeService>,
    archiver: Option<Archiver>,
}

impl Server {
    /// Connects, creates or updates the streams and consumers, loads the model. Fails here,
    /// before any frame is touched, on anything that is misconfigured or missing.
    pub async fn build(config: &Config) -> Result<Server, ServeError> {
        let client = streams::connect(&config.nats).await?;
        let max_payload = client.server_info().max_payload;
        let js = jetstream::new(client.clone());
        streams::ensure_streams(&js, config, max_payload).await?;
        tracing::info!(url = %config.nats.url, max_payload, "connected to NATS; streams ready");

        let pipeline = if config.processor.enabled || config.service.enabled {
            let detector = Detector::load(&config.detector)?;
            Some(Arc::new(Pipeline::new(config, detector)?))
        } else {
            None
        };
        let processor = match (&pipeline, config.processor.enabled) {
            (Some(p), true) => Some(Processor::build(js.clone(), config, p.clone()).await?),
            _ => None,
        };
        let service = match (&pipeline, config.service.enabled) {
            (Some(p), true) => Some(
                AnalyzeService::build(
                    client.clone(),
                    config,
                    p.clone(),
                    processor.as_ref().map(Processor::stats),
                )
                .await?,
            ),
            _ => None,
        };
        let archiver = match config.archive.enabled {
            true => Some(Archiver::build(&js, config).await?),
            false => None,
        };
        Ok(Server {
            client,
            processor,
            service,
            archiver,
        })
    }

    /// Runs until `shutdown`, then drains: no new frames or requests are taken, those in
    /// hand are finished and their events published, and the connection is flushed.
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
        for task in tasks {
            if let Err(e) = task.await {
                tracing::error!(error = %e, "a vigil task panicked");
            }
        }
        if let Err(e) = self.client.flush().await {
            tracing::warn!(error = %e, "final flush failed");
        }
        tracing::info!("vigil stopped");
    }
}
