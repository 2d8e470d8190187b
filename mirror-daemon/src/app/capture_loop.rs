//! The capture thread: segments (live ring buffer or capture file) → reassembly → HTTP
//! framing → exchanges on a bounded queue. Runs on a dedicated OS thread so nothing in
//! the async pipeline can slow the reader; per segment it does not allocate.
use std::{
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::sync::mpsc;

use crate::{
    accounting::{DropReason, Ledger, Outcome},
    capture::{
        FlowKey, Segment,
        kernel::SegmentReader,
        pcap,
        reorder::{CausalReorder, DEFAULT_REORDER_WINDOW, ReorderStats},
    },
    http::{Exchange, ExchangeTracker, FrameOnly, HttpOutput, HttpStats, Limits, PairingCounters},
    pipeline,
    reassembly::{Reassembler, ReassemblyConfig, ReassemblyStats, StreamEvent},
};

/// What the capture thread hands the pipeline, in capture order.
#[derive(Debug)]
pub enum Captured {
    Exchange(Exchange),
    /// The captured connection ended (after its last exchange above): the replay closes
    /// its candidate connection at the same point.
    Closed {
        flow: FlowKey,
        ts_ns: u64,
    },
}

/// Where segments come from.
pub enum Source {
    Live(SegmentReader),
    File { path: PathBuf, ports: Vec<u16> },
}

/// HTTP connection states kept by default (the `run` command's figure).
pub const DEFAULT_MAX_CONNECTIONS: usize = 100_000;

/// Settings of the capture thread.
#[derive(Clone, Debug)]
pub struct CaptureSettings {
    pub reassembly: ReassemblyConfig,
    pub limits: Limits,
    pub max_connections: usize,
    /// Capture files: segments held to restore causal order across directions
    /// (`capture::reorder`); 0 reads the file as it is.
    pub reorder_window: usize,
    /// Legacy's calls to its dependencies (`--dependency`): taken out of the inbound
    /// stream and handed to the side-effect recorder; never counted as inbound exchanges.
    pub outbound: Option<crate::effects::OutboundTap>,
    /// The run's sampler (`--include/--exclude`, `--sample`, `--sticky`): decided here,
    /// before the exchange queue, so an exchange that will not be replayed never takes
    /// queue space and under a flood still ends as `excluded` / `sampled_out`, not
    /// `queue_full`. `None`: every exchange is queued (`exchanges` command).
    pub sampler: Option<Arc<crate::sample::Sampler>>,
}

// Not derived: a derived 0 became a table of one connection, so `exchanges` evicted every
// connection but the latest as soon as two overlapped.
impl Default for CaptureSettings {
    fn default() -> Self {
        Self {
            reassembly: ReassemblyConfig::default(),
            limits: Limits::default(),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            reorder_window: DEFAULT_REORDER_WINDOW,
            outbound: None,
            sampler: None,
        }
    }
}

/// Live figures of the capture thread (shared with reports and metrics).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct CaptureFigures {
    pub segments: u64,
    pub payload_bytes: u64,
    pub malformed_records: u64,
    /// Live: segments stamped outside the time both tap directions were attached
    /// (before the second attach, after the first detach), discarded.
    pub segments_before_attach: u64,
    pub reassembly: ReassemblyStats,
    pub http: HttpStats,
    pub open_flows: usize,
    pub buffered_bytes: usize,
    pub file: Option<pcap::PcapStats>,
    /// Capture files: the cross-direction reorder stage.
    pub reorder: ReorderStats,
    /// The part of `http`'s pairing figures on connections that are not inbound
    /// (dependency calls, other servers on their ports), left out of [`Self::pairing`].
    pub not_inbound_pairing: PairingCounters,
}

impl CaptureFigures {
    /// The http stage's pairing counters (stored, exposed and shown as one shape).
    pub fn pairing(&self) -> PairingCounters {
        PairingCounters::from(&self.http).minus(&self.not_inbound_pairing)
    }

    /// The pairing counters of the figures shared by the capture thread, as last published.
    pub fn pairing_of(figures: &Mutex<CaptureFigures>) -> PairingCounters {
        figures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pairing()
    }
}

/// Where the HTTP stage's outputs go.
struct Outlet {
    exchanges: mpsc::Sender<Captured>,
    outbound: Option<crate::effects::OutboundTap>,
    sampler: Option<Arc<crate::sample::Sampler>>,
    ledger: Arc<Ledger>,
    /// Offline input waits for the pipeline instead of dropping: no legacy user waits on
    /// a file, and a golden set should be replayed whole.
    wait_when_full: bool,
}

impl Outlet {
    /// Whether `flow` is legacy's inbound traffic (not a dependency call, not another
    /// server on a dependency's port).
    fn is_inbound(&self, flow: &FlowKey) -> bool {
        self.outbound
            .as_ref()
            .is_none_or(|t| t.is_inbound(&flow.server))
    }

    fn deliver(&self, o: HttpOutput) {
        match o {
            HttpOutput::Exchange(ex) => self.exchange(ex, true),
            // Framed only, under the "nothing is replayed" rule (`frame_only_rule`).
            HttpOutput::FramedOnly(ex) => self.exchange(ex, false),
            HttpOutput::Dropped { flow, count, .. } if !self.is_inbound(&flow) => {
                // A dependency call (or other traffic on its port) lost in framing: not
                // an inbound exchange.
                if let Some(t) = &self.outbound {
                    t.count_lost(&flow.server, count);
                }
            }
            HttpOutput::Dropped { reason, count, .. } => self.ledger.saw_dropped(reason, count),
        }
    }

    /// An inbound exchange is counted once and decided before the queue; one framed
    /// without its content is never queued (it ends `sampled_out` even if the rate rose
    /// since its head was parsed: there is nothing to replay).
    fn exchange(&self, ex: Exchange, with_content: bool) {
        let ex = match &self.outbound {
            Some(tap) => match tap.take(ex) {
                Some(ex) => ex,
                None => return,
            },
            None => ex,
        };
        self.ledger.saw(1);
        let decided = self.sampler.as_ref().and_then(|s| s.decide(&ex).outcome());
        if let Some(o) = decided.or((!with_content).then_some(Outcome::SampledOut)) {
            self.ledger.record(o);
            return;
        }
        let item = Captured::Exchange(ex);
        if !self.wait_when_full {
            pipeline::offer(&self.exchanges, item, &self.ledger);
        } else if self.exchanges.blocking_send(item).is_err() {
            self.ledger.record(Outcome::Dropped(DropReason::QueueFull));
        }
    }

    /// Passes a connection's end on after the tracker flushed its exchanges. Not an
    /// exchange: when the queue is full live it is skipped (the replay then closes the
    /// candidate connection when idle).
    fn stream_event(&self, ev: &StreamEvent<'_>) {
        if let StreamEvent::Closed { flow, ts_ns, .. } = ev {
            if !self.is_inbound(flow) {
                return;
            }
            let item = Captured::Closed {
                flow: *flow,
                ts_ns: *ts_ns,
            };
            if self.wait_when_full {
                let _ = self.exchanges.blocking_send(item);
            } else {
                let _ = self.exchanges.try_send(item);
            }
        }
    }
}

struct Stages {
    reassembler: Reassembler,
    tracker: ExchangeTracker,
    outlet: Outlet,
    segments: u64,
    payload_bytes: u64,
    before_attach: u64,
    reorder: ReorderStats,
    /// Flow-table refusals already in the ledger.
    refusals_counted: u64,
    /// Pairing figures of connections that are not inbound (see [`feed`]).
    not_inbound: PairingCounters,
}

impl Stages {
    fn new(reassembler: Reassembler, tracker: ExchangeTracker, outlet: Outlet) -> Self {
        Self {
            reassembler,
            tracker,
            outlet,
            segments: 0,
            payload_bytes: 0,
            before_attach: 0,
            reorder: ReorderStats::default(),
            refusals_counted: 0,
            not_inbound: PairingCounters::default(),
        }
    }

    fn segment(&mut self, seg: &Segment<'_>) {
        self.segments += 1;
        self.payload_bytes += seg.payload.len() as u64;
        let (tracker, outlet, apart) = (&mut self.tracker, &self.outlet, &mut self.not_inbound);
        self.reassembler
            .process(seg, &mut |ev| feed(tracker, outlet, apart, &ev));
        self.count_refusals();
    }

    /// A connection the full flow table refused never becomes an exchange: it is seen and
    /// dropped as `flow_table_full`, so the loss is in the ledger, not only on stderr.
    fn count_refusals(&mut self) {
        let refused = self.reassembler.stats().new_flow_refusals_table_full;
        if refused > self.refusals_counted {
            self.outlet
                .ledger
                .saw_dropped(DropReason::FlowTableFull, refused - self.refusals_counted);
            self.refusals_counted = refused;
        }
    }

    fn expire(&mut self, now_ns: u64) {
        let (tracker, outlet, apart) = (&mut self.tracker, &self.outlet, &mut self.not_inbound);
        self.reassembler
            .expire(now_ns, &mut |ev| feed(tracker, outlet, apart, &ev));
    }

    fn finish(&mut self) {
        tracing::debug!(
            flows = self.reassembler.open_flows(),
            "end of capture: closing every flow"
        );
        let (tracker, outlet, apart) = (&mut self.tracker, &self.outlet, &mut self.not_inbound);
        self.reassembler
            .finish(&mut |ev| feed(tracker, outlet, apart, &ev));
        tracker.finish(&mut |o| outlet.deliver(o));
    }

    fn figures(&self, malformed: u64, file: Option<pcap::PcapStats>) -> CaptureFigures {
        CaptureFigures {
            segments: self.segments,
            payload_bytes: self.payload_bytes,
            malformed_records: malformed,
            segments_before_attach: self.before_attach,
            reassembly: self.reassembler.stats().clone(),
            http: self.tracker.stats().clone(),
            open_flows: self.reassembler.open_flows(),
            buffered_bytes: self.reassembler.buffered_bytes(),
            file,
            reorder: self.reorder,
            not_inbound_pairing: self.not_inbound,
        }
    }
}

/// Feeds one stream event to the tracker and passes its outputs on. What the event moves
/// in the pairing figures on a connection that is not inbound (a dependency call, another
/// server on a dependency's port) is kept apart, so the pairing figures describe legacy's
/// inbound traffic only. (Each event concerns one connection; the tracker's last flush
/// at the end of the capture is not split.)
fn feed(
    tracker: &mut ExchangeTracker,
    outlet: &Outlet,
    apart: &mut PairingCounters,
    ev: &StreamEvent<'_>,
) {
    let before = (!outlet.is_inbound(ev.flow())).then(|| PairingCounters::from(tracker.stats()));
    tracker.on_event(ev, &mut |o| outlet.deliver(o));
    outlet.stream_event(ev);
    if let Some(before) = before {
        apart.add(&PairingCounters::from(tracker.stats()).minus(&before));
    }
}

/// The rule under which exchanges are framed without their content (bodies, response
/// header fields): a sampler that replays nothing (`--sample 0`, also when set at run
/// time) and legacy's inbound traffic (dependency calls keep theirs for the side-effect
/// recorder). Every exchange is still rebuilt, paired and counted; only the copies are
/// saved.
fn frame_only_rule(settings: &CaptureSettings) -> Option<FrameOnly> {
    let sampler = Arc::clone(settings.sampler.as_ref()?);
    let outbound = settings.outbound.clone();
    Some(FrameOnly::new(move |flow: &FlowKey| {
        sampler.ppm() == 0 && outbound.as_ref().is_none_or(|t| t.is_inbound(&flow.server))
    }))
}

/// Runs until the source ends (file) or `stop` is set (live), then flushes every flow.
/// `figures` is refreshed about once a second.
pub fn run(
    source: Source,
    settings: CaptureSettings,
    exchanges: mpsc::Sender<Captured>,
    ledger: Arc<Ledger>,
    stop: Arc<AtomicBool>,
    figures: Arc<Mutex<CaptureFigures>>,
) -> Result<CaptureFigures, pcap::PcapError> {
    let mut tracker = ExchangeTracker::new(settings.limits, settings.max_connections.max(1));
    if let Some(rule) = frame_only_rule(&settings) {
        tracker = tracker.with_frame_only(rule);
    }
    let mut st = Stages::new(
        Reassembler::new(settings.reassembly.clone()),
        tracker,
        Outlet {
            exchanges,
            outbound: settings.outbound.clone(),
            sampler: settings.sampler.clone(),
            ledger,
            wait_when_full: matches!(source, Source::File { .. }),
        },
    );
    let publish = |st: &Stages, malformed: u64, file: Option<pcap::PcapStats>| {
        if let Ok(mut f) = figures.lock() {
            *f = st.figures(malformed, file);
        }
    };
    match source {
        Source::Live(mut reader) => {
            let mut malformed = 0u64;
            let mut last_expire = crate::clock::monotonic_ns();
            while !stop.load(Ordering::Relaxed) {
                match reader.poll(crate::capture::kernel::POLL_INTERVAL, &mut |seg| {
                    st.segment(seg)
                }) {
                    Ok(p) => {
                        malformed += p.malformed;
                        st.before_attach += p.before_attach;
                    }
                    Err(e) => tracing::warn!(error = %e, "ring buffer poll failed"),
                }
                let now = crate::clock::monotonic_ns();
                if now.saturating_sub(last_expire) >= 100_000_000 {
                    last_expire = now;
                    st.expire(now);
                    publish(&st, malformed, None);
                }
            }
            // The tap is detached by now: drain what the kernel already queued.
            if let Ok(p) = reader.poll(Duration::ZERO, &mut |seg| st.segment(seg)) {
                malformed += p.malformed;
                st.before_attach += p.before_attach;
            }
            st.finish();
            publish(&st, malformed, None);
            Ok(st.figures(malformed, None))
        }
        Source::File { path, ports } => {
            let mut last_expire = 0u64;
            let mut last_ts = 0u64;
            let mut reorder = CausalReorder::new(settings.reorder_window);
            let mut feed = |seg: &Segment<'_>| {
                st.segment(seg);
                last_ts = last_ts.max(seg.ts_ns);
                // File time drives timeouts, so a capture replays as it happened.
                if last_ts.saturating_sub(last_expire) >= 100_000_000 {
                    last_expire = last_ts;
                    st.expire(last_ts);
                }
            };
            let stats = pcap::read_file(&path, &ports, &mut |seg| {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                reorder.push(seg, &mut feed);
            })?;
            reorder.finish(&mut feed);
            st.reorder = reorder.stats();
            st.finish();
            publish(&st, 0, Some(stats));
            Ok(st.figures(0, Some(stats)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_the_full_flow_table_refuses_is_a_counted_drop() {
        use crate::capture::{Direction, FlowKey, TcpFlags};
        use std::net::{Ipv4Addr, SocketAddr};
        let ledger = Arc::new(Ledger::default());
        let (tx, _rx) = mpsc::channel(4);
        let reassembly = ReassemblyConfig {
            max_flows: 1,
            ..ReassemblyConfig::default()
        };
        let mut st = Stages::new(
            Reassembler::new(reassembly),
            ExchangeTracker::new(Limits::default(), 16),
            Outlet {
                exchanges: tx,
                outbound: None,
                sampler: None,
                ledger: ledger.clone(),
                wait_when_full: false,
            },
        );
        for port in [40_000, 40_001, 40_002] {
            st.segment(&Segment {
                flow: FlowKey {
                    client: SocketAddr::from((Ipv4Addr::new(10, 0, 0, 1), port)),
                    server: SocketAddr::from((Ipv4Addr::new(10, 0, 0, 2), 80)),
                },
                direction: Direction::ToServer,
                seq: 1,
                ack: 0,
                flags: TcpFlags(TcpFlags::SYN),
                ts_ns: 1,
                payload: b"",
            });
        }
        let s = ledger.snapshot();
        assert_eq!(s.count(Outcome::Dropped(DropReason::FlowTableFull)), 2);
        assert_eq!((s.seen, s.in_flight()), (2, 0));
    }

    /// One whole keep-alive-less exchange on `server`: handshake, request, response, FINs.
    fn conversation(st: &mut Stages, client_port: u16, server: std::net::SocketAddr, ts: u64) {
        use crate::capture::{Direction, TcpFlags};
        let flow = FlowKey {
            client: std::net::SocketAddr::from(([10, 0, 0, 1], client_port)),
            server,
        };
        let req: &[u8] = b"POST /charges HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}";
        let resp: &[u8] = b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n{}";
        let (rq, rs) = (req.len() as u32, resp.len() as u32);
        let (ack, psh) = (TcpFlags::ACK, TcpFlags::ACK | TcpFlags::PSH);
        let fin = TcpFlags::ACK | TcpFlags::FIN;
        let steps: [(Direction, u32, u32, u8, &[u8]); 6] = [
            (Direction::ToServer, 0, 0, TcpFlags::SYN, b""),
            (Direction::ToClient, 0, 1, TcpFlags::SYN | ack, b""),
            (Direction::ToServer, 1, 1, psh, req),
            (Direction::ToClient, 1, 1 + rq, psh, resp),
            (Direction::ToServer, 1 + rq, 1 + rs, fin, b""),
            (Direction::ToClient, 1 + rs, 2 + rq, fin, b""),
        ];
        for (i, (direction, seq, ack, flags, payload)) in steps.into_iter().enumerate() {
            st.segment(&Segment {
                flow,
                direction,
                seq,
                ack,
                flags: TcpFlags(flags),
                ts_ns: ts + i as u64,
                payload,
            });
        }
    }

    #[test]
    fn only_inbound_connections_reach_the_ledger_and_the_pairing_figures() {
        use crate::effects::record::Dependencies;
        let a = |s: &str| s.parse::<std::net::SocketAddr>().expect("addr");
        let ledger = Arc::new(Ledger::default());
        let (tx, mut rx) = mpsc::channel(16);
        let (calls_tx, mut calls) = mpsc::channel(16);
        let tap = crate::effects::OutboundTap {
            dependencies: Dependencies::new(vec![a("10.0.0.7:7070")]),
            inbound_ports: vec![80],
            tx: calls_tx,
            dropped: Arc::default(),
            other: Arc::default(),
        };
        let mut st = Stages::new(
            Reassembler::new(ReassemblyConfig::default()),
            ExchangeTracker::new(Limits::default(), 16),
            Outlet {
                exchanges: tx,
                outbound: Some(tap.clone()),
                sampler: None,
                ledger: ledger.clone(),
                wait_when_full: false,
            },
        );
        conversation(&mut st, 40_000, a("10.0.0.2:80"), 1_000);
        conversation(&mut st, 40_001, a("10.0.0.7:7070"), 2_000);
        // Another server on the dependency's port: not a call, and not inbound either.
        conversation(&mut st, 40_002, a("10.0.0.9:7070"), 3_000);
        conversation(&mut st, 40_003, a("10.0.0.9:7070"), 4_000);
        let s = ledger.snapshot();
        assert_eq!(s.seen, 1, "only the inbound exchange is seen");
        let mut inbound = 0;
        while let Ok(c) = rx.try_recv() {
            if let Captured::Exchange(ex) = c {
                assert_eq!(ex.flow.server, a("10.0.0.2:80"));
                inbound += 1;
            }
        }
        assert_eq!(inbound, 1);
        let (call, dep) = calls.try_recv().expect("the dependency call is recorded");
        assert_eq!(
            (call.flow.server, dep),
            (a("10.0.0.7:7070"), a("10.0.0.7:7070"))
        );
        assert!(
            calls.try_recv().is_err(),
            "only the given address is a call"
        );
        assert_eq!(tap.other.load(Ordering::Relaxed), 2);
        let f = st.figures(0, None);
        assert_eq!(f.http.exchanges, 4, "the http stage rebuilt all four");
        assert_eq!(
            (f.pairing().exchanges, f.pairing().proven),
            (1, 1),
            "the pairing figures describe the inbound traffic only"
        );
    }

    /// An outlet that samples before its queue and drops (never waits) when it is full.
    /// An outlet whose sampler replays everything but `/health…` (excluded).
    fn health_excluding_outlet(tx: mpsc::Sender<Captured>, ledger: &Arc<Ledger>) -> Outlet {
        use crate::sample::{SampleConfig, Sampler, parse_rule};
        let sampler = Sampler::new(SampleConfig {
            exclude: vec![parse_rule("path:^/health").expect("rule")],
            ..SampleConfig::default()
        })
        .expect("sampler");
        sampling_outlet(tx, sampler, ledger)
    }

    fn sampling_outlet(
        tx: mpsc::Sender<Captured>,
        sampler: crate::sample::Sampler,
        ledger: &Arc<Ledger>,
    ) -> Outlet {
        Outlet {
            exchanges: tx,
            outbound: None,
            sampler: Some(Arc::new(sampler)),
            ledger: ledger.clone(),
            wait_when_full: false,
        }
    }

    fn exchange(path: &str, port: u16) -> Exchange {
        use crate::http::{CorrelationId, Request, Response};
        use std::net::{Ipv4Addr, SocketAddr};
        Exchange {
            id: CorrelationId::new(),
            flow: FlowKey {
                client: SocketAddr::from((Ipv4Addr::new(10, 0, 0, 1), port)),
                server: SocketAddr::from((Ipv4Addr::new(10, 0, 0, 2), 80)),
            },
            request: Request {
                method: "GET".into(),
                target: path.into(),
                version: 1,
                headers: Vec::new(),
                body: bytes::Bytes::new(),
            },
            response: Response {
                version: 1,
                status: 200,
                reason: "OK".into(),
                headers: Vec::new(),
                body: bytes::Bytes::new(),
            },
            timing: Default::default(),
        }
    }

    /// Under a flood the exchange queue is full; an excluded or sampled-out exchange is
    /// decided before the queue, so it still ends as `excluded` / `sampled_out` (never
    /// `queue_full`) and takes no queue space.
    #[test]
    fn with_the_queue_full_excluded_exchanges_are_still_counted_excluded() {
        let ledger = Arc::new(Ledger::default());
        let (tx, mut rx) = mpsc::channel(2);
        let outlet = health_excluding_outlet(tx, &ledger);
        // Two replayable exchanges fill the queue; the rest arrive with it full.
        for (i, path) in ["/a", "/b", "/health", "/c", "/health/db", "/health"]
            .into_iter()
            .enumerate()
        {
            outlet.deliver(HttpOutput::Exchange(exchange(path, 40_000 + i as u16)));
        }
        let s = ledger.snapshot();
        assert_eq!(s.seen, 6, "{s:?}");
        assert_eq!(s.count(Outcome::Excluded), 3, "{s:?}");
        assert_eq!(s.count(Outcome::Dropped(DropReason::QueueFull)), 1, "{s:?}");
        assert_eq!(s.in_flight(), 2, "the two queued: {s:?}");
        // Only replayable exchanges took queue space.
        let mut queued = Vec::new();
        while let Ok(Captured::Exchange(ex)) = rx.try_recv() {
            queued.push(ex.request.target);
        }
        assert_eq!(queued, ["/a", "/b"]);
        // Identity: once the queued two end, nothing is in flight.
        ledger.record(Outcome::Matched);
        ledger.record(Outcome::Differed);
        let s = ledger.snapshot();
        assert_eq!((s.seen, s.terminal(), s.in_flight()), (6, 6, 0), "{s:?}");
    }

    /// A rate of 0 % samples out every exchange before the queue: none is queued, none
    /// is dropped as `queue_full`, each is `sampled_out`.
    #[test]
    fn sampled_out_exchanges_never_take_queue_space() {
        use crate::sample::{SampleConfig, Sampler};
        let ledger = Arc::new(Ledger::default());
        let (tx, mut rx) = mpsc::channel(1);
        let sampler = Sampler::new(SampleConfig {
            percent: 0.0,
            ..SampleConfig::default()
        })
        .expect("sampler");
        let outlet = sampling_outlet(tx, sampler, &ledger);
        for i in 0..5 {
            outlet.deliver(HttpOutput::Exchange(exchange("/a", 40_000 + i)));
        }
        let s = ledger.snapshot();
        assert_eq!(s.count(Outcome::SampledOut), 5, "{s:?}");
        assert_eq!(s.count(Outcome::Dropped(DropReason::QueueFull)), 0, "{s:?}");
        assert_eq!((s.seen, s.terminal(), s.in_flight()), (5, 5, 0), "{s:?}");
        assert!(rx.try_recv().is_err(), "nothing queued");
    }

    /// Exchanges framed without content are counted with the sampler's outcome and never
    /// queued, even when the rate rose after their heads were parsed.
    #[test]
    fn framed_only_exchanges_are_counted_never_queued() {
        let ledger = Arc::new(Ledger::default());
        let (tx, mut rx) = mpsc::channel(8);
        let outlet = health_excluding_outlet(tx, &ledger);
        for (i, path) in ["/a", "/health", "/b"].into_iter().enumerate() {
            outlet.deliver(HttpOutput::FramedOnly(exchange(path, 40_000 + i as u16)));
        }
        let s = ledger.snapshot();
        assert_eq!(s.count(Outcome::Excluded), 1, "{s:?}");
        assert_eq!(s.count(Outcome::SampledOut), 2, "at 100 %, still: {s:?}");
        assert_eq!((s.seen, s.terminal(), s.in_flight()), (3, 3, 0), "{s:?}");
        assert!(rx.try_recv().is_err(), "nothing queued");
    }

    /// Framing only while the sampler replays nothing, and content kept again as soon as
    /// the rate rises (checked per segment, not per run).
    #[test]
    fn framing_only_holds_only_while_nothing_is_replayed() {
        use crate::sample::{SampleConfig, Sampler};
        let flow = exchange("/", 40_000).flow;
        assert!(
            frame_only_rule(&CaptureSettings::default()).is_none(),
            "no sampler"
        );
        let sampler = Arc::new(
            Sampler::new(SampleConfig {
                percent: 0.0,
                ..SampleConfig::default()
            })
            .expect("sampler"),
        );
        let settings = CaptureSettings {
            sampler: Some(Arc::clone(&sampler)),
            ..CaptureSettings::default()
        };
        let rule = frame_only_rule(&settings).expect("a rule");
        assert!(rule.applies(&flow));
        sampler.set_percent(5.0).expect("rate");
        assert!(!rule.applies(&flow));
        sampler.set_percent(0.0).expect("rate");
        assert!(rule.applies(&flow));
    }

    #[test]
    fn default_settings_track_many_connections() {
        assert_eq!(
            CaptureSettings::default().max_connections,
            DEFAULT_MAX_CONNECTIONS
        );
    }
}
