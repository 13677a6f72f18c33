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
mod tests;
