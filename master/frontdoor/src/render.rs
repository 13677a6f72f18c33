//! Pure rendering of the nginx configuration: a [`Model`] (healthy masters, registry, TLS, app
//! routes) and a template with `{{ name }}` placeholders become one nginx.conf text.
//!
//! Everything that comes from the registry (addresses, instance ids, service names) is checked
//! against a strict character set before it reaches the file, so a hostile record cannot inject
//! nginx directives.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// The template shipped in `nginx/`, compiled in so the binary works on its own.
pub(crate) const DEFAULT_TEMPLATE: &str = include_str!("../../../nginx/nginx.conf.tmpl");

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum RenderError {
    #[error("template line {line}: unknown placeholder {name:?}")]
    UnknownPlaceholder { line: usize, name: String },
    #[error("template line {line}: placeholder not closed with }}}}")]
    Unclosed { line: usize },
    #[error("invalid {what} {value:?}: {reason}")]
    Invalid {
        what: &'static str,
        value: String,
        reason: &'static str,
    },
}

/// TLS with certificates the operator provides (paths inside the nginx container or host).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Tls {
    pub(crate) cert: String,
    pub(crate) key: String,
}

/// One published port of a running instance, as recorded in `berth/instances/<id>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AppEndpoint {
    pub(crate) service: String,
    pub(crate) host: String,
    pub(crate) port: u16,
}

/// A running instance and its TCP endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AppRoute {
    pub(crate) id: String,
    pub(crate) endpoints: Vec<AppEndpoint>,
}

/// Everything a render depends on. Two equal models render to the same text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Model {
    /// `host:port` of every healthy master.
    pub(crate) masters: Vec<String>,
    /// `host:port` of the registry the UI port proxies to.
    pub(crate) registry: String,
    /// Port of the API server.
    pub(crate) listen: u16,
    /// Port of the registry UI server; `None` turns it off.
    pub(crate) ui_listen: Option<u16>,
    pub(crate) tls: Option<Tls>,
    /// `Some(domain)` routes `<id>.<domain>` to running instances.
    pub(crate) apps_domain: Option<String>,
    pub(crate) apps: Vec<AppRoute>,
    pub(crate) client_max_body_size: String,
    pub(crate) pid_file: String,
    pub(crate) mime_types: String,
}

/// Fills `template` from `model`.
pub(crate) fn render(template: &str, model: &Model) -> Result<String, RenderError> {
    let values = values(model)?;
    fill(template, &values)
}

/// Replaces every `{{ name }}` with its value; an unknown name or an unclosed `{{` is an error.
fn fill(template: &str, values: &BTreeMap<&'static str, String>) -> Result<String, RenderError> {
    let mut out = String::with_capacity(template.len() * 2);
    for (index, line) in template.split_inclusive('\n').enumerate() {
        let mut rest = line;
        while let Some(start) = rest.find("{{") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let end = after
                .find("}}")
                .ok_or(RenderError::Unclosed { line: index + 1 })?;
            let name = after[..end].trim();
            let value = values
                .get(name)
                .ok_or_else(|| RenderError::UnknownPlaceholder {
                    line: index + 1,
                    name: name.to_owned(),
                })?;
            out.push_str(value);
            rest = &after[end + 2..];
        }
        out.push_str(rest);
    }
    Ok(out)
}

fn values(model: &Model) -> Result<BTreeMap<&'static str, String>, RenderError> {
    let mut masters: Vec<&str> = Vec::new();
    for master in &model.masters {
        check_address("master address", master)?;
        masters.push(master);
    }
    masters.sort_unstable();
    masters.dedup();
    check_address("registry address", &model.registry)?;
    check_token("client_max_body_size", &model.client_max_body_size)?;
    check_path("pid file", &model.pid_file)?;
    check_path("mime types file", &model.mime_types)?;
    if let Some(tls) = &model.tls {
        check_path("TLS certificate", &tls.cert)?;
        check_path("TLS key", &tls.key)?;
    }

    let mut v = BTreeMap::new();
    v.insert(
        "masters_upstream",
        if masters.is_empty() {
            // nginx needs one server per upstream: a closed port that answers 502 until a
            // healthy master appears in the catalog.
            "        server 127.0.0.1:9 down; # no healthy berth-master in the catalog".to_owned()
        } else {
            masters
                .iter()
                .map(|m| format!("        server {m} max_fails=2 fail_timeout=5s;"))
                .collect::<Vec<_>>()
                .join("\n")
        },
    );
    v.insert("registry_address", model.registry.clone());
    // The API server is the port's default server: a request for a name no server block holds
    // (an address, the front door's own name) is the API's, never an app's.
    v.insert(
        "front_listen",
        listen_lines(model.listen, model.tls.as_ref(), 8, true),
    );
    v.insert("http_redirect", http_redirect(model));
    v.insert("ui_location", ui_location(model));
    v.insert("ui_server", ui_server(model));
    v.insert("app_servers", app_servers(model)?);
    v.insert("client_max_body_size", model.client_max_body_size.clone());
    v.insert("pid_file", model.pid_file.clone());
    v.insert("mime_types", model.mime_types.clone());
    Ok(v)
}

fn listen_lines(port: u16, tls: Option<&Tls>, indent: usize, default: bool) -> String {
    let pad = " ".repeat(indent);
    let default = if default { " default_server" } else { "" };
    match tls {
        None => format!("{pad}listen {port}{default};"),
        Some(tls) => format!(
            "{pad}listen {port} ssl{default};\n{pad}ssl_certificate {};\n{pad}ssl_certificate_key {};\n\
             {pad}ssl_protocols TLSv1.2 TLSv1.3;",
            tls.cert, tls.key
        ),
    }
}

fn http_redirect(model: &Model) -> String {
    match (&model.tls, model.listen) {
        // With TLS on 443, plain port 80 only redirects.
        (Some(_), 443) => "\n    server {\n        listen 80;\n        server_name _;\n        \
             return 301 https://$host$request_uri;\n    }\n"
            .to_owned(),
        _ => String::new(),
    }
}

fn ui_location(model: &Model) -> String {
    match model.ui_listen {
        Some(port) => format!(
            "        location /ui {{\n            return 302 $scheme://$host:{port}/ui/;\n        }}"
        ),
        None => "        location /ui {\n            return 404 \"berth: the registry UI is not exposed here\\n\";\n        }"
            .to_owned(),
    }
}

fn ui_server(model: &Model) -> String {
    let Some(port) = model.ui_listen else {
        return String::new();
    };
    format!(
        "\n    # The registry UI and its Consul API (ACL tokens apply), on a port of its own so\n    \
         # that `/v1` on the API port stays the master's.\n    server {{\n{}\n        \
         server_name _;\n        location / {{\n            proxy_pass http://berth_registry;\n        \
         }}\n    }}\n",
        listen_lines(port, model.tls.as_ref(), 8, false)
    )
}

fn app_servers(model: &Model) -> Result<String, RenderError> {
    let Some(domain) = &model.apps_domain else {
        return Ok(String::new());
    };
    check_domain(domain)?;
    // App routes share the API server's port (`--listen`) and TLS.
    let listen = listen_lines(model.listen, model.tls.as_ref(), 8, false);
    let mut apps: Vec<&AppRoute> = model
        .apps
        .iter()
        .filter(|a| !a.endpoints.is_empty())
        .collect();
    apps.sort_by(|a, b| a.id.cmp(&b.id));
    let mut out = String::new();
    for app in apps {
        check_app(app)?;
        let mut endpoints: Vec<&AppEndpoint> = app.endpoints.iter().collect();
        endpoints.sort_by(|a, b| (&a.service, a.port).cmp(&(&b.service, b.port)));
        // `<id>.<domain>` reaches the first endpoint; `<service>.<id>.<domain>` each service's.
        let mut routes: Vec<(String, &AppEndpoint)> =
            vec![(format!("{}.{domain}", app.id), endpoints[0])];
        let mut seen = Vec::new();
        for e in &endpoints {
            if !seen.contains(&e.service.as_str()) {
                seen.push(e.service.as_str());
                routes.push((format!("{}.{}.{domain}", e.service, app.id), e));
            }
        }
        let _ = writeln!(out, "\n    # instance {}", app.id);
        for (name, e) in routes {
            let target = if e.host.contains(':') {
                format!("[{}]:{}", e.host, e.port)
            } else {
                format!("{}:{}", e.host, e.port)
            };
            let _ = write!(
                out,
                "    server {{\n{}\n        server_name {name};\n        location / {{\n            \
                 proxy_pass http://{target};\n            \
                 proxy_set_header Upgrade $http_upgrade;\n            \
                 proxy_set_header Connection $connection_upgrade;\n            \
                 proxy_set_header Host $host;\n            \
                 proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n        }}\n    }}\n",
                listen
            );
        }
    }
    // Every other name under the domain (an unknown, stopped or starting instance) gets a 404
    // page of its own: exact names win over this wildcard, and nginx never falls back to
    // another instance's server.
    let _ = write!(
        out,
        "\n    # names under the apps domain that no running instance answers\n    server {{\n{listen}\n        \
         server_name *.{domain};\n        default_type text/plain;\n        location / {{\n            \
         return 404 \"berth: no running instance answers at $host (unknown, stopped or not started yet)\\n\";\n        \
         }}\n    }}\n"
    );
    Ok(format!(
        "\n    map $http_upgrade $connection_upgrade {{\n        default upgrade;\n        '' close;\n    }}\n{out}"
    ))
}

fn invalid(what: &'static str, value: &str, reason: &'static str) -> RenderError {
    RenderError::Invalid {
        what,
        value: value.chars().take(80).collect(),
        reason,
    }
}

/// `host:port` with a hostname, IPv4 or bracketed IPv6 host.
fn check_address(what: &'static str, value: &str) -> Result<(), RenderError> {
    let (host, port) = value
        .rsplit_once(':')
        .ok_or_else(|| invalid(what, value, "expected host:port"))?;
    if port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(invalid(what, value, "port must be 1 to 65535"));
    }
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    check_host(what, host)
}

/// A hostname or an IP address: letters, digits, `.`, `-`, and `:` for IPv6.
fn check_host(what: &'static str, value: &str) -> Result<(), RenderError> {
    let ok = !value.is_empty()
        && value.len() <= 253
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':'));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            what,
            value,
            "only letters, digits, '.', '-' and ':'",
        ))
    }
}

/// One DNS label: `[a-z0-9]([a-z0-9-]*[a-z0-9])?`, at most 63 characters.
fn check_label(what: &'static str, value: &str) -> Result<(), RenderError> {
    let b = value.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-';
    if ok {
        Ok(())
    } else {
        Err(invalid(what, value, "must be one DNS label of [a-z0-9-]"))
    }
}

fn check_domain(value: &str) -> Result<(), RenderError> {
    if value.len() > 200
        || value
            .split('.')
            .any(|l| check_label("apps domain", l).is_err())
    {
        return Err(invalid(
            "apps domain",
            value,
            "must be DNS labels of [a-z0-9-]",
        ));
    }
    Ok(())
}

/// A single nginx token: no whitespace, quotes, `;`, braces, `$` or `#`.
fn check_token(what: &'static str, value: &str) -> Result<(), RenderError> {
    let ok = !value.is_empty()
        && value.bytes().all(|b| {
            b.is_ascii_graphic() && !matches!(b, b';' | b'{' | b'}' | b'"' | b'\'' | b'$' | b'#')
        });
    if ok {
        Ok(())
    } else {
        Err(invalid(what, value, "one word without ; { } quotes $ or #"))
    }
}

fn check_path(what: &'static str, value: &str) -> Result<(), RenderError> {
    check_token(what, value)?;
    if value.starts_with('/') {
        Ok(())
    } else {
        Err(invalid(what, value, "must be an absolute path"))
    }
}

/// Can `app` be routed as `<id>.<domain>`? Instance ids may hold `.` and `_`, which a DNS label
/// cannot; a record's endpoints come from the KV. The watcher leaves out (and logs) every app
/// this rejects, so one odd record never blocks the others' routes.
pub(crate) fn check_app(app: &AppRoute) -> Result<(), RenderError> {
    check_label("instance id", &app.id)?;
    for e in &app.endpoints {
        check_label("service name", &e.service)?;
        check_host("endpoint host", &e.host)?;
        if e.port == 0 {
            return Err(invalid("endpoint port", "0", "must be 1 to 65535"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
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
}
