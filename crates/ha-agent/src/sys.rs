//! The two edges of ha-agent that need `unsafe`, and the only module allowed it:
//!
//! - [`Device`], the watchdog device: Linux's watchdog API on `/dev/watchdog` (its ioctls
//!   have no safe wrapper), or Patroni's `testing` driver, a named pipe that a stand-in
//!   process reads;
//! - [`BootTimer`], a `CLOCK_BOOTTIME` timerfd registered with tokio (tokio's registration of
//!   a raw fd is `unsafe`: the fd must stay open while registered).
//!
//! Lifecycle, as Patroni does it: open (the device's timer starts), set the timeout, write
//! `1` for each keepalive, and write the magic `V` before closing to disable it. A process
//! that dies without the `V` leaves the timer running, and the machine is reset.
//!
//! The testing driver (Patroni's `TestingWatchdogDevice`) writes the same bytes to the pipe,
//! plus `Ctimeout=N\n` where the real driver would set the timeout with an ioctl. It is opened
//! without blocking: with no reader on the pipe, opening fails (the watchdog is unavailable).
#![allow(unsafe_code)]

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::time::Duration;

use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use tokio::io::unix::AsyncFd;

use crate::core::watchdog::{Driver, Settings};

/// A one-shot `CLOCK_BOOTTIME` timer registered with tokio: it fires at an absolute boot
/// time, also when that passed while the machine was suspended (it fires on resume).
pub struct BootTimer(AsyncFd<TimerFdRaw>);

/// A timerfd with the `AsRawFd` tokio wants. The fd is owned (closed on drop).
pub struct TimerFdRaw(TimerFd);

impl AsRawFd for TimerFdRaw {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

impl BootTimer {
    /// A timer firing when CLOCK_BOOTTIME reaches `absolute`.
    pub fn at(absolute: Duration) -> std::io::Result<Self> {
        let fd = TimerFd::new(ClockId::CLOCK_BOOTTIME, TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC)?;
        fd.set(Expiration::OneShot(TimeSpec::from_duration(absolute)), TimerSetTimeFlags::TFD_TIMER_ABSTIME)?;
        // SAFETY: the fd belongs to the `TimerFd` moved into the `AsyncFd`; it stays open and
        // is the same fd until the `AsyncFd` (and with it the `TimerFd`) is dropped, and
        // `as_raw_fd` always returns it.
        let registered = unsafe { AsyncFd::register_with_interest(TimerFdRaw(fd), tokio::io::Interest::READABLE) };
        registered.map(Self).map_err(|e| std::io::Error::other(e.to_string()))
    }

    /// Waits until the timer fired.
    pub async fn fired(&self) {
        loop {
            let Ok(mut ready) = self.0.readable().await else { return };
            match ready.get_inner().0.wait() {
                Ok(()) => return,
                Err(nix::errno::Errno::EAGAIN) => ready.clear_ready(),
                Err(_) => return,
            }
        }
    }
}

/// `struct watchdog_info` from `<linux/watchdog.h>`.
#[repr(C)]
#[derive(Default)]
struct WatchdogInfo {
    options: u32,
    firmware_version: u32,
    identity: [u8; 32],
}

const WDIOF_SETTIMEOUT: u32 = 0x0080;
const WDIOF_MAGICCLOSE: u32 = 0x0100;

nix::ioctl_read!(wdioc_getsupport, b'W', 0, WatchdogInfo);
nix::ioctl_readwrite!(wdioc_settimeout, b'W', 6, libc::c_int);
nix::ioctl_read!(wdioc_gettimeout, b'W', 7, libc::c_int);

/// An open watchdog.
pub struct Device {
    file: File,
    /// The timeout the device actually uses.
    timeout: Duration,
    /// The device stops when closed without the magic byte (a killed agent would disarm it).
    stops_on_close: bool,
}

impl Device {
    /// Opens the device and sets `timeout`. The returned device's [`Device::timeout`] is what
    /// the device accepted (a driver may round it).
    pub fn open(s: &Settings, timeout: Duration) -> Result<Self, String> {
        let path = s.device.display();
        let secs = libc::c_int::try_from(timeout.as_secs()).map_err(|_| format!("timeout {timeout:?} too large"))?;
        match s.driver {
            Driver::Testing => {
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_NONBLOCK)
                    .open(&s.device)
                    .map_err(|e| format!("open {path}: {e}"))?;
                file.write_all(format!("Ctimeout={secs}\n").as_bytes()).map_err(|e| format!("write {path}: {e}"))?;
                Ok(Self { file, timeout, stops_on_close: false })
            }
            Driver::Linux => {
                // Non-blocking: a path that is not a device (a pipe without reader) must not
                // hang the lease keeper; watchdog devices never block a write anyway.
                let file = std::fs::OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK)
                    .open(&s.device)
                    .map_err(|e| format!("open {path}: {e}"))?;
                let mut dev = Self { file, timeout, stops_on_close: true };
                let mut info = WatchdogInfo::default();
                // SAFETY: the fd is open for the whole call and `info` is a valid, writable
                // `struct watchdog_info` of the size the ioctl number encodes.
                if let Err(e) = unsafe { wdioc_getsupport(dev.file.as_raw_fd(), &mut info) } {
                    dev.disable();
                    return Err(format!("{path} is not a watchdog (WDIOC_GETSUPPORT: {e})"));
                }
                dev.stops_on_close = info.options & WDIOF_MAGICCLOSE == 0;
                if info.options & WDIOF_SETTIMEOUT == 0 {
                    dev.disable();
                    return Err(format!("{path} cannot set its timeout"));
                }
                let mut t = secs;
                // SAFETY: as above; `t` is a valid c_int the kernel reads and overwrites with
                // the timeout it set.
                if let Err(e) = unsafe { wdioc_settimeout(dev.file.as_raw_fd(), &mut t) } {
                    dev.disable();
                    return Err(format!("{path}: WDIOC_SETTIMEOUT {secs}: {e}"));
                }
                let mut actual: libc::c_int = 0;
                // SAFETY: as above; the kernel writes one c_int.
                if unsafe { wdioc_gettimeout(dev.file.as_raw_fd(), &mut actual) }.is_ok() && actual > 0 {
                    t = actual;
                }
                dev.timeout = Duration::from_secs(u64::try_from(t.max(1)).unwrap_or(1));
                if dev.stops_on_close {
                    tracing::warn!(
                        device = %path,
                        "the watchdog driver has no magic close: an agent that is killed disarms it (only a hang is covered)"
                    );
                }
                Ok(dev)
            }
        }
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// One keepalive.
    pub fn feed(&mut self) -> std::io::Result<()> {
        self.file.write_all(b"1")
    }

    /// Disables the watchdog (magic close) and closes the device.
    pub fn close(mut self) -> std::io::Result<()> {
        self.file.write_all(b"V")
    }

    fn disable(&mut self) {
        let _ = self.file.write_all(b"V");
    }
}

/// Patroni's `is_healthy` for a required watchdog: the device exists and we may write it.
pub fn usable(s: &Settings) -> bool {
    nix::unistd::access(&s.device, nix::unistd::AccessFlags::W_OK).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn fifo(dir: &std::path::Path) -> std::path::PathBuf {
        let p = dir.join("watchdog");
        nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
        p
    }

    #[test]
    fn the_testing_driver_speaks_patronis_pipe_protocol() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = fifo(dir.path());
        let s = Settings { device: path.clone(), driver: Driver::Testing, ..Settings::default() };
        // No reader: opening fails rather than blocking.
        assert!(Device::open(&s, Duration::from_secs(3)).is_err());
        let mut reader = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path)
            .expect("open the pipe for reading");
        let mut d = Device::open(&s, Duration::from_secs(3)).expect("open with a reader");
        assert_eq!(d.timeout(), Duration::from_secs(3));
        d.feed().expect("feed");
        d.feed().expect("feed");
        d.close().expect("close");
        let mut got = String::new();
        reader.read_to_string(&mut got).expect("read");
        assert_eq!(got, "Ctimeout=3\n11V");
    }

    #[test]
    fn a_file_that_is_not_a_watchdog_is_refused_by_the_linux_driver() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = fifo(dir.path());
        let _reader =
            std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(&path).expect("reader");
        let s = Settings { device: path, driver: Driver::Linux, ..Settings::default() };
        let e = Device::open(&s, Duration::from_secs(3)).err().expect("a pipe has no watchdog ioctls");
        assert!(e.contains("is not a watchdog"), "{e}");
        assert!(usable(&s), "the path itself is writable");
        let gone = Settings { device: "/nonexistent/watchdog".into(), ..Settings::default() };
        assert!(!usable(&gone));
    }
}
