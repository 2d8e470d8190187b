//! The live tap: load the kernel object, start the ring-buffer reader, then attach the
//! classifier to ingress and egress of one interface. Dropping [`Tap`] detaches it.
use std::{
    os::fd::AsRawFd as _,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData, PerCpuArray, RingBuf},
    programs::{SchedClassifier, TcAttachType, tc},
};
use mirror_common::{
    HEADER_BYTES, PPM_ALL, SegmentHeader, counter, map_name, program_name, setting,
};

use super::{Direction, FlowKey, Segment, TcpFlags, ip_from_bytes};

/// The kernel object built by `build.rs` from `mirror-ebpf`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/mirror-tap"));

/// Errors of the live tap. Each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("interface {0:?} does not exist (see `ip link`)")]
    NoInterface(String),
    #[error(
        "this binary was built without its eBPF programs (AYA_BUILD_SKIP); rebuild with `cargo xtask build`"
    )]
    NoObject,
    #[error(
        "loading the eBPF programs failed: {0} (run `mirror-daemon check` to see what is missing)"
    )]
    Load(#[source] Box<aya::EbpfError>),
    #[error("the kernel rejected the tap program: {0} (run `mirror-daemon check`)")]
    Program(#[source] Box<aya::programs::ProgramError>),
    #[error("eBPF map {0}: {1}")]
    Map(&'static str, #[source] Box<aya::maps::MapError>),
    #[error(
        "attaching to {iface} {direction}: {source} (needs CAP_NET_ADMIN and CAP_BPF; run `mirror-daemon check --iface {iface}`)"
    )]
    Attach {
        iface: String,
        direction: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("at least one port is needed")]
    NoPorts,
    #[error("ring buffer size {0} MiB: must be a power of two between 1 and 1024")]
    RingSize(u32),
}

/// Kernel-side counters, summed over CPUs (also what the store keeps with each ledger).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KernelCounters {
    pub segments: u64,
    pub payload_bytes: u64,
    pub records: u64,
    pub ring_full: u64,
    pub oversize: u64,
    pub sampled_out: u64,
    pub load_errors: u64,
    /// How often the daemon's own CPU quota stopped it since the run started (its
    /// cgroup's `cpu.stat`; absent from rows written before it was recorded).
    #[serde(default)]
    pub daemon_quota: crate::quota::QuotaThrottling,
}

impl KernelCounters {
    /// Adds another host's or run's counters (reports aggregate across hosts).
    pub fn add(&mut self, o: &KernelCounters) {
        self.segments += o.segments;
        self.payload_bytes += o.payload_bytes;
        self.records += o.records;
        self.ring_full += o.ring_full;
        self.oversize += o.oversize;
        self.sampled_out += o.sampled_out;
        self.load_errors += o.load_errors;
        self.daemon_quota.add(&o.daemon_quota);
    }
}

/// Settings of the live tap.
#[derive(Clone, Debug)]
pub struct TapConfig {
    pub iface: String,
    pub ports: Vec<u16>,
    /// Ring-buffer size in MiB (power of two).
    pub ring_mib: u32,
    /// Pre-sampling in parts per million of client addresses (`PPM_ALL` keeps all).
    pub sample_ppm: u32,
    /// Let the kernel wake the reader for each record (otherwise the reader polls every
    /// [`POLL_INTERVAL`] and the kernel never wakes it).
    pub wakeup_per_record: bool,
}

/// How often the reader looks at the ring without a wake-up (bounds the added latency of
/// wake-up batching; exchanges are not latency-critical, the legacy path never waits).
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// `BPF_RB_NO_WAKEUP`.
const RB_NO_WAKEUP: u32 = 1;

/// A loaded and attached tap. Detaches on drop (TCX links are owned by this process, so
/// they also go away if the process is killed: nothing stale is left on the interface).
///
/// ```no_run
/// use mirror_daemon::capture::kernel::{POLL_INTERVAL, Tap, TapConfig};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let cfg = TapConfig {
///     iface: "eth0".into(),
///     ports: vec![8080],
///     ring_mib: 64,
///     sample_ppm: mirror_common::PPM_ALL,
///     wakeup_per_record: false,
/// };
/// let mut tap = Tap::load(&cfg)?;
/// // Take the reader before attaching, so no segment is emitted unread.
/// let mut reader = tap.take_reader().expect("first take");
/// tap.attach()?;
/// reader.poll(POLL_INTERVAL, &mut |seg| println!("{} payload bytes", seg.payload.len()))?;
/// println!("{:?}", tap.counters());
/// # Ok(())
/// # }
/// ```
pub struct Tap {
    ebpf: Ebpf,
    ring: Option<RingBuf<MapData>>,
    counters: PerCpuArray<MapData, u64>,
    settings: Array<MapData, u32>,
    iface: String,
    /// Whether we added the clsact qdisc (netlink fallback on kernels without TCX) and
    /// must remove it again.
    added_clsact: bool,
    /// Shared with the reader: see [`SegmentReader`].
    live_since: Arc<AtomicU64>,
    live_until: Arc<AtomicU64>,
}

impl std::fmt::Debug for Tap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tap")
            .field("iface", &self.iface)
            .finish_non_exhaustive()
    }
}

fn map_err(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> TapError {
    move |e| TapError::Map(name, Box::new(e))
}

impl Tap {
    /// Loads the programs and maps and configures them, without attaching.
    pub fn load(cfg: &TapConfig) -> Result<Self, TapError> {
        if OBJECT.is_empty() {
            return Err(TapError::NoObject);
        }
        if cfg.ports.is_empty() {
            return Err(TapError::NoPorts);
        }
        if !cfg.ring_mib.is_power_of_two() || cfg.ring_mib > 1024 {
            return Err(TapError::RingSize(cfg.ring_mib));
        }
        if nix::net::if_::if_nametoindex(cfg.iface.as_str()).is_err() {
            return Err(TapError::NoInterface(cfg.iface.clone()));
        }
        raise_memlock();
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(map_name::SEGMENTS, cfg.ring_mib * 1024 * 1024)
            .load(OBJECT)
            .map_err(|e| TapError::Load(Box::new(e)))?;
        let mut ports: Array<MapData, u8> = take_map(&mut ebpf, map_name::PORTS)?;
        for p in &cfg.ports {
            ports
                .set(u32::from(*p), 1, 0)
                .map_err(map_err(map_name::PORTS))?;
        }
        let mut settings: Array<MapData, u32> = take_map(&mut ebpf, map_name::SETTINGS)?;
        settings
            .set(setting::SAMPLE_PPM, cfg.sample_ppm.min(PPM_ALL), 0)
            .map_err(map_err(map_name::SETTINGS))?;
        settings
            .set(
                setting::SUBMIT_FLAGS,
                if cfg.wakeup_per_record {
                    0
                } else {
                    RB_NO_WAKEUP
                },
                0,
            )
            .map_err(map_err(map_name::SETTINGS))?;
        let counters: PerCpuArray<MapData, u64> = take_map(&mut ebpf, map_name::COUNTERS)?;
        let ring: RingBuf<MapData> = take_map(&mut ebpf, map_name::SEGMENTS)?;
        // The daemon's own replay sockets are registered here and never tapped.
        super::own::install(
            take_map(&mut ebpf, map_name::OWN_SOCKETS)?,
            take_map(&mut ebpf, map_name::OWN_GATE)?,
        );
        let prog: &mut SchedClassifier = ebpf
            .program_mut(program_name::TAP)
            .ok_or(TapError::NoObject)?
            .try_into()
            .map_err(|e| TapError::Program(Box::new(e)))?;
        prog.load().map_err(|e| TapError::Program(Box::new(e)))?;
        Ok(Self {
            ebpf,
            ring: Some(ring),
            counters,
            settings,
            iface: cfg.iface.clone(),
            added_clsact: false,
            live_since: Arc::new(AtomicU64::new(0)),
            live_until: Arc::new(AtomicU64::new(u64::MAX)),
        })
    }

    /// Hands the ring buffer to the reader. Call before [`Tap::attach`], so that no
    /// segment is emitted before someone reads.
    pub fn take_reader(&mut self) -> Option<SegmentReader> {
        self.ring.take().map(|ring| SegmentReader {
            ring,
            live_since: Arc::clone(&self.live_since),
            live_until: Arc::clone(&self.live_until),
        })
    }

    /// Attaches to ingress and egress. The reader discards every segment stamped before
    /// both hooks were live: in between only one direction is seen, and a request whose
    /// response falls in that window is not a pair to guess at.
    pub fn attach(&mut self) -> Result<(), TapError> {
        self.attach_both()?;
        // Read after both attach calls returned, so every segment stamped at or after
        // this instant was seen by both hooks (bpf_ktime_get_ns is CLOCK_MONOTONIC).
        self.live_since
            .store(crate::clock::monotonic_ns().max(1), Ordering::Release);
        Ok(())
    }

    fn attach_both(&mut self) -> Result<(), TapError> {
        let iface = self.iface.clone();
        for (kind, name) in [
            (TcAttachType::Ingress, "ingress"),
            (TcAttachType::Egress, "egress"),
        ] {
            let prog: &mut SchedClassifier = self
                .ebpf
                .program_mut(program_name::TAP)
                .ok_or(TapError::NoObject)?
                .try_into()
                .map_err(|e| TapError::Program(Box::new(e)))?;
            if let Err(first) = prog.attach(&iface, kind) {
                // Kernels without TCX use cls_bpf under a clsact qdisc.
                if tc::qdisc_add_clsact(&iface).is_ok() {
                    self.added_clsact = true;
                }
                let prog: &mut SchedClassifier = self
                    .ebpf
                    .program_mut(program_name::TAP)
                    .ok_or(TapError::NoObject)?
                    .try_into()
                    .map_err(|e| TapError::Program(Box::new(e)))?;
                prog.attach(&iface, kind).map_err(|_| TapError::Attach {
                    iface: iface.clone(),
                    direction: name,
                    source: Box::new(first),
                })?;
            }
        }
        Ok(())
    }

    /// Changes the in-kernel pre-sampling rate without detaching.
    pub fn set_sample_ppm(&mut self, ppm: u32) -> Result<(), TapError> {
        self.settings
            .set(setting::SAMPLE_PPM, ppm.min(PPM_ALL), 0)
            .map_err(map_err(map_name::SETTINGS))
    }

    /// Kernel counters summed over CPUs.
    pub fn counters(&self) -> KernelCounters {
        read_counters(&self.counters)
    }

    pub fn iface(&self) -> &str {
        &self.iface
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        // The two hooks go one after the other: whatever is stamped from now on may have
        // been seen in one direction only, so the reader discards it.
        self.live_until
            .store(crate::clock::monotonic_ns(), Ordering::Release);
        super::own::uninstall();
        // Links detach when the program (owned by `ebpf`) drops; the qdisc is ours to
        // remove only if we added it.
        if self.added_clsact {
            let _ = tc::qdisc_detach_program(&self.iface, TcAttachType::Ingress, program_name::TAP);
            let _ = tc::qdisc_detach_program(&self.iface, TcAttachType::Egress, program_name::TAP);
        }
    }
}

fn read_counters(map: &PerCpuArray<MapData, u64>) -> KernelCounters {
    let sum = |i: u32| -> u64 { map.get(&i, 0).map(|v| v.iter().sum()).unwrap_or(0) };
    KernelCounters {
        segments: sum(counter::SEGMENTS),
        payload_bytes: sum(counter::PAYLOAD_BYTES),
        records: sum(counter::RECORDS),
        ring_full: sum(counter::RING_FULL),
        oversize: sum(counter::OVERSIZE),
        sampled_out: sum(counter::SAMPLED_OUT),
        load_errors: sum(counter::LOAD_ERRORS),
        daemon_quota: Default::default(),
    }
}

fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, TapError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(TapError::Map(
        name,
        Box::new(aya::maps::MapError::InvalidName { name: name.into() }),
    ))?;
    T::try_from(map).map_err(map_err(name))
}

/// BPF memory is charged to the memory cgroup on current kernels; older ones need a
/// higher RLIMIT_MEMLOCK. Failure is harmless where the cgroup accounting applies.
fn raise_memlock() {
    let limit = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid pointer to a stack value.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) };
    if rc != 0 {
        tracing::debug!("setrlimit(RLIMIT_MEMLOCK) failed; fine on kernels with memcg accounting");
    }
}

/// Reads segments from the ring buffer, without allocating per segment.
///
/// Segments stamped before both of the tap's hooks were live, or after the tap began to
/// detach, are discarded (counted as `before_attach`), so the stream never starts or
/// ends with a one-direction window.
pub struct SegmentReader {
    ring: RingBuf<MapData>,
    /// CLOCK_MONOTONIC instant both hooks were live (0: not yet).
    live_since: Arc<AtomicU64>,
    /// CLOCK_MONOTONIC instant the tap began to detach (`u64::MAX`: not yet).
    live_until: Arc<AtomicU64>,
}

/// What one [`SegmentReader::poll`] call saw.
#[derive(Clone, Copy, Debug, Default)]
pub struct PollStats {
    pub records: u64,
    pub malformed: u64,
    /// Segments stamped before both directions were attached, or after the tap began to
    /// detach, discarded.
    pub before_attach: u64,
}

impl SegmentReader {
    /// Waits up to `timeout` for records, then hands every available record to `sink`
    /// (a batch). Returns how many records were read.
    pub fn poll(
        &mut self,
        timeout: Duration,
        sink: &mut impl FnMut(&Segment<'_>),
    ) -> std::io::Result<PollStats> {
        let mut stats = self.drain(sink);
        if stats.records > 0 {
            return Ok(stats);
        }
        let fd = self.ring.as_raw_fd();
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd on the stack.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
        stats = self.drain(sink);
        Ok(stats)
    }

    fn drain(&mut self, sink: &mut impl FnMut(&Segment<'_>)) -> PollStats {
        let mut stats = PollStats::default();
        while let Some(item) = self.ring.next() {
            stats.records += 1;
            // Read for each record, not once per drain: a busy ring is never empty, so one
            // drain can last while the tap attaches or detaches. With bounds read at its
            // start, a drain that began before the detach kept the one-direction window
            // after it (requests, or responses, alone: counted as gaps and unpaired).
            let live_since = self.live_since.load(Ordering::Acquire);
            let live_until = self.live_until.load(Ordering::Acquire);
            match decode_record(&item) {
                Some(seg)
                    if live_since == 0 || seg.ts_ns < live_since || seg.ts_ns >= live_until =>
                {
                    stats.before_attach += 1
                }
                Some(seg) => sink(&seg),
                None => stats.malformed += 1,
            }
        }
        stats
    }
}

/// Decodes one ring-buffer record into a segment borrowing its payload.
pub fn decode_record(bytes: &[u8]) -> Option<Segment<'_>> {
    if bytes.len() < HEADER_BYTES {
        return None;
    }
    // SAFETY: SegmentHeader is plain old data and bytes has at least its size; the
    // record may not be aligned for u64 reads, hence read_unaligned.
    let h: SegmentHeader = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    let payload = bytes.get(HEADER_BYTES..HEADER_BYTES + h.chunk_len as usize)?;
    let (src, dst) = (
        ip_from_bytes(h.ip_version, &h.saddr)?,
        ip_from_bytes(h.ip_version, &h.daddr)?,
    );
    let to_server = h.direction == mirror_common::direction::TO_SERVER;
    let (client, server) = if to_server {
        ((src, h.sport).into(), (dst, h.dport).into())
    } else {
        ((dst, h.dport).into(), (src, h.sport).into())
    };
    Some(Segment {
        flow: FlowKey { client, server },
        direction: if to_server {
            Direction::ToServer
        } else {
            Direction::ToClient
        },
        seq: h.seq,
        ack: h.ack,
        flags: TcpFlags(h.tcp_flags),
        ts_ns: h.ts_ns,
        payload,
    })
}
