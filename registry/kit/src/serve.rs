//! [`serve`]: one HTTP server loop for every berth binary, with the limits axum's own
//! `axum::serve` does not set, so a client cannot hold a connection or a descriptor forever:
//! - a header timeout, which also bounds a keep-alive connection's idle time (hyper's header
//!   timer runs from the moment it waits for the next request's first byte);
//! - a body-progress timeout: each frame of a request body must arrive within it, so a
//!   `Content-Length` promised and never sent ends in an error answer and a closed connection
//!   (a handler that waits, such as a blocking query, is not affected: only a body read is);
//! - a connection cap below the descriptor limit: beyond it a new connection is closed at once
//!   instead of the process running out of descriptors for its store, its files and its
//!   clients.
//!
//! [`raise_fd_limit`] lifts the descriptor soft limit to the hard limit; the binaries call it
//! at start-up, before they size the cap.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tower::ServiceExt as _;

/// Descriptors kept free for everything but client connections (store, files, outbound
/// clients, Docker, git).
const FD_RESERVE: u64 = 128;

/// The limits [`serve`] applies to every connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Longest wait for a request's complete header, including a keep-alive connection's wait
    /// for its next request.
    pub header_timeout: Duration,
    /// Longest wait for the next piece of a request body.
    pub body_timeout: Duration,
    /// Most connections open at once.
    pub max_connections: usize,
}

impl Limits {
    /// 30 s for headers and for each body frame, and a connection cap of the descriptor soft
    /// limit less a reserve (at least 32, at most 16,384). `BERTH_HTTP_HEADER_TIMEOUT_MS` and
    /// `BERTH_HTTP_BODY_TIMEOUT_MS` override the timeouts (tests use short ones).
    pub fn from_env() -> Self {
        let ms = |name: &str, default: u64| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .filter(|v| *v > 0)
                .map_or(Duration::from_millis(default), Duration::from_millis)
        };
        let soft = fd_limit().map_or(1024, |(soft, _)| soft);
        let cap = soft.saturating_sub(FD_RESERVE).clamp(32, 16_384);
        Self {
            header_timeout: ms("BERTH_HTTP_HEADER_TIMEOUT_MS", 30_000),
            body_timeout: ms("BERTH_HTTP_BODY_TIMEOUT_MS", 30_000),
            max_connections: usize::try_from(cap).unwrap_or(16_384),
        }
    }
}

/// The descriptor limits (soft, hard); `None` where unknown or unlimited.
fn fd_limit() -> Option<(u64, u64)> {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    Some((limit.current?, limit.maximum.unwrap_or(u64::MAX)))
}

/// Raises the descriptor soft limit to the hard limit and returns the new soft limit. Failure
/// is logged and leaves the limit as it was.
pub fn raise_fd_limit() -> Option<u64> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current == limit.maximum {
        return limit.current;
    }
    let raised = Rlimit {
        current: limit.maximum,
        maximum: limit.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => limit.maximum,
        Err(err) => {
            tracing::warn!(cause = %err, "cannot raise the open-file limit");
            limit.current
        }
    }
}

/// Serves `app` on `listener` with `limits` until `shutdown` completes, then lets open
/// requests finish (the caller bounds how long) and returns. HTTP/1 and HTTP/2, as
/// `axum::serve`; `TCP_NODELAY` on every connection.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    // Dropped at shutdown: every connection task sees it and shuts down gracefully.
    let (stop_tx, stop_rx) = watch::channel(());
    // Each connection task holds a receiver; `closed()` resolves when all have finished.
    let (done_tx, done_rx) = watch::channel(());
    let app = app.layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
        limits.body_timeout,
    ));
    let mut shutdown = std::pin::pin!(shutdown);
    let mut refused: u64 = 0;
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    // EMFILE and friends: wait for descriptors to free up instead of spinning.
                    tracing::warn!(cause = %err, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            refused += 1;
            if refused.is_power_of_two() {
                tracing::warn!(%peer, refused, max = limits.max_connections, "connection cap reached; closing new connections");
            }
            drop(stream);
            continue;
        };
        if let Err(err) = stream.set_nodelay(true) {
            tracing::debug!(cause = %err, "cannot set TCP_NODELAY");
        }
        let service = TowerToHyperService::new(app.clone().map_request(
            |req: axum::extract::Request<hyper::body::Incoming>| req.map(axum::body::Body::new),
        ));
        let mut stop = stop_rx.clone();
        let done = done_rx.clone();
        let header_timeout = limits.header_timeout;
        tokio::spawn(async move {
            let _slot = slot;
            let _done = done;
            // The HTTP/1-or-2 sniffing reads the first bytes with no timer of its own: a
            // connection that never sends one would be held forever.
            let mut first = [0u8; 1];
            match tokio::time::timeout(header_timeout, stream.peek(&mut first)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return,
            }
            let mut builder = Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout);
            builder
                .http2()
                .timer(TokioTimer::new())
                .keep_alive_interval(Some(header_timeout))
                .keep_alive_timeout(header_timeout);
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(err) = result {
                        tracing::trace!(%peer, cause = %err, "connection ended with an error");
                    }
                    return;
                }
                _ = stop.changed() => {}
            }
            conn.as_mut().graceful_shutdown();
            if let Err(err) = conn.await {
                tracing::trace!(%peer, cause = %err, "connection ended with an error");
            }
        });
    }
    drop(listener);
    drop(stop_tx);
    drop(done_rx);
    done_tx.closed().await;
    Ok(())
}
