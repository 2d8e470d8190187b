//! CPU isolation: the daemon never takes CPU the legacy service wants.
//!
//! Every pipeline thread (tokio workers and blocking pool: sampling, masking, replay,
//! comparison, store, dashboard) runs at `SCHED_IDLE`: it gets only CPU time nothing
//! else on the host asks for. Under pressure those stages fall behind, their bounded
//! queues fill, and the excess is dropped and counted (`queue_full`,
//! `replay_queue_full`, `replay_late`, …) instead of slowing the legacy service.
//!
//! The capture thread is the ring-buffer reader: it frees ring space as it reassembles
//! and frames in place (the records are borrowed from the ring, never copied), so it is
//! the least work that keeps the kernel tap from overflowing. It stays `SCHED_OTHER` at
//! nice [`READER_NICE`]: above the idle pipeline, far below the legacy service's threads
//! (weight 110 against 1024 for each nice-0 thread). Should it fall behind anyway, the
//! kernel counts `ring_full`.
//!
//! `SCHED_IDLE` ranks a thread only against the other threads of its own cgroup: the
//! group itself competes with the legacy service at its weight (deploy/mirror.service's
//! `CPUWeight=20`), so `SCHED_IDLE` threads alone in the daemon's cgroup still took up to
//! a fifth of the group's share from a saturated host (docs/cost.md, round 7). Under
//! `--pipeline-priority idle-cgroup`, once the tap is attached, [`IdleGroup::enter`]
//! therefore moves the pipeline threads into a child
//! cgroup of the daemon's own, [`IDLE_GROUP`], marked `cpu.idle` (kernel 5.15+): the group
//! then runs only on CPU nothing outside it wants, and a waking legacy thread preempts it.
//! The main thread (signals, the stop) and the reader stay where they were; threads the
//! pipeline starts later inherit the idle group. Start-up runs before the move, so a busy
//! host does not starve the tap's loading. Where the cgroup cannot be written (cgroup v2
//! without `Delegate=`, a read-only mount) the daemon says so once and runs as before.
//! At shutdown the threads move back, so the drain is not starved either. It is not the
//! default: on a host busy with other work the dashboard, `/metrics` and the store's
//! periodic writes then wait for idle CPU too (an end-to-end test's 10 s snapshot
//! request timed out on this project's shared 2-core box).
//!
//! `--pipeline-priority normal` leaves every thread as it was started (for debugging, and
//! for measuring what isolation buys: `cargo xtask bench`).
use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
};

/// Nice value of the ring-buffer reader (the capture thread) under
/// [`PipelinePriority::Idle`]. The systemd unit (deploy/mirror.service) sets the same
/// `Nice=` for the whole service, so the main thread matches it.
pub const READER_NICE: i32 = 10;

/// Scheduling of the pipeline threads (`--pipeline-priority`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PipelinePriority {
    /// Pipeline threads at `SCHED_IDLE`, the ring-buffer reader at nice [`READER_NICE`].
    #[default]
    Idle,
    /// As `idle`, and once the tap is attached the pipeline threads move into a child
    /// cgroup marked `cpu.idle` ([`IdleGroup`]): they then get no CPU at all while the
    /// host is busy (the dashboard, metrics and the store's writes wait for idle CPU).
    IdleCgroup,
    /// Threads keep the policy and nice value they were started with.
    Normal,
}

impl std::fmt::Display for PipelinePriority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Idle => "idle",
            Self::IdleCgroup => "idle-cgroup",
            Self::Normal => "normal",
        })
    }
}

/// Called first on every pipeline thread (tokio's `on_thread_start`).
pub fn pipeline_thread(priority: PipelinePriority) {
    if priority != PipelinePriority::Normal {
        report(set_idle(), "SCHED_IDLE for a pipeline thread");
    }
}

/// Called first on the capture thread (the ring-buffer reader).
pub fn reader_thread(priority: PipelinePriority) {
    if priority != PipelinePriority::Normal {
        report(set_nice(READER_NICE), "nice for the ring-buffer reader");
    }
}

/// A hook for `tokio::runtime::Builder::on_thread_start`.
pub fn runtime_hook(priority: PipelinePriority) -> impl Fn() + Send + Sync + 'static {
    move || pipeline_thread(priority)
}

/// Name of the `cpu.idle` child of the daemon's own cgroup the pipeline threads run in.
pub const IDLE_GROUP: &str = "mirror-pipeline";

/// The name of the ring-buffer reader thread (kept out of the idle group).
pub const READER_THREAD: &str = "capture";

/// The pipeline threads moved into the `cpu.idle` child of the daemon's cgroup; moved
/// back on [`IdleGroup::leave`] or drop.
#[derive(Debug)]
pub struct IdleGroup {
    parent: PathBuf,
    child: PathBuf,
    /// cgroup v2: threads move through `cgroup.threads`, v1 through `tasks`.
    v2: bool,
    moved: Vec<u32>,
}

impl IdleGroup {
    /// Moves every thread of this process but the main one and the reader into the idle
    /// group under `idle-cgroup` (`None`, logged, where that is refused).
    pub fn enter(priority: PipelinePriority) -> Option<IdleGroup> {
        if priority != PipelinePriority::IdleCgroup {
            return None;
        }
        let result = Self::try_enter();
        if let Err(e) = &result {
            tracing::warn!(error = %e, "no cpu.idle cgroup for the pipeline threads: at SCHED_IDLE they still get the daemon cgroup's share of a busy host's CPU");
        }
        result.ok()
    }

    fn try_enter() -> std::io::Result<IdleGroup> {
        let parent = own_cpu_cgroup()?;
        let v2 = parent.join("cgroup.threads").exists() && !parent.join("tasks").exists();
        let child = parent.join(IDLE_GROUP);
        match std::fs::create_dir(&child) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
        if v2 {
            // Threads of one process may sit in different cgroups only in a threaded
            // subtree; the cpu controller is a threaded one.
            write(&child.join("cgroup.type"), "threaded")?;
            write(&parent.join("cgroup.subtree_control"), "+cpu")?;
        }
        write(&child.join("cpu.idle"), "1")?;
        let tasks = own_threads()?;
        let main = std::process::id();
        let mut group = IdleGroup {
            parent,
            child,
            v2,
            moved: Vec::new(),
        };
        for tid in pipeline_threads(&tasks, main) {
            // A thread that ended meanwhile is simply not moved.
            if group.move_thread(tid, true).is_ok() {
                group.moved.push(tid);
            }
        }
        tracing::info!(group = %group.child.display(), threads = group.moved.len(), "pipeline threads in a cpu.idle cgroup");
        Ok(group)
    }

    fn move_thread(&self, tid: u32, into_idle: bool) -> std::io::Result<()> {
        let dir = if into_idle { &self.child } else { &self.parent };
        let file = if self.v2 { "cgroup.threads" } else { "tasks" };
        write(&dir.join(file), &tid.to_string())
    }

    /// Every thread in the idle group (later ones included) back to the daemon's cgroup,
    /// then the group removed if no other daemon uses it.
    pub fn leave(mut self) {
        self.release();
    }

    fn release(&mut self) {
        let file = if self.v2 { "cgroup.threads" } else { "tasks" };
        let mut back: Vec<u32> = std::mem::take(&mut self.moved);
        if let Ok(text) = std::fs::read_to_string(self.child.join(file)) {
            let pid = std::process::id();
            // Only our own threads (another daemon may share the group).
            back.extend(
                text.lines()
                    .filter_map(|l| l.trim().parse::<u32>().ok())
                    .filter(|t| Path::new(&format!("/proc/{pid}/task/{t}")).exists()),
            );
        }
        back.sort_unstable();
        back.dedup();
        for tid in back {
            let _ = self.move_thread(tid, false);
        }
        let _ = std::fs::remove_dir(&self.child);
    }
}

impl Drop for IdleGroup {
    fn drop(&mut self) {
        if !self.moved.is_empty() {
            self.release();
        }
    }
}

/// The threads to move: all but the main thread (`main`, it handles signals and the
/// stop) and the ring-buffer reader.
pub fn pipeline_threads(tasks: &[(u32, String)], main: u32) -> Vec<u32> {
    tasks
        .iter()
        .filter(|(tid, name)| *tid != main && name != READER_THREAD)
        .map(|(tid, _)| *tid)
        .collect()
}

/// (task id, name) of every thread of this process.
fn own_threads() -> std::io::Result<Vec<(u32, String)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc/self/task")? {
        let entry = entry?;
        let Ok(tid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let name = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        out.push((tid, name.trim().to_string()));
    }
    Ok(out)
}

/// The directory of this process's cpu cgroup. `ip netns exec` remounts /sys without the
/// cgroup file systems, so they are also looked for through init's root.
fn own_cpu_cgroup() -> std::io::Result<PathBuf> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup")?;
    for root in ["/sys/fs/cgroup", "/proc/1/root/sys/fs/cgroup"] {
        if let Some(dir) = crate::quota::cpu_stat_path(&cgroups, Path::new(root))
            .and_then(|p| p.parent().map(Path::to_path_buf))
            && dir.is_dir()
        {
            return Ok(dir);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::NotFound,
        "this process's cpu cgroup is not visible",
    ))
}

fn write(path: &Path, value: &str) -> std::io::Result<()> {
    std::fs::write(path, value).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("writing {value} to {}: {e}", path.display()),
        )
    })
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

/// The calling thread (pid 0 means the caller) to `SCHED_IDLE`.
fn set_idle() -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: plain system call on the calling thread with a valid parameter block.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
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
    fn the_idle_group_takes_every_thread_but_main_and_the_reader() {
        let tasks = [
            (100, "mirror-daemon".to_string()),
            (101, "tokio-rt-worker".to_string()),
            (102, "capture".to_string()),
            (103, "tokio-rt-worker".to_string()),
            (104, "mirror-daemon".to_string()),
        ];
        // A thread named like the process (a std thread without a name) is not main.
        assert_eq!(pipeline_threads(&tasks, 100), vec![101, 103, 104]);
        assert_eq!(pipeline_threads(&tasks[..1], 100), Vec::<u32>::new());
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
