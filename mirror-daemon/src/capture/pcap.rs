//! pcap and pcapng files: read them into the same [`Segment`] stream as the live tap,
//! and write captured segments as pcapng (one packet per segment, with synthesized
//! Ethernet, IP and TCP headers).
use std::{
    borrow::Cow,
    collections::HashMap,
    fs::File,
    io::{BufReader, BufWriter, Read, Write},
    net::{IpAddr, SocketAddr},
    path::Path,
    time::Duration,
};

use pcap_file::{
    DataLink,
    pcap::PcapReader,
    pcapng::{
        Block, PcapNgReader, PcapNgWriter,
        blocks::{
            enhanced_packet::EnhancedPacketBlock,
            interface_description::{InterfaceDescriptionBlock, InterfaceDescriptionOption},
        },
    },
};

use super::{Direction, FlowKey, Segment, TcpFlags};

#[derive(Debug, thiserror::Error)]
pub enum PcapError {
    #[error("cannot open {path}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a pcap or pcapng file ({detail})")]
    Format { path: String, detail: String },
    #[error("reading {path}: {detail}")]
    Read { path: String, detail: String },
    #[error("writing capture: {0}")]
    Write(String),
}

/// What a file read found, beyond the segments themselves.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct PcapStats {
    pub packets: u64,
    pub tcp_segments: u64,
    /// Packets of the file that are not TCP on a selected port (ignored).
    pub ignored: u64,
    /// Packets that could not be parsed (truncated headers, unknown link type).
    pub malformed: u64,
    /// Packets cut by the capture's snap length (their payload is incomplete).
    pub truncated: u64,
    pub bytes: u64,
}

/// Which side of a TCP connection is the server.
#[derive(Clone, Debug)]
pub enum PortSelector {
    /// These are the server ports.
    Ports(Vec<u16>),
    /// The destination of a SYN is the server; for connections without a SYN in the file,
    /// the lower port is taken as the server's.
    Auto(HashMap<(SocketAddr, SocketAddr), bool>),
}

impl PortSelector {
    pub fn new(ports: &[u16]) -> Self {
        if ports.is_empty() {
            Self::Auto(HashMap::new())
        } else {
            Self::Ports(ports.to_vec())
        }
    }

    /// `Some(direction)` if the segment `src → dst` belongs to a selected server.
    fn direction(
        &mut self,
        src: SocketAddr,
        dst: SocketAddr,
        flags: TcpFlags,
    ) -> Option<Direction> {
        match self {
            Self::Ports(ports) => {
                if ports.contains(&dst.port()) {
                    Some(Direction::ToServer)
                } else if ports.contains(&src.port()) {
                    Some(Direction::ToClient)
                } else {
                    None
                }
            }
            Self::Auto(learned) => {
                if flags.syn() && !flags.ack() {
                    learned.insert((src, dst), true);
                    learned.insert((dst, src), false);
                } else if !learned.contains_key(&(src, dst)) && learned.len() < 1_000_000 {
                    let to_server = dst.port() < src.port();
                    learned.insert((src, dst), to_server);
                    learned.insert((dst, src), !to_server);
                }
                learned.get(&(src, dst)).map(|&to_server| {
                    if to_server {
                        Direction::ToServer
                    } else {
                        Direction::ToClient
                    }
                })
            }
        }
    }
}

/// Reads a pcap or pcapng file and hands every TCP segment of the selected ports to
/// `sink`. Payloads are borrowed from the reader's buffer (no per-packet allocation).
pub fn read_file(
    path: &Path,
    ports: &[u16],
    sink: &mut impl FnMut(&Segment<'_>),
) -> Result<PcapStats, PcapError> {
    let shown = path.display().to_string();
    let file = File::open(path).map_err(|source| PcapError::Open {
        path: shown.clone(),
        source,
    })?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut magic = [0u8; 4];
    reader
        .read_exact(&mut magic)
        .map_err(|e| PcapError::Format {
            path: shown.clone(),
            detail: e.to_string(),
        })?;
    let chained = std::io::Cursor::new(magic).chain(reader);
    let mut selector = PortSelector::new(ports);
    let mut stats = PcapStats::default();
    if magic == [0x0a, 0x0d, 0x0d, 0x0a] {
        read_pcapng(chained, &shown, &mut selector, &mut stats, sink)?;
    } else {
        read_pcap(chained, &shown, &mut selector, &mut stats, sink)?;
    }
    Ok(stats)
}

fn read_pcap<R: Read>(
    r: R,
    path: &str,
    selector: &mut PortSelector,
    stats: &mut PcapStats,
    sink: &mut impl FnMut(&Segment<'_>),
) -> Result<(), PcapError> {
    let mut reader = PcapReader::new(r).map_err(|e| PcapError::Format {
        path: path.into(),
        detail: e.to_string(),
    })?;
    let link = reader.header().datalink;
    while let Some(pkt) = reader.next_packet() {
        let pkt = pkt.map_err(|e| PcapError::Read {
            path: path.into(),
            detail: e.to_string(),
        })?;
        let ts = pkt.timestamp.as_nanos() as u64;
        handle_frame(link, &pkt.data, pkt.orig_len, ts, selector, stats, sink);
    }
    Ok(())
}

fn read_pcapng<R: Read>(
    r: R,
    path: &str,
    selector: &mut PortSelector,
    stats: &mut PcapStats,
    sink: &mut impl FnMut(&Segment<'_>),
) -> Result<(), PcapError> {
    let mut reader = PcapNgReader::new(r).map_err(|e| PcapError::Format {
        path: path.into(),
        detail: e.to_string(),
    })?;
    // Per-interface (link type, nanoseconds per timestamp unit). pcap-file returns the
    // raw timestamp as nanoseconds whatever if_tsresol says, so scale it here.
    let mut interfaces: Vec<(DataLink, u64)> = Vec::new();
    while let Some(block) = reader.next_block() {
        let block = block.map_err(|e| PcapError::Read {
            path: path.into(),
            detail: e.to_string(),
        })?;
        match block {
            Block::SectionHeader(_) => interfaces.clear(),
            Block::InterfaceDescription(idb) => {
                let mut unit_ns = 1_000; // default resolution: microseconds
                for opt in &idb.options {
                    if let InterfaceDescriptionOption::IfTsResol(r) = opt {
                        unit_ns = tsresol_unit_ns(*r);
                    }
                }
                interfaces.push((idb.linktype, unit_ns));
            }
            Block::EnhancedPacket(epb) => {
                let Some(&(link, unit_ns)) = interfaces.get(epb.interface_id as usize) else {
                    stats.malformed += 1;
                    continue;
                };
                let ts = (epb.timestamp.as_nanos() as u64).saturating_mul(unit_ns);
                handle_frame(link, &epb.data, epb.original_len, ts, selector, stats, sink);
            }
            Block::SimplePacket(spb) => {
                let Some(&(link, _)) = interfaces.first() else {
                    stats.malformed += 1;
                    continue;
                };
                handle_frame(link, &spb.data, spb.original_len, 0, selector, stats, sink);
            }
            _ => {}
        }
    }
    Ok(())
}

/// Nanoseconds per timestamp unit for a pcapng if_tsresol value (10^-r or 2^-r seconds).
fn tsresol_unit_ns(r: u8) -> u64 {
    if r & 0x80 == 0 {
        let exp = u32::from(r.min(9));
        10u64.pow(9 - exp)
    } else {
        // Binary resolutions are rare; approximate to the nearest nanosecond.
        let exp = u32::from(r & 0x7f).min(30);
        (1_000_000_000u64 >> exp).max(1)
    }
}

fn handle_frame(
    link: DataLink,
    frame: &[u8],
    original_len: u32,
    ts_ns: u64,
    selector: &mut PortSelector,
    stats: &mut PcapStats,
    sink: &mut impl FnMut(&Segment<'_>),
) {
    stats.packets += 1;
    stats.bytes += frame.len() as u64;
    // Cut by the capture's snap length: the payload is incomplete.
    if original_len as usize > frame.len() {
        stats.truncated += 1;
    }
    match parse_frame(link, frame) {
        Ok(Some(p)) => {
            let Some(direction) = selector.direction(p.src, p.dst, p.flags) else {
                stats.ignored += 1;
                return;
            };
            let (client, server) = match direction {
                Direction::ToServer => (p.src, p.dst),
                Direction::ToClient => (p.dst, p.src),
            };
            stats.tcp_segments += 1;
            sink(&Segment {
                flow: FlowKey { client, server },
                direction,
                seq: p.seq,
                ack: p.ack,
                flags: p.flags,
                ts_ns,
                payload: p.payload,
            });
        }
        Ok(None) => stats.ignored += 1,
        Err(MalformedFrame) => stats.malformed += 1,
    }
}

/// A TCP segment parsed out of a link-layer frame.
pub struct ParsedTcp<'a> {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub seq: u32,
    pub ack: u32,
    pub flags: TcpFlags,
    pub payload: &'a [u8],
}

/// A frame too short or inconsistent to parse (counted as malformed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed frame")]
pub struct MalformedFrame;

/// Parses a frame down to TCP. `Ok(None)`: valid but not TCP; `Err`: malformed.
pub fn parse_frame(link: DataLink, frame: &[u8]) -> Result<Option<ParsedTcp<'_>>, MalformedFrame> {
    let (ethertype, l3) = match link {
        DataLink::ETHERNET => {
            let mut off = 12;
            let mut et = be16(frame, off)?;
            off += 2;
            for _ in 0..2 {
                if et == 0x8100 || et == 0x88a8 {
                    et = be16(frame, off + 2)?;
                    off += 4;
                }
            }
            (et, off)
        }
        DataLink::LINUX_SLL => (be16(frame, 14)?, 16),
        DataLink::LINUX_SLL2 => (be16(frame, 0)?, 20),
        DataLink::NULL | DataLink::LOOP => {
            let fam = frame.get(..4).ok_or(MalformedFrame)?;
            let v = u32::from_le_bytes([fam[0], fam[1], fam[2], fam[3]]);
            let v = if v > 0xffff { v.swap_bytes() } else { v };
            (if v == 2 { 0x0800 } else { 0x86dd }, 4)
        }
        DataLink::RAW | DataLink::IPV4 | DataLink::IPV6 => {
            let v = frame.first().ok_or(MalformedFrame)? >> 4;
            (if v == 4 { 0x0800 } else { 0x86dd }, 0)
        }
        _ => return Err(MalformedFrame),
    };
    let ip = frame.get(l3..).ok_or(MalformedFrame)?;
    let (src_ip, dst_ip, tcp): (IpAddr, IpAddr, &[u8]) = match ethertype {
        0x0800 => {
            let ihl = usize::from(ip.first().ok_or(MalformedFrame)? & 0x0f) * 4;
            if ihl < 20 || ip.len() < ihl {
                return Err(MalformedFrame);
            }
            if ip[9] != 6 {
                return Ok(None);
            }
            if be16(ip, 6)? & 0x1fff != 0 {
                return Ok(None); // a non-first fragment
            }
            let total = usize::from(be16(ip, 2)?);
            // total == 0: TSO super-packet captured before segmentation.
            let end = if total == 0 {
                ip.len()
            } else {
                total.min(ip.len())
            };
            if end < ihl {
                return Err(MalformedFrame);
            }
            let s: [u8; 4] = ip[12..16].try_into().map_err(|_| MalformedFrame)?;
            let d: [u8; 4] = ip[16..20].try_into().map_err(|_| MalformedFrame)?;
            (IpAddr::from(s), IpAddr::from(d), &ip[ihl..end])
        }
        0x86dd => {
            if ip.len() < 40 {
                return Err(MalformedFrame);
            }
            if ip[6] != 6 {
                return Ok(None);
            }
            let plen = usize::from(be16(ip, 4)?);
            let end = if plen == 0 {
                ip.len()
            } else {
                (40 + plen).min(ip.len())
            };
            let s: [u8; 16] = ip[8..24].try_into().map_err(|_| MalformedFrame)?;
            let d: [u8; 16] = ip[24..40].try_into().map_err(|_| MalformedFrame)?;
            (IpAddr::from(s), IpAddr::from(d), &ip[40..end])
        }
        _ => return Ok(None),
    };
    if tcp.len() < 20 {
        return Err(MalformedFrame);
    }
    let doff = usize::from(tcp[12] >> 4) * 4;
    if doff < 20 || tcp.len() < doff {
        return Err(MalformedFrame);
    }
    Ok(Some(ParsedTcp {
        src: SocketAddr::new(src_ip, be16(tcp, 0)?),
        dst: SocketAddr::new(dst_ip, be16(tcp, 2)?),
        seq: be32(tcp, 4)?,
        ack: be32(tcp, 8)?,
        flags: TcpFlags(tcp[13]),
        payload: &tcp[doff..],
    }))
}

fn be16(b: &[u8], off: usize) -> Result<u16, MalformedFrame> {
    let s = b.get(off..off + 2).ok_or(MalformedFrame)?;
    Ok(u16::from_be_bytes([s[0], s[1]]))
}

fn be32(b: &[u8], off: usize) -> Result<u32, MalformedFrame> {
    let s = b.get(off..off + 4).ok_or(MalformedFrame)?;
    Ok(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

/// Writes segments as a pcapng file: one Ethernet frame per segment, nanosecond
/// timestamps, synthesized IP and TCP headers (valid IPv4 checksum; TCP checksum 0,
/// which Wireshark and tshark do not verify by default).
pub struct PcapNgSink<W: Write> {
    writer: PcapNgWriter<W>,
    frame: Vec<u8>,
    /// Added to segment timestamps to turn them into Unix-epoch nanoseconds.
    epoch_offset_ns: i128,
    pub packets: u64,
    pub bytes: u64,
}

impl PcapNgSink<BufWriter<File>> {
    /// Creates `path` with mode 0600 (it holds raw traffic, PII included).
    pub fn create(path: &Path, iface: &str, epoch_offset_ns: i128) -> Result<Self, PcapError> {
        use std::os::unix::fs::OpenOptionsExt as _;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| PcapError::Write(format!("cannot create {}: {e}", path.display())))?;
        // An existing file keeps its old mode on open: force it.
        use std::os::unix::fs::PermissionsExt as _;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(|e| PcapError::Write(format!("cannot chmod 0600 {}: {e}", path.display())))?;
        Self::new(
            BufWriter::with_capacity(1 << 20, file),
            iface,
            epoch_offset_ns,
        )
    }
}

impl<W: Write> PcapNgSink<W> {
    pub fn new(w: W, iface: &str, epoch_offset_ns: i128) -> Result<Self, PcapError> {
        let mut writer = PcapNgWriter::new(w).map_err(|e| PcapError::Write(e.to_string()))?;
        let idb = InterfaceDescriptionBlock {
            linktype: DataLink::ETHERNET,
            snaplen: 0,
            options: vec![
                InterfaceDescriptionOption::IfName(Cow::Owned(iface.to_string())),
                InterfaceDescriptionOption::IfTsResol(9),
            ],
        };
        writer
            .write_block(&Block::InterfaceDescription(idb))
            .map_err(|e| PcapError::Write(e.to_string()))?;
        Ok(Self {
            writer,
            frame: Vec::with_capacity(65_600),
            epoch_offset_ns,
            packets: 0,
            bytes: 0,
        })
    }

    /// Appends one segment. The frame buffer is reused: no allocation per segment.
    pub fn write(&mut self, seg: &Segment<'_>) -> Result<(), PcapError> {
        let (src, dst) = match seg.direction {
            Direction::ToServer => (seg.flow.client, seg.flow.server),
            Direction::ToClient => (seg.flow.server, seg.flow.client),
        };
        build_frame(&mut self.frame, src, dst, seg);
        let ts = (i128::from(seg.ts_ns) + self.epoch_offset_ns).max(0) as u64;
        let epb = EnhancedPacketBlock {
            interface_id: 0,
            timestamp: Duration::from_nanos(ts),
            original_len: self.frame.len() as u32,
            data: Cow::Borrowed(&self.frame),
            options: vec![],
        };
        self.writer
            .write_block(&Block::EnhancedPacket(epb))
            .map_err(|e| PcapError::Write(e.to_string()))?;
        self.packets += 1;
        self.bytes += seg.payload.len() as u64;
        Ok(())
    }

    pub fn flush(&mut self) -> Result<(), PcapError> {
        self.writer
            .get_mut()
            .flush()
            .map_err(|e| PcapError::Write(e.to_string()))
    }
}

fn build_frame(frame: &mut Vec<u8>, src: SocketAddr, dst: SocketAddr, seg: &Segment<'_>) {
    frame.clear();
    // Ethernet: locally administered placeholder MACs; the tap does not see real ones.
    frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1]);
    let tcp_len = 20 + seg.payload.len();
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            frame.extend_from_slice(&0x0800u16.to_be_bytes());
            let start = frame.len();
            let total = (20 + tcp_len).min(usize::from(u16::MAX)) as u16;
            frame.extend_from_slice(&[0x45, 0]);
            frame.extend_from_slice(&total.to_be_bytes());
            frame.extend_from_slice(&[0, 0, 0x40, 0, 64, 6, 0, 0]);
            frame.extend_from_slice(&s.octets());
            frame.extend_from_slice(&d.octets());
            let sum = ipv4_checksum(&frame[start..start + 20]);
            frame[start + 10..start + 12].copy_from_slice(&sum.to_be_bytes());
        }
        _ => {
            let to6 = |ip: IpAddr| match ip {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            frame.extend_from_slice(&0x86ddu16.to_be_bytes());
            frame.extend_from_slice(&[0x60, 0, 0, 0]);
            frame.extend_from_slice(&(tcp_len.min(usize::from(u16::MAX)) as u16).to_be_bytes());
            frame.extend_from_slice(&[6, 64]);
            frame.extend_from_slice(&to6(src.ip()).octets());
            frame.extend_from_slice(&to6(dst.ip()).octets());
        }
    }
    frame.extend_from_slice(&src.port().to_be_bytes());
    frame.extend_from_slice(&dst.port().to_be_bytes());
    frame.extend_from_slice(&seg.seq.to_be_bytes());
    frame.extend_from_slice(&seg.ack.to_be_bytes());
    frame.extend_from_slice(&[0x50, seg.flags.0, 0xff, 0xff, 0, 0, 0, 0]);
    frame.extend_from_slice(seg.payload);
}

fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(payload: &[u8], dir: Direction) -> Segment<'_> {
        Segment {
            flow: FlowKey {
                client: "10.0.0.1:40000".parse().unwrap(),
                server: "10.0.0.2:8080".parse().unwrap(),
            },
            direction: dir,
            seq: 1000,
            ack: 2000,
            flags: TcpFlags(TcpFlags::ACK | TcpFlags::PSH),
            ts_ns: 5_000,
            payload,
        }
    }

    #[test]
    fn written_frames_parse_back_identically() {
        let mut buf = Vec::new();
        {
            let mut sink = PcapNgSink::new(&mut buf, "veth0", 1_700_000_000_000_000_000).unwrap();
            sink.write(&seg(b"GET / HTTP/1.1\r\n\r\n", Direction::ToServer))
                .unwrap();
            sink.write(&seg(b"HTTP/1.1 200 OK\r\n\r\n", Direction::ToClient))
                .unwrap();
            sink.flush().unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.pcapng");
        std::fs::write(&path, &buf).unwrap();
        let mut got = Vec::new();
        let stats = read_file(&path, &[8080], &mut |s| {
            got.push((s.direction, s.payload.to_vec(), s.ts_ns, s.seq, s.flow));
        })
        .unwrap();
        assert_eq!(stats.tcp_segments, 2);
        assert_eq!(got[0].0, Direction::ToServer);
        assert_eq!(got[0].1, b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(got[0].2, 1_700_000_000_000_005_000);
        assert_eq!(got[1].0, Direction::ToClient);
        assert_eq!(got[1].4, got[0].4);
    }

    #[test]
    fn ipv6_and_auto_ports() {
        let mut s = seg(b"x", Direction::ToServer);
        s.flow = FlowKey {
            client: "[fd00::1]:40000".parse().unwrap(),
            server: "[fd00::2]:80".parse().unwrap(),
        };
        let mut frame = Vec::new();
        build_frame(&mut frame, s.flow.client, s.flow.server, &s);
        let p = parse_frame(DataLink::ETHERNET, &frame).unwrap().unwrap();
        assert_eq!(p.dst, s.flow.server);
        let mut sel = PortSelector::new(&[]);
        assert_eq!(
            sel.direction(p.src, p.dst, p.flags),
            Some(Direction::ToServer)
        );
    }

    #[test]
    fn malformed_frames_are_errors_not_panics() {
        for len in 0..60 {
            let frame = vec![0x45u8; len];
            let _ = parse_frame(DataLink::ETHERNET, &frame);
            let _ = parse_frame(DataLink::RAW, &frame);
            let _ = parse_frame(DataLink::LINUX_SLL, &frame);
        }
    }

    #[test]
    fn tsresol_units() {
        assert_eq!(tsresol_unit_ns(6), 1_000);
        assert_eq!(tsresol_unit_ns(9), 1);
        assert_eq!(tsresol_unit_ns(3), 1_000_000);
    }
}
