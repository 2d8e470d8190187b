//! `load`: the read queries (one list, run by either backend in one read snapshot) and the
//! backend-independent assembly of their rows into [`StoredEvidence`].
//!
//! Aggregation happens in SQL (GROUP BY over indexed columns); only small results cross to
//! Rust. Latency percentiles are the exception: SQLite has no percentile function, so `load`
//! returns up to `latency_samples_per_route` samples per route, chosen as the rows with the
//! lowest `sample_key` (a hash of host and id): a uniform sample without replacement that is
//! identical from both backends. Callers compute percentiles from them (see [`percentile`]).
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::accounting::{CandidateErrorKind, LedgerSnapshot};
use crate::guard::EgressAction;

use super::rows::parse_action;
use super::{
    EffectsFigures, Example, KernelCounters, PairingCounters, ReportFilter, RunInfo, StoreError,
    StoreOptions,
};

/// A column value as read from either database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Value {
    Null,
    Int(i64),
    Text(String),
}

/// One read query, in the SQLite spelling (see `schema::Dialect::sql`).
#[derive(Clone, Debug)]
pub(crate) struct Query {
    pub sql: String,
    pub params: Vec<Value>,
}

pub(crate) type Rows = Vec<Vec<Value>>;

pub(crate) struct Plan {
    pub queries: Vec<Query>,
}

// Positions in `Plan::queries`.
const Q_RUNS: usize = 0;
const Q_LEDGERS: usize = 1;
const Q_ROUTES: usize = 2;
const Q_KINDS: usize = 3;
const Q_EXAMPLES: usize = 4;
const Q_LATENCY: usize = 5;
const Q_EGRESS: usize = 6;
const Q_EGRESS_COMMANDS: usize = 7;
const QUERY_COUNT: usize = 8;

/// Appends ` AND …` conditions for the filter on a table with `host`, `run_id` and
/// `ts_unix_ms` columns (prefixed by `alias.` when given).
fn filter_sql(f: &ReportFilter, alias: &str, with_since: bool, params: &mut Vec<Value>) -> String {
    let col = |c: &str| {
        if alias.is_empty() {
            c.to_string()
        } else {
            format!("{alias}.{c}")
        }
    };
    let mut sql = String::new();
    if let (true, Some(since)) = (with_since, f.since) {
        params.push(Value::Int(since));
        sql.push_str(&format!(" AND {} >= ?{}", col("ts_unix_ms"), params.len()));
    }
    if let Some(host) = &f.host {
        params.push(Value::Text(host.clone()));
        sql.push_str(&format!(" AND {} = ?{}", col("host"), params.len()));
    }
    if let Some(run) = &f.run_id {
        params.push(Value::Text(run.clone()));
        sql.push_str(&format!(" AND {} = ?{}", col("run_id"), params.len()));
    }
    sql
}

fn query(build: impl FnOnce(&mut Vec<Value>) -> String) -> Query {
    let mut params = Vec::new();
    let sql = build(&mut params);
    Query { sql, params }
}

pub(crate) fn plan(f: &ReportFilter, opts: &StoreOptions) -> Plan {
    let queries = vec![
        // Runs are metadata: selected by host and run, not by time.
        query(|p| {
            format!(
                "SELECT host, run_id, started_unix_ms, args, criteria, candidate_cpu FROM runs WHERE 1=1{}",
                filter_sql(f, "", false, p)
            )
        }),
        query(|p| {
            format!(
                "SELECT host, run_id, ts_unix_ms, ledger, kernel, pairing, side_effects FROM ledgers WHERE 1=1{}",
                filter_sql(f, "", true, p)
            )
        }),
        query(|p| {
            format!(
                "SELECT route, outcome, error_kind, COUNT(*), CAST(SUM(status_mismatch) AS BIGINT) \
                 FROM exchanges WHERE 1=1{} GROUP BY route, outcome, error_kind",
                filter_sql(f, "", true, p)
            )
        }),
        query(|p| {
            format!(
                "SELECT route, kind_key, secondary, CAST(SUM(occurrences) AS BIGINT), COUNT(*), \
                 CAST(SUM(CASE WHEN example = 2 THEN 1 ELSE 0 END) AS BIGINT) \
                 FROM diff_kinds WHERE 1=1{} GROUP BY route, kind_key, secondary",
                filter_sql(f, "", true, p)
            )
        }),
        // Up to N exchanges per (route, key): those with kept bodies first, then the oldest.
        query(|p| {
            let filter = filter_sql(f, "d", true, p);
            p.push(Value::Int(i64::from(opts.examples_per_kind)));
            format!(
                "SELECT x.route, x.kind_key, x.host, x.run_id, x.exchange_id, x.ts_unix_ms, x.legacy, x.candidate, \
                 e.request, e.legacy_body, e.candidate_body \
                 FROM (SELECT d.*, ROW_NUMBER() OVER (PARTITION BY d.route, d.kind_key \
                   ORDER BY CASE WHEN d.example = 1 THEN 0 ELSE 1 END, d.ts_unix_ms, d.host{{C}}, d.exchange_id{{C}}) AS rn \
                   FROM diff_kinds d WHERE d.secondary = 0{filter}) x \
                 LEFT JOIN examples e ON e.xid = x.xid AND x.example = 1 \
                 WHERE x.rn <= ?{}",
                p.len()
            )
        }),
        query(|p| {
            let filter = filter_sql(f, "", true, p);
            p.push(Value::Int(i64::from(opts.latency_samples_per_route)));
            format!(
                "SELECT route, sample_key, host, id, legacy_ttfb_ns, legacy_ttlb_ns, candidate_ttfb_ns, candidate_ttlb_ns \
                 FROM (SELECT route, sample_key, host, id, legacy_ttfb_ns, legacy_ttlb_ns, candidate_ttfb_ns, \
                   candidate_ttlb_ns, ROW_NUMBER() OVER (PARTITION BY route ORDER BY sample_key, host{{C}}, id{{C}}) AS rn \
                   FROM exchanges WHERE 1=1{filter}) x \
                 WHERE x.rn <= ?{}",
                p.len()
            )
        }),
        query(|p| {
            format!(
                "SELECT destination, protocol, action, COUNT(*), MIN(ts_unix_ms), MAX(ts_unix_ms), COUNT(DISTINCT host) \
                 FROM egress WHERE 1=1{} GROUP BY destination, protocol, action",
                filter_sql(f, "", true, p)
            )
        }),
        query(|p| {
            format!(
                "SELECT DISTINCT destination, protocol, action, command FROM egress WHERE 1=1{}",
                filter_sql(f, "", true, p)
            )
        }),
    ];
    Plan { queries }
}

/// Latest ledger of one run on one host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostLedger {
    pub host: String,
    pub run_id: String,
    pub ts_unix_ms: i64,
    pub ledger: LedgerSnapshot,
    pub kernel: KernelCounters,
    /// `None` for snapshots written before pairing figures were stored.
    pub pairing: Option<PairingCounters>,
    /// `None` for runs without `--dependency` and snapshots written before side-effect
    /// figures were stored.
    pub side_effects: Option<EffectsFigures>,
}

/// Outcomes of the stored exchanges of one route.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteStats {
    pub route: String,
    /// Stored exchanges: matched + differed + candidate errors.
    pub compared: u64,
    pub matched: u64,
    pub differed: u64,
    /// Every kind, in `CandidateErrorKind::ALL` order.
    pub candidate_errors: Vec<(CandidateErrorKind, u64)>,
    /// Exchanges where the candidate answered with a different status code.
    pub status_mismatches: u64,
}

/// One stored exchange filed under a (route, key), with the renderings of its first diff of
/// that key and, when kept, the masked bodies.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiffExample {
    pub id: String,
    pub host: String,
    pub run_id: String,
    pub ts_unix_ms: i64,
    pub legacy: Option<String>,
    pub candidate: Option<String>,
    pub bodies: Option<Example>,
}

/// Counts for one (route, diff key); `key` is [`super::diff_kind_key`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiffKindStats {
    pub route: String,
    pub key: String,
    /// Candidate-vs-legacy diffs of this key (an exchange can have several).
    pub diffs: u64,
    /// Exchanges with at least one such diff.
    pub exchanges: u64,
    /// Legacy-vs-secondary-legacy diffs of this key: the legacy's own noise.
    pub secondary_diffs: u64,
    pub secondary_exchanges: u64,
    /// Exchanges whose example was not kept for this key (quota reached).
    pub examples_dropped: u64,
    /// Up to `examples_per_kind` exchanges with this diff, kept bodies first, then oldest.
    pub examples: Vec<DiffExample>,
}

/// Timings of one exchange, in nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LatencySample {
    pub legacy_ttfb_ns: u64,
    pub legacy_ttlb_ns: u64,
    pub candidate_ttfb_ns: Option<u64>,
    pub candidate_ttlb_ns: Option<u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteLatency {
    pub route: String,
    /// Stored exchanges of the route; `samples.len()` is smaller when sampling kicked in.
    pub exchanges: u64,
    /// A uniform sample (all rows when there are few enough), in a deterministic order.
    pub samples: Vec<LatencySample>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EgressSummary {
    pub destination: String,
    pub protocol: String,
    pub action: EgressAction,
    pub attempts: u64,
    /// Distinct hosts reporting it.
    pub hosts: u64,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    /// Process names seen making the attempt, sorted.
    pub commands: Vec<String>,
}

/// What `report` needs, aggregated across hosts. Every list has a deterministic order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredEvidence {
    /// Sorted by (host, run_id).
    pub runs: Vec<RunInfo>,
    /// Latest snapshot per (host, run_id), sorted by (host, run_id).
    pub ledgers: Vec<HostLedger>,
    /// Sum of `ledgers`.
    pub ledger_total: LedgerSnapshot,
    /// Sum of the kernel counters of `ledgers`.
    pub kernel_total: KernelCounters,
    /// Sum of the pairing counters of the `ledgers` that have them; `None` when none has.
    pub pairing_total: Option<PairingCounters>,
    /// Sum of the side-effect figures of the `ledgers` that have them; `None` when none has.
    pub side_effects_total: Option<EffectsFigures>,
    /// Sorted by route.
    pub routes: Vec<RouteStats>,
    /// Most frequent first (by exchanges, then secondary exchanges), then by route and key.
    pub diffs: Vec<DiffKindStats>,
    /// Sorted by route.
    pub latency: Vec<RouteLatency>,
    /// Sorted by destination, protocol, action.
    pub egress: Vec<EgressSummary>,
}

/// Nearest-rank percentile (`q` in 0..=1) of a sorted slice.
pub fn percentile(sorted: &[u64], q: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let n = sorted.len();
    let rank = (q.clamp(0.0, 1.0) * n as f64).ceil() as usize;
    sorted.get(rank.clamp(1, n) - 1).copied()
}

fn text(row: &[Value], i: usize) -> Result<String, StoreError> {
    match row.get(i) {
        Some(Value::Text(s)) => Ok(s.clone()),
        other => Err(StoreError::Corrupt(format!(
            "column {i}: expected text, got {other:?}"
        ))),
    }
}

fn opt_text(row: &[Value], i: usize) -> Result<Option<String>, StoreError> {
    match row.get(i) {
        Some(Value::Null) => Ok(None),
        _ => text(row, i).map(Some),
    }
}

fn int(row: &[Value], i: usize) -> Result<i64, StoreError> {
    match row.get(i) {
        Some(Value::Int(v)) => Ok(*v),
        // SUM over no rows is NULL; every SUM here is over a non-empty group, but be lenient.
        Some(Value::Null) => Ok(0),
        other => Err(StoreError::Corrupt(format!(
            "column {i}: expected integer, got {other:?}"
        ))),
    }
}

fn count(row: &[Value], i: usize) -> Result<u64, StoreError> {
    let v = int(row, i)?;
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("column {i}: negative count {v}")))
}

fn opt_count(row: &[Value], i: usize) -> Result<Option<u64>, StoreError> {
    match row.get(i) {
        Some(Value::Null) => Ok(None),
        _ => count(row, i).map(Some),
    }
}

fn sum_ledger(total: &mut LedgerSnapshot, s: &LedgerSnapshot) {
    total.seen += s.seen;
    total.matched += s.matched;
    total.differed += s.differed;
    total.sampled_out += s.sampled_out;
    total.excluded += s.excluded;
    for (k, n) in &s.candidate_error {
        if let Some(slot) = total.candidate_error.iter_mut().find(|(t, _)| t == k) {
            slot.1 += n;
        }
    }
    for (r, n) in &s.dropped {
        if let Some(slot) = total.dropped.iter_mut().find(|(t, _)| t == r) {
            slot.1 += n;
        }
    }
}

fn error_kind(s: &str) -> Result<CandidateErrorKind, StoreError> {
    CandidateErrorKind::ALL
        .into_iter()
        .find(|k| k.as_str() == s)
        .ok_or_else(|| StoreError::Corrupt(format!("candidate error kind {s:?}")))
}

pub(crate) fn assemble(_plan: &Plan, results: Vec<Rows>) -> Result<StoredEvidence, StoreError> {
    if results.len() != QUERY_COUNT {
        return Err(StoreError::Corrupt(format!(
            "expected {QUERY_COUNT} result sets, got {}",
            results.len()
        )));
    }
    let mut ev = StoredEvidence {
        ledger_total: LedgerSnapshot {
            candidate_error: CandidateErrorKind::ALL.iter().map(|k| (*k, 0)).collect(),
            dropped: crate::accounting::DropReason::ALL
                .iter()
                .map(|r| (*r, 0))
                .collect(),
            ..LedgerSnapshot::default()
        },
        ..StoredEvidence::default()
    };

    for row in &results[Q_RUNS] {
        ev.runs.push(RunInfo {
            host: text(row, 0)?,
            run_id: text(row, 1)?,
            started_unix_ms: int(row, 2)?,
            args: text(row, 3)?,
            criteria: text(row, 4)?,
            candidate_cpu: opt_text(row, 5)?
                .map(|t| serde_json::from_str(&t))
                .transpose()?,
        });
    }
    ev.runs
        .sort_by(|a, b| (&a.host, &a.run_id).cmp(&(&b.host, &b.run_id)));

    for row in &results[Q_LEDGERS] {
        let ledger: LedgerSnapshot = serde_json::from_str(&text(row, 3)?)?;
        let kernel: KernelCounters = serde_json::from_str(&text(row, 4)?)?;
        let pairing: Option<PairingCounters> = match opt_text(row, 5)? {
            Some(json) => Some(serde_json::from_str(&json)?),
            None => None,
        };
        sum_ledger(&mut ev.ledger_total, &ledger);
        ev.kernel_total.add(&kernel);
        if let Some(p) = &pairing {
            ev.pairing_total.get_or_insert_default().add(p);
        }
        let side_effects: Option<EffectsFigures> = match opt_text(row, 6)? {
            Some(json) => Some(serde_json::from_str(&json)?),
            None => None,
        };
        if let Some(f) = &side_effects {
            ev.side_effects_total.get_or_insert_default().add(f);
        }
        ev.ledgers.push(HostLedger {
            host: text(row, 0)?,
            run_id: text(row, 1)?,
            ts_unix_ms: int(row, 2)?,
            ledger,
            kernel,
            pairing,
            side_effects,
        });
    }
    ev.ledgers
        .sort_by(|a, b| (&a.host, &a.run_id).cmp(&(&b.host, &b.run_id)));

    let mut routes: BTreeMap<String, RouteStats> = BTreeMap::new();
    for row in &results[Q_ROUTES] {
        let route = text(row, 0)?;
        let n = count(row, 3)?;
        let r = routes.entry(route.clone()).or_insert_with(|| RouteStats {
            route,
            candidate_errors: CandidateErrorKind::ALL.iter().map(|k| (*k, 0)).collect(),
            ..RouteStats::default()
        });
        r.compared += n;
        r.status_mismatches += count(row, 4)?;
        match text(row, 1)?.as_str() {
            "matched" => r.matched += n,
            "differed" => r.differed += n,
            "candidate_error" => {
                let kind = error_kind(&text(row, 2)?)?;
                if let Some(slot) = r.candidate_errors.iter_mut().find(|(k, _)| *k == kind) {
                    slot.1 += n;
                }
            }
            other => return Err(StoreError::Corrupt(format!("outcome {other:?}"))),
        }
    }

    let mut kinds: BTreeMap<(String, String), DiffKindStats> = BTreeMap::new();
    for row in &results[Q_KINDS] {
        let (route, key) = (text(row, 0)?, text(row, 1)?);
        let k = kinds
            .entry((route.clone(), key.clone()))
            .or_insert_with(|| DiffKindStats {
                route,
                key,
                ..DiffKindStats::default()
            });
        if int(row, 2)? != 0 {
            k.secondary_diffs += count(row, 3)?;
            k.secondary_exchanges += count(row, 4)?;
        } else {
            k.diffs += count(row, 3)?;
            k.exchanges += count(row, 4)?;
            k.examples_dropped += count(row, 5)?;
        }
    }
    for row in &results[Q_EXAMPLES] {
        let bodies = match (opt_text(row, 8)?, opt_text(row, 9)?, opt_text(row, 10)?) {
            (Some(request), Some(legacy_body), Some(candidate_body)) => Some(Example {
                request,
                legacy_body,
                candidate_body,
            }),
            _ => None,
        };
        let example = DiffExample {
            id: text(row, 4)?,
            host: text(row, 2)?,
            run_id: text(row, 3)?,
            ts_unix_ms: int(row, 5)?,
            legacy: opt_text(row, 6)?,
            candidate: opt_text(row, 7)?,
            bodies,
        };
        if let Some(k) = kinds.get_mut(&(text(row, 0)?, text(row, 1)?)) {
            k.examples.push(example);
        }
    }
    let mut diffs: Vec<DiffKindStats> = kinds.into_values().collect();
    for d in &mut diffs {
        d.examples.sort_by(|a, b| {
            (a.bodies.is_none(), a.ts_unix_ms, &a.host, &a.id).cmp(&(
                b.bodies.is_none(),
                b.ts_unix_ms,
                &b.host,
                &b.id,
            ))
        });
    }
    diffs.sort_by(|a, b| {
        (b.exchanges, b.secondary_exchanges, &a.route, &a.key).cmp(&(
            a.exchanges,
            a.secondary_exchanges,
            &b.route,
            &b.key,
        ))
    });
    ev.diffs = diffs;

    let mut latency: BTreeMap<String, Vec<(i64, String, String, LatencySample)>> = BTreeMap::new();
    for row in &results[Q_LATENCY] {
        let sample = LatencySample {
            legacy_ttfb_ns: count(row, 4)?,
            legacy_ttlb_ns: count(row, 5)?,
            candidate_ttfb_ns: opt_count(row, 6)?,
            candidate_ttlb_ns: opt_count(row, 7)?,
        };
        latency.entry(text(row, 0)?).or_default().push((
            int(row, 1)?,
            text(row, 2)?,
            text(row, 3)?,
            sample,
        ));
    }
    ev.latency = routes
        .values()
        .map(|r| {
            let mut rows = latency.remove(&r.route).unwrap_or_default();
            rows.sort_by(|a, b| (a.0, &a.1, &a.2).cmp(&(b.0, &b.1, &b.2)));
            RouteLatency {
                route: r.route.clone(),
                exchanges: r.compared,
                samples: rows.into_iter().map(|x| x.3).collect(),
            }
        })
        .collect();
    ev.routes = routes.into_values().collect();

    let mut commands: BTreeMap<(String, String, String), Vec<String>> = BTreeMap::new();
    for row in &results[Q_EGRESS_COMMANDS] {
        commands
            .entry((text(row, 0)?, text(row, 1)?, text(row, 2)?))
            .or_default()
            .push(text(row, 3)?);
    }
    for row in &results[Q_EGRESS] {
        let group = (text(row, 0)?, text(row, 1)?, text(row, 2)?);
        let mut cmds = commands.remove(&group).unwrap_or_default();
        cmds.sort();
        ev.egress.push(EgressSummary {
            action: parse_action(&group.2)?,
            destination: group.0,
            protocol: group.1,
            attempts: count(row, 3)?,
            first_seen_ms: int(row, 4)?,
            last_seen_ms: int(row, 5)?,
            hosts: count(row, 6)?,
            commands: cmds,
        });
    }
    ev.egress.sort_by(|a, b| {
        (&a.destination, &a.protocol, a.action).cmp(&(&b.destination, &b.protocol, b.action))
    });
    Ok(ev)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.5), Some(50));
        assert_eq!(percentile(&v, 0.95), Some(95));
        assert_eq!(percentile(&v, 0.99), Some(99));
        assert_eq!(percentile(&v, 1.0), Some(100));
        assert_eq!(percentile(&v, 0.0), Some(1));
        assert_eq!(percentile(&[], 0.5), None);
        assert_eq!(percentile(&[7], 0.99), Some(7));
    }
}
