#!/usr/bin/env bash
# The pipeline's infrastructure as local processes on loopback, no Docker needed:
#   3 Kafka nodes (KRaft, combined broker+controller), PostgreSQL 15 with logical replication,
#   Kafka Connect (distributed) with the Debezium PostgreSQL connector, 3 Cassandra 5.0 nodes.
# Artifacts come from Maven Central (Kafka, Connect, Debezium, Cassandra), Debian (PostgreSQL) and
# PyPI (cqlsh). State and logs live in one git-ignored folder; downloads are cached outside the clone.
#
# Usage: stack/stack.sh <command> [args]   (run with no command for the list)
set -Eeuo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STACK="$ROOT/stack"
STATE="${CDC_STACK_DIR:-$ROOT/.stack}"
CACHE="${CDC_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/cdc-pipeline}"
PG_BIN="${PG_BIN:-/usr/lib/postgresql/15/bin}"
READY_TIMEOUT="${CDC_READY_TIMEOUT:-300}"

# Heap sizes chosen for a 2-core, 24 GiB machine (measured totals are in the README).
KAFKA_HEAP="${KAFKA_HEAP:-512m}"
CONNECT_HEAP="${CONNECT_HEAP:-768m}"
CASSANDRA_HEAP="${CASSANDRA_HEAP:-1024m}"
# G1's pause-time goal for the Cassandra nodes (ms); empty keeps stack/cassandra-jvm17.options'.
CASSANDRA_GC_PAUSE_MS="${CASSANDRA_GC_PAUSE_MS:-}"

# --- topology and versions ---------------------------------------------------------------------

while IFS='=' read -r key value; do
    [[ $key =~ ^[A-Z][A-Z0-9_]*$ ]] && printf -v "$key" '%s' "$value"
done <"$STACK/topology.env"

pom_property() { sed -n "s:.*<$2>\(.*\)</$2>.*:\1:p" "$STACK/maven/$1.pom.xml" | head -n 1; }
KAFKA_VERSION="$(pom_property kafka kafka.version)"
# log4j 2.25.3 fixed CVE-2025-68161; the Kafka libraries' directory is named after both versions so
# that a bump fetches anew.
LOG4J_VERSION="$(pom_property kafka log4j.version)"
CASSANDRA_VERSION="$(pom_property cassandra cassandra.version)"
DEBEZIUM_VERSION="$(pom_property debezium debezium.version)"
CQLSH_VERSION=6.2.2

KAFKA_LIB="$CACHE/dist/kafka-$KAFKA_VERSION-log4j-$LOG4J_VERSION"
CASSANDRA_LIB="$CACHE/dist/cassandra-$CASSANDRA_VERSION"
DEBEZIUM_PLUGINS="$CACHE/dist/debezium-$DEBEZIUM_VERSION"
CQLSH_VENV="$CACHE/cqlsh-$CQLSH_VERSION"

LOGS="$STATE/logs"
RUN="$STATE/run"

# --- output helpers ----------------------------------------------------------------------------

say() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Fails naming the service and showing the end of its log.
fail_service() {
    local svc=$1 why=$2
    printf 'error: %s: %s\n' "$svc" "$why" >&2
    local log="$LOGS/$svc.log"
    if [[ -f $log ]]; then
        printf -- '--- last lines of %s ---\n' "$log" >&2
        tail -n 40 "$log" >&2
    fi
    exit 1
}

# wait_until <service> <description> <timeout-seconds> <command...>: polls the command.
wait_until() {
    local svc=$1 what=$2 timeout=$3
    shift 3
    local deadline=$((SECONDS + timeout))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            fail_service "$svc" "not ready after ${timeout}s: $what"
        fi
        if [[ $svc != postgres ]] && [[ -n ${EXPECT_RUNNING:-} ]] && ! is_running "$svc"; then
            fail_service "$svc" "process exited while waiting for: $what"
        fi
        sleep 1
    done
}

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

# --- profile -----------------------------------------------------------------------------------
# "ha" (default): the highly available 3 + 3 topology. "lite": 1 broker, 1 Cassandra node, RF 1.
# "secure": the lite topology with TLS and authentication on every connection (stack/secure.sh).

# shellcheck source=stack/secure.sh
source "$STACK/secure.sh"
KAFKA_TOOL_CONFIG=()

profile() {
    if [[ -f $STATE/profile ]]; then
        cat "$STATE/profile"
    else
        echo "${CDC_PROFILE:-ha}"
    fi
}

apply_profile() {
    local wanted=${CDC_PROFILE:-} current
    current=$(profile)
    if [[ -n $wanted && $wanted != "$current" ]]; then
        die "the stack in $STATE was created with profile '$current'; run 'stack/stack.sh down --wipe' first to switch to '$wanted'"
    fi
    case $current in
        ha) ;;
        lite | secure)
            KAFKA_NODE_IDS=1
            KAFKA_CLIENT_PORTS=9092
            KAFKA_CONTROLLER_PORTS=19092
            KAFKA_BOOTSTRAP=127.0.0.1:9092
            KAFKA_DEFAULT_REPLICATION_FACTOR=1
            KAFKA_MIN_INSYNC_REPLICAS=1
            CASSANDRA_ADDRESSES=127.0.0.1
            CASSANDRA_CQL_PORTS=9042
            CASSANDRA_JMX_PORTS=7199
            CASSANDRA_REPLICATION_FACTOR=1
            ;;
        *) die "unknown profile '$current' (expected ha, lite or secure)" ;;
    esac
    PROFILE=$current
    if is_secure; then
        KAFKA_TOOL_CONFIG=(--command-config "$SECRETS/kafka-admin.java.properties")
        secure_apply_passwords
    fi
    read -r -a KAFKA_IDS <<<"$KAFKA_NODE_IDS"
    read -r -a KAFKA_PORTS <<<"$KAFKA_CLIENT_PORTS"
    read -r -a KAFKA_CTRL_PORTS <<<"$KAFKA_CONTROLLER_PORTS"
    read -r -a CASS_ADDRS <<<"$CASSANDRA_ADDRESSES"
    read -r -a CASS_PORTS <<<"$CASSANDRA_CQL_PORTS"
    read -r -a CASS_JMX <<<"$CASSANDRA_JMX_PORTS"
    KAFKA_SERVICES=()
    for id in "${KAFKA_IDS[@]}"; do KAFKA_SERVICES+=("kafka$id"); done
    CASSANDRA_SERVICES=()
    for i in "${!CASS_ADDRS[@]}"; do CASSANDRA_SERVICES+=("cassandra$((i + 1))"); done
    SERVICES=("${KAFKA_SERVICES[@]}" postgres connect "${CASSANDRA_SERVICES[@]}" console)
}

# --- artifacts ---------------------------------------------------------------------------------

# The Rust build links the system OpenSSL (librdkafka's TLS and SASL SCRAM) and zlib.
need_build_deps() {
    command -v cargo >/dev/null || die "cargo is not installed (install Rust with rustup)"
    command -v pkg-config >/dev/null && pkg-config --exists openssl zlib ||
        die "the OpenSSL and zlib development files are missing (apt-get install pkg-config libssl-dev zlib1g-dev)"
}

maven_copy() { # <pom name> <destination> [extra mvn args]
    local pom=$1 dest=$2
    shift 2
    [[ -f $dest/.complete ]] && return 0
    command -v mvn >/dev/null || die "mvn is not installed (apt-get install maven)"
    say "fetching $pom artifacts through Maven into $dest"
    local tmp="$dest.partial.$$"
    rm -rf "$tmp"
    # Quiet Maven still prints colour resets, so its output is shown only when it fails.
    local out
    if ! out=$(mvn -B -q -f "$STACK/maven/$pom.pom.xml" dependency:copy-dependencies \
        -DoutputDirectory="$tmp" -DincludeScope=runtime "$@" 2>&1); then
        printf '%s\n' "$out" >&2
        die "Maven could not fetch the $pom artifacts (see the messages above)"
    fi
    touch "$tmp/.complete"
    rm -rf "$dest"
    mv "$tmp" "$dest"
}

fetch() {
    command -v java >/dev/null || die "java is not installed (Java 17 is required)"
    [[ -x $PG_BIN/postgres ]] || die "PostgreSQL 15 server not found in $PG_BIN (apt-get install postgresql-15)"
    mkdir -p "$CACHE/dist"
    maven_copy kafka "$KAFKA_LIB"
    maven_copy cassandra "$CASSANDRA_LIB"
    if [[ ! -f $DEBEZIUM_PLUGINS/.complete ]]; then
        maven_copy debezium "$DEBEZIUM_PLUGINS.archive" -DexcludeTransitive=true
        local tmp="$DEBEZIUM_PLUGINS.partial.$$"
        rm -rf "$tmp" && mkdir -p "$tmp"
        tar -xzf "$DEBEZIUM_PLUGINS.archive"/debezium-connector-postgres-*-plugin.tar.gz -C "$tmp"
        touch "$tmp/.complete"
        rm -rf "$DEBEZIUM_PLUGINS"
        mv "$tmp" "$DEBEZIUM_PLUGINS"
    fi
    if [[ ! -x $CQLSH_VENV/bin/cqlsh ]]; then
        say "installing cqlsh $CQLSH_VERSION from PyPI into $CQLSH_VENV"
        python3 -m venv "$CQLSH_VENV.partial"
        "$CQLSH_VENV.partial/bin/pip" install -q "cqlsh==$CQLSH_VERSION"
        rm -rf "$CQLSH_VENV"
        mv "$CQLSH_VENV.partial" "$CQLSH_VENV"
        # the venv's scripts name their interpreter by absolute path: rewrite it after the move
        sed -i "1s:.*:#!$CQLSH_VENV/bin/python3:" "$CQLSH_VENV/bin/cqlsh"
    fi
}

# --- process bookkeeping -----------------------------------------------------------------------
# Every JVM carries -Dcdc.stack.service=<name> so a recycled pid is never mistaken for ours.

pid_of() {
    local svc=$1
    if [[ $svc == postgres ]]; then
        local pid_file
        pid_file="$(pg_home)/data/postmaster.pid"
        [[ -f $pid_file ]] && head -n 1 "$pid_file"
    else
        [[ -f $RUN/$svc.pid ]] && cat "$RUN/$svc.pid"
    fi
    return 0
}

is_running() {
    local svc=$1 pid
    pid=$(pid_of "$svc")
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 1
    if [[ $svc == postgres ]]; then
        [[ $(tr '\0' ' ' <"/proc/$pid/cmdline") == *postgres* ]]
    elif [[ $svc == console ]]; then
        [[ $(tr '\0' ' ' <"/proc/$pid/cmdline") == *"console --stack-dir $STATE "* ]]
    else
        [[ $(tr '\0' ' ' <"/proc/$pid/cmdline") == *"-Dcdc.stack.service=$svc "* ]]
    fi
}

# Closes every descriptor above stderr in this (sub)shell: a service must not keep what its caller
# had open (a lock taken with flock around stack.sh, the pipes of a test harness), or the caller's
# lock and pipes would live as long as the service.
close_inherited_fds() {
    local fd
    for fd in /proc/$BASHPID/fd/*; do
        fd=${fd##*/}
        ((fd > 2)) && eval "exec $fd>&-" 2>/dev/null
    done
    return 0
}

# launch <service> <java args...>: starts a detached JVM, its output in logs/<service>.log.
launch_java() {
    local svc=$1
    shift
    mkdir -p "$LOGS" "$RUN"
    (
        close_inherited_fds
        exec setsid nohup java -Dcdc.stack.service="$svc" "$@" >>"$LOGS/$svc.log" 2>&1 </dev/null
    ) &
    record_launch "$svc" $!
}

# record_launch <service> <pid>: writes the pid file, then waits until the detached subshell has
# exec'd the service. Until then the pid's command line is this script's, so is_running would
# report a service that is still starting as exited (seen on a loaded machine).
record_launch() {
    local svc=$1 pid=$2 deadline=$((SECONDS + 10))
    echo "$pid" >"$RUN/$svc.pid"
    until is_running "$svc" || ! kill -0 "$pid" 2>/dev/null || ((SECONDS >= deadline)); do
        sleep 0.05
    done
}

# --- Kafka -------------------------------------------------------------------------------------

kafka_java() { # <main class> [args]: runs a Kafka tool in the foreground
    java -Xmx256m -Dlog4j2.configurationFile="$STATE/conf/log4j2-tools.properties" \
        -cp "$KAFKA_LIB/*" "$@"
}

write_log4j2() {
    mkdir -p "$STATE/conf"
    cat >"$STATE/conf/log4j2.properties" <<'EOF'
status = warn
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = OUT
logger.state.name = state.change.logger
logger.state.level = WARN
logger.reflections.name = org.reflections
logger.reflections.level = ERROR
EOF
    cat >"$STATE/conf/log4j2-tools.properties" <<'EOF'
status = error
appender.err.type = Console
appender.err.name = ERR
appender.err.target = SYSTEM_ERR
appender.err.layout.type = PatternLayout
appender.err.layout.pattern = %p %m%n
rootLogger.level = WARN
rootLogger.appenderRef.err.ref = ERR
EOF
}

kafka_configure() {
    local voters="" i
    for i in "${!KAFKA_IDS[@]}"; do
        voters+="${voters:+,}${KAFKA_IDS[$i]}@127.0.0.1:${KAFKA_CTRL_PORTS[$i]}"
    done
    local isr_internal=$KAFKA_MIN_INSYNC_REPLICAS
    for i in "${!KAFKA_IDS[@]}"; do
        local id=${KAFKA_IDS[$i]} dir="$STATE/kafka/${KAFKA_SERVICES[$i]}"
        mkdir -p "$dir/data"
        local listeners
        if is_secure; then
            listeners=$(secure_kafka_properties "$i")
        else
            listeners="listeners=PLAINTEXT://127.0.0.1:${KAFKA_PORTS[$i]},CONTROLLER://127.0.0.1:${KAFKA_CTRL_PORTS[$i]}
advertised.listeners=PLAINTEXT://127.0.0.1:${KAFKA_PORTS[$i]}
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT"
        fi
        (umask 077 && cat >"$dir/server.properties") <<EOF
# generated by stack/stack.sh
process.roles=broker,controller
node.id=$id
controller.quorum.voters=$voters
$listeners
log.dirs=$dir/data
num.partitions=3
default.replication.factor=$KAFKA_DEFAULT_REPLICATION_FACTOR
min.insync.replicas=$KAFKA_MIN_INSYNC_REPLICAS
offsets.topic.replication.factor=$KAFKA_DEFAULT_REPLICATION_FACTOR
transaction.state.log.replication.factor=$KAFKA_DEFAULT_REPLICATION_FACTOR
transaction.state.log.min.isr=$isr_internal
share.coordinator.state.topic.replication.factor=$KAFKA_DEFAULT_REPLICATION_FACTOR
share.coordinator.state.topic.min.isr=$isr_internal
unclean.leader.election.enable=false
auto.create.topics.enable=false
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=4
log.retention.hours=168
message.max.bytes=$KAFKA_MESSAGE_MAX_BYTES
replica.fetch.max.bytes=$KAFKA_MESSAGE_MAX_BYTES
EOF
    done
    local cid_file="$STATE/kafka/cluster.id"
    if [[ ! -s $cid_file ]]; then
        kafka_java kafka.tools.StorageTool random-uuid >"$cid_file.tmp" && mv "$cid_file.tmp" "$cid_file"
    fi
    local cid
    cid=$(tr -d '[:space:]' <"$cid_file")
    for svc in "${KAFKA_SERVICES[@]}"; do
        local dir="$STATE/kafka/$svc"
        if [[ -f $dir/data/meta.properties ]]; then
            :
        elif is_secure; then
            secure_kafka_format "$svc" "$cid" >>"$LOGS/$svc.log" 2>&1 ||
                fail_service "$svc" "formatting the KRaft storage with the SCRAM users failed"
        else
            kafka_java kafka.tools.StorageTool format -t "$cid" -c "$dir/server.properties" >>"$LOGS/$svc.log" 2>&1 ||
                fail_service "$svc" "formatting the KRaft storage failed"
        fi
    done
}

kafka_start() {
    local svc=$1
    is_running "$svc" && return 0
    launch_java "$svc" -Xms"$KAFKA_HEAP" -Xmx"$KAFKA_HEAP" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
        -Djava.awt.headless=true -Dlog4j2.configurationFile="$STATE/conf/log4j2.properties" \
        -Dkafka.logs.dir="$LOGS" -cp "$KAFKA_LIB/*" kafka.Kafka "$STATE/kafka/$svc/server.properties"
}

kafka_brokers_registered() {
    local n
    n=$(kafka_java org.apache.kafka.tools.BrokerApiVersionsCommand --bootstrap-server "$KAFKA_BOOTSTRAP" \
        "${KAFKA_TOOL_CONFIG[@]}" 2>/dev/null |
        grep -c '(id: [0-9]* rack: .*isFenced: false)' || true)
    [[ $n -eq ${#KAFKA_IDS[@]} ]]
}

kafka_voters() { # prints the number of voters that the quorum reports
    kafka_java org.apache.kafka.tools.MetadataQuorumCommand --bootstrap-server "$KAFKA_BOOTSTRAP" \
        "${KAFKA_TOOL_CONFIG[@]}" describe --status 2>/dev/null | sed -n 's/^CurrentVoters:[[:space:]]*//p' | grep -o '"id":[0-9]*' | wc -l
}

kafka_broker_registered() { # <node id>
    local out
    out=$(kafka_java org.apache.kafka.tools.BrokerApiVersionsCommand --bootstrap-server "$KAFKA_BOOTSTRAP" \
        "${KAFKA_TOOL_CONFIG[@]}" 2>/dev/null) || true
    grep -q "(id: $1 rack: .*isFenced: false)" <<<"$out"
}

kafka_quorum_ready() { [[ $(kafka_voters) -eq ${#KAFKA_IDS[@]} ]]; }

kafka_ready() {
    local i
    for i in "${!KAFKA_SERVICES[@]}"; do
        EXPECT_RUNNING=1 wait_until "${KAFKA_SERVICES[$i]}" "client port ${KAFKA_PORTS[$i]}" "$READY_TIMEOUT" \
            port_open 127.0.0.1 "${KAFKA_PORTS[$i]}"
    done
    wait_until kafka1 "${#KAFKA_IDS[@]} unfenced brokers registered" "$READY_TIMEOUT" kafka_brokers_registered
    wait_until kafka1 "${#KAFKA_IDS[@]} voters in the KRaft quorum" "$READY_TIMEOUT" kafka_quorum_ready
}

kafka_topics() { kafka_java org.apache.kafka.tools.TopicCommand --bootstrap-server "$KAFKA_BOOTSTRAP" "${KAFKA_TOOL_CONFIG[@]}" "$@"; }

# --- PostgreSQL --------------------------------------------------------------------------------

as_postgres() {
    if [[ $(id -u) -eq 0 ]]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

# SQL files are fed on stdin: the postgres user may not be able to read the clone.
pg_superuser_psql() { # <database> [psql args]: superuser over the unix socket (peer auth)
    local db=$1
    shift
    PGOPTIONS="-c client_min_messages=warning" as_postgres "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$(pg_home)/run" -p "$POSTGRES_PORT" \
        -U postgres -d "$db" "$@"
}

# PostgreSQL's files live in the state folder when the postgres user can reach it. Otherwise (a clone
# inside a private directory, say) they live in a folder of their own under /var/lib/postgresql; the
# choice is recorded in the state folder, and the log is linked into logs/.
pg_home() {
    if [[ -f $STATE/postgres.home ]]; then
        cat "$STATE/postgres.home"
    else
        echo "$STATE/postgres"
    fi
}

choose_pg_home() {
    [[ -f $STATE/postgres.home ]] && return 0
    local home="$STATE/postgres"
    if [[ $(id -u) -eq 0 ]] && ! runuser -u postgres -- test -x "$STATE"; then
        home="/var/lib/postgresql/cdc-stack-$(printf '%s' "$STATE" | cksum | cut -d' ' -f1)"
    fi
    echo "$home" >"$STATE/postgres.home"
}

postgres_init() {
    choose_pg_home
    local pg
    pg=$(pg_home)
    [[ -f $pg/data/PG_VERSION ]] && return 0
    say "initialising PostgreSQL in $pg/data"
    mkdir -p "$pg/data" "$pg/run"
    touch "$pg/postgres.log"
    ln -sfn "$pg/postgres.log" "$LOGS/postgres.log"
    if [[ $(id -u) -eq 0 ]]; then
        chown -R postgres:postgres "$pg"
        chmod 700 "$pg/data"
    fi
    as_postgres "$PG_BIN/initdb" -D "$pg/data" -U postgres --auth-local=peer --auth-host=scram-sha-256 \
        --encoding=UTF8 --locale=C.UTF-8 >>"$LOGS/postgres.log" 2>&1 ||
        fail_service postgres "initdb failed"
    local tls_conf=""
    is_secure && tls_conf=$(secure_postgres_conf "$pg")
    cat >"$pg/data/postgresql.auto.conf" <<EOF
# generated by stack/stack.sh
listen_addresses = '127.0.0.1'
port = $POSTGRES_PORT
unix_socket_directories = '$pg/run'
password_encryption = 'scram-sha-256'
wal_level = logical
max_wal_senders = 10
max_replication_slots = 10
max_slot_wal_keep_size = '8GB'
wal_writer_delay = '10ms'
shared_buffers = '256MB'
max_connections = 200
logging_collector = off
log_min_messages = warning
$tls_conf
EOF
    if is_secure; then
        secure_pg_hba >"$pg/data/pg_hba.conf"
    else
        cat >"$pg/data/pg_hba.conf" <<EOF
# generated by stack/stack.sh: superuser over the socket by peer auth; everyone else by password
local   all             postgres                                peer
local   all             all                                     scram-sha-256
host    all             all                     127.0.0.1/32    scram-sha-256
host    replication     $POSTGRES_REPLICATION_USER              127.0.0.1/32    scram-sha-256
EOF
    fi
    [[ $(id -u) -eq 0 ]] && chown postgres:postgres "$pg/data/postgresql.auto.conf" "$pg/data/pg_hba.conf"
    return 0
}

postgres_start() {
    is_running postgres && return 0
    (
        close_inherited_fds
        as_postgres "$PG_BIN/pg_ctl" -D "$(pg_home)/data" -l "$(pg_home)/postgres.log" -w -t 120 start >/dev/null
    ) || fail_service postgres "pg_ctl start failed"
}

postgres_bootstrap() {
    pg_superuser_psql postgres <"$STACK/postgres-roles.sql" \
        -v app_user="$POSTGRES_APP_USER" -v app_password="$POSTGRES_APP_PASSWORD" \
        -v repl_user="$POSTGRES_REPLICATION_USER" -v repl_password="$POSTGRES_REPLICATION_PASSWORD" \
        -v db="$POSTGRES_DB" || fail_service postgres "creating roles and database failed"
    PGOPTIONS="-c client_min_messages=warning" PGPASSWORD="$POSTGRES_APP_PASSWORD" "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 \
        -p "$POSTGRES_PORT" -U "$POSTGRES_APP_USER" -d "$POSTGRES_DB" -f "$ROOT/postgres-schema.sql" \
        >/dev/null || fail_service postgres "applying postgres-schema.sql failed"
    pg_superuser_psql "$POSTGRES_DB" <"$STACK/postgres-replication.sql" \
        -v repl_user="$POSTGRES_REPLICATION_USER" -v publication="$DEBEZIUM_PUBLICATION_NAME" ||
        fail_service postgres "granting replication access failed"
}

postgres_ready() { "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$POSTGRES_PORT"; }

# --- Kafka Connect + Debezium ------------------------------------------------------------------

connect_configure() {
    mkdir -p "$STATE/connect"
    (umask 077 && cat >"$STATE/connect/worker.properties") <<EOF
# generated by stack/stack.sh
bootstrap.servers=$KAFKA_BOOTSTRAP
group.id=$CONNECT_GROUP_ID
key.converter=org.apache.kafka.connect.json.JsonConverter
value.converter=org.apache.kafka.connect.json.JsonConverter
key.converter.schemas.enable=true
value.converter.schemas.enable=true
config.storage.topic=$CONNECT_CONFIG_TOPIC
offset.storage.topic=$CONNECT_OFFSET_TOPIC
status.storage.topic=$CONNECT_STATUS_TOPIC
config.storage.replication.factor=$KAFKA_DEFAULT_REPLICATION_FACTOR
offset.storage.replication.factor=$KAFKA_DEFAULT_REPLICATION_FACTOR
status.storage.replication.factor=$KAFKA_DEFAULT_REPLICATION_FACTOR
offset.flush.interval.ms=1000
listeners=http://127.0.0.1:$CONNECT_PORT
rest.advertised.host.name=127.0.0.1
rest.advertised.port=$CONNECT_PORT
plugin.path=$DEBEZIUM_PLUGINS
plugin.discovery=hybrid_warn
producer.linger.ms=5
producer.acks=all
producer.enable.idempotence=true
# Connect's own default is one request in flight per broker and 16 KiB batches (five to seven
# Debezium envelopes): at about 2,000 changes/s the slot then grew while Connect used 14 % of a
# core. Idempotence keeps the order with five in flight. (crates/bench/README.md, whole pipeline)
producer.max.in.flight.requests.per.connection=5
producer.batch.size=262144
producer.max.request.size=$KAFKA_MESSAGE_MAX_BYTES
# connector configs refer to secrets in files (\${file:PATH:KEY}) instead of holding them
config.providers=file
config.providers.file.class=org.apache.kafka.common.config.provider.FileConfigProvider
EOF
    if is_secure; then secure_connect_properties >>"$STATE/connect/worker.properties"; fi
    # The replication password, readable by this user only; the connector config names the file.
    (
        umask 077
        printf 'database.password=%s\n' "${POSTGRES_REPLICATION_PASSWORD:-debezium_password}" \
            >"$STATE/connect/secrets.properties"
    )
}

connect_start() {
    is_running connect && return 0
    launch_java connect -Xms"$CONNECT_HEAP" -Xmx"$CONNECT_HEAP" -XX:+UseG1GC -Djava.awt.headless=true \
        -Dlog4j2.configurationFile="$STATE/conf/log4j2.properties" -Dkafka.logs.dir="$LOGS" \
        -cp "$KAFKA_LIB/*" org.apache.kafka.connect.cli.ConnectDistributed "$STATE/connect/worker.properties"
}

connect_rest_ready() {
    local plugins
    plugins=$(curl -fsS "http://127.0.0.1:$CONNECT_PORT/connector-plugins") || return 1
    [[ $plugins == *PostgresConnector* ]]
}

register_connector() {
    CONNECT_URL="http://127.0.0.1:$CONNECT_PORT" KAFKA_BOOTSTRAP="$KAFKA_BOOTSTRAP" \
        CONNECT_SECRETS_FILE="$STATE/connect/secrets.properties" \
        KAFKA_TOPICS_CMD="$STATE/bin/kafka-topics" TOPIC_REPLICATION_FACTOR="$KAFKA_DEFAULT_REPLICATION_FACTOR" \
        DATABASE_SSLMODE="$(is_secure && echo verify-full || echo prefer)" \
        DATABASE_SSLROOTCERT="$(is_secure && echo "$TLS/ca.crt" || true)" \
        bash "$ROOT/debezium-config.sh" >>"$LOGS/debezium-config.log" 2>&1 ||
        { tail -n 30 "$LOGS/debezium-config.log" >&2; fail_service connect "registering the Debezium connector failed"; }
}

connector_running() {
    local status
    status=$(curl -fsS "http://127.0.0.1:$CONNECT_PORT/connectors/$CONNECTOR_NAME/status") || return 1
    [[ $(grep -o '"state":"RUNNING"' <<<"$status" | wc -l) -ge 2 ]]
}

# --- Cassandra ---------------------------------------------------------------------------------

CASSANDRA_TOKENS_3=(-9223372036854775808 -3074457345618258603 3074457345618258602)

cassandra_configure() {
    local i
    for i in "${!CASSANDRA_SERVICES[@]}"; do
        local svc=${CASSANDRA_SERVICES[$i]} addr=${CASS_ADDRS[$i]} dir="$STATE/cassandra/${CASSANDRA_SERVICES[$i]}"
        local token=${CASSANDRA_TOKENS_3[$i]}
        [[ ${#CASS_ADDRS[@]} -eq 1 ]] && token=0
        mkdir -p "$dir/data" "$dir/conf"
        cat >"$dir/conf/cassandra.yaml" <<EOF
# generated by stack/stack.sh
cluster_name: '$CASSANDRA_CLUSTER_NAME'
num_tokens: 1
initial_token: $token
auto_bootstrap: false
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
endpoint_snitch: SimpleSnitch
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "${CASS_ADDRS[0]}:7000"
listen_address: $addr
rpc_address: $addr
storage_port: 7000
native_transport_port: ${CASS_PORTS[$i]}
start_native_transport: true
commitlog_sync: periodic
commitlog_sync_period: 10000ms
data_file_directories:
  - $dir/data/data
commitlog_directory: $dir/data/commitlog
saved_caches_directory: $dir/data/saved_caches
hints_directory: $dir/data/hints
cdc_raw_directory: $dir/data/cdc_raw
$(is_secure || printf 'authenticator: AllowAllAuthenticator\nauthorizer: AllowAllAuthorizer')
concurrent_reads: 16
concurrent_writes: 16
concurrent_counter_writes: 16
concurrent_compactors: 1
memtable_heap_space: 256MiB
memtable_offheap_space: 256MiB
# Memtable cells off the heap: under a write backlog young collections copy half as much
# (crates/bench/README.md, "Cassandra's memtables off the heap").
memtable_allocation_type: offheap_objects
key_cache_size: 32MiB
read_request_timeout: 5000ms
write_request_timeout: 2000ms
range_request_timeout: 10000ms
request_timeout: 10000ms
hinted_handoff_enabled: true
max_hint_window: 3h
dynamic_snitch: false
EOF
        if is_secure; then secure_cassandra_yaml >>"$dir/conf/cassandra.yaml"; fi
        cat >"$dir/conf/logback.xml" <<'EOF'
<configuration scan="false">
  <appender name="OUT" class="ch.qos.logback.core.ConsoleAppender">
    <encoder><pattern>%-5level [%thread] %date{ISO8601} %F:%L - %msg%n</pattern></encoder>
  </appender>
  <root level="INFO"><appender-ref ref="OUT"/></root>
  <logger name="org.apache.cassandra.utils.SigarLibrary" level="ERROR"/>
</configuration>
EOF
    done
}

cassandra_jvm_options() {
    grep -v '^\s*#' "$STACK/cassandra-jvm17.options" | grep -v '^\s*$'
}

cassandra_start() {
    local i=$1 svc=${CASSANDRA_SERVICES[$1]}
    is_running "$svc" && return 0
    local dir="$STATE/cassandra/$svc"
    local -a opts
    mapfile -t opts < <(cassandra_jvm_options)
    # The last occurrence of a JVM flag wins. Each node logs its collections to its own GC log
    # (two files of 4 MiB at most).
    if [[ -n $CASSANDRA_GC_PAUSE_MS ]]; then opts+=("-XX:MaxGCPauseMillis=$CASSANDRA_GC_PAUSE_MS"); fi
    opts+=("-Xlog:gc:file=$LOGS/$svc-gc.log:time,uptime:filecount=2,filesize=4m")
    launch_java "$svc" -Xms"$CASSANDRA_HEAP" -Xmx"$CASSANDRA_HEAP" -Xss256k "${opts[@]}" \
        -javaagent:"$(ls "$CASSANDRA_LIB"/jamm-*.jar | head -n 1)" \
        -Dcassandra.config="file://$dir/conf/cassandra.yaml" \
        -Dlogback.configurationFile="$dir/conf/logback.xml" \
        -Dcassandra.storagedir="$dir/data" -Dcassandra.logdir="$LOGS" \
        -Dcassandra-foreground=yes -Dcassandra.jmx.local.port="${CASS_JMX[$i]}" \
        -Dcassandra.skip_wait_for_gossip_to_settle=0 -Dcassandra.ring_delay_ms=1000 \
        -Dcassandra.superuser_setup_delay_ms=0 -Djava.net.preferIPv4Stack=true \
        -cp "$CASSANDRA_LIB/*" org.apache.cassandra.service.CassandraDaemon
}

nodetool() { # nodetool against the first node, or -p <jmx port> as the first arguments
    local -a opts
    mapfile -t opts < <(cassandra_jvm_options | grep -- '^--add-')
    java -Xmx128m "${opts[@]}" -cp "$CASSANDRA_LIB/*" -Dlogback.configurationFile="$STACK/logback-tools.xml" \
        org.apache.cassandra.tools.NodeTool -h 127.0.0.1 "$@"
}

cassandra_up_normal() { # number of nodes the given node sees as Up/Normal
    nodetool -p "$1" status 2>/dev/null | grep -c '^UN ' || true
}

cassandra_all_up() {
    local jmx
    for jmx in "${CASS_JMX[@]}"; do
        [[ $(cassandra_up_normal "$jmx") -eq ${#CASS_ADDRS[@]} ]] || return 1
    done
}

cassandra_nodes() { # host:port list of the CQL endpoints, comma-separated
    local i out=""
    for i in "${!CASS_ADDRS[@]}"; do out+="${out:+,}${CASS_ADDRS[$i]}:${CASS_PORTS[$i]}"; done
    echo "$out"
}

cqlsh() { # cqlsh against node 1 (pass host/port to override)
    if is_secure; then
        secure_cqlsh "$@"
    elif [[ $# -ge 2 && $1 =~ ^127\. ]]; then
        "$CQLSH_VENV/bin/cqlsh" "$@"
    else
        "$CQLSH_VENV/bin/cqlsh" "${CASS_ADDRS[0]}" "${CASS_PORTS[0]}" "$@"
    fi
}

cassandra_schema() {
    if is_secure; then secure_cassandra_admin; fi
    sed "s/'replication_factor': 3/'replication_factor': $CASSANDRA_REPLICATION_FACTOR/" \
        "$ROOT/cassandra-schema.cql" >"$STATE/conf/cassandra-schema.cql"
    cqlsh --request-timeout=60 -f "$STATE/conf/cassandra-schema.cql" >>"$LOGS/cassandra-schema.log" 2>&1 ||
        fail_service cassandra-schema "applying cassandra-schema.cql failed"
    local described
    described=$(cqlsh -e "DESCRIBE KEYSPACE $CASSANDRA_KEYSPACE" 2>/dev/null || true)
    grep -q "CREATE TABLE $CASSANDRA_KEYSPACE.orders_by_user" <<<"$described" ||
        fail_service cassandra-schema "keyspace $CASSANDRA_KEYSPACE is incomplete after applying the schema"
    if is_secure; then secure_cassandra_grants; fi
}

# --- console -----------------------------------------------------------------------------------
# The pipeline's web console (crates/console) on http://127.0.0.1:$CONSOLE_PORT, built when missing or
# out of date. It is recognised by its binary and this stack's state folder on its command line.

console_bin() { echo "${CARGO_TARGET_DIR:-$ROOT/target}/release/console"; }

# The release binaries `pipeline` runs, always built together: Cargo unifies features over the
# packages of one build, so building the console alone would compile cdc-core and its dependents a
# second time with other features (minutes on two cores) after the pipeline's build.
PIPELINE_PACKAGES=(-p producer -p consumer -p cdcconsumer -p console)

console_start() {
    is_running console && return 0
    local bin
    bin=$(console_bin)
    if [[ ! -x $bin ]] || command -v cargo >/dev/null; then
        say "building the console (with the pipeline's binaries: ${PIPELINE_PACKAGES[*]})"
        (cd "$ROOT" && cargo build --release --quiet "${PIPELINE_PACKAGES[@]}") >>"$LOGS/console.log" 2>&1 ||
            fail_service console "cargo build --release ${PIPELINE_PACKAGES[*]} failed"
    fi
    local args=()
    [[ -n ${CONSOLE_ENABLE_ACTIONS:-} && ${CONSOLE_ENABLE_ACTIONS:-} != 0 ]] && args+=(--enable-actions)
    local nodes client_vars
    nodes=$(cassandra_nodes)
    mapfile -t client_vars < <(client_env console)
    (
        close_inherited_fds
        export KAFKA_BROKERS="$KAFKA_BOOTSTRAP" CONNECT_URL="http://127.0.0.1:$CONNECT_PORT" \
            CASSANDRA_NODES="$nodes" SLOT_NAME="$DEBEZIUM_SLOT_NAME" CONNECTOR_NAME="$CONNECTOR_NAME" \
            LOG_LEVEL="${CONSOLE_LOG_LEVEL:-info,scylla=warn}"
        is_secure || export DATABASE_URL="$(database_url)"
        ((${#client_vars[@]})) && export "${client_vars[@]}"
        exec setsid nohup "$bin" --stack-dir "$STATE" --listen "127.0.0.1:$CONSOLE_PORT" "${args[@]}" \
            >>"$LOGS/console.log" 2>&1 </dev/null
    ) &
    record_launch console $!
}

console_serving() { [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$CONSOLE_PORT/") == 200 ]]; }

console_ready() {
    EXPECT_RUNNING=1 wait_until console "HTTP 200 on http://127.0.0.1:$CONSOLE_PORT/" "$READY_TIMEOUT" console_serving
}

# --- tool wrappers -----------------------------------------------------------------------------

write_wrappers() {
    mkdir -p "$STATE/bin"
    local tool main
    for tool in kafka-topics:org.apache.kafka.tools.TopicCommand \
        kafka-consumer-groups:org.apache.kafka.tools.consumer.group.ConsumerGroupCommand \
        kafka-metadata-quorum:org.apache.kafka.tools.MetadataQuorumCommand \
        kafka-console-consumer:org.apache.kafka.tools.consumer.ConsoleConsumer \
        kafka-console-producer:org.apache.kafka.tools.ConsoleProducer; do
        main=${tool#*:}
        local config=""
        # on the secure profile the tools authenticate as admin unless told otherwise
        if is_secure; then
            config="extra=(); [[ \" \$* \" == *' --command-config '* ]] || extra=(--command-config '$SECRETS/kafka-admin.java.properties')"
        else
            config="extra=()"
        fi
        cat >"$STATE/bin/${tool%%:*}" <<EOF
#!/usr/bin/env bash
$config
exec java -Xmx256m -Dlog4j2.configurationFile="$STATE/conf/log4j2-tools.properties" -cp "$KAFKA_LIB/*" $main "\${extra[@]}" "\$@"
EOF
    done
    chmod +x "$STATE"/bin/*
}

# --- commands ----------------------------------------------------------------------------------

database_url() { echo "postgres://$POSTGRES_APP_USER:$POSTGRES_APP_PASSWORD@127.0.0.1:$POSTGRES_PORT/$POSTGRES_DB"; }

# as_client <client> <command...>: runs a pipeline binary with its identity's settings (secure
# profile) or as it is, in the foreground (a background binary takes `env` directly, so that $! is
# its pid).
as_client() {
    local client=$1 vars
    shift
    mapfile -t vars < <(client_env "$client")
    env "${vars[@]}" "$@"
}

cmd_up() {
    local started=$SECONDS
    mkdir -p "$STATE" "$LOGS" "$RUN"
    apply_profile
    echo "$PROFILE" >"$STATE/profile"
    fetch
    if is_secure; then
        secure_init
        secure_apply_passwords
    fi
    write_log4j2
    write_wrappers
    say "profile $PROFILE; state in $STATE"

    kafka_configure
    for svc in "${KAFKA_SERVICES[@]}"; do kafka_start "$svc"; done
    postgres_init
    postgres_start
    wait_until postgres "accepting connections on $POSTGRES_PORT" "$READY_TIMEOUT" postgres_ready
    postgres_bootstrap
    say "postgres ready (wal_level=logical, database $POSTGRES_DB)"
    kafka_ready
    say "kafka ready (${#KAFKA_IDS[@]} brokers, ${#KAFKA_IDS[@]} voters)"

    cassandra_configure
    cassandra_start 0
    connect_configure
    connect_start
    EXPECT_RUNNING=1 wait_until connect "REST API with the Debezium plugin on $CONNECT_PORT" "$READY_TIMEOUT" connect_rest_ready
    register_connector
    wait_until connect "connector $CONNECTOR_NAME and its task RUNNING" "$READY_TIMEOUT" connector_running
    say "connect ready (connector $CONNECTOR_NAME RUNNING)"

    local i
    for i in "${!CASSANDRA_SERVICES[@]}"; do
        cassandra_start "$i"
        EXPECT_RUNNING=1 wait_until "${CASSANDRA_SERVICES[$i]}" "CQL on ${CASS_ADDRS[$i]}:${CASS_PORTS[$i]}" \
            "$READY_TIMEOUT" port_open "${CASS_ADDRS[$i]}" "${CASS_PORTS[$i]}"
    done
    wait_until cassandra1 "${#CASS_ADDRS[@]} nodes Up/Normal as seen from every node" "$READY_TIMEOUT" cassandra_all_up
    cassandra_schema
    say "cassandra ready (${#CASS_ADDRS[@]} nodes UN, keyspace $CASSANDRA_KEYSPACE at RF $CASSANDRA_REPLICATION_FACTOR)"
    if [[ -z ${CONSOLE_LATER:-} ]]; then
        console_start
        console_ready
        say "console ready on http://127.0.0.1:$CONSOLE_PORT"
    fi
    say "stack up in $((SECONDS - started))s"
}

stop_service() { # <service> [signal]
    local svc=$1 sig=${2:-TERM} pid
    if ! is_running "$svc"; then
        return 0
    fi
    pid=$(pid_of "$svc")
    if [[ $svc == postgres && $sig == TERM ]]; then
        as_postgres "$PG_BIN/pg_ctl" -D "$(pg_home)/data" -m fast -w stop >/dev/null 2>&1 || true
    else
        kill "-$sig" "$pid" 2>/dev/null || true
    fi
    local deadline=$((SECONDS + 60))
    while kill -0 "$pid" 2>/dev/null; do
        if ((SECONDS >= deadline)); then
            say "$svc did not stop within 60s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        sleep 0.2
    done
}

cmd_down() {
    local wipe=0
    [[ ${1:-} == --wipe ]] && wipe=1
    if [[ -d $STATE ]]; then
        apply_profile
        local svc
        # consumers of a service go first: Connect, then Cassandra, PostgreSQL and Kafka
        for svc in console connect "${CASSANDRA_SERVICES[@]}" postgres; do stop_service "$svc"; done
        for svc in "${KAFKA_SERVICES[@]}"; do stop_service "$svc" & done
        wait
        say "stack stopped"
    fi
    if ((wipe)); then
        if [[ $(pg_home) != "$STATE"/* ]]; then
            rm -rf "$(pg_home)"
        fi
        rm -rf "$STATE"
        say "state removed ($STATE)"
    fi
}

rss_kib() { # resident set of a pid and its children, in KiB
    local pid=$1 total=0 child
    total=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
    for child in $(pgrep -P "$pid" 2>/dev/null); do
        total=$((total + $(awk '/^VmRSS:/ {print $2}' "/proc/$child/status" 2>/dev/null || echo 0)))
    done
    echo "${total:-0}"
}

memory_report() {
    local svc total=0 kib parts=""
    for svc in "${SERVICES[@]}"; do
        is_running "$svc" || continue
        kib=$(rss_kib "$(pid_of "$svc")")
        total=$((total + kib))
        parts+=" $svc=$((kib / 1024))M"
    done
    echo "$((total / 1024)) MiB resident in all ($parts )"
}

cmd_status() {
    [[ -d $STATE ]] || { echo "stack not created (run: stack/stack.sh up)"; return 1; }
    apply_profile
    local svc bad=0
    printf '%-12s %-8s %-8s %s\n' SERVICE STATE PID ENDPOINT
    local -A endpoint=([postgres]="127.0.0.1:$POSTGRES_PORT" [connect]="http://127.0.0.1:$CONNECT_PORT"
        [console]="http://127.0.0.1:$CONSOLE_PORT")
    local i
    for i in "${!KAFKA_SERVICES[@]}"; do endpoint[${KAFKA_SERVICES[$i]}]="127.0.0.1:${KAFKA_PORTS[$i]}"; done
    for i in "${!CASSANDRA_SERVICES[@]}"; do endpoint[${CASSANDRA_SERVICES[$i]}]="${CASS_ADDRS[$i]}:${CASS_PORTS[$i]}"; done
    for svc in "${SERVICES[@]}"; do
        if is_running "$svc"; then
            printf '%-12s %-8s %-8s %s\n' "$svc" up "$(pid_of "$svc")" "${endpoint[$svc]}"
        else
            printf '%-12s %-8s %-8s %s\n' "$svc" DOWN - "${endpoint[$svc]}"
            bad=1
        fi
    done
    echo "memory: $(memory_report)"
    echo
    echo "kafka: $(kafka_voters) voters in the quorum (expected ${#KAFKA_IDS[@]})"
    kafka_java org.apache.kafka.tools.MetadataQuorumCommand --bootstrap-server "$KAFKA_BOOTSTRAP" \
        "${KAFKA_TOOL_CONFIG[@]}" describe --replication 2>/dev/null || bad=1
    echo
    echo "postgres: wal_level=$(PGPASSWORD="$POSTGRES_APP_PASSWORD" "$PG_BIN/psql" -X -At -h 127.0.0.1 \
        -p "$POSTGRES_PORT" -U "$POSTGRES_APP_USER" -d "$POSTGRES_DB" -c 'SHOW wal_level' 2>/dev/null || echo unreachable)"
    pg_superuser_psql "$POSTGRES_DB" -c \
        "SELECT slot_name, active, wal_status, confirmed_flush_lsn, pg_current_wal_lsn() AS current_lsn FROM pg_replication_slots" \
        2>/dev/null || bad=1
    echo "connect: $(curl -fsS "http://127.0.0.1:$CONNECT_PORT/connectors/$CONNECTOR_NAME/status" 2>/dev/null || echo unreachable)"
    connector_running || bad=1
    echo
    echo "cassandra (nodetool status):"
    nodetool -p "${CASS_JMX[0]}" status 2>/dev/null || bad=1
    cassandra_all_up || bad=1
    return $bad
}

cmd_logs() {
    local svc=${1:-}
    [[ -n $svc ]] || die "usage: stack/stack.sh logs <service> [-f]"
    [[ -f $LOGS/$svc.log ]] || die "no log for '$svc' in $LOGS (services: $(ls "$LOGS" 2>/dev/null | sed 's/\.log$//' | tr '\n' ' '))"
    if [[ ${2:-} == -f ]]; then
        tail -n 100 -f "$LOGS/$svc.log"
    else
        tail -n 200 "$LOGS/$svc.log"
    fi
}

known_service() {
    local s
    for s in "${SERVICES[@]}"; do [[ $s == "$1" ]] && return 0; done
    die "unknown service '$1' (services: ${SERVICES[*]})"
}

# start one stopped service again (after kill/stop/pause) and wait until it serves
cmd_start() {
    local svc=${1:-}
    apply_profile
    known_service "$svc"
    case $svc in
        kafka*)
            kafka_start "$svc"
            local i
            for i in "${!KAFKA_SERVICES[@]}"; do
                [[ ${KAFKA_SERVICES[$i]} == "$svc" ]] &&
                    EXPECT_RUNNING=1 wait_until "$svc" "client port" "$READY_TIMEOUT" port_open 127.0.0.1 "${KAFKA_PORTS[$i]}"
            done
            wait_until "$svc" "broker ${svc#kafka} registered and unfenced" "$READY_TIMEOUT" \
                kafka_broker_registered "${svc#kafka}"
            ;;
        postgres)
            postgres_start
            wait_until postgres "accepting connections" "$READY_TIMEOUT" postgres_ready
            ;;
        connect)
            connect_start
            EXPECT_RUNNING=1 wait_until connect "REST API" "$READY_TIMEOUT" connect_rest_ready
            wait_until connect "connector RUNNING" "$READY_TIMEOUT" connector_running
            ;;
        console)
            console_start
            console_ready
            ;;
        cassandra*)
            local n=$((${svc#cassandra} - 1))
            cassandra_start "$n"
            EXPECT_RUNNING=1 wait_until "$svc" "CQL port" "$READY_TIMEOUT" port_open "${CASS_ADDRS[$n]}" "${CASS_PORTS[$n]}"
            wait_until "$svc" "all nodes Up/Normal" "$READY_TIMEOUT" cassandra_all_up
            ;;
    esac
    say "$svc up"
}

# The main job: the stack (if not up), then producer -> Kafka -> consumer -> PostgreSQL, with a
# summary of each step. Debezium captures the changes into the cdc.public.* topics as they land.
cmd_pipeline() {
    local started=$SECONDS
    need_build_deps
    mkdir -p "$STATE" "$LOGS"
    # The release build runs while the artifacts download and the services start: on a fresh
    # machine both take minutes, and the build is CPU-bound while downloads and JVM start-ups wait.
    say "building the pipeline binaries (release) in the background; log in $LOGS/build.log"
    (
        close_inherited_fds
        cd "$ROOT" || exit 1
        build_started=$SECONDS
        cargo build --release "${PIPELINE_PACKAGES[@]}"
        rc=$?
        echo $((SECONDS - build_started)) >"$STATE/build.secs"
        exit $rc
    ) >"$LOGS/build.log" 2>&1 </dev/null &
    local build_pid=$!
    # shellcheck disable=SC2064 # expand now: the pid is known
    trap "kill $build_pid 2>/dev/null || true" EXIT
    # the console is built with the pipeline and starts once the build is done
    CONSOLE_LATER=1 cmd_up
    local up_secs=$((SECONDS - started)) waited=$SECONDS
    say "waiting for the release build"
    wait "$build_pid" || { tail -30 "$LOGS/build.log" >&2; die "cargo build failed (see $LOGS/build.log)"; }
    trap - EXIT
    waited=$((SECONDS - waited))
    console_start
    console_ready
    say "console ready on http://127.0.0.1:$CONSOLE_PORT"
    local build_secs
    build_secs=$(cat "$STATE/build.secs" 2>/dev/null || echo "?")
    local run_started=$SECONDS
    local bin="${CARGO_TARGET_DIR:-$ROOT/target}/release"
    export KAFKA_BROKERS="$KAFKA_BOOTSTRAP" REPLICATION_FACTOR="$KAFKA_DEFAULT_REPLICATION_FACTOR"
    is_secure || export DATABASE_URL="$(database_url)"
    export LOG_LEVEL="${LOG_LEVEL:-info,rdkafka=warn}"
    local nodes=() i
    for i in "${!CASS_ADDRS[@]}"; do nodes+=("${CASS_ADDRS[$i]}:${CASS_PORTS[$i]}"); done
    export CASSANDRA_NODES
    CASSANDRA_NODES=$(IFS=,; echo "${nodes[*]}")
    export CASSANDRA_KEYSPACE SLOT_NAME="$DEBEZIUM_SLOT_NAME"

    say "cdcconsumer: Debezium's topics -> Cassandra, running in the background"
    local cdc_vars
    mapfile -t cdc_vars < <(client_env cdcconsumer)
    env "${cdc_vars[@]}" "$bin/cdcconsumer" --idle-timeout-secs 0 >"$LOGS/cdcconsumer.out" 2>>"$LOGS/cdcconsumer.log" &
    local cdc_pid=$!
    # shellcheck disable=SC2064 # expand now: the pid is known
    trap "kill -TERM $cdc_pid 2>/dev/null || true" EXIT

    # Dead letters counted by the verifier are this run's: none is expected.
    local started_at
    started_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)
    say "producer: ${PIPELINE_USERS:-100} users, ${PIPELINE_ORDERS:-300} orders"
    as_client producer "$bin/producer" --users "${PIPELINE_USERS:-100}" --orders "${PIPELINE_ORDERS:-300}" >"$LOGS/producer.out" \
        2>>"$LOGS/producer.log" || { cat "$LOGS/producer.out"; fail_service producer "the producer failed"; }
    cat "$LOGS/producer.out"
    say "consumer: applying to PostgreSQL until idle for ${PIPELINE_IDLE_SECS:-10}s"
    as_client consumer "$bin/consumer" --idle-timeout-secs "${PIPELINE_IDLE_SECS:-10}" >"$LOGS/consumer.out" 2>>"$LOGS/consumer.log" ||
        { cat "$LOGS/consumer.out"; fail_service consumer "the consumer failed"; }
    cat "$LOGS/consumer.out"
    PGPASSWORD="$POSTGRES_APP_PASSWORD" "$PG_BIN/psql" -X -q -h 127.0.0.1 -p "$POSTGRES_PORT" -U "$POSTGRES_APP_USER" \
        -d "$POSTGRES_DB" -c "SELECT (SELECT count(*) FROM users) AS users,
                                     (SELECT count(*) FROM users WHERE deleted_at IS NOT NULL) AS users_deleted,
                                     (SELECT count(*) FROM orders) AS orders,
                                     (SELECT count(*) FROM orders WHERE deleted_at IS NOT NULL) AS orders_deleted"
    kill -0 "$cdc_pid" 2>/dev/null || fail_service cdcconsumer "cdcconsumer exited early"

    say "verify: waiting for the pipeline to be quiet, then comparing PostgreSQL with Cassandra"
    local verdict=0
    as_client cdcconsumer "$bin/cdcconsumer" verify --quiet-timeout-secs "${PIPELINE_QUIET_SECS:-300}" \
        --dead-letters-since "$started_at" --fail-on-dead-letters \
        >"$LOGS/verify.out" 2>>"$LOGS/verify.log" || verdict=$?
    cat "$LOGS/verify.out"
    # kept for the console's overview
    { echo "finished_at=$(date -u +%Y-%m-%dT%H:%M:%SZ) exit=$verdict"; cat "$LOGS/verify.out"; } >"$STATE/last-verify.txt"
    kill -TERM "$cdc_pid" 2>/dev/null || true
    wait "$cdc_pid" || fail_service cdcconsumer "cdcconsumer failed"
    trap - EXIT
    cat "$LOGS/cdcconsumer.out"
    cmd_status
    say "phases: stack up ${up_secs}s; release build ${build_secs}s (alongside the stack; ${waited}s waited after it);" \
        "pipeline $((SECONDS - run_started))s; total $((SECONDS - started))s"
    case $verdict in
        0) say "pipeline done: Cassandra matches PostgreSQL" ;;
        1) die "Cassandra differs from PostgreSQL (see the report above)" ;;
        *) die "the verifier could not finish (see $LOGS/verify.log)" ;;
    esac
}

# The test suite: unit tests and the integration tests against this stack (started if needed).
cmd_test() {
    cmd_up
    need_build_deps
    if is_secure; then
        # the stack-level suite assumes plaintext access; on this profile the tests that matter
        # are the refusals and the secrets (the pipeline itself: stack.sh pipeline)
        say "running the secure profile's tests (stack-tests: secure, secrets)"
        (cd "$ROOT" && cargo test -p stack-tests --test secure --test secrets "$@")
        return
    fi
    say "running the test suite (cargo test --workspace)"
    (cd "$ROOT" && cargo test --workspace --all-targets "$@")
}

# The pipeline under a seeded schedule of combined faults (crates/chaos): brokers, Connect,
# PostgreSQL and Cassandra nodes killed or paused, the consumers killed and churned, bad records;
# then every acknowledged event must be accounted for and Cassandra must equal PostgreSQL.
cmd_chaos() {
    cmd_up
    [[ $PROFILE == ha ]] || die "chaos needs the ha profile (3 brokers, 3 Cassandra nodes)"
    need_build_deps
    say "building the chaos runner and the pipeline binaries (release)"
    # The pipeline's packages in one build, as `pipeline` and the runner build them (the same
    # features, so nothing is rebuilt); the runner on its own.
    (cd "$ROOT" && cargo build --release --locked --quiet "${PIPELINE_PACKAGES[@]}") ||
        die "cargo build ${PIPELINE_PACKAGES[*]} failed"
    (cd "$ROOT" && cargo build --release --locked --quiet -p chaos --bin chaos) ||
        die "cargo build -p chaos failed"
    LOG_LEVEL="${LOG_LEVEL:-warn,chaos=info}" "${CARGO_TARGET_DIR:-$ROOT/target}/release/chaos" "$@"
}

# An online re-snapshot of one table (cdcconsumer resnapshot) with the stack's settings.
cmd_resnapshot() {
    local table=${1:-}
    [[ -n $table && $table != -* ]] ||
        die "usage: stack/stack.sh resnapshot <users|orders> [cdcconsumer resnapshot options]"
    shift
    apply_profile
    need_build_deps
    (cd "$ROOT" && cargo build --release --locked --quiet "${PIPELINE_PACKAGES[@]}") ||
        die "cargo build ${PIPELINE_PACKAGES[*]} failed"
    is_secure || export DATABASE_URL="$(database_url)"
    KAFKA_BROKERS="$KAFKA_BOOTSTRAP" as_client cdcconsumer \
        "${CARGO_TARGET_DIR:-$ROOT/target}/release/cdcconsumer" resnapshot --table "$table" "$@"
}

usage() {
    cat <<EOF
usage: stack/stack.sh <command>

  pipeline            the main job: stack up (if needed), producer -> Kafka -> consumer -> PostgreSQL
                      -> Debezium -> cdcconsumer -> Cassandra, then the verifier's comparison
  test [cargo args]   bring the stack up (if needed) and run the whole test suite
  chaos [options]     the pipeline under seeded combined faults, then the full account
                      (--minutes N --rate R --seed S; --help for all)
  resnapshot TABLE    re-read users or orders through Debezium while the pipeline runs, until
                      cdcconsumer has applied it (cdcconsumer resnapshot options after TABLE)
  up                  fetch artifacts if needed, start every service, wait until all are healthy
                      (CDC_PROFILE=lite for 1 broker + 1 Cassandra node at RF 1; CDC_PROFILE=secure
                      for the same with TLS and authentication everywhere, docs/security.md)
  down [--wipe]       stop the services this stack started; --wipe also deletes all data
  status              services (the console too), Kafka quorum, replication slot, connector, nodetool status
  logs <service> [-f] the service's log (services: ${SERVICES[*]})
  stop <service>      stop one service gracefully (SIGTERM)
  kill <service>      SIGKILL one service
  pause|resume <svc>  SIGSTOP / SIGCONT one service
  start <service>     start one service again and wait until it serves
  psql [args]         psql as $POSTGRES_APP_USER on $POSTGRES_DB
  cqlsh [args]        cqlsh against ${CASS_ADDRS[0]}:${CASS_PORTS[0]}
  nodetool [args]     nodetool against cassandra1 (-p <jmx port> for another node)
  kafka-topics|kafka-consumer-groups|kafka-metadata-quorum [args]
                      Kafka's admin tools, bootstrap servers preset
  fetch               only download the artifacts
  env                 print the connection settings as shell variables

'up' also starts the console on http://127.0.0.1:$CONSOLE_PORT (CONSOLE_ENABLE_ACTIONS=1: it may restart
connectors and tasks).
EOF
}

main() {
    local cmd=${1:-}
    [[ $# -gt 0 ]] && shift
    case $cmd in
        up) cmd_up ;;
        pipeline) cmd_pipeline ;;
        test) cmd_test "$@" ;;
        chaos) cmd_chaos "$@" ;;
        resnapshot) cmd_resnapshot "$@" ;;
        down) cmd_down "$@" ;;
        status) cmd_status ;;
        logs) apply_profile; cmd_logs "$@" ;;
        start) cmd_start "$@" ;;
        stop | kill | pause | resume)
            apply_profile
            known_service "${1:-}"
            local sig
            case $cmd in stop) sig=TERM ;; kill) sig=KILL ;; pause) sig=STOP ;; resume) sig=CONT ;; esac
            if [[ $sig == STOP || $sig == CONT ]]; then
                is_running "$1" || die "$1 is not running"
                kill "-$sig" "$(pid_of "$1")"
            else
                stop_service "$1" "$sig"
            fi
            say "$cmd $1 done"
            ;;
        psql)
            apply_profile
            PGPASSWORD="$POSTGRES_APP_PASSWORD" exec "$PG_BIN/psql" -h 127.0.0.1 -p "$POSTGRES_PORT" \
                -U "$POSTGRES_APP_USER" -d "$POSTGRES_DB" "$@"
            ;;
        cqlsh) apply_profile; cqlsh "$@" ;;
        nodetool)
            apply_profile
            if [[ ${1:-} == -p ]]; then nodetool "$@"; else nodetool -p "${CASS_JMX[0]}" "$@"; fi
            ;;
        kafka-topics | kafka-consumer-groups | kafka-metadata-quorum)
            apply_profile
            [[ -x $STATE/bin/$cmd ]] || die "run 'stack/stack.sh up' first"
            exec "$STATE/bin/$cmd" --bootstrap-server "$KAFKA_BOOTSTRAP" "$@"
            ;;
        fetch) fetch ;;
        env)
            apply_profile
            cat <<EOF
export CDC_PROFILE=$PROFILE
export CDC_STACK_DIR=$STATE
export KAFKA_BROKERS=$KAFKA_BOOTSTRAP
export CASSANDRA_NODES=$(cassandra_nodes)
export CONNECT_URL=http://127.0.0.1:$CONNECT_PORT
EOF
            # secrets stay in their files: the secure profile names them (cdcconsumer's identity)
            if is_secure; then
                client_env cdcconsumer | grep -v '^APPLY_SCHEMA=' | sed 's/^/export /'
            else
                echo "export DATABASE_URL=$(database_url)"
            fi
            ;;
        "" | -h | --help | help) apply_profile; usage ;;
        *) apply_profile; usage >&2; exit 2 ;;
    esac
}

main "$@"
