//! The card as the dashboard's snapshot views.
use std::net::SocketAddr;

use crate::serve::{
    CriterionView, DiffView, EgressView, ExampleView, LatencyView, RouteView, VerdictView,
};
use crate::verdict::Verdict;

use super::card::{ParityCard, SideLatency};
use super::render::{at_least, criterion_value};

fn ms(ns: Option<u64>) -> f64 {
    ns.map_or(0.0, |v| v as f64 / 1e6)
}

/// Time to last byte, what the verdict judges.
fn latency_view(s: &SideLatency) -> LatencyView {
    LatencyView {
        p50_ms: ms(s.ttlb.p50_ns),
        p95_ms: ms(s.ttlb.p95_ns),
        p99_ms: ms(s.ttlb.p99_ns),
        count: s.samples,
    }
}

fn verdict_view(card: &ParityCard) -> VerdictView {
    VerdictView {
        status: card.verdict.label().to_string(),
        criteria: card
            .criteria
            .iter()
            .map(|c| CriterionView {
                name: c.name.clone(),
                limit: format!(
                    "{} {}",
                    if at_least(c) { ">=" } else { "<=" },
                    criterion_value(c, c.limit)
                ),
                measured: c
                    .measured
                    .map_or_else(|| "not measured".into(), |v| criterion_value(c, v)),
                passed: c.passed,
            })
            .collect(),
        reasons: match &card.verdict {
            Verdict::Go => Vec::new(),
            Verdict::NoGo { failing } => failing.iter().map(ToString::to_string).collect(),
            Verdict::InsufficientEvidence { reasons } => reasons.clone(),
        },
        caveats: card.latency.caveats.clone(),
    }
}

/// The dashboard's views of the card. Latency views are time to last byte. Egress
/// groups whose stored destination is not an address are left out (the store writes
/// `SocketAddr` text, so this only drops corrupt rows); their commands are joined into
/// `last_command`, since the store keeps the set, not the order.
pub fn live_views(
    card: &ParityCard,
) -> (VerdictView, Vec<RouteView>, Vec<DiffView>, Vec<EgressView>) {
    let routes = card
        .routes
        .iter()
        .map(|r| RouteView {
            route: r.route.clone(),
            exchanges: r.replayed,
            matched: r.matched,
            differed: r.differed,
            candidate_errors: r.candidate_errors,
            mismatch_rate: r.mismatch_rate.unwrap_or(0.0),
            legacy: latency_view(&r.latency.legacy),
            candidate: latency_view(&r.latency.candidate),
            p95_ratio: r.latency.p95_ttlb_ratio,
        })
        .collect();
    let diffs = card
        .diffs
        .iter()
        .map(|d| DiffView {
            route: d.route.clone(),
            kind: d.key.clone(),
            count: d.count,
            rate: d.rate.unwrap_or(0.0),
            class: d.class.as_str().into(),
            examples: d
                .examples
                .iter()
                .map(|e| ExampleView {
                    id: e.id.clone(),
                    legacy: e.legacy.clone().unwrap_or_default(),
                    candidate: e.candidate.clone().unwrap_or_default(),
                })
                .collect(),
        })
        .collect();
    let egress = card
        .egress
        .iter()
        .filter_map(|e| {
            let destination: SocketAddr = e.destination.parse().ok()?;
            Some(EgressView {
                destination,
                protocol: e.protocol.clone(),
                action: e.action,
                count: e.attempts,
                last_command: e.commands.join(","),
                last_seen_unix_ms: e.last_seen_unix_ms,
            })
        })
        .collect();
    (verdict_view(card), routes, diffs, egress)
}
