//! Snapshots of the aggregate store, so that start-up time does not grow with all history.
//!
//! A snapshot is a cache of the log on the replica's own disk (`FM_COMMANDS__SNAPSHOT_PATH`):
//! every folded stream, the idempotency index, and the next offset of every partition. It is
//! written as it is serialised, a chunk of entries per hold of the store's lock, so neither a
//! buffer of the whole store nor a lock held for the whole write stands between the tailer, the
//! readers and the disk; the offsets are taken first, so every part is at least as new as they
//! are (`crate::store::Live`, docs/memory.md). On start the service restores it, read as a
//! stream from the file, and reads the log only from those offsets. Losing or refusing a snapshot costs
//! start-up time, never correctness: the service then replays the whole log. Re-reading events
//! a snapshot already holds is harmless too, because the admission rule ignores them as stale.
//!
//! A snapshot belongs to one log: it records the cluster id of the broker it was read from, and
//! at start it is checked against the log as the tailer finds it ([`LogHead`]). A snapshot of
//! another cluster (a purged or replaced broker, another environment) or one whose offsets lie
//! past a partition's end (a log that lost records, or topics recreated) is discarded with a
//! log line: trusting it would let the service decide against aggregates the log does not hold.
//!
//! The file holds family contact details, so it is written readable by its owner only.

use std::{
    io::{BufReader, BufWriter, Write},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use chrono::{DateTime, Utc};
use platform::shutdown::CancellationToken;
use serde::{Deserialize, Serialize};

use crate::store::{AggregateStore, Folded, Live, LogHead, partition_key};

/// Bumped when the snapshot's shape changes; a snapshot of a format not in [`READS`] is
/// ignored (the log is replayed). 2: the cluster id. 3: parked records (a snapshot of a release
/// that skipped the records it did not know has lost them, so it must not be trusted). 4: a
/// stream's last position without its topic, written in parts (docs/memory.md); it holds what
/// format 3 held.
const FORMAT: u32 = 4;

/// The formats this release restores: 3 reads as 4 (the topic of a position is ignored, the
/// aggregate's type names it), and every piece of 3 was one cut of the log, which is stricter
/// than 4 needs.
const READS: [u32; 2] = [3, FORMAT];

#[derive(Serialize)]
struct SnapshotRef<'a> {
    format: u32,
    topic_prefix: &'a str,
    cluster_id: Option<&'a str>,
    taken_at: DateTime<Utc>,
    folded: Live<'a>,
}

#[derive(Deserialize)]
struct SnapshotFile {
    format: u32,
    topic_prefix: String,
    cluster_id: Option<String>,
    taken_at: DateTime<Utc>,
    folded: Folded,
}

/// Why a snapshot that parses is still not used.
fn refusal(file: &SnapshotFile, topic_prefix: &str, head: &LogHead) -> Option<String> {
    if !READS.contains(&file.format) {
        return Some(format!(
            "it is of format {}, and this release reads {READS:?}",
            file.format
        ));
    }
    if file.topic_prefix != topic_prefix {
        return Some(format!(
            "it is of the topics {}.*, not {topic_prefix}.*",
            file.topic_prefix
        ));
    }
    if file.cluster_id != head.cluster_id {
        return Some(format!(
            "it was read from cluster {}, and the broker is cluster {}",
            file.cluster_id.as_deref().unwrap_or("(unknown)"),
            head.cluster_id.as_deref().unwrap_or("(unknown)")
        ));
    }
    for ((topic, partition), end) in &head.ends {
        let read_to = file
            .folded
            .positions
            .get(&partition_key(topic, *partition))
            .copied()
            .unwrap_or(0);
        if read_to > *end {
            return Some(format!(
                "it has read {topic}[{partition}] to offset {read_to}, past the log's end {end}"
            ));
        }
    }
    let unknown = file.folded.positions.keys().find(|key| {
        !head
            .ends
            .keys()
            .any(|(topic, partition)| partition_key(topic, *partition) == **key)
    });
    unknown.map(|key| {
        format!(
            "it has read a partition the log does not have ({})",
            key.replace('\n', "[")
        ) + "]"
    })
}

/// Reads the snapshot at `path` if there is a usable one for this deployment's topics and for
/// the log as `head` found it.
pub(crate) fn load(path: &Path, topic_prefix: &str, head: &LogHead) -> Option<Folded> {
    // Read as a stream: a buffer of the whole file beside the store it becomes was the peak of
    // a restart (docs/benchmarks.md).
    let file = match std::fs::File::open(path) {
        Ok(file) => BufReader::with_capacity(1 << 16, file),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return None,
        Err(error) => {
            tracing::warn!(%error, path = %path.display(), "cannot read the snapshot; replaying the log");
            return None;
        }
    };
    match serde_json::from_reader::<_, SnapshotFile>(file) {
        Ok(file) => {
            if let Some(reason) = refusal(&file, topic_prefix, head) {
                tracing::warn!(path = %path.display(), %reason, "discarding the snapshot: it does not belong to this log; replaying the log");
                metrics::counter!("command_store_snapshots_discarded_total").increment(1);
                return None;
            }
            tracing::info!(path = %path.display(), taken_at = %file.taken_at, "restoring the aggregate store from its snapshot");
            Some(file.folded)
        }
        Err(error) => {
            tracing::warn!(%error, "the snapshot does not parse; replaying the log");
            None
        }
    }
}

/// Writes a snapshot of the store: to a temporary file, flushed to disk, then renamed over the
/// old one, so a crash leaves either the old snapshot or the new one, never half of one.
pub(crate) fn save(
    path: &Path,
    topic_prefix: &str,
    cluster_id: Option<&str>,
    store: &AggregateStore,
) -> std::io::Result<()> {
    if let Some(parent) = path
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
    {
        std::fs::create_dir_all(parent)?;
    }
    let temporary = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut writer = BufWriter::with_capacity(1 << 16, options.open(&temporary)?);
    serde_json::to_writer(
        &mut writer,
        &SnapshotRef {
            format: FORMAT,
            topic_prefix,
            cluster_id,
            taken_at: Utc::now(),
            folded: Live(store),
        },
    )?;
    writer.flush()?;
    writer
        .into_inner()
        .map_err(std::io::IntoInnerError::into_error)?
        .sync_all()?;
    std::fs::rename(&temporary, path)
}

/// Writes a snapshot every `interval` while the store moves, and a last one at shutdown.
pub(crate) async fn run_writer(
    store: Arc<AggregateStore>,
    path: PathBuf,
    topic_prefix: String,
    cluster_id: Option<String>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut last_saved = store.with_folded(|folded| folded.positions.clone());
    loop {
        let stopping = tokio::select! {
            () = shutdown.cancelled() => true,
            () = tokio::time::sleep(interval) => false,
        };
        let positions = store.with_folded(|folded| folded.positions.clone());
        if positions != last_saved {
            let (store, path, prefix) = (store.clone(), path.clone(), topic_prefix.clone());
            let cluster = cluster_id.clone();
            let saved = tokio::task::spawn_blocking(move || {
                save(&path, &prefix, cluster.as_deref(), &store)
            })
            .await;
            match saved {
                Ok(Ok(())) => {
                    metrics::counter!("command_store_snapshots_total").increment(1);
                    last_saved = positions;
                }
                Ok(Err(error)) => tracing::error!(%error, "could not write the snapshot"),
                Err(error) => tracing::error!(%error, "the snapshot writer panicked"),
            }
        }
        if stopping {
            return;
        }
    }
}
