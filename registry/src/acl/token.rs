//! ACL tokens and policies as domain types, and resolution of a presented secret.

use std::collections::HashMap;
use std::fmt;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use super::AclError;
use super::authorizer::Authorizer;
use super::rules::{Rules, parse_rules};
use super::templated::TemplatedPolicy;

/// Accessor id of the built-in anonymous token (Consul's fixed value).
pub const ANONYMOUS_ACCESSOR_ID: &str = "00000000-0000-0000-0000-000000000002";
/// Secret of the built-in anonymous token.
pub const ANONYMOUS_SECRET: &str = "anonymous";
/// Id of the built-in `global-management` policy.
pub const MANAGEMENT_POLICY_ID: &str = "00000000-0000-0000-0000-000000000001";
/// Name of the built-in management policy.
pub const MANAGEMENT_POLICY_NAME: &str = "global-management";

/// A token secret: never printed, compared in constant time.
#[derive(Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct SecretId(String);

impl SecretId {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// A fresh random secret (UUID v4, Consul's format).
    pub fn generate() -> Self {
        Self(uuid::Uuid::new_v4().to_string())
    }

    /// The secret itself, for the wire answer that must carry it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Constant-time comparison with a presented secret.
    pub fn matches(&self, presented: &str) -> bool {
        self.0.as_bytes().ct_eq(presented.as_bytes()).into()
    }
}

impl fmt::Debug for SecretId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretId(<redacted>)")
    }
}

/// A link from a token or role to a policy, or from a token to a role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyLink {
    /// Policy (or role) id.
    pub id: String,
    /// Policy (or role) name at link time.
    pub name: String,
}

/// A service identity: Consul's synthetic policy granting write on the service (and its
/// sidecar proxy) and read on every service and node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceIdentity {
    /// The service.
    pub service_name: String,
    /// Datacenters it applies in (empty: all).
    #[serde(default)]
    pub datacenters: Vec<String>,
}

/// A node identity: Consul's synthetic policy granting write on the node and read on every
/// service, in one datacenter.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeIdentity {
    /// The node.
    pub node_name: String,
    /// The datacenter it applies in.
    pub datacenter: String,
}

/// An ACL role: a named set of policies and identities that tokens link.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Role {
    /// Id (UUID).
    pub id: String,
    /// Unique name.
    pub name: String,
    /// Free text.
    pub description: String,
    /// Linked policies.
    pub policies: Vec<PolicyLink>,
    /// Service identities.
    #[serde(default)]
    pub service_identities: Vec<ServiceIdentity>,
    /// Node identities.
    #[serde(default)]
    pub node_identities: Vec<NodeIdentity>,
    /// Templated policies.
    #[serde(default)]
    pub templated_policies: Vec<TemplatedPolicy>,
    /// Store index at creation.
    pub create_index: u64,
    /// Store index of the last change.
    pub modify_index: u64,
}

impl ServiceIdentity {
    /// Consul's synthetic policy rules for this identity.
    pub fn rules(&self) -> String {
        let name = &self.service_name;
        format!(
            "service {name:?} {{ policy = \"write\" }}\nservice \"{name}-sidecar-proxy\" {{ policy = \"write\" }}\nservice_prefix \"\" {{ policy = \"read\" }}\nnode_prefix \"\" {{ policy = \"read\" }}\n"
        )
    }

    fn applies_in(&self, datacenter: &str) -> bool {
        self.datacenters.is_empty() || self.datacenters.iter().any(|d| d == datacenter)
    }
}

impl NodeIdentity {
    /// Consul's synthetic policy rules for this identity.
    pub fn rules(&self) -> String {
        format!(
            "node {:?} {{ policy = \"write\" }}\nservice_prefix \"\" {{ policy = \"read\" }}\n",
            self.node_name
        )
    }
}

/// An ACL token.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    /// Public id.
    pub accessor_id: String,
    /// The secret presented by clients.
    pub secret_id: SecretId,
    /// Free text.
    pub description: String,
    /// Linked policies.
    pub policies: Vec<PolicyLink>,
    /// Linked roles.
    #[serde(default)]
    pub roles: Vec<PolicyLink>,
    /// Service identities.
    #[serde(default)]
    pub service_identities: Vec<ServiceIdentity>,
    /// Node identities.
    #[serde(default)]
    pub node_identities: Vec<NodeIdentity>,
    /// Templated policies.
    #[serde(default)]
    pub templated_policies: Vec<TemplatedPolicy>,
    /// The auth method whose `login` made the token (empty: made directly).
    #[serde(default)]
    pub auth_method: String,
    /// Datacenter-local token.
    pub local: bool,
    /// RFC 3339 creation time.
    pub create_time: String,
    /// RFC 3339 time the token stops existing, if it expires.
    #[serde(default)]
    pub expiration_time: Option<String>,
    /// Store index at creation.
    pub create_index: u64,
    /// Store index of the last change.
    pub modify_index: u64,
}

impl Token {
    /// Whether this token links the built-in management policy.
    pub fn is_management(&self) -> bool {
        self.policies.iter().any(|p| p.id == MANAGEMENT_POLICY_ID)
    }

    /// Whether the token has expired at `now`: an expired token is treated as one that does
    /// not exist (Consul's `IsExpired`).
    pub fn is_expired(&self, now: SystemTime) -> bool {
        self.expiration_time
            .as_deref()
            .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
            .is_some_and(|at| at <= now)
    }
}

/// An ACL policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// Id (UUID).
    pub id: String,
    /// Unique name.
    pub name: String,
    /// Free text.
    pub description: String,
    /// Rules text (HCL or JSON).
    pub rules: String,
    /// Datacenters the policy applies in (empty: all).
    pub datacenters: Vec<String>,
    /// Store index at creation.
    pub create_index: u64,
    /// Store index of the last change.
    pub modify_index: u64,
}

/// Resolves presented secrets to authorizers from a snapshot of tokens and policies.
#[derive(Debug, Clone, Default)]
pub struct AclResolver {
    enabled: bool,
    master: Option<SecretId>,
    /// This server's datacenter (identities and policies may be limited to some).
    datacenter: String,
    tokens: Vec<Token>,
    policies: HashMap<String, (Policy, Rules)>,
    roles: HashMap<String, Role>,
}

impl AclResolver {
    /// ACLs off: everything is allowed and `/v1/acl/*` answers `ACL support disabled`.
    pub fn disabled() -> Self {
        Self::default()
    }

    /// ACLs on, with the configured master (initial management) token.
    pub fn enabled(master: SecretId) -> Self {
        Self {
            enabled: true,
            master: Some(master),
            ..Self::default()
        }
    }

    /// Whether ACLs are enforced.
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// Sets the datacenter that identities limited to some datacenters are checked against.
    pub fn set_datacenter(&mut self, datacenter: &str) {
        datacenter.clone_into(&mut self.datacenter);
    }

    /// Replaces the role snapshot (kept apart from [`Self::load`], which older callers use).
    pub fn load_roles(&mut self, roles: Vec<Role>) {
        self.roles = roles.into_iter().map(|r| (r.id.clone(), r)).collect();
    }

    /// Replaces the token and policy snapshot. Policies whose rules no longer parse grant nothing.
    pub fn load(&mut self, tokens: Vec<Token>, policies: Vec<Policy>) {
        self.tokens = tokens;
        self.policies = policies
            .into_iter()
            .map(|p| {
                let rules = parse_rules(&p.rules).unwrap_or_default();
                (p.id.clone(), (p, rules))
            })
            .collect();
    }

    /// The token a secret belongs to (not the master token, which has no stored record); an
    /// expired token belongs to no one.
    pub fn token_for(&self, secret: &str) -> Option<&Token> {
        // Scan every token so the time taken does not depend on which one matched.
        let mut found = None;
        for t in &self.tokens {
            if t.secret_id.matches(secret) && found.is_none() {
                found = Some(t);
            }
        }
        found.filter(|t| !t.is_expired(SystemTime::now()))
    }

    /// The rules a token grants: its policies', its roles' policies', and the synthetic
    /// policies of its and its roles' service and node identities.
    fn grants(&self, token: &Token) -> Vec<(String, Rules)> {
        let mut out: Vec<(String, Rules)> = Vec::new();
        let mut policy_ids: Vec<&str> = token.policies.iter().map(|l| l.id.as_str()).collect();
        let mut services: Vec<&ServiceIdentity> = token.service_identities.iter().collect();
        let mut nodes: Vec<&NodeIdentity> = token.node_identities.iter().collect();
        let mut templated: Vec<&TemplatedPolicy> = token.templated_policies.iter().collect();
        for link in &token.roles {
            if let Some(role) = self.roles.get(&link.id) {
                policy_ids.extend(role.policies.iter().map(|l| l.id.as_str()));
                services.extend(role.service_identities.iter());
                nodes.extend(role.node_identities.iter());
                templated.extend(role.templated_policies.iter());
            }
        }
        policy_ids.sort_unstable();
        policy_ids.dedup();
        for id in policy_ids {
            if let Some((p, rules)) = self.policies.get(id)
                && (p.datacenters.is_empty()
                    || self.datacenter.is_empty()
                    || p.datacenters.contains(&self.datacenter))
            {
                out.push((p.rules.clone(), rules.clone()));
            }
        }
        let synthetic = services
            .into_iter()
            .filter(|s| self.datacenter.is_empty() || s.applies_in(&self.datacenter))
            .map(ServiceIdentity::rules)
            .chain(
                nodes
                    .into_iter()
                    .filter(|n| self.datacenter.is_empty() || n.datacenter == self.datacenter)
                    .map(NodeIdentity::rules),
            )
            .chain(
                templated
                    .into_iter()
                    .filter(|t| self.datacenter.is_empty() || t.applies_in(&self.datacenter))
                    .map(TemplatedPolicy::rules),
            );
        for text in synthetic {
            let rules = parse_rules(&text).unwrap_or_default();
            out.push((text, rules));
        }
        out
    }

    /// Whether `token` grants everything: it links the management policy directly or by a
    /// role.
    fn grants_all(&self, token: &Token) -> bool {
        token.is_management()
            || token.roles.iter().any(|l| {
                self.roles
                    .get(&l.id)
                    .is_some_and(|r| r.policies.iter().any(|p| p.id == MANAGEMENT_POLICY_ID))
            })
    }

    /// The policies of the secret presented with a request (`None` or empty: anonymous);
    /// `None` when everything is allowed (ACLs off, master or management token).
    fn policies_of(&self, secret: Option<&str>) -> Result<Option<Vec<(String, Rules)>>, AclError> {
        if !self.enabled {
            return Ok(None);
        }
        let secret = match secret {
            None | Some("") => ANONYMOUS_SECRET,
            Some(s) => s,
        };
        if self.master.as_ref().is_some_and(|m| m.matches(secret)) {
            return Ok(None);
        }
        let token = match self.token_for(secret) {
            Some(t) => t,
            None if secret == ANONYMOUS_SECRET => return Ok(Some(vec![])),
            None => return Err(AclError::NotFound),
        };
        if self.grants_all(token) {
            return Ok(None);
        }
        Ok(Some(self.grants(token)))
    }

    /// Resolves the secret presented with a request (`None` or empty: anonymous).
    pub fn resolve(&self, secret: Option<&str>) -> Result<Authorizer, AclError> {
        Ok(match self.policies_of(secret)? {
            None => Authorizer::AllowAll,
            Some(policies) => Authorizer::from_rules(policies.iter().map(|(_, r)| r)),
        })
    }

    /// What an agent needs to build the secret's authorizer itself: `None` for everything,
    /// else the rules texts of its policies (see [`Authorizer::from_rule_texts`]).
    pub fn rule_texts(&self, secret: Option<&str>) -> Result<Option<Vec<String>>, AclError> {
        Ok(self
            .policies_of(secret)?
            .map(|policies| policies.into_iter().map(|(text, _)| text).collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acl::{Need, Resource};

    fn policy(id: &str, rules: &str) -> Policy {
        Policy {
            id: id.into(),
            name: format!("p-{id}"),
            description: String::new(),
            rules: rules.into(),
            datacenters: vec![],
            create_index: 1,
            modify_index: 1,
        }
    }

    fn token(secret: &str, policies: &[&str]) -> Token {
        Token {
            accessor_id: uuid::Uuid::new_v4().to_string(),
            secret_id: SecretId::new(secret),
            description: String::new(),
            policies: policies
                .iter()
                .map(|p| PolicyLink {
                    id: (*p).into(),
                    name: format!("p-{p}"),
                })
                .collect(),
            local: false,
            create_time: String::new(),
            create_index: 1,
            modify_index: 1,
            ..Token::default()
        }
    }

    #[test]
    fn resolution_follows_consul() {
        let mut r = AclResolver::enabled(SecretId::new("root"));
        r.load(
            vec![
                token("ro", &["kvread"]),
                token("mgmt", &[MANAGEMENT_POLICY_ID]),
                token(ANONYMOUS_SECRET, &["nodes"]),
            ],
            vec![
                policy("kvread", r#"key_prefix "" { policy = "read" }"#),
                policy("nodes", r#"node_prefix "" { policy = "read" }"#),
            ],
        );
        assert!(r.resolve(Some("root")).unwrap().is_management());
        assert!(r.resolve(Some("mgmt")).unwrap().is_management());
        let ro = r.resolve(Some("ro")).unwrap();
        assert!(ro.allows(Resource::Key, "x", Need::Read));
        assert!(!ro.allows(Resource::Key, "x", Need::Write));
        assert_eq!(r.resolve(Some("nope")).unwrap_err(), AclError::NotFound);
        for anon in [None, Some("")] {
            let a = r.resolve(anon).unwrap();
            assert!(a.allows(Resource::Node, "n", Need::Read));
            assert!(!a.allows(Resource::Key, "x", Need::Read));
        }
        assert!(
            AclResolver::disabled()
                .resolve(Some("x"))
                .unwrap()
                .is_management()
        );
    }

    #[test]
    fn rule_texts_rebuild_the_same_authorizer_elsewhere() {
        let mut r = AclResolver::enabled(SecretId::new("root"));
        let kv = r#"key_prefix "app/" { policy = "write" }"#;
        r.load(
            vec![
                token("app", &["kv", "gone"]),
                token("mgmt", &[MANAGEMENT_POLICY_ID]),
            ],
            vec![policy("kv", kv)],
        );
        let texts = r.rule_texts(Some("app")).unwrap().unwrap();
        assert_eq!(texts, [kv]);
        let rebuilt = Authorizer::from_rule_texts(texts.iter().map(String::as_str));
        assert!(rebuilt.allows(Resource::Key, "app/x", Need::Write));
        assert!(!rebuilt.allows(Resource::Key, "other", Need::Read));
        assert_eq!(r.rule_texts(Some("root")).unwrap(), None);
        assert_eq!(r.rule_texts(Some("mgmt")).unwrap(), None);
        assert_eq!(r.rule_texts(None).unwrap(), Some(vec![]));
        assert_eq!(r.rule_texts(Some("nope")).unwrap_err(), AclError::NotFound);
        assert_eq!(AclResolver::disabled().rule_texts(Some("x")).unwrap(), None);
    }

    #[test]
    fn expired_tokens_do_not_exist_and_roles_and_identities_grant() {
        let mut r = AclResolver::enabled(SecretId::new("root"));
        r.set_datacenter("dc1");
        let mut expired = token("old", &["kvread"]);
        expired.expiration_time = Some("2000-01-01T00:00:00Z".into());
        let mut later = token("later", &["kvread"]);
        later.expiration_time = Some("2999-01-01T00:00:00Z".into());
        let mut by_role = token("role", &[]);
        by_role.roles = vec![PolicyLink {
            id: "r1".into(),
            name: "reader".into(),
        }];
        let mut by_mgmt_role = token("mgmt-role", &[]);
        by_mgmt_role.roles = vec![PolicyLink {
            id: "r2".into(),
            name: "admin".into(),
        }];
        let mut svc = token("svc", &[]);
        svc.service_identities = vec![ServiceIdentity {
            service_name: "web".into(),
            datacenters: vec![],
        }];
        let mut node = token("node", &[]);
        node.node_identities = vec![
            NodeIdentity {
                node_name: "n1".into(),
                datacenter: "dc1".into(),
            },
            NodeIdentity {
                node_name: "n2".into(),
                datacenter: "dc2".into(),
            },
        ];
        r.load(
            vec![expired, later, by_role, by_mgmt_role, svc, node],
            vec![policy("kvread", r#"key_prefix "" { policy = "read" }"#)],
        );
        r.load_roles(vec![
            Role {
                id: "r1".into(),
                name: "reader".into(),
                policies: vec![PolicyLink {
                    id: "kvread".into(),
                    name: "p-kvread".into(),
                }],
                node_identities: vec![NodeIdentity {
                    node_name: "rn".into(),
                    datacenter: "dc1".into(),
                }],
                ..Role::default()
            },
            Role {
                id: "r2".into(),
                name: "admin".into(),
                policies: vec![PolicyLink {
                    id: MANAGEMENT_POLICY_ID.into(),
                    name: MANAGEMENT_POLICY_NAME.into(),
                }],
                ..Role::default()
            },
        ]);
        assert_eq!(r.resolve(Some("old")).unwrap_err(), AclError::NotFound);
        assert!(r.token_for("old").is_none());
        assert!(
            r.resolve(Some("later"))
                .unwrap()
                .allows(Resource::Key, "k", Need::Read)
        );
        let role = r.resolve(Some("role")).unwrap();
        assert!(role.allows(Resource::Key, "k", Need::Read));
        assert!(role.allows(Resource::Node, "rn", Need::Write));
        assert!(r.resolve(Some("mgmt-role")).unwrap().is_management());
        let svc = r.resolve(Some("svc")).unwrap();
        assert!(svc.allows(Resource::Service, "web", Need::Write));
        assert!(svc.allows(Resource::Service, "web-sidecar-proxy", Need::Write));
        assert!(!svc.allows(Resource::Service, "db", Need::Write));
        assert!(svc.allows(Resource::Service, "db", Need::Read));
        assert!(svc.allows(Resource::Node, "any", Need::Read));
        assert!(!svc.allows(Resource::Key, "k", Need::Read));
        let node = r.resolve(Some("node")).unwrap();
        assert!(node.allows(Resource::Node, "n1", Need::Write));
        assert!(
            !node.allows(Resource::Node, "n2", Need::Write),
            "other datacenter"
        );
        assert!(node.allows(Resource::Service, "x", Need::Read));
        assert!(!node.allows(Resource::Node, "other", Need::Read));
    }

    #[test]
    fn secrets_never_print() {
        let t = token("very-secret", &[]);
        assert!(!format!("{t:?}").contains("very-secret"));
    }
}
