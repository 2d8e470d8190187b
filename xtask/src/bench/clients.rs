//! Many client addresses for one load generator. `--sticky client-ip` samples whole
//! clients in the kernel (`mirror_common::sample_keep(client_hash(ip), ppm)`): with the
//! single address oha and wrk connect from, a 5 % sample would keep all or nothing. The
//! client namespace therefore holds [`CLIENTS`] addresses, exactly one of them inside a
//! 5 % sample, and source-NATs successive connections to the legacy ports across them
//! (nftables `numgen inc`), as many users behind one service would arrive.
use std::{net::Ipv4Addr, process::Command};

use anyhow::{Context as _, Result};

use crate::util;

/// Client addresses: one in twenty is 5 %.
pub const CLIENTS: usize = 20;
/// The sample those addresses are chosen for (`--sample 5 --sticky client-ip`).
pub const SAMPLE_PERCENT: u32 = 5;

/// `CLIENTS` addresses of 10.77.0.0/24 (from .10 on), exactly one kept at
/// `SAMPLE_PERCENT` by the kernel's own hash, listed last.
pub fn addresses() -> Vec<Ipv4Addr> {
    let ppm = SAMPLE_PERCENT * 10_000;
    let kept = |ip: &Ipv4Addr| {
        let mut b = [0u8; 16];
        b[..4].copy_from_slice(&ip.octets());
        mirror_common::sample_keep(mirror_common::client_hash(&b), ppm)
    };
    let all = (10..=254).map(|i| Ipv4Addr::new(10, 77, 0, i));
    let mut out: Vec<Ipv4Addr> = all
        .clone()
        .filter(|ip| !kept(ip))
        .take(CLIENTS - 1)
        .collect();
    out.extend(all.filter(kept).take(1));
    out
}

/// Adds the addresses to `dev` in `ns` and the source NAT for connections to `ports`.
pub fn spread(ns: &str, dev: &str, server: &str, ports: &[u16]) -> Result<()> {
    let ips = addresses();
    for ip in &ips {
        util::run(Command::new("ip").args([
            "-n",
            ns,
            "addr",
            "add",
            &format!("{ip}/24"),
            "dev",
            dev,
        ]))?;
    }
    let map: Vec<String> = ips
        .iter()
        .enumerate()
        .map(|(i, ip)| format!("{i} : {ip}"))
        .collect();
    let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
    let rules = format!(
        "table ip mbench {{\n chain post {{\n  type nat hook postrouting priority srcnat; policy accept;\n  \
         ip daddr {server} tcp dport {{ {} }} snat to numgen inc mod {} map {{ {} }}\n }}\n}}\n",
        ports.join(", "),
        ips.len(),
        map.join(", ")
    );
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .context("starting nft (the nftables package)")?;
    use std::io::Write as _;
    child
        .stdin
        .take()
        .context("nft stdin")?
        .write_all(rules.as_bytes())?;
    let st = child.wait()?;
    anyhow::ensure!(st.success(), "nft -f failed ({st}) on:\n{rules}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_address_in_twenty_is_in_the_five_percent_sample() {
        let ips = addresses();
        assert_eq!(ips.len(), CLIENTS);
        let ppm = SAMPLE_PERCENT * 10_000;
        let kept = ips
            .iter()
            .filter(|ip| {
                let mut b = [0u8; 16];
                b[..4].copy_from_slice(&ip.octets());
                mirror_common::sample_keep(mirror_common::client_hash(&b), ppm)
            })
            .count();
        assert_eq!(kept, 1, "{ips:?}");
    }
}
