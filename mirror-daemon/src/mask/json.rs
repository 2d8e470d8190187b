//! JSON masking that preserves the document byte for byte except the masked values.
//!
//! Re-serializing a parsed tree would change whitespace, escapes and number spelling, so a
//! masked legacy response would differ from a candidate response that merely echoes the
//! masked request. Instead the document is scanned once and only the spans of masked
//! strings/numbers are rewritten. Key order is untouched.
//!
//! One pass does both jobs a validation pass and a scan did before: the scanner accepts
//! exactly what serde_json accepts (the RFC 8259 grammar, no trailing characters) and
//! whose every string decodes to a Rust `String` (no lone surrogate escapes); anything
//! else is [`Invalid`] and the caller falls back to text masking (the values masked
//! before the scan found the error are then neither counted nor tainted: as before,
//! when a validation pass came first). While it looks for a
//! string's closing quote it takes the string's character profile, which decides which
//! detectors can match, so a string is read once. Containers are tracked on an explicit
//! stack (no recursion), at most [`MAX_DEPTH`] deep: a deeper document is [`Invalid`].
use std::borrow::Cow;

use super::Pass;
use super::detect::{PiiKind, Profile};
use super::rules::{Child, JsonPath};
use super::secret::{is_secret_name, mask_named};
use super::stats::MaskKind;
use super::token::is_masked_value;

/// The input is not (scannable) JSON; the caller falls back to text masking.
#[derive(Debug)]
pub(crate) struct Invalid;

/// Containers open at once at most. Bounds the scanner's stack (and its path states)
/// on hostile input; real documents nest a few dozen levels. (serde_json's own tree
/// parser stops at 128; its validation pass, used before, had no limit, and the
/// recursive scan that followed it could overflow the thread's stack.)
pub(crate) const MAX_DEPTH: usize = 4096;

/// Mask `src`; `Ok(None)` when nothing changed.
pub(crate) fn mask_json(
    m: &Pass<'_>,
    paths: &[JsonPath],
    src: &str,
) -> Result<Option<String>, Invalid> {
    mask_json_value(m, paths, src).map(|(masked, _)| masked)
}

/// Containers serde_json's `Value` parser opens at most (its recursion limit of 128).
const VALUE_MAX_DEPTH: usize = 127;

/// Integer digits a number may have before the `Value` parser's f64 range matters.
const VALUE_SAFE_INTEGER_DIGITS: usize = 300;

/// [`mask_json`], and whether the output (`src` when unchanged) is a document that
/// serde_json reads as a `Value`, as `compare::scan::check` would find. `true` only when
/// that follows from what the scan saw, rule by rule: the input is JSON as serde_json
/// reads it (the scan's own acceptance); at most [`VALUE_MAX_DEPTH`] containers nested
/// (empty ones included); no number whose f64 range serde_json would have to check (an
/// exponent, or over [`VALUE_SAFE_INTEGER_DIGITS`] integer digits); and every
/// replacement a JSON string literal ([`json_string`]), so no number was rewritten as
/// digits (a card token). Otherwise `false`, and the comparator checks the text itself.
pub(crate) fn mask_json_value(
    m: &Pass<'_>,
    paths: &[JsonPath],
    src: &str,
) -> Result<(Option<String>, bool), Invalid> {
    let mut states = Vec::new();
    let mut root_masked = false;
    for (r, p) in paths.iter().enumerate() {
        if p.steps.is_empty() {
            root_masked = true;
        } else {
            states.push((r, 0usize));
        }
    }
    let n = states.len();
    let mut s = Scan {
        m,
        paths,
        src,
        b: src.as_bytes(),
        pos: 0,
        out: String::new(),
        copied: 0,
        states,
        frames: Vec::new(),
        key_buf: String::new(),
        value_buf: String::new(),
        keys: KeyMemo {
            slots: [KeySlot::default(); KEY_SLOTS],
        },
        deepest: 0,
        value_unsure: false,
    };
    let root = Ctx {
        lo: 0,
        hi: n,
        masked: root_masked,
    };
    m.all_or_nothing(|| s.document(root))?;
    let value = !s.value_unsure && s.deepest <= VALUE_MAX_DEPTH;
    if s.copied == 0 {
        return Ok((None, value));
    }
    s.out.push_str(&src[s.copied..]);
    Ok((Some(s.out), value))
}

/// Where a value sits: its active path states `states[lo..hi]`, and whether a rule
/// (or a secret name) masks it whole.
#[derive(Clone, Copy, Debug)]
struct Ctx {
    lo: usize,
    hi: usize,
    masked: bool,
}

/// An open object or array.
#[derive(Clone, Copy, Debug)]
struct Frame {
    object: bool,
    /// The container's own context (its children's states descend from it).
    ctx: Ctx,
    /// The index of the array element being read.
    index: usize,
    /// `states.len()` when it opened: a child's states are dropped back to it.
    base: usize,
}

/// A string's span (quotes included), whether it has escapes, and the profile of its
/// text when it has none.
#[derive(Clone, Copy)]
struct Str {
    start: usize,
    end: usize,
    escaped: bool,
    profile: Profile,
}

struct Scan<'a, 'm> {
    m: &'m Pass<'m>,
    paths: &'m [JsonPath],
    src: &'a str,
    b: &'a [u8],
    pos: usize,
    out: String,
    /// `src[..copied]` has been moved to `out` (0: nothing rewritten yet).
    copied: usize,
    /// Active path-matching states (path index, next step), a stack of frames.
    states: Vec<(usize, usize)>,
    frames: Vec<Frame>,
    /// Decoded text of the current escaped key / string value (reused, no allocation
    /// per string).
    key_buf: String,
    value_buf: String,
    keys: KeyMemo,
    /// The most containers open at once, the one being opened included (for
    /// [`mask_json_value`]).
    deepest: usize,
    /// Something the `Value` parser checks beyond the scan's grammar was seen, or a
    /// replacement that is not a string literal was written (see [`mask_json_value`]).
    value_unsure: bool,
}

/// Keys met earlier in the document (arrays of objects repeat theirs) that the
/// detectors left unchanged, and whether each names a secret: a key met again skips
/// both checks. Only keys without escapes; a slot holds the key's first eight bytes and
/// the span of its first occurrence in the text (for longer keys), so nothing is
/// copied. Open addressing, two probes.
struct KeyMemo {
    slots: [KeySlot; KEY_SLOTS],
}

#[derive(Clone, Copy, Default)]
struct KeySlot {
    /// The key's first (up to) eight bytes, little-endian, zero-padded.
    word: u64,
    start: u32,
    /// Length + 1 (0: an empty slot).
    len1: u32,
    secret: bool,
}

const KEY_SLOTS: usize = 128;

impl KeyMemo {
    /// The first (up to) eight bytes of `src[start..start + len]` as a number.
    #[inline(always)]
    fn word(src: &[u8], start: usize, len: usize) -> u64 {
        let n = len.min(8);
        let x = match src.get(start..start + 8) {
            Some(w) => <[u8; 8]>::try_from(w).map_or(0, u64::from_le_bytes),
            None => {
                let mut b = [0u8; 8];
                b[..n].copy_from_slice(&src[start..start + n]);
                u64::from_le_bytes(b)
            }
        };
        if n == 8 {
            x
        } else {
            x & ((1u64 << (8 * n)) - 1)
        }
    }

    #[inline(always)]
    fn slot(word: u64, len: usize) -> usize {
        let x = word ^ (len as u64).rotate_right(8);
        (x.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 57) as usize % KEY_SLOTS
    }

    /// Whether the key `src[start..start + len]` names a secret, when it was met
    /// before.
    #[inline(always)]
    fn get(&self, src: &[u8], start: usize, len: usize) -> Option<bool> {
        let word = Self::word(src, start, len);
        let i = Self::slot(word, len);
        for probe in [i, (i + 1) % KEY_SLOTS] {
            let e = self.slots[probe];
            if e.word == word
                && e.len1 as usize == len + 1
                && (len <= 8 || {
                    let at = e.start as usize;
                    src.get(at + 8..at + len) == src.get(start + 8..start + len)
                })
            {
                return Some(e.secret);
            }
        }
        None
    }

    fn put(&mut self, src: &[u8], start: usize, len: usize, secret: bool) {
        let (Ok(start32), Ok(len1)) = (u32::try_from(start), u32::try_from(len + 1)) else {
            return;
        };
        let word = Self::word(src, start, len);
        let i = Self::slot(word, len);
        let probe = if self.slots[i].len1 == 0 {
            i
        } else {
            (i + 1) % KEY_SLOTS
        };
        self.slots[probe] = KeySlot {
            word,
            start: start32,
            len1,
            secret,
        };
    }
}

impl<'a> Scan<'a, '_> {
    #[inline(always)]
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.b.get(self.pos) {
            self.pos += 1;
        }
    }

    #[inline(always)]
    fn peek(&self) -> Result<u8, Invalid> {
        self.b.get(self.pos).copied().ok_or(Invalid)
    }

    /// Replace `src[start..end]` with `with`.
    fn emit(&mut self, start: usize, end: usize, with: &str) {
        if self.out.capacity() == 0 {
            self.out.reserve(self.src.len() + 64);
        }
        self.out.push_str(&self.src[self.copied..start]);
        self.out.push_str(with);
        self.copied = end;
    }

    /// The whole text: one value, then only whitespace.
    fn document(&mut self, root: Ctx) -> Result<(), Invalid> {
        let mut ctx = root;
        'value: loop {
            // A value in `ctx`; a container pushes a frame and goes on with its first
            // child, a scalar is masked in place.
            self.ws();
            match self.peek()? {
                open @ (b'{' | b'[') => {
                    self.pos += 1;
                    self.deepest = self.deepest.max(self.frames.len() + 1);
                    self.ws();
                    let object = open == b'{';
                    let close = if object { b'}' } else { b']' };
                    if self.peek()? == close {
                        self.pos += 1;
                    } else {
                        if self.frames.len() == MAX_DEPTH {
                            return Err(Invalid);
                        }
                        self.frames.push(Frame {
                            object,
                            ctx,
                            index: 0,
                            base: self.states.len(),
                        });
                        let first = if object {
                            self.member(ctx)?
                        } else {
                            Some(self.child(ctx, Child::Index(0)))
                        };
                        if let Some(c) = first {
                            ctx = c;
                            continue 'value;
                        }
                    }
                }
                b'"' => self.string_value(ctx.masked)?,
                b't' => self.literal(b"true")?,
                b'f' => self.literal(b"false")?,
                b'n' => self.literal(b"null")?,
                _ => self.number(ctx.masked)?,
            }
            // A value is complete: close the containers that end here, and go on with
            // the next member or element of the innermost one that does not.
            loop {
                let Some(&f) = self.frames.last() else {
                    self.ws();
                    return if self.pos == self.b.len() {
                        Ok(())
                    } else {
                        Err(Invalid)
                    };
                };
                self.states.truncate(f.base);
                self.ws();
                match (self.peek()?, f.object) {
                    (b',', true) => {
                        self.pos += 1;
                        if let Some(c) = self.member(f.ctx)? {
                            ctx = c;
                            continue 'value;
                        }
                    }
                    (b',', false) => {
                        self.pos += 1;
                        let index = f.index + 1;
                        if let Some(top) = self.frames.last_mut() {
                            top.index = index;
                        }
                        ctx = self.child(f.ctx, Child::Index(index));
                        continue 'value;
                    }
                    (b'}', true) | (b']', false) => {
                        self.pos += 1;
                        self.frames.pop();
                    }
                    _ => return Err(Invalid),
                }
            }
        }
    }

    /// The context of a child of a container in `ctx`: pushes the child's path states
    /// and says whether a path ends on it.
    #[inline(always)]
    fn child(&mut self, ctx: Ctx, child: Child<'_>) -> Ctx {
        if ctx.masked || ctx.lo == ctx.hi {
            let at = self.states.len();
            return Ctx {
                lo: at,
                hi: at,
                masked: ctx.masked,
            };
        }
        self.descend(ctx, child)
    }

    /// [`Scan::child`] under active path states.
    fn descend(&mut self, ctx: Ctx, child: Child<'_>) -> Ctx {
        let at = self.states.len();
        let mut hit = false;
        for i in ctx.lo..ctx.hi {
            let (r, p) = self.states[i];
            let steps = &self.paths[r].steps;
            let step = &steps[p];
            if step.descendant {
                self.states.push((r, p));
            }
            if step.sel.matches(child) {
                if p + 1 == steps.len() {
                    hit = true;
                } else {
                    self.states.push((r, p + 1));
                }
            }
        }
        Ctx {
            lo: at,
            hi: self.states.len(),
            masked: hit,
        }
    }

    /// One member of an object in `ctx`, from its key (masked: keys can be PII, maps
    /// keyed by email; detectors only, no rules) to its value: the value's context, or
    /// `None` when the value was read already (a string under a secret name).
    #[inline(always)]
    fn member(&mut self, ctx: Ctx) -> Result<Option<Ctx>, Invalid> {
        self.ws();
        // A key's profile is only needed when it is not in the memo: its end is found
        // without one.
        if self.peek()? != b'"' {
            return Err(Invalid);
        }
        let start = self.pos;
        let end = Profile::json_string_end(self.b, start).ok_or(Invalid)?;
        self.pos = end.end;
        let k = Str {
            start,
            end: end.end,
            escaped: end.escaped,
            profile: Profile::default(),
        };
        let mut key_buf = std::mem::take(&mut self.key_buf);
        let key: &str = if k.escaped {
            decode_into(self.text(&k), &mut key_buf)?;
            &key_buf
        } else {
            self.text(&k)
        };
        let memo = if k.escaped {
            None
        } else {
            self.keys.get(self.b, k.start + 1, key.len())
        };
        let secret = match memo {
            Some(secret) => secret,
            None => {
                let masked_key = self.m.mask_str(key);
                let secret = is_secret_name(key);
                match masked_key {
                    Cow::Owned(masked_key) => self.emit(k.start, k.end, &json_string(&masked_key)),
                    Cow::Borrowed(_) if !k.escaped => {
                        self.keys.put(self.b, k.start + 1, key.len(), secret);
                    }
                    Cow::Borrowed(_) => {}
                }
                secret
            }
        };
        self.ws();
        if self.peek()? != b':' {
            return Err(Invalid);
        }
        self.pos += 1;
        // Secret by name (`"password"`, `"Authorization"`, `"access_token"`…).
        let r = if !ctx.masked && secret {
            self.secret_value(key)
        } else {
            Ok(Some(self.child(ctx, Child::Key(key))))
        };
        self.key_buf = key_buf;
        r
    }

    /// The value of a secret-named key: a string is masked as the header of that name
    /// would be (scheme and cookie names kept), anything else wholly.
    fn secret_value(&mut self, key: &str) -> Result<Option<Ctx>, Invalid> {
        self.ws();
        if self.peek()? != b'"' {
            let at = self.states.len();
            return Ok(Some(Ctx {
                lo: at,
                hi: at,
                masked: true,
            }));
        }
        let v = self.string()?;
        let mut value_buf = std::mem::take(&mut self.value_buf);
        let r = self
            .value_text(&v, &mut value_buf)
            .map(|text| mask_named(self.m, key, text).map(|masked| json_string(&masked)));
        self.value_buf = value_buf;
        if let Some(with) = r? {
            self.emit(v.start, v.end, &with);
        }
        Ok(None)
    }

    /// The string at `pos`; `pos` moves past it.
    #[inline(always)]
    fn string(&mut self) -> Result<Str, Invalid> {
        if self.peek()? != b'"' {
            return Err(Invalid);
        }
        let start = self.pos;
        let (end, profile) = Profile::scan_json_string(self.b, start).ok_or(Invalid)?;
        self.pos = end.end;
        Ok(Str {
            start,
            end: end.end,
            escaped: end.escaped,
            profile,
        })
    }

    /// The raw text between the quotes.
    #[inline(always)]
    fn text(&self, s: &Str) -> &'a str {
        let src: &'a str = self.src;
        // Quotes are ASCII, so both ends are character boundaries.
        &src[s.start + 1..s.end - 1]
    }

    /// The decoded text of `s` (in `buf` when it has escapes).
    #[inline(always)]
    fn value_text<'b>(&self, s: &Str, buf: &'b mut String) -> Result<&'b str, Invalid>
    where
        'a: 'b,
    {
        if s.escaped {
            decode_into(self.text(s), buf)?;
            Ok(buf)
        } else {
            Ok(self.text(s))
        }
    }

    #[inline(always)]
    fn string_value(&mut self, masked: bool) -> Result<(), Invalid> {
        let v = self.string()?;
        let mut buf = std::mem::take(&mut self.value_buf);
        let r = self.value_text(&v, &mut buf).map(|text| {
            if masked {
                (!is_masked_value(text.as_bytes()))
                    .then(|| json_string(&self.m.rule_value(text.as_bytes(), MaskKind::Json)))
            } else {
                let masked = if v.escaped {
                    self.m.mask_str(text)
                } else {
                    self.m.mask_str_profiled(text, &v.profile)
                };
                match masked {
                    Cow::Owned(t) => Some(json_string(&t)),
                    Cow::Borrowed(_) => None,
                }
            }
        });
        self.value_buf = buf;
        if let Some(with) = r? {
            self.emit(v.start, v.end, &with);
        }
        Ok(())
    }

    /// `true`, `false` or `null` (never masked).
    #[inline(always)]
    fn literal(&mut self, word: &[u8]) -> Result<(), Invalid> {
        if !self.b[self.pos..].starts_with(word) {
            return Err(Invalid);
        }
        self.pos += word.len();
        Ok(())
    }

    /// A number (JSON's grammar: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`).
    /// At a masked path it becomes a generic token *string* (a masked number would be
    /// re-masked differently when a candidate echoes it; a token string is stable). A
    /// bare card number stays a number.
    #[inline(always)]
    fn number(&mut self, masked: bool) -> Result<(), Invalid> {
        let start = self.pos;
        if self.b.get(self.pos) == Some(&b'-') {
            self.pos += 1;
        }
        let int_start = self.pos;
        match self.b.get(self.pos) {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(Invalid),
        }
        if self.pos - int_start > VALUE_SAFE_INTEGER_DIGITS {
            self.value_unsure = true;
        }
        if self.b.get(self.pos) == Some(&b'.') {
            self.pos += 1;
            self.some_digits()?;
        }
        if let Some(b'e' | b'E') = self.b.get(self.pos) {
            self.value_unsure = true;
            self.pos += 1;
            if let Some(b'+' | b'-') = self.b.get(self.pos) {
                self.pos += 1;
            }
            self.some_digits()?;
        }
        let end = self.pos;
        let text = &self.src[start..end];
        if masked {
            let tok = self.m.rule_value(text.as_bytes(), MaskKind::Json);
            self.emit(start, end, &json_string(&tok));
        } else if self.m.detector.number_is_card(text) {
            let tok = self.m.detected_value(PiiKind::Card, text);
            // Redaction yields a placeholder string; a card token stays a valid number.
            let with = if tok.bytes().all(|c| c.is_ascii_digit()) {
                self.value_unsure = true;
                tok
            } else {
                json_string(&tok)
            };
            self.emit(start, end, &with);
        }
        Ok(())
    }

    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.b.get(self.pos) {
            self.pos += 1;
        }
    }

    /// At least one digit.
    fn some_digits(&mut self) -> Result<(), Invalid> {
        if !matches!(self.b.get(self.pos), Some(b'0'..=b'9')) {
            return Err(Invalid);
        }
        self.digits();
        Ok(())
    }
}

/// Decodes the text of a JSON string with escapes (between its quotes) into `out`, as
/// serde_json decodes it into a `String`: the escapes of RFC 8259, `\u` surrogates only
/// in pairs. (`raw` has no raw control character: the scanner checked.)
fn decode_into(raw: &str, out: &mut String) -> Result<(), Invalid> {
    out.clear();
    let b = raw.as_bytes();
    let mut i = 0;
    while let Some(off) = memchr::memchr(b'\\', &b[i..]) {
        // Up to the backslash (ASCII, so a character boundary).
        out.push_str(&raw[i..i + off]);
        i += off + 1;
        let c = match b.get(i).ok_or(Invalid)? {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let n = hex4(b, i + 1)?;
                i += 4;
                match n {
                    0xDC00..=0xDFFF => return Err(Invalid),
                    0xD800..=0xDBFF => {
                        // A leading surrogate: a trailing one must follow, escaped.
                        if b.get(i + 1..i + 3) != Some(b"\\u") {
                            return Err(Invalid);
                        }
                        let n2 = hex4(b, i + 3)?;
                        if !(0xDC00..=0xDFFF).contains(&n2) {
                            return Err(Invalid);
                        }
                        i += 6;
                        let c = 0x1_0000 + ((n - 0xD800) << 10) + (n2 - 0xDC00);
                        char::from_u32(c).ok_or(Invalid)?
                    }
                    _ => char::from_u32(n).ok_or(Invalid)?,
                }
            }
            _ => return Err(Invalid),
        };
        out.push(c);
        i += 1;
    }
    out.push_str(&raw[i..]);
    Ok(())
}

/// The four hex digits at `b[at..at + 4]`.
fn hex4(b: &[u8], at: usize) -> Result<u32, Invalid> {
    let digits = b.get(at..at + 4).ok_or(Invalid)?;
    let mut n = 0;
    for &d in digits {
        let v = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            b'A'..=b'F' => d - b'A' + 10,
            _ => return Err(Invalid),
        };
        n = n * 16 + u32::from(v);
    }
    Ok(n)
}

/// `s` as a JSON string literal.
pub(crate) fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    // Tokens never need escaping.
    if !s.bytes().any(|c| c < 0x20 || c == b'"' || c == b'\\') {
        out.push_str(s);
        out.push('"');
        return out;
    }
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
