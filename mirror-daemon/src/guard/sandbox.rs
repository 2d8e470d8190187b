//! The candidate's process fence: which cgroups it joins, which network namespace it
//! lives in, who it runs as, and what it may no longer do.
//!
//! Everything is prepared before `fork` (paths as C strings, the seccomp program) so the
//! code between `fork` and `exec` makes only async-signal-safe system calls.
use std::{
    ffi::CString,
    os::{fd::AsRawFd as _, fd::OwnedFd, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::Command,
    sync::Arc,
};

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(
        "--candidate-user {0}: no such user (create it, e.g. `useradd --system --no-create-home --shell /usr/sbin/nologin {0}`, or name another unprivileged user)"
    )]
    NoSuchUser(String),
    #[error(
        "--candidate-user {0} is root (uid 0); pass --candidate-as-root to run the candidate as root on purpose"
    )]
    RootUser(String),
    #[error("--candidate-netns {path}: {source}")]
    Netns {
        path: String,
        source: std::io::Error,
    },
    #[error("path {0} contains a NUL byte")]
    Nul(String),
}

/// The unprivileged user the candidate runs as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

impl Identity {
    /// Looks `name` up in the user database; root is refused (that needs its own flag).
    pub fn lookup(name: &str) -> Result<Self, SandboxError> {
        let user = nix::unistd::User::from_name(name)
            .ok()
            .flatten()
            .ok_or_else(|| SandboxError::NoSuchUser(name.to_string()))?;
        if user.uid.is_root() {
            return Err(SandboxError::RootUser(name.to_string()));
        }
        Ok(Self {
            name: name.to_string(),
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            home: user.dir,
        })
    }
}

/// How the candidate (and the self-test probe, with the same fence) is started.
#[derive(Debug, Default)]
pub struct Sandbox {
    /// `cgroup.procs` (v2) or `tasks`-like files (v1 limit controllers) to join, in order.
    join: Vec<CString>,
    /// The network namespace to enter (`--candidate-netns`), opened by the daemon.
    netns: Option<OwnedFd>,
    /// `None`: stays root with the daemon's capabilities (`--candidate-as-root`).
    identity: Option<Identity>,
    /// The seccomp filter (empty when running as root on purpose).
    seccomp: Vec<libc::sock_filter>,
}

// SAFETY: `sock_filter` is plain data; the vector is only read after construction.
unsafe impl Send for Sandbox {}
// SAFETY: as above.
unsafe impl Sync for Sandbox {}

impl Sandbox {
    /// A fence for `identity` (`None` = root, explicit), joining `cgroup_files`.
    pub fn new(
        identity: Option<Identity>,
        cgroup_files: &[PathBuf],
        netns: Option<&Path>,
        refuse_unix_sockets: bool,
    ) -> Result<Self, SandboxError> {
        let join = cgroup_files
            .iter()
            .map(|p| {
                CString::new(p.as_os_str().as_encoded_bytes())
                    .map_err(|_| SandboxError::Nul(p.display().to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let netns = netns
            .map(|p| {
                let path = netns_path(p);
                std::fs::File::open(&path)
                    .map(OwnedFd::from)
                    .map_err(|source| SandboxError::Netns {
                        path: path.display().to_string(),
                        source,
                    })
            })
            .transpose()?;
        let seccomp = if identity.is_some() {
            super::seccomp::filter(refuse_unix_sockets)
        } else {
            Vec::new()
        };
        Ok(Self {
            join,
            netns,
            identity,
            seccomp,
        })
    }

    pub fn identity(&self) -> Option<&Identity> {
        self.identity.as_ref()
    }

    /// The same fence without the network namespace (the self-test probe must reach the
    /// daemon's own loopback listener to prove the guard refuses it).
    pub fn without_netns(&self) -> Self {
        Self {
            join: self.join.clone(),
            netns: None,
            identity: self.identity.clone(),
            seccomp: self.seccomp.clone(),
        }
    }

    /// The same fence, without the network namespace, joining `cgroup_files` instead.
    pub fn with_cgroups(&self, cgroup_files: &[PathBuf]) -> Result<Self, SandboxError> {
        let join = cgroup_files
            .iter()
            .map(|p| {
                CString::new(p.as_os_str().as_encoded_bytes())
                    .map_err(|_| SandboxError::Nul(p.display().to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            join,
            ..self.without_netns()
        })
    }

    /// Makes `cmd` start inside the fence. The child joins the cgroups and the network
    /// namespace while still root, then drops to the candidate user with no capabilities
    /// in any set, `no_new_privs`, the seccomp filter, and SIGKILL when the thread that
    /// spawned it dies.
    pub fn apply(self: &Arc<Self>, cmd: &mut Command) {
        if let Some(id) = &self.identity {
            cmd.env("HOME", &id.home)
                .env("USER", &id.name)
                .env("LOGNAME", &id.name);
        }
        let me = self.clone();
        // SAFETY: the closure makes only async-signal-safe system calls and allocates
        // nothing (everything was prepared before fork).
        unsafe {
            cmd.pre_exec(move || me.enter());
        }
    }

    /// Runs in the child between fork and exec.
    fn enter(&self) -> std::io::Result<()> {
        let check = |rc: libc::c_long| {
            if rc < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(())
            }
        };
        for file in &self.join {
            // SAFETY: valid C string; plain system calls.
            unsafe {
                let fd = libc::open(file.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                check(fd as libc::c_long)?;
                let rc = libc::write(fd, b"0".as_ptr().cast(), 1);
                libc::close(fd);
                if rc != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
        }
        if let Some(ns) = &self.netns {
            // SAFETY: a namespace fd we opened.
            check(unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) }.into())?;
        }
        if let Some(id) = &self.identity {
            drop_privileges(id.uid, id.gid)?;
        }
        // SAFETY: prctl with integer arguments.
        unsafe {
            check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0).into())?;
            // After the credential change: changing uids clears the parent-death signal.
            check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong).into())?;
        }
        if !self.seccomp.is_empty() {
            let prog = libc::sock_fprog {
                len: self.seccomp.len() as u16,
                filter: self.seccomp.as_ptr().cast_mut(),
            };
            // SAFETY: `prog` points at our filter for the duration of the call.
            check(
                unsafe {
                    libc::prctl(
                        libc::PR_SET_SECCOMP,
                        libc::SECCOMP_MODE_FILTER as libc::c_ulong,
                        &prog as *const libc::sock_fprog as libc::c_ulong,
                    )
                }
                .into(),
            )?;
        }
        Ok(())
    }
}

/// Whether the kernel has the cgroup Unix-socket hooks (`connect_unix`, `sendmsg_unix`,
/// Linux ≥ 6.7), read from its BTF (for `check`; see `guard::unix`).
pub fn kernel_has_unix_hooks() -> bool {
    std::fs::read("/sys/kernel/btf/vmlinux").is_ok_and(|btf| {
        let needle = b"BPF_CGROUP_UNIX_CONNECT";
        btf.windows(needle.len()).any(|w| w == needle)
    })
}

/// `--candidate-netns NAME` means `/var/run/netns/NAME` (as `ip netns` names them).
pub fn netns_path(p: &Path) -> PathBuf {
    if p.components().count() == 1 && !p.is_absolute() {
        Path::new("/var/run/netns").join(p)
    } else {
        p.to_path_buf()
    }
}

/// Empties every capability set (bounding and ambient first, while CAP_SETPCAP is still
/// held), then becomes `uid`/`gid` with no supplementary groups.
fn drop_privileges(uid: u32, gid: u32) -> std::io::Result<()> {
    let err = || Err(std::io::Error::last_os_error());
    // SAFETY: plain system calls with integer arguments or pointers to locals.
    unsafe {
        for cap in 0..64 {
            // Not in the bounding set (or past the kernel's last capability, EINVAL):
            // nothing to drop. Dropping needs CAP_SETPCAP.
            if libc::prctl(libc::PR_CAPBSET_READ, cap, 0, 0, 0) != 1 {
                continue;
            }
            if libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 {
                return err();
            }
        }
        if libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        ) != 0
        {
            return err();
        }
        if libc::setgroups(0, std::ptr::null()) != 0
            || libc::setresgid(gid, gid, gid) != 0
            || libc::setresuid(uid, uid, uid) != 0
        {
            return err();
        }
        // Leaving uid 0 clears the permitted and effective sets; the inheritable set
        // stays unless cleared.
        #[repr(C)]
        struct Header {
            version: u32,
            pid: i32,
        }
        #[repr(C)]
        #[derive(Clone, Copy)]
        struct Data {
            effective: u32,
            permitted: u32,
            inheritable: u32,
        }
        const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
        let mut hdr = Header {
            version: LINUX_CAPABILITY_VERSION_3,
            pid: 0,
        };
        let data = [Data {
            effective: 0,
            permitted: 0,
            inheritable: 0,
        }; 2];
        if libc::syscall(libc::SYS_capset, &mut hdr as *mut Header, data.as_ptr()) != 0 {
            return err();
        }
    }
    Ok(())
}

/// What `/proc/self/status` says about the calling process's privileges (for the
/// self-test probe, which runs with the candidate's fence).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Privileges {
    pub uid: u32,
    /// CapInh, CapPrm, CapEff, CapBnd, CapAmb.
    pub caps: [u64; 5],
    pub no_new_privs: bool,
    pub seccomp_filtered: bool,
}

impl Privileges {
    pub fn parse(status: &str) -> Self {
        let field = |name: &str| -> Option<&str> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(str::trim)
        };
        let hex = |name: &str| {
            field(name)
                .and_then(|v| u64::from_str_radix(v, 16).ok())
                .unwrap_or(u64::MAX)
        };
        Self {
            uid: field("Uid:")
                .and_then(|v| v.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            caps: [
                hex("CapInh:"),
                hex("CapPrm:"),
                hex("CapEff:"),
                hex("CapBnd:"),
                hex("CapAmb:"),
            ],
            no_new_privs: field("NoNewPrivs:") == Some("1"),
            seccomp_filtered: field("Seccomp:") == Some("2"),
        }
    }

    /// Unprivileged as the fence promises: not root, every capability set empty,
    /// `no_new_privs`, seccomp filtering.
    pub fn fenced(&self) -> bool {
        self.uid != 0
            && self.caps.iter().all(|c| *c == 0)
            && self.no_new_privs
            && self.seccomp_filtered
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FENCED: &str = "Name:\tx\nUid:\t65534\t65534\t65534\t65534\nCapInh:\t0000000000000000\nCapPrm:\t0000000000000000\nCapEff:\t0000000000000000\nCapBnd:\t0000000000000000\nCapAmb:\t0000000000000000\nNoNewPrivs:\t1\nSeccomp:\t2\n";

    #[test]
    fn reads_privileges_from_proc_status() {
        let p = Privileges::parse(FENCED);
        assert_eq!(p.uid, 65534);
        assert!(p.fenced(), "{p:?}");
        let root = FENCED.replace("Uid:\t65534\t65534", "Uid:\t0\t0");
        assert!(!Privileges::parse(&root).fenced());
        let bounding = FENCED.replace("CapBnd:\t0000000000000000", "CapBnd:\t000001ffffffffff");
        assert!(!Privileges::parse(&bounding).fenced());
        assert!(!Privileges::parse(&FENCED.replace("NoNewPrivs:\t1", "NoNewPrivs:\t0")).fenced());
        assert!(!Privileges::parse(&FENCED.replace("Seccomp:\t2", "Seccomp:\t0")).fenced());
        // A missing field is never read as "no capabilities".
        assert!(!Privileges::parse("Uid:\t5\t5\t5\t5\nNoNewPrivs:\t1\nSeccomp:\t2\n").fenced());
    }

    #[test]
    fn netns_names_are_ip_netns_names() {
        assert_eq!(
            netns_path(Path::new("cand")),
            Path::new("/var/run/netns/cand")
        );
        assert_eq!(
            netns_path(Path::new("/proc/7/ns/net")),
            Path::new("/proc/7/ns/net")
        );
    }

    #[test]
    fn root_and_unknown_users_are_refused() {
        assert!(matches!(
            Identity::lookup("root"),
            Err(SandboxError::RootUser(_))
        ));
        assert!(matches!(
            Identity::lookup("no-such-user-mirror-test"),
            Err(SandboxError::NoSuchUser(_))
        ));
    }
}
