//! HAProxy's agent-check protocol: HAProxy connects to a TCP port, optionally sends a line
//! (`agent-send`), and reads one line of state words back.
//!
//! The line it sends here is a check target with Patroni's paths (`/replica?lag=64MB`); with no
//! line, the configured default check is answered. The answer is the verdict as HAProxy's
//! words: `up` with a weight that falls as a replica's lag grows (so HAProxy sheds load from a
//! lagging replica before dropping it), `drain` past the drain lag, `maint` for a member tagged
//! `noloadbalance`, `down` for any other failing check.
//!
//! Answers that pass start with `ready`, which lifts a `drain` or `maint` set earlier. The
//! agent therefore owns the admin state of the servers it checks; to take one out by hand, tag
//! it `noloadbalance` or `disable agent` on HAProxy's CLI first. HAProxy treats an agent it
//! cannot reach as no news, so the agent adds weights to the HTTP check and never replaces it.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::check::Check;
use crate::config::AgentSettings;
use crate::metrics::BadKind;
use crate::verdict::{Reason, Verdict};

/// The state word of an answer (metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentWord {
    Up,
    Drain,
    Maint,
    Down,
}

impl AgentWord {
    pub const ALL: [AgentWord; 4] = [AgentWord::Up, AgentWord::Drain, AgentWord::Maint, AgentWord::Down];

    pub fn as_str(self) -> &'static str {
        match self {
            AgentWord::Up => "up",
            AgentWord::Drain => "drain",
            AgentWord::Maint => "maint",
            AgentWord::Down => "down",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// One agent answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentAnswer {
    /// `ready up <weight>%`.
    Up { weight: u8 },
    /// `up drain`: healthy, but too far behind to take new connections.
    Drain,
    /// `maint`: taken out of load balancing on purpose (`noloadbalance`).
    Maint,
    /// `down#<reason>`.
    Down { reason: &'static str },
}

impl AgentAnswer {
    pub fn word(&self) -> AgentWord {
        match self {
            AgentAnswer::Up { .. } => AgentWord::Up,
            AgentAnswer::Drain => AgentWord::Drain,
            AgentAnswer::Maint => AgentWord::Maint,
            AgentAnswer::Down { .. } => AgentWord::Down,
        }
    }
}

impl fmt::Display for AgentAnswer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AgentAnswer::Up { weight } => writeln!(f, "ready up {weight}%"),
            AgentAnswer::Drain => f.write_str("up drain\n"),
            AgentAnswer::Maint => f.write_str("maint\n"),
            AgentAnswer::Down { reason } => writeln!(f, "down#{reason}"),
        }
    }
}

/// The weight of a replica `lag` bytes behind: 100% in sync, falling linearly to 1% at
/// `drain_lag`.
pub fn weight(lag: u64, drain_lag: u64) -> u8 {
    let drain_lag = drain_lag.max(1);
    let lost = (u128::from(lag.min(drain_lag)) * 99 / u128::from(drain_lag)) as u8;
    100 - lost
}

/// The answer for a verdict (pure).
pub fn answer(verdict: &Verdict, drain_lag: u64) -> AgentAnswer {
    if verdict.reason == Reason::NoLoadBalance {
        return AgentAnswer::Maint;
    }
    if !verdict.ok {
        return AgentAnswer::Down { reason: verdict.reason.code() };
    }
    match verdict.lag {
        Some(lag) if lag > drain_lag => AgentAnswer::Drain,
        Some(lag) => AgentAnswer::Up { weight: weight(lag, drain_lag) },
        None => AgentAnswer::Up { weight: 100 },
    }
}

/// The longest `agent-send` line read; HAProxy's are short.
const MAX_LINE: usize = 512;

/// Serves agent checks until `stop`. Connections over the limit are closed at once.
pub async fn serve(listener: TcpListener, settings: AgentSettings, app: Arc<App>, stop: CancellationToken) {
    let permits = Arc::new(Semaphore::new(settings.max_connections));
    let settings = Arc::new(settings);
    loop {
        let stream = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((s, _)) => s,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "agent: accept");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else { continue };
        let (app, settings) = (app.clone(), settings.clone());
        tokio::spawn(async move {
            // A client that reads nothing cannot hold the connection: the whole exchange is
            // bounded.
            let deadline = settings.read_timeout + Duration::from_secs(1);
            let _ = tokio::time::timeout(deadline, exchange(stream, &settings, &app)).await;
            drop(permit);
        });
    }
}

async fn exchange(mut stream: TcpStream, settings: &AgentSettings, app: &App) {
    let line = read_line(&mut stream, settings.read_timeout).await;
    let parsed = match line.as_deref().map(str::trim) {
        None | Some("") => Ok(settings.default_check.clone()),
        Some(target) => Check::parse_target(target),
    };
    let answer = match parsed {
        Ok(check) => {
            let verdict = app.decide(&check);
            app.metrics.check(check.endpoint, &verdict);
            answer(&verdict, settings.drain_lag)
        }
        Err(_) => {
            app.metrics.bad_request(BadKind::Agent);
            AgentAnswer::Down { reason: "bad_request" }
        }
    };
    app.metrics.agent_answer(answer.word());
    let _ = stream.write_all(answer.to_string().as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// Reads up to a newline, for at most `wait`. `None` when nothing arrived (no `agent-send`).
async fn read_line(stream: &mut TcpStream, wait: Duration) -> Option<String> {
    let mut buf = Vec::with_capacity(64);
    let read = async {
        let mut chunk = [0u8; 128];
        while buf.len() < MAX_LINE {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    if buf.contains(&b'\n') {
                        break;
                    }
                }
            }
        }
    };
    let _ = tokio::time::timeout(wait, read).await;
    let line = buf.split(|b| *b == b'\n').next().unwrap_or_default();
    (!line.is_empty()).then(|| String::from_utf8_lossy(line).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verdict::Role;
    use crate::view::PgFailure;

    const MB: u64 = 1 << 20;

    fn ok(lag: Option<u64>) -> Verdict {
        Verdict { ok: true, reason: Reason::IsReplica, role: Role::Replica, lag }
    }

    #[test]
    fn weight_falls_linearly_with_lag_to_one_percent_at_the_drain_lag() {
        let cases = [(0, 100), (MB, 94), (8 * MB, 51), (16 * MB - 1, 2), (16 * MB, 1), (64 * MB, 1)];
        for (lag, want) in cases {
            assert_eq!(weight(lag, 16 * MB), want, "lag {lag}");
        }
        assert_eq!(weight(5, 0), 1, "a zero drain lag does not divide by zero");
    }

    #[test]
    fn answers_for_each_kind_of_verdict() {
        let cases = [
            ("in_sync_replica", ok(Some(0)), "ready up 100%\n"),
            ("lagging_replica", ok(Some(8 * MB)), "ready up 51%\n"),
            ("replica_past_the_drain_lag", ok(Some(17 * MB)), "up drain\n"),
            (
                "primary_has_no_lag",
                Verdict { ok: true, reason: Reason::IsPrimary, role: Role::Primary, lag: None },
                "ready up 100%\n",
            ),
            (
                "noloadbalance_is_maintenance",
                Verdict { ok: false, reason: Reason::NoLoadBalance, role: Role::Replica, lag: Some(0) },
                "maint\n",
            ),
            (
                "failed_check_is_down_with_its_reason",
                Verdict { ok: false, reason: Reason::PgDown(PgFailure::Connect), role: Role::Unknown, lag: None },
                "down#postgresql_down\n",
            ),
        ];
        for (name, verdict, want) in cases {
            assert_eq!(answer(&verdict, 16 * MB).to_string(), want, "{name}");
        }
    }
}
