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
    //! The tap: a TC classifier that observes TCP segments of the tapped ports.
    //!
    //! Promise: it never changes what happens to a packet. Every path returns
    //! `TC_ACT_UNSPEC`, which in both cls_bpf direct-action and TCX means "carry on as if
    //! this program were not here" (other filters still decide).
    use aya_ebpf::{
        bindings::TC_ACT_UNSPEC,
        helpers::{
            bpf_ktime_get_ns,
            generated::{bpf_get_socket_cookie, bpf_skb_load_bytes},
        },
        macros::{classifier, map},
        maps::{Array, LruHashMap, PerCpuArray, RingBuf},
        programs::TcContext,
    };
    use mirror_common::{
        CHUNK_BYTES, HEADER_BYTES, MAX_CHUNKS_PER_PACKET, OwnFlowKey, PAYLOAD_CLASSES, PORT_SLOTS,
        PPM_ALL, SegmentHeader, client_hash, counter, direction, sample_keep, setting, tcp_flag,
    };

    /// Default 64 MiB; the daemon resizes it at load time (`--ring-mib`).
    #[map(name = "SEGMENTS")]
    static SEGMENTS: RingBuf = RingBuf::with_byte_size(64 * 1024 * 1024, 0);

    /// Tapped server ports: index = port (host byte order), 1 = tapped. An array, not a
    /// hash map: the JIT inlines an array lookup into a bounds check and a load, where a
    /// hash lookup is a helper call hashing the key (two per server-to-client packet).
    #[map(name = "PORTS")]
    static PORTS: Array<u8> = Array::with_max_entries(PORT_SLOTS, 0);

    /// Entry 0 is set to 1 by the daemon before its first replay connection (`capture::own`).
    /// Until then no segment can be the daemon's own, and the socket-cookie and flow
    /// lookups of [`own_replay`] are skipped (`run --sample 0` never replays).
    #[map(name = "OWN_GATE")]
    static OWN_GATE: Array<u32> = Array::with_max_entries(1, 0);

    /// Socket cookies of the daemon's own replay connections (filled by the daemon before
    /// it connects). Cookies are never reused, so old entries are harmless: LRU evicts them.
    #[map(name = "OWN_SOCKETS")]
    static OWN_SOCKETS: LruHashMap<u64, u8> = LruHashMap::with_max_entries(16384, 0);

    /// Replay connections seen leaving (their answers come back without a socket).
    #[map(name = "OWN_FLOWS")]
    static OWN_FLOWS: LruHashMap<OwnFlowKey, u8> = LruHashMap::with_max_entries(16384, 0);

    #[map(name = "COUNTERS")]
    static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

    #[map(name = "SETTINGS")]
    static SETTINGS: Array<u32> = Array::with_max_entries(setting::COUNT, 0);

    // The class chain in `try_tap` names each of the seven classes; the largest holds a
    // whole chunk.
    const _: () = assert!(
        PAYLOAD_CLASSES.len() == 7 && PAYLOAD_CLASSES[6] == CHUNK_BYTES && PAYLOAD_CLASSES[0] == 0
    );

    const ETH_P_IP: u16 = 0x0800;
    const ETH_P_IPV6: u16 = 0x86DD;
    const ETH_P_8021Q: u16 = 0x8100;
    const ETH_P_8021AD: u16 = 0x88A8;
    const IPPROTO_TCP: u8 = 6;

    #[classifier]
    pub fn mirror_tap(ctx: TcContext) -> i32 {
        let _ = try_tap(&ctx);
        TC_ACT_UNSPEC
    }

    #[inline(always)]
    fn bump(index: u32, by: u64) {
        if let Some(slot) = COUNTERS.get_ptr_mut(index) {
            // SAFETY: per-CPU slot, only this CPU writes it while this program runs.
            unsafe { *slot += by };
        }
    }

    struct Packet {
        saddr: [u8; 16],
        daddr: [u8; 16],
        ip_version: u8,
        l4: usize,
        ip_end: usize,
    }

    #[inline(always)]
    fn parse_ip(ctx: &TcContext) -> Result<Packet, i64> {
        // The EtherType straight from the linear data (always there: the stack pulls the
        // Ethernet header in before TC runs), saving a helper call on every packet.
        let (start, end) = (ctx.data(), ctx.data_end());
        if start + 14 > end {
            return Err(0);
        }
        // SAFETY: bytes 12..14 lie within the linear data (checked above).
        let mut proto =
            u16::from_be(unsafe { core::ptr::read_unaligned((start + 12) as *const u16) });
        let mut off = 14usize;
        // 802.1Q / 802.1ad: skip up to two tags (QinQ). Tags the driver offloaded into
        // skb->vlan_tci are already gone from the data and need nothing.
        if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
            proto = u16::from_be(ctx.load::<u16>(off + 2)?);
            off += 4;
            if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
                proto = u16::from_be(ctx.load::<u16>(off + 2)?);
                off += 4;
            }
        }
        let skb_len = ctx.len() as usize;
        let mut saddr = [0u8; 16];
        let mut daddr = [0u8; 16];
        if proto == ETH_P_IP {
            // The fixed 20-byte header in one helper call (each `ctx.load` is a
            // `bpf_skb_load_bytes`); the fields are then plain stack reads.
            let ip: [u8; 20] = ctx.load(off)?;
            let vihl = ip[0];
            let ihl = ((vihl & 0x0f) as usize) * 4;
            if vihl >> 4 != 4 || ihl < 20 {
                return Err(0);
            }
            let total = u16::from_be_bytes([ip[2], ip[3]]) as usize;
            let frag = u16::from_be_bytes([ip[6], ip[7]]);
            if frag & 0x1fff != 0 || ip[9] != IPPROTO_TCP {
                return Err(0);
            }
            saddr[..4].copy_from_slice(&ip[12..16]);
            daddr[..4].copy_from_slice(&ip[16..20]);
            // total == 0 is BIG TCP / TSO: the skb length is the only truth.
            let ip_end = if total == 0 { skb_len } else { off + total };
            Ok(Packet {
                saddr,
                daddr,
                ip_version: 4,
                l4: off + ihl,
                ip_end,
            })
        } else if proto == ETH_P_IPV6 {
            let ip: [u8; 40] = ctx.load(off)?;
            // Extension headers before TCP are rare for HTTP; such packets are not tapped.
            if ip[6] != IPPROTO_TCP {
                return Err(0);
            }
            let payload = u16::from_be_bytes([ip[4], ip[5]]) as usize;
            saddr.copy_from_slice(&ip[8..24]);
            daddr.copy_from_slice(&ip[24..40]);
            let ip_end = if payload == 0 {
                skb_len
            } else {
                off + 40 + payload
            };
            Ok(Packet {
                saddr,
                daddr,
                ip_version: 6,
                l4: off + 40,
                ip_end,
            })
        } else {
            Err(0)
        }
    }

    /// Whether the segment belongs to one of the daemon's own replay connections (no
    /// replay loop when a candidate or secondary is reached through the tapped interface
    /// on a tapped port). Outgoing: the sending socket's cookie is the daemon's (the flow
    /// is remembered); incoming: the flow was remembered.
    #[inline(always)]
    fn own_replay(ctx: &TcContext, pkt: &Packet, dir: u8, sport: u16, dport: u16) -> bool {
        if OWN_GATE.get(0).copied().unwrap_or(0) == 0 {
            return false;
        }
        if dir == direction::TO_SERVER {
            // SAFETY: the helper takes the skb; it returns 0 when there is no socket.
            let cookie = unsafe { bpf_get_socket_cookie(ctx.skb.skb as *mut _) };
            if cookie == 0 || OWN_SOCKETS.get_ptr(cookie).is_none() {
                return false;
            }
            let key = OwnFlowKey {
                server: pkt.daddr,
                server_port: dport,
                client_port: sport,
            };
            let _ = OWN_FLOWS.insert(key, 1, 0);
            true
        } else {
            let key = OwnFlowKey {
                server: pkt.saddr,
                server_port: sport,
                client_port: dport,
            };
            OWN_FLOWS.get_ptr(key).is_some()
        }
    }

    #[inline(always)]
    fn tapped(port: u16) -> bool {
        PORTS.get(u32::from(port)).copied().unwrap_or(0) != 0
    }

    /// What became of one record.
    enum Emitted {
        Record,
        /// No room in the ring: the record is lost (counted).
        RingFull,
        /// The payload could not be read from the packet: the record was discarded.
        LoadError,
    }

    /// Writes one record of payload class `N` (a power of two, or 0): the ring entry is
    /// reserved at `HEADER_BYTES + N` and the chunk's `len` (`<= N`) payload bytes are
    /// copied from the packet straight into it — one copy, no scratch buffer. Every
    /// reserved entry is submitted or discarded.
    #[inline(always)]
    fn emit<const N: usize>(
        ctx: &TcContext,
        h: &SegmentHeader,
        from: u32,
        len: usize,
        flags_out: u64,
    ) -> Emitted {
        let Some(mut entry) = SEGMENTS.reserve_bytes(HEADER_BYTES + N, 0) else {
            return Emitted::RingFull;
        };
        let base = entry.as_mut_ptr();
        // SAFETY: the entry is HEADER_BYTES + N bytes of ring memory, 8-byte aligned (the
        // ring aligns every record), and SegmentHeader is plain data of HEADER_BYTES.
        unsafe { core::ptr::write(base.cast::<SegmentHeader>(), *h) };
        if N > 0 {
            // Re-derive the length in a form the verifier can bound to 1..=N on its own: it
            // does not correlate the caller's checks with this register ("invalid
            // zero-sized read"), and black_box keeps LLVM from folding it away. For
            // 1 <= len <= N it is len itself.
            let n = ((core::hint::black_box(len) - 1) & N.wrapping_sub(1)) + 1;
            // SAFETY: the destination has N bytes after the header and n <= N.
            let r = unsafe {
                bpf_skb_load_bytes(
                    ctx.skb.skb as *const _,
                    from,
                    base.add(HEADER_BYTES) as *mut _,
                    n as u32,
                )
            };
            if r != 0 {
                entry.discard(flags_out);
                return Emitted::LoadError;
            }
        }
        entry.submit(flags_out);
        Emitted::Record
    }

    #[inline(always)]
    fn try_tap(ctx: &TcContext) -> Result<(), i64> {
        let pkt = parse_ip(ctx)?;
        let l4 = pkt.l4;
        // Ports, sequence and ACK numbers, data offset and flags: one helper call.
        let tcp: [u8; 14] = ctx.load(l4)?;
        let sport = u16::from_be_bytes([tcp[0], tcp[1]]);
        let dport = u16::from_be_bytes([tcp[2], tcp[3]]);
        let dir = if tapped(dport) {
            direction::TO_SERVER
        } else if tapped(sport) {
            direction::TO_CLIENT
        } else {
            return Ok(());
        };
        if own_replay(ctx, &pkt, dir, sport, dport) {
            bump(counter::OWN_REPLAY, 1);
            return Ok(());
        }
        let seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
        let ack = u32::from_be_bytes([tcp[8], tcp[9], tcp[10], tcp[11]]);
        let doff = ((tcp[12] >> 4) as usize) * 4;
        let flags = tcp[13];
        let payload_off = l4 + doff;
        let skb_len = ctx.len() as usize;
        // Ethernet padding of short frames is beyond ip_end and never counted as payload.
        let end = if pkt.ip_end < skb_len {
            pkt.ip_end
        } else {
            skb_len
        };
        let payload_len = end.saturating_sub(payload_off);

        bump(counter::SEGMENTS, 1);
        bump(counter::PAYLOAD_BYTES, payload_len as u64);

        let ppm = SETTINGS
            .get(setting::SAMPLE_PPM)
            .copied()
            .unwrap_or(PPM_ALL);
        if ppm < PPM_ALL {
            let client = if dir == direction::TO_SERVER {
                &pkt.saddr
            } else {
                &pkt.daddr
            };
            if !sample_keep(client_hash(client), ppm) {
                bump(counter::SAMPLED_OUT, 1);
                return Ok(());
            }
        }
        // Pure ACKs carry nothing the daemon needs.
        if payload_len == 0 && flags & (tcp_flag::SYN | tcp_flag::FIN | tcp_flag::RST) == 0 {
            return Ok(());
        }

        // Read as a plain map value so the verifier does not split states on it.
        let flags_out = u64::from(SETTINGS.get(setting::SUBMIT_FLAGS).copied().unwrap_or(0));
        let mut h = SegmentHeader {
            ts_ns: unsafe { bpf_ktime_get_ns() },
            saddr: pkt.saddr,
            daddr: pkt.daddr,
            sport,
            dport,
            seq,
            ack,
            segment_len: payload_len as u32,
            chunk_offset: 0,
            chunk_len: 0,
            ip_version: pkt.ip_version,
            direction: dir,
            tcp_flags: flags,
            _pad: [0; 7],
        };

        let mut i: u32 = 0;
        while i < MAX_CHUNKS_PER_PACKET {
            let offset = (i as usize) * CHUNK_BYTES;
            if offset >= payload_len && i > 0 {
                break;
            }
            let remaining = payload_len - offset;
            let len = if remaining > CHUNK_BYTES {
                CHUNK_BYTES
            } else {
                remaining
            };
            let first = i == 0;
            let last = offset + len >= payload_len;
            let mut f = flags;
            if !first {
                f &= !tcp_flag::SYN;
            }
            if !last {
                f &= !(tcp_flag::FIN | tcp_flag::RST);
            }
            h.seq = seq.wrapping_add(offset as u32);
            h.chunk_offset = offset as u32;
            h.chunk_len = len as u16;
            h.tcp_flags = f;
            let from = (payload_off + offset) as u32;
            // One constant-size reservation per class, smallest first.
            let out = if len == 0 {
                emit::<{ PAYLOAD_CLASSES[0] }>(ctx, &h, from, len, flags_out)
            } else if len <= PAYLOAD_CLASSES[1] {
                emit::<{ PAYLOAD_CLASSES[1] }>(ctx, &h, from, len, flags_out)
            } else if len <= PAYLOAD_CLASSES[2] {
                emit::<{ PAYLOAD_CLASSES[2] }>(ctx, &h, from, len, flags_out)
            } else if len <= PAYLOAD_CLASSES[3] {
                emit::<{ PAYLOAD_CLASSES[3] }>(ctx, &h, from, len, flags_out)
            } else if len <= PAYLOAD_CLASSES[4] {
                emit::<{ PAYLOAD_CLASSES[4] }>(ctx, &h, from, len, flags_out)
            } else if len <= PAYLOAD_CLASSES[5] {
                emit::<{ PAYLOAD_CLASSES[5] }>(ctx, &h, from, len, flags_out)
            } else {
                emit::<{ PAYLOAD_CLASSES[6] }>(ctx, &h, from, len, flags_out)
            };
            match out {
                Emitted::Record => bump(counter::RECORDS, 1),
                Emitted::RingFull => bump(counter::RING_FULL, 1),
                Emitted::LoadError => {
                    bump(counter::LOAD_ERRORS, len as u64);
                    break;
                }
            }
            if last {
                break;
            }
            i += 1;
        }
        let carried = (MAX_CHUNKS_PER_PACKET as usize) * CHUNK_BYTES;
        if payload_len > carried {
            bump(counter::OVERSIZE, (payload_len - carried) as u64);
        }
        Ok(())
    }
}
