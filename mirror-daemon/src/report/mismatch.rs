//! Noise model and mismatched counts, rebuilt from the store's per-(route, key) counts.
use serde::{Deserialize, Serialize};

use crate::compare::{NoiseClass, NoiseModel, NoiseRule, RouteNoise};
use crate::store::{DiffKindStats, RouteStats};

use super::card::MismatchBasis;
use super::input::CardEvidence;

/// How many differed exchanges of a route had exactly this set of candidate diff keys.
///
/// The store keeps one `diff_kinds` row per (exchange, key, side), so this is one query
/// away (`GROUP BY route, xid`, then by the sorted key list); until `Store::load` returns
/// it, callers can pass it to [`super::build_with`] and the report falls back to bounds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeySetCount {
    pub route: String,
    /// Distinct candidate-vs-legacy diff keys (`store::diff_kind_key`), any order.
    pub keys: Vec<String>,
    pub exchanges: u64,
}

/// Mismatched exchanges of one route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mismatch {
    /// What the verdict uses: exact, or the upper bound.
    pub count: u64,
    pub low: u64,
    pub high: u64,
    pub basis: MismatchBasis,
}

/// Whether the store holds any legacy-vs-secondary diff. The store does not record how
/// many exchanges had a secondary comparison, so this is how the report tells that
/// `--secondary` was in use.
pub(crate) fn has_secondary(ev: &CardEvidence<'_>) -> bool {
    ev.diffs.iter().any(|d| d.secondary_exchanges > 0)
}

/// The noise model the comparator would have built, from stored counts: per route,
/// `compared = matched + differed`, candidate key → exchanges, and, when secondary data
/// exists, `secondary_compared = compared` (every compared exchange is assumed to have
/// had a secondary comparison) with key → secondary exchanges.
pub fn noise_model<'a>(ev: impl Into<CardEvidence<'a>>, rule: &NoiseRule) -> NoiseModel {
    let ev = ev.into();
    let secondary = has_secondary(&ev);
    let mut model = NoiseModel::new(rule.clone());
    for r in ev.routes {
        let compared = r.matched + r.differed;
        model.routes.insert(
            r.route.clone(),
            RouteNoise {
                compared,
                secondary_compared: if secondary { compared } else { 0 },
                ..RouteNoise::default()
            },
        );
    }
    for d in ev.diffs {
        let r = model.routes.entry(d.route.clone()).or_default();
        if d.exchanges > 0 {
            r.candidate.insert(d.key.clone(), d.exchanges);
        }
        if d.secondary_exchanges > 0 {
            r.secondary.insert(d.key.clone(), d.secondary_exchanges);
        }
    }
    model
}

fn is_noise(noise: &NoiseModel, route: &str, key: &str) -> bool {
    matches!(noise.classify_key(route, key), NoiseClass::Noise { .. })
}

/// Mismatched exchanges of `route` from per-key counts alone.
///
/// Every differed exchange has at least one stored candidate key, and a mismatched one
/// has at least one non-noise key, so with S the non-noise keys and N the noise keys:
/// - low  = max(max over S of exchanges, differed - sum over N of exchanges)
/// - high = min(differed, sum over S of exchanges)
///
/// With no noise key both are `differed`.
pub fn mismatch_bounds(
    route: &RouteStats,
    kinds: &[&DiffKindStats],
    noise: &NoiseModel,
) -> Mismatch {
    let differed = route.differed;
    let (mut max_signal, mut sum_signal, mut sum_noise, mut any_noise) = (0, 0u64, 0u64, false);
    for k in kinds.iter().filter(|k| k.exchanges > 0) {
        if is_noise(noise, &route.route, &k.key) {
            any_noise = true;
            sum_noise += k.exchanges;
        } else {
            max_signal = max_signal.max(k.exchanges);
            sum_signal += k.exchanges;
        }
    }
    if !any_noise {
        return Mismatch {
            count: differed,
            low: differed,
            high: differed,
            basis: MismatchBasis::Exact,
        };
    }
    let high = differed.min(sum_signal);
    let low = max_signal.max(differed.saturating_sub(sum_noise)).min(high);
    Mismatch {
        count: high,
        low,
        high,
        basis: if low == high {
            MismatchBasis::Exact
        } else {
            MismatchBasis::UpperBound
        },
    }
}

/// Mismatched exchanges of `route` from per-exchange key sets: an exchange counts when
/// any of its keys is not noise. Differed exchanges the sets do not cover (no key rows)
/// count as mismatched, to stay conservative.
pub fn mismatched_from_key_sets(
    route: &RouteStats,
    sets: &[KeySetCount],
    noise: &NoiseModel,
) -> Mismatch {
    let mut covered = 0u64;
    let mut mismatched = 0u64;
    for s in sets.iter().filter(|s| s.route == route.route) {
        covered += s.exchanges;
        if s.keys.is_empty() || s.keys.iter().any(|k| !is_noise(noise, &s.route, k)) {
            mismatched += s.exchanges;
        }
    }
    let count = (mismatched + route.differed.saturating_sub(covered)).min(route.differed);
    Mismatch {
        count,
        low: count,
        high: count,
        basis: MismatchBasis::KeySets,
    }
}
