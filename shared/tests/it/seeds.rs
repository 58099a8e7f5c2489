use sqlx::PgPool;

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn the_four_roles_exist_with_descriptions(pool: PgPool) {
    let roles: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT name::text, description FROM roles ORDER BY name")
            .fetch_all(&pool)
            .await
            .expect("roles");
    let names: Vec<&str> = roles.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["admin", "email-verified", "trusted-contact", "user"]
    );
    for (name, description) in &roles {
        let description = description.as_deref().unwrap_or_default();
        assert!(
            description.len() > 10 && !description.contains('\n'),
            "{name}: {description:?}"
        );
    }
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn the_system_user_exists_and_cannot_sign_in(pool: PgPool) {
    let (email, display_name, password_hash, active): (String, String, Option<String>, bool) =
        sqlx::query_as(
            "SELECT email::text, display_name::text, password_hash::text, active FROM users WHERE slug = 'system'",
        )
        .fetch_one(&pool)
        .await
        .expect("system user");
    assert!(email.starts_with("system@"), "{email}");
    assert_eq!(display_name, "System");
    // No password hashing scheme produces '!', so no password can ever match it.
    assert_eq!(password_hash.as_deref(), Some("!"));
    assert!(active);
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn twenty_distinct_phrases_of_40_to_100_characters_are_seeded_by_the_system_user(
    pool: PgPool,
) {
    let phrases: Vec<(String, String, bool)> = sqlx::query_as(
        "SELECT p.phrase_text::text, u.slug::text, p.active FROM phrases p JOIN users u ON u.id = p.created_by",
    )
    .fetch_all(&pool)
    .await
    .expect("phrases");
    assert_eq!(phrases.len(), 20);
    let mut texts: Vec<&str> = phrases.iter().map(|(t, _, _)| t.as_str()).collect();
    for (text, owner, active) in &phrases {
        let len = text.chars().count();
        assert!((40..=100).contains(&len), "{len} characters: {text}");
        assert_eq!(owner, "system");
        assert!(active);
    }
    texts.sort_unstable();
    texts.dedup();
    assert_eq!(texts.len(), 20, "phrases must be distinct");
}

#[sqlx::test(migrator = "herald_shared::db::MIGRATOR")]
async fn the_system_user_cannot_be_deleted_while_it_owns_phrases(pool: PgPool) {
    let err = sqlx::query("DELETE FROM users WHERE slug = 'system'")
        .execute(&pool)
        .await
        .expect_err("RESTRICT");
    let code = crate::helpers::sqlstate(&err);
    assert_eq!(code.as_deref(), Some("23503"), "{err}");
}
