//! Catalog writes: register and deregister nodes, services and checks (ending the sessions
//! that depended on a removed check).

use super::{Registration, Tx};
use crate::store::StoreError;
use crate::store::state::{Change, CheckStatus};

impl Tx<'_> {
    pub(super) fn catalog_register(
        &mut self,
        registration: Registration,
    ) -> Result<(), StoreError> {
        let Registration {
            node,
            service,
            checks,
            skip_node_update,
        } = registration;
        let name = node.name.clone();
        let existing = self.state.nodes.get(&name).cloned();
        if !(skip_node_update && existing.is_some()) {
            let mut node = node;
            node.create_index = existing.as_ref().map_or(self.index, |n| n.create_index);
            node.modify_index = existing.as_ref().map_or(self.index, |n| n.modify_index);
            if existing.as_ref() != Some(&node) {
                node.modify_index = self.index;
                self.put(Change::Node(name.clone(), Some(node)));
            }
        }
        if let Some(mut service) = service {
            service.node = name.clone();
            let key = (name.clone(), service.id.clone());
            let existing = self.state.services.get(&key);
            service.create_index = existing.map_or(self.index, |s| s.create_index);
            service.modify_index = existing.map_or(self.index, |s| s.modify_index);
            if existing != Some(&service) {
                service.modify_index = self.index;
                self.put(Change::Service(key, Some(service)));
            }
        }
        for mut check in checks {
            check.node = name.clone();
            if !check.service_id.is_empty() {
                let Some(service) = self
                    .state
                    .services
                    .get(&(name.clone(), check.service_id.clone()))
                else {
                    return Err(StoreError::Rejected(format!(
                        "Unknown service ID '{}' for check ID '{}'",
                        check.service_id, check.id
                    )));
                };
                check.service_name = service.name.clone();
                check.service_tags = service.tags.clone();
            }
            let key = (name.clone(), check.id.clone());
            let existing = self.state.checks.get(&key);
            check.create_index = existing.map_or(self.index, |c| c.create_index);
            check.modify_index = existing.map_or(self.index, |c| c.modify_index);
            if existing != Some(&check) {
                check.modify_index = self.index;
                let critical = check.status == CheckStatus::Critical;
                self.put(Change::Check(key, Some(check.clone())));
                if critical {
                    self.end_sessions_for_check(&name, &check.id);
                }
            }
        }
        Ok(())
    }

    pub(super) fn catalog_deregister(
        &mut self,
        node: &str,
        service_id: Option<&str>,
        check_id: Option<&str>,
    ) {
        // Consul's precedence: a service ID, else a check ID, else the whole node.
        if let Some(service_id) = service_id {
            self.remove_service(node, service_id);
            return;
        }
        if let Some(check_id) = check_id {
            self.remove_check(node, check_id);
            return;
        }
        let services: Vec<String> = self
            .state
            .node_services(node)
            .map(|s| s.id.clone())
            .collect();
        for id in services {
            self.remove_service(node, &id);
        }
        let checks: Vec<String> = self.state.node_checks(node).map(|c| c.id.clone()).collect();
        for id in checks {
            self.remove_check(node, &id);
        }
        let sessions: Vec<String> = self
            .state
            .sessions
            .values()
            .filter(|s| s.node == node)
            .map(|s| s.id.clone())
            .collect();
        for id in sessions {
            self.session_end(&id);
        }
        if self.state.nodes.contains_key(node) {
            self.put(Change::Node(node.to_owned(), None));
        }
    }

    pub(super) fn remove_service(&mut self, node: &str, service_id: &str) {
        let checks: Vec<String> = self
            .state
            .node_checks(node)
            .filter(|c| c.service_id == service_id)
            .map(|c| c.id.clone())
            .collect();
        for id in checks {
            self.remove_check(node, &id);
        }
        let key = (node.to_owned(), service_id.to_owned());
        if self.state.services.contains_key(&key) {
            self.put(Change::Service(key, None));
        }
    }

    pub(super) fn remove_check(&mut self, node: &str, check_id: &str) {
        let key = (node.to_owned(), check_id.to_owned());
        if self.state.checks.contains_key(&key) {
            self.put(Change::Check(key, None));
            self.end_sessions_for_check(node, check_id);
        }
    }
}
