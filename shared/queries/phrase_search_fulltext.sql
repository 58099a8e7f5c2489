SELECT p.id, p.phrase_text, ts_rank(p.search_vector, q.query) AS "rank!"
FROM phrases p, plainto_tsquery('english', $1) AS q (query)
WHERE p.active AND p.search_vector @@ q.query
ORDER BY 3 DESC, p.created_at DESC, p.id DESC
LIMIT $2
