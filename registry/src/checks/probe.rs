//! One execution of an HTTP, TCP or script check, producing a status and Consul-like output.

use std::time::Duration;

use super::Health;

/// Output kept from a response body or a script (Consul keeps 4 KiB).
const OUTPUT_MAX: usize = 4096;

fn truncate(mut s: String) -> String {
    if s.len() > OUTPUT_MAX {
        let mut cut = OUTPUT_MAX;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

/// What an HTTP check sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpProbe {
    /// Target URL.
    pub url: String,
    /// HTTP method (default GET).
    pub method: String,
    /// Extra request headers.
    pub headers: Vec<(String, String)>,
    /// Request body (empty: none).
    pub body: String,
}

/// 2xx passing, 429 warning, anything else (or no answer) critical.
pub(crate) async fn http(
    client: &reqwest::Client,
    probe: &HttpProbe,
    timeout: Duration,
) -> (Health, String) {
    let method = match reqwest::Method::from_bytes(probe.method.as_bytes()) {
        Ok(m) => m,
        Err(_) => {
            return (
                Health::Critical,
                format!("invalid method {:?}", probe.method),
            );
        }
    };
    let mut req = client
        .request(method.clone(), &probe.url)
        .timeout(timeout)
        .header("User-Agent", "Consul Health Check")
        .header("Accept", "text/plain, text/*, */*");
    for (k, v) in &probe.headers {
        req = req.header(k.as_str(), v.as_str());
    }
    if !probe.body.is_empty() {
        req = req.body(probe.body.clone());
    }
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => {
            let reason = if e.is_timeout() {
                format!("Get {:?}: request timed out after {timeout:?}", probe.url)
            } else {
                format!("{method} {:?}: {}", probe.url, error_chain(&e))
            };
            return (Health::Critical, reason);
        }
    };
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    let health = if status.is_success() {
        Health::Passing
    } else if status.as_u16() == 429 {
        Health::Warning
    } else {
        Health::Critical
    };
    let output = format!(
        "HTTP {method} {}: {} Output: {}",
        probe.url,
        status_line(status),
        truncate(body)
    );
    (health, output)
}

fn status_line(status: reqwest::StatusCode) -> String {
    match status.canonical_reason() {
        Some(r) => format!("{} {r}", status.as_u16()),
        None => status.as_u16().to_string(),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}

/// Passing when a TCP connection is accepted within the timeout.
pub(crate) async fn tcp(addr: &str, timeout: Duration) -> (Health, String) {
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => (Health::Passing, format!("TCP connect {addr}: Success")),
        Ok(Err(e)) => (Health::Critical, format!("dial tcp {addr}: {e}")),
        Err(_) => (Health::Critical, format!("dial tcp {addr}: i/o timeout")),
    }
}

/// Runs `args` without a shell: exit 0 passing, 1 warning, anything else critical.
pub(crate) async fn script(args: &[String], timeout: Duration) -> (Health, String) {
    let Some((prog, rest)) = args.split_first() else {
        return (Health::Critical, "empty Args".into());
    };
    let mut cmd = tokio::process::Command::new(prog);
    cmd.args(rest)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = match tokio::time::timeout(timeout, cmd.output()).await {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => return (Health::Critical, format!("failed to run {prog:?}: {e}")),
        Err(_) => {
            return (
                Health::Critical,
                format!("Timed out ({timeout:?}) running check"),
            );
        }
    };
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    let health = match out.status.code() {
        Some(0) => Health::Passing,
        Some(1) => Health::Warning,
        _ => Health::Critical,
    };
    (health, truncate(text))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    async fn serve(status: StatusCode) -> String {
        let app = axum::Router::new().fallback(move |req: axum::extract::Request| async move {
            let m = req.method().to_string();
            let hdr = req
                .headers()
                .get("x-probe")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            (status, format!("{m} {hdr}"))
        });
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(l, app).await });
        format!("http://{addr}/health")
    }

    #[tokio::test]
    async fn http_status_codes_map_to_health() {
        let client = reqwest::Client::new();
        let cases = [
            (StatusCode::OK, Health::Passing),
            (StatusCode::ACCEPTED, Health::Passing),
            (StatusCode::TOO_MANY_REQUESTS, Health::Warning),
            (StatusCode::SERVICE_UNAVAILABLE, Health::Critical),
            (StatusCode::NOT_FOUND, Health::Critical),
        ];
        for (code, want) in cases {
            let url = serve(code).await;
            let probe = HttpProbe {
                url: url.clone(),
                method: "PUT".into(),
                headers: vec![("X-Probe".into(), "yes".into())],
                body: String::new(),
            };
            let (h, out) = http(&client, &probe, Duration::from_secs(5)).await;
            assert_eq!(h, want, "{code}");
            assert!(
                out.starts_with(&format!("HTTP PUT {url}: {}", code.as_u16())),
                "{out}"
            );
            assert!(out.ends_with("Output: PUT yes"), "{out}");
        }
    }

    #[tokio::test]
    async fn http_and_tcp_fail_on_a_closed_port() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let (h, out) = tcp(&addr, Duration::from_secs(5)).await;
        assert_eq!(
            (h, out),
            (Health::Passing, format!("TCP connect {addr}: Success"))
        );
        drop(l);
        let (h, out) = tcp(&addr, Duration::from_secs(5)).await;
        assert_eq!(h, Health::Critical);
        assert!(out.starts_with(&format!("dial tcp {addr}: ")), "{out}");
        let probe = HttpProbe {
            url: format!("http://{addr}/"),
            method: "GET".into(),
            headers: vec![],
            body: String::new(),
        };
        let (h, _) = http(&reqwest::Client::new(), &probe, Duration::from_secs(5)).await;
        assert_eq!(h, Health::Critical);
    }

    #[tokio::test]
    async fn script_exit_codes_map_to_health() {
        let sh = |code: i32| {
            vec![
                "/bin/sh".to_owned(),
                "-c".to_owned(),
                format!("echo out-{code}; exit {code}"),
            ]
        };
        let t = Duration::from_secs(10);
        assert_eq!(script(&sh(0), t).await, (Health::Passing, "out-0\n".into()));
        assert_eq!(script(&sh(1), t).await, (Health::Warning, "out-1\n".into()));
        assert_eq!(script(&sh(2), t).await.0, Health::Critical);
        let slow = vec!["/bin/sleep".to_owned(), "5".to_owned()];
        let (h, out) = script(&slow, Duration::from_millis(100)).await;
        assert_eq!(h, Health::Critical);
        assert!(out.starts_with("Timed out"), "{out}");
        let missing = vec!["/nonexistent/berth-check".to_owned()];
        assert_eq!(script(&missing, t).await.0, Health::Critical);
    }
}
