#!/usr/bin/env bash
# Runs every check and test, against PostgreSQL 15 and 17.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

usage() {
    cat <<'EOT'
Usage: scripts/test.sh [--no-lint]

Runs cargo fmt --check, cargo sqlx prepare --check (.sqlx/ matches the code) and clippy
(-D warnings), then the whole test suite once per PostgreSQL
server: the embedded PostgreSQL 17 (started here) and the PostgreSQL on 127.0.0.1:5432 when one
answers (PostgreSQL 15 on our machines). Every #[sqlx::test] gets its own database on that server.
Then the fault-injection tests at CI size (scripts/chaos.sh --ci, on a PostgreSQL of their own)
API fuzzing with schemathesis (scripts/fuzz-api.sh), and a Python client generated from the
OpenAPI document, used against the release binaries (scripts/client-check.sh).
The SES/SQS emulator (moto, scripts/emulator.sh) is started for the end-to-end tests. The real
clients some tests run are installed once into .local/tools, pinned: sqlx-cli (built with cargo,
postgres + rustls only) and promtool (from Debian's prometheus package).
Prints which server versions were tested; exits non-zero on any failure.

Options:
  --no-lint  skip fmt, sqlx prepare --check and clippy
Environment:
  HERALD_TEST_PG15_URL     the second server (default postgres://$USER@127.0.0.1:5432/herald_test)
  HERALD_TEST_REQUIRE_PG15 set to 1 to fail when that server is missing (CI sets it)
EOT
}

lint=true
for arg in "$@"; do
    case "$arg" in
        --no-lint) lint=false ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown option: $arg" ;;
    esac
done

cd "$HERALD_ROOT"
# Builds use the committed .sqlx query data, never whatever DATABASE_URL points at.
export SQLX_OFFLINE=true
unset DATABASE_URL

if cargo nextest --version >/dev/null 2>&1; then
    run_tests() { cargo nextest run --workspace --no-fail-fast --failure-output final; }
    build_tests() { cargo nextest run --workspace --no-run; }
else
    log "cargo-nextest not found; using cargo test"
    run_tests() { cargo test --workspace --no-fail-fast; }
    build_tests() { cargo test --workspace --no-run; }
fi

# Every process this run starts carries this mark in its environment, so that the exit can find
# any that outlived it (a browser a test left behind, a server a script forgot).
export HERALD_TEST_RUN="$$-$(date +%s%N)"

# The processes other than this shell that carry the mark (bash builtins only: a forked helper
# would carry it too).
leftovers() {
    local dir pid kv
    for dir in /proc/[0-9]*; do
        pid="${dir#/proc/}"
        [ "$pid" = "$$" ] && continue
        [ "$pid" = "$BASHPID" ] && continue
        [ -r "$dir/environ" ] || continue
        while IFS= read -r -d '' kv; do
            if [ "$kv" = "HERALD_TEST_RUN=$HERALD_TEST_RUN" ]; then
                echo "$pid"
                break
            fi
        done 2>/dev/null <"$dir/environ"
    done
}

# Leave the services as we found them: stop at exit what this run started; then fail if any
# process this run started is still alive.
cleanup=()
on_exit() {
    local status=$? c pids=() pid tries
    for c in "${cleanup[@]}"; do
        "$HERALD_ROOT/scripts/$c" stop || true
    done
    for tries in 1 2 3 4 5 6 7 8 9 10; do
        mapfile -t pids < <(leftovers)
        [ ${#pids[@]} -eq 0 ] && break
        sleep 0.5
    done
    if [ ${#pids[@]} -gt 0 ]; then
        echo "[test.sh] error: ${#pids[@]} process(es) this run started outlived it:" >&2
        for pid in "${pids[@]}"; do
            echo "  $pid $(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | cut -c1-160)" >&2
        done
        kill -KILL "${pids[@]}" 2>/dev/null || true
        status=1
    fi
    exit "$status"
}
trap on_exit EXIT
for service in pg-embedded.sh emulator.sh; do
    "$HERALD_ROOT/scripts/$service" status >/dev/null 2>&1 || cleanup+=("$service")
done
"$HERALD_ROOT/scripts/pg-embedded.sh" start

# Real clients the tests compare Herald with (pinned, installed once into .local/tools).
HERALD_SQLX_CLI="$(ensure_sqlx_cli)"
HERALD_PROMTOOL="$(ensure_promtool)"
export HERALD_SQLX_CLI HERALD_PROMTOOL

if $lint; then
    log "cargo fmt --check"
    cargo fmt --all -- --check || die "code is not formatted: run cargo fmt --all"
    # First: it touches the workspace's sources, so what builds after it builds once.
    log "cargo sqlx prepare --workspace --check (.sqlx/ matches the queries in the code)"
    prepare_url="$(url_with_db "$PG_EMBEDDED_URL" herald_prepare)"
    DATABASE_URL="$prepare_url" "$HERALD_ROOT/scripts/setup-db.sh" >/dev/null || die "cannot migrate $prepare_url"
    # Dependencies first: apalis-postgres uses sqlx's macros too, and when prepare is what builds
    # it, its queries land among ours and the check fails on a fresh target directory.
    DATABASE_URL="$prepare_url" SQLX_OFFLINE=false cargo check --workspace --quiet ||
        die "cargo check failed against $prepare_url"
    PATH="$TOOLS_HOME/bin:$PATH" DATABASE_URL="$prepare_url" SQLX_OFFLINE=false \
        cargo sqlx prepare --workspace --check ||
        die ".sqlx/ is out of date: run cargo sqlx prepare --workspace (docs/development.md)"
    log "cargo clippy -D warnings"
    cargo clippy --workspace --all-targets --quiet -- -D warnings || die "clippy found problems"
fi

log "building the tests (the first build takes several minutes)"
build_tests
# The SES/SQS emulator the end-to-end tests send to.
"$HERALD_ROOT/scripts/emulator.sh" start
export HERALD_TEST_AWS_ENDPOINT="$EMULATOR_URL"

# Headless Chromium and ChromeDriver for the dashboard test (Debian's packages; nothing is
# downloaded at run time).
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        log "installing chromium and chromium-driver for the dashboard test (Debian packages, once)"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null ||
            die "could not install chromium and chromium-driver"
    else
        die "the dashboard test needs Chromium and ChromeDriver: sudo apt-get install chromium chromium-driver"
    fi
fi
export HERALD_CHROMEDRIVER="$(command -v chromedriver)"
export HERALD_CHROMIUM="$(command -v chromium)"

# No Docker engine runs here: check the compose file and Dockerfiles as far as that allows.
log "checking docker-compose.yml and docker/ (no engine needed)"
"$EMULATOR_HOME/venv/bin/python" "$HERALD_ROOT/scripts/check-docker.py" || die "the Docker files are inconsistent"

# Servers: label|url of the master database sqlx::test creates its test databases from.
servers=("embedded|$(url_with_db "$PG_EMBEDDED_URL" herald_test)")
pg15_url="${HERALD_TEST_PG15_URL:-postgres://${USER:-$(id -un)}@127.0.0.1:5432/herald_test}"
if "$(any_psql)" "$(url_with_db "$pg15_url" postgres)" -XAtqc 'SELECT 1' >/dev/null 2>&1; then
    servers+=("127.0.0.1:5432|$pg15_url")
elif [ "${HERALD_TEST_REQUIRE_PG15:-0}" = 1 ]; then
    die "no PostgreSQL answers at $(url_redacted "$pg15_url") and HERALD_TEST_REQUIRE_PG15=1"
else
    log "no PostgreSQL on 127.0.0.1:5432; testing against the embedded PostgreSQL 17 only"
fi

tested=()
failed=()
for entry in "${servers[@]}"; do
    label="${entry%%|*}"
    url="${entry#*|}"
    psql_bin="$(any_psql)"
    ensure_database "$url" || die "cannot prepare the test database on $label"
    version="$("$psql_bin" -XAtqc 'SHOW server_version' "$url" | awk '{print $1}')"
    log "running the tests against PostgreSQL $version ($label)"
    if DATABASE_URL="$url" run_tests; then
        tested+=("PostgreSQL $version ($label): passed")
    else
        failed+=("PostgreSQL $version ($label): FAILED")
    fi
done

# Fault injection at CI size, on a server of its own (it restarts it).
log "fault injection (scripts/chaos.sh --ci)"
if "$HERALD_ROOT/scripts/chaos.sh" --ci; then
    tested+=("fault injection (SIGKILL, PostgreSQL restart, SES faults, poison feedback): passed")
else
    failed+=("fault injection: FAILED")
fi

# API fuzzing from the OpenAPI document.
log "API fuzzing (scripts/fuzz-api.sh)"
if "$HERALD_ROOT/scripts/fuzz-api.sh"; then
    tested+=("API fuzzing (schemathesis against /openapi.json): passed")
else
    failed+=("API fuzzing: FAILED")
fi

# The document as a contract: a generated Python client against the release binaries.
log "generated client (scripts/client-check.sh)"
if "$HERALD_ROOT/scripts/client-check.sh"; then
    tested+=("generated Python client (openapi-python-client, release binaries): passed")
else
    failed+=("generated Python client: FAILED")
fi

echo
echo "Results:"
for line in "${tested[@]}" "${failed[@]}"; do
    [ -n "$line" ] && echo "  $line"
done
[ ${#failed[@]} -eq 0 ] || die "${#failed[@]} part(s) failed"
