//! Taint tracking within one exchange: every value masked out of the request is
//! remembered, and wherever an application echoes it back (response headers and bodies
//! of legacy, candidate and secondary alike) it is replaced by the same token.
//!
//! Applications rarely echo a value as it was sent: httpbin-like services put headers
//! in JSON (escaped), query values percent- or `+`-encoded, HTML pages entity-escape,
//! others base64-encode. So each value is expanded into its encoded forms, each mapped to
//! the *same encoding of its token*: legacy's echo of `v` then reads exactly like the
//! candidate's echo of the token it was sent, and the echo compares equal.
//!
//! One Aho-Corasick automaton (leftmost-longest, ASCII case-insensitive so `%2b` and
//! `%2B` both match) over all forms scans each body once. Bounded: at most
//! [`MAX_TAINTED_VALUES`] values of [`MIN_TAINT_LEN`]..=[`MAX_TAINT_LEN`] bytes.
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use super::token::SeededHash;

use aho_corasick::{
    AhoCorasick, AhoCorasickBuilder, AhoCorasickKind, Anchored, Input, MatchKind, StartKind,
};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};

/// Shorter values are not tracked: replacing every `on` or `42` in a response would
/// rewrite data the comparison needs.
pub const MIN_TAINT_LEN: usize = 4;
/// Forms shorter than this (a `dark` cookie) only match as a whole word, so that `1234`
/// is not cut out of `123456`.
const MIN_SUBSTRING_LEN: usize = 8;
/// Longer values are not tracked (bounds the automaton; a JWT is well below).
pub const MAX_TAINT_LEN: usize = 8 << 10;
/// At most this many values per exchange (the first ones masked win).
pub const MAX_TAINTED_VALUES: usize = 64;

/// Values masked out of one request, with their replacements; collected while masking
/// the request, then [`Taint::seal`]ed into the matcher used on the responses.
#[derive(Clone, Debug, Default)]
pub(crate) struct TaintSet {
    values: Vec<(Vec<u8>, String)>,
    /// Values not tracked (too short, too long, over the count).
    pub skipped: u64,
}

impl TaintSet {
    /// Remember that `value` was replaced by `replacement`.
    pub fn add(&mut self, value: &[u8], replacement: &str) {
        if value == replacement.as_bytes() || self.values.iter().any(|(v, _)| v == value) {
            return;
        }
        if value.len() < MIN_TAINT_LEN
            || value.len() > MAX_TAINT_LEN
            || self.values.len() >= MAX_TAINTED_VALUES
        {
            self.skipped += 1;
            return;
        }
        self.values.push((value.to_vec(), replacement.to_string()));
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Build the matcher over every encoded form of every value.
    #[cfg(test)]
    pub fn seal(self) -> Taint {
        if self.values.is_empty() {
            return Taint::default();
        }
        let n = self.values.len();
        Taint {
            matcher: build(self.values).map(Arc::new),
            values: n,
            memo: OnceLock::new(),
        }
    }

    /// [`TaintSet::seal`], reusing the matcher of an earlier exchange whose request had
    /// the same values in the same order (a client sends the same cookie and token on
    /// every request): building one costs far more than the exchange's other work.
    pub fn seal_cached(self, cache: &TaintCache) -> Taint {
        if self.values.is_empty() {
            return Taint::default();
        }
        let n = self.values.len();
        if let Some(m) = cache.get(&self.values) {
            return Taint {
                matcher: Some(m),
                values: n,
                memo: OnceLock::new(),
            };
        }
        let key = self.values.clone();
        let matcher = build(self.values).map(Arc::new);
        if let Some(m) = &matcher {
            cache.put(key, m.clone());
        }
        Taint {
            matcher,
            values: n,
            memo: OnceLock::new(),
        }
    }
}

/// Bytes of values and automata a [`TaintCache`] generation holds at most.
const CACHE_GENERATION_BYTES: usize = 4 << 20;
/// A matcher this large is not cached (a request with many long values).
const CACHE_MAX_ENTRY_BYTES: usize = 256 << 10;

type Values = Vec<(Vec<u8>, String)>;

/// Recently built matchers by the values they were built from, bounded in bytes: two
/// generations, the older dropped whole when the newer fills (a cheap approximation of
/// least-recently-used). Keys are request values an attacker chooses, so the maps hash
/// with a randomly seeded foldhash, not a fixed hash.
#[derive(Debug, Default)]
pub(crate) struct TaintCache {
    inner: Mutex<Generations>,
}

#[derive(Debug, Default)]
struct Generations {
    young: HashMap<Values, (Arc<Matcher>, usize), SeededHash>,
    young_bytes: usize,
    old: HashMap<Values, (Arc<Matcher>, usize), SeededHash>,
}

impl TaintCache {
    fn get(&self, values: &Values) -> Option<Arc<Matcher>> {
        let mut g = self.inner.lock().ok()?;
        if let Some((m, _)) = g.young.get(values) {
            return Some(m.clone());
        }
        let (k, (m, bytes)) = g.old.remove_entry(values)?;
        let found = m.clone();
        g.insert(k, m, bytes);
        Some(found)
    }

    fn put(&self, values: Values, m: Arc<Matcher>) {
        let bytes = m.ac.memory_usage()
            + values
                .iter()
                .map(|(v, t)| v.len() + t.len() + 48)
                .sum::<usize>();
        if bytes > CACHE_MAX_ENTRY_BYTES {
            return;
        }
        if let Ok(mut g) = self.inner.lock() {
            g.insert(values, m, bytes);
        }
    }
}

impl Generations {
    fn insert(&mut self, values: Values, m: Arc<Matcher>, bytes: usize) {
        if self.young_bytes + bytes > CACHE_GENERATION_BYTES {
            self.old = std::mem::take(&mut self.young);
            self.young_bytes = 0;
        }
        self.young_bytes += bytes;
        self.young.insert(values, (m, bytes));
    }
}

/// The matcher over every encoded form of every value (`None` if it cannot be built).
fn build(values: Values) -> Option<Matcher> {
    let mut patterns: Vec<Vec<u8>> = Vec::new();
    let mut replacements: Vec<(Vec<u8>, bool)> = Vec::new();
    // Longer values first: when two values share a form, the longer one's wins.
    let mut values = values;
    values.sort_by_key(|v| std::cmp::Reverse(v.0.len()));
    for (value, token) in &values {
        for (p, r) in forms(value, token.as_bytes()) {
            if p.len() < MIN_TAINT_LEN
                || p == r
                || patterns.iter().any(|q| q.eq_ignore_ascii_case(&p))
            {
                continue;
            }
            let whole_word = p.len() < MIN_SUBSTRING_LEN;
            patterns.push(p);
            replacements.push((r, whole_word));
        }
    }
    // Built once per set of values: a contiguous NFA builds in microseconds where a DFA
    // (what `auto` picks for few patterns) costs a millisecond, and scans nearly as
    // fast behind its prefilter.
    let ac = AhoCorasickBuilder::new()
        .kind(Some(AhoCorasickKind::ContiguousNFA))
        .match_kind(MatchKind::LeftmostLongest)
        .ascii_case_insensitive(true)
        .start_kind(StartKind::Both)
        .build(&patterns)
        .ok();
    let shortest = patterns.iter().map(Vec::len).min().unwrap_or(0);
    let starts = Starts::of(&patterns);
    ac.map(|ac| Matcher {
        ac,
        replacements,
        shortest,
        starts,
    })
}

/// The first two bytes of every pattern, ASCII case folded: a position whose two bytes
/// are not among them starts no match.
///
/// The automaton has no prefilter of its own here: with ASCII case folding, the
/// patterns' many first bytes (base64, percent and JSON forms of several values) leave
/// it none, and it walks every byte of every response through its states. This table
/// lets the scan skip to the positions where a match can start (a few percent of a
/// JSON body) and ask the automaton, anchored there, for the longest match.
///
/// Between those positions it skips as the Wu–Manber search does: every pattern is at
/// least `shortest` bytes long, so a match starting at `i` covers `hay[i..i + shortest]`
/// and its last two bytes are two consecutive bytes of some pattern's first `shortest`.
/// `shift[block]` is how far the window can move before such a pair could be its last
/// two bytes (0: it can be now); a window whose last pair has a shift `s > 0` starts no
/// match at any of the next `s` positions.
#[derive(Debug)]
struct Starts {
    /// Bit `a << 8 | b` is set when some pattern starts with the bytes `a`, `b`
    /// (lower-cased).
    pairs: Box<[u64; 1024]>,
    /// Byte `a` starts some pattern, in either case (indexed by the byte as it is, so
    /// the scan folds only where it looks at a pair).
    first: [bool; 256],
    /// Skip distance by the (lower-cased, hashed: [`block`]) last two bytes of the
    /// window; colliding pairs keep the smaller distance, which only skips less.
    shift: Box<[u8; SHIFT_BLOCKS]>,
    /// The shortest pattern's length (the window), at least 2; 0: no skipping.
    window: usize,
}

const SHIFT_BLOCKS: usize = 4096;

/// The shift table's slot of the two bytes `a`, `b` (lower-cased).
#[inline(always)]
fn block(a: u8, b: u8) -> usize {
    (usize::from(FOLD[usize::from(a)]) << 6 ^ usize::from(FOLD[usize::from(b)])) % SHIFT_BLOCKS
}

impl Starts {
    fn of(patterns: &[Vec<u8>]) -> Self {
        let shortest = patterns.iter().map(Vec::len).min().unwrap_or(0);
        let window = if shortest >= 2 { shortest } else { 0 };
        let mut s = Starts {
            pairs: Box::new([0; 1024]),
            first: [false; 256],
            shift: Box::new(
                [u8::try_from(window.saturating_sub(1)).unwrap_or(u8::MAX); SHIFT_BLOCKS],
            ),
            window,
        };
        for p in patterns {
            if window >= 2 {
                for j in 0..=window - 2 {
                    let slot = &mut s.shift[block(p[j], p[j + 1])];
                    let d = u8::try_from(window - 2 - j).unwrap_or(u8::MAX);
                    *slot = (*slot).min(d);
                }
            }
            // Every pattern has at least `MIN_TAINT_LEN` (4) bytes.
            if let [a, b, ..] = p[..] {
                let (a, b) = (a.to_ascii_lowercase(), b.to_ascii_lowercase());
                s.first[usize::from(a)] = true;
                s.first[usize::from(a.to_ascii_uppercase())] = true;
                let pair = usize::from(a) << 8 | usize::from(b);
                s.pairs[pair >> 6] |= 1 << (pair & 63);
            }
        }
        s
    }

    /// The first position at or after `from` where a pattern may start.
    #[inline]
    fn next(&self, hay: &[u8], from: usize) -> Option<usize> {
        if self.window >= 2 {
            return self.next_skipping(hay, from);
        }
        let end = hay.len().checked_sub(1)?;
        let start = from.min(end);
        // Over `hay[..end]`: every position with a byte after it.
        for (i, &c) in hay[start..end].iter().enumerate() {
            if self.first[usize::from(c)] {
                let i = start + i;
                let a = FOLD[usize::from(c)];
                let pair = usize::from(a) << 8 | usize::from(FOLD[usize::from(hay[i + 1])]);
                if self.pairs[pair >> 6] & 1 << (pair & 63) != 0 {
                    return Some(i);
                }
            }
        }
        None
    }

    /// [`Starts::next`] with windows of `self.window` bytes skipped by `self.shift`.
    #[inline]
    fn next_skipping(&self, hay: &[u8], from: usize) -> Option<usize> {
        let w = self.window;
        let mut i = from;
        // A match starting at `i` ends at `i + w` or later.
        while let Some(&[a, b]) = hay.get(i + w - 2..i + w) {
            let s = self.shift[block(a, b)];
            if s > 0 {
                i += usize::from(s);
                continue;
            }
            let c = hay[i];
            if self.first[usize::from(c)] {
                let pair = usize::from(FOLD[usize::from(c)]) << 8
                    | usize::from(FOLD[usize::from(hay[i + 1])]);
                if self.pairs[pair >> 6] & 1 << (pair & 63) != 0 {
                    return Some(i);
                }
            }
            i += 1;
        }
        None
    }
}

/// ASCII lower case of every byte.
const FOLD: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut c = 0;
    while c < 256 {
        t[c] = (c as u8).to_ascii_lowercase();
        c += 1;
    }
    t
};

/// The sealed taint of one exchange: apply it to each response with [`Taint::replace`].
#[derive(Debug, Default)]
pub struct Taint {
    matcher: Option<Arc<Matcher>>,
    values: usize,
    /// The first response body masked with this taint (legacy's), for a later response
    /// of the exchange with the same bytes (see `reuse.rs`).
    memo: OnceLock<Box<super::reuse::BodyMemo>>,
}

#[derive(Debug)]
struct Matcher {
    ac: AhoCorasick,
    /// Per pattern: its replacement, and whether it must stand as a whole word.
    replacements: Vec<(Vec<u8>, bool)>,
    /// The shortest pattern's length: shorter text (most header values) holds no echo.
    shortest: usize,
    starts: Starts,
}

impl Matcher {
    /// The leftmost-longest matches in `hay`, left to right, not overlapping: what
    /// `ac.find_iter(hay)` yields, with the automaton run only where [`Starts`] says a
    /// match may begin (anchored there, the longest match starting at that position).
    fn matches<'h>(&'h self, hay: &'h [u8]) -> impl Iterator<Item = aho_corasick::Match> + 'h {
        let mut at = 0;
        std::iter::from_fn(move || {
            while let Some(i) = self.starts.next(hay, at) {
                let input = Input::new(hay).range(i..).anchored(Anchored::Yes);
                match self.ac.try_find(input) {
                    Ok(Some(m)) => {
                        at = m.end();
                        return Some(m);
                    }
                    Ok(None) => at = i + 1,
                    // Anchored searches are enabled (`StartKind::Both`); should one
                    // fail, the plain scan takes over from here.
                    Err(_) => {
                        let m = self.ac.find(Input::new(hay).range(i..))?;
                        at = m.end();
                        return Some(m);
                    }
                }
            }
            None
        })
    }
}

impl Taint {
    /// No value to look for.
    pub fn is_empty(&self) -> bool {
        self.matcher.is_none()
    }

    /// How many request values are tracked.
    pub fn values(&self) -> usize {
        self.values
    }

    /// The body memo of the first response masked with this taint.
    pub(crate) fn memo(&self) -> Option<&super::reuse::BodyMemo> {
        self.memo.get().map(|b| &**b)
    }

    /// Legacy's body as the masker left it, when the masking scan found it a JSON
    /// document as serde_json reads a `Value`, byte for byte (see
    /// `reuse::BodyMemo::value_json_body`): what `Comparator::compare_known` takes.
    pub fn value_json_body(&self) -> Option<&[u8]> {
        self.memo()?.value_json_body()
    }

    /// Keeps `memo` unless one is kept already (the first response wins).
    pub(crate) fn remember(&self, memo: super::reuse::BodyMemo) {
        let _ = self.memo.set(Box::new(memo));
    }

    /// `hay` with every echoed form replaced; borrowed when nothing was found.
    pub(crate) fn replace<'a>(&self, hay: &'a [u8]) -> (Cow<'a, [u8]>, u64) {
        let Some(m) = self.matcher.as_ref().filter(|m| hay.len() >= m.shortest) else {
            return (Cow::Borrowed(hay), 0);
        };
        let mut found = 0u64;
        let mut out: Vec<u8> = Vec::new();
        let mut last = 0;
        for hit in m.matches(hay) {
            let (with, whole_word) = &m.replacements[hit.pattern().as_usize()];
            if *whole_word && !stands_alone(hay, hit.start(), hit.end()) {
                continue;
            }
            if found == 0 {
                out.reserve(hay.len() + 32);
            }
            found += 1;
            out.extend_from_slice(&hay[last..hit.start()]);
            out.extend_from_slice(with);
            last = hit.end();
        }
        if found == 0 {
            return (Cow::Borrowed(hay), 0);
        }
        out.extend_from_slice(&hay[last..]);
        (Cow::Owned(out), found)
    }
}

/// `hay[start..end]` is not glued to letters or digits.
fn stands_alone(hay: &[u8], start: usize, end: usize) -> bool {
    let word = |c: Option<&u8>| c.is_some_and(u8::is_ascii_alphanumeric);
    !word(start.checked_sub(1).and_then(|i| hay.get(i))) && !word(hay.get(end))
}

/// `(form of value, same form of token)` for each encoding an echo may use.
fn forms(value: &[u8], token: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let both = |f: &dyn Fn(&[u8]) -> Vec<u8>| (f(value), f(token));
    vec![
        (value.to_vec(), token.to_vec()),
        // Query/form encodings: `+` for space (forms, Python, Go) or `%20`, and the
        // JavaScript `encodeURIComponent` set.
        both(&|b| {
            form_urlencoded::byte_serialize(b)
                .collect::<String>()
                .into_bytes()
        }),
        both(&|b| percent(b, b"-._~")),
        both(&|b| percent(b, b"-._~!*'()")),
        both(&|b| percent(b, b"-._~/")),
        // JSON string escapes: minimal, with `\/`, and ASCII-only (`\uXXXX` for non-ASCII
        // and Go's `<>&`).
        both(&|b| json_escape(b, JsonStyle::Minimal)),
        both(&|b| json_escape(b, JsonStyle::Slash)),
        both(&|b| json_escape(b, JsonStyle::Ascii)),
        // HTML: named entities, and numeric ones as templates write them.
        both(&|b| html_escape(b, false)),
        both(&|b| html_escape(b, true)),
        // base64 of the whole value, standard and URL-safe, with and without padding.
        both(&|b| STANDARD.encode(b).into_bytes()),
        both(&|b| STANDARD_NO_PAD.encode(b).into_bytes()),
        both(&|b| URL_SAFE.encode(b).into_bytes()),
        both(&|b| URL_SAFE_NO_PAD.encode(b).into_bytes()),
    ]
}

/// Percent-encode every byte except ASCII alphanumerics and `keep`.
fn percent(b: &[u8], keep: &[u8]) -> Vec<u8> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = Vec::with_capacity(b.len() * 3);
    for &c in b {
        if c.is_ascii_alphanumeric() || keep.contains(&c) {
            out.push(c);
        } else {
            out.extend_from_slice(&[b'%', HEX[usize::from(c >> 4)], HEX[usize::from(c & 15)]]);
        }
    }
    out
}

#[derive(Clone, Copy)]
enum JsonStyle {
    Minimal,
    Slash,
    Ascii,
}

fn json_escape(b: &[u8], style: JsonStyle) -> Vec<u8> {
    let s = String::from_utf8_lossy(b);
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '/' if matches!(style, JsonStyle::Slash) => out.push_str("\\/"),
            '<' | '>' | '&' if matches!(style, JsonStyle::Ascii) => {
                out.push_str(&format!("\\u{:04x}", u32::from(c)));
            }
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c if !c.is_ascii() && matches!(style, JsonStyle::Ascii) => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{u:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.into_bytes()
}

/// `numeric`: `&#34;`/`&#39;`/`&#43;` as Go's html/template writes them; otherwise the
/// named entities and `&#39;` (Python's `html.escape`).
fn html_escape(b: &[u8], numeric: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len() + 8);
    for &c in b {
        let e: &[u8] = match (c, numeric) {
            (b'&', _) => b"&amp;",
            (b'<', _) => b"&lt;",
            (b'>', _) => b"&gt;",
            (b'"', false) => b"&quot;",
            (b'"', true) => b"&#34;",
            (b'\'', _) => b"&#39;",
            (b'+', true) => b"&#43;",
            _ => {
                out.push(c);
                continue;
            }
        };
        out.extend_from_slice(e);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "tok_0123456789abcdef";

    fn taint(value: &str) -> Taint {
        let mut t = TaintSet::default();
        t.add(value.as_bytes(), TOKEN);
        t.seal()
    }

    fn replaced(t: &Taint, hay: &str) -> String {
        String::from_utf8(t.replace(hay.as_bytes()).0.into_owned()).unwrap()
    }

    #[test]
    fn a_cached_matcher_is_reused_for_the_same_values_only() {
        let cache = TaintCache::default();
        let set = |v: &str| {
            let mut t = TaintSet::default();
            t.add(v.as_bytes(), TOKEN);
            t
        };
        let first = set("s3cr3t-Value").seal_cached(&cache);
        let again = set("s3cr3t-Value").seal_cached(&cache);
        let other = set("another-secret").seal_cached(&cache);
        let (Some(a), Some(b), Some(c)) = (&first.matcher, &again.matcher, &other.matcher) else {
            panic!("every set has a matcher");
        };
        assert!(Arc::ptr_eq(a, b));
        assert!(!Arc::ptr_eq(a, c));
        let hay = "Bearer s3cr3t-Value and another-secret";
        assert_eq!(replaced(&again, hay), replaced(&taint("s3cr3t-Value"), hay));
        assert_eq!(
            replaced(&other, hay),
            format!("Bearer s3cr3t-Value and {TOKEN}")
        );
    }

    #[test]
    fn raw_echo_is_replaced() {
        let t = taint("s3cr3t-Value");
        assert_eq!(
            replaced(&t, r#"{"auth":"Bearer s3cr3t-Value"}"#),
            format!(r#"{{"auth":"Bearer {TOKEN}"}}"#)
        );
        // Case-insensitive: an application that upper-cases still leaks.
        assert_eq!(replaced(&t, "S3CR3T-VALUE"), TOKEN);
    }

    #[test]
    fn percent_and_plus_encoded_echoes_are_replaced() {
        let t = taint("+1-202-555-0147 x");
        assert_eq!(
            replaced(&t, "a=%2B1-202-555-0147+x&b"),
            format!("a={TOKEN}&b")
        );
        assert_eq!(
            replaced(&t, "a=%2b1-202-555-0147%20x"),
            format!("a={TOKEN}")
        );
        let t = taint("ana@example.com");
        // The token's own encoded form replaces the value's encoded form.
        let mut s = TaintSet::default();
        s.add(b"ana@example.com", "u-1@x.masked.invalid");
        let t2 = s.seal();
        assert_eq!(
            replaced(&t2, "?e=ana%40example.com"),
            "?e=u-1%40x.masked.invalid"
        );
        assert_eq!(replaced(&t, "ana%40example.com"), TOKEN);
    }

    #[test]
    fn json_escaped_echoes_are_replaced() {
        let t = taint(r#"pa"ss\wörd/1"#);
        for hay in [
            r#""pa\"ss\\wörd/1""#,
            r#""pa\"ss\\wörd\/1""#,
            r#""pa\"ss\\w\u00f6rd/1""#,
        ] {
            assert_eq!(replaced(&t, hay), format!("\"{TOKEN}\""), "{hay}");
        }
        let t = taint("a<b>&c=d");
        assert_eq!(replaced(&t, r"a\u003cb\u003e\u0026c=d"), TOKEN);
    }

    #[test]
    fn base64_echoes_are_replaced() {
        let t = taint("user:pa55w0rd?>~");
        let std = STANDARD.encode("user:pa55w0rd?>~");
        let url = URL_SAFE_NO_PAD.encode("user:pa55w0rd?>~");
        assert_ne!(std, url);
        assert_eq!(replaced(&t, &std), STANDARD.encode(TOKEN));
        assert_eq!(replaced(&t, &url), URL_SAFE_NO_PAD.encode(TOKEN));
    }

    #[test]
    fn html_escaped_echoes_are_replaced() {
        let t = taint("O'Brien & \"Sons\" +1");
        assert_eq!(
            replaced(&t, "<td>O&#39;Brien &amp; &quot;Sons&quot; +1</td>"),
            format!("<td>{TOKEN}</td>")
        );
        assert_eq!(
            replaced(&t, "O&#39;Brien &amp; &#34;Sons&#34; &#43;1"),
            TOKEN
        );
    }

    #[test]
    fn bounds_and_no_false_hits() {
        let mut s = TaintSet::default();
        s.add(b"abc", TOKEN);
        s.add(&vec![b'a'; MAX_TAINT_LEN + 1], TOKEN);
        assert!(s.is_empty());
        assert_eq!(s.skipped, 2);
        for i in 0..MAX_TAINTED_VALUES + 5 {
            s.add(format!("value-{i:04}").as_bytes(), TOKEN);
        }
        assert_eq!(s.len(), MAX_TAINTED_VALUES);
        assert_eq!(s.skipped, 7);
        let t = s.seal();
        assert_eq!(t.values(), MAX_TAINTED_VALUES);
        let hay = b"nothing to see here, value-99999 is not tracked";
        assert!(matches!(t.replace(hay).0, Cow::Borrowed(_)));
        assert!(Taint::default().replace(hay).1 == 0);
    }

    #[test]
    fn short_values_match_whole_words_only() {
        let t = taint("dark");
        assert_eq!(
            replaced(&t, "<td>dark</td> darker 1dark theme=dark"),
            format!("<td>{TOKEN}</td> darker 1dark theme={TOKEN}")
        );
    }

    #[test]
    fn longest_value_wins() {
        let mut s = TaintSet::default();
        s.add(b"abcdef", "tok_short");
        s.add(b"abcdefghij", "tok_long");
        let t = s.seal();
        assert_eq!(
            replaced(&t, "xabcdefghijx abcdef."),
            "xtok_longx tok_short."
        );
    }
}

#[cfg(test)]
mod prefilter {
    use super::*;
    use proptest::prelude::*;

    fn matcher(values: &[&str]) -> Matcher {
        let values = values
            .iter()
            .enumerate()
            .map(|(i, v)| (v.as_bytes().to_vec(), format!("tok_{i:016x}")))
            .collect();
        build(values).expect("a matcher")
    }

    fn hits(it: impl Iterator<Item = aho_corasick::Match>) -> Vec<(usize, usize, usize)> {
        it.map(|m| (m.start(), m.end(), m.pattern().as_usize()))
            .collect()
    }

    /// Echo forms of the values, case flipped, glued to each other and to noise.
    fn hay() -> impl Strategy<Value = Vec<u8>> {
        let part = prop_oneof![
            Just(b"eyJhbGciOiJIUzI1NiJ9.e30.c2ln".to_vec()),
            Just(b"ZXlKaGJHY2lPaUpJVXpJMU5pSjkuZTMwLmMybG4=".to_vec()),
            Just(b"7f3a9c2e51b84d0fa1c6".to_vec()),
            Just(b"7F3A9C2E51B84D0FA1C6".to_vec()),
            Just(b"session%3D7f3a9c2e51b84d0fa1c6%3B%20theme%3Ddark".to_vec()),
            Just(b"session=7f3a9c2e51b84d0fa1c6; theme=dark".to_vec()),
            Just(b"dark".to_vec()),
            Just(b"ana%40example.com".to_vec()),
            Just(b"ana\\u0040example.com".to_vec()),
            proptest::collection::vec(any::<u8>(), 0..12),
            "[ -~]{0,16}".prop_map(String::into_bytes),
        ];
        proptest::collection::vec(part, 0..10).prop_map(|p| p.concat())
    }

    #[test]
    fn finds_what_the_plain_scan_finds() {
        let m = matcher(&["s3cr3t-Value", "dark", "ana@example.com"]);
        let hay = b"x S3CR3T-VALUE dark darker s3cr3t-value%20 ana%40example.com";
        assert_eq!(hits(m.matches(hay)), hits(m.ac.find_iter(&hay[..])));
        assert_eq!(hits(m.matches(hay)).len(), 5);
        assert!(hits(m.matches(b"")).is_empty());
        assert!(hits(m.matches(b"d")).is_empty());
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

        /// The prefiltered scan yields exactly the automaton's own leftmost-longest,
        /// non-overlapping matches.
        #[test]
        fn prefiltered_scan_is_the_plain_scan(hay in hay()) {
            let m = matcher(&[
                "Bearer eyJhbGciOiJIUzI1NiJ9.e30.c2ln",
                "eyJhbGciOiJIUzI1NiJ9.e30.c2ln",
                "7f3a9c2e51b84d0fa1c6",
                "session=7f3a9c2e51b84d0fa1c6; theme=dark",
                "dark",
                "ana@example.com",
            ]);
            prop_assert_eq!(hits(m.matches(&hay)), hits(m.ac.find_iter(&hay[..])));
        }

        /// The same with long values only: the window is 12 bytes, the skips longer.
        #[test]
        fn skipping_scan_is_the_plain_scan(hay in hay()) {
            let m = matcher(&[
                "eyJhbGciOiJIUzI1NiJ9.e30.c2ln",
                "7f3a9c2e51b84d0fa1c6",
                "session=7f3a9c2e51b84d0fa1c6; theme=dark",
                "ana@example.com",
            ]);
            prop_assert!(m.starts.window >= 12, "{}", m.starts.window);
            prop_assert_eq!(hits(m.matches(&hay)), hits(m.ac.find_iter(&hay[..])));
        }
    }

    /// The skipping scan passes over no position where a pattern starts: from every
    /// position of a text with echoes, it stops at or before the first such position.
    #[test]
    fn skips_pass_over_no_start() {
        let m = matcher(&["7f3a9c2e51b84d0fa1c6", "ana@example.com", "dark"]);
        let hay = b"{\"a\":\"x7F3A9C2E51B84D0FA1C6\",\"b\":\"ANA%40EXAMPLE.COM dark darker\"}";
        for from in 0..hay.len() {
            let first_start = (from..hay.len()).find(|&i| {
                m.ac.try_find(Input::new(&hay[..]).range(i..).anchored(Anchored::Yes))
                    .ok()
                    .flatten()
                    .is_some()
            });
            let next = m.starts.next_skipping(hay, from);
            if let Some(s) = first_start {
                assert!(next.is_some_and(|n| n <= s), "from {from}: {next:?} > {s}");
            }
        }
    }
}

#[cfg(test)]
mod timing {
    use super::*;
    #[test]
    #[ignore = "timing"]
    fn seal_cost() {
        let vals: Vec<String> = (0..10)
            .map(|i| format!("secret-value-{i}-abcdefghij@example.com"))
            .collect();
        let n = 2000;
        let t = std::time::Instant::now();
        let mut k = 0;
        for _ in 0..n {
            for v in &vals {
                k += forms(v.as_bytes(), b"tok_0123456789abcdef").len();
            }
        }
        println!(
            "forms: {:.1} µs ({k})",
            t.elapsed().as_secs_f64() * 1e6 / n as f64
        );
        let mut pats = Vec::new();
        for v in &vals {
            for (p, _) in forms(v.as_bytes(), b"tok_0123456789abcdef") {
                pats.push(p);
            }
        }
        for kind in [
            AhoCorasickKind::NoncontiguousNFA,
            AhoCorasickKind::ContiguousNFA,
            AhoCorasickKind::DFA,
        ] {
            for ci in [true, false] {
                let t = std::time::Instant::now();
                for _ in 0..200 {
                    let _ = AhoCorasickBuilder::new()
                        .kind(Some(kind))
                        .match_kind(MatchKind::LeftmostLongest)
                        .ascii_case_insensitive(ci)
                        .build(&pats)
                        .unwrap();
                }
                println!(
                    "{kind:?} case-insensitive {ci}: {:.1} µs",
                    t.elapsed().as_secs_f64() * 1e6 / 200.0
                );
            }
            for pre in [true, false] {
                let t = std::time::Instant::now();
                for _ in 0..200 {
                    let _ = AhoCorasickBuilder::new()
                        .kind(Some(kind))
                        .prefilter(pre)
                        .match_kind(MatchKind::LeftmostLongest)
                        .ascii_case_insensitive(true)
                        .build(&pats)
                        .unwrap();
                }
                println!(
                    "{kind:?} prefilter {pre}: {:.1} µs ({} patterns)",
                    t.elapsed().as_secs_f64() * 1e6 / 200.0,
                    pats.len()
                );
            }
        }
        let t = std::time::Instant::now();
        for _ in 0..200 {
            let mut s = TaintSet::default();
            for v in &vals {
                s.add(v.as_bytes(), "tok_0123456789abcdef");
            }
            let _ = s.seal();
        }
        println!("seal: {:.1} µs", t.elapsed().as_secs_f64() * 1e6 / 200.0);
    }
}
