//! Memory, CPU and task limits on the candidate's cgroup, so a runaway candidate cannot
//! starve the legacy service on the same host, and its CPU priority against legacy
//! (`--candidate-priority`, [`CandidatePriority`]).
//!
//! On a pure cgroup v2 host the limits go on the candidate's own v2 cgroup. On a hybrid
//! host (cgroup2 next to v1 hierarchies, as systemd's "hybrid" layout and many container
//! hosts have) the memory, cpu, cpuacct and pids controllers live in their v1
//! hierarchies: the candidate then joins a cgroup of the same name in **each** of them,
//! limit or not, so that what it uses is never charged to the daemon's cgroups there
//! (a candidate left in the daemon's v1 `cpu` cgroup would eat the daemon's
//! `CPUQuota=`, and the quota caveat would blame the daemon).
use std::path::{Path, PathBuf};

pub use mirror_common::cpu_priority::CandidatePriority;

/// Limits for the candidate; `None` is "no limit" (`max`, explicit only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CandidateLimits {
    pub memory_bytes: Option<u64>,
    /// Percent of one CPU (200 = two CPUs).
    pub cpu_percent: Option<u32>,
    pub pids: Option<u64>,
    /// How its cgroup competes with legacy for the CPU.
    pub priority: CandidatePriority,
}

/// The v1 controllers whose hierarchies the candidate gets a cgroup of its own in.
pub const V1_CONTROLLERS: [&str; 4] = ["memory", "cpu", "cpuacct", "pids"];

/// Defaults that keep a legacy host usable: 1 GiB, one CPU, 512 tasks.
pub const DEFAULT_MEMORY: &str = "1G";
pub const DEFAULT_CPU: &str = "100%";
pub const DEFAULT_PIDS: &str = "512";
pub const DEFAULT_PRIORITY: &str = mirror_common::cpu_priority::DEFAULT;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LimitError {
    #[error("{flag} {input:?}: {reason}")]
    Parse {
        flag: &'static str,
        input: String,
        reason: &'static str,
    },
    #[error(
        "{flag}: no {controller} controller in cgroup v2 or v1 on this host, so the limit cannot be enforced; pass `{flag} max` to run the candidate without it"
    )]
    NoController {
        flag: &'static str,
        controller: &'static str,
    },
    #[error("applying {flag}: {path}: {reason}")]
    Apply {
        flag: &'static str,
        path: String,
        reason: String,
    },
}

/// `1G`, `512M`, `64K`, a byte count, or `max`.
pub fn parse_memory(input: &str) -> Result<Option<u64>, LimitError> {
    let err = |reason| LimitError::Parse {
        flag: "--candidate-memory",
        input: input.to_string(),
        reason,
    };
    let s = input.trim();
    if s.eq_ignore_ascii_case("max") {
        return Ok(None);
    }
    let (digits, mult) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return Err(err("unknown unit; use K, M, G or T")),
            };
            (&s[..i], m)
        }
        _ => (s, 1),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| err("expected a size like 1G or 512M, or max"))?;
    let bytes = n.checked_mul(mult).ok_or_else(|| err("too large"))?;
    if bytes < 16 << 20 {
        return Err(err("below 16M no real service starts"));
    }
    Ok(Some(bytes))
}

/// `100%` (one CPU), `50%`, `250%`, or `max`.
pub fn parse_cpu(input: &str) -> Result<Option<u32>, LimitError> {
    let err = |reason| LimitError::Parse {
        flag: "--candidate-cpu",
        input: input.to_string(),
        reason,
    };
    let s = input.trim();
    if s.eq_ignore_ascii_case("max") {
        return Ok(None);
    }
    let n: u32 = s
        .strip_suffix('%')
        .ok_or_else(|| err("expected a percentage of one CPU, e.g. 100%, or max"))?
        .trim()
        .parse()
        .map_err(|_| err("expected a whole percentage, e.g. 50%"))?;
    if n == 0 || n > 100_000 {
        return Err(err("out of range (1% to 100000%)"));
    }
    Ok(Some(n))
}

/// `idle`, `low` or `normal`.
pub fn parse_priority(input: &str) -> Result<CandidatePriority, LimitError> {
    CandidatePriority::parse(input).ok_or_else(|| LimitError::Parse {
        flag: "--candidate-priority",
        input: input.to_string(),
        reason: "expected idle, low or normal",
    })
}

/// A task count, or `max`.
pub fn parse_pids(input: &str) -> Result<Option<u64>, LimitError> {
    let s = input.trim();
    if s.eq_ignore_ascii_case("max") {
        return Ok(None);
    }
    match s.parse::<u64>() {
        Ok(n) if n >= 8 => Ok(Some(n)),
        _ => Err(LimitError::Parse {
            flag: "--candidate-pids",
            input: input.to_string(),
            reason: "expected a task count of at least 8, or max",
        }),
    }
}

impl CandidateLimits {
    pub fn parse(memory: &str, cpu: &str, pids: &str, priority: &str) -> Result<Self, LimitError> {
        Ok(Self {
            memory_bytes: parse_memory(memory)?,
            cpu_percent: parse_cpu(cpu)?,
            pids: parse_pids(pids)?,
            priority: parse_priority(priority)?,
        })
    }

    /// No limit and the kernel's default weight (an unfenced candidate).
    pub fn none() -> Self {
        Self {
            memory_bytes: None,
            cpu_percent: None,
            pids: None,
            priority: CandidatePriority::Normal,
        }
    }

    /// One line for logs and the self-test message.
    pub fn describe(&self) -> String {
        let mem = self
            .memory_bytes
            .map(|b| format!("{} MiB", b >> 20))
            .unwrap_or_else(|| "no limit".into());
        let cpu = self
            .cpu_percent
            .map(|c| format!("{c}% of a CPU"))
            .unwrap_or_else(|| "no limit".into());
        let pids = self
            .pids
            .map(|p| p.to_string())
            .unwrap_or_else(|| "no limit".into());
        format!(
            "memory {mem}, cpu {cpu} at priority {}, tasks {pids}",
            self.priority.as_str()
        )
    }
}

/// CFS period used for the CPU quota (the kernel's default).
const CPU_PERIOD_US: u64 = 100_000;

/// The files one limit is written to, per hierarchy.
struct Controller {
    name: &'static str,
    flag: &'static str,
    /// (file, value) on cgroup v2.
    v2: Vec<(&'static str, String)>,
    /// (file, value) on cgroup v1.
    v1: Vec<(&'static str, String)>,
    /// The CPU priority, written after the files above (`cpu` only).
    priority: Option<CandidatePriority>,
}

fn controllers(l: &CandidateLimits) -> Vec<Controller> {
    let mut out = Vec::new();
    if let Some(b) = l.memory_bytes {
        out.push(Controller {
            name: "memory",
            flag: "--candidate-memory",
            // No swap: the limit is on what the candidate takes from the host.
            v2: vec![
                ("memory.max", b.to_string()),
                ("memory.swap.max", "0".into()),
            ],
            v1: vec![("memory.limit_in_bytes", b.to_string())],
            priority: None,
        });
    }
    let priority = (l.priority != CandidatePriority::Normal).then_some(l.priority);
    if l.cpu_percent.is_some() || priority.is_some() {
        let (v2, v1) = match l.cpu_percent {
            Some(c) => {
                let quota = u64::from(c) * CPU_PERIOD_US / 100;
                (
                    vec![("cpu.max", format!("{quota} {CPU_PERIOD_US}"))],
                    vec![
                        ("cpu.cfs_period_us", CPU_PERIOD_US.to_string()),
                        ("cpu.cfs_quota_us", quota.to_string()),
                    ],
                )
            }
            None => (Vec::new(), Vec::new()),
        };
        out.push(Controller {
            name: "cpu",
            flag: if l.cpu_percent.is_some() {
                "--candidate-cpu"
            } else {
                "--candidate-priority"
            },
            v2,
            v1,
            priority,
        });
    }
    if let Some(p) = l.pids {
        out.push(Controller {
            name: "pids",
            flag: "--candidate-pids",
            v2: vec![("pids.max", p.to_string())],
            v1: vec![("pids.max", p.to_string())],
            priority: None,
        });
    }
    out
}

/// Where a v1 controller is mounted (`/proc/self/mounts`, fstype `cgroup`).
fn v1_mount(mounts: &str, controller: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(2) == Some(&"cgroup") && f.get(3)?.split(',').any(|o| o == controller))
            .then(|| PathBuf::from(f[1]))
    })
}

/// In a private mount namespace with /sys remounted (`ip netns exec`), a v1 controller
/// the host has is mounted again privately (the same hierarchy).
fn host_v1_mount(controller: &str) -> Option<PathBuf> {
    let host = std::fs::read_to_string("/proc/1/mounts").unwrap_or_default();
    let options = host.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(2) == Some(&"cgroup") && f.get(3)?.split(',').any(|o| o == controller)).then(|| {
            // The hierarchy's controllers, without mount flags such as rw/relatime.
            f[3].split(',')
                .filter(|o| ["cpu", "cpuacct", "memory", "pids"].contains(o))
                .collect::<Vec<_>>()
                .join(",")
        })
    })?;
    super::cgroup::private_mount(&format!("cgroup-{controller}"), "cgroup", Some(&options)).ok()
}

/// Every v1 hierarchy root that carries one of [`V1_CONTROLLERS`].
pub fn v1_roots() -> Vec<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut roots: Vec<PathBuf> = Vec::new();
    for root in V1_CONTROLLERS.iter().filter_map(|c| v1_mount(&mounts, c)) {
        if !roots.contains(&root) {
            roots.push(root);
        }
    }
    roots
}

/// What [`apply`] set up: v1 cgroups to join and to remove later.
#[derive(Debug, Default)]
pub struct Applied {
    pub v1_dirs: Vec<PathBuf>,
}

fn write(flag: &'static str, path: &Path, value: &str) -> Result<(), LimitError> {
    std::fs::write(path, value).map_err(|e| LimitError::Apply {
        flag,
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// Writes the CPU priority on one cgroup (`v2`: a cgroup2 directory, else a v1 `cpu`
/// one). `cpu.idle` is absent below Linux 5.15: `idle` then takes the lowest weight.
fn write_priority(
    flag: &'static str,
    dir: &Path,
    p: CandidatePriority,
    v2: bool,
) -> Result<(), LimitError> {
    for w in p.writes(v2) {
        let path = dir.join(w.file);
        if !path.exists() && w.optional {
            continue;
        }
        if !path.exists() && w.file == "cpu.idle" {
            let f = CandidatePriority::idle_fallback(v2);
            write(flag, &dir.join(f.file), f.value)?;
            continue;
        }
        write(flag, &path, w.value)?;
    }
    Ok(())
}

/// Creates `<root>/<name>` once (recorded in `applied`) and returns it.
fn v1_dir(
    applied: &mut Applied,
    flag: &'static str,
    root: &Path,
    name: &str,
) -> Result<PathBuf, LimitError> {
    let dir = root.join(name);
    if !applied.v1_dirs.contains(&dir) {
        std::fs::create_dir(&dir).map_err(|e| LimitError::Apply {
            flag,
            path: dir.display().to_string(),
            reason: e.to_string(),
        })?;
        applied.v1_dirs.push(dir.clone());
    }
    Ok(dir)
}

/// Puts `limits` on the candidate cgroup `v2_dir` (a child of `v2_mount`) or, for
/// controllers only v1 has here, on `<v1 root>/<name>` (created). Fails when a limit
/// cannot be enforced anywhere. On a hybrid host `<v1 root>/<name>` is also created in
/// every other v1 hierarchy of [`V1_CONTROLLERS`], without limits: the candidate joins
/// them all and is charged nowhere to the daemon.
pub fn apply(
    limits: &CandidateLimits,
    v2_mount: &Path,
    v2_dir: &Path,
    name: &str,
) -> Result<Applied, LimitError> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let available =
        std::fs::read_to_string(v2_mount.join("cgroup.controllers")).unwrap_or_default();
    let mut applied = Applied::default();
    for c in controllers(limits) {
        if available.split_whitespace().any(|a| a == c.name) {
            let enabled = std::fs::read_to_string(v2_mount.join("cgroup.subtree_control"))
                .unwrap_or_default();
            if !enabled.split_whitespace().any(|a| a == c.name) {
                write(
                    c.flag,
                    &v2_mount.join("cgroup.subtree_control"),
                    &format!("+{}", c.name),
                )?;
            }
            for (file, value) in &c.v2 {
                let path = v2_dir.join(file);
                // memory.swap.max is absent without swap accounting: nothing to limit.
                if *file == "memory.swap.max" && !path.exists() {
                    continue;
                }
                write(c.flag, &path, value)?;
            }
            if let Some(p) = c.priority {
                write_priority("--candidate-priority", v2_dir, p, true)?;
            }
            continue;
        }
        let Some(root) = v1_mount(&mounts, c.name).or_else(|| host_v1_mount(c.name)) else {
            return Err(LimitError::NoController {
                flag: c.flag,
                controller: c.name,
            });
        };
        let dir = v1_dir(&mut applied, c.flag, &root, name)?;
        for (file, value) in &c.v1 {
            write(c.flag, &dir.join(file), value)?;
        }
        if let Some(p) = c.priority {
            write_priority("--candidate-priority", &dir, p, false)?;
        }
    }
    // Limit or not, a cgroup of its own in every v1 resource hierarchy (not in v2's: the
    // candidate's v2 cgroup is already its own).
    for controller in V1_CONTROLLERS {
        if available.split_whitespace().any(|a| a == controller) {
            continue;
        }
        if let Some(root) = v1_mount(&mounts, controller).or_else(|| host_v1_mount(controller)) {
            v1_dir(&mut applied, "--candidate-cmd", &root, name)?;
        }
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sizes_percentages_and_counts() {
        assert_eq!(parse_memory("1G"), Ok(Some(1 << 30)));
        assert_eq!(parse_memory("512m"), Ok(Some(512 << 20)));
        assert_eq!(parse_memory("max"), Ok(None));
        assert_eq!(parse_memory("33554432"), Ok(Some(32 << 20)));
        assert_eq!(parse_cpu("150%"), Ok(Some(150)));
        assert_eq!(parse_cpu("MAX"), Ok(None));
        assert_eq!(parse_pids("512"), Ok(Some(512)));
        assert_eq!(parse_pids("max"), Ok(None));
        let d = CandidateLimits::parse(DEFAULT_MEMORY, DEFAULT_CPU, DEFAULT_PIDS, DEFAULT_PRIORITY)
            .unwrap();
        assert!(d.memory_bytes.is_some() && d.cpu_percent.is_some() && d.pids.is_some());
        assert_eq!(d.priority, CandidatePriority::Normal);
        assert_eq!(parse_priority("normal"), Ok(CandidatePriority::Normal));
    }

    #[test]
    fn bad_limits_say_what_is_wrong() {
        for (r, flag) in [
            (parse_memory("1X").map(|_| ()), "--candidate-memory"),
            (parse_memory("4K").map(|_| ()), "--candidate-memory"),
            (parse_memory("lots").map(|_| ()), "--candidate-memory"),
            (
                parse_memory("99999999999T").map(|_| ()),
                "--candidate-memory",
            ),
            (parse_cpu("1.5").map(|_| ()), "--candidate-cpu"),
            (parse_cpu("0%").map(|_| ()), "--candidate-cpu"),
            (parse_pids("3").map(|_| ()), "--candidate-pids"),
            (parse_pids("-1").map(|_| ()), "--candidate-pids"),
            (parse_priority("nice").map(|_| ()), "--candidate-priority"),
        ] {
            let e = r.unwrap_err().to_string();
            assert!(e.starts_with(flag), "{e}");
        }
    }

    #[test]
    fn writes_the_kernel_formats() {
        let l = CandidateLimits {
            memory_bytes: Some(1 << 30),
            cpu_percent: Some(50),
            pids: Some(64),
            priority: CandidatePriority::Idle,
        };
        let c = controllers(&l);
        assert_eq!(c[0].v2[0], ("memory.max", "1073741824".to_string()));
        assert_eq!(c[1].v2[0], ("cpu.max", "50000 100000".to_string()));
        assert_eq!(c[1].v1[1], ("cpu.cfs_quota_us", "50000".to_string()));
        assert_eq!(c[2].v1[0], ("pids.max", "64".to_string()));
        assert_eq!(c[1].priority, Some(CandidatePriority::Idle));
        assert!(controllers(&CandidateLimits::none()).is_empty());
        // No CPU limit but a priority: the cpu controller is still needed.
        let idle_only = CandidateLimits {
            priority: CandidatePriority::Low,
            ..CandidateLimits::none()
        };
        let c = controllers(&idle_only);
        assert_eq!(
            (c.len(), c[0].name, c[0].flag),
            (1, "cpu", "--candidate-priority")
        );
        assert!(c[0].v1.is_empty() && c[0].v2.is_empty());
    }

    #[test]
    fn finds_v1_controllers_in_the_mount_table() {
        let mounts = "cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n\
            cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,relatime,cpu,cpuacct 0 0\n\
            cgroup /sys/fs/cgroup/pids cgroup rw,relatime,pids 0 0\n";
        assert_eq!(
            v1_mount(mounts, "cpu"),
            Some(PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"))
        );
        assert_eq!(
            v1_mount(mounts, "pids"),
            Some(PathBuf::from("/sys/fs/cgroup/pids"))
        );
        assert_eq!(v1_mount(mounts, "memory"), None);
    }
}
