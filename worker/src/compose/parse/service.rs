//! One service's keys, and the parts too small for a file of their own: build, environment
//! and `env_file`, command, restart, healthcheck, depends_on, networks.

use std::collections::BTreeMap;

use serde_yaml_ng::Value;

use super::super::duration::parse_duration;
use super::super::interpolate::parse_env_file;
use super::super::model::{Build, Condition, Healthcheck, Resources, Restart, Service};
use super::super::shell_words::split_shell_words;
use super::super::{lexically_inside, read_in_project};
use super::Parser;
use super::ports::{check_protocol, parse_range};
use super::resources;

impl Parser<'_> {
    pub(super) fn service(&mut self, name: &str, value: &Value) -> Option<Service> {
        let Some(map) = value.as_mapping() else {
            self.err(Some(name), format!("services.{name}"), "must be a mapping");
            return None;
        };
        let mut s = Service::new(name);
        let mut env_files: Vec<String> = Vec::new();
        let mut deploy = Resources::default();
        // `x-berth-rollout` wins over `deploy.update_config.order`.
        let (mut order, mut rollout) = (None, None);
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
                "stop_signal" => {
                    s.stop_signal = self.string(name, &field, v).and_then(|sig| {
                        check_signal(&sig)
                            .map_err(|e| self.err(Some(name), &field, e))
                            .ok()
                    })
                }
                "init" => s.init = Some(self.boolean(name, &field, v)),
                "privileged" => s.privileged = self.boolean(name, &field, v),
                "pid" => s.pid = self.string(name, &field, v),
                "ipc" => s.ipc = self.string(name, &field, v),
                "devices" => s.devices = self.list(name, &field, v),
                "cap_add" => s.cap_add = self.list(name, &field, v),
                "cap_drop" => s.cap_drop = self.list(name, &field, v),
                k if resources::KEYS.contains(&k) => {
                    self.resource(name, k, &field, v, &mut s.resources)
                }
                "deploy" => self.deploy(name, &field, v, &mut deploy, &mut order),
                "links" => {
                    for item in self.list(name, &field, v) {
                        let (target, alias) = item.split_once(':').unwrap_or((&item, &item));
                        s.links.push((target.to_owned(), alias.to_owned()));
                    }
                }
                "x-berth-rollout" => match Self::scalar(v).as_deref() {
                    Some("stop-first") => rollout = Some(true),
                    Some("start-first") => rollout = Some(false),
                    _ => self.err(Some(name), field, "must be start-first or stop-first"),
                },
                k if k.starts_with("x-") => {}
                _ => self.err(Some(name), field, "unsupported key"),
            }
        }
        resources::apply_deploy(&mut s.resources, deploy);
        s.stop_first = rollout.or(order).unwrap_or(false);
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
            match read_in_project(&path, &self.root) {
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

/// A signal as Docker takes it: a name with or without `SIG` (`SIGTERM`, `TERM`, `SIGRTMIN+3`)
/// or a number from 1 to 64. Names are checked for shape only; the engine knows its list.
fn check_signal(sig: &str) -> Result<String, String> {
    let ok = match sig.parse::<u32>() {
        Ok(n) => (1..=64).contains(&n),
        Err(_) => {
            let name = sig.strip_prefix("SIG").unwrap_or(sig);
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '+' || c == '-')
                && name.starts_with(|c: char| c.is_ascii_uppercase())
        }
    };
    if ok {
        Ok(sig.to_owned())
    } else {
        Err(format!(
            "{sig:?} is not a signal (a name such as SIGTERM or a number 1-64)"
        ))
    }
}
