//! `berth-frontdoor`: the consul-template role for berth's nginx front door. Watches the registry
//! with blocking queries (healthy `berth-master` services and, behind `--apps-domain`, the running
//! instance records), renders `nginx/nginx.conf.tmpl`, checks the result with `nginx -t`, moves it
//! into place and reloads nginx. In the default `supervise` mode it runs nginx itself as a child,
//! which is how the `berth-nginx` image uses it.

mod nginx;
mod render;
mod watch;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Parser, ValueEnum};
use tokio::sync::watch as channel;
use tokio_util::sync::CancellationToken;

use crate::nginx::{Applied, Nginx};
use crate::render::{AppRoute, Model, Tls};
use crate::watch::Registry;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// Run nginx as a child process and reload it on every change (the container's mode).
    Supervise,
    /// nginx runs elsewhere (systemd): write the file and `nginx -s reload` on every change.
    Reload,
    /// Read the registry once, print the rendered configuration to stdout and exit.
    Once,
}

/// Renders berth's nginx front door from the registry and keeps nginx in step with it.
#[derive(Debug, Parser)]
#[command(name = "berth-frontdoor", version)]
struct Cli {
    /// Registry or Consul HTTP address.
    #[arg(
        long,
        env = "BERTH_FRONTDOOR_REGISTRY",
        default_value = "http://127.0.0.1:8500"
    )]
    registry: String,
    /// ACL token for the registry (needs service:read on the masters and key:read on
    /// `berth/instances/`).
    #[arg(long, env = "BERTH_REGISTRY_TOKEN", hide_env_values = true)]
    registry_token: Option<String>,
    #[arg(
        long,
        env = "BERTH_REGISTRY_TOKEN_FILE",
        conflicts_with = "registry_token"
    )]
    registry_token_file: Option<PathBuf>,
    /// Catalog service whose passing instances are the masters.
    #[arg(long, env = "BERTH_FRONTDOOR_SERVICE", default_value = "berth-master")]
    service: String,
    /// Masters always in the upstream besides the catalog's (`host:port`, repeatable or comma
    /// separated).
    #[arg(
        long = "master",
        env = "BERTH_FRONTDOOR_MASTERS",
        value_delimiter = ','
    )]
    masters: Vec<String>,
    /// `host:port` the UI port proxies to [default: the host and port of --registry].
    #[arg(long, env = "BERTH_FRONTDOOR_REGISTRY_ADDRESS")]
    registry_address: Option<String>,
    /// Port of the API server (`/v1`, `/git` to the masters).
    #[arg(long, env = "BERTH_FRONTDOOR_LISTEN", default_value_t = 80)]
    listen: u16,
    /// Port of the registry UI server (`/ui/` and the Consul API it calls).
    #[arg(long, env = "BERTH_FRONTDOOR_UI_LISTEN", default_value_t = 8500)]
    ui_listen: u16,
    /// Do not expose the registry UI.
    #[arg(long, env = "BERTH_FRONTDOOR_NO_UI")]
    no_ui: bool,
    /// TLS certificate (PEM, full chain) for every server block; needs --tls-key.
    #[arg(long, env = "BERTH_FRONTDOOR_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<String>,
    #[arg(long, env = "BERTH_FRONTDOOR_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<String>,
    /// Route `<id>.<domain>` (and `<service>.<id>.<domain>`) to each running instance.
    #[arg(long, env = "BERTH_FRONTDOOR_APPS_DOMAIN")]
    apps_domain: Option<String>,
    /// Template to render [default: the nginx/nginx.conf.tmpl compiled in].
    #[arg(long, env = "BERTH_FRONTDOOR_TEMPLATE")]
    template: Option<PathBuf>,
    /// The live configuration file nginx reads.
    #[arg(
        long,
        env = "BERTH_FRONTDOOR_OUTPUT",
        default_value = "/etc/nginx/nginx.conf"
    )]
    output: PathBuf,
    #[arg(long, env = "BERTH_FRONTDOOR_NGINX", default_value = "/usr/sbin/nginx")]
    nginx: PathBuf,
    #[arg(long, env = "BERTH_FRONTDOOR_MODE", value_enum, default_value_t = Mode::Supervise)]
    mode: Mode,
    /// Largest request body (uploads); the master enforces its own cap behind it.
    #[arg(
        long,
        env = "BERTH_FRONTDOOR_CLIENT_MAX_BODY_SIZE",
        default_value = "64m"
    )]
    client_max_body_size: String,
    #[arg(
        long,
        env = "BERTH_FRONTDOOR_PID_FILE",
        default_value = "/run/nginx.pid"
    )]
    pid_file: String,
    #[arg(
        long,
        env = "BERTH_FRONTDOOR_MIME_TYPES",
        default_value = "/etc/nginx/mime.types"
    )]
    mime_types: String,
    /// Longest blocking query.
    #[arg(long, env = "BERTH_FRONTDOOR_WAIT", default_value = "5m", value_parser = humantime::parse_duration)]
    wait: Duration,
    /// Log as JSON lines.
    #[arg(long, env = "BERTH_FRONTDOOR_LOG_JSON")]
    log_json: bool,
}

/// `host:port` of a `scheme://host:port/...` URL.
fn authority(url: &str) -> anyhow::Result<String> {
    let rest = url
        .split_once("://")
        .map_or(url, |(_, rest)| rest)
        .split('/')
        .next()
        .unwrap_or_default();
    if rest.is_empty() {
        bail!("registry URL {url:?} has no host");
    }
    if rest
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        Ok(rest.to_owned())
    } else if url.starts_with("https://") {
        Ok(format!("{rest}:443"))
    } else {
        Ok(format!("{rest}:80"))
    }
}

struct Frontdoor {
    template: String,
    base: Model,
}

impl Frontdoor {
    /// The model with the static masters and the registry resolved to addresses now: nginx
    /// fails `-t` on a name it cannot resolve (a stopped container's name disappears from
    /// Docker's DNS) and would keep a restarted container's old address, so the renderer
    /// resolves on every render and re-renders periodically.
    async fn model(&self, catalog: &[String], apps: &[AppRoute]) -> Model {
        let mut model = self.base.clone();
        let mut masters = Vec::new();
        for name in &self.base.masters {
            match resolve(name).await {
                Some(addr) => masters.push(addr),
                None => tracing::warn!(master = %name, "static master does not resolve; left out"),
            }
        }
        masters.extend(catalog.iter().cloned());
        model.masters = masters;
        model.registry = match resolve(&self.base.registry).await {
            Some(addr) => addr,
            None => {
                tracing::warn!(registry = %self.base.registry, "registry does not resolve");
                UNREACHABLE.to_owned()
            }
        };
        model.apps = apps.to_vec();
        model
    }
}

/// Stand-in upstream address while a name does not resolve (nothing listens there).
const UNREACHABLE: &str = "127.0.0.1:9";

/// `host:port` with the host resolved to an IP address (IPv4 preferred).
async fn resolve(addr: &str) -> Option<String> {
    if let Ok(sock) = addr.parse::<std::net::SocketAddr>() {
        return Some(sock.to_string());
    }
    let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host(addr).await.ok()?.collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .map(ToString::to_string)
}

/// How often names are re-resolved even when the registry reports no change.
const RERESOLVE_EVERY: Duration = Duration::from_secs(10);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    berth_kit::init_tracing_to_stderr(cli.log_json);

    let token = berth_kit::Secret::from_value_or_file(
        cli.registry_token.clone(),
        cli.registry_token_file.as_deref(),
    )
    .with_context(|| {
        let path = cli
            .registry_token_file
            .as_ref()
            .map(|p| p.display().to_string());
        format!("reading {}", path.unwrap_or_default())
    })?
    .map(|s| s.expose().to_owned());
    let template = match &cli.template {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("reading template {}", path.display()))?,
        None => render::DEFAULT_TEMPLATE.to_owned(),
    };
    let registry_address = match &cli.registry_address {
        Some(a) => a.clone(),
        None => authority(&cli.registry)?,
    };
    // An empty value (compose's `${BERTH_APPS_DOMAIN:-}`) means no app routes.
    let apps_domain = cli.apps_domain.clone().filter(|d| !d.is_empty());
    let frontdoor = Frontdoor {
        template,
        base: Model {
            masters: cli
                .masters
                .iter()
                .filter(|m| !m.is_empty())
                .cloned()
                .collect(),
            registry: registry_address,
            listen: cli.listen,
            ui_listen: (!cli.no_ui).then_some(cli.ui_listen),
            tls: cli
                .tls_cert
                .clone()
                .zip(cli.tls_key.clone())
                .map(|(cert, key)| Tls { cert, key }),
            apps_domain: apps_domain.clone(),
            apps: Vec::new(),
            client_max_body_size: cli.client_max_body_size.clone(),
            pid_file: cli.pid_file.clone(),
            mime_types: cli.mime_types.clone(),
        },
    };
    // A bad flag fails here, at start-up, instead of at the first change.
    render::render(&frontdoor.template, &frontdoor.base).context("rendering the configuration")?;

    let registry = Registry::new(&cli.registry, token, cli.wait);
    let shutdown = CancellationToken::new();
    let (masters_tx, mut masters_rx) = channel::channel::<Option<Vec<String>>>(None);
    let (apps_tx, mut apps_rx) = channel::channel::<Option<Vec<AppRoute>>>(None);
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(watch::run(
        registry.clone(),
        format!("/v1/health/service/{}?passing=1", cli.service),
        |body: Option<&[u8]>| body.map_or(Ok(Vec::new()), watch::parse_masters),
        masters_tx,
        shutdown.clone(),
    ));
    if apps_domain.is_some() {
        tasks.spawn(watch::run(
            registry,
            format!("/v1/kv/{}?recurse=1", berth_model::keys::RECORD_PREFIX),
            |body: Option<&[u8]>| {
                let Some(body) = body else {
                    return Ok(Vec::new());
                };
                let (apps, skipped) = watch::parse_apps(body)?;
                for reason in skipped {
                    tracing::warn!(%reason, "instance record left out of the front door");
                }
                Ok(apps)
            },
            apps_tx,
            shutdown.clone(),
        ));
    } else {
        // Keep the channel open so `changed()` never fires for the unused watch.
        tasks.spawn(async move {
            apps_tx.closed().await;
        });
    }

    if cli.mode == Mode::Once {
        let wait = async {
            let _ = masters_rx.wait_for(Option::is_some).await;
            if apps_domain.is_some() {
                let _ = apps_rx.wait_for(Option::is_some).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(30), wait)
            .await
            .context("the registry did not answer within 30 s")?;
        let masters = masters_rx.borrow().clone().unwrap_or_default();
        let apps = apps_rx.borrow().clone().unwrap_or_default();
        let text = render::render(&frontdoor.template, &frontdoor.model(&masters, &apps).await)?;
        print!("{text}");
        shutdown.cancel();
        return Ok(());
    }

    let nginx = Nginx {
        program: cli.nginx.clone(),
        conf: cli.output.clone(),
        check: true,
    };
    // First render from the static masters alone, so the front door answers even while the
    // registry is still starting.
    nginx
        .apply(&render::render(
            &frontdoor.template,
            &frontdoor.model(&[], &[]).await,
        )?)
        .await
        .context("applying the first configuration")?;
    let mut child = match cli.mode {
        Mode::Supervise => Some(nginx.spawn()?),
        _ => None,
    };
    if cli.mode == Mode::Reload {
        reload(&nginx).await;
    }
    tracing::info!(mode = ?cli.mode, conf = %cli.output.display(), "front door running");

    let signal = berth_kit::shutdown_signal();
    tokio::pin!(signal);
    let mut tick = tokio::time::interval(RERESOLVE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let result = loop {
        tokio::select! {
            () = &mut signal => break Ok(()),
            _ = tick.tick() => {}
            status = async { child.as_mut().expect("supervised child").wait().await }, if child.is_some() => {
                break Err(anyhow::anyhow!("nginx exited: {status:?}"));
            }
            changed = masters_rx.changed() => if changed.is_err() { break Ok(()) },
            changed = apps_rx.changed() => if changed.is_err() { break Ok(()) },
        }
        let masters = masters_rx.borrow_and_update().clone().unwrap_or_default();
        let apps = apps_rx.borrow_and_update().clone().unwrap_or_default();
        let model = frontdoor.model(&masters, &apps).await;
        let text = match render::render(&frontdoor.template, &model) {
            Ok(text) => text,
            Err(err) => {
                tracing::error!(cause = %err, "render failed; the running configuration stays");
                continue;
            }
        };
        match nginx.apply(&text).await {
            Ok(Applied::Unchanged) => {}
            Ok(Applied::Written) => {
                reload(&nginx).await;
                tracing::info!(
                    masters = model.masters.len(),
                    apps = model.apps.len(),
                    "configuration rendered and nginx reloaded"
                );
            }
            Err(err) => {
                tracing::error!(cause = %err, "configuration not applied; the running one stays");
            }
        }
    };
    shutdown.cancel();
    if let Some(mut child) = child
        && (nginx.quit().await.is_err()
            || tokio::time::timeout(Duration::from_secs(10), child.wait())
                .await
                .is_err())
    {
        let _ = child.kill().await;
    }
    while tasks.join_next().await.is_some() {}
    result
}

/// Reloads nginx, retrying while it is still starting (no pid file yet).
async fn reload(nginx: &Nginx) {
    for attempt in 1..=20 {
        match nginx.reload().await {
            Ok(()) => return,
            Err(err) if attempt == 20 => {
                tracing::error!(cause = %err, "nginx reload failed");
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn names_resolve_to_addresses() {
        assert_eq!(resolve("10.1.2.3:80").await.as_deref(), Some("10.1.2.3:80"));
        assert_eq!(
            resolve("localhost:8080").await.as_deref(),
            Some("127.0.0.1:8080")
        );
        assert_eq!(resolve("no-such-host.invalid:80").await, None);
    }

    #[test]
    fn registry_authority_from_url() {
        for (url, want) in [
            ("http://registry:8500", "registry:8500"),
            ("http://10.0.0.1:8500/", "10.0.0.1:8500"),
            ("https://consul.example", "consul.example:443"),
            ("http://consul.example/v1", "consul.example:80"),
            ("registry:8500", "registry:8500"),
        ] {
            assert_eq!(authority(url).unwrap(), want, "{url}");
        }
        assert!(authority("http://").is_err());
    }

    #[test]
    fn cli_parses_flags_and_lists() {
        let cli = Cli::try_parse_from([
            "berth-frontdoor",
            "--master",
            "m1:8080,m2:8080",
            "--tls-cert",
            "/c",
            "--tls-key",
            "/k",
            "--mode",
            "once",
        ])
        .unwrap();
        assert_eq!(cli.masters, vec!["m1:8080", "m2:8080"]);
        assert_eq!(cli.mode, Mode::Once);
        assert!(Cli::try_parse_from(["berth-frontdoor", "--tls-cert", "/c"]).is_err());
    }
}
