//! HTTP/1.x framing on httparse: incremental request and response parsing, pairing of
//! requests with responses per connection. The same framing reads the candidate's
//! responses (see `replay`).
mod decoder;
mod error;
mod exchange;
mod head;
mod reader;
mod tracker;

pub use error::{FramingError, Limits, OversizeKind, Protocol};
pub use exchange::{CorrelationId, Exchange, Header, Request, Response, Timing, header};
pub use reader::{ReadProgress, ResponseReader};
pub use tracker::{ExchangeTracker, HttpOutput, HttpStats, MAX_PENDING};
