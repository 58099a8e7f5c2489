#!/usr/bin/env bash
# The soak: a million emails through the API's batch endpoint to two workers, on PostgreSQL 17.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

usage() {
    cat <<'EOT'
Usage: scripts/soak.sh

Posts SOAK_EMAILS (1,000,000) emails through POST /v1/emails/batch at SOAK_RATE (1,000) per second
to SOAK_WORKERS (2) herald-worker processes (release build, maintenance schedules running) and a
local SES stub, on the embedded PostgreSQL 17 (or DATABASE_URL). About 20 minutes; not in CI.
Writes per minute: emails/s, pick-up p50/p99, each worker's RSS, the sizes of apalis.jobs and
email_deliveries with dead rows and autovacuums, to .local/soak.csv; the summary (lost,
duplicates, RSS growth after warm-up) to .local/soak-report.md; the plot to .local/soak.png
(matplotlib, pip-installed into .local/plot once).
EOT
}
case "${1:-}" in
    -h | --help) usage; exit 0 ;;
    "") ;;
    *) usage >&2; die "unknown option: $1" ;;
esac

cd "$HERALD_ROOT"
export SQLX_OFFLINE=true
use_database
mkdir -p "$HERALD_LOCAL"
export SOAK_CSV="$HERALD_LOCAL/soak.csv"
log "building the soak (release)"
cargo bench -p herald-worker --no-run --quiet --bench soak
out="$HERALD_LOCAL/soak-output.txt"
log "running: per-minute lines below, the whole output in ${out#"$HERALD_ROOT"/}"
cargo bench -p herald-worker --quiet --bench soak 2>&1 | tee "$out" | grep -v '^Running'
summary="$(grep '^SOAK-SUMMARY' "$out" | tail -n1)"
[ -n "$summary" ] || die "the soak printed no summary (see ${out#"$HERALD_ROOT"/})"

venv="$HERALD_LOCAL/plot"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import matplotlib' 2>/dev/null; then
    log "installing matplotlib into ${venv#"$HERALD_ROOT"/} (once)"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check 'matplotlib==3.9.2'
fi
"$venv/bin/python" "$HERALD_ROOT/scripts/lib/soak_plot.py" "$SOAK_CSV" "$HERALD_LOCAL/soak.png"
{
    echo "## Soak of $(date -u +%Y-%m-%dT%H:%MZ)"
    echo
    echo "- PostgreSQL: $("$(any_psql)" "$DATABASE_URL" -XAtqc 'SHOW server_version' | awk '{print $1}'); $(nproc) cores; $(head -n1 "$out" | sed 's/^Herald soak: //')"
    echo "- $(echo "$summary" | cut -f2- | tr '\t' ' ')"
    echo
    echo "| $(head -n1 "$SOAK_CSV" | sed 's/,/ | /g') |"
    echo "|$(head -n1 "$SOAK_CSV" | sed 's/[^,]*/---/g; s/,/|/g')|"
    tail -n +2 "$SOAK_CSV" | sed 's/,/ | /g; s/^/| /; s/$/ |/'
} >"$HERALD_LOCAL/soak-report.md"
cat "$HERALD_LOCAL/soak-report.md"
log "report in .local/soak-report.md, plot in .local/soak.png"
