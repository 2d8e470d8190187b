//! When a lane writes: at its exchange's due time, to well under a millisecond. tokio's
//! timer wakes on whole milliseconds, so lanes whose requests are due within the same
//! millisecond would all write at its end, micro-bursts legacy never saw. A lane sleeps
//! on its own one-shot `timerfd` instead (a kernel high-resolution timer, one per lane,
//! woken through tokio's reactor: one wake-up per paced exchange as before, no busy
//! wait, no extra thread); without one, on tokio's timer.
use std::{
    io,
    os::fd::{AsFd as _, AsRawFd, RawFd},
    time::Duration,
};

use nix::sys::{
    time::TimeSpec,
    timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags},
};
use tokio::{
    io::{Interest, unix::AsyncFd},
    time::Instant,
};

/// Closer than this to its due time, a lane writes at once: under a scheduler's wake-up
/// latency, a timer would only add a system call.
pub const FINE_SLACK: Duration = Duration::from_micros(20);

/// How long a lane still waits for `at`, seen at `now`; `None`: due (or close enough).
pub fn wait_left(now: Instant, at: Instant) -> Option<Duration> {
    let left = at.saturating_duration_since(now);
    (left > FINE_SLACK).then_some(left)
}

/// A lane's high-resolution timer.
pub struct FineTimer {
    fd: AsyncFd<Fd>,
}

struct Fd(TimerFd);

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

impl FineTimer {
    pub fn new() -> io::Result<Self> {
        let t = TimerFd::new(
            ClockId::CLOCK_MONOTONIC,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )?;
        // SAFETY: `TimerFd` owns its descriptor (an `OwnedFd`), which stays open and the
        // same until the `AsyncFd` drops it.
        let fd = unsafe { AsyncFd::register_with_interest(Fd(t), Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        Ok(Self { fd })
    }

    /// Sleeps `d` (non-zero). Arming the timer resets its expiry count, so a stale
    /// readiness only costs one read that would block.
    async fn sleep(&self, d: Duration) -> io::Result<()> {
        let t = &self.fd.get_ref().0;
        t.set(
            Expiration::OneShot(TimeSpec::from_duration(d)),
            TimerSetTimeFlags::empty(),
        )?;
        loop {
            let mut ready = self.fd.readable().await?;
            if let Ok(read) = ready.try_io(|fd| fd.get_ref().0.wait().map_err(io::Error::from)) {
                return read;
            }
        }
    }
}

/// A lane's pacing: sleeps until `at` (`None`: at once) on the lane's high-resolution
/// timer (made on first use), or on tokio's timer, to the millisecond, without one.
pub async fn wait_until(at: Option<Instant>, fine: &mut Option<Result<FineTimer, ()>>) {
    let Some(at) = at else {
        return;
    };
    let Some(left) = wait_left(Instant::now(), at) else {
        return;
    };
    let timer = fine.get_or_insert_with(|| {
        FineTimer::new().map_err(|e| {
            tracing::debug!(error = %e, "no timerfd: lanes pace to the millisecond");
        })
    });
    match timer {
        Ok(t) if t.sleep(left).await.is_ok() => {}
        _ => tokio::time::sleep_until(at).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_due_within_one_millisecond_keep_their_offsets() {
        // Three lanes due 0.1, 0.4 and 0.9 ms after a millisecond tick: each waits its
        // own remainder instead of all writing at the next tick.
        let tick = Instant::now();
        let waits = [100, 400, 900].map(|us| wait_left(tick, tick + Duration::from_micros(us)));
        assert_eq!(
            waits,
            [100, 400, 900].map(|us| Some(Duration::from_micros(us)))
        );
        let far = wait_left(tick, tick + Duration::from_millis(50));
        assert_eq!(far, Some(Duration::from_millis(50)));
    }

    #[test]
    fn due_or_nearly_due_writes_at_once() {
        let now = Instant::now();
        assert_eq!(wait_left(now, now), None);
        assert_eq!(wait_left(now + Duration::from_millis(1), now), None, "late");
        assert_eq!(wait_left(now, now + FINE_SLACK), None);
        assert_eq!(
            wait_left(now, now + FINE_SLACK + Duration::from_nanos(1)),
            Some(FINE_SLACK + Duration::from_nanos(1))
        );
    }

    #[tokio::test]
    async fn the_fine_timer_wakes_a_lane_after_its_due_time() {
        // Not a timing assertion: only that the wait ends, and not before it is due.
        let mut fine = None;
        for wait in [Duration::from_micros(300), Duration::from_millis(5)] {
            let at = Instant::now() + wait;
            wait_until(Some(at), &mut fine).await;
            assert!(Instant::now() >= at - FINE_SLACK);
        }
        assert!(matches!(fine, Some(Ok(_))), "a timerfd was made");
    }
}
