//! The masked body of one response reused for another response of the same exchange.
//!
//! Most candidates answer most requests with legacy's very bytes. Masking a body is a
//! pure function of the masker (its key, rules and detectors), the body's bytes, the
//! headers that say how to read them (`Content-Type`, `Content-Encoding`) and the
//! exchange's taint (the request values whose echoes are replaced). So when a second
//! response of an exchange carries the same body bytes under the same reading headers,
//! its masked body is the first one's, and the scan (taint matcher, JSON walk,
//! detectors, tokens) is skipped.
//!
//! The preconditions are checked, not assumed: the memo lives inside the [`Taint`] it
//! was masked with (so the taint set is the same object), records which [`Masker`]
//! built it, and keeps the raw body and reading headers, compared byte for byte.
//!
//! [`Taint`]: super::Taint
//! [`Masker`]: super::Masker
use bytes::Bytes;

use crate::http::{Header, HeaderName};

/// Headers the body masking reads (`body::decode`, `body::classify`).
fn reads_body(name: &str) -> bool {
    name.eq_ignore_ascii_case("content-type") || name.eq_ignore_ascii_case("content-encoding")
}

/// A response body as the masker left it, and what it was computed from.
#[derive(Debug)]
pub(crate) struct BodyMemo {
    /// `Masker::id` of the masker that masked it.
    masker: u64,
    raw: Bytes,
    /// Every `Content-Type` / `Content-Encoding` header, in order, name as captured.
    reading: Vec<(HeaderName, Bytes)>,
    /// Each header of the response as captured, and its masked value (before the body's
    /// `Content-Length` fix-up), in order.
    headers: Vec<(Header, Bytes)>,
    /// The masked body and whether `Content-Encoding` had to go; `None`: unchanged.
    pub masked: Option<(Bytes, bool)>,
    /// The body left (masked, or `raw` when unchanged) is the JSON scan's output and a
    /// document serde_json reads as a `Value` (`json::mask_json_value`).
    value_json: bool,
}

impl BodyMemo {
    pub fn new(
        masker: u64,
        headers: &[Header],
        raw: &Bytes,
        masked: Option<(Bytes, bool)>,
    ) -> Self {
        BodyMemo {
            masker,
            raw: raw.clone(),
            reading: headers
                .iter()
                .filter(|h| reads_body(&h.name))
                .map(|h| (h.name.clone(), h.value.clone()))
                .collect(),
            masked,
            value_json: false,
            headers: Vec::new(),
        }
    }

    /// The memo, with the response's headers (`raw`) and their masked values (`masked`,
    /// as `Pass::mask_headers` left them: one per raw header, same order).
    pub fn with_headers(self, raw: &[Header], masked: &[Header]) -> Self {
        let headers = if raw.len() == masked.len() {
            raw.iter()
                .zip(masked)
                .map(|(r, m)| (r.clone(), m.value.clone()))
                .collect()
        } else {
            Vec::new()
        };
        BodyMemo { headers, ..self }
    }

    /// The masked value of `h`, the header at position `at` of a response masked by
    /// `masker` with this memo's taint, when the memo's response had the same header
    /// (byte for byte) at that position.
    pub fn masked_header(&self, masker: u64, at: usize, h: &Header) -> Option<Bytes> {
        if masker != self.masker {
            return None;
        }
        let (raw, masked) = self.headers.get(at)?;
        (raw.name == h.name && raw.value == h.value).then(|| masked.clone())
    }

    /// The memo, knowing whether its body is a `Value` document (see
    /// [`BodyMemo::value_json_body`]).
    pub fn with_value_json(self, value_json: bool) -> Self {
        BodyMemo { value_json, ..self }
    }

    /// The body the masker left (masked, or the raw one when unchanged) when its JSON
    /// scan found it, byte for byte, a document serde_json reads as a `Value`: the
    /// comparator need not check those bytes again.
    pub fn value_json_body(&self) -> Option<&[u8]> {
        if !self.value_json {
            return None;
        }
        Some(match &self.masked {
            Some((body, _)) => body,
            None => &self.raw,
        })
    }

    /// Whether a body masked by `masker` under `headers` would come out as this memo:
    /// same masker, byte-identical raw body, the same reading headers in the same order.
    /// (The taint is the same by construction: the memo is kept inside it.)
    pub fn fits(&self, masker: u64, headers: &[Header], raw: &[u8]) -> bool {
        if self.masker != masker || self.raw.len() != raw.len() || self.raw[..] != raw[..] {
            return false;
        }
        let mut mine = self.reading.iter();
        for h in headers.iter().filter(|h| reads_body(&h.name)) {
            match mine.next() {
                Some((n, v)) if n.eq_ignore_ascii_case(&h.name) && *v == h.value => {}
                _ => return false,
            }
        }
        mine.next().is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json() -> Vec<Header> {
        vec![
            Header::new("Date", "Mon, 07 Dec 2026 10:00:00 GMT"),
            Header::new("Content-Type", "application/json"),
        ]
    }

    #[test]
    fn fits_only_the_same_masker_bytes_and_reading_headers() {
        let raw = Bytes::from_static(br#"{"email":"ana@example.com"}"#);
        let memo = BodyMemo::new(1, &json(), &raw, None);
        // Other headers (Date) may differ; the name's case may too.
        let mut other = json();
        other[0].value = b"Tue, 08 Dec 2026 10:00:00 GMT"[..].into();
        other[1].name = "content-type".into();
        assert!(memo.fits(1, &other, &raw));
        // Another masker, one byte more or less, another byte.
        assert!(!memo.fits(2, &json(), &raw));
        assert!(!memo.fits(1, &json(), br#"{"email":"ana@example.com"} "#));
        assert!(!memo.fits(1, &json(), br#"{"email":"ana@example.co"}"#));
        assert!(!memo.fits(1, &json(), br#"{"email":"ana@example.con"}"#));
        // A reading header changed, added or missing.
        let mut text = json();
        text[1].value = b"text/plain"[..].into();
        assert!(!memo.fits(1, &text, &raw));
        let mut gz = json();
        gz.push(Header::new("Content-Encoding", "gzip"));
        assert!(!memo.fits(1, &gz, &raw));
        assert!(!memo.fits(1, &json()[..1], &raw));
    }
}
