//! Header comparison.
//!
//! Every response header is compared (case-insensitive names, values normalized) except:
//! - [`VOLATILE_HEADERS`]: per-request or per-process values (dates, ids, trace context,
//!   server identity and timing), hop-by-hop and framing headers, and headers made moot
//!   by comparing decoded bodies (`content-length`, `content-encoding`,
//!   `transfer-encoding`); a changed body length shows up as a body diff anyway;
//! - `--ignore header:NAME` names (a trailing `*` matches a prefix).
//!
//! Some headers are compared in a weaker form:
//! - [`PRESENCE_ONLY_HEADERS`] (`etag`, `last-modified`, `expires`): values are derived
//!   from time or implementation, but dropping one breaks client caching, so only
//!   presence is compared;
//! - `set-cookie`: the set of cookie names (values are session ids and the like);
//! - `cache-control`, `vary`, `allow`: directive/token lists compared as sets;
//! - `content-type`: lower-cased, spaces and quotes around parameters removed.
use std::collections::BTreeMap;

use super::model::{Diff, DiffKind};
use super::render::truncate;

/// Not compared at all (exact names or `prefix*`).
pub const VOLATILE_HEADERS: &[&str] = &[
    "date",
    "server",
    "x-powered-by",
    "age",
    "via",
    "x-request-id",
    "request-id",
    "x-correlation-id",
    "correlation-id",
    "traceparent",
    "tracestate",
    "x-trace-id",
    "x-b3-*",
    "b3",
    "x-amzn-trace-id",
    "x-cloud-trace-context",
    "x-runtime",
    "x-response-time",
    "server-timing",
    "x-envoy-*",
    "content-length",
    "content-encoding",
    "transfer-encoding",
    "connection",
    "keep-alive",
];

/// Compared by presence only.
pub const PRESENCE_ONLY_HEADERS: &[&str] = &["etag", "last-modified", "expires"];

/// Headers whose comma-separated tokens are compared as a set.
const TOKEN_SET_HEADERS: &[&str] = &["cache-control", "vary", "allow"];

#[derive(Debug)]
pub(crate) struct HeaderRules {
    /// Exact ignored names (lower case), by length: a name is compared only with those
    /// of its own length.
    exact: Vec<Vec<String>>,
    /// Ignored prefixes (lower case, from `prefix*`).
    prefixes: Vec<String>,
}

/// Whether `name` (any case) matches a lower-case `pattern`, as the lower-cased name
/// would (ASCII case folding keeps every byte in place).
fn name_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name
            .as_bytes()
            .get(..prefix.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(prefix.as_bytes())),
        None => pattern.eq_ignore_ascii_case(name),
    }
}

impl HeaderRules {
    pub(crate) fn new(extra_ignore: &[String]) -> Self {
        let mut rules = HeaderRules {
            exact: Vec::new(),
            prefixes: Vec::new(),
        };
        let all = VOLATILE_HEADERS
            .iter()
            .map(|s| s.to_string())
            .chain(extra_ignore.iter().map(|s| s.to_ascii_lowercase()));
        for p in all {
            if p.ends_with('*') {
                rules.prefixes.push(p);
            } else {
                if rules.exact.len() <= p.len() {
                    rules.exact.resize(p.len() + 1, Vec::new());
                }
                rules.exact[p.len()].push(p);
            }
        }
        rules
    }

    fn ignored(&self, name: &str) -> bool {
        let same_length = self.exact.get(name.len()).map_or(&[][..], Vec::as_slice);
        same_length.iter().any(|p| name_matches(p, name))
            || self.prefixes.iter().any(|p| name_matches(p, name))
    }

    /// Diffs between two header lists, in name order.
    pub(crate) fn diff(
        &self,
        legacy: &[crate::http::Header],
        candidate: &[crate::http::Header],
    ) -> Vec<Diff> {
        if self.same_kept(legacy, candidate) {
            // The same kept headers in the same order group into the same values per
            // name: no diff, and nothing allocated (most shadow pairs).
            return Vec::new();
        }
        self.diff_collected(legacy, candidate)
    }

    /// [`HeaderRules::diff`] without its shortcut: every kept header grouped by name.
    fn diff_collected(
        &self,
        legacy: &[crate::http::Header],
        candidate: &[crate::http::Header],
    ) -> Vec<Diff> {
        let a = self.collect(legacy);
        let b = self.collect(candidate);
        let mut names: Vec<&String> = a.keys().chain(b.keys()).collect();
        names.sort();
        names.dedup();
        let mut out = Vec::new();
        for name in names {
            let (va, vb) = (a.get(name), b.get(name));
            // The same raw values normalize alike (most headers of a shadow pair).
            if va == vb {
                continue;
            }
            let (ra, rb) = if PRESENCE_ONLY_HEADERS.contains(&name.as_str()) {
                if va.is_some() == vb.is_some() {
                    continue;
                }
                (
                    va.map(|v| normalize(name, v)),
                    vb.map(|v| normalize(name, v)),
                )
            } else {
                let (na, nb) = (
                    va.map(|v| normalize(name, v)),
                    vb.map(|v| normalize(name, v)),
                );
                if na == nb {
                    continue;
                }
                (na, nb)
            };
            out.push(Diff {
                kind: DiffKind::Header { name: name.clone() },
                legacy: ra.as_deref().map(truncate),
                candidate: rb.as_deref().map(truncate),
            });
        }
        out
    }

    /// Whether both lists, without their ignored names, are the same headers in the same
    /// order (names compared as [`HeaderRules::collect`] keys them, values byte for byte).
    fn same_kept(&self, a: &[crate::http::Header], b: &[crate::http::Header]) -> bool {
        let kept = |h: &&crate::http::Header| !self.ignored(h.name.trim());
        let (mut a, mut b) = (a.iter().filter(kept), b.iter().filter(kept));
        loop {
            match (a.next(), b.next()) {
                (None, None) => return true,
                (Some(x), Some(y))
                    if x.name.trim().eq_ignore_ascii_case(y.name.trim()) && x.value == y.value => {}
                _ => return false,
            }
        }
    }

    /// Lower-case name → raw values in order, skipping ignored names.
    fn collect<'h>(&self, headers: &'h [crate::http::Header]) -> BTreeMap<String, Vec<&'h [u8]>> {
        let mut m: BTreeMap<String, Vec<&[u8]>> = BTreeMap::new();
        for h in headers {
            // Ignored names (most, in a typical response) are not lower-cased into a
            // new string.
            let name = h.name.trim();
            if !self.ignored(name) {
                m.entry(name.to_ascii_lowercase())
                    .or_default()
                    .push(&h.value);
            }
        }
        m
    }
}

/// Normalized comparable form of all values of one header.
fn normalize(name: &str, values: &[&[u8]]) -> String {
    let texts: Vec<String> = values
        .iter()
        .map(|v| collapse_ws(&String::from_utf8_lossy(v)))
        .collect();
    match name {
        "set-cookie" => {
            let mut names: Vec<&str> = texts
                .iter()
                .map(|c| c.split_once('=').map_or(c.as_str(), |(n, _)| n).trim())
                .collect();
            names.sort_unstable();
            format!("cookies: {}", names.join(", "))
        }
        "content-type" => texts
            .iter()
            .map(|t| {
                t.to_ascii_lowercase()
                    .split(';')
                    .map(|p| {
                        p.split('=')
                            .map(|x| x.trim().trim_matches('"'))
                            .collect::<Vec<_>>()
                            .join("=")
                    })
                    .filter(|p| !p.is_empty())
                    .collect::<Vec<_>>()
                    .join(";")
            })
            .collect::<Vec<_>>()
            .join(", "),
        n if TOKEN_SET_HEADERS.contains(&n) => {
            let mut tokens: Vec<String> = texts
                .iter()
                .flat_map(|t| t.split(','))
                .map(|t| t.trim().replace(' ', "").to_ascii_lowercase())
                .filter(|t| !t.is_empty())
                .collect();
            tokens.sort_unstable();
            tokens.dedup();
            tokens.join(",")
        }
        _ => texts.join(", "),
    }
}

fn collapse_ws(s: &str) -> String {
    s.split_ascii_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::Header;

    fn h(pairs: &[(&str, &str)]) -> Vec<Header> {
        pairs
            .iter()
            .map(|(n, v)| Header::new(*n, v.as_bytes()))
            .collect()
    }

    fn keys(d: &[Diff]) -> Vec<String> {
        d.iter().map(|d| d.kind.to_string()).collect()
    }

    #[test]
    fn volatile_headers_are_ignored() {
        let rules = HeaderRules::new(&[]);
        let a = h(&[
            ("Date", "Mon, 01 Jan 2024 00:00:00 GMT"),
            ("X-Request-Id", "1"),
            ("traceparent", "00-a-b-01"),
            ("X-B3-TraceId", "abc"),
            ("Content-Length", "10"),
            ("Content-Encoding", "gzip"),
            ("Server", "legacy/1.0"),
            ("Content-Type", "application/json; charset=UTF-8"),
            ("ETag", "\"v1\""),
            ("Set-Cookie", "sid=abc; Path=/"),
        ]);
        let b = h(&[
            ("date", "Tue, 02 Jan 2024 00:00:00 GMT"),
            ("x-request-id", "2"),
            ("Content-Length", "12"),
            ("server", "candidate"),
            ("content-type", "application/json;charset=\"utf-8\""),
            ("etag", "W/\"other\""),
            ("set-cookie", "sid=zzz; Path=/; HttpOnly"),
        ]);
        assert!(rules.diff(&a, &b).is_empty(), "{:?}", rules.diff(&a, &b));
    }

    #[test]
    fn compared_headers_differ_and_ignore_flag_works() {
        let a = h(&[
            ("Cache-Control", "no-cache, max-age=0"),
            ("Location", "/a"),
            ("ETag", "x"),
            ("X-Custom", "1"),
        ]);
        let b = h(&[
            ("cache-control", "max-age=0,no-cache"),
            ("location", "/b"),
            ("x-custom", "2"),
        ]);
        let rules = HeaderRules::new(&[]);
        let d = rules.diff(&a, &b);
        assert_eq!(
            keys(&d),
            ["header(etag)", "header(location)", "header(x-custom)"]
        );
        assert_eq!(d[1].legacy.as_deref(), Some("/a"));
        assert_eq!(d[0].candidate, None);
        let rules = HeaderRules::new(&["location".into(), "x-*".into()]);
        assert_eq!(keys(&rules.diff(&a, &b)), ["header(etag)"]);
        let c = h(&[("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")]);
        let d = h(&[("Set-Cookie", "a=9")]);
        assert_eq!(
            keys(&HeaderRules::new(&[]).diff(&c, &d)),
            ["header(set-cookie)"]
        );
    }

    /// Names are matched whatever their case (a prefix pattern longer than the name does
    /// not match), and equal raw values are equal without being normalized.
    #[test]
    fn names_in_any_case_and_equal_values() {
        let rules = HeaderRules::new(&["X-Internal-*".into(), "X-Build".into()]);
        let a = h(&[
            ("X-INTERNAL-Node", "a"),
            ("x-build", "1"),
            ("X-Intern", "1"),
            ("Cache-Control", "no-store,  private"),
            ("X-B3-Sampled", "1"),
        ]);
        let b = h(&[
            ("x-internal-node", "b"),
            ("X-BUILD", "2"),
            ("x-intern", "2"),
            ("cache-control", "private, no-store"),
        ]);
        let d = rules.diff(&a, &b);
        assert_eq!(keys(&d), ["header(x-intern)"]);
        assert_eq!(
            (d[0].legacy.as_deref(), d[0].candidate.as_deref()),
            (Some("1"), Some("2"))
        );
        assert!(rules.diff(&a, &a).is_empty());
    }

    #[test]
    fn the_shortcut_for_equal_kept_headers_finds_what_grouping_finds() {
        let rules = HeaderRules::new(&["x-noise".to_string()]);
        let pool = [
            ("Content-Type", "application/json"),
            ("content-type", "application/json; charset=utf-8"),
            ("Cache-Control", "no-cache, private"),
            ("cache-control", "private,no-cache"),
            ("Date", "Mon"),
            ("X-Noise", "1"),
            ("x-noise", "2"),
            (" Vary", "Accept"),
            ("vary", "Accept"),
            ("Set-Cookie", "a=1"),
            ("Set-Cookie", "b=2"),
        ];
        // Every list of up to 3 headers from the pool, against every other one.
        let mut lists: Vec<Vec<Header>> = vec![vec![]];
        for len in 1..=3u32 {
            for n in 0..pool.len().pow(len) {
                let mut list = Vec::new();
                let mut k = n;
                for _ in 0..len {
                    let (name, value) = pool[k % pool.len()];
                    list.push(Header::new(name, value.as_bytes()));
                    k /= pool.len();
                }
                lists.push(list);
            }
        }
        let mut shortcuts = 0;
        for (i, a) in lists.iter().enumerate().step_by(7) {
            for b in lists.iter().skip(i % 5).step_by(11) {
                let fast = rules.diff(a, b);
                assert_eq!(fast, rules.diff_collected(a, b), "{a:?} / {b:?}");
                shortcuts += usize::from(rules.same_kept(a, b));
            }
        }
        assert!(shortcuts > 10, "the shortcut was taken {shortcuts} times");
    }
}
