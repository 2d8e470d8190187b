//! `mirror-daemon check`: preflight of everything the kernel side needs, one line each,
//! with the fix. Exit non-zero when anything required is missing.
use std::path::Path;

/// One preflight finding.
#[derive(Debug, Clone)]
pub struct Finding {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
    /// What to do when not ok.
    pub fix: &'static str,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.ok {
            write!(f, "ok    {:<14} {}", self.name, self.detail)
        } else {
            write!(
                f,
                "FAIL  {:<14} {} — fix: {}",
                self.name, self.detail, self.fix
            )
        }
    }
}

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Runs every check. `iface` is checked when given.
pub fn run(iface: Option<&str>) -> Vec<Finding> {
    let mut out = vec![
        bpf_syscall(),
        btf(),
        capabilities(),
        cgroup2(),
        candidate_fence(),
    ];
    if let Some(iface) = iface {
        out.push(interface(iface));
    }
    out
}

fn bpf_syscall() -> Finding {
    // Creating a one-entry array map is the cheapest call that proves the syscall works
    // for us (it fails with EPERM without privileges, ENOSYS without BPF).
    #[repr(C)]
    struct MapCreate {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        pad: [u32; 16],
    }
    let attr = MapCreate {
        map_type: 2,
        key_size: 4,
        value_size: 4,
        max_entries: 1,
        pad: [0; 16],
    };
    // SAFETY: BPF_MAP_CREATE (0) with a valid, zero-padded attribute struct.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            0,
            &attr as *const MapCreate,
            std::mem::size_of::<MapCreate>(),
        )
    };
    if fd >= 0 {
        // SAFETY: fd was just returned to us by the kernel.
        unsafe { libc::close(fd as i32) };
        Finding {
            name: "bpf syscall",
            ok: true,
            detail: "map creation works".into(),
            fix: "",
        }
    } else {
        let err = std::io::Error::last_os_error();
        Finding {
            name: "bpf syscall",
            ok: false,
            detail: format!("BPF_MAP_CREATE failed: {err}"),
            fix: "run as root (or with CAP_BPF + CAP_NET_ADMIN + CAP_PERFMON) on a kernel built with CONFIG_BPF_SYSCALL",
        }
    }
}

fn btf() -> Finding {
    let ok = Path::new("/sys/kernel/btf/vmlinux").exists();
    Finding {
        name: "btf",
        ok,
        detail: if ok {
            "/sys/kernel/btf/vmlinux present".into()
        } else {
            "/sys/kernel/btf/vmlinux missing".into()
        },
        fix: "use a kernel built with CONFIG_DEBUG_INFO_BTF=y (most distribution kernels ≥ 5.8)",
    }
}

fn effective_caps() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("CapEff:"))?;
    u64::from_str_radix(line.trim_start_matches("CapEff:").trim(), 16).ok()
}

fn capabilities() -> Finding {
    let Some(caps) = effective_caps() else {
        return Finding {
            name: "capabilities",
            ok: false,
            detail: "cannot read /proc/self/status".into(),
            fix: "mount /proc",
        };
    };
    let has = |c: u32| caps & (1u64 << c) != 0;
    let sys_admin = has(CAP_SYS_ADMIN);
    let mut missing = Vec::new();
    if !has(CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    if !(has(CAP_BPF) || sys_admin) {
        missing.push("CAP_BPF");
    }
    if !(has(CAP_PERFMON) || sys_admin) {
        missing.push("CAP_PERFMON");
    }
    Finding {
        name: "capabilities",
        ok: missing.is_empty(),
        detail: if missing.is_empty() {
            "CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON effective".into()
        } else {
            format!("missing {}", missing.join(", "))
        },
        fix: "run as root, or grant them (systemd: AmbientCapabilities=CAP_BPF CAP_NET_ADMIN CAP_PERFMON)",
    }
}

/// What starting a fenced candidate (`--candidate-cmd`) needs beyond the guard: the
/// capabilities to drop it to its user and stop it, and the limit controllers.
fn candidate_fence() -> Finding {
    const CAP_KILL: u32 = 5;
    const CAP_SETGID: u32 = 6;
    const CAP_SETUID: u32 = 7;
    const CAP_SETPCAP: u32 = 8;
    let caps = effective_caps().unwrap_or(0);
    let missing: Vec<&str> = [
        (CAP_SETUID, "CAP_SETUID"),
        (CAP_SETGID, "CAP_SETGID"),
        (CAP_SETPCAP, "CAP_SETPCAP"),
        (CAP_KILL, "CAP_KILL"),
    ]
    .iter()
    .filter(|(c, _)| caps & (1u64 << c) == 0)
    .map(|(_, n)| *n)
    .collect();
    let v2 = mirror_daemon::guard::cgroup::cgroup2_mount()
        .ok()
        .and_then(|m| std::fs::read_to_string(m.join("cgroup.controllers")).ok())
        .unwrap_or_default();
    let v1 = mirror_daemon::guard::limits::v1_roots();
    let where_limits = if ["memory", "cpu", "pids"]
        .iter()
        .all(|c| v2.split_whitespace().any(|a| a == *c))
    {
        "cgroup v2".to_string()
    } else if v1.is_empty() {
        "nowhere (no memory/cpu/pids controller): pass --candidate-memory/--candidate-cpu/--candidate-pids max".to_string()
    } else {
        format!(
            "cgroup v1 hierarchies ({} of them, hybrid layout)",
            v1.len()
        )
    };
    let unix = if mirror_daemon::guard::sandbox::kernel_has_unix_hooks() {
        "Unix sockets fenced by path (cgroup Unix-socket hooks present)"
    } else {
        "kernel has no cgroup Unix-socket hooks: --allow-unix would not be fenced by path"
    };
    Finding {
        name: "candidate",
        ok: missing.is_empty(),
        detail: if missing.is_empty() {
            format!("can start it unprivileged; limits in {where_limits}; {unix}")
        } else {
            format!(
                "missing {} (to start the candidate as its own user and stop it)",
                missing.join(", ")
            )
        },
        fix: "run as root, or grant them (systemd: see deploy/mirror.service), or pass --candidate-as-root",
    }
}

fn cgroup2() -> Finding {
    match mirror_daemon::guard::cgroup::cgroup2_mount()
        .ok()
        .map(|p| p.display().to_string())
    {
        Some(p) => Finding {
            name: "cgroup2",
            ok: true,
            detail: format!("mounted at {p}"),
            fix: "",
        },
        None => Finding {
            name: "cgroup2",
            ok: false,
            detail: "no cgroup2 mount (needed for the candidate's egress guard)".into(),
            fix: "mount -t cgroup2 none /sys/fs/cgroup/unified",
        },
    }
}

fn interface(iface: &str) -> Finding {
    match nix::net::if_::if_nametoindex(iface) {
        Ok(idx) => Finding {
            name: "interface",
            ok: true,
            detail: format!("{iface} (index {idx})"),
            fix: "",
        },
        Err(_) => Finding {
            name: "interface",
            ok: false,
            detail: format!("{iface} does not exist"),
            fix: "pass an interface listed by `ip link` (in the legacy service's network namespace)",
        },
    }
}
