//! The command line: every command, flag and environment variable, and the help text that
//! documents configuration and exit codes.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

const AFTER_HELP: &str = "\
Configuration (the first that is set wins):
  --master / BERTH_MASTER and --token / BERTH_TOKEN (or --token-file / BERTH_TOKEN_FILE)
  the config file: --config / BERTH_CONFIG, else $XDG_CONFIG_HOME/berth/config.toml
    (~/.config/berth/config.toml), with keys master, token or token_file, and user
  the cluster scripts/up.sh started on this machine: its .berth/ folder (BERTH_HOME, else
    found from the current folder or from this binary upwards) holds the master's address
    and its API token

Exit codes:
  0  done
  1  your app failed: the master refused it (bad input, policy, state, size caps, token), or
     its build or start failed or timed out
  2  usage: bad arguments, no master configured, or a flag this master does not support yet
  3  berth failed: the master is unreachable, or a worker or the registry failed (5xx)

Output: tables and progress for people; --json prints one JSON document on stdout (JSON
lines for logs). Colour only on a terminal, never with NO_COLOR set.";

/// Deploy and manage apps on a berth cluster.
#[derive(Debug, Parser)]
#[command(name = "berth", version, after_help = AFTER_HELP)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Global options")]
pub struct Global {
    /// Master API base URL (`http://host:port`; a bare `host:port` means http).
    #[arg(long, global = true, env = "BERTH_MASTER")]
    pub master: Option<String>,
    /// API bearer token.
    #[arg(long, global = true, env = "BERTH_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// File holding the API bearer token.
    #[arg(long, global = true, env = "BERTH_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Config file (TOML: master, token, token_file, user).
    #[arg(long, global = true, env = "BERTH_CONFIG")]
    pub config: Option<PathBuf>,
    /// Print JSON on stdout instead of text (one object per line for logs).
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Pack a folder, upload it, build it and start it; prints the app's URLs. Run it again
    /// on a changed folder to deploy the change.
    Deploy(DeployArgs),
    /// List instances.
    Ps(PsArgs),
    /// One instance: state, worker, endpoints, last error.
    Status(IdArg),
    /// An instance's output: the app's own (each line prefixed with its service) and berth's
    /// (build, start, deploy).
    Logs(LogsArgs),
    /// Start an instance (building it first when needed); prints its URLs.
    Start(IdArg),
    /// Stop an instance.
    Stop(IdArg),
    /// An instance's releases (uploads), newest first: which one runs, which one is built.
    Releases(IdArg),
    /// Go back to an earlier release (default: the one before the running one), rolled out as
    /// a deploy is: a running instance keeps serving, and a release whose images are kept
    /// builds nothing.
    Rollback(RollbackArgs),
    /// Delete an instance: its stack, images, volumes, records and (unless kept) its code.
    Rm(RmArgs),
    /// Workers in the registry, healthy or not, with their load.
    Workers,
    /// Print the URL of an instance's published port(s), or open it with `--browser`.
    Open(OpenArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(CompletionsArgs),
}

#[derive(Debug, Args)]
pub struct DeployArgs {
    /// Folder holding the app, with its compose file at the root.
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// Instance id (default: the folder's name, lowercased).
    #[arg(long)]
    pub id: Option<String>,
    /// Owner of a new instance (default: the config file's user, else $USER).
    #[arg(long)]
    pub user: Option<String>,
    /// Project of a new instance (default: the instance id).
    #[arg(long)]
    pub project: Option<String>,
    /// Seconds to wait for the build.
    #[arg(long, default_value_t = 1800, value_name = "SECS")]
    pub build_timeout: u64,
}

#[derive(Debug, Args)]
pub struct PsArgs {
    /// Only the instances of this user.
    #[arg(long)]
    pub user: Option<String>,
    /// Only the instances in this state (running, failed, stopped, ...).
    #[arg(long)]
    pub state: Option<String>,
}

#[derive(Debug, Args)]
pub struct IdArg {
    /// Instance id.
    pub id: String,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// Instance id.
    pub id: String,
    /// Full commit id (40 hex) of the release to go back to (`berth releases ID` lists them).
    pub commit: Option<String>,
    /// Seconds to wait for the build.
    #[arg(long, default_value_t = 1800, value_name = "SECS")]
    pub build_timeout: u64,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Instance id.
    pub id: String,
    /// Keep following: the app's output across container restarts until interrupted, berth's
    /// own until the current operation ends.
    #[arg(short, long)]
    pub follow: bool,
    /// Whose output: `app` (the services' stdout and stderr, each line prefixed with its
    /// service), `ops` (berth's build, start and deploy output) or `all` (ops lines prefixed
    /// `berth | `, then the app's). Default: `all`, or `app` with `--service`.
    #[arg(long, value_enum)]
    pub source: Option<LogSource>,
    /// Short for `--source ops`.
    #[arg(long, conflicts_with = "source")]
    pub ops: bool,
    /// Only this service's app output.
    #[arg(long)]
    pub service: Option<String>,
    /// Only the last N lines of each service's app output before following.
    #[arg(long)]
    pub tail: Option<u64>,
    /// Only app output since T: Unix seconds, RFC 3339 or a duration back from now (`10m`).
    #[arg(long)]
    pub since: Option<String>,
    /// Prefix each app line with Docker's timestamp.
    #[arg(short, long)]
    pub timestamps: bool,
}

/// `berth logs --source`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogSource {
    App,
    Ops,
    All,
}

impl LogSource {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::App => "app",
            Self::Ops => "ops",
            Self::All => "all",
        }
    }
}

#[derive(Debug, Args)]
pub struct RmArgs {
    /// Instance id.
    pub id: String,
    /// Keep the instance's git repository in the code store.
    #[arg(long)]
    pub keep_code: bool,
}

#[derive(Debug, Args)]
pub struct OpenArgs {
    /// Instance id.
    pub id: String,
    /// Only this service's URL.
    #[arg(long)]
    pub service: Option<String>,
    /// Open the URL in a browser ($BROWSER, else xdg-open) instead of printing it.
    #[arg(long)]
    pub browser: bool,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// Shell to complete in.
    pub shell: clap_complete::Shell,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn definition_is_consistent_and_help_names_exit_codes() {
        Cli::command().debug_assert();
        let help = Cli::command().render_long_help().to_string();
        for needle in ["Exit codes:", "BERTH_MASTER", "NO_COLOR", "config.toml"] {
            assert!(help.contains(needle), "help lacks {needle}");
        }
    }
}
