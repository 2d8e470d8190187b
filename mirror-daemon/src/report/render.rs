//! Renderings of the card: a terminal table, Markdown for a change ticket, and JSON.
//! The two text formats draw the same [`Document`] (see `sections.rs`), so they show
//! the same sections; JSON is the card itself.
//!
//! Everything printed comes from the card, which comes from the store (already masked);
//! route names, keys and example values are printed as stored, never re-derived.
use std::fmt::Write as _;
use std::time::{Duration, UNIX_EPOCH};

use crate::verdict::{CriterionResult, Unit, Verdict};

use super::card::{ExampleCard, ParityCard};
use super::sections::{Block, Document, ExampleGroup, Row, Span, Table, Text, document, flat};

/// Notes and the scope line wrap before this column.
const WRAP: usize = 96;

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
pub(crate) fn pct2(v: Option<f64>) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{:.2}%", v * 100.0),
        _ => "-".into(),
    }
}

pub(crate) fn ms(ns: Option<u64>) -> String {
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

pub(crate) fn ratio(v: Option<f64>) -> String {
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

/// `gap 5, parse_error 1` in `order`, zeros left out; `none` when all are zero.
pub(crate) fn nonzero<const N: usize>(
    pairs: &std::collections::BTreeMap<String, u64>,
    order: [&str; N],
) -> String {
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

fn example_value(v: &Option<String>) -> &str {
    v.as_deref().unwrap_or("(absent)")
}

// ---------- terminal table ----------

/// Aligned columns; a text cell wider than its cap is printed on its own line above the
/// row (so the columns stay aligned and nothing is truncated).
fn draw_table(out: &mut String, t: &Table) {
    let n = t.columns.len();
    let cells = |r: &Row| -> Vec<String> { r.cells.iter().map(|c| flat(c)).collect() };
    let mut width: Vec<usize> = t.columns.iter().map(|c| c.head.chars().count()).collect();
    for r in &t.rows {
        for (i, c) in cells(r).iter().enumerate().take(n) {
            let w = c.chars().count();
            if t.columns[i].cap.is_none_or(|cap| w <= cap) {
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
            if t.columns[i].right {
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
    let head: Vec<String> = t.columns.iter().map(|c| c.head.to_string()).collect();
    let _ = writeln!(out, "{}", line(&head));
    for r in &t.rows {
        let mut cells = cells(r);
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
        for d in &r.details {
            let _ = writeln!(out, "      {}", flat(d));
        }
    }
}

fn draw_example(out: &mut String, e: &ExampleCard) {
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

fn draw_examples(out: &mut String, groups: &[ExampleGroup<'_>]) {
    for g in groups {
        let d = g.diff;
        let _ = writeln!(out, "  {}  {}  [{}]", d.route, d.key, d.class.label());
        for e in g.examples {
            draw_example(out, e);
        }
        if d.examples_not_kept > 0 {
            let _ = writeln!(
                out,
                "    ({} more exchanges with this diff had no example kept)",
                d.examples_not_kept
            );
        }
    }
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

fn draw_block(out: &mut String, b: &Block<'_>) {
    match b {
        Block::Table(t) => draw_table(out, t),
        Block::Lines(lines) => {
            for l in lines {
                let _ = writeln!(out, "  {l}");
            }
        }
        Block::Remark(t) => {
            let _ = writeln!(out, "  {}", flat(t));
        }
        Block::Empty(what) => {
            let _ = writeln!(out, "  {what}");
        }
        Block::Examples(groups) => draw_examples(out, groups),
        Block::Bullets(items) => {
            for item in items {
                for l in wrap("  - ", &words(item), " ", 4, WRAP) {
                    let _ = writeln!(out, "{l}");
                }
            }
        }
    }
}

/// The terminal report: plain text, aligned columns, ~100 columns wide.
pub fn render_table(card: &ParityCard) -> String {
    draw_text(&document(card))
}

fn draw_text(doc: &Document<'_>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}", doc.banner);
    for s in &doc.sections {
        let _ = writeln!(out, "\n{}", s.title);
        for b in &s.blocks {
            draw_block(&mut out, b);
        }
    }
    out.push('\n');
    for l in wrap("Scope: ", &doc.scope, "; ", 7, WRAP) {
        let _ = writeln!(out, "{l}");
    }
    out
}

// ---------- Markdown ----------

/// Inline code that survives any content: a fence longer than any backtick run inside,
/// and `|` escaped so GitHub tables keep their columns.
fn md_code(s: &str) -> String {
    let longest = s.split(|c| c != '`').map(str::len).max().unwrap_or(0);
    let fence = "`".repeat(longest + 1);
    let pad = if s.starts_with('`') || s.ends_with('`') {
        " "
    } else {
        ""
    };
    format!("{fence}{pad}{}{pad}{fence}", s.replace('|', "\\|"))
}

/// Plain text in Markdown: escape what would become markup. `<` only starts a tag before
/// a letter, `/`, `!` or `?`, so `<= 0.5%` stays as written; no text of the card starts a
/// line, so `>` cannot quote.
fn md_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        let tag = c == '<'
            && chars
                .peek()
                .is_some_and(|n| n.is_ascii_alphabetic() || matches!(n, '/' | '!' | '?'));
        if tag || matches!(c, '\\' | '`' | '*' | '_' | '[' | ']' | '|' | '#') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

pub(crate) fn md_spans(t: &Text) -> String {
    t.iter()
        .map(|s| match s {
            Span::Plain(s) => md_text(s.trim_start()),
            Span::Code(s) => md_code(s),
            Span::Strong(s) => format!("**{}**", md_text(s)),
        })
        .collect()
}

/// A GitHub table; rows with details get them in a last `notes` column, and short rows
/// (group labels) are padded so every row has the header's cells.
fn md_table(out: &mut String, t: &Table) {
    let notes = t.rows.iter().any(|r| !r.details.is_empty());
    let mut head: Vec<&str> = t.columns.iter().map(|c| c.head).collect();
    let mut align: Vec<&str> = t
        .columns
        .iter()
        .map(|c| if c.right { "---:" } else { "---" })
        .collect();
    if notes {
        head.push("notes");
        align.push("---");
    }
    let _ = writeln!(out, "| {} |", head.join(" | "));
    let _ = writeln!(out, "|{}|", align.join("|"));
    for r in &t.rows {
        let mut cells: Vec<String> = r.cells.iter().map(md_spans).collect();
        cells.resize(t.columns.len(), String::new());
        if notes {
            let details: Vec<String> = r.details.iter().map(md_spans).collect();
            cells.push(details.join("; "));
        }
        let _ = writeln!(out, "| {} |", cells.join(" | "));
    }
}

fn md_examples(out: &mut String, groups: &[ExampleGroup<'_>]) {
    let _ = writeln!(out, "| route | key | id | host | legacy | candidate |");
    let _ = writeln!(out, "|---|---|---|---|---|---|");
    for g in groups {
        for e in g.examples {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} |",
                md_code(&g.diff.route),
                md_code(&g.diff.key),
                md_code(&e.id),
                md_code(&e.host),
                md_code(example_value(&e.legacy)),
                md_code(example_value(&e.candidate))
            );
        }
    }
}

/// Sentence case for an empty section: `none set` → `None set.`
fn md_empty(what: &str) -> String {
    let mut c = what.chars();
    let first = c.next().map(|f| f.to_uppercase().to_string());
    format!("{}{}.", first.unwrap_or_default(), c.as_str())
}

fn md_block(out: &mut String, b: &Block<'_>) {
    match b {
        Block::Table(t) => md_table(out, t),
        Block::Lines(lines) => {
            let _ = writeln!(out, "```text");
            for l in lines {
                let _ = writeln!(out, "{l}");
            }
            let _ = writeln!(out, "```");
        }
        Block::Remark(t) => {
            let _ = writeln!(out, "{}", md_spans(t));
        }
        Block::Empty(what) => {
            let _ = writeln!(out, "{}", md_empty(what));
        }
        Block::Examples(groups) => md_examples(out, groups),
        Block::Bullets(items) => {
            for item in items {
                let _ = writeln!(out, "- {}", md_text(item));
            }
        }
    }
}

/// Markdown for a pull request or change ticket.
pub fn render_markdown(card: &ParityCard) -> String {
    draw_markdown(&document(card))
}

fn draw_markdown(doc: &Document<'_>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "## Parity report: {}\n", doc.verdict);
    let _ = writeln!(out, "**{}**\n", md_text(&doc.banner));
    for s in &doc.sections {
        let _ = writeln!(out, "### {}\n", s.title);
        for b in &s.blocks {
            md_block(&mut out, b);
            out.push('\n');
        }
    }
    let _ = writeln!(out, "_Scope: {}_", md_text(&doc.scope.join("; ")));
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
