//! The run's evidence kept in memory, in the same shape the store returns
//! (`StoredEvidence`), so the live dashboard and the end-of-run summary are computed by
//! the same report code as `mirror-daemon report`. Every collection is bounded.
use std::collections::BTreeMap;

use rand::Rng as _;

use crate::{
    accounting::{CandidateErrorKind, Outcome},
    compare::Comparison,
    guard::{EgressAction, EgressAttempt},
    store::{
        DiffExample, DiffKindStats, EgressSummary, LatencySample, RouteLatency, RouteStats,
        StoredEvidence, diff_kind_key,
    },
};

/// Latency samples kept per route (uniform reservoir).
const SAMPLES_PER_ROUTE: usize = 20_000;
/// Examples kept per (route, diff key).
const EXAMPLES_PER_KIND: usize = 3;
/// Distinct (route, diff key) pairs tracked; more are counted in `untracked_diff_keys`.
const MAX_DIFF_KEYS: usize = 5_000;
/// Distinct egress (destination, protocol, action) groups tracked.
const MAX_EGRESS_GROUPS: usize = 1_000;

/// One finished exchange, as the live evidence needs it (all strings already masked).
pub struct Finished<'a> {
    pub id: &'a str,
    pub host: &'a str,
    pub run_id: &'a str,
    pub ts_unix_ms: i64,
    pub route: &'a str,
    pub outcome: Outcome,
    pub legacy_status: u16,
    pub candidate_status: Option<u16>,
    pub comparison: Option<&'a Comparison>,
    pub secondary: Option<&'a Comparison>,
    pub sample: LatencySample,
}

#[derive(Debug, Default)]
pub struct LiveEvidence {
    routes: BTreeMap<String, RouteStats>,
    diffs: BTreeMap<(String, String), DiffKindStats>,
    latency: BTreeMap<String, RouteLatency>,
    egress: BTreeMap<(String, String, u8), EgressSummary>,
    pub untracked_diff_keys: u64,
    pub untracked_egress: u64,
}

impl LiveEvidence {
    pub fn record(&mut self, f: &Finished<'_>) {
        let r = self
            .routes
            .entry(f.route.to_string())
            .or_insert_with(|| RouteStats {
                route: f.route.to_string(),
                candidate_errors: CandidateErrorKind::ALL.iter().map(|k| (*k, 0)).collect(),
                ..Default::default()
            });
        match f.outcome {
            Outcome::Matched => r.matched += 1,
            Outcome::Differed => r.differed += 1,
            Outcome::CandidateError(kind) => {
                if let Some(slot) = r.candidate_errors.iter_mut().find(|(k, _)| *k == kind) {
                    slot.1 += 1;
                }
            }
            _ => return,
        }
        r.compared += 1;
        if f.candidate_status.is_some_and(|s| s != f.legacy_status) {
            r.status_mismatches += 1;
        }
        if let Some(cmp) = f.comparison {
            self.record_diffs(f, cmp, false);
        }
        if let Some(sec) = f.secondary {
            self.record_diffs(f, sec, true);
        }
        let lat = self
            .latency
            .entry(f.route.to_string())
            .or_insert_with(|| RouteLatency {
                route: f.route.to_string(),
                ..Default::default()
            });
        lat.exchanges += 1;
        if lat.samples.len() < SAMPLES_PER_ROUTE {
            lat.samples.push(f.sample);
        } else {
            // Reservoir sampling keeps a uniform sample of the whole run in bounded memory.
            let j = rand::thread_rng().gen_range(0..lat.exchanges) as usize;
            if let Some(slot) = lat.samples.get_mut(j) {
                *slot = f.sample;
            }
        }
    }

    fn record_diffs(&mut self, f: &Finished<'_>, cmp: &Comparison, secondary: bool) {
        let mut seen_keys: Vec<String> = Vec::new();
        for d in &cmp.diffs {
            let key = diff_kind_key(&d.kind);
            let map_key = (f.route.to_string(), key.clone());
            if !self.diffs.contains_key(&map_key) && self.diffs.len() >= MAX_DIFF_KEYS {
                self.untracked_diff_keys += 1;
                continue;
            }
            let first_of_key = !seen_keys.contains(&key);
            let st = self.diffs.entry(map_key).or_insert_with(|| DiffKindStats {
                route: f.route.to_string(),
                key: key.clone(),
                ..Default::default()
            });
            if secondary {
                st.secondary_diffs += 1;
                if first_of_key {
                    st.secondary_exchanges += 1;
                }
            } else {
                st.diffs += 1;
                if first_of_key {
                    st.exchanges += 1;
                    if st.examples.len() < EXAMPLES_PER_KIND {
                        st.examples.push(DiffExample {
                            id: f.id.to_string(),
                            host: f.host.to_string(),
                            run_id: f.run_id.to_string(),
                            ts_unix_ms: f.ts_unix_ms,
                            legacy: d.legacy.clone(),
                            candidate: d.candidate.clone(),
                            bodies: None,
                        });
                    } else {
                        st.examples_dropped += 1;
                    }
                }
            }
            if first_of_key {
                seen_keys.push(key);
            }
        }
    }

    pub fn record_egress(&mut self, a: &EgressAttempt) {
        let key = (
            a.destination.to_string(),
            a.protocol.clone(),
            a.action as u8,
        );
        if !self.egress.contains_key(&key) && self.egress.len() >= MAX_EGRESS_GROUPS {
            self.untracked_egress += 1;
            return;
        }
        let e = self.egress.entry(key).or_insert_with(|| EgressSummary {
            destination: a.destination.to_string(),
            protocol: a.protocol.clone(),
            action: a.action,
            attempts: 0,
            hosts: 1,
            first_seen_ms: a.ts_unix_ms,
            last_seen_ms: a.ts_unix_ms,
            commands: Vec::new(),
        });
        e.attempts += 1;
        e.first_seen_ms = e.first_seen_ms.min(a.ts_unix_ms);
        e.last_seen_ms = e.last_seen_ms.max(a.ts_unix_ms);
        if !e.commands.contains(&a.command) && e.commands.len() < 16 {
            e.commands.push(a.command.clone());
            e.commands.sort();
        }
    }

    /// Refused or redirected attempts so far (what the guard stopped).
    pub fn egress_blocked(&self) -> u64 {
        self.egress
            .values()
            .filter(|e| e.action != EgressAction::Allowed)
            .map(|e| e.attempts)
            .sum()
    }

    /// The evidence in the store's shape (ledger and kernel totals are filled by the caller).
    pub fn evidence(&self) -> StoredEvidence {
        let mut diffs: Vec<DiffKindStats> = self.diffs.values().cloned().collect();
        diffs.sort_by(|a, b| {
            b.exchanges
                .cmp(&a.exchanges)
                .then(b.secondary_exchanges.cmp(&a.secondary_exchanges))
                .then(a.route.cmp(&b.route))
                .then(a.key.cmp(&b.key))
        });
        StoredEvidence {
            routes: self.routes.values().cloned().collect(),
            diffs,
            latency: self.latency.values().cloned().collect(),
            egress: self.egress.values().cloned().collect(),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::{Diff, DiffKind, FieldDiffKind};

    fn sample() -> LatencySample {
        LatencySample {
            legacy_ttfb_ns: 1,
            legacy_ttlb_ns: 2,
            candidate_ttfb_ns: Some(3),
            candidate_ttlb_ns: Some(4),
        }
    }

    #[test]
    fn counts_diff_keys_once_per_exchange_and_bounds_examples() {
        let mut live = LiveEvidence::default();
        let diff = |i: usize| Diff {
            kind: DiffKind::Field {
                path: format!("$.items[{i}].price"),
                how: FieldDiffKind::Value,
            },
            legacy: Some("1".into()),
            candidate: Some("2".into()),
        };
        let cmp = Comparison {
            diffs: vec![diff(0), diff(1)],
            ..Default::default()
        };
        for i in 0..10 {
            let id = format!("id{i}");
            live.record(&Finished {
                id: &id,
                host: "h",
                run_id: "r",
                ts_unix_ms: 0,
                route: "GET /orders",
                outcome: Outcome::Differed,
                legacy_status: 200,
                candidate_status: Some(200),
                comparison: Some(&cmp),
                secondary: None,
                sample: sample(),
            });
        }
        let ev = live.evidence();
        assert_eq!(ev.diffs.len(), 1, "array indexes aggregate into one key");
        let d = &ev.diffs[0];
        assert_eq!((d.diffs, d.exchanges), (20, 10));
        assert_eq!(d.examples.len(), EXAMPLES_PER_KIND);
        assert_eq!(d.examples_dropped, 10 - EXAMPLES_PER_KIND as u64);
        assert_eq!(ev.routes[0].differed, 10);
        assert_eq!(ev.latency[0].samples.len(), 10);
    }

    #[test]
    fn latency_samples_stay_bounded() {
        let mut live = LiveEvidence::default();
        for _ in 0..(SAMPLES_PER_ROUTE + 500) {
            live.record(&Finished {
                id: "x",
                host: "h",
                run_id: "r",
                ts_unix_ms: 0,
                route: "GET /",
                outcome: Outcome::Matched,
                legacy_status: 200,
                candidate_status: Some(200),
                comparison: None,
                secondary: None,
                sample: sample(),
            });
        }
        let ev = live.evidence();
        assert_eq!(ev.latency[0].samples.len(), SAMPLES_PER_ROUTE);
        assert_eq!(ev.latency[0].exchanges, (SAMPLES_PER_ROUTE + 500) as u64);
    }
}
