//! Causal order across directions for capture files.
//!
//! A SPAN port, or two captures merged into one file, can show a segment before the
//! segment of the other direction that caused it: a response before the request it
//! answers, a client's ACK before the data it acknowledges. Reassembly reads an ACK as
//! proof that everything before it was sent (and gives up on holes the peer has
//! acknowledged), so such input must be put back in causal order first.
//!
//! [`CausalReorder`] holds the last `window` segments and releases the oldest one, except
//! that a segment whose ACK number acknowledges bytes of the other direction still held
//! is released after them. Within one direction order does not matter (reassembly
//! sorts by sequence number), and duplicates pass through (reassembly drops them). Live
//! capture on one host is causal already (a TC hook sees a segment before the peer can
//! answer it), so only file input goes through this.
//!
//! Memory is bounded: `window` segments, their payloads copied into buffers reused from
//! one segment to the next (no allocation per segment once warm).
use std::collections::VecDeque;

use super::{FlowKey, Segment, TcpFlags};

/// Default window in segments: covers SPAN reordering and merges of captures taken on
/// two interfaces a few milliseconds apart at moderate rates.
pub const DEFAULT_REORDER_WINDOW: usize = 64;

/// An owned copy of a segment.
struct Held {
    flow: FlowKey,
    direction: super::Direction,
    seq: u32,
    ack: u32,
    flags: TcpFlags,
    ts_ns: u64,
    payload: Vec<u8>,
}

impl Held {
    fn segment(&self) -> Segment<'_> {
        Segment {
            flow: self.flow,
            direction: self.direction,
            seq: self.seq,
            ack: self.ack,
            flags: self.flags,
            ts_ns: self.ts_ns,
            payload: &self.payload,
        }
    }

    /// Occupies sequence space (payload, SYN or FIN), so an ACK can refer to it.
    fn occupies(&self) -> bool {
        !self.payload.is_empty() || self.flags.syn() || self.flags.fin()
    }

    /// `self` must be released before `other` because `other` acknowledges it.
    fn acknowledged_by(&self, other: &Held) -> bool {
        other.flags.ack()
            && self.flow == other.flow
            && self.direction != other.direction
            && self.occupies()
            && (self.seq.wrapping_sub(other.ack) as i32) < 0
    }
}

/// Counters of the reorder stage.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReorderStats {
    /// Segments released ahead of older ones because a held segment acknowledged them.
    pub moved_ahead: u64,
}

/// See the module docs. `window == 0` passes segments straight through.
pub struct CausalReorder {
    window: usize,
    held: VecDeque<Held>,
    /// Payload buffers of released segments, for reuse.
    spare: Vec<Vec<u8>>,
    stats: ReorderStats,
}

impl CausalReorder {
    pub fn new(window: usize) -> Self {
        Self {
            window,
            held: VecDeque::with_capacity(window),
            spare: Vec::new(),
            stats: ReorderStats::default(),
        }
    }

    pub fn stats(&self) -> ReorderStats {
        self.stats
    }

    /// Takes one segment; releases whatever leaves the window.
    pub fn push(&mut self, seg: &Segment<'_>, out: &mut impl FnMut(&Segment<'_>)) {
        if self.window == 0 {
            out(seg);
            return;
        }
        let mut payload = self.spare.pop().unwrap_or_default();
        payload.clear();
        payload.extend_from_slice(seg.payload);
        self.held.push_back(Held {
            flow: seg.flow,
            direction: seg.direction,
            seq: seg.seq,
            ack: seg.ack,
            flags: seg.flags,
            ts_ns: seg.ts_ns,
            payload,
        });
        while self.held.len() > self.window {
            self.release_one(out);
        }
    }

    /// End of input: releases everything held.
    pub fn finish(&mut self, out: &mut impl FnMut(&Segment<'_>)) {
        while !self.held.is_empty() {
            self.release_one(out);
        }
    }

    /// Releases the oldest held segment, or what it (transitively) acknowledges first.
    fn release_one(&mut self, out: &mut impl FnMut(&Segment<'_>)) {
        let mut pick = 0;
        // A chain of acknowledgements is at most `held.len()` long; a cycle (impossible
        // in real TCP, possible in a hostile file) ends at the bound.
        for _ in 0..self.held.len() {
            let current = &self.held[pick];
            match self.held.iter().position(|h| h.acknowledged_by(current)) {
                Some(first) if first != pick => pick = first,
                _ => break,
            }
        }
        if pick != 0 {
            self.stats.moved_ahead += 1;
        }
        if let Some(held) = self.held.remove(pick) {
            out(&held.segment());
            if self.spare.len() < self.window {
                self.spare.push(held.payload);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::Direction;

    fn seg(direction: Direction, seq: u32, ack: u32, payload: &'static [u8]) -> Segment<'static> {
        Segment {
            flow: FlowKey {
                client: ([10, 0, 0, 1], 4000).into(),
                server: ([10, 0, 0, 2], 80).into(),
            },
            direction,
            seq,
            ack,
            flags: TcpFlags(TcpFlags::ACK),
            ts_ns: 0,
            payload,
        }
    }

    fn run(window: usize, input: &[Segment<'static>]) -> Vec<(Direction, u32)> {
        let mut r = CausalReorder::new(window);
        let mut got = Vec::new();
        let mut out = |s: &Segment<'_>| got.push((s.direction, s.seq));
        for s in input {
            r.push(s, &mut out);
        }
        r.finish(&mut out);
        got
    }

    #[test]
    fn a_response_seen_before_its_request_is_released_after_it() {
        use Direction::*;
        // The response (acknowledging request bytes 100..110) comes first in the file.
        let input = [
            seg(ToClient, 500, 110, b"HTTP/1.1 2"),
            seg(ToServer, 100, 500, b"GET / HTTP"),
        ];
        assert_eq!(run(4, &input), [(ToServer, 100), (ToClient, 500)]);
        // Without a window the file order stands.
        assert_eq!(run(0, &input), [(ToClient, 500), (ToServer, 100)]);
    }

    #[test]
    fn ordered_input_and_duplicates_pass_unchanged() {
        use Direction::*;
        let input = [
            seg(ToServer, 100, 500, b"GET / HTTP"),
            seg(ToServer, 100, 500, b"GET / HTTP"),
            seg(ToClient, 500, 110, b"HTTP/1.1 2"),
            seg(ToServer, 110, 510, b"GET /2 HTT"),
            seg(ToClient, 510, 120, b"HTTP/1.1 2"),
        ];
        let want: Vec<_> = input.iter().map(|s| (s.direction, s.seq)).collect();
        assert_eq!(run(3, &input), want);
    }

    #[test]
    fn a_cycle_in_a_hostile_file_ends() {
        use Direction::*;
        // Each acknowledges the other: impossible in TCP; released in file order.
        let input = [seg(ToClient, 500, 200, b"x"), seg(ToServer, 100, 900, b"y")];
        assert_eq!(run(8, &input).len(), 2);
    }
}
