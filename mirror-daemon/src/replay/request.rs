//! Building the request sent to the candidate from the captured one (pure).
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
    let named_in_connection: Vec<String> = req
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .flat_map(|h| {
            String::from_utf8_lossy(&h.value)
                .split(',')
                .map(|t| t.trim().to_ascii_lowercase())
                .collect::<Vec<_>>()
        })
        .collect();
    let mut saw_host = false;
    for h in &req.headers {
        let lower = h.name.to_ascii_lowercase();
        if HOP_BY_HOP.contains(&lower.as_str()) || named_in_connection.contains(&lower) {
            continue;
        }
        if lower == rules.id_header.to_ascii_lowercase()
            || lower == rules.shadow_header.to_ascii_lowercase()
        {
            continue;
        }
        out.extend_from_slice(h.name.as_bytes());
        out.extend_from_slice(b": ");
        if lower == "host" {
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
    if !req.body.is_empty() || matches!(req.method.as_str(), "POST" | "PUT" | "PATCH") {
        out.extend_from_slice(format!("Content-Length: {}\r\n", req.body.len()).as_bytes());
    }
    out.extend_from_slice(rules.id_header.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(id.to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
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
