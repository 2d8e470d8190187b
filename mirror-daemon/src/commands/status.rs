//! `mirror-daemon status --iface IF`: what is attached to the interface, so an SRE (and
//! the tests) can see that the tap is attached exactly once, or not at all.
use anyhow::Context as _;
use aya::programs::{SchedClassifier, TcAttachType};
use mirror_common::program_name;

use crate::exit;

pub fn run(iface: &str) -> anyhow::Result<u8> {
    if nix::net::if_::if_nametoindex(iface).is_err() {
        anyhow::bail!("interface {iface:?} does not exist (see `ip link`)");
    }
    let mut total = 0usize;
    for (kind, name) in [
        (TcAttachType::Ingress, "ingress"),
        (TcAttachType::Egress, "egress"),
    ] {
        let (_rev, progs) = SchedClassifier::query_tcx(iface, kind).with_context(|| {
            format!("querying TCX programs on {iface} {name} (needs CAP_BPF/CAP_NET_ADMIN)")
        })?;
        let ours: Vec<_> = progs
            .iter()
            .filter(|p| {
                p.name_as_str()
                    .is_some_and(|n| program_name::TAP.starts_with(n) || n.starts_with("mirror"))
            })
            .collect();
        total += ours.len();
        println!(
            "{name}: {} mirror program(s) attached{}",
            ours.len(),
            ours.iter()
                .map(|p| format!(" [id {}]", p.id()))
                .collect::<String>()
        );
    }
    println!("total mirror programs attached to {iface}: {total}");
    Ok(exit::OK)
}
