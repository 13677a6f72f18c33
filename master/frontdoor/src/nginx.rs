//! Applying a rendered configuration to nginx: write a candidate next to the live file, check it
//! with `nginx -t`, move it into place, reload. A candidate that fails the check never replaces
//! the running configuration.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::process::{Child, Command};

#[derive(Debug, thiserror::Error)]
pub(crate) enum NginxError {
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("running {program}: {source}")]
    Spawn {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("nginx rejected the rendered configuration: {stderr}")]
    Rejected { stderr: String },
    #[error("nginx reload failed: {stderr}")]
    Reload { stderr: String },
}

/// How the rendered file reaches a running nginx.
#[derive(Debug, Clone)]
pub(crate) struct Nginx {
    pub(crate) program: PathBuf,
    pub(crate) conf: PathBuf,
    /// Check candidates with `nginx -t` (off only where no nginx binary exists, e.g. `--once`).
    pub(crate) check: bool,
}

/// What [`Nginx::apply`] did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Applied {
    Unchanged,
    Written,
}

impl Nginx {
    fn candidate(&self) -> PathBuf {
        let mut name = self.conf.file_name().unwrap_or_default().to_os_string();
        name.push(".candidate");
        self.conf.with_file_name(name)
    }

    /// Writes `text` as the live configuration if it differs and passes `nginx -t`.
    pub(crate) async fn apply(&self, text: &str) -> Result<Applied, NginxError> {
        if tokio::fs::read_to_string(&self.conf).await.ok().as_deref() == Some(text) {
            return Ok(Applied::Unchanged);
        }
        let candidate = self.candidate();
        write(&candidate, text).await?;
        if self.check {
            let out = self.run(&["-t", "-q", "-c"], &candidate).await?;
            if !out.status.success() {
                let _ = tokio::fs::remove_file(&candidate).await;
                return Err(NginxError::Rejected {
                    stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
                });
            }
        }
        tokio::fs::rename(&candidate, &self.conf)
            .await
            .map_err(|source| NginxError::Write {
                path: self.conf.clone(),
                source,
            })?;
        Ok(Applied::Written)
    }

    /// Starts nginx in the foreground as a child of this process.
    pub(crate) fn spawn(&self) -> Result<Child, NginxError> {
        Command::new(&self.program)
            .arg("-c")
            .arg(&self.conf)
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| NginxError::Spawn {
                program: self.program.clone(),
                source,
            })
    }

    /// Asks the running nginx (found by the configuration's pid file) to reload.
    pub(crate) async fn reload(&self) -> Result<(), NginxError> {
        let out = self.run(&["-s", "reload", "-c"], &self.conf).await?;
        if out.status.success() {
            Ok(())
        } else {
            Err(NginxError::Reload {
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            })
        }
    }

    /// Graceful stop: finish open requests, then exit.
    pub(crate) async fn quit(&self) -> Result<(), NginxError> {
        self.run(&["-s", "quit", "-c"], &self.conf).await.map(drop)
    }

    async fn run(&self, args: &[&str], conf: &Path) -> Result<std::process::Output, NginxError> {
        Command::new(&self.program)
            .args(args)
            .arg(conf)
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|source| NginxError::Spawn {
                program: self.program.clone(),
                source,
            })
    }
}

async fn write(path: &Path, text: &str) -> Result<(), NginxError> {
    tokio::fs::write(path, text)
        .await
        .map_err(|source| NginxError::Write {
            path: path.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    //! Against Debian's real nginx (scripts/install-test-deps.sh installs it).

    use super::*;
    use crate::render::{DEFAULT_TEMPLATE, Model, Tls, render};

    const NGINX: &str = "/usr/sbin/nginx";

    fn nginx(dir: &Path) -> Nginx {
        assert!(
            Path::new(NGINX).exists(),
            "{NGINX} is missing: run scripts/install-test-deps.sh"
        );
        Nginx {
            program: NGINX.into(),
            conf: dir.join("nginx.conf"),
            check: true,
        }
    }

    fn model(dir: &Path, listen: u16, masters: Vec<String>) -> Model {
        Model {
            masters,
            registry: "127.0.0.1:9".into(),
            listen,
            ui_listen: None,
            tls: None,
            apps_domain: Some("apps.test".into()),
            apps: vec![crate::render::AppRoute {
                id: "shop".into(),
                endpoints: vec![crate::render::AppEndpoint {
                    service: "web".into(),
                    host: "127.0.0.1".into(),
                    port: 9,
                }],
            }],
            client_max_body_size: "64m".into(),
            pid_file: dir.join("nginx.pid").display().to_string(),
            mime_types: "/etc/nginx/mime.types".into(),
        }
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    #[tokio::test]
    async fn rendered_configs_pass_nginx_t_and_bad_ones_never_replace_the_live_file() {
        let dir = tempfile::tempdir().unwrap();
        let n = nginx(dir.path());
        let mut m = model(dir.path(), free_port(), vec!["127.0.0.1:8080".into()]);
        m.ui_listen = Some(free_port());
        let text = render(DEFAULT_TEMPLATE, &m).unwrap();
        assert_eq!(n.apply(&text).await.unwrap(), Applied::Written);
        assert_eq!(n.apply(&text).await.unwrap(), Applied::Unchanged);

        let broken = text.replace("proxy_pass http://berth_masters;", "proxy_pass;");
        match n.apply(&broken).await {
            Err(NginxError::Rejected { stderr }) => {
                assert!(stderr.contains("proxy_pass"), "{stderr}")
            }
            other => panic!("expected a rejection, got {other:?}"),
        }
        assert_eq!(std::fs::read_to_string(&n.conf).unwrap(), text);
        assert!(!dir.path().join("nginx.conf.candidate").exists());

        // No master at all still gives a configuration nginx accepts.
        m.masters.clear();
        let text = render(DEFAULT_TEMPLATE, &m).unwrap();
        assert_eq!(n.apply(&text).await.unwrap(), Applied::Written);
    }

    #[tokio::test]
    async fn tls_config_with_given_certificates_passes_nginx_t() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        let status = std::process::Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args(["-subj", "/CN=berth.test", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("openssl is installed")
            .status;
        assert!(status.success());
        let n = nginx(dir.path());
        let mut m = model(dir.path(), 443, vec!["127.0.0.1:8080".into()]);
        m.ui_listen = Some(8500);
        m.tls = Some(Tls {
            cert: cert.display().to_string(),
            key: key.display().to_string(),
        });
        let text = render(DEFAULT_TEMPLATE, &m).unwrap();
        assert_eq!(n.apply(&text).await.unwrap(), Applied::Written);
    }

    /// A stand-in master answering with its own name.
    async fn backend(name: &'static str) -> (String, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let app = axum::Router::new().route(
            "/v1/instances",
            axum::routing::get(move || async move { name }),
        );
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        (addr, task)
    }

    async fn get_text(url: &str) -> String {
        // nginx is starting or reloading: give it a few tries.
        let mut last = String::new();
        for _ in 0..50 {
            match reqwest::get(url).await {
                Ok(r) => return r.text().await.unwrap(),
                Err(err) => last = err.to_string(),
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("{url}: {last}");
    }

    /// `GET /` on the front door's port with a `Host` header: status and body.
    async fn get_host(port: u16, host: &str) -> (u16, String) {
        let url = format!("http://127.0.0.1:{port}/");
        let http = reqwest::Client::new();
        let mut last = String::new();
        for _ in 0..50 {
            match http.get(&url).header("Host", host).send().await {
                Ok(r) => return (r.status().as_u16(), r.text().await.unwrap()),
                Err(err) => last = err.to_string(),
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("{url} as {host}: {last}");
    }

    #[tokio::test]
    async fn unknown_and_stopped_app_names_get_a_404_page_never_another_app() {
        let dir = tempfile::tempdir().unwrap();
        let n = nginx(dir.path());
        let (master, _m) = backend("master").await;
        let app = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let app_port = app.local_addr().unwrap().port();
        let _app = tokio::spawn(async move {
            let router =
                axum::Router::new().route("/", axum::routing::get(|| async { "shop app" }));
            axum::serve(app, router).await.unwrap();
        });
        // A port other than 80: app routes follow `--listen`.
        let port = free_port();
        let mut m = model(dir.path(), port, vec![master]);
        m.apps[0].endpoints[0].port = app_port;
        n.apply(&render(DEFAULT_TEMPLATE, &m).unwrap())
            .await
            .unwrap();
        let mut child = n.spawn().unwrap();

        assert_eq!(
            get_host(port, "shop.apps.test").await,
            (200, "shop app".into())
        );
        assert_eq!(
            get_host(port, "web.shop.apps.test").await,
            (200, "shop app".into())
        );
        for name in ["stopped.apps.test", "web.stopped.apps.test"] {
            let (status, body) = get_host(port, name).await;
            assert_eq!(status, 404, "{name}: {body}");
            assert_eq!(
                body,
                format!(
                    "berth: no running instance answers at {name} (unknown, stopped or not started yet)\n"
                )
            );
        }
        // Any other name is the API's (its default server), not an app's.
        let (status, body) = get_host(port, "berth.example.org").await;
        assert_eq!(status, 404);
        assert!(body.contains("try /v1/instances"), "{body}");
        let api = get_text(&format!("http://127.0.0.1:{port}/v1/instances")).await;
        assert_eq!(api, "master");

        n.quit().await.unwrap();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(20), child.wait()).await;
    }

    #[tokio::test]
    async fn supervised_nginx_proxies_to_the_rendered_masters_and_follows_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let n = nginx(dir.path());
        let (first, _a) = backend("first").await;
        let (second, _b) = backend("second").await;
        let port = free_port();
        let text = render(DEFAULT_TEMPLATE, &model(dir.path(), port, vec![first])).unwrap();
        n.apply(&text).await.unwrap();
        let mut child = n.spawn().unwrap();
        let url = format!("http://127.0.0.1:{port}/v1/instances");
        assert_eq!(get_text(&url).await, "first");

        let text = render(DEFAULT_TEMPLATE, &model(dir.path(), port, vec![second])).unwrap();
        assert_eq!(n.apply(&text).await.unwrap(), Applied::Written);
        n.reload().await.unwrap();
        let mut seen = String::new();
        for _ in 0..50 {
            seen = get_text(&url).await;
            if seen == "second" {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert_eq!(seen, "second");
        let other = get_text(&format!("http://127.0.0.1:{port}/elsewhere")).await;
        assert!(other.contains("try /v1/instances"), "{other}");

        n.quit().await.unwrap();
        let status = tokio::time::timeout(std::time::Duration::from_secs(20), child.wait())
            .await
            .expect("nginx quits")
            .unwrap();
        assert!(status.success());
    }
}
