//! Turning the caller's records into column values, once, for both backends.
use crate::accounting::Outcome;
use crate::compare::DiffKind;
use crate::guard::{EgressAction, EgressAttempt};

use super::{Example, ExchangeRecord, StoreError};

/// The aggregation key of a diff kind: its `Display` with array indexes replaced by `[*]`,
/// so `field($.items[3].price,value)` and `field($.items[7].price,value)` count together.
pub fn diff_kind_key(kind: &DiffKind) -> String {
    let text = kind.to_string();
    match kind {
        DiffKind::Field { .. } => star_indexes(&text),
        // Header names and the fixed keys carry no array indexes.
        _ => text,
    }
}

/// Replaces every `[digits]` with `[*]`.
fn star_indexes(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(open) = rest.find('[') {
        out.push_str(&rest[..=open]);
        let after = &rest[open + 1..];
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 && after.as_bytes().get(digits) == Some(&b']') {
            out.push('*');
            rest = &after[digits..];
        } else {
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// A deterministic pseudo-random key per exchange id. `load` samples latencies by taking
/// the lowest keys per route: a uniform sample that is the same from both backends. No
/// index holds it (schema 6): a random key would make every insert touch a random page.
pub(crate) fn sample_key(host: &str, id: &str) -> i64 {
    // FNV-1a over host, a separator and id, then a SplitMix64 finalizer to spread bits.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in host.bytes().chain(std::iter::once(0xff)).chain(id.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    // Same bits as a signed value; only the order matters, and both databases order i64.
    i64::from_ne_bytes(h.to_ne_bytes())
}

/// Nanosecond durations fit i64 for 292 years; saturate rather than fail a batch.
fn ns(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(crate) struct PreparedKind {
    pub key: String,
    pub secondary: bool,
    pub occurrences: i64,
    /// Renderings of the first occurrence (candidate diffs only).
    pub legacy: Option<String>,
    pub candidate: Option<String>,
}

pub(crate) struct PreparedExchange {
    pub host: String,
    pub id: String,
    pub run_id: String,
    pub ts_unix_ms: i64,
    pub route: String,
    pub method: String,
    pub target: String,
    pub outcome: &'static str,
    pub error_kind: Option<&'static str>,
    pub legacy_status: i64,
    pub candidate_status: Option<i64>,
    pub status_mismatch: i64,
    pub legacy_ttfb_ns: i64,
    pub legacy_ttlb_ns: i64,
    pub candidate_ttfb_ns: Option<i64>,
    pub candidate_ttlb_ns: Option<i64>,
    pub sample_key: i64,
    pub diffs_json: String,
    /// Distinct keys, candidate diffs first, in first-seen order.
    pub kinds: Vec<PreparedKind>,
    pub example: Option<Example>,
}

/// Prepares the storable rows; returns them and how many were skipped for their outcome.
pub(crate) fn prepare(rows: &[ExchangeRecord]) -> Result<(Vec<PreparedExchange>, u64), StoreError> {
    let mut out = Vec::with_capacity(rows.len());
    let mut skipped = 0;
    for r in rows {
        let (outcome, error_kind) = match r.outcome {
            Outcome::Matched | Outcome::Differed | Outcome::CandidateError(_) => {
                let (outcome, reason) = r.outcome.labels();
                (outcome, (!reason.is_empty()).then_some(reason))
            }
            Outcome::SampledOut | Outcome::Excluded | Outcome::Dropped(_) => {
                skipped += 1;
                continue;
            }
        };
        let mut kinds: Vec<PreparedKind> = Vec::new();
        for d in &r.diffs {
            let key = diff_kind_key(&d.kind);
            match kinds.iter_mut().find(|k| k.key == key) {
                Some(k) => k.occurrences += 1,
                None => kinds.push(PreparedKind {
                    key,
                    secondary: false,
                    occurrences: 1,
                    legacy: d.legacy.clone(),
                    candidate: d.candidate.clone(),
                }),
            }
        }
        for d in &r.secondary_diffs {
            let key = diff_kind_key(d);
            match kinds.iter_mut().find(|k| k.secondary && k.key == key) {
                Some(k) => k.occurrences += 1,
                None => kinds.push(PreparedKind {
                    key,
                    secondary: true,
                    occurrences: 1,
                    legacy: None,
                    candidate: None,
                }),
            }
        }
        let candidate_status = r.candidate_status.map(i64::from);
        out.push(PreparedExchange {
            host: r.host.clone(),
            id: r.id.clone(),
            run_id: r.run_id.clone(),
            ts_unix_ms: r.ts_unix_ms,
            route: r.route.clone(),
            method: r.method.clone(),
            target: r.target.clone(),
            outcome,
            error_kind,
            legacy_status: i64::from(r.legacy_status),
            candidate_status,
            status_mismatch: i64::from(
                candidate_status.is_some_and(|c| c != i64::from(r.legacy_status)),
            ),
            legacy_ttfb_ns: ns(r.legacy_ttfb_ns),
            legacy_ttlb_ns: ns(r.legacy_ttlb_ns),
            candidate_ttfb_ns: r.candidate_ttfb_ns.map(ns),
            candidate_ttlb_ns: r.candidate_ttlb_ns.map(ns),
            sample_key: sample_key(&r.host, &r.id),
            // The full diff list, lossless, for drill-down by correlation id.
            diffs_json: serde_json::to_string(&r.diffs)?,
            kinds,
            example: r.example.clone(),
        });
    }
    Ok((out, skipped))
}

pub(crate) struct LedgerRow {
    pub host: String,
    pub run_id: String,
    pub ts_unix_ms: i64,
    pub ledger: String,
    pub kernel: String,
    pub pairing: String,
    pub side_effects: Option<String>,
}

pub(crate) struct EgressRow {
    pub host: String,
    pub run_id: String,
    pub ts_unix_ms: i64,
    pub pid: i64,
    pub command: String,
    pub protocol: String,
    pub destination: String,
    pub action: &'static str,
    pub first_bytes: Option<String>,
}

pub(crate) fn parse_action(s: &str) -> Result<EgressAction, StoreError> {
    EgressAction::from_name(s).ok_or_else(|| StoreError::Corrupt(format!("egress action {s:?}")))
}

pub(crate) fn egress_rows(
    host: &str,
    run_id: &str,
    attempts: &[EgressAttempt],
) -> Result<Vec<EgressRow>, StoreError> {
    Ok(attempts
        .iter()
        .map(|a| EgressRow {
            host: host.to_string(),
            run_id: run_id.to_string(),
            ts_unix_ms: a.ts_unix_ms,
            pid: i64::from(a.pid),
            command: a.command.clone(),
            protocol: a.protocol.clone(),
            destination: a.destination.to_string(),
            action: a.action.as_str(),
            first_bytes: a.first_bytes.clone(),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::FieldDiffKind;

    #[test]
    fn key_stars_array_indexes_only() {
        let k = |p: &str| {
            diff_kind_key(&DiffKind::Field {
                path: p.into(),
                how: FieldDiffKind::Value,
            })
        };
        assert_eq!(k("$.items[3].price"), "field($.items[*].price,value)");
        assert_eq!(k("$.items[7].price"), "field($.items[*].price,value)");
        assert_eq!(k("$.a[10][2].b"), "field($.a[*][*].b,value)");
        // Not an index: quoted names or empty brackets stay.
        assert_eq!(k("$['x'][1a]"), "field($['x'][1a],value)");
        assert_eq!(k("$.a[]"), "field($.a[],value)");
        assert_eq!(
            diff_kind_key(&DiffKind::Header {
                name: "x-a[1]".into()
            }),
            "header(x-a[1])"
        );
    }

    #[test]
    fn sample_key_is_stable_and_spread() {
        assert_eq!(sample_key("h", "01A"), sample_key("h", "01A"));
        assert_ne!(sample_key("h", "01A"), sample_key("h", "01B"));
        assert_ne!(sample_key("h1", "01A"), sample_key("h", "101A"));
        let negatives = (0..1000)
            .filter(|i| sample_key("h", &i.to_string()) < 0)
            .count();
        assert!((400..600).contains(&negatives), "{negatives}");
    }
}
