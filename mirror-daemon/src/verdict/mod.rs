//! Verdict: GO, NO-GO or INSUFFICIENT EVIDENCE, from criteria the user wrote before the
//! run and the evidence the run produced. Pure logic; see `decide` for the precedence.
mod criteria;
mod decide;
mod evidence;

pub use criteria::{Criteria, DEFAULT_MIN_LATENCY_DELTA, RouteLimit, parse_percent};
pub use decide::{CriterionResult, LatencyJudgement, Unit, Verdict, decide, evaluate};
pub use evidence::{Evidence, RouteEvidence};

/// Errors of the verdict stage: criteria a user mistyped.
#[derive(Debug, thiserror::Error)]
pub enum VerdictError {
    #[error("invalid percentage `{value}`: {reason}")]
    BadPercent { value: String, reason: String },
    #[error("invalid {flag} `{value}`: {reason}")]
    BadRouteLimit {
        flag: &'static str,
        value: String,
        reason: String,
    },
    #[error("invalid criteria: {0}")]
    Invalid(String),
}
