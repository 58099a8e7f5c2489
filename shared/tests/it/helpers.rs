//! Catalog snapshots and small helpers shared by the tests.

use sqlx::PgConnection;

/// Runs a catalog query that returns one text column and collects it.
pub async fn lines(conn: &mut PgConnection, sql: &'static str) -> Vec<String> {
    sqlx::query_scalar::<_, String>(sql)
        .fetch_all(conn)
        .await
        .unwrap_or_else(|e| panic!("catalog query failed: {e}\n{sql}"))
}

/// `table.column type NULL|NOT NULL [default …]` for every column of the application's tables.
pub const COLUMNS_SQL: &str = "
    SELECT format('%s.%s %s %s%s', c.relname, a.attname, format_type(a.atttypid, a.atttypmod),
                  CASE WHEN a.attnotnull THEN 'NOT NULL' ELSE 'NULL' END,
                  coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), ''))
    FROM pg_attribute a
    JOIN pg_class c ON c.oid = a.attrelid
    JOIN pg_namespace n ON n.oid = c.relnamespace
    LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
    WHERE n.nspname = 'public' AND c.relkind = 'r' AND a.attnum > 0 AND NOT a.attisdropped
      AND c.relname <> '_sqlx_migrations'
    ORDER BY 1";

/// Foreign keys, unique, primary-key and check constraints, each with its columns.
pub const CONSTRAINTS_SQL: &str = "
    SELECT CASE con.contype
        WHEN 'f' THEN format('FK %s(%s) -> %s(%s) ON DELETE %s', c.relname,
            (SELECT string_agg(attname, ', ' ORDER BY k.i) FROM unnest(con.conkey) WITH ORDINALITY k(n, i)
               JOIN pg_attribute ON attrelid = con.conrelid AND attnum = k.n),
            con.confrelid::regclass,
            (SELECT string_agg(attname, ', ' ORDER BY k.i) FROM unnest(con.confkey) WITH ORDINALITY k(n, i)
               JOIN pg_attribute ON attrelid = con.confrelid AND attnum = k.n),
            CASE con.confdeltype WHEN 'a' THEN 'NO ACTION' WHEN 'r' THEN 'RESTRICT' WHEN 'c' THEN 'CASCADE'
                 WHEN 'n' THEN 'SET NULL' WHEN 'd' THEN 'SET DEFAULT' END)
        ELSE format('%s %s(%s)',
            CASE con.contype WHEN 'p' THEN 'PK' WHEN 'u' THEN 'UNIQUE' WHEN 'c' THEN 'CHECK' ELSE con.contype::text END,
            c.relname,
            (SELECT string_agg(attname, ', ' ORDER BY attname) FROM pg_attribute
               WHERE attrelid = con.conrelid AND attnum = ANY (con.conkey)))
        END
    FROM pg_constraint con
    JOIN pg_class c ON c.oid = con.conrelid
    JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = 'public' AND c.relname <> '_sqlx_migrations' AND con.contype IN ('f', 'p', 'u', 'c')
    ORDER BY 1";

/// Every index as `table method (keys)[ UNIQUE][ WHERE …]`, names left out.
pub const INDEXES_SQL: &str = "
    SELECT format('%s %s%s', c.relname,
                  regexp_replace(pg_get_indexdef(i.indexrelid), '^.* USING ', ''),
                  CASE WHEN i.indisunique THEN ' UNIQUE' ELSE '' END)
    FROM pg_index i
    JOIN pg_class c ON c.oid = i.indrelid
    JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = 'public' AND c.relname <> '_sqlx_migrations'
    ORDER BY 1";

/// Triggers with their definitions.
pub const TRIGGERS_SQL: &str = "
    SELECT pg_get_triggerdef(t.oid)
    FROM pg_trigger t
    JOIN pg_class c ON c.oid = t.tgrelid
    JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = 'public' AND NOT t.tgisinternal
    ORDER BY 1";

/// Functions in `public` (extension members included, so extensions show up twice over).
pub const FUNCTIONS_SQL: &str = "
    SELECT format('%s(%s)', p.proname, pg_get_function_identity_arguments(p.oid))
    FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
    WHERE n.nspname = 'public'
    ORDER BY 1";

/// Installed extensions other than plpgsql.
pub const EXTENSIONS_SQL: &str =
    "SELECT extname::text FROM pg_extension WHERE extname <> 'plpgsql' ORDER BY 1";

/// Seed data: role names, user slugs and phrase count.
pub const SEEDS_SQL: &str = "
    SELECT 'role ' || name FROM roles
    UNION ALL SELECT 'user ' || slug FROM users
    UNION ALL SELECT 'phrases ' || count(*) FROM phrases
    ORDER BY 1";

/// Everything the migrations define, as sorted lines; two equal snapshots mean equal schemas.
pub async fn schema_snapshot(conn: &mut PgConnection) -> Vec<String> {
    let mut all = Vec::new();
    for (kind, sql) in [
        ("column", COLUMNS_SQL),
        ("constraint", CONSTRAINTS_SQL),
        ("index", INDEXES_SQL),
        ("trigger", TRIGGERS_SQL),
        ("function", FUNCTIONS_SQL),
        ("extension", EXTENSIONS_SQL),
    ] {
        all.extend(
            lines(conn, sql)
                .await
                .into_iter()
                .map(|l| format!("{kind}: {l}")),
        );
    }
    all
}

/// Like [`schema_snapshot`] plus the seed rows, for tables that exist.
pub async fn snapshot_with_seeds(conn: &mut PgConnection) -> Vec<String> {
    let mut all = schema_snapshot(conn).await;
    let has_phrases: bool = sqlx::query_scalar("SELECT to_regclass('public.phrases') IS NOT NULL")
        .fetch_one(&mut *conn)
        .await
        .expect("regclass");
    if has_phrases {
        all.extend(lines(conn, SEEDS_SQL).await);
    }
    all
}

/// Asserts two sorted line sets are equal, printing only the differences.
pub fn assert_same_lines(actual: &[String], expected: &[String], what: &str) {
    let missing: Vec<_> = expected.iter().filter(|l| !actual.contains(l)).collect();
    let unexpected: Vec<_> = actual.iter().filter(|l| !expected.contains(l)).collect();
    assert!(
        missing.is_empty() && unexpected.is_empty(),
        "{what} differ\n  missing:\n    {}\n  unexpected:\n    {}",
        missing
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n    "),
        unexpected
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n    "),
    );
}

/// Splits an indented block of expected lines, ignoring blanks.
pub fn expected(block: &str) -> Vec<String> {
    block
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The SQLSTATE of a database error, e.g. `23505` for a unique violation.
pub fn sqlstate(err: &sqlx::Error) -> Option<String> {
    err.as_database_error()
        .and_then(|e| e.code())
        .map(|c| c.to_string())
}

/// apalis's schema, and `gone@example.com` suppressed for every email (a bounce).
pub async fn queue_with_suppressed_address(pool: &sqlx::PgPool) {
    apalis_postgres::PostgresStorage::setup(pool)
        .await
        .expect("apalis");
    herald_shared::suppressions::raise(
        &mut pool.acquire().await.expect("conn"),
        &herald_shared::suppressions::Raise::new(
            "gone@example.com",
            herald_shared::suppressions::SuppressionType::Bounce,
            true,
            true,
        ),
    )
    .await
    .expect("suppress");
}
