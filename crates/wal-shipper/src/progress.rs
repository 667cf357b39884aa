//! Progress of a long operation (backup-push, backup-fetch, delete): a bar with bytes done,
//! rate and time left on a terminal; structured log lines every 10 s otherwise.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A shared byte counter with a reporter that runs until [`Progress::finish`].
#[derive(Clone)]
pub struct Progress {
    done: Arc<AtomicU64>,
    stop: tokio_util::sync::CancellationToken,
}

impl Progress {
    /// Starts reporting `what` against `total` bytes (0 if unknown).
    pub fn start(what: &'static str, total: u64) -> Progress {
        let p = Progress { done: Arc::new(AtomicU64::new(0)), stop: tokio_util::sync::CancellationToken::new() };
        let (done, stop) = (p.done.clone(), p.stop.clone());
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = indicatif::ProgressBar::new(total);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{msg} {bar:30} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            ) {
                b.set_style(style);
            }
            b.set_message(what);
            b
        });
        tokio::spawn(async move {
            let started = Instant::now();
            let every = if bar.is_some() { Duration::from_millis(200) } else { Duration::from_secs(10) };
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(every) => {}
                }
                let n = done.load(Ordering::Relaxed);
                match &bar {
                    Some(b) => b.set_position(n),
                    None => {
                        let secs = started.elapsed().as_secs_f64().max(0.001);
                        let rate = n as f64 / secs;
                        let left = if rate > 0.0 && total > n { (total - n) as f64 / rate } else { 0.0 };
                        tracing::info!(
                            operation = what,
                            bytes_done = n,
                            bytes_total = total,
                            mb_per_s = format!("{:.1}", rate / 1e6),
                            seconds_left = left.round() as u64,
                            "progress"
                        );
                    }
                }
            }
            if let Some(b) = bar {
                b.finish_and_clear();
            }
        });
        p
    }

    pub fn add(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
    }

    pub fn counter(&self) -> Arc<AtomicU64> {
        self.done.clone()
    }

    pub fn finish(&self) {
        self.stop.cancel();
    }
}
