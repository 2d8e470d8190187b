//! Wiring of the stages (the one place that knows every stage).
// capture_loop joins once the HTTP tracker lands.
// pub mod capture_loop;
