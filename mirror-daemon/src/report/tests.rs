//! Report tests: most go through a real SQLite store (records → `Store::load` → card), so
//! they prove the wiring as well as the arithmetic.
use std::collections::BTreeSet;

use super::*;
use crate::accounting::{CandidateErrorKind, DropReason, Ledger, LedgerSnapshot, Outcome};
use crate::compare::{Diff, DiffKind, FieldDiffKind, NoiseClass, NoiseRule};
use crate::guard::{EgressAction, EgressAttempt};
use crate::store::{
    CandidateCpu, EffectsFigures, ExchangeRecord, KernelCounters, PairingCounters, ReportFilter,
    RouteStats, RunInfo, Store, StoreOptions, StoreUrl, StoredEvidence,
};
use crate::verdict::{Criteria, Verdict, parse_percent};

const BASE_TS: i64 = 1_760_000_000_000;
const MS: u64 = 1_000_000;

fn field(path: &str, legacy: &str, candidate: &str) -> Diff {
    Diff {
        kind: DiffKind::Field {
            path: path.into(),
            how: FieldDiffKind::Value,
        },
        legacy: Some(legacy.into()),
        candidate: Some(candidate.into()),
    }
}

fn field_kind(path: &str) -> DiffKind {
    DiffKind::Field {
        path: path.into(),
        how: FieldDiffKind::Value,
    }
}

/// What one daemon would have written: stored records and the ledger that counted them.
struct Sim {
    host: String,
    records: Vec<ExchangeRecord>,
    ledger: Ledger,
    kernel: KernelCounters,
    pairing: PairingCounters,
    side_effects: Option<EffectsFigures>,
    egress: Vec<EgressAttempt>,
}

impl Sim {
    fn new(host: &str) -> Sim {
        Sim {
            host: host.into(),
            records: Vec::new(),
            ledger: Ledger::default(),
            kernel: KernelCounters::default(),
            pairing: PairingCounters::default(),
            side_effects: None,
            egress: Vec::new(),
        }
    }

    fn add(
        &mut self,
        route: &str,
        outcome: Outcome,
        diffs: Vec<Diff>,
        secondary: Vec<DiffKind>,
        legacy_ttlb_ns: u64,
        candidate_ttlb_ns: Option<u64>,
    ) {
        let n = self.records.len();
        let candidate_status = match outcome {
            Outcome::CandidateError(_) => None,
            _ if diffs.iter().any(|d| d.kind == DiffKind::Status) => Some(500),
            _ => Some(200),
        };
        self.records.push(ExchangeRecord {
            id: format!("{}-{n:05}", self.host),
            host: self.host.clone(),
            run_id: "run-1".into(),
            ts_unix_ms: BASE_TS + n as i64,
            route: route.into(),
            method: route.split(' ').next().unwrap_or("GET").into(),
            target: "/masked".into(),
            outcome,
            legacy_status: 200,
            candidate_status,
            diffs,
            secondary_diffs: secondary,
            legacy_ttfb_ns: legacy_ttlb_ns / 2,
            legacy_ttlb_ns,
            candidate_ttfb_ns: candidate_ttlb_ns.map(|t| t / 2),
            candidate_ttlb_ns,
            example: None,
        });
        self.ledger.saw(1);
        self.ledger.record(outcome);
        self.kernel.records += 4;
        self.kernel.segments += 4;
        self.pairing.exchanges += 1;
        self.pairing.proven += 1;
    }

    /// `n` matched exchanges with ttlb `legacy_ms` / `candidate_ms`.
    fn matched(&mut self, route: &str, n: usize, legacy_ms: u64, candidate_ms: u64) {
        for _ in 0..n {
            self.add(
                route,
                Outcome::Matched,
                vec![],
                vec![],
                legacy_ms * MS,
                Some(candidate_ms * MS),
            );
        }
    }

    fn differed(&mut self, route: &str, n: usize, diffs: &[Diff], secondary: &[DiffKind]) {
        for _ in 0..n {
            self.add(
                route,
                Outcome::Differed,
                diffs.to_vec(),
                secondary.to_vec(),
                10 * MS,
                Some(10 * MS),
            );
        }
    }

    fn errors(&mut self, route: &str, n: usize, kind: CandidateErrorKind) {
        for _ in 0..n {
            self.add(
                route,
                Outcome::CandidateError(kind),
                vec![],
                vec![],
                10 * MS,
                None,
            );
        }
    }

    fn dropped(&mut self, reason: DropReason, n: u64) {
        self.ledger.saw_dropped(reason, n);
    }

    fn sampled_out(&mut self, n: u64) {
        self.ledger.saw(n);
        self.ledger.record_n(Outcome::SampledOut, n);
    }
}

async fn load_sims(sims: &[Sim]) -> StoredEvidence {
    load_sims_with_args(sims, "--sample 100%", Some(UNCAPPED)).await
}

/// A candidate with legacy's CPU (`--candidate-cpu max`).
const UNCAPPED: CandidateCpu = CandidateCpu {
    cap_percent: None,
    host_cpus: 2,
};

/// [`load_sims`] with every run's `args` summary and candidate CPU.
async fn load_sims_with_args(
    sims: &[Sim],
    args: &str,
    candidate_cpu: Option<CandidateCpu>,
) -> StoredEvidence {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(
        &StoreUrl::Sqlite(dir.path().join("mirror.db")),
        StoreOptions::default(),
    )
    .await
    .expect("open");
    for s in sims {
        store
            .write_run(&RunInfo {
                host: s.host.clone(),
                run_id: "run-1".into(),
                started_unix_ms: BASE_TS - 60_000,
                args: args.into(),
                criteria: "--max-mismatch 0.5%".into(),
                candidate_cpu,
            })
            .await
            .expect("run");
        store.write_batch(&s.records).await.expect("batch");
        store
            .write_ledger(
                &s.host,
                "run-1",
                BASE_TS + 100_000,
                &s.ledger.snapshot(),
                &s.kernel,
                &s.pairing,
                s.side_effects.as_ref(),
            )
            .await
            .expect("ledger");
        store
            .write_egress(&s.host, "run-1", &s.egress)
            .await
            .expect("egress");
    }
    store.load(&ReportFilter::default()).await.expect("load")
}

fn criteria() -> Criteria {
    let p = |s: &str| Some(parse_percent(s).expect("percent"));
    Criteria {
        max_mismatch: p("0.5%"),
        max_p95_regression: p("10%"),
        max_candidate_errors: p("1%"),
        min_exchanges: Some(1000),
        min_completeness: p("99%"),
        ..Criteria::default()
    }
}

fn opts() -> ReportOptions {
    ReportOptions {
        generated_at_unix_ms: Some(BASE_TS + 200_000),
        ..ReportOptions::default()
    }
}

fn card_of(ev: &StoredEvidence, c: &Criteria) -> ParityCard {
    build_with(ev, c, &NoiseRule::default(), &opts())
}

fn route<'a>(card: &'a ParityCard, r: &str) -> &'a RouteCard {
    card.routes
        .iter()
        .find(|x| x.route == r)
        .unwrap_or_else(|| panic!("route {r} missing: {:?}", card.routes))
}

fn line_with<'a>(text: &'a str, needle: &str) -> &'a str {
    text.lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?} in\n{text}"))
}

/// A healthy run on two hosts: 1200 compared, 3 real diffs, 1 candidate error, candidate
/// 5 % slower, a couple of stream gaps, one refused egress attempt.
fn go_sims() -> Vec<Sim> {
    let mut a = Sim::new("host-a");
    a.matched("GET /users/{id}", 600, 10, 10);
    a.differed(
        "GET /users/{id}",
        3,
        &[field("$.name", "\"tok_3f9a\"", "\"tok_77c1\"")],
        &[],
    );
    a.sampled_out(500);
    a.dropped(DropReason::Gap, 2);
    a.egress.push(EgressAttempt {
        ts_unix_ms: BASE_TS + 5,
        pid: 7,
        command: "candidate".into(),
        protocol: "tcp".into(),
        destination: "10.0.0.9:5432".parse().expect("addr"),
        action: EgressAction::Refused,
        first_bytes: None,
    });
    let mut b = Sim::new("host-b");
    b.matched("GET /users/{id}", 397, 10, 10);
    b.matched("POST /orders", 200, 20, 21);
    b.errors("POST /orders", 1, CandidateErrorKind::Timeout);
    vec![a, b]
}

#[tokio::test]
async fn go_case_from_a_real_store() {
    let ev = load_sims(&go_sims()).await;
    let card = card_of(&ev, &criteria());
    assert_eq!(card.verdict, Verdict::Go, "{}", render_table(&card));
    assert_eq!(card.exit_code, 0);
    assert_eq!(card.criteria.len(), 5);
    assert!(card.criteria.iter().all(|c| c.passed));

    let users = route(&card, "GET /users/{id}");
    assert_eq!((users.compared, users.mismatched), (1000, 3));
    assert_eq!(users.mismatch_basis, MismatchBasis::Exact);
    assert!((users.mismatch_rate.expect("rate") - 0.003).abs() < 1e-12);
    let orders = route(&card, "POST /orders");
    assert_eq!(
        (orders.compared, orders.candidate_errors, orders.replayed),
        (200, 1, 201)
    );
    assert_eq!(orders.mismatch_rate, Some(0.0));
    // 20 ms → 21 ms.
    assert!((orders.latency.p95_ttlb_ratio.expect("ratio") - 1.05).abs() < 1e-9);
    assert_eq!(orders.latency.legacy.ttlb.p95_ns, Some(20 * MS));
    assert_eq!(orders.latency.candidate.samples, 200);
    assert_eq!(orders.latency.legacy.samples, 201);

    // Run-wide: 1000 samples at 10 ms and 200 at 20/21 ms: p95 (rank 1140 of 1201) is
    // in the slow group.
    assert_eq!(card.latency.legacy.ttlb.p95_ns, Some(20 * MS));
    assert_eq!(card.latency.candidate.ttlb.p95_ns, Some(21 * MS));
    assert!(!card.latency.weighted);

    let text = render_table(&card);
    assert!(
        text.starts_with("VERDICT: GO — all 5 criteria pass  (exit 0)"),
        "{text}"
    );
    assert!(
        text.contains("Scope: hosts host-a, host-b; runs run-1"),
        "{text}"
    );
    // Examples keep the stored (masked) values and their correlation ids.
    assert!(text.contains("\"tok_3f9a\""), "{text}");
    assert!(text.contains("host-a-00600 @host-a"), "{text}");
    let egress = line_with(&text, "10.0.0.9:5432");
    assert!(
        egress.contains("refused") && egress.contains("candidate"),
        "{egress}"
    );
}

#[tokio::test]
async fn no_go_names_two_failing_criteria() {
    let mut s = Sim::new("host-a");
    // 1000 compared on users: 31 with a price diff (3.1 %).
    s.matched("GET /users/{id}", 969, 10, 10);
    s.differed(
        "GET /users/{id}",
        31,
        &[field("$.price", "1.00", "1.0")],
        &[],
    );
    // Orders: candidate 40 % slower.
    s.matched("POST /orders", 100, 100, 140);
    let ev = load_sims(&[s]).await;
    let mut c = criteria();
    c.route_mut("POST /orders").max_p95_regression = Some(0.10);
    let card = card_of(&ev, &c);
    let Verdict::NoGo { failing } = &card.verdict else {
        panic!("{}", render_table(&card))
    };
    let names: Vec<&str> = failing.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "max_mismatch",
            "max_p95_regression",
            "route POST /orders: max_p95_regression"
        ]
    );
    assert_eq!(card.exit_code, 1);
    let users = route(&card, "GET /users/{id}");
    assert!((users.mismatch_rate.expect("rate") - 0.031).abs() < 1e-12);
    let orders = route(&card, "POST /orders");
    assert!((orders.latency.p95_ttlb_ratio.expect("ratio") - 1.4).abs() < 1e-9);

    let text = render_table(&card);
    let banner = text.lines().next().expect("banner");
    assert!(banner.starts_with("VERDICT: NO-GO — "), "{banner}");
    assert!(banner.contains("max_mismatch 2.818% > 0.5%"), "{banner}");
    assert!(
        banner.contains("route POST /orders: max_p95_regression +40% > +10%"),
        "{banner}"
    );
    assert!(banner.ends_with("(exit 1)"), "{banner}");
    let failing = line_with(&text, "FAIL  max_mismatch");
    assert_eq!(
        failing.split_whitespace().collect::<Vec<_>>(),
        ["FAIL", "max_mismatch", "2.818%", "<=", "0.5%"],
        "{text}"
    );
    let row = line_with(&text, "GET /users/{id}");
    assert!(row.contains("31") && row.contains("3.10%"), "{row}");
    // The diff is signal, in the signal section, before the noise section.
    let sig = text.find("Diffs (signal").expect("signal section");
    let noise = text.find("shown, not hidden").expect("noise section");
    let price = text.find("field($.price,value)").expect("price");
    assert!(sig < price && price < noise, "{text}");
}

#[tokio::test]
async fn insufficient_evidence_names_its_reasons() {
    let mut s = Sim::new("host-a");
    s.matched("GET /a", 100, 10, 10);
    // 5 gaps and 1 parse error among 106 covered exchanges; 10 unsupported (TLS).
    s.dropped(DropReason::Gap, 5);
    s.dropped(DropReason::ParseError, 1);
    s.dropped(DropReason::Unsupported, 10);
    let ev = load_sims(&[s]).await;
    let card = card_of(&ev, &criteria());
    let Verdict::InsufficientEvidence { reasons } = &card.verdict else {
        panic!("{}", render_table(&card))
    };
    assert_eq!(card.exit_code, 3);
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("min_exchanges: 100")));
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("min_completeness: 94.340%"))
    );
    assert_eq!(card.completeness_detail.covered, 106);
    assert_eq!(card.completeness_detail.capture_losses, 6);
    assert_eq!(card.completeness_detail.uncovered, 10);
    let text = render_table(&card);
    let banner = text.lines().next().expect("banner");
    assert!(
        banner.starts_with("VERDICT: INSUFFICIENT EVIDENCE — ") && banner.contains("min_exchanges"),
        "{banner}"
    );
    assert!(
        text.contains("completeness 94.34% = (1 - capture losses / covered)")
            && text.contains("= (1 - 6 / 106) x 400 / (400 + 0)"),
        "{text}"
    );
    assert!(
        text.contains("dropped: gap 5, parse_error 1, unsupported 10"),
        "{text}"
    );
}

/// 100 exchanges on one route, all differing on a timestamp, 10 also on the price.
fn timestamp_sims(secondary: bool) -> Vec<Sim> {
    let mut s = Sim::new("host-t");
    let ts = field(
        "$.updated_at",
        "\"2025-01-01T00:00:00Z\"",
        "\"2025-01-01T00:00:01Z\"",
    );
    let price = field("$.price", "1.00", "1.0");
    let sec = if secondary {
        vec![field_kind("$.updated_at")]
    } else {
        vec![]
    };
    s.differed("GET /items/{id}", 90, std::slice::from_ref(&ts), &sec);
    s.differed("GET /items/{id}", 10, &[ts, price], &sec);
    vec![s]
}

#[tokio::test]
async fn timestamp_is_likely_noise_without_secondary_and_noise_with_it() {
    let rule = NoiseRule::default();
    let c = Criteria {
        max_mismatch: Some(0.5),
        ..Criteria::default()
    };

    // Without secondary data: systematic → likely noise, still counted.
    let ev = load_sims(&timestamp_sims(false)).await;
    let card = build_with(&ev, &c, &rule, &opts());
    let ts = card
        .diffs
        .iter()
        .find(|d| d.key == "field($.updated_at,value)")
        .expect("ts diff");
    assert_eq!(ts.class, NoiseClass::LikelyNoise);
    assert!(ts.counts_as_mismatch);
    assert_eq!(ts.rate, Some(1.0));
    assert_eq!(ts.secondary_rate, None);
    assert_eq!(
        ts.suggested_ignore.as_deref(),
        Some("--ignore 'json:$.updated_at'")
    );
    let r = route(&card, "GET /items/{id}");
    assert_eq!(
        (r.mismatched, r.mismatch_basis),
        (100, MismatchBasis::Exact)
    );
    assert!(matches!(card.verdict, Verdict::NoGo { .. }));
    // Signal first, likely noise after.
    assert_eq!(card.diffs[0].key, "field($.price,value)");
    let text = render_table(&card);
    let row = line_with(&text, "field($.updated_at,value)");
    assert!(row.contains("likely noise") && row.contains("yes"), "{row}");
    assert!(
        text.contains("confirm with --ignore 'json:$.updated_at'"),
        "{text}"
    );

    // With secondary data showing legacy differs from itself: noise, not counted.
    let ev = load_sims(&timestamp_sims(true)).await;
    let card = build_with(&ev, &c, &rule, &opts());
    let ts = card
        .diffs
        .iter()
        .find(|d| d.key == "field($.updated_at,value)")
        .expect("ts diff");
    assert!(matches!(ts.class, NoiseClass::Noise { .. }), "{ts:?}");
    assert!(!ts.counts_as_mismatch);
    assert_eq!(ts.secondary_rate, Some(1.0));
    let r = route(&card, "GET /items/{id}");
    // Only the 10 price diffs count; the bounds meet (10 ≤ m ≤ min(100, 10)).
    assert_eq!(
        (r.mismatched, r.mismatch_basis, r.differed),
        (10, MismatchBasis::Exact, 100)
    );
    assert_eq!(r.mismatch_rate, Some(0.1));
    let price = card
        .diffs
        .iter()
        .find(|d| d.key == "field($.price,value)")
        .expect("price");
    assert_eq!(price.class, NoiseClass::Signal);
    let ev_v = evidence(&ev, &noise_model(&ev, &rule));
    assert_eq!((ev_v.compared, ev_v.mismatched), (100, 10));
    let text = render_table(&card);
    let row = line_with(&text, "field($.updated_at,value)");
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        cells[..5],
        ["100", "100.00%", "100.00%", "noise", "no"],
        "{row}"
    );
    assert!(
        text.contains("legacy differs from itself on 100.0%"),
        "{text}"
    );
    assert!(
        text.contains("silence with --ignore 'json:$.updated_at'"),
        "{text}"
    );
}

fn stats(route: &str, matched: u64, differed: u64) -> RouteStats {
    RouteStats {
        route: route.into(),
        compared: matched + differed,
        matched,
        differed,
        candidate_errors: Vec::new(),
        status_mismatches: 0,
    }
}

fn kind(route: &str, key: &str, exchanges: u64, secondary: u64) -> crate::store::DiffKindStats {
    crate::store::DiffKindStats {
        route: route.into(),
        key: key.into(),
        diffs: exchanges,
        exchanges,
        secondary_diffs: secondary,
        secondary_exchanges: secondary,
        ..Default::default()
    }
}

#[test]
fn mismatch_bounds_and_key_sets() {
    // 200 compared, 80 differed: noise key on 50, signal keys A and B on 30 each.
    let r = "GET /x";
    let ev = StoredEvidence {
        routes: vec![stats(r, 120, 80)],
        diffs: vec![
            kind(r, "header(date)", 50, 200),
            kind(r, "field($.a,value)", 30, 0),
            kind(r, "field($.b,value)", 30, 0),
        ],
        ..StoredEvidence::default()
    };
    let noise = noise_model(&ev, &NoiseRule::default());
    assert!(matches!(
        noise.classify_key(r, "header(date)"),
        NoiseClass::Noise { .. }
    ));
    let kinds: Vec<&_> = ev.diffs.iter().collect();
    let m = mismatch_bounds(&ev.routes[0], &kinds, &noise);
    // low = max(30, 80 - 50), high = min(80, 30 + 30).
    assert_eq!(
        (m.low, m.high, m.count, m.basis),
        (30, 60, 60, MismatchBasis::UpperBound)
    );
    // With key sets: 20 noise-only, 30 {date, a}, 30 {b}.
    let set = |keys: &[&str], n| KeySetCount {
        route: r.into(),
        keys: keys.iter().map(|k| k.to_string()).collect(),
        exchanges: n,
    };
    let sets = vec![
        set(&["header(date)"], 20),
        set(&["header(date)", "field($.a,value)"], 30),
        set(&["field($.b,value)"], 30),
    ];
    let m = mismatched_from_key_sets(&ev.routes[0], &sets, &noise);
    assert_eq!((m.count, m.basis), (60, MismatchBasis::KeySets));
    let sets = vec![
        set(&["header(date)"], 50),
        set(&["field($.a,value)", "field($.b,value)"], 30),
    ];
    assert_eq!(
        mismatched_from_key_sets(&ev.routes[0], &sets, &noise).count,
        30
    );
    // Differed exchanges the sets miss count as mismatched.
    assert_eq!(
        mismatched_from_key_sets(&ev.routes[0], &sets[..1], &noise).count,
        30
    );

    // The card says which one it used, and key sets change the verdict's input.
    let card = build(&ev, &criteria(), &NoiseRule::default());
    assert_eq!(card.routes[0].mismatched, 60);
    assert!(
        card.notes
            .iter()
            .any(|n| n.contains("upper bound 60 (lower bound 30)")),
        "{:?}",
        card.notes
    );
    assert!(render_table(&card).contains("60*"));
    let card = build_with(
        &ev,
        &criteria(),
        &NoiseRule::default(),
        &ReportOptions {
            key_sets: Some(sets),
            ..opts()
        },
    );
    assert_eq!(
        (card.routes[0].mismatched, card.routes[0].mismatch_basis),
        (30, MismatchBasis::KeySets)
    );
    // No noise key: exactly differed.
    let plain = StoredEvidence {
        routes: vec![stats(r, 120, 80)],
        diffs: vec![kind(r, "field($.a,value)", 80, 0)],
        ..StoredEvidence::default()
    };
    let noise = noise_model(&plain, &NoiseRule::default());
    let kinds: Vec<&_> = plain.diffs.iter().collect();
    let m = mismatch_bounds(&plain.routes[0], &kinds, &noise);
    assert_eq!((m.count, m.basis), (80, MismatchBasis::Exact));
}

fn snapshot(pairs: &[(Outcome, u64)], seen: u64) -> LedgerSnapshot {
    let l = Ledger::default();
    l.saw(seen);
    for (o, n) in pairs {
        l.record_n(*o, *n);
    }
    l.snapshot()
}

#[test]
fn completeness_formula() {
    let ledger = snapshot(
        &[
            (Outcome::Matched, 900),
            (Outcome::SampledOut, 50),
            (Outcome::Dropped(DropReason::Gap), 30),
            (Outcome::Dropped(DropReason::QueueFull), 10),
            (Outcome::Dropped(DropReason::Unsupported), 100),
            (Outcome::Dropped(DropReason::RateLimited), 10),
        ],
        1105,
    );
    let kernel = KernelCounters {
        records: 990,
        ring_full: 10,
        ..KernelCounters::default()
    };
    let d = completeness_detail(&ledger, &kernel);
    // covered = terminal 1100 - unsupported 100; losses = gap + queue_full.
    assert_eq!((d.covered, d.capture_losses, d.uncovered), (1000, 40, 100));
    let c = completeness(&ledger, &kernel);
    assert!((c - 0.96 * 0.99).abs() < 1e-12, "{c}");
    // No kernel counters (offline pcap): factor 1.
    assert!((completeness(&ledger, &KernelCounters::default()) - 0.96).abs() < 1e-12);
    // Nothing covered: unknown, which the verdict reports as not measured.
    assert!(completeness(&LedgerSnapshot::default(), &kernel).is_nan());
    let ev = StoredEvidence::default();
    let card = build(&ev, &criteria(), &NoiseRule::default());
    let Verdict::InsufficientEvidence { reasons } = &card.verdict else {
        panic!()
    };
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("min_completeness: not measured")),
        "{reasons:?}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&render_json(&card)).expect("json with unknown completeness");
    assert!(json["completeness"].is_null());
}

#[tokio::test]
async fn identity_line_with_numbers() {
    let mut s = Sim::new("host-a");
    s.matched("GET /a", 10, 1, 1);
    s.differed("GET /a", 2, &[field("$.x", "1", "2")], &[]);
    s.errors("GET /a", 1, CandidateErrorKind::Reset);
    s.sampled_out(7);
    s.dropped(DropReason::Gap, 3);
    // Two exchanges still waiting for the candidate.
    s.ledger.saw(2);
    let ev = load_sims(&[s]).await;
    let card = card_of(&ev, &criteria());
    let a = &card.accounting;
    assert_eq!((a.seen, a.in_flight, a.identity_holds), (25, 2, true));
    assert_eq!(a.candidate_errors["reset"], 1);
    assert_eq!(a.dropped["gap"], 3);
    let text = render_table(&card);
    let first = line_with(&text, "seen 25 = ");
    assert!(
        first.contains("seen 25 = matched 10 + differed 2 + sampled_out 7 + excluded 0"),
        "{text}"
    );
    let joined: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        joined.contains("candidate_error 1 + dropped 3 + in_flight 2 (identity holds)"),
        "{text}"
    );
    assert!(
        text.lines()
            .all(|l| l.chars().count() <= 100 || l.contains("VERDICT")),
        "{text}"
    );

    // A broken identity is said, not hidden.
    let mut ev2 = ev.clone();
    ev2.ledger_total.seen = 10;
    let card = card_of(&ev2, &criteria());
    assert!(!card.accounting.identity_holds);
    let text = render_table(&card);
    assert!(text.contains("IDENTITY DOES NOT HOLD"), "{text}");
    assert!(
        card.notes
            .iter()
            .any(|n| n.contains("accounting identity broken")),
        "{:?}",
        card.notes
    );
}

fn keys(v: &serde_json::Value) -> BTreeSet<String> {
    v.as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn json_field_names_are_stable() {
    let mut sims = timestamp_sims(true);
    sims.extend(go_sims());
    let ev = load_sims(&sims).await;
    let card = card_of(&ev, &criteria());
    let v: serde_json::Value = serde_json::from_str(&render_json(&card)).expect("json");
    assert_eq!(
        keys(&v),
        set(&[
            "version",
            "scope",
            "accounting",
            "completeness",
            "completeness_detail",
            "routes",
            "diffs",
            "latency",
            "egress",
            "side_effects",
            "side_effect_mismatched",
            "side_effect_counts",
            "criteria",
            "verdict",
            "exit_code",
            "notes",
        ])
    );
    assert_eq!(v["version"], 1);
    assert_eq!(
        keys(&v["scope"]),
        set(&[
            "hosts",
            "run_ids",
            "since_unix_ms",
            "first_run_started_unix_ms",
            "last_ledger_unix_ms",
            "generated_at_unix_ms",
        ])
    );
    assert_eq!(
        keys(&v["accounting"]),
        set(&[
            "seen",
            "matched",
            "differed",
            "sampled_out",
            "excluded",
            "candidate_errors",
            "candidate_errors_total",
            "dropped",
            "dropped_total",
            "in_flight",
            "identity_holds",
            "kernel",
            "pairing",
            "stored",
        ])
    );
    assert_eq!(
        keys(&v["accounting"]["pairing"]),
        set(&[
            "exchanges",
            "proven",
            "dropped_at_join",
            "responses_unpaired",
            "dropped_at_end",
            "ledgers_not_recorded",
        ])
    );
    assert_eq!(
        keys(&v["accounting"]["kernel"]),
        set(&[
            "segments",
            "payload_bytes",
            "records",
            "ring_full",
            "pre_sampled",
            "oversize_bytes",
            "load_errors",
        ])
    );
    assert_eq!(v["accounting"]["dropped"]["gap"], 2);
    assert_eq!(
        keys(&v["routes"][0]),
        set(&[
            "route",
            "compared",
            "matched",
            "differed",
            "mismatched",
            "mismatched_low",
            "mismatched_high",
            "mismatch_basis",
            "mismatch_rate",
            "candidate_errors",
            "replayed",
            "candidate_error_rate",
            "status_mismatches",
            "latency",
        ])
    );
    assert_eq!(
        keys(&v["routes"][0]["latency"]),
        set(&[
            "exchanges",
            "legacy",
            "candidate",
            "p95_ttlb_ratio",
            "p95_ttlb_delta_ns",
            "p95_ttlb_delta_interval_ns"
        ])
    );
    assert_eq!(
        keys(&v["routes"][0]["latency"]["legacy"]),
        set(&["samples", "ttfb", "ttlb"])
    );
    assert_eq!(
        keys(&v["routes"][0]["latency"]["legacy"]["ttlb"]),
        set(&["p50_ns", "p95_ns", "p99_ns"])
    );
    let noise = v["diffs"]
        .as_array()
        .expect("diffs")
        .iter()
        .find(|d| d["class"] == "noise")
        .expect("a noise diff");
    assert_eq!(
        keys(noise),
        set(&[
            "route",
            "key",
            "count",
            "occurrences",
            "rate",
            "class",
            "reason",
            "counts_as_mismatch",
            "secondary_count",
            "secondary_rate",
            "suggested_ignore",
            "examples",
            "examples_not_kept",
        ])
    );
    let signal = v["diffs"]
        .as_array()
        .expect("diffs")
        .iter()
        .find(|d| d["class"] == "signal")
        .expect("a signal diff");
    assert_eq!(
        keys(&signal["examples"][0]),
        set(&[
            "id",
            "host",
            "run_id",
            "ts_unix_ms",
            "legacy",
            "candidate",
            "has_bodies"
        ])
    );
    assert_eq!(
        keys(&v["latency"]),
        set(&[
            "exchanges",
            "legacy",
            "candidate",
            "p95_ttlb_ratio",
            "p95_ttlb_delta_ns",
            "p95_ttlb_delta_interval_ns",
            "weighted",
            "min_latency_delta_ns",
            "candidate_cpu_cap_percent",
            "candidate_cpu_not_recorded_runs",
            "caveats"
        ])
    );
    assert_eq!(
        keys(&v["egress"][0]),
        set(&[
            "destination",
            "protocol",
            "action",
            "attempts",
            "hosts",
            "first_seen_unix_ms",
            "last_seen_unix_ms",
            "commands",
        ])
    );
    assert_eq!(v["egress"][0]["action"], "refused");
    assert_eq!(
        keys(&v["criteria"][0]),
        set(&["name", "route", "limit", "measured", "passed", "unit"])
    );
    // The verdict is tagged; a script reads `verdict.verdict` and `exit_code`.
    assert_eq!(v["verdict"]["verdict"], "no_go");
    assert!(v["verdict"]["failing"].is_array());
    assert_eq!(v["exit_code"], 1);
}

#[tokio::test]
async fn markdown_rendering() {
    let mut sims = timestamp_sims(false);
    let mut s = Sim::new("host-b");
    s.matched("GET /a|b", 20, 10, 12);
    sims.push(s);
    let ev = load_sims(&sims).await;
    let card = card_of(&ev, &criteria());
    let md = render_markdown(&card);
    assert!(
        md.starts_with("## Parity report: INSUFFICIENT EVIDENCE\n"),
        "{md}"
    );
    assert!(md.contains("**VERDICT: INSUFFICIENT EVIDENCE — "), "{md}");
    assert!(md.contains("### Criteria"), "{md}");
    assert!(
        md.contains("| **FAIL** | `min_exchanges` | 120 | >= 1000 |"),
        "{md}"
    );
    assert!(
        md.contains("```text\nseen 120 = matched 20 + differed 100"),
        "{md}"
    );
    // A `|` in a route cannot break the table.
    assert!(md.contains("| `GET /a\\|b` | 20 | 0 | 0.00% |"), "{md}");
    assert!(
        md.contains("### Likely noise and noise (shown, not hidden)"),
        "{md}"
    );
    let ts = line_with(&md, "`field($.updated_at,value)`");
    assert!(
        ts.contains("likely noise") && ts.contains("`--ignore 'json:$.updated_at'`"),
        "{ts}"
    );
    assert!(md.contains("`host-t-00000`"), "{md}");
    // Every table row has as many cells as its header.
    for block in md.split("\n\n") {
        let rows: Vec<&str> = block.lines().filter(|l| l.starts_with('|')).collect();
        if let Some(head) = rows.first() {
            let cells = |l: &str| l.replace("\\|", "").matches('|').count();
            for r in &rows {
                assert_eq!(cells(r), cells(head), "{r}\n{block}");
            }
        }
    }
}

#[tokio::test]
async fn live_views_follow_the_card() {
    let ev = load_sims(&go_sims()).await;
    let card = card_of(&ev, &criteria());
    let (verdict, routes, diffs, egress) = live_views(&card);
    assert_eq!(verdict.status, "GO");
    let mm = verdict
        .criteria
        .iter()
        .find(|c| c.name == "max_mismatch")
        .expect("criterion");
    assert_eq!(
        (mm.limit.as_str(), mm.measured.as_str()),
        ("<= 0.5%", "0.25%")
    );
    let p95 = verdict
        .criteria
        .iter()
        .find(|c| c.name == "max_p95_regression")
        .expect("p95");
    assert_eq!(p95.measured, "+5%");
    assert_eq!(routes.len(), 2);
    assert_eq!(routes[1].route, "POST /orders");
    assert_eq!(routes[1].exchanges, 201);
    assert_eq!(routes[1].p95_ratio, card.routes[1].latency.p95_ttlb_ratio);
    assert!((routes[1].legacy.p95_ms - 20.0).abs() < 1e-9);
    assert_eq!(diffs[0].class, "signal");
    assert_eq!(diffs[0].examples[0].id, "host-a-00600");
    assert_eq!(egress.len(), 1);
    assert_eq!(egress[0].destination.to_string(), "10.0.0.9:5432");
}

#[test]
fn suggested_flags_from_keys() {
    assert_eq!(
        suggested_ignore_for_key("field($.items[*].price,value)").as_deref(),
        Some("--ignore 'json:$.items[*].price'")
    );
    assert_eq!(
        suggested_ignore_for_key("header(etag)").as_deref(),
        Some("--ignore header:etag")
    );
    assert_eq!(suggested_ignore_for_key("status"), None);
    assert_eq!(suggested_ignore_for_key("body"), None);
}

#[tokio::test]
/// A fuller run, rendered: every section present, in the order an SRE reads them, and
/// lines within 100 columns. (`cargo test … sample_card -- --nocapture` prints it.)
async fn sample_card_renders_every_section_in_order() {
    let mut sims = timestamp_sims(true);
    let mut a = Sim::new("legacy-api-07");
    a.matched("GET /users/{id}", 9_000, 12, 13);
    a.differed(
        "GET /users/{id}",
        310,
        &[field("$.address.zip", "\"tok_3f9a\"", "\"tok_77c1\"")],
        &[],
    );
    a.matched("POST /orders", 900, 80, 112);
    a.errors("POST /orders", 4, CandidateErrorKind::Timeout);
    a.differed(
        "POST /orders",
        6,
        &[Diff {
            kind: DiffKind::Status,
            legacy: Some("201".into()),
            candidate: Some("500".into()),
        }],
        &[],
    );
    a.sampled_out(90_000);
    a.dropped(DropReason::Gap, 41);
    a.dropped(DropReason::Unsupported, 120);
    a.kernel.ring_full = 12;
    a.pairing.proven -= 20;
    a.pairing.dropped_at_join = 12;
    a.pairing.responses_unpaired = 3;
    a.ledger.saw(3);
    a.egress.push(EgressAttempt {
        ts_unix_ms: BASE_TS + 5,
        pid: 7,
        command: "java".into(),
        protocol: "tcp".into(),
        destination: "10.20.0.15:5432".parse().expect("addr"),
        action: EgressAction::Refused,
        first_bytes: None,
    });
    sims.push(a);
    let ev = load_sims(&sims).await;
    let card = card_of(&ev, &criteria());
    let text = render_table(&card);
    println!("{text}");
    let order = [
        "VERDICT: NO-GO — max_mismatch 3.16% > 0.5%; max_p95_regression +40% > +10%  (exit 1)",
        "\nCriteria\n",
        "\nAccounting",
        "(identity holds)",
        "pairing: 10300 of 10320 exchanges proven by TCP byte ranges",
        "joined mid-stream: 12 dropped; 3 responses without a captured request",
        "completeness 99.93% = ",
        "= (1 - 41 / 100361) x 41280 / (41280 + 12)",
        "\nRoutes\n",
        "\nDiffs (signal",
        "\nLikely noise and noise (shown, not hidden)",
        "\nExamples",
        "\nLatency",
        "\nEgress attempts by the candidate",
        "10.20.0.15:5432",
        "\nNotes",
        "\nScope: hosts host-t, legacy-api-07",
    ];
    let mut at = 0;
    for o in order {
        let i = text[at..]
            .find(o)
            .unwrap_or_else(|| panic!("{o:?} missing or out of order in\n{text}"));
        at += i;
    }
    for l in text.lines().skip(1) {
        assert!(l.chars().count() <= 100, "{l}");
    }
    let orders = line_with(&text, "POST /orders  ");
    let cells: Vec<&str> = orders.split_whitespace().collect();
    assert_eq!(
        cells,
        [
            "POST", "/orders", "906", "6", "0.66%", "4", "0.44%", "6", "1.40"
        ],
        "{orders}"
    );
}

/// One model, one renderer per format: every section of the model is drawn by the table
/// and the Markdown renderer with all its rows and lines, and names a field of the JSON.
#[tokio::test]
async fn every_section_appears_in_every_format() {
    let mut sims = go_sims();
    sims.extend(timestamp_sims(true));
    let ev = load_sims(&sims).await;
    let card = card_of(&ev, &criteria());
    let doc = super::sections::document(&card);
    let text = render_table(&card);
    let md = render_markdown(&card);
    let json: serde_json::Value = serde_json::from_str(&render_json(&card)).expect("json");
    let titles: Vec<&str> = doc.sections.iter().map(|s| s.title).collect();
    assert_eq!(
        titles.len(),
        10,
        "notes are present in this card: {titles:?}"
    );
    for s in &doc.sections {
        assert!(
            text.contains(&format!("\n{}\n", s.title)),
            "{}\n{text}",
            s.title
        );
        assert!(
            md.contains(&format!("### {}\n", s.title)),
            "{}\n{md}",
            s.title
        );
        assert!(
            !json[s.json_field].is_null(),
            "{} → {}",
            s.title,
            s.json_field
        );
        for b in &s.blocks {
            use super::sections::{Block, flat};
            match b {
                Block::Table(t) => {
                    for r in &t.rows {
                        for c in r.cells.iter().chain(&r.details) {
                            let plain = flat(c);
                            let plain = plain.trim();
                            assert!(text.contains(plain), "{plain:?} not in the table");
                            let marked = super::render::md_spans(c);
                            assert!(md.contains(marked.trim()), "{marked:?} not in Markdown");
                        }
                    }
                }
                Block::Lines(lines) => {
                    for l in lines {
                        assert!(text.contains(l.as_str()), "{l:?} not in the table");
                        assert!(md.contains(l.as_str()), "{l:?} not in Markdown");
                    }
                }
                Block::Examples(groups) => {
                    for e in groups.iter().flat_map(|g| g.examples) {
                        assert!(text.contains(&format!("{} @{}", e.id, e.host)), "{}", e.id);
                        assert!(md.contains(&format!("`{}`", e.id)), "{}", e.id);
                    }
                }
                Block::Remark(_) | Block::Empty(_) | Block::Bullets(_) => {}
            }
        }
    }
    // The kernel line is one line of the model, so both formats carry `load_errors`.
    assert!(text.contains("load_errors") && md.contains("load_errors"));
    assert!(text.contains("\nScope: hosts ") && md.contains("_Scope: hosts "));
    assert!(json["scope"]["hosts"].is_array());
}

/// Two hosts that joined live traffic: the pairing figures are summed over their ledgers
/// and said once, in the Accounting section of every format.
fn joined_sims() -> Vec<Sim> {
    let mut sims = go_sims();
    sims[0].dropped(DropReason::Gap, 5);
    sims[0].dropped(DropReason::Unpaired, 4);
    sims[0].pairing.dropped_at_join = 6;
    sims[0].pairing.responses_unpaired = 2;
    sims[0].pairing.dropped_at_end = 3;
    sims[0].pairing.proven -= 10;
    sims[1].dropped(DropReason::Unpaired, 1);
    sims[1].pairing.dropped_at_join = 1;
    sims[1].pairing.dropped_at_end = 1;
    sims
}

#[tokio::test]
async fn pairing_figures_in_every_format() {
    let ev = load_sims(&joined_sims()).await;
    let card = card_of(&ev, &criteria());
    // 603 + 598 exchanges; host-a's proof missing for 10 of them.
    let p = card.accounting.pairing.as_ref().expect("pairing recorded");
    assert_eq!(
        (
            p.exchanges,
            p.proven,
            p.dropped_at_join,
            p.responses_unpaired,
            p.dropped_at_end,
            p.ledgers_not_recorded
        ),
        (1201, 1191, 7, 2, 4, 0)
    );
    let lines = [
        "pairing: 1191 of 1201 exchanges proven by TCP byte ranges",
        "  joined mid-stream: 7 dropped; 2 responses without a captured request",
        "  still waiting for a response when the capture ended: 4 dropped",
        "  dropped as gap 7 and as unpaired 5 (all connections, joined or not)",
    ];
    let text = render_table(&card);
    let md = render_markdown(&card);
    for l in lines {
        assert!(text.contains(&format!("{l}\n")), "{l:?} in\n{text}");
        assert!(md.contains(&format!("{l}\n")), "{l:?} in\n{md}");
    }
    // Said once, inside the Accounting section (between the dropped and kernel lines).
    assert_eq!(text.matches("proven by TCP byte ranges").count(), 1);
    let at = |needle: &str| text.find(needle).expect(needle);
    assert!(at("  dropped: ") < at("  pairing: ") && at("  pairing: ") < at("  kernel: "));
    let json: serde_json::Value = serde_json::from_str(&render_json(&card)).expect("json");
    let j = &json["accounting"]["pairing"];
    assert_eq!(
        (
            &j["exchanges"],
            &j["proven"],
            &j["dropped_at_join"],
            &j["responses_unpaired"]
        ),
        (
            &serde_json::json!(1201),
            &serde_json::json!(1191),
            &serde_json::json!(7),
            &serde_json::json!(2)
        )
    );
    assert!(!card.notes.iter().any(|n| n.contains("pairing")));
}

#[tokio::test]
async fn ledgers_without_pairing_figures_still_report_and_say_so() {
    let full = load_sims(&joined_sims()).await;
    // Both ledgers written by an older build (no pairing column in their rows).
    let mut old = full.clone();
    old.pairing_total = None;
    for l in &mut old.ledgers {
        l.pairing = None;
    }
    let card = card_of(&old, &criteria());
    assert_eq!(card.accounting.pairing, None);
    assert_eq!(card.verdict, card_of(&full, &criteria()).verdict);
    let text = render_table(&card);
    assert!(
        text.contains("pairing: not recorded (ledgers written by a build that did not store it)"),
        "{text}"
    );
    assert!(!text.contains("proven by TCP byte ranges"), "{text}");
    let json: serde_json::Value = serde_json::from_str(&render_json(&card)).expect("json");
    assert!(json["accounting"]["pairing"].is_null());

    // One of two ledgers has them: its figures, and a note that they are partial.
    let mut mixed = full.clone();
    let newer = mixed.ledgers[1].pairing.take().expect("host-b recorded");
    let mut total = mixed.pairing_total.expect("recorded");
    total.exchanges -= newer.exchanges;
    total.proven -= newer.proven;
    total.dropped_at_join -= newer.dropped_at_join;
    total.responses_unpaired -= newer.responses_unpaired;
    total.dropped_at_end -= newer.dropped_at_end;
    mixed.pairing_total = Some(total);
    let card = card_of(&mixed, &criteria());
    let p = card.accounting.pairing.as_ref().expect("partly recorded");
    assert_eq!((p.exchanges, p.ledgers_not_recorded), (603, 1));
    assert!(
        card.notes
            .iter()
            .any(|n| n.starts_with("pairing figures cover 1 of 2 ledgers")),
        "{:?}",
        card.notes
    );
}

/// Two hosts, one of which recorded side-effect figures: the counts are that host's, said
/// in the Side effects section of every format, and the other ledger is named as not
/// recorded.
#[tokio::test]
async fn side_effect_counts_in_every_format() {
    let mut sims = go_sims();
    let mut f = EffectsFigures {
        recorder_queue_full: 2,
        other_on_dependency_ports: 13,
        candidate_calls: 590,
        matched_by_id: 580,
        matched_by_content: 4,
        content_ties: 1,
        unmatched: 5,
        malformed: 0,
        exchanges_with_diffs: 11,
        ..EffectsFigures::default()
    };
    f.book.calls_recorded = 600;
    f.book.attributed_exact = 585;
    f.book.attributed_window = 9;
    f.book.ambiguous = 3;
    f.book.unattributed = 6;
    sims[0].side_effects = Some(f);
    sims[0].dropped(DropReason::SideEffectsFull, 7);
    let ev = load_sims(&sims).await;
    let card = card_of(&ev, &criteria());
    let c = card.side_effect_counts.as_ref().expect("recorded");
    assert_eq!(
        (
            c.calls_recorded,
            c.attributed_by_id,
            c.attributed_by_window,
            c.ambiguous,
            c.unattributed,
            c.recorder_queue_full,
            c.side_effects_full,
            c.ledgers_not_recorded
        ),
        (600, 585, 9, 3, 6, 2, 7, 1)
    );
    assert_eq!(
        (c.candidate_calls, c.answered_by_id, c.unmatched),
        (590, 580, 5)
    );
    let lines = [
        "legacy calls recorded: 600 (by id 585, by time window 9 of them ambiguous 3 and taken over by a better fit 0, unattributed 6, not judged missing as unsettled 0)",
        "  not kept: over the per-exchange cap 0, over the byte budget 0, lost on the recorder queue 2; exchanges not replayed (side_effects_full) 7",
        "  other servers on dependency ports (neither calls nor inbound): 13 exchanges",
        "candidate calls: 590 (answered by id 580, by content 4; unmatched 502 5, refused as ties 1, malformed 0)",
        "compared exchanges with a side-effect diff: 11",
        "  1 ledger(s) of the selection did not record these counts",
    ];
    let text = render_table(&card);
    let md = render_markdown(&card);
    for l in lines {
        assert!(text.contains(&format!("{l}\n")), "{l:?} in\n{text}");
        assert!(md.contains(&format!("{l}\n")), "{l:?} in\n{md}");
    }
    let at = |needle: &str| text.find(needle).expect(needle);
    assert!(at("Side effects") < at("legacy calls recorded: 600"));
    let json: serde_json::Value = serde_json::from_str(&render_json(&card)).expect("json");
    let j = &json["side_effect_counts"];
    assert_eq!(
        (
            &j["attributed_by_window"],
            &j["unmatched"],
            &j["side_effects_full"]
        ),
        (
            &serde_json::json!(9),
            &serde_json::json!(5),
            &serde_json::json!(7)
        )
    );
    // No ledger recorded them: said so, and `null`, not zeros.
    let ev = load_sims(&go_sims()).await;
    let card = card_of(&ev, &criteria());
    assert_eq!(card.side_effect_counts, None);
    assert!(render_table(&card).contains("counts: not recorded (no --dependency"));
    let json: serde_json::Value = serde_json::from_str(&render_json(&card)).expect("json");
    assert!(json["side_effect_counts"].is_null());
}

#[tokio::test]
async fn the_latency_section_states_the_floor_and_a_candidate_cpu_cap() {
    let cap = CandidateCpuCap::binding(Some(100), 2).expect("binds");
    let capped = load_sims_with_args(
        &go_sims(),
        "candidate=http://10.0.0.2:8080 sample=100%",
        Some(CandidateCpu {
            cap_percent: Some(100),
            host_cpus: 2,
        }),
    )
    .await;
    let mut c = criteria();
    c.min_latency_delta_ns = Some(MS);
    let card = card_of(&capped, &c);
    assert_eq!(card.latency.min_latency_delta_ns, Some(MS));
    assert_eq!(card.latency.candidate_cpu_cap_percent, Some(100));
    assert_eq!(card.latency.caveats, vec![cap.caveat()]);
    let v: serde_json::Value = serde_json::from_str(&render_json(&card)).expect("json");
    assert_eq!(v["latency"]["min_latency_delta_ns"], MS);
    assert_eq!(v["latency"]["candidate_cpu_cap_percent"], 100);
    assert!(
        v["latency"]["caveats"][0]
            .as_str()
            .is_some_and(|c| c.contains("capped at 100% of one CPU")),
        "{}",
        v["latency"]
    );
    for text in [render_table(&card), render_markdown(&card)] {
        assert!(
            text.contains("floor: a p95 regression under 1 ms passes"),
            "{text}"
        );
        assert!(
            text.contains("CAVEAT: the candidate's CPU was capped"),
            "{text}"
        );
    }
    // No floor: said so.
    c.min_latency_delta_ns = None;
    let strict = render_table(&card_of(&capped, &c));
    assert!(strict.contains("floor: none"), "{strict}");
    // Without a p95 criterion there is nothing to caveat; the cap is still a fact.
    c.max_p95_regression = None;
    let card = card_of(&capped, &c);
    assert!(card.latency.caveats.is_empty());
    assert_eq!(card.latency.min_latency_delta_ns, None);
    assert_eq!(card.latency.candidate_cpu_cap_percent, Some(100));
    assert!(!render_table(&card).contains("CAVEAT"));
    // An uncapped run (`--candidate-cpu max`) has no caveat.
    let uncapped = load_sims(&go_sims()).await;
    let card = card_of(&uncapped, &criteria());
    assert!(card.latency.caveats.is_empty());
    assert_eq!(card.latency.candidate_cpu_cap_percent, None);
    assert_eq!(card.latency.candidate_cpu_not_recorded_runs, 0);
}

#[tokio::test]
async fn runs_that_did_not_record_the_candidates_cpu_are_said_so() {
    let sims = go_sims();
    // Written by a build before schema 4 without a cap in its args: unknown.
    let old = load_sims_with_args(&sims, "candidate=http://10.0.0.2:8080 sample=100%", None).await;
    let card = card_of(&old, &criteria());
    assert_eq!(card.latency.candidate_cpu_cap_percent, None);
    assert_eq!(
        card.latency.candidate_cpu_not_recorded_runs,
        sims.len() as u64
    );
    let v: serde_json::Value = serde_json::from_str(&render_json(&card)).expect("json");
    assert_eq!(
        v["latency"]["candidate_cpu_not_recorded_runs"],
        sims.len() as u64
    );
    let text = render_table(&card);
    assert!(
        text.contains("CAVEAT: the candidate's CPU was not recorded for"),
        "{text}"
    );
    // A schema 3 build's cap in the args is still read.
    let schema3 = load_sims_with_args(
        &sims,
        "candidate=http://10.0.0.2:8080 sample=100% candidate_cpu=100% host_cpus=2",
        None,
    )
    .await;
    let card = card_of(&schema3, &criteria());
    assert_eq!(card.latency.candidate_cpu_cap_percent, Some(100));
    assert_eq!(card.latency.candidate_cpu_not_recorded_runs, 0);
}

/// A side effect whose payload spans lines (a mail message) is shown on one line.
#[tokio::test]
async fn a_multi_line_side_effect_example_is_shown_on_one_line() {
    let ev = load_sims(&go_sims()).await;
    let mut card = card_of(&ev, &criteria());
    card.side_effects.push(crate::report::card::SideEffectCard {
        route: "POST /orders".into(),
        call: "SMTP MAIL TO 1 recipient".into(),
        what: "extra".into(),
        exchanges: 3,
        legacy: None,
        candidate: Some(
            "RCPT TO: u-1@x.masked.invalid\r\nSubject: Order 7\r\n\r\nThanks\r\n".into(),
        ),
    });
    let text = crate::report::render::render_table(&card);
    assert!(
        text.lines().any(|l| l
            .contains("the candidate sent RCPT TO: u-1@x.masked.invalid Subject: Order 7 Thanks")),
        "{text}"
    );
}

#[tokio::test]
async fn the_daemons_own_quota_stops_are_a_latency_caveat_read_back_from_the_store() {
    let mut sims = go_sims();
    sims[0].kernel.daemon_quota = crate::quota::QuotaThrottling {
        periods: 130,
        throttled_periods: 60,
        throttled_us: 4_200_000,
    };
    let stored = load_sims(&sims).await;
    let card = card_of(&stored, &criteria());
    let said = "CAVEAT: the daemon's CPU quota stopped it in 60 of 130 periods (4.2 s";
    for text in [render_table(&card), render_markdown(&card)] {
        assert!(text.contains(said), "{text}");
    }
    let v: serde_json::Value = serde_json::from_str(&render_json(&card)).expect("json");
    assert!(
        v["latency"]["caveats"].as_array().is_some_and(|c| c
            .iter()
            .any(|c| c.as_str().is_some_and(|c| c.contains("60 of 130")))),
        "{}",
        v["latency"]
    );
    // Rare stops (under 5 % of the periods) and no p95 criterion: nothing to say.
    sims[0].kernel.daemon_quota.throttled_periods = 6;
    let card = card_of(&load_sims(&sims).await, &criteria());
    assert!(!render_table(&card).contains("CPU quota"));
    let mut c = criteria();
    c.max_p95_regression = None;
    sims[0].kernel.daemon_quota.throttled_periods = 60;
    let card = card_of(&load_sims(&sims).await, &c);
    assert!(!render_table(&card).contains("CPU quota"));
}

#[test]
fn kernel_rows_written_before_the_quota_was_recorded_still_read() {
    let old = r#"{"segments":5,"payload_bytes":50,"records":5,"ring_full":0,"oversize":0,"sampled_out":0,"load_errors":0}"#;
    let k: KernelCounters = serde_json::from_str(old).expect("an old row");
    assert_eq!(k.segments, 5);
    assert_eq!(k.daemon_quota, crate::quota::QuotaThrottling::default());
}
