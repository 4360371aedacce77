//! The JetStream topology vigil owns: the frames work queue, the events stream, the dead
//! letters, and the durable consumers on them. Created or updated at start, so a change of
//! limits in the config reaches the server on the next restart.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream, Context};

use crate::config::{Config, NatsConfig, StreamsConfig};
use crate::contract::subjects;

pub const FRAMES_STREAM: &str = "VIGIL_FRAMES";
pub const EVENTS_STREAM: &str = "VIGIL_EVENTS";
pub const DLQ_STREAM: &str = "VIGIL_DLQ";
/// The durable consumer every `vigil serve` shares for frames.
pub const PROCESSORS: &str = "processors";
/// The durable consumer of the archiver.
pub const ARCHIVER: &str = "archiver";

#[derive(Debug, thiserror::Error)]
pub enum StreamsError {
    #[error("cannot connect to NATS at {url}: {source}")]
    Connect {
        url: String,
        source: async_nats::ConnectError,
    },
    #[error("cannot read NATS credentials {path}: {source}")]
    Credentials {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot create or update stream {stream}: {source}")]
    Stream {
        stream: &'static str,
        source: jetstream::context::CreateStreamError,
    },
    #[error("cannot create consumer {consumer} on {stream}: {source}")]
    Consumer {
        stream: &'static str,
        consumer: &'static str,
        source: jetstream::stream::ConsumerError,
    },
    #[error("cannot open stream {stream}: {source}")]
    GetStream {
        stream: &'static str,
        source: jetstream::context::GetStreamError,
    },
}

/// Connects to NATS as configured.
pub async fn connect(config: &NatsConfig) -> Result<async_nats::Client, StreamsError> {
    let mut options = async_nats::ConnectOptions::new()
        .name(&config.name)
        .connection_timeout(Duration::from_secs(config.connect_timeout_s));
    if let Some(path) = &config.credentials_file {
        options =
            options
                .credentials_file(path)
                .await
                .map_err(|source| StreamsError::Credentials {
                    path: path.display().to_string(),
                    source,
                })?;
    }
    // Without retry_on_initial_connect the first connection must succeed, so the server's
    // info (max_payload) is known when this returns; reconnects later are automatic.
    options
        .connect(&config.url)
        .await
        .map_err(|source| StreamsError::Connect {
            url: config.url.clone(),
            source,
        })
}

fn stream_configs(s: &StreamsConfig, max_payload: usize) -> [stream::Config; 3] {
    let hours = |h: u64| Duration::from_secs(h * 3600);
    let duplicate_window = Duration::from_secs(s.duplicate_window_s);
    [
        stream::Config {
            name: FRAMES_STREAM.into(),
            description: Some("Camera frames waiting for analysis".into()),
            subjects: vec![subjects::FRAMES_ALL.into()],
            retention: stream::RetentionPolicy::WorkQueue,
            max_messages_per_subject: s.frames_max_per_camera,
            discard: stream::DiscardPolicy::Old,
            max_age: Duration::from_secs(s.frames_max_age_s),
            max_message_size: i32::try_from(max_payload).unwrap_or(i32::MAX),
            // The server refuses a duplicate window longer than the stream's max age.
            duplicate_window: duplicate_window.min(Duration::from_secs(s.frames_max_age_s)),
            num_replicas: s.replicas,
            ..Default::default()
        },
        stream::Config {
            name: EVENTS_STREAM.into(),
            description: Some("Risk events, one per analysed frame".into()),
            subjects: vec![subjects::EVENTS_ALL.into()],
            retention: stream::RetentionPolicy::Limits,
            max_age: hours(s.events_max_age_h),
            max_bytes: if s.events_max_bytes == 0 {
                -1
            } else {
                s.events_max_bytes
            },
            duplicate_window,
            num_replicas: s.replicas,
            ..Default::default()
        },
        stream::Config {
            name: DLQ_STREAM.into(),
            description: Some("Frames vigil gave up on, with the reason".into()),
            subjects: vec![subjects::DLQ_ALL.into()],
            retention: stream::RetentionPolicy::Limits,
            max_age: hours(s.dlq_max_age_h),
            max_bytes: s.dlq_max_bytes,
            num_replicas: s.replicas,
            ..Default::default()
        },
    ]
}

/// Creates or updates the three streams.
pub async fn ensure_streams(
    js: &Context,
    config: &Config,
    max_payload: usize,
) -> Result<(), StreamsError> {
    let [frames, events, dlq] = stream_configs(&config.streams, max_payload);
    for (name, cfg) in [
        (FRAMES_STREAM, frames),
        (EVENTS_STREAM, events),
        (DLQ_STREAM, dlq),
    ] {
        js.create_or_update_stream(cfg)
            .await
            .map_err(|source| StreamsError::Stream {
                stream: name,
                source,
            })?;
    }
    Ok(())
}

/// The frames consumer shared by every processor.
pub async fn processors(
    js: &Context,
    config: &Config,
) -> Result<consumer::PullConsumer, StreamsError> {
    let cfg = consumer::pull::Config {
        durable_name: Some(PROCESSORS.into()),
        description: Some("vigil serve: frame processors".into()),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: Duration::from_secs(config.processor.ack_wait_s),
        max_deliver: config.processor.max_deliver,
        max_ack_pending: 10_000,
        ..Default::default()
    };
    durable(js, FRAMES_STREAM, PROCESSORS, cfg).await
}

/// The archiver's consumer on the events stream.
pub async fn archiver(
    js: &Context,
    config: &Config,
) -> Result<consumer::PullConsumer, StreamsError> {
    let cfg = consumer::pull::Config {
        durable_name: Some(ARCHIVER.into()),
        description: Some("vigil archive: events into MongoDB".into()),
        ack_policy: consumer::AckPolicy::Explicit,
        // Long enough to cover a batch insert; in-progress acks extend it during retries.
        ack_wait: Duration::from_secs(60),
        max_deliver: -1,
        max_ack_pending: (config.archive.batch_size * 4).max(1000) as i64,
        ..Default::default()
    };
    durable(js, EVENTS_STREAM, ARCHIVER, cfg).await
}

async fn durable(
    js: &Context,
    stream: &'static str,
    name: &'static str,
    cfg: consumer::pull::Config,
) -> Result<consumer::PullConsumer, StreamsError> {
    let handle = js
        .get_stream(stream)
        .await
        .map_err(|source| StreamsError::GetStream { stream, source })?;
    // create_consumer updates an existing durable when its mutable settings changed.
    handle
        .create_consumer(cfg)
        .await
        .map_err(|source| StreamsError::Consumer {
            stream,
            consumer: name,
            source,
        })
}
