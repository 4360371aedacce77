//! The frames nobody analysed. JetStream drops frames on its own: the oldest of a camera
//! whose backlog is over `streams.frames_max_per_camera`, and any older than
//! `streams.frames_max_age_s`. It counts neither and announces neither, so vigil does the
//! arithmetic: every frame that left VIGIL_FRAMES was either settled by a processor (acked
//! after its event was stored, or terminated after its dead letter) or dropped.
//!
//! ```text
//! dropped = waiting at start + arrived since − settled since − waiting now
//! ```
//!
//! `arrived` comes from the stream's last sequence, `waiting` from its message count, and
//! `settled` from the server itself: the processors' consumer samples every ack
//! (`$JS.EVENT.METRIC.CONSUMER.ACK…`) and the server announces every termination
//! (`$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED…`). The figures are global, for every
//! processor sharing the consumer, counted from when this process started.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::Context;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::streams::{StreamsError, FRAMES_STREAM, PROCESSORS};

/// Global frame counts, for `$SRV.STATS.vigil`.
#[derive(Debug, Default)]
pub struct BacklogStats {
    /// Frames the stream dropped unanalysed since this process started.
    pub dropped: AtomicU64,
    /// Frames waiting in VIGIL_FRAMES at the last count.
    pub waiting: AtomicU64,
}

/// The stream's counters at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamCount {
    /// Messages stored now.
    pub waiting: u64,
    /// Sequence of the last message ever stored.
    pub last_sequence: u64,
}

/// Frames dropped between `start` and `now`, given how many were settled meanwhile.
pub fn dropped(start: StreamCount, now: StreamCount, settled: u64) -> u64 {
    let arrived = now.last_sequence.saturating_sub(start.last_sequence);
    (start.waiting + arrived).saturating_sub(settled + now.waiting)
}

pub struct Backlog {
    inner: Option<Ledger>,
    stats: Arc<BacklogStats>,
}

struct Ledger {
    js: Context,
    acks: async_nats::Subscriber,
    terminations: async_nats::Subscriber,
    start: StreamCount,
    interval: Duration,
}

impl Backlog {
    /// Subscribes to the settlement announcements first, then reads the stream: a frame
    /// settled in between is counted as settled and not as dropped.
    pub async fn build(js: &Context, config: &Config) -> Result<Backlog, StreamsError> {
        let client = js.client();
        let subscribe = |subject: String| {
            let client = client.clone();
            async move {
                client
                    .subscribe(subject.clone())
                    .await
                    .map_err(|source| StreamsError::Subscribe { subject, source })
            }
        };
        let acks = subscribe(format!(
            "$JS.EVENT.METRIC.CONSUMER.ACK.{FRAMES_STREAM}.{PROCESSORS}"
        ))
        .await?;
        let terminations = subscribe(format!(
            "$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.{FRAMES_STREAM}.{PROCESSORS}"
        ))
        .await?;
        client
            .flush()
            .await
            .map_err(|source| StreamsError::Flush { source })?;
        let start = count(js).await?;
        let stats = Arc::new(BacklogStats::default());
        stats.waiting.store(start.waiting, Ordering::Relaxed);
        Ok(Backlog {
            inner: Some(Ledger {
                js: js.clone(),
                acks,
                terminations,
                start,
                interval: Duration::from_secs(config.processor.stats_interval_s),
            }),
            stats,
        })
    }

    /// A backlog that counts nothing (what is left after `run` took the ledger).
    pub fn detached() -> Backlog {
        Backlog {
            inner: None,
            stats: Arc::new(BacklogStats::default()),
        }
    }

    pub fn stats(&self) -> Arc<BacklogStats> {
        self.stats.clone()
    }

    /// Counts until `shutdown`; logs a warning for every interval in which frames were dropped.
    pub async fn run(self, shutdown: CancellationToken) {
        let Some(mut ledger) = self.inner else { return };
        let stats = self.stats;
        let mut settled = 0u64;
        let mut reported = 0u64;
        let mut tick = tokio::time::interval(ledger.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(_) = ledger.acks.next() => settled += 1,
                Some(_) = ledger.terminations.next() => settled += 1,
                _ = tick.tick() => {
                    let now = match count(&ledger.js).await {
                        Ok(now) => now,
                        Err(e) => {
                            tracing::debug!(error = %e, "cannot read the frames stream's counters");
                            continue;
                        }
                    };
                    // Announcements of frames settled before that read may still be on their
                    // way: take them in before comparing.
                    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(50), async {
                        tokio::select! {
                            Some(m) = ledger.acks.next() => Some(m),
                            Some(m) = ledger.terminations.next() => Some(m),
                            else => None,
                        }
                    }).await {
                        settled += 1;
                    }
                    let total = dropped(ledger.start, now, settled);
                    stats.dropped.store(total, Ordering::Relaxed);
                    stats.waiting.store(now.waiting, Ordering::Relaxed);
                    if total > reported {
                        tracing::warn!(
                            dropped = total - reported,
                            since_start = total,
                            waiting = now.waiting,
                            "frames dropped unanalysed by {FRAMES_STREAM} (a camera's backlog over streams.frames_max_per_camera, or older than streams.frames_max_age_s)"
                        );
                        reported = total;
                    }
                }
            }
        }
    }
}

async fn count(js: &Context) -> Result<StreamCount, StreamsError> {
    let mut stream =
        js.get_stream(FRAMES_STREAM)
            .await
            .map_err(|source| StreamsError::GetStream {
                stream: FRAMES_STREAM,
                source,
            })?;
    let info = stream.info().await.map_err(|source| StreamsError::Info {
        stream: FRAMES_STREAM,
        source,
    })?;
    Ok(StreamCount {
        waiting: info.state.messages,
        last_sequence: info.state.last_sequence,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_are_what_left_the_stream_unsettled() {
        let start = StreamCount {
            waiting: 5,
            last_sequence: 100,
        };
        // 20 arrived, 18 settled, 4 wait: 5 + 20 − 18 − 4 = 3 dropped.
        let now = StreamCount {
            waiting: 4,
            last_sequence: 120,
        };
        assert_eq!(dropped(start, now, 18), 3);
        // Nothing arrived and everything waiting was settled: none dropped.
        assert_eq!(
            dropped(
                start,
                StreamCount {
                    waiting: 0,
                    last_sequence: 100
                },
                5
            ),
            0
        );
        // Announcements that arrive early never make the count negative.
        assert_eq!(dropped(start, start, 7), 0);
    }
}
