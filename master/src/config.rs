//! The master's configuration: one serde struct with defaults, read from a JSON file (the same
//! keys in snake_case, like the registry's), overridden
//! by flags and environment (in `main`), then checked by [`Config::validate`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use berth_worker_api::Secret;
use serde::Deserialize;

use crate::placement::Strategy;
use crate::upload::Limits;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

/// Configuration of `berth-master`. Secrets are given as values here; `main` also reads them
/// from `*_FILE` paths.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the API and the code store listen on.
    pub listen: SocketAddr,
    /// Holds `git/` (the code store) and the generated token files.
    pub data_dir: PathBuf,
    /// Registry (or Consul agent) HTTP address.
    pub registry: String,
    pub registry_token: Option<Secret>,
    /// Bearer token of the `/v1` API; generated into `<data>/api-token` when absent.
    pub api_token: Option<Secret>,
    /// Token the master presents to workers (required).
    pub cluster_token: Option<Secret>,
    /// Password of the code store's basic auth; generated into `<data>/git-token` when absent.
    pub git_token: Option<Secret>,
    /// Base URL workers clone the embedded code store from (default `http://<listen address>`).
    pub public_url: Option<String>,
    /// Push every commit to this forge URL template (`{user}`, `{id}`); workers clone from it.
    pub git_remote_template: Option<String>,
    pub git_remote_username: String,
    pub git_remote_token: Option<Secret>,
    /// Forge user workers clone as (default: `git_remote_username`), with
    /// `git_remote_read_token`.
    pub git_remote_read_username: Option<String>,
    /// A forge token that may only read: what workers clone with instead of the push token.
    pub git_remote_read_token: Option<Secret>,
    /// POST every state change here, signed with `webhook_secret`.
    pub webhook_url: Option<String>,
    pub webhook_secret: Option<Secret>,
    pub placement: Strategy,
    /// Upload caps.
    pub limits: Limits,
    /// Instance lock session TTL.
    pub lock_ttl_secs: u64,
    /// How long an operation waits for a busy instance lock before answering 409.
    pub lock_wait_secs: u64,
    /// Lock delay after a lock holder's session is invalidated.
    pub lock_delay_secs: u64,
    /// Readiness timeout passed to workers on start (their default when absent).
    pub start_timeout_secs: Option<u64>,
    /// Name of this master in lock sessions (default: host name).
    pub name: Option<String>,
    pub log_json: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("/var/lib/berth-master"),
            registry: "http://127.0.0.1:8500".into(),
            registry_token: None,
            api_token: None,
            cluster_token: None,
            git_token: None,
            public_url: None,
            git_remote_template: None,
            git_remote_username: "berth".into(),
            git_remote_token: None,
            git_remote_read_username: None,
            git_remote_read_token: None,
            webhook_url: None,
            webhook_secret: None,
            placement: Strategy::LeastLoaded,
            limits: Limits::default(),
            lock_ttl_secs: 15,
            lock_wait_secs: 30,
            lock_delay_secs: 1,
            start_timeout_secs: None,
            name: None,
            log_json: false,
        }
    }
}

fn scheme_ok(url: &str, schemes: &[&str]) -> bool {
    schemes.iter().any(|s| url.starts_with(s))
}

impl Config {
    /// Reads a JSON file; missing keys take their defaults.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.cluster_token.as_ref().is_none_or(Secret::is_empty) {
            return invalid(
                "a cluster token is required to call workers (--cluster-token, BERTH_CLUSTER_TOKEN or BERTH_CLUSTER_TOKEN_FILE)".into(),
            );
        }
        if !scheme_ok(&self.registry, &["http://"]) {
            return invalid(format!(
                "registry {:?} must be an http:// URL",
                self.registry
            ));
        }
        if let Some(url) = &self.public_url
            && !scheme_ok(url, &["http://", "https://"])
        {
            return invalid(format!("public url {url:?} must be http:// or https://"));
        }
        if let Some(t) = &self.git_remote_template {
            if !t.contains("{id}") {
                return invalid(format!("git remote template {t:?} must hold {{id}}"));
            }
            if !scheme_ok(t, &["http://", "git://"]) {
                return invalid(format!(
                    "git remote template {t:?}: only http:// and git:// forges are supported (no TLS in this build)"
                ));
            }
        }
        if let Some(url) = &self.webhook_url {
            if !scheme_ok(url, &["http://"]) {
                return invalid(format!(
                    "webhook url {url:?} must be http:// (no TLS in this build)"
                ));
            }
            if self.webhook_secret.as_ref().is_none_or(Secret::is_empty) {
                return invalid(
                    "a webhook url needs a webhook secret (--webhook-secret or _FILE)".into(),
                );
            }
        }
        let l = &self.limits;
        if [
            l.max_compressed_bytes,
            l.max_uncompressed_bytes,
            l.max_files,
            l.max_file_bytes,
            l.max_ratio,
            l.max_concurrent,
        ]
        .contains(&0)
        {
            return invalid("upload caps must be greater than 0".into());
        }
        if self.lock_ttl_secs < 10 || self.lock_ttl_secs > 86400 {
            return invalid(
                "lock ttl must be between 10 and 86400 seconds (Consul's range)".into(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok() -> Config {
        Config {
            cluster_token: Some(Secret::new("c")),
            ..Config::default()
        }
    }

    #[test]
    fn validation_table() {
        let cases: Vec<(Config, Option<&str>)> = vec![
            (ok(), None),
            (Config::default(), Some("cluster token")),
            (
                Config {
                    registry: "https://x".into(),
                    ..ok()
                },
                Some("registry"),
            ),
            (
                Config {
                    git_remote_template: Some("http://f/{user}".into()),
                    ..ok()
                },
                Some("{id}"),
            ),
            (
                Config {
                    git_remote_template: Some("https://f/{id}".into()),
                    ..ok()
                },
                Some("no TLS"),
            ),
            (
                Config {
                    git_remote_template: Some("git://f/{user}/{id}.git".into()),
                    ..ok()
                },
                None,
            ),
            (
                Config {
                    webhook_url: Some("http://h/".into()),
                    ..ok()
                },
                Some("webhook secret"),
            ),
            (
                Config {
                    limits: Limits {
                        max_files: 0,
                        ..Limits::default()
                    },
                    ..ok()
                },
                Some("caps"),
            ),
            (
                Config {
                    lock_ttl_secs: 5,
                    ..ok()
                },
                Some("lock ttl"),
            ),
        ];
        for (config, want) in cases {
            match (config.validate(), want) {
                (Ok(()), None) => {}
                (Err(e), Some(w)) => assert!(e.to_string().contains(w), "{e} vs {w}"),
                (got, want) => panic!("{got:?} vs {want:?}"),
            }
        }
    }

    #[test]
    fn json_file_with_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.json");
        std::fs::write(
            &path,
            r#"{"listen": "0.0.0.0:9000", "placement": "round-robin", "cluster_token": "x", "limits": {"max_files": 5}}"#,
        )
        .unwrap();
        let c = Config::from_file(&path).unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.placement, Strategy::RoundRobin);
        assert_eq!(c.limits.max_files, 5);
        assert_eq!(c.limits.max_ratio, Limits::default().max_ratio);
        std::fs::write(&path, r#"{"bogus": 1}"#).unwrap();
        assert!(Config::from_file(&path).is_err());
    }
}
