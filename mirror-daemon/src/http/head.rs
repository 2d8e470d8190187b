//! Message heads: httparse plus the framing rules httparse leaves to its caller
//! (body length, ambiguity, protocols we do not cover).
use bytes::Bytes;

use super::error::{FramingError, Limits, Protocol};
use super::exchange::{Header, HeaderName, Request, Response};

/// Headers kept on the stack when the limit allows; above it, a heap array.
const STACK_HEADERS: usize = 128;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n";

/// What the response framing needs to know about the request it answers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ResponseCtx {
    /// HEAD: the response has no body whatever its headers say.
    pub head: bool,
    /// CONNECT: a 2xx response turns the connection into a tunnel.
    pub connect: bool,
    /// The exchange is framed (its messages' ends found, their sizes bounded) but its
    /// content is not kept: no bodies, and no response header fields or reason phrase
    /// (the request head stays: sampling rules read it). Nothing downstream will read them
    /// ([`super::ExchangeTracker::with_frame_only`]). Given to the request decoder with the
    /// head it is about to parse, carried with the request to its response.
    pub frame_only: bool,
}

impl ResponseCtx {
    pub(crate) fn for_method(method: &str) -> Self {
        Self {
            head: method.eq_ignore_ascii_case("HEAD"),
            connect: method.eq_ignore_ascii_case("CONNECT"),
            frame_only: false,
        }
    }
}

/// How the body after a head is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Framing {
    Length(u64),
    Chunked,
    /// Response body delimited by the server closing the connection.
    UntilClose,
}

/// A message head without its body.
#[derive(Debug)]
pub(crate) enum Head {
    Request(Request),
    Response(Response),
}

#[derive(Debug)]
pub(crate) enum ParsedHead {
    Message {
        head: Head,
        framing: Framing,
    },
    /// A 1xx interim response (100 Continue, 102, 103): skipped.
    Interim,
}

/// `Ok(None)`: the head is not complete yet. `Ok(Some((len, head)))`: the head is the
/// first `len` bytes.
pub(crate) fn parse_request_head(
    bytes: &[u8],
    limits: &Limits,
) -> Result<Option<(usize, ParsedHead)>, FramingError> {
    if tls_record(bytes)? || bytes.is_empty() {
        return Ok(None);
    }
    // Checked before httparse, which would only call `HTTP/2.0` a bad version.
    if H2_PREFACE.starts_with(bytes) && bytes.len() < H2_PREFACE.len() {
        return Ok(None);
    }
    if bytes.starts_with(H2_PREFACE) {
        return Err(FramingError::Unsupported(Protocol::Http2));
    }
    let mut stack = [httparse::EMPTY_HEADER; STACK_HEADERS];
    let mut heap = Vec::new();
    let slots = header_slots(&mut stack, &mut heap, limits.max_headers);
    let mut req = httparse::Request::new(slots);
    let len = match req.parse(bytes) {
        Ok(httparse::Status::Partial) => return Ok(None),
        Ok(httparse::Status::Complete(len)) => len,
        Err(e) => return Err(head_error(e, limits)),
    };
    reject_bare_lf(&bytes[..len])?;
    let method = req.method.unwrap_or_default();
    if method.eq_ignore_ascii_case("CONNECT") {
        return Err(FramingError::Unsupported(Protocol::Connect));
    }
    // The server may switch protocols after this request; we cannot follow it.
    if req
        .headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("upgrade"))
    {
        return Err(FramingError::Unsupported(Protocol::Upgrade));
    }
    // No framing header on a request means no body (RFC 9112 §6.3).
    let framing = body_framing(req.headers)?.unwrap_or(Framing::Length(0));
    let request = Request {
        method: method.to_owned(),
        target: req.path.unwrap_or_default().to_owned(),
        version: req.version.unwrap_or(1),
        headers: owned_headers(bytes, req.headers),
        body: Bytes::new(),
    };
    Ok(Some((
        len,
        ParsedHead::Message {
            head: Head::Request(request),
            framing,
        },
    )))
}

pub(crate) fn parse_response_head(
    bytes: &[u8],
    limits: &Limits,
    ctx: ResponseCtx,
) -> Result<Option<(usize, ParsedHead)>, FramingError> {
    if tls_record(bytes)? {
        return Ok(None);
    }
    let mut stack = [httparse::EMPTY_HEADER; STACK_HEADERS];
    let mut heap = Vec::new();
    let slots = header_slots(&mut stack, &mut heap, limits.max_headers);
    let mut resp = httparse::Response::new(slots);
    let len = match resp.parse(bytes) {
        Ok(httparse::Status::Partial) => return Ok(None),
        Ok(httparse::Status::Complete(len)) => len,
        Err(e) => return Err(head_error(e, limits)),
    };
    reject_bare_lf(&bytes[..len])?;
    let status = resp.code.unwrap_or_default();
    if status == 101 {
        return Err(FramingError::Unsupported(Protocol::Upgrade));
    }
    if (100..200).contains(&status) {
        return Ok(Some((len, ParsedHead::Interim)));
    }
    if ctx.connect && (200..300).contains(&status) {
        return Err(FramingError::Unsupported(Protocol::Connect));
    }
    // RFC 9112 §6.3: these never have a body, whatever the framing headers say.
    let framing = if ctx.head || status == 204 || status == 304 {
        Framing::Length(0)
    } else {
        body_framing(resp.headers)?.unwrap_or(Framing::UntilClose)
    };
    // Framing only: the fields were read for the framing above; owning them would be an
    // allocation per field for nobody.
    let (reason, headers) = if ctx.frame_only {
        (String::new(), Vec::new())
    } else {
        (
            resp.reason.unwrap_or_default().to_owned(),
            owned_headers(bytes, resp.headers),
        )
    };
    let response = Response {
        version: resp.version.unwrap_or(1),
        status,
        reason,
        headers,
        body: Bytes::new(),
    };
    Ok(Some((
        len,
        ParsedHead::Message {
            head: Head::Response(response),
            framing,
        },
    )))
}

/// Trailer section after the last chunk. `Ok(Some((len, trailers)))` when complete.
pub(crate) fn parse_trailers(
    bytes: &[u8],
    limits: &Limits,
) -> Result<Option<(usize, Vec<Header>)>, FramingError> {
    let mut stack = [httparse::EMPTY_HEADER; STACK_HEADERS];
    let mut heap = Vec::new();
    let slots = header_slots(&mut stack, &mut heap, limits.max_headers);
    match httparse::parse_headers(bytes, slots) {
        Ok(httparse::Status::Partial) => Ok(None),
        Ok(httparse::Status::Complete((len, fields))) => {
            reject_bare_lf(&bytes[..len])?;
            Ok(Some((len, owned_headers(bytes, fields))))
        }
        Err(httparse::Error::TooManyHeaders) => Err(FramingError::TooManyHeaders {
            limit: limits.max_headers,
        }),
        Err(e) => Err(FramingError::InvalidTrailers(e)),
    }
}

/// One chunk-size line, `1*HEXDIG [ext] CRLF`. `Ok(Some((len, size)))` when complete.
pub(crate) fn parse_chunk_line(bytes: &[u8]) -> Result<Option<(usize, u64)>, FramingError> {
    // httparse accepts an empty size (read as 0); a missing size is not a last chunk.
    match bytes.first() {
        None => return Ok(None),
        Some(b) if !b.is_ascii_hexdigit() => return Err(FramingError::InvalidChunkSize),
        Some(_) => {}
    }
    match httparse::parse_chunk_size(bytes) {
        Ok(httparse::Status::Partial) => Ok(None),
        Ok(httparse::Status::Complete((len, size))) => {
            // httparse lets any octet through in an extension, LF and controls included.
            let line = &bytes[..len.saturating_sub(2)];
            if line
                .iter()
                .any(|b| (b.is_ascii_control() && *b != b'\t') || *b == 0x7f)
            {
                return Err(FramingError::InvalidChunkSize);
            }
            Ok(Some((len, size)))
        }
        Err(_) => Err(FramingError::InvalidChunkSize),
    }
}

/// Whether `line` (ending in CRLF) is a plausible request line, for resynchronization.
pub(crate) fn is_request_line(line: &[u8]) -> bool {
    if !line.ends_with(b"\r\n") || line.iter().filter(|b| **b == b'\n').count() != 1 {
        return false;
    }
    let mut slot = [httparse::EMPTY_HEADER; 1];
    let mut req = httparse::Request::new(&mut slot);
    matches!(req.parse(line), Ok(httparse::Status::Partial)) && req.version.is_some()
}

/// Whether `line` (ending in CRLF) is a plausible status line, for resynchronization.
pub(crate) fn is_status_line(line: &[u8]) -> bool {
    if !line.ends_with(b"\r\n") || line.iter().filter(|b| **b == b'\n').count() != 1 {
        return false;
    }
    let mut slot = [httparse::EMPTY_HEADER; 1];
    let mut resp = httparse::Response::new(&mut slot);
    matches!(resp.parse(line), Ok(httparse::Status::Partial)) && resp.code.is_some()
}

/// `Ok(true)`: could still be a TLS record header, need more bytes.
fn tls_record(bytes: &[u8]) -> Result<bool, FramingError> {
    match bytes {
        [0x16] => Ok(true),
        [0x16, 0x03, ..] => Err(FramingError::Unsupported(Protocol::Tls)),
        _ => Ok(false),
    }
}

fn header_slots<'s, 'b>(
    stack: &'s mut [httparse::Header<'b>; STACK_HEADERS],
    heap: &'s mut Vec<httparse::Header<'b>>,
    max: usize,
) -> &'s mut [httparse::Header<'b>] {
    if max <= STACK_HEADERS {
        &mut stack[..max]
    } else {
        heap.resize(max, httparse::EMPTY_HEADER);
        heap.as_mut_slice()
    }
}

fn head_error(e: httparse::Error, limits: &Limits) -> FramingError {
    match e {
        httparse::Error::TooManyHeaders => FramingError::TooManyHeaders {
            limit: limits.max_headers,
        },
        e => FramingError::InvalidHead(e),
    }
}

fn reject_bare_lf(head: &[u8]) -> Result<(), FramingError> {
    // Only the line feeds are looked at (memchr), not every byte of the head.
    let bare = memchr::memchr_iter(b'\n', head).any(|i| i == 0 || head[i - 1] != b'\r');
    if bare {
        Err(FramingError::BareLineFeed)
    } else {
        Ok(())
    }
}

/// The fields as headers sharing one copy of the part of `head` they span (one
/// allocation per head instead of two per field).
fn owned_headers(head: &[u8], fields: &[httparse::Header<'_>]) -> Vec<Header> {
    // httparse's names and values are slices of `head`: their offsets locate them in the copy.
    let at = |part: &[u8]| (part.as_ptr() as usize).wrapping_sub(head.as_ptr() as usize);
    let (Some(first), Some(last)) = (fields.first(), fields.last()) else {
        return Vec::new();
    };
    let start = at(first.name.as_bytes());
    let end = at(last.value).wrapping_add(last.value.len());
    let Some(span) = head.get(start..end) else {
        return fields
            .iter()
            .map(|h| Header::new(h.name, h.value))
            .collect();
    };
    let shared = Bytes::copy_from_slice(span);
    // A part outside the span (none from httparse) is copied on its own, never sliced
    // out of bounds.
    let range = |part: &[u8]| {
        let from = at(part).wrapping_sub(start);
        match from.checked_add(part.len()) {
            Some(to) if to <= shared.len() => shared.slice(from..to),
            _ => Bytes::copy_from_slice(part),
        }
    };
    fields
        .iter()
        .map(|h| Header {
            name: HeaderName::from_utf8(range(h.name.as_bytes()))
                .unwrap_or_else(|| HeaderName::from(h.name)),
            value: range(h.value),
        })
        .collect()
}

/// Body framing from Content-Length / Transfer-Encoding; `None` if neither is present.
fn body_framing(fields: &[httparse::Header<'_>]) -> Result<Option<Framing>, FramingError> {
    let mut length: Option<u64> = None;
    let mut te_present = false;
    let mut codings = 0usize;
    let mut chunked_at: Option<usize> = None;
    let mut chunked_count = 0usize;
    for field in fields {
        if field.name.eq_ignore_ascii_case("content-length") {
            // A list of identical values is tolerated (RFC 9110 §8.6); anything else is
            // the classic request-smuggling ambiguity.
            for item in field.value.split(|b| *b == b',') {
                let value = parse_length(trim_ows(item))?;
                if length.is_some_and(|l| l != value) {
                    return Err(FramingError::InvalidContentLength);
                }
                length = Some(value);
            }
        } else if field.name.eq_ignore_ascii_case("transfer-encoding") {
            te_present = true;
            for item in field.value.split(|b| *b == b',') {
                let coding = trim_ows(item);
                if coding.is_empty() {
                    continue;
                }
                if coding.eq_ignore_ascii_case(b"chunked") {
                    chunked_count += 1;
                    chunked_at = Some(codings);
                }
                codings += 1;
            }
        }
    }
    if te_present && length.is_some() {
        return Err(FramingError::ConflictingFraming);
    }
    if te_present {
        let chunked_last = chunked_at.is_some_and(|i| i + 1 == codings);
        return match (codings, chunked_count, chunked_last) {
            (1, 1, true) => Ok(Some(Framing::Chunked)),
            // chunked applied twice or not last: the length cannot be determined.
            (0, _, _) | (_, 2.., _) | (_, 1, false) => Err(FramingError::InvalidTransferEncoding),
            _ => Err(FramingError::Unsupported(Protocol::TransferCoding)),
        };
    }
    Ok(length.map(Framing::Length))
}

fn parse_length(digits: &[u8]) -> Result<u64, FramingError> {
    if digits.is_empty() {
        return Err(FramingError::InvalidContentLength);
    }
    digits.iter().try_fold(0u64, |acc, b| {
        if !b.is_ascii_digit() {
            return Err(FramingError::InvalidContentLength);
        }
        acc.checked_mul(10)
            .and_then(|v| v.checked_add(u64::from(b - b'0')))
            .ok_or(FramingError::InvalidContentLength)
    })
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_fields_are_the_wire_fields() {
        // Empty values (also last), odd spacing, a value that is not UTF-8, many fields.
        let mut wire = b"GET / HTTP/1.1\r\nHost: a\r\nX-Empty:\r\nX-Spaces:   v  w  \r\n\
X-Bin: \xff\xfe\r\n"
            .to_vec();
        for i in 0..40 {
            wire.extend_from_slice(format!("X-{i}: {i}\r\n").as_bytes());
        }
        wire.extend_from_slice(b"X-Last:\r\n\r\n");
        let limits = Limits::default();
        let Ok(Some((
            _,
            ParsedHead::Message {
                head: Head::Request(r),
                ..
            },
        ))) = parse_request_head(&wire, &limits)
        else {
            panic!("the head parses");
        };
        let mut slots = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut slots);
        assert!(req.parse(&wire).is_ok_and(|s| s.is_complete()));
        let expected: Vec<(String, Vec<u8>)> = req
            .headers
            .iter()
            .map(|h| (h.name.to_string(), h.value.to_vec()))
            .collect();
        let got: Vec<(String, Vec<u8>)> = r
            .headers
            .iter()
            .map(|h| (h.name.to_string(), h.value.to_vec()))
            .collect();
        assert_eq!(got, expected);
        assert_eq!(got.len(), 45);
        // One buffer under every field: the names and values are ranges of it.
        let base = r.headers[0].name.as_ptr() as usize;
        assert!(
            r.headers
                .iter()
                .all(|h| (h.value.as_ptr() as usize) >= base)
        );
    }

    #[test]
    fn a_bare_line_feed_is_found_wherever_it_is() {
        // Every string of up to 6 bytes from `\r`, `\n` and `a`, against the definition:
        // a LF that is first or not after a CR.
        let alphabet = [b'\r', b'\n', b'a'];
        for len in 0..=6u32 {
            for n in 0..3usize.pow(len) {
                let mut k = n;
                let head: Vec<u8> = (0..len)
                    .map(|_| {
                        let c = alphabet[k % 3];
                        k /= 3;
                        c
                    })
                    .collect();
                let bare =
                    (0..head.len()).any(|i| head[i] == b'\n' && (i == 0 || head[i - 1] != b'\r'));
                assert_eq!(reject_bare_lf(&head).is_err(), bare, "{head:?}");
            }
        }
    }

    fn framing_of(head: &str) -> Result<Framing, FramingError> {
        match parse_request_head(head.as_bytes(), &Limits::default())? {
            Some((_, ParsedHead::Message { framing, .. })) => Ok(framing),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn content_length_rules() {
        assert_eq!(
            framing_of("POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n"),
            Ok(Framing::Length(5))
        );
        assert_eq!(
            framing_of("POST / HTTP/1.1\r\nContent-Length: 5, 5\r\nContent-Length: 5\r\n\r\n"),
            Ok(Framing::Length(5))
        );
        assert_eq!(
            framing_of("POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"),
            Err(FramingError::InvalidContentLength)
        );
        assert_eq!(
            framing_of("POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n"),
            Err(FramingError::InvalidContentLength)
        );
        assert_eq!(
            framing_of("POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n"),
            Err(FramingError::InvalidContentLength)
        );
        assert_eq!(framing_of("GET / HTTP/1.1\r\n\r\n"), Ok(Framing::Length(0)));
    }

    #[test]
    fn transfer_encoding_rules() {
        assert_eq!(
            framing_of("POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n"),
            Ok(Framing::Chunked)
        );
        assert_eq!(
            framing_of(
                "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"
            ),
            Err(FramingError::ConflictingFraming)
        );
        assert_eq!(
            framing_of("POST / HTTP/1.1\r\nTransfer-Encoding: chunked, chunked\r\n\r\n"),
            Err(FramingError::InvalidTransferEncoding)
        );
        assert_eq!(
            framing_of("POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"),
            Err(FramingError::InvalidTransferEncoding)
        );
        assert_eq!(
            framing_of("POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            Err(FramingError::Unsupported(Protocol::TransferCoding))
        );
    }

    #[test]
    fn chunk_lines() {
        assert_eq!(parse_chunk_line(b"1a\r\n"), Ok(Some((4, 26))));
        assert_eq!(parse_chunk_line(b"1a;name=\"v\"\r\nxx"), Ok(Some((13, 26))));
        assert_eq!(parse_chunk_line(b"1a"), Ok(None));
        assert_eq!(
            parse_chunk_line(b"\r\n"),
            Err(FramingError::InvalidChunkSize)
        );
        assert_eq!(
            parse_chunk_line(b"zz\r\n"),
            Err(FramingError::InvalidChunkSize)
        );
        assert_eq!(
            parse_chunk_line(b"-1\r\n"),
            Err(FramingError::InvalidChunkSize)
        );
        assert_eq!(
            parse_chunk_line(b"1;a\nb\r\n"),
            Err(FramingError::InvalidChunkSize)
        );
        assert_eq!(
            parse_chunk_line(b"11111111111111111\r\n"),
            Err(FramingError::InvalidChunkSize)
        );
    }

    #[test]
    fn resync_lines() {
        assert!(is_request_line(b"GET /x HTTP/1.1\r\n"));
        assert!(!is_request_line(b"GET /x HTTP/1.1\n"));
        assert!(!is_request_line(b"hello world\r\n"));
        assert!(is_status_line(b"HTTP/1.1 200 OK\r\n"));
        assert!(!is_status_line(b"HTTP/1.1 2000 OK\r\n"));
    }
}
