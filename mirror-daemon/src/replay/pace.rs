//! Replay pace: requests leave at the capture's own pace (`--speed 1`), faster
//! (`--speed 2`) or as fast as the candidate takes them (`--speed max`).
use std::time::Duration;

/// `--speed`: a factor on the capture's pace, or no pacing at all.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Speed {
    Factor(f64),
    Max,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "--speed {0:?}: expected a factor on the capture's pace such as `1`, `2` or `0.5`, or `max`"
)]
pub struct SpeedError(pub String);

impl std::str::FromStr for Speed {
    type Err = SpeedError;
    fn from_str(s: &str) -> Result<Self, SpeedError> {
        let t = s.trim();
        if t.eq_ignore_ascii_case("max") {
            return Ok(Speed::Max);
        }
        let t = t.strip_suffix(['x', 'X']).unwrap_or(t);
        match t.parse::<f64>() {
            Ok(f) if f.is_finite() && f > 0.0 && f <= 1000.0 => Ok(Speed::Factor(f)),
            _ => Err(SpeedError(s.to_string())),
        }
    }
}

/// How replayed requests are spaced in time.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Pace {
    /// Offline input: the capture's own spacing, scaled by `--speed`.
    Capture(Speed),
    /// Live input: each request leaves this long after legacy received it (tap time,
    /// `CLOCK_MONOTONIC`), so the ring buffer's batching (it is polled every 20 ms) does
    /// not turn steady traffic into bursts at the candidate.
    Live(Duration),
}

/// Live requests leave this long after legacy got them: covers the ring's 20 ms polling
/// interval and the capture thread's work, so the spacing legacy saw is kept. Each waits
/// in its connection's lane meanwhile, so the lanes' bounds must hold this long of
/// traffic: 100 ms overflowed them on one fast keep-alive connection (e2e `shadow`).
pub const LIVE_REPLAY_DELAY: Duration = Duration::from_millis(50);

/// How long to wait, from now (`now_mono_ns`, `CLOCK_MONOTONIC`), before replaying a
/// live request legacy received at `received_mono_ns`; zero when already late.
pub fn live_wait(received_mono_ns: u64, now_mono_ns: u64, delay: Duration) -> Duration {
    let due = received_mono_ns.saturating_add(delay.as_nanos() as u64);
    Duration::from_nanos(due.saturating_sub(now_mono_ns))
}

/// Maps capture timestamps to offsets from the start of the replay. The first request
/// seen sets the origin; a request captured before the origin (its exchange completed
/// later than one that started after it) is due at once.
#[derive(Debug)]
pub struct Pacer {
    speed: Speed,
    origin_ns: Option<u64>,
}

impl Pacer {
    pub fn new(speed: Speed) -> Self {
        Self {
            speed,
            origin_ns: None,
        }
    }

    /// How long after the replay's start the request captured at `captured_ns` is due;
    /// `None` with `--speed max`.
    pub fn due(&mut self, captured_ns: u64) -> Option<Duration> {
        let Speed::Factor(f) = self.speed else {
            return None;
        };
        let origin = *self.origin_ns.get_or_insert(captured_ns);
        let since = captured_ns.saturating_sub(origin) as f64 / f;
        Some(Duration::from_nanos(since as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_requests_keep_their_spacing() {
        let d = Duration::from_millis(100);
        // Two requests 5 ms apart that reach the daemon together (one ring poll) leave
        // 5 ms apart.
        let now = 1_000_000_000 + 20_000_000;
        let a = live_wait(1_000_000_000, now, d);
        let b = live_wait(1_005_000_000, now, d);
        assert_eq!(b - a, Duration::from_millis(5));
        assert_eq!(a, Duration::from_millis(80));
        // Already late: at once.
        assert_eq!(live_wait(1, 10_000_000_000, d), Duration::ZERO);
    }

    #[test]
    fn speeds_parse() {
        assert_eq!("1".parse(), Ok(Speed::Factor(1.0)));
        assert_eq!("2x".parse(), Ok(Speed::Factor(2.0)));
        assert_eq!("MAX".parse(), Ok(Speed::Max));
        for bad in ["0", "-1", "fast", "", "nan", "inf"] {
            assert!(bad.parse::<Speed>().is_err(), "{bad}");
        }
    }

    #[test]
    fn offsets_follow_the_capture() {
        let mut p = Pacer::new(Speed::Factor(2.0));
        assert_eq!(p.due(10_000_000_000), Some(Duration::ZERO));
        assert_eq!(p.due(12_000_000_000), Some(Duration::from_secs(1)));
        // Captured before the origin: due at once.
        assert_eq!(p.due(9_000_000_000), Some(Duration::ZERO));
        let mut p = Pacer::new(Speed::Factor(1.0));
        assert_eq!(p.due(5), Some(Duration::ZERO));
        assert_eq!(p.due(1_000_000_005), Some(Duration::from_secs(1)));
        assert_eq!(Pacer::new(Speed::Max).due(7), None);
    }
}
