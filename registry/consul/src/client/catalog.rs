//! Catalog and health: registrations, nodes, services and their checks.

use std::time::Duration;

use reqwest::Method;

use super::{Client, ClientError, decode, index_of, segment};
use crate::types::{
    CatalogDeregistration, CatalogNode, CatalogNodeServices, CatalogRegistration, CatalogService,
    HealthCheck, ServiceEntry,
};

impl Client {
    /// Registers a node, optionally with a service and checks.
    pub async fn catalog_register(
        &self,
        registration: &CatalogRegistration,
    ) -> Result<(), ClientError> {
        self.put_json("/v1/catalog/register", registration).await
    }

    /// Removes a node, or one of its services or checks.
    pub async fn catalog_deregister(
        &self,
        deregistration: &CatalogDeregistration,
    ) -> Result<(), ClientError> {
        self.put_json("/v1/catalog/deregister", deregistration)
            .await
    }

    /// Instances of a service, optionally only those with `tag`.
    pub async fn catalog_service(
        &self,
        name: &str,
        tag: Option<&str>,
    ) -> Result<Vec<CatalogService>, ClientError> {
        let mut builder = self.request(
            Method::GET,
            &format!("/v1/catalog/service/{}", segment(name)),
        );
        if let Some(tag) = tag {
            builder = builder.query(&[("tag", tag)]);
        }
        Self::json(builder).await
    }

    /// The datacenter of the registry (the first of `/v1/catalog/datacenters`, which needs no
    /// ACL token).
    pub async fn catalog_datacenter(&self) -> Result<String, ClientError> {
        let list: Vec<String> =
            Self::json(self.request(Method::GET, "/v1/catalog/datacenters")).await?;
        list.into_iter()
            .next()
            .ok_or_else(|| ClientError::Decode("the registry lists no datacenter".into()))
    }

    /// Every node.
    pub async fn catalog_nodes(&self) -> Result<Vec<CatalogNode>, ClientError> {
        Self::json(self.request(Method::GET, "/v1/catalog/nodes")).await
    }

    /// A node and its services; `None` for an unknown node.
    pub async fn catalog_node(
        &self,
        node: &str,
    ) -> Result<Option<CatalogNodeServices>, ClientError> {
        Self::json(self.request(Method::GET, &format!("/v1/catalog/node/{}", segment(node)))).await
    }

    /// Every check of a node.
    pub async fn health_node(&self, node: &str) -> Result<Vec<HealthCheck>, ClientError> {
        Self::json(self.request(Method::GET, &format!("/v1/health/node/{}", segment(node)))).await
    }

    /// Instances of a service with their node and checks; `passing_only` drops unhealthy ones.
    pub async fn health_service(
        &self,
        name: &str,
        passing_only: bool,
    ) -> Result<Vec<ServiceEntry>, ClientError> {
        Ok(self.health_service_inner(name, passing_only, None).await?.0)
    }

    /// Blocking form of [`Client::health_service`].
    pub async fn health_service_blocking(
        &self,
        name: &str,
        passing_only: bool,
        index: u64,
        wait: Duration,
    ) -> Result<(Vec<ServiceEntry>, u64), ClientError> {
        self.health_service_inner(name, passing_only, Some((index, wait)))
            .await
    }

    async fn health_service_inner(
        &self,
        name: &str,
        passing_only: bool,
        block: Option<(u64, Duration)>,
    ) -> Result<(Vec<ServiceEntry>, u64), ClientError> {
        let mut builder = self.request(
            Method::GET,
            &format!("/v1/health/service/{}", segment(name)),
        );
        if passing_only {
            builder = builder.query(&[("passing", "true")]);
        }
        if let Some((index, wait)) = block {
            builder = Self::blocking(builder, index, wait);
        }
        let response = Self::send_ok(builder).await?;
        let index = index_of(&response);
        Ok((decode(response).await?, index))
    }
}
