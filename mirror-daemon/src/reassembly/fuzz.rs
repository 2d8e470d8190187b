//! Fuzz entry: arbitrary bytes drive a reassembler through segments, clock jumps and end
//! of input on two flows, and every step is checked against the module's contract.
use std::net::{Ipv4Addr, SocketAddr};

use super::{Reassembler, ReassemblyConfig, StreamEvent};
use crate::capture::{Direction, FlowKey, Segment, TcpFlags};

const MAX_LEN: usize = 300;

/// Payload source: the byte at sequence number `s` is always `s as u8`, so every
/// delivered byte can be checked against its position in the stream.
static PATTERN: [u8; 256 + MAX_LEN] = pattern();

const fn pattern() -> [u8; 256 + MAX_LEN] {
    let mut p = [0u8; 256 + MAX_LEN];
    let mut i = 0;
    while i < p.len() {
        p[i] = i as u8;
        i += 1;
    }
    p
}

/// Reads the fuzzer's bytes; zeros once they run out.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
}

/// What has been sent and seen, per flow and direction.
#[derive(Default)]
struct Checker {
    sent: [[u64; 2]; 2],
    delivered: [[u64; 2]; 2],
    /// Value of the next byte, when known (after the first `Data` of a flow incarnation).
    expect: [[Option<u8>; 2]; 2],
}

impl Checker {
    fn on_event(&mut self, keys: &[FlowKey; 2], e: StreamEvent<'_>) {
        let fi = |k: FlowKey| usize::from(k != keys[0]);
        match e {
            StreamEvent::Data {
                flow,
                direction,
                bytes,
                ..
            } => {
                let (f, d) = (fi(flow), direction.index());
                assert!(!bytes.is_empty(), "empty Data event");
                if let Some(want) = self.expect[f][d] {
                    assert_eq!(bytes[0], want, "byte delivered at the wrong position");
                }
                for w in bytes.windows(2) {
                    assert_eq!(w[1], w[0].wrapping_add(1), "Data is not contiguous");
                }
                self.expect[f][d] = bytes.last().map(|b| b.wrapping_add(1));
                self.delivered[f][d] += bytes.len() as u64;
                assert!(
                    self.delivered[f][d] <= self.sent[f][d],
                    "delivered more than was sent"
                );
            }
            StreamEvent::Gap {
                flow,
                direction,
                lost_bytes,
                ..
            } => {
                let (f, d) = (fi(flow), direction.index());
                if lost_bytes == 0 {
                    assert!(self.expect[f][d].is_none(), "Gap{{0}} after Data");
                }
                self.expect[f][d] = self.expect[f][d].map(|b| b.wrapping_add(lost_bytes as u8));
            }
            StreamEvent::Closed { flow, .. } => {
                self.expect[fi(flow)] = [None, None];
            }
        }
    }
}

/// Decodes `data` into operations on two flows and checks, after each one: no panic,
/// buffered bytes within the per-flow and global caps, table within `max_flows`, every
/// delivered byte at its right stream position, never more bytes delivered than sent.
pub fn fuzz_reassembly(data: &[u8]) {
    let mut input = Input(data);
    // Up to ~8 KiB per flow: room for a few chunks at BUFFER_CHUNK_OVERHEAD each.
    let flow_cap = 1 + usize::from(input.u8()) * 32;
    let cfg = ReassemblyConfig {
        idle_timeout_ns: 1 + u64::from(input.u16()) * 64,
        reorder_timeout_ns: 1 + u64::from(input.u16()),
        max_flow_buffer_bytes: flow_cap,
        max_total_buffer_bytes: flow_cap + usize::from(input.u8()) * 32,
        max_flows: 1 + usize::from(input.u8() % 2),
        evict_min_idle_ns: u64::from(input.u16()) * 64,
    };
    let keys = [1u16, 2].map(|port| FlowKey {
        client: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        server: SocketAddr::from((Ipv4Addr::LOCALHOST, 80)),
    });
    // Sequence bases near the wrap point make wrap-around common.
    let mut bases = [[0u32; 2]; 2];
    for b in bases.iter_mut().flatten() {
        *b = u32::MAX - u32::from(input.u16());
    }

    let mut r = Reassembler::new(cfg.clone());
    let mut check = Checker::default();
    let mut now = 0u64;
    while !input.0.is_empty() {
        let op = input.u8();
        match op % 16 {
            0 => {
                now += u64::from(input.u16());
                r.expire(now, &mut |e| check.on_event(&keys, e));
            }
            1 if op == 1 => r.finish(&mut |e| check.on_event(&keys, e)),
            _ => {
                let (f, d) = (usize::from(op & 0x10 != 0), usize::from(op & 0x20 != 0));
                let mut flags = input.u8() & (TcpFlags::FIN | TcpFlags::SYN | TcpFlags::ACK);
                if op & 0xc0 == 0xc0 && input.u8() < 16 {
                    flags |= TcpFlags::RST;
                }
                let seq = if op & 0x0f == 0x0f {
                    input.u32() // anywhere in the sequence space
                } else {
                    bases[f][d].wrapping_add(u32::from(input.u16()))
                };
                let len = usize::from(input.u8()) % MAX_LEN;
                // Mostly forward, sometimes a little backwards (per-CPU ring buffers).
                let step = u64::from(input.u8());
                let ts = if op & 0x40 != 0 && step < 32 {
                    now.saturating_sub(step)
                } else {
                    now + step
                };
                now = now.max(ts);
                // Payload bytes start one after a SYN's sequence number.
                let data_seq = seq.wrapping_add(u32::from(flags & TcpFlags::SYN != 0));
                let at = usize::from(data_seq as u8);
                let seg = Segment {
                    flow: keys[f],
                    direction: if d == 0 {
                        Direction::ToServer
                    } else {
                        Direction::ToClient
                    },
                    seq,
                    ack: 0,
                    flags: TcpFlags(flags),
                    ts_ns: ts,
                    payload: &PATTERN[at..at + len],
                };
                check.sent[f][d] += len as u64;
                r.process(&seg, &mut |e| check.on_event(&keys, e));
            }
        }
        assert!(
            r.buffered_bytes() <= cfg.max_total_buffer_bytes,
            "global cap exceeded"
        );
        assert!(r.open_flows() <= cfg.max_flows, "flow table over its cap");
        let mut sum = 0;
        for flow in r.flows.values() {
            for b in flow.buffered() {
                assert!(b <= cfg.max_flow_buffer_bytes, "flow cap exceeded");
                sum += b;
            }
        }
        assert_eq!(sum, r.buffered_bytes(), "buffer accounting drifted");
    }
    r.finish(&mut |e| check.on_event(&keys, e));
    assert_eq!(r.buffered_bytes(), 0);
    assert_eq!(r.open_flows(), 0);
}
