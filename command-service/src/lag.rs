//! How far the tailer is behind the end of the log, measured every
//! `CommandSettings::lag_check_interval`: `/ready` turns false while it is more than
//! `CommandSettings::max_tailer_lag` records, so that a load balancer sends no writes to a
//! replica whose writers would wait on a tailer far behind (docs/operations.md, "Readiness";
//! issue 18 item 4). Also the gauge `command_tailer_lag_records`.

use std::{sync::Arc, time::Duration};

use event_log::{
    KafkaSettings, LogError,
    consumer::{self, StreamConsumer, TopicPartition},
};
use platform::shutdown::CancellationToken;

use crate::store::AggregateStore;

/// Asks the broker for the end of every partition the tailer reads, with a client of its own
/// (the tailer's consumer is busy streaming).
pub(crate) struct LagMonitor {
    consumer: StreamConsumer,
    partitions: Vec<TopicPartition>,
    settings: KafkaSettings,
}

impl LagMonitor {
    pub(crate) fn new(
        settings: &KafkaSettings,
        partitions: Vec<TopicPartition>,
    ) -> Result<Self, LogError> {
        Ok(Self {
            consumer: consumer::manual_consumer(settings, "command-service-lag")?,
            partitions,
            settings: settings.clone(),
        })
    }

    /// Measures every `interval` until `shutdown` is cancelled. A failed measure keeps the last
    /// one (an unreachable broker already fails `/ready`'s `kafka` check).
    pub(crate) async fn run(
        self,
        store: Arc<AggregateStore>,
        interval: Duration,
        shutdown: CancellationToken,
    ) {
        let monitor = Arc::new(self);
        loop {
            let measuring = monitor.clone();
            let ends = tokio::task::spawn_blocking(move || {
                consumer::end_offsets(
                    &measuring.consumer,
                    &measuring.partitions,
                    &measuring.settings,
                )
            })
            .await;
            match ends {
                Ok(Ok(ends)) => {
                    let behind = store.records_behind(&ends);
                    store.set_lag(behind);
                    #[allow(clippy::cast_precision_loss)] // A gauge: far below 2^52 records.
                    metrics::gauge!("command_tailer_lag_records").set(behind as f64);
                }
                Ok(Err(error)) => {
                    tracing::warn!(%error, "could not read the end of the log to measure the lag");
                }
                Err(error) => tracing::warn!(%error, "measuring the lag panicked"),
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(interval) => {}
            }
        }
    }
}
