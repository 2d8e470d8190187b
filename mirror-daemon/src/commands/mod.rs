//! One module per subcommand: the edges where flags become a validated configuration
//! and stages are wired (anyhow with context here; thiserror inside the stages).
mod check;
mod check_impl;
mod guard;
mod record;
mod signals;
mod status;

use crate::cli::{Cli, Command};

pub fn dispatch(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::Check { iface } => check::run(iface.as_deref()),
        Command::Record(args) => record::run(args),
        Command::Guard(args) => guard::run(args),
        Command::GuardProbe { target } => {
            Ok(mirror_daemon::guard::selftest::run_probe(target) as u8)
        }
        Command::Status { iface } => status::run(&iface),
    }
}

/// Kernel monotonic clock → Unix epoch offset, for turning tap timestamps into wall time.
pub fn monotonic_to_epoch_offset_ns() -> i128 {
    use nix::time::{ClockId, clock_gettime};
    let to_ns = |t: nix::sys::time::TimeSpec| {
        i128::from(t.tv_sec()) * 1_000_000_000 + i128::from(t.tv_nsec())
    };
    match (
        clock_gettime(ClockId::CLOCK_REALTIME),
        clock_gettime(ClockId::CLOCK_MONOTONIC),
    ) {
        (Ok(real), Ok(mono)) => to_ns(real) - to_ns(mono),
        _ => 0,
    }
}

/// Current kernel monotonic time in ns (the tap's clock).
pub fn monotonic_now_ns() -> u64 {
    use nix::time::{ClockId, clock_gettime};
    clock_gettime(ClockId::CLOCK_MONOTONIC)
        .map(|t| (t.tv_sec() as u64).saturating_mul(1_000_000_000) + t.tv_nsec() as u64)
        .unwrap_or(0)
}
