//! berth-kit: the plumbing each berth binary needs once: [`Secret`] (a redacted, constant-time
//! compared string, given as a value or in a `*_FILE`), [`fs::write_atomic`] (temp file, fsync,
//! rename, fsync of the directory) and, with the `cli` feature, [`init_tracing`] and
//! [`shutdown_signal`]; with `serve`, [`serve::serve`] (the HTTP server loop with timeouts and a
//! connection cap) and [`serve::raise_fd_limit`]; with `probe` (tests only), the raw-socket
//! probes of the servers' timeout tests.

#[cfg(feature = "cli")]
mod cli;
pub mod fs;
#[cfg(feature = "probe")]
pub mod probe;
pub mod secret;
#[cfg(feature = "serve")]
pub mod serve;

#[cfg(feature = "cli")]
pub use cli::{init_tracing, init_tracing_to_stderr, shutdown_signal};
pub use secret::Secret;
