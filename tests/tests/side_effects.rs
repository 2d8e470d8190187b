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
/// The real mail sink's port (stands for the outside world's relay).
const MAIL_PORT: u16 = 2525;
/// Concurrent keep-alive clients and requests each.
const CLIENTS: u64 = 16;
const PER_CLIENT: u64 = 200;

/// Product and quantity of order `n`.
fn item(n: u64) -> (u64, u64) {
    (1 + n % 9_000, 1 + n % 7)
}

fn user(n: u64) -> u64 {
    1 + n % 997
}

/// One `POST /orders` with a request-specific payload (user and quantity), with an
/// `X-Request-Id` or without; the query names both for the store's rows.
fn order(n: u64, with_id: bool) -> String {
    let (sku, qty) = item(n);
    let u = user(n);
    let body = format!(
        r#"{{"user_id":{u},"items":[{{"sku":"P-{sku:05}","qty":{qty}}}],"card_number":"4111 1111 1111 1111"}}"#,
    );
    let id = if with_id {
        format!("X-Request-Id: req-{n}\r\n")
    } else {
        String::new()
    };
    format!(
        "POST /orders?id={}&u={u} HTTP/1.1\r\nHost: legacy\r\nContent-Type: application/json\r\n{id}Content-Length: {}\r\n\r\n{body}",
        u8::from(with_id),
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
fn load(topo: &Topology, with_id: fn(u64) -> bool) -> u64 {
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
                    let n = c * PER_CLIENT + i;
                    w.write_all(order(n, with_id(n)).as_bytes()).expect("write");
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
    /// `mirror_side_effect_*_total` (name without prefix and suffix) scraped after the
    /// load settled, and the dashboard's side-effect figures read then.
    metrics: std::collections::BTreeMap<String, u64>,
    live: Value,
    db: std::path::PathBuf,
    _dir: tempfile::TempDir,
    code: Option<i32>,
    stderr: String,
    card: Value,
    charges: u64,
    created: u64,
    /// Messages the real mail sink received.
    mails: u64,
}

/// A shadow run of `POST /orders` traffic against the example candidate of `profile`.
fn run(prefix: &str, profile: &str, with_id: fn(u64) -> bool) -> Run {
    run_on(prefix, profile, with_id, false, false)
}

/// Gives the tapped link IPv6 addresses (a /64 derived from its IPv4 /24, unique the
/// same way); the client end's.
fn add_ipv6(topo: &Topology) -> String {
    let l = &topo.link;
    let mut parts = l.b_ip.split('.').skip(1);
    let (x, y) = (
        parts.next().unwrap_or("0").to_string(),
        parts.next().unwrap_or("0").to_string(),
    );
    for (ns, ifc, host) in [(&l.a, &l.a_if, 1), (&l.b, &l.b_if, 2)] {
        // nodad: usable at once (no duplicate detection delay).
        ns.exec_ok(&[
            "ip",
            "-6",
            "addr",
            "add",
            &format!("fd00:{x}:{y}::{host}/64"),
            "dev",
            ifc,
            "nodad",
        ])
        .expect("IPv6 address");
    }
    format!("fd00:{x}:{y}::2")
}

/// [`run`], with the payments service on the client namespace's IPv6 address if `ipv6`.
/// With `mail`, a real `mail-sink` (the outside world) listens beside payments, the
/// candidate is told to send its confirmations there and the daemon virtualizes it as
/// `--dependency smtp://…`.
fn run_on(prefix: &str, profile: &str, with_id: fn(u64) -> bool, ipv6: bool, mail: bool) -> Run {
    require_root();
    let topo = Topology::new(prefix).expect("topology");
    let dir = tempfile::tempdir().expect("tempdir");
    let pay_ip = if ipv6 {
        add_ipv6(&topo)
    } else {
        topo.link.b_ip.clone()
    };
    let pay_addr = if ipv6 {
        format!("[{pay_ip}]:{PAY_PORT}")
    } else {
        format!("{pay_ip}:{PAY_PORT}")
    };
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
    wait_for_port(topo.client(), &pay_ip, PAY_PORT, Duration::from_secs(10)).expect("payments up");
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

    let mail_addr = format!("{}:{MAIL_PORT}", topo.link.b_ip);
    let mail_count = dir.path().join("mails");
    let mut sink = mail.then(|| {
        Proc::spawn(
            "mail-sink",
            topo.client()
                .cmd(examples_bin())
                .args(["mail-sink", "--listen", &mail_addr, "--count-file"])
                .arg(&mail_count)
                .stdout(std::process::Stdio::null()),
        )
        .expect("mail-sink")
    });
    if mail {
        wait_for_port(
            topo.client(),
            &topo.link.b_ip,
            MAIL_PORT,
            Duration::from_secs(10),
        )
        .expect("mail-sink up");
    }
    let mail_flag = if mail {
        format!(" --mail-host {mail_addr}")
    } else {
        String::new()
    };
    let cand = format!(
        "{} --payments {pay_addr}{mail_flag}",
        topo.example_candidate_cmd(profile)
    );
    let mut args = topo.run_args(dir.path(), &cand);
    if mail {
        args.extend(["--dependency".to_string(), format!("smtp://{mail_addr}")]);
    }
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
    let created = load(&topo, with_id);
    daemon
        .wait_settled(topo.legacy(), created, Duration::from_secs(120))
        .expect("settled");
    let metrics = side_effect_metrics(&daemon.get(topo.legacy(), "/metrics").expect("scrape"));
    // The dashboard's figures are published once a second: wait (bounded) for the tick
    // after the load to reach them.
    let mut live = Value::Null;
    for _ in 0..50 {
        let snap: Value = serde_json::from_str(
            &daemon
                .get(topo.legacy(), "/api/snapshot")
                .expect("snapshot"),
        )
        .expect("snapshot json");
        live = snap["side_effects"].clone();
        if live["candidate_calls"].as_u64() == metrics.get("candidate_calls").copied() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
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
    let mails = std::fs::read_to_string(&mail_count)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let _ = legacy.stop(Duration::from_secs(10));
    let _ = pay.stop(Duration::from_secs(10));
    if let Some(s) = sink.as_mut() {
        let _ = s.stop(Duration::from_secs(10));
    }
    Run {
        mails,
        metrics,
        live,
        db: dir.path().join("m.db"),
        _dir: dir,
        code: exit.code,
        stderr: exit.stderr,
        card,
        charges,
        created,
    }
}

/// `mirror_side_effect_NAME_total N` lines.
fn side_effect_metrics(text: &str) -> std::collections::BTreeMap<String, u64> {
    text.lines()
        .filter_map(|l| l.strip_prefix("mirror_side_effect_"))
        .filter_map(|l| l.split_once("_total "))
        .filter_map(|(name, v)| Some((name.to_string(), v.trim().parse().ok()?)))
        .collect()
}

/// `/metrics` after the load, the dashboard's panel and the stored report's
/// `side_effect_counts` give the same numbers (nothing moved once the load settled).
fn counts_agree(r: &Run) {
    let c = &r.card["side_effect_counts"];
    let n = |v: &Value| v.as_u64().unwrap_or_else(|| panic!("a count in {c}"));
    let stored = [
        ("calls_recorded", n(&c["calls_recorded"])),
        ("attributed_by_id", n(&c["attributed_by_id"])),
        ("attributed_by_window", n(&c["attributed_by_window"])),
        ("ambiguous", n(&c["ambiguous"])),
        ("unattributed", n(&c["unattributed"])),
        ("recorder_queue_full", n(&c["recorder_queue_full"])),
        (
            "other_on_dependency_ports",
            n(&c["other_on_dependency_ports"]),
        ),
        ("candidate_calls", n(&c["candidate_calls"])),
        (
            "virtual_matched",
            n(&c["answered_by_id"]) + n(&c["answered_by_content"]),
        ),
        ("virtual_unmatched", n(&c["unmatched"])),
        ("mismatched", n(&c["exchanges_with_diffs"])),
    ];
    eprintln!("stored side-effect counts {c}\nmetrics {:?}", r.metrics);
    for (name, v) in stored {
        assert_eq!(
            r.metrics.get(name),
            Some(&v),
            "mirror_side_effect_{name}_total"
        );
    }
    assert!(
        n(&c["calls_recorded"]) > 0 && n(&c["candidate_calls"]) > 0,
        "{c}"
    );
    let b = &r.live["book"];
    assert_eq!(
        (
            n(&b["calls_recorded"]),
            n(&b["attributed_exact"]),
            n(&b["attributed_window"]),
            n(&r.live["candidate_calls"]),
            n(&r.live["unmatched"]),
            n(&r.live["exchanges_with_diffs"]),
        ),
        (
            stored[0].1,
            stored[1].1,
            stored[2].1,
            stored[7].1,
            stored[9].1,
            stored[10].1
        ),
        "dashboard {}",
        r.live
    );
    assert_eq!(c["ledgers_not_recorded"], 0, "{c}");
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
    eprintln!("{line}");
    line.split(name)
        .nth(1)
        .and_then(|s| {
            s.split(|c: char| !c.is_ascii_digit())
                .find(|t| !t.is_empty())
        })
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{name:?} in {line}"))
}

/// What every parity run must show: most orders created and compared, the real
/// dependency got legacy's charges and nothing from the candidate, and no order differs
/// (a wrong match hands the candidate another order's charge id: it would differ).
/// Returns the orders compared.
fn parity_orders_compared(r: &Run) -> u64 {
    assert!(
        r.created >= CLIENTS * PER_CLIENT * 9 / 10,
        "{} created",
        r.created
    );
    assert_eq!(
        r.charges, r.created,
        "payments received only legacy's calls"
    );
    let orders = route(&r.card, "POST /orders");
    let compared = orders["compared"].as_u64().expect("compared");
    assert!(compared >= r.created * 9 / 10, "{orders}");
    assert_eq!(orders["mismatched"], 0, "{orders}\n{}", r.stderr);
    compared
}

#[test]
fn identical_candidate_gets_legacy_recorded_payments_and_compares_equal() {
    let r = run("fx", "parity", |_| true);
    let compared = parity_orders_compared(&r);
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
    counts_agree(&r);
    // The pairing figures are the inbound traffic's: legacy's calls are not in them.
    let acc = &r.card["accounting"];
    assert_eq!(acc["pairing"]["exchanges"], acc["seen"], "{acc}");
}

/// The same with the dependency on IPv6: legacy's calls are recorded from the tap, the
/// guard sends the candidate's connects to the virtual dependency on its [::1].
#[test]
fn an_ipv6_dependency_is_recorded_and_virtualized_too() {
    let r = run_on("f6", "parity", |_| true, true, false);
    let compared = parity_orders_compared(&r);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(
        figure(&r.stderr, "answered by id ") >= compared,
        "{}",
        r.stderr
    );
    let egress = r.card["egress"].to_string();
    assert!(
        egress.contains("virtualized") && egress.contains(&format!(":{PAY_PORT}")),
        "{egress}"
    );
    counts_agree(&r);
}

#[test]
fn candidate_charging_another_amount_is_no_go_on_side_effects() {
    let r = run("fy", "demo", |_| true);
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
            !(mirror_examples::api::product_price_cents(sku) * qty).is_multiple_of(10)
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
    counts_agree(&r);
    // One kind of diff per exchange here, so the card's upper bound is exact.
    assert_eq!(r.metrics["mismatched"], mismatched);
}

/// The stored `POST /orders` exchanges whose user's `u % 4` is in `rests`, with
/// (`id=1`) or without (`id=0`) a propagated id: how many compared equal, how many got a
/// different response (the virtual dependency answered wrong or not at all), and how many
/// differed only in their side effects (a call tied to another inbound exchange).
#[derive(Debug, Default)]
struct Outcomes {
    equal: u64,
    response: u64,
    side_effects_only: u64,
    /// Targets and diffs of the first few that differed.
    examples: Vec<String>,
}

fn outcomes(db: &std::path::Path, with_id: bool, rests: &[u64]) -> Outcomes {
    let rows = sqlite_rows(db, "SELECT target, outcome, diffs FROM exchanges").expect("rows");
    let mut out = Outcomes::default();
    for r in rows {
        let (Some(t), Some(o)) = (r[0].as_str(), r[1].as_str()) else {
            continue;
        };
        let Some(q) = t.strip_prefix("/orders?") else {
            continue;
        };
        let param = |k: &str| {
            q.split('&')
                .find_map(|kv| kv.strip_prefix(k))
                .and_then(|v| v.parse::<u64>().ok())
        };
        if param("id=") != Some(u64::from(with_id))
            || !param("u=").is_some_and(|u| rests.contains(&(u % 4)))
        {
            continue;
        }
        let diffs: Vec<Value> = r[2]
            .as_str()
            .and_then(|d| serde_json::from_str(d).ok())
            .unwrap_or_default();
        let response = diffs.iter().any(|d| d["kind"]["kind"] != "side_effect");
        if o != "matched" && out.examples.len() < 3 {
            out.examples.push(format!("{t}: {o} {}", r[2]));
        }
        match (o, response) {
            ("matched", _) => out.equal += 1,
            (_, true) => out.response += 1,
            (_, false) => out.side_effects_only += 1,
        }
    }
    out
}

/// Of the `missing` side-effect diffs of exchanges without an id whose user's `u % 4`
/// is in `rests`: how many carry an amount one of that user's orders has, how many not.
fn missing_calls_whose(db: &std::path::Path, rests: &[u64]) -> (u64, u64) {
    let rows = sqlite_rows(db, "SELECT target, diffs FROM exchanges").expect("rows");
    let (mut own, mut other) = (0, 0);
    for r in rows {
        let Some(q) = r[0]
            .as_str()
            .and_then(|t| t.strip_prefix("/orders?id=0&u="))
        else {
            continue;
        };
        let Ok(u) = q.parse::<u64>() else { continue };
        if !rests.contains(&(u % 4)) {
            continue;
        }
        let amounts: Vec<String> = (0..CLIENTS * PER_CLIENT)
            .filter(|&n| n % 2 == 1 && user(n) == u)
            .map(|n| {
                let (sku, qty) = item(n);
                let c = mirror_examples::api::product_price_cents(sku) * qty;
                format!("{}.{:02}", c / 100, c % 100)
            })
            .collect();
        let diffs: Vec<Value> = r[1]
            .as_str()
            .and_then(|d| serde_json::from_str(d).ok())
            .unwrap_or_default();
        for d in diffs.iter().filter(|d| d["kind"]["what"] == "missing") {
            let shown = d["legacy"].as_str().unwrap_or_default();
            let amount = shown
                .split("\"amount\":")
                .nth(1)
                .and_then(|s| s.split([',', '}']).next())
                .unwrap_or_default();
            let norm = |a: &str| a.parse::<f64>().map(|f| (f * 100.0).round() as i64).ok();
            if amounts.iter().any(|a| norm(a) == norm(amount)) {
                own += 1;
            } else {
                other += 1;
            }
        }
    }
    (own, other)
}

/// The deviations candidate skips some charges and adds others; half the requests carry
/// no id, so their calls are tied by time window and matched by content.
#[test]
fn missing_and_extra_calls_are_counted_and_matching_without_ids_is_measured() {
    let r = run("fz", "deviations", |n| n % 2 == 0);
    assert_eq!(
        r.charges, r.created,
        "payments received only legacy's calls"
    );
    let whats: std::collections::BTreeSet<String> = r.card["side_effects"]
        .as_array()
        .expect("side effects")
        .iter()
        .map(|e| e["what"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(
        whats.contains("missing") && whats.contains("extra"),
        "{whats:?}"
    );
    // With a propagated id: exactly the deviating users differ, never a wrong match.
    let o = outcomes(&r.db, true, &[0, 3]);
    assert!(o.equal > 0, "{o:?}");
    assert_eq!(
        (o.response, o.side_effects_only),
        (0, 0),
        "wrong matches with a propagated id"
    );
    let o = outcomes(&r.db, true, &[1, 2]);
    assert!(
        o.equal == 0 && o.response + o.side_effects_only > 0,
        "{o:?}"
    );
    // Extra calls of requests with an id are answered 502; those without an id may
    // take another exchange's recording (a wrong match, measured below).
    let extra_with_id = (0..CLIENTS * PER_CLIENT)
        .filter(|n| n % 2 == 0 && user(*n) % 4 == 2)
        .count() as u64;
    assert!(figure(&r.stderr, "unmatched 502 ") >= extra_with_id * 9 / 10);
    assert!(figure(&r.stderr, "by time window ") > 0);
    counts_agree(&r);
    // Without an id: measured and reported, not asserted.
    let o = outcomes(&r.db, false, &[0, 3]);
    let all = (o.equal + o.response + o.side_effects_only).max(1) as f64;
    eprintln!(
        "without a propagated id, of {all} exchanges that should compare equal: {:.2} % got a wrong or no answer from the virtual dependency, {:.2} % more differed only in side effects (calls tied to another exchange); ambiguous attributions {}",
        100.0 * o.response as f64 / all,
        100.0 * o.side_effects_only as f64 / all,
        figure(&r.stderr, "ambiguous ")
    );
    eprintln!("first that differed: {:?}", o.examples);
    // Whose call a `missing` one is: the exchange's own (its charge was never asked for
    // by the candidate) or another's (tied to the wrong exchange).
    let (own, other) = missing_calls_whose(&r.db, &[0, 3]);
    eprintln!(
        "without a propagated id, missing calls: {own} of the exchange's own amount, {other} of another's"
    );
    // The users whose charges the candidate skips: their missing calls are still seen.
    let skipped = outcomes(&r.db, false, &[1]);
    eprintln!(
        "without a propagated id, users whose charge the candidate skips: {} equal, {} differed",
        skipped.equal,
        skipped.response + skipped.side_effects_only
    );
}

/// The demo candidate emails a confirmation per new order (legacy sends none): with the
/// relay given as `--dependency smtp://…` and `--virtualize-egress`, the daemon's virtual
/// relay accepts every message, each is an extra side effect of its order (masked), the
/// payments still compare equal, and the real sink receives nothing.
#[test]
fn candidate_mail_is_virtualized_and_reported_as_extra_side_effects() {
    let r = run_on("fm", "demo", |_| true, false, true);
    assert!(
        r.created >= CLIENTS * PER_CLIENT * 9 / 10,
        "{} created",
        r.created
    );
    assert_eq!(r.mails, 0, "the real mail sink received mail\n{}", r.stderr);
    assert_eq!(
        r.charges, r.created,
        "payments received only legacy's calls"
    );
    let orders = route(&r.card, "POST /orders");
    let compared = orders["compared"].as_u64().expect("compared");
    assert!(compared >= r.created * 9 / 10, "{orders}");
    let accepted = figure(&r.stderr, "candidate mail accepted by the virtual relay ");
    let unattributed = figure(&r.stderr, "not tied to an exchange ");
    assert!(accepted >= compared, "{}", r.stderr);
    assert_eq!(unattributed, 0, "every message carried its order's id");
    let counts = &r.card["side_effect_counts"];
    assert_eq!(
        (
            counts["candidate_mail"].as_u64(),
            counts["candidate_mail_unattributed"].as_u64()
        ),
        (Some(accepted), Some(0)),
        "the stored counts agree with the run's: {counts}"
    );
    let card = r.card.to_string();
    assert!(card.contains("SMTP MAIL TO 1 recipient"), "{card}");
    assert!(card.contains("extra"), "{card}");
    // Recipients are masked everywhere, their domains too (the demo users are
    // first.last@example.com).
    assert!(!card.contains("example.com"), "{card}");
    assert_eq!(
        r.code,
        Some(1),
        "extra emails are a side-effect mismatch: NO-GO"
    );
}
