//! Consul's listing filters: `node-meta=key:value`, and `?filter=` expressions (go-bexpr's
//! language, parsed and checked in [`expr`] against the element types in [`schema`]) run over
//! the wire JSON of each answer element.

mod expr;
pub(crate) mod schema;

use std::collections::BTreeMap;

use serde::Serialize;

use expr::Filter;
use schema::Ty;

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

/// A checked `?filter=` expression over elements of one type.
#[derive(Debug, Clone)]
pub(crate) struct ListFilter {
    filter: Filter,
    ty: Ty,
}

impl ListFilter {
    /// The filter of `text` over elements of type `ty`; `None` for no (or an empty)
    /// expression, as Consul. A bad expression or selector is 400 with go-bexpr's text.
    pub(crate) fn parse(text: Option<&str>, ty: Ty) -> Result<Option<Self>, ApiError> {
        match text.filter(|t| !t.is_empty()) {
            None => Ok(None),
            Some(text) => Filter::new(text, ty)
                .map(|filter| Some(Self { filter, ty }))
                .map_err(|err| ApiError::BadRequest(err.to_string())),
        }
    }

    /// Whether `item` (encoded as on the wire) matches.
    pub(crate) fn keeps<T: Serialize>(&self, item: &T) -> bool {
        match serde_json::to_value(item) {
            Ok(value) => self.filter.matches(&value, self.ty),
            Err(_) => false,
        }
    }
}

/// Keeps the elements of `list` that `filter` matches (all without a filter).
pub(crate) fn retain<T: Serialize>(filter: Option<&ListFilter>, list: &mut Vec<T>) {
    if let Some(f) = filter {
        list.retain(|item| f.keeps(item));
    }
}

/// Keeps the values of `map` that `filter` matches (all without a filter).
pub(crate) fn retain_values<K: Ord, T: Serialize>(
    filter: Option<&ListFilter>,
    map: &mut BTreeMap<K, T>,
) {
    if let Some(f) = filter {
        map.retain(|_, item| f.keeps(item));
    }
}

#[cfg(test)]
mod tests;

/// Checks a filter expression against the element type `ty` without running it (a binding
/// rule's selector); the error is go-bexpr's text.
pub(crate) fn check_expression(text: &str, ty: Ty) -> Result<(), String> {
    Filter::new(text, ty).map(|_| ()).map_err(|e| e.0)
}
