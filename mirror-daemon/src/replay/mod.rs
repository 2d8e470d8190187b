//! Replay: send sampled requests to the candidate as they were captured — at the
//! capture's pace, over one candidate connection per captured connection — and read its
//! responses with the capture's own HTTP framing.
//!
//! Timing definitions (identical on both sides so latencies compare):
//! - time to first byte = first response byte − last request byte;
//! - time to last byte = last response byte − last request byte.
//!
//! Both sides use kernel instants at the device layer. Legacy: the tap's
//! `bpf_ktime_get_ns` at tc ingress (the request segment) and tc egress (the response
//! segments) on the legacy host. Candidate: software `SO_TIMESTAMPING` stamps on the
//! replay socket — the request's last segment entering the device layer (`TX_SCHED`,
//! where tc egress runs) and the response's segments handed to the stack (`RX_SOFTWARE`,
//! where tc ingress runs). See `stamps`.
mod client;
mod pace;
mod request;
mod stamps;

pub use client::{
    Attempt, CandidateConn, CandidateReply, CandidateTarget, ReplayConfig, ReplayError,
    ReplayFigures, ReplayResult, Replayer, Sent, parse_candidate_url,
};
pub use pace::{LIVE_REPLAY_DELAY, Pace, Pacer, Speed, SpeedError, live_wait};
pub use request::{RewriteRules, build_request};
