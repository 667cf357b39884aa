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
            anyhow::bail!("timed out after {timeout:?} waiting for: {what}");
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
                anyhow::bail!("timed out after {timeout:?} waiting for: {what} (last error: {e:#})")
            }
            Err(_) => std::thread::sleep(POLL),
        }
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
