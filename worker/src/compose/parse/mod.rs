//! The project model (plain Rust types) and its permissive parser from an interpolated YAML tree:
//! every supported key is read, `x-*` extensions are ignored, anything else is an error naming
//! the key's path.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_worker_api::ErrorDetail;
use serde::Serialize;
use serde_yaml_ng::{Mapping, Value};

use super::interpolate::{Vars, parse_env_file};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Project {
    /// Docker Compose project name (the instance's, never the file's `name`).
    pub name: String,
    /// Directory holding the compose file; relative paths resolve against it.
    pub working_dir: PathBuf,
    pub config_files: Vec<PathBuf>,
    /// Services in file order.
    pub services: Vec<Service>,
    /// Declared networks (keys), plus `default` when a service uses it.
    pub networks: Vec<String>,
    /// Declared named volumes (keys).
    pub volumes: Vec<String>,
}

impl Project {
    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name == name)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Build {
    /// Absolute context directory (not yet checked against the checkout: that is policy's job).
    pub context: PathBuf,
    pub dockerfile: String,
    pub args: BTreeMap<String, String>,
    pub target: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct PortSpec {
    pub host_ip: Option<String>,
    /// Host port the file asked for; the worker allocates its own host ports (see README).
    pub requested_host_port: Option<u16>,
    pub container_port: u16,
    pub protocol: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum MountSource {
    /// Absolute host path as written (joined with the project dir), not yet resolved.
    Bind(PathBuf),
    /// Key of a top-level named volume.
    Named(String),
    Anonymous,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mount {
    pub source: MountSource,
    pub target: String,
    pub read_only: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Condition {
    Started,
    Healthy,
    CompletedSuccessfully,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Restart {
    No,
    Always,
    OnFailure(Option<i64>),
    UnlessStopped,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Healthcheck {
    /// Engine form: `["CMD", ...]`, `["CMD-SHELL", "..."]` or `["NONE"]`.
    pub test: Vec<String>,
    pub interval: Option<Duration>,
    pub timeout: Option<Duration>,
    pub retries: Option<i64>,
    pub start_period: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Service {
    pub name: String,
    pub build: Option<Build>,
    pub image: Option<String>,
    pub ports: Vec<PortSpec>,
    /// `port/proto` strings, ranges expanded.
    pub expose: Vec<String>,
    /// `env_file` contents first, then `environment` on top; a key without a value takes it
    /// from `.env` (the interpolation source) and is `None` (unset) when `.env` lacks it.
    pub environment: BTreeMap<String, Option<String>>,
    pub volumes: Vec<Mount>,
    /// Network key -> aliases.
    pub networks: BTreeMap<String, Vec<String>>,
    pub network_mode: Option<String>,
    pub command: Option<Vec<String>>,
    pub entrypoint: Option<Vec<String>>,
    pub labels: BTreeMap<String, String>,
    pub restart: Restart,
    pub healthcheck: Option<Healthcheck>,
    pub depends_on: BTreeMap<String, Condition>,
    pub container_name: Option<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    /// `host:ip` entries.
    pub extra_hosts: Vec<String>,
    pub stop_grace_period: Option<Duration>,
    // Keys parsed only so that policy can reject them by name.
    pub privileged: bool,
    pub pid: Option<String>,
    pub ipc: Option<String>,
    pub devices: Vec<String>,
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
}

impl Service {
    fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            build: None,
            image: None,
            ports: Vec::new(),
            expose: Vec::new(),
            environment: BTreeMap::new(),
            volumes: Vec::new(),
            networks: BTreeMap::new(),
            network_mode: None,
            command: None,
            entrypoint: None,
            labels: BTreeMap::new(),
            restart: Restart::No,
            healthcheck: None,
            depends_on: BTreeMap::new(),
            container_name: None,
            working_dir: None,
            user: None,
            extra_hosts: Vec::new(),
            stop_grace_period: None,
            privileged: false,
            pid: None,
            ipc: None,
            devices: Vec::new(),
            cap_add: Vec::new(),
            cap_drop: Vec::new(),
        }
    }

    /// Whether the service has a healthcheck that Docker will run.
    pub fn has_healthcheck(&self) -> bool {
        self.healthcheck
            .as_ref()
            .is_some_and(|h| h.test.first().map(String::as_str) != Some("NONE"))
    }
}

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

    fn service(&mut self, name: &str, value: &Value) -> Option<Service> {
        let Some(map) = value.as_mapping() else {
            self.err(Some(name), format!("services.{name}"), "must be a mapping");
            return None;
        };
        let mut s = Service::new(name);
        let mut env_files: Vec<String> = Vec::new();
        for (key, v) in map {
            let Some(key) = self.key(Some(name), &format!("services.{name}."), key) else {
                continue;
            };
            let field = format!("services.{name}.{key}");
            match key.as_str() {
                "build" => s.build = self.build(name, &field, v),
                "image" => s.image = self.string(name, &field, v),
                "ports" => s.ports = self.ports(name, &field, v),
                "expose" => {
                    for item in self.list(name, &field, v) {
                        let (ports, proto) = item.rsplit_once('/').unwrap_or((&item, "tcp"));
                        match check_protocol(proto).and_then(|()| parse_range(ports)) {
                            Ok((first, last)) => s
                                .expose
                                .extend((first..=last).map(|p| format!("{p}/{proto}"))),
                            Err(reason) => self.err(Some(name), &field, reason),
                        }
                    }
                }
                "environment" => {
                    for (k, val) in self.dict(name, &field, v, '=') {
                        let val = val.or_else(|| self.vars.get(&k).cloned());
                        s.environment.insert(k, val);
                    }
                }
                "env_file" => env_files = self.list(name, &field, v),
                "volumes" => s.volumes = self.mounts(name, &field, v),
                "networks" => s.networks = self.service_networks(name, &field, v),
                "network_mode" => s.network_mode = self.string(name, &field, v),
                "command" => s.command = self.command(name, &field, v),
                "entrypoint" => s.entrypoint = self.command(name, &field, v),
                "labels" => {
                    for (k, val) in self.dict(name, &field, v, '=') {
                        s.labels.insert(k, val.unwrap_or_default());
                    }
                }
                "restart" => s.restart = self.restart(name, &field, v),
                "healthcheck" => s.healthcheck = self.healthcheck(name, &field, v),
                "depends_on" => s.depends_on = self.depends_on(name, &field, v),
                "container_name" => s.container_name = self.string(name, &field, v),
                "working_dir" => s.working_dir = self.string(name, &field, v),
                "user" => s.user = self.string(name, &field, v),
                "extra_hosts" => {
                    for (k, val) in self.dict(name, &field, v, ':') {
                        match val {
                            Some(ip) if !ip.is_empty() => s.extra_hosts.push(format!("{k}:{ip}")),
                            _ => self.err(Some(name), &field, format!("{k:?} needs host:ip")),
                        }
                    }
                }
                "stop_grace_period" => {
                    s.stop_grace_period = self.string(name, &field, v).and_then(|d| {
                        parse_duration(&d)
                            .map_err(|e| self.err(Some(name), &field, e))
                            .ok()
                    })
                }
                "privileged" => s.privileged = self.boolean(name, &field, v),
                "pid" => s.pid = self.string(name, &field, v),
                "ipc" => s.ipc = self.string(name, &field, v),
                "devices" => s.devices = self.list(name, &field, v),
                "cap_add" => s.cap_add = self.list(name, &field, v),
                "cap_drop" => s.cap_drop = self.list(name, &field, v),
                k if k.starts_with("x-") => {}
                _ => self.err(Some(name), field, "unsupported key"),
            }
        }
        if s.build.is_none() && s.image.is_none() {
            self.err(
                Some(name),
                format!("services.{name}"),
                "needs `build` or `image`",
            );
        }
        // env_file first, `environment` wins.
        let mut env = BTreeMap::new();
        for file in env_files {
            let field = format!("services.{name}.env_file");
            let path = self.dir.join(&file);
            if !lexically_inside(&path, self.dir) {
                self.err(
                    Some(name),
                    field,
                    format!("{file:?} is outside the project directory"),
                );
                continue;
            }
            match super::read_in_project(&path, &self.root) {
                Ok(Some(text)) => match parse_env_file(&text) {
                    Ok(vars) => env.extend(vars.into_iter().map(|(k, v)| (k, Some(v)))),
                    Err((line, reason)) => {
                        self.err(Some(name), field, format!("{file}:{line}: {reason}"))
                    }
                },
                Ok(None) => self.err(Some(name), field, format!("{file:?} does not exist")),
                Err(reason) => self.err(Some(name), field, format!("{file:?} {reason}")),
            }
        }
        env.append(&mut s.environment);
        s.environment = env;
        Some(s)
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

    fn build(&mut self, service: &str, field: &str, v: &Value) -> Option<Build> {
        let mut b = Build {
            dockerfile: "Dockerfile".to_owned(),
            ..Build::default()
        };
        match v {
            Value::String(ctx) => b.context = self.dir.join(ctx),
            Value::Mapping(map) => {
                b.context = self.dir.to_path_buf();
                for (k, val) in map {
                    let Some(k) = Self::scalar(k) else { continue };
                    let f = format!("{field}.{k}");
                    match k.as_str() {
                        "context" => {
                            if let Some(c) = self.string(service, &f, val) {
                                b.context = self.dir.join(c);
                            }
                        }
                        "dockerfile" => {
                            if let Some(d) = self.string(service, &f, val) {
                                b.dockerfile = d;
                            }
                        }
                        "args" => {
                            for (name, value) in self.dict(service, &f, val, '=') {
                                // An arg without a value takes it from `.env` (the only
                                // environment a stack sees), else it stays unset.
                                if let Some(value) = value.or_else(|| self.vars.get(&name).cloned())
                                {
                                    b.args.insert(name, value);
                                }
                            }
                        }
                        "target" => b.target = self.string(service, &f, val),
                        k if k.starts_with("x-") => {}
                        _ => self.err(Some(service), f, "unsupported key"),
                    }
                }
            }
            _ => {
                self.err(Some(service), field, "must be a path or a mapping");
                return None;
            }
        }
        Some(b)
    }

    fn ports(&mut self, service: &str, field: &str, v: &Value) -> Vec<PortSpec> {
        let mut out = Vec::new();
        let Some(seq) = v.as_sequence() else {
            self.err(Some(service), field, "must be a list");
            return out;
        };
        for item in seq {
            let parsed = match item {
                Value::Mapping(map) => self.long_port(service, field, map),
                other => match Self::scalar(other) {
                    Some(s) => parse_short_port(&s),
                    None => Err("must be a string or a mapping".to_owned()),
                },
            };
            match parsed {
                Ok(mut ports) => out.append(&mut ports),
                Err(reason) => self.err(Some(service), field, reason),
            }
        }
        out
    }

    fn long_port(
        &mut self,
        service: &str,
        field: &str,
        map: &Mapping,
    ) -> Result<Vec<PortSpec>, String> {
        let mut spec = PortSpec {
            host_ip: None,
            requested_host_port: None,
            container_port: 0,
            protocol: "tcp".to_owned(),
        };
        for (k, val) in map {
            let k = Self::scalar(k).unwrap_or_default();
            let v = Self::scalar(val).unwrap_or_default();
            match k.as_str() {
                "target" => spec.container_port = parse_port(&v)?,
                "published" => spec.requested_host_port = Some(parse_port(&v)?),
                "host_ip" => spec.host_ip = Some(v),
                "protocol" => spec.protocol = v,
                "mode" if v == "host" || v == "ingress" => {}
                "name" | "app_protocol" => {}
                _ => self.err(Some(service), format!("{field}.{k}"), "unsupported key"),
            }
        }
        if spec.container_port == 0 {
            return Err("long-form port needs `target`".to_owned());
        }
        check_protocol(&spec.protocol)?;
        Ok(vec![spec])
    }

    fn mounts(&mut self, service: &str, field: &str, v: &Value) -> Vec<Mount> {
        let mut out = Vec::new();
        let Some(seq) = v.as_sequence() else {
            self.err(Some(service), field, "must be a list");
            return out;
        };
        for item in seq {
            let mount = match item {
                Value::String(s) => self.short_mount(s),
                Value::Mapping(map) => self.long_mount(service, field, map),
                _ => Err("must be a string or a mapping".to_owned()),
            };
            match mount {
                Ok(m) => out.push(m),
                Err(reason) => self.err(Some(service), field, reason),
            }
        }
        out
    }

    fn source(&self, src: &str) -> MountSource {
        if src.starts_with('.') || src.starts_with('/') || src.starts_with('~') {
            MountSource::Bind(self.dir.join(src))
        } else {
            MountSource::Named(src.to_owned())
        }
    }

    fn short_mount(&self, s: &str) -> Result<Mount, String> {
        let parts: Vec<&str> = s.split(':').collect();
        let (source, target, mode) = match parts.as_slice() {
            [target] => (MountSource::Anonymous, *target, None),
            [src, target] => (self.source(src), *target, None),
            [src, target, mode] => (self.source(src), *target, Some(*mode)),
            _ => return Err(format!("cannot parse volume {s:?}")),
        };
        let mut read_only = false;
        if let Some(mode) = mode {
            for opt in mode.split(',') {
                match opt {
                    "ro" => read_only = true,
                    "rw" | "z" | "Z" | "nocopy" => {}
                    other => return Err(format!("unsupported volume option {other:?}")),
                }
            }
        }
        if !target.starts_with('/') {
            return Err(format!("volume target {target:?} must be an absolute path"));
        }
        Ok(Mount {
            source,
            target: target.to_owned(),
            read_only,
        })
    }

    fn long_mount(&mut self, service: &str, field: &str, map: &Mapping) -> Result<Mount, String> {
        let mut kind = String::from("volume");
        let mut source = None;
        let mut target = None;
        let mut read_only = false;
        for (k, val) in map {
            let k = Self::scalar(k).unwrap_or_default();
            match k.as_str() {
                "type" => kind = Self::scalar(val).unwrap_or_default(),
                "source" => source = Self::scalar(val),
                "target" => target = Self::scalar(val),
                "read_only" => {
                    read_only = self.boolean(service, &format!("{field}.read_only"), val)
                }
                _ => self.err(Some(service), format!("{field}.{k}"), "unsupported key"),
            }
        }
        let target = target.ok_or("long-form volume needs `target`")?;
        let source = match (kind.as_str(), source) {
            ("bind", Some(src)) => MountSource::Bind(self.dir.join(src)),
            ("volume", Some(src)) => MountSource::Named(src),
            ("volume", None) => MountSource::Anonymous,
            (other, _) => return Err(format!("unsupported volume type {other:?}")),
        };
        Ok(Mount {
            source,
            target,
            read_only,
        })
    }

    fn service_networks(
        &mut self,
        service: &str,
        field: &str,
        v: &Value,
    ) -> BTreeMap<String, Vec<String>> {
        let mut out = BTreeMap::new();
        match v {
            Value::Sequence(_) => {
                for n in self.list(service, field, v) {
                    out.insert(n, Vec::new());
                }
            }
            Value::Mapping(map) => {
                for (k, val) in map {
                    let Some(k) = Self::scalar(k) else { continue };
                    let mut aliases = Vec::new();
                    if let Some(m) = val.as_mapping() {
                        for (ok, ov) in m {
                            let ok = Self::scalar(ok).unwrap_or_default();
                            let f = format!("{field}.{k}.{ok}");
                            match ok.as_str() {
                                "aliases" => aliases = self.list(service, &f, ov),
                                _ => self.err(Some(service), f, "unsupported key"),
                            }
                        }
                    }
                    out.insert(k, aliases);
                }
            }
            _ => self.err(Some(service), field, "must be a list or a mapping"),
        }
        out
    }

    fn command(&mut self, service: &str, field: &str, v: &Value) -> Option<Vec<String>> {
        match v {
            Value::Sequence(_) => Some(self.list(service, field, v)),
            Value::Null => None,
            other => match Self::scalar(other).map(|s| split_shell_words(&s)) {
                Some(Ok(words)) => Some(words),
                Some(Err(e)) => {
                    self.err(Some(service), field, e);
                    None
                }
                None => {
                    self.err(Some(service), field, "must be a string or a list");
                    None
                }
            },
        }
    }

    fn restart(&mut self, service: &str, field: &str, v: &Value) -> Restart {
        let s = self.string(service, field, v).unwrap_or_default();
        match s.as_str() {
            "no" | "false" | "" => Restart::No,
            "always" => Restart::Always,
            "unless-stopped" => Restart::UnlessStopped,
            "on-failure" => Restart::OnFailure(None),
            other => match other.strip_prefix("on-failure:").map(str::parse::<i64>) {
                Some(Ok(n)) => Restart::OnFailure(Some(n)),
                _ => {
                    self.err(
                        Some(service),
                        field,
                        format!(
                            "{other:?} is not one of no, always, on-failure[:N], unless-stopped"
                        ),
                    );
                    Restart::No
                }
            },
        }
    }

    fn healthcheck(&mut self, service: &str, field: &str, v: &Value) -> Option<Healthcheck> {
        let Some(map) = v.as_mapping() else {
            self.err(Some(service), field, "must be a mapping");
            return None;
        };
        let mut h = Healthcheck {
            test: Vec::new(),
            interval: None,
            timeout: None,
            retries: None,
            start_period: None,
        };
        let mut disabled = false;
        for (k, val) in map {
            let k = Self::scalar(k).unwrap_or_default();
            let f = format!("{field}.{k}");
            let duration = |p: &mut Self| {
                p.string(service, &f, val).and_then(|d| {
                    parse_duration(&d)
                        .map_err(|e| p.err(Some(service), &f, e))
                        .ok()
                })
            };
            match k.as_str() {
                "test" => {
                    h.test = match val {
                        Value::Sequence(_) => self.list(service, &f, val),
                        other => match Self::scalar(other) {
                            Some(s) => vec!["CMD-SHELL".to_owned(), s],
                            None => {
                                self.err(Some(service), &f, "must be a string or a list");
                                Vec::new()
                            }
                        },
                    };
                    if let Some(first) = h.test.first()
                        && !matches!(first.as_str(), "CMD" | "CMD-SHELL" | "NONE")
                    {
                        self.err(
                            Some(service),
                            &f,
                            "a list must start with CMD, CMD-SHELL or NONE",
                        );
                    }
                }
                "interval" => h.interval = duration(self),
                "timeout" => h.timeout = duration(self),
                "start_period" => h.start_period = duration(self),
                "retries" => match val.as_i64() {
                    Some(n) => h.retries = Some(n),
                    None => self.err(Some(service), &f, "must be an integer"),
                },
                "disable" => disabled = self.boolean(service, &f, val),
                _ => self.err(Some(service), f, "unsupported key"),
            }
        }
        if disabled {
            h.test = vec!["NONE".to_owned()];
        } else if h.test.is_empty() {
            self.err(Some(service), field, "needs `test` (or `disable: true`)");
        }
        Some(h)
    }

    fn depends_on(&mut self, service: &str, field: &str, v: &Value) -> BTreeMap<String, Condition> {
        let mut out = BTreeMap::new();
        match v {
            Value::Sequence(_) => {
                for dep in self.list(service, field, v) {
                    out.insert(dep, Condition::Started);
                }
            }
            Value::Mapping(map) => {
                for (k, val) in map {
                    let Some(dep) = Self::scalar(k) else { continue };
                    let mut cond = Condition::Started;
                    if let Some(m) = val.as_mapping() {
                        for (ok, ov) in m {
                            let ok = Self::scalar(ok).unwrap_or_default();
                            let f = format!("{field}.{dep}.{ok}");
                            match ok.as_str() {
                                "condition" => {
                                    cond = match ov.as_str() {
                                        Some("service_started") => Condition::Started,
                                        Some("service_healthy") => Condition::Healthy,
                                        Some("service_completed_successfully") => {
                                            Condition::CompletedSuccessfully
                                        }
                                        _ => {
                                            self.err(Some(service), f, "must be service_started, service_healthy or service_completed_successfully");
                                            Condition::Started
                                        }
                                    }
                                }
                                "required" if ov.as_bool() == Some(true) => {}
                                _ => self.err(Some(service), f, "unsupported key"),
                            }
                        }
                    }
                    out.insert(dep, cond);
                }
            }
            _ => self.err(Some(service), field, "must be a list or a mapping"),
        }
        out
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

/// `a/./b/../c` -> `a/c` without touching the file system.
pub fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

fn lexically_inside(path: &Path, dir: &Path) -> bool {
    normalize(path).starts_with(normalize(dir))
}

fn check_protocol(p: &str) -> Result<(), String> {
    if p == "tcp" || p == "udp" {
        Ok(())
    } else {
        Err(format!("unsupported protocol {p:?}"))
    }
}

fn parse_port(s: &str) -> Result<u16, String> {
    match s.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!("invalid port {s:?}")),
    }
}

fn parse_range(s: &str) -> Result<(u16, u16), String> {
    match s.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (parse_port(a)?, parse_port(b)?);
            if a > b {
                return Err(format!("invalid port range {s:?}"));
            }
            Ok((a, b))
        }
        None => parse_port(s).map(|p| (p, p)),
    }
}

/// Short port syntax: `[ip:][host[-host]:]container[-container][/proto]`.
pub fn parse_short_port(s: &str) -> Result<Vec<PortSpec>, String> {
    let (spec, protocol) = s.rsplit_once('/').unwrap_or((s, "tcp"));
    check_protocol(protocol)?;
    // An IPv6 host ip is bracketed: `[::1]:80:80`.
    let (host_ip, rest) = if let Some(after) = spec.strip_prefix('[') {
        let (ip, rest) = after
            .split_once("]:")
            .ok_or_else(|| format!("invalid port {s:?}"))?;
        (Some(ip.to_owned()), rest)
    } else {
        let parts: Vec<&str> = spec.split(':').collect();
        match parts.len() {
            1 | 2 => (None, spec),
            3 => (Some(parts[0].to_owned()), &spec[parts[0].len() + 1..]),
            _ => return Err(format!("invalid port {s:?}")),
        }
    };
    let (host, container) = match rest.split_once(':') {
        Some((h, c)) => (Some(h), c),
        None => (None, rest),
    };
    let (c0, c1) = parse_range(container)?;
    let host = match host {
        Some("") | None => None,
        Some(h) => Some(parse_range(h)?),
    };
    if let Some((h0, h1)) = host
        && h1 - h0 != c1 - c0
        && h0 != h1
    {
        return Err(format!(
            "host and container port ranges differ in size in {s:?}"
        ));
    }
    Ok((c0..=c1)
        .enumerate()
        .map(|(i, c)| PortSpec {
            host_ip: host_ip.clone().filter(|ip| !ip.is_empty()),
            requested_host_port: host.map(|(h0, h1)| if h0 == h1 { h0 } else { h0 + i as u16 }),
            container_port: c,
            protocol: protocol.to_owned(),
        })
        .collect())
}

/// Compose/Go durations: `1m30s`, `10s`, `500ms`, `1h`, `2us`, `3ns`; a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let bad = || format!("invalid duration {s:?}");
    let mut total = Duration::ZERO;
    let mut rest = s;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let value: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let nanos_per = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(bad()),
        };
        total += Duration::from_nanos((value * nanos_per) as u64);
        rest = &rest[unit_len..];
    }
    Ok(total)
}

/// Splits a command string like a POSIX shell would (quotes and backslashes, no expansion).
pub fn split_shell_words(s: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(ch) => cur.push(ch),
                        None => return Err(format!("unterminated quote in {s:?}")),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(ch @ ('"' | '\\' | '$' | '`')) => cur.push(ch),
                            Some(ch) => {
                                cur.push('\\');
                                cur.push(ch);
                            }
                            None => return Err(format!("unterminated quote in {s:?}")),
                        },
                        Some(ch) => cur.push(ch),
                        None => return Err(format!("unterminated quote in {s:?}")),
                    }
                }
            }
            '\\' => {
                in_word = true;
                if let Some(ch) = chars.next() {
                    cur.push(ch);
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}
