//! `berth-worker` binary: parses the command line and runs the service.

use clap::Parser;

/// The berth worker: builds and runs compose stacks through the Docker Engine API.
#[derive(Debug, Parser)]
#[command(name = "berth-worker", version)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _cli = Cli::parse();
    Ok(())
}
