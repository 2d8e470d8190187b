//! Building the request sent to the candidate from the captured one (pure).
use std::io::Write;

use crate::http::{CorrelationId, Request};

/// What to change when replaying.
#[derive(Clone, Debug)]
pub struct RewriteRules {
    /// Replace the Host header (only when `--candidate-host` is given).
    pub host: Option<String>,
    /// Header carrying the correlation id (`--id-header`, default `X-Mirror-Id`).
    pub id_header: String,
    /// Header marking the request as shadow traffic.
    pub shadow_header: String,
}

impl Default for RewriteRules {
    fn default() -> Self {
        Self {
            host: None,
            id_header: "X-Mirror-Id".into(),
            shadow_header: "X-Mirror-Shadow".into(),
        }
    }
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) never forwarded: they describe the legacy
/// client's connection, not the request. The body is re-framed with Content-Length.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
];

/// Serializes `req` for the candidate into `out` (cleared first): method, target and
/// header order and case as captured; hop-by-hop headers (and those named in
/// `Connection`) dropped; Host rewritten only when asked; the body framed with
/// Content-Length; correlation and shadow headers added.
pub fn build_request(req: &Request, id: &CorrelationId, rules: &RewriteRules, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(req.method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(req.target.as_bytes());
    // Always HTTP/1.1 to the candidate so the pooled connection can be kept alive.
    out.extend_from_slice(b" HTTP/1.1\r\n");
    // Compared without allocating: case-insensitively, per header (a few per request).
    let named_in_connection = |name: &str| {
        req.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("connection"))
            .flat_map(|h| h.value.split(|&c| c == b','))
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(name.as_bytes()))
    };
    let mut saw_host = false;
    for h in &req.headers {
        let name = h.name.as_str();
        if HOP_BY_HOP.iter().any(|n| n.eq_ignore_ascii_case(name))
            || name.eq_ignore_ascii_case(&rules.id_header)
            || name.eq_ignore_ascii_case(&rules.shadow_header)
            || named_in_connection(name)
        {
            continue;
        }
        out.extend_from_slice(h.name.as_bytes());
        out.extend_from_slice(b": ");
        if name.eq_ignore_ascii_case("host") {
            saw_host = true;
            if let Some(host) = &rules.host {
                out.extend_from_slice(host.as_bytes());
                out.extend_from_slice(b"\r\n");
                continue;
            }
        }
        out.extend_from_slice(&h.value);
        out.extend_from_slice(b"\r\n");
    }
    if !saw_host && let Some(host) = &rules.host {
        out.extend_from_slice(b"Host: ");
        out.extend_from_slice(host.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    // `write!` into the buffer: no formatted string per request.
    if !req.body.is_empty() || matches!(req.method.as_str(), "POST" | "PUT" | "PATCH") {
        let _ = write!(out, "Content-Length: {}\r\n", req.body.len());
    }
    out.extend_from_slice(rules.id_header.as_bytes());
    let _ = write!(out, ": {id}\r\n");
    out.extend_from_slice(rules.shadow_header.as_bytes());
    out.extend_from_slice(b": 1\r\n\r\n");
    out.extend_from_slice(&req.body);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::Header;

    fn req(headers: &[(&str, &str)], body: &str) -> Request {
        Request {
            method: "POST".into(),
            target: "/orders?x=1".into(),
            version: 1,
            headers: headers
                .iter()
                .map(|(n, v)| Header::new(*n, v.as_bytes()))
                .collect(),
            body: bytes::Bytes::copy_from_slice(body.as_bytes()),
        }
    }

    #[test]
    fn keeps_order_and_case_drops_hop_by_hop() {
        let r = req(
            &[
                ("Host", "legacy.local"),
                ("X-Trace", "a"),
                ("Connection", "keep-alive, X-Private"),
                ("X-Private", "p"),
                ("Transfer-Encoding", "chunked"),
                ("content-type", "application/json"),
            ],
            "{}",
        );
        let id = CorrelationId::new();
        let mut out = Vec::new();
        build_request(&r, &id, &RewriteRules::default(), &mut out);
        let text = String::from_utf8(out).unwrap();
        let expected = format!(
            "POST /orders?x=1 HTTP/1.1\r\nHost: legacy.local\r\nX-Trace: a\r\ncontent-type: application/json\r\nContent-Length: 2\r\nX-Mirror-Id: {id}\r\nX-Mirror-Shadow: 1\r\n\r\n{{}}"
        );
        assert_eq!(text, expected);
    }

    #[test]
    fn rewrites_host_only_when_asked() {
        let r = req(&[("Host", "legacy.local")], "");
        let id = CorrelationId::new();
        let mut out = Vec::new();
        let rules = RewriteRules {
            host: Some("candidate:9090".into()),
            ..Default::default()
        };
        build_request(&r, &id, &rules, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("\r\nHost: candidate:9090\r\n") && !text.contains("legacy.local"));
    }

    #[test]
    fn captured_id_headers_are_replaced_not_duplicated() {
        let r = req(&[("x-mirror-id", "spoofed")], "");
        let mut out = Vec::new();
        build_request(
            &r,
            &CorrelationId::new(),
            &RewriteRules::default(),
            &mut out,
        );
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.to_ascii_lowercase().matches("x-mirror-id").count(), 1);
        assert!(!text.contains("spoofed"));
    }
}
