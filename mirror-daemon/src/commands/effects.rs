//! Side effects (`--dependency`, `--virtualize-egress`): flags to a configured
//! [`Effects`], the virtual dependency listeners bound on the candidate's loopback, and
//! the tasks that feed them. `shadow` calls [`prepare`] before the fence and
//! [`SideEffects::start`] before the capture.
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;

use mirror_daemon::{
    app::capture_loop::CaptureSettings,
    compare::RouteTemplater,
    effects::{
        EffectsConfig, RECORDING_WAIT,
        attribute::BookLimits,
        record::{Dependencies, Propagation},
        recorder, virtual_dep,
    },
    guard::{dns::in_netns, sandbox},
    mask::Masker,
};

pub use mirror_daemon::effects::Effects;

use super::common::usage;
use crate::cli::PipelineArgs;

/// The side-effect stages of a run, before and after the runtime starts.
#[derive(Default)]
pub struct SideEffects {
    pub effects: Option<Arc<Effects>>,
    /// Dependency → virtual listener port, for the guard.
    pub virtual_deps: Vec<(SocketAddrV4, u16)>,
    listeners: Vec<(SocketAddr, std::net::TcpListener)>,
}

/// Validates the flags and binds the virtual dependency listeners (in the candidate's
/// network namespace, on 127.0.0.1, where the guard sends its connects).
pub fn prepare(
    p: &PipelineArgs,
    masker: &Arc<Masker>,
    templater: &Arc<RouteTemplater>,
) -> anyhow::Result<SideEffects> {
    if p.dependencies.is_empty() {
        return Ok(SideEffects::default());
    }
    let mut out = SideEffects::default();
    if p.virtualize_egress {
        if p.guard.no_egress_guard {
            return Err(usage(
                "--virtualize-egress needs the egress guard (it redirects the candidate's connects); drop --no-egress-guard",
            ));
        }
        let netns = p.guard.candidate_netns.as_deref().map(sandbox::netns_path);
        for dep in &p.dependencies {
            let SocketAddr::V4(v4) = dep else {
                return Err(usage(format!(
                    "--virtualize-egress: dependency {dep} is IPv6; only IPv4 dependencies can be virtualized"
                )));
            };
            let listener = in_netns(netns.as_deref(), || {
                let l = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
                l.set_nonblocking(true)?;
                Ok(l)
            })
            .map_err(|e| anyhow::anyhow!("binding the virtual dependency for {dep}: {e}"))?;
            out.virtual_deps.push((*v4, listener.local_addr()?.port()));
            out.listeners.push((*dep, listener));
        }
    }
    let cfg = EffectsConfig {
        dependencies: Dependencies::new(p.dependencies.clone()),
        propagation: Propagation::new(&p.propagation_headers),
        virtualize: p.virtualize_egress,
        limits: BookLimits::default(),
        // Under the replay timeout, so a waiting call still gets its answer in time.
        wait: RECORDING_WAIT.min(p.timeout * 4 / 5),
    };
    out.effects = Some(Arc::new(Effects::new(
        cfg,
        masker.clone(),
        templater.clone(),
    )));
    Ok(out)
}

impl SideEffects {
    /// Server ports the tap (or the capture file filter) must also take.
    pub fn extra_ports(p: &PipelineArgs) -> Vec<u16> {
        Dependencies::new(p.dependencies.clone()).ports()
    }

    /// Starts the recorder and the virtual listeners (inside the runtime) and lets the
    /// capture hand dependency exchanges over.
    pub fn start(&mut self, settings: &mut CaptureSettings) -> anyhow::Result<()> {
        let Some(effects) = &self.effects else {
            return Ok(());
        };
        let (tap, rx) = effects.outbound_tap();
        settings.outbound = Some(tap);
        tokio::spawn(recorder(effects.clone(), rx));
        for (dep, l) in self.listeners.drain(..) {
            let listener = tokio::net::TcpListener::from_std(l)?;
            tracing::info!(dependency = %dep, listener = %listener.local_addr()?, "virtual dependency: the candidate's calls are answered from legacy's recordings");
            tokio::spawn(virtual_dep::serve(listener, effects.clone(), dep));
        }
        Ok(())
    }

    /// One line for the end of the run.
    pub fn summary(&self) -> Option<String> {
        self.effects
            .as_ref()
            .map(|e| format!("side effects: {}", e.figures()))
    }
}
