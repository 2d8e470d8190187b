//! One module per subcommand: the edges where flags become a validated configuration
//! (a typed plan the stages are built from; only this module and `main` know the CLI),
//! with anyhow and context here and thiserror inside the stages. Shared by all:
//! `flags` (one syntax per kind of value), `config` (`--config` files), `common`
//! (flags → stage configurations) and `signals` (the one source of stop and reload
//! requests).
mod check;
mod check_impl;
mod common;
pub mod config;
mod effects;
mod exchanges;
pub mod flags;
mod guard;
mod record;
mod report;
mod shadow;
mod signals;
mod status;

use crate::cli::{Cli, Command};

pub fn dispatch(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::Check { iface } => check::run(iface.as_deref()),
        Command::Record(args) => record::run(args),
        Command::Guard(args) => guard::run(args),
        Command::Exchanges(args) => exchanges::run(args),
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "mirror-daemon", &mut std::io::stdout());
            Ok(crate::exit::OK)
        }
        Command::Man => {
            // One roff file: the top-level page, then a page per subcommand with every
            // flag (the SEE ALSO names point at these).
            let cmd = <Cli as clap::CommandFactory>::command();
            let mut out = std::io::stdout();
            clap_mangen::Man::new(cmd.clone()).render(&mut out)?;
            for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
                let name = format!("mirror-daemon-{}", sub.get_name());
                let page = sub
                    .clone()
                    .name(name)
                    .version(cmd.get_version().unwrap_or_default().to_string());
                clap_mangen::Man::new(page).render(&mut out)?;
            }
            Ok(crate::exit::OK)
        }
        Command::Run(args) => shadow::run_live(args),
        Command::Replay(args) => shadow::run_replay(args),
        Command::Report(args) => report::run(args),
        Command::GuardProbe {
            targets,
            unreadable,
            expect_unprivileged,
        } => Ok(mirror_daemon::guard::selftest::run_probe(
            &mirror_daemon::guard::selftest::ProbeArgs {
                targets,
                unreadable,
                expect_unprivileged,
            },
        ) as u8),
        Command::CandidateReaper { dirs } => Ok(mirror_daemon::guard::reaper::run(&dirs) as u8),
        Command::Status { iface } => status::run(&iface),
    }
}

pub use common::UsageError;
pub use mirror_daemon::clock::monotonic_to_epoch_offset_ns;
