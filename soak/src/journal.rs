//! The load generator's journal: one JSON line per fact the checker must hold the system to.
//!
//! Every line is flushed as soon as it is known, so the journal is complete up to the moment
//! the load generator stops, however it stops.

use std::{
    fs::File,
    io::{BufRead, BufReader, Write},
    path::Path,
    sync::Mutex,
};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// One fact recorded by the load generator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Entry {
    /// A write answered 2xx: its event must be in the log, admitted at `version`, at the
    /// position `token` names.
    Acknowledged {
        /// `register_facility`, `request_booking`, `cancel_booking`.
        op: String,
        /// The token subject that sent it.
        subject: String,
        idempotency_key: Option<String>,
        aggregate_id: Uuid,
        version: u64,
        token: Option<String>,
        status: u16,
    },
    /// A write finally refused with a 4xx: no admitted event may carry its key.
    Refused {
        op: String,
        subject: String,
        idempotency_key: String,
        status: u16,
    },
    /// A write whose outcome the client never learned (no answer, or 5xx on every attempt).
    Unknown {
        op: String,
        subject: String,
        idempotency_key: String,
    },
    /// A record that is not an event, put on an event topic on purpose: every record holding
    /// `marker` is explained (a retried send may have written it twice), and it must be
    /// dead-lettered if the broker acknowledged it (`written`). Journalled before it is sent.
    Poison {
        marker: String,
        topic: String,
        /// Where the broker said it landed, once it said so.
        #[serde(default)]
        written: Option<String>,
    },
    /// What a booking was set up to meet (the gateway's mode, a cancellation, a contest), for
    /// the summary.
    Scenario { booking_id: Uuid, scenario: String },
    /// One HTTP attempt of a write (a retry is another attempt): when it was sent, when its
    /// answer came and what it was (`None`: no answer). For the write outages and the checks of
    /// what a write is answered while the brokers are out (`check::quorum_loss`).
    Attempt {
        op: String,
        subject: String,
        idempotency_key: String,
        /// Unix time in milliseconds.
        sent_ms: i64,
        answered_ms: i64,
        status: Option<u16>,
    },
    /// One answer of the read probe, a query-api read every half second (`None`: no answer).
    Read { at_ms: i64, status: Option<u16> },
}

/// Appends entries to a file, one line each, flushed at once; shared by every client task.
#[derive(Debug)]
pub struct JournalWriter {
    file: Mutex<File>,
}

impl JournalWriter {
    pub fn create(path: &Path) -> anyhow::Result<Self> {
        let file = File::create(path)
            .with_context(|| format!("Failed to create the journal {}", path.display()))?;
        Ok(Self {
            file: Mutex::new(file),
        })
    }

    /// Writes one entry. A journal that cannot be written makes the whole soak meaningless, so
    /// the error is returned for the caller to stop on.
    pub fn record(&self, entry: &Entry) -> anyhow::Result<()> {
        let mut line = serde_json::to_vec(entry).context("Failed to serialise a journal entry")?;
        line.push(b'\n');
        let mut file = self
            .file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        file.write_all(&line)
            .context("Failed to write the journal")?;
        file.flush().context("Failed to flush the journal")
    }
}

/// Reads a journal back. A last line cut short (the writer was killed mid-write) is ignored;
/// any other unreadable line is an error.
pub fn read(path: &Path) -> anyhow::Result<Vec<Entry>> {
    let file = File::open(path)
        .with_context(|| format!("Failed to open the journal {}", path.display()))?;
    let lines: Vec<String> = BufReader::new(file)
        .lines()
        .collect::<Result<_, _>>()
        .context("Failed to read the journal")?;
    let mut entries = Vec::with_capacity(lines.len());
    for (index, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(line) {
            Ok(entry) => entries.push(entry),
            Err(_) if index + 1 == lines.len() => {}
            Err(error) => anyhow::bail!("journal line {}: {error}", index + 1),
        }
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_read_back_as_written_and_a_torn_last_line_is_ignored() {
        let dir = std::env::temp_dir().join(format!("soak-journal-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("journal.jsonl");
        let writer = JournalWriter::create(&path).unwrap();
        let entries = vec![
            Entry::Acknowledged {
                op: "request_booking".into(),
                subject: "director-1".into(),
                idempotency_key: Some("k1".into()),
                aggregate_id: Uuid::new_v4(),
                version: 1,
                token: Some("fm.booking.events:0:7".into()),
                status: 202,
            },
            Entry::Poison {
                marker: "soak-poison-1".into(),
                topic: "fm.booking.events".into(),
                written: Some("fm.booking.events:1:9".into()),
            },
        ];
        for entry in &entries {
            writer.record(entry).unwrap();
        }
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"kind\":\"ackno")
            .unwrap();
        assert_eq!(read(&path).unwrap(), entries);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
