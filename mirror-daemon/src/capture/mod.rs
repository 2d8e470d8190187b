//! Capture: the kernel tap (ring buffer reader), pcap/pcapng input and output.
//! Everything here produces or consumes [`Segment`]s.
mod segment;

pub use segment::{Direction, FlowKey, Segment, TcpFlags};
