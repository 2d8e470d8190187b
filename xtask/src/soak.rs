//! `cargo xtask soak [--minutes N] [--connections N]`: the long reliability run that does
//! not fit in the test suite. Two network namespaces joined by a veth pair; a toy legacy
//! (tests/scripts/toy_server.py) tapped by `mirror-daemon run`; N idle keep-alive
//! connections held for the whole run (one exchange each, then silence); steady legacy
//! load on top. Prints the daemon's RSS and CPU over time and the final accounting, and
//! fails when the legacy load saw a failure, the accounting identity does not hold, or
//! the daemon's peak RSS is over the cap.
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::util::workspace_root;

pub struct SoakArgs {
    pub minutes: u64,
    pub connections: u64,
    pub rate: u64,
    pub rss_cap_mib: u64,
    pub release: bool,
}

/// Connections per client process (its source address has ~28k ephemeral ports, and the
/// process is capped by RLIMIT_NOFILE).
const PER_CLIENT: u64 = 15_000;
/// Connections per toy legacy process (the port is shared with SO_REUSEPORT).
const PER_SERVER: u64 = 12_000;

/// Everything the soak created, removed on drop (also on failure).
struct Env {
    leg: String,
    cli: String,
    children: Vec<(String, Child)>,
}

impl Env {
    fn spawn(&mut self, name: &str, cmd: &mut Command) -> Result<u32> {
        let child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        let pid = child.id();
        self.children.push((name.into(), child));
        Ok(pid)
    }

    fn in_ns(&self, ns: &str, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns, program]);
        c
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        for (_, c) in self.children.iter_mut().rev() {
            signal(c.id(), "TERM");
        }
        for (_, c) in self.children.iter_mut().rev() {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in [&self.leg, &self.cli] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

fn run_ok(cmd: &mut Command) -> Result<String> {
    crate::util::output(cmd)
}

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn wait_for(path: &Path, needle: &str, timeout: Duration) -> Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) {
            return Ok(text);
        }
        if Instant::now() > deadline {
            bail!("{} did not show {needle:?}: {text}", path.display());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn field(text: &str, key: &str) -> Option<u64> {
    let prefix = format!("{key}=");
    text.split_whitespace()
        .find_map(|t| t.strip_prefix(&prefix)?.parse().ok())
}

pub fn run(args: SoakArgs) -> Result<()> {
    let profile = if args.release { "release" } else { "debug" };
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
        .join(profile);
    let (daemon_bin, examples_bin) = (target.join("mirror-daemon"), target.join("mirror-examples"));
    let scripts = workspace_root().join("tests/scripts");
    let work = std::env::temp_dir().join(format!("mirror-soak-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    eprintln!("xtask soak: working in {}", work.display());

    let id = std::process::id();
    let mut env = Env {
        leg: format!("ms-leg-{id}"),
        cli: format!("ms-cli-{id}"),
        children: Vec::new(),
    };
    let (leg_if, cli_if) = (
        format!("vsl{}", id % 100_000),
        format!("vsc{}", id % 100_000),
    );
    let net = format!("10.252.{}", id % 250);
    let (leg_ip, cli_ip) = (format!("{net}.1"), format!("{net}.2"));
    for ns in [&env.leg, &env.cli] {
        run_ok(Command::new("ip").args(["netns", "add", ns]))?;
        run_ok(env.in_ns(ns, "ip").args(["link", "set", "lo", "up"]))?;
    }
    run_ok(Command::new("ip").args([
        "link", "add", &leg_if, "type", "veth", "peer", "name", &cli_if,
    ]))?;
    run_ok(Command::new("ip").args(["link", "set", &leg_if, "netns", &env.leg]))?;
    run_ok(Command::new("ip").args(["link", "set", &cli_if, "netns", &env.cli]))?;
    for (ns, ifc, ip) in [(&env.leg, &leg_if, &leg_ip), (&env.cli, &cli_if, &cli_ip)] {
        run_ok(
            env.in_ns(ns, "ip")
                .args(["addr", "add", &format!("{ip}/24"), "dev", ifc]),
        )?;
        run_ok(env.in_ns(ns, "ip").args(["link", "set", ifc, "up"]))?;
    }

    // The legacy: toy servers sharing port 8080.
    let servers = args.connections.div_ceil(PER_SERVER).max(1);
    for _ in 0..servers {
        let mut c = env.in_ns(&env.leg, "python3");
        c.arg(scripts.join("toy_server.py"))
            .args(["answer", &leg_ip, "8080", "--reuseport"])
            .stdout(Stdio::null());
        env.spawn("toy legacy", &mut c)?;
    }
    std::thread::sleep(Duration::from_secs(1));

    // The daemon (nsenter: its pid is ours to watch), with the toy candidate.
    let log = work.join("daemon.log");
    let seconds = args.minutes * 60;
    let mut c = Command::new("nsenter");
    c.arg(format!("--net=/var/run/netns/{}", env.leg))
        .arg("--")
        .arg(&daemon_bin)
        .args(["run", "--iface", &leg_if, "--port", "8080"])
        .args(["--candidate", "http://127.0.0.1:9090", "--candidate-cmd"])
        .arg(format!(
            "exec python3 {} answer 127.0.0.1 9090",
            scripts.join("toy_server.py").display()
        ))
        .arg("--store")
        .arg(work.join("m.db"))
        .arg("--mask-key-file")
        .arg(work.join("mask.key"))
        // The idle connections' exchanges are not replayed; the steady load's are.
        .args(["--exclude", "path:^/idle/", "--listen", "127.0.0.1:0"])
        .args(["--duration", &format!("{}s", seconds + 900)])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log)?);
    let daemon = env.spawn("mirror-daemon", &mut c)?;
    wait_for(&log, "tap attached", Duration::from_secs(60))?;

    let mut peak_rss = 0u64;
    let hz = 100.0; // USER_HZ on Linux
    let mut last = (Instant::now(), cpu_ticks(daemon).unwrap_or(0));
    let mut sample = |what: &str, peak: &mut u64| {
        let rss = status_kib(daemon, "VmRSS:").unwrap_or(0);
        let hwm = status_kib(daemon, "VmHWM:").unwrap_or(0);
        *peak = (*peak).max(hwm);
        let ticks = cpu_ticks(daemon).unwrap_or(0);
        let cpu = (ticks.saturating_sub(last.1)) as f64 / hz / last.0.elapsed().as_secs_f64();
        last = (Instant::now(), ticks);
        let progress = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .rev()
            .find(|l| l.contains("s: seen "))
            .unwrap_or_default()
            .to_string();
        println!(
            "soak {what}: daemon RSS {} MiB (peak {} MiB), CPU {:.0}% | {progress}",
            rss / 1024,
            hwm / 1024,
            cpu * 100.0
        );
    };

    // Idle connections: one client process per source address.
    let stop = work.join("stop");
    let clients = args.connections.div_ceil(PER_CLIENT);
    let mut outs = Vec::new();
    for i in 0..clients {
        let count = PER_CLIENT.min(args.connections - i * PER_CLIENT);
        let src = format!("{net}.{}", 10 + i);
        run_ok(env.in_ns(&env.cli, "ip").args([
            "addr",
            "add",
            &format!("{src}/24"),
            "dev",
            &cli_if,
        ]))?;
        let out = work.join(format!("clients-{i}.out"));
        let mut c = env.in_ns(&env.cli, "python3");
        c.arg(scripts.join("idle_clients.py"))
            .args([&leg_ip, "8080", &src, &count.to_string()])
            .arg(&stop)
            .arg((seconds + 600).to_string())
            .stdout(std::fs::File::create(&out)?);
        env.spawn("idle clients", &mut c)?;
        outs.push(out);
    }
    let mut open = 0;
    for out in &outs {
        let text = wait_for(out, "open=", Duration::from_secs(600))?;
        open += field(&text, "open").unwrap_or(0);
        if field(&text, "failed") != Some(0) {
            bail!("idle clients failed: {text}");
        }
    }
    sample(&format!("{open} idle connections open"), &mut peak_rss);
    let rss_idle = status_kib(daemon, "VmRSS:").unwrap_or(0);

    // Steady legacy load for the whole run, while the idle connections stay open.
    let load_out = work.join("load.out");
    let mut c = env.in_ns(&env.cli, examples_bin.to_str().unwrap_or_default());
    c.args(["load", "--target", &format!("{leg_ip}:8080")])
        .args(["--requests", &(args.rate * seconds).to_string()])
        .args(["--concurrency", "8", "--rate", &args.rate.to_string()])
        .args(["--max-duration", &(seconds + 60).to_string()])
        .stdout(std::fs::File::create(&load_out)?)
        .stderr(Stdio::null());
    let load = env.spawn("load", &mut c)?;
    let started = Instant::now();
    while Path::new(&format!("/proc/{load}")).exists()
        && started.elapsed() < Duration::from_secs(seconds + 120)
    {
        std::thread::sleep(Duration::from_secs(10));
        sample(&format!("{}s", started.elapsed().as_secs()), &mut peak_rss);
        // Reap the load generator as soon as it is done.
        if let Some((_, c)) = env.children.iter_mut().find(|(n, _)| n == "load")
            && matches!(c.try_wait(), Ok(Some(_)))
        {
            break;
        }
    }
    let load_status = env
        .children
        .iter_mut()
        .find(|(n, _)| n == "load")
        .map(|(_, c)| c.wait())
        .transpose()?;
    let load_text = std::fs::read_to_string(&load_out).unwrap_or_default();
    println!("soak load: {}", load_text.trim());

    std::fs::write(&stop, b"")?;
    for out in &outs {
        wait_for(out, "closed=", Duration::from_secs(120))?;
    }
    sample("idle connections closed", &mut peak_rss);
    peak_rss = peak_rss.max(status_kib(daemon, "VmHWM:").unwrap_or(0));
    signal(daemon, "TERM");
    let (_, d) = env
        .children
        .iter()
        .position(|(n, _)| n == "mirror-daemon")
        .map(|i| env.children.remove(i))
        .context("daemon handle")?;
    let card = {
        let out = d.wait_with_output()?;
        if !out.status.success() {
            bail!("the daemon exited with {}", out.status);
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let log_text = std::fs::read_to_string(&log)?;
    println!("{card}");
    for l in log_text.lines().filter(|l| {
        l.starts_with("run ") || l.starts_with("capture figures:") || l.contains("panicked")
    }) {
        println!("{l}");
    }
    let run = log_text
        .lines()
        .find_map(|l| l.strip_prefix("run ")?.split_whitespace().next())
        .context("no run id in the daemon's log")?;
    let report = Command::new(&daemon_bin)
        .args(["report", "--format", "json", "--run", run, "--store"])
        .arg(work.join("m.db"))
        .output()?;
    let doc: serde_json::Value =
        serde_json::from_slice(&report.stdout).context("report --format json")?;
    let acc = &doc["accounting"];
    println!("soak accounting: {acc}");
    println!(
        "soak summary: {open} idle connections; daemon RSS with them open {} MiB; peak RSS {} MiB (cap {} MiB)",
        rss_idle / 1024,
        peak_rss / 1024,
        args.rss_cap_mib
    );

    let mut failures = Vec::new();
    if !load_status.is_some_and(|s| s.success()) || field(&load_text, "failed") != Some(0) {
        failures.push(format!("legacy load failed: {}", load_text.trim()));
    }
    if open != args.connections {
        failures.push(format!("{open} of {} connections opened", args.connections));
    }
    if acc["identity_holds"] != true {
        failures.push("the accounting identity does not hold".into());
    }
    if peak_rss > args.rss_cap_mib * 1024 {
        failures.push(format!("peak RSS {} MiB over the cap", peak_rss / 1024));
    }
    if log_text.contains("panicked") {
        failures.push("the daemon panicked".into());
    }
    if !failures.is_empty() {
        bail!("soak failed: {}", failures.join("; "));
    }
    let _ = std::fs::remove_dir_all(&work);
    println!("soak passed");
    Ok(())
}
