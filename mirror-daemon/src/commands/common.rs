//! Flag → stage-configuration conversions shared by several subcommands.
use std::path::Path;

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

/// The go/no-go criteria from the flags.
pub fn criteria(
    args: &crate::cli::CriteriaArgs,
) -> anyhow::Result<mirror_daemon::verdict::Criteria> {
    use mirror_daemon::verdict::{Criteria, RouteLimit, parse_percent};
    let pct = |v: &Option<String>| v.as_deref().map(parse_percent).transpose().map_err(usage);
    let mut c = Criteria {
        max_mismatch: pct(&args.max_mismatch)?,
        max_p95_regression: pct(&args.max_p95_regression)?,
        max_candidate_errors: pct(&args.max_candidate_errors)?,
        max_side_effect_mismatch: pct(&args.max_side_effect_mismatch)?,
        min_exchanges: args.min_exchanges,
        min_completeness: pct(&args.min_completeness)?,
        // `0` is the strict judgement (the ratio alone), as before the floor had a default.
        min_latency_delta_ns: (!args.min_latency_delta.is_zero())
            .then(|| u64::try_from(args.min_latency_delta.as_nanos()).unwrap_or(u64::MAX)),
        per_route: Vec::new(),
    };
    for (limit, values) in [
        (RouteLimit::MaxMismatch, &args.route_max_mismatch),
        (RouteLimit::MaxP95Regression, &args.route_max_p95_regression),
        (
            RouteLimit::MaxCandidateErrors,
            &args.route_max_candidate_errors,
        ),
        (RouteLimit::MinExchanges, &args.route_min_exchanges),
    ] {
        for v in values {
            c.add_route_limit(limit, v).map_err(usage)?;
        }
    }
    c.validate().map_err(usage)?;
    Ok(c)
}

/// The criteria as the user wrote them, for the store and the report header.
pub fn criteria_text(args: &crate::cli::CriteriaArgs) -> String {
    let mut parts = Vec::new();
    let mut push = |flag: &str, v: &Option<String>| {
        if let Some(v) = v {
            parts.push(format!("--{flag} {v}"));
        }
    };
    push("max-mismatch", &args.max_mismatch);
    push("max-p95-regression", &args.max_p95_regression);
    push("max-candidate-errors", &args.max_candidate_errors);
    push("max-side-effect-mismatch", &args.max_side_effect_mismatch);
    push("min-completeness", &args.min_completeness);
    // The floor applied, default included, wherever a p95 limit makes it matter.
    if args.max_p95_regression.is_some() || !args.route_max_p95_regression.is_empty() {
        parts.push(format!(
            "--min-latency-delta {}",
            humantime::format_duration(args.min_latency_delta)
        ));
    }
    if let Some(n) = args.min_exchanges {
        parts.push(format!("--min-exchanges {n}"));
    }
    for (flag, values) in [
        ("route-max-mismatch", &args.route_max_mismatch),
        ("route-max-p95-regression", &args.route_max_p95_regression),
        (
            "route-max-candidate-errors",
            &args.route_max_candidate_errors,
        ),
        ("route-min-exchanges", &args.route_min_exchanges),
    ] {
        for v in values {
            parts.push(format!("--{flag} {v:?}"));
        }
    }
    parts.join(" ")
}

/// Sampling settings from the flags.
pub fn sample_config(
    p: &crate::cli::PipelineArgs,
) -> anyhow::Result<mirror_daemon::sample::SampleConfig> {
    use mirror_daemon::sample::{SampleConfig, parse_rule, parse_sticky};
    Ok(SampleConfig {
        percent: p.sample.0,
        sticky: p
            .sticky
            .as_deref()
            .map(parse_sticky)
            .transpose()
            .map_err(usage)?,
        include: p
            .include
            .iter()
            .map(|r| parse_rule(r))
            .collect::<Result<_, _>>()
            .map_err(usage)?,
        exclude: p
            .exclude
            .iter()
            .map(|r| parse_rule(r))
            .collect::<Result<_, _>>()
            .map_err(usage)?,
    })
}

/// The comparator's settings from the compare flags (the stage never sees the CLI).
pub fn compare_config(
    args: &crate::cli::CompareArgs,
) -> anyhow::Result<mirror_daemon::compare::CompareConfig> {
    use mirror_daemon::compare::{CompareConfig, parse_ignore, parse_tolerance, parse_unordered};
    let mut cfg = CompareConfig::default();
    for s in &args.ignore {
        cfg.ignore(parse_ignore(s).map_err(usage)?);
    }
    for s in &args.tolerance {
        cfg.tolerance.push(parse_tolerance(s).map_err(usage)?);
    }
    for s in &args.unordered {
        cfg.unordered.push(parse_unordered(s).map_err(usage)?);
    }
    cfg.null_equals_missing = args.null_equals_missing;
    cfg.normalize_whitespace = args.normalize_whitespace;
    Ok(cfg)
}
