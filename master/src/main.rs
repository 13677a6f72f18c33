//! `berth-master` binary: parses the command line and runs the service.

use clap::Parser;

/// The berth master: code store and the instance API the main system calls.
#[derive(Debug, Parser)]
#[command(name = "berth-master", version)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _cli = Cli::parse();
    Ok(())
}
