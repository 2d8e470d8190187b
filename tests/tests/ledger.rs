//! Issue 15: the ledger is the only place outcomes are recorded. After a real run (tap,
//! legacy, a candidate with deviations, sampling, an exclusion and a client that does
//! not speak HTTP), `/metrics`, the
//! dashboard's ledger and the report's accounting give the same numbers, and the
//! identity holds with nothing in flight.
use std::{collections::BTreeMap, time::Duration};

use mirror_e2e::*;
use serde_json::Value;

/// `mirror_exchanges_total{outcome="…",reason="…"} N` lines, and the unlabeled series.
struct Scrape {
    outcomes: BTreeMap<(String, String), u64>,
    seen: u64,
    in_flight: u64,
}

fn scrape(text: &str) -> Scrape {
    let mut outcomes = BTreeMap::new();
    let (mut seen, mut in_flight) = (None, None);
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("mirror_exchanges_total{") {
            let (labels, value) = rest.split_once("} ").expect("a labelled sample");
            let label = |name: &str| {
                labels
                    .split(',')
                    .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
                    .map(|v| v.trim_matches('"').to_string())
                    .expect("outcome and reason labels")
            };
            outcomes.insert(
                (label("outcome"), label("reason")),
                value.parse().expect("a count"),
            );
        } else if let Some(v) = line.strip_prefix("mirror_exchanges_seen_total ") {
            seen = Some(v.parse().expect("a count"));
        } else if let Some(v) = line.strip_prefix("mirror_exchanges_in_flight ") {
            in_flight = Some(v.parse().expect("a count"));
        }
    }
    Scrape {
        outcomes,
        seen: seen.expect("mirror_exchanges_seen_total"),
        in_flight: in_flight.expect("mirror_exchanges_in_flight"),
    }
}

/// The report's accounting in the same (outcome, reason) shape as the metrics.
fn report_outcomes(acc: &Value) -> BTreeMap<(String, String), u64> {
    let mut out = BTreeMap::new();
    for name in ["matched", "differed", "sampled_out", "excluded"] {
        out.insert(
            (name.to_string(), String::new()),
            acc[name].as_u64().expect("a count"),
        );
    }
    for (outcome, field) in [
        ("candidate_error", "candidate_errors"),
        ("dropped", "dropped"),
    ] {
        for (reason, n) in acc[field].as_object().expect("a map of counts") {
            out.insert(
                (outcome.to_string(), reason.clone()),
                n.as_u64().expect("a count"),
            );
        }
    }
    out
}

/// What a finished `run` left: the load, the live ledger when it settled, /metrics just
/// before the stop, and the stored report's card.
struct Finished {
    load: LoadSummary,
    live: Value,
    metrics: Scrape,
    card: Value,
}

/// The example legacy tapped by `run --sample SAMPLE --exclude path:^/slow` with a
/// deviating candidate; `before` runs first (returning the extra exchanges it makes the
/// daemon see), then 1500 requests over 4 connections; the daemon settles and stops.
fn run_and_report(ns: &str, sample: &str, before: impl FnOnce(&Topology) -> u64) -> Finished {
    let topo = Topology::new(ns).expect("topology");
    let dir = tempfile::tempdir().expect("temp dir");
    let _legacy = start_legacy(topo.legacy(), &topo.link.a_ip, 8080).expect("legacy");
    let mut args = topo.run_args(dir.path(), &topo.example_candidate_cmd("deviations"));
    args.extend(["--sample", sample, "--exclude", "path:^/slow"].map(String::from));
    let daemon = Daemon::start(topo.legacy(), dir.path(), "run", &args).expect("daemon");
    let extra = before(&topo);
    let load = run_load(topo.client(), &topo.legacy_addr(), 1500, 4).expect("load");
    assert_eq!((load.failed, load.not_sent), (0, 0), "{load:?}");
    let live = daemon
        .wait_settled(
            topo.legacy(),
            load.answered() + extra,
            Duration::from_secs(60),
        )
        .expect("settled");
    let metrics = scrape(&daemon.get(topo.legacy(), "/metrics").expect("/metrics"));
    let exit = daemon.stop(Duration::from_secs(60)).expect("stop");
    assert_eq!(exit.code, Some(0), "{}", exit.stderr);
    let (_, card) = report_json(&dir.path().join("m.db"), &[]).expect("report");
    Finished {
        load,
        live,
        metrics,
        card,
    }
}

#[test]
fn metrics_the_dashboard_and_the_report_count_the_same_outcomes_after_a_run() {
    require_root();
    let Finished {
        load,
        live,
        metrics,
        card,
    } = run_and_report("g", "60%", |topo| {
        // A client that does not speak HTTP: a capture-side drop, which /metrics used to
        // miss.
        let garbage = format!(
            "exec 3<>/dev/tcp/{}/8080; printf 'NOT HTTP AT ALL\\r\\n\\r\\n' >&3; timeout 2 cat <&3 >/dev/null; true",
            topo.link.a_ip
        );
        topo.client().exec_ok(&["bash", "-c", &garbage]).unwrap();
        1
    });
    let acc = &card["accounting"];
    eprintln!(
        "load {load:?}\naccounting {acc}\nmetrics {:?}",
        metrics.outcomes
    );
    assert_eq!(acc["identity_holds"], true, "{acc}");
    assert_eq!(acc["in_flight"].as_u64(), Some(0), "{acc}");
    assert_eq!(metrics.in_flight, 0);
    assert_eq!(acc["seen"].as_u64(), Some(metrics.seen), "{acc}");
    assert!(metrics.seen > load.answered(), "{acc}");
    assert_eq!(live["seen"].as_u64(), Some(metrics.seen), "{live}");

    // The same outcomes, pair by pair, and every pair in both (zeros included).
    let reported = report_outcomes(acc);
    assert_eq!(metrics.outcomes, reported);
    let total: u64 = metrics.outcomes.values().sum();
    assert_eq!(total, metrics.seen, "Σ mirror_exchanges_total = seen");
    // The run exercised several outcomes, so the comparison is not of zeros.
    let n = |o: &str, r: &str| reported[&(o.to_string(), r.to_string())];
    assert!(n("matched", "") > 0 && n("differed", "") > 0, "{acc}");
    assert!(n("sampled_out", "") > 0 && n("excluded", "") > 0, "{acc}");
    assert!(acc["dropped_total"].as_u64() > Some(0), "{acc}");
    // The ledger counts a replayed exchange once its row is stored: the store holds
    // exactly the compared exchanges the accounting counts.
    assert_eq!(
        acc["stored"]["compared"].as_u64(),
        Some(n("matched", "") + n("differed", "")),
        "{acc}"
    );
}

#[test]
fn a_stop_while_replays_hang_counts_them_as_cut_by_the_deadline_and_leaves_none_in_flight() {
    require_root();
    let topo = Topology::new("gd").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let _legacy = start_legacy(topo.legacy(), &topo.link.a_ip, 8080).unwrap();
    // A candidate that accepts and never answers (it holds every connection).
    let (ip, port) = topo
        .candidate_addr()
        .split_once(':')
        .map(|(a, p)| (a.to_string(), p.to_string()))
        .unwrap();
    let hang = format!(
        "import socket\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
         s.bind(('{ip}',{port}))\ns.listen(1024)\nheld=[]\nwhile True:\n    held.append(s.accept()[0])\n"
    );
    let script = dir.path().join("hang.py");
    std::fs::write(&script, hang).unwrap();
    let cmd = format!("exec {} {}", python3(), script.display());
    let mut args = topo.run_args(dir.path(), &cmd);
    // Replays wait up to 3 s each, 4 at a time: most are still queued at the stop.
    args.extend(["--timeout", "3", "--concurrency", "4"].map(String::from));
    let daemon = Daemon::start(topo.legacy(), dir.path(), "run", &args).unwrap();
    let load = run_load(topo.client(), &topo.legacy_addr(), 400, 4).unwrap();
    assert_eq!((load.failed, load.not_sent), (0, 0), "{load:?}");
    // Wait until every exchange is seen (not until it has an outcome), then stop.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let l = daemon.ledger(topo.legacy()).unwrap();
        if l["seen"].as_u64() >= Some(load.answered()) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not all seen: {l}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let exit = daemon.stop(Duration::from_secs(120)).unwrap();
    assert_eq!(exit.code, Some(0), "{}", exit.stderr);

    let (_, card) = report_json(&dir.path().join("m.db"), &[]).unwrap();
    let acc = &card["accounting"];
    eprintln!("accounting {acc}");
    assert_eq!(acc["seen"].as_u64(), Some(load.answered()), "{acc}");
    assert_eq!(acc["in_flight"].as_u64(), Some(0), "{acc}");
    assert_eq!(acc["identity_holds"], true, "{acc}");
    let cut = acc["dropped"]["shutdown_deadline"].as_u64().unwrap_or(0);
    assert!(
        cut > 0,
        "replays queued at the stop are cut by the deadline: {acc}"
    );
    // Lanes that cannot take more drop at once (counted), never block the capture.
    let full = acc["dropped"]["replay_queue_full"].as_u64().unwrap_or(0);
    assert_eq!(
        acc["candidate_errors"]["timeout"].as_u64().unwrap_or(0) + cut + full,
        load.answered(),
        "each exchange timed out, was cut, or found the replay queue full: {acc}"
    );
    assert!(
        exit.stderr.contains("dropped{shutdown_deadline}"),
        "{}",
        exit.stderr
    );
}

/// `--sample 0` (capture only): the capture thread frames exchanges without copying their
/// content, yet every exchange is seen once and ends `sampled_out` or `excluded`, and the
/// identity holds in /metrics and the report alike.
#[test]
fn capture_only_counts_every_exchange_it_frames_without_content() {
    require_root();
    let Finished {
        load,
        metrics,
        card,
        ..
    } = run_and_report("g0", "0", |_| 0);
    let acc = &card["accounting"];
    eprintln!("load {load:?}\naccounting {acc}");
    assert_eq!(acc["identity_holds"], true, "{acc}");
    assert_eq!(acc["in_flight"].as_u64(), Some(0), "{acc}");
    assert_eq!(acc["seen"].as_u64(), Some(load.answered()), "{acc}");
    assert_eq!(metrics.seen, load.answered());
    let reported = report_outcomes(acc);
    assert_eq!(metrics.outcomes, reported);
    let n = |o: &str| reported[&(o.to_string(), String::new())];
    assert!(n("excluded") > 0, "{acc}");
    assert_eq!(n("sampled_out") + n("excluded"), load.answered(), "{acc}");
    assert_eq!(n("matched") + n("differed"), 0, "nothing replayed: {acc}");
}
