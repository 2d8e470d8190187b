//! Body plumbing: content coding (gzip/deflate/br, stacked, size-capped), media type
//! classification and re-encoding with the original codings.
//!
//! Every coding the comparator decodes is decoded here too: a body the comparator can
//! read but the masker could not would reach diffs and examples in clear.
use std::borrow::Cow;
use std::io::{Read, Write};

use flate2::Compression;
use flate2::read::{DeflateDecoder, MultiGzDecoder, ZlibDecoder};
use flate2::write::{DeflateEncoder, GzEncoder, ZlibEncoder};

use crate::http::{Header, content_codings, header};

/// Codings stacked deeper than this are not decoded (the comparator's limit too).
const MAX_CODINGS: usize = 4;

/// One content coding, as decoded (deflate is zlib-wrapped per RFC 9110, but some servers
/// send raw deflate: we remember which one we saw to re-encode the same way).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    Gzip,
    Zlib,
    RawDeflate,
    Brotli,
}

/// The codings of a body in the order they were applied (`Content-Encoding` order);
/// empty for identity.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Coding(pub Vec<Step>);

impl Coding {
    pub const IDENTITY: Coding = Coding(Vec::new());
    #[cfg(test)]
    pub fn one(step: Step) -> Coding {
        Coding(vec![step])
    }
    pub fn is_identity(&self) -> bool {
        self.0.is_empty()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DecodeError {
    /// A coding we do not decode (zstd, compress...) or more than `MAX_CODINGS`.
    Unsupported,
    /// Declared coding, but the bytes do not decode.
    Corrupt,
    /// The decoded body is larger than the cap.
    Oversize,
}

/// Decode `body` according to its `Content-Encoding` (a list, applied in order, so
/// decoded in reverse), refusing more than `cap` bytes at any stage.
pub(crate) fn decode<'a>(
    headers: &[Header],
    body: &'a [u8],
    cap: usize,
) -> Result<(Cow<'a, [u8]>, Coding), DecodeError> {
    let names = content_codings(header(headers, "content-encoding"));
    if names.len() > MAX_CODINGS {
        return Err(DecodeError::Unsupported);
    }
    let mut planned = Vec::with_capacity(names.len());
    for n in &names {
        planned.push(match n.as_str() {
            "gzip" | "x-gzip" => Step::Gzip,
            "deflate" => Step::Zlib,
            "br" => Step::Brotli,
            _ => return Err(DecodeError::Unsupported),
        });
    }
    if body.is_empty() || planned.is_empty() {
        if body.len() > cap {
            return Err(DecodeError::Oversize);
        }
        return Ok((Cow::Borrowed(body), Coding::IDENTITY));
    }
    let mut data: Cow<'a, [u8]> = Cow::Borrowed(body);
    let mut seen = Vec::with_capacity(planned.len());
    for step in planned.iter().rev() {
        let (out, actual) = decode_step(*step, &data, cap)?;
        data = Cow::Owned(out);
        seen.push(actual);
    }
    seen.reverse();
    Ok((data, Coding(seen)))
}

fn decode_step(step: Step, data: &[u8], cap: usize) -> Result<(Vec<u8>, Step), DecodeError> {
    match step {
        Step::Gzip => read_capped(MultiGzDecoder::new(data), cap).map(|v| (v, Step::Gzip)),
        Step::Brotli => {
            read_capped(brotli::Decompressor::new(data, 8192), cap).map(|v| (v, Step::Brotli))
        }
        Step::Zlib | Step::RawDeflate => match read_capped(ZlibDecoder::new(data), cap) {
            Ok(v) => Ok((v, Step::Zlib)),
            Err(DecodeError::Oversize) => Err(DecodeError::Oversize),
            Err(_) => read_capped(DeflateDecoder::new(data), cap).map(|v| (v, Step::RawDeflate)),
        },
    }
}

fn read_capped(r: impl Read, cap: usize) -> Result<Vec<u8>, DecodeError> {
    let mut out = Vec::new();
    let limit = u64::try_from(cap).unwrap_or(u64::MAX).saturating_add(1);
    r.take(limit)
        .read_to_end(&mut out)
        .map_err(|_| DecodeError::Corrupt)?;
    if out.len() > cap {
        Err(DecodeError::Oversize)
    } else {
        Ok(out)
    }
}

/// Encode `data` with `coding` (the inverse of [`decode`]).
pub(crate) fn encode(data: &[u8], coding: &Coding) -> std::io::Result<Vec<u8>> {
    let mut out = data.to_vec();
    for step in &coding.0 {
        out = encode_step(&out, *step)?;
    }
    Ok(out)
}

fn encode_step(data: &[u8], step: Step) -> std::io::Result<Vec<u8>> {
    let level = Compression::default();
    let buf = Vec::with_capacity(data.len() / 4);
    match step {
        Step::Gzip => {
            let mut e = GzEncoder::new(buf, level);
            e.write_all(data)?;
            e.finish()
        }
        Step::Zlib => {
            let mut e = ZlibEncoder::new(buf, level);
            e.write_all(data)?;
            e.finish()
        }
        Step::RawDeflate => {
            let mut e = DeflateEncoder::new(buf, level);
            e.write_all(data)?;
            e.finish()
        }
        Step::Brotli => {
            let mut out = buf;
            {
                let mut w = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
                w.write_all(data)?;
                w.flush()?;
            }
            Ok(out)
        }
    }
}

/// How a (decoded) body is read for masking.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BodyKind {
    Json,
    Form,
    Text,
    /// A binary media type, or content that does not look like text.
    Binary,
}

/// Classify by `Content-Type`, sniffing when it is absent or not specific.
pub(crate) fn classify(headers: &[Header], data: &[u8]) -> BodyKind {
    let mut buf = [0u8; 64];
    let owned;
    let ct = match header(headers, "content-type") {
        None => None,
        Some(v) => match media_type_in(v, &mut buf) {
            Some(t) => Some(t),
            None => {
                owned = media_type(v);
                Some(owned.as_str())
            }
        },
    };
    match ct {
        // The common case, decided before the substring searches (it contains neither).
        Some("application/json") => BodyKind::Json,
        Some("application/x-www-form-urlencoded") => BodyKind::Form,
        Some(t) if t.contains("ndjson") || t.contains("json-seq") => BodyKind::Text,
        Some(t) if t == "application/json" || t.ends_with("+json") || t.ends_with("/json") => {
            BodyKind::Json
        }
        Some(t) if t.starts_with("text/") || t.ends_with("+xml") || TEXT_TYPES.contains(&t) => {
            BodyKind::Text
        }
        Some(t)
            if BINARY_PREFIXES.iter().any(|p| t.starts_with(p)) || BINARY_TYPES.contains(&t) =>
        {
            BodyKind::Binary
        }
        _ => sniff(data),
    }
}

/// The media type of a `Content-Type` value: before any `;`, trimmed, lower-cased.
fn media_type(v: &[u8]) -> String {
    String::from_utf8_lossy(v)
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

/// [`media_type`] in `buf`, when the value is UTF-8 and the type fits (no allocation).
fn media_type_in<'b>(v: &[u8], buf: &'b mut [u8; 64]) -> Option<&'b str> {
    let t = std::str::from_utf8(v).ok()?.split(';').next()?.trim();
    let out = buf.get_mut(..t.len())?;
    out.copy_from_slice(t.as_bytes());
    out.make_ascii_lowercase();
    std::str::from_utf8(out).ok()
}

const TEXT_TYPES: &[&str] = &[
    "application/xml",
    "application/javascript",
    "application/x-javascript",
    "application/ecmascript",
    "application/graphql",
    "application/yaml",
    "application/x-yaml",
    "application/csv",
    "application/sql",
    "application/x-sh",
];

const BINARY_PREFIXES: &[&str] = &["image/", "audio/", "video/", "font/"];

const BINARY_TYPES: &[&str] = &[
    "application/octet-stream",
    "application/pdf",
    "application/zip",
    "application/gzip",
    "application/x-tar",
    "application/protobuf",
    "application/x-protobuf",
    "application/vnd.google.protobuf",
    "application/grpc",
    "application/msgpack",
    "application/x-msgpack",
    "application/cbor",
    "application/wasm",
];

/// Text if it is UTF-8 without control characters other than whitespace; JSON if it also
/// starts like a JSON document.
fn sniff(data: &[u8]) -> BodyKind {
    let Ok(s) = std::str::from_utf8(data) else {
        return BodyKind::Binary;
    };
    if s.bytes()
        .any(|c| c < 0x20 && !matches!(c, b'\t' | b'\n' | b'\r') || c == 0x7f)
    {
        return BodyKind::Binary;
    }
    match s.trim_start().as_bytes().first() {
        Some(b'{' | b'[') => BodyKind::Json,
        _ => BodyKind::Text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The media type read on the stack is the allocating reading's, or not taken.
    #[test]
    fn media_type_in_is_media_type() {
        for v in [
            &b"application/json"[..],
            b"Application/JSON; charset=utf-8",
            b"  text/html ;q=1",
            b"application/x-www-form-urlencoded",
            b"\x0bapplication/json\x0b",
            b"application/vnd.api+json",
            b"",
            b";",
            "appl\u{e9}cation/json".as_bytes(),
            b"\xffapplication/json",
            b"application/a-very-long-media-type-name-that-does-not-fit-in-the-buffer+json",
        ] {
            let mut buf = [0u8; 64];
            if let Some(t) = media_type_in(v, &mut buf) {
                assert_eq!(t, media_type(v), "{v:?}");
            } else {
                assert!(
                    std::str::from_utf8(v).is_err() || media_type(v).len() > 64,
                    "{v:?}"
                );
            }
        }
    }

    fn h(name: &str, v: &str) -> Header {
        Header::new(name, v)
    }

    #[test]
    fn gzip_and_deflate_round_trip() {
        let data = b"{\"email\":\"alice@example.com\"}".repeat(10);
        for (ce, coding) in [
            ("gzip", Coding(vec![Step::Gzip])),
            ("deflate", Coding(vec![Step::Zlib])),
            ("deflate", Coding(vec![Step::RawDeflate])),
            ("br", Coding(vec![Step::Brotli])),
            ("gzip, br", Coding(vec![Step::Gzip, Step::Brotli])),
            ("deflate,gzip", Coding(vec![Step::Zlib, Step::Gzip])),
        ] {
            let enc = encode(&data, &coding).unwrap();
            let (dec, seen) = decode(&[h("Content-Encoding", ce)], &enc, 1 << 20).unwrap();
            assert_eq!(dec.as_ref(), data.as_slice());
            assert_eq!(seen, coding);
        }
    }

    #[test]
    fn decode_failures() {
        let big = encode(&vec![b'a'; 10_000], &Coding::one(Step::Gzip)).unwrap();
        assert_eq!(
            decode(&[h("Content-Encoding", "gzip")], &big, 9_999).unwrap_err(),
            DecodeError::Oversize
        );
        assert!(decode(&[h("Content-Encoding", "gzip")], &big, 10_000).is_ok());
        assert_eq!(
            decode(&[h("Content-Encoding", "gzip")], b"not gzip", 100).unwrap_err(),
            DecodeError::Corrupt
        );
        assert_eq!(
            decode(
                &[h("Content-Encoding", "deflate")],
                b"not deflate at all \xff\xff",
                100
            )
            .unwrap_err(),
            DecodeError::Corrupt
        );
        assert_eq!(
            decode(&[h("Content-Encoding", "zstd")], b"x", 100).unwrap_err(),
            DecodeError::Unsupported
        );
        assert_eq!(
            decode(
                &[h("Content-Encoding", "gzip,gzip,gzip,gzip,gzip")],
                b"x",
                100
            )
            .unwrap_err(),
            DecodeError::Unsupported
        );
        assert_eq!(
            decode(&[h("Content-Encoding", "br")], b"not brotli", 100).unwrap_err(),
            DecodeError::Corrupt
        );
        assert_eq!(decode(&[], b"12345", 4).unwrap_err(), DecodeError::Oversize);
    }

    #[test]
    fn classification() {
        assert_eq!(
            classify(
                &[h("Content-Type", "application/json; charset=utf-8")],
                b"x"
            ),
            BodyKind::Json
        );
        assert_eq!(
            classify(&[h("content-type", "application/problem+json")], b"x"),
            BodyKind::Json
        );
        assert_eq!(
            classify(
                &[h("Content-Type", "application/x-www-form-urlencoded")],
                b"a=b"
            ),
            BodyKind::Form
        );
        assert_eq!(
            classify(&[h("Content-Type", "text/html")], b"<p>"),
            BodyKind::Text
        );
        assert_eq!(
            classify(&[h("Content-Type", "application/x-ndjson")], b"{}\n{}"),
            BodyKind::Text
        );
        assert_eq!(
            classify(&[h("Content-Type", "image/png")], b"plain"),
            BodyKind::Binary
        );
        assert_eq!(classify(&[], b"  {\"a\":1}"), BodyKind::Json);
        assert_eq!(classify(&[], b"hello"), BodyKind::Text);
        assert_eq!(classify(&[], b"he\0llo"), BodyKind::Binary);
        assert_eq!(
            classify(&[h("Content-Type", "application/vnd.custom")], b"\xff\xfe"),
            BodyKind::Binary
        );
    }
}
