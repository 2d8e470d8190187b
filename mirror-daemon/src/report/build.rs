//! From [`CardEvidence`] (the store's evidence, or the live run's) to the [`ParityCard`]
//! and the verdict's [`Evidence`].
use std::collections::{BTreeMap, BTreeSet};

use crate::accounting::{DropReason, LedgerSnapshot, Outcome};
use crate::compare::{NoiseClass, NoiseModel, NoiseRule};
use crate::store::{DiffKindStats, KernelCounters};
use crate::verdict::{Criteria, Evidence, RouteEvidence, decide, evaluate};

use super::card::{
    Accounting, CARD_VERSION, CompletenessDetail, DiffCard, EgressCard, ExampleCard, KernelCard,
    LatencyCard, MismatchBasis, PairingCard, ParityCard, RouteCard, Scope, SideEffectCard,
    SideEffectCounts, StoredCard,
};
use super::input::CardEvidence;
use super::latency;
use super::mismatch::{
    KeySetCount, Mismatch, has_secondary, mismatch_bounds, mismatched_from_key_sets, noise_model,
};

/// Drops that lose captured traffic. `unsupported` is uncovered traffic (reported, not a
/// loss), `rate_limited`, `replay_queue_full` and `replay_late` are replay decisions,
/// `ring_full` is measured by the kernel in records (the kernel factor), and the losses
/// after capture (`store_*`, `stage_panic`, `shutdown_deadline`) lose evidence, not
/// traffic.
pub const CAPTURE_LOSSES: [DropReason; 7] = [
    DropReason::Gap,
    DropReason::ParseError,
    DropReason::Oversize,
    DropReason::Evicted,
    DropReason::Unpaired,
    DropReason::QueueFull,
    DropReason::FlowTableFull,
];

/// Knobs of [`build_with`].
#[derive(Clone, Debug)]
pub struct ReportOptions {
    /// Examples kept per diff on the card (the store keeps its own quota).
    pub examples_per_diff: usize,
    /// The `--since` bound used to load the evidence, for the scope line.
    pub since_unix_ms: Option<i64>,
    /// `None`: now.
    pub generated_at_unix_ms: Option<i64>,
    /// Per-exchange diff-key sets; with them mismatched counts are exact.
    pub key_sets: Option<Vec<KeySetCount>>,
}

impl Default for ReportOptions {
    fn default() -> Self {
        ReportOptions {
            examples_per_diff: 3,
            since_unix_ms: None,
            generated_at_unix_ms: None,
            key_sets: None,
        }
    }
}

fn dropped(ledger: &LedgerSnapshot, reason: DropReason) -> u64 {
    ledger
        .dropped
        .iter()
        .filter(|(r, _)| *r == reason)
        .map(|(_, n)| n)
        .sum()
}

fn rate(n: u64, of: u64) -> Option<f64> {
    (of > 0).then(|| n as f64 / of as f64)
}

/// The terms of [`completeness`].
pub fn completeness_detail(ledger: &LedgerSnapshot, kernel: &KernelCounters) -> CompletenessDetail {
    let uncovered = dropped(ledger, DropReason::Unsupported);
    let covered = ledger
        .terminal()
        .saturating_sub(uncovered)
        .saturating_sub(dropped(ledger, DropReason::RingFull));
    let capture_losses: u64 = CAPTURE_LOSSES.iter().map(|r| dropped(ledger, *r)).sum();
    let exchange_factor = if covered == 0 {
        f64::NAN
    } else {
        covered.saturating_sub(capture_losses) as f64 / covered as f64
    };
    let offered = kernel.records + kernel.ring_full;
    let kernel_factor = if offered == 0 {
        1.0
    } else {
        kernel.records as f64 / offered as f64
    };
    CompletenessDetail {
        covered,
        capture_losses,
        uncovered,
        exchange_factor,
        kernel_factor,
    }
}

/// Fraction of the captured, supported traffic that reached a terminal outcome other
/// than a capture loss, times the share of kernel records that reached the ring:
///
/// `(covered - capture_losses) / covered × records / (records + ring_full)`
///
/// with `covered` = every terminal outcome except `dropped{unsupported, ring_full}` and
/// `capture_losses` = `dropped{gap, parse_error, oversize, evicted, unpaired, queue_full,
/// flow_table_full}`.
/// NaN when `covered` is 0 (nothing to measure: the verdict reports it as not measured).
pub fn completeness(ledger: &LedgerSnapshot, kernel: &KernelCounters) -> f64 {
    let d = completeness_detail(ledger, kernel);
    d.exchange_factor * d.kernel_factor
}

/// Per-route cards, sorted by route.
fn route_cards(
    ev: &CardEvidence<'_>,
    noise: &NoiseModel,
    key_sets: Option<&[KeySetCount]>,
) -> Vec<RouteCard> {
    let mut kinds: BTreeMap<&str, Vec<&DiffKindStats>> = BTreeMap::new();
    for d in ev.diffs {
        kinds.entry(d.route.as_str()).or_default().push(d);
    }
    ev.routes
        .iter()
        .map(|r| {
            let m: Mismatch = match key_sets {
                Some(sets) => mismatched_from_key_sets(r, sets, noise),
                None => mismatch_bounds(
                    r,
                    kinds.get(r.route.as_str()).map_or(&[][..], Vec::as_slice),
                    noise,
                ),
            };
            let compared = r.matched + r.differed;
            let candidate_errors: u64 = r.candidate_errors.iter().map(|(_, n)| n).sum();
            let replayed = compared + candidate_errors;
            let latency = ev
                .latency
                .iter()
                .find(|l| l.route == r.route)
                .map(latency::route_latency)
                .unwrap_or_default();
            RouteCard {
                route: r.route.clone(),
                compared,
                matched: r.matched,
                differed: r.differed,
                mismatched: m.count,
                mismatched_low: m.low,
                mismatched_high: m.high,
                mismatch_basis: m.basis,
                mismatch_rate: rate(m.count, compared),
                candidate_errors,
                replayed,
                candidate_error_rate: rate(candidate_errors, replayed),
                status_mismatches: r.status_mismatches,
                latency,
            }
        })
        .collect()
}

/// Prefix of the diff keys of side effects (`DiffKind::SideEffect`).
pub const SIDE_EFFECT_PREFIX: &str = "side_effect(";

/// Side-effect diffs per (inbound route, call diff key), most exchanges first.
fn side_effect_cards(ev: &CardEvidence<'_>) -> Vec<SideEffectCard> {
    let mut out: Vec<SideEffectCard> = ev
        .diffs
        .iter()
        .filter(|d| d.exchanges > 0)
        .filter_map(|d| {
            let inner = d.key.strip_prefix(SIDE_EFFECT_PREFIX)?.strip_suffix(')')?;
            let (call, what) = inner.split_once(',')?;
            let example = d.examples.first();
            Some(SideEffectCard {
                route: d.route.clone(),
                call: call.to_string(),
                what: what.to_string(),
                exchanges: d.exchanges,
                legacy: example.and_then(|e| e.legacy.clone()),
                candidate: example.and_then(|e| e.candidate.clone()),
            })
        })
        .collect();
    out.sort_by(|a, b| {
        b.exchanges
            .cmp(&a.exchanges)
            .then_with(|| (&a.route, &a.call, &a.what).cmp(&(&b.route, &b.call, &b.what)))
    });
    out
}

/// Exchanges with a side-effect diff: per route the sum over side-effect keys (an
/// exchange with two kinds counts twice: an upper bound), at most the route's compared.
fn side_effect_mismatched(cards: &[SideEffectCard], routes: &[RouteCard]) -> u64 {
    routes
        .iter()
        .map(|r| {
            let n: u64 = cards
                .iter()
                .filter(|c| c.route == r.route)
                .map(|c| c.exchanges)
                .sum();
            n.min(r.compared)
        })
        .sum()
}

/// The side-effect figures of the ledgers that stored them.
fn side_effect_counts(ev: &CardEvidence<'_>) -> Option<SideEffectCounts> {
    let f = ev.side_effects_total?;
    let b = &f.book;
    Some(SideEffectCounts {
        calls_recorded: b.calls_recorded,
        attributed_by_id: b.attributed_exact,
        attributed_by_window: b.attributed_window,
        ambiguous: b.ambiguous,
        taken_over: b.taken_over,
        unsettled: b.unsettled,
        unattributed: b.unattributed,
        over_cap: b.over_cap,
        over_budget: b.over_budget,
        recorder_queue_full: f.recorder_queue_full,
        other_on_dependency_ports: f.other_on_dependency_ports,
        side_effects_full: ev
            .ledger_total
            .count(Outcome::Dropped(DropReason::SideEffectsFull)),
        candidate_calls: f.candidate_calls,
        answered_by_id: f.matched_by_id,
        answered_by_content: f.matched_by_content,
        refused_as_ties: f.content_ties,
        unmatched: f.unmatched,
        malformed: f.malformed,
        exchanges_with_diffs: f.exchanges_with_diffs,
        candidate_mail: f.smtp_messages,
        candidate_mail_unattributed: f.smtp_unattributed,
        ledgers_not_recorded: ev
            .ledgers
            .iter()
            .filter(|l| l.side_effects.is_none())
            .count() as u64,
    })
}

fn to_evidence(routes: &[RouteCard], latency: &LatencyCard, completeness: f64) -> Evidence {
    Evidence {
        side_effect_mismatched: 0,
        compared: routes.iter().map(|r| r.compared).sum(),
        mismatched: routes.iter().map(|r| r.mismatched).sum(),
        candidate_errors: routes.iter().map(|r| r.candidate_errors).sum(),
        replayed: routes.iter().map(|r| r.replayed).sum(),
        completeness,
        p95_legacy_ttlb_ns: latency.legacy.ttlb.p95_ns,
        p95_candidate_ttlb_ns: latency.candidate.ttlb.p95_ns,
        p95_ttlb_delta_interval_ns: latency.p95_ttlb_delta_interval_ns,
        per_route: routes
            .iter()
            .map(|r| {
                (
                    r.route.clone(),
                    RouteEvidence {
                        compared: r.compared,
                        mismatched: r.mismatched,
                        candidate_errors: r.candidate_errors,
                        replayed: r.replayed,
                        p95_legacy_ttlb_ns: r.latency.legacy.ttlb.p95_ns,
                        p95_candidate_ttlb_ns: r.latency.candidate.ttlb.p95_ns,
                        p95_ttlb_delta_interval_ns: r.latency.p95_ttlb_delta_interval_ns,
                    },
                )
            })
            .collect(),
    }
}

/// What the verdict sees. Counts and rates are over the exchanges in the store;
/// completeness is over the ledgers. Mismatched counts use the bounds of
/// [`mismatch_bounds`] (the upper one when noise keys make them differ).
pub fn evidence<'a>(ev: impl Into<CardEvidence<'a>>, noise: &NoiseModel) -> Evidence {
    evidence_with(ev, noise, None)
}

/// [`evidence`], with exact mismatched counts from per-exchange key sets when given.
pub fn evidence_with<'a>(
    ev: impl Into<CardEvidence<'a>>,
    noise: &NoiseModel,
    key_sets: Option<&[KeySetCount]>,
) -> Evidence {
    let ev = ev.into();
    let routes = route_cards(&ev, noise, key_sets);
    let latency = latency::overall(ev.latency);
    let mut e = to_evidence(
        &routes,
        &latency,
        completeness(ev.ledger_total, ev.kernel_total),
    );
    e.side_effect_mismatched = side_effect_mismatched(&side_effect_cards(&ev), &routes);
    e
}

/// The `--ignore` flag that would silence a diff key (same spelling as
/// `compare::suggested_ignore`, from the stored key text).
pub fn suggested_ignore_for_key(key: &str) -> Option<String> {
    if let Some(inner) = key.strip_prefix("field(").and_then(|s| s.strip_suffix(')')) {
        let (path, _how) = inner.rsplit_once(',')?;
        return Some(format!("--ignore 'json:{path}'"));
    }
    let name = key.strip_prefix("header(")?.strip_suffix(')')?;
    Some(format!("--ignore header:{name}"))
}

fn class_rank(c: &NoiseClass) -> u8 {
    match c {
        NoiseClass::Signal => 0,
        NoiseClass::LikelyNoise => 1,
        NoiseClass::Noise { .. } => 2,
    }
}

fn diff_cards(
    ev: &CardEvidence<'_>,
    noise: &NoiseModel,
    routes: &[RouteCard],
    examples: usize,
) -> Vec<DiffCard> {
    let secondary = has_secondary(ev);
    let compared = |route: &str| {
        routes
            .iter()
            .find(|r| r.route == route)
            .map_or(0, |r| r.compared)
    };
    let mut out: Vec<DiffCard> = ev
        .diffs
        .iter()
        // Keys legacy shows only against itself are not candidate diffs.
        .filter(|d| d.exchanges > 0)
        .map(|d| {
            let class = noise.classify_key(&d.route, &d.key);
            let n = compared(&d.route);
            DiffCard {
                route: d.route.clone(),
                key: d.key.clone(),
                count: d.exchanges,
                occurrences: d.diffs,
                rate: rate(d.exchanges, n),
                counts_as_mismatch: !matches!(class, NoiseClass::Noise { .. }),
                suggested_ignore: match class {
                    NoiseClass::Signal => None,
                    _ => suggested_ignore_for_key(&d.key),
                },
                class,
                secondary_count: secondary.then_some(d.secondary_exchanges),
                secondary_rate: if secondary {
                    rate(d.secondary_exchanges, n)
                } else {
                    None
                },
                examples: d
                    .examples
                    .iter()
                    .take(examples)
                    .map(|e| ExampleCard {
                        id: e.id.clone(),
                        host: e.host.clone(),
                        run_id: e.run_id.clone(),
                        ts_unix_ms: e.ts_unix_ms,
                        legacy: e.legacy.clone(),
                        candidate: e.candidate.clone(),
                        has_bodies: e.bodies.is_some(),
                    })
                    .collect(),
                examples_not_kept: d.examples_dropped,
            }
        })
        .collect();
    out.sort_by(|a, b| {
        (
            class_rank(&a.class),
            std::cmp::Reverse(a.count),
            &a.route,
            &a.key,
        )
            .cmp(&(
                class_rank(&b.class),
                std::cmp::Reverse(b.count),
                &b.route,
                &b.key,
            ))
    });
    out
}

fn accounting(ev: &CardEvidence<'_>, routes: &[RouteCard]) -> Accounting {
    let l = ev.ledger_total;
    let k = ev.kernel_total;
    let in_flight = l.in_flight();
    Accounting {
        seen: l.seen,
        matched: l.matched,
        differed: l.differed,
        sampled_out: l.sampled_out,
        excluded: l.excluded,
        candidate_errors: l
            .candidate_error
            .iter()
            .map(|(k, n)| (k.as_str().to_string(), *n))
            .collect(),
        candidate_errors_total: l.candidate_errors(),
        dropped: l
            .dropped
            .iter()
            .map(|(r, n)| (r.as_str().to_string(), *n))
            .collect(),
        dropped_total: l.drops(),
        in_flight,
        identity_holds: l.seen == l.terminal() + in_flight,
        kernel: KernelCard {
            segments: k.segments,
            payload_bytes: k.payload_bytes,
            records: k.records,
            ring_full: k.ring_full,
            pre_sampled: k.sampled_out,
            oversize_bytes: k.oversize,
            load_errors: k.load_errors,
        },
        pairing: ev.pairing_total.map(|p| PairingCard {
            exchanges: p.exchanges,
            proven: p.proven,
            dropped_at_join: p.dropped_at_join,
            responses_unpaired: p.responses_unpaired,
            dropped_at_end: p.dropped_at_end,
            ledgers_not_recorded: ev.ledgers.iter().filter(|l| l.pairing.is_none()).count() as u64,
        }),
        stored: StoredCard {
            compared: routes.iter().map(|r| r.compared).sum(),
            candidate_errors: routes.iter().map(|r| r.candidate_errors).sum(),
        },
    }
}

fn scope(ev: &CardEvidence<'_>, opts: &ReportOptions) -> Scope {
    let hosts: BTreeSet<&str> = ev
        .runs
        .iter()
        .map(|r| r.host.as_str())
        .chain(ev.ledgers.iter().map(|l| l.host.as_str()))
        .collect();
    let runs: BTreeSet<&str> = ev
        .runs
        .iter()
        .map(|r| r.run_id.as_str())
        .chain(ev.ledgers.iter().map(|l| l.run_id.as_str()))
        .collect();
    Scope {
        hosts: hosts.into_iter().map(str::to_string).collect(),
        run_ids: runs.into_iter().map(str::to_string).collect(),
        since_unix_ms: opts.since_unix_ms,
        first_run_started_unix_ms: ev.runs.iter().map(|r| r.started_unix_ms).min(),
        last_ledger_unix_ms: ev.ledgers.iter().map(|l| l.ts_unix_ms).max(),
        generated_at_unix_ms: opts
            .generated_at_unix_ms
            .unwrap_or_else(crate::clock::unix_ms),
    }
}

fn notes(ev: &CardEvidence<'_>, card: &ParityCard) -> Vec<String> {
    let mut out = Vec::new();
    let a = &card.accounting;
    if !a.identity_holds {
        out.push(format!(
            "accounting identity broken: terminal outcomes ({}) exceed seen ({}); \
             ledgers of different ages or a counting bug",
            ev.ledger_total.terminal(),
            a.seen
        ));
    }
    for r in &card.routes {
        if r.mismatch_basis == MismatchBasis::UpperBound {
            out.push(format!(
                "{}: some differed exchanges have noise diffs and the store gave no \
                 per-exchange key sets, so mismatched uses the upper bound {} (lower bound {})",
                r.route, r.mismatched_high, r.mismatched_low
            ));
        }
    }
    if has_secondary(ev) {
        out.push(
            "secondary (legacy vs legacy) data found: every compared exchange is assumed to \
             have had a secondary comparison"
                .to_string(),
        );
    }
    if let Some(p) = &a.pairing
        && p.ledgers_not_recorded > 0
    {
        out.push(format!(
            "pairing figures cover {} of {} ledgers: the others were written by a build that \
             did not store them",
            ev.ledgers.len() as u64 - p.ledgers_not_recorded,
            ev.ledgers.len()
        ));
    }
    let ledger_compared = a.matched + a.differed;
    if a.stored.compared != ledger_compared {
        out.push(format!(
            "the store holds {} compared exchanges, the ledgers count {} (retention, --since, \
             or writes in progress); rates and latencies use the store",
            a.stored.compared, ledger_compared
        ));
    }
    if card.latency.weighted {
        out.push(
            "latency: the store sampled some routes; run-wide percentiles weight each \
             route's samples by exchanges / samples"
                .to_string(),
        );
    }
    out
}

/// The parity card with default options (see [`build_with`]).
pub fn build<'a>(
    ev: impl Into<CardEvidence<'a>>,
    criteria: &Criteria,
    noise_rule: &NoiseRule,
) -> ParityCard {
    build_with(ev, criteria, noise_rule, &ReportOptions::default())
}

/// The floor the p95 criteria were judged with, and the candidate's CPU cap (as the
/// runs recorded it) and the daemon's own quota stops as caveats when a p95 criterion is
/// set; runs that did not record the cap are counted and said.
fn latency_with_caveats(
    mut l: LatencyCard,
    ev: &CardEvidence<'_>,
    criteria: &Criteria,
) -> LatencyCard {
    let recorded: Vec<_> = ev.runs.iter().map(super::CandidateCpuCap::of_run).collect();
    let cap = recorded
        .iter()
        .filter_map(|r| r.ok().flatten())
        .min_by_key(|c| c.percent);
    let not_recorded = recorded.iter().filter(|r| r.is_err()).count();
    l.candidate_cpu_cap_percent = cap.map(|c| c.percent);
    l.candidate_cpu_not_recorded_runs = not_recorded as u64;
    if criteria.judges_p95() {
        l.min_latency_delta_ns = criteria.min_latency_delta_ns;
        l.caveats.extend(cap.map(|c| c.caveat()));
        l.caveats.extend(ev.kernel_total.daemon_quota.caveat());
        if not_recorded > 0 {
            l.caveats.push(format!(
                "the candidate's CPU was not recorded for {not_recorded} of {} runs \
                 (written by a build before store schema 4): a CPU cap on the candidate \
                 cannot be ruled out",
                recorded.len()
            ));
        }
    }
    l
}

pub fn build_with<'a>(
    ev: impl Into<CardEvidence<'a>>,
    criteria: &Criteria,
    noise_rule: &NoiseRule,
    opts: &ReportOptions,
) -> ParityCard {
    let ev = ev.into();
    let noise = noise_model(ev, noise_rule);
    let routes = route_cards(&ev, &noise, opts.key_sets.as_deref());
    let latency = latency_with_caveats(latency::overall(ev.latency), &ev, criteria);
    let detail = completeness_detail(ev.ledger_total, ev.kernel_total);
    let completeness = detail.exchange_factor * detail.kernel_factor;
    let mut evidence = to_evidence(&routes, &latency, completeness);
    let side_effects = side_effect_cards(&ev);
    evidence.side_effect_mismatched = side_effect_mismatched(&side_effects, &routes);
    let verdict = decide(criteria, &evidence);
    let mut card = ParityCard {
        version: CARD_VERSION,
        scope: scope(&ev, opts),
        accounting: accounting(&ev, &routes),
        completeness,
        completeness_detail: detail,
        diffs: diff_cards(&ev, &noise, &routes, opts.examples_per_diff),
        side_effect_mismatched: evidence.side_effect_mismatched,
        side_effect_counts: side_effect_counts(&ev),
        side_effects,
        routes,
        latency,
        egress: ev
            .egress
            .iter()
            .map(|e| EgressCard {
                destination: e.destination.clone(),
                protocol: e.protocol.clone(),
                action: e.action,
                attempts: e.attempts,
                hosts: e.hosts,
                first_seen_unix_ms: e.first_seen_ms,
                last_seen_unix_ms: e.last_seen_ms,
                commands: e.commands.clone(),
            })
            .collect(),
        criteria: evaluate(criteria, &evidence),
        exit_code: verdict.exit_code(),
        verdict,
        notes: Vec::new(),
    };
    card.notes = notes(&ev, &card);
    card
}
