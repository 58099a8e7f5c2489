#!/usr/bin/env bash
# Fault injection: the real binaries against a counting SES stub while workers are SIGKILLed,
# PostgreSQL restarts, SES throttles/fails/hangs, and poison sits in the feedback queue.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

usage() {
    cat <<'EOT'
Usage: scripts/chaos.sh [--ci]

Runs the fault-injection tests (worker/tests/it/chaos.rs) one at a time against a PostgreSQL 17
of their own (embedded, 127.0.0.1:$HERALD_CHAOS_PG_PORT, data in chaos-data beside the embedded server's data), which one
test restarts mid-run, and the SES/SQS emulator for the feedback test. Each test prints its counts
(emails, kills, SES calls, duplicates, uncertain resends, lost). Exits non-zero on any failure.

Sizes (full run / --ci, which scripts/test.sh uses):
  HERALD_CHAOS_EMAILS          emails in the SIGKILL run           10000 / 2000
  HERALD_CHAOS_RESTART_EMAILS  emails queued across the PG restart  5000 / 1000
  HERALD_CHAOS_FAULT_EMAILS    emails through 429/500/timeouts      1000 / 300
  HERALD_CHAOS_FEEDBACK        good notifications among poison      1000 / 200
Environment:
  HERALD_CHAOS_PG_PORT  port of the dedicated server (default 5434)
  HERALD_CHAOS_PG_DOWN_SECS  how long the restart keeps the server down (default 10)
  HERALD_CHAOS_ONLY     run only the tests whose names match (a regex: kill, restart, ses, poison)
EOT
}

ci=false
for arg in "$@"; do
    case "$arg" in
        --ci) ci=true ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown option: $arg" ;;
    esac
done

cd "$HERALD_ROOT"
export SQLX_OFFLINE=true
if $ci; then
    : "${HERALD_CHAOS_EMAILS:=2000}" "${HERALD_CHAOS_RESTART_EMAILS:=1000}"
    : "${HERALD_CHAOS_FAULT_EMAILS:=300}" "${HERALD_CHAOS_FEEDBACK:=200}"
else
    : "${HERALD_CHAOS_EMAILS:=10000}" "${HERALD_CHAOS_RESTART_EMAILS:=5000}"
    : "${HERALD_CHAOS_FAULT_EMAILS:=1000}" "${HERALD_CHAOS_FEEDBACK:=1000}"
fi
export HERALD_CHAOS_EMAILS HERALD_CHAOS_RESTART_EMAILS HERALD_CHAOS_FAULT_EMAILS HERALD_CHAOS_FEEDBACK

# A server of our own: the restart test must not cut anyone else's connections.
port="${HERALD_CHAOS_PG_PORT:-5434}"
pg=(env HERALD_PG_PORT="$port" HERALD_PG_DATA="$PG_EMBEDDED_HOME/chaos-data" "$HERALD_ROOT/scripts/pg-embedded.sh")
printf -v pg_cmd '%q ' "${pg[@]}"
# Down long enough for sqlx's reconnect backoff to reach seconds (it doubles from 10 ms).
export HERALD_CHAOS_PG_DOWN_SECS="${HERALD_CHAOS_PG_DOWN_SECS:-10}"
export HERALD_CHAOS_PG_RESTART="$pg_cmd stop && sleep $HERALD_CHAOS_PG_DOWN_SECS && $pg_cmd start"

stop_emulator=false
on_exit() {
    "${pg[@]}" stop || true
    if $stop_emulator; then "$HERALD_ROOT/scripts/emulator.sh" stop || true; fi
}
trap on_exit EXIT
"$HERALD_ROOT/scripts/emulator.sh" status >/dev/null 2>&1 || stop_emulator=true
"$HERALD_ROOT/scripts/emulator.sh" start
export HERALD_TEST_AWS_ENDPOINT="$EMULATOR_URL"
"${pg[@]}" start
export DATABASE_URL
DATABASE_URL="$(url_with_db "$("${pg[@]}" url)" herald_test)"
ensure_database "$DATABASE_URL"

# The tests start the real binaries, which building the tests alone does not build.
log "building herald-api and herald-worker (the first build takes several minutes)"
cargo build --quiet -p herald-api -p herald-worker || die "build failed"
log "fault injection: $HERALD_CHAOS_EMAILS emails under SIGKILL, $HERALD_CHAOS_RESTART_EMAILS across a PostgreSQL restart, $HERALD_CHAOS_FAULT_EMAILS through SES faults, $HERALD_CHAOS_FEEDBACK notifications among poison"
# One at a time: one test restarts the server the others use, and timings matter.
status=0
cargo nextest run -p herald-worker --test it --run-ignored only -E "test(/^chaos::.*${HERALD_CHAOS_ONLY:-}/)" \
    --test-threads 1 --no-fail-fast --success-output immediate --failure-output final \
    >"$HERALD_LOCAL/chaos.log" 2>&1 || status=$?
grep -E '^ *(PASS|FAIL|SIGSEGV|SIGABRT|TIMEOUT) |chaos [a-zA-Z ]+: |panicked|Summary' "$HERALD_LOCAL/chaos.log" || true
[ "$status" = 0 ] || die "fault injection failed (full output: ${HERALD_LOCAL#"$HERALD_ROOT"/}/chaos.log)"
log "fault injection passed (full output: ${HERALD_LOCAL#"$HERALD_ROOT"/}/chaos.log)"
