//! Reads one response (the candidate's, during replay) with the same framing as the tap.
use super::decoder::{Decoder, Event, Kind, Message};
use super::error::{FramingError, Limits};
use super::exchange::Response;
use super::head::ResponseCtx;

/// Progress of a [`ResponseReader`].
#[derive(Debug)]
pub enum ReadProgress {
    NeedMore,
    /// The final (non-1xx) response is complete.
    Complete(Response),
}

/// Incremental reader of the single response to one request.
///
/// 1xx interim responses are skipped. Once the final response is complete, any further
/// byte is an error ([`FramingError::TrailingData`]): one request per reader. After an
/// error, every call returns that error again.
#[derive(Debug)]
pub struct ResponseReader {
    decoder: Decoder,
    ctx: ResponseCtx,
    state: ReaderState,
}

#[derive(Debug)]
enum ReaderState {
    Reading,
    Complete,
    Failed(FramingError),
}

impl ResponseReader {
    /// `request_method` decides whether the response can have a body (HEAD) or opens a
    /// tunnel (CONNECT).
    pub fn new(request_method: &str, limits: Limits) -> Self {
        Self {
            decoder: Decoder::new(Kind::Response, limits),
            ctx: ResponseCtx::for_method(request_method),
            state: ReaderState::Reading,
        }
    }

    pub fn push(&mut self, data: &[u8]) -> Result<ReadProgress, FramingError> {
        let (progress, consumed) = self.push_some(data)?;
        if consumed < data.len() {
            return Err(self.fail(FramingError::TrailingData {
                bytes: data.len() - consumed,
            }));
        }
        Ok(progress)
    }

    /// Like [`push`](Self::push), but bytes after the end of the response are left
    /// unread instead of being an error (they start the next pipelined response): returns
    /// how many bytes of `data` this response took.
    pub fn push_some(&mut self, data: &[u8]) -> Result<(ReadProgress, usize), FramingError> {
        match &self.state {
            ReaderState::Reading => {}
            ReaderState::Complete if data.is_empty() => return Err(FramingError::AlreadyComplete),
            ReaderState::Complete => {
                return Err(self.fail(FramingError::TrailingData { bytes: data.len() }));
            }
            ReaderState::Failed(e) => return Err(e.clone()),
        }
        let mut rest = data;
        loop {
            let step = match self.decoder.decode(rest, 0, self.ctx) {
                Ok(step) => step,
                Err(e) => return Err(self.fail(e)),
            };
            rest = rest.get(step.consumed..).unwrap_or_default();
            match step.event {
                None => return Ok((ReadProgress::NeedMore, data.len())),
                Some(Event::Lost(e)) => return Err(self.fail(e)),
                Some(Event::Complete(Some(Message::Response(response)))) => {
                    self.state = ReaderState::Complete;
                    return Ok((ReadProgress::Complete(response), data.len() - rest.len()));
                }
                // Unreachable with a response decoder: a lost body is reported by `Lost`.
                Some(Event::Complete(_)) => return Err(self.fail(FramingError::Truncated)),
                Some(Event::Started | Event::HeadParsed { .. } | Event::Interim) => {}
            }
        }
    }

    /// The peer closed: completes a close-delimited body, otherwise an error.
    pub fn finish(&mut self) -> Result<Response, FramingError> {
        match &self.state {
            ReaderState::Reading => {}
            ReaderState::Complete => return Err(FramingError::AlreadyComplete),
            ReaderState::Failed(e) => return Err(e.clone()),
        }
        match self.decoder.finish() {
            Ok(Some(Message::Response(response))) => {
                self.state = ReaderState::Complete;
                Ok(response)
            }
            Ok(_) => Err(self.fail(FramingError::Truncated)),
            Err(e) => Err(self.fail(e)),
        }
    }

    fn fail(&mut self, e: FramingError) -> FramingError {
        self.state = ReaderState::Failed(e.clone());
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounting::DropReason;
    use crate::http::error::Protocol;

    fn read(method: &str, input: &[u8], piece: usize) -> Result<Option<Response>, FramingError> {
        let mut r = ResponseReader::new(method, Limits::default());
        for chunk in input.chunks(piece.max(1)) {
            if let ReadProgress::Complete(resp) = r.push(chunk)? {
                return Ok(Some(resp));
            }
        }
        Ok(None)
    }

    fn read_all_pieces(method: &str, input: &[u8]) -> Response {
        let mut first: Option<Response> = None;
        for piece in [1, 2, 5, 13, input.len()] {
            let got = read(method, input, piece).unwrap_or_else(|e| panic!("piece {piece}: {e}"));
            let got = got.unwrap_or_else(|| panic!("piece {piece}: incomplete"));
            if let Some(f) = &first {
                assert_eq!(f, &got, "piece {piece}");
            }
            first = Some(got);
        }
        first.unwrap_or_else(|| panic!("no pieces"))
    }

    #[test]
    fn content_length_response() {
        let r = read_all_pieces(
            "GET",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello",
        );
        assert_eq!((r.status, r.reason.as_str(), r.version), (200, "OK", 1));
        assert_eq!(&r.body[..], b"hello");
        assert_eq!(r.headers.len(), 2);
    }

    #[test]
    fn chunked_response_with_extensions_and_trailers() {
        let r = read_all_pieces(
            "GET",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
        );
        assert_eq!(&r.body[..], b"hello world");
    }

    #[test]
    fn interim_responses_are_skipped() {
        let r = read_all_pieces(
            "POST",
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
        );
        assert_eq!(r.status, 201);
    }

    #[test]
    fn head_204_304_have_no_body() {
        let r = read_all_pieces("HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n");
        assert!(r.body.is_empty());
        let r = read_all_pieces("GET", b"HTTP/1.1 204 No Content\r\n\r\n");
        assert_eq!(r.status, 204);
        let r = read_all_pieces(
            "GET",
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n",
        );
        assert_eq!(r.status, 304);
    }

    #[test]
    fn close_delimited_body_completes_on_finish() {
        let mut r = ResponseReader::new("GET", Limits::default());
        assert!(matches!(
            r.push(b"HTTP/1.0 200 OK\r\n\r\nsome "),
            Ok(ReadProgress::NeedMore)
        ));
        assert!(matches!(r.push(b"body"), Ok(ReadProgress::NeedMore)));
        let resp = r.finish().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((resp.version, &resp.body[..]), (0, &b"some body"[..]));
        assert_eq!(r.finish(), Err(FramingError::AlreadyComplete));
    }

    #[test]
    fn finish_mid_message_is_truncated() {
        let mut r = ResponseReader::new("GET", Limits::default());
        assert!(matches!(
            r.push(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc"),
            Ok(ReadProgress::NeedMore)
        ));
        assert_eq!(r.finish(), Err(FramingError::Truncated));
        let mut r = ResponseReader::new("GET", Limits::default());
        assert_eq!(r.finish(), Err(FramingError::Truncated));
        assert_eq!(
            r.finish().map_err(|e| e.drop_reason()),
            Err(DropReason::ParseError)
        );
    }

    #[test]
    fn bytes_after_the_response_are_an_error() {
        let mut r = ResponseReader::new("GET", Limits::default());
        let e = r.push(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nxHTTP/1.1");
        assert_eq!(e.err(), Some(FramingError::TrailingData { bytes: 8 }));
        let mut r = ResponseReader::new("GET", Limits::default());
        assert!(matches!(
            r.push(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx"),
            Ok(ReadProgress::Complete(_))
        ));
        assert_eq!(
            r.push(b"y").err(),
            Some(FramingError::TrailingData { bytes: 1 })
        );
        assert_eq!(
            r.push(b"").err(),
            Some(FramingError::TrailingData { bytes: 1 }),
            "errors are sticky"
        );
    }

    #[test]
    fn unsupported_and_malformed_responses() {
        let e = read(
            "GET",
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
            4,
        )
        .err();
        assert_eq!(
            e.as_ref().and_then(FramingError::protocol),
            Some(Protocol::Upgrade)
        );
        let e = read("CONNECT", b"HTTP/1.1 200 Connection established\r\n\r\n", 4).err();
        assert_eq!(
            e.as_ref().and_then(FramingError::protocol),
            Some(Protocol::Connect)
        );
        let e = read("GET", &[0x16, 0x03, 0x03, 0x00, 0x10], 1).err();
        assert_eq!(
            e.as_ref().and_then(FramingError::protocol),
            Some(Protocol::Tls)
        );
        let e = read(
            "GET",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            3,
        );
        assert_eq!(e.err(), Some(FramingError::ConflictingFraming));
        let e = read("GET", b"HTTP/1.1 200 OK\nContent-Length: 1\r\n\r\nx", 3);
        assert_eq!(e.err(), Some(FramingError::BareLineFeed));
        let e = read("GET", b"HTTP/1.1 200 OK\r\nA: b\r\n folded\r\n\r\n", 3);
        assert_eq!(
            e.err().map(|e| e.drop_reason()),
            Some(DropReason::ParseError)
        );
        let e = read(
            "GET",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nxyz\r\n",
            3,
        );
        assert_eq!(e.err(), Some(FramingError::InvalidChunkSize));
        let e = read(
            "GET",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n",
            3,
        );
        assert_eq!(e.err(), Some(FramingError::InvalidChunk));
    }

    #[test]
    fn limits_are_enforced() {
        let limits = Limits {
            max_header_bytes: 256,
            max_headers: 4,
            max_body_bytes: 8,
        };
        let mut r = ResponseReader::new("GET", limits);
        let e = r
            .push(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n")
            .err();
        assert_eq!(e, Some(FramingError::BodyTooLarge { limit: 8 }));
        let mut r = ResponseReader::new("GET", limits);
        let e = r
            .push(b"HTTP/1.1 200 OK\r\nA: 1\r\nA: 2\r\nA: 3\r\nA: 4\r\nA: 5\r\n\r\n")
            .err();
        assert_eq!(e, Some(FramingError::TooManyHeaders { limit: 4 }));
        let mut r = ResponseReader::new("GET", limits);
        let mut e = r.push(b"HTTP/1.1 200 OK\r\nX: ").err();
        for _ in 0..100 {
            if let Err(err) = r.push(b"aaaaaaaaaaaaaaaaaaaaaaaaaa") {
                e = Some(err);
                break;
            }
        }
        assert_eq!(e, Some(FramingError::HeadTooLarge { limit: 256 }));
        let mut r = ResponseReader::new("GET", limits);
        assert!(matches!(
            r.push(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Ok(ReadProgress::NeedMore)
        ));
        let mut e = None;
        for _ in 0..100 {
            if let Err(err) = r.push(b"4\r\nabcd\r\n") {
                e = Some(err);
                break;
            }
        }
        assert_eq!(e, Some(FramingError::BodyTooLarge { limit: 8 }));
    }
}
