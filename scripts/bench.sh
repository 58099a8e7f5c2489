#!/usr/bin/env bash
# One benchmark run: Herald beside raw apalis and pgbench on the same server, in one table.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

usage() {
    cat <<'EOT'
Usage: scripts/bench.sh [--quick]

Builds the benchmarks in release mode and runs them one after another on one PostgreSQL server
(DATABASE_URL, else the embedded PostgreSQL 17, started here). Each creates and drops a database
of its own. Prints every figure beside its baseline, measured in the same run:
  pipeline  API enqueue vs raw apalis pushes; no-op drain through Herald's backend vs raw apalis
            (alternating rounds, medians); the full email path (herald-worker binary, local SES
            stub) vs pgbench -N TPS; worker memory idle and under load; idle pick-up latency
  expiry    1,000,000 expired tokens, batched vs one DELETE (total, longest statement)
  feedback  SES notification parse + apply vs a bare INSERT of the event rows
The report (machine, versions, table) is written to .local/bench-report.md as well.

Options:
  --quick  smaller sizes (a smoke run, not for quoting)
Environment:
  DATABASE_URL  the server to measure (any database on it; the benches create their own)
  BENCH_*       sizes, see the header of each file in worker/benches/
EOT
}

quick=false
for arg in "$@"; do
    case "$arg" in
        --quick) quick=true ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown option: $arg" ;;
    esac
done

cd "$HERALD_ROOT"
export SQLX_OFFLINE=true
use_database
PGBENCH="$(pg_tool pgbench "$DATABASE_URL")"
export PGBENCH
if $quick; then
    export BENCH_PUSHES="${BENCH_PUSHES:-400}" BENCH_JOBS="${BENCH_JOBS:-500}" BENCH_ROUNDS="${BENCH_ROUNDS:-1}"
    export BENCH_PICKUPS="${BENCH_PICKUPS:-10}" BENCH_PGBENCH_SECS="${BENCH_PGBENCH_SECS:-5}"
    export BENCH_TOKENS="${BENCH_TOKENS:-50000}" BENCH_FEEDBACK="${BENCH_FEEDBACK:-1000}"
fi

log "building the benchmarks (release; the first build takes several minutes)"
cargo bench -p herald-worker --no-run --quiet

mkdir -p "$HERALD_LOCAL"
raw="$HERALD_LOCAL/bench-output.txt"
: >"$raw"
for bench in pipeline expiry feedback; do
    log "running $bench"
    status=0
    cargo bench -p herald-worker --quiet --bench "$bench" 2>&1 | tee -a "$raw" | grep -v '^BENCH-ROW' || status=$?
    [ "$status" = 0 ] || die "the $bench benchmark failed (output in ${raw#"$HERALD_ROOT"/})"
done

report="$HERALD_LOCAL/bench-report.md"
{
    echo "## Run of $(date -u +%Y-%m-%dT%H:%MZ)"
    echo
    echo "- CPU: $(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -n1), $(nproc) cores available"
    echo "- Memory: $(free -g | awk '/^Mem:/ {print $2}') GiB; kernel $(uname -r)"
    echo "- PostgreSQL: $("$(any_psql)" "$DATABASE_URL" -XAtqc 'SHOW server_version' | awk '{print $1}') at $(url_redacted "$DATABASE_URL" | sed 's|/[^/]*$||'); $("$PGBENCH" --version)"
    echo "- $(rustc --version); sizes: $(env | grep '^BENCH_' | sort | tr '\n' ' ' | sed 's/^$/the defaults in worker\/benches/')"
    grep -h '^Herald pipeline benchmark\|^Token expiry benchmark\|^Feedback application benchmark\|^no-op drain rounds' "$raw" | sed 's/^/- /'
    echo
    echo "| measure | Herald | baseline | Herald / baseline |"
    echo "|---|---|---|---|"
    awk -F'\t' '/^BENCH-ROW/ {printf "| %s | %s | %s | %s |\n", $2, $3, $4, $5}' "$raw"
} >"$report"
echo
cat "$report"
log "report written to ${report#"$HERALD_ROOT"/}"
