//! Issue 13: PII that real applications echo back. Legacy and candidate are the example
//! `reflect` service (httpbin-like: echoes headers, query, cookies and body, as JSON,
//! gzip, br, URL-encoded, HTML and base64 by path). Seeded credentials, cookies, emails,
//! cards, SSNs and phones travel in headers, query, JSON, form and cookies through the
//! real tap; the candidate also sends a credentialed request out, which the egress guard
//! redirects to the sink. Then: zero occurrences of any seeded value — raw,
//! percent-encoded, `+`-encoded, JSON-escaped, base64, HTML-escaped — in the store (with
//! its WAL), the debug-level logs, /metrics, /api/snapshot, the dashboard, the report in
//! every format, `exchanges` output and the sink's records; and no diff between legacy
//! and the identical candidate on any echoed route.
use std::{path::Path, process::Stdio, time::Duration};

use base64::Engine as _;
use mirror_e2e::*;

const EMAILS: [&str; 3] = [
    "ana.echo@example.com",
    "bob.echo@corp.example",
    "dan.query@example.org",
];
/// Luhn-valid.
const CARDS: [&str; 2] = ["4111111111111111", "5500005555555559"];
const SSNS: [&str; 2] = ["536-22-8726", "219-09-9999"];
const PHONES: [&str; 2] = ["+1-202-555-0147", "(415) 555-0134"];
/// Secrets only recognisable by their name.
const SECRETS: [&str; 6] = [
    "sk_live_ECHOtok3n0123456789",
    "ECHOsess1on9876543210",
    "ECHOap1key5f4e3d2c1b",
    "ECHOpassw0rd!Sup3r",
    "ECHOaccess-9f8e7d6c5b",
    "ECHOegress-b3arer-42",
];
/// Basic credentials `user:password`, sent base64-encoded.
const BASIC: &str = "echo-user:ECHObas1c-pw";

fn seeded() -> Vec<&'static str> {
    let mut all: Vec<&str> = Vec::new();
    all.extend(EMAILS);
    all.extend(CARDS);
    all.extend(SSNS);
    all.extend(PHONES);
    all.extend(SECRETS);
    all.push(BASIC);
    all.push("ECHObas1c-pw");
    all
}

fn pct(s: &str, keep: &[u8]) -> String {
    s.bytes()
        .map(|c| {
            if c.is_ascii_alphanumeric() || keep.contains(&c) {
                char::from(c).to_string()
            } else {
                format!("%{c:02X}")
            }
        })
        .collect()
}

/// Every form a seeded value may take in an output.
fn forms(v: &str) -> Vec<(String, String)> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut f = vec![
        ("raw", v.to_string()),
        ("percent", pct(v, b"-._~")),
        ("plus", pct(v, b"-._~ ").replace(' ', "+")),
        (
            "json",
            serde_json::to_string(v)
                .expect("a string serializes")
                .trim_matches('"')
                .to_string(),
        ),
        (
            "json-slash",
            serde_json::to_string(v)
                .expect("a string serializes")
                .trim_matches('"')
                .replace('/', "\\/"),
        ),
        (
            "html",
            v.replace('&', "&amp;")
                .replace('\'', "&#39;")
                .replace('"', "&quot;"),
        ),
        ("base64", b64.encode(v).trim_end_matches('=').to_string()),
        ("base64url", url.encode(v)),
    ];
    f.sort_by(|a, b| a.1.cmp(&b.1));
    f.dedup_by(|a, b| a.1 == b.1);
    f.into_iter().map(|(k, s)| (k.to_string(), s)).collect()
}

/// `(value, form)` of every seeded value found in `hay`.
fn leaks(hay: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    for v in seeded() {
        for (kind, f) in forms(v) {
            if hay
                .windows(f.len())
                .any(|w| w.eq_ignore_ascii_case(f.as_bytes()))
            {
                out.push(format!("{v} ({kind})"));
            }
        }
    }
    out
}

/// The echo routes: plain JSON, gzip, br, URL-encoded, HTML, base64.
const ROUTES: [&str; 6] = ["anything", "gzip", "br", "form", "html", "b64"];
/// Requests per round: each route gets a GET with the query, a JSON and a form POST.
const PER_ROUND: u64 = ROUTES.len() as u64 * 3;

fn send_round(ns: &Netns, base: &str, round: u32) {
    let basic = base64::engine::general_purpose::STANDARD.encode(BASIC);
    let auth = if round.is_multiple_of(2) {
        format!("Authorization: Bearer {}", SECRETS[0])
    } else {
        format!("Authorization: Basic {basic}")
    };
    let cookie = format!("Cookie: theme=dark; session={}", SECRETS[1]);
    let key = format!("X-Api-Key: {}", SECRETS[2]);
    let h = ["-H", &auth, "-H", &cookie, "-H", &key];
    let query = format!(
        "round={round}&email={}&phone={}&card={}&ssn={}&access_token={}&password={}",
        pct(EMAILS[2], b"-._~"),
        pct(PHONES[0], b"-._~"),
        CARDS[0],
        SSNS[1],
        SECRETS[4],
        pct(SECRETS[3], b"-._~"),
    );
    let json = format!(
        r#"{{"round":{round},"email":"{}","card":"{}","ssn":"{}","phone":"{}","password":"{}"}}"#,
        EMAILS[0], CARDS[1], SSNS[0], PHONES[1], SECRETS[3]
    );
    let form = format!(
        "round={round}&email={}&phone={}&passwd={}",
        pct(EMAILS[1], b"-._~"),
        pct(PHONES[1], b"-._~ ").replace(' ', "+"),
        pct(SECRETS[3], b"-._~"),
    );
    for route in ROUTES {
        let url = format!("{base}/{route}/r{round}?{query}");
        curl_ok(ns, &[&h[..], &[url.as_str()]].concat());
        let url = format!("{base}/{route}/json");
        let body = [
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &json,
            &url,
        ];
        curl_ok(ns, &[&h[..], &body[..]].concat());
        let url = format!("{base}/{route}/form");
        let body = [
            "-H",
            "Content-Type: application/x-www-form-urlencoded",
            "--data-binary",
            &form,
            &url,
        ];
        curl_ok(ns, &[&h[..], &body[..]].concat());
    }
}

/// The candidate: the same reflect service, plus one credentialed request out (to an
/// address the guard does not allow: it lands in the sink) a second after start.
fn candidate_cmd(dir: &Path, topo: &Topology) -> String {
    let script = dir.join("candidate.sh");
    let body = format!(r#"{{"password":"{}","email":"{}"}}"#, SECRETS[3], EMAILS[0]);
    std::fs::write(
        &script,
        format!(
            "( sleep 1; curl -sS --max-time 5 -o /dev/null -H 'Authorization: Bearer {tok}' \
             -H 'Cookie: session={sess}' -H 'Content-Type: application/json' \
             --data-binary '{body}' 'http://203.0.113.7:8443/charge?access_token={acc}' ) &\n\
             exec {bin} reflect --listen {addr}\n",
            tok = SECRETS[5],
            sess = SECRETS[1],
            acc = SECRETS[4],
            bin = examples_bin().display(),
            addr = topo.candidate_addr(),
        ),
    )
    .expect("writing the candidate script");
    format!("exec sh {}", script.display())
}

#[test]
fn echoed_pii_is_masked_everywhere_and_echoes_compare_equal() {
    require_root();
    const ROUNDS: u32 = 4;
    let topo = Topology::new("q").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut legacy = topo.legacy().cmd(examples_bin());
    legacy
        .args(["reflect", "--listen", &topo.legacy_addr()])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _legacy = Proc::spawn("reflect", &mut legacy).unwrap();
    wait_for_port(
        topo.legacy(),
        &topo.link.a_ip,
        8080,
        Duration::from_secs(10),
    )
    .unwrap();

    // A raw recording next to the run: the positive control and the input of `exchanges`.
    let (pcap, mut record) = topo.start_record(d, "raw.pcapng").unwrap();

    let mut args = vec!["--log-level".to_string(), "debug".to_string()];
    args.extend(topo.run_args(d, &candidate_cmd(d, &topo)));
    args.extend([
        "--egress-sink".to_string(),
        format!("{}:4999", topo.leg_cand.a_ip),
    ]);
    let mut daemon =
        Daemon::start_env(topo.legacy(), d, "run", &args, &[("RUST_LOG", "debug")]).unwrap();
    let base = format!("http://{}", topo.legacy_addr());
    for round in 0..ROUNDS {
        send_round(topo.client(), &base, round);
    }
    let sent = u64::from(ROUNDS) * PER_ROUND;
    daemon
        .wait_settled(topo.legacy(), sent, Duration::from_secs(90))
        .unwrap();
    // The sink's capture is paired with the guard's report on the daemon's tick.
    daemon
        .wait_for_stderr("bytes to the sink", Duration::from_secs(30))
        .unwrap();
    let mut live = Vec::new();
    for path in ["/metrics", "/api/snapshot", "/"] {
        live.push((path, daemon.get(topo.legacy(), path).unwrap()));
    }
    let exit = daemon.stop(Duration::from_secs(60)).unwrap();
    let rec_out = record.stop(Duration::from_secs(30)).unwrap();
    assert!(rec_out.status.success());

    // Positive control: the wire carried the values.
    let raw = std::fs::read(&pcap).unwrap();
    let on_wire = leaks(&raw);
    for v in [
        EMAILS[0], CARDS[0], SECRETS[0], SECRETS[1], SECRETS[2], SSNS[0],
    ] {
        assert!(
            on_wire.iter().any(|l| l.starts_with(v)),
            "{v} not on the wire: the test sends it wrong ({on_wire:?})"
        );
    }

    // Every echoed route compared equal: no diff from masking.
    let db = d.join("m.db");
    let (_, card) = report_json(&db, &[]).unwrap();
    let acc = &card["accounting"];
    assert_eq!(acc["seen"].as_u64(), Some(sent), "{acc}");
    let diffs = sqlite_rows(
        &db,
        "SELECT route, kind_key, legacy, candidate FROM diff_kinds",
    )
    .unwrap_or_default();
    assert_eq!(acc["matched"].as_u64(), Some(sent), "{acc}\n{diffs:#?}");

    // The sink got the candidate's request, and stored it masked.
    let egress = sqlite_rows(&db, "SELECT first_bytes FROM egress").unwrap();
    let charge = egress
        .iter()
        .filter_map(|r| r[0].as_str())
        .find(|b| b.starts_with("POST /charge"))
        .unwrap_or_else(|| {
            panic!("the candidate's request is not in the sink's records: {egress:#?}")
        })
        .to_string();
    for masked in [
        "Bearer tok_",
        "session=tok_",
        "access_token=tok_",
        "masked.invalid",
    ] {
        assert!(charge.contains(masked), "{masked} not in {charge}");
    }

    let mut outputs: Vec<(String, Vec<u8>)> = Vec::new();
    for entry in std::fs::read_dir(d).unwrap() {
        let p = entry.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("m.db") {
            outputs.push((name, std::fs::read(&p).unwrap()));
        }
    }
    assert!(outputs.iter().any(|(n, _)| n == "m.db"));
    outputs.push(("run stdout".into(), exit.stdout.clone().into_bytes()));
    outputs.push(("run stderr".into(), exit.stderr.clone().into_bytes()));
    outputs.push(("sink record".into(), charge.clone().into_bytes()));
    for (path, text) in &live {
        outputs.push((path.to_string(), text.clone().into_bytes()));
    }
    for format in ["table", "json", "markdown"] {
        let (_, text) = report(&db, &["--format", format]).unwrap();
        outputs.push((format!("report {format}"), text.into_bytes()));
    }
    let key = d.join("mask.key");
    for extra in [
        &[][..],
        &["--bodies"][..],
        &["--masked"][..],
        &["--format", "table"][..],
    ] {
        let out = std::process::Command::new(daemon_bin())
            .args(["exchanges", "--mask-key-file"])
            .arg(&key)
            .arg("--pcap")
            .arg(&pcap)
            .args(["--port", "8080"])
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(occurrences(&out.stdout, "\n") >= sent as usize, "{extra:?}");
        outputs.push((format!("exchanges {extra:?}"), out.stdout));
    }
    let mut found = Vec::new();
    for (name, bytes) in &outputs {
        eprintln!("{name}: {} bytes", bytes.len());
        let l = leaks(bytes);
        if !l.is_empty() {
            found.push(format!("{name}: {l:?}"));
        }
    }
    assert!(found.is_empty(), "PII in clear:\n{}", found.join("\n"));

    // …and `--raw` is the control that the search sees the values.
    let out = std::process::Command::new(daemon_bin())
        .args(["exchanges", "--raw", "--bodies", "--pcap"])
        .arg(&pcap)
        .args(["--port", "8080"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("warning"));
    assert!(leaks(&out.stdout).len() >= 10, "{:?}", leaks(&out.stdout));

    // The tokens are there, so the search looked at the right things.
    let store = &outputs.iter().find(|(n, _)| n == "m.db").unwrap().1;
    assert!(
        occurrences(store, "tok_") > 0
            || occurrences(&exit.stderr.clone().into_bytes(), "tok_") > 0
    );
    let export = &outputs
        .iter()
        .find(|(n, _)| n.contains("--bodies"))
        .unwrap()
        .1;
    for token in ["Bearer tok_", "session=tok_", "masked.invalid"] {
        assert!(
            occurrences(export, token) > 0,
            "{token} not in the masked export"
        );
    }
    assert!(
        occurrences(exit.stderr.as_bytes(), "DEBUG") > 0,
        "debug logging was not on"
    );
}
