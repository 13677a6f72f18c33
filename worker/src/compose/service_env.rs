//! The `SERVICE_*` rules: which registrator-style variables berth honours and which it refuses
//! (a reserved service name, a check URL that is not a plain path, berth's own meta, unsupported
//! check kinds, bad durations). One pure rule, [`refusal`], judges a compose project at load
//! ([`check_project`], a 422 beside the policy's) and a container's environment at registration
//! (the registrator), so the two can never disagree.

use berth_consul::parse_go_duration;
use berth_worker_api::{ErrorDetail, META_CAPACITY, META_INSTANCES, META_VERSION};

use crate::compose::Project;

/// Whether `name` belongs to berth or Consul and may not be registered by a stack: `consul` and
/// every name starting with `berth-` (`berth-worker`, `berth-master`, ...), compared without case
/// and surrounding space, as DNS lookups and people do.
pub fn reserved_name(name: &str) -> bool {
    let name = name.trim().to_ascii_lowercase();
    name == "consul" || name.starts_with("berth-")
}

/// Whether a meta key (lower case) is berth's: the ones berth sets on every registration
/// (`berth_*`), the ones the master reads for placement (`instances`, `capacity`, `version`),
/// and the prefix Consul keeps for itself (`consul-`).
pub fn reserved_meta(key: &str) -> bool {
    matches!(key, META_INSTANCES | META_CAPACITY | META_VERSION)
        || key.starts_with("berth_")
        || key.starts_with("berth-")
        || key.starts_with("consul-")
}

/// Checks a `SERVICE_CHECK_HTTP` value: a path on the container's own port, nothing that could
/// change the URL's authority (`@host`, `//host`, a scheme, `\`) or smuggle whitespace.
pub fn check_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err("must be a path starting with /".into());
    }
    if path.starts_with("//") {
        return Err("must not start with //".into());
    }
    if path.contains('@') {
        return Err("must not contain @".into());
    }
    if path.contains('\\') {
        return Err("must not contain a backslash".into());
    }
    if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain spaces or control characters".into());
    }
    Ok(())
}

/// What berth does at run time with a `SERVICE_*` variable it refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The port is not registered (a reserved name, a check berth will not run as asked).
    SkipPort,
    /// The variable is left out (reserved meta, an unsupported check kind).
    IgnoreKey,
}

/// Why berth refuses `SERVICE_<key>=<value>` (`key` without `SERVICE_` and any `<port>_`), or
/// `None` when it honours it. One rule for the compose file (at build and start) and for the
/// container's environment (at registration).
pub fn refusal(key: &str, value: &str) -> Option<(Refusal, String)> {
    let duration = |positive: bool| {
        let ok = parse_go_duration(value).is_some_and(|d| !positive || !d.is_zero());
        (!ok).then(|| {
            let what = if positive {
                "a positive duration"
            } else {
                "a duration"
            };
            (
                Refusal::SkipPort,
                format!("must be {what} such as 10s or 1m"),
            )
        })
    };
    match key {
        "NAME" => reserved_name(value).then(|| {
            (
                Refusal::SkipPort,
                format!(
                    "sets the reserved service name {:?} (consul and names starting with berth- belong to berth and Consul)",
                    value.trim()
                ),
            )
        }),
        "CHECK_HTTP" => check_path(value)
            .err()
            .map(|reason| (Refusal::SkipPort, reason)),
        "CHECK_TTL" | "CHECK_INTERVAL" => duration(true),
        "CHECK_TIMEOUT" | "CHECK_DEREGISTER_AFTER" => duration(false),
        // The value is not used: a TCP check always dials the container's published port.
        "CHECK_TCP" => None,
        "TAGS" | "ID" | "IGNORE" => None,
        _ if key.starts_with("CHECK_") => Some((
            Refusal::IgnoreKey,
            "is not supported: berth runs HTTP, TCP and TTL checks (SERVICE_CHECK_HTTP, SERVICE_CHECK_TCP, SERVICE_CHECK_TTL)"
                .into(),
        )),
        _ => {
            let meta = key.to_ascii_lowercase();
            reserved_meta(&meta).then(|| {
                (
                    Refusal::IgnoreKey,
                    format!("sets meta {meta:?}, which berth sets itself"),
                )
            })
        }
    }
}

/// Splits `SERVICE_<port>_<KEY>` / `SERVICE_<KEY>` into the port (if any) and `KEY`.
pub fn split_key(var: &str) -> Option<(Option<&str>, &str)> {
    let rest = var.strip_prefix("SERVICE_")?;
    match rest.split_once('_') {
        Some((port, key)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
            Some((Some(port), key))
        }
        _ if rest.starts_with(|c: char| c.is_ascii_digit()) => None,
        _ => Some((None, rest)),
    }
}

/// The `SERVICE_*` settings a service's compose environment (and `env_file`) or labels set that
/// berth refuses, in the policy's error shape: a reserved name, a check URL that is not a plain path,
/// reserved meta, unsupported check kinds, bad durations. Names coming from the image are
/// checked again when the container registers.
pub fn check_project(project: &Project) -> Result<(), Vec<ErrorDetail>> {
    let mut errors = Vec::new();
    for s in &project.services {
        let env = s
            .environment
            .iter()
            .filter_map(|(var, value)| Some(("environment", var, value.as_deref()?)));
        let labels = s
            .labels
            .iter()
            .map(|(var, value)| ("labels", var, value.as_str()));
        for (source, var, value) in env.chain(labels) {
            if value.is_empty() {
                continue;
            }
            let Some((_, key)) = split_key(var) else {
                continue;
            };
            if let Some((_, reason)) = refusal(key, value) {
                errors.push(ErrorDetail {
                    service: Some(s.name.clone()),
                    field: format!("services.{}.{source}.{var}", s.name),
                    reason: format!("{var} {reason}"),
                });
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_names() {
        let cases = [
            ("berth-worker", true),
            ("berth-master", true),
            ("Berth-Worker", true),
            (" berth-worker ", true),
            ("berth-anything", true),
            ("consul", true),
            ("CONSUL", true),
            ("consul-web", false),
            ("berthworker", false),
            ("berth_worker", false),
            ("web.berth-worker", false),
            ("web.shop", false),
        ];
        for (name, want) in cases {
            assert_eq!(reserved_name(name), want, "{name:?}");
        }
        for key in [
            "instances",
            "capacity",
            "version",
            "berth_instance",
            "berth_x",
            "consul-x",
        ] {
            assert!(reserved_meta(key), "{key}");
        }
        for key in ["region", "tier", "app_version", "berth"] {
            assert!(!reserved_meta(key), "{key}");
        }
    }

    /// `field|reason` of every refusal of a compose file whose `web` service has `env`.
    fn compose_refusals(env: &str, env_file: Option<&str>) -> Vec<String> {
        let dir = tempfile::tempdir().unwrap();
        let mut yaml = format!("services:\n  web:\n    image: x\n    environment:\n{env}\n");
        if let Some(text) = env_file {
            std::fs::write(dir.path().join("web.env"), text).unwrap();
            yaml.push_str("    env_file: web.env\n");
        }
        std::fs::write(dir.path().join("compose.yaml"), yaml).unwrap();
        let project = crate::compose::load(dir.path(), "p").unwrap();
        match check_project(&project) {
            Ok(()) => Vec::new(),
            Err(errs) => errs
                .into_iter()
                .map(|e| {
                    assert_eq!(e.service.as_deref(), Some("web"));
                    format!("{}|{}", e.field, e.reason)
                })
                .collect(),
        }
    }

    #[test]
    fn compose_environment_refusals() {
        let e = "services.web.environment.";
        let cases: &[(&str, Option<&str>, &[&str])] = &[
            ("      SERVICE_NAME: shop", None, &[]),
            ("      SERVICE_NAME: web.other", None, &[]),
            (
                "      SERVICE_NAME: berth-worker",
                None,
                &[
                    "services.web.environment.SERVICE_NAME|SERVICE_NAME sets the reserved service name \"berth-worker\" (consul and names starting with berth- belong to berth and Consul)",
                ],
            ),
            (
                "      SERVICE_NAME: Berth-Master",
                None,
                &["SERVICE_NAME|SERVICE_NAME sets the reserved service name \"Berth-Master\""],
            ),
            (
                "      SERVICE_8080_NAME: consul",
                None,
                &["SERVICE_8080_NAME|SERVICE_8080_NAME sets the reserved"],
            ),
            ("      SERVICE_NAME: \"\"", None, &[]),
            ("      OTHER_NAME: berth-worker", None, &[]),
            ("      SERVICE_REGION: eu", None, &[]),
            (
                "      SERVICE_INSTANCES: \"0\"\n      SERVICE_CAPACITY: \"1000\"\n      SERVICE_VERSION: 0.1.0",
                None,
                &[
                    "SERVICE_CAPACITY|SERVICE_CAPACITY sets meta \"capacity\", which berth sets itself",
                    "SERVICE_INSTANCES|SERVICE_INSTANCES sets meta \"instances\"",
                    "SERVICE_VERSION|SERVICE_VERSION sets meta \"version\"",
                ],
            ),
            (
                "      SERVICE_80_BERTH_INSTANCE: other",
                None,
                &[
                    "SERVICE_80_BERTH_INSTANCE|SERVICE_80_BERTH_INSTANCE sets meta \"berth_instance\"",
                ],
            ),
            ("      SERVICE_CHECK_HTTP: /healthz", None, &[]),
            (
                "      SERVICE_CHECK_HTTP: \"@127.0.0.1:8500/v1/kv/x?raw\"",
                None,
                &["SERVICE_CHECK_HTTP|SERVICE_CHECK_HTTP must be a path starting with /"],
            ),
            (
                "      SERVICE_80_CHECK_HTTP: //evil/x",
                None,
                &["SERVICE_80_CHECK_HTTP|SERVICE_80_CHECK_HTTP must not start with //"],
            ),
            ("      SERVICE_CHECK_TCP: \"10.0.0.1:22\"", None, &[]),
            (
                "      SERVICE_CHECK_SCRIPT: cat /etc/passwd",
                None,
                &["SERVICE_CHECK_SCRIPT|SERVICE_CHECK_SCRIPT is not supported"],
            ),
            (
                "      SERVICE_CHECK_INTERVAL: 5s\n      SERVICE_CHECK_TIMEOUT: 1s\n      SERVICE_CHECK_TTL: 1m",
                None,
                &[],
            ),
            (
                "      SERVICE_CHECK_INTERVAL: soon",
                None,
                &["SERVICE_CHECK_INTERVAL|SERVICE_CHECK_INTERVAL must be a positive duration"],
            ),
            (
                "      SERVICE_CHECK_TTL: \"0\"",
                None,
                &["SERVICE_CHECK_TTL|SERVICE_CHECK_TTL must be a positive duration"],
            ),
            (
                "      SERVICE_CHECK_DEREGISTER_AFTER: -1m",
                None,
                &[
                    "SERVICE_CHECK_DEREGISTER_AFTER|SERVICE_CHECK_DEREGISTER_AFTER must be a duration",
                ],
            ),
            // Labels are judged like the environment.
            (
                "      A: b\n    labels:\n      SERVICE_NAME: consul\n      SERVICE_TAGS: x",
                None,
                &["services.web.labels.SERVICE_NAME|SERVICE_NAME sets the reserved"],
            ),
            // env_file entries are part of the service's environment.
            (
                "      A: b",
                Some("SERVICE_NAME=berth-worker\n"),
                &["SERVICE_NAME|SERVICE_NAME sets the reserved"],
            ),
        ];
        for (env, env_file, want) in cases {
            let got = compose_refusals(env, *env_file);
            assert_eq!(got.len(), want.len(), "{env}: {got:?}");
            for (got, want) in got.iter().zip(want.iter()) {
                let want = if want.starts_with("services.") {
                    (*want).to_owned()
                } else {
                    format!("{e}{want}")
                };
                assert!(got.starts_with(&want), "{env}\nwant {want}\ngot  {got}");
            }
        }
    }
}
