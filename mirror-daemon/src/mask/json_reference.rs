//! The JSON masking of rounds 1–3, kept as the straightforward reference the one-pass
//! scanner in `json.rs` is checked against (`tests::json_differential`): serde_json
//! validates the document, then a recursive scan masks it. Test-only: its recursion is
//! unbounded (a deeply nested document would overflow the stack), which `json.rs` fixes.
use std::borrow::Cow;

use super::Pass;
use super::detect::PiiKind;
use super::json::{Invalid, json_string};
use super::rules::{Child, JsonPath};
use super::secret::{is_secret_name, mask_named};
use super::stats::MaskKind;
use super::token::is_masked_value;

/// Mask `src`; `Ok(None)` when nothing changed.
pub(crate) fn mask_json(
    m: &Pass<'_>,
    paths: &[JsonPath],
    src: &str,
) -> Result<Option<String>, Invalid> {
    // Validation bounds the nesting depth (serde_json's recursion limit) for the
    // recursive scan below, and lets the scanner assume well-formed input.
    serde_json::from_str::<serde::de::IgnoredAny>(src).map_err(|_| Invalid)?;
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
    };
    s.value(0, n, root_masked)?;
    if s.copied == 0 {
        return Ok(None);
    }
    s.out.push_str(&src[s.copied..]);
    Ok(Some(s.out))
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
}

impl<'a> Scan<'a, '_> {
    fn ws(&mut self) {
        while self.pos < self.b.len() && matches!(self.b[self.pos], b' ' | b'\t' | b'\n' | b'\r') {
            self.pos += 1;
        }
    }

    fn peek(&self) -> Result<u8, Invalid> {
        self.b.get(self.pos).copied().ok_or(Invalid)
    }

    fn expect(&mut self, c: u8) -> Result<(), Invalid> {
        self.ws();
        if self.peek()? != c {
            return Err(Invalid);
        }
        self.pos += 1;
        Ok(())
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

    /// States for the child reached by `child` from the frame `lo..hi`; pushes a new
    /// frame and returns it, plus whether a path ends on the child.
    fn descend(&mut self, lo: usize, hi: usize, child: Child<'_>) -> (usize, usize, bool) {
        let base = self.states.len();
        let mut hit = false;
        for i in lo..hi {
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
        (base, self.states.len(), hit)
    }

    fn value(&mut self, lo: usize, hi: usize, masked: bool) -> Result<(), Invalid> {
        self.ws();
        match self.peek()? {
            b'{' => self.object(lo, hi, masked),
            b'[' => self.array(lo, hi, masked),
            b'"' => {
                let (start, end, escaped) = self.string()?;
                self.string_value(start, end, escaped, masked)
            }
            _ => self.scalar(masked),
        }
    }

    fn object(&mut self, lo: usize, hi: usize, masked: bool) -> Result<(), Invalid> {
        self.pos += 1;
        self.ws();
        if self.peek()? == b'}' {
            self.pos += 1;
            return Ok(());
        }
        loop {
            self.ws();
            let (start, end, escaped) = self.string()?;
            let key = self.decode(start, end, escaped)?;
            // Keys can be PII too (maps keyed by email); detectors only, no rules.
            if let Cow::Owned(k) = self.m.mask_str(&key) {
                self.emit(start, end, &json_string(&k));
            }
            self.expect(b':')?;
            // Secret by name (`"password"`, `"Authorization"`, `"access_token"`…).
            if !masked && is_secret_name(&key) {
                self.secret_value(&key)?;
            } else {
                let (clo, chi, hit) = if masked || lo == hi {
                    (self.states.len(), self.states.len(), false)
                } else {
                    self.descend(lo, hi, Child::Key(&key))
                };
                self.value(clo, chi, masked || hit)?;
                self.states.truncate(clo);
            }
            self.ws();
            match self.peek()? {
                b',' => self.pos += 1,
                b'}' => {
                    self.pos += 1;
                    return Ok(());
                }
                _ => return Err(Invalid),
            }
        }
    }

    /// The value of a secret-named key: a string is masked as the header of that name
    /// would be (scheme and cookie names kept), anything else wholly below.
    fn secret_value(&mut self, key: &str) -> Result<(), Invalid> {
        self.ws();
        if self.peek()? != b'"' {
            let at = self.states.len();
            return self.value(at, at, true);
        }
        let (start, end, escaped) = self.string()?;
        let text = self.decode(start, end, escaped)?;
        if let Some(v) = mask_named(self.m, key, &text) {
            self.emit(start, end, &json_string(&v));
        }
        Ok(())
    }

    fn array(&mut self, lo: usize, hi: usize, masked: bool) -> Result<(), Invalid> {
        self.pos += 1;
        self.ws();
        if self.peek()? == b']' {
            self.pos += 1;
            return Ok(());
        }
        let mut index = 0;
        loop {
            let (clo, chi, hit) = if masked || lo == hi {
                (self.states.len(), self.states.len(), false)
            } else {
                self.descend(lo, hi, Child::Index(index))
            };
            self.value(clo, chi, masked || hit)?;
            self.states.truncate(clo);
            index += 1;
            self.ws();
            match self.peek()? {
                b',' => self.pos += 1,
                b']' => {
                    self.pos += 1;
                    return Ok(());
                }
                _ => return Err(Invalid),
            }
        }
    }

    /// Span of the string at `pos` (quotes included) and whether it has escapes.
    fn string(&mut self) -> Result<(usize, usize, bool), Invalid> {
        let start = self.pos;
        if self.peek()? != b'"' {
            return Err(Invalid);
        }
        let mut i = start + 1;
        let mut escaped = false;
        loop {
            match self.b.get(i) {
                Some(b'"') => break,
                Some(b'\\') => {
                    escaped = true;
                    i += 2;
                }
                Some(_) => i += 1,
                None => return Err(Invalid),
            }
        }
        self.pos = i + 1;
        Ok((start, i + 1, escaped))
    }

    fn decode(&self, start: usize, end: usize, escaped: bool) -> Result<Cow<'a, str>, Invalid> {
        let src: &'a str = self.src;
        let raw = src.get(start..end).ok_or(Invalid)?;
        if escaped {
            serde_json::from_str::<String>(raw)
                .map(Cow::Owned)
                .map_err(|_| Invalid)
        } else {
            raw.get(1..raw.len() - 1).map(Cow::Borrowed).ok_or(Invalid)
        }
    }

    fn string_value(
        &mut self,
        start: usize,
        end: usize,
        escaped: bool,
        masked: bool,
    ) -> Result<(), Invalid> {
        let text = self.decode(start, end, escaped)?;
        if masked {
            if !is_masked_value(text.as_bytes()) {
                let tok = self.m.rule_value(text.as_bytes(), MaskKind::Json);
                self.emit(start, end, &json_string(&tok));
            }
        } else if let Cow::Owned(t) = self.m.mask_str(&text) {
            self.emit(start, end, &json_string(&t));
        }
        Ok(())
    }

    /// Numbers, `true`, `false`, `null`. A number at a masked path becomes a generic
    /// token *string* (a masked number would be re-masked differently when a candidate
    /// echoes it; a token string is stable). A bare card number stays a number.
    fn scalar(&mut self, masked: bool) -> Result<(), Invalid> {
        let start = self.pos;
        while self.pos < self.b.len()
            && !matches!(
                self.b[self.pos],
                b',' | b']' | b'}' | b' ' | b'\t' | b'\n' | b'\r'
            )
        {
            self.pos += 1;
        }
        let end = self.pos;
        let text = self.src.get(start..end).ok_or(Invalid)?;
        let is_number = text.starts_with(|c: char| c == '-' || c.is_ascii_digit());
        if !is_number {
            return Ok(());
        }
        if masked {
            let tok = self.m.rule_value(text.as_bytes(), MaskKind::Json);
            self.emit(start, end, &json_string(&tok));
        } else if self.m.detector.number_is_card(text) {
            let tok = self.m.detected_value(PiiKind::Card, text);
            // Redaction yields a placeholder string; a card token stays a valid number.
            let with = if tok.bytes().all(|c| c.is_ascii_digit()) {
                tok
            } else {
                json_string(&tok)
            };
            self.emit(start, end, &with);
        }
        Ok(())
    }
}
