//! HTTP/1.x framing on httparse: incremental request and response parsing, pairing of
//! requests with responses per connection. The same framing reads the candidate's
//! responses (see `replay`).
//!
//! - `decoder`/`head`: framing of one direction (bounded by [`Limits`]);
//! - [`ResponseReader`]: one response, for the replay stage;
//! - [`ExchangeTracker`]: pairing per connection, gap and resync rules;
//! - [`PairingCounters`]: its figures as stored, exposed and shown (the cost of a join);
//! - `json`: the `exchanges` views (schema in `SCHEMA.md`);
//! - [`fuzz_framing`]: entry for a cargo-fuzz target.
mod decoder;
mod error;
mod exchange;
mod fuzz;
mod head;
mod json;
mod pairing;
mod reader;
mod tracker;

pub use error::{FramingError, Limits, OversizeKind, Protocol};
pub use exchange::{
    CorrelationId, Exchange, Header, HeaderName, Request, Response, Timing, content_codings, header,
};
pub use fuzz::fuzz_framing;
pub use json::{EXCHANGE_TABLE_HEADER, exchange_json, exchange_json_with, exchange_table_row};
pub use pairing::PairingCounters;
pub use reader::{ReadProgress, ResponseReader};
pub use tracker::{ExchangeTracker, FrameOnly, HttpOutput, HttpStats, MAX_PENDING};
