SELECT p.id, p.phrase_text, 0::real AS "rank!"
FROM phrases p
WHERE p.active AND p.phrase_text ILIKE '%' || $1 || '%'
ORDER BY p.created_at DESC, p.id DESC
LIMIT $2
