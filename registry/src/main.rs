//! `berth-registry` binary: parses the command line and runs the service.

use clap::Parser;

/// Consul-compatible registry: KV, sessions, catalog, health, agent, ACL and web UI.
#[derive(Debug, Parser)]
#[command(name = "berth-registry", version)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _cli = Cli::parse();
    Ok(())
}
