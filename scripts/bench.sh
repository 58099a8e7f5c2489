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
            stub) vs pgbench -N TPS, at batch 100 / concurrency 32 and at 500 / 256 (the
            headline); worker memory idle and under load; idle pick-up latency
  expiry    1,000,000 expired tokens, batched vs one DELETE (total, longest statement)
  feedback  SES notification parse + apply vs a bare INSERT of the event rows
  peers     Herald's no-op drain (fetching 100, and 1,000, jobs per statement) beside
            graphile-worker 0.18 and pg-boss 12 (npm, pinned in
            scripts/peers, installed into .local/peers with Node 22 from npm if the machine's
            Node is older), their defaults and their batched settings, 20,000 and 200,000 jobs
The report (machine, versions, table) is written to .local/bench-report.md as well, and the
headline figures to .local/bench-report.json.

Options:
  --quick     smaller sizes (a smoke run, not for quoting)
  --no-peers  skip the peers (no npm)
Environment:
  DATABASE_URL  the server to measure (any database on it; the benches create their own)
  BENCH_*       sizes, see the header of each file in worker/benches/
EOT
}

quick=false
peers=true
for arg in "$@"; do
    case "$arg" in
        --quick) quick=true ;;
        --no-peers) peers=false ;;
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
    export BENCH_PUSHES="${BENCH_PUSHES:-400}" BENCH_JOBS="${BENCH_JOBS:-500}" BENCH_EMAIL_JOBS="${BENCH_EMAIL_JOBS:-1000}" BENCH_ROUNDS="${BENCH_ROUNDS:-1}"
    export BENCH_PICKUPS="${BENCH_PICKUPS:-10}" BENCH_PGBENCH_SECS="${BENCH_PGBENCH_SECS:-5}"
    export BENCH_TOKENS="${BENCH_TOKENS:-50000}" BENCH_FEEDBACK="${BENCH_FEEDBACK:-1000}"
    export BENCH_BATCH_EMAILS="${BENCH_BATCH_EMAILS:-4000}" BENCH_OPEN_SECS="${BENCH_OPEN_SECS:-2}"
    BENCH_PEER_JOBS="${BENCH_PEER_JOBS:-5000}"
fi
BENCH_PEER_JOBS="${BENCH_PEER_JOBS:-20000 200000}"

# A Node of at least 22 (the peers' engines): the machine's, else the npm `node` package's.
node22() {
    if command -v node >/dev/null 2>&1 && [ "$(node -p 'process.versions.node.split(".")[0]')" -ge 22 ]; then
        command -v node
        return
    fi
    local dir="$HERALD_LOCAL/node22"
    if [ ! -x "$dir/node_modules/.bin/node" ]; then
        log "installing Node 22 from npm into ${dir#"$HERALD_ROOT"/} (once)"
        mkdir -p "$dir"
        npm install --silent --no-audit --no-fund --prefix "$dir" node@22 >&2 || die "cannot install Node 22 from npm"
    fi
    echo "$dir/node_modules/.bin/node"
}

# Herald's fetch size beside a peer's mode of the same name: the bench's, and its throughput one.
herald_batch() { if [ "$1" = batched ]; then echo 1000; else echo 100; fi; }

# Runs the peers' drains and Herald's, N jobs each, every one on a fresh database of this server.
run_peers() {
    command -v npm >/dev/null 2>&1 || die "the peers need npm (apt-get install npm), or run with --no-peers"
    local node dir="$HERALD_LOCAL/peers" n peer mode batch db url out
    node="$(node22)"
    if ! cmp -s "$HERALD_ROOT/scripts/peers/package-lock.json" "$dir/package-lock.json" 2>/dev/null; then
        log "installing graphile-worker and pg-boss into ${dir#"$HERALD_ROOT"/} (once)"
        mkdir -p "$dir"
        cp "$HERALD_ROOT/scripts/peers/package.json" "$HERALD_ROOT/scripts/peers/package-lock.json" "$dir/"
        (cd "$dir" && PATH="$(dirname "$node"):$PATH" npm ci --silent --no-audit --no-fund) >&2 ||
            die "cannot install the peers from npm"
    fi
    cp "$HERALD_ROOT/scripts/peers/drain.mjs" "$dir/"
    for n in $BENCH_PEER_JOBS; do
        # Herald in its two settings too: the bench's (fetch 100) and its throughput one (fetch
        # 1,000 per statement, WORKER_BATCH_SIZE), each beside the peer's mode of the same name.
        for mode in default batched; do
            batch="$(herald_batch "$mode")"
            log "no-op drain of $n jobs: Herald, batch $batch"
            BENCH_PARTS=drain BENCH_JOBS="$n" BENCH_ROUNDS=1 BENCH_BATCH="$batch" \
                cargo bench -p herald-worker --quiet --bench pipeline 2>&1 | tee -a "$HERALD_LOCAL/bench-peers-output.txt" |
                sed -n "s/^BENCH-KEY\tnoop_drain_per_s\t/PEER\therald\t$mode\t$n\t/p" >>"$peers_out"
        done
        for peer in graphile pgboss; do
            for mode in default batched; do
                log "no-op drain of $n jobs: $peer, $mode settings"
                db="herald_peer_$$"
                url="$(url_with_db "$DATABASE_URL" "$db")"
                "$(any_psql)" "$(url_with_db "$DATABASE_URL" postgres)" -XAqc "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
                out="$(cd "$dir" && DATABASE_URL="$url" JOBS="$n" LIMIT_SECS="${BENCH_PEER_LIMIT_SECS:-60}" "$node" drain.mjs "$peer" "$mode" | tail -n1)" ||
                    die "the $peer drain failed"
                "$(any_psql)" "$(url_with_db "$DATABASE_URL" postgres)" -XAqc "DROP DATABASE IF EXISTS $db WITH (FORCE)"
                echo "$out" >>"$HERALD_LOCAL/bench-peers-output.txt"
                printf 'PEER\t%s\t%s\t%s\t%s\t%s\n' "$peer" "$mode" "$n" \
                    "$(echo "$out" | sed -n 's/.*"per_s":\([0-9.e+-]*\).*/\1/p')" \
                    "$(echo "$out" | sed -n 's/.*"completed":\([0-9]*\).*/\1/p')" >>"$peers_out"
            done
        done
    done
}

log "building the benchmarks (release; the first build takes several minutes)"
cargo bench -p herald-worker --no-run --quiet
# The enqueue part talks to the API as its own process, as production runs it (in the bench's own
# process it shared a runtime with the load generator: 0.57-0.58 of a raw push against 0.73-0.79).
cargo build --release -p herald-api --quiet
export BENCH_API="${BENCH_API:-process}"

mkdir -p "$HERALD_LOCAL"
raw="$HERALD_LOCAL/bench-output.txt"
: >"$raw"
for bench in pipeline expiry feedback; do
    log "running $bench"
    status=0
    cargo bench -p herald-worker --quiet --bench "$bench" 2>&1 | tee -a "$raw" | grep -v '^BENCH-ROW' || status=$?
    [ "$status" = 0 ] || die "the $bench benchmark failed (output in ${raw#"$HERALD_ROOT"/})"
done
peers_out="$HERALD_LOCAL/bench-peers.tsv"
: >"$peers_out"
: >"$HERALD_LOCAL/bench-peers-output.txt"
if $peers; then
    run_peers
fi

report="$HERALD_LOCAL/bench-report.md"
{
    echo "## Run of $(date -u +%Y-%m-%dT%H:%MZ)"
    echo
    echo "- Commit: $(git -C "$HERALD_ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$HERALD_ROOT" diff --quiet 2>/dev/null || echo " (with uncommitted changes)")"
    echo "- CPU: $(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -n1), $(nproc) cores available"
    echo "- Memory: $(free -g | awk '/^Mem:/ {print $2}') GiB; kernel $(uname -r)"
    echo "- PostgreSQL: $("$(any_psql)" "$DATABASE_URL" -XAtqc 'SHOW server_version' | awk '{print $1}') at $(url_redacted "$DATABASE_URL" | sed 's|/[^/]*$||'); $("$PGBENCH" --version)"
    echo "- $(rustc --version); sizes: $(env | grep '^BENCH_' | sort | tr '\n' ' ' | sed 's/^$/the defaults in worker\/benches/')"
    grep -h '^Herald pipeline benchmark\|^Token expiry benchmark\|^Feedback application benchmark\|^no-op drain rounds' "$raw" | sed 's/^/- /'
    echo
    echo "| measure | Herald | baseline | Herald / baseline |"
    echo "|---|---|---|---|"
    awk -F'\t' '/^BENCH-ROW/ {printf "| %s | %s | %s | %s |\n", $2, $3, $4, $5}' "$raw"
    # Peers: Herald's no-op drain beside each peer's, same jobs, same server; each mode beside the
    # same mode (default: Herald fetching 100 per statement; batched: 1,000), concurrency 32.
    awk -F'\t' -v limit="${BENCH_PEER_LIMIT_SECS:-60}" -v default_batch="$(herald_batch default)" \
        -v batched_batch="$(herald_batch batched)" '
        $2 == "herald" { herald[$3 "\t" $4] = $5 }
        $2 != "herald" { line[++n] = $0 }
        END {
            for (i = 1; i <= n; i++) {
                split(line[i], f, "\t")
                note = (f[6] < f[4]) ? sprintf(" (%d of %d done in the %d s limit)", f[6], f[4], limit) : ""
                name = (f[2] == "graphile") ? "graphile-worker 0.18" : "pg-boss 12"
                h = herald[f[3] "\t" f[4]]
                printf "| no-op drain, %d jobs: Herald (batch %d) vs %s, %s settings%s, jobs/s | %.0f | %.0f | %.2f |\n",
                    f[4], (f[3] == "batched" ? batched_batch : default_batch), name, f[3], note, h, f[5], (f[5] > 0 ? h / f[5] : 0)
            }
        }' "$peers_out"
} >"$report"
# The headline figures, one JSON object (keys the benches print as BENCH-KEY, the peers' ratios).
json="$HERALD_LOCAL/bench-report.json"
{
    awk -F'\t' '/^BENCH-KEY/ && !seen[$2]++ {print $2 "\t" $3}' "$raw"
    awk -F'\t' '
        $2 == "herald" { herald[$3 "\t" $4] = $5 }
        $2 != "herald" { peer[$2 "_" $3 "\t" $4] = $5; mode[$2 "_" $3 "\t" $4] = $3 }
        END {
            for (k in peer) {
                split(k, p, "\t")
                suffix = (p[2] == 20000) ? "" : "_" p[2]
                h = herald[mode[k] "\t" p[2]]
                if (peer[k] > 0) printf "noop_drain_vs_%s%s\t%.4f\n", p[1], suffix, h / peer[k]
            }
            for (k in herald) {
                split(k, p, "\t")
                printf "noop_drain_herald_%s_%s_per_s\t%.0f\n", p[1], p[2], herald[k]
            }
        }' "$peers_out"
    printf 'run_at\t"%s"\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
} | awk -F'\t' 'BEGIN {printf "{"} {printf "%s\n  \"%s\": %s", (NR > 1 ? "," : ""), $1, $2} END {print "\n}"}' >"$json"
echo
cat "$report"
log "report written to ${report#"$HERALD_ROOT"/} and ${json#"$HERALD_ROOT"/}"
