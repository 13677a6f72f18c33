//! Tests of the host policy (`policy.rs`): rejections, binds, sizes, caps, limits, run-as-user.

use super::*;

fn check(policy: &Policy, service_yaml: &str) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("data")).unwrap();
    std::os::unix::fs::symlink("/etc", dir.path().join("etc-link")).unwrap();
    std::os::unix::fs::symlink("/var/run", dir.path().join("run-link")).unwrap();
    std::os::unix::fs::symlink("data", dir.path().join("data-link")).unwrap();
    std::fs::write(
        dir.path().join("compose.yaml"),
        format!("services:\n  web:\n    image: x\n{service_yaml}\nvolumes: {{named: {{}}}}\n"),
    )
    .unwrap();
    let mut project = crate::compose::load(dir.path(), "p").unwrap();
    match policy.check(&mut project, dir.path()) {
        Ok(()) => Vec::new(),
        Err(errs) => errs
            .into_iter()
            .map(|e| format!("{}|{}|{}", e.service.unwrap_or_default(), e.field, e.reason))
            .collect(),
    }
}

#[test]
fn rejections_name_service_field_and_reason() {
    let policy = Policy {
        allowed_caps: vec!["NET_BIND_SERVICE".into()],
        run_as_user: Some("1000".into()),
        ..Policy::default()
    };
    let cases: &[(&str, Option<&str>)] = &[
        (
            "    privileged: true",
            Some("web|services.web.privileged|privileged containers are not allowed"),
        ),
        ("    privileged: false", None),
        (
            "    network_mode: host",
            Some("web|services.web.network_mode|the host network is not allowed"),
        ),
        (
            "    network_mode: \"container:abc\"",
            Some("web|services.web.network_mode|network_mode \"container:abc\" is not allowed"),
        ),
        ("    network_mode: none", None),
        (
            "    pid: host",
            Some("web|services.web.pid|the host pid namespace is not allowed"),
        ),
        (
            "    ipc: host",
            Some("web|services.web.ipc|the host ipc namespace is not allowed"),
        ),
        (
            "    devices: [/dev/fuse]",
            Some("web|services.web.devices|device mounts are not allowed"),
        ),
        (
            "    cap_add: [SYS_ADMIN]",
            Some(
                "web|services.web.cap_add|capability SYS_ADMIN is not in the allowed list (NET_BIND_SERVICE)",
            ),
        ),
        ("    cap_add: [cap_net_bind_service]", None),
        (
            "    user: root",
            Some(
                "web|services.web.user|this worker runs every container as \"1000\"; leave user empty or set exactly that",
            ),
        ),
        (
            "    user: \"0:0\"",
            Some("web|services.web.user|this worker runs"),
        ),
        (
            "    user: \":0\"",
            Some("web|services.web.user|this worker runs"),
        ),
        (
            "    user: \"00\"",
            Some("web|services.web.user|this worker runs"),
        ),
        (
            "    user: \"1000:0\"",
            Some("web|services.web.user|this worker runs"),
        ),
        (
            "    user: admin",
            Some("web|services.web.user|this worker runs"),
        ),
        ("    user: \"1000\"", None),
        ("    user: \"\"", None),
        (
            "    volumes: [/var/run/docker.sock:/var/run/docker.sock]",
            Some("web|services.web.volumes|mounting the Docker socket is not allowed"),
        ),
        (
            "    volumes: [./run-link/docker.sock:/s]",
            Some("web|services.web.volumes|mounting the Docker socket is not allowed"),
        ),
        (
            "    volumes: [/etc:/host-etc:ro]",
            Some("web|services.web.volumes|bind source /etc is outside the checkout"),
        ),
        (
            "    volumes: [../../..:/up]",
            Some("web|services.web.volumes|bind source"),
        ),
        (
            "    volumes: [./etc-link:/e]",
            Some("web|services.web.volumes|bind source"),
        ),
        ("    volumes: [./data:/data, ./new/dir:/n, named:/v]", None),
        (
            "    volumes: [./data:/data, ./data/x:/x]",
            Some(
                "web|services.web.volumes|bind source ./data/x lies inside ./data, which service web mounts writable",
            ),
        ),
        (
            "    volumes: [.:/app, ./data:/data:ro]",
            Some(
                "web|services.web.volumes|bind source ./data lies inside ., which service web mounts writable",
            ),
        ),
        (
            "    volumes: [{type: bind, source: ./data, target: /d}, ./data-link/x:/x]",
            Some("web|services.web.volumes|bind source ./data/x lies inside ./data"),
        ),
        (
            "    volumes: [./data:/data:ro, ./data/x:/x, ./data:/again:ro]",
            None,
        ),
        ("    volumes: [./data:/a, ./data:/b, ./datum:/c]", None),
        (
            "    build: ..",
            Some("web|services.web.build.context|build context"),
        ),
        (
            "    build: {context: ., dockerfile: ../../Dockerfile}",
            Some(
                "web|services.web.build.dockerfile|dockerfile \"../../Dockerfile\" is outside the build context",
            ),
        ),
        (
            "    build: {context: ./data, dockerfile: Dockerfile.dev}",
            None,
        ),
    ];
    for (yaml, expected) in cases {
        let got = check(&policy, yaml);
        match expected {
            None => assert!(got.is_empty(), "{yaml}: {got:?}"),
            Some(want) => assert!(
                got.len() == 1 && got[0].starts_with(want),
                "{yaml}\nwant {want}\ngot {got:?}"
            ),
        }
    }
}

/// Checks a whole compose file; returns the project as admitted or the problems.
fn check_file(dir: &Path, compose: &str) -> Result<Project, Vec<String>> {
    std::fs::write(dir.join("compose.yaml"), compose).unwrap();
    let mut project = crate::compose::load(dir, "p").unwrap();
    Policy::default()
        .check(&mut project, dir)
        .map(|()| project)
        .map_err(|errs| {
            errs.into_iter()
                .map(|e| format!("{}|{}|{}", e.service.unwrap_or_default(), e.field, e.reason))
                .collect()
        })
}

#[test]
fn binds_below_another_services_writable_bind_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("d")).unwrap();
    let errs = check_file(
            dir.path(),
            "services:\n  planter: {image: x, volumes: [./d:/d]}\n  reader: {image: x, volumes: [./d/x:/host]}\n",
        )
        .unwrap_err();
    assert_eq!(
        errs,
        [
            "reader|services.reader.volumes|bind source ./d/x lies inside ./d, which service planter mounts writable (a container could replace it with a symlink)"
        ]
    );
    check_file(
            dir.path(),
            "services:\n  a: {image: x, volumes: [./d:/d:ro]}\n  b: {image: x, volumes: [./d/x:/x, ./d:/d2:ro]}\n",
        )
        .unwrap();
}

#[test]
fn admitted_binds_are_the_resolved_paths_and_rechecked() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    std::fs::create_dir(dir.path().join("data")).unwrap();
    std::os::unix::fs::symlink("data", dir.path().join("link")).unwrap();
    let project = check_file(
        dir.path(),
        "services:\n  web: {build: ./link, volumes: [./link:/l, ./new/sub:/n]}\n",
    )
    .unwrap();
    let web = project.service("web").unwrap();
    let srcs: Vec<&Path> = web
        .volumes
        .iter()
        .map(|m| match &m.source {
            MountSource::Bind(p) => p.as_path(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(srcs, [root.join("data"), root.join("new/sub")]);
    assert_eq!(web.build.as_ref().unwrap().context, root.join("data"));
    recheck_binds(web, dir.path()).unwrap();

    // A symlink planted after the check is noticed before Docker follows it.
    std::fs::create_dir(dir.path().join("new")).unwrap();
    std::os::unix::fs::symlink("/etc", dir.path().join("new/sub")).unwrap();
    let err = recheck_binds(web, dir.path()).unwrap_err();
    assert_eq!(
        (err.field.as_str(), err.reason.as_str()),
        (
            "services.web.volumes",
            "bind source ./new/sub changed after the policy check (a symlink appeared in it)"
        )
    );
    std::fs::remove_file(dir.path().join("new/sub")).unwrap();
    recheck_binds(web, dir.path()).unwrap();
    std::fs::remove_dir(dir.path().join("data")).unwrap();
    std::os::unix::fs::symlink("new", dir.path().join("data")).unwrap();
    assert!(recheck_binds(web, dir.path()).is_err());
}

#[test]
fn sizes_and_cpus() {
    assert_eq!(parse_size("2g").unwrap(), 2 << 30);
    assert_eq!(parse_size("512M").unwrap(), 512 << 20);
    assert_eq!(parse_size("64kb").unwrap(), 64 << 10);
    assert_eq!(parse_size("100").unwrap(), 100);
    assert!(parse_size("lots").is_err());
    assert_eq!(parse_cpus("1.5").unwrap(), 1_500_000_000);
    assert!(parse_cpus("-1").is_err());
}

#[test]
fn caps_name_the_key_the_value_and_the_cap() {
    let policy = Policy {
        max_memory_bytes: 1 << 30,
        max_nano_cpus: 2_000_000_000,
        max_pids: 200,
        ..Policy::default()
    };
    let cases: &[(&str, Option<&str>)] = &[
        (
            "    mem_limit: 1g
    cpus: 2
    pids_limit: 200",
            None,
        ),
        (
            "    mem_limit: 1.5GB",
            Some(
                "web|services.web.mem_limit|mem_limit 1.5GB is above this worker's cap of 1g (--max-memory)",
            ),
        ),
        (
            "    deploy: {resources: {limits: {memory: 2g}}}",
            Some(
                "web|services.web.deploy.resources.limits.memory|deploy.resources.limits.memory 2g is above this worker's cap of 1g (--max-memory)",
            ),
        ),
        (
            "    cpus: 2.5",
            Some("web|services.web.cpus|cpus 2.5 is above this worker's cap of 2 (--max-cpus)"),
        ),
        (
            "    pids_limit: -1",
            Some(
                "web|services.web.pids_limit|pids_limit -1 (no limit) is above this worker's cap of 200 (--max-pids)",
            ),
        ),
        (
            "    mem_limit: 0",
            Some("web|services.web.mem_limit|mem_limit 0 (no limit) is above"),
        ),
    ];
    for (yaml, expected) in cases {
        let got = check(&policy, yaml);
        match expected {
            None => assert!(got.is_empty(), "{yaml}: {got:?}"),
            Some(want) => assert!(
                got.len() == 1 && got[0].starts_with(want),
                "{yaml}\nwant {want}\ngot {got:?}"
            ),
        }
    }
}

#[test]
fn limits_are_the_files_else_the_default_within_the_cap() {
    let limit = |value| Limit {
        value,
        field: String::new(),
        text: String::new(),
    };
    let file = Resources {
        memory: Some(limit(256 << 20)),
        pids: Some(limit(-1)),
        ..Resources::default()
    };
    let none = Resources::default();
    let defaults = Policy::default();
    assert_eq!(
        defaults.limits(&file),
        Limits {
            memory: Some(256 << 20),
            nano_cpus: Some(1_000_000_000),
            pids: Some(-1)
        }
    );
    let capped = Policy {
        memory_bytes: 0,
        max_memory_bytes: 1 << 30,
        max_nano_cpus: 500_000_000,
        ..Policy::default()
    };
    // No default memory: the cap; a default CPU above the cap: the cap.
    assert_eq!(
        capped.limits(&none),
        Limits {
            memory: Some(1 << 30),
            nano_cpus: Some(500_000_000),
            pids: Some(512)
        }
    );
    let open = Policy {
        memory_bytes: 0,
        nano_cpus: 0,
        pids_limit: 0,
        ..Policy::default()
    };
    assert_eq!(
        open.limits(&none),
        Limits {
            memory: None,
            nano_cpus: None,
            pids: None
        }
    );
}

#[test]
fn run_as_user_fills_in() {
    let p = Policy {
        run_as_user: Some("1000:1000".into()),
        ..Policy::default()
    };
    assert_eq!(p.user_for(None).as_deref(), Some("1000:1000"));
    assert_eq!(p.user_for(Some("42")).as_deref(), Some("42"));
    assert_eq!(p.user_for(Some("")).as_deref(), Some("1000:1000"));
    assert_eq!(Policy::default().user_for(None), None);
    assert_eq!(Policy::default().user_for(Some("")), None);
}
