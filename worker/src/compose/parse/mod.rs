//! The permissive parser from an interpolated YAML tree into the model: every supported key is
//! read, `x-*` extensions are ignored, anything else is an error naming the key's path. This file
//! walks the top level and holds the scalar readers; each file below adds the keys of one part
//! of a service to `Parser`.

pub(super) mod ports;
mod resources;
mod service;
mod volumes;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use berth_worker_api::ErrorDetail;
use serde_yaml_ng::Value;

use super::interpolate::Vars;
use super::model::{Condition, MountSource, Project};

/// Collects every problem of a file instead of stopping at the first.
pub(crate) struct Parser<'a> {
    dir: &'a Path,
    /// `dir` with symlinks resolved: files the project reads must stay below it.
    root: PathBuf,
    /// The interpolation source, where keys without a value look theirs up.
    vars: &'a Vars,
    errors: Vec<ErrorDetail>,
}

const TOP_KEYS: &[&str] = &["version", "name", "services", "networks", "volumes"];

impl<'a> Parser<'a> {
    pub(crate) fn new(dir: &'a Path, vars: &'a Vars) -> Self {
        Self {
            dir,
            root: dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf()),
            vars,
            errors: Vec::new(),
        }
    }

    fn err(&mut self, service: Option<&str>, field: impl Into<String>, reason: impl Into<String>) {
        self.errors.push(ErrorDetail {
            service: service.map(str::to_owned),
            field: field.into(),
            reason: reason.into(),
        });
    }

    /// Parses the merged, interpolated tree into a project.
    pub(crate) fn project(
        mut self,
        root: &Value,
        name: &str,
        config_files: Vec<PathBuf>,
    ) -> Result<Project, Vec<ErrorDetail>> {
        let Some(top) = root.as_mapping() else {
            self.err(None, "(root)", "the compose file must be a mapping");
            return Err(self.errors);
        };
        let mut project = Project {
            name: name.to_owned(),
            working_dir: self.dir.to_path_buf(),
            config_files,
            services: Vec::new(),
            networks: Vec::new(),
            volumes: Vec::new(),
        };
        for (key, value) in top {
            let Some(key) = self.key(None, "", key) else {
                continue;
            };
            match key.as_str() {
                "version" | "name" => {}
                "services" => {}
                "networks" => project.networks = self.top_level(value, "networks", &["driver"]),
                "volumes" => project.volumes = self.top_level(value, "volumes", &["driver"]),
                k if k.starts_with("x-") => {}
                other => self.err(
                    None,
                    other,
                    format!(
                        "unsupported top-level key (supported: {})",
                        TOP_KEYS.join(", ")
                    ),
                ),
            }
        }
        match top.get("services") {
            Some(Value::Mapping(services)) => {
                for (key, value) in services {
                    let Some(name) = self.key(None, "services.", key) else {
                        continue;
                    };
                    if !valid_service_name(&name) {
                        self.err(
                            Some(&name),
                            format!("services.{name}"),
                            "service names must match [a-z0-9][a-z0-9_.-]*",
                        );
                        continue;
                    }
                    if let Some(service) = self.service(&name, value) {
                        project.services.push(service);
                    }
                }
            }
            Some(_) => self.err(None, "services", "must be a mapping of service names"),
            None => self.err(None, "services", "the file defines no services"),
        }
        if project.services.is_empty() && self.errors.is_empty() {
            self.err(None, "services", "the file defines no services");
        }
        self.check_references(&mut project);
        if self.errors.is_empty() {
            Ok(project)
        } else {
            Err(self.errors)
        }
    }

    fn key(&mut self, service: Option<&str>, prefix: &str, key: &Value) -> Option<String> {
        match key {
            Value::String(s) => Some(s.clone()),
            other => {
                self.err(
                    service,
                    format!("{prefix}{other:?}"),
                    "keys must be strings",
                );
                None
            }
        }
    }

    fn top_level(&mut self, value: &Value, what: &str, allowed: &[&str]) -> Vec<String> {
        let mut names = Vec::new();
        let Some(map) = value.as_mapping() else {
            if !value.is_null() {
                self.err(None, what, "must be a mapping");
            }
            return names;
        };
        for (key, def) in map {
            let Some(name) = self.key(None, &format!("{what}."), key) else {
                continue;
            };
            if let Some(def) = def.as_mapping() {
                for (k, v) in def {
                    let Some(k) = self.key(None, &format!("{what}.{name}."), k) else {
                        continue;
                    };
                    let field = format!("{what}.{name}.{k}");
                    if k.starts_with("x-") {
                        continue;
                    }
                    if !allowed.contains(&k.as_str()) {
                        self.err(None, field, "unsupported key");
                    } else if k == "driver" {
                        let ok = match what {
                            "networks" => matches!(v.as_str(), Some("bridge")),
                            _ => matches!(v.as_str(), Some("local")),
                        };
                        if !ok {
                            self.err(None, field, "only the default driver is supported");
                        }
                    }
                }
            } else if !def.is_null() {
                self.err(None, format!("{what}.{name}"), "must be a mapping or empty");
            }
            if !valid_service_name(&name) {
                self.err(
                    None,
                    format!("{what}.{name}"),
                    "names must match [a-z0-9][a-z0-9_.-]*",
                );
            }
            names.push(name);
        }
        names
    }

    fn check_references(&mut self, project: &mut Project) {
        let names: Vec<String> = project.services.iter().map(|s| s.name.clone()).collect();
        let networks = project.networks.clone();
        let volumes = project.volumes.clone();
        let mut uses_default = false;
        for s in &mut project.services {
            for dep in s.depends_on.keys() {
                if !names.contains(dep) {
                    self.errors.push(ErrorDetail {
                        service: Some(s.name.clone()),
                        field: format!("services.{}.depends_on", s.name),
                        reason: format!("unknown service {dep:?}"),
                    });
                }
            }
            for net in s.networks.keys() {
                if net != "default" && !networks.contains(net) {
                    self.errors.push(ErrorDetail {
                        service: Some(s.name.clone()),
                        field: format!("services.{}.networks", s.name),
                        reason: format!("network {net:?} is not declared at the top level"),
                    });
                }
            }
            for m in &s.volumes {
                if let MountSource::Named(v) = &m.source
                    && !volumes.contains(v)
                {
                    self.errors.push(ErrorDetail {
                        service: Some(s.name.clone()),
                        field: format!("services.{}.volumes", s.name),
                        reason: format!("volume {v:?} is not declared at the top level"),
                    });
                }
            }
            if s.network_mode.is_none() && s.networks.is_empty() {
                s.networks.insert("default".to_owned(), Vec::new());
            }
            uses_default |= s.networks.contains_key("default");
        }
        if uses_default && !project.networks.iter().any(|n| n == "default") {
            project.networks.insert(0, "default".to_owned());
        }
        self.links(project);
    }

    /// `links`: each `target[:alias]` becomes an alias of `target` on every network it shares
    /// with the linking service, and a `service_started` dependency (as in Docker Compose).
    fn links(&mut self, project: &mut Project) {
        let networks: BTreeMap<String, Vec<String>> = project
            .services
            .iter()
            .map(|s| (s.name.clone(), s.networks.keys().cloned().collect()))
            .collect();
        // (target service, network, alias)
        let mut aliases: Vec<(String, String, String)> = Vec::new();
        for s in &mut project.services {
            let field = format!("services.{}.links", s.name);
            for (target, alias) in s.links.clone() {
                let Some(theirs) = networks.get(&target).filter(|_| target != s.name) else {
                    self.errors.push(ErrorDetail {
                        service: Some(s.name.clone()),
                        field: field.clone(),
                        reason: format!("unknown service {target:?}"),
                    });
                    continue;
                };
                let shared: Vec<&String> = theirs
                    .iter()
                    .filter(|n| s.networks.contains_key(*n))
                    .collect();
                if shared.is_empty() {
                    self.errors.push(ErrorDetail {
                        service: Some(s.name.clone()),
                        field: field.clone(),
                        reason: format!("service {target:?} shares no network with {}", s.name),
                    });
                    continue;
                }
                for net in shared {
                    aliases.push((target.clone(), net.clone(), alias.clone()));
                }
                s.depends_on.entry(target).or_insert(Condition::Started);
            }
        }
        for (target, net, alias) in aliases {
            if let Some(list) = project
                .services
                .iter_mut()
                .find(|s| s.name == target)
                .and_then(|s| s.networks.get_mut(&net))
                && alias != target
                && !list.contains(&alias)
            {
                list.push(alias);
            }
        }
    }

    fn scalar(v: &Value) -> Option<String> {
        match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }

    fn string(&mut self, service: &str, field: &str, v: &Value) -> Option<String> {
        let s = Self::scalar(v);
        if s.is_none() && !v.is_null() {
            self.err(Some(service), field, "must be a string");
        }
        s
    }

    fn boolean(&mut self, service: &str, field: &str, v: &Value) -> bool {
        match v {
            Value::Bool(b) => *b,
            Value::String(s) if s == "true" => true,
            Value::String(s) if s == "false" => false,
            _ => {
                self.err(Some(service), field, "must be a boolean");
                false
            }
        }
    }

    /// A list of scalars, or a single scalar.
    fn list(&mut self, service: &str, field: &str, v: &Value) -> Vec<String> {
        match v {
            Value::Sequence(seq) => seq
                .iter()
                .filter_map(|item| {
                    let s = Self::scalar(item);
                    if s.is_none() {
                        self.err(Some(service), field, "list items must be strings");
                    }
                    s
                })
                .collect(),
            Value::Null => Vec::new(),
            other => match Self::scalar(other) {
                Some(s) => vec![s],
                None => {
                    self.err(Some(service), field, "must be a list");
                    Vec::new()
                }
            },
        }
    }

    /// A `KEY<sep>VALUE` list or a mapping, as key -> optional value.
    fn dict(
        &mut self,
        service: &str,
        field: &str,
        v: &Value,
        sep: char,
    ) -> Vec<(String, Option<String>)> {
        match v {
            Value::Mapping(map) => map
                .iter()
                .filter_map(|(k, val)| {
                    let k = Self::scalar(k)?;
                    if !val.is_null() && Self::scalar(val).is_none() {
                        self.err(
                            Some(service),
                            format!("{field}.{k}"),
                            "must be a string, a number, a boolean or empty",
                        );
                        return None;
                    }
                    Some((k, Self::scalar(val)))
                })
                .collect(),
            Value::Sequence(_) => self
                .list(service, field, v)
                .into_iter()
                .map(|item| match item.split_once(sep) {
                    Some((k, val)) => (k.to_owned(), Some(val.to_owned())),
                    None => (item, None),
                })
                .collect(),
            Value::Null => Vec::new(),
            _ => {
                self.err(Some(service), field, "must be a list or a mapping");
                Vec::new()
            }
        }
    }
}

fn valid_service_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'_' | b'.' | b'-')
        })
}
