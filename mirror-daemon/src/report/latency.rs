//! Latency percentiles from the store's raw samples (nearest rank).
use crate::store::{LatencySample, RouteLatency, percentile};

use super::card::{LatencyCard, Percentiles, RouteLatencyCard, SideLatency};

fn percentiles(mut v: Vec<u64>) -> Percentiles {
    v.sort_unstable();
    Percentiles {
        p50_ns: percentile(&v, 0.50),
        p95_ns: percentile(&v, 0.95),
        p99_ns: percentile(&v, 0.99),
    }
}

/// Nearest rank over weighted values: the smallest value whose cumulative weight reaches
/// `q` of the total. With every weight 1 this is [`percentile`].
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
            legacy,
            candidate,
            weighted: false,
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
        legacy,
        candidate,
        weighted: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
