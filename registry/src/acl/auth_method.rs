//! ACL auth methods and binding rules as Consul stores them, with Consul's checks of a method's
//! type and configuration and of a rule's bind type and name. berth stores and manages them;
//! it has no validator that verifies a credential, so `login` refuses every bearer token.
//! Nothing here knows HTTP.

use serde::{Deserialize, Serialize};

/// The auth method types Consul's community edition registers.
pub const TYPES: &[&str] = &["aws-iam", "jwt", "kubernetes", "oidc"];

/// The bind types a binding rule may have.
pub const BIND_TYPES: &[&str] = &["node", "policy", "role", "service", "templated-policy"];

/// An auth method.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AuthMethod {
    /// Unique, immutable.
    pub name: String,
    /// One of [`TYPES`], immutable.
    pub kind: String,
    /// Shown instead of the name.
    pub display_name: String,
    /// Free text.
    pub description: String,
    /// The type's configuration, as given.
    pub config: serde_json::Map<String, serde_json::Value>,
    /// Longest life of a token made by `login`, as a Go duration text (empty: none).
    pub max_token_ttl: String,
    /// `local` (default) or `global`.
    pub token_locality: String,
    /// Name template of tokens made by `login`.
    pub token_name_format: String,
    /// Store index at creation.
    pub create_index: u64,
    /// Store index of the last change.
    pub modify_index: u64,
}

/// A binding rule: which identities of an auth method get what at `login`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BindingRule {
    /// UUID.
    pub id: String,
    /// Free text.
    pub description: String,
    /// The auth method it belongs to (immutable).
    pub auth_method: String,
    /// A filter expression over the verified identity (empty: every identity).
    pub selector: String,
    /// One of [`BIND_TYPES`].
    pub bind_type: String,
    /// What is bound (may hold `${...}` interpolations of identity fields).
    pub bind_name: String,
    /// Variables of a templated policy binding.
    pub bind_vars: Option<serde_json::Value>,
    /// Store index at creation.
    pub create_index: u64,
    /// Store index of the last change.
    pub modify_index: u64,
}

/// Whether `name` is a valid auth method name (letters, digits, `-`, `_`; at most 128).
pub fn valid_method_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn has(config: &serde_json::Map<String, serde_json::Value>, key: &str) -> bool {
    config.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case(key)
            && match v {
                serde_json::Value::Null => false,
                serde_json::Value::String(s) => !s.is_empty(),
                serde_json::Value::Array(a) => !a.is_empty(),
                serde_json::Value::Object(o) => !o.is_empty(),
                _ => true,
            }
    })
}

impl AuthMethod {
    /// Checks the type and the type's configuration; the error is the text after
    /// `Invalid Auth Method: `.
    pub fn check_config(&self) -> Result<(), String> {
        if !TYPES.contains(&self.kind.as_str()) {
            return Err(format!("Type should be one of: {TYPES:?}"));
        }
        let c = &self.config;
        let require = |keys: &[&str]| -> Result<(), String> {
            keys.iter().try_for_each(|k| {
                if has(c, k) {
                    Ok(())
                } else {
                    Err(format!("Config.{k} is required"))
                }
            })
        };
        match self.kind.as_str() {
            "kubernetes" => require(&["Host", "CACert", "ServiceAccountJWT"]),
            "jwt" => {
                for k in [
                    "OIDCClientID",
                    "OIDCClientSecret",
                    "OIDCScopes",
                    "AllowedRedirectURIs",
                ] {
                    if has(c, k) {
                        return Err(format!("'{k}' must not be set for type \"jwt\""));
                    }
                }
                let sources = ["JWTValidationPubKeys", "JWKSURL", "OIDCDiscoveryURL"]
                    .iter()
                    .filter(|k| has(c, k))
                    .count();
                if sources != 1 {
                    return Err("exactly one of 'JWTValidationPubKeys', 'JWKSURL', or 'OIDCDiscoveryURL' must be set for type \"jwt\"".into());
                }
                Ok(())
            }
            "oidc" => {
                for k in [
                    "OIDCDiscoveryURL",
                    "OIDCClientID",
                    "OIDCClientSecret",
                    "AllowedRedirectURIs",
                ] {
                    if !has(c, k) {
                        return Err(format!("'{k}' must be set for type \"oidc\""));
                    }
                }
                Ok(())
            }
            _ => require(&["BoundIAMPrincipalARNs"]),
        }
    }

    /// The identity fields a binding rule's selector and bind name may use for this method.
    pub fn selectable_fields(&self) -> Vec<String> {
        match self.kind.as_str() {
            "kubernetes" => ["namespace", "name", "uid"]
                .iter()
                .map(|f| format!("serviceaccount.{f}"))
                .collect(),
            "aws-iam" => [
                "entity_name",
                "entity_id",
                "account_id",
                "entity_path",
                "entity_tags",
            ]
            .iter()
            .map(|f| (*f).to_owned())
            .collect(),
            _ => {
                let claims = |key: &str| -> Vec<String> {
                    self.config
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case(key))
                        .and_then(|(_, v)| v.as_object())
                        .map(|m| {
                            m.values()
                                .filter_map(|v| v.as_str().map(str::to_owned))
                                .collect()
                        })
                        .unwrap_or_default()
                };
                let mut out: Vec<String> = claims("ClaimMappings")
                    .into_iter()
                    .map(|c| format!("value.{c}"))
                    .collect();
                out.extend(
                    claims("ListClaimMappings")
                        .into_iter()
                        .map(|c| format!("list.{c}")),
                );
                out
            }
        }
    }
}

/// Checks a binding rule's bind type and name against the fields `fields` the method's
/// identities project; the error is the whole text Consul answers with.
pub fn check_binding(rule: &BindingRule, fields: &[String]) -> Result<(), String> {
    if rule.bind_type.is_empty() {
        return Err("Invalid Binding Rule: no BindType is set".into());
    }
    if rule.bind_name.is_empty() {
        return Err("Invalid Binding Rule: no BindName is set".into());
    }
    if !BIND_TYPES.contains(&rule.bind_type.as_str()) {
        return Err(format!(
            "Invalid Binding Rule: unknown BindType {:?}",
            rule.bind_type
        ));
    }
    if rule.bind_vars.is_some() && rule.bind_type != "templated-policy" {
        return Err(
            "Invalid Binding Rule: BindVars can only be set for a templated-policy BindType".into(),
        );
    }
    // Every `${x}` must name a projected field; the name with them filled in by a
    // placeholder must still be a valid name of its kind.
    let mut rendered = String::new();
    let mut rest = rule.bind_name.as_str();
    while let Some(start) = rest.find("${") {
        rendered.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or("Invalid Binding Rule: invalid BindName: unterminated ${")?;
        let field = after[..end].trim();
        if !fields.iter().any(|f| f == field) {
            return Err(format!(
                "Invalid Binding Rule: invalid BindName: unknown variable {field:?}"
            ));
        }
        rendered.push('x');
        rest = &after[end + 1..];
    }
    rendered.push_str(rest);
    let valid = match rule.bind_type.as_str() {
        "service" | "node" => super::templated::valid_identity_name(&rendered),
        "templated-policy" => super::templated::template(&rule.bind_name).is_some(),
        _ => {
            !rendered.is_empty()
                && rendered
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        }
    };
    if valid {
        Ok(())
    } else {
        Err("Invalid Binding Rule: invalid BindName".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn method(kind: &str, config: serde_json::Value) -> AuthMethod {
        AuthMethod {
            name: "m".into(),
            kind: kind.into(),
            config: config.as_object().cloned().unwrap_or_default(),
            ..AuthMethod::default()
        }
    }

    #[test]
    fn each_type_needs_its_configuration() {
        let k8s = serde_json::json!({"Host": "https://k8s:443", "CACert": "pem", "ServiceAccountJWT": "jwt"});
        assert_eq!(method("kubernetes", k8s).check_config(), Ok(()));
        assert_eq!(
            method("kubernetes", serde_json::json!({"Host": "h"})).check_config(),
            Err("Config.CACert is required".into())
        );
        assert!(
            method(
                "jwt",
                serde_json::json!({"JWKSURL": "u", "JWTValidationPubKeys": ["k"]})
            )
            .check_config()
            .unwrap_err()
            .starts_with("exactly one of")
        );
        assert_eq!(
            method("jwt", serde_json::json!({"jwksurl": "https://x/keys"})).check_config(),
            Ok(())
        );
        assert!(
            method("ldap", serde_json::json!({}))
                .check_config()
                .unwrap_err()
                .starts_with("Type should be one of")
        );
    }

    #[test]
    fn bind_names_use_only_projected_fields() {
        let m = method(
            "kubernetes",
            serde_json::json!({"Host": "h", "CACert": "c", "ServiceAccountJWT": "j"}),
        );
        let fields = m.selectable_fields();
        let rule = |t: &str, n: &str| BindingRule {
            bind_type: t.into(),
            bind_name: n.into(),
            ..BindingRule::default()
        };
        assert_eq!(
            check_binding(&rule("service", "${serviceaccount.name}"), &fields),
            Ok(())
        );
        assert!(
            check_binding(&rule("service", "${value.nope}"), &fields)
                .unwrap_err()
                .contains("unknown variable")
        );
        assert_eq!(
            check_binding(&rule("service", "Bad Name"), &fields),
            Err("Invalid Binding Rule: invalid BindName".into())
        );
        assert_eq!(
            check_binding(&rule("templated-policy", "builtin/dns"), &fields),
            Ok(())
        );
        assert!(
            check_binding(&rule("group", "x"), &fields)
                .unwrap_err()
                .contains("unknown BindType")
        );
    }
}
