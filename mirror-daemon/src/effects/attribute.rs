//! Which inbound exchange caused each of legacy's outbound calls (pure, bounded).
//!
//! Exactly when the call carries an id the inbound request carried (`traceparent`'s trace
//! id, `X-Request-Id`, `--propagation-header`); otherwise by time: a call without ids
//! belongs to an inbound exchange without ids whose handler window holds the whole call —
//! from the inbound request's last byte to its response's first byte, widened by
//! [`WINDOW_SLACK_NS`] on each side (a handler reads the request, calls, then answers; a
//! call it makes after it started answering is not attributed without an id). A call
//! several windows hold goes to the tightest fit (the least time between the request's
//! end and the call, plus between the call's end and the response) and is counted as
//! ambiguous; an exchange registered later that fits a still-unused call better takes
//! it over. Calls and exchanges can come in either order; a call nobody claims is
//! dropped from the pool (counted) after [`POOL_AGE_NS`].
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;

use super::record::{OutboundCall, shared_tokens};
use crate::http::{CorrelationId, Request};

/// A call nobody claimed within this much capture time is unattributed.
pub const POOL_AGE_NS: u64 = 10_000_000_000;
/// An inbound exchange never concluded (lost on the way) is forgotten after this long.
pub const INBOUND_AGE_NS: u64 = 60_000_000_000;
/// How far a call without ids may stick out of an inbound exchange's handler window and
/// still be its call: both are stamped by the same tap clock, so this only absorbs the
/// order in which the kernel hooks see the segments of two sockets.
pub const WINDOW_SLACK_NS: u64 = 1_000_000;
/// Inbound exchanges without ids (newest first) a call without ids is fitted against: the
/// owner of a call completes around the time the call does, so it is among the newest.
pub const WINDOW_SCAN: usize = 1024;
/// An unused call tied by time window to an exchange that concludes is reported missing
/// only if the book has seen this much capture time past the call's end: before that its
/// real owner (whose response starts right after the call) may not be registered yet.
pub const SETTLE_NS: u64 = 20_000_000;

/// Memory bounds of the book.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BookLimits {
    /// Calls kept per inbound exchange (legacy's, and the candidate's, each).
    pub per_exchange: usize,
    /// Inbound exchanges followed at once.
    pub max_inbound: usize,
    /// Calls waiting for their inbound exchange.
    pub max_pool: usize,
    /// Bytes of every call held (pool, exchanges, orphans), bodies included.
    pub max_bytes: usize,
}

impl Default for BookLimits {
    fn default() -> Self {
        Self {
            per_exchange: 16,
            max_inbound: 16_384,
            max_pool: 16_384,
            max_bytes: 64 * 1024 * 1024,
        }
    }
}

/// How a recorded call was tied to its inbound exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attributed {
    /// By a propagated id.
    Exact,
    /// By the inbound exchange's time window.
    Window,
}

/// A legacy call of an inbound exchange; `used` once the virtual dependency answered a
/// candidate call with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recorded {
    pub call: OutboundCall,
    pub how: Attributed,
    pub used: bool,
}

/// A call the candidate made (masked), and the index of the legacy call that answered it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CandidateCall {
    pub dependency: SocketAddr,
    pub request: Request,
    pub matched: Option<usize>,
}

/// What is known of one inbound exchange's side effects.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inbound {
    pub raw_ids: Vec<String>,
    pub sent_ids: Vec<String>,
    /// Sent to the candidate and not concluded yet (the candidate's own window, for its
    /// calls that carry no id).
    pub replaying: bool,
    /// The handler window: the request's last byte, the response's first byte (capture
    /// clock).
    pub window: (u64, u64),
    /// Content tokens of its request and response (`record::content_tokens`).
    pub tokens: Vec<u64>,
    pub legacy: Vec<Recorded>,
    pub candidate: Vec<CandidateCall>,
    /// Calls beyond the per-exchange cap (not kept, so not compared).
    pub over_cap: u64,
}

/// Counters of the book (reported at the end of a run and on the card's section).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct BookStats {
    pub calls_recorded: u64,
    pub attributed_exact: u64,
    pub attributed_window: u64,
    /// Calls inside the windows of several inbound exchanges without ids.
    pub ambiguous: u64,
    /// Calls without ids an exchange registered later fitted better and took over (they
    /// count once, as attributed by window, to their last owner).
    pub taken_over: u64,
    /// Unused calls tied by time window to an exchange that concluded before the call
    /// had settled (see [`SETTLE_NS`]): not reported missing, kept for a later owner.
    pub unsettled: u64,
    /// Calls no inbound exchange claimed (aged out or over the pool cap).
    pub unattributed: u64,
    /// Calls over the per-exchange cap.
    pub over_cap: u64,
    /// Inbound exchanges refused because the book was full.
    pub inbound_refused: u64,
    /// Inbound exchanges forgotten unconcluded.
    pub inbound_expired: u64,
    /// Calls not kept because the byte budget was spent.
    pub over_budget: u64,
}

impl BookStats {
    /// Adds `o` (summing over hosts).
    pub fn add(&mut self, o: &BookStats) {
        self.calls_recorded += o.calls_recorded;
        self.attributed_exact += o.attributed_exact;
        self.attributed_window += o.attributed_window;
        self.ambiguous += o.ambiguous;
        self.taken_over += o.taken_over;
        self.unsettled += o.unsettled;
        self.unattributed += o.unattributed;
        self.over_cap += o.over_cap;
        self.inbound_refused += o.inbound_refused;
        self.inbound_expired += o.inbound_expired;
        self.over_budget += o.over_budget;
    }
}

/// The in-memory book: legacy's calls per inbound exchange, and the candidate's.
#[derive(Debug, Default)]
pub struct Book {
    limits: BookLimits,
    inbound: HashMap<CorrelationId, Inbound>,
    /// Registration order, for expiry.
    order: VecDeque<CorrelationId>,
    by_raw: HashMap<String, CorrelationId>,
    by_sent: HashMap<String, CorrelationId>,
    /// Inbound exchanges without ids (claim calls by time), in registration order.
    windowed: VecDeque<CorrelationId>,
    pool: VecDeque<OutboundCall>,
    /// Unused recordings tied by time window to an exchange that has concluded: with
    /// overlapping windows the call may have been another exchange's, whose candidate
    /// can still be answered with it (calls without ids only).
    orphans: Vec<Recorded>,
    /// Bytes held (see [`BookLimits::max_bytes`]).
    bytes: usize,
    stats: BookStats,
    /// Newest capture time seen (drives the ages).
    now_ns: u64,
}

/// How tightly handler window `w` holds `call` (smaller is tighter): the time from the
/// request's end to the call plus from the call's end to the response; `None` unless the
/// whole call is inside the window widened by [`WINDOW_SLACK_NS`].
pub fn fit(w: (u64, u64), call: &OutboundCall) -> Option<u64> {
    let (start, end) = (call.request_first_ns, call.response_last_ns);
    if start.saturating_add(WINDOW_SLACK_NS) < w.0 || w.1.saturating_add(WINDOW_SLACK_NS) < end {
        return None;
    }
    Some(start.abs_diff(w.0) + w.1.abs_diff(end))
}

/// How well an inbound exchange explains a call without ids: the content tokens they
/// share (more is better), then the window's fit (tighter is better).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Score {
    shared: usize,
    fit: u64,
}

impl Score {
    fn better_than(&self, o: &Score) -> bool {
        self.shared > o.shared || (self.shared == o.shared && self.fit < o.fit)
    }
}

/// `None` unless `inb`'s window holds `call`.
fn score(inb: &Inbound, call: &OutboundCall) -> Option<Score> {
    Some(Score {
        fit: fit(inb.window, call)?,
        shared: shared_tokens(&inb.tokens, &call.tokens),
    })
}

/// The book cannot follow another inbound exchange.
#[derive(Debug, PartialEq, Eq)]
pub struct BookFull;

impl Book {
    pub fn new(limits: BookLimits) -> Self {
        Self {
            limits,
            ..Default::default()
        }
    }

    pub fn stats(&self) -> BookStats {
        self.stats
    }

    pub fn inbound(&self, id: &CorrelationId) -> Option<&Inbound> {
        self.inbound.get(id)
    }

    pub fn inbound_mut(&mut self, id: &CorrelationId) -> Option<&mut Inbound> {
        self.inbound.get_mut(id)
    }

    /// Every followed inbound exchange (for matching a call without ids).
    pub fn inbound_iter_mut(&mut self) -> impl Iterator<Item = (&CorrelationId, &mut Inbound)> {
        self.inbound.iter_mut()
    }

    /// The inbound exchange a candidate call with these ids belongs to.
    pub fn owner_by_sent(&self, ids: &[String]) -> Option<CorrelationId> {
        ids.iter().find_map(|i| self.by_sent.get(i).copied())
    }

    /// Bytes held now.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Gives `call` (already counted in `bytes`) to `owner`.
    fn attach(&mut self, owner: CorrelationId, call: OutboundCall, how: Attributed) {
        let cap = self.limits.per_exchange;
        let Some(inb) = self.inbound.get_mut(&owner) else {
            self.bytes = self.bytes.saturating_sub(call.size());
            return;
        };
        if inb.legacy.len() >= cap {
            inb.over_cap += 1;
            self.stats.over_cap += 1;
            self.bytes = self.bytes.saturating_sub(call.size());
            return;
        }
        match how {
            Attributed::Exact => self.stats.attributed_exact += 1,
            Attributed::Window => self.stats.attributed_window += 1,
        }
        inb.legacy.push(Recorded {
            call,
            how,
            used: false,
        });
    }

    /// The best fit among the newest [`WINDOW_SCAN`] inbound exchanges without ids whose
    /// window holds `call`, and how many hold it.
    fn best_window(&self, call: &OutboundCall) -> (Option<CorrelationId>, usize) {
        let mut best: Option<(CorrelationId, Score)> = None;
        let mut holders = 0;
        for id in self.windowed.iter().rev().take(WINDOW_SCAN) {
            let Some(s) = self.inbound.get(id).and_then(|i| score(i, call)) else {
                continue;
            };
            holders += 1;
            if best.is_none_or(|(_, b)| s.better_than(&b)) {
                best = Some((*id, s));
            }
        }
        (best.map(|(id, _)| id), holders)
    }

    /// Newly registered `id` (without ids) takes the unused recordings of concluded
    /// exchanges its window holds (their owner concluded before `id` was registered).
    /// Only the newest [`WINDOW_SCAN`] are looked at (the cost per registration stays
    /// bounded).
    fn claim_orphans(&mut self, id: CorrelationId, window: (u64, u64)) {
        let mut i = self.orphans.len();
        let stop = i.saturating_sub(WINDOW_SCAN);
        while i > stop {
            i -= 1;
            if fit(window, &self.orphans[i].call).is_some() {
                let o = self.orphans.remove(i);
                self.stats.attributed_window = self.stats.attributed_window.saturating_sub(1);
                self.stats.taken_over += 1;
                self.attach(id, o.call, Attributed::Window);
            }
        }
    }

    /// Newly registered `id` (without ids) takes over the unused calls of other
    /// exchanges' windows that it fits better. The old slot is marked used (nothing
    /// answers from it or reports it missing; indices of candidate calls stay valid).
    fn take_over(&mut self, id: CorrelationId) {
        let Some((window, tokens)) = self.inbound.get(&id).map(|i| (i.window, i.tokens.clone()))
        else {
            return;
        };
        let me = Inbound {
            window,
            tokens,
            ..Default::default()
        };
        let mut moved = Vec::new();
        for other in self.windowed.iter().rev().take(WINDOW_SCAN) {
            if *other == id {
                continue;
            }
            let Some(inb) = self.inbound.get_mut(other) else {
                continue;
            };
            if inb.window.1.saturating_add(WINDOW_SLACK_NS) < window.0
                || window.1.saturating_add(WINDOW_SLACK_NS) < inb.window.0
            {
                continue;
            }
            let theirs_of = Inbound {
                window: inb.window,
                tokens: std::mem::take(&mut inb.tokens),
                ..Default::default()
            };
            for r in inb.legacy.iter_mut() {
                if r.used || r.how != Attributed::Window {
                    continue;
                }
                let (Some(mine), Some(theirs)) = (score(&me, &r.call), score(&theirs_of, &r.call))
                else {
                    continue;
                };
                if mine.better_than(&theirs) {
                    r.used = true;
                    moved.push(r.call.clone());
                }
            }
            inb.tokens = theirs_of.tokens;
        }
        for call in moved {
            // The old slot keeps its bytes until its exchange is forgotten.
            self.bytes += call.size();
            self.stats.attributed_window = self.stats.attributed_window.saturating_sub(1);
            self.stats.taken_over += 1;
            self.attach(id, call, Attributed::Window);
        }
    }

    /// A call legacy made, captured.
    pub fn add_call(&mut self, call: OutboundCall) {
        self.stats.calls_recorded += 1;
        self.now_ns = self.now_ns.max(call.response_last_ns);
        if self.bytes + call.size() > self.limits.max_bytes {
            self.stats.over_budget += 1;
            return;
        }
        self.bytes += call.size();
        if let Some(owner) = call.ids.iter().find_map(|i| self.by_raw.get(i).copied()) {
            self.attach(owner, call, Attributed::Exact);
            return;
        }
        if call.ids.is_empty()
            && let (Some(owner), holders) = self.best_window(&call)
        {
            if holders > 1 {
                self.stats.ambiguous += 1;
            }
            self.attach(owner, call, Attributed::Window);
            return;
        }
        self.pool.push_back(call);
        self.expire_pool();
    }

    fn expire_pool(&mut self) {
        let now = self.now_ns;
        while let Some(front) = self.pool.front() {
            let aged = front.response_last_ns.saturating_add(POOL_AGE_NS) < now;
            if !aged && self.pool.len() <= self.limits.max_pool {
                break;
            }
            if let Some(c) = self.pool.pop_front() {
                self.bytes = self.bytes.saturating_sub(c.size());
            }
            self.stats.unattributed += 1;
        }
    }

    fn expire_inbound(&mut self) {
        let now = self.now_ns;
        while let Some(id) = self.order.front().copied() {
            match self.inbound.get(&id) {
                Some(i) if i.window.1.saturating_add(INBOUND_AGE_NS) >= now => break,
                Some(_) => {
                    self.stats.inbound_expired += 1;
                    self.forget(&id);
                }
                None => {
                    self.order.pop_front();
                }
            }
        }
    }

    /// Follows an inbound exchange (its raw request's ids and its capture window) and
    /// claims the calls already waiting for it.
    pub fn register(
        &mut self,
        id: CorrelationId,
        raw_ids: Vec<String>,
        window: (u64, u64),
    ) -> Result<(), BookFull> {
        self.register_with_tokens(id, raw_ids, window, Vec::new())
    }

    /// [`Book::register`], with the exchange's content tokens (see [`Score`]).
    pub fn register_with_tokens(
        &mut self,
        id: CorrelationId,
        raw_ids: Vec<String>,
        window: (u64, u64),
        tokens: Vec<u64>,
    ) -> Result<(), BookFull> {
        self.now_ns = self.now_ns.max(window.1);
        self.expire_inbound();
        if self.inbound.len() >= self.limits.max_inbound {
            self.stats.inbound_refused += 1;
            return Err(BookFull);
        }
        for r in &raw_ids {
            self.by_raw.insert(r.clone(), id);
        }
        let windowed = raw_ids.is_empty();
        self.inbound.insert(
            id,
            Inbound {
                raw_ids,
                window,
                tokens,
                ..Default::default()
            },
        );
        self.order.push_back(id);
        if windowed {
            self.windowed.push_back(id);
        }
        let mut claimed = Vec::new();
        let mut kept = VecDeque::with_capacity(self.pool.len());
        for call in self.pool.drain(..) {
            let inb = &self.inbound[&id];
            let exact = call.ids.iter().any(|i| inb.raw_ids.contains(i));
            let in_window = windowed && call.ids.is_empty() && fit(window, &call).is_some();
            match (exact, in_window) {
                (true, _) => claimed.push((call, Attributed::Exact)),
                (false, true) => claimed.push((call, Attributed::Window)),
                _ => kept.push_back(call),
            }
        }
        self.pool = kept;
        // A pooled call had no holder when it came: `id` is the first, hence the only
        // registered one.
        for (call, how) in claimed {
            self.attach(id, call, how);
        }
        if windowed {
            self.take_over(id);
            self.claim_orphans(id, window);
        }
        Ok(())
    }

    /// The ids the replayed request carries (masked unless `--replay-raw`): a candidate
    /// call with one of them belongs to `id`.
    pub fn bind_sent(&mut self, id: CorrelationId, sent_ids: Vec<String>) {
        for s in &sent_ids {
            self.by_sent.insert(s.clone(), id);
        }
        if let Some(i) = self.inbound.get_mut(&id) {
            i.sent_ids = sent_ids;
            i.replaying = true;
        }
    }

    fn forget(&mut self, id: &CorrelationId) -> Option<Inbound> {
        let inb = self.inbound.remove(id)?;
        let held: usize = inb.legacy.iter().map(|r| r.call.size()).sum();
        self.bytes = self.bytes.saturating_sub(held);
        for r in &inb.raw_ids {
            if self.by_raw.get(r) == Some(id) {
                self.by_raw.remove(r);
            }
        }
        for s in &inb.sent_ids {
            if self.by_sent.get(s) == Some(id) {
                self.by_sent.remove(s);
            }
        }
        self.order.retain(|o| o != id);
        self.windowed.retain(|o| o != id);
        Some(inb)
    }

    /// Stops following `id` and hands over what was recorded for it.
    pub fn finish(&mut self, id: &CorrelationId) -> Option<Inbound> {
        let mut inb = self.forget(id)?;
        let now = self.now_ns;
        let mut freed = 0;
        self.orphans.retain(|o| {
            let keep = o.call.response_last_ns.saturating_add(POOL_AGE_NS) >= now;
            if !keep {
                freed += o.call.size();
            }
            keep
        });
        self.bytes = self.bytes.saturating_sub(freed);
        for r in &mut inb.legacy {
            if r.how == Attributed::Window && !r.used {
                if self.orphans.len() >= self.limits.max_pool {
                    let o = self.orphans.remove(0);
                    self.bytes = self.bytes.saturating_sub(o.call.size());
                }
                if self.bytes + r.call.size() <= self.limits.max_bytes {
                    self.bytes += r.call.size();
                    self.orphans.push(r.clone());
                }
                // Its real owner may not be registered yet: not reported missing here
                // (a later exchange that fits it claims it from the orphans).
                if r.call.response_last_ns.saturating_add(SETTLE_NS) > now {
                    r.used = true;
                    self.stats.unsettled += 1;
                }
            }
        }
        Some(inb)
    }

    /// Recordings of concluded exchanges a call without ids may still match.
    pub fn orphans(&self) -> &[Recorded] {
        &self.orphans
    }

    /// Takes orphan `i` (it answers one call only).
    pub fn take_orphan(&mut self, i: usize) -> Option<Recorded> {
        let o = (i < self.orphans.len()).then(|| self.orphans.remove(i))?;
        self.bytes = self.bytes.saturating_sub(o.call.size());
        Some(o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{Request, Response};

    fn call(ids: &[&str], first: u64, body: &str) -> OutboundCall {
        OutboundCall {
            dependency: "10.0.0.9:7070".parse().expect("addr"),
            request: Request {
                method: "POST".into(),
                target: "/charges".into(),
                version: 1,
                headers: vec![],
                body: bytes::Bytes::from(body.to_string()),
            },
            response: Response {
                version: 1,
                status: 201,
                reason: "Created".into(),
                headers: vec![],
                body: bytes::Bytes::new(),
            },
            request_first_ns: first,
            response_last_ns: first + 10,
            ids: ids.iter().map(|s| s.to_string()).collect(),
            tokens: Vec::new(),
        }
    }

    fn bodies(b: &Book, id: &CorrelationId) -> Vec<String> {
        b.inbound(id)
            .expect("followed")
            .legacy
            .iter()
            .map(|r| String::from_utf8_lossy(&r.call.request.body).into_owned())
            .collect()
    }

    #[test]
    fn ids_attribute_exactly_in_either_order() {
        let mut b = Book::new(BookLimits::default());
        let (x, y) = (CorrelationId::new(), CorrelationId::new());
        b.add_call(call(&["x-request-id=a"], 100, "a1"));
        b.register(x, vec!["x-request-id=a".into()], (50, 500))
            .expect("room");
        b.register(y, vec!["x-request-id=b".into()], (60, 600))
            .expect("room");
        // Inside x's window, but y's id: y's.
        b.add_call(call(&["x-request-id=b"], 110, "b1"));
        assert_eq!(bodies(&b, &x), vec!["a1"]);
        assert_eq!(bodies(&b, &y), vec!["b1"]);
        let s = b.stats();
        assert_eq!(
            (s.attributed_exact, s.attributed_window, s.ambiguous),
            (2, 0, 0)
        );
    }

    const MS: u64 = 1_000_000;

    /// A call without ids from `from` to `to` ms.
    fn timed(from: u64, to: u64, body: &str) -> OutboundCall {
        let mut c = call(&[], from * MS, body);
        c.response_last_ns = to * MS;
        c
    }

    fn unused(b: &Book, id: &CorrelationId) -> Vec<String> {
        b.inbound(id)
            .expect("followed")
            .legacy
            .iter()
            .filter(|r| !r.used)
            .map(|r| String::from_utf8_lossy(&r.call.request.body).into_owned())
            .collect()
    }

    #[test]
    fn without_ids_the_tightest_window_wins_and_overlaps_count_as_ambiguous() {
        let mut b = Book::new(BookLimits::default());
        let (x, y) = (CorrelationId::new(), CorrelationId::new());
        b.register(x, vec![], (100 * MS, 200 * MS)).expect("room");
        b.add_call(timed(150, 160, "alone"));
        b.register(y, vec![], (180 * MS, 300 * MS)).expect("room");
        // Both hold it: 85 + 5 ms from x's ends, 5 + 105 ms from y's.
        b.add_call(timed(185, 195, "both"));
        // y's start is nearer, but x's end is: x's (200 ms) still holds it.
        b.add_call(timed(182, 199, "x-fits"));
        b.add_call(timed(250, 260, "late"));
        assert_eq!(bodies(&b, &x), vec!["alone", "both", "x-fits"]);
        assert_eq!(bodies(&b, &y), vec!["late"]);
        assert_eq!(b.stats().ambiguous, 2);
        assert_eq!(b.stats().attributed_window, 4);
    }

    #[test]
    fn shared_content_beats_a_tighter_window() {
        use crate::effects::record::content_tokens;
        let mut b = Book::new(BookLimits::default());
        let (x, y) = (CorrelationId::new(), CorrelationId::new());
        // y's window is the tighter fit, but x's answer carries the call's order id.
        b.register_with_tokens(
            x,
            vec![],
            (100 * MS, 300 * MS),
            content_tokens(&[br#"{"id":"ord_42"}"#]),
        )
        .expect("room");
        b.register_with_tokens(
            y,
            vec![],
            (149 * MS, 161 * MS),
            content_tokens(&[br#"{"id":"ord_7"}"#]),
        )
        .expect("room");
        let mut c = timed(150, 160, "x's");
        c.tokens = content_tokens(&[br#"{"order_id":"ord_42"}"#]);
        b.add_call(c);
        // Nothing shared with either: the window decides.
        b.add_call(timed(152, 158, "y's"));
        assert_eq!(bodies(&b, &x), vec!["x's"]);
        assert_eq!(bodies(&b, &y), vec!["y's"]);
    }

    #[test]
    fn a_call_not_settled_when_its_exchange_concludes_is_kept_for_a_later_owner() {
        let mut b = Book::new(BookLimits::default());
        let (x, y) = (CorrelationId::new(), CorrelationId::new());
        b.register(x, vec![], (100 * MS, 165 * MS)).expect("room");
        b.add_call(timed(150, 160, "y's"));
        // x concludes before the book has seen SETTLE_NS past the call: not missing.
        let done = b.finish(&x).expect("followed");
        assert!(done.legacy.iter().all(|r| r.used), "not reported missing");
        assert_eq!(b.stats().unsettled, 1);
        // y (its response was longer, so it completed later), registered later, claims it from the concluded exchange's leftovers.
        b.register(y, vec![], (149 * MS, 161 * MS)).expect("room");
        assert_eq!(unused(&b, &y), vec!["y's"]);
        assert!(b.orphans().is_empty());
        // A call that has settled is reported missing as before.
        let z = CorrelationId::new();
        b.register(z, vec![], (200 * MS, 260 * MS)).expect("room");
        b.add_call(timed(210, 220, "z's"));
        b.register(CorrelationId::new(), vec![], (900 * MS, 950 * MS))
            .expect("room");
        let done = b.finish(&z).expect("followed");
        assert_eq!(done.legacy.iter().filter(|r| !r.used).count(), 1);
    }

    #[test]
    fn a_call_outside_the_handler_window_is_not_attributed_without_ids() {
        let mut b = Book::new(BookLimits::default());
        let x = CorrelationId::new();
        b.register(x, vec![], (100 * MS, 200 * MS)).expect("room");
        // Started before the request was read, or ended after the answer began (beyond
        // the slack): another exchange's, or a call made after answering.
        b.add_call(timed(98, 150, "early"));
        b.add_call(timed(150, 202, "late"));
        // Within the slack on both ends.
        let mut edge = timed(100, 200, "edge");
        edge.request_first_ns -= WINDOW_SLACK_NS / 2;
        edge.response_last_ns += WINDOW_SLACK_NS / 2;
        b.add_call(edge);
        assert_eq!(bodies(&b, &x), vec!["edge"]);
        assert_eq!(b.stats().attributed_window, 1);
    }

    #[test]
    fn an_exchange_registered_later_takes_over_the_unused_calls_it_fits_better() {
        let mut b = Book::new(BookLimits::default());
        let (x, y) = (CorrelationId::new(), CorrelationId::new());
        // The calls come first (they end before their exchanges do).
        b.add_call(timed(500, 510, "y's"));
        b.add_call(timed(300, 320, "x's"));
        b.add_call(timed(600, 650, "also x's"));
        // x's long window holds all three and claims them from the pool.
        b.register(x, vec![], (290 * MS, 700 * MS)).expect("room");
        assert_eq!(unused(&b, &x), vec!["y's", "x's", "also x's"]);
        // y's window is tight around one of them: y takes it over; the others stay.
        b.register(y, vec![], (499 * MS, 512 * MS)).expect("room");
        assert_eq!(unused(&b, &x), vec!["x's", "also x's"]);
        assert_eq!(unused(&b, &y), vec!["y's"]);
        let s = b.stats();
        assert_eq!((s.attributed_window, s.taken_over), (3, 1));
        // The moved slot is neither answered from nor reported missing for x.
        let done = b.finish(&x).expect("followed");
        assert_eq!(done.legacy.iter().filter(|r| !r.used).count(), 2);
    }

    #[test]
    fn bounded_calls_inbound_and_pool_with_counts() {
        let limits = BookLimits {
            per_exchange: 2,
            max_inbound: 1,
            max_pool: 2,
            max_bytes: 1 << 20,
        };
        let mut b = Book::new(limits);
        let x = CorrelationId::new();
        b.register(x, vec!["x-request-id=a".into()], (0, 100))
            .expect("room");
        assert_eq!(
            b.register(CorrelationId::new(), vec![], (0, 100)),
            Err(BookFull)
        );
        for i in 0..3 {
            b.add_call(call(&["x-request-id=a"], 10 + i, "a"));
        }
        for i in 0..3 {
            b.add_call(call(&["x-request-id=zz"], 10 + i, "orphan"));
        }
        let s = b.stats();
        assert_eq!((s.over_cap, s.inbound_refused, s.unattributed), (1, 1, 1));
        let done = b.finish(&x).expect("followed");
        assert_eq!((done.legacy.len(), done.over_cap), (2, 1));
        assert!(b.inbound(&x).is_none());
        // What is left is the pool's two orphaned calls.
        assert_eq!(b.bytes(), 2 * call(&[], 0, "orphan").size());
    }

    #[test]
    fn the_byte_budget_refuses_calls_and_is_given_back() {
        let size = call(&[], 0, "x").size();
        let mut b = Book::new(BookLimits {
            max_bytes: 2 * size,
            ..BookLimits::default()
        });
        let x = CorrelationId::new();
        b.register(x, vec!["x-request-id=a".into()], (0, 100))
            .expect("room");
        for _ in 0..3 {
            b.add_call(call(&["x-request-id=a"], 10, "x"));
        }
        assert_eq!((b.stats().over_budget, b.bytes()), (1, 2 * size));
        b.finish(&x);
        assert_eq!(b.bytes(), 0);
        b.add_call(call(&["x-request-id=b"], 20, "x"));
        assert_eq!(b.bytes(), size);
    }

    #[test]
    fn unclaimed_calls_age_out_of_the_pool() {
        let mut b = Book::new(BookLimits::default());
        b.add_call(call(&["x-request-id=q"], 1, "old"));
        b.add_call(call(&["x-request-id=r"], POOL_AGE_NS + 100, "new"));
        assert_eq!(b.stats().unattributed, 1);
    }
}
