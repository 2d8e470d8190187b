//! The lab: network namespaces joined by veth pairs, a temp dir, and the clean-up that
//! removes all of it (on success, error, panic and Ctrl-C). Traffic never leaves these
//! namespaces: every address is assigned here, inside them.
use std::{
    fs,
    path::PathBuf,
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, kill, sigaction};
use nix::unistd::Pid;

use super::cgroups::{self, Cgroup};
use super::servers::{EXAMPLES_PORT, NGINX_PORT, TEE_PROXY_PORT, TEE_STATIC_PORT};
use crate::util::output;

/// The ports the loads go to: connections to them come from many client addresses.
const LEGACY_PORTS: [u16; 4] = [NGINX_PORT, EXAMPLES_PORT, TEE_STATIC_PORT, TEE_PROXY_PORT];

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: nix::libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Ctrl-C / SIGTERM only set a flag: every wait loop checks it and returns an error, so
/// the guards' `Drop` clean up in order instead of the process dying mid-way.
pub fn install_signal_handlers() -> Result<()> {
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { sigaction(sig, &action) }.with_context(|| format!("installing {sig} handler"))?;
    }
    Ok(())
}

pub fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted: cleaning up");
    }
    Ok(())
}

/// Sleeps, but notices Ctrl-C within 50 ms.
pub fn sleep(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    loop {
        check_interrupted()?;
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        std::thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}

/// Addresses inside the lab. Fixed values are safe: each namespace has its own routing
/// table, so concurrent runs (different namespace names) cannot collide.
pub const CLIENT_IP: &str = "10.77.0.1";
pub const SERVER_IP: &str = "10.77.0.2";
/// Extra server addresses: 100k client connections need more than one
/// (client, server) address pair's worth of ephemeral ports.
pub const SERVER_EXTRA_IPS: &[&str] = &["10.77.0.3", "10.77.0.4", "10.77.0.5"];
pub const SERVER_CAND_SIDE_IP: &str = "10.77.1.1";
pub const CANDIDATE_IP: &str = "10.77.1.2";

pub struct Lab {
    pub id: u32,
    /// The load generators run here.
    pub client_ns: String,
    /// The legacy servers, the tap, tcpdump and the nginx tee run here.
    pub server_ns: String,
    /// The candidate runs here.
    pub cand_ns: String,
    /// The legacy interface: the tap and tcpdump watch it.
    pub server_if: String,
    /// The candidate's interface (in `cand_ns`): a tap there times the candidate as the
    /// legacy tap times legacy (the fidelity section).
    pub cand_if: String,
    pub dir: PathBuf,
    created: Vec<String>,
    bpf_stats_old: Option<String>,
    /// The daemon's cgroup (deploy/mirror.service's CPU settings) and the candidate's
    /// (a stated CPU limit): see `cgroups`.
    pub daemon_cgroup: Option<Cgroup>,
    /// Measuring instruments (the fidelity section's tap on the candidate's interface):
    /// the daemon's weight, but not its quota, which is the product's own.
    pub instruments_cgroup: Option<Cgroup>,
    pub candidate_cgroup: Option<Cgroup>,
}

impl Lab {
    pub fn create() -> Result<Lab> {
        let id = std::process::id();
        let mut lab = Lab {
            id,
            client_ns: format!("mbench-c-{id}"),
            server_ns: format!("mbench-s-{id}"),
            cand_ns: format!("mbench-k-{id}"),
            server_if: format!("mbs{id}"),
            cand_if: format!("mbx{id}"),
            dir: std::env::temp_dir().join(format!("mirror-bench-{id}")),
            created: Vec::new(),
            bpf_stats_old: None,
            daemon_cgroup: None,
            instruments_cgroup: None,
            candidate_cgroup: None,
        };
        fs::create_dir_all(&lab.dir).with_context(|| format!("creating {}", lab.dir.display()))?;
        // Push each namespace before configuring it, so `Drop` removes a half-built lab.
        for ns in [&lab.client_ns, &lab.server_ns, &lab.cand_ns] {
            ip(&["netns", "add", ns])?;
            lab.created.push(ns.clone());
        }
        let (c, s, k) = (&lab.client_ns, &lab.server_ns, &lab.cand_ns);
        let (cif, sif) = (format!("mbc{id}"), lab.server_if.clone());
        let (kif, xif) = (format!("mbk{id}"), lab.cand_if.clone());
        ip(&[
            "link", "add", &cif, "netns", c, "type", "veth", "peer", "name", &sif, "netns", s,
        ])?;
        ip(&[
            "link", "add", &kif, "netns", s, "type", "veth", "peer", "name", &xif, "netns", k,
        ])?;
        ip(&[
            "-n",
            c,
            "addr",
            "add",
            &format!("{CLIENT_IP}/24"),
            "dev",
            &cif,
        ])?;
        ip(&[
            "-n",
            s,
            "addr",
            "add",
            &format!("{SERVER_IP}/24"),
            "dev",
            &sif,
        ])?;
        for extra in SERVER_EXTRA_IPS {
            ip(&["-n", s, "addr", "add", &format!("{extra}/32"), "dev", &sif])?;
        }
        ip(&[
            "-n",
            s,
            "addr",
            "add",
            &format!("{SERVER_CAND_SIDE_IP}/24"),
            "dev",
            &kif,
        ])?;
        ip(&[
            "-n",
            k,
            "addr",
            "add",
            &format!("{CANDIDATE_IP}/24"),
            "dev",
            &xif,
        ])?;
        for (ns, dev) in [(c, &cif), (s, &sif), (s, &kif), (k, &xif)] {
            ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        for ns in [c, s, k] {
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        // Many idle connections: wide ephemeral range on the client, deep accept queues
        // on the server. These sysctls are per network namespace.
        lab.sysctl(c, "net.ipv4.ip_local_port_range", "1024 65000")?;
        lab.sysctl(s, "net.core.somaxconn", "65535")?;
        lab.sysctl(s, "net.ipv4.tcp_max_syn_backlog", "65535")?;
        super::clients::spread(c, &cif, SERVER_IP, &LEGACY_PORTS)?;
        let daemon_cgroup = Cgroup::create(
            &format!("mbench-{id}-daemon"),
            Some(cgroups::daemon_group_weight()),
            cgroups::daemon_cpu_quota().0,
            cgroups::daemon_cpu_quota().1,
        )?;
        lab.daemon_cgroup = Some(daemon_cgroup);
        lab.instruments_cgroup = Some(Cgroup::create(
            &format!("mbench-{id}-instruments"),
            Some(cgroups::INSTRUMENTS_CPU_WEIGHT),
            100,
            cgroups::daemon_cpu_quota().1,
        )?);
        lab.candidate_cgroup = Some(Cgroup::create(
            &format!("mbench-{id}-candidate"),
            None,
            cgroups::CANDIDATE_CPU_PERCENT,
            cgroups::CANDIDATE_CPU_PERIOD_US,
        )?);
        Ok(lab)
    }

    fn sysctl(&self, ns: &str, key: &str, value: &str) -> Result<()> {
        output(Command::new("ip").args([
            "netns",
            "exec",
            ns,
            "sysctl",
            "-qw",
            &format!("{key}={value}"),
        ]))?;
        Ok(())
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// `kernel.bpf_stats_enabled` is global: turn it on for the cost runs only and
    /// always put the old value back (in `Drop` too).
    pub fn set_bpf_stats(&mut self, on: bool) -> Result<()> {
        const KEY: &str = "/proc/sys/kernel/bpf_stats_enabled";
        if self.bpf_stats_old.is_none() {
            self.bpf_stats_old = Some(fs::read_to_string(KEY)?.trim().to_string());
        }
        let value = if on {
            "1".to_string()
        } else {
            self.bpf_stats_old.clone().unwrap_or_else(|| "0".into())
        };
        fs::write(KEY, value).context("writing kernel.bpf_stats_enabled")?;
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Whatever still runs in our namespaces was started by this run: end it by pid.
        for ns in &self.created {
            for pid in netns_pids(ns) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        for ns in &self.created {
            while !netns_pids(ns).is_empty() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            for pid in netns_pids(ns) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        // Deleting a namespace deletes its veth ends, and with them their peers.
        for ns in &self.created {
            if let Err(e) = ip(&["netns", "del", ns]) {
                eprintln!("xtask bench: clean-up: {e:#}");
            }
        }
        if let Some(old) = &self.bpf_stats_old {
            let _ = fs::write("/proc/sys/kernel/bpf_stats_enabled", old);
        }
        let _ = fs::remove_dir_all(&self.dir);
        self.daemon_cgroup = None;
        self.instruments_cgroup = None;
        self.candidate_cgroup = None;
        eprintln!("xtask bench: lab {} removed", self.id);
    }
}

fn netns_pids(ns: &str) -> Vec<i32> {
    output(Command::new("ip").args(["netns", "pids", ns]))
        .map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn ip(args: &[&str]) -> Result<()> {
    output(Command::new("ip").args(args))?;
    Ok(())
}

/// Runs `f` on a thread that joined the namespace `ns` (setns is per thread): sockets it
/// opens live there. Used for readiness checks without spawning processes.
pub fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let path = PathBuf::from("/run/netns").join(ns);
    std::thread::spawn(move || -> Result<T> {
        let file = fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).context("setns")?;
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("netns thread panicked"))?
}

/// Waits until `addr` accepts TCP connections from inside `ns`.
pub fn wait_port(ns: &str, addr: &str, timeout: Duration) -> Result<()> {
    let addr: std::net::SocketAddr = addr.parse().with_context(|| format!("address {addr}"))?;
    let deadline = Instant::now() + timeout;
    loop {
        check_interrupted()?;
        let ok = in_netns(ns, move || {
            Ok(std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok())
        })?;
        if ok {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("{addr} in {ns} did not accept connections within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
