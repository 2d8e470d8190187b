//! Wiring of the stages (the one place that knows every stage).
pub mod capture_loop;
pub mod isolation;
pub mod lanes;
pub mod live;
pub mod shadow;
