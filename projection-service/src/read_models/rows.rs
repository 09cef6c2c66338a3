//! Rows folded in memory and written back set-based: one `SELECT … FOR UPDATE` per table to
//! load the rows a batch touches, one upsert per table to write what changed.
//!
//! A read-model row is a serde struct whose field names are its table's columns ([`Table`]).
//! Rows are loaded as `to_jsonb(row)` and written as one JSON array through
//! `jsonb_populate_recordset(NULL::<table>, $1)`, with the column list taken from the struct's
//! fields: a new column is a new field (and its value in the fold), never a new statement. A
//! column the struct does not name (a generated column, such as version 4's `name_key`) is
//! left to PostgreSQL.
//!
//! Every upsert is guarded by the row's `version` (`WHERE <table>.version < EXCLUDED.version`):
//! the rows a batch read are locked until it commits, but a row it found missing is not, and a
//! second projector of the same build (the lock's connection dropped, docs/read-side.md) may
//! insert it meanwhile; the guard keeps whichever write has folded further, as the per-event
//! admission rule did.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;
use sqlx::{PgConnection, types::Json};
use uuid::Uuid;

/// A table whose rows are folded in memory.
pub(crate) trait Table: Serialize + DeserializeOwned + Send + Unpin + 'static {
    /// The table's name (found through the connection's `search_path`).
    const NAME: &'static str;
    /// Its key column.
    const KEY: &'static str;
    fn key(&self) -> Uuid;
    /// The last sequence of the aggregate's stream applied to the row.
    fn version(&self) -> i64;
}

/// One table's rows in a batch: each id loaded (`None`: no row yet), and which changed.
pub(crate) struct Rows<R> {
    rows: HashMap<Uuid, Option<R>>,
    dirty: BTreeSet<Uuid>,
}

impl<R> Default for Rows<R> {
    fn default() -> Self {
        Self {
            rows: HashMap::new(),
            dirty: BTreeSet::new(),
        }
    }
}

impl<R: Table> Rows<R> {
    /// Loads and locks (`FOR UPDATE`, in key order) the rows of `ids` not loaded yet.
    pub(crate) async fn load(
        &mut self,
        conn: &mut PgConnection,
        ids: impl IntoIterator<Item = Uuid>,
    ) -> Result<(), sqlx::Error> {
        let missing: BTreeSet<Uuid> = ids
            .into_iter()
            .filter(|id| !self.rows.contains_key(id))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let missing: Vec<Uuid> = missing.into_iter().collect();
        let sql = format!(
            "SELECT to_jsonb(t) FROM {table} t WHERE {key} = ANY($1) ORDER BY {key} FOR UPDATE",
            table = R::NAME,
            key = R::KEY,
        );
        let found: Vec<Json<R>> = sqlx::query_scalar(&sql)
            .bind(&missing)
            .fetch_all(&mut *conn)
            .await?;
        self.rows.extend(missing.into_iter().map(|id| (id, None)));
        self.rows
            .extend(found.into_iter().map(|Json(row)| (row.key(), Some(row))));
        Ok(())
    }

    /// The row's version; 0 for no row (or one not loaded: callers load first).
    pub(crate) fn version(&self, id: Uuid) -> u64 {
        self.rows
            .get(&id)
            .and_then(Option::as_ref)
            .and_then(|row| u64::try_from(row.version()).ok())
            .unwrap_or(0)
    }

    /// The row to change, marked as changed; `None` inside when there is no row.
    pub(crate) fn change(&mut self, id: Uuid) -> &mut Option<R> {
        self.dirty.insert(id);
        self.rows.entry(id).or_default()
    }

    /// Drops what is held of `id` (unchanged: the caller flushed first), so that it is read
    /// again from the database.
    pub(crate) fn forget(&mut self, id: Uuid) {
        self.rows.remove(&id);
        self.dirty.remove(&id);
    }

    pub(crate) fn is_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// Writes every changed row with one statement.
    pub(crate) async fn flush(&mut self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        let rows: Vec<Value> = std::mem::take(&mut self.dirty)
            .into_iter()
            .filter_map(|id| self.rows.get(&id).and_then(Option::as_ref))
            .map(super::wire_json)
            .collect();
        upsert(conn, R::NAME, R::KEY, Some("version"), rows).await
    }
}

/// Inserts `rows` (JSON objects of one shape) into `table`, or overwrites the row with the same
/// `key`; with a `guard` column, only a row whose guard is lower.
pub(crate) async fn upsert(
    conn: &mut PgConnection,
    table: &str,
    key: &str,
    guard: Option<&str>,
    rows: Vec<Value>,
) -> Result<(), sqlx::Error> {
    let Some(columns) = rows.first().and_then(Value::as_object) else {
        return Ok(());
    };
    let columns: Vec<&str> = columns.keys().map(String::as_str).collect();
    let list = columns.join(", ");
    let excluded = columns
        .iter()
        .map(|column| format!("EXCLUDED.{column}"))
        .collect::<Vec<_>>()
        .join(", ");
    let guard = guard
        .map(|column| format!(" WHERE {table}.{column} < EXCLUDED.{column}"))
        .unwrap_or_default();
    let sql = format!(
        "INSERT INTO {table} ({list}) SELECT {list} FROM jsonb_populate_recordset(NULL::{table}, $1) \
         ON CONFLICT ({key}) DO UPDATE SET ({list}) = ROW({excluded}){guard}"
    );
    sqlx::query(&sql)
        .bind(Json(Value::Array(rows)))
        .execute(conn)
        .await?;
    Ok(())
}

/// Changes to a table keyed by two ids and guarded by its parent's row (the calendar's
/// reservations, guarded by their facility's version): the last change of each key wins,
/// `None` deletes.
pub(crate) struct Children<R> {
    changes: BTreeMap<(Uuid, Uuid), Option<R>>,
}

impl<R> Default for Children<R> {
    fn default() -> Self {
        Self {
            changes: BTreeMap::new(),
        }
    }
}

impl<R: Serialize> Children<R> {
    pub(crate) fn put(&mut self, key: (Uuid, Uuid), row: R) {
        self.changes.insert(key, Some(row));
    }

    pub(crate) fn delete(&mut self, key: (Uuid, Uuid)) {
        self.changes.insert(key, None);
    }

    pub(crate) fn is_dirty(&self) -> bool {
        !self.changes.is_empty()
    }

    /// One `DELETE` for the deleted keys, one upsert for the rest.
    pub(crate) async fn flush(
        &mut self,
        conn: &mut PgConnection,
        table: &str,
        (parent, child): (&str, &str),
    ) -> Result<(), sqlx::Error> {
        let (mut parents, mut children, mut rows) = (Vec::new(), Vec::new(), Vec::new());
        for ((a, b), change) in std::mem::take(&mut self.changes) {
            if let Some(row) = change {
                rows.push(super::wire_json(&row));
            } else {
                parents.push(a);
                children.push(b);
            }
        }
        if !parents.is_empty() {
            sqlx::query(&format!(
                "DELETE FROM {table} t USING unnest($1::uuid[], $2::uuid[]) AS d(a, b) \
                 WHERE t.{parent} = d.a AND t.{child} = d.b"
            ))
            .bind(&parents)
            .bind(&children)
            .execute(&mut *conn)
            .await?;
        }
        upsert(conn, table, &format!("{parent}, {child}"), None, rows).await
    }
}
