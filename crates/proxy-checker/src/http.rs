//! The HTTP check endpoints: Patroni's paths, 200 or 503, on `outrigger_daemon::http::serve`.
//!
//! GET answers with a small JSON body saying why; HEAD and OPTIONS answer with the bare status
//! (HAProxy's plain `option httpchk` sends `OPTIONS /`, and Patroni answers both without a
//! body). `/metrics` is served on the same port, as Patroni does. Every answer comes from state
//! already held: a check never waits on etcd or PostgreSQL.

use std::sync::Arc;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use outrigger_daemon::http::{Body, Limits, json};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::check::Check;
use crate::metrics::BadKind;
use crate::verdict::Verdict;

/// The JSON body of a GET check.
#[derive(Debug, Serialize)]
pub struct CheckBody {
    pub check: &'static str,
    pub status: u16,
    pub role: &'static str,
    pub reason: &'static str,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lag: Option<u64>,
}

impl CheckBody {
    pub fn new(check: &Check, v: &Verdict) -> Self {
        Self {
            check: check.endpoint.as_str(),
            status: v.status(),
            role: v.role.as_str(),
            reason: v.reason.code(),
            detail: v.reason.to_string(),
            lag: v.lag,
        }
    }
}

fn bare(status: StatusCode) -> Response<Body> {
    let mut r = Response::new(Body::new(Bytes::new()));
    *r.status_mut() = status;
    r
}

/// Answers one request.
pub fn handle(app: &App, req: &Request<Incoming>) -> Response<Body> {
    let with_body = match *req.method() {
        Method::GET => true,
        Method::HEAD | Method::OPTIONS => false,
        _ => {
            app.metrics.bad_request(BadKind::Method);
            let mut r = bare(StatusCode::METHOD_NOT_ALLOWED);
            r.headers_mut().insert(ALLOW, HeaderValue::from_static("GET, HEAD, OPTIONS"));
            return r;
        }
    };
    let path = req.uri().path();
    if path == "/metrics" {
        let mut r = Response::new(Body::new(Bytes::from(app.render_metrics())));
        r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(outrigger_daemon::metrics::CONTENT_TYPE));
        return r;
    }
    let check = match Check::parse(path, req.uri().query()) {
        Ok(c) => c,
        Err(e) => {
            app.metrics.bad_request(BadKind::Malformed);
            let body = serde_json::json!({ "status": 400, "error": e.to_string() });
            return json(StatusCode::BAD_REQUEST, body.to_string());
        }
    };
    let verdict = app.decide(&check);
    app.metrics.check(check.endpoint, &verdict);
    let status = if verdict.ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    if !with_body {
        return bare(status);
    }
    match serde_json::to_vec(&CheckBody::new(&check, &verdict)) {
        Ok(body) => json(status, body),
        // Serialising plain strings and numbers cannot fail; the status alone still answers.
        Err(_) => bare(status),
    }
}

/// Serves the check endpoints until `stop`.
pub async fn serve(listener: TcpListener, limits: Limits, app: Arc<App>, stop: CancellationToken) {
    let counter = app.clone();
    outrigger_daemon::http::serve_observed(
        listener,
        limits,
        move |req, _peer| {
            let response = handle(&app, &req);
            async move { response }
        },
        move |e: &hyper::Error| {
            if e.is_parse() || e.is_parse_too_large() {
                counter.metrics.bad_request(BadKind::Malformed);
            } else if e.is_timeout() {
                counter.metrics.bad_request(BadKind::Timeout);
            }
        },
        stop,
    )
    .await;
}
