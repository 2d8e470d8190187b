//! Flag → stage-configuration conversions shared by several subcommands.
use std::{path::Path, time::Duration};

use anyhow::Context as _;
use mirror_daemon::mask::{Action, MaskConfig, Masker, load_or_create_key, parse_detectors};

use crate::cli::MaskArgs;

/// A usage error found after clap (a rule that does not parse): exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

pub fn usage(e: impl std::fmt::Display) -> anyhow::Error {
    UsageError(e.to_string()).into()
}

/// Parses `5s`, `500ms`, `10m`, `1h30m`.
pub fn parse_duration(flag: &str, s: &str) -> anyhow::Result<Duration> {
    humantime::parse_duration(s)
        .map_err(|e| usage(format!("{flag} {s:?}: {e} (write e.g. 5s, 500ms, 10m)")))
}

/// Builds the masker: defaults, plus the user's rules, detectors and action; the key file
/// is created (0600, parent directory 0700) when absent.
pub fn build_masker(args: &MaskArgs) -> anyhow::Result<Masker> {
    let key_path = &args.mask_key_file;
    ensure_private_dir(key_path)?;
    let key =
        load_or_create_key(key_path).with_context(|| format!("mask key {}", key_path.display()))?;
    let mut cfg = MaskConfig::with_defaults(key);
    for rule in &args.mask {
        cfg.add_rule_str(rule).map_err(usage)?;
    }
    if let Some(d) = &args.detect {
        cfg.detectors = parse_detectors(d).map_err(usage)?;
    }
    cfg.action = args.mask_action.parse::<Action>().map_err(usage)?;
    Masker::new(cfg).map_err(usage)
}

fn ensure_private_dir(file: &Path) -> anyhow::Result<()> {
    if let Some(dir) = file.parent()
        && !dir.as_os_str().is_empty()
        && !dir.exists()
    {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    Ok(())
}
