//! `/v1/agent/*`: this server's own description (`self`, `members`).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;

use super::{AppState, json};
use crate::dto::{AgentConfig, AgentMember, AgentSelf};

/// The Consul API level berth implements, reported as `Config.Version`.
pub(crate) const CONSUL_API_VERSION: &str = "1.22.0";

fn member(app: &AppState) -> AgentMember {
    let (addr, port) = match app.leader_addr.rsplit_once(':') {
        Some((addr, port)) => (addr.to_owned(), port.parse().unwrap_or(0)),
        None => (app.leader_addr.clone(), 0),
    };
    let tags = BTreeMap::from([
        ("role".to_owned(), "consul".to_owned()),
        ("dc".to_owned(), app.datacenter.clone()),
        ("id".to_owned(), app.node_id.clone()),
        (
            "build".to_owned(),
            format!("{CONSUL_API_VERSION}:berth-{}", env!("CARGO_PKG_VERSION")),
        ),
        ("bootstrap".to_owned(), "1".to_owned()),
        ("port".to_owned(), port.to_string()),
    ]);
    AgentMember {
        name: app.node_name.clone(),
        addr,
        port,
        tags,
        status: 1,
        protocol_min: 1,
        protocol_max: 5,
        protocol_cur: 2,
        delegate_min: 2,
        delegate_max: 5,
        delegate_cur: 4,
    }
}

pub(crate) async fn self_info(State(app): State<Arc<AppState>>) -> Response {
    let consul_stats = BTreeMap::from([
        ("server".to_owned(), "true".to_owned()),
        ("leader".to_owned(), "true".to_owned()),
        ("leader_addr".to_owned(), app.leader_addr.clone()),
        ("bootstrap".to_owned(), "true".to_owned()),
        ("known_datacenters".to_owned(), "1".to_owned()),
    ]);
    let berth_stats = BTreeMap::from([
        ("version".to_owned(), env!("CARGO_PKG_VERSION").to_owned()),
        ("index".to_owned(), app.store.read(|s| s.index).to_string()),
    ]);
    let answer = AgentSelf {
        config: AgentConfig {
            datacenter: app.datacenter.clone(),
            primary_datacenter: app.datacenter.clone(),
            node_name: app.node_name.clone(),
            node_id: app.node_id.clone(),
            server: true,
            revision: "berth".to_owned(),
            version: CONSUL_API_VERSION.to_owned(),
        },
        coord: None,
        member: member(&app),
        stats: BTreeMap::from([
            ("consul".to_owned(), consul_stats),
            ("berth".to_owned(), berth_stats),
        ]),
        meta: BTreeMap::from([(
            "berth-version".to_owned(),
            env!("CARGO_PKG_VERSION").to_owned(),
        )]),
    };
    json(&answer)
}

pub(crate) async fn members(State(app): State<Arc<AppState>>) -> Response {
    json(&[member(&app)])
}
