//! The one source of stop and reload requests for every command: the only place signal
//! handlers are installed. SIGINT and SIGTERM ask a command to stop (async code waits on
//! [`Stop::wait`], threads and synchronous loops read [`Stop::requested`]); SIGHUP asks
//! `run`/`replay` to re-read their configuration and is only handled where asked for
//! (elsewhere it keeps its default action).
//!
//! A thread of its own listens (tokio's signal driver on a one-thread runtime), so sync
//! commands without a runtime get the same notification as async ones.
use std::sync::{
    Arc, Mutex,
    atomic::{AtomicBool, Ordering},
};

use anyhow::Context as _;
use tokio::{
    signal::unix::{Signal, SignalKind, signal},
    sync::watch,
};

/// Stop requests: the first stop signal's name, once one arrived.
#[derive(Clone, Debug)]
pub struct Stop {
    by: watch::Receiver<Option<&'static str>>,
    flag: Arc<AtomicBool>,
}

impl Stop {
    /// Whether a stop was requested (for threads and synchronous loops).
    pub fn requested(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    /// Waits for a stop request; returns the signal's name (`SIGINT`, `SIGTERM`).
    pub async fn wait(&mut self) -> &'static str {
        match self.by.wait_for(Option::is_some).await {
            Ok(by) => by.unwrap_or("a signal"),
            // The listener never ends; if it did, no stop can come any more.
            Err(_) => std::future::pending().await,
        }
    }
}

/// Reload requests (SIGHUP).
#[derive(Clone, Debug)]
pub struct Reloads(watch::Receiver<u64>);

impl Reloads {
    /// Waits for the next reload request.
    pub async fn next(&mut self) {
        if self.0.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// What a command listens to.
#[derive(Clone, Debug)]
pub struct Signals {
    pub stop: Stop,
    pub reloads: Reloads,
}

/// Whether SIGHUP is taken (as a reload request) or left to its default action.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hangup {
    Reload,
    Default,
}

static INSTALLED: Mutex<Option<Signals>> = Mutex::new(None);

/// Installs the handlers (once per process; the first call decides about SIGHUP) and
/// returns the requests. Handlers are in place when this returns.
pub fn install(hangup: Hangup) -> anyhow::Result<Signals> {
    let mut installed = INSTALLED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(s) = installed.as_ref() {
        return Ok(s.clone());
    }
    let (stop_tx, by) = watch::channel(None);
    let (reload_tx, reloads) = watch::channel(0u64);
    let flag = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
    let thread_flag = flag.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let listen = || -> std::io::Result<_> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                let streams = rt.block_on(async { Streams::new(hangup) })?;
                Ok((rt, streams))
            };
            let (rt, streams) = match listen() {
                Ok(x) => x,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(()));
            rt.block_on(streams.forward(&thread_flag, &stop_tx, &reload_tx));
        })
        .context("starting the signal listener")?;
    ready_rx
        .recv()
        .context("the signal listener ended")?
        .context("installing signal handlers")?;
    let signals = Signals {
        stop: Stop { by, flag },
        reloads: Reloads(reloads),
    };
    *installed = Some(signals.clone());
    Ok(signals)
}

struct Streams {
    interrupt: Signal,
    terminate: Signal,
    hangup: Option<Signal>,
}

impl Streams {
    fn new(hangup: Hangup) -> std::io::Result<Self> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
            hangup: match hangup {
                Hangup::Reload => Some(signal(SignalKind::hangup())?),
                Hangup::Default => None,
            },
        })
    }

    /// Turns signals into requests, forever.
    async fn forward(
        mut self,
        flag: &AtomicBool,
        stop: &watch::Sender<Option<&'static str>>,
        reload: &watch::Sender<u64>,
    ) {
        loop {
            let hangup = async {
                match self.hangup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            };
            let name = tokio::select! {
                _ = self.interrupt.recv() => "SIGINT",
                _ = self.terminate.recv() => "SIGTERM",
                _ = hangup => {
                    reload.send_modify(|n| *n += 1);
                    continue;
                }
            };
            flag.store(true, Ordering::SeqCst);
            // The first stop names the reason; later ones change nothing.
            stop.send_if_modified(|by| by.is_none() && by.replace(name).is_none());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Real signals to this process: the handlers stay ours (the process lives on), a
    /// SIGHUP is a reload request, the first stop signal names the stop for async code
    /// and sets the flag threads read, and a second install returns the same source.
    #[test]
    fn one_source_turns_signals_into_stop_and_reload_requests() {
        let mut signals = install(Hangup::Reload).expect("install");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let limit = std::time::Duration::from_secs(30);
            nix::sys::signal::raise(nix::sys::signal::Signal::SIGHUP).expect("raise SIGHUP");
            tokio::time::timeout(limit, signals.reloads.next())
                .await
                .expect("a reload request");
            assert!(!signals.stop.requested(), "a reload is not a stop");
            nix::sys::signal::raise(nix::sys::signal::Signal::SIGTERM).expect("raise SIGTERM");
            let by = tokio::time::timeout(limit, signals.stop.wait())
                .await
                .expect("a stop request");
            assert_eq!(by, "SIGTERM");
            nix::sys::signal::raise(nix::sys::signal::Signal::SIGINT).expect("raise SIGINT");
            let mut again = install(Hangup::Default).expect("second install");
            assert!(again.stop.requested(), "the same flag");
            assert_eq!(
                again.stop.wait().await,
                "SIGTERM",
                "the first stop names it"
            );
        });
    }
}
