use std::net::SocketAddr;

/// A TCP connection, named from the tapped service's point of view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    pub client: SocketAddr,
    pub server: SocketAddr,
}

impl std::fmt::Display for FlowKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} -> {}", self.client, self.server)
    }
}

/// Which way a segment travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Request bytes: client to the tapped server.
    ToServer,
    /// Response bytes: tapped server to client.
    ToClient,
}

impl Direction {
    /// The other way.
    pub fn peer(self) -> Self {
        match self {
            Direction::ToServer => Direction::ToClient,
            Direction::ToClient => Direction::ToServer,
        }
    }

    pub fn index(self) -> usize {
        match self {
            Direction::ToServer => 0,
            Direction::ToClient => 1,
        }
    }
}

/// TCP header flags.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TcpFlags(pub u8);

impl TcpFlags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;

    pub fn fin(self) -> bool {
        self.0 & Self::FIN != 0
    }
    pub fn syn(self) -> bool {
        self.0 & Self::SYN != 0
    }
    pub fn rst(self) -> bool {
        self.0 & Self::RST != 0
    }
    pub fn ack(self) -> bool {
        self.0 & Self::ACK != 0
    }
}

/// One captured TCP segment (or one chunk of a larger packet: a chunk carries the
/// sequence number of its own first byte, so it is a valid segment by itself).
///
/// The payload is borrowed from the capture buffer (ring buffer or pcap record): the hot
/// path never allocates per segment.
#[derive(Clone, Copy, Debug)]
pub struct Segment<'a> {
    pub flow: FlowKey,
    pub direction: Direction,
    pub seq: u32,
    pub ack: u32,
    pub flags: TcpFlags,
    /// Kernel monotonic timestamp in nanoseconds (pcap input: capture time).
    pub ts_ns: u64,
    pub payload: &'a [u8],
}
