#!/usr/bin/env bash
# Backs up, lists and restores the database with pg_dump's custom format.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

usage() {
    cat <<'EOT'
Usage: scripts/backup-db.sh backup
       scripts/backup-db.sh restore FILE [--yes]
       scripts/backup-db.sh list

backup    writes BACKUP_DIR/<db>_<UTC timestamp>.dump (pg_dump custom format, compressed), checks it
          with pg_restore --list, then keeps only the newest BACKUP_KEEP backups of that database
restore   replaces the database with FILE after you type 'yes' (or --yes; without a terminal it
          refuses); the current contents are first saved as a backup of their own
list      lists the backups, newest first

Environment: DATABASE_URL (default: the embedded PostgreSQL 17), BACKUP_DIR (default ./backups),
BACKUP_KEEP (default 14). Client tools match the server's major version. Dumps and a folder this
creates are private to the user running it (umask 077); the URL's password is passed to the tools in
PGPASSWORD, never in their arguments. Pruning touches only files named exactly
<db>_<YYYYMMDDTHHMMSSZ>.dump of this database.
EOT
}

# Dumps hold every address and token hash: nobody else may read them.
umask 077

backup_dir="${BACKUP_DIR:-$HERALD_ROOT/backups}"
keep="${BACKUP_KEEP:-14}"
[[ "$keep" =~ ^[1-9][0-9]*$ ]] || die "BACKUP_KEEP must be a positive whole number (got '$keep')"

# do_backup [PRUNE]: PRUNE=false keeps every older backup (used before a restore).
do_backup() {
    local prune="${1:-true}" db dump restore stamp file
    db="$(url_db "$DATABASE_URL")"
    safe_db_name "$db"
    dump="$(pg_tool pg_dump "$DATABASE_URL")"
    restore="$(pg_tool pg_restore "$DATABASE_URL")"
    mkdir -p "$backup_dir"
    stamp="$(date -u +%Y%m%dT%H%M%SZ)"
    file="$backup_dir/${db}_${stamp}.dump"
    # One backup per second keeps names unique and in time order.
    while [ -e "$file" ]; do
        sleep 1
        stamp="$(date -u +%Y%m%dT%H%M%SZ)"
        file="$backup_dir/${db}_${stamp}.dump"
    done
    "$dump" --format=custom --file="$file.partial" "$DATABASE_URL" || {
        rm -f "$file.partial"
        die "pg_dump failed"
    }
    "$restore" --list "$file.partial" >/dev/null || {
        rm -f "$file.partial"
        die "the new dump does not read back with pg_restore --list; nothing kept"
    }
    mv "$file.partial" "$file"
    log "backup written: $file ($(du -h "$file" | cut -f1))"
    # Timestamps sort as text; keep the newest $keep of this database. Only exact names: database
    # "herald" must not count (or delete) "herald_test_<stamp>.dump" of database "herald_test".
    $prune && own_backups "$db" | sort -r |
        tail -n +"$((keep + 1))" | while read -r old; do
            rm -f -- "$backup_dir/$old"
            log "removed old backup $old (BACKUP_KEEP=$keep)"
        done
    echo "$file"
}

# own_backups DB: the file names in the backup folder that are exactly DB_<UTC timestamp>.dump.
own_backups() {
    local db="$1" name stamp
    find "$backup_dir" -maxdepth 1 -type f -name "${db}_*.dump" -printf '%f\n' | while read -r name; do
        stamp="${name#"${db}_"}"
        stamp="${stamp%.dump}"
        if [[ "$stamp" =~ ^[0-9]{8}T[0-9]{6}Z$ ]]; then
            echo "$name"
        fi
    done
}

do_restore() {
    local file="$1" yes="$2" db restore psql_bin
    [ -f "$file" ] || die "no such backup file: $file"
    db="$(url_db "$DATABASE_URL")"
    safe_db_name "$db"
    [ "$db" != postgres ] || die "refusing to restore over the maintenance database"
    restore="$(pg_tool pg_restore "$DATABASE_URL")"
    "$restore" --list "$file" >/dev/null || die "$file is not a readable pg_dump custom-format file"
    if ! $yes; then
        interactive || die "refusing to restore without confirmation: stdin is not a terminal (pass --yes)"
        read -r -p "Replace ALL data in database '$db' with $file? Type 'yes' to continue: " answer
        [ "$answer" = yes ] || die "not confirmed; nothing changed"
    fi
    psql_bin="$(any_psql)"
    local exists
    exists="$("$psql_bin" -XAtq "$(url_with_db "$DATABASE_URL" postgres)" -v db="$db" \
        <<<"SELECT 1 FROM pg_database WHERE datname = :'db'")"
    if [ "$exists" = 1 ]; then
        log "saving the current contents first"
        # No pruning here: it could delete the very file being restored.
        do_backup false >/dev/null
    fi
    log "restoring $file into $db"
    printf 'DROP DATABASE IF EXISTS :"db" WITH (FORCE);\nCREATE DATABASE :"db";\n' |
        "$psql_bin" -X -q -v ON_ERROR_STOP=1 -v db="$db" "$(url_with_db "$DATABASE_URL" postgres)" ||
        die "could not recreate database $db"
    "$restore" --exit-on-error --single-transaction --no-owner --dbname="$DATABASE_URL" "$file" ||
        die "pg_restore failed; database $db is empty, the previous contents are in the newest backup"
    log "restored $db from $file"
}

do_list() {
    if [ ! -d "$backup_dir" ] || [ -z "$(find "$backup_dir" -maxdepth 1 -name '*.dump' -print -quit)" ]; then
        log "no backups in $backup_dir"
        return
    fi
    find "$backup_dir" -maxdepth 1 -name '*.dump' -printf '%f\t%s bytes\n' | sort -r
}

command="${1:-}"
case "$command" in
    -h | --help | help) usage; exit 0 ;;
    backup)
        [ $# -eq 1 ] || die "backup takes no arguments"
        use_database
        hide_password
        do_backup
        ;;
    restore)
        shift
        file="" yes=false
        for arg in "$@"; do
            case "$arg" in
                --yes | -y) yes=true ;;
                -*) die "unknown option: $arg" ;;
                *) [ -z "$file" ] || die "restore takes one FILE"; file="$arg" ;;
            esac
        done
        [ -n "$file" ] || { usage >&2; die "restore needs a FILE"; }
        use_database
        hide_password
        do_restore "$file" "$yes"
        ;;
    list) do_list ;;
    "") usage >&2; exit 2 ;;
    *) usage >&2; die "unknown command: $command" ;;
esac
