//! Compare: normalize the legacy and candidate responses and list their differences;
//! name routes; model noise; keep latency histograms.
//!
//! - [`Comparator`] compares one response pair under a [`CompareConfig`] (built from
//!   `--ignore`, `--tolerance`, `--unordered`; see [`parse_ignore`] and friends).
//! - [`RouteTemplater`] turns `GET /users/42?x=1` into `GET /users/{id}`.
//! - [`NoiseModel`] separates diffs the candidate causes from diffs legacy has with itself.
//! - [`LatencyStats`] keeps per-route TTFB/TTLB histograms for both sides.
mod comparator;
mod config;
mod decode;
mod headers;
mod json;
mod latency;
mod model;
mod noise;
mod path;
mod render;
mod route;
mod scan;

pub use comparator::{BodyDigestFn, Comparator, CompareCounts};
pub use config::{
    CompareConfig, DEFAULT_MAX_DECODED_BODY, DEFAULT_MAX_DIFFS, IgnoreRule, Tolerance,
    ToleranceRule, parse_ignore, parse_tolerance, parse_unordered,
};
pub use headers::{PRESENCE_ONLY_HEADERS, VOLATILE_HEADERS};
pub use latency::{LatencyDelta, LatencyStats, Percentiles, RouteLatency, Side, SideSummary};
pub use model::{BodyMode, Comparison, Diff, DiffKind, FieldDiffKind};
pub use noise::{NoiseClass, NoiseModel, NoiseRule, RouteNoise, noise_key, suggested_ignore};
pub use path::JsonPath;
pub use route::{DEFAULT_MAX_ROUTES, OTHER_ROUTE, RouteTemplater};

/// Errors of the compare stage; all are configuration errors a user reads.
#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    #[error("invalid JSON path `{path}`: {reason}")]
    BadPath { path: String, reason: String },
    #[error("invalid {flag} value `{value}`: {reason}")]
    BadFlag {
        flag: &'static str,
        value: String,
        reason: String,
    },
    #[error("invalid --route `{value}`: {reason}")]
    BadRoute { value: String, reason: String },
    #[error("invalid compare configuration: {0}")]
    Invalid(String),
}
