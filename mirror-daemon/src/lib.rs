//! mirror: prove a replacement service against the legacy one with real traffic.
//!
//! # Architecture
//!
//! Stages, in data-flow order (a stage only uses the types of the stages before it):
//!
//! ```text
//! capture ─▶ reassembly ─▶ http ─▶ sample ─▶ mask ─▶ replay ─▶ compare ─▶ store ─▶ report/verdict
//!   (eBPF tap or pcap)  (TCP)   (exchanges)                 (candidate,      (SQLite or   (card, dashboard,
//!                                                             fenced by guard) PostgreSQL)  /metrics)
//! ```
//!
//! - [`capture`]: the kernel tap ([`capture::kernel::Tap`], TC ingress + egress, observe
//!   only) or a capture file, producing [`capture::Segment`]s.
//! - [`reassembly`] orders TCP segments per flow (bounded flow table and buffers);
//!   [`http`] frames them into request/response [`http::Exchange`]s.
//! - [`sample`] decides what is replayed, on the capture thread before the exchange queue
//!   (an excluded or sampled-out exchange never takes queue space); [`mask`] ([`mask::Masker`]) replaces PII with
//!   keyed tokens before anything is stored, logged or shown.
//! - [`replay`] sends the request to the candidate; [`guard`] fences the candidate's
//!   outbound network with cgroup eBPF hooks.
//! - [`effects`] records legacy's calls to its dependencies (`--dependency`), answers the
//!   candidate's from those recordings (`--virtualize-egress`) and diffs both sides' calls.
//! - [`compare`] ([`compare::Comparator`]) diffs the responses; [`store`]
//!   ([`store::Store`]) keeps each outcome under its correlation id.
//! - [`report`] turns what the store holds into the parity card (one section model drawn
//!   as a table or Markdown, or the card as JSON); [`verdict`] judges it against the
//!   criteria; [`serve`] is the local dashboard, API and `/metrics`.
//! - [`quota`] watches the daemon's own CPU quota (its cgroup's `cpu.stat`, from the tap
//!   attached to the last replay): when it stops the daemon in 5 % of its periods or more
//!   the replays leave in bursts, and the card, the dashboard, the progress line, the log
//!   and `/metrics` (`mirror_daemon_cpu_*_total`) say so.
//!
//! Wiring: [`app`] runs the stages. A run is a typed plan and three steps
//! (`app::pipeline`: `start(plan)` builds the stages and attaches the tap, `Running::tick`
//! does the periodic duties, `Running::shutdown(deadlines)` stops them in order and seals
//! the ledger); `app::capture_loop` runs on its own OS thread, `app::shadow` on tokio,
//! `app::fence` fences the candidate. [`pipeline`] owns the bounded queues between the
//! stages and their drop policy (drop the newest and count it, never block the capture).
//! The binary's `commands` turn flags into the plan (stages never see the CLI) and own
//! the one signal source every command stops on.
//!
//! # Accounting
//!
//! Every captured exchange ends in exactly one outcome of a closed vocabulary
//! ([`accounting::Outcome`], [`accounting::DropReason`]), recorded in one place, the
//! [`accounting::Ledger`]. `/metrics`, the dashboard, the store's ledger rows and the
//! report all read it, so they show the same identity:
//! `seen = matched + differed + sampled_out + excluded + candidate_error + dropped +
//! in_flight`, with `in_flight = 0` after a stop ([`accounting::Ledger::seal`]).
pub mod accounting;
pub mod app;
pub mod capture;
pub mod clock;
pub mod compare;
pub mod effects;
pub mod guard;
pub mod http;
pub mod mask;
pub mod pipeline;
pub mod quota;
pub mod reassembly;
pub mod replay;
pub mod report;
pub mod sample;
pub mod serve;
pub mod store;
pub mod verdict;
