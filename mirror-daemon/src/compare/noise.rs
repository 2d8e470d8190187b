//! Noise: which diffs the candidate causes, and which legacy has with itself.
//!
//! Counts are kept per route and per diff key ([`noise_key`]: the `DiffKind` display with
//! array indexes replaced by `[*]`), as numbers of exchanges (a key counts once per
//! exchange however many times it occurs there).
//!
//! Rule ([`NoiseRule`], defaults in brackets):
//! - With a secondary legacy instance (`--secondary`) and at least `min_samples` [20]
//!   exchanges on both comparisons: a key is **Noise** when legacy also differs from
//!   itself on it and `candidate_rate <= factor [2] × legacy_rate + margin [1 pp]`;
//!   otherwise **Signal**. A key legacy never shows against itself is always Signal.
//! - Otherwise: a key that differs on at least `likely_noise_rate` [95 %] of a route's
//!   exchanges (with at least `min_samples` exchanges) is **LikelyNoise**: systematic, so
//!   either volatile data or a systematic bug. It is reported separately and, to stay
//!   conservative, still counts as a mismatch ([`NoiseModel::counts_as_mismatch`]); the
//!   user confirms it is noise with the suggested `--ignore` ([`suggested_ignore`]).
//! - Everything else is **Signal**.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::model::{Comparison, DiffKind};
use super::path::generalize_indexes;

/// Thresholds of the noise rule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NoiseRule {
    pub min_samples: u64,
    pub factor: f64,
    pub margin: f64,
    pub likely_noise_rate: f64,
    /// Distinct keys tracked per route (object keys can be data, e.g. maps keyed by id);
    /// occurrences of further keys are counted in `RouteNoise::untracked`.
    pub max_keys_per_route: usize,
}

impl Default for NoiseRule {
    fn default() -> Self {
        NoiseRule {
            min_samples: 20,
            factor: 2.0,
            margin: 0.01,
            likely_noise_rate: 0.95,
            max_keys_per_route: 1000,
        }
    }
}

/// Counts for one route.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteNoise {
    /// Candidate-vs-legacy exchanges compared.
    pub compared: u64,
    /// Key → candidate-vs-legacy exchanges with that diff.
    pub candidate: BTreeMap<String, u64>,
    /// Legacy-vs-secondary exchanges compared.
    pub secondary_compared: u64,
    /// Key → legacy-vs-secondary exchanges with that diff.
    pub secondary: BTreeMap<String, u64>,
    /// Key occurrences not tracked because of `max_keys_per_route`.
    pub untracked: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "class")]
pub enum NoiseClass {
    Signal,
    Noise { reason: String },
    LikelyNoise,
}

impl NoiseClass {
    /// The class's name in JSON and on the dashboard: `signal`, `likely_noise`, `noise`.
    pub fn as_str(&self) -> &'static str {
        match self {
            NoiseClass::Signal => "signal",
            NoiseClass::LikelyNoise => "likely_noise",
            NoiseClass::Noise { .. } => "noise",
        }
    }

    /// The name in prose (the text reports): `likely noise`.
    pub fn label(&self) -> &'static str {
        match self {
            NoiseClass::LikelyNoise => "likely noise",
            other => other.as_str(),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NoiseModel {
    pub rule: NoiseRule,
    pub routes: BTreeMap<String, RouteNoise>,
}

/// The counting key of a diff: `field($.items[*].price,value)`, `header(etag)`, `status`.
pub fn noise_key(kind: &DiffKind) -> String {
    match kind {
        DiffKind::Field { path, how } => DiffKind::Field {
            path: generalize_indexes(path),
            how: *how,
        }
        .to_string(),
        other => other.to_string(),
    }
}

/// The flag that would silence this kind of diff, for reports of (likely) noise.
pub fn suggested_ignore(kind: &DiffKind) -> Option<String> {
    match kind {
        DiffKind::Field { path, .. } => {
            Some(format!("--ignore 'json:{}'", generalize_indexes(path)))
        }
        DiffKind::Header { name } => Some(format!("--ignore header:{name}")),
        _ => None,
    }
}

fn rate(n: u64, of: u64) -> f64 {
    if of == 0 { 0.0 } else { n as f64 / of as f64 }
}

impl NoiseModel {
    pub fn new(rule: NoiseRule) -> Self {
        NoiseModel {
            rule,
            routes: BTreeMap::new(),
        }
    }

    /// Counts one candidate-vs-legacy comparison.
    pub fn record(&mut self, route: &str, cmp: &Comparison) {
        let max = self.rule.max_keys_per_route;
        let r = self.routes.entry(route.to_string()).or_default();
        r.compared += 1;
        r.untracked += count_keys(&mut r.candidate, cmp, max);
    }

    /// Counts one legacy-vs-secondary-legacy comparison.
    pub fn record_secondary(&mut self, route: &str, cmp: &Comparison) {
        let max = self.rule.max_keys_per_route;
        let r = self.routes.entry(route.to_string()).or_default();
        r.secondary_compared += 1;
        r.untracked += count_keys(&mut r.secondary, cmp, max);
    }

    /// Adds another model's counts (e.g. from another host); this model's rule is kept.
    pub fn merge(&mut self, other: &NoiseModel) {
        for (route, o) in &other.routes {
            let r = self.routes.entry(route.clone()).or_default();
            r.compared += o.compared;
            r.secondary_compared += o.secondary_compared;
            r.untracked += o.untracked;
            for (k, n) in &o.candidate {
                *r.candidate.entry(k.clone()).or_default() += n;
            }
            for (k, n) in &o.secondary {
                *r.secondary.entry(k.clone()).or_default() += n;
            }
        }
    }

    pub fn classify(&self, route: &str, kind: &DiffKind) -> NoiseClass {
        self.classify_key(route, &noise_key(kind))
    }

    /// Like [`classify`](Self::classify), for a key from [`noise_key`].
    pub fn classify_key(&self, route: &str, key: &str) -> NoiseClass {
        let Some(r) = self.routes.get(route) else {
            return NoiseClass::Signal;
        };
        let rule = &self.rule;
        let cand_rate = rate(r.candidate.get(key).copied().unwrap_or(0), r.compared);
        if r.secondary_compared >= rule.min_samples && r.compared >= rule.min_samples {
            let legacy_n = r.secondary.get(key).copied().unwrap_or(0);
            let legacy_rate = rate(legacy_n, r.secondary_compared);
            if legacy_n > 0 && cand_rate <= rule.factor * legacy_rate + rule.margin {
                return NoiseClass::Noise {
                    reason: format!(
                        "legacy differs from itself on {:.1}% of {} exchanges; candidate on {:.1}% of {}",
                        legacy_rate * 100.0,
                        r.secondary_compared,
                        cand_rate * 100.0,
                        r.compared
                    ),
                };
            }
            return NoiseClass::Signal;
        }
        if r.compared >= rule.min_samples && cand_rate >= rule.likely_noise_rate {
            return NoiseClass::LikelyNoise;
        }
        NoiseClass::Signal
    }

    /// Whether this exchange counts as mismatched: it has a diff that is not Noise.
    /// LikelyNoise counts (it may be a systematic bug), and so do diffs past the
    /// per-exchange cap, which cannot be classified.
    pub fn counts_as_mismatch(&self, route: &str, cmp: &Comparison) -> bool {
        cmp.omitted > 0
            || cmp
                .diffs
                .iter()
                .any(|d| !matches!(self.classify(route, &d.kind), NoiseClass::Noise { .. }))
    }
}

/// Adds 1 per distinct key of `cmp`; returns occurrences not tracked (map full).
fn count_keys(map: &mut BTreeMap<String, u64>, cmp: &Comparison, max: usize) -> u64 {
    let mut keys: Vec<String> = cmp.diffs.iter().map(|d| noise_key(&d.kind)).collect();
    keys.sort_unstable();
    keys.dedup();
    let mut untracked = 0;
    for k in keys {
        if let Some(n) = map.get_mut(&k) {
            *n += 1;
        } else if map.len() < max {
            map.insert(k, 1);
        } else {
            untracked += 1;
        }
    }
    untracked
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::model::{Diff, FieldDiffKind};

    fn field(path: &str) -> DiffKind {
        DiffKind::Field {
            path: path.into(),
            how: FieldDiffKind::Value,
        }
    }

    fn cmp(kinds: &[DiffKind]) -> Comparison {
        Comparison {
            diffs: kinds
                .iter()
                .map(|k| Diff {
                    kind: k.clone(),
                    legacy: None,
                    candidate: None,
                })
                .collect(),
            ..Comparison::default()
        }
    }

    const R: &str = "GET /users/{id}";

    #[test]
    fn keys_generalize_indexes() {
        assert_eq!(
            noise_key(&field("$.items[3].price")),
            "field($.items[*].price,value)"
        );
        assert_eq!(
            suggested_ignore(&field("$.a[1].t")).as_deref(),
            Some("--ignore 'json:$.a[*].t'")
        );
        let mut m = NoiseModel::default();
        m.record(R, &cmp(&[field("$.items[1].p"), field("$.items[2].p")]));
        assert_eq!(m.routes[R].candidate["field($.items[*].p,value)"], 1);
    }

    #[test]
    fn without_secondary_systematic_diffs_are_likely_noise() {
        let mut m = NoiseModel::default();
        let ts = field("$.updated_at");
        let price = field("$.price");
        for i in 0..40 {
            let mut kinds = vec![ts.clone()];
            if i % 10 == 0 {
                kinds.push(price.clone());
            }
            m.record(R, &cmp(&kinds));
        }
        assert_eq!(m.classify(R, &ts), NoiseClass::LikelyNoise);
        assert_eq!(m.classify(R, &price), NoiseClass::Signal);
        // LikelyNoise is still a mismatch.
        assert!(m.counts_as_mismatch(R, &cmp(std::slice::from_ref(&ts))));
        // Too few samples: no opinion.
        let mut few = NoiseModel::default();
        for _ in 0..19 {
            few.record(R, &cmp(std::slice::from_ref(&ts)));
        }
        assert_eq!(few.classify(R, &ts), NoiseClass::Signal);
    }

    #[test]
    fn with_secondary_only_diffs_beyond_legacy_noise_are_signal() {
        let mut m = NoiseModel::default();
        let ts = field("$.updated_at");
        let price = field("$.price");
        let hdr = DiffKind::Header {
            name: "etag".into(),
        };
        for i in 0..100 {
            // Legacy vs legacy: the timestamp always, the etag on 10 %.
            let mut sec = vec![ts.clone()];
            if i % 10 == 0 {
                sec.push(hdr.clone());
            }
            m.record_secondary(R, &cmp(&sec));
            // Candidate: timestamp always, etag on 50 %, price on 1 % (within the margin).
            let mut c = vec![ts.clone()];
            if i % 2 == 0 {
                c.push(hdr.clone());
            }
            if i == 0 {
                c.push(price.clone());
            }
            m.record(R, &cmp(&c));
        }
        assert!(matches!(m.classify(R, &ts), NoiseClass::Noise { .. }));
        // 50 % > 2 × 10 % + 1 pp.
        assert_eq!(m.classify(R, &hdr), NoiseClass::Signal);
        // Never seen legacy vs legacy: signal however rare.
        assert_eq!(m.classify(R, &price), NoiseClass::Signal);
        assert!(!m.counts_as_mismatch(R, &cmp(std::slice::from_ref(&ts))));
        assert!(m.counts_as_mismatch(R, &cmp(&[ts.clone(), price.clone()])));
        // Serializable and mergeable.
        let json = serde_json::to_string(&m).unwrap();
        let back: NoiseModel = serde_json::from_str(&json).unwrap();
        assert_eq!(back, m);
        let mut merged = NoiseModel::default();
        merged.merge(&m);
        merged.merge(&back);
        assert_eq!(merged.routes[R].compared, 200);
        assert_eq!(merged.routes[R].secondary["header(etag)"], 20);
    }

    #[test]
    fn key_cap_counts_the_rest() {
        let mut m = NoiseModel::new(NoiseRule {
            max_keys_per_route: 2,
            ..NoiseRule::default()
        });
        m.record(R, &cmp(&[field("$.a"), field("$.b"), field("$.c")]));
        assert_eq!((m.routes[R].candidate.len(), m.routes[R].untracked), (2, 1));
    }
}
