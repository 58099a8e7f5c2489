#!/usr/bin/env bash
# The local AWS emulator (moto) for SES v2, SQS and SNS, with Herald's identity, queues and topic.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

MOTO_PINS=(moto==5.2.5 flask==3.1.3 flask-cors==6.0.5)

usage() {
    cat <<EOT
Usage: scripts/emulator.sh start|stop|status|url

Runs moto (PyPI: ${MOTO_PINS[*]}) in server mode on 127.0.0.1:$EMULATOR_PORT, in a virtualenv
under .local/moto, and prepares what Herald uses (idempotent):
  - the SES identities EMAIL_FROM (default noreply@herald.test) and its domain, verified;
  - the SQS queue herald-feedback with its dead-letter queue herald-feedback-dlq (maxReceiveCount 5);
  - the SNS topic herald-ses-feedback, subscribed by the queue.
What was "sent" can be read back at $EMULATOR_URL/moto-api/data.json.

Environment: HERALD_EMULATOR_PORT (default 4566), EMAIL_FROM.
EOT
}

venv="$EMULATOR_HOME/venv"
pidfile="$EMULATOR_HOME/moto.pid"
logfile="$EMULATOR_HOME/moto.log"

install_moto() {
    if [ -x "$venv/bin/moto_server" ]; then
        return
    fi
    mkdir -p "$EMULATOR_HOME"
    if ! python3 -m venv "$venv" >/dev/null 2>&1; then
        rm -rf "$venv"
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            log "installing python3-venv"
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
            python3 -m venv "$venv"
        else
            die "python3 cannot create virtualenvs: sudo apt-get install python3-venv"
        fi
    fi
    log "installing ${MOTO_PINS[*]} into .local/moto (about 20 s, once)"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "${MOTO_PINS[@]}" ||
        die "pip could not install moto"
}

is_up() {
    python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' \
        "$EMULATOR_URL/moto-api/" >/dev/null 2>&1
}

start() {
    install_moto
    if is_up; then
        log "emulator already running at $EMULATOR_URL"
    else
        log "starting moto on $EMULATOR_URL"
        nohup "$venv/bin/moto_server" -H 127.0.0.1 -p "$EMULATOR_PORT" >"$logfile" 2>&1 &
        echo $! >"$pidfile"
        for _ in $(seq 1 100); do
            is_up && break
            kill -0 "$(cat "$pidfile")" 2>/dev/null || { tail -n 20 "$logfile" >&2; die "moto exited (is port $EMULATOR_PORT taken?)"; }
            sleep 0.2
        done
        is_up || die "moto did not answer within 20 s; see $logfile"
    fi
    prepare
}

prepare() {
    AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_DEFAULT_REGION="${AWS_REGION:-us-east-1}" \
        EMAIL_FROM="${EMAIL_FROM:-noreply@herald.test}" "$venv/bin/python" - "$EMULATOR_URL" <<'PY'
import json, os, sys
import boto3
url = sys.argv[1]
ses = boto3.client("sesv2", endpoint_url=url)
sqs = boto3.client("sqs", endpoint_url=url)
sns = boto3.client("sns", endpoint_url=url)
sender = os.environ["EMAIL_FROM"]
ses.create_email_identity(EmailIdentity=sender)  # idempotent in moto
# Its domain too, so that a request's "from" on that domain (EMAIL_FROM_ALLOWED=@domain) is sendable.
ses.create_email_identity(EmailIdentity=sender.rsplit("@", 1)[1])
dlq = sqs.create_queue(QueueName="herald-feedback-dlq")["QueueUrl"]
dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
queue = sqs.create_queue(QueueName="herald-feedback", Attributes={
    "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "5"}),
    "VisibilityTimeout": "30",
})["QueueUrl"]
queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
topic = sns.create_topic(Name="herald-ses-feedback")["TopicArn"]
subs = sns.list_subscriptions_by_topic(TopicArn=topic)["Subscriptions"]
if not any(s["Endpoint"] == queue_arn for s in subs):
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)
print(f"identity {sender} verified; queue {queue}; topic {topic}", file=sys.stderr)
PY
}

stop() {
    if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
        kill "$(cat "$pidfile")"
        rm -f "$pidfile"
        log "emulator stopped"
    else
        log "emulator is not running (started by this script)"
    fi
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status)
        if is_up; then echo "running at $EMULATOR_URL"; else echo "not running"; exit 3; fi
        ;;
    url) echo "$EMULATOR_URL" ;;
    -h | --help | help) usage ;;
    "") usage >&2; exit 2 ;;
    *) usage >&2; die "unknown command: $1" ;;
esac
