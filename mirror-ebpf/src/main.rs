//! mirror's kernel programs.
//!
//! - `tap`: TC classifier on the legacy host's interface (ingress and egress) that copies
//!   the TCP segments of the tapped ports into a ring buffer. It only observes.
//! - `guard`: cgroup socket-address hooks on the candidate's cgroup that refuse (or
//!   redirect) outbound connections not on the allowlist.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod tap;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    // Unreachable in a verified program: the verifier rejects any path that could get here.
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(target_arch = "bpf"))]
fn main() {}
