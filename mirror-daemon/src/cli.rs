//! Command-line interface (clap). Flag names are a user contract: keep them.
use std::{path::PathBuf, time::Duration};

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
    /// Print shell completions (bash, zsh, fish, elvish, powershell) to stdout.
    #[command(hide = true)]
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff) to stdout.
    #[command(hide = true)]
    Man,
    /// Internal: the egress guard's self-test probe.
    #[command(name = "__guard-probe", hide = true)]
    GuardProbe {
        #[arg(long = "target")]
        targets: Vec<std::net::SocketAddr>,
        #[arg(long)]
        unreadable: Vec<PathBuf>,
        #[arg(long)]
        expect_unprivileged: bool,
    },
    /// Internal: ends the candidate's cgroups once the daemon is gone.
    #[command(name = "__candidate-reaper", hide = true)]
    CandidateReaper { dirs: Vec<PathBuf> },
    /// Shadow live traffic: tap the legacy interface, replay a sample to the candidate,
    /// compare, store, and judge against the criteria.
    #[command(
        after_help = "Examples:\n  mirror-daemon run --iface eth0 --port 8080 --candidate http://127.0.0.1:9090 \\\n      --candidate-cmd './new-service --port 9090' --allow-egress 10.0.5.7:5432 \\\n      --sample 1 --max-mismatch 0.5% --max-p95-regression 10% --min-exchanges 1000\n  mirror-daemon run --config /etc/mirror/mirror.toml"
    )]
    Run(RunArgs),
    /// Replay a capture file (a golden set) to the candidate through the same pipeline.
    #[command(
        after_help = "Example:\n  mirror-daemon replay --pcap golden.pcapng --port 8080 --candidate http://127.0.0.1:9090 \\\n      --candidate-cgroup /sys/fs/cgroup/candidate --max-mismatch 0%"
    )]
    Replay(ReplayArgs),
    /// Print the HTTP exchanges rebuilt from a capture file or the live tap.
    #[command(
        after_help = "Examples:\n  mirror-daemon exchanges --pcap golden.pcapng --port 8080 --format table\n  mirror-daemon exchanges --pcap golden.pcapng > shareable.jsonl  (masked)\n  mirror-daemon exchanges --iface eth0 --port 8080 --count 100"
    )]
    Exchanges(ExchangesArgs),
    /// Judge a store against criteria: the parity card and GO / NO-GO / INSUFFICIENT EVIDENCE.
    #[command(
        after_help = "Examples:\n  mirror-daemon report --store /var/lib/mirror/mirror.db --max-mismatch 0.5% --max-p95-regression 10%\n  mirror-daemon report --store postgres://mirror@db/mirror --since 24h --format markdown\n\nExit codes: 0 GO, 1 NO-GO, 2 usage error, 3 INSUFFICIENT EVIDENCE, 4 failure."
    )]
    Report(ReportArgs),
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
    /// Let the kernel wake the reader for every record instead of the reader polling the
    /// ring every 20 ms (costs kernel time per packet; for comparison in benchmarks).
    #[arg(long)]
    pub wakeup_per_record: bool,
}

#[derive(Debug, Args)]
pub struct RecordArgs {
    #[command(flatten)]
    pub tap: TapArgs,
    /// Output pcapng file.
    #[arg(long)]
    pub out: PathBuf,
    /// Stop after this long: seconds (`60`) or with a unit (`2s`, `10m`).
    #[arg(long, conflicts_with = "count", value_parser = crate::commands::flags::duration)]
    pub duration: Option<Duration>,
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
    /// The unprivileged user the candidate runs as (no capabilities, no_new_privs, a
    /// seccomp filter); with --candidate-cgroup, the user the self-test checks secrets with.
    #[arg(long, default_value = "nobody", conflicts_with = "candidate_as_root")]
    pub candidate_user: String,
    /// Run the candidate as root with the daemon's capabilities. Explicit only: it can
    /// then leave its cgroup, and with it the egress guard.
    #[arg(long)]
    pub candidate_as_root: bool,
    /// Start the candidate in this network namespace (a name as `ip netns` lists it, or a
    /// path such as /proc/PID/ns/net); entered before privileges are dropped.
    #[arg(long)]
    pub candidate_netns: Option<PathBuf>,
    /// Memory limit of the candidate's cgroup (e.g. 1G, 512M; `max` for none).
    #[arg(long, default_value = mirror_daemon::guard::limits::DEFAULT_MEMORY)]
    pub candidate_memory: String,
    /// CPU limit of the candidate's cgroup in percent of one CPU (e.g. 100%; `max`).
    #[arg(long, default_value = mirror_daemon::guard::limits::DEFAULT_CPU)]
    pub candidate_cpu: String,
    /// How the candidate's cgroup competes with legacy for the CPU on a shared host:
    /// `normal` (equal weight: its latency reads as legacy's would), `low` (a tenth of
    /// legacy's weight) or `idle` (cpu.idle: only CPU time nothing else wants); below
    /// `normal` legacy waits less for it and its latency reads higher.
    #[arg(long, default_value = mirror_daemon::guard::limits::DEFAULT_PRIORITY)]
    pub candidate_priority: String,
    /// Most tasks (processes and threads) in the candidate's cgroup (`max` for none).
    #[arg(long, default_value = mirror_daemon::guard::limits::DEFAULT_PIDS)]
    pub candidate_pids: String,
    /// The DNS resolver the candidate may use, ADDR[:PORT] (port 53 by default). Its UDP
    /// queries pass through the daemon's relay, which reports each one (name, type, pid).
    #[arg(long, value_parser = mirror_daemon::guard::dns::parse_server)]
    pub allow_dns: Option<std::net::SocketAddr>,
    /// A Unix socket the candidate may use (repeatable). Without any, the candidate
    /// cannot create Unix sockets at all (socketpair excepted).
    #[arg(long = "allow-unix")]
    pub allow_unix: Vec<PathBuf>,
}

fn parse_allow(s: &str) -> Result<mirror_daemon::guard::rules::AllowRule, String> {
    mirror_daemon::guard::rules::AllowRule::parse(s).map_err(|e| e.to_string())
}

/// Criteria written before the run (percentages like `0.5%`).
#[derive(Debug, Args, Clone, Default)]
pub struct CriteriaArgs {
    /// Most exchanges with a (non-noise) difference, e.g. `0.5%`.
    #[arg(long)]
    pub max_mismatch: Option<String>,
    /// Most p95 latency regression of the candidate over legacy, e.g. `10%`.
    #[arg(long)]
    pub max_p95_regression: Option<String>,
    /// A p95 regression smaller than this in absolute terms passes whatever its ratio
    /// (applies run-wide and per route): sub-millisecond tails move by tens of percent
    /// between two identical services. `0` judges the ratio alone.
    #[arg(
        long,
        default_value = mirror_daemon::verdict::DEFAULT_MIN_LATENCY_DELTA,
        value_parser = crate::commands::flags::latency_floor
    )]
    pub min_latency_delta: std::time::Duration,
    /// Most candidate errors (timeouts, refused, resets, malformed), e.g. `0.1%`.
    #[arg(long)]
    pub max_candidate_errors: Option<String>,
    /// Fewest compared exchanges for a verdict (else INSUFFICIENT EVIDENCE).
    #[arg(long)]
    pub min_exchanges: Option<u64>,
    /// Lowest capture completeness for a verdict, e.g. `99%`.
    #[arg(long)]
    pub min_completeness: Option<String>,
    /// Most exchanges whose calls to dependencies differ from legacy's (missing, extra
    /// or a different payload), e.g. `0%` (needs --virtualize-egress).
    #[arg(long)]
    pub max_side_effect_mismatch: Option<String>,
    /// Per-route mismatch limit `ROUTE=PCT`, e.g. `"GET /users/{id}=1%"` (repeatable).
    #[arg(long)]
    pub route_max_mismatch: Vec<String>,
    /// Per-route p95 regression limit `ROUTE=PCT` (repeatable).
    #[arg(long)]
    pub route_max_p95_regression: Vec<String>,
    /// Per-route candidate error limit `ROUTE=PCT` (repeatable).
    #[arg(long)]
    pub route_max_candidate_errors: Vec<String>,
    /// Per-route minimum of compared exchanges `ROUTE=N` (repeatable).
    #[arg(long)]
    pub route_min_exchanges: Vec<String>,
}

/// How exchanges are compared.
#[derive(Debug, Args, Clone, Default)]
pub struct CompareArgs {
    /// Ignore `json:PATH` or `header:NAME` (repeatable), e.g. `json:$.generated_at`.
    #[arg(long)]
    pub ignore: Vec<String>,
    /// Numeric tolerance `json:PATH=0.01` (absolute) or `json:PATH=1%` (relative).
    #[arg(long)]
    pub tolerance: Vec<String>,
    /// Compare arrays at `json:PATH` as multisets.
    #[arg(long)]
    pub unordered: Vec<String>,
    /// Treat a null field and a missing field as equal.
    #[arg(long)]
    pub null_equals_missing: bool,
    /// Compare text bodies with whitespace normalized.
    #[arg(long)]
    pub normalize_whitespace: bool,
    /// Name routes: `REGEX=NAME` matched against `METHOD /path` (repeatable).
    #[arg(long)]
    pub route: Vec<String>,
}

/// PII masking.
#[derive(Debug, Args, Clone, Default)]
pub struct MaskArgs {
    /// Extra masking rule: `header:NAME`, `json:PATH`, `query:NAME`, `form:NAME` (repeatable).
    #[arg(long)]
    pub mask: Vec<String>,
    /// Detectors to run everywhere: `email,card,ssn,phone,iban,ip` (default email,card,ssn,phone).
    #[arg(long)]
    pub detect: Option<String>,
    /// `tokenize` (deterministic keyed tokens, default) or `redact`.
    #[arg(long, default_value = "tokenize")]
    pub mask_action: String,
    /// HMAC key for tokens; created (mode 0600) when absent.
    #[arg(long, default_value = "/var/lib/mirror/mask.key")]
    pub mask_key_file: PathBuf,
}

/// Everything shared by `run` and `replay`.
#[derive(Debug, Args, Clone)]
pub struct PipelineArgs {
    /// The candidate service: `http://HOST:PORT`.
    #[arg(long)]
    pub candidate: String,
    /// Rewrite the Host header to this value (otherwise sent as captured).
    #[arg(long)]
    pub candidate_host: Option<String>,
    /// Header carrying the correlation id.
    #[arg(long, default_value = "X-Mirror-Id")]
    pub id_header: String,
    /// A second legacy instance: enables legacy-vs-legacy noise cancellation.
    #[arg(long)]
    pub secondary: Option<String>,
    /// Percent of exchanges to replay (sticky per key with --sticky).
    #[arg(long, default_value = "100", value_parser = crate::commands::flags::SamplePercent::parse)]
    pub sample: crate::commands::flags::SamplePercent,
    /// Sticky sampling key: `header:NAME`, `cookie:NAME`, `query:NAME` or `client-ip`.
    #[arg(long)]
    pub sticky: Option<String>,
    /// Only replay matching requests: `method:GET`, `path:REGEX`, `header:NAME[=REGEX]` (repeatable).
    #[arg(long)]
    pub include: Vec<String>,
    /// Never replay matching requests (same syntax as --include; wins over it).
    #[arg(long)]
    pub exclude: Vec<String>,
    /// Most replayed requests per second (excess is dropped and counted).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Most connections open to the candidate: each replays one captured connection's
    /// requests in order (pipelined ones stay pipelined); traffic beyond is dropped and
    /// counted (`replay_queue_full`).
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// An exchange its replay lane reaches more than this after it was due (behind a
    /// hanging candidate, or a starved daemon) is dropped and counted (`replay_late`)
    /// rather than sent in a burst long after legacy got it, e.g. `10s`, `2s`.
    #[arg(long, default_value = "10s", value_parser = crate::commands::flags::duration)]
    pub replay_max_lateness: Duration,
    /// Per-request timeout to the candidate, e.g. `5s`, `500ms`.
    #[arg(long, default_value = "5s", value_parser = crate::commands::flags::duration)]
    pub timeout: Duration,
    /// Send the candidate the captured values unmasked (it must authenticate as the
    /// user, say). Everything stored, logged or shown stays masked either way.
    #[arg(long)]
    pub replay_raw: bool,
    /// A dependency of legacy, ADDR:PORT (repeatable): legacy's calls to it are recorded
    /// from the tap and tied to the inbound exchange that caused them. `smtp://ADDR:PORT`
    /// names a mail relay: with --virtualize-egress the candidate's mail to it is accepted
    /// by a virtual SMTP server and each message reported as a side effect (legacy's own
    /// SMTP conversations are not recorded yet).
    #[arg(long = "dependency")]
    pub dependencies: Vec<mirror_daemon::effects::record::DependencyArg>,
    /// A header carrying an id from an inbound request to the calls it causes (repeatable;
    /// `traceparent` and `X-Request-Id` always count).
    #[arg(long = "propagation-header")]
    pub propagation_headers: Vec<String>,
    /// Answer the candidate's calls to the --dependency endpoints with legacy's recorded
    /// responses (nothing reaches the real dependency) and diff what both sides sent.
    #[arg(long, requires = "dependencies")]
    pub virtualize_egress: bool,
    #[command(flatten)]
    pub guard: GuardArgs,
    #[command(flatten)]
    pub mask: MaskArgs,
    #[command(flatten)]
    pub compare: CompareArgs,
    #[command(flatten)]
    pub criteria: CriteriaArgs,
    /// Where outcomes go: a SQLite file, or `postgres://…` for a fleet-wide store.
    #[arg(long, default_value = "/var/lib/mirror/mirror.db")]
    pub store: String,
    /// Delete stored rows older than this (e.g. `7d`).
    #[arg(long, value_parser = crate::commands::flags::duration)]
    pub retention_age: Option<Duration>,
    /// Keep the store under this size in MiB (oldest rows go first).
    #[arg(long)]
    pub retention_mib: Option<u64>,
    /// This host's name in the store (default: the hostname).
    #[arg(long)]
    pub host: Option<String>,
    /// Local listener for /metrics, /healthz, /readyz and the dashboard.
    #[arg(long, default_value = "127.0.0.1:9464")]
    pub listen: std::net::SocketAddr,
    /// Bearer token file, required when --listen is not loopback.
    #[arg(long)]
    pub listen_token_file: Option<PathBuf>,
    /// Largest body kept per message, in bytes.
    #[arg(long, default_value_t = 16 * 1024 * 1024)]
    pub max_body: usize,
    /// Largest header block, in bytes.
    #[arg(long, default_value_t = 64 * 1024)]
    pub max_header_bytes: usize,
    /// Most headers per message.
    #[arg(long, default_value_t = 128)]
    pub max_headers: usize,
    /// `idle`: pipeline threads at SCHED_IDLE, the ring-buffer reader at nice 10, so the
    /// daemon only takes CPU the legacy service leaves (excess is dropped and counted);
    /// `normal`: threads keep the service's priority (debugging, comparisons).
    #[arg(long, value_enum, default_value_t = mirror_daemon::app::isolation::PipelinePriority::Idle)]
    pub pipeline_priority: mirror_daemon::app::isolation::PipelinePriority,
}

#[derive(Debug, Args)]
#[command(args_override_self = true)]
pub struct RunArgs {
    /// TOML file whose keys are these flags' long names; flags on the command line win.
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub tap: TapArgs,
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    /// Stop after this long (e.g. `10m`, or seconds: `60`); default: until SIGINT/SIGTERM.
    #[arg(long, value_parser = crate::commands::flags::duration)]
    pub duration: Option<Duration>,
}

#[derive(Debug, Args)]
#[command(args_override_self = true)]
pub struct ReplayArgs {
    /// TOML file whose keys are these flags' long names; flags on the command line win.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Capture file (pcap or pcapng, from tcpdump or `mirror-daemon record`).
    #[arg(long)]
    pub pcap: PathBuf,
    /// Server port(s) in the capture (default: learned from SYNs).
    #[arg(long = "port", value_delimiter = ',', value_parser = clap::value_parser!(u16).range(1..))]
    pub ports: Vec<u16>,
    /// Segments held to put the two directions back in causal order (SPAN ports, merged
    /// captures); 0 reads the file as it is.
    #[arg(long, default_value_t = mirror_daemon::capture::reorder::DEFAULT_REORDER_WINDOW)]
    pub reorder_window: usize,
    /// Pace of the replay: `1` as captured, `2` twice as fast, `0.5` half, or `max` (as
    /// fast as the candidate takes it: a load test; what it cannot take is dropped and
    /// counted).
    #[arg(long, default_value = "1")]
    pub speed: String,
    #[command(flatten)]
    pub pipeline: PipelineArgs,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum ExchangeFormat {
    Jsonl,
    Table,
}

#[derive(Debug, Args)]
pub struct ExchangesArgs {
    /// Capture file to read (pcap or pcapng).
    #[arg(long, conflicts_with = "iface")]
    pub pcap: Option<PathBuf>,
    /// Live: interface to tap.
    #[arg(long, requires = "ports")]
    pub iface: Option<String>,
    /// Server port(s).
    #[arg(long = "port", value_delimiter = ',', value_parser = clap::value_parser!(u16).range(1..))]
    pub ports: Vec<u16>,
    #[arg(long, value_enum, default_value_t = ExchangeFormat::Jsonl)]
    pub format: ExchangeFormat,
    /// Include bodies (text, or base64 for binary) instead of length + sha256.
    #[arg(long)]
    pub bodies: bool,
    /// Print the exchanges unmasked, PII included (the default masks them).
    #[arg(long, conflicts_with = "masked")]
    pub raw: bool,
    /// Masking is the default; accepted so existing scripts keep working.
    #[arg(long, hide = true)]
    pub masked: bool,
    #[command(flatten)]
    pub mask: MaskArgs,
    /// Live: stop after this many exchanges.
    #[arg(long)]
    pub count: Option<u64>,
    /// Live: stop after this long (e.g. `30s`, or seconds: `30`).
    #[arg(long, value_parser = crate::commands::flags::duration)]
    pub duration: Option<Duration>,
    /// Live: kernel ring-buffer size in MiB.
    #[arg(long, default_value_t = 64)]
    pub ring_mib: u32,
    /// Live: let the kernel wake the reader for every record.
    #[arg(long)]
    pub wakeup_per_record: bool,
    /// Capture file: segments held to put the two directions back in causal order (a
    /// SPAN port or merged captures can show a response before its request); 0 reads
    /// the file as it is.
    #[arg(long, default_value_t = mirror_daemon::capture::reorder::DEFAULT_REORDER_WINDOW)]
    pub reorder_window: usize,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum ReportFormat {
    Table,
    Json,
    Markdown,
}

#[derive(Debug, Args)]
#[command(args_override_self = true)]
pub struct ReportArgs {
    /// The service's configuration file: its store and criteria are used (flags win).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The store: a SQLite file or `postgres://…`.
    #[arg(long, default_value = "/var/lib/mirror/mirror.db")]
    pub store: String,
    /// Only exchanges newer than this (`24h`, `30m`) or an RFC 3339 time.
    #[arg(long)]
    pub since: Option<String>,
    /// Only this host.
    #[arg(long)]
    pub host: Option<String>,
    /// Only this run id.
    #[arg(long)]
    pub run: Option<String>,
    #[arg(long, value_enum, default_value_t = ReportFormat::Table)]
    pub format: ReportFormat,
    #[command(flatten)]
    pub criteria: CriteriaArgs,
}
