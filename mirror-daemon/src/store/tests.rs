//! Store tests against real databases: SQLite in temp files, PostgreSQL started by
//! `pg_test_server`. `conformance` is the shared suite, run against both backends.
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::pg_test_server::PgTestServer;
use super::*;
use crate::accounting::{CandidateErrorKind, DropReason, Ledger};
use crate::compare::FieldDiffKind;
use crate::guard::EgressAction;

const N_EXAMPLES: u32 = 2;

fn opts() -> StoreOptions {
    StoreOptions {
        examples_per_kind: N_EXAMPLES,
        ..StoreOptions::default()
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
}

fn field(path: &str) -> Diff {
    Diff {
        kind: DiffKind::Field {
            path: path.into(),
            how: FieldDiffKind::Value,
        },
        legacy: Some("1.00".into()),
        candidate: Some("1.0".into()),
    }
}

fn record(host: &str, id: &str, ts: i64, route: &str, outcome: Outcome) -> ExchangeRecord {
    ExchangeRecord {
        id: id.into(),
        host: host.into(),
        run_id: "r1".into(),
        ts_unix_ms: ts,
        route: route.into(),
        method: route.split(' ').next().unwrap_or("GET").into(),
        target: "/masked".into(),
        outcome,
        legacy_status: 200,
        candidate_status: Some(200),
        diffs: vec![],
        secondary_diffs: vec![],
        legacy_ttfb_ns: 1_000,
        legacy_ttlb_ns: 2_000,
        candidate_ttfb_ns: Some(1_500),
        candidate_ttlb_ns: Some(2_500),
        example: None,
    }
}

fn example(i: usize) -> Option<Example> {
    Some(Example {
        request: format!("GET /items?page={i}"),
        legacy_body: format!("{{\"n\":{i}}}"),
        candidate_body: format!("{{\"n\":{i}.0}}"),
    })
}

/// 15 records from one host: 10 on GET /items (5 matched, 5 differed with two indexed price
/// diffs, a header diff and an example; two with secondary diffs), 4 on POST /orders
/// (timeouts, a reset, a 500), 1 sampled out (not stored).
fn fixture(host: &str, base_ts: i64) -> Vec<ExchangeRecord> {
    let mut v = Vec::new();
    for i in 0..10usize {
        let id = format!("{host}-items-{i:02}");
        let ts = base_ts + i as i64 * 1000;
        let mut r = if i % 2 == 0 {
            record(host, &id, ts, "GET /items", Outcome::Matched)
        } else {
            let mut r = record(host, &id, ts, "GET /items", Outcome::Differed);
            r.diffs = vec![
                field(&format!("$.items[{i}].price")),
                field(&format!("$.items[{}].price", i + 1)),
                Diff {
                    kind: DiffKind::Header {
                        name: "content-type".into(),
                    },
                    legacy: Some("application/json".into()),
                    candidate: Some("text/json".into()),
                },
            ];
            r.example = example(i);
            if i <= 3 {
                r.secondary_diffs = vec![DiffKind::Header {
                    name: "date".into(),
                }];
            }
            r
        };
        r.legacy_ttfb_ns = 1_000 * (i as u64 + 1);
        r.legacy_ttlb_ns = 2_000 * (i as u64 + 1);
        r.candidate_ttfb_ns = Some(3_000 * (i as u64 + 1));
        v.push(r);
    }
    let t = base_ts + 20_000;
    let mut timeout = record(
        host,
        &format!("{host}-orders-0"),
        t,
        "POST /orders",
        Outcome::CandidateError(CandidateErrorKind::Timeout),
    );
    timeout.candidate_status = None;
    timeout.candidate_ttfb_ns = None;
    timeout.candidate_ttlb_ns = None;
    let mut timeout2 = timeout.clone();
    timeout2.id = format!("{host}-orders-1");
    let mut reset = timeout.clone();
    reset.id = format!("{host}-orders-2");
    reset.outcome = Outcome::CandidateError(CandidateErrorKind::Reset);
    let mut status = record(
        host,
        &format!("{host}-orders-3"),
        t + 1,
        "POST /orders",
        Outcome::Differed,
    );
    status.candidate_status = Some(500);
    status.diffs = vec![Diff {
        kind: DiffKind::Status,
        legacy: Some("200".into()),
        candidate: Some("500".into()),
    }];
    status.example = example(99);
    let sampled = record(
        host,
        &format!("{host}-sampled"),
        t,
        "GET /items",
        Outcome::SampledOut,
    );
    v.extend([timeout, timeout2, reset, status, sampled]);
    v
}

fn ledger_snapshot(seen: u64) -> LedgerSnapshot {
    let l = Ledger::default();
    l.saw(seen);
    l.record_n(Outcome::Matched, 5);
    l.record_n(Outcome::Differed, 6);
    l.record_n(Outcome::CandidateError(CandidateErrorKind::Timeout), 2);
    l.record_n(Outcome::Dropped(DropReason::Gap), 3);
    l.snapshot()
}

fn kernel(n: u64) -> KernelCounters {
    KernelCounters {
        segments: n,
        payload_bytes: 10 * n,
        records: n,
        ring_full: 1,
        ..KernelCounters::default()
    }
}

fn pairing(n: u64) -> PairingCounters {
    PairingCounters {
        exchanges: n,
        proven: n - 2,
        dropped_at_join: 3,
        responses_unpaired: 1,
        dropped_at_end: 4,
    }
}

fn side_effects(n: u64) -> EffectsFigures {
    let mut f = EffectsFigures {
        recorder_queue_full: 1,
        candidate_calls: n,
        matched_by_id: n - 3,
        matched_by_content: 1,
        content_ties: 1,
        unmatched: 1,
        malformed: 0,
        ..EffectsFigures::default()
    };
    f.book.calls_recorded = n + 1;
    f.book.attributed_exact = n - 2;
    f.book.attributed_window = 2;
    f.book.ambiguous = 1;
    f.book.unattributed = 1;
    f
}

fn egress(ts: i64, command: &str, port: u16, action: EgressAction) -> EgressAttempt {
    EgressAttempt {
        ts_unix_ms: ts,
        pid: 42,
        command: command.into(),
        protocol: "tcp".into(),
        destination: SocketAddr::from(([10, 0, 0, 9], port)),
        action,
        first_bytes: Some("GET / HTTP/1.1".into()),
    }
}

/// Writes everything a daemon writes for one host and checks what comes back.
async fn write_host(store: &Store, host: &str, base_ts: i64) -> WriteReport {
    store
        .write_run(&RunInfo {
            host: host.into(),
            run_id: "r1".into(),
            started_unix_ms: base_ts,
            args: "--port 8080 --sample 10%".into(),
            criteria: "parity >= 99.9%".into(),
            candidate_cpu: Some(CandidateCpu {
                cap_percent: Some(100),
                host_cpus: 2,
            }),
        })
        .await
        .expect("write run");
    let report = store
        .write_batch(&fixture(host, base_ts))
        .await
        .expect("write batch");
    store
        .write_ledger(
            host,
            "r1",
            base_ts + 10,
            &ledger_snapshot(20),
            &kernel(100),
            &pairing(11),
            Some(&side_effects(9)),
        )
        .await
        .expect("ledger");
    // An older snapshot arriving late must not replace the newer one.
    store
        .write_ledger(
            host,
            "r1",
            base_ts + 5,
            &ledger_snapshot(1),
            &kernel(1),
            &pairing(2),
            Some(&side_effects(4)),
        )
        .await
        .expect("old ledger");
    store
        .write_egress(
            host,
            "r1",
            &[
                egress(base_ts + 1, "candidate", 5432, EgressAction::Refused),
                egress(base_ts + 2, "candidate", 5432, EgressAction::Refused),
                egress(base_ts + 3, "curl", 5432, EgressAction::Refused),
                egress(base_ts + 4, "candidate", 443, EgressAction::Redirected),
            ],
        )
        .await
        .expect("egress");
    report
}

/// The shared suite: identical checks on every backend; returns the evidence so backends
/// can be compared with each other.
async fn conformance(store: &Store) -> (StoredEvidence, StoredEvidence) {
    let base = now_ms() - 3_600_000 * 3;
    let report = write_host(store, "host-a", base).await;
    assert_eq!(
        report,
        WriteReport {
            inserted: 14,
            duplicates: 0,
            skipped: 1,
            examples_kept: 3,
            examples_dropped: 3
        },
        "first write"
    );
    // A retried batch is not stored twice.
    let again = store
        .write_batch(&fixture("host-a", base))
        .await
        .expect("rewrite");
    assert_eq!(again.inserted, 0);
    assert_eq!(again.duplicates, 14);

    let ev = store.load(&ReportFilter::default()).await.expect("load");

    assert_eq!(ev.runs.len(), 1);
    assert_eq!(ev.runs[0].criteria, "parity >= 99.9%");
    assert_eq!(ev.ledgers.len(), 1);
    assert_eq!(ev.ledgers[0].ledger.seen, 20, "newest ledger kept");
    assert_eq!(ev.ledger_total, ledger_snapshot(20));
    assert_eq!(ev.kernel_total, kernel(100));
    assert_eq!(ev.ledgers[0].pairing, Some(pairing(11)));
    assert_eq!(ev.pairing_total, Some(pairing(11)));
    assert_eq!(ev.ledgers[0].side_effects, Some(side_effects(9)));
    assert_eq!(ev.side_effects_total, Some(side_effects(9)));

    assert_eq!(ev.routes.len(), 2);
    let items = &ev.routes[0];
    assert_eq!(
        (
            items.route.as_str(),
            items.compared,
            items.matched,
            items.differed
        ),
        ("GET /items", 10, 5, 5)
    );
    assert_eq!(items.status_mismatches, 0);
    let orders = &ev.routes[1];
    assert_eq!(
        (
            orders.route.as_str(),
            orders.compared,
            orders.matched,
            orders.differed
        ),
        ("POST /orders", 4, 0, 1)
    );
    assert_eq!(
        orders.candidate_errors,
        vec![
            (CandidateErrorKind::Timeout, 2),
            (CandidateErrorKind::Refused, 0),
            (CandidateErrorKind::Reset, 1),
            (CandidateErrorKind::Malformed, 0)
        ]
    );
    assert_eq!(orders.status_mismatches, 1);

    let keys: Vec<(&str, &str, u64, u64, u64, u64)> = ev
        .diffs
        .iter()
        .map(|d| {
            (
                d.route.as_str(),
                d.key.as_str(),
                d.diffs,
                d.exchanges,
                d.secondary_diffs,
                d.examples_dropped,
            )
        })
        .collect();
    assert_eq!(
        keys,
        vec![
            ("GET /items", "field($.items[*].price,value)", 10, 5, 0, 3),
            ("GET /items", "header(content-type)", 5, 5, 0, 3),
            ("POST /orders", "status", 1, 1, 0, 0),
            ("GET /items", "header(date)", 0, 0, 2, 0),
        ]
    );
    let price = &ev.diffs[0];
    assert_eq!(
        price.examples.len(),
        N_EXAMPLES as usize,
        "examples bounded per (route, kind)"
    );
    let ids: Vec<&str> = price.examples.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["host-a-items-01", "host-a-items-03"]);
    assert!(price.examples.iter().all(|e| e.bodies.is_some()));
    assert_eq!(
        price.examples[0]
            .bodies
            .as_ref()
            .map(|b| b.request.as_str()),
        Some("GET /items?page=1")
    );
    assert_eq!(price.examples[0].legacy.as_deref(), Some("1.00"));
    assert!(
        ev.diffs[3].examples.is_empty(),
        "secondary diffs carry no examples"
    );

    assert_eq!(ev.latency.len(), 2);
    assert_eq!(ev.latency[0].exchanges, 10);
    let mut ttfb: Vec<u64> = ev.latency[0]
        .samples
        .iter()
        .map(|s| s.legacy_ttfb_ns)
        .collect();
    ttfb.sort_unstable();
    assert_eq!(ttfb, (1..=10).map(|i| i * 1000).collect::<Vec<u64>>());
    assert_eq!(percentile(&ttfb, 0.5), Some(5_000));
    assert_eq!(percentile(&ttfb, 0.99), Some(10_000));
    assert_eq!(
        ev.latency[1]
            .samples
            .iter()
            .filter(|s| s.candidate_ttfb_ns.is_none())
            .count(),
        3
    );

    assert_eq!(ev.egress.len(), 2);
    let refused = &ev.egress[1];
    assert_eq!(refused.destination, "10.0.0.9:5432");
    assert_eq!(
        (refused.action, refused.attempts, refused.hosts),
        (EgressAction::Refused, 3, 1)
    );
    assert_eq!(
        (refused.first_seen_ms, refused.last_seen_ms),
        (base + 1, base + 3)
    );
    assert_eq!(refused.commands, ["candidate", "curl"]);

    // Filters.
    let since = store
        .load(&ReportFilter {
            since: Some(base + 20_000),
            ..ReportFilter::default()
        })
        .await
        .expect("load");
    assert_eq!(since.routes.len(), 1);
    assert_eq!(since.routes[0].route, "POST /orders");
    assert!(since.egress.is_empty());
    let other = store
        .load(&ReportFilter {
            host: Some("nobody".into()),
            ..ReportFilter::default()
        })
        .await
        .expect("load");
    assert!(
        other.routes.is_empty()
            && other.ledgers.is_empty()
            && other.runs.is_empty()
            && other.diffs.is_empty()
    );
    let run = store
        .load(&ReportFilter {
            run_id: Some("r1".into()),
            ..ReportFilter::default()
        })
        .await
        .expect("load");
    assert_eq!(run, ev);

    // Retention by age: everything above is 3 hours old; a fresh row survives.
    let mut fresh = fixture("host-a", now_ms());
    for r in &mut fresh {
        r.id = format!("fresh-{}", r.id);
    }
    store.write_batch(&fresh).await.expect("fresh");
    let before_ret = store.load(&ReportFilter::default()).await.expect("load");
    assert_eq!(before_ret.routes[0].compared, 20);
    let ret = store
        .enforce_retention(Some(Duration::from_secs(3600)), None)
        .await
        .expect("retention");
    assert_eq!(ret.exchanges_deleted, 14);
    assert_eq!(ret.egress_deleted, 4);
    let after = store.load(&ReportFilter::default()).await.expect("load");
    assert_eq!(after.routes[0].compared, 10);
    assert_eq!(after.routes[1].compared, 4);
    // The fresh batch found every slot taken; after retention the slots are free again.
    assert_eq!(after.diffs[0].examples_dropped, 5);
    assert!(
        after.diffs[0]
            .examples
            .iter()
            .all(|e| e.bodies.is_none() && e.id.starts_with("fresh-"))
    );
    let mut newer = fixture("host-a", now_ms());
    for r in &mut newer {
        r.id = format!("newer-{}", r.id);
    }
    let w = store.write_batch(&newer).await.expect("newer");
    assert_eq!(w.examples_kept, 3, "slots freed by retention are reused");
    let after2 = store.load(&ReportFilter::default()).await.expect("load");
    assert!(after2.diffs[0].examples.iter().all(|e| e.bodies.is_some()));
    (ev, after2)
}

async fn sqlite_store(dir: &Path) -> (Store, std::path::PathBuf) {
    let path = dir.join("mirror.db");
    let url = parse_store_url(path.to_str().expect("utf-8")).expect("url");
    (Store::open(&url, opts()).await.expect("open sqlite"), path)
}

#[test]
fn parse_urls() {
    assert_eq!(
        parse_store_url("/var/lib/mirror/m.db").expect("path"),
        StoreUrl::Sqlite("/var/lib/mirror/m.db".into())
    );
    assert_eq!(
        parse_store_url("sqlite://m.db").expect("path"),
        StoreUrl::Sqlite("m.db".into())
    );
    assert_eq!(
        parse_store_url("postgres://u:p@db:5432/mirror").expect("pg"),
        StoreUrl::Postgres("postgres://u:p@db:5432/mirror".into())
    );
    assert!(matches!(
        parse_store_url("postgresql:///mirror?host=/run/pg").expect("pg"),
        StoreUrl::Postgres(_)
    ));
    assert!(parse_store_url("").is_err());
    let err = parse_store_url("postgres://u:secret@db:notaport/x")
        .expect_err("bad port")
        .to_string();
    assert!(!err.contains("secret"), "{err}");
}

#[tokio::test]
async fn sqlite_conformance() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = sqlite_store(dir.path()).await;
    conformance(&store).await;
}

#[tokio::test]
async fn sqlite_file_mode_wal_and_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, path) = sqlite_store(dir.path()).await;
    write_host(&store, "h", now_ms()).await;
    let ev = store.load(&ReportFilter::default()).await.expect("load");
    for p in [path.clone(), dir.path().join("mirror.db-wal")] {
        let mode = std::fs::metadata(&p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", p.display());
    }
    let conn = rusqlite::Connection::open(&path).expect("open");
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .expect("pragma");
    assert_eq!(mode, "wal");
    drop(conn);
    drop(store);
    let (store, _) = sqlite_store(dir.path()).await;
    assert_eq!(
        store.load(&ReportFilter::default()).await.expect("load"),
        ev,
        "reopen keeps data"
    );
}

#[tokio::test]
async fn sqlite_existing_file_is_tightened_to_0600() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("mirror.db");
    std::fs::write(&path, b"").expect("create");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let (_store, path) = sqlite_store(dir.path()).await;
    assert_eq!(
        std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777,
        0o600
    );
}

fn bulk(host: &str, batch: usize, size: usize, ts: i64, pad: usize) -> Vec<ExchangeRecord> {
    (0..size)
        .map(|i| {
            let mut r = record(
                host,
                &format!("b{batch:06}-{i:05}"),
                ts,
                "GET /bulk",
                Outcome::Differed,
            );
            r.route = format!("GET /bulk/{}", i % 20);
            r.target = "x".repeat(pad);
            r.diffs = vec![field(&format!("$.a[{i}]"))];
            r.example = example(i);
            r
        })
        .collect()
}

#[tokio::test]
async fn sqlite_retention_by_size() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, path) = sqlite_store(dir.path()).await;
    for b in 0..10 {
        store
            .write_batch(&bulk("h", b, 1000, 1_000 + b as i64, 1000))
            .await
            .expect("write");
    }
    let max = 4 * 1024 * 1024;
    let r = store
        .enforce_retention(None, Some(max))
        .await
        .expect("retention");
    assert!(r.bytes_before > 10_000_000, "{r:?}");
    assert!(r.bytes_after <= max, "{r:?}");
    assert!(
        r.exchanges_deleted > 5_000 && r.exchanges_deleted < 10_000,
        "{r:?}"
    );
    let on_disk = std::fs::metadata(&path).expect("stat").len();
    assert!(on_disk <= max, "file is {on_disk} bytes");
    // Oldest first: whatever is left is the newest.
    let conn = rusqlite::Connection::open(&path).expect("open");
    let (n, min_batch): (i64, String) = conn
        .query_row("SELECT COUNT(*), MIN(id) FROM exchanges", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .expect("q");
    assert_eq!(n as u64, 10_000 - r.exchanges_deleted);
    let newest_kept: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM exchanges WHERE id LIKE 'b000009-%'",
            [],
            |r| r.get(0),
        )
        .expect("q");
    assert_eq!(
        newest_kept, 1000,
        "newest batch untouched; oldest kept id {min_batch}"
    );
    let orphans: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM diff_kinds WHERE xid NOT IN (SELECT seq FROM exchanges)",
            [],
            |r| r.get(0),
        )
        .expect("q");
    assert_eq!(orphans, 0);
    assert_eq!(super::sqlite::integrity_check(&path).expect("check"), "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_concurrent_writer_and_reader() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = sqlite_store(dir.path()).await;
    let store = std::sync::Arc::new(store);
    let writer = {
        let store = std::sync::Arc::clone(&store);
        tokio::spawn(async move {
            for b in 0..20 {
                store
                    .write_batch(&bulk("h", b, 200, b as i64, 10))
                    .await
                    .expect("write");
            }
        })
    };
    let mut last = 0;
    let mut reads = 0;
    while !writer.is_finished() {
        let ev = store
            .load(&ReportFilter::default())
            .await
            .expect("load during writes");
        let n: u64 = ev.routes.iter().map(|r| r.compared).sum();
        assert_eq!(n % 200, 0, "a reader saw part of a batch: {n}");
        assert!(n >= last);
        last = n;
        reads += 1;
    }
    writer.await.expect("writer");
    let ev = store.load(&ReportFilter::default()).await.expect("load");
    assert_eq!(ev.routes.iter().map(|r| r.compared).sum::<u64>(), 4000);
    assert!(reads > 0);
}

const CRASH_ENV: &str = "MIRROR_STORE_CRASH_DB";

/// Child half of `sqlite_survives_kill_9`; does nothing unless started by it.
#[tokio::test]
async fn crash_child_writer() {
    let Ok(path) = std::env::var(CRASH_ENV) else {
        return;
    };
    let store = Store::open(&StoreUrl::Sqlite(path.into()), opts())
        .await
        .expect("child open");
    for b in 0..100_000 {
        store
            .write_batch(&bulk("h", b, 200, b as i64, 200))
            .await
            .expect("child write");
        println!("committed {b}");
    }
}

#[test]
fn sqlite_survives_kill_9() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("crash.db");
    let mut child = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "store::tests::crash_child_writer",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CRASH_ENV, &path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(n) = line.strip_prefix("committed ") {
                let _ = tx.send(n.trim().parse::<usize>().expect("batch number"));
            }
        }
    });
    let mut committed = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while committed.len() < 8 {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(n) => committed.push(n),
            Err(e) => {
                let _ = child.kill();
                panic!("child did not commit batches: {e}");
            }
        }
    }
    // Land the kill somewhere inside a later batch's transaction.
    std::thread::sleep(Duration::from_millis(7));
    child.kill().expect("kill -9");
    child.wait().expect("reap");
    reader.join().expect("reader");
    committed.extend(rx.try_iter());

    assert_eq!(
        super::sqlite::integrity_check(&path).expect("integrity"),
        "ok"
    );
    let conn = rusqlite::Connection::open(&path).expect("open");
    let mut st = conn
        .prepare("SELECT substr(id, 1, 7), COUNT(*) FROM exchanges GROUP BY 1")
        .expect("prepare");
    let batches: std::collections::BTreeMap<String, i64> = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    for (name, n) in &batches {
        assert_eq!(*n, 200, "batch {name} partially stored");
    }
    for b in &committed {
        assert!(
            batches.contains_key(&format!("b{b:06}")),
            "batch {b} reported committed but missing"
        );
    }
    assert!(batches.len() >= committed.len());
    eprintln!(
        "child committed {} batches before kill -9; store has {}",
        committed.len(),
        batches.len()
    );
}

#[tokio::test]
#[ignore = "benchmark: cargo test -p mirror-daemon --lib store_throughput -- --ignored --nocapture"]
async fn store_throughput() {
    let rows: usize = std::env::var("MIRROR_STORE_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, path) = sqlite_store(dir.path()).await;
    let batches: Vec<Vec<ExchangeRecord>> = (0..rows / 1000)
        .map(|b| bulk("h", b, 1000, b as i64, 40))
        .collect();
    let start = Instant::now();
    for batch in &batches {
        store.write_batch(batch).await.expect("write");
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "sqlite write_batch(1000): {rows} rows in {secs:.2}s = {:.0} rows/s",
        rows as f64 / secs
    );
    let start = Instant::now();
    let ev = store.load(&ReportFilter::default()).await.expect("load");
    println!(
        "sqlite load over {rows} rows: {:.2}s ({} routes, {} diff keys, {} latency samples), file {} MB",
        start.elapsed().as_secs_f64(),
        ev.routes.len(),
        ev.diffs.len(),
        ev.latency.iter().map(|l| l.samples.len()).sum::<usize>(),
        std::fs::metadata(&path).expect("stat").len() / 1_000_000
    );
    // Where load's time goes, query by query.
    let conn = rusqlite::Connection::open(&path).expect("open");
    for (i, q) in super::evidence::plan(&ReportFilter::default(), &opts())
        .queries
        .iter()
        .enumerate()
    {
        let start = Instant::now();
        let mut st = conn
            .prepare(&super::schema::Dialect::Sqlite.sql(&q.sql))
            .expect("prepare");
        let params = rusqlite::params_from_iter(q.params.iter().map(|v| match v {
            super::evidence::Value::Int(i) => rusqlite::types::Value::Integer(*i),
            super::evidence::Value::Text(s) => rusqlite::types::Value::Text(s.clone()),
            super::evidence::Value::Null => rusqlite::types::Value::Null,
        }));
        let n = st.query_map(params, |_| Ok(())).expect("query").count();
        println!(
            "  query {i}: {n} rows in {:.2}s",
            start.elapsed().as_secs_f64()
        );
    }
}

// PostgreSQL: a real server per test.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_conformance_matches_sqlite() {
    let Some(server) = PgTestServer::start() else {
        return;
    };
    let url = parse_store_url(&server.create_database("conformance").await).expect("url");
    let pg = Store::open(&url, opts()).await.expect("open postgres");
    // Opening again (a second daemon) must find the schema in place.
    let _again = Store::open(&url, opts()).await.expect("reopen postgres");
    let pg_ev = conformance(&pg).await;

    let dir = tempfile::tempdir().expect("tempdir");
    let (lite, _) = sqlite_store(dir.path()).await;
    let lite_ev = conformance(&lite).await;
    // Timestamps are relative to "now" in each run; compare modulo that by re-basing.
    assert_eq!(
        normalize(pg_ev.0),
        normalize(lite_ev.0),
        "backends disagree"
    );
    assert_eq!(
        normalize(pg_ev.1),
        normalize(lite_ev.1),
        "backends disagree after retention"
    );
}

/// Zeroes timestamps (each conformance run uses its own "now").
fn normalize(mut ev: StoredEvidence) -> StoredEvidence {
    for r in &mut ev.runs {
        r.started_unix_ms = 0;
    }
    for l in &mut ev.ledgers {
        l.ts_unix_ms = 0;
    }
    for d in &mut ev.diffs {
        for e in &mut d.examples {
            e.ts_unix_ms = 0;
        }
    }
    for e in &mut ev.egress {
        e.first_seen_ms = 0;
        e.last_seen_ms = 0;
    }
    ev
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_two_hosts_one_store() {
    let Some(server) = PgTestServer::start() else {
        return;
    };
    let url = parse_store_url(&server.create_database("fleet").await).expect("url");
    let (a, b) = tokio::join!(Store::open(&url, opts()), Store::open(&url, opts()));
    let (a, b) = (a.expect("open a"), b.expect("open b"));
    let base = now_ms();
    let (ra, rb) = tokio::join!(
        write_host(&a, "host-a", base),
        write_host(&b, "host-b", base + 1)
    );
    assert_eq!(ra.inserted + rb.inserted, 28);

    let ev = a.load(&ReportFilter::default()).await.expect("load");
    assert_eq!(ev.runs.len(), 2);
    assert_eq!(
        ev.ledgers
            .iter()
            .map(|l| l.host.as_str())
            .collect::<Vec<_>>(),
        ["host-a", "host-b"]
    );
    assert_eq!(ev.ledger_total.seen, 40);
    assert_eq!(ev.ledger_total.drops(), 6);
    assert_eq!(ev.kernel_total.segments, 200);
    let mut both = pairing(11);
    both.add(&pairing(11));
    assert_eq!(ev.pairing_total, Some(both), "pairing summed over hosts");
    let mut both = side_effects(9);
    both.add(&side_effects(9));
    assert_eq!(
        ev.side_effects_total,
        Some(both),
        "side effects summed over hosts"
    );
    assert_eq!(ev.routes[0].compared, 20);
    assert_eq!(
        ev.routes[1].candidate_errors[0],
        (CandidateErrorKind::Timeout, 4)
    );
    assert_eq!(ev.diffs[0].key, "field($.items[*].price,value)");
    assert_eq!((ev.diffs[0].diffs, ev.diffs[0].exchanges), (20, 10));
    assert_eq!(
        ev.diffs[0]
            .examples
            .iter()
            .filter(|e| e.bodies.is_some())
            .count(),
        N_EXAMPLES as usize
    );
    assert_eq!(ev.latency[0].samples.len(), 20);
    let refused = ev
        .egress
        .iter()
        .find(|e| e.action == EgressAction::Refused)
        .expect("refused");
    assert_eq!((refused.attempts, refused.hosts), (6, 2));

    // Example slots are shared by the fleet: at most N per (route, key) in total, also when
    // four daemons race for the same keys in opposite orders (which must not deadlock).
    let stores = [
        &a,
        &b,
        &Store::open(&url, opts()).await.expect("c"),
        &Store::open(&url, opts()).await.expect("d"),
    ];
    let races = stores.iter().enumerate().map(|(s, store)| async move {
        for batch in 0..5 {
            let rows: Vec<ExchangeRecord> = (0..50)
                .map(|i| {
                    let mut r = record(
                        &format!("racer-{s}"),
                        &format!("race-{batch}-{i}"),
                        base,
                        "GET /race",
                        Outcome::Differed,
                    );
                    let (x, y) = (field("$.x"), field("$.y"));
                    r.diffs = if (i + s) % 2 == 0 {
                        vec![x, y]
                    } else {
                        vec![y, x]
                    };
                    r.example = example(i);
                    r
                })
                .collect();
            store.write_batch(&rows).await.expect("racing write");
        }
    });
    let mut handles = Vec::new();
    for f in races {
        handles.push(f);
    }
    let [f0, f1, f2, f3]: [_; 4] = handles.try_into().unwrap_or_else(|_| panic!("four racers"));
    tokio::join!(f0, f1, f2, f3);
    let (client, conn) = tokio_postgres::connect(&server.url("fleet"), tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    for row in client
        .query("SELECT route, kind_key, COUNT(*) FROM diff_kinds WHERE example = 1 GROUP BY route, kind_key", &[])
        .await
        .expect("count kept")
    {
        let (route, key, n): (String, String, i64) = (row.get(0), row.get(1), row.get(2));
        assert!(n <= i64::from(N_EXAMPLES), "{route} {key}: {n} examples kept");
        if route == "GET /race" {
            assert_eq!(n, i64::from(N_EXAMPLES), "{key}");
        }
    }

    let only_b = b
        .load(&ReportFilter {
            host: Some("host-b".into()),
            ..ReportFilter::default()
        })
        .await
        .expect("load");
    assert_eq!(only_b.routes[0].compared, 10);
    assert_eq!(only_b.ledgers.len(), 1);
    assert_eq!(only_b.ledger_total.seen, 20);
}

// Migration from schema version 1 (before pairing figures were stored).

/// A version-1 ledger row as an older build wrote it: no pairing column.
const V1_LEDGER: &str = "INSERT INTO ledgers (host, run_id, ts_unix_ms, ledger, kernel) \
    VALUES ('old-host', 'old-run', 1, ?1, ?2)";

fn v1_ledger_json() -> (String, String) {
    (
        serde_json::to_string(&ledger_snapshot(20)).expect("ledger json"),
        serde_json::to_string(&kernel(100)).expect("kernel json"),
    )
}

/// What a store migrated from version 1 must give: the old ledger without pairing
/// figures, a new one with them, and a sum over only the ledgers that have them.
async fn check_migrated(store: &Store) {
    let old = store
        .load(&ReportFilter::default())
        .await
        .expect("load old");
    assert_eq!(old.ledgers.len(), 1);
    assert_eq!(
        old.ledgers[0].ledger,
        ledger_snapshot(20),
        "old ledger kept"
    );
    assert_eq!(old.ledgers[0].pairing, None);
    assert_eq!(old.pairing_total, None, "nothing recorded, not zeros");
    assert_eq!(old.side_effects_total, None);
    store
        .write_ledger(
            "new-host",
            "new-run",
            2,
            &ledger_snapshot(20),
            &kernel(1),
            &pairing(7),
            None,
        )
        .await
        .expect("new ledger");
    let both = store.load(&ReportFilter::default()).await.expect("load");
    assert_eq!(both.ledgers.len(), 2);
    // Sorted by host: `new-host` first.
    assert_eq!(both.ledgers[0].pairing, Some(pairing(7)));
    assert_eq!(both.ledgers[1].pairing, None);
    assert_eq!(both.pairing_total, Some(pairing(7)));
    assert_eq!(both.ledger_total.seen, 40);
}

/// A SQLite store at `path` as a build of schema `version` left it, with one ledger row
/// written by `insert` (the older build's own columns).
fn old_sqlite_store(path: &std::path::Path, version: usize, insert: &str, row: &[String]) {
    let conn = rusqlite::Connection::open(path).expect("open");
    conn.execute(schema::CREATE_VERSION_TABLE, [])
        .expect("version table");
    for q in schema::MIGRATIONS[..version].iter().copied().flatten() {
        conn.execute(&schema::Dialect::Sqlite.sql(q), [])
            .expect("old schema");
    }
    conn.execute(
        "INSERT INTO schema_version (version) VALUES (?1)",
        [version as i64],
    )
    .expect("old version");
    conn.execute(insert, rusqlite::params_from_iter(row))
        .expect("old ledger");
}

/// The same for a PostgreSQL database at `url`.
async fn old_postgres_store(url: &str, version: usize, insert: &str, row: &[String]) {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    client
        .batch_execute(schema::CREATE_VERSION_TABLE)
        .await
        .expect("version table");
    for q in schema::MIGRATIONS[..version].iter().copied().flatten() {
        client
            .batch_execute(&schema::Dialect::Postgres.sql(q))
            .await
            .expect("old schema");
    }
    client
        .execute(
            "INSERT INTO schema_version (version) VALUES ($1)",
            &[&(version as i64)],
        )
        .await
        .expect("old version");
    let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
        row.iter().map(|v| v as _).collect();
    client
        .execute(&schema::Dialect::Postgres.sql(insert), &params)
        .await
        .expect("old ledger");
}

async fn migrated_postgres_store(url: &str) -> Store {
    Store::open(&parse_store_url(url).expect("url"), opts())
        .await
        .expect("open and migrate")
}

#[tokio::test]
async fn sqlite_store_of_schema_1_migrates_and_reports_without_pairing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ledger, kernel) = v1_ledger_json();
    old_sqlite_store(
        &dir.path().join("mirror.db"),
        1,
        V1_LEDGER,
        &[ledger, kernel],
    );
    let (store, _) = sqlite_store(dir.path()).await;
    check_migrated(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_of_schema_1_migrates_and_reports_without_pairing() {
    let Some(server) = PgTestServer::start() else {
        return;
    };
    let url = server.create_database("v1").await;
    let (ledger, kernel) = v1_ledger_json();
    old_postgres_store(&url, 1, V1_LEDGER, &[ledger, kernel]).await;
    check_migrated(&migrated_postgres_store(&url).await).await;
}

// Migration from schema version 2 (before side-effect figures were stored).

/// A version-2 ledger row as an older build wrote it: pairing, no side-effect column.
const V2_LEDGER: &str = "INSERT INTO ledgers (host, run_id, ts_unix_ms, ledger, kernel, pairing) \
    VALUES ('old-host', 'old-run', 1, ?1, ?2, ?3)";

fn v2_ledger_json() -> [String; 3] {
    let (ledger, kernel) = v1_ledger_json();
    [
        ledger,
        kernel,
        serde_json::to_string(&pairing(11)).expect("pairing json"),
    ]
}

/// What a store migrated from version 2 must give: the old ledger with its pairing but
/// without side-effect figures, a new one with them, and a sum over only those.
async fn check_migrated_from_2(store: &Store) {
    let old = store
        .load(&ReportFilter::default())
        .await
        .expect("load old");
    assert_eq!(old.ledgers.len(), 1);
    assert_eq!(old.ledgers[0].pairing, Some(pairing(11)), "pairing kept");
    assert_eq!(old.ledgers[0].side_effects, None);
    assert_eq!(old.side_effects_total, None, "nothing recorded, not zeros");
    store
        .write_ledger(
            "new-host",
            "new-run",
            2,
            &ledger_snapshot(20),
            &kernel(1),
            &pairing(7),
            Some(&side_effects(9)),
        )
        .await
        .expect("new ledger");
    let both = store.load(&ReportFilter::default()).await.expect("load");
    assert_eq!(both.ledgers.len(), 2);
    assert_eq!(both.ledgers[0].side_effects, Some(side_effects(9)));
    assert_eq!(both.ledgers[1].side_effects, None);
    assert_eq!(both.side_effects_total, Some(side_effects(9)));
    let card = crate::report::build(
        &both,
        &crate::verdict::Criteria::default(),
        &crate::compare::NoiseRule::default(),
    );
    let counts = card.side_effect_counts.expect("counts of the new ledger");
    assert_eq!(
        (counts.calls_recorded, counts.ledgers_not_recorded),
        (10, 1)
    );
}

#[tokio::test]
async fn sqlite_store_of_schema_2_migrates_and_reports_without_side_effect_counts() {
    let dir = tempfile::tempdir().expect("tempdir");
    old_sqlite_store(
        &dir.path().join("mirror.db"),
        2,
        V2_LEDGER,
        &v2_ledger_json(),
    );
    let (store, _) = sqlite_store(dir.path()).await;
    check_migrated_from_2(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_of_schema_2_migrates_and_reports_without_side_effect_counts() {
    let Some(server) = PgTestServer::start() else {
        return;
    };
    let url = server.create_database("v2").await;
    old_postgres_store(&url, 2, V2_LEDGER, &v2_ledger_json()).await;
    check_migrated_from_2(&migrated_postgres_store(&url).await).await;
}

// Migration from schema version 3 (before the candidate's CPU had its own column).

/// A version-3 run row as an older build wrote it: the cap, if any, in `args`.
const V3_RUN: &str = "INSERT INTO runs (host, run_id, started_unix_ms, args, criteria) \
    VALUES ('old-host', 'old-run', 1, ?1, ?2)";

fn v3_run() -> [String; 2] {
    [
        "candidate=http://10.0.0.2:8080 sample=100%".into(),
        "--max-p95-regression 15%".into(),
    ]
}

/// What a store migrated from version 3 must give: the old run without a recorded
/// candidate CPU (not "uncapped"), a new one with it.
async fn check_migrated_from_3(store: &Store) {
    let old = store
        .load(&ReportFilter::default())
        .await
        .expect("load old");
    assert_eq!(old.runs.len(), 1);
    assert_eq!(old.runs[0].args, v3_run()[0], "args kept");
    assert_eq!(old.runs[0].candidate_cpu, None);
    let capped = CandidateCpu {
        cap_percent: Some(100),
        host_cpus: 2,
    };
    store
        .write_run(&RunInfo {
            host: "new-host".into(),
            run_id: "new-run".into(),
            started_unix_ms: 2,
            args: "candidate=http://10.0.0.2:8080 sample=100%".into(),
            criteria: String::new(),
            candidate_cpu: Some(capped),
        })
        .await
        .expect("new run");
    let both = store.load(&ReportFilter::default()).await.expect("load");
    assert_eq!(both.runs.len(), 2);
    // Sorted by host: `new-host` first.
    assert_eq!(both.runs[0].candidate_cpu, Some(capped));
    assert_eq!(both.runs[1].candidate_cpu, None);
    let c = crate::verdict::Criteria {
        max_p95_regression: Some(0.15),
        ..Default::default()
    };
    let card = crate::report::build(&both, &c, &crate::compare::NoiseRule::default());
    assert_eq!(card.latency.candidate_cpu_cap_percent, Some(100));
    assert_eq!(card.latency.candidate_cpu_not_recorded_runs, 1);
}

#[tokio::test]
async fn sqlite_store_of_schema_3_migrates_and_says_the_candidate_cpu_was_not_recorded() {
    let dir = tempfile::tempdir().expect("tempdir");
    old_sqlite_store(&dir.path().join("mirror.db"), 3, V3_RUN, &v3_run());
    let (store, _) = sqlite_store(dir.path()).await;
    check_migrated_from_3(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_of_schema_3_migrates_and_says_the_candidate_cpu_was_not_recorded() {
    let Some(server) = PgTestServer::start() else {
        return;
    };
    let url = server.create_database("v3").await;
    old_postgres_store(&url, 3, V3_RUN, &v3_run()).await;
    check_migrated_from_3(&migrated_postgres_store(&url).await).await;
}

// Migration from schema version 4 (exchanges had a (route, outcome) index).

/// A version-4 exchange row as an older build wrote it (every index of schema 4 kept it).
const V4_EXCHANGE: &str = "INSERT INTO exchanges (host, id, run_id, ts_unix_ms, route, method, \
    target, outcome, error_kind, legacy_status, candidate_status, status_mismatch, \
    legacy_ttfb_ns, legacy_ttlb_ns, candidate_ttfb_ns, candidate_ttlb_ns, sample_key, diffs) \
    VALUES ('old-host', 'old-1', 'old-run', 1, 'GET /items', 'GET', '/items', 'differed', NULL, \
    200, 500, 1, 1000, 2000, 1500, 2500, 7, '[]')";

/// What a store migrated from version 4 must give: no `exchanges_route_outcome` index
/// (`indexes` lists the exchanges table's indexes; `exchanges_route_sample` goes too, in
/// schema 6), the old exchange still counted per route and outcome, and new ones counted
/// beside it.
async fn check_migrated_from_4(store: &Store, indexes: Vec<String>) {
    assert!(
        !indexes.iter().any(|i| i == "exchanges_route_outcome"),
        "{indexes:?}"
    );
    for kept in ["exchanges_ts", "exchanges_host_run"] {
        assert!(indexes.iter().any(|i| i == kept), "{kept} in {indexes:?}");
    }
    let new = [
        record("new-host", "n1", 2, "GET /items", Outcome::Matched),
        record("new-host", "n2", 3, "GET /items", Outcome::Matched),
        record("new-host", "n3", 4, "POST /orders", Outcome::Matched),
    ];
    store.write_batch(&new).await.expect("new exchanges");
    let ev = store.load(&ReportFilter::default()).await.expect("load");
    let counts: Vec<_> = ev
        .routes
        .iter()
        .map(|r| (r.route.as_str(), r.compared, r.matched, r.differed))
        .collect();
    assert_eq!(counts, [("GET /items", 3, 2, 1), ("POST /orders", 1, 1, 0)]);
    assert_eq!(ev.routes[0].status_mismatches, 1, "the old row's mismatch");
}

/// The names of the `exchanges` table's indexes in a SQLite store.
fn sqlite_exchange_indexes(conn: &rusqlite::Connection) -> Vec<String> {
    conn.prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'exchanges'")
        .expect("prepare")
        .query_map([], |row| row.get::<_, String>(0))
        .expect("query")
        .collect::<Result<Vec<_>, _>>()
        .expect("index names")
}

/// The names of the `exchanges` table's indexes in a PostgreSQL store.
async fn postgres_exchange_indexes(client: &tokio_postgres::Client) -> Vec<String> {
    client
        .query(
            "SELECT indexname::text FROM pg_indexes WHERE tablename = 'exchanges'",
            &[],
        )
        .await
        .expect("index names")
        .iter()
        .map(|row| row.get::<_, String>(0))
        .collect()
}

#[tokio::test]
async fn sqlite_store_of_schema_4_migrates_without_the_route_outcome_index() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("mirror.db");
    old_sqlite_store(&path, 4, V4_EXCHANGE, &[]);
    let (store, _) = sqlite_store(dir.path()).await;
    let conn = rusqlite::Connection::open(&path).expect("open");
    let indexes = sqlite_exchange_indexes(&conn);
    check_migrated_from_4(&store, indexes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_of_schema_4_migrates_without_the_route_outcome_index() {
    let Some(server) = PgTestServer::start() else {
        return;
    };
    let url = server.create_database("v4").await;
    old_postgres_store(&url, 4, V4_EXCHANGE, &[]).await;
    let store = migrated_postgres_store(&url).await;
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    let indexes = postgres_exchange_indexes(&client).await;
    check_migrated_from_4(&store, indexes).await;
}

// Migration from schema version 5 (exchanges had a (route, sample_key) index).

/// An exchange row as a schema-5 build wrote it: `sample_key` computed as the writer does.
fn v5_exchange(id: &str, route: &str, ts: i64, ttfb: i64) -> String {
    format!(
        "INSERT INTO exchanges (host, id, run_id, ts_unix_ms, route, method, target, outcome, \
         error_kind, legacy_status, candidate_status, status_mismatch, legacy_ttfb_ns, \
         legacy_ttlb_ns, candidate_ttfb_ns, candidate_ttlb_ns, sample_key, diffs) VALUES \
         ('old-host', '{id}', 'old-run', {ts}, '{route}', 'GET', '/x', 'matched', NULL, 200, 200, \
         0, {ttfb}, {ttlb}, {ttfb}, {ttlb}, {key}, '[]')",
        ttlb = ttfb + 1,
        key = super::rows::sample_key("old-host", id),
    )
}

/// Exchanges per route in the schema-5 tests: more than the sample size, so the sample is
/// a proper subset, on two routes.
const V5_ROWS: i64 = 60;
const V5_SAMPLES: u32 = 25;

/// The latency sample by its definition, in Rust: per route, the `V5_SAMPLES` exchanges
/// with the lowest (sample_key, host, id), in that order, each exchange's legacy TTFB.
fn lowest_keys(rows: &[(String, String, String, i64, u64)], since: i64) -> Vec<(String, Vec<u64>)> {
    let mut by_route: BTreeMapOf<String, Vec<(i64, &str, &str, u64)>> = Default::default();
    for (host, id, route, ts, ttfb) in rows {
        if *ts >= since {
            by_route.entry(route.clone()).or_default().push((
                super::rows::sample_key(host, id),
                host,
                id,
                *ttfb,
            ));
        }
    }
    by_route
        .into_iter()
        .map(|(route, mut v)| {
            v.sort();
            let take = v.iter().take(V5_SAMPLES as usize).map(|x| x.3).collect();
            (route, take)
        })
        .collect()
}

type BTreeMapOf<K, V> = std::collections::BTreeMap<K, V>;

/// A migrated schema-5 store has no `exchanges_route_sample`, and its latency sample,
/// unfiltered and filtered by time, over old rows and new ones, is still the rows with the
/// lowest sample keys per route, in key order: what the index used to be read for.
async fn check_migrated_from_5(store: &Store, indexes: Vec<String>) {
    assert!(
        !indexes.iter().any(|i| i == "exchanges_route_sample"),
        "{indexes:?}"
    );
    for kept in ["exchanges_ts", "exchanges_host_run"] {
        assert!(indexes.iter().any(|i| i == kept), "{kept} in {indexes:?}");
    }
    let mut all: Vec<(String, String, String, i64, u64)> = (0..V5_ROWS)
        .flat_map(|i| {
            ["GET /a", "GET /b"].map(|route| {
                let id = format!("old-{route}-{i}");
                (
                    "old-host".to_string(),
                    id,
                    route.to_string(),
                    i,
                    1_000 + i as u64,
                )
            })
        })
        .collect();
    let new: Vec<ExchangeRecord> = (0..V5_ROWS)
        .map(|i| {
            let route = if i % 2 == 0 { "GET /a" } else { "GET /b" };
            let mut r = record(
                "new-host",
                &format!("new-{i}"),
                100 + i,
                route,
                Outcome::Matched,
            );
            r.legacy_ttfb_ns = 5_000 + i as u64;
            all.push((
                r.host.clone(),
                r.id.clone(),
                route.into(),
                r.ts_unix_ms,
                r.legacy_ttfb_ns,
            ));
            r
        })
        .collect();
    store.write_batch(&new).await.expect("new exchanges");
    for since in [None, Some(30), Some(100)] {
        let filter = ReportFilter {
            since,
            ..ReportFilter::default()
        };
        let ev = store.load(&filter).await.expect("load");
        let got: Vec<(String, Vec<u64>)> = ev
            .latency
            .iter()
            .map(|l| {
                (
                    l.route.clone(),
                    l.samples.iter().map(|s| s.legacy_ttfb_ns).collect(),
                )
            })
            .collect();
        let want = lowest_keys(&all, since.unwrap_or(i64::MIN));
        assert_eq!(got, want, "since {since:?}");
        assert!(got.iter().all(|(_, v)| v.len() == V5_SAMPLES as usize));
    }
}

fn v5_rows() -> Vec<String> {
    (0..V5_ROWS)
        .flat_map(|i| {
            ["GET /a", "GET /b"].map(|r| v5_exchange(&format!("old-{r}-{i}"), r, i, 1_000 + i))
        })
        .collect()
}

fn v5_opts() -> StoreOptions {
    StoreOptions {
        latency_samples_per_route: V5_SAMPLES,
        ..opts()
    }
}

#[tokio::test]
async fn sqlite_store_of_schema_5_migrates_without_the_route_sample_index() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("mirror.db");
    let rows = v5_rows();
    old_sqlite_store(&path, 5, &rows[0], &[]);
    let conn = rusqlite::Connection::open(&path).expect("open");
    for q in &rows[1..] {
        conn.execute(q, []).expect("old exchange");
    }
    let url = parse_store_url(path.to_str().expect("utf-8")).expect("url");
    let store = Store::open(&url, v5_opts())
        .await
        .expect("open and migrate");
    let indexes = sqlite_exchange_indexes(&conn);
    check_migrated_from_5(&store, indexes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_of_schema_5_migrates_without_the_route_sample_index() {
    let Some(server) = PgTestServer::start() else {
        return;
    };
    let url = server.create_database("v5").await;
    let rows = v5_rows();
    old_postgres_store(&url, 5, &rows[0], &[]).await;
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    for q in &rows[1..] {
        client.batch_execute(q).await.expect("old exchange");
    }
    let store = Store::open(&parse_store_url(&url).expect("url"), v5_opts())
        .await
        .expect("open and migrate");
    let indexes = postgres_exchange_indexes(&client).await;
    check_migrated_from_5(&store, indexes).await;
}

// `replay_late` (a drop reason added without a schema change: ledgers are stored as JSON
// of reason names, and no exchange row is kept for a drop).

/// A ledger row as a build before `replay_late` wrote it: its JSON has no such reason.
fn ledger_json_before_replay_late() -> [String; 2] {
    let mut v = serde_json::to_value(ledger_snapshot(20)).expect("ledger json");
    let dropped = v["dropped"].as_array_mut().expect("dropped pairs");
    dropped.retain(|pair| pair[0] != "replay_late");
    assert_eq!(dropped.len(), DropReason::ALL.len() - 1, "one reason fewer");
    [
        v.to_string(),
        serde_json::to_string(&kernel(100)).expect("kernel"),
    ]
}

/// The old row still reads (as no `replay_late` drops), a new ledger's `replay_late`
/// drops come back by name, and the sum keeps the identity.
async fn check_replay_late_stored(store: &Store) {
    let late = Ledger::default();
    late.saw(30);
    late.record_n(Outcome::Matched, 10);
    late.record_n(Outcome::Dropped(DropReason::ReplayQueueFull), 5);
    late.record_n(Outcome::Dropped(DropReason::ReplayLate), 15);
    store
        .write_ledger(
            "new-host",
            "new-run",
            2,
            &late.snapshot(),
            &kernel(1),
            &pairing(7),
            None,
        )
        .await
        .expect("new ledger");
    let ev = store.load(&ReportFilter::default()).await.expect("load");
    assert_eq!(ev.ledgers.len(), 2);
    let late_of = |l: &LedgerSnapshot| l.count(Outcome::Dropped(DropReason::ReplayLate));
    assert_eq!(late_of(&ev.ledgers[0].ledger), 15, "new-host sorts first");
    assert_eq!(late_of(&ev.ledgers[1].ledger), 0, "the old row reads");
    assert_eq!(ev.ledgers[1].ledger.seen, 20);
    let total = &ev.ledger_total;
    assert_eq!(late_of(total), 15);
    assert_eq!(
        total.count(Outcome::Dropped(DropReason::ReplayQueueFull)),
        5
    );
    assert_eq!((total.seen, total.in_flight()), (50, 4), "{total:?}");
}

const LEDGER_ROW: &str = "INSERT INTO ledgers (host, run_id, ts_unix_ms, ledger, kernel) \
    VALUES ('old-host', 'old-run', 1, ?1, ?2)";

#[tokio::test]
async fn sqlite_ledgers_before_and_with_replay_late_read_together() {
    let dir = tempfile::tempdir().expect("tempdir");
    old_sqlite_store(
        &dir.path().join("mirror.db"),
        schema::SCHEMA_VERSION as usize,
        LEDGER_ROW,
        &ledger_json_before_replay_late(),
    );
    let (store, _) = sqlite_store(dir.path()).await;
    check_replay_late_stored(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_ledgers_before_and_with_replay_late_read_together() {
    let Some(server) = PgTestServer::start() else {
        return;
    };
    let url = server.create_database("late").await;
    old_postgres_store(
        &url,
        schema::SCHEMA_VERSION as usize,
        LEDGER_ROW,
        &ledger_json_before_replay_late(),
    )
    .await;
    check_replay_late_stored(&migrated_postgres_store(&url).await).await;
}
