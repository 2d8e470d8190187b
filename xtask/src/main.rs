//! `cargo xtask`: set-up, build, test, demo, bench, install — everything a fresh machine
//! needs, done by the project itself.
mod bench;
mod demo;
mod docs;
mod fuzz;
mod install;
mod lab;
mod setup;
mod soak;
mod tools;
mod util;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "mirror's build and project tasks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Make sure of the nightly's rust-src, a cached bpf-linker matching its LLVM, and the
    /// Debian packages the tests need. Idempotent; quick when everything is present.
    Setup {
        /// Skip the Debian packages (toolchain only).
        #[arg(long)]
        no_packages: bool,
    },
    /// Set up, then build the daemon (release) and the example services.
    Build,
    /// Set up, then run formatting and lint checks and every test (unit, property,
    /// privileged end-to-end). This is what CI runs.
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Run every fuzz target for a bounded time; report executions and crashes.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Only this target.
        #[arg(long)]
        target: Option<String>,
    },
    /// Benchmark the legacy path with nothing / the mirror tap / nginx mirror / tcpdump
    /// attached, in network namespaces it creates and removes; tables on stdout, JSON
    /// under target/bench/. Needs root.
    Bench(bench::BenchArgs),
    /// Build, then show the whole product on this machine in network namespaces of its
    /// own: tap, masked replay to a fenced candidate, comparison, dashboard, verdict.
    /// Needs root; removes everything it created on exit and on Ctrl-C.
    Demo {
        /// Seconds of load.
        #[arg(long, default_value_t = 45)]
        seconds: u64,
        /// Keep the work directory (store, logs) for `mirror-daemon report`.
        #[arg(long)]
        keep: bool,
    },
    /// Build, then install the daemon, systemd unit, default config (never over an
    /// existing one), completions and man page.
    Install {
        /// Installation prefix of the binary (PREFIX/bin/mirror-daemon).
        #[arg(long, default_value = "/usr/local")]
        prefix: std::path::PathBuf,
        /// Stage everything under this directory instead of / (nothing else is touched).
        #[arg(long)]
        root: Option<std::path::PathBuf>,
        /// Print what would be done, do nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Build the daemon, then write shell completions (bash, zsh, fish) and the man page
    /// into target/docs/.
    Docs,
    /// Long reliability run (root): idle keep-alive connections plus steady legacy load
    /// through the tap; prints the daemon's RSS and CPU over time and the accounting.
    Soak {
        /// Minutes of steady load once the idle connections are open.
        #[arg(long, default_value_t = 5)]
        minutes: u64,
        /// Idle keep-alive connections held for the whole run.
        #[arg(long, default_value_t = 100_000)]
        connections: u64,
        /// Legacy requests per second during the run.
        #[arg(long, default_value_t = 200)]
        rate: u64,
        /// Fail when the daemon's peak RSS exceeds this many MiB.
        #[arg(long, default_value_t = 256)]
        rss_cap_mib: u64,
        /// Use release binaries (default: the debug ones the tests use).
        #[arg(long)]
        release: bool,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Setup { no_packages } => {
            setup::run(!no_packages)?;
        }
        Cmd::Build => {
            let env = setup::run(false)?;
            util::build_release(&env)?;
        }
        Cmd::Test { args } => {
            let env = setup::run(true)?;
            util::cargo(&env, &["fmt", "--all", "--check"])?;
            util::cargo(
                &env,
                &[
                    "clippy",
                    "--workspace",
                    "--all-targets",
                    "--",
                    "-D",
                    "warnings",
                ],
            )?;
            // The fuzz targets must keep compiling against the library (they run, for a
            // bounded time, with `cargo xtask fuzz`).
            // Sharing the workspace's target directory reuses the dependencies clippy checked.
            let target = util::workspace_root().join("target");
            let target = target.to_string_lossy();
            util::cargo_in(
                &env,
                "fuzz",
                &["check", "--bins"],
                &[("AYA_BUILD_SKIP", "1"), ("CARGO_TARGET_DIR", &target)],
            )?;
            // The end-to-end tests drive the real binaries: build them first.
            util::cargo(
                &env,
                &["build", "-p", "mirror-daemon", "-p", "mirror-examples"],
            )?;
            // Every test binary runs even when one fails, so a CI log shows all failures.
            let mut test = vec!["test", "--workspace", "--no-fail-fast"];
            test.extend(args.iter().map(String::as_str));
            util::cargo(&env, &test)?;
        }
        Cmd::Soak {
            minutes,
            connections,
            rate,
            rss_cap_mib,
            release,
        } => {
            let env = setup::run(false)?;
            let mut build = vec!["build", "-p", "mirror-daemon", "-p", "mirror-examples"];
            if release {
                build.push("--release");
            }
            util::cargo(&env, &build)?;
            soak::run(soak::SoakArgs {
                minutes,
                connections,
                rate,
                rss_cap_mib,
                release,
            })?;
        }
        Cmd::Fuzz { seconds, target } => {
            setup::run(false)?;
            fuzz::run(seconds, target.as_deref())?;
        }
        Cmd::Bench(args) => bench::run(args)?,
        Cmd::Demo { seconds, keep } => demo::run(&demo::Options { seconds, keep })?,
        Cmd::Install {
            prefix,
            root,
            dry_run,
        } => install::run(&install::Options {
            prefix,
            root,
            dry_run,
        })?,
        Cmd::Docs => docs::run()?,
    }
    Ok(())
}
