//! Wiring of the stages (the one place that knows every stage).
//!
//! [`pipeline`] runs a shadow run (start, tick, shutdown) from a typed plan; [`fence`]
//! fences the candidate; [`capture_loop`] is the capture thread; [`shadow`] and [`lanes`]
//! sample, mask, replay, compare and store; [`egress`] reports the candidate's egress
//! attempts; [`live`] keeps the evidence the live card is drawn from; [`allocator`]
//! tunes glibc's allocator at start-up.
pub mod allocator;
pub mod capture_loop;
pub mod egress;
pub mod fence;
pub mod isolation;
pub mod lanes;
pub mod live;
pub mod pipeline;
pub mod shadow;
