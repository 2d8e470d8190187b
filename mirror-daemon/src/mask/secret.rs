//! Secrets by name, everywhere: a JSON key, query or form field, or a `name=value` /
//! `name: value` in free text whose name says "secret" has its value masked whole, in
//! requests, responses and the candidate's egress bytes alike.
//!
//! Names match ASCII case-insensitively with `-` and `_` alike (`X-Api-Key`, `api_key`,
//! `apiKey`); see [`SECRET_NAMES`] and [`SECRET_FRAGMENTS`].
use std::sync::LazyLock;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use regex::Regex;

use super::token::is_masked_value;
use super::{Masker, Pass};
use crate::http::{Header, Request};

/// Names that are secret as a whole (too short to be searched inside other names).
pub const SECRET_NAMES: &[&str] = &["pwd", "sid", "pass", "auth", "jwt", "otp"];

/// A name containing one of these is secret: `authorization`, `cookie`, `set-cookie`,
/// `password`, `passwd`, `secret`, `client_secret`, `token`, `access_token`,
/// `refresh_token`, `id_token`, `api_key`, `apikey`, `x-api-key`, `session`,
/// `session_id`, `PHPSESSID`, `credentials`, `private_key`, `signature`…
pub const SECRET_FRAGMENTS: &[&str] = &[
    "authorization",
    "cookie",
    "password",
    "passwd",
    "passphrase",
    "secret",
    "token",
    "api_key",
    "apikey",
    "session",
    "sessid",
    "credential",
    "private_key",
    "signature",
];

const MIN_FRAGMENT_LEN: usize = 5;

static FRAGMENTS: LazyLock<Option<AhoCorasick>> = LazyLock::new(|| {
    let mut pats: Vec<String> = Vec::new();
    for f in SECRET_FRAGMENTS {
        pats.push((*f).to_string());
        if f.contains('_') {
            pats.push(f.replace('_', "-"));
            pats.push(f.replace('_', ""));
        }
    }
    AhoCorasickBuilder::new()
        .match_kind(MatchKind::LeftmostFirst)
        .ascii_case_insensitive(true)
        .build(pats)
        .ok()
});

/// Whether a JSON key, query/form field or header name marks its value as secret.
pub(crate) fn is_secret_name(name: &str) -> bool {
    if name.len() < 3 || name.len() > 128 {
        return false;
    }
    if SECRET_NAMES.iter().any(|n| n.eq_ignore_ascii_case(name)) {
        return true;
    }
    // The shortest fragment has 5 bytes; most JSON keys (`id`, `name`, `qty`) are
    // shorter and skip the automaton.
    if name.len() < MIN_FRAGMENT_LEN {
        return false;
    }
    match &*FRAGMENTS {
        Some(ac) => ac.is_match(name),
        // The automaton is built from constants; failing means a bug, and over-masking
        // is the safe side.
        None => true,
    }
}

/// `name` lower-cased with `_` for `-`, to pick the value's structure (cookie pairs,
/// credentials with a scheme, or whole).
pub(crate) fn normalized(name: &str) -> String {
    name.to_ascii_lowercase().replace('-', "_")
}

/// The value of a secret-named field, masked as the header of that name would be.
pub(crate) fn mask_named(m: &Pass<'_>, name: &str, value: &str) -> Option<String> {
    let n = normalized(name);
    super::headers::mask_secret_value(m, &n, value.as_bytes())
        .map(|v| String::from_utf8_lossy(&v).into_owned())
}

static NAMED_VALUE: LazyLock<Option<Regex>> = LazyLock::new(|| {
    Regex::new(
        r#"(?i)\b([a-z0-9_-]*(?:authorization|cookie|passw(?:or)?d|passphrase|secret|token|api[-_]?key|session|sessid|credential|private[-_]?key|signature)[a-z0-9_-]*|pwd|sid)(["']?[ \t]*[:=][ \t]*["']?)((?:bearer|basic|token|digest)[ \t]+)?([^\s"'&;,<>]+)"#,
    )
    .ok()
});

/// Free text: the value after every secret name (`password=…`, `"token": "…"`,
/// `Authorization: Bearer …`) masked whole; `None` when nothing changed.
pub(crate) fn mask_named_values(m: &Pass<'_>, text: &str) -> Option<String> {
    let Some(re) = &*NAMED_VALUE else {
        return Some(super::REDACTED.to_string());
    };
    let mut out = String::new();
    let mut last = 0;
    for c in re.captures_iter(text) {
        let Some(v) = c.get(4) else { continue };
        if is_masked_value(v.as_str().as_bytes()) {
            continue;
        }
        out.push_str(&text[last..v.start()]);
        out.push_str(&m.rule_value(v.as_str().as_bytes(), super::MaskKind::Header));
        last = v.end();
    }
    if last == 0 {
        return None;
    }
    out.push_str(&text[last..]);
    Some(out)
}

/// Bytes a client wrote (the candidate's egress, possibly cut short): an HTTP request
/// when its head parses, masked as any request; otherwise free text.
pub(crate) fn mask_wire_request(masker: &Masker, bytes: &[u8]) -> String {
    let pass = Pass::plain(masker);
    let mut hs = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Request::new(&mut hs);
    let head_len = match parsed.parse(bytes) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => return masker.mask_text(&String::from_utf8_lossy(bytes)),
    };
    let req = Request {
        method: parsed.method.unwrap_or_default().to_string(),
        target: parsed.path.unwrap_or_default().to_string(),
        version: parsed.version.unwrap_or(1),
        headers: parsed
            .headers
            .iter()
            .map(|h| Header::new(h.name, h.value))
            .collect(),
        body: bytes::Bytes::copy_from_slice(&bytes[head_len..]),
    };
    let masked = pass.request(&req);
    let mut out = format!(
        "{} {} HTTP/1.{}\r\n",
        masked.method, masked.target, masked.version
    );
    for h in &masked.headers {
        out.push_str(&h.name);
        out.push_str(": ");
        out.push_str(&String::from_utf8_lossy(&h.value));
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    let body = String::from_utf8_lossy(&masked.body);
    match mask_named_values(&pass, &body) {
        Some(b) => out.push_str(&b),
        None => out.push_str(&body),
    }
    out
}
