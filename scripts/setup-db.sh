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
    "$bin" app-role "$app_role" >&2 || die "could not set up role $app_role"
    log "role $app_role can read and write data but not change the schema; point the API and worker at it"
fi
