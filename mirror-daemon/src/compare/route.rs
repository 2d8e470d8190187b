//! Route names for grouping exchanges: `GET /users/42/orders?x=1` → `GET /users/{id}/orders`.
//!
//! - The query string is dropped; an absolute-form target keeps only its path.
//! - A path segment becomes `{id}` when it is all digits, a UUID, hex of 8 or more
//!   characters with at least one digit, or 16 or more `[A-Za-z0-9_-]` characters mixing
//!   digits and letters (ULIDs, base62 and base64url ids).
//! - `--route REGEX=NAME` overrides come first, in order, first match wins. The regex is
//!   matched against the path (no query); NAME is used as is when it contains a space
//!   (`GET /legacy/{slug}`), else the method is prepended.
//! - At most `max_routes` distinct templated names (default 500); later new names become
//!   `other` and are counted. Override names do not count against the cap.
use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use regex::Regex;

use super::CompareError;

pub const DEFAULT_MAX_ROUTES: usize = 500;
/// The route of exchanges past the distinct-route cap.
pub const OTHER_ROUTE: &str = "other";

#[derive(Debug)]
pub struct RouteTemplater {
    overrides: Vec<(Regex, String)>,
    max_routes: usize,
    /// Looked up once per exchange: a seeded foldhash, not SipHash.
    seen: Mutex<HashSet<String, foldhash::fast::RandomState>>,
    overflowed: AtomicU64,
}

impl RouteTemplater {
    /// `overrides` are the raw `--route REGEX=NAME` values (split at the last `=`).
    pub fn new(overrides: &[String]) -> Result<Self, CompareError> {
        let mut parsed = Vec::with_capacity(overrides.len());
        for o in overrides {
            let bad = |reason: String| CompareError::BadRoute {
                value: o.clone(),
                reason,
            };
            let (re, name) = o.rsplit_once('=').ok_or_else(|| {
                bad(
                    "expected REGEX=NAME, e.g. `^/users/[^/]+/avatar$=GET /users/{id}/avatar`"
                        .into(),
                )
            })?;
            let name = name.trim();
            if re.is_empty() || name.is_empty() {
                return Err(bad("both REGEX and NAME must be non-empty".into()));
            }
            let re = Regex::new(re).map_err(|e| bad(format!("bad regex: {e}")))?;
            parsed.push((re, name.to_string()));
        }
        Ok(RouteTemplater {
            overrides: parsed,
            max_routes: DEFAULT_MAX_ROUTES,
            seen: Mutex::new(HashSet::default()),
            overflowed: AtomicU64::new(0),
        })
    }

    pub fn with_max_routes(mut self, max_routes: usize) -> Self {
        self.max_routes = max_routes;
        self
    }

    /// Exchanges sent to `other` because the distinct-route cap was reached.
    pub fn overflowed(&self) -> u64 {
        self.overflowed.load(Ordering::Relaxed)
    }

    /// Distinct templated routes seen so far (overrides excluded).
    pub fn distinct(&self) -> usize {
        self.seen
            .lock()
            .map_or_else(|p| p.into_inner().len(), |s| s.len())
    }

    pub fn route(&self, method: &str, target: &str) -> String {
        let path = path_of(target);
        for (re, name) in &self.overrides {
            if re.is_match(path) {
                return if name.contains(' ') {
                    name.clone()
                } else {
                    format!("{method} {name}")
                };
            }
        }
        let route = format!("{method} {}", template(path));
        // A poisoned lock only means another thread panicked mid-insert; the set is
        // still a valid set.
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.contains(&route) {
            return route;
        }
        if seen.len() < self.max_routes {
            seen.insert(route.clone());
            return route;
        }
        drop(seen);
        self.overflowed.fetch_add(1, Ordering::Relaxed);
        OTHER_ROUTE.to_string()
    }
}

/// The path part of a request target.
fn path_of(target: &str) -> &str {
    let t = target.split(['?', '#']).next().unwrap_or("");
    // Absolute form (`http://host/path`): drop scheme and authority.
    if let Some(rest) = t
        .strip_prefix("http://")
        .or_else(|| t.strip_prefix("https://"))
    {
        return rest.find('/').map_or("/", |i| &rest[i..]);
    }
    if t.is_empty() { "/" } else { t }
}

fn template(path: &str) -> String {
    if path == "*" {
        return "*".into();
    }
    path.split('/')
        .map(|seg| if is_id(seg) { "{id}" } else { seg })
        .collect::<Vec<_>>()
        .join("/")
}

fn is_id(seg: &str) -> bool {
    if seg.is_empty() {
        return false;
    }
    let b = seg.as_bytes();
    let digits = b.iter().filter(|c| c.is_ascii_digit()).count();
    if digits == b.len() {
        return true;
    }
    if is_uuid(b) {
        return true;
    }
    if b.len() >= 8 && digits > 0 && b.iter().all(u8::is_ascii_hexdigit) {
        return true;
    }
    let letters = b.iter().filter(|c| c.is_ascii_alphabetic()).count();
    b.len() >= 16
        && digits > 0
        && letters > 0
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_')
}

fn is_uuid(b: &[u8]) -> bool {
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_become_placeholders() {
        let t = RouteTemplater::new(&[]).unwrap();
        assert_eq!(t.route("GET", "/users/42?expand=1"), "GET /users/{id}");
        assert_eq!(
            t.route("GET", "/users/550e8400-e29b-41d4-a716-446655440000/orders"),
            "GET /users/{id}/orders"
        );
        assert_eq!(t.route("DELETE", "/blobs/deadbeef01"), "DELETE /blobs/{id}");
        assert_eq!(
            t.route("GET", "/o/01ARZ3NDEKTSV4RRFFQ69G5FAV"),
            "GET /o/{id}"
        );
        assert_eq!(t.route("GET", "/c/cus_J8dk2LmQz9xYwVb"), "GET /c/{id}");
        // Words stay words, including hex-looking ones without digits and short hex.
        assert_eq!(t.route("GET", "/api/v2/users/me"), "GET /api/v2/users/me");
        assert_eq!(t.route("GET", "/feed/cafebabe"), "GET /feed/cafebabe");
        assert_eq!(t.route("GET", "/a/abc123"), "GET /a/abc123");
        assert_eq!(
            t.route("GET", "/very-long-readable-slug-name"),
            "GET /very-long-readable-slug-name"
        );
        assert_eq!(
            t.route("GET", "http://h.example/users/7?x"),
            "GET /users/{id}"
        );
        assert_eq!(t.route("GET", ""), "GET /");
        assert_eq!(t.route("OPTIONS", "*"), "OPTIONS *");
    }

    #[test]
    fn overrides_first_match_wins() {
        let t = RouteTemplater::new(&[
            "^/static/=GET /static/*".into(),
            "^/p/[a-z-]+$=/p/{slug}".into(),
            "^/p/=/p/never".into(),
        ])
        .unwrap();
        assert_eq!(t.route("GET", "/static/app.js?v=3"), "GET /static/*");
        assert_eq!(t.route("PUT", "/p/hello-world"), "PUT /p/{slug}");
        assert_eq!(t.route("GET", "/p/7"), "GET /p/never");
        for bad in ["no-equals", "=name", "(unclosed=x"] {
            let e = RouteTemplater::new(&[bad.to_string()])
                .unwrap_err()
                .to_string();
            assert!(e.contains("--route"), "{e}");
        }
    }

    #[test]
    fn distinct_routes_are_capped_and_counted() {
        let t = RouteTemplater::new(&["^/fixed$=GET /fixed".into()])
            .unwrap()
            .with_max_routes(2);
        assert_eq!(t.route("GET", "/a"), "GET /a");
        assert_eq!(t.route("GET", "/b"), "GET /b");
        assert_eq!(t.route("GET", "/c"), OTHER_ROUTE);
        assert_eq!(t.route("GET", "/a/1"), OTHER_ROUTE);
        assert_eq!(t.route("GET", "/a"), "GET /a");
        assert_eq!(t.route("GET", "/fixed"), "GET /fixed");
        assert_eq!((t.distinct(), t.overflowed()), (2, 2));
    }
}
