//! Issue 16 point 4: a candidate started with `--candidate-cmd` uses CPU that is charged
//! to its own cgroup, never to the daemon's. On a hybrid cgroup v1/v2 host the cpu,
//! cpuacct, memory and pids controllers live in v1 hierarchies; a candidate left in the
//! daemon's v1 `cpu` cgroup would eat the daemon's `CPUQuota=` (and the daemon's quota
//! caveat would blame the daemon). The daemon here starts inside cgroups of its own in
//! every hierarchy that carries `cpu` or `cpuacct` (with a quota, as the unit has), its
//! candidate burns a known amount of CPU, and the test reads where it was charged.
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use mirror_e2e::*;

/// CPU seconds the candidate burns (then it sleeps until stopped).
const BURN_S: f64 = 1.5;

/// One cgroup the daemon runs in, in one hierarchy; removed when dropped.
struct DaemonCgroup {
    dir: PathBuf,
    /// The controllers of its hierarchy (`cpu`, `cpuacct`; `cpu` for v2).
    controllers: Vec<String>,
    v2: bool,
}

impl DaemonCgroup {
    /// CPU time charged to it so far, in seconds, where the hierarchy counts it
    /// (`cpuacct.usage` on v1, `cpu.stat`'s `usage_usec` on v2).
    fn usage_s(&self) -> Option<f64> {
        usage_s(&self.dir, self.v2)
    }
}

fn usage_s(dir: &Path, v2: bool) -> Option<f64> {
    if v2 {
        let stat = std::fs::read_to_string(dir.join("cpu.stat")).ok()?;
        let us: f64 = stat
            .lines()
            .find_map(|l| l.strip_prefix("usage_usec "))?
            .trim()
            .parse()
            .ok()?;
        Some(us / 1e6)
    } else {
        let ns: f64 = std::fs::read_to_string(dir.join("cpuacct.usage"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        Some(ns / 1e9)
    }
}

impl Drop for DaemonCgroup {
    fn drop(&mut self) {
        for _ in 0..100 {
            if std::fs::remove_dir(&self.dir).is_ok() || !self.dir.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The daemon's cgroups: `<root>/<name>` in every v1 hierarchy with `cpu` or `cpuacct`,
/// or in cgroup2 when it has the cpu controller. The `cpu` one gets a 50 % quota.
fn daemon_cgroups(name: &str) -> Vec<DaemonCgroup> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").expect("mounts");
    let mut out = Vec::new();
    for line in mounts.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(path), Some(fstype), Some(opts)) = (f.get(1), f.get(2), f.get(3)) else {
            continue;
        };
        let (controllers, v2): (Vec<String>, bool) = match *fstype {
            "cgroup" => (
                opts.split(',')
                    .filter(|o| *o == "cpu" || *o == "cpuacct")
                    .map(String::from)
                    .collect(),
                false,
            ),
            "cgroup2" => {
                let have = std::fs::read_to_string(Path::new(path).join("cgroup.controllers"))
                    .unwrap_or_default();
                if !have.split_whitespace().any(|c| c == "cpu") {
                    continue;
                }
                let _ = std::fs::write(Path::new(path).join("cgroup.subtree_control"), "+cpu");
                (vec!["cpu".into()], true)
            }
            _ => continue,
        };
        if controllers.is_empty() {
            continue;
        }
        let dir = Path::new(path).join(name);
        std::fs::create_dir_all(&dir).expect("the daemon's cgroup");
        if controllers.iter().any(|c| c == "cpu") {
            if v2 {
                std::fs::write(dir.join("cpu.max"), "50000 100000").expect("cpu.max");
            } else {
                std::fs::write(dir.join("cpu.cfs_period_us"), "100000").expect("period");
                std::fs::write(dir.join("cpu.cfs_quota_us"), "50000").expect("quota");
            }
        }
        out.push(DaemonCgroup {
            dir,
            controllers,
            v2,
        });
    }
    assert!(
        out.iter().any(|c| c.controllers.iter().any(|n| n == "cpu")),
        "no cpu controller mounted: {mounts}"
    );
    out
}

/// The candidate: burns `burn_s` of CPU, then sleeps until stopped.
fn burner(burn_s: f64) -> String {
    format!(
        "exec {} -c 'import time\nwhile time.process_time() < {burn_s}: pass\ntime.sleep(600)'",
        python3()
    )
}

/// utime + stime of a process, in seconds.
fn cpu_s(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let f: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    // SAFETY: sysconf with a constant name.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (t(11) + t(12)) / ticks
}

/// `(controllers, path)` of each line of /proc/PID/cgroup.
fn memberships(pid: u32) -> Vec<(String, String)> {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .expect("the candidate's /proc/PID/cgroup")
        .lines()
        .filter_map(|l| {
            let mut p = l.splitn(3, ':');
            let _id = p.next()?;
            Some((p.next()?.to_string(), p.next()?.to_string()))
        })
        .collect()
}

/// The candidate's cgroup name from the daemon's log (`mirror-candidate-<run id>`).
fn candidate_name(log: &str) -> String {
    let at = log
        .find("mirror-candidate-")
        .expect("the candidate's cgroup in the log");
    log[at..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect()
}

/// Starts `mirror-daemon guard` inside the daemon's cgroups with a burning candidate,
/// waits until the candidate has burnt its CPU, and checks where it was charged.
/// Returns the candidate's cpu cgroup's `cpu.idle`, `cpu.weight` and `cpu.shares` (those
/// present), read while it ran.
/// `burn`: whether to wait for the burn and check the charges (an idle candidate on a
/// busy host may get almost no CPU: measured 0.4 s in 120 s at load 14).
fn candidate_cpu_is_its_own(tag: &str, flags: &[&str], burn: bool) -> Vec<(&'static str, String)> {
    require_root();
    let cgroups = daemon_cgroups(&format!("mirror-e2e-{tag}-{}-daemon", unique_tag()));
    let procs: Vec<String> = cgroups
        .iter()
        .map(|c| c.dir.join("cgroup.procs").display().to_string())
        .collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let stderr = dir.path().join("guard.stderr");
    // A shell joins the cgroups, then execs the daemon (one pid, from its first
    // instruction in them).
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"for p in $PROCS; do echo $$ > "$p" || exit 9; done; exec "$@""#)
        .arg("sh")
        .arg(daemon_bin())
        .args([
            "guard",
            "--candidate-cmd",
            &burner(if burn { BURN_S } else { 0.0 }),
        ])
        .args(flags)
        .env("PROCS", procs.join(" "))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).expect("stderr file"));
    let mut daemon = Proc::spawn("mirror-daemon guard", &mut cmd).expect("daemon");
    let log = wait_for_text(
        &stderr,
        "candidate started in its cgroup",
        Duration::from_secs(90),
    )
    .expect("the candidate started");
    let name = candidate_name(&log);
    let v2 = cgroup2_mount().join(&name);
    let daemon_before: Vec<Option<f64>> = cgroups.iter().map(DaemonCgroup::usage_s).collect();
    // The burner: the candidate cgroup's python process.
    let deadline = Instant::now() + Duration::from_secs(120);
    let pid = loop {
        let found = std::fs::read_to_string(v2.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse::<u32>().ok())
            .find(|p| {
                std::fs::read_to_string(format!("/proc/{p}/comm"))
                    .is_ok_and(|c| c.starts_with("python"))
            });
        if let Some(p) = found {
            break p;
        }
        assert!(Instant::now() < deadline, "no python in {}", v2.display());
        std::thread::sleep(Duration::from_millis(50));
    };
    let burnt0 = cpu_s(pid);
    while burn && cpu_s(pid) < BURN_S - 0.05 {
        assert!(
            Instant::now() < deadline,
            "the candidate burnt only {} s",
            cpu_s(pid)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let burnt = cpu_s(pid) - burnt0;
    let joined = memberships(pid);
    // Charged to the daemon's cgroups meanwhile: the daemon idles (guard mode, nothing
    // to report), so its own share is a few milliseconds; the candidate's would be `burnt`.
    for (c, before) in cgroups.iter().zip(daemon_before).filter(|_| burn) {
        if let (Some(a), Some(b)) = (before, c.usage_s()) {
            eprintln!(
                "{}: {:.3} s charged while the candidate burnt {burnt:.3} s",
                c.dir.display(),
                b - a
            );
            assert!(
                b - a < burnt / 2.0,
                "the daemon's cgroup {} was charged {:.3} s while the candidate burnt {burnt:.3} s: \
                 the candidate's CPU counts against the daemon; memberships {joined:?}",
                c.dir.display(),
                b - a
            );
        }
    }
    // Every hierarchy with cpu or cpuacct puts the candidate in a cgroup of its own, not
    // the daemon's, and that cgroup is charged with what it burnt.
    let own = format!("/{name}");
    for c in &cgroups {
        let daemon_path = format!("/{}", c.dir.file_name().expect("name").to_string_lossy());
        let line = joined
            .iter()
            .find(|(ctl, _)| {
                if c.v2 {
                    ctl.is_empty()
                } else {
                    ctl.split(',').any(|x| c.controllers.iter().any(|n| n == x))
                }
            })
            .expect("the candidate's line for the hierarchy");
        assert_ne!(line.1, daemon_path, "{joined:?}");
        assert_eq!(line.1, own, "{joined:?}");
        let root = c.dir.parent().expect("root");
        if let Some(charged) = usage_s(&root.join(&name), c.v2).filter(|_| burn) {
            eprintln!("{}: {charged:.3} s charged", root.join(&name).display());
            assert!(charged >= burnt * 0.8, "{charged} of {burnt} s");
        }
    }
    // On a hybrid host, memory and pids too: never the daemon's (which is the test
    // harness's here) once the flags lift the limits.
    let daemon_own = memberships(daemon.pid());
    for (ctl, path) in &joined {
        if ["memory", "pids"]
            .iter()
            .any(|r| ctl.split(',').any(|x| x == *r))
        {
            assert_eq!(
                path, &own,
                "{ctl}: {joined:?} (the daemon's: {daemon_own:?})"
            );
        }
    }
    let cpu_dir = cgroups
        .iter()
        .find(|c| c.controllers.iter().any(|n| n == "cpu"))
        .and_then(|c| c.dir.parent())
        .expect("the cpu hierarchy")
        .join(&name);
    let priority = ["cpu.idle", "cpu.weight", "cpu.shares"]
        .into_iter()
        .filter_map(|f| {
            Some((
                f,
                std::fs::read_to_string(cpu_dir.join(f))
                    .ok()?
                    .trim()
                    .to_string(),
            ))
        })
        .collect();
    let _ = daemon.stop(Duration::from_secs(30));
    priority
}

/// With every limit lifted (`max`) and the default weight, nothing required a cgroup in
/// the v1 hierarchies; the candidate still gets its own in each, so nothing it uses is
/// the daemon's.
#[test]
fn a_candidate_without_limits_is_charged_to_its_own_cgroup() {
    let p = candidate_cpu_is_its_own(
        "ccmax",
        &[
            "--candidate-cpu",
            "max",
            "--candidate-memory",
            "max",
            "--candidate-pids",
            "max",
        ],
        true,
    );
    // The default, `normal`, is the kernel's default weight, not idle.
    assert!(p.iter().all(|(k, v)| *k != "cpu.idle" || v == "0"), "{p:?}");
}

/// `--candidate-priority low`: its own cgroup everywhere, at a tenth of the default
/// weight (`cpu.weight` 10, v1 `cpu.shares` 102), not idle. (Where its CPU is charged is
/// the test above: a low-priority candidate gets little CPU while the box is busy, which
/// a shared test box may be.)
#[test]
fn a_low_priority_candidate_is_in_its_own_low_weight_cgroup() {
    let p = candidate_cpu_is_its_own("cclow", &["--candidate-priority", "low"], false);
    let get = |f: &str| p.iter().find(|(k, _)| *k == f).map(|(_, v)| v.as_str());
    assert!(get("cpu.idle").is_none_or(|v| v == "0"), "{p:?}");
    assert!(
        get("cpu.weight") == Some("10") || get("cpu.shares") == Some("102"),
        "{p:?}"
    );
}

/// `--candidate-priority idle`: `cpu.idle`, or the lowest weight on a kernel without it.
#[test]
fn an_idle_candidate_is_in_an_idle_cgroup() {
    let p = candidate_cpu_is_its_own("ccidle", &["--candidate-priority", "idle"], false);
    let get = |f: &str| p.iter().find(|(k, _)| *k == f).map(|(_, v)| v.as_str());
    match get("cpu.idle") {
        Some(idle) => assert_eq!(idle, "1", "{p:?}"),
        None => assert!(
            get("cpu.weight") == Some("1") || get("cpu.shares") == Some("2"),
            "{p:?}"
        ),
    }
}
