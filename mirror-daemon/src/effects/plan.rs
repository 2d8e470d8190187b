//! The side-effect stages of a run as its plan holds them: the shared [`Effects`] and,
//! with `--virtualize-egress`, the virtual dependency listeners, bound before the fence
//! (the guard redirects the candidate's connects to their ports) and served once the
//! pipeline starts.
use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::Path,
    sync::Arc,
};

use super::{Effects, EffectsConfig, recorder, virtual_dep, virtual_smtp};
use crate::{
    app::capture_loop::CaptureSettings, compare::RouteTemplater, guard::dns::in_netns, mask::Masker,
};

/// Side effects, configured and (virtual listeners) bound; nothing runs yet.
#[derive(Debug)]
pub struct EffectsPlan {
    pub effects: Arc<Effects>,
    /// Dependency → port of its virtual listener on the candidate's loopback of the same
    /// family (127.0.0.1 or [::1]), for the guard (`FenceConfig::virtual_deps`).
    pub virtual_deps: Vec<(SocketAddr, u16)>,
    listeners: Vec<(SocketAddr, std::net::TcpListener)>,
}

impl EffectsPlan {
    /// Builds the shared state; with `cfg.virtualize`, binds one listener per dependency
    /// on the loopback of its family (127.0.0.1, or [::1] for an IPv6 dependency) in the
    /// candidate's network namespace `netns` (where the guard sends its connects).
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
                let loopback = match dep {
                    SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                    SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
                };
                let listener = in_netns(netns, || {
                    let l = std::net::TcpListener::bind((loopback, 0))?;
                    l.set_nonblocking(true)?;
                    Ok(l)
                })
                .map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!(
                            "binding the virtual dependency for {dep} on {loopback} in the candidate's network namespace (an IPv6 dependency needs IPv6 loopback there): {e}"
                        ),
                    )
                })?;
                virtual_deps.push((*dep, listener.local_addr()?.port()));
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
            if self.effects.config().dependencies.is_smtp(&dep) {
                tracing::info!(dependency = %dep, listener = %listener.local_addr()?, "virtual mail relay: the candidate's messages are accepted, kept as side effects and never delivered");
                tokio::spawn(virtual_smtp::serve(listener, self.effects.clone(), dep));
                continue;
            }
            tracing::info!(dependency = %dep, listener = %listener.local_addr()?, "virtual dependency: the candidate's calls are answered from legacy's recordings");
            tokio::spawn(virtual_dep::serve(listener, self.effects.clone(), dep));
        }
        Ok(self.effects)
    }
}
