//! The agent's heartbeats and its graceful leave: `PUT /v1/internal/berth/{heartbeat,leave}`
//! with the agent's own token, and the node name conflict they can meet.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::http::StatusCode;
use tokio_util::sync::CancellationToken;

use super::AgentShared;
use crate::agent::tokens::TokenKind;
use crate::http::v1::internal::Heartbeat;

fn beat_body(s: &AgentShared) -> Heartbeat {
    Heartbeat {
        node: s.config.node_name.clone(),
        id: s.node_id.clone(),
        address: s.advertise.clone(),
        port: s.port,
    }
}

/// Why the server did not take a heartbeat or leave.
enum Refused {
    /// 409: another live agent has this node name.
    Conflict(String),
    /// Anything else (unreachable, ACLs, ...).
    Failed(String),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Conflict(text) | Self::Failed(text) => f.write_str(text),
        }
    }
}

async fn internal(s: &AgentShared, path: &str) -> Result<(), Refused> {
    let mut req = s
        .proxy
        .http
        .put(format!("{}{path}", s.proxy.server))
        .timeout(Duration::from_secs(5))
        .json(&beat_body(s));
    if let Some(t) = s.proxy.tokens.get(TokenKind::Agent) {
        req = req.header("X-Consul-Token", t);
    }
    let resp = req
        .send()
        .await
        .map_err(|e| Refused::Failed(crate::client::redact_url(e).to_string()))?;
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    let text = format!("{status}: {}", resp.text().await.unwrap_or_default());
    Err(if status == StatusCode::CONFLICT {
        Refused::Conflict(text)
    } else {
        Refused::Failed(text)
    })
}

/// One heartbeat. A name conflict is logged when it starts and when it ends; the agent keeps
/// heartbeating and is let in once the other agent with its node name leaves or fails.
pub(super) async fn heartbeat(s: &AgentShared) {
    match internal(s, "/v1/internal/berth/heartbeat").await {
        Ok(()) => {
            let recovered = s.beat_failing.swap(false, Ordering::Relaxed);
            if recovered {
                tracing::info!("server reachable again; re-syncing at once");
            }
            s.admitted.send_if_modified(|admitted| {
                let notify = !*admitted || recovered;
                *admitted = true;
                notify
            });
            if s.in_conflict.swap(false, Ordering::Relaxed) {
                tracing::info!(node = %s.config.node_name, "node name conflict over; syncing");
            }
        }
        Err(Refused::Conflict(text)) => {
            s.admitted.send_replace(false);
            if !s.in_conflict.swap(true, Ordering::Relaxed) {
                tracing::error!(
                    node = %s.config.node_name,
                    cause = %text,
                    "node name conflict: another live agent uses this node name; not syncing \
                     until it leaves or fails (retrying every heartbeat)"
                );
            }
        }
        Err(e) => {
            s.beat_failing.store(true, Ordering::Relaxed);
            tracing::warn!(cause = %e, "heartbeat failed");
        }
    }
}

pub(super) async fn heartbeat_loop(s: Arc<AgentShared>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(s.config.heartbeat_interval);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => heartbeat(&s).await,
        }
    }
}

pub(super) async fn leave(s: &AgentShared) {
    match internal(s, "/v1/internal/berth/leave").await {
        Ok(()) => tracing::info!("left the cluster"),
        Err(e) => tracing::warn!(cause = %e, "graceful leave failed"),
    }
}
