//! Planning a project: dependency order (a DAG, cycles rejected), Docker Compose names and
//! labels, berth's labels on top, who owns an object found by name, and the config hash that
//! decides whether to recreate.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use berth_worker_api::ErrorDetail;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::model::{Project, Service};

pub const LABEL_PROJECT: &str = "com.docker.compose.project";
pub const LABEL_SERVICE: &str = "com.docker.compose.service";
pub const LABEL_NUMBER: &str = "com.docker.compose.container-number";
pub const LABEL_ONEOFF: &str = "com.docker.compose.oneoff";
pub const LABEL_CONFIG_HASH: &str = "com.docker.compose.config-hash";
pub const LABEL_VERSION: &str = "com.docker.compose.version";
pub const LABEL_WORKING_DIR: &str = "com.docker.compose.project.working_dir";
pub const LABEL_CONFIG_FILES: &str = "com.docker.compose.project.config_files";
pub const LABEL_DEPENDS_ON: &str = "com.docker.compose.depends_on";
pub const LABEL_NETWORK: &str = "com.docker.compose.network";
pub const LABEL_VOLUME: &str = "com.docker.compose.volume";
/// The Compose version berth claims on what it creates (the one Debian ships, whose `ps` we
/// verify against).
pub const COMPOSE_VERSION: &str = "1.29.2";

pub const LABEL_BERTH_MANAGED: &str = "org.berth.managed";
pub const LABEL_BERTH_INSTANCE: &str = "org.berth.instance";
pub const LABEL_BERTH_NODE: &str = "org.berth.node";
pub const LABEL_BERTH_COMMIT: &str = "org.berth.commit";

/// Who owns what the planner names: berth's labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub instance: String,
    pub node: String,
}

impl Owner {
    /// `org.berth.*` labels every object of the instance carries.
    pub fn labels(&self) -> HashMap<String, String> {
        HashMap::from([
            (LABEL_BERTH_MANAGED.to_owned(), "true".to_owned()),
            (LABEL_BERTH_INSTANCE.to_owned(), self.instance.clone()),
            (LABEL_BERTH_NODE.to_owned(), self.node.clone()),
        ])
    }

    /// Whether an object found by name is this owner's: its `org.berth.instance` and
    /// `org.berth.node` labels must both be this owner's. Names of different instances can
    /// collide (`col_x` + `data` and `col` + `x_data` are both the volume `col_x_data`), so a
    /// name alone never proves ownership.
    pub fn check(&self, labels: Option<&HashMap<String, String>>) -> Result<(), Holder> {
        let get = |key| labels.and_then(|l| l.get(key)).cloned();
        match (get(LABEL_BERTH_INSTANCE), get(LABEL_BERTH_NODE)) {
            (Some(instance), Some(node)) if instance == self.instance && node == self.node => {
                Ok(())
            }
            (Some(instance), node) => Err(Holder::Instance {
                instance,
                node: node.unwrap_or_default(),
            }),
            (None, _) => Err(Holder::Unmanaged),
        }
    }
}

/// Who holds an object that is not the stack's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    /// Another berth instance, or the same instance id of another node.
    Instance { instance: String, node: String },
    /// An object without berth's labels (made by hand or by another tool).
    Unmanaged,
}

impl Holder {
    /// The instance named by the object's labels, if any.
    pub fn instance(&self) -> Option<&str> {
        match self {
            Self::Instance { instance, .. } => Some(instance),
            Self::Unmanaged => None,
        }
    }
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Instance { instance, node } => {
                write!(f, "belongs to berth instance {instance} (node {node})")
            }
            Self::Unmanaged => f.write_str("was not created by berth (it has no org.berth labels)"),
        }
    }
}

/// Services in an order where every service comes after its dependencies; ties keep file order.
pub fn start_order(project: &Project) -> Result<Vec<&Service>, ErrorDetail> {
    let mut done: Vec<&str> = Vec::new();
    let mut remaining: Vec<&Service> = project.services.iter().collect();
    while !remaining.is_empty() {
        let ready = remaining
            .iter()
            .position(|s| s.depends_on.keys().all(|d| done.contains(&d.as_str())));
        match ready {
            Some(i) => done.push(&remaining.remove(i).name),
            None => {
                let names: Vec<&str> = remaining.iter().map(|s| s.name.as_str()).collect();
                return Err(ErrorDetail {
                    service: Some(names[0].to_owned()),
                    field: format!("services.{}.depends_on", names[0]),
                    reason: format!("dependency cycle among {}", names.join(", ")),
                });
            }
        }
    }
    Ok(done
        .into_iter()
        .filter_map(|n| project.service(n))
        .collect())
}

pub fn container_name(project: &str, service: &str) -> String {
    format!("{project}-{service}-1")
}

/// Repository name of a service's built image: `<project>-<service>` as Compose names it when
/// that is a valid Docker reference. Ids and service names may hold sequences the reference
/// grammar forbids (`badid_`, `web.`, `a_-b`, `a..b`); those map to their alphanumeric runs
/// joined by `-` plus the first 8 hex digits of SHA-256 of `<project>-<service>`, which keeps
/// mapped names apart from each other.
pub fn image_name(project: &str, service: &str) -> String {
    let raw = format!("{project}-{service}");
    if raw.len() <= MAX_REPOSITORY && valid_repository(&raw) {
        return raw;
    }
    let mut clean = raw
        .split(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit()))
        .filter(|run| !run.is_empty())
        .collect::<Vec<_>>()
        .join("-");
    clean.truncate(MAX_REPOSITORY - 9);
    let clean = clean.trim_end_matches('-');
    let digest = hex::encode(Sha256::digest(raw.as_bytes()));
    format!("{clean}-{}", &digest[..8])
}

/// Longest repository name berth uses (Docker allows 255 for the whole name).
const MAX_REPOSITORY: usize = 128;

/// Docker's grammar for a one-component repository name:
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
pub fn valid_repository(name: &str) -> bool {
    let mut separator = String::new();
    let mut started = false;
    for c in name.chars() {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            let ok = separator.is_empty()
                || matches!(separator.as_str(), "." | "_" | "__")
                || separator.chars().all(|s| s == '-');
            if !ok {
                return false;
            }
            separator.clear();
            started = true;
        } else if started && matches!(c, '.' | '_' | '-') {
            separator.push(c);
        } else {
            return false;
        }
    }
    started && separator.is_empty()
}

/// Image tag of one build: `<project>-<service>:<commit12>`.
pub fn image_tag(project: &str, service: &str, commit: &str) -> String {
    format!(
        "{}:{}",
        image_name(project, service),
        &commit[..commit.len().min(12)]
    )
}

pub fn network_name(project: &str, key: &str) -> String {
    format!("{project}_{key}")
}

/// What every stack network's Linux bridge is named after: the host firewall matches every
/// stack network with `-i berth+` (scripts/lib/firewall.sh).
pub const BRIDGE_PREFIX: &str = "berth";
/// The Docker option that names a bridge network's interface.
pub const BRIDGE_NAME_OPTION: &str = "com.docker.network.bridge.name";

/// The Linux bridge of the stack network `network`: [`BRIDGE_PREFIX`] and 10 hex digits of the
/// name's SHA-256, 15 bytes, the kernel's limit for an interface name.
pub fn bridge_name(network: &str) -> String {
    let digest = hex::encode(Sha256::digest(network.as_bytes()));
    format!("{BRIDGE_PREFIX}{}", &digest[..10])
}

pub fn volume_name(project: &str, key: &str) -> String {
    format!("{project}_{key}")
}

pub fn network_labels(project: &str, key: &str, owner: &Owner) -> HashMap<String, String> {
    let mut l = owner.labels();
    l.insert(LABEL_NETWORK.to_owned(), key.to_owned());
    l.insert(LABEL_PROJECT.to_owned(), project.to_owned());
    l.insert(LABEL_VERSION.to_owned(), COMPOSE_VERSION.to_owned());
    l
}

pub fn volume_labels(project: &str, key: &str, owner: &Owner) -> HashMap<String, String> {
    let mut l = owner.labels();
    l.insert(LABEL_VOLUME.to_owned(), key.to_owned());
    l.insert(LABEL_PROJECT.to_owned(), project.to_owned());
    l.insert(LABEL_VERSION.to_owned(), COMPOSE_VERSION.to_owned());
    l
}

/// Labels of a built image: only what delete finds it by. Every LABEL step costs a container
/// created and committed (about a second each here), so the worker adds these as one LABEL
/// instruction at the end of the built stage (`images::with_labels`), and project, service and
/// commit travel in the tag (`<project>-<service>:<commit12>`) instead.
pub fn image_labels(owner: &Owner) -> HashMap<String, String> {
    HashMap::from([
        (LABEL_BERTH_INSTANCE.to_owned(), owner.instance.clone()),
        (LABEL_BERTH_NODE.to_owned(), owner.node.clone()),
    ])
}

/// Labels of a service's container: the file's labels, Compose's, then berth's (which win).
pub fn container_labels(
    project: &Project,
    service: &Service,
    config_hash: &str,
    owner: &Owner,
    commit: &str,
) -> HashMap<String, String> {
    let mut l: HashMap<String, String> = service.labels.clone().into_iter().collect();
    let depends: Vec<String> = service
        .depends_on
        .iter()
        .map(|(dep, cond)| {
            let cond = match cond {
                super::Condition::Started => "service_started",
                super::Condition::Healthy => "service_healthy",
                super::Condition::CompletedSuccessfully => "service_completed_successfully",
            };
            format!("{dep}:{cond}:false")
        })
        .collect();
    let files: Vec<String> = project
        .config_files
        .iter()
        .map(|f| f.display().to_string())
        .collect();
    for (k, v) in [
        (LABEL_PROJECT, project.name.clone()),
        (LABEL_SERVICE, service.name.clone()),
        (LABEL_NUMBER, "1".to_owned()),
        (LABEL_ONEOFF, "False".to_owned()),
        (LABEL_CONFIG_HASH, config_hash.to_owned()),
        (LABEL_VERSION, COMPOSE_VERSION.to_owned()),
        (LABEL_WORKING_DIR, project.working_dir.display().to_string()),
        (LABEL_CONFIG_FILES, files.join(",")),
        (LABEL_DEPENDS_ON, depends.join(",")),
        (LABEL_BERTH_COMMIT, commit.to_owned()),
    ] {
        l.insert(k.to_owned(), v);
    }
    l.extend(owner.labels());
    l
}

/// SHA-256 of the normalised service config (without `build` and `depends_on`, which do not
/// change the container) plus what the worker adds (`extra`: image id, host ports, limits).
/// Maps are `BTreeMap`s and the JSON encoding is canonical, so equal configs hash equally.
pub fn config_hash(service: &Service, extra: &impl Serialize) -> String {
    #[derive(Serialize)]
    struct Normalised<'a, E> {
        service: &'a Service,
        extra: &'a E,
    }
    let mut service = service.clone();
    service.build = None;
    service.depends_on = BTreeMap::new();
    let json = serde_json::to_vec(&Normalised {
        service: &service,
        extra,
    })
    .expect("service config always serialises");
    hex::encode(Sha256::digest(&json))
}
