//! ACL persistence: tokens and policies in memory and, when the server is durable, in
//! `acl.json` in the data directory (written to a temporary file, fsynced, renamed), with the
//! resolver rebuilt from them after every change. Nothing here knows HTTP.

use berth_kit::fs::write_atomic;
use std::path::PathBuf;
use std::sync::RwLock;

use serde::{Deserialize, Serialize};

use super::{
    ANONYMOUS_ACCESSOR_ID, ANONYMOUS_SECRET, AclError, AclResolver, Authorizer,
    MANAGEMENT_POLICY_ID, MANAGEMENT_POLICY_NAME, Policy, PolicyLink, Role, SecretId, Token,
};

/// A change could not be persisted; the text is what the client is told (status 500).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct PersistError(pub(crate) String);

/// What `acl.json` holds.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct Persisted {
    pub(crate) bootstrapped: bool,
    /// Index at which the ACL system was bootstrapped (Consul's "reset index").
    pub(crate) bootstrap_index: u64,
    pub(crate) index: u64,
    /// Accessor of the stored record of the configured master token.
    pub(crate) master_accessor: Option<String>,
    pub(crate) tokens: Vec<Token>,
    pub(crate) policies: Vec<Policy>,
    pub(crate) roles: Vec<Role>,
    pub(crate) auth_methods: Vec<super::auth_method::AuthMethod>,
    pub(crate) binding_rules: Vec<super::auth_method::BindingRule>,
}

impl Persisted {
    /// Makes the configured master token and the anonymous token real tokens, and marks the
    /// ACL system bootstrapped, as Consul's leader does for `initial_management`. Returns
    /// whether anything changed.
    pub(crate) fn seed(&mut self, master: &SecretId) -> bool {
        let before = (
            self.bootstrapped,
            self.index,
            self.master_accessor.clone(),
            self.tokens.clone(),
        );
        if !self.bootstrapped {
            self.index += 1;
            self.bootstrapped = true;
            self.bootstrap_index = self.index;
        }
        let now = now_rfc3339();
        if !self
            .tokens
            .iter()
            .any(|t| t.accessor_id == ANONYMOUS_ACCESSOR_ID)
        {
            self.index += 1;
            // A token made with the literal secret `anonymous` already acted as the anonymous
            // token: it becomes the real one, policies kept.
            match self
                .tokens
                .iter_mut()
                .find(|t| t.secret_id.matches(ANONYMOUS_SECRET))
            {
                Some(t) => {
                    t.accessor_id = ANONYMOUS_ACCESSOR_ID.to_owned();
                    t.modify_index = self.index;
                }
                None => self.tokens.push(Token {
                    accessor_id: ANONYMOUS_ACCESSOR_ID.to_owned(),
                    secret_id: SecretId::new(ANONYMOUS_SECRET),
                    description: "Anonymous Token".to_owned(),
                    policies: vec![],
                    local: false,
                    create_time: now.clone(),
                    create_index: self.index,
                    modify_index: self.index,
                    ..Token::default()
                }),
            }
        }
        let by_secret = self
            .tokens
            .iter()
            .find(|t| t.secret_id.matches(master.expose()))
            .map(|t| t.accessor_id.clone());
        let recorded = self
            .master_accessor
            .clone()
            .filter(|a| self.tokens.iter().any(|t| t.accessor_id == *a));
        match (by_secret, recorded) {
            (Some(accessor), _) => self.master_accessor = Some(accessor),
            // The configured master token changed: the record follows it (rotation).
            (None, Some(accessor)) => {
                self.index += 1;
                let index = self.index;
                if let Some(t) = self.tokens.iter_mut().find(|t| t.accessor_id == accessor) {
                    t.secret_id = master.clone();
                    t.modify_index = index;
                }
            }
            (None, None) => {
                self.index += 1;
                let accessor = uuid::Uuid::new_v4().to_string();
                self.tokens.push(Token {
                    accessor_id: accessor.clone(),
                    secret_id: master.clone(),
                    description: "Initial Management Token".to_owned(),
                    policies: vec![PolicyLink {
                        id: MANAGEMENT_POLICY_ID.into(),
                        name: MANAGEMENT_POLICY_NAME.into(),
                    }],
                    local: false,
                    create_time: now,
                    create_index: self.index,
                    modify_index: self.index,
                    ..Token::default()
                });
                self.master_accessor = Some(accessor);
            }
        }
        before
            != (
                self.bootstrapped,
                self.index,
                self.master_accessor.clone(),
                self.tokens.clone(),
            )
    }
}

/// Tokens, policies and the resolver built from them.
pub(crate) struct AclStore {
    resolver: RwLock<AclResolver>,
    data: RwLock<Persisted>,
    file: Option<PathBuf>,
}

impl AclStore {
    /// ACLs off.
    pub(crate) fn disabled() -> Self {
        Self {
            resolver: RwLock::new(AclResolver::disabled()),
            data: RwLock::default(),
            file: None,
        }
    }

    /// ACLs on with `master` as the management token, loading `dir/acl.json` if present. The
    /// master and anonymous tokens are stored as real tokens, and the system counts as
    /// bootstrapped: `/v1/acl/bootstrap` is refused. Identities and policies limited to some
    /// datacenters apply when they name `datacenter`.
    pub(crate) fn enabled(
        master: SecretId,
        dir: Option<PathBuf>,
        datacenter: &str,
    ) -> std::io::Result<Self> {
        let file = dir.map(|d| d.join("acl.json"));
        let mut data: Persisted = match &file {
            Some(f) if f.exists() => {
                let named = |e: &dyn std::fmt::Display| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("{}: {e}", f.display()),
                    )
                };
                let bytes = std::fs::read(f).map_err(|e| named(&e))?;
                serde_json::from_slice(&bytes).map_err(|e| named(&e))?
            }
            _ => Persisted::default(),
        };
        if data.seed(&master)
            && let Some(f) = &file
        {
            let bytes = serde_json::to_vec(&data).map_err(std::io::Error::other)?;
            write_atomic(f, &bytes)?;
        }
        let mut resolver = AclResolver::enabled(master);
        resolver.set_datacenter(datacenter);
        resolver.load(data.tokens.clone(), data.policies.clone());
        resolver.load_roles(data.roles.clone());
        Ok(Self {
            resolver: RwLock::new(resolver),
            data: RwLock::new(data),
            file,
        })
    }

    pub(crate) fn is_enabled(&self) -> bool {
        self.resolver
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_enabled()
    }

    pub(crate) fn resolve(&self, secret: Option<&str>) -> Result<Authorizer, AclError> {
        self.resolver
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .resolve(secret)
    }

    pub(crate) fn rule_texts(&self, secret: Option<&str>) -> Result<Option<Vec<String>>, AclError> {
        self.resolver
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .rule_texts(secret)
    }

    pub(crate) fn token_by_secret(&self, secret: &str) -> Option<Token> {
        self.resolver
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .token_for(secret)
            .cloned()
    }

    /// Applies `change` to the data, persists it, then reloads the resolver.
    pub(crate) fn modify<T, E: From<PersistError>>(
        &self,
        change: impl FnOnce(&mut Persisted) -> Result<T, E>,
    ) -> Result<T, E> {
        let mut data = self.data.write().unwrap_or_else(|e| e.into_inner());
        let out = change(&mut data)?;
        if let Some(file) = &self.file {
            let bytes = serde_json::to_vec(&*data).map_err(|e| PersistError(e.to_string()))?;
            write_atomic(file, &bytes).map_err(|e| {
                tracing::error!(cause = %e, "persisting ACL data failed");
                PersistError("failed to persist ACL data".into())
            })?;
        }
        let mut resolver = self.resolver.write().unwrap_or_else(|e| e.into_inner());
        resolver.load(data.tokens.clone(), data.policies.clone());
        resolver.load_roles(data.roles.clone());
        Ok(out)
    }

    pub(crate) fn read<T>(&self, f: impl FnOnce(&Persisted) -> T) -> T {
        f(&self.data.read().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Now, as Consul writes token creation times.
pub(crate) fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(master: &str, dir: &std::path::Path) -> AclStore {
        AclStore::enabled(SecretId::new(master), Some(dir.to_owned()), "dc1").unwrap()
    }

    #[test]
    fn seeded_tokens_survive_restarts_and_follow_the_configured_master() {
        let dir = tempfile::tempdir().unwrap();
        let first = store("root", dir.path());
        let (accessor, index) = first.read(|d| {
            assert!(d.bootstrapped);
            (d.master_accessor.clone().unwrap(), d.bootstrap_index)
        });
        assert_eq!(first.token_by_secret("root").unwrap().accessor_id, accessor);
        assert_eq!(
            first.token_by_secret(ANONYMOUS_SECRET).unwrap().accessor_id,
            ANONYMOUS_ACCESSOR_ID
        );
        drop(first);
        // A restart with the same master token changes nothing.
        let again = store("root", dir.path());
        again.read(|d| {
            assert_eq!(d.master_accessor.as_deref(), Some(accessor.as_str()));
            assert_eq!(d.bootstrap_index, index);
            assert_eq!(d.tokens.len(), 2);
        });
        drop(again);
        // A new master token replaces the old one's secret: the old one stops working.
        let rotated = store("root-2", dir.path());
        assert!(rotated.token_by_secret("root").is_none());
        assert_eq!(
            rotated.token_by_secret("root-2").unwrap().accessor_id,
            accessor
        );
        assert!(rotated.resolve(Some("root")).is_err());
        assert!(rotated.resolve(Some("root-2")).unwrap().is_management());
    }

    #[test]
    fn a_token_with_the_anonymous_secret_becomes_the_anonymous_token() {
        let mut data = Persisted {
            tokens: vec![Token {
                accessor_id: "custom".into(),
                secret_id: SecretId::new(ANONYMOUS_SECRET),
                description: "made before the anonymous token was seeded".into(),
                policies: vec![PolicyLink {
                    id: "p1".into(),
                    name: "dns".into(),
                }],
                local: false,
                create_time: String::new(),
                create_index: 1,
                modify_index: 1,
                ..Token::default()
            }],
            ..Persisted::default()
        };
        assert!(data.seed(&SecretId::new("root")));
        let anon: Vec<&Token> = data
            .tokens
            .iter()
            .filter(|t| t.secret_id.matches(ANONYMOUS_SECRET))
            .collect();
        assert_eq!(anon.len(), 1);
        assert_eq!(anon[0].accessor_id, ANONYMOUS_ACCESSOR_ID);
        assert_eq!(anon[0].policies[0].name, "dns");
        assert!(
            !data.seed(&SecretId::new("root")),
            "seeding twice is a no-op"
        );
    }
}
