#![no_main]
//! Fuzz target: see `mirror_daemon::mask::fuzz_mask` for the invariants it asserts.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    mirror_daemon::mask::fuzz_mask(data);
});
