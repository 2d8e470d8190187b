//! The card's sections as one model, drawn by one renderer per text format (`render.rs`):
//! a section added here appears in the terminal table and in Markdown alike, and each
//! section names the JSON field that carries the same facts (`--format json` is the card
//! itself).
use crate::compare::NoiseClass;

use super::card::{DiffCard, ExampleCard, MismatchBasis, ParityCard, Percentiles, SideLatency};
use super::render::{at_least, criterion_value, ms, nonzero, pct, pct2, ratio, time};

/// Diffs whose examples the text formats show (all are in the JSON).
pub(crate) const TEXT_EXAMPLE_DIFFS: usize = 10;

/// A piece of text: plain, code (routes, keys, ids, flags) or emphasized.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Span {
    Plain(String),
    Code(String),
    Strong(String),
}

/// A run of spans (one cell, one line).
pub(crate) type Text = Vec<Span>;

pub(crate) fn plain(s: impl Into<String>) -> Text {
    vec![Span::Plain(s.into())]
}

pub(crate) fn code(s: impl Into<String>) -> Text {
    vec![Span::Code(s.into())]
}

/// The text with its markup dropped (what the terminal shows).
pub(crate) fn flat(t: &[Span]) -> String {
    t.iter()
        .map(|s| match s {
            Span::Plain(s) | Span::Code(s) | Span::Strong(s) => s.as_str(),
        })
        .collect()
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Column {
    pub head: &'static str,
    pub right: bool,
    /// Cells wider than this get their own line in the terminal.
    pub cap: Option<usize>,
}

/// A row; `details` are indented lines under it (a trailing column in Markdown).
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Row {
    pub cells: Vec<Text>,
    pub details: Vec<Text>,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Table {
    pub columns: Vec<Column>,
    pub rows: Vec<Row>,
}

/// The examples of one diff.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ExampleGroup<'a> {
    pub diff: &'a DiffCard,
    pub examples: &'a [ExampleCard],
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Block<'a> {
    Table(Table),
    /// Preformatted lines (fixed-width figures).
    Lines(Vec<String>),
    /// A sentence under a table or in place of an empty one.
    Remark(Text),
    /// The section has nothing to show.
    Empty(&'static str),
    Examples(Vec<ExampleGroup<'a>>),
    Bullets(Vec<String>),
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Section<'a> {
    pub title: &'static str,
    /// The card's JSON field holding the same facts.
    pub json_field: &'static str,
    pub blocks: Vec<Block<'a>>,
}

/// Everything the text formats print, in order.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Document<'a> {
    pub verdict: &'static str,
    pub banner: String,
    pub sections: Vec<Section<'a>>,
    /// `hosts …`, `runs …`, … (the card's `scope`).
    pub scope: Vec<String>,
}

/// The card, section by section.
pub(crate) fn document(card: &ParityCard) -> Document<'_> {
    let mut sections = vec![
        criteria(card),
        accounting(card),
        routes(card),
        signal(card),
        noise(card),
        examples(card),
        latency(card),
        side_effects(card),
        egress(card),
    ];
    if !card.notes.is_empty() {
        sections.push(Section {
            title: "Notes",
            json_field: "notes",
            blocks: vec![Block::Bullets(card.notes.clone())],
        });
    }
    Document {
        verdict: card.verdict.label(),
        banner: super::render::banner(card),
        sections,
        scope: scope_parts(card),
    }
}

/// `(header, right-aligned, width cap)` per column.
type ColumnSpec = (&'static str, bool, Option<usize>);

fn cols(spec: &[ColumnSpec]) -> Vec<Column> {
    spec.iter()
        .map(|&(head, right, cap)| Column { head, right, cap })
        .collect()
}

/// A table of `rows`, or `empty` when there are none.
fn table_or(empty: &'static str, spec: &[ColumnSpec], rows: Vec<Row>) -> Block<'static> {
    if rows.is_empty() {
        Block::Empty(empty)
    } else {
        Block::Table(Table {
            columns: cols(spec),
            rows,
        })
    }
}

impl Row {
    fn new(cells: Vec<Text>) -> Row {
        Row {
            cells,
            details: Vec::new(),
        }
    }
}

/// Text columns wider than this get their own line, so rows stay within ~100 columns.
const TEXT_CAP: usize = 32;

fn criteria(card: &ParityCard) -> Section<'_> {
    let rows = card
        .criteria
        .iter()
        .map(|c| {
            Row::new(vec![
                if c.passed {
                    plain("pass")
                } else {
                    vec![Span::Strong("FAIL".into())]
                },
                code(c.name.clone()),
                plain(
                    c.measured
                        .map_or_else(|| "not measured".into(), |v| criterion_value(c, v)),
                ),
                plain(format!(
                    "{} {}",
                    if at_least(c) { ">=" } else { "<=" },
                    criterion_value(c, c.limit)
                )),
            ])
        })
        .collect::<Vec<_>>();
    let spec = [
        ("", false, None),
        ("criterion", false, None),
        ("measured", true, None),
        ("limit", true, None),
    ];
    Section {
        title: "Criteria",
        json_field: "criteria",
        blocks: vec![table_or("none set", &spec, rows)],
    }
}

/// Terms wider than this start a new line of the identity.
const IDENTITY_WIDTH: usize = 92;

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
        if i > 0 && line.chars().count() + sep.len() + t.len() > IDENTITY_WIDTH {
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
    if line.chars().count() + 3 + verdict.len() > IDENTITY_WIDTH {
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

/// How exchanges were paired, and what joining live traffic cost (drops of all connections
/// by reason are on the `dropped:` line above; repeated here for the two pairing ones).
fn pairing_lines(card: &ParityCard) -> Vec<String> {
    let a = &card.accounting;
    let Some(p) = &a.pairing else {
        return vec![
            "pairing: not recorded (ledgers written by a build that did not store it)".into(),
        ];
    };
    let dropped = |r: crate::accounting::DropReason| a.dropped.get(r.as_str()).copied();
    vec![
        format!(
            "pairing: {} of {} exchanges proven by TCP byte ranges",
            p.proven, p.exchanges
        ),
        format!(
            "  joined mid-stream: {} dropped; {} responses without a captured request",
            p.dropped_at_join, p.responses_unpaired
        ),
        format!(
            "  still waiting for a response when the capture ended: {} dropped",
            p.dropped_at_end
        ),
        format!(
            "  dropped as gap {} and as unpaired {} (all connections, joined or not)",
            dropped(crate::accounting::DropReason::Gap).unwrap_or(0),
            dropped(crate::accounting::DropReason::Unpaired).unwrap_or(0)
        ),
    ]
}

fn accounting(card: &ParityCard) -> Section<'_> {
    let a = &card.accounting;
    let mut lines = identity_lines(card);
    lines.push(format!(
        "candidate_error: {}",
        nonzero(
            &a.candidate_errors,
            crate::accounting::CandidateErrorKind::ALL.map(|k| k.as_str())
        )
    ));
    lines.push(format!(
        "dropped: {}",
        nonzero(
            &a.dropped,
            crate::accounting::DropReason::ALL.map(|r| r.as_str())
        )
    ));
    lines.extend(pairing_lines(card));
    lines.push(format!(
        "kernel: segments {}, records {}, ring_full {}, pre-sampled {}, load_errors {}",
        a.kernel.segments,
        a.kernel.records,
        a.kernel.ring_full,
        a.kernel.pre_sampled,
        a.kernel.load_errors
    ));
    lines.extend(completeness_lines(card));
    lines.push(format!(
        "uncovered (TLS, HTTP/2, upgrades; not a loss): {}",
        card.completeness_detail.uncovered
    ));
    lines.push(format!(
        "stored: {} compared, {} candidate errors (rates below are over stored exchanges)",
        a.stored.compared, a.stored.candidate_errors
    ));
    Section {
        title: "Accounting (latest ledger of every host and run, summed)",
        json_field: "accounting",
        blocks: vec![Block::Lines(lines)],
    }
}

fn routes(card: &ParityCard) -> Section<'_> {
    let mut bound = false;
    let rows: Vec<Row> = card
        .routes
        .iter()
        .map(|r| {
            let star = if r.mismatch_basis == MismatchBasis::UpperBound {
                bound = true;
                "*"
            } else {
                ""
            };
            Row::new(vec![
                code(r.route.clone()),
                plain(r.compared.to_string()),
                plain(format!("{}{star}", r.mismatched)),
                plain(pct2(r.mismatch_rate)),
                plain(r.candidate_errors.to_string()),
                plain(pct2(r.candidate_error_rate)),
                plain(r.status_mismatches.to_string()),
                plain(ratio(r.latency.p95_ttlb_ratio)),
            ])
        })
        .collect();
    let spec = [
        ("route", false, Some(TEXT_CAP)),
        ("compared", true, None),
        ("mismatched", true, None),
        ("rate", true, None),
        ("cand.err", true, None),
        ("err.rate", true, None),
        ("status!=", true, None),
        ("p95x", true, None),
    ];
    let mut blocks = vec![table_or("no exchanges stored", &spec, rows)];
    if bound {
        blocks.push(Block::Remark(plain(
            "* upper bound: noise diffs share exchanges with other diffs (see notes)",
        )));
    }
    blocks.push(Block::Remark(plain(
        "mismatched = exchanges with a diff that is not noise; p95x = candidate/legacy p95 ttlb",
    )));
    Section {
        title: "Routes",
        json_field: "routes",
        blocks,
    }
}

fn signal(card: &ParityCard) -> Section<'_> {
    let rows: Vec<Row> = card
        .diffs
        .iter()
        .filter(|d| d.class == NoiseClass::Signal)
        .map(|d| {
            Row::new(vec![
                plain(d.count.to_string()),
                plain(pct2(d.rate)),
                code(d.route.clone()),
                code(d.key.clone()),
            ])
        })
        .collect();
    let spec = [
        ("exchanges", true, None),
        ("rate", true, None),
        ("route", false, Some(TEXT_CAP)),
        ("key", false, None),
    ];
    Section {
        title: "Diffs (signal: counted as mismatches)",
        json_field: "diffs",
        blocks: vec![table_or("none", &spec, rows)],
    }
}

fn noise(card: &ParityCard) -> Section<'_> {
    let rows: Vec<Row> = card
        .diffs
        .iter()
        .filter(|d| d.class != NoiseClass::Signal)
        .map(|d| {
            let mut details = Vec::new();
            if let NoiseClass::Noise { reason } = &d.class {
                details.push(plain(reason.clone()));
            }
            if let Some(flag) = &d.suggested_ignore {
                let why = if d.class == NoiseClass::LikelyNoise {
                    "if this is volatile data, confirm with "
                } else {
                    "silence with "
                };
                details.push(vec![Span::Plain(why.into()), Span::Code(flag.clone())]);
            }
            Row {
                cells: vec![
                    plain(d.count.to_string()),
                    plain(pct2(d.rate)),
                    plain(pct2(d.secondary_rate)),
                    plain(d.class.label()),
                    plain(if d.counts_as_mismatch { "yes" } else { "no" }),
                    code(d.route.clone()),
                    code(d.key.clone()),
                ],
                details,
            }
        })
        .collect();
    let spec = [
        ("exchanges", true, None),
        ("rate", true, None),
        ("legacy", true, None),
        ("class", false, None),
        ("counted", false, None),
        ("route", false, Some(TEXT_CAP)),
        ("key", false, None),
    ];
    let mut blocks = vec![table_or("none", &spec, rows)];
    if matches!(blocks[0], Block::Table(_)) {
        blocks.push(Block::Remark(plain(
            "legacy = rate of the same diff between two legacy instances (-: no --secondary data)",
        )));
    }
    Section {
        title: "Likely noise and noise (shown, not hidden)",
        json_field: "diffs",
        blocks,
    }
}

fn examples(card: &ParityCard) -> Section<'_> {
    // Signal first, then the rest, as the diff sections list them.
    let groups: Vec<ExampleGroup<'_>> = card
        .diffs
        .iter()
        .filter(|d| d.class == NoiseClass::Signal)
        .chain(card.diffs.iter().filter(|d| d.class != NoiseClass::Signal))
        .filter(|d| !d.examples.is_empty())
        .map(|d| ExampleGroup {
            diff: d,
            examples: &d.examples,
        })
        .collect();
    let more = groups.len().saturating_sub(TEXT_EXAMPLE_DIFFS);
    let mut blocks = if groups.is_empty() {
        vec![Block::Empty("none")]
    } else {
        vec![Block::Examples(
            groups.into_iter().take(TEXT_EXAMPLE_DIFFS).collect(),
        )]
    };
    if more > 0 {
        blocks.push(Block::Remark(vec![
            Span::Plain(format!("({more} more diffs with examples: see ")),
            Span::Code("--format json".into()),
            Span::Plain(")".into()),
        ]));
    }
    Section {
        title: "Examples (correlation id @host; values as stored, masked)",
        json_field: "diffs",
        blocks,
    }
}

fn latency_row(label: &str, s: &SideLatency, ratio_cell: String) -> Row {
    let p = |x: &Percentiles| [ms(x.p50_ns), ms(x.p95_ns), ms(x.p99_ns)].map(plain);
    let mut cells = vec![plain(label), plain(s.samples.to_string())];
    cells.extend(p(&s.ttfb));
    cells.extend(p(&s.ttlb));
    cells.push(plain(ratio_cell));
    Row::new(cells)
}

fn group_row(label: Text) -> Row {
    Row::new(vec![label])
}

fn latency(card: &ParityCard) -> Section<'_> {
    let l = &card.latency;
    let mut rows = vec![
        group_row(plain(if l.weighted {
            "all routes (weighted)"
        } else {
            "all routes"
        })),
        latency_row("  legacy", &l.legacy, String::new()),
        latency_row("  candidate", &l.candidate, ratio(l.p95_ttlb_ratio)),
    ];
    for r in &card.routes {
        rows.push(group_row(code(r.route.clone())));
        rows.push(latency_row("  legacy", &r.latency.legacy, String::new()));
        rows.push(latency_row(
            "  candidate",
            &r.latency.candidate,
            ratio(r.latency.p95_ttlb_ratio),
        ));
    }
    Section {
        title: "Latency (ms, nearest rank over stored samples; p95x = candidate/legacy p95 ttlb)",
        json_field: "latency",
        blocks: vec![
            Block::Table(Table {
                columns: cols(&[
                    ("route / side", false, Some(TEXT_CAP)),
                    ("n", true, None),
                    ("ttfb p50", true, None),
                    ("p95", true, None),
                    ("p99", true, None),
                    ("ttlb p50", true, None),
                    ("p95", true, None),
                    ("p99", true, None),
                    ("p95x", true, None),
                ]),
                rows,
            }),
            Block::Lines(p95_delta_lines(card)),
        ],
    }
}

/// The p95 ttlb difference and its interval (what the p95 criterion judges), per route.
fn p95_delta_lines(card: &ParityCard) -> Vec<String> {
    let ms = |ns: i64| format!("{:+.3}", ns as f64 / 1e6);
    let line = |label: &str, delta: Option<i64>, interval: Option<(i64, i64)>| {
        let interval = interval.map_or_else(
            || "-".into(),
            |(lo, hi)| format!("[{}, {}]", ms(lo), ms(hi)),
        );
        let delta = delta.map_or_else(|| "-".into(), ms);
        format!("  {label}: {delta} {interval}")
    };
    let l = &card.latency;
    let judges_p95 = card
        .criteria
        .iter()
        .any(|c| c.name.ends_with("max_p95_regression"));
    let floor = judges_p95.then(|| match l.min_latency_delta_ns {
        Some(ns) => format!(
            "floor: a p95 regression under {} ms passes whatever its ratio \
             (--min-latency-delta; 0 judges the ratio alone)",
            ns as f64 / 1e6
        ),
        None => "floor: none, the p95 ratio alone is judged (--min-latency-delta 0)".into(),
    });
    let mut lines = vec![
        "p95 ttlb candidate − legacy (ms), with its 95% interval from the samples:".to_string(),
        line(
            "all routes",
            l.p95_ttlb_delta_ns,
            l.p95_ttlb_delta_interval_ns,
        ),
    ];
    lines.extend(card.routes.iter().map(|r| {
        line(
            &r.route,
            r.latency.p95_ttlb_delta_ns,
            r.latency.p95_ttlb_delta_interval_ns,
        )
    }));
    lines.extend(floor);
    lines.extend(l.caveats.iter().map(|c| format!("CAVEAT: {c}")));
    lines
}

fn egress(card: &ParityCard) -> Section<'_> {
    let rows: Vec<Row> = card
        .egress
        .iter()
        .map(|e| {
            Row::new(vec![
                plain(e.attempts.to_string()),
                plain(e.hosts.to_string()),
                plain(e.action.as_str()),
                plain(e.protocol.clone()),
                code(e.destination.clone()),
                plain(time(e.last_seen_unix_ms)),
                plain(e.commands.join(",")),
            ])
        })
        .collect();
    let spec = [
        ("attempts", true, None),
        ("hosts", true, None),
        ("action", false, None),
        ("proto", false, None),
        ("destination", false, None),
        ("last seen", false, None),
        ("commands", false, None),
    ];
    Section {
        title: "Egress attempts by the candidate",
        json_field: "egress",
        blocks: vec![table_or("none", &spec, rows)],
    }
}

fn side_effects(card: &ParityCard) -> Section<'_> {
    let rows: Vec<Row> = card
        .side_effects
        .iter()
        .map(|e| {
            // A payload can span lines (a mail message); a table cell is one line.
            let one_line = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
            let example = match (e.legacy.as_deref(), e.candidate.as_deref()) {
                (Some(l), Some(c)) => {
                    format!("legacy sent {}, the candidate {}", one_line(l), one_line(c))
                }
                (Some(l), None) => format!("legacy sent {}", one_line(l)),
                (None, Some(c)) => format!("the candidate sent {}", one_line(c)),
                (None, None) => String::new(),
            };
            Row::new(vec![
                plain(e.exchanges.to_string()),
                code(e.route.clone()),
                code(e.call.clone()),
                code(e.what.clone()),
                plain(example),
            ])
        })
        .collect();
    let spec = [
        ("exchanges", true, None),
        ("route", false, None),
        ("call", false, None),
        ("difference", false, None),
        ("example", false, Some(60)),
    ];
    let mut blocks = vec![
        Block::Lines(side_effect_count_lines(card)),
        table_or("none (or no --virtualize-egress)", &spec, rows),
    ];
    if card.side_effect_mismatched > 0 {
        blocks.push(Block::Remark(plain(format!(
            "{} compared exchange(s) would have called a dependency differently from legacy",
            card.side_effect_mismatched
        ))));
    }
    Section {
        title: "Side effects (calls to dependencies)",
        json_field: "side_effects",
        blocks,
    }
}

/// How legacy's calls were recorded and the candidate's answered (JSON
/// `side_effect_counts`).
fn side_effect_count_lines(card: &ParityCard) -> Vec<String> {
    let Some(c) = &card.side_effect_counts else {
        return vec![
            "counts: not recorded (no --dependency, or ledgers written by a build that did not \
             store them)"
                .to_string(),
        ];
    };
    let mut lines = vec![
        format!(
            "legacy calls recorded: {} (by id {}, by time window {} of them ambiguous {} and \
             taken over by a better fit {}, unattributed {}, not judged missing as unsettled {})",
            c.calls_recorded,
            c.attributed_by_id,
            c.attributed_by_window,
            c.ambiguous,
            c.taken_over,
            c.unattributed,
            c.unsettled
        ),
        format!(
            "  not kept: over the per-exchange cap {}, over the byte budget {}, lost on the \
             recorder queue {}; exchanges not replayed (side_effects_full) {}",
            c.over_cap, c.over_budget, c.recorder_queue_full, c.side_effects_full
        ),
        format!(
            "  other servers on dependency ports (neither calls nor inbound): {} exchanges",
            c.other_on_dependency_ports
        ),
        format!(
            "candidate calls: {} (answered by id {}, by content {}; unmatched 502 {}, refused \
             as ties {}, malformed {})",
            c.candidate_calls,
            c.answered_by_id,
            c.answered_by_content,
            c.unmatched,
            c.refused_as_ties,
            c.malformed
        ),
        format!(
            "compared exchanges with a side-effect diff: {}",
            c.exchanges_with_diffs
        ),
    ];
    if c.candidate_mail > 0 {
        lines.push(format!(
            "candidate mail accepted by the virtual relay (not delivered): {} messages, {} not \
             tied to an exchange",
            c.candidate_mail, c.candidate_mail_unattributed
        ));
    }
    if c.ledgers_not_recorded > 0 {
        lines.push(format!(
            "  {} ledger(s) of the selection did not record these counts",
            c.ledgers_not_recorded
        ));
    }
    lines
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
