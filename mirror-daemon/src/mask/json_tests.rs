//! The one-pass JSON scanner (`json.rs`) checked against the straightforward reference
//! (`json_reference.rs`: serde_json validates, then a recursive scan masks): the same
//! output (or the same refusal), the same counters and the same request taint, over a
//! corpus of documents and generated ones; and the prefilter's edge cases (a string's
//! profile taken while scanning, PII split by escapes).
use proptest::prelude::*;

use super::detect::Profile;
use super::*;

fn key() -> MaskKey {
    MaskKey::from_bytes(&[3; 32]).expect("a 32-byte key")
}

/// The configurations the scanners are compared under: no rules; path rules (a
/// wildcard, a descendant, an index, a whole subtree); every detector with redaction;
/// the whole document masked by `json:$`.
fn configs() -> Vec<(&'static str, MaskConfig)> {
    let with = |rules: &[&str], f: &dyn Fn(&mut MaskConfig)| {
        let mut c = MaskConfig::with_defaults(key());
        for r in rules {
            c.add_rule_str(r).expect("a valid rule");
        }
        f(&mut c);
        c
    };
    vec![
        ("defaults", with(&[], &|_| {})),
        (
            "paths",
            with(
                &[
                    "json:$.user.name",
                    "json:$..secret",
                    "json:$.items[*].card",
                    "json:$.a[1]",
                    "json:$..x.y",
                ],
                &|_| {},
            ),
        ),
        (
            "all detectors, redact",
            with(&["json:$.user"], &|c| {
                c.detectors = Detectors::all();
                c.action = Action::Redact;
            }),
        ),
        ("root", with(&["json:$"], &|_| {})),
    ]
}

/// What one scanner made of `src`: the result, the values it counted as masked (by
/// kind), the request taint it collected.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    masked: Result<Option<String>, ()>,
    counted: Vec<(MaskKind, u64)>,
    taint: String,
}

type Scanner = fn(&Pass<'_>, &[JsonPath], &str) -> Result<Option<String>, json::Invalid>;

fn run(m: &Masker, src: &str, scan: Scanner) -> Outcome {
    let before = m.stats().snapshot().masked;
    let pass = Pass::collecting(m);
    let masked = scan(&pass, &m.json_paths, src).map_err(|_| ());
    let taint = format!("{:?}", pass.collect.map(std::cell::RefCell::into_inner));
    let counted = m
        .stats()
        .snapshot()
        .masked
        .iter()
        .zip(&before)
        .map(|((kind, after), (_, before))| (*kind, after - before))
        .collect();
    Outcome {
        masked,
        counted,
        taint,
    }
}

thread_local! {
    /// Per configuration, one masker for each scanner (same key: same tokens; their
    /// counters stay equal as long as the scanners agree). Built once per test thread:
    /// compiling the detectors is most of a debug build's time here.
    static MASKERS: Vec<(&'static str, Masker, Masker)> = configs()
        .into_iter()
        .map(|(name, cfg)| {
            let new = Masker::new(cfg.clone()).expect("a valid configuration");
            let reference = Masker::new(cfg).expect("a valid configuration");
            (name, new, reference)
        })
        .collect();
}

/// Both scanners agree on `src` under every configuration; returns the default
/// configuration's result.
fn check(src: &str) -> Result<Option<String>, ()> {
    MASKERS.with(|maskers| {
        let mut first = None;
        for (name, new, reference) in maskers {
            let new = run(new, src, json::mask_json);
            let reference = run(reference, src, json_reference::mask_json);
            if reference.masked.is_err() {
                // Refused by both; the new scanner leaves no trace (the reference counted
                // and tainted the values before a string that did not decode: serde's
                // validation pass accepts lone surrogates, its string decoding does not).
                assert!(new.masked.is_err(), "{name}: {src:?}");
                assert!(new.counted.iter().all(|(_, n)| *n == 0), "{name}: {src:?}");
                assert_eq!(new.taint, "Some(TaintSet { values: [], skipped: 0 })");
            } else {
                assert_eq!(new, reference, "{name}: {src:?}");
            }
            first.get_or_insert(new.masked);
        }
        first.expect("at least one configuration")
    })
}

/// Hand-written documents: nesting, escapes, unicode escapes, numbers shaped like cards
/// and phones, PII in keys and values, secrets by name, rule paths.
const VALID: &[&str] = &[
    r#"{}"#,
    r#"[]"#,
    r#" { } "#,
    "\t[\r\n]\n",
    r#""alice@example.com""#,
    r#"4111111111111111"#,
    r#"-4111111111111111"#,
    r#"4111111111111111.0"#,
    r#"4.111111111111111e15"#,
    r#"[4111111111111111, 4111111111111112, 1700000000123, 5551234567, 15551234567]"#,
    r#"{"n": 4012888888881881, "m": -0, "e": 1E+400, "f": 0.5e-3, "g": 12.50}"#,
    r#"true"#,
    r#"null"#,
    r#"{"a": true, "b": false, "c": null, "d": [null, true]}"#,
    r#"{"user": {"name": "Ana Silva", "email": "ana.silva@example.com", "phone": "+1 415 555 0142"}}"#,
    r#"{"alice@example.com": {"bob@example.org": 1}, "k": "carol@example.net"}"#,
    r#"{"note": "call (555) 123-4567 or 555.123.4567, ssn 123-45-6789"}"#,
    r#"{"iban": "DE89370400440532013000", "ip": "203.0.113.7", "v6": "2001:4860:4860::8888"}"#,
    r#"{"card": "4111 1111 1111 1111", "amex": "3782 822463 10005"}"#,
    r#"{"e": "bob\u0040example.com", "f": "\u0061lice@example.com", "g": "x@example\u002ecom"}"#,
    r#"{"al\u0069ce@example.com": "k", "\u0062ob@example.org": 2}"#,
    r#"{"t": "\"quoted\" alice@example.com \\ back\/slash \b\f\n\r\t"}"#,
    r#"{"u": "\u00e9l\u00e8ve@example.com", "emoji": "\ud83d\ude00 ana@example.com", "raw": "😀 ünïcödé"}"#,
    r#"{"p": "\u002B1 415 555 0142", "c": "4111\u00201111\u00201111\u00201111"}"#,
    r#"{"pct": "bob%40example.com", "q": "phone=%2B1-202-555-0147", "esc": "bob\u002540example.com"}"#,
    r#"{"password": "hunter2", "Authorization": "Bearer abc.def.ghi", "cookie": "a=1; b=2"}"#,
    r#"{"pass\u0077ord": "hunter2", "api_key": 12345, "token": {"a": [1, "x"]}, "secret": null}"#,
    r#"{"access_token": "tok_0123456789abcdef", "sid": "***", "pwd": ""}"#,
    r#"{"user": {"name": {"first": "Ana", "last": 42}}, "a": [0, "mask me", 2], "x": {"y": 7}}"#,
    r#"{"items": [{"card": "4111111111111111"}, {"card": 4111111111111111}, {"card": [1, {"z": "q"}]}]}"#,
    r#"{"deep": {"a": [{"secret": {"x": "s1", "y": [1, true, null, {"x": {"y": "z"}}]}}]}}"#,
    r#"{"a": {"a": {"a": [[["alice@example.com"]]]}}, "x": [{"y": 1}, {"x": {"y": 2}}]}"#,
    r#"{"dup": 1, "dup": "alice@example.com", "": ""}"#,
    r#"[[[[[[[[[[[[[[[[[[[[["alice@example.com"]]]]]]]]]]]]]]]]]]]]]"#,
    r#"{"k": "tok_0123456789abcdef", "e": "u-1a2b@3c4d.masked.invalid", "r": "***"}"#,
    r#"{"ts": "2024-01-15T10:30:00Z", "id": "550e8400-e29b-41d4-a716-446655440000", "v": "1.2.3"}"#,
];

/// Not JSON (for serde_json, or a string that does not decode to a `String`): both
/// scanners refuse, and the caller falls back to text.
const INVALID: &[&str] = &[
    "",
    "   ",
    "\u{feff}{}",
    r#"{"a": 1,}"#,
    r#"[1, 2,]"#,
    r#"[1 2]"#,
    r#"{"a" 1}"#,
    r#"{1: 2}"#,
    r#"{"a": 1} x"#,
    r#"{"a": 1}}"#,
    r#"[01]"#,
    r#"[-]"#,
    r#"[1.]"#,
    r#"[.5]"#,
    r#"[1e]"#,
    r#"[+1]"#,
    r#"[tru]"#,
    r#"[nulll]"#,
    r#"[NaN]"#,
    r#"["a"#,
    r#"{"a": "b"#,
    "[\"tab\there\"]",
    r#"["bad \x escape"]"#,
    r#"["\u12"]"#,
    r#"["\u12g4"]"#,
    r#"["lone \ud800 leading"]"#,
    r#"["lone \udc00 trailing"]"#,
    r#"{"alice@example.com": ["a lone surrogate after PII \ud803D"]}"#,
    r#"["pair \ud800\u0041 broken"]"#,
    r#"["pair \ud800\n broken"]"#,
    r#"{"e": "alice@example.com", "broken": }"#,
    r#"{"a": [1, 2}"#,
    r#"'single'"#,
];

/// The hand-over to the comparator (`json::mask_json_value`): under every
/// configuration, the same masked output as `mask_json`, and when the scan says its
/// output is a `Value` document, serde_json reads that output (`src` when unchanged) as
/// a `Value`, which is what the comparator's own check accepts. Returns whether the
/// default configuration's scan said so.
fn value_handover(src: &str) -> bool {
    MASKERS.with(|maskers| {
        let mut first = None;
        for (name, new, _) in maskers {
            let plain = Pass::plain(new);
            let masked = json::mask_json(&plain, &new.json_paths, src).ok();
            let with = json::mask_json_value(&plain, &new.json_paths, src).ok();
            assert_eq!(
                masked,
                with.as_ref().map(|(m, _)| m.clone()),
                "{name}: {src:?}"
            );
            let said = match with {
                Some((out, true)) => {
                    let out = out.as_deref().unwrap_or(src);
                    assert!(
                        serde_json::from_str::<serde_json::Value>(out).is_ok(),
                        "{name}: said to be a Value but is not: {out:?} (from {src:?})"
                    );
                    true
                }
                _ => false,
            };
            first.get_or_insert(said);
        }
        first.expect("at least one configuration")
    })
}

/// Nested `depth` arrays, the innermost empty or holding `1`.
fn nested(depth: usize, empty: bool) -> String {
    let inner = if empty { "" } else { "1" };
    format!("{}{inner}{}", "[".repeat(depth), "]".repeat(depth))
}

#[test]
fn the_handover_says_value_only_of_value_documents() {
    let mut said = 0;
    for src in VALID.iter().chain(INVALID) {
        said += usize::from(value_handover(src));
    }
    assert!(said > VALID.len() / 2, "said of {said} documents");
    for src in INVALID {
        assert!(!value_handover(src), "{src}");
    }
    // What the scan accepts but the `Value` parser checks further: nesting past its
    // recursion limit (an empty innermost container counts), and numbers out of an
    // f64's range; a card number masked as digits is left to the comparator too.
    for depth in [1, 126, 127] {
        for empty in [false, true] {
            assert!(value_handover(&nested(depth, empty)), "{depth} {empty}");
        }
    }
    for depth in [128, 129, 4000] {
        for empty in [false, true] {
            let src = nested(depth, empty);
            assert!(serde_json::from_str::<serde_json::Value>(&src).is_err());
            assert!(!value_handover(&src), "{depth} {empty}");
        }
    }
    let huge = format!("[{}]", "9".repeat(400));
    for src in ["[1E+400]", "[-1e400]", "[1e5]", huge.as_str()] {
        assert!(!value_handover(src), "{src}");
    }
    assert!(value_handover(&format!("[{}]", "9".repeat(300))));
    assert!(!value_handover(r#"{"n": 4111111111111111}"#));
    assert!(value_handover(
        r#"{"user": {"email": "ana@example.com", "note": "a \"quoted\" \u00e9 \ud83d\ude00"}}"#
    ));
}

#[test]
fn corpus_masks_as_the_reference() {
    for src in VALID {
        assert!(check(src).is_ok(), "{src}");
    }
    for src in INVALID {
        assert!(check(src).is_err(), "{src}");
    }
}

#[test]
fn pii_split_by_escapes_is_masked() {
    for (src, clear) in [
        (r#"{"e": "bob\u0040example.com"}"#, "example.com"),
        (r#"{"e": "\u0062ob@example.com"}"#, "example.com"),
        (r#"{"e": "bob@example\u002ecom"}"#, "example"),
        (r#"{"bob\u0040example.com": 1}"#, "example.com"),
        (r#"{"c": "4111\u00201111 1111 1111"}"#, "1111 1111"),
        (r#"{"p": "\u002b1 415 555 0142"}"#, "415 555"),
        (r#"{"s": "123\u002d45-6789"}"#, "6789"),
        (r#"{"e": "bob\u002540example.com"}"#, "example.com"),
        (r#"{"pass\u0077ord": "hunter2"}"#, "hunter2"),
    ] {
        let out = check(src)
            .expect("valid JSON")
            .expect("something was masked");
        assert!(!out.contains(clear), "{src} -> {out}");
    }
}

/// Before, the scan recursed once per level after a validation pass without a depth
/// limit: a deep document overflowed the thread's stack. Now a document up to
/// `MAX_DEPTH` deep is masked as JSON, a deeper one falls back to text (bounded
/// memory), and PII at the bottom is masked either way.
#[test]
fn deep_nesting_is_bounded() {
    let m = Masker::new(MaskConfig::with_defaults(key())).expect("a masker");
    let nested = |depth: usize| {
        format!(
            "{}\"alice@example.com\"{}",
            "[".repeat(depth),
            "]".repeat(depth)
        )
    };
    let headers = [crate::http::Header::new("Content-Type", "application/json")];
    for (depth, fallback) in [(json::MAX_DEPTH, 0), (json::MAX_DEPTH + 1, 1), (1 << 20, 1)] {
        let before = m.stats().snapshot().json_fallbacks;
        let body = nested(depth);
        let PersistBody::Text(out) = m.persistable_body(&headers, body.as_bytes()) else {
            panic!("JSON is text");
        };
        assert!(!out.contains("alice@"), "depth {depth}");
        assert!(
            out.starts_with("[[[") && out.ends_with("]]]"),
            "depth {depth}"
        );
        assert_eq!(
            m.stats().snapshot().json_fallbacks - before,
            fallback,
            "depth {depth}"
        );
    }
}

#[test]
fn scanned_profile_is_the_text_profile() {
    for text in [
        "",
        "a",
        "alice@example.com",
        "+1 (415) 555-0142",
        "bob%40example.com 10.0.0.1 fe80::1 DE89370400440532013000",
        "ünïcödé 😀",
    ] {
        let quoted = format!("\"{text}\",");
        let (end, p) = Profile::scan_json_string(quoted.as_bytes(), 0).expect("a string");
        assert_eq!((end.end, end.escaped), (text.len() + 2, false), "{text}");
        assert_eq!(p, Profile::of(text.as_bytes()), "{text}");
    }
    // Escapes are skipped whole (an escaped quote does not end the string).
    let (end, _) = Profile::scan_json_string(br#""a\"b\\" x"#, 0).expect("a string");
    assert_eq!((end.end, end.escaped), (8, true));
    for bad in [&b"\"abc"[..], b"\"a\x01b\"", b"\"a\\", b"\"\n\""] {
        assert!(Profile::scan_json_string(bad, 0).is_none(), "{bad:?}");
    }
}

/// A JSON string literal of `s`, each character escaped as `\uXXXX` (surrogate pairs
/// outside the BMP) where `mask`'s bit for it is set, and wherever JSON requires.
fn encode_string(s: &str, mask: u64) -> String {
    let mut out = String::from("\"");
    for (i, c) in s.chars().enumerate() {
        let forced = matches!(c, '"' | '\\') || u32::from(c) < 0x20;
        if forced || mask >> (i % 64) & 1 == 1 {
            match c {
                '"' if mask & 1 == 0 => out.push_str("\\\""),
                '\\' if mask & 1 == 0 => out.push_str("\\\\"),
                '\n' if mask & 2 == 0 => out.push_str("\\n"),
                '/' if mask & 4 == 0 => out.push_str("\\/"),
                _ => {
                    let mut units = [0u16; 2];
                    for u in c.encode_utf16(&mut units) {
                        out.push_str(&format!("\\u{u:04X}"));
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out.push('"');
    out
}

/// JSON text of a generated value, with varied whitespace and escaping.
#[derive(Clone, Debug)]
enum Doc {
    Str(String, u64),
    Num(String),
    Lit(&'static str),
    Arr(Vec<Doc>),
    Obj(Vec<((String, u64), Doc)>),
}

impl Doc {
    /// The document as text, its whitespace drawn from `ws`.
    fn text(&self, ws: u32) -> String {
        let mut out = String::new();
        let mut w = ws;
        self.write(&mut out, &mut w);
        out
    }

    fn write(&self, out: &mut String, ws: &mut u32) {
        let space = |out: &mut String, ws: &mut u32| {
            *ws = ws.rotate_left(3) ^ 0x9e37_79b9;
            out.push_str(["", " ", "", "\n  ", "\t", ""][(*ws % 6) as usize]);
        };
        match self {
            Doc::Str(s, m) => out.push_str(&encode_string(s, *m)),
            Doc::Num(n) => out.push_str(n),
            Doc::Lit(l) => out.push_str(l),
            Doc::Arr(items) => {
                out.push('[');
                for (i, d) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    space(out, ws);
                    d.write(out, ws);
                }
                space(out, ws);
                out.push(']');
            }
            Doc::Obj(members) => {
                out.push('{');
                for (i, ((k, m), d)) in members.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    space(out, ws);
                    out.push_str(&encode_string(k, *m));
                    space(out, ws);
                    out.push(':');
                    space(out, ws);
                    d.write(out, ws);
                }
                space(out, ws);
                out.push('}');
            }
        }
    }
}

fn text_leaf() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("ana.silva@example.com".to_string()),
        Just("bob%40example.org".to_string()),
        Just("+1 415 555 0142".to_string()),
        Just("(555) 123-4567".to_string()),
        Just("4111 1111 1111 1111".to_string()),
        Just("4012888888881881".to_string()),
        Just("123-45-6789".to_string()),
        Just("DE89370400440532013000".to_string()),
        Just("10.1.2.3 and fe80::1ff:fe23:4567:890a".to_string()),
        Just("Bearer eyJhbGciOiJIUzI1NiJ9.e30.c2ln".to_string()),
        Just("tok_0123456789abcdef".to_string()),
        Just("***".to_string()),
        Just("é😀\u{1}\"\\/\n".to_string()),
        "[a-zA-Z0-9 @%+().:/_-]{0,24}",
        "\\PC{0,8}",
    ]
}

fn key_leaf() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("user".to_string()),
        Just("name".to_string()),
        Just("secret".to_string()),
        Just("items".to_string()),
        Just("card".to_string()),
        Just("a".to_string()),
        Just("x".to_string()),
        Just("y".to_string()),
        Just("password".to_string()),
        Just("Authorization".to_string()),
        Just("cookie".to_string()),
        Just("api_key".to_string()),
        Just("alice@example.com".to_string()),
        "[a-z_@.]{0,10}",
    ]
}

fn number() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("4111111111111111".to_string()),
        Just("-4111111111111111".to_string()),
        Just("4012888888881881".to_string()),
        Just("5551234567".to_string()),
        Just("1700000000123".to_string()),
        Just("0".to_string()),
        Just("-0.5e10".to_string()),
        Just("12.50".to_string()),
        Just("1E+400".to_string()),
        "-?(0|[1-9][0-9]{0,18})(\\.[0-9]{1,3})?([eE][+-]?[0-9]{1,3})?",
    ]
}

fn doc() -> impl Strategy<Value = Doc> {
    let leaf = prop_oneof![
        (text_leaf(), any::<u64>()).prop_map(|(s, m)| Doc::Str(s, m & m.rotate_left(7))),
        number().prop_map(Doc::Num),
        prop_oneof![Just("true"), Just("false"), Just("null")].prop_map(Doc::Lit),
    ];
    leaf.prop_recursive(6, 48, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Doc::Arr),
            proptest::collection::vec(
                (
                    (key_leaf(), any::<u64>().prop_map(|m| m & m.rotate_left(5))),
                    inner
                ),
                0..6
            )
            .prop_map(Doc::Obj),
        ]
    })
}

/// `src` with one edit at about `at` (a fraction of its length): cut, a byte inserted,
/// or a character deleted; still UTF-8, mostly no longer JSON.
fn mutate(src: &str, at: f64, edit: u8) -> String {
    let mut i = ((src.len() as f64) * at) as usize;
    while !src.is_char_boundary(i) {
        i -= 1;
    }
    let (head, tail) = src.split_at(i);
    const INSERT: [&str; 9] = [",", "]", "}", "\"", "\\", "\u{1}", "x", "0", "\\u12"];
    match edit % 11 {
        0 => head.to_string(),
        1 => format!("{head}{}", tail.chars().skip(1).collect::<String>()),
        e => format!("{head}{}{tail}", INSERT[usize::from(e - 2)]),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 384, failure_persistence: None, ..ProptestConfig::default() })]

    /// Generated documents (nested, escaped, PII in keys and values, numbers shaped
    /// like cards) and one-edit corruptions of them mask exactly as the reference.
    #[test]
    fn generated_documents_mask_as_the_reference(
        d in doc(),
        ws in any::<u32>(),
        at in 0.0f64..1.0,
        edit in any::<u8>(),
    ) {
        let src = d.text(ws);
        prop_assert!(check(&src).is_ok(), "generated JSON must be valid: {}", src);
        let _ = check(&mutate(&src, at, edit));
    }

    /// The same documents and corruptions: the hand-over to the comparator says
    /// "a `Value`" only of what serde_json reads as one.
    #[test]
    fn generated_documents_hand_over_only_value_documents(
        d in doc(),
        ws in any::<u32>(),
        at in 0.0f64..1.0,
        edit in any::<u8>(),
    ) {
        let src = d.text(ws);
        value_handover(&src);
        value_handover(&mutate(&src, at, edit));
    }

    /// The profile the scanner takes is the text's own, for any unescaped string.
    #[test]
    fn scanned_profile_matches_for_any_text(text in "[^\"\\\\\\x00-\\x1f]{0,40}") {
        let quoted = format!("\"{text}\"");
        let (end, p) = Profile::scan_json_string(quoted.as_bytes(), 0).expect("a string");
        prop_assert_eq!(end.end, quoted.len());
        prop_assert!(!end.escaped);
        prop_assert_eq!(p, Profile::of(text.as_bytes()));
    }
}

/// A document found invalid half-way leaves the pass as it was: no count, and the
/// request taint collected before the scan (a header's value) kept, nothing added.
#[test]
fn a_refused_document_leaves_no_trace() {
    let m = Masker::new(MaskConfig::with_defaults(key())).expect("a masker");
    let pass = Pass::collecting(&m);
    pass.taint(b"header-secret-value", "tok_0123456789abcdef");
    let before = format!("{:?}", pass.collect.as_ref().map(|c| c.borrow().clone()));
    let counted = m.stats().snapshot().masked;
    let src = r#"{"alice@example.com": "bob@example.org", "n": 4111111111111111, "x": [1,]}"#;
    assert!(json::mask_json(&pass, &m.json_paths, src).is_err());
    let after = format!("{:?}", pass.collect.as_ref().map(|c| c.borrow().clone()));
    assert_eq!(after, before);
    assert_eq!(pass.collect.as_ref().map(|c| c.borrow().len()), Some(1));
    assert_eq!(m.stats().snapshot().masked, counted);
    // The same values in a valid document are counted and tainted.
    let valid = r#"{"alice@example.com": "bob@example.org", "n": 4111111111111111}"#;
    assert!(json::mask_json(&pass, &m.json_paths, valid).is_ok());
    assert_ne!(m.stats().snapshot().masked, counted);
    let tainted = format!("{:?}", pass.collect.as_ref().map(|c| c.borrow().clone()));
    assert_ne!(tainted, before);
}
