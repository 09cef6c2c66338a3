//! What every service that keeps its own PostgreSQL schema does first.

use sqlx::{
    Connection as _, PgConnection, PgPool,
    migrate::Migrator,
    postgres::{PgConnectOptions, PgPoolOptions},
};

/// Opens a pool whose connections see `schema` alone (their `search_path`), once the schema
/// exists ([`create_schema`]) and `migrator` has run in it: what a service (or a part of one)
/// that keeps its own tables does at start.
pub async fn connect_schema(
    options: &PgConnectOptions,
    schema: &str,
    pool: PgPoolOptions,
    migrator: &Migrator,
) -> Result<PgPool, sqlx::Error> {
    let mut admin = PgConnection::connect_with(options).await?;
    create_schema(&mut admin, schema).await?;
    admin.close().await?;
    let pool = pool
        .connect_with(options.clone().options([("search_path", schema)]))
        .await?;
    migrator.run(&pool).await?;
    Ok(pool)
}

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
