//! SQLite backend: one writer connection behind a mutex, used on tokio's blocking pool; each
//! `load` opens its own connection, so reports never wait for writers (WAL).
use std::fs::OpenOptions;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::types::ValueRef;
use rusqlite::{Connection, Transaction, TransactionBehavior, params};

use super::evidence::{Query, Rows, Value};
use super::rows::{EgressRow, LedgerRow, PreparedExchange};
use super::schema::{self, Dialect};
use super::{RetentionReport, RunInfo, StoreError, StoreOptions, WriteReport};

/// Exchanges deleted per retention transaction, so a big cleanup does not hold the write
/// lock (and grow the WAL) for long.
const RETENTION_CHUNK: i64 = 10_000;

pub(crate) struct SqliteStore {
    path: PathBuf,
    writer: Arc<Mutex<Connection>>,
    opts: StoreOptions,
}

fn sql(template: &str) -> String {
    Dialect::Sqlite.sql(template)
}

fn worker_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Worker(e.to_string())
}

/// Opens a connection with the settings every connection needs.
fn connect(path: &Path, busy: Duration) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(busy)?;
    // NORMAL in WAL mode: a commit survives a process crash; only an OS crash or power loss
    // can undo the last transactions, never corrupt the file.
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    // The default 2 MiB page cache thrashes once the indexes outgrow it (report scans; the
    // indexes' inserts land at their right edge since schema 6); 64 MiB keeps a 1M-row
    // store's indexes mostly in memory.
    conn.pragma_update(None, "cache_size", -65_536)?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    Ok(conn)
}

fn open_writer(path: &Path, busy: Duration) -> Result<Connection, StoreError> {
    // Create the file ourselves so it is never world-readable, even for a moment; SQLite
    // gives the -wal and -shm files the database file's mode.
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    drop(file);

    let mut conn = connect(path, busy)?;
    // Only takes effect before the first table exists; lets retention shrink the file.
    conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Corrupt(format!(
            "could not enable WAL, journal_mode is {mode}"
        )));
    }
    migrate(&mut conn)?;
    Ok(conn)
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    // IMMEDIATE: two processes opening a fresh file at once do not both migrate.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute(schema::CREATE_VERSION_TABLE, [])?;
    let version: i64 = tx.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM schema_version",
        [],
        |r| r.get(0),
    )?;
    if version > schema::SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            found: version,
            supported: schema::SCHEMA_VERSION,
        });
    }
    let from = usize::try_from(version)
        .map_err(|_| StoreError::Corrupt(format!("schema version {version}")))?;
    for step in schema::MIGRATIONS.iter().skip(from) {
        for q in *step {
            tx.execute(&sql(q), [])?;
        }
    }
    tx.execute("DELETE FROM schema_version", [])?;
    tx.execute(
        "INSERT INTO schema_version (version) VALUES (?1)",
        [schema::SCHEMA_VERSION],
    )?;
    tx.commit()?;
    Ok(())
}

impl SqliteStore {
    pub(crate) async fn open(path: PathBuf, opts: StoreOptions) -> Result<SqliteStore, StoreError> {
        let (p, busy) = (path.clone(), opts.busy_timeout);
        let conn = tokio::task::spawn_blocking(move || open_writer(&p, busy))
            .await
            .map_err(worker_err)??;
        Ok(SqliteStore {
            path,
            writer: Arc::new(Mutex::new(conn)),
            opts,
        })
    }

    /// Runs `f` on the writer connection on the blocking pool.
    async fn with_writer<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = Arc::clone(&self.writer);
        tokio::task::spawn_blocking(move || {
            let mut guard = conn
                .lock()
                .map_err(|_| StoreError::Worker("writer connection poisoned".into()))?;
            f(&mut guard)
        })
        .await
        .map_err(worker_err)?
    }

    pub(crate) async fn write_batch(
        &self,
        rows: Vec<PreparedExchange>,
    ) -> Result<WriteReport, StoreError> {
        let cap = i64::from(self.opts.examples_per_kind);
        self.with_writer(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let report = write_rows(&tx, &rows, cap)?;
            tx.commit()?;
            Ok(report)
        })
        .await
    }

    pub(crate) async fn write_ledger(&self, row: LedgerRow) -> Result<(), StoreError> {
        self.with_writer(move |conn| {
            conn.execute(
                &sql(schema::UPSERT_LEDGER),
                params![
                    row.host,
                    row.run_id,
                    row.ts_unix_ms,
                    row.ledger,
                    row.kernel,
                    row.pairing,
                    row.side_effects
                ],
            )?;
            Ok(())
        })
        .await
    }

    pub(crate) async fn write_egress(&self, rows: Vec<EgressRow>) -> Result<(), StoreError> {
        self.with_writer(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            {
                let mut st = tx.prepare_cached(&sql(schema::INSERT_EGRESS))?;
                for r in &rows {
                    st.execute(params![
                        r.host,
                        r.run_id,
                        r.ts_unix_ms,
                        r.pid,
                        r.command,
                        r.protocol,
                        r.destination,
                        r.action,
                        r.first_bytes
                    ])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    pub(crate) async fn write_run(&self, run: RunInfo) -> Result<(), StoreError> {
        self.with_writer(move |conn| {
            conn.execute(
                &sql(schema::UPSERT_RUN),
                params![
                    run.host,
                    run.run_id,
                    run.started_unix_ms,
                    run.args,
                    run.criteria,
                    run.candidate_cpu.map(super::CandidateCpu::to_column)
                ],
            )?;
            Ok(())
        })
        .await
    }

    pub(crate) async fn enforce_retention(
        &self,
        cutoff: Option<i64>,
        max_bytes: Option<u64>,
    ) -> Result<RetentionReport, StoreError> {
        self.with_writer(move |conn| retention(conn, cutoff, max_bytes))
            .await
    }

    pub(crate) async fn run_queries(&self, queries: Vec<Query>) -> Result<Vec<Rows>, StoreError> {
        let (path, busy) = (self.path.clone(), self.opts.busy_timeout);
        tokio::task::spawn_blocking(move || {
            let mut conn = connect(&path, busy)?;
            // One read transaction: every query sees the same snapshot.
            let tx = conn.transaction()?;
            let mut out = Vec::with_capacity(queries.len());
            for q in &queries {
                out.push(read_rows(&tx, q)?);
            }
            tx.finish()?;
            Ok(out)
        })
        .await
        .map_err(worker_err)?
    }
}

fn write_rows(
    tx: &Transaction<'_>,
    rows: &[PreparedExchange],
    cap: i64,
) -> Result<WriteReport, StoreError> {
    let mut report = WriteReport::default();
    let mut insert = tx.prepare_cached(&sql(schema::INSERT_EXCHANGE_SQLITE))?;
    let mut insert_kind = tx.prepare_cached(&sql(schema::INSERT_KIND))?;
    let mut insert_example = tx.prepare_cached(&sql(schema::INSERT_EXAMPLE))?;
    let mut take_slot = tx.prepare_cached(&sql(schema::TAKE_SLOT_SQLITE))?;
    for r in rows {
        // No row changed: (host, id) is already stored.
        let inserted = insert.execute(params![
            r.host,
            r.id,
            r.run_id,
            r.ts_unix_ms,
            r.route,
            r.method,
            r.target,
            r.outcome,
            r.error_kind,
            r.legacy_status,
            r.candidate_status,
            r.status_mismatch,
            r.legacy_ttfb_ns,
            r.legacy_ttlb_ns,
            r.candidate_ttfb_ns,
            r.candidate_ttlb_ns,
            r.sample_key,
            r.diffs_json
        ])?;
        if inserted == 0 {
            report.duplicates += 1;
            continue;
        }
        let seq = tx.last_insert_rowid();
        report.inserted += 1;
        // Which keys this exchange's example is kept for (0 none offered, 1 kept, 2 dropped).
        let mut states = vec![0i64; r.kinds.len()];
        if let Some(ex) = &r.example {
            for (k, state) in r
                .kinds
                .iter()
                .zip(states.iter_mut())
                .filter(|(k, _)| !k.secondary)
            {
                let took = cap > 0 && take_slot.execute(params![r.route, k.key, cap])? == 1;
                *state = if took { 1 } else { 2 };
            }
            if states.contains(&1) {
                insert_example.execute(params![
                    seq,
                    r.host,
                    r.run_id,
                    r.ts_unix_ms,
                    ex.request,
                    ex.legacy_body,
                    ex.candidate_body
                ])?;
                report.examples_kept += 1;
            } else {
                report.examples_dropped += 1;
            }
        }
        for (k, state) in r.kinds.iter().zip(states) {
            insert_kind.execute(params![
                seq,
                r.host,
                r.id,
                r.run_id,
                r.ts_unix_ms,
                r.route,
                k.key,
                i64::from(k.secondary),
                k.occurrences,
                k.legacy,
                k.candidate,
                state
            ])?;
        }
    }
    Ok(report)
}

fn read_rows(conn: &Connection, q: &Query) -> Result<Rows, StoreError> {
    let mut st = conn.prepare(&sql(&q.sql))?;
    let params = rusqlite::params_from_iter(q.params.iter().map(|v| match v {
        Value::Null => rusqlite::types::Value::Null,
        Value::Int(i) => rusqlite::types::Value::Integer(*i),
        Value::Text(s) => rusqlite::types::Value::Text(s.clone()),
    }));
    let ncols = st.column_count();
    let mut rows = st.query(params)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let mut vals = Vec::with_capacity(ncols);
        for i in 0..ncols {
            vals.push(match row.get_ref(i)? {
                ValueRef::Null => Value::Null,
                ValueRef::Integer(v) => Value::Int(v),
                ValueRef::Text(t) => Value::Text(
                    std::str::from_utf8(t)
                        .map_err(|e| StoreError::Corrupt(format!("text column: {e}")))?
                        .to_string(),
                ),
                other => {
                    return Err(StoreError::Corrupt(format!(
                        "unexpected column type {:?}",
                        other.data_type()
                    )));
                }
            });
        }
        out.push(vals);
    }
    Ok(out)
}

/// Bytes in use: pages minus free pages. After an incremental vacuum and a WAL checkpoint
/// this is the file size.
fn used_bytes(conn: &Connection) -> Result<u64, StoreError> {
    let pages: i64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
    let free: i64 = conn.query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
    let size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    Ok(u64::try_from((pages - free).max(0) * size).unwrap_or(0))
}

fn delete_oldest(conn: &mut Connection, before: i64, limit: i64) -> Result<u64, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let [kinds, examples, exchanges] = schema::delete_oldest_before();
    tx.execute(&sql(&kinds), params![before, limit])?;
    tx.execute(&sql(&examples), params![before, limit])?;
    let n = tx.execute(&sql(&exchanges), params![before, limit])?;
    tx.commit()?;
    Ok(n as u64)
}

fn shrink(conn: &Connection) -> Result<(), StoreError> {
    // incremental_vacuum returns a row per freed page; drain it.
    let mut st = conn.prepare("PRAGMA incremental_vacuum")?;
    let mut rows = st.query([])?;
    while rows.next()?.is_some() {}
    drop(rows);
    let mut st = conn.prepare("PRAGMA wal_checkpoint(TRUNCATE)")?;
    let mut rows = st.query([])?;
    while rows.next()?.is_some() {}
    Ok(())
}

fn retention(
    conn: &mut Connection,
    cutoff: Option<i64>,
    max_bytes: Option<u64>,
) -> Result<RetentionReport, StoreError> {
    let mut report = RetentionReport {
        bytes_before: used_bytes(conn)?,
        ..RetentionReport::default()
    };
    if let Some(cutoff) = cutoff {
        loop {
            let n = delete_oldest(conn, cutoff, RETENTION_CHUNK)?;
            report.exchanges_deleted += n;
            if n < RETENTION_CHUNK as u64 {
                break;
            }
        }
        report.egress_deleted += conn.execute(&sql(schema::DELETE_EGRESS_BEFORE), [cutoff])? as u64;
        report.ledgers_deleted +=
            conn.execute(&sql(schema::DELETE_LEDGERS_BEFORE), [cutoff])? as u64;
    }
    if let Some(max) = max_bytes {
        let mut deleted_for_size = 0u64;
        // Each round deletes the share of rows that should free the excess (plus 5%),
        // then measures again; row sizes vary, so a few rounds may be needed.
        for _ in 0..64 {
            shrink(conn)?;
            let used = used_bytes(conn)?;
            if used <= max {
                break;
            }
            let total: i64 = conn.query_row(schema::COUNT_EXCHANGES, [], |r| r.get(0))?;
            if total == 0 {
                break;
            }
            let share = (used - max) as f64 / used as f64 * 1.05;
            let k = ((total as f64 * share).ceil() as i64).clamp(1, total.min(RETENTION_CHUNK));
            let n = delete_oldest(conn, i64::MAX, k)?;
            deleted_for_size += n;
            if n == 0 {
                break;
            }
        }
        report.exchanges_deleted += deleted_for_size;
        if deleted_for_size > 0 {
            // Egress attempts older than every remaining exchange go with them.
            let oldest: Option<i64> =
                conn.query_row(schema::OLDEST_EXCHANGE_TS, [], |r| r.get(0))?;
            if let Some(oldest) = oldest {
                report.egress_deleted +=
                    conn.execute(&sql(schema::DELETE_EGRESS_BEFORE), [oldest])? as u64;
            }
        }
    }
    if report.exchanges_deleted > 0 {
        for q in schema::RECOUNT_SLOTS {
            conn.execute(q, [])?;
        }
    }
    shrink(conn)?;
    report.bytes_after = used_bytes(conn)?;
    Ok(report)
}

#[cfg(test)]
pub(crate) fn integrity_check(path: &Path) -> Result<String, StoreError> {
    let conn = Connection::open(path)?;
    Ok(conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))?)
}
