//! Thin helpers over bollard: connection with version negotiation, label filters, and error
//! classification (404 / 304 treated as "already so" for idempotent operations).

use std::collections::HashMap;
use std::time::Duration;

use bollard::Docker;
use bollard::errors::Error;

/// Connects to the local engine and negotiates the API version (the engine may be older than
/// bollard's default).
pub async fn connect() -> Result<Docker, Error> {
    Docker::connect_with_local_defaults()?
        .negotiate_version()
        .await
}

/// A client sharing `docker`'s connection with a longer per-request timeout (builds, stops).
pub fn long(docker: &Docker, timeout: Duration) -> Docker {
    docker.clone().with_timeout(timeout)
}

/// `{"label": ["k=v", ...]}` filter.
pub fn label_filter(labels: &[(&str, &str)]) -> HashMap<String, Vec<String>> {
    HashMap::from([(
        "label".to_owned(),
        labels.iter().map(|(k, v)| format!("{k}={v}")).collect(),
    )])
}

pub fn status_of(err: &Error) -> Option<u16> {
    match err {
        Error::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// Not found (404) or not modified (304): the object is already in the wanted state.
pub fn already(err: &Error) -> bool {
    matches!(status_of(err), Some(404 | 304))
}

/// Turns "already so" into `Ok(false)`, success into `Ok(true)`.
pub fn idempotent<T>(result: Result<T, Error>) -> Result<bool, Error> {
    match result {
        Ok(_) => Ok(true),
        Err(e) if already(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The message an engine error carries, for users.
pub fn message(err: &Error) -> String {
    match err {
        Error::DockerResponseServerError { message, .. } => message.clone(),
        other => other.to_string(),
    }
}
