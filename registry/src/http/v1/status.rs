//! `/v1/status/*`: this single server is always the leader and the only peer.

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;

use crate::http::{AppState, json};

pub(crate) async fn leader(State(app): State<Arc<AppState>>) -> Response {
    json(&app.leader_addr)
}

pub(crate) async fn peers(State(app): State<Arc<AppState>>) -> Response {
    json(&[&app.leader_addr])
}
