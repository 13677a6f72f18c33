//! Every registry name berth parts agree on, written once: the master's KV keys (instance
//! records, locks, the seed-compatible `instance/{id}/` folder) and the worker's catalog service
//! with its meta keys. The master alone writes the KV keys, each under the instance's lock.

use crate::ValidName;

/// KV prefix of instance records (`berth/instances/{id}`, JSON
/// [`InstanceRecord`](crate::InstanceRecord)). The front door watches it.
pub const RECORD_PREFIX: &str = "berth/instances/";
/// KV prefix of instance locks (`berth/locks/{id}`).
pub const LOCK_PREFIX: &str = "berth/locks/";

/// KV key of the master's instance record, `berth/instances/{id}`.
pub fn instance_record_key(id: &ValidName) -> String {
    format!("{RECORD_PREFIX}{id}")
}

/// The instance's lock key, `berth/locks/{id}`.
pub fn lock_key(id: &ValidName) -> String {
    format!("{LOCK_PREFIX}{id}")
}

/// KV key the seed system used for an instance's worker address, `instance/{id}/ip`; kept for
/// existing tooling.
pub fn seed_ip_key(id: &ValidName) -> String {
    format!("{}ip", instance_tree_prefix(id))
}

/// The KV folder of an instance's seed-compatible keys, `instance/{id}/`; the master removes all
/// of it on delete.
pub fn instance_tree_prefix(id: &ValidName) -> String {
    format!("instance/{id}/")
}

/// Worker service name in the registry catalog.
pub const WORKER_SERVICE: &str = "berth-worker";
/// Meta keys a worker publishes on its service.
pub const META_VERSION: &str = "version";
pub const META_INSTANCES: &str = "instances";
pub const META_CAPACITY: &str = "capacity";

/// The service id a worker registers itself under on its own node, `berth-worker:<node>`.
pub fn worker_service_id(node: &str) -> String {
    format!("{WORKER_SERVICE}:{node}")
}

/// True for the id a worker registers itself under on its own node ([`worker_service_id`]). A
/// container of a stack that registers a `berth-worker` service (under another id, or for
/// another node) would otherwise receive builds and the cluster token.
pub fn is_worker_registration(node: &str, service_id: &str) -> bool {
    service_id
        .strip_prefix(WORKER_SERVICE)
        .and_then(|rest| rest.strip_prefix(':'))
        .is_some_and(|n| !n.is_empty() && n == node)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        let id = ValidName::parse("id", "shop-1").unwrap();
        assert_eq!(instance_record_key(&id), "berth/instances/shop-1");
        assert_eq!(lock_key(&id), "berth/locks/shop-1");
        assert_eq!(seed_ip_key(&id), "instance/shop-1/ip");
        assert_eq!(instance_tree_prefix(&id), "instance/shop-1/");
        assert_eq!(worker_service_id("n1"), "berth-worker:n1");
    }

    #[test]
    fn only_a_workers_own_registration_is_a_worker() {
        for (node, id, expected) in [
            ("n1", "berth-worker:n1", true),
            ("n1", "berth-worker", false),
            ("n1", "berth-worker:n2", false),
            ("n1", "berth-worker:n1:80", false),
            ("n1", "x:berth-worker:n1", false),
            ("", "berth-worker:", false),
            ("n1", "web.shop:n1", false),
        ] {
            assert_eq!(is_worker_registration(node, id), expected, "{node} {id}");
        }
    }
}
