//! The NATS service `vigil` with endpoint `analyze` on `vigil.analyze`: one frame in, its risk
//! event or an error reply out, in the request's encoding. Built on the async-nats service
//! API, so `$SRV.PING`, `$SRV.INFO` and `$SRV.STATS` answer too.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::service::{self, ServiceExt};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::archive::ArchiveStats;
use crate::backlog::BacklogStats;
use crate::config::Config;
use crate::contract::{
    Encoding, ErrorBody, ErrorCode, ErrorReply, Frame, RiskEvent, DEFAULT_CAMERA, DEFAULT_SITE,
};
use crate::ingest::ProcessorStats;
use crate::pipeline::{AnalysisError, Origin, Pipeline};

pub const SERVICE_NAME: &str = "vigil";
pub const ENDPOINT: &str = "analyze";

#[derive(Debug, thiserror::Error)]
#[error("cannot start the NATS service: {source}")]
pub struct ServiceError {
    #[source]
    source: async_nats::Error,
}

impl ServiceError {
    fn new(source: async_nats::Error) -> Self {
        ServiceError { source }
    }
}

/// What `$SRV.STATS.vigil` reports besides the endpoint's own counters: whatever runs in
/// this process.
#[derive(Default, Clone)]
pub struct Counters {
    pub processor: Option<Arc<ProcessorStats>>,
    pub backlog: Option<Arc<BacklogStats>>,
    pub archive: Option<Arc<ArchiveStats>>,
    pub situations: Option<Arc<crate::situations::stage::StageStats>>,
    pub snapshots: Option<Arc<crate::snapshots::SnapshotStats>>,
}

impl Counters {
    fn report(&self, analyze: &AnalyzeStats) -> serde_json::Value {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut data = serde_json::json!({
            "analyze_overloaded": load(&analyze.overloaded),
        });
        if let Some(p) = &self.processor {
            data["frames_processed"] = load(&p.processed).into();
            data["frames_dead_lettered"] = load(&p.dead_lettered).into();
            data["frames_retried"] = load(&p.retried).into();
        }
        if let Some(b) = &self.backlog {
            data["frames_dropped"] = load(&b.dropped).into();
            data["frames_waiting"] = load(&b.waiting).into();
        }
        if let Some(a) = &self.archive {
            data["events_archived"] = load(&a.archived).into();
            data["events_refused_by_archive"] = load(&a.refused).into();
            data["mongodb_down"] = (load(&a.mongodb_down) == 1).into();
        }
        if let Some(s) = &self.snapshots {
            data["snapshots_stored"] = load(&s.stored).into();
            data["snapshots_dropped"] = load(&s.dropped).into();
            data["snapshots_failed"] = load(&s.failed).into();
        }
        if let Some(s) = &self.situations {
            data["situation_events_applied"] = load(&s.events_applied).into();
            data["situation_events_late"] = load(&s.events_late).into();
            data["situation_events_duplicate"] = load(&s.events_duplicate).into();
            data["alerts_published"] = load(&s.alerts_published).into();
            data["situation_cameras"] = load(&s.cameras).into();
            data["alert_frames_kept"] = load(&s.frames_kept).into();
            data["alert_frames_not_kept"] = load(&s.frames_not_kept).into();
        }
        data
    }
}

#[derive(Debug, Default)]
struct AnalyzeStats {
    overloaded: AtomicU64,
}

pub struct AnalyzeService {
    service: service::Service,
    endpoint: service::endpoint::Endpoint,
    answering: Arc<Answering>,
}

impl AnalyzeService {
    /// Registers the service; `$SRV.STATS.vigil` also reports the `counters` of whatever
    /// else runs in this process (processor, frames dropped by the stream, archiver).
    pub async fn build(
        client: async_nats::Client,
        config: &Config,
        pipeline: Arc<Pipeline>,
        counters: Counters,
    ) -> Result<AnalyzeService, ServiceError> {
        let analyze_stats = Arc::new(AnalyzeStats::default());
        let reported = analyze_stats.clone();
        let service = client
            .service_builder()
            .description("vigil: risk analysis of camera frames")
            .stats_handler(move |_endpoint, _stats| counters.report(&reported))
            .start(SERVICE_NAME, env!("CARGO_PKG_VERSION"))
            .await
            .map_err(ServiceError::new)?;
        let endpoint = service
            .group("vigil")
            .endpoint(ENDPOINT)
            .await
            .map_err(ServiceError::new)?;
        let max_concurrent = config.service.max_concurrent;
        let answering = Arc::new(Answering {
            stats: analyze_stats,
            pipeline,
            patience: Duration::from_millis(config.service.queue_timeout_ms),
            max_payload: client.server_info().max_payload,
            running: Arc::new(Semaphore::new(max_concurrent)),
            // Requests taken but waiting for a free slot; beyond this they are refused at
            // once, so a flood costs neither memory nor anyone's timeout.
            admitted: Arc::new(Semaphore::new(max_concurrent * 4)),
        });
        Ok(AnalyzeService {
            service,
            endpoint,
            answering,
        })
    }

    /// Answers requests until `shutdown`, then answers those in hand and leaves the service.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let tasks = TaskTracker::new();
        tracing::info!(subject = "vigil.analyze", "analyze service started");
        loop {
            let request = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                r = self.endpoint.next() => match r { Some(r) => r, None => break },
            };
            tasks.spawn(self.answering.clone().take(request));
        }
        if let Err(e) = self.endpoint.stop().await {
            tracing::warn!(error = %e, "cannot unsubscribe the analyze endpoint");
        }
        // Requests already delivered to this instance are answered too: the queue group will
        // not send them elsewhere.
        while let Ok(Some(request)) =
            tokio::time::timeout(Duration::from_millis(200), self.endpoint.next()).await
        {
            tasks.spawn(self.answering.clone().take(request));
        }
        tasks.close();
        tasks.wait().await;
        if let Err(e) = self.service.stop().await {
            tracing::warn!(error = %e, "cannot stop the service cleanly");
        }
        tracing::info!("analyze service stopped");
    }
}

/// What answering a request needs.
struct Answering {
    stats: Arc<AnalyzeStats>,
    pipeline: Arc<Pipeline>,
    patience: Duration,
    max_payload: usize,
    running: Arc<Semaphore>,
    admitted: Arc<Semaphore>,
}

impl Answering {
    /// Admits, waits for a slot (until the request's patience runs out) and answers.
    async fn take(self: Arc<Self>, request: service::Request) {
        let received = Instant::now();
        let encoding = Encoding::of(request.message.headers.as_ref());
        let overloaded = |why: &str| AnalysisError::new(ErrorCode::Overloaded, why);
        let Ok(_admitted) = self.admitted.clone().try_acquire_owned() else {
            return self
                .reply(
                    &request,
                    Err(overloaded("too many analyze requests waiting")),
                    encoding,
                )
                .await;
        };
        let deadline = tokio::time::Instant::from_std(received + self.patience);
        let Ok(Ok(_running)) =
            tokio::time::timeout_at(deadline, self.running.clone().acquire_owned()).await
        else {
            let error = overloaded(&format!("no analysis slot free within {:?}", self.patience));
            return self.reply(&request, Err(error), encoding).await;
        };
        let remaining = self.patience.saturating_sub(received.elapsed());
        let result = analyze(
            &self.pipeline,
            &request.message.payload,
            encoding,
            received,
            remaining,
        )
        .await;
        self.reply(&request, result, encoding).await;
    }

    async fn reply(
        &self,
        request: &service::Request,
        result: Result<RiskEvent, AnalysisError>,
        encoding: Encoding,
    ) {
        if matches!(&result, Err(e) if e.code == ErrorCode::Overloaded) {
            self.stats.overloaded.fetch_add(1, Ordering::Relaxed);
        }
        let encoded = result.and_then(|event| {
            let body = encoding
                .encode(&event)
                .map_err(|e| AnalysisError::new(ErrorCode::Internal, e.to_string()))?;
            if body.len() > self.max_payload {
                let message = format!(
                    "the event is {} bytes, over the server's max_payload of {}",
                    body.len(),
                    self.max_payload
                );
                return Err(AnalysisError::new(ErrorCode::TooLarge, message));
            }
            Ok(body)
        });
        let (body, headers) = match encoded {
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
}

async fn analyze(
    pipeline: &Pipeline,
    payload: &[u8],
    encoding: Encoding,
    received: Instant,
    patience: Duration,
) -> Result<RiskEvent, AnalysisError> {
    let frame: Frame = encoding
        .decode_frame(payload)
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
