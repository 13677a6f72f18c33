//! The authorizer: answers "may this token do X to Y" from merged policy rules.
//!
//! For a name, an exact rule beats every prefix rule, and among prefix rules the longest wins
//! (Consul's radix-tree lookup). No matching rule means deny: ACLs here always run with
//! Consul's `default_policy = "deny"`.

use std::collections::HashMap;

use super::rules::{Access, Resource, Rules};

/// The kind of access an operation needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// List names (KV `?keys`); granted by list, read and write.
    List,
    /// Read; granted by read and write.
    Read,
    /// Write; granted by write.
    Write,
}

fn grants(access: Access, need: Need) -> bool {
    match (access, need) {
        (Access::Deny, _) => false,
        (Access::Write, _) => true,
        (Access::Read, Need::Read | Need::List) => true,
        (Access::List, Need::List) => true,
        _ => false,
    }
}

#[derive(Debug, Clone, Default)]
struct Segment {
    exact: HashMap<String, Access>,
    /// Prefix rules sorted by descending prefix length.
    prefixes: Vec<(String, Access)>,
}

impl Segment {
    fn lookup(&self, name: &str) -> Option<Access> {
        if let Some(a) = self.exact.get(name) {
            return Some(*a);
        }
        self.prefixes
            .iter()
            .find(|(p, _)| name.starts_with(p.as_str()))
            .map(|(_, a)| *a)
    }
}

/// What one token may do.
#[derive(Debug, Clone)]
pub enum Authorizer {
    /// Everything: the management token, or ACLs disabled.
    AllowAll,
    /// Rules merged from the token's policies.
    Rules(Box<RuleSet>),
}

/// Merged, indexed rules of one or more policies.
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    segments: HashMap<ResourceKey, Segment>,
    operator: Option<Access>,
    acl: Option<Access>,
}

type ResourceKey = u8;

fn resource_key(r: Resource) -> ResourceKey {
    match r {
        Resource::Key => 0,
        Resource::Service => 1,
        Resource::Node => 2,
        Resource::Session => 3,
        Resource::Agent => 4,
        Resource::Event => 5,
    }
}

impl Authorizer {
    /// Builds the authorizer for a token holding these policies' rules.
    pub fn from_rules<'a>(policies: impl IntoIterator<Item = &'a Rules>) -> Self {
        let mut set = RuleSet::default();
        for rules in policies {
            for rule in &rules.rules {
                let seg = set.segments.entry(resource_key(rule.resource)).or_default();
                if rule.prefix {
                    match seg.prefixes.iter_mut().find(|(p, _)| *p == rule.name) {
                        Some((_, a)) => *a = a.merge(rule.access),
                        None => seg.prefixes.push((rule.name.clone(), rule.access)),
                    }
                } else {
                    seg.exact
                        .entry(rule.name.clone())
                        .and_modify(|a| *a = a.merge(rule.access))
                        .or_insert(rule.access);
                }
            }
            set.operator = merge_opt(set.operator, rules.operator);
            set.acl = merge_opt(set.acl, rules.acl);
        }
        for seg in set.segments.values_mut() {
            seg.prefixes.sort_by_key(|p| std::cmp::Reverse(p.0.len()));
        }
        Self::Rules(Box::new(set))
    }

    /// The authorizer of policies given by their rules texts; rules that no longer parse grant
    /// nothing (as on the server, which validated them when they were written).
    pub fn from_rule_texts<'a>(texts: impl IntoIterator<Item = &'a str>) -> Self {
        let rules: Vec<Rules> = texts
            .into_iter()
            .map(|t| crate::acl::parse_rules(t).unwrap_or_default())
            .collect();
        Self::from_rules(&rules)
    }

    /// An authorizer that denies everything (a token without policies).
    pub fn deny_all() -> Self {
        Self::Rules(Box::default())
    }

    /// Whether this is the all-powerful authorizer.
    pub fn is_management(&self) -> bool {
        matches!(self, Self::AllowAll)
    }

    /// Whether `need` is granted on resource `resource` named `name`.
    pub fn allows(&self, resource: Resource, name: &str, need: Need) -> bool {
        match self {
            Self::AllowAll => true,
            Self::Rules(set) => set
                .segments
                .get(&resource_key(resource))
                .and_then(|s| s.lookup(name))
                .is_some_and(|a| grants(a, need)),
        }
    }

    /// Write on every key under `prefix` (recursive delete): write on the prefix itself and no
    /// more specific rule below it that withholds write.
    pub fn key_write_prefix(&self, prefix: &str) -> bool {
        match self {
            Self::AllowAll => true,
            Self::Rules(set) => {
                if !self.allows(Resource::Key, prefix, Need::Write) {
                    return false;
                }
                let Some(seg) = set.segments.get(&resource_key(Resource::Key)) else {
                    return false;
                };
                let below = |name: &str, a: Access| {
                    name.starts_with(prefix) && name != prefix && a != Access::Write
                };
                !seg.exact.iter().any(|(n, a)| below(n, *a))
                    && !seg.prefixes.iter().any(|(n, a)| below(n, *a))
            }
        }
    }

    /// `operator` permission.
    pub fn operator(&self, need: Need) -> bool {
        match self {
            Self::AllowAll => true,
            Self::Rules(set) => set.operator.is_some_and(|a| grants(a, need)),
        }
    }

    /// `acl` permission.
    pub fn acl(&self, need: Need) -> bool {
        match self {
            Self::AllowAll => true,
            Self::Rules(set) => set.acl.is_some_and(|a| grants(a, need)),
        }
    }
}

fn merge_opt(a: Option<Access>, b: Option<Access>) -> Option<Access> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.merge(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acl::parse_rules;

    fn authz(texts: &[&str]) -> Authorizer {
        let rules: Vec<Rules> = texts.iter().map(|t| parse_rules(t).unwrap()).collect();
        Authorizer::from_rules(&rules)
    }

    #[test]
    fn longest_prefix_and_exact_rules_decide() {
        let a = authz(&[r#"
            key_prefix "" { policy = "read" }
            key_prefix "app/" { policy = "write" }
            key_prefix "app/private/" { policy = "deny" }
            key "app/private/shared" { policy = "read" }
            key_prefix "lst/" { policy = "list" }
            service_prefix "web" { policy = "read" }
            service "web-admin" { policy = "deny" }
            node_prefix "" { policy = "read" }
            session_prefix "worker" { policy = "write" }
            agent "n1" { policy = "write" }
        "#]);
        use Need::*;
        use Resource::*;
        let cases: &[(Resource, &str, Need, bool)] = &[
            (Key, "other", Read, true),
            (Key, "other", Write, false),
            (Key, "app/x", Write, true),
            (Key, "app/private/x", Read, false),
            (Key, "app/private/shared", Read, true),
            (Key, "app/private/shared", Write, false),
            (Key, "app/private/shared/sub", Read, false),
            (Key, "lst/a", List, true),
            (Key, "lst/a", Read, false),
            (Service, "web", Read, true),
            (Service, "webapp", Read, true),
            (Service, "webapp", Write, false),
            (Service, "web-admin", Read, false),
            (Service, "db", Read, false),
            (Node, "any", Read, true),
            (Node, "any", Write, false),
            (Session, "worker-1", Write, true),
            (Session, "master", Read, false),
            (Agent, "n1", Write, true),
            (Agent, "n2", Read, false),
        ];
        for (res, name, need, want) in cases {
            assert_eq!(
                a.allows(*res, name, *need),
                *want,
                "{res:?} {name} {need:?}"
            );
        }
        assert!(!a.operator(Read));
        assert!(!a.acl(Read));
    }

    #[test]
    fn default_is_deny_and_management_allows_all() {
        let none = Authorizer::deny_all();
        assert!(!none.allows(Resource::Key, "a", Need::List));
        assert!(!none.operator(Need::Read));
        let all = Authorizer::AllowAll;
        assert!(all.allows(Resource::Service, "x", Need::Write));
        assert!(all.acl(Need::Write));
        assert!(all.key_write_prefix(""));
    }

    #[test]
    fn merged_policies_take_the_strongest_and_deny_wins() {
        let a = authz(&[
            r#"key_prefix "a/" { policy = "read" }
               operator = "read""#,
            r#"key_prefix "a/" { policy = "write" }
               key "a/x" { policy = "deny" }
               operator = "write""#,
            r#"key "a/x" { policy = "write" }"#,
        ]);
        assert!(a.allows(Resource::Key, "a/y", Need::Write));
        assert!(!a.allows(Resource::Key, "a/x", Need::Read));
        assert!(a.operator(Need::Write));
    }

    #[test]
    fn recursive_write_needs_write_on_everything_below() {
        let a = authz(&[r#"
            key_prefix "a/" { policy = "write" }
            key_prefix "a/ro/" { policy = "read" }
            key_prefix "b/" { policy = "write" }
        "#]);
        assert!(!a.key_write_prefix("a/"));
        assert!(a.key_write_prefix("a/rw/"));
        assert!(a.key_write_prefix("b/"));
        assert!(!a.key_write_prefix(""));
    }
}
