//! Consul's built-in templated policies: a template name plus variables (today only `name`)
//! that a token or role links, rendered into a synthetic policy when the token is resolved.
//! The templates and their texts are Consul's (`consul acl templated-policy list`).

use serde::{Deserialize, Serialize};

/// A built-in template.
#[derive(Debug)]
pub struct Template {
    /// `builtin/...`.
    pub name: &'static str,
    /// Consul's fixed id of the template (never shown to users by Consul either).
    pub id: &'static str,
    /// JSON schema of the variables; empty when the template takes none.
    pub schema: &'static str,
    /// The rules text, with `{{.Name}}` where the `name` variable goes.
    pub template: &'static str,
    /// What it is for.
    pub description: &'static str,
}

/// The schema of templates that need a non-empty `name`.
const NAME_SCHEMA: &str = "{\n\t\"type\": \"object\",\n\t\"properties\": {\n\t\t\"name\": { \"type\": \"string\", \"$ref\": \"#/definitions/min-length-one\" }\n\t},\n\t\"required\": [\"name\"],\n\t\"definitions\": {\n\t\t\"min-length-one\": {\n\t\t\t\t\"type\": \"string\",\n\t\t\t\t\"minLength\": 1\n\t\t}\n\t}\n}";

/// Every built-in template, by name.
pub const TEMPLATES: &[Template] = &[
    Template {
        name: "builtin/service",
        id: "00000000-0000-0000-0000-000000000003",
        schema: NAME_SCHEMA,
        template: "\nservice \"{{.Name}}\" {\n\tpolicy = \"write\"\n}\nservice \"{{.Name}}-sidecar-proxy\" {\n\tpolicy = \"write\"\n}\nservice_prefix \"\" {\n\tpolicy = \"read\"\n}\nnode_prefix \"\" {\n\tpolicy = \"read\"\n}",
        description: "Gives the token or role permissions to register a service and discover services in the Consul catalog. It also gives the specified service's sidecar proxy the permission to discover and route traffic to other services.",
    },
    Template {
        name: "builtin/node",
        id: "00000000-0000-0000-0000-000000000004",
        schema: NAME_SCHEMA,
        template: "\nnode \"{{.Name}}\" {\n\tpolicy = \"write\"\n}\nservice_prefix \"\" {\n\tpolicy = \"read\"\n}",
        description: "Gives the token or role permissions for a register an agent/node into the catalog. A node is typically a consul agent but can also be a physical server, cloud instance or a container.",
    },
    Template {
        name: "builtin/dns",
        id: "00000000-0000-0000-0000-000000000005",
        schema: "",
        template: "\nnode_prefix \"\" {\n\tpolicy = \"read\"\n}\nservice_prefix \"\" {\n\tpolicy = \"read\"\n}\nquery_prefix \"\" {\n\tpolicy = \"read\"\n}",
        description: "Gives the token or role permissions for the Consul DNS to query services in the network.",
    },
    Template {
        name: "builtin/nomad-server",
        id: "00000000-0000-0000-0000-000000000006",
        schema: "",
        template: "\nacl = \"write\"\nagent_prefix \"\" {\n  policy = \"read\"\n}\nnode_prefix \"\" {\n  policy = \"read\"\n}\nservice_prefix \"\" {\n  policy = \"write\"\n}",
        description: "Gives the token or role permissions required for integration with a nomad server.",
    },
    Template {
        name: "builtin/api-gateway",
        id: "00000000-0000-0000-0000-000000000008",
        schema: NAME_SCHEMA,
        template: "mesh = \"read\"\nnode_prefix \"\" {\n\tpolicy = \"read\"\n}\nservice_prefix \"\" {\n\tpolicy = \"read\"\n}\nservice \"{{.Name}}\" {\n\tpolicy = \"write\"\n}",
        description: "Gives the token or role permissions for a Consul api gateway",
    },
    Template {
        name: "builtin/nomad-client",
        id: "00000000-0000-0000-0000-000000000009",
        schema: "",
        template: "agent \"{{.Name}}\" {\n  policy = \"read\"\n}\nnode \"{{.Name}}\" {\n  policy = \"write\"\n}\nservice_prefix \"\" {\n  policy = \"write\"\n}\n",
        description: "Gives the token or role permissions required for integration with a nomad client.",
    },
];

/// The built-in template called `name`.
pub fn template(name: &str) -> Option<&'static Template> {
    TEMPLATES.iter().find(|t| t.name == name)
}

/// A templated policy a token or role links.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplatedPolicy {
    /// The template (`builtin/service`, ...).
    pub template_name: String,
    /// The `name` variable; empty when the template takes none.
    #[serde(default)]
    pub name: String,
    /// Datacenters it applies in (empty: all).
    #[serde(default)]
    pub datacenters: Vec<String>,
}

/// Whether `name` is a valid service or node identity name (Consul's rule: lowercase letters,
/// digits, `-` and `_`, starting and ending with a letter or digit, at most 256 bytes).
pub fn valid_identity_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    let inner = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-' || *b == b'_';
    let edge = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    !bytes.is_empty()
        && bytes.len() <= 256
        && bytes.first().is_some_and(edge)
        && bytes.last().is_some_and(edge)
        && bytes.iter().all(inner)
}

impl TemplatedPolicy {
    /// Checks the template exists and the variables fit its schema; the texts are Consul's.
    pub fn check(&self) -> Result<&'static Template, String> {
        let t = template(&self.template_name).ok_or_else(|| {
            format!(
                "Invalid templated policy Name: {}",
                if self.template_name.is_empty() {
                    "(none)"
                } else {
                    &self.template_name
                }
            )
        })?;
        if t.schema.is_empty() {
            return Ok(t);
        }
        if self.name.is_empty() {
            return Err(format!(
                "validation error for templated policy: {}: name is required",
                t.name
            ));
        }
        let kind = match t.name {
            "builtin/service" => Some("service"),
            "builtin/node" => Some("node"),
            _ => None,
        };
        if let Some(kind) = kind
            && !valid_identity_name(&self.name)
        {
            return Err(format!(
                "{kind} identity {:?} has an invalid name. Only lowercase alphanumeric characters, '-' and '_' are allowed",
                self.name
            ));
        }
        Ok(t)
    }

    /// The rules text of the synthetic policy (an unknown template renders nothing).
    pub fn rules(&self) -> String {
        template(&self.template_name)
            .map(|t| t.template.replace("{{.Name}}", &self.name))
            .unwrap_or_default()
    }

    /// Whether it applies in `datacenter`.
    pub fn applies_in(&self, datacenter: &str) -> bool {
        self.datacenters.is_empty() || self.datacenters.iter().any(|d| d == datacenter)
    }
}

/// The synthetic policy id Consul shows for rendered rules. Consul computes it as
/// `fnv.New128a().Sum(rules)`, which appends the hash of nothing to the text: the id is the
/// rules in hex followed by FNV-1a-128's offset basis. Kept as Consul shows it.
pub fn synthetic_id(rules: &str) -> String {
    let mut out: String = rules.bytes().map(|b| format!("{b:02x}")).collect();
    out.push_str("6c62272e07bb014262b821756295c58d");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acl::{Authorizer, Need, Resource, parse_rules};

    fn linked(template: &str, name: &str) -> TemplatedPolicy {
        TemplatedPolicy {
            template_name: template.into(),
            name: name.into(),
            datacenters: vec![],
        }
    }

    #[test]
    fn every_template_renders_rules_that_parse() {
        for t in TEMPLATES {
            let rules = linked(t.name, "web").rules();
            parse_rules(&rules).unwrap_or_else(|e| panic!("{}: {e}", t.name));
        }
    }

    #[test]
    fn a_service_template_grants_what_a_service_identity_does() {
        let rules = parse_rules(&linked("builtin/service", "web").rules()).unwrap();
        let a = Authorizer::from_rules([&rules]);
        assert!(a.allows(Resource::Service, "web", Need::Write));
        assert!(a.allows(Resource::Service, "web-sidecar-proxy", Need::Write));
        assert!(!a.allows(Resource::Service, "db", Need::Write));
        assert!(a.allows(Resource::Service, "db", Need::Read));
        assert!(a.allows(Resource::Node, "n1", Need::Read));
        assert!(!a.allows(Resource::Key, "x", Need::Read));
    }

    #[test]
    fn variables_are_checked_against_the_template() {
        assert!(linked("builtin/dns", "").check().is_ok());
        assert!(linked("builtin/node", "node-1").check().is_ok());
        assert_eq!(
            linked("builtin/service", "").check().unwrap_err(),
            "validation error for templated policy: builtin/service: name is required"
        );
        assert!(
            linked("builtin/service", "Web")
                .check()
                .unwrap_err()
                .contains("has an invalid name")
        );
        assert_eq!(
            linked("builtin/nope", "x").check().unwrap_err(),
            "Invalid templated policy Name: builtin/nope"
        );
    }
}
