//! Incremental framing of one direction of an HTTP/1.x connection: a sequence of
//! messages, fed in arbitrary pieces. Every buffer is bounded by [`Limits`].
use bytes::BytesMut;

use super::error::{FramingError, Limits};
use super::exchange::{Request, Response};
use super::head::{self, Framing, Head, ParsedHead, ResponseCtx};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Request,
    Response,
}

#[derive(Debug)]
pub(crate) enum Message {
    Request(Request),
    Response(Response),
}

/// What happened while decoding; at most one per [`Decoder::decode`] call.
#[derive(Debug)]
pub(crate) enum Event {
    /// The first byte of a message arrived (at a known message boundary).
    Started,
    /// A head was parsed. `resynced_at`: the message was found by scanning after a loss
    /// of synchronization (no `Started` was reported for it); the timestamp of its first
    /// byte.
    HeadParsed {
        resynced_at: Option<u64>,
        ctx: ResponseCtx,
        /// Bytes of the head: it started this many bytes before the end of the input
        /// consumed so far (where a resynchronized message began).
        head_len: usize,
    },
    /// A 1xx interim response was skipped.
    Interim,
    /// The current message's content is lost (body over the limit); framing goes on.
    Lost(FramingError),
    /// The current message ended. `None` if its content was lost earlier.
    Complete(Option<Message>),
}

#[derive(Debug)]
pub(crate) struct Step {
    pub consumed: usize,
    pub event: Option<Event>,
}

/// Effect of a gap on the message in progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum GapEffect {
    /// The lost bytes lay inside a body of known remaining length: the message is lost
    /// but framing continues exactly.
    Bridged,
    /// As `Bridged`, and the lost bytes were the end of the message.
    BridgedComplete,
    /// Position unknown: the decoder now scans for the next message start.
    Desync,
}

#[derive(Debug)]
enum State {
    /// At a message boundary.
    Idle,
    /// Looking for a request/status line after losing synchronization. `buf` holds the
    /// current line unless it is over the head limit (`overlong`).
    Scan {
        line_ts: Option<u64>,
        overlong: bool,
    },
    /// `buf` holds a partial head.
    Head {
        resynced_at: Option<u64>,
    },
    Body(Box<BodyState>),
    Failed(FramingError),
}

#[derive(Debug)]
struct BodyState {
    head: Head,
    framing: BodyFraming,
    /// `None` once the content is lost (over the limit or a gap).
    data: Option<BytesMut>,
    /// Framed and bounded, not kept (`ResponseCtx::frame_only`): `data` stays empty and
    /// `seen` counts the bytes against the limit, so the outcome is what keeping would give.
    discard: bool,
    seen: usize,
    /// A loss to report before anything else.
    lost: Option<FramingError>,
}

#[derive(Debug)]
enum BodyFraming {
    Length(u64),
    Chunk(ChunkPhase),
    UntilClose,
}

#[derive(Debug)]
enum ChunkPhase {
    SizeLine,
    Data(u64),
    DataCr,
    DataLf,
    Trailers,
}

/// Initial body reservation: enough for typical bodies, small for hostile lengths.
const INITIAL_BODY_CAPACITY: u64 = 16 * 1024;

#[derive(Debug)]
pub(crate) struct Decoder {
    kind: Kind,
    limits: Limits,
    /// Partial head, chunk-size line, trailer section or scanned line.
    buf: Vec<u8>,
    state: State,
    /// Since the last [`Decoder::resync`], scanning passed over bytes that began no
    /// message (the rest of one whose start was not seen, or of a false start).
    skipped: bool,
}

enum Acc<T> {
    Partial(usize),
    Done(usize, T),
}

impl Decoder {
    pub(crate) fn new(kind: Kind, limits: Limits) -> Self {
        Self {
            kind,
            limits,
            buf: Vec::new(),
            state: State::Idle,
            skipped: false,
        }
    }

    /// Whether scanning passed over bytes since the last [`Decoder::resync`].
    pub(crate) fn skipped(&self) -> bool {
        self.skipped
    }

    /// Decode from `input` up to the next event. If no event is returned, all of `input`
    /// was consumed. `ts` is the timestamp of the bytes; `ctx` describes the request the
    /// next response answers (ignored for requests).
    pub(crate) fn decode(
        &mut self,
        input: &[u8],
        ts: u64,
        ctx: ResponseCtx,
    ) -> Result<Step, FramingError> {
        let mut pos = 0;
        loop {
            let (n, event) = match self.step(&input[pos..], ts, ctx) {
                Ok(r) => r,
                Err(e) => {
                    self.buf = Vec::new();
                    self.state = State::Failed(e.clone());
                    return Err(e);
                }
            };
            pos += n;
            if event.is_some() || n == 0 {
                return Ok(Step {
                    consumed: pos,
                    event,
                });
            }
        }
    }

    /// The peer closed its side: completes a close-delimited body. `Ok(None)`: nothing
    /// was in progress.
    pub(crate) fn finish(&mut self) -> Result<Option<Message>, FramingError> {
        match std::mem::replace(&mut self.state, State::Idle) {
            State::Idle | State::Scan { .. } => Ok(None),
            State::Body(body)
                if matches!(body.framing, BodyFraming::UntilClose) && body.lost.is_none() =>
            {
                Ok(body.into_message())
            }
            State::Failed(e) => Err(e),
            _ => Err(FramingError::Truncated),
        }
    }

    /// Bytes were lost at the current position.
    pub(crate) fn on_gap(&mut self, lost: u64) -> GapEffect {
        if lost > 0
            && let State::Body(body) = &mut self.state
        {
            let bridged = match &mut body.framing {
                BodyFraming::Length(remaining) if lost <= *remaining => {
                    *remaining -= lost;
                    Some(if *remaining == 0 {
                        GapEffect::BridgedComplete
                    } else {
                        GapEffect::Bridged
                    })
                }
                BodyFraming::Chunk(ChunkPhase::Data(remaining)) if lost <= *remaining => {
                    *remaining -= lost;
                    if *remaining == 0 {
                        body.framing = BodyFraming::Chunk(ChunkPhase::DataCr);
                    }
                    Some(GapEffect::Bridged)
                }
                BodyFraming::UntilClose => Some(GapEffect::Bridged),
                _ => None,
            };
            if let Some(effect) = bridged {
                body.data = None;
                body.lost = None;
                if effect == GapEffect::BridgedComplete {
                    self.state = State::Idle;
                }
                return effect;
            }
        }
        self.resync();
        GapEffect::Desync
    }

    /// Drop whatever is in progress and scan for the next message start.
    pub(crate) fn resync(&mut self) {
        self.skipped = false;
        self.buf = Vec::new();
        self.state = State::Scan {
            line_ts: None,
            overlong: false,
        };
    }

    /// Declare the current position a message boundary (the caller has evidence).
    pub(crate) fn assume_boundary(&mut self) {
        self.buf = Vec::new();
        self.state = State::Idle;
    }

    /// At a message boundary, or scanning with no message parsed yet.
    pub(crate) fn between_messages(&self) -> bool {
        matches!(self.state, State::Idle | State::Scan { .. })
    }

    /// Bytes held by this decoder (buffers and body so far), for memory checks.
    pub(crate) fn buffered_bytes(&self) -> usize {
        let body = match &self.state {
            State::Body(b) => b.data.as_ref().map_or(0, BytesMut::len),
            _ => 0,
        };
        self.buf.len() + body
    }

    fn step(
        &mut self,
        input: &[u8],
        ts: u64,
        ctx: ResponseCtx,
    ) -> Result<(usize, Option<Event>), FramingError> {
        match &mut self.state {
            State::Failed(e) => Err(e.clone()),
            State::Idle => {
                // Empty lines between messages are tolerated (RFC 9112 §2.2).
                match input.iter().position(|b| *b != b'\r' && *b != b'\n') {
                    None => Ok((input.len(), None)),
                    Some(n) => {
                        self.buf.clear();
                        self.state = State::Head { resynced_at: None };
                        Ok((n, Some(Event::Started)))
                    }
                }
            }
            State::Scan { .. } => Ok((self.scan(input, ts), None)),
            State::Head { resynced_at } => {
                let resynced_at = *resynced_at;
                self.head(input, ts, ctx, resynced_at)
            }
            State::Body(_) => self.body(input),
        }
    }

    /// Line-by-line search for a request/status line; consumes all of `input` or up to
    /// and including a candidate line.
    fn scan(&mut self, input: &[u8], ts: u64) -> usize {
        let State::Scan { line_ts, overlong } = &mut self.state else {
            return 0;
        };
        if input.is_empty() {
            return 0;
        }
        if line_ts.is_none() {
            *line_ts = Some(ts);
        }
        let limit = self.limits.max_header_bytes;
        let Some(nl) = input.iter().position(|b| *b == b'\n') else {
            if !*overlong && self.buf.len() + input.len() <= limit {
                self.buf.extend_from_slice(input);
            } else {
                *overlong = true;
                self.buf = Vec::new();
                self.skipped = true;
            }
            return input.len();
        };
        let line = &input[..=nl];
        let first_ts = line_ts.unwrap_or(ts);
        let candidate = !*overlong && self.buf.len() + line.len() <= limit && {
            self.buf.extend_from_slice(line);
            match self.kind {
                Kind::Request => head::is_request_line(&self.buf),
                Kind::Response => head::is_status_line(&self.buf),
            }
        };
        if candidate {
            self.state = State::Head {
                resynced_at: Some(first_ts),
            };
        } else {
            self.buf.clear();
            self.skipped = true;
            self.state = State::Scan {
                line_ts: None,
                overlong: false,
            };
        }
        nl + 1
    }

    fn head(
        &mut self,
        input: &[u8],
        ts: u64,
        ctx: ResponseCtx,
        resynced_at: Option<u64>,
    ) -> Result<(usize, Option<Event>), FramingError> {
        let limits = self.limits;
        let kind = self.kind;
        let buffered = self.buf.len();
        let parsed = accumulate(
            &mut self.buf,
            input,
            limits.max_header_bytes,
            FramingError::HeadTooLarge {
                limit: limits.max_header_bytes,
            },
            |bytes| match kind {
                Kind::Request => head::parse_request_head(bytes, &limits),
                Kind::Response => head::parse_response_head(bytes, &limits, ctx),
            },
        );
        let (consumed, parsed) = match parsed {
            Ok(Acc::Partial(n)) => return Ok((n, None)),
            Ok(Acc::Done(n, parsed)) => (n, parsed),
            // A false start while resynchronizing: scan `input` again from its start. The
            // candidate line itself is consumed, so this always makes progress.
            Err(e) if resynced_at.is_some() && e.protocol().is_none() => {
                self.resync();
                self.skipped = true;
                return Ok((self.scan(input, ts), None));
            }
            Err(e) => return Err(e),
        };
        self.buf.clear();
        let (head, framing) = match parsed {
            ParsedHead::Interim => {
                self.state = State::Idle;
                return Ok((consumed, Some(Event::Interim)));
            }
            ParsedHead::Message { head, framing } => (head, framing),
        };
        let event_ctx = match &head {
            Head::Request(r) => ResponseCtx {
                frame_only: ctx.frame_only,
                ..ResponseCtx::for_method(&r.method)
            },
            Head::Response(_) => ctx,
        };
        let discard = ctx.frame_only;
        let max_body = limits.max_body_bytes as u64;
        let (framing, data, lost) = match framing {
            Framing::Length(n) if n > max_body => (
                BodyFraming::Length(n),
                None,
                Some(FramingError::BodyTooLarge {
                    limit: limits.max_body_bytes,
                }),
            ),
            Framing::Length(n) => (
                BodyFraming::Length(n),
                Some(BytesMut::with_capacity(if discard {
                    0
                } else {
                    capacity(n)
                })),
                None,
            ),
            Framing::Chunked => (
                BodyFraming::Chunk(ChunkPhase::SizeLine),
                Some(BytesMut::new()),
                None,
            ),
            Framing::UntilClose => (BodyFraming::UntilClose, Some(BytesMut::new()), None),
        };
        self.state = State::Body(Box::new(BodyState {
            head,
            framing,
            data,
            lost,
            discard,
            seen: 0,
        }));
        Ok((
            consumed,
            Some(Event::HeadParsed {
                resynced_at,
                ctx: event_ctx,
                head_len: buffered + consumed,
            }),
        ))
    }

    fn body(&mut self, input: &[u8]) -> Result<(usize, Option<Event>), FramingError> {
        let limits = self.limits;
        let State::Body(body) = &mut self.state else {
            return Ok((0, None));
        };
        if let Some(e) = body.lost.take() {
            return Ok((0, Some(Event::Lost(e))));
        }
        let (consumed, complete) = match &mut body.framing {
            BodyFraming::Length(remaining) => {
                let n = bounded(*remaining, input.len());
                *remaining -= n as u64;
                let done = *remaining == 0;
                body.append(&input[..n], limits.max_body_bytes);
                (n, done)
            }
            BodyFraming::UntilClose => {
                body.append(input, limits.max_body_bytes);
                (input.len(), false)
            }
            BodyFraming::Chunk(ChunkPhase::SizeLine) => {
                let limit = limits.max_header_bytes;
                match accumulate(
                    &mut self.buf,
                    input,
                    limit,
                    FramingError::ChunkLineTooLong { limit },
                    head::parse_chunk_line,
                )? {
                    Acc::Partial(n) => (n, false),
                    Acc::Done(n, size) => {
                        self.buf.clear();
                        body.framing = BodyFraming::Chunk(if size == 0 {
                            ChunkPhase::Trailers
                        } else {
                            ChunkPhase::Data(size)
                        });
                        (n, false)
                    }
                }
            }
            BodyFraming::Chunk(ChunkPhase::Data(remaining)) => {
                let n = bounded(*remaining, input.len());
                *remaining -= n as u64;
                if *remaining == 0 {
                    body.framing = BodyFraming::Chunk(ChunkPhase::DataCr);
                }
                body.append(&input[..n], limits.max_body_bytes);
                (n, false)
            }
            BodyFraming::Chunk(phase @ (ChunkPhase::DataCr | ChunkPhase::DataLf)) => {
                match input.first() {
                    None => (0, false),
                    Some(b'\r') if matches!(phase, ChunkPhase::DataCr) => {
                        *phase = ChunkPhase::DataLf;
                        (1, false)
                    }
                    Some(b'\n') if matches!(phase, ChunkPhase::DataLf) => {
                        *phase = ChunkPhase::SizeLine;
                        (1, false)
                    }
                    Some(_) => return Err(FramingError::InvalidChunk),
                }
            }
            BodyFraming::Chunk(ChunkPhase::Trailers) => {
                let limit = limits.max_header_bytes;
                // Trailers are validated and bounded but not kept: Request/Response have
                // no place for them, and replay sends a de-chunked body.
                match accumulate(
                    &mut self.buf,
                    input,
                    limit,
                    FramingError::HeadTooLarge { limit },
                    |bytes| head::parse_trailers(bytes, &limits),
                )? {
                    Acc::Partial(n) => (n, false),
                    Acc::Done(n, _trailers) => {
                        self.buf.clear();
                        (n, true)
                    }
                }
            }
        };
        if let Some(e) = body.lost.take() {
            // Report the loss first; completion is seen on the next call.
            if complete {
                body.framing = BodyFraming::Length(0);
            }
            return Ok((consumed, Some(Event::Lost(e))));
        }
        if complete {
            let State::Body(body) = std::mem::replace(&mut self.state, State::Idle) else {
                return Ok((consumed, None));
            };
            return Ok((consumed, Some(Event::Complete(body.into_message()))));
        }
        Ok((consumed, None))
    }
}

impl BodyState {
    fn append(&mut self, bytes: &[u8], max: usize) {
        if self.discard {
            self.seen = self.seen.saturating_add(bytes.len());
            if self.data.is_some() && self.seen > max {
                self.data = None;
                self.lost = Some(FramingError::BodyTooLarge { limit: max });
            }
            return;
        }
        if let Some(data) = &mut self.data {
            if data.len() + bytes.len() > max {
                // Dropped, not truncated: a partial body would compare as a false diff.
                self.data = None;
                self.lost = Some(FramingError::BodyTooLarge { limit: max });
            } else {
                data.extend_from_slice(bytes);
            }
        }
    }

    fn into_message(self) -> Option<Message> {
        let body = self.data?.freeze();
        Some(match self.head {
            Head::Request(r) => Message::Request(Request { body, ..r }),
            Head::Response(r) => Message::Response(Response { body, ..r }),
        })
    }
}

fn capacity(len: u64) -> usize {
    len.min(INITIAL_BODY_CAPACITY) as usize
}

fn bounded(remaining: u64, available: usize) -> usize {
    usize::try_from(remaining).map_or(available, |r| r.min(available))
}

/// Feed `input` to a bounded buffer until `parse` recognizes a complete item. The fast
/// path parses `input` in place when nothing is buffered; otherwise bytes are appended
/// (never beyond `limit`) and parsing is retried only when a line may have ended.
fn accumulate<T>(
    buf: &mut Vec<u8>,
    input: &[u8],
    limit: usize,
    too_large: FramingError,
    mut parse: impl FnMut(&[u8]) -> Result<Option<(usize, T)>, FramingError>,
) -> Result<Acc<T>, FramingError> {
    if buf.is_empty() {
        if let Some((len, v)) = parse(input)? {
            if len > limit {
                return Err(too_large);
            }
            return Ok(Acc::Done(len, v));
        }
        if input.len() >= limit {
            return Err(too_large);
        }
        buf.extend_from_slice(input);
        return Ok(Acc::Partial(input.len()));
    }
    let old = buf.len();
    let take = input.len().min(limit.saturating_sub(old));
    let fresh = &input[..take];
    buf.extend_from_slice(fresh);
    // Short buffers are always re-parsed so a protocol preface is recognized early.
    if (fresh.contains(&b'\n') || old < 16)
        && let Some((len, v)) = parse(buf)?
    {
        buf.truncate(len);
        return Ok(Acc::Done(len.saturating_sub(old), v));
    }
    if buf.len() >= limit {
        return Err(too_large);
    }
    Ok(Acc::Partial(take))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(kind: Kind, input: &[u8], piece: usize) -> Result<Vec<Message>, FramingError> {
        let mut d = Decoder::new(kind, Limits::default());
        let mut out = Vec::new();
        for chunk in input.chunks(piece.max(1)) {
            let mut rest = chunk;
            loop {
                let step = d.decode(rest, 0, ResponseCtx::default())?;
                rest = &rest[step.consumed..];
                match step.event {
                    Some(Event::Complete(Some(m))) => out.push(m),
                    Some(_) => {}
                    None => break,
                }
            }
        }
        Ok(out)
    }

    #[test]
    fn requests_in_any_piece_size() {
        let input = b"POST /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc\
GET /b HTTP/1.1\r\n\r\n\r\n\
POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nT: 1\r\n\r\n";
        for piece in [1, 2, 3, 7, 64, 4096] {
            let msgs = decode_all(Kind::Request, input, piece)
                .unwrap_or_else(|e| panic!("piece {piece}: {e}"));
            let bodies: Vec<(String, Vec<u8>)> = msgs
                .iter()
                .map(|m| match m {
                    Message::Request(r) => (r.target.clone(), r.body.to_vec()),
                    Message::Response(_) => panic!("response"),
                })
                .collect();
            assert_eq!(
                bodies,
                vec![
                    ("/a".into(), b"abc".to_vec()),
                    ("/b".into(), vec![]),
                    ("/c".into(), b"abcde".to_vec())
                ],
                "piece {piece}"
            );
        }
    }

    /// Feeds `input` and returns the events, in order.
    fn events(d: &mut Decoder, input: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        let mut rest = input;
        loop {
            match d.decode(rest, 0, ResponseCtx::default()) {
                Ok(step) => {
                    rest = &rest[step.consumed..];
                    match step.event {
                        Some(Event::Complete(Some(Message::Request(r)))) => out.push(format!(
                            "complete {} {:?}",
                            r.target,
                            String::from_utf8_lossy(&r.body)
                        )),
                        Some(Event::Complete(m)) => out.push(format!("complete {}", m.is_some())),
                        Some(Event::HeadParsed { resynced_at, .. }) => {
                            out.push(format!("head {resynced_at:?}"))
                        }
                        Some(e) => out.push(format!("{e:?}")),
                        None => return out,
                    }
                }
                Err(e) => {
                    out.push(format!("error {e}"));
                    return out;
                }
            }
        }
    }

    #[test]
    fn gap_inside_length_body_is_bridged() {
        let mut d = Decoder::new(Kind::Request, Limits::default());
        assert_eq!(
            events(&mut d, b"POST /a HTTP/1.1\r\nContent-Length: 10\r\n\r\nab"),
            ["Started", "head None"]
        );
        assert_eq!(d.on_gap(3), GapEffect::Bridged);
        assert_eq!(events(&mut d, b"fghij"), ["complete false"]);
        assert_eq!(
            events(&mut d, b"GET /b HTTP/1.1\r\n\r\n"),
            ["Started", "head None", "complete /b \"\""]
        );
        assert_eq!(
            d.on_gap(3),
            GapEffect::Desync,
            "gap at a boundary: unknown number of messages lost"
        );
    }

    #[test]
    fn scan_resyncs_at_the_next_request_line() {
        let mut d = Decoder::new(Kind::Request, Limits::default());
        assert_eq!(d.on_gap(0), GapEffect::Desync);
        let got = events(&mut d, b"dy bytes\r\nGET /x HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(got, ["head Some(0)", "complete /x \"\""]);
        // A false candidate (request-like line with a broken head) is skipped.
        d.resync();
        let got = events(
            &mut d,
            b"GET /bad HTTP/1.1\r\n: x\r\n\r\nGET /ok HTTP/1.1\r\n\r\n",
        );
        assert_eq!(got, ["head Some(0)", "complete /ok \"\""]);
        // An endless line in scan mode stays bounded.
        d.resync();
        for _ in 0..200 {
            assert!(events(&mut d, &[b'x'; 1024]).is_empty());
            assert!(d.buffered_bytes() <= Limits::default().max_header_bytes);
        }
    }
}
