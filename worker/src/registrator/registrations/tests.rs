//! Tests of the registrator's pure part (`registrations.rs`): the mapping table, checks, the
//! state check and the diff.

use super::super::view::sample as view;
use super::*;

#[test]
fn registration_table() {
    struct Case {
        env: &'static [&'static str],
        ports: &'static [(u16, &'static str, u16)],
        hc: bool,
        want: &'static [(&'static str, &'static str, u16, &'static str)],
    }
    // (id, name, host port, check kind)
    let cases = [
        // No published port: registered without one, no check to dial (the state check
        // the registrator adds follows the container).
        Case {
            env: &[],
            ports: &[],
            hc: false,
            want: &[("n1:shop-web-1", "web.shop", 0, "none")],
        },
        Case {
            env: &[],
            ports: &[],
            hc: true,
            want: &[("n1:shop-web-1", "web.shop", 0, "ttl")],
        },
        Case {
            env: &["SERVICE_NAME=jobs", "SERVICE_CHECK_TTL=30s"],
            ports: &[],
            hc: false,
            want: &[("n1:shop-web-1", "jobs", 0, "ttl")],
        },
        Case {
            env: &["SERVICE_IGNORE=1"],
            ports: &[],
            hc: false,
            want: &[],
        },
        Case {
            env: &[],
            ports: &[(80, "tcp", 32000)],
            hc: false,
            want: &[("n1:shop-web-1:80", "web.shop", 32000, "tcp")],
        },
        Case {
            env: &[],
            ports: &[(80, "tcp", 32000)],
            hc: true,
            want: &[("n1:shop-web-1:80", "web.shop", 32000, "ttl")],
        },
        Case {
            env: &["SERVICE_NAME=shop", "SERVICE_CHECK_HTTP=/health"],
            ports: &[(80, "tcp", 32000)],
            hc: true,
            want: &[("n1:shop-web-1:80", "shop", 32000, "http")],
        },
        Case {
            env: &["SERVICE_CHECK_TTL=15s"],
            ports: &[(80, "tcp", 32000)],
            hc: false,
            want: &[("n1:shop-web-1:80", "web.shop", 32000, "ttl")],
        },
        Case {
            env: &["SERVICE_IGNORE=1"],
            ports: &[(80, "tcp", 32000)],
            hc: false,
            want: &[],
        },
        Case {
            env: &["SERVICE_81_IGNORE=yes"],
            ports: &[(80, "tcp", 32000), (81, "tcp", 32001)],
            hc: false,
            want: &[("n1:shop-web-1:80", "web.shop-80", 32000, "tcp")],
        },
        Case {
            env: &["SERVICE_81_NAME=admin"],
            ports: &[(81, "tcp", 32001), (80, "tcp", 32000), (80, "tcp", 32000)],
            hc: false,
            want: &[
                ("n1:shop-web-1:80", "web.shop-80", 32000, "tcp"),
                ("n1:shop-web-1:81", "admin", 32001, "tcp"),
            ],
        },
        Case {
            env: &[],
            ports: &[(53, "udp", 32053)],
            hc: false,
            want: &[("n1:shop-web-1:53:udp", "web.shop", 32053, "none")],
        },
        // An empty value counts as unset, as with registrator (an empty name would be
        // refused by the agent and fail the whole resync).
        Case {
            env: &["SERVICE_NAME=", "SERVICE_TAGS="],
            ports: &[(80, "tcp", 32000)],
            hc: false,
            want: &[("n1:shop-web-1:80", "web.shop", 32000, "tcp")],
        },
    ];
    for (i, case) in cases.iter().enumerate() {
        let (regs, refused) = registrations(&view(case.env, case.ports, case.hc), "n1", "10.0.0.5");
        assert!(refused.is_empty(), "case {i}: {refused:?}");
        let got: Vec<(String, String, u16, &str)> = regs
            .iter()
            .map(|r| {
                let kind = match &r.check {
                    None => "none",
                    Some(c) if c.http.is_some() => "http",
                    Some(c) if c.tcp.is_some() => "tcp",
                    Some(c) if c.ttl.is_some() => "ttl",
                    Some(_) => "?",
                };
                (r.id.clone(), r.name.clone(), r.port, kind)
            })
            .collect();
        let want: Vec<(String, String, u16, &str)> = case
            .want
            .iter()
            .map(|(id, n, p, k)| ((*id).to_owned(), (*n).to_owned(), *p, *k))
            .collect();
        assert_eq!(got, want, "case {i}");
    }
}

#[test]
fn tags_meta_and_check_details() {
    let v = view(
        &[
            "SERVICE_TAGS=a, b,,c",
            "SERVICE_REGION=eu",
            "SERVICE_80_TIER=front",
            "SERVICE_81_TIER=other",
            "SERVICE_CHECK_HTTP=/h",
            "SERVICE_CHECK_INTERVAL=3s",
            "SERVICE_CHECK_TIMEOUT=1s",
            "SERVICE_CHECK_DEREGISTER_AFTER=1m",
            "OTHER=x",
        ],
        &[(80, "tcp", 32000)],
        false,
    );
    let r = &registrations(&v, "n1", "10.0.0.5").0[0];
    assert_eq!(r.tags, ["a", "b", "c"]);
    assert_eq!(r.meta["region"], "eu");
    assert_eq!(r.meta["tier"], "front");
    assert_eq!(r.meta[META_BERTH_INSTANCE], "shop");
    assert_eq!(r.meta[META_BERTH_NODE], "n1");
    assert!(!r.meta.contains_key("check_http"));
    let c = r.check.as_ref().unwrap();
    assert_eq!(c.http.as_deref(), Some("http://10.0.0.5:32000/h"));
    assert_eq!(c.interval.as_deref(), Some("3s"));
    assert_eq!(c.timeout.as_deref(), Some("1s"));
    assert_eq!(c.deregister_after.as_deref(), Some("1m"));
    assert_eq!(r.address, "10.0.0.5");
    let sent = berth_consul::types::AgentServiceRegistration::from(r);
    assert_eq!(sent.check.unwrap().disable_redirects, Some(true));
}

#[test]
fn labels_count_and_the_environment_wins() {
    let mut v = view(
        &[
            "SERVICE_NAME=from-env",
            "SERVICE_REGION=",
            "SERVICE_TIER=env",
        ],
        &[(80, "tcp", 32000)],
        false,
    );
    v.service_labels = [
        ("SERVICE_NAME", "from-label"),
        ("SERVICE_TAGS", "l1,l2"),
        ("SERVICE_REGION", "label"),
        ("SERVICE_TIER", "label"),
        ("SERVICE_80_CHECK_HTTP", "/ready"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let r = &registrations(&v, "n1", "10.0.0.5").0[0];
    assert_eq!(r.name, "from-env");
    assert_eq!(r.tags, ["l1", "l2"]);
    // An empty environment value is unset, so the label applies.
    assert_eq!(r.meta["region"], "label");
    assert_eq!(r.meta["tier"], "env");
    assert_eq!(
        r.check.as_ref().unwrap().http.as_deref(),
        Some("http://10.0.0.5:32000/ready")
    );
    v.service_labels
        .insert("SERVICE_IGNORE".to_owned(), "true".to_owned());
    assert!(registrations(&v, "n1", "10.0.0.5").0.is_empty());
}

#[test]
fn only_docker_healthchecks_are_relayed() {
    let relayed = |env: &[&str], hc: bool| {
        let v = view(env, &[(80, "tcp", 32000)], hc);
        relays_health(&registrations(&v, "n1", "10.0.0.5").0[0])
    };
    assert!(relayed(&[], true));
    // The application's own TTL check, even of the relay's 60s, is its to update.
    assert!(!relayed(&["SERVICE_CHECK_TTL=60s"], false));
    assert!(!relayed(&["SERVICE_CHECK_TTL=60s"], true));
    assert!(!relayed(&[], false));
}

#[test]
fn diff_registers_missing_and_removes_only_own_stale() {
    let v = view(&[], &[(80, "tcp", 32000), (81, "tcp", 32001)], false);
    let (desired, _) = registrations(&v, "n1", "10.0.0.5");
    let svc = |id: &str, name: &str, port: u16, meta: &BTreeMap<String, String>| {
        (
            id.to_owned(),
            AgentService {
                id: id.to_owned(),
                service: name.to_owned(),
                port,
                meta: meta.clone(),
            },
        )
    };
    let existing: HashMap<String, AgentService> = [
        // Up to date: left alone.
        svc(&desired[0].id, &desired[0].name, 32000, &desired[0].meta),
        // Same id, old port: re-registered.
        svc(&desired[1].id, &desired[1].name, 31999, &desired[1].meta),
        // A container of this node that is gone: removed.
        svc("n1:gone-web-1:80", "web.gone", 32100, &BTreeMap::new()),
        // Another node's and the worker's own: untouched.
        svc("n2:shop-web-1:80", "web.shop", 32000, &BTreeMap::new()),
        svc("berth-worker:n1", "berth-worker", 8833, &BTreeMap::new()),
    ]
    .into_iter()
    .collect();
    let (register, deregister) = diff(&desired, &existing, "n1");
    assert_eq!(
        register.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        [desired[1].id.as_str()]
    );
    assert_eq!(deregister, ["n1:gone-web-1:80"]);
    let (register, deregister) = diff(&[], &existing, "n1");
    assert!(register.is_empty());
    assert_eq!(deregister.len(), 3, "{deregister:?}");
}

#[test]
fn check_urls_stay_on_the_container() {
    // (advertise, host port, SERVICE_CHECK_HTTP, Ok(url) or Err(reason starts with))
    let cases: &[(&str, u16, &str, Result<&str, &str>)] = &[
        (
            "10.0.0.5",
            32000,
            "/health",
            Ok("http://10.0.0.5:32000/health"),
        ),
        ("10.0.0.5", 32000, "/h?x=1&y=@", Err("must not contain @")),
        (
            "10.0.0.5",
            32000,
            "/h?x=1",
            Ok("http://10.0.0.5:32000/h?x=1"),
        ),
        ("10.0.0.5", 32000, "/", Ok("http://10.0.0.5:32000/")),
        (
            "10.0.0.5",
            32000,
            "/a/../../b",
            Ok("http://10.0.0.5:32000/b"),
        ),
        (
            "10.0.0.5",
            32000,
            "/%2F%2Fevil",
            Ok("http://10.0.0.5:32000/%2F%2Fevil"),
        ),
        ("10.0.0.5", 80, "/h", Ok("http://10.0.0.5/h")),
        ("fd00::1", 32000, "/h", Ok("http://[fd00::1]:32000/h")),
        // The audit's reproduction: user info turns the container's address into a user name.
        (
            "10.0.0.5",
            32000,
            "@127.0.0.1:8500/v1/kv/secret?raw",
            Err("must be a path starting with /"),
        ),
        (
            "10.0.0.5",
            32000,
            "/@127.0.0.1:8500/x",
            Err("must not contain @"),
        ),
        (
            "10.0.0.5",
            32000,
            ":8500/x",
            Err("must be a path starting with /"),
        ),
        (
            "10.0.0.5",
            32000,
            "//127.0.0.1:8500/x",
            Err("must not start with //"),
        ),
        (
            "10.0.0.5",
            32000,
            "/\\127.0.0.1:8500/x",
            Err("must not contain a backslash"),
        ),
        (
            "10.0.0.5",
            32000,
            "http://127.0.0.1:8500/",
            Err("must be a path starting with /"),
        ),
        ("10.0.0.5", 32000, "/a b", Err("must not contain spaces")),
        ("10.0.0.5", 32000, "/a\tb", Err("must not contain spaces")),
        ("10.0.0.5", 32000, "/a\n/b", Err("must not contain spaces")),
        ("10.0.0.5", 32000, "/a\u{0}", Err("must not contain spaces")),
        ("10.0.0.5", 32000, "", Err("must be a path starting with /")),
    ];
    for (advertise, port, path, want) in cases {
        let got = check_url(advertise, *port, path);
        match (want, &got) {
            (Ok(url), Ok(got)) => assert_eq!(got, url, "{path:?}"),
            (Err(reason), Err(got)) => assert!(got.starts_with(reason), "{path:?}: {got}"),
            _ => panic!("{path:?}: want {want:?}, got {got:?}"),
        }
    }
}

#[test]
fn runtime_refusals_skip_or_drop() {
    struct Case {
        env: &'static [&'static str],
        ports: &'static [(u16, &'static str, u16)],
        /// (name, meta keys besides berth's) of each registration.
        want: &'static [(&'static str, &'static [&'static str])],
        /// Each refusal line, from its variable on.
        refused: &'static [&'static str],
    }
    let cases = [
        Case {
            env: &["SERVICE_NAME=berth-worker", "SERVICE_CHECK_HTTP=/h"],
            ports: &[(8833, "tcp", 32000)],
            want: &[],
            refused: &[
                "SERVICE_NAME sets the reserved service name \"berth-worker\" (consul and names starting with berth- belong to berth and Consul); port 8833 is not registered",
            ],
        },
        Case {
            env: &["SERVICE_NAME=consul", "SERVICE_81_NAME=admin"],
            ports: &[(80, "tcp", 32000), (81, "tcp", 32001)],
            want: &[("admin", &[])],
            refused: &[
                "SERVICE_NAME sets the reserved service name \"consul\" (consul and names starting with berth- belong to berth and Consul); port 80 is not registered",
            ],
        },
        Case {
            env: &["SERVICE_NAME=Berth-Master", "SERVICE_80_NAME=web"],
            ports: &[(80, "tcp", 32000)],
            want: &[("web", &[])],
            refused: &[],
        },
        Case {
            env: &["SERVICE_CHECK_HTTP=@127.0.0.1:8500/v1/kv/secret?raw"],
            ports: &[(80, "tcp", 32000)],
            want: &[],
            refused: &[
                "SERVICE_CHECK_HTTP must be a path starting with /; port 80 is not registered",
            ],
        },
        Case {
            env: &["SERVICE_CHECK_HTTP=/\\evil", "SERVICE_81_CHECK_HTTP=/ok"],
            ports: &[(80, "tcp", 32000), (81, "tcp", 32001)],
            want: &[("web.shop-81", &[])],
            refused: &[
                "SERVICE_CHECK_HTTP must not contain a backslash; port 80 is not registered",
            ],
        },
        Case {
            env: &[
                "SERVICE_INSTANCES=0",
                "SERVICE_CAPACITY=1000",
                "SERVICE_80_VERSION=9",
                "SERVICE_BERTH_INSTANCE=other",
                "SERVICE_BERTH_NODE=n9",
                "SERVICE_REGION=eu",
            ],
            ports: &[(80, "tcp", 32000)],
            want: &[("web.shop", &["region"])],
            refused: &[
                "SERVICE_80_VERSION sets meta \"version\", which berth sets itself; ignored",
                "SERVICE_BERTH_INSTANCE sets meta \"berth_instance\", which berth sets itself; ignored",
                "SERVICE_BERTH_NODE sets meta \"berth_node\", which berth sets itself; ignored",
                "SERVICE_CAPACITY sets meta \"capacity\", which berth sets itself; ignored",
                "SERVICE_INSTANCES sets meta \"instances\", which berth sets itself; ignored",
            ],
        },
        Case {
            env: &["SERVICE_CHECK_SCRIPT=cat /etc/passwd"],
            ports: &[(80, "tcp", 32000)],
            want: &[("web.shop", &[])],
            refused: &[
                "SERVICE_CHECK_SCRIPT is not supported: berth runs HTTP, TCP and TTL checks (SERVICE_CHECK_HTTP, SERVICE_CHECK_TCP, SERVICE_CHECK_TTL); ignored",
            ],
        },
        Case {
            env: &["SERVICE_CHECK_INTERVAL=0"],
            ports: &[(80, "tcp", 32000)],
            want: &[],
            refused: &[
                "SERVICE_CHECK_INTERVAL must be a positive duration such as 10s or 1m; port 80 is not registered",
            ],
        },
        // A skipped port gives its reason, not also the meta it would have dropped.
        Case {
            env: &["SERVICE_NAME=berth-worker", "SERVICE_INSTANCES=0"],
            ports: &[(80, "tcp", 32000)],
            want: &[],
            refused: &[
                "SERVICE_NAME sets the reserved service name \"berth-worker\" (consul and names starting with berth- belong to berth and Consul); port 80 is not registered",
            ],
        },
        // A refused variable of an ignored port says nothing.
        Case {
            env: &["SERVICE_NAME=berth-worker", "SERVICE_IGNORE=1"],
            ports: &[(80, "tcp", 32000)],
            want: &[],
            refused: &[],
        },
    ];
    for (i, case) in cases.iter().enumerate() {
        let (regs, refused) = registrations(&view(case.env, case.ports, false), "n1", "10.0.0.5");
        let got: Vec<(String, Vec<String>)> = regs
            .iter()
            .map(|r| {
                assert_eq!(r.meta[META_BERTH_INSTANCE], "shop", "case {i}");
                assert_eq!(r.meta[META_BERTH_NODE], "n1", "case {i}");
                assert_eq!(r.meta[META_BERTH_CONTAINER], "shop-web-1", "case {i}");
                let own = r
                    .meta
                    .keys()
                    .filter(|k| !k.starts_with("berth_"))
                    .cloned()
                    .collect();
                (r.name.clone(), own)
            })
            .collect();
        let want: Vec<(String, Vec<String>)> = case
            .want
            .iter()
            .map(|(n, m)| ((*n).to_owned(), m.iter().map(|k| (*k).to_owned()).collect()))
            .collect();
        assert_eq!(got, want, "case {i}");
        let want: Vec<String> = case
            .refused
            .iter()
            .map(|l| format!("shop-web-1: {l}"))
            .collect();
        assert_eq!(refused.into_iter().collect::<Vec<_>>(), want, "case {i}");
    }
}

#[test]
fn a_portless_container_says_why_a_port_check_is_ignored() {
    let v = view(
        &["SERVICE_CHECK_HTTP=/h", "SERVICE_CHECK_TCP=1"],
        &[],
        false,
    );
    let (regs, refused) = registrations(&v, "n1", "10.0.0.5");
    assert_eq!(regs.len(), 1);
    assert_eq!((regs[0].port, regs[0].check.is_none()), (0, true));
    assert_eq!(
        refused.into_iter().collect::<Vec<_>>(),
        [
            "shop-web-1: SERVICE_CHECK_HTTP needs a published port to check; ignored",
            "shop-web-1: SERVICE_CHECK_TCP needs a published port to check; ignored",
        ]
    );
}

#[test]
fn the_state_check_follows_the_verdict() {
    let health = |state: ServiceState| ServiceHealth {
        name: "web".into(),
        state,
        restarts: 4,
        exit_code: Some(1),
        probe_output: Some("probe: down".into()),
        last_log_lines: (1..=7)
            .map(|n| format!("line {n}"))
            .chain(["FATAL: no db".into()])
            .collect(),
    };
    let got = |running: bool, state: Option<ServiceState>| {
        let h = state.map(health);
        state_check(running, h.as_ref()).map(|c| (c.status, c.output))
    };
    let passing = Some(("passing".to_owned(), "running".to_owned()));
    assert_eq!(got(true, None), passing);
    assert_eq!(got(true, Some(ServiceState::Running)), passing);
    assert_eq!(got(false, None), None);
    assert_eq!(got(false, Some(ServiceState::Running)), None);
    assert_eq!(got(false, Some(ServiceState::Completed)), None);
    assert_eq!(
        got(true, Some(ServiceState::Starting)).map(|c| c.0),
        Some("warning".to_owned())
    );
    for (running, state) in [
        (false, ServiceState::Restarting),
        (true, ServiceState::Restarting),
        (false, ServiceState::Exited),
        (true, ServiceState::Unhealthy),
    ] {
        let (status, output) = got(running, Some(state)).expect("registered");
        assert_eq!(status, "critical", "{state:?}");
        assert_eq!(
            output,
            format!(
                "{} (4 restarts, exit code 1)\nprobe: probe: down\nlast log lines:\nline 4\nline 5\nline 6\nline 7\nFATAL: no db",
                state.as_str()
            )
        );
    }
}

#[test]
fn a_container_without_a_valid_instance_registers_nothing() {
    let mut v = view(&[], &[(80, "tcp", 32000)], false);
    v.instance = String::new();
    let (regs, refused) = registrations(&v, "n1", "10.0.0.5");
    assert!(regs.is_empty());
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(
        refused
            .first()
            .unwrap()
            .starts_with("shop-web-1: not registered: invalid instance")
    );
}
