//! Process setup the binaries share: the log subscriber and the shutdown signal.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber on stdout: `RUST_LOG` filters (default `info`), `json` writes
/// JSON lines.
pub fn init_tracing(json: bool) {
    let builder = tracing_subscriber::fmt().with_env_filter(filter());
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Like [`init_tracing`], but logs to stderr (for a binary whose stdout carries other output).
pub fn init_tracing_to_stderr(json: bool) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn filter() -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"))
}

/// Resolves when SIGINT (Ctrl-C) or SIGTERM arrives. If the SIGTERM handler cannot be installed
/// only SIGINT ends the wait, and a warning says so.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot install the SIGTERM handler");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
