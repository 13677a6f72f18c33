//! `berth`: parses the command line, runs the command, reports a failure and exits with the
//! code `berth --help` documents.

use std::process::ExitCode;

use berth_cli::cli::Cli;
use berth_cli::output::Out;
use clap::Parser;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let out = Out::new(cli.global.json);
    match berth_cli::run(&cli, &out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            out.failure(&failure);
            ExitCode::from(failure.exit as u8)
        }
    }
}
