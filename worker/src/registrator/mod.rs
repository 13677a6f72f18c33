//! The registrator role: follows Docker events for this node's berth containers and keeps one
//! agent service per published port in sync (resync at start-up, after every event, after an
//! event-stream drop, after every stack operation and periodically), plus the worker's own
//! `berth-worker` registration.
//!
//! The mapping from containers to registrations and the resync diff are pure functions
//! (`registrations.rs`, over the container views of `view.rs`, judged by the `SERVICE_*` rules
//! of `compose::service_env`); this file is the loop: it gathers the views, applies the diff
//! through [`Agent`] and reacts to events. It knows the stack manager only through what
//! `lib.rs` hands it: the shared [`LogBook`] and a watch of the stack count. With a [`Fence`] it
//! has the fence remove the copies the master's records exclude first (at start-up, after every
//! failed resync or event-stream drop, every 30 s, and at once when the fence's watch of the
//! records sees one exclude a stack held here), and registers only instances the records place
//! here.

pub mod registrations;
pub mod view;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_worker_api::{META_CAPACITY, META_INSTANCES, META_VERSION, ValidName, WORKER_SERVICE};
use bollard::Docker;
use bollard::query_parameters::EventsOptionsBuilder;
use futures::StreamExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::compose::plan;
use crate::fence::Fence;
use crate::logbuf::LogBook;
use crate::registry::{
    Agent, Check, Registration, RegistryError, StateCheck, check_id, state_check_id,
};
use crate::stacks::Verdicts;
use registrations::{diff, registrations, relays_health, state_check};

/// A state check's status is sent again after this long even when it did not change (its TTL
/// is [`crate::registry::STATE_CHECK_TTL`]).
const STATE_REFRESH: Duration = Duration::from_secs(20);

/// The worker's own registration.
pub fn self_registration(
    node: &str,
    advertise: &str,
    port: u16,
    check_url: &str,
    instances: usize,
    capacity: u32,
) -> Registration {
    Registration {
        id: berth_worker_api::worker_service_id(node),
        name: WORKER_SERVICE.to_owned(),
        tags: Vec::new(),
        address: advertise.to_owned(),
        port,
        meta: BTreeMap::from([
            (
                META_VERSION.to_owned(),
                env!("CARGO_PKG_VERSION").to_owned(),
            ),
            (META_INSTANCES.to_owned(), instances.to_string()),
            (META_CAPACITY.to_owned(), capacity.to_string()),
        ]),
        check: Some(Check {
            name: Some("berth-worker health".to_owned()),
            http: Some(check_url.to_owned()),
            interval: Some("10s".to_owned()),
            timeout: Some("5s".to_owned()),
            ..Check::default()
        }),
        state: None,
    }
}

/// What the registrator loop carries from one resync to the next.
#[derive(Debug, Default)]
pub struct Synced {
    /// The worker's own registration as last sent.
    me: Option<Registration>,
    /// (instance, line) of the `SERVICE_*` refusals already logged.
    reported: BTreeSet<(String, String)>,
    /// Whether the last resync failed (the next one is a reconnect, fenced first).
    failing: bool,
    /// Whether the last reconciliation left stacks undecided (the next resync tries again).
    unsettled: bool,
    /// Per state check: what was last sent, and when.
    sent: HashMap<String, (StateCheck, Instant)>,
}

/// The registrator loop's inputs.
pub struct Registrator {
    pub docker: Docker,
    pub agent: Agent,
    /// The stack logs, where refusals are noted for the instance's owner.
    pub logs: LogBook,
    /// The number of stacks held (for self-registration); a new value wakes the loop.
    pub stack_count: watch::Receiver<usize>,
    pub node: String,
    pub advertise: String,
    /// The address container registrations carry (where their published ports are bound).
    pub public_host: String,
    /// Port and health URL of the worker API, for self-registration.
    pub api_port: u16,
    pub check_url: String,
    pub capacity: u32,
    /// The fence against copies the master's records place elsewhere (`None`: register every
    /// container of this node).
    pub fence: Option<Arc<Fence>>,
    /// The watcher's verdicts, which the state checks follow; a change wakes the loop.
    pub verdicts: watch::Receiver<Verdicts>,
}

impl Registrator {
    /// One full resync. Returns how many registrations changed.
    pub async fn resync(&self, synced: &mut Synced) -> anyhow::Result<usize> {
        let verdicts = self.verdicts.borrow().clone();
        let mut views = view::views(&self.docker, &self.node).await?;
        if let Some(fence) = &self.fence {
            views.retain(|v| fence.confirmed(&v.instance));
        }
        // A service speaks through a container that runs, else through its newest one.
        views.sort_by_key(|v| (!v.running, std::cmp::Reverse(v.created)));
        let mut spoken: HashSet<(String, String)> = HashSet::new();
        let mut desired = Vec::new();
        let mut health: HashMap<String, Option<String>> = HashMap::new();
        let mut refused = BTreeSet::new();
        for v in &views {
            let key = (v.instance.clone(), v.service.clone());
            let first = spoken.insert(key);
            if !v.running && !first {
                continue;
            }
            let verdict = verdicts
                .as_ref()
                .and_then(|all| all.get(&v.instance))
                .and_then(|services| services.iter().find(|h| h.name == v.service));
            let Some(state) = state_check(v.running, verdict) else {
                continue;
            };
            let (regs, lines) = registrations(v, &self.node, &self.public_host);
            for mut r in regs {
                health.insert(r.id.clone(), v.health.clone());
                r.state = Some(state.clone());
                desired.push(r);
            }
            refused.extend(lines.into_iter().map(|l| (v.instance.clone(), l)));
        }
        self.report(&refused, &synced.reported);
        synced.reported = refused;
        let existing = self.agent.services().await?;
        let (register, deregister) = diff(&desired, &existing, &self.node);
        let changes = register.len() + deregister.len();
        for id in &deregister {
            self.agent.deregister(id).await?;
        }
        for r in &register {
            self.agent.register(r).await?;
            synced.sent.remove(&state_check_id(&r.id));
        }
        self.send_states(&desired, synced).await?;
        for r in desired.iter().filter(|r| relays_health(r)) {
            let status = match health.get(&r.id).cloned().flatten().as_deref() {
                Some("healthy") => "passing",
                Some("starting") => "warning",
                _ => "critical",
            };
            if let Err(e) = self.agent.update_check(&check_id(&r.id), status).await {
                tracing::debug!(cause = %e, "cannot relay container health");
            }
        }
        let me = self_registration(
            &self.node,
            &self.advertise,
            self.api_port,
            &self.check_url,
            *self.stack_count.borrow(),
            self.capacity,
        );
        if synced.me.as_ref() != Some(&me) || !existing.contains_key(&me.id) {
            self.agent.register(&me).await?;
            synced.me = Some(me);
        }
        Ok(changes)
    }

    /// Sends each registration's state check its status and output when they changed, were
    /// never sent, or not within [`STATE_REFRESH`]; a registration whose check the agent lacks
    /// (registered by an older worker) is registered again.
    async fn send_states(
        &self,
        desired: &[Registration],
        synced: &mut Synced,
    ) -> Result<(), RegistryError> {
        let now = Instant::now();
        for r in desired {
            let Some(state) = &r.state else { continue };
            let id = state_check_id(&r.id);
            let fresh = synced
                .sent
                .get(&id)
                .is_some_and(|(s, at)| s == state && now.duration_since(*at) < STATE_REFRESH);
            if fresh {
                continue;
            }
            match self
                .agent
                .set_check(&id, &state.status, &state.output)
                .await
            {
                Ok(()) => {}
                Err(RegistryError::Status { status: 404, .. }) => {
                    self.agent.register(r).await?;
                    self.agent
                        .set_check(&id, &state.status, &state.output)
                        .await?;
                }
                Err(e) => return Err(e),
            }
            synced.sent.insert(id, (state.clone(), now));
        }
        let wanted: HashSet<String> = desired.iter().map(|r| state_check_id(&r.id)).collect();
        synced.sent.retain(|id, _| wanted.contains(id));
        Ok(())
    }

    /// Logs each refusal once while it lasts: in the worker log and in the instance's log.
    fn report(&self, refused: &BTreeSet<(String, String)>, reported: &BTreeSet<(String, String)>) {
        for (instance, line) in refused.difference(reported) {
            tracing::warn!(instance, "registrator: {line}");
            if let Ok(id) = ValidName::parse("instance", instance) {
                self.logs.get(&id).line(&format!("registrator: {line}"));
            }
        }
    }

    /// A resync, after the fence's reconciliation when `fence` is set, the last resync failed
    /// (a reconnect) or the last reconciliation left stacks undecided.
    async fn fenced_resync(&self, synced: &mut Synced, fence: bool) {
        if let Some(f) = &self.fence
            && (fence || synced.failing || synced.unsettled)
        {
            let done = f.reconcile().await;
            if !done.removed.is_empty() {
                tracing::warn!(removed = ?done.removed, "fence removed copies placed elsewhere");
            }
            synced.unsettled = done.undecided > 0;
        }
        match self.resync(synced).await {
            Ok(_) => synced.failing = false,
            Err(e) => {
                synced.failing = true;
                tracing::warn!(cause = %e, "registrator resync failed");
            }
        }
    }

    /// Runs until `shutdown`, then removes the worker's own registration.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut synced = Synced::default();
        let mut since = now_secs();
        let mut changed = self.stack_count.clone();
        let mut verdicts = self.verdicts.clone();
        // The first resync waits (briefly) for the watcher's first pass, so a container that
        // does not run is not deregistered only to come back with its verdict.
        let _ =
            tokio::time::timeout(Duration::from_secs(5), verdicts.wait_for(Option::is_some)).await;
        'outer: loop {
            self.fenced_resync(&mut synced, true).await;
            let filters = HashMap::from([
                ("type".to_owned(), vec!["container".to_owned()]),
                (
                    "label".to_owned(),
                    vec![
                        format!("{}=true", plan::LABEL_BERTH_MANAGED),
                        format!("{}={}", plan::LABEL_BERTH_NODE, self.node),
                    ],
                ),
            ]);
            let mut events = self.docker.events(Some(
                EventsOptionsBuilder::default()
                    .since(&since.to_string())
                    .filters(&filters)
                    .build(),
            ));
            let mut tick = tokio::time::interval(Duration::from_secs(30));
            tick.tick().await;
            loop {
                let mut fence = false;
                tokio::select! {
                    _ = shutdown.cancelled() => break 'outer,
                    Ok(()) = changed.changed() => {}
                    Ok(()) = verdicts.changed() => {}
                    _ = tick.tick() => fence = true,
                    () = excluded(self.fence.as_deref()) => fence = true,
                    event = events.next() => match event {
                        Some(Ok(ev)) => {
                            if let Some(t) = ev.time {
                                since = since.max(t);
                            }
                            let action = ev.action.unwrap_or_default();
                            let relevant = matches!(action.as_str(), "start" | "die" | "stop" | "kill" | "destroy" | "pause" | "unpause")
                                || action.starts_with("health_status");
                            if !relevant {
                                continue;
                            }
                            tracing::debug!(action, container = ev.actor.and_then(|a| a.id).unwrap_or_default(), "docker event");
                        }
                        Some(Err(e)) => {
                            tracing::warn!(cause = %e, "docker event stream failed; resyncing");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            continue 'outer;
                        }
                        None => {
                            tracing::warn!("docker event stream ended; resyncing");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            continue 'outer;
                        }
                    }
                }
                self.fenced_resync(&mut synced, fence).await;
            }
        }
        if let Some(me) = synced.me
            && let Err(e) = self.agent.deregister(&me.id).await
        {
            tracing::warn!(cause = %e, "cannot deregister the worker");
        }
    }
}

/// Resolves when the fence saw a record exclude a stack held here (never without a fence).
async fn excluded(fence: Option<&Fence>) {
    match fence {
        Some(f) => f.excluded().await,
        None => std::future::pending().await,
    }
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::view::sample as view;
    use super::*;

    #[test]
    fn self_registration_shape() {
        let r = self_registration(
            "n1",
            "10.0.0.5",
            8833,
            "http://127.0.0.1:8833/healthz",
            3,
            20,
        );
        assert_eq!(r.id, "berth-worker:n1");
        assert_eq!(r.name, WORKER_SERVICE);
        assert_eq!(r.meta[META_INSTANCES], "3");
        assert_eq!(r.meta[META_CAPACITY], "20");
        assert_eq!(
            r.check.unwrap().http.as_deref(),
            Some("http://127.0.0.1:8833/healthz")
        );
        let reg = &registrations(&view(&[], &[(80, "tcp", 1)], false), "n", "h").0[0];
        let json =
            serde_json::to_value(berth_consul::types::AgentServiceRegistration::from(reg)).unwrap();
        assert_eq!(json["ID"], "n:shop-web-1:80");
        assert_eq!(json["Check"]["TCP"], "h:1");
        assert!(json.get("Checks").is_none(), "{json}");
        // With its state check: both checks carry their ids, the state check its status.
        let mut reg = reg.clone();
        reg.state = Some(StateCheck {
            status: "critical".into(),
            output: "exited".into(),
        });
        let json = serde_json::to_value(berth_consul::types::AgentServiceRegistration::from(&reg))
            .unwrap();
        assert_eq!(json["Check"]["CheckID"], "service:n:shop-web-1:80");
        let state = &json["Checks"][0];
        assert_eq!(state["CheckID"], "service:n:shop-web-1:80:berth");
        assert_eq!(state["Name"], crate::registry::STATE_CHECK_NAME);
        assert_eq!(
            state["Status"], "warning",
            "not its real status, see the From impl"
        );
        assert_eq!(state["TTL"], crate::registry::STATE_CHECK_TTL);
    }
}
