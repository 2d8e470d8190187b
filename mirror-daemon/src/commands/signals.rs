//! Stop requests for synchronous commands (SIGINT/SIGTERM).
use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(sig: libc::c_int) {
    // Only async-signal-safe work here: set a flag.
    let _ = sig;
    STOP.store(true, Ordering::SeqCst);
}

/// Installs the handlers. Safe to call more than once.
pub fn install() -> anyhow::Result<()> {
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to atomics.
        unsafe { sigaction(sig, &action) }
            .map_err(|e| anyhow::anyhow!("installing {sig} handler: {e}"))?;
    }
    Ok(())
}

pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}
