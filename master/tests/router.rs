//! Router tests: every route, status and validation rule, driven through `oneshot` on the real
//! router backed by an in-process registry.

mod common;

use axum::body::Body;
use axum::http::{Request, header};
use berth_master::api::router;
use common::*;
use http_body_util::BodyExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

struct Case {
    name: &'static str,
    method: &'static str,
    path: &'static str,
    token: Option<&'static str>,
    body: Vec<u8>,
    status: u16,
    /// Expected `error.code` (or None for a success body).
    code: Option<&'static str>,
    /// Text the message must hold.
    says: &'static str,
}

fn case(
    name: &'static str,
    method: &'static str,
    path: &'static str,
    status: u16,
    code: Option<&'static str>,
    says: &'static str,
) -> Case {
    Case {
        name,
        method,
        path,
        token: Some(API),
        body: Vec::new(),
        status,
        code,
        says,
    }
}

async fn send(
    app: &axum::Router,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Vec<u8>,
) -> (u16, Vec<u8>, axum::http::HeaderMap) {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let resp = app
        .clone()
        .oneshot(req.body(Body::from(body)).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    (status, bytes, headers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_statuses_and_validation() {
    let reg = registry().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&reg, dir.path());
    cfg.limits.max_compressed_bytes = 64 * 1024;
    let master = berth_master::build_master(
        cfg,
        "http://127.0.0.1:1".into(),
        TaskTracker::new(),
        CancellationToken::new(),
    )
    .unwrap();
    let app = router(master);

    // One uploaded (not built) instance for state rules.
    let (status, body, _) = send(
        &app,
        "PUT",
        "/v1/instances/known/code?user=alice&project=p&build=false",
        Some(API),
        app_tar(),
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));

    let big = vec![0u8; 64 * 1024 + 1];
    let mut cases = vec![
        case("healthz without token", "GET", "/healthz", 200, None, "ok"),
        case(
            "metrics",
            "GET",
            "/metrics",
            200,
            None,
            "berth_master_operations",
        ),
        case(
            "openapi",
            "GET",
            "/openapi.json",
            200,
            None,
            "/v1/instances/{id}/code",
        ),
        case(
            "unknown route",
            "GET",
            "/v1/nope",
            404,
            Some("not_found"),
            "no such route",
        ),
        case(
            "wrong method",
            "PATCH",
            "/v1/instances/known",
            405,
            Some("method_not_allowed"),
            "method",
        ),
        case(
            "get known",
            "GET",
            "/v1/instances/known",
            200,
            None,
            "\"state\":\"uploaded\"",
        ),
        case(
            "get unknown",
            "GET",
            "/v1/instances/ghost",
            404,
            Some("not_found"),
            "ghost",
        ),
        case(
            "get invalid id",
            "GET",
            "/v1/instances/Bad.Id",
            400,
            Some("bad_request"),
            "invalid id",
        ),
        case(
            "id too long",
            "GET",
            "/v1/instances/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            400,
            Some("bad_request"),
            "1 to 63 characters",
        ),
        case("list", "GET", "/v1/instances", 200, None, "known"),
        case(
            "list by user",
            "GET",
            "/v1/instances?user=alice&state=uploaded",
            200,
            None,
            "known",
        ),
        case(
            "list bad user",
            "GET",
            "/v1/instances?user=A",
            400,
            Some("bad_request"),
            "invalid user",
        ),
        case(
            "list bad state",
            "GET",
            "/v1/instances?state=sleeping",
            400,
            Some("bad_request"),
            "invalid state",
        ),
        case("workers", "GET", "/v1/workers", 200, None, "[]"),
        case(
            "upload no user",
            "PUT",
            "/v1/instances/x/code?project=p",
            400,
            Some("bad_request"),
            "user",
        ),
        case(
            "upload no project",
            "PUT",
            "/v1/instances/x/code?user=u",
            400,
            Some("bad_request"),
            "project",
        ),
        case(
            "upload bad user",
            "PUT",
            "/v1/instances/x/code?user=../etc&project=p",
            400,
            Some("bad_request"),
            "invalid user",
        ),
        case(
            "upload bad project",
            "PUT",
            "/v1/instances/x/code?user=u&project=P",
            400,
            Some("bad_request"),
            "invalid project",
        ),
        case(
            "upload bad id",
            "PUT",
            "/v1/instances/-x/code?user=u&project=p",
            400,
            Some("bad_request"),
            "invalid id",
        ),
        case(
            "upload bad build flag",
            "PUT",
            "/v1/instances/x/code?user=u&project=p&build=maybe",
            400,
            Some("bad_request"),
            "build",
        ),
        case(
            "upload bad wait",
            "PUT",
            "/v1/instances/x/code?user=u&project=p&wait=soon",
            400,
            Some("bad_request"),
            "invalid wait",
        ),
        case(
            "upload not gzip",
            "PUT",
            "/v1/instances/x/code?user=u&project=p",
            400,
            Some("invalid_upload"),
            "tar.gz",
        ),
        case(
            "upload of another user's id",
            "PUT",
            "/v1/instances/known/code?user=bob&project=p",
            409,
            Some("conflict"),
            "belongs to user alice",
        ),
        case(
            "build unknown",
            "POST",
            "/v1/instances/ghost/build",
            404,
            Some("not_found"),
            "ghost",
        ),
        case(
            "build bad json",
            "POST",
            "/v1/instances/known/build",
            400,
            Some("bad_request"),
            "invalid JSON",
        ),
        case(
            "build unknown field",
            "POST",
            "/v1/instances/known/build",
            400,
            Some("bad_request"),
            "unknown field",
        ),
        case(
            "build unknown commit",
            "POST",
            "/v1/instances/known/build",
            400,
            Some("bad_request"),
            "commit",
        ),
        case(
            "build wait too long",
            "POST",
            "/v1/instances/known/build?wait=2h",
            400,
            Some("bad_request"),
            "at most 1h",
        ),
        case(
            "build without workers",
            "POST",
            "/v1/instances/known/build",
            503,
            Some("no_healthy_worker"),
            "no healthy",
        ),
        case(
            "start unknown",
            "POST",
            "/v1/instances/ghost/start",
            404,
            Some("not_found"),
            "ghost",
        ),
        case(
            "start uploaded",
            "POST",
            "/v1/instances/known/start",
            409,
            Some("conflict"),
            "start is allowed in built, stopped, running, degraded, failed",
        ),
        case(
            "stop unknown",
            "POST",
            "/v1/instances/ghost/stop",
            404,
            Some("not_found"),
            "ghost",
        ),
        case(
            "stop uploaded",
            "POST",
            "/v1/instances/known/stop",
            409,
            Some("conflict"),
            "stop is allowed in running, degraded, stopped, failed",
        ),
        case(
            "logs unplaced",
            "GET",
            "/v1/instances/known/logs",
            409,
            Some("conflict"),
            "not placed",
        ),
        case(
            "logs unknown",
            "GET",
            "/v1/instances/ghost/logs",
            404,
            Some("not_found"),
            "ghost",
        ),
        case(
            "logs bad follow",
            "GET",
            "/v1/instances/known/logs?follow=yes",
            400,
            Some("bad_request"),
            "follow",
        ),
        case(
            "delete unknown",
            "DELETE",
            "/v1/instances/ghost",
            404,
            Some("not_found"),
            "ghost",
        ),
        case(
            "delete bad keep_code",
            "DELETE",
            "/v1/instances/known?keep_code=2",
            400,
            Some("bad_request"),
            "keep_code",
        ),
        case(
            "upload over the compressed cap",
            "PUT",
            "/v1/instances/x/code?user=u&project=p",
            413,
            Some("too_large"),
            "compressed size",
        ),
        case(
            "json body over the limit",
            "POST",
            "/v1/instances/known/build",
            413,
            Some("too_large"),
            "exceeds",
        ),
        case(
            "git without auth",
            "GET",
            "/git/alice/known.git/info/refs?service=git-upload-pack",
            401,
            Some("unauthorized"),
            "token",
        ),
        case(
            "delete known keeping code",
            "DELETE",
            "/v1/instances/known?keep_code=true",
            200,
            None,
            "\"code_kept\":true",
        ),
    ];
    for c in cases.iter_mut() {
        match c.name {
            "upload not gzip" => c.body = b"plain text".to_vec(),
            "build bad json" => c.body = b"{not json".to_vec(),
            "build unknown field" => c.body = br#"{"comit":"x"}"#.to_vec(),
            "build unknown commit" => {
                c.body = br#"{"commit":"0123456789012345678901234567890123456789"}"#.to_vec()
            }
            "upload over the compressed cap" => c.body = big.clone(),
            "json body over the limit" => c.body = vec![b' '; 2 * 1024 * 1024],
            "upload of another user's id" => c.body = app_tar(),
            "git without auth" => c.token = None,
            _ => {}
        }
    }
    // Every /v1 route refuses a missing or wrong token.
    for (method, path) in [
        ("GET", "/v1/instances"),
        ("GET", "/v1/instances/known"),
        ("DELETE", "/v1/instances/known"),
        ("PUT", "/v1/instances/known/code?user=alice&project=p"),
        ("POST", "/v1/instances/known/build"),
        ("POST", "/v1/instances/known/start"),
        ("POST", "/v1/instances/known/stop"),
        ("GET", "/v1/instances/known/logs"),
        ("GET", "/v1/workers"),
    ] {
        for token in [None, Some("wrong")] {
            let (status, body, headers) = send(&app, method, path, token, Vec::new()).await;
            assert_eq!(status, 401, "{method} {path} {token:?}");
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["error"]["code"], "unauthorized");
            assert_eq!(headers[header::WWW_AUTHENTICATE], "Bearer realm=\"berth\"");
        }
    }
    for c in cases {
        let (status, body, _) = send(&app, c.method, c.path, c.token, c.body).await;
        let text = String::from_utf8_lossy(&body).into_owned();
        assert_eq!(status, c.status, "{}: {text}", c.name);
        assert!(text.contains(c.says), "{}: {text}", c.name);
        if let Some(code) = c.code {
            let v: serde_json::Value = serde_json::from_slice(&body)
                .unwrap_or_else(|_| panic!("{}: not JSON: {text}", c.name));
            assert_eq!(v["error"]["code"], code, "{}: {text}", c.name);
            assert!(v["error"]["message"].is_string(), "{}", c.name);
        }
    }
    // keep_code kept the repository but dropped the record.
    assert!(dir.path().join("git/alice/known.git").exists());
    let (status, _, _) = send(&app, "GET", "/v1/instances/known", Some(API), Vec::new()).await;
    assert_eq!(status, 404);
}

fn app_tar() -> Vec<u8> {
    app("router")
}

#[tokio::test]
async fn openapi_lists_every_route() {
    let reg = registry().await;
    let dir = tempfile::tempdir().unwrap();
    let master = berth_master::build_master(
        config(&reg, dir.path()),
        "http://127.0.0.1:1".into(),
        TaskTracker::new(),
        CancellationToken::new(),
    )
    .unwrap();
    let (status, body, _) = send(&router(master), "GET", "/openapi.json", None, Vec::new()).await;
    assert_eq!(status, 200);
    let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let paths = doc["paths"].as_object().unwrap();
    for (path, method) in [
        ("/v1/instances/{id}/code", "put"),
        ("/v1/instances/{id}/build", "post"),
        ("/v1/instances/{id}/start", "post"),
        ("/v1/instances/{id}/stop", "post"),
        ("/v1/instances/{id}", "delete"),
        ("/v1/instances/{id}", "get"),
        ("/v1/instances", "get"),
        ("/v1/instances/{id}/logs", "get"),
        ("/v1/instances/{id}/releases", "get"),
        ("/v1/instances/{id}/rollback", "post"),
        ("/v1/workers", "get"),
        ("/healthz", "get"),
        ("/metrics", "get"),
        ("/openapi.json", "get"),
    ] {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path}"
        );
    }
    assert!(doc["components"]["schemas"]["InstanceRecord"].is_object());
    assert!(doc["components"]["schemas"]["Release"].is_object());
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
}

/// A request with a raw `Authorization` header.
async fn send_auth(app: &axum::Router, method: &str, path: &str, auth: &str) -> (u16, String) {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header(header::AUTHORIZATION, auth)
        .body(Body::empty())
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

fn basic(scheme: &str) -> String {
    use base64::Engine;
    let pair = base64::engine::general_purpose::STANDARD.encode(format!("x:{GIT}"));
    format!("{scheme} {pair}")
}

async fn bare_app() -> (axum::Router, Registry, tempfile::TempDir) {
    let reg = registry().await;
    let dir = tempfile::tempdir().unwrap();
    let master = berth_master::build_master(
        config(&reg, dir.path()),
        "http://127.0.0.1:1".into(),
        TaskTracker::new(),
        CancellationToken::new(),
    )
    .unwrap();
    (router(master), reg, dir)
}

#[tokio::test]
async fn auth_schemes_are_case_insensitive() {
    let (app, _reg, _dir) = bare_app().await;
    // RFC 7235: the scheme is case-insensitive; the token still has to match.
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let (status, body) =
            send_auth(&app, "GET", "/v1/instances", &format!("{scheme} {API}")).await;
        assert_eq!(status, 200, "{scheme}: {body}");
    }
    let (status, _) = send_auth(&app, "GET", "/v1/instances", "bearer wrong").await;
    assert_eq!(status, 401);
    let (status, _) = send_auth(&app, "GET", "/v1/instances", &format!("Bearer{API}")).await;
    assert_eq!(status, 401);
    for scheme in ["Basic", "basic"] {
        let (status, body) = send_auth(
            &app,
            "GET",
            "/git/alice/none.git/info/refs?service=git-upload-pack",
            &basic(scheme),
        )
        .await;
        assert_eq!(status, 404, "{scheme}: {body}");
    }
}

#[tokio::test]
async fn path_errors_are_json_naming_the_field() {
    let (app, _reg, _dir) = bare_app().await;
    // A path segment that is not UTF-8 once decoded: the JSON error shape, naming the field.
    for (path, auth, field) in [
        ("/v1/instances/%ff/start", format!("Bearer {API}"), "id"),
        ("/v1/instances/%ff", format!("Bearer {API}"), "id"),
        (
            "/git/%ff/x.git/info/refs?service=git-upload-pack",
            basic("Basic"),
            "user",
        ),
    ] {
        let method = if path.ends_with("/start") {
            "POST"
        } else {
            "GET"
        };
        let (status, body) = send_auth(&app, method, path, &auth).await;
        assert_eq!(status, 400, "{path}: {body}");
        let v: serde_json::Value =
            serde_json::from_str(&body).unwrap_or_else(|_| panic!("{path}: not JSON: {body}"));
        assert_eq!(v["error"]["code"], "bad_request", "{path}");
        assert_eq!(v["error"]["details"][0]["field"], field, "{path}: {body}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(field),
            "{path}: {body}"
        );
    }
}
