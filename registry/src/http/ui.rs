//! Web UI for admins: static files from `registry/ui/`, embedded in the binary, served at `/ui/`.
//!
//! The pages are plain ES modules that use only the Consul HTTP API (`/v1/...`), so no build
//! step is needed and the same files work against any Consul-compatible server.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

/// One embedded file.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

macro_rules! asset {
    ($name:literal, $content_type:literal) => {
        Asset {
            name: $name,
            content_type: $content_type,
            body: include_bytes!(concat!("../../ui/", $name)),
        }
    };
}

/// Every file of the UI. A file missing here is a 404 in the browser; the tests check that
/// every module and stylesheet the pages reference is listed.
const ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("style.css", "text/css; charset=utf-8"),
    asset!("app.js", "text/javascript; charset=utf-8"),
    asset!("api.js", "text/javascript; charset=utf-8"),
    asset!("dom.js", "text/javascript; charset=utf-8"),
    asset!("kv.js", "text/javascript; charset=utf-8"),
    asset!("catalog.js", "text/javascript; charset=utf-8"),
    asset!("acl.js", "text/javascript; charset=utf-8"),
    asset!("records.js", "text/javascript; charset=utf-8"),
    asset!("instances.js", "text/javascript; charset=utf-8"),
];

/// Only same-origin scripts, styles and requests; the KV data the pages show is inserted as text.
const CSP: &str = "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; \
                   form-action 'self'; frame-ancestors 'none'";

/// Routes of the UI: `/` and `/ui` redirect to `/ui/`, `/ui/` is the app, `/ui/<file>` its files.
/// Generic over the router state so it merges into any router.
pub(crate) fn routes<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    Router::new()
        .route("/", get(|| async { Redirect::temporary("/ui/") }))
        .route("/ui", get(|| async { Redirect::temporary("/ui/") }))
        .route("/ui/", get(|| async { serve("index.html") }))
        .route(
            "/ui/{*file}",
            get(|Path(file): Path<String>| async move { serve(&file) }),
        )
}

fn serve(name: &str) -> Response {
    let Some(asset) = ASSETS.iter().find(|a| a.name == name) else {
        return (StatusCode::NOT_FOUND, "no such UI file").into_response();
    };
    let mut response = asset.body.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    // The files change with the binary; revalidating costs little on an admin page.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::{Body, to_bytes};
    use axum::http::Request;
    use tower::ServiceExt;

    async fn get(path: &str) -> Response {
        routes::<()>()
            .oneshot(Request::get(path).body(Body::empty()).expect("request"))
            .await
            .expect("infallible")
    }

    fn header(response: &Response, name: header::HeaderName) -> &str {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().expect("ascii header"))
            .unwrap_or("")
    }

    #[tokio::test]
    async fn files_are_served_with_their_content_type() {
        let cases = [
            ("/ui/", "text/html; charset=utf-8", "<!doctype html>"),
            (
                "/ui/index.html",
                "text/html; charset=utf-8",
                "<!doctype html>",
            ),
            ("/ui/style.css", "text/css; charset=utf-8", "/* style.css"),
            ("/ui/app.js", "text/javascript; charset=utf-8", "// app.js"),
            ("/ui/kv.js", "text/javascript; charset=utf-8", "// kv.js"),
        ];
        for (path, content_type, starts) in cases {
            let response = get(path).await;
            assert_eq!(response.status(), StatusCode::OK, "{path}");
            assert_eq!(
                header(&response, header::CONTENT_TYPE),
                content_type,
                "{path}"
            );
            assert_eq!(header(&response, header::X_CONTENT_TYPE_OPTIONS), "nosniff");
            let body = to_bytes(response.into_body(), usize::MAX)
                .await
                .expect("body");
            assert!(body.starts_with(starts.as_bytes()), "{path}");
        }
    }

    #[tokio::test]
    async fn root_and_bare_ui_redirect_to_the_app() {
        for path in ["/", "/ui"] {
            let response = get(path).await;
            assert_eq!(response.status(), StatusCode::TEMPORARY_REDIRECT, "{path}");
            assert_eq!(header(&response, header::LOCATION), "/ui/", "{path}");
        }
    }

    #[tokio::test]
    async fn unknown_files_are_not_found() {
        for path in [
            "/ui/nope.js",
            "/ui/../Cargo.toml",
            "/ui/sub/app.js",
            "/ui/%2e%2e/lib.rs",
        ] {
            assert_eq!(get(path).await.status(), StatusCode::NOT_FOUND, "{path}");
        }
    }

    /// Every `./x.js` import and every local `href`/`src` in the embedded files must be embedded
    /// too, or the browser would get a 404 for it.
    #[test]
    fn every_referenced_file_is_embedded() {
        let mut referenced = Vec::new();
        for asset in ASSETS {
            let text = std::str::from_utf8(asset.body).expect("utf-8 asset");
            for marker in ["from './", "href=\"", "src=\""] {
                for piece in text.split(marker).skip(1) {
                    let end = piece.find(['\'', '"']).expect("closing quote");
                    let target = piece[..end].trim_start_matches("./");
                    let local = !target.is_empty()
                        && !target.starts_with('#')
                        && !target.contains(':')
                        && !target.starts_with('/');
                    if local {
                        referenced.push(target.to_owned());
                    }
                }
            }
        }
        assert!(referenced.iter().any(|r| r == "app.js"), "{referenced:?}");
        assert!(
            referenced.iter().any(|r| r == "catalog.js"),
            "{referenced:?}"
        );
        for target in referenced {
            assert!(
                ASSETS.iter().any(|a| a.name == target),
                "{target} is referenced but not embedded"
            );
        }
    }

    #[test]
    fn every_file_in_the_ui_folder_is_embedded() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/ui");
        for entry in std::fs::read_dir(dir).expect("ui folder") {
            let name = entry.expect("entry").file_name();
            let name = name.to_str().expect("utf-8 name");
            assert!(
                ASSETS.iter().any(|a| a.name == name),
                "{name} is in registry/ui but not embedded"
            );
        }
    }
}
