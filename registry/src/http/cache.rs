//! Encoded answers of the large discovery reads (`/v1/health/service/<name>`,
//! `/v1/catalog/service/<name>`), kept per query shape for the index they reflect: a client
//! fleet polling or watching one service gets the same bytes until the catalog changes, without
//! building and encoding 1,000 entries per request.
//!
//! Only answers that ACLs left whole are kept, with the node names they carry: a later request
//! reuses one only if its token may read the service and every one of those nodes, which is
//! exactly when it would have got the same answer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::http::{HeaderValue, header};
use axum::response::Response;
use bytes::Bytes;

use crate::acl::{Need, Resource};
use crate::http::authz::Authz;

/// Most query shapes kept, and most bytes kept in all; past either the cache starts over.
const MAX_SHAPES: usize = 512;
const MAX_BYTES: usize = 64 * 1024 * 1024;

/// One encoded answer.
pub(crate) struct Cached {
    /// The catalog index it reflects.
    pub(crate) index: u64,
    /// The JSON body.
    pub(crate) body: Bytes,
    /// The service it lists and the nodes of its entries, for the token check on reuse.
    pub(crate) service: String,
    pub(crate) nodes: Vec<String>,
}

impl Cached {
    /// Whether `authz` may read everything in the answer.
    pub(crate) fn readable_by(&self, authz: &Authz) -> bool {
        authz.0.is_management()
            || (authz.allows(Resource::Service, &self.service, Need::Read)
                && self
                    .nodes
                    .iter()
                    .all(|n| authz.allows(Resource::Node, n, Need::Read)))
    }

    /// The answer as a JSON response.
    pub(crate) fn response(&self) -> Response {
        let mut response = Response::new(axum::body::Body::from(self.body.clone()));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response
    }
}

/// Encoded answers by query shape.
#[derive(Default)]
pub(crate) struct AnswerCache {
    shapes: Mutex<HashMap<String, Arc<Cached>>>,
}

impl AnswerCache {
    /// The answer kept for `shape` if it reflects `index`.
    pub(crate) fn get(&self, shape: &str, index: u64) -> Option<Arc<Cached>> {
        let shapes = self.shapes.lock().unwrap_or_else(|e| e.into_inner());
        shapes.get(shape).filter(|c| c.index == index).cloned()
    }

    /// Keeps `answer` for `shape`, replacing an older one.
    pub(crate) fn put(&self, shape: String, answer: Arc<Cached>) {
        if answer.body.len() > MAX_BYTES {
            return;
        }
        let mut shapes = self.shapes.lock().unwrap_or_else(|e| e.into_inner());
        let kept: usize = shapes.values().map(|c| c.body.len()).sum();
        if (shapes.len() >= MAX_SHAPES && !shapes.contains_key(&shape))
            || kept + answer.body.len() > MAX_BYTES
        {
            shapes.clear();
        }
        match shapes.get(&shape) {
            Some(kept) if kept.index > answer.index => {}
            _ => {
                shapes.insert(shape, answer);
            }
        }
    }
}

/// A discovery answer: reused from the cache, or built now (with whether ACLs dropped some).
pub(crate) enum Answer<T> {
    Kept(Arc<Cached>),
    Fresh(Vec<T>, bool),
}

/// Encodes `list`, keeps the bytes for `shape` at `index`, and answers with them.
pub(crate) fn keep<T: serde::Serialize>(
    app: &crate::http::AppState,
    shape: String,
    index: u64,
    service: &str,
    nodes: Vec<String>,
    list: &[T],
) -> crate::http::query::Blocking {
    let Ok(body) = serde_json::to_vec(list) else {
        return crate::http::query::Blocking::json(&list, index);
    };
    let kept = Arc::new(Cached {
        index,
        body: body.into(),
        service: service.to_owned(),
        nodes,
    });
    app.answers.put(shape, kept.clone());
    crate::http::query::Blocking::new(kept.response(), index)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(index: u64, size: usize) -> Arc<Cached> {
        Arc::new(Cached {
            index,
            body: Bytes::from(vec![b' '; size]),
            service: "web".into(),
            nodes: vec![],
        })
    }

    #[test]
    fn answers_are_kept_per_shape_for_their_index_within_the_budget() {
        let cache = AnswerCache::default();
        cache.put("a".into(), answer(5, 10));
        assert!(cache.get("a", 5).is_some());
        assert!(cache.get("a", 6).is_none());
        assert!(cache.get("b", 5).is_none());
        // an older answer never replaces a newer one
        cache.put("a".into(), answer(4, 10));
        assert!(cache.get("a", 5).is_some());
        cache.put("a".into(), answer(6, 10));
        assert!(cache.get("a", 6).is_some());
        // past the byte budget the cache starts over; a too-large answer is not kept
        cache.put("b".into(), answer(6, MAX_BYTES - 5));
        assert!(cache.get("a", 6).is_none());
        assert!(cache.get("b", 6).is_some());
        cache.put("c".into(), answer(6, MAX_BYTES + 1));
        assert!(cache.get("c", 6).is_none());
        assert!(cache.get("b", 6).is_some());
    }
}
