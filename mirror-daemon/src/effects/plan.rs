//! The side-effect stages of a run as its plan holds them: the shared [`Effects`] and,
//! with `--virtualize-egress`, the virtual dependency listeners, bound before the fence
//! (the guard redirects the candidate's connects to their ports) and served once the
//! pipeline starts.
use std::{
    io,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::Path,
    sync::Arc,
};

use super::{Effects, EffectsConfig, recorder, virtual_dep};
use crate::{
    app::capture_loop::CaptureSettings, compare::RouteTemplater, guard::dns::in_netns, mask::Masker,
};

/// Side effects, configured and (virtual listeners) bound; nothing runs yet.
#[derive(Debug)]
pub struct EffectsPlan {
    pub effects: Arc<Effects>,
    /// Dependency → port of its virtual listener on the candidate's 127.0.0.1, for the
    /// guard (`FenceConfig::virtual_deps`).
    pub virtual_deps: Vec<(SocketAddrV4, u16)>,
    listeners: Vec<(SocketAddr, std::net::TcpListener)>,
}

impl EffectsPlan {
    /// Builds the shared state; with `cfg.virtualize`, binds one listener per dependency
    /// on 127.0.0.1 in the candidate's network namespace `netns` (where the guard sends
    /// its connects). Only IPv4 dependencies can be virtualized.
    pub fn new(
        cfg: EffectsConfig,
        masker: Arc<Masker>,
        templater: Arc<RouteTemplater>,
        netns: Option<&Path>,
    ) -> io::Result<Self> {
        let mut virtual_deps = Vec::new();
        let mut listeners = Vec::new();
        if cfg.virtualize {
            for dep in cfg.dependencies.endpoints() {
                let SocketAddr::V4(v4) = dep else {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!(
                            "dependency {dep} is IPv6; only IPv4 dependencies can be virtualized"
                        ),
                    ));
                };
                let listener = in_netns(netns, || {
                    let l = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
                    l.set_nonblocking(true)?;
                    Ok(l)
                })
                .map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("binding the virtual dependency for {dep}: {e}"),
                    )
                })?;
                virtual_deps.push((*v4, listener.local_addr()?.port()));
                listeners.push((*dep, listener));
            }
        }
        Ok(Self {
            effects: Arc::new(Effects::new(cfg, masker, templater)),
            virtual_deps,
            listeners,
        })
    }

    /// Starts the recorder and the virtual listeners (must run inside the runtime) and
    /// lets the capture hand dependency exchanges over: call it before the capture thread
    /// is spawned with `settings`.
    pub fn start(self, settings: &mut CaptureSettings) -> io::Result<Arc<Effects>> {
        let (tap, rx) = self.effects.outbound_tap();
        settings.outbound = Some(tap);
        tokio::spawn(recorder(self.effects.clone(), rx));
        for (dep, l) in self.listeners {
            let listener = tokio::net::TcpListener::from_std(l)?;
            tracing::info!(dependency = %dep, listener = %listener.local_addr()?, "virtual dependency: the candidate's calls are answered from legacy's recordings");
            tokio::spawn(virtual_dep::serve(listener, self.effects.clone(), dep));
        }
        Ok(self.effects)
    }
}
