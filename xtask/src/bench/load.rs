//! Load generators, run in the client namespace and bounded in count and time: wrk for
//! saturation (closed loop), oha for fixed rates (open loop, with latency correction so a
//! stall is charged to every request it delayed).
use std::{path::Path, time::Duration};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;

use super::lab::Lab;
use super::procs::Proc;

/// How hard a run pushes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Load {
    /// A fixed rate in requests per second (oha -q).
    Rate(u32),
    /// As fast as the server answers (wrk).
    Saturation,
}

impl Load {
    pub fn label(self) -> String {
        match self {
            Load::Rate(r) if r % 1000 == 0 => format!("{}k/s", r / 1000),
            Load::Rate(r) => format!("{r}/s"),
            Load::Saturation => "saturation".into(),
        }
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct LoadResult {
    pub tool: String,
    /// Requests that got a response.
    pub completed: u64,
    /// Socket errors, timeouts and non-2xx answers.
    pub errors: u64,
    pub seconds: f64,
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// Connections the generators use: enough for 10k req/s at a few ms of latency.
const CONNECTIONS: u32 = 64;

pub fn run(
    lab: &Lab,
    oha: &Path,
    load: Load,
    url: &str,
    seconds: u64,
    name: &str,
) -> Result<LoadResult> {
    match load {
        Load::Saturation => wrk(lab, url, seconds, name),
        Load::Rate(rate) => oha_rate(lab, oha, url, rate, seconds, name),
    }
}

fn wrk(lab: &Lab, url: &str, seconds: u64, name: &str) -> Result<LoadResult> {
    let argv: Vec<String> = [
        "wrk",
        "-t2",
        &format!("-c{CONNECTIONS}"),
        &format!("-d{seconds}s"),
        "--latency",
        "--timeout",
        "5s",
        url,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut p = Proc::spawn(lab, &lab.client_ns, name, &argv)?;
    let st = p.wait(Duration::from_secs(seconds + 20))?;
    if !st.success() {
        bail!("wrk failed ({st}): {}", p.tail());
    }
    parse_wrk(&p.stdout())
}

/// Parses wrk's text report (`--latency` adds the percentile table).
pub fn parse_wrk(text: &str) -> Result<LoadResult> {
    let mut r = LoadResult {
        tool: "wrk".into(),
        ..LoadResult::default()
    };
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["Latency", _avg, _stdev, max, ..] => r.max_ms = wrk_time_ms(max)?,
            ["50%", v] => r.p50_ms = wrk_time_ms(v)?,
            ["99%", v] => r.p99_ms = wrk_time_ms(v)?,
            [n, "requests", "in", secs, ..] => {
                r.completed = n.parse()?;
                r.seconds = wrk_time_ms(secs.trim_end_matches(','))? / 1000.0;
            }
            ["Requests/sec:", v] => r.rps = v.parse()?,
            ["Socket", "errors:", rest @ ..] => {
                r.errors += rest
                    .iter()
                    .filter_map(|t| t.trim_end_matches(',').parse::<u64>().ok())
                    .sum::<u64>();
            }
            ["Non-2xx", "or", "3xx", "responses:", n] => r.errors += n.parse::<u64>()?,
            _ => {}
        }
    }
    if r.completed == 0 {
        bail!("wrk completed no request:\n{text}");
    }
    Ok(r)
}

/// wrk prints times as `812.00us`, `1.23ms`, `2.00s`, `1.50m`.
fn wrk_time_ms(s: &str) -> Result<f64> {
    let units = [("us", 0.001), ("ms", 1.0), ("s", 1000.0), ("m", 60_000.0)];
    for (suffix, factor) in units {
        if let Some(v) = s.strip_suffix(suffix)
            && let Ok(x) = v.parse::<f64>()
        {
            return Ok(x * factor);
        }
    }
    bail!("unknown wrk time {s:?}")
}

fn oha_rate(
    lab: &Lab,
    oha: &Path,
    url: &str,
    rate: u32,
    seconds: u64,
    name: &str,
) -> Result<LoadResult> {
    oha_rate_to(lab, oha, &[url.to_string()], rate, seconds, name)
}

/// oha at a fixed rate over the URLs listed in `file` (one per line; oha picks one at
/// random per request), same connections and bounds as the other fixed-rate runs.
pub fn oha_rate_urls(
    lab: &Lab,
    oha: &Path,
    file: &Path,
    rate: u32,
    seconds: u64,
    name: &str,
) -> Result<LoadResult> {
    let p = oha_start(
        lab,
        &lab.client_ns,
        oha,
        &urls_target(file),
        rate,
        seconds,
        name,
    )?;
    oha_finish(p, seconds)
}

/// oha's target arguments for a file of URLs (one per line; oha picks one at random
/// per request).
pub fn urls_target(file: &Path) -> Vec<String> {
    vec!["--urls-from-file".to_string(), file.display().to_string()]
}

fn oha_rate_to(
    lab: &Lab,
    oha: &Path,
    target: &[String],
    rate: u32,
    seconds: u64,
    name: &str,
) -> Result<LoadResult> {
    let p = oha_start(lab, &lab.client_ns, oha, target, rate, seconds, name)?;
    oha_finish(p, seconds)
}

/// Starts oha at a fixed rate in namespace `ns` (two can run side by side).
pub fn oha_start(
    lab: &Lab,
    ns: &str,
    oha: &Path,
    target: &[String],
    rate: u32,
    seconds: u64,
    name: &str,
) -> Result<Proc> {
    // A fixed duration, and `-w` waits for the requests still in flight at its end
    // (instead of aborting them), so every request sent is answered and counted: the
    // capture can be compared request for request, and an overloaded configuration
    // shows as fewer requests, not as a run that never ends.
    let argv: Vec<String> = vec![
        oha.display().to_string(),
        "--no-tui".into(),
        "--output-format".into(),
        "json".into(),
        "-z".into(),
        format!("{seconds}s"),
        "-w".into(),
        "-c".into(),
        CONNECTIONS.to_string(),
        "-q".into(),
        rate.to_string(),
        "--latency-correction".into(),
        "-t".into(),
        "5s".into(),
    ];
    let argv: Vec<String> = argv.into_iter().chain(target.iter().cloned()).collect();
    Proc::spawn(lab, ns, name, &argv)
}

/// Waits for an oha started by `oha_start` and parses its report.
pub fn oha_finish(mut p: Proc, seconds: u64) -> Result<LoadResult> {
    let st = p.wait(Duration::from_secs(seconds + 30))?;
    if !st.success() {
        bail!("oha failed ({st}): {}", p.tail());
    }
    parse_oha(&p.stdout())
}

/// Parses oha's JSON report (times in seconds).
pub fn parse_oha(text: &str) -> Result<LoadResult> {
    let v: serde_json::Value = serde_json::from_str(text).context("oha JSON report")?;
    let secs = |p: &str| v.pointer(p).and_then(serde_json::Value::as_f64);
    let mut completed = 0;
    let mut errors = 0;
    if let Some(codes) = v
        .pointer("/statusCodeDistribution")
        .and_then(|c| c.as_object())
    {
        for (code, n) in codes {
            let n = n.as_u64().unwrap_or(0);
            completed += n;
            if !code.starts_with('2') {
                errors += n;
            }
        }
    }
    if let Some(errs) = v.pointer("/errorDistribution").and_then(|c| c.as_object()) {
        errors += errs.values().filter_map(|n| n.as_u64()).sum::<u64>();
    }
    if completed == 0 {
        bail!("oha completed no request: {text}");
    }
    Ok(LoadResult {
        tool: "oha".into(),
        completed,
        errors,
        seconds: secs("/summary/total").unwrap_or(0.0),
        rps: secs("/summary/requestsPerSec").unwrap_or(0.0),
        p50_ms: secs("/latencyPercentiles/p50").unwrap_or(f64::NAN) * 1000.0,
        p99_ms: secs("/latencyPercentiles/p99").unwrap_or(f64::NAN) * 1000.0,
        max_ms: secs("/summary/slowest").unwrap_or(f64::NAN) * 1000.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_report() {
        let text = "Running 3s test @ http://10.77.0.2:8080/data.json
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.23ms  456.00us  12.34ms   89.00%
    Req/Sec    10.00k     1.00k   12.00k    70.00%
  Latency Distribution
     50%  812.00us
     75%    1.50ms
     90%    2.00ms
     99%    3.10ms
  60000 requests in 3.00s, 70.00MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
Requests/sec:  20000.00
Transfer/sec:     23.33MB
";
        let r = parse_wrk(text).unwrap();
        assert_eq!(r.completed, 60000);
        assert_eq!(r.errors, 3);
        assert!((r.p50_ms - 0.812).abs() < 1e-9);
        assert!((r.p99_ms - 3.1).abs() < 1e-9);
        assert!((r.max_ms - 12.34).abs() < 1e-9);
        assert!((r.rps - 20000.0).abs() < 1e-9);
        assert!((r.seconds - 3.0).abs() < 1e-9);
    }
}
