//! mirror: prove a replacement service against the legacy one with real traffic.
//!
//! Stages, in data-flow order (a stage only uses the types of the stages before it):
//! `capture` → `reassembly` → `http` → `sample` → `mask` → `replay` → `compare` →
//! `store` → `verdict` → `serve`. `app` wires them; `pipeline` owns channels and the
//! drop policy; `accounting` counts every exchange's terminal outcome.
pub mod accounting;
pub mod app;
pub mod capture;
pub mod clock;
pub mod compare;
pub mod guard;
pub mod http;
pub mod mask;
pub mod pipeline;
pub mod reassembly;
pub mod replay;
pub mod report;
pub mod sample;
pub mod serve;
pub mod store;
pub mod verdict;
