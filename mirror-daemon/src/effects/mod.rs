//! Side effects, compared: legacy's calls to its dependencies are recorded from the tap
//! ([`record`]), tied to the inbound exchange that caused them ([`attribute`]), replayed to
//! the candidate by a virtual dependency that answers each of its calls with legacy's
//! recorded response ([`virtual_dep`]), and the two sides' calls are diffed per inbound
//! exchange ([`diff`]) with the response comparison rules.
//!
//! [`Effects`] is the shared state (a bounded [`attribute::Book`] behind a mutex) with a
//! thin async shell: the capture thread hands it dependency exchanges through a bounded
//! queue, the shadow pipeline registers each replayed exchange and collects its diffs.
//! [`EffectsPlan`] is what a run's plan holds (`app::pipeline` starts it).
pub mod attribute;
pub mod diff;
pub mod plan;
pub mod record;
pub mod virtual_dep;
pub mod virtual_smtp;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, mpsc};

use crate::compare::{Comparator, Diff, RouteTemplater};
use crate::http::{CorrelationId, Exchange, Request, Response};
use crate::mask::Masker;
use attribute::{Book, BookFull, BookLimits, BookStats, CandidateCall};
pub use plan::EffectsPlan;
use record::{Dependencies, Propagation, Traffic};

/// Dependency exchanges waiting between the capture thread and the recorder.
pub const OUTBOUND_QUEUE: usize = 8192;
/// How long a call without a propagated id waits for a recording that fits.
pub const CONTENT_WAIT: Duration = Duration::from_millis(300);
/// Least body similarity (see [`virtual_dep::similarity`]) for answering a call without
/// a propagated id from a recording.
pub const MIN_CONTENT_SIMILARITY: f64 = 0.6;
/// How long the virtual dependency waits for legacy's recording of a call.
/// Legacy's call was captured before its inbound exchange completed, so this only covers
/// the recorder's lag on a loaded host; it must stay under the replay timeout (see
/// `--timeout`), and only a call whose recording is not there yet waits.
pub const RECORDING_WAIT: Duration = Duration::from_secs(4);

/// What the capture thread needs: which servers are dependencies, and where their
/// exchanges go (never blocking: a full queue drops the call and counts it).
#[derive(Clone, Debug)]
pub struct OutboundTap {
    pub dependencies: Dependencies,
    /// Legacy's own server ports (empty when learned from a capture file).
    pub inbound_ports: Vec<u16>,
    pub tx: mpsc::Sender<(Exchange, SocketAddr)>,
    pub dropped: Arc<AtomicU64>,
    /// Exchanges (and drops) on a dependency's port to a server not given with
    /// `--dependency`: not calls, not inbound, counted here.
    pub other: Arc<AtomicU64>,
}

impl OutboundTap {
    /// Takes `ex` when it is a call to a dependency (queued for the recorder) or other
    /// traffic on a dependency's port (counted); hands it back when it is inbound.
    pub fn take(&self, ex: Exchange) -> Option<Exchange> {
        match self.classify(&ex.flow.server) {
            Traffic::Inbound => Some(ex),
            Traffic::Dependency(dep) => {
                if self.tx.try_send((ex, dep)).is_err() {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                }
                None
            }
            Traffic::Other => {
                self.other.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    pub fn classify(&self, server: &SocketAddr) -> Traffic {
        self.dependencies.classify(server, &self.inbound_ports)
    }

    /// Counts `n` exchanges of a connection that is not inbound lost in framing.
    pub fn count_lost(&self, server: &SocketAddr, n: u64) {
        match self.classify(server) {
            Traffic::Inbound => {}
            Traffic::Dependency(_) => {
                self.dropped.fetch_add(n, Ordering::Relaxed);
            }
            Traffic::Other => {
                self.other.fetch_add(n, Ordering::Relaxed);
            }
        }
    }

    pub fn is_inbound(&self, server: &SocketAddr) -> bool {
        self.classify(server) == Traffic::Inbound
    }
}

/// Settings of the side-effect stages.
#[derive(Clone, Debug)]
pub struct EffectsConfig {
    pub dependencies: Dependencies,
    /// Legacy's own server ports (`--port`; empty when learned from a capture file).
    pub inbound_ports: Vec<u16>,
    pub propagation: Propagation,
    /// Answer the candidate's calls from the recordings and diff both sides.
    pub virtualize: bool,
    pub limits: BookLimits,
    pub wait: Duration,
}

/// Counters of the virtual dependency.
#[derive(Debug, Default)]
pub struct VirtualCounters {
    pub calls: AtomicU64,
    /// Answered from the inbound exchange named by a propagated id.
    pub matched_by_id: AtomicU64,
    /// Answered by content among all followed exchanges (the call carried no id).
    pub matched_by_content: AtomicU64,
    /// Calls without an id that several recordings fit equally well (refused).
    pub content_ties: AtomicU64,
    /// Answered 502: no recording matched.
    pub unmatched: AtomicU64,
    pub malformed: AtomicU64,
    /// Messages the virtual mail relay accepted from the candidate.
    pub smtp_messages: AtomicU64,
    /// Candidate connections to a virtual listener closed unserved because
    /// [`MAX_VIRTUAL_CONNECTIONS`] were already open on it.
    pub connections_refused: AtomicU64,
    /// Of those, messages no inbound exchange could be named for (no propagated id, and
    /// not exactly one exchange in the candidate's hands): counted, not diffed.
    pub smtp_unattributed: AtomicU64,
    /// Compared exchanges with at least one side-effect diff (counted by the shadow
    /// stage, which alone knows whether the diffs were compared).
    pub exchanges_with_diffs: AtomicU64,
}

/// Figures of a run's side effects (stored with each ledger snapshot as JSON; fields
/// added later read as 0 from older rows).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct EffectsFigures {
    pub book: BookStats,
    /// Dependency exchanges lost on the capture → recorder queue (or in framing).
    pub recorder_queue_full: u64,
    /// Exchanges on a dependency's port to a server not given with `--dependency` (not
    /// calls, not inbound).
    pub other_on_dependency_ports: u64,
    pub candidate_calls: u64,
    pub matched_by_id: u64,
    pub matched_by_content: u64,
    pub content_ties: u64,
    pub unmatched: u64,
    pub malformed: u64,
    /// Messages the virtual mail relay accepted from the candidate (none delivered).
    pub smtp_messages: u64,
    /// Of those, messages not tied to an inbound exchange (counted, not diffed).
    pub smtp_unattributed: u64,
    /// Candidate connections to a virtual listener closed unserved (too many at once).
    pub virtual_connections_refused: u64,
    /// Compared exchanges with at least one side-effect diff (exact, where the card's
    /// `side_effect_mismatched` is an upper bound over diff kinds).
    pub exchanges_with_diffs: u64,
}

impl EffectsFigures {
    /// Adds `o` (summing over hosts).
    pub fn add(&mut self, o: &EffectsFigures) {
        self.book.add(&o.book);
        self.recorder_queue_full += o.recorder_queue_full;
        self.other_on_dependency_ports += o.other_on_dependency_ports;
        self.candidate_calls += o.candidate_calls;
        self.matched_by_id += o.matched_by_id;
        self.matched_by_content += o.matched_by_content;
        self.content_ties += o.content_ties;
        self.unmatched += o.unmatched;
        self.malformed += o.malformed;
        self.smtp_messages += o.smtp_messages;
        self.smtp_unattributed += o.smtp_unattributed;
        self.exchanges_with_diffs += o.exchanges_with_diffs;
    }
}

/// The side-effect stages' shared state.
pub struct Effects {
    cfg: EffectsConfig,
    book: Mutex<Book>,
    changed: Notify,
    masker: Arc<Masker>,
    templater: Arc<RouteTemplater>,
    pub counters: VirtualCounters,
    pub recorder_dropped: Arc<AtomicU64>,
    pub other_traffic: Arc<AtomicU64>,
}

impl std::fmt::Debug for Effects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Effects")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl Effects {
    pub fn new(cfg: EffectsConfig, masker: Arc<Masker>, templater: Arc<RouteTemplater>) -> Self {
        Self {
            book: Mutex::new(Book::new(cfg.limits)),
            cfg,
            changed: Notify::new(),
            masker,
            templater,
            counters: VirtualCounters::default(),
            recorder_dropped: Arc::new(AtomicU64::new(0)),
            other_traffic: Arc::new(AtomicU64::new(0)),
        }
    }

    pub fn config(&self) -> &EffectsConfig {
        &self.cfg
    }

    /// The capture thread's side, and the queue the recorder reads.
    pub fn outbound_tap(&self) -> (OutboundTap, mpsc::Receiver<(Exchange, SocketAddr)>) {
        let (tx, rx) = mpsc::channel(OUTBOUND_QUEUE);
        let tap = OutboundTap {
            dependencies: self.cfg.dependencies.clone(),
            inbound_ports: self.cfg.inbound_ports.clone(),
            tx,
            dropped: self.recorder_dropped.clone(),
            other: self.other_traffic.clone(),
        };
        (tap, rx)
    }

    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        // A panic while holding the book leaves plain data behind: keep using it.
        self.book
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records legacy's call `ex` to `dependency` (masked).
    pub fn record_call(&self, ex: &Exchange, dependency: SocketAddr) {
        let call = record::record(ex, dependency, &self.masker, &self.cfg.propagation);
        self.book().add_call(call);
        self.changed.notify_waiters();
    }

    /// Follows inbound exchange `ex` (before it is replayed).
    pub fn register(&self, ex: &Exchange) -> Result<(), BookFull> {
        let ids = self.cfg.propagation.ids(&ex.request.headers);
        // The handler's time: after the request was read, before the answer began.
        let window = (ex.timing.request_last_ns, ex.timing.response_first_ns);
        // Only an exchange without ids is matched to calls by content.
        let tokens = if ids.is_empty() {
            record::content_tokens(&[&ex.request.body, &ex.response.body])
        } else {
            Vec::new()
        };
        let r = self.book().register_with_tokens(ex.id, ids, window, tokens);
        self.changed.notify_waiters();
        r
    }

    /// The request the candidate gets for `id` (its ids name the exchange from now on).
    pub fn bind_sent(&self, id: CorrelationId, sent: &Request) {
        let ids = self.cfg.propagation.ids(&sent.headers);
        self.book().bind_sent(id, ids);
        self.changed.notify_waiters();
    }

    /// Stops following `id` without comparing (the exchange was not replayed).
    pub fn forget(&self, id: &CorrelationId) {
        self.book().finish(id);
    }

    fn template(&self) -> impl Fn(&str, &str) -> String + '_ {
        |m: &str, t: &str| self.templater.route(m, t)
    }

    /// One attempt to answer: the recorded response when a recording matches now.
    fn try_answer(
        &self,
        dep: SocketAddr,
        ids: &[String],
        masked: &Request,
        tie: &mut bool,
        settled: &mut bool,
    ) -> Option<Response> {
        let tpl = self.template();
        let mut book = self.book();
        let (owner, index) = if ids.is_empty() {
            // No id: the best recording over the followed exchanges whose replay carried
            // no id either (a call of one that did would carry it).
            let mut best: Option<(Option<CorrelationId>, usize, f64)> = None;
            *tie = false;
            let mut consider = |owner: Option<CorrelationId>, found: Option<(usize, f64)>| {
                let Some((i, s)) = found else { return };
                match best {
                    Some((_, _, b)) if s < b => {}
                    Some((_, _, b)) if (s - b).abs() < f64::EPSILON => *tie = true,
                    _ => {
                        best = Some((owner, i, s));
                        *tie = false;
                    }
                }
            };
            for (id, inb) in book.inbound_iter_mut() {
                if inb.sent_ids.is_empty() && inb.raw_ids.is_empty() {
                    consider(Some(*id), virtual_dep::pick(&inb.legacy, dep, masked, &tpl));
                }
            }
            consider(None, virtual_dep::pick(book.orphans(), dep, masked, &tpl));
            let (owner, i, _) = best?;
            if *tie {
                // Several recordings fit as well: taking one could take another
                // exchange's answer. Refused (a 502), and counted.
                *settled = true;
                return None;
            }
            // The body must look like the recording's, not merely share the route.
            let recorded = match owner {
                Some(o) => &book.inbound(&o)?.legacy.get(i)?.call.request.body,
                None => &book.orphans().get(i)?.call.request.body,
            };
            if virtual_dep::similarity(recorded, &masked.body) < MIN_CONTENT_SIMILARITY {
                return None;
            }
            self.counters
                .matched_by_content
                .fetch_add(1, Ordering::Relaxed);
            let Some(owner) = owner else {
                // Its exchange has concluded: answered, not diffed.
                return book.take_orphan(i).map(|r| r.call.response);
            };
            (owner, i)
        } else {
            let owner = book.owner_by_sent(ids)?;
            let inb = book.inbound(&owner)?;
            let Some((i, _)) = virtual_dep::pick(&inb.legacy, dep, masked, &tpl) else {
                // Legacy's calls of this exchange to `dep` are here and all answered:
                // this one is extra, no need to wait for another recording.
                *settled = inb.legacy.iter().any(|r| r.call.dependency == dep);
                return None;
            };
            self.counters.matched_by_id.fetch_add(1, Ordering::Relaxed);
            (owner, i)
        };
        let inb = book.inbound_mut(&owner)?;
        let cap = self.cfg.limits.per_exchange;
        let rec = inb.legacy.get_mut(index)?;
        rec.used = true;
        let resp = rec.call.response.clone();
        if inb.candidate.len() < cap {
            inb.candidate.push(CandidateCall {
                dependency: dep,
                request: masked.clone(),
                matched: Some(index),
            });
        }
        Some(resp)
    }

    /// The candidate's call `req` to `dep`: legacy's recorded response for the matching
    /// call of the same inbound exchange, waiting (bounded) for the recording; `None`
    /// (a 502) when nothing matches, counted and kept as an extra call.
    pub async fn answer(&self, dep: SocketAddr, req: Request) -> Option<Response> {
        self.counters.calls.fetch_add(1, Ordering::Relaxed);
        let ids = self.cfg.propagation.ids(&req.headers);
        let masked = self.masker.mask_request(&req);
        // Without an id a late recording is only a guess: wait less (the replay lane
        // waits with the call).
        let wait = if ids.is_empty() {
            self.cfg.wait.min(CONTENT_WAIT)
        } else {
            self.cfg.wait
        };
        let deadline = tokio::time::Instant::now() + wait;
        let (mut tie, mut settled) = (false, false);
        loop {
            let changed = self.changed.notified();
            if let Some(resp) = self.try_answer(dep, &ids, &masked, &mut tie, &mut settled) {
                return Some(resp);
            }
            if settled || tokio::time::timeout_at(deadline, changed).await.is_err() {
                break;
            }
        }
        if tie {
            self.counters.content_ties.fetch_add(1, Ordering::Relaxed);
        }
        self.counters.unmatched.fetch_add(1, Ordering::Relaxed);
        let mut book = self.book();
        let cap = self.cfg.limits.per_exchange;
        if let Some(owner) = book.owner_by_sent(&ids)
            && let Some(inb) = book.inbound_mut(&owner)
            && inb.candidate.len() < cap
        {
            inb.candidate.push(CandidateCall {
                dependency: dep,
                request: masked,
                matched: None,
            });
        }
        None
    }

    /// A message the candidate sent to SMTP dependency `dep` (accepted by the virtual
    /// relay, never delivered): kept, masked, as a call of the inbound exchange its
    /// propagated id names, or else of the one exchange the candidate has in hand. No
    /// legacy mail is recorded, so it is diffed as an extra side effect.
    pub fn candidate_message(&self, dep: SocketAddr, msg: &virtual_smtp::Message) {
        self.counters.smtp_messages.fetch_add(1, Ordering::Relaxed);
        let names = &self.cfg.propagation;
        let req = virtual_smtp::message_call(msg, &|n| names.carries(n));
        let ids = names.ids(&req.headers);
        let masked = self.masker.mask_request(&req);
        let mut book = self.book();
        let owner = if ids.is_empty() {
            let mut replaying = book
                .inbound_iter_mut()
                .filter(|(_, inb)| inb.replaying)
                .map(|(id, _)| *id);
            match (replaying.next(), replaying.next()) {
                (Some(only), None) => Some(only),
                _ => None,
            }
        } else {
            book.owner_by_sent(&ids)
        };
        let cap = self.cfg.limits.per_exchange;
        match owner.and_then(|o| book.inbound_mut(&o)) {
            Some(inb) if inb.candidate.len() < cap => inb.candidate.push(CandidateCall {
                dependency: dep,
                request: masked,
                matched: None,
            }),
            Some(inb) => inb.over_cap += 1,
            None => {
                self.counters
                    .smtp_unattributed
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Stops following `id`; with `--virtualize-egress`, its side-effect diffs.
    pub fn conclude(&self, id: &CorrelationId, comparator: &Comparator) -> Vec<Diff> {
        let Some(inb) = self.book().finish(id) else {
            return Vec::new();
        };
        if !self.cfg.virtualize {
            return Vec::new();
        }
        diff::side_effect_diffs(&inb, comparator, &self.template())
    }

    pub fn figures(&self) -> EffectsFigures {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let c = &self.counters;
        EffectsFigures {
            book: self.book().stats(),
            recorder_queue_full: l(&self.recorder_dropped),
            other_on_dependency_ports: l(&self.other_traffic),
            candidate_calls: l(&c.calls),
            matched_by_id: l(&c.matched_by_id),
            matched_by_content: l(&c.matched_by_content),
            content_ties: l(&c.content_ties),
            unmatched: l(&c.unmatched),
            malformed: l(&c.malformed),
            smtp_messages: l(&c.smtp_messages),
            smtp_unattributed: l(&c.smtp_unattributed),
            exchanges_with_diffs: l(&c.exchanges_with_diffs),
            virtual_connections_refused: l(&c.connections_refused),
        }
    }
}

/// Records dependency exchanges from the capture until its queue closes.
pub async fn recorder(effects: Arc<Effects>, mut rx: mpsc::Receiver<(Exchange, SocketAddr)>) {
    while let Some((ex, dep)) = rx.recv().await {
        effects.record_call(&ex, dep);
    }
}

impl std::fmt::Display for EffectsFigures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let b = &self.book;
        write!(
            f,
            "legacy calls recorded {} (by id {}, by time window {}, ambiguous {}, taken over by a better fit {}, unsettled at their exchange's end {}, unattributed {}, over the per-exchange cap {}, over the byte budget {}, lost on the recorder queue {}); other servers on dependency ports (not calls, not inbound) {}; candidate calls {} (answered by id {}, by content {}, refused as ties {}, unmatched 502 {}, malformed {}); candidate mail accepted by the virtual relay {} (not tied to an exchange {}); candidate connections closed unserved (too many at once) {}; exchanges not followed (book full) {}; compared exchanges with a side-effect diff {}",
            b.calls_recorded,
            b.attributed_exact,
            b.attributed_window,
            b.ambiguous,
            b.taken_over,
            b.unsettled,
            b.unattributed,
            b.over_cap,
            b.over_budget,
            self.recorder_queue_full,
            self.other_on_dependency_ports,
            self.candidate_calls,
            self.matched_by_id,
            self.matched_by_content,
            self.content_ties,
            self.unmatched,
            self.malformed,
            self.smtp_messages,
            self.smtp_unattributed,
            self.virtual_connections_refused,
            b.inbound_refused,
            self.exchanges_with_diffs
        )
    }
}

/// Connections one virtual listener serves at once: a candidate opening more (it may
/// hold up to `--candidate-pids` processes, each with many sockets) costs the daemon no
/// more tasks or buffers; the extra ones are closed and counted.
pub const MAX_VIRTUAL_CONNECTIONS: usize = 256;

/// Accepts the candidate's connections on a virtual listener and serves each with
/// `serve_one`, at most [`MAX_VIRTUAL_CONNECTIONS`] at a time, until the runtime stops.
pub(crate) async fn accept_bounded<F, Fut>(
    listener: tokio::net::TcpListener,
    effects: Arc<Effects>,
    dependency: std::net::SocketAddr,
    serve_one: F,
) where
    F: Fn(tokio::net::TcpStream, Arc<Effects>, std::net::SocketAddr) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let open = Arc::new(tokio::sync::Semaphore::new(MAX_VIRTUAL_CONNECTIONS));
    loop {
        let Ok((sock, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            let n = effects
                .counters
                .connections_refused
                .fetch_add(1, Ordering::Relaxed);
            if n.is_multiple_of(1000) {
                tracing::warn!(%dependency, refused = n + 1, "virtual dependency: too many candidate connections at once, closing the extra ones");
            }
            continue;
        };
        let served = serve_one(sock, effects.clone(), dependency);
        tokio::spawn(async move {
            served.await;
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::FlowKey;
    use crate::compare::CompareConfig;
    use crate::http::{Header, Timing};
    use crate::mask::{MaskConfig, MaskKey};

    const DEP: &str = "10.0.0.9:7070";

    fn effects() -> Effects {
        let key = MaskKey::from_bytes(&[7u8; 32]).expect("key");
        let masker = Masker::new(MaskConfig::with_defaults(key)).expect("masker");
        let cfg = EffectsConfig {
            dependencies: Dependencies::new(vec![DEP.parse().expect("addr")]),
            inbound_ports: vec![8080],
            propagation: Propagation::default(),
            virtualize: true,
            limits: BookLimits::default(),
            wait: Duration::from_millis(50),
        };
        Effects::new(
            cfg,
            Arc::new(masker),
            Arc::new(RouteTemplater::new(&[]).expect("templater")),
        )
    }

    fn request(target: &str, id: Option<&str>, body: &str) -> Request {
        let mut headers = vec![Header::new("Content-Type", "application/json")];
        if let Some(id) = id {
            headers.push(Header::new("X-Request-Id", id));
        }
        Request {
            method: "POST".into(),
            target: target.into(),
            version: 1,
            headers,
            body: bytes::Bytes::from(body.to_string()),
        }
    }

    fn exchange(server: &str, req: Request, resp_body: &str, t: u64) -> Exchange {
        Exchange {
            id: CorrelationId::new(),
            flow: FlowKey {
                client: "10.0.0.1:40000".parse().expect("addr"),
                server: server.parse().expect("addr"),
            },
            request: req,
            response: Response {
                version: 1,
                status: 201,
                reason: "Created".into(),
                headers: vec![Header::new("Content-Type", "application/json")],
                body: bytes::Bytes::from(resp_body.to_string()),
            },
            timing: Timing {
                request_first_ns: t,
                request_last_ns: t,
                response_first_ns: t + 10,
                response_last_ns: t + 10,
            },
        }
    }

    /// Legacy's call for inbound `n` recorded, the inbound exchange followed and replayed.
    fn legacy_order(e: &Effects, n: u64) -> Exchange {
        let id = format!("req-{n}");
        let call = exchange(
            DEP,
            request(
                "/charges",
                Some(&id),
                &format!(r#"{{"order":{n},"amount":1{n}.5}}"#),
            ),
            &format!(r#"{{"charge":"ch_{n}"}}"#),
            1_000 * n + 5,
        );
        e.record_call(&call, DEP.parse().expect("addr"));
        let inbound = exchange(
            "10.0.0.2:8080",
            request("/orders", Some(&id), "{}"),
            "{}",
            1_000 * n,
        );
        e.register(&inbound).expect("room");
        e.bind_sent(inbound.id, &inbound.request);
        inbound
    }

    #[tokio::test]
    async fn each_call_gets_its_own_exchange_recording_once_and_the_rest_is_diffed() {
        let e = effects();
        let dep: SocketAddr = DEP.parse().expect("addr");
        let (a, b) = (legacy_order(&e, 1), legacy_order(&e, 2));
        // b's call first, then a's with another amount, then an extra call for a.
        let rb = e
            .answer(
                dep,
                request("/charges", Some("req-2"), r#"{"order":2,"amount":12.5}"#),
            )
            .await
            .expect("answered");
        assert_eq!(rb.body.as_ref(), br#"{"charge":"ch_2"}"#);
        let ra = e
            .answer(
                dep,
                request("/charges", Some("req-1"), r#"{"order":1,"amount":99}"#),
            )
            .await
            .expect("answered");
        assert_eq!(ra.body.as_ref(), br#"{"charge":"ch_1"}"#);
        let extra = e
            .answer(
                dep,
                request("/charges", Some("req-1"), r#"{"order":1,"amount":1}"#),
            )
            .await;
        assert!(extra.is_none(), "a recording answers once");
        let cmp = Comparator::new(CompareConfig::default()).expect("comparator");
        let keys = |d: Vec<Diff>| {
            d.into_iter()
                .map(|d| d.kind.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            keys(e.conclude(&a.id, &cmp)),
            vec![
                "side_effect(POST /charges,field($.amount,value))",
                "side_effect(POST /charges,extra)"
            ]
        );
        assert!(e.conclude(&b.id, &cmp).is_empty());
        let f = e.figures();
        assert_eq!(
            (f.matched_by_id, f.unmatched, f.book.attributed_exact),
            (2, 1, 2)
        );
    }

    #[tokio::test]
    async fn a_legacy_call_the_candidate_never_makes_is_missing() {
        let e = effects();
        let a = legacy_order(&e, 3);
        let cmp = Comparator::new(CompareConfig::default()).expect("comparator");
        let d = e.conclude(&a.id, &cmp);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].kind.to_string(), "side_effect(POST /charges,missing)");
        // Concluded: a late call finds nothing (502 after the bounded wait).
        let dep: SocketAddr = DEP.parse().expect("addr");
        assert!(
            e.answer(dep, request("/charges", Some("req-3"), "{}"))
                .await
                .is_none()
        );
    }

    /// A candidate holding more connections open than a virtual listener serves at once:
    /// the extra one is closed at once and counted; the ones served stay open.
    #[tokio::test]
    async fn a_virtual_listener_serves_a_bounded_number_of_connections() {
        use tokio::io::AsyncReadExt as _;
        let e = Arc::new(effects());
        let dep: SocketAddr = DEP.parse().expect("addr");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(virtual_dep::serve(listener, e.clone(), dep));
        let mut held = Vec::new();
        for _ in 0..MAX_VIRTUAL_CONNECTIONS {
            held.push(tokio::net::TcpStream::connect(addr).await.expect("connect"));
        }
        let mut extra = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(10), extra.read(&mut buf))
            .await
            .expect("closed in time");
        assert!(
            matches!(n, Ok(0) | Err(_)),
            "the extra connection is closed: {n:?}"
        );
        assert_eq!(e.counters.connections_refused.load(Ordering::Relaxed), 1);
        assert_eq!(
            e.figures().virtual_connections_refused,
            1,
            "in the stored figures"
        );
        // A served connection is still open (waiting for its request).
        let still = tokio::time::timeout(Duration::from_millis(200), held[0].read(&mut buf)).await;
        assert!(still.is_err(), "served connections stay open: {still:?}");
    }

    /// Through a real listener: a chunked call (as clients streaming a body send them) is
    /// answered with the recording, then a keep-alive Content-Length one on the same
    /// connection with a 502.
    #[tokio::test]
    async fn the_virtual_listener_answers_a_chunked_call() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let e = Arc::new(effects());
        let dep: SocketAddr = DEP.parse().expect("addr");
        legacy_order(&e, 4);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(virtual_dep::serve(listener, e.clone(), dep));
        let mut c = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let body = r#"{"order":4,"amount":14.5}"#;
        let (first, rest) = body.split_at(10);
        let chunked = format!(
            "POST /charges HTTP/1.1\r\nX-Request-Id: req-4\r\nContent-Type: application/json\r\n\
             Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{first}\r\n{:x}\r\n{rest}\r\n0\r\n\r\n\
             POST /charges HTTP/1.1\r\nX-Request-Id: req-4\r\nContent-Length: 2\r\n\r\n{{}}",
            first.len(),
            rest.len()
        );
        c.write_all(chunked.as_bytes()).await.expect("write");
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&got).contains("no recorded legacy call") {
            let n = tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf))
                .await
                .expect("answers in time")
                .expect("read");
            assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&got);
        assert!(
            text.starts_with("HTTP/1.1 201 Created\r\n") && text.contains(r#"{"charge":"ch_4"}"#),
            "{text}"
        );
        assert!(text.contains("HTTP/1.1 502 Bad Gateway"), "{text}");
        let f = e.figures();
        assert_eq!((f.matched_by_id, f.unmatched, f.malformed), (1, 1, 0));
    }

    fn mail(to: &str, id: Option<&str>) -> virtual_smtp::Message {
        let id = id.map_or_else(String::new, |i| format!("X-Request-Id: {i}\r\n"));
        virtual_smtp::Message {
            from: "orders@example.com".into(),
            recipients: vec![to.into()],
            data: format!("{id}Subject: Order confirmed\r\n\r\nThanks, {to}\r\n").into_bytes(),
        }
    }

    #[test]
    fn candidate_mail_is_an_extra_side_effect_of_its_exchange_and_masked() {
        let e = effects();
        let smtp: SocketAddr = "10.0.0.9:25".parse().expect("addr");
        let a = legacy_order(&e, 5);
        e.candidate_message(smtp, &mail("ann.lee@example.org", Some("req-5")));
        let cmp = Comparator::new(CompareConfig::default()).expect("comparator");
        let d = e.conclude(&a.id, &cmp);
        let kinds: Vec<String> = d.iter().map(|d| d.kind.to_string()).collect();
        assert_eq!(
            kinds,
            vec![
                "side_effect(SMTP MAIL TO 1 recipient,extra)",
                "side_effect(POST /charges,missing)"
            ]
        );
        let shown = d[0].candidate.clone().expect("the message");
        assert!(shown.contains("Order confirmed"), "{shown}");
        assert!(
            !shown.contains("ann.lee"),
            "the recipient is masked: {shown}"
        );
        let f = e.figures();
        assert_eq!((f.smtp_messages, f.smtp_unattributed), (1, 0));
    }

    #[test]
    fn candidate_mail_without_an_id_goes_to_the_one_exchange_in_the_candidates_hands() {
        let e = effects();
        let smtp: SocketAddr = "10.0.0.9:25".parse().expect("addr");
        let a = legacy_order(&e, 6);
        e.candidate_message(smtp, &mail("bo@example.net", None));
        let b = legacy_order(&e, 7);
        // Two exchanges replaying: which one sent it is unknown, so it is counted only.
        e.candidate_message(smtp, &mail("cy@example.net", None));
        let cmp = Comparator::new(CompareConfig::default()).expect("comparator");
        let extra = |d: Vec<Diff>| {
            d.iter()
                .filter(|d| d.kind.to_string().contains("SMTP"))
                .count()
        };
        assert_eq!(extra(e.conclude(&a.id, &cmp)), 1);
        assert_eq!(extra(e.conclude(&b.id, &cmp)), 0);
        let f = e.figures();
        assert_eq!((f.smtp_messages, f.smtp_unattributed), (2, 1));
    }

    /// What the server sent until `want` appeared `times` times (or its close).
    async fn read_until(c: &mut tokio::net::TcpStream, want: &str, times: usize) -> String {
        use tokio::io::AsyncReadExt as _;
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while String::from_utf8_lossy(&got).matches(want).count() < times {
            let n = tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf))
                .await
                .expect("answers in time")
                .expect("read");
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&got).into_owned()
    }

    /// Through a real listener: pipelined commands are answered in order, a message is
    /// kept, a message left without its end and an overlong line keep nothing, and the
    /// overlong line closes the connection.
    #[tokio::test]
    async fn the_virtual_relay_answers_pipelined_commands_and_refuses_overlong_lines() {
        use tokio::io::AsyncWriteExt as _;
        let e = Arc::new(effects());
        let smtp: SocketAddr = "10.0.0.9:25".parse().expect("addr");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(virtual_smtp::serve(listener, e.clone(), smtp));
        let mut c = tokio::net::TcpStream::connect(addr).await.expect("connect");
        assert!(read_until(&mut c, "\r\n", 1).await.starts_with("220 "));
        c.write_all(
            b"EHLO t\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nDATA\r\nhi\r\n.\r\nNOOP\r\n\
              MAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nDATA\r\nno end\r\n",
        )
        .await
        .expect("write");
        let text = read_until(&mut c, "354 end data", 2).await;
        let codes: Vec<&str> = text.lines().filter_map(|l| l.get(..4)).collect();
        assert_eq!(
            codes,
            [
                "250-", "250-", "250-", "250 ", "250 ", "250 ", "354 ", "250 ", "250 ", "250 ",
                "250 ", "354 "
            ],
            "{text}"
        );
        c.write_all(&vec![b'x'; 4 * virtual_smtp::MAX_LINE])
            .await
            .expect("write");
        let text = read_until(&mut c, "closing", 1).await;
        assert!(text.starts_with("500 "), "{text}");
        let f = e.figures();
        assert_eq!(f.smtp_messages, 1, "only the finished message is kept");
    }

    #[test]
    fn the_capture_hands_over_dependency_calls_only() {
        let e = effects();
        let (tap, mut rx) = e.outbound_tap();
        let inbound = exchange("10.0.0.2:8080", request("/orders", None, "{}"), "{}", 1);
        assert!(
            tap.take(inbound).is_some(),
            "an inbound exchange is handed back"
        );
        let call = exchange(DEP, request("/charges", None, "{}"), "{}", 1);
        assert!(tap.take(call).is_none());
        assert!(rx.try_recv().is_ok());
    }
}
