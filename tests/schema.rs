//! The SQLite and PostgreSQL migrations build the same schema: the same
//! tables, each with the same columns, the same nullability and the same
//! primary key, on a fresh database of each kind. A column added to one
//! migration set and not the other fails here rather than in production.

mod common;

use std::collections::BTreeMap;

use bizcall::db::Db;
use common::{Backend, TestDb};

/// Table → column → (nullable, part of the primary key).
type Schema = BTreeMap<String, BTreeMap<String, (bool, bool)>>;

async fn schema(db: &Db) -> Schema {
    let rows: Vec<(String, String, bool, bool)> = match db {
        Db::Sqlite(pool) => sqlx::query_as(
            "SELECT m.name, p.name, p.\"notnull\" = 0, p.pk > 0 \
             FROM sqlite_master m JOIN pragma_table_info(m.name) p \
             WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%' \
               AND m.name NOT LIKE '\\_sqlx%' ESCAPE '\\'",
        )
        .fetch_all(pool)
        .await
        .unwrap(),
        Db::Postgres(pool) => sqlx::query_as(
            "SELECT c.table_name::text, c.column_name::text, c.is_nullable = 'YES', \
                    EXISTS (SELECT 1 FROM information_schema.table_constraints t \
                            JOIN information_schema.key_column_usage k \
                              ON k.constraint_name = t.constraint_name \
                             AND k.table_name = t.table_name \
                            WHERE t.constraint_type = 'PRIMARY KEY' \
                              AND t.table_schema = 'public' \
                              AND t.table_name = c.table_name \
                              AND k.column_name = c.column_name) \
             FROM information_schema.columns c \
             WHERE c.table_schema = 'public' AND c.table_name NOT LIKE '\\_sqlx%'",
        )
        .fetch_all(pool)
        .await
        .unwrap(),
    };
    let mut out = Schema::new();
    for (table, column, nullable, pk) in rows {
        // A primary-key column is NOT NULL on PostgreSQL whatever its
        // declaration; SQLite reports its declaration.
        let nullable = nullable && !pk;
        out.entry(table).or_default().insert(column, (nullable, pk));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_and_postgresql_migrations_build_the_same_schema() {
    let lite = TestDb::new(Backend::Sqlite).await;
    let pg = TestDb::new(Backend::Postgres).await;
    let (lite_db, pg_db) = (lite.connect().await, pg.connect().await);
    let (a, b) = (schema(&lite_db).await, schema(&pg_db).await);
    lite_db.close().await;
    pg_db.close().await;
    pg.cleanup().await;
    assert!(
        a.contains_key("calls") && a.contains_key("call_trail"),
        "{a:?}"
    );
    for table in a.keys().chain(b.keys()) {
        assert_eq!(
            a.get(table),
            b.get(table),
            "table {table}: SQLite (left) and PostgreSQL (right) differ"
        );
    }
}
