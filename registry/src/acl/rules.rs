//! Parser for Consul ACL rules in their HCL and JSON forms.
//!
//! Enforced: `key`, `key_prefix`, `service`, `service_prefix`, `node`, `node_prefix`,
//! `session`, `session_prefix`, `agent`, `agent_prefix`, `event`, `event_prefix` blocks
//! (`<kind> "<name>" { policy = ".." }`) and the `operator` and `acl` attributes
//! (`operator = "read"`).
//! Accepted, validated and ignored (the rest of Consul's grammar, for APIs berth does not serve):
//! `query`, `query_prefix`, `identity`, `identity_prefix` blocks and the
//! `keyring`, `mesh`, `peering` attributes. A token's access to those APIs is therefore never
//! granted by berth: they do not exist here.
//! Policies: `read`, `write`, `deny`, `list` (`list` only on key rules, as in Consul).

use super::AclError;

/// What a rule grants. Precedence when rules for the same name are merged: deny, write, read, list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Access {
    /// List keys under a prefix without reading values.
    List,
    /// Read (implies list).
    Read,
    /// Read and write.
    Write,
    /// Nothing, overriding less specific grants.
    Deny,
}

impl Access {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "list" => Some(Self::List),
            "read" => Some(Self::Read),
            "write" => Some(Self::Write),
            "deny" => Some(Self::Deny),
            _ => None,
        }
    }

    /// The access that wins when two policies name the same resource.
    pub(crate) fn merge(self, other: Self) -> Self {
        self.max(other)
    }
}

/// Resources governed by name-segmented rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Resource {
    /// KV keys.
    Key,
    /// Catalog services (by service name).
    Service,
    /// Catalog nodes (by node name).
    Node,
    /// Sessions (by the node they are on).
    Session,
    /// Agent endpoints (by the agent's node name).
    Agent,
    /// User events (by event name).
    Event,
}

impl Resource {
    fn from_block(ident: &str) -> Option<(Self, bool)> {
        Some(match ident {
            "key" => (Self::Key, false),
            "key_prefix" => (Self::Key, true),
            "service" => (Self::Service, false),
            "service_prefix" => (Self::Service, true),
            "node" => (Self::Node, false),
            "node_prefix" => (Self::Node, true),
            "session" => (Self::Session, false),
            "session_prefix" => (Self::Session, true),
            "agent" => (Self::Agent, false),
            "agent_prefix" => (Self::Agent, true),
            "event" => (Self::Event, false),
            "event_prefix" => (Self::Event, true),
            _ => return None,
        })
    }
}

/// One segmented rule, such as `key_prefix "app/" { policy = "read" }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The resource kind.
    pub resource: Resource,
    /// Exact name or prefix.
    pub name: String,
    /// Whether `name` is a prefix (`*_prefix` form).
    pub prefix: bool,
    /// The granted access.
    pub access: Access,
}

/// All rules of one policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules {
    /// Segmented rules in source order.
    pub rules: Vec<Rule>,
    /// `operator = ".."`.
    pub operator: Option<Access>,
    /// `acl = ".."`.
    pub acl: Option<Access>,
}

const GLOBAL_ATTRS: &[&str] = &["operator", "acl", "keyring", "mesh", "peering"];

/// Block kinds of Consul's rule grammar that berth accepts but does not enforce.
const IGNORED_BLOCKS: &[&str] = &["query", "query_prefix", "identity", "identity_prefix"];

/// Parses a rules document; JSON when it starts with `{`, HCL otherwise. Empty rules are valid.
pub fn parse_rules(text: &str) -> Result<Rules, AclError> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Ok(Rules::default());
    }
    let mut out = Rules::default();
    if trimmed.starts_with('{') {
        let value: serde_json::Value =
            serde_json::from_str(trimmed).map_err(|e| AclError::Parse(e.to_string()))?;
        parse_json(&value, &mut out)?;
    } else {
        let body = hcl::parse(trimmed).map_err(|e| AclError::Parse(e.to_string()))?;
        parse_hcl(&body, &mut out)?;
    }
    Ok(out)
}

fn set_global(out: &mut Rules, key: &str, policy: &str) -> Result<(), AclError> {
    let access = Access::parse(policy)
        .filter(|a| *a != Access::List)
        .ok_or_else(|| AclError::InvalidRule(format!("invalid {key} policy {policy:?}")))?;
    match key {
        "operator" => out.operator = Some(access),
        "acl" => out.acl = Some(access),
        _ => {}
    }
    Ok(())
}

fn push_rule(
    out: &mut Rules,
    kind: &str,
    name: &str,
    policy: Option<&str>,
) -> Result<(), AclError> {
    let missing = || AclError::InvalidRule(format!("{kind} {name:?}: missing policy"));
    let invalid = |p: &str| AclError::InvalidRule(format!("{kind} {name:?}: invalid policy {p:?}"));
    if IGNORED_BLOCKS.contains(&kind) {
        let policy = policy.ok_or_else(missing)?;
        return match Access::parse(policy) {
            Some(Access::Read | Access::Write | Access::Deny) => Ok(()),
            _ => Err(invalid(policy)),
        };
    }
    let (resource, prefix) = Resource::from_block(kind)
        .ok_or_else(|| AclError::InvalidRule(format!("unknown rule kind {kind:?}")))?;
    let policy = policy.ok_or_else(missing)?;
    let access = Access::parse(policy)
        .filter(|a| *a != Access::List || resource == Resource::Key)
        .ok_or_else(|| invalid(policy))?;
    out.rules.push(Rule {
        resource,
        name: name.to_owned(),
        prefix,
        access,
    });
    Ok(())
}

fn parse_hcl(body: &hcl::Body, out: &mut Rules) -> Result<(), AclError> {
    for structure in body.iter() {
        match structure {
            hcl::Structure::Attribute(attr) => {
                let key = attr.key();
                if !GLOBAL_ATTRS.contains(&key) {
                    return Err(AclError::InvalidRule(format!("unknown attribute {key:?}")));
                }
                let hcl::Expression::String(policy) = attr.expr() else {
                    return Err(AclError::InvalidRule(format!(
                        "{key}: policy must be a string"
                    )));
                };
                set_global(out, key, policy)?;
            }
            hcl::Structure::Block(block) => {
                let kind = block.identifier();
                let [label] = block.labels() else {
                    return Err(AclError::InvalidRule(format!(
                        "{kind}: expected exactly one name label"
                    )));
                };
                let mut policy = None;
                for attr in block.body().attributes() {
                    match (attr.key(), attr.expr()) {
                        ("policy", hcl::Expression::String(p)) => policy = Some(p.as_str()),
                        ("intentions", _) => {}
                        (other, _) => {
                            return Err(AclError::InvalidRule(format!(
                                "{kind} {:?}: unsupported attribute {other:?}",
                                label.as_str()
                            )));
                        }
                    }
                }
                push_rule(out, kind, label.as_str(), policy)?;
            }
        }
    }
    Ok(())
}

fn parse_json(value: &serde_json::Value, out: &mut Rules) -> Result<(), AclError> {
    let obj = value
        .as_object()
        .ok_or_else(|| AclError::Parse("rules must be a JSON object".into()))?;
    for (kind, v) in obj {
        if GLOBAL_ATTRS.contains(&kind.as_str()) {
            let policy = v
                .as_str()
                .ok_or_else(|| AclError::InvalidRule(format!("{kind}: policy must be a string")))?;
            set_global(out, kind, policy)?;
            continue;
        }
        // `"key_prefix": {"app/": {"policy": "read"}}` or a list of such objects.
        let groups: Vec<&serde_json::Value> = match v {
            serde_json::Value::Array(items) => items.iter().collect(),
            other => vec![other],
        };
        for group in groups {
            let names = group
                .as_object()
                .ok_or_else(|| AclError::InvalidRule(format!("{kind}: expected an object")))?;
            for (name, rule) in names {
                let policy = rule.get("policy").and_then(|p| p.as_str());
                push_rule(out, kind, name, policy)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(resource: Resource, name: &str, prefix: bool, access: Access) -> Rule {
        Rule {
            resource,
            name: name.into(),
            prefix,
            access,
        }
    }

    #[test]
    fn hcl_and_json_forms_parse_to_the_same_rules() {
        let hcl = r#"
            key_prefix "app/" { policy = "read" }
            key "app/secret" { policy = "deny" }
            service_prefix "" { policy = "write" }
            node "n1" { policy = "read" }
            session_prefix "" { policy = "write" }
            agent_prefix "" { policy = "read" }
            key_prefix "list/" { policy = "list" }
            operator = "read"
            acl = "write"
        "#;
        let json = r#"{
            "key_prefix": {"app/": {"policy": "read"}, "list/": {"policy": "list"}},
            "key": [{"app/secret": {"policy": "deny"}}],
            "service_prefix": {"": {"policy": "write"}},
            "node": {"n1": {"policy": "read"}},
            "session_prefix": {"": {"policy": "write"}},
            "agent_prefix": {"": {"policy": "read"}},
            "operator": "read",
            "acl": "write"
        }"#;
        let mut a = parse_rules(hcl).unwrap();
        let mut b = parse_rules(json).unwrap();
        let key = |r: &Rule| (format!("{:?}", r.resource), r.name.clone(), r.prefix);
        a.rules.sort_by_key(key);
        b.rules.sort_by_key(key);
        assert_eq!(a, b);
        assert!(
            a.rules
                .contains(&rule(Resource::Key, "app/", true, Access::Read))
        );
        assert!(
            a.rules
                .contains(&rule(Resource::Key, "app/secret", false, Access::Deny))
        );
        assert!(
            a.rules
                .contains(&rule(Resource::Key, "list/", true, Access::List))
        );
        assert_eq!(a.operator, Some(Access::Read));
        assert_eq!(a.acl, Some(Access::Write));
    }

    #[test]
    fn invalid_rules_are_rejected() {
        let cases = [
            r#"key_prefix "a" { policy = "admin" }"#,
            r#"bogus "a" { policy = "read" }"#,
            r#"service "a" { policy = "list" }"#,
            r#"key "a" { }"#,
            r#"key { policy = "read" }"#,
            r#"operator = "list""#,
            r#"unknown = "read""#,
            r#"{"key": {"a": {"policy": "nope"}}}"#,
            r#"{"key": "read"}"#,
            "key_prefix \"a\" {",
            "[1,2]",
        ];
        for case in cases {
            assert!(parse_rules(case).is_err(), "accepted {case:?}");
        }
    }

    #[test]
    fn unenforced_consul_rule_kinds_are_accepted_and_ignored() {
        // Consul's documented DNS policy, plus every other kind of its grammar berth ignores.
        let hcl = r#"
            node_prefix "" { policy = "read" }
            service_prefix "" { policy = "read" }
            query_prefix "" { policy = "read" }
            query "q" { policy = "write" }
            identity_prefix "" { policy = "read" }
            identity "web" {
                policy = "write"
                intentions = "read"
            }
            keyring = "read"
            mesh = "write"
            peering = "read"
        "#;
        let json = r#"{
            "node_prefix": {"": {"policy": "read"}},
            "service_prefix": {"": {"policy": "read"}},
            "query_prefix": {"": {"policy": "read"}},
            "identity": {"web": {"policy": "write", "intentions": "read"}},
            "keyring": "read",
            "mesh": "write",
            "peering": "read"
        }"#;
        for text in [hcl, json] {
            let rules = parse_rules(text).unwrap();
            assert_eq!(
                rules.rules,
                [
                    rule(Resource::Node, "", true, Access::Read),
                    rule(Resource::Service, "", true, Access::Read),
                ],
                "{text}"
            );
            assert_eq!(rules.operator, None);
            assert_eq!(rules.acl, None);
        }
        for bad in [
            r#"query_prefix "" { policy = "list" }"#,
            r#"event "x" { policy = "admin" }"#,
            r#"identity "x" { }"#,
            r#"mesh = "list""#,
        ] {
            assert!(parse_rules(bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn empty_rules_are_valid() {
        assert_eq!(parse_rules("  \n").unwrap(), Rules::default());
        assert_eq!(parse_rules("{}").unwrap(), Rules::default());
    }
}
