//! `mirror-daemon status --iface IF`: what is attached to the interface, so an SRE (and
//! the tests) can see that the tap is attached exactly once, or not at all; and the CPU
//! quota of each process holding it (the daemon's own quota bends latency figures when
//! it binds: see `mirror_daemon::quota`).
use std::collections::BTreeSet;

use anyhow::Context as _;
use aya::programs::{SchedClassifier, TcAttachType};
use mirror_common::program_name;

use crate::exit;

pub fn run(iface: &str) -> anyhow::Result<u8> {
    if nix::net::if_::if_nametoindex(iface).is_err() {
        anyhow::bail!("interface {iface:?} does not exist (see `ip link`)");
    }
    let mut total = 0usize;
    let mut ids = BTreeSet::new();
    for (kind, name) in [
        (TcAttachType::Ingress, "ingress"),
        (TcAttachType::Egress, "egress"),
    ] {
        let (_rev, progs) = SchedClassifier::query_tcx(iface, kind).with_context(|| {
            format!("querying TCX programs on {iface} {name} (needs CAP_BPF/CAP_NET_ADMIN)")
        })?;
        let ours: Vec<_> = progs
            .iter()
            .filter(|p| {
                p.name_as_str()
                    .is_some_and(|n| program_name::TAP.starts_with(n) || n.starts_with("mirror"))
            })
            .collect();
        total += ours.len();
        ids.extend(ours.iter().map(|p| p.id()));
        println!(
            "{name}: {} mirror program(s) attached{}",
            ours.len(),
            ours.iter()
                .map(|p| format!(" [id {}]", p.id()))
                .collect::<String>()
        );
    }
    for pid in holders(&ids) {
        println!("{}", holder_line(pid));
    }
    println!("total mirror programs attached to {iface}: {total}");
    Ok(exit::OK)
}

/// `held by pid N (mirror-daemon): CPU quota …`.
fn holder_line(pid: u32) -> String {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    let who = format!("held by pid {pid} ({})", comm.trim());
    match mirror_daemon::quota::of_process(pid) {
        Some((cgroup, Some(q), t)) => format!(
            "{who}: CPU quota {q} (cgroup {}); it stopped the process in {} of {} periods \
             ({:.1} s) since the cgroup was created (a run's own figures: /metrics \
             mirror_daemon_cpu_*_total)",
            cgroup.display(),
            t.throttled_periods,
            t.periods,
            t.throttled_us as f64 / 1e6
        ),
        Some((cgroup, None, _)) => {
            format!("{who}: CPU quota none (cgroup {})", cgroup.display())
        }
        None => format!("{who}: CPU quota unknown (no readable cgroup cpu.stat)"),
    }
}

/// The processes (other than this one) holding a BPF program or link of one of `ids`:
/// their `/proc/PID/fdinfo` names the program. Unreadable processes are skipped.
fn holders(ids: &BTreeSet<u32>) -> BTreeSet<u32> {
    let mut out = BTreeSet::new();
    if ids.is_empty() {
        return out;
    }
    let me = std::process::id();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != me && holds(pid, ids) {
            out.insert(pid);
        }
    }
    out
}

fn holds(pid: u32, ids: &BTreeSet<u32>) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        // Only BPF objects' fdinfo can name a program: skip the rest without reading it.
        let is_bpf = std::fs::read_link(fd.path())
            .is_ok_and(|t| t.to_string_lossy().starts_with("anon_inode:bpf"));
        is_bpf
            && std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", fd.file_name().display()))
                .ok()
                .and_then(|info| fdinfo_prog_id(&info))
                .is_some_and(|id| ids.contains(&id))
    })
}

/// The `prog_id:` of a BPF program's or link's fdinfo.
fn fdinfo_prog_id(fdinfo: &str) -> Option<u32> {
    fdinfo
        .lines()
        .find_map(|l| l.strip_prefix("prog_id:"))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_program_is_named_in_a_link_or_program_fdinfo() {
        let link = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1057\nlink_type:\ttcx\n\
                    link_id:\t7\nprog_tag:\t1e2b1a9c5ac2ad8b\nprog_id:\t42\nifindex:\t3\n";
        assert_eq!(fdinfo_prog_id(link), Some(42));
        let prog = "pos:\t0\nprog_type:\t3\nprog_jited:\t1\nprog_id:\t42\n";
        assert_eq!(fdinfo_prog_id(prog), Some(42));
        assert_eq!(
            fdinfo_prog_id("pos:\t0\nmap_type:\t27\nmap_id:\t42\n"),
            None
        );
    }
}
