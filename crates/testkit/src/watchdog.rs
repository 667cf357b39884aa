//! A stand-in watchdog device for tests (our machines have no `/dev/watchdog`): a named pipe
//! read by a thread of the test, speaking Patroni's `testing` driver protocol — `Ctimeout=N\n`
//! when the agent activates it, `1` per keepalive, `V` before a clean close. When it is not fed
//! within its timeout it "resets the machine": it calls the test's `reset` (which kills that
//! host's PostgreSQL) and records when.
//!
//! A close without the `V` (the agent was killed) leaves it armed, as the kernel's watchdog
//! does. The thread polls the pipe every 10 ms; the reset margin the agent assumes (250 ms)
//! covers that.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the stand-in saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WdEvent {
    Activated {
        timeout: Duration,
        at: Instant,
    },
    Fed(Instant),
    /// The magic `V`: disabled cleanly.
    Disabled(Instant),
    /// Not fed in time: the machine was reset.
    Fired(Instant),
}

struct State {
    events: Vec<WdEvent>,
    /// The timeout and last keepalive while armed.
    armed: Option<(Duration, Instant)>,
    feeds: usize,
}

/// The stand-in; stops (and removes its pipe) on drop.
pub struct StandInWatchdog {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    state: Arc<Mutex<State>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StandInWatchdog {
    /// Makes the pipe at `path` and starts reading it. `reset` runs (on the stand-in's thread)
    /// when the watchdog fires.
    pub fn start(path: &Path, reset: impl Fn() + Send + 'static) -> anyhow::Result<Self> {
        let _ = std::fs::remove_file(path);
        nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600))?;
        // Read side first: the agent opens the write side without blocking, which fails when
        // nobody reads.
        let mut pipe = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path)?;
        let stop = Arc::new(AtomicBool::new(false));
        let state = Arc::new(Mutex::new(State { events: Vec::new(), armed: None, feeds: 0 }));
        let (s, st) = (stop.clone(), state.clone());
        let thread = std::thread::Builder::new().name("watchdog-stand-in".into()).spawn(move || {
            let mut pending = String::new();
            let mut buf = [0u8; 256];
            while !s.load(Ordering::SeqCst) {
                // EOF (no writer) and EAGAIN (nothing written) both mean: nothing new.
                if let Ok(n) = pipe.read(&mut buf) {
                    pending.push_str(&String::from_utf8_lossy(&buf[..n]));
                }
                let now = Instant::now();
                let mut g = st.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                while !pending.is_empty() {
                    if pending.starts_with('C') {
                        let Some(end) = pending.find('\n') else { break };
                        let secs = pending[1..end].trim_start_matches("timeout=").parse::<u64>().unwrap_or(0);
                        let timeout = Duration::from_secs(secs);
                        g.armed = Some((timeout, now));
                        g.events.push(WdEvent::Activated { timeout, at: now });
                        pending.drain(..=end);
                        continue;
                    }
                    match pending.remove(0) {
                        '1' => {
                            if let Some((t, _)) = g.armed {
                                g.armed = Some((t, now));
                                g.feeds += 1;
                            }
                        }
                        'V' => {
                            g.armed = None;
                            g.events.push(WdEvent::Disabled(now));
                        }
                        _ => {}
                    }
                }
                if let Some((timeout, last)) = g.armed
                    && now > last + timeout
                {
                    g.armed = None;
                    g.events.push(WdEvent::Fired(now));
                    drop(g);
                    reset();
                    continue;
                }
                drop(g);
                std::thread::sleep(Duration::from_millis(10));
            }
        })?;
        Ok(Self { path: path.to_owned(), stop, state, thread: Some(thread) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn events(&self) -> Vec<WdEvent> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner).events.clone()
    }

    /// Keepalives received so far.
    pub fn feeds(&self) -> usize {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner).feeds
    }

    pub fn armed(&self) -> bool {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner).armed.is_some()
    }

    /// When it fired, if it did.
    pub fn fired_at(&self) -> Option<Instant> {
        self.events().iter().find_map(|e| if let WdEvent::Fired(at) = e { Some(*at) } else { None })
    }
}

impl Drop for StandInWatchdog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}
