//! Command-line interface (clap). Flag names are a user contract: keep them.
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "mirror-daemon",
    version,
    about = "Shadow real HTTP traffic to a candidate service and prove parity before cutover",
    long_about = "mirror taps a legacy HTTP/1.x service with eBPF (observe only), rebuilds every \
request/response exchange, masks PII, replays a sample to a candidate service whose outbound \
network is fenced in the kernel, compares the responses and gives a go/no-go verdict against \
criteria written before the run.",
    after_help = "Examples:\n  mirror-daemon check --iface eth0\n  mirror-daemon record --iface eth0 --port 8080 --out golden.pcapng --duration 60\n  mirror-daemon exchanges --pcap golden.pcapng --port 8080 --format table\n\nExit codes: 0 ok/GO, 1 NO-GO (or check failed), 2 usage error, 3 INSUFFICIENT EVIDENCE, 4 runtime failure."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Default log filter when RUST_LOG is not set (e.g. `info`, `mirror_daemon=debug`).
    #[arg(long, global = true, default_value = "info")]
    pub log_level: String,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Preflight: BPF syscall, BTF, capabilities, cgroup2 and the interface, one line each with the fix.
    #[command(after_help = "Example:\n  mirror-daemon check --iface eth0")]
    Check {
        /// Interface to check.
        #[arg(long)]
        iface: Option<String>,
    },
    /// Show which mirror programs are attached to an interface (TCX links and tc filters).
    #[command(after_help = "Example:\n  mirror-daemon status --iface eth0")]
    Status {
        /// Interface to inspect.
        #[arg(long)]
        iface: String,
    },
    /// Fence a candidate's outbound network without replaying anything: attach the egress
    /// guard to its cgroup, prove it works, and report every attempt until stopped.
    #[command(
        after_help = "Examples:\n  mirror-daemon guard --candidate-cmd './new-service --port 9090' --allow-egress 10.0.5.7:5432\n  mirror-daemon guard --candidate-cgroup /sys/fs/cgroup/candidate.slice --egress-sink 127.0.0.1:4999"
    )]
    Guard(GuardArgs),
    /// Internal: the egress guard's self-test probe.
    #[command(name = "__guard-probe", hide = true)]
    GuardProbe { target: std::net::SocketAddr },
    /// Capture the tapped ports' TCP segments into a pcapng file (raw traffic: the file is created 0600).
    #[command(
        after_help = "Examples:\n  mirror-daemon record --iface eth0 --port 8080 --out golden.pcapng --duration 60\n  mirror-daemon record --iface eth0 --port 80,8080 --out sample.pcapng --count 100000"
    )]
    Record(RecordArgs),
}

#[derive(Debug, Args, Clone)]
pub struct TapArgs {
    /// Interface of the legacy service to tap (ingress and egress).
    #[arg(long)]
    pub iface: String,
    /// Server port(s) of the legacy service, comma-separated or repeated.
    #[arg(long = "port", value_delimiter = ',', required = true, value_parser = clap::value_parser!(u16).range(1..))]
    pub ports: Vec<u16>,
    /// Kernel ring-buffer size in MiB (power of two). Bigger absorbs longer bursts.
    #[arg(long, default_value_t = 64)]
    pub ring_mib: u32,
}

#[derive(Debug, Args)]
pub struct RecordArgs {
    #[command(flatten)]
    pub tap: TapArgs,
    /// Output pcapng file.
    #[arg(long)]
    pub out: PathBuf,
    /// Stop after this many seconds.
    #[arg(long, conflicts_with = "count")]
    pub duration: Option<f64>,
    /// Stop after this many segments.
    #[arg(long)]
    pub count: Option<u64>,
}

#[derive(Debug, Args, Clone)]
pub struct GuardArgs {
    /// An existing cgroup v2 directory holding the candidate's processes.
    #[arg(long, conflicts_with = "candidate_cmd")]
    pub candidate_cgroup: Option<PathBuf>,
    /// Start the candidate with this shell command, in a new cgroup of its own.
    #[arg(long)]
    pub candidate_cmd: Option<String>,
    /// Allowed outbound destination, CIDR[:PORT] (repeatable), e.g. 10.0.5.0/24:5432.
    #[arg(long = "allow-egress", value_parser = parse_allow)]
    pub allow_egress: Vec<mirror_daemon::guard::rules::AllowRule>,
    /// Redirect refused TCP connections to a sink listener at this address (reachable
    /// from the candidate) instead of refusing them; the sink records what was sent.
    #[arg(long, num_args = 0..=1, default_missing_value = "127.0.0.1:0")]
    pub egress_sink: Option<std::net::SocketAddr>,
    /// Run without the egress guard (the candidate can reach anything). Explicit only.
    #[arg(long)]
    pub no_egress_guard: bool,
}

fn parse_allow(s: &str) -> Result<mirror_daemon::guard::rules::AllowRule, String> {
    mirror_daemon::guard::rules::AllowRule::parse(s).map_err(|e| e.to_string())
}
