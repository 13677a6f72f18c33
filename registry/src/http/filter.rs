//! Consul's listing filters that berth serves (`node-meta=key:value`), and the refusal of the
//! ones it does not (`filter` expressions).

use crate::http::{ApiError, Params};
use crate::store::state::Node;

/// `node-meta=key:value` filters (all must match).
pub(crate) fn node_meta_filter(params: &Params) -> Vec<(String, String)> {
    params
        .all("node-meta")
        .map(|kv| match kv.split_once(':') {
            Some((k, v)) => (k.to_owned(), v.to_owned()),
            None => (kv.to_owned(), String::new()),
        })
        .collect()
}

pub(crate) fn meta_matches(node: &Node, filter: &[(String, String)]) -> bool {
    filter
        .iter()
        .all(|(k, v)| node.meta.get(k).is_some_and(|m| m == v))
}

/// Consul's `filter` expressions are not implemented: refuse them rather than ignore them.
pub(crate) fn reject_filter(given: bool) -> Result<(), ApiError> {
    if given {
        return Err(ApiError::BadRequest(
            "filter expressions are not supported by berth; use tag and node-meta".to_owned(),
        ));
    }
    Ok(())
}
