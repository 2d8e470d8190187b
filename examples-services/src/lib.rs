//! Example services for mirror's demo and end-to-end tests: a legacy API, its rewrite
//! (with selectable, documented deviations), an SMTP sink, a load generator, and an echo
//! service whose responses carry their request's id (pairing tests), and the `payments`
//! dependency legacy and candidate call on `POST /orders`.
//! All share the minimal HTTP/1.1 plumbing in [`http`].
pub mod api;
pub mod candidate;
pub mod echo;
pub mod http;
pub mod legacy;
pub mod load;
pub mod mail;
pub mod payments;
pub mod reflect;
