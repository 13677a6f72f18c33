//! Forwarders: a service that publishes TCP host ports gets a container of berth's own,
//! `<project>-<service>-1-fwd`, that holds those host port bindings and forwards each connection
//! to the service's current container (by its short id, an alias Docker gives every container on
//! a user-defined network) on the stack network; the app container then publishes no TCP port
//! itself, so a new one can start beside the old one. A rollout switches the forwarder to the new
//! container once it is ready (`berth-forward set` through `docker exec`): new connections go to
//! it, open ones carry on to the old container, which is stopped once they are done (`drain`,
//! up to its grace period). The forwarder's image, `berth-forward:<version>-<sha12>`, is built
//! `FROM scratch` from the binary the worker was given (`--forwarder-bin`); without one the
//! containers publish their ports themselves and such services roll stop-first. UDP ports are
//! always published by the app container.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::Path;
use std::time::Duration;

use bollard::exec::{StartExecOptions, StartExecResults};
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, EndpointSettings, ExecConfig, HostConfig,
    NetworkingConfig, PortBinding, RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{BuildImageOptionsBuilder, CreateContainerOptionsBuilder};
use futures::StreamExt;
use sha2::{Digest, Sha256};

use super::ports::port_key;
use super::readiness::Backoff;
use super::{StackError, Stacks, failed, force_with_volumes};
use crate::compose::plan::{self, Owner};
use crate::compose::{Project, Service};
use crate::docker::{self as dk, idempotent};
use crate::logbuf::LogBuf;

/// On a forwarder container: the service it forwards for.
pub const LABEL_FORWARD: &str = "org.berth.forward";
/// On a forwarder container: the hash of what it was made for (ports, network).
pub(super) const LABEL_FORWARD_HASH: &str = "org.berth.forward-hash";
/// On an app container whose TCP ports a forwarder holds: `port/proto=host_port` entries,
/// comma-separated (what the registrator advertises).
pub const LABEL_HOST_PORTS: &str = "org.berth.host-ports";
/// On the forwarder image.
pub(super) const LABEL_FORWARDER_IMAGE: &str = "org.berth.forwarder";

/// Where the binary sits in the image.
const BIN: &str = "/berth-forward";

/// The forwarder container of `service`.
pub(super) fn forwarder_name(project: &str, service: &str) -> String {
    format!("{}-fwd", plan::container_name(project, service))
}

/// Whether a container is a forwarder (by its labels).
pub(super) fn is_forwarder(labels: Option<&HashMap<String, String>>) -> bool {
    labels.is_some_and(|l| l.contains_key(LABEL_FORWARD))
}

/// `8080/tcp=32768,9090/tcp=32769` -> [(8080, tcp, 32768), ...]; what cannot be read is left out.
pub fn parse_host_ports(label: &str) -> Vec<(u16, String, u16)> {
    label
        .split(',')
        .filter_map(|e| {
            let (key, host) = e.split_once('=')?;
            let (port, proto) = key.split_once('/')?;
            Some((port.parse().ok()?, proto.to_owned(), host.parse().ok()?))
        })
        .collect()
}

/// The image tag for a forwarder binary: `berth-forward:<version>-<sha12 of the binary>`.
fn image_tag(binary: &[u8]) -> String {
    let digest = hex::encode(Sha256::digest(binary));
    format!(
        "berth-forward:{}-{}",
        env!("CARGO_PKG_VERSION"),
        &digest[..12]
    )
}

/// The build context: a `FROM scratch` Dockerfile and the binary.
fn context(binary: &[u8]) -> std::io::Result<Vec<u8>> {
    let dockerfile = format!(
        "FROM scratch\nCOPY berth-forward {BIN}\nLABEL {LABEL_FORWARDER_IMAGE}=true\nENTRYPOINT [\"{BIN}\"]\n"
    );
    let mut tar = tar::Builder::new(Vec::new());
    for (name, data, mode) in [
        ("Dockerfile", dockerfile.as_bytes(), 0o644),
        ("berth-forward", binary, 0o755),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_cksum();
        tar.append_data(&mut h, name, data)?;
    }
    tar.into_inner()
}

impl Stacks {
    /// The TCP ports of `s` a forwarder holds: all of them when the worker has a forwarder and
    /// the service sits on the stack's networks, else none.
    pub(super) fn forwarded_ports(&self, s: &Service) -> Vec<u16> {
        if self.settings.forwarder_bin.is_none()
            || s.network_mode.is_some()
            || s.networks.is_empty()
        {
            return Vec::new();
        }
        let mut ports: Vec<u16> = s
            .ports
            .iter()
            .filter(|p| p.protocol == "tcp")
            .map(|p| p.container_port)
            .collect();
        ports.sort_unstable();
        ports.dedup();
        ports
    }

    /// The forwarder image, built once per binary (kept: every stack with a forwarder uses it,
    /// and no stack's prune touches it).
    pub(super) async fn forwarder_image(&self, log: &LogBuf) -> Result<String, StackError> {
        let Some(bin) = self.settings.forwarder_bin.clone() else {
            return Err(failed("forwarder", "the worker has no forwarder binary"));
        };
        self.forward_image
            .get_or_try_init(|| self.build_forwarder_image(&bin, log))
            .await
            .cloned()
    }

    async fn build_forwarder_image(&self, bin: &Path, log: &LogBuf) -> Result<String, StackError> {
        let path = bin.to_path_buf();
        let binary = tokio::task::spawn_blocking(move || {
            let mut data = Vec::new();
            std::fs::File::open(&path)?.read_to_end(&mut data)?;
            Ok::<_, std::io::Error>(data)
        })
        .await
        .map_err(|e| failed("forwarder image", e.to_string()))?
        .map_err(|e| failed("forwarder image", format!("{}: {e}", bin.display())))?;
        let tag = image_tag(&binary);
        if self.docker.inspect_image(&tag).await.is_ok() {
            return Ok(tag);
        }
        let tar = context(&binary).map_err(|e| failed("forwarder image", e.to_string()))?;
        let opts = BuildImageOptionsBuilder::default()
            .t(&tag)
            .rm(true)
            .forcerm(true)
            .build();
        let mut stream = self
            .docker
            .build_image(opts, None, Some(bollard::body_full(tar.into())));
        while let Some(item) = stream.next().await {
            if let Err(e) = item {
                return Err(failed("forwarder image", dk::message(&e)));
            }
        }
        self.docker
            .inspect_image(&tag)
            .await
            .map_err(|e| failed("forwarder image", dk::message(&e)))?;
        log.line(&format!("built the forwarder image {tag}"));
        Ok(tag)
    }

    /// The forwarder container of `s` forwarding `forwarded` to `target`, and its hash.
    #[allow(clippy::too_many_arguments)]
    fn forwarder_spec(
        &self,
        project: &Project,
        s: &Service,
        forwarded: &[u16],
        ports: &BTreeMap<String, u16>,
        image: &str,
        target: &str,
        owner: &Owner,
    ) -> (ContainerCreateBody, String) {
        let name = forwarder_name(&project.name, &s.name);
        let network = s
            .networks
            .keys()
            .next()
            .map(|n| plan::network_name(&project.name, n));
        let mut bindings: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
        let mut cmd = vec!["serve".to_owned()];
        for p in forwarded {
            let host_port = ports[&port_key(&s.name, *p, "tcp")];
            bindings.insert(
                format!("{p}/tcp"),
                Some(vec![PortBinding {
                    host_ip: Some(self.settings.publish_address.clone()),
                    host_port: Some(host_port.to_string()),
                }]),
            );
            cmd.extend(["--port".to_owned(), p.to_string()]);
        }
        cmd.extend(["--target".to_owned(), target.to_owned()]);
        let mut keyed: Vec<(&String, &Option<Vec<PortBinding>>)> = bindings.iter().collect();
        keyed.sort_by_key(|(k, _)| *k);
        let what = format!(
            "{network:?} {:?}",
            keyed
                .iter()
                .map(|(k, b)| format!(
                    "{k}={}",
                    b.iter()
                        .flatten()
                        .map(|b| format!("{:?}:{:?}", b.host_ip, b.host_port))
                        .collect::<String>()
                ))
                .collect::<Vec<_>>()
        );
        let hash = hex::encode(Sha256::digest(what.as_bytes()));
        let mut labels = owner.labels();
        labels.insert(LABEL_FORWARD.to_owned(), s.name.clone());
        labels.insert(LABEL_FORWARD_HASH.to_owned(), hash.clone());
        labels.insert(plan::LABEL_PROJECT.to_owned(), project.name.clone());
        let body = ContainerCreateBody {
            image: Some(image.to_owned()),
            cmd: Some(cmd),
            labels: Some(labels),
            exposed_ports: Some(bindings.keys().cloned().collect()),
            // Nothing to flush: a stop need not wait.
            stop_signal: Some("SIGKILL".to_owned()),
            host_config: Some(HostConfig {
                port_bindings: Some(bindings),
                restart_policy: Some(RestartPolicy {
                    name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
                    maximum_retry_count: None,
                }),
                network_mode: network.clone(),
                memory: Some(64 << 20),
                pids_limit: Some(4096),
                ..Default::default()
            }),
            networking_config: network.map(|n| NetworkingConfig {
                endpoints_config: Some(HashMap::from([(
                    n,
                    EndpointSettings {
                        aliases: Some(vec![name]),
                        ..Default::default()
                    },
                )])),
            }),
            ..Default::default()
        };
        (body, hash)
    }

    /// The forwarder of `s` if one exists and is the stack's.
    pub(super) async fn forwarder(
        &self,
        project: &Project,
        service: &str,
        owner: &Owner,
    ) -> Result<Option<ContainerInspectResponse>, StackError> {
        self.owned_container(&forwarder_name(&project.name, service), owner)
            .await
    }

    /// Whether `fwd` is running and made for what `s` forwards now (so a switch is enough).
    pub(super) fn forwarder_current(
        &self,
        project: &Project,
        s: &Service,
        ports: &BTreeMap<String, u16>,
        fwd: Option<&ContainerInspectResponse>,
        owner: &Owner,
    ) -> bool {
        let forwarded = self.forwarded_ports(s);
        let Some(fwd) = fwd else { return false };
        if forwarded.is_empty() || fwd.state.as_ref().and_then(|s| s.running) != Some(true) {
            return false;
        }
        let (_, hash) = self.forwarder_spec(project, s, &forwarded, ports, "", "", owner);
        fwd.config
            .as_ref()
            .and_then(|c| c.labels.as_ref())
            .and_then(|l| l.get(LABEL_FORWARD_HASH))
            == Some(&hash)
    }

    /// Brings the forwarder of `s` to its spec, forwarding to the service's container: a
    /// current one is started if stopped and switched, another is replaced, a new one is noted
    /// in `created`.
    pub(super) async fn ensure_forwarder(
        &self,
        project: &Project,
        s: &Service,
        ports: &BTreeMap<String, u16>,
        owner: &Owner,
        log: &LogBuf,
        created: &mut Vec<String>,
    ) -> Result<(), StackError> {
        let forwarded = self.forwarded_ports(s);
        let name = forwarder_name(&project.name, &s.name);
        let current = self.forwarder(project, &s.name, owner).await?;
        if forwarded.is_empty() {
            if let Some(c) = current.and_then(|c| c.id) {
                idempotent(self.docker.remove_container(&c, force_with_volumes()).await)?;
                log.line(&format!("removed {name} (no port to forward)"));
            }
            return Ok(());
        }
        let target = self.target_of(project, &s.name).await?;
        let image = self.forwarder_image(log).await?;
        let (body, hash) =
            self.forwarder_spec(project, s, &forwarded, ports, &image, &target, owner);
        let same = current
            .as_ref()
            .and_then(|c| c.config.as_ref()?.labels.as_ref()?.get(LABEL_FORWARD_HASH))
            == Some(&hash);
        if same {
            let running = current
                .as_ref()
                .and_then(|c| c.state.as_ref()?.running)
                .unwrap_or(false);
            if !running {
                idempotent(self.docker.start_container(&name, None).await)?;
            }
            return self.switch(project, &s.name, &target, log).await;
        }
        if let Some(c) = current.and_then(|c| c.id) {
            log.line(&format!("recreating {name} (ports changed)"));
            idempotent(self.docker.remove_container(&c, force_with_volumes()).await)?;
        }
        let made = self
            .docker
            .create_container(
                Some(CreateContainerOptionsBuilder::default().name(&name).build()),
                body,
            )
            .await
            .map_err(|e| failed(&format!("create {name}"), dk::message(&e)))?;
        created.push(made.id);
        self.docker
            .start_container(&name, None)
            .await
            .map_err(|e| failed(&format!("start {name}"), dk::message(&e)))?;
        log.line(&format!("started {name}, forwarding to {target}"));
        Ok(())
    }

    /// Early in a start, beside the waits for the dependencies of `s` (a start after a stop):
    /// starts the stopped forwarder of `s` if it is still made for what `s` forwards now, so
    /// the container start (host port bindings and all) is off the path. Whether it did: the
    /// start then only switches it to the service's container once that runs (a target must
    /// resolve), else it makes or fixes the forwarder as after any start.
    pub(super) async fn forwarder_early(
        &self,
        project: &Project,
        s: &Service,
        ports: &BTreeMap<String, u16>,
        owner: &Owner,
        log: &LogBuf,
    ) -> Result<bool, StackError> {
        let forwarded = self.forwarded_ports(s);
        if forwarded.is_empty() {
            return Ok(false);
        }
        let Some(fwd) = self.forwarder(project, &s.name, owner).await? else {
            return Ok(false);
        };
        let (_, hash) = self.forwarder_spec(project, s, &forwarded, ports, "", "", owner);
        let labels = fwd.config.as_ref().and_then(|c| c.labels.as_ref());
        if labels.and_then(|l| l.get(LABEL_FORWARD_HASH)) != Some(&hash) {
            return Ok(false);
        }
        if fwd.state.as_ref().and_then(|s| s.running) != Some(true) {
            let name = forwarder_name(&project.name, &s.name);
            idempotent(self.docker.start_container(&name, None).await)?;
            log.line(&format!("service {}: forwarder started", s.name));
        }
        Ok(true)
    }

    /// What a forwarder connects to for `service`: its container's short id.
    pub(super) async fn target_of(
        &self,
        project: &Project,
        service: &str,
    ) -> Result<String, StackError> {
        let c = self
            .docker
            .inspect_container(&plan::container_name(&project.name, service), None)
            .await?;
        let id = c.id.unwrap_or_default();
        Ok(id[..id.len().min(12)].to_owned())
    }

    /// Points the forwarder of `service` at `target` (a container id): new connections go
    /// there from the moment this returns.
    pub(super) async fn switch(
        &self,
        project: &Project,
        service: &str,
        target: &str,
        log: &LogBuf,
    ) -> Result<(), StackError> {
        let short = &target[..target.len().min(12)];
        let name = forwarder_name(&project.name, service);
        // A forwarder started a moment ago may not answer yet: look again after a short
        // backoff, for a few seconds at most.
        let give_up = std::time::Instant::now() + Duration::from_secs(3);
        let mut pause = Backoff::default();
        let answer = loop {
            match self.exec_forward(&name, &["set", short]).await {
                Ok(a) => break a,
                Err(e) if std::time::Instant::now() > give_up => return Err(e),
                Err(_) => pause.sleep().await,
            }
        };
        log.line(&format!("service {service}: forwarder switched ({answer})"));
        Ok(())
    }

    /// Holds the new connections of `service`'s forwarder (accepted, not forwarded) until the
    /// next switch, one minute at most, then waits up to `grace` for the open ones: the old
    /// container of a stop-first service then stops with no request in flight and nobody is
    /// refused meanwhile.
    pub(super) async fn pause_and_drain(
        &self,
        project: &Project,
        service: &str,
        grace: Duration,
        log: &LogBuf,
    ) {
        let name = forwarder_name(&project.name, service);
        match self.exec_forward(&name, &["pause", "60"]).await {
            Ok(answer) => {
                log.line(&format!(
                    "service {service}: forwarder holds new connections ({answer})"
                ));
                self.drain(project, service, grace).await;
            }
            Err(e) => log.line(&format!(
                "service {service}: cannot pause the forwarder: {e}"
            )),
        }
    }

    /// Waits up to `limit` until the forwarder of `service` has no connection open to an
    /// earlier target.
    pub(super) async fn drain(&self, project: &Project, service: &str, limit: Duration) {
        let name = forwarder_name(&project.name, service);
        let secs = format!("{:.1}", limit.as_secs_f64());
        if let Err(e) = self.exec_forward(&name, &["drain", &secs]).await {
            tracing::debug!(forwarder = name, cause = %e, "cannot drain");
        }
    }

    /// Runs `berth-forward ARGS` in the forwarder container `name`; its output, or an error
    /// with it when it fails.
    pub(super) async fn exec_forward(
        &self,
        name: &str,
        args: &[&str],
    ) -> Result<String, StackError> {
        let mut cmd = vec![BIN.to_owned()];
        cmd.extend(args.iter().map(|a| (*a).to_owned()));
        let step = format!("{name}: berth-forward {}", args.join(" "));
        let exec = self
            .docker
            .create_exec(
                name,
                ExecConfig {
                    cmd: Some(cmd),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| failed(&step, dk::message(&e)))?;
        let mut out = String::new();
        match self
            .docker
            .start_exec(&exec.id, None::<StartExecOptions>)
            .await
            .map_err(|e| failed(&step, dk::message(&e)))?
        {
            StartExecResults::Attached { mut output, .. } => {
                while let Some(chunk) = output.next().await {
                    match chunk {
                        Ok(c) => out.push_str(&c.to_string()),
                        Err(e) => return Err(failed(&step, dk::message(&e))),
                    }
                }
            }
            StartExecResults::Detached => {}
        }
        let code = self
            .docker
            .inspect_exec(&exec.id)
            .await
            .map_err(|e| failed(&step, dk::message(&e)))?
            .exit_code;
        let out = out.trim().to_owned();
        if code == Some(0) {
            Ok(out)
        } else {
            Err(failed(&step, format!("exit {code:?}: {out}")))
        }
    }

    /// Removes forwarders of services that no longer forward (gone from the file, or without a
    /// TCP port).
    pub(super) async fn remove_stale_forwarders(
        &self,
        project: &Project,
        id: &berth_worker_api::ValidName,
        log: &LogBuf,
    ) -> Result<(), StackError> {
        for c in self.forwarders_of(id).await? {
            let service = c
                .labels
                .as_ref()
                .and_then(|l| l.get(LABEL_FORWARD))
                .cloned()
                .unwrap_or_default();
            let keep = project
                .service(&service)
                .is_some_and(|s| !self.forwarded_ports(s).is_empty());
            if !keep && let Some(cid) = c.id {
                idempotent(
                    self.docker
                        .remove_container(&cid, force_with_volumes())
                        .await,
                )?;
                log.line(&format!(
                    "removed the forwarder of {service} (nothing to forward)"
                ));
            }
        }
        Ok(())
    }

    /// Renames the forwarder `fwd` of `service` aside and stops it (a new one takes its place).
    pub(super) async fn put_forwarder_aside(
        &self,
        project: &Project,
        service: &str,
        fwd: &str,
    ) -> Result<super::rollout::Aside, StackError> {
        let name = super::forward::forwarder_name(&project.name, service);
        let aside = format!("{name}-old");
        idempotent(
            self.docker
                .remove_container(&aside, force_with_volumes())
                .await,
        )?;
        self.docker
            .rename_container(
                fwd,
                bollard::query_parameters::RenameContainerOptionsBuilder::new()
                    .name(&aside)
                    .build(),
            )
            .await?;
        idempotent(self.docker.stop_container(fwd, None).await)?;
        Ok(super::rollout::Aside {
            service: service.to_owned(),
            name,
            old: fwd.to_owned(),
            stopped: true,
            switched: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ports_label_round_trip_and_tag() {
        assert_eq!(
            parse_host_ports("8080/tcp=32768,90/tcp=5,bad,x/tcp=1"),
            vec![(8080, "tcp".to_owned(), 32768), (90, "tcp".to_owned(), 5)]
        );
        let tag = image_tag(b"binary");
        assert!(tag.starts_with("berth-forward:"), "{tag}");
        assert_eq!(tag.rsplit('-').next().unwrap().len(), 12);
        assert_eq!(forwarder_name("b1", "web"), "b1-web-1-fwd");
    }
}
