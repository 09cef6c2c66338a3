//! Snapshots of the aggregate store, so that start-up time does not grow with all history.
//!
//! A snapshot is a cache of the log on the replica's own disk (`FM_COMMANDS__SNAPSHOT_PATH`):
//! every folded stream, the idempotency index, and the next offset of every partition, taken
//! under the store's one lock, so it is a consistent cut of the log. On start the service
//! restores it and reads the log only from those offsets. Losing or refusing a snapshot costs
//! start-up time, never correctness: the service then replays the whole log. Re-reading events
//! a snapshot already holds is harmless too, because the admission rule ignores them as stale.
//!
//! The file holds family contact details, so it is written readable by its owner only.

use std::{
    io::Write,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use chrono::{DateTime, Utc};
use platform::shutdown::CancellationToken;
use serde::{Deserialize, Serialize};

use crate::store::{AggregateStore, Folded};

/// Bumped when the snapshot's shape changes; a snapshot of another format is ignored.
const FORMAT: u32 = 1;

#[derive(Serialize)]
struct SnapshotRef<'a> {
    format: u32,
    topic_prefix: &'a str,
    taken_at: DateTime<Utc>,
    folded: &'a Folded,
}

#[derive(Deserialize)]
struct SnapshotFile {
    format: u32,
    topic_prefix: String,
    taken_at: DateTime<Utc>,
    folded: Folded,
}

/// Reads the snapshot at `path` if there is a usable one for this deployment's topics.
pub(crate) fn load(path: &Path, topic_prefix: &str) -> Option<Folded> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return None,
        Err(error) => {
            tracing::warn!(%error, path = %path.display(), "cannot read the snapshot; replaying the log");
            return None;
        }
    };
    match serde_json::from_slice::<SnapshotFile>(&bytes) {
        Ok(file) if file.format == FORMAT && file.topic_prefix == topic_prefix => {
            tracing::info!(path = %path.display(), taken_at = %file.taken_at, "restoring the aggregate store from its snapshot");
            Some(file.folded)
        }
        Ok(file) => {
            tracing::warn!(format = file.format, prefix = %file.topic_prefix, "the snapshot is of another format or deployment; replaying the log");
            None
        }
        Err(error) => {
            tracing::warn!(%error, "the snapshot does not parse; replaying the log");
            None
        }
    }
}

/// Writes a snapshot of the store: to a temporary file, flushed to disk, then renamed over the
/// old one, so a crash leaves either the old snapshot or the new one, never half of one.
pub(crate) fn save(path: &Path, topic_prefix: &str, store: &AggregateStore) -> std::io::Result<()> {
    let bytes = store.with_folded(|folded| {
        serde_json::to_vec(&SnapshotRef {
            format: FORMAT,
            topic_prefix,
            taken_at: Utc::now(),
            folded,
        })
    })?;
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
    let mut file = options.open(&temporary)?;
    file.write_all(&bytes)?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)
}

/// Writes a snapshot every `interval` while the store moves, and a last one at shutdown.
pub(crate) async fn run_writer(
    store: Arc<AggregateStore>,
    path: PathBuf,
    topic_prefix: String,
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
            let saved = tokio::task::spawn_blocking(move || save(&path, &prefix, &store)).await;
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
