//! Configuration (b), the mirror tap + daemon, and (d), tcpdump; plus the readings they
//! give: exchanges rebuilt, kernel and daemon drops, BPF run time per packet.
use std::{
    io::{Read as _, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use nix::sys::signal::Signal;
use serde::Serialize;

use super::lab::{CANDIDATE_IP, Lab, in_netns, wait_port};
use super::procs::Proc;
use super::servers::CANDIDATE_PORT;

/// What (b) runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum TapMode {
    /// `mirror-daemon record` to a pcapng file, counted afterwards with
    /// `mirror-daemon exchanges --pcap`: the kernel tap and ring reader are real; the
    /// daemon's CPU and memory are those of capture + file writing only.
    Record,
    /// `mirror-daemon exchanges --iface` (live reassembly and HTTP framing, no replay):
    /// used where flow state matters (open connections) while `run` is not ready.
    LiveExchanges,
    /// `mirror-daemon run`: tap, rebuild, replay every request to the candidate, compare;
    /// counts from /metrics.
    Run,
}

/// What configuration (b) runs: the whole daemon (`run`), replaying every request.
pub const TAP_MODE: TapMode = TapMode::Run;

impl TapMode {
    pub fn label(self) -> &'static str {
        match self {
            TapMode::Record => "record (stand-in)",
            TapMode::LiveExchanges => "exchanges --iface (stand-in)",
            TapMode::Run => "run",
        }
    }

    /// The mode for measurements that need per-flow state in the daemon.
    pub fn with_flow_state(self) -> TapMode {
        match self {
            TapMode::Record => TapMode::LiveExchanges,
            m => m,
        }
    }
}

/// `/metrics` of `run`, reachable only inside the server namespace.
pub const METRICS_ADDR: &str = "127.0.0.1:9464";

pub struct TapDaemon {
    pub mode: TapMode,
    pub proc: Proc,
    port: u16,
    pcap: PathBuf,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct TapReport {
    pub mode: String,
    /// Exchanges rebuilt (request + response), all outcomes but `dropped`.
    pub exchanges: u64,
    /// Requests found in the capture file by an independent scan (record mode): what
    /// the kernel tap delivered, whatever the daemon's reader then made of it.
    pub requests_in_capture: Option<u64>,
    /// Kernel: failed ring-buffer reservations.
    pub kernel_ring_full: Option<u64>,
    pub kernel_segments: Option<u64>,
    /// Daemon: exchanges dropped (gap, parse error, queue full…), with reasons.
    pub daemon_drops: u64,
    pub drop_reasons: String,
    /// `run`: exchanges the sampler left out (not replayed).
    pub sampled_out: u64,
    /// `run`: segments the kernel left out (`--sticky client-ip` pre-sampling).
    pub kernel_sampled_out: Option<u64>,
}

impl TapReport {
    /// Share of the exchanges the daemon saw that were replayed and compared (the rest
    /// sampled out or dropped, e.g. `replay_queue_full` when the candidate is slower).
    pub fn replayed_share(&self) -> Option<f64> {
        let seen = self.exchanges + self.daemon_drops;
        (seen > 0).then(|| self.exchanges.saturating_sub(self.sampled_out) as f64 / seen as f64)
    }
}

/// `--pipeline-priority` of every `run` the bench starts (`cargo xtask bench
/// --pipeline-priority`), `idle` unless set.
static PIPELINE_PRIORITY: std::sync::OnceLock<String> = std::sync::OnceLock::new();

pub fn set_pipeline_priority(p: &str) {
    let _ = PIPELINE_PRIORITY.set(p.to_string());
}

pub fn pipeline_priority() -> &'static str {
    PIPELINE_PRIORITY.get().map_or("idle", String::as_str)
}

impl TapDaemon {
    /// `run` replaying every request (the cost and growth sections' configuration).
    pub fn start(lab: &Lab, daemon: &Path, mode: TapMode, port: u16, bound: u64) -> Result<Self> {
        Self::start_sampled(lab, daemon, mode, port, bound, &["--sample", "100"])
    }

    /// `run` with these sampling flags (`--sample 0` captures without replaying).
    pub fn start_sampled(
        lab: &Lab,
        daemon: &Path,
        mode: TapMode,
        port: u16,
        bound: u64,
        sampling: &[&str],
    ) -> Result<Self> {
        let pcap = lab.path(&format!("tap-{port}.pcapng"));
        let iface = lab.server_if.clone();
        let mut argv: Vec<String> = vec![daemon.display().to_string()];
        let name;
        match mode {
            TapMode::Record => {
                name = "daemon-record";
                argv.extend(
                    [
                        "record",
                        "--iface",
                        &iface,
                        "--port",
                        &port.to_string(),
                        "--out",
                        &pcap.display().to_string(),
                        // Stops by itself even if the harness dies.
                        "--duration",
                        &bound.to_string(),
                    ]
                    .map(String::from),
                );
            }
            TapMode::LiveExchanges => {
                name = "daemon-exchanges";
                argv.extend(
                    [
                        "exchanges",
                        "--raw",
                        "--iface",
                        &iface,
                        "--port",
                        &port.to_string(),
                        "--format",
                        "jsonl",
                        "--duration",
                        &format!("{bound}s"),
                    ]
                    .map(String::from),
                );
            }
            TapMode::Run => {
                name = "daemon-run";
                argv.extend(
                    [
                        "run",
                        "--iface",
                        &iface,
                        "--port",
                        &port.to_string(),
                        "--candidate",
                        &format!("http://{CANDIDATE_IP}:{CANDIDATE_PORT}"),
                        "--no-egress-guard",
                        "--store",
                        &lab.path("mirror.db").display().to_string(),
                        "--listen",
                        METRICS_ADDR,
                        "--duration",
                        &format!("{bound}s"),
                        "--mask-key-file",
                        &lab.path("mask.key").display().to_string(),
                        "--pipeline-priority",
                        pipeline_priority(),
                    ]
                    .map(String::from),
                );
                argv.extend(sampling.iter().map(|s| s.to_string()));
            }
        }
        let mut proc = if mode == TapMode::LiveExchanges {
            // A JSON line per exchange is not what is measured: discard it.
            Proc::spawn_null_stdout(lab, &lab.server_ns, name, &argv)?
        } else {
            Proc::spawn(lab, &lab.server_ns, name, &argv)?
        };
        // deploy/mirror.service's CPU settings, before the daemon does any work.
        if let Some(cg) = &lab.daemon_cgroup {
            cg.add(proc.pid())?;
        }
        match mode {
            TapMode::Record => proc.wait_for("tap attached", Duration::from_secs(20))?,
            TapMode::LiveExchanges => proc.wait_for("tap attached", Duration::from_secs(20))?,
            TapMode::Run => {
                wait_port(&lab.server_ns, METRICS_ADDR, Duration::from_secs(30))
                    .with_context(|| format!("mirror-daemon run: {}", proc.tail()))?;
                proc.wait_for("tap attached", Duration::from_secs(30))?;
            }
        }
        // `--daemon-cpu-weight idle`: idle once attached (start-up is not starved).
        if let Some(cg) = &lab.daemon_cgroup
            && super::cgroups::daemon_weight() == super::cgroups::DaemonWeight::Idle
        {
            cg.set_idle(true)?;
        }
        Ok(TapDaemon {
            mode,
            proc,
            port,
            pcap,
        })
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Stops the daemon and counts what it rebuilt.
    pub fn stop(mut self, lab: &Lab, daemon: &Path) -> Result<TapReport> {
        // The stop and its drain at the group's weight again.
        if let Some(cg) = &lab.daemon_cgroup {
            let _ = cg.set_idle(false);
        }
        let mut report = TapReport {
            mode: self.mode.label().into(),
            ..TapReport::default()
        };
        if self.mode == TapMode::Run {
            // Read the ledger before stopping: the last scrape is the complete one once
            // the load has ended.
            let text = in_netns(&lab.server_ns, || http_get(METRICS_ADDR, "/metrics"))?;
            parse_metrics(&text, &mut report);
        }
        let st = self.proc.stop(Signal::SIGINT, Duration::from_secs(60))?;
        if !st.success() {
            bail!("{} failed ({st}): {}", self.proc.name, self.proc.tail());
        }
        match self.mode {
            TapMode::Record => {
                parse_record_summary(&self.proc.stdout(), &mut report);
                report.requests_in_capture =
                    Some(super::pcapscan::count_requests(&self.pcap, self.port)?);
                let counted = count_exchanges(daemon, &self.pcap, self.port)?;
                report.exchanges = counted.lines;
                report.daemon_drops = counted.drops;
                report.drop_reasons = counted.drop_reasons;
                let _ = std::fs::remove_file(&self.pcap);
            }
            TapMode::LiveExchanges => {
                parse_exchanges_summary(&self.proc.stderr(), &mut report);
            }
            TapMode::Run => {}
        }
        Ok(report)
    }

    /// Keeps the capture file (offline section) instead of deleting it.
    pub fn stop_keep_file(mut self) -> Result<(PathBuf, String)> {
        let st = self.proc.stop(Signal::SIGINT, Duration::from_secs(60))?;
        if !st.success() {
            bail!("{} failed ({st}): {}", self.proc.name, self.proc.tail());
        }
        Ok((self.pcap.clone(), self.proc.stdout()))
    }
}

/// `recorded … kernel saw N segments, K records, ring drops R, load errors L bytes, oversize
/// bytes O; tap detached`
fn parse_record_summary(text: &str, r: &mut TapReport) {
    let num_after = |key: &str| -> Option<u64> {
        let rest = &text[text.find(key)? + key.len()..];
        rest.split(|c: char| !c.is_ascii_digit())
            .find(|s| !s.is_empty())?
            .parse()
            .ok()
    };
    r.kernel_segments = num_after("kernel saw ");
    r.kernel_ring_full = num_after("ring drops ");
}

/// `N exchanges printed; M rebuilt from S segments; dropped: none|reason=n, …`
fn parse_exchanges_summary(text: &str, r: &mut TapReport) {
    let Some(line) = text.lines().rev().find(|l| l.contains("rebuilt from")) else {
        return;
    };
    let mut words = line.split_whitespace();
    while let Some(w) = words.next() {
        if w == "printed;" {
            r.exchanges = words.next().and_then(|n| n.parse().ok()).unwrap_or(0);
        }
    }
    if let Some((_, drops)) = line.split_once("dropped: ") {
        r.drop_reasons = drops.trim().to_string();
        r.daemon_drops = drops
            .split(", ")
            .filter_map(|kv| kv.split_once('=').and_then(|(_, n)| n.parse::<u64>().ok()))
            .sum();
    }
}

/// `mirror_exchanges_total{outcome,reason}` and `mirror_kernel_ring_full_total`.
pub fn parse_metrics(text: &str, r: &mut TapReport) {
    let mut seen = 0;
    let mut dropped = 0;
    let mut reasons = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(v) = value.parse::<f64>() else {
            continue;
        };
        let v = v as u64;
        if name.starts_with("mirror_exchanges_total") {
            seen += v;
            if name.contains("outcome=\"sampled_out\"") {
                r.sampled_out += v;
            }
            if name.contains("outcome=\"dropped\"") {
                dropped += v;
                if v > 0 {
                    reasons.push(name.to_string());
                }
            }
        } else if name == "mirror_kernel_ring_full_total" {
            r.kernel_ring_full = Some(v);
        } else if name == "mirror_kernel_sampled_out_total" {
            r.kernel_sampled_out = Some(v);
        } else if name == "mirror_kernel_segments_total" {
            r.kernel_segments = Some(v);
        }
    }
    r.exchanges = seen - dropped.min(seen);
    r.daemon_drops = dropped;
    r.drop_reasons = if reasons.is_empty() {
        "none".into()
    } else {
        reasons.join(", ")
    };
}

pub fn http_get(addr: &str, path: &str) -> Result<String> {
    let mut s = std::net::TcpStream::connect(addr).with_context(|| format!("connecting {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body)
}

pub struct Counted {
    pub lines: u64,
    pub drops: u64,
    pub drop_reasons: String,
    pub seconds: f64,
}

/// `mirror-daemon exchanges --pcap F --port P` with its JSON lines counted as they
/// stream (the output can be large) and its drop summary parsed.
pub fn count_exchanges(daemon: &Path, pcap: &Path, port: u16) -> Result<Counted> {
    let t0 = std::time::Instant::now();
    let mut child = Command::new(daemon)
        .args(["exchanges", "--raw", "--pcap"])
        .arg(pcap)
        .args(["--port", &port.to_string(), "--format", "jsonl"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting mirror-daemon exchanges")?;
    let lines = count_lines(child.stdout.take())?;
    let out = child.wait_with_output()?;
    let seconds = t0.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("mirror-daemon exchanges failed ({}): {stderr}", out.status);
    }
    let mut r = TapReport::default();
    parse_exchanges_summary(&stderr, &mut r);
    Ok(Counted {
        lines,
        drops: r.daemon_drops,
        drop_reasons: r.drop_reasons,
        seconds,
    })
}

pub fn count_lines(src: Option<impl std::io::Read>) -> Result<u64> {
    let Some(mut src) = src else {
        return Ok(0);
    };
    let mut buf = vec![0u8; 1 << 16];
    let mut n = 0u64;
    loop {
        let k = src.read(&mut buf)?;
        if k == 0 {
            return Ok(n);
        }
        n += buf[..k].iter().filter(|b| **b == b'\n').count() as u64;
    }
}

/// (d): tcpdump writing every packet of the port to a file (AF_PACKET).
pub struct Tcpdump {
    proc: Proc,
    file: PathBuf,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct TcpdumpReport {
    pub captured: Option<u64>,
    pub dropped_by_kernel: Option<u64>,
}

impl Tcpdump {
    pub fn start(lab: &Lab, port: u16) -> Result<Self> {
        let file = lab.path("tcpdump.pcap");
        let argv: Vec<String> = [
            "tcpdump",
            "-i",
            &lab.server_if,
            "-n",
            "-s",
            "0",
            "-w",
            &file.display().to_string(),
            "tcp",
            "port",
            &port.to_string(),
        ]
        .map(String::from)
        .to_vec();
        let mut proc = Proc::spawn(lab, &lab.server_ns, "tcpdump", &argv)?;
        proc.wait_for("listening on", Duration::from_secs(10))?;
        Ok(Tcpdump { proc, file })
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    pub fn stop(mut self) -> Result<TcpdumpReport> {
        self.proc.stop(Signal::SIGINT, Duration::from_secs(30))?;
        let text = self.proc.stderr();
        let num_before = |key: &str| -> Option<u64> {
            let line = text.lines().find(|l| l.contains(key))?;
            line.split_whitespace().next()?.parse().ok()
        };
        let _ = std::fs::remove_file(&self.file);
        Ok(TcpdumpReport {
            captured: num_before("packets captured"),
            dropped_by_kernel: num_before("dropped by kernel"),
        })
    }
}

/// BPF run time of the tap program loaded by the daemon `pid` (`bpftool prog show`
/// counts only while kernel.bpf_stats_enabled=1). The program ids come from the
/// daemon's own file descriptors (/proc/PID/fdinfo), so other mirror_tap programs on a
/// shared host are not mixed in.
#[derive(Clone, Debug, Default, Serialize)]
pub struct BpfStats {
    pub prog_ids: Vec<u64>,
    pub run_cnt: u64,
    pub run_time_ns: u64,
}

impl BpfStats {
    pub fn ns_per_packet(&self) -> Option<f64> {
        (self.run_cnt > 0).then(|| self.run_time_ns as f64 / self.run_cnt as f64)
    }
}

pub fn bpf_stats(pid: u32) -> Result<BpfStats> {
    let mut s = BpfStats::default();
    for id in prog_ids(pid)? {
        let text = crate::util::output(Command::new("bpftool").args([
            "prog",
            "show",
            "id",
            &id.to_string(),
            "-j",
        ]))?;
        let v: serde_json::Value = serde_json::from_str(&text).context("bpftool JSON")?;
        if v.get("name").and_then(|n| n.as_str()) != Some("mirror_tap") {
            continue;
        }
        s.prog_ids.push(id);
        s.run_cnt += v.get("run_cnt").and_then(|x| x.as_u64()).unwrap_or(0);
        s.run_time_ns += v.get("run_time_ns").and_then(|x| x.as_u64()).unwrap_or(0);
    }
    if s.prog_ids.is_empty() {
        bail!("no mirror_tap program among the file descriptors of pid {pid}");
    }
    Ok(s)
}

fn prog_ids(pid: u32) -> Result<Vec<u64>> {
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))? {
        let Ok(text) = std::fs::read_to_string(entry?.path()) else {
            continue;
        };
        if let Some(id) = text
            .lines()
            .find_map(|l| l.strip_prefix("prog_id:"))
            .and_then(|v| v.trim().parse().ok())
        {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}
