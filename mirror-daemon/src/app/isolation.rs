//! CPU isolation: the daemon never takes CPU the legacy service wants.
//!
//! Every pipeline thread (tokio workers and blocking pool: sampling, masking, replay,
//! comparison, store) runs at `SCHED_IDLE`: it gets no CPU time the daemon's other
//! threads ask for. Against the legacy service it is the daemon's cgroup that competes,
//! at its weight: a `SCHED_IDLE` thread alone in a cgroup of weight 20 still took 5–28 %
//! of a CPU from a saturated host, in one of weight 1 about 1 %, and a `cpu.idle` child
//! cgroup would not change that (docs/cost.md, round 7b). Hence deploy/mirror.service's
//! `CPUWeight=1`. Under pressure those stages fall behind, their bounded queues fill,
//! and the excess is dropped and counted (`queue_full`, `replay_queue_full`,
//! `replay_late`, …).
//!
//! The capture thread is the ring-buffer reader: it frees ring space as it reassembles
//! and frames in place (the records are borrowed from the ring, never copied), so it is
//! the least work that keeps the kernel tap from overflowing. It stays `SCHED_OTHER` at
//! nice [`READER_NICE`]: above the idle pipeline within the daemon's cgroup, whose weight
//! ranks it against the legacy service. Should it fall behind anyway (a saturated host
//! leaves the weight-1 unit about 1 % of a CPU), the kernel counts `ring_full`.
//!
//! The dashboard/metrics listener has its own thread at the reader's nice value: a
//! scrape costs little and comes seldom, and served from the idle pipeline it would time
//! out on a busy host, exactly when the figures matter.
//!
//! `--pipeline-priority normal` leaves every thread as it was started (for debugging, and
//! for measuring what isolation buys: `cargo xtask bench`).
use std::sync::atomic::{AtomicBool, Ordering};

/// Nice value of the ring-buffer reader (the capture thread) under
/// [`PipelinePriority::Idle`]. The systemd unit (deploy/mirror.service) sets the same
/// `Nice=` for the whole service, so the main thread matches it.
pub const READER_NICE: i32 = 10;

/// Scheduling of the pipeline threads (`--pipeline-priority`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PipelinePriority {
    /// Pipeline threads at `SCHED_IDLE`, the ring-buffer reader at nice [`READER_NICE`].
    #[default]
    Idle,
    /// Threads keep the policy and nice value they were started with.
    Normal,
}

impl std::fmt::Display for PipelinePriority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Idle => "idle",
            Self::Normal => "normal",
        })
    }
}

/// Called first on every pipeline thread (tokio's `on_thread_start`).
pub fn pipeline_thread(priority: PipelinePriority) {
    if priority == PipelinePriority::Idle {
        report(
            set_policy(libc::SCHED_IDLE),
            "SCHED_IDLE for a pipeline thread",
        );
    }
}

/// Called first on the capture thread (the ring-buffer reader).
pub fn reader_thread(priority: PipelinePriority) {
    above_pipeline(priority, "the ring-buffer reader");
}

/// Called first on the dashboard/metrics thread: scrapes are answered on a busy host,
/// at the reader's priority (they cost little and come seldom).
pub fn monitor_thread(priority: PipelinePriority) {
    above_pipeline(priority, "the dashboard/metrics listener");
}

/// `SCHED_OTHER` at nice [`READER_NICE`], whatever the spawning thread's policy was (a
/// thread inherits it, and a pipeline thread is `SCHED_IDLE`).
fn above_pipeline(priority: PipelinePriority, what: &str) {
    if priority == PipelinePriority::Idle {
        // SAFETY: plain system call on the calling thread.
        if unsafe { libc::sched_getscheduler(0) } != libc::SCHED_OTHER {
            report(
                set_policy(libc::SCHED_OTHER),
                &format!("SCHED_OTHER for {what}"),
            );
        }
        report(set_nice(READER_NICE), &format!("nice for {what}"));
    }
}

/// A hook for `tokio::runtime::Builder::on_thread_start`.
pub fn runtime_hook(priority: PipelinePriority) -> impl Fn() + Send + Sync + 'static {
    move || pipeline_thread(priority)
}

/// A refusal (a seccomp profile, say) is logged once, never fatal: the daemon then runs
/// as before, which the log says.
fn report(result: std::io::Result<()>, what: &str) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if let Err(e) = result
        && !WARNED.swap(true, Ordering::Relaxed)
    {
        tracing::warn!(error = %e, "{what} refused: the daemon competes with the legacy service for CPU");
    }
}

/// The calling thread (pid 0 means the caller) to `policy` (`SCHED_IDLE`, or back to
/// `SCHED_OTHER`: a no-op when it is already).
fn set_policy(policy: libc::c_int) -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: plain system call on the calling thread with a valid parameter block.
    let rc = unsafe { libc::sched_setscheduler(0, policy, &param) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The calling thread's nice value (Linux keeps one per thread).
fn set_nice(nice: i32) -> std::io::Result<()> {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    // SAFETY: plain system call on our own thread id.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (policy, nice) of the calling thread.
    fn own_scheduling() -> (i32, i32) {
        // SAFETY: plain system calls on the calling thread.
        unsafe {
            let policy = libc::sched_getscheduler(0);
            let tid = libc::gettid();
            let nice = libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t);
            (policy, nice)
        }
    }

    fn on_new_thread(f: impl FnOnce() + Send + 'static) -> (i32, i32) {
        std::thread::spawn(move || {
            f();
            own_scheduling()
        })
        .join()
        .expect("the probe thread does not panic")
    }

    #[test]
    fn idle_puts_pipeline_threads_at_sched_idle_and_the_reader_at_nice() {
        let (policy, _) = on_new_thread(|| pipeline_thread(PipelinePriority::Idle));
        assert_eq!(policy, libc::SCHED_IDLE);
        let (policy, nice) = on_new_thread(|| reader_thread(PipelinePriority::Idle));
        assert_eq!((policy, nice), (libc::SCHED_OTHER, READER_NICE));
    }

    #[test]
    fn the_dashboard_thread_leaves_sched_idle_even_when_an_idle_thread_starts_it() {
        // Leaving SCHED_IDLE needs CAP_SYS_NICE (or an RLIMIT_NICE allowance).
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root");
            return;
        }
        let (policy, _) = on_new_thread(|| {
            pipeline_thread(PipelinePriority::Idle);
            let inherited = on_new_thread(|| {});
            assert_eq!(
                inherited.0,
                libc::SCHED_IDLE,
                "a new thread inherits the policy"
            );
            let monitor = on_new_thread(|| monitor_thread(PipelinePriority::Idle));
            assert_eq!(monitor, (libc::SCHED_OTHER, READER_NICE));
        });
        assert_eq!(policy, libc::SCHED_IDLE);
    }

    #[test]
    fn normal_leaves_threads_as_started() {
        let started = on_new_thread(|| {});
        assert_eq!(
            on_new_thread(|| pipeline_thread(PipelinePriority::Normal)),
            started
        );
        assert_eq!(
            on_new_thread(|| reader_thread(PipelinePriority::Normal)),
            started
        );
    }

    #[test]
    fn the_runtime_hook_reaches_worker_and_blocking_threads() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .on_thread_start(runtime_hook(PipelinePriority::Idle))
            .build()
            .expect("a runtime");
        let worker = rt.block_on(async { tokio::spawn(async { own_scheduling().0 }).await });
        let blocking =
            rt.block_on(async { tokio::task::spawn_blocking(|| own_scheduling().0).await });
        assert_eq!(worker.expect("worker task"), libc::SCHED_IDLE);
        assert_eq!(blocking.expect("blocking task"), libc::SCHED_IDLE);
    }
}
