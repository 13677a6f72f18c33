//! Consul-style ACLs: rule parsing (HCL and JSON), token and policy types, the authorizer, and
//! the store that persists tokens and policies.
//!
//! Nothing here knows HTTP. The API layer resolves the request's token to an [`Authorizer`]
//! through [`AclResolver`] and asks it one question per resource touched.

pub mod auth_method;
mod authorizer;
mod rules;
pub(crate) mod store;
pub mod templated;
mod token;

pub use authorizer::{Authorizer, Need};
pub use rules::{Access, Resource, Rule, Rules, parse_rules};
pub use templated::TemplatedPolicy;
pub use token::{
    ANONYMOUS_ACCESSOR_ID, ANONYMOUS_SECRET, AclResolver, MANAGEMENT_POLICY_ID,
    MANAGEMENT_POLICY_NAME, NodeIdentity, Policy, PolicyLink, Role, SecretId, ServiceIdentity,
    Token,
};

/// Errors of the ACL subsystem; the texts are the ones Consul answers with.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AclError {
    /// The rules text could not be parsed.
    #[error("failed to parse ACL rules: {0}")]
    Parse(String),
    /// A rule names an unknown resource or policy.
    #[error("invalid ACL rule: {0}")]
    InvalidRule(String),
    /// The presented secret matches no token.
    #[error("ACL not found")]
    NotFound,
    /// The token lacks the permission.
    #[error("Permission denied")]
    PermissionDenied,
    /// ACLs are not enabled on this server.
    #[error("ACL support disabled")]
    Disabled,
}
