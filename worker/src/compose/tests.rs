//! Table-driven tests of loading, parsing and planning compose files.

use std::path::Path;
use std::time::Duration;

use super::duration::parse_duration;
use super::parse::ports::parse_short_port;
use super::plan::{self, Owner};
use super::shell_words::split_shell_words;
use super::*;

fn project_from(files: &[(&str, &str)]) -> Result<Project, ComposeError> {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    let p = load(dir.path(), "proj");
    // Keep the paths in the model meaningful after the directory is gone.
    p.map(|mut p| {
        p.working_dir = Path::new("/proj").to_path_buf();
        p
    })
}

fn errors(compose: &str) -> Vec<String> {
    match project_from(&[("compose.yaml", compose)]) {
        Ok(_) => Vec::new(),
        Err(e) => e
            .details()
            .into_iter()
            .map(|d| format!("{}: {}", d.field, d.reason))
            .collect(),
    }
}

#[test]
fn full_example_parses() {
    let p = project_from(&[
        (
            "docker-compose.yml",
            r#"
version: "3.8"
name: ignored
x-common: &common
  restart: unless-stopped
services:
  api:
    <<: *common
    build:
      context: ./api
      dockerfile: Dockerfile.api
      args: ["GREETING=${GREETING:-hi}"]
      target: final
    environment:
      A: "1"
      B: ${UNSET:-b}
    env_file: api.env
    expose: [8080]
    healthcheck:
      test: wget -q -O- http://127.0.0.1:8080/
      interval: 1s
      timeout: 1m30s
      retries: 30
      start_period: 500ms
    volumes: [data:/data, ./static:/static:ro]
    command: httpd -f -p "8080" -h /www
    x-note: ignored
  web:
    image: berth-base:latest
    depends_on:
      api: {condition: service_healthy}
    ports: ["80", "127.0.0.1::81/udp", {target: 82, published: 9000}]
    labels: [a=b]
    extra_hosts: {db: 10.0.0.1}
    stop_grace_period: 3s
    stop_signal: SIGINT
    init: true
    entrypoint: [/bin/sh, -c]
    user: "1000"
    working_dir: /srv
    networks: {front: {aliases: [www]}}
    container_name: webby
volumes:
  data:
networks:
  front:
    driver: bridge
"#,
        ),
        ("api.env", "A=0\nC=3\n"),
        (".env", "GREETING=hello\n"),
    ])
    .unwrap();
    assert_eq!(p.networks, vec!["default".to_owned(), "front".to_owned()]);
    assert_eq!(p.volumes, vec!["data".to_owned()]);
    let api = p.service("api").unwrap();
    let build = api.build.as_ref().unwrap();
    assert!(build.context.ends_with("api"));
    assert_eq!(build.dockerfile, "Dockerfile.api");
    assert_eq!(build.args["GREETING"], "hello");
    assert_eq!(build.target.as_deref(), Some("final"));
    assert_eq!(api.restart, Restart::UnlessStopped);
    let env: Vec<(&str, Option<&str>)> = api
        .environment
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_deref()))
        .collect();
    assert_eq!(
        env,
        vec![("A", Some("1")), ("B", Some("b")), ("C", Some("3"))]
    );
    assert_eq!(api.expose, vec!["8080/tcp".to_owned()]);
    let hc = api.healthcheck.as_ref().unwrap();
    assert_eq!(
        hc.test,
        vec!["CMD-SHELL", "wget -q -O- http://127.0.0.1:8080/"]
    );
    assert_eq!(hc.timeout, Some(Duration::from_secs(90)));
    assert_eq!(hc.start_period, Some(Duration::from_millis(500)));
    assert_eq!(api.volumes[0].source, MountSource::Named("data".into()));
    assert!(matches!(&api.volumes[1].source, MountSource::Bind(p) if p.ends_with("static")));
    assert!(api.volumes[1].read_only);
    assert_eq!(
        api.command.as_deref().unwrap(),
        ["httpd", "-f", "-p", "8080", "-h", "/www"]
    );
    let web = p.service("web").unwrap();
    assert_eq!(web.depends_on["api"], Condition::Healthy);
    assert_eq!(web.ports.len(), 3);
    assert_eq!(web.ports[1].protocol, "udp");
    assert_eq!(web.ports[1].host_ip.as_deref(), Some("127.0.0.1"));
    assert_eq!(web.ports[2].requested_host_port, Some(9000));
    assert_eq!(web.extra_hosts, vec!["db:10.0.0.1".to_owned()]);
    assert_eq!(web.networks["front"], vec!["www".to_owned()]);
    assert_eq!(web.stop_grace_period, Some(Duration::from_secs(3)));
    assert_eq!(web.stop_signal.as_deref(), Some("SIGINT"));
    assert_eq!(web.init, Some(true));
    assert_eq!(api.stop_signal, None);
    assert_eq!(api.init, None);
    let order: Vec<&str> = plan::start_order(&p)
        .unwrap()
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(order, ["api", "web"]);
}

#[test]
fn unsupported_and_invalid_keys_are_named() {
    let cases: &[(&str, &str)] = &[
        (
            "services: {web: {image: x, deploy: {replicas: 2}}}",
            "services.web.deploy.replicas: unsupported key",
        ),
        (
            "services: {web: {image: x}}\nsecrets: {}",
            "secrets: unsupported top-level key",
        ),
        (
            "services: {web: {image: x, build: {context: ., ssh: [default]}}}",
            "services.web.build.ssh: unsupported key",
        ),
        (
            "services: {web: {image: x, healthcheck: {test: [CMD, x], start_interval: 1s}}}",
            "services.web.healthcheck.start_interval: unsupported key",
        ),
        (
            "services: {web: {image: x}}\nnetworks: {n: {external: true}}",
            "networks.n.external: unsupported key",
        ),
        (
            "services: {web: {image: x}}\nvolumes: {v: {driver: nfs}}",
            "volumes.v.driver: only the default driver is supported",
        ),
        (
            "services: {web: {image: x, restart: sometimes}}",
            "services.web.restart: \"sometimes\" is not one of",
        ),
        (
            "services: {web: {image: x, depends_on: [db]}}",
            "services.web.depends_on: unknown service \"db\"",
        ),
        (
            "services: {web: {image: x, depends_on: {db: {condition: service_up}}}, db: {image: y}}",
            "services.web.depends_on.db.condition: must be",
        ),
        (
            "services: {web: {image: x, volumes: [data:/d]}}",
            "services.web.volumes: volume \"data\" is not declared",
        ),
        (
            "services: {web: {image: x, networks: [front]}}",
            "services.web.networks: network \"front\" is not declared",
        ),
        (
            "services: {web: {image: x, ports: [\"1:2:3:4\"]}}",
            "services.web.ports: invalid port",
        ),
        (
            "services: {web: {image: x, ports: [\"80/sctp\"]}}",
            "services.web.ports: unsupported protocol",
        ),
        (
            "services: {web: {environment: {A: 1}}}",
            "services.web: needs `build` or `image`",
        ),
        (
            "services: {Web: {image: x}}",
            "services.Web: service names must match",
        ),
        (
            "services: {web: {image: x, env_file: ../secret.env}}",
            "services.web.env_file: \"../secret.env\" is outside",
        ),
        (
            "services: {web: {image: x, stop_grace_period: soon}}",
            "services.web.stop_grace_period: invalid duration",
        ),
        (
            "services: {web: {image: x, stop_signal: sigterm}}",
            "services.web.stop_signal: \"sigterm\" is not a signal",
        ),
        (
            "services: {web: {image: x, stop_signal: 99}}",
            "services.web.stop_signal: \"99\" is not a signal",
        ),
        (
            "services: {web: {image: x, init: yes please}}",
            "services.web.init: must be a boolean",
        ),
        (
            "services: {web: {image: \"${REQ:?set REQ}\"}}",
            "compose.yaml: required variable REQ is missing a value: set REQ",
        ),
        ("services: {}", "services: the file defines no services"),
        ("[1, 2]", "(root): the compose file must be a mapping"),
        (
            "services: {web: {image: x, volumes: [{type: tmpfs, target: /t}]}}",
            "services.web.volumes: unsupported volume type",
        ),
    ];
    for (compose, expected) in cases {
        let errs = errors(compose);
        assert!(
            errs.iter().any(|e| e.starts_with(expected)),
            "{compose}\nexpected {expected:?}\ngot {errs:?}"
        );
    }
}

#[test]
fn every_problem_is_reported_at_once() {
    let errs =
        errors("services: {web: {image: x, deploy: {replicas: 2}, secrets: [], configs: []}}");
    assert_eq!(errs.len(), 3, "{errs:?}");
}

#[test]
fn file_discovery_order_and_override() {
    let p = project_from(&[
        ("docker-compose.yml", "services: {old: {image: x}}"),
        (
            "compose.yaml",
            "services: {web: {image: a, environment: {A: '1', B: '2'}}}",
        ),
        (
            "compose.override.yaml",
            "services: {web: {environment: {B: '3'}}}",
        ),
    ])
    .unwrap();
    let web = p.service("web").unwrap();
    assert!(p.service("old").is_none());
    assert_eq!(web.environment["A"].as_deref(), Some("1"));
    assert_eq!(web.environment["B"].as_deref(), Some("3"));
    assert_eq!(p.config_files.len(), 2);
    assert!(matches!(
        project_from(&[("other.yml", "x: 1")]),
        Err(ComposeError::NoFile)
    ));
}

#[test]
fn short_ports_table() {
    type Want = Result<Vec<(Option<&'static str>, Option<u16>, u16, &'static str)>, ()>;
    let cases: &[(&str, Want)] = &[
        ("80", Ok(vec![(None, None, 80, "tcp")])),
        ("8080:80", Ok(vec![(None, Some(8080), 80, "tcp")])),
        (
            "127.0.0.1:8080:80/udp",
            Ok(vec![(Some("127.0.0.1"), Some(8080), 80, "udp")]),
        ),
        (
            "127.0.0.1::80",
            Ok(vec![(Some("127.0.0.1"), None, 80, "tcp")]),
        ),
        (
            "[::1]:9000:90",
            Ok(vec![(Some("::1"), Some(9000), 90, "tcp")]),
        ),
        (
            "3000-3001",
            Ok(vec![(None, None, 3000, "tcp"), (None, None, 3001, "tcp")]),
        ),
        (
            "9000-9001:80-81",
            Ok(vec![
                (None, Some(9000), 80, "tcp"),
                (None, Some(9001), 81, "tcp"),
            ]),
        ),
        ("9000-9002:80-81", Err(())),
        ("0", Err(())),
        ("70000", Err(())),
        ("a:b", Err(())),
    ];
    for (input, expected) in cases {
        let got = parse_short_port(input).map(|ports| {
            ports
                .into_iter()
                .map(|p| {
                    (
                        p.host_ip,
                        p.requested_host_port,
                        p.container_port,
                        p.protocol,
                    )
                })
                .collect::<Vec<_>>()
        });
        match (got, expected) {
            (Ok(got), Ok(want)) => {
                let want: Vec<_> = want
                    .iter()
                    .map(|(ip, h, c, p)| (ip.map(str::to_owned), *h, *c, (*p).to_owned()))
                    .collect();
                assert_eq!(got, want, "{input}");
            }
            (Err(_), Err(())) => {}
            (got, _) => panic!("{input}: unexpected {got:?}"),
        }
    }
}

#[test]
fn durations_and_words() {
    for (input, want) in [
        ("10", Some(10_000)),
        ("10s", Some(10_000)),
        ("1m30s", Some(90_000)),
        ("1.5s", Some(1_500)),
        ("250ms", Some(250)),
        ("1h", Some(3_600_000)),
        ("", None),
        ("5x", None),
        ("s", None),
    ] {
        assert_eq!(
            parse_duration(input).ok().map(|d| d.as_millis() as u64),
            want,
            "{input:?}"
        );
    }
    assert_eq!(
        split_shell_words(r#"sh -c 'echo "a b"' "x\"y" c\ d"#).unwrap(),
        ["sh", "-c", "echo \"a b\"", "x\"y", "c d"]
    );
    assert!(split_shell_words("'open").is_err());
}

#[test]
fn cycles_are_rejected() {
    let p = project_from(&[(
        "compose.yaml",
        "services: {a: {image: x, depends_on: [b]}, b: {image: x, depends_on: [c]}, c: {image: x, depends_on: [a]}, d: {image: x}}",
    )])
    .unwrap();
    let err = plan::start_order(&p).unwrap_err();
    assert!(
        err.reason.contains("dependency cycle among a, b, c"),
        "{err:?}"
    );
}

#[test]
fn order_keeps_file_order_among_independents() {
    let p = project_from(&[(
        "compose.yaml",
        "services: {web: {image: x, depends_on: [db]}, cache: {image: x}, db: {image: x}}",
    )])
    .unwrap();
    let order: Vec<String> = plan::start_order(&p)
        .unwrap()
        .iter()
        .map(|s| s.name.clone())
        .collect();
    assert_eq!(order, ["cache", "db", "web"]);
}

#[test]
fn config_hash_is_stable_and_sensitive() {
    let a = "services: {web: {image: x, environment: {A: '1', B: '2'}, build: ., depends_on: [db]}, db: {image: y}}";
    let b = "services: {web: {environment: {B: '2', A: '1'}, image: x}, db: {image: y}}";
    let c = "services: {web: {image: x, environment: {A: '1', B: '3'}}, db: {image: y}}";
    let hash = |text: &str, extra: u16| {
        let p = project_from(&[("compose.yaml", text)]).unwrap();
        let mut web = p.service("web").unwrap().clone();
        web.build = None;
        plan::config_hash(&web, &extra)
    };
    assert_eq!(
        hash(a, 1),
        hash(b, 1),
        "key order and build/depends_on do not matter"
    );
    assert_ne!(hash(a, 1), hash(c, 1));
    assert_ne!(hash(a, 1), hash(a, 2));
}

#[test]
fn names_and_labels() {
    let p = project_from(&[("compose.yaml", "services: {web: {image: x, labels: {org.berth.node: fake, mine: v}, depends_on: {db: {condition: service_healthy}}}, db: {image: y}}")]).unwrap();
    let owner = Owner {
        instance: "shop-1".into(),
        node: "n1".into(),
    };
    let web = p.service("web").unwrap();
    let l = plan::container_labels(&p, web, "h", &owner, "c0ffee");
    for (k, v) in [
        ("com.docker.compose.project", "proj"),
        ("com.docker.compose.service", "web"),
        ("com.docker.compose.container-number", "1"),
        ("com.docker.compose.oneoff", "False"),
        ("com.docker.compose.config-hash", "h"),
        ("com.docker.compose.depends_on", "db:service_healthy:false"),
        ("com.docker.compose.project.working_dir", "/proj"),
        ("org.berth.managed", "true"),
        ("org.berth.instance", "shop-1"),
        ("org.berth.node", "n1"),
        ("mine", "v"),
    ] {
        assert_eq!(l.get(k).map(String::as_str), Some(v), "{k}");
    }
    assert_eq!(plan::container_name("proj", "web"), "proj-web-1");
    assert_eq!(plan::network_name("proj", "default"), "proj_default");
    assert_eq!(plan::volume_name("proj", "data"), "proj_data");
    // The kernel's 15-byte limit, the firewall's prefix, one bridge per network.
    let bridge = plan::bridge_name("proj_default");
    assert!(
        bridge.len() == 15 && bridge.starts_with(plan::BRIDGE_PREFIX),
        "{bridge}"
    );
    assert_ne!(bridge, plan::bridge_name("proj_back"));
    assert_eq!(
        plan::image_tag("proj", "web", &"ab".repeat(20)),
        "proj-web:abababababab"
    );
}

/// Loads a project of `files` plus symlinks `(link, target)`; the error as `field: reason`.
fn load_with_links(files: &[(&str, &str)], links: &[(&str, &Path)]) -> Result<Project, String> {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    for (link, target) in links {
        std::os::unix::fs::symlink(target, dir.path().join(link)).unwrap();
    }
    load(dir.path(), "proj").map_err(|e| {
        e.details()
            .into_iter()
            .map(|d| format!("{}: {}", d.field, d.reason))
            .collect::<Vec<_>>()
            .join("; ")
    })
}

#[test]
fn project_files_may_not_leave_the_project() {
    let outside = tempfile::tempdir().unwrap();
    let o = outside.path();
    std::fs::write(o.join("worker.env"), "BERTH_CLUSTER_TOKEN=s3cret-token\n").unwrap();
    std::fs::write(o.join("secret.txt"), "host-secret-7219\n").unwrap();
    std::fs::write(o.join("compose.yaml"), "services: {web: {image: x}}\n").unwrap();
    let web = "services: {web: {image: x, environment: {T: '${BERTH_CLUSTER_TOKEN:-none}'}}}\n";
    let with_env_file = "services: {web: {image: x, env_file: [app.env]}}\n";
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a [(&'a str, &'a Path)], &'a str);
    let cases: &[Case<'_>] = &[
        (
            &[("compose.yaml", web)],
            &[(".env", &o.join("worker.env"))],
            ".env: .env resolves outside the project directory",
        ),
        (
            &[("compose.yaml", web)],
            &[(".env", &o.join("secret.txt"))],
            ".env: .env resolves outside the project directory",
        ),
        (
            &[("compose.yaml", with_env_file)],
            &[("app.env", &o.join("worker.env"))],
            "services.web.env_file: \"app.env\" resolves outside the project directory",
        ),
        (
            &[],
            &[("compose.yaml", &o.join("compose.yaml"))],
            "compose.yaml: compose.yaml resolves outside the project directory",
        ),
        (
            &[("compose.yaml", web), (".env/x", "")],
            &[],
            ".env: .env is not a regular file",
        ),
        (
            &[
                ("compose.yaml", web),
                (".env", "A=1\nroot:x:0:0:host-secret\n"),
            ],
            &[],
            ".env: .env:2: expected KEY=VALUE",
        ),
        (
            &[
                ("compose.yaml", with_env_file),
                ("app.env", "ok=1\n-----BEGIN KEY-----\n"),
            ],
            &[],
            "services.web.env_file: app.env:2: expected KEY=VALUE",
        ),
    ];
    for (files, links, want) in cases {
        let err = load_with_links(files, links).unwrap_err();
        assert_eq!(&err, want);
        assert!(
            !err.contains("s3cret") && !err.contains("host-secret"),
            "{err}"
        );
    }
    // Links that stay inside the project are fine.
    let p = load_with_links(
        &[
            ("compose.yaml", with_env_file),
            ("conf/app.env", "A=1\n"),
            ("conf/dot.env", "B=2\n"),
        ],
        &[
            ("app.env", Path::new("conf/app.env")),
            (".env", Path::new("conf/dot.env")),
        ],
    )
    .unwrap();
    assert_eq!(
        p.service("web").unwrap().environment["A"].as_deref(),
        Some("1")
    );
}

#[test]
fn long_volume_read_only_takes_every_boolean_form() {
    let compose = r#"services:
  web:
    image: x
    volumes:
      - {type: bind, source: ./a, target: /a, read_only: true}
      - {type: bind, source: ./b, target: /b, read_only: "true"}
      - type: bind
        source: ./c
        target: /c
        read_only: ${RO}
      - type: bind
        source: ./d
        target: /d
        read_only: ${RW}
      - {type: volume, target: /e, read_only: false}
      - {type: volume, target: /f}
"#;
    let p = project_from(&[("compose.yaml", compose), (".env", "RO=true\nRW=false\n")]).unwrap();
    let ro: Vec<bool> = p
        .service("web")
        .unwrap()
        .volumes
        .iter()
        .map(|m| m.read_only)
        .collect();
    assert_eq!(ro, [true, true, true, false, false, false]);
    let errs = errors(
        "services: {web: {image: x, volumes: [{type: bind, source: ./a, target: /a, read_only: yes please}]}}",
    );
    assert_eq!(errs, ["services.web.volumes.read_only: must be a boolean"]);
}

#[test]
fn keys_without_a_value_come_from_dotenv() {
    let p = project_from(&[
        (
            "compose.yaml",
            r#"
services:
  map:
    image: x
    environment: {FOO: bar, FROM_DOTENV: , MISSING: }
  list:
    build:
      context: .
      args: [FROM_DOTENV, MISSING, SET=1]
    environment: [FROM_DOTENV, MISSING]
"#,
        ),
        (".env", "FROM_DOTENV=x\n"),
    ])
    .unwrap();
    let env = |s: &str| -> Vec<(String, Option<String>)> {
        p.service(s)
            .unwrap()
            .environment
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    let some = |k: &str, v: &str| (k.to_owned(), Some(v.to_owned()));
    assert_eq!(
        env("map"),
        [
            some("FOO", "bar"),
            some("FROM_DOTENV", "x"),
            ("MISSING".to_owned(), None)
        ]
    );
    assert_eq!(
        env("list"),
        [some("FROM_DOTENV", "x"), ("MISSING".to_owned(), None)]
    );
    let args = &p.service("list").unwrap().build.as_ref().unwrap().args;
    assert_eq!(
        args.iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect::<Vec<_>>(),
        [("FROM_DOTENV", "x"), ("SET", "1")]
    );
}

#[test]
fn expose_ranges_are_expanded() {
    let p = project_from(&[(
        "compose.yaml",
        "services: {web: {image: x, expose: [\"7000-7002\", 53/udp, 8080, \"9000-9001/udp\"]}}",
    )])
    .unwrap();
    assert_eq!(
        p.service("web").unwrap().expose,
        [
            "7000/tcp", "7001/tcp", "7002/tcp", "53/udp", "8080/tcp", "9000/udp", "9001/udp"
        ]
    );
    for (compose, expected) in [
        (
            "services: {web: {image: x, expose: [\"7002-7000\"]}}",
            "services.web.expose: invalid port range",
        ),
        (
            "services: {web: {image: x, expose: [80/sctp]}}",
            "services.web.expose: unsupported protocol",
        ),
        (
            "services: {web: {image: x, expose: [http]}}",
            "services.web.expose: invalid port",
        ),
    ] {
        let errs = errors(compose);
        assert!(
            errs.iter().any(|e| e.starts_with(expected)),
            "{compose}: {errs:?}"
        );
    }
}

#[test]
fn non_scalar_map_values_are_rejected_by_key() {
    for (compose, expected) in [
        (
            "services: {web: {image: x, environment: {FOO: [a, b], OK: 1}}}",
            "services.web.environment.FOO: must be a string",
        ),
        (
            "services: {web: {image: x, labels: {a.b: {c: d}}}}",
            "services.web.labels.a.b: must be a string",
        ),
        (
            "services: {web: {build: {context: ., args: {A: [1]}}}}",
            "services.web.build.args.A: must be a string",
        ),
    ] {
        let errs = errors(compose);
        assert_eq!(errs.len(), 1, "{compose}: {errs:?}");
        assert!(errs[0].starts_with(expected), "{compose}: {errs:?}");
    }
}

#[test]
fn ownership_needs_both_berth_labels() {
    let owner = Owner {
        instance: "col".into(),
        node: "n1".into(),
    };
    let labels = |pairs: &[(&str, &str)]| -> std::collections::HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    };
    let ours = labels(&[("org.berth.instance", "col"), ("org.berth.node", "n1")]);
    assert_eq!(owner.check(Some(&ours)), Ok(()));
    let cases = [
        (
            labels(&[("org.berth.instance", "col_x"), ("org.berth.node", "n1")]),
            "belongs to berth instance col_x (node n1)",
        ),
        (
            labels(&[("org.berth.instance", "col"), ("org.berth.node", "n2")]),
            "belongs to berth instance col (node n2)",
        ),
        (
            labels(&[("org.berth.instance", "col")]),
            "belongs to berth instance col (node )",
        ),
        (
            labels(&[
                ("org.berth.node", "n1"),
                ("com.docker.compose.project", "col"),
            ]),
            "was not created by berth",
        ),
        (labels(&[]), "was not created by berth"),
    ];
    for (l, want) in cases {
        let holder = owner.check(Some(&l)).unwrap_err();
        assert!(holder.to_string().starts_with(want), "{l:?}: {holder}");
    }
    assert_eq!(owner.check(None), Err(plan::Holder::Unmanaged));
}

#[test]
fn image_names_are_valid_references() {
    for (name, ok) in [
        ("a", true),
        ("a-b", true),
        ("a--b", true),
        ("a.b", true),
        ("a_b", true),
        ("a__b", true),
        ("a___b", false),
        ("a..b", false),
        ("a_-b", false),
        ("a-", false),
        ("a_", false),
        ("_a", false),
        ("", false),
        ("A", false),
    ] {
        assert_eq!(plan::valid_repository(name), ok, "{name:?}");
    }
    // Valid Compose names stay as Compose makes them.
    assert_eq!(plan::image_name("shop-1", "web"), "shop-1-web");
    assert_eq!(plan::image_name("a_b", "web.v2"), "a_b-web.v2");
    // Invalid ones map onto the grammar, with a hash that keeps them apart.
    let cases = [
        ("badid_", "web"),
        ("badid", "_web"),
        ("p", "web."),
        ("p", "web-."),
        ("p", "a..b"),
        ("p", &"s".repeat(300)),
    ];
    let mut seen = std::collections::HashSet::new();
    for (project, service) in cases {
        let name = plan::image_name(project, service);
        assert!(plan::valid_repository(&name), "{project} {service}: {name}");
        assert!(name.len() <= 128, "{name}");
        assert!(seen.insert(name.clone()), "{name} is not unique");
        assert!(
            plan::image_tag(project, service, &"ab".repeat(20)).starts_with(&format!("{name}:"))
        );
    }
    assert!(plan::image_name("badid_", "web").starts_with("badid-web-"));
}

#[test]
fn stop_signal_forms_and_init() {
    for sig in ["SIGTERM", "TERM", "15", "SIGRTMIN+3", "SIGKILL"] {
        let p = project_from(&[(
            "compose.yaml",
            &format!("services: {{web: {{image: x, stop_signal: \"{sig}\", init: false}}}}"),
        )])
        .unwrap();
        let web = p.service("web").unwrap();
        assert_eq!(web.stop_signal.as_deref(), Some(sig));
        assert_eq!(web.init, Some(false));
    }
    for bad in ["0", "65", "", "SIG", "term"] {
        let errs = errors(&format!(
            "services: {{web: {{image: x, stop_signal: \"{bad}\"}}}}"
        ));
        assert!(
            errs.iter()
                .any(|e| e.starts_with("services.web.stop_signal:")),
            "{bad:?}: {errs:?}"
        );
    }
}
