//! `Comparator`: status, headers and bodies of one legacy/candidate response pair.
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::CompareError;
use super::config::CompareConfig;
use super::decode::{Decoded, decode};
use super::headers::HeaderRules;
use super::json::{Sink, TextDiff, diff_json, diff_json_text};
use super::model::{BodyMode, Comparison, Diff, DiffKind, FieldDiffKind};
use super::render::{describe_bytes, render_json, sha256, truncate, window};
use super::scan;
use crate::http::{Response, header};

/// Compares responses under one configuration; shareable across threads.
///
/// ```no_run
/// use mirror_daemon::compare::{Comparator, CompareConfig, parse_ignore, parse_tolerance};
/// use mirror_daemon::http::Response;
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let mut cfg = CompareConfig::default();
/// cfg.ignore(parse_ignore("json:$..updated_at")?);
/// cfg.tolerance.push(parse_tolerance("json:$.items[*].price=0.01")?);
/// let comparator = Comparator::new(cfg)?;
/// let response = |body: &'static str| Response {
///     version: 1,
///     status: 200,
///     reason: "OK".into(),
///     headers: Vec::new(),
///     body: body.into(),
/// };
/// let cmp = comparator.compare(&response(r#"{"n":1}"#), &response(r#"{"n":2}"#));
/// assert!(!cmp.matched());
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Comparator {
    cfg: CompareConfig,
    headers: HeaderRules,
    counters: Counters,
    body_digest: Option<BodyDigest>,
}

/// A keyed digest (hex) for bodies shown in diffs by digest only.
pub type BodyDigestFn = std::sync::Arc<dyn Fn(&[u8]) -> String + Send + Sync>;

struct BodyDigest(BodyDigestFn);

impl std::fmt::Debug for BodyDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BodyDigest(keyed)")
    }
}

#[derive(Debug, Default)]
struct Counters {
    compared: AtomicU64,
    hashed: AtomicU64,
    undecodable: AtomicU64,
    legacy_json_unparsable: AtomicU64,
    truncated: AtomicU64,
    multiset_budget_exhausted: AtomicU64,
}

/// How often the comparator had to fall back; each is a reason some exchanges were
/// compared less precisely than asked.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompareCounts {
    pub compared: u64,
    /// A body decoded past `max_decoded_body`: compared by length and SHA-256.
    pub hashed: u64,
    /// A body could not be decoded: raw bytes compared.
    pub undecodable: u64,
    /// Legacy said JSON but did not parse: compared as text/bytes.
    pub legacy_json_unparsable: u64,
    /// Exchanges with more diffs than `max_diffs` (the rest counted, not kept).
    pub truncated: u64,
    /// Unordered-array matching stopped at its work budget.
    pub multiset_budget_exhausted: u64,
}

impl Comparator {
    pub fn new(cfg: CompareConfig) -> Result<Self, CompareError> {
        if cfg.max_diffs == 0 {
            return Err(CompareError::Invalid("max_diffs must be at least 1".into()));
        }
        if cfg.max_decoded_body == 0 {
            return Err(CompareError::Invalid(
                "max_decoded_body must be at least 1 byte".into(),
            ));
        }
        let headers = HeaderRules::new(&cfg.ignore_headers);
        Ok(Comparator {
            cfg,
            headers,
            counters: Counters::default(),
            body_digest: None,
        })
    }

    /// Show bodies compared by content as `N bytes, digest <keyed>` instead of a bare
    /// SHA-256, which a short body (a card number) could be recovered from by hashing
    /// guesses. Equality is still decided on the full content.
    pub fn with_body_digest(mut self, digest: BodyDigestFn) -> Self {
        self.body_digest = Some(BodyDigest(digest));
        self
    }

    /// How a body compared by content is shown in a diff.
    fn describe(&self, len: u64, bytes: Option<&[u8]>, sha: &[u8; 32]) -> String {
        match (&self.body_digest, bytes) {
            (Some(d), Some(b)) => format!("{len} bytes, digest {}", (d.0)(b)),
            // Over the decode cap only the plain hash exists: key it too, so no stored
            // digest can be checked against a guessed body without the mask key.
            (Some(d), None) => format!("{len} bytes, keyed digest of sha256 {}", (d.0)(sha)),
            (None, _) => describe_bytes(len, sha),
        }
    }

    pub fn config(&self) -> &CompareConfig {
        &self.cfg
    }

    pub fn counts(&self) -> CompareCounts {
        let c = &self.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CompareCounts {
            compared: l(&c.compared),
            hashed: l(&c.hashed),
            undecodable: l(&c.undecodable),
            legacy_json_unparsable: l(&c.legacy_json_unparsable),
            truncated: l(&c.truncated),
            multiset_budget_exhausted: l(&c.multiset_budget_exhausted),
        }
    }

    /// Diffs of `candidate` against `legacy`: status, then headers, then body.
    pub fn compare(&self, legacy: &Response, candidate: &Response) -> Comparison {
        self.compare_known(legacy, candidate, None)
    }

    /// [`Comparator::compare`], told that the bytes `json` are a JSON document as
    /// serde_json reads a `Value` (the masker's scan found it: `Taint::value_json_body`).
    /// Used only when both bodies are exactly those bytes; the result is the same as
    /// without it, and legacy's text is not scanned a second time.
    pub fn compare_known(
        &self,
        legacy: &Response,
        candidate: &Response,
        json: Option<&[u8]>,
    ) -> Comparison {
        let c = &self.counters;
        c.compared.fetch_add(1, Ordering::Relaxed);
        let mut sink = Sink::new(self.cfg.max_diffs);
        if legacy.status != candidate.status {
            sink.push_with(|| Diff {
                kind: DiffKind::Status,
                legacy: Some(legacy.status.to_string()),
                candidate: Some(candidate.status.to_string()),
            });
        }
        for d in self.headers.diff(&legacy.headers, &candidate.headers) {
            sink.push_with(|| d);
        }
        let body = self.bodies(legacy, candidate, json, &mut sink);
        if sink.omitted > 0 {
            c.truncated.fetch_add(1, Ordering::Relaxed);
        }
        Comparison {
            diffs: sink.diffs,
            omitted: sink.omitted,
            body,
        }
    }

    fn bodies(
        &self,
        legacy: &Response,
        candidate: &Response,
        json: Option<&[u8]>,
        sink: &mut Sink,
    ) -> BodyMode {
        let cap = self.cfg.max_decoded_body;
        let a = decode(
            &legacy.body,
            header(&legacy.headers, "content-encoding"),
            cap,
        );
        let b = decode(
            &candidate.body,
            header(&candidate.headers, "content-encoding"),
            cap,
        );
        let (a, b) = match (a, b) {
            (Decoded::Full(a), Decoded::Full(b)) => (a, b),
            (a, b) => return self.hashed_bodies(&a, &b, sink),
        };
        if a.is_empty() && b.is_empty() {
            return BodyMode::Empty;
        }
        let media = media_type(legacy).or_else(|| media_type(candidate));
        let json_expected = match media.as_deref() {
            Some(m) => is_json_type(m),
            None => looks_like_json(&a),
        };
        // Equal bytes are equal documents (no rule can find a difference between a value
        // and itself, save the unordered-array matcher's budget), so when they are valid
        // JSON the two trees are not built; different bytes are compared member by
        // member as text, only the members that differ parsed into trees
        // (`diff_json_text`, the diffs of the trees, each body read about once).
        // `scan::check` accepts exactly what `Value` accepts, building nothing; a valid
        // JSON document is UTF-8 throughout, so the text is checked once. When
        // either side is not JSON, the comparison below decides as before.
        if json_expected && self.cfg.unordered.is_empty() {
            if a == b {
                if json.is_some_and(|known| known == &a[..]) || valid_json(&a) {
                    return BodyMode::Json;
                }
            } else if let (Ok(ta), Ok(tb)) = (std::str::from_utf8(&a), std::str::from_utf8(&b))
                && let TextDiff::Compared { exhausted } = diff_json_text(&self.cfg, ta, tb, sink)
            {
                if exhausted {
                    self.counters
                        .multiset_budget_exhausted
                        .fetch_add(1, Ordering::Relaxed);
                }
                return BodyMode::Json;
            }
        }
        if json_expected {
            match serde_json::from_slice::<Value>(&a) {
                Ok(ja) => {
                    match serde_json::from_slice::<Value>(&b) {
                        Ok(jb) => {
                            if diff_json(&self.cfg, &ja, &jb, sink) {
                                self.counters
                                    .multiset_budget_exhausted
                                    .fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        // Legacy spoke JSON, the candidate did not: a type change at the root.
                        Err(_) => sink.push_with(|| Diff {
                            kind: DiffKind::Field {
                                path: "$".into(),
                                how: FieldDiffKind::Type,
                            },
                            legacy: Some(render_json(&ja)),
                            candidate: Some(truncate(&String::from_utf8_lossy(&b))),
                        }),
                    }
                    return BodyMode::Json;
                }
                Err(_) => {
                    self.counters
                        .legacy_json_unparsable
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        let texty = json_expected || media.as_deref().is_some_and(is_text_type);
        if texty && let (Ok(ta), Ok(tb)) = (std::str::from_utf8(&a), std::str::from_utf8(&b)) {
            self.texts(ta, tb, sink);
            return BodyMode::Text;
        }
        if a != b {
            let kind = if a.len() != b.len() {
                DiffKind::Size
            } else {
                DiffKind::Body
            };
            sink.push_with(|| Diff {
                kind,
                legacy: Some(self.describe(a.len() as u64, Some(&a), &sha256(&a))),
                candidate: Some(self.describe(b.len() as u64, Some(&b), &sha256(&b))),
            });
        }
        BodyMode::Bytes
    }

    fn texts(&self, a: &str, b: &str, sink: &mut Sink) {
        let (a, b) = if self.cfg.normalize_whitespace {
            (collapse_ws(a), collapse_ws(b))
        } else {
            (a.to_string(), b.to_string())
        };
        if a == b {
            return;
        }
        let mut at = a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count();
        while !a.is_char_boundary(at) {
            at -= 1;
        }
        let kind = if a.len() != b.len() {
            DiffKind::Size
        } else {
            DiffKind::Body
        };
        sink.push_with(|| Diff {
            kind,
            legacy: Some(window(&a, at)),
            candidate: Some(window(&b, at)),
        });
    }

    /// At least one side was not fully decoded: compare decoded (or raw) length + hash.
    fn hashed_bodies(&self, a: &Decoded<'_>, b: &Decoded<'_>, sink: &mut Sink) -> BodyMode {
        let summary = |d: &Decoded<'_>| match d {
            Decoded::Full(bytes) => (bytes.len() as u64, sha256(bytes)),
            Decoded::Hashed { len, sha256 } => (*len, *sha256),
            Decoded::Raw { body, .. } => (body.len() as u64, sha256(body)),
        };
        let raw = [a, b].iter().any(|d| matches!(d, Decoded::Raw { .. }));
        for d in [a, b] {
            match d {
                Decoded::Raw { reason, .. } => {
                    self.counters.undecodable.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%reason, "body compared undecoded");
                }
                Decoded::Hashed { .. } => {
                    self.counters.hashed.fetch_add(1, Ordering::Relaxed);
                }
                Decoded::Full(_) => {}
            }
        }
        let (sa, sb) = (summary(a), summary(b));
        let shown = |d: &Decoded<'_>, s: &(u64, [u8; 32])| match d {
            Decoded::Full(bytes) => self.describe(s.0, Some(bytes), &s.1),
            Decoded::Raw { body, .. } => self.describe(s.0, Some(body), &s.1),
            // Over the cap: only the plain hash of the decoded stream is known (far too
            // long a body to be guessed).
            Decoded::Hashed { .. } => self.describe(s.0, None, &s.1),
        };
        if sa != sb {
            let kind = if sa.0 != sb.0 {
                DiffKind::Size
            } else {
                DiffKind::Body
            };
            sink.push_with(|| Diff {
                kind,
                legacy: Some(shown(a, &sa)),
                candidate: Some(shown(b, &sb)),
            });
        }
        if raw {
            BodyMode::Undecodable
        } else {
            BodyMode::Hashed
        }
    }
}

/// Whether `t` is a JSON document as `serde_json::Value` reads it (see [`scan`]).
fn valid_json(t: &[u8]) -> bool {
    std::str::from_utf8(t).is_ok_and(|s| scan::check(s, false).is_some())
}

fn media_type(r: &Response) -> Option<String> {
    let v = header(&r.headers, "content-type")?;
    let s = String::from_utf8_lossy(v);
    let m = s
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    (!m.is_empty()).then_some(m)
}

fn is_json_type(m: &str) -> bool {
    m == "application/json" || m == "text/json" || m.ends_with("+json")
}

fn is_text_type(m: &str) -> bool {
    m.starts_with("text/")
        || m.ends_with("+xml")
        || matches!(
            m,
            "application/xml"
                | "application/javascript"
                | "application/x-www-form-urlencoded"
                | "application/x-ndjson"
                | "application/graphql"
        )
}

fn looks_like_json(b: &[u8]) -> bool {
    matches!(
        b.iter().find(|c| !c.is_ascii_whitespace()),
        Some(b'{' | b'[')
    )
}

fn collapse_ws(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use serde_json::json;

    use super::*;
    use crate::compare::decode::tests::{brotli, gzip};
    use crate::http::Header;

    fn resp(status: u16, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Response {
        Response {
            version: 1,
            status,
            reason: String::new(),
            headers: headers
                .iter()
                .map(|(n, v)| Header::new(*n, v.as_bytes()))
                .collect(),
            body: body.into(),
        }
    }

    fn keys(c: &Comparison) -> Vec<String> {
        c.diffs.iter().map(|d| d.kind.to_string()).collect()
    }

    fn strict() -> Comparator {
        Comparator::new(CompareConfig::default()).unwrap()
    }

    #[test]
    fn equal_bodies_are_judged_as_when_both_trees_were_built() {
        let c = strict();
        let json = [("Content-Type", "application/json")];
        let doc = r#"{"a":[1,2.5,"x"],"b":{"c":null,"d":true}}"#;
        let cmp = c.compare(&resp(200, &json, doc), &resp(200, &json, doc));
        assert!(cmp.matched());
        assert_eq!(cmp.body, BodyMode::Json);
        // A number serde_json cannot hold fails `Value` and the check alike: such a body
        // is still compared as text, and counted as unparsable.
        let huge = r#"{"n":1e400}"#;
        let cmp = c.compare(&resp(200, &json, huge), &resp(200, &json, huge));
        assert!(cmp.matched());
        assert_eq!(cmp.body, BodyMode::Text);
        assert_eq!(c.counts().legacy_json_unparsable, 1);
        // Invalid JSON, equal on both sides: text, as before.
        let cmp = c.compare(&resp(200, &json, "{oops"), &resp(200, &json, "{oops"));
        assert_eq!(cmp.body, BodyMode::Text);
        assert_eq!(c.counts().legacy_json_unparsable, 2);
    }

    #[test]
    fn gzip_and_brotli_are_decoded_before_comparing() {
        let body = json!({"user": {"id": 7, "name": "Ada"}, "tags": ["x"]}).to_string();
        let legacy = resp(
            200,
            &[
                ("Content-Type", "application/json"),
                ("Content-Encoding", "gzip"),
            ],
            gzip(body.as_bytes()),
        );
        let candidate = resp(
            200,
            &[
                ("Content-Type", "application/json"),
                ("Content-Encoding", "br"),
            ],
            brotli(body.as_bytes()),
        );
        let c = strict().compare(&legacy, &candidate);
        assert!(c.matched(), "{:?}", c);
        assert_eq!(c.body, BodyMode::Json);
        let changed = json!({"user": {"id": 7, "name": "Bob"}, "tags": ["x"]}).to_string();
        let candidate = resp(
            200,
            &[
                ("Content-Type", "application/json"),
                ("Content-Encoding", "br"),
            ],
            brotli(changed.as_bytes()),
        );
        let c = strict().compare(&legacy, &candidate);
        assert_eq!(keys(&c), ["field($.user.name,value)"]);
        assert_eq!(c.diffs[0].legacy.as_deref(), Some("\"Ada\""));
        assert_eq!(c.diffs[0].candidate.as_deref(), Some("\"Bob\""));
    }

    #[test]
    fn status_headers_and_body_together() {
        let legacy = resp(
            200,
            &[("Content-Type", "application/json"), ("Date", "x")],
            r#"{"a":1}"#,
        );
        let candidate = resp(
            201,
            &[("Content-Type", "text/html"), ("Date", "y")],
            "<html>",
        );
        let c = strict().compare(&legacy, &candidate);
        assert_eq!(
            keys(&c),
            ["status", "header(content-type)", "field($,type)"]
        );
        assert!(!c.matched());
    }

    #[test]
    fn text_exact_or_whitespace_normalized() {
        let legacy = resp(200, &[("Content-Type", "text/plain")], "hello  world\n");
        let candidate = resp(200, &[("Content-Type", "text/plain")], "hello world");
        assert_eq!(keys(&strict().compare(&legacy, &candidate)), ["size"]);
        let ws = Comparator::new(CompareConfig {
            normalize_whitespace: true,
            ..Default::default()
        })
        .unwrap();
        assert!(ws.compare(&legacy, &candidate).matched());
        let other = resp(200, &[("Content-Type", "text/plain")], "hello_world\n ");
        let c = strict().compare(&legacy, &other);
        assert_eq!(keys(&c), ["body"]);
        assert_eq!(c.body, BodyMode::Text);
    }

    #[test]
    fn binary_by_size_and_hash_and_oversize_by_hash() {
        let legacy = resp(200, &[("Content-Type", "image/png")], vec![1u8, 2, 3]);
        let candidate = resp(200, &[("Content-Type", "image/png")], vec![1u8, 2, 4]);
        let c = strict().compare(&legacy, &candidate);
        assert_eq!(keys(&c), ["body"]);
        assert!(
            c.diffs[0]
                .legacy
                .as_deref()
                .is_some_and(|s| s.starts_with("3 bytes, sha256 "))
        );
        let small = Comparator::new(CompareConfig {
            max_decoded_body: 100,
            ..Default::default()
        })
        .unwrap();
        let big = json!({"k": "v".repeat(500)}).to_string();
        let legacy = resp(
            200,
            &[
                ("Content-Type", "application/json"),
                ("Content-Encoding", "gzip"),
            ],
            gzip(big.as_bytes()),
        );
        let candidate = resp(200, &[("Content-Type", "application/json")], big.clone());
        let c = small.compare(&legacy, &candidate);
        assert!(c.matched(), "{c:?}");
        assert_eq!(c.body, BodyMode::Hashed);
        assert_eq!(small.counts().hashed, 2);
        let candidate = resp(
            200,
            &[("Content-Type", "application/json")],
            big.replace("vv", "vw"),
        );
        assert_eq!(keys(&small.compare(&legacy, &candidate)), ["body"]);
    }

    #[test]
    fn diffs_are_capped_per_exchange() {
        let cmp = Comparator::new(CompareConfig {
            max_diffs: 5,
            ..Default::default()
        })
        .unwrap();
        let a: Vec<u32> = (0..100).collect();
        let b: Vec<u32> = (1000..1100).collect();
        let legacy = resp(
            200,
            &[("Content-Type", "application/json")],
            json!(a).to_string(),
        );
        let candidate = resp(
            200,
            &[("Content-Type", "application/json")],
            json!(b).to_string(),
        );
        let c = cmp.compare(&legacy, &candidate);
        assert_eq!((c.diffs.len(), c.omitted), (5, 95));
        assert_eq!(cmp.counts().truncated, 1);
        assert!(
            Comparator::new(CompareConfig {
                max_diffs: 0,
                ..Default::default()
            })
            .is_err()
        );
    }

    /// The comparator's text path against its tree path, whole responses at a time. An
    /// unordered rule on a path no document has changes no diff but turns the text path
    /// off, so the second comparator compares every pair as trees, as before the text
    /// path existed: the diffs, the body mode and the counters must be the same.
    #[test]
    fn text_path_and_tree_path_judge_responses_alike() {
        let with = |extra_unordered: bool| {
            let mut c = CompareConfig::default();
            c.ignore(crate::compare::parse_ignore("json:$..updated_at").expect("rule"));
            c.tolerance
                .push(crate::compare::parse_tolerance("json:$..price=0.01").expect("rule"));
            if extra_unordered {
                c.unordered
                    .push(crate::compare::parse_unordered("json:$.zz_absent").expect("rule"));
            }
            Comparator::new(c).expect("config")
        };
        let (text, trees) = (with(false), with(true));
        let json = [("Content-Type", "application/json")];
        let doc = crate::compare::json::tests_doc();
        let bodies: Vec<String> = vec![
            doc.clone(),
            doc.replace("\"EUR\"", "\"USD\""),
            doc.replace("\"qty\":2", "\"qty\":2.0"),
            doc.replace("\"qty\":2", "\"qty\":3"),
            doc.replace("item 3\"", "item 3\\u0021\""),
            doc.replace("\"updated_at\":\"t1\"", "\"updated_at\":\"t2\""),
            doc.replace("\"price\":1.5", "\"price\":1.505"),
            doc.replace("\"total\":", "\"total\":1e400,\"t\":"),
            doc.replace("{\"id\":1,", "{\"id\":1,\"id\":1,"),
            doc.replacen(",", ",,", 1),
            doc.replace("\"currency\"", "\"curr\\u0065ncy\""),
            format!("[{doc}]"),
            "not json".into(),
            String::new(),
        ];
        for a in &bodies {
            for b in &bodies {
                let (l, r) = (resp(200, &json, a.clone()), resp(200, &json, b.clone()));
                let (x, y) = (text.compare(&l, &r), trees.compare(&l, &r));
                assert_eq!(x, y, "{a} vs {b}");
            }
        }
        let (mut x, mut y) = (text.counts(), trees.counts());
        assert!(x.legacy_json_unparsable > 0);
        (x.multiset_budget_exhausted, y.multiset_budget_exhausted) = (0, 0);
        assert_eq!(x, y);
    }

    /// Run with `cargo test --release -p mirror-daemon --lib compare_throughput -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn compare_throughput() {
        let items: Vec<Value> = (0..880)
            .map(|i| {
                json!({"id": i, "name": format!("item-{i}"), "price": f64::from(i) * 1.25,
                       "tags": ["a", "b", "c"], "updated_at": "2024-01-01T00:00:00Z", "stock": {"n": i % 7}})
            })
            .collect();
        let body = json!({"items": items, "total": 880}).to_string();
        let mut changed = body.replacen("item-3\"", "item-X\"", 1);
        changed = changed.replace("2024-01-01", "2024-01-02");
        assert!(body.len() > 100_000, "{}", body.len());
        let mut with_rules = CompareConfig::default();
        with_rules.ignore(crate::compare::parse_ignore("json:$..updated_at").unwrap());
        with_rules
            .tolerance
            .push(crate::compare::parse_tolerance("json:$.items[*].price=0.01").unwrap());
        with_rules
            .unordered
            .push(crate::compare::parse_unordered("json:$.items[*].tags").unwrap());
        let h = [("Content-Type", "application/json")];
        let n = 200;
        // Throughput is counted in decoded JSON bytes, both sides.
        let timed = |label: &str, cmp: &Comparator, legacy: &Response, candidate: &Response| {
            let start = std::time::Instant::now();
            let mut diffs = 0;
            for _ in 0..n {
                diffs += cmp.compare(legacy, candidate).diffs.len();
            }
            let secs = start.elapsed().as_secs_f64();
            let mb = (body.len() * 2 * n) as f64 / 1e6;
            println!(
                "compare_throughput [{label}]: {} KiB bodies ({} on the wire), {:.1} MB/s (both sides), {:.0} µs/exchange, {} diffs/exchange",
                body.len() / 1024,
                legacy.body.len(),
                mb / secs,
                secs * 1e6 / n as f64,
                diffs / n
            );
        };
        let legacy = resp(200, &h, body.clone());
        let parse_only = std::time::Instant::now();
        for _ in 0..n {
            let a: Value = serde_json::from_slice(&legacy.body).unwrap();
            let b: Value = serde_json::from_slice(&legacy.body).unwrap();
            assert_eq!(a.is_object(), b.is_object());
        }
        let secs = parse_only.elapsed().as_secs_f64();
        println!(
            "compare_throughput [parse only]: {:.1} MB/s (both sides)",
            (body.len() * 2 * n) as f64 / 1e6 / secs
        );
        let strict = Comparator::new(CompareConfig::default()).unwrap();
        let rules = Comparator::new(with_rules).unwrap();
        timed(
            "equal, no rules",
            &strict,
            &legacy,
            &resp(200, &h, body.clone()),
        );
        timed(
            "equal, 3 rules",
            &rules,
            &legacy,
            &resp(200, &h, body.clone()),
        );
        timed(
            "one diff, 3 rules",
            &rules,
            &legacy,
            &resp(200, &h, changed),
        );
        let gz = [
            ("Content-Type", "application/json"),
            ("Content-Encoding", "gzip"),
        ];
        let zipped = resp(200, &gz, gzip(body.as_bytes()));
        timed(
            "equal, gzip both, 3 rules",
            &rules,
            &zipped,
            &zipped.clone(),
        );
    }
}
