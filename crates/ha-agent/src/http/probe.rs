//! Asking peers for their status (`GET /patroni`), as Patroni does in a leader race and before
//! a switchover: every peer at once, each bounded by a timeout. Over https when the peer's
//! `api_url` says so, with the client TLS settings given once at start ([`set_client_tls`]).

use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::Request;
use hyper_util::rt::TokioIo;
use outrigger_schema::StatusJson;

use crate::core::{PeerProbe, PeerRef, PeerStatus, Tags};

static CLIENT_TLS: RwLock<Option<Arc<rustls::ClientConfig>>> = RwLock::new(None);

/// The TLS client settings for https peers (set when the REST port has TLS, and again when a
/// reload changes its files).
pub fn set_client_tls(cfg: Arc<rustls::ClientConfig>) {
    *CLIENT_TLS.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(cfg);
}

fn client_tls() -> Option<Arc<rustls::ClientConfig>> {
    CLIENT_TLS.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
}

/// A peer URL split for the request: https or not, `host:port`, host, path.
#[derive(Debug, PartialEq, Eq)]
pub struct Target {
    pub https: bool,
    pub authority: String,
    pub host: String,
    pub path: String,
}

pub fn split_url(url: &str) -> Option<Target> {
    let (https, rest) = match url.strip_prefix("http://") {
        Some(r) => (false, r),
        None => (true, url.strip_prefix("https://")?),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/patroni"),
    };
    let has_port = authority.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok());
    let host = if has_port { authority.rsplit_once(':').map_or(authority, |(h, _)| h) } else { authority };
    let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
    let authority =
        if has_port { authority.to_owned() } else { format!("{authority}:{}", if https { 443 } else { 80 }) };
    Some(Target { https, authority, host, path: path.to_owned() })
}

/// A `POST` with a JSON body and, when set, an `Authorization` header value.
pub type Post<'a> = (Bytes, Option<&'a str>);

/// A peer's answer: status code and body (at most 256 KiB).
pub struct Answer {
    pub status: u16,
    pub body: Bytes,
}

async fn send(
    io: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    t: &Target,
    post: Option<&Post<'_>>,
) -> anyhow::Result<Answer> {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let builder = Request::builder()
        .uri(t.path.as_str())
        .header(hyper::header::HOST, t.authority.as_str())
        .header(hyper::header::USER_AGENT, "ha-agent");
    let req = match post {
        None => builder.method(hyper::Method::GET).body(Full::new(Bytes::new()))?,
        Some((body, auth)) => {
            let mut b = builder
                .method(hyper::Method::POST)
                .header(hyper::header::CONTENT_TYPE, "application/json")
                .header(hyper::header::CONTENT_LENGTH, body.len());
            if let Some(a) = auth {
                b = b.header(hyper::header::AUTHORIZATION, *a);
            }
            b.body(Full::new(body.clone()))?
        }
    };
    let resp = sender.send_request(req).await?;
    let status = resp.status().as_u16();
    let body = Limited::new(resp.into_body(), 256 * 1024)
        .collect()
        .await
        .map_err(|e| anyhow::anyhow!("read body: {e}"))?
        .to_bytes();
    Ok(Answer { status, body })
}

/// Whether anything answers HTTP at `url` within `timeout`, whatever the status (Patroni's
/// unique-name check: a member whose API answers at all is running).
pub async fn answers(url: &str, timeout: Duration) -> bool {
    matches!(tokio::time::timeout(timeout, get(url)).await, Ok(Ok(_)))
}

async fn fetch(url: &str) -> anyhow::Result<StatusJson> {
    Ok(StatusJson::decode(&get(url).await?)?)
}

async fn get(url: &str) -> anyhow::Result<Bytes> {
    // Patroni answers 200 or 503 with the status JSON; both carry it.
    Ok(call(url, None, None).await?.body)
}

/// A request to the peer at `url` (its `api_url`): `GET`, or `POST` when `post` is given;
/// `path` replaces the URL's path when given (Patroni's `PatroniRequest` does the same:
/// `/failsafe` on the host of `.../patroni`).
pub async fn call(url: &str, path: Option<&str>, post: Option<&Post<'_>>) -> anyhow::Result<Answer> {
    let mut t = split_url(url).ok_or_else(|| anyhow::anyhow!("unsupported api_url {url:?}"))?;
    if let Some(p) = path {
        t.path = p.to_owned();
    }
    let stream = tokio::net::TcpStream::connect(&t.authority).await?;
    let _ = stream.set_nodelay(true);
    if t.https {
        let cfg = client_tls().ok_or_else(|| anyhow::anyhow!("https peer but no TLS client settings"))?;
        let name = rustls::pki_types::ServerName::try_from(t.host.clone())?;
        let tls = tokio_rustls::TlsConnector::from(cfg).connect(name, stream).await?;
        send(tls, &t, post).await
    } else {
        send(stream, &t, post).await
    }
}

/// A peer's status in core terms; `None` when the answer has no WAL position (Patroni treats
/// such a member as unreachable).
pub fn peer_status(s: &StatusJson) -> Option<PeerStatus> {
    // A member that says it is a primary without a WAL position (its postmaster runs but does
    // not answer SQL) may still take writes: it counts as a live primary, never as gone.
    let wal_position = match s.wal_position() {
        Some(p) => p,
        None if !s.in_recovery() => 0,
        None => return None,
    };
    Some(PeerStatus {
        primary: !s.in_recovery(),
        wal_position,
        timeline: s.timeline,
        tags: Tags::from_json(&s.tags),
        watchdog_failed: s.watchdog_failed.unwrap_or(false),
        lease_revoked_recently: s.lease_revoked_recently.unwrap_or(false),
    })
}

/// Asks one peer, bounded by `timeout`.
pub async fn status_of(api_url: &str, timeout: Duration) -> Option<StatusJson> {
    match tokio::time::timeout(timeout, fetch(api_url)).await {
        Ok(Ok(s)) => Some(s),
        Ok(Err(e)) => {
            tracing::debug!(api_url, error = %e, "peer did not answer usefully");
            None
        }
        Err(_) => {
            tracing::debug!(api_url, ?timeout, "peer did not answer in time");
            None
        }
    }
}

/// Asks every peer in parallel, each bounded by `timeout` (the former leader by
/// [`crate::core::FORMER_LEADER_TIMEOUT`] at most).
pub async fn probe(peers: &[PeerRef], timeout: Duration) -> Vec<PeerProbe> {
    let asks = peers.iter().map(|p| async move {
        let timeout = if p.former_leader { timeout.min(crate::core::FORMER_LEADER_TIMEOUT) } else { timeout };
        let status = status_of(&p.api_url, timeout).await.as_ref().and_then(peer_status);
        PeerProbe { name: p.name.clone(), status }
    });
    futures::future::join_all(asks).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_split_for_the_request() {
        let t = split_url("http://10.0.0.2:8008/patroni").unwrap();
        assert_eq!(
            (t.https, t.authority.as_str(), t.host.as_str(), t.path.as_str()),
            (false, "10.0.0.2:8008", "10.0.0.2", "/patroni")
        );
        let t = split_url("http://h/patroni").unwrap();
        assert_eq!(t.authority, "h:80");
        let t = split_url("https://h:8008/patroni").unwrap();
        assert_eq!((t.https, t.host.as_str()), (true, "h"));
        assert_eq!(split_url("ftp://h/x"), None);
    }
}
