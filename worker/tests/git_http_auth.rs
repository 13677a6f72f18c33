//! Fetching over git smart HTTP with basic auth, as from the master's code store: stock
//! `git http-backend` behind a small axum server that demands the token.

use std::process::{Command, Stdio};

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use berth_worker::source;
use berth_worker_api::{RepoSource, Secret};

async fn cgi(State(root): State<std::path::PathBuf>, req: Request) -> Response {
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("berth:s3cret")
    );
    let authorised = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == expected);
    if !authorised {
        return (
            StatusCode::UNAUTHORIZED,
            [("www-authenticate", "Basic realm=\"git\"")],
            "",
        )
            .into_response();
    }
    let method = req.method().to_string();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let content_type = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = axum::body::to_bytes(req.into_body(), 64 << 20)
        .await
        .unwrap();
    let output = tokio::task::spawn_blocking(move || {
        let mut child = Command::new("git")
            .arg("http-backend")
            .env("GIT_PROJECT_ROOT", &root)
            .env("GIT_HTTP_EXPORT_ALL", "1")
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
    let split = output
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4))
        .or_else(|| output.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2)));
    let (head, body) = match split {
        Some((i, n)) => (&output[..i], &output[i + n..]),
        None => (&output[..0], &output[..]),
    };
    let mut status = StatusCode::OK;
    let mut headers = HeaderMap::new();
    for line in String::from_utf8_lossy(head).lines() {
        if let Some((k, v)) = line.split_once(':') {
            let v = v.trim();
            if k.eq_ignore_ascii_case("status") {
                status = v
                    .split(' ')
                    .next()
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(StatusCode::OK);
            } else if let (Ok(name), Ok(value)) = (k.parse::<axum::http::HeaderName>(), v.parse()) {
                headers.insert(name, value);
            }
        }
    }
    (status, headers, Bytes::copy_from_slice(body)).into_response()
}

#[tokio::test]
async fn fetch_over_smart_http_with_basic_auth() {
    let root = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let git = |dir: &std::path::Path, args: &[&str]| {
        let out = Command::new("git")
            .args([
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@t",
                "-c",
                "init.defaultBranch=main",
            ])
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    git(work.path(), &["init", "-q"]);
    std::fs::write(work.path().join("compose.yaml"), "services: {}\n").unwrap();
    git(work.path(), &["add", "-A"]);
    git(work.path(), &["commit", "-qm", "one"]);
    let commit = git(work.path(), &["rev-parse", "HEAD"]);
    let bare = root.path().join("alice").join("shop.git");
    std::fs::create_dir_all(bare.parent().unwrap()).unwrap();
    git(
        root.path(),
        &[
            "clone",
            "-q",
            "--bare",
            &work.path().display().to_string(),
            &bare.display().to_string(),
        ],
    );

    let app = axum::Router::new()
        .fallback(cgi)
        .with_state(root.path().to_path_buf());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/alice/shop.git", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let dest = tempfile::tempdir().unwrap();
    let checkout = source::Checkout::in_stack(dest.path());
    let good = RepoSource {
        url: url.clone(),
        username: Some("berth".into()),
        password: Some(Secret::new("s3cret")),
    };
    let bad = RepoSource {
        password: Some(Secret::new("wrong")),
        ..good.clone()
    };
    let (c, b, co) = (commit.clone(), bad, checkout.clone());
    let err = tokio::task::spawn_blocking(move || co.fetch(&b, &c))
        .await
        .unwrap()
        .unwrap_err();
    assert!(err.to_string().contains("fetch failed"), "{err}");
    assert!(
        !err.to_string().contains("wrong"),
        "the password stays out of errors: {err}"
    );
    let (c, co) = (commit.clone(), checkout.clone());
    tokio::task::spawn_blocking(move || co.fetch(&good, &c).and_then(|()| co.checkout(&c)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(checkout.commit().as_deref(), Some(commit.as_str()));
    assert!(checkout.work_tree().join("compose.yaml").exists());
}
