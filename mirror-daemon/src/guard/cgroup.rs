//! The candidate's cgroup (v2): an existing one given by the user, or one the daemon
//! creates for a candidate it starts itself.
use std::{
    fs::File,
    path::{Path, PathBuf},
};

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error(
        "{0} is not a cgroup v2 directory (mount cgroup2, e.g. at /sys/fs/cgroup or /sys/fs/cgroup/unified, and pass a directory inside it)"
    )]
    NotV2(String),
    #[error("no cgroup2 mount found (run `mirror-daemon check`)")]
    NoMount,
    #[error("cgroup {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// A cgroup v2 directory, opened.
#[derive(Debug)]
pub struct Cgroup {
    pub path: PathBuf,
    pub dir: File,
    /// Created by us: removed on drop (after its processes are gone).
    owned: bool,
    /// Same-named v1 cgroups carrying the candidate's limits on a hybrid host; removed
    /// with this one.
    limit_dirs: Vec<PathBuf>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        path: path.display().to_string(),
        source,
    }
}

impl Cgroup {
    /// Opens an existing cgroup v2 directory.
    pub fn open(path: &Path) -> Result<Self, CgroupError> {
        let st = nix::sys::statfs::statfs(path)
            .map_err(|_| CgroupError::NotV2(path.display().to_string()))?;
        if st.filesystem_type().0 as i64 != CGROUP2_SUPER_MAGIC {
            return Err(CgroupError::NotV2(path.display().to_string()));
        }
        let dir = File::open(path).map_err(io(path))?;
        Ok(Self {
            path: path.to_path_buf(),
            dir,
            owned: false,
            limit_dirs: Vec::new(),
        })
    }

    /// Creates `<cgroup2 mount>/<name>`, removed again on drop. It is root's and not
    /// delegated (0755, its files 0644): the candidate can neither leave it, nor move
    /// into another, nor change its limits.
    pub fn create(mount: &Path, name: &str) -> Result<Self, CgroupError> {
        use std::os::unix::fs::PermissionsExt as _;
        let path = mount.join(name);
        std::fs::create_dir(&path).map_err(io(&path))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .map_err(io(&path))?;
        let mut cg = Self::open(&path)?;
        cg.owned = true;
        Ok(cg)
    }

    /// Pids in this cgroup and the ones below it, `depth` levels down at most.
    pub fn pids_below(&self, depth: usize) -> Vec<u32> {
        fn walk(dir: &Path, depth: usize, out: &mut Vec<u32>) {
            if let Ok(s) = std::fs::read_to_string(dir.join("cgroup.procs")) {
                out.extend(s.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
            }
            if depth == 0 {
                return;
            }
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    walk(&e.path(), depth - 1, out);
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.path, depth, &mut out);
        out
    }

    /// The v1 limit cgroups that belong to this one (removed with it).
    pub fn set_limit_dirs(&mut self, dirs: Vec<PathBuf>) {
        self.limit_dirs = dirs;
    }

    /// Every `cgroup.procs` the candidate joins: this cgroup's, then its v1 limit cgroups'.
    pub fn join_files(&self) -> Vec<PathBuf> {
        std::iter::once(self.procs_file())
            .chain(self.limit_dirs.iter().map(|d| d.join("cgroup.procs")))
            .collect()
    }

    /// This cgroup and its limit cgroups (what the reaper ends).
    pub fn all_dirs(&self) -> Vec<PathBuf> {
        std::iter::once(self.path.clone())
            .chain(self.limit_dirs.iter().cloned())
            .collect()
    }

    /// The file a process writes its pid (or "0" for itself) to, to join the cgroup.
    pub fn procs_file(&self) -> PathBuf {
        self.path.join("cgroup.procs")
    }

    /// Pids currently in the cgroup.
    pub fn pids(&self) -> Vec<u32> {
        std::fs::read_to_string(self.procs_file())
            .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        if self.owned && !kill_and_remove(&self.all_dirs()) {
            tracing::warn!(path = %self.path.display(), "could not remove the candidate cgroup");
        }
    }
}

/// Kills every process of a candidate cgroup (`cgroup.kill` on the v2 one, kernels ≥
/// 5.14; SIGKILL per pid in v1 ones, which have no such file), then removes the
/// directories. The v2 directory comes first in `dirs`. Returns whether all are gone.
pub fn kill_and_remove(dirs: &[PathBuf]) -> bool {
    for dir in dirs {
        if dir.join("cgroup.kill").exists() {
            let _ = std::fs::write(dir.join("cgroup.kill"), "1");
        } else if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                // SAFETY: kill(2) with a pid read from the cgroup.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
    let mut all_gone = true;
    for dir in dirs {
        let mut gone = !dir.exists();
        for _ in 0..150 {
            if gone {
                break;
            }
            gone = std::fs::remove_dir(dir).is_ok() || !dir.exists();
            if !gone {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
        all_gone &= gone;
    }
    all_gone
}

/// Name prefix of the cgroups the daemon creates for a candidate it starts.
pub const CANDIDATE_PREFIX: &str = "mirror-candidate-";

/// Whether an egress-guard program is attached directly to the cgroup (BPF_PROG_QUERY on
/// the connect4 hook; the guard attaches all four hooks together).
fn guard_attached(dir: &File) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd as _;
    /// The `query` member of `union bpf_attr`.
    #[repr(C)]
    #[derive(Default)]
    struct ProgQuery {
        target_fd: u32,
        attach_type: u32,
        query_flags: u32,
        attach_flags: u32,
        prog_ids: u64,
        prog_cnt: u32,
        _pad: u32,
        prog_attach_flags: u64,
    }
    const BPF_PROG_QUERY: libc::c_long = 16;
    const BPF_CGROUP_INET4_CONNECT: u32 = 10;
    let mut attr = ProgQuery {
        target_fd: dir.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_INET4_CONNECT,
        ..Default::default()
    };
    // SAFETY: `attr` is a valid, initialized bpf_attr prefix of the size passed; with
    // prog_ids = 0 the kernel only writes prog_cnt and attach_flags.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_QUERY,
            &mut attr as *mut ProgQuery,
            std::mem::size_of::<ProgQuery>(),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(attr.prog_cnt > 0)
}

/// Kills and removes candidate cgroups left by a daemon that died without cleaning up
/// (SIGKILL, OOM kill): such a cgroup may still hold processes, but no guard is attached
/// any more, so they run unfenced. A live daemon's cgroup is never touched: it holds
/// processes only once its guard is attached, and an empty one is removed only when it
/// is more than a minute old. Returns the removed paths.
pub fn remove_stale_candidates(mount: &Path) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(mount) else {
        return removed;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with(CANDIDATE_PREFIX) {
            continue;
        }
        let Ok(mut cg) = Cgroup::open(&entry.path()) else {
            continue;
        };
        if guard_attached(&cg.dir).unwrap_or(true) {
            continue;
        }
        if cg.pids().is_empty() {
            // Empty and unguarded: a leftover, unless a daemon is starting right now
            // (created, guard not attached yet); those are seconds old.
            let old = std::fs::metadata(&cg.path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > std::time::Duration::from_secs(60));
            if old && std::fs::remove_dir(&cg.path).is_ok() {
                removed.push(cg.path.clone());
            }
            continue;
        }
        tracing::warn!(path = %cg.path.display(), pids = ?cg.pids(), "a candidate cgroup left by a dead daemon still runs processes without the egress guard: killing them");
        // Owned from here: dropping it kills what is left and removes the directory.
        cg.owned = true;
        let path = cg.path.clone();
        drop(cg);
        if !path.exists() {
            removed.push(path);
        }
    }
    // v1 limit cgroups whose v2 cgroup is gone.
    for root in super::limits::v1_roots() {
        let Ok(entries) = std::fs::read_dir(&root) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            if name.to_string_lossy().starts_with(CANDIDATE_PREFIX) && !mount.join(&name).exists() {
                let path = entry.path();
                if kill_and_remove(std::slice::from_ref(&path)) {
                    removed.push(path);
                }
            }
        }
    }
    removed
}

/// Where cgroup v2 is mounted (pure v2: /sys/fs/cgroup; hybrid: /sys/fs/cgroup/unified).
///
/// `ip netns exec` runs a process in a private mount namespace with /sys remounted, which
/// hides the host's cgroup2 mount. When PID 1's mount table shows cgroup2 but ours does
/// not, we are in such a private namespace: mount cgroup2 again at a private directory
/// (the same single hierarchy; the mount is invisible outside this namespace).
pub fn cgroup2_mount() -> Result<PathBuf, CgroupError> {
    let find = |mounts: &str| {
        mounts.lines().find_map(|l| {
            let mut parts = l.split_whitespace();
            let _dev = parts.next()?;
            let path = parts.next()?;
            (parts.next()? == "cgroup2").then(|| PathBuf::from(path))
        })
    };
    if let Some(p) = std::fs::read_to_string("/proc/self/mounts")
        .ok()
        .as_deref()
        .and_then(find)
    {
        return Ok(p);
    }
    let host_has_it = std::fs::read_to_string("/proc/1/mounts")
        .ok()
        .as_deref()
        .and_then(find)
        .is_some();
    if !host_has_it {
        return Err(CgroupError::NoMount);
    }
    private_mount("cgroup2", "cgroup2", None)
}

/// Mounts a cgroup hierarchy at a private directory (see [`cgroup2_mount`]); for v1,
/// `options` names the controller (mounting an existing hierarchy again reuses it).
pub fn private_mount(
    tag: &str,
    fstype: &str,
    options: Option<&str>,
) -> Result<PathBuf, CgroupError> {
    let dir = std::env::temp_dir().join(format!("mirror-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    nix::mount::mount(
        None::<&str>,
        &dir,
        Some(fstype),
        nix::mount::MsFlags::empty(),
        options,
    )
    .map_err(|e| CgroupError::Io {
        path: dir.display().to_string(),
        source: e.into(),
    })?;
    tracing::debug!(path = %dir.display(), "mounted {fstype} in this private mount namespace");
    if let Ok(mut m) = PRIVATE_MOUNTS.lock() {
        m.push(dir.clone());
    }
    Ok(dir)
}

static PRIVATE_MOUNTS: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

/// Unmounts and removes the private cgroup mount points, if any were made (call once the
/// candidate's cgroups are gone).
pub fn release_private_mount() {
    let dirs = PRIVATE_MOUNTS
        .lock()
        .map(|mut m| std::mem::take(&mut *m))
        .unwrap_or_default();
    for dir in dirs {
        let _ = nix::mount::umount2(&dir, nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir(&dir);
    }
}
