//! What a stack may ask of the host: rejections (privileged, host namespaces, devices, extra
//! capabilities, the Docker socket, binds outside the checkout or below a writable bind, users
//! other than `--run-as-user`) and default resource limits.

use std::path::{Path, PathBuf};

use berth_worker_api::ErrorDetail;

use serde::Serialize;

use crate::compose::normalize;
use crate::compose::units::{self, format_bytes, format_cpus};
use crate::compose::{Limit, MountSource, Project, Resources, Service};

/// Limits and allowances applied to every container of every stack.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Capabilities `cap_add` may name (upper case, without `CAP_`).
    pub allowed_caps: Vec<String>,
    /// Memory limit of a container whose file sets none, in bytes (0 = none).
    pub memory_bytes: i64,
    /// CPU limit of a container whose file sets none, in billionths of a CPU (0 = none).
    pub nano_cpus: i64,
    /// Process limit of a container whose file sets none (0 = none).
    pub pids_limit: i64,
    /// The most memory a file may ask for per container, in bytes (0 = no cap).
    pub max_memory_bytes: i64,
    /// The most CPU a file may ask for per container, in billionths of a CPU (0 = no cap).
    pub max_nano_cpus: i64,
    /// The most processes a file may ask for per container (0 = no cap).
    pub max_pids: i64,
    /// When set, containers run as this user; a service asking for any other user is rejected.
    pub run_as_user: Option<String>,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            allowed_caps: Vec::new(),
            memory_bytes: 2 * 1024 * 1024 * 1024,
            nano_cpus: 1_000_000_000,
            pids_limit: 512,
            max_memory_bytes: 0,
            max_nano_cpus: 0,
            max_pids: 0,
            run_as_user: None,
        }
    }
}

/// The capped limits of one container as Docker gets them (`None` = Docker's default, none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Limits {
    pub memory: Option<i64>,
    pub nano_cpus: Option<i64>,
    /// `-1` = unlimited.
    pub pids: Option<i64>,
}

/// Parses sizes like `2g`, `512m`, `1.5GB`, `1073741824` into bytes (Compose's grammar).
pub fn parse_size(s: &str) -> Result<i64, String> {
    units::parse_bytes(s)
}

/// Parses a CPU count like `1.5` into billionths of a CPU.
pub fn parse_cpus(s: &str) -> Result<i64, String> {
    units::parse_cpus(s)
}

/// The file's value, else the default (at most the cap), else the cap, else none.
fn effective(file: Option<&Limit>, default: i64, cap: i64) -> Option<i64> {
    let default = match (default > 0, cap > 0) {
        (true, true) => Some(default.min(cap)),
        (true, false) => Some(default),
        (false, true) => Some(cap),
        (false, false) => None,
    };
    file.map(|l| l.value).or(default)
}

fn cap_name(cap: &str) -> String {
    let up = cap.trim().to_ascii_uppercase();
    up.strip_prefix("CAP_").unwrap_or(&up).to_owned()
}

/// Resolves `path` like the kernel would for a bind: `..` lexically first, then symlinks of the
/// longest existing prefix (a missing tail is appended as written; Docker creates it).
pub fn resolve(path: &Path) -> PathBuf {
    let path = normalize(path);
    let mut existing = path.clone();
    let mut tail = Vec::new();
    loop {
        if let Ok(real) = existing.canonicalize() {
            let mut out = real;
            for part in tail.iter().rev() {
                out.push(part);
            }
            return normalize(&out);
        }
        match (
            existing.file_name().map(ToOwned::to_owned),
            existing.parent(),
        ) {
            (Some(name), Some(parent)) => {
                tail.push(name);
                existing = parent.to_path_buf();
            }
            _ => return path,
        }
    }
}

/// `root/d/x` -> `./d/x`, for messages about paths in the checkout.
fn in_checkout(path: &Path, root: &Path) -> String {
    match path.strip_prefix(root) {
        Ok(rel) if rel.as_os_str().is_empty() => ".".to_owned(),
        Ok(rel) => format!("./{}", rel.display()),
        Err(_) => path.display().to_string(),
    }
}

/// Whether `src`, a bind source the policy resolved and admitted, still is exactly that path:
/// inside the checkout, with no symlink in it.
fn bind_unchanged(src: &Path, root: &Path) -> bool {
    src.starts_with(root) && resolve(src) == src
}

/// Checks the admitted bind sources of `s` again. Docker resolves a source anew at every mount,
/// so this runs right before a container is created or started.
pub fn recheck_binds(s: &Service, checkout: &Path) -> Result<(), ErrorDetail> {
    let root = resolve(checkout);
    for m in &s.volumes {
        if let MountSource::Bind(src) = &m.source
            && !bind_unchanged(src, &root)
        {
            return Err(ErrorDetail {
                service: Some(s.name.clone()),
                field: format!("services.{}.volumes", s.name),
                reason: format!(
                    "bind source {} changed after the policy check (a symlink appeared in it)",
                    in_checkout(src, &root)
                ),
            });
        }
    }
    Ok(())
}

impl Policy {
    /// What Docker gets for a service with resources `r`: its own limits, else the defaults;
    /// with a cap and no value from either, the cap.
    pub fn limits(&self, r: &Resources) -> Limits {
        Limits {
            memory: effective(r.memory.as_ref(), self.memory_bytes, self.max_memory_bytes),
            nano_cpus: effective(r.nano_cpus.as_ref(), self.nano_cpus, self.max_nano_cpus),
            pids: effective(r.pids.as_ref(), self.pids_limit, self.max_pids),
        }
    }

    /// The limits of `r` above this worker's caps, as `(field, reason)`: the key, the value as
    /// written and the cap (no limit at all is above any cap).
    fn above_caps(&self, service: &str, r: &Resources) -> Vec<(String, String)> {
        type Check<'a> = (&'a Option<Limit>, i64, &'static str, fn(i64) -> String);
        let checks: [Check<'_>; 3] = [
            (
                &r.memory,
                self.max_memory_bytes,
                "--max-memory",
                format_bytes,
            ),
            (&r.nano_cpus, self.max_nano_cpus, "--max-cpus", format_cpus),
            (&r.pids, self.max_pids, "--max-pids", |n| n.to_string()),
        ];
        let prefix = format!("services.{service}.");
        let mut out = Vec::new();
        for (limit, cap, flag, show) in checks {
            let Some(l) = limit else { continue };
            if cap > 0 && (l.value <= 0 || l.value > cap) {
                let key = l.field.strip_prefix(&prefix).unwrap_or(&l.field);
                let unlimited = if l.value <= 0 { " (no limit)" } else { "" };
                out.push((
                    l.field.clone(),
                    format!(
                        "{key} {}{unlimited} is above this worker's cap of {} ({flag})",
                        l.text,
                        show(cap)
                    ),
                ));
            }
        }
        out
    }

    /// The user every container runs as, if the worker sets one.
    fn run_as(&self) -> Option<&str> {
        self.run_as_user.as_deref().filter(|u| !u.is_empty())
    }

    /// Every reason the project may not run, or `Ok` when it may. `checkout` is the root of the
    /// instance's source tree. On success every bind source and build context in `project` is
    /// the resolved path that was judged, so what Docker gets is exactly what was checked.
    pub fn check(&self, project: &mut Project, checkout: &Path) -> Result<(), Vec<ErrorDetail>> {
        let root = resolve(checkout);
        let mut errors = Vec::new();
        // (service, resolved source, read only) of every admitted bind, for the nesting rule.
        let mut binds: Vec<(String, PathBuf, bool)> = Vec::new();
        for s in &mut project.services {
            let name = s.name.clone();
            for (field, reason) in self.above_caps(&name, &s.resources) {
                errors.push(ErrorDetail {
                    service: Some(name.clone()),
                    field,
                    reason,
                });
            }
            let mut reject = |field: &str, reason: String| {
                errors.push(ErrorDetail {
                    service: Some(name.clone()),
                    field: format!("services.{name}.{field}"),
                    reason,
                });
            };
            if s.privileged {
                reject("privileged", "privileged containers are not allowed".into());
            }
            if let Some(mode) = &s.network_mode {
                match mode.as_str() {
                    "host" => reject("network_mode", "the host network is not allowed".into()),
                    "none" | "bridge" | "default" => {}
                    other => reject(
                        "network_mode",
                        format!(
                            "network_mode {other:?} is not allowed (only none or the stack's networks)"
                        ),
                    ),
                }
            }
            for (field, value) in [("pid", &s.pid), ("ipc", &s.ipc)] {
                match value.as_deref() {
                    None | Some("private") | Some("shareable") => {}
                    Some("host") => {
                        reject(field, format!("the host {field} namespace is not allowed"))
                    }
                    Some(other) => reject(field, format!("{field} {other:?} is not allowed")),
                }
            }
            if !s.devices.is_empty() {
                reject("devices", "device mounts are not allowed".into());
            }
            for cap in &s.cap_add {
                let name = cap_name(cap);
                if !self.allowed_caps.iter().any(|a| cap_name(a) == name) {
                    reject(
                        "cap_add",
                        format!(
                            "capability {name} is not in the allowed list ({})",
                            self.allowed_caps.join(", ")
                        ),
                    );
                }
            }
            if let (Some(run_as), Some(user)) = (self.run_as(), &s.user)
                && !user.is_empty()
                && user != run_as
            {
                reject(
                    "user",
                    format!(
                        "this worker runs every container as {run_as:?}; leave user empty or set exactly that"
                    ),
                );
            }
            for m in &mut s.volumes {
                let MountSource::Bind(src) = &mut m.source else {
                    if m.target.contains("docker.sock") {
                        reject(
                            "volumes",
                            format!("{} looks like the Docker socket", m.target),
                        );
                    }
                    continue;
                };
                let real = resolve(src);
                if src.to_string_lossy().contains("docker.sock")
                    || real.to_string_lossy().contains("docker.sock")
                    || m.target.contains("docker.sock")
                {
                    reject(
                        "volumes",
                        "mounting the Docker socket is not allowed".into(),
                    );
                } else if !real.starts_with(&root) {
                    reject(
                        "volumes",
                        format!("bind source {} is outside the checkout", src.display()),
                    );
                } else {
                    binds.push((name.clone(), real.clone(), m.read_only));
                    *src = real;
                }
            }
            if let Some(build) = &mut s.build {
                let ctx = resolve(&build.context);
                if !ctx.starts_with(&root) {
                    reject(
                        "build.context",
                        format!(
                            "build context {} is outside the checkout",
                            build.context.display()
                        ),
                    );
                } else if !resolve(&ctx.join(&build.dockerfile)).starts_with(&ctx) {
                    reject(
                        "build.dockerfile",
                        format!(
                            "dockerfile {:?} is outside the build context",
                            build.dockerfile
                        ),
                    );
                } else {
                    build.context = ctx;
                }
            }
        }
        // A container may replace anything below a writable bind with a symlink, and Docker
        // follows it when it mounts a bind source there (on create, restart or daemon restart).
        for (service, src, _) in &binds {
            let writable_above = binds
                .iter()
                .find(|(_, outer, read_only)| !read_only && src != outer && src.starts_with(outer));
            if let Some((writer, outer, _)) = writable_above {
                errors.push(ErrorDetail {
                    service: Some(service.clone()),
                    field: format!("services.{service}.volumes"),
                    reason: format!(
                        "bind source {} lies inside {}, which service {writer} mounts writable (a container could replace it with a symlink)",
                        in_checkout(src, &root),
                        in_checkout(outer, &root),
                    ),
                });
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// The user a service's container runs as: its own, else the worker's (an empty `user`
    /// counts as none).
    pub fn user_for(&self, service_user: Option<&str>) -> Option<String> {
        service_user
            .filter(|u| !u.is_empty())
            .or(self.run_as())
            .map(str::to_owned)
    }
}

#[cfg(test)]
mod tests;
