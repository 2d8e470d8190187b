//! `mirror-daemon`: the command-line entry point. Parses flags, sets up logging, runs
//! one subcommand, and maps the outcome to the documented exit codes.
mod cli;
mod commands;
mod progress;

use std::process::ExitCode;

use clap::Parser as _;

/// Exit codes users script against (see README "Exit codes").
pub mod exit {
    pub const OK: u8 = 0;
    /// `report`/`run`/`replay` verdict NO-GO; `check` found something missing.
    pub const NO_GO: u8 = 1;
    /// Usage error (clap's own code).
    pub const USAGE: u8 = 2;
    /// Verdict INSUFFICIENT EVIDENCE.
    pub const INSUFFICIENT: u8 = 3;
    /// Runtime failure: could not attach, store unreachable, I/O error…
    pub const FAILURE: u8 = 4;
}

fn main() -> ExitCode {
    // Before any thread exists, so every arena gets the fixed mmap threshold.
    let allocator = mirror_daemon::app::allocator::tune();
    let args = match commands::config::expand(std::env::args_os().collect()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(exit::USAGE);
        }
    };
    let cli = cli::Cli::parse_from(args);
    if let Err(e) = init_logging(&cli.global) {
        eprintln!("error: {e}");
        return ExitCode::from(exit::USAGE);
    }
    tracing::debug!(?allocator, "allocator tuned");
    match commands::dispatch(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) if e.downcast_ref::<commands::UsageError>().is_some() => {
            eprintln!("error: {e}");
            ExitCode::from(exit::USAGE)
        }
        Err(e) => {
            // One line a user can act on, then the causes.
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::from(exit::FAILURE)
        }
    }
}

fn init_logging(g: &cli::GlobalArgs) -> anyhow::Result<()> {
    use tracing_subscriber::{EnvFilter, fmt};
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&g.log_level));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match g.log_format {
        cli::LogFormat::Text => builder.try_init(),
        cli::LogFormat::Json => builder.json().try_init(),
    }
    .map_err(|e| anyhow::anyhow!("logging: {e}"))
}
