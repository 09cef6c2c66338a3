//! Helpers shared by the observability tests: reading Prometheus text, driving a booking through
//! the API, and reading records back from the log with their headers. Servers of a test's own
//! that it may stop are `system_tests::private`.

#![allow(dead_code)] // Each test binary uses a different subset.

use std::{collections::BTreeMap, time::Duration};

use event_log::{KafkaSettings, consumer};
use futures::StreamExt;
use rdkafka::{
    Message,
    message::{BorrowedMessage, Headers},
};
use reqwest::StatusCode;
use schemas::{EventEnvelope, Role};
use serde_json::Value;
use system_tests::{TestStack, bodies};

/// One scrape of `/metrics`: series (`name{labels}`) and values.
#[derive(Debug, Clone)]
pub(crate) struct Scrape {
    pub(crate) text: String,
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

impl Scrape {
    pub(crate) fn parse(text: &str) -> Self {
        let samples = text
            .lines()
            .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
            .map(|line| {
                let (series, value) = line.rsplit_once(' ').expect("a sample has a value");
                let (name, labels) = match series.split_once('{') {
                    Some((name, rest)) => (name, parse_labels(rest.trim_end_matches('}'))),
                    None => (series, BTreeMap::new()),
                };
                (
                    name.to_owned(),
                    labels,
                    value.parse::<f64>().expect("a numeric value"),
                )
            })
            .collect();
        Self {
            text: text.to_owned(),
            samples,
        }
    }

    /// Every sample of `name` whose labels include `labels`.
    pub(crate) fn matching(&self, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
        self.samples
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, _, v)| *v)
            .collect()
    }

    /// The sum of the samples of `name` with `labels` (0 when there are none).
    pub(crate) fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).iter().sum()
    }

    /// Whether any sample of `name` has `labels`.
    pub(crate) fn has(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        !self.matching(name, labels).is_empty()
    }

    /// The label sets of `name`.
    pub(crate) fn label_sets(&self, name: &str) -> Vec<BTreeMap<String, String>> {
        self.samples
            .iter()
            .filter(|(n, _, _)| n == name)
            .map(|(_, l, _)| l.clone())
            .collect()
    }
}

fn parse_labels(text: &str) -> BTreeMap<String, String> {
    // Values are quoted and may contain commas or braces (`route="/bookings/{id}"`).
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, escaped)) = chars.next() {
                        value.push(escaped);
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        labels.insert(key.trim_start_matches(',').trim().to_owned(), value);
        rest = &after[end..];
    }
    labels
}

/// Scrapes `base`/metrics.
pub(crate) async fn scrape(http: &reqwest::Client, base: &str) -> Scrape {
    let response = http.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    Scrape::parse(&response.text().await.unwrap())
}

/// Registers a facility as a director; returns its id and consistency token.
pub(crate) async fn facility(stack: &TestStack) -> (String, String) {
    let response = stack
        .http
        .post(format!("{}/facilities", stack.command_url))
        .bearer_auth(stack.token(Role::Director, "director-1").await)
        .json(&bodies::facility())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let body: Value = response.json().await.unwrap();
    (
        body["facility_id"].as_str().unwrap().to_owned(),
        body["consistency_token"].as_str().unwrap().to_owned(),
    )
}

/// A record read back from the log, with its headers.
#[derive(Debug, Clone)]
pub(crate) struct LoggedRecord {
    pub(crate) topic: String,
    pub(crate) headers: BTreeMap<String, String>,
    pub(crate) envelope: Option<EventEnvelope>,
    pub(crate) payload: Vec<u8>,
}

fn logged(message: &BorrowedMessage<'_>) -> LoggedRecord {
    let headers = message
        .headers()
        .map(|headers| {
            headers
                .iter()
                .map(|h| {
                    (
                        h.key.to_owned(),
                        String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let payload = message.payload().unwrap_or_default().to_vec();
    LoggedRecord {
        topic: message.topic().to_owned(),
        headers,
        envelope: serde_json::from_slice(&payload).ok(),
        payload,
    }
}

/// Every record of `topics` up to their current ends.
pub(crate) async fn read_all(kafka: &KafkaSettings, topics: Vec<String>) -> Vec<LoggedRecord> {
    let settings = kafka.clone();
    let (reader, ends) = tokio::task::spawn_blocking(move || {
        let reader = consumer::manual_consumer(&settings, "observability-test").unwrap();
        let partitions = consumer::partitions(&reader, &topics, &settings).unwrap();
        let ends = consumer::end_offsets(&reader, &partitions, &settings).unwrap();
        (reader, ends)
    })
    .await
    .unwrap();
    let total: i64 = ends.values().sum();
    let starts = ends.keys().map(|tp| (tp.clone(), 0_i64)).collect();
    consumer::assign(&reader, &starts).unwrap();
    let mut records = Vec::new();
    let mut stream = reader.stream();
    while i64::try_from(records.len()).unwrap() < total {
        let message = tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .expect("the broker delivers what it holds")
            .unwrap()
            .unwrap();
        records.push(logged(&message));
    }
    records
}
