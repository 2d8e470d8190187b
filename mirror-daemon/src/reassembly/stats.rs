use serde::Serialize;

/// Monotonic counters. Every byte that is not delivered and every flow that ends or is
/// refused is counted here with its reason.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ReassemblyStats {
    /// Segments given to `process`.
    pub segments: u64,
    /// Payload bytes of those segments (duplicates included).
    pub payload_bytes: u64,
    /// Bytes handed out as `Data`.
    pub delivered_bytes: u64,

    /// Segments whose payload was entirely delivered or buffered already.
    pub retransmitted_segments: u64,
    pub retransmitted_bytes: u64,
    /// Duplicate bytes trimmed from segments that also carried new bytes.
    pub overlap_bytes: u64,
    /// Segments (or parts) copied into the reorder buffer.
    pub out_of_order_segments: u64,
    pub out_of_order_bytes: u64,
    /// Segments starting implausibly far ahead (more than TCP's largest window), dropped.
    pub out_of_window_segments: u64,
    pub out_of_window_bytes: u64,
    /// Payload bytes beyond a direction's FIN, dropped.
    pub bytes_after_fin: u64,
    /// SYNs that disagreed with the direction's known initial sequence and were ignored.
    pub syn_ignored: u64,

    /// `Gap { lost_bytes: 0 }`: directions joined mid-stream.
    pub gaps_midstream_join: u64,
    /// Holes not filled within the reorder timeout.
    pub gaps_reorder_timeout: u64,
    pub lost_bytes_reorder_timeout: u64,
    /// Holes skipped because the flow's reorder buffer was full.
    pub gaps_flow_buffer_cap: u64,
    pub lost_bytes_flow_buffer_cap: u64,
    /// Holes skipped because all flows' reorder buffers together were full.
    pub gaps_global_buffer_cap: u64,
    pub lost_bytes_global_buffer_cap: u64,
    /// Holes the peer acknowledged (it received bytes the capture never saw: they will
    /// not be retransmitted, so waiting for them is pointless).
    pub gaps_peer_acked: u64,
    pub lost_bytes_peer_acked: u64,
    /// Holes still open when the flow closed (FIN, RST, idle, eviction, end of input).
    pub gaps_at_close: u64,
    pub lost_bytes_at_close: u64,

    pub flows_opened: u64,
    pub flows_closed_fin: u64,
    pub flows_closed_reset: u64,
    pub flows_closed_idle: u64,
    pub flows_closed_evicted: u64,
    pub flows_closed_port_reuse: u64,
    pub flows_closed_end_of_capture: u64,
    /// Segments that would have opened a flow but the table was full of active flows.
    pub new_flow_refusals_table_full: u64,
    /// Full-table eviction scans.
    pub table_sweeps: u64,
    /// Segments of untracked flows that cannot open one (pure ACK, RST, bare FIN), ignored.
    pub segments_unknown_flow: u64,
}

impl ReassemblyStats {
    /// Bytes reported lost in gaps, all reasons.
    pub fn lost_bytes(&self) -> u64 {
        self.lost_bytes_reorder_timeout
            + self.lost_bytes_flow_buffer_cap
            + self.lost_bytes_global_buffer_cap
            + self.lost_bytes_at_close
            + self.lost_bytes_peer_acked
    }
}
