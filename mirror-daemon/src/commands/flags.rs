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
    fn sample_percent_is_parsed_once() {
        assert_eq!(SamplePercent::parse("25%").unwrap(), SamplePercent(25.0));
        assert_eq!(SamplePercent::parse("1.5").unwrap().to_string(), "1.5%");
        assert!(SamplePercent::parse("101").is_err());
        assert!(SamplePercent::parse("-1").is_err());
    }
}
