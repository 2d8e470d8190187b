//! Loads the guard programs, fills the allowlist, attaches to the candidate's cgroup and
//! turns the kernel's reports into [`EgressAttempt`]s.
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::AsFd as _,
};

use aya::{
    Ebpf,
    maps::{Array, LpmTrie, MapData, PerCpuArray, RingBuf, lpm_trie::Key},
    programs::{CgroupAttachMode, CgroupSock, CgroupSockAddr},
};
use mirror_common::{
    AllowPorts, GuardConfig, GuardEvent, UnixGuardEvent, VirtualKey4, VirtualKey6, guard_action,
    guard_counter, guard_mode, map_name, program_name,
};

use super::{EgressAction, EgressAttempt, cgroup::Cgroup, rules::AllowRule};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/mirror-guard"));

#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error("this binary was built without its eBPF programs; rebuild with `cargo xtask build`")]
    NoObject,
    #[error("loading the egress guard: {0} (run `mirror-daemon check`)")]
    Load(String),
    #[error("attaching the egress guard to {cgroup}: {detail}")]
    Attach { cgroup: String, detail: String },
    #[error("too many --allow-egress ports for {0} (at most 8 per prefix)")]
    TooManyPorts(String),
    #[error(
        "egress guard self-test failed: {0}; refusing to replay (pass --no-egress-guard to run without the guard, at your own risk)"
    )]
    SelfTest(String),
}

/// Guard settings from the CLI.
#[derive(Clone, Debug, Default)]
pub struct GuardSettings {
    pub allow: Vec<AllowRule>,
    /// Redirect refused TCP connects to this sink listener instead of refusing them.
    pub sink: Option<SocketAddr>,
    /// The allow-listed DNS server and the port of the relay its UDP queries go to.
    pub dns: Option<(SocketAddr, u16)>,
    /// Unix sockets the candidate may connect to (`--allow-unix`); empty: the Unix hooks
    /// are not attached (the candidate cannot create Unix sockets at all).
    pub allow_unix: Vec<std::path::PathBuf>,
    /// Dependency endpoints whose TCP connects go to a virtual dependency listener on the
    /// candidate's loopback of the same family (127.0.0.1 or [::1]), with that listener's
    /// port (`--virtualize-egress`).
    pub virtual_deps: Vec<(SocketAddr, u16)>,
}

/// Kernel counters of the guard, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct GuardCounters {
    pub allowed: u64,
    pub refused: u64,
    pub redirected: u64,
    pub events_lost: u64,
}

/// The loaded, attached guard. Detaches when dropped.
pub struct EgressGuard {
    /// The Unix-socket hooks, or why they could not be attached.
    unix: Result<Option<super::unix::UnixFence>, String>,
    _ebpf: Ebpf,
    counters: PerCpuArray<MapData, u64>,
    events: Option<RingBuf<MapData>>,
    epoch_offset_ns: i128,
}

impl std::fmt::Debug for EgressGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EgressGuard").finish_non_exhaustive()
    }
}

fn load_err(e: impl std::fmt::Display) -> GuardError {
    GuardError::Load(e.to_string())
}

/// An error and its causes on one line (aya's messages keep the errno in the source).
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

impl EgressGuard {
    /// Loads and attaches the four hooks to `cgroup`.
    pub fn attach(
        cgroup: &Cgroup,
        settings: &GuardSettings,
        epoch_offset_ns: i128,
    ) -> Result<Self, GuardError> {
        if OBJECT.is_empty() {
            return Err(GuardError::NoObject);
        }
        let mut ebpf = Ebpf::load(OBJECT).map_err(load_err)?;
        {
            let mut v4: LpmTrie<_, [u8; 4], AllowPorts> = LpmTrie::try_from(
                ebpf.map_mut(map_name::GUARD_ALLOW4)
                    .ok_or_else(|| load_err("no GUARD_ALLOW4"))?,
            )
            .map_err(load_err)?;
            for (addr, prefix, ports) in merged(&settings.allow, true)? {
                let mut b = [0u8; 4];
                b.copy_from_slice(&addr[..4]);
                v4.insert(&Key::new(u32::from(prefix), b), ports, 0)
                    .map_err(load_err)?;
            }
        }
        {
            let mut v6: LpmTrie<_, [u8; 16], AllowPorts> = LpmTrie::try_from(
                ebpf.map_mut(map_name::GUARD_ALLOW6)
                    .ok_or_else(|| load_err("no GUARD_ALLOW6"))?,
            )
            .map_err(load_err)?;
            for (addr, prefix, ports) in merged(&settings.allow, false)? {
                v6.insert(&Key::new(u32::from(prefix), addr), ports, 0)
                    .map_err(load_err)?;
            }
        }
        {
            let mut cfg = GuardConfig {
                mode: guard_mode::REFUSE,
                ..Default::default()
            };
            if let Some(sink) = settings.sink {
                cfg.mode = guard_mode::REDIRECT;
                cfg.sink_port = sink.port();
                match sink.ip() {
                    IpAddr::V4(v4) => {
                        cfg.sink_ip4 = v4.octets();
                        cfg.sink_ip6 = v4.to_ipv6_mapped().octets();
                    }
                    IpAddr::V6(v6) => {
                        cfg.sink_ip6 = v6.octets();
                        cfg.sink_ip4 = v6
                            .to_ipv4_mapped()
                            .map(|a| a.octets())
                            .unwrap_or([127, 0, 0, 1]);
                    }
                }
            }
            if let Some((server, relay)) = settings.dns {
                cfg.dns_port = server.port();
                cfg.dns_addr = crate::capture::ip_to_bytes(server.ip());
                if server.is_ipv4() {
                    cfg.dns_family = 4;
                    cfg.relay_port4 = relay;
                } else {
                    cfg.dns_family = 6;
                    cfg.relay_port6 = relay;
                }
            }
            let mut arr: Array<_, GuardConfig> = Array::try_from(
                ebpf.map_mut(map_name::GUARD_SETTINGS)
                    .ok_or_else(|| load_err("no GUARD_SETTINGS"))?,
            )
            .map_err(load_err)?;
            arr.set(0, cfg, 0).map_err(load_err)?;
        }
        let v4: Vec<_> = settings
            .virtual_deps
            .iter()
            .filter_map(|(d, p)| match d {
                SocketAddr::V4(a) => Some((*a, *p)),
                SocketAddr::V6(_) => None,
            })
            .collect();
        if !v4.is_empty() {
            let mut map: aya::maps::HashMap<_, VirtualKey4, u16> = aya::maps::HashMap::try_from(
                ebpf.map_mut(map_name::GUARD_VIRTUAL4)
                    .ok_or_else(|| load_err("no GUARD_VIRTUAL4"))?,
            )
            .map_err(load_err)?;
            for (dep, listener_port) in &v4 {
                let key = VirtualKey4 {
                    addr: dep.ip().octets(),
                    port: dep.port(),
                    _pad: [0; 2],
                };
                map.insert(key, listener_port, 0).map_err(load_err)?;
            }
        }
        let v6: Vec<_> = settings
            .virtual_deps
            .iter()
            .filter_map(|(d, p)| match d {
                SocketAddr::V6(a) => Some((*a, *p)),
                SocketAddr::V4(_) => None,
            })
            .collect();
        if !v6.is_empty() {
            let mut map: aya::maps::HashMap<_, VirtualKey6, u16> = aya::maps::HashMap::try_from(
                ebpf.map_mut(map_name::GUARD_VIRTUAL6)
                    .ok_or_else(|| load_err("no GUARD_VIRTUAL6"))?,
            )
            .map_err(load_err)?;
            for (dep, listener_port) in &v6 {
                let key = VirtualKey6 {
                    addr: dep.ip().octets(),
                    port: dep.port(),
                    _pad: [0; 2],
                };
                map.insert(key, listener_port, 0).map_err(load_err)?;
            }
        }
        let counters: PerCpuArray<MapData, u64> = PerCpuArray::try_from(
            ebpf.take_map(map_name::GUARD_COUNTERS)
                .ok_or_else(|| load_err("no GUARD_COUNTERS"))?,
        )
        .map_err(load_err)?;
        let events: RingBuf<MapData> = RingBuf::try_from(
            ebpf.take_map(map_name::GUARD_EVENTS)
                .ok_or_else(|| load_err("no GUARD_EVENTS"))?,
        )
        .map_err(load_err)?;
        let attach_err = |e: aya::programs::ProgramError| GuardError::Attach {
            cgroup: cgroup.path.display().to_string(),
            detail: chain(&e),
        };
        for name in [
            program_name::GUARD_CONNECT4,
            program_name::GUARD_CONNECT6,
            program_name::GUARD_SENDMSG4,
            program_name::GUARD_SENDMSG6,
            program_name::GUARD_RECVMSG4,
            program_name::GUARD_RECVMSG6,
        ] {
            let prog: &mut CgroupSockAddr = ebpf
                .program_mut(name)
                .ok_or_else(|| load_err(format!("program {name} missing")))?
                .try_into()
                .map_err(load_err)?;
            prog.load().map_err(load_err)?;
            // Links (kernel ≥ 5.7) always coexist with other programs on the cgroup; their
            // flags must be 0 (ALLOW_MULTI is refused with EINVAL).
            prog.attach(cgroup.dir.as_fd(), CgroupAttachMode::Single)
                .map_err(attach_err)?;
        }
        let prog: &mut CgroupSock = ebpf
            .program_mut(program_name::GUARD_SOCK_CREATE)
            .ok_or_else(|| load_err("program guard_sock_create missing"))?
            .try_into()
            .map_err(load_err)?;
        prog.load().map_err(load_err)?;
        prog.attach(cgroup.dir.as_fd(), CgroupAttachMode::Single)
            .map_err(attach_err)?;
        let unix = if settings.allow_unix.is_empty() {
            Ok(None)
        } else {
            use std::os::fd::AsRawFd as _;
            super::unix::attach(
                cgroup.dir.as_raw_fd(),
                &settings.allow_unix,
                events.as_fd().as_raw_fd(),
            )
            .map(Some)
        };
        Ok(Self {
            unix,
            _ebpf: ebpf,
            counters,
            events: Some(events),
            epoch_offset_ns,
        })
    }

    /// What holds for the candidate's Unix sockets, for the log and the self-test line.
    pub fn unix_note(&self) -> String {
        match &self.unix {
            Ok(None) => "Unix sockets: none can be created (seccomp)".into(),
            Ok(Some(_)) => "Unix sockets: only the --allow-unix paths (cgroup Unix-socket hooks); every attempt reported".into(),
            Err(why) => format!(
                "Unix sockets: allowed for --allow-unix, and NOT fenced by path ({why}); the candidate may connect to any Unix socket its user may open"
            ),
        }
    }

    /// Whether Unix sockets are allowed but not fenced by path.
    pub fn unix_unfenced(&self) -> bool {
        self.unix.is_err()
    }

    pub fn counters(&self) -> GuardCounters {
        let sum = |i: u32| -> u64 {
            self.counters
                .get(&i, 0)
                .map(|v| v.iter().sum())
                .unwrap_or(0)
        };
        GuardCounters {
            allowed: sum(guard_counter::ALLOWED),
            refused: sum(guard_counter::REFUSED),
            redirected: sum(guard_counter::REDIRECTED),
            events_lost: sum(guard_counter::EVENTS_LOST),
        }
    }

    /// The event reader (taken once).
    pub fn take_events(&mut self) -> Option<GuardEvents> {
        self.events.take().map(|ring| GuardEvents {
            ring,
            epoch_offset_ns: self.epoch_offset_ns,
        })
    }
}

/// The kernel's allowlist entries for one family: one per distinct prefix (host bits
/// cleared), each carrying the ports of every rule that contains it. The kernel looks up
/// only the longest matching prefix, so without that a narrow rule (`10.0.5.7:5432`)
/// would hide a broader one (`10.0.0.0/8`, any port) for the addresses it covers.
fn merged(rules: &[AllowRule], v4: bool) -> Result<Vec<([u8; 16], u8, AllowPorts)>, GuardError> {
    let family: Vec<&AllowRule> = rules.iter().filter(|r| r.addr.is_ipv4() == v4).collect();
    let mut out: Vec<([u8; 16], u8, AllowPorts)> = Vec::new();
    for r in &family {
        let network = network_of(r);
        if out.iter().any(|(a, p, _)| *a == network && *p == r.prefix) {
            continue;
        }
        let mut slot = AllowPorts::default();
        // Every rule whose prefix contains this one (itself included).
        for c in family.iter().filter(|c| {
            c.prefix <= r.prefix
                && AllowRule {
                    port: None,
                    ..(**c).clone()
                }
                .admits(r.addr, 0)
        }) {
            match c.port {
                None => slot.any_port = 1,
                Some(p) if slot.ports[..usize::from(slot.count)].contains(&p) => {}
                Some(p) => {
                    if usize::from(slot.count) >= slot.ports.len() {
                        return Err(GuardError::TooManyPorts(r.to_string()));
                    }
                    slot.ports[usize::from(slot.count)] = p;
                    slot.count += 1;
                }
            }
        }
        out.push((network, r.prefix, slot));
    }
    Ok(out)
}

/// The rule's address with the host bits cleared, in the kernel key's byte layout.
fn network_of(r: &AllowRule) -> [u8; 16] {
    let mut b = crate::capture::ip_to_bytes(r.addr);
    let bits = usize::from(r.prefix);
    for (i, byte) in b.iter_mut().enumerate() {
        let keep = bits.saturating_sub(i * 8).min(8);
        *byte &= if keep == 0 { 0 } else { 0xffu8 << (8 - keep) };
    }
    b
}

/// Reads guard reports from the kernel.
pub struct GuardEvents {
    ring: RingBuf<MapData>,
    epoch_offset_ns: i128,
}

impl GuardEvents {
    /// Drains every queued report.
    pub fn drain(&mut self, out: &mut Vec<EgressAttempt>) {
        while let Some(item) = self.ring.next() {
            if item.len() < std::mem::size_of::<GuardEvent>() {
                continue;
            }
            // SAFETY: GuardEvent is plain data and the record is at least its size.
            let ev: GuardEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
            let mut attempt = decode(&ev, self.epoch_offset_ns);
            if ev.ip_version == 0 && item.len() >= std::mem::size_of::<UnixGuardEvent>() {
                // SAFETY: as above, for the larger Unix-socket record.
                let u: UnixGuardEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
                attempt.protocol = "unix".into();
                attempt.first_bytes = Some(super::unix::path_of(&u.path, u.addr_len));
            }
            out.push(attempt);
        }
    }

    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.ring.as_fd()
    }
}

fn decode(ev: &GuardEvent, epoch_offset_ns: i128) -> EgressAttempt {
    let ip = if ev.ip_version == 4 {
        IpAddr::V4(Ipv4Addr::new(
            ev.addr[0], ev.addr[1], ev.addr[2], ev.addr[3],
        ))
    } else {
        let v6 = Ipv6Addr::from(ev.addr);
        v6.to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6))
    };
    let comm_len = ev
        .comm
        .iter()
        .position(|b| *b == 0)
        .unwrap_or(ev.comm.len());
    EgressAttempt {
        ts_unix_ms: ((i128::from(ev.ts_ns) + epoch_offset_ns) / 1_000_000) as i64,
        pid: ev.pid,
        command: process_name(ev.pid)
            .unwrap_or_else(|| String::from_utf8_lossy(&ev.comm[..comm_len]).into_owned()),
        protocol: protocol_name(ev.protocol, ev.sock_type).into(),
        destination: SocketAddr::new(ip, ev.port),
        action: match ev.action {
            guard_action::ALLOWED => EgressAction::Allowed,
            guard_action::REDIRECTED => EgressAction::Redirected,
            guard_action::VIRTUALIZED => EgressAction::Virtualized,
            _ => EgressAction::Refused,
        },
        first_bytes: None,
    }
}

/// "tcp", "udp", "icmp", "icmpv6", or "raw" for any raw socket.
fn protocol_name(protocol: u8, sock_type: u8) -> &'static str {
    match (sock_type, protocol) {
        (3, _) => "raw",
        (_, 6) => "tcp",
        (_, 1) => "icmp",
        (_, 58) => "icmpv6",
        _ => "udp",
    }
}

/// The process's own name (the kernel's `comm` is the calling thread's, e.g. a runtime
/// worker thread); `None` once the process is gone.
fn process_name(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(s: &[&str]) -> Vec<AllowRule> {
        s.iter().map(|r| AllowRule::parse(r).unwrap()).collect()
    }

    #[test]
    fn a_narrow_rule_keeps_the_ports_of_a_broader_one() {
        let m = merged(
            &rules(&["10.0.5.7:5432", "10.0.0.0/8", "10.0.5.0/24:443"]),
            true,
        )
        .unwrap();
        let find = |prefix: u8| m.iter().find(|(_, p, _)| *p == prefix).unwrap().2;
        // 10.0.5.7 is inside 10.0.0.0/8 (any port): every port stays allowed there.
        assert!(find(32).permits(5432) && find(32).permits(9999));
        assert!(find(24).permits(443) && find(24).permits(80));
        assert_eq!(find(8).any_port, 1);
        let m = merged(&rules(&["10.0.5.7:5432", "10.0.5.0/24:443"]), true).unwrap();
        let find = |prefix: u8| m.iter().find(|(_, p, _)| *p == prefix).unwrap().2;
        assert!(find(32).permits(5432) && find(32).permits(443) && !find(32).permits(80));
        assert!(find(24).permits(443) && !find(24).permits(5432));
    }

    #[test]
    fn host_bits_are_cleared_and_families_kept_apart() {
        let m = merged(
            &rules(&["10.1.2.3/24:80", "10.1.2.0/24:81", "fd00::1/64"]),
            true,
        )
        .unwrap();
        assert_eq!(m.len(), 1, "one /24 entry: {m:?}");
        assert_eq!(&m[0].0[..4], &[10, 1, 2, 0]);
        assert!(m[0].2.permits(80) && m[0].2.permits(81));
        let m6 = merged(&rules(&["fd00::1/64", "10.0.0.0/8"]), false).unwrap();
        assert_eq!(m6.len(), 1);
        assert_eq!(m6[0].0[15], 0);
        assert_eq!(m6[0].2.any_port, 1);
    }
}
