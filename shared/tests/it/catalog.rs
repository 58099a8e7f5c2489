//! The migrated catalog against `../shared/spec/schema.md`, written out by hand from the spec.

use sqlx::PgPool;

use crate::helpers::{
    COLUMNS_SQL, CONSTRAINTS_SQL, INDEXES_SQL, assert_same_lines, expected, lines,
};

const ID: &str = "uuid NOT NULL default uuid_generate_v7()";
const CREATED: &str = "timestamp with time zone NOT NULL default now()";

fn columns() -> Vec<String> {
    let spec = format!(
        "
        users.id {ID}
        users.email character varying(255) NOT NULL
        users.password_hash character varying(255) NULL
        users.display_name character varying(100) NOT NULL
        users.slug character varying(255) NOT NULL
        users.active boolean NOT NULL default true
        users.search_vector tsvector NULL
        users.real_name character varying(255) NULL
        users.google_user_id character varying(255) NULL
        users.timer_is_public boolean NOT NULL default false
        users.timer_show_in_list boolean NOT NULL default false
        users.created_at {CREATED}
        users.updated_at {CREATED}

        roles.id {ID}
        roles.name character varying(50) NOT NULL
        roles.description text NULL
        roles.created_at {CREATED}
        roles.updated_at {CREATED}

        user_roles.id {ID}
        user_roles.user_id uuid NOT NULL
        user_roles.role_id uuid NOT NULL
        user_roles.assigned_at {CREATED}
        user_roles.assigned_by uuid NULL

        incident_timers.id {ID}
        incident_timers.user_id uuid NOT NULL
        incident_timers.reset_timestamp {CREATED}
        incident_timers.notes text NULL
        incident_timers.created_at {CREATED}
        incident_timers.updated_at {CREATED}

        refresh_tokens.id {ID}
        refresh_tokens.user_id uuid NOT NULL
        refresh_tokens.token_hash character varying(255) NOT NULL
        refresh_tokens.device_info jsonb NULL
        refresh_tokens.expires_at timestamp with time zone NOT NULL
        refresh_tokens.last_used_at timestamp with time zone NULL
        refresh_tokens.created_at {CREATED}
        refresh_tokens.updated_at {CREATED}

        phrases.id {ID}
        phrases.phrase_text character varying(500) NOT NULL
        phrases.active boolean NOT NULL default true
        phrases.created_by uuid NOT NULL
        phrases.search_vector tsvector NULL
        phrases.created_at {CREATED}
        phrases.updated_at {CREATED}

        user_excluded_phrases.id {ID}
        user_excluded_phrases.user_id uuid NOT NULL
        user_excluded_phrases.phrase_id uuid NOT NULL
        user_excluded_phrases.excluded_at {CREATED}

        phrase_suggestions.id {ID}
        phrase_suggestions.user_id uuid NOT NULL
        phrase_suggestions.phrase_text character varying(500) NOT NULL
        phrase_suggestions.status character varying(20) NOT NULL default 'pending'::character varying
        phrase_suggestions.admin_id uuid NULL
        phrase_suggestions.admin_reason text NULL
        phrase_suggestions.created_at {CREATED}
        phrase_suggestions.updated_at {CREATED}

        verification_tokens.id {ID}
        verification_tokens.user_id uuid NOT NULL
        verification_tokens.token_hash character varying(255) NOT NULL
        verification_tokens.expires_at timestamp with time zone NOT NULL
        verification_tokens.created_at {CREATED}

        password_reset_tokens.id {ID}
        password_reset_tokens.user_id uuid NOT NULL
        password_reset_tokens.token_hash character varying(255) NOT NULL
        password_reset_tokens.expires_at timestamp with time zone NOT NULL
        password_reset_tokens.used_at timestamp with time zone NULL
        password_reset_tokens.created_at {CREATED}

        email_suppressions.id {ID}
        email_suppressions.email character varying(255) NOT NULL
        email_suppressions.suppression_type character varying(50) NOT NULL
        email_suppressions.reason text NULL
        email_suppressions.suppress_transactional boolean NOT NULL default false
        email_suppressions.suppress_marketing boolean NOT NULL default true
        email_suppressions.bounce_count integer NOT NULL default 0
        email_suppressions.last_bounce_at timestamp with time zone NULL
        email_suppressions.created_at {CREATED}
        email_suppressions.updated_at {CREATED}
        "
    );
    expected(&spec)
}

const TABLES: [&str; 11] = [
    "users",
    "roles",
    "user_roles",
    "incident_timers",
    "refresh_tokens",
    "phrases",
    "user_excluded_phrases",
    "phrase_suggestions",
    "verification_tokens",
    "password_reset_tokens",
    "email_suppressions",
];

fn constraints() -> Vec<String> {
    let mut all: Vec<String> = TABLES.iter().map(|t| format!("PK {t}(id)")).collect();
    all.extend(expected(
        "
        UNIQUE users(email)
        UNIQUE users(slug)
        UNIQUE users(google_user_id)
        UNIQUE roles(name)
        UNIQUE user_roles(role_id, user_id)
        UNIQUE refresh_tokens(token_hash)
        UNIQUE user_excluded_phrases(phrase_id, user_id)
        UNIQUE verification_tokens(token_hash)
        UNIQUE password_reset_tokens(token_hash)
        UNIQUE email_suppressions(email)

        CHECK phrase_suggestions(status)
        CHECK password_reset_tokens(created_at, expires_at)
        CHECK email_suppressions(suppression_type)
        CHECK email_suppressions(bounce_count)

        FK user_roles(user_id) -> users(id) ON DELETE CASCADE
        FK user_roles(role_id) -> roles(id) ON DELETE CASCADE
        FK user_roles(assigned_by) -> users(id) ON DELETE NO ACTION
        FK incident_timers(user_id) -> users(id) ON DELETE CASCADE
        FK refresh_tokens(user_id) -> users(id) ON DELETE CASCADE
        FK phrases(created_by) -> users(id) ON DELETE RESTRICT
        FK user_excluded_phrases(user_id) -> users(id) ON DELETE CASCADE
        FK user_excluded_phrases(phrase_id) -> phrases(id) ON DELETE CASCADE
        FK phrase_suggestions(user_id) -> users(id) ON DELETE CASCADE
        FK phrase_suggestions(admin_id) -> users(id) ON DELETE SET NULL
        FK verification_tokens(user_id) -> users(id) ON DELETE CASCADE
        FK password_reset_tokens(user_id) -> users(id) ON DELETE CASCADE
        ",
    ));
    all
}

fn indexes() -> Vec<String> {
    // Primary keys and unique constraints bring their own btree index; nothing else duplicates them.
    let mut all: Vec<String> = TABLES
        .iter()
        .map(|t| format!("{t} btree (id) UNIQUE"))
        .collect();
    all.extend(expected(
        "
        users btree (email) UNIQUE
        users btree (slug) UNIQUE
        users btree (google_user_id) UNIQUE
        users btree (created_at)
        users btree (active)
        users btree (timer_is_public, timer_show_in_list) WHERE ((timer_is_public = true) AND (timer_show_in_list = true))
        users gin (search_vector)
        users gin (display_name gin_trgm_ops)
        users gin (email gin_trgm_ops)
        users gin (slug gin_trgm_ops)

        roles btree (name) UNIQUE

        user_roles btree (user_id, role_id) UNIQUE
        user_roles btree (role_id)

        incident_timers btree (user_id, reset_timestamp DESC)
        incident_timers btree (reset_timestamp DESC)

        refresh_tokens btree (token_hash) UNIQUE
        refresh_tokens btree (user_id)
        refresh_tokens btree (expires_at)

        phrases btree (created_by)
        phrases btree (active, id)
        phrases gin (search_vector)
        phrases gin (phrase_text gin_trgm_ops)

        user_excluded_phrases btree (user_id, phrase_id) UNIQUE
        user_excluded_phrases btree (phrase_id)

        phrase_suggestions btree (user_id)
        phrase_suggestions btree (status)
        phrase_suggestions btree (admin_id)

        verification_tokens btree (token_hash) UNIQUE
        verification_tokens btree (user_id)
        verification_tokens btree (expires_at)

        password_reset_tokens btree (token_hash) UNIQUE
        password_reset_tokens btree (user_id)
        password_reset_tokens btree (expires_at)

        email_suppressions btree (email) UNIQUE
        email_suppressions btree (suppression_type)
        email_suppressions btree (created_at)
        ",
    ));
    all
}

/// Keeps the lines about the spec's tables; Herald's own tables are checked elsewhere.
fn spec_tables_only(lines: Vec<String>) -> Vec<String> {
    lines
        .into_iter()
        .filter(|line| {
            let rest = line
                .strip_prefix("PK ")
                .or_else(|| line.strip_prefix("UNIQUE "))
                .or_else(|| line.strip_prefix("CHECK "))
                .or_else(|| line.strip_prefix("FK "))
                .unwrap_or(line);
            let table: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            TABLES.contains(&table.as_str())
        })
        .collect()
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn every_column_has_the_type_nullability_and_default_of_the_spec(pool: PgPool) {
    let mut conn = pool.acquire().await.expect("conn");
    let actual = spec_tables_only(lines(&mut conn, COLUMNS_SQL).await);
    assert_same_lines(&actual, &columns(), "columns");
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn keys_uniques_checks_and_foreign_keys_with_delete_rules_match_the_spec(pool: PgPool) {
    let mut conn = pool.acquire().await.expect("conn");
    let actual = spec_tables_only(lines(&mut conn, CONSTRAINTS_SQL).await);
    assert_same_lines(&actual, &constraints(), "constraints");
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn indexes_match_the_spec_by_kind_and_keys(pool: PgPool) {
    let mut conn = pool.acquire().await.expect("conn");
    let actual = spec_tables_only(lines(&mut conn, INDEXES_SQL).await);
    assert_same_lines(&actual, &indexes(), "indexes");
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn no_index_duplicates_another_index_or_unique_constraint(pool: PgPool) {
    let duplicates: Vec<String> = sqlx::query_scalar(
        "SELECT format('%s duplicates %s', a.indexrelid::regclass, b.indexrelid::regclass)
         FROM pg_index a
         JOIN pg_index b ON a.indrelid = b.indrelid AND a.indexrelid < b.indexrelid
         JOIN pg_class c ON c.oid = a.indrelid
         WHERE c.relnamespace = 'public'::regnamespace
           AND a.indkey::text = b.indkey::text AND a.indclass::text = b.indclass::text
           AND coalesce(pg_get_expr(a.indexprs, a.indrelid), '') = coalesce(pg_get_expr(b.indexprs, b.indrelid), '')
           AND coalesce(pg_get_expr(a.indpred, a.indrelid), '') = coalesce(pg_get_expr(b.indpred, b.indrelid), '')",
    )
    .fetch_all(&pool)
    .await
    .expect("duplicates query");
    assert!(duplicates.is_empty(), "{duplicates:?}");
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn check_constraints_accept_exactly_the_listed_values(pool: PgPool) {
    let mut tx = pool.begin().await.expect("tx");
    let user: uuid::Uuid = sqlx::query_scalar("SELECT id FROM users WHERE slug = 'system'")
        .fetch_one(&mut *tx)
        .await
        .expect("system user");
    for status in ["pending", "approved", "rejected"] {
        sqlx::query(
            "INSERT INTO phrase_suggestions (user_id, phrase_text, status) VALUES ($1, 'x', $2)",
        )
        .bind(user)
        .bind(status)
        .execute(&mut *tx)
        .await
        .unwrap_or_else(|e| panic!("status {status} refused: {e}"));
    }
    for kind in ["bounce", "complaint", "unsubscribe", "manual"] {
        sqlx::query("INSERT INTO email_suppressions (email, suppression_type) VALUES ($1, $2)")
            .bind(format!("{kind}@example.com"))
            .bind(kind)
            .execute(&mut *tx)
            .await
            .unwrap_or_else(|e| panic!("type {kind} refused: {e}"));
    }
    tx.commit().await.expect("commit");

    let violations = [
        (
            "INSERT INTO phrase_suggestions (user_id, phrase_text, status) SELECT id, 'x', 'maybe' FROM users LIMIT 1",
            "status",
        ),
        (
            "INSERT INTO email_suppressions (email, suppression_type) VALUES ('a@b.c', 'soft_bounce')",
            "type",
        ),
        (
            "INSERT INTO email_suppressions (email, suppression_type, bounce_count) VALUES ('c@b.c', 'bounce', -1)",
            "count",
        ),
        (
            "INSERT INTO password_reset_tokens (user_id, token_hash, expires_at) SELECT id, 'h', now() - interval '1 minute' FROM users LIMIT 1",
            "expiry",
        ),
    ];
    for (sql, what) in violations {
        let err = sqlx::query(sql).execute(&pool).await.expect_err(what);
        let code = crate::helpers::sqlstate(&err);
        assert_eq!(code.as_deref(), Some("23514"), "{what}: {err}");
    }
}
