#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    // Unreachable in a verified program: the verifier rejects any path that could get here.
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(target_arch = "bpf")]
mod program {
    //! The egress guard: cgroup socket-address hooks on the candidate's cgroup.
    //!
    //! Every outbound connect()/sendmsg() of a process in the cgroup is checked against an
    //! allowlist of prefixes and ports. Anything else is refused (EPERM) or, for TCP in
    //! redirect mode, rewritten to the daemon's sink listener. UDP queries to the
    //! allow-listed DNS server go to the daemon's relay (recvmsg rewrites the answers'
    //! source back). Raw and ICMP sockets are refused at creation. Inbound connections
    //! (the replayed requests the candidate accepts) never pass through these hooks.
    use aya_ebpf::{
        helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns},
        macros::{cgroup_sock, cgroup_sock_addr, map},
        maps::{Array, HashMap, LpmTrie, PerCpuArray, RingBuf, lpm_trie::Key},
        programs::{SockAddrContext, SockContext},
    };
    use mirror_common::{
        AllowPorts, GuardConfig, GuardEvent, VirtualKey4, VirtualKey6, guard_action, guard_counter,
        guard_mode,
    };

    const ALLOW: i32 = 1;
    const DENY: i32 = 0;
    const IPPROTO_TCP: u8 = 6;
    const IPPROTO_UDP: u8 = 17;
    const IPPROTO_ICMP: u32 = 1;
    const IPPROTO_ICMPV6: u32 = 58;
    const SOCK_STREAM: u32 = 1;
    const SOCK_RAW: u32 = 3;
    const AF_INET6: u32 = 10;

    #[map(name = "GUARD_ALLOW4")]
    static GUARD_ALLOW4: LpmTrie<[u8; 4], AllowPorts> = LpmTrie::with_max_entries(1024, 1);

    #[map(name = "GUARD_ALLOW6")]
    static GUARD_ALLOW6: LpmTrie<[u8; 16], AllowPorts> = LpmTrie::with_max_entries(1024, 1);

    #[map(name = "GUARD_SETTINGS")]
    static GUARD_SETTINGS: Array<GuardConfig> = Array::with_max_entries(1, 0);

    /// Dependency endpoints answered by the daemon's virtual dependency listeners
    /// (`--virtualize-egress`) → listener port on the candidate's 127.0.0.1.
    #[map(name = "GUARD_VIRTUAL4")]
    static GUARD_VIRTUAL4: HashMap<VirtualKey4, u16> = HashMap::with_max_entries(64, 0);

    /// The same for IPv6 dependency endpoints → listener port on the candidate's [::1].
    #[map(name = "GUARD_VIRTUAL6")]
    static GUARD_VIRTUAL6: HashMap<VirtualKey6, u16> = HashMap::with_max_entries(64, 0);

    #[map(name = "GUARD_EVENTS")]
    static GUARD_EVENTS: RingBuf = RingBuf::with_byte_size(1024 * 1024, 0);

    #[map(name = "GUARD_COUNTERS")]
    static GUARD_COUNTERS: PerCpuArray<u64> =
        PerCpuArray::with_max_entries(guard_counter::COUNT, 0);

    #[cgroup_sock_addr(connect4)]
    pub fn guard_connect4(ctx: SockAddrContext) -> i32 {
        check4(&ctx, true)
    }

    #[cgroup_sock_addr(sendmsg4)]
    pub fn guard_sendmsg4(ctx: SockAddrContext) -> i32 {
        check4(&ctx, false)
    }

    #[cgroup_sock_addr(connect6)]
    pub fn guard_connect6(ctx: SockAddrContext) -> i32 {
        check6(&ctx, true)
    }

    /// Answers of the DNS relay appear to come from the DNS server the candidate asked.
    #[cgroup_sock_addr(recvmsg4)]
    pub fn guard_recvmsg4(ctx: SockAddrContext) -> i32 {
        let sa = ctx.sock_addr;
        let Some(cfg) = GUARD_SETTINGS.get(0) else {
            return ALLOW;
        };
        if cfg.dns_family != 4 || cfg.relay_port4 == 0 {
            return ALLOW;
        }
        // SAFETY: readable and writable fields of the recvmsg4 context.
        unsafe {
            if (*sa).user_ip4 == u32::from_ne_bytes(LOOPBACK4)
                && u16::from_be((*sa).user_port as u16) == cfg.relay_port4
            {
                let d = cfg.dns_addr;
                (*sa).user_ip4 = u32::from_ne_bytes([d[0], d[1], d[2], d[3]]);
                (*sa).user_port = u32::from(cfg.dns_port.to_be());
            }
        }
        ALLOW
    }

    /// As recvmsg4, for IPv6 sockets (a v4-mapped relay address or ::1).
    #[cgroup_sock_addr(recvmsg6)]
    pub fn guard_recvmsg6(ctx: SockAddrContext) -> i32 {
        let sa = ctx.sock_addr;
        let Some(cfg) = GUARD_SETTINGS.get(0) else {
            return ALLOW;
        };
        if cfg.dns_family == 0 {
            return ALLOW;
        }
        // SAFETY: readable and writable fields of the recvmsg6 context, as u32 words.
        unsafe {
            let w = [
                (*sa).user_ip6[0],
                (*sa).user_ip6[1],
                (*sa).user_ip6[2],
                (*sa).user_ip6[3],
            ];
            let port = u16::from_be((*sa).user_port as u16);
            let d = cfg.dns_addr;
            let mapped_relay = w[0] == 0
                && w[1] == 0
                && w[2] == 0x0000_ffff_u32.to_be()
                && w[3] == u32::from_ne_bytes(LOOPBACK4);
            if cfg.dns_family == 4 && mapped_relay && port == cfg.relay_port4 {
                (*sa).user_ip6[3] = u32::from_ne_bytes([d[0], d[1], d[2], d[3]]);
                (*sa).user_port = u32::from(cfg.dns_port.to_be());
            } else if cfg.dns_family == 6
                && w[0] == 0
                && w[1] == 0
                && w[2] == 0
                && w[3] == 1u32.to_be()
                && port == cfg.relay_port6
            {
                (*sa).user_ip6[0] = u32::from_ne_bytes([d[0], d[1], d[2], d[3]]);
                (*sa).user_ip6[1] = u32::from_ne_bytes([d[4], d[5], d[6], d[7]]);
                (*sa).user_ip6[2] = u32::from_ne_bytes([d[8], d[9], d[10], d[11]]);
                (*sa).user_ip6[3] = u32::from_ne_bytes([d[12], d[13], d[14], d[15]]);
                (*sa).user_port = u32::from(cfg.dns_port.to_be());
            }
        }
        ALLOW
    }

    const LOOPBACK4: [u8; 4] = [127, 0, 0, 1];

    /// Whether a UDP datagram to `addr:port` is a query to the allow-listed DNS server.
    #[inline(always)]
    fn is_dns(cfg: &GuardConfig, family: u8, addr: &[u8; 16], port: u16) -> bool {
        if cfg.dns_family != family || cfg.dns_port != port {
            return false;
        }
        let n = if family == 4 { 4 } else { 16 };
        let mut i = 0;
        while i < 16 {
            if i < n && cfg.dns_addr[i] != addr[i] {
                return false;
            }
            i += 1;
        }
        true
    }

    #[cgroup_sock_addr(sendmsg6)]
    pub fn guard_sendmsg6(ctx: SockAddrContext) -> i32 {
        check6(&ctx, false)
    }

    /// Socket creation: raw sockets and ICMP (ping) sockets are refused. Their packets
    /// would pass no connect/sendmsg hook (a ping socket's `sendto` has none), so they
    /// are stopped before they exist. Packet sockets (AF_PACKET) never reach this hook;
    /// they need CAP_NET_RAW, which the candidate does not have, and its seccomp filter
    /// refuses them too.
    #[cgroup_sock(sock_create)]
    pub fn guard_sock_create(ctx: SockContext) -> i32 {
        // SAFETY: the context pointer is valid for the program's run; family, type and
        // protocol are readable in this hook.
        let (family, ty, proto) =
            unsafe { ((*ctx.sock).family, (*ctx.sock).type_, (*ctx.sock).protocol) };
        if ty != SOCK_RAW && proto != IPPROTO_ICMP && proto != IPPROTO_ICMPV6 {
            return ALLOW;
        }
        let ip_version = if family == AF_INET6 { 6 } else { 4 };
        report_socket(
            [0; 16],
            ip_version,
            0,
            proto as u8,
            ty as u8,
            guard_action::REFUSED,
        );
        DENY
    }

    #[inline(always)]
    fn bump(index: u32) {
        if let Some(slot) = GUARD_COUNTERS.get_ptr_mut(index) {
            // SAFETY: per-CPU slot, written only by this CPU while the program runs.
            unsafe { *slot += 1 };
        }
    }

    #[inline(always)]
    fn protocol(ctx: &SockAddrContext) -> u8 {
        // SAFETY: the context pointer is valid for the program's run.
        let ty = unsafe { (*ctx.sock_addr).type_ };
        if ty == SOCK_STREAM {
            IPPROTO_TCP
        } else {
            IPPROTO_UDP
        }
    }

    #[inline(always)]
    fn report(addr: [u8; 16], ip_version: u8, port: u16, protocol: u8, action: u8) {
        let sock_type = if protocol == IPPROTO_TCP { 1 } else { 2 };
        report_socket(addr, ip_version, port, protocol, sock_type, action);
    }

    #[inline(always)]
    fn report_socket(
        addr: [u8; 16],
        ip_version: u8,
        port: u16,
        protocol: u8,
        sock_type: u8,
        action: u8,
    ) {
        let counter = match action {
            guard_action::ALLOWED => guard_counter::ALLOWED,
            guard_action::REDIRECTED | guard_action::VIRTUALIZED => guard_counter::REDIRECTED,
            _ => guard_counter::REFUSED,
        };
        bump(counter);
        let Some(mut entry) = GUARD_EVENTS.reserve::<GuardEvent>(0) else {
            bump(guard_counter::EVENTS_LOST);
            return;
        };
        let comm = bpf_get_current_comm().unwrap_or([0; 16]);
        entry.write(GuardEvent {
            // SAFETY: helper without preconditions.
            ts_ns: unsafe { bpf_ktime_get_ns() },
            pid: (bpf_get_current_pid_tgid() >> 32) as u32,
            port,
            ip_version,
            protocol,
            addr,
            comm,
            action,
            sock_type,
            _pad: [0; 6],
        });
        entry.submit(0);
    }

    /// The virtual dependency listener's port for a dependency endpoint, if virtualized.
    #[inline(always)]
    fn virtual4(ip: [u8; 4], port: u16) -> Option<u16> {
        let key = VirtualKey4 {
            addr: ip,
            port,
            _pad: [0; 2],
        };
        // SAFETY: a plain value read from a map the daemon fills before attaching.
        unsafe { GUARD_VIRTUAL4.get(&key) }.copied()
    }

    /// The same for an IPv6 (not IPv4-mapped) dependency endpoint.
    #[inline(always)]
    fn virtual6(addr: [u8; 16], port: u16) -> Option<u16> {
        let key = VirtualKey6 {
            addr,
            port,
            _pad: [0; 2],
        };
        // SAFETY: a plain value read from a map the daemon fills before attaching.
        unsafe { GUARD_VIRTUAL6.get(&key) }.copied()
    }

    #[inline(always)]
    fn allowed4(ip: [u8; 4], port: u16) -> bool {
        GUARD_ALLOW4
            .get(Key::new(32, ip))
            .is_some_and(|rule| rule.permits(port))
    }

    #[inline(always)]
    fn check4(ctx: &SockAddrContext, connect: bool) -> i32 {
        let sa = ctx.sock_addr;
        // SAFETY: the context pointer is valid for the program's run; fields are read
        // with the access sizes the verifier allows (u32).
        let (ip_raw, port_raw) = unsafe { ((*sa).user_ip4, (*sa).user_port) };
        let ip = ip_raw.to_ne_bytes();
        let port = u16::from_be(port_raw as u16);
        let proto = protocol(ctx);
        let mut addr = [0u8; 16];
        addr[0] = ip[0];
        addr[1] = ip[1];
        addr[2] = ip[2];
        addr[3] = ip[3];
        if proto == IPPROTO_UDP
            && let Some(cfg) = GUARD_SETTINGS.get(0)
            && cfg.relay_port4 != 0
            && is_dns(cfg, 4, &addr, port)
        {
            // SAFETY: writable fields of the connect4/sendmsg4 context.
            unsafe {
                (*sa).user_ip4 = u32::from_ne_bytes(LOOPBACK4);
                (*sa).user_port = u32::from(cfg.relay_port4.to_be());
            }
            report(addr, 4, port, proto, guard_action::ALLOWED);
            return ALLOW;
        }
        if connect
            && proto == IPPROTO_TCP
            && let Some(lport) = virtual4(ip, port)
        {
            // SAFETY: writable fields of the connect4 context.
            unsafe {
                (*sa).user_ip4 = u32::from_ne_bytes(LOOPBACK4);
                (*sa).user_port = u32::from(lport.to_be());
            }
            report(addr, 4, port, proto, guard_action::VIRTUALIZED);
            return ALLOW;
        }
        if allowed4(ip, port) {
            report(addr, 4, port, proto, guard_action::ALLOWED);
            return ALLOW;
        }
        if connect && proto == IPPROTO_TCP {
            if let Some(cfg) = GUARD_SETTINGS.get(0)
                && cfg.mode == guard_mode::REDIRECT
                && cfg.sink_port != 0
            {
                // SAFETY: writable fields of the connect4 context.
                unsafe {
                    (*sa).user_ip4 = u32::from_ne_bytes(cfg.sink_ip4);
                    (*sa).user_port = u32::from(cfg.sink_port.to_be());
                }
                report(addr, 4, port, proto, guard_action::REDIRECTED);
                return ALLOW;
            }
        }
        report(addr, 4, port, proto, guard_action::REFUSED);
        DENY
    }

    #[inline(always)]
    fn check6(ctx: &SockAddrContext, connect: bool) -> i32 {
        let sa = ctx.sock_addr;
        // SAFETY: as in check4; user_ip6 is read as four u32 words.
        let (w0, w1, w2, w3, port_raw) = unsafe {
            (
                (*sa).user_ip6[0],
                (*sa).user_ip6[1],
                (*sa).user_ip6[2],
                (*sa).user_ip6[3],
                (*sa).user_port,
            )
        };
        let port = u16::from_be(port_raw as u16);
        let proto = protocol(ctx);
        let mut addr = [0u8; 16];
        let words = [
            w0.to_ne_bytes(),
            w1.to_ne_bytes(),
            w2.to_ne_bytes(),
            w3.to_ne_bytes(),
        ];
        let mut i = 0;
        while i < 4 {
            addr[i * 4] = words[i][0];
            addr[i * 4 + 1] = words[i][1];
            addr[i * 4 + 2] = words[i][2];
            addr[i * 4 + 3] = words[i][3];
            i += 1;
        }
        // A dual-stack socket reaching an IPv4 host uses ::ffff:a.b.c.d: judge the IPv4.
        let mapped = w0 == 0 && w1 == 0 && words[2] == [0, 0, 0xff, 0xff];
        if proto == IPPROTO_UDP
            && let Some(cfg) = GUARD_SETTINGS.get(0)
        {
            let v4 = [
                words[3][0],
                words[3][1],
                words[3][2],
                words[3][3],
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
            ];
            let target = if mapped && cfg.relay_port4 != 0 && is_dns(cfg, 4, &v4, port) {
                Some((
                    [0, 0, 0x0000_ffff_u32.to_be(), u32::from_ne_bytes(LOOPBACK4)],
                    cfg.relay_port4,
                ))
            } else if !mapped && cfg.relay_port6 != 0 && is_dns(cfg, 6, &addr, port) {
                Some(([0, 0, 0, 1u32.to_be()], cfg.relay_port6))
            } else {
                None
            };
            if let Some((ip6, relay)) = target {
                // SAFETY: writable fields of the connect6/sendmsg6 context, as u32 words.
                unsafe {
                    (*sa).user_ip6[0] = ip6[0];
                    (*sa).user_ip6[1] = ip6[1];
                    (*sa).user_ip6[2] = ip6[2];
                    (*sa).user_ip6[3] = ip6[3];
                    (*sa).user_port = u32::from(relay.to_be());
                }
                report(addr, 6, port, proto, guard_action::ALLOWED);
                return ALLOW;
            }
        }
        if connect
            && proto == IPPROTO_TCP
            && mapped
            && let Some(lport) = virtual4(words[3], port)
        {
            // SAFETY: writable fields of the connect6 context, as u32 words.
            unsafe {
                (*sa).user_ip6[0] = 0;
                (*sa).user_ip6[1] = 0;
                (*sa).user_ip6[2] = 0x0000_ffff_u32.to_be();
                (*sa).user_ip6[3] = u32::from_ne_bytes(LOOPBACK4);
                (*sa).user_port = u32::from(lport.to_be());
            }
            report(addr, 6, port, proto, guard_action::VIRTUALIZED);
            return ALLOW;
        }
        if connect
            && proto == IPPROTO_TCP
            && !mapped
            && let Some(lport) = virtual6(addr, port)
        {
            // SAFETY: writable fields of the connect6 context, as u32 words: [::1].
            unsafe {
                (*sa).user_ip6[0] = 0;
                (*sa).user_ip6[1] = 0;
                (*sa).user_ip6[2] = 0;
                (*sa).user_ip6[3] = 1u32.to_be();
                (*sa).user_port = u32::from(lport.to_be());
            }
            report(addr, 6, port, proto, guard_action::VIRTUALIZED);
            return ALLOW;
        }
        let ok = if mapped {
            allowed4(words[3], port)
        } else {
            GUARD_ALLOW6
                .get(Key::new(128, addr))
                .is_some_and(|rule| rule.permits(port))
        };
        if ok {
            report(addr, 6, port, proto, guard_action::ALLOWED);
            return ALLOW;
        }
        if connect && proto == IPPROTO_TCP {
            if let Some(cfg) = GUARD_SETTINGS.get(0)
                && cfg.mode == guard_mode::REDIRECT
                && cfg.sink_port != 0
            {
                let target = if mapped {
                    [
                        0,
                        0,
                        0x0000_ffff_u32.to_be(),
                        u32::from_ne_bytes(cfg.sink_ip4),
                    ]
                } else {
                    let s = cfg.sink_ip6;
                    [
                        u32::from_ne_bytes([s[0], s[1], s[2], s[3]]),
                        u32::from_ne_bytes([s[4], s[5], s[6], s[7]]),
                        u32::from_ne_bytes([s[8], s[9], s[10], s[11]]),
                        u32::from_ne_bytes([s[12], s[13], s[14], s[15]]),
                    ]
                };
                // SAFETY: writable fields of the connect6 context, written as u32 words.
                unsafe {
                    (*sa).user_ip6[0] = target[0];
                    (*sa).user_ip6[1] = target[1];
                    (*sa).user_ip6[2] = target[2];
                    (*sa).user_ip6[3] = target[3];
                    (*sa).user_port = u32::from(cfg.sink_port.to_be());
                }
                report(addr, 6, port, proto, guard_action::REDIRECTED);
                return ALLOW;
            }
        }
        report(addr, 6, port, proto, guard_action::REFUSED);
        DENY
    }
}
