//! When a tick's periodic duties are due (pure: the clock is passed in).
use std::time::{Duration, Instant};

/// How often [`super::Running::tick`] is due.
pub const TICK: Duration = Duration::from_millis(500);
/// How often the ledger is written to the store during a run.
const LEDGER_EVERY: Duration = Duration::from_secs(2);
/// How often retention is enforced.
const RETENTION_EVERY: Duration = Duration::from_secs(60);

/// The periodic duties a tick is due for (pure: the clock is passed in).
#[derive(Clone, Debug)]
pub struct Schedule {
    started: Instant,
    duration: Option<Duration>,
    last_ledger_write: Instant,
    retention: bool,
    last_retention: Option<Instant>,
}

/// What is due at one tick.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Due {
    pub write_ledger: bool,
    pub retention: bool,
    pub duration_reached: bool,
}

impl Schedule {
    pub fn new(started: Instant, duration: Option<Duration>, retention: bool) -> Self {
        Self {
            started,
            duration,
            last_ledger_write: started,
            retention,
            last_retention: None,
        }
    }

    /// What is due at `now`; what is due is taken as done.
    pub fn due(&mut self, now: Instant) -> Due {
        let write_ledger = now.saturating_duration_since(self.last_ledger_write) >= LEDGER_EVERY;
        if write_ledger {
            self.last_ledger_write = now;
        }
        // Retention runs at the first tick, then every minute.
        let retention = self.retention
            && self
                .last_retention
                .is_none_or(|t| now.saturating_duration_since(t) >= RETENTION_EVERY);
        if retention {
            self.last_retention = Some(now);
        }
        Due {
            write_ledger,
            retention,
            duration_reached: self.duration.is_some_and(|d| self.elapsed(now) >= d),
        }
    }

    pub fn elapsed(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.started)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ledger_is_written_every_two_seconds_and_retention_every_minute() {
        let t0 = Instant::now();
        let mut s = Schedule::new(t0, None, true);
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let first = s.due(at(500));
        assert!(!first.write_ledger);
        assert!(first.retention, "retention runs at the first tick");
        assert!(s.due(at(2_000)).write_ledger);
        assert!(!s.due(at(2_500)).write_ledger);
        assert!(s.due(at(4_000)).write_ledger);
        assert!(!s.due(at(59_000)).retention);
        assert!(s.due(at(60_500)).retention);
        assert!(!s.due(at(61_000)).retention);
    }

    #[test]
    fn retention_is_never_due_without_a_limit() {
        let t0 = Instant::now();
        let mut s = Schedule::new(t0, None, false);
        for secs in [0, 1, 60, 3600] {
            assert!(!s.due(t0 + Duration::from_secs(secs)).retention);
        }
    }

    #[test]
    fn the_duration_ends_the_run_once_elapsed() {
        let t0 = Instant::now();
        let mut s = Schedule::new(t0, Some(Duration::from_secs(60)), false);
        assert!(!s.due(t0 + Duration::from_secs(59)).duration_reached);
        assert!(s.due(t0 + Duration::from_secs(60)).duration_reached);
        let mut forever = Schedule::new(t0, None, false);
        assert!(
            !forever
                .due(t0 + Duration::from_secs(86_400))
                .duration_reached
        );
    }
}
