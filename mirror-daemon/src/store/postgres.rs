//! PostgreSQL backend: many daemons (one per legacy host) write one database; `report`
//! reads it. One connection per `Store`; transactions take it exclusively.
use std::collections::BTreeSet;

use tokio::sync::Mutex;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, IsolationLevel, NoTls, Transaction};

use super::evidence::{Query, Rows, Value};
use super::rows::{EgressRow, LedgerRow, PreparedExchange};
use super::schema::{self, Dialect};
use super::{RetentionReport, RunInfo, StoreError, WriteReport};

/// Key of the advisory lock that serializes migrations across daemons starting together.
const MIGRATION_LOCK: i64 = 0x6d69_7272_6f72; // "mirror"
const RETENTION_CHUNK: i64 = 10_000;

fn sql(template: &str) -> String {
    Dialect::Postgres.sql(template)
}

pub(crate) struct PgStore {
    client: Mutex<Client>,
}

impl PgStore {
    pub(crate) async fn open(url: &str) -> Result<PgStore, StoreError> {
        // TLS is not wired in: use a unix socket or a trusted network (see the report).
        let (mut client, connection) = tokio_postgres::connect(url, NoTls).await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(error = %e, "store: postgres connection ended");
            }
        });
        migrate(&mut client).await?;
        Ok(PgStore {
            client: Mutex::new(client),
        })
    }

    pub(crate) async fn write_batch(
        &self,
        rows: Vec<PreparedExchange>,
        cap: u32,
    ) -> Result<WriteReport, StoreError> {
        let mut client = self.client.lock().await;
        let tx = client.transaction().await?;
        let report = write_rows(&tx, &rows, i64::from(cap)).await?;
        tx.commit().await?;
        Ok(report)
    }

    pub(crate) async fn write_ledger(&self, r: &LedgerRow) -> Result<(), StoreError> {
        let client = self.client.lock().await;
        client
            .execute(
                &sql(schema::UPSERT_LEDGER),
                &[
                    &r.host,
                    &r.run_id,
                    &r.ts_unix_ms,
                    &r.ledger,
                    &r.kernel,
                    &r.pairing,
                    &r.side_effects,
                ],
            )
            .await?;
        Ok(())
    }

    pub(crate) async fn write_egress(&self, rows: &[EgressRow]) -> Result<(), StoreError> {
        let mut client = self.client.lock().await;
        let tx = client.transaction().await?;
        let st = tx.prepare(&sql(schema::INSERT_EGRESS)).await?;
        for r in rows {
            tx.execute(
                &st,
                &[
                    &r.host,
                    &r.run_id,
                    &r.ts_unix_ms,
                    &r.pid,
                    &r.command,
                    &r.protocol,
                    &r.destination,
                    &r.action,
                    &r.first_bytes,
                ],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub(crate) async fn write_run(&self, run: &RunInfo) -> Result<(), StoreError> {
        let candidate_cpu = run.candidate_cpu.map(super::CandidateCpu::to_column);
        let client = self.client.lock().await;
        client
            .execute(
                &sql(schema::UPSERT_RUN),
                &[
                    &run.host,
                    &run.run_id,
                    &run.started_unix_ms,
                    &run.args,
                    &run.criteria,
                    &candidate_cpu,
                ],
            )
            .await?;
        Ok(())
    }

    pub(crate) async fn enforce_retention(
        &self,
        cutoff: Option<i64>,
        max_bytes: Option<u64>,
    ) -> Result<RetentionReport, StoreError> {
        let mut client = self.client.lock().await;
        let mut report = RetentionReport {
            bytes_before: used_bytes(&client).await?,
            ..RetentionReport::default()
        };
        if let Some(cutoff) = cutoff {
            loop {
                let n = delete_oldest(&mut client, cutoff, RETENTION_CHUNK).await?;
                report.exchanges_deleted += n;
                if n < RETENTION_CHUNK as u64 {
                    break;
                }
            }
            report.egress_deleted += client
                .execute(&sql(schema::DELETE_EGRESS_BEFORE), &[&cutoff])
                .await?;
            report.ledgers_deleted += client
                .execute(&sql(schema::DELETE_LEDGERS_BEFORE), &[&cutoff])
                .await?;
        }
        if let Some(max) = max_bytes {
            // PostgreSQL keeps deleted rows' space for reuse (autovacuum) rather than
            // returning it, so the size cannot be re-measured: one proportional pass.
            let used = report.bytes_before;
            if used > max {
                let total: i64 = client
                    .query_one(schema::COUNT_EXCHANGES, &[])
                    .await?
                    .try_get(0)?;
                let share = (used - max) as f64 / used as f64 * 1.05;
                let mut left = ((total as f64 * share).ceil() as i64).clamp(0, total);
                let mut deleted = 0;
                while left > 0 {
                    let n = delete_oldest(&mut client, i64::MAX, left.min(RETENTION_CHUNK)).await?;
                    if n == 0 {
                        break;
                    }
                    deleted += n;
                    left -= n as i64;
                }
                report.exchanges_deleted += deleted;
                if deleted > 0 {
                    let oldest: Option<i64> = client
                        .query_one(schema::OLDEST_EXCHANGE_TS, &[])
                        .await?
                        .try_get(0)?;
                    if let Some(oldest) = oldest {
                        report.egress_deleted += client
                            .execute(&sql(schema::DELETE_EGRESS_BEFORE), &[&oldest])
                            .await?;
                    }
                }
            }
        }
        if report.exchanges_deleted > 0 {
            for q in schema::RECOUNT_SLOTS {
                client.execute(q, &[]).await?;
            }
        }
        report.bytes_after = used_bytes(&client).await?;
        Ok(report)
    }

    pub(crate) async fn run_queries(&self, queries: &[Query]) -> Result<Vec<Rows>, StoreError> {
        let mut client = self.client.lock().await;
        // One snapshot for every query, as with SQLite.
        let tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        let mut out = Vec::with_capacity(queries.len());
        for q in queries {
            out.push(read_rows(&tx, q).await?);
        }
        tx.commit().await?;
        Ok(out)
    }
}

async fn migrate(client: &mut Client) -> Result<(), StoreError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(schema::CREATE_VERSION_TABLE).await?;
    let version: i64 = tx
        .query_one(
            "SELECT CAST(COALESCE(MAX(version), 0) AS BIGINT) FROM schema_version",
            &[],
        )
        .await?
        .try_get(0)?;
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
            tx.batch_execute(&sql(q)).await?;
        }
    }
    tx.execute("DELETE FROM schema_version", &[]).await?;
    tx.execute(
        "INSERT INTO schema_version (version) VALUES ($1)",
        &[&schema::SCHEMA_VERSION],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

async fn write_rows(
    tx: &Transaction<'_>,
    rows: &[PreparedExchange],
    cap: i64,
) -> Result<WriteReport, StoreError> {
    let insert = tx.prepare(&sql(schema::INSERT_EXCHANGE)).await?;
    let insert_kind = tx.prepare(&sql(schema::INSERT_KIND)).await?;
    let insert_example = tx.prepare(&sql(schema::INSERT_EXAMPLE)).await?;
    let take_slot = tx.prepare(&sql(schema::TAKE_SLOT)).await?;
    // Lock every example slot this batch may take, in one global order (sorted keys), before
    // taking any: daemons writing concurrently then queue on the first shared slot instead
    // of deadlocking on two slots taken in opposite orders.
    let wanted: BTreeSet<(&str, &str)> = rows
        .iter()
        .filter(|r| r.example.is_some())
        .flat_map(|r| {
            r.kinds
                .iter()
                .filter(|k| !k.secondary)
                .map(move |k| (r.route.as_str(), k.key.as_str()))
        })
        .collect();
    if cap > 0 && !wanted.is_empty() {
        let create = tx.prepare(&sql(schema::CREATE_SLOT)).await?;
        let lock = tx.prepare(&sql(schema::LOCK_SLOT)).await?;
        for (route, key) in &wanted {
            tx.execute(&create, &[route, key]).await?;
            tx.query_one(&lock, &[route, key]).await?;
        }
    }
    let mut report = WriteReport::default();
    for r in rows {
        let row = tx
            .query_opt(
                &insert,
                &[
                    &r.host,
                    &r.id,
                    &r.run_id,
                    &r.ts_unix_ms,
                    &r.route,
                    &r.method,
                    &r.target,
                    &r.outcome,
                    &r.error_kind,
                    &r.legacy_status,
                    &r.candidate_status,
                    &r.status_mismatch,
                    &r.legacy_ttfb_ns,
                    &r.legacy_ttlb_ns,
                    &r.candidate_ttfb_ns,
                    &r.candidate_ttlb_ns,
                    &r.sample_key,
                    &r.diffs_json,
                ],
            )
            .await?;
        let Some(row) = row else {
            report.duplicates += 1;
            continue;
        };
        let seq: i64 = row.try_get(0)?;
        report.inserted += 1;
        let mut states = vec![0i64; r.kinds.len()];
        if let Some(ex) = &r.example {
            for (k, state) in r
                .kinds
                .iter()
                .zip(states.iter_mut())
                .filter(|(k, _)| !k.secondary)
            {
                let took = cap > 0
                    && tx
                        .query_opt(&take_slot, &[&r.route, &k.key, &cap])
                        .await?
                        .is_some();
                *state = if took { 1 } else { 2 };
            }
            if states.contains(&1) {
                tx.execute(
                    &insert_example,
                    &[
                        &seq,
                        &r.host,
                        &r.run_id,
                        &r.ts_unix_ms,
                        &ex.request,
                        &ex.legacy_body,
                        &ex.candidate_body,
                    ],
                )
                .await?;
                report.examples_kept += 1;
            } else {
                report.examples_dropped += 1;
            }
        }
        for (k, state) in r.kinds.iter().zip(states) {
            let secondary = i64::from(k.secondary);
            tx.execute(
                &insert_kind,
                &[
                    &seq,
                    &r.host,
                    &r.id,
                    &r.run_id,
                    &r.ts_unix_ms,
                    &r.route,
                    &k.key,
                    &secondary,
                    &k.occurrences,
                    &k.legacy,
                    &k.candidate,
                    &state,
                ],
            )
            .await?;
        }
    }
    Ok(report)
}

async fn read_rows(tx: &Transaction<'_>, q: &Query) -> Result<Rows, StoreError> {
    let params: Vec<Box<dyn ToSql + Sync + Send>> = q
        .params
        .iter()
        .map(|v| -> Box<dyn ToSql + Sync + Send> {
            match v {
                Value::Null => Box::new(Option::<String>::None),
                Value::Int(i) => Box::new(*i),
                Value::Text(s) => Box::new(s.clone()),
            }
        })
        .collect();
    let refs: Vec<&(dyn ToSql + Sync)> = params
        .iter()
        .map(|b| b.as_ref() as &(dyn ToSql + Sync))
        .collect();
    let rows = tx.query(&sql(&q.sql), &refs).await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let mut vals = Vec::with_capacity(row.len());
        for (i, col) in row.columns().iter().enumerate() {
            let t = col.type_();
            let v = if *t == Type::INT8 {
                row.try_get::<_, Option<i64>>(i)?
                    .map_or(Value::Null, Value::Int)
            } else if *t == Type::INT4 {
                row.try_get::<_, Option<i32>>(i)?
                    .map_or(Value::Null, |v| Value::Int(i64::from(v)))
            } else if *t == Type::INT2 {
                row.try_get::<_, Option<i16>>(i)?
                    .map_or(Value::Null, |v| Value::Int(i64::from(v)))
            } else if *t == Type::TEXT || *t == Type::VARCHAR || *t == Type::NAME {
                row.try_get::<_, Option<String>>(i)?
                    .map_or(Value::Null, Value::Text)
            } else {
                return Err(StoreError::Corrupt(format!(
                    "unexpected column type {t} in {}",
                    col.name()
                )));
            };
            vals.push(v);
        }
        out.push(vals);
    }
    Ok(out)
}

async fn used_bytes(client: &Client) -> Result<u64, StoreError> {
    let q = "SELECT CAST(pg_total_relation_size('exchanges') + pg_total_relation_size('diff_kinds') \
             + pg_total_relation_size('examples') + pg_total_relation_size('egress') AS BIGINT)";
    let v: i64 = client.query_one(q, &[]).await?.try_get(0)?;
    Ok(u64::try_from(v).unwrap_or(0))
}

async fn delete_oldest(client: &mut Client, before: i64, limit: i64) -> Result<u64, StoreError> {
    let tx = client.transaction().await?;
    let [kinds, examples, exchanges] = schema::delete_oldest_before();
    tx.execute(&sql(&kinds), &[&before, &limit]).await?;
    tx.execute(&sql(&examples), &[&before, &limit]).await?;
    let n = tx.execute(&sql(&exchanges), &[&before, &limit]).await?;
    tx.commit().await?;
    Ok(n)
}
