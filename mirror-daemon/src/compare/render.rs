//! Short renderings of values for `Diff::legacy` / `Diff::candidate`: enough to see the
//! difference, never a whole body.
use std::io::{self, Write};

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Longest rendering kept, in bytes (cut on a character boundary, `…` appended).
pub(crate) const MAX_RENDER: usize = 200;

/// A writer that accepts up to `limit` bytes, then fails, so serializing a huge value
/// stops early instead of building it whole.
struct Bounded {
    buf: Vec<u8>,
    limit: usize,
    full: bool,
}

impl Write for Bounded {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = self.limit - self.buf.len();
        if data.len() > room {
            self.buf.extend_from_slice(&data[..room]);
            self.full = true;
            return Err(io::Error::other("rendering limit reached"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Compact JSON of `v`, truncated.
pub(crate) fn render_serialize<T: Serialize + ?Sized>(v: &T) -> String {
    let mut w = Bounded {
        buf: Vec::new(),
        limit: MAX_RENDER + 4,
        full: false,
    };
    let _ = serde_json::to_writer(&mut w, v);
    let s = String::from_utf8_lossy(&w.buf);
    if w.full { truncate(&s) } else { s.into_owned() }
}

pub(crate) fn render_json(v: &Value) -> String {
    render_serialize(v)
}

/// Cuts `s` to `MAX_RENDER` bytes on a character boundary.
pub(crate) fn truncate(s: &str) -> String {
    if s.len() <= MAX_RENDER {
        return s.to_string();
    }
    let mut end = MAX_RENDER;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// `1234 bytes, sha256 0123456789abcdef…` for bodies compared by content hash.
pub(crate) fn describe_bytes(len: u64, sha256: &[u8; 32]) -> String {
    format!("{len} bytes, sha256 {}", hex::encode(sha256))
}

pub(crate) fn sha256(b: &[u8]) -> [u8; 32] {
    Sha256::digest(b).into()
}

/// A window of text around byte offset `at` (the first difference), so the rendering
/// shows where two long texts diverge.
pub(crate) fn window(s: &str, at: usize) -> String {
    const BEFORE: usize = 40;
    let mut start = at.saturating_sub(BEFORE).min(s.len());
    while !s.is_char_boundary(start) {
        start -= 1;
    }
    let body = truncate(&s[start..]);
    if start > 0 {
        format!("@{start}: …{body}")
    } else {
        body
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn renderings_are_short_and_valid_utf8() {
        let big = Value::Array((0..10_000).map(|i| json!(format!("é{i}"))).collect());
        let r = render_json(&big);
        assert!(r.len() <= MAX_RENDER + '…'.len_utf8(), "{}", r.len());
        assert!(r.ends_with('…'));
        assert_eq!(render_json(&json!({"a": 1})), r#"{"a":1}"#);
        let text = "x".repeat(1000) + "DIFF" + &"y".repeat(1000);
        let w = window(&text, 1000);
        assert!(w.starts_with("@960: …"));
        assert!(w.contains("DIFF"));
    }
}
