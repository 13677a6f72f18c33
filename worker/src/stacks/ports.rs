//! Host ports: always the worker's choice (the kernel picks a free one, held bound until every
//! port is chosen, released just before the containers are created), kept in the record as
//! `service/port/proto` so endpoints survive stop and start.

use std::collections::{BTreeMap, HashMap};
use std::net::{TcpListener, UdpSocket};

use bollard::models::ContainerInspectResponse;

use super::StackError;
use crate::compose::Project;

/// The record key of a published port: `service/port/proto`.
pub(super) fn port_key(service: &str, port: u16, proto: &str) -> String {
    format!("{service}/{port}/{proto}")
}

/// The host port of every published port of `project`: the one in `previous` (the record) while
/// its container runs or the port is free, else a fresh one. Chosen ports stay bound until all
/// are chosen, so no two services get the same one.
pub(super) fn choose_ports(
    project: &Project,
    existing: &HashMap<String, ContainerInspectResponse>,
    previous: &BTreeMap<String, u16>,
) -> std::io::Result<BTreeMap<String, u16>> {
    let mut ports = BTreeMap::new();
    let mut holds = Vec::new();
    for s in &project.services {
        for p in &s.ports {
            let key = port_key(&s.name, p.container_port, &p.protocol);
            let held = existing
                .get(&s.name)
                .is_some_and(|c| c.state.as_ref().and_then(|st| st.running) == Some(true));
            let port = match previous.get(&key) {
                Some(&port) if held || port_free(port, &p.protocol) => port,
                _ => {
                    let hold = allocate_port(&p.protocol)?;
                    let port = hold.port();
                    holds.push(hold);
                    port
                }
            };
            ports.insert(key, port);
        }
    }
    drop(holds);
    Ok(ports)
}

/// Whether a start failed because a host port it chose was bound by someone else meanwhile.
pub(super) fn port_taken(err: &StackError) -> bool {
    let text = err.to_string();
    text.contains("port is already allocated") || text.contains("address already in use")
}

fn port_free(port: u16, proto: &str) -> bool {
    match proto {
        "udp" => UdpSocket::bind(("0.0.0.0", port)).is_ok(),
        _ => TcpListener::bind(("0.0.0.0", port)).is_ok(),
    }
}

/// A host port the kernel picked, bound until dropped (then Docker binds it).
enum PortHold {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

impl PortHold {
    fn port(&self) -> u16 {
        let addr = match self {
            Self::Tcp(l) => l.local_addr(),
            Self::Udp(u) => u.local_addr(),
        };
        addr.map_or(0, |a| a.port())
    }
}

fn allocate_port(proto: &str) -> std::io::Result<PortHold> {
    match proto {
        "udp" => Ok(PortHold::Udp(UdpSocket::bind(("0.0.0.0", 0))?)),
        _ => Ok(PortHold::Tcp(TcpListener::bind(("0.0.0.0", 0))?)),
    }
}
