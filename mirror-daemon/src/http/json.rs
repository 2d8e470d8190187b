//! The `mirror-daemon exchanges` views: one JSON object per exchange (JSON lines) and a
//! one-line table form. Schema: `SCHEMA.md` beside this file.
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::exchange::{Exchange, Header};

/// One exchange as JSON. Bodies are length + SHA-256 unless `include_bodies`, which adds
/// `text` (valid UTF-8) or `hex` (anything else).
pub fn exchange_json(ex: &Exchange, include_bodies: bool) -> Value {
    exchange_json_with(ex, include_bodies, &|b| hex::encode(Sha256::digest(b)))
}

/// [`exchange_json`] with the body digest given by `digest` (a masked export uses the
/// mask key's HMAC, so a short body cannot be recovered by hashing guesses).
pub fn exchange_json_with(
    ex: &Exchange,
    include_bodies: bool,
    digest: &dyn Fn(&[u8]) -> String,
) -> Value {
    let (req, resp, t) = (&ex.request, &ex.response, &ex.timing);
    json!({
        "id": ex.id.to_string(),
        "flow": { "client": ex.flow.client.to_string(), "server": ex.flow.server.to_string() },
        "request": {
            "method": req.method,
            "target": req.target,
            "version": version(req.version),
            "headers": headers_json(&req.headers),
            "body": body_json(&req.body, include_bodies, digest),
        },
        "response": {
            "status": resp.status,
            "reason": resp.reason,
            "version": version(resp.version),
            "headers": headers_json(&resp.headers),
            "body": body_json(&resp.body, include_bodies, digest),
        },
        "timing": {
            "request_first_ns": t.request_first_ns,
            "request_last_ns": t.request_last_ns,
            "response_first_ns": t.response_first_ns,
            "response_last_ns": t.response_last_ns,
            "ttfb_ns": t.ttfb_ns(),
            "ttlb_ns": t.ttlb_ns(),
        },
    })
}

/// Column titles for [`exchange_table_row`].
pub const EXCHANGE_TABLE_HEADER: &str = "ID                          CLIENT                 METHOD  STATUS  REQ_BYTES  RESP_BYTES   TTFB_MS   TTLB_MS  TARGET";

/// One exchange as one table line (no trailing newline).
pub fn exchange_table_row(ex: &Exchange) -> String {
    // Targets are httparse-validated (no spaces or controls); cap the width only.
    let target: String = ex.request.target.chars().take(200).collect();
    format!(
        "{:<26}  {:<21}  {:<6}  {:>6}  {:>9}  {:>10}  {:>8.3}  {:>8.3}  {}",
        ex.id.to_string(),
        ex.flow.client.to_string(),
        ex.request.method,
        ex.response.status,
        ex.request.body.len(),
        ex.response.body.len(),
        ex.timing.ttfb_ns() as f64 / 1e6,
        ex.timing.ttlb_ns() as f64 / 1e6,
        target,
    )
}

fn version(minor: u8) -> String {
    format!("HTTP/1.{minor}")
}

/// `[[name, value], ...]` in wire order; values that are not UTF-8 are shown lossily.
fn headers_json(headers: &[Header]) -> Value {
    Value::Array(
        headers
            .iter()
            .map(|h| json!([h.name.as_str(), String::from_utf8_lossy(&h.value)]))
            .collect(),
    )
}

fn body_json(body: &[u8], include: bool, digest: &dyn Fn(&[u8]) -> String) -> Value {
    let mut v = json!({ "len": body.len(), "sha256": digest(body) });
    if include && let Value::Object(map) = &mut v {
        match std::str::from_utf8(body) {
            Ok(text) => map.insert("text".into(), Value::String(text.to_owned())),
            Err(_) => map.insert("hex".into(), Value::String(hex::encode(body))),
        };
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::FlowKey;
    use crate::http::{CorrelationId, Request, Response, Timing};
    use bytes::Bytes;

    fn sample() -> Exchange {
        Exchange {
            id: CorrelationId(
                ulid::Ulid::from_string("01HZZZZZZZZZZZZZZZZZZZZZZZ").unwrap_or_default(),
            ),
            flow: FlowKey {
                client: ([192, 0, 2, 1], 51000).into(),
                server: ([192, 0, 2, 9], 8080).into(),
            },
            request: Request {
                method: "POST".into(),
                target: "/orders?id=7".into(),
                version: 1,
                headers: vec![
                    Header::new("Host", "svc"),
                    Header::new("X-Bin", vec![0xff, b'a']),
                ],
                body: Bytes::from_static(b"{\"a\":1}"),
            },
            response: Response {
                version: 0,
                status: 201,
                reason: "Created".into(),
                headers: vec![Header::new("Content-Length", "2")],
                body: Bytes::from_static(&[0x00, 0xff]),
            },
            timing: Timing {
                request_first_ns: 1_000,
                request_last_ns: 2_000,
                response_first_ns: 1_502_000,
                response_last_ns: 3_002_000,
            },
        }
    }

    #[test]
    fn json_schema_by_default_hides_bodies() {
        let v = exchange_json(&sample(), false);
        assert_eq!(v["id"], "01HZZZZZZZZZZZZZZZZZZZZZZZ");
        assert_eq!(v["flow"]["client"], "192.0.2.1:51000");
        assert_eq!(v["request"]["version"], "HTTP/1.1");
        assert_eq!(v["response"]["version"], "HTTP/1.0");
        assert_eq!(
            v["request"]["headers"],
            json!([["Host", "svc"], ["X-Bin", "\u{fffd}a"]])
        );
        assert_eq!(
            v["request"]["body"],
            json!({"len": 7, "sha256": "015abd7f5cc57a2dd94b7590f04ad8084273905ee33ec5cebeae62276a97f862"})
        );
        assert_eq!(v["response"]["status"], 201);
        assert_eq!(v["timing"]["ttfb_ns"], 1_500_000);
        assert_eq!(v["timing"]["ttlb_ns"], 3_000_000);
        let keys: Vec<&String> = v
            .as_object()
            .map(|o| o.keys().collect())
            .unwrap_or_default();
        assert_eq!(keys, ["id", "flow", "request", "response", "timing"]);
    }

    #[test]
    fn json_with_bodies_uses_text_or_hex() {
        let v = exchange_json(&sample(), true);
        assert_eq!(v["request"]["body"]["text"], "{\"a\":1}");
        assert!(v["request"]["body"].get("hex").is_none());
        assert_eq!(v["response"]["body"]["hex"], "00ff");
        assert!(v["response"]["body"].get("text").is_none());
    }

    #[test]
    fn table_row_is_one_line() {
        let row = exchange_table_row(&sample());
        assert!(!row.contains('\n'));
        assert!(
            row.starts_with("01HZZZZZZZZZZZZZZZZZZZZZZZ  192.0.2.1:51000"),
            "{row}"
        );
        assert!(row.ends_with("1.500     3.000  /orders?id=7"), "{row}");
        assert!(row.contains(" POST ") && row.contains(" 201 "), "{row}");
    }
}
