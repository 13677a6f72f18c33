//! The `berth` CLI end to end against a real cluster (registry, master, nginx front door and a
//! worker as containers, see `cluster/mod.rs`): a bad folder refused before anything is sent,
//! deploy of the sample app, ps, status, logs, open, stop, start, a re-deploy of a changed
//! folder, rm, each with `--json` parsed, and the exit codes of each kind of failure.
//!
//! The binary is the one `scripts/build-images.sh --debug` (run by the harness) builds with the
//! rest of the workspace, next to this test's own directory.

mod cluster;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use cluster::{API_TOKEN, Cluster, Options, eventually, repo_root};
use reqwest::StatusCode;
use serde_json::Value;

/// `target/debug/berth`, beside `target/debug/deps/<this test>`.
fn berth_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/debug")
        .join("berth");
    assert!(
        bin.is_file(),
        "{} missing: cargo build --workspace --bins",
        bin.display()
    );
    bin
}

struct Cli {
    master: String,
    /// An empty config folder, so no user config file is read.
    config: tempfile::TempDir,
}

/// One run of the CLI: exit code, stdout, stderr.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!("stdout is not JSON ({e}): {}\n{}", self.stdout, self.stderr)
        })
    }

    fn ok(self) -> Run {
        assert_eq!(
            self.code, 0,
            "stdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }
}

impl Cli {
    fn new(master: String) -> Cli {
        Cli {
            master,
            config: tempfile::tempdir().expect("temp dir"),
        }
    }

    fn run(&self, args: &[&str]) -> Run {
        self.run_at(&self.master, args)
    }

    fn run_at(&self, master: &str, args: &[&str]) -> Run {
        self.run_env(master, &[], args)
    }

    fn run_env(&self, master: &str, env: &[(&str, &str)], args: &[&str]) -> Run {
        let out: Output = Command::new(berth_bin())
            .args(args)
            .envs(env.iter().copied())
            .current_dir(self.config.path())
            .env("BERTH_MASTER", master)
            .env("BERTH_TOKEN", API_TOKEN)
            .env("XDG_CONFIG_HOME", self.config.path())
            .env("BERTH_HOME", "")
            .env("NO_COLOR", "1")
            .output()
            .expect("berth runs");
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// A copy of the sample app in a temp dir, its greeting replaced.
fn sample_copy(greeting: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let status = Command::new("cp")
        .arg("-a")
        .arg(repo_root().join("scripts/sample-app/."))
        .arg(dir.path())
        .status()
        .expect("cp runs");
    assert!(status.success());
    let compose = dir.path().join("compose.yaml");
    let text = std::fs::read_to_string(&compose).expect("compose.yaml");
    std::fs::write(&compose, text.replace("hello from berth", greeting)).expect("write compose");
    dir
}

async fn page(c: &Cluster, id: &str, needle: &str) {
    let page = eventually(
        &format!("{id} saying {needle:?} through the front door"),
        Duration::from_secs(60),
        || async {
            c.app_through_front_door(id, "/cgi-bin/index.cgi")
                .await
                .filter(|p| p.contains(needle))
        },
    )
    .await;
    assert!(page.contains(needle), "{page}");
}

/// No record of `id`. A client of its own: the harness's pooled connection may have been closed
/// by nginx while the CLI ran.
async fn assert_absent(c: &Cluster, id: &str) {
    let resp = reqwest::Client::new()
        .get(format!("{}/v1/instances/{id}", c.api()))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .expect("front door answers");
    assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{id}");
}

#[tokio::test]
async fn cluster_docker_cli_deploys_and_manages_the_sample_app() {
    let c = Cluster::start(Options {
        workers: 1,
        ..Options::default()
    })
    .await;
    let cli = Cli::new(c.api());
    let id = "clisample";

    // Usage errors and an unreachable master have their own exit codes.
    assert_eq!(cli.run(&["no-such-command"]).code, 2);
    let down = cli.run_at("http://127.0.0.1:9", &["ps"]);
    assert_eq!(down.code, 3, "{}", down.stderr);
    assert!(down.stderr.contains("did not answer"), "{}", down.stderr);
    let help = cli.run(&["--help"]).ok();
    assert!(help.stdout.contains("Exit codes:"), "{}", help.stdout);

    // Bad folders are refused before anything is sent: exit 1, a clear message, no instance.
    let bad = tempfile::tempdir().expect("temp dir");
    std::fs::write(bad.path().join("Dockerfile"), "FROM berth-base:latest\n").expect("write");
    let dir = bad.path().to_str().expect("utf-8 path");
    let refused = cli.run(&["deploy", dir, "--id", "bad"]);
    assert_eq!(refused.code, 1, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("no compose file at the root"),
        "{}",
        refused.stderr
    );
    assert!(
        refused.stderr.contains("nothing was sent"),
        "{}",
        refused.stderr
    );
    std::fs::write(bad.path().join("compose.yaml"), "services: {}\n").expect("write");
    std::os::unix::fs::symlink("/etc/passwd", bad.path().join("passwd")).expect("symlink");
    let refused = cli.run(&["--json", "deploy", dir, "--id", "bad"]);
    assert_eq!(refused.code, 1, "{}", refused.stderr);
    assert!(refused.stderr.contains("\"passwd\""), "{}", refused.stderr);
    assert!(
        refused.stderr.contains("leaves the folder"),
        "{}",
        refused.stderr
    );
    assert_eq!(refused.json()["exit_code"], 1);
    assert_eq!(refused.json()["error"]["code"], "invalid_upload");
    assert_absent(&c, "bad").await;

    // Deploy: upload, build, start; the JSON names the record and the URLs.
    let app = repo_root().join("scripts/sample-app");
    let app = app.to_str().expect("utf-8 path");
    let deployed = cli
        .run(&[
            "--json",
            "deploy",
            app,
            "--id",
            id,
            "--user",
            "tester",
            "--project",
            "sample",
        ])
        .ok();
    let doc = deployed.json();
    assert_eq!(doc["instance"]["state"], "running", "{doc}");
    assert_eq!(doc["instance"]["user"], "tester", "{doc}");
    let urls = doc["urls"].as_array().expect("urls");
    let web = urls
        .iter()
        .find(|u| u["service"] == "web")
        .expect("a URL for web");
    assert!(
        web["url"]
            .as_str()
            .is_some_and(|u| u.starts_with("http://")),
        "{doc}"
    );
    let first_commit = doc["instance"]["commit"].clone();
    page(&c, id, "api says: hello from berth").await;

    // ps, status, open: text and JSON.
    let ps = cli.run(&["ps"]).ok();
    assert!(
        ps.stdout
            .lines()
            .any(|l| l.starts_with(id) && l.contains("running")),
        "{}",
        ps.stdout
    );
    let list = cli.run(&["ps", "--json"]).ok().json();
    let mine = list
        .as_array()
        .expect("a list")
        .iter()
        .find(|r| r["id"] == id)
        .expect("listed");
    assert_eq!(mine["state"], "running");
    let status = cli.run(&["status", id]).ok();
    assert!(status.stdout.contains("running"), "{}", status.stdout);
    assert!(status.stdout.contains("endpoint"), "{}", status.stdout);
    assert_eq!(
        cli.run(&["status", id, "--json"]).ok().json()["state"],
        "running"
    );
    let open = cli.run(&["open", id, "--service", "web"]).ok();
    assert_eq!(open.stdout.trim(), web["url"].as_str().unwrap_or_default());
    let open = cli.run(&["open", id, "--json"]).ok().json();
    assert_eq!(open["id"], id);
    // --browser hands the URL to $BROWSER (here `echo`, which prints it); a browser that fails
    // is a usage error.
    let opened = cli
        .run_env(&c.api(), &[("BROWSER", "echo")], &["open", id, "--browser"])
        .ok();
    assert_eq!(
        opened.stdout.trim(),
        web["url"].as_str().unwrap_or_default()
    );
    let failed = cli.run_env(
        &c.api(),
        &[("BROWSER", "false")],
        &["open", id, "--browser"],
    );
    assert_eq!(failed.code, 2, "{failed:?}");

    // workers.
    let workers = cli.run(&["workers", "--json"]).ok().json();
    assert_eq!(workers.as_array().map(Vec::len), Some(1), "{workers}");
    assert!(cli.run(&["workers"]).ok().stdout.contains("healthy"));

    // logs: the build and start output, as text and as JSON lines.
    let logs = cli.run(&["logs", id]).ok();
    assert!(logs.stdout.contains("building service"), "{}", logs.stdout);
    let lines = cli.run(&["logs", id, "--json"]).ok();
    for line in lines.stdout.lines() {
        let v: Value = serde_json::from_str(line).expect("a JSON line");
        assert_eq!(v["id"], id);
        assert!(v["line"].is_string());
    }
    assert!(
        cli.run(&["logs", id, "--ops"])
            .ok()
            .stdout
            .contains("stack ready")
    );
    // The app's own output: web's CGI logs each request it answered, prefixed with
    // its service; `--ops` carries none of it.
    let app = cli.run(&["logs", id, "--service", "web"]).ok();
    assert!(
        app.stdout.contains("web") && app.stdout.contains("asked for /cgi-bin/index.cgi"),
        "{app:?}\nall: {:?}",
        cli.run(&["logs", id, "--source", "all"])
    );
    assert!(!app.stdout.contains("building service"), "{}", app.stdout);
    let ops = cli.run(&["logs", id, "--source", "ops"]).ok();
    assert!(!ops.stdout.contains("asked for"), "{}", ops.stdout);
    let tailed = cli
        .run(&["logs", id, "--source", "app", "--tail", "1"])
        .ok();
    assert!(tailed.stdout.lines().count() <= 2, "{}", tailed.stdout);

    // stop, start.
    let stopped = cli.run(&["stop", id, "--json"]).ok().json();
    assert_eq!(stopped["state"], "stopped");
    assert!(cli.run(&["status", id]).ok().stdout.contains("stopped"));
    let started = cli.run(&["start", id]).ok();
    assert!(started.stdout.contains("running"), "{}", started.stdout);
    assert!(started.stdout.contains("http://"), "{}", started.stdout);
    page(&c, id, "api says: hello from berth").await;

    // Deploying a changed folder to the same id deploys the change (user and project kept).
    // Off a terminal the build shows one plain line as each service's build starts and one as
    // it ends: only api's build argument changed, so web's image is kept.
    let changed = sample_copy("hello again from berth");
    let changed_dir = changed.path().to_str().expect("utf-8 path");
    let again = cli.run(&["deploy", changed_dir, "--id", id]).ok();
    let progress: Vec<&str> = again.stderr.lines().collect();
    let at = |prefix: &str| {
        progress
            .iter()
            .position(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line {prefix:?} in:\n{}", again.stderr))
    };
    assert!(at("building api") < at("built api in "), "{}", again.stderr);
    at("kept web (unchanged, nothing built)");
    assert!(
        !progress.iter().any(|l| l.starts_with("building web")),
        "{}",
        again.stderr
    );
    assert!(
        again.stdout.contains(&format!("{id} is running")),
        "{again:?}"
    );
    let again = cli.run(&["status", id, "--json"]).ok().json();
    assert_eq!(again["state"], "running", "{again}");
    assert_eq!(again["user"], "tester", "{again}");
    assert_ne!(again["commit"], first_commit, "{again}");
    page(&c, id, "api says: hello again from berth").await;

    // releases: both uploads, the new one running, and each says when it was built because
    // the worker keeps both releases' images.
    let releases = cli.run(&["releases", id, "--json"]).ok().json();
    let list = releases.as_array().expect("a list");
    assert_eq!(list.len(), 2, "{releases}");
    assert_eq!(list[0]["current"], true, "{releases}");
    assert_eq!(list[1]["commit"], first_commit, "{releases}");
    for r in list {
        assert_eq!(r["images_kept"], true, "{releases}");
        assert!(r["built_at"].is_string(), "{releases}");
    }
    let table = cli.run(&["releases", id]).ok().stdout;
    assert!(
        table.contains("running") && table.contains("built"),
        "{table}"
    );

    // rm, then the instance is gone: status answers 404, exit 1.
    let removed = cli.run(&["rm", id, "--json"]).ok().json();
    assert_eq!(removed["deleted"], true, "{removed}");
    assert_absent(&c, id).await;
    let gone = cli.run(&["status", id, "--json"]);
    assert_eq!(gone.code, 1, "{}", gone.stderr);
    assert_eq!(gone.json()["error"]["code"], "not_found");
    assert!(c.stack_objects().is_empty(), "{:?}", c.stack_objects());
}
