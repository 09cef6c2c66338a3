//! What every service that keeps its own PostgreSQL schema does first.

use sqlx::PgConnection;

/// Creates `schema` unless it exists. Replicas and services start together and race to create
/// it, and `CREATE SCHEMA IF NOT EXISTS` is not atomic: the loser gets a unique violation, which
/// is fine once the schema is there.
pub async fn create_schema(conn: &mut PgConnection, schema: &str) -> Result<(), sqlx::Error> {
    let created = sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
        .execute(&mut *conn)
        .await;
    match created {
        Ok(_) => Ok(()),
        Err(error) => {
            let exists: bool =
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
                    .bind(schema)
                    .fetch_one(&mut *conn)
                    .await?;
            if exists { Ok(()) } else { Err(error) }
        }
    }
}
