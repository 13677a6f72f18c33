//! `/v1/kv/<key>`: get (single, raw, recurse, keys), put (flags, cas, acquire, release), delete.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

use crate::acl::{Need, Resource};
use crate::convert;
use crate::http::authz::Authz;
use crate::http::query::{Blocking, ConsulQuery};
use crate::http::{ApiError, AppState, MAX_VALUE_SIZE, Params, json, path_tail, read_body};
use crate::store::SetMode;
use crate::store::state::{KvEntry, Topic};

const PREFIX: &str = "/v1/kv/";

/// Consul's key rules: no path traversal and no surrounding spaces; any other unicode is fine.
pub(crate) fn validate_key(key: &str) -> Result<(), ApiError> {
    let traversal =
        key == ".." || key.starts_with("../") || key.contains("/../") || key.ends_with("/..");
    if traversal || key.trim() != key || key.contains('\0') {
        return Err(ApiError::BadRequest(format!("Invalid key name {key:?}")));
    }
    Ok(())
}

fn key_of(uri: &Uri) -> Result<String, ApiError> {
    let key = path_tail(uri, PREFIX)?;
    validate_key(&key)?;
    Ok(key)
}

enum Found {
    One(Option<KvEntry>),
    Many(Vec<KvEntry>),
    Keys(Vec<String>),
}

pub(crate) async fn get(
    State(app): State<Arc<AppState>>,
    authz: Authz,
    uri: Uri,
    query: ConsulQuery,
) -> Result<Blocking, ApiError> {
    let key = key_of(&uri)?;
    let params = &query.params;
    let keys = params.has("keys");
    let recurse = params.has("recurse");
    if key.is_empty() && !keys && !recurse {
        return Err(ApiError::BadRequest("Missing key name".to_owned()));
    }
    let separator = params
        .get("separator")
        .or_else(|| params.get("seperator"))
        .unwrap_or("")
        .to_owned();
    if !keys && !recurse {
        authz.require(Resource::Key, &key, Need::Read)?;
    }
    let ((found, dropped), index) = query
        .block(&app, Topic::Kv, |state| {
            let mut dropped = false;
            let mut visible = |k: &str, need: Need| {
                let ok = authz.allows(Resource::Key, k, need);
                dropped |= !ok;
                ok
            };
            let found = if keys {
                let mut names: Vec<String> = state
                    .kv_prefix(&key)
                    .filter(|e| visible(&e.key, Need::List))
                    .map(|e| cut_at_separator(&e.key, key.len(), &separator))
                    .collect();
                names.dedup();
                (Found::Keys(names), state.kv_prefix_index(&key))
            } else if recurse {
                (
                    Found::Many(
                        state
                            .kv_prefix(&key)
                            .filter(|e| visible(&e.key, Need::Read))
                            .cloned()
                            .collect(),
                    ),
                    state.kv_prefix_index(&key),
                )
            } else {
                (
                    Found::One(state.kv.get(&key).cloned()),
                    state.kv_key_index(&key),
                )
            };
            ((found.0, dropped), found.1)
        })
        .await;
    let not_found = || StatusCode::NOT_FOUND.into_response();
    let response = match found {
        Found::Keys(names) if names.is_empty() && !key.is_empty() => not_found(),
        Found::Keys(names) => json(&names),
        Found::Many(entries) if entries.is_empty() => not_found(),
        Found::Many(entries) => json(&entries.iter().map(convert::kv_entry).collect::<Vec<_>>()),
        Found::One(None) => not_found(),
        Found::One(Some(entry)) if params.has("raw") => raw(entry),
        Found::One(Some(entry)) => json(&[convert::kv_entry(&entry)]),
    };
    Ok(Blocking::new(response, index).filtered(dropped))
}

/// Cuts `key` just after the first `separator` following the prefix (of length `from`).
fn cut_at_separator(key: &str, from: usize, separator: &str) -> String {
    if separator.is_empty() {
        return key.to_owned();
    }
    match key.get(from..).and_then(|rest| rest.find(separator)) {
        Some(pos) => key[..from + pos + separator.len()].to_owned(),
        None => key.to_owned(),
    }
}

fn raw(entry: KvEntry) -> Response {
    let mut response = Response::new(Body::from(entry.value));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("sandbox"),
    );
    response
}

pub(crate) async fn put(
    State(app): State<Arc<AppState>>,
    authz: Authz,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let key = key_of(&uri)?;
    if key.is_empty() {
        return Err(ApiError::BadRequest("Missing key name".to_owned()));
    }
    authz.require(Resource::Key, &key, Need::Write)?;
    let params = Params::parse(&uri);
    let flags = params.u64("flags", "Invalid flags")?.unwrap_or(0);
    let chosen = ["cas", "acquire", "release"]
        .iter()
        .filter(|f| params.has(f))
        .count();
    if chosen > 1 {
        return Err(ApiError::BadRequest("Conflicting flags".to_owned()));
    }
    let mode = if let Some(cas) = params.u64("cas", "Invalid cas index")? {
        SetMode::Cas(cas)
    } else if let Some(session) = params.get("acquire") {
        SetMode::Acquire(session.to_owned())
    } else if let Some(session) = params.get("release") {
        SetMode::Release(session.to_owned())
    } else {
        SetMode::Plain
    };
    let value = read_body(&headers, body, MAX_VALUE_SIZE).await?;
    let done = app.store.kv_set(key, value, flags, mode).await?;
    Ok(json(&done))
}

pub(crate) async fn delete(
    State(app): State<Arc<AppState>>,
    authz: Authz,
    uri: Uri,
) -> Result<Response, ApiError> {
    let key = key_of(&uri)?;
    let params = Params::parse(&uri);
    let cas = params.u64("cas", "Invalid cas index")?;
    if params.has("recurse") {
        if cas.is_some() {
            return Err(ApiError::BadRequest("Conflicting flags".to_owned()));
        }
        authz.require_ok(authz.0.key_write_prefix(&key))?;
        app.store.kv_delete_tree(key).await?;
        return Ok(json(&true));
    }
    if key.is_empty() {
        return Err(ApiError::BadRequest("Missing key name".to_owned()));
    }
    authz.require(Resource::Key, &key, Need::Write)?;
    Ok(json(&app.store.kv_delete(key, cas).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separator_cuts_after_prefix() {
        assert_eq!(cut_at_separator("a/b/c", 0, "/"), "a/");
        assert_eq!(cut_at_separator("a/b/c", 2, "/"), "a/b/");
        assert_eq!(cut_at_separator("a/b", 2, "/"), "a/b");
        assert_eq!(cut_at_separator("a/b", 0, ""), "a/b");
        assert_eq!(cut_at_separator("a--b--c", 0, "--"), "a--");
    }

    #[test]
    fn key_rules() {
        for ok in [
            "a",
            "a/b/",
            "日本/キー",
            "a..b",
            "a/.b",
            "with space inside",
        ] {
            assert!(validate_key(ok).is_ok(), "{ok}");
        }
        for bad in ["../a", "a/../b", "a/..", "..", " a", "a ", "\ta"] {
            assert!(validate_key(bad).is_err(), "{bad}");
        }
    }
}
