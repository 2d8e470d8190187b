//! Entry point for a cargo-fuzz target over the whole http stage.
//!
//! Panics (by `assert!`) when an invariant breaks: that is how a fuzzer reports.
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::capture::{Direction, FlowKey};
use crate::reassembly::{CloseReason, StreamEvent};

use super::error::{FramingError, Limits};
use super::reader::{ReadProgress, ResponseReader};
use super::tracker::{ExchangeTracker, HttpOutput, MAX_PENDING};

/// Small limits so that the bounds are reached by small inputs.
const FUZZ_LIMITS: Limits = Limits {
    max_header_bytes: 512,
    max_headers: 8,
    max_body_bytes: 2048,
};

/// Splits `data` into a request and a response direction (at the first `0xff 0xfe`
/// marker, else at a pseudo-random point), feeds both to an [`ExchangeTracker`] in
/// pseudo-random pieces and interleavings, sometimes with gaps, and the response
/// direction to a [`ResponseReader`] whole and in pieces. Checks: no panic, memory within
/// the limits, every request started reported exactly once, the reader independent of
/// the chunking.
pub fn fuzz_framing(data: &[u8]) {
    let seed = data
        .iter()
        .take(8)
        .fold(0u64, |acc, b| acc.rotate_left(8) ^ u64::from(*b));
    let mut rng = StdRng::seed_from_u64(seed);
    let split = data
        .windows(2)
        .position(|w| w == [0xff, 0xfe])
        .map_or_else(|| (rng.gen_range(0..=data.len()), 0), |p| (p, 2));
    let requests = &data[..split.0];
    let responses = data.get(split.0 + split.1..).unwrap_or_default();

    check_tracker(requests, responses, &mut rng);
    check_reader(responses, &mut rng);
}

fn check_tracker(requests: &[u8], responses: &[u8], rng: &mut StdRng) {
    let flow = FlowKey {
        client: ([10, 0, 0, 1], 1234).into(),
        server: ([10, 0, 0, 2], 80).into(),
    };
    let mut tracker = ExchangeTracker::new(FUZZ_LIMITS, 4);
    let mut reported = 0u64;
    let per_message = FUZZ_LIMITS.max_header_bytes + FUZZ_LIMITS.max_body_bytes;
    let bound = 2 * (MAX_PENDING + 1) * 2 * per_message;
    let mut ts = 0u64;
    let (mut qi, mut ri) = (0usize, 0usize);
    if rng.gen_ratio(1, 8) {
        for direction in [Direction::ToServer, Direction::ToClient] {
            let ev = StreamEvent::Gap {
                flow,
                direction,
                ts_ns: ts,
                lost_bytes: 0,
            };
            tracker.on_event(&ev, &mut |_| reported += 1);
        }
    }
    while qi < requests.len() || ri < responses.len() {
        ts += 1;
        let to_server = ri >= responses.len() || (qi < requests.len() && rng.gen_bool(0.5));
        // Consistent TCP numbers: each direction's stream offset, acknowledging how far
        // the other one has come.
        let peer_pos = if to_server { ri } else { qi } as u32;
        let (stream, pos, direction) = if to_server {
            (requests, &mut qi, Direction::ToServer)
        } else {
            (responses, &mut ri, Direction::ToClient)
        };
        let n = rng.gen_range(1..=(stream.len() - *pos).min(300));
        if rng.gen_ratio(1, 40) {
            let ev = StreamEvent::Gap {
                flow,
                direction,
                ts_ns: ts,
                lost_bytes: n as u64,
            };
            tracker.on_event(&ev, &mut |_| reported += 1);
        } else {
            let ev = StreamEvent::Data {
                flow,
                direction,
                ts_ns: ts,
                seq: *pos as u32,
                ack: Some(peer_pos),
                bytes: &stream[*pos..*pos + n],
            };
            tracker.on_event(&ev, &mut |_| reported += 1);
        }
        *pos += n;
        assert!(
            tracker.memory_bytes() <= bound,
            "memory {} over {bound}",
            tracker.memory_bytes()
        );
        let s = tracker.stats();
        assert_eq!(
            s.exchanges + s.dropped(),
            reported,
            "every output is counted"
        );
        assert_eq!(
            s.requests_started,
            reported + tracker.pending(),
            "no request unaccounted"
        );
    }
    if rng.gen_bool(0.5) {
        let ev = StreamEvent::Closed {
            flow,
            ts_ns: ts + 1,
            reason: CloseReason::Fin,
        };
        tracker.on_event(&ev, &mut |_| reported += 1);
    }
    tracker.finish(&mut |o: HttpOutput| {
        if let HttpOutput::Dropped { count, .. } = o {
            assert_eq!(count, 1);
        }
        reported += 1;
    });
    let s = tracker.stats();
    assert_eq!(tracker.pending(), 0);
    assert_eq!(
        s.requests_started,
        s.exchanges + s.dropped(),
        "exchanges + drops == requests started"
    );
    assert_eq!(s.requests_started, reported);
}

fn check_reader(responses: &[u8], rng: &mut StdRng) {
    let method = ["GET", "HEAD", "POST", "CONNECT"][rng.gen_range(0..4)];
    let whole = read(method, std::iter::once(responses));
    let mut pieces = Vec::new();
    let mut pos = 0;
    while pos < responses.len() {
        let n = rng.gen_range(1..=(responses.len() - pos).min(64));
        pieces.push(&responses[pos..pos + n]);
        pos += n;
    }
    let pieced = read(method, pieces.into_iter());
    match (&whole, &pieced) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "the response does not depend on the chunking"),
        // Bytes after the response: reported by the push that carries them.
        (Err(FramingError::TrailingData { .. }), _)
        | (_, Err(FramingError::TrailingData { .. })) => {}
        (Err(_), Err(_)) => {}
        _ => panic!("chunking changed the outcome: {whole:?} vs {pieced:?}"),
    }
}

fn read<'a>(
    method: &str,
    pieces: impl Iterator<Item = &'a [u8]>,
) -> Result<super::Response, FramingError> {
    let mut reader = ResponseReader::new(method, FUZZ_LIMITS);
    let mut done = None;
    for piece in pieces {
        match reader.push(piece)? {
            ReadProgress::NeedMore => {}
            ReadProgress::Complete(r) if done.is_none() => done = Some(r),
            ReadProgress::Complete(_) => panic!("two final responses from one reader"),
        }
    }
    match done {
        Some(r) => Ok(r),
        None => reader.finish(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEEDS: &[&[u8]] = &[
        b"GET / HTTP/1.1\r\n\r\nPOST /p HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;x\r\nabc\r\n0\r\nT: v\r\n\r\n\xff\xfeHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n",
        b"HEAD / HTTP/1.1\r\n\r\nGET /a HTTP/1.0\r\n\r\n\xff\xfeHTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nHTTP/1.0 200 OK\r\n\r\nuntil close",
        b"\x16\x03\x01\x00\x05hello\xff\xfe\x16\x03\x03",
        b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxx\xff\xfeHTTP/1.1 400 Bad\r\n\r\n",
    ];

    /// Smoke run of the fuzz entry over seeds and seeded mutations of them.
    #[test]
    fn fuzz_framing_smoke() {
        let mut rng = StdRng::seed_from_u64(7);
        for seed in SEEDS {
            fuzz_framing(seed);
            for _ in 0..300 {
                let mut data = seed.to_vec();
                for _ in 0..rng.gen_range(1..6) {
                    let i = rng.gen_range(0..data.len());
                    match rng.gen_range(0..4) {
                        0 => data[i] = rng.r#gen(),
                        1 => {
                            data.remove(i);
                        }
                        2 => data.insert(i, [b'\r', b'\n', b' ', b'0', b';'][rng.gen_range(0..5)]),
                        _ => {
                            let j = rng.gen_range(i..data.len());
                            let copy = data[i..j].to_vec();
                            data.splice(i..i, copy);
                        }
                    }
                    if data.is_empty() {
                        data.push(b'G');
                    }
                }
                fuzz_framing(&data);
            }
        }
        fuzz_framing(&[]);
        fuzz_framing(&[0xff, 0xfe]);
    }
}
