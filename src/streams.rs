//! The JetStream topology vigil owns: the frames work queue, the events stream, the dead
//! letters, and the durable consumers on them. Created or updated at start, so a change of
//! limits in the config reaches the server on the next restart.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream, Context};
use async_nats::ServerAddr;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, NatsConfig, StreamsConfig};
use crate::contract::subjects;

pub const FRAMES_STREAM: &str = "VIGIL_FRAMES";
pub const EVENTS_STREAM: &str = "VIGIL_EVENTS";
pub const DLQ_STREAM: &str = "VIGIL_DLQ";
pub const ALERTS_STREAM: &str = "VIGIL_ALERTS";
/// The durable consumer every `vigil serve` shares for frames.
pub const PROCESSORS: &str = "processors";
/// The durable consumer of the archiver.
pub const ARCHIVER: &str = "archiver";
/// The archiver's durable consumer on the alerts stream.
pub const ALERT_ARCHIVER: &str = "archiver-alerts";

/// The oldest nats-server vigil runs on, and why.
pub const MIN_SERVER: (u64, u64, u64) = (2, 11, 0);
const MIN_SERVER_NEEDS: &str =
    "priority groups with pinned clients (ADR-42) and multiple filter subjects on one consumer";

#[derive(Debug, thiserror::Error)]
pub enum StreamsError {
    #[error("cannot connect to NATS at {url}: {source}")]
    Connect {
        url: String,
        source: async_nats::ConnectError,
    },
    #[error("nats.url: {url:?} is not a NATS server address: {source}")]
    Url { url: String, source: std::io::Error },
    #[error("cannot read {what} {path}: {source}")]
    Secret {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("nats-server {version} at {url} is too old: vigil needs {}.{}.{} or newer for {MIN_SERVER_NEEDS}", MIN_SERVER.0, MIN_SERVER.1, MIN_SERVER.2)]
    ServerTooOld { url: String, version: String },
    #[error("stopped while waiting for NATS at {url}")]
    Cancelled { url: String },
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
    #[error("cannot read the state of stream {stream}: {source}")]
    Info {
        stream: &'static str,
        source: jetstream::context::RequestError,
    },
    #[error("cannot subscribe to {subject}: {source}")]
    Subscribe {
        subject: String,
        source: async_nats::SubscribeError,
    },
    #[error("cannot flush the NATS connection: {source}")]
    Flush {
        source: async_nats::client::FlushError,
    },
}

/// The server addresses of `nats.url`: one URL or a comma-separated list (a cluster).
pub fn server_addrs(url: &str) -> Result<Vec<ServerAddr>, StreamsError> {
    url.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| {
            u.parse::<ServerAddr>().map_err(|source| StreamsError::Url {
                url: u.to_string(),
                source,
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .and_then(|addrs| match addrs.is_empty() {
            true => Err(StreamsError::Url {
                url: url.to_string(),
                source: std::io::Error::other("no address given"),
            }),
            false => Ok(addrs),
        })
}

/// Connects once, for the command-line tools: a person is waiting and wants an answer.
pub async fn connect(config: &NatsConfig) -> Result<async_nats::Client, StreamsError> {
    let addrs = server_addrs(&config.url)?;
    let client = options(config, None)
        .await?
        .connect(addrs)
        .await
        .map_err(|source| StreamsError::Connect {
            url: config.url.clone(),
            source,
        })?;
    check_version(&client, &config.url)?;
    Ok(client)
}

/// Connects for a service: while no server of `nats.url` answers, tries again (with a
/// warning each time, backing off to 10 s) until one does or `shutdown` is cancelled. Losing
/// the connection later is logged as a warning, and its return with how long it was gone.
pub async fn connect_service(
    config: &NatsConfig,
    shutdown: &CancellationToken,
) -> Result<async_nats::Client, StreamsError> {
    let addrs = server_addrs(&config.url)?;
    let state = Arc::new(ConnectionState::default());
    let mut backoff = Duration::from_millis(500);
    let first_try = Instant::now();
    loop {
        let attempt = options(config, Some(state.clone()))
            .await?
            .connect(addrs.clone());
        let result = tokio::select! {
            _ = shutdown.cancelled() => return Err(StreamsError::Cancelled { url: config.url.clone() }),
            r = attempt => r,
        };
        match result {
            Ok(client) => {
                check_version(&client, &config.url)?;
                if first_try.elapsed() > Duration::from_secs(1) {
                    tracing::info!(url = %config.url, waited_s = first_try.elapsed().as_secs(), "NATS reachable");
                }
                return Ok(client);
            }
            Err(e) => {
                tracing::warn!(url = %config.url, error = %e, retry_in = ?backoff, down_for_s = first_try.elapsed().as_secs(), "NATS unreachable; vigil waits for it");
                tokio::select! {
                    _ = shutdown.cancelled() => return Err(StreamsError::Cancelled { url: config.url.clone() }),
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// When the connection was lost, for the log line that says it is back.
#[derive(Default)]
struct ConnectionState {
    down_since: Mutex<Option<Instant>>,
}

impl ConnectionState {
    fn on_event(&self, event: async_nats::Event) {
        use async_nats::Event;
        let mut down = self.down_since.lock().unwrap_or_else(|p| p.into_inner());
        match event {
            Event::Disconnected => {
                down.get_or_insert_with(Instant::now);
                tracing::warn!("NATS connection lost; reconnecting (frames and requests wait, events in hand are retried)");
            }
            Event::Connected => {
                if let Some(since) = down.take() {
                    tracing::info!(
                        down_for_ms = since.elapsed().as_millis() as u64,
                        "NATS connection back"
                    );
                }
            }
            Event::LameDuckMode => tracing::warn!("the NATS server is entering lame duck mode"),
            Event::SlowConsumer(sid) => tracing::warn!(
                sid,
                "NATS: vigil is a slow consumer; messages were dropped by the client"
            ),
            Event::ServerError(e) => tracing::warn!(error = %e, "NATS server error"),
            // Each failed reconnect attempt: the warning above already said the server is gone.
            Event::ClientError(e) => tracing::debug!(error = %e, "NATS client error"),
            Event::Draining | Event::Closed => tracing::debug!(%event, "NATS connection"),
        }
    }
}

async fn options(
    config: &NatsConfig,
    state: Option<Arc<ConnectionState>>,
) -> Result<async_nats::ConnectOptions, StreamsError> {
    let mut options = async_nats::ConnectOptions::new()
        .name(&config.name)
        .connection_timeout(Duration::from_secs(config.connect_timeout_s))
        .max_reconnects(None);
    if let Some(state) = state {
        options = options.event_callback(move |event| {
            let state = state.clone();
            async move { state.on_event(event) }
        });
    }
    let read = |what: &'static str, path: &Path| {
        std::fs::read_to_string(path)
            .map(|s| s.trim().to_string())
            .map_err(|source| StreamsError::Secret {
                what,
                path: path.display().to_string(),
                source,
            })
    };
    if let Some(user) = &config.user {
        let password = match (&config.password, &config.password_file) {
            (_, Some(path)) => read("nats.password_file", path)?,
            (Some(p), None) => p.clone(),
            (None, None) => String::new(),
        };
        options = options.user_and_password(user.clone(), password);
    }
    if let Some(path) = &config.token_file {
        options = options.token(read("nats.token_file", path)?);
    }
    if let Some(path) = &config.nkey_seed_file {
        options = options.nkey(read("nats.nkey_seed_file", path)?);
    }
    if let Some(path) = &config.credentials_file {
        options = options
            .credentials_file(path)
            .await
            .map_err(|source| StreamsError::Secret {
                what: "nats.credentials_file",
                path: path.display().to_string(),
                source,
            })?;
    }
    if let Some(ca) = &config.tls_ca_file {
        options = options.add_root_certificates(ca.clone());
    }
    if let (Some(cert), Some(key)) = (&config.tls_cert_file, &config.tls_key_file) {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    if config.tls_required {
        options = options.require_tls(true);
    }
    if let Some(prefix) = &config.inbox_prefix {
        options = options.custom_inbox_prefix(prefix);
    }
    Ok(options)
}

/// Refuses a server older than [`MIN_SERVER`], naming what vigil needs from a newer one.
fn check_version(client: &async_nats::Client, url: &str) -> Result<(), StreamsError> {
    let version = client.server_info().version;
    if parse_version(&version).is_some_and(|v| v >= MIN_SERVER) {
        return Ok(());
    }
    Err(StreamsError::ServerTooOld {
        url: url.to_string(),
        version,
    })
}

fn parse_version(version: &str) -> Option<(u64, u64, u64)> {
    let core = version.trim_start_matches('v').split(['-', '+']).next()?;
    let mut parts = core.split('.').map(|p| p.parse::<u64>().ok());
    Some((
        parts.next()??,
        parts.next()??,
        parts.next().flatten().unwrap_or(0),
    ))
}

fn stream_configs(s: &StreamsConfig, max_payload: usize) -> [stream::Config; 4] {
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
            name: ALERTS_STREAM.into(),
            description: Some("Alerts: new, update and end of each situation".into()),
            subjects: vec![subjects::ALERTS_ALL.into()],
            retention: stream::RetentionPolicy::Limits,
            max_age: hours(s.events_max_age_h),
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
    let [frames, events, alerts, dlq] = stream_configs(&config.streams, max_payload);
    for (name, cfg) in [
        (FRAMES_STREAM, frames),
        (EVENTS_STREAM, events),
        (ALERTS_STREAM, alerts),
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
        // Every ack is announced on $JS.EVENT.METRIC…: how vigil tells frames it analysed
        // from frames the stream dropped (see backlog.rs).
        sample_frequency: 100,
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
        // Events of an archiver that died are redelivered after this; while MongoDB is slow
        // or down, in-progress acks keep the batch in hand.
        ack_wait: Duration::from_secs(config.archive.ack_wait_s),
        max_deliver: -1,
        max_ack_pending: (config.archive.batch_size * 4).max(1000) as i64,
        ..Default::default()
    };
    durable(js, EVENTS_STREAM, ARCHIVER, cfg).await
}

/// The situation stage's consumer on the events stream: one pinned client pulls, the others
/// stand by (priority group, ADR-42). A new one starts at the newest event, not at the
/// stream's week of history.
pub async fn situations(
    js: &Context,
    config: &Config,
) -> Result<consumer::PullConsumer, StreamsError> {
    let name = crate::situations::stage::SITUATIONS;
    let cfg = consumer::pull::Config {
        durable_name: Some(name.into()),
        description: Some("vigil situations: tracks, rules, alerts".into()),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: Duration::from_secs(config.situations.ack_wait_s),
        max_deliver: -1,
        max_ack_pending: 10_000,
        deliver_policy: consumer::DeliverPolicy::New,
        priority_groups: vec![name.into()],
        priority_policy: consumer::PriorityPolicy::PinnedClient,
        priority_timeout: Duration::from_secs(config.situations.failover_timeout_s),
        ..Default::default()
    };
    durable(js, EVENTS_STREAM, name, cfg).await
}

/// The archiver's consumer on the alerts stream.
pub async fn alert_archiver(
    js: &Context,
    config: &Config,
) -> Result<consumer::PullConsumer, StreamsError> {
    let cfg = consumer::pull::Config {
        durable_name: Some(ALERT_ARCHIVER.into()),
        description: Some("vigil archive: alerts into MongoDB".into()),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: Duration::from_secs(config.archive.ack_wait_s),
        max_deliver: -1,
        max_ack_pending: 1000,
        ..Default::default()
    };
    durable(js, ALERTS_STREAM, ALERT_ARCHIVER, cfg).await
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_comma_separated_url_list_is_a_cluster() {
        let addrs = server_addrs("nats://a:4222, nats://b:4223,nats://c:4224").unwrap();
        assert_eq!(addrs.len(), 3);
        assert!(server_addrs("nats://127.0.0.1:4222").is_ok());
        assert!(matches!(
            server_addrs("nats://a:notaport"),
            Err(StreamsError::Url { .. })
        ));
        assert!(matches!(server_addrs(" , "), Err(StreamsError::Url { .. })));
    }

    #[test]
    fn server_versions_compare_numerically() {
        assert_eq!(parse_version("2.15.1"), Some((2, 15, 1)));
        assert_eq!(parse_version("v2.11.0-RC.3"), Some((2, 11, 0)));
        assert!(parse_version("2.9.10").unwrap() < MIN_SERVER);
        assert!(parse_version("2.10.27").unwrap() < MIN_SERVER);
        assert!(parse_version("2.11.0").unwrap() >= MIN_SERVER);
        assert!(parse_version("3.0").unwrap() >= MIN_SERVER);
        assert_eq!(parse_version("banana"), None);
    }
}
