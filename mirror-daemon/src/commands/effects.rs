//! Side effects (`--dependency`, `--propagation-header`, `--virtualize-egress`): the flags
//! become an [`EffectsPlan`] (a field of the run's plan; `app::pipeline` starts it), and
//! the dependency ports the tap must also take.
use std::sync::Arc;

use mirror_daemon::{
    compare::RouteTemplater,
    effects::{
        EffectsConfig, EffectsPlan, RECORDING_WAIT,
        attribute::BookLimits,
        record::{Dependencies, Propagation},
    },
    guard::sandbox,
    mask::Masker,
};

use super::common::usage;
use crate::cli::PipelineArgs;

/// Validates the flags (`inbound_ports`: legacy's own `--port`s, empty when learned
/// from a capture file) and, with `--virtualize-egress`, binds the virtual dependency
/// listeners in the candidate's network namespace; `None` without `--dependency`.
pub fn prepare(
    p: &PipelineArgs,
    inbound_ports: &[u16],
    masker: &Arc<Masker>,
    templater: &Arc<RouteTemplater>,
) -> anyhow::Result<Option<EffectsPlan>> {
    if p.dependencies.is_empty() {
        return Ok(None);
    }
    if p.virtualize_egress && p.guard.no_egress_guard {
        return Err(usage(
            "--virtualize-egress needs the egress guard (it redirects the candidate's connects); drop --no-egress-guard",
        ));
    }
    let cfg = EffectsConfig {
        dependencies: Dependencies::from_args(&p.dependencies),
        inbound_ports: inbound_ports.to_vec(),
        propagation: Propagation::new(&p.propagation_headers),
        virtualize: p.virtualize_egress,
        limits: BookLimits::default(),
        // Under the replay timeout, so a waiting call still gets its answer in time.
        wait: RECORDING_WAIT.min(p.timeout * 4 / 5),
    };
    let netns = p.guard.candidate_netns.as_deref().map(sandbox::netns_path);
    let plan = EffectsPlan::new(cfg, masker.clone(), templater.clone(), netns.as_deref())?;
    Ok(Some(plan))
}

/// Server ports the tap (or the capture file filter) must also take.
pub fn extra_ports(p: &PipelineArgs) -> Vec<u16> {
    Dependencies::from_args(&p.dependencies).ports()
}
