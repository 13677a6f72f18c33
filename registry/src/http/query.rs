//! Consul's query handling, once: the parameters ([`Params`]), the one extractor every read
//! handler takes ([`ConsulQuery`]: `dc`, `index` / `wait`, consistency flags, `filter`, the
//! `?token`), the middleware for the rules Consul checks before any endpoint runs, blocking
//! without polling, and the one response type of a read ([`Blocking`]: `X-Consul-Index`,
//! `-KnownLeader`, `-LastContact` and `X-Consul-Results-Filtered-By-ACLs`).

use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{self, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue, Method, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use percent_encoding::percent_decode_str;
use serde::Serialize;

use super::{ApiError, AppState};
use crate::store::state::{State, Topic};

/// Query parameters, decoded; flags count by presence.
#[derive(Debug, Default)]
pub(crate) struct Params(Vec<(String, String)>);

impl Params {
    pub(crate) fn parse(uri: &Uri) -> Self {
        let Some(query) = uri.query() else {
            return Self::default();
        };
        let decode = |s: &str| {
            percent_decode_str(&s.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        };
        Self(
            query
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|pair| match pair.split_once('=') {
                    Some((k, v)) => (decode(k), decode(v)),
                    None => (decode(pair), String::new()),
                })
                .collect(),
        )
    }

    pub(crate) fn has(&self, name: &str) -> bool {
        self.0.iter().any(|(k, _)| k == name)
    }

    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// A `u64` parameter; `Err(message)` when present but unparsable.
    pub(crate) fn u64(&self, name: &str, message: &str) -> Result<Option<u64>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(text) => text
                .parse()
                .map(Some)
                .map_err(|_| ApiError::BadRequest(message.to_owned())),
        }
    }
}

/// The percent-decoded path after `prefix` (e.g. the KV key after `/v1/kv/`).
pub(crate) fn path_tail(uri: &Uri, prefix: &str) -> Result<String, ApiError> {
    let raw = uri.path().strip_prefix(prefix).unwrap_or("");
    percent_decode_str(raw)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| ApiError::BadRequest("Invalid key name: not valid UTF-8".to_owned()))
}

/// Default wait of a blocking query (Consul: 5 minutes).
const DEFAULT_WAIT: Duration = Duration::from_secs(300);
/// Longest wait of a blocking query (Consul: 10 minutes).
const MAX_WAIT: Duration = Duration::from_secs(600);

/// `index` and `wait` of a request; `index == 0` means "answer at once".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct QueryOptions {
    pub(crate) index: u64,
    pub(crate) wait: Duration,
}

impl QueryOptions {
    /// As Consul's `parseWait`: an empty value counts as absent, and a wait of zero or less
    /// (Go durations may be negative) means the default.
    pub(crate) fn parse(params: &Params) -> Result<Self, ApiError> {
        let wait = match params.get("wait").filter(|text| !text.is_empty()) {
            None => DEFAULT_WAIT,
            Some(text) => {
                let (negative, magnitude) = match text.strip_prefix('-') {
                    Some(rest) => (true, rest),
                    None => (false, text),
                };
                let wait = crate::dto::parse_go_duration(magnitude)
                    .filter(|_| !(negative && magnitude.starts_with('+')))
                    .ok_or_else(|| ApiError::BadRequest("Invalid wait time".to_owned()))?;
                if negative || wait.is_zero() {
                    DEFAULT_WAIT
                } else {
                    wait.min(MAX_WAIT)
                }
            }
        };
        let index = match params.get("index").filter(|text| !text.is_empty()) {
            None => 0,
            Some(text) => text
                .parse()
                .map_err(|_| ApiError::BadRequest("Invalid index".to_owned()))?,
        };
        Ok(Self { index, wait })
    }
}

/// The Consul query parameters of a request, parsed once. As an extractor it refuses a request
/// whose `index` or `wait` cannot be parsed (400, Consul's texts); the `dc` and consistency
/// rules are checked earlier, by [`query_rules`], for every route that takes them.
#[derive(Debug)]
pub(crate) struct ConsulQuery {
    /// Every parameter, for the endpoint's own (`recurse`, `tag`, `node-meta`, ...).
    pub(crate) params: Params,
    /// `?dc=`, when given and not empty.
    pub(crate) dc: Option<String>,
    /// `?consistent`, `?stale`, `?cached` (presence).
    pub(crate) consistent: bool,
    pub(crate) stale: bool,
    pub(crate) cached: bool,
    /// `?filter=`, when given (an empty one filters nothing, as Consul).
    pub(crate) filter: Option<String>,
    /// `?token=`, when given and not empty (the ACL middleware resolves it).
    pub(crate) token: Option<String>,
    /// `index` / `wait`, or the 400 text they earn.
    blocking: Result<QueryOptions, String>,
}

impl ConsulQuery {
    pub(crate) fn parse(uri: &Uri) -> Self {
        let params = Params::parse(uri);
        let non_empty = |name: &str| {
            params
                .get(name)
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
        };
        let blocking = QueryOptions::parse(&params).map_err(|err| err.to_string());
        Self {
            dc: non_empty("dc"),
            consistent: params.has("consistent"),
            stale: params.has("stale"),
            cached: params.has("cached"),
            filter: params.get("filter").map(str::to_owned),
            token: non_empty("token"),
            blocking,
            params,
        }
    }

    /// `?peer=` naming a cluster peer. A single-datacenter registry has no peers, so nothing
    /// is imported from one: Consul answers such a query with no entries.
    pub(crate) fn peered(&self) -> bool {
        self.params.get("peer").is_some_and(|p| !p.is_empty())
    }

    /// `index` and `wait`.
    pub(crate) fn blocking(&self) -> QueryOptions {
        // Extraction refused the request otherwise.
        self.blocking.clone().unwrap_or(QueryOptions {
            index: 0,
            wait: DEFAULT_WAIT,
        })
    }

    /// The `?filter=` expression over answer elements of type `ty`, checked (400 with
    /// go-bexpr's text when it does not parse or names a selector `ty` lacks).
    pub(crate) fn filter(
        &self,
        ty: super::filter::schema::Ty,
    ) -> Result<Option<super::filter::ListFilter>, ApiError> {
        super::filter::ListFilter::parse(self.filter.as_deref(), ty)
    }

    /// Evaluates `query` now, or, for a blocking request, once the state is past its index
    /// (see [`block`]).
    pub(crate) async fn block<T>(
        &self,
        app: &AppState,
        topic: Topic,
        query: impl Fn(&State) -> (T, u64),
    ) -> (T, u64) {
        block(app, topic, self.blocking(), query).await
    }
}

impl<S: Send + Sync> FromRequestParts<S> for ConsulQuery {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = Self::parse(&parts.uri);
        match &query.blocking {
            Ok(_) => Ok(query),
            Err(text) => Err(ApiError::BadRequest(text.clone())),
        }
    }
}

/// The answer of a read: a response (JSON, raw, or a bare 404) with the index it reflects and
/// whether ACLs left anything out. Sets `X-Consul-Index` (never 0), `X-Consul-KnownLeader`,
/// `X-Consul-LastContact` and, when something was dropped,
/// `X-Consul-Results-Filtered-By-ACLs: true`.
pub(crate) struct Blocking {
    response: Response,
    index: u64,
    filtered: bool,
}

impl Blocking {
    pub(crate) fn new(response: Response, index: u64) -> Self {
        Self {
            response,
            index,
            filtered: false,
        }
    }

    /// A JSON body.
    pub(crate) fn json<T: Serialize>(value: &T, index: u64) -> Self {
        Self::new(super::json(value), index)
    }

    /// Marks the answer filtered by ACLs when `dropped`.
    pub(crate) fn filtered(mut self, dropped: bool) -> Self {
        self.filtered |= dropped;
        self
    }
}

impl IntoResponse for Blocking {
    fn into_response(self) -> Response {
        super::authz::filtered(with_meta(self.response, self.index), self.filtered)
    }
}

/// Whether the route at `path` takes Consul's `dc` and, on reads, its consistency modes.
fn dc_aware(path: &str) -> bool {
    path == "/v1/kv"
        || path == "/v1/txn"
        || [
            "/v1/kv/",
            "/v1/session/",
            "/v1/catalog/",
            "/v1/health/",
            "/v1/event/fire/",
        ]
        .iter()
        .any(|prefix| path.starts_with(prefix))
}

/// Middleware for the query parameters Consul checks before any endpoint runs: `?dc=` naming
/// another datacenter gets 500 `No path to datacenter` (this server is the only one), and reads
/// may not combine `?consistent` with `?stale` or `?cached`.
pub(crate) async fn query_rules(
    extract::State(app): extract::State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    if !dc_aware(request.uri().path()) {
        return next.run(request).await;
    }
    let query = ConsulQuery::parse(request.uri());
    if let Err(err) = check_query(&query, request.method(), &app.datacenter) {
        return err.into_response();
    }
    next.run(request).await
}

fn check_query(query: &ConsulQuery, method: &Method, datacenter: &str) -> Result<(), ApiError> {
    if query.dc.as_deref().is_some_and(|dc| dc != datacenter) {
        return Err(ApiError::Internal("No path to datacenter".to_owned()));
    }
    if matches!(*method, Method::GET | Method::HEAD) && query.consistent {
        for (other, given) in [("stale", query.stale), ("cached", query.cached)] {
            if given {
                return Err(ApiError::BadRequest(format!(
                    "Cannot specify ?{other} with ?consistent, conflicting semantics."
                )));
            }
        }
    }
    Ok(())
}

/// Evaluates `query` against the committed state; while its index is not past `opts.index`,
/// waits for the next commit on `topic` (or the deadline, or shutdown) and evaluates again.
pub(crate) async fn block<T>(
    app: &AppState,
    topic: Topic,
    opts: QueryOptions,
    query: impl Fn(&State) -> (T, u64),
) -> (T, u64) {
    if opts.index == 0 {
        return app.store.read(&query);
    }
    // Subscribe before reading, so a commit between the read and the wait is not missed.
    let mut changes = app.store.subscribe(topic);
    let (mut result, mut index) = app.store.read(&query);
    if index > opts.index {
        return (result, index);
    }
    let deadline = tokio::time::Instant::now() + opts.wait + jitter(opts.wait);
    loop {
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { break },
            () = tokio::time::sleep_until(deadline) => break,
            () = app.shutdown.cancelled() => break,
        }
        (result, index) = app.store.read(&query);
        if index > opts.index {
            break;
        }
    }
    (result, index)
}

/// Up to wait/16 of random extra time, so many watchers don't return together.
fn jitter(wait: Duration) -> Duration {
    let max = (wait / 16).as_nanos() as u64;
    if max == 0 {
        return Duration::ZERO;
    }
    Duration::from_nanos(RandomState::new().hash_one(std::time::SystemTime::now()) % max)
}

/// Sets `X-Consul-Index` (never 0), `X-Consul-KnownLeader` and `X-Consul-LastContact`.
pub(crate) fn with_meta(mut response: Response, index: u64) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        HeaderName::from_static("x-consul-index"),
        HeaderValue::from(index.max(1)),
    );
    headers.insert(
        HeaderName::from_static("x-consul-knownleader"),
        HeaderValue::from_static("true"),
    );
    headers.insert(
        HeaderName::from_static("x-consul-lastcontact"),
        HeaderValue::from_static("0"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_index_and_wait() {
        let parse =
            |q: &str| QueryOptions::parse(&Params::parse(&format!("/x?{q}").parse().unwrap()));
        assert_eq!(
            parse("index=5&wait=10s").unwrap(),
            QueryOptions {
                index: 5,
                wait: Duration::from_secs(10)
            }
        );
        assert_eq!(
            parse("").unwrap(),
            QueryOptions {
                index: 0,
                wait: DEFAULT_WAIT
            }
        );
        assert_eq!(parse("wait=1h").unwrap().wait, MAX_WAIT);
        assert!(
            matches!(parse("wait=10"), Err(ApiError::BadRequest(t)) if t == "Invalid wait time")
        );
        assert!(matches!(parse("index=x"), Err(ApiError::BadRequest(t)) if t == "Invalid index"));
        assert!(matches!(parse("index=-1"), Err(ApiError::BadRequest(t)) if t == "Invalid index"));
        // empty values count as absent; negative waits mean the default (Consul's parseWait)
        let default = |index| QueryOptions {
            index,
            wait: DEFAULT_WAIT,
        };
        for (query, index) in [
            ("index=4&wait=", 4),
            ("index=&wait=", 0),
            ("index=4&wait=-1s", 4),
            ("wait=-1m30s", 0),
            ("wait=-0", 0),
        ] {
            assert_eq!(parse(query).unwrap(), default(index), "{query}");
        }
        assert_eq!(
            parse("index=&wait=1s").unwrap(),
            QueryOptions {
                index: 0,
                wait: Duration::from_secs(1)
            }
        );
        for bad in ["wait=-", "wait=--1s", "wait=-+1s", "wait=-x"] {
            assert!(
                matches!(parse(bad), Err(ApiError::BadRequest(t)) if t == "Invalid wait time"),
                "{bad}"
            );
        }
    }
}
