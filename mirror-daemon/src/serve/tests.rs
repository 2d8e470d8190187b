use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
    sync::{Arc, Mutex, atomic::AtomicBool},
    time::Duration,
};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::{
    accounting::{CandidateErrorKind, DropReason, LedgerSnapshot},
    capture::kernel::KernelCounters,
    guard::{EgressAction, EgressAttempt},
};

// ---------------------------------------------------------------- helpers

fn state(snapshot: LiveSnapshot, control: Option<SampleControl>) -> ServeState {
    ServeState {
        snapshot: Arc::new(arc_swap::ArcSwap::from_pointee(snapshot)),
        metrics: Arc::new(Metrics::new()),
        ready: Arc::new(AtomicBool::new(false)),
        control,
    }
}

async fn start(state: ServeState, token: Option<&str>) -> SocketAddr {
    let cfg = ServeConfig {
        listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        token: token.map(str::to_string),
    };
    serve(cfg, state, std::future::pending()).await.unwrap()
}

struct Reply {
    status: u16,
    head: String,
    body: String,
}

/// One HTTP/1.1 request over a raw socket (no client library on purpose: this is what
/// curl or Prometheus would send).
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    let mut s = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await
        .unwrap()
        .unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    Reply {
        status,
        head: head.to_string(),
        body: body.to_string(),
    }
}

fn latency(p50: f64, p95: f64, p99: f64, count: u64) -> LatencyView {
    LatencyView {
        p50_ms: p50,
        p95_ms: p95,
        p99_ms: p99,
        count,
    }
}

/// A run the way an SRE would see it mid-way; `go` picks a passing or failing variant.
fn realistic(go: bool) -> LiveSnapshot {
    let differed = if go { 12 } else { 431 };
    let criteria = vec![
        CriterionView {
            name: "mismatch".into(),
            limit: "<= 0.5%".into(),
            measured: if go { "0.06%".into() } else { "2.17%".into() },
            passed: go,
        },
        CriterionView {
            name: "p95 regression".into(),
            limit: "<= 10%".into(),
            measured: if go { "+3.2%".into() } else { "+41.8%".into() },
            passed: go,
        },
        CriterionView {
            name: "exchanges".into(),
            limit: ">= 1000".into(),
            measured: "19842".into(),
            passed: true,
        },
        CriterionView {
            name: "completeness".into(),
            limit: ">= 99%".into(),
            measured: "99.91%".into(),
            passed: true,
        },
    ];
    LiveSnapshot {
        run: RunView {
            host: "legacy-api-07".into(),
            run_id: "01J9Z6Q4W8K3M2N5P7R9T1V3X5".into(),
            mode: "live".into(),
            candidate: "http://127.0.0.1:9090".into(),
            iface: "eth0".into(),
            ports: vec![8080],
            started_unix_ms: 1_760_000_000_000,
            sample_percent: 10.0,
        },
        ledger: LedgerSnapshot {
            seen: 221_514,
            matched: 19_842 - differed,
            differed,
            sampled_out: 198_900,
            excluded: 2_604,
            candidate_error: vec![
                (CandidateErrorKind::Timeout, 7),
                (CandidateErrorKind::Refused, 0),
                (CandidateErrorKind::Reset, 2),
                (CandidateErrorKind::Malformed, 0),
            ],
            dropped: vec![
                (DropReason::RingFull, 0),
                (DropReason::QueueFull, 0),
                (DropReason::Gap, 131),
                (DropReason::ParseError, 3),
                (DropReason::Unsupported, 14),
            ],
        },
        completeness: 0.9991,
        kernel: KernelCounters {
            segments: 1_204_332,
            payload_bytes: 734_003_200,
            records: 811_200,
            ring_full: 0,
            oversize: 0,
            sampled_out: 0,
            load_errors: 0,
            daemon_quota: Default::default(),
        },
        pairing: crate::http::PairingCounters {
            exchanges: 19_851,
            proven: 19_838,
            dropped_at_join: 13,
            responses_unpaired: 4,
            dropped_at_end: 6,
        },
        side_effects: Some({
            let mut f = crate::effects::EffectsFigures {
                candidate_calls: 4_410,
                matched_by_id: 4_398,
                unmatched: 12,
                exchanges_with_diffs: 37,
                ..Default::default()
            };
            f.book.calls_recorded = 4_402;
            f.book.attributed_exact = 4_399;
            f.book.unattributed = 3;
            f
        }),
        side_effect_mismatched: 37,
        daemon_cpu: Some(DaemonCpuView {
            quota: "50 % of one CPU per 100 ms".into(),
            periods: 1_840,
            throttled_periods: if go { 12 } else { 395 },
            throttled_seconds: if go { 0.1 } else { 6.2 },
            binds: !go,
        }),
        verdict: VerdictView {
            status: if go { "GO" } else { "NO-GO" }.into(),
            criteria,
            reasons: if go {
                vec![]
            } else {
                vec![
                    "mismatch 2.17% > 0.5% (GET /users/{id})".into(),
                    "p95 regression +41.8% > 10% (POST /orders)".into(),
                ]
            },
            caveats: if go {
                vec![]
            } else {
                vec![
                    "the daemon's CPU quota stopped it in 395 of 1840 periods (6.2 s of \
                     waiting): requests then reached the candidate in bursts, so its latency \
                     reads higher than it is; give the daemon more CPU (the unit's \
                     CPUQuota=) or replay a smaller sample before trusting a p95 regression"
                        .into(),
                ]
            },
        },
        routes: vec![
            RouteView {
                route: "GET /users/{id}".into(),
                exchanges: 12_400,
                matched: 12_400 - differed,
                differed,
                candidate_errors: 2,
                mismatch_rate: differed as f64 / 12_400.0,
                legacy: latency(3.1, 9.8, 21.4, 12_400),
                candidate: latency(2.7, 8.9, 19.0, 12_400),
                p95_ratio: Some(8.9 / 9.8),
            },
            RouteView {
                route: "POST /orders".into(),
                exchanges: 5_210,
                matched: 5_210,
                differed: 0,
                candidate_errors: 7,
                mismatch_rate: 0.0,
                legacy: latency(18.0, 61.0, 140.0, 5_210),
                candidate: if go {
                    latency(18.5, 62.9, 151.0, 5_203)
                } else {
                    latency(24.0, 86.5, 240.0, 5_203)
                },
                p95_ratio: Some(if go { 62.9 / 61.0 } else { 86.5 / 61.0 }),
            },
            RouteView {
                route: "GET /health".into(),
                exchanges: 2_232,
                matched: 2_232,
                differed: 0,
                candidate_errors: 0,
                mismatch_rate: 0.0,
                legacy: latency(0.21, 0.4, 0.9, 2_232),
                candidate: latency(0.19, 0.35, 0.7, 2_232),
                p95_ratio: Some(0.35 / 0.4),
            },
        ],
        diffs: vec![
            DiffView {
                route: "GET /users/{id}".into(),
                kind: "field($.user.name,value)".into(),
                count: differed,
                rate: differed as f64 / 12_400.0,
                class: "signal".into(),
                examples: vec![
                    ExampleView {
                        id: "corr-7f3a9c01".into(),
                        legacy: r#""name":"tok_9a1f3e""#.into(),
                        candidate: r#""name":"tok_9a1f3e ""#.into(),
                    },
                    ExampleView {
                        id: "corr-hostile".into(),
                        legacy: r#"<script>document.title='PWNED'</script>"#.into(),
                        candidate: r#"<img id="pwned" src=x onerror="document.title='PWNED'">"#
                            .into(),
                    },
                ],
            },
            DiffView {
                route: "GET /users/{id}".into(),
                kind: "header(date,value)".into(),
                count: 12_400,
                rate: 1.0,
                class: "noise".into(),
                examples: vec![],
            },
        ],
        egress: vec![EgressView {
            destination: "10.0.9.14:5432".parse().unwrap(),
            protocol: "tcp".into(),
            action: EgressAction::Refused,
            count: 3,
            last_command: "orders-svc".into(),
            last_seen_unix_ms: 1_760_000_123_000,
        }],
    }
}

// ---------------------------------------------------------------- metrics

#[test]
fn metrics_encode_outcomes_and_latency_buckets() {
    let ledger = Arc::new(crate::accounting::Ledger::default());
    let m = Metrics::for_ledger(ledger.clone());
    ledger.saw(4);
    ledger.record_n(crate::accounting::Outcome::Matched, 2);
    ledger.record(crate::accounting::Outcome::Dropped(DropReason::Gap));
    m.latency("GET /users/{id}", "legacy", 3_000_000, 7_500_000);
    m.latency(
        "GET /users/{id}",
        "candidate",
        40_000_000_000,
        40_000_000_000,
    );
    m.egress("refused", "tcp");
    let text = m.encode();
    assert!(
        text.contains(r#"mirror_exchanges_total{outcome="matched",reason=""} 2"#),
        "{text}"
    );
    assert!(
        text.contains(r#"mirror_exchanges_total{outcome="dropped",reason="gap"} 1"#),
        "{text}"
    );
    // Every pair is exposed, zeros included, with the rest of the identity.
    assert!(
        text.contains(r#"mirror_exchanges_total{outcome="dropped",reason="stage_panic"} 0"#),
        "{text}"
    );
    assert!(text.contains("mirror_exchanges_seen_total 4\n"), "{text}");
    assert!(text.contains("mirror_exchanges_in_flight 1\n"), "{text}");
    assert!(
        text.contains("# TYPE mirror_ttlb_seconds histogram"),
        "{text}"
    );
    // 7.5 ms lands in the 10 ms bucket, not in the 5 ms one.
    assert!(
        text.contains(
            r#"mirror_ttlb_seconds_bucket{le="0.005",route="GET /users/{id}",side="legacy"} 0"#
        ),
        "{text}"
    );
    assert!(
        text.contains(
            r#"mirror_ttlb_seconds_bucket{le="0.01",route="GET /users/{id}",side="legacy"} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains(
            r#"mirror_ttfb_seconds_bucket{le="0.0001",route="GET /users/{id}",side="legacy"} 0"#
        ),
        "{text}"
    );
    // 40 s is past the last bound: only +Inf has it.
    assert!(
        text.contains(
            r#"mirror_ttlb_seconds_bucket{le="30.0",route="GET /users/{id}",side="candidate"} 0"#
        ),
        "{text}"
    );
    assert!(
        text.contains(
            r#"mirror_ttlb_seconds_bucket{le="+Inf",route="GET /users/{id}",side="candidate"} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains(r#"mirror_egress_attempts_total{action="refused",protocol="tcp"} 1"#),
        "{text}"
    );
}

#[test]
fn kernel_counters_are_exposed_as_set() {
    let m = Metrics::new();
    let mut k = KernelCounters {
        segments: 10,
        ring_full: 4,
        ..Default::default()
    };
    m.set_kernel(&k);
    k.segments = 25;
    m.set_kernel(&k);
    let text = m.encode();
    assert!(
        text.contains("# TYPE mirror_kernel_segments counter"),
        "{text}"
    );
    assert!(text.contains("mirror_kernel_segments_total 25\n"), "{text}");
    assert!(text.contains("mirror_kernel_ring_full_total 4\n"), "{text}");
    assert!(
        text.contains("mirror_kernel_load_errors_total 0\n"),
        "{text}"
    );
}

#[test]
fn the_daemons_quota_is_exposed_only_while_one_is_set() {
    use crate::quota::{CpuQuota, QuotaReading, QuotaThrottling};
    let m = Metrics::new();
    let throttling = QuotaThrottling {
        periods: 80,
        throttled_periods: 12,
        throttled_us: 1_250_000,
    };
    m.set_daemon_quota(&QuotaReading {
        limit: None,
        throttling,
    });
    let text = m.encode();
    assert!(!text.contains("mirror_daemon_cpu"), "no quota: {text}");
    m.set_daemon_quota(&QuotaReading {
        limit: Some(CpuQuota {
            quota_us: 50_000,
            period_us: 100_000,
        }),
        throttling,
    });
    let text = m.encode();
    for line in [
        "# TYPE mirror_daemon_cpu_periods counter",
        "mirror_daemon_cpu_periods_total 80\n",
        "mirror_daemon_cpu_throttled_periods_total 12\n",
        "# TYPE mirror_daemon_cpu_throttled_seconds counter",
        "mirror_daemon_cpu_throttled_seconds_total 1.25\n",
    ] {
        assert!(text.contains(line), "{line:?} in {text}");
    }
}

#[test]
fn pairing_counters_are_exposed_as_set() {
    let m = Metrics::new();
    let text = m.encode();
    assert!(text.contains("mirror_pairing_proven_total 0\n"), "{text}");
    m.set_pairing(&crate::http::PairingCounters {
        exchanges: 120,
        proven: 117,
        dropped_at_join: 3,
        responses_unpaired: 2,
        dropped_at_end: 5,
    });
    let text = m.encode();
    for line in [
        "# TYPE mirror_pairing_exchanges counter",
        "mirror_pairing_exchanges_total 120\n",
        "mirror_pairing_proven_total 117\n",
        "mirror_pairing_dropped_at_join_total 3\n",
        "mirror_pairing_responses_unpaired_total 2\n",
        "mirror_pairing_dropped_at_end_total 5\n",
    ] {
        assert!(text.contains(line), "{line:?} in {text}");
    }
}

#[test]
fn side_effect_counters_are_read_from_their_source_at_scrape_time() {
    let m = Metrics::new();
    let text = m.encode();
    assert!(
        text.contains("mirror_side_effect_calls_recorded_total 0\n"),
        "zeros without dependencies: {text}"
    );
    let calls = Arc::new(std::sync::atomic::AtomicU64::new(7));
    let source = calls.clone();
    m.watch_side_effects(move || {
        let mut f = crate::effects::EffectsFigures {
            recorder_queue_full: 1,
            other_on_dependency_ports: 3,
            candidate_calls: 6,
            matched_by_id: 4,
            matched_by_content: 1,
            unmatched: 1,
            exchanges_with_diffs: 2,
            ..Default::default()
        };
        f.book.calls_recorded = source.load(std::sync::atomic::Ordering::Relaxed);
        f.book.attributed_exact = 5;
        f.book.attributed_window = 1;
        f.book.ambiguous = 1;
        f.book.unattributed = 1;
        f
    });
    calls.store(9, std::sync::atomic::Ordering::Relaxed);
    let text = m.encode();
    for line in [
        "# TYPE mirror_side_effect_calls_recorded counter",
        "mirror_side_effect_calls_recorded_total 9\n",
        "mirror_side_effect_attributed_by_id_total 5\n",
        "mirror_side_effect_attributed_by_window_total 1\n",
        "mirror_side_effect_ambiguous_total 1\n",
        "mirror_side_effect_unattributed_total 1\n",
        "mirror_side_effect_recorder_queue_full_total 1\n",
        "mirror_side_effect_other_on_dependency_ports_total 3\n",
        "mirror_side_effect_candidate_calls_total 6\n",
        "mirror_side_effect_virtual_matched_total 5\n",
        "mirror_side_effect_virtual_unmatched_total 1\n",
        "mirror_side_effect_mismatched_total 2\n",
    ] {
        assert!(text.contains(line), "{line:?} in {text}");
    }
}

#[test]
fn routes_beyond_the_cap_are_other() {
    let m = Metrics::new();
    m.set_routes_cap(2);
    for route in ["GET /a", "GET /b", "GET /c", "GET /d", "GET /a"] {
        m.latency(route, "legacy", 1_000_000, 2_000_000);
    }
    let text = m.encode();
    let count = |route: &str| {
        let needle = format!(r#"mirror_ttlb_seconds_count{{route="{route}",side="legacy"}} "#);
        text.lines()
            .find_map(|l| l.strip_prefix(needle.as_str()))
            .map(|v| v.trim().to_string())
    };
    assert_eq!(count("GET /a").as_deref(), Some("2"), "{text}");
    assert_eq!(count("GET /b").as_deref(), Some("1"), "{text}");
    assert_eq!(count(OTHER_ROUTE).as_deref(), Some("2"), "{text}");
    assert_eq!(count("GET /c"), None, "{text}");
    assert_eq!(count("GET /d"), None, "{text}");
}

// ---------------------------------------------------------------- listen / auth

#[test]
fn token_required_off_loopback() {
    let cfg = |listen: SocketAddr, token: Option<&str>| ServeConfig {
        listen,
        token: token.map(str::to_string),
    };
    let public = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 9464));
    let lan: SocketAddr = "10.1.2.3:9464".parse().unwrap();
    let v6_any = SocketAddr::from((Ipv6Addr::UNSPECIFIED, 9464));
    for addr in [public, lan, v6_any] {
        let err = check_listen(&cfg(addr, None)).unwrap_err();
        assert!(matches!(err, ServeError::TokenRequired { .. }), "{err}");
        assert!(err.to_string().contains("token"), "{err}");
        assert!(check_listen(&cfg(addr, Some("s3cret"))).is_ok());
        assert!(matches!(
            check_listen(&cfg(addr, Some("  "))),
            Err(ServeError::EmptyToken)
        ));
    }
    assert!(check_listen(&cfg(SocketAddr::from((Ipv4Addr::LOCALHOST, 9464)), None)).is_ok());
    assert!(check_listen(&cfg(SocketAddr::from((Ipv6Addr::LOCALHOST, 9464)), None)).is_ok());
}

#[tokio::test]
async fn serve_refuses_public_listen_without_token() {
    let cfg = ServeConfig {
        listen: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        token: None,
    };
    let err = serve(
        cfg,
        state(LiveSnapshot::default(), None),
        std::future::pending(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ServeError::TokenRequired { .. }), "{err}");
}

#[tokio::test]
async fn bearer_token_guards_everything_but_healthz_and_the_page() {
    let addr = start(state(realistic(true), None), Some("s3cret-token")).await;
    for path in ["/metrics", "/readyz", "/api/snapshot"] {
        let r = http(addr, "GET", path, &[], "").await;
        assert_eq!(r.status, 401, "{path}: {}", r.head);
        assert!(
            r.head
                .to_ascii_lowercase()
                .contains("www-authenticate: bearer"),
            "{}",
            r.head
        );
        let r = http(addr, "GET", path, &[("Authorization", "Bearer wrong")], "").await;
        assert_eq!(r.status, 401, "{path} with a wrong token");
        let r = http(
            addr,
            "GET",
            path,
            &[("Authorization", "Bearer s3cret-tokenX")],
            "",
        )
        .await;
        assert_eq!(r.status, 401, "{path} with a longer token");
        let r = http(
            addr,
            "GET",
            path,
            &[("Authorization", "Basic s3cret-token")],
            "",
        )
        .await;
        assert_eq!(r.status, 401, "{path} with another scheme");
    }
    let auth = [("Authorization", "Bearer s3cret-token")];
    assert_eq!(http(addr, "GET", "/metrics", &auth, "").await.status, 200);
    let snap = http(addr, "GET", "/api/snapshot", &auth, "").await;
    assert_eq!(snap.status, 200);
    assert!(snap.body.contains("legacy-api-07"));
    let r = http(
        addr,
        "POST",
        "/api/sample",
        &[("Content-Type", "application/json")],
        r#"{"percent":5}"#,
    )
    .await;
    assert_eq!(r.status, 401, "the control needs the token too");
    let health = http(addr, "GET", "/healthz", &[], "").await;
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));
    // The page is static and holds no data; it gets its token from the URL fragment.
    let page = http(addr, "GET", "/", &[], "").await;
    assert_eq!(page.status, 200);
    assert!(!page.body.contains("legacy-api-07"));
}

#[tokio::test]
async fn health_and_readiness() {
    let st = state(LiveSnapshot::default(), None);
    let ready = Arc::clone(&st.ready);
    let addr = start(st, None).await;
    let r = http(addr, "GET", "/healthz", &[], "").await;
    assert_eq!((r.status, r.body.as_str()), (200, "ok\n"));
    let r = http(addr, "GET", "/readyz", &[], "").await;
    assert_eq!(r.status, 503);
    assert!(r.body.contains("not ready"), "{}", r.body);
    ready.store(true, std::sync::atomic::Ordering::Release);
    assert_eq!(http(addr, "GET", "/readyz", &[], "").await.status, 200);
}

#[tokio::test]
async fn foreign_host_names_are_refused_without_token() {
    let addr = start(state(realistic(true), None), None).await;
    let r = http(
        addr,
        "GET",
        "/api/snapshot",
        &[("Host", "attacker.example")],
        "",
    )
    .await;
    // The helper already sent a Host; a second one makes hyper or us refuse: both are fine,
    // what matters is that no snapshot comes back.
    assert_ne!(r.status, 200, "{}", r.head);
    assert!(!r.body.contains("legacy-api-07"));
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /api/snapshot HTTP/1.1\r\nHost: rebind.attacker.example:9464\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.unwrap();
    assert!(raw.starts_with("HTTP/1.1 421"), "{raw}");
    for host in ["localhost:9464", "[::1]:9464", "127.0.0.1"] {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET /api/snapshot HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).await.unwrap();
        assert!(raw.starts_with("HTTP/1.1 200"), "{host}: {raw}");
    }
}

// ---------------------------------------------------------------- control

#[tokio::test]
async fn sample_control_validates_and_calls() {
    let calls = Arc::new(Mutex::new(Vec::<f64>::new()));
    let seen = Arc::clone(&calls);
    let control: SampleControl = Arc::new(move |p| {
        if p == 0.0 {
            return Err("a 0% sample would replay nothing: stop the run instead".into());
        }
        seen.lock().unwrap().push(p);
        Ok(())
    });
    let addr = start(state(LiveSnapshot::default(), Some(control)), None).await;
    let json = [("Content-Type", "application/json")];
    let ok = http(addr, "POST", "/api/sample", &json, r#"{"percent": 5}"#).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert!(ok.body.contains(r#""percent":5.0"#), "{}", ok.body);
    assert_eq!(
        http(addr, "POST", "/api/sample", &json, r#"{"percent": 100}"#)
            .await
            .status,
        200
    );
    assert_eq!(
        http(addr, "POST", "/api/sample", &json, r#"{"percent": 12.5}"#)
            .await
            .status,
        200
    );
    for bad in [
        r#"{"percent": -1}"#,
        r#"{"percent": 100.5}"#,
        r#"{"percent": NaN}"#,
        r#"{"percent": "5"}"#,
        r#"{"percent": "5%"}"#,
        r#"{"percent": 1e999}"#,
        r#"{"rate": 5}"#,
        r#"{"percent": 5, "extra": 1}"#,
        "percent=5",
        "",
    ] {
        let r = http(addr, "POST", "/api/sample", &json, bad).await;
        assert_eq!(r.status, 400, "{bad}: {}", r.body);
        assert!(r.body.contains("\"error\""), "{bad}: {}", r.body);
    }
    // The control's own refusal is passed on to the caller.
    let r = http(addr, "POST", "/api/sample", &json, r#"{"percent": 0}"#).await;
    assert_eq!(r.status, 400);
    assert!(r.body.contains("replay nothing"), "{}", r.body);
    // A form post (what a hostile page can send without a preflight) is refused.
    let r = http(
        addr,
        "POST",
        "/api/sample",
        &[("Content-Type", "text/plain")],
        r#"{"percent": 7}"#,
    )
    .await;
    assert_eq!(r.status, 415, "{}", r.body);
    assert_eq!(http(addr, "GET", "/api/sample", &[], "").await.status, 405);
    assert_eq!(*calls.lock().unwrap(), vec![5.0, 100.0, 12.5]);
}

#[tokio::test]
async fn sample_without_control_says_so() {
    let addr = start(state(LiveSnapshot::default(), None), None).await;
    let r = http(
        addr,
        "POST",
        "/api/sample",
        &[("Content-Type", "application/json")],
        r#"{"percent": 5}"#,
    )
    .await;
    assert_eq!(r.status, 404);
    assert!(r.body.contains("no live sample control"), "{}", r.body);
}

// ---------------------------------------------------------------- snapshot

/// serde_json (without its `float_roundtrip` feature) may read a float back one ULP off;
/// that is invisible on a dashboard, so floats compare with a tiny relative tolerance.
fn same_json(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_f64(), y.as_f64()) {
            (Some(x), Some(y)) => (x - y).abs() <= 1e-12 * x.abs().max(y.abs()),
            _ => x == y,
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_json(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|((kx, vx), (ky, vy))| kx == ky && same_json(vx, vy))
        }
        _ => a == b,
    }
}

#[test]
fn snapshot_json_round_trips() {
    let s = realistic(false);
    let json = serde_json::to_value(&s).unwrap();
    let back: LiveSnapshot = serde_json::from_str(&json.to_string()).unwrap();
    assert_eq!(back.run, s.run);
    assert_eq!(back.ledger, s.ledger);
    assert_eq!(back.kernel, s.kernel);
    assert_eq!(back.pairing, s.pairing);
    assert_eq!(back.verdict, s.verdict);
    assert_eq!(back.daemon_cpu, s.daemon_cpu);
    assert_eq!(back.diffs, s.diffs);
    assert_eq!(back.egress, s.egress);
    assert_eq!(back.routes.len(), s.routes.len());
    let again = serde_json::to_value(&back).unwrap();
    assert!(same_json(&json, &again), "{json}\n{again}");
    // The dashboard relies on these shapes.
    assert_eq!(
        json["ledger"]["dropped"][2],
        serde_json::json!(["gap", 131])
    );
    assert_eq!(json["egress"][0]["action"], "refused");
    assert_eq!(json["egress"][0]["destination"], "10.0.9.14:5432");
    assert_eq!(json["kernel"]["segments"], 1_204_332);
    let empty = serde_json::to_string(&LiveSnapshot::default()).unwrap();
    let empty: LiveSnapshot = serde_json::from_str(&empty).unwrap();
    assert_eq!(empty.ledger, LedgerSnapshot::default());
}

#[tokio::test]
async fn snapshot_endpoint_serves_the_current_snapshot() {
    let st = state(realistic(true), None);
    let snap = Arc::clone(&st.snapshot);
    let addr = start(st, None).await;
    let r = http(addr, "GET", "/api/snapshot", &[], "").await;
    assert_eq!(r.status, 200);
    assert!(
        r.head
            .to_ascii_lowercase()
            .contains("content-type: application/json")
    );
    let got: LiveSnapshot = serde_json::from_str(&r.body).unwrap();
    assert_eq!(got.verdict.status, "GO");
    snap.store(Arc::new(realistic(false)));
    let got: LiveSnapshot =
        serde_json::from_str(&http(addr, "GET", "/api/snapshot", &[], "").await.body).unwrap();
    assert_eq!(got.verdict.status, "NO-GO");
}

#[test]
fn egress_attempts_are_grouped() {
    let a = |ts, cmd: &str, dst: &str, action| EgressAttempt {
        ts_unix_ms: ts,
        pid: 1,
        command: cmd.into(),
        protocol: "tcp".into(),
        destination: dst.parse().unwrap(),
        action,
        first_bytes: None,
    };
    let views = egress_views(&[
        a(1, "svc", "10.0.0.1:443", EgressAction::Refused),
        a(3, "curl", "10.0.0.1:443", EgressAction::Refused),
        a(2, "svc", "10.0.0.1:443", EgressAction::Refused),
        a(5, "svc", "10.0.0.1:443", EgressAction::Redirected),
    ]);
    assert_eq!(views.len(), 2);
    assert_eq!(views[0].count, 3);
    assert_eq!(views[0].last_command, "curl");
    assert_eq!(views[0].last_seen_unix_ms, 3);
    assert_eq!(views[1].action, EgressAction::Redirected);
}

// ---------------------------------------------------------------- dashboard

#[test]
fn dashboard_never_parses_values_as_html() {
    // Values come from traffic: the page must build nodes, never feed strings to the
    // HTML parser. These sinks are the ways to do that by accident.
    for sink in [
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
        "new Function",
        "DOMParser",
        "createContextualFragment",
    ] {
        assert!(!DASHBOARD_HTML.contains(sink), "dashboard uses {sink}");
    }
    // Nothing from outside: the host may be offline and the page must not leak.
    for external in ["http://", "https://", "//cdn", "@import", "<link"] {
        let hits: Vec<&str> = DASHBOARD_HTML
            .lines()
            .filter(|l| l.contains(external) && !l.contains("http://www.w3.org/2000/svg"))
            .collect();
        assert!(hits.is_empty(), "external reference {external}: {hits:?}");
    }
}

#[tokio::test]
async fn dashboard_page_headers() {
    let addr = start(state(LiveSnapshot::default(), None), None).await;
    let r = http(addr, "GET", "/", &[], "").await;
    assert_eq!(r.status, 200);
    let head = r.head.to_ascii_lowercase();
    assert!(head.contains("content-type: text/html"), "{head}");
    assert!(
        head.contains("content-security-policy: default-src 'none'"),
        "{head}"
    );
    assert!(head.contains("connect-src 'self'"), "{head}");
    assert!(r.body.contains("api/snapshot"));
}

fn artifacts_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("test-artifacts")
}

const CHROMIUM: &str = "/usr/bin/chromium";

/// Runs headless Chromium against `url` with `extra` arguments, bounded in time.
async fn chromium(url: &str, extra: &[String]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut cmd = tokio::process::Command::new(CHROMIUM);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--virtual-time-budget=3000",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .args(extra)
    .arg(url)
    .stdin(std::process::Stdio::null())
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .kill_on_drop(true);
    let child = cmd.spawn().unwrap();
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("chromium did not finish within 60 s")
        .unwrap();
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether the browser test can run; fails loudly when Chromium is missing, because a
/// silently skipped UI test is worse than none.
fn browser_available() -> bool {
    if std::env::var_os("MIRROR_SKIP_BROWSER").is_some_and(|v| v == "1") {
        return false;
    }
    assert!(
        std::path::Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: run `cargo xtask setup` (or set MIRROR_SKIP_BROWSER=1 to skip)"
    );
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_renders_in_a_real_browser() {
    if !browser_available() {
        return;
    }
    let dir = artifacts_dir();
    std::fs::create_dir_all(&dir).unwrap();
    for (go, token) in [(true, None), (false, Some("dash-token-1"))] {
        let addr = start(state(realistic(go), None), token).await;
        let url = match token {
            Some(t) => format!("http://{addr}/#token={t}"),
            None => format!("http://{addr}/"),
        };
        let dom = chromium(&url, &["--dump-dom".to_string()]).await;
        let status = if go { "GO" } else { "NO-GO" };
        assert!(
            dom.contains(&format!(
                r#"<div class="status" id="verdict-status">{status}<small>"#
            )),
            "verdict {status} missing: {dom}"
        );
        let banner = if go { "banner go" } else { "banner nogo" };
        assert!(dom.contains(banner), "{banner}: {dom}");
        for needle in [
            "GET /users/{id}",
            "POST /orders",
            "GET /health",
            "&lt;= 0.5%",
            "&gt;= 1000",
            "99.91%",
            "corr-7f3a9c01",
            "id corr-hostile",
            "field($.user.name,value)",
            "10.0.9.14:5432",
            "orders-svc",
            "legacy-api-07",
            "221,514",
            "✓ adds up",
            "gap 131",
            "timeout 7",
            "19,838 of 19,851",
            "dropped at a mid-stream join",
            "legacy calls recorded",
            "4,402",
            "4,399",
            "compared exchanges with a side-effect diff",
            "daemon CPU quota",
            "50 % of one CPU per 100 ms",
        ] {
            assert!(
                dom.contains(needle),
                "{needle} missing from the dashboard: {dom}"
            );
        }
        let measured = if go { "0.06%" } else { "2.17%" };
        assert!(dom.contains(measured), "{measured}: {dom}");
        if !go {
            assert!(dom.contains("+41.8%"), "{dom}");
            assert!(
                dom.contains("p95 regression +41.8% &gt; 10% (POST /orders)"),
                "{dom}"
            );
            assert!(
                dom.contains("CAVEAT: the daemon's CPU quota stopped it in 395 of 1840 periods"),
                "{dom}"
            );
            assert!(dom.contains("395 of 1,840 periods"), "{dom}");
        } else {
            assert!(!dom.contains(r#"id="caveats""#), "{dom}");
        }
        // Hostile example values show as text and never become markup.
        assert!(
            dom.contains("&lt;script&gt;document.title='PWNED'&lt;/script&gt;"),
            "{dom}"
        );
        assert!(dom.contains("&lt;img id=\"pwned\""), "{dom}");
        assert!(!dom.contains("<img"), "{dom}");
        assert!(!dom.contains("PWNED</title>"), "{dom}");
        assert!(dom.contains("<title>mirror</title>"), "{dom}");
        // The latency chart was drawn: 3 routes × 4 bars.
        assert_eq!(dom.matches("<rect ").count(), 12, "{dom}");
        assert!(
            !dom.contains(r#"class="conn bad""#),
            "the page could not fetch: {dom}"
        );

        let shot = dir.join(if go {
            "dashboard-go.png"
        } else {
            "dashboard.png"
        });
        let _ = std::fs::remove_file(&shot);
        chromium(
            &url,
            &[
                format!("--screenshot={}", shot.display()),
                "--window-size=1400,1800".to_string(),
            ],
        )
        .await;
        let png = std::fs::read(&shot).unwrap();
        assert!(
            png.starts_with(b"\x89PNG") && png.len() > 10_000,
            "{}",
            shot.display()
        );
    }
}
