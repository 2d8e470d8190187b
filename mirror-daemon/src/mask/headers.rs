//! Header values: sensitive headers are tokenized whole (keeping cookie names and the
//! auth scheme readable), URL headers go through target masking, everything else through
//! the detectors. Framing headers are never touched.
use std::borrow::Cow;

use base64::Engine as _;

use super::Pass;
use super::memo::MemoKind;
use super::secret::is_secret_name;
use super::stats::MaskKind;
use super::token::is_masked_value;
use super::urlenc::mask_target;

/// Never masked: rewriting them would break framing or body decoding of the replay.
const PROTECTED: &[&str] = &[
    "content-length",
    "transfer-encoding",
    "content-encoding",
    "content-type",
];
/// Values that are URLs (queries may carry `query:` fields).
const URL_HEADERS: &[&str] = &["referer", "location", "content-location"];

/// Framing headers, never masked nor rewritten.
pub(crate) fn is_protected(name: &str) -> bool {
    PROTECTED.iter().any(|p| p.eq_ignore_ascii_case(name))
}

/// The masked value of one header, `None` when unchanged.
pub(crate) fn mask_header(m: &Pass<'_>, name: &str, value: &[u8]) -> Option<Vec<u8>> {
    // Lower-cased on the stack (header names are short); a longer one is allocated.
    let mut buf = [0u8; 64];
    let long;
    let lname = match lower_in(name, &mut buf) {
        Some(l) => l,
        None => {
            long = name.to_ascii_lowercase();
            long.as_str()
        }
    };
    if PROTECTED.contains(&lname) || value.is_empty() {
        return None;
    }
    // Most values repeat (Host, User-Agent, Accept, Server, a second's Date) and mask to
    // themselves: known so, the name checks and the detectors are skipped.
    let mut kbuf = [0u8; UNCHANGED_MAX_KEY];
    let key = unchanged_key(lname, value, &mut kbuf);
    if key.is_some_and(|k| m.unchanged_headers.contains(k)) {
        return None;
    }
    // Values the masker changes (credentials, cookies, PII) repeat too: the same
    // client's cookie on every request. Their result and side effects are remembered.
    let out = match key {
        Some(k) => m.memoized(MemoKind::Header, k, || mask_named(m, lname, value)),
        None => mask_named(m, lname, value),
    };
    if out.is_none()
        && let Some(k) = key
    {
        m.unchanged_headers.insert(k);
    }
    out
}

/// Longest `name:value` kept as unchanged.
const UNCHANGED_MAX_KEY: usize = 256;
/// Entries kept at most; emptied whole when full.
const UNCHANGED_MAX: usize = 4096;

/// Headers (lower-cased name and value) that the masker left unchanged: none of its
/// rules, secret names or detectors applied, so nothing was replaced, counted or tainted
/// (what [`mask_header`] does for a value it returns `None` for). That depends only on
/// the masker's configuration and these bytes, so the same header masks to itself
/// again. Keys are values clients choose: a randomly seeded foldhash, bounded.
#[derive(Debug, Default)]
pub(crate) struct UnchangedHeaders {
    set: std::sync::Mutex<std::collections::HashSet<Box<[u8]>, super::token::SeededHash>>,
}

impl UnchangedHeaders {
    fn contains(&self, key: &[u8]) -> bool {
        self.set.lock().is_ok_and(|s| s.contains(key))
    }

    fn insert(&self, key: &[u8]) {
        if let Ok(mut s) = self.set.lock() {
            if s.len() >= UNCHANGED_MAX {
                s.clear();
            }
            s.insert(key.into());
        }
    }

    /// Forgets every header.
    pub(crate) fn clear(&self) {
        if let Ok(mut s) = self.set.lock() {
            s.clear();
        }
    }
}

/// `name:value` in `buf`, when it fits and the name has no `:` (none on the wire has:
/// the key is then unambiguous).
fn unchanged_key<'b>(
    lname: &str,
    value: &[u8],
    buf: &'b mut [u8; UNCHANGED_MAX_KEY],
) -> Option<&'b [u8]> {
    if lname.contains(':') {
        return None;
    }
    let n = lname.len();
    let key = buf.get_mut(..n + 1 + value.len())?;
    key[..n].copy_from_slice(lname.as_bytes());
    key[n] = b':';
    key[n + 1..].copy_from_slice(value);
    Some(key)
}

/// [`mask_header`] for a header that is not a framing one, `lname` lower-cased.
fn mask_named(m: &Pass<'_>, lname: &str, value: &[u8]) -> Option<Vec<u8>> {
    if m.header_is_sensitive(lname) || is_secret_name(lname) {
        let out = mask_secret_value(m, lname, value);
        // An echo may copy the whole value (`Bearer …`, all the cookies), in a form
        // (base64) where the parts cannot be found.
        if let Some(o) = &out {
            m.taint(value.trim_ascii(), &String::from_utf8_lossy(o));
        }
        return out;
    }
    if URL_HEADERS.contains(&lname)
        && let Ok(s) = std::str::from_utf8(value)
    {
        return match mask_target(m, s) {
            Cow::Owned(v) => Some(v.into_bytes()),
            Cow::Borrowed(_) => None,
        };
    }
    match m.mask_bytes(value) {
        Cow::Owned(v) => Some(v),
        Cow::Borrowed(_) => None,
    }
}

/// `name` lower-cased in `buf`, when it fits.
fn lower_in<'b>(name: &str, buf: &'b mut [u8; 64]) -> Option<&'b str> {
    let out = buf.get_mut(..name.len())?;
    out.copy_from_slice(name.as_bytes());
    out.make_ascii_lowercase();
    std::str::from_utf8(out).ok()
}

/// The value of a field whose (lower-cased) name marks it secret, in a header, a JSON
/// key, a query or form field: credentials keep their scheme and cookies their names,
/// so an echo of a header in a body is masked exactly as the header was.
pub(crate) fn mask_secret_value(m: &Pass<'_>, lname: &str, value: &[u8]) -> Option<Vec<u8>> {
    match lname {
        "cookie" => mask_cookie_pairs(m, value, false),
        "set-cookie" | "set_cookie" => mask_cookie_pairs(m, value, true),
        "authorization" | "proxy-authorization" | "proxy_authorization" => {
            mask_credentials(m, value)
        }
        _ => whole(m, value),
    }
}

fn whole(m: &Pass<'_>, value: &[u8]) -> Option<Vec<u8>> {
    let v = value.trim_ascii();
    if v.is_empty() || is_masked_value(v) {
        return None;
    }
    Some(m.rule_value(v, MaskKind::Header).into_bytes())
}

/// `Scheme credentials` → `Scheme <token>`: the scheme says nothing about the user and
/// helps reading a diff (Basic vs Bearer).
fn mask_credentials(m: &Pass<'_>, value: &[u8]) -> Option<Vec<u8>> {
    let v = value.trim_ascii();
    let Some(sp) = v.iter().position(|&c| c == b' ') else {
        return whole(m, v);
    };
    let (scheme, creds) = (&v[..sp], v[sp..].trim_ascii());
    if scheme.is_empty()
        || !scheme
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || b"-._".contains(c))
    {
        return whole(m, v);
    }
    if creds.is_empty() || is_masked_value(creds) {
        return None;
    }
    if scheme.eq_ignore_ascii_case(b"basic") {
        taint_basic_credentials(m, creds);
    }
    let mut out = scheme.to_vec();
    out.push(b' ');
    out.extend_from_slice(m.rule_value(creds, MaskKind::Header).as_bytes());
    Some(out)
}

/// `a=1; b=2` → `a=<tok>; b=<tok>`. For `Set-Cookie` only the first pair is the cookie;
/// attributes (`Path`, `Expires`...) are kept and only scanned by the detectors.
/// `Basic base64(user:password)`: an application may echo the decoded pair or the
/// password alone (httpbin's `/basic-auth`); both are tainted for the exchange.
fn taint_basic_credentials(m: &Pass<'_>, creds: &[u8]) {
    let Ok(pair) = base64::engine::general_purpose::STANDARD.decode(creds) else {
        return;
    };
    if let Some(colon) = pair.iter().position(|&c| c == b':') {
        let password = &pair[colon + 1..];
        m.taint(password, &m.token_for(password));
    }
    m.taint(&pair, &m.token_for(&pair));
}

fn mask_cookie_pairs(m: &Pass<'_>, value: &[u8], set_cookie: bool) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(value.len() + 16);
    let mut changed = false;
    for (i, part) in value.split(|&c| c == b';').enumerate() {
        if i > 0 {
            out.push(b';');
        }
        if set_cookie && i > 0 {
            match m.mask_bytes(part) {
                Cow::Owned(p) => {
                    changed = true;
                    out.extend_from_slice(&p);
                }
                Cow::Borrowed(p) => out.extend_from_slice(p),
            }
            continue;
        }
        let (prefix, val) = match part.iter().position(|&c| c == b'=') {
            Some(eq) => part.split_at(eq + 1),
            None => {
                // No name: keep the leading whitespace, mask the rest.
                let lead = part.len() - part.trim_ascii_start().len();
                part.split_at(lead)
            }
        };
        let trimmed = val.trim_ascii();
        if trimmed.is_empty() || is_masked_value(trimmed) {
            out.extend_from_slice(part);
            continue;
        }
        changed = true;
        out.extend_from_slice(prefix);
        out.extend_from_slice(m.rule_value(trimmed, MaskKind::Header).as_bytes());
    }
    changed.then_some(out)
}
