//! Prometheus metrics of the daemon.
//!
//! Names (all prefixed `mirror_`):
//! - `mirror_exchanges_total{outcome,reason}`: terminal outcome of every exchange
//!   (`reason` is the drop reason or candidate error kind, empty otherwise), every pair
//!   exposed, zeros included;
//! - `mirror_exchanges_seen_total` and `mirror_exchanges_in_flight`: the rest of the
//!   accounting identity (`seen = Σ exchanges_total + in_flight`);
//! - `mirror_ttfb_seconds{route,side}` / `mirror_ttlb_seconds{route,side}`: histograms of
//!   time to first / last response byte, `side` is `legacy` or `candidate`;
//! - `mirror_egress_attempts_total{action,protocol}`: the candidate's outbound attempts;
//! - `mirror_kernel_*_total`: the tap's own counters (see [`Metrics::set_kernel`]);
//! - `mirror_pairing_{exchanges,proven,dropped_at_join,responses_unpaired,dropped_at_end}_total`: how
//!   the http stage paired requests with responses (see [`Metrics::set_pairing`]);
//! - `mirror_side_effect_{calls_recorded,attributed_by_id,attributed_by_window,ambiguous,
//!   unattributed,recorder_queue_full,other_on_dependency_ports,candidate_calls,
//!   virtual_matched,virtual_unmatched,mismatched}_total`: legacy's calls to its dependencies and how the virtual dependency
//!   answered the candidate's (`--dependency`; read at scrape time, see
//!   [`Metrics::watch_side_effects`]; zeros without dependencies);
//! - `mirror_daemon_cpu_periods_total`, `mirror_daemon_cpu_throttled_periods_total` and
//!   `mirror_daemon_cpu_throttled_seconds_total`: the daemon's own CPU quota, counted
//!   from the moment the pipeline was up (see [`crate::quota`]); absent while its cgroup
//!   has no quota (or no readable `cpu.stat`), cgroup v1 and v2 alike.
//!
//! The exchange series are read from the run's [`Ledger`] at scrape time, never counted
//! here, so `/metrics`, the dashboard and the report cannot disagree.
//!
//! Every label value comes from a small closed set except `route`, which comes from
//! traffic through the route templater: it is capped (see [`Metrics::set_routes_cap`]).
use std::{
    collections::HashSet,
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{
        MetricType, counter::ConstCounter, counter::Counter, family::Family, gauge::ConstGauge,
        histogram::Histogram,
    },
    registry::Registry,
};

use crate::accounting::{Ledger, Outcome};
use crate::capture::kernel::KernelCounters;
use crate::effects::EffectsFigures;
use crate::http::PairingCounters;
use crate::quota::QuotaReading;

/// Routes kept as their own label value before the rest become `other`.
pub const DEFAULT_ROUTES_CAP: usize = 100;
/// The label value for routes beyond the cap.
pub const OTHER_ROUTE: &str = "other";

/// Histogram bounds in seconds: 100 µs to 30 s, roughly 1-2.5-5 per decade, so p95 of
/// both a 300 µs cache hit and a 12 s report fall in a bucket of useful width.
const LATENCY_BUCKETS: [f64; 17] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LatencyLabels {
    route: String,
    /// `legacy` or `candidate`: a literal, not a string made per exchange.
    side: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EgressLabels {
    action: String,
    protocol: String,
}

type HistogramFamily = Family<LatencyLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS.into_iter())
}

/// The daemon's metrics. Cheap to record into from any task (`&self`, atomics).
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    ttfb: HistogramFamily,
    ttlb: HistogramFamily,
    egress: Family<EgressLabels, Counter>,
    kernel: Arc<Published<7>>,
    pairing: Arc<Published<5>>,
    side_effects: Arc<SideEffectsSource>,
    daemon_cpu: Arc<DaemonCpu>,
    routes_cap: AtomicUsize,
    /// Routes that own a label value; read-locked on the hot path, written once per route.
    /// Routes come from request targets: a randomly seeded foldhash, not a fixed hash.
    routes: RwLock<HashSet<String, foldhash::fast::RandomState>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Metrics over a ledger of their own (nothing counted): for tests and tools.
    pub fn new() -> Self {
        Self::for_ledger(Arc::default())
    }

    /// Metrics whose exchange series are `ledger`'s counters.
    pub fn for_ledger(ledger: Arc<Ledger>) -> Self {
        let mut registry = Registry::with_prefix("mirror");
        registry.register_collector(Box::new(LedgerCollector(ledger)));
        let ttfb: HistogramFamily = Family::new_with_constructor(latency_histogram);
        registry.register(
            "ttfb_seconds",
            "Time from the end of the request to the first response byte",
            ttfb.clone(),
        );
        let ttlb: HistogramFamily = Family::new_with_constructor(latency_histogram);
        registry.register(
            "ttlb_seconds",
            "Time from the end of the request to the last response byte",
            ttlb.clone(),
        );
        let egress = Family::<EgressLabels, Counter>::default();
        registry.register(
            "egress_attempts",
            "Outbound attempts of the candidate seen by the egress guard",
            egress.clone(),
        );
        let kernel = Arc::new(Published::new(KERNEL_NAMES));
        registry.register_collector(Box::new(PublishedCollector(Arc::clone(&kernel))));
        let pairing = Arc::new(Published::new(PAIRING_NAMES));
        registry.register_collector(Box::new(PublishedCollector(Arc::clone(&pairing))));
        let side_effects = Arc::new(SideEffectsSource::default());
        registry.register_collector(Box::new(SideEffectsCollector(Arc::clone(&side_effects))));
        let daemon_cpu = Arc::new(DaemonCpu::default());
        registry.register_collector(Box::new(DaemonCpuCollector(Arc::clone(&daemon_cpu))));
        Self {
            registry,
            ttfb,
            ttlb,
            egress,
            kernel,
            pairing,
            side_effects,
            daemon_cpu,
            routes_cap: AtomicUsize::new(DEFAULT_ROUTES_CAP),
            routes: RwLock::new(HashSet::default()),
        }
    }

    /// Records one response's latency for `route` on `side` (`legacy` or `candidate`).
    pub fn latency(&self, route: &str, side: &'static str, ttfb_ns: u64, ttlb_ns: u64) {
        let labels = LatencyLabels {
            route: self.route_label(route),
            side,
        };
        self.ttfb.get_or_create(&labels).observe(ns_to_s(ttfb_ns));
        self.ttlb.get_or_create(&labels).observe(ns_to_s(ttlb_ns));
    }

    /// Counts one outbound attempt of the candidate (`refused`, `redirected`, `allowed`).
    pub fn egress(&self, action: &str, protocol: &str) {
        self.egress
            .get_or_create(&EgressLabels {
                action: action.to_string(),
                protocol: protocol.to_string(),
            })
            .inc();
    }

    /// Publishes the tap's counters. They are already cumulative in the kernel (summed
    /// over CPUs when read), so they are stored as values and exposed as constant
    /// counters at scrape time rather than re-counted here: a scrape always shows the
    /// kernel's own figure, and nothing drifts if a read is skipped.
    pub fn set_kernel(&self, k: &KernelCounters) {
        self.kernel.store(kernel_values(k));
    }

    /// Publishes the http stage's pairing counters (cumulative, read from the capture
    /// thread's figures), the same way as [`Metrics::set_kernel`].
    pub fn set_pairing(&self, p: &PairingCounters) {
        self.pairing.store(pairing_values(p));
    }

    /// Publishes what the daemon's own CPU quota did since the pipeline was up; the
    /// series are exposed only while a quota is set on its cgroup.
    pub fn set_daemon_quota(&self, r: &QuotaReading) {
        let d = &self.daemon_cpu;
        d.periods.store(r.throttling.periods, Ordering::Relaxed);
        d.throttled_periods
            .store(r.throttling.throttled_periods, Ordering::Relaxed);
        d.throttled_us
            .store(r.throttling.throttled_us, Ordering::Relaxed);
        d.quota_set.store(r.limit.is_some(), Ordering::Relaxed);
    }

    /// Reads the side-effect figures from `figures` at every scrape (the side-effect
    /// stages' own counters, so `/metrics` and the stored figures cannot disagree). The
    /// first source set stays.
    pub fn watch_side_effects(&self, figures: impl Fn() -> EffectsFigures + Send + Sync + 'static) {
        let _ = self.side_effects.0.set(Box::new(figures));
    }

    /// Caps the number of distinct `route` label values; later routes count as `other`.
    /// Routes already admitted keep their label (their series cannot be withdrawn).
    pub fn set_routes_cap(&self, n: usize) {
        self.routes_cap.store(n, Ordering::Relaxed);
    }

    /// Prometheus text exposition (OpenMetrics text format).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail; an encoder error would only come from a
        // metric we built, and half an exposition is still better than none.
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!("encoding metrics: {e}");
        }
        out
    }

    fn route_label(&self, route: &str) -> String {
        let known = match self.routes.read() {
            Ok(set) => set.contains(route),
            Err(poisoned) => poisoned.into_inner().contains(route),
        };
        if known {
            return route.to_string();
        }
        let mut set = match self.routes.write() {
            Ok(set) => set,
            Err(poisoned) => poisoned.into_inner(),
        };
        if set.contains(route) || set.len() < self.routes_cap.load(Ordering::Relaxed) {
            set.insert(route.to_string());
            route.to_string()
        } else {
            OTHER_ROUTE.to_string()
        }
    }
}

fn ns_to_s(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// Counters kept elsewhere (the kernel, the capture thread), published here as their
/// last values (atomics, so publishing stays `&self` and lock-free) and exposed as
/// constant counters at scrape time.
#[derive(Debug)]
struct Published<const N: usize> {
    values: [AtomicU64; N],
    /// Name (without `mirror_` and `_total`) and help of each value.
    names: [(&'static str, &'static str); N],
}

impl<const N: usize> Published<N> {
    fn new(names: [(&'static str, &'static str); N]) -> Self {
        Self {
            values: std::array::from_fn(|_| AtomicU64::new(0)),
            names,
        }
    }

    fn store(&self, values: [u64; N]) {
        for (slot, v) in self.values.iter().zip(values) {
            slot.store(v, Ordering::Relaxed);
        }
    }
}

const KERNEL_NAMES: [(&str, &str); 7] = [
    (
        "kernel_segments",
        "TCP segments seen on a tapped port (including pure ACKs)",
    ),
    (
        "kernel_payload_bytes",
        "TCP payload bytes seen on a tapped port",
    ),
    ("kernel_records", "Ring-buffer records written by the tap"),
    (
        "kernel_ring_full",
        "Records lost because the ring buffer was full",
    ),
    (
        "kernel_oversize",
        "Payload bytes beyond the per-packet record limit (never expected)",
    ),
    (
        "kernel_sampled_out",
        "Segments skipped by in-kernel pre-sampling",
    ),
    (
        "kernel_load_errors",
        "Payload bytes the tap could not read from the packet",
    ),
];

fn kernel_values(k: &KernelCounters) -> [u64; 7] {
    [
        k.segments,
        k.payload_bytes,
        k.records,
        k.ring_full,
        k.oversize,
        k.sampled_out,
        k.load_errors,
    ]
}

const PAIRING_NAMES: [(&str, &str); 5] = [
    (
        "pairing_exchanges",
        "Exchanges rebuilt by the http stage (a request paired with its response)",
    ),
    (
        "pairing_proven",
        "Exchanges paired with proof from the TCP sequence and ACK numbers",
    ),
    (
        "pairing_dropped_at_join",
        "Requests dropped (gap or unpaired) on connections joined mid-stream, before their first proven exchange",
    ),
    (
        "pairing_responses_unpaired",
        "Responses whose request was not captured (discarded)",
    ),
    (
        "pairing_dropped_at_end",
        "Requests still waiting for their response when the capture ended (dropped as unpaired)",
    ),
];

fn pairing_values(p: &PairingCounters) -> [u64; 5] {
    [
        p.exchanges,
        p.proven,
        p.dropped_at_join,
        p.responses_unpaired,
        p.dropped_at_end,
    ]
}

const SIDE_EFFECT_NAMES: [(&str, &str); 11] = [
    (
        "side_effect_calls_recorded",
        "Legacy's calls to its dependencies captured (--dependency)",
    ),
    (
        "side_effect_attributed_by_id",
        "Legacy calls tied to their inbound exchange by a propagated id",
    ),
    (
        "side_effect_attributed_by_window",
        "Legacy calls without an id tied to an inbound exchange by its time window",
    ),
    (
        "side_effect_ambiguous",
        "Legacy calls without an id that several inbound exchanges' windows held",
    ),
    (
        "side_effect_unattributed",
        "Legacy calls no inbound exchange claimed",
    ),
    (
        "side_effect_recorder_queue_full",
        "Legacy calls lost on the capture to recorder queue",
    ),
    (
        "side_effect_other_on_dependency_ports",
        "Exchanges on a dependency's port to a server not given with --dependency (neither calls nor inbound)",
    ),
    (
        "side_effect_candidate_calls",
        "The candidate's calls to the virtual dependency (--virtualize-egress)",
    ),
    (
        "side_effect_virtual_matched",
        "Candidate calls answered with a recorded legacy response (by id or content)",
    ),
    (
        "side_effect_virtual_unmatched",
        "Candidate calls no recording matched (answered 502)",
    ),
    (
        "side_effect_mismatched",
        "Compared exchanges with at least one side-effect diff",
    ),
];

fn side_effect_values(f: &EffectsFigures) -> [u64; 11] {
    let b = &f.book;
    [
        b.calls_recorded,
        b.attributed_exact,
        b.attributed_window,
        b.ambiguous,
        b.unattributed,
        f.recorder_queue_full,
        f.other_on_dependency_ports,
        f.candidate_calls,
        f.matched_by_id + f.matched_by_content,
        f.unmatched,
        f.exchanges_with_diffs,
    ]
}

type FiguresFn = Box<dyn Fn() -> EffectsFigures + Send + Sync>;

/// Where the side-effect figures are read from (set once the stages start).
#[derive(Default)]
struct SideEffectsSource(std::sync::OnceLock<FiguresFn>);

impl std::fmt::Debug for SideEffectsSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("SideEffectsSource")
            .field(&self.0.get().is_some())
            .finish()
    }
}

/// The side-effect figures at scrape time.
#[derive(Debug)]
struct SideEffectsCollector(Arc<SideEffectsSource>);

impl Collector for SideEffectsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let figures = self.0.0.get().map(|f| f()).unwrap_or_default();
        for (v, (name, help)) in side_effect_values(&figures)
            .into_iter()
            .zip(SIDE_EFFECT_NAMES)
        {
            let counter = ConstCounter::new(v);
            let metric = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            counter.encode(metric)?;
        }
        Ok(())
    }
}

/// The daemon's quota figures as last published ([`Metrics::set_daemon_quota`]).
#[derive(Debug, Default)]
struct DaemonCpu {
    quota_set: AtomicBool,
    periods: AtomicU64,
    throttled_periods: AtomicU64,
    throttled_us: AtomicU64,
}

#[derive(Debug)]
struct DaemonCpuCollector(Arc<DaemonCpu>);

impl Collector for DaemonCpuCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let d = &self.0;
        if !d.quota_set.load(Ordering::Relaxed) {
            return Ok(());
        }
        for (name, help, v) in [
            (
                "daemon_cpu_periods",
                "Periods of the daemon's CPU quota in which it ran, since the pipeline was up",
                &d.periods,
            ),
            (
                "daemon_cpu_throttled_periods",
                "Of those, periods in which the quota stopped the daemon (its replays then leave in bursts)",
                &d.throttled_periods,
            ),
        ] {
            let counter = ConstCounter::new(v.load(Ordering::Relaxed));
            counter.encode(encoder.encode_descriptor(
                name,
                help,
                None,
                counter.metric_type(),
            )?)?;
        }
        let waited = ConstCounter::new(d.throttled_us.load(Ordering::Relaxed) as f64 / 1e6);
        waited.encode(encoder.encode_descriptor(
            "daemon_cpu_throttled_seconds",
            "Time the daemon's threads waited for the next quota period, since the pipeline was up",
            None,
            waited.metric_type(),
        )?)
    }
}

/// The ledger's counters at scrape time.
#[derive(Debug)]
struct LedgerCollector(Arc<Ledger>);

impl Collector for LedgerCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let snap = self.0.snapshot();
        let mut family = encoder.encode_descriptor(
            "exchanges",
            "Exchanges by terminal outcome (reason: drop reason or candidate error kind)",
            None,
            MetricType::Counter,
        )?;
        for o in Outcome::all() {
            let (outcome, reason) = o.labels();
            let labels = [("outcome", outcome), ("reason", reason)];
            ConstCounter::new(snap.count(o)).encode(family.encode_family(&labels)?)?;
        }
        let seen = ConstCounter::new(snap.seen);
        seen.encode(encoder.encode_descriptor(
            "exchanges_seen",
            "Exchanges (or messages that could not become one) that entered the pipeline",
            None,
            seen.metric_type(),
        )?)?;
        let in_flight = ConstGauge::new(snap.in_flight() as i64);
        in_flight.encode(encoder.encode_descriptor(
            "exchanges_in_flight",
            "Exchanges seen without a terminal outcome yet (queued, replaying, or being stored)",
            None,
            in_flight.metric_type(),
        )?)
    }
}

#[derive(Debug)]
struct PublishedCollector<const N: usize>(Arc<Published<N>>);

impl<const N: usize> Collector for PublishedCollector<N> {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        for (slot, (name, help)) in self.0.values.iter().zip(self.0.names) {
            let counter = ConstCounter::new(slot.load(Ordering::Relaxed));
            let metric = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            counter.encode(metric)?;
        }
        Ok(())
    }
}
