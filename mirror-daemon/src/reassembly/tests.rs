use std::net::{Ipv4Addr, SocketAddr};

use proptest::prelude::*;

use super::flow::Flow;
use super::*;
use crate::capture::TcpFlags;

const SYN: u8 = TcpFlags::SYN;
const ACK: u8 = TcpFlags::ACK;
const FIN: u8 = TcpFlags::FIN | TcpFlags::ACK;
const RST: u8 = TcpFlags::RST;
const MS: u64 = 1_000_000;
const S: Direction = Direction::ToServer;
const C: Direction = Direction::ToClient;
/// Buffer accounting per chunk besides its payload.
const O: usize = BUFFER_CHUNK_OVERHEAD;

fn key(port: u16) -> FlowKey {
    FlowKey {
        client: SocketAddr::from((Ipv4Addr::new(10, 0, 0, 1), port)),
        server: SocketAddr::from((Ipv4Addr::new(10, 0, 0, 2), 80)),
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Ev {
    Data(FlowKey, Direction, Vec<u8>),
    Gap(FlowKey, Direction, u64),
    Closed(FlowKey, CloseReason),
}

fn record(events: &mut Vec<Ev>) -> impl FnMut(StreamEvent<'_>) + '_ {
    |e| {
        events.push(match e {
            StreamEvent::Data {
                flow,
                direction,
                bytes,
                ..
            } => Ev::Data(flow, direction, bytes.to_vec()),
            StreamEvent::Gap {
                flow,
                direction,
                lost_bytes,
                ..
            } => Ev::Gap(flow, direction, lost_bytes),
            StreamEvent::Closed { flow, reason, .. } => Ev::Closed(flow, reason),
        })
    }
}

/// One reassembler and everything it emitted.
struct H {
    r: Reassembler,
    ev: Vec<Ev>,
}

impl H {
    fn new() -> Self {
        Self::with(ReassemblyConfig::default())
    }
    fn with(cfg: ReassemblyConfig) -> Self {
        Self {
            r: Reassembler::new(cfg),
            ev: Vec::new(),
        }
    }
    fn seg(&mut self, k: FlowKey, dir: Direction, seq: u32, flags: u8, ts: u64, payload: &[u8]) {
        let s = Segment {
            flow: k,
            direction: dir,
            seq,
            ack: 0,
            // These tests are about one direction at a time: no ACK number to act on
            // (peer-acknowledged holes have their own tests).
            flags: TcpFlags(if flags & SYN != 0 {
                flags
            } else {
                flags & !ACK
            }),
            ts_ns: ts,
            payload,
        };
        self.r.process(&s, &mut record(&mut self.ev));
    }
    /// Shorthand on flow `key(1)`.
    fn send(&mut self, dir: Direction, seq: u32, flags: u8, ts: u64, payload: &[u8]) {
        self.seg(key(1), dir, seq, flags, ts, payload);
    }
    /// SYN / SYN-ACK on flow `key(1)`: client ISN `cs`, server ISN `ss`.
    fn handshake(&mut self, cs: u32, ss: u32) {
        self.send(S, cs, SYN, 0, b"");
        self.send(C, ss, SYN | ACK, 0, b"");
    }
    fn expire(&mut self, now: u64) {
        self.r.expire(now, &mut record(&mut self.ev));
    }
    fn finish(&mut self) {
        self.r.finish(&mut record(&mut self.ev));
    }
    fn data(&self, k: FlowKey, dir: Direction) -> Vec<u8> {
        let mut v = Vec::new();
        for e in &self.ev {
            if let Ev::Data(f, d, b) = e
                && *f == k
                && *d == dir
            {
                v.extend_from_slice(b);
            }
        }
        v
    }
    fn gaps(&self, k: FlowKey, dir: Direction) -> Vec<u64> {
        self.ev
            .iter()
            .filter_map(|e| match e {
                Ev::Gap(f, d, n) if *f == k && *d == dir => Some(*n),
                _ => None,
            })
            .collect()
    }
    fn closed(&self) -> Vec<(FlowKey, CloseReason)> {
        self.ev
            .iter()
            .filter_map(|e| match e {
                Ev::Closed(f, r) => Some((*f, *r)),
                _ => None,
            })
            .collect()
    }
}

#[test]
fn in_order_data_is_delivered_without_copy() {
    let mut r = Reassembler::new(ReassemblyConfig::default());
    let mut seen = Vec::new();
    let payload = b"GET / HTTP/1.1\r\n\r\n".to_vec();
    let syn = Segment {
        flow: key(1),
        direction: S,
        seq: 99,
        ack: 0,
        flags: TcpFlags(SYN),
        ts_ns: 0,
        payload: b"",
    };
    let data = Segment {
        seq: 100,
        flags: TcpFlags(ACK),
        payload: &payload,
        ..syn
    };
    let mut out = |e: StreamEvent<'_>| {
        if let StreamEvent::Data { bytes, .. } = e {
            seen.push((bytes.as_ptr(), bytes.len()));
        }
    };
    r.process(&syn, &mut out);
    r.process(&data, &mut out);
    assert_eq!(
        seen,
        vec![(payload.as_ptr(), payload.len())],
        "must borrow the segment's payload"
    );
    assert_eq!(r.stats().delivered_bytes, payload.len() as u64);
    assert_eq!(r.buffered_bytes(), 0);
}

#[test]
fn both_directions_in_order() {
    let mut h = H::new();
    h.handshake(1000, 5000);
    h.send(S, 1001, ACK, 1, b"hello ");
    h.send(S, 1007, ACK, 2, b"world");
    h.send(C, 5001, ACK, 3, b"hi");
    assert_eq!(h.data(key(1), S), b"hello world");
    assert_eq!(h.data(key(1), C), b"hi");
    assert!(h.gaps(key(1), S).is_empty() && h.gaps(key(1), C).is_empty());
}

#[test]
fn out_of_order_is_buffered_until_the_hole_fills() {
    let mut h = H::new();
    h.handshake(0, 0);
    h.send(S, 7, ACK, 1, b"ccc");
    h.send(S, 4, ACK, 2, b"bbb");
    assert!(h.data(key(1), S).is_empty());
    assert_eq!(h.r.buffered_bytes(), 6 + 2 * O);
    h.send(S, 1, ACK, 3, b"aaa");
    assert_eq!(h.data(key(1), S), b"aaabbbccc");
    assert_eq!(h.r.buffered_bytes(), 0);
    assert_eq!(h.r.stats().out_of_order_segments, 2);
    assert!(h.gaps(key(1), S).is_empty());
}

#[test]
fn retransmissions_are_delivered_once() {
    let mut h = H::new();
    h.handshake(0, 0);
    h.send(S, 1, ACK, 1, b"abc");
    h.send(S, 1, ACK, 2, b"abc");
    h.send(S, 7, ACK, 3, b"ghi");
    h.send(S, 7, ACK, 4, b"ghi"); // duplicate of a buffered segment
    h.send(S, 4, ACK, 5, b"def");
    assert_eq!(h.data(key(1), S), b"abcdefghi");
    assert_eq!(h.r.stats().retransmitted_segments, 2);
    assert_eq!(h.r.stats().retransmitted_bytes, 6);
}

#[test]
fn partial_overlaps_are_trimmed() {
    let mut h = H::new();
    h.handshake(0, 0);
    h.send(S, 1, ACK, 1, b"abcdef");
    h.send(S, 4, ACK, 2, b"defghi"); // 3 old bytes, 3 new
    // Out of order and overlapping each other and the next in-order segment.
    h.send(S, 16, ACK, 3, b"pqrs");
    h.send(S, 13, ACK, 4, b"mnopqrstu");
    h.send(S, 10, ACK, 5, b"jklmn");
    assert_eq!(h.data(key(1), S), b"abcdefghijklmnopqrstu");
    assert_eq!(h.r.stats().delivered_bytes, 21);
    assert_eq!(h.r.stats().overlap_bytes, 3 + 4 + 2);
    assert_eq!(h.r.buffered_bytes(), 0);
}

#[test]
fn in_order_segment_covering_buffered_chunks() {
    let mut h = H::new();
    h.handshake(0, 0);
    h.send(S, 5, ACK, 1, b"ef");
    h.send(S, 9, ACK, 2, b"ijkl");
    h.send(S, 1, ACK, 3, b"abcdefghij");
    assert_eq!(h.data(key(1), S), b"abcdefghijkl");
    assert_eq!(h.r.buffered_bytes(), 0);
}

#[test]
fn sequence_numbers_wrap_around() {
    let mut h = H::new();
    let isn = u32::MAX - 3; // data starts at 2^32 - 3 and crosses zero
    h.handshake(isn, u32::MAX);
    h.send(S, 3, ACK, 1, b"ghij"); // after the wrap, out of order
    h.send(S, isn.wrapping_add(1), ACK, 2, b"abcdef");
    h.send(S, isn.wrapping_add(1), ACK, 3, b"abc"); // retransmit from before the wrap
    h.send(C, 0, ACK, 4, b"xyz"); // SYN-ACK took u32::MAX, data starts at 0
    assert_eq!(h.data(key(1), S), b"abcdefghij");
    assert_eq!(h.data(key(1), C), b"xyz");
    assert!(h.gaps(key(1), S).is_empty());
    h.send(S, 7, FIN, 5, b"");
    h.send(C, 3, FIN, 6, b"");
    assert_eq!(h.closed(), vec![(key(1), CloseReason::Fin)]);
}

#[test]
fn mid_stream_join_emits_gap_zero_before_data() {
    let mut h = H::new();
    h.send(C, 777, ACK, 1, b"tail of a response");
    h.send(S, 123, ACK, 2, b"GET /");
    h.send(S, 128, ACK, 3, b" HTTP/1.1");
    assert_eq!(
        h.ev,
        vec![
            // Both directions are joined with the flow's first segment, before any data.
            Ev::Gap(key(1), C, 0),
            Ev::Gap(key(1), S, 0),
            Ev::Data(key(1), C, b"tail of a response".to_vec()),
            Ev::Data(key(1), S, b"GET /".to_vec()),
            Ev::Data(key(1), S, b" HTTP/1.1".to_vec()),
        ]
    );
    assert_eq!(h.r.stats().gaps_midstream_join, 2);
}

#[test]
fn handshake_gives_no_gap_zero() {
    let mut h = H::new();
    h.handshake(10, 20);
    h.send(S, 11, ACK, 1, b"x");
    assert_eq!(h.ev, vec![Ev::Data(key(1), S, b"x".to_vec())]);
}

#[test]
fn pure_acks_and_stray_rst_do_not_open_flows() {
    let mut h = H::new();
    h.send(S, 1, ACK, 1, b"");
    h.send(C, 1, RST, 1, b"");
    h.send(C, 1, FIN, 1, b"");
    assert_eq!(h.r.open_flows(), 0);
    assert!(h.ev.is_empty());
    assert_eq!(h.r.stats().segments_unknown_flow, 3);
}

#[test]
fn fin_in_both_directions_closes_and_removes_the_flow() {
    let mut h = H::new();
    h.handshake(0, 0);
    h.send(S, 1, ACK, 1, b"req");
    h.send(S, 4, FIN, 2, b"");
    assert!(h.closed().is_empty(), "half-close keeps the flow");
    h.send(C, 1, FIN, 3, b"resp"); // data and FIN together
    assert_eq!(h.data(key(1), C), b"resp");
    assert_eq!(h.closed(), vec![(key(1), CloseReason::Fin)]);
    assert!(matches!(h.ev.last(), Some(Ev::Closed(..))));
    assert_eq!(h.r.open_flows(), 0);
    assert_eq!(h.r.stats().flows_closed_fin, 1);
    // The final ACK must not resurrect it.
    h.send(S, 5, ACK, 4, b"");
    assert_eq!(h.r.open_flows(), 0);
}

#[test]
fn fin_waits_for_data_before_it() {
    let mut h = H::new();
    h.handshake(0, 0);
    h.send(C, 1, FIN, 1, b"");
    h.send(S, 4, FIN, 2, b"def"); // FIN arrives before the bytes before it
    assert!(h.closed().is_empty());
    h.send(S, 1, ACK, 3, b"abc");
    assert_eq!(h.data(key(1), S), b"abcdef");
    assert_eq!(h.closed(), vec![(key(1), CloseReason::Fin)]);
}

#[test]
fn missing_bytes_before_fin_become_a_gap_after_the_reorder_timeout() {
    let mut h = H::new();
    h.handshake(0, 0);
    h.send(C, 1, FIN, 0, b"");
    h.send(S, 1, ACK, 0, b"ab");
    h.send(S, 8, FIN, 10 * MS, b""); // bytes 3..8 never arrive
    h.expire(500 * MS);
    assert!(h.closed().is_empty());
    h.expire(10 * MS + h.r.config().reorder_timeout_ns);
    assert_eq!(h.gaps(key(1), S), vec![5]);
    assert_eq!(h.closed(), vec![(key(1), CloseReason::Fin)]);
}

#[test]
fn data_after_fin_is_dropped() {
    let mut h = H::new();
    h.handshake(0, 0);
    h.send(S, 1, FIN, 1, b"ab");
    h.send(S, 3, ACK, 2, b"zz");
    assert_eq!(h.data(key(1), S), b"ab");
    assert_eq!(h.r.stats().bytes_after_fin, 2);
}

#[test]
fn rst_delivers_contiguous_then_gap_then_closes() {
    let mut h = H::new();
    h.handshake(0, 0);
    h.send(S, 1, ACK, 1, b"abc");
    h.send(S, 10, ACK, 2, b"jk"); // bytes 4..10 missing
    h.send(C, 1, RST, 3, b"");
    assert_eq!(
        h.ev,
        vec![
            Ev::Data(key(1), S, b"abc".to_vec()),
            Ev::Gap(key(1), S, 6),
            Ev::Data(key(1), S, b"jk".to_vec()),
            Ev::Closed(key(1), CloseReason::Reset),
        ]
    );
    assert_eq!(h.r.open_flows(), 0);
    assert_eq!(h.r.buffered_bytes(), 0);
    assert_eq!(h.r.stats().flows_closed_reset, 1);
    assert_eq!(h.r.stats().lost_bytes_at_close, 6);
}

#[test]
fn hole_becomes_gap_on_expire_after_reorder_timeout() {
    let mut h = H::new();
    let t = h.r.config().reorder_timeout_ns;
    h.handshake(0, 0);
    h.send(S, 1, ACK, 0, b"a");
    h.send(S, 5, ACK, 100, b"efg");
    h.expire(100 + t - 1);
    assert!(h.gaps(key(1), S).is_empty());
    h.expire(100 + t);
    assert_eq!(h.gaps(key(1), S), vec![3]);
    assert_eq!(h.data(key(1), S), b"aefg");
    assert_eq!(h.r.buffered_bytes(), 0);
    // Delivery resumes after the gap; the late bytes are old now.
    h.send(S, 2, ACK, 100 + t + 1, b"bcd");
    h.send(S, 8, ACK, 100 + t + 2, b"h");
    assert_eq!(h.data(key(1), S), b"aefgh");
    assert_eq!(h.r.stats().gaps_reorder_timeout, 1);
    assert_eq!(h.r.stats().lost_bytes_reorder_timeout, 3);
}

#[test]
fn hole_becomes_gap_when_a_later_segment_shows_time_has_passed() {
    let mut h = H::new();
    let t = h.r.config().reorder_timeout_ns;
    h.handshake(0, 0);
    h.send(S, 3, ACK, 0, b"cd"); // bytes 1..3 missing
    h.send(S, 5, ACK, t / 2, b"ef");
    assert!(h.gaps(key(1), S).is_empty());
    h.send(C, 1, ACK, t, b"x"); // either direction advances the flow's clock
    assert_eq!(h.gaps(key(1), S), vec![2]);
    assert_eq!(h.data(key(1), S), b"cdef");
}

/// Sends a segment with an explicit ACK number on flow `key(1)`.
fn acked(h: &mut H, dir: Direction, seq: u32, ack: u32, ts: u64, payload: &[u8]) {
    let s = Segment {
        flow: key(1),
        direction: dir,
        seq,
        ack,
        flags: TcpFlags(ACK),
        ts_ns: ts,
        payload,
    };
    h.r.process(&s, &mut record(&mut h.ev));
}

#[test]
fn a_hole_the_peer_acknowledged_is_lost_at_once_before_the_acking_bytes() {
    let mut h = H::new();
    h.handshake(0, 100);
    acked(&mut h, S, 1, 101, 0, b"ab");
    acked(&mut h, S, 6, 101, 1, b"fg"); // 3..6 missing, buffered behind the hole
    assert!(h.gaps(key(1), S).is_empty());
    // The server acknowledges up to 8: it has bytes 3..6, the capture never will.
    acked(&mut h, C, 101, 8, 2, b"resp");
    assert_eq!(h.gaps(key(1), S), vec![3]);
    assert_eq!(h.data(key(1), S), b"abfg");
    // The request's loss comes before the response bytes that acknowledged it.
    let gap_at =
        h.ev.iter()
            .position(|e| matches!(e, Ev::Gap(_, d, 3) if *d == S));
    let resp_at =
        h.ev.iter()
            .position(|e| matches!(e, Ev::Data(_, d, _) if *d == C));
    assert!(gap_at < resp_at, "{:?}", h.ev);
    assert_eq!(h.r.stats().gaps_peer_acked, 1);
    assert_eq!(h.r.stats().lost_bytes_peer_acked, 3);
    assert_eq!(h.r.buffered_bytes(), 0);
}

#[test]
fn a_tail_the_peer_acknowledged_is_lost_and_holes_keep_their_buffered_bytes() {
    let mut h = H::new();
    h.handshake(0, 100);
    acked(&mut h, C, 101, 1, 0, b"ab");
    acked(&mut h, C, 105, 1, 0, b"ef"); // 103..105 missing
    // The client acknowledges 109: 103..105 and 107..109 were received, not captured.
    acked(&mut h, S, 1, 109, 1, b"next");
    assert_eq!(h.gaps(key(1), C), vec![2, 2]);
    assert_eq!(h.data(key(1), C), b"abef");
    // Old ACKs and ACKs of what was delivered change nothing.
    acked(&mut h, S, 5, 104, 2, b"x");
    acked(&mut h, S, 6, 109, 2, b"y");
    assert_eq!(h.gaps(key(1), C), vec![2, 2]);
}

#[test]
fn an_ack_of_the_fin_is_no_loss() {
    let mut h = H::new();
    h.handshake(0, 100);
    acked(&mut h, C, 101, 1, 0, b"ab");
    h.send(C, 103, FIN, 0, b"");
    // The FIN takes sequence number 103; its ACK is 104.
    acked(&mut h, S, 1, 104, 1, b"");
    assert!(h.gaps(key(1), C).is_empty());
}

#[test]
fn consecutive_holes_each_get_their_own_gap() {
    let mut h = H::new();
    let t = h.r.config().reorder_timeout_ns;
    h.handshake(0, 0);
    h.send(S, 3, ACK, 0, b"c"); // 1..3 missing
    h.send(S, 6, ACK, t / 2, b"f"); // 4..6 missing
    h.expire(t);
    assert_eq!(h.gaps(key(1), S), vec![2]);
    assert_eq!(h.data(key(1), S), b"c");
    h.expire(t + t / 2);
    assert_eq!(h.gaps(key(1), S), vec![2, 2]);
    assert_eq!(h.data(key(1), S), b"cf");
}

#[test]
fn flow_buffer_cap_turns_the_first_hole_into_a_gap() {
    let cfg = ReassemblyConfig {
        max_flow_buffer_bytes: 2 * O + 10,
        ..ReassemblyConfig::default()
    };
    let mut h = H::with(cfg);
    h.handshake(0, 0);
    h.send(S, 5, ACK, 1, b"efgh"); // 1..5 missing
    h.send(S, 11, ACK, 2, b"klmn"); // 9..11 missing
    assert_eq!(h.r.buffered_bytes(), 2 * O + 8);
    h.send(S, 17, ACK, 3, b"qrst"); // a third chunk would not fit
    assert_eq!(h.gaps(key(1), S), vec![4]);
    assert_eq!(h.data(key(1), S), b"efgh");
    assert_eq!(h.r.buffered_bytes(), 2 * O + 8);
    assert_eq!(h.r.stats().gaps_flow_buffer_cap, 1);
    assert_eq!(h.r.stats().lost_bytes_flow_buffer_cap, 4);
    h.send(S, 9, ACK, 4, b"ij"); // fills the remaining holes
    h.send(S, 15, ACK, 5, b"op");
    assert_eq!(h.data(key(1), S), b"efghijklmnopqrst");
}

#[test]
fn segment_bigger_than_the_flow_cap_is_delivered_after_a_gap() {
    let cfg = ReassemblyConfig {
        max_flow_buffer_bytes: 4,
        ..ReassemblyConfig::default()
    };
    let mut h = H::with(cfg);
    h.handshake(0, 0);
    h.send(S, 11, ACK, 1, b"klmnopq");
    assert_eq!(h.gaps(key(1), S), vec![10]);
    assert_eq!(h.data(key(1), S), b"klmnopq");
    assert_eq!(h.r.buffered_bytes(), 0);
}

#[test]
fn tiny_segment_flood_is_bounded_by_chunk_accounting() {
    let cap = 10 * (1 + O);
    let cfg = ReassemblyConfig {
        max_flow_buffer_bytes: cap,
        ..ReassemblyConfig::default()
    };
    let mut h = H::with(cfg);
    h.handshake(0, 0);
    // 1000 one-byte segments, each after its own one-byte hole.
    for i in 0..1000u32 {
        h.send(S, 2 + 2 * i, ACK, 1, b"x");
        assert!(h.r.buffered_bytes() <= cap);
    }
    assert_eq!(h.r.buffered_bytes(), cap);
    assert_eq!(h.r.stats().lost_bytes_flow_buffer_cap, 990);
}

#[test]
fn global_cap_forces_the_offending_flow_to_flush() {
    let cfg = ReassemblyConfig {
        max_total_buffer_bytes: 2 * O + 10,
        ..ReassemblyConfig::default()
    };
    let mut h = H::with(cfg);
    for k in [key(1), key(2)] {
        h.seg(k, S, 0, SYN, 0, b"");
    }
    h.seg(key(1), S, 5, ACK, 1, b"123456"); // flow 1 holds 6 + O
    h.seg(key(2), S, 3, ACK, 2, b"ab"); // flow 2 holds 2 + O
    // 3 chunks, 13 bytes: over the cap; flow 2 flushes, flow 1 is untouched.
    h.seg(key(2), S, 9, ACK, 3, b"cdefg");
    assert_eq!(h.gaps(key(2), S), vec![2, 4]);
    assert_eq!(h.data(key(2), S), b"abcdefg");
    assert!(h.gaps(key(1), S).is_empty());
    assert_eq!(h.r.buffered_bytes(), 6 + O);
    assert_eq!(h.r.stats().gaps_global_buffer_cap, 2);
    assert_eq!(h.r.stats().lost_bytes_global_buffer_cap, 6);
}

#[test]
fn idle_flows_are_closed_with_a_gap_for_buffered_bytes() {
    let mut h = H::new();
    let idle = h.r.config().idle_timeout_ns;
    h.handshake(0, 0);
    h.send(S, 1, ACK, 0, b"a");
    h.send(S, 3, ACK, 0, b"c");
    h.seg(key(2), S, 0, SYN, idle / 2, b"");
    // Disable the reorder timeout's effect by expiring once, late: the idle close wins.
    h.expire(idle);
    assert_eq!(
        h.ev,
        vec![
            Ev::Data(key(1), S, b"a".to_vec()),
            Ev::Gap(key(1), S, 1),
            Ev::Data(key(1), S, b"c".to_vec()),
            Ev::Closed(key(1), CloseReason::IdleTimeout),
        ]
    );
    assert_eq!(h.r.open_flows(), 1, "flow 2 is not idle yet");
    assert_eq!(h.r.stats().flows_closed_idle, 1);
}

#[test]
fn full_table_evicts_quiet_flows_else_refuses() {
    let cfg = ReassemblyConfig {
        max_flows: 2,
        evict_min_idle_ns: 10 * SECOND_NS,
        ..ReassemblyConfig::default()
    };
    let mut h = H::with(cfg);
    h.seg(key(1), S, 0, SYN, 0, b"");
    h.seg(key(2), S, 0, SYN, 5 * SECOND_NS, b"");
    h.seg(key(3), S, 0, SYN, 6 * SECOND_NS, b""); // both busy: refused
    assert_eq!(h.r.open_flows(), 2);
    assert_eq!(h.r.stats().new_flow_refusals_table_full, 1);
    assert!(h.closed().is_empty());
    h.seg(key(3), S, 0, SYN, 11 * SECOND_NS, b""); // flow 1 quiet for 11 s: evicted
    assert_eq!(h.closed(), vec![(key(1), CloseReason::Evicted)]);
    assert_eq!(h.r.open_flows(), 2);
    assert_eq!(h.r.stats().flows_closed_evicted, 1);
    // Sweeps are rate limited: within a second nothing is scanned again.
    h.seg(key(4), S, 0, SYN, 11 * SECOND_NS + 1, b"");
    assert_eq!(h.r.stats().table_sweeps, 2);
    assert_eq!(h.r.stats().new_flow_refusals_table_full, 2);
    assert!(h.r.open_flows() <= 2);
}

#[test]
fn syn_after_half_close_starts_a_fresh_flow() {
    let mut h = H::new();
    h.handshake(100, 200);
    h.send(S, 101, ACK, 1, b"old");
    h.send(S, 104, FIN, 2, b""); // server's FIN never captured
    h.send(S, 9000, SYN, 3, b"");
    h.send(C, 7000, SYN | ACK, 4, b"");
    h.send(S, 9001, ACK, 5, b"new");
    assert_eq!(h.closed(), vec![(key(1), CloseReason::PortReuse)]);
    assert_eq!(h.data(key(1), S), b"oldnew");
    assert!(h.gaps(key(1), S).is_empty());
    assert_eq!(h.r.open_flows(), 1);
    assert_eq!(h.r.stats().flows_opened, 2);
}

#[test]
fn retransmitted_syn_is_not_a_new_connection() {
    let mut h = H::new();
    h.send(S, 100, SYN, 0, b"");
    h.send(S, 100, SYN, 1, b"");
    h.send(S, 101, ACK, 2, b"x");
    assert!(h.closed().is_empty());
    assert_eq!(h.data(key(1), S), b"x");
}

#[test]
fn syn_after_full_close_opens_a_new_flow() {
    let mut h = H::new();
    h.handshake(0, 0);
    h.send(S, 1, FIN, 1, b"");
    h.send(C, 1, FIN, 2, b"");
    h.send(S, 50, SYN, 3, b"");
    h.send(S, 51, ACK, 4, b"q");
    assert_eq!(h.closed(), vec![(key(1), CloseReason::Fin)]);
    assert_eq!(h.data(key(1), S), b"q");
    assert_eq!(h.r.open_flows(), 1);
}

#[test]
fn far_ahead_segments_are_dropped() {
    let mut h = H::new();
    h.handshake(0, 0);
    h.send(S, 1 + (1 << 31), ACK, 1, b"junk"); // half the space away: reads as behind
    h.send(S, (1 << 30) + 2, ACK, 1, b"junk"); // beyond the largest TCP window
    assert_eq!(h.r.buffered_bytes(), 0);
    assert_eq!(h.r.stats().out_of_window_segments, 1);
    assert_eq!(h.r.stats().retransmitted_segments, 1);
}

#[test]
fn finish_flushes_and_closes_everything() {
    let mut h = H::new();
    h.handshake(0, 0);
    h.send(S, 4, ACK, 1, b"de");
    h.seg(key(2), C, 9, ACK, 2, b"zz");
    h.finish();
    assert_eq!(h.gaps(key(1), S), vec![3]);
    assert_eq!(h.data(key(1), S), b"de");
    let mut closed = h.closed();
    closed.sort_by_key(|(k, _)| *k);
    assert_eq!(
        closed,
        vec![
            (key(1), CloseReason::EndOfCapture),
            (key(2), CloseReason::EndOfCapture)
        ]
    );
    assert_eq!(h.r.open_flows(), 0);
    assert_eq!(h.r.buffered_bytes(), 0);
}

#[test]
fn config_validation() {
    assert_eq!(ReassemblyConfig::default().validate(), Ok(()));
    let bad = ReassemblyConfig {
        max_flow_buffer_bytes: 2,
        max_total_buffer_bytes: 1,
        ..Default::default()
    };
    assert!(bad.validate().is_err());
    let zero = ReassemblyConfig {
        reorder_timeout_ns: 0,
        ..Default::default()
    };
    assert_eq!(
        zero.validate(),
        Err(ConfigError::Zero("reorder_timeout_ns"))
    );
}

#[test]
fn stats_serialize() {
    let json = serde_json::to_value(ReassemblyStats::default()).unwrap();
    assert_eq!(json["flows_closed_fin"], 0);
}

/// Idle flows must stay cheap: 100k of them well under 100 MiB.
#[test]
fn flow_state_is_small() {
    let flow = std::mem::size_of::<Flow>();
    let entry = flow + std::mem::size_of::<FlowKey>();
    println!("size_of::<Flow>() = {flow} B, table entry (key + flow) = {entry} B");
    // Worst case a hashbrown table is under half full after a resize, plus a control byte.
    assert!(
        100_000 * (2 * entry + 2) < 50 << 20,
        "{entry} B per flow is too big"
    );
    let mut r = Reassembler::new(ReassemblyConfig::default());
    for i in 0..1000u16 {
        let s = Segment {
            flow: key(i),
            direction: S,
            seq: 0,
            ack: 0,
            flags: TcpFlags(SYN),
            ts_ns: 0,
            payload: b"",
        };
        r.process(&s, &mut |_| {});
    }
    assert_eq!(r.open_flows(), 1000);
}

// ---- property tests ----

/// A byte stream for one direction cut into segments: (offset, len).
fn cut(len: usize, cuts: &[usize]) -> Vec<(usize, usize)> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (len + 1)).collect();
    points.push(0);
    points.push(len);
    points.sort_unstable();
    points.dedup();
    points.windows(2).map(|w| (w[0], w[1] - w[0])).collect()
}

/// A segment to send, in terms of the generated streams.
#[derive(Clone, Copy, Debug)]
struct Planned {
    dir: Direction,
    off: usize,
    len: usize,
    fin: bool,
}

#[derive(Debug)]
struct Scenario {
    streams: [Vec<u8>; 2],
    isns: [u32; 2],
    plan: Vec<Planned>,
}

fn scenario(
    drop_one: bool,
) -> impl Strategy<Value = (Scenario, Option<(Direction, usize, usize)>)> {
    (
        prop::collection::vec(any::<u8>(), 0..600),
        prop::collection::vec(any::<u8>(), 0..600),
        prop::collection::vec(any::<usize>(), 0..40),
        prop::collection::vec(any::<usize>(), 0..40),
        prop_oneof![any::<u32>(), (u32::MAX - 700)..=u32::MAX],
        prop_oneof![any::<u32>(), (u32::MAX - 700)..=u32::MAX],
        prop::collection::vec((0usize..8, any::<bool>()), 0..200),
        any::<prop::sample::Index>(),
    )
        .prop_map(
            move |(a, b, cuts_a, cuts_b, isn_a, isn_b, shuffle, victim)| {
                let mut data = Vec::new();
                for (dir, stream, cuts) in [(S, &a, &cuts_a), (C, &b, &cuts_b)] {
                    for (off, len) in cut(stream.len(), cuts) {
                        if len > 0 {
                            data.push(Planned {
                                dir,
                                off,
                                len,
                                fin: false,
                            });
                        }
                    }
                }
                // Interleave the two directions' segments in stream order.
                data.sort_by_key(|p| (p.off, p.dir.index()));
                let removed = if drop_one && !data.is_empty() {
                    let p = data.remove(victim.index(data.len()));
                    Some((p.dir, p.off, p.len))
                } else {
                    None
                };
                // Reorder within a window (each step swaps neighbours up to 7 apart) and
                // duplicate some segments a bit later.
                for (i, &(dist, dup)) in shuffle.iter().enumerate() {
                    if data.len() < 2 {
                        break;
                    }
                    let at = i % data.len();
                    let to = (at + dist).min(data.len() - 1);
                    data.swap(at, to);
                    if dup {
                        let p = data[at];
                        data.insert(to, p);
                    }
                }
                let mut plan = data;
                plan.push(Planned {
                    dir: S,
                    off: a.len(),
                    len: 0,
                    fin: true,
                });
                plan.push(Planned {
                    dir: C,
                    off: b.len(),
                    len: 0,
                    fin: true,
                });
                (
                    Scenario {
                        streams: [a, b],
                        isns: [isn_a, isn_b],
                        plan,
                    },
                    removed,
                )
            },
        )
}

/// Runs a scenario; the clock advances 1 ns per segment, far below the reorder timeout.
fn run(sc: &Scenario) -> H {
    let mut h = H::new();
    h.handshake(sc.isns[0], sc.isns[1]);
    for (i, p) in sc.plan.iter().enumerate() {
        let di = p.dir.index();
        let seq = sc.isns[di].wrapping_add(1).wrapping_add(p.off as u32);
        let flags = if p.fin { FIN } else { ACK };
        h.send(
            p.dir,
            seq,
            flags,
            i as u64,
            &sc.streams[di][p.off..p.off + p.len],
        );
        assert!(h.r.buffered_bytes() <= h.r.config().max_total_buffer_bytes);
    }
    h
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn reordered_and_duplicated_streams_are_rebuilt_exactly((sc, _) in scenario(false)) {
        let h = run(&sc);
        prop_assert_eq!(h.data(key(1), S), sc.streams[0].clone());
        prop_assert_eq!(h.data(key(1), C), sc.streams[1].clone());
        prop_assert!(h.gaps(key(1), S).is_empty() && h.gaps(key(1), C).is_empty());
        prop_assert_eq!(h.closed(), vec![(key(1), CloseReason::Fin)]);
        prop_assert_eq!(h.r.buffered_bytes(), 0);
        prop_assert_eq!(h.r.open_flows(), 0);
    }

    #[test]
    fn a_missing_segment_is_reported_as_exactly_its_bytes((sc, removed) in scenario(true)) {
        let mut h = run(&sc);
        // The hole blocks the FIN; the reorder timeout gives up on it.
        h.expire(sc.plan.len() as u64 + h.r.config().reorder_timeout_ns);
        for dir in [S, C] {
            let stream = &sc.streams[dir.index()];
            match removed {
                Some((d, off, len)) if d == dir => {
                    // Everything but the removed range, and a gap of its size exactly where it was.
                    let mut got_before = Vec::new();
                    let mut gap_seen = None;
                    for e in &h.ev {
                        match e {
                            Ev::Data(_, d2, b) if *d2 == dir && gap_seen.is_none() => {
                                got_before.extend_from_slice(b)
                            }
                            Ev::Gap(_, d2, n) if *d2 == dir => {
                                prop_assert!(gap_seen.is_none(), "one gap only");
                                gap_seen = Some(*n);
                            }
                            _ => {}
                        }
                    }
                    prop_assert_eq!(gap_seen, Some(len as u64));
                    prop_assert_eq!(&got_before[..], &stream[..off]);
                    let mut rest = stream[..off].to_vec();
                    rest.extend_from_slice(&stream[off + len..]);
                    prop_assert_eq!(h.data(key(1), dir), rest);
                }
                _ => {
                    prop_assert_eq!(&h.data(key(1), dir), stream);
                    prop_assert!(h.gaps(key(1), dir).is_empty());
                }
            }
        }
        prop_assert_eq!(h.closed(), vec![(key(1), CloseReason::Fin)]);
        prop_assert_eq!(h.r.buffered_bytes(), 0);
    }

    #[test]
    fn fuzz_entry_holds_its_invariants(data in prop::collection::vec(any::<u8>(), 0..2048)) {
        fuzz_reassembly(&data);
    }
}

/// Pushes ~1 GiB of 1400-byte segments over 1000 flows (round robin, crossing the 2^32
/// wrap); every `swap_every`-th pair of a flow's segments arrives swapped, so the first
/// of the pair is copied into the reorder buffer.
fn throughput(swap_every: Option<u32>) {
    const FLOWS: usize = 1000;
    const SEG: usize = 1400;
    const TOTAL: usize = 1 << 30;
    let isn = u32::MAX - 5000;
    let payload = vec![b'x'; SEG];
    let mut r = Reassembler::new(ReassemblyConfig::default());
    let mut delivered = 0usize;
    let mut out = |e: StreamEvent<'_>| {
        if let StreamEvent::Data { bytes, .. } = e {
            delivered += bytes.len();
        }
    };
    for i in 0..FLOWS {
        let s = Segment {
            flow: key(i as u16),
            direction: S,
            seq: isn,
            ack: 0,
            flags: TcpFlags(SYN),
            ts_ns: 0,
            payload: b"",
        };
        r.process(&s, &mut out);
    }
    let rounds = (TOTAL / SEG / FLOWS) as u32;
    let segments = rounds as usize * FLOWS;
    let start = std::time::Instant::now();
    for n in 0..segments {
        let flow = key((n % FLOWS) as u16);
        let mut round = (n / FLOWS) as u32;
        if let Some(k) = swap_every
            && round + 1 < rounds
        {
            match round % k {
                0 => round += 1,
                1 => round -= 1,
                _ => {}
            }
        }
        let s = Segment {
            flow,
            direction: S,
            seq: isn
                .wrapping_add(1)
                .wrapping_add(round.wrapping_mul(SEG as u32)),
            ack: 0,
            flags: TcpFlags(ACK),
            ts_ns: n as u64,
            payload: &payload,
        };
        r.process(&s, &mut out);
    }
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(delivered, segments * SEG);
    assert_eq!(r.buffered_bytes(), 0);
    assert!(r.stats().gaps_reorder_timeout == 0 && r.stats().retransmitted_bytes == 0);
    let label = match swap_every {
        None => "in order".to_string(),
        Some(k) => format!("1 pair in {k} swapped"),
    };
    println!(
        "reassembly_throughput ({label}): {segments} segments x {SEG} B over {FLOWS} flows \
         in {secs:.3} s: {:.0} MB/s, {:.2} M segments/s, {} copied out of order",
        (segments * SEG) as f64 / secs / 1e6,
        segments as f64 / secs / 1e6,
        r.stats().out_of_order_segments,
    );
}

/// `cargo test --release -p mirror-daemon --lib reassembly_throughput -- --ignored --nocapture`
#[test]
#[ignore = "throughput measurement; run in release mode"]
fn reassembly_throughput() {
    throughput(None);
    throughput(Some(10));
}
