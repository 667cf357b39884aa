use std::time::{Duration, Instant};

const POLL: Duration = Duration::from_millis(25);

/// Polls `cond` until it returns `Some`, for at most `timeout`. On timeout the error says what
/// was awaited. The loop is bounded in time, and sleeps between polls.
pub fn wait_until<T>(timeout: Duration, what: &str, mut cond: impl FnMut() -> Option<T>) -> anyhow::Result<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = cond() {
            return Ok(v);
        }
        if start.elapsed() >= timeout {
            anyhow::bail!("timed out after {timeout:?} waiting for: {what} [{}]", crate::sys::machine_state());
        }
        std::thread::sleep(POLL);
    }
}

/// Like [`wait_until`] for a fallible probe: retries until it succeeds, and reports the last
/// error on timeout.
pub fn wait_ok<T>(timeout: Duration, what: &str, mut probe: impl FnMut() -> anyhow::Result<T>) -> anyhow::Result<T> {
    let start = Instant::now();
    loop {
        match probe() {
            Ok(v) => return Ok(v),
            Err(e) if start.elapsed() >= timeout => {
                anyhow::bail!(
                    "timed out after {timeout:?} waiting for: {what} (last error: {e:#}) [{}]",
                    crate::sys::machine_state()
                )
            }
            Err(_) => std::thread::sleep(POLL),
        }
    }
}

/// Checks `ok` for the whole of `d` and fails at once when it stops holding: an observation
/// window for "nothing must happen meanwhile", not a sleep.
pub fn hold_for(d: Duration, what: &str, mut ok: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<()> {
    let end = Instant::now() + d;
    loop {
        ok().map_err(|e| e.context(format!("while checking that {what}")))?;
        if Instant::now() >= end {
            return Ok(());
        }
        std::thread::sleep(POLL.max(Duration::from_millis(50)).min(end.saturating_duration_since(Instant::now())));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeout_error_names_what_was_awaited() {
        let e = wait_until::<()>(Duration::from_millis(60), "the moon to turn blue", || None).unwrap_err();
        assert!(e.to_string().contains("the moon to turn blue"), "{e}");
        let e = wait_ok::<()>(Duration::from_millis(60), "x", || anyhow::bail!("still red")).unwrap_err();
        assert!(format!("{e}").contains("still red"), "{e}");
    }

    #[test]
    fn hold_for_fails_as_soon_as_the_condition_breaks() {
        let mut n = 0;
        let t0 = Instant::now();
        let e = hold_for(Duration::from_secs(10), "n stays small", || {
            n += 1;
            if n < 3 { Ok(()) } else { anyhow::bail!("n is {n}") }
        })
        .unwrap_err();
        assert!(t0.elapsed() < Duration::from_secs(2), "failed at once, not after the window");
        assert!(format!("{e:#}").contains("n stays small"), "{e:#}");
        let mut checks = 0;
        hold_for(Duration::from_millis(200), "always", || {
            checks += 1;
            Ok(())
        })
        .unwrap();
        assert!(checks >= 2, "checked throughout the window, {checks} times");
    }

    #[test]
    fn returns_the_value_once_the_condition_holds() {
        let mut n = 0;
        let v = wait_until(Duration::from_secs(2), "n to reach 3", || {
            n += 1;
            (n >= 3).then_some(n)
        })
        .unwrap();
        assert_eq!(v, 3);
    }
}
