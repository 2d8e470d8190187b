//! The virtual dependency: the candidate's calls to a recorded dependency (rewritten by
//! the guard to a listener on the candidate's loopback) are answered with the response
//! legacy got for the matching call of the same inbound exchange. Matching is pure
//! ([`pick`]); the listener ([`serve`]) is a thin HTTP/1.1 shell. Nothing is forwarded.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use super::Effects;
use super::attribute::Recorded;
use crate::http::{Header, Request, Response};

/// Largest request head and body the listener reads.
const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: usize = 1024 * 1024;
/// A connection idle this long is closed.
const IDLE: Duration = Duration::from_secs(30);

/// Similarity of two bodies in 0..=1: Jaccard index of their word sets (cheap, and
/// order-insensitive, so re-ordered JSON keys still look alike).
pub fn similarity(a: &[u8], b: &[u8]) -> f64 {
    if a == b {
        return 1.0;
    }
    let words = |x: &[u8]| -> std::collections::BTreeSet<Vec<u8>> {
        x.split(|c| !c.is_ascii_alphanumeric() && *c != b'.' && *c != b'_')
            .filter(|w| !w.is_empty())
            .map(<[u8]>::to_vec)
            .collect()
    };
    let (wa, wb) = (words(a), words(b));
    let union = wa.union(&wb).count();
    if union == 0 {
        return 1.0;
    }
    wa.intersection(&wb).count() as f64 / union as f64
}

/// How well recorded `call` answers candidate request `req` to `dependency`: `None`
/// unless dependency, method and route template agree; then 1 for the same target plus
/// body similarity.
pub fn score(
    rec: &Recorded,
    dependency: SocketAddr,
    req: &Request,
    template: &dyn Fn(&str, &str) -> String,
) -> Option<f64> {
    let c = &rec.call;
    if rec.used || c.dependency != dependency || !c.request.method.eq_ignore_ascii_case(&req.method)
    {
        return None;
    }
    if c.request.target != req.target
        && template(&c.request.method, &c.request.target) != template(&req.method, &req.target)
    {
        return None;
    }
    let same_target = f64::from(u8::from(c.request.target == req.target));
    Some(same_target + similarity(&c.request.body, &req.body))
}

/// The best unused recorded call for `req` (the first of equals).
pub fn pick(
    legacy: &[Recorded],
    dependency: SocketAddr,
    req: &Request,
    template: &dyn Fn(&str, &str) -> String,
) -> Option<(usize, f64)> {
    let mut best: Option<(usize, f64)> = None;
    for (i, r) in legacy.iter().enumerate() {
        if let Some(s) = score(r, dependency, req, template)
            && best.is_none_or(|(_, b)| s > b)
        {
            best = Some((i, s));
        }
    }
    best
}

/// Hop-by-hop and framing headers: re-framed with Content-Length when answering.
const NOT_COPIED: &[&str] = &[
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "trailer",
    "upgrade",
];

/// The wire form of a recorded response (body as recorded, content coding kept).
pub fn response_wire(r: &Response, out: &mut Vec<u8>) {
    out.extend_from_slice(format!("HTTP/1.1 {} {}\r\n", r.status, r.reason).as_bytes());
    for h in &r.headers {
        if NOT_COPIED.contains(&h.name.to_ascii_lowercase().as_str()) {
            continue;
        }
        out.extend_from_slice(h.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(&h.value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", r.body.len()).as_bytes());
    out.extend_from_slice(&r.body);
}

/// The answer to a call nothing recorded matches.
pub const UNMATCHED: &[u8] = b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain\r\nX-Mirror-Virtual: unmatched\r\nContent-Length: 49\r\n\r\nmirror: no recorded legacy call matches this one\n";

/// Decodes a chunked body from the front of `buf`: `Ok(Some((body, consumed)))` with
/// the trailers consumed (and dropped), `Ok(None)` when more bytes are needed.
fn chunked_body(buf: &[u8]) -> Result<Option<(Vec<u8>, usize)>, &'static str> {
    // Chunk framing can cost several bytes per body byte: bound what is buffered too.
    if buf.len() > MAX_HEAD + 2 * MAX_BODY {
        return Err("chunked body too large");
    }
    let mut body = Vec::new();
    let mut pos = 0;
    loop {
        let (n, size) = match httparse::parse_chunk_size(&buf[pos..]) {
            Ok(httparse::Status::Complete(done)) => done,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(_) => return Err("bad chunk size"),
        };
        pos += n;
        if size == 0 {
            // Trailer lines, up to an empty one.
            loop {
                let rest = &buf[pos..];
                let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") else {
                    return if rest.len() > MAX_HEAD {
                        Err("trailers too large")
                    } else {
                        Ok(None)
                    };
                };
                pos += eol + 2;
                if eol == 0 {
                    return Ok(Some((body, pos)));
                }
            }
        }
        let size = usize::try_from(size)
            .ok()
            .filter(|s| body.len() + s <= MAX_BODY)
            .ok_or("body too large")?;
        let Some(data) = buf.get(pos..pos + size + 2) else {
            return Ok(None);
        };
        if !data.ends_with(b"\r\n") {
            return Err("bad chunk");
        }
        body.extend_from_slice(&data[..size]);
        pos += size + 2;
    }
}

/// Parses one request from the front of `buf`: `Ok(Some((request, consumed)))`, `Ok(None)`
/// when more bytes are needed, `Err` when it is not an HTTP/1.x request with a
/// Content-Length or chunked body within the limits.
pub fn parse_request(buf: &[u8]) -> Result<Option<(Request, usize)>, &'static str> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    let head = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => return Err("head too large"),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err("not an HTTP/1.x request"),
    };
    let hs: Vec<Header> = req
        .headers
        .iter()
        .map(|h| Header::new(h.name, h.value))
        .collect();
    let Some((body, used)) = request_body(&hs, &buf[head..])? else {
        return Ok(None);
    };
    let request = Request {
        method: req.method.unwrap_or_default().to_string(),
        target: req.path.unwrap_or_default().to_string(),
        version: req.version.unwrap_or(1),
        headers: hs,
        body,
    };
    Ok(Some((request, head + used)))
}

/// The body after the head, framed by chunked coding or Content-Length:
/// `Ok(Some((body, bytes used)))`, `Ok(None)` when more bytes are needed.
fn request_body(hs: &[Header], rest: &[u8]) -> Result<Option<(bytes::Bytes, usize)>, &'static str> {
    if let Some(te) = crate::http::header(hs, "transfer-encoding") {
        // Chunked must be the last coding (RFC 9112 6.1); it wins over a Content-Length.
        let last = te.rsplit(|c| *c == b',').next().unwrap_or_default();
        if !last.trim_ascii().eq_ignore_ascii_case(b"chunked") {
            return Err("a Transfer-Encoding without chunked last");
        }
        return Ok(chunked_body(rest)?.map(|(body, used)| (body.into(), used)));
    }
    let len = match crate::http::header(hs, "content-length") {
        Some(v) => std::str::from_utf8(v)
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .ok_or("bad Content-Length")?,
        None => 0,
    };
    if len > MAX_BODY {
        return Err("body too large");
    }
    if rest.len() < len {
        return Ok(None);
    }
    Ok(Some((bytes::Bytes::copy_from_slice(&rest[..len]), len)))
}

/// Entry for the `virtual_request` fuzz target: [`parse_request`] on untrusted bytes
/// never panics, consumes at most what it was given, keeps bodies within the limit, and
/// gives the same request when handed only the bytes it consumed.
pub fn fuzz_request(data: &[u8]) {
    let Ok(Some((req, used))) = parse_request(data) else {
        return;
    };
    assert!(used <= data.len(), "consumed {used} of {}", data.len());
    assert!(req.body.len() <= MAX_BODY);
    let again = parse_request(&data[..used]);
    assert_eq!(again, Ok(Some((req, used))), "independent of what follows");
}

/// Serves one dependency's virtual listener until the runtime stops.
pub async fn serve(listener: TcpListener, effects: Arc<Effects>, dependency: SocketAddr) {
    super::accept_bounded(listener, effects, dependency, connection).await;
}

async fn connection(mut sock: TcpStream, effects: Arc<Effects>, dependency: SocketAddr) {
    let _ = sock.set_nodelay(true);
    let mut buf = Vec::with_capacity(4096);
    let mut out = Vec::with_capacity(4096);
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        let (req, used) = loop {
            match parse_request(&buf) {
                Ok(Some(done)) => break done,
                Ok(None) => {}
                Err(why) => {
                    tracing::debug!(%dependency, why, "virtual dependency: bad request");
                    effects
                        .counters
                        .malformed
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let _ = sock.write_all(UNMATCHED).await;
                    return;
                }
            }
            match tokio::time::timeout(IDLE, sock.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                _ => return,
            }
        };
        buf.drain(..used);
        let close = crate::http::header(&req.headers, "connection")
            .is_some_and(|v| v.eq_ignore_ascii_case(b"close"));
        out.clear();
        match effects.answer(dependency, req).await {
            Some(resp) => response_wire(&resp, &mut out),
            None => out.extend_from_slice(UNMATCHED),
        }
        if sock.write_all(&out).await.is_err() || close {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::effects::attribute::Attributed;
    use crate::effects::record::OutboundCall;

    fn req(method: &str, target: &str, body: &str) -> Request {
        Request {
            method: method.into(),
            target: target.into(),
            version: 1,
            headers: vec![],
            body: bytes::Bytes::from(body.to_string()),
        }
    }

    fn rec(target: &str, body: &str, used: bool) -> Recorded {
        Recorded {
            call: OutboundCall {
                dependency: "10.0.0.9:7070".parse().expect("addr"),
                request: req("POST", target, body),
                response: Response {
                    version: 1,
                    status: 201,
                    reason: "Created".into(),
                    headers: vec![Header::new("Content-Length", "2"), Header::new("X-A", "b")],
                    body: bytes::Bytes::from_static(b"{}"),
                },
                request_first_ns: 0,
                response_last_ns: 0,
                ids: vec![],
                tokens: vec![],
            },
            how: Attributed::Exact,
            used,
        }
    }

    fn tpl(m: &str, t: &str) -> String {
        let path: Vec<String> = t
            .split('/')
            .map(|s| {
                if s.chars().all(|c| c.is_ascii_digit()) && !s.is_empty() {
                    "{id}".into()
                } else {
                    s.into()
                }
            })
            .collect();
        format!("{m} {}", path.join("/"))
    }

    #[test]
    fn picks_by_method_template_and_body_skipping_used_ones() {
        let dep: SocketAddr = "10.0.0.9:7070".parse().expect("addr");
        let legacy = vec![
            rec("/charges", r#"{"order_id":"o1","amount":11.95}"#, false),
            rec("/charges", r#"{"order_id":"o2","amount":3.5}"#, false),
            rec("/refunds/7", r#"{"order_id":"o2"}"#, false),
            rec("/charges", r#"{"order_id":"o2","amount":3.5}"#, true),
        ];
        let want = req("POST", "/charges", r#"{"amount":3.5,"order_id":"o2"}"#);
        assert_eq!(pick(&legacy, dep, &want, &tpl).map(|p| p.0), Some(1));
        let refund = req("POST", "/refunds/8", r#"{"order_id":"o2"}"#);
        assert_eq!(pick(&legacy, dep, &refund, &tpl).map(|p| p.0), Some(2));
        assert!(pick(&legacy, dep, &req("GET", "/charges", ""), &tpl).is_none());
        let other: SocketAddr = "10.0.0.9:7071".parse().expect("addr");
        assert!(pick(&legacy, other, &want, &tpl).is_none());
    }

    #[test]
    fn answers_are_reframed_and_requests_parsed_incrementally() {
        let mut out = Vec::new();
        response_wire(&rec("/c", "", false).call.response, &mut out);
        let text = String::from_utf8(out).expect("utf8");
        assert!(text.starts_with("HTTP/1.1 201 Created\r\n"), "{text}");
        assert_eq!(text.matches("Content-Length").count(), 1, "{text}");
        let wire = b"POST /charges HTTP/1.1\r\nContent-Length: 4\r\n\r\nabcdGET";
        assert_eq!(parse_request(&wire[..30]), Ok(None));
        let (r, used) = parse_request(wire).expect("valid").expect("complete");
        assert_eq!((r.body.as_ref(), used), (&b"abcd"[..], wire.len() - 3));
        assert!(parse_request(b"\x16\x03\x01garbage\r\n\r\n").is_err());
    }

    #[test]
    fn chunked_request_bodies_are_decoded_incrementally_and_bounded() {
        let wire = b"POST /charges HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
            4\r\n{\"a\"\r\n3;ext=1\r\n:1}\r\n0\r\nX-Trailer: t\r\n\r\nGET";
        let complete = wire.len() - 3;
        // Every cut before the end needs more bytes; none is an error.
        for cut in 0..complete {
            assert_eq!(parse_request(&wire[..cut]), Ok(None), "cut at {cut}");
        }
        let (r, used) = parse_request(wire).expect("valid").expect("complete");
        assert_eq!((r.body.as_ref(), used), (&br#"{"a":1}"#[..], complete));
        // Without trailers, and with a Content-Length that chunked overrides.
        let plain = b"POST / HTTP/1.1\r\nContent-Length: 99\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n";
        let (r, used) = parse_request(plain).expect("valid").expect("complete");
        assert_eq!((r.body.as_ref(), used), (&b"ok"[..], plain.len()));
        // Bad framing and oversize chunks are errors, not waits.
        let bad = |body: &[u8]| {
            let mut w = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            w.extend_from_slice(body);
            parse_request(&w)
        };
        assert!(bad(b"zz\r\n").is_err());
        assert!(bad(b"2\r\nokX\r\n").is_err());
        assert!(bad(b"200000\r\n").is_err(), "over the body limit");
        assert!(
            parse_request(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n").is_err(),
            "chunked must be last"
        );
    }

    #[test]
    fn the_fuzz_entry_holds_on_seeds_and_their_cuts() {
        let seeds: [&[u8]; 4] = [
            b"POST /charges HTTP/1.1\r\nContent-Length: 4\r\n\r\nabcdGET / HTTP/1.1\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nT: 1\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n",
            b"\r\n\r\n",
        ];
        for seed in seeds {
            for cut in 0..=seed.len() {
                fuzz_request(&seed[..cut]);
            }
        }
    }
}
