//! Prometheus text exposition. Each daemon declares its metrics in its own `metrics.rs` on a
//! [`prometheus::Registry`] made by [`registry`], which already carries `<crate>_build_info`.

use prometheus::{Encoder, IntGaugeVec, Opts, Registry, TextEncoder};

/// A registry with the `<daemon>_build_info{version}` gauge set to 1. `daemon` uses
/// underscores (`ha_agent`).
pub fn registry(daemon: &str, version: &str) -> Registry {
    let r = Registry::new();
    let opts = Opts::new(format!("{daemon}_build_info"), format!("Build information of {daemon}; always 1."));
    // The name is made from a fixed identifier and cannot be invalid; registration into a fresh
    // registry cannot collide.
    if let Ok(g) = IntGaugeVec::new(opts, &["version"]) {
        g.with_label_values(&[version]).set(1);
        let _ = r.register(Box::new(g));
    }
    r
}

/// The registry's metrics in the text format, for `GET /metrics`.
pub fn render(registry: &Registry) -> String {
    let mut buf = Vec::new();
    let enc = TextEncoder::new();
    if let Err(e) = enc.encode(&registry.gather(), &mut buf) {
        tracing::warn!(error = %e, "encode metrics");
    }
    String::from_utf8(buf).unwrap_or_default()
}

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The `GET /metrics` answer, for any daemon's HTTP handler.
pub fn response(registry: &Registry) -> hyper::Response<crate::http::Body> {
    let mut r = hyper::Response::new(crate::http::Body::from(render(registry)));
    r.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static(CONTENT_TYPE));
    r
}

/// Serves only `/metrics` (404 elsewhere) on `listener`: for daemons with no other endpoint.
pub async fn serve(
    listener: tokio::net::TcpListener,
    registry: Registry,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let registry = std::sync::Arc::new(registry);
    crate::http::serve(
        listener,
        crate::http::Limits::default(),
        move |req, _peer| {
            let registry = registry.clone();
            async move {
                if req.uri().path() == "/metrics" {
                    response(&registry)
                } else {
                    crate::http::text(hyper::StatusCode::NOT_FOUND, "not found\n")
                }
            }
        },
        shutdown,
    )
    .await;
}

#[cfg(test)]
mod tests {
    #[test]
    fn build_info_is_exposed_with_the_version() {
        let r = super::registry("tuner", "1.2.3");
        let text = super::render(&r);
        assert!(text.contains("tuner_build_info{version=\"1.2.3\"} 1"), "{text}");
    }
}
