#!/bin/sh
# Installs one cron line from BACKUP_CRON (5 fields, UTC) and runs cron in the foreground; each run's
# output goes to the container's log.
set -eu
: "${BACKUP_CRON:?set BACKUP_CRON}"
umask 077
{
    for var in DATABASE_URL_FILE BACKUP_DIR BACKUP_KEEP; do
        eval "value=\${$var:-}"
        [ -n "$value" ] && printf "export %s='%s'\n" "$var" "$value"
    done
} >/etc/herald-backup.env
printf '%s root . /etc/herald-backup.env; /opt/herald/scripts/backup-db.sh backup >/proc/1/fd/1 2>/proc/1/fd/2\n' \
    "$BACKUP_CRON" >/etc/cron.d/herald-backup
chmod 644 /etc/cron.d/herald-backup
echo "herald-backup: pg_dump on '$BACKUP_CRON' (UTC) into ${BACKUP_DIR:-?}, keeping ${BACKUP_KEEP:-14}"
exec cron -f
