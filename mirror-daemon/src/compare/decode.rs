//! Content decoding (gzip, deflate, br) under a size cap, so that bodies are compared as
//! the client sees them, whatever compression each side chose.
use std::borrow::Cow;
use std::io::Read;

use sha2::{Digest, Sha256};

/// Content codings stacked deeper than this are not decoded (no legitimate server does it).
const MAX_CODINGS: usize = 4;
/// Past the in-memory cap we keep hashing the decoded stream, up to this many times the
/// cap, so a decompression bomb costs bounded time.
const HASH_LIMIT_FACTOR: u64 = 8;

/// A body ready for comparison.
#[derive(Debug)]
pub(crate) enum Decoded<'a> {
    /// Fully decoded, within the cap.
    Full(Cow<'a, [u8]>),
    /// Decoded size over the cap: only its length and SHA-256 are known.
    Hashed { len: u64, sha256: [u8; 32] },
    /// Not decodable (unknown coding, corrupt stream, or over the hash limit): the raw
    /// bytes as received.
    Raw { body: &'a [u8], reason: String },
}

/// Decodes `body` according to the `Content-Encoding` value `encoding` (a comma list,
/// applied in order, so decoded in reverse).
pub(crate) fn decode<'a>(body: &'a [u8], encoding: Option<&[u8]>, cap: usize) -> Decoded<'a> {
    let codings = crate::http::content_codings(encoding);
    // HEAD, 204 and 304 responses carry the coding header with no body.
    if codings.is_empty() || body.is_empty() {
        return if body.len() > cap {
            Decoded::Hashed {
                len: body.len() as u64,
                sha256: Sha256::digest(body).into(),
            }
        } else {
            Decoded::Full(Cow::Borrowed(body))
        };
    }
    if codings.len() > MAX_CODINGS {
        return Decoded::Raw {
            body,
            reason: format!("{} stacked content codings", codings.len()),
        };
    }
    let mut reader: Box<dyn Read + '_> = Box::new(body);
    for c in codings.iter().rev() {
        reader = match c.as_str() {
            "gzip" | "x-gzip" => Box::new(flate2::read::MultiGzDecoder::new(reader)),
            // RFC 9110 `deflate` is zlib-wrapped; some servers send raw deflate.
            "deflate" if codings.len() == 1 && !looks_like_zlib(body) => {
                Box::new(flate2::read::DeflateDecoder::new(reader))
            }
            "deflate" => Box::new(flate2::read::ZlibDecoder::new(reader)),
            "br" => Box::new(brotli::Decompressor::new(reader, 8192)),
            other => {
                return Decoded::Raw {
                    body,
                    reason: format!("unsupported content coding `{other}`"),
                };
            }
        };
    }
    read_capped(reader, body, cap)
}

fn looks_like_zlib(b: &[u8]) -> bool {
    match b {
        [cmf, flg, ..] => cmf & 0x0f == 8 && (u16::from(*cmf) << 8 | u16::from(*flg)) % 31 == 0,
        _ => false,
    }
}

fn read_capped<'a>(reader: Box<dyn Read + '_>, raw: &'a [u8], cap: usize) -> Decoded<'a> {
    let mut out = Vec::new();
    let mut limited = reader.take(cap as u64 + 1);
    if let Err(e) = limited.read_to_end(&mut out) {
        return Decoded::Raw {
            body: raw,
            reason: format!("decoding failed: {e}"),
        };
    }
    if out.len() <= cap {
        return Decoded::Full(Cow::Owned(out));
    }
    // Over the cap: finish hashing the stream without keeping it.
    let mut hasher = Sha256::new();
    hasher.update(&out);
    let mut len = out.len() as u64;
    drop(out);
    let hash_limit = (cap as u64).saturating_mul(HASH_LIMIT_FACTOR);
    let mut reader = limited.into_inner();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                hasher.update(&buf[..n]);
                len += n as u64;
                if len > hash_limit {
                    return Decoded::Raw {
                        body: raw,
                        reason: format!("decodes to more than {hash_limit} bytes"),
                    };
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Decoded::Raw {
                    body: raw,
                    reason: format!("decoding failed: {e}"),
                };
            }
        }
    }
    Decoded::Hashed {
        len,
        sha256: hasher.finalize().into(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::io::Write;

    use super::*;

    pub(crate) fn gzip(b: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(b).unwrap();
        e.finish().unwrap()
    }

    pub(crate) fn brotli(b: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        {
            let mut w = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
            w.write_all(b).unwrap();
        }
        out
    }

    fn full(d: Decoded<'_>) -> Vec<u8> {
        match d {
            Decoded::Full(b) => b.into_owned(),
            other => panic!("not decoded: {other:?}"),
        }
    }

    #[test]
    fn decodes_each_coding() {
        let text = b"hello hello hello";
        assert_eq!(full(decode(&gzip(text), Some(b"gzip"), 1024)), text);
        assert_eq!(full(decode(&brotli(text), Some(b"br"), 1024)), text);
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(text).unwrap();
        assert_eq!(
            full(decode(&z.finish().unwrap(), Some(b"deflate"), 1024)),
            text
        );
        let mut d = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        d.write_all(text).unwrap();
        assert_eq!(
            full(decode(&d.finish().unwrap(), Some(b"Deflate"), 1024)),
            text
        );
        // Stacked: gzip applied first, then br.
        assert_eq!(
            full(decode(&brotli(&gzip(text)), Some(b"gzip, br"), 1024)),
            text
        );
        assert_eq!(full(decode(text, Some(b"identity"), 1024)), text);
        assert_eq!(full(decode(b"", Some(b"gzip"), 1024)), b"");
        assert_eq!(full(decode(b"", Some(b"br"), 1024)), b"");
    }

    #[test]
    fn over_cap_is_hashed_and_garbage_is_raw() {
        let big = vec![b'a'; 10_000];
        match decode(&gzip(&big), Some(b"gzip"), 2000) {
            Decoded::Hashed { len, sha256 } => {
                assert_eq!(len, 10_000);
                assert_eq!(sha256, <[u8; 32]>::from(Sha256::digest(&big)));
            }
            other => panic!("{other:?}"),
        }
        // A bomb beyond the hash limit is not fully expanded.
        assert!(matches!(
            decode(&gzip(&big), Some(b"gzip"), 100),
            Decoded::Raw { .. }
        ));
        assert!(matches!(
            decode(&big, None, 1000),
            Decoded::Hashed { len: 10_000, .. }
        ));
        assert!(matches!(
            decode(b"not gzip", Some(b"gzip"), 1000),
            Decoded::Raw { .. }
        ));
        assert!(matches!(
            decode(b"x", Some(b"zstd"), 1000),
            Decoded::Raw { .. }
        ));
    }
}
