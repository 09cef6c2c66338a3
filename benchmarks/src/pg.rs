//! PostgreSQL: a fresh database per measurement, the raw `INSERT` and `COPY` baselines, and
//! waiting until a projection-service has stored the end offset of every partition.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use event_log::consumer::TopicPartition;
use sqlx::{Connection, PgConnection, PgPool, Row};
use uuid::Uuid;

/// Creates an empty database named after `what`; returns its URL.
pub(crate) async fn fresh_database(admin_url: &str, what: &str) -> anyhow::Result<String> {
    test_support::create_database(admin_url, &format!("bench_{what}"))
        .await
        .context("Failed to create a database on the benchmark's PostgreSQL")
}

/// The server's version, as `SHOW server_version` gives it.
pub(crate) async fn server_version(admin_url: &str) -> anyhow::Result<String> {
    let mut admin = PgConnection::connect(admin_url).await?;
    Ok(sqlx::query_scalar("SHOW server_version")
        .fetch_one(&mut admin)
        .await?)
}

/// Waits until `live.projection_offsets` holds `ends` for every non-empty partition; returns
/// the time since `since`: the time until queries answer from a version built from the log. Fails after `timeout`, or when `alive` says the projector died.
pub(crate) async fn wait_caught_up(
    pool: &PgPool,
    ends: &BTreeMap<TopicPartition, i64>,
    since: Instant,
    timeout: Duration,
    mut alive: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<Duration> {
    let total: i64 = ends.values().sum();
    let mut last_report = Instant::now();
    loop {
        alive()?;
        // The view does not exist until the first build of the version has switched live.
        // So an empty log is caught up only once the build is live (the query succeeds).
        let live: Option<BTreeMap<TopicPartition, i64>> =
            sqlx::query("SELECT topic, partition, next_offset FROM live.projection_offsets")
                .fetch_all(pool)
                .await
                .map(|rows| {
                    rows.iter()
                        .map(|row| ((row.get(0), row.get(1)), row.get(2)))
                        .collect()
                })
                .ok();
        let is_live = live.is_some();
        let stored = live.unwrap_or_default();
        if is_live
            && ends
                .iter()
                .all(|(tp, end)| *end == 0 || stored.get(tp).is_some_and(|at| at >= end))
        {
            return Ok(since.elapsed());
        }
        if since.elapsed() > timeout {
            bail!("the projection did not catch up within {timeout:?}: {stored:?} of {ends:?}");
        }
        if last_report.elapsed() > Duration::from_secs(30) {
            last_report = Instant::now();
            let done: i64 = ends
                .keys()
                .map(|tp| stored.get(tp).copied().unwrap_or(0))
                .sum();
            eprintln!(
                "    projected {done} of {total} records after {:.0?}",
                since.elapsed()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Rows shaped like the live version's `bookings` rows, for the raw baselines: the column list
/// and types, and one projected row's values as text.
#[derive(Debug)]
pub(crate) struct RowShape {
    table: String,
    columns: Vec<(String, String)>,
    sample: Vec<Option<String>>,
}

impl RowShape {
    /// Reads the shape from the `bookings` table of the newest version's live build (which must
    /// hold a row).
    pub(crate) async fn of_live_bookings(pool: &PgPool) -> anyhow::Result<Self> {
        let (version, build): (i32, i32) = sqlx::query_as(
            "SELECT version, build FROM read_model_builds WHERE state = 'live' \
             ORDER BY version DESC LIMIT 1",
        )
        .fetch_one(pool)
        .await
        .context("no live read-model build")?;
        let table = format!("read_v{version}_b{build}.bookings");
        let columns: Vec<(String, String)> = sqlx::query_as(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a \
             WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
        )
        .bind(&table)
        .fetch_all(pool)
        .await?;
        if columns.first().map(|(name, _)| name.as_str()) != Some("booking_id") {
            bail!("{table} does not start with booking_id: {columns:?}");
        }
        let select = columns
            .iter()
            .map(|(name, _)| format!("b.{name}::text"))
            .collect::<Vec<_>>()
            .join(", ");
        let row = sqlx::query(&format!("SELECT {select} FROM {table} b LIMIT 1"))
            .fetch_one(pool)
            .await
            .with_context(|| format!("{table} is empty"))?;
        let sample = (0..columns.len())
            .map(|i| row.try_get::<Option<String>, _>(i))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            table,
            columns,
            sample,
        })
    }

    /// A fresh empty table like the bookings table (its indexes and constraints included).
    async fn fresh_table(&self, pool: &PgPool, name: &str) -> anyhow::Result<()> {
        sqlx::query(&format!("DROP TABLE IF EXISTS {name}"))
            .execute(pool)
            .await?;
        sqlx::query(&format!(
            "CREATE TABLE {name} (LIKE {} INCLUDING ALL)",
            self.table
        ))
        .execute(pool)
        .await?;
        Ok(())
    }

    fn column_list(&self) -> String {
        self.columns
            .iter()
            .map(|(name, _)| name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// `rows` single-row `INSERT`s (values bound as text, cast to the column types) in
    /// transactions of `batch` rows, as many rows per transaction as a projector's batch.
    pub(crate) async fn insert(
        &self,
        pool: &PgPool,
        rows: u64,
        batch: u64,
    ) -> anyhow::Result<Duration> {
        self.fresh_table(pool, "bench_insert").await?;
        let values = self
            .columns
            .iter()
            .enumerate()
            .map(|(i, (_, kind))| format!("${}::{kind}", i + 1))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "INSERT INTO bench_insert ({}) VALUES ({values})",
            self.column_list()
        );
        let mut conn = pool.acquire().await?;
        let started = Instant::now();
        let mut written = 0;
        while written < rows {
            let mut tx = conn.begin().await?;
            for _ in 0..batch.min(rows - written) {
                let mut query = sqlx::query(&sql).bind(Uuid::new_v4().to_string());
                for value in &self.sample[1..] {
                    query = query.bind(value.clone());
                }
                query.execute(&mut *tx).await?;
                written += 1;
            }
            tx.commit().await?;
        }
        Ok(started.elapsed())
    }

    /// One `COPY … FROM STDIN` of `rows` rows (text format), timed from the start of the
    /// `COPY` (the data is prepared before).
    pub(crate) async fn copy(&self, pool: &PgPool, rows: u64) -> anyhow::Result<Duration> {
        self.fresh_table(pool, "bench_copy").await?;
        let rest: Vec<String> = self.sample[1..]
            .iter()
            .map(|value| {
                value
                    .as_deref()
                    .map_or_else(|| "\\N".to_owned(), copy_escape)
            })
            .collect();
        let rest = rest.join("\t");
        let mut data = String::with_capacity(usize::try_from(rows)? * (rest.len() + 38));
        for _ in 0..rows {
            let _ = writeln!(data, "{}\t{rest}", Uuid::new_v4());
        }
        let mut conn = pool.acquire().await?;
        let started = Instant::now();
        let mut copy = conn
            .copy_in_raw(&format!(
                "COPY bench_copy ({}) FROM STDIN",
                self.column_list()
            ))
            .await?;
        copy.send(data.as_bytes()).await?;
        copy.finish().await?;
        Ok(started.elapsed())
    }
}

/// A value in `COPY`'s text format.
fn copy_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_text_escapes_separators_and_backslashes() {
        assert_eq!(copy_escape("a\tb\nc\\d\re"), "a\\tb\\nc\\\\d\\re");
        assert_eq!(copy_escape("{\"x\": 1}"), "{\"x\": 1}");
    }
}
