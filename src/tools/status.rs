//! `vigil ping` and `vigil stats`: what scripts and operators ask a running vigil. Both use
//! the NATS service API (`$SRV.PING.vigil`, `$SRV.STATS.vigil`), which every `vigil serve`
//! with the analyze service answers.

use std::time::Duration;

use futures::StreamExt;

use super::{nats_err, ToolError};
use crate::config::Config;

/// Whether at least one `vigil serve` answers within `timeout`.
pub async fn ping(config: &Config, timeout: Duration) -> Result<bool, ToolError> {
    let client = crate::streams::connect(&config.nats).await?;
    let reply = client.request("$SRV.PING.vigil", bytes::Bytes::new());
    Ok(matches!(
        tokio::time::timeout(timeout, reply).await,
        Ok(Ok(_))
    ))
}

/// The stats of every `vigil serve` that answers within `wait`, one JSON document each.
pub async fn stats(config: &Config, wait: Duration) -> Result<Vec<serde_json::Value>, ToolError> {
    let client = crate::streams::connect(&config.nats).await?;
    stats_on(&client, wait).await
}

/// The same, on a connection the caller already has.
pub async fn stats_on(
    client: &async_nats::Client,
    wait: Duration,
) -> Result<Vec<serde_json::Value>, ToolError> {
    let inbox = client.new_inbox();
    let mut replies = client.subscribe(inbox.clone()).await.map_err(nats_err)?;
    client
        .publish_with_reply("$SRV.STATS.vigil", inbox, bytes::Bytes::new())
        .await
        .map_err(nats_err)?;
    let mut all = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    while let Ok(Some(message)) = tokio::time::timeout_at(deadline, replies.next()).await {
        if let Ok(value) = serde_json::from_slice(&message.payload) {
            all.push(value);
        }
    }
    Ok(all)
}
