//! The run's evidence kept in memory, in the records the store's evidence is made of, so
//! the live dashboard is drawn by the same report code as `mirror-daemon report`, from a
//! borrowed [`CardEvidence`] (nothing copied). Every collection is bounded.
use std::cmp::Ordering;

use rand::Rng as _;

use crate::{
    accounting::{CandidateErrorKind, LedgerSnapshot, Outcome},
    compare::Comparison,
    guard::{EgressAction, EgressAttempt},
    report::CardEvidence,
    store::{
        DiffExample, DiffKindStats, EffectsFigures, EgressSummary, KernelCounters, LatencySample,
        PairingCounters, RouteLatency, RouteStats, diff_kind_key,
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

/// The entry of `v` (sorted; `order` compares an entry with the one wanted), inserted
/// with `make` when absent; `None` when absent and `v` already holds `cap` entries.
fn sorted_entry<T>(
    v: &mut Vec<T>,
    order: impl Fn(&T) -> Ordering,
    cap: usize,
    make: impl FnOnce() -> T,
) -> Option<&mut T> {
    let i = match v.binary_search_by(order) {
        Ok(i) => i,
        Err(_) if v.len() >= cap => return None,
        Err(i) => {
            v.insert(i, make());
            i
        }
    };
    v.get_mut(i)
}

#[derive(Debug, Default)]
pub struct LiveEvidence {
    /// Sorted by route.
    routes: Vec<RouteStats>,
    /// Sorted by (route, key).
    diffs: Vec<DiffKindStats>,
    /// Sorted by route.
    latency: Vec<RouteLatency>,
    /// Sorted by (destination, protocol, action).
    egress: Vec<EgressSummary>,
    pub untracked_diff_keys: u64,
    pub untracked_egress: u64,
    /// Bumped by every change above: a card drawn at the same count (with the same
    /// counters) is the same card.
    changes: u64,
}

impl LiveEvidence {
    /// How many times the evidence changed; equal counts, equal evidence.
    pub fn changes(&self) -> u64 {
        self.changes
    }

    pub fn record(&mut self, f: &Finished<'_>) {
        self.changes += 1;
        // Routes are few: the route templater caps them.
        let Some(r) = sorted_entry(
            &mut self.routes,
            |r| r.route.as_str().cmp(f.route),
            usize::MAX,
            || RouteStats {
                route: f.route.to_string(),
                candidate_errors: CandidateErrorKind::ALL.iter().map(|k| (*k, 0)).collect(),
                ..Default::default()
            },
        ) else {
            return;
        };
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
        let Some(lat) = sorted_entry(
            &mut self.latency,
            |l| l.route.as_str().cmp(f.route),
            usize::MAX,
            || RouteLatency {
                route: f.route.to_string(),
                ..Default::default()
            },
        ) else {
            return;
        };
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
            let first_of_key = !seen_keys.contains(&key);
            let entry = sorted_entry(
                &mut self.diffs,
                |x| (x.route.as_str(), x.key.as_str()).cmp(&(f.route, key.as_str())),
                MAX_DIFF_KEYS,
                || DiffKindStats {
                    route: f.route.to_string(),
                    key: key.clone(),
                    ..Default::default()
                },
            );
            let Some(st) = entry else {
                self.untracked_diff_keys += 1;
                continue;
            };
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
        self.changes += 1;
        let destination = a.destination.to_string();
        let entry = sorted_entry(
            &mut self.egress,
            |e| {
                let wanted = (destination.as_str(), a.protocol.as_str(), a.action);
                (e.destination.as_str(), e.protocol.as_str(), e.action).cmp(&wanted)
            },
            MAX_EGRESS_GROUPS,
            || EgressSummary {
                destination: destination.clone(),
                protocol: a.protocol.clone(),
                action: a.action,
                attempts: 0,
                hosts: 1,
                first_seen_ms: a.ts_unix_ms,
                last_seen_ms: a.ts_unix_ms,
                commands: Vec::new(),
            },
        );
        let Some(e) = entry else {
            self.untracked_egress += 1;
            return;
        };
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
            .iter()
            .filter(|e| e.action != EgressAction::Allowed)
            .map(|e| e.attempts)
            .sum()
    }

    /// The evidence a card is drawn from, borrowed, with the run's ledger, kernel,
    /// pairing and side-effect counters.
    pub fn card_evidence<'a>(
        &'a self,
        ledger: &'a LedgerSnapshot,
        kernel: &'a KernelCounters,
        pairing: Option<&'a PairingCounters>,
        side_effects: Option<&'a EffectsFigures>,
    ) -> CardEvidence<'a> {
        CardEvidence {
            runs: &[],
            ledgers: &[],
            ledger_total: ledger,
            kernel_total: kernel,
            pairing_total: pairing,
            side_effects_total: side_effects,
            routes: &self.routes,
            diffs: &self.diffs,
            latency: &self.latency,
            egress: &self.egress,
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
        let (ledger, kernel) = Default::default();
        let ev = live.card_evidence(&ledger, &kernel, None, None);
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
        let (ledger, kernel) = Default::default();
        let ev = live.card_evidence(&ledger, &kernel, None, None);
        assert_eq!(ev.latency[0].samples.len(), SAMPLES_PER_ROUTE);
        assert_eq!(ev.latency[0].exchanges, (SAMPLES_PER_ROUTE + 500) as u64);
    }

    /// The dashboard's card and `mirror-daemon report`'s card, drawn from the same
    /// exchanges (one kept in memory, one written to a real store), are the same card.
    #[tokio::test]
    async fn the_live_card_and_the_stored_card_agree() {
        use crate::accounting::{DropReason, Ledger};
        use crate::compare::NoiseRule;
        use crate::store::{ExchangeRecord, ReportFilter, Store, StoreOptions, StoreUrl};
        let dir = tempfile::tempdir().expect("tempdir");
        let url = StoreUrl::Sqlite(dir.path().join("m.db"));
        let store = Store::open(&url, StoreOptions::default())
            .await
            .expect("store");
        let (mut live, ledger, mut rows) = (LiveEvidence::default(), Ledger::default(), Vec::new());
        let price = Diff {
            kind: DiffKind::Field {
                path: "$.price".into(),
                how: FieldDiffKind::Value,
            },
            legacy: Some("1".into()),
            candidate: Some("2".into()),
        };
        for i in 0..60u64 {
            let (route, outcome) = match i % 5 {
                0 | 1 => ("GET /a", Outcome::Matched),
                2 | 3 => ("GET /b", Outcome::Differed),
                _ => (
                    "GET /b",
                    Outcome::CandidateError(CandidateErrorKind::Timeout),
                ),
            };
            let answered = !matches!(outcome, Outcome::CandidateError(_));
            let cmp = Comparison {
                diffs: if outcome == Outcome::Differed {
                    vec![price.clone()]
                } else {
                    Vec::new()
                },
                ..Default::default()
            };
            let sample = LatencySample {
                legacy_ttfb_ns: 1_000_000 * (i + 1),
                legacy_ttlb_ns: 2_000_000 * (i + 1),
                candidate_ttfb_ns: answered.then_some(1_500_000 * (i + 1)),
                candidate_ttlb_ns: answered.then_some(2_500_000 * (i + 1)),
            };
            let id = format!("id{i:03}");
            live.record(&Finished {
                id: &id,
                host: "h",
                run_id: "r",
                ts_unix_ms: 1_760_000_000_000,
                route,
                outcome,
                legacy_status: 200,
                candidate_status: answered.then_some(200),
                comparison: answered.then_some(&cmp),
                secondary: None,
                sample,
            });
            rows.push(ExchangeRecord {
                id,
                host: "h".into(),
                run_id: "r".into(),
                ts_unix_ms: 1_760_000_000_000,
                route: route.into(),
                method: "GET".into(),
                target: route.trim_start_matches("GET ").into(),
                outcome,
                legacy_status: 200,
                candidate_status: answered.then_some(200),
                diffs: cmp.diffs.clone(),
                secondary_diffs: Vec::new(),
                legacy_ttfb_ns: sample.legacy_ttfb_ns,
                legacy_ttlb_ns: sample.legacy_ttlb_ns,
                candidate_ttfb_ns: sample.candidate_ttfb_ns,
                candidate_ttlb_ns: sample.candidate_ttlb_ns,
                example: None,
            });
            ledger.saw(1);
            ledger.record(outcome);
        }
        ledger.saw_dropped(DropReason::Gap, 2);
        let (snap, kernel) = (ledger.snapshot(), KernelCounters::default());
        let pairing = PairingCounters {
            exchanges: 40,
            proven: 38,
            dropped_at_join: 2,
            responses_unpaired: 1,
            dropped_at_end: 3,
        };
        store.write_batch(&rows).await.expect("rows");
        store
            .write_ledger("h", "r", 1_760_000_000_000, &snap, &kernel, &pairing, None)
            .await
            .expect("ledger");
        let stored = store.load(&ReportFilter::default()).await.expect("load");
        let criteria = crate::verdict::Criteria::default();
        let from_live = crate::report::build(
            live.card_evidence(&snap, &kernel, Some(&pairing), None),
            &criteria,
            &NoiseRule::default(),
        );
        let from_store = crate::report::build(&stored, &criteria, &NoiseRule::default());
        assert_eq!(from_live.routes, from_store.routes);
        assert_eq!(from_live.accounting, from_store.accounting);
        assert_eq!(from_live.latency, from_store.latency);
        assert_eq!(
            from_live.completeness_detail,
            from_store.completeness_detail
        );
        let keys = |c: &crate::report::ParityCard| {
            c.diffs
                .iter()
                .map(|d| (d.route.clone(), d.key.clone(), d.count, d.occurrences))
                .collect::<Vec<_>>()
        };
        assert_eq!(keys(&from_live), keys(&from_store));
        assert!(!keys(&from_live).is_empty());
        assert_eq!(from_live.verdict, from_store.verdict);
    }
}
