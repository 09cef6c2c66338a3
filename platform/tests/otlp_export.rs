//! With an OTLP endpoint configured, finished spans reach the collector over OTLP/HTTP, and the
//! span of an HTTP request continues the caller's `traceparent`. The collector here is a bare
//! HTTP listener that keeps what it is sent; the test owns the process's one subscriber.

#![allow(clippy::unwrap_used)] // A test fails loudly on any unexpected error; that is the point.

use std::sync::{Arc, Mutex};

use axum::{Router, body::Bytes, http::HeaderMap, routing::get, routing::post};
use platform::{
    http::HttpServer,
    settings::{HttpSettings, LogSettings},
    shutdown::CancellationToken,
};

/// What the fake collector received: (path, content type, body).
type Received = Arc<Mutex<Vec<(String, String, Vec<u8>)>>>;

async fn collector() -> (String, Received) {
    let received: Received = Arc::default();
    let keep = received.clone();
    let app = Router::new().route(
        "/v1/traces",
        post(move |headers: HeaderMap, body: Bytes| {
            let keep = keep.clone();
            async move {
                let content_type = headers
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                keep.lock()
                    .unwrap()
                    .push(("/v1/traces".to_owned(), content_type, body.to_vec()));
                ""
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, received)
}

fn hex_to_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_of_a_request_reach_the_otlp_collector_in_the_callers_trace() {
    let (collector_url, received) = collector().await;
    let settings = LogSettings {
        otlp_endpoint: Some(format!("{collector_url}/")),
        ..LogSettings::default()
    };
    assert!(
        platform::telemetry::Telemetry::new(&settings)
            .install()
            .unwrap(),
        "the test's subscriber is the process's first"
    );

    let shutdown = CancellationToken::new();
    let router = Router::new().route("/hello/{name}", get(|| async { "hi" }));
    let server = HttpServer::bind(router, &HttpSettings::on_port(0))
        .await
        .unwrap();
    let url = format!("http://127.0.0.1:{}/hello/someone", server.port());
    tokio::spawn(server.serve(shutdown.clone()));
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let response = reqwest::Client::new()
        .get(&url)
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    shutdown.cancel();

    // Flushes the batch: the export happens now, not at some later tick.
    tokio::task::spawn_blocking(platform::telemetry::shutdown)
        .await
        .unwrap();
    let received = received.lock().unwrap();
    assert!(!received.is_empty(), "the collector received nothing");
    let (path, content_type, body) = &received[0];
    assert_eq!(path, "/v1/traces");
    assert_eq!(content_type, "application/x-protobuf");
    // The protobuf carries ids as raw bytes: the caller's trace id and the route template are
    // in it; the raw URI is not.
    let trace = hex_to_bytes(trace_id);
    assert!(
        body.windows(trace.len()).any(|w| w == trace.as_slice()),
        "no span of the caller's trace was exported"
    );
    let contains = |needle: &str| body.windows(needle.len()).any(|w| w == needle.as_bytes());
    assert!(contains("/hello/{name}"), "the span names its route");
    assert!(!contains("someone"), "the raw path leaked into the span");
}
