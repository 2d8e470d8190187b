//! Capture: the kernel tap (ring-buffer reader), pcap/pcapng input and output.
//! Everything here produces or consumes [`Segment`]s.
pub mod kernel;
pub mod own;
pub mod pcap;
pub mod reorder;
mod segment;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub use segment::{Direction, FlowKey, Segment, TcpFlags};

/// Hasher of the per-segment flow tables (reassembly, HTTP tracker). Their keys are
/// client addresses and ports, which a client chooses, so the hasher is seeded at random
/// per table (no precomputed collisions); foldhash instead of the standard SipHash
/// because these tables are looked up several times per segment (SipHash was ~4 % of the
/// capture thread at saturation, docs/cost.md).
pub type FlowHasher = foldhash::fast::RandomState;

/// A table keyed by connection, hashed with [`FlowHasher`].
pub type FlowMap<V> = std::collections::HashMap<FlowKey, V, FlowHasher>;

/// A set of connections, hashed with [`FlowHasher`].
pub type FlowSet = std::collections::HashSet<FlowKey, FlowHasher>;

/// An address from the kernel's 16-byte form (IPv4 in the first 4 bytes).
pub(crate) fn ip_from_bytes(version: u8, b: &[u8; 16]) -> Option<IpAddr> {
    match version {
        4 => Some(IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))),
        6 => Some(IpAddr::V6(Ipv6Addr::from(*b))),
        _ => None,
    }
}

/// The 16-byte form of an address, as the kernel hashes it for pre-sampling.
pub fn ip_to_bytes(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&v4.octets());
            b
        }
        IpAddr::V6(v6) => v6.octets(),
    }
}
