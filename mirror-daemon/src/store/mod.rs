//! Store: where every exchange's outcome lands, in SQLite (one daemon, default) or
//! PostgreSQL (a fleet of daemons writing one store). `report` reads it back with
//! [`Store::load`], aggregated across hosts.
//!
//! Both backends run the same SQL (see `schema.rs` for the dialect layer) and the same
//! assembly code, so identical writes give identical [`StoredEvidence`].
mod evidence;
#[cfg(test)]
mod pg_test_server;
mod postgres;
mod rows;
mod schema;
mod sqlite;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::accounting::{LedgerSnapshot, Outcome};
use crate::compare::{Diff, DiffKind};
use crate::guard::EgressAttempt;

pub use evidence::{
    DiffExample, DiffKindStats, EgressSummary, HostLedger, LatencySample, RouteLatency, RouteStats,
    StoredEvidence, percentile,
};
pub use rows::diff_kind_key;

/// One exchange that reached an outcome worth keeping: matched, differed or
/// candidate_error. Other outcomes are counted in ledgers only; `write_batch` skips them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExchangeRecord {
    /// Correlation id (ULID).
    pub id: String,
    pub host: String,
    pub run_id: String,
    pub ts_unix_ms: i64,
    /// Route template, method and target, already masked by the caller.
    pub route: String,
    pub method: String,
    pub target: String,
    pub outcome: Outcome,
    pub legacy_status: u16,
    pub candidate_status: Option<u16>,
    /// Candidate vs legacy (already masked renderings).
    pub diffs: Vec<Diff>,
    /// Legacy vs secondary legacy, when `--secondary` is used.
    pub secondary_diffs: Vec<DiffKind>,
    pub legacy_ttfb_ns: u64,
    pub legacy_ttlb_ns: u64,
    pub candidate_ttfb_ns: Option<u64>,
    pub candidate_ttlb_ns: Option<u64>,
    /// Masked bodies; kept for at most `examples_per_kind` exchanges per (route, diff key).
    pub example: Option<Example>,
}

/// Masked request and both response bodies of one differing exchange.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Example {
    pub request: String,
    pub legacy_body: String,
    pub candidate_body: String,
}

/// Where the store lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreUrl {
    Sqlite(PathBuf),
    /// A libpq-style URL, `postgres://…` or `postgresql://…`.
    Postgres(String),
}

/// `postgres://…`/`postgresql://…` → PostgreSQL; anything else is a SQLite file path
/// (`sqlite://` prefix accepted and stripped).
pub fn parse_store_url(s: &str) -> Result<StoreUrl, StoreError> {
    let s = s.trim();
    if s.is_empty() {
        return Err(StoreError::InvalidUrl("empty store location".into()));
    }
    let lower = s.to_ascii_lowercase();
    if lower.starts_with("postgres://") || lower.starts_with("postgresql://") {
        // Validate now so a typo fails at startup, not at the first write.
        s.parse::<tokio_postgres::Config>()
            .map_err(|e| StoreError::InvalidUrl(format!("{}: {e}", redact_url(s))))?;
        return Ok(StoreUrl::Postgres(s.to_string()));
    }
    let path = s.strip_prefix("sqlite://").unwrap_or(s);
    if path.is_empty() {
        return Err(StoreError::InvalidUrl("empty SQLite path".into()));
    }
    Ok(StoreUrl::Sqlite(PathBuf::from(path)))
}

/// The URL without its password, for messages.
fn redact_url(s: &str) -> String {
    match (s.find("://"), s.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &s[scheme + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!("{}:***{}", &s[..scheme + 3 + colon], &s[at..]),
                None => s.to_string(),
            }
        }
        _ => s.to_string(),
    }
}

/// Tuning for [`Store::open`].
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// SQLite: how long a writer waits for a lock held by another connection.
    pub busy_timeout: Duration,
    /// Examples kept per (route, diff key); the rest are counted as dropped.
    pub examples_per_kind: u32,
    /// Latency samples returned per route by `load` (uniform sample when there are more).
    pub latency_samples_per_route: u32,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            busy_timeout: Duration::from_secs(5),
            examples_per_kind: 5,
            latency_samples_per_route: 100_000,
        }
    }
}

/// What one `write_batch` did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteReport {
    pub inserted: u64,
    /// Rows whose (host, id) was already stored (a retried batch); not written again.
    pub duplicates: u64,
    /// Rows with an outcome that is counted in ledgers, not stored (sampled_out, excluded, dropped).
    pub skipped: u64,
    pub examples_kept: u64,
    /// Examples not stored: every (route, key) they belong to already had its quota, or
    /// the exchange had no candidate diff to file them under.
    pub examples_dropped: u64,
}

/// What one `enforce_retention` did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionReport {
    pub exchanges_deleted: u64,
    pub egress_deleted: u64,
    pub ledgers_deleted: u64,
    /// Store size estimate before and after (SQLite: used pages; PostgreSQL: table sizes).
    pub bytes_before: u64,
    pub bytes_after: u64,
}

/// Counters read from the kernel tap, stored with each ledger snapshot.
pub use crate::capture::kernel::KernelCounters;
/// The side-effect figures (`--dependency`), stored with each ledger snapshot.
pub use crate::effects::EffectsFigures;
/// The http stage's pairing figures, stored with each ledger snapshot.
pub use crate::http::PairingCounters;

/// One daemon run on one host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunInfo {
    pub host: String,
    pub run_id: String,
    pub started_unix_ms: i64,
    /// Summary of the command line (already free of secrets).
    pub args: String,
    /// The go/no-go criteria as the user wrote them.
    pub criteria: String,
    /// The candidate's CPU as the run gave it; `None`: not recorded (a run written by a
    /// build before schema 4).
    pub candidate_cpu: Option<CandidateCpu>,
}

/// The candidate's CPU a run gave it (`--candidate-cpu`) and the host's CPUs, so a card
/// can say when the candidate had less CPU than legacy (stored since schema 4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CandidateCpu {
    /// Percent of one CPU mirror capped the candidate at; `None`: no cap (`max`, or a
    /// candidate mirror does not start).
    pub cap_percent: Option<u32>,
    /// CPUs online on the run's host.
    pub host_cpus: u32,
}

impl CandidateCpu {
    /// The column's text (JSON).
    pub(crate) fn to_column(self) -> String {
        // Two plain fields: serializing cannot fail.
        serde_json::to_string(&self).unwrap_or_default()
    }
}

/// What `load` selects. `None` means no restriction.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReportFilter {
    /// Exchanges and egress attempts at or after this time; ledgers updated at or after it.
    pub since: Option<i64>,
    pub host: Option<String>,
    pub run_id: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid store location: {0}")]
    InvalidUrl(String),
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("store file: {0}")]
    Io(#[from] std::io::Error),
    #[error("store json: {0}")]
    Json(#[from] serde_json::Error),
    #[error("store worker thread failed: {0}")]
    Worker(String),
    #[error(
        "store schema version {found} is newer than this build supports ({supported}); upgrade mirror"
    )]
    SchemaTooNew { found: i64, supported: i64 },
    #[error("unexpected value in store: {0}")]
    Corrupt(String),
}

/// A store handle; cheap to share behind an `Arc`. All methods are async and never block
/// the runtime: SQLite work runs on tokio's blocking pool.
///
/// ```no_run
/// use mirror_daemon::store::{ReportFilter, Store, StoreOptions, parse_store_url};
///
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// let url = parse_store_url("/var/lib/mirror/mirror.db")?;
/// let store = Store::open(&url, StoreOptions::default()).await?;
/// // Everything one run left: routes, diffs, latency samples, egress, its ledger.
/// let filter = ReportFilter { run_id: Some("01j…".into()), ..Default::default() };
/// let evidence = store.load(&filter).await?;
/// println!("{} routes, {} seen", evidence.routes.len(), evidence.ledger_total.seen);
/// # Ok(())
/// # }
/// ```
pub struct Store {
    backend: Backend,
    opts: StoreOptions,
}

enum Backend {
    Sqlite(sqlite::SqliteStore),
    Postgres(postgres::PgStore),
}

impl Store {
    /// Opens (creating if needed) the store and brings its schema up to date.
    pub async fn open(url: &StoreUrl, opts: StoreOptions) -> Result<Store, StoreError> {
        let backend = match url {
            StoreUrl::Sqlite(path) => {
                Backend::Sqlite(sqlite::SqliteStore::open(path.clone(), opts.clone()).await?)
            }
            StoreUrl::Postgres(url) => Backend::Postgres(postgres::PgStore::open(url).await?),
        };
        Ok(Store { backend, opts })
    }

    /// Writes the rows in one transaction: all or nothing.
    pub async fn write_batch(&self, rows: &[ExchangeRecord]) -> Result<WriteReport, StoreError> {
        let (prepared, skipped) = rows::prepare(rows)?;
        let mut report = match &self.backend {
            Backend::Sqlite(s) => s.write_batch(prepared).await?,
            Backend::Postgres(p) => p.write_batch(prepared, self.opts.examples_per_kind).await?,
        };
        report.skipped = skipped;
        Ok(report)
    }

    /// Upserts the latest ledger of (host, run_id), with the tap's, the pairing and (runs
    /// with `--dependency`) the side-effect figures read at the same time; an older
    /// snapshot never replaces a newer one.
    #[allow(clippy::too_many_arguments)]
    pub async fn write_ledger(
        &self,
        host: &str,
        run_id: &str,
        ts_unix_ms: i64,
        snap: &LedgerSnapshot,
        kernel: &KernelCounters,
        pairing: &PairingCounters,
        side_effects: Option<&EffectsFigures>,
    ) -> Result<(), StoreError> {
        let row = rows::LedgerRow {
            host: host.to_string(),
            run_id: run_id.to_string(),
            ts_unix_ms,
            ledger: serde_json::to_string(snap)?,
            kernel: serde_json::to_string(kernel)?,
            pairing: serde_json::to_string(pairing)?,
            side_effects: side_effects.map(serde_json::to_string).transpose()?,
        };
        match &self.backend {
            Backend::Sqlite(s) => s.write_ledger(row).await,
            Backend::Postgres(p) => p.write_ledger(&row).await,
        }
    }

    pub async fn write_egress(
        &self,
        host: &str,
        run_id: &str,
        attempts: &[EgressAttempt],
    ) -> Result<(), StoreError> {
        let rows = rows::egress_rows(host, run_id, attempts)?;
        match &self.backend {
            Backend::Sqlite(s) => s.write_egress(rows).await,
            Backend::Postgres(p) => p.write_egress(&rows).await,
        }
    }

    /// Records (or updates) a run's metadata.
    pub async fn write_run(&self, run: &RunInfo) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.write_run(run.clone()).await,
            Backend::Postgres(p) => p.write_run(run).await,
        }
    }

    /// Deletes the oldest exchanges (with their diffs and examples) older than `max_age`,
    /// then until the store is under `max_bytes`.
    pub async fn enforce_retention(
        &self,
        max_age: Option<Duration>,
        max_bytes: Option<u64>,
    ) -> Result<RetentionReport, StoreError> {
        let cutoff = match max_age {
            Some(age) => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_err(|e| StoreError::Worker(format!("clock before 1970: {e}")))?;
                let cutoff = now.saturating_sub(age).as_millis();
                Some(i64::try_from(cutoff).unwrap_or(i64::MAX))
            }
            None => None,
        };
        match &self.backend {
            Backend::Sqlite(s) => s.enforce_retention(cutoff, max_bytes).await,
            Backend::Postgres(p) => p.enforce_retention(cutoff, max_bytes).await,
        }
    }

    /// Everything `report` needs, aggregated across hosts, read in one consistent snapshot.
    pub async fn load(&self, filter: &ReportFilter) -> Result<StoredEvidence, StoreError> {
        let plan = evidence::plan(filter, &self.opts);
        let results = match &self.backend {
            Backend::Sqlite(s) => s.run_queries(plan.queries.clone()).await?,
            Backend::Postgres(p) => p.run_queries(&plan.queries).await?,
        };
        evidence::assemble(&plan, results)
    }
}
