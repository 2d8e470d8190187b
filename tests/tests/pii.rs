//! Issue: PII never leaves the masking stage in clear. Seeded PII values travel in headers
//! (Authorization, Cookie, X-Api-Key), query strings, JSON, form and gzip bodies, in
//! requests and responses, through a whole live run at debug log level; then every output
//! is searched for every seeded value: the store files, the daemon's logs, /metrics and
//! the API, the report in all formats, and `exchanges --masked` of a parallel recording.
use std::{io::Write as _, path::Path, process::Stdio, time::Duration};

use mirror_e2e::*;

/// Seeded values. Cards are Luhn-valid, SSNs have valid areas, phones are E.164 or NANP.
const EMAILS: [&str; 4] = [
    "ana.seeded@example.com",
    "bob.seeded@corp.example",
    "dan.query@example.com",
    "erin.gz@example.net",
];
const CARDS: [&str; 3] = ["4111111111111111", "5500005555555559", "4012888888881881"];
const SSNS: [&str; 2] = ["536-22-8726", "219-09-9999"];
const PHONES: [&str; 2] = ["+44 20 7946 0958", "(415) 555-0134"];
const TOKENS: [&str; 3] = [
    "sk_live_SEEDtok3n0123456789",
    "SEEDsess1on9876543210",
    "SEEDap1key5f4e3d2c1b",
];

fn seeded() -> Vec<&'static str> {
    let mut all: Vec<&str> = Vec::new();
    all.extend(EMAILS);
    all.extend(CARDS);
    all.extend(SSNS);
    all.extend(PHONES);
    all.extend(TOKENS);
    all
}

/// Legacy and candidate: echo the request's query and body (gzip decoded) as JSON, plus a
/// user record with PII; gzip the reply on /gz; set a session cookie. The candidate's
/// `role` and `user.email` differ, so every exchange differs and examples are stored.
/// Each side logs the decoded values it received (to prove what was sent, and that the
/// candidate only ever got masked values).
const SERVER: &str = r#"
import gzip, json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit, parse_qs
role, host, port, log = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def handle_one(self):
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        if self.headers.get("Content-Encoding") == "gzip":
            raw = gzip.decompress(raw)
        text = raw.decode("utf-8", "replace")
        ctype = self.headers.get("Content-Type") or ""
        if "json" in ctype and text:
            body = json.loads(text)
        elif "form" in ctype:
            body = {k: v[0] for k, v in parse_qs(text).items()}
        else:
            body = text
        u = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(u.query).items()}
        with open(log, "a") as f:
            f.write(json.dumps({"path": u.path, "query": query, "body": body,
                "auth": self.headers.get("Authorization"), "cookie": self.headers.get("Cookie"),
                "key": self.headers.get("X-Api-Key")}) + "\n")
        out = {"role": role, "path": u.path, "query": query, "body": body,
               "user": {"email": "ana.seeded@example.com" if role == "legacy" else "bob.seeded@corp.example",
                        "card": "4111111111111111", "ssn": "536-22-8726", "phone": "+44 20 7946 0958"}}
        data = json.dumps(out).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Set-Cookie", "session=SEEDsess1on9876543210; HttpOnly")
        if u.path.startswith("/gz"):
            data = gzip.compress(data)
            self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    do_GET = handle_one
    do_POST = handle_one
ThreadingHTTPServer((host, port), H).serve_forever()
"#;

/// Sends the seeded PII every way once (a round).
fn send_round(ns: &Netns, base: &str, dir: &Path, round: u32) {
    let auth = format!("Authorization: Bearer {}", TOKENS[0]);
    let cookie = format!("Cookie: theme=dark; session={}", TOKENS[1]);
    let key = format!("X-Api-Key: {}", TOKENS[2]);
    let headers = ["-H", &auth, "-H", &cookie, "-H", &key];
    // Query string (URL-encoded, as a browser sends it).
    let q = format!(
        "{base}/profile?round={round}&email=dan.query%40example.com&card={}&ssn={}&phone=%28415%29%20555-0134",
        CARDS[2], SSNS[1]
    );
    curl_ok(ns, &[&headers[..], &[q.as_str()]].concat());
    // JSON body.
    let json = format!(
        r#"{{"round":{round},"email":"{}","card":"{}","ssn":"{}","phone":"{}"}}"#,
        EMAILS[0], CARDS[1], SSNS[0], PHONES[0]
    );
    let url = format!("{base}/signup");
    curl_ok(
        ns,
        &[
            &headers[..],
            &[
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                &json,
                &url,
            ],
        ]
        .concat(),
    );
    // Form body.
    let form = format!(
        "round={round}&email=bob.seeded%40corp.example&phone=%28415%29+555-0134&card={}",
        CARDS[0]
    );
    let url = format!("{base}/form");
    curl_ok(
        ns,
        &[
            &headers[..],
            &[
                "-H",
                "Content-Type: application/x-www-form-urlencoded",
                "--data-binary",
                &form,
                &url,
            ],
        ]
        .concat(),
    );
    // gzip JSON body, gzip reply.
    let gz_path = dir.join(format!("body{round}.gz"));
    let plain = format!(
        r#"{{"round":{round},"email":"{}","card":"{}","ssn":"{}"}}"#,
        EMAILS[3], CARDS[2], SSNS[1]
    );
    let mut enc = std::process::Command::new("gzip")
        .arg("-c")
        .stdin(Stdio::piped())
        .stdout(std::fs::File::create(&gz_path).expect("creating the gzip file"))
        .spawn()
        .expect("starting gzip");
    enc.stdin
        .take()
        .expect("writing to gzip")
        .write_all(plain.as_bytes())
        .expect("writing to gzip");
    assert!(enc.wait().expect("gzip").success());
    let data = format!("@{}", gz_path.display());
    let url = format!("{base}/gz/upload");
    curl_ok(
        ns,
        &[
            &headers[..],
            &[
                "-H",
                "Content-Type: application/json",
                "-H",
                "Content-Encoding: gzip",
                "--data-binary",
                &data,
                &url,
            ],
        ]
        .concat(),
    );
}

/// Which seeded values occur in `haystack`, as text or bytes.
fn leaks(haystack: &[u8]) -> Vec<&'static str> {
    seeded()
        .into_iter()
        .filter(|v| haystack.windows(v.len()).any(|w| w == v.as_bytes()))
        .collect()
}

#[test]
fn no_seeded_pii_value_reaches_any_output() {
    require_root();
    const ROUNDS: u32 = 6;
    let topo = Topology::new("p").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let server = d.join("server.py");
    std::fs::write(&server, SERVER).unwrap();
    // The candidate runs unprivileged: its log goes where it may write.
    let (legacy_log, cand_log) = (d.join("legacy.log"), candidate_dir(d).join("candidate.log"));
    let mut cmd = topo.legacy().cmd(python3());
    cmd.arg(&server)
        .args(["legacy", &topo.link.a_ip, "8080"])
        .arg(&legacy_log)
        .stdout(Stdio::null());
    let _legacy = Proc::spawn("legacy.py", &mut cmd).unwrap();
    wait_for_port(
        topo.legacy(),
        &topo.link.a_ip,
        8080,
        Duration::from_secs(10),
    )
    .unwrap();
    let cand_cmd = format!(
        "exec {} {} candidate {} 9090 {}",
        python3(),
        server.display(),
        topo.leg_cand.b_ip,
        cand_log.display()
    );

    // A raw recording next to the run: the positive control (the values were on the
    // wire) and the input of `exchanges --masked`.
    let (pcap, mut record) = topo.start_record(d, "raw.pcapng").unwrap();

    let mut args = vec!["--log-level".to_string(), "debug".to_string()];
    args.extend(topo.run_args(d, &cand_cmd));
    let daemon =
        Daemon::start_env(topo.legacy(), d, "run", &args, &[("RUST_LOG", "debug")]).unwrap();
    let base = format!("http://{}", topo.legacy_addr());
    for round in 0..ROUNDS {
        send_round(topo.client(), &base, d, round);
    }
    let sent = u64::from(ROUNDS) * 4;
    daemon
        .wait_settled(topo.legacy(), sent, Duration::from_secs(60))
        .unwrap();
    let mut live = Vec::new();
    for path in ["/metrics", "/api/snapshot", "/"] {
        live.push(daemon.get(topo.legacy(), path).unwrap());
    }
    let exit = daemon.stop(Duration::from_secs(60)).unwrap();
    let rec_out = record.stop(Duration::from_secs(30)).unwrap();
    assert!(rec_out.status.success());

    // Positive controls: the legacy service got every seeded value (decoded), the wire
    // carried them, and the candidate got masked values only (no --replay-raw).
    let legacy_seen = std::fs::read(&legacy_log).unwrap();
    let legacy_seen = String::from_utf8_lossy(&legacy_seen).replace("\\u0040", "@");
    for v in seeded() {
        assert!(
            legacy_seen.contains(v),
            "legacy never got {v}: the test sends it wrong"
        );
    }
    let raw = std::fs::read(&pcap).unwrap();
    assert!(leaks(&raw).len() >= 10, "raw capture: {:?}", leaks(&raw));
    let cand_seen = std::fs::read(&cand_log).unwrap();
    assert_eq!(
        occurrences(&cand_seen, "\"path\""),
        sent as usize,
        "every request was replayed"
    );
    assert_eq!(
        leaks(&cand_seen),
        Vec::<&str>::new(),
        "the candidate got PII in clear"
    );

    // The run's ledger: everything replayed and compared (every exchange differs on role).
    let db = d.join("m.db");
    let (_, card) = report_json(&db, &[]).unwrap();
    let acc = &card["accounting"];
    assert_eq!(acc["seen"].as_u64(), Some(sent), "{acc}");
    assert_eq!(acc["differed"].as_u64(), Some(sent), "{acc}");

    // Every output, searched for every seeded value.
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
    for (path, text) in ["/metrics", "/api/snapshot", "/"].iter().zip(&live) {
        outputs.push((path.to_string(), text.clone().into_bytes()));
    }
    for format in ["table", "json", "markdown"] {
        let (_, text) = report(&db, &["--format", format]).unwrap();
        outputs.push((format!("report {format}"), text.into_bytes()));
    }
    let key = d.join("mask.key");
    for extra in [&[][..], &["--bodies"][..]] {
        let out = std::process::Command::new(daemon_bin())
            .args(["exchanges", "--masked", "--mask-key-file"])
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
        assert_eq!(occurrences(&out.stdout, "\"request\""), sent as usize);
        outputs.push((format!("exchanges --masked {extra:?}"), out.stdout));
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

    // …and the masked tokens are there, so the search looked at the right things.
    let store = &outputs.iter().find(|(n, _)| n == "m.db").unwrap().1;
    assert!(
        occurrences(store, "masked.invalid") > 0,
        "no email token in the store"
    );
    assert!(
        occurrences(store, "\"role\"") > 0,
        "no example bodies in the store"
    );
    let export = &outputs.last().unwrap().1;
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
