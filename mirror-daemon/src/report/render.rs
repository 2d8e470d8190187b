//! Renderings of the card: a terminal table, Markdown for a change ticket, and JSON.
//!
//! Everything printed comes from the card, which comes from the store (already masked);
//! route names, keys and example values are printed as stored, never re-derived.
use std::fmt::Write as _;
use std::time::{Duration, UNIX_EPOCH};

use crate::compare::NoiseClass;
use crate::verdict::{CriterionResult, Unit, Verdict};

use super::card::{DiffCard, ExampleCard, MismatchBasis, ParityCard, Percentiles, SideLatency};

/// Text columns wider than this get their own line, so rows stay within ~100 columns.
const TEXT_CAP: usize = 32;
const WRAP: usize = 96;
/// Diffs whose examples the table shows (all are in the JSON).
const TABLE_EXAMPLE_DIFFS: usize = 10;

// ---------- formatting helpers ----------

/// A fraction as a percentage with at most 3 decimals and no trailing zeros: `3.1%`.
pub(crate) fn pct(v: f64) -> String {
    if !v.is_finite() {
        return "n/a".into();
    }
    let s = format!("{:.3}", v * 100.0);
    let s = s.trim_end_matches('0').trim_end_matches('.');
    format!("{s}%")
}

/// A rate in a column: fixed 2 decimals, `-` when unknown.
fn pct2(v: Option<f64>) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{:.2}%", v * 100.0),
        _ => "-".into(),
    }
}

fn ms(ns: Option<u64>) -> String {
    match ns {
        None => "-".into(),
        Some(ns) => {
            let v = ns as f64 / 1e6;
            if v < 10.0 {
                format!("{v:.2}")
            } else if v < 1000.0 {
                format!("{v:.1}")
            } else {
                format!("{v:.0}")
            }
        }
    }
}

fn ratio(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |r| format!("{r:.2}"))
}

pub(crate) fn time(unix_ms: i64) -> String {
    match u64::try_from(unix_ms) {
        Ok(ms) => {
            humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
        }
        Err(_) => unix_ms.to_string(),
    }
}

/// `>=` for the evidence gates, `<=` for limits.
pub(crate) fn at_least(c: &CriterionResult) -> bool {
    c.name.ends_with("min_exchanges") || c.name.ends_with("min_completeness")
}

/// A criterion's value in its unit; p95 regressions carry their sign.
pub(crate) fn criterion_value(c: &CriterionResult, v: f64) -> String {
    match c.unit {
        Unit::Count => format!("{v:.0}"),
        Unit::Percent if c.name.ends_with("max_p95_regression") && v >= 0.0 => {
            format!("+{}", pct(v))
        }
        Unit::Percent => pct(v),
    }
}

fn class_label(c: &NoiseClass) -> &'static str {
    match c {
        NoiseClass::Signal => "signal",
        NoiseClass::LikelyNoise => "likely noise",
        NoiseClass::Noise { .. } => "noise",
    }
}

/// `max_mismatch 3.1% > 0.5%`, for the banner.
fn failing_line(c: &CriterionResult) -> String {
    let measured = c
        .measured
        .map_or_else(|| "not measured".into(), |v| criterion_value(c, v));
    let op = if at_least(c) { "<" } else { ">" };
    format!("{} {measured} {op} {}", c.name, criterion_value(c, c.limit))
}

/// The first line an SRE reads.
pub fn banner(card: &ParityCard) -> String {
    let detail = match &card.verdict {
        Verdict::Go => format!("all {} criteria pass", card.criteria.len()),
        Verdict::NoGo { failing } => failing
            .iter()
            .map(failing_line)
            .collect::<Vec<_>>()
            .join("; "),
        Verdict::InsufficientEvidence { reasons } => reasons.join("; "),
    };
    format!(
        "VERDICT: {} — {detail}  (exit {})",
        card.verdict.label(),
        card.exit_code
    )
}

/// `seen N = matched … + in_flight N`, wrapped, then whether it holds.
fn identity_lines(card: &ParityCard) -> Vec<String> {
    let a = &card.accounting;
    let head = format!("seen {} = ", a.seen);
    let terms = [
        format!("matched {}", a.matched),
        format!("differed {}", a.differed),
        format!("sampled_out {}", a.sampled_out),
        format!("excluded {}", a.excluded),
        format!("candidate_error {}", a.candidate_errors_total),
        format!("dropped {}", a.dropped_total),
        format!("in_flight {}", a.in_flight),
    ];
    let mut lines = Vec::new();
    let mut line = head.clone();
    for (i, t) in terms.iter().enumerate() {
        let sep = if i == 0 { "" } else { " + " };
        if i > 0 && line.chars().count() + sep.len() + t.len() > WRAP - 4 {
            lines.push(line);
            line = format!("{}+ {t}", " ".repeat(head.len().saturating_sub(2)));
        } else {
            line.push_str(sep);
            line.push_str(t);
        }
    }
    let verdict = if a.identity_holds {
        "(identity holds)"
    } else {
        "(IDENTITY DOES NOT HOLD, see notes)"
    };
    if line.chars().count() + 3 + verdict.len() > WRAP - 4 {
        lines.push(line);
        lines.push(format!("{}{verdict}", " ".repeat(head.len())));
    } else {
        lines.push(format!("{line}   {verdict}"));
    }
    lines
}

/// The formula, then the same with the numbers.
fn completeness_lines(card: &ParityCard) -> Vec<String> {
    let d = &card.completeness_detail;
    let k = &card.accounting.kernel;
    if !card.completeness.is_finite() {
        return vec!["completeness: unknown (no covered exchange reached an outcome)".into()];
    }
    let head = format!("completeness {} = ", pct(card.completeness));
    vec![
        format!("{head}(1 - capture losses / covered) x records / (records + ring_full)"),
        format!(
            "{}= (1 - {} / {}) x {} / ({} + {})",
            " ".repeat(head.chars().count() - 2),
            d.capture_losses,
            d.covered,
            k.records,
            k.records,
            k.ring_full
        ),
    ]
}

fn nonzero(pairs: &std::collections::BTreeMap<String, u64>, order: &[&str]) -> String {
    let v: Vec<String> = order
        .iter()
        .filter_map(|k| {
            pairs
                .get(*k)
                .filter(|n| **n > 0)
                .map(|n| format!("{k} {n}"))
        })
        .collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

fn error_order() -> Vec<&'static str> {
    crate::accounting::CandidateErrorKind::ALL
        .iter()
        .map(|k| k.as_str())
        .collect()
}

fn drop_order() -> Vec<&'static str> {
    crate::accounting::DropReason::ALL
        .iter()
        .map(|r| r.as_str())
        .collect()
}

fn example_value(v: &Option<String>) -> &str {
    v.as_deref().unwrap_or("(absent)")
}

// ---------- terminal table ----------

/// Aligned columns; a text cell wider than its cap is printed on its own line above the
/// row (so the columns stay aligned and nothing is truncated).
struct Table {
    head: Vec<&'static str>,
    right: Vec<bool>,
    cap: Vec<Option<usize>>,
    rows: Vec<(Vec<String>, Vec<String>)>,
}

impl Table {
    /// `cols`: (header, right-aligned, width cap).
    fn new(cols: &[(&'static str, bool, Option<usize>)]) -> Table {
        Table {
            head: cols.iter().map(|c| c.0).collect(),
            right: cols.iter().map(|c| c.1).collect(),
            cap: cols.iter().map(|c| c.2).collect(),
            rows: Vec::new(),
        }
    }

    fn row(&mut self, cells: Vec<String>) {
        self.rows.push((cells, Vec::new()));
    }

    /// A row followed by indented detail lines.
    fn row_with(&mut self, cells: Vec<String>, details: Vec<String>) {
        self.rows.push((cells, details));
    }

    fn render(&self, out: &mut String) {
        let n = self.head.len();
        let mut width: Vec<usize> = self.head.iter().map(|h| h.chars().count()).collect();
        for (cells, _) in &self.rows {
            for (i, c) in cells.iter().enumerate().take(n) {
                let w = c.chars().count();
                if self.cap[i].is_none_or(|cap| w <= cap) {
                    width[i] = width[i].max(w);
                }
            }
        }
        let offset = |col: usize| 2 + width[..col].iter().map(|w| w + 2).sum::<usize>();
        let line = |cells: &[String]| {
            let mut s = String::from("  ");
            for (i, w) in width.iter().enumerate() {
                let c = cells.get(i).map_or("", String::as_str);
                let pad = w.saturating_sub(c.chars().count());
                if self.right[i] {
                    s.push_str(&" ".repeat(pad));
                    s.push_str(c);
                } else {
                    s.push_str(c);
                    s.push_str(&" ".repeat(pad));
                }
                s.push_str("  ");
            }
            s.trim_end().to_string()
        };
        let head: Vec<String> = self.head.iter().map(|h| h.to_string()).collect();
        let _ = writeln!(out, "{}", line(&head));
        for (cells, details) in &self.rows {
            let mut cells = cells.clone();
            for (i, c) in cells.iter_mut().enumerate().take(n) {
                if c.chars().count() > width[i] {
                    let _ = writeln!(out, "{}{c}", " ".repeat(offset(i)));
                    c.clear();
                }
            }
            let l = line(&cells);
            if !l.is_empty() {
                let _ = writeln!(out, "{l}");
            }
            for d in details {
                let _ = writeln!(out, "      {d}");
            }
        }
    }
}

fn section(out: &mut String, title: &str) {
    let _ = writeln!(out, "\n{title}");
}

fn latency_cells(label: String, s: &SideLatency, ratio_cell: String) -> Vec<String> {
    let p = |x: &Percentiles| [ms(x.p50_ns), ms(x.p95_ns), ms(x.p99_ns)];
    let mut v = vec![label, s.samples.to_string()];
    v.extend(p(&s.ttfb));
    v.extend(p(&s.ttlb));
    v.push(ratio_cell);
    v
}

/// The p95 ttlb difference and its interval (what the p95 criterion judges), per route.
fn p95_delta_lines(out: &mut String, card: &ParityCard) {
    let _ = writeln!(
        out,
        "  p95 ttlb candidate − legacy (ms), with its 95% interval from the samples:"
    );
    let line = |out: &mut String, label: &str, l: Option<i64>, i: Option<(i64, i64)>| {
        let ms = |ns: i64| format!("{:+.3}", ns as f64 / 1e6);
        let interval = i.map_or_else(
            || "-".into(),
            |(lo, hi)| format!("[{}, {}]", ms(lo), ms(hi)),
        );
        let _ = writeln!(
            out,
            "    {label}: {} {interval}",
            l.map_or_else(|| "-".into(), ms)
        );
    };
    let l = &card.latency;
    line(
        out,
        "all routes",
        l.p95_ttlb_delta_ns,
        l.p95_ttlb_delta_interval_ns,
    );
    for r in &card.routes {
        line(
            out,
            &r.route,
            r.latency.p95_ttlb_delta_ns,
            r.latency.p95_ttlb_delta_interval_ns,
        );
    }
}

fn diff_row(d: &DiffCard) -> Vec<String> {
    vec![
        d.count.to_string(),
        pct2(d.rate),
        d.route.clone(),
        d.key.clone(),
    ]
}

fn examples_block(out: &mut String, d: &DiffCard) {
    let _ = writeln!(out, "  {}  {}  [{}]", d.route, d.key, class_label(&d.class));
    for e in &d.examples {
        example_lines(out, e);
    }
    if d.examples_not_kept > 0 {
        let _ = writeln!(
            out,
            "    ({} more exchanges with this diff had no example kept)",
            d.examples_not_kept
        );
    }
}

fn example_lines(out: &mut String, e: &ExampleCard) {
    let bodies = if e.has_bodies {
        "  (bodies stored)"
    } else {
        ""
    };
    let _ = writeln!(
        out,
        "    {} @{} {}{bodies}",
        e.id,
        e.host,
        time(e.ts_unix_ms)
    );
    let _ = writeln!(out, "      legacy:    {}", example_value(&e.legacy));
    let _ = writeln!(out, "      candidate: {}", example_value(&e.candidate));
}

/// Joins `parts` with `sep`, starting new lines (indented by `indent`) before `width`.
fn wrap(first: &str, parts: &[String], sep: &str, indent: usize, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = first.to_string();
    let mut empty = true;
    for p in parts {
        let add = if empty {
            p.clone()
        } else {
            format!("{sep}{p}")
        };
        if !empty && line.chars().count() + add.chars().count() > width {
            // The separator stays at the end of the broken line.
            lines.push(format!("{line}{}", sep.trim_end()));
            line = format!("{}{p}", " ".repeat(indent));
        } else {
            line.push_str(&add);
        }
        empty = false;
    }
    lines.push(line);
    lines
}

fn words(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_string).collect()
}

fn scope_parts(card: &ParityCard) -> Vec<String> {
    let s = &card.scope;
    let list = |v: &[String]| {
        if v.is_empty() {
            "none".to_string()
        } else {
            v.join(", ")
        }
    };
    let mut parts = vec![
        format!("hosts {}", list(&s.hosts)),
        format!("runs {}", list(&s.run_ids)),
    ];
    if let Some(t) = s.since_unix_ms {
        parts.push(format!("since {}", time(t)));
    }
    if let Some(t) = s.first_run_started_unix_ms {
        parts.push(format!("first run {}", time(t)));
    }
    if let Some(t) = s.last_ledger_unix_ms {
        parts.push(format!("ledgers as of {}", time(t)));
    }
    parts.push(format!("generated {}", time(s.generated_at_unix_ms)));
    parts
}

fn scope_line(card: &ParityCard) -> String {
    format!("Scope: {}", scope_parts(card).join("; "))
}

/// The terminal report: plain text, aligned columns, ~100 columns wide.
pub fn render_table(card: &ParityCard) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}", banner(card));

    section(&mut out, "Criteria");
    if card.criteria.is_empty() {
        let _ = writeln!(out, "  none set");
    }
    for c in &card.criteria {
        let _ = writeln!(out, "  {c}");
    }

    section(
        &mut out,
        "Accounting (latest ledger of every host and run, summed)",
    );
    for l in identity_lines(card) {
        let _ = writeln!(out, "  {l}");
    }
    let a = &card.accounting;
    let _ = writeln!(
        out,
        "  candidate_error: {}",
        nonzero(&a.candidate_errors, &error_order())
    );
    let _ = writeln!(out, "  dropped: {}", nonzero(&a.dropped, &drop_order()));
    let _ = writeln!(
        out,
        "  kernel: segments {}, records {}, ring_full {}, pre-sampled {}, load_errors {}",
        a.kernel.segments,
        a.kernel.records,
        a.kernel.ring_full,
        a.kernel.pre_sampled,
        a.kernel.load_errors
    );
    for l in completeness_lines(card) {
        let _ = writeln!(out, "  {l}");
    }
    let _ = writeln!(
        out,
        "  uncovered (TLS, HTTP/2, upgrades; not a loss): {}",
        card.completeness_detail.uncovered
    );
    let _ = writeln!(
        out,
        "  stored: {} compared, {} candidate errors (rates below are over stored exchanges)",
        a.stored.compared, a.stored.candidate_errors
    );

    section(&mut out, "Routes");
    let mut t = Table::new(&[
        ("route", false, Some(TEXT_CAP)),
        ("compared", true, None),
        ("mismatched", true, None),
        ("rate", true, None),
        ("cand.err", true, None),
        ("err.rate", true, None),
        ("status!=", true, None),
        ("p95x", true, None),
    ]);
    let mut bound = false;
    for r in &card.routes {
        let star = if r.mismatch_basis == MismatchBasis::UpperBound {
            bound = true;
            "*"
        } else {
            ""
        };
        t.row(vec![
            r.route.clone(),
            r.compared.to_string(),
            format!("{}{star}", r.mismatched),
            pct2(r.mismatch_rate),
            r.candidate_errors.to_string(),
            pct2(r.candidate_error_rate),
            r.status_mismatches.to_string(),
            ratio(r.latency.p95_ttlb_ratio),
        ]);
    }
    if card.routes.is_empty() {
        let _ = writeln!(out, "  no exchanges stored");
    } else {
        t.render(&mut out);
    }
    if bound {
        let _ = writeln!(
            out,
            "  * upper bound: noise diffs share exchanges with other diffs (see notes)"
        );
    }
    let _ = writeln!(
        out,
        "  mismatched = exchanges with a diff that is not noise; p95x = candidate/legacy p95 ttlb"
    );

    let (signal, other): (Vec<&DiffCard>, Vec<&DiffCard>) = card
        .diffs
        .iter()
        .partition(|d| d.class == NoiseClass::Signal);
    section(&mut out, "Diffs (signal: counted as mismatches)");
    if signal.is_empty() {
        let _ = writeln!(out, "  none");
    } else {
        let mut t = Table::new(&[
            ("exchanges", true, None),
            ("rate", true, None),
            ("route", false, Some(TEXT_CAP)),
            ("key", false, None),
        ]);
        for d in &signal {
            t.row(diff_row(d));
        }
        t.render(&mut out);
    }

    section(&mut out, "Likely noise and noise (shown, not hidden)");
    if other.is_empty() {
        let _ = writeln!(out, "  none");
    } else {
        let mut t = Table::new(&[
            ("exchanges", true, None),
            ("rate", true, None),
            ("legacy", true, None),
            ("class", false, None),
            ("counted", false, None),
            ("route", false, Some(TEXT_CAP)),
            ("key", false, None),
        ]);
        for d in &other {
            let mut details = Vec::new();
            if let NoiseClass::Noise { reason } = &d.class {
                details.push(reason.clone());
            }
            if let Some(flag) = &d.suggested_ignore {
                let why = if d.class == NoiseClass::LikelyNoise {
                    "if this is volatile data, confirm with"
                } else {
                    "silence with"
                };
                details.push(format!("{why} {flag}"));
            }
            t.row_with(
                vec![
                    d.count.to_string(),
                    pct2(d.rate),
                    pct2(d.secondary_rate),
                    class_label(&d.class).into(),
                    if d.counts_as_mismatch { "yes" } else { "no" }.into(),
                    d.route.clone(),
                    d.key.clone(),
                ],
                details,
            );
        }
        t.render(&mut out);
        let _ = writeln!(
            out,
            "  legacy = rate of the same diff between two legacy instances (-: no --secondary data)"
        );
    }

    section(
        &mut out,
        "Examples (correlation id @host; values as stored, masked)",
    );
    let with_examples: Vec<&&DiffCard> = signal
        .iter()
        .chain(other.iter())
        .filter(|d| !d.examples.is_empty())
        .collect();
    if with_examples.is_empty() {
        let _ = writeln!(out, "  none");
    }
    for d in with_examples.iter().take(TABLE_EXAMPLE_DIFFS) {
        examples_block(&mut out, d);
    }
    if with_examples.len() > TABLE_EXAMPLE_DIFFS {
        let _ = writeln!(
            out,
            "  ({} more diffs with examples: see --format json)",
            with_examples.len() - TABLE_EXAMPLE_DIFFS
        );
    }

    section(
        &mut out,
        "Latency (ms, nearest rank over stored samples; p95x = candidate/legacy p95 ttlb)",
    );
    let mut t = Table::new(&[
        ("route / side", false, Some(TEXT_CAP)),
        ("n", true, None),
        ("ttfb p50", true, None),
        ("p95", true, None),
        ("p99", true, None),
        ("ttlb p50", true, None),
        ("p95", true, None),
        ("p99", true, None),
        ("p95x", true, None),
    ]);
    let l = &card.latency;
    t.row(vec![if l.weighted {
        "all routes (weighted)".into()
    } else {
        "all routes".into()
    }]);
    t.row(latency_cells("  legacy".into(), &l.legacy, String::new()));
    t.row(latency_cells(
        "  candidate".into(),
        &l.candidate,
        ratio(l.p95_ttlb_ratio),
    ));
    for r in &card.routes {
        t.row(vec![r.route.clone()]);
        t.row(latency_cells(
            "  legacy".into(),
            &r.latency.legacy,
            String::new(),
        ));
        t.row(latency_cells(
            "  candidate".into(),
            &r.latency.candidate,
            ratio(r.latency.p95_ttlb_ratio),
        ));
    }
    t.render(&mut out);
    p95_delta_lines(&mut out, card);

    section(&mut out, "Egress attempts by the candidate");
    if card.egress.is_empty() {
        let _ = writeln!(out, "  none");
    } else {
        let mut t = Table::new(&[
            ("attempts", true, None),
            ("hosts", true, None),
            ("action", false, None),
            ("proto", false, None),
            ("destination", false, None),
            ("last seen", false, None),
            ("commands", false, None),
        ]);
        for e in &card.egress {
            t.row(vec![
                e.attempts.to_string(),
                e.hosts.to_string(),
                action(e.action).into(),
                e.protocol.clone(),
                e.destination.clone(),
                time(e.last_seen_unix_ms),
                e.commands.join(","),
            ]);
        }
        t.render(&mut out);
    }

    if !card.notes.is_empty() {
        section(&mut out, "Notes");
        for n in &card.notes {
            for l in wrap("  - ", &words(n), " ", 4, WRAP) {
                let _ = writeln!(out, "{l}");
            }
        }
    }
    out.push('\n');
    for l in wrap("Scope: ", &scope_parts(card), "; ", 7, WRAP) {
        let _ = writeln!(out, "{l}");
    }
    out
}

pub(crate) fn action(a: crate::guard::EgressAction) -> &'static str {
    match a {
        crate::guard::EgressAction::Refused => "refused",
        crate::guard::EgressAction::Redirected => "redirected",
        crate::guard::EgressAction::Allowed => "allowed",
    }
}

// ---------- Markdown ----------

/// Inline code that survives any content: a fence longer than any backtick run inside,
/// and `|` escaped so GitHub tables keep their columns.
fn code(s: &str) -> String {
    let longest = s.split(|c| c != '`').map(str::len).max().unwrap_or(0);
    let fence = "`".repeat(longest + 1);
    let pad = if s.starts_with('`') || s.ends_with('`') {
        " "
    } else {
        ""
    };
    format!("{fence}{pad}{}{pad}{fence}", s.replace('|', "\\|"))
}

/// Plain text in Markdown: escape what would become markup.
fn md_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(
            c,
            '\\' | '`' | '*' | '_' | '[' | ']' | '<' | '>' | '|' | '#'
        ) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn md_table(out: &mut String, head: &[&str], right: &[bool], rows: &[Vec<String>]) {
    let _ = writeln!(out, "| {} |", head.join(" | "));
    let align: Vec<&str> = right
        .iter()
        .map(|r| if *r { "---:" } else { "---" })
        .collect();
    let _ = writeln!(out, "|{}|", align.join("|"));
    for r in rows {
        let _ = writeln!(out, "| {} |", r.join(" | "));
    }
}

/// Markdown for a pull request or change ticket.
pub fn render_markdown(card: &ParityCard) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "## Parity report: {}\n", card.verdict.label());
    let _ = writeln!(out, "**{}**\n", md_text(&banner(card)));

    let _ = writeln!(out, "### Criteria\n");
    if card.criteria.is_empty() {
        let _ = writeln!(out, "None set.\n");
    } else {
        let rows: Vec<Vec<String>> = card
            .criteria
            .iter()
            .map(|c| {
                let op = if at_least(c) { ">=" } else { "<=" };
                vec![
                    if c.passed { "pass" } else { "**FAIL**" }.into(),
                    code(&c.name),
                    c.measured
                        .map_or_else(|| "not measured".into(), |v| criterion_value(c, v)),
                    format!("{op} {}", criterion_value(c, c.limit)),
                ]
            })
            .collect();
        md_table(
            &mut out,
            &["", "criterion", "measured", "limit"],
            &[false, false, true, true],
            &rows,
        );
        out.push('\n');
    }

    let a = &card.accounting;
    let _ = writeln!(out, "### Accounting\n\n```text");
    for l in identity_lines(card) {
        let _ = writeln!(out, "{l}");
    }
    let _ = writeln!(
        out,
        "candidate_error: {}",
        nonzero(&a.candidate_errors, &error_order())
    );
    let _ = writeln!(out, "dropped: {}", nonzero(&a.dropped, &drop_order()));
    let _ = writeln!(
        out,
        "kernel: segments {}, records {}, ring_full {}, pre-sampled {}",
        a.kernel.segments, a.kernel.records, a.kernel.ring_full, a.kernel.pre_sampled
    );
    for l in completeness_lines(card) {
        let _ = writeln!(out, "{l}");
    }
    let _ = writeln!(
        out,
        "uncovered (TLS, HTTP/2, upgrades; not a loss): {}",
        card.completeness_detail.uncovered
    );
    let _ = writeln!(out, "```\n");

    let _ = writeln!(out, "### Routes\n");
    if card.routes.is_empty() {
        let _ = writeln!(out, "No exchanges stored.\n");
    } else {
        let rows: Vec<Vec<String>> = card
            .routes
            .iter()
            .map(|r| {
                let star = if r.mismatch_basis == MismatchBasis::UpperBound {
                    " (upper bound)"
                } else {
                    ""
                };
                vec![
                    code(&r.route),
                    r.compared.to_string(),
                    format!("{}{star}", r.mismatched),
                    pct2(r.mismatch_rate),
                    r.candidate_errors.to_string(),
                    r.status_mismatches.to_string(),
                    ms(r.latency.legacy.ttlb.p95_ns),
                    ms(r.latency.candidate.ttlb.p95_ns),
                    ratio(r.latency.p95_ttlb_ratio),
                ]
            })
            .collect();
        md_table(
            &mut out,
            &[
                "route",
                "compared",
                "mismatched",
                "rate",
                "candidate errors",
                "status ≠",
                "legacy p95 ttlb ms",
                "candidate p95 ttlb ms",
                "ratio",
            ],
            &[false, true, true, true, true, true, true, true, true],
            &rows,
        );
        out.push('\n');
    }

    let (signal, other): (Vec<&DiffCard>, Vec<&DiffCard>) = card
        .diffs
        .iter()
        .partition(|d| d.class == NoiseClass::Signal);
    let _ = writeln!(out, "### Diffs (signal)\n");
    if signal.is_empty() {
        let _ = writeln!(out, "None.\n");
    } else {
        let rows: Vec<Vec<String>> = signal
            .iter()
            .map(|d| {
                vec![
                    code(&d.route),
                    code(&d.key),
                    d.count.to_string(),
                    pct2(d.rate),
                    d.examples
                        .iter()
                        .map(|e| code(&e.id))
                        .collect::<Vec<_>>()
                        .join(" "),
                ]
            })
            .collect();
        md_table(
            &mut out,
            &["route", "key", "exchanges", "rate", "examples"],
            &[false, false, true, true, false],
            &rows,
        );
        out.push('\n');
    }
    let _ = writeln!(out, "### Likely noise and noise (shown, not hidden)\n");
    if other.is_empty() {
        let _ = writeln!(out, "None.\n");
    } else {
        let rows: Vec<Vec<String>> = other
            .iter()
            .map(|d| {
                let why = match &d.class {
                    NoiseClass::Noise { reason } => md_text(reason),
                    _ => "systematic; still counted as a mismatch".into(),
                };
                vec![
                    code(&d.route),
                    code(&d.key),
                    class_label(&d.class).into(),
                    d.count.to_string(),
                    pct2(d.rate),
                    pct2(d.secondary_rate),
                    why,
                    d.suggested_ignore.as_deref().map_or(String::new(), code),
                ]
            })
            .collect();
        md_table(
            &mut out,
            &[
                "route",
                "key",
                "class",
                "exchanges",
                "rate",
                "legacy rate",
                "why",
                "suggested flag",
            ],
            &[false, false, false, true, true, true, false, false],
            &rows,
        );
        out.push('\n');
    }

    let _ = writeln!(out, "### Examples\n");
    let mut any = false;
    let with_examples: Vec<&&DiffCard> = signal
        .iter()
        .chain(other.iter())
        .filter(|d| !d.examples.is_empty())
        .collect();
    for d in with_examples.iter().take(TABLE_EXAMPLE_DIFFS) {
        for e in &d.examples {
            if !any {
                let _ = writeln!(out, "| route | key | id | host | legacy | candidate |");
                let _ = writeln!(out, "|---|---|---|---|---|---|");
                any = true;
            }
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} |",
                code(&d.route),
                code(&d.key),
                code(&e.id),
                code(&e.host),
                code(example_value(&e.legacy)),
                code(example_value(&e.candidate))
            );
        }
    }
    if !any {
        let _ = writeln!(out, "None.");
    } else if with_examples.len() > TABLE_EXAMPLE_DIFFS {
        let _ = writeln!(
            out,
            "\nExamples of {} more diffs: see `--format json`.",
            with_examples.len() - TABLE_EXAMPLE_DIFFS
        );
    }
    out.push('\n');

    let _ = writeln!(out, "### Latency (ms, nearest rank)\n");
    let l = &card.latency;
    let side_row = |name: String, s: &SideLatency, r: String| {
        let mut v = latency_cells(name, s, r);
        v.iter_mut().skip(1).for_each(|c| {
            if c.is_empty() {
                c.push('-');
            }
        });
        v
    };
    let mut rows = vec![
        side_row("all routes, legacy".into(), &l.legacy, String::new()),
        side_row(
            "all routes, candidate".into(),
            &l.candidate,
            ratio(l.p95_ttlb_ratio),
        ),
    ];
    for r in &card.routes {
        rows.push(side_row(
            format!("{} legacy", code(&r.route)),
            &r.latency.legacy,
            String::new(),
        ));
        rows.push(side_row(
            format!("{} candidate", code(&r.route)),
            &r.latency.candidate,
            ratio(r.latency.p95_ttlb_ratio),
        ));
    }
    md_table(
        &mut out,
        &[
            "route, side",
            "n",
            "ttfb p50",
            "ttfb p95",
            "ttfb p99",
            "ttlb p50",
            "ttlb p95",
            "ttlb p99",
            "p95 ttlb ratio",
        ],
        &[false, true, true, true, true, true, true, true, true],
        &rows,
    );
    out.push('\n');

    let _ = writeln!(out, "### Egress attempts by the candidate\n");
    if card.egress.is_empty() {
        let _ = writeln!(out, "None.\n");
    } else {
        let rows: Vec<Vec<String>> = card
            .egress
            .iter()
            .map(|e| {
                vec![
                    code(&e.destination),
                    e.protocol.clone(),
                    action(e.action).into(),
                    e.attempts.to_string(),
                    e.hosts.to_string(),
                    time(e.first_seen_unix_ms),
                    time(e.last_seen_unix_ms),
                    e.commands
                        .iter()
                        .map(|c| code(c))
                        .collect::<Vec<_>>()
                        .join(" "),
                ]
            })
            .collect();
        md_table(
            &mut out,
            &[
                "destination",
                "protocol",
                "action",
                "attempts",
                "hosts",
                "first seen",
                "last seen",
                "commands",
            ],
            &[false, false, false, true, true, false, false, false],
            &rows,
        );
        out.push('\n');
    }

    if !card.notes.is_empty() {
        let _ = writeln!(out, "### Notes\n");
        for n in &card.notes {
            let _ = writeln!(out, "- {}", md_text(n));
        }
        out.push('\n');
    }
    let _ = writeln!(out, "_{}_", md_text(&scope_line(card)));
    out
}

// ---------- JSON ----------

/// Pretty JSON of the whole card (the `--format json` output).
pub fn render_json(card: &ParityCard) -> String {
    serde_json::to_string_pretty(card).unwrap_or_else(|e| {
        // Unreachable with these types (string map keys only); still never panic.
        serde_json::json!({ "error": format!("cannot serialize the parity card: {e}") }).to_string()
    })
}
