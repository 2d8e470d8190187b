//! The CPU settings the bench gives the daemon and the candidate: the daemon's are the
//! ones deploy/mirror.service gives it in production (`CPUWeight=`, `CPUQuota=`), the
//! candidate's a stated limit, as `mirror-daemon run --candidate-cpu` sets it, so the
//! figures measure the daemon and not a candidate sharing the legacy host's two cores.
//! cgroup v2 when mounted as such, else the v1 `cpu` hierarchy (a hybrid host).
use std::{fs, path::PathBuf};

use anyhow::{Context as _, Result};

/// deploy/mirror.service: `CPUWeight=20` (cgroup v1: shares = weight × 1024 / 100).
pub const DAEMON_CPU_WEIGHT: u64 = 20;
/// deploy/mirror.service: `CPUQuota=50%`.
pub const DAEMON_CPU_PERCENT: u64 = 50;
/// The candidate's limit, as `--candidate-cpu 50%` would set it.
pub const CANDIDATE_CPU_PERCENT: u64 = 50;
const PERIOD_US: u64 = 100_000;

/// One cgroup created for the run, removed (once empty) when dropped.
pub struct Cgroup {
    dir: PathBuf,
}

impl Cgroup {
    /// `name` under the cpu controller's root, with a weight (if any) and a quota.
    pub fn create(name: &str, weight: Option<u64>, cpu_percent: u64) -> Result<Cgroup> {
        let v2 = PathBuf::from("/sys/fs/cgroup/cgroup.controllers").exists();
        let root = if v2 {
            PathBuf::from("/sys/fs/cgroup")
        } else {
            PathBuf::from("/sys/fs/cgroup/cpu")
        };
        if v2 {
            // The cpu controller must be enabled for the root's children.
            let _ = fs::write(root.join("cgroup.subtree_control"), "+cpu");
        }
        let dir = root.join(name);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let cg = Cgroup { dir };
        let quota = cpu_percent * PERIOD_US / 100;
        if v2 {
            cg.write("cpu.max", &format!("{quota} {PERIOD_US}"))?;
            if let Some(w) = weight {
                cg.write("cpu.weight", &w.to_string())?;
            }
        } else {
            cg.write("cpu.cfs_period_us", &PERIOD_US.to_string())?;
            cg.write("cpu.cfs_quota_us", &quota.to_string())?;
            if let Some(w) = weight {
                cg.write("cpu.shares", &(w * 1024 / 100).to_string())?;
            }
        }
        Ok(cg)
    }

    /// Moves a process (all its threads) into the cgroup.
    pub fn add(&self, pid: u32) -> Result<()> {
        self.write("cgroup.procs", &pid.to_string())
    }

    fn write(&self, file: &str, value: &str) -> Result<()> {
        let path = self.dir.join(file);
        fs::write(&path, value).with_context(|| format!("writing {value} to {}", path.display()))
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // Its processes may take a moment to exit after the lab's SIGTERM.
        for _ in 0..60 {
            if fs::remove_dir(&self.dir).is_ok() || !self.dir.exists() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        eprintln!("xtask bench: clean-up: {} not removed", self.dir.display());
    }
}
