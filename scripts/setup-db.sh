#!/usr/bin/env bash
# Creates the database if missing and applies pending migrations; never drops anything.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

usage() {
    cat <<'EOT'
Usage: scripts/setup-db.sh [--verify]

Creates the database named by DATABASE_URL if it is missing, then applies pending migrations.
Never drops or rewrites data; running it twice is a no-op. Without DATABASE_URL it starts and uses
the embedded PostgreSQL 17 (scripts/pg-embedded.sh).

Options:
  --verify   change nothing; report the server, extensions, applied and pending migrations
             (exit 0 when current, 3 when migrations are pending)
  -h, --help this text
EOT
}

verify=false
for arg in "$@"; do
    case "$arg" in
        --verify) verify=true ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown option: $arg" ;;
    esac
done

use_database
bin="$(migrate_bin)"
if $verify; then
    exec "$bin" status
fi
"$bin" run
log "database $(url_db "$DATABASE_URL") is ready"
