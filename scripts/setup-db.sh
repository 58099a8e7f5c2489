#!/usr/bin/env bash
# Creates the database if missing and applies pending migrations; never drops anything.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

usage() {
    cat <<'EOT'
Usage: scripts/setup-db.sh [--verify] [--app-role NAME]

Creates the database named by DATABASE_URL if it is missing, then applies pending migrations.
Never drops or rewrites data; running it twice is a no-op. Without DATABASE_URL it starts and uses
the embedded PostgreSQL 17 (scripts/pg-embedded.sh).

Options:
  --verify         change nothing; report the server, extensions, applied and pending migrations
                   (exit 0 when current, 3 when migrations are pending)
  --app-role NAME  after migrating, create (or update) the login role the API and worker should
                   use: data rights only (SELECT, INSERT, UPDATE, DELETE, sequences, functions), no
                   DDL, read-only on the migration bookkeeping. Its password is APP_DB_PASSWORD if
                   set. Migrations keep running as the owner (the DATABASE_URL user).
  -h, --help       this text
EOT
}

verify=false
app_role=""
while [ $# -gt 0 ]; do
    case "$1" in
        --verify) verify=true ;;
        --app-role)
            [ $# -ge 2 ] || die "--app-role needs a role name"
            app_role="$2"
            shift
            ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown option: $1" ;;
    esac
    shift
done
[ -z "$app_role" ] || [[ "$app_role" =~ ^[a-z_][a-z0-9_]{0,62}$ ]] ||
    die "--app-role must be a lower-case SQL name (letters, digits, _), got '$app_role'"

use_database
bin="$(migrate_bin)"
if $verify; then
    exec "$bin" status
fi
"$bin" run
log "database $(url_db "$DATABASE_URL") is ready"

if [ -n "$app_role" ]; then
    major="$(server_major "$DATABASE_URL")"
    # MAINTAIN (PostgreSQL 17+) lets the role ANALYZE and REINDEX the search tables it repairs.
    maintain=""
    [ "$major" -ge 17 ] && maintain="GRANT MAINTAIN ON public.users, public.phrases TO :\"role\";"
    "$(any_psql)" -X -q -v ON_ERROR_STOP=1 -v role="$app_role" -v password="${APP_DB_PASSWORD:-}" \
        -v db="$(url_db "$DATABASE_URL")" "$DATABASE_URL" <<SQL || die "could not set up role $app_role"
SELECT format('CREATE ROLE %I LOGIN', :'role')
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'role') \gexec
ALTER ROLE :"role" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
SELECT format('ALTER ROLE %I PASSWORD %L', :'role', :'password') WHERE :'password' <> '' \gexec
GRANT CONNECT, TEMPORARY ON DATABASE :"db" TO :"role";
REVOKE CREATE ON SCHEMA public FROM :"role";
GRANT USAGE ON SCHEMA public, apalis TO :"role";
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public, apalis TO :"role";
REVOKE INSERT, UPDATE, DELETE ON public._sqlx_migrations, apalis._sqlx_migrations FROM :"role";
GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public, apalis TO :"role";
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA public, apalis TO :"role";
ALTER DEFAULT PRIVILEGES IN SCHEMA public, apalis GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO :"role";
ALTER DEFAULT PRIVILEGES IN SCHEMA public, apalis GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO :"role";
ALTER DEFAULT PRIVILEGES IN SCHEMA public, apalis GRANT EXECUTE ON FUNCTIONS TO :"role";
$maintain
SQL
    log "role $app_role can read and write data but not change the schema; point the API and worker at it"
fi
