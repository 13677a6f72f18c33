//! berth-compat-tests: nothing but tests. `tests/` drives the registry (run in-process through
//! `berth_registry::server::run` and `berth_registry::agent::run_agent`) with third-party Consul
//! clients: consulrs and rs-consul.
