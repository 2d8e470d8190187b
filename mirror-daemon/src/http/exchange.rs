use bytes::Bytes;

use crate::capture::FlowKey;

/// Sortable, unique id of one exchange (a ULID: time-ordered, 26 characters).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CorrelationId(pub ulid::Ulid);

impl CorrelationId {
    pub fn new() -> Self {
        Self(ulid::Ulid::new())
    }
}

impl Default for CorrelationId {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Display for CorrelationId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// One header as it was on the wire: original name case, original order; the value is
/// raw bytes (not necessarily UTF-8).
///
/// Name and value share one buffer per message head (`Bytes` ranges of the head copied
/// once at capture), so passing a header list on (masking, replay, compare) clones
/// reference counts, not bytes; only a value that masking changes gets bytes of its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub name: HeaderName,
    pub value: Bytes,
}

/// A header's name, original case, in a shared buffer; always UTF-8 (httparse accepts
/// only token characters, and every other constructor starts from a `str`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HeaderName(Bytes);

impl HeaderName {
    /// A name from a `str` that lives as long as the program (no copy).
    pub const fn from_static(name: &'static str) -> Self {
        Self(Bytes::from_static(name.as_bytes()))
    }

    /// `bytes` as a name when they are UTF-8 (sharing them).
    pub fn from_utf8(bytes: Bytes) -> Option<Self> {
        std::str::from_utf8(&bytes).is_ok().then_some(Self(bytes))
    }

    pub fn as_str(&self) -> &str {
        // SAFETY: every constructor checks or starts from UTF-8, and the bytes never change.
        unsafe { std::str::from_utf8_unchecked(&self.0) }
    }
}

impl std::ops::Deref for HeaderName {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for HeaderName {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Debug for HeaderName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl std::fmt::Display for HeaderName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<&str> for HeaderName {
    fn from(s: &str) -> Self {
        Self(Bytes::copy_from_slice(s.as_bytes()))
    }
}

impl From<String> for HeaderName {
    fn from(s: String) -> Self {
        Self(Bytes::from(s))
    }
}

impl PartialEq<str> for HeaderName {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for HeaderName {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub target: String,
    /// Minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    pub headers: Vec<Header>,
    /// De-chunked body (chunked transfer coding removed; content coding kept).
    pub body: Bytes,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub version: u8,
    pub status: u16,
    pub reason: String,
    pub headers: Vec<Header>,
    /// De-chunked body (chunked transfer coding removed; content coding kept).
    pub body: Bytes,
}

/// Kernel timestamps (ns, monotonic) of one exchange on the legacy host.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timing {
    pub request_first_ns: u64,
    pub request_last_ns: u64,
    pub response_first_ns: u64,
    pub response_last_ns: u64,
}

impl Timing {
    /// Time to first byte: last request byte to first response byte.
    pub fn ttfb_ns(&self) -> u64 {
        self.response_first_ns.saturating_sub(self.request_last_ns)
    }
    /// Time to last byte: last request byte to last response byte.
    pub fn ttlb_ns(&self) -> u64 {
        self.response_last_ns.saturating_sub(self.request_last_ns)
    }
}

/// A request and the legacy response it got, as seen on the legacy host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exchange {
    pub id: CorrelationId,
    pub flow: FlowKey,
    pub request: Request,
    pub response: Response,
    pub timing: Timing,
}

impl Header {
    /// A header with copies of `name` and `value` (captured heads share their buffer
    /// instead, see `http::head`).
    pub fn new(name: impl AsRef<str>, value: impl AsRef<[u8]>) -> Self {
        Self {
            name: HeaderName::from(name.as_ref()),
            value: Bytes::copy_from_slice(value.as_ref()),
        }
    }
}

/// The content codings of a `Content-Encoding` value, in the order applied (decode in
/// reverse), lowercased, without `identity`.
pub fn content_codings(value: Option<&[u8]>) -> Vec<String> {
    value
        .map(|v| {
            String::from_utf8_lossy(v)
                .split(',')
                .map(|c| c.trim().to_ascii_lowercase())
                .filter(|c| !c.is_empty() && c != "identity")
                .collect()
        })
        .unwrap_or_default()
}

/// First header named `name` (case-insensitive).
pub fn header<'a>(headers: &'a [Header], name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| &h.value[..])
}
