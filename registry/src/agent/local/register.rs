//! Registration on the local agent: services and checks as `/v1/agent/*` receives them,
//! validated with Consul's rules and turned into the checks the runner executes.

use tokio::time::Instant;

use super::{AgentError, LocalAgent, LocalCheck, LocalState, MIN_DEREGISTER_AFTER, opt_duration};
use crate::checks::{CheckKind, CheckSpec, HttpProbe};
use crate::dto::{self, AgentCheckRegistration, AgentServiceRegistration};
use crate::store::state::{Check, CheckStatus, Service};

impl LocalAgent {
    /// `PUT /v1/agent/service/register`.
    pub fn register_service(
        &self,
        reg: AgentServiceRegistration,
        replace_existing_checks: bool,
    ) -> Result<(), AgentError> {
        if reg.name.is_empty() {
            return Err(AgentError::Invalid("Missing service name".into()));
        }
        let original = reg.clone();
        let id = reg
            .id
            .clone()
            .filter(|i| !i.is_empty())
            .unwrap_or_else(|| reg.name.clone());
        let weights = reg.weights.unwrap_or_default();
        let service = Service {
            node: self.node.clone(),
            id: id.clone(),
            name: reg.name.clone(),
            tags: reg.tags.clone(),
            address: reg.address.clone().unwrap_or_default(),
            port: reg.port.unwrap_or(0),
            meta: reg.meta.clone(),
            tagged_addresses: reg
                .tagged_addresses
                .iter()
                .map(|(k, v)| (k.clone(), (v.address.clone(), v.port)))
                .collect(),
            kind: reg.kind.clone().unwrap_or_default(),
            enable_tag_override: reg.enable_tag_override.unwrap_or(false),
            weights: (weights.passing, weights.warning),
            create_index: 0,
            modify_index: 0,
        };
        let defs: Vec<AgentCheckRegistration> = reg.check.into_iter().chain(reg.checks).collect();
        let many = defs.len() > 1;
        let mut built = Vec::with_capacity(defs.len());
        for (n, def) in defs.into_iter().enumerate() {
            let default_id = if many {
                format!("service:{id}:{}", n + 1)
            } else {
                format!("service:{id}")
            };
            let default_name = format!("Service '{}' check", reg.name);
            built.push(self.build_check(def, &default_id, &default_name, Some(&service))?);
        }
        for c in &built {
            if let Some(kind) = &c.kind {
                self.runner.validate(kind)?;
            }
        }
        let mut state = self.lock();
        if replace_existing_checks {
            let stale: Vec<String> = state
                .checks
                .values()
                .filter(|c| {
                    c.check.service_id == id && !built.iter().any(|b| b.check.id == c.check.id)
                })
                .map(|c| c.check.id.clone())
                .collect();
            for cid in stale {
                state.checks.remove(&cid);
                self.runner.stop(&cid);
            }
        }
        // Existing checks keep their service's current tags.
        for c in state.checks.values_mut() {
            if c.check.service_id == id {
                c.check.service_name.clone_from(&service.name);
                c.check.service_tags.clone_from(&service.tags);
            }
        }
        state.services.insert(id.clone(), service);
        for c in built {
            self.install_check(&mut state, c)?;
        }
        drop(state);
        self.save(|s| {
            s.services.insert(id, original);
        });
        self.bump();
        Ok(())
    }

    /// `PUT /v1/agent/check/register`.
    pub fn register_check(&self, def: AgentCheckRegistration) -> Result<(), AgentError> {
        let name = def.name.clone().unwrap_or_default();
        if name.is_empty() {
            return Err(AgentError::Invalid("Missing check name".into()));
        }
        let service = match def.service_id.as_deref().filter(|s| !s.is_empty()) {
            Some(sid) => Some(
                self.lock()
                    .services
                    .get(sid)
                    .cloned()
                    .ok_or_else(|| AgentError::NoSuchCheckService(sid.to_owned()))?,
            ),
            None => None,
        };
        let original = def.clone();
        let c = self.build_check(def, &name, &name, service.as_ref())?;
        if let Some(kind) = &c.kind {
            self.runner.validate(kind)?;
        }
        let id = c.check.id.clone();
        let mut state = self.lock();
        self.install_check(&mut state, c)?;
        drop(state);
        self.save(|s| {
            s.checks.insert(id, original);
        });
        self.bump();
        Ok(())
    }

    pub(super) fn install_check(
        &self,
        state: &mut LocalState,
        c: LocalCheck,
    ) -> Result<(), AgentError> {
        let id = c.check.id.clone();
        match &c.kind {
            Some(kind) => self.runner.start(CheckSpec {
                id: id.clone(),
                kind: kind.clone(),
                success_before_passing: c.success_before_passing,
                failures_before_critical: c.failures_before_critical,
            })?,
            None => self.runner.stop(&id),
        }
        state.checks.insert(id, c);
        Ok(())
    }

    pub(super) fn build_check(
        &self,
        def: AgentCheckRegistration,
        default_id: &str,
        default_name: &str,
        service: Option<&Service>,
    ) -> Result<LocalCheck, AgentError> {
        let id = def
            .check_id
            .clone()
            .or(def.id.clone())
            .filter(|i| !i.is_empty())
            .unwrap_or_else(|| default_id.to_owned());
        let status = match def.status.as_deref().filter(|s| !s.is_empty()) {
            None => CheckStatus::Critical,
            Some(s) => match CheckStatus::parse(s) {
                Some(
                    st @ (CheckStatus::Passing | CheckStatus::Warning | CheckStatus::Critical),
                ) => st,
                _ => return Err(AgentError::Invalid(format!("Invalid check status: {s:?}"))),
            },
        };
        let interval = opt_duration("Interval", def.interval.as_deref())?;
        let timeout = opt_duration("Timeout", def.timeout.as_deref())?;
        let ttl = opt_duration("TTL", def.ttl.as_deref())?;
        let need_interval = || {
            interval.ok_or_else(|| {
                AgentError::Invalid("Interval must be > 0 for Script, HTTP, or TCP checks".into())
            })
        };
        let (kind, check_type) = if let Some(ttl) = ttl {
            (Some(CheckKind::Ttl(ttl)), "ttl")
        } else if let Some(url) = def.http.clone().filter(|u| !u.is_empty()) {
            let headers = def
                .header
                .clone()
                .unwrap_or_default()
                .into_iter()
                .flat_map(|(k, vs)| vs.into_iter().map(move |v| (k.clone(), v)))
                .collect();
            let probe = HttpProbe {
                url,
                method: def
                    .method
                    .clone()
                    .filter(|m| !m.is_empty())
                    .unwrap_or_else(|| "GET".into()),
                headers,
                body: def.body.clone().unwrap_or_default(),
                tls_skip_verify: def.tls_skip_verify.unwrap_or(false),
                tls_server_name: def.tls_server_name.clone().filter(|n| !n.is_empty()),
                disable_redirects: def.disable_redirects.unwrap_or(false),
            };
            (
                Some(CheckKind::Http {
                    probe,
                    interval: need_interval()?,
                    timeout,
                }),
                "http",
            )
        } else if let Some(addr) = def.tcp.clone().filter(|a| !a.is_empty()) {
            (
                Some(CheckKind::Tcp {
                    addr,
                    interval: need_interval()?,
                    timeout,
                }),
                "tcp",
            )
        } else if let Some(args) = def.args.clone().filter(|a| !a.is_empty()) {
            (
                Some(CheckKind::Script {
                    args,
                    interval: need_interval()?,
                    timeout,
                }),
                "script",
            )
        } else {
            return Err(AgentError::Invalid(
                "Invalid check: TTL, HTTP, TCP or Args must be set".into(),
            ));
        };
        let deregister_after = opt_duration(
            "DeregisterCriticalServiceAfter",
            def.deregister_critical_service_after.as_deref(),
        )?
        .map(|d| d.max(MIN_DEREGISTER_AFTER));
        let definition = serde_json::json!({
            "Interval": interval.map(dto::go_duration).unwrap_or_default(),
            "Timeout": timeout.map(dto::go_duration).unwrap_or_default(),
            "TTL": ttl.map(dto::go_duration).unwrap_or_default(),
            "HTTP": def.http.clone().unwrap_or_default(),
            "TCP": def.tcp.clone().unwrap_or_default(),
            "DeregisterCriticalServiceAfter": deregister_after.map(dto::go_duration).unwrap_or_default(),
            "Header": def.header.clone().unwrap_or_default(),
            "Method": def.method.clone().unwrap_or_default(),
            "Body": def.body.clone().unwrap_or_default(),
            "TLSServerName": def.tls_server_name.clone().unwrap_or_default(),
            "TLSSkipVerify": def.tls_skip_verify.unwrap_or(false),
            "DisableRedirects": def.disable_redirects.unwrap_or(false),
            "ScriptArgs": def.args.clone().unwrap_or_default(),
        });
        let check = Check {
            node: self.node.clone(),
            id,
            name: def
                .name
                .clone()
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| default_name.to_owned()),
            status,
            notes: def.notes.clone().unwrap_or_default(),
            output: String::new(),
            service_id: service.map(|s| s.id.clone()).unwrap_or_default(),
            service_name: service.map(|s| s.name.clone()).unwrap_or_default(),
            service_tags: service.map(|s| s.tags.clone()).unwrap_or_default(),
            check_type: check_type.to_owned(),
            definition,
            create_index: 0,
            modify_index: 0,
        };
        let mut local = LocalCheck {
            check,
            kind,
            deregister_after,
            critical_since: None,
            success_before_passing: def.success_before_passing.unwrap_or(0),
            failures_before_critical: def.failures_before_critical.unwrap_or(0),
            output_deferred: false,
        };
        if status == CheckStatus::Critical {
            local.critical_since = Some(Instant::now());
        }
        Ok(local)
    }
}
