//! Request targets, query strings and `application/x-www-form-urlencoded` bodies.
//!
//! Detectors run on *decoded* names and values (`alice%40example.com` is an email), and
//! only the pairs that change are re-encoded: the rest is copied byte for byte so the
//! replayed target stays identical where nothing was masked.
use std::borrow::Cow;

use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};

use super::Pass;
use super::secret::is_secret_name;
use super::stats::MaskKind;
use super::token::is_masked_value;

/// Characters escaped when a path segment is rewritten.
const PATH_SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'/')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}');

/// Decode a form/query component: `+` is a space, then percent-decoding.
fn decode_component(raw: &str) -> Cow<'_, str> {
    if !raw.bytes().any(|c| c == b'%' || c == b'+') {
        return Cow::Borrowed(raw);
    }
    let plus = raw.replace('+', " ");
    Cow::Owned(percent_decode_str(&plus).decode_utf8_lossy().into_owned())
}

fn encode_component(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Mask `name=value&...`; values of `names` (ASCII case-insensitive) and of secret names
/// (`password`, `access_token`…) get the rule action as `kind`, everything else goes
/// through the detectors. `None` when nothing changed.
pub(crate) fn mask_pairs(
    m: &Pass<'_>,
    raw: &str,
    names: &[String],
    kind: MaskKind,
) -> Option<String> {
    let mut out = String::new();
    let mut changed = false;
    for (i, pair) in raw.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        let (raw_name, raw_value) = match pair.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (pair, None),
        };
        let name = decode_component(raw_name);
        let selected = names.iter().any(|n| n.eq_ignore_ascii_case(&name)) || is_secret_name(&name);
        match m.mask_str(&name) {
            Cow::Owned(n) => {
                changed = true;
                out.push_str(&encode_component(&n));
            }
            Cow::Borrowed(_) => out.push_str(raw_name),
        }
        let Some(raw_value) = raw_value else { continue };
        out.push('=');
        let value = decode_component(raw_value);
        let new_value = if selected {
            if value.is_empty() || is_masked_value(value.as_bytes()) {
                None
            } else {
                let token = m.rule_value(value.as_bytes(), kind);
                // An echo may copy the value as it was spelled on the wire.
                m.taint(raw_value.as_bytes(), &encode_component(&token));
                Some(token)
            }
        } else {
            match m.mask_str(&value) {
                Cow::Owned(v) => {
                    m.taint(raw_value.as_bytes(), &encode_component(&v));
                    Some(v)
                }
                Cow::Borrowed(_) => None,
            }
        };
        match new_value {
            Some(v) => {
                changed = true;
                out.push_str(&encode_component(&v));
            }
            None => out.push_str(raw_value),
        }
    }
    changed.then_some(out)
}

/// Mask a request target (origin or absolute form) or a URL header value: path segments
/// through the detectors, the query through `query:` rules and the detectors.
pub(crate) fn mask_target<'a>(m: &Pass<'_>, target: &'a str) -> Cow<'a, str> {
    let (before_fragment, fragment) = match target.split_once('#') {
        Some((b, f)) => (b, Some(f)),
        None => (target, None),
    };
    let (path, query) = match before_fragment.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (before_fragment, None),
    };
    let new_path = mask_path(m, path);
    let new_query = query.and_then(|q| mask_pairs(m, q, &m.query_names, MaskKind::Query));
    let new_fragment = fragment.map(|f| m.mask_str(f));
    let fragment_changed = matches!(new_fragment, Some(Cow::Owned(_)));
    if new_path.is_none() && new_query.is_none() && !fragment_changed {
        return Cow::Borrowed(target);
    }
    let mut out = String::with_capacity(target.len() + 32);
    out.push_str(new_path.as_deref().unwrap_or(path));
    if let Some(q) = query {
        out.push('?');
        out.push_str(new_query.as_deref().unwrap_or(q));
    }
    if let Some(f) = new_fragment {
        out.push('#');
        out.push_str(&f);
    }
    Cow::Owned(out)
}

fn mask_path(m: &Pass<'_>, path: &str) -> Option<String> {
    let mut out = String::new();
    let mut changed = false;
    for (i, seg) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        let decoded = percent_decode_str(seg).decode_utf8_lossy();
        match m.mask_str(&decoded) {
            Cow::Owned(s) => {
                changed = true;
                out.extend(utf8_percent_encode(&s, PATH_SEGMENT));
            }
            Cow::Borrowed(_) => out.push_str(seg),
        }
    }
    changed.then_some(out)
}

/// Characters that end a URL-encoded run inside free text.
fn ends_run(c: char) -> bool {
    c.is_whitespace()
        || matches!(
            c,
            '&' | '=' | '?' | '"' | '\'' | '<' | '>' | ',' | ';' | '#'
        )
}

/// Percent-encoded runs of text (`phone=%2B1-202-555-0147` inside a URL in a body, a
/// log line, a header): each run holding a `%XX` escape is decoded (`+` as a space) and
/// run through the detectors; a run with a finding is replaced by the form-encoding of
/// its masked text. `None` when nothing changed.
pub(crate) fn mask_encoded_runs(m: &Pass<'_>, s: &str) -> Option<String> {
    let mut out = String::new();
    let mut copied = 0;
    let mut start = 0;
    let flush = |start: usize, end: usize, out: &mut String, copied: &mut usize| {
        let run = &s[start..end];
        if !has_escape(run) {
            return;
        }
        let decoded = decode_component(run);
        if let Cow::Owned(masked) = m.detect_str(&decoded) {
            out.push_str(&s[*copied..start]);
            out.push_str(&encode_component(&masked));
            *copied = end;
        }
    };
    for (i, c) in s.char_indices() {
        if ends_run(c) {
            flush(start, i, &mut out, &mut copied);
            start = i + c.len_utf8();
        }
    }
    flush(start, s.len(), &mut out, &mut copied);
    if copied == 0 {
        return None;
    }
    out.push_str(&s[copied..]);
    Some(out)
}

fn has_escape(run: &str) -> bool {
    run.as_bytes()
        .windows(3)
        .any(|w| w[0] == b'%' && w[1].is_ascii_hexdigit() && w[2].is_ascii_hexdigit())
}
