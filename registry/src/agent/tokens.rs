//! The ACL tokens an agent uses (Consul's `acl.tokens`), set at start and replaced at run time
//! through `PUT /v1/agent/token/<kind>`. Kept in memory only, as Consul keeps API-set tokens
//! when `enable_token_persistence` is off (its default): a restart goes back to the flags.

use std::collections::BTreeMap;
use std::sync::RwLock;

use tokio::sync::watch;

/// Which token (`/v1/agent/token/<kind>`, with Consul's legacy names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum TokenKind {
    /// For requests that carry no token.
    Default,
    /// The agent's own: anti-entropy, heartbeats, leave, token resolution.
    Agent,
    /// Consul's `agent_recovery` (formerly `agent_master`).
    AgentRecovery,
    Replication,
    ConfigFileServiceRegistration,
    Dns,
}

impl TokenKind {
    /// The kind a path segment names, as Consul's `AgentToken` handler reads it.
    pub(crate) fn from_path(kind: &str) -> Option<Self> {
        Some(match kind {
            "default" | "acl_token" => Self::Default,
            "agent" | "acl_agent_token" => Self::Agent,
            "agent_recovery" | "agent_master" | "acl_agent_master_token" => Self::AgentRecovery,
            "replication" | "acl_replication_token" => Self::Replication,
            "config_file_service_registration" => Self::ConfigFileServiceRegistration,
            "dns" | "dns_token" => Self::Dns,
            _ => return None,
        })
    }

    /// Whether a new token of this kind changes what anti-entropy sends (Consul then triggers
    /// a full sync).
    pub(crate) fn syncs(self) -> bool {
        matches!(self, Self::Default | Self::Agent)
    }
}

/// The tokens in use; readers take a copy per request.
pub(crate) struct AgentTokens {
    tokens: RwLock<BTreeMap<TokenKind, String>>,
    /// Bumped when the default or agent token changes.
    changed: watch::Sender<u64>,
}

impl AgentTokens {
    /// Starts from the flags' tokens (empty counts as none).
    pub(crate) fn new(default: Option<String>, agent: Option<String>) -> Self {
        let tokens = [(TokenKind::Default, default), (TokenKind::Agent, agent)]
            .into_iter()
            .filter_map(|(k, t)| Some((k, t.filter(|t| !t.is_empty())?)))
            .collect();
        Self {
            tokens: RwLock::new(tokens),
            changed: watch::Sender::new(0),
        }
    }

    pub(crate) fn get(&self, kind: TokenKind) -> Option<String> {
        self.tokens
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&kind)
            .cloned()
    }

    /// Replaces a token (empty clears it); true when it changed.
    pub(crate) fn set(&self, kind: TokenKind, token: &str) -> bool {
        let mut tokens = self.tokens.write().unwrap_or_else(|e| e.into_inner());
        let changed = if token.is_empty() {
            tokens.remove(&kind).is_some()
        } else {
            tokens.insert(kind, token.to_owned()).as_deref() != Some(token)
        };
        drop(tokens);
        if changed && kind.syncs() {
            self.changed.send_modify(|n| *n = n.wrapping_add(1));
        }
        changed
    }

    /// Wakes when the default or agent token changes.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_changes() {
        assert_eq!(
            TokenKind::from_path("agent_master"),
            Some(TokenKind::AgentRecovery)
        );
        assert_eq!(TokenKind::from_path("acl_token"), Some(TokenKind::Default));
        assert_eq!(TokenKind::from_path("bogus"), None);
        let tokens = AgentTokens::new(Some(String::new()), Some("a".into()));
        let mut changes = tokens.subscribe();
        assert_eq!(tokens.get(TokenKind::Default), None);
        assert!(!tokens.set(TokenKind::Agent, "a"));
        assert!(!changes.has_changed().unwrap());
        assert!(tokens.set(TokenKind::Agent, "b"));
        assert!(changes.has_changed().unwrap());
        changes.borrow_and_update();
        assert!(tokens.set(TokenKind::Replication, "r"));
        assert!(
            !changes.has_changed().unwrap(),
            "replication does not resync"
        );
        assert!(tokens.set(TokenKind::Agent, ""));
        assert_eq!(tokens.get(TokenKind::Agent), None);
    }
}
