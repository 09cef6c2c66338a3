//! Closed-loop load: `clients` concurrent clients, each sending its next request as soon as the
//! previous one is answered, for a number of requests or for a time.

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use reqwest::{RequestBuilder, StatusCode};

use crate::stats::Load;

/// A client with its own connection pool: each measurement starts with one, so that no
/// connection to a process of an earlier measurement (since stopped) is reused.
pub(crate) fn client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .timeout(Duration::from_secs(30))
        .build()?)
}

/// When a load stops.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Until {
    /// After this many requests in all.
    Count(usize),
    /// Once this long has passed (requests in flight are finished and counted).
    Time(Duration),
}

/// A failed operation: its kind (an HTTP status, `transport` …) and detail.
pub(crate) type Failure = (String, String);

/// Runs `op(i)` for i = 0, 1, 2 … from `clients` concurrent clients until `until`. The latency
/// of an operation is its duration, unless it answers with a latency of its own (an operation
/// that measures only part of what it does).
pub(crate) async fn closed_loop<F, Fut>(clients: usize, until: Until, op: F) -> anyhow::Result<Load>
where
    F: Fn(usize) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Option<Duration>, Failure>> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let census = crate::cpu::Census::take();
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients.max(1))
        .map(|_| {
            let (op, next) = (op.clone(), next.clone());
            tokio::spawn(async move {
                let (mut ok, mut failed) = (Vec::new(), Vec::new());
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let done = match until {
                        Until::Count(n) => i >= n,
                        Until::Time(limit) => started.elapsed() >= limit,
                    };
                    if done {
                        break;
                    }
                    let sent = Instant::now();
                    match op(i).await {
                        Ok(own) => ok.push(own.unwrap_or_else(|| sent.elapsed())),
                        Err(failure) => failed.push(failure),
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    let (mut ok, mut failed) = (Vec::new(), Vec::new());
    for task in tasks {
        let (o, f) = task.await.context("a load client panicked")?;
        ok.extend(o);
        failed.extend(f);
    }
    Ok(Load::from_samples(ok, started.elapsed(), failed).with_cpu(census.as_ref()))
}

/// Sends `request` and reads the whole body; a failure unless the status is `expected`.
pub(crate) async fn expect(
    request: RequestBuilder,
    expected: StatusCode,
) -> Result<String, Failure> {
    let response = request
        .send()
        .await
        .map_err(|error| ("transport".to_owned(), error.to_string()))?;
    let status = response.status();
    let body = response
        .text()
        .await
        .map_err(|error| ("transport".to_owned(), error.to_string()))?;
    if status == expected {
        Ok(body)
    } else {
        Err((
            status.as_u16().to_string(),
            body.chars().take(300).collect(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_counted_load_runs_each_index_once_and_counts_failures() {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = seen.clone();
        let load = closed_loop(4, Until::Count(10), move |i| {
            let record = record.clone();
            async move {
                record.lock().expect("not poisoned").push(i);
                if i % 5 == 0 {
                    Err(("odd".to_owned(), format!("request {i}")))
                } else {
                    Ok(Some(Duration::from_millis(7)))
                }
            }
        })
        .await
        .expect("the load runs");
        let mut seen = seen.lock().expect("not poisoned").clone();
        seen.sort_unstable();
        assert_eq!(seen, (0..10).collect::<Vec<_>>());
        assert_eq!(load.ok, 8);
        assert!(
            (load.p99_ms - 7.0).abs() < 1e-9,
            "the operations' own latencies count"
        );
        assert_eq!(load.failures.get("odd"), Some(&2));
    }

    #[tokio::test]
    async fn a_timed_load_stops_after_its_time() {
        let started = Instant::now();
        let load = closed_loop(2, Until::Time(Duration::from_millis(100)), |_| async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            Ok(None)
        })
        .await
        .expect("the load runs");
        assert!(started.elapsed() >= Duration::from_millis(100));
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(
            load.ok >= 10,
            "{} requests in 100 ms with 2 clients",
            load.ok
        );
    }
}
