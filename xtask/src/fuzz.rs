//! `cargo xtask fuzz --seconds N`: run every fuzz target for a bounded time and report
//! executions and crashes (must be zero).
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::{tools, util::workspace_root};

pub const TARGETS: &[&str] = &[
    "framing",
    "reassembly",
    "mask",
    "capture_frame",
    "virtual_request",
    "virtual_smtp",
];

pub fn run(seconds: u64, only: Option<&str>) -> Result<()> {
    let bin = tools::ensure("cargo-fuzz", "0.13.2", "cargo-fuzz", &[])?;
    let mut path = vec![bin];
    if let Some(old) = std::env::var_os("PATH") {
        path.extend(std::env::split_paths(&old));
    }
    let path = std::env::join_paths(path)?;
    let mut report = Vec::new();
    let mut failed = Vec::new();
    for target in TARGETS.iter().filter(|t| only.is_none_or(|o| o == **t)) {
        let corpus = workspace_root()
            .join("target")
            .join("fuzz-corpus")
            .join(target);
        std::fs::create_dir_all(&corpus)?;
        eprintln!("xtask: fuzzing {target} for {seconds}s");
        let out = Command::new("cargo")
            .args(["+nightly", "fuzz", "run", target])
            .arg(&corpus)
            .args([
                "--",
                &format!("-max_total_time={seconds}"),
                "-rss_limit_mb=2048",
                "-print_final_stats=1",
            ])
            .current_dir(workspace_root().join("fuzz"))
            .env("PATH", &path)
            .env("AYA_BUILD_SKIP", "1")
            .output()
            .context("running cargo fuzz")?;
        let text = String::from_utf8_lossy(&out.stderr);
        let execs = text
            .lines()
            .find_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|| "?".into());
        let ok = out.status.success();
        report.push(format!(
            "{target:<14} {execs:>12} executions  {}",
            if ok { "0 crashes" } else { "CRASH" }
        ));
        if !ok {
            failed.push(*target);
            eprintln!(
                "{}",
                text.lines()
                    .rev()
                    .take(40)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
    }
    println!("fuzz report ({seconds}s per target):");
    for line in &report {
        println!("  {line}");
    }
    if !failed.is_empty() {
        bail!("fuzz targets crashed: {failed:?} (artifacts under fuzz/artifacts/)");
    }
    Ok(())
}
