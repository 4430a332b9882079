#!/usr/bin/env bash
# Registers the Debezium PostgreSQL connector with Kafka Connect. Idempotent: PUT /connectors/<name>/config
# creates the connector or updates it in place, and a connector whose stored config is already the
# one built here is not touched, so running this twice is harmless.
#
# Before registering, the CDC topics are created (3 partitions, RF 3 by default) when KAFKA_TOPICS_CMD
# names a kafka-topics tool, so that cdc.public.users and cdc.public.orders exist even while the tables
# are empty. Then it waits until the connector and its task are RUNNING.
#
# "skipped.operations": "none" makes Debezium emit every operation, truncates included (op "t",
# no before or after image): its default skips them, and a sink would then keep rows that PostgreSQL
# no longer has.
#
# Incremental snapshots (`cdcconsumer resnapshot`): the connector reads signals from
# public.debezium_signal (part of the publication) and reports their progress to the
# notification topic (<prefix>.notifications, one partition so they stay in order).
#
# Settings (environment variables; defaults from stack/topology.env):
#   CONNECT_URL            Kafka Connect REST endpoint            (http://127.0.0.1:8083)
#   DATABASE_HOSTNAME      PostgreSQL host as Connect sees it     (127.0.0.1)
#   DATABASE_PORT          PostgreSQL port                        (5432)
#   DATABASE_SSLMODE       disable | allow | prefer | require | verify-ca | verify-full  (prefer)
#   DATABASE_SSLROOTCERT   CA certificate (PEM) as the Connect worker sees it, for verify-ca/-full
#   KAFKA_BOOTSTRAP        bootstrap servers for KAFKA_TOPICS_CMD
#   KAFKA_TOPICS_CMD       path of kafka-topics(.sh); empty = leave topic creation to Connect
#   TOPIC_REPLICATION_FACTOR, CDC_TOPIC_PARTITIONS
#   HEARTBEAT_INTERVAL_MS  heartbeat period                       (10000)
#   DECIMAL_HANDLING_MODE  precise | string | double              (precise)
#   DEBEZIUM_UNAVAILABLE_PLACEHOLDER  value sent for an unchanged TOASTed column
#   KAFKA_MESSAGE_MAX_BYTES           largest record the connector may send (32 MiB)
#   WAIT_SECONDS           how long to wait for RUNNING           (180)
#   DEBEZIUM_SIGNAL_TABLE        signal table                     (public.debezium_signal)
#   DEBEZIUM_NOTIFICATION_TOPIC  notification topic               (<prefix>.notifications)
#   CONNECT_SECRETS_FILE   a properties file *as the Connect worker sees it* holding
#                          `database.password=…`; the connector config then refers to it as
#                          ${file:<path>:database.password} (the worker needs Kafka's
#                          FileConfigProvider: config.providers=file), so neither Connect's stored
#                          config nor its REST API ever holds the password. Unset: the password
#                          (POSTGRES_REPLICATION_PASSWORD) is put in the config itself.
#
# The password never appears on a command line (the config goes to curl on stdin), the JSON is
# built by jq (any character in any value is escaped), and Connect's reply is kept in a private
# temporary file removed on exit.
set -Eeuo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [[ -f $here/stack/topology.env ]]; then
    while IFS='=' read -r key value; do
        # environment variables win over the file
        [[ $key =~ ^[A-Z][A-Z0-9_]*$ ]] && [[ -z ${!key:-} ]] && printf -v "$key" '%s' "$value"
    done <"$here/stack/topology.env"
fi

CONNECT_URL=${CONNECT_URL:-http://127.0.0.1:${CONNECT_PORT:-8083}}
DATABASE_HOSTNAME=${DATABASE_HOSTNAME:-127.0.0.1}
DATABASE_PORT=${DATABASE_PORT:-${POSTGRES_PORT:-5432}}
CONNECTOR_NAME=${CONNECTOR_NAME:-cdc-postgres-connector}
TOPIC_PREFIX=${DEBEZIUM_TOPIC_PREFIX:-cdc}
TABLES=${DEBEZIUM_TABLES:-public.users,public.orders}
SLOT=${DEBEZIUM_SLOT_NAME:-cdc_slot}
PUBLICATION=${DEBEZIUM_PUBLICATION_NAME:-cdc_publication}
DB=${POSTGRES_DB:-cdc_db}
DB_USER=${POSTGRES_REPLICATION_USER:-debezium}
DB_PASSWORD=${POSTGRES_REPLICATION_PASSWORD:-debezium_password}
RF=${TOPIC_REPLICATION_FACTOR:-${KAFKA_DEFAULT_REPLICATION_FACTOR:-3}}
PARTITIONS=${CDC_TOPIC_PARTITIONS:-3}
HEARTBEAT_INTERVAL_MS=${HEARTBEAT_INTERVAL_MS:-10000}
DECIMAL_HANDLING_MODE=${DECIMAL_HANDLING_MODE:-precise}
UNAVAILABLE_PLACEHOLDER=${DEBEZIUM_UNAVAILABLE_PLACEHOLDER:-__cdc_unchanged_toast_6b1d0e57a2c94f38}
MAX_MESSAGE_BYTES=${KAFKA_MESSAGE_MAX_BYTES:-33554432}
WAIT_SECONDS=${WAIT_SECONDS:-180}
SIGNAL_TABLE=${DEBEZIUM_SIGNAL_TABLE:-public.debezium_signal}
NOTIFICATION_TOPIC=${DEBEZIUM_NOTIFICATION_TOPIC:-$TOPIC_PREFIX.notifications}
KAFKA_TOPICS_CMD=${KAFKA_TOPICS_CMD:-}
DATABASE_SSLMODE=${DATABASE_SSLMODE:-prefer}
DATABASE_SSLROOTCERT=${DATABASE_SSLROOTCERT:-}
case $DATABASE_SSLMODE in
    disable | allow | prefer | require | verify-ca | verify-full) ;;
    *) printf 'debezium-config: error: DATABASE_SSLMODE=%s is not a PostgreSQL sslmode\n' "$DATABASE_SSLMODE" >&2; exit 2 ;;
esac

log() { printf '%s debezium-config: %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { printf 'debezium-config: error: %s\n' "$*" >&2; exit 1; }

command -v curl >/dev/null || die "curl is required"
command -v jq >/dev/null || die "jq is required (apt-get install jq)"
CONNECT_SECRETS_FILE=${CONNECT_SECRETS_FILE:-}
if [[ -n $CONNECT_SECRETS_FILE ]]; then
    # Resolved by the worker when it starts the connector; stored and shown as the reference.
    DB_PASSWORD_REF="\${file:$CONNECT_SECRETS_FILE:database.password}"
else
    DB_PASSWORD_REF=$DB_PASSWORD
fi
reply=$(mktemp)
trap 'rm -f "$reply"' EXIT

deadline=$((SECONDS + WAIT_SECONDS))
plugin_offered() {
    local plugins
    plugins=$(curl -fsS "$CONNECT_URL/connector-plugins" 2>/dev/null) || return 1
    [[ $plugins == *io.debezium.connector.postgresql.PostgresConnector* ]]
}

# RUNNING connector and task; a FAILED one ends the wait at once with its trace.
connector_running() {
    local status
    status=$(curl -fsS "$CONNECT_URL/connectors/$CONNECTOR_NAME/status" 2>/dev/null) || return 1
    if [[ $status == *'"state":"FAILED"'* ]]; then
        printf '%s\n' "$status" >&2
        die "connector $CONNECTOR_NAME or its task FAILED"
    fi
    [[ $(grep -o '"state":"RUNNING"' <<<"$status" | wc -l) -ge 2 ]]
}

until plugin_offered; do
    ((SECONDS < deadline)) || die "Kafka Connect at $CONNECT_URL did not offer the Debezium PostgreSQL plugin within ${WAIT_SECONDS}s"
    sleep 2
done

if [[ -n $KAFKA_TOPICS_CMD ]]; then
    IFS=',' read -r -a tables <<<"$TABLES"
    for table in "${tables[@]}"; do
        topic="$TOPIC_PREFIX.$table"
        "$KAFKA_TOPICS_CMD" --bootstrap-server "$KAFKA_BOOTSTRAP" --create --if-not-exists --topic "$topic" \
            --partitions "$PARTITIONS" --replication-factor "$RF" >/dev/null ||
            die "could not create topic $topic through $KAFKA_TOPICS_CMD"
        log "topic $topic present"
    done
    "$KAFKA_TOPICS_CMD" --bootstrap-server "$KAFKA_BOOTSTRAP" --create --if-not-exists \
        --topic "$NOTIFICATION_TOPIC" --partitions 1 --replication-factor "$RF" >/dev/null ||
        die "could not create topic $NOTIFICATION_TOPIC through $KAFKA_TOPICS_CMD"
    log "topic $NOTIFICATION_TOPIC present"
fi

# Every value is a string, as Kafka Connect expects. jq takes the values from its environment
# (never from its command line) and escapes them.
config=$(
    DATABASE_HOSTNAME=$DATABASE_HOSTNAME DATABASE_PORT=$DATABASE_PORT DB_USER=$DB_USER \
        DB_PASSWORD_REF=$DB_PASSWORD_REF DB=$DB TOPIC_PREFIX=$TOPIC_PREFIX TABLES=$TABLES SLOT=$SLOT \
        PUBLICATION=$PUBLICATION DECIMAL_HANDLING_MODE=$DECIMAL_HANDLING_MODE \
        UNAVAILABLE_PLACEHOLDER=$UNAVAILABLE_PLACEHOLDER MAX_MESSAGE_BYTES=$MAX_MESSAGE_BYTES \
        HEARTBEAT_INTERVAL_MS=$HEARTBEAT_INTERVAL_MS RF=$RF PARTITIONS=$PARTITIONS \
        SIGNAL_TABLE=$SIGNAL_TABLE NOTIFICATION_TOPIC=$NOTIFICATION_TOPIC \
        DATABASE_SSLMODE=$DATABASE_SSLMODE DATABASE_SSLROOTCERT=$DATABASE_SSLROOTCERT \
        jq -n '{
  "connector.class": "io.debezium.connector.postgresql.PostgresConnector",
  "tasks.max": "1",
  "plugin.name": "pgoutput",
  "database.hostname": env.DATABASE_HOSTNAME,
  "database.port": env.DATABASE_PORT,
  "database.user": env.DB_USER,
  "database.password": env.DB_PASSWORD_REF,
  "database.dbname": env.DB,
  "database.sslmode": env.DATABASE_SSLMODE,
  "topic.prefix": env.TOPIC_PREFIX,
  "table.include.list": env.TABLES,
  "slot.name": env.SLOT,
  "publication.name": env.PUBLICATION,
  "publication.autocreate.mode": "disabled",
  "snapshot.mode": "initial",
  "decimal.handling.mode": env.DECIMAL_HANDLING_MODE,
  "unavailable.value.placeholder": env.UNAVAILABLE_PLACEHOLDER,
  "producer.override.max.request.size": env.MAX_MESSAGE_BYTES,
  "time.precision.mode": "adaptive",
  "tombstones.on.delete": "true",
  "skipped.operations": "none",
  "heartbeat.interval.ms": env.HEARTBEAT_INTERVAL_MS,
  "heartbeat.action.query": "INSERT INTO public.debezium_heartbeat (id, ts) VALUES (1, now()) ON CONFLICT (id) DO UPDATE SET ts = EXCLUDED.ts",
  "signal.enabled.channels": "source",
  "signal.data.collection": env.SIGNAL_TABLE,
  "notification.enabled.channels": "sink",
  "notification.sink.topic.name": env.NOTIFICATION_TOPIC,
  "poll.interval.ms": "50",
  "max.batch.size": "2048",
  "max.queue.size": "8192",
  "topic.creation.default.replication.factor": env.RF,
  "topic.creation.default.partitions": env.PARTITIONS,
  "errors.max.retries": "-1"
} + (if env.DATABASE_SSLROOTCERT != "" then {"database.sslrootcert": env.DATABASE_SSLROOTCERT} else {} end)'
) || die "building the connector config failed"

# A connector whose stored config already equals this one is left alone: a PUT restarts the
# connector even when nothing changed, and a restart is a chance for its status to be lost (a
# restarted connector has been seen to stay UNASSIGNED while its task ran).
current=$(curl -fsS "$CONNECT_URL/connectors/$CONNECTOR_NAME/config" 2>/dev/null || true)
if [[ -n $current ]] &&
    [[ $(jq -S 'del(.name)' <<<"$current" 2>/dev/null) == "$(jq -S . <<<"$config")" ]]; then
    log "connector $CONNECTOR_NAME unchanged"
else
    # The config (with the password or its reference) goes to curl on stdin; the reply, which
    # repeats it, to a private file that is removed on exit.
    status=$(curl -sS -o "$reply" -w '%{http_code}' -X PUT -H 'Content-Type: application/json' \
        --data-binary @- "$CONNECT_URL/connectors/$CONNECTOR_NAME/config" <<<"$config") ||
        die "PUT to $CONNECT_URL failed"
    body=$(jq -c 'if type == "object" and has("config") then .config["database.password"] = "***" else . end' "$reply" 2>/dev/null || cat "$reply")
    case $status in
        200) log "connector $CONNECTOR_NAME updated" ;;
        201) log "connector $CONNECTOR_NAME created" ;;
        *) die "Kafka Connect answered HTTP $status: $body" ;;
    esac
fi

# A connector reported UNASSIGNED for 30 s while its task runs is restarted once: its status was
# lost in a rebalance or a restart, and only a new start writes it again.
unassigned_since=
restarted=
until connector_running; do
    if [[ -z $restarted ]] &&
        curl -fsS "$CONNECT_URL/connectors/$CONNECTOR_NAME/status" 2>/dev/null |
        jq -e '.connector.state == "UNASSIGNED"' >/dev/null 2>&1; then
        unassigned_since=${unassigned_since:-$SECONDS}
        if ((SECONDS - unassigned_since >= 30)); then
            log "connector $CONNECTOR_NAME UNASSIGNED for 30s: restarting it"
            curl -fsS -o /dev/null -X POST "$CONNECT_URL/connectors/$CONNECTOR_NAME/restart" ||
                log "restart request failed"
            restarted=1
        fi
    else
        unassigned_since=
    fi
    if ((SECONDS >= deadline)); then
        curl -sS "$CONNECT_URL/connectors/$CONNECTOR_NAME/status" >&2 || true
        die "connector $CONNECTOR_NAME and its task were not RUNNING within ${WAIT_SECONDS}s"
    fi
    sleep 1
done
log "connector $CONNECTOR_NAME and its task are RUNNING"
