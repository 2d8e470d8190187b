//! Progress on long runs: a live line on a terminal, plain periodic lines otherwise
//! (journald, CI logs).
use std::{
    io::IsTerminal as _,
    time::{Duration, Instant},
};

pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
    last_plain: Instant,
    plain_every: Duration,
}

impl Progress {
    pub fn new() -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Self {
            bar,
            last_plain: Instant::now(),
            plain_every: Duration::from_secs(5),
        }
    }

    pub fn update(&mut self, msg: &str) {
        match &self.bar {
            Some(bar) => bar.set_message(msg.to_string()),
            None => {
                if self.last_plain.elapsed() >= self.plain_every {
                    self.last_plain = Instant::now();
                    eprintln!("{msg}");
                }
            }
        }
    }

    pub fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}
