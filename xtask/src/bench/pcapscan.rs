//! An independent count of the HTTP requests a pcapng file holds, to tell what the tap
//! captured apart from what the daemon's reader rebuilt. It counts TCP segments to the
//! server port whose payload starts with an HTTP method: exact for clients that send one
//! request per write and do not pipeline (wrk, oha), which is what the bench runs.
use std::{fs::File, io::Read as _, path::Path};

use anyhow::{Context as _, Result, bail};

const METHODS: &[&[u8]] = &[b"GET ", b"POST ", b"PUT ", b"HEAD ", b"DELETE ", b"PATCH "];

pub fn count_requests(path: &Path, port: u16) -> Result<u64> {
    let mut data = Vec::new();
    File::open(path)
        .with_context(|| format!("opening {}", path.display()))?
        .read_to_end(&mut data)?;
    let mut pos = 0usize;
    let mut requests = 0u64;
    let mut little = true;
    while pos + 12 <= data.len() {
        let u32_at = |at: usize, little: bool| -> Option<u32> {
            let b: [u8; 4] = data.get(at..at + 4)?.try_into().ok()?;
            Some(if little {
                u32::from_le_bytes(b)
            } else {
                u32::from_be_bytes(b)
            })
        };
        let kind = u32_at(pos, little).context("truncated block")?;
        if kind == 0x0A0D_0D0A {
            // Section header: its byte-order magic decides the endianness that follows.
            little = data.get(pos + 8..pos + 12) == Some(&[0x4D, 0x3C, 0x2B, 0x1A][..]);
        }
        let len = u32_at(pos + 4, little).context("truncated block")? as usize;
        if len < 12 || pos + len > data.len() {
            bail!("malformed pcapng block at byte {pos}");
        }
        if kind == 6 {
            // Enhanced packet block: captured length at +20, packet data at +28.
            let cap = u32_at(pos + 20, little).context("truncated EPB")? as usize;
            if let Some(pkt) = data.get(pos + 28..pos + 28 + cap)
                && is_request(pkt, port)
            {
                requests += 1;
            }
        }
        pos += len;
    }
    Ok(requests)
}

/// Ethernet + IPv4/IPv6 + TCP to `port`, payload starting with a method.
fn is_request(pkt: &[u8], port: u16) -> bool {
    let Some(ethertype) = pkt.get(12..14) else {
        return false;
    };
    let (l4, proto) = match ethertype {
        [0x08, 0x00] => {
            let Some(&vihl) = pkt.get(14) else {
                return false;
            };
            (14 + usize::from(vihl & 0x0F) * 4, pkt.get(14 + 9).copied())
        }
        [0x86, 0xDD] => (14 + 40, pkt.get(14 + 6).copied()),
        _ => return false,
    };
    if proto != Some(6) {
        return false;
    }
    let Some(tcp) = pkt.get(l4..) else {
        return false;
    };
    let (Some(dport), Some(&off)) = (tcp.get(2..4), tcp.get(12)) else {
        return false;
    };
    if u16::from_be_bytes([dport[0], dport[1]]) != port {
        return false;
    }
    let payload = tcp.get(usize::from(off >> 4) * 4..).unwrap_or_default();
    METHODS.iter().any(|m| payload.starts_with(m))
}
