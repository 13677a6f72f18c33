//! Optional webhook to the main system: every state change is POSTed as JSON, signed with
//! `X-Berth-Signature: sha256=<hex HMAC-SHA256 of the body>`, from a background task that retries
//! with exponential backoff a bounded number of times. Sending never blocks an operation: events
//! go through a bounded queue and are dropped (with a warning) when it is full.

use std::sync::Arc;
use std::time::Duration;

use berth_worker_api::Secret;
use hmac::{Hmac, KeyInit, Mac};
use serde::Serialize;
use sha2::Sha256;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::Metrics;
use crate::record::InstanceRecord;

/// Header holding the signature.
pub const SIGNATURE_HEADER: &str = "x-berth-signature";
/// Delivery attempts per event.
pub const ATTEMPTS: u32 = 6;
const QUEUE: usize = 1024;
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What is POSTed.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// `state_changed`, `deleted` or `rolled_back`.
    pub event: &'static str,
    pub id: String,
    pub previous_state: Option<String>,
    pub state: Option<String>,
    pub record: Option<InstanceRecord>,
    pub at: String,
}

#[derive(Debug, Clone)]
pub struct Webhook {
    tx: mpsc::Sender<Vec<u8>>,
}

/// `sha256=<hex>` of `body` under `secret`.
pub fn signature(secret: &Secret, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

impl Webhook {
    /// Starts the delivery task on `tracker`; it ends on `shutdown`.
    pub fn spawn(
        url: String,
        secret: Secret,
        metrics: Arc<Metrics>,
        tracker: &TaskTracker,
        shutdown: CancellationToken,
    ) -> Self {
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(QUEUE);
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("reqwest client without TLS always builds");
        tracker.spawn(async move {
            loop {
                let body = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    body = rx.recv() => match body { Some(b) => b, None => return },
                };
                let ok = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    ok = deliver(&http, &url, &secret, body) => ok,
                };
                metrics.webhook(ok);
            }
        });
        Self { tx }
    }

    /// Queues an event; never waits.
    pub fn notify(&self, event: &Event) {
        let body = match serde_json::to_vec(event) {
            Ok(b) => b,
            Err(err) => {
                tracing::error!(cause = %err, "webhook event does not serialise");
                return;
            }
        };
        if self.tx.try_send(body).is_err() {
            tracing::warn!(id = %event.id, "webhook queue full or closed, event dropped");
        }
    }
}

async fn deliver(http: &reqwest::Client, url: &str, secret: &Secret, body: Vec<u8>) -> bool {
    let sig = signature(secret, &body);
    let mut backoff = FIRST_BACKOFF;
    for attempt in 1..=ATTEMPTS {
        let result = http
            .post(url)
            .header("content-type", "application/json")
            .header(SIGNATURE_HEADER, &sig)
            .body(body.clone())
            .send()
            .await;
        match result {
            Ok(resp) if resp.status().is_success() => return true,
            Ok(resp) => tracing::warn!(attempt, status = %resp.status(), "webhook refused"),
            // Without the URL: its query may carry a secret of the main system's.
            Err(err) => tracing::warn!(attempt, cause = %err.without_url(), "webhook unreachable"),
        }
        if attempt < ATTEMPTS {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
    tracing::error!(attempts = ATTEMPTS, "webhook delivery gave up");
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha256_hex() {
        // RFC 4231 test case 2.
        let sig = signature(&Secret::new("Jefe"), b"what do ya want for nothing?");
        assert_eq!(
            sig,
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
