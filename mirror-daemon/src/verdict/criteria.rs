//! Go/no-go criteria, written by the user before the run.
//!
//! Run-wide flags: `--max-mismatch 0.5%`, `--max-p95-regression 10%`,
//! `--max-candidate-errors 0.1%`, `--min-exchanges 1000`, `--min-completeness 99%`,
//! `--min-latency-delta 1ms` (a p95 regression smaller than this in absolute terms
//! passes; it also applies to every route's p95 limit; the CLI defaults it to
//! [`DEFAULT_MIN_LATENCY_DELTA`], `0` for none, while `Criteria::default()` has none).
//! Percentages must carry `%` (a bare `0.5` is refused: it could mean 0.5 % or 50 %).
//!
//! Per-route flags, repeatable, `ROUTE=VALUE` split at the last `=` (route names never
//! contain `=`): `--route-max-mismatch "GET /users/{id}=1%"`,
//! `--route-max-p95-regression "…=20%"`, `--route-max-candidate-errors "…=0.5%"`,
//! `--route-min-exchanges "…=200"`. Route names are those of `RouteTemplater`.
//! Completeness is a property of the capture, so it has no per-route form.
use serde::{Deserialize, Serialize};

use super::VerdictError;

/// `--min-latency-delta` when not given: below 1 ms two identical services on one host
/// differ at p95 by tens of percent (docs/fidelity.md), while a real regression worth a
/// NO-GO is milliseconds.
pub const DEFAULT_MIN_LATENCY_DELTA: &str = "1ms";

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Criteria {
    /// Largest allowed fraction of compared exchanges with a (non-noise) diff.
    pub max_mismatch: Option<f64>,
    /// Largest allowed `candidate_p95 / legacy_p95 - 1` of time to last byte.
    pub max_p95_regression: Option<f64>,
    /// A p95 regression smaller than this (ns, `candidate_p95 − legacy_p95`) never fails,
    /// whatever its ratio (`--min-latency-delta`, run-wide and for every route).
    #[serde(default)]
    pub min_latency_delta_ns: Option<u64>,
    /// Largest allowed fraction of replayed requests the candidate failed.
    pub max_candidate_errors: Option<f64>,
    /// Largest allowed fraction of compared exchanges whose calls to dependencies differ
    /// from legacy's (`--max-side-effect-mismatch`; run-wide only).
    #[serde(default)]
    pub max_side_effect_mismatch: Option<f64>,
    /// Fewest compared exchanges for a verdict.
    pub min_exchanges: Option<u64>,
    /// Lowest capture completeness (0..=1) for a verdict.
    pub min_completeness: Option<f64>,
    /// Limits for single routes, on top of the run-wide ones.
    pub per_route: Vec<(String, Criteria)>,
}

/// The per-route flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteLimit {
    MaxMismatch,
    MaxP95Regression,
    MaxCandidateErrors,
    MinExchanges,
}

impl RouteLimit {
    pub fn flag(self) -> &'static str {
        match self {
            RouteLimit::MaxMismatch => "--route-max-mismatch",
            RouteLimit::MaxP95Regression => "--route-max-p95-regression",
            RouteLimit::MaxCandidateErrors => "--route-max-candidate-errors",
            RouteLimit::MinExchanges => "--route-min-exchanges",
        }
    }
}

/// Parses `"0.5%"` into the fraction `0.005`.
pub fn parse_percent(s: &str) -> Result<f64, VerdictError> {
    let t = s.trim();
    let bad = |reason: String| VerdictError::BadPercent {
        value: s.to_string(),
        reason,
    };
    let Some(num) = t.strip_suffix('%') else {
        return Err(match t.parse::<f64>() {
            Ok(_) => bad(format!(
                "a percentage needs `%`: write `{t}%` (or `{}%` if you meant a fraction)",
                fraction_hint(t)
            )),
            Err(_) => bad("expected a percentage such as `0.5%`".into()),
        });
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| bad("expected a number before `%`, e.g. `0.5%`".into()))?;
    if !v.is_finite() || v < 0.0 {
        return Err(bad("must be a non-negative percentage".into()));
    }
    Ok(v / 100.0)
}

fn fraction_hint(t: &str) -> String {
    t.parse::<f64>()
        .map(|f| format!("{}", f * 100.0))
        .unwrap_or_else(|_| t.to_string())
}

/// Splits `ROUTE=VALUE` at the last `=`.
fn split_route(flag: RouteLimit, s: &str) -> Result<(&str, &str), VerdictError> {
    let bad = |reason: &str| VerdictError::BadRouteLimit {
        flag: flag.flag(),
        value: s.to_string(),
        reason: reason.into(),
    };
    let (route, value) = s
        .rsplit_once('=')
        .ok_or_else(|| bad("expected ROUTE=VALUE, e.g. `GET /users/{id}=1%`"))?;
    let route = route.trim();
    if route.is_empty() {
        return Err(bad(
            "the route name is empty; expected ROUTE=VALUE, e.g. `GET /users/{id}=1%`",
        ));
    }
    Ok((route, value.trim()))
}

impl Criteria {
    /// Whether any limit that can fail a run is set (run-wide or per route).
    pub fn has_parity_limit(&self) -> bool {
        self.max_mismatch.is_some()
            || self.max_p95_regression.is_some()
            || self.max_candidate_errors.is_some()
            || self.max_side_effect_mismatch.is_some()
            || self.per_route.iter().any(|(_, c)| c.has_parity_limit())
    }

    /// Whether a p95 regression limit is set (run-wide or on some route).
    pub fn judges_p95(&self) -> bool {
        self.max_p95_regression.is_some() || self.per_route.iter().any(|(_, c)| c.judges_p95())
    }

    /// The criteria of `route`, created empty if absent.
    pub fn route_mut(&mut self, route: &str) -> &mut Criteria {
        let i = match self.per_route.iter().position(|(r, _)| r == route) {
            Some(i) => i,
            None => {
                self.per_route
                    .push((route.to_string(), Criteria::default()));
                self.per_route.len() - 1
            }
        };
        &mut self.per_route[i].1
    }

    /// Applies one per-route flag value such as `GET /users/{id}=1%`.
    pub fn add_route_limit(&mut self, limit: RouteLimit, s: &str) -> Result<(), VerdictError> {
        let (route, value) = split_route(limit, s)?;
        let c = self.route_mut(route);
        match limit {
            RouteLimit::MaxMismatch => c.max_mismatch = Some(parse_percent(value)?),
            RouteLimit::MaxP95Regression => c.max_p95_regression = Some(parse_percent(value)?),
            RouteLimit::MaxCandidateErrors => c.max_candidate_errors = Some(parse_percent(value)?),
            RouteLimit::MinExchanges => {
                let n = value
                    .parse::<u64>()
                    .map_err(|_| VerdictError::BadRouteLimit {
                        flag: limit.flag(),
                        value: s.to_string(),
                        reason: format!("`{value}` is not a whole number of exchanges"),
                    })?;
                c.min_exchanges = Some(n);
            }
        }
        Ok(())
    }

    /// Checks ranges (rates at most 100 %) and that per-route criteria only use
    /// per-route limits.
    pub fn validate(&self) -> Result<(), VerdictError> {
        self.validate_at(None)
    }

    fn validate_at(&self, route: Option<&str>) -> Result<(), VerdictError> {
        let at = |name: &str| match route {
            Some(r) => format!("route `{r}`: {name}"),
            None => name.to_string(),
        };
        for (name, v) in [
            ("max_mismatch", self.max_mismatch),
            ("max_candidate_errors", self.max_candidate_errors),
            ("min_completeness", self.min_completeness),
        ] {
            if let Some(v) = v
                && !(0.0..=1.0).contains(&v)
            {
                return Err(VerdictError::Invalid(format!(
                    "{} must be between 0% and 100%",
                    at(name)
                )));
            }
        }
        if let Some(v) = self.max_p95_regression
            && (!v.is_finite() || v < 0.0)
        {
            return Err(VerdictError::Invalid(format!(
                "{} must be a non-negative percentage",
                at("max_p95_regression")
            )));
        }
        if let Some(r) = route {
            if self.min_completeness.is_some() {
                return Err(VerdictError::Invalid(format!(
                    "route `{r}`: completeness applies to the whole capture"
                )));
            }
            if !self.per_route.is_empty() {
                return Err(VerdictError::Invalid(format!(
                    "route `{r}`: per-route criteria cannot nest"
                )));
            }
        }
        for (r, c) in &self.per_route {
            c.validate_at(Some(r))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_need_a_percent_sign() {
        assert_eq!(parse_percent("0.5%").unwrap(), 0.005);
        assert_eq!(parse_percent(" 10 %").unwrap(), 0.1);
        assert_eq!(parse_percent("150%").unwrap(), 1.5);
        let e = parse_percent("0.5").unwrap_err().to_string();
        assert!(e.contains("write `0.5%`"), "{e}");
        assert!(e.contains("`50%`"), "{e}");
        for bad in ["", "abc%", "-1%", "%", "NaN%", "inf%"] {
            assert!(parse_percent(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn per_route_flags() {
        let mut c = Criteria::default();
        c.add_route_limit(RouteLimit::MaxMismatch, "GET /users/{id}=1%")
            .unwrap();
        c.add_route_limit(RouteLimit::MinExchanges, "GET /users/{id}=200")
            .unwrap();
        c.add_route_limit(RouteLimit::MaxP95Regression, "POST /orders = 20%")
            .unwrap();
        assert_eq!(c.per_route.len(), 2);
        assert_eq!(c.per_route[0].1.max_mismatch, Some(0.01));
        assert_eq!(c.per_route[0].1.min_exchanges, Some(200));
        assert_eq!(c.per_route[1].0, "POST /orders");
        assert!(c.has_parity_limit());
        let e = c
            .add_route_limit(RouteLimit::MaxMismatch, "GET /a=1")
            .unwrap_err()
            .to_string();
        assert!(e.contains("write `1%`"), "{e}");
        let e = c
            .add_route_limit(RouteLimit::MaxMismatch, "GET /a")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--route-max-mismatch") && e.contains("ROUTE=VALUE"),
            "{e}"
        );
        assert!(
            c.add_route_limit(RouteLimit::MinExchanges, "GET /a=1.5")
                .is_err()
        );
        assert!(c.validate().is_ok());
    }

    #[test]
    fn validation() {
        let c = Criteria {
            max_mismatch: Some(1.5),
            ..Default::default()
        };
        assert!(c.validate().is_err());
        let mut c = Criteria::default();
        c.route_mut("GET /a").min_completeness = Some(0.9);
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("whole capture")
        );
        assert!(
            !Criteria {
                min_exchanges: Some(10),
                ..Default::default()
            }
            .has_parity_limit()
        );
    }
}
