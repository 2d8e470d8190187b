//! Counters of the masking stage (shared: the `Masker` lives in an `Arc`).
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::Serialize;

/// Why a value was masked: the rule kind or the detector that selected it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MaskKind {
    Header,
    Json,
    Query,
    Form,
    Email,
    Card,
    Ssn,
    Phone,
    Iban,
    Ip,
}

impl MaskKind {
    pub const ALL: [MaskKind; 10] = [
        MaskKind::Header,
        MaskKind::Json,
        MaskKind::Query,
        MaskKind::Form,
        MaskKind::Email,
        MaskKind::Card,
        MaskKind::Ssn,
        MaskKind::Phone,
        MaskKind::Iban,
        MaskKind::Ip,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MaskKind::Header => "header",
            MaskKind::Json => "json",
            MaskKind::Query => "query",
            MaskKind::Form => "form",
            MaskKind::Email => "email",
            MaskKind::Card => "card",
            MaskKind::Ssn => "ssn",
            MaskKind::Phone => "phone",
            MaskKind::Iban => "iban",
            MaskKind::Ip => "ip",
        }
    }
}

#[derive(Debug, Default)]
pub struct MaskStats {
    masked: [AtomicU64; MaskKind::ALL.len()],
    /// Bodies whose content coding (gzip/deflate) was decoded.
    pub(crate) bodies_decoded: AtomicU64,
    /// Bodies whose declared coding did not decode.
    pub(crate) decode_failures: AtomicU64,
    /// Bodies with a coding we do not decode (br, zstd...).
    pub(crate) unsupported_encoding: AtomicU64,
    /// Bodies larger than `max_decoded_body` once decoded.
    pub(crate) oversize_bodies: AtomicU64,
    /// Bodies `persistable_body` reduced to length + digest.
    pub(crate) opaque_bodies: AtomicU64,
    /// JSON-typed bodies that were not valid JSON (masked as text instead).
    pub(crate) json_fallbacks: AtomicU64,
    /// Undecodable or binary bodies where a detector fired on the text runs.
    pub(crate) raw_bodies_masked: AtomicU64,
    /// Echoes of masked request values replaced in responses (see `taint.rs`).
    pub(crate) echoes_masked: AtomicU64,
    /// Masked request values not tracked for echoes (too short, too long, too many).
    pub(crate) taint_values_skipped: AtomicU64,
    /// Response bodies not scanned because an earlier response of the exchange had the
    /// same bytes, reading headers and taint: its masked body was reused (`reuse.rs`).
    pub(crate) bodies_reused: AtomicU64,
}

/// A point-in-time copy of [`MaskStats`], for metrics and reports.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MaskStatsSnapshot {
    /// Values masked, by rule kind or detector.
    pub masked: Vec<(MaskKind, u64)>,
    pub bodies_decoded: u64,
    pub decode_failures: u64,
    pub unsupported_encoding: u64,
    pub oversize_bodies: u64,
    pub opaque_bodies: u64,
    pub json_fallbacks: u64,
    pub raw_bodies_masked: u64,
    pub echoes_masked: u64,
    pub taint_values_skipped: u64,
    pub bodies_reused: u64,
}

impl MaskStatsSnapshot {
    pub fn masked(&self, kind: MaskKind) -> u64 {
        self.masked
            .iter()
            .find(|(k, _)| *k == kind)
            .map_or(0, |(_, n)| *n)
    }
}

impl MaskStats {
    pub(crate) fn count(&self, kind: MaskKind) {
        self.masked[kind as usize].fetch_add(1, Relaxed);
    }

    pub(crate) fn count_n(&self, kind: MaskKind, n: u64) {
        if n > 0 {
            self.masked[kind as usize].fetch_add(n, Relaxed);
        }
    }

    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    pub fn snapshot(&self) -> MaskStatsSnapshot {
        MaskStatsSnapshot {
            masked: MaskKind::ALL
                .iter()
                .map(|&k| (k, self.masked[k as usize].load(Relaxed)))
                .collect(),
            bodies_decoded: self.bodies_decoded.load(Relaxed),
            decode_failures: self.decode_failures.load(Relaxed),
            unsupported_encoding: self.unsupported_encoding.load(Relaxed),
            oversize_bodies: self.oversize_bodies.load(Relaxed),
            opaque_bodies: self.opaque_bodies.load(Relaxed),
            json_fallbacks: self.json_fallbacks.load(Relaxed),
            raw_bodies_masked: self.raw_bodies_masked.load(Relaxed),
            echoes_masked: self.echoes_masked.load(Relaxed),
            taint_values_skipped: self.taint_values_skipped.load(Relaxed),
            bodies_reused: self.bodies_reused.load(Relaxed),
        }
    }
}
