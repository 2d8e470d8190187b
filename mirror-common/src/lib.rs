//! Types shared between the kernel programs (`mirror-ebpf`) and the daemon.
//!
//! Everything here is `#[repr(C)]` and plain data: the kernel writes these bytes into
//! the ring buffer and the daemon reads them back without parsing. Two exceptions,
//! [`cpu_stat`] and [`cpu_priority`], are shared by the daemon and the bench (`xtask`),
//! which cannot depend on the daemon's crate.
#![no_std]

pub mod cpu_priority;
pub mod cpu_stat;

/// Payload bytes carried by one ring-buffer record. Larger TCP payloads (GSO/GRO
/// super-packets) are split into several records, each with the sequence number of
/// its own first byte, so a record is itself a valid TCP segment.
pub const CHUNK_BYTES: usize = 4096;

/// Most records one packet is split into: 16 × 4 KiB covers the 64 KiB GSO maximum
/// twice over. Anything beyond is counted in [`counter::OVERSIZE`] (the daemon then
/// sees a sequence gap, never silently cut data).
pub const MAX_CHUNKS_PER_PACKET: u32 = 32;

/// Entries of the tap's `PORTS` array: one per TCP port.
pub const PORT_SLOTS: u32 = 65536;

/// Direction of a captured segment relative to the tapped service.
pub mod direction {
    /// Client to server: the destination port is a tapped port.
    pub const TO_SERVER: u8 = 0;
    /// Server to client: the source port is a tapped port.
    pub const TO_CLIENT: u8 = 1;
}

/// TCP flag bits as they appear in the TCP header's flags byte.
pub mod tcp_flag {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
}

/// Header of one ring-buffer record; `chunk_len` payload bytes follow it directly. The
/// record is [`HEADER_BYTES`] + [`payload_class`]`(chunk_len)` long: anything after the
/// payload is padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Kernel monotonic clock (`bpf_ktime_get_ns`) when the packet passed the tap.
    pub ts_ns: u64,
    /// Source address; IPv4 addresses use the first 4 bytes.
    pub saddr: [u8; 16],
    /// Destination address; IPv4 addresses use the first 4 bytes.
    pub daddr: [u8; 16],
    /// Source port, host byte order.
    pub sport: u16,
    /// Destination port, host byte order.
    pub dport: u16,
    /// Sequence number of this record's first payload byte.
    pub seq: u32,
    /// Acknowledgement number of the packet.
    pub ack: u32,
    /// Whole TCP payload length of the packet this record came from.
    pub segment_len: u32,
    /// Offset of this record's payload within the packet's payload.
    pub chunk_offset: u32,
    /// Payload bytes in this record.
    pub chunk_len: u16,
    /// 4 or 6.
    pub ip_version: u8,
    /// [`direction::TO_SERVER`] or [`direction::TO_CLIENT`].
    pub direction: u8,
    /// TCP flags for this record: SYN only on the first record of a packet, FIN and RST
    /// only on the last.
    pub tcp_flags: u8,
    pub _pad: [u8; 7],
}

/// Size of [`SegmentHeader`] in bytes (the payload starts here).
pub const HEADER_BYTES: usize = core::mem::size_of::<SegmentHeader>();

/// Payload areas of the ring-buffer records, smallest first. The kernel reserves each
/// record at a constant size (the verifier wants one) and copies the payload from the
/// packet straight into it: a chunk of `n` bytes takes the smallest class `>= n`, so a
/// record is [`HEADER_BYTES`] + that class long and its bytes after `chunk_len` are
/// unspecified padding (the reader takes `chunk_len` bytes). Powers of two, so the copy
/// length can be bounded for the verifier with a mask; at most half of a record's
/// payload area is padding, and every full chunk of a large packet fills its class.
pub const PAYLOAD_CLASSES: [usize; 7] = [0, 128, 256, 512, 1024, 2048, CHUNK_BYTES];

/// The payload class of a chunk of `len` bytes (`len <= CHUNK_BYTES`): the smallest of
/// [`PAYLOAD_CLASSES`] that holds it.
pub const fn payload_class(len: usize) -> usize {
    let mut i = 0;
    while i < PAYLOAD_CLASSES.len() {
        if len <= PAYLOAD_CLASSES[i] {
            return PAYLOAD_CLASSES[i];
        }
        i += 1;
    }
    CHUNK_BYTES
}

/// Indices of the tap's per-CPU counters map.
pub mod counter {
    /// TCP segments on a tapped port (including pure ACKs, which are not emitted).
    pub const SEGMENTS: u32 = 0;
    /// TCP payload bytes on a tapped port.
    pub const PAYLOAD_BYTES: u32 = 1;
    /// Records written to the ring buffer.
    pub const RECORDS: u32 = 2;
    /// Records lost because the ring buffer was full.
    pub const RING_FULL: u32 = 3;
    /// Payload bytes beyond `MAX_CHUNKS_PER_PACKET` records (never expected).
    pub const OVERSIZE: u32 = 4;
    /// Segments skipped by in-kernel pre-sampling.
    pub const SAMPLED_OUT: u32 = 5;
    /// Payload bytes that could not be read from the packet.
    pub const LOAD_ERRORS: u32 = 6;
    /// Segments of the daemon's own replay connections (to a candidate or secondary
    /// reached through the tapped interface on a tapped port): never captured again.
    pub const OWN_REPLAY: u32 = 7;
    /// Number of counters.
    pub const COUNT: u32 = 8;
}

/// Indices of the tap's settings array.
pub mod setting {
    /// Connections kept by pre-sampling, in parts per million of client addresses.
    /// `1_000_000` (the default) keeps everything.
    pub const SAMPLE_PPM: u32 = 0;
    /// Ring-buffer submit flags for every record: 0 lets the kernel wake the reader for
    /// each record it finds caught up (a wake-up per record under light load);
    /// `BPF_RB_NO_WAKEUP` (1, the default the daemon sets) never wakes it: the reader polls
    /// on a short timer instead, saving an irq_work and a wake-up per record. Read from the
    /// map as a plain value so the verifier does not split states on it.
    pub const SUBMIT_FLAGS: u32 = 1;
    pub const COUNT: u32 = 2;
}

/// Parts per million meaning "keep everything".
pub const PPM_ALL: u32 = 1_000_000;

/// Map names, shared so the daemon looks up exactly what the kernel defines.
pub mod map_name {
    pub const SEGMENTS: &str = "SEGMENTS";
    pub const PORTS: &str = "PORTS";
    pub const COUNTERS: &str = "COUNTERS";
    pub const SETTINGS: &str = "SETTINGS";
    pub const OWN_SOCKETS: &str = "OWN_SOCKETS";
    pub const OWN_FLOWS: &str = "OWN_FLOWS";
    pub const OWN_GATE: &str = "OWN_GATE";
    pub const GUARD_ALLOW4: &str = "GUARD_ALLOW4";
    pub const GUARD_ALLOW6: &str = "GUARD_ALLOW6";
    pub const GUARD_EVENTS: &str = "GUARD_EVENTS";
    pub const GUARD_SETTINGS: &str = "GUARD_SETTINGS";
    pub const GUARD_COUNTERS: &str = "GUARD_COUNTERS";
    pub const GUARD_VIRTUAL4: &str = "GUARD_VIRTUAL4";
    pub const GUARD_VIRTUAL6: &str = "GUARD_VIRTUAL6";
}

/// Program names in the object files.
pub mod program_name {
    pub const TAP: &str = "mirror_tap";
    pub const GUARD_CONNECT4: &str = "guard_connect4";
    pub const GUARD_CONNECT6: &str = "guard_connect6";
    pub const GUARD_SENDMSG4: &str = "guard_sendmsg4";
    pub const GUARD_SENDMSG6: &str = "guard_sendmsg6";
    pub const GUARD_SOCK_CREATE: &str = "guard_sock_create";
    pub const GUARD_RECVMSG4: &str = "guard_recvmsg4";
    pub const GUARD_RECVMSG6: &str = "guard_recvmsg6";
}

/// A replay connection of the daemon as the tap sees it: the server's address and port
/// and the daemon's own (client) port. Learned from the daemon's outgoing segments (by
/// socket cookie) so that the server's answers, which carry no socket, are skipped too.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OwnFlowKey {
    pub server: [u8; 16],
    pub server_port: u16,
    pub client_port: u16,
}

/// Ports one allowlist prefix permits; `any_port` permits all.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllowPorts {
    pub ports: [u16; 8],
    pub count: u8,
    pub any_port: u8,
    pub _pad: [u8; 6],
}

impl AllowPorts {
    #[inline(always)]
    pub fn permits(&self, port: u16) -> bool {
        if self.any_port != 0 {
            return true;
        }
        let mut i = 0;
        while i < 8 {
            if i < self.count as usize && self.ports[i] == port {
                return true;
            }
            i += 1;
        }
        false
    }
}

/// What the guard does with a destination that is not allowed.
pub mod guard_mode {
    /// connect()/sendmsg() fails with EPERM.
    pub const REFUSE: u32 = 0;
    /// TCP connects are rewritten to the daemon's sink listener; UDP is refused.
    pub const REDIRECT: u32 = 1;
}

/// Guard configuration (one entry in `GUARD_SETTINGS`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuardConfig {
    pub mode: u32,
    /// Sink listener port, host byte order.
    pub sink_port: u16,
    pub _pad: [u8; 2],
    /// Sink IPv4 address, network byte order bytes.
    pub sink_ip4: [u8; 4],
    /// Sink IPv6 address, network byte order bytes.
    pub sink_ip6: [u8; 16],
    /// The allow-listed DNS server (`--allow-dns`): 0 none, 4 or 6.
    pub dns_family: u8,
    pub _pad2: u8,
    /// DNS server port, host byte order.
    pub dns_port: u16,
    /// DNS server address (IPv4 in the first 4 bytes), network byte order.
    pub dns_addr: [u8; 16],
    /// The daemon's DNS relay on the candidate's loopback (127.0.0.1 and ::1), host byte
    /// order: UDP queries to the DNS server are rewritten to it (and its answers back),
    /// so every query is seen and reported.
    pub relay_port4: u16,
    pub relay_port6: u16,
    pub _pad3: [u8; 4],
}

/// Guard decisions as reported in [`GuardEvent::action`].
pub mod guard_action {
    pub const ALLOWED: u8 = 0;
    pub const REFUSED: u8 = 1;
    pub const REDIRECTED: u8 = 2;
    /// A TCP connect to a recorded dependency, rewritten to the daemon's virtual
    /// dependency listener on the candidate's loopback (`--virtualize-egress`).
    pub const VIRTUALIZED: u8 = 3;
}

/// An IPv4 dependency endpoint whose TCP connects the guard sends to a virtual
/// dependency listener (key of `GUARD_VIRTUAL4`; the value is the listener's port on
/// 127.0.0.1, host byte order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VirtualKey4 {
    /// Network byte order.
    pub addr: [u8; 4],
    /// Host byte order.
    pub port: u16,
    pub _pad: [u8; 2],
}

/// An IPv6 dependency endpoint whose TCP connects the guard sends to a virtual
/// dependency listener (key of `GUARD_VIRTUAL6`; the value is the listener's port on
/// [::1], host byte order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VirtualKey6 {
    /// Network byte order.
    pub addr: [u8; 16],
    /// Host byte order.
    pub port: u16,
    pub _pad: [u8; 2],
}

/// One outbound attempt seen by the guard.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuardEvent {
    pub ts_ns: u64,
    /// Process id (tgid).
    pub pid: u32,
    /// Destination port, host byte order (0 for a refused socket creation).
    pub port: u16,
    /// 4 or 6.
    pub ip_version: u8,
    /// IPPROTO_TCP (6), IPPROTO_UDP (17), or for a refused socket creation its protocol
    /// (ICMP 1, ICMPv6 58, or a raw socket's).
    pub protocol: u8,
    /// Destination address (IPv4 in the first 4 bytes), network byte order; zero for a
    /// refused socket creation (no destination yet).
    pub addr: [u8; 16],
    pub comm: [u8; 16],
    pub action: u8,
    /// SOCK_STREAM (1), SOCK_DGRAM (2) or SOCK_RAW (3).
    pub sock_type: u8,
    pub _pad: [u8; 6],
}

/// Bytes of `sun_path` in a Unix socket address.
pub const UNIX_PATH_BYTES: usize = 108;

/// A Unix-socket attempt: a [`GuardEvent`] with `ip_version` 0, then the raw `sun_path`
/// (padded to 112 bytes) and the address length the program passed.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnixGuardEvent {
    pub event: GuardEvent,
    pub path: [u8; 112],
    pub addr_len: u32,
    pub _pad: u32,
}

/// Indices of the guard's per-CPU counters.
pub mod guard_counter {
    pub const ALLOWED: u32 = 0;
    pub const REFUSED: u32 = 1;
    pub const REDIRECTED: u32 = 2;
    /// Events lost because the guard's ring buffer was full.
    pub const EVENTS_LOST: u32 = 3;
    pub const COUNT: u32 = 4;
}

/// Sticky sampling hash of a client address, identical in kernel and daemon so a client
/// skipped by the kernel is also the one the daemon would skip (FNV-1a, 32 bit).
#[inline(always)]
pub fn client_hash(addr: &[u8; 16]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    let mut i = 0;
    while i < 16 {
        h ^= addr[i] as u32;
        h = h.wrapping_mul(0x0100_0193);
        i += 1;
    }
    h
}

/// Whether a client with `hash` is kept at `ppm` parts per million.
#[inline(always)]
pub fn sample_keep(hash: u32, ppm: u32) -> bool {
    if ppm >= PPM_ALL {
        return true;
    }
    (hash % PPM_ALL) < ppm
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain-old-data, `repr(C)`, no padding the kernel leaves uninitialised
    // (explicit `_pad`).
    unsafe impl aya::Pod for super::SegmentHeader {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::AllowPorts {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::GuardConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::GuardEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::OwnFlowKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::VirtualKey4 {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::VirtualKey6 {}
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tap bounds each copy with `(len - 1) & (class - 1)`: only right for powers of
    /// two, and the largest class must hold a whole chunk.
    #[test]
    fn payload_classes_are_ascending_powers_of_two_up_to_a_chunk() {
        assert_eq!(PAYLOAD_CLASSES[0], 0);
        assert_eq!(PAYLOAD_CLASSES[PAYLOAD_CLASSES.len() - 1], CHUNK_BYTES);
        for w in PAYLOAD_CLASSES[1..].windows(2) {
            assert!(w[0].is_power_of_two() && w[0] < w[1], "{w:?}");
        }
    }

    #[test]
    fn a_chunk_takes_the_smallest_class_that_holds_it() {
        assert_eq!(payload_class(0), 0);
        for len in 1..=CHUNK_BYTES {
            let class = payload_class(len);
            assert!(class >= len, "{len} in {class}");
            // The next smaller class is too small.
            let smaller = PAYLOAD_CLASSES.iter().rev().find(|&&c| c < class);
            assert!(smaller.is_none_or(|&c| c < len), "{len} in {class}");
        }
        assert_eq!(payload_class(128), 128);
        assert_eq!(payload_class(129), 256);
        assert_eq!(payload_class(4096), 4096);
    }
}
