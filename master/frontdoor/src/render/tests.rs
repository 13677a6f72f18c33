//! Tests of the nginx rendering (`render.rs`): placeholders, masters, TLS, app routes, hostile
//! values, template errors.

use super::*;

fn model() -> Model {
    Model {
        masters: vec!["10.0.0.2:8080".into(), "10.0.0.1:8080".into()],
        registry: "registry:8500".into(),
        listen: 80,
        ui_listen: Some(8500),
        tls: None,
        apps_domain: None,
        apps: Vec::new(),
        client_max_body_size: "64m".into(),
        pid_file: "/run/nginx.pid".into(),
        mime_types: "/etc/nginx/mime.types".into(),
    }
}

fn app(id: &str, endpoints: &[(&str, &str, u16)]) -> AppRoute {
    AppRoute {
        id: id.into(),
        endpoints: endpoints
            .iter()
            .map(|(s, h, p)| AppEndpoint {
                service: (*s).into(),
                host: (*h).into(),
                port: *p,
            })
            .collect(),
    }
}

#[test]
fn default_template_renders_every_placeholder() {
    let text = render(DEFAULT_TEMPLATE, &model()).unwrap();
    assert!(!text.contains("{{"), "{text}");
    assert!(text.contains("pid /run/nginx.pid;"));
    assert!(text.contains("client_max_body_size 64m;"));
    assert!(text.contains("server registry:8500;"));
    assert!(text.contains("location /v1/ {\n            proxy_pass http://berth_masters;"));
    assert!(text.contains("location /git/ {\n            proxy_pass http://berth_masters;"));
}

#[test]
fn masters_are_sorted_and_deduplicated() {
    let mut m = model();
    m.masters.push("10.0.0.2:8080".into());
    let text = render(DEFAULT_TEMPLATE, &m).unwrap();
    let first = text.find("server 10.0.0.1:8080").unwrap();
    let second = text.find("server 10.0.0.2:8080").unwrap();
    assert!(first < second);
    assert_eq!(text.matches("server 10.0.0.2:8080").count(), 1);
}

#[test]
fn no_master_keeps_the_upstream_valid() {
    let mut m = model();
    m.masters.clear();
    let text = render(DEFAULT_TEMPLATE, &m).unwrap();
    assert!(text.contains("server 127.0.0.1:9 down;"));
}

#[test]
fn equal_models_render_equal_text() {
    let mut a = model();
    let mut b = model();
    b.masters.reverse();
    a.apps_domain = Some("apps.example".into());
    b.apps_domain = Some("apps.example".into());
    a.apps = vec![app("one", &[("web", "10.0.0.5", 32000)]), app("two", &[])];
    b.apps = vec![app("two", &[]), app("one", &[("web", "10.0.0.5", 32000)])];
    assert_eq!(
        render(DEFAULT_TEMPLATE, &a).unwrap(),
        render(DEFAULT_TEMPLATE, &b).unwrap()
    );
}

#[test]
fn ui_port_on_and_off() {
    let on = render(DEFAULT_TEMPLATE, &model()).unwrap();
    assert!(on.contains("return 302 $scheme://$host:8500/ui/;"));
    assert!(on.contains("listen 8500;"));
    let mut m = model();
    m.ui_listen = None;
    let off = render(DEFAULT_TEMPLATE, &m).unwrap();
    assert!(!off.contains("listen 8500"));
    assert!(off.contains("the registry UI is not exposed here"));
}

#[test]
fn tls_uses_the_given_certificates_and_redirects_port_80() {
    let mut m = model();
    m.listen = 443;
    m.tls = Some(Tls {
        cert: "/etc/berth/tls/cert.pem".into(),
        key: "/etc/berth/tls/key.pem".into(),
    });
    let text = render(DEFAULT_TEMPLATE, &m).unwrap();
    assert!(text.contains("listen 443 ssl default_server;"));
    assert!(text.contains("listen 8500 ssl;"));
    assert!(text.contains("ssl_certificate /etc/berth/tls/cert.pem;"));
    assert!(text.contains("ssl_certificate_key /etc/berth/tls/key.pem;"));
    assert!(text.contains("return 301 https://$host$request_uri;"));
    assert!(!render(DEFAULT_TEMPLATE, &model()).unwrap().contains("ssl"));
}

#[test]
fn app_routes_only_behind_the_flag() {
    let mut m = model();
    m.apps = vec![app("shop", &[("web", "10.1.2.3", 32768)])];
    assert!(!render(DEFAULT_TEMPLATE, &m).unwrap().contains("shop"));
    m.apps_domain = Some("apps.example.org".into());
    let text = render(DEFAULT_TEMPLATE, &m).unwrap();
    assert!(text.contains("server_name shop.apps.example.org;"));
    assert!(text.contains("server_name web.shop.apps.example.org;"));
    assert!(text.contains("proxy_pass http://10.1.2.3:32768;"));
    assert!(text.contains("map $http_upgrade $connection_upgrade"));
}

#[test]
fn apps_share_the_api_port_and_unknown_names_get_their_own_404() {
    let mut m = model();
    m.listen = 8088;
    m.apps_domain = Some("apps.test".into());
    m.apps = vec![app("shop", &[("web", "10.1.2.3", 32768)])];
    let text = render(DEFAULT_TEMPLATE, &m).unwrap();
    // One default server on the port, the API's; every app block and the catch-all of the
    // domain listen on the same port, none on 80.
    assert_eq!(text.matches("default_server").count(), 1, "{text}");
    assert!(text.contains("listen 8088 default_server;"));
    assert_eq!(text.matches("listen 8088;").count(), 3, "{text}");
    assert!(!text.contains("listen 80;"), "{text}");
    let catch_all = text.find("server_name *.apps.test;").expect("catch-all");
    assert!(text[catch_all..].contains("return 404 \"berth: no running instance answers"));
    // Without running instances the catch-all stays.
    m.apps.clear();
    let text = render(DEFAULT_TEMPLATE, &m).unwrap();
    assert!(text.contains("server_name *.apps.test;"));
    assert!(!text.contains("proxy_pass http://10."));
}

#[test]
fn app_route_goes_to_the_first_endpoint_by_service_then_port() {
    let mut m = model();
    m.apps_domain = Some("apps.test".into());
    m.apps = vec![app(
        "shop",
        &[
            ("web", "10.0.0.9", 30001),
            ("api", "10.0.0.9", 30002),
            ("api", "10.0.0.9", 30000),
        ],
    )];
    let text = render(DEFAULT_TEMPLATE, &m).unwrap();
    let main = text.find("server_name shop.apps.test;").unwrap();
    let after = &text[main..];
    assert!(after.contains("proxy_pass http://10.0.0.9:30000;"));
    assert!(
        after[..after.find("}\n    }").unwrap()].contains("10.0.0.9:30000"),
        "{after}"
    );
    assert!(text.contains("server_name web.shop.apps.test;"));
    assert_eq!(text.matches("server_name api.shop.apps.test;").count(), 1);
    assert!(text.contains("http://10.0.0.9:30001"));
}

#[test]
fn ipv6_endpoints_are_bracketed() {
    let mut m = model();
    m.apps_domain = Some("apps.test".into());
    m.apps = vec![app("v6", &[("web", "fd00::5", 31000)])];
    let text = render(DEFAULT_TEMPLATE, &m).unwrap();
    assert!(text.contains("proxy_pass http://[fd00::5]:31000;"));
}

type Mutation = Box<dyn Fn(&mut Model)>;

#[test]
fn hostile_values_are_rejected_not_rendered() {
    let cases: Vec<(Mutation, &str)> = vec![
        (
            Box::new(|m| m.masters = vec!["1.2.3.4:80; include /etc/passwd".into()]),
            "master address",
        ),
        (
            Box::new(|m| m.masters = vec!["10.0.0.1".into()]),
            "master address",
        ),
        (
            Box::new(|m| m.masters = vec!["10.0.0.1:0".into()]),
            "master address",
        ),
        (
            Box::new(|m| m.registry = "reg:8500 }".into()),
            "registry address",
        ),
        (
            Box::new(|m| m.client_max_body_size = "1m; evil".into()),
            "client_max_body_size",
        ),
        (
            Box::new(|m| {
                m.tls = Some(Tls {
                    cert: "relative.pem".into(),
                    key: "/k".into(),
                })
            }),
            "TLS certificate",
        ),
        (
            Box::new(|m| {
                m.apps_domain = Some("apps.test".into());
                m.apps = vec![app("x", &[("web", "1.2.3.4;}", 80)])];
            }),
            "endpoint host",
        ),
        (
            Box::new(|m| {
                m.apps_domain = Some("apps.test".into());
                m.apps = vec![app("a.b", &[("web", "1.2.3.4", 80)])];
            }),
            "instance id",
        ),
        (
            Box::new(|m| {
                m.apps_domain = Some("apps.test".into());
                m.apps = vec![app("x", &[("we b", "1.2.3.4", 80)])];
            }),
            "service name",
        ),
        (
            Box::new(|m| m.apps_domain = Some("Apps.test".into())),
            "apps domain",
        ),
    ];
    for (mutate, what) in cases {
        let mut m = model();
        mutate(&mut m);
        match render(DEFAULT_TEMPLATE, &m) {
            Err(RenderError::Invalid { what: got, .. }) => assert_eq!(got, what),
            other => panic!("{what}: expected an invalid value error, got {other:?}"),
        }
    }
}

#[test]
fn template_errors_name_the_line() {
    let values: BTreeMap<&'static str, String> = [("a", "1".to_owned())].into();
    assert_eq!(fill("x {{a}} y {{ a }}\n", &values).unwrap(), "x 1 y 1\n");
    assert_eq!(
        fill("ok\n{{ nope }}\n", &values),
        Err(RenderError::UnknownPlaceholder {
            line: 2,
            name: "nope".into()
        })
    );
    assert_eq!(
        fill("{{ a", &values),
        Err(RenderError::Unclosed { line: 1 })
    );
}

#[test]
fn routable_ids_are_dns_labels() {
    for (id, ok) in [
        ("shop", true),
        ("shop-2", true),
        ("a.b", false),
        ("a_b", false),
        ("-a", false),
        ("a-", false),
    ] {
        let route = app(id, &[("web", "10.0.0.1", 80)]);
        assert_eq!(check_app(&route).is_ok(), ok, "{id}");
    }
    assert!(check_app(&app("ok", &[("web", "10.0.0.1", 0)])).is_err());
}
