//! One pass over a JSON text that says whether `serde_json` would read it as a `Value`,
//! and, for an object, where its members are: the comparator validates legacy's body and
//! splits it for the text diff in that one pass, without building anything.
//!
//! The acceptance is serde_json's, rule by rule (its `Value` parser, default features):
//! whitespace is space, tab, LF and CR; literals `null`, `true`, `false`; numbers as the
//! JSON grammar has them (no leading zeros, a digit after `.` and after the exponent's
//! sign) whose value is finite as an f64 (a number with an exponent, or with more than
//! 300 integer digits, is handed to serde_json itself for that range check, so its
//! rounding decides); strings without raw control characters, with the escapes
//! `\" \\ \/ \b \f \n \r \t \uXXXX`, a `\u` surrogate only as a high-low pair; at most
//! 127 nested arrays and objects (serde_json's recursion limit of 128); repeated keys
//! allowed; nothing but whitespace after the value. A differential test checks this
//! against serde_json over random documents and edits of them.

/// serde_json refuses the 128th nested array or object.
const MAX_DEPTH: usize = 127;

/// A number with more integer digits than this may overflow an f64: serde_json decides.
const SAFE_INTEGER_DIGITS: usize = 300;

/// What [`check`] found in a valid document.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Checked<'t> {
    /// With `split`, an object whose keys have no escapes: its members (key, value text)
    /// in order. Keys may repeat (the caller decides what that means).
    pub members: Option<Vec<(&'t str, &'t str)>>,
    /// Some integer has 16 digits or more (its f64 may stand for other integers too).
    pub long_integers: bool,
}

/// `text` checked as serde_json reads a `Value` (see the module's rules); with `split`,
/// an object's members as well. `None`: not JSON.
pub(crate) fn check(text: &str, split: bool) -> Option<Checked<'_>> {
    let s = text.as_bytes();
    let mut i = skip_ws(s, 0);
    // Bit d: the container at depth d + 1 is an object.
    let mut objects: u128 = 0;
    let mut depth = 0usize;
    let split = split && s.get(i) == Some(&b'{');
    let mut members = Vec::new();
    let mut plain_keys = split;
    let mut key: &str = "";
    let mut value_at = 0usize;
    let mut long_integers = false;
    'value: loop {
        // A value starts at `i`.
        match *s.get(i)? {
            open @ (b'{' | b'[') => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return None;
                }
                i = skip_ws(s, i + 1);
                let object = open == b'{';
                if object {
                    objects |= 1 << (depth - 1);
                } else {
                    objects &= !(1 << (depth - 1));
                }
                let close = if object { b'}' } else { b']' };
                if s.get(i) == Some(&close) {
                    i += 1;
                    depth -= 1;
                } else if object {
                    let (k, at) = object_key(text, i)?;
                    if depth == 1 && split {
                        (key, value_at) = (k.unwrap_or(""), at);
                        plain_keys &= k.is_some();
                    }
                    i = at;
                    continue 'value;
                } else {
                    continue 'value;
                }
            }
            b'"' => i = string(s, i + 1)?.0,
            b'-' | b'0'..=b'9' => {
                let (end, long) = number(text, i)?;
                long_integers |= long;
                i = end;
            }
            b't' => i = literal(s, i, b"true")?,
            b'f' => i = literal(s, i, b"false")?,
            b'n' => i = literal(s, i, b"null")?,
            _ => return None,
        }
        // A value ended at `i`: what may follow it.
        loop {
            if depth == 0 {
                return (skip_ws(s, i) == s.len()).then(|| Checked {
                    members: (split && plain_keys).then_some(members),
                    long_integers,
                });
            }
            let object = objects & (1 << (depth - 1)) != 0;
            if depth == 1 && split && plain_keys {
                members.push((key, text.get(value_at..i)?));
            }
            i = skip_ws(s, i);
            match (*s.get(i)?, object) {
                (b',', false) => {
                    i = skip_ws(s, i + 1);
                    continue 'value;
                }
                (b',', true) => {
                    let (k, at) = object_key(text, skip_ws(s, i + 1))?;
                    if depth == 1 && split {
                        (key, value_at) = (k.unwrap_or(""), at);
                        plain_keys &= k.is_some();
                    }
                    i = at;
                    continue 'value;
                }
                (b']', false) | (b'}', true) => {
                    i += 1;
                    depth -= 1;
                }
                _ => return None,
            }
        }
    }
}

pub(super) fn is_ws(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r')
}

/// The first position at or after `i` that is not JSON whitespace.
pub(super) fn skip_ws(s: &[u8], mut i: usize) -> usize {
    while i < s.len() && is_ws(s[i]) {
        i += 1;
    }
    i
}

/// An object key at `i` and its colon: the key (`None` when it has escapes) and where
/// its value starts.
fn object_key(text: &str, i: usize) -> Option<(Option<&str>, usize)> {
    let s = text.as_bytes();
    if s.get(i) != Some(&b'"') {
        return None;
    }
    let (end, escaped) = string(s, i + 1)?;
    let colon = skip_ws(s, end);
    if s.get(colon) != Some(&b':') {
        return None;
    }
    let key = (!escaped).then(|| text.get(i + 1..end - 1)).flatten();
    Some((key, skip_ws(s, colon + 1)))
}

fn literal(s: &[u8], i: usize, word: &[u8]) -> Option<usize> {
    s.get(i..)?.starts_with(word).then_some(i + word.len())
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// The bytes of `w` that are `"`, `\` or a control character, as their high bits. Bytes
/// above a flagged one may be flagged wrongly (a borrow), never one below: the lowest
/// flag is exact.
fn special(w: u64) -> u64 {
    let zero = |x: u64| x.wrapping_sub(ONES) & !x;
    let quote = zero(w ^ (ONES * u64::from(b'"')));
    let backslash = zero(w ^ (ONES * u64::from(b'\\')));
    let control = w.wrapping_sub(ONES * 0x20) & !w;
    (quote | backslash | control) & HIGH
}

/// The string whose text starts at `i` (after its opening quote): the position after its
/// closing quote and whether it has escapes.
pub(super) fn string(s: &[u8], mut i: usize) -> Option<(usize, bool)> {
    let mut escaped = false;
    loop {
        // Eight bytes at a time up to the first quote, backslash or control character.
        while let Some(chunk) = s.get(i..i + 8) {
            let mut w = [0u8; 8];
            w.copy_from_slice(chunk);
            let flags = special(u64::from_le_bytes(w));
            if flags != 0 {
                i += (flags.trailing_zeros() / 8) as usize;
                break;
            }
            i += 8;
        }
        while s
            .get(i)
            .is_some_and(|&c| c != b'"' && c != b'\\' && c >= 0x20)
        {
            i += 1;
        }
        match *s.get(i)? {
            b'"' => return Some((i + 1, escaped)),
            b'\\' => {
                escaped = true;
                i = escape(s, i + 1)?;
            }
            _ => return None,
        }
    }
}

/// The escape whose letter is at `i`: the position after it.
fn escape(s: &[u8], i: usize) -> Option<usize> {
    match *s.get(i)? {
        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => Some(i + 1),
        b'u' => {
            let n = hex4(s, i + 1)?;
            match n {
                // A low surrogate first is refused.
                0xDC00..=0xDFFF => None,
                // A high surrogate needs `\u` and a low one right after it.
                0xD800..=0xDBFF => {
                    if s.get(i + 5..i + 7) != Some(b"\\u".as_slice()) {
                        return None;
                    }
                    matches!(hex4(s, i + 7)?, 0xDC00..=0xDFFF).then_some(i + 11)
                }
                _ => Some(i + 5),
            }
        }
        _ => None,
    }
}

fn hex4(s: &[u8], i: usize) -> Option<u16> {
    let mut n = 0u16;
    for &c in s.get(i..i + 4)? {
        let d = (c as char).to_digit(16)?;
        n = n * 16 + d as u16;
    }
    Some(n)
}

/// An integer of this many digits may be above 2^53.
const LONG_INTEGER_DIGITS: usize = 16;

/// The number starting at `i`: the position after it, and whether it is a long integer.
fn number(text: &str, start: usize) -> Option<(usize, bool)> {
    let s = text.as_bytes();
    let mut i = start + usize::from(s[start] == b'-');
    let int_from = i;
    match *s.get(i)? {
        b'0' => i += 1,
        b'1'..=b'9' => i = digits(s, i + 1),
        _ => return None,
    }
    let int_digits = i - int_from;
    let mut integer = true;
    if s.get(i) == Some(&b'.') {
        integer = false;
        let from = i + 1;
        i = digits(s, from);
        if i == from {
            return None;
        }
    }
    let mut exponent = false;
    if matches!(s.get(i), Some(b'e' | b'E')) {
        exponent = true;
        integer = false;
        i += 1;
        if matches!(s.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let from = i;
        i = digits(s, from);
        if i == from {
            return None;
        }
    }
    // Without an exponent a number of up to 300 integer digits is finite however it is
    // rounded; any other is read by serde_json, whose range check decides.
    if (exponent || int_digits > SAFE_INTEGER_DIGITS)
        && serde_json::from_str::<serde_json::Value>(text.get(start..i)?).is_err()
    {
        return None;
    }
    Some((i, integer && int_digits >= LONG_INTEGER_DIGITS))
}

fn digits(s: &[u8], mut i: usize) -> usize {
    while s.get(i).is_some_and(u8::is_ascii_digit) {
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::Value;

    use super::*;

    fn serde_says(t: &str) -> bool {
        serde_json::from_str::<Value>(t).is_ok()
    }

    #[test]
    fn accepts_what_serde_json_accepts() {
        let cases = [
            "",
            " ",
            "null",
            " true ",
            "false",
            "nul",
            "truex",
            "[true false]",
            "0",
            "-0",
            "01",
            "-01",
            "-",
            "+1",
            ".5",
            "1.",
            "1.5",
            "1.5.3",
            "1e5",
            "1E+5",
            "1e-5",
            "1e",
            "1e+",
            "1e400",
            "-1e400",
            "1e-400",
            "0e99999999999",
            "1e99999999999",
            "1.7976931348623157e308",
            "1.7976931348623159e308",
            "18446744073709551616",
            "-9223372036854775809",
            "\"\"",
            "\"a\\\"b\"",
            "\"\\q\"",
            "\"\\u00e9\"",
            "\"\\u00G9\"",
            "\"\\ud83d\\ude00\"",
            "\"\\ud83d\"",
            "\"\\ud83dx\"",
            "\"\\ud83d\\n\"",
            "\"\\ude00\"",
            "\"\\ud83d\\ud83d\"",
            "\"\\u12\"",
            "\"a\u{1}b\"",
            "\"a\u{7f}b\"",
            "\"tab\tin\"",
            "\"é日本😀\"",
            "\"unterminated",
            "[]",
            "[ ]",
            "[1,]",
            "[,1]",
            "[1 2]",
            "[1,,2]",
            "{}",
            "{ }",
            "{\"a\":1}",
            "{\"a\" : 1 , \"b\" : [ ] }",
            "{\"a\":1,}",
            "{\"a\"1}",
            "{a:1}",
            "{\"a\":1,\"a\":2}",
            "{\"a\\u0041\":1}",
            "{\"a\u{1}\":1}",
            "[1]]",
            "[1}",
            "{\"a\":1]",
            "{} {}",
            "{}x",
            "[1] ",
            "\n[1]\r\n",
            "[\"\\/\\b\\f\\n\\r\\t\"]",
            "[-]",
            "[0x10]",
            "[1.0e+00]",
            "[NaN]",
            "[Infinity]",
            "\u{feff}[1]",
        ];
        for t in cases {
            assert_eq!(check(t, true).is_some(), serde_says(t), "{t:?}");
            assert_eq!(check(t, false).is_some(), serde_says(t), "{t:?}");
        }
        let nest = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(check(&nest(127), false).is_some() && serde_says(&nest(127)));
        assert!(check(&nest(128), false).is_none() && !serde_says(&nest(128)));
        let big = format!("[{}]", "9".repeat(320));
        assert_eq!(check(&big, false).is_some(), serde_says(&big));
        let huge = format!("[{}]", "9".repeat(400));
        assert_eq!(check(&huge, false).is_some(), serde_says(&huge));
    }

    /// Quotes, escapes and control characters at every place of the eight-byte words
    /// the string scan reads, after ASCII or multi-byte characters.
    #[test]
    fn strings_end_where_they_end() {
        for fill in ["a", "é", "\u{7f}", "\u{ff}"] {
            for k in 0..20 {
                let head = fill.repeat(k);
                for tail in ["\"", "\\n\"", "\\u00e9x\"", "\u{1}\"", "\\q\"", ""] {
                    for after in ["", "  ", "abcdefghij"] {
                        let t = format!("[\"{head}{tail}{after}]");
                        assert_eq!(check(&t, false).is_some(), serde_says(&t), "{t:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn members_of_an_object_with_plain_keys() {
        let members = |t: &'static str, split: bool| check(t, split).expect("valid").members;
        assert_eq!(
            members(
                r#" { "a" : 1 , "b" : { "c" : "}" } , "d":[ ] , "a":null} "#,
                true
            ),
            Some(vec![
                ("a", "1"),
                ("b", r#"{ "c" : "}" }"#),
                ("d", "[ ]"),
                ("a", "null")
            ])
        );
        assert_eq!(members("{}", true), Some(vec![]));
        assert_eq!(members(r#"{"\u0061":1}"#, true), None);
        assert_eq!(members(r#"{"a":1}"#, false), None);
        assert_eq!(members("[1]", true), None);
        let long = |t: &str| check(t, false).expect("valid").long_integers;
        assert!(long("[9007199254740993]") && long("[-1000000000000000]"));
        assert!(!long(
            r#"[999999999999999, 1.0e20, 12345678901234567.5, "12345678901234567"]"#
        ));
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| serde_json::json!(n)),
            any::<f64>().prop_map(|f| serde_json::json!(f)),
            "\\PC{0,8}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map("\\PC{0,3}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Random documents, printed compact or pretty, then edited byte by byte with
        /// JSON's own punctuation: accepted exactly when serde_json accepts them, and an
        /// object's members are what serde_json reads as its members.
        #[test]
        fn agrees_with_serde_json(v in arb_json(), pretty in any::<bool>(), edits in prop::collection::vec((any::<prop::sample::Index>(), 0usize..16), 0..4)) {
            let text = if pretty { serde_json::to_string_pretty(&v).expect("prints") } else { v.to_string() };
            let mut b = text.into_bytes();
            for (at, what) in edits {
                let at = at.index(b.len() + 1);
                let piece: &[u8] = [&b","[..], b"}", b"]", b"{", b"[", b"\\", b"\"", b"1e999", b" ", b"\\ud800", b"\\udc00", b"\x01", b"0", b"-", b"e", b""][what];
                if what == 15 && at < b.len() {
                    b.remove(at);
                } else {
                    b.splice(at..at, piece.iter().copied());
                }
            }
            let Ok(t) = String::from_utf8(b) else { return Ok(()) };
            let parsed = serde_json::from_str::<Value>(&t);
            let got = check(&t, true);
            prop_assert_eq!(got.is_some(), parsed.is_ok(), "{:?}", t);
            if let (Some(Checked { members: Some(m), .. }), Ok(Value::Object(o))) = (got, parsed)
                && m.iter().map(|(k, _)| *k).collect::<std::collections::HashSet<_>>().len() == m.len()
            {
                prop_assert_eq!(m.len(), o.len());
                for (k, raw) in m {
                    let v: Value = serde_json::from_str(raw).expect("a member");
                    prop_assert_eq!(Some(&v), o.get(k));
                }
            }
        }
    }
}
