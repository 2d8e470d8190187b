//! Issue 17: side effects, compared. Legacy's `POST /orders` calls a real `payments`
//! service (in the client namespace, so the call crosses the tapped interface) with the
//! order's id and amount and the inbound `X-Request-Id`. The daemon records those calls
//! (`--dependency`), answers the fenced candidate's calls from the recordings
//! (`--virtualize-egress`) and diffs both sides' calls. The real payments service counts
//! every charge it gets: legacy's only.
use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpStream,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use mirror_e2e::*;
use serde_json::Value;

const PAY_PORT: u16 = 7070;
/// Concurrent keep-alive clients and requests each.
const CLIENTS: u64 = 8;
const PER_CLIENT: u64 = 250;

/// Product and quantity of order `n`.
fn item(n: u64) -> (u64, u64) {
    (1 + n % 9_000, 1 + n % 7)
}

/// One `POST /orders` with a request-specific payload (user and quantity) and id.
fn order(n: u64) -> String {
    let (sku, qty) = item(n);
    let body = format!(
        r#"{{"user_id":{},"items":[{{"sku":"P-{sku:05}","qty":{qty}}}],"card_number":"4111 1111 1111 1111"}}"#,
        1 + n % 997,
    );
    format!(
        "POST /orders HTTP/1.1\r\nHost: legacy\r\nContent-Type: application/json\r\nX-Request-Id: req-{n}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Reads one Content-Length response; its status.
fn status(r: &mut BufReader<TcpStream>) -> Option<u16> {
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let code = line.split_whitespace().nth(1)?.parse().ok()?;
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        if h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            len = v.trim().parse().ok()?;
        }
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).ok()?;
    Some(code)
}

/// Concurrent clients in the client namespace; the number of `201 Created` answers.
fn load(topo: &Topology) -> u64 {
    let started = std::time::Instant::now();
    let created = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (addr, created) = (topo.legacy_addr(), created.clone());
            spawn_in_netns(topo.client(), move || {
                let s = TcpStream::connect(&addr).expect("legacy reachable");
                let mut r = BufReader::new(s.try_clone().expect("clone"));
                let mut w = s;
                for i in 0..PER_CLIENT {
                    w.write_all(order(c * PER_CLIENT + i).as_bytes())
                        .expect("write");
                    if status(&mut r) == Some(201) {
                        created.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread").expect("in netns");
    }
    let n = created.load(Ordering::Relaxed);
    // A figure for the log, not an assertion (timing belongs to `cargo xtask bench`).
    eprintln!(
        "load: {n} orders created at {:.0} req/s",
        n as f64 / started.elapsed().as_secs_f64()
    );
    n
}

struct Run {
    code: Option<i32>,
    stderr: String,
    card: Value,
    charges: u64,
    created: u64,
}

/// A shadow run of `POST /orders` traffic against the example candidate of `profile`.
fn run(prefix: &str, profile: &str) -> Run {
    require_root();
    let topo = Topology::new(prefix).expect("topology");
    let dir = tempfile::tempdir().expect("tempdir");
    let pay_addr = format!("{}:{PAY_PORT}", topo.link.b_ip);
    let count = dir.path().join("charges");
    let mut pay = Proc::spawn(
        "payments",
        topo.client()
            .cmd(examples_bin())
            .args(["payments", "--listen", &pay_addr, "--count-file"])
            .arg(&count)
            .stdout(std::process::Stdio::null()),
    )
    .expect("payments");
    wait_for_port(
        topo.client(),
        &topo.link.b_ip,
        PAY_PORT,
        Duration::from_secs(10),
    )
    .expect("payments up");
    let legacy_listen = topo.legacy_addr();
    let mut legacy = Proc::spawn(
        "legacy",
        topo.legacy()
            .cmd(examples_bin())
            .args([
                "legacy",
                "--listen",
                &legacy_listen,
                "--payments",
                &pay_addr,
            ])
            .stdout(std::process::Stdio::null()),
    )
    .expect("legacy");
    wait_for_port(
        topo.legacy(),
        &topo.link.a_ip,
        8080,
        Duration::from_secs(10),
    )
    .expect("legacy up");

    let cand = format!(
        "{} --payments {pay_addr}",
        topo.example_candidate_cmd(profile)
    );
    let mut args = topo.run_args(dir.path(), &cand);
    args.extend(
        [
            "--dependency",
            &pay_addr,
            "--virtualize-egress",
            "--max-side-effect-mismatch",
            "0%",
        ]
        .map(String::from),
    );
    let daemon = Daemon::start(topo.legacy(), dir.path(), "run", &args).expect("daemon");
    let created = load(&topo);
    daemon
        .wait_settled(topo.legacy(), created, Duration::from_secs(120))
        .expect("settled");
    let exit = daemon.stop(Duration::from_secs(60)).expect("stopped");
    let (_, card) = report_json(
        &dir.path().join("m.db"),
        &["--max-side-effect-mismatch", "0%"],
    )
    .expect("report");
    let charges = std::fs::read_to_string(&count)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let _ = legacy.stop(Duration::from_secs(10));
    let _ = pay.stop(Duration::from_secs(10));
    Run {
        code: exit.code,
        stderr: exit.stderr,
        card,
        charges,
        created,
    }
}

fn route<'a>(card: &'a Value, name: &str) -> &'a Value {
    card["routes"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["route"] == name))
        .unwrap_or_else(|| panic!("route {name} in {card}"))
}

/// `name N` in the daemon's side-effect summary line.
fn figure(stderr: &str, name: &str) -> u64 {
    let line = lines_with(stderr, "side effects:")
        .first()
        .copied()
        .unwrap_or_else(|| panic!("no side-effect summary in {stderr}"));
    line.split(name)
        .nth(1)
        .and_then(|s| {
            s.split(|c: char| !c.is_ascii_digit())
                .find(|t| !t.is_empty())
        })
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{name:?} in {line}"))
}

#[test]
fn identical_candidate_gets_legacy_recorded_payments_and_compares_equal() {
    let r = run("fx", "parity");
    assert!(
        r.created >= CLIENTS * PER_CLIENT * 9 / 10,
        "{} created",
        r.created
    );
    // The real dependency got legacy's charges and nothing from the candidate.
    assert_eq!(
        r.charges, r.created,
        "payments received only legacy's calls"
    );
    let orders = route(&r.card, "POST /orders");
    let compared = orders["compared"].as_u64().expect("compared");
    assert!(compared >= r.created * 9 / 10, "{orders}");
    // A wrong match hands the candidate another order's charge id: it would differ.
    assert_eq!(orders["mismatched"], 0, "{orders}\n{}", r.stderr);
    assert_eq!(
        r.card["side_effect_mismatched"], 0,
        "{}",
        r.card["side_effects"]
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(figure(&r.stderr, "unmatched 502 "), 0, "{}", r.stderr);
    assert_eq!(figure(&r.stderr, "by content "), 0);
    assert!(
        figure(&r.stderr, "answered by id ") >= compared,
        "{}",
        r.stderr
    );
    assert!(figure(&r.stderr, "legacy calls recorded ") >= compared);
    assert_eq!(figure(&r.stderr, "by time window "), 0);
    let egress = r.card["egress"].to_string();
    assert!(egress.contains("virtualized"), "{egress}");
}

#[test]
fn candidate_charging_another_amount_is_no_go_on_side_effects() {
    let r = run("fy", "demo");
    assert_eq!(
        r.charges, r.created,
        "payments received only legacy's calls"
    );
    let mismatched = r.card["side_effect_mismatched"].as_u64().expect("count");
    let compared = route(&r.card, "POST /orders")["compared"]
        .as_u64()
        .expect("compared");
    // The demo candidate rounds the charge up to 0.10: totals already on a multiple of
    // 0.10 are charged alike, every other one differs.
    let differs = (0..CLIENTS * PER_CLIENT)
        .filter(|&n| {
            let (sku, qty) = item(n);
            mirror_examples::api::product_price_cents(sku) * qty % 10 != 0
        })
        .count() as u64;
    assert!(differs > 0 && differs < r.created);
    assert!(
        compared > 0 && mismatched <= compared,
        "{mismatched} of {compared}"
    );
    if compared == CLIENTS * PER_CLIENT {
        assert_eq!(
            mismatched, differs,
            "every different charge, and only those"
        );
    } else {
        assert!(mismatched > 0, "{mismatched} of {compared}");
    }
    let kinds: Vec<String> = r.card["side_effects"]
        .as_array()
        .expect("side effects")
        .iter()
        .map(|e| format!("{} {}", e["call"], e["what"]))
        .collect();
    assert_eq!(
        kinds,
        vec![r#""POST /charges" "field($.amount,value)""#],
        "{kinds:?}"
    );
    assert_eq!(
        r.card["verdict"]["verdict"], "no_go",
        "{}",
        r.card["verdict"]
    );
    let failing = r.card["criteria"].to_string();
    assert!(failing.contains("max_side_effect_mismatch"), "{failing}");
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert_eq!(figure(&r.stderr, "unmatched 502 "), 0, "{}", r.stderr);
}
