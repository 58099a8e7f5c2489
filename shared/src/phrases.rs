//! `phrases`: search (full-text ranking with a trigram substring fallback; the SQL is in
//! `shared/queries/`) and the search-vector repair. A trigger keeps `search_vector` current
//! (`phrases_compute_search_vector`); the repair uses the same function.

use sqlx::PgExecutor;
use uuid::Uuid;

/// One search result.
#[derive(Debug, Clone, PartialEq)]
pub struct PhraseHit {
    /// The phrase's id.
    pub id: Uuid,
    /// The phrase itself.
    pub phrase_text: String,
    /// `ts_rank` for full-text hits; 0 for substring (fallback) hits.
    pub rank: f32,
}

/// How a search found its results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SearchMode {
    /// `plainto_tsquery` matched; ranked by `ts_rank`, newest first on ties.
    FullText,
    /// Full-text found nothing; case-insensitive substring match served by the trigram index.
    Substring,
}

/// The SQL of the full-text query (also used by tests that `EXPLAIN` it).
pub const FULLTEXT_SQL: &str = include_str!("../queries/phrase_search_fulltext.sql");
/// The SQL of the substring fallback query.
pub const TRIGRAM_SQL: &str = include_str!("../queries/phrase_search_trigram.sql");

/// Searches active phrases: full-text first, then the substring fallback when that finds nothing.
#[tracing::instrument(skip(conn))]
pub async fn search(
    conn: &mut sqlx::PgConnection,
    query: &str,
    limit: i64,
) -> Result<(SearchMode, Vec<PhraseHit>), sqlx::Error> {
    let hits = search_fulltext(&mut *conn, query, limit).await?;
    if !hits.is_empty() {
        return Ok((SearchMode::FullText, hits));
    }
    let hits = search_substring(&mut *conn, query, limit).await?;
    Ok((SearchMode::Substring, hits))
}

/// Full-text search only.
pub async fn search_fulltext(
    executor: impl PgExecutor<'_>,
    query: &str,
    limit: i64,
) -> Result<Vec<PhraseHit>, sqlx::Error> {
    sqlx::query_file_as!(
        PhraseHit,
        "queries/phrase_search_fulltext.sql",
        query,
        limit
    )
    .fetch_all(executor)
    .await
}

/// Case-insensitive substring search; `%`, `_` and `\` in the query match themselves.
pub async fn search_substring(
    executor: impl PgExecutor<'_>,
    query: &str,
    limit: i64,
) -> Result<Vec<PhraseHit>, sqlx::Error> {
    let pattern = escape_like(query);
    sqlx::query_file_as!(
        PhraseHit,
        "queries/phrase_search_trigram.sql",
        pattern,
        limit
    )
    .fetch_all(executor)
    .await
}

/// Escapes LIKE wildcards so user input is matched literally.
pub fn escape_like(input: &str) -> String {
    let mut out = String::with_capacity(input.len());
    for c in input.chars() {
        if matches!(c, '\\' | '%' | '_') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Recomputes up to `limit` missing or stale search vectors after `cursor` (id order); returns
/// the ids fixed.
pub async fn refresh_search_vectors(
    pool: &sqlx::PgPool,
    cursor: Uuid,
    limit: i64,
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar!(
        "WITH stale AS (SELECT id FROM phrases
                        WHERE id > $1
                          AND search_vector IS DISTINCT FROM phrases_compute_search_vector(phrase_text)
                        ORDER BY id LIMIT $2)
         UPDATE phrases p SET search_vector = phrases_compute_search_vector(p.phrase_text)
         FROM stale WHERE p.id = stale.id RETURNING p.id",
        cursor,
        limit
    )
    .fetch_all(pool)
    .await
}

#[cfg(test)]
mod tests {
    use super::escape_like;

    #[test]
    fn like_wildcards_are_escaped() {
        assert_eq!(escape_like(r"50%_off\"), r"50\%\_off\\");
        assert_eq!(escape_like("plain"), "plain");
    }
}
