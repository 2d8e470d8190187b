//! The reflect service: echoes each request back the way httpbin's `/anything` does, so
//! tests can prove that what an application echoes of a masked request is masked too.
//!
//! Every path answers with the method, the raw target (`url`), the decoded query
//! (`args`), headers, cookies, the decoded form, the parsed JSON and the body text
//! (`data`). The first path segment picks how: `/gzip/…` and `/br/…` compress the JSON,
//! `/form/…` answers URL-encoded (`application/x-www-form-urlencoded`), `/html/…` an
//! HTML page with entity-escaped values, `/b64/…` JSON with each header value in base64;
//! anything else is plain JSON. Response headers echo too: `X-Echo-Url` (the raw target),
//! `X-Echo-Authorization` and a `Set-Cookie` per request cookie. Framing headers and
//! `X-Mirror-*` are not echoed (as behind a gateway). Pure function of the request, so
//! two instances answer alike.
use std::io::Write as _;

use base64::Engine as _;
use serde_json::{Map, Value, json};

use crate::http::{Handler, Request, Response};

#[derive(Debug, Default)]
pub struct Reflect;

impl Handler for Reflect {
    async fn handle(&self, req: Request) -> Response {
        reply(&req)
    }
}

/// Decoded `a=1&b=2` pairs (`+` as space), as an object of strings.
fn pairs(s: &str) -> Map<String, Value> {
    form_urlencoded::parse(s.as_bytes())
        .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
        .collect()
}

fn cookies(req: &Request) -> Vec<(String, String)> {
    req.header("cookie")
        .map(|c| {
            c.split(';')
                .filter_map(|p| p.trim().split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// Headers as the application sees them behind a gateway: framing headers and mirror's
/// replay headers (`X-Mirror-*`) are not echoed, so a replayed request echoes alike.
fn echoed_headers(req: &Request) -> impl Iterator<Item = &(String, String)> {
    req.headers.iter().filter(|(n, _)| {
        let n = n.to_ascii_lowercase();
        !matches!(
            n.as_str(),
            "content-length" | "transfer-encoding" | "connection" | "keep-alive"
        ) && !n.starts_with("x-mirror-")
    })
}

/// The httpbin-style echo of `req`.
pub fn echo(req: &Request) -> Value {
    let query = req.target.split_once('?').map_or("", |(_, q)| q);
    let ctype = req.header("content-type").unwrap_or("");
    let text = String::from_utf8_lossy(&req.body).into_owned();
    let form = if ctype.starts_with("application/x-www-form-urlencoded") {
        pairs(&text)
    } else {
        Map::new()
    };
    let parsed = if ctype.contains("json") {
        serde_json::from_slice(&req.body).unwrap_or(Value::Null)
    } else {
        Value::Null
    };
    let headers: Map<String, Value> = echoed_headers(req)
        .map(|(n, v)| (n.clone(), Value::String(v.clone())))
        .collect();
    let cookies: Map<String, Value> = cookies(req)
        .into_iter()
        .map(|(k, v)| (k, Value::String(v)))
        .collect();
    json!({
        "method": req.method,
        "url": format!("http://{}{}", req.header("host").unwrap_or("reflect"), req.target),
        "args": pairs(query),
        "headers": headers,
        "cookies": cookies,
        "form": form,
        "json": parsed,
        "data": text,
    })
}

pub fn reply(req: &Request) -> Response {
    let body = echo(req);
    let first = req.path().trim_start_matches('/').split('/').next();
    let mut resp = match first.unwrap_or("") {
        "gzip" => compressed(&body, "gzip"),
        "br" => compressed(&body, "br"),
        "form" => Response::new(
            200,
            "application/x-www-form-urlencoded",
            form_body(&body).into_bytes(),
        ),
        "html" => Response::new(
            200,
            "text/html; charset=utf-8",
            html_body(&body).into_bytes(),
        ),
        "b64" => {
            let b64: Map<String, Value> = echoed_headers(req)
                .map(|(n, v)| {
                    let enc = base64::engine::general_purpose::STANDARD.encode(v);
                    (n.clone(), Value::String(enc))
                })
                .collect();
            json_response(&json!({ "headers_base64": b64 }))
        }
        _ => json_response(&body),
    };
    resp = resp.with_header("X-Echo-Url", &req.target);
    if let Some(a) = req.header("authorization") {
        resp = resp.with_header("X-Echo-Authorization", a);
    }
    for (k, v) in cookies(req) {
        resp = resp.with_header("Set-Cookie", &format!("{k}={v}; Path=/"));
    }
    resp
}

fn json_response(v: &Value) -> Response {
    Response::new(
        200,
        "application/json",
        serde_json::to_vec(v).unwrap_or_default(),
    )
}

fn compressed(v: &Value, coding: &str) -> Response {
    let plain = serde_json::to_vec(v).unwrap_or_default();
    let data = match coding {
        "br" => {
            let mut out = Vec::new();
            {
                let mut w = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
                let _ = w.write_all(&plain);
            }
            out
        }
        _ => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            let _ = e.write_all(&plain);
            e.finish().unwrap_or_default()
        }
    };
    Response::new(200, "application/json", data).with_header("Content-Encoding", coding)
}

/// Leaves of `v` as `path=value` pairs (`headers.Authorization=…`), URL-encoded.
fn form_body(v: &Value) -> String {
    let mut out = form_urlencoded::Serializer::new(String::new());
    let mut leaves = Vec::new();
    flatten("", v, &mut leaves);
    for (k, v) in leaves {
        out.append_pair(&k, &v);
    }
    out.finish()
}

fn flatten(prefix: &str, v: &Value, out: &mut Vec<(String, String)>) {
    let join = |k: &str| {
        if prefix.is_empty() {
            k.to_string()
        } else {
            format!("{prefix}.{k}")
        }
    };
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                flatten(&join(k), v, out);
            }
        }
        Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                flatten(&join(&i.to_string()), v, out);
            }
        }
        Value::String(s) => out.push((prefix.to_string(), s.clone())),
        Value::Null => {}
        other => out.push((prefix.to_string(), other.to_string())),
    }
}

fn html_body(v: &Value) -> String {
    let mut leaves = Vec::new();
    flatten("", v, &mut leaves);
    let mut out = String::from("<!doctype html>\n<table>\n");
    for (k, v) in leaves {
        out.push_str(&format!(
            "<tr><th>{}</th><td>{}</td></tr>\n",
            escape(&k),
            escape(&v)
        ));
    }
    out.push_str("</table>\n");
    out
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(target: &str, headers: &[(&str, &str)], body: &str) -> Request {
        let mut r = Request::new("POST", target);
        r.headers = headers
            .iter()
            .map(|(n, v)| ((*n).to_string(), (*v).to_string()))
            .collect();
        r.body = body.as_bytes().to_vec();
        r
    }

    #[test]
    fn echoes_like_httpbin() {
        let r = req(
            "/anything?phone=%2B1-202-555-0147&q=a+b",
            &[
                ("Authorization", "Bearer abc"),
                ("Cookie", "sid=xyz; theme=dark"),
                ("Content-Type", "application/x-www-form-urlencoded"),
            ],
            "email=ana%40example.com",
        );
        let v = echo(&r);
        assert_eq!(v["args"]["phone"], "+1-202-555-0147");
        assert_eq!(v["args"]["q"], "a b");
        assert_eq!(v["headers"]["Authorization"], "Bearer abc");
        assert_eq!(v["cookies"]["sid"], "xyz");
        assert_eq!(v["form"]["email"], "ana@example.com");
        assert_eq!(v["data"], "email=ana%40example.com");
        let resp = reply(&r);
        assert_eq!(resp.header("x-echo-authorization"), Some("Bearer abc"));
        assert_eq!(
            resp.headers
                .iter()
                .filter(|(n, _)| n == "Set-Cookie")
                .count(),
            2
        );
    }

    #[test]
    fn encodings_by_path() {
        let r = req("/form/x?email=ana%40example.com", &[], "");
        let resp = reply(&r);
        let body = String::from_utf8(resp.body).unwrap();
        assert!(body.contains("args.email=ana%40example.com"), "{body}");
        let resp = reply(&req("/html/?n=O'Brien", &[], ""));
        let body = String::from_utf8(resp.body).unwrap();
        assert!(body.contains("O&#39;Brien"), "{body}");
        let resp = reply(&req("/gzip/", &[], ""));
        assert_eq!(resp.header("content-encoding"), Some("gzip"));
        let resp = reply(&req("/br/", &[], ""));
        assert_eq!(resp.header("content-encoding"), Some("br"));
        let resp = reply(&req("/b64/", &[("X-Token", "secret")], ""));
        let v: Value = serde_json::from_slice(&resp.body).unwrap();
        assert_eq!(v["headers_base64"]["X-Token"], "c2VjcmV0");
    }
}
