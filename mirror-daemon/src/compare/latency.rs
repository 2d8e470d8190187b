//! Latency per route, legacy and candidate, time to first and to last byte.
//!
//! HDR histograms with 3 significant digits over 1 µs..60 s, recorded in microseconds
//! (values over 60 s are clamped to 60 s; sub-microsecond values round to 0 or 1 µs).
//! Reported figures are in nanoseconds to match `Timing`.
//!
//! Serialization: hdrhistogram's V2 codec is behind a feature this workspace does not
//! enable, so a histogram is stored as its non-empty buckets, `[[value_us, count], …]`:
//! lossless at the histogram's precision, compact (a few hundred pairs for real
//! latencies), and readable by anything.
//!
//! Memory: one histogram over this range at 2 significant digits (1 % resolution) is
//! 2 560 u64 counters (~20 KB); they are allocated lazily per route, side and metric, so a
//! route seen on both sides costs ~80 KB and the 500-route cap ~40 MB in the worst case
//! (3 digits would cost 7× that).
use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use super::CompareError;

const LOW_US: u64 = 1;
const HIGH_US: u64 = 60_000_000;
const SIGFIG: u8 = 2;

/// Which service a timing belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    Legacy,
    Candidate,
}

#[derive(Clone, Debug)]
struct Hist(Histogram<u64>);

#[derive(Serialize, Deserialize)]
struct HistRepr {
    unit: String,
    buckets: Vec<(u64, u64)>,
}

impl Hist {
    fn new() -> Option<Hist> {
        Histogram::new_with_bounds(LOW_US, HIGH_US, SIGFIG)
            .ok()
            .map(Hist)
    }

    fn record_ns(&mut self, ns: u64) {
        self.0.saturating_record(ns.saturating_add(500) / 1000);
    }

    fn at_ns(&self, q: f64) -> u64 {
        self.0.value_at_quantile(q).saturating_mul(1000)
    }
}

impl Serialize for Hist {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let buckets = self
            .0
            .iter_recorded()
            .map(|v| (v.value_iterated_to(), v.count_at_value()))
            .collect();
        HistRepr {
            unit: "us".into(),
            buckets,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Hist {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let repr = HistRepr::deserialize(d)?;
        if repr.unit != "us" {
            return Err(D::Error::custom(format!(
                "histogram unit `{}`, expected `us`",
                repr.unit
            )));
        }
        let mut h = Hist::new().ok_or_else(|| D::Error::custom("cannot create histogram"))?;
        for (v, n) in repr.buckets {
            h.0.record_n(v, n)
                .map_err(|e| D::Error::custom(format!("histogram value {v}: {e:?}")))?;
        }
        Ok(h)
    }
}

/// Percentiles of one histogram, in nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50_ns: u64,
    pub p95_ns: u64,
    pub p99_ns: u64,
}

/// One side of a route.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SideSummary {
    pub ttfb: Option<Percentiles>,
    pub ttlb: Option<Percentiles>,
}

/// Candidate vs legacy for one percentile: `ratio = candidate / legacy`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LatencyDelta {
    /// `ttfb_p50`, `ttfb_p95`, `ttfb_p99`, `ttlb_p50`, …
    pub metric: String,
    pub legacy_ns: u64,
    pub candidate_ns: u64,
    pub ratio: f64,
    pub legacy_samples: u64,
    pub candidate_samples: u64,
}

/// Histograms of one route; each is created on first use.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RouteLatency {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    legacy_ttfb: Option<Hist>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    legacy_ttlb: Option<Hist>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    candidate_ttfb: Option<Hist>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    candidate_ttlb: Option<Hist>,
}

fn slot(h: &mut Option<Hist>) -> Option<&mut Hist> {
    if h.is_none() {
        *h = Hist::new();
    }
    h.as_mut()
}

fn percentiles(h: &Option<Hist>) -> Option<Percentiles> {
    let h = h.as_ref().filter(|h| !h.0.is_empty())?;
    Some(Percentiles {
        count: h.0.len(),
        p50_ns: h.at_ns(0.50),
        p95_ns: h.at_ns(0.95),
        p99_ns: h.at_ns(0.99),
    })
}

fn add(into: &mut Option<Hist>, from: &Option<Hist>) -> Result<(), CompareError> {
    let Some(from) = from else { return Ok(()) };
    match into {
        Some(h) => {
            h.0.add(&from.0)
                .map_err(|e| CompareError::Invalid(format!("merging latency histograms: {e:?}")))
        }
        None => {
            *into = Some(from.clone());
            Ok(())
        }
    }
}

impl RouteLatency {
    pub fn record(&mut self, side: Side, ttfb_ns: u64, ttlb_ns: u64) {
        let (f, l) = match side {
            Side::Legacy => (&mut self.legacy_ttfb, &mut self.legacy_ttlb),
            Side::Candidate => (&mut self.candidate_ttfb, &mut self.candidate_ttlb),
        };
        if let Some(h) = slot(f) {
            h.record_ns(ttfb_ns);
        }
        if let Some(h) = slot(l) {
            h.record_ns(ttlb_ns);
        }
    }

    pub fn merge(&mut self, other: &RouteLatency) -> Result<(), CompareError> {
        add(&mut self.legacy_ttfb, &other.legacy_ttfb)?;
        add(&mut self.legacy_ttlb, &other.legacy_ttlb)?;
        add(&mut self.candidate_ttfb, &other.candidate_ttfb)?;
        add(&mut self.candidate_ttlb, &other.candidate_ttlb)
    }

    pub fn summary(&self, side: Side) -> SideSummary {
        match side {
            Side::Legacy => SideSummary {
                ttfb: percentiles(&self.legacy_ttfb),
                ttlb: percentiles(&self.legacy_ttlb),
            },
            Side::Candidate => SideSummary {
                ttfb: percentiles(&self.candidate_ttfb),
                ttlb: percentiles(&self.candidate_ttlb),
            },
        }
    }

    /// Candidate/legacy ratios for each of TTFB and TTLB at p50, p95, p99; only where
    /// both sides have samples and the legacy figure is non-zero.
    pub fn deltas(&self) -> Vec<LatencyDelta> {
        let (l, c) = (self.summary(Side::Legacy), self.summary(Side::Candidate));
        let mut out = Vec::new();
        for (name, lp, cp) in [("ttfb", l.ttfb, c.ttfb), ("ttlb", l.ttlb, c.ttlb)] {
            let (Some(lp), Some(cp)) = (lp, cp) else {
                continue;
            };
            for (q, lv, cv) in [
                ("p50", lp.p50_ns, cp.p50_ns),
                ("p95", lp.p95_ns, cp.p95_ns),
                ("p99", lp.p99_ns, cp.p99_ns),
            ] {
                if lv == 0 {
                    continue;
                }
                out.push(LatencyDelta {
                    metric: format!("{name}_{q}"),
                    legacy_ns: lv,
                    candidate_ns: cv,
                    ratio: cv as f64 / lv as f64,
                    legacy_samples: lp.count,
                    candidate_samples: cp.count,
                });
            }
        }
        out
    }
}

/// Latency of every route.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LatencyStats {
    pub routes: BTreeMap<String, RouteLatency>,
}

impl LatencyStats {
    pub fn record(&mut self, route: &str, side: Side, ttfb_ns: u64, ttlb_ns: u64) {
        self.routes
            .entry(route.to_string())
            .or_default()
            .record(side, ttfb_ns, ttlb_ns);
    }

    pub fn route(&self, route: &str) -> Option<&RouteLatency> {
        self.routes.get(route)
    }

    /// Adds another host's (or period's) histograms.
    pub fn merge(&mut self, other: &LatencyStats) -> Result<(), CompareError> {
        for (route, o) in &other.routes {
            self.routes.entry(route.clone()).or_default().merge(o)?;
        }
        Ok(())
    }

    /// All routes together (for run-wide p95s).
    pub fn overall(&self) -> Result<RouteLatency, CompareError> {
        let mut all = RouteLatency::default();
        for r in self.routes.values() {
            all.merge(r)?;
        }
        Ok(all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn close(a: u64, b: u64) -> bool {
        // 2 significant digits.
        (a as f64 - b as f64).abs() <= b as f64 * 0.01 + 1000.0
    }

    #[test]
    fn percentiles_and_deltas() {
        let mut s = LatencyStats::default();
        for i in 1..=1000u64 {
            s.record("GET /a", Side::Legacy, i * MS / 10, i * MS);
            s.record("GET /a", Side::Candidate, i * MS / 5, 2 * i * MS);
        }
        let r = s.route("GET /a").unwrap();
        let counters = r.legacy_ttlb.as_ref().unwrap().0.distinct_values();
        assert_eq!(counters, 2_560, "update the memory note in the module docs");
        let l = r.summary(Side::Legacy).ttlb.unwrap();
        assert_eq!(l.count, 1000);
        assert!(close(l.p50_ns, 500 * MS), "{l:?}");
        assert!(close(l.p95_ns, 950 * MS), "{l:?}");
        assert!(close(l.p99_ns, 990 * MS), "{l:?}");
        let d = r.deltas();
        let p95 = d.iter().find(|d| d.metric == "ttlb_p95").unwrap();
        assert!((p95.ratio - 2.0).abs() < 0.01, "{p95:?}");
        assert_eq!((p95.legacy_samples, p95.candidate_samples), (1000, 1000));
        assert_eq!(d.len(), 6);
        // A route without candidate data has no deltas.
        s.record("GET /b", Side::Legacy, MS, MS);
        assert!(s.route("GET /b").unwrap().deltas().is_empty());
        // Out of range values are clamped, not lost.
        s.record("GET /b", Side::Legacy, 0, 3600 * 1000 * MS);
        assert_eq!(
            s.route("GET /b")
                .unwrap()
                .summary(Side::Legacy)
                .ttlb
                .unwrap()
                .count,
            2
        );
    }

    #[test]
    fn merge_and_serde_round_trip() {
        let mut host1 = LatencyStats::default();
        let mut host2 = LatencyStats::default();
        for i in 0..500u64 {
            host1.record("GET /a", Side::Legacy, MS, (10 + i % 10) * MS);
            host2.record("GET /a", Side::Legacy, MS, 100 * MS);
            host2.record("GET /c", Side::Candidate, MS, 5 * MS);
        }
        let mut all = host1.clone();
        all.merge(&host2).unwrap();
        let l = all
            .route("GET /a")
            .unwrap()
            .summary(Side::Legacy)
            .ttlb
            .unwrap();
        assert_eq!(l.count, 1000);
        assert!(close(l.p95_ns, 100 * MS), "{l:?}");
        assert!(l.p50_ns < 20 * MS, "{l:?}");
        let json = serde_json::to_string(&all).unwrap();
        assert!(json.len() < 2000, "{}", json.len());
        let back: LatencyStats = serde_json::from_str(&json).unwrap();
        assert_eq!(
            back.route("GET /a").unwrap().summary(Side::Legacy),
            all.route("GET /a").unwrap().summary(Side::Legacy)
        );
        let overall = back.overall().unwrap();
        assert_eq!(overall.summary(Side::Candidate).ttlb.unwrap().count, 500);
        assert!(
            serde_json::from_str::<LatencyStats>(
                r#"{"routes":{"x":{"legacy_ttfb":{"unit":"ms","buckets":[]}}}}"#
            )
            .is_err()
        );
    }
}
