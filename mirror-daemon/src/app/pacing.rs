//! When a lane writes: at its exchange's due time, to well under a millisecond. tokio's
//! timer wakes on whole milliseconds, so lanes whose requests are due within the same
//! millisecond would all write at its end, micro-bursts legacy never saw. A lane sleeps
//! on tokio's timer to within [`COARSE_MARGIN`] of the due time, then on a one-shot
//! `timerfd` (a kernel high-resolution timer, one per lane, woken through tokio's
//! reactor: no busy wait, no extra thread) for the rest.
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

/// tokio's timer fires at the first millisecond tick at or after a deadline, and later
/// when its thread is busy: a lane sleeps on it until this long before it is due.
pub const COARSE_MARGIN: Duration = Duration::from_millis(2);
/// Closer than this to its due time, a lane writes at once: under a scheduler's wake-up
/// latency, a timer would only add a system call.
pub const FINE_SLACK: Duration = Duration::from_micros(20);

/// What a lane does next to wait until it is due.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Due (or close enough): write now.
    Now,
    /// Far ahead: sleep on tokio's timer until this instant.
    Coarse(Instant),
    /// Within the margin: sleep this long on the high-resolution timer.
    Fine(Duration),
}

/// The next step towards `at`, seen at `now`.
pub fn step(now: Instant, at: Instant) -> Step {
    let left = at.saturating_duration_since(now);
    if left <= FINE_SLACK {
        Step::Now
    } else if left > COARSE_MARGIN {
        Step::Coarse(at - COARSE_MARGIN)
    } else {
        Step::Fine(left)
    }
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

/// A lane's pacing: sleeps until `at` (`None`: at once), on tokio's timer while far,
/// then on the lane's high-resolution timer (made on first use; without one, tokio's
/// timer alone, to the millisecond).
pub async fn wait_until(at: Option<Instant>, fine: &mut Option<Result<FineTimer, ()>>) {
    let Some(at) = at else {
        return;
    };
    // Bounded: a coarse sleep ends within the margin, a fine one at `at`.
    for _ in 0..4 {
        match step(Instant::now(), at) {
            Step::Now => return,
            Step::Coarse(until) => tokio::time::sleep_until(until).await,
            Step::Fine(d) => {
                let timer = fine.get_or_insert_with(|| {
                    FineTimer::new().map_err(|e| {
                        tracing::debug!(error = %e, "no timerfd: lanes pace to the millisecond");
                    })
                });
                match timer {
                    Ok(t) if t.sleep(d).await.is_ok() => {}
                    _ => tokio::time::sleep_until(at).await,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn far_due_times_sleep_on_the_coarse_timer_to_within_the_margin() {
        let now = Instant::now();
        let at = now + Duration::from_millis(50);
        assert_eq!(step(now, at), Step::Coarse(at - COARSE_MARGIN));
        // Woken by the coarse timer anywhere inside the margin: the rest is fine.
        let woke = at - Duration::from_micros(1_700);
        assert_eq!(step(woke, at), Step::Fine(Duration::from_micros(1_700)));
    }

    #[test]
    fn requests_due_within_one_millisecond_keep_their_offsets() {
        // Three lanes due 0.1, 0.4 and 0.9 ms after a millisecond tick: each waits its
        // own remainder instead of all writing at the next tick.
        let tick = Instant::now();
        let due = [100, 400, 900].map(|us| tick + Duration::from_micros(us));
        let waits: Vec<Step> = due.iter().map(|at| step(tick, *at)).collect();
        assert_eq!(
            waits,
            [100, 400, 900].map(|us| Step::Fine(Duration::from_micros(us)))
        );
    }

    #[test]
    fn due_or_nearly_due_writes_at_once() {
        let now = Instant::now();
        assert_eq!(step(now, now), Step::Now);
        assert_eq!(step(now + Duration::from_millis(1), now), Step::Now);
        assert_eq!(step(now, now + FINE_SLACK), Step::Now);
        assert_eq!(
            step(now, now + FINE_SLACK + Duration::from_nanos(1)),
            Step::Fine(FINE_SLACK + Duration::from_nanos(1))
        );
    }

    #[tokio::test]
    async fn the_fine_timer_wakes_a_lane_after_its_due_time() {
        // Not a timing assertion: only that the wait ends, and not before it is due.
        let mut fine = None;
        let at = Instant::now() + Duration::from_micros(300);
        wait_until(Some(at), &mut fine).await;
        assert!(Instant::now() >= at - FINE_SLACK);
        assert!(matches!(fine, Some(Ok(_))), "a timerfd was made");
        let at = Instant::now() + Duration::from_millis(5);
        wait_until(Some(at), &mut fine).await;
        assert!(Instant::now() >= at - FINE_SLACK);
    }
}
