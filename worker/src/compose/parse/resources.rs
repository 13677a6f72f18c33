//! A service's resource keys: `mem_limit`, `memswap_limit`, `mem_reservation`, `cpus`,
//! `cpu_shares`, `cpuset`, `pids_limit`, `shm_size`, `ulimits`, `tmpfs` and
//! `deploy.resources.{limits,reservations}` (which win over the top-level keys, as in Docker
//! Compose), in Compose's value grammar (sizes like `512m` or `1.5GB`, CPUs as a float).

use serde_yaml_ng::Value;

use super::Parser;
use crate::compose::model::{Limit, Resources};
use crate::compose::units::{parse_bytes, parse_cpus};

/// The top-level resource keys of a service.
pub(super) const KEYS: &[&str] = &[
    "mem_limit",
    "memswap_limit",
    "mem_reservation",
    "cpus",
    "cpu_shares",
    "cpuset",
    "pids_limit",
    "shm_size",
    "ulimits",
    "tmpfs",
];

impl Parser<'_> {
    /// Reads top-level resource key `key` (one of [`KEYS`]) into `r`.
    pub(super) fn resource(
        &mut self,
        service: &str,
        key: &str,
        field: &str,
        v: &Value,
        r: &mut Resources,
    ) {
        match key {
            "mem_limit" => r.memory = self.byte_limit(service, field, v),
            "memswap_limit" => r.memswap = self.bytes(service, field, v, true),
            "mem_reservation" => r.memory_reservation = self.bytes(service, field, v, false),
            "cpus" => r.nano_cpus = self.cpu_limit(service, field, v),
            "cpu_shares" => r.cpu_shares = self.integer(service, field, v, 0),
            "cpuset" => r.cpuset = self.string(service, field, v),
            "pids_limit" => r.pids = self.pids_limit(service, field, v),
            "shm_size" => r.shm_size = self.bytes(service, field, v, false),
            "ulimits" => self.ulimits(service, field, v, r),
            "tmpfs" => {
                for item in self.list(service, field, v) {
                    let (path, opts) = item.split_once(':').unwrap_or((&item, ""));
                    if !path.starts_with('/') {
                        self.err(
                            Some(service),
                            field,
                            format!("{path:?} must be an absolute path"),
                        );
                    } else {
                        r.tmpfs.insert(path.to_owned(), opts.to_owned());
                    }
                }
            }
            _ => unreachable!("not a resource key: {key}"),
        }
    }

    /// `deploy`: `resources` (limits: cpus, memory, pids; reservations: memory, and cpus,
    /// which only Swarm applies; [`apply_deploy`] lets it win over the top level) and
    /// `update_config.order` (`stop-first` sets `stop_first`, `start-first` clears it).
    pub(super) fn deploy(
        &mut self,
        service: &str,
        field: &str,
        v: &Value,
        r: &mut Resources,
        stop_first: &mut Option<bool>,
    ) {
        let Some(map) = v.as_mapping() else {
            self.err(Some(service), field, "must be a mapping");
            return;
        };
        for (k, val) in map {
            let k = Self::scalar(k).unwrap_or_default();
            let f = format!("{field}.{k}");
            match k.as_str() {
                "resources" => {
                    let Some(res) = val.as_mapping() else {
                        self.err(Some(service), f, "must be a mapping");
                        continue;
                    };
                    for (kind, spec) in res {
                        let kind = Self::scalar(kind).unwrap_or_default();
                        let f = format!("{f}.{kind}");
                        let limits = match kind.as_str() {
                            "limits" => true,
                            "reservations" => false,
                            _ => {
                                self.err(Some(service), f, "unsupported key");
                                continue;
                            }
                        };
                        let Some(spec) = spec.as_mapping() else {
                            self.err(Some(service), f, "must be a mapping");
                            continue;
                        };
                        for (key, value) in spec {
                            let key = Self::scalar(key).unwrap_or_default();
                            let f = format!("{f}.{key}");
                            match (limits, key.as_str()) {
                                (true, "memory") => {
                                    if let Some(l) = self.byte_limit(service, &f, value) {
                                        r.memory = Some(l);
                                    }
                                }
                                (true, "cpus") => {
                                    if let Some(l) = self.cpu_limit(service, &f, value) {
                                        r.nano_cpus = Some(l);
                                    }
                                }
                                (true, "pids") => {
                                    if let Some(l) = self.pids_limit(service, &f, value) {
                                        r.pids = Some(l);
                                    }
                                }
                                (false, "memory") => {
                                    if let Some(b) = self.bytes(service, &f, value, false) {
                                        r.memory_reservation = Some(b);
                                    }
                                }
                                // A CPU reservation is a Swarm scheduling hint; Docker Compose
                                // ignores it for plain containers, and so does berth.
                                (false, "cpus") => {
                                    self.cpu_limit(service, &f, value);
                                }
                                _ => self.err(Some(service), f, "unsupported key"),
                            }
                        }
                    }
                }
                "update_config" => {
                    let Some(update) = val.as_mapping() else {
                        self.err(Some(service), f, "must be a mapping");
                        continue;
                    };
                    for (key, value) in update {
                        let key = Self::scalar(key).unwrap_or_default();
                        let f = format!("{f}.{key}");
                        match (key.as_str(), Self::scalar(value).as_deref()) {
                            ("order", Some("stop-first")) => *stop_first = Some(true),
                            ("order", Some("start-first")) => *stop_first = Some(false),
                            ("order", _) => {
                                self.err(Some(service), f, "must be start-first or stop-first")
                            }
                            _ => self.err(
                                Some(service),
                                f,
                                "unsupported key (of update_config only order is supported)",
                            ),
                        }
                    }
                }
                k if k.starts_with("x-") => {}
                _ => self.err(
                    Some(service),
                    f,
                    "unsupported key (of deploy only resources and update_config are supported)",
                ),
            }
        }
    }

    /// A size: a YAML integer (bytes) or a string such as `512m`; `-1` only with `minus_one`.
    fn bytes(&mut self, service: &str, field: &str, v: &Value, minus_one: bool) -> Option<i64> {
        let text = Self::scalar(v);
        let parsed = match (v.as_i64(), text.as_deref()) {
            (Some(-1), _) | (_, Some("-1")) if minus_one => Ok(-1),
            (Some(n), _) if n >= 0 => Ok(n),
            (_, Some(t)) => parse_bytes(t),
            _ => Err("must be a size such as 512m or 1g".to_owned()),
        };
        parsed.map_err(|e| self.err(Some(service), field, e)).ok()
    }

    fn byte_limit(&mut self, service: &str, field: &str, v: &Value) -> Option<Limit> {
        let value = self.bytes(service, field, v, false)?;
        Some(Limit {
            value,
            field: field.to_owned(),
            text: Self::scalar(v).unwrap_or_default(),
        })
    }

    fn cpu_limit(&mut self, service: &str, field: &str, v: &Value) -> Option<Limit> {
        let text = Self::scalar(v).unwrap_or_default();
        let value = parse_cpus(&text)
            .map_err(|e| self.err(Some(service), field, e))
            .ok()?;
        Some(Limit {
            value,
            field: field.to_owned(),
            text,
        })
    }

    /// A process limit: a positive integer, or `-1` / `0` for none.
    fn pids_limit(&mut self, service: &str, field: &str, v: &Value) -> Option<Limit> {
        let value = self.integer(service, field, v, -1)?;
        Some(Limit {
            value: if value == 0 { -1 } else { value },
            field: field.to_owned(),
            text: value.to_string(),
        })
    }

    /// An integer (a YAML number or a numeric string) of at least `min`.
    fn integer(&mut self, service: &str, field: &str, v: &Value, min: i64) -> Option<i64> {
        let n = v
            .as_i64()
            .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()));
        match n {
            Some(n) if n >= min => Some(n),
            _ => {
                self.err(
                    Some(service),
                    field,
                    format!("must be an integer of at least {min}"),
                );
                None
            }
        }
    }

    /// `ulimits`: `name: n` (soft = hard) or `name: {soft, hard}`.
    fn ulimits(&mut self, service: &str, field: &str, v: &Value, r: &mut Resources) {
        let Some(map) = v.as_mapping() else {
            self.err(Some(service), field, "must be a mapping");
            return;
        };
        for (name, val) in map {
            let name = Self::scalar(name).unwrap_or_default();
            let f = format!("{field}.{name}");
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_lowercase()) {
                self.err(Some(service), &f, "must be a ulimit name such as nofile");
                continue;
            }
            let pair = match val {
                Value::Mapping(m) => {
                    let mut get = |k: &str| match m.get(k) {
                        Some(x) => self.integer(service, &format!("{f}.{k}"), x, -1),
                        None => {
                            self.err(Some(service), &f, "needs both soft and hard");
                            None
                        }
                    };
                    let soft = get("soft");
                    let hard = get("hard");
                    for k in m.keys().filter_map(Self::scalar) {
                        if k != "soft" && k != "hard" {
                            self.err(Some(service), format!("{f}.{k}"), "unsupported key");
                        }
                    }
                    soft.zip(hard)
                }
                other => self.integer(service, &f, other, -1).map(|n| (n, n)),
            };
            if let Some((soft, hard)) = pair {
                if hard != -1 && (soft == -1 || soft > hard) {
                    self.err(Some(service), &f, "soft must not be above hard");
                } else {
                    r.ulimits.insert(name, (soft, hard));
                }
            }
        }
    }
}

/// `deploy.resources` wins over the top-level keys, as in Docker Compose.
pub(super) fn apply_deploy(r: &mut Resources, deploy: Resources) {
    if deploy.memory.is_some() {
        r.memory = deploy.memory;
    }
    if deploy.nano_cpus.is_some() {
        r.nano_cpus = deploy.nano_cpus;
    }
    if deploy.pids.is_some() {
        r.pids = deploy.pids;
    }
    if deploy.memory_reservation.is_some() {
        r.memory_reservation = deploy.memory_reservation;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use crate::compose::{Condition, Project, Resources};

    fn load(yaml: &str) -> Result<Project, Vec<String>> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("compose.yaml"), yaml).unwrap();
        crate::compose::load(dir.path(), "p").map_err(|e| {
            e.details()
                .into_iter()
                .map(|d| format!("{}: {}", d.field, d.reason))
                .collect()
        })
    }

    fn resources(keys: &str) -> Result<Resources, Vec<String>> {
        load(&format!("services:\n  web:\n    image: x\n{keys}\n"))
            .map(|p| p.service("web").unwrap().resources.clone())
    }

    #[test]
    fn resource_keys_in_compose_grammar() {
        let r = resources(
            "    mem_limit: 1.5GB\n    memswap_limit: -1\n    mem_reservation: 256m\n    cpus: 0.5\n    cpu_shares: 512\n    cpuset: 0-1\n    pids_limit: 100\n    shm_size: 64m\n    ulimits: {nofile: {soft: 1024, hard: 2048}, nproc: 65535}\n    tmpfs: [/run, \"/tmp:size=64m,mode=1777\"]",
        )
        .unwrap();
        let m = r.memory.unwrap();
        assert_eq!(
            (m.value, m.field.as_str(), m.text.as_str()),
            (3 << 29, "services.web.mem_limit", "1.5GB")
        );
        assert_eq!(r.memswap, Some(-1));
        assert_eq!(r.memory_reservation, Some(256 << 20));
        assert_eq!(r.nano_cpus.unwrap().value, 500_000_000);
        assert_eq!(r.cpu_shares, Some(512));
        assert_eq!(r.cpuset.as_deref(), Some("0-1"));
        assert_eq!(r.pids.unwrap().value, 100);
        assert_eq!(r.shm_size, Some(64 << 20));
        assert_eq!(
            r.ulimits,
            BTreeMap::from([
                ("nofile".to_owned(), (1024, 2048)),
                ("nproc".to_owned(), (65535, 65535))
            ])
        );
        assert_eq!(
            r.tmpfs,
            BTreeMap::from([
                ("/run".to_owned(), String::new()),
                ("/tmp".to_owned(), "size=64m,mode=1777".to_owned())
            ])
        );
        // A plain integer is bytes; a single tmpfs string works.
        let r = resources("    mem_limit: 1073741824\n    tmpfs: /cache").unwrap();
        assert_eq!(r.memory.unwrap().value, 1 << 30);
        assert_eq!(r.tmpfs.len(), 1);
    }

    #[test]
    fn deploy_resources_win_over_the_top_level_keys() {
        // Either order in the file: deploy wins, as in Docker Compose.
        for yaml in [
            "    mem_limit: 1g\n    cpus: 2\n    deploy: {resources: {limits: {memory: 512m, cpus: \"0.25\", pids: 50}, reservations: {memory: 128m, cpus: \"0.1\"}}}",
            "    deploy: {resources: {limits: {memory: 512m, cpus: \"0.25\", pids: 50}, reservations: {memory: 128m, cpus: \"0.1\"}}}\n    mem_limit: 1g\n    cpus: 2",
        ] {
            let r = resources(yaml).unwrap();
            let m = r.memory.unwrap();
            assert_eq!(
                (m.value, m.field.as_str()),
                (512 << 20, "services.web.deploy.resources.limits.memory")
            );
            assert_eq!(r.nano_cpus.unwrap().value, 250_000_000);
            assert_eq!(r.pids.unwrap().value, 50);
            assert_eq!(r.memory_reservation, Some(128 << 20));
        }
    }

    #[test]
    fn bad_resource_values_are_named() {
        let cases: &[(&str, &str)] = &[
            (
                "    mem_limit: lots",
                "services.web.mem_limit: \"lots\" is not a size",
            ),
            (
                "    mem_limit: -1",
                "services.web.mem_limit: \"-1\" is not a size",
            ),
            (
                "    cpus: many",
                "services.web.cpus: \"many\" is not a CPU count",
            ),
            (
                "    cpu_shares: -5",
                "services.web.cpu_shares: must be an integer of at least 0",
            ),
            (
                "    pids_limit: -2",
                "services.web.pids_limit: must be an integer of at least -1",
            ),
            (
                "    ulimits: {nofile: {soft: 10}}",
                "services.web.ulimits.nofile: needs both soft and hard",
            ),
            (
                "    ulimits: {nofile: {soft: 10, hard: 5}}",
                "services.web.ulimits.nofile: soft must not be above hard",
            ),
            (
                "    ulimits: {NOFILE: 5}",
                "services.web.ulimits.NOFILE: must be a ulimit name",
            ),
            (
                "    tmpfs: [tmp]",
                "services.web.tmpfs: \"tmp\" must be an absolute path",
            ),
            (
                "    deploy: {replicas: 3}",
                "services.web.deploy.replicas: unsupported key",
            ),
            (
                "    deploy: {resources: {limits: {devices: []}}}",
                "services.web.deploy.resources.limits.devices: unsupported key",
            ),
            (
                "    deploy: {resources: {reservations: {pids: 3}}}",
                "services.web.deploy.resources.reservations.pids: unsupported key",
            ),
            (
                "    links: [nothere]",
                "services.web.links: unknown service \"nothere\"",
            ),
        ];
        for (yaml, want) in cases {
            let got = resources(yaml).unwrap_err();
            assert!(
                got.len() == 1 && got[0].starts_with(want),
                "{yaml}\nwant {want}\ngot  {got:?}"
            );
        }
    }

    #[test]
    fn links_become_aliases_and_dependencies() {
        let p = load(
            "services:\n  web:\n    image: x\n    links: [db, \"cache:redis\"]\n  db:\n    image: x\n  cache:\n    image: x\n    networks: [default, back]\n  lone:\n    image: x\n    networks: [back]\n    links: [\"web:site\"]\nnetworks: {back: {}}\n",
        );
        let err = p.unwrap_err();
        assert_eq!(
            err,
            ["services.lone.links: service \"web\" shares no network with lone"]
        );
        let p = load(
            "services:\n  web:\n    image: x\n    links: [db, \"cache:redis\"]\n    depends_on: {cache: {condition: service_healthy}}\n  db:\n    image: x\n  cache:\n    image: x\n    networks: [default, back]\nnetworks: {back: {}}\n",
        )
        .unwrap();
        let web = p.service("web").unwrap();
        assert_eq!(
            web.depends_on,
            BTreeMap::from([
                ("cache".to_owned(), Condition::Healthy),
                ("db".to_owned(), Condition::Started)
            ])
        );
        let cache = p.service("cache").unwrap();
        assert_eq!(cache.networks["default"], ["redis"]);
        assert!(cache.networks["back"].is_empty());
        assert!(p.service("db").unwrap().networks["default"].is_empty());
    }
}
