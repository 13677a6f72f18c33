//! One execution of an HTTP, TCP or script check, producing a status and Consul-like output.

use std::time::Duration;

use axum::http;

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
    /// Target URL (`http://` or `https://`).
    pub url: String,
    /// HTTP method (default GET).
    pub method: String,
    /// Extra request headers.
    pub headers: Vec<(String, String)>,
    /// Request body (empty: none).
    pub body: String,
    /// `TLSSkipVerify`: accept any server certificate (the handshake is still checked).
    pub tls_skip_verify: bool,
    /// `TLSServerName`: the name to send (SNI) and verify instead of the URL's host.
    pub tls_server_name: Option<String>,
    /// `DisableRedirects`: a 3xx answer is the result (critical), not followed.
    pub disable_redirects: bool,
}

/// Redirects followed before giving up (Go's default, which Consul's checks use).
const MAX_REDIRECTS: usize = 10;

type Connector = hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>;

/// The HTTP(S) client of one HTTP check: TLS through rustls on ring, verified against the
/// Mozilla roots unless the check says `TLSSkipVerify`; no connection is kept between runs
/// (Consul's checks disable keep-alive), so every run measures a fresh connect.
#[derive(Clone)]
pub(crate) struct HttpClient {
    client: hyper_util::client::legacy::Client<Connector, http_body_util::Full<bytes::Bytes>>,
}

impl HttpClient {
    pub(crate) fn new(probe: &HttpProbe) -> Result<Self, String> {
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let builder = hyper_rustls::HttpsConnectorBuilder::new();
        let builder = if probe.tls_skip_verify {
            let config = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(|e| format!("TLS setup: {e}"))?
                .dangerous()
                .with_custom_certificate_verifier(std::sync::Arc::new(AnyCertificate(provider)))
                .with_no_client_auth();
            builder.with_tls_config(config)
        } else {
            builder
                .with_provider_and_webpki_roots(provider)
                .map_err(|e| format!("TLS setup: {e}"))?
        };
        let builder = builder.https_or_http();
        let builder = match probe.tls_server_name.as_deref().filter(|n| !n.is_empty()) {
            Some(name) => {
                let name = rustls::pki_types::ServerName::try_from(name.to_owned())
                    .map_err(|e| format!("invalid TLSServerName {name:?}: {e}"))?;
                builder.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name))
            }
            None => builder,
        };
        let connector = builder.enable_http1().build();
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .pool_max_idle_per_host(0)
                .build(connector);
        Ok(Self { client })
    }
}

/// `TLSSkipVerify`: any certificate chain and name is accepted, but the handshake signatures
/// are still verified (as Go's `InsecureSkipVerify`).
#[derive(Debug)]
struct AnyCertificate(std::sync::Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// 2xx passing, 429 warning, anything else (or no answer) critical.
pub(crate) async fn http(
    client: &HttpClient,
    probe: &HttpProbe,
    timeout: Duration,
) -> (Health, String) {
    let Ok(method) = http::Method::from_bytes(probe.method.as_bytes()) else {
        return (
            Health::Critical,
            format!("invalid method {:?}", probe.method),
        );
    };
    let answer = match tokio::time::timeout(timeout, exchange(client, probe, method.clone())).await
    {
        Ok(Ok(answer)) => answer,
        Ok(Err(reason)) => {
            return (
                Health::Critical,
                format!("{method} {:?}: {reason}", probe.url),
            );
        }
        Err(_) => {
            return (
                Health::Critical,
                format!(
                    "{method} {:?}: request timed out after {timeout:?}",
                    probe.url
                ),
            );
        }
    };
    let (status, body) = answer;
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
        truncate(String::from_utf8_lossy(&body).into_owned())
    );
    (health, output)
}

/// Sends the request, following redirects unless `DisableRedirects` (301/302/303 turn into a
/// body-less GET unless the method is HEAD, 307/308 resend as they are), and reads up to [`OUTPUT_MAX`] bytes of the
/// final body.
async fn exchange(
    client: &HttpClient,
    probe: &HttpProbe,
    mut method: http::Method,
) -> Result<(http::StatusCode, Vec<u8>), String> {
    use http_body_util::BodyExt as _;
    let mut url = reqwest::Url::parse(&probe.url).map_err(|e| format!("invalid URL: {e}"))?;
    let mut body = probe.body.clone();
    for _ in 0..=MAX_REDIRECTS {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("unsupported protocol scheme {:?}", url.scheme()));
        }
        let mut request = http::Request::builder()
            .method(method.clone())
            .uri(url.as_str())
            .header("User-Agent", "Consul Health Check")
            .header("Accept", "text/plain, text/*, */*");
        for (k, v) in &probe.headers {
            request = request.header(k.as_str(), v.as_str());
        }
        let request = request
            .body(http_body_util::Full::new(bytes::Bytes::from(body.clone())))
            .map_err(|e| format!("invalid request: {e}"))?;
        let response = client
            .client
            .request(request)
            .await
            .map_err(|e| error_chain(&e))?;
        let status = response.status();
        let location = response
            .headers()
            .get(http::header::LOCATION)
            .and_then(|l| l.to_str().ok())
            .map(str::to_owned);
        match (status.as_u16(), location) {
            (301..=303 | 307 | 308, Some(location)) if !probe.disable_redirects => {
                url = url
                    .join(&location)
                    .map_err(|e| format!("invalid redirect to {location:?}: {e}"))?;
                if status.as_u16() <= 303 && method != http::Method::HEAD {
                    method = http::Method::GET;
                    body.clear();
                }
            }
            _ => {
                let mut kept = Vec::new();
                let mut incoming = response.into_body();
                while kept.len() < OUTPUT_MAX {
                    match incoming.frame().await {
                        Some(Ok(frame)) => {
                            if let Ok(data) = frame.into_data() {
                                kept.extend_from_slice(&data);
                            }
                        }
                        Some(Err(e)) => return Err(error_chain(&e)),
                        None => break,
                    }
                }
                return Ok((status, kept));
            }
        }
    }
    Err(format!("stopped after {MAX_REDIRECTS} redirects"))
}

fn status_line(status: http::StatusCode) -> String {
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

    fn probe(url: &str) -> HttpProbe {
        HttpProbe {
            url: url.to_owned(),
            method: "GET".into(),
            headers: vec![],
            body: String::new(),
            tls_skip_verify: false,
            tls_server_name: None,
            disable_redirects: false,
        }
    }

    async fn run(probe: &HttpProbe) -> (Health, String) {
        let client = HttpClient::new(probe).unwrap();
        http(&client, probe, Duration::from_secs(10)).await
    }

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
                method: "PUT".into(),
                headers: vec![("X-Probe".into(), "yes".into())],
                ..probe(&url)
            };
            let (h, out) = run(&probe).await;
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
        let (h, _) = run(&probe(&format!("http://{addr}/"))).await;
        assert_eq!(h, Health::Critical);
    }

    #[tokio::test]
    async fn http_follows_redirects() {
        let app = axum::Router::new()
            .route(
                "/old",
                axum::routing::post(|| async {
                    (StatusCode::FOUND, [("Location", "/new?x=1")], "moved")
                }),
            )
            .route(
                "/new",
                axum::routing::get(|uri: axum::http::Uri| async move { format!("at {uri}") }),
            );
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(l, app).await });
        let url = format!("http://{addr}/old");
        let moved = HttpProbe {
            method: "POST".into(),
            body: "payload".into(),
            ..probe(&url)
        };
        assert_eq!(
            run(&moved).await,
            (
                Health::Passing,
                format!("HTTP POST {url}: 200 OK Output: at /new?x=1")
            )
        );
        let kept = HttpProbe {
            disable_redirects: true,
            ..moved
        };
        assert_eq!(
            run(&kept).await,
            (
                Health::Critical,
                format!("HTTP POST {url}: 302 Found Output: moved")
            )
        );
    }

    /// A TLS server on a fresh self-signed certificate for `localhost`: answers 200 with the
    /// server name the client sent (SNI).
    fn tls_server() -> std::net::SocketAddr {
        use std::io::{BufRead as _, Write as _};
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        let config = std::sync::Arc::new(config);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for tcp in listener.incoming() {
                let Ok(tcp) = tcp else { continue };
                let conn = rustls::ServerConnection::new(config.clone()).unwrap();
                let mut tls = rustls::StreamOwned::new(conn, tcp);
                let mut reader = std::io::BufReader::new(&mut tls);
                let mut line = String::new();
                // Read the request head; a client that rejects the certificate ends here.
                loop {
                    line.clear();
                    match reader.read_line(&mut line) {
                        Ok(0) | Err(_) => break,
                        Ok(_) if line == "\r\n" => break,
                        Ok(_) => {}
                    }
                }
                if line != "\r\n" {
                    continue;
                }
                let sni = tls.conn.server_name().unwrap_or("-").to_owned();
                let body = format!("sni={sni}");
                let _ = write!(
                    tls,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                tls.conn.send_close_notify();
                let _ = tls.flush();
            }
        });
        addr
    }

    #[tokio::test]
    async fn https_checks_verify_unless_told_to_skip() {
        let addr = tls_server();
        let url = format!("https://localhost:{}/health", addr.port());
        let (h, out) = run(&probe(&url)).await;
        assert_eq!(h, Health::Critical, "{out}");
        assert!(out.contains("certificate"), "names the TLS failure: {out}");
        let skip = HttpProbe {
            tls_skip_verify: true,
            ..probe(&url)
        };
        assert_eq!(
            run(&skip).await,
            (
                Health::Passing,
                format!("HTTP GET {url}: 200 OK Output: sni=localhost")
            )
        );
        let named = HttpProbe {
            tls_server_name: Some("api.internal".into()),
            ..skip.clone()
        };
        assert_eq!(
            run(&named).await.1,
            format!("HTTP GET {url}: 200 OK Output: sni=api.internal")
        );
        assert!(
            HttpClient::new(&HttpProbe {
                tls_server_name: Some("not a name".into()),
                ..skip
            })
            .is_err()
        );
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
