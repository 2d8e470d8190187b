use super::*;
use bytes::Bytes;
use proptest::prelude::*;
use std::collections::HashMap;

fn flow(n: u16) -> FlowKey {
    FlowKey {
        client: ([10, 0, 0, 1], 40000 + n).into(),
        server: ([10, 0, 0, 2], 80).into(),
    }
}

struct Harness {
    tracker: ExchangeTracker,
    out: Vec<HttpOutput>,
    ts: u64,
    /// Next sequence number per flow and direction: requests start at 1000, responses at
    /// 50_000; each segment acknowledges everything of the other direction fed so far
    /// (a causal capture).
    next: HashMap<(FlowKey, usize), u32>,
}

impl Harness {
    fn new() -> Self {
        Self::with(Limits::default(), 1024)
    }

    fn with(limits: Limits, max_connections: usize) -> Self {
        Self {
            tracker: ExchangeTracker::new(limits, max_connections),
            out: Vec::new(),
            ts: 0,
            next: HashMap::new(),
        }
    }

    /// A tracker that frames `flow(1)` without content (the capture thread's `--sample 0`).
    fn framing_only() -> Self {
        let mut h = Self::new();
        h.tracker = ExchangeTracker::new(Limits::default(), 1024)
            .with_frame_only(FrameOnly::new(|f: &FlowKey| *f == flow(1)));
        h
    }

    /// How many outputs came out as `FramedOnly`.
    fn framed_only(&self) -> usize {
        self.out
            .iter()
            .filter(|o| matches!(o, HttpOutput::FramedOnly(_)))
            .count()
    }

    fn next_seq(&mut self, f: FlowKey, direction: Direction) -> &mut u32 {
        let isn = match direction {
            Direction::ToServer => 1000,
            Direction::ToClient => 50_000,
        };
        self.next.entry((f, direction.index())).or_insert(isn)
    }

    fn feed(&mut self, ev: StreamEvent<'_>) {
        let out = &mut self.out;
        self.tracker.on_event(&ev, &mut |o| out.push(o));
    }

    fn data(&mut self, f: FlowKey, direction: Direction, bytes: &[u8]) -> u64 {
        let ack = *self.next_seq(f, direction.peer());
        let seq = *self.next_seq(f, direction);
        self.data_at(f, direction, seq, Some(ack), bytes)
    }

    /// Bytes at explicit TCP numbers (the direction's position moves past them).
    fn data_at(
        &mut self,
        f: FlowKey,
        direction: Direction,
        seq: u32,
        ack: Option<u32>,
        bytes: &[u8],
    ) -> u64 {
        self.ts += 1000;
        *self.next_seq(f, direction) = seq.wrapping_add(bytes.len() as u32);
        self.feed(StreamEvent::Data {
            flow: f,
            direction,
            ts_ns: self.ts,
            seq,
            ack,
            bytes,
        });
        self.ts
    }

    fn req(&mut self, bytes: &[u8]) -> u64 {
        self.data(flow(1), Direction::ToServer, bytes)
    }

    fn resp(&mut self, bytes: &[u8]) -> u64 {
        self.data(flow(1), Direction::ToClient, bytes)
    }

    fn gap(&mut self, direction: Direction, lost_bytes: u64) {
        self.ts += 1000;
        let next = self.next_seq(flow(1), direction);
        *next = next.wrapping_add(lost_bytes as u32);
        self.feed(StreamEvent::Gap {
            flow: flow(1),
            direction,
            ts_ns: self.ts,
            lost_bytes,
        });
    }

    fn close(&mut self) {
        self.ts += 1000;
        self.feed(StreamEvent::Closed {
            flow: flow(1),
            ts_ns: self.ts,
            reason: CloseReason::Fin,
        });
    }

    fn finish(&mut self) {
        let out = &mut self.out;
        self.tracker.finish(&mut |o| out.push(o));
    }

    /// `METHOD target body -> status body` per exchange, in emission order.
    fn exchanges(&self) -> Vec<String> {
        self.out
            .iter()
            .filter_map(|o| match o {
                HttpOutput::Exchange(e) | HttpOutput::FramedOnly(e) => Some(summary(e)),
                HttpOutput::Dropped { .. } => None,
            })
            .collect()
    }

    fn exchange_list(&self) -> Vec<&Exchange> {
        self.out
            .iter()
            .filter_map(|o| match o {
                HttpOutput::Exchange(e) | HttpOutput::FramedOnly(e) => Some(e),
                HttpOutput::Dropped { .. } => None,
            })
            .collect()
    }

    fn drops(&self) -> Vec<(DropReason, &'static str)> {
        self.out
            .iter()
            .filter_map(|o| match o {
                HttpOutput::Dropped {
                    reason,
                    count,
                    detail,
                    ..
                } => {
                    assert_eq!(*count, 1);
                    Some((*reason, *detail))
                }
                HttpOutput::Exchange(_) | HttpOutput::FramedOnly(_) => None,
            })
            .collect()
    }

    fn drop_reasons(&self) -> Vec<DropReason> {
        self.drops().into_iter().map(|(r, _)| r).collect()
    }

    /// Every request started is reported exactly once or still pending.
    fn check_accounting(&self) {
        let s = self.tracker.stats();
        let reported = self.out.len() as u64;
        assert_eq!(s.exchanges + s.dropped(), reported, "{s:?}");
        assert_eq!(
            s.requests_started,
            reported + self.tracker.pending(),
            "{s:?}"
        );
    }
}

fn summary(e: &Exchange) -> String {
    format!(
        "{} {} {:?} -> {} {:?}",
        e.request.method,
        e.request.target,
        String::from_utf8_lossy(&e.request.body),
        e.response.status,
        String::from_utf8_lossy(&e.response.body)
    )
}

fn ok(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn get(target: &str) -> Vec<u8> {
    format!("GET {target} HTTP/1.1\r\nHost: svc\r\n\r\n").into_bytes()
}

#[test]
fn keep_alive_exchanges_with_timing() {
    let mut h = Harness::new();
    let t1 = h.req(b"POST /a HTTP/1.1\r\nContent-Length: 6\r\n\r\nhel");
    let t2 = h.req(b"lo!");
    let t3 = h.resp(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n");
    let t4 = h.resp(b"ok");
    h.req(&get("/b"));
    h.resp(&ok("second"));
    assert_eq!(
        h.exchanges(),
        [
            "POST /a \"hello!\" -> 201 \"ok\"",
            "GET /b \"\" -> 200 \"second\""
        ]
    );
    let timing = h.exchange_list()[0].timing;
    assert_eq!(
        timing,
        Timing {
            request_first_ns: t1,
            request_last_ns: t2,
            response_first_ns: t3,
            response_last_ns: t4
        }
    );
    assert_eq!(timing.ttfb_ns(), 1000);
    assert_eq!(h.exchange_list()[0].flow, flow(1));
    h.close();
    assert!(h.drops().is_empty());
    h.check_accounting();
}

#[test]
fn pipelined_requests_pair_in_order() {
    let mut h = Harness::new();
    let mut reqs = get("/1");
    reqs.extend(b"POST /2 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n");
    reqs.extend(get("/3"));
    h.req(&reqs);
    assert_eq!(h.tracker.pending(), 3);
    let mut resps = ok("one");
    resps.extend(ok("two"));
    h.resp(&resps);
    h.resp(&ok("three"));
    assert_eq!(
        h.exchanges(),
        [
            "GET /1 \"\" -> 200 \"one\"",
            "POST /2 \"abc\" -> 200 \"two\"",
            "GET /3 \"\" -> 200 \"three\""
        ]
    );
    h.check_accounting();
}

#[test]
fn hundred_continue_is_skipped_not_paired() {
    let mut h = Harness::new();
    h.req(b"PUT /up HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n");
    h.resp(b"HTTP/1.1 100 Continue\r\n\r\n");
    h.req(b"data");
    let t_final = h.resp(b"HTTP/1.1 204 No Content\r\n\r\n");
    assert_eq!(h.exchanges(), ["PUT /up \"data\" -> 204 \"\""]);
    assert_eq!(
        h.exchange_list()[0].timing.response_first_ns,
        t_final,
        "timing of the final response"
    );
    assert_eq!(h.tracker.stats().interim_responses, 1);
    h.check_accounting();
}

#[test]
fn early_response_waits_for_the_request_end() {
    let mut h = Harness::new();
    h.req(b"POST /big HTTP/1.1\r\nContent-Length: 6\r\n\r\nabc");
    h.resp(b"HTTP/1.1 413 Too Large\r\nContent-Length: 0\r\n\r\n");
    assert!(h.exchanges().is_empty());
    h.req(b"def");
    assert_eq!(h.exchanges(), ["POST /big \"abcdef\" -> 413 \"\""]);
}

#[test]
fn head_204_304_responses_have_no_body() {
    let mut h = Harness::new();
    let mut reqs = b"HEAD /h HTTP/1.1\r\n\r\n".to_vec();
    reqs.extend(get("/204"));
    reqs.extend(get("/304"));
    reqs.extend(get("/after"));
    h.req(&reqs);
    let mut resps = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n".to_vec();
    resps.extend(b"HTTP/1.1 204 No Content\r\n\r\n");
    resps.extend(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 50\r\n\r\n");
    resps.extend(ok("x"));
    h.resp(&resps);
    assert_eq!(
        h.exchanges(),
        [
            "HEAD /h \"\" -> 200 \"\"",
            "GET /204 \"\" -> 204 \"\"",
            "GET /304 \"\" -> 304 \"\"",
            "GET /after \"\" -> 200 \"x\""
        ]
    );
}

#[test]
fn chunked_with_extensions_and_trailers_both_ways() {
    let mut h = Harness::new();
    h.req(b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4;a=b\r\nwiki\r\n5\r\npedia\r\n0\r\nExpires: never\r\n\r\n");
    h.resp(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\n\r\n2\r\nok\r\n0\r\nX-T: 1\r\n\r\n");
    assert_eq!(h.exchanges(), ["POST /c \"wikipedia\" -> 200 \"ok\""]);
}

#[test]
fn framing_only_keeps_no_content_and_stays_in_sync() {
    let mut h = Harness::framing_only();
    h.req(b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4;a=b\r\nwi");
    h.req(b"ki\r\n5\r\npedia\r\n0\r\n\r\nPOST /d HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc");
    h.resp(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n");
    h.resp(&ok("second"));
    h.req(&get("/e"));
    h.resp(&ok("third"));
    // Another connection keeps its bodies (the rule is per connection).
    h.data(flow(2), Direction::ToServer, &get("/kept"));
    h.data(flow(2), Direction::ToClient, &ok("body"));
    assert_eq!(
        h.exchanges(),
        [
            "POST /c \"\" -> 200 \"\"",
            "POST /d \"\" -> 200 \"\"",
            "GET /e \"\" -> 200 \"\"",
            "GET /kept \"\" -> 200 \"body\""
        ]
    );
    assert_eq!(h.framed_only(), 3);
    assert_eq!(h.tracker.memory_bytes(), 0, "nothing held between messages");
    h.check_accounting();
}

#[test]
fn framing_only_still_obeys_the_body_limit() {
    let limits = Limits {
        max_header_bytes: 4096,
        max_headers: 32,
        max_body_bytes: 8,
    };
    let mut h = Harness::with(limits, 16);
    h.tracker =
        ExchangeTracker::new(limits, 16).with_frame_only(FrameOnly::new(|_: &FlowKey| true));
    h.req(b"POST /big HTTP/1.1\r\nContent-Length: 20\r\n\r\n01234567890123456789");
    h.resp(&ok("a"));
    h.req(&get("/next"));
    h.resp(&ok("0123456789"));
    h.req(&get("/last"));
    h.resp(&ok("b"));
    // As when bodies are kept: the same outcome whatever the copy.
    assert_eq!(h.exchanges(), ["GET /last \"\" -> 200 \"\""]);
    assert_eq!(
        h.drop_reasons(),
        [DropReason::Oversize, DropReason::Oversize]
    );
    h.check_accounting();
}

#[test]
fn close_delimited_response_completes_at_close() {
    let mut h = Harness::new();
    h.req(b"GET /old HTTP/1.0\r\n\r\n");
    h.resp(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil ");
    h.resp(b"close");
    assert!(h.exchanges().is_empty());
    h.close();
    assert_eq!(h.exchanges(), ["GET /old \"\" -> 200 \"until close\""]);
    assert_eq!(h.exchange_list()[0].timing.response_last_ns, h.ts);
    h.check_accounting();
}

#[test]
fn unanswered_requests_are_unpaired_at_close_and_finish() {
    let mut h = Harness::new();
    h.req(&get("/1"));
    h.req(b"GET /2 HTTP/1.1\r\n");
    h.close();
    assert_eq!(
        h.drop_reasons(),
        [DropReason::Unpaired, DropReason::Unpaired]
    );
    // Closed by the peers: not the capture's end.
    assert_eq!(h.tracker.stats().dropped_at_end, 0);
    h.data(flow(2), Direction::ToServer, &get("/3"));
    h.data(flow(3), Direction::ToServer, &get("/4"));
    assert_eq!(h.tracker.pending(), 2);
    // The capture ends: the reassembler closes one flow, `finish` the other.
    h.feed(StreamEvent::Closed {
        flow: flow(3),
        ts_ns: h.ts,
        reason: CloseReason::EndOfCapture,
    });
    h.finish();
    assert_eq!(h.drop_reasons().len(), 4);
    assert_eq!(h.tracker.stats().dropped_at_end, 2);
    assert_eq!(h.tracker.connections(), 0);
    h.check_accounting();
}

/// One hostile request: returns the harness after feeding it in 1460-byte segments.
fn hostile(limits: Limits, request: &[u8]) -> Harness {
    let mut h = Harness::with(limits, 16);
    for seg in request.chunks(1460) {
        h.req(seg);
        assert!(h.tracker.memory_bytes() <= limits.max_header_bytes + limits.max_body_bytes);
    }
    h
}

#[test]
fn hostile_corpus_is_dropped_with_the_right_reason() {
    let limits = Limits::default();
    let cases: Vec<(&str, Vec<u8>, DropReason)> = vec![
        (
            "CL+TE",
            b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                .to_vec(),
            DropReason::ParseError,
        ),
        (
            "duplicate CL",
            b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd".to_vec(),
            DropReason::ParseError,
        ),
        (
            "obs-fold",
            b"GET / HTTP/1.1\r\nX-A: a\r\n  b\r\n\r\n".to_vec(),
            DropReason::ParseError,
        ),
        (
            "bare LF",
            b"GET / HTTP/1.1\nHost: a\n\n".to_vec(),
            DropReason::ParseError,
        ),
        (
            "invalid chunk size",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0x10\r\n".to_vec(),
            DropReason::ParseError,
        ),
        (
            "chunk size overflow",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n".to_vec(),
            DropReason::ParseError,
        ),
        (
            "space in name",
            b"GET / HTTP/1.1\r\nX A: b\r\n\r\n".to_vec(),
            DropReason::ParseError,
        ),
        (
            "NUL in value",
            b"GET / HTTP/1.1\r\nX: a\0b\r\n\r\n".to_vec(),
            DropReason::ParseError,
        ),
        (
            "garbage",
            b"\x00\x01\x02\x03 binary\r\n\r\n".to_vec(),
            DropReason::ParseError,
        ),
        (
            "1 MiB header line",
            {
                let mut r = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
                r.extend(std::iter::repeat_n(b'a', 1 << 20));
                r
            },
            DropReason::Oversize,
        ),
        (
            "10k headers",
            {
                let mut r = b"GET / HTTP/1.1\r\n".to_vec();
                for i in 0..10_000 {
                    r.extend(format!("X-{i}: v\r\n").as_bytes());
                }
                r
            },
            DropReason::Oversize,
        ),
        (
            "CL over the body limit",
            b"POST / HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\nabc".to_vec(),
            DropReason::Oversize,
        ),
    ];
    for (name, request, reason) in cases {
        let h = hostile(limits, &request);
        assert_eq!(h.drop_reasons(), [reason], "{name}");
        assert_eq!(h.tracker.stats().requests_started, 1, "{name}");
        h.check_accounting();
    }
    let mut big_line = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
    big_line.extend(b"a".repeat(1 << 20));
    let s = hostile(limits, &big_line).tracker.stats().clone();
    assert_eq!(s.oversize_header_bytes, 1, "{s:?}");
    let mut ten_k = b"GET / HTTP/1.1\r\n".to_vec();
    ten_k.extend(b"X: v\r\n".repeat(10_000));
    assert_eq!(
        hostile(limits, &ten_k)
            .tracker
            .stats()
            .oversize_header_count,
        1
    );
}

#[test]
fn never_ending_chunked_body_is_counted_and_bounded() {
    let limits = Limits {
        max_header_bytes: 4096,
        max_headers: 32,
        max_body_bytes: 64 * 1024,
    };
    let mut h = Harness::with(limits, 16);
    h.req(b"POST /stream HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
    let chunk = format!("400\r\n{}\r\n", "z".repeat(0x400));
    let segment = chunk.repeat(16);
    for _ in 0..512 {
        h.req(segment.as_bytes());
        assert!(h.tracker.memory_bytes() <= limits.max_header_bytes + limits.max_body_bytes);
    }
    assert_eq!(
        h.drop_reasons(),
        [DropReason::Oversize],
        "reported once, as soon as it is over"
    );
    assert_eq!(h.tracker.stats().oversize_body, 1);
    // A chunk-size line that never ends is bounded too.
    let mut h = Harness::with(limits, 16);
    h.req(b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1");
    for _ in 0..100 {
        h.req(&[b'0'; 1024]);
    }
    assert_eq!(h.drop_reasons(), [DropReason::ParseError], "17+ hex digits");
    let mut h = Harness::with(limits, 16);
    h.req(b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1;");
    for _ in 0..100 {
        h.req(&[b'e'; 1024]);
        assert!(h.tracker.memory_bytes() <= limits.max_header_bytes);
    }
    assert_eq!(h.drop_reasons(), [DropReason::Oversize]);
    assert_eq!(h.tracker.stats().oversize_header_bytes, 1);
}

#[test]
fn oversize_body_keeps_the_connection_in_sync() {
    let limits = Limits {
        max_header_bytes: 4096,
        max_headers: 32,
        max_body_bytes: 8,
    };
    let mut h = Harness::with(limits, 16);
    h.req(b"POST /big HTTP/1.1\r\nContent-Length: 20\r\n\r\n01234567890123456789");
    h.req(&get("/next"));
    h.resp(&ok("a"));
    h.resp(&ok("0123456789"));
    h.req(&get("/last"));
    h.resp(&ok("b"));
    assert_eq!(h.exchanges(), ["GET /last \"\" -> 200 \"b\""]);
    assert_eq!(
        h.drop_reasons(),
        [DropReason::Oversize, DropReason::Oversize]
    );
    assert_eq!(h.tracker.stats().oversize_body, 2);
    h.check_accounting();
}

#[test]
fn unsupported_protocols_are_detected_and_ignored() {
    type Case = (&'static [u8], Option<&'static [u8]>, Protocol);
    let cases: Vec<Case> = vec![
        (&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01], None, Protocol::Tls),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", None, Protocol::Http2),
        (
            b"CONNECT db:5432 HTTP/1.1\r\nHost: db:5432\r\n\r\n",
            None,
            Protocol::Connect,
        ),
        (
            b"GET /ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            None,
            Protocol::Upgrade,
        ),
        (
            b"GET /x HTTP/1.1\r\n\r\n",
            Some(b"HTTP/1.1 101 Switching Protocols\r\n\r\n"),
            Protocol::Upgrade,
        ),
    ];
    for (request, response, protocol) in cases {
        let mut h = Harness::new();
        for b in request.chunks(1) {
            h.req(b);
        }
        if let Some(response) = response {
            h.resp(response);
        }
        h.req(&get("/ignored"));
        h.resp(&ok("ignored"));
        assert_eq!(h.drop_reasons(), [DropReason::Unsupported], "{protocol}");
        let s = h.tracker.stats();
        let counter = match protocol {
            Protocol::Tls => s.unsupported_tls,
            Protocol::Http2 => s.unsupported_http2,
            Protocol::Connect => s.unsupported_connect,
            Protocol::Upgrade => s.unsupported_upgrade,
            Protocol::TransferCoding => s.unsupported_transfer_coding,
        };
        assert_eq!(counter, 1, "{protocol}");
        h.close();
        h.check_accounting();
    }
}

#[test]
fn gap_inside_request_body_loses_only_that_exchange() {
    let mut h = Harness::new();
    h.req(&get("/1"));
    h.resp(&ok("r1"));
    h.req(b"POST /2 HTTP/1.1\r\nContent-Length: 10\r\n\r\n012");
    h.gap(Direction::ToServer, 4);
    h.req(b"789");
    h.resp(&ok("r2"));
    h.req(&get("/3"));
    h.resp(&ok("r3"));
    assert_eq!(
        h.exchanges(),
        ["GET /1 \"\" -> 200 \"r1\"", "GET /3 \"\" -> 200 \"r3\""]
    );
    assert_eq!(h.drop_reasons(), [DropReason::Gap]);
    assert_eq!(h.tracker.stats().gaps_bridged, 1);
    assert_eq!(h.tracker.stats().desyncs, 0);
    h.check_accounting();
}

#[test]
fn gap_inside_response_body_loses_only_that_exchange() {
    let mut h = Harness::new();
    h.req(&get("/1"));
    h.resp(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n0123");
    h.gap(Direction::ToClient, 10);
    h.resp(b"ef\r\n0\r\n\r\n");
    h.req(&get("/2"));
    h.resp(&ok("r2"));
    // A gap that ends exactly at the end of a Content-Length body.
    h.req(&get("/3"));
    h.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab");
    h.gap(Direction::ToClient, 3);
    h.req(&get("/4"));
    h.resp(&ok("r4"));
    assert_eq!(
        h.exchanges(),
        ["GET /2 \"\" -> 200 \"r2\"", "GET /4 \"\" -> 200 \"r4\""]
    );
    assert_eq!(h.drop_reasons(), [DropReason::Gap, DropReason::Gap]);
    h.check_accounting();
}

#[test]
fn gap_in_a_head_drops_and_resynchronizes() {
    let mut h = Harness::new();
    h.req(&get("/1"));
    h.resp(&ok("r1"));
    h.req(b"GET /2 HTTP/1.1\r\nHo");
    h.gap(Direction::ToServer, 30);
    h.req(b"er: x\r\n\r\n");
    h.resp(&ok("r2"));
    h.req(&get("/3"));
    h.resp(&ok("r3"));
    assert_eq!(
        h.exchanges(),
        ["GET /1 \"\" -> 200 \"r1\"", "GET /3 \"\" -> 200 \"r3\""]
    );
    assert_eq!(h.drop_reasons(), [DropReason::Gap]);
    let s = h.tracker.stats();
    // The response to the damaged request was consumed by its placeholder.
    assert_eq!((s.desyncs, s.resyncs, s.responses_unpaired), (1, 1, 0));
    h.check_accounting();
}

#[test]
fn lost_response_in_a_pipeline_never_mispairs() {
    let mut h = Harness::new();
    let mut reqs = get("/a");
    reqs.extend(get("/b"));
    reqs.extend(get("/c"));
    h.req(&reqs);
    h.resp(&ok("ra"));
    h.gap(Direction::ToClient, ok("rb").len() as u64);
    h.resp(&ok("rc"));
    h.req(&get("/d"));
    h.resp(&ok("rd"));
    // /c's response may have been in the lost bytes (its ACK is before them): dropped
    // with /b, and the response after the loss pairs with nothing. /d's ACK says the
    // client had read every response byte seen: a boundary, and pairing resumes.
    assert_eq!(
        h.exchanges(),
        ["GET /a \"\" -> 200 \"ra\"", "GET /d \"\" -> 200 \"rd\""]
    );
    assert_eq!(h.drop_reasons(), [DropReason::Gap, DropReason::Gap]);
    assert_eq!(h.tracker.stats().responses_unpaired, 1);
    assert_eq!(h.tracker.stats().exchanges_proven, 2);
    h.check_accounting();
}

/// The defect of a one-direction window at attach: the request is seen, its response
/// is not (the response direction starts later), the next response is.
#[test]
fn a_request_whose_response_was_not_captured_is_unpaired_not_shifted() {
    let mut h = Harness::new();
    let f = flow(1);
    h.gap(Direction::ToServer, 0);
    h.gap(Direction::ToClient, 0);
    let (q1, r1) = (get("/1"), ok("one"));
    let (q2, r2) = (get("/2"), ok("two"));
    let (q3, r3) = (get("/3"), ok("three"));
    // /1 sent having read up to 5000; its response (5000..) is never captured.
    h.data_at(f, Direction::ToServer, 100, Some(5000), &q1);
    let after1 = 100 + q1.len() as u32;
    let r2_at = 5000 + r1.len() as u32;
    h.data_at(f, Direction::ToServer, after1, Some(r2_at), &q2);
    let after2 = after1 + q2.len() as u32;
    h.data_at(f, Direction::ToClient, r2_at, Some(after2), &r2);
    let r3_at = r2_at + r2.len() as u32;
    h.data_at(f, Direction::ToServer, after2, Some(r3_at), &q3);
    h.data_at(
        f,
        Direction::ToClient,
        r3_at,
        Some(after2 + q3.len() as u32),
        &r3,
    );
    assert_eq!(
        h.exchanges(),
        ["GET /2 \"\" -> 200 \"two\"", "GET /3 \"\" -> 200 \"three\""]
    );
    assert_eq!(h.drop_reasons(), [DropReason::Unpaired]);
    let s = h.tracker.stats();
    assert_eq!((s.exchanges_proven, s.dropped_at_join), (2, 1));
    h.check_accounting();
}

/// Resumed right after a join, before any response byte: the first response byte seen
/// must be where the request's ACK said, or the request is not paired.
#[test]
fn pairing_resumed_at_a_join_checks_where_the_response_starts() {
    let f = flow(1);
    for (resp_at, paired) in [(5000u32, true), (5200, false)] {
        let mut h = Harness::new();
        h.gap(Direction::ToServer, 0);
        h.gap(Direction::ToClient, 0);
        let q = get("/x");
        h.data_at(f, Direction::ToServer, 100, Some(5000), &q);
        let r = ok("x");
        let end = 100 + q.len() as u32;
        h.data_at(f, Direction::ToClient, resp_at, Some(end), &r);
        assert_eq!(h.exchanges().len(), usize::from(paired), "{resp_at}");
        h.close();
        assert_eq!(h.drops().len(), usize::from(!paired), "{resp_at}");
        h.check_accounting();
    }
}

/// A response to a request sent before the join (its ACK shows the server had not
/// received the request we saw) is skipped; the request gets its own response.
#[test]
fn a_response_to_an_unseen_request_is_skipped_not_paired() {
    let mut h = Harness::new();
    let f = flow(1);
    h.gap(Direction::ToServer, 0);
    h.gap(Direction::ToClient, 0);
    let (old, mine) = (ok("old"), ok("mine"));
    // Pairing resumes at /mine (nothing seen of the response direction yet, its ACK
    // names 5000); the client had pipelined an unseen request before it.
    let q = get("/mine");
    h.data_at(f, Direction::ToServer, 100, Some(5000), &q);
    // The server answers the unseen request first: sent before it received /mine.
    h.data_at(f, Direction::ToClient, 5000, Some(100), &old);
    let end = 100 + q.len() as u32;
    h.data_at(
        f,
        Direction::ToClient,
        5000 + old.len() as u32,
        Some(end),
        &mine,
    );
    assert_eq!(h.exchanges(), ["GET /mine \"\" -> 200 \"mine\""]);
    assert_eq!(h.tracker.stats().responses_unpaired, 1);
    h.check_accounting();
}

/// Joined in the middle of a request's head, with the next request pipelined in the same
/// segment: the first response answers the request whose start was not seen, and the
/// byte ranges cannot tell (the client sent both before reading). The request after the
/// unseen one only holds a place; the next one, sent after reading, is proven.
#[test]
fn a_request_after_the_rest_of_an_unseen_one_is_not_paired_with_its_response() {
    let mut h = Harness::new();
    let f = flow(1);
    h.gap(Direction::ToServer, 0);
    h.gap(Direction::ToClient, 0);
    // `GET /1 HTTP/1.1\r\n` went out before the join.
    let mut seen = b"Host: x\r\nX-Id: 1\r\n\r\n".to_vec();
    seen.extend(get("/2"));
    h.data_at(f, Direction::ToServer, 100, Some(5000), &seen);
    let after2 = 100 + seen.len() as u32;
    let (r1, r2, r3) = (ok("one"), ok("two"), ok("three"));
    let r2_at = 5000 + r1.len() as u32;
    h.data_at(f, Direction::ToClient, 5000, Some(after2), &r1);
    h.data_at(f, Direction::ToClient, r2_at, Some(after2), &r2);
    let r3_at = r2_at + r2.len() as u32;
    let q3 = get("/3");
    h.data_at(f, Direction::ToServer, after2, Some(r3_at), &q3);
    h.data_at(
        f,
        Direction::ToClient,
        r3_at,
        Some(after2 + q3.len() as u32),
        &r3,
    );
    assert_eq!(h.exchanges(), ["GET /3 \"\" -> 200 \"three\""]);
    assert_eq!(h.drop_reasons(), [DropReason::Gap]);
    let s = h.tracker.stats();
    assert_eq!((s.exchanges_proven, s.dropped_at_join), (1, 1));
    h.check_accounting();
}

#[test]
fn mid_stream_join_resyncs_at_the_next_request_line() {
    let mut h = Harness::new();
    h.gap(Direction::ToServer, 0);
    h.gap(Direction::ToClient, 0);
    h.req(b"dy of an earlier upload\r\nmore\r\n");
    h.resp(b"ail of an earlier response body\r\nGET /not-a-request HTTP/1.1\r\n");
    h.req(&get("/next"));
    h.resp(&ok("next"));
    h.req(b"POST /then HTTP/1.1\r\nContent-Length: 1\r\n\r\nz");
    h.resp(&ok("then"));
    // `/next` follows the rest of a request whose start was not seen, whose response may
    // still be the next one: it holds a place (consuming `next`) and is dropped; `/then`
    // starts at a boundary the client had read up to, and is proven.
    assert_eq!(h.exchanges(), ["POST /then \"z\" -> 200 \"then\""]);
    assert_eq!(h.drop_reasons(), [DropReason::Gap]);
    assert_eq!(h.tracker.stats().exchanges_proven, 1);
    h.check_accounting();

    // Joining an idle keep-alive connection costs nothing.
    let mut h = Harness::new();
    h.gap(Direction::ToServer, 0);
    h.gap(Direction::ToClient, 0);
    h.req(&get("/idle"));
    h.resp(&ok("x"));
    assert_eq!(h.exchanges(), ["GET /idle \"\" -> 200 \"x\""]);
}

#[test]
fn join_inside_a_response_waits_for_the_next_boundary() {
    let mut h = Harness::new();
    h.gap(Direction::ToServer, 0);
    h.gap(Direction::ToClient, 0);
    // The response direction resynchronizes on a status line and is mid-body when the
    // next request starts: that request is not trusted.
    h.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01234");
    h.req(&get("/early"));
    h.resp(b"56789");
    h.resp(&ok("early"));
    h.req(&get("/ok"));
    h.resp(&ok("ok"));
    assert_eq!(h.exchanges(), ["GET /ok \"\" -> 200 \"ok\""]);
    assert_eq!(h.drop_reasons(), [DropReason::Gap]);
    h.check_accounting();
}

#[test]
fn response_without_request_desynchronizes() {
    let mut h = Harness::new();
    h.req(&get("/1"));
    h.resp(&ok("r1"));
    h.resp(b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(h.tracker.stats().responses_unpaired, 1);
    h.req(&get("/2"));
    h.resp(&ok("r2"));
    assert_eq!(
        h.exchanges(),
        ["GET /1 \"\" -> 200 \"r1\"", "GET /2 \"\" -> 200 \"r2\""]
    );
    h.check_accounting();
}

#[test]
fn parse_error_then_recovery() {
    let mut h = Harness::new();
    h.req(b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n");
    h.resp(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
    h.req(&get("/good"));
    h.resp(&ok("good"));
    assert_eq!(h.exchanges(), ["GET /good \"\" -> 200 \"good\""]);
    assert_eq!(h.drop_reasons(), [DropReason::ParseError]);
    assert_eq!(h.tracker.stats().parse_errors, 1);
    h.check_accounting();
}

#[test]
fn request_pipelined_after_a_bad_one_is_not_paired_with_its_error() {
    let mut h = Harness::new();
    let mut reqs =
        b"POST /bad HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
            .to_vec();
    reqs.extend(get("/good"));
    h.req(&reqs);
    h.resp(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
    h.resp(&ok("good"));
    assert!(h.exchanges().is_empty(), "{:?}", h.exchanges());
    assert_eq!(h.drop_reasons(), [DropReason::ParseError, DropReason::Gap]);
    h.check_accounting();
}

#[test]
fn pipeline_depth_is_capped() {
    let mut h = Harness::new();
    let reqs = get("/p").repeat(MAX_PENDING + 1);
    h.req(&reqs);
    let s = h.tracker.stats();
    assert_eq!(s.pipeline_overflow, 1);
    assert_eq!(h.drops().len(), MAX_PENDING + 1);
    assert!(h.drop_reasons().iter().all(|r| *r == DropReason::QueueFull));
    h.check_accounting();
}

#[test]
fn connections_are_bounded_by_lru_eviction() {
    let mut h = Harness::with(Limits::default(), 4);
    for n in 0..4 {
        h.data(flow(n), Direction::ToServer, &get("/x"));
    }
    // Touch flow 0 so that flow 1 is the least recently used.
    h.data(flow(0), Direction::ToClient, &ok("0"));
    h.data(flow(9), Direction::ToServer, &get("/new"));
    assert_eq!(h.tracker.connections(), 4);
    assert_eq!(h.tracker.stats().connections_evicted, 1);
    assert_eq!(
        h.drops(),
        [(
            DropReason::Evicted,
            "connection state evicted (max_connections)"
        )]
    );
    match &h.out[1] {
        HttpOutput::Dropped { flow: f, .. } => assert_eq!(*f, flow(1)),
        other => panic!("{other:?}"),
    }
    // The evicted flow comes back mid-stream: treated as joined, no parse error.
    h.data(
        flow(1),
        Direction::ToClient,
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1",
    );
    h.data(flow(1), Direction::ToServer, &get("/again"));
    h.data(flow(1), Direction::ToClient, &ok("again"));
    assert_eq!(h.tracker.stats().parse_errors, 0);
    assert!(
        h.exchanges()
            .contains(&"GET /again \"\" -> 200 \"again\"".to_string())
    );
    h.finish();
    h.check_accounting();
}

// ---- property: chunking and interleaving do not change the result ----

#[derive(Clone, Debug)]
struct Spec {
    method: &'static str,
    req_body: Vec<u8>,
    req_chunked: bool,
    expect_continue: bool,
    status: u16,
    resp_body: Vec<u8>,
    resp_chunked: bool,
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        prop::sample::select(vec!["GET", "POST", "HEAD", "PUT"]),
        prop::collection::vec(any::<u8>(), 0..40),
        any::<bool>(),
        any::<bool>(),
        prop::sample::select(vec![200u16, 201, 204, 304, 404, 500]),
        prop::collection::vec(any::<u8>(), 0..60),
        any::<bool>(),
    )
        .prop_map(
            |(method, req_body, req_chunked, expect_continue, status, resp_body, resp_chunked)| {
                Spec {
                    method,
                    req_body,
                    req_chunked,
                    expect_continue,
                    status,
                    resp_body,
                    resp_chunked,
                }
            },
        )
}

fn chunked(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, piece) in body.chunks(7).enumerate() {
        out.extend(
            format!(
                "{:x}{}\r\n",
                piece.len(),
                if i % 2 == 1 { ";ext=v" } else { "" }
            )
            .as_bytes(),
        );
        out.extend(piece);
        out.extend(b"\r\n");
    }
    out.extend(b"0\r\nX-Trailer: t\r\n\r\n");
    out
}

fn render_request(i: usize, s: &Spec) -> Vec<u8> {
    let mut out = format!("{} /item/{i}?q=1 HTTP/1.1\r\nHost: svc\r\n", s.method).into_bytes();
    if s.expect_continue {
        out.extend(b"Expect: 100-continue\r\n");
    }
    if s.req_chunked {
        out.extend(b"Transfer-Encoding: chunked\r\n\r\n");
        out.extend(chunked(&s.req_body));
    } else {
        out.extend(format!("Content-Length: {}\r\n\r\n", s.req_body.len()).as_bytes());
        out.extend(&s.req_body);
    }
    out
}

fn render_response(s: &Spec) -> Vec<u8> {
    let mut out = Vec::new();
    if s.expect_continue {
        out.extend(b"HTTP/1.1 100 Continue\r\n\r\n");
    }
    out.extend(format!("HTTP/1.1 {} Whatever\r\nServer: legacy\r\n", s.status).as_bytes());
    let bodyless = s.method == "HEAD" || s.status == 204 || s.status == 304;
    if bodyless {
        if s.status != 204 {
            out.extend(format!("Content-Length: {}\r\n", s.resp_body.len()).as_bytes());
        }
        out.extend(b"\r\n");
    } else if s.resp_chunked {
        out.extend(b"Transfer-Encoding: chunked\r\n\r\n");
        out.extend(chunked(&s.resp_body));
    } else {
        out.extend(format!("Content-Length: {}\r\n\r\n", s.resp_body.len()).as_bytes());
        out.extend(&s.resp_body);
    }
    out
}

/// Exchanges without ids and timestamps.
fn comparable(h: &Harness) -> Vec<(FlowKey, Request, Response)> {
    h.exchange_list()
        .into_iter()
        .map(|e| (e.flow, e.request.clone(), e.response.clone()))
        .collect()
}

fn without_content(
    exchanges: Vec<(FlowKey, Request, Response)>,
) -> Vec<(FlowKey, Request, Response)> {
    exchanges
        .into_iter()
        .map(|(f, q, r)| {
            let q = Request {
                body: Bytes::new(),
                ..q
            };
            let r = Response {
                body: Bytes::new(),
                reason: String::new(),
                headers: Vec::new(),
                ..r
            };
            (f, q, r)
        })
        .collect()
}

fn cut(stream: &[u8], mut cuts: Vec<usize>) -> Vec<(usize, usize)> {
    cuts.retain(|c| *c > 0 && *c < stream.len());
    cuts.sort_unstable();
    cuts.dedup();
    let mut pieces = Vec::new();
    let mut start = 0;
    for c in cuts.into_iter().chain(std::iter::once(stream.len())) {
        if c > start {
            pieces.push((start, c));
            start = c;
        }
    }
    pieces
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn any_chunking_yields_the_same_exchanges(
        specs in prop::collection::vec(spec(), 1..6),
        req_cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..30),
        resp_cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..30),
        order in prop::collection::vec(any::<bool>(), 0..80),
    ) {
        let mut requests = Vec::new();
        let mut responses = Vec::new();
        // Causality: response i only after request i was fully sent.
        let mut request_ends = Vec::new();
        let mut response_ends = Vec::new();
        for (i, s) in specs.iter().enumerate() {
            requests.extend(render_request(i, s));
            responses.extend(render_response(s));
            request_ends.push(requests.len());
            response_ends.push(responses.len());
        }

        let mut whole = Harness::new();
        whole.req(&requests);
        whole.resp(&responses);
        whole.close();
        whole.check_accounting();
        prop_assert_eq!(whole.exchanges().len(), specs.len());

        let req_pieces = cut(&requests, req_cuts.iter().map(|i| i.index(requests.len() + 1)).collect());
        let resp_pieces = cut(&responses, resp_cuts.iter().map(|i| i.index(responses.len() + 1)).collect());
        let mut pieced = Harness::new();
        // The same pieces to a framing-only tracker: the same exchanges, without content.
        let mut skipping = Harness::framing_only();
        let (mut qi, mut ri, mut sent) = (0, 0, 0);
        let mut bits = order.iter().copied().cycle();
        while qi < req_pieces.len() || ri < resp_pieces.len() {
            let allowed = ri < resp_pieces.len() && {
                let last_byte = resp_pieces[ri].1 - 1;
                let message = response_ends.iter().position(|end| last_byte < *end).unwrap_or(specs.len() - 1);
                sent >= request_ends[message]
            };
            let prefer_response = bits.next().unwrap_or(false);
            if allowed && (prefer_response || qi == req_pieces.len()) {
                let (a, b) = resp_pieces[ri];
                pieced.resp(&responses[a..b]);
                skipping.resp(&responses[a..b]);
                ri += 1;
            } else {
                let (a, b) = req_pieces[qi];
                pieced.req(&requests[a..b]);
                skipping.req(&requests[a..b]);
                sent = b;
                qi += 1;
            }
        }
        pieced.close();
        pieced.check_accounting();
        prop_assert_eq!(comparable(&pieced), comparable(&whole));
        prop_assert!(pieced.drops().is_empty());
        skipping.close();
        skipping.check_accounting();
        prop_assert_eq!(skipping.framed_only(), specs.len());
        prop_assert_eq!(comparable(&skipping), without_content(comparable(&whole)));
    }
}

#[test]
#[ignore = "throughput measurement; run with --release -- --ignored --nocapture"]
fn framing_throughput() {
    let mut specs = Vec::new();
    for i in 0..2000u32 {
        specs.push(Spec {
            method: if i % 3 == 0 { "POST" } else { "GET" },
            req_body: vec![b'q'; (i % 7 * 100) as usize],
            req_chunked: i % 5 == 0,
            expect_continue: false,
            status: 200,
            resp_body: vec![b'r'; (i % 11 * 300) as usize],
            resp_chunked: i % 4 == 0,
        });
    }
    let conversations: Vec<(Vec<u8>, Vec<u8>)> = specs
        .iter()
        .enumerate()
        .map(|(i, s)| (render_request(i, s), render_response(s)))
        .collect();
    let rounds = 20;
    let mut bytes = 0usize;
    let mut tracker = ExchangeTracker::new(Limits::default(), 1024);
    let mut exchanges = 0u64;
    let start = std::time::Instant::now();
    for round in 0..rounds {
        let f = flow(round);
        for (n, (req, resp)) in conversations.iter().enumerate() {
            let ts = n as u64;
            for seg in req.chunks(1448) {
                tracker.on_event(
                    &StreamEvent::Data {
                        flow: f,
                        direction: Direction::ToServer,
                        ts_ns: ts,
                        seq: 0,
                        ack: None,
                        bytes: seg,
                    },
                    &mut |_| {},
                );
            }
            for seg in resp.chunks(1448) {
                tracker.on_event(
                    &StreamEvent::Data {
                        flow: f,
                        direction: Direction::ToClient,
                        ts_ns: ts,
                        seq: 0,
                        ack: None,
                        bytes: seg,
                    },
                    &mut |o| {
                        if matches!(o, HttpOutput::Exchange(_)) {
                            exchanges += 1;
                        }
                    },
                );
            }
            bytes += req.len() + resp.len();
        }
    }
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(exchanges, (rounds as u64) * specs.len() as u64);
    println!(
        "framing_throughput: {:.1} MB/s, {:.0} exchanges/s ({} exchanges, {} bytes, {:.3} s)",
        bytes as f64 / secs / 1e6,
        exchanges as f64 / secs,
        exchanges,
        bytes,
        secs
    );
}

#[test]
fn bytes_held_across_connections_are_bounded_by_the_budget() {
    let mut h = Harness::new();
    h.tracker = ExchangeTracker::new(Limits::default(), 1024).with_budget(3000);
    let head = |n: usize| format!("POST /up HTTP/1.1\r\nContent-Length: {n}\r\n\r\n");
    // Two uploads in progress: 2 × 1000 body bytes held, within the budget.
    for n in 0..2 {
        h.data(flow(n), Direction::ToServer, head(1500).as_bytes());
        h.data(flow(n), Direction::ToServer, &[b'a'; 1000]);
    }
    assert_eq!(h.tracker.memory_bytes(), 2000);
    assert!(h.drops().is_empty());
    // A third takes the total over: that connection's state goes, counted.
    h.data(flow(2), Direction::ToServer, head(1500).as_bytes());
    h.data(flow(2), Direction::ToServer, &[b'a'; 1200]);
    assert_eq!(
        h.drops(),
        [(
            DropReason::Evicted,
            "connection state evicted (tracker memory budget)"
        )]
    );
    assert_eq!(h.tracker.stats().connections_evicted_budget, 1);
    assert_eq!(h.tracker.memory_bytes(), 2000);
    // The others complete normally, and the bytes they held are released.
    for n in 0..2 {
        h.data(flow(n), Direction::ToServer, &[b'a'; 500]);
        h.data(flow(n), Direction::ToClient, &ok("done"));
    }
    assert_eq!(h.exchanges().len(), 2);
    assert_eq!(h.tracker.memory_bytes(), 0);
    h.finish();
    h.check_accounting();
}

#[test]
fn an_idle_keep_alive_connection_holds_no_queue() {
    let mut h = Harness::new();
    h.req(&get("/a"));
    h.data(flow(1), Direction::ToClient, &ok("a"));
    let conn = h.tracker.conns.get(&flow(1)).expect("open connection");
    assert_eq!(conn.queue.capacity(), 0);
    assert_eq!(h.tracker.memory_bytes(), 0);
}

#[test]
fn request_queues_are_reused_and_the_spares_stay_bounded() {
    let mut h = Harness::new();
    // Many keep-alive connections, each with an exchange in progress: each holds a queue.
    let conns = SPARE_QUEUES as u16 + 10;
    for n in 0..conns {
        h.data(flow(n), Direction::ToServer, &get("/a"));
    }
    assert_eq!(h.tracker.spare_queues.len(), 0);
    for n in 0..conns {
        h.data(flow(n), Direction::ToClient, &ok("a"));
        assert_eq!(
            h.tracker.conns[&flow(n)].queue.capacity(),
            0,
            "an idle connection keeps its queue"
        );
    }
    assert_eq!(h.exchanges().len(), conns as usize);
    // The emptied queues were kept for reuse, at most SPARE_QUEUES of them.
    assert_eq!(h.tracker.spare_queues.len(), SPARE_QUEUES);
    // The next request takes a spare instead of allocating; its end gives it back.
    h.data(flow(0), Direction::ToServer, &get("/b"));
    assert_eq!(h.tracker.spare_queues.len(), SPARE_QUEUES - 1);
    assert!(h.tracker.conns[&flow(0)].queue.capacity() > 0);
    h.data(flow(0), Direction::ToClient, &ok("b"));
    assert_eq!(h.tracker.spare_queues.len(), SPARE_QUEUES);
    assert_eq!(h.tracker.memory_bytes(), 0);
    h.finish();
    h.check_accounting();
}

#[test]
fn a_spare_pool_keeps_at_most_its_bound() {
    let mut p = SparePool::new(2);
    assert!(p.give(1));
    assert!(p.give(2));
    assert!(!p.give(3), "a full pool drops what it is given");
    assert_eq!(p.len(), 2);
    assert_eq!(p.take(), Some(2));
    assert_eq!(p.take(), Some(1));
    assert_eq!(p.take(), None);
}
