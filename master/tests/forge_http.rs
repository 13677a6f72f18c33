//! Forge mode with a read-only token (`--git-remote-read-token`) against a forge stand-in: stock
//! `git http-backend` behind a small HTTP server with basic auth, where the push token may push
//! and the read token may only fetch. The master pushes with the push token, the worker clones
//! with the read token, and the push token is in nothing the worker receives.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use berth_worker_api::Secret;
use common::*;

const PUSH: (&str, &str) = ("pusher", "push-token-7f3a");
const READ: (&str, &str) = ("reader", "read-token-91c2");

struct Forge {
    root: PathBuf,
    /// `user service` per git request: which credential did what.
    log: Mutex<Vec<String>>,
}

fn basic_user(headers: &HeaderMap) -> Option<&'static str> {
    let value = headers.get("authorization")?.to_str().ok()?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(value.strip_prefix("Basic ")?)
        .ok()?;
    [PUSH, READ]
        .into_iter()
        .find(|(u, p)| decoded == format!("{u}:{p}").as_bytes())
        .map(|(u, _)| u)
}

/// Runs `git http-backend` as CGI for one request, after the forge's own access check: no
/// credential is 401, the read credential asking for `git-receive-pack` is 403.
async fn serve_git(State(forge): State<Arc<Forge>>, req: Request) -> Response {
    let query = req.uri().query().unwrap_or("").to_owned();
    let path = req.uri().path().to_owned();
    let service = if path.ends_with("/git-receive-pack") || query.contains("git-receive-pack") {
        "receive-pack"
    } else {
        "upload-pack"
    };
    let Some(user) = basic_user(req.headers()) else {
        return (
            StatusCode::UNAUTHORIZED,
            [("www-authenticate", "Basic realm=\"forge\"")],
            "",
        )
            .into_response();
    };
    forge.log.lock().unwrap().push(format!("{user} {service}"));
    if user == READ.0 && service == "receive-pack" {
        return (StatusCode::FORBIDDEN, "read-only token").into_response();
    }
    let method = req.method().to_string();
    let content_type = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = axum::body::to_bytes(req.into_body(), 64 << 20)
        .await
        .unwrap();
    let root = forge.root.clone();
    let out = tokio::task::spawn_blocking(move || {
        let mut child = Command::new("git")
            .arg("http-backend")
            .env("GIT_PROJECT_ROOT", root)
            .env("GIT_HTTP_EXPORT_ALL", "1")
            .env("REMOTE_USER", user)
            .env("REQUEST_METHOD", method)
            .env("PATH_INFO", path)
            .env("QUERY_STRING", query)
            .env("CONTENT_TYPE", content_type)
            .env("CONTENT_LENGTH", body.len().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(&body).unwrap();
        child.wait_with_output().unwrap().stdout
    })
    .await
    .unwrap();
    // CGI output: header lines, a blank line, the body.
    let (head, body) = match out.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(i) => (&out[..i], &out[i + 4..]),
        None => match out.windows(2).position(|w| w == b"\n\n") {
            Some(i) => (&out[..i], &out[i + 2..]),
            None => (&out[..0], &out[..]),
        },
    };
    let mut status = StatusCode::OK;
    let mut headers = HeaderMap::new();
    for line in String::from_utf8_lossy(head).lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            status = value
                .split(' ')
                .next()
                .and_then(|c| c.parse().ok())
                .unwrap_or(StatusCode::OK);
        } else if let (Ok(name), Ok(value)) =
            (name.parse::<axum::http::HeaderName>(), value.parse())
        {
            headers.insert(name, value);
        }
    }
    (status, headers, Bytes::copy_from_slice(body)).into_response()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forge_mode_workers_clone_with_the_read_token_and_never_get_the_push_token() {
    let root = tempfile::tempdir().unwrap();
    git(root.path(), &["init", "-q", "--bare", "alice/shop.git"]).await;
    let forge = Arc::new(Forge {
        root: root.path().to_path_buf(),
        log: Mutex::new(Vec::new()),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let forge_addr = listener.local_addr().unwrap();
    let forge_app = axum::Router::new()
        .fallback(serve_git)
        .with_state(forge.clone());
    tokio::spawn(async move { axum::serve(listener, forge_app).await.unwrap() });

    let reg = registry().await;
    let worker = stand_in(&reg, "w1").await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&reg, dir.path());
    cfg.git_remote_template = Some(format!("http://{forge_addr}/{{user}}/{{id}}.git"));
    cfg.git_remote_username = PUSH.0.into();
    cfg.git_remote_token = Some(Secret::new(PUSH.1));
    cfg.git_remote_read_username = Some(READ.0.into());
    cfg.git_remote_read_token = Some(Secret::new(READ.1));
    let m = master(cfg).await;

    let (status, rec) = m.upload("shop", "alice", "&wait=30s", app("v1")).await;
    assert_eq!(
        (status, rec["state"].as_str()),
        (200, Some("built")),
        "{rec}"
    );
    let commit = rec["commit"].as_str().unwrap().to_owned();
    let bare = root.path().join("alice/shop.git");
    assert_eq!(
        git(&bare, &["rev-parse", "refs/heads/main"]).await.trim(),
        commit,
        "the master pushed to the forge"
    );
    // The worker cloned that commit from the forge.
    assert_eq!(worker.state.cloned.lock().unwrap()[0].0, commit);
    let (status, _) = m
        .call(reqwest::Method::POST, "/v1/instances/shop/start")
        .await;
    assert_eq!(status, 200);

    // Who did what at the forge: pushes with the push token, every fetch with the read token.
    let log = forge.log.lock().unwrap().clone();
    assert!(log.contains(&format!("{} receive-pack", PUSH.0)), "{log:?}");
    assert!(log.contains(&format!("{} upload-pack", READ.0)), "{log:?}");
    assert!(
        !log.contains(&format!("{} upload-pack", PUSH.0)),
        "something fetched with the push token: {log:?}"
    );

    // Nothing the worker received holds the push token (URL, headers, bodies of every call).
    let received = worker.state.received.lock().unwrap().clone();
    assert!(received.iter().any(|r| r.contains(READ.1)), "{received:?}");
    for r in &received {
        assert!(
            !r.contains(PUSH.1),
            "the push token reached the worker: {r}"
        );
    }

    // And what the worker holds cannot push: the forge refuses the read token for a push.
    let work = tempfile::tempdir().unwrap();
    let read_url = format!("http://{}:{}@{forge_addr}/alice/shop.git", READ.0, READ.1);
    git(work.path(), &["clone", "-q", &read_url, "co"]).await;
    let co = work.path().join("co");
    git(
        &co,
        &[
            "-c",
            "user.email=w@example.org",
            "-c",
            "user.name=w",
            "commit",
            "-q",
            "--allow-empty",
            "-m",
            "x",
        ],
    )
    .await;
    let push = Command::new("git")
        .env("GIT_TERMINAL_PROMPT", "0")
        .args(["push", "-q", "origin", "HEAD:main"])
        .current_dir(&co)
        .output()
        .unwrap();
    assert!(!push.status.success(), "the read token pushed");
    assert_eq!(
        git(&bare, &["rev-parse", "refs/heads/main"]).await.trim(),
        commit
    );
    m.stop().await;
}
