//! Section 2b: the daemon's CPU per exchange in one process (mirror-daemon's `cost`
//! example: segments → reassembly → HTTP → sample → mask → replay → compare → store), by
//! wall time and by instructions counted under callgrind. Instruction counts do not move
//! when other work shares the machine, so they are the figure to compare across commits;
//! wall time on one core says what they cost here.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use super::table::{Table, f, median};
use crate::util::{self, BuildEnv};

/// The stages, in the order the example reports them (its `--upto` names).
const STAGES: [(&str, &str); 6] = [
    ("capture", "capture+reassembly+http"),
    ("sample", "sample"),
    ("mask", "mask"),
    ("replay", "replay"),
    ("compare", "compare"),
    ("store", "store"),
];
/// Exchanges of the two callgrind runs whose difference is the per-exchange count (a
/// multiple of the store's 500-row batch, so both runs end on a full batch).
const CALLGRIND_RUNS: (usize, usize) = (500, 1500);
/// Targets of issue 16.
pub const TARGET_US: f64 = 20.0;
pub const TARGET_MASK_MB_S: f64 = 500.0;
pub const TARGET_COMPARE_MB_S: f64 = 400.0;

/// Builds the cost example beside the release binaries (mirror-examples has no examples).
pub fn build(env: &BuildEnv) -> Result<()> {
    util::build_release_with(env, &["--examples"])
}

fn binary() -> PathBuf {
    util::workspace_root()
        .join("target")
        .join("release")
        .join("examples")
        .join("cost")
}

/// Runs the example once (natively) and returns its JSON line.
pub fn measure(args: &[String]) -> Result<Value> {
    let out = Command::new(binary())
        .args(args)
        .output()
        .context("running the cost example (built by `cargo xtask bench --only cost`)")?;
    if !out.status.success() {
        bail!(
            "cost example failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    serde_json::from_slice(&out.stdout).context("reading the cost example's JSON")
}

/// Instructions the example executed (all threads), counted by callgrind; the profile is
/// kept in `keep` when given.
fn instructions(args: &[String], keep: Option<&Path>) -> Result<u64> {
    let dir = std::env::temp_dir().join(format!("mirror-cost-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("callgrind.out");
    let out = Command::new("valgrind")
        .args(["--tool=callgrind", "--cache-sim=no", "--branch-sim=no"])
        .arg(format!("--callgrind-out-file={}", file.display()))
        .arg(binary())
        .args(args)
        .output()
        .context("running valgrind (apt-get install valgrind)")?;
    if !out.status.success() {
        bail!(
            "callgrind run failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = std::fs::read_to_string(&file)?;
    let total = text
        .lines()
        .find_map(|l| l.strip_prefix("summary:").or(l.strip_prefix("totals:")))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .context("no instruction total in the callgrind output")?;
    if let Some(keep) = keep {
        std::fs::copy(&file, keep)?;
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(total)
}

/// Instructions per exchange of the stages up to `upto`: the difference of two runs, so
/// the set-up (masker, regexes, SQLite schema) cancels out.
fn instructions_per_exchange(upto: &str, extra: &[String], keep: Option<&Path>) -> Result<f64> {
    let args = |n: usize| {
        let mut a = vec![
            "--exchanges".to_string(),
            n.to_string(),
            "--upto".into(),
            upto.into(),
        ];
        a.extend_from_slice(extra);
        a
    };
    let (n1, n2) = CALLGRIND_RUNS;
    let i1 = instructions(&args(n1), None)?;
    let i2 = instructions(&args(n2), keep)?;
    Ok(i2.saturating_sub(i1) as f64 / (n2 - n1) as f64)
}

/// The top functions by own instructions of a callgrind profile, as Markdown table rows
/// (a function's inlined pieces, which callgrind lists per source file, added up).
fn top_functions(profile: &Path, n: usize) -> String {
    let out = Command::new("callgrind_annotate")
        .args(["--inclusive=no", "--auto=no", "--threshold=100"])
        .arg(profile)
        .output();
    let text = match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
        _ => return "callgrind_annotate not available".into(),
    };
    let mut total = 0u64;
    let mut by_fn: Vec<(String, u64)> = Vec::new();
    for line in text.lines() {
        let line = line.trim_start();
        let Some((count, rest)) = line.split_once(' ') else {
            continue;
        };
        let Ok(count) = count.replace(',', "").parse::<u64>() else {
            continue;
        };
        // `(12.3%)  file:function [object]`
        let Some((_, rest)) = rest.split_once(')') else {
            continue;
        };
        let rest = rest.trim();
        if rest.starts_with("PROGRAM TOTALS") {
            total = count;
            continue;
        }
        let func = rest.split_once(':').map_or(rest, |(_, f)| f);
        let func = func.split(" [").next().unwrap_or(func).trim();
        // `f'2` is a recursive call of `f`.
        let func = match func.rsplit_once('\'') {
            Some((f, depth)) if depth.bytes().all(|b| b.is_ascii_digit()) => f,
            _ => func,
        };
        match by_fn.iter_mut().find(|(f, _)| f == func) {
            Some((_, c)) => *c += count,
            None => by_fn.push((func.to_string(), count)),
        }
    }
    by_fn.sort_by_key(|f| std::cmp::Reverse(f.1));
    by_fn
        .iter()
        .take(n)
        .map(|(f, c)| {
            format!(
                "| {:5.1} % | `{f}` |",
                *c as f64 * 100.0 / total.max(1) as f64
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn run(quick: bool) -> Result<Vec<Table>> {
    let dir = util::workspace_root().join("target").join("bench");
    std::fs::create_dir_all(&dir)?;
    let runs = if quick { 1 } else { 3 };
    let exchanges = if quick { 20_000 } else { 50_000 };
    let mut results = Vec::new();
    for _ in 0..runs {
        results.push(measure(&[
            "--exchanges".into(),
            exchanges.to_string(),
            "--throughput".into(),
            "65536".into(),
        ])?);
    }
    let med =
        |pick: &dyn Fn(&Value) -> Option<f64>| median(results.iter().filter_map(pick).collect());

    let mut t = Table::new(
        "2b. cost per exchange, in process on one core (1 KiB JSON response, 100 % replayed)",
        &["stage", "µs/exchange (wall)", "instructions/exchange"],
        1,
    );
    let profile = dir.join("cost.callgrind");
    let mut below = 0.0;
    let mut callgrind_ok = true;
    for (upto, name) in STAGES {
        let keep = (upto == "store").then_some(profile.as_path());
        let ir = match instructions_per_exchange(upto, &[], keep) {
            Ok(v) => Some(v),
            Err(e) => {
                eprintln!("xtask bench: callgrind: {e:#}");
                callgrind_ok = false;
                None
            }
        };
        let wall = med(&|v| v["stage_wall_us_per_exchange"][name].as_f64());
        t.row(vec![name.into(), f(wall, 2), f(ir.map(|i| i - below), 0)]);
        if let Some(i) = ir {
            below = i;
        }
    }
    let cpu = med(&|v| v["cpu_us_per_exchange"].as_f64());
    t.row(vec![
        "end to end (process CPU)".into(),
        f(cpu, 2),
        f(callgrind_ok.then_some(below), 0),
    ]);
    t.row(vec![
        format!("target ≤ {TARGET_US} µs CPU"),
        verdict(cpu, |c| c <= TARGET_US),
        String::new(),
    ]);
    t.note(format!(
        "median of {runs} run(s) of {exchanges} exchanges over 64 interleaved keep-alive \
         connections; instructions = (run of {} − run of {}) / {} under callgrind, all \
         threads; replay = candidate request built + its response parsed (no socket); \
         profile: {}",
        CALLGRIND_RUNS.1,
        CALLGRIND_RUNS.0,
        CALLGRIND_RUNS.1 - CALLGRIND_RUNS.0,
        profile.display()
    ));
    if callgrind_ok {
        let top = top_functions(&profile, 25);
        std::fs::write(dir.join("cost-top.txt"), &top)?;
        t.note(format!(
            "top functions by own instructions: {}",
            dir.join("cost-top.txt").display()
        ));
    }

    let mut tp = Table::new(
        "2c. mask and JSON compare throughput, one core (64 KiB realistic JSON)",
        &["what", "MB/s", "target", "verdict"],
        1,
    );
    for (key, label, target) in [
        ("mask_mb_s", "mask (response)", TARGET_MASK_MB_S),
        (
            "mask_cold_tokens_mb_s",
            "mask (response, every token made anew)",
            TARGET_MASK_MB_S,
        ),
        ("compare_mb_s", "compare (equal JSON)", TARGET_COMPARE_MB_S),
        (
            "compare_differs_mb_s",
            "compare (one field differs)",
            TARGET_COMPARE_MB_S,
        ),
        (
            "compare_differs_in_array_mb_s",
            "compare (one field of one order line differs)",
            TARGET_COMPARE_MB_S,
        ),
    ] {
        let v = med(&|r| r["throughput"][key].as_f64());
        tp.row(vec![
            label.into(),
            f(v, 1),
            format!("≥ {target}"),
            verdict(v, |x| x >= target),
        ]);
    }
    // The same masking by the CPU time of the masking thread: on a shared machine the
    // wall-time figures above also measure whatever else runs.
    let mut cpu_mb_s = Vec::new();
    for _ in 0..runs {
        let v = measure(&[
            "--mask-passes".into(),
            "2000".into(),
            "--throughput".into(),
            "65536".into(),
        ])?;
        cpu_mb_s.extend(v["cpu_mb_s"].as_f64());
    }
    let v = median(cpu_mb_s);
    tp.row(vec![
        "mask (response), MB per CPU-second".into(),
        f(v, 1),
        format!("≥ {TARGET_MASK_MB_S}"),
        verdict(v, |x| x >= TARGET_MASK_MB_S),
    ]);
    tp.note(
        "a users/orders document: one user (email, phone), order lines, one buyer email in ten",
    );
    tp.note(
        "MB per CPU-second: 2000 passes of the mask (tokens cached) timed by the thread's \
         CPU clock (`cost --mask-passes`), median of the runs",
    );
    Ok(vec![t, tp])
}

fn verdict(v: Option<f64>, ok: impl Fn(f64) -> bool) -> String {
    match v {
        None => "not measured".into(),
        Some(x) if ok(x) => "met".into(),
        Some(_) => "missed".into(),
    }
}
