//! The candidate reaper: a small helper process that ends the candidate's whole cgroup
//! (`cgroup.kill`) as soon as the daemon is gone, however it went — SIGKILL and the OOM
//! killer included, which no code in the daemon itself survives.
//!
//! The daemon holds the write end of a pipe whose read end is the reaper's stdin; the
//! kernel closes it when the daemon dies, and the reaper wakes on end-of-file. It runs
//! in its own session and ignores the stop signals a terminal or a service manager sends
//! to the daemon's process group, so it outlives the daemon for the moment it needs.
//! What it cannot survive is being killed itself (SIGKILL to it, or to every process of
//! the service); the next start's [`super::cgroup::remove_stale_candidates`] ends a
//! candidate left that way.
use std::{
    io::Read as _,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    time::{Duration, Instant},
};

/// The reaper's side: waits for the daemon to go, then ends `dirs` (v2 cgroup first).
pub fn run(dirs: &[PathBuf]) -> i32 {
    // SAFETY: setting dispositions to SIG_IGN.
    unsafe {
        for sig in [
            libc::SIGINT,
            libc::SIGTERM,
            libc::SIGHUP,
            libc::SIGPIPE,
            libc::SIGQUIT,
        ] {
            libc::signal(sig, libc::SIG_IGN);
        }
    }
    let mut stdin = std::io::stdin().lock();
    let mut buf = [0u8; 64];
    // Anything but end-of-file (or an error) is ignored: only the pipe's closing counts.
    while matches!(stdin.read(&mut buf), Ok(n) if n > 0) {}
    if super::cgroup::kill_and_remove(dirs) {
        0
    } else {
        1
    }
}

/// The daemon's side: the running reaper and the pipe that keeps it waiting.
#[derive(Debug)]
pub struct Reaper {
    child: Option<Child>,
    lifeline: Option<ChildStdin>,
}

impl Reaper {
    /// Starts `exe __candidate-reaper DIRS…`.
    pub fn spawn(exe: &Path, dirs: &[PathBuf]) -> std::io::Result<Self> {
        let mut cmd = Command::new(exe);
        cmd.arg("__candidate-reaper")
            .args(dirs)
            .stdin(Stdio::piped())
            .stdout(Stdio::null());
        // SAFETY: setsid is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn()?;
        let lifeline = child.stdin.take();
        Ok(Self {
            child: Some(child),
            lifeline,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }
}

impl Drop for Reaper {
    /// A normal stop: close the pipe (the reaper ends what is left) and collect it.
    fn drop(&mut self) {
        drop(self.lifeline.take());
        if let Some(mut c) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            tracing::warn!(pid = c.id(), "the candidate reaper did not finish");
        }
    }
}
