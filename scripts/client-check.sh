#!/usr/bin/env bash
# The OpenAPI document as a contract: a Python client generated from it, used unmodified.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

GENERATOR_VERSION="0.29.1"
SCHEMA_VALIDATOR_VERSION="0.6.3"

usage() {
    cat <<EOT
Usage: scripts/client-check.sh

Builds the release binaries, starts herald-api and herald-worker on a fresh database (herald_client
on the server DATABASE_URL names, else the embedded PostgreSQL 17) with the SES/SQS emulator,
generates a Python client from the running API's /openapi.json with openapi-python-client
$GENERATOR_VERSION (PyPI, installed into .local/client), and runs scripts/client_check.py with it:
send an email, read it back until SES accepted it, register a webhook, list suppressions; and for
a table of invalid bodies, the schema's verdict (openapi-schema-validator
$SCHEMA_VALIDATOR_VERSION) beside the API's answer: both must refuse each. The
generated code is not edited: if the generator refuses the document or generates something that
does not work, the document is wrong.
EOT
}
case "${1:-}" in
    -h | --help) usage; exit 0 ;;
    "") ;;
    *) usage >&2; die "unknown option: $1" ;;
esac

cd "$HERALD_ROOT"
venv="$HERALD_LOCAL/client/venv"
if ! "$venv/bin/openapi-python-client" --version 2>/dev/null | grep -q "$GENERATOR_VERSION" ||
    ! "$venv/bin/pip" show openapi-schema-validator 2>/dev/null | grep -q "^Version: $SCHEMA_VALIDATOR_VERSION$"; then
    log "installing openapi-python-client $GENERATOR_VERSION into ${venv#"$HERALD_ROOT"/} (once)"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "openapi-python-client==$GENERATOR_VERSION" \
        "openapi-schema-validator==$SCHEMA_VALIDATOR_VERSION" ||
        die "could not install openapi-python-client"
fi

use_database
"$HERALD_ROOT/scripts/emulator.sh" start >/dev/null
export SQLX_OFFLINE=true
target="${CARGO_TARGET_DIR:-$HERALD_ROOT/target}"
log "building the release binaries"
cargo build --quiet --release -p herald-api -p herald-worker -p herald-shared --bins || die "build failed"
db_url="$(url_with_db "$DATABASE_URL" herald_client)"
"$(any_psql)" -X -q -v ON_ERROR_STOP=1 "$(url_with_db "$DATABASE_URL" postgres)" \
    -c "DROP DATABASE IF EXISTS herald_client WITH (FORCE)" -c "CREATE DATABASE herald_client" >/dev/null
DATABASE_URL="$db_url" HERALD_MIGRATE_BIN="$target/release/herald-migrate" "$HERALD_ROOT/scripts/setup-db.sh" >/dev/null

token="client-token-$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
work="$(mktemp -d)"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
export DATABASE_URL="$db_url" API_TOKEN="$token" API_ADDR=127.0.0.1:0 API_METRICS_ADDR=127.0.0.1:0 \
    METRICS_ADDR=127.0.0.1:0 PUBLIC_ADDR=127.0.0.1:0 FRONTEND_URL=https://app.example.com \
    UNSUBSCRIBE_SECRETS="client-unsubscribe-$(python3 -c 'import secrets; print(secrets.token_hex(16))')" \
    EMAIL_FROM=noreply@herald.test AWS_ENDPOINT_URL="$EMULATOR_URL" AWS_REGION=us-east-1 \
    AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_EC2_METADATA_DISABLED=true \
    SES_MAX_SEND_RATE=50 WORKER_POLL_INTERVAL_MS=200 WEBHOOK_ALLOW_PRIVATE_URLS=true RUST_LOG=warn
mkfifo "$work/out"
"$target/release/herald-api" >"$work/out" 2>"$HERALD_LOCAL/client-api.log" &
pids+=($!)
exec 3<"$work/out"
read -r -t 30 first <&3 || die "herald-api did not start (see ${HERALD_LOCAL#"$HERALD_ROOT"/}/client-api.log)"
cat <&3 >/dev/null &
pids+=($!)
api_url="${first#herald-api listening on }"
"$target/release/herald-worker" >"$HERALD_LOCAL/client-worker.log" 2>&1 &
pids+=($!)

python3 -c 'import sys, urllib.request; sys.stdout.buffer.write(urllib.request.urlopen(sys.argv[1]).read())' \
    "$api_url/openapi.json" >"$work/openapi.json" || die "could not read $api_url/openapi.json"
log "generating a client with openapi-python-client $GENERATOR_VERSION"
# No post hooks: they would run ruff, which is not part of the generated code's meaning.
printf 'post_hooks: []\n' >"$work/generator.yaml"
(cd "$work" && "$venv/bin/openapi-python-client" generate --path openapi.json --meta none \
    --config generator.yaml \
    --output-path "$work/herald_api_client" >"$work/generate.log" 2>&1) || {
    cat "$work/generate.log" >&2
    die "openapi-python-client refused /openapi.json"
}
if grep -q "Warning" "$work/generate.log"; then
    cat "$work/generate.log" >&2
    die "openapi-python-client warned about /openapi.json: something was generated wrong or left out"
fi
PYTHONPATH="$work" "$venv/bin/python" "$HERALD_ROOT/scripts/client_check.py" "$api_url" "$token" "$work/openapi.json" ||
    die "the generated client failed (logs: ${HERALD_LOCAL#"$HERALD_ROOT"/}/client-api.log, client-worker.log)"
log "the generated client sent an email, read it back, registered a webhook and listed suppressions"
