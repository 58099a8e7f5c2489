#!/usr/bin/env bash
# Drops, recreates and migrates the database: for development only.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

usage() {
    cat <<'EOT'
Usage: scripts/reset-db.sh [--yes] [--allow-remote]

Drops the database named by DATABASE_URL (or the embedded PostgreSQL 17's), recreates it and applies
every migration. All data in it is lost. Refuses when APP_ENV=production. Asks for confirmation on a
terminal; without a terminal it refuses unless --yes is given.

A database on another host is refused unless --allow-remote is given (a development reset should
never reach a shared server by a stray DATABASE_URL).

Options:
  --yes           do not ask
  --allow-remote  allow a DATABASE_URL whose host is not this machine
  -h, --help this text
EOT
}

yes=false
remote=false
for arg in "$@"; do
    case "$arg" in
        --yes | -y) yes=true ;;
        --allow-remote) remote=true ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown option: $arg" ;;
    esac
done

if [ "${APP_ENV:-}" = production ]; then
    die "refusing to reset a database while APP_ENV=production"
fi

use_database
if ! url_is_local "$DATABASE_URL" && ! $remote; then
    die "refusing to reset a database on another host ($(url_host "$DATABASE_URL")): pass --allow-remote if you mean it"
fi
hide_password
db="$(url_db "$DATABASE_URL")"
[ -n "$db" ] && [ "$db" != postgres ] || die "refusing to drop the maintenance database '${db:-postgres}'"

if ! $yes; then
    if ! interactive; then
        die "refusing to drop database '$db' without confirmation: stdin is not a terminal (pass --yes)"
    fi
    read -r -p "Drop database '$db' at $(url_redacted "$DATABASE_URL") and lose all its data? Type its name to confirm: " answer
    [ "$answer" = "$db" ] || die "not confirmed; nothing changed"
fi

bin="$(migrate_bin)"
psql_bin="$(any_psql)"
log "dropping database $db"
printf 'DROP DATABASE IF EXISTS :"db" WITH (FORCE);\n' |
    "$psql_bin" -X -q -v ON_ERROR_STOP=1 -v db="$db" "$(url_with_db "$DATABASE_URL" postgres)" ||
    die "could not drop database $db"
"$bin" run
log "database $db was reset and migrated"
