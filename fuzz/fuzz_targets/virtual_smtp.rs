#![no_main]
//! Fuzz target: see `mirror_daemon::effects::virtual_smtp::fuzz_session` for the
//! invariants it asserts (the virtual mail relay's SMTP dialogue).
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    mirror_daemon::effects::virtual_smtp::fuzz_session(data);
});
