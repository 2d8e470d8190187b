//! Issue 6: compare and verdict, live. The example candidate's `deviations` profile is
//! driven with real traffic; the expected diffs and their rates are computed from the
//! requests that were actually replayed (the store's rows: id and page of each target),
//! then the same store is judged with three criteria sets.
use std::collections::{BTreeMap, BTreeSet};

use mirror_e2e::*;
use serde_json::Value;

const USERS: &str = "GET /users/{id}";
const ORDERS: &str = "GET /users/{id}/orders";
const PRODUCTS: &str = "GET /products";
const SLOW: &str = "GET /slow/{id}";
const NAME: &str = "field($.name,value)";
const UPDATED_AT: &str = "field($.updated_at,value)";
const PRICE: &str = "field($.items[*].price,value)";

/// The number in a target: `/users/12/orders` → 12, `/products?page=7` → 7.
/// `requests` over `connections` to legacy, every one answered, and every exchange ended
/// in an outcome within `settle_s` seconds; what the load tool saw.
fn load_and_settle(
    topo: &Topology,
    daemon: &Daemon,
    requests: u64,
    connections: u64,
    settle_s: u64,
) -> LoadSummary {
    let load = run_load(topo.client(), &topo.legacy_addr(), requests, connections)
        .expect("the load tool runs");
    assert_eq!((load.failed, load.not_sent), (0, 0), "{load:?}");
    daemon
        .wait_settled(
            topo.legacy(),
            load.answered(),
            std::time::Duration::from_secs(settle_s),
        )
        .expect("every exchange ends in an outcome");
    load
}

fn number(target: &str) -> u64 {
    let digits: String = target
        .chars()
        .skip_while(|c| !c.is_ascii_digit())
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().unwrap_or(0)
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[test]
fn deviations_are_named_with_their_rates_and_the_verdict_follows_the_criteria() {
    require_root();
    let topo = Topology::new("v").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("m.db");
    let _legacy = start_legacy(topo.legacy(), &topo.link.a_ip, 8080).unwrap();
    let mut args = topo.run_args(dir.path(), &topo.example_candidate_cmd("deviations"));
    args.extend(
        [
            "--tolerance",
            "json:$.items[*].price=0.01",
            "--ignore",
            "json:$..generated_at",
            "--max-mismatch",
            "0.5%",
            "--max-p95-regression",
            "10%",
            "--min-exchanges",
            "100",
        ]
        .map(String::from),
    );
    let daemon = Daemon::start(topo.legacy(), dir.path(), "run", &args).unwrap();
    let load = load_and_settle(&topo, &daemon, 3000, 4, 60);
    let exit = daemon.stop(std::time::Duration::from_secs(60)).unwrap();
    assert_eq!(
        exit.code,
        Some(1),
        "strict criteria on the run: NO-GO\n{}",
        exit.stdout
    );
    assert!(exit.stdout.contains("NO-GO"), "{}", exit.stdout);
    // The run capped the candidate at `--candidate-cpu`'s default (one CPU) and judges
    // p95: on a host with more CPUs, it warned at start-up and its card says so.
    let host_cpus = std::fs::read_to_string("/proc/cpuinfo")
        .expect("cpuinfo")
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    if host_cpus > 1 {
        assert!(
            exit.stderr
                .contains("p95 criterion: the candidate's CPU was capped at 100%"),
            "{}",
            exit.stderr
        );
        assert!(
            exit.stdout
                .contains("CAVEAT: the candidate's CPU was capped at 100% of one CPU"),
            "{}",
            exit.stdout
        );
    }

    // What was replayed, per route, and which exchanges carry which diff key.
    let rows = sqlite_rows(&db, "SELECT id, route, target, outcome FROM exchanges").unwrap();
    let kinds = sqlite_rows(
        &db,
        "SELECT exchange_id, route, kind_key FROM diff_kinds WHERE secondary = 0",
    )
    .unwrap();
    let s = |v: &Value| v.as_str().unwrap().to_string();
    let mut by_route: BTreeMap<String, Vec<(String, u64)>> = BTreeMap::new();
    for r in &rows {
        by_route
            .entry(s(&r[1]))
            .or_default()
            .push((s(&r[0]), number(&s(&r[2]))));
    }
    let mut with_key: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for k in &kinds {
        with_key
            .entry((s(&k[1]), s(&k[2])))
            .or_default()
            .insert(s(&k[0]));
    }
    let ids_where = |route: &str, pred: &dyn Fn(u64) -> bool| -> BTreeSet<String> {
        by_route[route]
            .iter()
            .filter(|(_, n)| pred(*n))
            .map(|(id, _)| id.clone())
            .collect()
    };
    let exchanges_with = |route: &str, key: &str| -> BTreeSet<String> {
        with_key
            .get(&(route.to_string(), key.to_string()))
            .cloned()
            .unwrap_or_default()
    };
    for ((route, key), ids) in &with_key {
        eprintln!("stored diff {route} {key}: {} exchanges", ids.len());
    }
    let name_expected = ids_where(USERS, &|id| id % 33 == 0);
    let price_expected = ids_where(PRODUCTS, &|page| page % 10 == 0);
    let status_expected = ids_where(ORDERS, &|id| id % 10 == 0);
    // Exactly the exchanges the profile deviates on, no more, no fewer.
    assert!(!name_expected.is_empty() && !price_expected.is_empty() && !status_expected.is_empty());
    assert_eq!(exchanges_with(USERS, NAME), name_expected);
    assert_eq!(exchanges_with(PRODUCTS, PRICE), price_expected);
    assert_eq!(exchanges_with(ORDERS, "status"), status_expected);
    assert_eq!(
        exchanges_with(USERS, UPDATED_AT).len(),
        by_route[USERS].len(),
        "updated_at differs on every user"
    );

    // The report: exactly these diff keys, with these rates and classes.
    let (_, card) = report_json(&db, &[]).unwrap();
    let acc = &card["accounting"];
    eprintln!("load {load:?}\naccounting {acc}");
    assert_eq!(acc["identity_holds"], true, "{acc}");
    assert_eq!(acc["seen"].as_u64(), Some(load.answered()), "{acc}");
    assert_eq!(acc["in_flight"].as_u64(), Some(0), "{acc}");
    let routes: BTreeMap<String, &Value> = card["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (s(&r["route"]), r))
        .collect();
    let compared = |route: &str| routes[route]["compared"].as_u64().unwrap();
    let diffs: BTreeMap<(String, String), &Value> = card["diffs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| ((s(&d["route"]), s(&d["key"])), d))
        .collect();
    for (route, key, expected) in [
        (USERS, NAME, &name_expected),
        (PRODUCTS, PRICE, &price_expected),
        (ORDERS, "status", &status_expected),
    ] {
        let d = diffs
            .get(&(route.to_string(), key.to_string()))
            .unwrap_or_else(|| panic!("{route} {key} not reported: {diffs:#?}"));
        let rate = expected.len() as f64 / compared(route) as f64;
        eprintln!(
            "{route} {key}: {} of {} = {rate:.4} (reported {} {})",
            expected.len(),
            compared(route),
            d["rate"],
            d["class"]
        );
        assert_eq!(d["count"].as_u64(), Some(expected.len() as u64), "{d}");
        assert!((f(&d["rate"]) - rate).abs() < 1e-9, "{d} vs {rate}");
        assert_eq!(d["class"], "signal", "{d}");
        // Each kept example is one of the exchanges that deviates.
        for ex in d["examples"].as_array().unwrap() {
            assert!(expected.contains(&s(&ex["id"])), "{ex}");
        }
    }
    // The rates match the profile's rules over what was sent: ids/pages are spread evenly.
    let r = |key: (&str, &str)| f(&diffs[&(key.0.to_string(), key.1.to_string())]["rate"]);
    assert!((0.0..0.08).contains(&r((USERS, NAME))), "~3 %");
    assert!((0.04..0.16).contains(&r((PRODUCTS, PRICE))), "~10 %");
    assert!((0.04..0.16).contains(&r((ORDERS, "status"))), "~10 %");
    assert_eq!(
        routes[ORDERS]["status_mismatches"].as_u64(),
        Some(status_expected.len() as u64)
    );
    // updated_at: shown as (likely) noise, not hidden and not a signal.
    let upd = diffs
        .get(&(USERS.to_string(), UPDATED_AT.to_string()))
        .expect("updated_at must be shown");
    assert!(
        ["likely_noise", "noise"].contains(&upd["class"].as_str().unwrap()),
        "{upd}"
    );
    assert_eq!(upd["count"].as_u64(), Some(compared(USERS)), "{upd}");
    // Nothing else: key order, whitespace, Server header and the 0.005 price are no diff;
    // the 500s may add body keys on the orders route only.
    for (route, key) in diffs.keys() {
        let known = matches!(
            (route.as_str(), key.as_str()),
            (USERS, NAME) | (USERS, UPDATED_AT) | (PRODUCTS, PRICE)
        ) || route == ORDERS;
        assert!(
            known,
            "unexpected diff {route} {key}: {}",
            diffs[&(route.clone(), key.clone())]
        );
    }
    for (_, key) in diffs.keys().filter(|(r, _)| r == ORDERS) {
        assert!(
            exchanges_with(ORDERS, key).is_subset(&status_expected),
            "{key} on an orders exchange that did not fail"
        );
    }
    for route in ["POST /orders", "GET /health", SLOW] {
        let r = routes[route];
        assert_eq!(r["differed"].as_u64(), Some(0), "{route}: {r}");
        assert!(r["compared"].as_u64().unwrap() > 0, "{route}: {r}");
    }
    // +30 ms on the slow route shows as a p95 ratio above 1 there.
    let slow_ratio = f(&routes[SLOW]["latency"]["p95_ttlb_ratio"]);
    eprintln!("{SLOW} p95 ttlb ratio {slow_ratio:.2}");
    assert!(slow_ratio > 1.0, "{}", routes[SLOW]);

    // Three criteria sets on the same store.
    let loose = [
        "--max-mismatch",
        "50%",
        "--max-p95-regression",
        "1000%",
        "--min-exchanges",
        "100",
    ];
    let (code, card) = report_json(&db, &loose).unwrap();
    assert_eq!(
        (code, card["exit_code"].as_i64()),
        (0, Some(0)),
        "{}",
        card["verdict"]
    );
    assert_eq!(card["verdict"]["verdict"], "go");
    let (code, table) = report(&db, &loose).unwrap();
    assert_eq!(code, 0);
    assert!(table.contains("VERDICT: GO"), "{table}");

    let strict = [
        "--max-mismatch",
        "1%",
        "--max-p95-regression",
        "10%",
        "--min-exchanges",
        "100",
    ];
    let (code, card) = report_json(&db, &strict).unwrap();
    assert_eq!((code, card["exit_code"].as_i64()), (1, Some(1)));
    assert_eq!(card["verdict"]["verdict"], "no_go", "{}", card["verdict"]);
    let failing = card["verdict"]["failing"].to_string();
    assert!(
        failing.contains("max_mismatch") && failing.contains("max_p95_regression"),
        "{failing}"
    );
    // Judged with the default floor (1 ms), which +30 ms clears.
    assert_eq!(card["latency"]["min_latency_delta_ns"], 1_000_000);
    // `report` reads the cap back from the store.
    if host_cpus > 1 {
        assert_eq!(card["latency"]["candidate_cpu_cap_percent"], 100);
        assert!(
            card["latency"]["caveats"]
                .to_string()
                .contains("capped at 100% of one CPU"),
            "{}",
            card["latency"]
        );
    }
    let (code, table) = report(&db, &strict).unwrap();
    assert_eq!(code, 1);
    let banner = table
        .lines()
        .find(|l| l.contains("VERDICT"))
        .unwrap_or_default();
    assert!(
        banner.contains("NO-GO")
            && banner.contains("max_mismatch")
            && banner.contains("max_p95_regression"),
        "{banner}"
    );

    let too_few = [
        "--max-mismatch",
        "50%",
        "--max-p95-regression",
        "1000%",
        "--min-exchanges",
        "1000000",
    ];
    let (code, card) = report_json(&db, &too_few).unwrap();
    assert_eq!((code, card["exit_code"].as_i64()), (3, Some(3)));
    assert_eq!(card["verdict"]["verdict"], "insufficient_evidence");
    assert!(
        card["verdict"]["reasons"].to_string().contains("exchanges"),
        "{}",
        card["verdict"]
    );
    let (code, md) = report(
        &db,
        &[
            "--format",
            "markdown",
            "--min-exchanges",
            "1000000",
            "--max-mismatch",
            "50%",
        ],
    )
    .unwrap();
    assert_eq!(code, 3);
    assert!(md.contains("INSUFFICIENT EVIDENCE"), "{md}");
}

/// A cgroup of the cpu controller allowing `percent` of one CPU, removed when dropped.
struct CpuQuota(std::path::PathBuf);

impl CpuQuota {
    fn create(name: &str, percent: u64) -> CpuQuota {
        let v1 = std::path::Path::new("/sys/fs/cgroup/cpu");
        let quota = percent * 1_000;
        let dir = if v1.join("cpu.cfs_period_us").exists() {
            let dir = v1.join(name);
            std::fs::create_dir_all(&dir).expect("a v1 cpu cgroup");
            std::fs::write(dir.join("cpu.cfs_period_us"), "100000").expect("period");
            std::fs::write(dir.join("cpu.cfs_quota_us"), quota.to_string()).expect("quota");
            dir
        } else {
            let root = cgroup2_mount();
            let _ = std::fs::write(root.join("cgroup.subtree_control"), "+cpu");
            let dir = root.join(name);
            std::fs::create_dir_all(&dir).expect("a cgroup2 cgroup");
            std::fs::write(dir.join("cpu.max"), format!("{quota} 100000")).expect("cpu.max");
            dir
        };
        CpuQuota(dir)
    }

    fn add(&self, pid: u32) {
        std::fs::write(self.procs(), pid.to_string()).expect("moved");
    }

    fn procs(&self) -> std::path::PathBuf {
        self.0.join("cgroup.procs")
    }

    /// (periods, throttled periods) of the cgroup's `cpu.stat` since it was created.
    fn stat(&self) -> (u64, u64) {
        let text = std::fs::read_to_string(self.0.join("cpu.stat")).expect("cpu.stat");
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
                .unwrap_or_else(|| panic!("no {name} in {text}"))
        };
        (field("nr_periods "), field("nr_throttled "))
    }
}

/// The daemon's `mirror_daemon_cpu_*_total` series on `/metrics` (name → value).
fn daemon_cpu_metrics(metrics: &str) -> BTreeMap<String, f64> {
    metrics
        .lines()
        .filter(|l| l.starts_with("mirror_daemon_cpu_"))
        .filter_map(|l| {
            let (name, v) = l.split_once(' ')?;
            Some((name.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

/// The live snapshot once `ready` holds for it (bounded: the snapshot is redrawn every
/// tick, and the quota read at each one).
fn snapshot_when(daemon: &Daemon, ns: &Netns, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let snap: Value = serde_json::from_str(&daemon.get(ns, "/api/snapshot").expect("snapshot"))
            .expect("snapshot json");
        if ready(&snap) {
            return snap;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the snapshot never showed {what}: {}",
            snap["daemon_cpu"]
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

const QUOTA_CAVEAT: &str = "the daemon's CPU quota stopped it in";

impl Drop for CpuQuota {
    fn drop(&mut self) {
        for _ in 0..100 {
            if std::fs::remove_dir(&self.0).is_ok() || !self.0.exists() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

/// The daemon's own CPU quota, when it binds, is a caveat on the latency verdict: moved
/// into a cgroup allowing it 10 % of a CPU, the daemon replays a load it cannot keep up
/// with at that share. While the run goes, `/metrics` counts the throttled periods, the
/// dashboard's snapshot carries the caveat, the log warns once and the progress line
/// says it; at the stop and from the store, the card says how often the quota stopped it.
#[test]
fn a_binding_daemon_quota_is_a_caveat_on_the_latency_verdict() {
    require_root();
    let topo = Topology::new("vq").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let _legacy = start_legacy(topo.legacy(), &topo.link.a_ip, 8080).unwrap();
    let mut args = topo.run_args(dir.path(), &topo.example_candidate_cmd("deviations"));
    args.extend(["--max-p95-regression", "25%"].map(String::from));
    let mut daemon = Daemon::start(topo.legacy(), dir.path(), "run", &args).unwrap();
    let quota = CpuQuota::create("mirror-e2e-vq-daemon", 10);
    quota.add(daemon.pid());
    load_and_settle(&topo, &daemon, 1500, 4, 120);
    // Live: the dashboard's snapshot and /metrics, the same figures.
    let snap = snapshot_when(&daemon, topo.legacy(), "the quota binding", |s| {
        s["daemon_cpu"]["binds"] == true
    });
    assert_eq!(snap["daemon_cpu"]["quota"], "10 % of one CPU per 100 ms");
    let caveats = snap["verdict"]["caveats"].to_string();
    assert!(caveats.contains(QUOTA_CAVEAT), "{caveats}");
    let live = daemon_cpu_metrics(&daemon.get(topo.legacy(), "/metrics").unwrap());
    let throttled = live["mirror_daemon_cpu_throttled_periods_total"];
    let periods = live["mirror_daemon_cpu_periods_total"];
    assert!(
        throttled * 20.0 >= periods && periods > 0.0,
        "{live:?}, the cgroup: {:?}",
        quota.stat()
    );
    assert!(
        live["mirror_daemon_cpu_throttled_seconds_total"] > 0.0,
        "{live:?}"
    );
    eprintln!("live, at 10 %: {live:?}; the cgroup: {:?}", quota.stat());
    // The progress line says it too (printed every 5 s when stderr is not a terminal).
    let log = daemon
        .wait_for_stderr(
            &format!("; CAVEAT: {QUOTA_CAVEAT}"),
            std::time::Duration::from_secs(30),
        )
        .unwrap();
    let warnings = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains(QUOTA_CAVEAT))
        .count();
    assert_eq!(warnings, 1, "one warning, not one per tick: {log}");
    let exit = daemon.stop(std::time::Duration::from_secs(120)).unwrap();
    let said = format!("CAVEAT: {QUOTA_CAVEAT}");
    assert!(exit.stdout.contains(&said), "{}", exit.stdout);
    // From the store, judged again with the same p95 criterion.
    let (_, card) =
        report_json(&dir.path().join("m.db"), &["--max-p95-regression", "25%"]).unwrap();
    let caveats = card["latency"]["caveats"].to_string();
    assert!(caveats.contains(QUOTA_CAVEAT), "{caveats}");
    drop(quota);
}

/// The quota's figures count from the moment the pipeline is up, not from the process's
/// start: in a cgroup allowing it 30 % of a CPU from its first instruction, the daemon's
/// start-up (the tap's eBPF load and verify) is stopped in many periods, which counted
/// from the start would be a caveat; a quiet run after it gets none, live or at the stop,
/// over twice the periods the rule needs (40), while `/metrics` and the snapshot show the
/// quota and its periods. (At the unit's 50 %, start-up alone was stopped in 1–4 of
/// about 20 periods: too few for this test to prove anything.)
#[test]
fn start_up_under_the_quota_is_no_caveat_on_a_quiet_run() {
    require_root();
    let topo = Topology::new("vs").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let _legacy = start_legacy(topo.legacy(), &topo.link.a_ip, 8080).unwrap();
    let mut args = topo.run_args(dir.path(), &topo.example_candidate_cmd("parity"));
    args.extend(["--max-p95-regression", "25%"].map(String::from));
    let quota = CpuQuota::create("mirror-e2e-vs-daemon", 30);
    let daemon =
        Daemon::start_in_cgroup(topo.legacy(), dir.path(), "run", &args, &quota.procs()).unwrap();
    load_and_settle(&topo, &daemon, 5, 1, 60);
    let snap = snapshot_when(&daemon, topo.legacy(), "40 periods counted", |s| {
        s["daemon_cpu"]["periods"].as_u64().unwrap_or(0) >= 40
    });
    assert_eq!(snap["daemon_cpu"]["quota"], "30 % of one CPU per 100 ms");
    assert_eq!(snap["daemon_cpu"]["binds"], false, "{}", snap["daemon_cpu"]);
    let caveats = snap["verdict"]["caveats"].to_string();
    assert!(!caveats.contains(QUOTA_CAVEAT), "{caveats}");
    let live = daemon_cpu_metrics(&daemon.get(topo.legacy(), "/metrics").unwrap());
    assert!(live["mirror_daemon_cpu_periods_total"] > 0.0, "{live:?}");
    // `status` finds the process holding the tap and shows its quota.
    let status = attached_programs(topo.legacy(), &topo.link.a_if).unwrap();
    let held = format!(
        "held by pid {} (mirror-daemon): CPU quota 30 % of one CPU per 100 ms",
        daemon.pid()
    );
    assert!(status.contains(&held), "{status}");
    let exit = daemon.stop(std::time::Duration::from_secs(60)).unwrap();
    assert!(
        exit.stderr
            .contains("daemon CPU quota 30 % of one CPU per 100 ms"),
        "{}",
        exit.stderr
    );
    assert!(!exit.stdout.contains(QUOTA_CAVEAT), "{}", exit.stdout);
    // What the cgroup counted from the first instruction would have been a caveat: the
    // run left start-up out, it did not just get lucky.
    let (periods, throttled) = quota.stat();
    assert!(
        throttled * 100 >= 5 * periods,
        "start-up was stopped in only {throttled} of {periods} periods: this test proves nothing"
    );
    let rows = sqlite_rows(
        &dir.path().join("m.db"),
        "SELECT json_extract(kernel, '$.daemon_quota.throttled_periods'), \
         json_extract(kernel, '$.daemon_quota.periods') FROM ledgers",
    )
    .unwrap();
    let stored = |i: usize| rows[0][i].as_u64().expect("daemon_quota stored");
    eprintln!(
        "the cgroup from the first instruction: {throttled} of {periods} periods stopped; \
         the run's (from the tap attached): {} of {}",
        stored(0),
        stored(1)
    );
    assert!(
        stored(0) < throttled && stored(1) < periods,
        "stored {:?}, the cgroup's {throttled} of {periods}",
        rows[0]
    );
    drop(quota);
}
