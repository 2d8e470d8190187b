//! Stage-level tests: rules, bodies, tokens across messages, seeded PII, throughput.
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use proptest::prelude::*;

use super::body::{Coding, Step, encode};
use super::*;
use crate::http::{CorrelationId, Timing, header};

fn key(seed: u8) -> MaskKey {
    MaskKey::from_bytes(&[seed; 32]).unwrap()
}

fn masker_with(rules: &[&str], f: impl FnOnce(&mut MaskConfig)) -> Masker {
    let mut cfg = MaskConfig::with_defaults(key(1));
    for r in rules {
        cfg.add_rule_str(r).unwrap();
    }
    f(&mut cfg);
    Masker::new(cfg).unwrap()
}

fn masker(rules: &[&str]) -> Masker {
    masker_with(rules, |_| {})
}

fn req(target: &str, headers: &[(&str, &[u8])], body: &[u8]) -> Request {
    Request {
        method: "POST".into(),
        target: target.into(),
        version: 1,
        headers: headers.iter().map(|(n, v)| Header::new(*n, v)).collect(),
        body: Bytes::copy_from_slice(body),
    }
}

fn resp(headers: &[(&str, &[u8])], body: &[u8]) -> Response {
    Response {
        version: 1,
        status: 200,
        reason: "OK".into(),
        headers: headers.iter().map(|(n, v)| Header::new(*n, v)).collect(),
        body: Bytes::copy_from_slice(body),
    }
}

fn hv<'a>(headers: &'a [Header], name: &str) -> &'a str {
    std::str::from_utf8(header(headers, name).unwrap()).unwrap()
}

fn body_str(b: &Bytes) -> &str {
    std::str::from_utf8(b).unwrap()
}

fn gunzip(b: &[u8]) -> String {
    let (d, _) = body::decode(&[Header::new("Content-Encoding", "gzip")], b, 1 << 24).unwrap();
    String::from_utf8(d.into_owned()).unwrap()
}

fn is_tok(s: &str) -> bool {
    s.len() == 20 && s.starts_with("tok_") && s[4..].bytes().all(|c| c.is_ascii_hexdigit())
}

#[test]
fn masker_is_send_sync_and_shareable() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Masker>();
    let m = Arc::new(masker(&[]));
    let handles: Vec<_> = (0..2)
        .map(|_| {
            let m = Arc::clone(&m);
            std::thread::spawn(move || m.mask_text("mail alice@example.com"))
        })
        .collect();
    let outs: Vec<String> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(outs[0], outs[1]);
    assert_eq!(m.stats().snapshot().masked(MaskKind::Email), 2);
}

#[test]
fn default_sensitive_headers() {
    let m = masker(&[]);
    let r = req(
        "/",
        &[
            ("Authorization", b"Bearer eyJhbGciOi.secret.sig"),
            ("Proxy-Authorization", b"Basic YWxhZGRpbjpvcGVuc2VzYW1l"),
            ("Cookie", b"sid=abc123; theme=dark; flag"),
            ("X-Api-Key", b"k-123456"),
            ("X-Auth-Token", b"t-999"),
            ("X-Client-Secret", b"s3cr3t"),
            ("X-User-Password", b"hunter2"),
            ("Content-Type", b"application/json"),
            ("Content-Length", b"0"),
            ("Accept", b"*/*"),
        ],
        b"",
    );
    let out = m.mask_request(&r);
    let auth = hv(&out.headers, "authorization");
    assert!(auth.starts_with("Bearer ") && is_tok(&auth[7..]), "{auth}");
    assert!(hv(&out.headers, "proxy-authorization").starts_with("Basic tok_"));
    let cookie = hv(&out.headers, "cookie");
    let parts: Vec<&str> = cookie.split("; ").collect();
    assert!(
        parts[0].starts_with("sid=tok_") && parts[1].starts_with("theme=tok_"),
        "{cookie}"
    );
    assert!(is_tok(parts[2]), "{cookie}");
    for h in [
        "x-api-key",
        "x-auth-token",
        "x-client-secret",
        "x-user-password",
    ] {
        assert!(is_tok(hv(&out.headers, h)), "{h}: {}", hv(&out.headers, h));
    }
    assert_eq!(hv(&out.headers, "accept"), "*/*");
    assert_eq!(hv(&out.headers, "content-type"), "application/json");
    // Header order and name case are kept.
    let names: Vec<&str> = out.headers.iter().map(|h| h.name.as_str()).collect();
    let orig: Vec<&str> = r.headers.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(names, orig);
    // 1 + 1 + 3 cookie pairs + 4 named/fragment headers.
    assert_eq!(m.stats().snapshot().masked(MaskKind::Header), 9);
}

#[test]
fn set_cookie_keeps_attributes_and_custom_header_rule() {
    let m = masker(&["header:X-Customer"]);
    let r = resp(
        &[
            ("Set-Cookie", b"sid=abc123; Path=/; HttpOnly; Max-Age=3600"),
            ("X-Customer", b"cust-42"),
            ("X-Trace", b"user alice@example.com"),
        ],
        b"",
    );
    let out = m.mask_response(&r);
    let sc = hv(&out.headers, "set-cookie");
    assert!(
        sc.starts_with("sid=tok_") && sc.ends_with("; Path=/; HttpOnly; Max-Age=3600"),
        "{sc}"
    );
    assert!(is_tok(hv(&out.headers, "x-customer")));
    let trace = hv(&out.headers, "x-trace");
    assert!(
        trace.starts_with("user u-") && trace.ends_with(".masked.invalid"),
        "{trace}"
    );
}

#[test]
fn same_value_same_token_everywhere() {
    let m = masker(&["json:$.token"]);
    let a = m.mask_request(&req(
        "/",
        &[("Authorization", b"abc"), ("Cookie", b"t=abc")],
        b"",
    ));
    let b = m.mask_response(&resp(&[("X-Api-Key", b"abc")], b""));
    let c = m.persistable_body(
        &[Header::new("Content-Type", "application/json")],
        br#"{"token":"abc"}"#,
    );
    let tok = hv(&a.headers, "authorization").to_string();
    assert_eq!(hv(&a.headers, "cookie"), format!("t={tok}"));
    assert_eq!(hv(&b.headers, "x-api-key"), tok);
    assert_eq!(c, PersistBody::Text(format!(r#"{{"token":"{tok}"}}"#)));
    // Another key, another token.
    let other = masker_with(&[], |c| c.key = key(2));
    let a2 = other.mask_request(&req("/", &[("Authorization", b"abc")], b""));
    assert_ne!(hv(&a2.headers, "authorization"), tok);
}

#[test]
fn json_paths_with_wildcards_and_numbers() {
    let m = masker(&[
        "json:$.user.name",
        "json:$.items[*].card.number",
        "json:$..secret",
        "json:$.meta[1]",
    ]);
    let src = r#"{ "user": {"name": "Alice Smith", "id": 7, "note": "call 555-123-4567"},
  "items": [ {"card": {"number": 4111111111111111, "brand": "visa"}}, {"card": {"number": "5500 0000 0000 0004"}} ],
  "deep": {"a": [{"secret": {"x": "s1", "y": [1, true, null]}}]},
  "meta": ["keep", "mask", "keep"],
  "order": 4111111111111112, "ts": 1700000000123, "price": 12.50
}"#;
    let out = m.mask_request(&req(
        "/",
        &[("Content-Type", b"application/json")],
        src.as_bytes(),
    ));
    let text = body_str(&out.body);
    let v: serde_json::Value = serde_json::from_str(text).unwrap();
    assert!(is_tok(v["user"]["name"].as_str().unwrap()));
    assert_eq!(v["user"]["id"], 7);
    assert!(
        v["user"]["note"].as_str().unwrap().starts_with("call 0"),
        "{}",
        v["user"]["note"]
    );
    assert!(is_tok(v["items"][0]["card"]["number"].as_str().unwrap()));
    assert_eq!(v["items"][0]["card"]["brand"], "visa");
    assert!(is_tok(v["items"][1]["card"]["number"].as_str().unwrap()));
    assert!(is_tok(v["deep"]["a"][0]["secret"]["x"].as_str().unwrap()));
    assert!(is_tok(
        v["deep"]["a"][0]["secret"]["y"][0].as_str().unwrap()
    ));
    assert_eq!(v["deep"]["a"][0]["secret"]["y"][1], true);
    assert_eq!(
        v["meta"],
        serde_json::json!(["keep", v["meta"][1].clone(), "keep"])
    );
    assert!(is_tok(v["meta"][1].as_str().unwrap()));
    assert_eq!(v["order"], serde_json::json!(4111111111111112u64));
    assert_eq!(v["ts"], serde_json::json!(1700000000123u64));
    // Formatting and key order survive: only the masked spans changed.
    assert!(text.starts_with("{ \"user\": {\"name\": \"tok_"), "{text}");
    assert!(text.contains("\"price\": 12.50\n}"));
    let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        ["user", "items", "deep", "meta", "order", "ts", "price"]
    );
    assert_eq!(hv(&out.headers, "content-type"), "application/json");
}

#[test]
fn json_detectors_on_strings_keys_and_card_numbers() {
    let m = masker(&[]);
    let src = r#"{"alice@example.com":{"c":4111111111111111,"s":"ssn 123-45-6789","e":"bob\u0040example.com"}}"#;
    let out = m.persistable_body(&[], src.as_bytes());
    let PersistBody::Text(t) = out else {
        panic!("{out:?}")
    };
    assert!(
        !t.contains("alice@") && !t.contains("123-45-6789") && !t.contains("bob"),
        "{t}"
    );
    let v: serde_json::Value = serde_json::from_str(&t).unwrap();
    let (k, inner) = v.as_object().unwrap().iter().next().unwrap();
    assert!(k.ends_with(".masked.invalid"));
    // A bare card number stays a number: same length, last four kept.
    let c = inner["c"].as_u64().unwrap().to_string();
    assert_eq!(c.len(), 16);
    assert!(c.ends_with("1111") && c != "4111111111111111");
}

#[test]
fn invalid_json_falls_back_to_text() {
    let m = masker(&["json:$.a"]);
    let src = b"{\"a\": \"x\", broken alice@example.com";
    let out = m.mask_request(&req("/", &[("Content-Type", b"application/json")], src));
    let t = body_str(&out.body);
    assert!(t.starts_with("{\"a\": \"x\", broken u-"), "{t}");
    assert_eq!(m.stats().snapshot().json_fallbacks, 1);
}

#[test]
fn query_and_form_rules() {
    let m = masker(&["query:q", "form:card_holder"]);
    let r = req(
        "/search/alice%40example.com/x?q=hello+world&page=2&mail=bob%40example.com&empty=&flag",
        &[
            ("Content-Type", b"application/x-www-form-urlencoded"),
            ("Content-Length", b"64"),
        ],
        b"card_holder=Alice+Smith&amount=12.50&phone=%28555%29+123-4567&note=hi",
    );
    let out = m.mask_request(&r);
    let (path, query) = out.target.split_once('?').unwrap();
    assert!(
        path.starts_with("/search/u-") && path.ends_with(".masked.invalid/x"),
        "{path}"
    );
    let pairs: Vec<&str> = query.split('&').collect();
    assert!(pairs[0].starts_with("q=tok_"), "{query}");
    assert_eq!(pairs[1], "page=2");
    assert!(
        pairs[2].starts_with("mail=u-") && pairs[2].contains("%40"),
        "{query}"
    );
    assert_eq!(&pairs[3..], ["empty=", "flag"]);
    let form = body_str(&out.body);
    let fp: Vec<&str> = form.split('&').collect();
    assert!(fp[0].starts_with("card_holder=tok_"), "{form}");
    assert_eq!(fp[1], "amount=12.50");
    assert!(
        fp[2].starts_with("phone=%280") && !form.contains("555"),
        "{form}"
    );
    assert_eq!(fp[3], "note=hi");
    assert_eq!(
        hv(&out.headers, "content-length"),
        out.body.len().to_string()
    );
    // Unchanged targets are kept byte for byte.
    assert_eq!(m.mask_target("/a%2Fb?x=1+2&y"), "/a%2Fb?x=1+2&y");
    let s = m.stats().snapshot();
    assert_eq!(
        (s.masked(MaskKind::Query), s.masked(MaskKind::Form)),
        (1, 1)
    );
}

#[test]
fn referer_is_masked_like_a_target() {
    let m = masker(&["query:token"]);
    let out = m.mask_request(&req(
        "/",
        &[("Referer", b"https://shop.example/cb?token=abc&x=1")],
        b"",
    ));
    let r = hv(&out.headers, "referer");
    assert!(
        r.starts_with("https://shop.example/cb?token=tok_") && r.ends_with("&x=1"),
        "{r}"
    );
}

#[test]
fn compressed_bodies_are_masked_and_reencoded() {
    let m = masker(&["json:$.user.email"]);
    let json = br#"{"user":{"email":"alice@example.com","phone":"+44 20 7946 0958"}}"#;
    for (ce, coding) in [
        ("gzip", Coding::one(Step::Gzip)),
        ("deflate", Coding::one(Step::Zlib)),
        ("deflate", Coding::one(Step::RawDeflate)),
        ("br", Coding::one(Step::Brotli)),
        ("gzip, br", Coding(vec![Step::Gzip, Step::Brotli])),
    ] {
        let enc = encode(json, &coding).unwrap();
        let len = enc.len().to_string();
        let r = req(
            "/",
            &[
                ("Content-Type", b"application/json"),
                ("Content-Encoding", ce.as_bytes()),
                ("Content-Length", len.as_bytes()),
            ],
            &enc,
        );
        let out = m.mask_request(&r);
        assert_eq!(hv(&out.headers, "content-encoding"), ce);
        assert_eq!(
            hv(&out.headers, "content-length"),
            out.body.len().to_string()
        );
        let (dec, seen) = body::decode(&out.headers, &out.body, 1 << 20).unwrap();
        assert_eq!(seen, coding, "{ce}");
        let v: serde_json::Value = serde_json::from_slice(&dec).unwrap();
        assert!(is_tok(v["user"]["email"].as_str().unwrap()));
        assert!(v["user"]["phone"].as_str().unwrap().starts_with("+0"));
        // What may be stored is the decoded, masked text.
        let PersistBody::Text(t) = m.persistable_body(&r.headers, &r.body) else {
            panic!("opaque")
        };
        assert_eq!(t.as_bytes(), dec.as_ref());
    }
    assert_eq!(m.stats().snapshot().bodies_decoded, 10);
}

#[test]
fn unreadable_bodies_are_opaque_and_kept_only_without_detections() {
    let m = masker_with(&[], |c| c.max_decoded_body = 1024);
    let digest_len = 64;
    let cases: Vec<(Vec<Header>, Vec<u8>)> = vec![
        (
            vec![Header::new("Content-Type", "image/png")],
            b"\x89PNG\r\n\x1a\n\0\0binary".to_vec(),
        ),
        (
            vec![Header::new("Content-Encoding", "zstd")],
            b"\x28\xb5\x2f\xfdzstd?".to_vec(),
        ),
        (
            vec![Header::new("Content-Encoding", "gzip")],
            b"corrupt gzip".to_vec(),
        ),
        (
            vec![Header::new("Content-Encoding", "gzip")],
            encode(&[b'a'; 4096], &Coding::one(Step::Gzip)).unwrap(),
        ),
        (
            vec![Header::new("Content-Type", "text/plain")],
            vec![b'x'; 2000],
        ),
    ];
    for (h, b) in &cases {
        match m.persistable_body(h, b) {
            PersistBody::Opaque { len, sha256 } => {
                assert_eq!(len, b.len());
                assert_eq!(sha256.len(), digest_len);
            }
            t => panic!("{h:?}: {t:?}"),
        }
        let out = m.mask_request(&Request {
            headers: h.clone(),
            ..req("/", &[], b)
        });
        assert_eq!(out.body.as_ref(), b.as_slice(), "{h:?}");
    }
    let s = m.stats().snapshot();
    assert_eq!(
        (
            s.opaque_bodies,
            s.unsupported_encoding,
            s.decode_failures,
            s.oversize_bodies
        ),
        (5, 2, 2, 4)
    );
    // A binary body with visible PII: the text runs are masked in place.
    let bin = b"\0\x01\xffcard=4111111111111111\0\xfe".to_vec();
    let out = m.mask_request(&req(
        "/",
        &[("Content-Type", b"application/octet-stream")],
        &bin,
    ));
    assert!(!out.body.windows(16).any(|w| w == b"4111111111111111"));
    assert!(out.body.starts_with(b"\0\x01\xffcard=") && out.body.ends_with(b"1111\0\xfe"));
    assert_eq!(m.stats().snapshot().raw_bodies_masked, 1);
    // Opaque digests are keyed: equal for equal bodies, not a bare SHA-256.
    let PersistBody::Opaque { sha256, .. } = m.persistable_body(&[], &bin) else {
        panic!()
    };
    let PersistBody::Opaque { sha256: again, .. } = m.persistable_body(&[], &bin) else {
        panic!()
    };
    assert_eq!(sha256, again);
    use sha2::Digest;
    assert_ne!(sha256, hex::encode(sha2::Sha256::digest(&bin)));
}

#[test]
fn redact_action() {
    let m = masker_with(&["json:$.n", "query:q"], |c| c.action = Action::Redact);
    let out = m.mask_request(&req(
        "/?q=1",
        &[
            ("Authorization", b"Bearer x"),
            ("Content-Type", b"application/json"),
        ],
        br#"{"n":12,"m":"alice@example.com","c":4111111111111111}"#,
    ));
    assert_eq!(hv(&out.headers, "authorization"), "Bearer [REDACTED]");
    assert_eq!(out.target, "/?q=%5BREDACTED%5D");
    assert_eq!(
        body_str(&out.body),
        r#"{"n":"[REDACTED]","m":"[REDACTED]","c":"[REDACTED]"}"#
    );
    let again = m.mask_request(&out);
    assert_eq!(again, out);
}

fn sample_exchange() -> Exchange {
    let client: SocketAddr = "198.18.7.9:51234".parse().unwrap();
    let server: SocketAddr = "10.0.0.2:8080".parse().unwrap();
    let req_json =
        br#"{"user":{"email":"alice@example.com","ssn":"123-45-6789","phone":"(555) 123-4567"},
 "payment":{"card":"4111 1111 1111 1111","iban":"DE89 3704 0044 0532 0130 00"},
 "items":[{"sku":"A-1","qty":2,"price":19.99}],"orderId":"4111111111111112"}"#;
    let resp_json =
        br#"{"customer":{"email":"alice@example.com","phones":["+44 20 7946 0958","555-987-6543"]},
 "cards":[{"number":"5500-0000-0000-0004","last4":"0004"}],"session":"s-1","ip":"203.0.113.77"}"#;
    let gz = encode(resp_json, &Coding::one(Step::Gzip)).unwrap();
    let gz_len = gz.len().to_string();
    Exchange {
        id: CorrelationId::new(),
        flow: crate::capture::FlowKey { client, server },
        request: req(
            "/api/orders?email=carol%40example.org&ssn=219-09-9999&page=1",
            &[
                ("Host", b"shop.example"),
                ("Authorization", b"Bearer sk_live_SEEDED_TOKEN_1"),
                ("Cookie", b"session=SEEDED_COOKIE_2; pref=x"),
                ("X-Api-Key", b"SEEDED_APIKEY_3"),
                ("X-Forwarded-For", b"203.0.113.77"),
                ("Content-Type", b"application/json"),
            ],
            req_json,
        ),
        response: resp(
            &[
                ("Set-Cookie", b"session=SEEDED_SETCOOKIE_4; Path=/; Secure"),
                ("Content-Type", b"application/json"),
                ("Content-Encoding", b"gzip"),
                ("Content-Length", gz_len.as_bytes()),
            ],
            &gz,
        ),
        timing: Timing::default(),
    }
}

/// Everything an exchange holds, as text: Debug (ids, timing), flow, target, header
/// values and bodies as (lossy) text, gzip bodies decoded.
fn render(e: &Exchange) -> String {
    let mut s = format!(
        "{e:?}\n{}\n{} {}\n{}\n",
        e.flow, e.request.method, e.request.target, e.response.reason
    );
    for (headers, body) in [
        (&e.request.headers, &e.request.body),
        (&e.response.headers, &e.response.body),
    ] {
        for h in headers.iter() {
            s.push_str(&format!(
                "{}: {}\n",
                h.name,
                String::from_utf8_lossy(&h.value)
            ));
        }
        s.push_str(&String::from_utf8_lossy(body));
        if header(headers, "content-encoding") == Some(b"gzip".as_slice()) {
            s.push_str(&gunzip(body));
        }
        s.push('\n');
    }
    s
}

const SEEDED: &[&str] = &[
    "alice@example.com",
    "carol%40example.org",
    "carol@example.org",
    "123-45-6789",
    "219-09-9999",
    "(555) 123-4567",
    "555-987-6543",
    "+44 20 7946 0958",
    "4111 1111 1111 1111",
    "5500-0000-0000-0004",
    "DE89 3704 0044 0532 0130 00",
    "203.0.113.77",
    "198.18.7.9",
    "SEEDED_TOKEN_1",
    "SEEDED_COOKIE_2",
    "SEEDED_APIKEY_3",
    "SEEDED_SETCOOKIE_4",
];

#[test]
fn seeded_pii_never_survives() {
    let m = masker_with(&["json:$.cards[*].last4"], |c| {
        c.detectors = Detectors::all()
    });
    let e = sample_exchange();
    // The fixture really carries the PII (the gzip body hides its part from a naive scan).
    let raw = render(&e);
    for s in SEEDED.iter().filter(|s| !s.starts_with("carol@")) {
        assert!(raw.contains(s), "fixture lacks {s}");
    }
    let out = m.mask_exchange(&e);
    let decoded = gunzip(&out.response.body);
    let mut rendered = render(&out);
    for (h, b) in [
        (&out.request.headers, &out.request.body),
        (&out.response.headers, &out.response.body),
    ] {
        match m.persistable_body(h, b) {
            PersistBody::Text(t) => rendered.push_str(&t),
            o => panic!("{o:?}"),
        }
    }
    for s in SEEDED {
        assert!(!rendered.contains(s), "{s} survived in {rendered}");
    }
    // Digits of the cards other than the last four are gone too.
    assert!(!rendered.contains("4111111111111111") && !rendered.contains("5500000000000004"));
    // Non-PII survives: the order id failing Luhn, the sku, prices.
    for keep in [
        "4111111111111112",
        "\"sku\":\"A-1\"",
        "19.99",
        "page=1",
        "shop.example",
    ] {
        assert!(rendered.contains(keep), "{keep} was masked");
    }
    assert_eq!(out.flow.server, e.flow.server);
    assert_eq!(out.flow.client.port(), e.flow.client.port());
    // The replayable request/response are still valid: gzip decodes, JSON parses.
    serde_json::from_str::<serde_json::Value>(&decoded).unwrap();
    serde_json::from_slice::<serde_json::Value>(&out.request.body).unwrap();
    assert_eq!(
        hv(&out.response.headers, "content-length"),
        out.response.body.len().to_string()
    );
    // Stable: masking the masked exchange changes nothing.
    let twice = m.mask_exchange(&out);
    assert_eq!(twice.request, out.request);
    assert_eq!(gunzip(&twice.response.body), decoded);
    assert_eq!(
        twice
            .response
            .headers
            .iter()
            .filter(|h| h.name != "Content-Length")
            .collect::<Vec<_>>(),
        out.response
            .headers
            .iter()
            .filter(|h| h.name != "Content-Length")
            .collect::<Vec<_>>()
    );
}

#[test]
fn legacy_and_candidate_mask_alike() {
    // The candidate receives the masked request and echoes its values: its (unmasked)
    // response must equal the masked legacy response where the originals matched.
    let m = masker(&["json:$.user.id"]);
    let legacy = resp(&[("Content-Type", b"application/json")], br#"{"user": {"id": 12345, "email": "alice@example.com", "phone": "555-123-4567", "card": "4111111111111111"}}"#);
    let masked_legacy = m.mask_response(&legacy);
    let candidate = m.mask_response(&masked_legacy);
    assert_eq!(candidate.body, masked_legacy.body);
}

#[test]
fn mask_text_for_logs() {
    let m = masker_with(&[], |c| c.detectors = Detectors::all());
    let line =
        "user alice@example.com from 192.0.2.10 paid with 4111-1111-1111-1111 order 1700000000123";
    let out = m.mask_text(line);
    assert!(
        !out.contains("alice@")
            && !out.contains("192.0.2.10")
            && !out.contains("4111-1111-1111-1111"),
        "{out}"
    );
    assert!(out.contains("-1111 order 1700000000123"), "{out}");
    assert_eq!(m.mask_text(&out), out);
}

proptest! {
    // No regression files: they would land outside this module's directory.
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    /// Masking is stable on text made of PII-looking pieces: a second pass is a no-op.
    #[test]
    fn masking_is_idempotent(parts in proptest::collection::vec(prop_oneof![
        Just("alice@example.com".to_string()),
        Just("4111 1111 1111 1111".to_string()),
        Just("4012888888881881".to_string()),
        Just("123-45-6789".to_string()),
        Just("(555) 123-4567".to_string()),
        Just("+1 555 123 4567".to_string()),
        Just("DE89370400440532013000".to_string()),
        Just("10.1.2.3".to_string()),
        Just("2001:4860::8888".to_string()),
        "[0-9 .:@+()-]{0,12}",
        "[a-z]{0,6}",
    ], 0..8)) {
        let m = masker_with(&[], |c| c.detectors = Detectors::all());
        let text = parts.join(" ");
        let once = m.mask_text(&text);
        prop_assert_eq!(m.mask_text(&once), once);
    }

    /// Arbitrary bodies, content types and codings never panic.
    #[test]
    fn fuzz_entry_never_panics(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        fuzz_mask(&data);
    }
}

/// A realistic ~1 MiB JSON document (orders with customers, addresses, cards, free text).
fn realistic_json(target: usize) -> String {
    let mut s = String::from("{\"page\":1,\"orders\":[");
    let mut i = 0u64;
    while s.len() < target {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&format!(
            r#"{{"id":"ord_{i:08}","created":"2024-01-{:02}T10:{:02}:00Z","status":"shipped","total":{}.{:02},"currency":"EUR",
"customer":{{"id":{},"name":"Customer {i}","email":"user{i}@example.com","phone":"+1 555 {:03} {:04}","vip":false}},
"shipping":{{"street":"{} Main Street","city":"Springfield","zip":"{:05}","country":"US"}},
"payment":{{"method":"card","card":"4111111111111111","exp":"12/27","auth":"A{i:06}"}},
"items":[{{"sku":"SKU-{}","name":"Widget model {}","qty":{},"price":9.99,"tags":["blue","large","v2.1.3"]}},{{"sku":"SKU-{}","name":"Gadget","qty":1,"price":129.00,"tags":[]}}],
"note":"Leave at the door, ring twice. Tracking 1Z999AA1012345678{}."}}"#,
            i % 28 + 1, i % 60, i * 7 % 1000, i % 100, 100000 + i, i % 1000, i % 10000, i % 900 + 1, i % 99999, i, i % 50, i % 5 + 1, i + 1, i % 10
        ));
        i += 1;
    }
    s.push_str("]}");
    s
}

#[test]
#[ignore = "throughput measurement; run with --release --ignored --nocapture"]
fn mask_throughput() {
    let m = masker(&["json:$.orders[*].customer.name", "json:$..auth"]);
    let doc = realistic_json(1 << 20);
    let r = resp(&[("Content-Type", b"application/json")], doc.as_bytes());
    // Warm up, then measure.
    let first = m.mask_response(&r);
    assert!(!body_str(&first.body).contains("user1@example.com"));
    let iters = 20;
    let start = std::time::Instant::now();
    let mut total = 0usize;
    for _ in 0..iters {
        total += m.mask_response(&r).body.len();
    }
    let secs = start.elapsed().as_secs_f64();
    let mb = (doc.len() * iters) as f64 / (1024.0 * 1024.0);
    println!(
        "mask_throughput: {:.1} MB/s ({} bytes JSON x {iters} in {secs:.3}s, out {total} bytes)",
        mb / secs,
        doc.len()
    );
    // The same response, as an echo target of a request that had secrets masked.
    let (_, taint) = m.mask_request_tainted(&echo_request());
    let start = std::time::Instant::now();
    for _ in 0..iters {
        total += m.mask_response_tainted(&r, &taint).body.len();
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "mask_throughput with {} tainted values: {:.1} MB/s (out {total} bytes in all)",
        taint.values(),
        mb / secs
    );
    // The per-exchange cost of taint: masking a typical request and sealing its taint.
    let request = echo_request();
    let n = 20_000;
    let start = std::time::Instant::now();
    for _ in 0..n {
        let (_, t) = m.mask_request_tainted(&request);
        assert!(!t.is_empty());
    }
    let with = start.elapsed().as_secs_f64();
    let start = std::time::Instant::now();
    for _ in 0..n {
        assert!(!m.mask_request(&request).target.is_empty());
    }
    let without = start.elapsed().as_secs_f64();
    println!(
        "request with {} secrets: {:.1} µs masked and tainted, {:.1} µs masked only",
        taint.values(),
        with * 1e6 / f64::from(n),
        without * 1e6 / f64::from(n)
    );
    let s = m.stats().snapshot();
    println!("stats: {s:?}");
}

// ---- echoes (issue 13): taint, secrets by name, decoded detection ----

/// What an httpbin-like service answers to `r`: headers, decoded query, raw URL and body.
fn httpbin_echo(r: &Request) -> String {
    let query = r.target.split_once('?').map_or("", |(_, q)| q);
    let args: serde_json::Map<String, serde_json::Value> = form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned().into()))
        .collect();
    let headers: serde_json::Map<String, serde_json::Value> = r
        .headers
        .iter()
        .filter(|h| !h.name.eq_ignore_ascii_case("content-length"))
        .map(|h| {
            (
                h.name.to_string(),
                String::from_utf8_lossy(&h.value).into_owned().into(),
            )
        })
        .collect();
    serde_json::json!({
        "args": args,
        "headers": headers,
        "url": format!("http://svc{}", r.target),
        "data": String::from_utf8_lossy(&r.body),
    })
    .to_string()
}

fn echo_request() -> Request {
    req(
        "/anything?phone=%2B1-202-555-0147&access_token=AT-9f8e7d6c5b&q=ok",
        &[
            ("Authorization", b"Bearer sk_live_abcdef123456"),
            ("Cookie", b"theme=dark; session=S3ss10n-0123456789"),
            ("Content-Type", b"application/json"),
        ],
        br#"{"email":"ana@example.com","password":"hunter2-long","note":"ok"}"#,
    )
}

const ECHO_SECRETS: [&str; 7] = [
    "+1-202-555-0147",
    "%2B1-202-555-0147",
    "AT-9f8e7d6c5b",
    "sk_live_abcdef123456",
    "S3ss10n-0123456789",
    "ana@example.com",
    "hunter2-long",
];

fn assert_no_secret(what: &str, text: &str) {
    for s in ECHO_SECRETS {
        assert!(!text.contains(s), "{s} in {what}: {text}");
    }
}

#[test]
fn echoes_of_masked_request_values_compare_equal_in_every_coding() {
    let m = masker(&[]);
    let original = echo_request();
    let (masked_req, taint) = m.mask_request_tainted(&original);
    assert!(taint.values() >= 6, "{}", taint.values());
    assert_no_secret("masked request target", &masked_req.target);
    assert_no_secret("masked request body", body_str(&masked_req.body));
    let legacy_echo = httpbin_echo(&original);
    let candidate_echo = httpbin_echo(&masked_req);
    for (ce, coding) in [
        ("", Coding::IDENTITY),
        ("gzip", Coding::one(Step::Gzip)),
        ("br", Coding::one(Step::Brotli)),
        ("gzip, br", Coding(vec![Step::Gzip, Step::Brotli])),
    ] {
        let mk = |echo: &str, auth: &[u8]| {
            let body = encode(echo.as_bytes(), &coding).unwrap();
            let mut h: Vec<(&str, &[u8])> = vec![
                ("Content-Type", b"application/json"),
                ("X-Echo-Authorization", auth),
            ];
            if !ce.is_empty() {
                h.push(("Content-Encoding", ce.as_bytes()));
            }
            resp(&h, &body)
        };
        let legacy =
            m.mask_response_tainted(&mk(&legacy_echo, b"Bearer sk_live_abcdef123456"), &taint);
        let cand_auth = header(&masked_req.headers, "authorization")
            .unwrap()
            .to_vec();
        let candidate = m.mask_response_tainted(&mk(&candidate_echo, &cand_auth), &taint);
        let dec = |r: &Response| {
            let (d, _) = body::decode(&r.headers, &r.body, 1 << 20).unwrap();
            String::from_utf8(d.into_owned()).unwrap()
        };
        let (l, c) = (dec(&legacy), dec(&candidate));
        assert_no_secret(ce, &l);
        assert_eq!(l, c, "{ce}: the echo differs");
        assert_eq!(
            hv(&legacy.headers, "x-echo-authorization"),
            hv(&candidate.headers, "x-echo-authorization")
        );
        assert_no_secret(ce, hv(&legacy.headers, "x-echo-authorization"));
        // What is stored is masked too.
        let PersistBody::Text(t) = m.persistable_body(&legacy.headers, &legacy.body) else {
            panic!("opaque {ce}")
        };
        assert_no_secret(ce, &t);
    }
    assert!(m.stats().snapshot().echoes_masked > 0);
    // Without the taint the raw URL echo would keep the secrets: the control.
    let plain = m.mask_response(&resp(
        &[("Content-Type", b"text/plain")],
        b"token AT-9f8e7d6c5b",
    ));
    assert!(body_str(&plain.body).contains("AT-9f8e7d6c5b"));
}

#[test]
fn echoes_in_url_encoded_html_and_base64_forms() {
    use base64::Engine as _;
    let m = masker(&[]);
    let (masked_req, taint) = m.mask_request_tainted(&echo_request());
    let b64 = base64::engine::general_purpose::STANDARD;
    let form = format!(
        "args.phone=%2B1-202-555-0147&cookie={}&auth={}",
        form_urlencoded::byte_serialize(b"theme=dark; session=S3ss10n-0123456789")
            .collect::<String>(),
        b64.encode("Bearer sk_live_abcdef123456"),
    );
    let html = "<td>ana@example.com</td><td>hunter2-long</td><td>S3ss10n-0123456789</td>";
    for (ct, body) in [
        ("application/x-www-form-urlencoded", form.as_str()),
        ("text/html", html),
        (
            "application/octet-stream",
            &b64.encode("sk_live_abcdef123456"),
        ),
    ] {
        let out = m.mask_response_tainted(
            &resp(&[("Content-Type", ct.as_bytes())], body.as_bytes()),
            &taint,
        );
        let text = body_str(&out.body);
        assert_no_secret(ct, text);
        for s in ["sk_live_abcdef123456", "Bearer sk_live_abcdef123456"] {
            assert!(
                !text.contains(&b64.encode(s)),
                "{ct}: base64 of {s} in {text}"
            );
        }
    }
    // The base64 of the whole header became the base64 of the masked header, which is
    // what an identical candidate echoes.
    let masked_auth = header(&masked_req.headers, "authorization").unwrap();
    let out = m.mask_response_tainted(
        &resp(
            &[("Content-Type", b"text/plain")],
            b64.encode("Bearer sk_live_abcdef123456").as_bytes(),
        ),
        &taint,
    );
    assert_eq!(body_str(&out.body), b64.encode(masked_auth));
}

#[test]
fn basic_credentials_are_tainted_decoded() {
    use base64::Engine as _;
    let m = masker(&[]);
    let creds = base64::engine::general_purpose::STANDARD.encode("ana:Pa55word-xyz");
    let r = req(
        "/",
        &[("Authorization", format!("Basic {creds}").as_bytes())],
        b"",
    );
    let (_, taint) = m.mask_request_tainted(&r);
    let out = m.mask_response_tainted(
        &resp(
            &[("Content-Type", b"application/json")],
            br#"{"user":"ana","pw":"Pa55word-xyz","pair":"ana:Pa55word-xyz"}"#,
        ),
        &taint,
    );
    assert!(
        !body_str(&out.body).contains("Pa55word-xyz"),
        "{}",
        body_str(&out.body)
    );
}

#[test]
fn secrets_by_name_in_json_query_form_and_text() {
    let m = masker(&[]);
    let out = m.mask_request(&req(
        "/login?user=ana&Access-Token=AT-9f8e7d6c5b&page=2",
        &[("Content-Type", b"application/x-www-form-urlencoded")],
        b"username=ana&password=hunter2-long&remember=1",
    ));
    assert!(
        out.target.starts_with("/login?user=ana&Access-Token=tok_"),
        "{}",
        out.target
    );
    assert!(out.target.ends_with("&page=2"), "{}", out.target);
    let body = body_str(&out.body);
    assert!(
        body.starts_with("username=ana&password=tok_") && body.ends_with("&remember=1"),
        "{body}"
    );
    let out = m.mask_response(&resp(
        &[("Content-Type", b"application/json")],
        br#"{"headers":{"Authorization":"Bearer sk_live_abcdef123456","Cookie":"theme=dark; session=S3ss10n-0123456789","X-Api-Key":"k-123456789"},"refresh_token":"rt-123456789","apiKey":12345678,"session":{"id":"S3ss10n-0123456789","n":3},"count":7}"#,
    ));
    let v: serde_json::Value = serde_json::from_slice(&out.body).unwrap();
    let hs = &v["headers"];
    assert!(
        hs["Authorization"]
            .as_str()
            .unwrap()
            .starts_with("Bearer tok_"),
        "{v}"
    );
    let cookie = hs["Cookie"].as_str().unwrap();
    assert!(
        cookie.starts_with("theme=tok_") && cookie.contains("; session=tok_"),
        "{cookie}"
    );
    assert!(is_tok(hs["X-Api-Key"].as_str().unwrap()), "{v}");
    assert!(is_tok(v["refresh_token"].as_str().unwrap()), "{v}");
    assert!(is_tok(v["apiKey"].as_str().unwrap()), "{v}");
    assert!(is_tok(v["session"]["id"].as_str().unwrap()), "{v}");
    assert_eq!(v["count"], 7);
    // Masking the masked document is a no-op (a candidate echoing it compares equal).
    let again = m.mask_response(&out);
    assert_eq!(again.body, out.body);
    // The header of the same name masks to the same value as its JSON echo.
    let h = m.mask_request(&req(
        "/",
        &[("Cookie", b"theme=dark; session=S3ss10n-0123456789")],
        b"",
    ));
    assert_eq!(hv(&h.headers, "cookie"), cookie);
    // Free text and raw egress bytes.
    let t = m.mask_text("retrying with password=hunter2-long and api_key: k-123456789");
    assert!(
        !t.contains("hunter2-long") && !t.contains("k-123456789"),
        "{t}"
    );
    let wire = m.mask_wire_request(
        b"POST /charge?access_token=AT-9f8e7d6c5b HTTP/1.1\r\nHost: pay\r\nAuthorization: Bearer sk_live_abcdef123456\r\nContent-Type: application/json\r\nContent-Length: 60\r\n\r\n{\"password\":\"hunter2-long\",\"email\":\"ana@example.com\"",
    );
    assert_no_secret("wire", &wire);
    assert!(wire.starts_with("POST /charge?access_token=tok_"), "{wire}");
    assert!(wire.contains("Authorization: Bearer tok_"), "{wire}");
    // Cut in the middle of the head: free text.
    let cut = m.mask_wire_request(
        b"GET / HTTP/1.1\r\nAuthorization: Bearer sk_live_abcdef123456\r\nX-Pass",
    );
    assert_no_secret("cut wire", &cut);
}

#[test]
fn secret_names_match_in_any_spelling() {
    for n in [
        "Authorization",
        "set-cookie",
        "Set_Cookie",
        "password",
        "PASSWD",
        "client_secret",
        "token",
        "access_token",
        "Refresh-Token",
        "id_token",
        "api_key",
        "apiKey",
        "X-Api-Key",
        "session",
        "PHPSESSID",
        "sid",
        "pwd",
    ] {
        assert!(super::secret::is_secret_name(n), "{n}");
    }
    for n in [
        "id",
        "name",
        "email",
        "phone",
        "sku",
        "quantity",
        "status",
        "tokens_left_x",
    ] {
        assert_eq!(super::secret::is_secret_name(n), n.contains("token"), "{n}");
    }
    for f in super::secret::SECRET_FRAGMENTS {
        assert!(f.len() >= 5, "{f} is shorter than the length filter");
    }
}

#[test]
fn detectors_see_percent_decoded_text_in_bodies() {
    let m = masker(&[]);
    let out = m.mask_response(&resp(
        &[("Content-Type", b"application/json")],
        br#"{"next":"https://x.example/cb?phone=%2B1-202-555-0147&e=ana%40example.com&n=2"}"#,
    ));
    let text = body_str(&out.body);
    assert_no_secret("body", text);
    assert!(text.contains("&n=2"), "{text}");
    assert_eq!(m.mask_response(&out).body, out.body, "stable");
    let t = m.mask_text("GET /x?tel=%28415%29+555-0134 done");
    assert!(!t.contains("555-0134"), "{t}");
}

#[test]
fn opaque_digests_are_keyed() {
    let m = masker(&[]);
    use sha2::Digest;
    let d = m.digest(b"4111111111111111");
    assert_eq!(d.len(), 64);
    assert_ne!(d, hex::encode(sha2::Sha256::digest(b"4111111111111111")));
    assert_ne!(
        d,
        masker_with(&[], |c| c.key = key(9)).digest(b"4111111111111111")
    );
}

/// Headers that mask to themselves are remembered (`headers::UnchangedHeaders`); every
/// header masks the same the second time as on a masker that never saw it, and one
/// with PII or a secret is masked every time.
#[test]
fn remembered_unchanged_headers_mask_as_a_fresh_masker() {
    let headers = [
        ("Host", "shop.internal:8080"),
        ("User-Agent", "shop-web/2.14 (+checkout)"),
        ("Date", "Mon, 07 Dec 2026 10:00:00 GMT"),
        ("X-Request-Id", "0b4f2c9e-6d1a-4c3b-9e7f-1a2b3c4d5e6f"),
        ("X-Contact", "ana@example.com"),
        ("X-Phone", "+1 415 555 0142"),
        ("Cookie", "session=7f3a9c2e51b84d0fa1c6"),
        ("Authorization", "Bearer abc.def.ghi"),
        ("X-Api-Key", "k-123456789"),
        ("Referer", "https://shop.example/u?email=ana%40example.com"),
        ("Referer", "https://shop.example/u?page=2"),
        // A name with `:` (never from the wire) is not remembered under another key.
        ("a:b", "c"),
        ("a", "b:c"),
    ];
    let r = req(
        "/",
        &headers
            .iter()
            .map(|(n, v)| (*n, v.as_bytes()))
            .collect::<Vec<_>>(),
        b"",
    );
    let m = masker(&[]);
    let first = m.mask_request(&r);
    let second = m.mask_request(&r);
    let fresh = masker(&[]).mask_request(&r);
    assert_eq!(second.headers, first.headers);
    assert_eq!(second.headers, fresh.headers);
    let shown: String = second
        .headers
        .iter()
        .map(|h| format!("{}: {}\n", h.name, String::from_utf8_lossy(&h.value)))
        .collect();
    for pii in [
        "ana@example.com",
        "555 0142",
        "7f3a9c2e",
        "abc.def",
        "k-123456789",
        "ana%40",
    ] {
        assert!(!shown.contains(pii), "{pii} in {shown}");
    }
    assert!(
        shown.contains("User-Agent: shop-web/2.14 (+checkout)\n"),
        "{shown}"
    );
}

/// A candidate answering with legacy's very bytes gets legacy's masked body without a
/// second scan; anything that could change the masked output (one byte of the body, a
/// reading header, another masker) masks the body in full, so no PII passes.
mod reused_bodies {
    use super::*;

    const SECRET: &str = "sess-9f8e7d6c5b4a";

    fn request() -> Request {
        req(
            "/me",
            &[("Cookie", format!("session={SECRET}").as_bytes())],
            b"",
        )
    }

    fn json_echo(email: &str) -> Response {
        let body = format!(r#"{{"email":"{email}","session":"{SECRET}","n":1}}"#);
        resp(
            &[
                ("Date", b"Mon, 07 Dec 2026 10:00:00 GMT"),
                ("Content-Type", b"application/json"),
                ("Content-Length", body.len().to_string().as_bytes()),
            ],
            body.as_bytes(),
        )
    }

    fn leaks(r: &Response) -> bool {
        let b = body_str(&r.body);
        b.contains(SECRET) || b.contains("@example.com")
    }

    /// Headers echoing the request's secret, an email, a phone, a cookie: what the
    /// header reuse must mask exactly as a full mask does.
    fn echoing_headers(date: &str, shift: bool) -> Response {
        let mut r = json_echo("ana@example.com");
        r.headers[0].value = date.as_bytes().to_vec().into();
        let extra = [
            ("X-Echo", format!("session={SECRET}")),
            ("X-Contact", "ana@example.com, +1 415 555 0142".to_string()),
            ("Set-Cookie", format!("s={SECRET}; Path=/")),
            ("Location", "/u?email=ana%40example.com".to_string()),
            ("ETag", "\"5f2a-19c\"".to_string()),
        ];
        for (n, v) in extra {
            r.headers.push(Header::new(n, v));
        }
        if shift {
            // Every header one position later: nothing lines up with the first response.
            r.headers.insert(0, Header::new("X-First", "1"));
        }
        r
    }

    #[test]
    fn reused_header_values_equal_a_full_mask() {
        for shift in [false, true] {
            let m = masker(&[]);
            let (_, taint) = m.mask_request_tainted(&request());
            let legacy_raw = echoing_headers("Mon, 07 Dec 2026 10:00:00 GMT", false);
            let legacy = m.mask_response_tainted(&legacy_raw, &taint);
            let cand_raw = echoing_headers("Mon, 07 Dec 2026 10:00:01 GMT", shift);
            let cand = m.mask_response_tainted(&cand_raw, &taint);
            // The same as masking it from scratch with the same request's taint.
            let (_, fresh) = m.mask_request_tainted(&request());
            let full = m.mask_response_tainted(&cand_raw, &fresh);
            assert_eq!(cand.headers, full.headers, "shift {shift}");
            for r in [&legacy, &cand] {
                let all: Vec<u8> = r.headers.iter().flat_map(|h| h.value.to_vec()).collect();
                let all = String::from_utf8_lossy(&all);
                assert!(!all.contains(SECRET), "{all}");
                assert!(!all.contains("@example.com"), "{all}");
                assert!(!all.contains("555 0142"), "{all}");
                assert!(!all.contains("ana%40"), "{all}");
            }
            assert!(cand.headers.iter().any(|h| &h.value[..] == b"\"5f2a-19c\""));
        }
    }

    #[test]
    fn identical_bytes_reuse_the_masked_body_and_equal_a_full_mask() {
        let m = masker(&[]);
        let (_, taint) = m.mask_request_tainted(&request());
        let legacy = m.mask_response_tainted(&json_echo("ana@example.com"), &taint);
        let mut cand_raw = json_echo("ana@example.com");
        cand_raw.headers[0].value = b"Mon, 07 Dec 2026 10:00:01 GMT"[..].into();
        let cand = m.mask_response_tainted(&cand_raw, &taint);
        assert_eq!(m.stats().snapshot().bodies_reused, 1);
        // The same as masking it from scratch with the same request's taint.
        let (_, fresh) = m.mask_request_tainted(&request());
        let full = m.mask_response_tainted(&cand_raw, &fresh);
        assert_eq!(
            m.stats().snapshot().bodies_reused,
            1,
            "a new taint has no memo"
        );
        assert_eq!(cand, full);
        assert_eq!(cand.body, legacy.body);
        assert!(!leaks(&cand), "{}", body_str(&cand.body));
        assert_eq!(hv(&cand.headers, "date"), "Mon, 07 Dec 2026 10:00:01 GMT");
        assert_eq!(
            hv(&cand.headers, "content-length"),
            cand.body.len().to_string()
        );
    }

    #[test]
    fn a_different_body_is_masked_in_full() {
        let m = masker(&[]);
        let (_, taint) = m.mask_request_tainted(&request());
        let legacy = m.mask_response_tainted(&json_echo("ana@example.com"), &taint);
        // Same length, one letter different: the candidate's own PII must be masked.
        let cand = m.mask_response_tainted(&json_echo("bob@example.com"), &taint);
        assert_eq!(m.stats().snapshot().bodies_reused, 0);
        assert!(!leaks(&cand), "{}", body_str(&cand.body));
        assert_ne!(cand.body, legacy.body);
    }

    #[test]
    fn a_different_reading_header_is_masked_in_full() {
        // A `json:` rule applies to JSON only: as text the field is left alone, so the
        // masked bodies differ and reusing legacy's would be wrong.
        let m = masker(&["json:$.n"]);
        let (_, taint) = m.mask_request_tainted(&request());
        let legacy = m.mask_response_tainted(&json_echo("ana@example.com"), &taint);
        let mut cand_raw = json_echo("ana@example.com");
        cand_raw.headers[1].value = b"text/plain"[..].into();
        let cand = m.mask_response_tainted(&cand_raw, &taint);
        assert_eq!(m.stats().snapshot().bodies_reused, 0);
        assert!(!leaks(&cand), "{}", body_str(&cand.body));
        assert_ne!(cand.body, legacy.body, "the json rule only masked legacy's");
    }

    #[test]
    fn another_maskers_memo_is_not_reused() {
        let a = masker(&[]);
        let b = masker_with(&[], |c| c.key = key(2));
        let (_, taint) = a.mask_request_tainted(&request());
        let by_a = a.mask_response_tainted(&json_echo("ana@example.com"), &taint);
        let by_b = b.mask_response_tainted(&json_echo("ana@example.com"), &taint);
        assert_eq!(b.stats().snapshot().bodies_reused, 0);
        assert_ne!(by_a.body, by_b.body, "other key, other tokens");
        assert!(!leaks(&by_b));
    }

    /// The hand-over to the comparator: legacy's masked body, said to be a `Value`
    /// document by the masking scan, is exactly the body the comparator gets, and
    /// comparing with it tells what comparing without it tells, for documents the scan
    /// vouches for and for those it leaves to the comparator (invalid, too deep, a
    /// number out of range, a card number masked as digits, gzip).
    #[test]
    fn the_comparator_told_the_body_is_json_compares_as_without() {
        let m = masker(&[]);
        let cmp = crate::compare::Comparator::new(crate::compare::CompareConfig::default())
            .expect("comparator");
        let deep = format!("{}{}", "[".repeat(128), "]".repeat(128));
        let docs = [
            r#"{"email":"ana@example.com","n":1,"tags":["a","b"]}"#,
            r#"{"session":"sess-9f8e7d6c5b4a","ok":true}"#,
            r#"{"plain":"nothing to mask"}"#,
            r#"{"card": 4111111111111111}"#,
            r#"[1e400]"#,
            r#"{"a": 1,}"#,
            r#"not json at all ana@example.com"#,
            deep.as_str(),
        ];
        let mut vouched = 0;
        for doc in docs {
            for gzip in [false, true] {
                let mut raw = json_echo("ana@example.com");
                raw.body = Bytes::copy_from_slice(doc.as_bytes());
                if gzip {
                    raw.body = Bytes::from(
                        encode(doc.as_bytes(), &Coding(vec![Step::Gzip])).expect("gzip"),
                    );
                    raw.headers.push(Header::new("Content-Encoding", "gzip"));
                }
                let (_, taint) = m.mask_request_tainted(&request());
                let legacy = m.mask_response_tainted(&raw, &taint);
                let mut cand_raw = raw.clone();
                cand_raw.headers[0].value = b"Mon, 07 Dec 2026 10:00:01 GMT"[..].into();
                let cand = m.mask_response_tainted(&cand_raw, &taint);
                let known = taint.value_json_body();
                if let Some(k) = known {
                    vouched += 1;
                    assert!(!gzip, "{doc}");
                    assert_eq!(k, &legacy.body[..], "{doc}");
                    assert!(serde_json::from_slice::<serde_json::Value>(k).is_ok());
                }
                assert_eq!(
                    cmp.compare_known(&legacy, &cand, known),
                    cmp.compare(&legacy, &cand),
                    "{doc} gzip {gzip}"
                );
                // Told of other bytes, the comparator checks the body itself.
                assert_eq!(
                    cmp.compare_known(&legacy, &cand, Some(b"{}")),
                    cmp.compare(&legacy, &cand),
                    "{doc} gzip {gzip}"
                );
            }
        }
        assert_eq!(vouched, 3, "the first three documents");
    }
}

/// The memo of slow-path results (`memo.rs`): a masker that remembers masks every
/// exchange exactly as one that recomputes everything: the same messages, counts and
/// request taint (so the same echoes masked in the answer).
mod remembered_results {
    use super::*;

    /// Values that reach the slow paths (PII for each detector, percent-encoded PII,
    /// timestamps and ids the gates let through, a masked token) and plain ones.
    const VALUES: &[&str] = &[
        "ana.silva@example.com",
        "+1 415 555 0142",
        "(415) 555-0142",
        "2024-03-01T10:22:31Z",
        "4111 1111 1111 1111",
        "123-45-6789",
        "bob%40example.org",
        "mail ana.silva@example.com or call +44 20 7946 0958",
        "DE89 3704 0044 0532 0130 00",
        "203.0.113.77",
        "0b4f2c9e-6d1a-4c3b-9e7f-1a2b3c4d5e6f",
        "tok_0123456789abcdef",
        "plain words",
        "7f3a9c2e51b84d0fa1c6",
    ];

    /// One exchange from choices of values: headers, a target, a JSON body with the
    /// values as strings and as a key, and an answer echoing them (raw and in base64).
    fn exchange(picks: &[usize]) -> Exchange {
        use base64::Engine as _;
        let v = |i: usize| VALUES[picks[i % picks.len()] % VALUES.len()];
        let b64 = base64::engine::general_purpose::STANDARD.encode(v(1));
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("u:{}", v(2)));
        let body = format!(
            r#"{{"a":{:?},"list":[{:?},{:?}],{:?}:1,"password":{:?}}}"#,
            v(0),
            v(1),
            v(2),
            v(3),
            v(4)
        );
        let echo = format!(r#"{{"seen":{:?},"again":{:?},"b64":"{b64}"}}"#, v(1), v(5));
        let target = format!("/u/{}?q={}&token={}", v(2), v(3), v(5)).replace(' ', "%20");
        let client: SocketAddr = "198.18.7.9:51234".parse().expect("addr");
        let server: SocketAddr = "10.0.0.2:8080".parse().expect("addr");
        Exchange {
            id: CorrelationId::new(),
            flow: crate::capture::FlowKey { client, server },
            request: req(
                &target,
                &[
                    ("Cookie", format!("session={}; theme=dark", v(5)).as_bytes()),
                    ("Authorization", format!("Basic {basic}").as_bytes()),
                    ("X-Note", v(0).as_bytes()),
                    (
                        "Referer",
                        format!("https://x.example/?e={}", v(4)).as_bytes(),
                    ),
                    ("Content-Type", b"application/json"),
                ],
                body.as_bytes(),
            ),
            response: resp(
                &[
                    ("X-Echo", v(1).as_bytes()),
                    ("Set-Cookie", format!("s={}; Path=/", v(3)).as_bytes()),
                    ("Content-Type", b"application/json"),
                ],
                echo.as_bytes(),
            ),
            timing: Timing::default(),
        }
    }

    fn configs() -> Vec<Masker> {
        vec![
            masker(&["json:$.list[1]"]),
            masker_with(&[], |c| {
                c.detectors = Detectors::all();
                c.action = Action::Redact;
            }),
        ]
    }

    /// Masks `exchanges` with the memo on and off (fresh maskers of the same
    /// configuration): everything each exchange leaves must be the same.
    fn same_with_and_without(exchanges: &[Exchange]) {
        for (remembering, recomputing) in configs().into_iter().zip(configs()) {
            recomputing.set_memo(false);
            for e in exchanges {
                let (a, ta) = remembering.mask_exchange_tainted(e);
                let (b, tb) = recomputing.mask_exchange_tainted(e);
                assert_eq!(exchange_text(&a), exchange_text(&b));
                assert_eq!(ta.values(), tb.values());
                // The candidate's answer: other bytes than legacy's, echoing the values.
                let mut cand = e.response.clone();
                cand.body = Bytes::from(format!("{} {}", e.request.target, b"x".len()));
                cand.headers
                    .push(Header::new("X-Copy", e.request.target.as_bytes()));
                let ca = remembering.mask_response_tainted(&cand, &ta);
                let cb = recomputing.mask_response_tainted(&cand, &tb);
                assert_eq!(ca, cb);
                assert_eq!(
                    remembering.stats().snapshot(),
                    recomputing.stats().snapshot()
                );
            }
            assert!(remembering.memo.len() > 0, "the memo was used");
            assert_eq!(recomputing.memo.len(), 0);
        }
    }

    fn exchange_text(e: &Exchange) -> String {
        format!("{:?} {:?} {:?}", e.flow, e.request, e.response)
    }

    #[test]
    fn the_benchs_exchange_masks_alike_every_time() {
        let picks: Vec<usize> = (0..VALUES.len()).collect();
        let e = exchange(&picks);
        same_with_and_without(&[e.clone(), e.clone(), e]);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

        /// Sequences of exchanges drawing from a few values (so they repeat across
        /// messages and exchanges, in other places and combinations).
        #[test]
        fn remembered_results_mask_as_recomputed_ones(
            picks in proptest::collection::vec(proptest::collection::vec(0usize..VALUES.len(), 6), 1..5)
        ) {
            let exchanges: Vec<Exchange> = picks.iter().map(|p| exchange(p)).collect();
            // Each exchange twice: the second time from the memo.
            let twice: Vec<Exchange> = exchanges.iter().chain(&exchanges).cloned().collect();
            same_with_and_without(&twice);
        }
    }
}
