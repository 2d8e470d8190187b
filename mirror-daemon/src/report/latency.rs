//! Latency percentiles from the store's raw samples (nearest rank), and an interval for
//! the difference of the two sides' p95.
//!
//! The interval is distribution-free and deterministic: for each side, the order
//! statistics whose ranks bracket `0.95·n` by `z·√(n·0.95·0.05)` (the binomial
//! interval of the p95's rank, `z` for 97.5 % per side) bound that side's p95; the
//! difference's interval is `[cand_lo − legacy_hi, cand_hi − legacy_lo]`, which covers
//! with at least 95 %. With few samples the ranks reach the extremes and the interval is
//! wide: a small sample cannot prove a regression.
use crate::store::{LatencySample, RouteLatency};

use super::card::{LatencyCard, Percentiles, RouteLatencyCard, SideLatency};

/// The values of `v` at 1-based `ranks` (each in `1..=v.len()`) as if `v` were sorted,
/// by successive selection: O(n) where sorting was O(n log n), the same values. The live
/// card draws every route's percentiles twice a second from up to 20 000 samples each.
/// (Nearest rank, as `store::percentile` takes it from sorted values.)
fn at_ranks(v: &mut [u64], ranks: &[usize]) -> Vec<u64> {
    let mut order: Vec<usize> = (0..ranks.len()).collect();
    order.sort_by_key(|&i| ranks[i]);
    let mut out = vec![0; ranks.len()];
    // v[..placed] are the `placed` smallest values, v[placed - 1] the largest of them.
    let mut placed = 0;
    for i in order {
        let at = ranks[i].clamp(1, v.len().max(1)) - 1;
        if at >= placed {
            v[placed..].select_nth_unstable(at - placed);
            placed = at + 1;
        }
        out[i] = v.get(at).copied().unwrap_or_default();
    }
    out
}

/// The nearest rank of `q` among `n` values, as `store::percentile` takes it.
fn nearest_rank(q: f64, n: usize) -> usize {
    ((q.clamp(0.0, 1.0) * n as f64).ceil() as usize).clamp(1, n)
}

fn percentiles(mut v: Vec<u64>) -> Percentiles {
    if v.is_empty() {
        return Percentiles::default();
    }
    let n = v.len();
    let ranks = [0.50, 0.95, 0.99].map(|q| nearest_rank(q, n));
    let at = at_ranks(&mut v, &ranks);
    Percentiles {
        p50_ns: Some(at[0]),
        p95_ns: Some(at[1]),
        p99_ns: Some(at[2]),
    }
}

/// Nearest rank over weighted values: the smallest value whose cumulative weight reaches
/// `q` of the total. With every weight 1 this is `store::percentile`.
fn weighted_percentile(sorted: &[(u64, f64)], q: f64) -> Option<u64> {
    let total: f64 = sorted.iter().map(|(_, w)| w).sum();
    // Slack for float sums: a target hit exactly must not slip to the next value.
    let target = q.clamp(0.0, 1.0) * total - total * 1e-12;
    let mut cum = 0.0;
    for (v, w) in sorted {
        cum += w;
        if cum >= target {
            return Some(*v);
        }
    }
    sorted.last().map(|(v, _)| *v)
}

fn weighted_percentiles(mut v: Vec<(u64, f64)>) -> Percentiles {
    v.sort_by_key(|a| a.0);
    Percentiles {
        p50_ns: weighted_percentile(&v, 0.50),
        p95_ns: weighted_percentile(&v, 0.95),
        p99_ns: weighted_percentile(&v, 0.99),
    }
}

/// Two-sided normal quantile for 97.5 % per side (Bonferroni over the two sides).
const Z_PER_SIDE: f64 = 2.2414;

/// Ranks (1-based) of the order statistics that bound the p95 of `n` samples.
fn p95_bound_ranks(n: usize) -> (f64, f64) {
    let (nf, p) = (n as f64, 0.95);
    let half = Z_PER_SIDE * (nf * p * (1.0 - p)).sqrt();
    let lo_rank = (nf * p - half).floor().max(1.0);
    let hi_rank = ((nf * p + half).ceil() + 1.0).min(nf);
    (lo_rank, hi_rank)
}

/// Bounds of the p95 of `sorted` (value, weight) pairs drawn from `n` samples.
fn p95_bounds(sorted: &[(u64, f64)], n: usize) -> Option<(u64, u64)> {
    if n == 0 {
        return None;
    }
    let nf = n as f64;
    let (lo_rank, hi_rank) = p95_bound_ranks(n);
    Some((
        weighted_percentile(sorted, lo_rank / nf)?,
        weighted_percentile(sorted, hi_rank / nf)?,
    ))
}

/// [`p95_bounds`] of unweighted samples, by selection (no sort).
fn p95_bounds_unit(mut v: Vec<u64>) -> Option<(u64, u64)> {
    if v.is_empty() {
        return None;
    }
    let (lo_rank, hi_rank) = p95_bound_ranks(v.len());
    let at = at_ranks(&mut v, &[lo_rank as usize, hi_rank as usize]);
    Some((at[0], at[1]))
}

/// Interval of `candidate p95 − legacy p95` (ns).
fn delta_interval(
    mut legacy: Vec<(u64, f64)>,
    mut candidate: Vec<(u64, f64)>,
) -> Option<(i64, i64)> {
    legacy.sort_by_key(|a| a.0);
    candidate.sort_by_key(|a| a.0);
    let (l_lo, l_hi) = p95_bounds(&legacy, legacy.len())?;
    let (c_lo, c_hi) = p95_bounds(&candidate, candidate.len())?;
    Some((c_lo as i64 - l_hi as i64, c_hi as i64 - l_lo as i64))
}

fn ttlb_interval(samples: &[LatencySample]) -> Option<(i64, i64)> {
    let (l_lo, l_hi) = p95_bounds_unit(samples.iter().map(|s| s.legacy_ttlb_ns).collect())?;
    let (c_lo, c_hi) =
        p95_bounds_unit(samples.iter().filter_map(|s| s.candidate_ttlb_ns).collect())?;
    Some((c_lo as i64 - l_hi as i64, c_hi as i64 - l_lo as i64))
}

pub(crate) fn delta(legacy: Option<u64>, candidate: Option<u64>) -> Option<i64> {
    Some(candidate? as i64 - legacy? as i64)
}

pub(crate) fn ratio(legacy: Option<u64>, candidate: Option<u64>) -> Option<f64> {
    match (legacy, candidate) {
        (Some(l), Some(c)) if l > 0 => Some(c as f64 / l as f64),
        _ => None,
    }
}

fn legacy_side(samples: &[LatencySample]) -> SideLatency {
    SideLatency {
        samples: samples.len() as u64,
        ttfb: percentiles(samples.iter().map(|s| s.legacy_ttfb_ns).collect()),
        ttlb: percentiles(samples.iter().map(|s| s.legacy_ttlb_ns).collect()),
    }
}

fn candidate_side(samples: &[LatencySample]) -> SideLatency {
    let ttlb: Vec<u64> = samples.iter().filter_map(|s| s.candidate_ttlb_ns).collect();
    SideLatency {
        samples: ttlb.len() as u64,
        ttfb: percentiles(samples.iter().filter_map(|s| s.candidate_ttfb_ns).collect()),
        ttlb: percentiles(ttlb),
    }
}

pub(crate) fn route_latency(r: &RouteLatency) -> RouteLatencyCard {
    let legacy = legacy_side(&r.samples);
    let candidate = candidate_side(&r.samples);
    RouteLatencyCard {
        exchanges: r.exchanges,
        p95_ttlb_ratio: ratio(legacy.ttlb.p95_ns, candidate.ttlb.p95_ns),
        p95_ttlb_delta_ns: delta(legacy.ttlb.p95_ns, candidate.ttlb.p95_ns),
        p95_ttlb_delta_interval_ns: ttlb_interval(&r.samples),
        legacy,
        candidate,
    }
}

/// Run-wide figures. The store returns at most N samples per route, so when a route was
/// sampled its samples are weighted by `exchanges / samples` to keep busy routes from
/// being under-represented; otherwise the samples are pooled as they are.
pub(crate) fn overall(routes: &[RouteLatency]) -> LatencyCard {
    let exchanges = routes.iter().map(|r| r.exchanges).sum();
    let sampled = routes
        .iter()
        .any(|r| (r.samples.len() as u64) < r.exchanges && !r.samples.is_empty());
    if !sampled {
        let all: Vec<LatencySample> = routes.iter().flat_map(|r| r.samples.clone()).collect();
        let legacy = legacy_side(&all);
        let candidate = candidate_side(&all);
        return LatencyCard {
            exchanges,
            p95_ttlb_ratio: ratio(legacy.ttlb.p95_ns, candidate.ttlb.p95_ns),
            p95_ttlb_delta_ns: delta(legacy.ttlb.p95_ns, candidate.ttlb.p95_ns),
            p95_ttlb_delta_interval_ns: ttlb_interval(&all),
            legacy,
            candidate,
            weighted: false,
            ..LatencyCard::default()
        };
    }
    let mut v: [Vec<(u64, f64)>; 4] = Default::default();
    let (mut n_legacy, mut n_candidate) = (0u64, 0u64);
    for r in routes.iter().filter(|r| !r.samples.is_empty()) {
        let w = r.exchanges.max(r.samples.len() as u64) as f64 / r.samples.len() as f64;
        for s in &r.samples {
            v[0].push((s.legacy_ttfb_ns, w));
            v[1].push((s.legacy_ttlb_ns, w));
            n_legacy += 1;
            if let Some(t) = s.candidate_ttfb_ns {
                v[2].push((t, w));
            }
            if let Some(t) = s.candidate_ttlb_ns {
                v[3].push((t, w));
                n_candidate += 1;
            }
        }
    }
    let [lf, ll, cf, cl] = v;
    let interval = delta_interval(ll.clone(), cl.clone());
    let legacy = SideLatency {
        samples: n_legacy,
        ttfb: weighted_percentiles(lf),
        ttlb: weighted_percentiles(ll),
    };
    let candidate = SideLatency {
        samples: n_candidate,
        ttfb: weighted_percentiles(cf),
        ttlb: weighted_percentiles(cl),
    };
    LatencyCard {
        exchanges,
        p95_ttlb_ratio: ratio(legacy.ttlb.p95_ns, candidate.ttlb.p95_ns),
        p95_ttlb_delta_ns: delta(legacy.ttlb.p95_ns, candidate.ttlb.p95_ns),
        p95_ttlb_delta_interval_ns: interval,
        legacy,
        candidate,
        weighted: true,
        ..LatencyCard::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::percentile;

    #[test]
    fn weighted_matches_nearest_rank_with_unit_weights() {
        let v: Vec<u64> = (1..=100).collect();
        let w: Vec<(u64, f64)> = v.iter().map(|x| (*x, 1.0)).collect();
        for q in [0.0, 0.5, 0.95, 0.99, 1.0] {
            assert_eq!(weighted_percentile(&w, q), percentile(&v, q), "q={q}");
        }
        // A heavy value dominates.
        let w = vec![(1, 1.0), (10, 99.0)];
        assert_eq!(weighted_percentile(&w, 0.5), Some(10));
        assert_eq!(weighted_percentile(&w, 0.01), Some(1));
        assert_eq!(weighted_percentile(&[], 0.5), None);
    }

    /// Selection gives the values sorting gives: the percentiles and the p95's bounds,
    /// on random samples with ties, of every size from 1 up.
    #[test]
    fn selection_matches_sorting() {
        use rand::{Rng as _, SeedableRng as _};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for n in (1..200).chain([999, 1000, 1001, 20_000]) {
            let v: Vec<u64> = (0..n).map(|_| rng.gen_range(0..n as u64 / 3 + 2)).collect();
            let mut sorted = v.clone();
            sorted.sort_unstable();
            let got = percentiles(v.clone());
            assert_eq!(got.p50_ns, percentile(&sorted, 0.50), "n={n}");
            assert_eq!(got.p95_ns, percentile(&sorted, 0.95), "n={n}");
            assert_eq!(got.p99_ns, percentile(&sorted, 0.99), "n={n}");
            let pairs: Vec<(u64, f64)> = sorted.iter().map(|x| (*x, 1.0)).collect();
            assert_eq!(p95_bounds_unit(v), p95_bounds(&pairs, n), "n={n}");
        }
        assert_eq!(percentiles(Vec::new()), Percentiles::default());
        assert_eq!(p95_bounds_unit(Vec::new()), None);
    }

    fn sample(legacy: u64, candidate: u64) -> LatencySample {
        LatencySample {
            legacy_ttlb_ns: legacy,
            legacy_ttfb_ns: legacy,
            candidate_ttlb_ns: Some(candidate),
            candidate_ttfb_ns: Some(candidate),
        }
    }

    #[test]
    fn tiny_latencies_with_few_samples_prove_nothing() {
        // 20 samples a side, 40..59 µs; the candidate's two slowest are 70 and 75 µs, so
        // its p95 is 70 µs against 58 µs (+21 %), but the interval of the difference
        // spans zero: two tail samples prove nothing.
        let legacy: Vec<u64> = (40..60).map(|us| us * 1_000).collect();
        let mut candidate = legacy.clone();
        candidate[18] = 70_000;
        candidate[19] = 75_000;
        let samples: Vec<LatencySample> = legacy
            .iter()
            .zip(&candidate)
            .map(|(l, c)| sample(*l, *c))
            .collect();
        let card = route_latency(&RouteLatency {
            route: "GET /health".into(),
            exchanges: 20,
            samples: samples.clone(),
        });
        assert_eq!(card.p95_ttlb_delta_ns, Some(12_000));
        let (lo, hi) = ttlb_interval(&samples).unwrap();
        assert!(lo <= 0 && hi > 0, "[{lo}, {hi}]");
    }

    #[test]
    fn a_large_clear_slowdown_is_beyond_the_interval() {
        // Candidate twice as slow on 1000 samples: the interval lies above zero.
        let samples: Vec<LatencySample> = (0..1000u64)
            .map(|i| sample(1_000_000 + i * 1_000, 2 * (1_000_000 + i * 1_000)))
            .collect();
        let (lo, hi) = ttlb_interval(&samples).unwrap();
        assert!(lo > 0 && hi >= lo, "[{lo}, {hi}]");
        // Identical sides: the interval holds zero.
        let same: Vec<LatencySample> = (0..1000u64)
            .map(|i| sample(1_000_000 + i * 1_000, 1_000_000 + i * 1_000))
            .collect();
        let (lo, hi) = ttlb_interval(&same).unwrap();
        assert!(lo < 0 && hi > 0, "[{lo}, {hi}]");
        assert_eq!(lo, -hi, "symmetric for identical sides");
    }
}
