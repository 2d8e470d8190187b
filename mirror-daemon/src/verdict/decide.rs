//! The decision: every criterion measured against the evidence, then GO, NO-GO or
//! INSUFFICIENT EVIDENCE.
//!
//! Order of precedence:
//! 1. no parity limit set at all (mismatch, p95 regression, candidate errors, run-wide or
//!    per route) → INSUFFICIENT EVIDENCE, saying so: a run cannot pass nothing;
//! 2. `min_exchanges` / `min_completeness` not met, or a limit that could not be measured
//!    (nothing compared, no latency on one side, a route with no traffic) →
//!    INSUFFICIENT EVIDENCE with one reason each; a failing limit does not override this,
//!    since an incomplete capture can be biased either way;
//! 3. any limit exceeded → NO-GO naming each failing criterion;
//! 4. otherwise GO.
//!
//! A measured value equal to its limit passes (within 1e-12, so that `0.7%` written by
//! the user and 70 / 10 000 measured compare equal despite binary rounding).
use serde::{Deserialize, Serialize};

use super::criteria::Criteria;
use super::evidence::{Evidence, RouteEvidence};

/// How a limit is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    /// A fraction shown as a percentage.
    Percent,
    Count,
}

/// One criterion, evaluated: always reported, passed or not, so a dashboard can show the
/// current values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CriterionResult {
    /// `max_mismatch`, `max_p95_regression`, `max_candidate_errors`, `min_exchanges`,
    /// `min_completeness`; prefixed `route GET /x: ` for per-route ones.
    pub name: String,
    /// The route of a per-route criterion.
    pub route: Option<String>,
    pub limit: f64,
    /// `None` when it could not be measured (no data).
    pub measured: Option<f64>,
    pub passed: bool,
    pub unit: Unit,
    /// For a p95 regression: the absolute difference and its interval, and why a ratio
    /// over the limit passed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<LatencyJudgement>,
}

/// How a p95 regression was judged: a ratio over its limit fails only when the
/// candidate is slower by at least `--min-latency-delta` and the interval of the
/// difference lies wholly above zero (the samples show a real difference, not noise).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LatencyJudgement {
    /// `candidate p95 − legacy p95`, ns.
    pub delta_ns: i64,
    /// Interval (at least 95 %) of that difference, ns.
    pub interval_ns: Option<(i64, i64)>,
    pub min_delta_ns: Option<u64>,
    /// Why a ratio over the limit passed: `below --min-latency-delta` or
    /// `within sampling noise`.
    pub excused: Option<String>,
}

impl std::fmt::Display for LatencyJudgement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |ns: i64| ns as f64 / 1e6;
        write!(f, "p95 Δ {:+.3} ms", ms(self.delta_ns))?;
        if let Some((lo, hi)) = self.interval_ns {
            write!(f, ", 95% interval [{:+.3}, {:+.3}] ms", ms(lo), ms(hi))?;
        }
        if let Some(why) = &self.excused {
            write!(f, "; passes: {why}")?;
        }
        Ok(())
    }
}

impl std::fmt::Display for CriterionResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let show = |v: f64| match self.unit {
            Unit::Percent => format!("{:.3}%", v * 100.0),
            Unit::Count => format!("{v:.0}"),
        };
        let measured = self
            .measured
            .map_or_else(|| "not measured".to_string(), show);
        let cmp = if self.name.ends_with("min_exchanges") || self.name.ends_with("min_completeness")
        {
            ">="
        } else {
            "<="
        };
        let status = if self.passed { "pass" } else { "FAIL" };
        write!(
            f,
            "{status} {}: {measured} (limit {cmp} {})",
            self.name,
            show(self.limit)
        )?;
        // On its own line: criterion lines stay short in the card.
        match &self.latency {
            Some(l) => write!(f, "\n      {l}"),
            None => Ok(()),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "verdict")]
pub enum Verdict {
    Go,
    NoGo { failing: Vec<CriterionResult> },
    InsufficientEvidence { reasons: Vec<String> },
}

impl Verdict {
    /// Process exit code: GO 0, NO-GO 1, INSUFFICIENT EVIDENCE 3 (2 is for usage errors).
    pub fn exit_code(&self) -> i32 {
        match self {
            Verdict::Go => 0,
            Verdict::NoGo { .. } => 1,
            Verdict::InsufficientEvidence { .. } => 3,
        }
    }

    pub fn label(&self) -> &'static str {
        match self {
            Verdict::Go => "GO",
            Verdict::NoGo { .. } => "NO-GO",
            Verdict::InsufficientEvidence { .. } => "INSUFFICIENT EVIDENCE",
        }
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())?;
        match self {
            Verdict::Go => Ok(()),
            Verdict::NoGo { failing } => {
                for c in failing {
                    write!(f, "\n  {c}")?;
                }
                Ok(())
            }
            Verdict::InsufficientEvidence { reasons } => {
                for r in reasons {
                    write!(f, "\n  {r}")?;
                }
                Ok(())
            }
        }
    }
}

/// Slack for comparing a measured fraction with a limit parsed from decimal text.
const EPSILON: f64 = 1e-12;

fn ratio(n: u64, of: u64) -> Option<f64> {
    (of > 0).then(|| n as f64 / of as f64)
}

fn regression(legacy: Option<u64>, candidate: Option<u64>) -> Option<f64> {
    match (legacy, candidate) {
        (Some(l), Some(c)) if l > 0 => Some((c as f64 - l as f64) / l as f64),
        _ => None,
    }
}

fn delta(legacy: Option<u64>, candidate: Option<u64>) -> Option<i64> {
    match (legacy, candidate) {
        (Some(l), Some(c)) => Some(c as i64 - l as i64),
        _ => None,
    }
}

/// The measurable parts shared by the run and each route.
struct Measured {
    compared: u64,
    mismatch: Option<f64>,
    errors: Option<f64>,
    p95_regression: Option<f64>,
    p95_delta_ns: Option<i64>,
    p95_interval_ns: Option<(i64, i64)>,
}

impl From<&Evidence> for Measured {
    fn from(e: &Evidence) -> Self {
        Measured {
            compared: e.compared,
            mismatch: ratio(e.mismatched, e.compared),
            errors: ratio(e.candidate_errors, e.replayed),
            p95_regression: regression(e.p95_legacy_ttlb_ns, e.p95_candidate_ttlb_ns),
            p95_delta_ns: delta(e.p95_legacy_ttlb_ns, e.p95_candidate_ttlb_ns),
            p95_interval_ns: e.p95_ttlb_delta_interval_ns,
        }
    }
}

impl From<&RouteEvidence> for Measured {
    fn from(e: &RouteEvidence) -> Self {
        Measured {
            compared: e.compared,
            mismatch: ratio(e.mismatched, e.compared),
            errors: ratio(e.candidate_errors, e.replayed),
            p95_regression: regression(e.p95_legacy_ttlb_ns, e.p95_candidate_ttlb_ns),
            p95_delta_ns: delta(e.p95_legacy_ttlb_ns, e.p95_candidate_ttlb_ns),
            p95_interval_ns: e.p95_ttlb_delta_interval_ns,
        }
    }
}

fn push_limits(
    out: &mut Vec<CriterionResult>,
    c: &Criteria,
    m: &Measured,
    route: Option<&str>,
    min_delta_ns: Option<u64>,
) {
    let name = |n: &str| match route {
        Some(r) => format!("route {r}: {n}"),
        None => n.to_string(),
    };
    let mut add =
        |n: &str, limit: Option<f64>, measured: Option<f64>, at_least: bool, unit: Unit| {
            let Some(limit) = limit else { return };
            let passed = measured.is_some_and(|v| {
                if at_least {
                    v >= limit - EPSILON
                } else {
                    v <= limit + EPSILON
                }
            });
            out.push(CriterionResult {
                name: name(n),
                route: route.map(str::to_string),
                limit,
                measured,
                passed,
                unit,
                latency: None,
            });
        };
    add(
        "min_exchanges",
        c.min_exchanges.map(|n| n as f64),
        Some(m.compared as f64),
        true,
        Unit::Count,
    );
    add(
        "max_mismatch",
        c.max_mismatch,
        m.mismatch,
        false,
        Unit::Percent,
    );
    add(
        "max_p95_regression",
        c.max_p95_regression,
        m.p95_regression,
        false,
        Unit::Percent,
    );
    add(
        "max_candidate_errors",
        c.max_candidate_errors,
        m.errors,
        false,
        Unit::Percent,
    );
    let p95 = name("max_p95_regression");
    if let Some(r) = out.iter_mut().rev().find(|r| r.name == p95) {
        judge_p95(r, m, min_delta_ns);
    }
}

/// Adds the absolute difference and its interval to a p95 result, and lets a ratio over
/// the limit pass when the difference is under `--min-latency-delta` or within noise.
fn judge_p95(r: &mut CriterionResult, m: &Measured, min_delta_ns: Option<u64>) {
    let Some(delta_ns) = m.p95_delta_ns else {
        return;
    };
    let excused = if r.passed {
        None
    } else if min_delta_ns.is_some_and(|min| delta_ns < min as i64) {
        Some("below --min-latency-delta")
    } else if m.p95_interval_ns.is_some_and(|(lo, _)| lo <= 0) {
        Some("within sampling noise (the interval includes no difference)")
    } else {
        None
    };
    if excused.is_some() {
        r.passed = true;
    }
    r.latency = Some(LatencyJudgement {
        delta_ns,
        interval_ns: m.p95_interval_ns,
        min_delta_ns,
        excused: excused.map(str::to_string),
    });
}

/// Every criterion with its measured value and limit, run-wide first, then per route in
/// the order given.
pub fn evaluate(c: &Criteria, e: &Evidence) -> Vec<CriterionResult> {
    let mut out = Vec::new();
    if let Some(limit) = c.min_completeness {
        let measured = e.completeness.is_finite().then_some(e.completeness);
        out.push(CriterionResult {
            name: "min_completeness".into(),
            route: None,
            limit,
            measured,
            passed: measured.is_some_and(|v| v >= limit - EPSILON),
            unit: Unit::Percent,
            latency: None,
        });
    }
    push_limits(
        &mut out,
        c,
        &Measured::from(e),
        None,
        c.min_latency_delta_ns,
    );
    if let Some(limit) = c.max_side_effect_mismatch {
        let measured = ratio(e.side_effect_mismatched, e.compared);
        out.push(CriterionResult {
            name: "max_side_effect_mismatch".into(),
            route: None,
            limit,
            measured,
            passed: measured.is_some_and(|v| v <= limit + EPSILON),
            unit: Unit::Percent,
            latency: None,
        });
    }
    for (route, rc) in &c.per_route {
        let m = e
            .per_route
            .iter()
            .find(|(r, _)| r == route)
            .map(|(_, re)| Measured::from(re))
            .unwrap_or(Measured {
                compared: 0,
                mismatch: None,
                errors: None,
                p95_regression: None,
                p95_delta_ns: None,
                p95_interval_ns: None,
            });
        let min_delta = rc.min_latency_delta_ns.or(c.min_latency_delta_ns);
        push_limits(&mut out, rc, &m, Some(route), min_delta);
    }
    out
}

pub fn decide(c: &Criteria, e: &Evidence) -> Verdict {
    if !c.has_parity_limit() {
        return Verdict::InsufficientEvidence {
            reasons: vec![
                "no criteria were set: give at least one of --max-mismatch, --max-p95-regression, \
                 --max-candidate-errors (or a --route-… form) before the run"
                    .into(),
            ],
        };
    }
    let results = evaluate(c, e);
    let mut reasons = Vec::new();
    let mut failing = Vec::new();
    for r in results {
        let evidence_gate =
            r.name.ends_with("min_exchanges") || r.name.ends_with("min_completeness");
        if r.measured.is_none() {
            reasons.push(format!(
                "{}: not measured ({})",
                r.name,
                missing_why(&r.name)
            ));
        } else if evidence_gate && !r.passed {
            reasons.push(r.to_string());
        } else if !r.passed {
            failing.push(r);
        }
    }
    if !reasons.is_empty() {
        Verdict::InsufficientEvidence { reasons }
    } else if !failing.is_empty() {
        Verdict::NoGo { failing }
    } else {
        Verdict::Go
    }
}

fn missing_why(name: &str) -> &'static str {
    if name.ends_with("max_p95_regression") {
        "no latency samples on one side"
    } else if name.ends_with("max_candidate_errors") {
        "nothing replayed"
    } else if name.ends_with("min_completeness") {
        "completeness unknown"
    } else {
        "no exchanges compared"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verdict::criteria::parse_percent;

    fn pct(s: &str) -> Option<f64> {
        Some(parse_percent(s).unwrap())
    }

    fn criteria() -> Criteria {
        Criteria {
            max_mismatch: pct("0.5%"),
            max_p95_regression: pct("10%"),
            max_candidate_errors: pct("0.1%"),
            min_exchanges: Some(1000),
            min_completeness: pct("99%"),
            ..Criteria::default()
        }
    }

    fn evidence() -> Evidence {
        Evidence {
            compared: 10_000,
            mismatched: 40,
            candidate_errors: 5,
            replayed: 10_005,
            completeness: 0.995,
            p95_legacy_ttlb_ns: Some(100_000_000),
            p95_candidate_ttlb_ns: Some(105_000_000),
            ..Evidence::default()
        }
    }

    #[test]
    fn go_when_every_limit_holds() {
        let v = decide(&criteria(), &evidence());
        assert_eq!(v, Verdict::Go);
        assert_eq!(v.exit_code(), 0);
        let all = evaluate(&criteria(), &evidence());
        assert_eq!(all.len(), 5);
        assert!(all.iter().all(|r| r.passed && r.measured.is_some()));
        let p95 = all.iter().find(|r| r.name == "max_p95_regression").unwrap();
        assert!((p95.measured.unwrap() - 0.05).abs() < 1e-9);
    }

    #[test]
    fn no_go_names_each_failing_criterion() {
        let mut e = evidence();
        e.mismatched = 51; // 0.51 %
        e.p95_candidate_ttlb_ns = Some(111_000_000); // +11 %
        let v = decide(&criteria(), &e);
        assert_eq!(v.exit_code(), 1);
        let Verdict::NoGo { failing } = &v else {
            panic!("{v}")
        };
        let names: Vec<&str> = failing.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["max_mismatch", "max_p95_regression"]);
        assert!((failing[0].measured.unwrap() - 0.0051).abs() < 1e-12);
        assert_eq!(failing[0].limit, 0.005);
        let text = v.to_string();
        assert!(text.starts_with("NO-GO"), "{text}");
        assert!(
            text.contains("FAIL max_mismatch: 0.510% (limit <= 0.500%)"),
            "{text}"
        );
        // Exactly at the limit passes.
        e.mismatched = 50;
        e.p95_candidate_ttlb_ns = Some(110_000_000);
        assert_eq!(decide(&criteria(), &e), Verdict::Go);
        let c = Criteria {
            max_mismatch: pct("0.7%"),
            ..Criteria::default()
        };
        e.mismatched = 70;
        assert_eq!(decide(&c, &e), Verdict::Go);
        e.mismatched = 71;
        assert!(matches!(decide(&c, &e), Verdict::NoGo { .. }));
    }

    #[test]
    fn per_route_limits_fail_and_report() {
        let mut c = criteria();
        c.route_mut("GET /users/{id}").max_mismatch = pct("1%");
        let mut e = evidence();
        e.per_route.push((
            "GET /users/{id}".into(),
            RouteEvidence {
                compared: 100,
                mismatched: 2,
                replayed: 100,
                ..Default::default()
            },
        ));
        let Verdict::NoGo { failing } = decide(&c, &e) else {
            panic!()
        };
        assert_eq!(failing.len(), 1);
        assert_eq!(failing[0].name, "route GET /users/{id}: max_mismatch");
        assert_eq!(failing[0].route.as_deref(), Some("GET /users/{id}"));
        // A route with no traffic cannot be judged.
        let mut c = criteria();
        c.route_mut("GET /never").max_mismatch = pct("1%");
        let Verdict::InsufficientEvidence { reasons } = decide(&c, &evidence()) else {
            panic!()
        };
        assert!(
            reasons[0].contains("route GET /never: max_mismatch: not measured"),
            "{reasons:?}"
        );
    }

    #[test]
    fn insufficient_evidence_refuses_a_verdict() {
        // Too few exchanges.
        let mut e = evidence();
        e.compared = 999;
        let v = decide(&criteria(), &e);
        assert_eq!(v.exit_code(), 3);
        let Verdict::InsufficientEvidence { reasons } = &v else {
            panic!("{v}")
        };
        assert!(
            reasons.iter().any(|r| r.contains("min_exchanges: 999")),
            "{reasons:?}"
        );
        // Low completeness wins even over a failing limit.
        let mut e = evidence();
        e.completeness = 0.9;
        e.mismatched = 5000;
        let Verdict::InsufficientEvidence { reasons } = decide(&criteria(), &e) else {
            panic!()
        };
        assert_eq!(reasons.len(), 1);
        assert!(
            reasons[0].contains("min_completeness: 90.000% (limit >= 99.000%)"),
            "{reasons:?}"
        );
        // No latency on the candidate side.
        let mut e = evidence();
        e.p95_candidate_ttlb_ns = None;
        let Verdict::InsufficientEvidence { reasons } = decide(&criteria(), &e) else {
            panic!()
        };
        assert!(
            reasons[0].contains("max_p95_regression: not measured"),
            "{reasons:?}"
        );
    }

    #[test]
    fn small_or_noisy_p95_regressions_pass_and_say_why() {
        // 0.05 ms → 0.07 ms: +40 %, over a 10 % limit.
        let mut e = evidence();
        e.p95_legacy_ttlb_ns = Some(50_000);
        e.p95_candidate_ttlb_ns = Some(70_000);
        assert!(matches!(decide(&criteria(), &e), Verdict::NoGo { .. }));
        // Under --min-latency-delta 1ms it passes, saying why.
        let mut c = criteria();
        c.min_latency_delta_ns = Some(1_000_000);
        assert_eq!(decide(&c, &e), Verdict::Go);
        let all = evaluate(&c, &e);
        let p95 = all.iter().find(|r| r.name == "max_p95_regression").unwrap();
        let l = p95.latency.as_ref().unwrap();
        assert_eq!(l.delta_ns, 20_000);
        assert_eq!(l.excused.as_deref(), Some("below --min-latency-delta"));
        // An interval that includes no difference passes too; one above zero does not.
        e.p95_ttlb_delta_interval_ns = Some((-5_000, 60_000));
        assert_eq!(decide(&criteria(), &e), Verdict::Go);
        e.p95_ttlb_delta_interval_ns = Some((5_000, 60_000));
        let v = decide(&criteria(), &e);
        assert!(matches!(v, Verdict::NoGo { .. }), "{v}");
        assert!(v.to_string().contains("p95 Δ +0.020 ms"), "{v}");
        // A real regression above the minimum fails whatever the minimum.
        e.p95_legacy_ttlb_ns = Some(10_000_000);
        e.p95_candidate_ttlb_ns = Some(20_000_000);
        e.p95_ttlb_delta_interval_ns = Some((8_000_000, 12_000_000));
        assert!(matches!(decide(&c, &e), Verdict::NoGo { .. }));
        // The run-wide minimum applies to per-route limits too.
        let mut c = criteria();
        c.min_latency_delta_ns = Some(1_000_000);
        c.max_p95_regression = None;
        c.route_mut("GET /x").max_p95_regression = pct("10%");
        let mut e = evidence();
        e.per_route.push((
            "GET /x".into(),
            RouteEvidence {
                compared: 10,
                replayed: 10,
                p95_legacy_ttlb_ns: Some(50_000),
                p95_candidate_ttlb_ns: Some(70_000),
                ..Default::default()
            },
        ));
        assert_eq!(decide(&c, &e), Verdict::Go);
    }

    #[test]
    fn no_criteria_is_said_plainly() {
        let v = decide(&Criteria::default(), &evidence());
        assert_eq!(v.exit_code(), 3);
        assert!(v.to_string().contains("no criteria were set"), "{v}");
        // Evidence gates alone are not criteria to pass.
        let c = Criteria {
            min_exchanges: Some(1),
            ..Default::default()
        };
        assert!(matches!(
            decide(&c, &evidence()),
            Verdict::InsufficientEvidence { .. }
        ));
    }
}
