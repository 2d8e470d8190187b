//! Replay: send sampled requests to the candidate as they were captured, and read its
//! responses with the capture's own HTTP framing.
//!
//! Timing definitions (identical on both sides so latencies compare):
//! - time to first byte = first response byte − last request byte;
//! - time to last byte = last response byte − last request byte.
//!
//! On the legacy side both instants are kernel timestamps at the tap; on the candidate
//! side they are the daemon's monotonic clock when its write of the last request byte
//! returned and when its reads returned the first and last response bytes.
mod client;
mod request;

pub use client::{
    CandidateReply, CandidateTarget, ReplayConfig, ReplayError, ReplayResult, Replayer,
    parse_candidate_url,
};
pub use request::{RewriteRules, build_request};
