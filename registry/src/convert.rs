//! Every conversion between the store's state and Consul's wire types, in one place: what the
//! HTTP handlers answer with (KV, sessions, catalog, health, agent, ACL tokens and policies),
//! what the agent's anti-entropy sends to a remote server, and how it reads the remote catalog
//! back. A leaf: it knows the state and the wire types, nothing else, so both `http` and
//! `agent` use it without importing each other.

use serde::{Deserialize, Serialize};

use crate::acl::{NodeIdentity, Policy, PolicyLink, Role, ServiceIdentity, TemplatedPolicy, Token};
use crate::dto::{
    self, AgentService, CatalogCheckRegistration, CatalogNode, CatalogRegistration,
    CatalogServiceRegistration, HealthCheck, ServiceAddress, ServiceCheckRef, SessionEntry,
    Weights,
};
use crate::store::Registration;
use crate::store::state::{Check, CheckStatus, KvEntry, Node, Service, Session};

/// A KV entry as `GET /v1/kv` and txn results carry it.
pub(crate) fn kv_entry(entry: &KvEntry) -> dto::KvEntry {
    dto::KvEntry {
        lock_index: entry.lock_index,
        key: entry.key.clone(),
        flags: entry.flags,
        value: Some(entry.value.to_vec()),
        create_index: entry.create_index,
        modify_index: entry.modify_index,
        session: entry.session.clone(),
    }
}

/// A session as `/v1/session/*` answers it.
pub(crate) fn session_entry(s: &Session) -> SessionEntry {
    SessionEntry {
        id: s.id.clone(),
        name: s.name.clone(),
        node: s.node.clone(),
        lock_delay: u64::try_from(s.lock_delay.as_nanos()).unwrap_or(u64::MAX),
        behavior: s.behavior.as_str().to_owned(),
        ttl: match s.ttl {
            Some(_) if !s.ttl_text.is_empty() => s.ttl_text.clone(),
            Some(ttl) => dto::go_duration(ttl),
            None => String::new(),
        },
        node_checks: s.node_checks.clone(),
        service_checks: s
            .service_checks
            .iter()
            .map(|id| ServiceCheckRef {
                id: id.clone(),
                namespace: None,
            })
            .collect(),
        create_index: s.create_index,
        modify_index: s.modify_index,
    }
}

/// A check as the health endpoints and `/v1/agent/checks` answer it.
pub(crate) fn health_check(c: &Check) -> HealthCheck {
    HealthCheck {
        node: c.node.clone(),
        check_id: c.id.clone(),
        name: c.name.clone(),
        status: c.status.as_str().to_owned(),
        notes: c.notes.clone(),
        output: c.output.clone(),
        service_id: c.service_id.clone(),
        service_name: c.service_name.clone(),
        service_tags: c.service_tags.clone(),
        check_type: c.check_type.clone(),
        definition: check_definition(&c.definition),
        create_index: c.create_index,
        modify_index: c.modify_index,
    }
}

/// A check's `Definition` as Consul encodes its `HealthCheckDefinition`: a field whose value is
/// zero (`""`, `0`, `false`, `null`, empty list or map) is left out; `Interval`, `Timeout` and
/// `DeregisterCriticalServiceAfter` are Go duration text (`10s`), `TTL` a number of nanoseconds
/// (a plain `time.Duration`). Go clients parse the duration fields and fail on `""`.
pub(crate) fn check_definition(definition: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    let mut out = serde_json::Map::new();
    let Value::Object(fields) = definition else {
        return Value::Object(out);
    };
    for (key, value) in fields {
        // Consul decodes a definition into its struct, keys in any case, and writes it back
        // with the struct's names.
        let folded: String = key.chars().filter(|c| *c != '_').collect();
        let key = DEFINITION_FIELDS
            .iter()
            .find(|name| name.eq_ignore_ascii_case(&folded))
            .map_or(key.as_str(), |name| *name);
        let value = match key {
            "Interval" | "Timeout" | "DeregisterCriticalServiceAfter" => {
                match json_duration(value) {
                    Some(d) if !d.is_zero() => Value::String(dto::go_duration(d)),
                    _ => continue,
                }
            }
            "TTL" => match json_duration(value) {
                Some(d) if !d.is_zero() => {
                    Value::from(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
                }
                _ => continue,
            },
            _ if is_zero(value) => continue,
            _ => value.clone(),
        };
        out.insert(key.to_owned(), value);
    }
    Value::Object(out)
}

/// The fields of Consul's `HealthCheckDefinition`.
const DEFINITION_FIELDS: &[&str] = &[
    "HTTP",
    "Header",
    "Method",
    "Body",
    "TLSServerName",
    "TLSSkipVerify",
    "DisableRedirects",
    "TCP",
    "TCPUseTLS",
    "UDP",
    "H2PING",
    "H2PingUseTLS",
    "OSService",
    "Interval",
    "OutputMaxSize",
    "Timeout",
    "DeregisterCriticalServiceAfter",
    "ScriptArgs",
    "DockerContainerID",
    "Shell",
    "GRPC",
    "GRPCUseTLS",
    "AliasNode",
    "AliasService",
    "TTL",
];

/// A duration in a stored definition: Go text or nanoseconds.
/// A Go duration in JSON: text (`"10s"`) or a number of nanoseconds.
pub(crate) fn json_duration(value: &serde_json::Value) -> Option<std::time::Duration> {
    match value {
        serde_json::Value::String(text) => dto::parse_go_duration(text),
        serde_json::Value::Number(n) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
            .map(std::time::Duration::from_nanos),
        _ => None,
    }
}

/// Whether Go's `omitempty` leaves the value out.
fn is_zero(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::Null => true,
        serde_json::Value::Bool(b) => !b,
        serde_json::Value::Number(n) => n.as_f64() == Some(0.0),
        serde_json::Value::String(s) => s.is_empty(),
        serde_json::Value::Array(items) => items.is_empty(),
        serde_json::Value::Object(map) => map.is_empty(),
    }
}

/// A service instance as the catalog, health and agent endpoints answer it.
pub(crate) fn agent_service(s: &Service, datacenter: &str) -> AgentService {
    AgentService {
        id: s.id.clone(),
        service: s.name.clone(),
        tags: s.tags.clone(),
        meta: s.meta.clone(),
        port: s.port,
        address: s.address.clone(),
        tagged_addresses: s
            .tagged_addresses
            .iter()
            .map(|(k, (a, p))| {
                (
                    k.clone(),
                    ServiceAddress {
                        address: a.clone(),
                        port: *p,
                    },
                )
            })
            .collect(),
        weights: Weights {
            passing: s.weights.0,
            warning: s.weights.1,
        },
        enable_tag_override: s.enable_tag_override,
        kind: s.kind.clone(),
        datacenter: datacenter.to_owned(),
        create_index: Some(s.create_index),
        modify_index: Some(s.modify_index),
    }
}

/// A node as the catalog and health endpoints answer it.
pub(crate) fn catalog_node(n: &Node) -> CatalogNode {
    CatalogNode {
        id: n.id.clone(),
        node: n.name.clone(),
        address: n.address.clone(),
        datacenter: n.datacenter.clone(),
        tagged_addresses: n.tagged_addresses.clone(),
        meta: n.meta.clone(),
        create_index: n.create_index,
        modify_index: n.modify_index,
    }
}

/// A registration as the catalog's HTTP API takes it.
pub(crate) fn catalog_registration(reg: Registration) -> CatalogRegistration {
    let check = |c: Check| CatalogCheckRegistration {
        node: c.node,
        check_id: c.id,
        name: c.name,
        status: c.status.as_str().to_owned(),
        notes: c.notes,
        output: c.output,
        service_id: c.service_id,
        check_type: c.check_type,
        definition: Some(c.definition),
        ..CatalogCheckRegistration::default()
    };
    CatalogRegistration {
        id: reg.node.id,
        node: reg.node.name,
        address: reg.node.address,
        datacenter: reg.node.datacenter,
        tagged_addresses: reg.node.tagged_addresses,
        node_meta: reg.node.meta,
        service: reg.service.map(|s| CatalogServiceRegistration {
            id: s.id,
            service: s.name,
            tags: s.tags,
            address: s.address,
            tagged_addresses: s
                .tagged_addresses
                .into_iter()
                .map(|(k, (address, port))| (k, ServiceAddress { address, port }))
                .collect(),
            meta: s.meta,
            port: s.port,
            kind: s.kind,
            enable_tag_override: s.enable_tag_override,
            weights: Some(Weights {
                passing: s.weights.0,
                warning: s.weights.1,
            }),
            ..CatalogServiceRegistration::default()
        }),
        check: None,
        checks: reg.checks.into_iter().map(check).collect(),
        skip_node_update: reg.skip_node_update,
    }
}

/// A node read back from a remote server's catalog.
pub(crate) fn node_from_wire(n: CatalogNode) -> Node {
    Node {
        name: n.node,
        id: n.id,
        address: n.address,
        datacenter: n.datacenter,
        tagged_addresses: n.tagged_addresses,
        meta: n.meta,
        create_index: n.create_index,
        modify_index: n.modify_index,
    }
}

/// A service of `node` read back from a remote server's catalog.
pub(crate) fn service_from_wire(node: &str, s: AgentService) -> Service {
    Service {
        node: node.to_owned(),
        id: s.id,
        name: s.service,
        tags: s.tags,
        address: s.address,
        port: s.port,
        meta: s.meta,
        tagged_addresses: s
            .tagged_addresses
            .into_iter()
            .map(|(k, v)| (k, (v.address, v.port)))
            .collect(),
        kind: s.kind,
        enable_tag_override: s.enable_tag_override,
        weights: (s.weights.passing, s.weights.warning),
        create_index: 0,
        modify_index: 0,
    }
}

/// A check read back from a remote server's health endpoint.
pub(crate) fn check_from_wire(c: HealthCheck) -> Check {
    Check {
        node: c.node,
        id: c.check_id,
        name: c.name,
        status: CheckStatus::parse(&c.status).unwrap_or_default(),
        notes: c.notes,
        output: c.output,
        service_id: c.service_id,
        service_name: c.service_name,
        service_tags: c.service_tags,
        check_type: c.check_type,
        definition: c.definition,
        create_index: c.create_index,
        modify_index: c.modify_index,
    }
}

/// An ACL token on the wire (answers, and the body of create, update and clone). Fields
/// Consul omits when empty are omitted here too.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct TokenDto {
    #[serde(rename = "AccessorID", default)]
    pub(crate) accessor_id: String,
    #[serde(rename = "SecretID", default)]
    pub(crate) secret_id: String,
    #[serde(default)]
    pub(crate) description: String,
    #[serde(default)]
    pub(crate) policies: Vec<LinkDto>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) roles: Vec<LinkDto>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) service_identities: Vec<ServiceIdentityDto>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) node_identities: Vec<NodeIdentityDto>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) templated_policies: Vec<TemplatedPolicyDto>,
    #[serde(default)]
    pub(crate) local: bool,
    /// Tokens from auth methods only; refused on create (Consul: only `login` sets it).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub(crate) auth_method: String,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) expiration_time: Option<String>,
    /// A Go duration: text (`"1h"`) or a number of nanoseconds; never in answers.
    #[serde(rename = "ExpirationTTL", default, skip_serializing)]
    pub(crate) expiration_ttl: Option<serde_json::Value>,
    #[serde(default)]
    pub(crate) create_time: String,
    #[serde(default)]
    pub(crate) hash: String,
    #[serde(default)]
    pub(crate) create_index: u64,
    #[serde(default)]
    pub(crate) modify_index: u64,
}

/// A service identity on the wire.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct ServiceIdentityDto {
    #[serde(default)]
    pub(crate) service_name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) datacenters: Vec<String>,
}

/// A node identity on the wire.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct NodeIdentityDto {
    #[serde(default)]
    pub(crate) node_name: String,
    #[serde(default)]
    pub(crate) datacenter: String,
}

/// An ACL role on the wire (answers, and the body of create and update).
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct RoleDto {
    #[serde(rename = "ID", default)]
    pub(crate) id: String,
    #[serde(default)]
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) description: String,
    #[serde(default)]
    pub(crate) policies: Vec<LinkDto>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) service_identities: Vec<ServiceIdentityDto>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) node_identities: Vec<NodeIdentityDto>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) templated_policies: Vec<TemplatedPolicyDto>,
    #[serde(default)]
    pub(crate) hash: String,
    #[serde(default)]
    pub(crate) create_index: u64,
    #[serde(default)]
    pub(crate) modify_index: u64,
}

/// A templated policy on the wire: Consul writes the variables with lower-case keys.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct TemplatedPolicyDto {
    #[serde(default)]
    pub(crate) template_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) template_variables: Option<TemplateVariablesDto>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) datacenters: Vec<String>,
}

/// The variables of a templated policy (Consul's `ACLTemplatedPolicyVariables`).
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub(crate) struct TemplateVariablesDto {
    /// Read as `Name` (the decoder spells keys so), written as Consul writes it.
    #[serde(
        rename(serialize = "name", deserialize = "Name"),
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub(crate) name: String,
}

fn templated_policies(list: &[TemplatedPolicy]) -> Vec<TemplatedPolicyDto> {
    list.iter()
        .map(|t| TemplatedPolicyDto {
            template_name: t.template_name.clone(),
            template_variables: (!t.name.is_empty()).then(|| TemplateVariablesDto {
                name: t.name.clone(),
            }),
            datacenters: t.datacenters.clone(),
        })
        .collect()
}

/// Templated policies of a request body.
pub(crate) fn templated_policies_of(list: &[TemplatedPolicyDto]) -> Vec<TemplatedPolicy> {
    list.iter()
        .map(|t| TemplatedPolicy {
            template_name: t.template_name.clone(),
            name: t
                .template_variables
                .as_ref()
                .map(|v| v.name.clone())
                .unwrap_or_default(),
            datacenters: t.datacenters.clone(),
        })
        .collect()
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct LinkDto {
    #[serde(rename = "ID", default)]
    pub(crate) id: String,
    #[serde(default)]
    pub(crate) name: String,
}

/// An ACL policy on the wire (answers, and the body of create and update).
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct PolicyDto {
    #[serde(rename = "ID", default)]
    pub(crate) id: String,
    #[serde(default)]
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) description: String,
    #[serde(default)]
    pub(crate) rules: String,
    #[serde(default)]
    pub(crate) datacenters: Vec<String>,
    #[serde(default)]
    pub(crate) hash: String,
    #[serde(default)]
    pub(crate) create_index: u64,
    #[serde(default)]
    pub(crate) modify_index: u64,
}

fn links(links: &[PolicyLink]) -> Vec<LinkDto> {
    links
        .iter()
        .map(|p| LinkDto {
            id: p.id.clone(),
            name: p.name.clone(),
        })
        .collect()
}

fn service_identities(list: &[ServiceIdentity]) -> Vec<ServiceIdentityDto> {
    list.iter()
        .map(|s| ServiceIdentityDto {
            service_name: s.service_name.clone(),
            datacenters: s.datacenters.clone(),
        })
        .collect()
}

fn node_identities(list: &[NodeIdentity]) -> Vec<NodeIdentityDto> {
    list.iter()
        .map(|n| NodeIdentityDto {
            node_name: n.node_name.clone(),
            datacenter: n.datacenter.clone(),
        })
        .collect()
}

/// Service identities of a request body.
pub(crate) fn service_identities_of(list: &[ServiceIdentityDto]) -> Vec<ServiceIdentity> {
    list.iter()
        .map(|s| ServiceIdentity {
            service_name: s.service_name.clone(),
            datacenters: s.datacenters.clone(),
        })
        .collect()
}

/// Node identities of a request body.
pub(crate) fn node_identities_of(list: &[NodeIdentityDto]) -> Vec<NodeIdentity> {
    list.iter()
        .map(|n| NodeIdentity {
            node_name: n.node_name.clone(),
            datacenter: n.datacenter.clone(),
        })
        .collect()
}

/// A token as `/v1/acl/token*` answers it (the secret shown; callers redact).
pub(crate) fn token_dto(t: &Token) -> TokenDto {
    TokenDto {
        accessor_id: t.accessor_id.clone(),
        secret_id: t.secret_id.expose().to_owned(),
        description: t.description.clone(),
        policies: links(&t.policies),
        roles: links(&t.roles),
        service_identities: service_identities(&t.service_identities),
        node_identities: node_identities(&t.node_identities),
        templated_policies: templated_policies(&t.templated_policies),
        auth_method: t.auth_method.clone(),
        local: t.local,
        expiration_time: t.expiration_time.clone(),
        create_time: t.create_time.clone(),
        create_index: t.create_index,
        modify_index: t.modify_index,
        ..TokenDto::default()
    }
}

/// A role as `/v1/acl/role*` answers it.
pub(crate) fn role_dto(r: &Role) -> RoleDto {
    RoleDto {
        id: r.id.clone(),
        name: r.name.clone(),
        description: r.description.clone(),
        policies: links(&r.policies),
        service_identities: service_identities(&r.service_identities),
        node_identities: node_identities(&r.node_identities),
        templated_policies: templated_policies(&r.templated_policies),
        create_index: r.create_index,
        modify_index: r.modify_index,
        ..RoleDto::default()
    }
}

/// A policy as `/v1/acl/polic*` answers it.
pub(crate) fn policy_dto(p: &Policy) -> PolicyDto {
    PolicyDto {
        id: p.id.clone(),
        name: p.name.clone(),
        description: p.description.clone(),
        rules: p.rules.clone(),
        datacenters: p.datacenters.clone(),
        hash: String::new(),
        create_index: p.create_index,
        modify_index: p.modify_index,
    }
}
