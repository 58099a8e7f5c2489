#!/usr/bin/env bash
# Fuzzes the HTTP API from its own OpenAPI document with schemathesis.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

SCHEMATHESIS_VERSION="4.32.5"
VALIDATOR_VERSION="0.9.0"

usage() {
    cat <<EOT
Usage: scripts/fuzz-api.sh [--max-examples N]

Starts herald-api (debug build) on a fresh database, checks /openapi.json with
openapi-spec-validator $VALIDATOR_VERSION (the document must be valid OpenAPI 3.1), then runs
schemathesis $SCHEMATHESIS_VERSION (PyPI, both installed into .local/fuzz) against it,
authenticated: examples, coverage, fuzzing and
stateful phases. Fails when any response is a 5xx, or its status code, content type, headers or
body do not match the document. Without DATABASE_URL it uses the embedded PostgreSQL 17; the
database herald_fuzz on that server is dropped and recreated.

Options:
  --max-examples N  test cases per operation and phase (default 50; CI uses the default)
EOT
}

max_examples=50
while [ $# -gt 0 ]; do
    case "$1" in
        --max-examples)
            [ $# -ge 2 ] || die "--max-examples needs a number"
            max_examples="$2"
            shift
            ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown option: $1" ;;
    esac
    shift
done

cd "$HERALD_ROOT"
venv="$HERALD_LOCAL/fuzz/venv"
if ! "$venv/bin/st" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
    log "installing schemathesis $SCHEMATHESIS_VERSION into ${venv#"$HERALD_ROOT"/} (once)"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION" ||
        die "could not install schemathesis"
fi
if ! "$venv/bin/pip" show openapi-spec-validator 2>/dev/null | grep -q "^Version: $VALIDATOR_VERSION$"; then
    log "installing openapi-spec-validator $VALIDATOR_VERSION into ${venv#"$HERALD_ROOT"/} (once)"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "openapi-spec-validator==$VALIDATOR_VERSION" ||
        die "could not install openapi-spec-validator"
fi

use_database
export SQLX_OFFLINE=true
target="${CARGO_TARGET_DIR:-$HERALD_ROOT/target}"
cargo build --quiet -p herald-api -p herald-shared --bins || die "build failed"
db_url="$(url_with_db "$DATABASE_URL" herald_fuzz)"
"$(any_psql)" -X -q -v ON_ERROR_STOP=1 "$(url_with_db "$DATABASE_URL" postgres)" \
    -c "DROP DATABASE IF EXISTS herald_fuzz WITH (FORCE)" -c "CREATE DATABASE herald_fuzz" >/dev/null
DATABASE_URL="$db_url" HERALD_MIGRATE_BIN="$target/debug/herald-migrate" "$HERALD_ROOT/scripts/setup-db.sh" >/dev/null

token="fuzz-token-$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
work="$(mktemp -d)"
api_pid=""
cleanup() {
    [ -z "$api_pid" ] || kill "$api_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
mkfifo "$work/out"
DATABASE_URL="$db_url" API_TOKEN="$token" API_ADDR=127.0.0.1:0 API_METRICS_ADDR=127.0.0.1:0 FRONTEND_URL=https://app.example.com \
    UNSUBSCRIBE_SECRETS="fuzz-unsubscribe-$(python3 -c 'import secrets; print(secrets.token_hex(16))')" \
    EMAIL_FROM=noreply@herald.test RUST_LOG=warn "$target/debug/herald-api" >"$work/out" 2>"$HERALD_LOCAL/fuzz-api.log" &
api_pid=$!
exec 3<"$work/out"
read -r -t 30 first <&3 || die "herald-api did not start (see ${HERALD_LOCAL#"$HERALD_ROOT"/}/fuzz-api.log)"
cat <&3 >/dev/null &
api_url="${first#herald-api listening on }"
log "fuzzing $api_url/openapi.json ($max_examples examples per operation and phase)"

python3 -c 'import sys, urllib.request; sys.stdout.buffer.write(urllib.request.urlopen(sys.argv[1]).read())' \
    "$api_url/openapi.json" >"$work/openapi.json" || die "could not read $api_url/openapi.json"
"$venv/bin/openapi-spec-validator" "$work/openapi.json" ||
    die "/openapi.json is not a valid OpenAPI document (openapi-spec-validator $VALIDATOR_VERSION)"
log "openapi-spec-validator $VALIDATOR_VERSION: /openapi.json is valid"

report="$HERALD_LOCAL/fuzz-report"
status=0
# From a scratch folder: schemathesis keeps a cache in its working directory.
(cd "$work" && "$venv/bin/st" run "$api_url/openapi.json" \
    --header "Authorization: Bearer $token" \
    --checks "${HERALD_FUZZ_CHECKS:-not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance}" \
    --max-examples "$max_examples" --seed 1 --workers 2 --request-timeout 10 --generation-database none \
    --no-color --report junit --report-dir "$report") || status=$?
[ "$status" = 0 ] || die "schemathesis found problems (report in ${report#"$HERALD_ROOT"/})"
log "no server errors; every response matched the OpenAPI document"
