use crate::accounting::DropReason;

/// Framing limits. Every buffer the framing keeps is bounded by one of these.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Request/status line plus header fields (also bounds one chunk-size line and the
    /// trailer section).
    pub max_header_bytes: usize,
    /// Header fields in one head (also bounds the trailer fields).
    pub max_headers: usize,
    /// Body after transfer decoding.
    pub max_body_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_header_bytes: 64 * 1024,
            max_headers: 128,
            max_body_bytes: 16 * 1024 * 1024,
        }
    }
}

/// Protocols seen on a tapped connection that this stage does not cover.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// A TLS record (handshake, `0x16 0x03`).
    Tls,
    /// HTTP/2 with prior knowledge (`PRI * HTTP/2.0`).
    Http2,
    /// A CONNECT tunnel.
    Connect,
    /// `Upgrade` request or `101 Switching Protocols` (WebSocket, h2c, ...).
    Upgrade,
    /// A transfer coding other than plain `chunked` (e.g. `gzip, chunked`).
    TransferCoding,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tls => "tls",
            Protocol::Http2 => "http2",
            Protocol::Connect => "connect",
            Protocol::Upgrade => "upgrade",
            Protocol::TransferCoding => "transfer_coding",
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which limit a message went over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OversizeKind {
    HeaderBytes,
    HeaderCount,
    Body,
}

/// Why bytes could not be framed as HTTP/1.x messages.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    #[error("malformed message head: {0}")]
    InvalidHead(httparse::Error),
    /// httparse accepts a bare LF as line end; the legacy server may not, so the framing
    /// is ambiguous and we refuse it.
    #[error("bare LF line ending in message head")]
    BareLineFeed,
    #[error("both Content-Length and Transfer-Encoding")]
    ConflictingFraming,
    #[error("invalid or conflicting Content-Length")]
    InvalidContentLength,
    #[error("invalid Transfer-Encoding")]
    InvalidTransferEncoding,
    #[error("invalid chunk size line")]
    InvalidChunkSize,
    #[error("chunk data not followed by CRLF")]
    InvalidChunk,
    #[error("malformed trailer section: {0}")]
    InvalidTrailers(httparse::Error),
    #[error("message head over {limit} bytes")]
    HeadTooLarge { limit: usize },
    #[error("more than {limit} header fields")]
    TooManyHeaders { limit: usize },
    #[error("chunk size line over {limit} bytes")]
    ChunkLineTooLong { limit: usize },
    #[error("body over {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("unsupported protocol: {0}")]
    Unsupported(Protocol),
    #[error("connection closed before the message was complete")]
    Truncated,
    #[error("{bytes} bytes after the final response")]
    TrailingData { bytes: usize },
    #[error("the response was already complete")]
    AlreadyComplete,
}

impl FramingError {
    /// The accounting outcome of an exchange lost to this error.
    pub fn drop_reason(&self) -> DropReason {
        if self.oversize().is_some() {
            DropReason::Oversize
        } else if self.protocol().is_some() {
            DropReason::Unsupported
        } else {
            DropReason::ParseError
        }
    }

    /// The uncovered protocol, for [`FramingError::Unsupported`].
    pub fn protocol(&self) -> Option<Protocol> {
        match self {
            FramingError::Unsupported(p) => Some(*p),
            _ => None,
        }
    }

    /// The limit that was exceeded, for oversize errors.
    pub fn oversize(&self) -> Option<OversizeKind> {
        match self {
            FramingError::HeadTooLarge { .. } | FramingError::ChunkLineTooLong { .. } => {
                Some(OversizeKind::HeaderBytes)
            }
            FramingError::TooManyHeaders { .. } => Some(OversizeKind::HeaderCount),
            FramingError::BodyTooLarge { .. } => Some(OversizeKind::Body),
            _ => None,
        }
    }

    /// A short fixed description, for drop records and logs.
    pub fn detail(&self) -> &'static str {
        match self {
            FramingError::InvalidHead(_) => "malformed message head",
            FramingError::BareLineFeed => "bare LF line ending",
            FramingError::ConflictingFraming => "both Content-Length and Transfer-Encoding",
            FramingError::InvalidContentLength => "invalid Content-Length",
            FramingError::InvalidTransferEncoding => "invalid Transfer-Encoding",
            FramingError::InvalidChunkSize => "invalid chunk size",
            FramingError::InvalidChunk => "chunk data not followed by CRLF",
            FramingError::InvalidTrailers(_) => "malformed trailers",
            FramingError::HeadTooLarge { .. } => "head over max_header_bytes",
            FramingError::TooManyHeaders { .. } => "headers over max_headers",
            FramingError::ChunkLineTooLong { .. } => "chunk size line over max_header_bytes",
            FramingError::BodyTooLarge { .. } => "body over max_body_bytes",
            FramingError::Unsupported(Protocol::Tls) => "unsupported: TLS",
            FramingError::Unsupported(Protocol::Http2) => "unsupported: HTTP/2",
            FramingError::Unsupported(Protocol::Connect) => "unsupported: CONNECT",
            FramingError::Unsupported(Protocol::Upgrade) => "unsupported: Upgrade",
            FramingError::Unsupported(Protocol::TransferCoding) => "unsupported: transfer coding",
            FramingError::Truncated => "message truncated by close",
            FramingError::TrailingData { .. } => "bytes after the final response",
            FramingError::AlreadyComplete => "response already complete",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_reasons_follow_the_error_class() {
        assert_eq!(
            FramingError::BareLineFeed.drop_reason(),
            DropReason::ParseError
        );
        assert_eq!(
            FramingError::BodyTooLarge { limit: 1 }.drop_reason(),
            DropReason::Oversize
        );
        assert_eq!(
            FramingError::TooManyHeaders { limit: 1 }.drop_reason(),
            DropReason::Oversize
        );
        assert_eq!(
            FramingError::Unsupported(Protocol::Tls).drop_reason(),
            DropReason::Unsupported
        );
        assert_eq!(
            FramingError::Unsupported(Protocol::Tls).protocol(),
            Some(Protocol::Tls)
        );
        assert_eq!(FramingError::Truncated.protocol(), None);
    }
}
