//! The `berth` CLI: deploy a folder to a berth cluster and manage its instances, through the
//! master's public API only. Exit codes and configuration are in `berth --help` ([`cli`]).

pub mod archive;
pub mod cli;
pub mod client;
pub mod commands;
pub mod config;
pub mod deploy;
pub mod failure;
pub mod output;
pub mod releases;

use clap::CommandFactory;

use crate::cli::{Cli, Command};
use crate::client::Client;
use crate::failure::Failure;
use crate::output::Out;

/// Runs one command; the caller reports a failure and exits with its code.
pub fn run(cli: &Cli, out: &Out) -> Result<(), Failure> {
    if let Command::Completions(args) = &cli.command {
        clap_complete::generate(
            args.shell,
            &mut Cli::command(),
            "berth",
            &mut std::io::stdout(),
        );
        return Ok(());
    }
    let target = config::resolve(&cli.global)?;
    let client = Client::new(&target)?;
    match &cli.command {
        Command::Deploy(args) => deploy::deploy(&client, out, target.user.as_deref(), args),
        Command::Ps(args) => commands::ps(&client, out, args),
        Command::Status(args) => commands::status(&client, out, &args.id),
        Command::Logs(args) => commands::logs(&client, out, args),
        Command::Start(args) => commands::lifecycle(&client, out, &args.id, "start"),
        Command::Stop(args) => commands::lifecycle(&client, out, &args.id, "stop"),
        Command::Releases(args) => releases::releases(&client, out, &args.id),
        Command::Rollback(args) => releases::rollback(&client, out, args),
        Command::Rm(args) => commands::rm(&client, out, args),
        Command::Workers => commands::workers(&client, out),
        Command::Open(args) => commands::open(&client, out, args),
        Command::Completions(_) => Ok(()),
    }
}
