//! The NATS service `vigil` with endpoint `analyze` on `vigil.analyze`: one frame in, its risk
//! event or an error reply out, in the request's encoding. Built on the async-nats service
//! API, so `$SRV.PING`, `$SRV.INFO` and `$SRV.STATS` answer too.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::service::{self, ServiceExt};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::contract::{
    Encoding, ErrorBody, ErrorCode, ErrorReply, Frame, DEFAULT_CAMERA, DEFAULT_SITE,
};
use crate::ingest::ProcessorStats;
use crate::pipeline::{AnalysisError, Origin, Pipeline};

pub const SERVICE_NAME: &str = "vigil";
pub const ENDPOINT: &str = "analyze";

#[derive(Debug, thiserror::Error)]
#[error("cannot start the NATS service: {0}")]
pub struct ServiceError(String);

pub struct AnalyzeService {
    service: service::Service,
    endpoint: service::endpoint::Endpoint,
    pipeline: Arc<Pipeline>,
    patience: Duration,
    max_concurrent: usize,
}

impl AnalyzeService {
    /// Registers the service; `$SRV.STATS.vigil` also reports the frame processor's counters
    /// when this process runs one.
    pub async fn build(
        client: async_nats::Client,
        config: &Config,
        pipeline: Arc<Pipeline>,
        processor: Option<Arc<ProcessorStats>>,
    ) -> Result<AnalyzeService, ServiceError> {
        let service = client
            .service_builder()
            .description("vigil: risk analysis of camera frames")
            .stats_handler(move |_endpoint, _stats| match &processor {
                Some(p) => serde_json::json!({
                    "frames_processed": p.processed.load(Ordering::Relaxed),
                    "frames_dead_lettered": p.dead_lettered.load(Ordering::Relaxed),
                    "frames_retried": p.retried.load(Ordering::Relaxed),
                }),
                None => serde_json::Value::Null,
            })
            .start(SERVICE_NAME, env!("CARGO_PKG_VERSION"))
            .await
            .map_err(|e| ServiceError(e.to_string()))?;
        let endpoint = service
            .group("vigil")
            .endpoint(ENDPOINT)
            .await
            .map_err(|e| ServiceError(e.to_string()))?;
        Ok(AnalyzeService {
            service,
            endpoint,
            pipeline,
            patience: Duration::from_millis(config.service.queue_timeout_ms),
            max_concurrent: config.service.max_concurrent,
        })
    }

    /// Answers requests until `shutdown`, then answers those in hand and leaves the service.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let permits = Arc::new(Semaphore::new(self.max_concurrent));
        let tasks = TaskTracker::new();
        tracing::info!(subject = "vigil.analyze", "analyze service started");
        loop {
            let permit = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            };
            let request = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                r = self.endpoint.next() => match r { Some(r) => r, None => break },
            };
            let (pipeline, patience) = (self.pipeline.clone(), self.patience);
            tasks.spawn(async move {
                answer(&pipeline, request, patience).await;
                drop(permit);
            });
        }
        if let Err(e) = self.endpoint.stop().await {
            tracing::warn!(error = %e, "cannot unsubscribe the analyze endpoint");
        }
        tasks.close();
        tasks.wait().await;
        if let Err(e) = self.service.stop().await {
            tracing::warn!(error = %e, "cannot stop the service cleanly");
        }
        tracing::info!("analyze service stopped");
    }
}

async fn answer(pipeline: &Pipeline, request: service::Request, patience: Duration) {
    let received = Instant::now();
    let encoding = Encoding::of(request.message.headers.as_ref());
    let result = analyze(
        pipeline,
        &request.message.payload,
        encoding,
        received,
        patience,
    )
    .await;
    let (body, headers) = match result.and_then(|event| {
        encoding
            .encode(&event)
            .map_err(|e| AnalysisError::new(ErrorCode::Internal, e.to_string()))
    }) {
        Ok(body) => (body, encoding.headers()),
        Err(error) => error_reply(&error, encoding),
    };
    if let Err(e) = request
        .respond_with_headers(Ok(Bytes::from(body)), headers)
        .await
    {
        tracing::warn!(error = %e, "cannot send the analyze reply");
    }
}

async fn analyze(
    pipeline: &Pipeline,
    payload: &[u8],
    encoding: Encoding,
    received: Instant,
    patience: Duration,
) -> Result<crate::contract::RiskEvent, AnalysisError> {
    let frame: Frame = encoding
        .decode(payload)
        .map_err(|e| AnalysisError::new(ErrorCode::BadRequest, e.to_string()))?;
    let site = frame
        .site
        .clone()
        .unwrap_or_else(|| DEFAULT_SITE.to_string());
    let camera = frame
        .camera_id
        .clone()
        .unwrap_or_else(|| DEFAULT_CAMERA.to_string());
    let origin = Origin {
        site: &site,
        camera: &camera,
        queued: received.elapsed(),
        patience: Some(patience),
    };
    pipeline.process(frame, origin).await
}

/// The error body and the service error headers, in the request's encoding.
pub fn error_reply(error: &AnalysisError, encoding: Encoding) -> (Vec<u8>, HeaderMap) {
    let reply = ErrorReply {
        error: ErrorBody {
            code: error.code,
            message: error.message.clone(),
        },
    };
    let mut headers = encoding.headers();
    headers.insert(service::NATS_SERVICE_ERROR, error.code.as_str());
    headers.insert(
        service::NATS_SERVICE_ERROR_CODE,
        error.code.status().to_string().as_str(),
    );
    // Encoding a two-string struct cannot fail in either codec; fall back to JSON text anyway.
    let body = encoding
        .encode(&reply)
        .unwrap_or_else(|_| format!("{{\"error\":{{\"code\":\"{}\"}}}}", error.code).into_bytes());
    (body, headers)
}
