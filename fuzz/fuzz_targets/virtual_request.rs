#![no_main]
//! Fuzz target: see `mirror_daemon::effects::virtual_dep::fuzz_request` for the invariants
//! it asserts (the virtual dependency's request parser, chunked bodies included).
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    mirror_daemon::effects::virtual_dep::fuzz_request(data);
});
