//! Free-text PII detectors: email, payment card (Luhn), US SSN, phone (E.164 and NANP),
//! IBAN (mod-97) and IP addresses.
//!
//! Every detector is precise rather than greedy: a false positive rewrites data the
//! comparison needs (order ids, timestamps), so numbers must pass a checksum or a strict
//! shape and stand alone (not glued to letters, digits or a decimal point). The masked
//! forms produced by `token.rs` are deliberately *invalid* for their detector (card fails
//! Luhn, SSN area 9xx, phone area/country 0, IBAN check 00, IPs in reserved ranges, emails
//! under `.masked.invalid`) so that masking a masked value leaves it unchanged.
use std::net::{Ipv4Addr, Ipv6Addr};

use regex::Regex;

use super::MaskError;

/// Which detectors run on free text (header values, query values, body strings).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Detectors {
    pub email: bool,
    pub card: bool,
    pub ssn: bool,
    pub phone: bool,
    pub iban: bool,
    pub ip: bool,
}

impl Detectors {
    /// No detector.
    pub const NONE: Detectors = Detectors {
        email: false,
        card: false,
        ssn: false,
        phone: false,
        iban: false,
        ip: false,
    };

    /// The set that is on without any flag: email, card, ssn, phone.
    pub fn default_set() -> Self {
        Detectors {
            email: true,
            card: true,
            ssn: true,
            phone: true,
            iban: false,
            ip: false,
        }
    }

    /// Every detector.
    pub fn all() -> Self {
        Detectors {
            email: true,
            card: true,
            ssn: true,
            phone: true,
            iban: true,
            ip: true,
        }
    }

    pub fn is_empty(&self) -> bool {
        *self == Self::NONE
    }
}

/// Parse a comma-separated detector list such as `email,card,ssn,phone,iban,ip`.
///
/// The result is exactly the named set (the CLI uses [`Detectors::default_set`] when the
/// flag is absent). `none` yields the empty set, `all` every detector, `default` the
/// default set; names are case-insensitive and may be surrounded by spaces.
pub fn parse_detectors(s: &str) -> Result<Detectors, MaskError> {
    let mut d = Detectors::NONE;
    for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        match name.to_ascii_lowercase().as_str() {
            "email" => d.email = true,
            "card" => d.card = true,
            "ssn" => d.ssn = true,
            "phone" => d.phone = true,
            "iban" => d.iban = true,
            "ip" => d.ip = true,
            "all" => d = Detectors::all(),
            "default" => {
                let def = Detectors::default_set();
                d.email |= def.email;
                d.card |= def.card;
                d.ssn |= def.ssn;
                d.phone |= def.phone;
            }
            "none" => {}
            _ => return Err(MaskError::UnknownDetector(name.to_string())),
        }
    }
    Ok(d)
}

/// What a detector found; decides the token format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PiiKind {
    Email,
    Card,
    Ssn,
    /// `+` international form.
    PhoneE164,
    /// North American form; `area` is the index (among the digits) of the area code.
    PhoneNanp {
        area: u8,
    },
    Iban,
    Ipv4(Ipv4Addr),
    Ipv6(Ipv6Addr),
}

/// A detected span (byte offsets into the scanned text).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Found {
    pub start: usize,
    pub end: usize,
    pub kind: PiiKind,
}

/// Cheap one-pass character profile; decides which detectors can possibly match.
///
/// The JSON scanner builds it while it looks for a string's end
/// ([`Profile::scan_json_string`]), so a string is read once for both.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Profile {
    digits: usize,
    at: bool,
    pct: bool,
    plus: bool,
    dash: usize,
    /// Spaces and parentheses (phone separators besides dash and dot).
    seps: usize,
    dots: usize,
    colons: usize,
    upper: usize,
}

/// Byte classes counted by [`Profile`] (index into its counters; 0 = not counted).
const CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut c = b'0';
    while c <= b'9' {
        t[c as usize] = 1;
        c += 1;
    }
    let mut c = b'A';
    while c <= b'Z' {
        t[c as usize] = 2;
        c += 1;
    }
    t[b'@' as usize] = 3;
    t[b'%' as usize] = 4;
    t[b'+' as usize] = 5;
    t[b'-' as usize] = 6;
    t[b'.' as usize] = 7;
    t[b':' as usize] = 8;
    t[b' ' as usize] = 9;
    t[b'(' as usize] = 9;
    t
};

/// Class of the bytes that end a run of plain string bytes in JSON text (`"`, `\\`,
/// control characters), beside [`CLASS`]'s counted ones.
const STOP: u8 = 10;

/// [`CLASS`] plus [`STOP`] for the bytes a JSON string scan must look at.
const JSON_CLASS: [u8; 256] = {
    let mut t = CLASS;
    let mut c = 0;
    while c < 0x20 {
        t[c] = STOP;
        c += 1;
    }
    t[b'"' as usize] = STOP;
    t[b'\\' as usize] = STOP;
    t
};

/// Where a JSON string ends, from [`Profile::scan_json_string`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct JsonStringEnd {
    /// Index just past the closing quote.
    pub end: usize,
    /// The string holds escapes: its text must be decoded (and the profile taken over
    /// the decoded text).
    pub escaped: bool,
}

impl Profile {
    pub(crate) fn of(s: &[u8]) -> Self {
        // Table lookup + counter increment, no branches: this runs on every string.
        let mut n = [0u64; 16];
        for &b in s {
            n[usize::from(CLASS[usize::from(b)] & 15)] += 1;
        }
        Self::from_counts(&n)
    }

    /// The JSON string whose opening quote is at `b[open]`: where it ends, and the
    /// profile of its text when it has no escapes (one read of the bytes for both).
    /// `None`: not a JSON string (no closing quote, or a raw control character).
    /// Escapes are skipped, not checked: an escaped string is decoded (and checked)
    /// by the caller, which takes the profile of the decoded text.
    #[inline(always)]
    pub(crate) fn scan_json_string(b: &[u8], open: usize) -> Option<(JsonStringEnd, Self)> {
        // Counters by class (`& 15` keeps the index in bounds without a check).
        let mut n = [0u32; 16];
        let mut i = open + 1;
        let mut escaped = false;
        loop {
            let rest = b.get(i..)?;
            let mut run = 0;
            for &c in rest {
                let class = JSON_CLASS[usize::from(c)];
                if class == STOP {
                    break;
                }
                n[usize::from(class & 15)] += 1;
                run += 1;
            }
            i += run;
            match b.get(i)? {
                b'"' => break,
                b'\\' => {
                    escaped = true;
                    i += 2;
                }
                _ => return None,
            }
        }
        let end = JsonStringEnd {
            end: i + 1,
            escaped,
        };
        Some((end, Self::from_counts(&n)))
    }

    /// Where the JSON string whose opening quote is at `b[open]` ends, without taking
    /// its profile (see [`Profile::scan_json_string`]).
    #[inline(always)]
    pub(crate) fn json_string_end(b: &[u8], open: usize) -> Option<JsonStringEnd> {
        let mut i = open + 1;
        let mut escaped = false;
        loop {
            let rest = b.get(i..)?;
            i += rest
                .iter()
                .position(|&c| JSON_CLASS[usize::from(c)] == STOP)?;
            match b[i] {
                b'"' => break,
                b'\\' => {
                    escaped = true;
                    i += 2;
                }
                _ => return None,
            }
        }
        Some(JsonStringEnd {
            end: i + 1,
            escaped,
        })
    }

    /// The text holds a `%` (percent-encoded runs are decoded and checked too).
    #[inline]
    pub(crate) fn has_percent(&self) -> bool {
        self.pct
    }

    #[inline(always)]
    fn from_counts<T: Copy + Into<u64>>(n: &[T]) -> Self {
        let n = |class: usize| -> usize {
            let v: u64 = n[class].into();
            v as usize
        };
        Profile {
            digits: n(1),
            upper: n(2),
            at: n(3) > 0,
            pct: n(4) > 0,
            plus: n(5) > 0,
            dash: n(6),
            seps: n(9),
            dots: n(7),
            colons: n(8),
        }
    }
}

/// Which detectors run on one text (see `Detector::gates`).
#[derive(Clone, Copy, Default)]
struct Gates {
    email: bool,
    card: bool,
    ssn: bool,
    e164: bool,
    nanp: bool,
    iban: bool,
    ipv4: bool,
    ipv6: bool,
}

impl Gates {
    #[inline]
    fn any(&self) -> bool {
        self.email
            || self.card
            || self.ssn
            || self.e164
            || self.nanp
            || self.iban
            || self.ipv4
            || self.ipv6
    }
}

/// Compiled detectors (regexes are compiled once per [`super::Masker`]).
pub(crate) struct Detector {
    on: Detectors,
    email: Regex,
    ssn: Regex,
    e164: Regex,
    nanp: Regex,
    iban: Regex,
    ipv4: Regex,
    ipv6: Regex,
}

const OCTET: &str = "(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])";
const LABEL: &str = "[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?";

impl Detector {
    pub fn new(on: Detectors) -> Result<Self, MaskError> {
        let re = |p: &str| Regex::new(p).map_err(|e| MaskError::Regex(e.to_string()));
        Ok(Detector {
            on,
            // `%40` is accepted as `@` so URL-encoded addresses in free text are caught.
            email: re(&format!(
                "[A-Za-z0-9._%+-]+(?:@|%40)(?:{LABEL}\\.)+[A-Za-z]{{2,63}}"
            ))?,
            ssn: re("[0-9]{3}-[0-9]{2}-[0-9]{4}")?,
            e164: re(r"\+[1-9][0-9 ().-]{6,22}[0-9]")?,
            nanp: re(
                r"(?:1[ .-]?)?(?:\([2-9][0-9]{2}\) ?|[2-9][0-9]{2}[ .-])[0-9]{3}[ .-][0-9]{4}",
            )?,
            iban: re(
                "[A-Z]{2}[0-9]{2}(?:[A-Z0-9]{11,30}|(?: [A-Z0-9]{4}){2,7}(?: [A-Z0-9]{1,4})?)",
            )?,
            ipv4: re(&format!("{OCTET}(?:\\.{OCTET}){{3}}"))?,
            ipv6: re(
                "[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?:[0-9]{1,3}(?:\\.[0-9]{1,3}){3})?",
            )?,
        })
    }

    pub fn enabled(&self) -> Detectors {
        self.on
    }

    /// Find PII in `s`; appends non-overlapping spans sorted by start to `out` (cleared).
    pub fn find(&self, s: &str, out: &mut Vec<Found>) {
        out.clear();
        if s.len() < 7 {
            return;
        }
        self.find_profiled(s, &Profile::of(s.as_bytes()), out);
    }

    /// [`Detector::find`] with the profile of `s` already taken (it must be
    /// `Profile::of(s)`: the profile only decides which detectors run).
    pub fn find_profiled(&self, s: &str, p: &Profile, out: &mut Vec<Found>) {
        out.clear();
        let g = self.gates(s.len(), p);
        if !g.any() {
            return;
        }
        let b = s.as_bytes();
        if g.email {
            self.find_email(s, out);
        }
        if g.card {
            find_cards(b, out);
        }
        if g.ssn {
            self.find_ssn(s, out);
        }
        if g.e164 || g.nanp {
            self.find_phone(s, out, g.e164, g.nanp);
        }
        if g.iban {
            self.find_iban(s, out);
        }
        if g.ipv4 {
            self.find_ipv4(s, out);
        }
        if g.ipv6 {
            self.find_ipv6(s, out);
        }
        resolve_overlaps(out);
    }

    /// Whether any detector can find something in text of `len` bytes with profile
    /// `p` ([`Detector::find_profiled`] finds nothing otherwise).
    #[inline(always)]
    pub fn may_find(&self, len: usize, p: &Profile) -> bool {
        self.gates(len, p).any()
    }

    /// The detectors that run on text of `len` bytes with profile `p`: each needs its
    /// characters (an `@` or `%40` and a dot for an email, 13 digits for a card…).
    #[inline(always)]
    fn gates(&self, len: usize, p: &Profile) -> Gates {
        let on = self.on;
        if len < 7 {
            return Gates::default();
        }
        Gates {
            email: on.email && (p.at || p.pct) && p.dots > 0,
            card: on.card && p.digits >= 13,
            ssn: on.ssn && p.digits >= 9 && p.dash >= 2,
            // E.164 needs a plus and 8 digits; NANP 10 digits and two separators.
            e164: on.phone && p.plus && p.digits >= 8,
            nanp: on.phone && p.digits >= 10 && p.dash + p.dots + p.seps >= 2,
            iban: on.iban && p.upper >= 2 && p.digits >= 2 && len >= 15,
            ipv4: on.ip && p.dots >= 3 && p.digits >= 4,
            ipv6: on.ip && p.colons >= 2,
        }
    }

    /// Card detection on a bare JSON number token (digits only, maybe a sign).
    #[inline]
    pub fn number_is_card(&self, num: &str) -> bool {
        self.on.card
            && num.len() >= 13
            && num.bytes().all(|c| c.is_ascii_digit())
            && card_valid(num.as_bytes())
    }

    fn find_email(&self, s: &str, out: &mut Vec<Found>) {
        for m in self.email.find_iter(s) {
            let text = m.as_str();
            let lower = text.to_ascii_lowercase();
            // Our own tokens: leave them alone so masking is stable.
            if lower.ends_with(".masked.invalid") {
                continue;
            }
            // `icon@2x.png`-style asset names are not addresses.
            let tld = lower.rsplit('.').next().unwrap_or_default();
            if FILE_EXTENSIONS.contains(&tld) {
                continue;
            }
            out.push(Found {
                start: m.start(),
                end: m.end(),
                kind: PiiKind::Email,
            });
        }
    }

    fn find_ssn(&self, s: &str, out: &mut Vec<Found>) {
        let b = s.as_bytes();
        for m in self.ssn.find_iter(s) {
            let (start, end) = (m.start(), m.end());
            if !bounded(b, start, end) {
                continue;
            }
            let d = m.as_str().as_bytes();
            let area = &d[0..3];
            let valid = area != b"000"
                && area != b"666"
                && area[0] != b'9'
                && &d[4..6] != b"00"
                && &d[7..11] != b"0000";
            if valid {
                out.push(Found {
                    start,
                    end,
                    kind: PiiKind::Ssn,
                });
            }
        }
    }

    fn find_phone(&self, s: &str, out: &mut Vec<Found>, plus: bool, nanp: bool) {
        let b = s.as_bytes();
        if plus {
            for m in self.e164.find_iter(s) {
                let start = m.start();
                let mut end = m.end();
                // The class may run into a following number (`+1 555 123 4567 2001:db8::`):
                // drop trailing groups until the match fits E.164 and stands alone.
                loop {
                    let digits = b[start..end].iter().filter(|c| c.is_ascii_digit()).count();
                    // A trailing group followed by `:hex` is the start of an IPv6 address.
                    let ipv6_next = b.get(end) == Some(&b':')
                        && b.get(end + 1).is_some_and(u8::is_ascii_hexdigit);
                    if (8..=15).contains(&digits) && bounded(b, start, end) && !ipv6_next {
                        // `+1 10.1.2.3`, `+3 123-45-6789`: an address or an SSN after a
                        // stray plus belongs to its own detector (and its masked form
                        // must not turn into a phone on a second pass).
                        let span = &s[start..end];
                        if self.ssn.is_match(span) || self.ipv4.is_match(span) {
                            break;
                        }
                        out.push(Found {
                            start,
                            end,
                            kind: PiiKind::PhoneE164,
                        });
                        break;
                    }
                    if digits < 8 {
                        break;
                    }
                    match b[start..end].iter().rposition(|c| !c.is_ascii_digit()) {
                        Some(i) if i > 1 => {
                            end = start + i;
                            while end > start && !b[end - 1].is_ascii_digit() {
                                end -= 1;
                            }
                        }
                        _ => break,
                    }
                }
            }
        }
        if !nanp {
            return;
        }
        for m in self.nanp.find_iter(s) {
            let (start, end) = (m.start(), m.end());
            if !bounded(b, start, end) || inside_international(b, start) {
                continue;
            }
            let digits = b[start..end].iter().filter(|c| c.is_ascii_digit()).count();
            let area = if digits == 11 { 1 } else { 0 };
            out.push(Found {
                start,
                end,
                kind: PiiKind::PhoneNanp { area },
            });
        }
    }

    fn find_iban(&self, s: &str, out: &mut Vec<Found>) {
        let b = s.as_bytes();
        for m in self.iban.find_iter(s) {
            let start = m.start();
            if start > 0 && b[start - 1].is_ascii_alphanumeric() {
                continue;
            }
            // The grouped form may swallow a following 4-letter word: retry shorter
            // candidates ending at a group boundary.
            let mut end = m.end();
            loop {
                if bounded(b, start, end) && iban_valid(&b[start..end]) {
                    out.push(Found {
                        start,
                        end,
                        kind: PiiKind::Iban,
                    });
                    break;
                }
                match b[start..end].iter().rposition(|&c| c == b' ') {
                    Some(i) if i > 4 => end = start + i,
                    _ => break,
                }
            }
        }
    }

    fn find_ipv4(&self, s: &str, out: &mut Vec<Found>) {
        let b = s.as_bytes();
        for m in self.ipv4.find_iter(s) {
            let (start, end) = (m.start(), m.end());
            if !bounded(b, start, end) {
                continue;
            }
            // `Chrome/120.0.0.0`: a version after a product name, not an address.
            if start >= 2 && b[start - 1] == b'/' && b[start - 2].is_ascii_alphanumeric() {
                continue;
            }
            let Ok(addr) = m.as_str().parse::<Ipv4Addr>() else {
                continue;
            };
            let o = addr.octets();
            let reserved = o[0] >= 240 || o[0] == 127 || addr.is_unspecified();
            if !reserved {
                out.push(Found {
                    start,
                    end,
                    kind: PiiKind::Ipv4(addr),
                });
            }
        }
    }

    fn find_ipv6(&self, s: &str, out: &mut Vec<Found>) {
        let b = s.as_bytes();
        for m in self.ipv6.find_iter(s) {
            let start = m.start();
            let mut end = m.end();
            let before_ok = start == 0 || {
                let c = b[start - 1];
                !(c.is_ascii_alphanumeric() || c == b':' || c == b'.' || c == b'_')
            };
            if !before_ok {
                continue;
            }
            // A sentence may end the address with a colon (`host fe80::1: down`).
            let mut addr = s[start..end].parse::<Ipv6Addr>();
            if addr.is_err() && end > start && b[end - 1] == b':' {
                end -= 1;
                addr = s[start..end].parse::<Ipv6Addr>();
            }
            let Ok(addr) = addr else { continue };
            let after_ok = end == b.len() || {
                let c = b[end];
                !(c.is_ascii_alphanumeric()
                    || c == b':'
                    || c == b'_'
                    || (c == b'.' && b.get(end + 1).is_some_and(u8::is_ascii_digit)))
            };
            let seg = addr.segments();
            let reserved = addr.is_unspecified()
                || addr.is_loopback()
                || (seg[0] == 0x2001 && seg[1] == 0x0db8);
            if after_ok && !reserved {
                out.push(Found {
                    start,
                    end,
                    kind: PiiKind::Ipv6(addr),
                });
            }
        }
    }
}

const FILE_EXTENSIONS: &[&str] = &[
    "png", "jpg", "jpeg", "gif", "svg", "webp", "ico", "css", "js", "map", "json", "html", "txt",
    "pdf",
];

/// Keep the earliest span, the longest on ties; drop whatever overlaps a kept span.
fn resolve_overlaps(out: &mut Vec<Found>) {
    if out.len() < 2 {
        return;
    }
    out.sort_by(|a, b| a.start.cmp(&b.start).then(b.end.cmp(&a.end)));
    let mut last_end = 0;
    out.retain(|f| {
        if f.start >= last_end {
            last_end = f.end;
            true
        } else {
            false
        }
    });
}

/// The span stands alone: not glued to letters/digits/underscore, and not part of a
/// longer dotted or dashed number (`1.2.3.4.5`, `0.4111…`, `123-45-6789-0`).
fn bounded(b: &[u8], start: usize, end: usize) -> bool {
    let glued = |c: u8, other: Option<&u8>| {
        c.is_ascii_alphanumeric()
            || c == b'_'
            || ((c == b'.' || c == b'-') && other.is_some_and(u8::is_ascii_digit))
    };
    let before_ok = start == 0 || !glued(b[start - 1], start.checked_sub(2).and_then(|i| b.get(i)));
    let after_ok = end >= b.len() || !glued(b[end], b.get(end + 1));
    before_ok && after_ok
}

/// A NANP-looking span that is the tail of a `+CC …` number belongs to the E.164 match
/// (or to its masked form, which must not be re-masked).
fn inside_international(b: &[u8], start: usize) -> bool {
    let mut i = start;
    while i > 0 {
        let c = b[i - 1];
        match c {
            b'+' => return true,
            b'0'..=b'9' | b' ' | b'.' | b'-' | b'(' | b')' => i -= 1,
            _ => return false,
        }
    }
    false
}

/// Payment cards in `b`: runs of digits with single space or dash separators, shaped
/// like a card (one 13–19 digit group, 4-4-4-1..4 groups, or Amex/Diners 4-6-5/4-6-4),
/// with a card-issuer leading digit and a valid Luhn checksum.
fn find_cards(b: &[u8], out: &mut Vec<Found>) {
    let n = b.len();
    let mut i = 0;
    let mut groups: Vec<(usize, usize)> = Vec::new();
    while i < n {
        if !b[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        let run_start = i;
        groups.clear();
        let mut g_start = i;
        let mut sep = 0u8;
        let mut mixed = false;
        loop {
            while i < n && b[i].is_ascii_digit() {
                i += 1;
            }
            groups.push((g_start, i));
            if i + 1 < n && (b[i] == b' ' || b[i] == b'-') && b[i + 1].is_ascii_digit() {
                if sep != 0 && sep != b[i] {
                    mixed = true;
                }
                sep = b[i];
                i += 1;
                g_start = i;
            } else {
                break;
            }
        }
        let run_end = i;
        // A run glued to an identifier or a decimal point is never a card.
        if mixed || !bounded(b, run_start, run_end) {
            continue;
        }
        let mut g = 0;
        while g < groups.len() {
            match card_window(b, &groups[g..]) {
                Some(k) => {
                    let (start, end) = (groups[g].0, groups[g + k - 1].1);
                    out.push(Found {
                        start,
                        end,
                        kind: PiiKind::Card,
                    });
                    g += k;
                }
                None => g += 1,
            }
        }
    }
}

/// Longest card-shaped prefix of `groups` (number of groups used), if valid.
fn card_window(b: &[u8], groups: &[(usize, usize)]) -> Option<usize> {
    let len = |k: usize| groups[k].1 - groups[k].0;
    let digits_of = |k: usize| -> Vec<u8> {
        groups[..k]
            .iter()
            .flat_map(|&(s, e)| b[s..e].iter().copied())
            .collect()
    };
    let mut candidates: Vec<usize> = Vec::with_capacity(6);
    // 4-4-4-(1..4) and longer 4-groups, longest first.
    for total in (2..=groups.len().min(5)).rev() {
        if (0..total - 1).all(|j| len(j) == 4) && (1..=4).contains(&len(total - 1)) {
            candidates.push(total);
        }
    }
    if groups.len() >= 3 && len(0) == 4 && len(1) == 6 && (len(2) == 5 || len(2) == 4) {
        candidates.push(3);
    }
    if len(0) >= 13 {
        candidates.push(1);
    }
    candidates.into_iter().find(|&k| card_valid(&digits_of(k)))
}

/// Issuer-plausible 13–19 digit number with a valid Luhn checksum. The leading digit
/// must be 2–6 (all major networks) and 13 digits only exist for Visa (4): this keeps
/// millisecond timestamps (leading 1) and most order ids out.
pub(crate) fn card_valid(d: &[u8]) -> bool {
    let n = d.len();
    if !(13..=19).contains(&n) || !(b'2'..=b'6').contains(&d[0]) || (n == 13 && d[0] != b'4') {
        return false;
    }
    luhn_valid(d)
}

pub(crate) fn luhn_valid(d: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, &c) in d.iter().rev().enumerate() {
        let mut v = u32::from(c.wrapping_sub(b'0'));
        if v > 9 {
            return false;
        }
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    sum.is_multiple_of(10)
}

/// ISO 13616 check: length, country letters, check digits 02–98, mod 97 == 1.
fn iban_valid(s: &[u8]) -> bool {
    let compact: Vec<u8> = s.iter().copied().filter(|&c| c != b' ').collect();
    if !(15..=34).contains(&compact.len())
        || !compact[..2].iter().all(u8::is_ascii_uppercase)
        || !compact[2..4].iter().all(u8::is_ascii_digit)
    {
        return false;
    }
    let check = (compact[2] - b'0') * 10 + (compact[3] - b'0');
    if !(2..=98).contains(&check) {
        return false;
    }
    let mut rem = 0u32;
    for &c in compact[4..].iter().chain(&compact[..4]) {
        match c {
            b'0'..=b'9' => rem = (rem * 10 + u32::from(c - b'0')) % 97,
            b'A'..=b'Z' => rem = (rem * 100 + u32::from(c - b'A' + 10)) % 97,
            _ => return false,
        }
    }
    rem == 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn det() -> Detector {
        match Detector::new(Detectors::all()) {
            Ok(d) => d,
            Err(e) => panic!("{e}"),
        }
    }

    fn kinds(s: &str) -> Vec<(String, PiiKind)> {
        let mut out = Vec::new();
        det().find(s, &mut out);
        out.iter()
            .map(|f| (s[f.start..f.end].to_string(), f.kind))
            .collect()
    }

    fn found(s: &str) -> Vec<String> {
        kinds(s).into_iter().map(|(t, _)| t).collect()
    }

    #[test]
    fn parse_detector_lists() {
        let d = parse_detectors("email, card,SSN").unwrap();
        assert!(d.email && d.card && d.ssn && !d.phone && !d.iban && !d.ip);
        assert_eq!(parse_detectors("all").unwrap(), Detectors::all());
        assert_eq!(parse_detectors("none").unwrap(), Detectors::NONE);
        assert_eq!(
            parse_detectors("default").unwrap(),
            Detectors::default_set()
        );
        assert!(
            matches!(parse_detectors("email,passport"), Err(MaskError::UnknownDetector(n)) if n == "passport")
        );
    }

    #[test]
    fn emails() {
        assert_eq!(
            found("contact alice.smith+tag@example.co.uk now"),
            ["alice.smith+tag@example.co.uk"]
        );
        assert_eq!(
            found("to=bob%40corp.example.com&x=1"),
            ["bob%40corp.example.com"]
        );
        assert!(found("img icon@2x.png and u-1a2b@3c4d.masked.invalid").is_empty());
        assert!(found("user @ example dot com").is_empty());
    }

    #[test]
    fn cards() {
        assert_eq!(found("card 4111111111111111 ok"), ["4111111111111111"]);
        assert_eq!(found("4111 1111 1111 1111"), ["4111 1111 1111 1111"]);
        assert_eq!(found("x 5500-0000-0000-0004."), ["5500-0000-0000-0004"]);
        assert_eq!(found("amex 3782 822463 10005"), ["3782 822463 10005"]);
        assert_eq!(found("amex 378282246310005"), ["378282246310005"]);
        assert_eq!(found("visa 4222222222222"), ["4222222222222"]);
        // A digit run glued to an identifier is part of that identifier.
        assert!(found("ref13 4111111111111111").is_empty());
        assert_eq!(found("n=12 4111111111111111 2024"), ["4111111111111111"]);
        assert_eq!(
            found("4111111111111111,4012888888881881"),
            ["4111111111111111", "4012888888881881"]
        );
    }

    #[test]
    fn ssns() {
        assert_eq!(found("ssn 123-45-6789."), ["123-45-6789"]);
        for bad in [
            "000-12-3456",
            "666-12-3456",
            "900-12-3456",
            "123-00-4567",
            "123-45-0000",
            "1-123-45-6789",
            "123-45-6789-1",
            "a123-45-6789",
        ] {
            assert!(found(bad).is_empty(), "{bad}");
        }
    }

    #[test]
    fn phones() {
        assert_eq!(found("call (555) 123-4567 now"), ["(555) 123-4567"]);
        assert_eq!(found("call 555-123-4567"), ["555-123-4567"]);
        assert_eq!(found("call 1-800-555-0199"), ["1-800-555-0199"]);
        assert_eq!(found("call 555.123.4567"), ["555.123.4567"]);
        assert_eq!(found("tel +15551234567"), ["+15551234567"]);
        assert_eq!(found("tel +44 20 7946 0958, ok"), ["+44 20 7946 0958"]);
        assert_eq!(found("tel +1 (555) 123-4567"), ["+1 (555) 123-4567"]);
        assert!(matches!(
            kinds("1-800-555-0199")[0].1,
            PiiKind::PhoneNanp { area: 1 }
        ));
        // A stray plus before an SSN or an address does not make a phone.
        assert_eq!(kinds("+3 123-45-6789")[0].1, PiiKind::Ssn);
        assert!(matches!(kinds("+1 10.1.2.3")[0].1, PiiKind::Ipv4(_)));
        // Masked forms (area/country 0) are not phones.
        assert!(found("(055) 123-4567 +0 372 981 2201 +04479460958").is_empty());
    }

    #[test]
    fn ibans() {
        assert_eq!(
            found("iban DE89370400440532013000."),
            ["DE89370400440532013000"]
        );
        assert_eq!(
            found("GB82 WEST 1234 5698 7654 32 thanks"),
            ["GB82 WEST 1234 5698 7654 32"]
        );
        assert_eq!(
            found("BE68 5390 0754 7034 DEAR sir"),
            ["BE68 5390 0754 7034"]
        );
        // Wrong check digits, and our masked form with check digits 00.
        assert!(found("DE88370400440532013000").is_empty());
        assert!(found("DE00370400440532013000").is_empty());
    }

    #[test]
    fn ips() {
        assert_eq!(found("from 203.0.113.7:443"), ["203.0.113.7"]);
        assert_eq!(
            found("via 10.1.2.3, 192.168.0.1"),
            ["10.1.2.3", "192.168.0.1"]
        );
        assert_eq!(
            found("addr 2001:4860:4860::8888 up"),
            ["2001:4860:4860::8888"]
        );
        assert_eq!(
            found("[fe80::1ff:fe23:4567:890a]"),
            ["fe80::1ff:fe23:4567:890a"]
        );
        for not_ip in [
            "Chrome/120.0.0.0",
            "v1.2.3.4",
            "1.2.3.4.5",
            "256.1.1.1",
            "12:30:45",
            "std::net::Ipv6Addr",
            "00:1A:2B:3C:4D:5E",
            "127.0.0.1",
            "::1",
            "241.2.3.4",
            "2001:db8::1",
            "0.0.0.0",
        ] {
            assert!(found(not_ip).is_empty(), "{not_ip}");
        }
    }

    /// Numbers that look like PII to a naive detector but are not.
    #[test]
    fn non_pii_corpus_is_left_alone() {
        let corpus = [
            "order 4111111111111112 (fails Luhn)",
            "ts 1700000000123 and 1700000000",
            "id 550e8400-e29b-41d4-a716-446655440000",
            "id 12345678-1234-1234-1234-123456789012",
            "version 1.2.3 and 10.0.19045 and 2.14.1-beta",
            "price $1,299.99 EUR 4.111111111111111e2",
            "price 0.4111111111111111",
            "zip 94103 and 10001-1234",
            "status 200 404 503",
            "date 2024-01-15 and 2024-01-15T10:30:00Z and 2024-01-15T10:30:00.123+02:00",
            "sha a3f4111111111111111b and 4111111111111111abc",
            "tok_4111111111111111 order_4111111111111111",
            "counts 12 34 56 78 90 12 34",
            "isbn 978-3-16-148410-0",
            "5551234567",
            "1700000000123",
            "15551234567",
            "tok_0123456789abcdef",
        ];
        for s in corpus {
            assert!(found(s).is_empty(), "{s:?} -> {:?}", found(s));
        }
    }

    #[test]
    fn luhn_and_card_validity() {
        assert!(luhn_valid(b"4111111111111111"));
        assert!(!luhn_valid(b"4111111111111112"));
        assert!(card_valid(b"4012888888881881"));
        // Luhn-valid but a millisecond timestamp shape (leading 1).
        assert!(luhn_valid(b"1700000000004") && !card_valid(b"1700000000004"));
        assert!(det().number_is_card("4111111111111111"));
        assert!(!det().number_is_card("4111111111111112"));
    }

    #[test]
    fn overlaps_keep_earliest_longest() {
        assert_eq!(
            found("mail 4111111111111111@example.com"),
            ["4111111111111111@example.com"]
        );
    }
}
