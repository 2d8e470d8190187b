//! Keeping the CPUs out of idle states while latencies of two services are compared.
//!
//! On this kind of machine (a VM with the `haltpoll` cpuidle driver) an idle vCPU halts,
//! and a request that lands on a halted vCPU waits for it to wake: 6–19 µs added to a
//! p50 of 30–40 µs. Which side of a comparison finds its CPU halted depends on who sent
//! the request (legacy's load tool or the daemon's replay), not on the service, so the
//! live leg of two identical nginx at 1k req/s read 0.82–0.85 with idle states allowed
//! and 0.84–0.96 with them held off in the same quiet hour (docs/fidelity.md, round 5a).
//! Holding `/dev/cpu_dma_latency` at 0 is the kernel's PM QoS interface for exactly
//! this; the request lasts while the file is open and ends when it is closed.

use std::{fs::File, io::Write as _};

use clap::ValueEnum;

/// What the fidelity legs do with the CPUs' idle states.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CpuIdle {
    /// Hold them off (`/dev/cpu_dma_latency` = 0) for the section.
    Hold,
    /// Leave them as the host has them.
    Allow,
}

const PM_QOS: &str = "/dev/cpu_dma_latency";

/// A held PM QoS request; dropping it gives the idle states back.
pub struct IdleHold {
    _file: Option<File>,
    /// What was done, for the report.
    pub state: String,
}

impl IdleHold {
    /// Takes the hold when asked to; a host without the interface is said, not fatal
    /// (the figures are then taken with idle states, and the report says so).
    pub fn take(mode: CpuIdle) -> Self {
        if mode == CpuIdle::Allow {
            return Self::without("allowed (--cpu-idle allow)");
        }
        match File::options().write(true).open(PM_QOS).and_then(|mut f| {
            f.write_all(&0i32.to_ne_bytes())?;
            Ok(f)
        }) {
            Ok(f) => Self {
                _file: Some(f),
                state: format!("held off ({PM_QOS} = 0 µs)"),
            },
            Err(e) => {
                eprintln!(
                    "xtask bench: cannot hold idle states off ({PM_QOS}: {e}); measuring with them"
                );
                Self::without(&format!("allowed ({PM_QOS}: {e})"))
            }
        }
    }

    fn without(state: &str) -> Self {
        Self {
            _file: None,
            state: state.into(),
        }
    }
}
