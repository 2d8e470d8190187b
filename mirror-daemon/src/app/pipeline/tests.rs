//! The pipeline's steps in-process, with real parts on loopback: a capture file, a
//! candidate, a SQLite store.
use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use super::*;
use crate::{
    accounting::{DropReason, LedgerSnapshot, Outcome},
    app::fence::FenceConfig,
    compare::{Comparator, RouteTemplater},
    http::Limits,
    mask::Masker,
    replay::{ReplayConfig, Speed},
    sample::{SampleConfig, Sampler},
    serve::ServeConfig,
    store::StoreUrl,
    verdict::Criteria,
};

fn identity_holds(s: &LedgerSnapshot) -> bool {
    s.seen == s.terminal()
}

/// A candidate on loopback: answers every request head with `{}`, or (`answer` off)
/// accepts and never answers.
async fn candidate(answer: bool) -> SocketAddr {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the candidate");
    let addr = listener.local_addr().expect("candidate address");
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while let Ok(n) = conn.read(&mut chunk).await {
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        if answer {
                            let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
                            if conn.write_all(reply).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

/// A plan replaying a golden capture (50 GETs on 50 connections, one lane each) as
/// fast as the candidate takes it,
/// unfenced, into a SQLite store in `dir`.
fn plan(dir: &std::path::Path, candidate: SocketAddr, timeout: Duration) -> Plan {
    use crate::{
        app::fence::CandidateSource,
        compare::CompareConfig,
        guard::limits::CandidateLimits,
        mask::{MaskConfig, MaskKey},
        replay::{RewriteRules, parse_candidate_url},
    };
    let key = MaskKey::from_bytes(&[7u8; 32]).expect("key");
    let masker = Masker::new(MaskConfig::with_defaults(key)).expect("masker");
    let replay = ReplayConfig {
        target: parse_candidate_url(&format!("http://{candidate}")).expect("url"),
        rules: RewriteRules {
            host: None,
            id_header: "X-Mirror-Id".into(),
            shadow_header: "X-Mirror-Shadow".into(),
        },
        concurrency: 64,
        timeout,
        rate_per_s: None,
        max_lateness: crate::app::lanes::LANE_MAX_LATE,
        limits: Limits::default(),
    };
    Plan {
        input: Input::File {
            path: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/golden/concurrent.pcap"),
            ports: Vec::new(),
            reorder_window: 0,
            speed: Speed::Max,
        },
        sampler: Arc::new(Sampler::new(SampleConfig::default()).expect("sampler")),
        masker: Arc::new(masker),
        comparator: Comparator::new(CompareConfig::default()).expect("comparator"),
        templater: Arc::new(RouteTemplater::new(&[]).expect("routes")),
        criteria: Criteria::default(),
        criteria_text: String::new(),
        replay,
        secondary: None,
        replay_raw: false,
        limits: Limits::default(),
        store: StoreUrl::Sqlite(dir.join("m.db")),
        store_text: "m.db".into(),
        retention: Retention::default(),
        serve: ServeConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            token: None,
        },
        fencing: Fencing::Off(FenceConfig {
            candidate: CandidateSource::External,
            identity: None,
            netns: None,
            limits: CandidateLimits::none(),
            allow_egress: Vec::new(),
            egress_sink: None,
            allow_dns: None,
            allow_unix: Vec::new(),
            virtual_deps: Vec::new(),
        }),
        secrets: Vec::new(),
        sample_percent: 100.0,
        host: "h".into(),
        run_id: "r".into(),
        priority: crate::app::isolation::PipelinePriority::Normal,
        effects: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capture_file_run_ends_by_itself_with_every_exchange_compared() {
    let dir = tempfile::tempdir().expect("tempdir");
    let addr = candidate(true).await;
    let mut running = start(plan(dir.path(), addr, Duration::from_secs(30)))
        .await
        .expect("start");
    // Bounded: the file holds 50 exchanges.
    let mut stop = None;
    for _ in 0..600 {
        stop = running.tick(Instant::now()).await.stop;
        if stop.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(stop, Some(StopReason::EndOfInput));
    let end = running
        .shutdown(Deadlines::for_replay_timeout(Duration::from_secs(30)))
        .await
        .expect("shutdown");
    assert_eq!(end.drained, Drained::default(), "nothing cut");
    let s = &end.ledger;
    assert_eq!(s.seen, 50, "{s:?}");
    assert_eq!(s.matched + s.differed, 50, "{s:?}");
    assert!(identity_holds(s), "{s:?}");
    // The card is drawn from the store: it counts what the ledger counted.
    assert_eq!(end.card.accounting.seen, 50);
    assert_eq!(end.card.accounting.in_flight, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_while_the_candidate_hangs_cuts_the_replays_at_the_deadline() {
    let dir = tempfile::tempdir().expect("tempdir");
    let addr = candidate(false).await;
    let mut running = start(plan(dir.path(), addr, Duration::from_secs(120)))
        .await
        .expect("start");
    for _ in 0..600 {
        running.tick(Instant::now()).await;
        if running.ledger().seen == 50 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deadlines = Deadlines {
        replays: Duration::from_millis(300),
        store: Duration::from_secs(30),
    };
    let end = running.shutdown(deadlines).await.expect("shutdown");
    let s = &end.ledger;
    assert_eq!(s.seen, 50, "{s:?}");
    assert!(end.drained.replays_cut);
    let cut = s.count(Outcome::Dropped(DropReason::ShutdownDeadline));
    assert!(cut > 0, "{s:?}");
    assert_eq!(end.drained.sealed, cut);
    assert_eq!(s.matched + s.differed, 0, "the candidate never answered");
    assert_eq!(s.in_flight(), 0);
    assert!(identity_holds(s), "{s:?}");
    assert_eq!(end.card.accounting.in_flight, 0);
    assert_eq!(end.card.accounting.seen, 50);
}
