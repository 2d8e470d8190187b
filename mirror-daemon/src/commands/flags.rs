//! Flag values typed once, at the edge: clap runs these parsers, so every subcommand gets
//! a `Duration` or a percent, never a string to parse again.
use std::time::Duration;

/// One duration syntax for every flag: plain seconds (`60`, `2.5`) or a number with a
/// unit (`500ms`, `2s`, `10m`, `1h30m`, `7d`). Zero and negative values are refused.
pub fn duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let hint =
        "write seconds (e.g. 60 or 2.5) or a number with a unit (e.g. 500ms, 2s, 10m, 1h30m)";
    let d = if t.chars().all(|c| c.is_ascii_digit() || c == '.') && !t.is_empty() {
        let secs: f64 = t.parse().map_err(|_| format!("{s:?}: {hint}"))?;
        Duration::try_from_secs_f64(secs).map_err(|e| format!("{s:?}: {e}; {hint}"))?
    } else {
        humantime::parse_duration(t).map_err(|e| format!("{s:?}: {e}; {hint}"))?
    };
    if d.is_zero() {
        return Err(format!("{s:?}: must be more than zero"));
    }
    Ok(d)
}

/// `--min-latency-delta`: a duration as [`duration`] reads it, or `0` (also `0ms`, `0s`)
/// for no floor.
pub fn latency_floor(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let plain_zero = !t.is_empty()
        && t.chars().all(|c| c.is_ascii_digit() || c == '.')
        && t.parse::<f64>().is_ok_and(|v| v == 0.0);
    if plain_zero || humantime::parse_duration(t).is_ok_and(|d| d.is_zero()) {
        return Ok(Duration::ZERO);
    }
    duration(s)
}

/// A sampling rate in percent (0..=100), from `1`, `1.5` or `25%`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SamplePercent(pub f64);

impl SamplePercent {
    pub fn parse(s: &str) -> Result<Self, mirror_daemon::sample::SampleError> {
        mirror_daemon::sample::parse_percent(s).map(SamplePercent)
    }
}

impl std::fmt::Display for SamplePercent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}%", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_seconds_and_units_are_one_syntax() {
        assert_eq!(duration("60"), Ok(Duration::from_secs(60)));
        assert_eq!(duration(" 2.5 "), Ok(Duration::from_millis(2500)));
        assert_eq!(duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
    }

    #[test]
    fn bad_durations_say_how_to_write_one() {
        for bad in ["", "-5", "0", "0s", "1.2.3", "5 parsecs", "abc"] {
            let e = duration(bad).expect_err(bad);
            assert!(
                e.contains("write seconds") || e.contains("more than zero"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn every_command_takes_the_same_duration_syntax() {
        use crate::cli::{Cli, Command};
        let parse = |args: &[&str]| {
            <Cli as clap::Parser>::try_parse_from(["mirror-daemon"].iter().chain(args).copied())
                .unwrap_or_else(|e| panic!("{args:?}: {e}"))
                .command
        };
        let tap = ["--iface", "eth0", "--port", "8080"];
        let record = [
            &["record"][..],
            &tap,
            &["--out", "x.pcapng", "--duration", "2s"],
        ]
        .concat();
        let Command::Record(r) = parse(&record) else {
            panic!("record")
        };
        assert_eq!(r.duration, Some(Duration::from_secs(2)));
        let run = [
            &["run"][..],
            &tap,
            &["--candidate", "http://127.0.0.1:9090", "--duration", "60"],
            &[
                "--timeout",
                "1.5",
                "--retention-age",
                "7d",
                "--sample",
                "25%",
            ],
        ]
        .concat();
        let Command::Run(r) = parse(&run) else {
            panic!("run")
        };
        assert_eq!(r.duration, Some(Duration::from_secs(60)));
        assert_eq!(r.pipeline.timeout, Duration::from_millis(1500));
        assert_eq!(
            r.pipeline.retention_age,
            Some(Duration::from_secs(7 * 86_400))
        );
        assert_eq!(r.pipeline.sample, SamplePercent(25.0));
        let bad = [
            &["run"][..],
            &tap,
            &["--candidate", "http://h:1", "--duration", "soon"],
        ]
        .concat();
        let e = <Cli as clap::Parser>::try_parse_from(["mirror-daemon"].iter().chain(&bad))
            .expect_err("a bad duration");
        assert_eq!(e.exit_code(), 2, "{e}");
        assert!(e.to_string().contains("write seconds"), "{e}");
    }

    #[test]
    fn min_latency_delta_has_a_floor_by_default_and_zero_is_strict() {
        use crate::cli::{Cli, Command};
        use mirror_daemon::verdict::{Evidence, Verdict, decide};
        let criteria = |extra: &[&str]| {
            let base = ["mirror-daemon", "report", "--max-p95-regression", "10%"];
            let args = [&base[..], extra].concat();
            let Command::Report(r) = <Cli as clap::Parser>::try_parse_from(args)
                .expect("report parses")
                .command
            else {
                panic!("report")
            };
            let text = crate::commands::common::criteria_text(&r.criteria);
            let c = crate::commands::common::criteria(&r.criteria).expect("criteria");
            (c, text)
        };
        let (default, text) = criteria(&[]);
        assert_eq!(default.min_latency_delta_ns, Some(1_000_000));
        assert!(text.contains("--min-latency-delta 1ms"), "{text}");
        let (strict, text) = criteria(&["--min-latency-delta", "0"]);
        assert_eq!(strict.min_latency_delta_ns, None);
        assert!(text.contains("--min-latency-delta 0s"), "{text}");
        assert_eq!(
            criteria(&["--min-latency-delta", "0ms"])
                .0
                .min_latency_delta_ns,
            None
        );
        assert_eq!(
            criteria(&["--min-latency-delta", "2.5ms"])
                .0
                .min_latency_delta_ns,
            Some(2_500_000)
        );
        let e = <Cli as clap::Parser>::try_parse_from([
            "mirror-daemon",
            "report",
            "--min-latency-delta",
            "soon",
        ])
        .expect_err("a bad floor");
        assert_eq!(e.exit_code(), 2, "{e}");
        // An identical sub-millisecond service (0.05 → 0.07 ms, +40 %) is GO by default
        // and NO-GO only when the user asks for the ratio alone ...
        let tiny = Evidence {
            compared: 100,
            replayed: 100,
            p95_legacy_ttlb_ns: Some(50_000),
            p95_candidate_ttlb_ns: Some(70_000),
            ..Evidence::default()
        };
        assert_eq!(decide(&default, &tiny), Verdict::Go);
        assert!(matches!(decide(&strict, &tiny), Verdict::NoGo { .. }));
        // ... while a real regression (+30 ms, the e2e known-bad control) fails by default.
        let slow = Evidence {
            p95_legacy_ttlb_ns: Some(2_000_000),
            p95_candidate_ttlb_ns: Some(32_000_000),
            p95_ttlb_delta_interval_ns: Some((29_000_000, 31_000_000)),
            ..tiny
        };
        assert!(matches!(decide(&default, &slow), Verdict::NoGo { .. }));
    }

    #[test]
    fn sample_percent_is_parsed_once() {
        assert_eq!(SamplePercent::parse("25%").unwrap(), SamplePercent(25.0));
        assert_eq!(SamplePercent::parse("1.5").unwrap().to_string(), "1.5%");
        assert!(SamplePercent::parse("101").is_err());
        assert!(SamplePercent::parse("-1").is_err());
    }
}
